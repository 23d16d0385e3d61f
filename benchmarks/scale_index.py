"""Bulk indexing at scale: `lsr index` in one process vs `--engine ray` with 1 and 2 encoder actors.

Each system indexes the same first ``--docs`` SciFact documents with the real `lsr index` command in its
own process (a fresh local Ray instance for the Ray runs, as a user gets), taking turns round by round
so drift in this shared machine's speed hits every system alike. Reported per system: end-to-end wall
time (process start, Ray start, model loads, encoding, index building) and the encode phase alone (docs
over the build's reading/loading/encoding/writing seconds), whether the collection's checksums equal the
single process's, and the Ray overhead at one worker. From the measured per-worker encode rate and the
collection's bytes per document it projects what MS MARCO's 8.8M passages cost on N workers and how
much disk and memory one shard needs.

    python benchmarks/scale_index.py --docs 2000          # a few minutes on 2 cores
    python benchmarks/scale_index.py [--docs N] [--rounds 2] [--checkpoint-every 250] [--gpu-docs-per-s R]
    python benchmarks/scale_index.py --from-json benchmarks/results/scale_index.json --gpu-docs-per-s R --gpu-source TEXT

The measurements are kept in scale_index.json beside the table, so a per-GPU rate measured later (by
``encode_gpu.py`` on a lent GPU) adds its projection row without re-measuring the CPU engines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCIFACT = Path(os.environ.get("LSR_BEIR_DIR") or REPO.parent / "shared" / "data" / "beir") / "scifact.tar.gz"
RESULTS = REPO / "benchmarks" / "results"
MS_MARCO_PASSAGES = 8_841_823
SYSTEMS = {"single process": [], "single process, 1 thread": ["--threads", "1"],
           "ray, 1 worker": ["--engine", "ray", "--workers", "1"], "ray, 2 workers": ["--engine", "ray", "--workers", "2"]}
# On CPU the bytes depend on the torch thread count: each system's collection must equal the single process
# that runs as many threads as one of its actors (2 cores: 1 actor runs 2 threads, 2 actors 1 thread each)
SAME_BYTES_AS = {"single process": "single process", "single process, 1 thread": "single process, 1 thread",
                 "ray, 1 worker": "single process", "ray, 2 workers": "single process, 1 thread"}
ENCODE_STAGES = ("read", "load", "sparse", "dense", "write", "encode")  # everything before the indexes are built


def write_corpus(path: Path, n_docs: int) -> int:
    from lsr.eval.datasets import load_beir

    corpus = load_beir(SCIFACT).corpus
    ids = list(corpus)[:n_docs]
    with open(path, "w", encoding="utf-8") as fh:
        for doc_id in ids:
            fh.write(json.dumps({"_id": doc_id, "title": corpus[doc_id]["title"], "text": corpus[doc_id]["text"]}) + "\n")
    return len(ids)


def run_system(flags: list[str], corpus: Path, out: Path, every: int) -> dict:
    """One `lsr index` run in a fresh process; its wall time, stage seconds and checksums."""
    cmd = [sys.executable, "-m", "lsr", "index", str(corpus), str(out), "--overwrite", "--quiet",
           "--checkpoint-every", str(every), *flags]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    meta = json.loads((out / "lsr.json").read_text())
    encode = sum(meta["stage_seconds"].get(stage, 0.0) for stage in ENCODE_STAGES)
    return {"wall": wall, "encode": encode, "docs": meta["n_docs"], "checksums": meta["checksums"]}


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def store_sizes(out: Path, n_docs: int) -> tuple[dict[str, float], int]:
    """(disk bytes per document of each store, fixed bytes per shard). The sparse and BM25 indexes carry
    vocabulary-sized arrays that a small collection would spread over few documents, so their per-document cost is
    the slope between this collection and its first half, rebuilt from the same vectors and texts (no encoding)."""
    import tempfile

    from lsr.index import InvertedIndex
    from lsr.ingest.layout import doc_chunks, read_vector_shards
    from lsr.search.bm25_index import Bm25Index
    from lsr.sparse import SparseBatch

    n_parts = json.loads((out / "lsr.json").read_text())["shards"]
    chunks = list(read_vector_shards(out, n_parts))
    vectors, vector_ids = SparseBatch.concat([batch for batch, _ in chunks]), [i for _, ids_ in chunks for i in ids_]
    ids, texts = [], []
    for chunk_ids, chunk_texts in doc_chunks(out, n_parts):
        ids += chunk_ids
        texts += chunk_texts
    half = n_docs // 2
    sizes, fixed = {}, (out / "vocab.json").stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        InvertedIndex.build(Path(tmp) / "half", vectors.select(np.arange(half)), vector_ids[:half])
        Bm25Index.build(ids[:half], texts[:half]).save(Path(tmp) / "bm25-half")
        for store, small in (("sparse", "half"), ("bm25", "bm25-half")):
            whole, part = _folder_bytes(out / store), _folder_bytes(Path(tmp) / small)
            sizes[store] = (whole - part) / (n_docs - half)
            fixed += max(0, int(whole - sizes[store] * n_docs))
    for store in ("dense", "docs", "vectors"):
        sizes[store] = sum(p.stat().st_size for p in (out / store).rglob("*")
                           if p.is_file() and not p.name.startswith("embeddings-")) / n_docs
    sizes["dense embeddings (build)"] = sum(p.stat().st_size for p in (out / "dense").glob("embeddings-*")) / n_docs
    return sizes, fixed


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    import ray
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB, "
            f"torch {torch.__version__}, ray {ray.__version__}, python {platform.python_version()}")


def report(args, measured: dict) -> str:
    n_docs, runs, load = measured["n_docs"], measured["runs"], measured["load"]
    sizes = (measured["sizes"], measured["fixed_bytes"])
    base = runs["single process"]
    base_encode = statistics.median(r["docs"] / r["encode"] for r in base)
    base_wall = statistics.median(r["docs"] / r["wall"] for r in base)
    lines = [f"# Bulk indexing: single process vs `--engine ray` ({n_docs:,} SciFact docs, splade-tiny + minilm + BM25, "
             f"max_length 256, parts of {measured['checkpoint_every']})", "",
             f"{measured['machine']}; load average {load[0]:.1f} -> {load[1]:.1f} "
             f"({'other jobs were running when it started: absolute figures are lower bounds' if load[0] >= 1 else 'no other jobs when it started'}); "
             f"the systems took turns round by round ({measured['rounds']} rounds) so drift hits all alike. "
             "Ray runs start their own local Ray instance (counted in end-to-end).", "",
             "| system | end-to-end s (median) | docs/s end-to-end | docs/s encode phase | encode vs single process "
             "| checksums equal to (same torch threads per encoder) |", "|---|---:|---:|---:|---:|:---|"]
    for name, results in runs.items():
        encode = statistics.median(r["docs"] / r["encode"] for r in results)
        twin = runs[SAME_BYTES_AS[name]][0]["checksums"]
        same = all(r["checksums"] == twin for r in results)
        lines.append(f"| {name} | {statistics.median(r['wall'] for r in results):.1f} | "
                     f"{statistics.median(r['docs'] / r['wall'] for r in results):.1f} | {encode:.1f} | "
                     f"{encode / base_encode:.2f}x | {SAME_BYTES_AS[name]}: {same} |")
    one = statistics.median(r["docs"] / r["encode"] for r in runs["ray, 1 worker"])
    overhead = 1 - one / base_encode
    wall_one = statistics.median(r["docs"] / r["wall"] for r in runs["ray, 1 worker"])
    busy = [f"The load average ({max(load):.1f}) was above the {os.cpu_count()} cores: differences of a few tens of "
            "percent between the systems are contention, not the engines; re-run on a quiet machine."] \
        if max(load) > (os.cpu_count() or 1) else []
    lines += ["", *busy, "", f"Ray overhead at 1 worker: **{overhead:.0%}** of the single process's encode rate "
              f"({1 - wall_one / base_wall:.0%} end-to-end, which adds Ray's start-up; target ≤ 15%). "
              "Two workers on 2 cores cannot beat one process that already uses both cores with 2 torch threads; "
              "the second worker pays off where it brings its own GPU or node.", ""]
    lines += projection(args, one, sizes)
    return "\n".join(lines) + "\n"


def projection(args, per_worker: float, store_bytes: tuple[dict[str, float], int]) -> list[str]:
    """8.8M passages on N workers from the measured per-worker rate; disk/RAM per shard from bytes per document."""
    rates = [("CPU worker (measured here: 2 cores, 1 actor)", per_worker)]
    if args.gpu_docs_per_s:
        rates.append((f"GPU worker ({args.gpu_source})", args.gpu_docs_per_s))
    lines = ["## Projection: MS MARCO passages (8,841,823)", "",
             "Hours of encoding = 8.8M / (N × per-worker docs/s); Ray adds a part's worth of tail per worker and the "
             "index build (single-threaded per shard, minutes) after. SciFact documents are long (most are cut at 256 "
             "tokens) while MS MARCO passages average about 75 tokens, so these hours are an upper bound for the same "
             "hardware.", "", "| worker | docs/s per worker | N=1 | N=4 | N=8 | N=32 |", "|---|---:|---:|---:|---:|---:|"]
    for name, rate in rates:
        hours = [MS_MARCO_PASSAGES / (n * rate) / 3600 for n in (1, 4, 8, 32)]
        lines.append(f"| {name} | {rate:,.1f} | " + " | ".join(f"{h:,.1f} h" if h >= 1 else f"{h * 60:.0f} min" for h in hours)
                     + " |")
    if not args.gpu_docs_per_s:
        lines += ["", "No GPU was available for this run: pass `--gpu-docs-per-s` with the per-GPU `lsr index` rate "
                  "that `benchmarks/encode_gpu.py` measures to add the GPU row (one actor per GPU, `num_gpus=1`)."]
    sizes, fixed = store_bytes
    total = sum(v for k, v in sizes.items() if k != "dense embeddings (build)")
    lines += ["", "Bytes per document of this collection (a fixed "
              f"{fixed / 2**20:.1f} MiB per shard, vocabularies and vocabulary-sized arrays, left out), and what one shard of 8.8M / S documents holds on disk. "
              "A shard server loads the faiss flat index and the BM25 scores whole and memory-maps the sparse index, "
              "so its RAM is about sparse + dense + bm25. SciFact documents carry more SPLADE terms than MS MARCO "
              "passages, and the BM25 vocabulary grows slower than the documents, so these are upper bounds:", "",
              "| store | bytes/doc | S=1 | S=4 | S=8 | S=32 |", "|---|---:|---:|---:|---:|---:|"]
    for name, per_doc in [*sizes.items(), ("total (without the build's embeddings)", total)]:
        lines.append(f"| {name} | {per_doc:,.0f} | " + " | ".join(
            f"{MS_MARCO_PASSAGES / s * per_doc / 2**30:,.2f} GiB" for s in (1, 4, 8, 32)) + " |")
    return lines


def measure(args) -> dict:
    """Every system's `lsr index` runs, taking turns, and the stores' bytes per document."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lsr-scale-") as tmp:
        corpus = Path(tmp) / "docs.jsonl"
        n_docs = write_corpus(corpus, args.docs)
        runs: dict[str, list[dict]] = {name: [] for name in SYSTEMS}
        names = list(SYSTEMS)
        for round_ in range(args.rounds):
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:  # rotate who goes first
                result = run_system(SYSTEMS[name], corpus, Path(tmp) / name.replace(" ", "_").replace(",", ""),
                                    args.checkpoint_every)
                runs[name].append(result)
                print(f"round {round_ + 1} {name:16s} wall {result['wall']:6.1f} s  encode {result['encode']:6.1f} s",
                      file=sys.stderr)
        sizes, fixed = store_sizes(Path(tmp) / "single_process", n_docs)
    return {"machine": machine(), "n_docs": n_docs, "rounds": args.rounds, "checkpoint_every": args.checkpoint_every,
            "load": [load_before, os.getloadavg()[0]], "runs": runs, "sizes": sizes, "fixed_bytes": fixed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--gpu-docs-per-s", type=float, default=None, help="a per-GPU indexing rate: adds the GPU row")
    parser.add_argument("--gpu-source", default="`lsr index` on one GPU, from benchmarks/encode_gpu.py",
                        help="where --gpu-docs-per-s was measured, printed in its row")
    parser.add_argument("--from-json", type=Path, help="re-render a saved run's table (no measuring)")
    parser.add_argument("--output", type=Path, default=RESULTS / "scale_index.md")
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        measured = json.loads(args.from_json.read_text())
    else:
        measured = measure(args)
        args.output.with_suffix(".json").write_text(json.dumps(measured, indent=1) + "\n", encoding="utf-8")
    text = report(args, measured)
    args.output.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
