"""What opening a collection costs as documents upserted since its build pile up in its journal, with the code
before a change (``--before``: a checkout of it) and now, taking turns.

Each version writes its own copy of a built collection (the build's documents upserted again under new ids, 500
per write, so nothing is encoded), in a fresh process per step: after each step it closes the collection and
times opening it in a fresh process, with the memory the open adds (after a clean close, and on a copy taken before
close, as a crash would leave it), then in the writing process, and one-document writes after that open. ``--rewrite N`` writes N ids over and over instead (a corpus re-synced: the
journal's history grows, its documents do not); ``--per-write 1`` writes one document a write (many small records).

    git worktree add /tmp/before 6b1e1f0     # before the journal folds (f3ba362: compaction; 7f1a1b3: BM25 leg saves)
    lsr index nfcorpus.tar.gz /tmp/nf --quiet
    python benchmarks/open_after_writes.py --collection /tmp/nf --before /tmp/before     # about 10 minutes
    python benchmarks/open_after_writes.py --collection /tmp/nf --before /tmp/before --rewrite 2000
    python benchmarks/open_after_writes.py --collection /tmp/nf --before /tmp/before --per-write 1 --steps 2000,4000

Writes ``benchmarks/results/open_after_writes.{md,json}`` (``open_after_rewrites`` with ``--rewrite``,
``-N-per-write`` with ``--per-write N``, ``-one-core-busy`` with a busy loop on one core).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
STEPS = "10000,30000,60000"
PER_WRITE = 500


def step(path: Path, written: int, target: int, rewrite: int = 0, per_write: int = PER_WRITE) -> dict:
    """In a process running one version: upsert up to ``target`` documents (under ``rewrite`` ids cycled, when
    given), close, and time opens and writes."""
    import numpy as np

    from lsr.ingest.collection import Collection
    from lsr.search.legs import ViewLegs

    col = Collection.open(path)
    build = sorted(col.sparse.doc_ids())[:2000]
    view = col.view()
    texts, sparse, dense = view.docs.get(build), ViewLegs(view).sparse_vectors(build), ViewLegs(view).dense_vectors(build)
    start, streamed = time.perf_counter(), target - written
    while written < target:
        rows = [(written + i) % len(build) for i in range(per_write)]
        ids = [f"w{(written + i) % rewrite if rewrite else written + i}" for i in range(per_write)]
        col.upsert(ids, [texts[r] for r in rows], sparse.select(rows),
                   None if dense is None else dense[rows])
        written += per_write
    stream_s = time.perf_counter() - start  # the background saves (and compactions) run beside these writes
    for name in ("_saver", "_fold_thread"):  # the background save, and the fold it may start (as close waits)
        thread = getattr(col, name, None)
        if thread is not None:
            thread.join()
    crashed = Path(tempfile.mkdtemp(prefix="crashed-")) / "col"
    shutil.copytree(path, crashed)  # the folder as a kill -9 before close leaves it
    col.close()
    fresh = {}
    for name, folder in (("", path), ("_after_crash", crashed)):  # each in a fresh process, as a restart opens it
        out = subprocess.run([sys.executable, __file__, "--open-only", str(folder)], check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
        fresh.update({f"{key}{name}": value for key, value in json.loads(out).items()})
    shutil.rmtree(crashed.parent)
    start = time.perf_counter()
    opened = Collection.open(path)  # the writes below go to it
    opens = {"open_s": time.perf_counter() - start}
    writes = []
    for i in range(20):
        start = time.perf_counter()
        opened.upsert([f"one{target}-{i}"], [texts[i]], sparse.select([i]), None if dense is None else dense[[i]])
        writes.append(time.perf_counter() - start)
    opened.delete([f"one{target}-{i}" for i in range(20)])
    opened.close()
    code = Path(sys.modules[Collection.__module__].__file__).parents[2]  # the checkout this process runs
    parts = path / "written"
    return {"code": str(code), "upserted": written, "journal_mb": os.path.getsize(path / "journal.log") / 1e6,
            "written_mb": sum(p.stat().st_size for p in parts.iterdir()) / 1e6 if parts.is_dir() else 0.0, **opens,
            **fresh, "write_p50_ms": float(np.median(writes)) * 1e3, "stream_docs_per_s": streamed / stream_s}


def open_only(path: Path) -> dict:
    """In a fresh process: the open's seconds and the memory it adds (resident MB after it, imports excluded)."""
    import gc
    import importlib

    from lsr.ingest.collection import Collection

    for module in ("faiss", "numba", "pyarrow.dataset", "lsr.index"):  # imported before the baseline: every open does
        importlib.import_module(module)

    def resident_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6

    gc.collect()
    before, start = resident_mb(), time.perf_counter()
    col = Collection.open(path)
    seconds = time.perf_counter() - start
    col.view().docs.ids()
    gc.collect()
    return {"fresh_open_s": seconds, "open_mb": resident_mb() - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", required=True, help="a collection built by `lsr index` (copied, not changed)")
    parser.add_argument("--before", required=True, help="a checkout of the code to compare with")
    parser.add_argument("--rewrite", type=int, default=0, metavar="N",
                        help="upsert N ids over and over instead of new ones (the journal's history grows)")
    parser.add_argument("--per-write", type=int, default=PER_WRITE, help="documents a write (default %(default)s)")
    parser.add_argument("--steps", default=STEPS, help="documents upserted in all at each step (default %(default)s)")
    parser.add_argument("--one-core-busy", action="store_true",
                        help="run beside a busy loop pinned to one core (results under NAME-one-core-busy)")
    parser.add_argument("--step", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--open-only", help=argparse.SUPPRESS)
    if "--open-only" in sys.argv:
        print(json.dumps(open_only(Path(sys.argv[sys.argv.index("--open-only") + 1]))))
        return
    args = parser.parse_args()
    if args.step:
        print(json.dumps(step(Path(args.step[0]), int(args.step[1]), int(args.step[2]), args.rewrite, args.per_write)))
        return
    from encode import contention

    with contention("one core busy" if args.one_core_busy else "quiet", Path(tempfile.gettempdir())):
        rows = run_steps(args)
    report(args.collection, rows, args.rewrite, args.per_write, args.one_core_busy)


def run_steps(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Each step in a fresh process per version, the versions taking turns on their own copies."""
    work = Path(tempfile.mkdtemp(prefix="open-after-writes-"))
    rows: dict[str, list[dict]] = {"before": [], "now": []}
    try:
        copies = {version: shutil.copytree(args.collection, work / version) for version in rows}
        written = 0
        for target in map(int, args.steps.split(",")):
            for version in rows:  # taking turns
                env = {**os.environ, "PYTHONPATH": args.before} if version == "before" else dict(os.environ)
                out = subprocess.run([sys.executable, __file__, "--collection", args.collection, "--before", args.before,
                                      "--rewrite", str(args.rewrite), "--per-write", str(args.per_write), "--step", str(copies[version]), str(written),
                                      str(target)],
                                     env=env, check=True, capture_output=True, text=True).stdout
                rows[version].append(json.loads(out.strip().splitlines()[-1]))
                print(version, rows[version][-1], flush=True)
            written = target
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def report(collection: str, rows: dict[str, list[dict]], rewrite: int, per_write: int, one_core_busy: bool) -> None:
    from lsr.eval.report import write_table

    meta = json.loads((Path(collection) / "lsr.json").read_text())
    docs, source = meta["n_docs"], Path(meta["settings"]["source"]).name
    ids = f"{rewrite:,} ids written over and over" if rewrite else "new ids"
    intro = (f"A {docs:,}-document collection (`lsr index {source}`: SPLADE, dense MiniLM and BM25 legs), its documents "
             f"upserted again under {ids}, {per_write} per write; each version wrote its own copy, taking turns. "
             "`before`: the code before the change; `now`: this code. Opens in a fresh process (the open alone, and "
             "the resident memory it adds, imports excluded) after a clean close, and on a copy taken before close "
             "(as a kill -9 leaves it); an open in the process that wrote; a one-document write after it, p50 of 20; "
             f"the step's {per_write}-document writes, documents a second (background saves running beside them)."
             + (" A busy loop ran on one of the cores." if one_core_busy else ""))
    header = ["upserted", "journal MB before", "journal + parts MB now", "open before", "open now",
              "memory it adds before", "now", "after a crash: open before", "open now", "memory before", "now",
              "in the writer: open before", "open now", "write p50 before", "write p50 now", "writes before",
              "writes now"]
    cells = [[f"{now['upserted']:,}", f"{before['journal_mb'] + before.get('written_mb', 0):.0f}",
              f"{now['journal_mb']:.0f} + {now['written_mb']:.0f}", f"{before['fresh_open_s']:.2f} s",
              f"{now['fresh_open_s']:.2f} s", f"{before['open_mb']:.0f} MB", f"{now['open_mb']:.0f} MB",
              f"{before['fresh_open_s_after_crash']:.2f} s", f"{now['fresh_open_s_after_crash']:.2f} s",
              f"{before['open_mb_after_crash']:.0f} MB", f"{now['open_mb_after_crash']:.0f} MB",
              f"{before['open_s']:.2f} s", f"{now['open_s']:.2f} s",
              f"{before['write_p50_ms']:.1f} ms", f"{now['write_p50_ms']:.1f} ms",
              f"{before['stream_docs_per_s']:,.0f}/s", f"{now['stream_docs_per_s']:,.0f}/s"]
             for before, now in zip(rows["before"], rows["now"])]
    name = ("open_after_rewrites" if rewrite else "open_after_writes") + (
        f"-{per_write}-per-write" if per_write != PER_WRITE else "") + ("-one-core-busy" if one_core_busy else "")
    write_table(RESULTS, name, "Opening a collection as upserted documents pile up in its journal", intro,
                header, cells, {"collection_docs": docs, "rewrite": rewrite, **rows})


if __name__ == "__main__":
    main()
