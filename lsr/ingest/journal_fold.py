"""Folding the journal into the written parts: its records up to a seq moved into Parquet, and cut from it.

Why: the journal held every write since the build, so a collection grown or rewritten by writes had a journal
that every open read and decoded whole (and whose texts it kept in memory) and every ``lsr repair`` replayed:
619 MB after 120,000 rewrites of 2,000 documents. After a save (the stores then hold the seq), once the journal
holds ``FOLD_ROWS`` documents or ``FOLD_RECORDS`` records, its records up to the saved seq become one part of
``written_parts`` (the state they lead to: each id's last write), and the journal keeps only what came after.

Crash safety, in order: the part (and any merge) is written and fsynced, then the manifest naming it, then the
journal is cut: the records after the seq are copied into a new file beside it, fsynced, and renamed over it while
this process's appends wait (``Journal.lock``) and other processes wait for the folder the caller holds. A kill -9
before the manifest leaves files the next open removes; after it, the journal's records up to the manifest's seq
are skipped (``recover``) until a later fold cuts them; a stray cut file is removed at the next open.
"""

from __future__ import annotations

import os
from pathlib import Path

from lsr.files import fsync_dir
from lsr.ingest.journal import MAGIC, Journal, Tally, scan
from lsr.ingest.written_parts import WrittenParts

CUTTING = "journal.log.cutting"  # the cut journal while it is written
FOLD_ROWS = 10_000  # documents the journal holds at least before it is folded
FOLD_RECORDS = 1_024  # or records: each is an Arrow stream every open decodes, about 50 microseconds


def fold_due(tally: Tally) -> bool:
    """Whether a journal that holds ``tally`` is worth folding: many documents (their texts are held in memory and
    decoded at every open) or many small records."""
    return tally.rows >= FOLD_ROWS or tally.records >= FOLD_RECORDS


def fold(journal: Journal, parts: WrittenParts, upto: int, vocab_size: int, dims: int | None) -> WrittenParts | None:
    """Fold the journal's records up to seq ``upto`` into ``parts`` (see the module docstring); returns the new
    parts, or None when the journal holds no whole record ``upto``. The caller holds the collection's folder, so
    only this process appends meanwhile; it removes the files the new manifest no longer names."""
    found = scan(journal.path)
    last = next((i for i, record in enumerate(found.records) if record.seq == upto), None)
    if last is None:
        return None
    held = [record for record in found.records[: last + 1] if record.seq > parts.upto]
    folded = parts.with_state_of(held, vocab_size, dims) if held else parts
    _cut(journal, found.ends[last], Tally().add(held))
    folded.remove_unnamed()
    return folded


def _cut(journal: Journal, end: int, cut: Tally) -> None:
    """Drop the journal's bytes before offset ``end`` (a record's end), which hold ``cut`` of what the journal
    counts: a new file of what follows replaces it."""
    temp = journal.path.with_name(CUTTING)
    try:
        with open(temp, "wb") as fh, open(journal.path, "rb") as src:
            fh.write(MAGIC)
            with journal.lock:  # this process's appends wait for the swap
                src.seek(end)
                later = src.read()
                fh.write(later)
                fh.flush()
                os.fsync(fh.fileno())
                os.replace(temp, journal.path)
                fsync_dir(journal.path.parent)
                journal.replaced(Tally(journal.tally.records - cut.records, journal.tally.rows - cut.rows))
    except BaseException:
        temp.unlink(missing_ok=True)  # e.g. a full disk: the journal is as it was
        raise


def remove_leftover(path: Path) -> None:
    """Drop a cut journal a crash left unfinished (the journal beside it is whole); the caller holds the folder.
    Looked for first: an unlink, even of nothing, fails on a read-only mount, and opening for search must not."""
    if (path / CUTTING).exists():
        (path / CUTTING).unlink()
