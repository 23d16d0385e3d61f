"""The BM25 leg's scoring loops: one query's top k over bm25s's precomputed (term, document) scores, and
over the chunks of documents written since the build (``lsr.search.bm25_leg``), into one heap.

bm25s scores a query in numpy (``np.add.at`` per term over a dense score array, then a partition);
that was 12% of a server's samples under hybrid load on SciFact. This loop adds the same float32
values in the same order, so every score is the same bits, and offers each scored document to the
inverted index's bounded heap, so ties at the k-th place go to the lower row (bm25s leaves them to
``argpartition``). Rows and pointers come from files on disk, so each is range checked before it
indexes anything: a corrupted file gives wrong scores, never a crash.
"""

from __future__ import annotations

import numpy as np

from lsr.index.jit import njit
from lsr.index.search_numba import heap_push


@njit(cache=True, nogil=True)
def bm25_top_k(data, indptr, indices, num_docs, terms, hidden, hs, hd, hn):
    """Push every document with a positive score into the heap (``hs``, ``hd``, size in ``hn[0]``).

    ``terms``: the query's term ids, repeats counted as bm25s counts them; ``hidden``: rows never pushed.
    """
    scores = np.zeros(num_docs, np.float32)
    for term in terms:
        if term < 0 or term + 1 >= indptr.shape[0]:
            continue
        stop = min(indptr[term + 1], data.shape[0], indices.shape[0])
        for j in range(max(indptr[term], 0), stop):
            row = indices[j]
            if 0 <= row < num_docs:
                scores[row] += data[j]
    for row in hidden:
        if 0 <= row < num_docs:
            scores[row] = 0.0
    for row in range(num_docs):
        if scores[row] > 0.0:
            heap_push(hs, hd, hn, scores[row], row)


def new_heap(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An empty bounded heap of ``k`` (score, row) entries for the loops above."""
    return np.zeros(k, np.float32), np.zeros(k, np.int64), np.zeros(1, np.int64)


def push_matrix(scores: dict, terms: np.ndarray, hidden: np.ndarray, heap: tuple) -> None:
    """Offer the documents of bm25s's score matrix (rows from 0) to ``heap``."""
    if len(heap[0]):
        bm25_top_k(scores["data"], scores["indptr"], scores["indices"], int(scores["num_docs"]), terms, hidden, *heap)


def best_first(heap: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores) in the heap, best first, ties by lower row."""
    hs, hd, hn = heap
    order = np.lexsort((hd[: hn[0]], -hs[: hn[0]]))
    return hd[order], hs[order]


@njit(cache=True, nogil=True)
def bm25_chunk_top_k(term_ids, term_ptr, rows, tfc, alive, query_terms, query_idf, offset, hs, hd, hn):
    """Push every live document of one later-written chunk that scores above zero (its id ``offset + row``).

    A chunk holds, per term (``term_ids`` sorted), its documents' rows and bm25s term-frequency components
    (float64); a document's score adds float32(idf × tfc) over the query's terms in query order, repeats counted:
    the float32 sum the build's score matrix would have given it.
    """
    scores = np.zeros(alive.shape[0], np.float32)
    for q in range(query_terms.shape[0]):
        i = np.searchsorted(term_ids, query_terms[q])
        if i < term_ids.shape[0] and term_ids[i] == query_terms[q]:
            for j in range(term_ptr[i], term_ptr[i + 1]):
                scores[rows[j]] += np.float32(query_idf[q] * tfc[j])
    for row in range(alive.shape[0]):
        if alive[row] and scores[row] > 0.0:
            heap_push(hs, hd, hn, scores[row], offset + row)
