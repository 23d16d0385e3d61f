"""Peak memory of building the sparse index, per non-zero weight: `lsr index`'s way (chunks read from files twice,
sizes then impacts), the Python API's with every chunk in a list the caller holds, and scipy's CSR → CSC transpose
(the term-major copy a scipy or numba accumulator search needs) as the peer. Each system runs in a fresh process.

    python benchmarks/build_memory.py                      # 1M synthetic documents of 120 terms, about 3 minutes
    python benchmarks/build_memory.py --label ded381b      # this script run where older code is the lsr imported

Rows of other labels already in ``benchmarks/results/build_memory.json`` stay in the table, so the code before and
after a change can be compared on one machine (peak memory does not drift with the load as time does).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
SYSTEMS = ("chunks made anew at each reading (as `lsr index` and `lsr repair` read shards)",
           "a list of chunks the caller holds", "scipy CSR → CSC (peer)")
VOCAB = 30522


class Chunks:
    """Synthetic documents made anew at each reading, as `lsr index` reads its vector shards from disk."""

    def __init__(self, docs: int, per_doc: int, chunk: int):
        self.docs, self.per_doc, self.chunk = docs, per_doc, chunk

    def __iter__(self):
        from lsr.sparse import SparseBatch

        stride = VOCAB // self.per_doc
        for start in range(0, self.docs, self.chunk):
            rng = np.random.default_rng(start)
            n = min(self.chunk, self.docs - start)
            terms = np.arange(self.per_doc, dtype=np.int32) * stride + rng.integers(0, stride, (n, self.per_doc))
            weights = (rng.gamma(1.0, 0.5, (n, self.per_doc)) + 0.01).astype(np.float32)
            yield (SparseBatch(np.arange(n + 1, dtype=np.int64) * self.per_doc, terms.ravel().astype(np.int32),
                               weights.ravel(), VOCAB), [f"d{start + i}" for i in range(n)])


def peak_mb() -> float:
    """The peak RSS since ``reset_peak`` (VmHWM)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from the current RSS


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def child(system: str, docs: int, per_doc: int, chunk: int) -> dict:
    from lsr.index import InvertedIndex
    from lsr.sparse import SparseBatch

    chunks = Chunks(docs, per_doc, chunk)
    InvertedIndex.build(Path(tempfile.mkdtemp()) / "warm", Chunks(10, 5, 10))  # numba's loads, in every system
    held = chunks if system == SYSTEMS[0] else list(chunks)
    if system == SYSTEMS[2]:
        held = SparseBatch.concat([batch for batch, _ in held]).to_scipy()
    before = rss_mb()
    reset_peak()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        if system == SYSTEMS[2]:
            held.tocsc()
        else:
            InvertedIndex.build(Path(folder) / "idx", held)
    return {"system": system, "seconds": time.perf_counter() - start, "peak_mb": peak_mb(), "before_mb": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--per-doc", type=int, default=120, help="non-zero weights a document")
    parser.add_argument("--chunk", type=int, default=50_000, help="documents a chunk (a vector shard)")
    parser.add_argument("--label", default="now", help="names this code's rows")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.docs, args.per_doc, args.chunk)))
        return
    path = args.out / "build_memory.json"
    report = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    nnz = args.docs * args.per_doc
    runs = []
    for system in SYSTEMS:
        done = subprocess.run([sys.executable, __file__, "--child", system, "--docs", str(args.docs), "--per-doc",
                               str(args.per_doc), "--chunk", str(args.chunk)], capture_output=True, text=True, check=True)
        row = {**json.loads(done.stdout.splitlines()[-1]), "label": args.label, "docs": args.docs, "nnz": nnz}
        print(row, flush=True)
        runs.append(row)
    report["rows"] = [r for r in report["rows"] if r["label"] != args.label] + runs
    from lsr.eval.report import write_table

    rows = [[f"{r['label']}: {r['system']}", f"{r['docs']:,}", f"{r['nnz']:,}", f"{r['before_mb']:,.0f}",
             f"{r['peak_mb']:,.0f}", f"{(r['peak_mb'] - r['before_mb']) * 2**20 / r['nnz']:.1f}",
             f"{r['peak_mb'] * 2**20 / r['nnz']:.1f}", f"{r['seconds']:.1f}"] for r in report["rows"]]
    write_table(args.out, "build_memory", "Peak memory of a sparse index build",
                "Synthetic documents (random terms, gamma weights), fresh process per row. `before MB`: the process's "
                "RSS as the build starts (imports, and the chunks where the caller holds them); `build B/weight`: "
                "what the build added to it, per non-zero weight; `total B/weight`: the whole process's peak. The "
                "index it writes keeps about 6 bytes a weight. Seconds are one run each, on a shared machine; the first "
                "system's include making the synthetic chunks at each reading (where `lsr index` reads Parquet).",
                ["system", "docs", "weights", "before MB", "peak MB", "build B/weight", "total B/weight", "s"], rows,
                report)


if __name__ == "__main__":
    main()
