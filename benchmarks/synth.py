"""Seeded synthetic collection calibrated on real splade-tiny document vectors.

Per document: the number of terms is drawn from the real per-document counts, the terms are
drawn without replacement with probability proportional to their real document frequency, and
each term's weight is one of that term's real weights. Terms are independent across documents,
which is the hard case for block-max bounds and for clustering methods (see the issue).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from lsr.sparse import SparseBatch


@njit(cache=True)
def _generate(seed, lengths, cdf, term_ptr, term_weights, indptr, indices, values):
    np.random.seed(seed)
    vocab_size = len(cdf)
    mark = np.full(vocab_size, -1, np.int64)
    for d in range(len(lengths)):
        p = indptr[d]
        n = lengths[d]
        while p < indptr[d] + n:
            t = np.searchsorted(cdf, np.random.random() * cdf[-1], side="right")
            if t >= vocab_size or mark[t] == d:
                continue
            mark[t] = d
            indices[p] = t
            lo = term_ptr[t]
            values[p] = term_weights[lo + np.random.randint(0, term_ptr[t + 1] - lo)]
            p += 1
        order = np.argsort(indices[indptr[d] : p])  # CSR convention: ascending term ids within a row
        indices[indptr[d] : p] = indices[indptr[d] : p][order]
        values[indptr[d] : p] = values[indptr[d] : p][order]


def synthetic_docs(real: SparseBatch, n_docs: int, seed: int = 0) -> SparseBatch:
    """``n_docs`` vectors whose term counts, dfs and per-term weights follow ``real``."""
    rng = np.random.default_rng(seed)
    real_lengths = np.diff(real.indptr)
    lengths = rng.choice(real_lengths, n_docs).astype(np.int64)
    csc = real.to_scipy().tocsc()
    df = np.diff(csc.indptr).astype(np.float64)
    lengths = np.minimum(lengths, int((df > 0).sum()))
    indptr = np.zeros(n_docs + 1, np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.zeros(indptr[-1], np.int32)
    values = np.zeros(indptr[-1], np.float32)
    _generate(seed, lengths, np.cumsum(df), csc.indptr.astype(np.int64), csc.data.astype(np.float32),
              indptr, indices, values)
    return SparseBatch(indptr, indices, values, real.vocab_size, real.vocab)
