"""Evaluate on a BEIR dataset: BM25, SPLADE, MiniLM, hybrid and hybrid+PRF in one run.

The dataset is found in --data-dir, then $LSR_BEIR_DIR, then the cache (~/.cache/lsr or
$LSR_CACHE_DIR), and otherwise downloaded from the official BEIR mirror (md5 checked).
The index is built once and cached under a key of models + corpus checksum. Hybrid α and
PRF m, β are tuned on the train/dev qrels only and frozen for the reported split.

Examples:
  lsr beir --dataset scifact --out runs/beir-scifact
  lsr beir --dataset nfcorpus --methods sparse,hybrid --data-dir ~/data/beir
  lsr beir --dataset scifact --endpoint localhost:50051
"""

from __future__ import annotations

import argparse

HELP = "evaluate BM25 / sparse / dense / hybrid / hybrid-prf on a BEIR dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lsr.beir import METHODS

    p.add_argument("--dataset", required=True, metavar="NAME_OR_PATH",
                   help="BEIR name (scifact, nfcorpus, ...) or a BEIR folder/.zip/.tar.gz")
    p.add_argument("--data-dir", default=None, help="folder holding NAME/, NAME.zip or NAME.tar.gz (before $LSR_BEIR_DIR)")
    p.add_argument("--split", default="test", help="qrels split to report (default: test)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    p.add_argument("--k", type=int, default=100, help="retrieval depth (default: 100)")
    p.add_argument("--endpoint", default=None, metavar="HOST:PORT",
                   help="query a running `lsr serve` instead of searching in-process")
    p.add_argument("--out", default=None, help="folder for results.md, results.json and ndcg.png")
    p.add_argument("--model", default="splade-tiny", help="SPLADE model (default: splade-tiny)")
    p.add_argument("--dense", default="minilm", help="dense model, or 'none' (default: minilm)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from lsr.beir import markdown, run_beir
    from lsr.indexing import IndexOptions

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    dense = None if args.dense.lower() == "none" else args.dense
    if dense is None and {"dense", "hybrid", "hybrid-prf"} & set(methods):
        raise ValueError("--dense none leaves no dense model; drop dense/hybrid/hybrid-prf from --methods")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = IndexOptions(model=args.model, dense_model=dense, threads=args.threads)
    report = run_beir(args.dataset, data_dir=args.data_dir, split=args.split, methods=methods, k=args.k,
                      endpoint=args.endpoint, out=args.out, options=options, progress=not args.quiet)
    print()
    print(markdown(report))
    return 0
