"""Every setting of a fusion grid over the same leg runs, without normalising the same lists again per setting.

Why: ``lsr tune`` scores 189 (method, weights) settings on the same three leg runs of 809 SciFact queries, and
``fuse`` + ``rank`` per query and setting spent ~0.2 ms in Python re-normalising lists that do not change. A leg's
normalised column over the union of the used legs' documents does not depend on the weights, so it is built once
per method, set of used legs and query; a setting then sums the columns leg by leg in the order ``fuse`` does and
ranks with the same tie-break, so its hits and scores are the very floats of ``rank(fuse(...), k)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lsr.eval.metrics import Run
from lsr.search.fusion import RRF_K, normalize, rank


class FusionGrid:
    """The legs' runs of some queries, fused under any (method, weights) setting; ``fuse``'s semantics, faster."""

    def __init__(self, legs: Sequence[Run], qids: Sequence[str]) -> None:
        self.legs, self.qids = list(legs), list(qids)
        self._method: str | None = None
        self._columns: dict[tuple[int, ...], list[tuple[list[str], np.ndarray, list[np.ndarray]]]] = {}

    def run(self, method: str, weights: Sequence[float], k: int) -> Run:
        """Each query's top ``k`` of the legs fused with ``weights`` (one per leg; a zero leaves its leg out)."""
        used = tuple(i for i, w in enumerate(weights) if w > 0)
        if len(weights) != len(self.legs) or not used or any(w < 0 for w in weights):
            raise ValueError(f"fusion needs one non-negative weight per leg, not all zero; got {list(weights)}")
        total = float(sum(weights[i] for i in used))
        out: Run = {}
        for q, (docs, tie_break, columns) in zip(self.qids, self._prepared(method, used)):
            summed = np.zeros(len(docs))
            for i, column in zip(used, columns):  # leg by leg, in order: fuse's float sums
                summed += (np.where(column > 0, weights[i] / (RRF_K + column), 0.0) if method == "rrf"
                           else weights[i] * column)
            scores = summed if method == "rrf" else summed / total
            top = np.lexsort((tie_break, -scores))[:k]  # score descending, then doc id ascending, as rank()
            out[q] = dict(zip(map(docs.__getitem__, top.tolist()), scores[top].tolist()))
        return out

    def _prepared(self, method: str, used: tuple[int, ...]) -> list[tuple[list[str], np.ndarray, list[np.ndarray]]]:
        """Per query: the union of the used legs' documents, each one's rank by id, and each leg's column
        (normalised scores with the leg's floor where it lacks a document; for rrf, 1-based ranks, 0 where absent).
        Kept for one method at a time, so memory stays a few lists per query."""
        if method != self._method:
            self._method, self._columns = method, {}
        if used not in self._columns:
            self._columns[used] = [self._query_columns(method, [self.legs[i].get(q, {}) for i in used]) for q in self.qids]
        return self._columns[used]

    @staticmethod
    def _query_columns(method: str, runs: list[dict[str, float]]) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
        docs = list(dict.fromkeys(doc for ranking in runs for doc in ranking))
        position = {doc: j for j, doc in enumerate(docs)}
        tie_break = np.empty(len(docs), np.int64)
        tie_break[sorted(range(len(docs)), key=docs.__getitem__)] = np.arange(len(docs))
        columns = []
        for ranking in runs:
            if method == "rrf":
                column = np.zeros(len(docs))
                for place, (doc, _) in enumerate(rank(ranking), start=1):
                    column[position[doc]] = place
            else:
                values = normalize(np.fromiter(ranking.values(), np.float64, len(ranking)), method)
                column = np.full(len(docs), values.min() if len(values) else 0.0)
                column[np.fromiter(map(position.__getitem__, ranking), np.int64, len(ranking))] = values
            columns.append(column)
        return docs, tie_break, columns
