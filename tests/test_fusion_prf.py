"""Normalisation, interpolation and PRF arithmetic on hand-checked numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lsr.search.fusion import fuse, interpolate, normalize, rank
from lsr.search.prf import feedback_weights, rocchio, vector_prf
from lsr.sparse import SparseBatch


def test_normalizations():
    s = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(normalize(s, "min_max"), [0, 0.5, 1])
    np.testing.assert_allclose(normalize(s, "l2"), s / np.sqrt(14))
    np.testing.assert_allclose(normalize(s, "z_score"), (s - 2) / np.std(s))
    np.testing.assert_allclose(normalize(np.array([5.0, 5.0]), "min_max"), [1, 1])
    with pytest.raises(ValueError, match="unknown normalization 'max'"):
        normalize(s, "max")


def test_interpolate_gives_missing_docs_the_list_floor():
    sparse = {"a": 10.0, "b": 5.0, "c": 0.0}
    dense = {"a": 0.2, "d": 0.9, "e": 0.5}
    fused = interpolate(sparse, dense, 0.5, "min_max")
    assert fused["a"] == pytest.approx(0.5 * 1 + 0.5 * 0)  # dense min of a, e, d → a is the floor
    assert fused["d"] == pytest.approx(0.5 * 0 + 0.5 * 1)  # absent from sparse → sparse floor 0
    assert fused["b"] == pytest.approx(0.5 * 0.5 + 0.5 * 0)
    z = interpolate(sparse, dense, 0.75, "z_score")
    assert z["d"] == pytest.approx(0.75 * min(normalize(np.array([10.0, 5.0, 0.0]), "z_score"))
                                   + 0.25 * max(normalize(np.array([0.2, 0.9, 0.5]), "z_score")))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate(sparse, dense, 1.5)


@pytest.mark.parametrize("method", ["min_max", "l2", "z_score"])
def test_a_list_whose_scores_all_tie_still_ranks_its_hits_above_the_documents_it_lacks(method):
    """BM25's one hit for a rare word, or its two tied ones, gave every document it lacked the same credit: the leg
    moved nothing. OpenSearch gives a lone hit 1 under min_max and a missing document 0."""
    first = {"a": 5.0, "b": 3.0, "c": 1.0}
    for second in ({"c": 2.0}, {"b": 2.0, "c": 2.0}, {"c": -0.5}, {"c": 0.0}):
        fused = fuse([first, second], [0.0001, 1.0], method)
        assert min(fused[doc] for doc in second) > max(fused[doc] for doc in first if doc not in second), second
    if method == "min_max":
        assert fuse([first, {"c": 2.0}], [0.5, 0.5], method) == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.5})
    alone = fuse([first], [1.0], method)
    assert fuse([first, {}], [0.5, 0.5], method) == pytest.approx({doc: v / 2 for doc, v in alone.items()})


def test_rank_breaks_ties_by_doc_id():
    assert rank({"b": 1.0, "a": 1.0, "c": 2.0}) == [("c", 2.0), ("a", 1.0), ("b", 1.0)]
    assert rank({"b": 1.0, "a": 1.0}, 1) == [("a", 1.0)]


def test_feedback_weights():
    np.testing.assert_allclose(feedback_weights(np.array([3.0, 1.0])), [0.75, 0.25])
    np.testing.assert_allclose(feedback_weights(np.array([0.0, 0.0])), [0.5, 0.5])
    for signed in ([-1.0, -2.0], [0.5, -0.1], [3.0, 0.0]):  # the last document had weight 0
        np.testing.assert_allclose(feedback_weights(np.array(signed)), [0.5, 0.5])
    assert feedback_weights(np.array([])).size == 0


def test_rocchio_keeps_query_terms_and_caps_new_ones():
    docs = SparseBatch.from_dense(np.array([[0, 1.0, 2.0, 0, 4.0], [0, 1.0, 0, 3.0, 0]], np.float32))
    q = {0: 1.0, 1: 0.5}
    out = rocchio(q, docs, np.array([1.0, 1.0]), beta=0.5, max_terms=2)
    assert out[0] == pytest.approx(1.0)  # no feedback mass, kept anyway
    assert out[1] == pytest.approx(0.5 + 0.5 * 1.0)
    assert set(out) == {0, 1, 4, 3}  # the two strongest new terms: 4 (2.0) and 3 (1.5), not 2 (1.0)
    assert out[4] == pytest.approx(0.5 * 2.0)
    assert rocchio(q, docs, np.array([1.0, 1.0]), beta=0.0, max_terms=5) == q


def test_vector_prf_moves_toward_feedback_and_stays_unit():
    q = np.array([1.0, 0.0], np.float32)
    fb = np.array([[0.0, 1.0]], np.float32)
    out = vector_prf(q, fb, np.array([1.0]), beta=1.0)
    np.testing.assert_allclose(out, [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    np.testing.assert_array_equal(vector_prf(q, fb[:0], np.array([]), 1.0), q)


def test_fuse_is_a_weighted_mean_of_normalised_lists_over_any_number_of_legs():
    sparse, dense, bm25 = {"a": 10.0, "b": 0.0}, {"a": 0.0, "c": 1.0}, {"b": 4.0, "c": 2.0, "d": 0.0}
    fused = fuse([sparse, dense, bm25], [0.2, 0.3, 0.5], "min_max")
    assert fused["a"] == pytest.approx(0.2 * 1 + 0.3 * 0 + 0.5 * 0)  # absent from bm25 → its floor 0
    assert fused["c"] == pytest.approx(0.2 * 0 + 0.3 * 1 + 0.5 * 0.5)
    assert fused.keys() == {"a", "b", "c", "d"}
    # weights need not sum to 1: OpenSearch's arithmetic mean divides by their sum
    assert fuse([sparse, dense, bm25], [2, 3, 5], "min_max") == pytest.approx(fused)
    assert interpolate(sparse, dense, 0.25, "l2") == pytest.approx(fuse([sparse, dense], [0.25, 0.75], "l2"))
    with pytest.raises(ValueError, match="non-negative weight"):
        fuse([sparse, dense], [0.0, 0.0])
    # a list of weight 0 adds no documents (a PRF run interpolated at 0 pushed first-run ones out of the top k)
    for method in ("min_max", "l2", "z_score", "rrf"):
        assert fuse([sparse, dense, bm25], [0.2, 0.0, 0.5], method) == fuse([sparse, bm25], [0.2, 0.5], method)
    assert interpolate(sparse, bm25, 1.0).keys() == sparse.keys()
    for weights in ([math.inf, 1.0], [1e308, 1e308], [math.nan, 1.0]):  # NaN scores, or every score 0
        with pytest.raises(ValueError, match="finite non-negative weight"):
            fuse([sparse, dense], weights)


def test_rrf_sums_weight_over_k_plus_rank_and_ignores_scores():
    first, second = {"a": 100.0, "b": 50.0, "c": 1.0}, {"c": 0.9, "a": 0.1}
    fused = fuse([first, second], [1.0, 0.5], "rrf", rrf_k=60)
    assert fused["a"] == pytest.approx(1 / 61 + 0.5 / 62)
    assert fused["b"] == pytest.approx(1 / 62)  # missing from the second list: adds nothing
    assert fused["c"] == pytest.approx(1 / 63 + 0.5 / 61)
    scaled = fuse([{d: s * 1e6 for d, s in first.items()}, second], [1.0, 0.5], "rrf", rrf_k=60)
    assert scaled == pytest.approx(fused)
    assert fuse([first], [1.0], "rrf", rrf_k=1)["a"] == pytest.approx(0.5)


def _weighted_mean(scores: list[float], weights: list[float], combination: str) -> float:
    """OpenSearch's GeometricMean/HarmonicMeanScoreCombinationTechnique over scores that are all above 0."""
    total = sum(weights)
    if combination == "geometric_mean":
        return float(np.exp(sum(w * np.log(s) for s, w in zip(scores, weights)) / total))
    return total / sum(w / s for s, w in zip(scores, weights))


@pytest.mark.parametrize("combination", ["geometric_mean", "harmonic_mean"])
def test_geometric_and_harmonic_means_are_opensearchs_with_every_score_at_least_its_floor(combination):
    """OpenSearch's normalization processor combines by arithmetic, geometric or harmonic mean; only the first was
    here. OpenSearch skips scores of 0 or less; here each counts as 0.001, OpenSearch's min_max floor: skipped, a
    list's lowest score (a missing document's floor, a negative cosine) counted as though that list had not run."""
    sparse, dense, bm25 = {"a": 10.0, "b": 4.0, "c": 0.0}, {"a": 0.1, "c": 0.9, "d": 0.5}, {"b": 3.0, "d": 1.0}
    weights = [0.5, 0.3, 0.2]
    fused = fuse([sparse, dense, bm25], weights, "min_max", combination=combination)
    column = {  # min_max by hand, 0 → 0.001, a missing document at its list's floor (0.001)
        "a": [1.0, 0.001, 0.001], "b": [0.4, 0.001, 1.0], "c": [0.001, 1.0, 0.001], "d": [0.001, 0.5, 0.001]}
    assert fused == pytest.approx({doc: _weighted_mean(col, weights, combination) for doc, col in column.items()})
    arithmetic = fuse([sparse, dense, bm25], weights, "min_max")
    assert rank(fused) != rank(arithmetic)  # the option changes the ranking: "c" (1.0 in one list only) falls
    # a list whose hits tie keeps them above the documents it lacks; a worse l2 score (a negative cosine) never fuses
    # higher than a better one (both fused above a document the tied list held, or a worse dense score)
    tied, dense = {"a": 1.0, "x": 1.0, "y": 1.0, "z": 1.0}, {"a": 0.5, "c": 0.5, "b": 0.01, "e": -0.5}
    l2 = fuse([dense, tied], [0.5, 0.5], "l2", combination=combination)
    assert l2["a"] > l2["c"] and l2["b"] > l2["e"]
    assert l2["e"] == pytest.approx(_weighted_mean([0.001, 0.001], [0.5, 0.5], combination))
    assert interpolate(sparse, dense, 0.7, "min_max", combination=combination) == pytest.approx(
        fuse([sparse, dense], [0.7, 0.3], "min_max", combination=combination))


def test_a_combination_other_than_the_arithmetic_mean_needs_min_max_or_l2_scores():
    from lsr.search.searcher import HybridOptions

    with pytest.raises(ValueError, match="harmonic_mean combines min_max or l2 scores, and the normalization is "
                                         "z_score: it takes arithmetic_mean only, as in OpenSearch"):
        HybridOptions("z_score", combination="harmonic_mean").check()
    with pytest.raises(ValueError, match="normalization is rrf: it sums reciprocal ranks"):
        fuse([{"a": 1.0}], [1.0], "rrf", combination="geometric_mean")
    with pytest.raises(ValueError, match="unknown combination 'mean'; choose one of arithmetic_mean, geometric_mean"):
        HybridOptions(combination="mean").check()


def test_hybrid_options_choose_their_legs():
    from lsr.search.searcher import HybridOptions

    assert HybridOptions().weights() == {"sparse": 0.5, "dense": 0.5}
    assert HybridOptions("rrf", 0.2, dense_weight=0.0, bm25_weight=0.8).weights() == {"sparse": 0.2, "bm25": 0.8}
    with pytest.raises(ValueError, match="at least one leg"):
        HybridOptions(sparse_weight=0.0, dense_weight=0.0).check()
    with pytest.raises(ValueError, match="bm25_weight"):
        HybridOptions(bm25_weight=-0.1).check()
    with pytest.raises(ValueError, match="unknown normalization"):
        HybridOptions("harmonic").check()


@pytest.mark.parametrize("method", ["min_max", "l2", "z_score", "rrf"])
def test_the_tuning_fusion_grid_gives_fuse_and_rank_exactly(method):
    """``FusionGrid`` (lsr tune's fusion grid) must rank as ``rank(fuse(...))`` to the last bit: random overlapping
    lists with tied scores, an empty list, a query missing from a leg, every weight setting of the tuning grid."""
    from lsr.eval.fusion_grid import FusionGrid
    from lsr.eval.tuning import weight_grid

    rng = np.random.default_rng(7)
    qids = [f"q{i}" for i in range(12)]
    legs = [{q: {f"d{j}": float(np.round(rng.normal(), 1)) for j in rng.choice(40, size=rng.integers(0, 15), replace=False)}
             for q in qids} for _ in range(3)]
    del legs[1]["q3"]  # a query one leg has no run for
    grid = FusionGrid(legs, qids)
    for weights in weight_grid():
        used = [(run, w) for run, w in zip(legs, weights) if w > 0]
        want = {q: rank(fuse([run.get(q, {}) for run, _ in used], [w for _, w in used], method), 7) for q in qids}
        assert {q: list(hits.items()) for q, hits in grid.run(method, weights, 7).items()} == want, weights
    with pytest.raises(ValueError, match="one non-negative weight per leg"):
        grid.run(method, (0.0, 0.0, 0.0), 7)
