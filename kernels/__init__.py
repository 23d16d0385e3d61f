"""Pooling kernels: SPLADE's LM head + activation + masked max-pool without B×L×V logits."""

from .pool import splade_max_pool

__all__ = ["splade_max_pool"]
