"""BEIR evaluation: find the dataset, index it once (cached), run every method, score, report.

Methods: ``bm25`` (bm25s + PyStemmer's English Snowball stemmer), ``sparse`` (SPLADE),
``dense`` (MiniLM), ``hybrid`` (normalised interpolation) and ``hybrid-prf`` (Rocchio on the
sparse query + Vector-PRF on the dense one, interpolated before and after PRF) and ``fusion``
(SPLADE, MiniLM and the collection's BM25 leg, each weighted, by min_max / z_score / RRF) and
``fusion-prf`` (the best fusion + PRF pair of :mod:`lsr.eval.prf_tuning`, chosen jointly).
Hybrid's α, PRF's m and β, fusion's method and weights and the PRF variant are tuned on the train/dev
qrels only and then frozen for the reported split; every PRF variant is also scored on the reported
split with its frozen settings, so the losers are reported too. ``defaults`` is what a collection never
tuned serves with PRF asked for: UNTUNED_HYBRID and PrfOptions(), chosen across datasets (nothing is tuned
on this dataset by this run).
All retrieval goes through :class:`lsr.search.searcher.Searcher` (or the gRPC service with
``endpoint``), so these numbers are the product's numbers, not a side implementation's.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lsr.eval.backends import InProcess, Remote, bm25_run, exact_sparse_run
from lsr.eval.datasets import BeirDataset, load_beir, locate_dataset
from lsr.files import cache_dir
from lsr.eval.metrics import RANDOMIZATION_TEST, averaged, evaluate, per_query, randomization_p
from lsr.eval.prf_tuning import chosen_prf, score_variants, tune_fusion_and_prf
from lsr.eval.report import earlier_report, machine, write_report
from lsr.eval.tuning import (DEFAULT_ALPHA, DEFAULT_FUSION, DEFAULT_PRF_DOCS, DEFAULT_PRF_WEIGHT, fusion_options, tune,
                             tune_fusion, tuning_split)

METHODS = ("bm25", "sparse", "dense", "hybrid", "hybrid-prf", "fusion", "fusion-prf", "defaults")
# fusion-prf's joint grid (8 PRF variants × their settings on train/dev) takes many minutes on a laptop CPU,
# so a first `lsr beir` leaves it out; ask for it with --methods (or `lsr tune`, which stores the choice).
DEFAULT_METHODS = tuple(m for m in METHODS if m != "fusion-prf")


# ---------------------------------------------------------------------------- index cache
def corpus_checksum(dataset: BeirDataset) -> str:
    """The same running checksum ``lsr index`` records for this corpus (title + " " + text)."""
    from lsr.ingest.corpus import CorpusHash

    ids = list(dataset.corpus)
    return CorpusHash().update(ids, dataset.doc_texts(ids))


def cache_folder(dataset: BeirDataset, options: Any) -> Path:
    """Where the index of ``dataset`` built with ``options`` is cached: a hash of everything that decides it.

    A model given as a folder is keyed on its files' contents too, so retraining into the same folder
    builds a new index instead of reusing the old model's.
    """
    from lsr.encode.models import model_content_key
    from lsr.ingest.layout import FORMAT

    # fp32 builds keep their old keys; 16-bit vectors differ slightly, and so does a bf16 dense model beside fp32 SPLADE
    encoding = options.encoding()
    dtypes = {} if encoding["dtype"] == "fp32" else {"dtype": encoding["dtype"]}
    if encoding.get("dense_dtype", encoding["dtype"]) != encoding["dtype"]:
        dtypes["dense_dtype"] = encoding["dense_dtype"]
    contents = {role: key for role, key in (("model_files", model_content_key(options.model)),
                                            ("dense_files", options.dense_model and model_content_key(options.dense_model)))
                if key}  # bundled and hub models keep their old keys
    key = json.dumps({"format": FORMAT, "model": options.model, "dense": options.dense_model, "max_length": options.max_length,
                      "fields": list(options.fields), "hnsw": options.hnsw_m, "quantization": options.quantization,
                      **({"bm25": True} if options.bm25 else {}), **contents,
                      "corpus": corpus_checksum(dataset), **dtypes}, sort_keys=True)
    return cache_dir() / "indexes" / f"{dataset.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def cached_collection(source: Path, dataset: BeirDataset, options: Any, *, progress: bool = True,
                      say: Callable[[str], None] = print) -> tuple[Path, bool]:
    """A collection of ``source`` under the cache, keyed by models, settings and corpus checksum.

    Returns (folder, reused). An interrupted build is resumed on the next call.
    """
    from lsr.ingest.layout import META_FILE
    from lsr.ingest.indexing import build_collection

    folder = cache_folder(dataset, options)
    if (folder / META_FILE).is_file():
        return folder, True
    # The source path is part of the build settings; a cache hit must not depend on where the data lives.
    say(f"indexing {dataset.name} into {folder} (kept as a cache for later runs)")
    build_collection(source, folder, options, resume=folder.exists(), progress=progress)
    return folder, False


def significance_against(baseline: str, per_method: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any] | None:
    """Each method's nDCG@10 against ``baseline``'s: the difference and a paired randomization test's p-value."""
    if baseline not in per_method or len(per_method) < 2:
        return None
    scores = {method: [table[q]["ndcg@10"] for q in per_method[baseline]] for method, table in per_method.items()}
    base = scores.pop(baseline)
    return {"baseline": baseline, "metric": "ndcg@10", "test": RANDOMIZATION_TEST,
            "difference": {m: (sum(v) - sum(base)) / len(base) for m, v in scores.items()},
            "p_value": {m: randomization_p(base, v) for m, v in scores.items()}}


# ---------------------------------------------------------------------------- the whole run
def check_methods_and_depth(methods: Sequence[str], k: int) -> None:
    """Refuse unknown methods and a depth nDCG@10 cannot use, before any dataset is read or indexed."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}" if unknown
                         else f"--methods names no method; choose from {', '.join(METHODS)}")
    if not 10 <= k <= 999:
        raise ValueError(f"--k must be in 10..999, got {k}: nDCG@10 needs 10 hits, and each query fetches k + 1 (BEIR "
                         "drops a hit whose id is the query's) of the searcher's 1000 at most; the metrics read the "
                         "top 100")


def reported_qrels(dataset: BeirDataset, split: str, source: Path) -> dict[str, dict[str, int]]:
    """The judgements of the reported split, or one line naming the splits the dataset has."""
    if split not in dataset.qrels:
        raise ValueError(f"{source} has no qrels/{split}.tsv; it has {', '.join(sorted(dataset.qrels)) or 'none'}")
    if not dataset.qrels[split]:
        raise ValueError(f"{source}'s qrels/{split}.tsv judges no query of its queries.jsonl")
    return dataset.qrels[split]


def check_served_corpus(remote: Remote, dataset: BeirDataset, texts: Sequence[str], mode: str, endpoint: str,
                        say: Callable[[str], None]) -> None:
    """Refuse a server that holds another corpus before anything is tuned or scored through it: every nDCG would be
    0 and the table would read as a model's failure. Its hits for the first queries are looked up in the dataset's
    corpus; under half of them found there (a subset, many upserts) is a warning."""
    run = remote.run([str(i) for i in range(min(32, len(texts)))], texts[:32], 10, mode)
    returned = {doc for hits in run.values() for doc in hits}
    held = sum(doc in dataset.corpus for doc in returned)
    if held == 0:
        raise ValueError(f"the server at {endpoint} does not serve {dataset.name}: "
                         + (f"none of the {len(returned):,} documents it returned for {dataset.name}'s first "
                            f"{len(run)} queries is in its corpus" if returned else
                            f"it returned no document for {dataset.name}'s first {len(run)} queries")
                         + f"; serve a collection indexed from {dataset.name}, or use --serve")
    if held < len(returned) / 2:
        say(f"warning: only {held:,} of the {len(returned):,} documents the server at {endpoint} returned for "
            f"{dataset.name}'s first {len(run)} queries are in its corpus; the scores cover part of the dataset")


def run_beir(
    dataset_name: str,
    *,
    data_dir: str | None = None,
    split: str = "test",
    methods: Sequence[str] = DEFAULT_METHODS,
    k: int = 100,
    endpoint: str | None = None,
    connection: Mapping[str, Any] | None = None,
    tune_locally: str | Path | None = None,
    out: str | Path | None = None,
    options: Any = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
    note: str | None = None,
) -> dict:
    """Evaluate ``methods`` on ``split``; writes results.md/.json and ndcg.png into ``out`` when given.

    ``connection``: the ``Client`` token, tls and timeout of a secured ``endpoint``.
    ``tune_locally`` (a collection folder, with ``endpoint``): tune α, m, β in-process on that
    collection, which reuses one encoding of the tuning queries across the grid, while every reported
    number still comes through the endpoint. ``lsr beir --serve`` uses it for the collection it serves.
    """
    from lsr.ingest.indexing import IndexOptions
    from lsr.search.searcher import UNTUNED_HYBRID, HybridOptions, PrfOptions

    check_methods_and_depth(methods, k)
    neural = [m for m in methods if m != "bm25"]
    remote = Remote(endpoint, **(connection or {})) if endpoint and neural else None  # one down fails before any work
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    source = locate_dataset(dataset_name, data_dir)
    dataset = load_beir(source)
    qrels = reported_qrels(dataset, split, source)
    qids = [q for q in qrels if q in dataset.queries]
    texts = [dataset.queries[q] for q in qids]
    timings["load"] = time.perf_counter() - clock
    say(f"{dataset.name}: {len(dataset.corpus):,} docs, {len(qids):,} {split} queries (from {source})")

    options = options or IndexOptions()
    results: dict[str, dict[str, float]] = {}
    per_method: dict[str, dict[str, dict[str, float]]] = {}  # each method's per-query metrics, for significance
    extra: dict[str, Any] = {}
    extra_variants: dict[str, Any] = {}
    if "bm25" in methods:
        clock = time.perf_counter()
        per_method["bm25"] = per_query(qrels, bm25_run(dataset, qids, k + 1))
        results["bm25"] = averaged(per_method["bm25"])
        timings["bm25"] = time.perf_counter() - clock
        say(f"bm25        nDCG@10 {results['bm25']['ndcg@10']:.4f}")

    index_checksum, collection_path = None, None
    settings: dict[str, Any] = {}
    models = {"sparse": options.model, "dense": options.dense_model}
    build_seconds: dict[str, float] = {}
    encoded_with: dict[str, str] = {}  # the device and dtypes the collection was encoded with
    dense_query_dtype = None  # the dtype the dense model encodes queries in
    if neural:
        clock = time.perf_counter()
        if endpoint:  # the server's collection is the one evaluated; nothing is indexed or loaded here
            backend, searcher, collection_path = remote, None, None
            check_served_corpus(remote, dataset, texts, "dense" if neural == ["dense"] else "sparse", endpoint, say)
            served = backend.client.stats()
            models = {"sparse": served["model"], "dense": served["dense_model"] or None,
                      "sparse_queries": served["query_encoder"], "served_index_version": served["index_version"]}
            index_checksum = served["details"].get("collection_checksum")
            build_seconds = {key.removeprefix("build_seconds_"): float(value) for key, value in served["details"].items()
                             if key.startswith("build_seconds_")}
            encoded_with = {key.removeprefix("encoded_with_"): value for key, value in served["details"].items()
                            if key.startswith("encoded_with_")}
            dense_query_dtype = served["details"].get("dense_query_dtype")
        else:
            from lsr.ingest.collection import Collection
            from lsr.search.searcher import Searcher

            collection_path, reused = cached_collection(source, dataset, options, progress=progress, say=say)
            timings["index"] = time.perf_counter() - clock
            say(f"index {'reused from cache' if reused else 'built'}: {collection_path}")
            collection = Collection.open(collection_path)
            index_checksum = collection.checksum
            build_seconds = collection.meta.get("stage_seconds", {})
            encoded_with = collection.meta.get("encoded_with", {})
            clock = time.perf_counter()
            searcher = Searcher.open(collection_path, device=options.device, dtype=options.dtype)
            models["sparse_queries"] = type(searcher.query_encoder).__name__
            dense_query_dtype = searcher.stats().get("dense_query_dtype")
            backend = InProcess(searcher)
        timings["load_models"] = time.perf_counter() - clock
        tuner = backend
        if endpoint and tune_locally and {"hybrid", "hybrid-prf", "fusion", "fusion-prf"} & set(neural):
            from lsr.search.searcher import Searcher

            tuner = InProcess(Searcher.open(tune_locally, device=options.device, dtype=options.dtype))
        if {"hybrid", "hybrid-prf"} & set(neural):
            clock = time.perf_counter()
            settings = tune(tuner, dataset, tuning_split(dataset, split), k, say, progress=progress)
            settings["tuned"] = "in-process on the served collection" if tuner is not backend else "through the backend"
            timings["tune"] = time.perf_counter() - clock
        if "fusion-prf" in neural:
            clock = time.perf_counter()
            settings["fusion"], settings["prf"] = tune_fusion_and_prf(tuner, dataset, tuning_split(dataset, split), k,
                                                                      say, progress=progress)
            timings["tune_fusion_and_prf"] = time.perf_counter() - clock
        elif "fusion" in neural:
            clock = time.perf_counter()
            settings["fusion"] = tune_fusion(tuner, dataset, tuning_split(dataset, split), k, say, progress=progress)
            timings["tune_fusion"] = time.perf_counter() - clock
        fused = fusion_options(settings.get("fusion", DEFAULT_FUSION))
        prf_fusion = (settings.get("prf") or {}).get("chosen") or {}
        fused_prf = fusion_options({**settings.get("fusion", DEFAULT_FUSION), **prf_fusion.get("fusion", {})})
        hybrid = HybridOptions(sparse_weight=settings.get("alpha", DEFAULT_ALPHA))
        plans = {
            "sparse": ("sparse", None, None),
            "dense": ("dense", None, None),
            "hybrid": ("hybrid", hybrid, None),
            "hybrid-prf": ("hybrid", hybrid, PrfOptions(feedback_docs=settings.get("prf_docs", DEFAULT_PRF_DOCS),
                                                        weight=settings.get("prf_weight", DEFAULT_PRF_WEIGHT),
                                                        interpolate="both")),
            "fusion": ("hybrid", fused, None),
            "fusion-prf": ("hybrid", fused_prf, chosen_prf(settings.get("prf"))),
            "defaults": ("hybrid", UNTUNED_HYBRID, PrfOptions()),
        }
        for method in neural:
            clock = time.perf_counter()
            mode, h, prf = plans[method]
            per_method[method] = per_query(qrels, backend.run(qids, texts, k + 1, mode, h, prf))
            results[method] = averaged(per_method[method])
            timings[method] = time.perf_counter() - clock
            say(f"{method:<11} nDCG@10 {results[method]['ndcg@10']:.4f}")
        if "fusion-prf" in neural:
            clock = time.perf_counter()
            extra_variants = score_variants(backend, settings["prf"], qrels, qids, texts, k, fused)
            timings["prf_variants"] = time.perf_counter() - clock
        clock = time.perf_counter()
        if "sparse" in neural and searcher is not None:
            extra["sparse_exact_bruteforce"] = evaluate(qrels, exact_sparse_run(collection_path, searcher, qids, texts, k + 1))
        if "hybrid" in neural and settings.get("alpha") != 0.5:
            extra["hybrid_alpha_0.5"] = evaluate(qrels, backend.run(qids, texts, k + 1, "hybrid", HybridOptions(), None))
        timings["checks"] = time.perf_counter() - clock

    report = {
        "dataset": dataset.name,
        "prf_variants": extra_variants,
        "split": split,
        "methods": {m: results[m] for m in METHODS if m in results},
        "settings": {**settings, "k": k, "endpoint": endpoint, "index": asdict(options) if neural and not endpoint else None},
        "models": {**models, "bm25": "bm25s (lucene, k1=1.5, b=0.75) + English stopwords + PyStemmer Snowball English"},
        "index_checksum": index_checksum,
        "collection": next((str(c) for c in (tune_locally, collection_path) if c), None),  # where to search it next
        "timings": {name: round(seconds, 2) for name, seconds in timings.items()},
        "index_build_seconds": build_seconds,  # when the (possibly cached) collection was built
        "index_encoded_with": encoded_with,
        "dense_query_dtype": dense_query_dtype,
        "checks": extra,
        "significance": significance_against("bm25", per_method),
        "machine": machine(),
        "queries": len(qids),
        "note": note,
    }
    report["timings"]["total"] = round(sum(timings.values()), 2)
    if out is not None:
        replaced = earlier_report(Path(out))
        write_report(report, Path(out))
        say(f"wrote {Path(out) / 'results.md'}, results.json and ndcg.png"
            + (f", in place of an earlier report ({replaced})" if replaced else ""))
    return report
