"""Score any TREC run file against qrels with pytrec_eval: the metrics `lsr beir` reports.

RUN is `qid Q0 docid rank score tag` per line (from `lsr search --topics`, pyserini, anserini, ...).
QRELS is TREC's `qid 0 docid grade` or BEIR's `query-id corpus-id score` TSV. Queries in QRELS
that the run lacks score 0; like BEIR, a hit whose id equals its query's id is ignored unless
--keep-self-hits.

Examples:
  lsr eval run.trec qrels/test.tsv
  lsr eval run.trec qrels.txt --json
"""

from __future__ import annotations

import argparse
import json

HELP = "score a TREC run file against qrels (nDCG@10, Recall@100, MRR@10, MAP@100)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="TREC run file")
    p.add_argument("qrels", metavar="QRELS", help="TREC qrels or BEIR qrels TSV")
    p.add_argument("--keep-self-hits", action="store_true", help="count hits whose doc id equals the query id")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    from lsr.eval.metrics import METRICS, evaluate
    from lsr.eval.runs import read_qrels_file, read_trec_run

    qrels = read_qrels_file(args.qrels)
    results = read_trec_run(args.run)
    if not qrels:
        raise ValueError(f"{args.qrels} holds no judgements")
    scored = set(results) & set(qrels)
    if not scored:
        raise ValueError(f"no query of {args.run} is judged in {args.qrels}; do the query ids match?")
    metrics = evaluate(qrels, results, ignore_identical_ids=not args.keep_self_hits)
    if args.json:
        print(json.dumps({"queries": len(qrels), "queries_in_run": len(scored), **metrics}))
        return 0
    for name in METRICS:
        print(f"{name:<11} {metrics[name]:.4f}")
    print(f"{len(qrels):,} judged queries, {len(scored):,} of them in the run"
          + (f" ({len(qrels) - len(scored):,} missing score 0)" if len(scored) < len(qrels) else ""))
    return 0
