"""Journal folds: the journal's records moved into Parquet parts after a save. A folded collection answers exactly
as its history did (after open, verify and repair), stores saved before a fold catch up, a kill -9 at any step of a
fold leaves a whole collection, parts merge so each id is kept once, and folds in the background of a writer lose
nothing another process reads. Real SciFact documents, real models, real files."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import lsr.ingest.collection as collection
import lsr.ingest.journal_fold as journal_fold
import lsr.ingest.written_parts as written_parts
from lsr.cli.main import main
from lsr.files import CorruptFileError
from lsr.ingest.collection import Collection
from lsr.ingest.journal import JOURNAL_FILE, Tally, scan
from lsr.ingest.verify import verify_collection
from lsr.ingest.written_parts import MANIFEST, WRITTEN_DIR, WrittenParts

from collection_helpers import NEW_TEXT, build_written, load_encoders, looked, searches, write_at_once

ROUNDS = 12
POOL = [f"Rewrite {i}: {NEW_TEXT} Narwhal tusks sense salinity {i}." for i in range(10)]


@pytest.fixture(scope="module")
def encoders():
    return load_encoders()


@pytest.fixture(scope="module")
def pool(encoders):
    """The texts the history writes, encoded once."""
    return encoders[0].encode_documents(POOL), encoders[1].encode_documents(POOL)


@pytest.fixture(scope="module")
def written(beir_dir, encoders, tmp_path_factory) -> Path:
    return build_written(beir_dir, encoders, tmp_path_factory.mktemp("fold") / "col")


@pytest.fixture
def small_folds(monkeypatch):
    """Folds due at a few records, and parts applied four rows a record (so a part is several records)."""
    monkeypatch.setattr(journal_fold, "FOLD_RECORDS", 4)
    monkeypatch.setattr(written_parts, "CHUNK_ROWS", 4)


def _write_history(col: Collection, pool, rounds: int = ROUNDS, start: int = 0, between=lambda: None) -> None:
    """Rewrite the same documents round after round (new ones and build ones), deleting some along the way;
    ``between`` runs after each round."""
    sparse, dense = pool
    build = sorted(set(col.sparse.doc_ids()) - {"new-1"} - {f"h-{j}" for j in range(5)})[:3]
    for r in range(start, start + rounds):
        rows = [(r + j) % len(POOL) for j in range(6)]
        ids = [f"h-{j}" for j in range(5)] + [build[r % 3]]
        col.upsert(ids, [POOL[i] for i in rows], sparse.select(rows), dense[rows])
        if r % 4 == 3:
            col.delete([f"h-{r % 5}", build[(r + 1) % 3]])
        between()


def _history(written: Path, path: Path, pool, rounds: int = ROUNDS) -> Collection:
    """A copy of ``written`` with ``_write_history`` written and closed, its journal not folded."""
    shutil.copytree(written, path)
    col = Collection.open(path)
    col._fold_journal = lambda seq: None
    _write_history(col, pool, rounds)
    col.close()
    return col


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _answers(path: Path, encoders) -> tuple:
    """What a fresh open of ``path`` answers, with every live document's dense vector."""
    col = Collection.open(path)
    ids = sorted(col.view().docs.ids())
    return searches(col, encoders), col.view().dense.get_vectors(ids)


def _assert_same(a: tuple, b: tuple, *, tie_order: bool = True) -> None:
    """Equal answers; without ``tie_order``, sparse hits of equal score may come in another order (a store that
    applied records again numbers their documents anew, and ties go to the lower number)."""
    untied = (lambda searched: searched) if tie_order else _untied
    assert untied(a[0]) == untied(b[0])
    np.testing.assert_array_equal(a[1], b[1])


def _untied(searched: tuple) -> tuple:
    return (*searched[:4], sorted(searched[4], key=lambda hit: (-hit.score, hit.doc_id)), *searched[5:])


def _last_write(path: Path, pool, *, folding: bool) -> Collection:
    """Open ``path``, write once more, close (which folds when due, unless ``folding`` is False)."""
    col = Collection.open(path)
    if not folding:
        col._fold_journal = lambda seq: None
    col.upsert(["last"], [POOL[0]], pool[0].select([0]), pool[1][[0]])
    col.close()
    return col


def _files(path: Path) -> set[str]:
    return {p.name for p in (path / WRITTEN_DIR).iterdir()} if (path / WRITTEN_DIR).is_dir() else set()


def test_a_folded_journal_answers_as_its_history_did_and_repairs_to_the_same(written, encoders, pool, tmp_path,
                                                                             small_folds, caplog):
    path = tmp_path / "col"
    _history(written, path, pool)
    history = _copy(path, tmp_path / "history")

    with caplog.at_level("INFO", logger="lsr.ingest.collection"):
        col = _last_write(path, pool, folding=True)
    _last_write(history, pool, folding=False)
    assert any("folded the journal" in message for message in caplog.messages)
    assert scan(path / JOURNAL_FILE).records == [] and (path / JOURNAL_FILE).stat().st_size == 8
    parts = WrittenParts.open(path)
    assert parts.upto == col._journal.last_seq == scan(history / JOURNAL_FILE).records[-1].seq
    assert _files(path) == {MANIFEST, *(Path(part.file).name for part in parts.parts)}
    assert not (path / journal_fold.CUTTING).exists()

    _assert_same(_answers(path, encoders), _answers(history, encoders))
    for folder in (path, history):
        assert not verify_collection(folder).problems
        assert main(["repair", str(folder)]) == 0
    _assert_same(_answers(path, encoders), _answers(history, encoders))

    col = Collection.open(path)  # writes go on after a fold, numbered after it, and their journal opens
    col.delete(["h-4"])
    assert col._journal.last_seq == parts.upto + 1
    reopened = Collection.open(path)
    assert "h-4" not in reopened.view().docs.ids() and reopened._journal.last_seq == parts.upto + 1


def test_a_writer_keeps_only_the_writes_since_its_last_fold_in_memory(written, encoders, pool, tmp_path, small_folds,
                                                                      monkeypatch):
    """After a background fold the next write reads the folded texts from the parts: its doc store's overlay holds
    the writes since the fold only, and it answers as a fresh open does."""
    monkeypatch.setattr(collection, "save_rows", lambda rows: 6)
    path = _copy(written, tmp_path / "col")
    col = Collection.open(path)
    _write_history(col, pool, rounds=8)
    col._settle()
    col.upsert(["after"], [POOL[1]], pool[0].select([1]), pool[1][[1]])
    parts = col._parts
    assert parts.upto > 0 and col.view().docs.folded_upto == parts.upto
    assert set(col.view().docs._overlay()) == {doc_id for _, ids, _ in col._since for doc_id in ids}
    assert all(seq > parts.upto for seq, _, _ in col._since) and len(col._since) < 8
    assert searches(col, encoders) == searches(Collection.open(path), encoders)
    col.close()


def test_folds_that_no_write_took_up_build_on_each_other(written, encoders, pool, tmp_path, small_folds, monkeypatch):
    """Several background folds while the writer never takes one up (as when a fold ends after a write looked for
    one and before that write's save starts the next): each folds onto the last one's parts, so nothing folded
    before is dropped from the manifest."""
    monkeypatch.setattr(collection, "save_rows", lambda rows: 6)
    path = tmp_path / "col"
    history = _history(written, tmp_path / "history", pool)
    shutil.copytree(written, path)
    col = Collection.open(path)
    monkeypatch.setattr(col, "_take_up_fold", lambda: None)
    _write_history(col, pool)
    col._settle()
    assert col._parts.upto == 0 and WrittenParts.open(path).upto > 0  # folded, never taken up
    col.close()
    _assert_same(_answers(path, encoders), _answers(tmp_path / "history", encoders))
    assert history._journal.last_seq == Collection.open(path)._journal.last_seq
    assert not verify_collection(path).problems


def test_stores_saved_before_a_fold_apply_its_parts(written, encoders, pool, tmp_path, small_folds):
    """Every store restored to a seq before the parts' (the sparse index too): an open applies the parts and
    answers as the collection did, and verify agrees."""
    path = tmp_path / "col"
    _history(written, path, pool)
    behind = tmp_path / "behind"
    for name in ("sparse", "dense", "bm25"):
        shutil.copytree(path / name, behind / name)
    col = Collection.open(path)  # a delete and a rewrite, then a fold
    col.delete(["h-0"])
    col.upsert(["h-2", "last"], [POOL[9], POOL[0]], pool[0].select([9, 0]), pool[1][[9, 0]])
    col.close()
    assert WrittenParts.open(path).upto == col._journal.last_seq and not scan(path / JOURNAL_FILE).records
    expected = _answers(path, encoders)
    for name in ("sparse", "dense", "bm25"):
        shutil.rmtree(path / name)
        shutil.copytree(behind / name, path / name)
    _assert_same(_answers(path, encoders), expected, tie_order=False)
    assert not verify_collection(path).problems


_DYING_FOLD = """
import os, signal, sys
from pathlib import Path
import lsr.ingest.journal_fold as journal_fold
import lsr.ingest.written_parts as written_parts
from lsr.files import exclusive_folder
from lsr.ingest.journal import JOURNAL_FILE, Journal, scan
from lsr.ingest.written_parts import WrittenParts

path, where = Path(sys.argv[1]), sys.argv[2]
die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
written_parts.FAN_IN = 2  # the fold merges the part before into its own
if where == "part":  # the part written, its manifest not
    written_parts.write_json_atomic = die
elif where == "manifest":  # the manifest written, the journal not cut
    journal_fold._cut = die
else:  # the journal cut, the files the manifest no longer names not removed
    WrittenParts.remove_unnamed = die
with exclusive_folder(path):
    records = scan(path / JOURNAL_FILE).records
    journal_fold.fold(Journal(path / JOURNAL_FILE, records[-1].seq, records), WrittenParts.open(path), records[-1].seq,
                      30522, 384)
"""


@pytest.mark.parametrize("where", ["part", "manifest", "cut"])
def test_kill_9_at_any_step_of_a_fold_leaves_a_whole_collection(written, encoders, pool, tmp_path, where, small_folds):
    """Killed after writing the part, after the manifest, after the cut: the next open answers as the history did
    and leaves no stray file; the journal's records stay until the cut (and are skipped once the manifest holds
    them)."""
    path = tmp_path / "col"
    _history(written, path, pool)
    _last_write(path, pool, folding=True)  # a first part, for the dying fold to merge away
    _write_history(Collection.open(path), pool, rounds=3, start=20)
    expected, size = _answers(path, encoders), (path / JOURNAL_FILE).stat().st_size
    before = _files(path)
    done = subprocess.run([sys.executable, "-c", _DYING_FOLD, str(path), where], timeout=120)
    assert done.returncode == -9
    assert _files(path) > before and ((path / JOURNAL_FILE).stat().st_size < size) == (where == "cut")
    _assert_same(_answers(path, encoders), expected)
    parts = WrittenParts.open(path)
    assert _files(path) == {MANIFEST, *(Path(part.file).name for part in parts.parts)}
    assert not (path / journal_fold.CUTTING).exists()
    assert not verify_collection(path).problems
    _write_history(Collection.open(path), pool, rounds=3, start=24)
    _last_write(path, pool, folding=True)  # the next fold goes on from there
    assert not scan(path / JOURNAL_FILE).records and not verify_collection(path).problems


def test_a_first_fold_killed_before_its_manifest_leaves_parts_the_next_open_removes(written, encoders, pool, tmp_path,
                                                                                     small_folds):
    """No manifest yet, and the journal holds every record from seq 1: the part is a fold's leftover, not writes."""
    path = tmp_path / "col"
    _history(written, path, pool)
    expected = _answers(path, encoders)
    done = subprocess.run([sys.executable, "-c", _DYING_FOLD, str(path), "part"], timeout=120)
    assert done.returncode == -9 and _files(path) and MANIFEST not in _files(path)
    _assert_same(_answers(path, encoders), expected)
    assert not _files(path) and not verify_collection(path).problems


@pytest.mark.parametrize("later", [0, 1])
def test_a_lost_manifest_is_named_and_its_parts_are_kept(written, encoders, pool, tmp_path, small_folds, capsys, later):
    """Its journal cut by the fold, a collection whose written/manifest.json went missing: every open deleted the
    parts (the only copy of the writes before the journal's first record) and then blamed a truncated journal, whose
    `lsr repair --salvage` made the loss final. Now the open, verify and repair name the manifest and keep the parts;
    the manifest put back, nothing is lost."""
    path = tmp_path / "col"
    _history(written, path, pool)
    _last_write(path, pool, folding=True)
    if later:  # records after the fold: the journal reads whole, from a seq past 1
        _write_history(Collection.open(path), pool, rounds=later, start=30)
    expected, kept = _answers(path, encoders), _files(path)
    manifest = path / WRITTEN_DIR / MANIFEST
    saved = manifest.read_bytes()
    manifest.unlink()
    lost = f"{manifest} is missing, yet {path / WRITTEN_DIR} holds 1 part file"
    with pytest.raises(CorruptFileError, match=lost):
        Collection.open(path)
    problems = verify_collection(path).problems
    assert len(problems) == 1 and lost in problems[0], problems  # not also "journal.log ends at record ..."
    for salvage in ([], ["--salvage"]):
        capsys.readouterr()
        assert main(["repair", str(path), *salvage]) == 2
        assert lost in capsys.readouterr().err
    assert _files(path) == kept - {MANIFEST} and (path / JOURNAL_FILE).is_file()
    manifest.write_bytes(saved)
    _assert_same(_answers(path, encoders), expected)
    assert not verify_collection(path).problems


def test_background_folds_beside_writes_lose_nothing_a_reader_sees(written, encoders, pool, tmp_path, monkeypatch,
                                                                   small_folds):
    """A save (and so a fold check) after every write, in the background while the next writes go on; a reader
    holding the collection since before takes up each fold at its next look."""
    monkeypatch.setattr(collection, "save_rows", lambda rows: 1)
    path = _copy(written, tmp_path / "col")
    writer, reader = Collection.open(path), Collection.open(path)
    _write_history(writer, pool, rounds=24)
    writer._settle()
    assert WrittenParts.open(path).upto > 0
    looked(reader)
    fresh = Collection.open(path)
    assert searches(reader, encoders) == searches(fresh, encoders) == searches(writer, encoders)
    writer.close()
    _assert_same(_answers(path, encoders), (searches(fresh, encoders), fresh.view().dense.get_vectors(
        sorted(fresh.view().docs.ids()))))
    assert not verify_collection(path).problems


def test_a_fold_is_due_for_many_documents_or_many_records():
    due = journal_fold.fold_due
    assert not due(Tally(records=100, rows=9_999))
    assert due(Tally(records=5, rows=10_000))  # documents whose texts an open decodes and memory holds
    assert due(Tally(records=1_024, rows=1_024))  # a document a write: many Arrow streams to decode
    assert not due(Tally(records=1_023, rows=1_023))


def test_parts_merge_so_each_id_is_kept_once_and_they_stay_few(written, encoders, pool, tmp_path, small_folds,
                                                              monkeypatch, caplog):
    """Folds of the same documents rewritten again and again: the last ``FAN_IN`` parts merge into one once they are
    of a size, so the parts stay few and the rows they hold stay about the ids written, not the writes."""
    monkeypatch.setattr(collection, "save_rows", lambda rows: 6)
    path = tmp_path / "col"
    history = _history(written, tmp_path / "history", pool, rounds=2 * ROUNDS)
    shutil.copytree(written, path)
    col = Collection.open(path)
    with caplog.at_level("INFO", logger="lsr.ingest.collection"):
        _write_history(col, pool, 2 * ROUNDS, between=col._settle)  # each save and fold done before the next write
        col.close()
    parts = WrittenParts.open(path)
    distinct = len({doc_id for seq, ids, _ in history._since for doc_id in ids})
    assert sum("folded the journal" in message for message in caplog.messages) > written_parts.FAN_IN
    assert 1 <= len(parts.parts) < written_parts.FAN_IN and parts.rows <= written_parts.FAN_IN * distinct
    _assert_same(_answers(path, encoders), _answers(tmp_path / "history", encoders))


def test_a_fold_that_fails_leaves_the_journal_and_a_later_one_folds(written, encoders, pool, tmp_path, monkeypatch,
                                                                    small_folds, caplog):
    """A full disk while the part is written: the journal keeps its bytes and no part is named; the writer logs it
    and goes on. A full disk while the journal is cut (the part and manifest written): the journal keeps its bytes,
    an open skips its folded records. Either way the next fold succeeds and answers are those of the history."""
    path = tmp_path / "col"
    _history(written, path, pool)
    expected = _answers(path, encoders)
    before = (path / JOURNAL_FILE).read_bytes()
    col = Collection.open(path)

    def full(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    for where in (written_parts, journal_fold):
        with monkeypatch.context() as failing:
            if where is written_parts:
                failing.setattr(written_parts, "atomic_write", full)
            else:
                failing.setattr(journal_fold, "os", SimpleNamespace(replace=full, fsync=os.fsync))
            with caplog.at_level("ERROR", logger="lsr.ingest.collection"):
                col._fold_journal(col._journal.last_seq)
        assert any("folding the journal" in message and "No space left" in message for message in caplog.messages)
        assert (path / JOURNAL_FILE).read_bytes() == before and not (path / journal_fold.CUTTING).exists()
        assert not col._journal.changed_on_disk() and col._folded is None
        assert (WrittenParts.open(path).upto > 0) == (where is journal_fold)
        _assert_same(_answers(path, encoders), expected)
    col.upsert(["last"], [POOL[0]], pool[0].select([0]), pool[1][[0]])
    col.close()
    assert not scan(path / JOURNAL_FILE).records and not verify_collection(path).problems
    assert "last" in Collection.open(path).view().docs.ids()


def test_a_damaged_part_is_named_by_open_verify_and_repair(written, pool, tmp_path, small_folds, capsys):
    path = tmp_path / "col"
    _history(written, path, pool)
    _last_write(path, pool, folding=True)
    part = path / WrittenParts.open(path).parts[-1].file
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=part.name):
        Collection.open(path)
    assert any(part.name in problem for problem in verify_collection(path).problems)
    capsys.readouterr()
    assert main(["repair", str(path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # it named the file, and no next step
    assert part.name in last and "restore it from a backup, or re-index with `lsr index --overwrite`" in last, last
    problems = verify_collection(path).problems  # the part's problem alone: the journal is whole
    assert len(problems) == 1 and part.name in problems[0], problems


def test_a_version_pinned_before_a_fold_reads_its_texts_after_its_parts_are_merged_away(written, encoders, pool,
                                                                                       tmp_path, small_folds,
                                                                                       monkeypatch):
    path = tmp_path / "col"
    _history(written, path, pool)
    _last_write(path, pool, folding=True)
    col = Collection.open(path)
    pinned = col.view()
    ids = sorted(pinned.docs.ids())
    texts = pinned.text(ids)
    old = {part.file for part in col._parts.parts}
    monkeypatch.setattr(collection, "save_rows", lambda rows: 6)  # a fold every few writes: the parts merge
    _write_history(col, pool, rounds=16, start=30)
    col.close()
    assert old.isdisjoint(part.file for part in WrittenParts.open(path).parts)
    assert not any((path / name).exists() for name in old)
    pinned.docs._parts.row_group.cache_clear()
    assert pinned.text(ids) == texts


_FOLDING = """
from lsr.ingest.collection import Collection
import lsr.ingest.collection as collection
import lsr.ingest.journal_fold as journal_fold
import lsr.ingest.written_parts as written_parts

collection.save_rows = lambda rows: 1  # a save, and a fold check, after every write
journal_fold.FOLD_RECORDS, written_parts.CHUNK_ROWS = 3, 4
"""


def test_two_processes_rewriting_one_collection_while_each_folds_lose_nothing(written, encoders, tmp_path):
    """Two writers, each folding the journal after its saves while the other writes: each takes up the other's
    fold before its next write (a reopen), so every last write is kept and verify is clean."""
    path = _copy(written, tmp_path / "col")
    plans, expected = {}, {}
    for name in ("a", "b"):
        texts = [f"Round {r} of {name}-{j}: {NEW_TEXT}" for r in range(8) for j in range(4)]
        sparse, dense = encoders[0].encode_documents(texts), encoders[1].encode_documents(texts)
        plans[name] = [("upsert", ([f"{name}-{j}" for j in range(4)], texts[4 * r : 4 * r + 4],
                                   sparse[4 * r : 4 * r + 4], dense[4 * r : 4 * r + 4])) for r in range(8)]
        plans[name].append(("delete", ([f"{name}-3"],)))
        expected.update({f"{name}-{j}": texts[28 + j] for j in range(3)})
    assert write_at_once(path, plans, _FOLDING) == [0, 0]

    assert not verify_collection(path).problems
    col = Collection.open(path)
    assert WrittenParts.open(path).upto > 0
    assert col._journal.last_seq == Collection.open(written)._journal.last_seq + 18
    live = col.view().docs.ids()
    assert {f"{name}-3" for name in "ab"}.isdisjoint(live) and set(expected) <= live
    assert col.text(list(expected)) == list(expected.values())
    assert set(col.sparse.doc_ids()) == set(col.dense.ids()) == live


def test_merged_parts_keep_each_id_s_last_write_in_whole_row_groups(tmp_path):
    """Rounds of 2,500 writes over 5,000 ids (some deleted), each folded into the parts and merged with the ones
    before: the doc store reads every id's last text, the parts' rows come back as records of the same state, and
    every row group but a part's last holds exactly ``DOC_ROW_GROUP`` rows (a row's group is found by division)."""
    from lsr.ingest.docstore import DOC_ROW_GROUP, DocStore
    from lsr.ingest.journal import Record, latest_writes
    from lsr.sparse import SparseBatch

    rng = np.random.default_rng(0)
    (tmp_path / "docs").mkdir()
    parts, expected, vectors, seq = WrittenParts(tmp_path), {}, {}, 0
    for round_ in range(4):
        ids = [f"d{i}" for i in rng.choice(5_000, 2_500, replace=False)]
        texts = [f"{doc_id} in round {round_}" for doc_id in ids]
        indptr = np.arange(len(ids) + 1, dtype=np.int64) * 3
        terms = np.concatenate([rng.choice(30, 3, replace=False) for _ in ids]).astype(np.int32)  # each once a row
        sparse = SparseBatch(indptr, terms, rng.random(3 * len(ids), dtype=np.float32), 30)
        dense = rng.random((len(ids), 4), dtype=np.float32)
        records = [Record(seq + 1, "upsert", ids, texts, sparse, dense), Record(seq + 2, "delete", ids[:100])]
        seq += 2
        expected.update(zip(ids, texts))
        expected.update(dict.fromkeys(ids[:100]))
        vectors.update({doc_id: dense[row] for row, doc_id in enumerate(ids[100:], 100)})
        parts = parts.with_state_of(records, 30, 4)
        parts.remove_unnamed()
    assert len(parts.parts) == 1 and parts.rows == len(expected) and parts.upto == seq

    docs = DocStore(tmp_path / "docs", {}, parts)
    ids = sorted(expected)
    assert docs.get(ids) == [expected[doc_id] for doc_id in ids]
    assert docs.ids() == {doc_id for doc_id, text in expected.items() if text is not None}
    groups = [file.metadata.row_group(g).num_rows for file in parts.files for g in range(file.num_row_groups)]
    assert set(groups[:-1]) == {DOC_ROW_GROUP} and len(groups) == -(-len(expected) // DOC_ROW_GROUP)

    state = latest_writes(list(parts.records()))
    assert {doc_id for doc_id, where in state.items() if where is None} == {i for i, t in expected.items() if t is None}
    live = {doc_id: where for doc_id, where in state.items() if where is not None}
    assert {doc_id: record.texts[row] for doc_id, (record, row) in live.items()} == {
        doc_id: text for doc_id, text in expected.items() if text is not None}
    for doc_id, (record, row) in live.items():
        np.testing.assert_array_equal(record.dense[row], vectors[doc_id])


def test_a_write_past_the_file_size_limit_leaves_no_half_record_and_keeps_its_error(tmp_path):
    """The append's cleanup truncated through its buffered file, whose flush failed again (EFBIG, as a full disk's
    ENOSPC would): the half record stayed in the journal and the cleanup's error replaced the write's."""
    script = """
import resource, sys
from pathlib import Path
from lsr.ingest.journal import Journal, scan
path = Path(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (8000, 8000))
journal = Journal(path, 0)
for i in range(1000):
    try:
        journal.append("delete", [f"doc-{i}-" + "x" * 97])
    except OSError as exc:
        print(exc.errno, i)
        break
found = scan(path)
print(len(found.records), found.problem, found.end, found.size)
"""
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "journal.log")], capture_output=True,
                         text=True, timeout=120, check=True).stdout.split("\n")
    failed_errno, written = map(int, out[0].split())
    assert failed_errno == errno.EFBIG and written > 5
    records, problem, end, size = out[1].split()
    assert (int(records), problem, int(end)) == (written, "None", int(size))


def test_a_fold_of_deletes_only_writes_them_and_cuts_the_journal(written, encoders, tmp_path, small_folds, caplog):
    """Records that leave no document live (a bulk clean-up) fold like any others: their part holds only deletions.
    An empty live column was typed null, which no deletion could be cast to, and the journal never shrank."""
    path = _copy(written, tmp_path / "col")
    col = Collection.open(path)
    gone = ["new-1", *sorted(col.view().docs.ids())[:journal_fold.FOLD_RECORDS]]  # the build's upsert too
    for doc_id in gone:
        col.delete([doc_id])
    expected = _answers(path, encoders)
    with caplog.at_level("ERROR", logger="lsr.ingest.collection"):
        col.close()
    failed = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and str(path) in r.getMessage()]
    assert not failed and not scan(path / JOURNAL_FILE).records and WrittenParts.open(path).upto > 0
    _assert_same(_answers(path, encoders), expected)
    assert not set(gone) & set(Collection.open(path).view().docs.ids()) and not verify_collection(path).problems
