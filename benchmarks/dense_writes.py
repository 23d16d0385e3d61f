"""The dense index as documents are replaced (upserted again under their ids): search latency and the cost of
publishing a version after a write, with the code before (``--before``: a checkout of it) and now, taking turns.

Before, a replaced document left a tombstone that every search asked faiss for (k plus every tombstone, all
sorted), and each write copied the whole id list and map to publish a version; now searches skip tombstones in
faiss, a flat index is rebuilt without them once they pass a quarter of its rows, and a version copies one byte a row.

    git worktree add /tmp/before 7f1a1b3
    python benchmarks/dense_writes.py --before /tmp/before     # 200k MiniLM-sized vectors, about 3 minutes

Writes ``benchmarks/results/dense_writes.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
REPLACED = (0, 20_000, 50_000, 100_000, 200_000)


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def worker(rows: int, dim: int) -> None:
    """In a process running one version: one step per line read on stdin, its measurements printed as JSON."""
    from lsr.search.dense_index import DenseIndex

    index = DenseIndex.create(dim)
    for start in range(0, rows, 100_000):
        index.add([f"d{i}" for i in range(start, min(rows, start + 100_000))], _vectors(min(100_000, rows - start), dim, start))
    queries = _vectors(64, dim, 7)
    done = 0
    print("ready", flush=True)
    for target in REPLACED:
        sys.stdin.readline()
        while done < target:  # replace documents 1,000 per write, round robin over the collection
            ids = [f"d{(done + i) % rows}" for i in range(1_000)]
            index.add(ids, _vectors(1_000, dim, 1_000_000 + done))
            done += 1_000
        pins = []
        for _ in range(20):
            start = time.perf_counter()
            index.pinned()
            pins.append(time.perf_counter() - start)
        single, batched = [], []
        for q in range(0, 32):
            start = time.perf_counter()
            index.search(queries[q : q + 1], 10)
            single.append(time.perf_counter() - start)
        for q in range(0, 64, 8):
            start = time.perf_counter()
            index.search(queries[q : q + 8], 10)
            batched.append(time.perf_counter() - start)
        print(json.dumps({"replaced": done, "faiss_rows": int(index.index.ntotal), "pin_ms": float(np.median(pins)) * 1e3,
                          "search_ms": float(np.median(single)) * 1e3, "search8_ms": float(np.median(batched)) * 1e3}),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a checkout of the code before tombstones were skipped")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one-core-busy", action="store_true",
                        help="run beside a busy loop pinned to one core (results under NAME-one-core-busy)")
    args = parser.parse_args()
    if args.worker:
        return worker(args.rows, args.dim)
    from encode import contention

    with contention("one core busy" if args.one_core_busy else "quiet", Path(tempfile.gettempdir())):
        rows = measure(args)
    report(args.rows, args.dim, rows, args.one_core_busy)


def measure(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Both versions' workers, stepped in turns."""
    workers = {}
    for version in ("before", "now"):
        env = {**os.environ, "PYTHONPATH": args.before} if version == "before" else dict(os.environ)
        workers[version] = subprocess.Popen([sys.executable, __file__, "--worker", "--before", args.before, "--rows",
                                             str(args.rows), "--dim", str(args.dim)], env=env, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True)
        assert workers[version].stdout.readline().strip() == "ready"
    rows: dict[str, list[dict]] = {"before": [], "now": []}
    for _ in REPLACED:
        for version, proc in workers.items():  # taking turns
            proc.stdin.write("\n")
            proc.stdin.flush()
            rows[version].append(json.loads(proc.stdout.readline()))
            print(version, rows[version][-1], flush=True)
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()
    return rows


def report(n: int, dim: int, rows: dict[str, list[dict]], one_core_busy: bool = False) -> None:
    from lsr.eval.report import write_table

    intro = (f"{n:,} documents of {dim} dimensions (flat), replaced 1,000 per write round robin (an upsert of an id it "
             "holds); the two versions take turns. A search of 1 query and of 8, k = 10, p50; publishing a version "
             "(`pinned()`, every write does it), p50." + (" A busy loop ran on one of the cores." if one_core_busy else ""))
    header = ["replaced", "faiss rows before / now", "search before", "search now", "8 queries before", "8 queries now",
              "publish before", "publish now"]
    cells = [[f"{now['replaced']:,}", f"{before['faiss_rows']:,} / {now['faiss_rows']:,}", f"{before['search_ms']:.1f} ms",
              f"{now['search_ms']:.1f} ms", f"{before['search8_ms']:.1f} ms", f"{now['search8_ms']:.1f} ms",
              f"{before['pin_ms'] * 1e3:,.0f} µs", f"{now['pin_ms'] * 1e3:,.0f} µs"]
             for before, now in zip(rows["before"], rows["now"])]
    write_table(RESULTS, "dense_writes" + ("-one-core-busy" if one_core_busy else ""),
                "The dense index as documents are replaced", intro, header, cells,
                {"rows": n, "dim": dim, **rows})


if __name__ == "__main__":
    main()
