"""SPLADE LM-head max-pool: fused Triton kernel vs the PyTorch ways of computing it, and the GEMM floor.

GPU (bf16, full attention masks so every impl does the whole GEMM):
  (a) eager     PyTorch with materialised B×L×V logits (``splade_max_pool_reference``)
  (b) compiled  ``torch.compile`` of (a)
  (c) hybrid    vocabulary-chunked compiled matmul + masked max (Sparton's released design)
  (d) fused     ``splade_max_pool_triton`` (fast backward; ``fused-det`` is the deterministic one)
  floor         a bare cuBLAS ``hidden @ weight.T`` of the same size (forward), and its two
                backward GEMMs on top (forward+backward); floor-aligned pads V to a multiple of 128
Median time from CUDA events (``triton.testing.do_bench``) and peak memory beyond the inputs.
Without a GPU it times the CPU paths (reference vs chunked) at small shapes and says so.

    python benchmarks/kernel.py [--results-dir benchmarks/results] [--quick]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from lsr.kernels.pool_torch import DEFAULT_VOCAB_CHUNK, splade_max_pool_chunked, splade_max_pool_reference

GPU_SHAPES = [  # (B, L, H, V); V=30522 first, so LSR_AUTOTUNE=1 tunes each launch key at the target size
    (32, 128, 768, 30522), (32, 256, 768, 30522), (32, 512, 768, 30522),
    (32, 128, 768, 250002), (32, 256, 768, 250002), (32, 512, 768, 250002),
    (32, 128, 128, 30522), (32, 256, 128, 30522), (32, 512, 128, 30522),
]
CPU_SHAPES = [(4, 64, 128, 30522), (8, 128, 128, 30522)]
MIB = 2**20


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sms=props.multi_processor_count, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


def hybrid_pool(chunk_fn: Callable) -> Callable:
    """(c): Sparton's hybrid, a compiled per-chunk matmul + masked max, activation once at the end."""

    def pool(hidden, weight, bias, mask):
        masked = ~mask.bool().unsqueeze(-1)
        parts = [
            chunk_fn(hidden, weight[s : s + DEFAULT_VOCAB_CHUNK], bias[s : s + DEFAULT_VOCAB_CHUNK], masked)
            for s in range(0, weight.shape[0], DEFAULT_VOCAB_CHUNK)
        ]
        return torch.log1p(torch.relu(torch.cat(parts, dim=1)))

    return pool


def chunk_max(hidden, weight, bias, masked):
    return (hidden @ weight.t() + bias).masked_fill(masked, float("-inf")).amax(dim=1)


def gemm_floor(hidden, weight, bias, mask):
    return hidden.reshape(-1, hidden.shape[-1]) @ weight.t()


def gpu_impls() -> dict:
    from lsr.kernels.pool_triton import splade_max_pool_triton

    # dynamic=True: one compile serves every shape (static shapes would recompile 9×2 times).
    return {
        "floor": gemm_floor,
        "floor-aligned": gemm_floor,
        "eager": splade_max_pool_reference,
        "compiled": torch.compile(splade_max_pool_reference, dynamic=True),
        "hybrid": hybrid_pool(torch.compile(chunk_max, dynamic=True)),
        "fused": splade_max_pool_triton,
        "fused-det": lambda h, w, b, m: splade_max_pool_triton(h, w, b, m, deterministic=True),
    }


def measure(fn: Callable, inputs: tuple, grad_out: Optional[torch.Tensor]) -> dict:
    """Median ms (CUDA events) and peak MiB allocated beyond what existed before the call."""
    import triton.testing

    leaves = [t for t in inputs if t.requires_grad]

    def step():
        out = fn(*inputs)
        if grad_out is not None:
            out.backward(grad_out)

    try:
        step()  # compile (and tune, with LSR_AUTOTUNE=1) outside the timed region
        for t in leaves:
            t.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / MIB
        for t in leaves:
            t.grad = None
        ms = triton.testing.do_bench(step, warmup=25, rep=100, grad_to_none=leaves or None, return_mode="median")
        return {"ms": ms, "peak_mib": peak}
    except torch.OutOfMemoryError:
        return {"ms": None, "peak_mib": None, "error": "OOM"}
    finally:
        for t in leaves:
            t.grad = None
        torch.cuda.empty_cache()


def check_against_fp32(inputs: tuple, grad_out: torch.Tensor, fused: Callable) -> dict:
    """Relative error of the bf16 kernel against the chunked path on fp32 copies of the same inputs."""
    ref_in = [t.detach().float().requires_grad_(t.is_floating_point()) for t in inputs[:3]]
    ref = splade_max_pool_chunked(*ref_in, inputs[3])
    ref.backward(grad_out.float())
    got_in = [t.detach().requires_grad_() for t in inputs[:3]]
    got = fused(*got_in, inputs[3])
    got.backward(grad_out)
    errs = {"out": got.float() - ref.detach()}
    errs.update({f"grad_{n}": g.grad.float() - r.grad for n, g, r in zip(("hidden", "weight", "bias"), got_in, ref_in)})
    wants = {"out": ref.detach(), **{f"grad_{n}": r.grad for n, r in zip(("hidden", "weight", "bias"), ref_in)}}
    return {k: (e.norm() / wants[k].norm()).item() for k, e in errs.items()}


def run_gpu(quick: bool, save: Callable[[dict], None]) -> dict:
    impls = gpu_impls()
    rows = []
    for B, L, H, V in GPU_SHAPES[:2] if quick else GPU_SHAPES:
        gen = torch.Generator(device="cuda").manual_seed(0)
        kw = dict(device="cuda", dtype=torch.bfloat16, generator=gen)
        hidden = torch.randn(B, L, H, **kw)
        weight = torch.randn(V, H, **kw) / H**0.5
        bias = torch.randn(V, **kw) * 0.1
        mask = torch.ones(B, L, dtype=torch.long, device="cuda")
        grad_out = torch.randn(B, V, **kw)
        row = {"B": B, "L": L, "H": H, "V": V, "check": check_against_fp32((hidden, weight, bias, mask), grad_out, impls["fused"])}
        for name, fn in impls.items():
            # floor-aligned: the same GEMM with V rounded up to a multiple of 128, so cuBLAS runs its
            # fastest kernels (an odd row pitch such as 30522 × 2 bytes rules out 16-byte alignment).
            w = torch.randn(-(-V // 128) * 128, H, **kw) / H**0.5 if name == "floor-aligned" else weight
            with torch.no_grad():
                row[f"{name}/fwd"] = measure(fn, (hidden, w, bias, mask), None)
            train = tuple(t.detach().requires_grad_() for t in (hidden, w, bias)) + (mask,)
            grad = torch.randn(B * L, w.shape[0], **kw) if name.startswith("floor") else grad_out
            row[f"{name}/fwd+bwd"] = measure(fn, train, grad)
            del grad, w
        rows.append(row)
        save({"rows": rows})  # a run cut short still leaves the shapes it finished
        print(format_row(row), flush=True)
    return {"rows": rows}


def format_row(row: dict) -> str:
    def ms(key):
        r = row.get(key, {})
        return f"{r['ms']:.3f}" if r.get("ms") is not None else r.get("error", "-")

    names = ("floor", "floor-aligned", "eager", "compiled", "hybrid", "fused", "fused-det")
    shape = f"L={row['L']:<4d}H={row['H']:<4d}V={row['V']:<7d}"
    return shape + " fwd " + " ".join(f"{n}={ms(n + '/fwd')}" for n in names[:6]) + " | fwd+bwd " + " ".join(
        f"{n}={ms(n + '/fwd+bwd')}" for n in names
    )


def run_cpu() -> dict:
    rows = []
    for B, L, H, V in CPU_SHAPES:
        gen = torch.Generator().manual_seed(0)
        hidden, weight = torch.randn(B, L, H, generator=gen), torch.randn(V, H, generator=gen) / H**0.5
        bias, mask = torch.randn(V, generator=gen) * 0.1, torch.ones(B, L, dtype=torch.long)
        row = {"B": B, "L": L, "H": H, "V": V}
        for name, fn in (("eager", splade_max_pool_reference), ("chunked", splade_max_pool_chunked)):
            times = []
            for _ in range(5):
                start = time.perf_counter()
                with torch.no_grad():
                    fn(hidden, weight, bias, mask)
                times.append((time.perf_counter() - start) * 1e3)
            row[f"{name}/fwd_ms"] = statistics.median(times)
        rows.append(row)
        print(f"B={B} L={L} H={H} V={V}  eager {row['eager/fwd_ms']:.1f} ms  chunked {row['chunked/fwd_ms']:.1f} ms")
    print("No CUDA device: the GPU table (Triton kernel vs baselines) is pending a GPU run.")
    return {"rows": rows, "gpu_table": "pending"}


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--quick", action="store_true", help="GPU: only the first two shapes")
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available()
    result = {"machine": machine(), "dtype": "bfloat16" if gpu else "float32", "vocab_chunk": DEFAULT_VOCAB_CHUNK}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / ("kernel.json" if gpu else "kernel_cpu.json")

    def save(part: dict) -> None:
        path.write_text(json.dumps({**result, **part}, indent=1))

    save(run_gpu(args.quick, save) if gpu else run_cpu())
    print(f"wrote {path}", file=sys.stderr)

if __name__ == "__main__":
    main()
