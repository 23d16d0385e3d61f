"""A faiss index over dense embeddings, keyed by string doc ids: the dense leg of hybrid search.

faiss rows are keyed by position and the doc-id list is kept beside them; removals are
tombstones, which works the same for flat and HNSW indexes.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lsr.files import atomic_write, file_sha256

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it reports every CPU-feature probe at INFO


class DenseIndex:
    """Inner-product faiss index (flat by default, HNSW with ``hnsw_m``) keyed by string doc ids."""

    INDEX_FILE = "faiss.index"
    IDS_FILE = "ids.parquet"

    def __init__(self, index: Any, ids: list[str | None]) -> None:
        self.index = index
        self._ids = ids  # faiss row → doc id; None marks a removed row
        self._row = {doc_id: row for row, doc_id in enumerate(ids) if doc_id is not None}

    @classmethod
    def create(cls, dim: int, hnsw_m: int | None = None, ef_construction: int = 200, ef_search: int = 128) -> "DenseIndex":
        import faiss

        if hnsw_m is None:
            return cls(faiss.IndexFlatIP(dim), [])
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        return cls(index, [])

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def kind(self) -> str:
        return "hnsw" if "HNSW" in type(self.index).__name__ else "flat"

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._row

    # ------------------------------------------------------------------ updates
    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Append vectors; an id already present is replaced (its old row becomes a tombstone)."""
        vectors = self._check_vectors(vectors)
        ids = [str(i) for i in ids]
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in one add() call")
        self.remove([i for i in ids if i in self._row])
        start = len(self._ids)
        self._add_rows(vectors)
        self._ids.extend(ids)
        self._row.update({doc_id: start + k for k, doc_id in enumerate(ids)})

    def _add_rows(self, vectors: np.ndarray) -> None:
        if self.kind == "hnsw":
            import faiss

            # HNSW insertion order decides the graph; one thread keeps the build reproducible.
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                self.index.add(vectors)
            finally:
                faiss.omp_set_num_threads(threads)
        else:
            self.index.add(vectors)

    def remove(self, ids: Sequence[str]) -> list[str]:
        """Tombstone the given ids; returns those that were not in the index."""
        unknown = []
        for doc_id in ids:
            row = self._row.pop(str(doc_id), None)
            if row is None:
                unknown.append(doc_id)
            else:
                self._ids[row] = None
        return unknown

    # ------------------------------------------------------------------ reads
    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (ids [n, k] object array, None where fewer hits; scores [n, k] float32, -inf there)."""
        vectors = self._check_vectors(vectors)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        n = len(vectors)
        out_ids = np.full((n, k), None, dtype=object)
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        if len(self) == 0 or n == 0:
            return out_ids, out_scores
        dead = len(self._ids) - len(self._row)
        fetch = min(k + dead, self.index.ntotal)
        scores, rows = self.index.search(vectors, fetch)
        for q in range(n):
            got = 0
            for score, row in zip(scores[q], rows[q]):
                if row < 0 or self._ids[row] is None:
                    continue
                out_ids[q, got], out_scores[q, got] = self._ids[row], score
                got += 1
                if got == k:
                    break
        return out_ids, out_scores

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored embeddings of the given ids, [n, dim]; unknown ids raise KeyError naming them."""
        missing = [i for i in ids if i not in self._row]
        if missing:
            raise KeyError(f"ids not in the dense index: {missing[:5]}")
        if not ids:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.index.reconstruct(self._row[i]) for i in ids]).astype(np.float32)

    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"dense vectors must have dimension {self.dim}, got shape {tuple(vectors.shape)}")
        if not np.all(np.isfinite(vectors)):
            raise ValueError("dense vectors contain NaN or infinite values")
        return vectors

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write ``faiss.index`` and ``ids.parquet`` (each via temp file + rename)."""
        import faiss

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / self.INDEX_FILE, lambda fh: fh.write(faiss.serialize_index(self.index).tobytes()))
        ids = pa.table({"id": pa.array(self._ids, pa.string())})
        atomic_write(directory / self.IDS_FILE, lambda fh: pq.write_table(ids, fh, compression="zstd"))

    @classmethod
    def open(cls, directory: str | Path) -> "DenseIndex":
        import faiss

        directory = Path(directory)
        for name in (cls.INDEX_FILE, cls.IDS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"dense index {directory} has no {name}; rebuild it with `lsr index --overwrite`")
        index = faiss.read_index(str(directory / cls.INDEX_FILE))
        ids = pq.read_table(directory / cls.IDS_FILE).column("id").to_pylist()
        if len(ids) != index.ntotal:
            raise ValueError(f"dense index {directory}: {len(ids)} ids for {index.ntotal} vectors; rebuild it")
        return cls(index, ids)

    @staticmethod
    def checksum(directory: str | Path) -> str:
        """sha256 over the saved files; equal for equal contents."""
        h = hashlib.sha256()
        for name in (DenseIndex.INDEX_FILE, DenseIndex.IDS_FILE):
            h.update(file_sha256(Path(directory) / name).encode())
        return h.hexdigest()
