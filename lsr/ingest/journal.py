"""The collection's write-ahead journal: every acknowledged upsert and delete, in order.

A write is appended here and fsynced before any store changes, and acknowledged only after every
store applied it. Each store records the last journal ``seq`` it holds (atomically with its own
commit), so opening a collection replays exactly the records a store missed: a kill -9 between
stores never leaves a half-applied write behind. The journal is also the source of truth for
documents written after the build (their texts and vectors), which ``lsr repair`` rebuilds from.

File layout: ``MAGIC`` then records of ``<length u32><crc32 u32><payload>``; a payload is an Arrow
IPC stream of one table (id, and for upserts text, indices, values, dense) whose schema metadata
holds the op and seq. A cut-off record at the end is a write that was never acknowledged. A fold
(``lsr.ingest.journal_fold``) moves the records up to one seq into Parquet parts (``lsr.ingest.written_parts``) and
cuts them from the journal, which then starts after that seq. Records that carry a ``checkpoint`` stand for the
state the writes up to it led to (a part read back, or a journal compacted by lsr before parts existed), so a
store lacks all of them or none.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from lsr.files import CorruptFileError, fsync_dir
from lsr.sparse import SparseBatch

JOURNAL_FILE = "journal.log"
MAGIC = b"LSRJRNL1"
HEAD = struct.Struct("<II")


@dataclass
class Record:
    seq: int
    op: str  # "upsert" or "delete"
    ids: list[str]
    texts: list[str] | None = None
    sparse: SparseBatch | None = None
    dense: np.ndarray | None = None
    checkpoint: int | None = None  # set on records that stand for a state: the last seq of the history it is of

    def lacked_by(self, seq: int) -> bool:
        """Whether a store holding the records up to ``seq`` lacks this one. Records with a checkpoint are one state
        (every document's last write), so a store behind their checkpoint lacks every one of them."""
        return self.seq > seq or (self.checkpoint is not None and self.checkpoint > seq)

    def to_bytes(self) -> bytes:
        if self.op == "upsert":
            table = self.sparse.to_arrow(self.ids).append_column("text", pa.array(self.texts, pa.string()))
            if self.dense is not None:
                dense = np.ascontiguousarray(self.dense, np.float32)
                table = table.append_column("dense", pa.FixedSizeListArray.from_arrays(dense.reshape(-1), dense.shape[1]))
        else:
            table = pa.table({"id": pa.array(self.ids, pa.string())})
        meta = {b"lsr.op": self.op.encode(), b"lsr.seq": str(self.seq).encode()}
        if self.checkpoint is not None:
            meta[b"lsr.checkpoint"] = str(self.checkpoint).encode()
        if self.sparse is not None:
            meta[b"lsr.vocab_size"] = str(self.sparse.vocab_size).encode()  # not the vocabulary: that is in the index
        table = table.replace_schema_metadata(meta)
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> "Record":
        table = pa.ipc.open_stream(payload).read_all()
        meta = table.schema.metadata
        checkpoint = int(meta[b"lsr.checkpoint"]) if b"lsr.checkpoint" in meta else None
        return cls.from_table(table, meta[b"lsr.op"].decode(), int(meta[b"lsr.seq"]), checkpoint)

    @classmethod
    def from_table(cls, table: pa.Table, op: str, seq: int, checkpoint: int | None = None) -> "Record":
        """A record of ``table``'s rows (id, and for upserts text, indices, values, dense; ``lsr.vocab_size`` in
        its schema metadata)."""
        ids = table.column("id").to_pylist()
        if op != "upsert":
            return cls(seq, op, ids, checkpoint=checkpoint)
        dense = None
        if "dense" in table.column_names:
            column = table.column("dense").combine_chunks()
            flat = column.flatten().to_numpy(zero_copy_only=False)  # np.asarray on the Arrow array: 5x slower
            dense = np.asarray(flat, np.float32).reshape(len(ids), column.type.list_size)
        sparse = SparseBatch.from_arrow(table.select(["indices", "values"]).replace_schema_metadata(table.schema.metadata))
        return cls(seq, op, ids, table.column("text").to_pylist(), sparse, dense, checkpoint)

    def framed(self) -> bytes:
        """The record as the journal stores it: length, crc32, payload."""
        payload = self.to_bytes()
        return HEAD.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass
class Scan:
    """What reading the journal found: the whole records, and where and why reading stopped early."""

    records: list[Record]
    end: int  # byte offset after the last whole record
    size: int
    problem: str | None = None  # why bytes past ``end`` are unreadable
    ends: list[int] = field(default_factory=list)  # the byte offset after each record


def scan(path: Path, start: int = 0) -> Scan:
    """Read every whole record (from byte ``start``, a record's first byte, when given); a damaged or cut-off one
    ends the scan and is reported, not raised."""
    if not path.is_file():
        if path.exists() or path.is_symlink():  # a folder or a dangling link where the journal should be
            raise CorruptFileError(f"{path} is not a file (corrupted)")
        return Scan([], 0, 0)
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read()
    if start:
        return scan_records(data, 0, start)
    if len(data) < len(MAGIC):
        return Scan([], 0, len(data), "the header is cut off" if data else None)
    if data[: len(MAGIC)] != MAGIC:
        return Scan([], 0, len(data), "the header is not an lsr journal's")
    return scan_records(data, len(MAGIC), 0)


def scan_records(data: bytes, offset: int, base: int) -> Scan:
    """The records in ``data`` from ``offset``; ``base`` is the file offset of ``data[0]``."""
    records: list[Record] = []
    ends: list[int] = []

    def stop(at: int, problem: str) -> Scan:
        return Scan(records, at, base + len(data), problem, ends)

    while offset < len(data):
        at = base + offset
        if offset + HEAD.size > len(data):
            return stop(at, f"a record header at byte {at} is cut off")
        length, crc = HEAD.unpack_from(data, offset)
        payload = data[offset + HEAD.size : offset + HEAD.size + length]
        if len(payload) < length:
            return stop(at, f"the record at byte {at} is cut off")
        if zlib.crc32(payload) != crc:
            return stop(at, f"the record at byte {at} fails its crc32 checksum")
        try:
            record = Record.from_bytes(payload)
        except (pa.ArrowException, KeyError, ValueError) as exc:
            return stop(at, f"the record at byte {at} is unreadable ({exc})")
        if records and not follows(records[-1], record):
            return stop(at, f"the record at byte {at} has seq {record.seq} after {records[-1].seq}")
        records.append(record)
        offset += HEAD.size + length
        ends.append(base + offset)
    return Scan(records, base + offset, base + len(data), None, ends)


def follows(previous: Record, record: Record) -> bool:
    """Whether ``record`` may follow ``previous``: the next seq, or a later one where a compacted journal's records
    start (they end at their checkpoint, so the seqs of the records they replaced before it go unused)."""
    if record.seq == previous.seq + 1:
        return True
    return record.checkpoint is not None and record.checkpoint != previous.checkpoint and record.seq > previous.seq


def recover(path: Path, applied: int, folded: int = 0) -> list[Record]:
    """The journal's records after ``folded`` (the seq its written parts hold), after cutting off an
    unacknowledged tail left by a crash.

    ``applied`` is the highest seq any store holds. Stores apply a record only after it was
    fsynced whole, so unreadable bytes that hide an applied record are damage, not a crash:
    that raises CorruptFileError naming the file instead of silently dropping acknowledged writes.
    Records up to ``folded`` are there when a crash came between a fold's parts and its cut of the journal.
    """
    found = scan(path)
    last = max(found.records[-1].seq if found.records else 0, folded)
    if found.problem is None:
        if last < applied:
            raise CorruptFileError(f"{path} ends at record {last}, but the stores hold record {applied} (the journal "
                                   f"was truncated or replaced); restore it from a backup, or `lsr repair {path.parent} "
                                   f"--salvage` rebuilds from the build and the records left, losing the writes after "
                                   f"record {last}")
        return [record for record in found.records if record.seq > folded]
    if last < applied or (found.end == 0 and found.size > len(MAGIC)):
        raise CorruptFileError(f"{path}: {found.problem}, and acknowledged writes lie past it (corrupted); restore "
                               f"it from a backup, or `lsr repair {path.parent} --salvage` keeps the whole records "
                               "around the damage and loses the writes inside it")
    with open(path, "r+b") as fh:  # the cut-off write was never acknowledged: drop it
        fh.truncate(found.end)
        fh.flush()
        os.fsync(fh.fileno())
    return [record for record in found.records if record.seq > folded]


def latest_writes(records: Sequence[Record]) -> dict[str, tuple[Record, int] | None]:
    """Each journaled id's last write: (upsert record, row), or None when it was deleted last; ids in the order
    of their last writes, the order a running collection's indexes hold them in (ties go to the earlier)."""
    latest: dict[str, tuple[Record, int] | None] = {}
    for record in records:
        for row, doc_id in enumerate(record.ids):
            latest.pop(doc_id, None)
            latest[doc_id] = (record, row) if record.op == "upsert" else None
    return latest


@dataclass
class Tally:
    """What a journal holds, to decide on a fold: its records and the ids they hold."""

    records: int = 0
    rows: int = 0

    def add(self, records: Sequence[Record]) -> "Tally":
        self.records += len(records)
        self.rows += sum(len(record.ids) for record in records)
        return self


class Journal:
    """Appends records durably; ``last_seq`` continues after the records found at open (or the seq the written
    parts hold), ``tally`` counts what the file holds, and ``lock`` orders this process's appends with a fold's
    swap of the file."""

    def __init__(self, path: Path, last_seq: int, records: Sequence[Record] = ()) -> None:
        self.path = path
        self.last_seq = last_seq
        self.tally = Tally().add(records)
        self.lock = threading.Lock()
        self.seen = _identity(path)  # the file this process last saw: another size or file means another process wrote

    @property
    def size(self) -> int:
        return self.seen[1]

    def changed_on_disk(self) -> bool:
        """Whether another process appended, cut a torn tail or folded since this one opened or last appended."""
        with self.lock:  # not midway through this process's own fold's swap
            return _identity(self.path) != self.seen

    def appended_since(self) -> list[Record] | None:
        """The records another process appended since this one last looked, now taken as seen; None when the journal
        is not simply longer by whole records that follow ours (a torn tail, a fold's cut, damage): then
        reopen."""
        with self.lock:
            inode, size = _identity(self.path)
            if inode != self.seen[0] or size < self.size:
                return None
            found = scan(self.path, self.size)
            if found.problem is not None or (found.records and found.records[0].seq != self.last_seq + 1):
                return None
            if found.records:
                self.last_seq = found.records[-1].seq
            self.tally.add(found.records)
            self.seen = (inode, found.end)
            return found.records

    def replaced(self, tally: Tally) -> None:
        """This process swapped in a cut file (holding ``lock``): take it as seen."""
        self.tally = tally
        self.seen = _identity(self.path)

    def append(self, op: str, ids: Sequence[str], texts: Sequence[str] | None = None,
               sparse: SparseBatch | None = None, dense: np.ndarray | None = None) -> Record:
        """Write the next record and fsync it; only then may stores apply it."""
        record = Record(self.last_seq + 1, op, list(ids), None if texts is None else list(texts), sparse, dense)
        framed = record.framed()
        with self.lock:
            size = _identity(self.path)[1]
            new = size == 0
            # unbuffered: a buffered file's truncate flushed its buffer first, failed as the write had (a full disk,
            # a file-size limit) and left the half record, masking the first error
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:  # a read-only folder
                raise NotJournaled.of(self.path, exc) from None
            try:
                _write_all(fd, MAGIC + framed if new else framed)
                os.fsync(fd)
            except BaseException as exc:
                os.ftruncate(fd, size)  # leave no half record for the next append to follow
                if isinstance(exc, OSError):
                    raise NotJournaled.of(self.path, exc) from None
                raise
            finally:
                os.close(fd)
            if new:
                fsync_dir(self.path.parent)
            self.last_seq = record.seq
            self.tally.add([record])
            self.seen = _identity(self.path)
        return record


class NotJournaled(OSError):
    """A write the journal could not take (a full disk, a read-only folder), and holds nothing of: its append was
    undone, so a caller says it was not kept (not "may be kept"). ``errno`` is the cause's."""

    @classmethod
    def of(cls, path: Path, cause: OSError) -> "NotJournaled":
        # (errno, text) as its args, so the errno survives pickling (a shard's Ray actor: UNAVAILABLE, not INTERNAL)
        return cls(cause.errno, f"could not write {path}: {cause.strerror or cause}")  # a full disk's named no file

    def __str__(self) -> str:
        return str(self.strerror)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (it may write fewer, and then says why only on the next call)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _identity(path: Path) -> tuple[int, int]:
    """(inode, size) of the journal file; (0, 0) when there is none."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return 0, 0
    return stat.st_ino, stat.st_size
