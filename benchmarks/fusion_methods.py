"""Fusion methods across datasets: each normalization and combination, its weights tuned, on tuning and test splits.

Why: OpenSearch's normalization processor offers min_max, l2 and z_score normalization and arithmetic, geometric
and harmonic combination; `lsr beir` and `lsr tune` grid-search the weights of each normalization they try. This
says which of those earn a place in that grid: for every (normalization, combination) the three-leg weights are
chosen on the tuning split (SciFact train, NFCorpus dev) and frozen for test. Quality numbers only (no timing).

    LSR_BEIR_DIR=/work/shared/data/beir python benchmarks/fusion_methods.py scifact nfcorpus
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = [("min_max", "arithmetic_mean"), ("min_max", "geometric_mean"), ("min_max", "harmonic_mean"),
           ("l2", "arithmetic_mean"), ("l2", "geometric_mean"), ("l2", "harmonic_mean"),
           ("z_score", "arithmetic_mean"), ("rrf", "arithmetic_mean")]
DEPTH = 101  # as `lsr beir` and `lsr tune` search: k + 1, at least the 100 candidates hybrid fuses


def tuned(name: str) -> dict[str, dict]:
    """Per (normalization, combination): the weights best on the tuning split, that score and the test score."""
    from lsr.eval.backends import InProcess
    from lsr.eval.beir import cached_collection
    from lsr.eval.datasets import load_beir, locate_dataset
    from lsr.eval.fusion_grid import FusionGrid
    from lsr.eval.metrics import evaluate
    from lsr.eval.tuning import LEGS, judged_queries, tuning_split, weight_grid
    from lsr.ingest.indexing import IndexOptions
    from lsr.search.searcher import Searcher

    source = locate_dataset(name, None)
    dataset = load_beir(source)
    folder, _ = cached_collection(source, dataset, IndexOptions(), progress=False)
    backend = InProcess(Searcher.open(folder))
    splits = {"tuning": tuning_split(dataset, "test"), "test": "test"}
    grids = {}
    for role, split in splits.items():
        qrels, qids, texts = judged_queries(dataset, split)
        grids[role] = qrels, FusionGrid([backend.run(qids, texts, DEPTH, leg) for leg in LEGS], qids)
    rows = {}
    for method, combination in METHODS:
        qrels, grid = grids["tuning"]
        scores = {w: evaluate(qrels, grid.run(method, w, DEPTH, combination))["ndcg@10"] for w in weight_grid()}
        best = max(scores, key=scores.get)  # the first of equals, in the grid's order
        test_qrels, test_grid = grids["test"]
        rows[f"{method} {combination}"] = {
            "weights": list(best), "tuning_split": splits["tuning"], "tuning_ndcg10": round(scores[best], 4),
            "test_ndcg10": round(evaluate(test_qrels, test_grid.run(method, best, DEPTH, combination))["ndcg@10"], 4)}
        print(name, method, combination, rows[f"{method} {combination}"], flush=True)
    return rows


def markdown(results: dict[str, dict[str, dict]]) -> str:
    names = list(results)
    lines = ["# Fusion methods: normalization × combination, weights tuned per dataset", "",
             "Three legs (SPLADE, MiniLM, BM25), each method's weights (sparse/dense/BM25, steps of 0.1) chosen on the "
             "tuning split and frozen for test; the bundled models, the default build of `lsr beir` on this CPU.", "",
             "| method | " + " | ".join(f"{n}: weights, `{results[n][next(iter(results[n]))]['tuning_split']}`, test"
                                      for n in names) + " |",
             "|---|" + "---|" * len(names)]
    best = {n: max(rows, key=lambda key: rows[key]["tuning_ndcg10"]) for n, rows in results.items()}
    for key in results[names[0]]:
        cells = []
        for n in names:
            row = results[n][key]
            mark = " **(best on tuning)**" if best[n] == key else ""
            cells.append(f"{'/'.join(f'{w:g}' for w in row['weights'])}, {row['tuning_ndcg10']:.4f}, "
                         f"{row['test_ndcg10']:.4f}{mark}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="+")
    args = ap.parse_args()
    results = {name: tuned(name) for name in args.datasets}
    (RESULTS / "fusion-methods.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / "fusion-methods.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
