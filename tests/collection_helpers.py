"""A small written collection for the tests of faults and journal folds: real SciFact documents, real models."""

from __future__ import annotations

from pathlib import Path

N_DOCS = 30
NEW_TEXT = "Quokka marsupials on Rottnest Island show unusual zinc metabolism in their kidneys."


def load_encoders() -> tuple:
    """splade-tiny (64 tokens) and MiniLM on the CPU."""
    from lsr.encode.dense import DenseEncoder
    from lsr.encode.splade import SpladeEncoder

    return SpladeEncoder.from_pretrained("splade-tiny", max_length=64, device="cpu"), DenseEncoder.from_pretrained("minilm", device="cpu")


def build_written(beir_dir: Path, encoders: tuple, out: Path) -> Path:
    """A hybrid collection of N_DOCS SciFact documents after one upsert and one delete (so it has a journal and
    later versions)."""
    from lsr.ingest.collection import Collection
    from lsr.ingest.indexing import IndexOptions, build_collection

    build_collection(beir_dir / "scifact.tar.gz", out, IndexOptions(limit=N_DOCS, max_length=64), progress=False)
    col = Collection.open(out)
    col.upsert(["new-1"], [NEW_TEXT], encoders[0].encode_documents([NEW_TEXT]), encoders[1].encode_documents([NEW_TEXT]))
    col.delete([col.sparse.doc_ids()[0]])
    return out


def searches(col, encoders) -> tuple:
    """What every store of ``col``'s current view answers, to compare two processes' views."""
    view = col.view()
    ids = sorted(view.docs.ids())
    query = encoders[0].encode_queries(["zinc metabolism in marsupials"])[0]
    return (ids, sorted(view.sparse.doc_ids()), sorted(view.dense.ids()), view.text(ids),
            view.sparse.search(query, k=10), view.bm25_search([NEW_TEXT, "narwhal tusks"], 10))


def looked(col) -> None:
    """Look now, as the background look within a second would."""
    col.look()


WRITER = """
import pickle, sys, time
from pathlib import Path
{setup}
col = Collection.open(sys.argv[1])
writes = pickle.loads(Path(sys.argv[2]).read_bytes())
Path(sys.argv[2] + ".opened").touch()
while not Path(sys.argv[3]).exists():  # every writer has opened the collection before any writes
    time.sleep(0.01)
for op, args in writes:
    getattr(col, op)(*args)
col.close()
"""


def write_at_once(path: Path, plans: dict[str, list], setup: str = "from lsr.ingest.collection import Collection") -> list[int]:
    """One process per plan (name → [(method, args)]), each opening the collection at ``path`` after ``setup``, then
    all writing at once; their exit codes."""
    import pickle
    import subprocess
    import sys
    import time

    go, writers = path.parent / "go", []
    for name, writes in plans.items():
        plan = path.parent / f"{name}.pickle"
        plan.write_bytes(pickle.dumps(writes))
        script = WRITER.format(setup=setup)
        writers.append((plan, subprocess.Popen([sys.executable, "-c", script, str(path), str(plan), str(go)])))
    while not all(Path(f"{plan}.opened").exists() for plan, _ in writers):
        assert all(proc.poll() is None for _, proc in writers)
        time.sleep(0.05)
    go.touch()
    return [proc.wait(timeout=300) for _, proc in writers]
