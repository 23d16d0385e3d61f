"""Journal compaction: a journal of rewritten documents replaced by the state it leads to. The compacted
collection answers exactly as the history did (after open, verify and repair), stores left behind the
compaction catch up, a kill -9 at any step of it leaves a whole journal, and compactions in the background of a
writer lose nothing another process reads. Real SciFact documents, real models, real files."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lsr.ingest.collection as collection
import lsr.ingest.journal_compaction as journal_compaction
from lsr.cli.main import main
from lsr.ingest.collection import Collection
from lsr.ingest.journal import JOURNAL_FILE, Journal, Tally, scan
from lsr.ingest.verify import verify_collection

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
    return build_written(beir_dir, encoders, tmp_path_factory.mktemp("compaction") / "col")


@pytest.fixture
def small_compactions(monkeypatch):
    """Compactions due at a few dead rows, and chunks of four documents (so one holds several records)."""
    monkeypatch.setattr(journal_compaction, "COMPACT_MIN_ROWS", 8)
    monkeypatch.setattr(journal_compaction, "CHUNK_ROWS", 4)


def _write_history(col: Collection, pool, rounds: int = ROUNDS) -> None:
    """Rewrite the same documents round after round (new ones and build ones), deleting some along the way."""
    sparse, dense = pool
    build = sorted(set(col.sparse.doc_ids()) - {"new-1"})[:3]
    for r in range(rounds):
        rows = [(r + j) % len(POOL) for j in range(6)]
        ids = [f"h-{j}" for j in range(5)] + [build[r % 3]]
        col.upsert(ids, [POOL[i] for i in rows], sparse.select(rows), dense[rows])
        if r % 4 == 3:
            col.delete([f"h-{r % 5}", build[(r + 1) % 3]])


def _history(written: Path, path: Path, pool) -> Collection:
    """A copy of ``written`` with ``_write_history`` written and closed, its journal not compacted."""
    shutil.copytree(written, path)
    col = Collection.open(path)
    _write_history(col, pool)
    col._compact_journal = lambda seq, written: None
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


def _last_write(path: Path, pool, *, compacting: bool) -> Journal:
    """Open ``path``, write once more, close (which compacts when due, unless ``compacting`` is False)."""
    col = Collection.open(path)
    col.upsert(["last"], [POOL[0]], pool[0].select([0]), pool[1][[0]])
    if not compacting:
        col._compact_journal = lambda seq, written: None
    col.close()
    return col._journal


def test_a_compacted_journal_answers_as_its_history_did_and_repairs_to_the_same(written, encoders, pool, tmp_path,
                                                                                  monkeypatch, small_compactions, caplog):
    path = tmp_path / "col"
    _history(written, path, pool)
    history = _copy(path, tmp_path / "history")
    before = (path / JOURNAL_FILE).stat().st_size
    records_before = len(scan(path / JOURNAL_FILE).records)

    with caplog.at_level("INFO", logger="lsr.ingest.collection"):
        journal = _last_write(path, pool, compacting=True)
    _last_write(history, pool, compacting=False)
    after = scan(path / JOURNAL_FILE)
    assert after.problem is None and len(after.records) < records_before and after.size < before / 2
    assert after.records[-1].seq == journal.last_seq == len(scan(history / JOURNAL_FILE).records)
    assert journal.tally == Tally().add(after.records) and journal.tally.loose == 0
    assert any("compacted the journal" in message for message in caplog.messages)
    assert not (path / journal_compaction.COMPACTING).exists()

    _assert_same(_answers(path, encoders), _answers(history, encoders))
    for folder in (path, history):
        assert not verify_collection(folder).problems
        assert main(["repair", str(folder)]) == 0
    _assert_same(_answers(path, encoders), _answers(history, encoders))

    col = Collection.open(path)  # writes go on after a compaction, numbered after it
    col.delete(["h-4"])
    assert col._journal.last_seq == journal.last_seq + 1 and "h-4" not in Collection.open(path).view().docs.ids()


def test_stores_left_behind_a_compaction_apply_all_of_its_records(written, encoders, pool, tmp_path,
                                                                  small_compactions):
    """Every store restored to a seq inside the compacted records' numbers (which alone would say it holds some of
    them): an open applies all of them and answers as the collection did, and verify agrees."""
    path = tmp_path / "col"
    col = _history(written, path, pool)
    behind = tmp_path / "behind"
    for name in ("sparse", "dense", "bm25"):
        shutil.copytree(path / name, behind / name)
    held = col._journal.last_seq

    col = Collection.open(path)  # a delete and a rewrite the compacted records' first numbers carry
    col.delete(["h-0"])
    col.upsert(["h-2", "last"], [POOL[9], POOL[0]], pool[0].select([9, 0]), pool[1][[9, 0]])
    col.close()
    records = scan(path / JOURNAL_FILE).records
    checkpoint = [record for record in records if record.checkpoint is not None]
    assert len(checkpoint) >= 3 and checkpoint[0].seq <= held < checkpoint[-1].seq == checkpoint[-1].checkpoint
    expected = _answers(path, encoders)
    for name in ("sparse", "dense", "bm25"):
        shutil.rmtree(path / name)
        shutil.copytree(behind / name, path / name)
    _assert_same(_answers(path, encoders), expected, tie_order=False)
    assert not verify_collection(path).problems


_DYING_COMPACTION = """
import os, signal, sys
from pathlib import Path
import lsr.ingest.journal_compaction as compaction
from lsr.files import exclusive_folder
from lsr.ingest.journal import JOURNAL_FILE, Journal, Record, scan

path, where = Path(sys.argv[1]), sys.argv[2]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
replace, framed = os.replace, Record.framed
calls = []
def framing(record):
    calls.append(1)
    if where == "writing" and len(calls) == 3:
        die()
    return framed(record)
def replacing(src, dst):
    if where == "after":
        replace(src, dst)
    die()
Record.framed, os.replace = framing, replacing
compaction.CHUNK_ROWS = 4
with exclusive_folder(path):
    records = scan(path / JOURNAL_FILE).records
    compaction.compact(Journal(path / JOURNAL_FILE, records[-1].seq, records), records[-1].seq)
"""


@pytest.mark.parametrize("where", ["writing", "before", "after"])
def test_kill_9_at_any_step_of_a_compaction_leaves_a_whole_journal(written, encoders, pool, tmp_path, where):
    """Killed while writing the compacted file, before its rename and after it: the next open finds one whole
    journal (the old one, or the compacted one), answers as the history did, and leaves no stray file."""
    path = tmp_path / "col"
    _history(written, path, pool)
    expected, size = _answers(path, encoders), (path / JOURNAL_FILE).stat().st_size
    done = subprocess.run([sys.executable, "-c", _DYING_COMPACTION, str(path), where], timeout=120)
    assert done.returncode == -9
    assert (path / journal_compaction.COMPACTING).exists() == (where != "after")
    _assert_same(_answers(path, encoders), expected)
    assert not (path / journal_compaction.COMPACTING).exists()
    assert ((path / JOURNAL_FILE).stat().st_size < size) == (where == "after")
    assert not verify_collection(path).problems


def test_background_compactions_beside_writes_lose_nothing_a_reader_sees(written, encoders, pool, tmp_path,
                                                                          monkeypatch, small_compactions):
    """A save (and so a compaction check) after every write, in the background while the next writes go on; a
    reader holding the collection since before takes up the compacted journal at its next look."""
    monkeypatch.setattr(collection, "LOOK_INTERVAL", 0.0)
    monkeypatch.setattr(collection, "save_rows", lambda rows: 1)
    path = _copy(written, tmp_path / "col")
    writer, reader = Collection.open(path), Collection.open(path)
    _write_history(writer, pool, rounds=24)
    writer._saver.join()
    assert len(scan(path / JOURNAL_FILE).records) < writer._journal.last_seq  # compacted at least once
    looked(reader)
    fresh = Collection.open(path)
    assert searches(reader, encoders) == searches(fresh, encoders) == searches(writer, encoders)
    writer.close()
    _assert_same(_answers(path, encoders), (searches(fresh, encoders), fresh.view().dense.get_vectors(
        sorted(fresh.view().docs.ids()))))
    assert not verify_collection(path).problems


def test_a_journal_is_compacted_when_most_of_it_is_history_or_its_loose_records_are_many_and_small():
    due = journal_compaction.compaction_due
    assert due(Tally(120, 60_000, 120, 60_000), written=60_000) is None  # new documents only: nothing to gain
    assert due(Tally(120, 60_000, 120, 60_000), written=40_000) is None  # a third dead: not yet
    assert due(Tally(120, 60_000, 120, 60_000), written=25_000) == "all"  # more than half dead
    assert due(Tally(2_000, 2_000, 2_000, 2_000), written=2_000) == "loose"  # a document a write: pack them
    assert due(Tally(2_500, 2_000_000, 1_500, 1_500), written=2_000_000) == "loose"  # only the loose ones, not the state
    assert due(Tally(2_000, 2_000, 500, 500), written=2_000) is None
    assert due(Tally(1_100, 1_100_000, 1_100, 1_100_000), written=1_100_000) is None  # large records: little to gain


def test_many_small_writes_are_packed_leaving_an_earlier_compaction_s_records_as_they_were(written, encoders, pool,
                                                                                          tmp_path, monkeypatch,
                                                                                          small_compactions):
    path = tmp_path / "col"
    _history(written, path, pool)
    _last_write(path, pool, compacting=True)
    compacted = (path / JOURNAL_FILE).read_bytes()
    history = _copy(path, tmp_path / "history")
    monkeypatch.setattr(journal_compaction, "COMPACT_MIN_ROWS", 10**9)
    monkeypatch.setattr(journal_compaction, "COMPACT_MIN_RECORDS", 6)
    for folder, compacting in ((path, True), (history, False)):
        col = Collection.open(folder)
        for i in range(8):  # new documents, one a write: no dead rows, only many loose records
            col.upsert([f"one-{i}"], [POOL[i]], pool[0].select([i]), pool[1][[i]])
        if not compacting:
            col._compact_journal = lambda seq, written: None
        col.close()
    packed = (path / JOURNAL_FILE).read_bytes()
    records, loose = scan(path / JOURNAL_FILE).records, scan(history / JOURNAL_FILE).records
    assert packed.startswith(compacted) and len(records) == len(scan(history / JOURNAL_FILE).records) - 8 + 2
    assert [record.checkpoint for record in records[-2:]] == [loose[-1].seq] * 2
    _assert_same(_answers(path, encoders), _answers(history, encoders))
    assert not verify_collection(path).problems


def test_a_compaction_that_fails_leaves_the_journal_as_it_was_and_a_later_one_compacts(written, encoders, pool, tmp_path,
                                                                                       monkeypatch, small_compactions,
                                                                                       caplog):
    """A full disk while the compacted file is written: the journal keeps its bytes, no stray file is left, the
    writer logs it and goes on, and its next compaction succeeds."""
    path = tmp_path / "col"
    _history(written, path, pool)
    before = (path / JOURNAL_FILE).read_bytes()
    col = Collection.open(path)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as failing:
        failing.setattr(journal_compaction.os, "fsync", full)
        with pytest.raises(OSError, match="No space left"):
            journal_compaction.compact(col._journal, col._journal.last_seq)
        with caplog.at_level("ERROR", logger="lsr.ingest.collection"):
            col._compact_journal(col._journal.last_seq, col.view().docs.written_count())
    assert any("compacting the journal" in message and "No space left" in message for message in caplog.messages)
    assert (path / JOURNAL_FILE).read_bytes() == before and not (path / journal_compaction.COMPACTING).exists()
    assert not col._journal.changed_on_disk()
    col.upsert(["last"], [POOL[0]], pool[0].select([0]), pool[1][[0]])
    col.close()
    assert (path / JOURNAL_FILE).stat().st_size < len(before) / 2 and not verify_collection(path).problems


_COMPACTING = """
from lsr.ingest.collection import Collection
import lsr.ingest.collection as collection
import lsr.ingest.journal_compaction as compaction

collection.save_rows = lambda rows: 1  # a save, and a compaction check, after every write
compaction.COMPACT_MIN_ROWS, compaction.CHUNK_ROWS = 8, 4
"""


def test_two_processes_rewriting_one_collection_while_each_compacts_lose_nothing(written, encoders, tmp_path):
    """Two writers, each compacting the journal after its saves while the other writes: each takes up the other's
    compacted journal before its next write (a reopen), so every last write is kept and verify is clean."""
    path = _copy(written, tmp_path / "col")
    plans, expected = {}, {}
    for name in ("a", "b"):
        texts = [f"Round {r} of {name}-{j}: {NEW_TEXT}" for r in range(8) for j in range(4)]
        sparse, dense = encoders[0].encode_documents(texts), encoders[1].encode_documents(texts)
        plans[name] = [("upsert", ([f"{name}-{j}" for j in range(4)], texts[4 * r : 4 * r + 4],
                                   sparse[4 * r : 4 * r + 4], dense[4 * r : 4 * r + 4])) for r in range(8)]
        plans[name].append(("delete", ([f"{name}-3"],)))
        expected.update({f"{name}-{j}": texts[28 + j] for j in range(3)})
    assert write_at_once(path, plans, _COMPACTING) == [0, 0]

    assert not verify_collection(path).problems
    col = Collection.open(path)
    assert len(scan(path / JOURNAL_FILE).records) < col._journal.last_seq  # compacted
    assert col._journal.last_seq == Collection.open(written)._journal.last_seq + 18
    live = col.view().docs.ids()
    assert {f"{name}-3" for name in "ab"}.isdisjoint(live) and set(expected) <= live
    assert col.text(list(expected)) == list(expected.values())
    assert set(col.sparse.doc_ids()) == set(col.dense.ids()) == live
