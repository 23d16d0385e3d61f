"""PRF variants on a tiny real collection (real models, real index) against a hand-computed reference, the
stored PRF defaults through a real gRPC server, and a tuner that never reads the reported split's qrels."""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lsr.sparse import SparseBatch

from lsr.search.fusion import fuse, rank
from lsr.search.searcher import HybridOptions, PrfOptions, Searcher
from test_beir import tiny_beir

HYBRID = HybridOptions("min_max", sparse_weight=0.3, candidates=12, dense_weight=0.4, bm25_weight=0.3)
QUERY = "Does vitamin D help bones?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder with tiny.zip, its collection with sparse, dense and BM25 legs)."""
    from lsr.cli.main import main as cli_main

    root = tmp_path_factory.mktemp("prf")
    data = root / "data"
    data.mkdir()
    tiny_beir(data)
    assert cli_main(["index", str(data / "tiny.zip"), str(root / "col"), "--quiet"]) == 0
    return data, root / "col"


@pytest.fixture(scope="module")
def searcher(tiny) -> Searcher:
    return Searcher.open(tiny[1])


def _top(run: dict[str, float], m: int) -> tuple[list[str], np.ndarray]:
    top = rank(run, m)
    return [d for d, _ in top], np.array([s for _, s in top])


def reference(searcher: Searcher, prf: PrfOptions) -> dict[str, float]:
    """The PRF pipeline by hand: brute-force scores over every stored vector, explicit IDF, dense numpy algebra."""
    view = searcher.collection.view()
    ids = sorted(view.sparse.doc_ids())
    docs = view.sparse.get_vectors(ids).to_scipy().toarray().astype(np.float64)  # [n, vocab]
    emb = view.dense.get_vectors(ids).astype(np.float64)
    batch, _ = searcher.encode_queries([QUERY])
    q = np.zeros(docs.shape[1])
    t, v = batch.row(0)
    q[t] = v
    qd = searcher.encode_dense([QUERY])[0][0].astype(np.float64)
    depth = HYBRID.candidates

    def topn(scores: np.ndarray) -> dict[str, float]:
        return {ids[i]: float(scores[i]) for i in np.argsort(-scores, kind="stable")[:depth]}

    runs = {"sparse": {d: s for d, s in topn(docs @ q).items() if s > 0}, "dense": topn(emb @ qd),
            "bm25": view.bm25_search([QUERY], depth)[0]}
    weights = [HYBRID.sparse_weight, HYBRID.dense_weight, HYBRID.bm25_weight]
    first = fuse(list(runs.values()), weights, "min_max")
    fused_feedback = prf.interpolate in ("before", "both")
    new = dict(runs)
    if prf.weight > 0:
        fb, s = _top(first if fused_feedback else runs["sparse"], prf.feedback_docs)
        w = (s - min(s.min(), 0)) / (s - min(s.min(), 0)).sum()
        centroid = w @ docs[[ids.index(d) for d in fb]]
        df = (docs > 0).sum(axis=0)
        n = len(ids)
        idf = np.where(df > 0, np.log(1 + (n - df + 0.5) / (df + 0.5)), 0.0)
        q1 = np.where(q > 0, q + prf.weight * centroid, 0.0)
        candidates = [j for j in np.flatnonzero(centroid > 0) if q[j] == 0 and idf[j] >= prf.min_idf - 1e-6]
        for j in sorted(candidates, key=lambda j: (-centroid[j], j))[: prf.max_terms]:
            q1[j] = prf.weight * centroid[j]
        new["sparse"] = {d: s for d, s in topn(docs @ q1).items() if s > 0}
    if prf.dense_beta() > 0:
        fb, s = _top(first if fused_feedback else runs["dense"], prf.feedback_docs)
        w = (s - min(s.min(), 0)) / (s - min(s.min(), 0)).sum()
        moved = qd + prf.dense_beta() * (w @ emb[[ids.index(d) for d in fb]])
        new["dense"] = topn(emb @ (moved / np.linalg.norm(moved)))
    final = fuse(list(new.values()), weights, "min_max")
    if prf.interpolate in ("after", "both"):
        final = fuse([final, first], [prf.after_weight, 1 - prf.after_weight], "min_max")
    return final


VARIANTS = [
    PrfOptions(feedback_docs=3, weight=0.5, dense_weight=0.0, interpolate="none"),  # Rocchio alone
    PrfOptions(feedback_docs=3, weight=1.0, dense_weight=0.0, interpolate="none", min_idf=1.5, max_terms=5),  # high IDF
    PrfOptions(feedback_docs=2, weight=0.0, dense_weight=1.0, interpolate="none"),  # Vector-PRF alone
    PrfOptions(feedback_docs=3, weight=0.5, interpolate="before"),  # feedback from the fused list
    PrfOptions(feedback_docs=3, weight=0.5, interpolate="after", after_weight=0.7),
    PrfOptions(feedback_docs=4, weight=0.25, dense_weight=0.5, interpolate="both", min_idf=1.0),
]


@pytest.mark.parametrize("prf", VARIANTS, ids=lambda p: f"{p.interpolate}-b{p.weight}-d{p.dense_weight}-idf{p.min_idf}")
def test_prf_variants_match_a_hand_computed_reference(searcher, prf):
    want = rank(reference(searcher, prf), 8)
    got = searcher.search(QUERY, mode="hybrid", hybrid=HYBRID, prf=prf, k=8).hits
    assert [h.doc_id for h in got] == [d for d, _ in want]
    assert [h.score for h in got] == pytest.approx([s for _, s in want], abs=1e-5)


def test_high_idf_rocchio_adds_only_rare_terms(searcher):
    """min_idf removes expansion terms, so the expanded query (and hence the sparse run) differs."""
    plain = searcher.search(QUERY, mode="sparse", prf=PrfOptions(3, 1.0, interpolate="none"), k=10)
    rare = searcher.search(QUERY, mode="sparse", prf=PrfOptions(3, 1.0, interpolate="none", min_idf=2.0), k=10)
    assert [(h.doc_id, h.score) for h in plain.hits] != [(h.doc_id, h.score) for h in rare.hits]
    with pytest.raises(ValueError, match="min_idf"):
        PrfOptions(min_idf=-1).check()


STORED = {"feedback_docs": 4, "weight": 1.0, "max_terms": 20, "interpolate": "none", "after_weight": 0.5,
          "dense_weight": 0.25, "min_idf": 1.0}


def test_stored_prf_defaults_are_used_in_process_and_through_grpc(tiny, tmp_path):
    """A PRF search without settings takes search-defaults.json's PRF: in-process (prf=True), through a real
    server (PrfOptions.enabled with unset fields), and a set field overrides only itself."""

    from lsr.ingest.layout import write_search_defaults
    from lsr.service import search_pb2 as pb
    from lsr.service.convert import result_from_proto
    from service_helpers import ServerProcess

    col = tmp_path / "col"
    shutil.copytree(tiny[1], col)
    write_search_defaults(col, {"hybrid": {"normalization": "min_max", "sparse_weight": 0.3, "dense_weight": 0.4,
                                           "bm25_weight": 0.3, "candidates": 12}, "prf": STORED})
    searcher = Searcher.open(col)
    stored = PrfOptions(**STORED)
    assert searcher.default_prf == stored
    want = [(h.doc_id, h.score) for h in searcher.search(QUERY, mode="hybrid", prf=stored).hits]
    code_default = [(h.doc_id, h.score) for h in searcher.search(QUERY, mode="hybrid", prf=PrfOptions()).hits]
    assert want != code_default  # otherwise the test could not tell the stored settings were used
    assert [(h.doc_id, h.score) for h in searcher.search(QUERY, mode="hybrid", prf=True).hits] == want
    override = [(h.doc_id, h.score) for h in searcher.search(QUERY, mode="hybrid", prf=replace(stored, feedback_docs=2)).hits]
    server = ServerProcess(col).wait_listening()
    try:
        with server.client() as client:
            served = client.search(QUERY, mode="hybrid", prf=True).hits
            raw = client._stub.Search(pb.SearchRequest(text=QUERY, mode=pb.HYBRID, prf=pb.PrfOptions(enabled=True,
                                                                                                      feedback_docs=2)))
    finally:
        server.kill()
    assert [h.doc_id for h in served] == [d for d, _ in want]
    assert [h.score for h in served] == pytest.approx([s for _, s in want], rel=1e-4)
    assert [h.doc_id for h in result_from_proto(raw).hits] == [d for d, _ in override]


class _Forbidden(Mapping):
    """Qrels that fail the test the moment anything reads them."""

    def __getitem__(self, key):
        raise AssertionError("the tuner read the reported split's qrels")

    def __iter__(self):
        raise AssertionError("the tuner read the reported split's qrels")

    def __len__(self):
        raise AssertionError("the tuner read the reported split's qrels")


def test_tuners_never_read_the_reported_split(tiny, searcher):
    from lsr.eval.backends import InProcess
    from lsr.eval.datasets import load_beir
    from lsr.eval.prf_tuning import VARIANTS as ALL, tune_fusion_and_prf
    from lsr.eval.tuning import tune, tuning_split

    dataset = load_beir(tiny[0] / "tiny.zip")
    dataset.qrels["test"] = _Forbidden()
    split = tuning_split(dataset, "test")
    assert split == "train"
    backend = InProcess(searcher)
    quiet = lambda _: None  # noqa: E731
    tune(backend, dataset, split, 10, quiet)
    two = {name: ALL[name] for name in ("rocchio-idf", "before+after (both)")}
    _, prf = tune_fusion_and_prf(backend, dataset, split, 10, quiet, variants=two)  # fusion, the PRF grid, the joint pairs
    assert prf["tuned_on"] == "train" and set(prf["variants"]) == set(two) and prf["joint"]
    assert {name: len(v["grid_ndcg10"]) for name, v in prf["variants"].items()} == {"rocchio-idf": 36, "before+after (both)": 12}


def test_joint_tuning_tries_prf_on_fusions_other_than_the_best_without_prf(tiny, searcher):
    """The (fusion, PRF) pair is chosen over the top fusions and the cross-dataset default fusion, not only PRF on the
    best fusion without PRF: the choice is the best pair of the whole candidate set, on the tuning split."""
    from lsr.eval.backends import InProcess
    from lsr.eval.datasets import load_beir
    from lsr.eval.prf_tuning import VARIANTS as ALL, tune_fusion_and_prf
    from lsr.eval.tuning import DEFAULT_FUSION, TOP_FUSIONS

    dataset = load_beir(tiny[0] / "tiny.zip")
    two = {name: ALL[name] for name in ("rocchio", "fused-feedback (before)")}
    fusion, prf = tune_fusion_and_prf(InProcess(searcher), dataset, "train", 10, lambda _: None, variants=two)
    keys = ("normalization", "sparse_weight", "dense_weight", "bm25_weight")
    tops = [{key: top[key] for key in keys} for top in fusion["top"]]
    assert len(tops) == TOP_FUSIONS and tops[0] == {key: fusion[key] for key in keys}
    tried = [pair["fusion"] for pair in prf["joint"]]
    assert all(top in tried for top in tops[1:]) and DEFAULT_FUSION in tried  # PRF on fusions other than the best
    shortlisted = {pair["variant"] for pair in prf["joint"]}
    assert set(two) <= shortlisted and "cross-dataset default" in shortlisted
    scores = [v["ndcg@10"] for v in prf["variants"].values()] + [pair["ndcg@10"] for pair in prf["joint"]]
    if prf["chosen"] is None:
        assert max(scores) <= prf["no_prf_ndcg@10"]
    else:
        assert prf["chosen"]["ndcg@10"] == max(scores) > prf["no_prf_ndcg@10"] and prf["chosen"]["fusion"] in tops + [DEFAULT_FUSION]


@pytest.mark.parametrize("legs", [("sparse", "bm25"), ("sparse", "dense"), ("sparse", "dense", "bm25")])
def test_fusion_tuning_scores_the_default_fusion_the_joint_stage_may_choose(tiny, searcher, legs):
    """The joint fusion + PRF stage also tries the cross-dataset default fusion, whose weights with a leg absent
    (l2 0.3/0.0/0.2) are off the grid; where it won, `lsr tune` failed at its very end (KeyError looking up its
    score without PRF). Its score is the fused run's, as every grid setting's is."""
    from lsr.eval.backends import InProcess
    from lsr.eval.datasets import load_beir
    from lsr.eval.metrics import evaluate
    from lsr.eval.tuning import default_fusion, fusion_key, fusion_options, judged_queries, tune_fusion

    dataset = load_beir(tiny[0] / "tiny.zip")
    backend = InProcess(searcher)
    fusion = tune_fusion(backend, dataset, "train", 10, lambda _: None, legs=legs, candidates=12)
    default = default_fusion(legs)
    qrels, qids, texts = judged_queries(dataset, "train")
    run = backend.run(qids, texts, 11, "hybrid", fusion_options({**default, "candidates": 12}))
    assert fusion["tuning_ndcg10"][fusion_key(default)] == round(evaluate(qrels, run)["ndcg@10"], 4)


def test_untuned_collections_use_the_cross_dataset_defaults_over_the_legs_they_have(tiny, searcher, tmp_path):
    """Hybrid mode without options fuses the legs a collection has: no FailedPrecondition for an absent one."""
    from lsr.cli.main import main as cli_main
    from lsr.search.searcher import UNTUNED_HYBRID

    assert searcher.default_hybrid == UNTUNED_HYBRID and searcher.default_prf == PrfOptions()
    assert searcher.warm_up() == ["sparse", "dense", "bm25", "hybrid"]
    for leg, flags, modes in (("bm25", ["--bm25", "none"], ["sparse", "dense", "hybrid"]),
                              ("dense", ["--dense", "none"], ["sparse", "bm25", "hybrid"])):
        col = tmp_path / f"no-{leg}"
        assert cli_main(["index", str(tiny[0] / "tiny.zip"), str(col), *flags, "--quiet"]) == 0
        plain = Searcher.open(col)
        assert plain.default_hybrid == replace(UNTUNED_HYBRID, **{f"{leg}_weight": 0.0})
        hits = plain.search(QUERY, mode="hybrid", prf=True).hits
        assert hits and all(getattr(h, f"{leg}_score") is None for h in hits)
        other = "dense" if leg == "bm25" else "bm25"
        assert any(getattr(h, f"{other}_score") is not None for h in hits)  # the other two legs are fused
        assert plain.warm_up() == modes


def test_hybrid_weights_that_leave_one_list_are_refused_not_run_as_that_list(tiny, tmp_path, capsys):
    """On a collection built with `--dense none`, `--mode hybrid --normalization rrf` gave the dense weight's share to
    no list and ran SPLADE alone, its raw scores labelled hybrid; `--sparse-weight 0` failed with "fusion needs one
    non-negative weight per list, not all zero; got []"."""
    from lsr.cli.main import main as cli_main

    col = tmp_path / "no-dense"
    assert cli_main(["index", str(tiny[0] / "tiny.zip"), str(col), "--dense", "none", "--quiet"]) == 0
    searcher = Searcher.open(col)
    with pytest.raises(ValueError, match="needs two lists with a positive weight, and these weights leave sparse, as "
                                         "this collection has no dense leg"):
        searcher.search(QUERY, mode="hybrid", hybrid=HybridOptions("rrf"))
    capsys.readouterr()
    assert cli_main(["search", str(col), QUERY, "--mode", "hybrid", "--sparse-weight", "0"]) == 2
    assert "these weights leave no list" in capsys.readouterr().err
    fused = searcher.search(QUERY, mode="hybrid", hybrid=HybridOptions("rrf", bm25_weight=0.5)).hits
    assert fused and any(hit.bm25_score is not None for hit in fused) and fused[0].score < 0.1  # RRF, not raw SPLADE
    # outside hybrid mode the weights weigh nothing: PRF's second run takes only the normalization
    assert searcher.search(QUERY, mode="sparse", hybrid=HybridOptions("rrf"), prf=True).hits
    assert searcher.search(QUERY, mode="hybrid").hits  # the untuned default: SPLADE and BM25


def test_cli_prf_flags(tiny, searcher, capsys):
    """--prf alone takes the collection's PRF; a --prf-* flag overrides one setting; a --prf-* flag without --prf
    is a one-line error."""
    import json

    from lsr.cli.main import main as cli_main

    col = str(tiny[1])
    assert cli_main(["search", col, QUERY, "--mode", "hybrid", "--prf", "--prf-min-idf", "1.5", "--prf-dense-weight", "0",
                     "--json"]) == 0
    got = [h["doc_id"] for h in json.loads(capsys.readouterr().out)["hits"]]
    want = searcher.search(QUERY, mode="hybrid", prf=replace(searcher.default_prf, min_idf=1.5, dense_weight=0.0)).hits
    assert got == [h.doc_id for h in want]
    assert cli_main(["search", col, QUERY, "--prf-docs", "2"]) == 2
    err = capsys.readouterr().err
    assert err == "lsr search: error: --prf-docs needs --prf\n"


def test_the_tuning_backend_searches_each_first_pass_once_and_ranks_as_the_searcher(tiny, searcher, tmp_path):
    """Tuning reuses each query's first-pass leg runs across settings (``FirstPassMemo``): the same hits and scores as
    searching afresh, no leg searched again for a repeated first pass, and a changed collection searched anew."""

    from lsr.eval.backends import InProcess
    from lsr.eval.datasets import load_beir
    from lsr.eval.tuning import judged_queries
    from lsr.search.legs import FirstPassMemo
    from lsr.search.searcher import row_dict

    _, qids, texts = judged_queries(load_beir(tiny[0] / "tiny.zip"), "train")
    sparse, _ = searcher.encode_queries(texts)
    dense = searcher.encode_dense(texts)[0]
    settings = [("hybrid", HYBRID, None), ("hybrid", HYBRID, VARIANTS[3]), ("hybrid", replace(HYBRID, bm25_weight=0.0),
                VARIANTS[5]), ("sparse", None, VARIANTS[0]), ("dense", None, VARIANTS[2]), ("bm25", None, None)]
    backend = InProcess(searcher)
    for _ in range(2):  # the second round reads every first pass from the memo
        for mode, hybrid, prf in settings:
            want = {q: {h.doc_id: h.score for h in searcher.search_encoded(
                row_dict(sparse, i), dense[i], text=texts[i], k=10, mode=mode, hybrid=hybrid, prf=prf).hits}
                for i, q in enumerate(qids)}
            assert backend.run(qids, texts, 10, mode, hybrid, prf) == want, (mode, prf)

    inputs, memo = {"sparse": row_dict(sparse, 0), "dense": dense[0], "bm25": texts[0]}, {}
    searches = [searcher.search_encoded(inputs["sparse"], inputs["dense"], text=texts[0], k=10, mode="hybrid",
                                        hybrid=HYBRID, prf=prf, source=FirstPassMemo(searcher.legs(), inputs, memo))
                for prf in (None, None, VARIANTS[5])]
    assert {"sparse", "dense", "bm25"} <= set(searches[0].timings)
    assert not {"sparse", "dense", "bm25"} & set(searches[1].timings) and searches[1].hits == searches[0].hits
    fresh = searcher.search_encoded(inputs["sparse"], inputs["dense"], text=texts[0], k=10, mode="hybrid", hybrid=HYBRID,
                                    prf=VARIANTS[5])
    assert "prf" in searches[2].timings and searches[2].hits == fresh.hits != searches[0].hits  # moved queries searched

    shutil.copytree(tiny[1], tmp_path / "col")
    changing = Searcher.open(tmp_path / "col")
    backend = InProcess(changing)
    before = backend.run(qids[:1], texts[:1], 10, "hybrid", HYBRID)
    changing.upsert(["echo"], [texts[0]])  # a document that is the query itself
    after = backend.run(qids[:1], texts[:1], 10, "hybrid", HYBRID)
    assert "echo" not in before[qids[0]] and rank(after[qids[0]], 1)[0][0] == "echo"


def test_explain_with_prf_explains_the_moved_query_that_scored_the_hits(searcher):
    """The explanation showed the original query's terms while sparse_score came from PRF's moved query (12.5 of
    101.3 explained, and in the other order): now it names the expansion terms that scored."""
    asked = set(searcher.query_encoder.encode_queries([QUERY]).to_dicts()[0])
    hits = searcher.search(QUERY, k=3, mode="sparse", prf=PrfOptions(3, 1.0, interpolate="none"), explain=True).hits
    for hit in hits:
        assert sum(weight for _, weight in hit.explanation) <= hit.sparse_score * 1.01
    assert set(dict(hits[0].explanation)) - asked  # the top hit fed the expansion: its own terms score


def test_inference_free_query_weights_follow_upserts_and_deletes(tiny, tmp_path):
    """The IDF weights come from the collection's document frequencies as they are at each search: a Searcher that
    searched before an upsert ranks afterwards as one opened after it (it kept its first table, and ranked on)."""
    shutil.copytree(tiny[1], tmp_path / "col")
    live = Searcher.open(tmp_path / "col", query_encoder="inference-free")
    first = live.query_encoder.encode_queries([QUERY]).to_dicts()[0]
    live.search(QUERY, k=5, mode="sparse")
    live.upsert([f"v{i}" for i in range(40)], ["vitamin vitamin supplements"] * 40)
    fresh = Searcher.open(tmp_path / "col", query_encoder="inference-free")
    after = live.query_encoder.encode_queries([QUERY]).to_dicts()[0]
    assert after == fresh.query_encoder.encode_queries([QUERY]).to_dicts()[0]
    assert after["vitamin"] < first["vitamin"]  # now a common word
    assert _hits(live.search(QUERY, k=10, mode="sparse")) == _hits(fresh.search(QUERY, k=10, mode="sparse"))
    live.delete([f"v{i}" for i in range(40)])
    assert live.query_encoder.encode_queries([QUERY]).to_dicts()[0] == first


@pytest.mark.parametrize("mode", ["sparse", "dense", "bm25", "hybrid"])
def test_k_may_be_a_numpy_integer_in_every_mode(searcher, mode):
    """A k from numpy (a length, an argmax) reached faiss as numpy, whose bindings refused it with a SWIG TypeError."""
    want = [(h.doc_id, h.score) for h in searcher.search("aspirin heart attack", k=3, mode=mode).hits]
    assert want  # BM25 finds only the documents holding a query word
    assert [(h.doc_id, h.score) for h in searcher.search("aspirin heart attack", k=np.int64(3), mode=mode).hits] == want
    batch = searcher.search_batch(["aspirin heart attack"], k=np.int32(3), mode=mode)[0]
    assert [(h.doc_id, h.score) for h in batch.hits] == want


def test_a_query_in_the_wrong_argument_says_where_it_goes(searcher):
    """search_batch("vitamin d") searched its characters and failed on "query 7 is empty"; a dict given as the text
    did not say that sparse= takes it."""
    with pytest.raises(TypeError, match="search_batch takes a list of query texts, got one str"):
        searcher.search_batch("aspirin heart attack", k=3)
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType, expected str"):  # was "query 1 is empty or not a string"
        searcher.search_batch(["aspirin", None], k=3)
    with pytest.raises(ValueError, match="query 1 is empty"):
        searcher.search_batch(["aspirin", " \u200b"], k=3)
    with pytest.raises(TypeError, match=r"a \{term: weight\} dict goes in sparse="):
        searcher.search({"aspirin": 1.0}, k=3)
    assert searcher.search(sparse={"heart": 1.0}, k=3).hits  # where it goes, it is searched
    numpy_weight = searcher.search(sparse={"heart": np.float32(1.0)}, k=3).hits  # was refused as not a number
    assert [h.doc_id for h in numpy_weight] == [h.doc_id for h in searcher.search(sparse={"heart": 1.0}, k=3).hits]


def test_one_str_is_never_taken_for_a_list_of_ids(searcher, tmp_path):
    """delete("12") deleted documents "1" and "2" and kept "12"; upsert, the index and SparseBatch files split a str
    into characters the same way. A batch's row out of range wrapped around, and batches over different vocabularies
    concatenated."""
    from lsr import InvertedIndex

    with pytest.raises(TypeError, match=r"ids must be a list of ids, not one str: pass \['aspirin'\]"):
        searcher.delete("aspirin")
    with pytest.raises(TypeError, match="not one str"):
        searcher.upsert("d1", "t1")
    assert "aspirin" in searcher.collection.view().docs.ids()
    batch = searcher.encode_queries(["aspirin", "heart", "sleep"])[0]
    with pytest.raises(TypeError, match="doc_ids must be a list of ids"):
        InvertedIndex.build(tmp_path / "idx", batch, "abc")
    with pytest.raises(TypeError, match="ids must be a list of ids"):
        batch.to_arrow("abc")
    with pytest.raises(TypeError, match="encode_queries takes a list"):
        searcher.encode_queries("abc")
    assert batch[-3].row(0)[0].tolist() == batch[0].row(0)[0].tolist()
    with pytest.raises(IndexError, match="row 5 of a batch of 3"):
        batch[5]
    # Negative rows and masks pick what numpy would (row(-1) was empty, a mask was read as rows 0 and 1, b[[-1]]
    # failed on its own indptr), a bool alone is no row, and batches compare by content (== raised).
    assert batch.row(-1)[0].tolist() == batch.row(2)[0].tolist() and batch[[-1]] == batch[2] == batch[np.array([0, 0, 1], bool)]
    with pytest.raises(TypeError, match="a bool is not a row number"):
        batch[True]
    with pytest.raises(IndexError, match="row -4 of a batch of 3"):
        batch.row(-4)
    assert batch != batch[[0, 1]] and batch == SparseBatch.concat([batch[:1], batch[1:]])
    # A term named twice adds up everywhere (to_dicts kept the first weight, to_dense the last, to_scipy the sum),
    # and a term id outside the vocabulary is refused at once (-1 became the last term).
    twice = SparseBatch.from_dicts([{"heart": 1.0, searcher._token_ids["heart"]: 2.0}], searcher.vocab)
    assert twice.to_dicts() == [{"heart": 3.0}] and twice.to_dense().max() == twice.to_scipy().max() == 3.0
    for key, error in ((-1, ValueError), (len(searcher.vocab), ValueError), (2.7, TypeError)):
        with pytest.raises(error, match="outside the vocabulary|a token or a whole term id"):
            SparseBatch.from_dicts([{key: 1.0}], searcher.vocab)
    with pytest.raises(TypeError, match=r"ids\[0\] is None; an id is a str"):
        searcher.upsert([None], ["a document named None"])
    other = SparseBatch(np.array([0, 1]), np.array([3]), np.array([1.0], np.float32), 100)
    with pytest.raises(ValueError, match="different vocabularies"):
        SparseBatch.concat([batch, other])


def test_options_of_the_wrong_kind_fail_in_one_clear_line(searcher, splade):
    """A dict for hybrid, 2.5 feedback documents, top=-1, threshold -1 or NaN, batch_size "8": each failed deep inside
    (no attribute 'check', slice indices) or was taken silently (every term kept, the last term dropped)."""
    from lsr.encode.splade import SpladeEncoder

    with pytest.raises(TypeError, match="hybrid must be a HybridOptions, got dict"):
        searcher.search("aspirin", k=3, mode="hybrid", hybrid={"normalization": "rrf"})
    with pytest.raises(TypeError, match="prf must be a PrfOptions"):
        searcher.search("aspirin", k=3, prf={"feedback_docs": 2})
    with pytest.raises(TypeError, match="PRF feedback_docs must be a whole number, got 2.5"):
        searcher.search("aspirin", k=3, prf=PrfOptions(feedback_docs=2.5))
    assert searcher.search("aspirin", k=3, mode="hybrid", hybrid=HybridOptions(normalization="rrf")).hits
    # "no" was taken as on, and a deadline "soon" ignored
    for name in ("explain", "include_text"):
        with pytest.raises(TypeError, match=f"{name} must be True or False, got 'no'"):
            searcher.search("aspirin", k=3, **{name: "no"})
        with pytest.raises(TypeError, match=f"{name} must be True or False, got 'no'"):
            searcher.search_batch(["aspirin"], k=3, **{name: "no"})
    with pytest.raises(TypeError, match="deadline must be a time.monotonic"):
        searcher.search("aspirin", k=3, deadline="soon")
    # a write's: "soon" failed after its documents were encoded, NaN waited 30 s, and nothing was written either way
    for write in (lambda deadline: searcher.upsert(["zz"], ["aspirin text"], deadline=deadline),
                  lambda deadline: searcher.delete(["zz"], deadline=deadline)):
        for deadline in ("soon", float("nan"), [1]):
            with pytest.raises(TypeError, match="deadline must be a time.monotonic"):
                write(deadline)
    with pytest.raises(KeyError):
        searcher.doc("zz")
    assert searcher.search("aspirin", k=3, mode="hybrid", explain=True).hits[0].explanation
    with pytest.raises(ValueError, match="key is a token or a whole term id, got 2.7"):
        searcher.search(sparse={2.7: 1.0}, k=3)
    term = searcher._token_ids["heart"]  # a term given as a token and as its id adds up, as the index's queries do
    both = searcher.search(sparse={"heart": 1.0, term: 2.0, "risk": 0.5}, k=5, mode="sparse")
    assert [(h.doc_id, h.score) for h in both.hits] == [(h.doc_id, h.score) for h in searcher.search(
        sparse={"heart": 3.0, "risk": 0.5}, k=5, mode="sparse").hits]
    assert both.hits[0].score != pytest.approx(searcher.search(sparse={"heart": 2.0, "risk": 0.5}, k=5,
                                                                mode="sparse").hits[0].score)
    with pytest.raises(ValueError, match=r"a dense query is one vector, got an array of shape \(2, 192\)"):
        searcher.search(dense=np.ones((2, 192)), k=3, mode="dense")
    batch = splade.encode_documents(["aspirin lowers heart attack risk"])
    with pytest.raises(ValueError, match="top must be a positive whole number"):
        batch.to_dicts(top=-1)
    with pytest.raises(TypeError, match=r"batch_size must be a whole number, got '8'"):
        splade.encode_documents(["x"], batch_size="8")
    for threshold in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="threshold must be a finite number"):
            SpladeEncoder.from_pretrained("splade-tiny", device="cpu", threshold=threshold)
    # numpy's numbers are numbers; a count that is no whole number, or a string, is one TypeError naming the option
    # (candidates=2.5 failed nine frames deep, rrf_k="60" in numpy, PRF weight="1" on "'<=' not supported")
    numpy_weights = HybridOptions(sparse_weight=np.float32(0.4), dense_weight=np.float64(0.6), candidates=np.int64(50))
    assert _hits(searcher.search("aspirin", k=3, mode="hybrid", hybrid=numpy_weights)) == _hits(
        searcher.search("aspirin", k=3, mode="hybrid", hybrid=HybridOptions(sparse_weight=0.4, candidates=50)))
    for options, words in ((HybridOptions(candidates=2.5), "hybrid candidates must be a whole number, got 2.5"),
                           (HybridOptions(candidates="50"), "hybrid candidates must be a whole number, got '50'"),
                           (HybridOptions(rrf_k=60.7), "hybrid rrf_k must be a whole number, got 60.7"),
                           (HybridOptions(sparse_weight="0.5"), "hybrid sparse_weight must be a number, got '0.5'")):
        with pytest.raises(TypeError, match=words):
            searcher.search("aspirin", k=3, mode="hybrid", hybrid=options)
    with pytest.raises(TypeError, match="PRF weight must be a number, got '1'"):
        searcher.search("aspirin", k=3, prf=PrfOptions(weight="1"))
    small = SpladeEncoder.from_pretrained("splade-tiny", device="cpu", max_length=np.int64(64), threshold=np.float32(0.5))
    assert small.max_length == 64 and type(small.max_length) is int and small.threshold == 0.5


def _hits(result) -> list[tuple[str, float]]:
    return [(h.doc_id, round(h.score, 4)) for h in result.hits]


def test_search_topics_takes_pairs_from_any_iterable_and_writes_scores_that_keep_the_order(searcher, tmp_path):
    """A generator of topics failed (len), an int qid failed (AttributeError), a repeated qid wrote its hits twice;
    and RRF scores printed at 6 decimals tied, so trec_eval re-sorted them by doc id, away from the Searcher's order."""
    from lsr.eval.runs import read_trec_run
    from lsr.search.batch import search_topics

    texts = [QUERY, "statins and muscle pain", "aspirin lowers heart attack risk"]
    rrf = HybridOptions("rrf", sparse_weight=0.35, dense_weight=0.35, bm25_weight=0.3)
    out = tmp_path / "run.trec"
    search_topics(searcher, ((i, text) for i, text in enumerate(texts)), out, k=20, mode="hybrid", hybrid=rrf,
                  progress=False)
    run = read_trec_run(out)
    assert sorted(run) == ["0", "1", "2"]
    for qid, text in enumerate(texts):
        scores = run[str(qid)]
        by_score = sorted(scores, key=lambda doc: -scores[doc])  # as trec_eval reads it: scores alone
        assert by_score == [h.doc_id for h in searcher.search(text, k=20, mode="hybrid", hybrid=rrf).hits]
        assert len(set(scores.values())) == len(scores)
    with pytest.raises(ValueError, match="query id 'q1' appears twice in the topics"):
        search_topics(searcher, [("q1", "aspirin"), ("q1", "statins")], tmp_path / "twice.trec", progress=False)
    with pytest.raises(TypeError, match=r"topics\[0\] has the query id None"):
        search_topics(searcher, [(None, "aspirin")], tmp_path / "none.trec", progress=False)
    assert not (tmp_path / "twice.trec").exists()


def test_searcher_doc_takes_one_id_and_refuses_what_is_none(searcher):
    """doc(None) looked up a document named "None" and doc(["aspirin"]) one named "['aspirin']": a KeyError at best,
    another document's text when a corpus held such an id. A whole number is still its digits, as in every id list."""
    assert "aspirin" in searcher.doc("aspirin").lower()
    for bad in (None, ["aspirin"], 1.5, True):
        with pytest.raises(TypeError, match=f"doc_id is {re.escape(repr(bad))}; an id is a str"):
            searcher.doc(bad)
    with pytest.raises(KeyError, match="no document '7'"):
        searcher.doc(7)


def test_search_batch_refuses_unordered_queries_and_sparse_takes_only_a_dict(searcher):
    """search_batch(dataset.queries), BEIR's {query id: text}, searched the ids as query texts, and a set's results
    came back in an order no caller could match; sparse=SparseBatch failed as "has no attribute 'items'"."""
    assert [r.hits[0].doc_id for r in searcher.search_batch(["aspirin", "statins"], k=1)] == \
        [searcher.search(q, k=1).hits[0].doc_id for q in ("aspirin", "statins")]
    for queries in ({"q1": "aspirin"}, {"aspirin"}, frozenset({"aspirin"})):
        with pytest.raises(TypeError, match=f"search_batch takes an ordered list of query texts, got a "
                                            f"{type(queries).__name__}"):
            searcher.search_batch(queries)
    batch = searcher.encode_queries(["aspirin"])[0]
    with pytest.raises(TypeError, match=r"a sparse query is a \{token or term id: weight\} dict, got SparseBatch: "
                                        r"batch.to_dicts\(\)\[0\]"):
        searcher.search(sparse=batch)
    assert searcher.search(sparse=batch.to_dicts()[0]).hits == searcher.search("aspirin").hits


def test_one_str_given_to_encode_queries_names_encode_queries(searcher):
    """encode_queries("x") was told that "search_batch takes a list of query texts": a method it never called."""
    with pytest.raises(TypeError, match=r"encode_queries takes a list of query texts, got one str; pass \['aspirin'\]"):
        searcher.encode_queries("aspirin")
    with pytest.raises(TypeError, match="encode_dense takes an ordered list of query texts, got a dict"):
        searcher.encode_dense({"q1": "aspirin"})
    assert len(searcher.encode_queries(["aspirin"])[0]) == 1


def test_a_tuning_run_reads_one_view_while_another_process_deletes_under_it(tiny, tmp_path):
    """`lsr tune` beside deletes: a run checked the collection's version once, then searched each query on the view
    of that moment. A document deleted mid-run was still in a later query's remembered first pass, and PRF asked the
    new view for its vector: KeyError "unknown doc ids", a traceback."""
    from lsr.eval.backends import InProcess
    from lsr.eval.datasets import load_beir

    dataset = load_beir(tiny[0] / "tiny.zip")
    qids = list(dataset.queries)[:2]
    texts = [dataset.queries[q] for q in qids]
    searcher = Searcher.open(shutil.copytree(tiny[1], tmp_path / "col"))
    backend, prf = InProcess(searcher), PrfOptions(feedback_docs=3, weight=0.5)
    first = backend.run(qids, texts, 10, "sparse", prf=prf)
    gone = next(iter(first[qids[1]]))  # a feedback document of the second query
    search = searcher.search_encoded

    def delete_after_the_first(*args, **kwargs):
        result = search(*args, **kwargs)
        if searcher.collection.view().docs.contains(gone):
            searcher.delete([gone])
        return result

    searcher.search_encoded = delete_after_the_first
    again = backend.run(qids, texts, 10, "sparse", prf=prf)
    assert again == first  # the whole run on the view it began with
    searcher.search_encoded = search
    assert gone not in backend.run(qids, texts, 10, "sparse", prf=prf)[qids[1]]  # the next run: the new view
    searcher.close()
