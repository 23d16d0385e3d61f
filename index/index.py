"""InvertedIndex: build, open, search and update a segmented, memory-mapped SPLADE index.

Readers and writers share one immutable ``_State`` (segments, id bases, manifest). A search
grabs the current state once and uses only it; a writer builds a new state, commits it to disk
and then swaps the reference under a lock. So searches from many threads run alongside one
writer and always see a single committed snapshot.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.files import reset_in_forked_child
from lsr.sparse import SparseBatch, check_bound_factor, is_real, is_whole

from . import storage
from .inputs import check_unique, doc_id_list, document_chunks, keep_top_terms, query_rows, query_terms, validated_chunks
from .quantize import choose_scale, dequantize, impact_dtype, quantize, row_scales
from .search_numba import ACC_PAD, search_maxscore, search_taat, search_taat_rescore
from .segment import Segment, build_arrays, expected_dtypes, expected_lengths, structure_problem, term_dtype

log = logging.getLogger(__name__)

WINDOW = 4096  # docs per block-max MaxScore window
TAAT_WINDOW = 32768  # docs per term-at-a-time window: its 128 KiB of uint32 accumulators stay in L2
STOP_RATIO = 0.3
ALGORITHMS = ("auto", "taat", "rescore", "maxscore")
LOST_WARNING = 0.1  # the share of a segment's non-zero weights that may round to 0 before a write warns
_OPEN_RETRIES = 5


@dataclass(slots=True)
class Hit:
    doc_id: str
    score: float


class _State:
    """One committed snapshot of the index; never mutated after construction."""

    def __init__(self, manifest: dict, segments: tuple[Segment, ...], vocab: list[str] | None):
        self.manifest = manifest
        self.segments = segments
        self.vocab = vocab
        self.bases = np.cumsum([0] + [s.n_docs for s in segments]).astype(np.int64)
        self._token_ids: dict[str, int] | None = None
        self._lock = threading.Lock()
        reset_in_forked_child(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    @property
    def base_scale(self) -> float | None:
        """The scale documents are rounded at where it holds their largest weight (``row_scales``): the build's, in
        the manifest (kept by an index with no segment left, so a shard empty at its build scores as the unsharded
        index does); an older index's smallest segment scale among those holding postings (its build's: later writes
        only grew it); None before the first weight."""
        return self.manifest.get("scale") or min((s.scale for s in self.segments if s.term_df.any()), default=None)

    @property
    def live(self) -> int:
        """Documents not deleted: no search returns more hits."""
        return sum(s.live for s in self.segments)

    def hit_count(self, k: int) -> int:
        """How many hits a top-``k`` search can return (k = 10**12 allocated for each: a MemoryError)."""
        return min(int(k), max(1, self.live))

    def locate(self, ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(segment index, local row) of those ``ids`` that are live. A write or a PRF search asks for a few ids
        after every commit: the segments' own id maps (kept across commits) answer it without a map of every
        live id, which cost O(documents) each time (~0.5 s at 1M)."""
        found: dict[str, tuple[int, int]] = {}
        for si, seg in enumerate(self.segments):
            for doc_id in ids:
                row = seg.row(doc_id)
                if row is not None and not seg.deleted[row]:
                    found[doc_id] = (si, row)
        return found

    def token_ids(self) -> dict[str, int] | None:
        """token -> term id, built on first use (None when the index stores no vocabulary)."""
        if self.vocab is None:
            return None
        with self._lock:
            if self._token_ids is None:
                self._token_ids = {token: i for i, token in enumerate(self.vocab)}
            return self._token_ids

    def doc_ids(self, internal: np.ndarray) -> list[str]:
        """External ids of internal ids (segment base + local row)."""
        if len(self.segments) == 1:
            return self.segments[0].ids[internal].tolist()
        which = np.searchsorted(self.bases, internal, side="right") - 1
        return [self.segments[si].ids[i - self.bases[si]] for si, i in zip(which.tolist(), internal.tolist())]


class InvertedIndex:
    """Top-k dot-product search over quantized SPLADE vectors; see the package docstring."""

    def __init__(self, path: Path, state: _State):
        self.path = path
        self._state = state
        self._write_lock = threading.Lock()
        self._scratch = threading.local()
        reset_in_forked_child(self)

    def _after_fork(self) -> None:
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, path: str | os.PathLike, vectors: Any, doc_ids: Sequence | None = None,
              quantization: str = "uint8", *, journal_seq: int = 0, overwrite: bool = False,
              scale: float | None = None) -> "InvertedIndex":
        """Create the index at ``path`` holding exactly these vectors.

        ``vectors``: a SparseBatch or scipy matrix (with ``doc_ids``), or (SparseBatch, ids) chunks. Chunks are
        read twice, sizes first, so a build never holds the whole collection's float weights: an iterable that
        reads them from files anew each time (not a generator, which is listed) keeps what the build adds to about
        12 bytes a non-zero weight (``benchmarks/results/build_memory.md``).

        ``scale``: the quantization scale to keep whenever it can represent these vectors (the shards of a
        sharded collection share the whole collection's scale, so their scores equal the unsharded index's).

        An index already there is refused unless ``overwrite=True``, which replaces it atomically
        (readers see the old index until the new manifest lands); a folder holding other files is always refused.
        ``journal_seq``: the last record of the owner's write-ahead journal this content includes.
        """
        impact_dtype(quantization)
        if scale is not None and (not is_real(scale) or not 0 < scale < math.inf):  # NaN, 0 and -1 were ignored, "1" failed in a compare
            raise ValueError(f"scale must be a positive finite number (or None: chosen from the vectors), got {scale!r}")
        journal_seq = _journal_seq(journal_seq)
        path = Path(path).absolute()  # a later os.chdir must not move where it writes
        storage.check_build_target(path, overwrite)
        chunks = document_chunks(vectors, doc_ids)
        plan = _Plan.read(chunks, None)
        path.mkdir(parents=True, exist_ok=True)
        with storage.writer_lock(path):
            version = _disk_version(path) + 1
            chosen = scale if scale is not None else choose_scale(quantization, float(plan.row_max.max(initial=0.0)))
            base = {"vocab_size": plan.vocab_size, "quantization": quantization, "vocab": None, "segments": [],
                    "journal_seq": journal_seq}
            if chosen is not None:  # else (no weight at all) the first add chooses it
                base["scale"] = chosen
            if plan.vocab is not None:
                base["vocab"] = storage.write_json(path, f"vocab.{version:06d}.json", list(plan.vocab))
            segments = _write_segments(path, version, chunks, plan, quantization, chosen or 1.0) if plan.ids else []
            manifest = dict(base, version=version, segments=segments)
            storage.commit_manifest(path, manifest)
        return cls.open(path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "InvertedIndex":
        """Memory-map the committed index; cheap checks name any missing or damaged file."""
        path = Path(path).absolute()  # its later reads and writes: a relative path moved with os.chdir
        return cls(path, _load_state(path))

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return self.num_docs

    @property
    def num_docs(self) -> int:
        return self._state.live

    @property
    def vocab_size(self) -> int:
        return int(self._state.manifest["vocab_size"])

    @property
    def vocab(self) -> list[str] | None:
        return self._state.vocab

    @property
    def quantization(self) -> str:
        return self._state.manifest["quantization"]

    @property
    def base_scale(self) -> float | None:
        """The scale a document is rounded at where it holds its largest weight (see ``row_scales``)."""
        return self._state.base_scale

    @property
    def version(self) -> int:
        """Commit counter; changes with every build, add, delete and merge."""
        return int(self._state.manifest["version"])

    def changed_on_disk(self) -> bool:
        """Whether another process committed to this index since this object last read or wrote it."""
        return _disk_version(self.path) != self._state.manifest["version"]

    def take_up_disk(self) -> None:
        """Read the commit another process made since, mapping only the segments this object does not hold."""
        with self._write_lock:
            self._fresh_state()

    @property
    def journal_seq(self) -> int:
        """The last write-ahead journal record this commit includes (0: none); see ``add``."""
        return int(self._state.manifest.get("journal_seq", 0))

    def __contains__(self, doc_id: str) -> bool:
        return bool(self._state.locate([str(doc_id)]))  # add() stores ids as strings: 7 is "7"

    def doc_ids(self) -> list[str]:
        """Ids of the live documents (no id map is kept for it: at 500,000 documents one held 57 MB)."""
        return [doc_id for seg in self._state.segments for doc_id in seg.ids[seg.deleted == 0].tolist()]

    def pinned(self) -> "InvertedIndex":
        """A read view of the current commit that later writes do not change (a reader's snapshot)."""
        return InvertedIndex(self.path, self._state)

    @property
    def checksum(self) -> str:
        """sha256 of the committed content (file checksums, counts); no names, versions or times."""
        return storage.content_checksum(self._state.manifest)

    @property
    def num_segments(self) -> int:
        return len(self._state.segments)

    def doc_freqs(self) -> np.ndarray:
        """int64 [vocab_size]: number of live documents containing each term."""
        out = np.zeros(self.vocab_size, np.int64)
        for seg in self._state.segments:
            out += seg.live_df()
        return out

    def get_vectors(self, doc_ids: Sequence) -> SparseBatch:
        """Stored (dequantized) vectors of live documents, in the given order; KeyError for unknown ids."""
        state = self._state
        ids = doc_id_list(doc_ids)
        where = state.locate(ids)
        missing = [i for i in ids if i not in where]
        if missing:
            raise KeyError(f"unknown doc ids: {missing[:10]}")
        located = np.asarray([where[i] for i in ids], np.int64).reshape(-1, 2)
        lengths = np.zeros(len(ids), np.int64)
        parts = []
        for si, seg in enumerate(state.segments):
            positions = np.flatnonzero(located[:, 0] == si)
            if len(positions):
                ptr, terms, imps = seg.rows(located[positions, 1])
                lengths[positions] = np.diff(ptr)
                parts.append((positions, ptr, terms, dequantize(imps, seg.scale)))
        indptr = np.zeros(len(ids) + 1, np.int64)
        np.cumsum(lengths, out=indptr[1:])
        indices = np.zeros(indptr[-1], np.int32)
        values = np.zeros(indptr[-1], np.float32)
        for positions, ptr, terms, vals in parts:
            dest = np.repeat(indptr[positions] - ptr[:-1], np.diff(ptr)) + np.arange(ptr[-1])
            indices[dest] = terms
            values[dest] = vals
        return SparseBatch(indptr, indices, values, self.vocab_size, state.vocab)

    # ------------------------------------------------------------------ search
    def search(self, query: Any, k: int = 10, top_terms: int | None = None, bound_factor: float = 1.0,
               algorithm: str = "auto") -> list[Hit]:
        """Top-k documents by dot product; exact unless ``top_terms``/``bound_factor`` are set.

        Fewer than k hits come back when fewer documents share a term with the query. ``top_terms``
        searches only the query's heaviest terms. ``bound_factor`` > 1 lets the term-at-a-time search
        assume its low-bound terms add at most 1/``bound_factor`` of their bound (3: recall@10 0.99 in
        three quarters of the exact time on SPLADE vectors; 5: 0.94 in two thirds); hit scores stay exact.
        ``algorithm`` is "auto" (the windowed integer TAAT with per-window MaxScore), "taat", "rescore"
        (MaxScore with forward rescoring over a float accumulator) or "maxscore" (windowed block-max
        MaxScore); for the last two, ``bound_factor`` inflates the pruning threshold instead.
        """
        state = self._state
        _check_search_args(k, top_terms, bound_factor, algorithm)
        terms, weights = query_terms(query, self.vocab_size, state.token_ids)
        k = state.hit_count(k)
        internal, scores = self._search_terms(state, terms, weights, k, top_terms, bound_factor, algorithm)
        return [Hit(d, s) for d, s in zip(state.doc_ids(internal), scores.tolist())]

    def search_batch(self, queries: Any, k: int = 10, threads: int | None = None, top_terms: int | None = None,
                     bound_factor: float = 1.0, algorithm: str = "auto") -> tuple[np.ndarray, np.ndarray]:
        """Search many queries in parallel threads (the kernels release the GIL).

        Returns ``ids`` (object [n, k], None where a query has fewer than k hits) and ``scores``
        (float32 [n, k], -inf in those places); k is at most the number of documents.
        """
        state = self._state
        _check_search_args(k, top_terms, bound_factor, algorithm)
        _check_positive_or_none(threads, "threads")  # -1 (joblib's "all cores") ran on one thread without a word
        k = state.hit_count(k)
        rows = query_rows(queries, self.vocab_size, state.token_ids)
        ids = np.full((len(rows), k), None, dtype=object)
        scores = np.full((len(rows), k), -np.inf, dtype=np.float32)

        def run(chunk: range) -> None:
            for qi in chunk:
                internal, sc = self._search_terms(state, *rows[qi], k, top_terms, bound_factor, algorithm)
                ids[qi, : len(internal)] = state.doc_ids(internal)
                scores[qi, : len(sc)] = sc

        threads = max(1, min(threads or os.cpu_count() or 1, len(rows) or 1))
        if threads == 1:
            run(range(len(rows)))
        else:
            step = -(-len(rows) // (threads * 4))
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(run, [range(i, min(i + step, len(rows))) for i in range(0, len(rows), step)]))
        return ids, scores

    def _zeros(self, name: str, size: int, dtype) -> np.ndarray:
        """A zeroed per-thread scratch array of at least ``size`` items (kernels leave it zeroed)."""
        array = getattr(self._scratch, name, None)
        if array is None or len(array) < size or array.dtype != dtype:
            array = np.zeros(size, dtype)
            setattr(self._scratch, name, array)
        return array

    def _search_terms(self, state: _State, terms, weights, k, top_terms, bound_factor, algorithm):
        terms, weights = keep_top_terms(terms, weights, top_terms)
        heap = (np.zeros(k, np.float32), np.zeros(k, np.int64), np.zeros(1, np.int64))
        qdense = self._zeros("qdense", self.vocab_size, np.float32)
        chosen = _choose_algorithm(algorithm)
        for seg, base in zip(state.segments, state.bases):
            if seg.live == 0:
                continue
            a = seg.arrays
            if chosen == "taat":
                search_taat(terms, weights, np.float32(seg.scale), seg.term_max.dtype.kind == "u", seg.term_df,
                            seg.term_max, a["term_blocks"], a["block_posts"], a["block_base"], a["block_last"],
                            a["post_delta"], a["post_imp"], a["doc_ptr"], a["doc_terms"], a["doc_imp"], seg.deleted,
                            TAAT_WINDOW, self._zeros("acc_int", TAAT_WINDOW + ACC_PAD, np.uint32),
                            self._zeros("acc_float", TAAT_WINDOW + ACC_PAD, np.float32), qdense, base, *heap,
                            np.float64(bound_factor))
                continue
            if not seg.term_df[terms].any():
                continue
            w = np.multiply(weights, np.float32(seg.scale), dtype=np.float32)
            term_max = seg.term_max[terms]
            if chosen == "rescore":
                bound = np.multiply(w, term_max, dtype=np.float32)
                search_taat_rescore(terms, w, bound, a["term_blocks"], a["block_posts"], a["block_base"],
                                    a["post_delta"], a["post_imp"], a["doc_ptr"], a["doc_terms"], a["doc_imp"],
                                    seg.deleted, self._zeros("acc", seg.n_docs, np.float32), qdense, base, *heap,
                                    np.float32(STOP_RATIO), np.float32(bound_factor))
            else:
                search_maxscore(terms, w, a["term_blocks"], a["block_posts"], a["block_base"], a["block_last"],
                                a["block_max"], a["post_delta"], a["post_imp"], seg.deleted, WINDOW,
                                self._zeros("acc", WINDOW, np.float32), base, *heap, np.float32(bound_factor))
        hs, hd, hn = heap
        n = int(hn[0])
        order = np.lexsort((hd[:n], -hs[:n]))
        return hd[:n][order], hs[:n][order]

    # ------------------------------------------------------------------ updates
    def add(self, vectors: Any, doc_ids: Sequence | None = None, journal_seq: int | None = None) -> None:
        """Upsert: new documents go into a new segment; an existing id's old vector is tombstoned.

        ``journal_seq`` is stored in the same commit, so an owner replaying a write-ahead journal
        knows atomically which of its records this index already holds.
        """
        journal_seq = None if journal_seq is None else _journal_seq(journal_seq)
        with self._write_lock, storage.writer_lock(self.path):
            state = self._fresh_state()
            chunks = document_chunks(vectors, doc_ids)
            plan = _Plan.read(chunks, self.vocab_size)
            ids = plan.ids
            if not ids:
                return
            where = state.locate(ids)
            masks = _tombstones(state, list(where.values()))
            manifest = _copy_manifest(state.manifest, journal_seq)
            version = manifest["version"] + 1
            base = state.base_scale or choose_scale(self.quantization, float(plan.row_max.max(initial=0.0)))
            if base is not None:  # a write without a weight leaves it to the first one with a weight
                manifest["scale"] = base
            _write_deleted(self.path, manifest, masks, version)
            manifest["segments"].extend(_write_segments(self.path, version, chunks, plan, self.quantization, base or 1.0))
            self._commit(manifest, version)
            while (crowded := _crowded_tier(self._state.segments)) is not None:
                self._merge(self._state, crowded)

    def check_vectors(self, vectors: Any, doc_ids: Sequence | None = None) -> None:
        """Raise, as ``add`` would, where it cannot take these vectors (another vocabulary, bad weights, repeated
        ids), without writing: a caller that journals a write first checks it here."""
        _Plan.read(document_chunks(vectors, doc_ids), self.vocab_size)

    def delete(self, doc_ids: Sequence, journal_seq: int | None = None) -> None:
        """Tombstone live documents. Unknown ids raise KeyError naming them; nothing is deleted then.

        ``journal_seq`` as in ``add``; with no ids it is still committed."""
        journal_seq = None if journal_seq is None else _journal_seq(journal_seq)
        with self._write_lock, storage.writer_lock(self.path):
            state = self._fresh_state()
            ids = list(dict.fromkeys(doc_id_list(doc_ids)))
            where = state.locate(ids)
            missing = [i for i in ids if i not in where]
            if missing:
                raise KeyError(f"unknown doc ids, nothing deleted: {missing[:10]}")
            if not ids and journal_seq is None:
                return
            manifest = _copy_manifest(state.manifest, journal_seq)
            version = manifest["version"] + 1
            _write_deleted(self.path, manifest, _tombstones(state, [where[i] for i in ids]), version)
            self._commit(manifest, version)

    def merge(self) -> None:
        """Compact the segments into one per quantization scale (most indexes have one) and drop tombstoned
        documents; segments of different scales stay apart, as in ``add`` (``_crowded_tier``)."""
        with self._write_lock, storage.writer_lock(self.path):
            scales = sorted({seg.scale for seg in self._fresh_state().segments})
            for scale in scales:
                state = self._state
                chosen = [i for i, seg in enumerate(state.segments) if seg.scale == scale]
                if len(chosen) > 1 or any(state.segments[i].live < state.segments[i].n_docs for i in chosen):
                    self._merge(state, chosen)

    def _merge(self, state: _State, chosen: list[int]) -> None:
        """Replace the ``chosen`` segments (ascending, of one scale) by one holding their live documents, where the
        first was."""
        manifest = _copy_manifest(state.manifest)
        version = manifest["version"] + 1
        merging = [state.segments[i] for i in chosen]
        (scale,) = {s.scale for s in merging}
        for i in chosen:  # damage since open would be copied under a fresh crc32: lsr verify would call it intact
            for record in state.manifest["segments"][i]["files"].values():
                storage.check_file(self.path, record, full=True)
        parts, ids = [], []
        for seg in merging:
            live = np.flatnonzero(seg.deleted == 0)
            parts.append(seg.rows(live))
            ids.extend(seg.ids[live].tolist())
        gone = set(chosen)
        kept = [s for i, s in enumerate(manifest["segments"]) if i not in gone]
        if ids:
            offsets = np.cumsum([0] + [p[0][-1] for p in parts[:-1]])
            indptr = np.concatenate([[0]] + [p[0][1:] + o for p, o in zip(parts, offsets)])
            terms = np.concatenate([p[1] for p in parts])
            imps = np.concatenate([p[2] for p in parts])
            kept.insert(chosen[0], _write_quantized_segment(self.path, f"s{version:06d}", indptr, terms, imps,
                                                            ids, scale, self.vocab_size))
        manifest["segments"] = kept
        self._commit(manifest, version)

    def verify(self) -> None:
        """Full content check of every file (crc32); raises CorruptIndexError naming the bad file."""
        problems = storage.file_problems(self.path, self._state.manifest)
        if problems:
            raise storage.CorruptIndexError(problems[0])

    def _fresh_state(self) -> _State:
        """The state to update: ours, or the on-disk one if another process committed since."""
        state = self._state
        if _disk_version(self.path) != state.manifest["version"]:
            state = self._state = _load_state(self.path, state)
        return state

    def _commit(self, manifest: dict, version: int) -> None:
        """Publish ``manifest``; the new state keeps the segments it shares with ours (their files never change),
        so a write costs what it changed, not a reload of every segment (1.1 s a write at 300 segments)."""
        manifest["version"] = version
        storage.commit_manifest(self.path, manifest)
        self._state = _state_from_manifest(self.path, storage.read_manifest(self.path), self._state)


# ---------------------------------------------------------------------- helpers
def _check_search_args(k: int, top_terms: int | None, bound_factor: float, algorithm: str) -> None:
    if not is_whole(k) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    _check_positive_or_none(top_terms, "top_terms")  # 2.5 failed deep inside as "slice indices must be integers"
    check_bound_factor(bound_factor)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


def _check_positive_or_none(value: Any, name: str) -> None:
    if value is not None and (not is_whole(value) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


def _choose_algorithm(algorithm: str) -> str:
    """Exact "auto" is the windowed TAAT, which decides per window how many low-bound terms it can
    leave to MaxScore lookups. Measured on splade-tiny vectors (benchmarks/search.py), it beat the
    block-max MaxScore and rescore kernels at every collection size and query; the heavy query terms
    there are frequent expansion terms whose long lists pruning cannot skip. Approximate too: its
    ``bound_factor`` dominated the block-max kernel's inflated threshold and ``top_terms`` alike."""
    return "taat" if algorithm == "auto" else algorithm


def _disk_version(path: Path) -> int:
    try:
        return int(storage.read_manifest(path)["version"])
    except FileNotFoundError:
        return 0


MERGE_FACTOR = 10  # segments of one size tier (a power of ten documents) that add() merges into one


def _crowded_tier(segments: Sequence[Segment]) -> list[int] | None:
    """The segments of the smallest size tier holding MERGE_FACTOR of one quantization scale, if any.

    Every upsert adds a segment, and each costs searches a pass and the manifest an entry (300 one-document
    segments made a sparse search 53x slower and a write 1.1 s). Merging tier by tier, as Lucene's tiered policy
    does, keeps fewer than MERGE_FACTOR segments a tier, so their number grows with the log of the documents
    written, and each document is rewritten once a tier. Segments of another scale (a write whose largest weight
    the collection's scale could not hold starts a larger one) never merge: their impacts would be rounded a
    second time, and a document's score would move with writes to other documents."""
    tiers: dict[tuple[int, float], list[int]] = {}
    for i, seg in enumerate(segments):
        tiers.setdefault((int(math.log10(max(seg.n_docs, 1))), seg.scale), []).append(i)
    return next((tiers[t] for t in sorted(tiers) if len(tiers[t]) >= MERGE_FACTOR), None)


def _journal_seq(value: Any) -> int:
    """A journal record number as the manifest keeps it: 1.5 became 1 in a build, and "x" or NaN given to a write was
    committed, then failed every later read of ``journal_seq``."""
    if not is_whole(value) or value < 0:
        raise ValueError(f"journal_seq must be a whole number >= 0, got {value!r}")
    return int(value)


def _copy_manifest(manifest: dict, journal_seq: int | None = None) -> dict:
    out = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "manifest_crc32")}
    if journal_seq is not None:
        out["journal_seq"] = journal_seq
    out["segments"] = [dict(s, files=dict(s["files"])) for s in manifest["segments"]]
    return out


def _tombstones(state: _State, locations: list[tuple[int, int]]) -> dict[int, np.ndarray]:
    """New deleted masks (copies) for the segments that lose documents."""
    masks: dict[int, np.ndarray] = {}
    for si, row in locations:
        if si not in masks:
            masks[si] = state.segments[si].deleted.copy()
        masks[si][row] = 1
    return masks


def _write_deleted(path: Path, manifest: dict, masks: dict[int, np.ndarray], version: int) -> None:
    """Write new tombstone files; segments left without live documents leave the manifest."""
    empty = []
    for si, mask in masks.items():
        seg = manifest["segments"][si]
        rows = np.flatnonzero(mask).astype(np.int64)
        seg["deleted"] = len(rows)
        if len(rows) == seg["n_docs"]:
            empty.append(si)
            continue
        seg["files"]["deleted"] = storage.write_array(path, f"{seg['name']}.del{version:06d}", rows)
    manifest["segments"] = [s for i, s in enumerate(manifest["segments"]) if i not in empty]


@dataclass(slots=True)
class _Plan:
    """What a first reading of a write's chunks learns, so that the second one fills arrays of their final size:
    the ids, each document's largest weight (its scale) and its stored entries (its room)."""

    ids: list[str]
    row_max: np.ndarray
    row_len: np.ndarray
    vocab_size: int
    vocab: Sequence[str] | None

    @classmethod
    def read(cls, chunks, vocab_size: int | None) -> "_Plan":
        ids, maxima, lengths, vocab = [], [], [], None
        for batch, chunk_ids in validated_chunks(chunks, vocab_size):
            ids.extend(chunk_ids)
            maxima.append(batch.row_maxima())
            lengths.append(np.diff(batch.indptr))
            vocab_size, vocab = batch.vocab_size, vocab if vocab is not None else batch.vocab
        check_unique(ids)
        return cls(ids, np.concatenate(maxima), np.concatenate(lengths), vocab_size, vocab)


_CHANGED = ("the vectors changed between the build's two readings of them; pass a list, or an iterable that reads "
            "the same chunks each time")


def _write_segments(path: Path, version: int, chunks, plan: _Plan, quantization: str, base: float) -> list[dict]:
    """One segment per scale the documents need (``row_scales``): almost always one, at the base scale. The chunks
    are quantized one at a time into arrays sized by ``plan``."""
    scales = row_scales(quantization, plan.row_max, base)
    distinct = np.unique(scales)
    fills = {s: _Impacts(scales == s, plan.row_len, quantization, plan.vocab_size) for s in distinct}
    start = 0
    for batch, ids in validated_chunks(chunks, plan.vocab_size):
        if ids != plan.ids[start : start + len(ids)]:
            raise RuntimeError(_CHANGED)
        here = scales[start : start + len(batch)]
        for scale in np.unique(here):
            part = batch if len(distinct) == 1 else batch.select(np.flatnonzero(here == scale))
            fills[scale].append(part, quantize(part.values, quantization, float(scale)))
        start += len(batch)
    if start != len(plan.ids):
        raise RuntimeError(_CHANGED)
    segments = []
    for i, scale in enumerate(distinct):
        ids = plan.ids if len(distinct) == 1 else [plan.ids[r] for r in np.flatnonzero(scales == scale)]
        name = f"s{version:06d}" + (f"-{i}" if i else "")
        segments.append(fills[scale].write(path, name, ids, quantization, float(scale)))
    return segments


class _Impacts:
    """One segment's quantized CSR, filled chunk by chunk, its zero impacts dropped, into arrays sized by a
    ``_Plan``: about three bytes a non-zero weight, where the float chunks and their concatenation took 16."""

    def __init__(self, rows: np.ndarray, row_len: np.ndarray, quantization: str, vocab_size: int):
        room = int(row_len[rows].sum())
        self.indptr = np.zeros(int(np.count_nonzero(rows)) + 1, np.int64)
        self.terms = np.empty(room, term_dtype(vocab_size))
        self.imps = np.empty(room, impact_dtype(quantization))
        self.vocab_size, self.docs, self.nnz, self.stored, self.lost = vocab_size, 0, 0, 0, 0

    def append(self, batch: SparseBatch, imps: np.ndarray) -> None:
        gone = np.flatnonzero(imps == 0)
        lengths = np.diff(batch.indptr) - np.diff(np.searchsorted(gone, batch.indptr))
        kept = len(imps) - len(gone)
        np.cumsum(lengths, out=self.indptr[self.docs + 1 : self.docs + len(batch) + 1])
        self.indptr[self.docs + 1 : self.docs + len(batch) + 1] += self.nnz
        if len(gone):
            keep = np.ones(len(imps), bool)
            keep[gone] = False
            self.terms[self.nnz : self.nnz + kept] = batch.indices[keep]
            self.imps[self.nnz : self.nnz + kept] = imps[keep]
            self.lost += int(np.count_nonzero(batch.values[gone]))
        else:
            self.terms[self.nnz : self.nnz + kept] = batch.indices
            self.imps[self.nnz : self.nnz + kept] = imps
        self.docs += len(batch)
        self.nnz += kept
        self.stored += len(imps)

    def write(self, path: Path, name: str, ids: list[str], quantization: str, scale: float) -> dict:
        if self.lost > LOST_WARNING * self.stored:
            log.warning("%d of %d non-zero weights (%.0f%%) round to 0 at %s, whose scale (the base scale, set by "
                        "the build's largest weight) holds weights up to %g, far above them; vectors from one SPLADE "
                        "model keep nearly all of theirs, so check the largest weights written", self.lost,
                        self.stored, 100 * self.lost / self.stored, quantization,
                        scale * float(np.iinfo(impact_dtype(quantization)).max))
        return _write_quantized_segment(path, name, self.indptr, self.terms[: self.nnz], self.imps[: self.nnz], ids,
                                        scale, self.vocab_size)


def _write_quantized_segment(path: Path, name: str, indptr, terms, imps, ids, scale: float, vocab_size: int) -> dict:
    arrays = build_arrays(indptr, np.asarray(terms, term_dtype(vocab_size)), imps, vocab_size)
    files = {role: storage.write_array(path, f"{name}.{role}", arr) for role, arr in arrays.items()}
    files["ids"] = storage.write_ids(path, f"{name}.ids", ids)
    return {"name": name, "n_docs": len(ids), "nnz": len(terms), "n_blocks": len(arrays["block_base"]),
            "scale": scale, "deleted": 0, "files": files}


def _load_state(path: Path, previous: _State | None = None) -> _State:
    """Read the manifest and map its files (reusing ``previous``'s unchanged segments); retried if a writer's
    cleanup races the open."""
    for attempt in range(_OPEN_RETRIES):
        manifest = storage.read_manifest(path)
        try:
            return _state_from_manifest(path, manifest, previous)
        except (storage.CorruptIndexError, FileNotFoundError):
            if attempt + 1 < _OPEN_RETRIES and storage.read_manifest(path)["version"] != manifest["version"]:
                continue  # a commit replaced the files under us; read the new manifest
            raise
    raise AssertionError("unreachable")


def _state_from_manifest(path: Path, manifest: dict, previous: _State | None = None) -> _State:
    """The state a manifest describes; segments whose files ``previous`` already maps are reused, with their
    tombstones reread when those changed."""
    known = {} if previous is None else {
        meta["name"]: (meta, seg) for meta, seg in zip(previous.manifest["segments"], previous.segments)}
    vocab_size = int(manifest["vocab_size"])
    dtypes = expected_dtypes(impact_dtype(manifest["quantization"]), vocab_size)
    vocab = storage.load_json(path, manifest["vocab"]) if manifest.get("vocab") else None
    if vocab is not None and len(vocab) != vocab_size:
        raise storage.CorruptIndexError(f"index file {path / manifest['vocab']['file']} has {len(vocab)} tokens, "
                                        f"expected {vocab_size}")
    segments = []
    for meta in manifest["segments"]:
        n_docs, files = int(meta["n_docs"]), meta["files"]
        old_meta, old = known.get(meta["name"], (None, None))
        if old is not None and _same_rows(old_meta, meta):
            if old_meta["files"].get("deleted") != files.get("deleted"):
                old = old.with_deleted(_deleted_mask(path, meta, n_docs))
            segments.append(old)
            continue
        lengths = expected_lengths(n_docs, int(meta["nnz"]), int(meta["n_blocks"]), vocab_size)
        arrays = {name: storage.load_array(path, files[name], dtypes[name], lengths[name]) for name in lengths}
        problem = structure_problem(arrays, n_docs)
        if problem:
            named = ", ".join(str(path / files[n]["file"]) for n in problem.split("/"))
            raise storage.CorruptIndexError(f"index file {named} has inconsistent structure (corrupted)")
        ids = storage.load_ids(path, files["ids"], n_docs)
        segments.append(Segment.create(meta["name"], arrays, float(meta["scale"]), ids, _deleted_mask(path, meta, n_docs)))
    return _State(manifest, tuple(segments), vocab)


def _same_rows(old: dict, new: dict) -> bool:
    """Whether two manifest entries hold the same segment files (tombstones aside)."""
    return _without_deleted(old) == _without_deleted(new)


def _without_deleted(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k != "deleted"} | {
        "files": {k: v for k, v in meta["files"].items() if k != "deleted"}}


def _deleted_mask(path: Path, meta: dict, n_docs: int) -> np.ndarray:
    deleted = np.zeros(n_docs, np.uint8)
    if "deleted" in meta["files"]:
        record = meta["files"]["deleted"]
        rows = np.asarray(storage.load_array(path, record, np.dtype(np.int64), int(meta["deleted"])))
        if len(rows) and (rows.min() < 0 or rows.max() >= n_docs):
            raise storage.CorruptIndexError(f"index file {path / record['file']} names rows outside the segment")
        deleted[rows] = 1
    return deleted
