"""Searcher: the single place where a query becomes hits.

The gRPC servicer, the CLI and the BEIR script all call it, so in-process and through-the-
endpoint results are equal by construction. Pipeline per query:

    encode → sparse top-n (index) + dense top-n (faiss) + BM25 top-n → fuse (lsr.search.fusion)
           → PRF (Rocchio / Vector-PRF) → interpolate → top-k hits

Hybrid mode fuses every leg its HybridOptions gives a positive weight (sparse and dense by
default; BM25 when ``bm25_weight`` > 0). PRF moves the sparse and dense queries; the BM25 leg
keeps its first run.

PRF's ``interpolate`` follows Li et al. ("To Interpolate or not to Interpolate"): "before" fuses
first and takes the feedback documents from the fused list (rather than each retriever's own
list); "after" interpolates the fused PRF run with the original fused run; "both" does both;
"none" does neither (each leg's own feedback, the PRF'd legs fused). Rocchio moves the sparse query
(β = ``weight``, expansion terms optionally limited to high IDF), Vector-PRF the dense one
(β = ``dense_weight``); a β of 0 leaves that leg's first run as it was.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Set as AbstractSet
from contextlib import AbstractContextManager, contextmanager, nullcontext
import threading
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from lsr.encode.checks import check_number, check_switch, check_whole
from lsr.files import reset_in_forked_child
from lsr.search.fusion import FUSIONS, RRF_K, Ranking, check_combination, fuse, interpolate, rank
from lsr.search.legs import Legs, ViewLegs, sparse_query
from lsr.search.models import DTYPE_CHOICES, SearchModels
from lsr.search.prf import rocchio, vector_prf
from lsr.sparse import QUERY_SCALE, SparseBatch, as_id, check_bound_factor, check_ids, id_list, is_real, is_whole, repeated_ids, short_repr

if TYPE_CHECKING:  # torch loads with the encoders, not with this module
    from lsr.encode.inputs import EncodeInfo

MODES = ("sparse", "dense", "hybrid", "bm25")
AUTO = "auto"  # the CLI's default mode: hybrid over every leg the collection has, or sparse when SPLADE is its only one
WARM_UP_QUERY = "what is the warm up query of a search server"  # any text: only its shape is used
LEGS = ("sparse", "dense", "bm25")
PRF_INTERPOLATIONS = ("before", "after", "both", "none")
FUSED_FEEDBACK = ("before", "both")  # feedback documents from the fused list
INTERPOLATE_AFTER = ("after", "both")  # the PRF run interpolated with the first run
MAX_K = 1000
BATCH_CHUNK = 64  # queries a batch search encodes together
UPSERT_CHECK_EVERY = 32  # documents encoded between two looks at whether an upsert's caller is still there: a batch
# auto: the model itself, unless its folder ships an idf.json (a model trained for IDF queries: inference-free)
QUERY_ENCODERS = ("auto", "splade", "inference-free")


class FailedPrecondition(RuntimeError):
    """The request is well-formed but the collection cannot serve it (e.g. dense mode without dense vectors)."""


@dataclass(frozen=True)
class HybridOptions:
    """How hybrid mode fuses its legs: one weight per leg (0 leaves it out), min_max / l2 / z_score / rrf, and for
    min_max or l2 OpenSearch's combination (``lsr.search.fusion``)."""

    normalization: str = "min_max"
    sparse_weight: float = 0.5
    candidates: int = 100
    dense_weight: float | None = None  # None: 1 - sparse_weight
    bm25_weight: float = 0.0
    rrf_k: int = RRF_K
    combination: str = "arithmetic_mean"  # or geometric_mean, harmonic_mean (min_max and l2 only)

    def weights(self) -> dict[str, float]:
        """The legs hybrid mode runs, with their weights."""
        dense = 1.0 - self.sparse_weight if self.dense_weight is None else self.dense_weight
        chosen = {"sparse": self.sparse_weight, "dense": dense, "bm25": self.bm25_weight}
        return {leg: float(w) for leg, w in chosen.items() if w > 0}

    def check(self) -> None:
        if self.normalization not in FUSIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; choose one of {', '.join(FUSIONS)}")
        check_combination(self.combination, self.normalization)
        for name in ("sparse_weight", "dense_weight", "bm25_weight"):
            if getattr(self, name) is not None:
                check_number(getattr(self, name), f"hybrid {name}", 0.0, 1.0)
        if not self.weights():
            raise ValueError("hybrid needs at least one leg with a positive weight (sparse, dense or bm25)")
        check_whole(self.candidates, "hybrid candidates", 1, MAX_K)
        check_whole(self.rrf_k, "hybrid rrf_k", 1, 10_000)


# Collections that `lsr tune` never saw (no judgements) fuse with these weights: chosen ACROSS datasets, never per
# dataset, by benchmarks/prf_variants.py as the fusion setting with the best mean train/dev nDCG@10 over SciFact
# (train) and NFCorpus (dev), 0.5407, among min_max, l2, z_score and RRF at every weighting (z_score 0.3/0.4/0.3,
# 0.5363, before l2 joined the grid); test qrels were never used. Numbers: benchmarks/results/prf-variants.md. On a
# collection built with --bm25 none the BM25 leg drops out, with --dense none the dense leg (the weighted mean
# renormalises the other two).
UNTUNED_HYBRID = HybridOptions("l2", sparse_weight=0.3, dense_weight=0.5, bm25_weight=0.2)


@dataclass(frozen=True)
class PrfOptions:
    """Pseudo-relevance feedback; a collection's stored defaults (``lsr tune``) replace these when PRF is
    asked for without settings (``Searcher.default_prf``).

    The defaults were chosen ACROSS datasets, never per dataset (benchmarks/prf_variants.py): on
    UNTUNED_HYBRID, the PRF setting with the best mean train/dev nDCG@10 over SciFact and NFCorpus among no
    PRF and the per-dataset grids' best means: feedback from the fused list, 2 docs, β 1.0 for both legs
    (0.5497 vs 0.5402 without PRF; benchmarks/results/prf-variants.md). Test qrels were never used."""

    feedback_docs: int = 2
    weight: float = 1.0  # β: how far the sparse query moves toward the feedback documents (Rocchio)
    max_terms: int = 100  # new sparse terms at most
    interpolate: str = "before"
    after_weight: float = 0.5  # weight of the PRF run when interpolated with the original run
    dense_weight: float | None = None  # Vector-PRF β for the dense query; None: the same as weight
    min_idf: float = 0.0  # sparse expansion terms need at least this BM25 IDF (0: any term)

    def dense_beta(self) -> float:
        return self.weight if self.dense_weight is None else float(self.dense_weight)

    def check(self) -> None:
        if self.interpolate not in PRF_INTERPOLATIONS:
            raise ValueError(f"unknown PRF interpolation {self.interpolate!r}; choose one of {', '.join(PRF_INTERPOLATIONS)}")
        check_whole(self.feedback_docs, "PRF feedback_docs", 1, 100)  # 2.5 failed later as "slice indices must be integers"
        check_whole(self.max_terms, "PRF max_terms", 0, 10_000)
        check_number(self.weight, "PRF weight", 0.0, 10.0)
        check_number(self.after_weight, "PRF after_weight", 0.0, 1.0)
        if self.dense_weight is not None:
            check_number(self.dense_weight, "PRF dense_weight", 0.0, 10.0)
        check_number(self.min_idf, "PRF min_idf", 0.0, 100.0)


@dataclass
class ScoredHit:
    """One hit: ``doc_id`` and its fused ``score``, with each leg's score where that leg found it."""

    doc_id: str
    score: float
    sparse_score: float | None = None
    dense_score: float | None = None
    text: str | None = None
    explanation: list[tuple[str, float]] = field(default_factory=list)
    bm25_score: float | None = None

    @property
    def docid(self) -> str:
        """``doc_id`` under pyserini's name, so code written for its hits reads ours."""
        return self.doc_id


@dataclass
class SearchResult:
    """A search's ``hits``, best first, and how it went. It is also the sequence of its hits (``result[0]``,
    ``len(result)``, ``for hit in result``), as pyserini's ``search`` returns a list."""

    hits: list[ScoredHit]
    timings: dict[str, float]  # seconds per stage: encode, sparse, dense, bm25, fuse, prf
    truncated: bool = False
    shards_answered: tuple[str, ...] = ()  # a sharded collection's shards that answered
    shards_missing: tuple[str, ...] = ()  # ... and those that did not: the hits come from the others only
    index_version: str = ""  # the version of the collection the hits came from (``Searcher.index_version``'s form)

    @property
    def partial(self) -> bool:
        return bool(self.shards_missing)

    def __len__(self) -> int:
        return len(self.hits)

    def __iter__(self) -> Iterator[ScoredHit]:
        return iter(self.hits)

    def __getitem__(self, index: int) -> ScoredHit:
        return self.hits[index]


def check_k(k: Any) -> int:
    if not is_whole(k) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an integer in 1..{MAX_K}, got {k!r}")
    return int(k)


def check_options(k: Any, mode: Any, hybrid: Any, prf: Any, bound_factor: Any = 1.0) -> None:
    """k, mode, hybrid and PRF options as a search takes them (``lsr.service.Client`` checks them before sending)."""
    check_k(k)
    check_bound_factor(bound_factor)
    if mode not in (AUTO, *MODES):
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join((AUTO, *MODES))}")
    if hybrid is not None:
        if not isinstance(hybrid, HybridOptions):  # a dict failed as "'dict' object has no attribute 'check'"
            raise TypeError(f"hybrid must be a HybridOptions, got {type(hybrid).__name__}: HybridOptions(**options)")
        hybrid.check()
    if prf not in (None, False, True):
        if not isinstance(prf, PrfOptions):
            raise TypeError(f"prf must be a PrfOptions, True or None, got {type(prf).__name__}: PrfOptions(**options)")
        prf.check()
    if mode == "bm25" and prf not in (None, False):  # it ran, and returned the BM25 list unchanged
        raise ValueError("PRF moves the SPLADE and dense queries, and bm25 mode has neither; use it in sparse, dense, "
                         "hybrid or auto mode")


def check_switches(explain: Any, include_text: Any, deadline: Any) -> None:
    """The on/off options and the deadline, checked as strictly as the rest: "no" was taken as on, and a deadline of
    "soon" was ignored."""
    check_switch(explain, "explain")
    check_switch(include_text, "include_text")
    check_deadline(deadline)


def check_deadline(deadline: Any) -> None:
    """A search's or a write's deadline: None or a number (a write's "soon" failed only after its documents were
    encoded, and NaN waited 30 s)."""
    if deadline is not None and (not is_real(deadline) or math.isnan(deadline)):
        raise TypeError(f"deadline must be a time.monotonic() instant in seconds, or None; got {deadline!r}")


def check_after_weight(prf: PrfOptions, name: str) -> None:
    """Refuse a PRF after-weight that was given where the interpolation, given or the collection's tuned or untuned
    one, never fuses a PRF run after the first (before, none): it was taken and ignored."""
    if prf.interpolate in ("before", "none"):
        raise ValueError(f"{name} weighs the PRF run in after/both interpolation, and the interpolation here is "
                         f"{prf.interpolate!r} (the collection's, unless given): set it to after or both")


def check_idle_options(mode: str, hybrid: HybridOptions | None, prf: Any, bound_factor: float, *,
                       flag: Callable[[str], str] = str) -> None:
    """Refuse an option that ``mode`` (resolved: auto is hybrid or sparse by now) gives nothing to do: each was
    taken, and the hits were those without it. ``flag`` names an option as the caller knows it (the CLI's --flags).
    (``explain`` is no such option here: a dense or BM25 hit's empty explanation says what there is to say.)"""
    if hybrid is not None and mode != "hybrid" and prf in (None, False):  # PRF's second run is fused by them
        raise ValueError(f"hybrid options set how hybrid fusion joins lists, and mode {mode} runs one list; use mode "
                         "hybrid (or PRF, whose second run they shape), or leave hybrid out")
    if bound_factor != 1.0 and mode in ("dense", "bm25"):
        raise ValueError(f"{flag('bound_factor')} approximates the SPLADE list, and {flag('mode')} {mode} has none; "
                         f"use {flag('mode')} sparse, hybrid or auto")


def resolve_mode(mode: str, served: Callable[[], Sequence[str]]) -> str:
    """``mode``, with auto resolved against the modes a collection serves (``served()``, asked only for auto)."""
    if mode != AUTO:
        return mode
    return "hybrid" if "hybrid" in served() else "sparse"


@contextmanager
def _timed(timings: dict[str, float], stage: str):
    """Add the block's wall time to ``timings[stage]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


class Searcher:
    """Query → hits over one collection (sparse index, optional dense index, optional texts)."""

    sharded = False  # a ShardedSearcher's legs run on shard servers

    def __init__(self, collection: Any, models: SearchModels | None = None):
        if models is None:  # pyserini's LuceneSearcher(path) habit: "missing argument 'models'"
            raise TypeError(f"open a collection with Searcher.open({short_repr(str(collection))})")
        self.collection = collection
        self.models = models
        self._write_lock = threading.Lock()
        self._closed = False
        reset_in_forked_child(self)

    def _after_fork(self) -> None:
        self._write_lock = threading.Lock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def open(
        cls, path: str | Path, *, query_encoder: str = "auto", device: str = "auto", dtype: str = "auto",
        threads: int | None = None,
    ) -> "Searcher":
        """Open a collection written by ``lsr index``; the models its metadata names load on ``device`` when a
        search first needs them (``warm_up`` loads them now)."""
        from lsr.ingest.collection import Collection

        check_open_options(query_encoder, threads, device, dtype)
        collection = Collection.open(check_path(path))
        return cls(collection, SearchModels(collection.meta, query_encoder, doc_freqs=lambda: ViewLegs(collection.view()),
                                            device=device, dtype=dtype))

    def reopen(self, stop: threading.Event | None = None) -> "Searcher":
        """This searcher's folder opened again (a new build there), with its options; the models that build names as
        this one did are shared, not loaded again. (``stop`` ends a sharded open's wait on its shard servers; one
        folder opens without waiting.)"""
        from lsr.ingest.collection import Collection

        collection = Collection.open(self.collection.path)
        return Searcher(collection, self.models.like(collection.meta, doc_freqs=lambda: ViewLegs(collection.view())))

    def when_replaced(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` once this process finds the collection indexed anew, moved or deleted, or a write failed
        half-applied (``Collection.when_replaced``): only ``reopen`` serves it again."""
        self.collection.when_replaced(listener)

    @property
    def query_encoder(self) -> Any:
        """The sparse query encoder (loaded on first use)."""
        return self.models.query

    @property
    def dense_encoder(self) -> Any:
        """The dense encoder (loaded on first use), or None when the collection has no dense model."""
        return self.models.dense

    # ------------------------------------------------------------------ facts
    @property
    def index_version(self) -> str:
        """``<build>-<write>``: the build's tag (its ``lsr.json`` seal, new with every build) and the sparse index's
        version, which counts writes from 1 again in every build; a client can key a cache on it."""
        self.check_open()
        return self.version_of(self.collection.view())

    def version_of(self, view: Any) -> str:
        """``index_version`` of one pinned view."""
        return self.tagged(str(view.sparse.version))

    def tagged(self, version: str) -> str:
        """``index_version`` of a version of this build (``Legs.version``)."""
        return f"{self.collection.build_tag}-{version}"

    @property
    def meta(self) -> dict:
        """The collection's build metadata (``lsr.json``): model names, max length, what was built."""
        return self.collection.meta

    @property
    def has_dense(self) -> bool:
        return self.dense_dim is not None and self.models.has_dense

    @property
    def has_bm25(self) -> bool:
        return self.collection.bm25 is not None

    @property
    def vocab_size(self) -> int:
        return int(self.collection.sparse.vocab_size)

    def legs(self, deadline: float | None = None) -> Legs:
        """Where one search's legs run: the collection's current view (fast and local: no deadline to honour)."""
        return ViewLegs(self.collection.view())

    def on_health(self, report: Callable[[bool], None]) -> None:
        """Tell ``report`` whether the collection can be served, now and whenever it changes: a local one can until
        this process finds it indexed anew (``lsr index --overwrite``; by a write, or a background look). Searches
        then still answer from the build it opened (texts too), but writes fail, so it is NOT_SERVING (a load
        balancer sends the traffic elsewhere) until a server has opened the new build (``lsr.service.reload``)."""
        report(not self.collection.replaced)
        self.collection.when_replaced(lambda: report(False))

    def close(self) -> None:
        """Release what serving holds beyond memory: save the collection's dense rows only its journal holds (a
        sharded searcher stops its shard servers). Later searches, writes and lookups are refused, as a closed
        file's are; closing again does nothing."""
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:
        self.collection.close()

    def check_open(self) -> None:
        """ValueError once ``close`` has run: a write after it was kept only in the journal, and a search of a
        sharded collection failed deep in a stopped shard."""
        if self._closed:
            raise ValueError("this Searcher is closed; open the collection again (Searcher.open)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, model={self.meta.get('model')!r}" + \
            (", closed)" if self._closed else ")")

    @property
    def path(self) -> Path:
        """The collection's folder."""
        return self.collection.path

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def search_defaults(self) -> dict:
        """What `lsr tune` stored in the collection (chosen on train/dev qrels); empty when it has not run."""
        return self.collection.search_defaults or {}

    @cached_property
    def default_hybrid(self) -> HybridOptions:
        """The fusion `lsr tune` stored in the collection, else the cross-dataset UNTUNED_HYBRID over the legs the
        collection has: without BM25 it fuses sparse and dense, without dense vectors sparse and BM25. A collection
        with neither keeps the dense leg, so hybrid mode says what is missing."""
        tuned = self.search_defaults.get("hybrid")
        if tuned:
            return HybridOptions(**tuned)
        if not self.has_bm25:
            return replace(UNTUNED_HYBRID, bm25_weight=0.0)
        return UNTUNED_HYBRID if self.dense_dim is not None else replace(UNTUNED_HYBRID, dense_weight=0.0)

    def hybrid_or_default(self, hybrid: HybridOptions | None) -> HybridOptions:
        """``hybrid``, or the collection's default; an unset dense weight (1 - sparse_weight) is 0 where the
        collection has no dense leg: `--normalization rrf` alone failed there, asking for a re-index."""
        if hybrid is None:
            return self.default_hybrid
        return replace(hybrid, dense_weight=0.0) if hybrid.dense_weight is None and not self.has_dense else hybrid

    def _one_list_left(self, hybrid: HybridOptions) -> str:
        """Why weights that leave hybrid mode one list (or none) are refused: the hits were that list's alone, its raw
        scores labelled hybrid (`--normalization rrf` on a collection built with `--dense none`)."""
        left = " ".join(hybrid.weights()) or "no list"
        why = "" if self.has_dense else (
            ", as this collection has no dense leg to take the dense weight (1 - sparse weight unless given)")
        return (f"hybrid fusion needs two lists with a positive weight, and these weights leave {left}{why}; weigh "
                "another list (the BM25 weight is 0 unless given), or search one list in its own mode")

    @cached_property
    def default_prf(self) -> PrfOptions:
        """The PRF `lsr tune` stored in the collection, else the cross-dataset PrfOptions()."""
        tuned = self.search_defaults.get("prf")
        return PrfOptions(**tuned) if tuned else PrfOptions()

    def prf_or_default(self, prf: PrfOptions | bool | None) -> PrfOptions | None:
        """``True`` asks for PRF with the collection's defaults; None (or False) for none."""
        if prf is True:
            return self.default_prf
        if prf not in (None, False) and not isinstance(prf, PrfOptions):
            raise TypeError(f"prf must be a PrfOptions, True or None, got {type(prf).__name__}: PrfOptions(**options)")
        return prf or None

    @property
    def dense_dim(self) -> int | None:
        return self.collection.dense.dim if self.collection.dense is not None else None

    @property
    def vocab(self) -> Sequence[str]:
        return self.query_encoder.vocab

    @cached_property
    def _token_ids(self) -> dict[str, int]:
        """token -> term id, built once: a token-keyed sparse query must not rebuild it per request."""
        return {token: i for i, token in enumerate(self.vocab)}

    def mean_text_bytes(self) -> float:
        """Average stored text size of the build's documents: what include_text adds per hit."""
        with self._texts_read():
            return self.collection.view().docs.mean_text_bytes()

    @contextmanager
    def _texts_read(self) -> Iterator[None]:
        """A read of stored texts that fails where the folder was indexed anew, moved or deleted since this process
        opened it is CollectionReplaced (retry once the server reloads), not a damaged file's DATA_LOSS ("run `lsr
        verify`", which finds nothing): a collection's docs parts are held open, but read by path where the process
        may not open that many files. None: a sharded search, whose shards say it themselves."""
        try:
            yield
        except Exception:
            if self.collection is not None:
                self.collection.check_in_place()
            raise

    def stats(self) -> dict[str, Any]:
        self.check_open()
        view = self.collection.view()
        dense_query = {}
        if self.has_dense:
            from lsr.encode.inputs import dtype_name

            dense_query["dense_query_dtype"] = dtype_name(self.dense_encoder.dtype)
        return {
            "num_docs": int(view.sparse.num_docs),
            "num_segments": int(getattr(view.sparse, "num_segments", 1)),
            "vocab_size": int(view.sparse.vocab_size),
            "dense_docs": len(view.dense) if view.dense is not None else 0,
            "dense_dim": self.dense_dim or 0,
            "index_version": self.version_of(view),
            "model": self.collection.meta.get("model"),
            "dense_model": self.collection.meta.get("dense_model"),
            "query_encoder": type(self.query_encoder).__name__,
            "modes": ",".join(self.modes()),
            "collection_checksum": self.collection.checksum,
            **{f"build_seconds_{stage}": seconds for stage, seconds in self.collection.meta.get("stage_seconds", {}).items()},
            **{f"encoded_with_{key}": value for key, value in self.collection.meta.get("encoded_with", {}).items()},
            **dense_query,
        }

    def doc(self, doc_id: str) -> str:
        """The stored text of a document; KeyError for an unknown or deleted id, TypeError for what is no id (None
        was looked up as "None", a list as "['4983']")."""
        self.check_open()
        doc_id = as_id(doc_id)
        with self._texts_read():
            (text,) = self.collection.text([doc_id])
        if text is None:
            raise KeyError(f"no document {doc_id!r} in {self.collection.path}")
        return text

    # ------------------------------------------------------------------ encoding
    def encode_queries(self, texts: Sequence[str]) -> tuple[SparseBatch, EncodeInfo]:
        """(SparseBatch, EncodeInfo) for many query texts at once; the service micro-batches through this."""
        self.check_open()
        return self.query_encoder.encode_queries(query_list(texts, "encode_queries"), return_info=True)

    def encode_dense(self, texts: Sequence[str]) -> tuple[np.ndarray, EncodeInfo]:
        """([n, dim] vectors, EncodeInfo) for many query texts at once."""
        self.check_open()
        if not self.has_dense:
            raise FailedPrecondition("this collection has no dense index; re-index with --dense minilm to use dense or hybrid mode")
        return self.dense_encoder.encode_queries(query_list(texts, "encode_dense"), return_info=True)

    def warm_up(self, mode: str | None = None, hybrid: HybridOptions | None = None,
                prf: PrfOptions | bool | None = None) -> list[str]:
        """Search once in ``mode`` with these options, or (None) in every mode this collection serves, hybrid with
        PRF; returns the modes searched.

        A fresh process pays for lazy set-up on its first search: loading the models the mode needs, torch's
        first forward pass and the screened LM head's int8 copy, numba's cached kernels, faiss. On splade-tiny
        that first sparse search took ~600 ms against ~6 ms after, so a server runs this before it reports
        SERVING and `lsr search` before its first query: no user request pays it, no search's timings show it,
        and a broken model folder fails here.
        """
        if mode is not None:
            self.search(WARM_UP_QUERY, k=1, mode=mode, hybrid=hybrid, prf=prf)
            return [mode]
        modes = self.modes()
        for each in modes:
            self.search(WARM_UP_QUERY, k=1, mode=each, prf=True if each == "hybrid" else None)
        return modes

    def resolve_mode(self, mode: str, *, sparse: Any = None, dense: Any = None, text: Any = None) -> str:
        """``mode`` with auto resolved: hybrid when this collection has two legs or more, else sparse; a query
        given only as a sparse (or dense) vector has one leg to run."""
        if mode == AUTO and text is None and (sparse is None) != (dense is None):
            return "sparse" if sparse is not None else "dense"
        return resolve_mode(mode, self.modes)

    def modes(self) -> list[str]:
        """The modes this collection serves: sparse, then dense and bm25 when it has those legs, and hybrid
        when it has two or more."""
        modes = ["sparse", *(["dense"] if self.has_dense else []), *(["bm25"] if self.has_bm25 else [])]
        return modes + ["hybrid"] if len(modes) > 1 else modes

    # ------------------------------------------------------------------ search
    def search(
        self,
        text: str | None = None,
        k: int = 10,
        *,
        sparse: dict[str | int, float] | None = None,
        dense: Sequence[float] | np.ndarray | None = None,
        mode: str = "sparse",
        hybrid: HybridOptions | None = None,
        prf: PrfOptions | bool | None = None,
        include_text: bool = False,
        explain: bool = False,
        deadline: float | None = None,
        bound_factor: float = 1.0,
    ) -> SearchResult:
        """One query given as text, as a ``{token or term id: weight}`` dict, or as a dense vector.

        ``mode`` "auto" is the CLI's default: hybrid over every leg the collection has, or sparse when SPLADE is its
        only one (under "auto" a sparse or dense vector query picks its own mode; here the default is "sparse").
        ``deadline`` (``time.monotonic()`` seconds) bounds waiting on remote shards. ``bound_factor`` > 1 searches the SPLADE leg approximately
        (``InvertedIndex.search``: at 1M documents 3 kept recall@10 0.98 in two thirds of the exact time)."""
        k = check_k(k)  # a numpy integer becomes an int, which faiss needs
        mode = self.resolve_mode(mode, sparse=sparse, dense=dense, text=text)
        self.check_request(text, sparse, dense, k, mode, hybrid, prf, bound_factor, explain=explain,
                           include_text=include_text, deadline=deadline)
        hybrid = self.hybrid_or_default(hybrid)
        legs = legs_of(mode, hybrid)
        timings: dict[str, float] = {}
        truncated = False
        q_sparse = q_dense = None
        with _timed(timings, "encode"):
            if text is not None and "sparse" in legs:
                batch, info = self.encode_queries([text])
                q_sparse, truncated = row_dict(batch, 0), bool(info.truncated[0])
            if sparse is not None:
                q_sparse = self._sparse_query(sparse)
            if dense is not None:
                q_dense = self._dense_query(dense)
            elif text is not None and "dense" in legs:
                vectors, info = self.encode_dense([text])
                q_dense, truncated = vectors[0], truncated or bool(info.truncated[0])
        return self.search_encoded(
            q_sparse, q_dense, text=text, k=k, mode=mode, hybrid=hybrid, prf=prf, include_text=include_text,
            explain=explain, timings=timings, truncated=truncated, deadline=deadline, bound_factor=bound_factor,
        )

    def search_batch(
        self,
        texts: Sequence[str],
        *,
        k: int = 10,
        mode: str = "sparse",
        hybrid: HybridOptions | None = None,
        prf: PrfOptions | bool | None = None,
        include_text: bool = False,
        explain: bool = False,
        check: Callable[[str], None] | None = None,
        deadline: float | None = None,
        bound_factor: float = 1.0,
    ) -> list[SearchResult]:
        """Many text queries: encoded as one batch, then searched one by one (``bound_factor`` as in ``search``).

        ``check(stage)`` runs before each query's search and may raise to stop the rest (the
        service passes its deadline check, so an expired batch stops within one query)."""
        texts = query_texts(texts)
        k = check_k(k)
        mode = self.resolve_mode(mode)
        self.check_request("x", None, None, k, mode, hybrid, prf, bound_factor, explain=explain,
                           include_text=include_text, deadline=deadline)
        hybrid = self.hybrid_or_default(hybrid)
        legs = legs_of(mode, hybrid)
        encode_timings: dict[str, float] = {}
        with _timed(encode_timings, "encode"):
            sparse_batch, info = self.encode_queries(texts) if "sparse" in legs else (None, None)
            dense, dense_info = self.encode_dense(texts) if "dense" in legs else (None, None)
        cut = np.zeros(len(texts), bool)
        for part in (info, dense_info):
            if part is not None:
                cut |= part.truncated
        per_query_encode = encode_timings["encode"] / max(1, len(texts))
        results = []
        for i in range(len(texts)):
            if check is not None:
                check(f"query {i} of the batch")
            results.append(
                self.search_encoded(
                    None if sparse_batch is None else row_dict(sparse_batch, i),
                    None if dense is None else dense[i],
                    text=texts[i], k=k, mode=mode, hybrid=hybrid, prf=prf, include_text=include_text, explain=explain,
                    timings={"encode": per_query_encode},
                    truncated=bool(cut[i]), deadline=deadline, bound_factor=bound_factor,
                )
            )
        return results

    def batch_search(self, queries: Sequence[str], qids: Sequence[str], k: int = 10, threads: int = 1,
                     **options: Any) -> dict[str, list[ScoredHit]]:
        """pyserini's batch habit: ``{qid: hits}``, the queries encoded ``BATCH_CHUNK`` at a time and those chunks
        searched on ``threads`` threads; ``options`` as ``search_batch`` takes them (``mode``, ``hybrid``, ...).
        ``lsr.search_topics`` writes such a search as a TREC run."""
        from lsr.search.batch import topic_list

        queries, qids = query_list(queries, "batch_search"), id_list(qids, "qids")  # a str was taken as its characters
        if len(queries) != len(qids):
            raise ValueError(f"{len(queries)} queries but {len(qids)} qids; give one qid per query")
        return {qid: result.hits for chunk, results in self.search_chunks(topic_list(zip(qids, queries)), k, threads,
                                                                         **options)
                for (qid, _), result in zip(chunk, results)}

    def search_chunks(self, topics: list[tuple[str, str]], k: int, threads: int,
                      **options: Any) -> Iterator[tuple[list[tuple[str, str]], list[SearchResult]]]:
        """(chunk, its results) for ``BATCH_CHUNK`` (qid, text) topics at a time, in order, the chunks searched on
        ``threads`` threads (``search_batch`` each)."""
        from concurrent.futures import ThreadPoolExecutor

        check_whole(threads, "threads", 1)
        query_texts([text for _, text in topics])  # chunk 2's blank query 66 was "query 2", after chunk 1's search
        chunks = [topics[i : i + BATCH_CHUNK] for i in range(0, len(topics), BATCH_CHUNK)]

        def search(chunk: list[tuple[str, str]]) -> list[SearchResult]:
            return self.search_batch([text for _, text in chunk], k=k, **options)

        with ThreadPoolExecutor(threads) as pool:
            yield from zip(chunks, pool.map(search, chunks))

    def search_encoded(
        self,
        q_sparse: dict[int, float] | None,
        q_dense: np.ndarray | None,
        *,
        text: str | None = None,
        k: int = 10,
        mode: str = "sparse",
        hybrid: HybridOptions | None = None,
        prf: PrfOptions | bool | None = None,
        include_text: bool = False,
        explain: bool = False,
        timings: dict[str, float] | None = None,
        truncated: bool = False,
        deadline: float | None = None,
        source: Legs | None = None,
        bound_factor: float = 1.0,
    ) -> SearchResult:
        """Search with already-encoded queries (term id → weight dict and/or dense vector; ``text`` for BM25).

        Every stage reads one pinned version of the collection, so a concurrent upsert or delete is
        seen entirely or not at all (per shard when sharded: each shard pins its own version).
        ``source`` replaces those legs (tuning passes a ``FirstPassMemo`` over them)."""
        self.check_open()
        source = source or self.legs(deadline)
        timings = {} if timings is None else timings
        mode = self.resolve_mode(mode)
        hybrid = self.hybrid_or_default(hybrid)
        prf = self.prf_or_default(prf)
        legs = legs_of(mode, hybrid)
        if "dense" in legs and self.dense_dim is None:
            raise FailedPrecondition("this collection has no dense index; re-index with --dense minilm to use dense or hybrid mode")
        if "bm25" in legs and not self.has_bm25:
            raise FailedPrecondition("this collection has no BM25 leg; re-index without --bm25 none to use it")
        queries = {leg: query for leg, query in (("sparse", sparse_query(q_sparse, bound_factor)), ("dense", q_dense),
                                                 ("bm25", text)) if leg in legs}
        for leg, query in queries.items():
            if query is None:
                raise ValueError(f"{mode} mode needs a {'text' if leg == 'bm25' else leg} query")
        depth = max(k, hybrid.candidates) if (len(legs) > 1 or prf is not None) else k
        runs = source.runs(queries, depth, timings)
        with _timed(timings, "fuse"):
            first = _combine(runs, legs, hybrid)
        final, last_runs, scored_sparse = first, runs, q_sparse
        if prf is not None:
            with _timed(timings, "prf"):
                final, last_runs, scored_sparse = self._prf(source, q_sparse, q_dense, runs, first, legs, hybrid, prf,
                                                            depth, bound_factor)
        hits = [
            ScoredHit(doc, float(score), _maybe(last_runs.get("sparse"), doc), _maybe(last_runs.get("dense"), doc),
                      bm25_score=_maybe(last_runs.get("bm25"), doc))
            for doc, score in rank(final, k)
        ]
        if include_text and hits:
            with self._texts_read():
                texts = source.text([h.doc_id for h in hits])
            for hit, body in zip(hits, texts):
                hit.text = body
        if explain and hits and scored_sparse:  # the query that gave sparse_score: PRF's moved one, if it ran
            self._explain(source, hits, scored_sparse)
        # the version read, not the current one: a write during the search had labelled old hits with its version,
        # which a client's cache keyed on it kept
        return SearchResult(hits, timings, truncated, source.answered, source.missing, self.tagged(source.version()))

    # ------------------------------------------------------------------ pipeline pieces
    def _prf(self, source: Legs, q_sparse, q_dense, runs, first, legs, hybrid, prf: PrfOptions, depth,
             bound_factor: float = 1.0):
        """Second retrieval with moved queries, both run at once; see the module docstring for the variants.
        Returns (fused run, each leg's last run, the sparse query that scored the last sparse run)."""
        fused_feedback = prf.interpolate in FUSED_FEEDBACK
        moved: dict[str, Any] = {}
        moved_sparse = q_sparse
        if "sparse" in runs and prf.weight > 0:
            docs, scores = _top(first if fused_feedback else runs["sparse"], prf.feedback_docs)
            if docs:
                idf = self.models.idf(source) if prf.min_idf > 0 else None
                moved_sparse = rocchio(q_sparse, source.sparse_vectors(docs), scores, prf.weight, prf.max_terms,
                                       idf, prf.min_idf)
                moved["sparse"] = sparse_query(moved_sparse, bound_factor)
        if "dense" in runs and prf.dense_beta() > 0:
            docs, scores = _top(first if fused_feedback else runs["dense"], prf.feedback_docs)
            if docs:
                moved["dense"] = vector_prf(np.asarray(q_dense, np.float32), source.dense_vectors(docs), scores,
                                            prf.dense_beta())
        new_runs = dict(runs)  # BM25, and legs whose β is 0, keep their first run
        if moved:
            new_runs.update(source.runs(moved, depth, {}))
        prf_run = _combine(new_runs, legs, hybrid)
        if prf.interpolate in INTERPOLATE_AFTER:
            prf_run = interpolate(prf_run, first, prf.after_weight, hybrid.normalization, hybrid.rrf_k,
                                  hybrid.combination)
        return prf_run, new_runs, moved_sparse

    def _explain(self, source: Legs, hits: list[ScoredHit], q: dict[int, float], top: int = 10) -> None:
        vectors = source.sparse_vectors([h.doc_id for h in hits])
        vocab = self.vocab
        for i, hit in enumerate(hits):
            ids, vals = vectors.row(i)
            parts = [(vocab[t], q[t] * v) for t, v in zip(ids.tolist(), vals.tolist()) if t in q]
            hit.explanation = sorted(parts, key=lambda p: (-p[1], p[0]))[:top]

    # ------------------------------------------------------------------ validation
    def check_request(self, text, sparse, dense, k, mode, hybrid, prf, bound_factor: float = 1.0, *,
                      explain: Any = False, include_text: Any = False, deadline: Any = None) -> None:
        """Validate a request before any work (the service calls it ahead of micro-batched encoding)."""
        self.check_open()
        check_options(k, mode, hybrid, prf, bound_factor)
        check_switches(explain, include_text, deadline)
        prf = self.prf_or_default(prf)
        if prf is not None:
            prf.check()  # the collection's stored defaults
        given = [name for name, value in (("text", text), ("sparse", sparse), ("dense", dense)) if value is not None]
        if not given:
            raise ValueError("the query is empty: give text, a sparse vector or a dense vector")
        if len(given) > 1 and not (set(given) == {"text", "dense"} and mode == "hybrid"):
            raise ValueError(f"give only one of text, sparse or dense (got {', '.join(given)}); dense may join text only in hybrid mode")
        if sparse is not None and mode != "sparse":
            raise ValueError(f"a sparse vector query runs in sparse mode only, not {mode}")
        check_idle_options(mode, hybrid, prf, bound_factor)
        given_hybrid, hybrid = hybrid, self.hybrid_or_default(hybrid)
        if mode == "hybrid" and given_hybrid is not None and len(hybrid.weights()) < 2:
            raise ValueError(self._one_list_left(hybrid))
        legs = legs_of(mode, hybrid)
        if "bm25" in legs and text is None:
            raise ValueError(f"{mode} mode with a BM25 leg needs the query text")
        if "bm25" in legs and not self.has_bm25:
            raise FailedPrecondition(f"{mode} mode needs the BM25 leg, and this collection has none; "
                                     "re-index without --bm25 none")
        if text is not None and not isinstance(text, str):
            raise TypeError(f"the query text must be a str, got {type(text).__name__} (a {{term: weight}} dict goes in "
                            "sparse=, a vector in dense=; many texts go to search_batch)")
        if text is not None:
            from lsr.encode.texts import check_query_length, check_texts, is_blank

            if is_blank(text):
                raise ValueError("the query text is empty or whitespace")
            check_query_length(text, "the query text")
            check_texts(text)  # undecodable bytes fail alike in every mode, BM25's too
        if dense is not None and mode == "sparse":
            raise ValueError("a dense vector query needs mode dense or hybrid")
        if "dense" in legs and self.dense_dim is None:
            if given_hybrid is not None and given_hybrid.dense_weight:  # hybrid runs without it here: the weight is all
                raise FailedPrecondition(f"the dense weight {given_hybrid.dense_weight:g} weighs a dense list, and this "
                                         "collection has none (built with --dense none); leave it out (--dense-weight)")
            raise FailedPrecondition(f"{mode} mode needs dense vectors, and this collection has none; re-index with --dense minilm")

    def _sparse_query(self, sparse: dict[str | int, float]) -> dict[int, float]:
        if not isinstance(sparse, Mapping):  # a SparseBatch failed as "'SparseBatch' object has no attribute 'items'"
            hint = ": batch.to_dicts()[0] is its first row's" if isinstance(sparse, SparseBatch) else ""
            raise TypeError(f"a sparse query is a {{token or term id: weight}} dict, got {type(sparse).__name__}{hint}")
        if not sparse:
            raise ValueError("the sparse query has no terms")
        out: dict[int, float] = {}
        for token, weight in sparse.items():
            if not is_real(weight) or not math.isfinite(weight) or weight < 0:
                raise ValueError(f"sparse weight for {token!r} must be a finite non-negative number, got {weight!r}")
            if isinstance(token, str):
                term = self._token_ids.get(token)
                if term is None:
                    raise ValueError(f"unknown token {short_repr(token)} in the sparse query (not in the model's "
                                     "vocabulary)")
            else:
                if not is_whole(token):  # 2.7 was read as term 2
                    raise ValueError(f"a sparse query's key is a token or a whole term id, got {token!r}")
                term = int(token)
                if not 0 <= term < self.vocab_size:
                    raise ValueError(f"term id {term} is outside the vocabulary (0..{self.vocab_size - 1})")
            if weight > 0:  # a term given twice (as a token and as its id) adds up, as in the index's own queries
                out[term] = out.get(term, 0.0) + float(weight)
        if not out:  # it matched nothing and said OK, where an all-zero dense vector was refused
            raise ValueError("the sparse query's weights are all 0: it matches nothing")
        _check_scale("the sparse query's largest weight", max(out.values()))
        return out

    def _dense_query(self, dense: Sequence[float] | np.ndarray) -> np.ndarray:
        vec = dense_vector(dense)
        if self.dense_dim is not None and len(vec) != self.dense_dim:
            raise ValueError(f"dense vector has {len(vec)} dimensions; this collection's have {self.dense_dim}")
        if not np.all(np.isfinite(vec)):
            raise ValueError("dense vector has NaN or infinite values")
        if not vec.any():
            raise ValueError("the dense vector is all zeros: it matches every document alike")
        _check_scale("the dense vector's largest value", float(np.abs(vec).max()))
        return vec

    # ------------------------------------------------------------------ updates
    def upsert(self, ids: Sequence[str], texts: Sequence[str], deadline: float | None = None,
               check: Callable[[str], None] | None = None, *, allow_empty: bool = False,
               encode_slot: Callable[[str], AbstractContextManager[Any]] | None = None) -> None:
        """Encode and add documents; an existing id is replaced (so a retried upsert is harmless). Durable once
        this returns. ``deadline`` (``time.monotonic()`` seconds) bounds waiting on remote shards; ``check(stage)``
        runs before every ``UPSERT_CHECK_EVERY`` documents are encoded and before the write, and may raise to drop
        it (the service passes its caller's liveness: nothing is encoded or written for a caller that gave up).
        ``encode_slot(stage)`` is held around each of those encodings (the server's encode slots, which its queries
        share: 16 upserts encoding at once on 2 cores took seconds each and grew the server by 1 GB).
        A text that is empty or whitespace (found by no search: almost always a bug) is refused unless
        ``allow_empty``, as the server refuses it unless ``allow_empty_documents``."""
        from lsr.encode.texts import is_blank

        self.check_open()
        check_deadline(deadline)
        if isinstance(texts, str):
            raise TypeError("texts must be a list of texts, one per id, not one str")
        ids, texts = id_list(ids), list(texts)
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        blank = next((i for i, text in enumerate(texts) if isinstance(text, str) and is_blank(text)), None)
        if blank is not None and not allow_empty:
            raise ValueError(f"texts[{blank}] (id {ids[blank]!r}) is empty or whitespace, which no search finds; pass "
                             "allow_empty=True to store it anyway")
        if repeated := repeated_ids(ids):
            raise ValueError(f"duplicate ids in one upsert: {repeated}")
        check_ids(ids)
        if not ids:
            return
        self.models.check_for_writes()
        step = UPSERT_CHECK_EVERY if check is not None else max(1, len(texts))
        sparse, dense = [], []
        for start in range(0, len(texts), step):
            stage = f"encoding documents {start}..{len(texts)}"
            if check is not None:
                check(stage)
            chunk = texts[start : start + step]
            with encode_slot(stage) if encode_slot is not None else nullcontext():
                sparse.append(self.models.documents.encode_documents(chunk))
                dense.append(self.dense_encoder.encode_documents(chunk) if self.has_dense else None)
        self.store(ids, texts, SparseBatch.concat(sparse), np.concatenate(dense) if self.has_dense else None,
                   deadline, check)

    def store(self, ids: list[str], texts: list[str], sparse: SparseBatch, dense: np.ndarray | None,
              deadline: float | None = None, check: Callable[[str], None] | None = None) -> None:
        """Write encoded documents; the sharded coordinator sends each to the shard that owns it. Waiting for this
        process's other writes and another process's hold on the folder ends at ``deadline``; ``check`` runs once
        the write holds both: a write whose caller gave up while it waited is dropped, never applied after a later
        one. Once started, a local write is short and atomic."""
        with self._writing(deadline, check):
            self.collection.upsert(ids, texts, sparse, dense, deadline=deadline, check=check)

    def delete(self, ids: Sequence[str], deadline: float | None = None,
               check: Callable[[str], None] | None = None) -> list[str]:
        """Delete documents; returns the ids that were not in the collection (nothing else changes for them).
        ``deadline`` and ``check`` as in ``store``."""
        self.check_open()
        check_deadline(deadline)
        ids = id_list(ids)
        if "" in ids:  # NOT_FOUND "(first: '')" where an upsert refused it; other ids, even ones today's check refuses,
            # stay deletable: a collection may hold them from before it
            raise ValueError(f"ids[{ids.index('')}] is empty; an id is at least one character")
        with self._writing(deadline, check):
            return self.collection.delete(ids, deadline=deadline, check=check)

    @contextmanager
    def _writing(self, deadline: float | None, check: Callable[[str], None] | None) -> Iterator[None]:
        """This process's writes one at a time, each waiting no longer than its caller's deadline: a server's
        handler threads all waited on one write held up by another process, health checks' threads too."""
        self.check_open()
        timeout = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._write_lock.acquire(timeout=timeout):
            if check is not None:
                check("waiting for another write")
            raise TimeoutError("another write of this collection took past the deadline")
        try:
            yield
        finally:
            self._write_lock.release()


def check_path(path: Any) -> str | os.PathLike:
    """A collection's folder as ``open`` takes it: None was refused as "expected str, bytes or os.PathLike object"."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a collection's folder (a str or Path), got {type(path).__name__}")
    return path


def query_texts(texts: Sequence[str]) -> list[str]:
    """Query texts as a list, each a non-blank str of UTF-8 text within the length limit; an error names its
    position in ``texts``."""
    from lsr.encode.texts import check_query_length, check_texts, is_blank

    texts = check_texts(query_list(texts))  # a non-str (TypeError) or undecodable bytes, in every mode
    for i, text in enumerate(texts):
        if is_blank(text):
            raise ValueError(f"query {i} is empty")
        check_query_length(text, f"query {i}")
    return texts


def query_list(texts: Sequence[str], caller: str = "search_batch") -> list[str]:
    """Many query texts as a list; one str would be iterated as one-character queries, a dict as its keys (BEIR's
    ``{query id: text}`` searched the ids) and a set in no order the results could be matched to. ``caller`` names
    the method in the message (``encode_queries("x")`` was told that search_batch takes a list)."""
    if isinstance(texts, str):
        hint = "search() takes one" if caller == "search_batch" else f"pass [{short_repr(texts)}]"
        raise TypeError(f"{caller} takes a list of query texts, got one str; {hint}")
    if isinstance(texts, (Mapping, AbstractSet)):
        raise TypeError(f"{caller} takes an ordered list of query texts, got a {type(texts).__name__} (for "
                        "{query id: text}, pass list(queries.values()))")
    if not isinstance(texts, Iterable):  # "'NoneType' object is not iterable" named no argument
        raise TypeError(f"{caller} takes a list of query texts, got {type(texts).__name__}")
    return list(texts)


def _check_scale(what: str, value: float) -> None:
    """Scores are float32: a query whose values lie far outside 1 would overflow them to inf (every hit tied)
    or underflow them to 0 (no hits). Scaling a query does not change its ranking without PRF (whose feedback step
    has the documents' size, not the query's), so the caller can rescale."""
    low, high = QUERY_SCALE
    if not low <= value <= high:
        raise ValueError(f"{what} is {value:g}; scale the query so it lies between {low:g} and {high:g} "
                         "(scores are float32; scaling keeps the ranking, though PRF then moves it as far as before)")


def check_open_options(query_encoder: str, threads: int | None, device: Any, dtype: Any) -> None:
    """Refuse, before loading anything, what the first search would fail on deep inside: an unknown query encoder or
    dtype, a device that is not there (torch is imported only when one other than auto or cpu is asked for), a
    thread count that is no positive whole number; then apply the thread count."""
    if query_encoder not in QUERY_ENCODERS:
        raise ValueError(f"query_encoder must be one of {', '.join(QUERY_ENCODERS)}, got {query_encoder!r}")
    if isinstance(dtype, str) and dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    if str(device) not in ("auto", "cpu"):
        from lsr.encode.inputs import resolve_device

        resolve_device(device)
    if threads is not None:
        from lsr.encode.cpu_threads import set_threads

        set_threads(check_whole(threads, "threads", 1))


def legs_of(mode: str, hybrid: HybridOptions) -> dict[str, float]:
    """The legs a mode runs, with their fusion weights."""
    return hybrid.weights() if mode == "hybrid" else {mode: 1.0}


def _combine(runs: dict[str, Ranking], legs: dict[str, float], hybrid: HybridOptions) -> Ranking:
    if len(legs) == 1:
        return runs[next(iter(legs))]
    return fuse([runs[leg] for leg in legs], list(legs.values()), hybrid.normalization, hybrid.rrf_k,
                hybrid.combination)


def row_dict(batch: SparseBatch, i: int) -> dict[int, float]:
    """Row i of a SparseBatch as a {term id: weight} dict, the form search_encoded takes (a term id that a
    hand-built batch repeats adds up, as a sparse matrix's duplicates do)."""
    ids, vals = batch.row(i)
    out = dict(zip(ids.tolist(), vals.tolist()))
    if len(out) < len(ids):  # only a hand-built batch repeats a term: an encoder's rows take the line above alone
        out = {}
        for term, weight in zip(ids.tolist(), vals.tolist()):
            out[term] = out.get(term, 0.0) + weight
    return out


def _top(run: Ranking, m: int) -> tuple[list[str], np.ndarray]:
    top = rank(run, m)
    return [d for d, _ in top], np.asarray([s for _, s in top], np.float64)


def _maybe(run: Ranking | None, doc: str) -> float | None:
    return None if run is None else run.get(doc)


def dense_vector(dense: Sequence[float] | np.ndarray) -> np.ndarray:
    """A dense query as one float32 vector: a list, a 1-D array, or one encoder row of shape (1, dim)."""
    vec = np.asarray(dense)
    if vec.dtype.kind not in "iuf":  # strings were converted ("1" searched as 1.0), None failed inside numpy
        raise TypeError(f"a dense query is a vector of numbers, got an array of {vec.dtype}")
    if vec.ndim != 1 and not (vec.ndim == 2 and len(vec) == 1):  # a (2, 192) array was read as one 384-d vector
        raise ValueError(f"a dense query is one vector, got an array of shape {vec.shape}")
    return vec.astype(np.float32, copy=False).reshape(-1)
