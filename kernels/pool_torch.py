"""Plain-PyTorch SPLADE pooling: the naive reference and the memory-bounded chunked path.

``out[b, v] = log1p(relu(max_{l unmasked} hidden[b, l] . weight[v] + bias[v]))``, 0 where every
position is masked. log1p∘relu is monotonic, so max-pooling raw logits and applying the
activation once is exact; the chunked path exploits that to never hold B×L×V.
"""

from __future__ import annotations

import torch

DEFAULT_VOCAB_CHUNK = 4096


def check_pool_inputs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      attention_mask: torch.Tensor) -> None:
    """One clear error for shapes every implementation refuses: a [1, L] mask for two documents was broadcast, a
    2-D hidden gave [B, V] of the wrong rows, and H = 0 left the packed Triton kernel's output unwritten."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [batch, seq, hidden], got shape {tuple(hidden.shape)}")
    if hidden.shape[2] == 0:
        raise ValueError("hidden must have a hidden size of at least 1, got 0")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"weight must be [vocab, {hidden.shape[2]}] to match hidden, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [vocab]=[{weight.shape[0]}] or None, got {tuple(bias.shape)}")
    if tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"attention_mask must be [batch, seq]={tuple(hidden.shape[:2])}, got {tuple(attention_mask.shape)}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"hidden and weight must share one dtype, got {hidden.dtype} and {weight.dtype}; cast them "
                        "(e.g. weight.to(hidden.dtype))")


def splade_max_pool_reference(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Naive definition: materialise all logits, activate, masked max. Used as the test oracle.

    Masked positions are zeroed before the product: an inf or nan there, times its zero gradient, had made every
    weight gradient nan."""
    check_pool_inputs(hidden, weight, bias, attention_mask)
    keep = attention_mask.bool().unsqueeze(-1)
    logits = hidden.masked_fill(~keep, 0.0) @ weight.t()
    if bias is not None:
        logits = logits + bias
    act = torch.log1p(torch.relu(logits)).masked_fill(~keep, 0.0)
    # max, not amax: a tie's gradient goes to its first position, as the chunked, screened and Triton paths send it
    return act.max(dim=1).values if act.shape[1] else act.sum(dim=1)  # no positions: zeros, still in the graph


def _logit_chunks(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, vocab_chunk: int):
    """Yield [B, L, chunk] logits for consecutive vocabulary chunks; only one chunk lives at a time."""
    for start in range(0, weight.shape[0], vocab_chunk):
        logits = hidden @ weight[start : start + vocab_chunk].t()
        yield logits if bias is None else logits + bias[start : start + vocab_chunk]


class SparseMaxPoolGrad(torch.autograd.Function):
    """The backward of a max pool whose forward saved (hidden, weight, max logits [B, V], their positions [B, V]).

    Only entries whose pooled logit is positive carry gradient (relu), and each flows to exactly one
    position (the argmax), so the backward gathers/scatter-adds over those non-zeros, typically ~1% of
    B×V, instead of rebuilding B×L×V. ``index_add_`` on the CPU runs in order: gradients are deterministic.
    Subclasses (the chunked and the screened forward) call ``save`` and return ``log1p(relu(pooled))``.
    """

    @staticmethod
    def save(ctx, hidden, weight, bias, pooled, where) -> torch.Tensor:
        ctx.save_for_backward(hidden, weight, pooled, where)
        ctx.has_bias = bias is not None
        # relu maps an all-masked -inf to 0, so fully masked rows come out as zeros.
        return torch.log1p(torch.relu(pooled))

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, pooled, where = ctx.saved_tensors
        rows, terms = torch.nonzero(pooled > 0, as_tuple=True)
        grad = grad_out[rows, terms] / (1 + pooled[rows, terms])  # d log1p(x)/dx on the active entries
        positions = rows * hidden.shape[1] + where[rows, terms]
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            flat = torch.zeros(hidden.shape[0] * hidden.shape[1], hidden.shape[2], dtype=hidden.dtype, device=hidden.device)
            flat.index_add_(0, positions, grad[:, None].to(weight.dtype) * weight[terms])
            grad_hidden = flat.view_as(hidden)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight).index_add_(0, terms, grad[:, None].to(hidden.dtype)
                                                              * hidden.reshape(-1, hidden.shape[2])[positions])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = torch.zeros(weight.shape[0], dtype=grad.dtype, device=grad.device).index_add_(0, terms, grad)
        return grad_hidden, grad_weight, grad_bias, None, None


class _ChunkedMaxPool(SparseMaxPoolGrad):
    """Forward: per vocabulary chunk, masked max + argmax of the logits (no graph kept). Backward: sparse."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, attention_mask, vocab_chunk):
        keep = attention_mask.bool()
        masked = ~keep.unsqueeze(-1)
        best, where = [], []
        with torch.no_grad():
            for start in range(0, weight.shape[0] if hidden.shape[1] else 0, vocab_chunk):
                # Masked in place and biased after the max: each [B, L, chunk] block is written once and read once.
                logits = (hidden @ weight[start : start + vocab_chunk].t()).masked_fill_(masked, float("-inf"))
                value, index = logits.max(dim=1)
                best.append(value)
                where.append(index)
        if not best:  # no positions (every entry is a fully masked row's -inf) or no vocabulary
            best = [hidden.new_full((hidden.shape[0], weight.shape[0]), float("-inf"))]
            where = [torch.zeros(best[0].shape, dtype=torch.int64, device=hidden.device)]
        pooled = torch.cat(best, dim=1)
        if bias is not None:
            # fl(x + b) is monotone in x, so max(fl(x + b)) = fl(max(x) + b) exactly; a row with no kept position
            # stays -inf (an inf bias would make it nan).
            pooled = torch.where(keep.any(dim=1, keepdim=True), pooled + bias, pooled.to(torch.result_type(pooled, bias)))
        return SparseMaxPoolGrad.save(ctx, hidden, weight, bias, pooled, torch.cat(where, dim=1))


def splade_max_pool_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    attention_mask: torch.Tensor,
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
) -> torch.Tensor:
    """Loop over vocabulary chunks: logits of one chunk, masked max before activation, activate once.

    Peak extra memory is B×L×vocab_chunk; autograd keeps the inputs and the [B, V] argmax, and the
    backward touches only the non-zero outputs (``_ChunkedMaxPool``), so training through it is cheap too.
    """
    check_pool_inputs(hidden, weight, bias, attention_mask)
    return _ChunkedMaxPool.apply(hidden, weight, bias, attention_mask, vocab_chunk)


def splade_sum_pool_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    attention_mask: torch.Tensor,
    vocab_chunk: int = DEFAULT_VOCAB_CHUNK,
) -> torch.Tensor:
    """Sum pooling (SPLADE v1): the activation must precede the sum, so it runs per chunk. Masked positions are
    dropped, not multiplied by 0 (an inf there made the row nan), and any non-zero mask value keeps a position, as
    the max pool reads it."""
    check_pool_inputs(hidden, weight, bias, attention_mask)
    drop = ~attention_mask.bool().unsqueeze(-1)
    hidden = hidden.masked_fill(drop, 0.0)
    chunks = [
        torch.log1p(torch.relu(logits)).masked_fill(drop, 0.0).sum(dim=1)
        for logits in _logit_chunks(hidden, weight, bias, vocab_chunk)
    ]
    return torch.cat(chunks, dim=1) if chunks else hidden.new_zeros(hidden.shape[0], 0)
