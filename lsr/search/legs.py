"""Where a search's retrieval legs run: one collection view here, or many shards elsewhere.

The Searcher's pipeline (fuse → PRF → interpolate → top-k) only needs four things from the
documents: each leg's top-n run for given queries, the stored sparse and dense vectors of some
documents (PRF feedback, explain) and their texts. ``ViewLegs`` answers them from one pinned
collection view; the sharded coordinator answers the same questions by fanning out to shard
servers (lsr.service.coordinator), which answer with a ``ViewLegs`` of their own. So sharded
and unsharded searches share every line of ranking and fusion code.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple, Protocol, Sequence

import numpy as np

from lsr.search.fusion import Ranking, rank
from lsr.sparse import SparseBatch

# A leg's query: a {term id: weight} dict (sparse, or a SparseQuery), a vector (dense) or the text (bm25, or a
# Bm25Query).
LegQueries = dict[str, Any]


class SparseQuery(NamedTuple):
    """A SPLADE query searched approximately: ``InvertedIndex.search``'s ``bound_factor`` (> 1), which a sharded
    search carries to every shard with the query."""

    weights: dict[int, float]
    bound_factor: float


def sparse_query(weights: dict[int, float] | None, bound_factor: float) -> Any:
    """The sparse leg's query: the weights as they are for an exact search (1.0), else a SparseQuery."""
    return weights if weights is None or bound_factor == 1.0 else SparseQuery(weights, bound_factor)


class Bm25Query(NamedTuple):
    """A BM25 query with the document frequencies its words the build never saw have in the whole collection: a
    shard counts only its own upserts, so a word upserted into two shards scored with another IDF than unsharded."""

    text: str
    new_word_doc_freqs: dict[str, int]


class Legs(Protocol):
    """What the Searcher asks of the documents during one search (all reads see one version)."""

    answered: tuple[str, ...]  # shards that answered every call so far (empty when not sharded)
    missing: tuple[str, ...]  # shards that did not: the result is partial

    def runs(self, queries: LegQueries, depth: int, timings: dict[str, float]) -> dict[str, Ranking]: ...

    def sparse_vectors(self, doc_ids: Sequence[str]) -> SparseBatch: ...

    def dense_vectors(self, doc_ids: Sequence[str]) -> np.ndarray: ...

    def text(self, doc_ids: Sequence[str]) -> list[str | None]: ...

    def version(self) -> str: ...  # the collection version every read saw (index_version without the build tag)

    def doc_freqs_version(self) -> str: ...  # changes whenever doc_freqs() may have

    def doc_freqs(self) -> tuple[np.ndarray, int]: ...  # (documents holding each term, live documents)


class ViewLegs:
    """The legs over one pinned CollectionView: the unsharded path, and each shard's own."""

    answered: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    def __init__(self, view: Any) -> None:
        self.view = view

    def runs(self, queries: LegQueries, depth: int, timings: dict[str, float]) -> dict[str, Ranking]:
        """Each leg's top ``depth`` (doc id → score); its wall time is added to ``timings[leg]``."""
        out: dict[str, Ranking] = {}
        for leg, query in queries.items():
            started = time.perf_counter()
            out[leg] = self._run(leg, query, depth)
            timings[leg] = timings.get(leg, 0.0) + time.perf_counter() - started
        return out

    def _run(self, leg: str, query: Any, depth: int) -> Ranking:
        """The leg's top ``depth`` with ties across the cut settled by doc id, as ``rank`` orders them. A leg cuts ties
        by its own row order, which differs between one collection and its shards, so a sharded search could keep
        other tied documents than the unsharded one (and a top 3 that was not the start of the top 7): the cut is
        widened, doubling, until it ends below the tied score: as far as it takes (a cap of 4× ``depth`` or 256 more
        kept the first rows of 300 tied copies, not the lowest ids, where 3 shards kept the lowest)."""
        asked = depth + 1
        while True:
            run = self._search(leg, query, asked)
            if len(run) <= depth:
                return run
            scores = sorted(run.values(), reverse=True)
            cut = scores[depth - 1]
            if scores[depth] < cut:  # no tie across the cut (most searches): no ranking by id needed
                return {doc: score for doc, score in run.items() if score >= cut}
            if len(run) < asked or scores[-1] < cut:  # every document tied at the cut is here
                return dict(rank(run, depth))
            asked *= 2

    def _search(self, leg: str, query: Any, depth: int) -> Ranking:
        if leg == "sparse":
            weights, factor = query if isinstance(query, SparseQuery) else (query, 1.0)
            return ({h.doc_id: h.score for h in self.view.sparse.search(weights, k=depth, bound_factor=factor)}
                    if weights else {})
        if leg == "dense":
            ids, scores = self.view.dense.search(np.asarray(query, np.float32)[None, :], depth)
            return {d: float(s) for d, s in zip(ids[0], scores[0]) if d is not None and math.isfinite(s)}
        if leg == "bm25":
            text, freqs = query if isinstance(query, Bm25Query) else (query, None)
            return self.view.bm25_search([text], depth, freqs)[0]
        raise ValueError(f"unknown leg {leg!r}")

    def sparse_vectors(self, doc_ids: Sequence[str]) -> SparseBatch:
        return self.view.sparse.get_vectors(list(doc_ids))

    def dense_vectors(self, doc_ids: Sequence[str]) -> np.ndarray:
        return self.view.dense.get_vectors(list(doc_ids))

    def text(self, doc_ids: Sequence[str]) -> list[str | None]:
        return self.view.text(doc_ids)

    def version(self) -> str:
        return str(self.view.sparse.version)

    def doc_freqs_version(self) -> str:
        return self.version()

    def doc_freqs(self) -> tuple[np.ndarray, int]:
        return np.asarray(self.view.sparse.doc_freqs()), int(self.view.sparse.num_docs)


class FirstPassMemo:
    """Legs that remember each leg's run for one query's own inputs, across searches of that query.

    Why: tuning (``lsr tune``, ``lsr beir``) searches the same queries under a few hundred fusion and PRF
    settings; every first pass retrieves the same lists, and only the fusion and PRF's second pass differ.
    A run is reused only for the very objects in ``originals`` (identity), so PRF's moved queries, new
    objects, are always searched; ``memo`` is the caller's, one per query, and must be dropped when the
    collection changes."""

    def __init__(self, base: Legs, originals: LegQueries, memo: dict[tuple[str, int], Ranking]) -> None:
        self.base, self.originals, self.memo = base, originals, memo

    def runs(self, queries: LegQueries, depth: int, timings: dict[str, float]) -> dict[str, Ranking]:
        own = {leg for leg, query in queries.items() if query is self.originals.get(leg)}
        todo = {leg: query for leg, query in queries.items() if leg not in own or (leg, depth) not in self.memo}
        fresh = self.base.runs(todo, depth, timings) if todo else {}
        self.memo.update({(leg, depth): run for leg, run in fresh.items() if leg in own})
        return {leg: fresh[leg] if leg in fresh else self.memo[(leg, depth)] for leg in queries}

    def __getattr__(self, name: str) -> Any:  # vectors, texts, doc freqs, shard lists: the base's
        return getattr(self.base, name)
