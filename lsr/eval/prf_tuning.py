"""Choose a PRF variant and its settings on train/dev qrels, on top of the tuned fusion.

The variants are those of Li et al. ("To Interpolate or not to Interpolate: PRF, Dense and Sparse
Retrievers") plus the IDF-restricted Rocchio our measurements suggested: Rocchio on the sparse leg
alone, Vector-PRF on the dense leg alone, both, with feedback from the fused list ("before"), the PRF
run interpolated with the first run ("after"), or both. Each variant gets the same small grid (feedback
docs × β, × min IDF for the IDF variants) so that no variant wins by having been searched harder, and
every variant's best dev score is kept, winners and losers alike. PRF is chosen only when its best
variant beats the fusion without PRF on the tuning split.

Fusion and PRF are chosen jointly (``tune_fusion_and_prf``): a fusion that is a little worse without PRF can be
better with it (NFCorpus), so a shortlist of PRF settings is also tried on the next best fusions and on the
cross-dataset default fusion, and the best (fusion, PRF) pair on the tuning split wins.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, Callable, Iterator, Sequence

from lsr.eval.datasets import BeirDataset
from lsr.eval.metrics import evaluate
from lsr.eval.tuning import LEGS

PRF_DOCS = (2, 3, 5, 10)
PRF_BETAS = (0.25, 0.5, 1.0)
EDGE_BETA = 2.0  # tried in the joint stage for a shortlisted setting whose best β is the grid's largest
MIN_IDFS = (1.5, 2.5, 3.5)  # BM25 IDF: 1.5 ≈ a term in 1 doc of 4, 2.5 ≈ 1 in 12, 3.5 ≈ 1 in 33
# name -> fixed PrfOptions fields; "beta" says which β the grid moves (sparse Rocchio, dense Vector-PRF, or both)
VARIANTS: dict[str, dict[str, Any]] = {
    "rocchio": {"interpolate": "none", "beta": "sparse"},
    "rocchio-idf": {"interpolate": "none", "beta": "sparse", "idf": True},
    "vector-prf": {"interpolate": "none", "beta": "dense"},
    "rocchio+vector-prf": {"interpolate": "none", "beta": "both"},
    "fused-feedback (before)": {"interpolate": "before", "beta": "both"},
    "interpolate-after": {"interpolate": "after", "beta": "both"},
    "before+after (both)": {"interpolate": "both", "beta": "both"},
    "before+after-idf": {"interpolate": "both", "beta": "both", "idf": True},
}


def variant_grid(variant: dict[str, Any]) -> Iterator[Any]:
    """Every PrfOptions a variant tries."""
    from lsr.search.searcher import PrfOptions

    for m in PRF_DOCS:
        for beta in PRF_BETAS:
            sparse, dense = {"sparse": (beta, 0.0), "dense": (0.0, beta), "both": (beta, None)}[variant["beta"]]
            for min_idf in MIN_IDFS if variant.get("idf") else (0.0,):
                yield PrfOptions(feedback_docs=m, weight=sparse, dense_weight=dense, interpolate=variant["interpolate"],
                                 min_idf=min_idf)


def label(prf: Any) -> str:
    """A short, unique name of a setting for the results file."""
    return (f"m={prf.feedback_docs} beta={prf.weight} dense_beta={prf.dense_beta()} min_idf={prf.min_idf} "
            f"{prf.interpolate}")


def tune_prf(backend: Any, dataset: BeirDataset, tune_split: str | None, k: int, hybrid: Any,
             say: Callable[[str], None], *, variants: dict[str, dict[str, Any]] = VARIANTS,
             progress: bool = False) -> dict[str, Any]:
    """Each variant's best setting by nDCG@10 on ``tune_split`` over hybrid search with ``hybrid``, and the
    overall choice (``chosen`` is None when no variant beats the fusion without PRF there)."""
    from lsr.eval.tuning import judged_queries
    from lsr.ingest.progress import progress_bar

    result: dict[str, Any] = {"tuned_on": tune_split, "chosen": None, "variants": {},
                              "grid": {"prf_docs": list(PRF_DOCS), "beta": list(PRF_BETAS), "min_idf": list(MIN_IDFS)}}
    if tune_split is None:
        result["note"] = "no train/dev qrels: PRF is left off"
        return result
    qrels, qids, texts = judged_queries(dataset, tune_split)
    grids = {name: list(variant_grid(v)) for name, v in variants.items()}
    say(f"tuning PRF on {tune_split} ({len(qids)} queries, {len(grids)} variants, "
        f"{sum(map(len, grids.values()))} settings)")

    def score(prf) -> float:
        return evaluate(qrels, backend.run(qids, texts, k + 1, "hybrid", hybrid, prf))["ndcg@10"]

    result["no_prf_ndcg@10"] = baseline = round(score(None), 4)
    best_name, best = None, baseline
    with progress_bar("tune PRF", sum(map(len, grids.values())), enabled=progress, unit="setting") as bar:
        for name, grid in grids.items():
            scores = {}
            for prf in grid:
                scores[label(prf)] = (round(score(prf), 4), prf)
                bar.update(1)
            top_label = max(scores, key=lambda s: scores[s][0])  # ties: the first, i.e. fewest docs, smallest β
            ndcg, prf = scores[top_label]
            result["variants"][name] = {"ndcg@10": ndcg, "settings": asdict(prf),
                                        "grid_ndcg10": {s: v for s, (v, _) in scores.items()}}
            say(f"  PRF {name:<24} {top_label:<50} nDCG@10 {ndcg:.4f} (no PRF {baseline:.4f})")
            if ndcg > best:
                best_name, best = name, ndcg
    if best_name is not None:
        result["chosen"] = {"variant": best_name, "ndcg@10": best, "settings": result["variants"][best_name]["settings"]}
    say(f"tuned PRF on {tune_split}: " + (f"{best_name} nDCG@10 {best:.4f}" if best_name else
                                          f"none beats no PRF ({baseline:.4f}); PRF left off"))
    return result


def shortlist(tuned: dict[str, Any]) -> dict[Any, str]:
    """PrfOptions -> name: each variant's best setting, the same with β = EDGE_BETA where its best β is the grid's
    edge, and the cross-dataset default PrfOptions()."""
    from lsr.search.searcher import PrfOptions

    edge, out = PRF_BETAS[-1], {}
    for name, variant in tuned["variants"].items():
        prf = PrfOptions(**variant["settings"])
        out.setdefault(prf, name)
        if edge in (prf.weight, prf.dense_weight):
            wider = replace(prf, weight=EDGE_BETA if prf.weight == edge else prf.weight,
                            dense_weight=EDGE_BETA if prf.dense_weight == edge else prf.dense_weight)
            out.setdefault(wider, f"{name} beta {EDGE_BETA}")
    out.setdefault(PrfOptions(), "cross-dataset default")
    return out


def tune_fusion_and_prf(backend: Any, dataset: BeirDataset, tune_split: str | None, k: int,
                        say: Callable[[str], None], *, variants: dict[str, dict[str, Any]] = VARIANTS,
                        legs: Sequence[str] = LEGS,
                        progress: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fusion of ``legs`` tuned without PRF, and the PRF tuning: every variant's grid on that fusion, then the
    shortlist on the other top fusions and the cross-dataset default fusion. ``prf["chosen"]["fusion"]`` is the
    fusion of the best (fusion, PRF) pair; ``prf["joint"]`` has every pair's tuning-split nDCG@10. Without a dense
    leg, the variants that move only the dense query (Vector-PRF) are left out: they would change nothing."""
    from lsr.eval.tuning import default_fusion, fusion_options, judged_queries, tune_fusion
    from lsr.ingest.progress import progress_bar
    from lsr.search.searcher import PrfOptions

    if "dense" not in legs:
        variants = {name: v for name, v in variants.items() if v["beta"] != "dense"}
    fusion = tune_fusion(backend, dataset, tune_split, k, say, legs=legs, progress=progress)
    tuned = tune_prf(backend, dataset, tune_split, k, fusion_options(fusion), say, variants=variants, progress=progress)
    if tune_split is None:
        return fusion, tuned
    keys = ("normalization", "sparse_weight", "dense_weight", "bm25_weight")
    fusions = [{key: top[key] for key in keys} for top in fusion["top"]]
    fusions += [default_fusion(legs)] if default_fusion(legs) not in fusions else []
    scored = {PrfOptions(**v["settings"]) for v in tuned["variants"].values()}  # on fusions[0], by tune_prf
    pairs = [(f, prf, name) for i, f in enumerate(fusions) for prf, name in shortlist(tuned).items()
             if i > 0 or prf not in scored]
    qrels, qids, texts = judged_queries(dataset, tune_split)
    say(f"joint fusion + PRF on {tune_split}: {len(pairs)} pairs ({len(fusions)} fusions × the PRF shortlist)")
    best = tuned["chosen"] and {**tuned["chosen"], "fusion": {key: fusion[key] for key in keys}}
    tuned["joint"] = []
    with progress_bar("joint fusion + PRF", len(pairs), enabled=progress, unit="pair") as bar:
        for f, prf, name in pairs:
            hybrid = fusion_options({**f, "candidates": fusion["candidates"]})
            ndcg = round(evaluate(qrels, backend.run(qids, texts, k + 1, "hybrid", hybrid, prf))["ndcg@10"], 4)
            tuned["joint"].append({"fusion": f, "variant": name, "settings": asdict(prf), "ndcg@10": ndcg})
            if ndcg > (best["ndcg@10"] if best else tuned["no_prf_ndcg@10"]):
                best = {"variant": name, "ndcg@10": ndcg, "settings": asdict(prf), "fusion": f}
            bar.update(1)
    tuned["chosen"] = best or None
    if best:
        say(f"joint choice on {tune_split}: {best['variant']} on {best['fusion']} nDCG@10 {best['ndcg@10']:.4f}")
    return fusion, tuned


def chosen_prf(tuned: dict[str, Any] | None):
    """The PrfOptions ``tune_prf`` chose, or None (no tuning, or no variant beat fusion without PRF)."""
    from lsr.search.searcher import PrfOptions

    return PrfOptions(**tuned["chosen"]["settings"]) if tuned and tuned.get("chosen") else None


def score_variants(backend: Any, tuned: dict[str, Any], qrels: dict, qids: list[str], texts: list[str], k: int,
                   hybrid: Any) -> dict[str, dict[str, Any]]:
    """Every variant with its frozen (tuning-split) settings scored on the reported split: dev and reported
    nDCG@10 side by side, losers included."""
    from lsr.search.searcher import PrfOptions

    out = {}
    for name, variant in tuned.get("variants", {}).items():
        run = backend.run(qids, texts, k + 1, "hybrid", hybrid, PrfOptions(**variant["settings"]))
        out[name] = {"tuned_on": tuned["tuned_on"], "tuning_ndcg@10": variant["ndcg@10"],
                     "ndcg@10": round(evaluate(qrels, run)["ndcg@10"], 4), "settings": variant["settings"]}
    return out


def best_prf_settings(tuned: dict[str, Any]) -> dict[str, Any] | None:
    """The chosen PRF (of the chosen fusion + PRF pair), else the best variant's PrfOptions fields on the tuning split
    even though it did not beat no PRF: what a search that asks for PRF without settings should get."""
    if tuned.get("chosen"):
        return tuned["chosen"]["settings"]
    if not tuned.get("variants"):
        return None
    return max(tuned["variants"].values(), key=lambda v: v["ndcg@10"])["settings"]
