"""Score a run against qrels with pytrec_eval: the metrics every lsr report uses."""

from __future__ import annotations

METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")

Run = dict[str, dict[str, float]]


def drop_self_hits(run: Run) -> Run:
    """BEIR's ``ignore_identical_ids``: a document whose id equals the query id is not a hit."""
    return {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}


def top_k(docs: dict[str, float], k: int) -> dict[str, float]:
    return dict(sorted(docs.items(), key=lambda item: (-item[1], item[0]))[:k])


def evaluate(qrels: dict[str, dict[str, int]], run: Run, *, ignore_identical_ids: bool = True) -> dict[str, float]:
    """nDCG@10, Recall@100, MRR@10 (reciprocal rank within the top 10) and MAP@100 with pytrec_eval.

    Averaged over the queries in ``qrels``; a query with no results scores 0.
    """
    import pytrec_eval

    if ignore_identical_ids:
        run = drop_self_hits(run)
    qrels = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    run100 = {q: top_k(run.get(q, {}), 100) for q in qrels}
    run10 = {q: top_k(docs, 10) for q, docs in run100.items()}
    main = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map_cut.100"}).evaluate(run100)
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run10)
    n = len(qrels)

    def mean(table: dict, measure: str) -> float:
        return float(sum(v[measure] for v in table.values()) / n) if n else 0.0

    return {"ndcg@10": mean(main, "ndcg_cut_10"), "recall@100": mean(main, "recall_100"),
            "mrr@10": mean(rr, "recip_rank"), "map@100": mean(main, "map_cut_100")}
