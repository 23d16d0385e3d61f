"""The pyserini-style verbs on a tiny real corpus: encode a file, index pre-encoded vectors, batch search
into a TREC run, score it, fetch documents; and the model loader's offline behaviour."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lsr.cli import main as cli_main
from lsr.cli.main import VERBS
from lsr.encode.models import model_content_key, resolve_model
from lsr.eval.runs import read_qrels_file, read_topics, read_trec_run

DOCS = {
    "aspirin": "Aspirin lowers the risk of heart attack and stroke in adults.",
    "vitamin": "Vitamin D supplements improve bone density in older women.",
    "coffee": "Coffee consumption is linked to lower risk of liver disease.",
    "smoking": "Smoking cessation lowers lung cancer incidence over ten years.",
    "statins": "Statins reduce cholesterol and cardiovascular events.",
    "sleep": "Short naps improve memory consolidation after learning.",
}
QUERIES = {"q-aspirin": "does aspirin prevent heart attacks", "q-coffee": "coffee and the liver",
           "q-statins": "statins cholesterol"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("verbs")
    path = root / "docs.jsonl"  # pyserini's JSONL: read without --id-field / --fields
    path.write_text("".join(json.dumps({"id": d, "contents": t}) + "\n" for d, t in DOCS.items()))
    return path


@pytest.fixture(scope="module")
def collections(corpus) -> dict[str, Path]:
    """The same corpus indexed directly and from a vectors file made by `lsr encode --input`."""
    root = corpus.parent
    assert cli_main(["index", str(corpus), str(root / "direct"), "--dense", "none", "--quiet"]) == 0
    assert cli_main(["encode", "--input", str(corpus), "--output", str(root / "vectors.parquet"), "--quiet"]) == 0
    assert cli_main(["index", str(root / "vectors.parquet"), str(root / "pre"), "--pre-encoded", "--dense", "none",
                     "--quiet"]) == 0
    return {"direct": root / "direct", "pre": root / "pre"}


def test_pre_encoded_vectors_index_to_the_same_collection(collections, capsys):
    direct, pre = (json.loads((collections[k] / "lsr.json").read_text()) for k in ("direct", "pre"))
    assert pre["model"] == "splade-tiny" and pre["n_docs"] == len(DOCS)
    assert direct["fields"] == ["contents"] and direct["settings"]["id_field"] == "id"
    assert pre["checksums"]["sparse"] == direct["checksums"]["sparse"]
    assert pre["checksums"]["docs"] == direct["checksums"]["docs"]  # the texts travel in the vectors file


def test_fusion_flags_on_a_collection_without_dense_vectors_fuse_the_legs_it_has(collections, capsys):
    """The dense weight a flag leaves unset (1 - the sparse weight) asked for a leg the collection lacks: any fusion
    flag failed with "re-index with --dense minilm", where a plain --mode hybrid worked. That weight is now 0, and
    weights that then leave one list are refused (SPLADE alone ran, its raw scores labelled hybrid)."""
    assert cli_main(["search", str(collections["direct"]), "coffee", "--normalization", "rrf", "--json"]) == 2
    assert "these weights leave sparse, as this collection has no dense leg" in capsys.readouterr().err
    assert cli_main(["search", str(collections["direct"]), "coffee", "--sparse-weight", "0.5", "--bm25-weight", "0.5",
                     "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits and any(hit.get("bm25_score") is not None for hit in hits), hits
    # the weight is what asks for the leg, not the mode: it said "hybrid mode needs dense vectors ... re-index"
    assert cli_main(["search", str(collections["direct"]), "coffee", "--mode", "hybrid", "--dense-weight", "0.2"]) == 2
    assert ("the dense weight 0.2 weighs a dense list, and this collection has none (built with --dense none); leave "
            "it out (--dense-weight)") in capsys.readouterr().err


def test_pre_encoded_vectors_need_the_models_terms_not_its_weights(corpus, collections, tmp_path, capsys):
    """The build loaded the SPLADE weights only to read the vocabulary: a decoder backbone's many GB on a machine
    that encodes nothing. A folder without its weights now indexes the file to the same collection; one whose
    config names no vocabulary head (a dense model) still loads the encoder, which refuses it in one line."""
    model = tmp_path / "model"
    shutil.copytree(resolve_model("splade-tiny"), model)
    vectors = str(tmp_path / "vectors.parquet")
    assert cli_main(["encode", "--input", str(corpus), "--output", vectors, "--model", str(model), "--quiet"]) == 0
    encoded_by = model_content_key(str(model))
    for weights in ("model.safetensors", "heads.pt"):
        (model / weights).unlink()
    assert cli_main(["index", vectors, str(tmp_path / "c"), "--pre-encoded", "--dense", "none", "--quiet"]) == 0
    built, pre = (json.loads((folder / "lsr.json").read_text()) for folder in (tmp_path / "c", collections["pre"]))
    assert built["checksums"]["sparse"] == pre["checksums"]["sparse"]
    assert built["model_content"] == encoded_by  # the folder that encoded the file, not the weightless one here
    table = pq.read_table(vectors)  # a file of an older version, which does not say what encoded it
    pq.write_table(table.replace_schema_metadata({k: v for k, v in table.schema.metadata.items()
                                                  if k != b"lsr.model_content"}), tmp_path / "old.parquet")
    assert cli_main(["index", str(tmp_path / "old.parquet"), str(tmp_path / "o"), "--pre-encoded", "--dense", "none",
                     "--quiet"]) == 0  # the weightless folder's key made every later search warn of a changed model
    assert json.loads((tmp_path / "o" / "lsr.json").read_text())["model_content"] is None
    for tokenizer_file in ("tokenizer.json", "tokenizer_config.json"):  # transformers then makes a 5-token stand-in,
        (model / tokenizer_file).unlink()  # which named 30,517 terms "[unused:i]"
    assert cli_main(["index", vectors, str(tmp_path / "t"), "--pre-encoded", "--dense", "none", "--quiet"]) == 2
    assert "knows 5 tokens for the model's 30,522 embedding rows: its folder lacks its tokenizer files" in \
        capsys.readouterr().err
    assert (tmp_path / "c" / "vocab.json").read_bytes() == (collections["pre"] / "vocab.json").read_bytes()
    minilm = tmp_path / "minilm-named"
    shutil.copytree(resolve_model("minilm"), minilm)
    table = pq.read_table(vectors)  # a file that says a dense model encoded it
    meta = {**table.schema.metadata, b"lsr.model": str(minilm).encode()}
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "dense-named.parquet")
    assert cli_main(["index", str(tmp_path / "dense-named.parquet"), str(tmp_path / "d"), "--pre-encoded",
                     "--dense", "none", "--quiet"]) == 2
    assert "not a SPLADE model" in capsys.readouterr().err


def test_a_pre_encoded_file_indexes_with_a_copy_of_its_model_folder_and_not_another_model(corpus, tmp_path, capsys):
    """The file names the folder that encoded it: a copy of that folder elsewhere (another machine's checkout) was
    refused by its path, though its content is the same; a folder whose files differ is still refused."""
    model, copy = tmp_path / "model", tmp_path / "elsewhere" / "model"
    shutil.copytree(resolve_model("splade-tiny"), model)
    vectors = str(tmp_path / "vectors.parquet")
    assert cli_main(["encode", "--input", str(corpus), "--output", vectors, "--model", str(model), "--quiet"]) == 0
    shutil.copytree(model, copy)
    assert cli_main(["index", vectors, str(tmp_path / "c"), "--pre-encoded", "--model", str(copy), "--dense", "none",
                     "--quiet"]) == 0
    assert json.loads((tmp_path / "c" / "lsr.json").read_text())["model"] == str(copy)  # what searches load
    config = copy / "config.json"
    config.write_text(config.read_text() + "\n")  # retrained, as far as its content says
    assert cli_main(["index", vectors, str(tmp_path / "d"), "--pre-encoded", "--model", str(copy), "--dense", "none",
                     "--quiet"]) == 2
    assert f"was encoded with {str(model)!r}" in capsys.readouterr().err


def test_an_empty_name_or_a_field_the_corpus_lacks_is_refused_not_taken_as_the_default(corpus, collections, tmp_path,
                                                                                       capsys, caplog):
    """`--model ""` indexed with splade-tiny, `--dense ""` built no dense leg and recorded "" as its model, `--tag ""`
    wrote the default tag and `lsr upsert --fields ""` read the build's fields; `--fields title,txt`, a typo for
    text, indexed the titles alone, without a word."""
    col, out = str(collections["direct"]), str(tmp_path / "new")
    topics = tmp_path / "topics.tsv"
    topics.write_text("q1\taspirin\n")
    for args, said in ((["index", str(corpus), out, "--model", ""], "argument --model: an empty name"),
                       (["index", str(corpus), out, "--dense", " "], "argument --dense: an empty name"),
                       (["index", str(corpus), out, "--id-field", ""], "argument --id-field: an empty name"),
                       (["upsert", str(corpus), col, "--fields", ""], "--fields needs at least one field name"),
                       (["upsert", str(corpus), col, "--id-field", ""], "argument --id-field: an empty name"),
                       (["search", col, "--topics", str(topics), "--output", str(tmp_path / "r"), "--tag", ""],
                        "argument --tag: an empty name"),
                       (["encode", "aspirin", "--model", ""], "argument --model: an empty name")):
        with pytest.raises(SystemExit) as refused:  # argparse's own exit
            cli_main(args)
        assert refused.value.code == 2 and said in capsys.readouterr().err, args
    assert not (tmp_path / "new").exists() and not (tmp_path / "r").exists()
    table = tmp_path / "docs.csv"
    table.write_text("_id,title,text\nd1,Aspirin,lowers the risk of heart attack\n")
    assert cli_main(["index", str(table), out, "--fields", "title,txt", "--dense", "none", "--quiet"]) == 2
    assert "docs.csv has no column(s) ['txt']" in capsys.readouterr().err
    lines = tmp_path / "docs.jsonl"  # a JSONL file's first object may lack a field that later ones hold: a warning
    lines.write_text(json.dumps({"_id": "d1", "title": "Aspirin", "text": "lowers the risk of heart attack"}) + "\n")
    with caplog.at_level("WARNING"):
        assert cli_main(["index", str(lines), out, "--fields", "title,txt", "--dense", "none", "--quiet"]) == 0
    assert "docs.jsonl has no field 'txt' (it has '_id', 'title', 'text') in its first document" in caplog.text


def test_a_file_given_for_a_collection_and_a_path_holding_a_newline_are_one_line_each(collections, tmp_path,
                                                                                       capsys):
    """`lsr verify col/lsr.json` said "is not an lsr collection (no lsr.json)"; a path holding a newline ran the
    error onto a second line."""
    meta = collections["direct"] / "lsr.json"
    assert cli_main(["verify", str(meta)]) == 2
    assert capsys.readouterr().err == (f"lsr verify: error: {meta} is a file; a collection is a folder (`lsr index` "
                                       f"makes one); give the folder that holds it, {collections['direct']}\n")
    assert cli_main(["search", str(tmp_path / "co\nl"), "aspirin"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and f"collection {tmp_path}/co\\nl does not exist" in err


def test_out_of_range_fusion_and_prf_flags_are_named_by_their_flags(collections, capsys):
    """The command line was told "PRF feedback_docs must be in 1..100" of --prf-docs 0: the API's field names."""
    col = str(collections["direct"])
    for flags, said in ((["--prf", "--prf-docs", "0"], "--prf-docs must be in 1..100, got 0"),
                        (["--prf", "--prf-weight", "11"], "--prf-weight must be in [0, 10], got 11.0"),
                        (["--prf", "--prf-dense-weight", "20"], "--prf-dense-weight must be in [0, 10], got 20.0"),
                        (["--mode", "hybrid", "--candidates", "0"], "--candidates must be in 1..1000, got 0"),
                        (["--mode", "hybrid", "--sparse-weight", "2"], "--sparse-weight must be in [0, 1], got 2.0"),
                        (["--mode", "hybrid", "--normalization", "rrf", "--rrf-k", "0"],
                         "--rrf-k must be in 1..10000, got 0")):
        assert cli_main(["search", col, "aspirin", *flags]) == 2
        assert capsys.readouterr().err == f"lsr search: error: {said}\n", flags


def test_topics_to_trec_run_to_eval(collections, tmp_path, capsys):
    topics = tmp_path / "queries.jsonl"
    topics.write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()))
    run_file = tmp_path / "run.trec"
    assert cli_main(["search", str(collections["pre"]), "--topics", str(topics), "--output", str(run_file),
                     "--k", "3", "--threads", "2"]) == 0
    assert f"3 queries, 9 hits written to {run_file}" in capsys.readouterr().out
    lines = run_file.read_text().splitlines()
    assert len(lines) == 9 and lines[0].split()[:4] == ["q-aspirin", "Q0", "aspirin", "1"]
    assert all(line.split()[5] == "lsr-hybrid" for line in lines)  # auto: SPLADE and BM25 fused (no dense leg here)
    run = read_trec_run(run_file)
    assert [max(docs, key=docs.get) for docs in run.values()] == ["aspirin", "coffee", "statins"]
    assert cli_main(["search", str(collections["pre"]), "--topics", str(topics), "--output", "-", "--k", "3",
                     "--quiet"]) == 0  # standard output, for a pipe (it wrote a file named "-")
    piped = capsys.readouterr()
    assert piped.out.splitlines() == lines and piped.err == "3 queries, 9 hits written to standard output\n"
    some = tmp_path / "some.jsonl"
    some.write_text(json.dumps({"_id": "q-none", "text": "the of and"}) + "\n"  # stopwords: BM25 finds nothing
                    + json.dumps({"_id": "q-coffee", "text": QUERIES["q-coffee"]}) + "\n")
    assert cli_main(["search", str(collections["pre"]), "--topics", str(some), "--output", str(tmp_path / "some.trec"),
                     "--mode", "bm25", "--quiet"]) == 0
    assert "1 of 2 queries found no document (q-none); the run has no line for them, so trec_eval leaves them out " \
        "of its means unless run with -c (lsr eval scores them 0)" in capsys.readouterr().err
    assert set(read_trec_run(tmp_path / "some.trec")) == {"q-coffee"}
    assert cli_main(["search", str(collections["pre"]), "--topics", str(topics), "--output", str(tmp_path / "a.trec"),
                     "--k", "3", "--bound-factor", "3", "--quiet"]) == 0  # approximate: the same on six documents
    capsys.readouterr()
    assert (tmp_path / "a.trec").read_text().splitlines() == lines
    assert cli_main(["search", str(collections["pre"]), QUERIES["q-coffee"], "--k", "3", "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert [h["doc_id"] for h in single["hits"]] == list(run["q-coffee"])  # batch encoding pads: scores to float noise
    assert [h["score"] for h in single["hits"]] == pytest.approx(list(run["q-coffee"].values()), rel=1e-5)

    qrels = tmp_path / "qrels.tsv"  # BEIR TSV; TREC's four-column form reads the same
    qrels.write_text("query-id\tcorpus-id\tscore\nq-aspirin\taspirin\t1\nq-coffee\tcoffee\t1\nq-statins\tsleep\t1\n")
    (tmp_path / "qrels.txt").write_text("q-aspirin 0 aspirin 1\nq-coffee 0 coffee 1\nq-statins 0 sleep 1\n")
    assert read_qrels_file(qrels) == read_qrels_file(tmp_path / "qrels.txt")
    headed = _write(tmp_path / "headed.txt", "qid iter docno rel\n" + (tmp_path / "qrels.txt").read_text())
    assert read_qrels_file(headed) == read_qrels_file(qrels)  # TREC's header: its grade 'rel' was refused
    assert cli_main(["eval", str(run_file), str(qrels), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["mrr@10"] == pytest.approx(2 / 3) and metrics["recall@100"] == pytest.approx(2 / 3)
    assert metrics["queries"] == metrics["queries_in_run"] == 3


def test_the_python_api_searches_as_pyserini_does_and_its_batch_search_equals_the_cli_run(collections, tmp_path):
    """pyserini's habits (helper audit): `search(q, 5)` was a TypeError (k keyword-only), a result was no sequence
    of hits, hits had no `docid`, and there was no `batch_search(queries, qids)` nor an exported TREC writer."""
    import lsr

    run_file = tmp_path / "cli.trec"
    topics = tmp_path / "queries.jsonl"
    topics.write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()))
    assert cli_main(["search", str(collections["direct"]), "--topics", str(topics), "--output", str(run_file),
                     "--k", "3", "--mode", "sparse", "--quiet"]) == 0
    with lsr.Searcher.open(collections["direct"]) as searcher:
        assert repr(searcher) == f"Searcher({str(collections['direct'])!r}, model='splade-tiny')"
        result = searcher.search(QUERIES["q-coffee"], 3)
        assert len(result) == 3 and result[0] is result.hits[0] and list(result) == result.hits
        assert result[0].docid == result[0].doc_id == "coffee"
        batch = searcher.batch_search(list(QUERIES.values()), list(QUERIES), k=3, threads=2)
        assert list(batch) == list(QUERIES) and all(isinstance(hit, lsr.ScoredHit) for hit in batch["q-coffee"])
        cli = read_trec_run(run_file)  # 9 significant digits
        assert {q: [h.doc_id for h in hits] for q, hits in batch.items()} == {q: list(d) for q, d in cli.items()}
        assert all([h.score for h in batch[q]] == pytest.approx(list(cli[q].values()), rel=1e-8) for q in cli)
        assert [h.doc_id for h in batch["q-coffee"]] == [h.doc_id for h in result]
        with pytest.raises(ValueError, match="3 queries but 2 qids; give one qid per query"):
            searcher.batch_search(list(QUERIES.values()), ["a", "b"])
        with pytest.raises(ValueError, match="query id 'a' appears twice"):
            searcher.batch_search(["x", "y"], ["a", "a"])
        with pytest.raises(TypeError, match="qids must be a list of ids, got NoneType"):
            searcher.batch_search(["x"], None)
        with pytest.raises(TypeError, match="ids must be a list of ids, got NoneType"):  # "'NoneType' is not iterable"
            searcher.delete(None)
    copy = shutil.copytree(collections["direct"], tmp_path / "copy")
    with lsr.Searcher.open(copy) as searcher:  # an empty text was stored, where the server refuses it
        with pytest.raises(ValueError, match=r"texts\[1\] \(id 'e'\) is empty or whitespace, which no search finds; "
                                             r"pass allow_empty=True"):
            searcher.upsert(["d", "e"], ["a text", " \n"])
        assert not searcher.collection.view().docs.contains("d")  # nothing of the upsert was written
        searcher.upsert(["e"], [""], allow_empty=True)
        assert searcher.collection.view().docs.contains("e")
    with pytest.raises(TypeError, match="path must be a collection's folder \\(a str or Path\\), got NoneType"):
        lsr.Searcher.open(None)
    with lsr.Searcher.open(collections["direct"]) as searcher:
        written = lsr.search_topics(searcher, QUERIES.items(), tmp_path / "api.trec", k=3, progress=False)
        assert written.hits == 9 and (tmp_path / "api.trec").read_text() == run_file.read_text().replace("lsr-sparse",
                                                                                                         "lsr")
        with pytest.raises(ValueError, match="threads must be ≥ 1, got -3"):  # it ran on one thread
            lsr.search_topics(searcher, QUERIES.items(), tmp_path / "bad.trec", threads=-3, progress=False)
        with pytest.raises(TypeError, match="output must be a file path, or \"-\" for standard output; got NoneType"):
            lsr.search_topics(searcher, QUERIES.items(), None, progress=False)
        with pytest.raises(TypeError, match=r"topics must be \(qid, text\) pairs, got NoneType"):  # not iterable
            lsr.search_topics(searcher, None, tmp_path / "none.trec", progress=False)
        with pytest.raises(ValueError, match="lies inside the collection .*; write the run outside it"):  # as the CLI
            lsr.search_topics(searcher, QUERIES.items(), collections["direct"] / "run.trec", progress=False)
        assert not (tmp_path / "bad.trec").exists() and not (collections["direct"] / "run.trec").exists()
    assert repr(searcher).endswith(", closed)")


def test_habits_from_pyserini_scipy_and_sentence_transformers_get_what_they_expect(collections, tmp_path):
    """From an API audit: a blank topic 66 of 70 was "query 2 is empty" once 64 topics were searched; an encoder
    could not be pickled after its first encode (a lock in its tokenizer); ids as a generator were "0 doc ids for
    3 vectors"; from_scipy sorted the caller's matrix in place and refused the duplicates scipy sums;
    `Searcher(path)` and `max_active_dims=` were Python's bare "missing/unexpected argument"."""
    import pickle

    import numpy as np
    import scipy.sparse as sp

    import lsr

    with lsr.Searcher.open(collections["direct"]) as searcher:
        topics = [(f"q{i}", "coffee and the liver") for i in range(70)]
        topics[66] = ("q66", "  ")
        for run in (lambda: searcher.batch_search([t for _, t in topics], [q for q, _ in topics]),
                    lambda: lsr.search_topics(searcher, topics, tmp_path / "run.trec", progress=False)):
            with pytest.raises(ValueError, match="query 66 is empty"):
                run()
        assert not (tmp_path / "run.trec").exists()
        encoder = searcher.query_encoder
        want = encoder.encode_queries(["coffee and the liver"])
        got = pickle.loads(pickle.dumps(encoder)).encode_queries(["coffee and the liver"])
        assert np.array_equal(got.indices, want.indices) and np.array_equal(got.values, want.values)
    with pytest.raises(TypeError, match=r"open a collection with Searcher.open\('col'\)"):
        lsr.Searcher("col")
    matrix = sp.csr_matrix((np.array([1.0, 2.0, 0.0, 3.0, 4.0]), np.array([5, 1, 3, 1, 1]), np.array([0, 3, 5])),
                           shape=(2, 10))
    before = matrix.indices.copy()
    batch = lsr.SparseBatch.from_scipy(matrix)
    assert np.array_equal(matrix.indices, before)  # the caller's matrix as it was
    assert (batch.indptr.tolist(), batch.indices.tolist(), batch.values.tolist()) == ([0, 2, 3], [1, 5, 1],
                                                                                      [2.0, 1.0, 7.0])  # summed, no 0
    with pytest.raises(TypeError, match="from_scipy takes a scipy sparse matrix, got list"):
        lsr.SparseBatch.from_scipy([[1.0]])
    index = lsr.InvertedIndex.build(tmp_path / "index", matrix, (f"d{i}" for i in range(2)))
    assert [(h.doc_id, round(h.score, 1)) for h in index.search({1: 1.0}, k=2)] == [("d1", 7.0), ("d0", 2.0)]
    kept = lsr.SpladeEncoder.from_pretrained("splade-tiny", device="cpu", max_active_dims=5)
    assert kept.top_k == 5 and np.diff(kept.encode_documents(["coffee and the liver"]).indptr).tolist() == [5]


def test_gzipped_topics_and_runs_round_trip_and_a_run_never_replaces_its_inputs(collections, tmp_path, capsys):
    """A .jsonl.gz topics file was read as TSV and refused; --output run.trec.gz wrote plain text that `lsr eval`
    then refused; and --output could name the topics file or a collection file, which the run replaced."""
    import gzip

    topics = tmp_path / "queries.jsonl.gz"
    topics.write_bytes(gzip.compress("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()).encode()))
    packed, plain = tmp_path / "run.trec.gz", tmp_path / "run.trec"
    for output in (packed, plain):
        assert cli_main(["search", str(collections["pre"]), "--topics", str(topics), "--output", str(output),
                         "--k", "3", "--quiet"]) == 0
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes() and read_trec_run(packed) == read_trec_run(plain)
    qrels = _write(tmp_path / "qrels.tsv", "q-aspirin\t0\taspirin\t1\n")
    capsys.readouterr()
    assert cli_main(["eval", str(packed), str(qrels)]) == 0
    col = collections["pre"]
    before = {p: p.read_bytes() for p in (topics, col / "lsr.json")}
    for output, says in ((topics, "is the --topics file"), (col / "lsr.json", f"lies inside the collection {col}")):
        assert cli_main(["search", str(col), "--topics", str(topics), "--output", str(output), "--quiet"]) == 2
        assert f"lsr search: error: --output {output} {says}" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before


def test_a_run_goes_through_a_symlink_and_into_a_fifo_which_stay(collections, tmp_path, capsys):
    """--output replaced whatever stood at its path with a regular file: a symlink (its target kept the old run), a
    FIFO (its reader got nothing and hung) and, run as root, /dev/full itself (exit 0, the device gone)."""
    import stat
    import threading

    topics = _write(tmp_path / "queries.jsonl", "".join(json.dumps({"_id": q, "text": t}) + "\n"
                                                        for q, t in QUERIES.items()))
    search = ["search", str(collections["pre"]), "--topics", str(topics), "--k", "3", "--mode", "bm25", "--quiet"]
    target, link = tmp_path / "runs" / "latest.trec", tmp_path / "link.trec"
    target.parent.mkdir()
    target.write_text("an older run\n")
    link.symlink_to(target)
    assert cli_main([*search, "--output", str(link)]) == 0
    assert link.is_symlink() and target.read_text().startswith("q-aspirin Q0 aspirin 1 ")
    assert not [p for p in (*tmp_path.iterdir(), *target.parent.iterdir()) if p.name.endswith((".tmp", ".probe"))]
    fifo = tmp_path / "run.fifo"
    os.mkfifo(fifo)
    read = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_text()), daemon=True)
    reader.start()
    assert cli_main([*search, "--output", str(fifo)]) == 0
    reader.join(60)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and read == [target.read_text()]  # the run alone: the summary went
    assert capsys.readouterr().err == f"3 queries, 3 hits written to {fifo}\n"  # to stderr, with no `lsr eval` hint


def test_vectors_encoded_into_a_fifo_are_the_parquet_file_alone(corpus, tmp_path, capsys):
    """The summary went to stdout after the file's bytes: a FIFO read as a vectors file ended in "... documents
    encoded into ..." and pyarrow found no Parquet footer."""
    import io
    import threading

    fifo = tmp_path / "vectors.parquet"
    os.mkfifo(fifo)
    read = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert cli_main(["encode", "--input", str(corpus), "--output", str(fifo), "--quiet"]) == 0
    reader.join(60)
    assert pq.read_table(io.BytesIO(read[0])).num_rows == len(DOCS)
    captured = capsys.readouterr()
    assert not captured.out and f"{len(DOCS)} documents encoded into {fifo}" in captured.err


def test_a_file_written_into_a_full_device_fails_in_one_line_and_leaves_the_device():
    from lsr.files import write_output

    with pytest.raises(OSError, match=r"^could not write /dev/full: No space left on device$") as failed:
        write_output(Path("/dev/full"), lambda fh: fh.write(b"x" * (1 << 20)))
    assert failed.value.errno == 28 and Path("/dev/full").is_char_device()


@pytest.mark.parametrize("content, message", [
    ("q1\tfine\nq1\tagain\n", "line 2: duplicate query id 'q1'"),
    ("just one column\n", "line 1: expected 'qid<TAB>text'"),
])
def test_bad_topics_fail_in_one_line_before_any_model_loads(collections, tmp_path, capsys, content, message):
    topics = tmp_path / "topics.tsv"
    topics.write_text(content)
    assert cli_main(["search", str(collections["pre"]), "--topics", str(topics), "--output", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert read_topics(_write(tmp_path / "ok.tsv", "qid\ttext\nq1\thello world\n")) == [("q1", "hello world")]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("tamper, message", [
    (lambda t: t.set_column(t.schema.get_field_index("indices"), "indices", pa.array([1] * t.num_rows, pa.int32())),
     "its column 'indices' holds int32, not lists of integers"),
    (lambda t: t.replace_schema_metadata({**t.schema.metadata, b"lsr.vocab_size": b"sixty"}),
     "its lsr.vocab_size is b'sixty', not a whole number"),
    (lambda t: t.set_column(t.schema.get_field_index("indices"), "indices", pa.array(
        [[2**32 + 5]] * t.num_rows, pa.list_(pa.int64()))).set_column(t.schema.get_field_index("values"), "values",
                                                                      pa.array([[1.0]] * t.num_rows, pa.list_(pa.float32()))),
     "row 1 has the term id 4294967301, outside the vocabulary"),  # was taken as term 5: int64 ids wrapped to int32
    (lambda t: t.set_column(t.schema.get_field_index("values"), "values", pa.array(
        [[0.5]] * (t.num_rows - 1) + [[0.5] * (len(t.column("indices")[t.num_rows - 1]) + 1)], pa.list_(pa.float32()))),
     "row 1 has 36 term ids but 1 weights"),  # the weights were read by the ids' offsets: shifted row to row
    (lambda t: t.set_column(t.schema.get_field_index("values"), "values", pa.array(
        [[float("nan")] * len(row) for row in t.column("indices").to_pylist()], pa.list_(pa.float32()))),
     "row 1 has the weight nan; a weight is finite, ≥ 0 and at most 1e+06"),  # found only at the index stage
    (lambda t: t.set_column(t.schema.get_field_index("indices"), "indices", pa.array(
        [[3, 3]] * t.num_rows, pa.list_(pa.int32()))).set_column(t.schema.get_field_index("values"), "values",
                                                                pa.array([[0.5, 1.5]] * t.num_rows, pa.list_(pa.float32()))),
     "row 1 holds term 3 twice"),  # indexed as the sum of both weights, while to_dicts kept one of them
], ids=["scalar-indices", "vocab-size-text", "int64-term-id", "misaligned-weights", "nan-weight", "repeated-term"])
def test_a_tampered_vectors_file_is_one_line_naming_it(collections, tmp_path, capsys, tamper, message):
    """Each was a traceback, or an error that did not say which file."""
    table = pq.read_table(collections["direct"].parent / "vectors.parquet")
    pq.write_table(tamper(table), tmp_path / "bad.parquet")
    assert cli_main(["index", str(tmp_path / "bad.parquet"), str(tmp_path / "out"), "--pre-encoded", "--dense",
                     "none", "--quiet"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"lsr index: error: {tmp_path / 'bad.parquet'}") and message in last


def test_a_bit_flipped_in_a_vectors_file_is_refused_by_its_seal_or_its_page_checksums(collections, tmp_path, capsys):
    """A vectors file is encoded once and copied to where it is indexed: with no checksum a flipped bit inside a
    zstd page's literals was indexed unsaid (a weight of 1.098 became 1.497, a term id 2555 became 2544). The page
    checksums left the page headers out; the footer's crc32 of every byte before it covers those. A file of an older
    version, which has no such crc32, still has its page checksums."""
    from lsr.files import CorruptFileError
    from lsr.ingest.vector_file import VectorFileReader
    from lsr.sparse import SparseBatch

    source = collections["direct"].parent / "vectors.parquet"
    chunk = pq.ParquetFile(source).metadata.row_group(0).column(2)  # the weights
    assert chunk.path_in_schema.startswith("values")
    start = min(offset for offset in (chunk.dictionary_page_offset, chunk.data_page_offset) if offset is not None)
    last_page = start + chunk.total_compressed_size - 2  # inside the last page's compressed weights

    def flipped(path: Path, at: int) -> Path:
        data = bytearray(path.read_bytes())
        data[at] ^= 0x01
        out = tmp_path / f"flipped-{at}.parquet"
        out.write_bytes(data)
        return out

    for at in [*range(chunk.data_page_offset, chunk.data_page_offset + 12), last_page]:  # a page header, then data
        with pytest.raises(CorruptFileError, match=r"flipped-\d+.parquet fails its crc32 checksum \(corrupted\)"):
            VectorFileReader(flipped(source, at))
        with pytest.raises(CorruptFileError, match="fails its crc32 checksum"):
            SparseBatch.read_parquet(tmp_path / f"flipped-{at}.parquet")
    assert cli_main(["index", str(flipped(source, last_page)), str(tmp_path / "out"), "--pre-encoded", "--dense",
                     "none", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lsr index: error: {tmp_path / f'flipped-{last_page}.parquet'} fails its crc32 checksum (corrupted)")
    older = tmp_path / "older.parquet"
    pq.write_table(pq.read_table(source), older, compression="zstd", write_page_checksum=True)
    assert b"lsr.crc32" not in pq.read_metadata(older).metadata
    chunk = pq.ParquetFile(older).metadata.row_group(0).column(2)
    start = min(offset for offset in (chunk.dictionary_page_offset, chunk.data_page_offset) if offset is not None)
    damaged = flipped(older, start + chunk.total_compressed_size - 2)
    assert cli_main(["index", str(damaged), str(tmp_path / "out"), "--pre-encoded", "--dense", "none", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lsr index: error: cannot read {damaged}: could not verify page integrity, CRC checksum verification failed "
        "for page_ordinal 0 (a damaged, truncated or mislabelled file?)")


def test_a_vectors_file_naming_its_terms_otherwise_or_without_texts_for_bm25_is_refused(collections, tmp_path, capsys):
    """A file's own term names were replaced by the model's without a word (term 17663 said "muscle" in the file and
    "vitamin" in the collection); a file without texts got a BM25 leg of empty texts, which found nothing."""
    from lsr.sparse import SparseBatch

    vocab = json.loads((collections["direct"] / "vocab.json").read_text())
    batch, ids = SparseBatch.read_parquet(collections["direct"].parent / "vectors.parquet", vocab)
    swapped = list(vocab)
    swapped[2000], swapped[2001] = swapped[2001], swapped[2000]
    SparseBatch(batch.indptr, batch.indices, batch.values, batch.vocab_size, swapped).write_parquet(
        tmp_path / "swapped.parquet", ids, with_vocab=True)
    assert cli_main(["index", str(tmp_path / "swapped.parquet"), str(tmp_path / "a"), "--pre-encoded", "--dense",
                     "none", "--bm25", "none", "--quiet"]) == 2
    assert (f"the pre-encoded vectors name term 2000 {swapped[2000]!r}, but model 'splade-tiny' names it "
            f"{vocab[2000]!r}") in capsys.readouterr().err
    batch.write_parquet(tmp_path / "bare.parquet", ids)  # no text column
    assert cli_main(["index", str(tmp_path / "bare.parquet"), str(tmp_path / "b"), "--pre-encoded", "--dense",
                     "none", "--quiet"]) == 2
    assert "has no text column to build the BM25 leg from; pass --bm25 none" in capsys.readouterr().err
    assert cli_main(["index", str(tmp_path / "bare.parquet"), str(tmp_path / "b"), "--pre-encoded", "--dense",
                     "none", "--bm25", "none", "--quiet"]) == 0


def test_a_pre_encoded_build_records_how_the_file_was_encoded_and_what_it_cut(corpus, tmp_path, capsys):
    """The build said this machine's "cpu: SPLADE fp32" of bf16 vectors, and 0 truncated where lsr encode cut
    documents; a file of an older version, which records neither, is said to be so."""
    vectors = tmp_path / "v.parquet"
    assert cli_main(["encode", "--input", str(corpus), "--output", str(vectors), "--dtype", "bf16", "--max-length", "8",
                     "--quiet"]) == 0
    cut = int(re.search(r"([0-9,]+) truncated at 8 tokens", capsys.readouterr().out).group(1))
    assert cut > 0
    assert cli_main(["index", str(vectors), str(tmp_path / "c"), "--pre-encoded", "--dense", "none", "--quiet"]) == 0
    assert f"truncated docs  {cut:,}" in capsys.readouterr().out
    meta = json.loads((tmp_path / "c" / "lsr.json").read_text())
    assert meta["encoded_with"] == {"device": "cpu", "dtype": "bf16"} and meta["truncated"] == cut
    table = pq.read_table(vectors).drop_columns(["truncated"])
    pq.write_table(table.replace_schema_metadata({k: v for k, v in table.schema.metadata.items()
                                                  if k != b"lsr.encoded_with"}), tmp_path / "old.parquet")
    assert cli_main(["index", str(tmp_path / "old.parquet"), str(tmp_path / "d"), "--pre-encoded", "--dense", "none"]) == 0
    assert "encoded on      SPLADE as the vectors file did not record" in capsys.readouterr().out


def test_an_output_that_cannot_be_written_fails_before_the_work_naming_it(collections, corpus, tmp_path, capsys):
    """Found after every document was encoded (or every query searched), as a bare errno naming a temporary file."""
    topics = _write(tmp_path / "q.tsv", "q1\tcoffee\n")
    for argv, target in ((["encode", "--input", str(corpus), "--output"], "/proc/vectors.parquet"),
                         (["search", str(collections["direct"]), "--topics", str(topics), "--output"], "/proc/run.trec")):
        assert cli_main([*argv, target]) == 1
        assert capsys.readouterr().err == f"lsr {argv[0]}: error: cannot write {target}: No such file or directory\n"
    assert cli_main(["encode", "--input", str(corpus), "--output", str(tmp_path)]) == 2  # bad input, not the machine
    assert f"{tmp_path} is a folder; give the path of a file to write" in capsys.readouterr().err
    assert cli_main(["encode", "--input", str(corpus), "--output", str(corpus / "v.parquet")]) == 2  # was "File
    assert f"{corpus} is a file, not a folder" in capsys.readouterr().err  # exists", exit 1: the machine's
    assert not list(tmp_path.glob(".*probe"))
    # a run that fails leaves no folder made for its output (the check made them, and kept them)
    bad = _write(tmp_path / "bad.jsonl", '{"_id": "a", "text": "coffee"}\n{"_id": "a", "text": "tea"}\n')
    assert cli_main(["encode", "--input", str(bad), "--output", str(tmp_path / "enc" / "a" / "v.parquet")]) == 2
    assert cli_main(["search", str(tmp_path / "nowhere"), "--topics", str(topics), "--output",
                     str(tmp_path / "runs" / "a" / "run.trec")]) == 2
    assert not (tmp_path / "enc").exists() and not (tmp_path / "runs").exists()
    assert cli_main(["encode", "--input", str(corpus), "--output", str(tmp_path / "enc" / "a" / "v.parquet")]) == 0
    assert (tmp_path / "enc" / "a" / "v.parquet").is_file()  # the write makes them


def test_eval_cuts_tied_scores_where_trec_eval_ranks_them():
    """trec_eval ranks tied documents by id descending; the cuts at 10 and 100 took ascending ids, so a relevant
    "a" tied with d00..d09 scored nDCG@10 0 (ranked 11th) but MRR@10 0.1 (kept in the top 10), and tied with 150
    others it counted as recalled at 100 though ranked 151st."""
    from lsr.eval.metrics import evaluate

    qrels = {"q1": {"a": 1}}
    for others, rank in ((10, 11), (150, 151)):
        run = {"q1": {"a": 1.0, **{f"d{i:03d}": 1.0 for i in range(others)}}}
        scores = evaluate(qrels, run)
        assert scores["ndcg@10"] == scores["mrr@10"] == 0.0 and scores["recall@100"] == (rank <= 100)
    assert evaluate(qrels, {"q1": {"a": 1.0, **{f"b{i}": 1.0 for i in range(9)}}})["mrr@10"] == 0.1  # "a" ranks 10th
    # scores that differ only past float32's precision tie in trec_eval (its sim is a float): "z", last by the doubles,
    # ranks 42nd among 101 by id there, and was cut at 100
    run = {"q1": {**{f"d{i:03d}": 1.0 + (100 - i) * 1e-9 for i in range(100)}, "z": 1.0}}
    assert evaluate({"q1": {"z": 1}}, run)["recall@100"] == 1.0


def test_eval_says_when_ids_formats_or_columns_cannot_be_what_the_user_meant(tmp_path, capsys, caplog):
    """Each scored 0.0000 (or wrong) and exited 0 without a word: a run of document ids the qrels never judge, TREC
    qrels missing their grade (the doc id was read as BEIR's score), a run with rank and score swapped."""
    qrels = _write(tmp_path / "qrels.txt", "q1 0 d1 1\nq2 0 d2 1\n")
    prefixed = _write(tmp_path / "prefixed.trec", "q1 Q0 doc-d1 1 2.0 t\nq2 Q0 doc-d2 1 2.0 t\n")
    assert cli_main(["eval", str(prefixed), str(qrels)]) == 0
    assert capsys.readouterr().err == (f"warning: no document {prefixed} ranks is judged in {qrels}, so every score is "
                                       "0; do the document ids match (the run has 'doc-d1', the qrels 'd1')?\n")
    no_grade = _write(tmp_path / "no-grade.txt", "1 0 4983\n2 0 5012\n")  # BEIR's reading: doc "0", grade 4983
    assert cli_main(["eval", str(prefixed), str(no_grade)]) == 2
    assert capsys.readouterr().err == (f"lsr eval: error: {no_grade} line 1: 'qid 0 docid' lacks TREC's grade (BEIR's "
                                       "qrels are 'query-id corpus-id score' under that header)\n")
    mixed = _write(tmp_path / "mixed.txt", "q1 0 d1 1\nq2 d2 1\n")
    assert cli_main(["eval", str(prefixed), str(mixed)]) == 2
    assert "mixed.txt line 2: 3 fields where the file's first judgement has 4" in capsys.readouterr().err
    swapped = _write(tmp_path / "swapped.trec", "".join(f"q1 Q0 d{r} {9 - r} {r} t\n" for r in range(1, 4)))  # scores 8, 7, 6
    with caplog.at_level("WARNING"):
        assert cli_main(["eval", str(swapped), str(qrels)]) == 0
    assert "scores rise from line to line in 2 of 2 steps" in caplog.text and "rank and score columns swapped?" in caplog.text
    # in a shell it reads as the verb's other warnings do, without a server log's time and logger name
    shell = subprocess.run([sys.executable, "-m", "lsr", "eval", str(swapped), str(qrels)], capture_output=True,
                           text=True, check=True)
    assert shell.stderr.startswith(f"warning: {swapped}: scores rise from line to line in 2 of 2 steps"), shell.stderr
    assert cli_main(["eval", str(_write(tmp_path / "bad-rank.trec", "q1 Q0 d1 first 2.0 t\n")), str(qrels)]) == 2
    assert "line 1: rank 'first' is not a whole number" in capsys.readouterr().err


def test_eval_compares_runs_with_a_paired_randomization_test(tmp_path, capsys):
    """30 queries, each with one relevant document: `first` ranks it first, `second` second, `same` is `first` again."""
    qids = [f"q{i}" for i in range(30)]
    qrels = _write(tmp_path / "qrels.txt", "".join(f"{q} 0 rel-{q} 1\n" for q in qids))
    ranked = {"first": ["rel", "other"], "second": ["other", "rel"], "same": ["rel", "other"]}
    runs = {name: _write(tmp_path / f"{name}.trec", "".join(f"{q} Q0 {d}-{q} {r} {9 - r} {name}\n" for q in qids
                                                            for r, d in enumerate(docs, start=1)))
            for name, docs in ranked.items()}
    assert cli_main(["eval", str(runs["first"]), str(qrels), "--compare", str(runs["second"]), str(runs["same"]),
                     "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ndcg@10"] == report["mrr@10"] == 1.0 and report["queries"] == 30
    second, same = report["compare"][str(runs["second"])], report["compare"][str(runs["same"])]
    assert second["metrics"]["mrr@10"] == 0.5 and second["difference"]["mrr@10"] == -0.5
    assert second["p_value"]["mrr@10"] == pytest.approx(1 / 10_001)  # 30 losses of one size: no flip does as well
    assert second["p_value"]["recall@100"] == 1.0 and same["p_value"] == dict.fromkeys(same["p_value"], 1.0)
    assert cli_main(["eval", str(runs["first"]), str(qrels), "--compare", str(runs["second"])]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].split()[:3] == [str(runs["second"]), "0.6309", "-0.3691*"]  # nDCG@10 of rank 2: 1/log2(3)
    assert table[-2].startswith("* p < 0.05: two-sided paired randomization test")
    assert cli_main(["eval", str(runs["first"]), str(qrels), "--compare", str(runs["second"]), "--per-query"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["run", "qid", "ndcg@10", "recall@100", "mrr@10", "map@100"] and len(rows) == 1 + 2 * 30
    assert rows[-1] == [str(runs["second"]), "q29", "0.6309", "1.0000", "0.5000", "0.5000"]
    assert cli_main(["eval", str(runs["first"]), str(qrels), "--per-query", "--json"]) == 0  # --json was ignored
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 30 and lines[-1] == {"run": str(runs["first"]), "qid": "q29", "ndcg@10": 1.0,
                                              "recall@100": 1.0, "mrr@10": 1.0, "map@100": 1.0}
    assert cli_main(["eval", str(runs["first"]), str(qrels), "--compare", str(runs["first"])]) == 2
    assert "a run is given twice" in capsys.readouterr().err


@pytest.mark.parametrize("run_text, qrels_text, message", [
    ("q1 Q0 d1 1 2.5 tag\nq1 Q0 d2 2\n", "q1 0 d1 1\n", "run.trec line 2: expected 'qid Q0 docid rank score tag', got 4"),
    ("q1 Q0 d1 1 nan tag\n", "q1 0 d1 1\n", "run.trec line 1: score 'nan' is not a finite number"),
    ("q1 Q0 d1 1 1_000 tag\n", "q1 0 d1 1\n", "run.trec line 1: score '1_000' is not a finite number"),  # C's atof: 1
    ("q1 Q0 d1 1 2 tag\n", "q1 0 d1 \uff11\n", "qrels.txt line 1: grade '\uff11' is not a whole number"),  # fullwidth
    ("q1 Q0 d1 1 2 tag\nq1 Q0 d1 2 1 tag\n", "q1 0 d1 1\n", "run.trec line 2: query 'q1' ranks document 'd1' twice"),
    ("q1 Q0 d1 1 2 tag\n", "q1 0 d1 inf\n", "qrels.txt line 1: grade 'inf' is not a whole number"),
    ("q1 Q0 d1 1 2 tag\n", "q1 0 d1 1e30\n", "qrels.txt line 1: grade '1e30' is not a whole number"),
    ("q1 Q0 d1 1 2 tag\n", "query-id\tcorpus-id\tscore\nq1\td 1\t1\n",  # was read as TREC: doc '1', grade 1
     "qrels.txt line 2: id 'd 1' is empty or holds whitespace"),
    ("q1\u3000Q0 d1 1 2 tag\n", "q1 0 d1 1\n",  # split at the ideographic space, where trec_eval's sscanf does not
     "run.trec line 1: expected 'qid Q0 docid rank score tag', got 5 fields"),
    ("q1 Q0 d1 1 2 tag\n", "q1 0 d1 1\nq1 0 d2 1\nq1 0 d1 2\n",  # the last grade was kept without a word
     "qrels.txt line 3: judges document 'd1' for query 'q1' again, with grade 2 after 1"),
    ("q1 Q0 d\xff1 1 2 tag\n", "q1 0 d1 1\n", "run.trec is not UTF-8 text (invalid start byte at byte 7)"),
    ("q1 0 d1 1\n", "q1 Q0 d1 1 2 tag\n",  # RUN and QRELS given the other way round
     "qrels.txt line 1: expected 'qid 0 docid grade' or 'query-id corpus-id score' (a TREC run's 6 fields: the run "
     "comes first, `lsr eval RUN QRELS`)"),
], ids=["fields", "nan-score", "underscored-score", "fullwidth-grade", "repeated-doc", "inf-grade", "huge-grade", "spaced-beir-id", "ideographic-space", "regraded", "latin1",
        "swapped"])
def test_eval_names_a_malformed_line(tmp_path, capsys, run_text, qrels_text, message):
    """Each was a traceback or a silently wrong score (a NaN run score: nDCG 0.82 for a perfect ranking)."""
    run, qrels = tmp_path / "run.trec", _write(tmp_path / "qrels.txt", qrels_text)
    run.write_bytes(run_text.encode("utf-8").replace("\xc3\xbf".encode("latin-1"), b"\xff"))  # ÿ: a raw 0xff
    assert cli_main(["eval", str(run), str(qrels)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_topics_ids_that_a_run_cannot_hold_are_refused_and_a_bom_is_no_header(tmp_path):
    from lsr.eval.runs import read_topics

    assert read_topics(_write(tmp_path / "bom.tsv", "\ufeffqid\ttext\nq1\tvitamin d\n")) == [("q1", "vitamin d")]
    # a header names its columns; a numbered topic whose text is "query" is none (it was dropped as one)
    assert read_topics(_write(tmp_path / "word.tsv", "1\tquery\n2\tbones\n")) == [("1", "query"), ("2", "bones")]
    assert read_topics(_write(tmp_path / "topic.tsv", "topic\tquery\n1\tbones\n")) == [("1", "bones")]
    with pytest.raises(ValueError, match=r"spaced.tsv line 2: query id 'q 2' holds ' ' at character 1"):
        read_topics(_write(tmp_path / "spaced.tsv", "q1\tvitamin d\nq 2\tbones\n"))
    with pytest.raises(ValueError, match=r"nul.tsv line 1: query id 'q\\x001' holds '\\x00'"):  # went into the run
        read_topics(_write(tmp_path / "nul.tsv", "q\x001\tvitamin d\n"))
    with pytest.raises(ValueError, match=r"latin1.tsv is not UTF-8 text \(invalid continuation byte at byte 6\)"):
        (tmp_path / "latin1.tsv").write_bytes("q1\tcaf\u00e9 au lait\n".encode("latin-1"))
        read_topics(tmp_path / "latin1.tsv")
    with pytest.raises(ValueError, match=r"lone.jsonl line 1: query 'q1' holds a lone surrogate"):
        read_topics(_write(tmp_path / "lone.jsonl", '{"_id": "q1", "text": "vitamin \\ud800 d"}\n'))
    with pytest.raises(ValueError, match=r"long.jsonl line 1: query id .* is 100,000 bytes long; an id may hold at most"):
        read_topics(_write(tmp_path / "long.jsonl", json.dumps({"_id": "q" * 100_000, "text": "vitamin d"}) + "\n"))
    with pytest.raises(ValueError, match="line 1: a topic needs an id"):
        read_topics(_write(tmp_path / "odd.jsonl", '{"_id": {"a": 1}, "text": "vitamin d"}\n'))
    with pytest.raises(ValueError, match=r"long.tsv line 2: query 'q2' is 160,000 characters; a query may hold at most"):
        read_topics(_write(tmp_path / "long.tsv", "q1\tvitamin d\nq2\t" + "protein " * 20_000 + "\n"))  # before loading


def test_doc_verb_searcher_doc_and_queries_that_are_not_text(collections, capsys):
    from lsr.search.searcher import Searcher

    assert cli_main(["doc", str(collections["pre"]), "coffee"]) == 0
    assert capsys.readouterr().out == DOCS["coffee"] + "\n"
    assert cli_main(["doc", str(collections["pre"]), "coffee", "ghost"]) == 2
    said = capsys.readouterr()  # the ones found are printed (they were not), the rest named
    assert said.out == f"coffee\t{DOCS['coffee']}\n" and "no document 'ghost' in" in said.err
    assert cli_main(["doc", str(collections["pre"]), "caf\udce9"]) == 2  # a Latin-1 byte in argv: "no document"
    assert "the id 'caf\\udce9' is not UTF-8 text: an undecodable byte at character 3" in capsys.readouterr().err
    searcher = Searcher.open(collections["direct"])
    assert searcher.doc("statins") == DOCS["statins"]
    with pytest.raises(KeyError, match="ghost"):
        searcher.doc("ghost")
    with pytest.raises(TypeError, match="the query text must be a str, got int"):
        searcher.search(123)
    with pytest.raises(ValueError, match="the query text is empty or whitespace"):
        searcher.search(" \n")
    assert cli_main(["search", str(collections["direct"] / "missing"), " ", "\t"]) == 2  # before the collection opens
    assert capsys.readouterr().err == ("lsr search: error: QUERY is empty; give some words (or no QUERY, to type "
                                       "queries or pipe them in)\n")
    for mode in ("sparse", "bm25"):  # bytes Python could not decode (argv, stdin) fail alike in every mode
        with pytest.raises(ValueError, match="texts\\[0\\] is not UTF-8 text: an undecodable byte at character 3"):
            searcher.search("caf\udce9 au lait", mode=mode)
        with pytest.raises(ValueError, match="texts\\[1\\] is not UTF-8 text"):  # search_batch's BM25 took them
            searcher.search_batch(["statins", "vitamin\ud800"], mode=mode)
    with pytest.raises(ValueError, match="texts\\[1\\] is not UTF-8 text"):
        searcher.query_encoder.encode_queries(["fine", "\udcff"])


def test_queries_piped_to_search_get_the_hits_each_gets_alone_and_a_query_with_topics_is_refused(collections,
                                                                                                  capsys):
    alone = {}
    for text in (QUERIES["q-coffee"], QUERIES["q-statins"]):
        assert cli_main(["search", str(collections["direct"]), text, "-k", "3", "--json"]) == 0
        alone[text] = json.loads(capsys.readouterr().out)["hits"]
    piped = subprocess.run([sys.executable, "-m", "lsr", "search", str(collections["direct"]), "-k", "3", "--json"],
                           input=f"{QUERIES['q-coffee']}\n\n   \n{QUERIES['q-statins']}\n", capture_output=True,
                           text=True, timeout=300)
    assert piped.returncode == 0, piped.stderr
    lines = [json.loads(line) for line in piped.stdout.splitlines()]  # one JSON line a query; blank lines skipped
    assert [line["query"] for line in lines] == [QUERIES["q-coffee"], QUERIES["q-statins"]]
    assert [line["hits"] for line in lines] == [alone[line["query"]] for line in lines]  # the same bits
    assert cli_main(["search", str(collections["direct"]), "coffee", "--topics", "t.tsv", "--output", "r"]) == 2
    assert "give a QUERY or --topics FILE, not both" in capsys.readouterr().err


def test_search_on_a_terminal_prompts_for_queries_until_ctrl_d(collections):
    import pty
    import select

    from signal_helpers import interruptible

    leader, follower = pty.openpty()
    proc = subprocess.Popen(interruptible("-m", "lsr", "search", str(collections["direct"]), "-k", "2", own_terminal=True),
                            stdin=follower, stdout=follower, stderr=follower, close_fds=True, start_new_session=True)
    os.close(follower)
    seen = b""

    cursor = 0

    def read_until(marker: bytes) -> None:
        """Read until ``marker`` appears after the previous marker found; the cursor moves past it."""
        nonlocal seen, cursor
        deadline = time.monotonic() + 120
        while marker not in seen[cursor:] and time.monotonic() < deadline:
            if select.select([leader], [], [], 1.0)[0]:
                seen += os.read(leader, 4096)
        assert marker in seen[cursor:], seen.decode(errors="replace")
        cursor = seen.index(marker, cursor) + len(marker)

    try:
        read_until(b"query> ")
        time.sleep(1.0)  # as a person types: the prompt is printed just before the read it waits in begins
        os.write(leader, b"statins and\x03")  # Ctrl-C at the prompt drops the line, not the session
        read_until(b"query> ")
        os.write(leader, b"coffee and the liver\n")
        read_until(b"2 hits, ")
        read_until(b"query> ")
        os.write(leader, b"\x04")  # Ctrl-D: end of input
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        os.close(leader)
    answer = seen.decode().replace("\r", "").split("coffee and the liver\n", 1)[1].splitlines()
    assert answer[0].split()[0::2] == ["1", "coffee"] and answer[1].split()[0::2] == ["2", "statins"]
    assert answer[2].startswith("2 hits, hybrid (") and answer[3] == "query> "  # no `> QUERY` echo on a terminal


def test_a_reader_that_goes_away_ends_a_verb_quietly(collections):
    """`lsr doc ... | head -0`: the closed pipe ends the verb with SIGPIPE's status, not a traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "lsr", "doc", str(collections["direct"]), *DOCS],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the verb has printed anything
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == b""


def test_a_usage_error_is_one_line_with_a_guess_and_k_has_a_short_form(collections, capsys):
    """argparse printed its usage block first (ten lines for `lsr index`), burying the error."""
    for argv, said in (
        (["search", str(collections["direct"]), "coffee", "--hits-per-page", "2"],
         "lsr search: error: unrecognized arguments: --hits-per-page 2; see lsr search --help\n"),
        (["search", str(collections["direct"]), "coffee", "--treads=2"],  # (a prefix, --thread, is --threads)
         "lsr search: error: unrecognized arguments: --treads=2 (did you mean --threads?); see lsr search --help\n"),
        (["serch", "x"], "lsr: error: argument VERB: invalid choice: 'serch' (choose from "
                         + ", ".join(f"'{verb}'" for verb in VERBS) + ") (did you mean search?); see lsr --help\n"),
        (["index"], "lsr index: error: the following arguments are required: SOURCE, COLLECTION; see lsr index --help\n"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(argv)
        assert exit_info.value.code == 2 and capsys.readouterr().err == said
    assert cli_main(["search", str(collections["direct"]), "coffee and the liver", "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 2 and hits[0]["doc_id"] == "coffee"
    assert cli_main(["search", str(collections["direct"]), "coffee and the liver", "-k", "2", "--json",
                     "--mode", "hybrid"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"] == hits  # auto is hybrid on a collection with a BM25 leg
    assert hits[0]["bm25_score"] is not None and hits[0]["sparse_score"] is not None


@pytest.mark.parametrize("text", ["", "\u200b \t"])  # a zero-width space printed "0 non-zero terms", exit 0
def test_encode_without_words_exits_2(capsys, text):
    assert cli_main(["encode", text]) == 2
    assert capsys.readouterr().err == ("lsr encode: error: TEXT has no words; give a text to encode (or --input FILE "
                                       "--output VECTORS.parquet)\n")


def test_a_model_in_the_local_hf_cache_loads_offline_and_an_unknown_one_fails_at_once(tmp_path):
    """A hub id cached in HF's layout (snapshots/<rev>, refs/main) loads with HF_HUB_OFFLINE=1, no network."""
    snapshot = tmp_path / "hub" / "models--acme--splade-copy" / "snapshots" / "0123abcd"
    shutil.copytree(resolve_model("splade-tiny"), snapshot)
    (tmp_path / "hub" / "models--acme--splade-copy" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--splade-copy" / "refs" / "main").write_text("0123abcd")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}

    def encode(model: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lsr", "encode", "aspirin and heart attacks", "--model", model,
                               "--json", "--top", "5"], capture_output=True, text=True, timeout=120, env=env)

    cached, bundled = encode("acme/splade-copy"), encode("splade-tiny")
    assert cached.returncode == 0, cached.stderr
    assert json.loads(cached.stdout) == json.loads(bundled.stdout)
    started = time.monotonic()
    missing = encode("acme/not-there")
    assert time.monotonic() - started < 30 and missing.returncode == 2
    assert missing.stderr.startswith("lsr encode: error: model 'acme/not-there' is not installed locally, "
                                     "not in the Hugging Face cache, and the hub cannot be reached (offline)")
    assert len(missing.stderr.splitlines()) == 1


def test_a_hub_model_whose_name_points_to_a_new_revision_is_told_like_a_changed_folder(tmp_path):
    """A hub id was recorded by name only: once `main` moved to new weights (and the cache followed), queries were
    encoded by another model than the documents and writes went on, without a word. The build records the cached
    snapshot's revision; a search warns of a new one and a write is refused."""
    hub = tmp_path / "hub" / "models--acme--splade-copy"
    shutil.copytree(resolve_model("splade-tiny"), hub / "snapshots" / "0123abcd")
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("0123abcd")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    (tmp_path / "docs.jsonl").write_text(json.dumps({"_id": "d0", "text": "aspirin and the heart"}) + "\n")

    def lsr(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lsr", *args], capture_output=True, text=True, timeout=300,
                              env=env)

    built = lsr("index", str(tmp_path / "docs.jsonl"), str(tmp_path / "col"), "--model", "acme/splade-copy",
                "--dense", "none", "--max-length", "32", "--quiet")
    assert built.returncode == 0, built.stderr
    meta = json.loads((tmp_path / "col" / "lsr.json").read_text())
    assert (meta["model"], meta["model_content"]) == ("acme/splade-copy", "hub:0123abcd")
    assert "changed" not in lsr("search", str(tmp_path / "col"), "aspirin", "--quiet").stderr
    shutil.copytree(hub / "snapshots" / "0123abcd", hub / "snapshots" / "4567cdef")
    (hub / "refs" / "main").write_text("4567cdef")
    searched = lsr("search", str(tmp_path / "col"), "aspirin", "--quiet")
    assert searched.returncode == 0 and ("the model acme/splade-copy changed since this collection was indexed (the "
                                         "hub revision its name points to)") in searched.stderr
    upserted = lsr("upsert", str(tmp_path / "docs.jsonl"), str(tmp_path / "col"), "--quiet")
    assert upserted.returncode == 2 and "restore the model, or index the collection again" in upserted.stderr


def test_encode_query_with_an_inference_free_model_prints_its_idf_weights(tmp_path, capsys):
    """A folder with an idf.json serves IDF queries, so `lsr encode --query` shows those, not the MLM's expansion."""
    folder = tmp_path / "doc-only"
    shutil.copytree(resolve_model("splade-tiny"), folder)
    (folder / "idf.json").write_text(json.dumps({"coffee": 3.0, "heart": 2.0, "blood": 1.0}))
    text = "coffee and heart attacks"
    assert cli_main(["encode", text, "--query", "--model", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"coffee": 3.0, "heart": 2.0}
    assert cli_main(["encode", text, "--query", "--model", str(folder), "--top", "5"]) == 0
    assert "inference-free: IDF weights from its idf.json" in capsys.readouterr().out.splitlines()[0]
    # documents still go through the model: the same vector as the bundled model's
    assert cli_main(["encode", text, "--model", str(folder), "--json"]) == 0
    doc_only = json.loads(capsys.readouterr().out)
    assert cli_main(["encode", text, "--json"]) == 0
    assert doc_only == json.loads(capsys.readouterr().out) and len(doc_only) > 2


def test_topics_and_run_files_under_odd_input(collections, tmp_path, capsys):
    """A U+2028 inside a query split it in two; a NUL-only query passed the topics check and failed mid-run as
    "query 5 is empty"; --k 0 meant the default; a run whose write failed (or was stopped) left its temporary file,
    and a folder given as --output failed only after every query was searched."""
    from lsr.files import atomic_write

    topics = tmp_path / "t.tsv"
    topics.write_text("q1\tcoffee\u2028and the liver\nq2\taspirin\n", encoding="utf-8")
    assert [qid for qid, _ in read_topics(topics)] == ["q1", "q2"]
    topics.write_text("q1\tcoffee\nq2\t\x00\n", encoding="utf-8")
    with pytest.raises(ValueError, match="t.tsv line 2: query 'q2' has no text"):
        read_topics(topics)
    assert cli_main(["search", str(collections["direct"]), "coffee", "--k", "0"]) == 2
    assert "k must be an integer in 1..1000, got 0" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    topics.write_text("q1\tcoffee\n", encoding="utf-8")
    assert cli_main(["search", str(collections["direct"]), "--topics", str(topics), "--output",
                     str(tmp_path / "folder"), "--quiet"]) == 2
    assert "folder is a folder; give the path of a file to write" in capsys.readouterr().err

    def fails(fh) -> None:
        fh.write(b"half a run")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "run.trec", fails)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "t.tsv"]  # no run, no run.trec.PID.tmp


def test_encode_text_keeps_to_max_length(capsys):
    long_text = " ".join(f"word{i} topic{i % 7}" for i in range(300))
    counts = []
    for flags in ([], ["--max-length", "8"]):
        assert cli_main(["encode", long_text, "--top", "0", "--json", *flags]) == 0
        counts.append(len(json.loads(capsys.readouterr().out)))
    assert counts[1] < counts[0]  # the flag was ignored for a TEXT


def test_a_model_without_an_lm_head_is_refused_as_splade(capsys):
    """MiniLM is a BertModel: loaded as a masked LM its head would be random weights (~29,000 random terms a text,
    other ones at each load). It is refused in one line, in Python and on the command line."""
    from lsr.encode.models import ModelNotFoundError
    from lsr.encode.splade import SpladeEncoder

    with pytest.raises(ModelNotFoundError, match="no BertForMaskedLM head .* not a SPLADE model"):
        SpladeEncoder.from_pretrained("minilm", device="cpu")
    assert cli_main(["encode", "aspirin heart attack", "--model", "minilm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a SPLADE model" in err


def test_encode_input_failing_midway_is_one_line_and_leaves_no_file(tmp_path):
    """A bad row after good ones: the Parquet writer left open printed 'Exception ignored ... write to closed file'
    with a traceback when collected, after the one-line error."""
    corpus = _write(tmp_path / "dup.jsonl", '{"_id": "a", "text": "aspirin"}\n{"_id": "a", "text": "again"}\n')
    out = tmp_path / "v.parquet"
    proc = subprocess.run([sys.executable, "-m", "lsr", "encode", "--input", str(corpus), "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and not out.exists() and not list(tmp_path.glob("*.tmp*"))
    assert "duplicate id 'a'" in proc.stderr and "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_encode_input_onto_itself_is_refused_and_the_corpus_kept(tmp_path, capsys):
    """`lsr encode --input c.parquet --output ./c.parquet` replaced the corpus with its vectors, exit 0."""
    corpus = tmp_path / "c.parquet"
    pq.write_table(pa.table({"_id": ["a", "b"], "text": ["aspirin", "coffee"]}), corpus)
    before = corpus.read_bytes()
    assert cli_main(["encode", "--input", str(corpus), "--output", str(tmp_path / "." / "c.parquet")]) == 2
    assert capsys.readouterr().err == (f"lsr encode: error: --output {tmp_path / '.' / 'c.parquet'} is the --input "
                                       "file; give another path for the vectors\n")
    assert corpus.read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["encode", "--input", "{corpus}", "--output", "{tmp}/v.parquet", "--query"],
     "--query does nothing here: an --input file is encoded as documents, with expansion, into --output"),
    (["encode", "--input", "{corpus}", "--output", "{tmp}/v.parquet", "--no-expansion", "--top", "5"],
     "--top, --no-expansion do nothing here"),
    (["encode", "aspirin", "--batch-size", "8"],
     "--batch-size does nothing here: a TEXT is given, not an --input file"),
    (["encode", "aspirin", "--query", "--max-length", "64"],
     "--max-length does nothing here: a query keeps up to the model's limit, at most 512 tokens"),
    (["encode", "aspirin", "--max-length", "0"], "--max-length must be at least 4, got 0"),  # named max_length
    (["search", "{direct}", "coffee", "--tag", "mine"], "--tag does nothing here: without --topics no TREC run"),
    (["search", "{direct}", "coffee", "--output", "run.trec"],  # exit 0 and no file
     "--output does nothing here: without --topics no TREC run"),
    (["search", "{direct}", "--topics", "{tmp}/t.tsv", "--output", "{tmp}/run", "--text", "--explain"],
     "--text, --explain do nothing here: --topics writes a TREC run, which holds ids and scores only"),
    (["search", "{direct}", "coffee", "--mode", "bm25", "--explain"],  # its explanations came back empty, unsaid
     "--explain lists the SPLADE terms each hit shares with the query, and --mode bm25 has none"),
    (["search", "{direct}", "coffee", "--mode", "bm25", "--bound-factor", "3"],
     "--bound-factor approximates the SPLADE list, and --mode bm25 has none"),
    (["search", "{direct}", "coffee", "--bound-factor", "0.5"], "--bound-factor must be a number >= 1 (1 is exact)"),
    (["search", "{direct}", "coffee", "--mode", "sparse", "--prf", "--prf-dense-weight", "0.7"],
     "--prf-dense-weight does nothing here: it moves the dense query, and --mode sparse has none"),
    # auto is hybrid of SPLADE and BM25 here (built with --dense none): the flag was taken and did nothing
    (["search", "{direct}", "coffee", "--prf", "--prf-dense-weight", "0.7"],
     "--prf-dense-weight does nothing here: it moves the dense query, and this collection has no dense leg"),
    (["search", "{direct}", "coffee", "--mode", "hybrid", "--prf", "--prf-dense-weight", "0.7"],
     "--prf-dense-weight does nothing here: it moves the dense query, and this collection has no dense leg"),
    # a weight of 0 leaves a list out: what acts on it only did nothing
    (["search", "{direct}", "coffee", "--mode", "hybrid", "--sparse-weight", "0", "--bm25-weight", "1", "--explain"],
     "--explain lists the SPLADE terms each hit shares with the query, and --sparse-weight 0 leaves that list out"),
    (["search", "{direct}", "coffee", "--sparse-weight", "0", "--bm25-weight", "1", "--prf", "--prf-terms", "5"],
     "--prf-terms does nothing here: they move the SPLADE query, and --sparse-weight 0 leaves that list out"),
    (["search", "{direct}", "coffee", "--sparse-weight", "0", "--bm25-weight", "1", "--bound-factor", "3"],
     "--bound-factor approximates the SPLADE list, and --sparse-weight 0 leaves that list out"),
    (["search", "{direct}", "coffee", "--prf", "--prf-interpolate", "before", "--prf-after-weight", "0.9"],
     "--prf-after-weight does nothing here: it weighs the PRF run in after/both interpolation, not before"),
    # the untuned interpolation (before): it was ignored, unsaid
    (["search", "{direct}", "coffee", "--prf", "--prf-after-weight", "0.9"],
     "--prf-after-weight weighs the PRF run in after/both interpolation, and the interpolation here is 'before'"),
    (["search", "{direct}", "coffee", "--mode", "dense", "--prf", "--prf-min-idf", "5"],
     "--prf-min-idf does nothing here: they move the SPLADE query, and --mode dense has none"),
    (["search", "{direct}", "coffee", "--mode", "bm25", "--query-encoder", "splade"],
     "--query-encoder does nothing here: it encodes SPLADE queries, and --mode bm25 has none"),
    (["encode", "--input", "{tmp}/lines.txt", "--output", "{tmp}/v.parquet", "--fields", "title"],
     "--fields names a column, and lines.txt is a text file"),
    (["index", "{tmp}/lines.txt", "{tmp}/out", "--fields", "title"],  # after its "indexing ..." line
     "--fields names a column, and lines.txt is a text file"),
    (["index", "{tmp}/lines.txt", "{tmp}/out", "--id-field", "title"],  # said the id field could not be a text field
     "--id-field names a column, and lines.txt is a text file"),
    (["serve", "{direct}", "--shard-timeout", "5"], "--shard-timeout does nothing here: {direct} is not a sharded"),
    (["index", "{vectors}", "{tmp}/out", "--pre-encoded", "--id-field", "docid"], "--id-field does nothing here"),
    (["index", "{vectors}", "{tmp}/out", "--pre-encoded", "--max-length", "64"],
     "--max-length does nothing here: {vectors} holds the ids, texts and vectors to index (encoded at 256 tokens)"),
    (["index", "{corpus}", "{tmp}/out", "--dense", "none", "--hnsw"], "--dense none builds no dense index"),
    (["beir", "--dataset", "scifact", "--methods", "bm25", "--serve"],
     "--serve does nothing here: bm25 is scored in this process, with bm25s"),
    (["beir", "--dataset", "scifact", "--endpoint", "127.0.0.1:1", "--dtype", "bf16"],
     "--dtype does nothing here: with --endpoint the server's collection and models are evaluated"),
    (["beir", "--dataset", "scifact", "--endpoint", "127.0.0.1:1", "--mod=splade-tiny"],  # typed, though the default
     "--model does nothing here: with --endpoint the server's collection and models are evaluated"),
])
def test_a_flag_that_would_do_nothing_is_refused_in_one_line(collections, corpus, tmp_path, capsys, argv, message):
    """Each was accepted and ignored: `encode --input --query` wrote document vectors, `index --pre-encoded
    --max-length 64` recorded the file's 256, `serve --shard-timeout` on an unsharded collection did nothing."""
    names = {"corpus": corpus, "tmp": tmp_path, "direct": collections["direct"],
             "vectors": corpus.parent / "vectors.parquet"}
    (tmp_path / "t.tsv").write_text("q1\tcoffee\n")
    (tmp_path / "lines.txt").write_text("aspirin\ncoffee\n")
    assert cli_main([word.format(**names) for word in argv]) == 2
    err = capsys.readouterr().err
    assert message.format(**names) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "v.parquet").exists()


def test_prf_flags_through_a_server_override_the_collections_stored_prf_as_in_process(collections, tmp_path, capsys):
    """`lsr query --prf --prf-docs 1` sent every other PRF setting too, at the untuned defaults, so the server's stored
    (`lsr tune`) ones were dropped and its hits differed from `lsr search` with the same flags."""
    from lsr.ingest.layout import write_search_defaults
    from service_helpers import ServerProcess

    col = shutil.copytree(collections["direct"], tmp_path / "tuned")
    write_search_defaults(col, {"prf": {"feedback_docs": 2, "weight": 3.0, "max_terms": 5, "interpolate": "none",
                                        "after_weight": 0.5, "dense_weight": None, "min_idf": 0.0}})
    flags = ["heart attack risk", "--mode", "sparse", "--prf", "--prf-docs", "1", "--json"]

    def hits(argv: list[str]) -> list[tuple[str, float]]:
        assert cli_main(argv) == 0
        return [(hit["doc_id"], hit["score"]) for hit in json.loads(capsys.readouterr().out)["hits"]]

    in_process = hits(["search", str(col), *flags])
    assert in_process != hits(["search", str(collections["direct"]), *flags])  # the stored PRF counts
    server = ServerProcess(col).wait_listening()
    try:
        served = hits(["query", "--endpoint", server.address, *flags])
    finally:
        server.kill()
    assert [doc for doc, _ in served] == [doc for doc, _ in in_process]
    assert [score for _, score in served] == pytest.approx([score for _, score in in_process], rel=1e-6)


def test_lsr_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        cli_main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"lsr {version('lsr')}\n"


def test_docs_cli_md_names_every_flag_of_every_verb_and_no_flag_they_lack():
    """docs/cli.md is the full reference: its Flags table names each verb's flags (a group such as "device flags" by
    its bullet), and a flag it names anywhere exists (a removed one left there is a bug)."""
    import re

    from lsr.cli.main import build_parser

    flag = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
    doc = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    section = doc.split("\n## Flags\n", 1)[1].split("\n## ", 1)[0]
    groups = {name: set(flag.findall(text)) for name, text in re.findall(r"^- \*\*(\w+ flags)\*\*: (.*?)(?=^- |^\n)",
                                                                         section, re.M | re.S)}
    assert sorted(groups) == ["PRF flags", "connection flags", "device flags", "fusion flags"]
    verbs = build_parser()._subparsers._group_actions[0].choices
    known = {"--verbose", "--version", "--help"}
    for verb, parser in verbs.items():
        options = {o for action in parser._actions for o in action.option_strings if o.startswith("--")} - {"--help"}
        known |= options
        row = next(line for line in section.splitlines() if line.startswith(f"| `lsr {verb}` |"))
        named = set(flag.findall(row)).union(*(groups[name] for name in groups if name in row))
        assert options - named == set(), f"lsr {verb}: flags missing from docs/cli.md's Flags table"
        assert named - options == set(), f"lsr {verb}: docs/cli.md's Flags table names flags it does not take"
    assert set(flag.findall(doc)) - known == set()


def test_lsr_encode_names_a_bad_input_as_the_input_not_as_a_full_disk_and_counts_blank_lines(tmp_path, capsys):
    """An --input folder without corpus.jsonl said "could not write o.parquet: ... (a short write: is the disk full?)",
    exit 1; a JSON null text said no text field was present while naming it among the row's; a .txt file's blank lines
    vanished from the summary (0 bad rows skipped) and the bar stopped at 3/5."""
    (tmp_path / "notbeir").mkdir()
    assert cli_main(["encode", "--input", str(tmp_path / "notbeir"), "--output", str(tmp_path / "o.parquet")]) == 2
    err = capsys.readouterr().err
    assert "holds no corpus.jsonl; is it a BEIR dataset?" in err and "disk" not in err and "could not write" not in err
    nulls = tmp_path / "null.jsonl"
    nulls.write_text('{"_id": "x", "text": null}\n{"_id": "y", "text": "ok"}\n')
    assert cli_main(["encode", "--input", str(nulls), "--output", str(tmp_path / "n.parquet")]) == 2
    assert "line 1: the text field ['text'] is null and the others of ['title', 'text'] absent" in capsys.readouterr().err
    lines = tmp_path / "lines.txt"
    lines.write_text("alpha\n   \nbeta\n\t\n\ngamma\n")
    assert cli_main(["encode", "--input", str(lines), "--output", str(tmp_path / "t.parquet"), "--quiet"]) == 0
    assert "3 documents encoded" in (out := capsys.readouterr().out) and "3 blank lines passed over" in out
    assert pq.read_table(tmp_path / "t.parquet").column("id").to_pylist() == ["1", "3", "6"]


def test_no_expansion_is_refused_for_an_inference_free_models_queries(tmp_path, capsys):
    """`lsr encode --query --no-expansion` with an idf.json folder ran and printed the IDF weights: the flag did
    nothing, where the other flags that would do nothing are refused."""
    folder = tmp_path / "doc-only"
    shutil.copytree(resolve_model("splade-tiny"), folder)
    (folder / "idf.json").write_text(json.dumps({"coffee": 3.0}))
    assert cli_main(["encode", "coffee", "--query", "--no-expansion", "--model", str(folder)]) == 2
    assert "--no-expansion does nothing here" in capsys.readouterr().err


def test_lsr_search_without_arguments_names_only_the_collection_as_required(capsys):
    """It said "the following arguments are required: COLLECTION, query", though without a query it reads them from
    standard input."""
    with pytest.raises(SystemExit) as stopped:
        cli_main(["search"])
    assert stopped.value.code == 2
    assert "the following arguments are required: COLLECTION; see lsr search --help" in capsys.readouterr().err


def test_verbose_prints_an_errors_traceback_and_is_told_to_go_before_the_verb(collections, capsys):
    """-v printed nothing more than the error's line (lsr logs nothing at debug level), and typed after the verb it
    was refused as an unknown argument with no hint."""
    assert cli_main(["-v", "doc", str(collections["direct"]), "ghost"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "KeyError" not in err.splitlines()[-1]
    assert err.splitlines()[-1].startswith("lsr doc: error: no document 'ghost' in")
    with pytest.raises(SystemExit) as stop:
        cli_main(["doc", str(collections["direct"]), "coffee", "-v"])
    assert stop.value.code == 2 and "(-v goes before the verb: lsr -v VERB ...)" in capsys.readouterr().err
