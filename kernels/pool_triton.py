"""Fused SPLADE LM head in Triton: logits tile -> bias -> mask -> running max, never B×L×V in memory.

``out[b, v] = log1p(relu(max_{l unmasked} hidden[b, l] . weight[v] + bias[v]))``. log1p∘relu is
monotonic and the bias is constant along l, so the kernel max-pools raw ``hidden . weight`` tiles
and applies bias and activation once per output. Training keeps only the pooled logit and its
argmax position per (b, v): the backward sends ``grad / (1 + pooled) = grad * exp(-out)`` to that
one position, so it needs neither the logits nor a second GEMM.

Layout follows Liger-Kernel: Triton kernels, a functional wrapper, and ``torch.library.custom_op``
registrations (``lsr::splade_max_pool`` and its backward) with fake impls and autograd, so the op
composes with ``torch.compile``. Set ``TRITON_INTERPRET=1`` before importing this module to run the
kernels on CPU tensors (tests do). Forward tile sizes come from ``launch.py`` (a committed table, a
heuristic, or ``LSR_AUTOTUNE=1``), keyed on power-of-two length buckets, so no new length stalls a
process with tuning.
"""

import contextlib
import inspect
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import triton
import triton.language as tl

from .launch import MAX_PACKED_SEQS, MIN_BUCKET, LaunchChooser, LaunchConfig, LaunchKey, autotune_enabled, launch_key, length_bucket
from .pool_torch import check_pool_inputs

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
log = logging.getLogger(__name__)

# Backward kernels have no dot, so fixed shapes serve everywhere and keep summation order (hence
# the deterministic mode's bits) independent of any tuning. (rows or segment entries, hidden
# columns, warps), picked by a sweep on an H100 at B=32, H=768, V=30522 and 250002.
GRAD_WEIGHT_BLOCK = (32, 128, 4)
GRAD_HIDDEN_ATOMIC_BLOCK = (64, 128, 4)
GRAD_HIDDEN_SEGMENT_BLOCK = (16, 64, 1)
# fp32 atomics cost ~1.35 ps per element on an H100 against ~0.5 ps for the sorted segments plus
# ~0.15 ns per entry to sort: the atomics win only for narrow hidden sizes (splade-tiny's 128).
ATOMIC_MAX_HIDDEN = 256
# Sequences up to this padded length are packed whole, several per tile, into a persistent kernel.
# One (vocabulary tile, sequence) program per tile ran only a 12-step K loop at L = 128, and its
# pipeline fill, drain and epilogue kept the forward 1.32-1.39x off the cuBLAS floor on an H100
# (packed: 1.28x; at H = 128 1.03x instead of 1.74x, at L = 32 2.2x instead of 5.6x). Longer
# sequences loop over sequence tiles in the tiled kernel, which also skips all-padding tiles.
PACK_MAX_LEN = 128


@triton.jit
def _log1p(x):
    # Goldberg's trick: log(u) * x / (u - 1) cancels the rounding in u = 1 + x; exact where u == 1.
    # +inf stays inf (inf / inf was nan).
    u = 1.0 + x
    tiny = u == 1.0
    exact = tiny | (x == float("inf"))
    return tl.where(exact, x, tl.log(u) * (x / tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def _store_pooled(out_ptr, pooled_ptr, arg_ptr, offs, ok, pooled, arg, STORE_ARG: tl.constexpr):
    """Shared epilogue: log1p(relu(pooled logit)); a fully masked row keeps -inf, which relu turns into 0."""
    act = _log1p(tl.maximum(pooled, 0.0))
    tl.store(out_ptr + offs, act.to(out_ptr.dtype.element_ty), mask=ok)
    if STORE_ARG:
        tl.store(pooled_ptr + offs, pooled, mask=ok)
        tl.store(arg_ptr + offs, arg, mask=ok)


@triton.heuristics({"EVEN_H": lambda args: args["H"] % args["BLOCK_H"] == 0})
@triton.jit(do_not_specialize=["B"])  # the last batch of a run is smaller: no extra compile for it
def _splade_pool_fwd_kernel(
    hidden_ptr, weight_ptr, bias_ptr, mask_ptr, out_ptr, pooled_ptr, arg_ptr,
    B, L, H, V,
    stride_hb, stride_hl, stride_hh, stride_wv, stride_wh, stride_mb, stride_ml,
    HAS_BIAS: tl.constexpr, STORE_ARG: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_V: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr, EVEN_H: tl.constexpr,
):
    # Batch index varies fastest, so programs running together share one weight tile through L2.
    pid = tl.program_id(0)
    b = (pid % B).to(tl.int64)
    offs_v = (pid // B) * BLOCK_V + tl.arange(0, BLOCK_V)
    v_ok = offs_v < V
    offs_k = tl.arange(0, BLOCK_H)
    w_rows = weight_ptr + offs_v.to(tl.int64)[:, None] * stride_wv
    h_seq = hidden_ptr + b * stride_hb

    run_max = tl.full([BLOCK_V], float("-inf"), tl.float32)
    run_arg = tl.zeros([BLOCK_V], tl.int32)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        l_ok = offs_l < L
        keep = (tl.load(mask_ptr + b * stride_mb + offs_l * stride_ml, mask=l_ok, other=0) != 0) & l_ok
        if tl.max(keep.to(tl.int32), axis=0) > 0:  # padding-only tiles cost nothing
            acc = tl.zeros([BLOCK_V, BLOCK_L], tl.float32)
            for h0 in range(0, H, BLOCK_H):
                offs_h = h0 + offs_k
                h_ok = (offs_h < H) | EVEN_H  # a constant-true mask lets the compiler drop the predicate
                w = tl.load(w_rows + offs_h[None, :] * stride_wh, mask=v_ok[:, None] & h_ok[None, :], other=0.0)
                x = tl.load(
                    h_seq + offs_l[None, :] * stride_hl + offs_h[:, None] * stride_hh,
                    mask=h_ok[:, None] & l_ok[None, :],
                    other=0.0,
                )
                if UPCAST_DOT:
                    w = w.to(tl.float32)
                    x = x.to(tl.float32)
                acc = tl.dot(w, x, acc, input_precision=DOT_PRECISION)
            acc = tl.where(keep[None, :], acc, float("-inf"))
            tile_max = tl.max(acc, axis=1)
            if STORE_ARG:
                # Leftmost winner inside the tile, strict '>' across tiles: ties go to the first position.
                tile_arg = tl.argmax(acc, axis=1, tie_break_left=True).to(tl.int32) + l0
                run_arg = tl.where(tile_max > run_max, tile_arg, run_arg)
            run_max = tl.maximum(run_max, tile_max)

    if HAS_BIAS:
        run_max += tl.load(bias_ptr + offs_v, mask=v_ok, other=0.0).to(tl.float32)
    _store_pooled(out_ptr, pooled_ptr, arg_ptr, b * V + offs_v, v_ok, run_max, run_arg, STORE_ARG)


@triton.heuristics(
    {
        "EVEN_H": lambda args: args["H"] % args["BLOCK_H"] == 0,
        "EVEN_COLS": lambda args: args["L"] == args["LP"] and args["B"] % (args["BLOCK_N"] // args["LP"]) == 0,
    }
)
@triton.jit(do_not_specialize=["B"])
def _splade_pool_packed_kernel(
    hidden_ptr, weight_ptr, bias_ptr, mask_ptr, out_ptr, pooled_ptr, arg_ptr,
    B, L, H, V,
    stride_hb, stride_hl, stride_hh, stride_wv, stride_wh, stride_mb, stride_ml,
    LP: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_ARG: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST_DOT: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
    EVEN_H: tl.constexpr, EVEN_COLS: tl.constexpr,
):
    """Short sequences: a tile's N side holds BLOCK_N // LP whole sequences, each padded to LP columns.

    A tile is (vocabulary tile, group of sequences); programs walk tiles n_programs apart in one flat
    loop over (tile, K step), so the pipeliner prefetches the next tile's operands during this
    tile's epilogue. Groups vary fastest: programs running together share weight tiles through L2.
    """
    SEQS: tl.constexpr = BLOCK_N // LP
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    n_groups = tl.cdiv(B, SEQS)
    k_tiles = tl.cdiv(H, BLOCK_H)
    my_tiles = tl.cdiv(n_groups * tl.cdiv(V, BLOCK_V) - pid, n_programs)
    offs_k = tl.arange(0, BLOCK_H)
    slot = tl.arange(0, BLOCK_N) // LP  # which packed sequence a column belongs to
    pos = tl.arange(0, BLOCK_N) % LP  # its position in that sequence

    acc = tl.zeros([BLOCK_V, BLOCK_N], tl.float32)
    for it in range(0, my_tiles * k_tiles):
        tile = pid + (it // k_tiles) * n_programs
        ki = it % k_tiles
        group = tile % n_groups
        offs_v = (tile // n_groups) * BLOCK_V + tl.arange(0, BLOCK_V)
        v_ok = offs_v < V
        seq = group * SEQS + slot
        col_ok = ((seq < B) & (pos < L)) | EVEN_COLS
        offs_h = ki * BLOCK_H + offs_k
        h_ok = (offs_h < H) | EVEN_H
        w = tl.load(
            weight_ptr + offs_v.to(tl.int64)[:, None] * stride_wv + offs_h[None, :] * stride_wh,
            mask=v_ok[:, None] & h_ok[None, :],
            other=0.0,
        )
        x = tl.load(
            hidden_ptr + seq.to(tl.int64)[None, :] * stride_hb + pos[None, :] * stride_hl + offs_h[:, None] * stride_hh,
            mask=h_ok[:, None] & col_ok[None, :],
            other=0.0,
        )
        if UPCAST_DOT:
            w = w.to(tl.float32)
            x = x.to(tl.float32)
        acc = tl.dot(w, x, acc, input_precision=DOT_PRECISION)
        if ki == k_tiles - 1:
            keep = tl.load(mask_ptr + seq.to(tl.int64) * stride_mb + pos * stride_ml, mask=col_ok, other=0) != 0
            logits = tl.where((keep & col_ok)[None, :], acc, float("-inf"))
            bias = tl.zeros([BLOCK_V], tl.float32)
            if HAS_BIAS:
                bias = tl.load(bias_ptr + offs_v, mask=v_ok, other=0.0).to(tl.float32)
            for s in tl.static_range(SEQS):
                mine = tl.where((slot == s)[None, :], logits, float("-inf"))
                seq_max = tl.max(mine, axis=1)
                seq_arg = tl.zeros([BLOCK_V], tl.int32)
                if STORE_ARG:  # leftmost winner; 0 for a fully masked sequence, as in the tiled kernel
                    seq_arg = tl.argmax(mine, axis=1, tie_break_left=True).to(tl.int32) - s * LP
                    seq_arg = tl.where(seq_max > float("-inf"), seq_arg, 0)
                b = group * SEQS + s
                ok = v_ok & (offs_v * 0 + b < B)  # the last group may hold fewer than SEQS sequences
                _store_pooled(out_ptr, pooled_ptr, arg_ptr, b.to(tl.int64) * V + offs_v, ok, seq_max + bias, seq_arg, STORE_ARG)
            acc = tl.zeros([BLOCK_V, BLOCK_N], tl.float32)


@triton.jit
def _grad_weight_kernel(
    g_ptr, arg_ptr, hidden_ptr, grad_weight_ptr,
    B, H, V,
    stride_hb, stride_hl, stride_hh,
    BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """grad_weight[v] = sum_b g[b, v] * hidden[b, argmax[b, v]]: a gather, each program owns its rows."""
    offs_v = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    v_ok = offs_v < V
    h_ok = offs_h < H
    acc = tl.zeros([BLOCK_V, BLOCK_H], tl.float32)
    g_row = g_ptr + offs_v
    arg_row = arg_ptr + offs_v
    h_seq = hidden_ptr + offs_h[None, :] * stride_hh
    for _ in range(0, B):  # pointers advance per sequence, so offsets never overflow int32
        g = tl.load(g_row, mask=v_ok, other=0.0)
        pos = tl.load(arg_row, mask=v_ok, other=0)
        live = g != 0.0
        x = tl.load(h_seq + pos[:, None] * stride_hl, mask=live[:, None] & h_ok[None, :], other=0.0)
        acc += g[:, None] * x.to(tl.float32)
        g_row += V
        arg_row += V
        h_seq += stride_hb
    out = grad_weight_ptr + offs_v.to(tl.int64)[:, None] * H + offs_h[None, :]
    tl.store(out, acc.to(grad_weight_ptr.dtype.element_ty), mask=v_ok[:, None] & h_ok[None, :])


@triton.jit
def _grad_hidden_segment_kernel(
    row_start_ptr, vocab_ptr, g_ptr, weight_ptr, grad_hidden_ptr,
    H, stride_wv, stride_wh,
    BLOCK_S: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Deterministic grad_hidden: each program owns one (b, l) row and sums its sorted winners' weight rows."""
    row = tl.program_id(0).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = offs_h < H
    start = tl.load(row_start_ptr + row)
    end = tl.load(row_start_ptr + row + 1)
    acc = tl.zeros([BLOCK_H], tl.float32)
    for i in range(start, end, BLOCK_S):
        offs = i + tl.arange(0, BLOCK_S)
        ok = offs < end
        v = tl.load(vocab_ptr + offs, mask=ok, other=0).to(tl.int64)
        g = tl.load(g_ptr + offs, mask=ok, other=0.0)
        w = tl.load(weight_ptr + v[:, None] * stride_wv + offs_h[None, :] * stride_wh, mask=ok[:, None] & h_ok[None, :], other=0.0)
        acc += tl.sum(g[:, None] * w.to(tl.float32), axis=0)
    tl.store(grad_hidden_ptr + row * H + offs_h, acc.to(grad_hidden_ptr.dtype.element_ty), mask=h_ok)


@triton.jit
def _grad_hidden_atomic_kernel(
    g_ptr, arg_ptr, weight_ptr, grad_hidden_ptr,
    L, H, V, stride_wv, stride_wh,
    BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Fast grad_hidden: every live (b, v) adds g * weight[v] into its winning row with fp32 atomics."""
    b = tl.program_id(0).to(tl.int64)
    offs_v = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    offs_h = tl.program_id(2) * BLOCK_H + tl.arange(0, BLOCK_H)
    v_ok = offs_v < V
    h_ok = offs_h < H
    g = tl.load(g_ptr + b * V + offs_v, mask=v_ok, other=0.0)
    pos = tl.load(arg_ptr + b * V + offs_v, mask=v_ok, other=0)
    live = (g != 0.0)[:, None] & h_ok[None, :]
    w = tl.load(weight_ptr + offs_v.to(tl.int64)[:, None] * stride_wv + offs_h[None, :] * stride_wh, mask=live, other=0.0)
    dest = grad_hidden_ptr + (b * L + pos)[:, None] * H + offs_h[None, :]
    tl.atomic_add(dest, g[:, None] * w.to(tl.float32), mask=live, sem="relaxed")


# Launch configurations come from kernels/launch.py; a tuning persisted for another version of this file is stale.
_CHOOSER = LaunchChooser(Path(__file__).read_text(encoding="utf-8"))


def _check_inputs(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], mask: torch.Tensor) -> None:
    check_pool_inputs(hidden, weight, bias, mask)
    if hidden.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the Triton kernel takes float32/bfloat16/float16 inputs, got {hidden.dtype}; cast them "
                        "or use impl='chunked'")


def _check_devices(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], mask: torch.Tensor) -> None:
    tensors = [hidden, weight, mask] + ([bias] if bias is not None else [])
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"all inputs must be on one device, got {[str(t.device) for t in tensors]}")
    if hidden.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            "the Triton pooling kernel needs CUDA tensors; use impl='chunked' on CPU, or set TRITON_INTERPRET=1 "
            "before importing lsr.kernels.pool_triton to run it in Triton's interpreter"
        )


def _mask_view(mask: torch.Tensor) -> torch.Tensor:
    """The kernel reads any numeric mask as 'non-zero = keep'; bool is reinterpreted as bytes, not copied."""
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask


def _forward(
    hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], mask: torch.Tensor, store_arg: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_inputs(hidden, weight, bias, mask)
    _check_devices(hidden, weight, bias, mask)
    B, V = hidden.shape[0], weight.shape[0]
    out = torch.empty((B, V), dtype=hidden.dtype, device=hidden.device)
    saved = (B, V) if store_arg else (0,)
    pooled = torch.empty(saved, dtype=torch.float32, device=hidden.device)
    arg = torch.empty(saved, dtype=torch.int32, device=hidden.device)
    if out.numel() == 0:
        return out, pooled, arg
    key, launch, _ = _plan(hidden, weight, bias, mask, out, pooled, arg, store_arg)
    _CHOOSER.launch(key, hidden.device, INTERPRET, launch)
    return out, pooled, arg


def _plan(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], mask: torch.Tensor,
          out: torch.Tensor, pooled: torch.Tensor, arg: torch.Tensor, store_arg: bool
          ) -> tuple[LaunchKey, Callable, Callable[[LaunchConfig], tuple]]:
    """The forward's launch key, ``launch(config, warmup=False)`` (with ``warmup`` Triton only compiles) and
    ``variant(config)``, what Triton compiles that launch for (``compile_variant``)."""
    B, L, H = hidden.shape
    V = weight.shape[0]
    mask = _mask_view(mask)
    bias = bias.contiguous() if bias is not None else None
    args = (
        hidden, weight, bias if bias is not None else out, mask, out, pooled, arg,
        B, L, H, V,
        hidden.stride(0), hidden.stride(1), hidden.stride(2), weight.stride(0), weight.stride(1),
        mask.stride(0), mask.stride(1),
    )
    flags = dict(
        HAS_BIAS=bias is not None,
        STORE_ARG=store_arg,
        # fp32 inputs get a true fp32 dot (tf32 would cost ~3e-4 relative error).
        DOT_PRECISION="ieee" if hidden.dtype == torch.float32 else "tf32",
        # Triton's interpreter multiplies bf16 operands as their raw uint16 bits; fp32 is exact there.
        UPCAST_DOT=INTERPRET and hidden.dtype == torch.bfloat16,
    )
    bucket = length_bucket(L)
    kind = "packed" if bucket <= PACK_MAX_LEN else "tiled"
    key = launch_key(hidden.device, INTERPRET, kind, hidden.dtype, H, L, store_arg)
    kernel, extra = (_splade_pool_packed_kernel, {"LP": bucket}) if kind == "packed" else (_splade_pool_fwd_kernel, {})

    def launch(config: LaunchConfig, warmup: bool = False) -> None:
        if kind == "packed":  # each sequence padded to the bucket inside its tile
            tiles = triton.cdiv(B, config.block_n // bucket) * triton.cdiv(V, config.block_v)
            grid = (min(tiles, _program_slots(hidden.device)),)
        else:
            grid = (triton.cdiv(V, config.block_v) * B,)
        if warmup:
            kernel.warmup(*args, grid=grid, **extra, **flags, **config.meta(kind))
        else:
            kernel[grid](*args, **extra, **flags, **config.meta(kind))

    def variant(config: LaunchConfig) -> tuple:
        names = [name for name, _, _ in _kernel_params(kernel)]
        return compile_variant(kernel, {**dict(zip(names, args)), **extra, **flags, **config.meta(kind)})

    return key, launch, variant


def _kernel_params(kernel) -> list[tuple[str, bool, bool]]:
    """(name, is a constexpr, is specialised) per parameter of a kernel under its wrappers, compiled or interpreted."""
    unspecialised: list = []
    while not inspect.isfunction(kernel):
        options = getattr(kernel, "kwargs", None) or {}  # the interpreter keeps @triton.jit's options here
        unspecialised = getattr(kernel, "do_not_specialize", None) or options.get("do_not_specialize") or unspecialised
        kernel = kernel.fn
    return [(p.name, p.annotation is tl.constexpr, p.name not in unspecialised)
            for p in inspect.signature(kernel).parameters.values()]


def compile_variant(kernel, args: dict) -> tuple:
    """The part of Triton's compile key that a launch's arguments decide: each tensor's dtype, each
    specialised integer's class (1, a multiple of 16, other), every constexpr, ``@triton.heuristics``
    values included, and the launch options. Launches with equal variants share one compiled kernel;
    any other variant compiles on first use (about a second)."""
    values = dict(args)
    for name, rule in getattr(kernel, "values", {}).items():
        values[name] = rule(values)
    found = []
    for name, constexpr, specialised in _kernel_params(kernel):
        value = values.pop(name)
        if constexpr:
            found.append((name, value))
        elif isinstance(value, torch.Tensor):
            found.append((name, value.dtype))
        elif specialised:
            found.append((name, "1" if value == 1 else "D" if value % 16 == 0 else "i"))
    return (*found, *sorted(values.items()))


def precompile(shapes: Sequence[tuple[int, int]], weight: torch.Tensor, bias: Optional[torch.Tensor]) -> int:
    """Compile, without running them, the inference launches of these (batch, length) shapes, in parallel.

    Triton's compiler releases the GIL for most of its work (12 sm90 kernels compiled in 6.2 s on two
    threads against 11.0 s on one, on this project's CPU machine), so a fresh process compiles its
    warm-up set in about the time of its slowest kernel rather than their sum. Hidden states are
    taken to be contiguous [batch, length, H] in weight's dtype, as a model returns them. Returns
    how many kernels were compiled so (one per ``compile_variant``; shapes may share one): 0 under the
    interpreter, with ``LSR_AUTOTUNE=1`` (tuning compiles as it measures), or with a Triton that has
    no AsyncCompileMode; the caller's own launches then compile as usual, as they also do after any
    failure here.
    """
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:
        return 0
    device = weight.device
    if INTERPRET or device.type != "cuda" or autotune_enabled() or not shapes:
        return 0
    plans = {}
    for batch, length in shapes:
        hidden = torch.empty((batch, length, weight.shape[1]), dtype=weight.dtype, device=device)
        mask = torch.ones((batch, length), dtype=torch.int64, device=device)  # a tokenizer's attention mask
        out = torch.empty((batch, weight.shape[0]), dtype=weight.dtype, device=device)
        key, launch, variant = _plan(hidden, weight, bias, mask, out, out.new_empty(0, dtype=torch.float32),
                                     out.new_empty(0, dtype=torch.int32), False)
        config = _CHOOSER.choose(key, device, False, launch)
        plans.setdefault(variant(config), (config, launch))  # shapes of one variant share a kernel
    try:
        # ignore_errors: a kernel that fails here is left for its launch to compile and report; raising from
        # AsyncCompileMode's exit would also leave the mode active for every later launch in this thread.
        with _on(device), ThreadPoolExecutor(min(len(plans), os.cpu_count() or 1)) as pool, \
                AsyncCompileMode(pool, ignore_errors=True):
            for config, launch in plans.values():
                launch(config, warmup=True)
    except Exception as error:  # noqa: BLE001 - an optimisation: the real launches compile (and report) anyway
        log.warning("compiling the pooling kernels in parallel failed (%s: %s); they compile on first use",
                    type(error).__name__, error)
        return 0
    return len(plans)


def _on(device: torch.device) -> Any:
    """Launch on ``device``: Triton launches on the current CUDA device, not its tensors' (a model on cuda:1 failed
    to load: "Pointer argument cannot be accessed from Triton")."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def warm_up_shapes(max_length: int, positions: int | None = None) -> list[tuple[int, int]]:
    """(batch, length) pairs that compile every forward variant an encoder of up to ``max_length`` tokens
    launches, its lengths padded to multiples of 16 (``lsr.encode.batching``).

    Per length bucket: a batch that fills whole packed tiles at the bucket's length (a tile holds 1, 2, 4
    or 8 sequences, ``launch.MAX_PACKED_SEQS``), a ragged one (3 sequences) at that length, and a ragged
    one shorter than the bucket where the bucket has such lengths: the packed kernel compiles apart for
    each. No length passes the longest an encoder pads to, nor the model's ``positions``.
    """
    longest = -(-max_length // MIN_BUCKET) * MIN_BUCKET
    if positions is not None:  # a model whose positions are no multiple of 16 pads its longest texts to them
        longest = min(longest, max(positions, max_length))
    shapes, bucket = [], MIN_BUCKET
    while bucket <= length_bucket(longest):
        full = min(bucket, longest)
        shapes += [(MAX_PACKED_SEQS, full), (3, full)]
        if bucket // 2 < full - MIN_BUCKET:  # a shorter length in the same bucket
            shapes.append((3, full - MIN_BUCKET))
        bucket *= 2
    return shapes


def _program_slots(device: torch.device) -> int:
    """Persistent grid size: one program per SM (2 under the interpreter, so tests walk several tiles each)."""
    if INTERPRET:
        return 2
    return torch.cuda.get_device_properties(device).multi_processor_count


def _backward(
    grad_out: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    pooled: torch.Tensor,
    arg: torch.Tensor,
    deterministic: bool,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, L, H = hidden.shape
    V = weight.shape[0]
    # d log1p(relu(m)) / dm = 1 / (1 + m) where m > 0; 0 where m <= 0 or the row is fully masked (-inf).
    g = torch.where(pooled > 0, grad_out.float() / (1.0 + pooled.clamp_min(0)), 0.0).contiguous()
    grad_bias = g.sum(dim=0)
    grad_weight = hidden.new_empty(0)  # each return its own tensor: a custom op's outputs may not alias
    if need_weight:
        grad_weight = torch.empty((V, H), dtype=weight.dtype, device=weight.device)
        if grad_weight.numel():
            block_v, block_h, warps = _fit(GRAD_WEIGHT_BLOCK, H)
            _grad_weight_kernel[(triton.cdiv(V, block_v), triton.cdiv(H, block_h))](
                g, arg, hidden, grad_weight, B, H, V,
                hidden.stride(0), hidden.stride(1), hidden.stride(2),
                BLOCK_V=block_v, BLOCK_H=block_h, num_warps=warps,
            )

    grad_hidden = hidden.new_empty(0)
    if need_hidden:
        if deterministic or H > ATOMIC_MAX_HIDDEN:
            grad_hidden = _grad_hidden_sorted(g, arg, weight, B, L, H)
        else:
            grad_hidden = torch.zeros((B, L, H), dtype=torch.float32, device=hidden.device)
            if B * V * H:
                block_v, block_h, warps = _fit(GRAD_HIDDEN_ATOMIC_BLOCK, H)
                _grad_hidden_atomic_kernel[(B, triton.cdiv(V, block_v), triton.cdiv(H, block_h))](
                    g, arg, weight, grad_hidden, L, H, V, weight.stride(0), weight.stride(1),
                    BLOCK_V=block_v, BLOCK_H=block_h, num_warps=warps,
                )
            grad_hidden = grad_hidden.to(hidden.dtype)
    return grad_hidden, grad_weight, grad_bias


def _fit(block: tuple, H: int) -> tuple:
    """Shrink a block's hidden width to the hidden size (rounded up to a power of two)."""
    rows, cols, warps = block
    return rows, min(cols, triton.next_power_of_2(max(H, 1))), warps


def _grad_hidden_sorted(g: torch.Tensor, arg: torch.Tensor, weight: torch.Tensor, B: int, L: int, H: int) -> torch.Tensor:
    """Group live (b, v) by winning row with a stable sort, then reduce each row's group in a fixed order."""
    V = weight.shape[0]
    rows = B * L
    batch = torch.arange(B, device=g.device, dtype=torch.int32)[:, None]  # int32 keys sort faster
    key = torch.where(g != 0, batch * L + arg, rows).view(-1)  # dead entries sort past the last row
    sorted_key, order = torch.sort(key, stable=True)
    row_start = torch.searchsorted(sorted_key, torch.arange(rows + 1, device=g.device, dtype=torch.int32))
    vocab = (order % V).to(torch.int32)
    g_sorted = g.view(-1)[order]
    grad_hidden = torch.empty((B, L, H), dtype=weight.dtype, device=weight.device)
    if grad_hidden.numel():
        block_s, block_h, warps = _fit(GRAD_HIDDEN_SEGMENT_BLOCK, H)
        _grad_hidden_segment_kernel[(rows, triton.cdiv(H, block_h))](
            row_start, vocab, g_sorted, weight, grad_hidden, H, weight.stride(0), weight.stride(1),
            BLOCK_S=block_s, BLOCK_H=block_h, num_warps=warps,
        )
    return grad_hidden


@torch.library.custom_op("lsr::splade_max_pool", mutates_args=())
def _pool_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    attention_mask: torch.Tensor,
    save_for_backward: bool,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (pooled activations [B, V], pooled logits fp32 [B, V], argmax int32 [B, V]).

    The last two are what the backward needs; they are empty when ``save_for_backward`` is False.
    ``deterministic`` only selects the backward's grad_hidden strategy.
    """
    with _on(hidden.device):
        return _forward(hidden, weight, bias, attention_mask, save_for_backward)


@_pool_op.register_fake
def _pool_op_fake(hidden, weight, bias, attention_mask, save_for_backward, deterministic):
    _check_inputs(hidden, weight, bias, attention_mask)
    B, V = hidden.shape[0], weight.shape[0]
    saved = (B, V) if save_for_backward else (0,)
    return (
        hidden.new_empty((B, V)),
        hidden.new_empty(saved, dtype=torch.float32),
        hidden.new_empty(saved, dtype=torch.int32),
    )


@torch.library.custom_op("lsr::splade_max_pool_backward", mutates_args=())
def _pool_backward_op(
    grad_out: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    pooled: torch.Tensor,
    arg: torch.Tensor,
    deterministic: bool,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (grad_hidden, grad_weight, grad_bias fp32); a grad not asked for comes back empty."""
    with _on(hidden.device):
        return _backward(grad_out, hidden, weight, pooled, arg, deterministic, need_hidden, need_weight)


@_pool_backward_op.register_fake
def _pool_backward_op_fake(grad_out, hidden, weight, pooled, arg, deterministic, need_hidden, need_weight):
    return (
        hidden.new_empty(hidden.shape if need_hidden else (0,)),
        weight.new_empty(weight.shape if need_weight else (0,)),
        weight.new_empty((weight.shape[0],), dtype=torch.float32),
    )


def _setup_context(ctx, inputs, output) -> None:
    hidden, weight, bias, _, _, deterministic = inputs
    _, pooled, arg = output
    ctx.save_for_backward(hidden, weight, pooled, arg)
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.deterministic = deterministic


def _pool_op_backward(ctx, grad_out, _grad_pooled, _grad_arg):
    hidden, weight, pooled, arg = ctx.saved_tensors
    need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
    if pooled.numel() == 0 and hidden.shape[0] * weight.shape[0]:
        raise RuntimeError(
            "lsr::splade_max_pool ran with save_for_backward=False; call splade_max_pool_triton with grad enabled"
        )
    grad_hidden, grad_weight, grad_bias = torch.ops.lsr.splade_max_pool_backward(
        grad_out, hidden, weight, pooled, arg, ctx.deterministic, need_hidden, need_weight
    )
    return (
        grad_hidden if need_hidden else None,
        grad_weight if need_weight else None,
        grad_bias.to(ctx.bias_dtype) if need_bias else None,
        None,
        None,
        None,
    )


_pool_op.register_autograd(_pool_op_backward, setup_context=_setup_context)


def splade_max_pool_triton(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    attention_mask: torch.Tensor,
    deterministic: bool = False,
) -> torch.Tensor:
    """Fused ``log1p(relu(masked max_l(hidden @ weight.T + bias)))`` as [B, V] in hidden's dtype; differentiable.

    Any strides are accepted (the kernels take them). ``deterministic=True`` makes grad_hidden
    bitwise reproducible: a sort groups the winners by position and each (b, l) row is reduced in
    a fixed order. With ``deterministic=False`` it takes whichever is faster, fp32 atomics for
    hidden sizes up to ``ATOMIC_MAX_HIDDEN``, the sorted path above that. The forward, grad_weight
    and grad_bias are deterministic either way. Ties between positions send the gradient to the
    first of them.
    """
    save = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias)
    )
    out, _, _ = torch.ops.lsr.splade_max_pool(hidden, weight, bias, attention_mask, save, deterministic)
    return out
