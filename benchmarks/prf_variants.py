"""PRF variants across datasets: every variant's dev and test nDCG@10, and the cross-dataset default.

Reads the `lsr beir` reports (benchmarks/results/beir-DATASET.json, which hold every fusion setting's and
every PRF setting's tuning-split score) and writes benchmarks/results/prf-variants.md/.json:

- the variant table: each variant's settings chosen on the dataset's train/dev qrels, its tuning-split
  and its test nDCG@10 (losers included);
- the default for collections without judgements, chosen ACROSS datasets on tuning splits only: the
  fusion setting with the best mean tuning nDCG@10, then, on that fusion, the PRF setting (or none) with
  the best mean tuning nDCG@10. Only the ``shortlist`` PRF settings with the best mean of the per-dataset
  grids are re-scored on the common fusion (the full grid is too slow for two shared cores). Test scores of
  the chosen default are printed for the record, never used to choose.

    LSR_BEIR_DIR=/work/shared/data/beir python benchmarks/prf_variants.py scifact nfcorpus
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def mean_best(tables: list[dict[str, float]]) -> tuple[str, float]:
    """The key present in every table with the best mean value (ties: the first in the first table's order)."""
    common = [key for key in tables[0] if all(key in t for t in tables[1:])]
    return max(((key, statistics.fmean(t[key] for t in tables)) for key in common), key=lambda kv: kv[1])


def prf_grid(report: dict) -> dict[str, dict]:
    """label -> (tuning nDCG@10, PrfOptions fields) over every variant's grid in one report."""
    from lsr.eval.prf_tuning import VARIANTS, label, variant_grid

    options = {label(p): p for v in VARIANTS.values() for p in variant_grid(v)}
    scores = {}
    for variant in report["settings"]["prf"]["variants"].values():
        scores.update(variant["grid_ndcg10"])
    return {lab: {"ndcg": score, "prf": options[lab]} for lab, score in scores.items()}


def main() -> int:
    from lsr.eval.backends import InProcess
    from lsr.eval.beir import cached_collection
    from lsr.eval.datasets import load_beir, locate_dataset
    from lsr.eval.metrics import evaluate
    from lsr.eval.tuning import fusion_options, judged_queries, tuning_split
    from lsr.ingest.indexing import IndexOptions
    from lsr.search.searcher import Searcher

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--shortlist", type=int, default=12)
    args = ap.parse_args()
    reports = {name: json.loads((RESULTS / f"beir-{name}.json").read_text()) for name in args.datasets}

    fusion_label, fusion_mean = mean_best([r["settings"]["fusion"]["tuning_ndcg10"] for r in reports.values()])
    method, weights = fusion_label.split()
    sparse, dense, bm25 = map(float, weights.split("/"))
    hybrid = fusion_options({"normalization": method, "sparse_weight": sparse, "dense_weight": dense, "bm25_weight": bm25})
    grids = {name: prf_grid(r) for name, r in reports.items()}
    shortlist = sorted(grids[args.datasets[0]], reverse=True,
                       key=lambda lab: statistics.fmean(g[lab]["ndcg"] for g in grids.values()))[: args.shortlist]
    candidates = {"no PRF": None, **{lab: grids[args.datasets[0]][lab]["prf"] for lab in shortlist}}

    backends = {}

    def score(name: str, split: str, labels: list[str]) -> dict[str, float]:
        if name not in backends:
            dataset = load_beir(locate_dataset(name, None))
            folder, _ = cached_collection(locate_dataset(name, None), dataset, IndexOptions(), progress=False)
            backends[name] = (dataset, InProcess(Searcher.open(folder)))
        dataset, backend = backends[name]
        qrels, qids, texts = judged_queries(dataset, tuning_split(dataset, "test") if split == "tuning" else split)
        return {lab: round(evaluate(qrels, backend.run(qids, texts, 101, "hybrid", hybrid, candidates[lab]))["ndcg@10"], 4)
                for lab in labels}

    dev = {name: score(name, "tuning", list(candidates)) for name in args.datasets}
    chosen, chosen_mean = mean_best(list(dev.values()))
    asked, asked_mean = mean_best([{lab: v for lab, v in d.items() if lab != "no PRF"} for d in dev.values()])
    test = {name: score(name, "test", list(dict.fromkeys(["no PRF", chosen, asked]))) for name in args.datasets}

    out = {"fusion": {"setting": fusion_label, "mean_tuning_ndcg10": round(fusion_mean, 4)},
           "prf": {"setting": chosen, "mean_tuning_ndcg10": round(chosen_mean, 4),
                   "options": None if candidates[chosen] is None else vars(candidates[chosen])},
           "prf_when_asked": {"setting": asked, "mean_tuning_ndcg10": round(asked_mean, 4), "options": vars(candidates[asked])},
           "tuning_ndcg10": dev, "test_ndcg10": test}
    (RESULTS / "prf-variants.json").write_text(json.dumps(out, indent=2) + "\n")
    text = markdown(reports, out)
    (RESULTS / "prf-variants.md").write_text(text)
    print(text)
    return 0


def markdown(reports: dict[str, dict], cross: dict) -> str:
    """The variant table (every variant, per dataset: settings and split chosen on, tuning and test nDCG@10,
    whether it beats no PRF on the tuning split and on test) and the cross-dataset default."""
    from lsr.eval.report import prf_settings

    names = list(reports)
    first = reports[names[0]]
    lines = ["# PRF variants on the tuned three-leg fusion (SPLADE + MiniLM + BM25)", "",
             "Each variant's settings are chosen on the dataset's train/dev qrels over the same grid "
             f"(feedback docs {first['settings']['prf']['grid']['prf_docs']}, β {first['settings']['prf']['grid']['beta']}, "
             f"min IDF {first['settings']['prf']['grid']['min_idf']} for the IDF variants) and frozen for test. "
             "✓ = above the fusion without PRF on that split. From `lsr beir` runs "
             "(benchmarks/results/beir-*.json); the 2-core CPU was shared with other jobs (quality numbers only).", ""]
    for name, r in reports.items():
        prf = r["settings"]["prf"]
        on = prf["tuned_on"]
        base_dev, base_test = prf["no_prf_ndcg@10"], r["methods"]["fusion"]["ndcg@10"]
        pair = prf.get("chosen") or {}
        best = {key: r["settings"]["fusion"][key] for key in ("normalization", "sparse_weight", "dense_weight", "bm25_weight")}
        chosen = pair.get("variant") if pair.get("fusion", best) == best else None  # chosen on the fusion of this table
        lines += [f"## {r['dataset']} (chosen on `{on}`, reported on `{r['split']}`)", "",
                  f"| variant | settings chosen on `{on}` | nDCG@10 `{on}` | nDCG@10 `{r['split']}` |", "|---|---|---|---|",
                  f"| fusion, no PRF | {r['settings']['fusion']['normalization']} {r['settings']['fusion']['sparse_weight']}/"
                  f"{r['settings']['fusion']['dense_weight']}/{r['settings']['fusion']['bm25_weight']} | {base_dev:.4f} | {base_test:.4f} |"]
        mark = lambda x, base: f"{x:.4f} {'✓' if x > base else '✗'}"  # noqa: E731
        for variant, v in r["prf_variants"].items():
            lines.append(f"| {'**' + variant + '** (chosen)' if variant == chosen else variant} | {prf_settings(v['settings'])} "
                         f"| {mark(v['tuning_ndcg@10'], base_dev)} | {mark(v['ndcg@10'], base_test)} |")
        if pair and chosen is None:  # joint tuning chose PRF on another fusion
            f = pair["fusion"]
            lines.append(f"| **{pair['variant']}** (chosen jointly) on {f['normalization']} {f['sparse_weight']}/"
                         f"{f['dense_weight']}/{f['bm25_weight']} | {prf_settings(pair['settings'])} | "
                         f"{mark(pair['ndcg@10'], base_dev)} | {mark(r['methods']['fusion-prf']['ndcg@10'], base_test)} |")
        lines.append("")
    helps = [v for v in first["prf_variants"]
             if all(r["prf_variants"][v]["tuning_ndcg@10"] > r["settings"]["prf"]["no_prf_ndcg@10"] for r in reports.values())]
    safe = [v for v in helps if all(r["prf_variants"][v]["ndcg@10"] >= r["methods"]["fusion"]["ndcg@10"] for r in reports.values())]
    lines += ["## What is kept", "",
              f"Variants that raise the tuning-split nDCG@10 on every dataset: {', '.join(helps) or 'none'}; "
              f"of those, not lowering test on any: {', '.join(safe) or 'none'}. `lsr beir`'s `fusion-prf` and `lsr tune` "
              "choose among all variants per collection on its own train/dev qrels, jointly with the fusion (the PRF shortlist "
              "is also tried on the next best fusions); the table shows how each fared on the best fusion without PRF.", "",
              "## Default for collections without judgements (chosen across datasets, tuning splits only)", "",
              f"Fusion: `{cross['fusion']['setting']}` (sparse/dense/BM25), the setting with the best mean tuning nDCG@10 "
              f"over {', '.join(names)} ({cross['fusion']['mean_tuning_ndcg10']}).",
              f"PRF on that fusion: `{cross['prf']['setting']}` (best mean tuning nDCG@10 {cross['prf']['mean_tuning_ndcg10']} "
              "among no PRF and the shortlist of the per-dataset grids' best means). When PRF is asked for without "
              f"settings, an untuned collection uses `{cross['prf_when_asked']['setting']}` (the best PRF setting by mean).", "",
              "| candidate | " + " | ".join(f"{n} tuning" for n in names) + " | mean |", "|---|" + "---|" * (len(names) + 1)]
    for lab in cross["tuning_ndcg10"][names[0]]:
        values = [cross["tuning_ndcg10"][n][lab] for n in names]
        lines.append(f"| {lab} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {statistics.fmean(values):.4f} |")
    lines += ["", "Test nDCG@10 of that default (for the record; not used to choose): "
              + "; ".join(f"{n}: " + ", ".join(f"{lab} {v:.4f}" for lab, v in cross["test_ndcg10"][n].items()) for n in names) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
