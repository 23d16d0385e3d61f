"""The doc store's overlay of later writes: every version reads its own texts through the folds that keep a write
from copying the whole overlay."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from lsr.ingest import docstore
from lsr.ingest.docstore import DocStore


def test_each_version_reads_its_own_texts_across_folds(tmp_path, monkeypatch):
    monkeypatch.setattr(docstore, "FOLD_MIN", 4)
    pq.write_table(pa.table({"id": ["b0", "b1", "b2"], "text": ["build 0", "build 1", "build 2"]}),
                   tmp_path / "part-00000.parquet")
    versions, expected = [DocStore(tmp_path)], [{"b0": "build 0", "b1": "build 1", "b2": "build 2"}]
    for step in range(40):  # rewrites, deletes and new ids: the writes fold into the shared layer many times
        ids = [f"n{step}", f"n{step // 2}", "b1" if step % 3 else "b2"]
        texts = [f"new {step}", None if step % 5 == 0 else f"again {step}", f"build rewrite {step}"]
        versions.append(versions[-1].with_updates(ids, texts))
        state = dict(expected[-1])
        for doc_id, text in zip(ids, texts):
            state.pop(doc_id, None) if text is None else state.__setitem__(doc_id, text)
        expected.append(state)
    assert len({id(version._base) for version in versions}) > 3  # it folded
    for version, state in zip(versions, expected):
        probe = sorted(set(state) | {"b0", "b1", "b2", "n3", "n20", "nope"})
        assert version.get(probe) == [state.get(doc_id) for doc_id in probe]
        assert version.ids() == set(state) and all(version.contains(d) == (d in state) for d in probe)
    changed = versions[-1].written_since(versions[30])
    assert set(changed) == {d for d in set(expected[-1]) | set(expected[30])
                            if expected[-1].get(d) != expected[30].get(d)}


_OPEN_FILES_CHILD = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[3])))
from lsr.ingest.docstore import DocStore
folder = Path(sys.argv[1])
store = DocStore(folder)
for part in folder.glob("part-*.parquet"):
    part.rename(part.with_suffix(".moved"))  # as `lsr index --overwrite` sets a build aside
try:
    print(store.get(["p0-0", "p2-1"]), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
except Exception as exc:
    print(type(exc).__name__, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_parts_are_held_open_raising_the_open_files_limit_and_read_by_path_where_it_cannot_be(tmp_path):
    """Parts read by path were gone once a rebuild moved them aside; held open, they outlive it. A process whose
    soft limit on open files is low has it raised toward the hard one; one that may not open them all reads by path,
    and says so."""
    import subprocess
    import sys

    for n in range(3):
        pq.write_table(pa.table({"id": [f"p{n}-0", f"p{n}-1"], "text": [f"part {n} a", f"part {n} b"]}),
                       tmp_path / f"part-{n:05d}.parquet")

    def child(soft: int, hard: int) -> subprocess.CompletedProcess:
        for moved in tmp_path.glob("*.moved"):
            moved.rename(moved.with_suffix(".parquet"))
        return subprocess.run([sys.executable, "-c", _OPEN_FILES_CHILD, str(tmp_path), str(soft), str(hard)],
                              capture_output=True, text=True, timeout=120)

    held = child(40, 4096)  # far too low a soft limit, a hard one with room
    assert held.stdout.split("] ")[0] + "]" == "['part 0 a', 'part 2 b']" and int(held.stdout.split()[-1]) > 40
    by_path = child(40, 40)  # no room: read by path, which the move broke
    assert by_path.stdout.startswith("CorruptFileError"), by_path.stdout + by_path.stderr
    assert "3 docs parts are read by path, not held open" in by_path.stderr and "ulimit -n" in by_path.stderr
