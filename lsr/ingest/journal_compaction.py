"""Compaction of the write-ahead journal: its history replaced by the state that history leads to.

The journal holds every write since the build, so a collection whose documents are rewritten again and again
(a corpus re-synced daily) grows a journal of dead versions that every open reads and every ``lsr repair``
replays. A compaction keeps, for the records up to one seq, each document's last write only (upserts in chunks
of ``CHUNK_ROWS``, one delete of the ids deleted last), numbered to end at that same seq and marked with it as
their checkpoint: a store that holds the seq lacks none of them, and one behind it applies all of them, which
gives the same state as the history did (``Record.lacked_by``). The records after that seq are copied behind
them unchanged. The same holds for any run of records that ends the history up to that seq, so many small writes
are packed by compacting only the loose records written since the last compaction, at a cost of what they hold.

Crash safety: the compacted file is written beside the journal, fsynced, and renamed over it while this
process's appends wait (``Journal.lock``) and other processes wait for the folder the caller holds; a kill -9 at
any point leaves either the old journal or the new one whole, and at most a stray ``COMPACTING`` file that the
next open removes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lsr.files import fsync_dir
from lsr.ingest.journal import MAGIC, Journal, Record, Tally, latest_writes, scan
from lsr.sparse import SparseBatch

COMPACTING = "journal.log.compacting"  # the compacted journal while it is written
CHUNK_ROWS = 2_048  # documents per upsert record of a compacted journal
COMPACT_MIN_ROWS = 10_000  # dead rows (replaced or deleted versions) a journal holds at least before a compaction
COMPACT_MIN_RECORDS = 1_024  # loose records (written since the last compaction) packed into chunks at least


def compaction_due(tally: Tally, written: int) -> str | None:
    """What is worth compacting in a journal that holds ``tally`` for ``written`` distinct ids: ``"all"`` of it
    when half of its rows or more are dead versions (a compaction then rewrites at most a row per dead row), else
    ``"loose"`` records when many small ones were written since the last compaction (each costs an Arrow stream's
    overhead, about 50 microseconds, at every open; packing only them costs what they hold, not the whole state),
    else None."""
    if tally.rows - written >= max(COMPACT_MIN_ROWS, written):
        return "all"
    if tally.loose >= max(COMPACT_MIN_RECORDS, 4 * -(-tally.loose_rows // CHUNK_ROWS)):
        return "loose"
    return None


def compact(journal: Journal, upto: int, what: str = "all") -> tuple[int, int] | None:
    """Replace the journal's records up to seq ``upto`` (``what="all"``), or its loose records up to it
    (``"loose"``), by the state they lead to; returns the file's size before and after, or None when there was
    nothing to gain (or the records up to ``upto`` are not all readable). The caller holds the collection's
    folder, so only this process appends meanwhile."""
    found = scan(journal.path)
    last = next((i for i, record in enumerate(found.records) if record.seq == upto), None)
    if last is None:
        return None
    first = 0
    if what == "loose":
        first = last + 1
        while first and found.records[first - 1].checkpoint is None:
            first -= 1
    held = found.records[first : last + 1]
    state = state_records(held)
    if len(state) >= len(held):
        return None
    kept_end = found.ends[first - 1] if first else len(MAGIC)  # the records before ``held`` are copied as they are
    temp = journal.path.with_name(COMPACTING)
    try:
        with open(temp, "wb") as fh, open(journal.path, "rb") as src:
            fh.write(src.read(kept_end))
            for record in state:
                fh.write(record.framed())
            fh.flush()
            os.fsync(fh.fileno())  # before the lock: the appends below wait only for the tail's copy
            with journal.lock:  # this process's appends wait for the swap; each one since the scan follows ``upto``
                before, tally = journal.size, journal.tally
                src.seek(found.ends[last])
                later = src.read()
                fh.write(later)
                fh.flush()
                os.fsync(fh.fileno())
                os.replace(temp, journal.path)
                fsync_dir(journal.path.parent)
                up_to = Tally().add(found.records[: last + 1])  # what the file held up to ``upto``; all later is loose
                journal.replaced(Tally().add(found.records[:first] + state).add_loose(
                    tally.records - up_to.records, tally.rows - up_to.rows))
    except BaseException:
        temp.unlink(missing_ok=True)  # e.g. a full disk: the journal is as it was
        raise
    return before, journal.size


def state_records(records: list[Record]) -> list[Record]:
    """The state ``records`` lead to, as records ending at the last one's seq: one delete of every id deleted
    last, then every live id's last upsert, in chunks, ids in the order of their first write."""
    latest = latest_writes(records)
    deleted = [doc_id for doc_id, where in latest.items() if where is None]
    live = [(doc_id, where) for doc_id, where in latest.items() if where is not None]
    chunks = [live[start : start + CHUNK_ROWS] for start in range(0, len(live), CHUNK_ROWS)]
    upto = records[-1].seq
    seq = upto - len(chunks) - bool(deleted) + 1
    state = []
    if deleted:
        state.append(Record(seq, "delete", deleted, checkpoint=upto))
        seq += 1
    for chunk in chunks:
        state.append(_upsert_of(seq, chunk, upto))
        seq += 1
    return state


def _upsert_of(seq: int, rows: list[tuple[str, tuple[Record, int]]], checkpoint: int) -> Record:
    """One upsert record of ``rows`` (id, (record, row)): runs of rows from one record are sliced together."""
    runs: list[tuple[Record, list[int]]] = []
    for _, (record, row) in rows:
        if runs and runs[-1][0] is record:
            runs[-1][1].append(row)
        else:
            runs.append((record, [row]))
    sparse = SparseBatch.concat([record.sparse.select(picked) for record, picked in runs])
    dense = None
    if runs[0][0].dense is not None:
        dense = np.concatenate([record.dense[picked] for record, picked in runs])
    texts = [record.texts[row] for record, picked in runs for row in picked]
    return Record(seq, "upsert", [doc_id for doc_id, _ in rows], texts, sparse, dense, checkpoint)


def remove_leftover(path: Path) -> None:
    """Drop a compacted journal a crash left unfinished (the journal beside it is whole); the caller holds the folder."""
    (path / COMPACTING).unlink(missing_ok=True)
