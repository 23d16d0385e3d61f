"""Score normalisation and interpolation of ranked lists (OpenSearch's normalization processor).

Sparse dot products and dense cosines live on different scales, so each list is normalised
before a weighted sum. A document missing from one list gets that list's floor (its lowest
normalised score): being absent is evidence the retriever ranked it below everything it kept.
"""

from __future__ import annotations

import numpy as np

NORMALIZATIONS = ("min_max", "l2", "z_score")

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


def interpolate(first: Ranking, second: Ranking, first_weight: float = 0.5, normalization: str = "min_max") -> Ranking:
    """``w·norm(first) + (1−w)·norm(second)`` over the union of both lists."""
    if not 0.0 <= first_weight <= 1.0:
        raise ValueError(f"interpolation weight must be in [0, 1], got {first_weight}")
    normed = []
    for ranking in (first, second):
        ids = list(ranking)
        values = normalize(np.fromiter(ranking.values(), np.float64, len(ranking)), normalization)
        floor = float(values.min()) if len(values) else 0.0
        normed.append((dict(zip(ids, values.tolist())), floor))
    (a, a_floor), (b, b_floor) = normed
    return {
        doc: first_weight * a.get(doc, a_floor) + (1.0 - first_weight) * b.get(doc, b_floor)
        for doc in a.keys() | b.keys()
    }
