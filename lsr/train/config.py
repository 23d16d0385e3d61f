"""Training settings: light (no torch import), so ``lsr --help`` can show their defaults without loading models."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """Everything that decides the trained weights (``device``, ``max_minutes`` and checkpointing only decide when/where)."""

    model: str = "splade-tiny"
    epochs: int = 1
    batch_size: int = 16
    accumulate: int = 1
    negatives: int = 1
    lr: float = 5e-5
    warmup: float = 0.1  # fraction of steps with a linearly rising learning rate
    weight_decay: float = 0.01
    clip: float = 1.0
    flops_query: float = 5e-4
    flops_doc: float = 5e-4
    flops_warmup: float = 0.3  # fraction of steps over which the FLOPS weights grow quadratically
    distill: float = 1.0  # margin-MSE weight, used for rows that carry teacher scores
    inference_free: bool = False  # queries are IDF bags (no model); documents get IDF-aware FLOPS
    max_length: int = 256
    query_max_length: int = 64
    seed: int = 0

    def check(self) -> None:
        for name in ("epochs", "batch_size", "accumulate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.negatives < 0:
            raise ValueError(f"--negatives must be ≥ 0, got {self.negatives}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.flops_query < 0 or self.flops_doc < 0:
            raise ValueError("--flops-query and --flops-doc must be ≥ 0")
        if self.max_length < 4 or self.query_max_length < 4:
            raise ValueError("--max-length and --query-max-length must be at least 4")
