"""Top-k kernels over one segment: an exhaustive term-at-a-time accumulator, MaxScore in
term-at-a-time form with forward rescoring, and a windowed block-max MaxScore.

Both push into one shared top-k heap (scores float32, internal ids int64, size in ``hn[0]``), so
segments are searched one after another with the threshold carried over. The heap's root is the
worst entry: lowest score, and among equal scores the highest internal id, which makes ties
resolve to ascending internal doc id. Documents are visited in ascending id, so a later document
with an equal score never displaces an earlier one.

Loop bounds come from the validated pointer arrays; doc ids decoded from postings are range
checked before they index anything, so a corrupted file gives a wrong score at worst, never a
crash (``verify()`` catches the content corruption).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Bounds are sums of float32 products taken in another order than the scores; this relative slack
# keeps rounding from pruning a document whose exact score reaches the threshold.
_SLACK = np.float32(1.0 + 1e-4)


@njit(cache=True, nogil=True, inline="always")
def _worse(s1, d1, s2, d2):
    return s1 < s2 or (s1 == s2 and d1 > d2)


@njit(cache=True, nogil=True)
def heap_push(hs, hd, hn, s, d):
    """Offer (score s, internal id d) to the bounded heap whose root is its worst entry."""
    k = len(hs)
    n = hn[0]
    if n < k:
        i = n
        hs[i] = s
        hd[i] = d
        hn[0] = n + 1
        while i > 0:
            parent = (i - 1) // 2
            if _worse(hs[i], hd[i], hs[parent], hd[parent]):
                hs[i], hs[parent] = hs[parent], hs[i]
                hd[i], hd[parent] = hd[parent], hd[i]
                i = parent
            else:
                break
        return
    if not _worse(hs[0], hd[0], s, d):
        return
    hs[0] = s
    hd[0] = d
    i = 0
    while True:
        left = 2 * i + 1
        if left >= k:
            break
        child = left
        right = left + 1
        if right < k and _worse(hs[right], hd[right], hs[left], hd[left]):
            child = right
        if _worse(hs[child], hd[child], hs[i], hd[i]):
            hs[i], hs[child] = hs[child], hs[i]
            hd[i], hd[child] = hd[child], hd[i]
            i = child
        else:
            break


@njit(cache=True, nogil=True, inline="always")
def _cut(hs, hn, bound_factor):
    """Upper bounds at or below this value cannot enter the heap (-1 while it is not full)."""
    if hn[0] < len(hs):
        return np.float32(-1.0)
    return np.float32(hs[0] * bound_factor / _SLACK)


@njit(cache=True, nogil=True, inline="always")
def _accumulate(t, w, term_blocks, block_posts, block_base, post_delta, post_imp, acc, n_docs):
    """acc[doc] += w * impact over term t's postings; returns how many doc ids were out of range."""
    bad = 0
    for b in range(term_blocks[t], term_blocks[t + 1]):
        base = block_base[b]
        for p in range(block_posts[b], block_posts[b + 1]):
            d = base + np.int64(post_delta[p])
            if d < n_docs:
                acc[d] += w * np.float32(post_imp[p])
            else:
                bad += 1
    return bad


@njit(cache=True, nogil=True)
def search_taat(terms, weights, term_blocks, block_posts, block_base, post_delta, post_imp,
                deleted, acc, base_id, hs, hd, hn):
    """Exhaustive term-at-a-time scoring into a dense accumulator, then one heap pass.

    ``acc`` is float32 [n_docs] of zeros and is left zeroed. Returns the number of postings
    whose decoded doc id was out of range (non-zero only for corrupted files).
    """
    n_docs = len(deleted)
    bad = 0
    for i in range(len(terms)):
        t = terms[i]
        w = weights[i]
        bad += _accumulate(t, w, term_blocks, block_posts, block_base, post_delta, post_imp, acc, n_docs)
    k = len(hs)
    for d in range(n_docs):
        s = acc[d]
        if s > 0:
            acc[d] = 0
            if deleted[d] == 0 and (hn[0] < k or s >= hs[0]):
                heap_push(hs, hd, hn, s, base_id + d)
    return bad


@njit(cache=True, nogil=True)
def search_maxscore(terms, weights, term_blocks, block_posts, block_base, block_last, block_max,
                    post_delta, post_imp, deleted, window, acc, base_id, hs, hd, hn, bound_factor):
    """Block-max MaxScore processed in doc-id windows (the scheme of Lucene's MaxScore scorer).

    Per window, each term's bound is its max impact over the blocks overlapping the window. Terms
    whose bounds sum to at most the threshold are non-essential: a document matching only them
    cannot enter the top-k. Essential terms are accumulated term-at-a-time into ``acc`` (float32
    [window], zeros, left zeroed); each candidate then probes the non-essential terms, largest
    first, and is dropped as soon as its score plus the remaining block-max bounds falls to the
    threshold. Windows whose total bound cannot beat the threshold are skipped. With
    ``bound_factor`` > 1 the threshold is inflated: faster, approximate.
    """
    n_docs = len(deleted)
    nq = len(terms)
    bc = np.empty(nq, np.int64)
    bend = np.empty(nq, np.int64)
    pp = np.zeros(nq, np.int64)
    wub = np.empty(nq, np.float32)
    order = np.empty(nq, np.int64)
    for i in range(nq):
        bc[i] = term_blocks[terms[i]]
        bend[i] = term_blocks[terms[i] + 1]
    for lo in range(0, n_docs, window):
        hi = min(lo + window, n_docs)
        cut = _cut(hs, hn, bound_factor)
        total = np.float32(0.0)
        for i in range(nq):
            b = bc[i]
            e = bend[i]
            while b < e and block_last[b] < lo:
                b += 1
            bc[i] = b
            m = np.float32(0.0)
            while b < e and block_base[b] < hi:
                v = np.float32(block_max[b])
                if v > m:
                    m = v
                b += 1
            wub[i] = weights[i] * m
            total += wub[i]
        if total <= cut:
            continue
        for i in range(nq):  # insertion sort of term indexes by window bound, ascending
            j = i
            while j > 0 and wub[order[j - 1]] > wub[i]:
                order[j] = order[j - 1]
                j -= 1
            order[j] = i
        n_ness = 0
        ness_ub = np.float32(0.0)
        while n_ness < nq and ness_ub + wub[order[n_ness]] <= cut:
            ness_ub += wub[order[n_ness]]
            n_ness += 1
        for r in range(n_ness, nq):
            i = order[r]
            w = weights[i]
            b = bc[i]
            e = bend[i]
            while b < e and block_base[b] < hi:
                base = block_base[b]
                for p in range(block_posts[b], block_posts[b + 1]):
                    j = base + np.int64(post_delta[p]) - lo
                    if j >= hi - lo:
                        break
                    if j >= 0:
                        acc[j] += w * np.float32(post_imp[p])
                b += 1
        for j in range(hi - lo):
            s = acc[j]
            if s == 0:
                continue
            acc[j] = 0
            d = lo + j
            if deleted[d] != 0:
                continue
            rem = ness_ub
            if s + rem <= cut:
                continue
            alive = True
            for r in range(n_ness - 1, -1, -1):
                i = order[r]
                rem -= wub[i]
                b = bc[i]
                e = bend[i]
                while b < e and block_last[b] < d:
                    b += 1
                bc[i] = b
                if b < e and block_base[b] <= d:
                    if s + rem + weights[i] * np.float32(block_max[b]) <= cut:
                        alive = False
                        break
                    base = block_base[b]
                    pe = block_posts[b + 1]
                    p = max(pp[i], block_posts[b])
                    while p < pe and base + np.int64(post_delta[p]) < d:
                        p += 1
                    pp[i] = p
                    if p < pe and base + np.int64(post_delta[p]) == d:
                        s += weights[i] * np.float32(post_imp[p])
                if s + rem <= cut:
                    alive = False
                    break
            if alive:
                heap_push(hs, hd, hn, s, base_id + d)
                cut = _cut(hs, hn, bound_factor)
    return 0


@njit(cache=True, nogil=True)
def _kth_largest(acc, deleted, k, floor):
    """The k-th largest live accumulator value, or ``floor`` if that is larger or fewer are above it."""
    top = np.empty(k, np.float32)  # ascending
    n = 0
    for d in range(len(deleted)):
        s = acc[d]
        if s <= floor or deleted[d] != 0:
            continue
        if n < k:
            j = n
            n += 1
            while j > 0 and top[j - 1] > s:
                top[j] = top[j - 1]
                j -= 1
            top[j] = s
        elif s > top[0]:
            j = 0
            while j + 1 < k and top[j + 1] < s:
                top[j] = top[j + 1]
                j += 1
            top[j] = s
    return top[0] if n == k else floor


@njit(cache=True, nogil=True)
def search_taat_rescore(terms, weights, term_bound, term_blocks, block_posts, block_base, post_delta, post_imp,
                        doc_ptr, doc_terms, doc_imp, deleted, acc, qdense, base_id, hs, hd, hn, stop_ratio,
                        bound_factor):
    """MaxScore in term-at-a-time form: accumulate the heavy terms, rescore few candidates forward.

    Terms are taken in decreasing bound order into the dense accumulator. Once the bounds of
    the terms still to do sum below a proven threshold (the k-th best partial score, a lower
    bound of the final k-th score), no untouched document can make the top-k; each touched one
    whose partial score plus that remainder can reach the threshold is completed from the
    forward store, with the remaining terms' weights in the dense query ``qdense`` (float32
    [vocab], zeros, left zeroed). The remaining terms' postings are never read. ``stop_ratio``
    (< 1) keeps accumulating until the remainder is that fraction of the threshold, which
    shrinks the candidate set; ``bound_factor`` > 1 inflates the threshold (approximate).
    """
    n_docs = len(deleted)
    nq = len(terms)
    k = len(hs)
    vocab = len(qdense)
    order = np.argsort(-term_bound)
    remaining = np.float32(0.0)
    for i in range(nq):
        remaining += term_bound[i]
    half = remaining * np.float32(0.5)
    theta = np.float32(-1.0)
    if hn[0] == k:
        theta = hs[0]
    checked = False
    bad = 0
    j = 0
    while j < nq:
        if checked and remaining * _SLACK < theta * stop_ratio * bound_factor:
            theta = _kth_largest(acc, deleted, k, theta)
            break
        i = order[j]
        t = terms[i]
        w = weights[i]
        bad += _accumulate(t, w, term_blocks, block_posts, block_base, post_delta, post_imp, acc, n_docs)
        remaining -= term_bound[i]
        j += 1
        if not checked and remaining <= half:
            theta = _kth_largest(acc, deleted, k, theta)
            checked = True
    if j == nq:
        remaining = np.float32(0.0)
    for r in range(j, nq):
        qdense[terms[order[r]]] = weights[order[r]]
    limit = theta
    for d in range(n_docs):
        s = acc[d]
        if s == 0:
            continue
        acc[d] = 0
        if deleted[d] != 0 or (s + remaining) * _SLACK < limit:
            continue
        if j < nq:
            for p in range(doc_ptr[d], doc_ptr[d + 1]):
                tt = np.int64(doc_terms[p])
                if tt < vocab:
                    s += qdense[tt] * np.float32(doc_imp[p])
        if hn[0] < k or s >= hs[0]:
            heap_push(hs, hd, hn, s, base_id + d)
            if hn[0] == k:
                limit = max(theta, hs[0] * bound_factor)
    for r in range(j, nq):
        qdense[terms[order[r]]] = 0
    return bad
