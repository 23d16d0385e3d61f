"""A collection directory: what ``lsr index`` writes and every searcher opens.

Layout (``lsr.json`` is written last, so its presence means the collection is complete)::

    OUT/lsr.json                      metadata + checksums of everything below
    OUT/vocab.json                    the model's vocabulary (term id → token), once for all shards
    OUT/vectors/part-00000.parquet    encoded sparse vectors per shard (id, indices, values)
    OUT/docs/part-00000.parquet       id, text per shard (for include_text / explain)
    OUT/docs/updates.parquet          texts of upserted/deleted documents (id, text; null = deleted)
    OUT/dense/embeddings-00000.npy    float32 embeddings per shard, rows aligned with the parts
    OUT/dense/faiss.index, ids.parquet  the DenseIndex
    OUT/sparse/                       the InvertedIndex
    OUT/.lsr-build.json               checkpoint of an unfinished build (removed when done)
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lsr.search.dense_index import DenseIndex
from lsr.files import atomic_write, file_sha256, write_json_atomic
from lsr.sparse import SparseBatch

FORMAT = 1
META_FILE = "lsr.json"
BUILD_STATE = ".lsr-build.json"
VOCAB_FILE = "vocab.json"
_DOC_ROW_GROUP = 1024


def shard_name(kind: str, shard: int) -> str:
    """Relative path of a shard file: ``vectors`` / ``docs`` parquet parts and ``dense`` .npy embeddings."""
    if kind == "dense":
        return f"dense/embeddings-{shard:05d}.npy"
    return f"{kind}/part-{shard:05d}.parquet"


def write_shard(out: Path, shard: int, ids: list[str], texts: list[str], sparse: SparseBatch,
                dense: np.ndarray | None) -> None:
    """Write one shard's files, each atomically (temp + rename); the caller checkpoints after."""
    if dense is not None:
        atomic_write(out / shard_name("dense", shard), lambda fh: np.save(fh, np.ascontiguousarray(dense, np.float32)))
    docs = pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string())})
    atomic_write(out / shard_name("docs", shard),
            lambda fh: pq.write_table(docs, fh, compression="zstd", row_group_size=_DOC_ROW_GROUP))
    atomic_write(out / shard_name("vectors", shard), lambda fh: pq.write_table(sparse.to_arrow(ids), fh, compression="zstd"))
    if sparse.vocab is not None and not (out / VOCAB_FILE).is_file():
        write_json_atomic(out / VOCAB_FILE, list(sparse.vocab))


def read_vector_shards(out: Path, n_shards: int) -> Iterator[tuple[SparseBatch, list[str]]]:
    """Each shard's vectors and ids; term names from ``vocab.json`` (older shards carry their own)."""
    vocab = json.loads((out / VOCAB_FILE).read_text(encoding="utf-8")) if (out / VOCAB_FILE).is_file() else None
    for shard in range(n_shards):
        batch, ids = SparseBatch.read_parquet(out / shard_name("vectors", shard), vocab)
        yield batch, ids


def files_checksum(paths: Sequence[Path]) -> str:
    """sha256 over the files' sha256s, in order: equal content ⇔ equal checksum."""
    h = hashlib.sha256()
    for path in paths:
        h.update(file_sha256(path).encode())
    return h.hexdigest()


def disk_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def is_collection_dir(path: Path) -> bool:
    """True for a complete or unfinished collection (the only folders ``--overwrite`` may clear)."""
    return (path / META_FILE).is_file() or (path / BUILD_STATE).is_file()


class DocStore:
    """Document texts: the build's parquet parts plus an overlay of later upserts and deletions."""

    UPDATES = "updates.parquet"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._where: dict[str, tuple[int, int]] | None = None
        self._parts = sorted(directory.glob("part-*.parquet"))
        self._updates: dict[str, str | None] = {}
        if (directory / self.UPDATES).is_file():
            table = pq.read_table(directory / self.UPDATES)
            self._updates = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
        self._row_group = lru_cache(maxsize=64)(self._read_row_group)

    def _locations(self) -> dict[str, tuple[int, int]]:
        """doc id → (part, row); built on first use from the id columns only."""
        if self._where is None:
            where = {}
            for p, path in enumerate(self._parts):
                ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
                where.update((doc_id, (p, row)) for row, doc_id in enumerate(ids))
            self._where = where
        return self._where

    def _read_row_group(self, part: int, group: int) -> list[str]:
        return pq.ParquetFile(self._parts[part]).read_row_group(group, columns=["text"]).column("text").to_pylist()

    def contains(self, doc_id: str) -> bool:
        if doc_id in self._updates:
            return self._updates[doc_id] is not None
        return doc_id in self._locations()

    def get(self, ids: Sequence[str]) -> list[str | None]:
        where = self._locations()
        out: list[str | None] = []
        for doc_id in ids:
            if doc_id in self._updates:
                out.append(self._updates[doc_id])
            elif doc_id in where:
                part, row = where[doc_id]
                out.append(self._row_group(part, row // _DOC_ROW_GROUP)[row % _DOC_ROW_GROUP])
            else:
                out.append(None)
        return out

    def put(self, ids: Sequence[str], texts: Sequence[str | None]) -> None:
        """Record new texts (None = deleted) and rewrite the overlay file atomically."""
        self._updates.update(zip(ids, texts))
        table = pa.table({"id": pa.array(list(self._updates), pa.string()),
                          "text": pa.array(list(self._updates.values()), pa.string())})
        atomic_write(self.directory / self.UPDATES, lambda fh: pq.write_table(table, fh, compression="zstd"))


class Collection:
    """An opened collection: ``meta``, ``sparse`` (InvertedIndex), ``dense`` (DenseIndex or None), ``text(ids)``."""

    def __init__(self, path: Path, meta: dict, sparse: Any, dense: DenseIndex | None) -> None:
        self.path = path
        self.meta = meta
        self.sparse = sparse
        self.dense = dense
        self.docs = DocStore(path / "docs")

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Collection":
        from lsr.index import InvertedIndex

        path = Path(path).expanduser()
        meta_path = path / META_FILE
        if not meta_path.is_file():
            if (path / BUILD_STATE).is_file():
                raise ValueError(f"{path} is an unfinished collection (indexing was interrupted); "
                                 "finish it with `lsr index SOURCE COLLECTION --resume`")
            if not path.exists():
                raise FileNotFoundError(f"collection {path} does not exist; create it with `lsr index SOURCE {path}`")
            raise FileNotFoundError(f"{path} is not an lsr collection (no {META_FILE}); create one with `lsr index`")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} has collection format {meta.get('format')!r}; this lsr reads format {FORMAT}. "
                             "Re-index with `lsr index --overwrite`")
        sparse = InvertedIndex.open(path / "sparse")
        dense = DenseIndex.open(path / "dense") if meta.get("dense_model") else None
        return cls(path, meta, sparse, dense)

    @property
    def checksum(self) -> str:
        """One digest of the build's content checksums (the ``index_checksum`` BEIR results report)."""
        return hashlib.sha256(json.dumps(self.meta["checksums"], sort_keys=True).encode()).hexdigest()

    def text(self, doc_ids: Sequence[str]) -> list[str | None]:
        """Stored texts in the given order; None for unknown or deleted ids."""
        return self.docs.get([str(i) for i in doc_ids])

    def upsert(self, ids: Sequence[str], texts: Sequence[str], sparse: SparseBatch, dense: np.ndarray | None) -> None:
        """Add or replace documents in every part of the collection (sparse, dense, texts)."""
        ids = [str(i) for i in ids]
        self.sparse.add(sparse, ids)
        if self.dense is not None:
            if dense is None:
                raise ValueError("this collection has a dense index; upserts need dense vectors too")
            self.dense.add(ids, dense)
            self.dense.save(self.path / "dense")
        self.docs.put(ids, list(texts))

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete known ids everywhere; returns the ids that were not in the collection."""
        ids = list(dict.fromkeys(str(i) for i in ids))
        known = [i for i in ids if self.docs.contains(i)]
        unknown = [i for i in ids if not self.docs.contains(i)]
        if known:
            self.sparse.delete(known)
            if self.dense is not None:
                self.dense.remove(known)
                self.dense.save(self.path / "dense")
            self.docs.put(known, [None] * len(known))
        return unknown
