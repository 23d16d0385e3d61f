"""Plain-PyTorch SPLADE pooling: the naive reference and the memory-bounded chunked path.

``out[b, v] = log1p(relu(max_{l unmasked} hidden[b, l] . weight[v] + bias[v]))``, 0 where every
position is masked. log1p∘relu is monotonic, so max-pooling raw logits and applying the
activation once is exact; the chunked path exploits that to never hold B×L×V.
"""

from __future__ import annotations

import torch

DEFAULT_VOCAB_CHUNK = 4096


def splade_max_pool_reference(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Naive definition: materialise all logits, activate, masked max. Used as the test oracle."""
    logits = hidden @ weight.t()
    if bias is not None:
        logits = logits + bias
    act = torch.log1p(torch.relu(logits))
    act = act.masked_fill(~attention_mask.bool().unsqueeze(-1), 0.0)
    return act.amax(dim=1)


def _logit_chunks(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, vocab_chunk: int):
    """Yield [B, L, chunk] logits for consecutive vocabulary chunks; only one chunk lives at a time."""
    for start in range(0, weight.shape[0], vocab_chunk):
        logits = hidden @ weight[start : start + vocab_chunk].t()
        yield logits if bias is None else logits + bias[start : start + vocab_chunk]


def splade_max_pool_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    attention_mask: torch.Tensor,
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
) -> torch.Tensor:
    """Loop over vocabulary chunks: logits of one chunk, masked max before activation, activate once.

    Peak extra memory is B×L×vocab_chunk. Autograd keeps only the argmax indices per chunk
    (matmul saves its inputs, max saves indices), so training through it stays bounded too.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [batch, seq, hidden], got shape {tuple(hidden.shape)}")
    masked = ~attention_mask.bool().unsqueeze(-1)
    chunks = [
        logits.masked_fill(masked, float("-inf")).amax(dim=1)
        for logits in _logit_chunks(hidden, weight, bias, vocab_chunk)
    ]
    pooled = torch.cat(chunks, dim=1)
    # relu maps the all-masked -inf to 0, so fully masked rows come out as zeros.
    return torch.log1p(torch.relu(pooled))


def splade_sum_pool_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    attention_mask: torch.Tensor,
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
) -> torch.Tensor:
    """Sum pooling (SPLADE v1): the activation must precede the sum, so it runs per chunk."""
    keep = attention_mask.to(hidden.dtype).unsqueeze(-1)
    chunks = [
        (torch.log1p(torch.relu(logits)) * keep).sum(dim=1)
        for logits in _logit_chunks(hidden, weight, bias, vocab_chunk)
    ]
    return torch.cat(chunks, dim=1)
