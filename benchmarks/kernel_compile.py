"""Compile the fused pooling kernels for GPUs this machine does not have, and check every launch choice.

Why: a GPU session is short and rare. A launch that does not compile, does not fit a GPU family's
shared memory, or spills its accumulators to local memory is found here instead, on the CPU, with
Triton's own compiler and ptxas, ahead of time (as ``triton.tools.compile`` does). Arguments are
specialised as Triton's launcher would (1 → constant, multiples of 16 → divisibility hints, the
kernels' ``@triton.heuristics`` evaluated), so the code is the one a GPU would run.

For each family, every forward key (dtype x length bucket x train/inference) gets the configuration
``kernels/launch.py`` would use there (the committed table, else the heuristic), and each backward
kernel its fixed block. A row reports shared memory against the family's limit, registers and stack
(spill) bytes per thread, which instructions the dot became (wgmma, tcgen05, mma or FMA) and the
compile time; it fails when the kernel does not compile, does not fit, or spills more than 64 values a thread.

    python benchmarks/kernel_compile.py                      # every family and key, ~3.5 min on 2 cores
    python benchmarks/kernel_compile.py --families sm80,sm90 --selection table
    pip install --no-deps --target /tmp/triton-3.6 triton==3.6.0     # another Triton (the H200 image's) ...
    PYTHONPATH=/tmp/triton-3.6 python benchmarks/kernel_compile.py --name kernel_compile-triton-3.6

Writes benchmarks/results/kernel_compile.md (or NAME.md) and .json; exits 1 when a row fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("kernel_compile.py: unset TRITON_INTERPRET (the interpreter's kernels cannot be compiled)")

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # this Triton's default, said out loud (else it warns)
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from lsr.kernels import launch, pool_triton  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Opt-in shared memory per block (CUDA C Programming Guide, "Technical Specifications per Compute Capability").
FAMILIES = {
    "sm75": ("T4, RTX 20", 64 * 1024),
    "sm80": ("A100, A30", 163 * 1024),
    "sm86": ("A10, A40, RTX 30", 99 * 1024),
    "sm89": ("L4, L40S, RTX 40", 99 * 1024),
    "sm90": ("H100, H200", 227 * 1024),
    "sm100": ("B200", 227 * 1024),
    "sm120": ("RTX 50", 99 * 1024),
}
DTYPES = ("bf16", "fp16", "fp32")
BUCKETS = (16, 32, 64, 128, 256, 512)
HIDDEN = 768
VOCAB = 30522
BATCH = 32
# Stack bytes a thread may spill: 64 fp32 values. The fastest measured H100 configurations spill up to 64 B
# (argmax bookkeeping in training); a 128x256 fp32 FMA tile spilled 13 KB and would crawl.
SPILL_LIMIT = 256


def jit_function(kernel) -> triton.runtime.jit.JITFunction:
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def specialise(kernel, args: dict) -> ASTSource:
    """The ASTSource Triton's launcher would build for these arguments.

    ``args`` maps every parameter to a pointer type (``"*bf16"``), an int, or a constexpr value;
    ``@triton.heuristics`` values are computed from them, as at launch.
    """
    args = dict(args)
    for name, rule in getattr(kernel, "values", {}).items():
        args[name] = rule(args)
    fn = jit_function(kernel)
    signature, constants, attrs = {}, {}, {}
    for index, param in enumerate(fn.params):
        value = args[param.name]
        specialise_it = not param.do_not_specialize
        if param.is_constexpr:
            signature[param.name], constants[param.name] = "constexpr", value
        elif isinstance(value, str):  # a tensor: torch's allocations are 16-byte aligned
            signature[param.name] = value
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif value == 1 and specialise_it:
            signature[param.name], constants[param.name] = "constexpr", 1
        else:
            signature[param.name] = "i32"
            if specialise_it and value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)


def forward_args(key: launch.LaunchKey, config: launch.LaunchConfig) -> tuple[object, dict]:
    """The forward kernel and its arguments for a batch padded to the bucket, as ``pool_triton._forward`` passes them."""
    H, L, pointer = key.hidden, key.bucket, "*" + key.dtype
    args = dict(
        hidden_ptr=pointer, weight_ptr=pointer, bias_ptr=pointer, mask_ptr="*i64", out_ptr=pointer,
        pooled_ptr="*fp32", arg_ptr="*i32", B=BATCH, L=L, H=H, V=VOCAB,
        stride_hb=L * H, stride_hl=H, stride_hh=1, stride_wv=H, stride_wh=1, stride_mb=L, stride_ml=1,
        HAS_BIAS=True, STORE_ARG=key.train, DOT_PRECISION="ieee" if key.dtype == "fp32" else "tf32", UPCAST_DOT=False,
        **{name: value for name, value in config.meta(key.kernel).items() if name.isupper()},
    )
    if key.kernel == "packed":
        return pool_triton._splade_pool_packed_kernel, {**args, "LP": L}
    return pool_triton._splade_pool_fwd_kernel, args


def backward_args(name: str, dtype: str) -> tuple[object, dict, int]:
    """A backward kernel, its arguments at B = 32, L = 256, H = 768, and its warps (its fixed block, as launched)."""
    H, L, pointer = HIDDEN, 256, "*" + dtype
    if name == "grad_weight":
        rows, cols, warps = pool_triton._fit(pool_triton.GRAD_WEIGHT_BLOCK, H)
        return pool_triton._grad_weight_kernel, dict(
            g_ptr="*fp32", arg_ptr="*i32", hidden_ptr=pointer, grad_weight_ptr=pointer, B=BATCH, H=H, V=VOCAB,
            stride_hb=L * H, stride_hl=H, stride_hh=1, BLOCK_V=rows, BLOCK_H=cols), warps
    if name == "grad_hidden_atomic":
        rows, cols, warps = pool_triton._fit(pool_triton.GRAD_HIDDEN_ATOMIC_BLOCK, H)
        return pool_triton._grad_hidden_atomic_kernel, dict(
            g_ptr="*fp32", arg_ptr="*i32", weight_ptr=pointer, grad_hidden_ptr="*fp32", L=L, H=H, V=VOCAB,
            stride_wv=H, stride_wh=1, BLOCK_V=rows, BLOCK_H=cols), warps
    rows, cols, warps = pool_triton._fit(pool_triton.GRAD_HIDDEN_SEGMENT_BLOCK, H)
    return pool_triton._grad_hidden_segment_kernel, dict(
        row_start_ptr="*i64", vocab_ptr="*i32", g_ptr="*fp32", weight_ptr=pointer, grad_hidden_ptr=pointer,
        H=H, stride_wv=H, stride_wh=1, BLOCK_S=rows, BLOCK_H=cols), warps


def resources(compiled) -> dict:
    """Shared memory (Triton's figure), registers and stack bytes per thread (cuobjdump), and the dot's instructions."""
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    fields = dict(item.split(":", 1) for item in usage.strip().splitlines()[-1].split() if ":" in item)
    ptx = compiled.asm["ptx"]
    dot = next((name for name, mark in (("tcgen05", "tcgen05.mma"), ("wgmma", "wgmma.mma_async"), ("mma", "mma.sync"))
                if mark in ptx), "fma")
    return {"shared": int(compiled.metadata.shared), "registers": int(fields["REG"]), "stack": int(fields["STACK"]),
            "dot": dot}


def compile_row(row: dict) -> dict:
    """Compile one row's kernel for its family; add its resources, seconds and verdict."""
    capability = launch.compute_capability(row["family"])
    if row["kernel"] in launch.KERNELS:
        key = launch.LaunchKey(row["family"], row["kernel"], row["dtype"], row["hidden"], row["bucket"], row["mode"] == "train")
        config = launch.LaunchConfig(*row["config"])
        kernel, args = forward_args(key, config)
        options = {"num_warps": config.warps, "num_stages": config.stages}
    else:
        kernel, args, warps = backward_args(row["kernel"], row["dtype"])
        options = {"num_warps": warps}
    start = time.perf_counter()
    try:
        compiled = triton.compile(specialise(kernel, args), target=GPUTarget("cuda", capability, 32), options=options)
    except Exception as error:  # noqa: BLE001 - the row reports what the compiler said
        return {**row, "seconds": round(time.perf_counter() - start, 2), "ok": False,
                "problem": f"does not compile: {type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    seconds = round(time.perf_counter() - start, 2)
    found = resources(compiled)
    limit = FAMILIES[row["family"]][1]
    problem = ""
    if found["shared"] > limit:
        problem = f"needs {found['shared']} B of shared memory, the family has {limit}"
    elif found["stack"] > SPILL_LIMIT:
        problem = f"spills {found['stack']} B a thread: the accumulators live in local memory"
    return {**row, **found, "limit": limit, "seconds": seconds, "ok": not problem, "problem": problem}


def forward_rows(family: str, selection: str) -> list[dict]:
    """The forward keys to compile for a family, each with the configuration the chooser would use there."""
    table = launch.launch_table()
    if selection == "table":
        keys = [_key(text) for text in table if text.startswith(family + "/")]
    else:
        dtypes = [d for d in DTYPES if d != "bf16" or launch.compute_capability(family) >= 80]  # bf16 needs sm80
        if selection == "smoke":  # two training keys with the larger tiles: tiled on tensor cores, packed fp32 (FMA)
            keys = [launch.LaunchKey(family, "tiled", dtypes[0], HIDDEN, 512, True),
                    launch.LaunchKey(family, "packed", "fp32", HIDDEN, 32, True)]
        else:
            keys = [launch.LaunchKey(family, "packed" if b <= pool_triton.PACK_MAX_LEN else "tiled", d, HIDDEN, b, train)
                    for d in dtypes for b in BUCKETS for train in (False, True)]
        keys += [_key(text) for text in table if text.startswith(family + "/") and _key(text) not in keys]
    rows = []
    for key in keys:
        config = table.get(key.text()) or launch.heuristic(key, FAMILIES[family][1])
        rows.append({"family": family, "kernel": key.kernel, "dtype": key.dtype, "hidden": key.hidden,
                     "bucket": key.bucket, "mode": "train" if key.train else "infer", "config": list(config.__dict__.values()),
                     "source": "table" if key.text() in table else "heuristic"})
    return rows


def backward_rows(family: str, selection: str) -> list[dict]:
    dtypes = [d for d in ("bf16", "fp32") if d != "bf16" or launch.compute_capability(family) >= 80]
    dtypes = dtypes[:1] if selection == "smoke" else dtypes
    return [{"family": family, "kernel": name, "dtype": dtype, "hidden": HIDDEN, "bucket": 256, "mode": "train",
             "config": [], "source": "fixed"}
            for name in ("grad_weight", "grad_hidden_atomic", "grad_hidden_segment") for dtype in dtypes]


def _key(text: str) -> launch.LaunchKey:
    gpu, kernel, dtype, hidden, bucket, mode = text.split("/")
    return launch.LaunchKey(gpu, kernel, dtype, int(hidden[1:]), int(bucket[1:]), mode == "train")


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Fused pooling kernels compiled ahead of time for each GPU family",
        "",
        f"Compiled on {meta['machine']} (no GPU) with Triton {meta['triton']} and its ptxas; "
        f"{meta['compiled']} kernels in {meta['wall_s']:.0f} s. `benchmarks/kernel_compile.py` "
        f"({meta['selection']}). Forward rows: B = {BATCH}, L = the bucket, H = {HIDDEN} unless the table says "
        f"otherwise, V = {VOCAB}; backward rows: L = 256.",
        "",
        "config = (BLOCK_V, BLOCK_L or BLOCK_N, BLOCK_H, warps, stages); shared = bytes a block needs, limit = the "
        "family's opt-in maximum; registers and stack (spill) bytes are per thread; dot = the instructions "
        "`tl.dot` became.",
        "",
        "| family | kernel | dtype | H | L | mode | config | source | shared | limit | regs | stack | dot | s | ok |",
        "|---|---|---|---:|---:|---|---|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        config = "(" + ", ".join(map(str, r["config"])) + ")" if r["config"] else "fixed"
        verdict = "yes" if r["ok"] else "**no**: " + r["problem"]
        lines.append(
            f"| {r['family']} | {r['kernel']} | {r['dtype']} | {r['hidden']} | {r['bucket']} | {r['mode']} | {config} | "
            f"{r['source']} | {r.get('shared', '')} | {r.get('limit', '')} | {r.get('registers', '')} | "
            f"{r.get('stack', '')} | {r.get('dot', '')} | {r['seconds']} | {verdict} |")
    failed = [r for r in rows if not r["ok"]]
    lines += ["", "A compile time of 0 s is a binary another row already built (Triton's cache).", "",
              f"{len(rows) - len(failed)} of {len(rows)} rows compile and fit." +
              ("" if not failed else f" {len(failed)} do not: see the rows marked **no**."), "",
              "Per family, forward kernels:", "",
              "| family | GPUs | `tl.dot` by dtype | most shared memory used | most stack a thread |",
              "|---|---|---|---:|---:|"]
    for family, (gpus, limit) in FAMILIES.items():
        mine = [r for r in rows if r["family"] == family and r["kernel"] in launch.KERNELS and "dot" in r]
        if mine:
            dots = ", ".join(f"{d} {sorted({r['dot'] for r in mine if r['dtype'] == d})[0]}"
                             for d in DTYPES if any(r["dtype"] == d for r in mine))
            lines.append(f"| {family} | {gpus} | {dots} | {max(r['shared'] for r in mine)} of {limit} | "
                         f"{max(r['stack'] for r in mine)} B |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated subset of {','.join(FAMILIES)}")
    parser.add_argument("--selection", choices=("all", "table", "smoke"), default="all",
                        help="all keys; only the committed table's; or a few per family (tests)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="kernel_compile", help="results file stem, e.g. for another Triton version")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="compiler processes")
    args = parser.parse_args()
    families = args.families.split(",")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    rows = [r for f in families for r in forward_rows(f, args.selection)]
    if args.selection != "table":
        rows += [r for f in families for r in backward_rows(f, args.selection)]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:  # cold compiles, and no foreign cubins in the user's Triton cache
        os.environ["TRITON_CACHE_DIR"] = cache
        with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
            rows = list(pool.map(compile_row, rows))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    meta = {"machine": f"{cpu or platform.processor()}, {os.cpu_count()} CPUs", "triton": triton.__version__,
            "selection": f"--selection {args.selection} --families {args.families}", "compiled": len(rows),
            "wall_s": time.perf_counter() - start}
    text = markdown(rows, meta)
    print(text)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{args.name}.md").write_text(text, encoding="utf-8")
    (args.results_dir / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n",
                                                        encoding="utf-8")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
