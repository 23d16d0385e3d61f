"""A faiss index over dense embeddings, keyed by string doc ids: the dense leg of hybrid search.

faiss rows are keyed by position and the doc-id list is kept beside them; removals are
tombstones (a bit per row), which works the same for flat and HNSW indexes, and rows never move
in a faiss object. That is what makes cheap snapshots possible: ``pinned()`` shares the faiss
object, the append-only id list and the id → row maps, copies only the bits (a byte a row), and
ignores rows appended later. A search over tombstones asks faiss to skip them (an ``IDSelector``
of the live bits), so its cost does not grow with them: it used to ask for k plus every tombstone
and sort them all (200k documents with 160k replaced: 116 ms a query against 22). A flat index
whose tombstones pass a quarter of its live rows is rebuilt without them in a new faiss object,
which the views pinned before keep. faiss itself is not safe to add to while it searches, so adds
take a shared lock exclusively and searches share it.

On disk a save writes the vectors and ``ids-N.parquet`` under new names, then commits them by replacing
``manifest.json`` (their sizes and crc32s, and the journal seq they include); files of older saves are
removed after. A crash leaves the previous save whole. A flat index is saved as its rows (``vectors-N.npy``),
read from the live faiss object a chunk at a time: its rows never change, so a save needs no copy of the
index, and the write that makes one due no longer pays for one (1 to 2.6 s at 1M vectors). An HNSW graph
is cloned and written by faiss (``faiss-N.index``, as flat indexes were saved before, which still open).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lsr.files import (
    NUMPY_LOADS, CorruptFileError, atomic_write, check_record, file_record, file_sha256, fsync_dir, parquet_ids,
    read_sealed_json, reset_in_forked_child, sealed,
)
from lsr.sparse import repeated_ids

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it reports every CPU-feature probe at INFO

MANIFEST = "manifest.json"
_SAVED_FILE = re.compile(r"^(faiss-\d+\.index|vectors-\d+\.npy|ids-\d+\.parquet)(\.\d+\.tmp)?$")
SAVE_CHUNK = 4_096  # rows a flat save reads under the shared lock at a time (6 MB at 384 dimensions)


class SharedLock:
    """Many readers or one writer (faiss searches may overlap each other, never an add)."""

    def __init__(self) -> None:
        self._after_fork()
        reset_in_forked_child(self)

    def _after_fork(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writing)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and self._readers == 0)
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


EF_CONSTRUCTION, EF_SEARCH = 200, 128  # an HNSW build's candidate list lengths (faiss's defaults: 40 and 16)
COMPACT_MIN = 1_000  # tombstones a flat index keeps at least before a rebuild without them


class DenseIndex:
    """Inner-product faiss index (flat by default, HNSW with ``hnsw_m``) keyed by string doc ids."""

    def __init__(self, index: Any, ids: list[str | None], journal_seq: int = 0) -> None:
        self.index = index
        self._ids = ids  # faiss row → doc id, append-only (None: a row removed before the save this was read from)
        self._rows = len(ids)  # the rows this version holds: later rows belong to later versions
        self._alive = np.fromiter((doc_id is not None for doc_id in ids), np.bool_, len(ids))
        self._live = int(self._alive.sum())
        self._row = {doc_id: row for row, doc_id in enumerate(ids) if doc_id is not None}  # the writer's live rows
        self._moved: dict[str, list[int]] = {}  # rows an id held before, which views pinned then still read
        self._selector: tuple | None = None  # faiss's view of the live bits, made at the first search that needs it
        self.journal_seq = journal_seq  # the last write-ahead journal record this content includes
        self._lock = SharedLock()

    def pinned(self) -> "DenseIndex":
        """A read view of the current content that later adds and removes do not change."""
        view = DenseIndex.__new__(DenseIndex)
        view.index, view._ids, view._row, view._moved = self.index, self._ids, self._row, self._moved
        view._rows, view._alive, view._live = self._rows, self._alive[: self._rows].copy(), self._live
        view._selector, view.journal_seq, view._lock = None, self.journal_seq, self._lock
        return view

    def ids(self) -> list[str]:
        """Live doc ids."""
        return [self._ids[row] for row in np.flatnonzero(self._alive[: self._rows]).tolist()]

    @classmethod
    def create(cls, dim: int, hnsw_m: int | None = None) -> "DenseIndex":
        import faiss

        if hnsw_m is None:
            return cls(faiss.IndexFlatIP(dim), [])
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = EF_CONSTRUCTION, EF_SEARCH
        return cls(index, [])

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def kind(self) -> str:
        return "hnsw" if "HNSW" in type(self.index).__name__ else "flat"

    def __len__(self) -> int:
        return self._live

    def __contains__(self, doc_id: str) -> bool:
        return self._row_of(doc_id) is not None

    def _row_of(self, doc_id: str) -> int | None:
        """The row live in this version for ``doc_id``: the writer's, else one it held before (a view pinned then)."""
        row = self._row.get(doc_id)
        if row is not None and row < self._rows and self._alive[row]:
            return row
        for row in reversed(self._moved.get(doc_id, ())):
            if row < self._rows and self._alive[row]:
                return row
        return None

    # ------------------------------------------------------------------ updates (the writer's object only)
    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Append vectors; an id already present is replaced (its old row becomes a tombstone)."""
        vectors = self.check_vectors(vectors)
        ids = [str(i) for i in ids]
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if repeated := repeated_ids(ids):
            raise ValueError(f"duplicate ids in one add() call: {repeated}")
        self.remove([i for i in ids if i in self._row])
        start = self._rows
        with self._lock.exclusive():
            self._add_rows(vectors)
        self._ids.extend(ids)  # shared with views, which read only their first rows
        if len(self._alive) < start + len(ids):
            self._alive = np.concatenate([self._alive, np.zeros(max(len(ids), start // 2), np.bool_)])
        self._alive[start : start + len(ids)] = True
        self._rows, self._live = start + len(ids), self._live + len(ids)
        self._row.update({doc_id: start + k for k, doc_id in enumerate(ids)})
        self._selector = None

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
        for doc_id in map(str, ids):
            row = self._row.get(doc_id)
            if row is None:
                unknown.append(doc_id)
                continue
            self._moved.setdefault(doc_id, []).append(row)  # before the pop: a view always finds one of the two
            del self._row[doc_id]
            self._alive[row] = False
            self._live -= 1
        self._selector = None
        if self.kind == "flat" and self._rows - self._live > max(COMPACT_MIN, self._live // 4):
            self._compact()
        return unknown

    def _compact(self) -> None:
        """Rebuild a flat index without its tombstones, in a new faiss object (views keep the old one)."""
        import faiss

        live = np.flatnonzero(self._alive[: self._rows])
        index = faiss.IndexFlatIP(self.dim)
        with self._lock.shared():
            for start in range(0, len(live), 65_536):
                index.add(self.index.reconstruct_batch(live[start : start + 65_536]))
        ids = [self._ids[row] for row in live.tolist()]
        self.__init__(index, ids, self.journal_seq)

    # ------------------------------------------------------------------ reads
    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (ids [n, k] object array, None where fewer hits; scores [n, k] float32, -inf there)."""
        vectors, k = self.check_vectors(vectors), int(k)  # faiss's SWIG takes no numpy integer
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        n = len(vectors)
        out_ids = np.full((n, k), None, dtype=object)
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        if len(self) == 0 or n == 0:
            return out_ids, out_scores
        with self._lock.shared():
            if self._live == self._rows:  # no tombstones: faiss's fastest path, past the rows added since
                ntotal = self.index.ntotal
                want = min(k + ntotal - self._rows, ntotal)
                scores, rows = self.index.search(vectors, want, params=self._walk_wide(want))
            else:
                want = min(k, self._live)
                scores, rows = self.index.search(vectors, want, params=self._search_parameters(want))
        for q in range(n):
            got = 0
            for score, row in zip(scores[q], rows[q].tolist()):
                if row < 0 or row >= self._rows or not self._alive[row]:
                    continue
                out_ids[q, got], out_scores[q, got] = self._ids[row], score
                got += 1
                if got == k:
                    break
        return out_ids, out_scores

    def _walk_wide(self, want: int) -> Any:
        """HNSW parameters whose walk keeps at least ``want`` candidates, where the build's efSearch keeps fewer, else
        None: at efSearch 128 a top-1000 found 79 % of the true one on SciFact (a TREC run's depth), 99 % at 1000."""
        if self.kind != "hnsw" or want <= self.index.hnsw.efSearch:
            return None
        import faiss

        return faiss.SearchParametersHNSW(efSearch=want)

    def _search_parameters(self, want: int) -> Any:
        """faiss search parameters that skip every row this version does not hold live (an HNSW walk keeping at
        least ``want`` candidates, as ``_walk_wide``)."""
        import faiss

        if self._selector is None:
            bits = np.packbits(self._alive[: self._rows], bitorder="little")  # faiss reads bit i & 7 of byte i >> 3
            selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))  # its size in bytes: rows past it are out
            if self.kind == "hnsw":
                params = faiss.SearchParametersHNSW(sel=selector, efSearch=self._filtered_ef())
            else:
                params = faiss.SearchParameters(sel=selector)
            self._selector = (bits, selector, params)  # the bits and selector must outlive the parameters
        params = self._selector[2]
        if self.kind == "hnsw" and want > params.efSearch:
            return faiss.SearchParametersHNSW(sel=self._selector[1], efSearch=want)
        return params

    def _filtered_ef(self) -> int:
        """efSearch scaled by rows per live row: a graph walk passes dead rows without keeping them, so at the build's
        ef recall fell as rewrites piled them up (10 rows a document: recall@10 0.86; scaled: 1.00, 9× the time)."""
        base = int(self.index.hnsw.efSearch)
        return min(base * -(-self._rows // max(self._live, 1)), max(base, self._rows))

    @property
    def dead_rows(self) -> int:
        """Rows of removed or replaced documents that the faiss object still holds (filtered out of searches)."""
        return self._rows - self._live

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored embeddings of the given ids, [n, dim]; unknown ids raise KeyError naming them."""
        rows = [self._row_of(str(i)) for i in ids]
        missing = [i for i, row in zip(ids, rows) if row is None]
        if missing:
            raise KeyError(f"ids not in the dense index: {missing[:5]}")
        if not ids:
            return np.zeros((0, self.dim), np.float32)
        with self._lock.shared():
            return np.stack([self.index.reconstruct(row) for row in rows]).astype(np.float32)

    def check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` as float32 rows of this index's dimension; ValueError naming what is wrong with them."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"dense vectors must have dimension {self.dim}, got shape {tuple(vectors.shape)}")
        if not np.all(np.isfinite(vectors)):
            raise ValueError("dense vectors contain NaN or infinite values")
        return vectors

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path, journal_seq: int | None = None) -> None:
        """Write the index and ids under fresh names, then commit them in ``manifest.json``."""
        self.snapshot(journal_seq).write(directory)

    def snapshot(self, journal_seq: int | None = None) -> "DenseSnapshot":
        """This content, to write while later adds go on (``journal_seq``: the record it includes). A flat index's
        rows are read at the write from the faiss object they live in (later adds go past them, a rebuild makes a new
        object), so this copies only the live bits; an HNSW graph changes as rows are added, so faiss clones it here
        (one copy, 1 to 2 s at 1M vectors)."""
        import faiss

        if journal_seq is not None:
            self.journal_seq = journal_seq
        alive = self._alive[: self._rows].copy()
        if self.kind == "flat":
            return DenseSnapshot(self.index, self._ids, alive, self.journal_seq, self._lock)
        with self._lock.shared():
            index = faiss.clone_index(self.index)
        return DenseSnapshot(index, self._ids, alive, self.journal_seq)

    @classmethod
    def open(cls, directory: str | Path) -> "DenseIndex":
        """Load the committed save; every file is checked against its crc32 first and errors name it."""
        import faiss

        directory = Path(directory)
        manifest = _read_manifest(directory)
        index_path = check_record(directory, manifest["index"])
        ids_path = check_record(directory, manifest["ids"])
        try:
            index = _flat_from_rows(index_path) if index_path.suffix == ".npy" else faiss.read_index(str(index_path))
        except (RuntimeError, ValueError) as exc:
            raise CorruptFileError(f"{index_path} is not a readable faiss index ({str(exc).splitlines()[0]})") from None
        try:
            ids = parquet_ids(ids_path)
        except (pa.ArrowException, KeyError) as exc:
            raise CorruptFileError(f"{ids_path} is not a readable id table ({exc})") from None
        if not len(ids) == index.ntotal == manifest["rows"]:
            raise CorruptFileError(f"{directory}: {len(ids)} ids for {index.ntotal} vectors; run `lsr repair`")
        return cls(index, ids, int(manifest["journal_seq"]))

    @staticmethod
    def files(directory: str | Path) -> list[Path]:
        """The committed files: the manifest, the faiss index and the id table."""
        directory = Path(directory)
        manifest = _read_manifest(directory)
        return [directory / MANIFEST, directory / manifest["index"]["file"], directory / manifest["ids"]["file"]]

    @staticmethod
    def file_problems(directory: str | Path) -> list[str]:
        """Full check of the manifest and every file it names: one message per missing or damaged file."""
        directory = Path(directory)
        try:
            manifest = _read_manifest(directory)
        except CorruptFileError as exc:
            return [str(exc)]
        problems = []
        for role in ("index", "ids"):
            try:
                check_record(directory, manifest[role])
            except CorruptFileError as exc:
                problems.append(str(exc))
        return problems

    @staticmethod
    def committed_seq(directory: str | Path) -> int:
        """The journal seq of the committed save (its manifest only is read)."""
        return int(_read_manifest(Path(directory))["journal_seq"])

    @staticmethod
    def checksum(directory: str | Path) -> str:
        """sha256 over the committed index and id files; equal for equal contents."""
        h = hashlib.sha256()
        for path in DenseIndex.files(directory)[1:]:
            h.update(file_sha256(path).encode())
        return h.hexdigest()


class DenseSnapshot:
    """A dense index's content at one journal record: its first ``len(alive)`` rows and ids, those alive. ``lock``:
    the flat index those rows live in, shared with later adds (read under it); None: a clone no add touches."""

    def __init__(self, index: Any, ids: list[str | None], alive: np.ndarray, journal_seq: int,
                 lock: SharedLock | None = None) -> None:
        self.index, self.journal_seq, self.lock = index, journal_seq, lock
        self.ids = ids  # append-only: the rows past ``len(alive)`` belong to later content
        self.alive = alive

    def write(self, directory: str | Path) -> None:
        """Write the index and ids under fresh names, then commit them in ``manifest.json``; a crash leaves the
        previous save whole."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        previous = _read_manifest(directory) if (directory / MANIFEST).is_file() else None
        version = previous["version"] + 1 if previous else 1
        ids_path = directory / f"ids-{version:06d}.parquet"
        if self.lock is not None:
            index_path = directory / f"vectors-{version:06d}.npy"
            atomic_write(index_path, self._write_rows)
        else:
            index_path = directory / f"faiss-{version:06d}.index"
            atomic_write(index_path, self._write_index)
        rows = len(self.alive)
        ids = pa.table({"id": pa.array([doc_id if live else None for doc_id, live in
                                        zip(self.ids[:rows], self.alive.tolist())], pa.string())})
        atomic_write(ids_path, lambda fh: pq.write_table(ids, fh, compression="zstd"))
        fsync_dir(directory)
        manifest = {"version": version, "journal_seq": self.journal_seq, "rows": rows,
                    "index": file_record(index_path), "ids": file_record(ids_path)}
        atomic_write(directory / MANIFEST, lambda fh: fh.write(json.dumps(sealed(manifest), indent=1).encode()))
        fsync_dir(directory)
        keep = {index_path.name, ids_path.name}
        for path in directory.iterdir():  # the folder may hold other files (a collection's embeddings)
            if _SAVED_FILE.match(path.name) and path.name not in keep:
                path.unlink(missing_ok=True)

    def _write_rows(self, fh) -> None:
        """The flat index's rows as a .npy file, a chunk at a time: an add waits for one chunk's read at most."""
        rows, dim = len(self.alive), int(self.index.d)
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
        for start in range(0, rows, SAVE_CHUNK):
            with self.lock.shared():
                block = self.index.reconstruct_n(start, min(SAVE_CHUNK, rows - start))
            fh.write(np.ascontiguousarray(block, "<f4").tobytes())

    def _write_index(self, fh) -> None:
        """faiss writes the index straight into the file: no second copy of it in memory."""
        import faiss

        writer = faiss.PyCallbackIOWriter(fh.write)
        try:
            faiss.write_index(self.index, writer)
        finally:
            del writer  # flushes its buffer into fh


def _flat_from_rows(path: Path) -> Any:
    """A flat index over the rows of a ``vectors-N.npy`` save, copied from the mapped file into faiss's storage in
    one copy (adding them a chunk at a time took twice as long: the storage grows and moves)."""
    import faiss

    with NUMPY_LOADS:
        rows = np.load(path, mmap_mode="r")
    if rows.ndim != 2 or rows.dtype != np.dtype("<f4"):
        raise ValueError(f"expected float32 rows, found {rows.dtype} of shape {rows.shape}")
    index = faiss.IndexFlatIP(rows.shape[1])
    faiss.copy_array_to_vector(np.asarray(rows).view(np.uint8).ravel(), index.codes)
    index.ntotal = len(rows)
    return index


def _read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        raise CorruptFileError(f"{path} is missing (the dense index's manifest)")  # a collection names its repair
    return read_sealed_json(path)
