"""BM25 IDF tables: the inference-free query side's weights and PRF's filter on rare expansion terms.

Why a module of its own: an index's document frequencies change with every upsert and delete, so a table is
computed per version of them (``VersionedIdf``), and neither user needs torch.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

import numpy as np


def idf_from_doc_freqs(doc_freqs: np.ndarray, num_docs: int) -> np.ndarray:
    """BM25's non-negative IDF, ``log(1 + (N - df + 0.5) / (df + 0.5))``; 0 for terms no document has."""
    df = np.asarray(doc_freqs, dtype=np.float64)
    idf = np.log1p((num_docs - df + 0.5) / (df + 0.5))
    idf[df == 0] = 0.0
    return idf.astype(np.float32)


def unseen_as_rarest(idf: np.ndarray, special_ids: Iterable[int]) -> np.ndarray:
    """A query-side IDF table where each token no document had weighs as much as the rarest one, not 0: a table from a
    few thousand training documents misses most of the vocabulary, and a zero dropped those words from every query,
    so a collection holding them returned nothing. ``special_ids`` stay 0."""
    table = np.asarray(idf, np.float32).copy()
    if table.any():
        table[table == 0] = table.max()
    special = [i for i in special_ids if 0 <= i < len(table)]
    table[special] = 0.0
    return table


class VersionedIdf:
    """BM25 IDF of documents that change, computed once per version of their document frequencies. Thread-safe:
    the service encodes queries on several threads, and a version's table is computed by one of them."""

    def __init__(self) -> None:
        self._cached: tuple[str, np.ndarray] | None = None
        self._lock = threading.Lock()

    @property
    def last(self) -> np.ndarray | None:
        """The latest table computed, whatever its version (None before the first)."""
        cached = self._cached
        return None if cached is None else cached[1]

    def of(self, version: str, doc_freqs: Callable[[], tuple[np.ndarray, int]]) -> np.ndarray:
        """The table for ``version``; ``doc_freqs()`` gives (documents holding each term, live documents)."""
        cached = self._cached
        if cached is not None and cached[0] == version:
            return cached[1]
        with self._lock:
            if self._cached is None or self._cached[0] != version:
                self._cached = (version, idf_from_doc_freqs(*doc_freqs()))
            return self._cached[1]


def idf_of_index(index: Any) -> Callable[[], np.ndarray]:
    """An ``InvertedIndex``'s BM25 IDF as it is at each call, recomputed only when the index's version changes."""
    table = VersionedIdf()
    return lambda: table.of(str(index.version), lambda: (index.doc_freqs(), index.num_docs))
