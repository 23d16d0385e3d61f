"""Choose fusion and PRF settings on train/dev qrels, never on the split that is reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from lsr.eval.datasets import BeirDataset
from lsr.eval.metrics import evaluate
from lsr.search.searcher import UNTUNED_HYBRID

ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PRF_DOCS = (2, 3, 5)
PRF_WEIGHTS = (0.1, 0.25, 0.5)
DEFAULT_ALPHA, DEFAULT_PRF_DOCS, DEFAULT_PRF_WEIGHT = 0.5, 3, 0.25


def tuning_split(dataset: BeirDataset, split: str) -> str | None:
    """dev if the dataset has it, else train (never the reported split); either only where it judges a document of
    the corpus relevant: a dev split that finds nothing scored every setting 0, and a tie-break chose."""
    for candidate in ("dev", "train"):
        if candidate != split and judges_findable(dataset, candidate):
            return candidate
    return None


def judges_findable(dataset: BeirDataset, split: str) -> bool:
    """Whether ``split`` judges some document of the corpus relevant (else every search scores 0 on it)."""
    return any(grade > 0 and doc in dataset.corpus for docs in dataset.qrels.get(split, {}).values()
               for doc, grade in docs.items())


def judged_queries(dataset: BeirDataset, split: str) -> tuple[dict, list[str], list[str]]:
    """The split's qrels, and the ids and texts of its judged queries."""
    qrels = dataset.qrels[split]
    qids = [q for q in qrels if q in dataset.queries]
    return qrels, qids, [dataset.queries[q] for q in qids]


def tune(backend: Any, dataset: BeirDataset, tune_split: str | None, k: int,
         say: Callable[[str], None], *, progress: bool = False) -> dict[str, Any]:
    """Grid-search α (hybrid), then m and β (PRF) with α frozen, by nDCG@10 on ``tune_split``."""
    from lsr.ingest.progress import progress_bar

    from lsr.search.searcher import HybridOptions, PrfOptions

    settings: dict[str, Any] = {"normalization": "min_max", "alpha": DEFAULT_ALPHA, "prf_docs": DEFAULT_PRF_DOCS,
                                "prf_weight": DEFAULT_PRF_WEIGHT, "prf_interpolate": "both", "tuned_on": tune_split,
                                "grid": {"alpha": list(ALPHAS), "prf_docs": list(PRF_DOCS), "prf_weight": list(PRF_WEIGHTS)}}
    if tune_split is None:
        settings["note"] = "no train/dev qrels: defaults used"
        return settings
    qrels, qids, texts = judged_queries(dataset, tune_split)

    grid = len(ALPHAS) + len(PRF_DOCS) * len(PRF_WEIGHTS)
    say(f"tuning hybrid α and PRF m, β on {tune_split} ({len(qids)} queries, {grid} settings)")
    bar = progress_bar("tune", grid, enabled=progress, unit="setting")

    def score(hybrid, prf=None) -> float:
        ndcg = evaluate(qrels, backend.run(qids, texts, k + 1, "hybrid", hybrid, prf))["ndcg@10"]
        bar.update(1)
        return ndcg

    with bar:
        alpha_scores = {a: score(HybridOptions(sparse_weight=a)) for a in ALPHAS}
        alpha = max(ALPHAS, key=lambda a: (alpha_scores[a], -abs(a - 0.5)))
        hybrid = HybridOptions(sparse_weight=alpha)
        prf_scores = {(m, b): score(hybrid, PrfOptions(feedback_docs=m, weight=b, interpolate="both"))
                      for m in PRF_DOCS for b in PRF_WEIGHTS}
    m, beta = max(prf_scores, key=lambda mb: (prf_scores[mb], -mb[1], -mb[0]))
    say(f"tuned α={alpha} on {tune_split} ({len(qids)} queries): nDCG@10 {alpha_scores[alpha]:.4f}")
    say(f"tuned PRF m={m} β={beta} on {tune_split}: nDCG@10 {prf_scores[(m, beta)]:.4f}")
    settings.update(alpha=alpha, prf_docs=m, prf_weight=beta,
                    tuning_ndcg10={"hybrid": {str(a): round(v, 4) for a, v in alpha_scores.items()},
                                   "hybrid-prf": {f"m={mm},beta={bb}": round(v, 4) for (mm, bb), v in prf_scores.items()}})
    return settings


LEGS = ("sparse", "dense", "bm25")  # a fusion's weights, in this order
FUSION_METHODS = ("min_max", "l2", "z_score", "rrf")  # OpenSearch's normalizations, and RRF
WEIGHT_STEP = 0.1
TOP_FUSIONS = 3  # the fusions, by score without PRF, that joint fusion + PRF tuning tries PRF on
# Without train/dev qrels: the Searcher's untuned default, chosen across datasets (UNTUNED_HYBRID)
DEFAULT_FUSION = {name: getattr(UNTUNED_HYBRID, name) for name in ("normalization", "sparse_weight", "dense_weight",
                                                                   "bm25_weight")}


def default_fusion(legs: Sequence[str] = LEGS) -> dict[str, Any]:
    """DEFAULT_FUSION over the legs a collection has (the Searcher's untuned default does the same)."""
    return {**DEFAULT_FUSION, **{f"{leg}_weight": 0.0 for leg in LEGS if leg not in legs}}


def weight_grid(step: float = WEIGHT_STEP, legs: Sequence[str] = LEGS) -> list[tuple[float, float, float]]:
    """(sparse, dense, bm25) weights summing to 1 in steps of ``step``, with at least two legs, all of ``legs``."""
    n = round(1 / step)
    grid = [(i / n, j / n, (n - i - j) / n) for i in range(n + 1) for j in range(n + 1 - i)
            if sum(part > 0 for part in (i, j, n - i - j)) >= 2]
    return [w for w in grid if all(weight == 0 or leg in legs for leg, weight in zip(LEGS, w))]


def tune_fusion(backend: Any, dataset: BeirDataset, tune_split: str | None, k: int, say: Callable[[str], None],
                *, legs: Sequence[str] = LEGS, candidates: int = 100, progress: bool = False) -> dict[str, Any]:
    """Grid-search the weights of ``legs`` (two or three of LEGS) and the fusion method by nDCG@10 on ``tune_split``.

    Each leg's run is fetched once at the depth hybrid search uses, then every setting is fused by
    ``FusionGrid``: the same floats as ``lsr.search.fusion.fuse``, the function the Searcher calls, so the
    chosen setting scores the same when searched for real."""
    from lsr.eval.fusion_grid import FusionGrid
    from lsr.ingest.progress import progress_bar

    settings: dict[str, Any] = {**default_fusion(legs), "candidates": candidates, "tuned_on": tune_split,
                                "grid": {"normalization": list(FUSION_METHODS), "weight_step": WEIGHT_STEP}}
    if tune_split is None:
        settings["note"] = "no train/dev qrels: the documented defaults are used"
        return settings
    qrels, qids, texts = judged_queries(dataset, tune_split)
    depth = max(k + 1, candidates)
    fusions = FusionGrid([backend.run(qids, texts, depth, leg) if leg in legs else {} for leg in LEGS], qids)
    grid = [(method, weights) for method in FUSION_METHODS for weights in weight_grid(legs=legs)]
    default = default_fusion(legs)  # off the grid with a leg missing (0.3/0.0/0.2): PRF's joint stage tries it too
    default_setting = (default["normalization"], tuple(default[f"{leg}_weight"] for leg in LEGS))
    grid += [default_setting] if default_setting not in grid else []
    say(f"tuning {len(legs)}-leg fusion ({', '.join(legs)}) on {tune_split} ({len(qids)} queries, {len(grid)} settings)")
    scores = {}
    with progress_bar("tune fusion", len(grid), enabled=progress, unit="setting") as bar:
        for method, weights in grid:
            scores[(method, weights)] = evaluate(qrels, fusions.run(method, weights, k + 1))["ndcg@10"]
            bar.update(1)
    named = {(m, w): {"normalization": m, "sparse_weight": w[0], "dense_weight": w[1], "bm25_weight": w[2]}
             for m, w in grid}
    ranked = sorted(scores, key=lambda mw: (scores[mw], mw[0] == "min_max", -max(mw[1])), reverse=True)
    method, (sparse, dense, bm25) = ranked[0]
    say(f"tuned fusion {method} sparse={sparse} dense={dense} bm25={bm25} on {tune_split}: "
        f"nDCG@10 {scores[(method, (sparse, dense, bm25))]:.4f}")
    settings.update(normalization=method, sparse_weight=sparse, dense_weight=dense, bm25_weight=bm25,
                    tuning_ndcg10={fusion_key(named[mw]): round(v, 4) for mw, v in scores.items()},
                    top=[{**named[mw], "ndcg@10": round(scores[mw], 4)} for mw in ranked[:TOP_FUSIONS]])
    return settings


def fusion_key(f: dict[str, Any]) -> str:
    """A fusion setting's name in ``tune_fusion``'s ``tuning_ndcg10``."""
    return f"{f['normalization']} {f['sparse_weight']:.1f}/{f['dense_weight']:.1f}/{f['bm25_weight']:.1f}"


def fusion_options(chosen: dict[str, Any]):
    """The HybridOptions of a ``tune_fusion`` result (or of DEFAULT_FUSION)."""
    from lsr.search.searcher import HybridOptions

    return HybridOptions(chosen["normalization"], chosen["sparse_weight"], chosen.get("candidates", 100),
                         chosen["dense_weight"], chosen["bm25_weight"])


def check_judged_documents(searcher: Any, dataset: BeirDataset, split: str, collection: str | Path,
                           say: Callable[[str], None]) -> None:
    """Refuse to tune a collection that holds none of the split's relevant documents (another corpus: every
    setting would score 0 and the stored choice would be arbitrary); say so when it holds under half of them."""
    relevant = sorted({doc for docs in dataset.qrels[split].values() for doc, grade in docs.items() if grade > 0})
    held = sum(text is not None for text in searcher.legs().text(relevant))
    if held == 0:
        raise ValueError(f"{collection} holds none of the {len(relevant):,} documents {dataset.name}/{split} judges "
                         f"relevant: it was not indexed from {dataset.name}; tune it on the dataset it was built from")
    if held < len(relevant) / 2:
        say(f"warning: {collection} holds only {held:,} of the {len(relevant):,} documents {dataset.name}/{split} "
            "judges relevant; the tuning sees only part of the dataset")


def tune_collection(collection: str | Path, dataset_name: str, *, data_dir: str | None = None, split: str = "test",
                    k: int = 100, say: Callable[[str], None] = print, progress: bool = False,
                    **open_options: Any) -> dict[str, Any]:
    """``lsr tune``: choose the fusion and the PRF on the dataset's train/dev qrels (never ``split``) and store them
    in the collection as the defaults of every search that does not set its own (in-process and through the
    server). ``prf`` is the best PRF setting on the tuning split, used when PRF is asked for without settings;
    ``prf_helps`` says whether it beat the fusion without PRF there."""
    from lsr.eval.backends import InProcess
    from lsr.eval.datasets import load_beir, locate_dataset
    from lsr.eval.prf_tuning import best_prf_settings, tune_fusion_and_prf
    from lsr.ingest.layout import SEARCH_DEFAULTS, write_search_defaults
    from lsr.service.coordinator import open_in_process

    target = Path(collection) / SEARCH_DEFAULTS
    if target.exists() and not target.is_file():  # found only at the end, after the whole grid
        raise ValueError(f"{target} is not a file; move it away so `lsr tune` can store its choice there")
    searcher = open_in_process(collection, **open_options)  # a sharded one's choice goes beside its shard map
    legs = tuple(leg for leg, held in zip(LEGS, (True, searcher.has_dense, searcher.has_bm25)) if held)
    if len(legs) < 2:  # before the dataset loads: minutes on a large corpus
        raise ValueError(f"{collection} has only the sparse leg: there is no fusion to tune; re-index it with a "
                         "dense or BM25 leg (--dense, --bm25)")
    source = locate_dataset(dataset_name, data_dir)
    dataset = load_beir(source, splits=tuple(dict.fromkeys(("test", "train", "dev", split))))
    if split not in dataset.qrels and split != "test":  # a misspelt --split would be tuned on without notice; a
        raise ValueError(f"{source} has no qrels/{split}.tsv for --split; it has "  # dataset without test: none to keep
                         f"{', '.join(sorted(dataset.qrels)) or 'none'}")
    tune_split = tuning_split(dataset, split)
    if tune_split is None:
        raise ValueError(f"{dataset.name} has no train or dev qrels apart from {split!r} that judge a document of its "
                         "corpus relevant: nothing to tune on without touching the reported split; the documented "
                         "defaults stay")
    check_judged_documents(searcher, dataset, tune_split, collection, say)
    backend = InProcess(searcher)
    fusion, prf = tune_fusion_and_prf(backend, dataset, tune_split, k, say, legs=legs, progress=progress)
    chosen = {**fusion, **(prf["chosen"] or {}).get("fusion", {})}  # the fusion PRF was chosen with, if PRF helps
    defaults = {"hybrid": {name: chosen[name] for name in ("normalization", "sparse_weight", "dense_weight", "bm25_weight",
                                                           "candidates")},
                "prf": best_prf_settings(prf), "prf_helps": prf["chosen"] is not None,
                "prf_variants_ndcg@10": {name: v["ndcg@10"] for name, v in prf["variants"].items()},
                "tuned_on": f"{dataset.name}/{tune_split}", "not_tuned_on": split,
                "ndcg@10": fusion["tuning_ndcg10"][fusion_key(chosen)]}  # the stored fusion's, without PRF
    write_search_defaults(Path(collection), defaults)
    return defaults
