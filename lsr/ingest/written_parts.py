"""The documents written since the build, as Parquet parts the journal was folded into.

Why: the journal held every upsert (text, sparse and dense vectors) since the build, and every open read and
decoded all of it and kept its texts in memory: a collection grown by writes to 60,000 new documents opened in 1.7 s
and held 400 MB more than the build did. A fold (``journal_fold``) writes the state the journal's records lead to
as one part and cuts them from the journal; an open reads only the parts' ids, and texts are read from them by
row group when asked, as the build's docs parts are.

A part holds each id its records wrote, once: its last text and vectors, or that it was deleted. Later parts win
over earlier ones (and over the build). The last ``FAN_IN`` parts are merged into one once they are of a size, so
there are few parts and a row is rewritten O(log n) times. A store saved as of a seq before a part's ``upto`` lacks the whole part and
applies it as records that carry ``upto`` as their checkpoint (``Record.lacked_by``), which gives the same state the
history did.

Layout::

    OUT/written/manifest.json          sealed: the seq the parts hold, and each part's file, size, crc32, rows, upto
    OUT/written/part-000001.parquet    id, deleted, text, indices, values[, dense]; row groups of ``DOC_ROW_GROUP``

The manifest is written after its parts and names the only files that count: a fold or merge cut short leaves
files it does not name, removed at the next open. Each ``WrittenParts`` keeps its parts open, so a search that
pinned a version reads it whole while a fold in this process removes the files it replaced (another process
takes a fold up holding the collection's folder, which the fold holds too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lsr.files import (CorruptFileError, atomic_write, check_record, file_record, fsync_dir, read_sealed_json,
                       sealed, write_json_atomic)
from lsr.ingest.docstore import DOC_ROW_GROUP
from lsr.ingest.journal import JOURNAL_FILE, Record, latest_writes, scan
from lsr.sparse import SparseBatch

WRITTEN_DIR = "written"
MANIFEST = "manifest.json"
CHUNK_ROWS = 2_048  # rows of a part applied as one record
FAN_IN = 4  # parts merged into one at a time: a row is rewritten about log4(rows / a fold's rows) times
MERGE_RATIO = 2  # ... when the oldest of the last FAN_IN holds at most this many times the newest's rows
_PART = re.compile(r"part-(\d{6})\.parquet")


@dataclass(frozen=True)
class Part:
    file: str  # relative to the collection
    bytes: int
    crc32: int
    rows: int
    upto: int  # the last journal seq whose writes it holds


@dataclass
class WrittenParts:
    """One manifest's parts, opened: what the journal was folded into, up to journal seq ``upto``."""

    collection: Path
    upto: int = 0
    parts: list[Part] = field(default_factory=list)
    files: list[pq.ParquetFile] = field(default_factory=list, repr=False)

    @classmethod
    def open(cls, collection: Path) -> "WrittenParts":
        """The parts the manifest names, each checked against its size and crc32 and kept open; none without one
        (unless the journal was cut: then parts lie there that only a lost manifest named)."""
        path = collection / WRITTEN_DIR / MANIFEST
        if not path.is_file():
            _check_no_manifest_was_lost(collection)
            return cls(collection)
        try:
            manifest = read_sealed_json(path)
        except CorruptFileError as exc:  # it was the whole message: no next step
            raise CorruptFileError(f"{exc}{_HOLDS_WRITES}") from None
        parts = [Part(**record) for record in manifest["parts"]]
        files = []
        for part in parts:
            try:
                checked = check_record(collection, {"file": part.file, "bytes": part.bytes, "crc32": part.crc32})
            except CorruptFileError as exc:
                raise CorruptFileError(f"{exc}{_HOLDS_WRITES}") from None
            files.append(_open(checked))
        return cls(collection, manifest["upto"], parts, files)

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self.parts)

    def ids(self) -> tuple[list[str], list[bool]]:
        """Every row's id and whether it is a deletion, part after part."""
        ids: list[str] = []
        deleted: list[bool] = []
        for part, file in zip(self.parts, self.files):
            table = _read(part.file, lambda: file.read(columns=["id", "deleted"]))
            ids += table.column("id").to_pylist()
            deleted += table.column("deleted").to_pylist()
        return ids, deleted

    def records(self) -> Iterator[Record]:
        """Each part's rows as records that carry its ``upto`` as their checkpoint: a store saved before it applies
        all of them (upserts of the live rows, deletes of the others), ``CHUNK_ROWS`` rows at a time. Only a part's
        last record has seq ``upto``; the others ``upto - 1``, so a store that applied some of them (and commits their
        seq, as the sparse index does) still lacks the rest, and after a crash midway lacks the whole part again."""
        for part, file in zip(self.parts, self.files):
            meta = file.schema_arrow.metadata
            pieces = (piece for chunk in file.iter_batches(batch_size=CHUNK_ROWS)
                      for piece in _by_op(pa.Table.from_batches([chunk]).replace_schema_metadata(meta)))
            held = next(pieces, None)
            for piece in pieces:
                yield Record.from_table(held[1], held[0], part.upto - 1, part.upto)
                held = piece
            if held is not None:
                yield Record.from_table(held[1], held[0], part.upto, part.upto)

    def with_state_of(self, records: Sequence[Record], vocab_size: int, dims: int | None) -> "WrittenParts":
        """These parts plus the state ``records`` (the journal's, after ``upto``) lead to, the last ``FAN_IN`` parts
        merged into one while they are of a size (``MERGE_RATIO``), under a new manifest written last; the files it no longer names are
        left for ``remove_unnamed``. ``vocab_size`` and ``dims`` (None: no dense index) are the collection's. The
        caller holds the collection's folder."""
        folder = self.collection / WRITTEN_DIR
        if not folder.is_dir():
            folder.mkdir()
            fsync_dir(self.collection)
        number = max([int(m.group(1)) for m in map(_PART.fullmatch, (p.name for p in folder.iterdir())) if m] + [0])
        number += 1  # never a file on disk: one a fold that failed after its manifest left is named there
        state = _state_table(records, vocab_size, dims)
        parts = self.parts + [self._write(number, state.schema, [state], records[-1].seq)]
        while len(parts) >= FAN_IN and parts[-FAN_IN].rows <= MERGE_RATIO * parts[-1].rows:
            merging = [_open(self.collection / part.file) for part in parts[-FAN_IN:]]
            number += 1
            parts[-FAN_IN:] = [self._write(number, state.schema, _merged(merging), parts[-1].upto)]
        fsync_dir(folder)
        write_json_atomic(folder / MANIFEST, sealed({"upto": records[-1].seq, "parts": [vars(part) for part in parts]}))
        fsync_dir(folder)
        opened = dict(zip(self.parts, self.files))  # kept parts stay open; new ones were just checksummed as written
        return WrittenParts(self.collection, records[-1].seq, parts,
                            [opened[part] if part in opened else _open(self.collection / part.file) for part in parts])

    def _write(self, number: int, schema: pa.Schema, tables: Iterable[pa.Table], upto: int) -> Part:
        """Write ``tables``' rows as part ``number`` in row groups of exactly ``DOC_ROW_GROUP`` rows (the doc store
        finds a row's group by division), one group's worth in memory at a time beyond what a table holds."""
        path = self.collection / WRITTEN_DIR / f"part-{number:06d}.parquet"
        rows = 0

        def write(fh: IO[bytes]) -> None:
            nonlocal rows
            pending: list[pa.Table] = []
            # no dictionaries: ids, texts and vectors hardly repeat, and trying them made writes 2x and reads 4x slower
            with pq.ParquetWriter(fh, schema, compression="zstd", use_dictionary=False) as writer:
                for table in tables:
                    pending.append(table.replace_schema_metadata(schema.metadata))
                    held = sum(piece.num_rows for piece in pending)
                    if held >= DOC_ROW_GROUP:
                        whole, cut = pa.concat_tables(pending), held - held % DOC_ROW_GROUP
                        writer.write_table(whole.slice(0, cut), row_group_size=DOC_ROW_GROUP)
                        pending, rows = [whole.slice(cut)], rows + cut
                held = sum(piece.num_rows for piece in pending)
                if held:
                    writer.write_table(pa.concat_tables(pending), row_group_size=DOC_ROW_GROUP)
                    rows += held

        atomic_write(path, write)
        return Part(upto=upto, rows=rows, **file_record(path, self.collection))

    def remove_unnamed(self) -> None:
        """Remove the files of ``written/`` the manifest does not name (a fold cut short, parts merged away); the
        caller holds the collection's folder."""
        folder = self.collection / WRITTEN_DIR
        if not folder.is_dir():
            return
        named = {Path(part.file).name for part in self.parts} | {MANIFEST}
        for path in folder.iterdir():
            if path.name not in named:
                path.unlink(missing_ok=True)


_HOLDS_WRITES = (": it holds documents written since the build, which nothing else holds; restore it from a backup, "
                 "or re-index with `lsr index --overwrite` and upsert those documents again")


def _check_no_manifest_was_lost(collection: Path) -> None:
    """With no manifest, part files are a first fold cut short before its manifest (the journal still holds every
    record, from seq 1, and the next open removes them) or the parts of a manifest that was lost after the journal
    was cut: then they hold the only copy of the writes before the journal's first record, and were deleted by the
    open that then failed on the journal, whose salvage lost them for good."""
    folder = collection / WRITTEN_DIR
    named = sorted(path.name for path in folder.iterdir() if _PART.fullmatch(path.name)) if folder.is_dir() else []
    if not named:
        return
    first = next(iter(scan(collection / JOURNAL_FILE).records), None)
    if first is not None and (first.seq == 1 or first.checkpoint is not None):
        return
    starts = f"starts at record {first.seq}" if first is not None else "holds no record"
    raise CorruptFileError(f"{folder / MANIFEST} is missing, yet {folder} holds {len(named)} part file(s) "
                           f"({', '.join(named[:3])}{', ...' if len(named) > 3 else ''}) and the journal {starts}: the "
                           "documents written before it lie in those parts, which only the manifest names; restore "
                           "it from a backup (nothing was removed)")


def _open(path: Path) -> pq.ParquetFile:
    return _read(path, lambda: pq.ParquetFile(pa.OSFile(str(path))))  # pread: threads share it


def _read(name: object, read):
    """Run a Parquet read; a damaged part is the collection's data error, named."""
    try:
        return read()
    except (pa.ArrowException, OSError, ValueError, IndexError) as exc:
        raise CorruptFileError(f"{name} is unreadable ({exc}); run `lsr verify` on the collection") from None


def _by_op(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """A part's rows as ("upsert", live rows) and ("delete", deleted rows), leaving out an empty one."""
    deleted = table.column("deleted")
    for op, rows in (("upsert", table.filter(pc.invert(deleted))), ("delete", table.filter(deleted))):
        if rows.num_rows:
            yield op, rows


def _merged(parts: Sequence[pq.ParquetFile]) -> Iterator[pa.Table]:
    """One part of several (oldest first), a batch at a time: each part's rows whose ids no later part writes."""
    later = [part.read(columns=["id"]).column("id") for part in parts]
    for i, part in enumerate(parts):
        written = pa.chunked_array([chunk for ids in later[i + 1 :] for chunk in ids.chunks], pa.string())
        for batch in part.iter_batches(batch_size=8 * DOC_ROW_GROUP):
            table = pa.Table.from_batches([batch])
            yield table.filter(pc.invert(pc.is_in(batch.column("id"), value_set=written))) if len(written) else table


def _state_table(records: Sequence[Record], vocab_size: int, dims: int | None) -> pa.Table:
    """Each id ``records`` wrote, once: its last upsert's text and vectors, else a deletion; in the order of the
    ids' last writes, live rows first."""
    latest = latest_writes(records)
    live = [(doc_id, where) for doc_id, where in latest.items() if where is not None]
    deleted = [doc_id for doc_id, where in latest.items() if where is None]
    runs: list[tuple[Record, list[int]]] = []
    for _, (record, row) in live:
        if runs and runs[-1][0] is record:
            runs[-1][1].append(row)
        else:
            runs.append((record, [row]))
    sparse = SparseBatch.concat([record.sparse.select(rows) for record, rows in runs]) if runs else \
        SparseBatch.empty(0, vocab_size)
    table = sparse.to_arrow([doc_id for doc_id, _ in live])
    meta = table.schema.metadata
    table = table.append_column("deleted", pa.array([False] * len(live), pa.bool_())).append_column(
        "text", pa.array([record.texts[row] for record, rows in runs for row in rows], pa.string()))
    if dims is not None:
        dense = np.concatenate([record.dense[rows] for record, rows in runs]) if runs else np.zeros((0, dims))
        table = table.append_column("dense", pa.FixedSizeListArray.from_arrays(
            np.ascontiguousarray(dense, np.float32).reshape(-1), dims))
    if deleted:
        gone = {"id": pa.array(deleted, pa.string()), "deleted": pa.array([True] * len(deleted), pa.bool_())}
        gone.update({name: pa.nulls(len(deleted), table.schema.field(name).type)
                     for name in table.column_names if name not in gone})
        table = pa.concat_tables([table, pa.table(gone, schema=table.schema)])
    return table.replace_schema_metadata(meta)
