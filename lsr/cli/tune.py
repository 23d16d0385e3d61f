"""Choose a collection's hybrid fusion on a BEIR dataset's train/dev judgements and store it as its default.

Grid-searches the fusion method (min_max, l2, z_score, rrf) and the weights of the SPLADE, dense and BM25
legs (or of the two a collection built with --dense none or --bm25 none has) by nDCG@10 on the dataset's
dev qrels (train when it has no dev), never on --split (the one you report). Then, on that fusion and
the same qrels, it tries every PRF variant (Rocchio, Rocchio on high-IDF terms, Vector-PRF, both,
feedback from the fused list, interpolation before/after/both) over a small grid of feedback docs, β and
min IDF; then each variant's best setting (and β 2.0 where β hit the grid's edge, and the cross-dataset
default PRF) on the next 2 best fusions and the cross-dataset default fusion, since a fusion a little
worse without PRF can be better with it. The best (fusion, PRF) pair, if it beats the best fusion
without PRF, is written to COLLECTION/search-defaults.json (else that fusion and the best PRF setting):
`lsr search`, `lsr serve` and the gRPC API use the fusion for every hybrid search that sets no fusion
options of its own, and the PRF for every search that asks for PRF without settings. A collection never
tuned uses the cross-dataset defaults of HybridOptions and PrfOptions (see docs/quality.md). A server
already running reads them at its start: restart `lsr serve` to use new ones.

Examples:
  lsr tune runs/scifact --dataset scifact
  lsr tune runs/nfcorpus --dataset nfcorpus --data-dir ~/data/beir
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lsr.cli.device import add_device_arguments, device_options
from lsr.cli.main import path_argument

HELP = "choose a collection's hybrid fusion and PRF on train/dev qrels and store them as its defaults"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("collection", type=path_argument, metavar="COLLECTION", help="a collection made by `lsr index` from the dataset's corpus")
    p.add_argument("--dataset", required=True, help="BEIR dataset name, folder or archive whose qrels judge it")
    p.add_argument("--data-dir", default=None, type=path_argument,
                   help="folder holding NAME/, NAME.zip or NAME.tar.gz (looked in before $LSR_BEIR_DIR, "
                        "shared/data/beir and the cache)")
    p.add_argument("--split", default="test", help="the split you report, never tuned on (default test)")
    add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from lsr.eval.tuning import tune_collection
    from lsr.ingest.layout import SEARCH_DEFAULTS

    defaults = tune_collection(args.collection, args.dataset, data_dir=args.data_dir, split=args.split,
                               progress=not args.quiet, **device_options(args))
    h = defaults["hybrid"]
    where = Path(args.collection) / SEARCH_DEFAULTS
    print(f"stored in {where} (lsr search, serve and beir use it; delete it to go back to the defaults): "
          f"{h['normalization']}, sparse {h['sparse_weight']}, dense {h['dense_weight']}, "
          f"bm25 {h['bm25_weight']} (nDCG@10 {defaults['ndcg@10']:.4f} on {defaults['tuned_on']})")
    if defaults["prf"]:
        from lsr.search.searcher import PrfOptions

        p = defaults["prf"]
        print(f"PRF when asked for: m={p['feedback_docs']}, beta {p['weight']}, dense beta {PrfOptions(**p).dense_beta()}, min IDF "
              f"{p['min_idf']}, interpolate {p['interpolate']} ({'beats' if defaults['prf_helps'] else 'does not beat'} "
              f"the fusion without PRF on {defaults['tuned_on']})")
    print("a running `lsr serve` of this collection uses them once restarted")
    return 0
