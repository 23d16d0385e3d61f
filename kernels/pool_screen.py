"""Exact SPLADE max pooling for CPU inference: an int8 or bf16 screen with a proven margin, then fp32 on the survivors.

Why: ``out[b, v] = log1p(relu(max_l h_l . w_v + b_v))`` is non-zero for only ~1% of the vocabulary,
yet the plain path pays a full fp32 [tokens x V] GEMM. On a CPU with int8 dot products (AVX512-VNNI) an int8
GEMM runs ~2.5x faster than fp32 (on an EPYC, twice its bf16); with AMX a bf16 one runs 5x the int8 one.
The screen finds, per document, every entry whose max logit *could* be positive; only those are
recomputed in fp32, so the output equals the fp32 definition, not an approximation of it.

The margin (all quantities per document, h_t its real tokens, w_v weight rows, H the hidden size):

* Quantise ``h_t ~ s * q_t`` (one scale s per document, q int8) and ``w_v ~ r_v * p_v`` (one scale
  per row). Whatever q and p are, with ``hq_t = s q_t``, ``e_t = h_t - hq_t``, ``f_v = w_v - r_v p_v``
  the identity ``h_t.w_v = hq_t.(r_v p_v) + hq_t.f_v + e_t.w_v`` holds in real arithmetic, so by
  Cauchy-Schwarz ``h_t.w_v <= s r_v (q_t.p_v) + A ||f_v|| + B ||w_v||`` with
  ``A = max_t ||hq_t||``, ``B = max_t ||e_t||``.
* ``q_t.p_v`` is an integer sum of H products of magnitude <= 127^2, computed exactly in int32
  (no overflow for H <= 133,144, ``MAX_INT8_HIDDEN``; ``int8_matmul_is_exact`` checks once that this CPU's int8
  GEMM does not saturate, else the screen is refused). Hence ``max_t h_t.w_v <= s r_v M_v + A||f_v|| + B||w_v||``
  with ``M_v = max_t q_t.p_v``.
* Any fp32 evaluation of the logit (the reference's, ours, any summation order, FMA or not) satisfies
  ``|fl(h.w + b) - (h.w + b)| <= gamma_{H+1} (||h|| ||w|| + |b|)``, ``gamma_n = n u / (1 - n u)``,
  ``u = 2^-24`` (Higham, Thm 3.1 plus one rounding for the bias). We use gamma_{H+2} with
  ``N = max_t ||h_t||``; the spare unit covers the float64 arithmetic of the bound itself (a few
  operations at 2^-53 on terms no larger than ``2 (N ||w_v|| + |b_v|)``).
* Higham's bound assumes no underflow: a product that underflows errs by at most 2^-150 more and a sum of
  denormals is exact, so ``(H + 2) 2^-125`` is added for it (a logit just below 0 evaluated to +2.2e-44).
* Norms are computed in float64 and inflated by ``1 + 2^-40`` (their float64 rounding is < H 2^-53).

So ``U_v = s r_v M_v + b_v + A||f_v|| + B||w_v|| + gamma_{H+2} (N ||w_v|| + |b_v|) + (H + 2) 2^-125`` bounds every
fp32 max logit from above, and ``U_v <= 0`` proves the output entry is 0. Entries with ``U_v > 0``
(~1.6% on splade-tiny over SciFact) are recomputed exactly. The int8 screen runs the tokens of many
documents through one GEMM (a padded position repeats a real token of its document, which changes
no max), keeps each [rows x chunk] int32 block cache-resident and reduces it at once.
The bf16 screen (``precision="bf16"``, chosen on CPUs with AMX, where a bf16 GEMM ran 5x the int8 one: 413
against 83 GFLOP/s on one Sapphire Rapids thread, while an EPYC's VNNI int8 runs twice its bf16) is the same proof
with ``hq_t = bf16(h_t)`` and ``r_v p_v = bf16(w_v)`` (denormals flushed by us, so the GEMM's own flushing of inputs
changes nothing). The GEMM's products are exact in fp32; its fp32 sums err by at most ``gamma_H ||hq_t|| ||p_v||``
(any order) plus ``(H + 2) 2^-125`` for denormal results it flushes, and its bf16 output ``y`` rounds to nearest,
so the sum is at most ``g(y) = y + |y| u8 / (1 - u8)``, ``u8 = 2^-8``. ``g`` is increasing, so
``U_v = g(max_t y_tv) + gamma_H A ||p_v|| + (H + 2) 2^-125`` plus the terms above bounds every fp32 max logit.
``bf16_matmul_is_sound`` checks once that this CPU's bf16 GEMM keeps within that.
Training runs through it too: the forward also records where each surviving entry's max lies, and the chunked path's
sparse backward (``SparseMaxPoolGrad``) needs nothing else, since a screened-out entry's relu is zero and so is its
gradient. On splade-tiny (batch 16, 128 tokens) a CPU training step took 0.42 s instead of 1.71 s through the chunked
path, whose bias add, mask and max over [B, L, chunk] blocks cost nearly three times its GEMM; ``lsr train``'s
204 default steps on SciFact ended with the same weights, bit for bit, on a Sapphire Rapids.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .pool_torch import SparseMaxPoolGrad
from .threads import one_intra_op_thread

_U = 2.0**-24
_U_BF16 = 2.0**-8
_BF16_TINY = 2.0**-126  # smallest normal: the GEMM flushes anything below it
_NORM_INFLATE = 1.0 + 2.0**-40
_QMAX = 127
# Target bytes of one int32 [rows x vocab-chunk] block (this CPU: 2 MiB L2 per core pair; measured
# best at 256 rows x 2048 and 16-32 rows x 8192).
_BLOCK_BYTES = 2 << 20
_MIN_CHUNK, _MAX_CHUNK = 512, 8192
_ROW_BUCKET = 16
# Rows of one screened group of documents: the int8 GEMM is near its peak rate from ~256 rows on,
# and a group's [docs, V] float64 bounds stay a few MB.
_GROUP_ROWS = 512
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


def _bf16_flushed(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to bf16 with denormals set to zero, as the AMX GEMM reads them."""
    b = x.to(torch.bfloat16)
    return torch.where(b.abs() < _BF16_TINY, torch.zeros_like(b), b)


def _bf16_max(y: torch.Tensor, dim: int) -> torch.Tensor:
    """``y.amax(dim)`` of a bf16 tensor (up to the sign of a zero), read through its bits as int16: 4x faster on a CPU.

    A bf16 number's bits order like an int16's among values with the sign bit clear, and reversed among those with
    it set, all of which sit below the former. So where some value has its sign bit clear, the int16 max is the
    max; where none has, the max is the int16 min.
    """
    bits = y.view(torch.int16)
    high = bits.amax(dim)
    return torch.where(high >= 0, high, bits.amin(dim)).view(torch.bfloat16)


def _bf16_output_bound(y: torch.Tensor) -> torch.Tensor:
    """``g(y)`` of the module docstring in float64, inflated to cover its own rounding."""
    return y + y.abs() * (_U_BF16 / (1.0 - _U_BF16) * _NORM_INFLATE + 2.0**-50)


@functools.lru_cache(maxsize=1)
def bf16_matmul_is_sound() -> bool:
    """True when this CPU's bf16 GEMM (bf16 output) stays within the margin the bf16 screen assumes.

    Checked on random and large-magnitude rows at splade-tiny's hidden size and a BERT-base one.
    """
    gen = torch.Generator().manual_seed(0)
    for h in (128, 768):
        a = _bf16_flushed(torch.randn(64, h, generator=gen) * 8)
        b = _bf16_flushed(torch.randn(512, h, generator=gen) / 4)
        a[:4] = a[:4].abs() * 1000
        b[:4] = b[:4].abs()
        try:
            y = (a @ b.t()).double()
        except RuntimeError:
            return False
        a64, b64 = a.double(), b.double()
        exact = a64 @ b64.t()
        slack = _gamma(h) * a64.norm(dim=1)[:, None] * b64.norm(dim=1)[None, :] + (h + 2) * 2.0**-125
        if not bool(((exact <= _bf16_output_bound(y) + slack) & (exact >= -_bf16_output_bound(-y) - slack)).all()):
            return False
    return True


def best_precision() -> str | None:
    """The screen this CPU runs fastest and exactly: bf16 with AMX, else int8 with an exact int8 GEMM, else None.

    ``LSR_SCREEN`` (int8 or bf16) picks one instead, where that GEMM is sound (None otherwise: no screen).
    """
    forced = os.environ.get("LSR_SCREEN")
    if forced:
        if forced not in PRECISIONS:
            raise ValueError(f"LSR_SCREEN={forced!r} is not a screen; use {' or '.join(PRECISIONS)}")
        return forced if PRECISIONS[forced]() else None
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    if amx and bf16_matmul_is_sound():
        return "bf16"
    return "int8" if int8_matmul_is_exact() else None


PRECISIONS = {"int8": int8_matmul_is_exact, "bf16": bf16_matmul_is_sound}  # each screen and its soundness check
MAX_INT8_HIDDEN = (2**31 - 1) // 127**2  # 133,144: the widest hidden size whose int8 dot products fit int32


@dataclass(frozen=True)
class ScreenedHead:
    """An LM head prepared for screening: int8 (or bf16) rows, their scales, and the norms the margin needs."""

    weight: torch.Tensor  # [V, H] float32, the exact rows for the recompute
    bias: torch.Tensor  # [V] float32 (zeros when the head has none)
    precision: str  # "int8" or "bf16": the screen's GEMM
    quantized: torch.Tensor  # int8 [V, H8] (H padded to a multiple of 8 for the int8 GEMM), or bf16 [V, H]
    row_scale: torch.Tensor  # [V] float64, r_v (ones for bf16)
    # [4, V] float64: ||w_v - r_v p_v||, ||w_v|| (both inflated), gamma_{H+2} |b_v| plus the underflow slack (twice for bf16,
    # whose GEMM also flushes denormals) and ||r_v p_v|| (inflated; bf16 only, else zeros); a document's margin is its coefficients
    # (A, B + gamma_{H+2} N, 1, gamma_H A for bf16) times these rows.
    margin_rows: torch.Tensor
    bound_rows: torch.Tensor  # margin_rows with b_v added to the third row: the U_v terms that need no GEMM
    finite: bool  # False when weight or bias holds inf/nan: no margin exists, every document goes dense

    @classmethod
    def prepare(cls, weight: torch.Tensor, bias: torch.Tensor | None, precision: str = "int8") -> ScreenedHead:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown screen precision {precision!r}; use {' or '.join(PRECISIONS)}")
        w = weight.detach().to(torch.float32).contiguous()
        b = torch.zeros(w.shape[0]) if bias is None else bias.detach().to(torch.float32).contiguous()
        w64 = w.double()
        hidden_size = w.shape[1]
        # Higham's bound assumes no underflow; an fp32 product that underflows errs by at most 2^-150 more (sums
        # of denormals are exact), so (H + 2) 2^-125 covers it with room: a logit 0.8 of the smallest denormal
        # below 0 had evaluated to +2.2e-44 in fp32 and been screened out.
        constant = _gamma(hidden_size + 2) * b.double().abs() + (hidden_size + 2) * 2.0**-125
        if precision == "bf16":
            quantized = _bf16_flushed(w).contiguous()
            scale = torch.ones(w.shape[0], dtype=torch.float64)
            approx = quantized.double()
            constant = constant + (hidden_size + 2) * 2.0**-125
            gemm_norm = approx.norm(dim=1) * _NORM_INFLATE
        else:
            # float32 scales make q * scale and w - q * scale exact in float64 (24 + 7 and < 53 bits).
            scale = (w.abs().amax(dim=1) / _QMAX).double()
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = torch.round(w64 / scale[:, None]).clamp_(-_QMAX, _QMAX)
            approx = q * scale[:, None]
            pad = (-hidden_size) % 8
            quantized = torch.nn.functional.pad(q.to(torch.int8), (0, pad)).contiguous()
            gemm_norm = torch.zeros_like(constant)
        margin_rows = torch.stack([
            (w64 - approx).norm(dim=1) * _NORM_INFLATE,
            w64.norm(dim=1) * _NORM_INFLATE,
            constant,
            gemm_norm,
        ])
        bound_rows = margin_rows.clone()
        bound_rows[2] += b.double()
        return cls(
            weight=w,
            bias=b,
            precision=precision,
            quantized=quantized,
            row_scale=scale,
            margin_rows=margin_rows,
            bound_rows=bound_rows,
            finite=bool(torch.isfinite(w).all() and torch.isfinite(b).all()),
        )

    def quantize(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Documents [D, T, H] whose every row is a real token → (q int8 [D, T, H8], s [D], coefficients [D, 3]).

        ``coefficients @ margin_rows`` is the margin of the module docstring,
        ``A||f_v|| + B||w_v|| + gamma (N||w_v|| + |b_v|)``: ``|fl(h_t . w_v + b_v) - (s r_v q_t . p_v + b_v)|``
        stays below it for every token t and any fp32 evaluation fl. A padding row may repeat a
        real one: every per-document quantity here is a max over rows.
        """
        h64 = hidden.double()
        if self.precision == "bf16":
            q = _bf16_flushed(hidden)
            scale = torch.ones(hidden.shape[0], dtype=torch.float64)
            hq = q.double()
        else:
            scale = hidden.abs().amax(dim=(1, 2)) / _QMAX  # float32 values, as for the rows
            scale = torch.where(scale > 0, scale, torch.ones_like(scale)).double()
            hq = torch.round(h64 / scale[:, None, None]).clamp_(-_QMAX, _QMAX)
            pad = self.quantized.shape[1] - hidden.shape[2]
            q, hq = torch.nn.functional.pad(hq.to(torch.int8), (0, pad)), hq * scale[:, None, None]
        a = hq.norm(dim=2).amax(dim=1) * _NORM_INFLATE
        b = (h64 - hq).norm(dim=2).amax(dim=1) * _NORM_INFLATE
        n = h64.norm(dim=2).amax(dim=1) * _NORM_INFLATE
        gemm = _gamma(hidden.shape[2]) * a if self.precision == "bf16" else torch.zeros_like(a)
        coefficients = torch.stack([a, b + _gamma(hidden.shape[2] + 2) * n, torch.ones_like(a), gemm], dim=1)
        return q, scale, coefficients

    def upper_bounds(self, hidden: torch.Tensor) -> torch.Tensor:
        """``U_v`` of the module docstring per document [D, T, H] (rows all real): [D, V] >= every fp32 max logit.

        All documents' rows go through one int8 GEMM: at 16 rows it runs at a third of the rate it
        reaches at 256, so a batch of short queries costs far less than its queries one by one.
        Each cache-sized [rows x chunk] block is reduced to ``M_v = max_t q_t . p_v`` and turned
        into bounds at once, while it is hot. Rows are padded to a multiple of ``_ROW_BUCKET`` (the
        int8 GEMM compiles a kernel per shape, so few shapes keep that cost one-off) and ignored.
        """
        q, scale, coefficients = self.quantize(hidden)
        docs, tokens, _ = q.shape
        rows = docs * tokens
        flat = q.reshape(rows, -1)
        bucket = -(-rows // _ROW_BUCKET) * _ROW_BUCKET
        if bucket != rows:
            flat = torch.cat([flat, flat[:1].expand(bucket - rows, -1)])
        chunk = max(_MIN_CHUNK, min(_MAX_CHUNK, _BLOCK_BYTES // (4 * bucket)))
        vocab = self.quantized.shape[0]
        bounds = torch.empty(docs, vocab, dtype=torch.float64)
        for start in range(0, vocab, chunk):
            stop = min(start + chunk, vocab)
            rest = coefficients @ self.bound_rows[:, start:stop]
            if self.precision == "bf16":
                best = _bf16_max((flat @ self.quantized[start:stop].t())[:rows].view(docs, tokens, -1), dim=1)
                bounds[:, start:stop] = _bf16_output_bound(best.double()) + rest
                continue
            best = torch._int_mm(flat, self.quantized[start:stop].t())[:rows].view(docs, tokens, -1).amax(dim=1)
            scaled = scale[:, None] * self.row_scale[start:stop]
            bounds[:, start:stop] = torch.addcmul(rest, scaled, best.double())
        return bounds

    def pool(self, hidden: torch.Tensor, keep: torch.Tensor, out: torch.Tensor, where: torch.Tensor | None = None) -> None:
        """Write ``log1p(relu(max logit over kept tokens))`` of each document [B, L, H] into ``out`` [B, V] (zeros).

        With ``where`` [B, V] (int64, zeros), the form the backward needs: ``out`` receives the raw max logits of
        the entries that can be positive (the rest stay 0, proven <= 0) and ``where`` their positions.
        """
        lengths = keep.sum(dim=1)
        # Each document's real tokens move to the front and the rest repeat its first one: no max
        # changes, and documents of similar length screen together as dense [D, T, H] blocks.
        positions = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        source = torch.where(torch.arange(keep.shape[1]) < lengths[:, None], positions, positions[:, :1])
        packed = hidden.gather(1, source[:, :, None].expand_as(hidden))
        finite = torch.isfinite(packed).flatten(1).all(dim=1) if self.finite else torch.zeros_like(keep[:, 0])
        for doc in torch.nonzero((lengths > 0) & ~finite).squeeze(1).tolist():
            # No margin exists for inf/nan; keep the reference's propagation on this document.
            _write_max(out, where, doc, slice(None), torch.addmm(self.bias, packed[doc, : lengths[doc]], self.weight.t()),
                       positions)
        screened = torch.nonzero((lengths > 0) & finite).squeeze(1)
        screened = screened[torch.argsort(lengths[screened], descending=True, stable=True)].tolist()
        while screened:
            longest = int(lengths[screened[0]])
            take = max(1, _GROUP_ROWS // longest)
            docs, screened = screened[:take], screened[take:]
            group = packed[docs, :longest]
            bounds = self.upper_bounds(group)
            # Small GEMMs, one per document: on two threads each ends in a barrier that, with the other core
            # busy, waits out a time slice; on one they also ran faster on a quiet machine (a training step 0.50 s
            # against 0.56) and round as a lone encode (always on one thread) does.
            with one_intra_op_thread():
                for doc, tokens, doc_bounds in zip(docs, group, bounds):
                    candidates = torch.nonzero(~(doc_bounds <= 0)).squeeze(1)  # a nan bound proves nothing
                    if candidates.numel():
                        # Its own tokens only: with the group's repeats the GEMM's row count, and so its rounding of
                        # every logit (MKL picks kernels by shape), would depend on the longest document beside it.
                        tokens = tokens[: int(lengths[doc])]
                        _write_max(out, where, doc, candidates,
                                   torch.addmm(self.bias[candidates], tokens, self.weight[candidates].t()), positions)


def _write_max(out: torch.Tensor, where: torch.Tensor | None, doc: int, columns, logits: torch.Tensor,
               positions: torch.Tensor) -> None:
    """``out[doc, columns]`` = log1p(relu(the max over ``logits``' rows)) (a document's packed tokens); with ``where``,
    the raw max and its position (one document at a time, so its bits never depend on the batch beside it)."""
    if where is None:
        out[doc, columns] = torch.log1p(torch.relu(logits.amax(dim=0)))
        return
    value, row = logits.max(dim=0)
    out[doc, columns] = value
    where[doc, columns] = positions[doc, row]


_prepared: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor | None, tuple, ScreenedHead]] = OrderedDict()
_prepared_lock = threading.Lock()  # encodes run concurrently (the service's micro-batches)
_SAMPLED_ROWS = 64


def _sample(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """64 evenly spaced weight rows and bias entries (views): about 20 us to compare on splade-tiny's head."""
    step = max(1, weight.shape[0] // _SAMPLED_ROWS)
    return weight.detach()[::step], None if bias is None else bias.detach()[::step]


def _fingerprint(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A copy of ``_sample``: writes through ``.data`` (a re-initialisation, a scaling, another model's weights
    copied in) leave the version counters unchanged, and a screen prepared from the old weights then dropped
    entries of the new ones (an error of 1.5 after ``weight.data.mul_(-3)``)."""
    return tuple(None if t is None else t.clone() for t in _sample(weight, bias))


def _same(fingerprint: tuple, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return all(a is None or torch.equal(a, b) for a, b in zip(_sample(weight, bias), fingerprint))


def screened_head(weight: torch.Tensor, bias: torch.Tensor | None, precision: str = "int8") -> ScreenedHead:
    """The prepared head for these tensors, cached on storage and version so in-place updates re-prepare, and
    checked against a sample of the weights so whole-tensor writes through ``.data`` do too (a write through
    ``.data`` to a few rows can pass unseen: call ``forget_screened_heads()`` after one).

    The entry keeps the tensors alive, so their addresses cannot be reused by other tensors while
    cached. Inference tensors have no version counter and are prepared afresh on every call.
    """
    if weight.is_inference() or (bias is not None and bias.is_inference()):
        return ScreenedHead.prepare(weight, bias, precision)
    key = (precision, weight.data_ptr(), weight._version, tuple(weight.shape), tuple(weight.stride()))
    key += (None,) if bias is None else (bias.data_ptr(), bias._version, tuple(bias.shape))
    with _prepared_lock:
        entry = _prepared.get(key)
        if entry is None or not _same(entry[2], weight, bias):
            entry = (weight.detach(), None if bias is None else bias.detach(), _fingerprint(weight, bias),
                     ScreenedHead.prepare(weight, bias, precision))
            _prepared[key] = entry
            while len(_prepared) > _CACHE_SIZE:
                _prepared.popitem(last=False)
    return entry[3]


def forget_screened_heads() -> None:
    """Drop every prepared head, after weights were changed in a way the cache cannot see."""
    with _prepared_lock:
        _prepared.clear()


def screen_applies(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   precision: str | None = None) -> bool:
    """Whether the screened path is valid: float32 CPU tensors and a sound screen GEMM (``precision``'s, or this
    CPU's best), whose int8 sums fit int32 (H at most ``MAX_INT8_HIDDEN``: at H = 140,000 they wrapped negative
    and "proved" every entry zero)."""
    tensors = [hidden, weight] + ([] if bias is None else [bias])
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return False
    chosen = best_precision() if precision is None else precision if PRECISIONS[precision]() else None
    return chosen is not None and (chosen != "int8" or hidden.shape[-1] <= MAX_INT8_HIDDEN)


def splade_max_pool_screened(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, attention_mask: torch.Tensor,
    precision: str | None = None,
) -> torch.Tensor:
    """``log1p(relu(max over unmasked positions of hidden @ weight.T + bias))`` as [B, V] float32; differentiable.

    hidden [B, L, H] float32 on CPU, weight [V, H], bias [V] or None, attention_mask [B, L] (non-zero = keep).
    Equal to ``splade_max_pool_reference`` up to fp32 summation order; see the module docstring.
    ``precision``: the screen's GEMM, "int8" or "bf16"; None picks this CPU's (``best_precision``).
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be [batch, seq, hidden] and attention_mask [batch, seq]; got {tuple(hidden.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"unknown screen precision {precision!r}; use {' or '.join(PRECISIONS)}")
    if not screen_applies(hidden, weight, bias, precision):
        raise ValueError(
            "splade_max_pool_screened needs float32 CPU tensors, on a CPU with an exact int8 (then a hidden size "
            f"of at most {MAX_INT8_HIDDEN:,}) or sound bf16 matmul; use kernels.pool_torch.splade_max_pool_chunked "
            "otherwise"
        )
    head = screened_head(weight, bias, precision or best_precision())
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
        return _ScreenedMaxPool.apply(hidden, weight, bias, attention_mask, head)
    out = torch.zeros(hidden.shape[0], weight.shape[0], dtype=torch.float32)
    with torch.no_grad():
        head.pool(hidden, attention_mask.bool(), out)
    return out


class _ScreenedMaxPool(SparseMaxPoolGrad):
    """Training's forward: the screened max logits and their positions; the chunked path's sparse backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, attention_mask, head: ScreenedHead):
        pooled = torch.zeros(hidden.shape[0], weight.shape[0], dtype=torch.float32)
        where = torch.zeros(pooled.shape, dtype=torch.int64)
        head.pool(hidden, attention_mask.bool(), pooled, where)
        return SparseMaxPoolGrad.save(ctx, hidden, weight, bias, pooled, where)
