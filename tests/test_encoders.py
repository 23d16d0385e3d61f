"""SpladeEncoder against a naive transformers reference, on real SciFact text and the real model."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM

from lsr.encode.idf import idf_from_doc_freqs
from lsr.encode.splade import InferenceFreeQueryEncoder, SpladeEncoder
from lsr.encode.models import ModelNotFoundError, resolve_model
from lsr.sparse import SparseBatch

TOL = 1e-4


@pytest.fixture(scope="module")
def mlm():
    return AutoModelForMaskedLM.from_pretrained(resolve_model("splade-tiny")).eval()


def naive_splade(mlm, tokenizer, texts, max_length):
    """Full logits from the unmodified model → log1p(relu) → masked max, one text at a time (no padding)."""
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            logits = mlm(**enc).logits[0]
            rows.append(torch.log1p(torch.relu(logits)).amax(dim=0).numpy())
    return np.stack(rows)


def test_equals_naive_reference_on_scifact(splade, mlm, scifact):
    ids = list(scifact.corpus)[:64]
    texts = scifact.doc_texts(ids)
    ours = splade.encode_documents(texts, batch_size=16).to_dense()
    ref = naive_splade(mlm, splade.tokenizer, texts, 256)
    assert np.array_equal(ours > 0, ref > 0), "non-zero sets differ"
    assert np.abs(ours - ref).max() <= TOL
    assert (ours > 0).sum(axis=1).min() > 10  # real vectors, not trivially empty


def test_a_non_bert_mlm_keeps_transformers_forward_and_equals_the_reference(splade, scifact, tmp_path):
    """DistilBERT (splade-v3-distilbert, OpenSearch's doc-only models) is not packed: its padded forward on batches,
    pooled by the exact screen, still gives the naive one-text-at-a-time reference's vectors."""
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    from lsr.encode import packed_bert

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=splade.vocab_size, dim=64, n_layers=2, n_heads=2, hidden_dim=128)
    DistilBertForMaskedLM(config).eval().save_pretrained(tmp_path)
    splade.tokenizer.save_pretrained(tmp_path)
    encoder = SpladeEncoder.from_pretrained(str(tmp_path), device="cpu")
    assert not packed_bert.supports_masked_lm(encoder.model) and encoder.pads_batches and not splade.pads_batches
    texts = scifact.doc_texts(list(scifact.corpus)[:6]) + list(scifact.queries.values())[:6]
    ours = encoder.encode_documents(texts, batch_size=4).to_dense()
    reference = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    ref = naive_splade(reference, splade.tokenizer, texts, 256)
    assert np.array_equal(ours > 0, ref > 0)
    assert np.abs(ours - ref).max() <= TOL


@pytest.fixture(scope="module")
def dense():
    """MiniLM as the collections run it: ``dtype="auto"`` is bf16 on a CPU that multiplies it natively."""
    from lsr.encode.dense import DenseEncoder

    return DenseEncoder.from_pretrained("minilm", device="cpu")


def _rows(result) -> list[tuple[np.ndarray, ...]]:
    """Each text's vector: (term ids, weights) of a SparseBatch row, or a dense row."""
    if isinstance(result, np.ndarray):
        return [(row,) for row in result]
    return [result.row(i) for i in range(len(result))]


def _same(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("kind", ["splade", "dense"])
def test_a_vector_is_the_same_bits_in_any_batch_at_any_thread_count(kind, request, scifact):
    """A served query's vector does not depend on the micro-batch it joined, nor an indexed document's on its
    neighbours: the BERT forward is padding-free with each text attending alone, and the pooling is exact.
    The dense encoder runs bf16 where the CPU has it (on AMX, oneDNN's row-count-dependent sums are the case)."""
    encoder = request.getfixturevalue(kind)
    docs = scifact.doc_texts(list(scifact.corpus)[100:112])
    # SciFact's queries, and short ones (3 to 11 tokens: MKL multiplies so few rows differently on 2 threads)
    queries = list(scifact.queries.values())[:24] + ["coffee and the liver", "statins cholesterol", "x", "a\u0301b",
                                                     "does aspirin prevent heart attacks", "vitamin d in older women"]
    # neighbours up to a paragraph long (~500 tokens): a short text's pooling must not see their length
    others = list(scifact.queries.values())[100:140] + [" ".join(docs[:3])]
    threads = torch.get_num_threads()
    try:
        for encode, texts in ((encoder.encode_documents, docs), (encoder.encode_queries, queries)):
            torch.set_num_threads(1)
            alone = [_rows(encode([t]))[0] for t in texts]
            torch.set_num_threads(2)  # a server's lone query, a one-document upsert
            assert all(_same(_rows(encode([t]))[0], want) for t, want in zip(texts, alone))
            for count, batch_size in ((1, 32), (2, 8), (2, 32)):
                torch.set_num_threads(count)
                # reversed, then longer and shorter neighbours: other batches, other batch lengths
                batched = _rows(encode(texts[::-1] + others[: len(texts)], batch_size=batch_size))
                for i, want in enumerate(alone):
                    assert _same(batched[len(texts) - 1 - i], want), f"text {i} at {count} threads, batch {batch_size}"
    finally:
        torch.set_num_threads(threads)


def encode_concurrently_and_serially(jobs):
    """Each (encode, texts) job run serially, then all at once on threads, five times over."""
    serial = [encode(texts, batch_size=3) for encode, texts in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        rounds = [[f.result(60) for f in [pool.submit(encode, texts, batch_size=3) for encode, texts in jobs]]
                  for _ in range(5)]
    return serial, rounds


def test_concurrent_encodes_equal_serial_ones(splade, scifact):
    """The service encodes micro-batches on several threads at once, queries (64 tokens) between
    documents (256): the tokenizer's settings change under them, yet every result is the serial one."""
    docs = scifact.doc_texts(list(scifact.corpus)[:16])
    queries = list(scifact.queries.values())[:16]
    jobs = [(splade.encode_documents, docs[i::4]) for i in range(4)]
    jobs += [(splade.encode_queries, queries[i::4]) for i in range(4)]
    serial, rounds = encode_concurrently_and_serially(jobs)
    for got in rounds:
        for batch, want in zip(got, serial):
            assert np.array_equal(batch.indptr, want.indptr) and np.array_equal(batch.indices, want.indices)
            assert np.array_equal(batch.values, want.values)


def test_concurrent_dense_encodes_equal_serial_ones(dense, scifact):
    docs = scifact.doc_texts(list(scifact.corpus)[:8])
    queries = list(scifact.queries.values())[:8]
    jobs = [(dense.encode_documents, docs[i::2]) for i in range(2)] + [(dense.encode_queries, queries[i::2]) for i in range(2)]
    serial, rounds = encode_concurrently_and_serially(jobs)
    for got in rounds:
        for vectors, want in zip(got, serial):
            np.testing.assert_allclose(vectors, want, rtol=0, atol=1e-5)


def test_an_encoder_and_its_vectors_print_what_they_are(splade):
    """Both printed as `<... object at 0x...>` and as their raw CSR arrays (936 characters for two documents)."""
    assert repr(splade) == "SpladeEncoder('splade-tiny', device='cpu', dtype='torch.float32', max_length=256)"
    batch = splade.encode_documents(["aspirin lowers fever", "coffee"])
    assert repr(batch) == f"SparseBatch(rows=2, vocab_size=30522, nnz={batch.nnz})" and batch.nnz > 2
    # sentence-transformers' method names, for code moving over
    assert splade.encode_document(["aspirin lowers fever", "coffee"]) == batch
    assert splade.encode_query(["aspirin"]) == splade.encode_queries(["aspirin"])


def test_results_come_back_in_input_order(splade):
    texts = ["a b c d e f g h i j k l m n o p", "aspirin", "heart attack risk of smoking"]
    together = splade.encode_queries(texts).to_dicts()
    for text, vec in zip(texts, together):
        assert splade.encode_queries([text]).to_dicts()[0].keys() == vec.keys()


def test_empty_and_whitespace_give_empty_vectors(splade):
    batch = splade.encode_documents(["", "   \n\t", "protein folding", "\x00 \x00", "\u200b\ufeff"])
    assert len(batch) == 5 and batch.row(4)[0].size == 0
    assert batch.row(0)[0].size == 0 and batch.row(1)[0].size == 0
    assert batch.row(2)[0].size > 0
    assert batch.row(3)[0].size == 0  # NUL-only has no words: it used to get 'is', 'means', 'and' ... and match queries
    assert len(splade.encode_queries([])) == 0
    # Every character the tokenizer drops, alone: soft hyphen, direction mark, controls, a lone accent, U+FFFD,
    # invisible times, the Mongolian vowel separator, private use. Each gave the special tokens' vector.
    dropped = ["\xad\xad", "\u200e", "\x01", "\x7f", "\u0301", "\ufffd", "\u2062", "\u180e", "\ue000"]
    assert all(ids == [101, 102] for ids in splade.tokenizer(dropped)["input_ids"])
    assert all(batch.row(i)[0].size == 0 for i in range(len(dropped)) for batch in [splade.encode_documents(dropped)])
    kept = splade.encode_documents(["\xadprotein", "\u0301a", "😀"])  # a word beside them, or one [UNK]
    assert all(kept.row(i)[0].size > 0 for i in range(3))


def test_non_string_raises_type_error_naming_position(splade):
    with pytest.raises(TypeError, match=r"texts\[2\]"):
        splade.encode_documents(["fine", "also fine", 42])
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        splade.encode_queries([None])


def test_a_text_of_unknown_tokens_is_cut_to_max_length(splade):
    """600 emoji are 600 [UNK]s: truncation kept every trailing [UNK] as if the tokenizer had appended it, so past
    max_length = 512 the model's position table ran out (IndexError / 'index 512 is out of bounds')."""
    from lsr.encode.splade import SpladeEncoder

    text = "\U0001F600 " * 600
    for encoder in (splade, SpladeEncoder.from_pretrained("splade-tiny", device="cpu", max_length=512)):
        rows, lengths = encoder._tokenize([text, "plain words " + text], encoder.max_length)
        assert [len(r) for r in rows] == [encoder.max_length] * 2 and lengths.tolist() == [602, 604]
        assert rows[1][:4] == [101, 5810, 2616, 100] and rows[1][-1] == 102 and rows[1].count(102) == 1
        batch, info = encoder.encode_documents([text], return_info=True)
        assert len(batch) == 1 and info.truncated.tolist() == [True]


def test_unordered_texts_are_refused(splade):
    """Vectors come back in input order: a set or a dict has none (a dict gave its keys' vectors, a set any order)."""
    for texts in ({"protein folding", "vitamin d"}, frozenset({"a b"}), {"d1": "protein folding"}):
        with pytest.raises(TypeError, match=f"ordered.*got a {type(texts).__name__}"):
            splade.encode_documents(texts)
    assert len(splade.encode_documents(("a tuple", "is ordered"))) == 2
    assert len(splade.encode_documents(t for t in ["a generator", "is too"])) == 2


def test_truncation_is_counted_reported_and_applied(splade, caplog):
    long_text = " ".join(f"word{i}" for i in range(600))
    with caplog.at_level(logging.WARNING, logger="lsr.encode.splade"):
        batch, info = splade.encode_documents([long_text, "short"], return_info=True)
    assert info.truncated.tolist() == [True, False]
    assert info.n_tokens[0] > 256
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1 and "1 of 2" in warnings[0].getMessage()
    # The vector is that of the first 256 tokens, not dropped.
    ids = splade.tokenizer(long_text)["input_ids"]
    head = splade.tokenizer.decode(ids[1:255])
    np.testing.assert_allclose(batch.to_dense()[0], splade.encode_documents([head]).to_dense()[0], atol=1e-4)
    assert batch.row(0)[0].size > 0


def test_unicode_text(splade):
    batch = splade.encode_queries(["Café naïve résumé — 北京 🚀 Ωmega"])
    terms = batch.to_dicts()[0]
    assert terms and all(w > 0 for w in terms.values())
    assert "cafe" in terms or "café" in terms


def test_no_expansion_keeps_only_own_tokens(splade):
    enc = SpladeEncoder(splade.model, splade.tokenizer, query_expansion=False, device="cpu")
    text = "vitamin d deficiency and bone density"
    own = set(splade.tokenizer(text, add_special_tokens=False)["input_ids"])
    ids, vals = enc.encode_queries([text]).row(0)
    assert set(ids.tolist()) <= own and len(ids) > 0
    expanded_ids, _ = splade.encode_queries([text]).row(0)
    assert len(expanded_ids) > len(ids)


def test_switches_and_prompts_of_the_wrong_kind_are_refused_at_construction(splade):
    """lowercase="no" and query_expansion="no" were taken as on; prompts="x" failed at the first encode with
    "'str' object has no attribute 'document'"."""
    for switch in ("lowercase", "query_expansion", "doc_expansion"):
        with pytest.raises(TypeError, match=f"{switch} must be True or False, got 'no'"):
            SpladeEncoder(splade.model, splade.tokenizer, device="cpu", **{switch: "no"})
    with pytest.raises(TypeError, match=r"prompts must be a Prompts\(query=..., document=...\), got str"):
        SpladeEncoder(splade.model, splade.tokenizer, device="cpu", prompts="query: ")
    enc = SpladeEncoder(splade.model, splade.tokenizer, device="cpu", query_expansion=np.bool_(False))
    assert enc.query_expansion is False


def test_top_k_and_threshold_pruning(splade):
    text = "mitochondrial dysfunction in neurodegenerative disease"
    full = splade.encode_documents([text]).to_dicts()[0]
    enc = SpladeEncoder(splade.model, splade.tokenizer, top_k=5, threshold=0.3, device="cpu")
    pruned = enc.encode_documents([text]).to_dicts()[0]
    expected = [t for t, w in full.items() if w > 0.3][:5]
    assert list(pruned) == expected
    assert all(abs(pruned[t] - full[t]) < 1e-6 for t in pruned)


def test_sum_pooling_matches_reference(splade, mlm):
    enc = SpladeEncoder(splade.model, splade.tokenizer, pooling="sum", device="cpu")
    text = "sum pooling sums activations over tokens"
    with torch.no_grad():
        inputs = splade.tokenizer(text, return_tensors="pt")
        ref = torch.log1p(torch.relu(mlm(**inputs).logits[0])).sum(0).numpy()
    np.testing.assert_allclose(enc.encode_documents([text]).to_dense()[0], ref, atol=1e-4)


@pytest.mark.parametrize("pooling, activation", [("max", "log1p_relu"), ("sum", "relu")])
def test_a_sparse_encoder_folders_pooling_activation_and_prompts_are_followed(tmp_path, pooling, activation):
    """Its SpladePooling (sum; OpenSearch's log1p_relu) and its prompts were ignored: vectors 1.0 to 2.4 away from
    SparseEncoder's for the same folder, without a word."""
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    prompts = {"query": "query: ", "document": "passage: "}
    st.SparseEncoder(modules=[MLMTransformer(resolve_model("splade-tiny")),
                              SpladePooling(pooling_strategy=pooling, activation_function=activation)],
                     prompts=prompts, device="cpu").save(str(tmp_path / "st"))
    reference = st.SparseEncoder(str(tmp_path / "st"), device="cpu")
    ours = SpladeEncoder.from_pretrained(str(tmp_path / "st"), device="cpu", dtype="fp32")
    assert (ours.pooling, ours.activation, ours.prompts.query, ours.prompts.document) == (pooling, activation,
                                                                                           "query: ", "passage: ")
    texts = ["vitamin d prevents fractures in older adults", "statins cause muscle pain", "x"]
    for got, want in ((ours.encode_queries(texts), reference.encode_query(texts, convert_to_tensor=True)),
                      (ours.encode_documents(texts), reference.encode_document(texts, convert_to_tensor=True))):
        np.testing.assert_allclose(got.to_dense(), want.to_dense().numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="log1p_relu with max pooling"):
        SpladeEncoder(ours.model, ours.tokenizer, pooling="sum", activation="log1p_relu", device="cpu")
    # without expansion the prompt's tokens are not the text's own (every query had held "query" and ":")
    own = SpladeEncoder.from_pretrained(str(tmp_path / "st"), device="cpu", query_expansion=False, doc_expansion=False)
    assert set(own.encode_queries(["cats"]).to_dicts()[0]) == {"cats"}
    assert set(own.encode_queries(["query cats"]).to_dicts()[0]) == {"query", "cats"}  # the text's own "query"
    assert set(own.encode_documents(["cats"]).to_dicts()[0]) == {"cats"}
    # inference-free queries put the folder's query prompt first too, as SparseEncoder.encode_query does
    idf_side = InferenceFreeQueryEncoder.from_pretrained(str(tmp_path / "st"), idf=np.ones(30522, np.float32))
    assert set(idf_side.encode_queries(["cats"]).to_dicts()[0]) == {"query", ":", "cats"}


def test_a_sparse_encoder_folders_max_active_dims_caps_our_vectors_too(tmp_path):
    """``SparseEncoder(..., max_active_dims=8).save`` keeps 8 terms a vector when loaded; we kept all of them (30 for
    this text) without a word. A damaged value, or config that is no JSON, is one line naming the file."""
    st = pytest.importorskip("sentence_transformers")
    folder = tmp_path / "st"
    st.SparseEncoder(resolve_model("splade-tiny"), device="cpu", max_active_dims=8).save(str(folder))
    reference = st.SparseEncoder(str(folder), device="cpu")
    ours = SpladeEncoder.from_pretrained(str(folder), device="cpu", dtype="fp32")
    assert ours.top_k == 8
    texts = ["Aspirin lowers heart attack risk and statins cause muscle pain.", "vitamin d"]
    for got, want in ((ours.encode_queries(texts), reference.encode_query(texts, convert_to_tensor=True)),
                      (ours.encode_documents(texts), reference.encode_document(texts, convert_to_tensor=True))):
        assert list(np.diff(got.indptr)) == [8, 8]
        np.testing.assert_allclose(got.to_dense(), want.to_dense().numpy(), atol=1e-4)
    assert SpladeEncoder.from_pretrained(str(folder), device="cpu", top_k=None).top_k is None  # asked for: all
    config = folder / "config_sentence_transformers.json"
    saved = config.read_text()
    config.write_text(json.dumps({**json.loads(saved), "max_active_dims": -1}))
    with pytest.raises(ValueError, match=f"^{re.escape(str(config))}: max_active_dims must be a positive whole"):
        SpladeEncoder.from_pretrained(str(folder), device="cpu")
    config.write_text("{bad")
    with pytest.raises(ValueError, match=f"^{re.escape(str(config))} is not valid JSON"):
        SpladeEncoder.from_pretrained(str(folder), device="cpu")
    config.write_text(saved)
    (folder / "idf.json").write_text('{"hello": 1.0,')
    with pytest.raises(ValueError, match=f"^{re.escape(str(folder / 'idf.json'))} is not valid JSON"):
        InferenceFreeQueryEncoder.from_pretrained(str(folder))


def test_documents_are_cut_where_the_folder_says_when_it_says_fewer_than_256_tokens(tmp_path, scifact):
    """A SparseEncoder saved with max_seq_length 128 cut its documents there; we encoded 256 tokens of them (vectors
    2.1 away from sentence-transformers'). An explicit length still wins."""
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    from lsr.cli import main as cli_main

    mlm = MLMTransformer(resolve_model("splade-tiny"))
    mlm.max_seq_length = 128
    st.SparseEncoder(modules=[mlm, SpladePooling()], device="cpu").save(str(tmp_path / "st"))
    ours = SpladeEncoder.from_pretrained(str(tmp_path / "st"), device="cpu", dtype="fp32")
    assert ours.max_length == 128
    assert SpladeEncoder.from_pretrained(str(tmp_path / "st"), max_length=200, device="cpu").max_length == 200
    long_docs = sorted(scifact.doc_texts(list(scifact.corpus)[:200]), key=len)[-3:]
    want = st.SparseEncoder(str(tmp_path / "st"), device="cpu").encode_document(long_docs, convert_to_tensor=True)
    np.testing.assert_allclose(ours.encode_documents(long_docs).to_dense(), want.to_dense().numpy(), atol=1e-4)
    (tmp_path / "docs.jsonl").write_text(json.dumps({"_id": "d0", "text": long_docs[0]}) + "\n")
    assert cli_main(["index", str(tmp_path / "docs.jsonl"), str(tmp_path / "col"), "--model", str(tmp_path / "st"),
                     "--dense", "none", "--bm25", "none", "--quiet"]) == 0
    assert json.loads((tmp_path / "col" / "lsr.json").read_text())["settings"]["max_length"] == 128
    # a build recorded at 256 (as every build before this default was) resumes without --max-length
    build = ["index", str(tmp_path / "docs.jsonl"), str(tmp_path / "old"), "--model", str(tmp_path / "st"), "--dense",
             "none", "--bm25", "none", "--quiet"]
    assert cli_main([*build, "--max-length", "256"]) == 0 and cli_main([*build, "--resume"]) == 0


@pytest.mark.parametrize("declared, positions, want", [(2, 512, 256), (10**30, 128, 128), (10**30, 512, 256),
                                                       (64, 512, 64), (None, 100, 100)])
def test_the_default_document_length_is_what_the_folder_declares_if_under_256(tmp_path, declared, positions, want):
    """A declared 2 or 3 (no word fits) was taken and then refused as a --max-length never given; a model with 128
    positions and a tokenizer saying 1e30 ("unknown") got 256, past its positions, where SparseEncoder uses 128."""
    from lsr.encode.models import document_length

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": positions}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({} if declared is None else {"model_max_length": declared}))
    assert document_length(str(tmp_path)) == want


def test_encode_file_refuses_a_length_of_0_rather_than_taking_the_default(tmp_path):
    from lsr.ingest.vector_file import encode_file

    (tmp_path / "docs.jsonl").write_text(json.dumps({"_id": "d0", "text": "aspirin"}) + "\n")
    with pytest.raises(ValueError, match="max_length must be"):
        encode_file(tmp_path / "docs.jsonl", tmp_path / "v.parquet", max_length=0, progress=False)


def test_parquet_round_trip(splade, tmp_path):
    batch = splade.encode_documents(["first document", "", "third one, with ünïcode"])
    path = tmp_path / "vectors.parquet"
    batch.write_parquet(path, ids=["d1", "d2", "d3"], with_vocab=True)
    back, ids = SparseBatch.read_parquet(path)
    assert ids == ["d1", "d2", "d3"]
    assert np.array_equal(back.indptr, batch.indptr)
    assert np.array_equal(back.indices, batch.indices)
    assert np.array_equal(back.values, batch.values)
    assert back.vocab_size == 30522 and list(back.vocab) == list(batch.vocab)
    assert back.to_dicts() == batch.to_dicts()
    assert np.allclose(back.to_scipy().toarray(), batch.to_dense())
    lean = tmp_path / "lean.parquet"  # without the vocabulary: a few KB, not the 0.7 MB of BERT's 30k tokens
    batch.write_parquet(lean, ids=["d1", "d2", "d3"])
    assert lean.stat().st_size < 8_000 < path.stat().st_size
    back, _ = SparseBatch.read_parquet(lean, vocab=batch.vocab)
    assert back.vocab_size == 30522 and back.to_dicts() == batch.to_dicts()
    assert SparseBatch.read_parquet(lean)[0].vocab is None



@pytest.mark.parametrize("weight", [np.nan, np.inf, -0.5, 2e6])
def test_a_batch_write_parquet_writes_is_one_read_parquet_reads(tmp_path, weight):
    """write_parquet wrote a NaN (a negative, an inf, a weight past MAX_DOC_WEIGHT) that read_parquet then refused:
    the error came at the read, far from where the bad vector was made. Now the write refuses it, naming the row."""
    batch = SparseBatch(np.array([0, 1, 3]), np.array([1, 2, 5]), np.array([0.5, weight, 1.0]), 10)
    path = tmp_path / "vectors.parquet"
    with pytest.raises(ValueError, match=f"row 1 has the weight {np.float32(weight)}; a weight is finite"):
        batch.write_parquet(path, ids=["a", "b"])
    assert not path.exists()


def test_write_parquet_refuses_ids_that_repeat(tmp_path):
    """write_parquet wrote a file with one id on two vectors, which `lsr index --vectors` refused only later (one id
    keys one vector there); now the write names the repeated ids and leaves no file."""
    batch = SparseBatch(np.array([0, 1, 2, 3]), np.array([1, 2, 5]), np.array([0.5, 1.0, 1.0]), 10)
    path = tmp_path / "vectors.parquet"
    with pytest.raises(ValueError, match=r"ids repeat: \['a'\]; each vector needs its own id"):
        batch.write_parquet(path, ids=["a", "b", "a"])
    assert not path.exists()
    batch.write_parquet(path, ids=["a", "b", "c"])
    assert SparseBatch.read_parquet(path)[1] == ["a", "b", "c"]


def test_vocab_size_is_a_whole_number_that_survives_a_round_trip(tmp_path):
    """A vocab_size of 10.0 was kept and written as "10.0", which read_parquet could not parse back; None and "10"
    failed inside numpy, and 0 as "term id 0 outside the vocabulary [0, 0)" for a batch with no terms at all."""
    for size in (10.0, None, "10", True):
        with pytest.raises(TypeError, match=f"vocab_size must be a whole number, got {size!r}"):
            SparseBatch(np.array([0, 1]), np.array([1]), np.array([1.0]), size)
    with pytest.raises(ValueError, match="vocab_size must be ≥ 1, got 0"):
        SparseBatch.empty(1, 0)
    batch = SparseBatch(np.array([0, 1]), np.array([1]), np.array([1.0]), np.int64(10))
    batch.write_parquet(tmp_path / "v.parquet")
    back, _ = SparseBatch.read_parquet(tmp_path / "v.parquet")
    assert back == batch and type(back.vocab_size) is int is type(batch.vocab_size)
    with pytest.raises(ValueError, match=r"from_dense takes a \[rows, vocab\] array, got shape \(3,\)"):
        SparseBatch.from_dense(np.ones(3))


def test_a_row_holds_each_term_once_and_a_batch_without_vocabulary_gives_term_ids(tmp_path):
    """A row naming term 1 twice gave four views three weights (to_dicts 1, to_dense 2, to_scipy and the index 3);
    without a vocabulary, to_dicts gave "1996", which a search read as the token "1996", not term 1996 ("the")."""
    for indices in ([1, 1], [3, 1, 2, 1]):
        with pytest.raises(ValueError, match="row 0 holds term 1 twice"):
            SparseBatch(np.array([0, len(indices)]), np.array(indices), np.ones(len(indices)), 10)
    unordered = SparseBatch(np.array([0, 3, 5]), np.array([3, 1, 2, 1, 2]), np.arange(1.0, 6.0), 10)
    assert unordered.to_dicts() == [{2: 3.0, 1: 2.0, 3: 1.0}, {2: 5.0, 1: 4.0}]
    assert SparseBatch.from_dicts(unordered.to_dicts(), [f"t{i}" for i in range(10)], 10).to_dicts() == \
        [{"t2": 3.0, "t1": 2.0, "t3": 1.0}, {"t2": 5.0, "t1": 4.0}]
    from lsr.index import InvertedIndex

    index = InvertedIndex.build(tmp_path / "idx", unordered, ["a", "b"])
    assert [h.doc_id for h in index.search(unordered.to_dicts()[1], k=2)] == ["b", "a"]


def test_read_parquet_names_the_path_it_cannot_read(tmp_path):
    """pyarrow named no file ("Parquet magic bytes not found in footer") or called a folder "Cannot open for reading"."""
    (tmp_path / "notes.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=f"{tmp_path / 'notes.parquet'} is not a Parquet file"):
        SparseBatch.read_parquet(tmp_path / "notes.parquet")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'none.parquet'} is not there"):
        SparseBatch.read_parquet(tmp_path / "none.parquet")
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a folder"):
        SparseBatch.read_parquet(tmp_path)


def test_concat_refuses_batches_whose_vocabularies_differ_in_their_tokens():
    """Two vocabularies of one size (two models' tokenizers) were concatenated under the first one's token names."""
    one = SparseBatch.from_dense(np.array([[1.0, 0.0]], np.float32), vocab=["a", "b"])
    other = SparseBatch.from_dense(np.array([[0.0, 2.0]], np.float32), vocab=["x", "y"])
    same = SparseBatch.from_dense(np.array([[0.0, 2.0]], np.float32), vocab=["a", "b"])
    with pytest.raises(ValueError, match="different vocabularies .same size, other tokens"):
        SparseBatch.concat([one, other])
    assert SparseBatch.concat([one, same]).to_dicts() == [{"a": 1.0}, {"b": 2.0}]


def test_inference_free_queries_use_idf_json(splade, tmp_path):
    folder = tmp_path / "doc-only-model"
    shutil.copytree(resolve_model("splade-tiny"), folder)
    (folder / "idf.json").write_text(json.dumps({"diabetes": 3.5, "insulin": 2.0, "the": 0.1}))
    enc = InferenceFreeQueryEncoder.from_pretrained(str(folder))
    batch = enc.encode_queries(["The diabetes diabetes insulin question", "   "])
    assert batch.to_dicts()[0] == pytest.approx({"diabetes": 3.5, "insulin": 2.0, "the": 0.1})
    assert batch.row(1)[0].size == 0
    # every token of the text weighs what the table says, [UNK] and a typed [SEP] too, as SparseEncoder.encode_query
    # weighs them (they were dropped: "🙂" had no terms); trained and index tables give those tokens 0
    weighted = InferenceFreeQueryEncoder.from_pretrained(str(folder), idf={"[UNK]": 4.0, "[SEP]": 5.0, "hello": 1.0})
    assert weighted.encode_queries(["🙂", "[SEP] hello"]).to_dicts() == [{"[UNK]": 4.0}, {"[SEP]": 5.0, "hello": 1.0}]


def test_an_idf_table_of_other_tokens_or_bad_weights_is_named(tmp_path, caplog):
    """A table none of whose tokens the tokenizer has gave every query no terms, 0 hits and no word; bad weights were
    "idf must be a 1-D array ...", numpy's "could not convert string", or a string "2.5" taken as 2.5."""
    folder = tmp_path / "doc-only-model"
    shutil.copytree(resolve_model("splade-tiny"), folder)
    table = folder / "idf.json"
    for content, message in (({}, "names none of the tokenizer's tokens"), ({"Ġrisk": 2.0}, "names none of the"),
                             ({"risk": "2.5"}, "token 'risk' has the weight '2.5'"), ({"risk": -1}, "weight -1;"),
                             ({"risk": [1.0]}, r"weight \[1.0\]"), ({"risk": True}, "weight True"), ([1.0, 2.0], "a list")):
        table.write_text(json.dumps(content))
        with pytest.raises(ValueError, match=f"^{re.escape(str(table))}.*{message}"):
            InferenceFreeQueryEncoder.from_pretrained(str(folder))
    table.write_text(json.dumps({"risk": 2.0, "Ġcancer": 1.0}))
    with caplog.at_level("WARNING", logger="lsr.encode.splade"):
        assert InferenceFreeQueryEncoder.from_pretrained(str(folder)).encode_queries(["risk"]).to_dicts() == [{"risk": 2.0}]
    assert "names 1 tokens the tokenizer does not have (such as 'Ġcancer')" in caplog.text


def test_inference_free_without_idf_explains_what_to_pass():
    with pytest.raises(ValueError, match="idf.json"):
        InferenceFreeQueryEncoder.from_pretrained("splade-tiny")


def test_idf_from_document_frequencies():
    idf = idf_from_doc_freqs(np.array([0, 1, 50, 100]), 100)
    assert idf[0] == 0 and idf[1] > idf[2] > idf[3] > 0


def test_missing_model_error_says_how_to_fix(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        SpladeEncoder.from_pretrained(str(tmp_path / "nope"))


def test_a_folder_that_is_no_model_gets_a_one_line_error(tmp_path):
    """A folder without config.json (a mistyped path such as ../../etc) is named as no model folder, and a model
    folder transformers cannot read gets its several-line message on one line."""
    with pytest.raises(ModelNotFoundError, match="is not a model folder: it has no config.json") as plain:
        SpladeEncoder.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelNotFoundError, match="could not load model from folder") as broken:
        SpladeEncoder.from_pretrained(str(tmp_path))
    assert "\n" not in str(plain.value) and "\n" not in str(broken.value)


def test_paragraph_long_queries_are_not_cut(splade, scifact):
    """The query limit comes from the model (512 positions for splade-tiny), not a fixed 64 tokens."""
    assert splade.query_max_length == 512
    paragraph = next(t for t in scifact.doc_texts(list(scifact.corpus)[:200]) if 300 < len(splade.tokenizer(t)["input_ids"]) < 500)
    batch, info = splade.encode_queries([paragraph], return_info=True)
    assert not info.truncated[0]
    free = InferenceFreeQueryEncoder.from_pretrained("splade-tiny", idf=np.ones(splade.vocab_size, np.float32))
    assert free.query_max_length == 512


def test_a_length_past_the_models_positions_is_refused_at_construction():
    """max_length 600 on a 512-position BERT was accepted, then a long text failed deep in torch (IndexError)."""
    with pytest.raises(ValueError, match="max_length 600 is more than the 512 token positions the model has"):
        SpladeEncoder.from_pretrained("splade-tiny", device="cpu", max_length=600)


def test_fractional_or_non_numeric_term_ids_are_refused_not_truncated():
    """SparseBatch(indptr, [1.5], ...) kept term 1 (the int32 cast), and indices of strings failed inside numpy."""
    for indices in ([1.5], [np.nan], ["1"]):
        with pytest.raises(TypeError, match="indices must be whole term ids"):
            SparseBatch([0, 1], indices, [1.0], 4)
    assert SparseBatch([0, 0], [], [], 4).nnz == 0  # an empty list (float64 to numpy) is no term


def test_csr_arrays_of_another_shape_or_kind_and_a_vocabulary_past_int32_are_refused():
    """A column of indices [[1], [3]] was read as the terms of every row (row 0 got term 3), an indptr of 0.7 moved a
    term into the other row, "1.5" and True were taken as weights, and term 2**31 + 4 wrapped to a negative id."""
    cases = [(([0, 2], np.array([[1], [3]]), [1.0, 2.0], 10), ValueError, r"indices must be a 1-D array, got shape \(2, 1\)"),
             (([0, 2], [1, 3], np.array([[1.0], [2.0]]), 10), ValueError, "values must be a 1-D array"),
             (([0, 0.7, 2], [1, 3], [1.0, 2.0], 10), TypeError, "indptr must be whole numbers, got an array of float64"),
             (([0, 1], [1], ["1.5"], 10), TypeError, "values must be numbers"),
             (([0, 1], [1], [True], 10), TypeError, "values must be numbers, got an array of bool"),
             (([0, 1], [2**31 + 4], [1.0], 2**31 + 5), ValueError, r"vocab_size must be at most 2\*\*31")]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            SparseBatch(*args)
    assert SparseBatch([0, 1], [2**31 - 1], np.array([1.5], np.float16), 2**31).to_dicts() == [{2**31 - 1: 1.5}]


def test_a_vectors_file_with_a_null_term_or_columns_of_another_type_is_named(tmp_path):
    """A null term id was read as term -2**31 (NaN cast to int32), an int64 column failed as "'Int64Array' object has
    no attribute 'offsets'" and a list of strings inside numpy."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {b"lsr.vocab_size": b"4"}
    for columns, message in (({"indices": [[1], [1, None]], "values": [[1.0], [1.0, 2.0]]}, "row 2 has a null term id"),
                             ({"indices": [1], "values": [1.0]}, "column 'indices' is int64"),
                             ({"indices": [[1]], "values": [["x"]]}, "column 'values' is list<element: string>"),
                             # named by their 1-based row, as the other checks name theirs
                             ({"indices": [[1], [2, 7]], "values": [[1.0], [1.0, 2.0]]},
                              r"row 2 has the term id 7, outside the vocabulary \[0, 4\)"),
                             ({"indices": [[1], [0], [3, 2, 3]], "values": [[1.0], [1.0], [1.0, 2.0, 3.0]]},
                              "row 3 holds term 3 twice")):
        pq.write_table(pa.table(columns).replace_schema_metadata(meta), tmp_path / "v.parquet")
        with pytest.raises(ValueError, match=message):
            SparseBatch.read_parquet(tmp_path / "v.parquet")


def test_token_of_an_id_outside_the_vocabulary_is_refused():
    batch = SparseBatch.from_dicts([{"b": 1.0}], vocab=["a", "b", "c", "d"])
    assert [batch.token(i) for i in (0, 3)] == ["a", "d"]
    for term in (-1, 4, 99, True, 1.0):  # -1 named the last token
        with pytest.raises(IndexError, match="outside the vocabulary"):
            batch.token(term)


def test_from_dicts_refuses_weights_that_are_no_numbers_and_rows_that_are_no_dicts():
    """A None weight became NaN and "1" the weight 1; one dict passed as the rows failed as "'str' object has no
    attribute 'values'"; vocab_size=0 was read as "not given"."""
    vocab = ["a", "b"]
    for weight in (None, "1", True):
        with pytest.raises(TypeError, match=f"row 0's weights must be numbers, got {weight!r}"):
            SparseBatch.from_dicts([{"a": weight}], vocab)
    with pytest.raises(TypeError, match="row 0 is a str"):
        SparseBatch.from_dicts({"a": 1.0}, vocab)
    with pytest.raises(ValueError, match="vocab_size must be ≥ 1, got 0"):
        SparseBatch.from_dicts([{"a": 1.0}], vocab, vocab_size=0)
    assert SparseBatch.from_dicts([{"a": 1, "b": np.float32(0.5)}, {}], vocab).to_dicts() == [{"a": 1.0, "b": 0.5}, {}]


def test_inference_free_refuses_a_short_idf_and_a_query_length_below_one():
    """An IDF table shorter than the tokenizer's vocabulary dropped every token past its end from the queries, and
    query_max_length 0 gave every query no terms; both only logged, if anything."""
    with pytest.raises(ValueError, match="idf has 10 weights but the tokenizer has 30,522 tokens"):
        InferenceFreeQueryEncoder.from_pretrained("splade-tiny", idf=np.ones(10, np.float32))
    for length, error in ((0, ValueError), (2.5, TypeError)):
        with pytest.raises(error, match="query_max_length must be"):
            InferenceFreeQueryEncoder.from_pretrained("splade-tiny", idf=np.ones(30522, np.float32),
                                                      query_max_length=length)
    encoder = InferenceFreeQueryEncoder.from_pretrained("splade-tiny", idf=np.ones(30522, np.float32))
    assert encoder.encode_queries(["heart"], batch_size=8, show_progress=True).nnz == 1  # as SpladeEncoder takes them
    with pytest.raises(ValueError, match="batch_size must be"):
        encoder.encode_queries(["heart"], batch_size=-1)  # it and any misspelt keyword were swallowed
    with pytest.raises(TypeError, match="unexpected keyword argument 'batchsize'"):
        encoder.encode_queries(["heart"], batchsize=8)


def test_a_folders_do_lower_case_is_followed_as_sparse_encoder_follows_it(tmp_path):
    """sentence_bert_config.json's do_lower_case was ignored: with a cased tokenizer, "Hello WORLD" gave "query,
    database" where SparseEncoder gave "hello, world" (2.7 apart). A word-final capital sigma is a small sigma there
    (each character lowered alone), where Python's str.lower makes it a final one: 1.65 apart."""
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    st.SparseEncoder(modules=[MLMTransformer(resolve_model("splade-tiny"), tokenizer_args={"do_lower_case": False}),
                              SpladePooling()], prompts={"query": "Query: "}, device="cpu").save(str(tmp_path / "st"))
    saved = tmp_path / "st" / "sentence_bert_config.json"  # sentence-transformers 6 reads it, as older ones wrote it
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "do_lower_case": True}))
    reference = st.SparseEncoder(str(tmp_path / "st"), device="cpu")
    ours = SpladeEncoder.from_pretrained(str(tmp_path / "st"), device="cpu", dtype="fp32")
    cased = SpladeEncoder.from_pretrained(str(tmp_path / "st"), device="cpu", dtype="fp32", lowercase=False)
    assert ours.lowercase and not cased.lowercase
    texts = ["Hello WORLD", "Vitamin D Prevents FRACTURES", "\u039f\u0394\u039f\u03a3 \u039a\u0391\u039b\u039f\u03a3"]
    assert cased.encode_documents(texts[:1]).to_dicts() != ours.encode_documents(texts[:1]).to_dicts()  # it is cased
    for got, want in ((ours.encode_queries(texts), reference.encode_query(texts, convert_to_tensor=True)),
                      (ours.encode_documents(texts), reference.encode_document(texts, convert_to_tensor=True))):
        np.testing.assert_allclose(got.to_dense(), want.to_dense().numpy(), atol=TOL)


def test_model_folders_that_fail_to_load_say_why_in_one_line(tmp_path):
    """A weights file cut short was a SafetensorError traceback; a config.json that does not fit the weights pointed
    to "the above report", which was never printed; a folder without a tokenizer ended at "from one of:"."""
    source = resolve_model("splade-tiny")
    cut = tmp_path / "cut"
    shutil.copytree(source, cut)
    (cut / "model.safetensors").write_bytes((Path(source) / "model.safetensors").read_bytes()[:100_000])
    for backend in ("auto", "transformers"):
        with pytest.raises(ModelNotFoundError, match="its weights file is damaged or cut short"):
            SpladeEncoder.from_pretrained(str(cut), backend=backend)
    wrong = tmp_path / "wrong"
    shutil.copytree(source, wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    with pytest.raises(ModelNotFoundError, match="its config.json does not fit its weights"):
        SpladeEncoder.from_pretrained(str(wrong))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text('{"foo": 1}')
    with pytest.raises(ModelNotFoundError) as caught:
        SpladeEncoder.from_pretrained(str(bare))
    assert "\n" not in str(caught.value) and not str(caught.value).endswith("from one of:")


def test_a_roberta_models_position_offset_bounds_its_lengths(tmp_path, splade):
    """RoBERTa's positions start after its padding id, so 130 positions hold 128 tokens: 129 and 130 were accepted
    (and the default became 130), then every long text failed in torch with "index 130 is out of bounds"."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    config = RobertaConfig(vocab_size=splade.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=130, pad_token_id=1)
    RobertaForMaskedLM(config).save_pretrained(tmp_path / "rob")
    splade.tokenizer.save_pretrained(tmp_path / "rob")
    encoder = SpladeEncoder.from_pretrained(str(tmp_path / "rob"), device="cpu")
    assert (encoder.max_length, encoder.query_max_length) == (128, 128)
    assert encoder.encode_documents(["word " * 600]).nnz > 0
    with pytest.raises(ValueError, match="max_length 129 is more than the 128 token positions"):
        SpladeEncoder.from_pretrained(str(tmp_path / "rob"), max_length=129)


def test_wrong_texts_dtypes_and_impls_fail_at_once_in_one_line(splade):
    """bytes were iterated ("texts[0] is int"), a 0-d array failed as "iteration over a 0-d array", an int8 dtype in
    torch's .to, a complex one only at encode, and impl "bogus" or "triton" on a CPU only at the first encode."""
    with pytest.raises(TypeError, match="got bytes: decode it first"):
        splade.encode_documents(b"hello")
    assert splade.encode_documents(np.array("hello")).to_dicts() == splade.encode_documents(["hello"]).to_dicts()
    for dtype in (torch.int8, torch.complex64):
        with pytest.raises(ValueError, match="dtype must be a floating-point type"):
            SpladeEncoder(splade.model, splade.tokenizer, device="cpu", dtype=dtype)
    with pytest.raises(ValueError, match="unknown pooling impl 'bogus'"):
        SpladeEncoder(splade.model, splade.tokenizer, device="cpu", impl="bogus")
    if os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="impl 'triton' runs on a CUDA GPU"):
            SpladeEncoder(splade.model, splade.tokenizer, device="cpu", impl="triton")
