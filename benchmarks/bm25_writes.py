"""The BM25 leg under writes: documents upserted after the build, found and scored as if the build held them.

Builds the BM25 leg over the first part of a BEIR corpus (90 % or 50 %), upserts the rest one document per write
through ``Bm25Leg.with_updates`` (what ``Collection.upsert`` runs), and compares, on the test queries:
- nDCG@10: the whole corpus built at once (bm25s), the partial build alone (the BM25 leg before it held later
  writes), and the partial build with the upserted documents;
- the cost: one write's p50/p99 on the leg, against rebuilding bm25s over every document (its only way to add one),
  and a query's p50 on the whole build and on the partial build + upserts, taking turns.

    python benchmarks/bm25_writes.py            # SciFact and NFCorpus, under a minute

Writes ``benchmarks/results/bm25_writes.{md,json}``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lsr.eval.datasets import load_beir, locate_dataset
from lsr.eval.metrics import evaluate
from lsr.eval.report import machine, write_results
from lsr.search.bm25_index import Bm25Index
from lsr.search.bm25_leg import Bm25Leg

RESULTS = Path(__file__).parent / "results"


def query_ms(search, queries: list[str], rounds: int = 3) -> list[float]:
    """Per-query milliseconds of ``search``, each query alone, over ``rounds`` passes."""
    times = []
    for _ in range(rounds):
        for query in queries:
            start = time.perf_counter()
            search([query], 10)
            times.append((time.perf_counter() - start) * 1e3)
    return times


def run(name: str, built: float) -> dict:
    dataset = load_beir(locate_dataset(name))
    ids = list(dataset.corpus)
    texts = dataset.doc_texts(ids)
    qrels = dataset.qrels["test"]
    qids = [q for q in qrels if q in dataset.queries]
    queries = [dataset.queries[q] for q in qids]

    def ndcg(search) -> float:
        return evaluate(qrels, dict(zip(qids, search(queries, 100))))["ndcg@10"]

    cut = int(len(ids) * built)
    partial = Bm25Index.build(ids[:cut], texts[:cut])
    start = time.perf_counter()
    whole = Bm25Index.build(ids, texts)
    rebuild_s = time.perf_counter() - start
    leg, write_ms = Bm25Leg(partial), []
    for doc_id, text in zip(ids[cut:], texts[cut:]):
        start = time.perf_counter()
        leg = leg.with_updates([doc_id], [text])
        write_ms.append((time.perf_counter() - start) * 1e3)
    whole_ms, leg_ms = [], []
    for _ in range(3):  # taking turns
        whole_ms += query_ms(whole.search, queries, 1)
        leg_ms += query_ms(leg.search, queries, 1)
    return {"dataset": name, "docs": len(ids), "built": cut, "upserted": len(ids) - cut, "chunks": len(leg._chunks),
            "ndcg_whole": ndcg(whole.search), "ndcg_partial_alone": ndcg(partial.search), "ndcg_partial_upserts": ndcg(leg.search),
            "write_p50_ms": float(np.percentile(write_ms, 50)), "write_p99_ms": float(np.percentile(write_ms, 99)),
            "rebuild_ms": rebuild_s * 1e3, "query_whole_p50_ms": float(np.percentile(whole_ms, 50)),
            "query_upserts_p50_ms": float(np.percentile(leg_ms, 50))}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# The BM25 leg under writes", "",
             "Part of the corpus built, the rest upserted one document per write; nDCG@10 on the test queries.", "",
             "| dataset | built + upserted | whole build | partial build alone (before) | partial build + upserts | "
             "chunks | write p50 / p99 | bm25s rebuild | query p50: whole / + upserts |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['built']:,} + {r['upserted']:,} | {r['ndcg_whole']:.4f} | "
                     f"{r['ndcg_partial_alone']:.4f} | {r['ndcg_partial_upserts']:.4f} | {r['chunks']} | "
                     f"{r['write_p50_ms']:.2f} / {r['write_p99_ms']:.1f} ms | {r['rebuild_ms']:,.0f} ms | "
                     f"{r['query_whole_p50_ms']:.3f} / {r['query_upserts_p50_ms']:.3f} ms |")
    lines += ["", "bm25s cannot add a document: its alternative to a write is a rebuild over every document.",
              f"Machine: {meta['machine']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument("--built", nargs="+", type=float, default=[0.9, 0.5], help="fractions of the corpus built")
    args = parser.parse_args()
    rows = [run(name, built) for name in args.datasets for built in args.built]
    meta = {"machine": machine()}
    write_results(RESULTS, "bm25_writes", {"rows": rows, **meta}, markdown(rows, meta))


if __name__ == "__main__":
    main()
