"""Training settings: light (no torch import), so ``lsr --help`` can show their defaults without loading models."""

from __future__ import annotations

import math
from dataclasses import dataclass

NEGATIVE_MINERS = ("bm25", "model")
FLOPS_DOC = 1e-5
# IDF-aware FLOPS weighs terms by 1 / IDF (SciFact: "of" 1,048, "the" 286, terms no training document has 9,441, the
# median term 0.17), so the same weight bears down far harder on documents: at 1e-5 the inference-free variant lost a
# third of its document terms and 0.015 nDCG@10 on a dataset it never saw; at 1e-6 it kept them and scored higher on
# both (benchmarks/results/train-scifact.md).
FLOPS_DOC_INFERENCE_FREE = 1e-6
# far past any FLOPS weight that trains (1e-5 .. 1e-1): 1e300 was taken, overflowed float32 to inf, and the run then
# failed at its first step with a loss of NaN and the advice to lower --lr
MAX_FLOPS_WEIGHT = 1_000.0


@dataclass
class TrainConfig:
    """Everything that decides the trained weights (``device``, ``max_minutes`` and checkpointing only decide when/where)."""

    model: str = "splade-tiny"
    epochs: int = 4
    max_steps: int | None = None  # this many optimiser steps, overriding epochs (sentence-transformers' max_steps)
    batch_size: int = 16
    accumulate: int = 1
    hard_negatives: int = 1  # drawn per query and step from its mined pool
    negatives: str = "bm25"  # who mines a BEIR train split's pool: "bm25" or "model" (the starting model's own retrieval)
    lr: float = 1e-4
    warmup: float = 0.1  # fraction of steps with a linearly rising learning rate
    weight_decay: float = 0.01
    clip: float = 1.0
    score_scale: float | None = None  # contrastive logits = scale × dot product; None: fitted to each batch
    flops_query: float = 1e-5
    flops_doc: float | None = None  # None: FLOPS_DOC, or FLOPS_DOC_INFERENCE_FREE for the inference-free variant
    flops_warmup: float = 0.3  # fraction of steps over which the FLOPS weights grow quadratically
    distill: float = 1.0  # margin-MSE weight, used for rows that carry teacher scores
    inference_free: bool = False  # queries are IDF bags (no model); documents get IDF-aware FLOPS
    max_length: int = 256  # what `lsr index` encodes; on SciFact 256 beat 128 by +0.011 nDCG@10 at 1.7x the step
    query_max_length: int = 32
    seed: int = 0
    dev_every: int = 50  # steps between held-out evaluations (when a dev split is given)
    patience: int = 2  # held-out evaluations without a gain before the run stops
    collapse_fraction: float = 0.25  # stop when document non-zeros fall below this share of the first steps' (0: never)
    blend: float = 0.5  # OUT = blend × trained + (1 − blend) × starting weights (WiSE-FT); 1: trained weights alone

    def __post_init__(self) -> None:
        if self.flops_doc is None:
            self.flops_doc = FLOPS_DOC_INFERENCE_FREE if self.inference_free else FLOPS_DOC

    def check(self) -> None:
        for name in ("epochs", "batch_size", "accumulate", "dev_every", "patience"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"--max-steps must be positive, got {self.max_steps}")
        if self.hard_negatives < 0:
            raise ValueError(f"--hard-negatives must be ≥ 0, got {self.hard_negatives}")
        if self.negatives not in NEGATIVE_MINERS:
            raise ValueError(f"--negatives must be one of {', '.join(NEGATIVE_MINERS)}, got {self.negatives!r}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if self.score_scale is not None and not 0 < self.score_scale < math.inf:
            raise ValueError(f"--score-scale must be a positive number, got {self.score_scale}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must be in [0, 2**32), got {self.seed}")
        if not 0 < self.blend <= 1:
            raise ValueError(f"--blend must be in (0, 1], got {self.blend}")
        if not 0 <= self.collapse_fraction < 1:
            raise ValueError(f"--collapse-fraction must be in [0, 1), got {self.collapse_fraction}")
        if not (0 <= self.flops_query <= MAX_FLOPS_WEIGHT and 0 <= self.flops_doc <= MAX_FLOPS_WEIGHT):
            raise ValueError(f"--flops-query and --flops-doc must be numbers from 0 to {MAX_FLOPS_WEIGHT:g}, got "
                             f"{self.flops_query:g} and {self.flops_doc:g}")
        if self.max_length < 4 or self.query_max_length < 4:
            raise ValueError("--max-length and --query-max-length must be at least 4")
