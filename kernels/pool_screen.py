"""Exact SPLADE max pooling for CPU inference: an int8 screen with a proven margin, then fp32 on the survivors.

Why: ``out[b, v] = log1p(relu(max_l h_l . w_v + b_v))`` is non-zero for only ~1% of the vocabulary,
yet the plain path pays a full fp32 [tokens x V] GEMM. This CPU has int8 dot products (AVX512-VNNI)
but no bf16 hardware, so an int8 GEMM runs ~2.5x faster than fp32 here while bf16 runs ~3x slower.
The screen finds, per document, every entry whose max logit *could* be positive; only those are
recomputed in fp32, so the output equals the fp32 definition, not an approximation of it.

The margin (all quantities per document, h_t its real tokens, w_v weight rows, H the hidden size):

* Quantise ``h_t ~ s * q_t`` (one scale s per document, q int8) and ``w_v ~ r_v * p_v`` (one scale
  per row). Whatever q and p are, with ``hq_t = s q_t``, ``e_t = h_t - hq_t``, ``f_v = w_v - r_v p_v``
  the identity ``h_t.w_v = hq_t.(r_v p_v) + hq_t.f_v + e_t.w_v`` holds in real arithmetic, so by
  Cauchy-Schwarz ``h_t.w_v <= s r_v (q_t.p_v) + A ||f_v|| + B ||w_v||`` with
  ``A = max_t ||hq_t||``, ``B = max_t ||e_t||``.
* ``q_t.p_v`` is an integer sum of H products of magnitude <= 127^2, computed exactly in int32
  (no overflow for H < 2^17; ``int8_matmul_is_exact`` checks once that this CPU's int8 GEMM does not
  saturate, else the screen is refused). Hence ``max_t h_t.w_v <= s r_v M_v + A||f_v|| + B||w_v||``
  with ``M_v = max_t q_t.p_v``.
* Any fp32 evaluation of the logit (the reference's, ours, any summation order, FMA or not) satisfies
  ``|fl(h.w + b) - (h.w + b)| <= gamma_{H+1} (||h|| ||w|| + |b|)``, ``gamma_n = n u / (1 - n u)``,
  ``u = 2^-24`` (Higham, Thm 3.1 plus one rounding for the bias). We use gamma_{H+2} with
  ``N = max_t ||h_t||``; the spare unit covers the float64 arithmetic of the bound itself (a few
  operations at 2^-53 on terms no larger than ``2 (N ||w_v|| + |b_v|)``).
* Norms are computed in float64 and inflated by ``1 + 2^-40`` (their float64 rounding is < H 2^-53).

So ``U_v = s r_v M_v + b_v + A||f_v|| + B||w_v|| + gamma_{H+2} (N ||w_v|| + |b_v|)`` bounds every
fp32 max logit from above, and ``U_v <= 0`` proves the output entry is 0. Entries with ``U_v > 0``
(~1.6% on splade-tiny over SciFact) are recomputed exactly. The int8 screen keeps the [tokens x chunk] int32
block cache-resident and reduces it at once, per document over its real tokens only (no padding).
Inference only: the result carries no gradient.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass

import torch

_U = 2.0**-24
_NORM_INFLATE = 1.0 + 2.0**-40
_QMAX = 127
# Target bytes of one int32 [tokens x vocab-chunk] block: half of this CPU's 2 MiB L2 per core pair.
_BLOCK_BYTES = 1 << 20
_MIN_CHUNK, _MAX_CHUNK = 512, 8192
_ROW_BUCKET = 32
_CACHE_SIZE = 2


def _gamma(n: int) -> float:
    return n * _U / (1.0 - n * _U)


@functools.lru_cache(maxsize=1)
def int8_matmul_is_exact() -> bool:
    """True when ``torch._int_mm`` returns exact int32 dot products on this CPU, saturating inputs included.

    Non-VNNI int8 kernels sum u8*s8 pairs in int16 with saturation (vpmaddubsw); the margin proof
    needs exact sums, so such CPUs fall back to the fp32 path.
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-_QMAX, _QMAX + 1, (64, 128), dtype=torch.int8, generator=gen)
    b = torch.randint(-_QMAX, _QMAX + 1, (128, 64), dtype=torch.int8, generator=gen)
    a[:8] = _QMAX
    a[8:16] = -_QMAX
    b[:, :8] = _QMAX
    b[:, 8:16] = -_QMAX
    try:
        got = torch._int_mm(a, b)
    except RuntimeError:
        return False
    return torch.equal(got, a.to(torch.int32) @ b.to(torch.int32))


@dataclass(frozen=True)
class ScreenedHead:
    """An LM head prepared for screening: int8 rows, their scales, and the norms the margin needs."""

    weight: torch.Tensor  # [V, H] float32, the exact rows for the recompute
    bias: torch.Tensor  # [V] float32 (zeros when the head has none)
    quantized: torch.Tensor  # [V, H8] int8, H padded to a multiple of 8 for the int8 GEMM
    row_scale: torch.Tensor  # [V] float64, r_v
    weight_norm: torch.Tensor  # [V] float64, ||w_v|| inflated
    residual_norm: torch.Tensor  # [V] float64, ||w_v - r_v p_v|| inflated
    bias_abs: torch.Tensor  # [V] float64, |b_v|
    finite: bool  # False when weight or bias holds inf/nan: no margin exists, every document goes dense

    @classmethod
    def prepare(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> ScreenedHead:
        w = weight.detach().to(torch.float32).contiguous()
        b = torch.zeros(w.shape[0]) if bias is None else bias.detach().to(torch.float32).contiguous()
        w64 = w.double()
        # float32 scales make q * scale and w - q * scale exact in float64 (24 + 7 and < 53 bits).
        scale = (w.abs().amax(dim=1) / _QMAX).double()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(w64 / scale[:, None]).clamp_(-_QMAX, _QMAX)
        residual = w64 - q * scale[:, None]
        pad = (-w.shape[1]) % 8
        quantized = torch.nn.functional.pad(q.to(torch.int8), (0, pad)).contiguous()
        return cls(
            weight=w,
            bias=b,
            quantized=quantized,
            row_scale=scale,
            weight_norm=w64.norm(dim=1) * _NORM_INFLATE,
            residual_norm=residual.norm(dim=1) * _NORM_INFLATE,
            bias_abs=b.double().abs(),
            finite=bool(torch.isfinite(w).all() and torch.isfinite(b).all()),
        )

    def quantize_document(self, hidden: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
        """One document's real tokens [T, H] as (q int8 [T, H8], s, margin [V] float64).

        ``|fl(h_t . w_v + b_v) - (s r_v q_t . p_v + b_v)| <= margin_v`` for every token t and any fp32
        evaluation fl: the ``A||f_v|| + B||w_v|| + gamma (N||w_v|| + |b_v|)`` of the module docstring.
        """
        h64 = hidden.double()
        scale = float(hidden.abs().max() / _QMAX)  # a float32 value, as for the rows
        scale = scale if scale > 0 else 1.0
        q = torch.round(h64 / scale).clamp_(-_QMAX, _QMAX)
        hq = q * scale
        a = float(hq.norm(dim=1).max()) * _NORM_INFLATE
        b = float((h64 - hq).norm(dim=1).max()) * _NORM_INFLATE
        n = float(h64.norm(dim=1).max()) * _NORM_INFLATE
        margin = a * self.residual_norm + b * self.weight_norm
        margin += _gamma(hidden.shape[1] + 2) * (n * self.weight_norm + self.bias_abs)
        pad = self.quantized.shape[1] - hidden.shape[1]
        return torch.nn.functional.pad(q.to(torch.int8), (0, pad)), scale, margin

    def upper_bounds(self, hidden: torch.Tensor) -> torch.Tensor:
        """``U_v`` of the module docstring for one document's real tokens [T, H]: >= every fp32 max logit."""
        q, scale, margin = self.quantize_document(hidden)
        best = self._int8_max(q).double()
        return (self.row_scale * scale) * best + self.bias.double() + margin

    def _int8_max(self, q: torch.Tensor) -> torch.Tensor:
        """``M_v = max_t q_t . p_v`` in int32, one cache-sized vocabulary block at a time.

        Rows are padded to a multiple of ``_ROW_BUCKET`` by repeating row 0 (the max is unchanged):
        the int8 GEMM compiles a kernel per shape, so few shapes keep that cost one-off.
        """
        rows = -(-q.shape[0] // _ROW_BUCKET) * _ROW_BUCKET
        if rows != q.shape[0]:
            q = torch.cat([q, q[:1].expand(rows - q.shape[0], -1)])
        chunk = max(_MIN_CHUNK, min(_MAX_CHUNK, _BLOCK_BYTES // (4 * rows)))
        vocab = self.quantized.shape[0]
        best = torch.empty(vocab, dtype=torch.int32)
        for start in range(0, vocab, chunk):
            block = torch._int_mm(q, self.quantized[start : start + chunk].t())
            torch.amax(block, dim=0, out=best[start : start + chunk])
        return best

    def pool_document(self, hidden: torch.Tensor, out: torch.Tensor) -> None:
        """Write ``log1p(relu(max logit))`` of one document's real tokens [T, H] into ``out`` [V] (zeros)."""
        if hidden.shape[0] == 0:
            return
        if not (self.finite and torch.isfinite(hidden).all()):
            # No margin exists for inf/nan; keep the reference's propagation on this document.
            logits = torch.addmm(self.bias, hidden, self.weight.t()).amax(dim=0)
            out.copy_(torch.log1p(torch.relu(logits)))
            return
        candidates = torch.nonzero(self.upper_bounds(hidden) > 0).squeeze(1)
        if candidates.numel() == 0:
            return
        logits = torch.addmm(self.bias[candidates], hidden, self.weight[candidates].t()).amax(dim=0)
        out[candidates] = torch.log1p(torch.relu(logits))


_prepared: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor | None, ScreenedHead]] = OrderedDict()


def screened_head(weight: torch.Tensor, bias: torch.Tensor | None) -> ScreenedHead:
    """The prepared head for these tensors, cached on storage and version so in-place updates re-prepare.

    The entry keeps the tensors alive, so their addresses cannot be reused by other tensors while
    cached. Inference tensors have no version counter and are prepared afresh on every call.
    """
    if weight.is_inference() or (bias is not None and bias.is_inference()):
        return ScreenedHead.prepare(weight, bias)
    key = (weight.data_ptr(), weight._version, tuple(weight.shape), tuple(weight.stride()))
    key += (None,) if bias is None else (bias.data_ptr(), bias._version, tuple(bias.shape))
    entry = _prepared.get(key)
    if entry is None:
        entry = (weight.detach(), None if bias is None else bias.detach(), ScreenedHead.prepare(weight, bias))
        _prepared[key] = entry
        while len(_prepared) > _CACHE_SIZE:
            _prepared.popitem(last=False)
    return entry[2]


def screen_applies(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the screened path is valid: CPU float32 inference (no gradient needed) with an exact int8 GEMM."""
    tensors = [hidden, weight] + ([] if bias is None else [bias])
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return (
        not needs_grad
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and int8_matmul_is_exact()
    )


def splade_max_pool_screened(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``log1p(relu(max over unmasked positions of hidden @ weight.T + bias))`` as [B, V] float32, not differentiable.

    hidden [B, L, H] float32 on CPU, weight [V, H], bias [V] or None, attention_mask [B, L] (non-zero = keep).
    Equal to ``splade_max_pool_reference`` up to fp32 summation order; see the module docstring.
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be [batch, seq, hidden] and attention_mask [batch, seq]; got {tuple(hidden.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    if not screen_applies(hidden, weight, bias):
        raise ValueError(
            "splade_max_pool_screened needs float32 CPU tensors without gradient, on a CPU with exact int8 "
            "matmul; use kernels.pool_torch.splade_max_pool_chunked otherwise"
        )
    head = screened_head(weight, bias)
    keep = attention_mask.bool()
    out = torch.zeros(hidden.shape[0], weight.shape[0], dtype=torch.float32)
    with torch.no_grad():
        for row in range(hidden.shape[0]):
            head.pool_document(hidden[row][keep[row]].contiguous(), out[row])
    return out
