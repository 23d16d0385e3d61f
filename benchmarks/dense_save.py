"""What a write pays when the dense index's save falls due, what the save costs beside later adds, and opening what
it saved, with the code before (``--before``: a checkout of it) and now, taking turns in two processes.

Before, the write that made a save due took a clone of the faiss index (``clone_index``) and the background save
wrote the clone; now a flat index's snapshot copies only its live bits and the save reads the rows from the live
index a chunk at a time. A thread adds one row every 10 ms during the save: its slowest add is the wait a save
imposes on writes.

    git worktree add /tmp/before f3ba362
    python benchmarks/dense_save.py --before /tmp/before     # 1M MiniLM-sized vectors (1.5 GB), about 5 minutes
    python benchmarks/dense_save.py --before /tmp/before --one-core-busy

Writes ``benchmarks/results/dense_save.{md,json}`` (``dense_save-one-core-busy`` with a busy loop on one core).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from lsr.eval.report import write_table
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


def timed_rounds(rows: int, dim: int, rounds: int) -> None:
    """In a process running one version: per line read on stdin, one save of the filled index, its costs as JSON."""
    index, folder = filled(rows, dim), Path(tempfile.mkdtemp(prefix="dense-save-"))
    extra = np.random.default_rng(1).standard_normal((1, dim), dtype=np.float32)
    print("ready", flush=True)
    for r in range(rounds):
        sys.stdin.readline()
        start = time.perf_counter()
        taken = index.snapshot(r)
        snapshot_s = time.perf_counter() - start
        adds: list[float] = []
        done = threading.Event()

        def add_beside() -> None:
            while not done.is_set():
                begun = time.perf_counter()
                index.add([f"r{r}-{len(adds)}"], extra)
                adds.append(time.perf_counter() - begun)
                done.wait(0.01)

        adder = threading.Thread(target=add_beside)
        adder.start()
        start = time.perf_counter()
        taken.write(folder)
        write_s = time.perf_counter() - start
        done.set()
        adder.join()
        start = time.perf_counter()
        DenseIndex.open(folder)
        open_s = time.perf_counter() - start
        print(json.dumps({"snapshot_s": snapshot_s, "write_s": write_s, "open_s": open_s,
                          "slowest_add_ms": max(adds) * 1e3, "adds": len(adds)}), flush=True)
    shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a checkout of the code whose snapshot cloned the index")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one-core-busy", action="store_true",
                        help="run beside a busy loop pinned to one core (results under dense_save-one-core-busy)")
    parser.add_argument("--timed-rounds", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.timed_rounds:
        return timed_rounds(args.rows, args.dim, args.rounds)
    from encode import contention

    command = [sys.executable, __file__, "--timed-rounds", "--before", args.before, "--rows", str(args.rows),
               "--dim", str(args.dim), "--rounds", str(args.rounds)]
    versions = {"before": {**os.environ, "PYTHONPATH": args.before}, "now": dict(os.environ)}
    procs = {}
    for version, env in versions.items():  # one at a time: each fills 1.5 GB
        procs[version] = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert procs[version].stdout.readline().strip() == "ready"
    rounds: dict[str, list[dict]] = {version: [] for version in versions}
    with contention("one core busy" if args.one_core_busy else "quiet", Path(tempfile.gettempdir())):
        for r in range(args.rounds):  # taking turns, the order flipped every round
            for version in (list(versions) if r % 2 == 0 else list(versions)[::-1]):
                procs[version].stdin.write("\n")
                procs[version].stdin.flush()
                rounds[version].append(json.loads(procs[version].stdout.readline()))
                print(version, rounds[version][-1], flush=True)
    for proc in procs.values():
        proc.wait()
    report(args, rounds)


def report(args: argparse.Namespace, rounds: dict[str, list[dict]]) -> None:
    gb = args.rows * args.dim * 4 / 1e9

    def each(version: str, key: str, scale: float = 1.0, digits: int = 2) -> str:
        return " / ".join(f"{row[key] * scale:.{digits}f}" for row in rounds[version])

    intro = (f"{args.rows:,} vectors of {args.dim} dimensions ({gb:.2f} GB, flat), {args.rounds} rounds taking turns "
             "(each round's figures, ` / ` between rounds). `before`: the snapshot clones the faiss index; `now`: it "
             "copies the live bits and the save reads the rows from the live index a chunk at a time. A thread adds "
             "one row every 10 ms during the save." + (" A busy loop ran on one of the cores." if args.one_core_busy
                                                        else ""))
    header = ["", "before", "now"]
    cells = [["the write that makes a save due: the snapshot, s", each("before", "snapshot_s"), each("now", "snapshot_s", digits=4)],
             ["the save, in the background, s", each("before", "write_s"), each("now", "write_s")],
             ["slowest one-row add during the save, ms", each("before", "slowest_add_ms", digits=1),
              each("now", "slowest_add_ms", digits=1)],
             ["opening the saved index, s", each("before", "open_s"), each("now", "open_s")]]
    write_table(RESULTS, "dense_save" + ("-one-core-busy" if args.one_core_busy else ""),
                "What a write pays when the dense index's save falls due", intro, header, cells,
                {"rows": args.rows, "dim": args.dim, "gb": gb, **rounds})


if __name__ == "__main__":
    main()
