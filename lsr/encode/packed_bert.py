"""Padding-free forward of a BERT encoder, for batched inference.

Why: a batch pads every text to its longest, and a BERT layer's linear maps, GELU and LayerNorms
cost as much per pad as per token. In a service micro-batch of SciFact queries (mean 22 tokens,
longest up to 50) a third or more of the work was padding. Here those run on the real tokens only,
packed as [tokens, hidden]. On CPU attention runs text by text, so a text's vector is the same bits
whatever else is in its batch (see ``_attention``); on a GPU it runs on the padded
[batch, heads, length, head_dim] layout with pad keys masked, one launch per layer. Same arithmetic as
``BertModel`` in eval mode up to fp32 summation order; any other model keeps its own forward (``supports``).
The SPLADE encoder's GPU forward keeps the whole batch padded (``masked_lm_hidden_padded``): no host sync; in
bf16/fp16 its norms stay fp32 (``keep_norms_float32``).
The dense encoder pools it by mean (``mean_pooled``), the SPLADE encoder through the MLM transform
(``masked_lm_hidden``): a micro-batch of SciFact queries pads to nearly twice its tokens.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from lsr.encode.native_bert import NativeBertForMaskedLM, NativeBertModel

MIN_CPU_ROWS = 16
AMX_COLUMNS = 256
AMX_OTHER_ORDER = (33, 384)  # row counts whose plain bf16 product sums in another order (AMX)


def supports(model: torch.nn.Module) -> bool:
    """True for a plain ``BertModel`` encoder in eval mode with absolute positions (MiniLM, BERT, …), and for
    ``native_bert``'s, which have no other forward."""
    if isinstance(model, NativeBertModel):
        return True
    from transformers import BertModel

    config = getattr(model, "config", None)
    return (
        type(model) is BertModel
        and not model.training
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and not getattr(config, "is_decoder", False)
    )


def supports_masked_lm(model: torch.nn.Module) -> bool:
    """True for a ``BertForMaskedLM`` (SPLADE's usual backbone) whose encoder ``supports`` the packed forward."""
    if isinstance(model, NativeBertForMaskedLM):
        return True
    from transformers import BertForMaskedLM

    return type(model) is BertForMaskedLM and supports(model.bert)


def masked_lm_hidden(model: torch.nn.Module, input_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The vectors a ``BertForMaskedLM``'s vocabulary projection would take, [B, L, H] with zeros at unkept positions.

    The SPLADE encoder pools these through its own LM head; only the transform (dense, GELU, LayerNorm) runs here.
    """
    tokens = last_hidden_packed(model.bert, input_ids, keep, then=model.cls.predictions.transform)
    hidden = tokens.new_zeros(*keep.shape, tokens.shape[-1])
    hidden[keep] = tokens
    return hidden


def masked_lm_hidden_padded(model: torch.nn.Module, input_ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``masked_lm_hidden`` in the padded layout, for a GPU: [B, L, H] in the linear maps' dtype, pad positions left
    as computed.

    Packing gathers the kept tokens by a boolean mask, whose size the host must read back: a GPU would stall on
    it at every batch, and the pooling kernel's launch tables were measured on padded batches anyway. The
    pooling masks pad positions out, so their values do not matter. Each linear map takes its own dtype's input,
    so a model whose norms ``keep_norms_float32`` left in fp32 carries its residual stream in fp32.
    """
    dtype = model.bert.encoder.layer[0].attention.self.query.weight.dtype
    positions = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    x = model.bert.embeddings(input_ids=input_ids, position_ids=positions)
    pad_keys = keep[:, None, None, :]
    for layer in model.bert.encoder.layer:
        self_attention = layer.attention.self
        inputs = x.to(dtype)
        q, k, v = (proj(inputs) for proj in (self_attention.query, self_attention.key, self_attention.value))
        context = _heads_attend(q, k, v, self_attention.num_attention_heads, self_attention.attention_head_size, pad_keys)
        x = layer.attention.output.LayerNorm(layer.attention.output.dense(context) + x)
        x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x.to(dtype))) + x)
    transform = model.cls.predictions.transform
    return transform(x.to(transform.dense.weight.dtype)).to(dtype)


def keep_norms_float32(model: torch.nn.Module) -> None:
    """Put a half-precision BERT MLM's embeddings, LayerNorms and MLM transform back in fp32, for
    ``masked_lm_hidden_padded``; the linear maps of its layers (and the vocabulary projection) stay bf16/fp16.

    Why: in all-bf16 the residual stream and the transform's output are rounded to 8 bits at every step. Against
    the fp32 model on 256 SciFact documents (bf16, CPU) splade-tiny's SPLADE vectors had relative error 1.4e-2
    all-bf16 and 8.2e-3 this way; a random 12-layer BERT-base 3.8e-2 and 1.9e-2, where rounding only the linear
    maps' inputs to bf16 already gives 1.7e-2. The cost is a cast before each layer's linear maps.
    """
    for module in (model.bert.embeddings, model.cls.predictions.transform, *(
            norm for layer in model.bert.encoder.layer for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm))):
        module.float()


def mean_pooled(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the last hidden states over each text's real tokens: [B, H] float32 (a bf16 sum of 256 tokens
    would keep 8 bits). Every row needs ≥ 1 real token."""
    keep = mask.bool()
    tokens = last_hidden_packed(model, input_ids, keep).float()
    owner = torch.arange(keep.shape[0], device=keep.device)[:, None].expand_as(keep)[keep]
    sums = torch.zeros(keep.shape[0], tokens.shape[1], dtype=torch.float32, device=tokens.device)
    sums.index_add_(0, owner, tokens)
    return sums / keep.sum(dim=1, keepdim=True).float()


def last_hidden_packed(model: torch.nn.Module, input_ids: torch.Tensor, keep: torch.Tensor,
                       then: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The last hidden state of every kept position, [kept tokens, H], in row-major order of ``keep``; ``then``
    (the MLM transform) maps it row by row, on the same rows as the layers.

    On CPU fewer than ``MIN_CPU_ROWS`` tokens run with zero rows appended (dropped at the end): MKL multiplies
    so few rows with other kernels, whose roundings differ, so a lone short query ("x": 3 tokens) would not get
    the bits it gets in a batch. From 16 rows on, each row's product is the same whatever the row count (measured
    up to 1,100 rows on an EPYC from 12 rows, 1 and 2 threads; on a Sapphire Rapids from 16 rows on one thread, which
    every CPU batch runs on); ``tests/test_encoders.py`` holds the encoders to it.
    """
    positions = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    x = model.embeddings(input_ids=input_ids[keep][None], position_ids=positions[keep][None])[0]
    tokens = x.shape[0]
    if x.device.type == "cpu" and tokens < MIN_CPU_ROWS:
        x = torch.cat([x, x.new_zeros(MIN_CPU_ROWS - tokens, x.shape[1])])
    for layer in model.encoder.layer:
        attention = layer.attention
        context = _attention(attention.self, x, keep)
        x = attention.output.LayerNorm(attention.output.dense(context) + x)
        x = layer.output.LayerNorm(_down_projection(layer.output.dense, layer.intermediate(x)) + x)
    return (x if then is None else then(x))[:tokens]


def _down_projection(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` for the feed-forward's way back (intermediate → hidden), each row the same bits in any batch.

    On a CPU with AMX, oneDNN's bf16 kernel sums this product's long reduction (MiniLM: 1,536) in one order up to
    32 rows and from 384 rows on, and in another between (``AMX_OTHER_ORDER``), so a served query's dense vector
    moved with its micro-batch (measured on a Sapphire Rapids core: ~5 % of rows differ in their last bf16 bit).
    There the transposed product, weight × xᵀ, over at most ``AMX_COLUMNS`` rows at a time gives the first order's
    bits (checked from 1 to 6,000 rows, 1 and 2 threads); document batches, thousands of rows, keep the plain
    product's speed. Other CPUs and dtypes keep the plain product.
    """
    if (x.device.type != "cpu" or x.dtype != torch.bfloat16 or not AMX_OTHER_ORDER[0] <= len(x) < AMX_OTHER_ORDER[1]
            or not _cpu_has_amx()):
        return linear(x)
    weight, bias = linear.weight, linear.bias
    parts = [weight @ part.t() if bias is None else torch.addmm(bias[:, None], weight, part.t())
             for part in x.split(AMX_COLUMNS)]
    return torch.cat(parts, dim=1).t().contiguous()


def _cpu_has_amx() -> bool:
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def _attention(self_attention: torch.nn.Module, x: torch.Tensor, keep: torch.Tensor, *,
               per_text: bool | None = None) -> torch.Tensor:
    """Multi-head self-attention of packed tokens ``x`` [N, H] within their own texts; returns [N, H].

    On CPU each text attends alone. In the padded layout the batch's longest text sets the row length, and
    the CPU kernel groups its sums by that length: a bf16 query vector moved by ~1e-3 with its micro-batch
    neighbours. Text by text it is the same bits in any batch and at any thread count (the linear maps,
    LayerNorms and GELU are row by row already), at no measured cost on 2 cores. On a GPU one padded launch
    a layer beats a launch a text. ``per_text`` None: text by text on CPU only.
    """
    heads, head_dim = self_attention.num_attention_heads, self_attention.attention_head_size
    q, k, v = (proj(x) for proj in (self_attention.query, self_attention.key, self_attention.value))
    if x.device.type == "cpu" if per_text is None else per_text:
        lengths = keep.sum(dim=1).tolist()
        spare = x.shape[0] - sum(lengths)  # ``last_hidden_packed``'s appended rows: no text's, zero context
        texts = zip(*(t.split(lengths + [spare])[: len(lengths)] for t in (q, k, v)))
        attended = [_heads_attend(qt, kt, vt, heads, head_dim, None)[0] for qt, kt, vt in texts]
        return torch.cat(attended + [x.new_zeros(spare, x.shape[1])])
    batch, length = keep.shape

    def padded(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros(batch, length, heads * head_dim)
        out[keep] = t
        return out

    return _heads_attend(padded(q), padded(k), padded(v), heads, head_dim, keep[:, None, None, :])[keep]


def _heads_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, head_dim: int,
                  mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of [B, L, H] (or [L, H]: one text) queries, keys and values split into heads; [B, L, H] out."""
    split = lambda t: t.view(-1, t.shape[-2], heads, head_dim).transpose(1, 2)  # noqa: E731
    context = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
    return context.transpose(1, 2).reshape(context.shape[0], context.shape[2], heads * head_dim)
