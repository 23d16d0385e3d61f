"""``lsr repair --salvage``: a journal damaged in the middle (a flipped byte, a bad sector) keeps the writes around it.

A damaged record that hides acknowledged writes stops every open (``journal.recover``), and with it the whole
collection. Salvage keeps every whole record: past the damage it looks for the next offset where a record reads
whole (its length fits, its crc32 matches, its payload decodes with a later seq) and goes on from there. The seqs
the damaged bytes held become empty records, so the seqs the stores hold stay a chain; the writes in them are lost
(their upserts are gone unless a later write rewrote them, their deletes undone). The file is replaced atomically
and the damaged one is kept beside it, as ``journal.log.damaged``; ``lsr repair`` then rebuilds every store.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from lsr.files import fsync_dir
from lsr.ingest.journal import HEAD, MAGIC, Record, follows, scan_records

DAMAGED_SUFFIX = ".damaged"
ARROW_STREAM_START = b"\xff\xff\xff\xff"  # every record's payload opens with an Arrow IPC continuation marker


@dataclass
class Salvage:
    """What salvaging a journal kept and dropped."""

    records: list[Record]  # the whole records, with an empty record for each seq the damage held
    dropped: list[tuple[int, int]]  # byte ranges [start, end) that were skipped
    lost_seqs: list[int]  # seqs now held by empty records

    def summary(self, path: Path, kept_as: Path) -> str:
        spans = ", ".join(f"bytes {start:,}..{end:,}" for start, end in self.dropped) or "no bytes"
        whole = len(self.records) - len(self.lost_seqs)
        lost = (f"the writes of seq {_ranges(self.lost_seqs)} are lost (their upserts gone unless rewritten later, "
                "their deletes undone)" if self.lost_seqs else "no acknowledged write was in them")
        return (f"salvaged {path.name}: dropped {spans}; kept {whole} whole records; {lost}; the damaged file is kept "
                f"as {kept_as.name}")


def salvage_journal(path: Path, applied: int, folded: int) -> str | None:
    """Rewrite the journal at ``path`` without its damaged bytes; what was done, or None when it reads whole.
    ``applied`` is the highest seq a store holds and ``folded`` the seq the written parts hold: the empty records
    run from after ``folded`` to at least ``applied``. The caller holds the collection's folder."""
    data = path.read_bytes() if path.is_file() else b""
    found = salvage_records(data, applied, folded)
    if not found.dropped and not found.lost_seqs:
        return None
    temp = path.with_name(path.name + ".salvaging")
    with open(temp, "wb") as fh:
        fh.write(MAGIC)
        for record in found.records:
            fh.write(record.framed())
        fh.flush()
        os.fsync(fh.fileno())
    kept_as = _free_name(path.with_name(path.name + DAMAGED_SUFFIX))
    os.replace(path, kept_as)
    os.replace(temp, path)
    fsync_dir(path.parent)
    return found.summary(path, kept_as)


def salvage_records(data: bytes, applied: int, folded: int) -> Salvage:
    """Every whole record of a journal's bytes, read past damage; see the module docstring."""
    records: list[Record] = []
    dropped: list[tuple[int, int]] = []
    offset = len(MAGIC)
    if data[:offset] != MAGIC and data:  # a damaged header: the records after it may be whole
        dropped.append((0, min(offset, len(data))))
    while offset < len(data):
        found = scan_records(data, offset, 0)
        records += found.records
        if found.problem is None:
            break
        offset = _next_whole_record(data, found.end, records[-1].seq if records else folded)
        if offset > found.end:  # else a whole record whose seq skips some: the gap is filled below
            dropped.append((found.end, offset))
    return _with_lost_seqs(records, dropped, applied, folded)


def _next_whole_record(data: bytes, start: int, after_seq: int) -> int:
    """The first offset from ``start`` where a record reads whole with a seq past ``after_seq``; the end if none.
    Only offsets whose payload would open as an Arrow stream does are tried, so a long journal is searched fast."""
    candidate = data.find(ARROW_STREAM_START, start + HEAD.size)
    while candidate >= 0:
        at, candidate = candidate - HEAD.size, data.find(ARROW_STREAM_START, candidate + 1)
        length, crc = HEAD.unpack_from(data, at)
        end = at + HEAD.size + length
        if end > len(data) or zlib.crc32(data[at + HEAD.size : end]) != crc:
            continue
        try:
            record = Record.from_bytes(data[at + HEAD.size : end])
        except Exception:  # noqa: BLE001 - bytes that happen to pass a crc32 may fail in any way
            continue
        if record.seq > after_seq:
            return at
    return len(data)


def _with_lost_seqs(records: list[Record], dropped: list[tuple[int, int]], applied: int, folded: int) -> Salvage:
    """``records`` with an empty record for each seq missing between them, after ``folded``, and up to ``applied``."""
    out: list[Record] = []
    lost: list[int] = []
    previous = Record(folded, "delete", [])
    for record in [*records, None]:
        if record is not None and record.seq <= previous.seq:
            continue  # a record before the written parts' seq or a repeat: not this journal's to keep
        if record is None or not follows(previous, record):
            stop = max(applied, previous.seq) + 1 if record is None else record.seq
            for seq in range(previous.seq + 1, stop):
                out.append(Record(seq, "delete", []))
                lost.append(seq)
        if record is not None:
            out.append(record)
            previous = record
    return Salvage(out, dropped, lost)


def _ranges(seqs: list[int]) -> str:
    """1, 2, 3, 7 → "1..3, 7"."""
    spans: list[list[int]] = []
    for seq in seqs:
        if spans and seq == spans[-1][1] + 1:
            spans[-1][1] = seq
        else:
            spans.append([seq, seq])
    return ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in spans)


def _free_name(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``... whichever does not exist yet."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate
