"""SPLADE training losses on [B, V] vectors; scores are raw dot products, as at search time."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive(queries: torch.Tensor, docs: torch.Tensor, false_negatives: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
    """InfoNCE over every document in the batch: row i's positive is ``docs[targets[i]]`` (default ``docs[i]``);
    every other document is its negative unless ``false_negatives`` [B, len(docs)] marks it as in fact relevant
    to row i (judged for the same query), which drops it from row i's softmax. Logits are ``scale`` × dot products."""
    scores = scale * (queries @ docs.t())
    if false_negatives is not None:
        scores = scores.masked_fill(false_negatives, float("-inf"))
    if targets is None:
        targets = torch.arange(queries.shape[0], device=queries.device)
    return F.cross_entropy(scores, targets)


SCALES = tuple(2.0 ** (-k / 4) for k in range(25))  # 1 down to 1/64: never sharper than the raw dot product


def fit_scale(scores: torch.Tensor, false_negatives: torch.Tensor, targets: torch.Tensor) -> float:
    """The logit scale (of ``SCALES``) with the lowest mean contrastive loss on these [B, N] scores.

    A model whose dot products are over-confident on the new data (NFCorpus: splade-tiny ranks the judged positive
    first in a batch 30 % of the time, yet its scores span tens of points, so the loss is 4.2 at scale 1 but 2.7 at
    0.3) lowers that loss most cheaply by shrinking every vector, which ReLU turns into dead terms: the collapse.
    At the fitted scale the loss has (nearly) no gradient along "all scores × c", so only the ranking signal is left;
    fitted afresh on every batch, it also gives no reason to grow every vector later (more non-zeros).
    """
    grid = torch.tensor(SCALES, dtype=scores.dtype, device=scores.device)
    logits = (grid[:, None, None] * scores).masked_fill(false_negatives, float("-inf"))  # [scales, B, N]
    positive = logits.gather(2, targets.expand(len(SCALES), -1)[..., None]).squeeze(2)
    losses = (torch.logsumexp(logits, dim=2) - positive).mean(dim=1)
    return SCALES[int(losses.argmin())]  # one device sync per step; ties go to the larger scale


def flops(vectors: torch.Tensor, term_weights: torch.Tensor | None = None) -> torch.Tensor:
    """FLOPS regulariser: Σ_v (mean over the batch of |w_v|)², an estimate of retrieval cost (Paria et al.).

    ``term_weights`` [V] scales each term's penalty: IDF-aware FLOPS passes a weight that shrinks with
    IDF, so rare, discriminative terms are penalised less than frequent ones.
    """
    per_term = vectors.abs().mean(dim=0) ** 2
    return (per_term if term_weights is None else per_term * term_weights).sum()


def idf_flops_weights(idf: torch.Tensor) -> torch.Tensor:
    """Per-term FLOPS weights for the inference-free variant: 1 / IDF normalised to mean 1 over known terms,
    zero-IDF (unseen) terms getting the largest weight (Geng et al., "Towards Competitive Search Relevance
    for Inference-Free Learned Sparse Retrievers", 2024)."""
    known = idf > 0
    inverse = torch.where(known, 1.0 / idf.clamp_min(1e-6), torch.zeros_like(idf))
    inverse = inverse / inverse[known].mean()
    return torch.where(known, inverse, inverse.max())


def quadratic_warmup(peak: float, step: int, warmup_steps: int) -> float:
    """The regulariser weight at ``step``: grows as (step / warmup_steps)² to ``peak``, then stays there."""
    if warmup_steps <= 0:
        return peak
    return peak * min(1.0, step / warmup_steps) ** 2


def margin_mse(positive: torch.Tensor, negative: torch.Tensor, teacher_positive: torch.Tensor,
               teacher_negative: torch.Tensor) -> torch.Tensor:
    """Distillation (Hofstätter et al.): match the student's positive-minus-negative margin to the teacher's."""
    return F.mse_loss(positive - negative, teacher_positive - teacher_negative)
