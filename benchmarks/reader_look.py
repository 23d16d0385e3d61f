"""Search latency in a process that only reads a collection while another process upserts 256-document batches
into it (as `lsr upsert` does beside `lsr serve`), with the code before (``--before``: a checkout of it, whose
searches took up the other process's writes inline) and now (a background look), taking turns.

    git worktree add /tmp/before 1a8e2c0
    lsr index nfcorpus.tar.gz /tmp/nf --quiet
    python benchmarks/reader_look.py --collection /tmp/nf --before /tmp/before     # about 4 minutes

Writes ``benchmarks/results/reader_look.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BATCH = 256
SECONDS = 25.0
_WRITER = """
import sys, time
from lsr.ingest.collection import Collection
from lsr.search.legs import ViewLegs
col = Collection.open(sys.argv[1])
view = col.view()
ids = sorted(col.sparse.doc_ids())[: int(sys.argv[3])]
texts, sparse, dense = view.docs.get(ids), ViewLegs(view).sparse_vectors(ids), ViewLegs(view).dense_vectors(ids)
end, n = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < end:
    col.upsert([f"look{n}-{i}" for i in range(len(ids))], texts, sparse, dense)
    n += 1
    time.sleep(0.7)
print(n, flush=True)
"""


def reader(path: Path) -> dict:
    """In a process running one version: search (BM25 and sparse) in a loop while a writer process upserts."""
    import numpy as np

    from lsr.ingest.collection import Collection
    from lsr.search.legs import ViewLegs

    col = Collection.open(path)
    row = ViewLegs(col.view()).sparse_vectors([sorted(col.sparse.doc_ids())[5]]).row(0)
    query = {int(t): float(w) for t, w in zip(*row)}
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(SECONDS), str(BATCH)],
                              stdout=subprocess.PIPE, text=True)
    latencies = []
    end = time.monotonic() + SECONDS + 2
    while time.monotonic() < end:
        start = time.perf_counter()
        view = col.view()
        view.bm25_search(["vitamin d deficiency and bone health"], 10)
        view.sparse.search(query, k=10)
        latencies.append(time.perf_counter() - start)
        time.sleep(0.005)
    writes = int(writer.communicate()[0].strip())
    ms = np.asarray(latencies) * 1e3
    return {"writes": writes, "searches": len(ms), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "over_50ms": int((ms > 50).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", required=True, help="a collection built by `lsr index` (copied, not changed)")
    parser.add_argument("--before", required=True, help="a checkout of the code whose searches took writes up inline")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reader", help=argparse.SUPPRESS)
    parser.add_argument("--one-core-busy", action="store_true",
                        help="run beside a busy loop pinned to one core (results under NAME-one-core-busy)")
    args = parser.parse_args()
    if args.reader:
        print(json.dumps(reader(Path(args.reader))))
        return
    from encode import contention

    with contention("one core busy" if args.one_core_busy else "quiet", Path(tempfile.gettempdir())):
        rows = measure(args)
    report(args.collection, rows, args.one_core_busy)


def measure(args: argparse.Namespace) -> dict[str, list[dict]]:
    """A reader run per version per round, taking turns."""
    rows: dict[str, list[dict]] = {"before": [], "now": []}
    for _ in range(args.rounds):
        for version in rows:  # taking turns
            work = Path(tempfile.mkdtemp(prefix="reader-look-"))
            try:
                copy = shutil.copytree(args.collection, work / "col")
                env = {**os.environ, "PYTHONPATH": args.before} if version == "before" else dict(os.environ)
                out = subprocess.run([sys.executable, __file__, "--collection", args.collection, "--before", args.before,
                                      "--reader", str(copy)], env=env, check=True, capture_output=True, text=True).stdout
            finally:
                shutil.rmtree(work, ignore_errors=True)
            rows[version].append(json.loads(out.strip().splitlines()[-1]))
            print(version, rows[version][-1], flush=True)
    return rows


def report(collection: str, rows: dict[str, list[dict]], one_core_busy: bool = False) -> None:
    from lsr.eval.report import write_table

    meta = json.loads((Path(collection) / "lsr.json").read_text())
    intro = (f"A {meta['n_docs']:,}-document collection (`lsr index {Path(meta['settings']['source']).name}`), read by "
             f"one process searching in a loop (BM25 then sparse, 5 ms apart) for {SECONDS + 2:.0f} s, while another "
             f"upserts {BATCH} documents every 0.7 s. `before`: a search that found the other process's writes took "
             "them up itself; `now`: a background look does. The versions take turns, one row per run."
             + (" A busy loop ran on one of the cores." if one_core_busy else ""))
    header = ["version", "writes", "searches", "p50", "p99", "max", "searches over 50 ms"]
    cells = [[version, str(row["writes"]), f"{row['searches']:,}", f"{row['p50_ms']:.2f} ms", f"{row['p99_ms']:.2f} ms",
              f"{row['max_ms']:.1f} ms", str(row["over_50ms"])]
             for pair in zip(rows["before"], rows["now"]) for version, row in zip(rows, pair)]
    write_table(RESULTS, "reader_look" + ("-one-core-busy" if one_core_busy else ""),
                "Searches beside another process's writes", intro, header, cells, rows)


if __name__ == "__main__":
    main()
