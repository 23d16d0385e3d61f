"""Keep a run from handing back a worse model: held-out validation with the best weights kept, and a collapse stop.

Loosely judged training data can make the contrastive loss cheapest to lower by shrinking every vector (NFCorpus
did: document non-zeros 171 -> 13 in 30 steps). Whatever the cause, a user should get the best weights seen on
held-out queries (the starting model included), not the last ones, and a run whose vectors are dying should stop.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)

COLLAPSE_WINDOW = 5  # steps averaged on each side, so one short batch is no collapse


class Guard:
    """Scores ``validate()`` every ``every`` steps (and at the start), keeps the best weights in memory, asks to stop
    after ``patience`` scores without a gain or when document non-zeros fall below ``collapse_fraction`` of the
    first steps' (0: never). Without ``validate`` the best weights stay the starting ones, which a collapse restores."""

    def __init__(self, parameters: list[torch.nn.Parameter], validate: Callable[[], float] | None, every: int,
                 patience: int, collapse_fraction: float) -> None:
        self.parameters, self.validate, self.every, self.patience = parameters, validate, every, patience
        self.collapse_fraction = collapse_fraction
        self.best: dict[str, Any] | None = None  # {"score", "step", "weights"}
        self.scores: list[tuple[int, float]] = []  # (step, dev score) in order
        self.since_best = 0  # scores since the best one
        self.nnz: list[float] = []
        self.halted: str | None = None  # the reason after_step gave to stop: a resume of a stopped run trains no more

    def start(self, step: int) -> None:
        """Score the weights training starts from (a resume brings its own state instead)."""
        if self.best is None:
            self._consider(step)

    def after_step(self, step: int, stats: dict[str, float]) -> str | None:
        """A reason to stop after ``step``, or None."""
        self.halted = self._reason_to_stop(step, stats)
        return self.halted

    def _reason_to_stop(self, step: int, stats: dict[str, float]) -> str | None:
        self.nnz.append(stats["nnz_d"])
        start = sum(self.nnz[:COLLAPSE_WINDOW]) / len(self.nnz[:COLLAPSE_WINDOW])
        recent = self.nnz[-COLLAPSE_WINDOW:]
        if len(self.nnz) >= 2 * COLLAPSE_WINDOW and sum(recent) / len(recent) < self.collapse_fraction * start:
            return (f"collapsed: document non-zeros fell from {start:.0f} to {sum(recent) / len(recent):.0f} per "
                    "training document; lower --lr, check that the judged positives really are the best matches, or "
                    "lower --collapse-fraction if that sparsity is wanted")
        if self.validate is not None and step % self.every == 0:
            self._consider(step)
            if self.since_best >= self.patience:
                return (f"no gain: dev nDCG@10 stayed below step {self.best['step']}'s {self.best['score']:.4f} "
                        f"for {self.since_best} evaluations")
        return None

    def finish(self, step: int, collapsed: bool) -> str | None:
        """Put the best weights back if the last ones are not; says which step they are from, or None if the last.

        Without ``validate`` only a collapse goes back (to the starting weights): nothing else says which is better.
        """
        if self.validate is None and not collapsed:
            return None
        if self.validate is not None and (not self.scores or self.scores[-1][0] != step):
            self._consider(step)
        if self.best is None or self.best["step"] == step:
            return None
        with torch.no_grad():
            for param, saved in zip(self.parameters, self.best["weights"], strict=True):
                param.copy_(saved)
        return f"kept the weights of step {self.best['step']}" + (
            f" (dev nDCG@10 {self.best['score']:.4f})" if self.validate is not None else " (the starting model)")

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "scores": self.scores, "since_best": self.since_best, "nnz": self.nnz,
                "halted": self.halted}

    def load(self, state: dict[str, Any]) -> None:
        self.best, self.scores, self.since_best, self.nnz = state["best"], state["scores"], state["since_best"], state["nnz"]
        self.halted = state.get("halted")  # checkpoints before it was kept: none

    def _consider(self, step: int) -> None:
        score = float("-inf")
        if self.validate is not None:
            score = self.validate()
            self.scores.append((step, score))
            log.info("step %d: dev nDCG@10 %.4f", step, score)
        if self.best is None or score > self.best["score"]:
            self.best = {"score": score, "step": step, "weights": [p.detach().cpu().clone() for p in self.parameters]}
            self.since_best = 0
        else:
            self.since_best += 1
