"""What a fine-tune costs away from its own data: each model beside splade-tiny on every BEIR corpus here, three ways.

Why: issue 16 allows a fine-tuned model to lose at most 0.01 nDCG@10 on a BEIR dataset it never saw, checked on one
we do not have. NFCorpus's test queries are nearly all under 16 tokens, so its qrels say nothing about long queries
(ArguAna's are whole arguments) or about a task other than topical search. So besides each dataset's test qrels, two
tasks are built from every corpus itself, each document the one relevant answer to its own query:
- halves: a document's first half (at most 160 words) finds its second half among all second halves (long queries);
- title: a document's title finds its own text among all texts (short, SciDocs-like queries).
Scores are exact float32 dot products over the encoders' vectors, as ``lsr train --eval`` scores; every difference
comes with a paired randomization test's p-value against splade-tiny.

    python benchmarks/train_transfer.py OUT [OUT ...]    # trained folders; about 2 minutes per model on 2 cores

Writes benchmarks/results/train-transfer.md and .json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from encode import machine
from encode_gpu import publish

REPO = Path(__file__).resolve().parent.parent
BASE = "splade-tiny"
HEAD_WORDS = 160
TASKS = ("test qrels", "halves", "title")


def proxy_queries(corpus: dict, task: str, docs: int) -> tuple[list[str], list[str]]:
    """(queries, documents) of a proxy task over up to ``docs`` documents (seed 0); query i's answer is document i."""
    ids = sorted(corpus)
    ids = [ids[i] for i in np.random.default_rng(0).permutation(len(ids))]
    if task == "title":
        ids = [i for i in ids if corpus[i].get("title", "").strip() and corpus[i]["text"].strip()]
    queries, documents = [], []
    for doc_id in ids[:docs]:
        doc = corpus[doc_id]
        if task == "title":
            queries.append(doc["title"])
            documents.append(doc["text"])
        else:
            words = f"{doc.get('title', '')} {doc['text']}".split()
            half = len(words) // 2
            queries.append(" ".join(words[:half][:HEAD_WORDS]))
            documents.append(" ".join(words[half:]))
    return queries, documents


def proxy_ndcg(encoder, queries: list[str], documents: list[str]) -> list[float]:
    """Each query's nDCG@10 with its one relevant document (ties ranked against it, as a strict rank)."""
    import scipy.sparse as sp

    def matrix(batch) -> sp.csr_matrix:
        shape = (len(batch.indptr) - 1, batch.vocab_size)
        return sp.csr_matrix((batch.values, batch.indices, batch.indptr), shape=shape)

    scores = (matrix(encoder.encode_queries(queries)) @ matrix(encoder.encode_documents(documents)).T).toarray()
    own = scores[np.arange(len(queries)), np.arange(len(queries))]
    rank = (scores > own[:, None]).sum(1)
    return np.where(rank < 10, 1.0 / np.log2(rank + 2), 0.0).tolist()


def score_model(spec: str, datasets: list[str], docs: int) -> dict:
    """{dataset: {task: per-query nDCG@10}} of one model (``LABEL=FOLDER`` or a folder or name), and what it was
    trained on (from its lsr_train.json)."""
    from lsr import SpladeEncoder
    from lsr.encode.models import resolve_model
    from lsr.encode.splade import idf_table_path
    from lsr.eval.datasets import load_beir, locate_dataset
    from lsr.train.evaluate import quality_scorer

    started = time.perf_counter()
    label, _, name = spec.rpartition("=")
    if idf_table_path(resolve_model(name)) is not None:
        raise SystemExit(f"train_transfer.py: {name} is inference-free (it ships an idf.json); this compares symmetric "
                         "models with splade-tiny")
    encoder = SpladeEncoder.from_pretrained(name)
    record = Path(name, "lsr_train.json")
    trained = json.loads(record.read_text()) if record.is_file() else {}
    scores: dict[str, dict[str, list[float]]] = {}
    for dataset in datasets:
        corpus = load_beir(locate_dataset(dataset, None), splits=("test",)).corpus
        scores[dataset] = {"test qrels": quality_scorer(encoder, dataset, "test")()[1]}
        for task in TASKS[1:]:
            scores[dataset][task] = proxy_ndcg(encoder, *proxy_queries(corpus, task, docs))
    print(f"{label or name}: scored in {time.perf_counter() - started:.0f} s", flush=True)
    blend = trained.get("config", {}).get("blend", 1.0 if trained else None)  # a run from before --blend kept all
    return {"name": label or Path(name).name, "path": name, "trained_on": trained.get("data"), "blend": blend,
            "scores": scores}


def compare(models: list[dict]) -> list[dict]:
    """Each model's mean nDCG@10 per dataset and task, with its difference from the first model's and the p-value."""
    from lsr.eval.metrics import randomization_p

    base = models[0]["scores"]
    rows = []
    for model in models:
        for dataset, tasks in model["scores"].items():
            cells = {task: {"ndcg@10": float(np.mean(values))} for task, values in tasks.items()}
            if model is not models[0]:
                for task, values in tasks.items():
                    cells[task]["delta"] = cells[task]["ndcg@10"] - float(np.mean(base[dataset][task]))
                    cells[task]["p"] = randomization_p(base[dataset][task], values)
            rows.append({**{k: v for k, v in model.items() if k != "scores"}, "dataset": dataset,
                         "unseen": model["trained_on"] not in (None, dataset), "tasks": cells})
    return rows


def render(report: dict) -> str:
    m = report["machine"]
    lines = ["# What a fine-tune costs away from its own data: nDCG@10 beside splade-tiny", "",
             f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}; {report['docs']} documents per proxy task, "
             f"{report['seconds']:.0f} s in all. Unseen: the dataset a model was not trained on (bold where it "
             "loses more than 0.01). Proxies: halves (a document's first half finds its second half: long "
             "queries), title (a title finds its text). p: paired randomization test against splade-tiny.", "",
             "| model | trained on | blend | dataset | " + " | ".join(TASKS) + " |",
             "|---|---|---:|---|" + "---:|" * len(TASKS)]
    for row in report["rows"]:
        cells = []
        for cell in row["tasks"].values():
            text = f"{cell['ndcg@10']:.4f}"
            if "delta" in cell:
                text += f" ({cell['delta']:+.4f}, p {cell['p']:.3f})"
            cells.append(f"**{text}**" if row["unseen"] and cell.get("delta", 0) < -0.01 else text)
        dataset = f"{row['dataset']} (unseen)" if row["unseen"] else row["dataset"]
        lines.append(f"| {row['name']} | {row['trained_on'] or ''} | {row['blend'] or ''} | {dataset} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+",
                        help="LABEL=FOLDER, a folder (lsr train's OUT) or a model name; splade-tiny is added first")
    parser.add_argument("--datasets", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument("--docs", type=int, default=1500, help="documents per proxy task (each its own query)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    started = time.perf_counter()
    models = [score_model(name, args.datasets, args.docs) for name in [BASE, *args.models]]
    report = {"machine": machine(torch.get_num_threads()), "docs": args.docs, "rows": compare(models),
              "seconds": time.perf_counter() - started}
    publish(report, render(report), args.results_dir / "train-transfer")


if __name__ == "__main__":
    main()
