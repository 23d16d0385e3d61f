"""Validation of what callers hand the index: document batches, doc ids and queries.

Everything is checked before anything is written, so bad input leaves the index unchanged, and
the error says which row, id or term is wrong.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import scipy.sparse as sp

from lsr.sparse import MAX_DOC_WEIGHT, QUERY_SCALE, SparseBatch, id_list, is_real, is_whole, repeated_ids

from .jit import njit


def _canonical_csr(batch: SparseBatch) -> SparseBatch:
    """Sum duplicate terms within a row and sort term ids."""
    csr = batch.to_scipy()
    if not csr.has_canonical_format:
        csr = csr.copy()  # the arrays may be read-only views of a Parquet file's buffers
        csr.sum_duplicates()
    return SparseBatch(csr.indptr, csr.indices, csr.data, batch.vocab_size, batch.vocab)


def _check_weights(values: np.ndarray, what: str, indptr: np.ndarray | None = None, top: float = np.inf,
                   first_row: int = 0) -> None:
    bad = ~np.isfinite(values) | (values < 0) | (values > top)
    if bad.any():
        where = "" if indptr is None else f" (row {first_row + int(np.searchsorted(indptr, np.argmax(bad), side='right')) - 1})"
        limit = "finite and >= 0" if np.isinf(top) else f"between 0 and {top:,g}"
        raise ValueError(f"{what} has a weight {values[bad][0]:g} out of range{where}; SPLADE weights must be {limit}")


def _check_terms(indices: np.ndarray, vocab_size: int, what: str) -> None:
    if len(indices) and (indices.min() < 0 or indices.max() >= vocab_size):
        bad = indices[(indices < 0) | (indices >= vocab_size)][0]
        raise ValueError(f"{what} has term id {int(bad)} outside the vocabulary [0, {vocab_size})")


def document_chunks(vectors, doc_ids: Sequence | None) -> Iterable:
    """``vectors`` as (batch, ids) chunks that can be read more than once (a build reads them twice, sizes first,
    so it never holds the whole collection's float weights): a SparseBatch or a scipy matrix is one chunk, a
    one-shot iterator is listed, any other iterable (a list, an object reading files) is taken as it is."""
    if isinstance(vectors, SparseBatch) or sp.issparse(vectors):
        if doc_ids is None:
            raise ValueError("doc_ids is required with a SparseBatch or scipy matrix")
        # a one-shot iterator of ids is listed, as one of chunks is below: read twice, it was "0 doc ids for 3 vectors"
        return [(vectors, list(doc_ids) if isinstance(doc_ids, Iterator) else doc_ids)]
    if isinstance(vectors, np.ndarray):  # its rows were taken for chunks
        raise TypeError("vectors is a dense array: pass SparseBatch.from_dense(vectors) or a scipy matrix")
    if not isinstance(vectors, Iterable):  # "'NoneType' object is not iterable" named nothing
        raise TypeError(f"vectors must be a SparseBatch, a scipy matrix or (SparseBatch, ids) chunks, got "
                        f"{type(vectors).__name__}")
    chunks = list(vectors) if iter(vectors) is vectors else vectors
    if doc_ids is not None:
        for n, chunk in enumerate(chunks):  # chunks of another form are the likelier mistake: say so first
            _check_chunk(n, chunk)
        raise ValueError("pass doc_ids inside the (SparseBatch, ids) chunks, not separately")
    return chunks


def validated_chunks(chunks: Iterable, vocab_size: int | None) -> Iterator[tuple[SparseBatch, list[str]]]:
    """Each chunk as a canonical CSR batch (duplicate terms summed, terms sorted) and its ids, checked: one
    vocabulary for all (``vocab_size``, else the first chunk's), an id a vector, weights in range (a bad one is
    named by its row among all chunks'). Ids repeated across chunks are the caller's to check (``check_unique``)."""
    rows, names, n = 0, None, -1
    for n, chunk in enumerate(chunks):
        _check_chunk(n, chunk)
        batch, chunk_ids = chunk
        batch = batch if isinstance(batch, SparseBatch) else SparseBatch.from_scipy(sp.csr_matrix(batch))
        chunk_ids = doc_id_list(chunk_ids)
        if len(chunk_ids) != len(batch):
            raise ValueError(f"{len(chunk_ids)} doc ids for {len(batch)} vectors")
        vocab_size = batch.vocab_size if vocab_size is None else vocab_size
        if batch.vocab_size != vocab_size:
            raise ValueError(f"vectors have vocab_size {batch.vocab_size}, the index uses {vocab_size}")
        if batch.vocab is not None:
            names = batch.vocab if names is None else names
            if batch.vocab is not names and list(batch.vocab) != list(names):
                raise ValueError(f"vectors chunk {n} names other terms than the chunks before it (same vocab size, "
                                 "other tokens)")
        _check_weights(batch.values, "document vectors", batch.indptr, MAX_DOC_WEIGHT, rows)  # term ids: SparseBatch checks them
        rows += len(batch)
        yield _canonical_csr(batch), chunk_ids
    if n < 0:
        raise ValueError("no vectors given")


def _check_chunk(n: int, chunk: Any) -> None:
    if not (isinstance(chunk, (tuple, list)) and len(chunk) == 2):  # a list of dicts failed as "not enough values to unpack"
        raise TypeError(f"vectors is a SparseBatch, a scipy matrix or (vectors, ids) chunks; chunk {n} is a "
                        f"{type(chunk).__name__}")


def check_unique(ids: Sequence[str]) -> None:
    if repeated := repeated_ids(ids):
        raise ValueError(f"duplicate doc ids in one batch: {repeated}; each id may appear once")


TokenIds = Callable[[], Optional[Mapping[str, int]]]  # token -> term id, built only when a query uses tokens


def query_terms(query, vocab_size: int, token_ids: TokenIds) -> tuple[np.ndarray, np.ndarray]:
    """(term ids ascending, weights) of one query, zeros dropped and duplicates summed.

    Accepts a one-row SparseBatch, a 1-row scipy matrix, or a ``{term id or token: weight}`` dict.
    """
    if isinstance(query, SparseBatch):
        if len(query) != 1:
            raise ValueError(f"a query SparseBatch must have one row, got {len(query)}; use search_batch")
        _check_query_vocab(query.vocab_size, vocab_size)
        terms, weights = query.row(0)
    elif sp.issparse(query):
        if query.shape[0] != 1:
            raise ValueError(f"a query matrix must have one row, got {query.shape[0]}; use search_batch")
        _check_query_vocab(query.shape[1], vocab_size)
        row = sp.csr_matrix(query)
        terms, weights = row.indices, row.data
    elif isinstance(query, Mapping):
        if set(map(type, query)) <= {int} or all(is_whole(t) for t in query):
            terms = np.fromiter(query.keys(), np.int64, len(query))  # the type test first: fast for plain ints
        else:
            terms = np.asarray([_term_id(t, token_ids) for t in query], np.int64)
        if not set(map(type, query.values())) <= {float}:  # the type test first: fast for plain floats
            bad = [w for w in query.values() if not is_real(w)]
            if bad:  # "1" was read as 1.0, None as "weight nan"
                raise TypeError(f"a query's weights are numbers, got {bad[0]!r}")
        weights = np.fromiter(query.values(), np.float64, len(query))
    else:
        raise TypeError(f"unsupported query type {type(query).__name__}: pass a SparseBatch row, a scipy row or a dict")
    return _clean_query(terms, weights, vocab_size)


def _check_query_vocab(query_vocab_size: int, vocab_size: int) -> None:
    """Refuse query vectors over another vocabulary than the index's (another model's): their term ids name other
    tokens, and those below the index's vocabulary size were searched, a silently wrong result."""
    if query_vocab_size != vocab_size:
        raise ValueError(f"the query vectors have {query_vocab_size:,} terms but the index's vocabulary has "
                         f"{vocab_size:,}: encode queries with the model that encoded the documents")


def _clean_query(terms, weights, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    terms = np.asarray(terms, np.int64)
    given = np.asarray(weights, np.float64)
    ok, terms, weights = _canonical_query(terms, given, vocab_size)
    if not ok:  # the checks name the offending value
        _check_weights(weights, "query")
        _check_terms(terms, vocab_size, "query")
    top = float(given.max()) if len(given) else 0.0
    if top > 0 and not QUERY_SCALE[0] <= top <= QUERY_SCALE[1]:  # 1e300 scored every hit inf; 1e-300 found nothing
        raise ValueError(f"the query's largest weight {top:g} is outside {QUERY_SCALE[0]:g}..{QUERY_SCALE[1]:g}, where "
                         "float32 scores overflow to inf or round to 0; scale the query (the ranking is the same)")
    return terms, weights


@njit(cache=True, nogil=True)
def _canonical_query(terms, weights, vocab_size):
    """Validate, drop zeros, sort by term and sum duplicates (in float64) in one compiled pass:
    as numpy calls this set-up cost a search on a small index as much as the search itself.
    Returns ``(ok, terms int32, weights float32)``, or ``(False, terms, weights)`` unchanged."""
    for i in range(len(terms)):
        w = weights[i]
        if not np.isfinite(w) or w < 0 or terms[i] < 0 or terms[i] >= vocab_size:
            return False, terms.astype(np.int32), weights.astype(np.float32)
    order = np.argsort(terms, kind="mergesort")
    out_terms = np.empty(len(terms), np.int32)
    out_weights = np.empty(len(terms), np.float64)
    m = 0
    for j in order:
        if weights[j] == 0:
            continue
        if m > 0 and out_terms[m - 1] == terms[j]:
            out_weights[m - 1] += weights[j]
        else:
            out_terms[m] = terms[j]
            out_weights[m] = weights[j]
            m += 1
    return True, out_terms[:m], out_weights[:m].astype(np.float32)


def _term_id(term, token_ids: TokenIds) -> int:
    if is_whole(term):
        return int(term)
    if not isinstance(term, str):  # 1.5 was "query token 1.5 is not in the index vocabulary"
        raise TypeError(f"a query's key is a token or a whole term id, got {term!r}")
    lookup = token_ids()
    if lookup is None:
        raise ValueError(f"query term {term!r} is a token but the index stores no vocabulary; use term ids")
    if term not in lookup:
        raise ValueError(f"query token {term!r} is not in the index vocabulary")
    return lookup[term]


def query_rows(queries, vocab_size: int, token_ids: TokenIds) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validated terms per query from a SparseBatch, a scipy matrix or an iterable of queries."""
    if isinstance(queries, SparseBatch):
        _check_query_vocab(queries.vocab_size, vocab_size)
        return [_clean_query(*queries.row(i), vocab_size) for i in range(len(queries))]
    if isinstance(queries, Mapping):  # iterating it gave its keys: "unsupported query type int"
        raise TypeError("search_batch takes many queries (a SparseBatch, a scipy matrix or a list of dicts), got one "
                        "dict: pass [query], or search(query)")
    if sp.issparse(queries):
        csr = sp.csr_matrix(queries)
        return [query_terms(csr[i], vocab_size, token_ids) for i in range(csr.shape[0])]
    if not isinstance(queries, Iterable):  # "'NoneType' object is not iterable" named nothing
        raise TypeError(f"search_batch takes many queries (a SparseBatch, a scipy matrix or a list of dicts), got "
                        f"{type(queries).__name__}")
    return [query_terms(q, vocab_size, token_ids) for q in queries]


def keep_top_terms(terms: np.ndarray, weights: np.ndarray, top_terms: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The approximate knob: the ``top_terms`` heaviest query terms (ties: lower term id); ``top_terms`` is checked
    by the search (``_check_search_args``)."""
    if top_terms is None or len(terms) <= top_terms:
        return terms, weights
    keep = np.sort(np.lexsort((terms, -weights))[:top_terms])
    return terms[keep], weights[keep]


def doc_id_list(doc_ids: Iterable) -> list[str]:
    return id_list(doc_ids, "doc_ids")
