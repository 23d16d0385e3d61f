"""Document texts: the build's Parquet parts, the written parts the journal was folded into, and an overlay of
the later upserts and deletions the journal holds.

A ``DocStore`` is immutable: ``with_updates`` returns a new one that shares the parts (and their
id → row map and row-group cache), so a search that pinned one keeps reading the same texts while
writers publish the next. The overlay is two layers: a large one shared by many versions and never
changed, and the writes since it, which each version copies; the writes merge into a new large layer
once they pass an eighth of it, so a write copies a bounded share of the overlay instead of all of it
(at a million upserted documents, tens of milliseconds a write). The overlay is rebuilt from the
collection's write-ahead journal at open; the parts never change once written (a fold makes a new store), and
each is read as this process opened it (``_pinned``), whatever happens to the folder after.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from lsr.files import CorruptFileError, allow_open_files, parquet_ids

if TYPE_CHECKING:
    from lsr.ingest.written_parts import WrittenParts

log = logging.getLogger(__name__)

DOC_ROW_GROUP = 1024  # rows per Parquet row group in docs parts: one include_text lookup reads one group
ROW_BITS = 32  # a docs part holds fewer rows than 2**32 (a build's shard, a fold's part)
ROW_MASK = (1 << ROW_BITS) - 1


class _Parts:
    """The build's docs parts, then the written parts (which win over them, and may delete their ids); shared by
    every DocStore version of a collection until a fold."""

    def __init__(self, paths: Sequence[Path], written: "WrittenParts | None" = None) -> None:
        self.paths = list(paths)
        self._sources = _pinned(self.paths)
        self.written = written
        self._where: dict[str, int] | None = None  # see ``locations``
        self._written_ids: list[str] = []
        self._lock = threading.Lock()
        self._reading = threading.Lock()  # one read at a time of an opened written part
        self.row_group = lru_cache(maxsize=64)(self._read_row_group)
        self._mean_text_bytes: float | None = None

    def _files(self) -> list:
        """Each part as something ``pq.ParquetFile`` reads: the build's pinned, the written ones opened."""
        return self._sources + (self.written.files if self.written is not None else [])

    def locations(self) -> dict[str, int]:
        """doc id → ``part << ROW_BITS | row`` of its live text; built on first use from the id columns only. One
        int a document, where a (part, row) tuple took 56 bytes more (28 MB at 500,000 documents)."""
        with self._lock:
            if self._where is None:
                where = {}
                for p, (path, source) in enumerate(zip(self.paths, self._sources)):
                    ids = _read(path, lambda: parquet_ids(source))
                    where.update(zip(ids, range(p << ROW_BITS, (p << ROW_BITS) + len(ids))))
                if self.written is not None:
                    ids, deleted = self.written.ids()
                    first = len(self.paths)
                    for part, (doc_ids, gone) in enumerate(self._by_part(ids, deleted), first):
                        for row, (doc_id, is_gone) in enumerate(zip(doc_ids, gone)):
                            if is_gone:
                                where.pop(doc_id, None)
                            else:
                                where[doc_id] = part << ROW_BITS | row
                    self._written_ids = ids
                self._where = where
            return self._where

    def _by_part(self, ids: list[str], deleted: list[bool]) -> Iterator[tuple[list[str], list[bool]]]:
        """``ids`` and ``deleted`` (every written part's, in order) cut into each part's."""
        start = 0
        for part in self.written.parts:
            yield ids[start : start + part.rows], deleted[start : start + part.rows]
            start += part.rows

    def written_ids(self) -> list[str]:
        """Ids the written parts hold (upserted or deleted)."""
        self.locations()
        return self._written_ids

    def _read_row_group(self, part: int, group: int) -> list[str]:
        if part < len(self.paths):
            path, source = self.paths[part], self._sources[part]
            return _read(path, lambda: pq.ParquetFile(source).read_row_group(group, columns=["text"])
                         .column("text").to_pylist())
        with self._reading:
            file = self.written.files[part - len(self.paths)]
            return _read(self.written.parts[part - len(self.paths)].file,
                         lambda: file.read_row_group(group, columns=["text"]).column("text").to_pylist())

    def mean_text_bytes(self) -> float:
        """Average uncompressed text size from the Parquet footers (no data is read); computed once."""
        if self._mean_text_bytes is None:
            self._mean_text_bytes = self._footer_mean_text_bytes()
        return self._mean_text_bytes

    def _footer_mean_text_bytes(self) -> float:
        total = rows = 0
        written = self.written.parts if self.written is not None else []
        for path, file in zip([*self.paths, *(part.file for part in written)], self._files()):
            meta = _read(path, lambda: (file if isinstance(file, pq.ParquetFile) else pq.ParquetFile(file)).metadata)
            text = meta.schema.names.index("text")
            rows += meta.num_rows
            total += sum(meta.row_group(g).column(text).total_uncompressed_size for g in range(meta.num_row_groups))
        return total / rows if rows else 0.0


def _pinned(paths: list[Path]) -> list["pa.OSFile | Path"]:
    """The build's parts as this process found them: each held open (reads at an offset, so threads share it). `lsr
    index --overwrite` under a server moves the build's files aside, then deletes them, and the texts a search found
    were read by path: gone for the whole rebuild (UNAVAILABLE), or another build's file of the same name. Every
    write of lsr's replaces a file (temp + rename), so an open part never changes; one damaged in place fails its
    read, named (a memory map of it crashed the server with SIGBUS once truncated). A part that cannot be opened
    stays its path, for its read to name what is wrong; so do all where the process may not open that many files."""
    if not allow_open_files(len(paths)):
        log.warning("%d docs parts are read by path, not held open (this process may not open that many files: raise "
                    "`ulimit -n`): while the collection is indexed anew under a server, its texts are unavailable",
                    len(paths))
        return list(paths)
    sources: list[pa.OSFile | Path] = []
    for path in paths:
        try:
            sources.append(pa.OSFile(str(path)))
        except (OSError, pa.ArrowException):  # missing or unreadable: its read says so
            sources.append(path)
    return sources



def _read(path: Path, read):
    """Run a Parquet read; a damaged file is the server's data error, named, never the caller's."""
    try:
        return read()
    except (pa.ArrowException, OSError, ValueError, IndexError, KeyError) as exc:
        raise CorruptFileError(f"{path} is unreadable ({exc}); run `lsr verify` on the collection") from None


FOLD_MIN = 1_024  # writes a version's own layer holds at least before it folds into the shared one


def _later_wins(earlier: Mapping[str, str | None], later: Mapping[str, str | None]) -> dict[str, str | None]:
    """``earlier``'s writes then ``later``'s, an id rewritten by ``later`` moving to its place there (the order of the
    last writes, which a rebuilt BM25 leg numbers its rows in)."""
    return {**{doc_id: text for doc_id, text in earlier.items() if doc_id not in later}, **later}


class DocStore:
    """Texts by doc id, as of one version of the collection."""

    def __init__(self, directory: Path, overlay: Mapping[str, str | None] | None = None,
                 written: "WrittenParts | None" = None, *, _parts: _Parts | None = None,
                 _recent: dict[str, str | None] | None = None):
        self.directory = directory
        self._parts = _parts or _Parts(sorted(directory.glob("part-*.parquet")), written)
        self._base = overlay if _recent is not None else dict(overlay or {})  # id → text of later writes; None = deleted
        self._recent = _recent or {}  # writes since ``_base``: they win over it

    def with_updates(self, ids: Sequence[str], texts: Sequence[str | None]) -> "DocStore":
        """A new version with these texts (None = deleted); this one is unchanged."""
        recent = _later_wins(self._recent, dict(zip(ids, texts)))
        if len(recent) <= max(FOLD_MIN, len(self._base) // 8):
            return DocStore(self.directory, self._base, _parts=self._parts, _recent=recent)
        return DocStore(self.directory, _later_wins(self._base, recent), _parts=self._parts, _recent={})

    @property
    def folded_upto(self) -> int:
        """The journal seq the written parts it reads hold (0: none)."""
        return self._parts.written.upto if self._parts.written is not None else 0

    def _overlay(self) -> dict[str, str | None]:
        """Every write after the build, the last one per id, in the order of those writes (a copy: for the rare
        whole-overlay questions)."""
        return _later_wins(self._base, self._recent)

    def _written(self, doc_id: str, missing: object = None) -> str | None | object:
        """The text a write after the build gave ``doc_id`` (None: deleted), else ``missing``."""
        if doc_id in self._recent:
            return self._recent[doc_id]
        return self._base.get(doc_id, missing)

    def written(self) -> list[str]:
        """Ids written (upserted or deleted) after the build: their build-time text is no longer current. Each comes
        at its last write, as a running collection's BM25 leg numbered it, so a leg rebuilt from these breaks ties
        as that one did."""
        return list(reversed(dict.fromkeys(reversed([*self._parts.written_ids(), *self._overlay()]))))

    def written_since(self, before: "DocStore") -> list[str]:
        """Ids whose text differs from ``before``'s, an earlier version of this store (journaled writes only add)."""
        missing = object()
        return [doc_id for doc_id, text in self._overlay().items() if before._written(doc_id, missing) != text]

    def contains(self, doc_id: str) -> bool:
        missing = object()
        text = self._written(doc_id, missing)
        if text is not missing:
            return text is not None
        return doc_id in self._parts.locations()

    def ids(self) -> set[str]:
        """Every live doc id."""
        live = set(self._parts.locations())
        for doc_id, text in self._overlay().items():
            (live.add if text is not None else live.discard)(doc_id)
        return live

    def get(self, ids: Sequence[str]) -> list[str | None]:
        where = self._parts.locations()
        missing = object()
        out: list[str | None] = []
        for doc_id in ids:
            text = self._written(doc_id, missing)
            if text is not missing:
                out.append(text)
            elif (at := where.get(doc_id)) is not None:
                part, row = at >> ROW_BITS, at & ROW_MASK
                out.append(self._parts.row_group(part, row // DOC_ROW_GROUP)[row % DOC_ROW_GROUP])
            else:
                out.append(None)
        return out

    def mean_text_bytes(self) -> float:
        return self._parts.mean_text_bytes()
