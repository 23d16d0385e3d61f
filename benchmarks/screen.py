"""The exact CPU pooling's two screens, int8 and bf16, taking turns on the same SciFact documents in one process.

`kernels/pool_screen.py` picks bf16 on CPUs with AMX and int8 elsewhere; this measures that choice on the machine
at hand: splade-tiny's whole document encode (max_length 256, the CPU defaults), each screen forced through
`LSR_SCREEN`, rounds alternating which goes first, and checks both give the same bits.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from encode import machine, run_quiet_or_busy, scifact_texts

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=256, help="first N SciFact documents (256: about 2 minutes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    run_quiet_or_busy(parser, "screen", measure)


def measure(args: argparse.Namespace, condition: str) -> tuple[dict, str]:
    """Both screens' docs/s over ``args.rounds`` turns each, and whether they gave the same bits."""

    from lsr.encode.splade import SpladeEncoder
    from lsr.kernels.pool_screen import PRECISIONS, best_precision

    texts = scifact_texts(args.limit)
    os.environ.pop("LSR_SCREEN", None)
    chosen = best_precision()
    encoder = SpladeEncoder.from_pretrained("splade-tiny", max_length=256, device="cpu")
    encoder.encode_documents(texts[:32])
    rates: dict[str, list[float]] = {p: [] for p in PRECISIONS if PRECISIONS[p]()}
    outputs = {}
    for round_ in range(args.rounds):
        for precision in (list(rates) if round_ % 2 == 0 else list(rates)[::-1]):
            os.environ["LSR_SCREEN"] = precision
            start = time.perf_counter()
            outputs[precision] = encoder.encode_documents(texts).to_scipy()
            rates[precision].append(len(texts) / (time.perf_counter() - start))
    os.environ.pop("LSR_SCREEN", None)
    first, *others = outputs.values()
    same = all((first != other).nnz == 0 for other in others)
    report = {"machine": machine(torch.get_num_threads()), "docs": len(texts), "rounds": args.rounds,
              "condition": condition, "chosen": chosen, "docs_per_s": rates, "same_bits": same}
    lines = [f"# Exact CPU pooling: int8 against bf16 screen ({len(texts)} SciFact documents, splade-tiny)", "",
             f"{report['machine']['cpu']}, {report['machine']['cores']} cores, torch {report['machine']['torch']}, "
             f"load average {report['machine']['loadavg_start']:.1f}, {condition}; taking turns, {args.rounds} rounds; "
             f"this CPU's choice: **{chosen}**; the screens give the same bits: {same}.", "",
             "| screen | docs/s (median) | rounds |", "|---|---:|---|"]
    for precision, values in rates.items():
        lines.append(f"| {precision} | {np.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    return report, "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
