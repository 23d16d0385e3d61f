"""Padding-free forward of a BERT encoder, for batched inference.

Why: a batch pads every text to its longest, and a BERT layer's linear maps, GELU and LayerNorms
cost as much per pad as per token. In a service micro-batch of SciFact queries (mean 22 tokens,
longest up to 50) a third or more of the work was padding. Here those run on the real tokens only,
packed as [tokens, hidden]; only attention sees the padded [batch, heads, length, head_dim] layout,
with pad keys masked out. Same arithmetic as ``BertModel`` in eval mode up to fp32 summation order;
any other model keeps its own forward (``supports``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supports(model: torch.nn.Module) -> bool:
    """True for a plain ``BertModel`` encoder in eval mode with absolute positions (MiniLM, BERT, …)."""
    from transformers import BertModel

    config = getattr(model, "config", None)
    return (
        type(model) is BertModel
        and not model.training
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and not getattr(config, "is_decoder", False)
    )


def mean_pooled(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the last hidden states over each text's real tokens: [B, H] float32 (a bf16 sum of 256 tokens
    would keep 8 bits). Every row needs ≥ 1 real token."""
    keep = mask.bool()
    tokens = last_hidden_packed(model, input_ids, keep).float()
    owner = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)[keep]
    sums = torch.zeros(keep.shape[0], tokens.shape[1], dtype=torch.float32, device=tokens.device)
    sums.index_add_(0, owner, tokens)
    return sums / keep.sum(dim=1, keepdim=True).float()


def last_hidden_packed(model: torch.nn.Module, input_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The last hidden state of every kept position, [kept tokens, H], in row-major order of ``keep``."""
    positions = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    x = model.embeddings(input_ids=input_ids[keep][None], position_ids=positions[keep][None])[0]
    for layer in model.encoder.layer:
        attention = layer.attention
        context = _attention(attention.self, x, keep)
        x = attention.output.LayerNorm(attention.output.dense(context) + x)
        x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
    return x


def _attention(self_attention: torch.nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention of packed tokens ``x`` [N, H] within their own texts; returns [N, H]."""
    batch, length = keep.shape
    heads, head_dim = self_attention.num_attention_heads, self_attention.attention_head_size

    def padded(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros(batch, length, heads * head_dim)
        out[keep] = t
        return out.view(batch, length, heads, head_dim).transpose(1, 2)

    q, k, v = (padded(proj(x)) for proj in (self_attention.query, self_attention.key, self_attention.value))
    context = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
    return context.transpose(1, 2).reshape(batch, length, heads * head_dim)[keep]
