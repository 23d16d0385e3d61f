"""Fusion of ranked lists (OpenSearch's normalization processor and its RRF processor).

Sparse dot products, dense cosines and BM25 scores live on different scales, so each list is
normalised (min_max, l2, z_score) and combined by a weighted arithmetic mean, ``Σ wᵢ·norm(sᵢ) / Σ wᵢ``,
as OpenSearch's ``arithmetic_mean`` combination does. A document missing from one list gets that
list's floor (its lowest normalised score): being absent is evidence the retriever ranked it below
everything it kept. When all of a list's scores tie (one hit, or a word only two documents hold), its
floor lies below them: 0 (OpenSearch's value for a missing document) or, for tied scores of 0 or less,
one less. ``rrf`` ignores scores: ``Σ wᵢ / (k + rankᵢ)`` with 1-based ranks and k = 60 by
default (OpenSearch's ``rank_constant``); a missing document adds nothing.

OpenSearch's other combinations are there too, for min_max and l2 scores (OpenSearch allows z_score only
with the arithmetic mean): ``geometric_mean``, ``exp(Σ wᵢ·ln sᵢ / Σ wᵢ)``, and ``harmonic_mean``,
``Σ wᵢ / Σ (wᵢ / sᵢ)``. Each score counts as at least 0.001, OpenSearch's min_max floor, where OpenSearch
skips scores of 0 or less: skipped, a list's lowest score (min_max's 0, the floor of a document a list lacks, a
negative l2 cosine) would count as though that list had not run, and rank such a document above one the list
holds. z_score divides by the population deviation and keeps scores below the mean: OpenSearch divides by the
sample deviation (n - 1) and clips every score at or below the mean to 0.001, which ties all of a list's below-average
hits, throwing away the order that list gave them (the tuning grid was chosen with this z_score).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

NORMALIZATIONS = ("min_max", "l2", "z_score")
FUSIONS = NORMALIZATIONS + ("rrf",)
COMBINATIONS = ("arithmetic_mean", "geometric_mean", "harmonic_mean")
MEAN_NORMALIZATIONS = ("min_max", "l2")  # the normalizations the geometric and harmonic means combine
SCORE_FLOOR = 0.001  # the least score the geometric and harmonic means take (OpenSearch's min_max floor)
RRF_K = 60

Ranking = dict[str, float]  # doc id → score


def normalize(scores: np.ndarray, method: str = "min_max") -> np.ndarray:
    """min_max → [0, 1]; l2 → unit norm; z_score → zero mean, unit deviation. Constant lists map to 1 (min_max) or 0."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    if method == "min_max":
        lo, hi = scores.min(), scores.max()
        return np.ones_like(scores) if hi == lo else (scores - lo) / (hi - lo)
    if method == "l2":
        norm = np.linalg.norm(scores)
        return np.zeros_like(scores) if norm == 0 else scores / norm
    if method == "z_score":
        std = scores.std()
        return np.zeros_like(scores) if std == 0 else (scores - scores.mean()) / std
    raise ValueError(f"unknown normalization {method!r}; choose one of {', '.join(NORMALIZATIONS)}")


def rank(scores: Ranking, k: int | None = None) -> list[tuple[str, float]]:
    """Sorted by score descending, ties by doc id ascending, so results are deterministic."""
    ordered = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return ordered if k is None else ordered[:k]


def check_combination(combination: str, method: str) -> None:
    """A ValueError naming the choices for an unknown combination, or one a normalization cannot take."""
    if combination not in COMBINATIONS:
        raise ValueError(f"unknown combination {combination!r}; choose one of {', '.join(COMBINATIONS)}")
    if combination != "arithmetic_mean" and method not in MEAN_NORMALIZATIONS:
        why = "it sums reciprocal ranks" if method == "rrf" else "it takes arithmetic_mean only, as in OpenSearch"
        raise ValueError(f"{combination} combines {' or '.join(MEAN_NORMALIZATIONS)} scores, and the normalization is "
                         f"{method}: {why}")


def fuse(runs: Sequence[Ranking], weights: Sequence[float], method: str = "min_max", rrf_k: int = RRF_K,
         combination: str = "arithmetic_mean") -> Ranking:
    """One ranking over the union of the ``runs`` given a weight above 0: weighted mean of normalised scores, or
    weighted RRF. A list of weight 0 adds no documents, as a hybrid leg of weight 0 is left out (a PRF run
    interpolated at weight 0 had pushed first-run documents out of the top k with its own)."""
    if (len(runs) != len(weights) or any(not 0.0 <= w < math.inf for w in weights)
            or not 0 < sum(weights) < math.inf):
        raise ValueError(f"fusion needs one finite non-negative weight per list, not all zero; got {list(weights)}")
    runs, weights = zip(*((run, weight) for run, weight in zip(runs, weights) if weight > 0))
    docs, columns = leg_columns(runs, method)
    return dict(zip(docs, combine(columns, weights, method, rrf_k, combination).tolist()))


def leg_columns(runs: Sequence[Ranking], method: str) -> tuple[list[str], list[np.ndarray]]:
    """The union of the lists' documents, and one column per list over it: normalised scores with the list's floor
    where it lacks a document; for rrf, 1-based ranks (``rank`` order) and 0 where it lacks one. The columns do not
    depend on the weights (``lsr.eval.fusion_grid`` builds them once for many weightings)."""
    docs = list(dict.fromkeys(doc for ranking in runs for doc in ranking))
    column_of = {doc: i for i, doc in enumerate(docs)}
    columns = []
    for ranking in runs:
        if method == "rrf":
            column = np.zeros(len(docs))
            column[[column_of[doc] for doc, _ in rank(ranking)]] = np.arange(1, len(ranking) + 1)
        else:
            values = normalize(np.fromiter(ranking.values(), np.float64, len(ranking)), method)
            column = np.full(len(docs), floor(values))
            column[np.fromiter(map(column_of.__getitem__, ranking), np.int64, len(ranking))] = values
        columns.append(column)
    return docs, columns


def floor(values: np.ndarray) -> float:
    """The normalised score a list gives a document it lacks: its lowest, or below it when all of them tie. A list
    whose hits all tie had given the documents it lacks their score: BM25's only hit for a rare word moved nothing."""
    if not len(values):
        return 0.0
    lowest = float(values.min())
    if values.max() > lowest:
        return lowest
    return 0.0 if lowest > 0 else lowest - 1.0


def combine(columns: Sequence[np.ndarray], weights: Sequence[float], method: str, rrf_k: int = RRF_K,
            combination: str = "arithmetic_mean") -> np.ndarray:
    """The fused scores of ``leg_columns``: Σ wᵢ·columnᵢ / Σ wᵢ, or Σ wᵢ / (k + rankᵢ) over the lists holding a
    document, summed list by list in order (so the floats do not depend on who calls); or the geometric or
    harmonic mean (the module's docstring)."""
    if combination != "arithmetic_mean":
        check_combination(combination, method)  # fuse's and the tuning grid's one check
        return _geometric_or_harmonic(columns, weights, combination)
    summed = np.zeros(len(columns[0]) if columns else 0)
    for column, weight in zip(columns, weights):
        summed += np.where(column > 0, weight / (rrf_k + column), 0.0) if method == "rrf" else weight * column
    return summed if method == "rrf" else summed / float(sum(weights))


def _geometric_or_harmonic(columns: Sequence[np.ndarray], weights: Sequence[float], combination: str) -> np.ndarray:
    """OpenSearch's weighted geometric or harmonic mean of each document's scores, each at least SCORE_FLOOR."""
    summed = np.zeros(len(columns[0]) if columns else 0)
    for column, weight in zip(columns, weights):
        scores = np.maximum(column, SCORE_FLOOR)
        summed += weight * np.log(scores) if combination == "geometric_mean" else weight / scores
    total = float(sum(weights))
    return np.exp(summed / total) if combination == "geometric_mean" else total / summed


def interpolate(first: Ranking, second: Ranking, first_weight: float = 0.5, normalization: str = "min_max",
                rrf_k: int = RRF_K, combination: str = "arithmetic_mean") -> Ranking:
    """``w·norm(first) + (1−w)·norm(second)`` over the union of both lists (or their weighted RRF, or another mean)."""
    if not 0.0 <= first_weight <= 1.0:
        raise ValueError(f"interpolation weight must be in [0, 1], got {first_weight}")
    return fuse([first, second], [first_weight, 1.0 - first_weight], normalization, rrf_k, combination)
