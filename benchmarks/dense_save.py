"""What a write pays when the dense index's save falls due: the whole save, as the code before it ran in the
write (``--before``: a checkout of it), against the copy it now takes before the save goes on in the background
(``Collection._save``), taking turns.

    git worktree add /tmp/before e2df6f8
    python benchmarks/dense_save.py --before /tmp/before     # 1M MiniLM-sized vectors (1.5 GB), about 4 minutes

Writes ``benchmarks/results/dense_save.{md,json}``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lsr.eval.report import machine, write_results
from lsr.search.dense_index import DenseIndex

RESULTS = Path(__file__).parent / "results"


def filled(rows: int, dim: int) -> DenseIndex:
    rng = np.random.default_rng(0)
    index = DenseIndex.create(dim)
    for start in range(0, rows, 100_000):
        block = rng.standard_normal((min(100_000, rows - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        index.add([f"d{start + i}" for i in range(len(block))], block)
    return index


def timed_save(rows: int, dim: int, rounds: int) -> None:
    """In a process running the code before: one whole save per line read on stdin, its seconds printed."""
    index, folder = filled(rows, dim), Path(tempfile.mkdtemp(prefix="dense-save-before-"))
    print("ready", flush=True)
    for r in range(rounds):
        sys.stdin.readline()
        start = time.perf_counter()
        index.save(folder, journal_seq=r)
        print(time.perf_counter() - start, flush=True)
    shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a checkout of the code whose writes saved the dense index whole")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timed-save", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.timed_save:
        return timed_save(args.rows, args.dim, args.rounds)
    before = subprocess.Popen([sys.executable, __file__, "--timed-save", "--before", args.before, "--rows",
                               str(args.rows), "--dim", str(args.dim), "--rounds", str(args.rounds)],
                              env={**os.environ, "PYTHONPATH": args.before}, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert before.stdout.readline().strip() == "ready"
    index, folder = filled(args.rows, args.dim), Path(tempfile.mkdtemp(prefix="dense-save-"))
    whole, snapshot, background = [], [], []
    try:
        for r in range(args.rounds):  # taking turns
            before.stdin.write("\n")
            before.stdin.flush()
            whole.append(float(before.stdout.readline()))
            start = time.perf_counter()
            taken = index.snapshot(r)
            snapshot.append(time.perf_counter() - start)
            start = time.perf_counter()
            taken.write(folder)
            background.append(time.perf_counter() - start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        before.wait()
    row = {"rows": args.rows, "dim": args.dim, "gb": args.rows * args.dim * 4 / 1e9,
           "save_before_s": whole, "snapshot_s": snapshot, "background_write_s": background}
    text = "\n".join([
        "# What a write pays when the dense index's save falls due", "",
        f"{args.rows:,} vectors of {args.dim} dimensions ({row['gb']:.2f} GB, flat), {args.rounds} rounds taking turns.", "",
        "| | before: the whole save, in the write | now: the copy, in the write | now: the save, in the background |",
        "|---|---:|---:|---:|",
        "| seconds, each round | " + " / ".join(f"{t:.2f}" for t in whole) + " | "
        + " / ".join(f"{t:.2f}" for t in snapshot) + " | " + " / ".join(f"{t:.2f}" for t in background) + " |",
        "", f"Machine: {machine()}.", ""])
    write_results(RESULTS, "dense_save", {**row, "machine": machine()}, text)


if __name__ == "__main__":
    main()
