"""Every setting of a fusion grid over the same leg runs, without normalising the same lists again per setting.

Why: ``lsr tune`` scores 252 (method, weights) settings on the same three leg runs of 809 SciFact queries, and
``fuse`` + ``rank`` per query and setting spent ~0.15 ms in Python re-normalising lists that do not change. A leg's
column over the union of the used legs' documents (``lsr.search.fusion.leg_columns``) does not depend on the
weights, so it is built once per method, set of used legs and query; each setting then sums them with ``combine``,
as ``fuse`` does, and ranks with ``rank``'s tie-break, so its hits and scores are the very floats of
``rank(fuse(...), k)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from lsr.eval.metrics import Run
from lsr.search.fusion import combine, leg_columns


class FusionGrid:
    """The legs' runs of some queries, fused under any (method, weights) setting; ``fuse``'s semantics, faster."""

    def __init__(self, legs: Sequence[Run], qids: Sequence[str]) -> None:
        self.legs, self.qids = list(legs), list(qids)
        self._method: str | None = None
        self._columns: dict[tuple[int, ...], list[tuple[list[str], np.ndarray, list[np.ndarray]]]] = {}

    def run(self, method: str, weights: Sequence[float], k: int, combination: str = "arithmetic_mean") -> Run:
        """Each query's top ``k`` of the legs fused with ``weights`` (one per leg; a zero leaves its leg out)."""
        used = tuple(i for i, w in enumerate(weights) if w > 0)
        if len(weights) != len(self.legs) or not used or any(w < 0 for w in weights):
            raise ValueError(f"fusion needs one non-negative weight per leg, not all zero; got {list(weights)}")
        used_weights = [weights[i] for i in used]
        out: Run = {}
        for q, (docs, tie_break, columns) in zip(self.qids, self._prepared(method, used)):
            scores = combine(columns, used_weights, method, combination=combination)
            top = np.lexsort((tie_break, -scores))[:k]  # score descending, then doc id ascending, as rank()
            out[q] = dict(zip(map(docs.__getitem__, top.tolist()), scores[top].tolist()))
        return out

    def _prepared(self, method: str, used: tuple[int, ...]) -> list[tuple[list[str], np.ndarray, list[np.ndarray]]]:
        """Per query: the union of the used legs' documents, each one's rank by id, and the legs' columns. Kept for
        one method at a time, so memory stays a few lists per query."""
        if method != self._method:
            self._method, self._columns = method, {}
        if used not in self._columns:
            prepared = []
            for q in self.qids:
                docs, columns = leg_columns([self.legs[i].get(q, {}) for i in used], method)
                tie_break = np.empty(len(docs), np.int64)
                tie_break[sorted(range(len(docs)), key=docs.__getitem__)] = np.arange(len(docs))
                prepared.append((docs, tie_break, columns))
            self._columns[used] = prepared
        return self._columns[used]
