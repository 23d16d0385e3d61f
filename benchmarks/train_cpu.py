"""Training speed on CPU: ``lsr train``'s step vs sentence-transformers' SpladeLoss (MNRL + FLOPS), taking turns.

The same children as ``train_gpu.py`` (same model, batch, data, in-batch negatives, AdamW), run on this CPU in fp32
at 128 tokens, both sides (``lsr train``'s document length until it moved to 256): each measurement is a fresh
process, the systems alternate which goes first each round, and the table gives the median steps/s and each
process's peak RSS.
Ours pools through the exact screen (``kernels/pool_screen.py``) and its sparse backward; theirs materialises the
B x L x V logits.

    python benchmarks/train_cpu.py                   # about 4 minutes on 2 cores
    python benchmarks/train_cpu.py --one-core-busy   # beside a busy loop pinned to one core

Writes benchmarks/results/train_cpu.md (or train_cpu-one-core-busy.md) and .json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from encode import machine, run_quiet_or_busy
from train_gpu import CHILDREN, FLOPS_WEIGHT, run_child

REPO = Path(__file__).resolve().parent.parent
MAX_LENGTH = 128  # the step compared (lsr train's documents were 128 tokens until it moved to 256)
BATCH = 16  # lsr train's default
STEPS = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=STEPS, help="timed steps per measurement, after warm-up ones")
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    run_quiet_or_busy(parser, "train_cpu", measure)


def measure(args: argparse.Namespace, condition: str) -> tuple[dict, str]:
    from lsr.encode.models import resolve_model
    from lsr.kernels.pool_screen import best_precision

    started = time.perf_counter()
    tiny = resolve_model("splade-tiny")
    runs: dict[str, list[dict]] = {system: [] for system in CHILDREN}
    for round_ in range(args.rounds):
        for system in (list(CHILDREN) if round_ % 2 == 0 else list(CHILDREN)[::-1]):
            runs[system].append(run_child(system, tiny, BATCH, args.steps, "cpu", MAX_LENGTH))
    rate = {system: float(np.median([r["steps_per_s"] for r in found])) for system, found in runs.items()}
    peak = {system: max(r["peak_gib"] for r in found) for system, found in runs.items()}
    report = {"machine": machine(torch.get_num_threads()), "condition": condition, "batch": BATCH,
              "max_length": MAX_LENGTH, "steps": args.steps, "rounds": args.rounds, "flops_weight": FLOPS_WEIGHT,
              "screen": best_precision(), "runs": runs, "steps_per_s": rate, "peak_rss_gib": peak,
              "total_seconds": time.perf_counter() - started}
    ours, theirs = "ours", "sentence-transformers"
    m = report["machine"]
    lines = [f"# Training step on CPU: splade-tiny, fp32, batch {BATCH} pairs, max_length {MAX_LENGTH}", "",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, load average {m['loadavg_start']:.1f}, {condition}; "
             f"fresh process per measurement, taking turns, {args.rounds} rounds of {args.steps} timed steps; "
             f"our pooling's screen: {report['screen']}.", "",
             "| | ours (lsr train) | SpladeLoss (MNRL + FLOPS) | ratio |", "|---|---:|---:|---:|",
             f"| steps/s (median) | {rate[ours]:.2f} | {rate[theirs]:.2f} | {rate[ours] / rate[theirs]:.2f}x |",
             f"| peak RSS GiB | {peak[ours]:.2f} | {peak[theirs]:.2f} | {peak[ours] / peak[theirs]:.2f}x |", "",
             "Rounds (steps/s): " + "; ".join(f"{system} " + ", ".join(f"{r['steps_per_s']:.2f}" for r in found)
                                              for system, found in runs.items())
             + f". Total {report['total_seconds']:.0f} s."]
    return report, "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
