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
