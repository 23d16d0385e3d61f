"""Exactness of InvertedIndex search against brute force, for both kernels, on many shapes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lsr.index.index as index_module
from index_helpers import as_batch, assert_exact_topk, brute_scores, live_ids, random_csr
from lsr.index import Hit, InvertedIndex
from lsr.sparse import SparseBatch

ALGORITHMS = ["auto", "taat", "rescore", "maxscore"]
_SETTINGS = settings(max_examples=30, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def collections(draw):
    n_docs = draw(st.integers(1, 80))
    vocab = draw(st.integers(1, 30))
    density = draw(st.sampled_from([0.05, 0.2, 0.6, 1.0]))
    levels = draw(st.sampled_from([None, 2, 5]))
    seed = draw(st.integers(0, 2**31 - 1))
    return n_docs, vocab, density, levels, seed


@st.composite
def queries(draw, vocab: int):
    terms = draw(st.lists(st.integers(0, vocab - 1), max_size=8, unique=True))
    weights = draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.7]), min_size=len(terms), max_size=len(terms)))
    return dict(zip(terms, weights))


@pytest.fixture
def small_windows(monkeypatch):
    """Windows of 8 docs so that tiny collections cross many MaxScore and term-at-a-time windows."""
    monkeypatch.setattr(index_module, "WINDOW", 8)
    monkeypatch.setattr(index_module, "TAAT_WINDOW", 8)


@_SETTINGS
@given(shape=collections(), data=st.data(), quantization=st.sampled_from(["uint8", "uint16", "float32"]))
def test_search_matches_brute_force(tmp_path_factory, small_windows, shape, data, quantization):
    n_docs, vocab, density, levels, seed = shape
    rng = np.random.default_rng(seed)
    matrix = random_csr(rng, n_docs, vocab, density, levels)
    idx = InvertedIndex.build(tmp_path_factory.mktemp("idx"), matrix, [f"d{i}" for i in range(n_docs)],
                              quantization=quantization)
    for _ in range(3):
        query = data.draw(queries(vocab))
        k = data.draw(st.integers(1, 12))
        for algorithm in ALGORITHMS:
            assert_exact_topk(idx, query, k, algorithm=algorithm)


@_SETTINGS
@given(shape=collections(), data=st.data())
def test_search_after_add_delete_merge(tmp_path_factory, small_windows, shape, data):
    n_docs, vocab, density, levels, seed = shape
    rng = np.random.default_rng(seed)
    idx = InvertedIndex.build(tmp_path_factory.mktemp("idx"), random_csr(rng, n_docs, vocab, density, levels),
                              [f"d{i}" for i in range(n_docs)])
    n_new = data.draw(st.integers(1, 40))
    new_ids = [f"d{i}" for i in rng.choice(2 * n_docs + n_new, n_new, replace=False)]  # some upserts
    idx.add(random_csr(rng, n_new, vocab, density, levels) * 2.0, new_ids)
    ids = live_ids(idx)
    doomed = data.draw(st.lists(st.sampled_from(ids), max_size=len(ids), unique=True))
    if doomed:
        idx.delete(doomed)
    assert len(idx) == len(ids) - len(doomed)
    for stage in ("before merge", "after merge"):
        for _ in range(2):
            query = data.draw(queries(vocab))
            k = data.draw(st.integers(1, 12))
            for algorithm in ALGORITHMS:
                assert_exact_topk(idx, query, k, algorithm=algorithm)
                assert not {h.doc_id for h in idx.search(query, k=k, algorithm=algorithm)} & set(doomed), stage
        idx.merge()
    segments = idx._state.segments  # one per quantization scale: the base, or base·2^k where a document needs it
    assert len(segments) == len({seg.scale for seg in segments}) and all(s.live == s.n_docs for s in segments)
    weighted = [seg for seg in segments if seg.term_df.any()]  # a write without a weight sets no base scale
    assert all(float(np.log2(seg.scale / idx.base_scale)).is_integer() for seg in weighted)


def test_multi_window_multi_segment_large(tmp_path):
    """Real window size: 60k docs over three segments with tombstones, many queries, both kernels."""
    rng = np.random.default_rng(7)
    vocab = 2000
    idx = InvertedIndex.build(tmp_path / "idx", random_csr(rng, 30000, vocab, 0.01), [f"a{i}" for i in range(30000)])
    idx.add(random_csr(rng, 20000, vocab, 0.01), [f"b{i}" for i in range(20000)])
    idx.add(random_csr(rng, 10000, vocab, 0.01) * 3, [f"a{i}" for i in range(10000)])
    idx.delete([f"b{i}" for i in range(0, 20000, 3)])
    for qi in range(15):
        terms = rng.choice(vocab, int(rng.integers(1, 60)), replace=False)
        query = {int(t): float(w) for t, w in zip(terms, rng.exponential(1.0, len(terms)))}
        for algorithm in ("taat", "rescore", "maxscore"):
            assert_exact_topk(idx, query, 10, algorithm=algorithm)


def test_a_query_term_no_document_holds_drops_no_hit_from_any_algorithm(tmp_path):
    """rescore subtracted each term's bound from the sum of all of them: rounding left that remainder below zero, a
    term the segment lacks (bound 0) kept the loop from declaring it empty, and the documents scoring exactly the
    k-th partial score were dropped (1 hit of 3 here)."""
    m = sp.csr_matrix(np.array([[255, 255, 255] + [0] * 7] + [[0, 0, 1] + [0] * 7] * 3, np.float32))
    idx = InvertedIndex.build(tmp_path / "idx", m, ["a", "b", "c", "d"])
    query = {0: 0.94, 1: 0.82, 2: 0.01, 9: 1.0}  # term 9 is in no document
    for algorithm in ALGORITHMS:
        assert [h.doc_id for h in idx.search(query, k=3, algorithm=algorithm)] == ["a", "b", "c"], algorithm
    rng = np.random.default_rng(3)
    matrix = random_csr(rng, 3000, 200, 0.02)
    matrix.resize((3000, 300))  # a vocabulary of 300, of which no document holds terms 200..299
    idx = InvertedIndex.build(tmp_path / "random", matrix, [f"d{i}" for i in range(3000)])
    for _ in range(20):
        terms = rng.choice(300, int(rng.integers(2, 40)), replace=False)  # terms 200..299: in no document
        query = {int(t): float(w) for t, w in zip(terms, rng.exponential(1.0, len(terms)))}
        for algorithm in ("taat", "rescore", "maxscore"):
            assert_exact_topk(idx, query, 10, algorithm=algorithm)


def test_ties_break_by_ascending_internal_id(tmp_path):
    row = sp.csr_matrix(np.array([[0.0, 1.0, 2.0]], np.float32))
    idx = InvertedIndex.build(tmp_path / "idx", sp.vstack([row] * 7).tocsr(), [f"x{i}" for i in range(7)])
    idx.add(sp.vstack([row] * 3).tocsr(), ["y0", "y1", "y2"])
    for algorithm in ALGORITHMS:
        hits = idx.search({1: 1.0, 2: 1.0}, k=5, algorithm=algorithm)
        assert [h.doc_id for h in hits] == ["x0", "x1", "x2", "x3", "x4"]


@pytest.mark.parametrize("n_docs, query", [
    (3000, {0: 1.0, 2: 0.3}),  # one window, nothing skipped
    (40000, {0: 0.05, 1: 1.0, 2: 1.0}),  # the second window skips term 0 and looks it up per candidate
])
def test_mass_ties_overflow_the_candidate_buffer(tmp_path, n_docs, query):
    """Equal documents: every one reaches the cut, far more than the candidate buffer holds."""
    row = sp.csr_matrix(np.array([[0.5, 1.0, 2.0]], np.float32))
    ids = [f"d{i:05d}" for i in range(n_docs)]
    idx = InvertedIndex.build(tmp_path / "idx", sp.vstack([row] * n_docs).tocsr(), ids)
    idx.delete(["d00001", "d00003"])
    for algorithm in ALGORITHMS:
        hits = idx.search(query, k=6, algorithm=algorithm)
        assert [h.doc_id for h in hits] == ["d00000", "d00002", "d00004", "d00005", "d00006", "d00007"], algorithm
        assert_exact_topk(idx, query, 6, algorithm=algorithm)


def test_edge_shapes(tmp_path):
    single = InvertedIndex.build(tmp_path / "one", sp.csr_matrix(np.array([[2.0]], np.float32)), ["only"])
    assert single.search({0: 1.0}, k=3) == [Hit("only", pytest.approx(2.0, rel=1e-2))]
    assert single.search({}, k=3) == []
    empty_doc = InvertedIndex.build(tmp_path / "zero", SparseBatch.empty(2, 5), ["a", "b"])
    assert len(empty_doc) == 2 and empty_doc.search({1: 1.0}, k=2) == []
    assert empty_doc.doc_freqs().tolist() == [0] * 5


def test_query_forms_agree(tmp_path):
    rng = np.random.default_rng(3)
    matrix = random_csr(rng, 300, 50, 0.2)
    idx = InvertedIndex.build(tmp_path / "idx", as_batch(matrix), [str(i) for i in range(300)])
    qmat = random_csr(rng, 4, 50, 0.3)
    ids, scores = idx.search_batch(as_batch(qmat), k=5, threads=2)
    for i in range(4):
        row = qmat[i]
        as_dict = {int(t): float(w) for t, w in zip(row.indices, row.data)}
        expected = idx.search(as_dict, k=5)
        for form in (row, as_batch(row)):
            assert idx.search(form, k=5) == expected
        assert [h.doc_id for h in expected] == [d for d in ids[i] if d is not None]
        np.testing.assert_allclose(scores[i][: len(expected)], [h.score for h in expected], rtol=1e-6)
    assert np.isneginf(idx.search_batch([{}], k=3)[1]).all()


def test_approximate_knobs_are_off_by_default_and_prune_when_set(tmp_path):
    rng = np.random.default_rng(5)
    idx = InvertedIndex.build(tmp_path / "idx", random_csr(rng, 40000, 500, 0.03), [str(i) for i in range(40000)])
    query = {int(t): float(w) for t, w in zip(rng.choice(500, 40, replace=False), rng.exponential(1, 40))}
    exact = idx.search(query, k=10)
    assert exact == idx.search(query, k=10, top_terms=None, bound_factor=1.0)
    approx = idx.search(query, k=10, top_terms=5, bound_factor=2.0)
    assert 0 < len(approx) <= 10
    scores = brute_scores(idx, query)
    assert all(h.score <= scores[h.doc_id] + 1e-3 for h in approx)  # partial scores never exceed the truth


def test_bound_factor_trades_recall_for_skipped_terms_and_keeps_every_hit_score_exact(tmp_path, monkeypatch):
    """``bound_factor`` used to switch to block-max MaxScore with an inflated threshold: on SPLADE vectors, whose top
    scores lie within a few percent, 1.2 kept recall@10 0.55 at 9x the exact time. The term-at-a-time search now
    assumes its low-bound terms add at most 1/bound_factor of their bound: recall falls slowly as it grows, and what
    is returned is still exactly scored."""
    monkeypatch.setattr(index_module, "TAAT_WINDOW", 512)  # many windows: terms are left out from the second on
    rng = np.random.default_rng(7)
    n_docs, vocab, per_doc = 20000, 3000, 40
    terms = rng.zipf(1.2, n_docs * per_doc) % vocab  # term frequencies as skewed as a corpus's
    matrix = sp.csr_matrix((rng.exponential(1.0, len(terms)).astype(np.float32),
                            (np.repeat(np.arange(n_docs), per_doc), terms)), shape=(n_docs, vocab))
    matrix.sum_duplicates()
    idx = InvertedIndex.build(tmp_path / "idx", as_batch(matrix), [str(i) for i in range(n_docs)])
    queries = [{int(t): float(w) for t, w in zip(rng.choice(300, 30, replace=False), rng.exponential(1, 30))}
               for _ in range(20)]
    found = {1.0: 0, 3.0: 0, 1e6: 0}
    for query in queries:
        exact = {h.doc_id for h in idx.search(query, k=10)}
        scores = brute_scores(idx, query)
        for factor in found:
            hits = idx.search(query, k=10, bound_factor=factor)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            assert all(abs(h.score - scores[h.doc_id]) <= 1e-4 * max(1.0, h.score) for h in hits)
            found[factor] += len(exact & {h.doc_id for h in hits})
    recall = {factor: n / (10 * len(queries)) for factor, n in found.items()}
    assert recall[1.0] == 1.0 and recall[3.0] >= 0.95 and recall[1e6] < 1.0, recall
    batch = sp.vstack([sp.csr_matrix((list(q.values()), ([0] * len(q), list(q))), shape=(1, vocab)) for q in queries])
    ids, _ = idx.search_batch(as_batch(batch), k=10, bound_factor=1e6)
    assert [[d for d in row if d is not None] for row in ids] == [
        [h.doc_id for h in idx.search(q, k=10, bound_factor=1e6)] for q in queries]


def test_stats_and_vectors(tmp_path):
    rng = np.random.default_rng(11)
    matrix = random_csr(rng, 200, 40, 0.2)
    vocab = [f"tok{i}" for i in range(40)]
    idx = InvertedIndex.build(tmp_path / "idx", SparseBatch.from_scipy(matrix, vocab), [f"d{i}" for i in range(200)],
                              quantization="float32")
    assert idx.vocab == vocab and idx.vocab_size == 40 and len(idx) == 200
    np.testing.assert_array_equal(idx.doc_freqs(), np.diff(matrix.tocsc().indptr))
    got = idx.get_vectors(["d5", "d0"]).to_scipy().toarray()
    np.testing.assert_array_equal(got, matrix[[5, 0]].toarray())
    idx.delete(["d0"])
    np.testing.assert_array_equal(idx.doc_freqs(), np.diff(matrix[1:].tocsc().indptr))
    with pytest.raises(KeyError, match="d0"):
        idx.get_vectors(["d0"])
    assert idx.search({"tok3": 1.0}, k=3) == idx.search({3: 1.0}, k=3)


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda m: (m, ["a", "a", "b"]), "duplicate doc ids"),
        (lambda m: (m * -1.0, ["a", "b", "c"]), "weight -1 out of range .*between 0 and"),
        (lambda m: (sp.csr_matrix(np.array([[np.nan, 0, 0]] * 3, np.float32)), ["a", "b", "c"]), "weight nan out of range"),
        (lambda m: (m * 3e37, ["a", "b", "c"]), r"weight 3e\+37 out of range \(row 0\); .* between 0 and 1e\+06"),
        (lambda m: (sp.csr_matrix(np.ones((3, 9), np.float32)), ["a", "b", "c"]), "vocab_size 9"),
        (lambda m: (m, ["a", "b"]), "2 doc ids for 3 vectors"),
    ],
)
def test_bad_documents_leave_index_unchanged(tmp_path, bad, message):
    matrix = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 0], [1, 1, 1]], np.float32))
    idx = InvertedIndex.build(tmp_path / "idx", matrix, ["x", "y", "z"])
    before = (idx.version, idx.checksum)
    with pytest.raises(ValueError, match=message):
        idx.add(*bad(matrix))
    assert (idx.version, idx.checksum) == before
    reopened = InvertedIndex.open(tmp_path / "idx")
    assert (reopened.version, reopened.checksum, len(reopened)) == (*before, 3)


def test_bad_queries_and_deletes(tmp_path):
    idx = InvertedIndex.build(tmp_path / "idx", sp.csr_matrix(np.eye(4, dtype=np.float32)), list("abcd"))
    with pytest.raises(ValueError, match="term id 4 outside the vocabulary"):
        idx.search({4: 1.0})
    with pytest.raises(ValueError, match="weight -1 out of range; SPLADE weights must be finite and >= 0"):
        idx.search({1: -1.0})
    with pytest.raises(ValueError, match="k must be a positive"):
        idx.search({1: 1.0}, k=0)
    with pytest.raises(ValueError, match="token"):
        idx.search({"cat": 1.0})
    with pytest.raises(KeyError, match="'zz'"):
        idx.delete(["a", "zz"])
    assert len(idx) == 4
    with pytest.raises(ValueError, match="outside the vocabulary"):
        InvertedIndex.build(tmp_path / "bad", SparseBatch(np.array([0, 1]), np.array([7]), np.array([1.0]), 5), ["q"])


def test_a_query_weight_past_float32_is_refused_not_scored_inf_or_lost(tmp_path):
    """{t: 1e300} scored every hit inf (all tied) and {t: 1e-300} returned nothing: float32 scores overflow or vanish."""
    matrix = sp.csr_matrix(np.array([[1.0, 0.5, 0.0], [0.2, 0.0, 1.0]], np.float32))
    index = InvertedIndex.build(tmp_path / "idx", matrix, ["a", "b"])
    for weight in (1e300, 1e-300):
        with pytest.raises(ValueError, match="outside 1e-30..1e\\+30, where float32 scores overflow to inf or round to 0"):
            index.search({0: weight}, k=2)
    assert [h.doc_id for h in index.search({0: 1e20}, k=2)] == [h.doc_id for h in index.search({0: 1.0}, k=2)]


def test_k_is_a_whole_number_and_at_most_the_documents_are_allocated(tmp_path):
    matrix = sp.csr_matrix(np.array([[1.0, 0.5, 0.0], [0.2, 0.0, 1.0]], np.float32))
    index = InvertedIndex.build(tmp_path / "idx", matrix, ["a", "b"])
    assert [h.doc_id for h in index.search({0: 1.0}, k=10**12)] == ["a", "b"]  # a MemoryError of 3.6 TiB before
    ids, scores = index.search_batch([{0: 1.0}, {2: 1.0}], k=10**12)  # so did a batch: [2, 10**12] objects
    assert ids.tolist() == [["a", "b"], ["b", None]] and scores.shape == (2, 2) and scores[1, 1] == -np.inf
    index.add(matrix, ["c", "c d"])  # ids are checked where documents come in (lsr index, upsert): the index itself
    assert "c d" in index  # takes what it stored before, so a journal written before the check still replays
    with pytest.raises(ValueError, match="k must be a positive integer, got True"):
        index.search({0: 1.0}, k=True)
    assert "a" in index and 7 not in index


def test_query_vectors_over_another_vocabulary_are_refused(tmp_path):
    """A query encoded by another model (30522 terms) against a 4-term index was searched by whichever of its term
    ids happened to be below 4: hits for tokens the query never held, and no error."""
    index = InvertedIndex.build(tmp_path / "idx", sp.csr_matrix(np.eye(4, dtype=np.float32)), list("abcd"))
    other = SparseBatch(np.array([0, 1]), np.array([2]), np.array([1.0]), 30522)
    message = "the query vectors have 30,522 terms but the index's vocabulary has 4"
    for search in (lambda: index.search(other), lambda: index.search(other.to_scipy()),
                   lambda: index.search_batch(other), lambda: index.search_batch(other.to_scipy())):
        with pytest.raises(ValueError, match=message):
            search()
    assert index.search(SparseBatch(np.array([0, 1]), np.array([2]), np.array([1.0]), 4)) == [Hit("c", 1.0)]


def test_threads_below_one_are_refused_not_run_on_one(tmp_path):
    idx = InvertedIndex.build(tmp_path / "idx", sp.csr_matrix(np.eye(4, dtype=np.float32)), list("abcd"))
    for threads in (-1, 0, 1.5, True):
        with pytest.raises(ValueError, match="threads must be a positive integer or None"):
            idx.search_batch([{0: 1.0}], k=1, threads=threads)
    assert idx.search_batch([{0: 1.0}], k=1, threads=2)[0].tolist() == [["a"]]


def test_a_dict_or_a_fractional_top_terms_is_one_clear_error(tmp_path):
    """search_batch({2: 1.0}) failed as "unsupported query type int" (it iterated the dict's keys), and top_terms=2.5
    as "slice indices must be integers" from inside the search."""
    index = InvertedIndex.build(tmp_path / "idx", sp.csr_matrix(np.eye(4, dtype=np.float32)), list("abcd"))
    with pytest.raises(TypeError, match="got one dict: pass \\[query\\], or search\\(query\\)"):
        index.search_batch({2: 1.0})
    for top_terms in (2.5, 0, True):
        with pytest.raises(ValueError, match=f"top_terms must be a positive integer or None, got {top_terms}"):
            index.search({0: 1.0, 1: 2.0, 2: 3.0}, top_terms=top_terms)
    assert [h.doc_id for h in index.search({0: 1.0, 1: 2.0, 2: 3.0}, top_terms=np.int64(1))] == ["c"]


def test_vectors_of_another_form_are_named_not_unpacked(tmp_path):
    """A list of {term: weight} dicts failed as "not enough values to unpack (expected 2, got 1)", and with doc_ids
    (or a dense array with them) as "pass doc_ids inside the (SparseBatch, ids) chunks": neither said what to pass."""
    for vectors, doc_ids, message in (
            ([{0: 1.0}, {1: 1.0}], None, "chunk 0 is a dict"),
            ([{0: 1.0}, {1: 1.0}], ["a", "b"], "chunk 0 is a dict"),
            ([SparseBatch.empty(1, 4)], None, "chunk 0 is a SparseBatch"),
            (np.eye(2, dtype=np.float32), ["a", "b"], r"a dense array: pass SparseBatch.from_dense\(vectors\)")):
        with pytest.raises(TypeError, match=message):
            InvertedIndex.build(tmp_path / "idx", vectors, doc_ids)
    built = InvertedIndex.build(tmp_path / "idx", [[SparseBatch.from_dense(np.eye(2, dtype=np.float32)), ["a", "b"]]])
    assert built.search({1: 1.0}) == [Hit("b", 1.0)]


def test_a_bool_or_fractional_query_key_and_a_bound_factor_of_another_kind_are_refused(tmp_path):
    """{True: 1.0} searched term 1, {1.5: 1.0} was "query token 1.5 is not in the index vocabulary", and a
    bound_factor of None or "2" failed inside numpy ("ufunc 'isfinite' not supported")."""
    index = InvertedIndex.build(tmp_path / "idx", sp.csr_matrix(np.eye(4, dtype=np.float32)), list("abcd"))
    for key in (True, 1.5, np.bool_(True), None):
        with pytest.raises(TypeError, match="a query's key is a token or a whole term id"):
            index.search({key: 1.0})
        with pytest.raises(TypeError, match="a query's key is a token or a whole term id"):
            index.search({0: 1.0, key: 1.0})
    for factor, error in ((None, TypeError), ("2", TypeError), (float("nan"), ValueError), (0.5, ValueError)):
        with pytest.raises(error, match="bound_factor"):
            index.search({0: 1.0}, bound_factor=factor)
    assert index.search({np.int64(1): 1.0}, bound_factor=np.float64(2.0)) == [Hit("b", 1.0)]
    for weight in ("1", None, True):  # "1" was read as 1.0, None was "weight nan"
        with pytest.raises(TypeError, match="a query's weights are numbers"):
            index.search({0: weight})
    assert index.search({0: np.float32(1.0), 1: 0}) == [Hit("a", 1.0)]


def test_build_refuses_a_scale_or_journal_seq_of_no_use_and_open_names_a_collection_folder(tmp_path):
    """A scale of NaN, 0 or -1 was ignored (one computed instead) and "1" failed in a bare compare; a journal_seq of
    1.5 became 1. InvertedIndex.open on a collection folder said to rebuild an index that was there."""
    vectors = sp.csr_matrix(np.eye(2, dtype=np.float32))
    for scale in (float("nan"), 0, -1.0, "1", True):
        with pytest.raises(ValueError, match="scale must be a positive finite number"):
            InvertedIndex.build(tmp_path / "idx", vectors, ["a", "b"], scale=scale)
    for seq in (-1, 1.5):
        with pytest.raises(ValueError, match="journal_seq must be a whole number"):
            InvertedIndex.build(tmp_path / "idx", vectors, ["a", "b"], journal_seq=seq)
    index = InvertedIndex.build(tmp_path / "col" / "sparse", vectors, ["a", "b"])
    for seq in (float("nan"), 1.5, -1, True, "3"):  # a write committed them, and every later journal_seq read failed
        with pytest.raises(ValueError, match="journal_seq must be a whole number"):
            index.add(vectors, ["c", "d"], journal_seq=seq)
        with pytest.raises(ValueError, match="journal_seq must be a whole number"):
            index.delete([], journal_seq=seq)
    for call, said in ((lambda: index.search_batch(None), "search_batch takes many queries"),
                       (lambda: index.add(None, ["c"]), "vectors must be a SparseBatch, a scipy matrix or"),
                       (lambda: SparseBatch.from_dicts(None, ["a"]), "rows must be")):
        with pytest.raises(TypeError, match=f"{said}.*got NoneType"):  # "'NoneType' object is not iterable"
            call()
    index.delete([], journal_seq=np.int64(4))
    assert InvertedIndex.open(tmp_path / "col" / "sparse").journal_seq == 4 and len(index) == 2
    with pytest.raises(FileNotFoundError, match="is a collection folder, not an inverted index: open it with "
                                                "lsr.Searcher.open"):
        InvertedIndex.open(tmp_path / "col")
