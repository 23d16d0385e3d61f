"""BEIR evaluation: find the dataset, index it once (cached), run every method, score, report.

Methods: ``bm25`` (bm25s + PyStemmer's English Snowball stemmer), ``sparse`` (SPLADE),
``dense`` (MiniLM), ``hybrid`` (normalised interpolation) and ``hybrid-prf`` (Rocchio on the
sparse query + Vector-PRF on the dense one, interpolated before and after PRF). Hybrid's α and
PRF's m and β are tuned on the train/dev qrels only and then frozen for the reported split.
All retrieval goes through :class:`lsr.searcher.Searcher` (or the gRPC service with
``endpoint``), so these numbers are the product's numbers, not a side implementation's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
import urllib.request
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lsr.beir_data import BeirDataset, load_beir

log = logging.getLogger(__name__)

METHODS = ("bm25", "sparse", "dense", "hybrid", "hybrid-prf")
METRICS = ("ndcg@10", "recall@100", "mrr@10", "map@100")
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
# md5 of the official zips, as published in the BEIR README's dataset table.
BEIR_MD5 = {
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
}
ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PRF_DOCS = (2, 3, 5)
PRF_WEIGHTS = (0.1, 0.25, 0.5)
DEFAULT_ALPHA, DEFAULT_PRF_DOCS, DEFAULT_PRF_WEIGHT = 0.5, 3, 0.25


# ---------------------------------------------------------------------------- locating data
def cache_dir() -> Path:
    """``$LSR_CACHE_DIR`` or ``~/.cache/lsr``: downloaded datasets and cached indexes live here."""
    return Path(os.environ.get("LSR_CACHE_DIR") or Path.home() / ".cache" / "lsr").expanduser()


def _candidates(folder: Path, name: str) -> list[Path]:
    return [folder / name, folder / f"{name}.zip", folder / f"{name}.tar.gz", folder / f"{name}.tgz"]


def locate_dataset(name_or_path: str, data_dir: str | Path | None = None, *, download: bool = True) -> Path:
    """A path as given; else NAME in ``data_dir``, ``$LSR_BEIR_DIR``, the cache; else download it."""
    given = Path(name_or_path).expanduser()
    if given.exists():
        return given
    if os.sep in name_or_path or name_or_path.endswith((".zip", ".tar.gz")):
        raise FileNotFoundError(f"BEIR dataset {name_or_path} does not exist")
    folders = [Path(d).expanduser() for d in (data_dir, os.environ.get("LSR_BEIR_DIR")) if d]
    folders.append(cache_dir() / "beir")
    for folder in folders:
        for candidate in _candidates(folder, name_or_path):
            if candidate.exists():
                return candidate
    looked = ", ".join(str(f) for f in folders)
    if not download:
        raise FileNotFoundError(f"BEIR dataset {name_or_path!r} not found in {looked}")
    return download_dataset(name_or_path, cache_dir() / "beir", looked)


def download_dataset(name: str, folder: Path, looked: str = "") -> Path:
    """Fetch the official zip into ``folder`` and verify its published md5 before keeping it."""
    if name not in BEIR_MD5:
        raise FileNotFoundError(
            f"BEIR dataset {name!r} not found (looked in {looked}) and it has no pinned checksum to download against; "
            f"download {BEIR_URL.format(name=name)} yourself and pass --data-dir"
        )
    folder.mkdir(parents=True, exist_ok=True)
    target, tmp = folder / f"{name}.zip", folder / f"{name}.zip.part"
    url = BEIR_URL.format(name=name)
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as fh:
            for block in iter(lambda: response.read(1 << 20), b""):
                fh.write(block)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise FileNotFoundError(
            f"BEIR dataset {name!r} is not available locally (looked in {looked}) and downloading {url} failed ({exc}). "
            "Set LSR_BEIR_DIR or --data-dir to a folder holding it, or go online"
        ) from None
    md5 = hashlib.md5(tmp.read_bytes()).hexdigest()
    if md5 != BEIR_MD5[name]:
        tmp.unlink()
        raise ValueError(f"downloaded {url} has md5 {md5}, expected {BEIR_MD5[name]}; not using it (retry later)")
    if not zipfile.is_zipfile(tmp):
        tmp.unlink()
        raise ValueError(f"downloaded {url} is not a zip archive")
    tmp.replace(target)
    return target


# ---------------------------------------------------------------------------- index cache
def corpus_checksum(dataset: BeirDataset) -> str:
    """The same running checksum ``lsr index`` records for this corpus (title + " " + text)."""
    from lsr.corpus import CorpusHash

    ids = list(dataset.corpus)
    return CorpusHash().update(ids, dataset.doc_texts(ids))


def cached_collection(source: Path, dataset: BeirDataset, options: Any, *, progress: bool = True) -> tuple[Path, bool]:
    """A collection of ``source`` under the cache, keyed by models, settings and corpus checksum.

    Returns (folder, reused). An interrupted build is resumed on the next call.
    """
    from lsr.collection import META_FILE
    from lsr.indexing import build_collection

    key = json.dumps({"model": options.model, "dense": options.dense_model, "max_length": options.max_length,
                      "fields": list(options.fields), "hnsw": options.hnsw_m, "quantization": options.quantization,
                      "corpus": corpus_checksum(dataset)}, sort_keys=True)
    folder = cache_dir() / "indexes" / f"{dataset.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (folder / META_FILE).is_file():
        return folder, True
    # The source path is part of the build settings; a cache hit must not depend on where the data lives.
    build_collection(source, folder, options, resume=folder.exists(), progress=progress)
    return folder, False


# ---------------------------------------------------------------------------- metrics
Run = dict[str, dict[str, float]]


def drop_self_hits(run: Run) -> Run:
    """BEIR's ``ignore_identical_ids``: a document whose id equals the query id is not a hit."""
    return {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}


def _top(docs: dict[str, float], k: int) -> dict[str, float]:
    return dict(sorted(docs.items(), key=lambda item: (-item[1], item[0]))[:k])


def evaluate(qrels: dict[str, dict[str, int]], run: Run, *, ignore_identical_ids: bool = True) -> dict[str, float]:
    """nDCG@10, Recall@100, MRR@10 (reciprocal rank within the top 10) and MAP@100 with pytrec_eval.

    Averaged over the queries in ``qrels``; a query with no results scores 0.
    """
    import pytrec_eval

    if ignore_identical_ids:
        run = drop_self_hits(run)
    qrels = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    run100 = {q: _top(run.get(q, {}), 100) for q in qrels}
    run10 = {q: _top(docs, 10) for q, docs in run100.items()}
    main = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100", "map_cut.100"}).evaluate(run100)
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run10)
    n = len(qrels)

    def mean(table: dict, measure: str) -> float:
        return float(sum(v[measure] for v in table.values()) / n) if n else 0.0

    return {"ndcg@10": mean(main, "ndcg_cut_10"), "recall@100": mean(main, "recall_100"),
            "mrr@10": mean(rr, "recip_rank"), "map@100": mean(main, "map_cut_100")}


# ---------------------------------------------------------------------------- retrieval
def bm25_run(dataset: BeirDataset, qids: Sequence[str], k: int) -> Run:
    """bm25s (Lucene BM25, k1=1.5, b=0.75) with English stopwords and the Snowball English stemmer."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    doc_ids = list(dataset.corpus)
    tokens = bm25s.tokenize(dataset.doc_texts(doc_ids), stopwords="en", stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    queries = bm25s.tokenize([dataset.queries[q] for q in qids], stopwords="en", stemmer=stemmer,
                             return_ids=False, show_progress=False)
    depth = min(k, len(doc_ids))
    rows, scores = retriever.retrieve(queries, k=depth, show_progress=False)
    return {q: {doc_ids[int(r)]: float(s) for r, s in zip(rows[i], scores[i]) if s > 0} for i, q in enumerate(qids)}


class InProcess:
    """Runs queries through a local Searcher; each query list is encoded once and reused across settings."""

    def __init__(self, searcher: Any) -> None:
        self.searcher = searcher
        self._encoded: dict[tuple[str, ...], tuple[Any, Any]] = {}

    def run(self, qids: Sequence[str], texts: Sequence[str], k: int, mode: str, hybrid=None, prf=None) -> Run:
        from lsr.searcher import row_dict

        key = tuple(qids)
        if key not in self._encoded:
            sparse, _ = self.searcher.encode_queries(list(texts))
            dense = self.searcher.encode_dense(list(texts)) if self.searcher.has_dense else None
            self._encoded[key] = (sparse, dense)
        sparse, dense = self._encoded[key]
        run: Run = {}
        for i, q in enumerate(qids):
            result = self.searcher.search_encoded(row_dict(sparse, i), None if dense is None else dense[i],
                                                  k=k, mode=mode, hybrid=hybrid, prf=prf)
            run[q] = {h.doc_id: h.score for h in result.hits}
        return run


class Remote:
    """Runs queries through the gRPC service (``lsr serve``) with the same options."""

    def __init__(self, endpoint: str) -> None:
        from lsr.service import Client

        self.client = Client(endpoint)
        self.client.wait_ready(timeout=30)

    def run(self, qids: Sequence[str], texts: Sequence[str], k: int, mode: str, hybrid=None, prf=None) -> Run:
        results = self.client.search_batch(list(texts), k=k, mode=mode, hybrid=hybrid, prf=prf)
        return {q: {h.doc_id: h.score for h in r.hits} for q, r in zip(qids, results)}


def exact_sparse_run(collection_path: Path, searcher: Any, qids: Sequence[str], texts: Sequence[str], k: int) -> Run:
    """Brute-force float32 dot products over the stored (unquantized) vectors: the index's yardstick."""
    from lsr.collection import read_vector_shards
    from lsr.sparse import SparseBatch

    meta = json.loads((collection_path / "lsr.json").read_text())
    batches, ids = zip(*read_vector_shards(collection_path, meta["shards"]))
    docs_t = SparseBatch.concat(list(batches)).to_scipy().T.tocsr()
    doc_ids = [d for part in ids for d in part]
    queries = searcher.encode_queries(list(texts))[0].to_scipy()
    run: Run = {}
    for start in range(0, len(qids), 64):  # bounded memory: 64 dense score rows at a time
        scores = (queries[start : start + 64] @ docs_t).toarray()
        for row, q in enumerate(qids[start : start + 64]):
            top = np.argsort(-scores[row], kind="stable")[:k]
            run[q] = {doc_ids[j]: float(scores[row, j]) for j in top if scores[row, j] > 0}
    return run


# ---------------------------------------------------------------------------- tuning
def tuning_split(dataset: BeirDataset, split: str) -> str | None:
    """dev if the dataset has it, else train (never the reported split)."""
    for candidate in ("dev", "train"):
        if candidate != split and dataset.qrels.get(candidate):
            return candidate
    return None


def tune(backend: Any, dataset: BeirDataset, tune_split: str | None, k: int,
         say: Callable[[str], None]) -> dict[str, Any]:
    """Grid-search α (hybrid), then m and β (PRF) with α frozen, by nDCG@10 on ``tune_split``."""
    from lsr.searcher import HybridOptions, PrfOptions

    settings: dict[str, Any] = {"normalization": "min_max", "alpha": DEFAULT_ALPHA, "prf_docs": DEFAULT_PRF_DOCS,
                                "prf_weight": DEFAULT_PRF_WEIGHT, "prf_interpolate": "both", "tuned_on": tune_split,
                                "grid": {"alpha": list(ALPHAS), "prf_docs": list(PRF_DOCS), "prf_weight": list(PRF_WEIGHTS)}}
    if tune_split is None:
        settings["note"] = "no train/dev qrels: defaults used"
        return settings
    qrels = dataset.qrels[tune_split]
    qids = [q for q in qrels if q in dataset.queries]
    texts = [dataset.queries[q] for q in qids]

    def score(hybrid, prf=None) -> float:
        return evaluate(qrels, backend.run(qids, texts, k + 1, "hybrid", hybrid, prf))["ndcg@10"]

    alpha_scores = {a: score(HybridOptions(sparse_weight=a)) for a in ALPHAS}
    alpha = max(ALPHAS, key=lambda a: (alpha_scores[a], -abs(a - 0.5)))
    say(f"tuned α={alpha} on {tune_split} ({len(qids)} queries): nDCG@10 {alpha_scores[alpha]:.4f}")
    hybrid = HybridOptions(sparse_weight=alpha)
    prf_scores = {(m, b): score(hybrid, PrfOptions(feedback_docs=m, weight=b, interpolate="both"))
                  for m in PRF_DOCS for b in PRF_WEIGHTS}
    m, beta = max(prf_scores, key=lambda mb: (prf_scores[mb], -mb[1], -mb[0]))
    say(f"tuned PRF m={m} β={beta} on {tune_split}: nDCG@10 {prf_scores[(m, beta)]:.4f}")
    settings.update(alpha=alpha, prf_docs=m, prf_weight=beta,
                    tuning_ndcg10={"hybrid": {str(a): round(v, 4) for a, v in alpha_scores.items()},
                                   "hybrid-prf": {f"m={mm},beta={bb}": round(v, 4) for (mm, bb), v in prf_scores.items()}})
    return settings


# ---------------------------------------------------------------------------- the whole run
def run_beir(
    dataset_name: str,
    *,
    data_dir: str | None = None,
    split: str = "test",
    methods: Sequence[str] = METHODS,
    k: int = 100,
    endpoint: str | None = None,
    tune_locally: str | Path | None = None,
    out: str | Path | None = None,
    options: Any = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> dict:
    """Evaluate ``methods`` on ``split``; writes results.md/.json and ndcg.png into ``out`` when given.

    ``tune_locally`` (a collection folder, with ``endpoint``): tune α, m, β in-process on that
    collection, which reuses one encoding of the tuning queries across the grid, while every reported
    number still comes through the endpoint. ``lsr beir --serve`` uses it for the collection it serves.
    """
    from lsr.indexing import IndexOptions
    from lsr.searcher import HybridOptions, PrfOptions

    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if not 10 <= k <= 999:
        raise ValueError(f"--k must be in 10..999 (nDCG@10 needs 10, the searcher returns at most 1000), got {k}")
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    source = locate_dataset(dataset_name, data_dir)
    dataset = load_beir(source)
    if split not in dataset.qrels:
        raise ValueError(f"{source} has no qrels/{split}.tsv; it has {', '.join(sorted(dataset.qrels)) or 'none'}")
    qrels = dataset.qrels[split]
    qids = [q for q in qrels if q in dataset.queries]
    texts = [dataset.queries[q] for q in qids]
    timings["load"] = time.perf_counter() - clock
    say(f"{dataset.name}: {len(dataset.corpus):,} docs, {len(qids):,} {split} queries (from {source})")

    options = options or IndexOptions()
    results: dict[str, dict[str, float]] = {}
    extra: dict[str, Any] = {}
    if "bm25" in methods:
        clock = time.perf_counter()
        results["bm25"] = evaluate(qrels, bm25_run(dataset, qids, k + 1))
        timings["bm25"] = time.perf_counter() - clock
        say(f"bm25        nDCG@10 {results['bm25']['ndcg@10']:.4f}")

    neural = [m for m in methods if m != "bm25"]
    index_checksum = None
    settings: dict[str, Any] = {}
    models = {"sparse": options.model, "dense": options.dense_model}
    build_seconds: dict[str, float] = {}
    if neural:
        clock = time.perf_counter()
        if endpoint:  # the server's collection is the one evaluated; nothing is indexed or loaded here
            backend, searcher, collection_path = Remote(endpoint), None, None
            served = backend.client.stats()
            models = {"sparse": served["model"], "dense": served["dense_model"] or None,
                      "served_index_version": served["index_version"]}
        else:
            from lsr.collection import Collection
            from lsr.searcher import Searcher

            collection_path, reused = cached_collection(source, dataset, options, progress=progress)
            timings["index"] = time.perf_counter() - clock
            say(f"index {'reused from cache' if reused else 'built'}: {collection_path}")
            collection = Collection.open(collection_path)
            index_checksum = collection.checksum
            build_seconds = collection.meta.get("stage_seconds", {})
            clock = time.perf_counter()
            searcher = Searcher.open(collection_path, device="cpu")
            backend = InProcess(searcher)
        timings["load_models"] = time.perf_counter() - clock
        if {"hybrid", "hybrid-prf"} & set(neural):
            clock = time.perf_counter()
            tuner = backend
            if endpoint and tune_locally:
                from lsr.searcher import Searcher

                tuner = InProcess(Searcher.open(tune_locally, device="cpu"))
            settings = tune(tuner, dataset, tuning_split(dataset, split), k, say)
            settings["tuned"] = "in-process on the served collection" if tuner is not backend else "through the backend"
            timings["tune"] = time.perf_counter() - clock
        hybrid = HybridOptions(sparse_weight=settings.get("alpha", DEFAULT_ALPHA))
        plans = {
            "sparse": ("sparse", None, None),
            "dense": ("dense", None, None),
            "hybrid": ("hybrid", hybrid, None),
            "hybrid-prf": ("hybrid", hybrid, PrfOptions(feedback_docs=settings.get("prf_docs", DEFAULT_PRF_DOCS),
                                                        weight=settings.get("prf_weight", DEFAULT_PRF_WEIGHT),
                                                        interpolate="both")),
        }
        for method in neural:
            clock = time.perf_counter()
            mode, h, prf = plans[method]
            results[method] = evaluate(qrels, backend.run(qids, texts, k + 1, mode, h, prf))
            timings[method] = time.perf_counter() - clock
            say(f"{method:<11} nDCG@10 {results[method]['ndcg@10']:.4f}")
        clock = time.perf_counter()
        if "sparse" in neural and searcher is not None:
            extra["sparse_exact_bruteforce"] = evaluate(qrels, exact_sparse_run(collection_path, searcher, qids, texts, k + 1))
        if "hybrid" in neural and settings.get("alpha") != 0.5:
            extra["hybrid_alpha_0.5"] = evaluate(qrels, backend.run(qids, texts, k + 1, "hybrid", HybridOptions(), None))
        timings["checks"] = time.perf_counter() - clock

    report = {
        "dataset": dataset.name,
        "split": split,
        "methods": {m: results[m] for m in METHODS if m in results},
        "settings": {**settings, "k": k, "endpoint": endpoint, "index": asdict(options) if neural and not endpoint else None},
        "models": {**models, "bm25": "bm25s (lucene, k1=1.5, b=0.75) + English stopwords + PyStemmer Snowball English"},
        "index_checksum": index_checksum,
        "timings": {name: round(seconds, 2) for name, seconds in timings.items()},
        "index_build_seconds": build_seconds,  # when the (possibly cached) collection was built
        "checks": extra,
        "machine": machine(),
        "queries": len(qids),
    }
    report["timings"]["total"] = round(sum(timings.values()), 2)
    if out is not None:
        write_report(report, Path(out))
    return report


def machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------- reports
def markdown(report: dict) -> str:
    lines = [f"# BEIR {report['dataset']} ({report['split']}, {report['queries']} queries)", "",
             "| method | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for method, metrics in report["methods"].items():
        lines.append(f"| {method} | " + " | ".join(f"{metrics[m]:.4f}" for m in METRICS) + " |")
    for name, metrics in report.get("checks", {}).items():
        lines.append(f"| _{name}_ | " + " | ".join(f"{metrics[m]:.4f}" for m in METRICS) + " |")
    s = report["settings"]
    lines += ["", f"Models: sparse `{report['models']['sparse']}`, dense `{report['models']['dense']}`; "
                  f"bm25: {report['models']['bm25']}."]
    if "alpha" in s:
        lines.append(f"Hybrid: {s['normalization']}, α (sparse weight) = {s['alpha']}; "
                     f"PRF: m = {s['prf_docs']} feedback docs, β = {s['prf_weight']}, interpolation {s['prf_interpolate']}; "
                     f"tuned on `{s['tuned_on']}` qrels, frozen for `{report['split']}`.")
    lines.append(f"Index checksum `{report['index_checksum']}`. Timings (s): "
                 + ", ".join(f"{k} {v}" for k, v in report["timings"].items()) + ".")
    if report.get("index_build_seconds"):
        lines.append("Index build (cold, per stage, s): "
                     + ", ".join(f"{k} {v}" for k, v in report["index_build_seconds"].items()) + ".")
    lines.append(f"Machine: {report['machine']}.")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(markdown(report), encoding="utf-8")
    plot_ndcg(report, out / "ndcg.png")


def plot_ndcg(report: dict, path: Path) -> None:
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
