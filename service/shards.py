"""One shard of a sharded collection, served to the coordinator (a Ray actor in ``lsr serve``).

A shard server holds no models: the coordinator encodes queries and documents once and sends
vectors, so a shard starts in a second and restarts as fast after a crash. It answers the
questions of ``lsr.search.legs.Legs`` with the same ``ViewLegs`` an unsharded Searcher uses.

A search makes several calls (first runs, then PRF feedback vectors and runs, then texts), and
each must read the version of the shard the first one read, or a write in between could remove
a feedback document. So ``runs`` returns a view token, and later calls of the same search pass
it back; the last few views are kept (a restarted shard has none and uses its current one).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lsr.search.fusion import Ranking
from lsr.search.legs import LegQueries, ViewLegs
from lsr.sparse import SparseBatch

_KEPT_VIEWS = 16  # views recent searches may still read; a write makes one new view


class ShardServer:
    """Searches and writes one shard's collection; every method is safe to call from many threads."""

    def __init__(self, name: str, path: str | Path) -> None:
        from lsr.ingest.collection import Collection

        self.name = name
        self.collection = Collection.open(path)
        self._lock = threading.Lock()
        self._views: OrderedDict[int, Any] = OrderedDict()
        self._next_token = 0
        self._warm_up()

    def _warm_up(self) -> None:
        """Search once before answering the probe: the first search compiles (or loads) the numba
        kernels, seconds that must not count against a user's search or the shard timeout."""
        view = self.collection.view()
        queries: LegQueries = {"sparse": {0: 1.0}}
        if view.dense is not None:
            queries["dense"] = np.ones(view.dense.dim, np.float32)
        ViewLegs(view).runs(queries, 1, {})

    # ------------------------------------------------------------------ facts
    def info(self) -> dict[str, Any]:
        """What the coordinator needs to know at start and in GetStats (cheap: no per-document work)."""
        view = self.collection.view()
        return {
            "name": self.name,
            "num_docs": int(view.sparse.num_docs),
            "num_segments": int(getattr(view.sparse, "num_segments", 1)),
            "vocab_size": int(view.sparse.vocab_size),
            "dense_docs": len(view.dense) if view.dense is not None else 0,
            "dense_dim": view.dense.dim if view.dense is not None else None,
            "has_bm25": view.bm25 is not None,
            "version": str(view.sparse.version),
            "mean_text_bytes": float(view.docs.mean_text_bytes()),
            "checksum": self.collection.checksum,
            "build": self.collection.build_tag,  # which build of the folder it opened (a restart opens the newest)
            "replaced": self.collection.replaced,  # indexed anew under it: writes fail until a restart
        }

    def doc_freqs(self) -> tuple[np.ndarray, int]:
        """(document frequency per term, documents): summed over shards, the whole collection's."""
        sparse = self.collection.view().sparse
        return np.asarray(sparse.doc_freqs()), int(sparse.num_docs)

    # ------------------------------------------------------------------ reads
    def runs(self, queries: LegQueries, depth: int, token: int | None = None) -> tuple[
            int, dict[str, Ranking], dict[str, float], str, dict[str, int]]:
        """(view token, each leg's top ``depth``, seconds per leg, index version, and the document frequencies here
        of the BM25 query's words the build never saw) for pre-encoded queries; ``token`` reads the view a search
        pinned in its first call (its second BM25 round and its PRF pass read the current one, and a document
        written in between came back without its text)."""
        token, view = self._pinned(token)
        timings: dict[str, float] = {}
        runs = ViewLegs(view).runs(queries, depth, timings)
        text = queries.get("bm25")
        new_words = view.bm25.new_word_doc_freqs(text) if isinstance(text, str) and view.bm25 is not None else {}
        return token, runs, timings, str(view.sparse.version), new_words

    def sparse_vectors(self, doc_ids: Sequence[str], token: int | None = None) -> SparseBatch:
        return ViewLegs(self._view(token)).sparse_vectors(doc_ids)

    def dense_vectors(self, doc_ids: Sequence[str], token: int | None = None) -> np.ndarray:
        return ViewLegs(self._view(token)).dense_vectors(doc_ids)

    def text(self, doc_ids: Sequence[str], token: int | None = None) -> list[str | None]:
        return ViewLegs(self._view(token)).text(doc_ids)

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: list[str], texts: list[str], sparse: SparseBatch, dense: np.ndarray | None) -> str:
        """Durable and visible once this returns; the new index version."""
        self.collection.upsert(ids, texts, sparse, dense)
        return str(self.collection.view().sparse.version)

    def delete(self, ids: list[str]) -> tuple[list[str], str]:
        """(the ids this shard did not hold, the new index version)."""
        not_found = self.collection.delete(ids)
        return not_found, str(self.collection.view().sparse.version)

    # ------------------------------------------------------------------ views
    def _pin(self) -> tuple[int, Any]:
        """The current view and its token (one token per view, however many searches read it)."""
        view = self.collection.view()
        with self._lock:
            if self._views and next(reversed(self._views.values())) is view:
                return next(reversed(self._views)), view
            self._next_token += 1
            self._views[self._next_token] = view
            while len(self._views) > _KEPT_VIEWS:
                self._views.popitem(last=False)
            return self._next_token, view

    def _pinned(self, token: int | None) -> tuple[int, Any]:
        """``token`` and its view while it is kept, else the current view pinned."""
        view = self._kept(token)
        return (token, view) if view is not None else self._pin()

    def _view(self, token: int | None) -> Any:
        view = self._kept(token)
        return view if view is not None else self.collection.view()

    def _kept(self, token: int | None) -> Any:
        with self._lock:
            return self._views.get(token) if token is not None else None
