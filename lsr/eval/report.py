"""A BEIR report on disk: results.json, results.md and an nDCG@10 bar chart; and any benchmark's table and JSON."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import IO

from lsr.eval.metrics import METRICS, SIGNIFICANT, marked_difference
from lsr.eval.prf_tuning import EDGE_BETA

# the legs each method's runs search (the fused ones: every leg the collection has)
METHOD_LEGS = {"bm25": {"bm25"}, "sparse": {"sparse"}, "dense": {"dense"}, "hybrid": {"sparse", "dense", "bm25"}}


def write_results(results_dir: Path, name: str, report: dict, table: str) -> None:
    """Print a benchmark's table and write ``NAME.json`` and ``NAME.md`` under ``results_dir``."""
    print(table)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (results_dir / f"{name}.md").write_text(table.rstrip("\n") + "\n")


def write_table(results_dir: Path, name: str, title: str, intro: str, header: list[str], rows: list[list[str]],
                report: dict) -> None:
    """A benchmark's Markdown: a title, a paragraph, one table (the first column left-aligned, numbers right) and the
    machine it ran on with its load; ``write_results`` prints it and writes it beside ``report``'s JSON."""
    lines = [f"# {title}", "", intro, "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
             *("| " + " | ".join(cells) + " |" for cells in rows),
             "", f"Machine: {machine()}; load average at the end {os.getloadavg()[0]:.1f}.", ""]
    write_results(results_dir, name, report, "\n".join(lines))


def machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def markdown(report: dict) -> str:
    sig = report.get("significance")
    against = [f"nDCG@10 vs {sig['baseline']}"] if sig else []
    lines = [f"# BEIR {report['dataset']} ({report['split']}, {report['queries']} queries)", "",
             "| method | " + " | ".join([*METRICS, *against]) + " |", "|---|" + "---|" * (len(METRICS) + len(against))]
    for method, metrics in report["methods"].items():
        versus = [_versus(sig, method)] if sig else []
        lines.append(f"| {method} | " + " | ".join([*(f"{metrics[m]:.4f}" for m in METRICS), *versus]) + " |")
    for name, metrics in report.get("checks", {}).items():
        lines.append(f"| _{name}_ | " + " | ".join([*(f"{metrics[m]:.4f}" for m in METRICS), *([""] if sig else [])])
                     + " |")
    if sig:
        lines += ["", f"nDCG@10 vs {sig['baseline']}: the difference and the two-sided p-value of a {sig['test']} "
                      f"over the {report['queries']} queries; * p < {SIGNIFICANT}."]
    s = report["settings"]
    if s.get("k", 100) < 100:  # the columns said recall@100 and map@100 of a run cut at k, with no word of k
        lines += ["", f"Depth `--k {s['k']}`: each method retrieved its top {s['k']} only, so recall@100 and map@100 "
                      f"are over those {s['k']} hits (the default --k 100 gives the metrics' full depth)."]
    idf_queries = report["models"].get("sparse_queries") == "InferenceFreeQueryEncoder"
    legs = set().union(*(METHOD_LEGS.get(method, set(METHOD_LEGS["hybrid"])) for method in report["methods"]))
    models = [f"sparse `{report['models']['sparse']}`"
              f"{' with inference-free queries (IDF weights, no model)' if idf_queries else ''}" * ("sparse" in legs),
              f"dense `{report['models']['dense']}`" * ("dense" in legs),
              f"bm25: {report['models']['bm25']}" * ("bm25" in legs)]  # a bm25-only run named SPLADE and MiniLM
    lines += ["", "Models: " + "; ".join(model for model in models if model) + "."]
    if "alpha" in s:
        prf = (f"PRF: m = {s['prf_docs']} feedback docs, β = {s['prf_weight']}, interpolation {s['prf_interpolate']}; "
               if "hybrid-prf" in report["methods"] else "")  # tuned always, reported where a method ran it
        lines.append(f"Hybrid: {s['normalization']}, α (sparse weight) = {s['alpha']}; {prf}"
                     f"{_tuned(s['tuned_on'], report['split'])}.")
    if "fusion" in s:
        f = s["fusion"]
        lines.append(f"Fusion: {f['normalization']}, weights sparse {f['sparse_weight']}, dense {f['dense_weight']}, "
                     f"bm25 {f['bm25_weight']}; "
                     + (f"tuned on `{f['tuned_on']}` qrels over {len(f.get('tuning_ndcg10', {}))} settings (all in "
                        f"results.json), frozen for `{report['split']}`." if f["tuned_on"] else
                        f"{_tuned(None, report['split'])}."))
    if "defaults" in report["methods"]:
        lines.append("Defaults: what an untuned collection serves with PRF asked for (UNTUNED_HYBRID + PrfOptions()), "
                     "chosen across datasets on SciFact train + NFCorpus dev (benchmarks/results/prf-variants.md), "
                     "not tuned by this run.")
    if "prf" in s:
        lines += prf_lines(s["prf"], report.get("prf_variants", {}), report["split"])
    lines.append((f"Index checksum `{report['index_checksum']}`. " if report["index_checksum"] else "")
                 + "Timings (s): " + ", ".join(f"{k} {v}" for k, v in report["timings"].items()) + ".")
    if report.get("index_build_seconds"):
        lines.append("Index build (cold, per stage, s): "
                     + ", ".join(f"{k} {v}" for k, v in report["index_build_seconds"].items()) + ".")
    if report.get("index_encoded_with"):
        from lsr.ingest.indexing import describe_encoding

        queries = f"; dense queries {report['dense_query_dtype']}" if report.get("dense_query_dtype") else ""
        lines.append(f"Index encoded on {describe_encoding(report['index_encoded_with'])}{queries}.")
    lines.append(f"Machine: {report['machine']}." + (f" {report['note']}" if report.get("note") else ""))
    return "\n".join(lines) + "\n"


def _versus(sig: dict, method: str) -> str:
    """``+0.0523* (p 0.0031)`` for a method against the significance baseline; empty for the baseline itself."""
    if method not in sig["p_value"]:
        return ""
    p = sig["p_value"][method]
    return f"{marked_difference(sig['difference'][method], p)} (p {p:.4f})"


def prf_lines(tuned: dict, variants: dict, split: str) -> list[str]:
    """fusion-prf's choice and every PRF variant's frozen settings with its tuning-split and reported nDCG@10."""
    chosen = tuned.get("chosen")
    on = tuned["tuned_on"]
    pair = chosen and chosen.get("fusion")
    lines = ["Fusion-PRF: " + (f"variant {chosen['variant']} ({prf_settings(chosen['settings'])})" if chosen else
                                "PRF is off" if on is None else "no variant beat fusion without PRF, so PRF is off")
             + (f" on fusion {pair['normalization']} {pair['sparse_weight']}/{pair['dense_weight']}/{pair['bm25_weight']}"
                if pair else "")
             + (f"; chosen on `{on}` qrels (nDCG@10 {chosen['ndcg@10'] if chosen else '-'}; the best fusion without "
                f"PRF there: {tuned.get('no_prf_ndcg@10')}), frozen for `{split}`." if on else
                f"; {_tuned(None, split)}.")]
    if "joint" in tuned:
        lines.append(f"Fusion and PRF chosen jointly: every variant's grid on the best fusion without PRF, then "
                     f"{len(tuned['joint'])} (fusion, PRF) pairs: the PRF shortlist (each variant's best, β "
                     f"{EDGE_BETA} where β hit the grid's edge, the cross-dataset default) on the next best fusions and "
                     f"the cross-dataset default fusion (all in results.json).")
    if variants:
        lines += ["", f"| PRF variant (on the fusion) | settings chosen on `{on}` | nDCG@10 `{on}` | nDCG@10 `{split}` |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {prf_settings(v['settings'])} | {v['tuning_ndcg@10']:.4f} | {v['ndcg@10']:.4f} |"
                  for name, v in variants.items()]
        lines.append("")
    return lines


def _tuned(on: str | None, split: str) -> str:
    """Where the settings were chosen, or that nothing was (a dataset without train/dev qrels)."""
    if on is None:
        return (f"not tuned: the dataset has no train or dev qrels besides `{split}`, so these are fixed values "
                "chosen without its qrels")
    return f"tuned on `{on}` qrels, frozen for `{split}`"


def prf_settings(s: dict) -> str:
    dense = s["weight"] if s["dense_weight"] is None else s["dense_weight"]
    return (f"m={s['feedback_docs']}, β sparse {s['weight']}, β dense {dense}, min IDF {s['min_idf']}, "
            f"interpolate {s['interpolate']}")


def earlier_report(out: Path) -> str | None:
    """What an earlier run left in ``out`` (dataset, split, when), so replacing it is said, not silent."""
    import time

    path = out / "results.json"
    try:
        written = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
    except OSError:
        return None
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        return f"{earlier['dataset']} {earlier['split']}, written {written}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"written {written}"


def write_report(report: dict, out: Path) -> None:
    """Each file whole or not at all (Ctrl-C while the chart was drawn left a results.json of this run beside a
    truncated or earlier one): the chart and the Markdown first, results.json, what scripts read, last."""
    from lsr.files import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "ndcg.png", lambda fh: plot_ndcg(report, fh))
    atomic_write(out / "results.md", lambda fh: fh.write(markdown(report).encode("utf-8")))
    atomic_write(out / "results.json", lambda fh: fh.write((json.dumps(report, indent=2) + "\n").encode("utf-8")))


def plot_ndcg(report: dict, path: Path | IO[bytes]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["methods"])
    values = [report["methods"][m]["ndcg@10"] for m in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(names, values, color="#4c72b0")
    ax.bar_label(bars, fmt="%.3f")
    ax.set_ylabel("nDCG@10")
    ax.set_title(f"BEIR {report['dataset']} ({report['split']})")
    ax.set_ylim(0, max(values + [0.01]) * 1.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
