"""Score TREC run files against qrels with pytrec_eval: the metrics `lsr beir` reports.

RUN is `qid Q0 docid rank score tag` per line (from `lsr search --topics`, pyserini, anserini, ...).
QRELS is TREC's `qid 0 docid grade` or BEIR's `query-id corpus-id score` TSV. Queries in QRELS
that the run lacks score 0 (all of them, with a warning, where the run is empty); like BEIR, a hit
whose id equals its query's id is ignored unless --keep-self-hits (a warning counts those the
qrels judge relevant).

--compare scores other runs beside RUN, each with its difference from RUN and the two-sided p-value
of a paired randomization test over the judged queries (10,000 sign flips, seeded: the same p every
time); * marks p < 0.05. --per-query prints every judged query's metrics, for each run, as TSV.

Examples:
  lsr eval run.trec qrels/test.tsv
  lsr eval run.trec qrels.txt --json
  lsr eval base.trec qrels/test.tsv --compare tuned.trec hybrid.trec
  lsr eval run.trec qrels/test.tsv --per-query > per-query.tsv
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from lsr.cli.main import path_argument

if TYPE_CHECKING:
    from lsr.eval.metrics import Run

HELP = "score TREC run files against qrels (nDCG@10, Recall@100, MRR@10, MAP@100), with significance tests"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=path_argument, metavar="RUN", help="TREC run file")
    p.add_argument("qrels", type=path_argument, metavar="QRELS", help="TREC qrels or BEIR qrels TSV")
    p.add_argument("--compare", nargs="+", default=[], metavar="OTHER",
                   help="other runs to score beside RUN, with their difference from it and its p-value")
    p.add_argument("--per-query", action="store_true",
                   help="print each judged query's metrics (TSV: run, qid, metrics; a JSON line each with --json)")
    p.add_argument("--keep-self-hits", action="store_true", help="count hits whose doc id equals the query id")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


def run(args: argparse.Namespace) -> int:
    from lsr.eval.metrics import METRICS, averaged, per_query, randomization_p
    from lsr.eval.runs import read_qrels_file, read_trec_run

    qrels = read_qrels_file(args.qrels)
    if not qrels:
        raise ValueError(f"{args.qrels} holds no judgements")
    _warn_of_queries_without_relevant(args.qrels, qrels)
    paths = [args.run, *args.compare]
    if len(set(paths)) < len(paths):
        raise ValueError("a run is given twice; --compare takes the runs to score beside RUN")
    runs = {path: read_trec_run(path) for path in paths}  # every file is read before any is scored
    for path, results in runs.items():
        _check_run(path, results, args.qrels, qrels)
        if not args.keep_self_hits:
            _warn_of_self_hits(path, results, args.qrels, qrels)
    answered = {path: set(results) & set(qrels) for path, results in runs.items()}
    _warn_of_unanswered(args.run, answered)
    scores = {path: per_query(qrels, results, ignore_identical_ids=not args.keep_self_hits)
              for path, results in runs.items()}
    if args.per_query:  # TSV, or with --json a JSON line per (run, query): --json was ignored here
        if not args.json:
            print("\t".join(["run", "qid", *METRICS]))
        for path, table in scores.items():
            for qid, values in table.items():
                print(json.dumps({"run": path, "qid": qid, **values}) if args.json else
                      "\t".join([path, qid, *(f"{values[m]:.4f}" for m in METRICS)]))
        return 0
    means = {path: averaged(table) for path, table in scores.items()}
    base = scores[args.run]
    p_values = {path: {m: randomization_p([base[q][m] for q in qrels], [scores[path][q][m] for q in qrels])
                       for m in METRICS} for path in args.compare}
    scored = len(answered[args.run])
    if args.json:
        compared = {path: {"metrics": means[path], "difference": {m: means[path][m] - means[args.run][m] for m in METRICS},
                           "p_value": p_values[path], "queries_in_run": len(answered[path])} for path in args.compare}
        print(json.dumps({"queries": len(qrels), "queries_in_run": scored, **means[args.run],
                          **({"compare": compared} if compared else {})}))
        return 0
    if not args.compare:
        for name in METRICS:
            print(f"{name:<11} {means[args.run][name]:.4f}")
    else:
        _print_comparison(paths, means, p_values, METRICS)
    print(f"{len(qrels):,} judged queries, {scored:,} of them in {args.run}"
          + (f" ({len(qrels) - scored:,} missing score 0)" if scored < len(qrels) else ""))
    return 0


def _check_run(path: str, results: Run, qrels_path: str, qrels: dict[str, dict[str, int]]) -> None:
    """Refuse a run none of whose queries is judged (the ids do not match); warn of one none of whose documents is.
    An empty run, what `lsr search --topics` writes where no query found anything, scores 0 with a warning: it was
    refused, so the `lsr eval` command that search prints failed."""
    if not results:
        print(f"warning: {path} holds no results, so every judged query scores 0", file=sys.stderr)
        return
    if not set(results) & set(qrels):
        raise ValueError(f"no query of {path} is judged in {qrels_path}; do the query ids match?")
    if not any(doc in qrels.get(qid, {}) for qid, hits in results.items() for doc in hits):
        ranked = next(doc for hits in results.values() for doc in hits)
        judged = next(doc for docs in qrels.values() for doc in docs)
        print(f"warning: no document {path} ranks is judged in {qrels_path}, so every score is 0; do the document "
              f"ids match (the run has {ranked!r}, the qrels {judged!r})?", file=sys.stderr)


def _warn_of_queries_without_relevant(qrels_path: str, qrels: dict[str, dict[str, int]]) -> None:
    """A judged query none of whose documents is relevant (every grade 0 or less) scores 0 in every run, as in BEIR,
    and pulls each mean down; qrels of grades 0 only (a column mixed up, a negatives file) scored 0 without a word."""
    empty = [qid for qid, judged in qrels.items() if not any(grade > 0 for grade in judged.values())]
    if len(empty) == len(qrels):
        print(f"warning: {qrels_path} judges no document relevant (every grade is 0 or less), so every score is 0; "
              "is its grade column the third (BEIR's TSV) or the fourth (TREC's)?", file=sys.stderr)
    elif empty:
        print(f"warning: {len(empty):,} of the {len(qrels):,} queries {qrels_path} judges have no relevant document "
              f"(the first: {empty[0]!r}); they score 0 in every run, as in BEIR, and pull the means down",
              file=sys.stderr)


def _warn_of_self_hits(path: str, results: Run, qrels_path: str, qrels: dict[str, dict[str, int]]) -> None:
    """Hits whose doc id is their query's are dropped (BEIR's rule, for corpora that hold the queries). Any such drop
    moves the hits below it up a rank, so scores differ from trec_eval's over the same run (a run over ids shared by
    queries and documents, MS MARCO's numbers, scored 1.0 where trec_eval gives 0.63): it is counted, and more loudly
    where the qrels judge a dropped hit relevant."""
    dropped = [qid for qid, hits in results.items() if qid in hits]
    if not dropped:
        return
    judged = sum(qrels.get(qid, {}).get(qid, 0) > 0 for qid in dropped)
    many = len(dropped) != 1
    relevant = (f", {judged:,} of them judged relevant by {qrels_path}" if judged else "")
    print(f"warning: {len(dropped):,} hit{'s' * many} of {path} whose doc id is its query's id (the first: query "
          f"{dropped[0]!r}) {'were' if many else 'was'} dropped, as BEIR does{relevant}; the hits below move up a rank, "
          "unlike trec_eval (pass --keep-self-hits to keep them)", file=sys.stderr)


def _warn_of_unanswered(base: str, answered: dict[str, set[str]]) -> None:
    """A compared run that answers other judged queries than RUN: each missing one scores 0 in its mean and in the
    paired test, so a run cut short showed a "significant" loss, with only RUN's coverage printed."""
    for path, queries in answered.items():
        lacks, extra = len(answered[base] - queries), len(queries - answered[base])
        if path != base and (lacks or extra):
            print(f"warning: {path} answers {len(queries):,} judged queries, {base} {len(answered[base]):,} "
                  f"({lacks:,} only in {base}, {extra:,} only in {path}); a query a run lacks scores 0 in its mean and "
                  "in the paired test, so part of the difference is coverage, not ranking", file=sys.stderr)


def _print_comparison(paths: list[str], means: dict, p_values: dict, metrics: tuple[str, ...]) -> None:
    """One row per run: RUN's metrics, then each other run's with its difference, * where it is significant."""
    from lsr.eval.metrics import RANDOMIZATION_TEST, SIGNIFICANT, marked_difference

    width = max(len(path) for path in paths)
    print((f"{'run':<{width}}  " + "  ".join(f"{m:<17}" for m in metrics)).rstrip())
    for path in paths:
        cells = []
        for m in metrics:
            if path == paths[0]:
                cells.append(f"{means[path][m]:.4f}".ljust(17))
                continue
            cells.append(f"{means[path][m]:.4f} {marked_difference(means[path][m] - means[paths[0]][m], p_values[path][m])}"
                         .ljust(17))
        print(f"{path:<{width}}  " + "  ".join(cells).rstrip())
    for path in paths[1:]:
        print(f"p vs {paths[0]}: {path}: " + ", ".join(f"{m} {p_values[path][m]:.6f}" for m in metrics))
    print(f"* p < {SIGNIFICANT}: two-sided {RANDOMIZATION_TEST} against {paths[0]}")
