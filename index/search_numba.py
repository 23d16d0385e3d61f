"""Top-k kernels over one segment: exhaustive term-at-a-time scoring in cache-sized windows with
integer accumulation (the default), MaxScore in term-at-a-time form with forward rescoring, and a
windowed block-max MaxScore.

All push into one shared top-k heap (scores float32, internal ids int64, size in ``hn[0]``), so
segments are searched one after another with the threshold carried over. The heap's root is the
worst entry: lowest score, and among equal scores the highest internal id, which makes ties
resolve to ascending internal doc id. Documents are visited in ascending id, so a later document
with an equal score never displaces an earlier one.

Loop bounds come from the validated pointer arrays; doc ids decoded from postings are range
checked, or can only reach an accumulator's padding, before they index anything, so a corrupted
file gives a wrong score at worst, never a crash (``verify()`` catches the content corruption).
"""

from __future__ import annotations

import numpy as np

from .jit import njit

# Bounds are sums of float32 products taken in another order than the scores; this relative slack
# keeps rounding from pruning a document whose exact score reaches the threshold.
_SLACK = np.float32(1.0 + 1e-4)
_CANDIDATES = 1024  # term-at-a-time rescoring buffer; when full it is rescored early
# Term-at-a-time leaves out the terms whose bounds sum to at most this share of the cut: a larger
# share skips more postings but makes more candidates to rescore (0.15-0.2 balance at 1M synthetic
# docs since the window scan became cheap).
_NON_ESSENTIAL = 0.2
_SCAN_CHUNK = 128  # accumulator slots whose maximum is tested before any of them is
ACC_PAD = 65536  # slots past the window in term-at-a-time accumulators (see _scatter_window)


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


@njit(cache=True, nogil=True, inline="always")
def _block_ranges(terms, term_blocks):
    """Per query term, its first block and one past its last: the cursors the kernels advance."""
    first = np.empty(len(terms), np.int64)
    end = np.empty(len(terms), np.int64)
    for i in range(len(terms)):
        first[i] = term_blocks[terms[i]]
        end[i] = term_blocks[terms[i] + 1]
    return first, end


@njit(cache=True, nogil=True, inline="always")
def _forward_score(d, doc_ptr, doc_terms, doc_imp, qdense):
    """Exact score of local doc ``d`` from the forward store against the dense query."""
    vocab = np.uint64(len(qdense))
    s = np.float32(0.0)
    for p in range(doc_ptr[d], doc_ptr[d + 1]):
        t = np.uint64(doc_terms[p])
        if t < vocab:
            s += qdense[t] * np.float32(doc_imp[p])
    return s


@njit(cache=True, nogil=True)
def _integer_query(weights, term_max):
    """Query weights as uint32 for integer impacts, so term-at-a-time accumulation is integer.

    Returns ``(qweights, q_scale, q_err, ok)``: ``qweights = max(1, round(weights * q_scale))``
    with ``q_scale`` as large as 32 bits allow, so a document's integer score is within ``q_err``
    of ``q_scale`` × its exact score (each term is off by at most 1 × its impact) and cannot
    overflow (one posting per term and document). ``ok`` is False when float accumulation must
    be used: no term occurs, or a query too long for 32-bit headroom.
    """
    err = 0.0
    total = 0.0
    for i in range(len(weights)):
        err += np.float64(term_max[i])
        total += np.float64(weights[i]) * np.float64(term_max[i])
    qweights = np.ones(len(weights), np.uint32)
    headroom = 2.0**32 - 2.0 - err
    if total <= 0.0 or headroom < 2.0**24:
        return qweights, 1.0, 0.0, False
    q_scale = headroom / total
    for i in range(len(weights)):
        qweights[i] = np.uint32(min(max(1.0, np.rint(np.float64(weights[i]) * q_scale)), 2.0**32 - 1.0))
    return qweights, q_scale, err + 1.0, True


@njit(cache=True, nogil=True)
def search_taat(terms, weights, scale, integer_impacts, term_df, term_max, term_blocks, block_posts, block_base,
                block_last, post_delta, post_imp, doc_ptr, doc_terms, doc_imp, deleted, window, acc_int, acc_float,
                qdense, base_id, hs, hd, hn, bound_factor):
    """One segment's term-at-a-time search with its per-query set-up compiled too.

    Scales the query to stored impact units (float32, like the other kernels), derives integer
    weights for integer impacts and runs ``_taat`` with the matching scratch accumulator
    (``acc_int`` uint32 or ``acc_float`` float32, ``window + ACC_PAD`` slots, zeros). On small segments the
    Python version of this set-up cost as much as the search itself.
    """
    present = False
    for i in range(len(terms)):
        if term_df[terms[i]] > 0:
            present = True
    if not present:
        return
    w = np.empty(len(terms), np.float32)
    tmax = np.empty(len(terms), term_max.dtype)
    for i in range(len(terms)):
        w[i] = weights[i] * scale
        tmax[i] = term_max[terms[i]]
    qweights, q_scale, q_err, ok = _integer_query(w, tmax)
    if integer_impacts and ok:
        _taat(terms, qweights, w, q_scale, q_err, term_blocks, block_posts, block_base, block_last, post_delta,
              post_imp, tmax, doc_ptr, doc_terms, doc_imp, deleted, window, acc_int, qdense, base_id, hs, hd, hn,
              np.float64(bound_factor))
    else:
        _taat(terms, w, w, 1.0, 0.0, term_blocks, block_posts, block_base, block_last, post_delta, post_imp,
              tmax, doc_ptr, doc_terms, doc_imp, deleted, window, acc_float, qdense, base_id, hs, hd, hn,
              np.float64(bound_factor))


@njit(cache=True, nogil=True, inline="always")
def _chunk_max(acc, j0):
    """Largest of the ``_SCAN_CHUNK`` slots from ``j0``: a vectorised reduction (a constant trip
    count vectorises, a ragged one ran 3x slower), so the scan passes over a chunk below the floor
    at a fraction of the cost of testing each slot. The last chunk of a short window reads into
    slots no valid posting reaches: zeros, or padding a corrupted one hit, never a candidate."""
    m = acc[j0]
    for j in range(j0, j0 + np.uint64(_SCAN_CHUNK)):
        m = max(m, acc[j])
    return m


@njit(cache=True, nogil=True, inline="always")
def _scatter_window(w, b, e, p, lo, hi, block_posts, block_base, block_last, post_delta, post_imp, acc):
    """acc[doc - lo] += w * impact over one term's postings with lo <= doc < hi, from block ``b``,
    posting ``p``; returns where the next window resumes.

    Blocks inside the window run with unsigned indexes and no tests at all: such a block starts at
    ``rel`` < window and a uint16 delta adds at most 65535, so ``acc`` holds ``window + 65536``
    slots (``ACC_PAD``) and a corrupted delta can only hit a wrong slot, or the padding, which is
    never read. The few blocks crossing a window edge test every slot."""
    span = np.uint64(hi - lo)
    while b < e:
        rel = np.uint64(block_base[b]) - np.uint64(lo)
        pe = block_posts[b + 1]
        if block_last[b] >= hi or block_base[b] < lo:  # it crosses a window edge: tested slots
            while p < pe:
                j = rel + np.uint64(post_delta[p])
                if j >= span:
                    return b, p
                acc[j] += w * post_imp[p]
                p += 1
        else:
            for q in range(np.uint64(p), np.uint64(pe)):
                acc[rel + np.uint64(post_delta[q])] += w * post_imp[q]
        b += 1
        p = pe
    return b, p


@njit(cache=True, nogil=True, inline="always")
def _skip_window(b, e, p, lo, hi, block_posts, block_base, block_last, post_delta):
    """Move one term's cursor past the docs below ``hi`` without scoring them."""
    span = np.uint64(hi - lo)
    while b < e:
        pe = block_posts[b + 1]
        if block_last[b] >= hi:
            rel = np.uint64(block_base[b]) - np.uint64(lo)
            while p < pe and rel + np.uint64(post_delta[p]) < span:
                p += 1
            return b, p
        b += 1
        p = pe
    return b, p


@njit(cache=True, nogil=True)
def _taat(terms, qweights, weights, q_scale, q_err, term_blocks, block_posts, block_base, block_last,
          post_delta, post_imp, term_max, doc_ptr, doc_terms, doc_imp, deleted, window, acc, qdense, base_id,
          hs, hd, hn, factor):
    """Term-at-a-time scoring in cache-sized doc windows with MaxScore, exact top-k by rescoring.

    Each window of ``window`` docs is scored into ``acc`` (``window + ACC_PAD`` slots, zeros,
    left zeroed) with query weights ``qweights`` in the accumulator's type. For integer impacts
    both are integers (``round(weight * q_scale)``, at least 1): the inner loop is an integer
    multiply-add into a cache-resident array, several times faster than float accumulation over
    all documents. An accumulator value is within ``q_err`` of ``q_scale`` × the exact score, so
    the k-th best value seen bounds the final k-th score from below (the cut).

    MaxScore: once the cut is known, the terms with the smallest bounds, together worth at most
    ``_NON_ESSENTIAL`` of it, are not accumulated. A document whose partial value plus their
    bound reaches the cut is a candidate; its missing terms are looked up in their posting lists,
    skipping whole blocks, and if its full value still reaches the cut it is rescored exactly from
    the forward store (float32 ``weights`` via ``qdense``, vocab-sized, zeros, left zeroed) and
    offered to the heap. Float impacts pass float ``qweights``/``acc``, ``q_scale`` 1, ``q_err`` 0.

    ``factor`` (``bound_factor``) > 1 is the approximate mode: the low-bound terms are taken to add at most
    1/factor of their bound, and terms worth up to factor x the usual share of the cut are left out. Fewer
    postings are scattered and fewer candidates completed; a document that owes much of its score to those
    terms can be missed. Every hit's score is still exact. (On 200,000 synthetic documents: factor 3 took
    0.33 ms at recall@10 0.986, 5 took 0.29 ms at 0.936, exact 0.45 ms; block-max MaxScore's inflated
    threshold had taken 3.9 ms for 0.55 at 1.2, since SPLADE's top scores lie within a few percent.)
    """
    n_docs = len(deleted)
    nq = len(terms)
    k = len(hs)
    bound = np.empty(nq, np.float64)  # per term, its largest contribution in accumulator units
    for i in range(nq):
        qdense[terms[i]] = weights[i]
        bound[i] = np.float64(qweights[i]) * np.float64(term_max[i])
    order = np.argsort(bound)
    bc, be = _block_ranges(terms, term_blocks)
    pc = np.empty(nq, np.int64)
    for i in range(nq):
        pc[i] = block_posts[bc[i]]
    vs = np.zeros(k, acc.dtype)  # the k best full accumulator values of live docs (a heap; ids unused)
    vd = np.zeros(k, np.int64)
    vn = np.zeros(1, np.int64)
    cut = np.zeros(1, np.float64)  # the candidate cut (see _candidate_cut), from earlier segments' heap at first
    cut[0] = _candidate_cut(hs, hn, vs, vn, q_scale, q_err)
    floor = np.zeros(1, acc.dtype)  # cut less the skipped terms' bound, in the accumulator's type
    cand = np.empty(_CANDIDATES, np.uint64)  # window slots that passed the floor, resolved in batches
    value = np.empty(_CANDIDATES, acc.dtype)  # their accumulator values, completed by _resolve
    share = min(_NON_ESSENTIAL * factor, 0.9)
    postings = np.empty(nq, np.float64)  # per term, its postings in the segment: the walks' cost, spread over the docs
    for i in range(nq):
        postings[i] = np.float64(block_posts[be[i]] - block_posts[bc[i]]) / max(1, n_docs)
    for lo in range(0, n_docs, window):
        hi = min(lo + window, n_docs)
        skipped = 0.0
        walk = 0.0  # about how many postings completing this window's candidates walks
        n_skip = 0
        while n_skip < nq - 1 and skipped + bound[order[n_skip]] <= cut[0] * share:
            skipped += bound[order[n_skip]]
            walk += postings[order[n_skip]] * (hi - lo)
            n_skip += 1
        for r in range(n_skip, nq):
            i = order[r]
            bc[i], pc[i] = _scatter_window(qweights[i], bc[i], be[i], pc[i], lo, hi, block_posts, block_base,
                                           block_last, post_delta, post_imp, acc)
        floor[0] = max(0.0, cut[0] - skipped / factor)
        c = floor[0]  # a local, so the scan stays a tight compare loop
        nc = 0
        span = np.uint64(hi - lo)
        for j0 in range(np.uint64(0), span, np.uint64(_SCAN_CHUNK)):
            m = _chunk_max(acc, j0)
            if m == 0:  # untouched: nothing to test, nothing to clear
                continue
            if m >= c:
                for j in range(j0, min(j0 + np.uint64(_SCAN_CHUNK), span)):
                    v = acc[j]
                    if v >= c and v != 0 and deleted[lo + np.int64(j)] == 0:
                        if n_skip == 0:  # v is the full value
                            heap_push(vs, vd, vn, v, 0)
                            cut[0] = _candidate_cut(hs, hn, vs, vn, q_scale, q_err)
                        if nc == len(cand):
                            _resolve(cand, nc, value, lo, order, n_skip, qweights, bc, be, pc, block_posts,
                                     block_base, block_last, post_delta, post_imp, cut, q_scale, q_err, doc_ptr,
                                     doc_terms, doc_imp, qdense, base_id, hs, hd, hn, vs, vd, vn, skipped,
                                     walk)
                            nc = 0
                        floor[0] = max(0.0, cut[0] - skipped / factor)
                        c = floor[0]
                        cand[nc] = j
                        value[nc] = v
                        nc += 1
            for j in range(j0, j0 + np.uint64(_SCAN_CHUNK)):  # cleared while in L1, not in a second pass
                acc[j] = 0
        _resolve(cand, nc, value, lo, order, n_skip, qweights, bc, be, pc, block_posts, block_base, block_last,
                 post_delta, post_imp, cut, q_scale, q_err, doc_ptr, doc_terms, doc_imp, qdense, base_id, hs, hd, hn,
                 vs, vd, vn, skipped, walk)
        for r in range(n_skip):
            i = order[r]
            bc[i], pc[i] = _skip_window(bc[i], be[i], pc[i], lo, hi, block_posts, block_base, block_last, post_delta)
    for i in range(nq):
        qdense[terms[i]] = 0
    return 0


@njit(cache=True, nogil=True)
def _resolve(cand, nc, value, lo, order, n_skip, qweights, bc, be, pc, block_posts, block_base, block_last,
             post_delta, post_imp, cut, q_scale, q_err, doc_ptr, doc_terms, doc_imp, qdense, base_id, hs, hd, hn,
             vs, vd, vn, skipped_bound, walk):
    """Complete and rescore the buffered candidates (ascending window slots, accumulator values
    in ``value``) of one window.

    The skipped terms' contributions come from their posting lists: each list's cursor moves
    forward through the candidates, skipping the blocks that end before the next one. Full
    values raise the cut (when terms were skipped; otherwise the scan did); a full value still
    at the cut is rescored exactly and offered to the heap. Deferring this to the end of the
    window (or a full buffer) means the cut has risen on many values first.

    Where the walks would read more postings (``walk``, about) than twice the terms the candidates
    hold, the candidates are scored from the forward store at once instead (``_rescore_candidates``):
    with many skipped terms (the approximate mode) the walks cost about what accumulating them would.
    """
    if n_skip > 0 and 2 * _terms_held(cand, nc, lo, doc_ptr) < walk:
        _rescore_candidates(cand, nc, value, lo, skipped_bound, cut, q_scale, q_err, doc_ptr, doc_terms, doc_imp,
                            qdense, base_id, hs, hd, hn, vs, vn)
        return
    for r in range(n_skip):
        i = order[r]
        w = qweights[i]
        b = bc[i]
        e = be[i]
        p = pc[i]
        for ci in range(nc):
            d = lo + np.int64(cand[ci])
            while b < e and block_last[b] < d:
                b += 1
                p = block_posts[b]
            if b == e:
                break
            base = np.int64(block_base[b])
            pe = block_posts[b + 1]
            while p < pe and base + np.int64(post_delta[p]) < d:
                p += 1
            if p < pe and base + np.int64(post_delta[p]) == d:
                value[ci] += w * post_imp[p]
        bc[i] = b
        pc[i] = p
    for ci in range(nc):
        j = cand[ci]
        v = value[ci]
        if n_skip > 0 and (vn[0] < len(vs) or v > vs[0]):
            heap_push(vs, vd, vn, v, 0)
            cut[0] = _candidate_cut(hs, hn, vs, vn, q_scale, q_err)
        if np.float64(v) < cut[0]:
            continue
        d = lo + np.int64(j)
        s = _forward_score(d, doc_ptr, doc_terms, doc_imp, qdense)
        if s > 0 and (hn[0] < len(hs) or s >= hs[0]):
            heap_push(hs, hd, hn, s, base_id + d)
            cut[0] = _candidate_cut(hs, hn, vs, vn, q_scale, q_err)


@njit(cache=True, nogil=True, inline="always")
def _terms_held(cand, nc, lo, doc_ptr):
    """How many terms the candidates' documents hold: what scoring them from the forward store reads."""
    total = 0
    for ci in range(nc):
        d = lo + np.int64(cand[ci])
        total += doc_ptr[d + 1] - doc_ptr[d]
    return total


@njit(cache=True, nogil=True)
def _rescore_candidates(cand, nc, value, lo, skipped_bound, cut, q_scale, q_err, doc_ptr, doc_terms, doc_imp, qdense,
                        base_id, hs, hd, hn, vs, vn):
    """Each candidate's exact score from the forward store, offered to the heap; one whose partial value plus the
    skipped terms' whole bound is below the cut is passed over, as completing it would have been (the same hits as
    ``_resolve``'s walks). On 88k SPLADE sentences at ``bound_factor`` 5: 0.12 ms a query on average against 0.14;
    on 300k synthetic documents, exact, 0.76 against 0.84 ms."""
    for ci in range(nc):
        if np.float64(value[ci]) + skipped_bound < cut[0]:
            continue
        d = lo + np.int64(cand[ci])
        s = _forward_score(d, doc_ptr, doc_terms, doc_imp, qdense)
        if s > 0 and (hn[0] < len(hs) or s >= hs[0]):
            heap_push(hs, hd, hn, s, base_id + d)
            cut[0] = _candidate_cut(hs, hn, vs, vn, q_scale, q_err)


@njit(cache=True, nogil=True, inline="always")
def _candidate_cut(hs, hn, vs, vn, q_scale, q_err):
    """A full accumulator value below this cannot reach the top-k; never negative.

    Two lower bounds of the final k-th exact score: the heap's k-th exact score, and the k-th
    best live accumulator value less its error (partial values are lower still, so this holds
    for them too). A document needs an exact score at or above the larger one, so an
    accumulator value at or above it less the error (with float slack).
    """
    theta = np.float64(0.0)
    if hn[0] == len(hs):
        theta = np.float64(hs[0]) * q_scale
    if vn[0] == len(vs):
        theta = max(theta, (np.float64(vs[0]) - q_err) / _SLACK)
    return max(np.float64(0.0), theta / _SLACK - q_err)


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
    bc, bend = _block_ranges(terms, term_blocks)
    pp = np.zeros(nq, np.int64)
    wub = np.empty(nq, np.float32)
    order = np.empty(nq, np.int64)
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
    # remaining[j]: the bounds of the terms from the j-th on, summed smallest first. Subtracting each done term's bound
    # from the total drifted below zero, which left every term a segment lacks (bound 0) "to do" and then dropped the
    # documents scoring exactly theta.
    remaining_from = np.zeros(nq + 1, np.float32)
    for r in range(nq - 1, -1, -1):
        remaining_from[r] = remaining_from[r + 1] + term_bound[order[r]]
    remaining = remaining_from[0]
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
        j += 1
        remaining = remaining_from[j]
        if not checked and remaining <= half:
            theta = _kth_largest(acc, deleted, k, theta)
            checked = True
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
