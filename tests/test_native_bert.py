"""CPU loads of plain BERT folders skip transformers (``lsr.encode.native_bert``) and give its vectors bit for bit;
folders it cannot vouch for still load through transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lsr.encode import native_bert
from lsr.encode.dense import DenseEncoder
from lsr.encode.models import resolve_model
from lsr.encode.splade import InferenceFreeQueryEncoder, SpladeEncoder

ODD_TEXTS = ["Ünïcödé naïve café", "北京大学的研究 mixed 文本", "", "   ", "a\u0301b", "emoji 🙂 and ﬁ ligature",
             "tab\tnew\nline\r\x00ctrl", "[CLS] [SEP] [MASK] [PAD] literal", "don't stop-words' e.g. U.S.A.",
             "\u200bzero width", "word " * 700]

IN_A_FRESH_PROCESS = """
import json, sys
import numpy as np
from lsr.cli.main import main
from lsr.encode.dense import DenseEncoder
from lsr.encode.splade import SpladeEncoder
texts = json.load(open(sys.argv[1]))
assert main(["encode", "vitamin d deficiency"]) == 0
splade = SpladeEncoder.from_pretrained("splade-tiny", device="cpu")
docs, queries = splade.encode_documents(texts), splade.encode_queries(texts)
dense = DenseEncoder.from_pretrained("minilm", device="cpu", dtype="fp32")
np.savez(sys.argv[2], doc_indptr=docs.indptr, doc_indices=docs.indices, doc_values=docs.values,
         query_indptr=queries.indptr, query_indices=queries.indices, query_values=queries.values,
         dense=dense.encode_documents(texts), dense_queries=dense.encode_queries(texts))
print(json.dumps({"transformers": "transformers" in sys.modules, "models": [type(splade.model).__name__,
                  type(dense.model).__name__]}))
"""


@pytest.fixture(scope="module")
def texts(scifact) -> list[str]:
    return scifact.doc_texts(list(scifact.corpus)[:96]) + list(scifact.queries.values())[:64] + ODD_TEXTS


def test_a_fresh_process_encodes_without_transformers_and_gets_its_vectors(texts, tmp_path):
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    done = subprocess.run([sys.executable, "-c", IN_A_FRESH_PROCESS, str(tmp_path / "texts.json"), str(tmp_path / "v.npz")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"transformers": False, "models": ["NativeBertForMaskedLM", "NativeBertModel"]}
    got = np.load(tmp_path / "v.npz")
    splade = SpladeEncoder.from_pretrained("splade-tiny", device="cpu", backend="transformers")
    assert type(splade.model).__name__ == "BertForMaskedLM"
    for side, want in (("doc", splade.encode_documents(texts)), ("query", splade.encode_queries(texts))):
        assert want.nnz > 10_000
        for part in ("indptr", "indices", "values"):
            assert np.array_equal(got[f"{side}_{part}"], getattr(want, part)), (side, part)
    dense = DenseEncoder.from_pretrained("minilm", device="cpu", dtype="fp32", backend="transformers")
    assert type(dense.model).__name__ == "BertModel"
    assert np.array_equal(got["dense"], dense.encode_documents(texts))
    assert np.array_equal(got["dense_queries"], dense.encode_queries(texts))


@pytest.mark.parametrize("model", ["splade-tiny", "minilm"])
def test_the_tokenizer_equals_transformers_on_real_and_odd_texts(model, texts):
    from transformers import AutoTokenizer

    folder = resolve_model(model)
    ours, theirs = native_bert.load_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert ours is not None
    for specials in (True, False):
        want = theirs(texts, add_special_tokens=specials, truncation=False, verbose=False)["input_ids"]
        assert ours(texts, add_special_tokens=specials)["input_ids"] == want
    assert max(len(ids) for ids in want) > 600  # nothing was cut: the tokenizer.json's own truncation is off
    assert ours(texts[0])["input_ids"] == theirs(texts[0])["input_ids"]
    assert set(ours.all_special_ids) == set(theirs.all_special_ids) and ours.pad_token_id == theirs.pad_token_id
    assert ours.get_vocab() == theirs.get_vocab() and ours.model_max_length == theirs.model_max_length
    with pytest.raises(ValueError, match="does not truncate"):
        ours(texts, truncation=True)


def test_long_texts_are_read_only_as_far_as_they_are_kept(texts, beir_dir):
    """A long text is tokenised from a prefix cut at a space: the kept tokens are transformers' own truncation's,
    whatever stands at the cut (long words, no spaces, CJK, accents, control characters, a prefix that falls short)."""
    from transformers import AutoTokenizer

    from lsr.encode.inputs import PREFIX_CHARS_PER_TOKEN, truncated_token_ids
    from lsr.eval.datasets import load_beir

    folder = resolve_model("splade-tiny")
    ours, theirs = native_bert.load_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    reach = PREFIX_CHARS_PER_TOKEN * 64
    adversarial = [
        "x" * 150 + " " + "word " * 400,  # a 150-character word: one [UNK]
        ("y" * 120 + " ") * 40,  # [UNK]s only: the prefix keeps 3 of them, so the text is read again in full
        "nospace" * 300,  # no break to cut at
        "北京大学的研究" * 90 + " tail",
        " ".join(["cafe\u0301 na\u00efve"] * 120),
        "a" * (reach - 1) + " b\x00c " + "d " * 300,  # the cut lands beside a control character
        ("word " * (reach // 5))[:-1] + "\n" + "e " * 200,
        "tab\tsep " * 200,
        "a " * 191 + "\U0001F600 " + "b " * 300,  # an [UNK] is the cut's last token: it was kept as if appended
        "a " * 189 + "[SEP] " + "b " * 300,  # so was a literal [SEP]
        "\U0001F600 " * 600,  # [UNK]s only: more than max_length ids were kept (512 crashed the model)
        "a," * 3000,  # no space: cut before punctuation
        # The last break before 6 x 64 characters is the "]" of a written [SEP], which the tokenizer matches before
        # splitting words: cut there, the prefix's 63rd token was "[" (3 [UNK]s, 58 commas, then the token).
        ("x" * 105 + " ") * 3 + "," * 58 + "   " + "[SEP]" + "b" * 50 + " tail" * 100,
        "北京大学的研究文本" * 400,  # no space: cut before an ideograph
        "a\x1cb" * 2000,  # \x1c is whitespace to Python but dropped by the normaliser: never a break
        "protein " * 2000,  # 8 characters a token: the prefix falls short and is read four times as far
        "fluorodeoxyglucose " * 600,  # longer still
        # No ASCII break: other spaces and punctuation, each cut before
        *(("word" + sep) * 600 for sep in "\u00a0\u2003\u3000\u2028\u2014\u201d\u3002\u300d\uff01\u060c\u0964"),
        "\u00c5ngstr\u00f6m\u00a0" * 500,  # accents stripped around the cut
    ]
    nfcorpus = load_beir(beir_dir / "nfcorpus.tar.gz")
    corpus = texts + adversarial + nfcorpus.doc_texts(list(nfcorpus.corpus)[:300])
    for max_length in (16, 64, 256, 512):
        rows, lengths = truncated_token_ids(ours, corpus, max_length)
        want = theirs(corpus, truncation=True, max_length=max_length, verbose=False)["input_ids"]
        full = np.array([len(ids) for ids in theirs(corpus, truncation=False, verbose=False)["input_ids"]])
        assert rows == want
        assert np.array_equal(lengths > max_length, full > max_length)
        assert (lengths <= full).all() and (lengths[full <= max_length] == full[full <= max_length]).all()
        assert max_length == 512 or (lengths < full).sum() > 20  # long texts were read only in part
    for huge in ("protein " * 500_000, "protein\u00a0" * 500_000):  # 4 MB, which a query may be: its tokens
        assert truncated_token_ids(ours, [huge], 512)[1][0] < 10_000  # were all read (1.9 GB for 4M of them)


def test_transformers_loads_read_long_texts_only_as_far_as_they_are_kept():
    """``backend="transformers"`` (what ``lsr train`` loads) reads a long text as the native load does: a 21 MB
    training text took 28 s and 2.7 GB, for the same 256 tokens."""
    long_texts = ["protein folding kinetics " * 200_000, "short text", "北京大学的研究文本" * 50_000]
    for load in (lambda **kw: SpladeEncoder.from_pretrained("splade-tiny", device="cpu", **kw),
                 lambda **kw: DenseEncoder.from_pretrained("minilm", device="cpu", dtype="fp32", **kw)):
        theirs, ours = load(backend="transformers"), load()
        assert type(theirs.tokenizer).__module__.startswith("transformers")
        got, info = theirs.encode_documents(long_texts, return_info=True)
        assert (info.n_tokens[[0, 2]] < 10_000).all() and info.truncated.tolist() == [True, False, True]
        want = ours.encode_documents(long_texts)
        if isinstance(got, np.ndarray):
            assert np.allclose(got, want, atol=1e-5)
        else:
            assert np.array_equal(got.indices, want.indices) and np.allclose(got.values, want.values, atol=1e-5)


def test_inference_free_queries_use_the_native_tokenizer(texts, tmp_path):
    folder = tmp_path / "doc-only"
    shutil.copytree(resolve_model("splade-tiny"), folder)
    (folder / "idf.json").write_text(json.dumps({"vitamin": 2.5, "d": 1.5, "deficiency": 3.0}))
    encoder = InferenceFreeQueryEncoder.from_pretrained(str(folder))
    assert isinstance(encoder.tokenizer, native_bert.NativeTokenizer)
    vector = encoder.encode_queries(["Vitamin D deficiency, vitamin D"])
    assert vector.to_dicts()[0] == pytest.approx({"vitamin": 2.5, "d": 1.5, "deficiency": 3.0})


def _copy(tmp_path, change) -> str:
    folder = tmp_path / "model"
    shutil.copytree(resolve_model("splade-tiny"), folder)
    change(folder)
    return str(folder)


def _edit_json(name: str, **fields):
    def change(folder):
        data = json.loads((folder / name).read_text())
        data.update(fields)
        (folder / name).write_text(json.dumps(data))
    return change


def _edit_weights(edit):
    def change(folder):
        weights = load_file(folder / "model.safetensors")
        edit(weights)
        save_file(weights, folder / "model.safetensors")
    return change


def _edit_wordpiece(**fields):
    def change(folder):
        data = json.loads((folder / "tokenizer.json").read_text())
        data["model"].update(fields)
        (folder / "tokenizer.json").write_text(json.dumps(data))
    return change


def _declare_special(folder):
    (folder / "special_tokens_map.json").write_text(json.dumps({"additional_special_tokens": ["[unused0]"]}))


def _add_token_in_config(folder):
    data = json.loads((folder / "tokenizer_config.json").read_text())
    data.setdefault("added_tokens_decoder", {})["1"] = {"content": "[unused0]", "special": True, "lstrip": False,
                                                         "rstrip": False, "normalized": False, "single_word": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(data))


def _as_bin(folder):
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


@pytest.mark.parametrize("change", [
    _edit_json("tokenizer_config.json", do_lower_case=False),  # transformers would build a cased tokenizer
    _edit_json("tokenizer_config.json", additional_special_tokens=["[unused1]"]),
    _edit_json("config.json", hidden_act="gelu_new"),
    _edit_json("config.json", architectures=["BertForSequenceClassification"]),
    _edit_weights(lambda w: w.update(extra=torch.zeros(3))),
    _edit_weights(lambda w: w.pop("bert.encoder.layer.1.output.dense.bias")),
    _as_bin,
    # transformers rebuilds WordPiece from the vocabulary with its defaults, and adds the special tokens these declare:
    # the native tokenizer read tokenizer.json as written, and the vectors differed without a word
    _edit_wordpiece(max_input_chars_per_word=6), _edit_wordpiece(continuing_subword_prefix="@@"),
    _declare_special, _add_token_in_config,
], ids=["cased-config", "extra-specials", "gelu-new", "classifier", "unknown-tensor", "missing-tensor", "bin-weights",
        "word-length", "subword-prefix", "special-tokens-map", "added-tokens-decoder"])
def test_folders_it_cannot_vouch_for_are_left_to_transformers(change, tmp_path):
    assert native_bert.load_masked_lm(_copy(tmp_path, change)) is None


def test_a_cased_tokenizer_config_loads_through_transformers_with_its_vectors(tmp_path):
    folder = _copy(tmp_path, _edit_json("tokenizer_config.json", do_lower_case=False))
    encoder = SpladeEncoder.from_pretrained(folder, device="cpu")
    assert type(encoder.model).__name__ == "BertForMaskedLM"
    cased, lowered = encoder.encode_queries(["Vitamin D"]), encoder.encode_queries(["vitamin d"])
    assert not np.array_equal(cased.indices, lowered.indices)  # the cased config was honoured, not the json's lowercase


def test_an_untied_decoder_loads_its_own_weight(tmp_path):
    def untie(weights):
        weights["cls.predictions.decoder.weight"] = weights["bert.embeddings.word_embeddings.weight"] * 0.5
        weights["cls.predictions.decoder.bias"] = weights["cls.predictions.bias"] - 0.1

    def change(folder):
        _edit_weights(untie)(folder)
        _edit_json("config.json", tie_word_embeddings=False)(folder)
    folder = _copy(tmp_path, change)
    tied_but_different = _copy(tmp_path / "tied", _edit_weights(untie))
    assert native_bert.load_masked_lm(tied_but_different) is None  # which of the two transformers keeps is its call
    ours = SpladeEncoder.from_pretrained(folder, device="cpu")
    theirs = SpladeEncoder.from_pretrained(folder, device="cpu", backend="transformers")
    assert type(ours.model).__name__ == "NativeBertForMaskedLM"
    texts = ["vitamin d deficiency and bone health", "x"]
    got, want = ours.encode_documents(texts), theirs.encode_documents(texts)
    assert np.array_equal(got.indices, want.indices) and np.array_equal(got.values, want.values)


@pytest.mark.parametrize("encoder, model", [(SpladeEncoder, "splade-tiny"), (DenseEncoder, "minilm")])
def test_an_unknown_backend_is_one_clear_error(encoder, model):
    with pytest.raises(ValueError, match="backend must be one of"):
        encoder.from_pretrained(model, device="cpu", backend="onnx")


def test_a_head_without_its_bias_is_named_as_such_not_as_no_splade_model(tmp_path):
    """It said the checkpoint had no MLM head, "so it is not a SPLADE model; sentence embedders such as MiniLM are
    dense models", when the head was there and only its bias was missing."""
    from lsr.encode.models import ModelNotFoundError

    def drop_bias(weights):
        for key in [k for k in weights if k.startswith("cls.predictions") and k.endswith("bias")]:
            weights.pop(key)

    folder = _copy(tmp_path, _edit_weights(drop_bias))
    with pytest.raises(ModelNotFoundError, match=r"head lacks cls\.predictions\.bias.*, which would start from random"):
        SpladeEncoder.from_pretrained(folder, device="cpu")
