"""The dense encoder gives sentence-transformers' vectors for the same folder, at every text length."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from lsr.encode.dense import DenseEncoder, SentenceConfig
from lsr.encode.models import resolve_model

sentence_transformers = pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def texts_of_every_length(scifact):
    """SciFact queries, documents from the shortest to the longest, and paragraph queries past 256 tokens."""
    docs = scifact.doc_texts(list(scifact.corpus))
    by_length = sorted(docs, key=len)
    picks = [by_length[int(q * (len(by_length) - 1))] for q in np.linspace(0, 1, 12)]
    queries = list(scifact.queries.values())[:8]
    paragraphs = [" ".join(by_length[-1:-4:-1]), queries[0] + " " + by_length[len(by_length) // 2]]
    return queries + picks + paragraphs + ["x"]


def _folder(tmp_path, pooling_flag: str | None = None, normalize: bool = True, max_seq_length: int | None = None) -> str:
    """A copy of the bundled MiniLM folder (weights linked) with its sentence-transformers config changed."""
    source = resolve_model("minilm")
    folder = tmp_path / "model"
    folder.mkdir()
    for name in os.listdir(source):
        if os.path.isfile(os.path.join(source, name)):
            os.symlink(os.path.join(source, name), folder / name)
    modules = json.loads((folder / "modules.json").read_text())
    if not normalize:
        modules = [m for m in modules if not m["type"].endswith("Normalize")]
    (folder / "modules.json").unlink()
    (folder / "modules.json").write_text(json.dumps(modules))
    pooling = json.loads(open(os.path.join(source, "1_Pooling", "config.json")).read())
    if pooling_flag:
        pooling = {k: (k == pooling_flag) if k.startswith("pooling_mode_") else v for k, v in pooling.items()}
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if max_seq_length is not None:
        (folder / "sentence_bert_config.json").unlink()
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))
    return str(folder)


def _assert_same_as_sentence_transformers(folder: str, texts: list[str]) -> DenseEncoder:
    ours = DenseEncoder.from_pretrained(folder, device="cpu", dtype="fp32")
    reference = sentence_transformers.SentenceTransformer(folder, device="cpu")
    assert ours.max_length == reference.max_seq_length
    want = reference.encode(texts, batch_size=16, convert_to_numpy=True)
    for got in (ours.encode_documents(texts), ours.encode_queries(texts)):
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-5
    return ours


def test_bundled_minilm_equals_sentence_transformers_at_every_length(texts_of_every_length):
    ours = _assert_same_as_sentence_transformers(resolve_model("minilm"), texts_of_every_length)
    assert ours.max_length == 256 and ours.config == SentenceConfig("mean", True, False)
    lengths = [len(ours.tokenizer(t)["input_ids"]) for t in texts_of_every_length]
    assert min(lengths) < 16 and max(lengths) > 256  # both ends are covered, including cut texts


def test_a_folder_sentence_transformers_6_saves_loads_and_its_prompts_are_put_first(tmp_path, texts_of_every_length):
    """sentence-transformers 6 writes ``"pooling_mode": "mean"``, which was refused ("exactly one of
    pooling_mode_mean_tokens, ... got none"); and a folder's prompts (e5's "query: ") were left out."""
    folder = str(tmp_path / "st6")
    sentence_transformers.SentenceTransformer(resolve_model("minilm"), device="cpu",
                                              prompts={"query": "query: ", "document": "passage: "}).save(folder)
    assert "pooling_mode" in json.loads(open(os.path.join(folder, "1_Pooling", "config.json")).read())
    ours = DenseEncoder.from_pretrained(folder, device="cpu", dtype="fp32")
    reference = sentence_transformers.SentenceTransformer(folder, device="cpu")
    texts = texts_of_every_length[:6] + texts_of_every_length[-3:]
    for got, want in ((ours.encode_queries(texts), reference.encode_query(texts, convert_to_numpy=True)),
                      (ours.encode_documents(texts), reference.encode_document(texts, convert_to_numpy=True))):
        assert np.abs(got - want).max() <= 1e-5
    assert np.abs(ours.encode_queries(texts) - ours.encode_documents(texts)).max() > 1e-3  # the prompts differ


@pytest.mark.parametrize("pooling_flag, normalize, max_seq_length", [
    ("pooling_mode_cls_token", False, 32),
    ("pooling_mode_max_tokens", True, None),
    ("pooling_mode_mean_sqrt_len_tokens", False, 128),
])
def test_the_folder_config_decides_pooling_normalisation_and_length(tmp_path, texts_of_every_length, pooling_flag,
                                                                     normalize, max_seq_length):
    folder = _folder(tmp_path, pooling_flag, normalize, max_seq_length)
    ours = _assert_same_as_sentence_transformers(folder, texts_of_every_length[:10] + texts_of_every_length[-3:])
    assert ours.config.normalize is normalize and ours.max_length == (max_seq_length or 256)


@pytest.mark.parametrize("pooling_flag", [None, "pooling_mode_cls_token"])  # packed BERT; a forward per text
def test_a_bf16_cpu_vector_is_the_same_bits_in_any_batch_at_any_thread_count(tmp_path, texts_of_every_length,
                                                                              pooling_flag):
    import torch

    from lsr.encode.inputs import cpu_has_native_bf16

    folder = _folder(tmp_path, pooling_flag)
    default = DenseEncoder.from_pretrained(folder, device="cpu")
    assert default.model.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    encoder = DenseEncoder.from_pretrained(folder, device="cpu", dtype="bf16")
    texts = texts_of_every_length
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = np.concatenate([encoder.encode_queries([text]) for text in texts])
        torch.set_num_threads(2)
        alone_on_two = np.concatenate([encoder.encode_queries([text]) for text in texts])
        mixed = encoder.encode_documents(texts[::-1], batch_size=32)[::-1]
        eights = encoder.encode_queries(texts, batch_size=8)
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(alone, alone_on_two) and np.array_equal(alone, mixed) and np.array_equal(alone, eights)
    exact = DenseEncoder.from_pretrained(folder, device="cpu", dtype="fp32").encode_queries(texts)
    cosines = (alone * exact).sum(1) / np.linalg.norm(alone, axis=1) / np.linalg.norm(exact, axis=1)
    assert cosines.min() > 0.999 and np.abs(alone - exact).max() > 1e-5  # close, and bf16 did run


def test_unsupported_pooling_is_one_clear_error(tmp_path):
    folder = _folder(tmp_path, "pooling_mode_weightedmean_tokens")
    with pytest.raises(ValueError, match="pooling_mode_mean_tokens"):
        SentenceConfig.read(folder)


def test_long_queries_are_cut_with_a_warning_and_a_flag(caplog):
    encoder = DenseEncoder.from_pretrained("minilm", device="cpu")
    paragraph = "vitamin d deficiency and bone density in older adults " * 40
    with caplog.at_level(logging.WARNING, logger="lsr.encode.dense"):
        vectors, info = encoder.encode_queries([paragraph, "short query"], return_info=True)
    assert info.truncated.tolist() == [True, False] and info.n_tokens[0] > 256
    assert any("1 of 2" in r.getMessage() and "256 tokens" in r.getMessage() for r in caplog.records)
    assert np.abs(np.linalg.norm(vectors, axis=1) - 1).max() < 1e-5


def test_a_max_length_of_zero_or_past_the_models_positions_is_refused():
    """max_length=0 was read as "not given" (the folder's 256), and 10**9 was accepted until a long text failed deep
    in torch (IndexError: index out of range in self)."""
    with pytest.raises(ValueError, match="max_length must be ≥ 4, got 0"):
        DenseEncoder.from_pretrained("minilm", max_length=0, device="cpu")
    with pytest.raises(ValueError, match="max_length 1000000000 is more than the 512 token positions the model has"):
        DenseEncoder.from_pretrained("minilm", max_length=10**9, device="cpu")
    assert DenseEncoder.from_pretrained("minilm", max_length=512, device="cpu").encode_documents(["x " * 600]).shape == (1, 384)
