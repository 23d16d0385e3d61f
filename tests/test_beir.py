"""`lsr beir`: loader on the shared archives, metrics against hand-computed values, a small end-to-end run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lsr.eval.datasets import locate_dataset
from lsr.eval.metrics import drop_self_hits, evaluate
from lsr.eval.tuning import tuning_split
from lsr.eval.datasets import load_beir
from lsr.cli import main as cli_main


def test_loader_reads_the_shared_archives_with_crlf_qrels(beir_dir, scifact):
    assert len(scifact.corpus) == 5183 and len(scifact.queries) == 1109
    test = scifact.qrels["test"]
    assert len(test) == 300 and sum(len(d) for d in test.values()) == 339
    assert sum(len(d) for d in scifact.qrels["train"].values()) == 919
    assert all("\r" not in q and all("\r" not in d for d in docs) for q, docs in test.items())
    assert all(d in scifact.corpus for docs in test.values() for d in docs)
    nf = load_beir(beir_dir / "nfcorpus.tar.gz")
    assert len(nf.corpus) == 3633
    assert (len(nf.qrels["test"]), sum(len(d) for d in nf.qrels["test"].values())) == (323, 12334)
    assert (len(nf.qrels["dev"]), sum(len(d) for d in nf.qrels["dev"].values())) == (324, 11385)
    assert sorted({g for docs in nf.qrels["test"].values() for g in docs.values()}) == [1, 2]
    assert tuning_split(nf, "test") == "dev" and tuning_split(scifact, "test") == "train"


def test_metrics_match_hand_computed_values():
    qrels = {"q1": {"d1": 1, "d2": 1}, "q2": {"d9": 2, "d8": 1}}
    run = {"q1": {"d3": 3.0, "d1": 2.0, "d2": 1.0}, "q2": {f"x{i}": 20.0 - i for i in range(12)} | {"d9": 1.0}}
    m = evaluate(qrels, run)
    ndcg_q1 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx(ndcg_q1 / 2)  # q2's only hit is at rank 13: outside the top 10
    assert m["mrr@10"] == pytest.approx(0.5 / 2)  # q2's reciprocal rank 1/13 does not count within 10
    assert m["recall@100"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["map@100"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + (1 / 13) / 2) / 2)


def test_self_hits_are_removed_like_beirs_ignore_identical_ids():
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 9.0, "d1": 5.0}}
    assert drop_self_hits(run) == {"q1": {"d1": 5.0}}
    assert evaluate(qrels, run)["mrr@10"] == 1.0
    assert evaluate(qrels, run, ignore_identical_ids=False)["mrr@10"] == 0.5


TOPICS = {
    "aspirin": "Aspirin lowers the risk of heart attack and stroke in adults.",
    "vitamin": "Vitamin D supplements improve bone density in older women.",
    "sleep": "Short naps improve memory consolidation after learning.",
    "coffee": "Coffee consumption is linked to lower risk of liver disease.",
    "exercise": "Aerobic exercise reduces blood pressure in hypertensive patients.",
    "smoking": "Smoking cessation lowers lung cancer incidence over ten years.",
    "sugar": "Sugary drinks increase the risk of type 2 diabetes.",
    "statins": "Statins reduce cholesterol and cardiovascular events.",
}
QUESTIONS = {
    "aspirin": ["does aspirin prevent heart attacks", "aspirin stroke prevention"],
    "vitamin": ["vitamin d and bone health", "supplements for bone density"],
    "sleep": ["do naps help memory", "sleep and learning"],
    "coffee": ["is coffee good for the liver", "coffee liver disease"],
    "exercise": ["exercise and blood pressure", "aerobic training hypertension"],
    "smoking": ["quitting smoking lung cancer", "smoking cessation benefits"],
    "sugar": ["sugary drinks diabetes", "soda and type 2 diabetes"],
    "statins": ["statins cholesterol", "do statins prevent heart disease"],
}


def tiny_beir(root: Path, name: str = "tiny", with_train: bool = True) -> Path:
    """A BEIR zip with a distractor per topic, train (unless not ``with_train``) and test qrels (CRLF), and a query
    whose id is a doc id."""
    docs = []
    for topic, text in TOPICS.items():
        docs.append({"_id": topic, "title": topic.title(), "text": text})
        docs.append({"_id": f"{topic}-x", "title": "Note", "text": f"An unrelated note number {len(docs)} about tables."})
    queries, train, test = [], [], []
    for topic, (q_train, q_test) in QUESTIONS.items():
        queries += [{"_id": f"tr-{topic}", "text": q_train}, {"_id": f"te-{topic}", "text": q_test}]
        train.append(f"tr-{topic}\t{topic}\t1")
        test.append(f"te-{topic}\t{topic}\t1")
    queries.append({"_id": "aspirin-x", "text": "unrelated note about tables"})  # its own id is a doc: a self-hit
    test.append("aspirin-x\tvitamin-x\t1")
    path = root / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}/corpus.jsonl", "".join(json.dumps(d) + "\n" for d in docs))
        zf.writestr(f"{name}/queries.jsonl", "".join(json.dumps(q) + "\n" for q in queries))
        header = "query-id\tcorpus-id\tscore\r\n"
        if with_train:
            zf.writestr(f"{name}/qrels/train.tsv", header + "\r\n".join(train) + "\r\n")
        zf.writestr(f"{name}/qrels/test.tsv", header + "\r\n".join(test) + "\r\n")
    return path


def test_lookup_order_data_dir_then_env_then_cache(tmp_path, monkeypatch):
    first, second, cache = tmp_path / "a", tmp_path / "b", tmp_path / "cache"
    for folder in (first, second, cache / "beir"):
        folder.mkdir(parents=True)
        tiny_beir(folder)
    monkeypatch.setenv("LSR_CACHE_DIR", str(cache))
    monkeypatch.setenv("LSR_BEIR_DIR", str(second))
    assert locate_dataset("tiny", first) == first / "tiny.zip"
    (tmp_path / "tiny").mkdir()  # a collection named like the dataset, in the current directory
    monkeypatch.chdir(tmp_path)
    assert locate_dataset("tiny", first) == first / "tiny.zip"  # --data-dir first: it was the folder here
    assert locate_dataset("tiny") == second / "tiny.zip"  # without it too (`lsr tune tiny --dataset tiny` said
    # "tiny holds no corpus.jsonl"), while a folder here that holds the dataset is taken, as a path
    zipfile.ZipFile(first / "tiny.zip").extractall(tmp_path)  # tiny/corpus.jsonl ...
    assert locate_dataset("tiny") == Path("tiny")
    monkeypatch.chdir(first)
    assert locate_dataset("tiny") == second / "tiny.zip"
    monkeypatch.delenv("LSR_BEIR_DIR")
    assert locate_dataset("tiny") == cache / "beir" / "tiny.zip"
    (cache / "beir" / "out1").mkdir()  # a folder holding no corpus is no dataset: it was listed as a known one
    with pytest.raises(FileNotFoundError, match="unknown BEIR dataset 'no-such-dataset'; known: arguana, nfcorpus, scifact, tiny"):
        locate_dataset("no-such-dataset")


def test_shared_folder_beside_the_current_directory_is_found(tmp_path, monkeypatch):
    shared = tmp_path / "shared" / "data" / "beir"
    shared.mkdir(parents=True)
    tiny_beir(shared)
    checkout = tmp_path / "my-clone"
    checkout.mkdir()
    monkeypatch.delenv("LSR_BEIR_DIR", raising=False)
    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(checkout)
    assert locate_dataset("tiny") == shared / "tiny.zip"


def test_a_failed_download_leaves_no_empty_cache_folder(tmp_path, monkeypatch):
    import lsr.eval.datasets as datasets

    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path / "cache" / "lsr"))
    monkeypatch.delenv("LSR_BEIR_DIR", raising=False)
    monkeypatch.setattr(datasets, "BEIR_URL", "http://127.0.0.1:1/{name}.zip")  # nothing listens on port 1
    with pytest.raises(FileNotFoundError, match="'arguana' is not available locally .* downloading http://127.0.0.1:1"):
        locate_dataset("arguana")
    assert list(tmp_path.iterdir()) == []


def test_lsr_beir_with_an_unknown_dataset_lists_the_known_ones(capsys):
    assert cli_main(["beir", "--dataset", "nosuch", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lsr beir: error: unknown BEIR dataset 'nosuch'; known: ") and "scifact" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("flags, message", [
    (["--k", "5"], "--k must be in 10..999"),
    (["--methods", "sparse,splade"], "unknown method(s) splade; choose from bm25,"),
    (["--methods", ","], "--methods names no method"),
    (["--split", "tset"], "tiny.zip has no qrels/tset.tsv; it has test, train"),
])
def test_lsr_beir_serve_refuses_bad_flags_before_it_builds_an_index(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    tiny_beir(data)
    assert cli_main(["beir", "--dataset", "tiny", "--data-dir", str(data), "--serve", "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cache" / "indexes").exists()


def test_end_to_end_lsr_beir_on_a_tiny_dataset(tmp_path, monkeypatch, capsys, free_port):
    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    tiny_beir(data)
    out = tmp_path / "out"
    every = "bm25,sparse,dense,hybrid,hybrid-prf,fusion,fusion-prf,defaults"
    assert cli_main(["beir", "--dataset", "tiny", "--data-dir", str(data), "--methods", every, "--out", str(out),
                     "--quiet"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["dataset"] == "tiny" and report["split"] == "test"
    assert list(report["methods"]) == every.split(",")
    for metrics in report["methods"].values():
        assert set(metrics) == {"ndcg@10", "recall@100", "mrr@10", "map@100"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    # the self-hit query's only relevant doc is in a corpus of 16: every method finds it within 100
    assert all(m["recall@100"] == 1.0 for m in report["methods"].values())
    assert report["methods"]["hybrid"]["ndcg@10"] > 0.5
    settings = report["settings"]
    assert settings["tuned_on"] == "train" and 0 < settings["alpha"] < 1 and settings["prf_docs"] in (2, 3, 5)
    fusion = settings["fusion"]
    assert fusion["tuned_on"] == "train" and fusion["normalization"] in ("min_max", "l2", "z_score", "rrf")
    assert fusion["sparse_weight"] + fusion["dense_weight"] + fusion["bm25_weight"] == pytest.approx(1.0)
    assert len(fusion["tuning_ndcg10"]) == 4 * 63  # every setting of the grid, each normalization (l2 too), is reported
    variants = report["prf_variants"]  # every PRF variant, losers too, with its frozen settings and both splits
    assert len(variants) == 8 and all(v["tuned_on"] == "train" and 0 <= v["ndcg@10"] <= 1 for v in variants.values())
    assert settings["prf"]["tuned_on"] == "train" and "no_prf_ndcg@10" in settings["prf"]
    assert len(report["index_checksum"]) == 64 and report["timings"]["total"] > 0
    assert (out / "ndcg.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sig = report["significance"]  # every method's nDCG@10 against BM25's, with a paired test's p-value
    assert sig["baseline"] == "bm25" and list(sig["p_value"]) == every.split(",")[1:]
    assert all(0 < p <= 1 for p in sig["p_value"].values())
    assert sig["difference"]["fusion"] == pytest.approx(report["methods"]["fusion"]["ndcg@10"]
                                                        - report["methods"]["bm25"]["ndcg@10"])
    markdown = (out / "results.md").read_text()
    assert "| hybrid-prf |" in markdown and "Fusion: " in markdown and "Fusion-PRF: " in markdown
    assert "| method | ndcg@10 | recall@100 | mrr@10 | map@100 | nDCG@10 vs bm25 |" in markdown
    assert f"{sig['difference']['fusion']:+.4f}" in markdown.split("| fusion |")[1].splitlines()[0]
    assert all(f"| {name} | m=" in markdown for name in variants)
    printed = capsys.readouterr().out
    assert "| hybrid-prf |" in printed
    (cached,) = (tmp_path / "cache" / "indexes").iterdir()
    assert report["collection"] == str(cached) and printed.endswith(f"search it: lsr search {cached}\n")

    # a second run reuses the cached index and reproduces the numbers
    again = tmp_path / "again"
    assert cli_main(["beir", "--dataset", str(data / "tiny.zip"), "--methods", "sparse", "--out", str(again), "--quiet"]) == 0
    assert "index reused from cache" in capsys.readouterr().out
    second = json.loads((again / "results.json").read_text())
    assert second["methods"]["sparse"] == report["methods"]["sparse"]
    assert second["index_checksum"] == report["index_checksum"]

    # through the gRPC service the numbers are the in-process numbers
    (collection,) = (tmp_path / "cache" / "indexes").iterdir()
    port = free_port
    server = subprocess.Popen([sys.executable, "-m", "lsr", "serve", str(collection), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        from lsr.service import Client

        with Client(f"127.0.0.1:{port}") as client:
            client.wait_ready(timeout=180)
        remote = tmp_path / "remote"
        assert cli_main(["beir", "--dataset", "tiny", "--data-dir", str(data), "--methods", "sparse,dense,hybrid,hybrid-prf,fusion,fusion-prf",
                         "--endpoint", f"127.0.0.1:{port}", "--out", str(remote), "--quiet"]) == 0
    finally:
        server.terminate()
        server.wait(timeout=60)
    through = json.loads((remote / "results.json").read_text())
    assert through["collection"] is None  # the server's folder is not this process's to name
    assert through["index_checksum"] == report["index_checksum"]  # the served collection's, through GetStats
    assert through["index_build_seconds"] == report["index_build_seconds"] and "sparse" in through["index_build_seconds"]
    assert through["index_encoded_with"] == report["index_encoded_with"]  # the served collection's, through GetStats
    assert through["dense_query_dtype"] == report["dense_query_dtype"] in ("fp32", "bf16")  # the server's, likewise
    for method in ("sparse", "dense", "hybrid", "hybrid-prf", "fusion", "fusion-prf"):
        assert through["methods"][method] == pytest.approx(report["methods"][method], abs=1e-9), method
    assert {k: through["settings"][k] for k in ("alpha", "prf_docs", "prf_weight")} == \
        {k: settings[k] for k in ("alpha", "prf_docs", "prf_weight")}
    tiny_beir(data, "untrained", with_train=False)  # no train or dev qrels: the report said "tuned on `None`"
    assert cli_main(["beir", "--dataset", "untrained", "--data-dir", str(data), "--methods", "hybrid,fusion,fusion-prf",
                     "--out", str(tmp_path / "untrained"), "--quiet"]) == 0
    written = (tmp_path / "untrained" / "results.md").read_text()
    assert "None" not in written and written.count("not tuned: the dataset has no train or dev qrels besides `test`, "
                                                   "so these are fixed values chosen without its qrels.") == 3
    assert cli_main(["beir", "--dataset", "untrained", "--data-dir", str(data), "--methods", "bm25",
                     "--out", str(tmp_path / "bm25-only"), "--quiet"]) == 0
    bm25_only = (tmp_path / "bm25-only" / "results.md").read_text()
    assert "None" not in bm25_only  # "Index checksum `None`": no index
    assert "Models: bm25: " in bm25_only and "splade" not in bm25_only  # it named the models no method ran
    assert "PRF: m =" not in written and "Hybrid: " in written  # PRF was tuned, but no method that ran used it



def test_lsr_beir_serve_keeps_the_servers_log_out_of_the_results(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    tiny_beir(data)
    out = tmp_path / "out"
    env = {**os.environ, "LSR_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "lsr", "beir", "--dataset", "tiny", "--data-dir", str(data), "--serve",
                          "--methods", "bm25,sparse,hybrid", "--out", str(out), "--quiet"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr
    assert "rpc=" not in run.stdout + run.stderr and "DEBUG" not in run.stdout + run.stderr
    assert f"its log: {out / 'serve.log'}" in run.stderr and "rpc=SearchBatch" in (out / "serve.log").read_text()
    assert "tuning hybrid α and PRF m, β on train (8 queries, 18 settings)" in run.stdout
    assert f"wrote {out / 'results.md'}" in run.stdout
    report = json.loads((out / "results.json").read_text())
    assert run.stdout.endswith(f"search it: lsr search {report['collection']}\n")  # the served, cached collection
    assert Path(report["collection"]).parent == tmp_path / "cache" / "indexes"
    assert len(report["index_checksum"]) == 64 and report["index_build_seconds"]["sparse"] > 0
    assert f"Index checksum `{report['index_checksum']}`" in (out / "results.md").read_text()
    from lsr.ingest.indexing import IndexOptions

    encoded = IndexOptions().encoding()  # what this machine runs: the report names it
    assert report["index_encoded_with"] == encoded
    assert report["dense_query_dtype"] == encoded["dense_dtype"]  # the served queries run as the documents did
    assert (f"Index encoded on {encoded['device']}: SPLADE {encoded['dtype']}, dense {encoded['dense_dtype']}; "
            f"dense queries {encoded['dense_dtype']}." in (out / "results.md").read_text())
    temp = tmp_path / "tmp"  # without --out the log is a temporary file, which every run left behind
    temp.mkdir()
    run = subprocess.run([sys.executable, "-m", "lsr", "beir", "--dataset", "tiny", "--data-dir", str(data), "--serve",
                          "--methods", "sparse", "--quiet"], capture_output=True, text=True, timeout=600,
                         env={**env, "TMPDIR": str(temp)})
    assert run.returncode == 0, run.stderr
    assert f"its log: {temp}/lsr-serve-" in run.stderr and not list(temp.glob("lsr-serve-*"))


def test_lsr_tune_stores_the_fusion_chosen_on_train_as_the_collections_default(tmp_path, capsys, caplog):
    """`lsr tune` chooses on train (never test), stores the choice sealed in the collection, and hybrid searches
    that set no fusion of their own (in-process and through the server) use it; verify covers the file."""
    from lsr.ingest.collection import Collection
    from lsr.ingest.verify import verify_collection
    from lsr.search.searcher import UNTUNED_HYBRID, HybridOptions, PrfOptions, Searcher
    from service_helpers import ServerProcess

    data = tmp_path / "data"
    data.mkdir()
    tiny_beir(data)
    col = tmp_path / "col"
    assert cli_main(["index", str(data / "tiny.zip"), str(col), "--quiet"]) == 0
    assert Searcher.open(col).default_hybrid == UNTUNED_HYBRID  # chosen across datasets, for untuned collections
    assert cli_main(["tune", str(col), "--dataset", "tiny", "--data-dir", str(data)]) == 0
    said = capsys.readouterr()
    assert "tiny/train" in said.out and f"stored in {col / 'search-defaults.json'} (" in said.out  # it named no file
    for bar in ("tune fusion: 100%", "tune PRF: 100%", "joint fusion + PRF: 100%"):  # minutes on a real dataset
        assert bar in said.err
    stored = json.loads((col / "search-defaults.json").read_text())
    assert stored["tuned_on"] == "tiny/train" and stored["not_tuned_on"] == "test"
    chosen = HybridOptions(**stored["hybrid"])
    searcher = Searcher.open(col)
    assert searcher.default_hybrid == chosen
    assert searcher.default_prf == PrfOptions(**stored["prf"]) and isinstance(stored["prf_helps"], bool)
    assert len(stored["prf_variants_ndcg@10"]) == 8  # every variant's tuning score is kept, losers too
    query = "Does vitamin D help bones?"
    want = [(h.doc_id, h.score) for h in searcher.search(query, mode="hybrid", hybrid=chosen).hits]
    assert [(h.doc_id, h.score) for h in searcher.search(query, mode="hybrid").hits] == want
    # a fusion flag sets the tuned fusion aside: said, since the run looked like the tuned one (same tag) and scored less
    assert cli_main(["search", str(col), query, "--candidates", "50"]) == 0
    assert f"note: the fusion flags replace {col}'s tuned fusion ({chosen.normalization} " in capsys.readouterr().err
    assert cli_main(["search", str(col), query]) == 0
    assert "note:" not in capsys.readouterr().err
    server = ServerProcess(col).wait_listening()
    try:
        with server.client() as client:
            got = [(h.doc_id, h.score) for h in client.search(query, mode="hybrid").hits]
    finally:
        server.kill()
    assert [d for d, _ in got] == [d for d, _ in want] and [s for _, s in got] == pytest.approx([s for _, s in want])
    text = (col / "search-defaults.json").read_text()
    (col / "search-defaults.json").write_text(text.replace('"bm25_weight": ', '"bm25_weight": 1'))
    assert any("search-defaults.json" in p for p in verify_collection(col).problems)
    # Damaged, it is a warning and the untuned defaults (every verb failed on it, `lsr tune` that rewrites it too)
    with caplog.at_level("WARNING"):
        assert Collection.open(col).search_defaults is None and Searcher.open(col).default_hybrid == UNTUNED_HYBRID
    assert "search-defaults.json" in caplog.text and "untuned defaults until `lsr tune` rewrites it" in caplog.text
    assert cli_main(["tune", str(col), "--dataset", "tiny", "--data-dir", str(data), "--quiet"]) == 0
    assert not verify_collection(col).problems and Searcher.open(col).default_hybrid == chosen


def test_lsr_tune_fuses_the_legs_a_collection_has(tmp_path, capsys):
    """A collection built with `--bm25 none` or `--dense none` was refused ("needs dense and BM25 legs"), though
    hybrid search fuses any two legs; now the fusion of the two it has is tuned, and one with SPLADE alone is told
    there is nothing to fuse."""
    from lsr.search.searcher import HybridOptions, Searcher

    data = tmp_path / "data"
    data.mkdir()
    tiny_beir(data)
    for absent, flags in (("bm25", ["--bm25", "none"]), ("dense", ["--dense", "none"])):
        col = tmp_path / f"no-{absent}"
        assert cli_main(["index", str(data / "tiny.zip"), str(col), *flags, "--quiet"]) == 0
        assert cli_main(["tune", str(col), "--dataset", "tiny", "--data-dir", str(data)]) == 0
        said = capsys.readouterr()
        assert "tuning 2-leg fusion" in said.err + said.out
        stored = json.loads((col / "search-defaults.json").read_text())
        assert stored["hybrid"][f"{absent}_weight"] == 0.0 and stored["hybrid"]["sparse_weight"] > 0
        assert ("vector-prf" in stored["prf_variants_ndcg@10"]) == (absent != "dense")  # it moves only the dense query
        searcher = Searcher.open(col)
        assert searcher.default_hybrid == HybridOptions(**stored["hybrid"])
        assert searcher.search("Does vitamin D help bones?", mode="hybrid").hits
    # a dataset without test qrels: nothing to keep off, not "has no qrels/test.tsv for --split"
    with zipfile.ZipFile(data / "tiny.zip") as whole, zipfile.ZipFile(data / "notest.zip", "w") as part:
        for name in whole.namelist():
            if not name.endswith("test.tsv"):
                part.writestr(name.replace("tiny/", "notest/"), whole.read(name))
    assert cli_main(["tune", str(col), "--dataset", "notest", "--data-dir", str(data)]) == 0
    assert json.loads((col / "search-defaults.json").read_text())["tuned_on"] == "notest/train"
    capsys.readouterr()
    bare = tmp_path / "sparse-only"
    assert cli_main(["index", str(data / "tiny.zip"), str(bare), "--bm25", "none", "--dense", "none", "--quiet"]) == 0
    assert cli_main(["tune", str(bare), "--dataset", "tiny", "--data-dir", str(data)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "has only the sparse leg: there is no fusion to tune" in line


def test_lsr_tune_and_beir_refuse_a_collection_of_another_corpus_and_tune_warns_on_a_partial_one(tmp_path, capsys):
    """A collection holding none of the tuning split's relevant documents would score 0 under every setting and
    store an arbitrary choice: one line, exit 2, nothing stored. Under half of them: tuned, with a warning. `lsr
    beir --endpoint` at a server of another corpus printed a table of zeros and exited 0: one line, exit 2."""
    from service_helpers import ServerProcess
    from lsr.eval.datasets import load_beir
    from lsr.eval.tuning import check_judged_documents
    from lsr.search.searcher import Searcher

    data = tmp_path / "data"
    data.mkdir()
    tiny_beir(data)
    for name, ids in (("other", [f"other-{topic}" for topic in TOPICS]), ("partial", ["aspirin", "other-x", "other-y"])):
        corpus = tmp_path / f"{name}.jsonl"
        corpus.write_text("".join(json.dumps({"_id": i, "text": text}) + "\n" for i, text in zip(ids, TOPICS.values())))
        assert cli_main(["index", str(corpus), str(tmp_path / name), "--quiet"]) == 0
    capsys.readouterr()
    assert cli_main(["tune", str(tmp_path / "other"), "--dataset", "tiny", "--data-dir", str(data)]) == 2
    assert capsys.readouterr().err == (f"lsr tune: error: {tmp_path / 'other'} holds none of the {len(TOPICS)} documents "
                                       "tiny/train judges relevant: it was not indexed from tiny; tune it on the dataset "
                                       "it was built from\n")
    assert not (tmp_path / "other" / "search-defaults.json").exists()
    # the collection is checked before the dataset loads (minutes on a large corpus), not after
    assert cli_main(["tune", str(tmp_path / "missing"), "--dataset", "nosuchdataset"]) == 2
    assert "collection " + str(tmp_path / "missing") + " does not exist" in capsys.readouterr().err
    assert cli_main(["tune", str(tmp_path / "partial"), "--dataset", "tiny", "--data-dir", str(data), "--split", "tset"]) == 2
    assert "tiny.zip has no qrels/tset.tsv for --split; it has test, train" in capsys.readouterr().err
    said: list[str] = []
    partial = tmp_path / "partial"
    check_judged_documents(Searcher.open(partial), load_beir(data / "tiny.zip"), "train", partial, said.append)
    assert said == [f"warning: {partial} holds only 1 of the {len(TOPICS)} documents tiny/train judges relevant; "
                    "the tuning sees only part of the dataset"]
    server = ServerProcess(tmp_path / "other").wait_listening()
    try:
        capsys.readouterr()
        assert cli_main(["beir", "--dataset", "tiny", "--data-dir", str(data), "--endpoint", server.address,
                         "--methods", "bm25,sparse,hybrid", "--quiet"]) == 2
    finally:
        server.kill()
    said = capsys.readouterr()
    assert said.err == (f"lsr beir: error: the server at {server.address} does not serve tiny: none of the "
                        f"{len(TOPICS)} documents it returned for tiny's first {len(QUESTIONS) + 1} queries is in its "
                        "corpus; serve a collection indexed from tiny, or use --serve\n")
    assert "sparse " not in said.out  # refused before any method was scored through it


def test_lsr_tune_tunes_a_sharded_collection_whole_and_refuses_a_defaults_path_it_cannot_write(tmp_path, capsys):
    """A sharded collection was refused with advice to tune one shard: half the corpus, whose choice the
    coordinator then applied to all. And a search-defaults.json that is a folder failed only after the whole grid."""
    from lsr.search.searcher import HybridOptions
    from lsr.service.coordinator import ShardedSearcher

    data = tmp_path / "data"
    data.mkdir()
    tiny_beir(data)
    col = tmp_path / "sharded"
    assert cli_main(["index", str(data / "tiny.zip"), str(col), "--shards", "2", "--quiet"]) == 0
    assert cli_main(["tune", str(col), "--dataset", "tiny", "--data-dir", str(data), "--quiet"]) == 0
    stored = json.loads((col / "search-defaults.json").read_text())
    assert stored["tuned_on"] == "tiny/train" and not (col / "shard-000" / "search-defaults.json").exists()
    searcher = ShardedSearcher.open(col, in_process=True)
    try:
        assert searcher.default_hybrid == HybridOptions(**stored["hybrid"])
    finally:
        searcher.close()
    (col / "search-defaults.json").unlink()
    (col / "search-defaults.json").mkdir()
    capsys.readouterr()
    assert cli_main(["tune", str(col), "--dataset", "tiny", "--data-dir", str(data), "--quiet"]) == 2
    assert "search-defaults.json is not a file; move it away" in capsys.readouterr().err


def test_a_model_folder_retrained_in_place_gets_a_new_index_not_the_cached_one(tmp_path, monkeypatch, capsys):
    import shutil

    import torch
    from transformers import AutoModelForMaskedLM

    from lsr.encode.models import resolve_model

    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path / "cache"))
    tiny_beir(tmp_path)
    model = tmp_path / "model"
    shutil.copytree(resolve_model("splade-tiny"), model)

    def beir(out: str) -> dict:
        assert cli_main(["beir", "--dataset", "tiny", "--data-dir", str(tmp_path), "--model", str(model), "--methods",
                         "sparse", "--dense", "none", "--out", str(tmp_path / out), "--quiet"]) == 0
        return json.loads((tmp_path / out / "results.json").read_text())

    first = beir("first")
    assert "index built" in capsys.readouterr().out
    (model / "lsr_train.json").write_text("{}")  # a training report is not the model: the cache still holds
    assert beir("same")["index_checksum"] == first["index_checksum"]
    assert "index reused from cache" in capsys.readouterr().out

    mlm = AutoModelForMaskedLM.from_pretrained(model)  # "retrain": same folder, same name, other weights
    with torch.no_grad():
        for p in mlm.bert.encoder.parameters():
            p.mul_(0.5)
    mlm.save_pretrained(model)
    retrained = beir("retrained")
    assert "index built" in capsys.readouterr().out
    assert retrained["index_checksum"] != first["index_checksum"]
    assert len(list((tmp_path / "cache" / "indexes").iterdir())) == 2


def test_the_dense_dtype_of_a_cpu_build_keys_its_cache(tmp_path):
    """A bf16 dense build (a CPU with native bf16) and an fp32 one are different collections, cached apart."""
    from lsr.encode.inputs import cpu_has_native_bf16
    from lsr.eval.beir import cache_folder
    from lsr.ingest.indexing import IndexOptions

    tiny_beir(tmp_path)
    dataset = load_beir(tmp_path / "tiny.zip")
    auto, fp32 = (cache_folder(dataset, IndexOptions(device="cpu", dtype=dtype)) for dtype in ("auto", "fp32"))
    assert (auto != fp32) is cpu_has_native_bf16()


def _beir_folder(root: Path, corpus: str, queries: str, qrels: str) -> Path:
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text(corpus)
    (root / "queries.jsonl").write_text(queries)
    (root / "qrels" / "test.tsv").write_text(qrels)
    return root


GOOD_CORPUS = '{"_id": "d0", "text": "aspirin and the heart"}\n{"_id": "d1", "text": "coffee in the morning"}\n'
GOOD_QUERIES = '{"_id": "q0", "text": "aspirin heart"}\n'


@pytest.mark.parametrize("corpus, message", [
    ('{"text": "no id here"}\n', "corpus.jsonl line 1: no _id"),
    ('["d0", "text"]\n', "corpus.jsonl line 1: expected a JSON object, got list"),
    (GOOD_CORPUS + '{"_id": "d0", "text": "again"}\n', "corpus.jsonl line 3: _id 'd0' is given twice"),
    ('{"_id": "d 9", "text": "x"}\n', "corpus.jsonl line 1: _id 'd 9' holds ' '"),
    ('{"_id": "d9", "text": 7}\n', "corpus.jsonl line 1: text is a int, not text"),
    ("\n", "corpus.jsonl holds no rows"),
])
def test_a_corpus_the_indexer_would_refuse_is_refused_before_any_method_runs(tmp_path, capsys, corpus, message):
    """One line naming the file and line, before BM25 is scored (a duplicate id used to keep its last copy silently,
    score BM25, and only then fail in the indexer; a row without _id was a KeyError traceback)."""
    folder = _beir_folder(tmp_path / "odd", corpus, GOOD_QUERIES, "query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    assert cli_main(["beir", "--dataset", str(folder), "--methods", "bm25", "--dense", "none", "--k", "10"]) == 2
    out, err = capsys.readouterr()
    assert message in err and err.count("\n") == 1 and "nDCG" not in out + err


def test_judgements_of_unknown_queries_are_left_out_with_a_warning_and_trec_qrels_are_read(tmp_path, caplog):
    """Qrels naming queries that queries.jsonl lacks scored them as misses (two such lines took nDCG@10 from 1.0 to
    0.67); TREC's four-field qrels (which ``lsr eval`` reads) gave 0 queries; a split judging none is one line."""
    qrels = "query-id\tcorpus-id\tscore\nq0\td0\t1\nqGhost\td1\t1\n"
    dataset = load_beir(_beir_folder(tmp_path / "ghost", GOOD_CORPUS, GOOD_QUERIES, qrels))
    assert dataset.qrels == {"test": {"q0": {"d0": 1}}}
    assert "judges 1 queries that queries.jsonl does not hold (such as 'qGhost')" in caplog.text
    trec = load_beir(_beir_folder(tmp_path / "trec", GOOD_CORPUS, GOOD_QUERIES, "q0 0 d0 2\r\n"))
    assert trec.qrels == {"test": {"q0": {"d0": 2}}}
    folder = _beir_folder(tmp_path / "none", GOOD_CORPUS, GOOD_QUERIES, "qX\td0\t1\n")
    with pytest.raises(ValueError, match="qrels/test.tsv judges no query of its queries.jsonl"):
        reported_test_qrels(folder)
    with pytest.raises(ValueError, match="qrels/test.tsv line 2: grade 'high' is not a whole number"):
        load_beir(_beir_folder(tmp_path / "grade", GOOD_CORPUS, GOOD_QUERIES, "q0\td0\t1\nq0\td1\thigh\n"))
    named = load_beir(_beir_folder(tmp_path / "named", GOOD_CORPUS, GOOD_QUERIES, "query_id\tcorpus_id\tscore\n"
                                   "q0\td0\t1\n"))  # another header's names: "grade 'score' is not a whole number"
    assert named.qrels == {"test": {"q0": {"d0": 1}}}


def test_tuning_takes_a_split_that_judges_a_document_of_the_corpus_relevant():
    """A dev split whose relevant documents the corpus lacks (or that judges none relevant) scored every setting 0,
    and a tie-break was stored as tuned; train is taken instead."""
    from lsr.eval.datasets import BeirDataset

    corpus, queries = {"d0": {"title": "", "text": "aspirin"}}, {"q0": "aspirin", "q1": "coffee"}
    for dev in ({"q0": {"gone": 1}}, {"q1": {"d0": 0}}):
        dataset = BeirDataset("x", corpus, queries, {"dev": dev, "train": {"q0": {"d0": 1}}, "test": {"q0": {"d0": 1}}})
        assert tuning_split(dataset, "test") == "train"
        assert tuning_split(dataset, "train") is None  # never the reported split, and dev finds nothing


def reported_test_qrels(folder: Path) -> dict:
    from lsr.eval.beir import reported_qrels

    return reported_qrels(load_beir(folder), "test", folder)


def test_a_file_that_only_ends_in_corpus_jsonl_is_not_the_corpus(tmp_path):
    folder = _beir_folder(tmp_path / "suffix", GOOD_CORPUS, GOOD_QUERIES, "q0\td0\t1\n")
    (folder / "corpus.jsonl").rename(folder / "notcorpus.jsonl")
    with pytest.raises(FileNotFoundError, match="holds no corpus.jsonl"):
        load_beir(folder)


def test_a_folder_of_several_datasets_is_refused_not_one_picked_by_listing_order(tmp_path):
    for name in ("b-set", "a-set"):
        _beir_folder(tmp_path / "many" / name, GOOD_CORPUS, GOOD_QUERIES, "q0\td0\t1\n")
    with pytest.raises(ValueError, match=r"many holds 2 datasets \(a-set/, b-set/\); give the one you mean"):
        load_beir(tmp_path / "many")
    assert list(load_beir(tmp_path / "many" / "a-set").corpus) == ["d0", "d1"]
    nested = _beir_folder(tmp_path / "nested", GOOD_CORPUS, GOOD_QUERIES, "q0\td0\t1\n")
    _beir_folder(nested / "old", '{"_id": "x", "text": "old copy"}\n', GOOD_QUERIES, "q0\tx\t1\n")
    assert list(load_beir(nested).corpus) == ["d0", "d1"]  # the dataset at the top, not its nested copy


def test_a_data_dir_that_is_no_folder_is_an_error_not_a_fallback(tmp_path):
    """A misspelt --data-dir fell through to the shared copies without a word: a run on other data than asked."""
    with pytest.raises(FileNotFoundError, match="data folder .*nowhere does not exist"):
        locate_dataset("scifact", tmp_path / "nowhere")


def test_an_lsr_beir_dir_that_is_no_folder_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    """LSR_BEIR_DIR misspelt fell through to the shared copies, as --data-dir once did, with no word."""
    monkeypatch.setenv("LSR_BEIR_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="LSR_BEIR_DIR is .*nowhere, which is no folder"):
        locate_dataset("scifact")


def _eval_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """BEIR qrels of q1..q3, a run answering all three and one answering q1 alone."""
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td3\t1\n")
    full, partial = tmp_path / "full.trec", tmp_path / "partial.trec"
    full.write_text("q1 Q0 d1 1 3 a\nq2 Q0 d2 1 3 a\nq3 Q0 d9 1 3 a\n")
    partial.write_text("q1 Q0 d1 1 3 b\n")
    return qrels, full, partial


def test_lsr_eval_reads_gzipped_runs_and_qrels(tmp_path, capsys):
    """A .gz run was refused as "not UTF-8 text (invalid start byte at byte 1)"."""
    import gzip

    qrels, full, _ = _eval_files(tmp_path)
    for path in (qrels, full):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
    assert cli_main(["eval", str(full), str(qrels), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert cli_main(["eval", f"{full}.gz", f"{qrels}.gz", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == plain
    (tmp_path / "bad.trec.gz").write_bytes(full.read_bytes())  # named .gz, not compressed
    assert cli_main(["eval", str(tmp_path / "bad.trec.gz"), str(qrels)]) == 2
    assert "bad.trec.gz is not a whole gzip file" in capsys.readouterr().err


def test_lsr_eval_compare_says_when_the_runs_answer_other_queries(tmp_path, capsys):
    """A compared run that lacks judged queries scores 0 on them, in its mean and in the paired test: it showed a
    loss with only RUN's coverage printed."""
    qrels, full, partial = _eval_files(tmp_path)
    assert cli_main(["eval", str(full), str(qrels), "--compare", str(partial), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["compare"][str(partial)]["queries_in_run"] == 1
    assert f"warning: {partial} answers 1 judged queries, {full} 3 (2 only in {full}, 0 only in {partial})" in captured.err
    (tmp_path / "same.trec").write_text(full.read_text())
    assert cli_main(["eval", str(full), str(qrels), "--compare", str(tmp_path / "same.trec")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_lsr_eval_reads_a_pipe_and_names_an_unnamed_gzip_file(tmp_path, capsys):
    """`lsr eval <(zcat run.gz) qrels` said "/dev/fd/63 does not exist"; a gzip'd run not named .gz was "not UTF-8
    text (invalid start byte at byte 1)"."""
    import gzip

    qrels, full, _ = _eval_files(tmp_path)
    assert cli_main(["eval", str(full), str(qrels), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    fifo = tmp_path / "run.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen([sys.executable, "-c", f"open({str(fifo)!r}, 'wb').write({full.read_bytes()!r})"])
    try:
        assert cli_main(["eval", str(fifo), str(qrels), "--json"]) == 0
    finally:
        try:
            writer.wait(timeout=10)
        except subprocess.TimeoutExpired:  # the run never opened the pipe: the writer still waits for a reader
            writer.kill()
            writer.wait()
    assert json.loads(capsys.readouterr().out) == plain
    (tmp_path / "zipped.trec").write_bytes(gzip.compress(full.read_bytes()))
    assert cli_main(["eval", str(tmp_path / "zipped.trec"), str(qrels)]) == 2
    assert "zipped.trec is gzip-compressed but its name does not end in .gz" in capsys.readouterr().err


def test_lsr_eval_refuses_a_tab_separated_run_id_holding_a_space(tmp_path, capsys):
    """A tab-separated line's doc id 'd 1' matched no judgement (qrels refuse such ids): a relevant hit scored as a
    miss without a word (nDCG@10 0.667 for a perfect run here)."""
    qrels, _, _ = _eval_files(tmp_path)
    run = tmp_path / "tabs.trec"
    run.write_text("q1\tQ0\td1\t1\t3\ta\nq2\tQ0\td 2\t1\t3\ta\nq3\tQ0\td3\t1\t3\ta\n")
    assert cli_main(["eval", str(run), str(qrels)]) == 2
    err = capsys.readouterr().err
    assert "tabs.trec line 2: id 'd 2' is empty or holds whitespace" in err and len(err.strip().splitlines()) == 1
    run.write_text(run.read_text().replace("d 2", "d2"))
    assert cli_main(["eval", str(run), str(qrels), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ndcg@10"] == 1.0


def test_a_judged_query_without_text_is_refused_not_scored_as_a_miss(tmp_path, capsys):
    """A test query with no text (or no "text" key) was searched as nothing and scored 0: BM25's nDCG@10 fell
    without a word. One line naming it, before any method runs; an unjudged one stays harmless."""
    queries = GOOD_QUERIES + '{"_id": "q1"}\n{"_id": "q2", "text": "  "}\n'
    folder = _beir_folder(tmp_path / "blank", GOOD_CORPUS, queries, "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t1\n")
    assert cli_main(["beir", "--dataset", str(folder), "--methods", "bm25", "--dense", "none", "--k", "10"]) == 2
    out, err = capsys.readouterr()
    assert "query 'q1', judged in qrels/test.tsv, has no text" in err and err.count("\n") == 1 and "nDCG" not in out
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")  # q1, q2 unjudged
    assert list(load_beir(folder).qrels["test"]) == ["q0"]


def test_lsr_beir_refuses_an_out_that_is_a_file_before_scoring_and_writes_its_files_whole(tmp_path, capsys):
    """--out at a file failed only after every method ran, as "[Errno 17] File exists: 'OUT'"; results.json was
    written before the chart, so a chart that could not be saved left this run's results.json beside the last
    run's results.md."""
    folder = _beir_folder(tmp_path / "ok", GOOD_CORPUS, GOOD_QUERIES, "query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    command = ["beir", "--dataset", str(folder), "--methods", "bm25", "--dense", "none", "--k", "10", "--quiet"]
    (tmp_path / "file").write_text("keep me\n")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        assert cli_main([*command, "--out", str(out)]) == 2
        printed, err = capsys.readouterr()
        assert f"cannot create the --out folder {out}: {tmp_path / 'file'} is a file, not a folder" in err and err.count("\n") == 1 and "nDCG" not in printed
    assert (tmp_path / "file").read_text() == "keep me\n"
    assert cli_main([*command, "--out", str(tmp_path / "new" / "res")]) == 0  # a folder made on the way is kept
    assert (tmp_path / "new" / "res" / "results.json").is_file()
    out = tmp_path / "res"
    (out / "ndcg.png").mkdir(parents=True)  # the chart cannot be written
    assert cli_main([*command, "--out", str(out)]) == 1
    assert "ndcg.png is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["ndcg.png"]
    (out / "ndcg.png").rmdir()
    assert cli_main([*command, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["ndcg.png", "results.json", "results.md"]
    assert json.loads((out / "results.json").read_text())["methods"]["bm25"]["ndcg@10"] == 1.0
    assert "in place of an earlier report" not in capsys.readouterr().out
    assert cli_main([*command, "--out", str(out)]) == 0  # a second run replaces the first's report, and says so
    assert "in place of an earlier report (ok test, written " in capsys.readouterr().out


def test_lsr_beir_refuses_an_out_it_cannot_write_in_before_scoring(tmp_path, capsys, unwritable_folder):
    """Each method ran, and only then did the report fail, as a bare errno."""
    folder = _beir_folder(tmp_path / "ok", GOOD_CORPUS, GOOD_QUERIES, "query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    assert cli_main(["beir", "--dataset", str(folder), "--methods", "bm25", "--dense", "none", "--k", "10", "--quiet",
                     "--out", str(unwritable_folder)]) == 1
    printed, err = capsys.readouterr()
    assert err.startswith(f"lsr beir: error: cannot write in the --out folder {unwritable_folder}:")
    assert err.count("\n") == 1 and "nDCG" not in printed


def test_a_truncated_zip_is_named_as_damaged_not_as_no_zip(tmp_path, capsys):
    """A zip cut off mid-download was "not a BEIR folder, .zip or .tar.gz archive", though it was named .zip."""
    whole = tiny_beir(tmp_path)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert cli_main(["beir", "--dataset", str(cut), "--methods", "bm25", "--dense", "none", "--k", "10"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {cut}: it is no whole zip archive (a damaged or truncated archive?)" in err
    assert err.count("\n") == 1


def test_a_report_cut_at_a_depth_under_100_says_so_beside_its_recall_and_map_at_100(tmp_path, capsys):
    """`--k 10` printed "recall@100 0.9600" for a run of 10 hits (0.9800 at the default depth) without a word."""
    folder = _beir_folder(tmp_path / "ok", GOOD_CORPUS, GOOD_QUERIES, "query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    command = ["beir", "--dataset", str(folder), "--methods", "bm25", "--dense", "none", "--quiet"]
    assert cli_main([*command, "--k", "10"]) == 0
    assert ("Depth `--k 10`: each method retrieved its top 10 only, so recall@100 and map@100 are over those 10 hits"
            in capsys.readouterr().out)
    assert cli_main(command) == 0
    assert "Depth" not in capsys.readouterr().out


def test_lsr_eval_drops_a_bom_that_opens_a_later_line_of_concatenated_files(tmp_path, capsys):
    """`cat a.trec b.trec` of two files saved with a BOM put one inside: query '\\ufeffq2' matched no judgement and
    scored 0 (nDCG@10 0.667 for a perfect run), as did a judgement of qrels concatenated so."""
    qrels, _, _ = _eval_files(tmp_path)
    run = tmp_path / "cat.trec"
    run.write_text("\ufeffq1 Q0 d1 1 3 a\n\ufeffq2 Q0 d2 1 3 a\nq3 Q0 d3 1 3 a\n", encoding="utf-8")
    glued = tmp_path / "glued.tsv"
    glued.write_text(qrels.read_text().replace("q2\t", "\ufeffq2\t"), encoding="utf-8")
    for judged in (qrels, glued):
        assert cli_main(["eval", str(run), str(judged), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["ndcg@10"] == 1.0


def test_lsr_eval_reads_lines_that_end_in_a_tab(tmp_path, capsys):
    """A spreadsheet's export ends each line in a tab: the run was refused as "got 7 fields" (six visible), the
    qrels as "grade '' is not a whole number"."""
    qrels, full, _ = _eval_files(tmp_path)
    run, judged = tmp_path / "tabbed.trec", tmp_path / "tabbed.tsv"
    run.write_text("".join(line.replace(" ", "\t") + "\t\n" for line in full.read_text().splitlines()))
    judged.write_text("".join(line + "\t\n" for line in qrels.read_text().splitlines()))
    assert cli_main(["eval", str(full), str(qrels), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert cli_main(["eval", str(run), str(judged), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == plain
