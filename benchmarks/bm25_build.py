"""Peak memory and time of building the BM25 leg from a collection's docs files: lsr's chunked build against
bm25s's own (every text read, every document's word list at once: how a bm25s user builds, and how lsr built
its leg before). Both compute the same scores; each runs in a fresh process.

    python benchmarks/bm25_build.py                     # 1M documents (SciFact's texts, repeated), about 8 minutes
    python benchmarks/bm25_build.py --docs 100000 --note "quick run"
    python benchmarks/bm25_build.py --one-core-busy   # beside a busy loop pinned to one core

The corpus repeats SciFact's 5,183 texts, each with one extra word of 100,000 (so the vocabulary grows as a
real corpus's does), written as a collection's docs files of 10,000 documents. Writes
benchmarks/results/bm25_build.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("lsr: docs files read a chunk at a time, tokenised on every CPU (as `lsr index` builds)",
           "lsr: the same in one process", "bm25s: every text and word list at once (peer)")
SHARD_DOCS = 10_000


def write_docs(folder: Path, beir: Path, docs: int) -> int:
    """The docs files of a collection of ``docs`` documents; returns their shard count."""
    from lsr.eval.datasets import load_beir
    from lsr.ingest.layout import shard_name

    data = load_beir(beir, splits=("test",))
    ids = list(data.corpus)
    texts = data.doc_texts(ids)
    (folder / "docs").mkdir(parents=True)
    shards = 0
    for shard, start in enumerate(range(0, docs, SHARD_DOCS)):
        rows = range(start, min(start + SHARD_DOCS, docs))
        table = pa.table({"id": [f"d{i}" for i in rows],
                          "text": [f"{texts[i % len(texts)]} w{i % 100_000}" for i in rows]})
        pq.write_table(table, folder / shard_name("docs", shard), compression="zstd")
        shards = shard + 1
    return shards


def peak_mb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(system: str, folder: Path, shards: int) -> dict:
    import hashlib

    import numpy as np
    import Stemmer

    from lsr.ingest.layout import doc_chunks
    from lsr.search.bm25_build import bm25s_module
    from lsr.search.bm25_index import Bm25Index, build_bm25

    Bm25Index.build(["a"], ["warm up"])  # imports and compiled code, in every system
    before = rss_mb()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from the current RSS
    start = time.perf_counter()
    if system == SYSTEMS[0]:
        build_bm25(folder, shards)
        data = np.load(folder / "bm25" / "data.csc.index.npy")
    elif system == SYSTEMS[1]:
        data = Bm25Index.build_from(doc_chunks(folder, shards), workers=1).retriever.scores["data"]
    else:  # as a bm25s user builds: every text in a list, tokenised at once, indexed, saved
        texts = [text for _, chunk in doc_chunks(folder, shards) for text in chunk]
        bm25s = bm25s_module()
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), show_progress=False),
                        show_progress=False)
        retriever.save(str(folder / "bm25s"))
        data = retriever.scores["data"]
    seconds = time.perf_counter() - start
    # bm25s numbers its words in set order: equal scores are equal sorted score arrays
    digest = hashlib.sha256(np.sort(data).tobytes()).hexdigest()
    workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest worker's, once joined
    return {"system": system, "seconds": seconds, "peak_mb": peak_mb(), "before_mb": before,
            "worker_peak_mb": workers_mb, "scores_sha256": digest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--beir", type=Path, default=REPO.parent / "shared" / "data" / "beir" / "scifact.tar.gz")
    parser.add_argument("--note", default="")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--shards", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--one-core-busy", action="store_true",
                        help="run beside a busy loop pinned to one core (results under bm25_build-one-core-busy)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.shards)))
        return
    from encode import contention

    runs = []
    with tempfile.TemporaryDirectory() as tmp, contention("one core busy" if args.one_core_busy else "quiet",
                                                          Path(tmp)):
        shards = write_docs(Path(tmp), args.beir, args.docs)
        for system in SYSTEMS:
            done = subprocess.run([sys.executable, __file__, "--child", system, "--folder", tmp,
                                   "--shards", str(shards)], capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{system} failed:\n{done.stderr[-2000:]}")
            row = json.loads(done.stdout.splitlines()[-1])
            print(row, flush=True)
            runs.append(row)
    from lsr.eval.report import write_table

    same = len({r["scores_sha256"] for r in runs}) == 1
    rows = [[r["system"], f"{args.docs:,}", f"{r['before_mb']:,.0f}", f"{r['peak_mb']:,.0f}",
             f"{(r['peak_mb'] - r['before_mb']) * 2**20 / args.docs:,.0f}",
             f"{r['worker_peak_mb']:,.0f}" if r["worker_peak_mb"] else "-", f"{r['seconds']:.1f}",
             "yes" if same else "NO"] for r in runs]
    load = os.getloadavg()[0]
    write_table(args.out, "bm25_build" + ("-one-core-busy" if args.one_core_busy else ""),
                "Building the BM25 leg: peak memory and time" + (", one core busy" if args.one_core_busy else ""),
                f"{args.docs:,} documents (SciFact's texts repeated, one extra word each of 100,000), in docs files of "
                f"{SHARD_DOCS:,}; fresh process per row, one run each. `before MB`: RSS as the build starts (imports); "
                f"`bytes/doc`: what the build added to it, per document; `worker peak MB`: the largest tokenising "
                f"worker's peak RSS (forked: the pages it shares with the building process count in both). `same "
                f"scores`: the score arrays, sorted, are equal (bm25s numbers its words in another order). Load "
                f"average {load:.1f} at the end. {args.note}",
                ["system", "docs", "before MB", "peak MB", "bytes/doc", "worker peak MB", "s", "same scores"], rows,
                {"docs": args.docs, "rows": runs, "note": args.note})


if __name__ == "__main__":
    main()
