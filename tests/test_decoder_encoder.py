"""DecoderSpladeEncoder on a tiny randomly initialised causal LM (no decoder weights exist offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaModel

from lsr.encode.splade import DecoderSpladeEncoder
from lsr.encode.models import resolve_model


@pytest.fixture(scope="module")
def tiny_decoder():
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("splade-tiny"))
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # widen the head so many logits are positive and pooling has work to do
        model.lm_head.weight.normal_(0, 0.5)
    reference = LlamaForCausalLM(config).eval()  # an untouched twin: the encoder swaps out its model's head
    reference.load_state_dict(model.state_dict())
    return model, reference, tokenizer


def manual_echo(model, tokenizer, text, budget):
    """Unpadded forward over text+text with the full LM head; max over the second copy only."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:budget]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + ids])).logits[0]
    return torch.log1p(torch.relu(logits[len(ids):])).amax(0).numpy()


def test_echo_pools_second_copy_and_ignores_padding_side(tiny_decoder):
    model, reference_model, tokenizer = tiny_decoder
    texts = ["a short text", "a considerably longer text about protein folding and enzymes", "x"]
    expected = np.stack([manual_echo(reference_model, tokenizer, t, 32) for t in texts])
    tokenizer.padding_side = "left"  # must not matter: the encoder pads itself, on the right
    enc = DecoderSpladeEncoder(model, tokenizer, max_length=64, query_max_length=64, device="cpu")
    got = enc.encode_documents(texts, batch_size=3).to_dense()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    alone = enc.encode_documents([texts[0]]).to_dense()[0]
    np.testing.assert_allclose(alone, got[0], atol=1e-5)
    # Pooling over both copies would differ: the first copy's early tokens see little context.
    first_token_only = manual_echo(reference_model, tokenizer, "a", 32)
    assert not np.allclose(got[0], first_token_only)


def test_echo_truncates_each_copy_to_half_the_budget(tiny_decoder):
    model, reference_model, tokenizer = tiny_decoder
    enc = DecoderSpladeEncoder(model, tokenizer, max_length=64, query_max_length=16, device="cpu")
    long_text = " ".join(["enzyme"] * 50)
    batch, info = enc.encode_queries([long_text], return_info=True)
    assert info.truncated[0]
    np.testing.assert_allclose(batch.to_dense()[0], manual_echo(reference_model, tokenizer, long_text, 8), atol=1e-5)


def test_echo_budget_is_halved_once_not_twice(tiny_decoder):
    """query_max_length 16 holds two copies of 8 tokens: an 8-token text is whole, a 9-token one is cut to 8."""
    model, reference_model, tokenizer = tiny_decoder
    enc = DecoderSpladeEncoder(model, tokenizer, max_length=64, query_max_length=16, device="cpu")
    words = "protein enzyme cell gene virus tumour brain heart liver kidney".split()
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    fits = " ".join(w for w in words if len(ids(w)) == 1)
    fits = tokenizer.decode(ids(fits)[:8])
    assert len(ids(fits)) == 8
    batch, info = enc.encode_queries([fits, fits + " lung"], return_info=True)
    assert list(info.truncated) == [False, True]
    whole = manual_echo(reference_model, tokenizer, fits, 8)
    np.testing.assert_allclose(batch.to_dense()[0], whole, atol=1e-5)
    np.testing.assert_allclose(batch.to_dense()[1], whole, atol=1e-5)  # the ninth token is what was cut
    assert not np.allclose(whole, manual_echo(reference_model, tokenizer, fits, 4), atol=1e-5)


def _saved_gpt2(folder, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_causal_lm_folder_loads_as_a_decoder_encoder_in_the_api_and_every_verb(tiny_decoder, tmp_path, capsys):
    """`lsr encode/index/search --model` built SpladeEncoder, which refused a Llama folder as no masked LM (yet `lsr
    train` wrote such folders and said `lsr index --model` loads them), and GPT-2's GPT2LMHeadModel was not taken for
    a causal LM at all."""
    import json

    from lsr.cli.main import main
    from lsr.encode.splade import SpladeEncoder

    model, _, tokenizer = tiny_decoder
    llama = tmp_path / "llama"
    LlamaForCausalLM(model.config).save_pretrained(llama)  # the fixture's model lent its head to an encoder
    tokenizer.save_pretrained(llama)
    gpt2 = _saved_gpt2(tmp_path / "gpt2", tokenizer)
    for folder in (llama, gpt2):
        encoder = SpladeEncoder.from_pretrained(str(folder), device="cpu", max_length=32)
        assert type(encoder) is DecoderSpladeEncoder and encoder.echo
        assert encoder.encode_documents(["protein folding"]).nnz > 0
    # and the other way round: a masked LM (splade-tiny's BertForMaskedLM) ran causally with plausible vectors
    with pytest.raises(ValueError, match="splade-tiny is BertForMaskedLM, a masked language model, not a causal one"):
        DecoderSpladeEncoder.from_pretrained("splade-tiny", device="cpu")
    assert main(["encode", "--model", str(gpt2), "--max-length", "32", "--json", "enzyme kinetics"]) == 0
    assert json.loads(capsys.readouterr().out)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in
                              enumerate(["protein folding in cells", "enzyme kinetics and rates", "soil bacteria"])))
    assert main(["index", str(corpus), str(tmp_path / "col"), "--model", str(llama), "--dense", "none",
                 "--max-length", "32", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "col"), "protein folding", "--mode", "sparse", "--k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 3


def test_a_folder_without_its_tokenizer_or_with_a_larger_one_is_refused_at_load(tiny_decoder, tmp_path):
    """With no tokenizer files transformers made a 5-token stand-in: every word [UNK], every vector noise, no error.
    A tokenizer with tokens the model has no rows for failed inside the forward, at the first text holding one."""
    from lsr.encode.splade import SpladeEncoder

    _, _, tokenizer = tiny_decoder
    bare = _saved_gpt2(tmp_path / "bare", tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"knows \d+ tokens for the model's 30,522 embedding rows: its folder lacks"):
        SpladeEncoder.from_pretrained(str(bare), device="cpu")
    wide = _saved_gpt2(tmp_path / "wide", tokenizer)
    bigger = AutoTokenizer.from_pretrained(wide)
    bigger.add_tokens(["zyzzyvase", "quokkanine"])
    bigger.save_pretrained(wide)
    with pytest.raises(ValueError, match="has 30,524 tokens, more than the model's 30,522 embedding rows"):
        SpladeEncoder.from_pretrained(str(wide), device="cpu")


def test_a_model_that_caps_its_logits_is_pooled_over_the_capped_logits():
    """Gemma 2 caps its logits, cap * tanh(logits / cap), in its forward; with the head detached that capped the hidden
    states instead (a weight of 4.40 where the logits gave 3.43). The cap is now applied to the pooled logits, and put
    back in the config a saved model writes."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from lsr.encode.splade import output_projection_attached

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("splade-tiny"))
    config = Gemma2Config(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                          pad_token_id=0, final_logit_softcapping=30.0)
    model = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():  # logits of a trained model's size (tens), where the cap bites
        model.get_output_embeddings().weight.mul_(100.0)
    reference = Gemma2ForCausalLM(config).eval()
    reference.load_state_dict(model.state_dict())
    texts = ["vitamin d deficiency and heart disease", "protein"]
    expected = np.stack([manual_echo(reference, tokenizer, t, 32) for t in texts])
    encoder = DecoderSpladeEncoder(model, tokenizer, max_length=64, query_max_length=64, device="cpu")
    got = encoder.encode_documents(texts).to_dense()
    assert expected.max() > 3.0 and np.log1p(30.0) >= got.max()  # the cap bit: uncapped logits reach ~100
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert model.config.final_logit_softcapping is None  # the forward no longer caps the hidden states
    with output_projection_attached(model):
        assert model.config.final_logit_softcapping == 30.0


def test_a_folder_whose_architectures_name_no_head_is_loaded_by_its_model_type(tiny_decoder, tmp_path, capsys):
    """A causal LM's folder without ``architectures`` was loaded as a masked LM and refused in transformers' words
    (AutoModelForMaskedLM "should be one of ..."), and so was a headless Llama, whose error never said what it lacked."""
    import json

    from lsr.encode.models import ModelNotFoundError
    from lsr.encode.splade import SpladeEncoder

    model, _, tokenizer = tiny_decoder
    for name, kind in (("no-architectures", LlamaForCausalLM), ("headless", LlamaModel)):
        folder = tmp_path / name
        kind(model.config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        if name == "no-architectures":
            config = json.loads((folder / "config.json").read_text())
            del config["architectures"]
            (folder / "config.json").write_text(json.dumps(config))
    encoder = SpladeEncoder.from_pretrained(str(tmp_path / "no-architectures"), device="cpu", query_max_length=64)
    assert type(encoder) is DecoderSpladeEncoder and encoder.encode_documents(["enzymes fold"]).nnz > 0
    from lsr.cli.main import main

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"_id": "long", "text": "enzyme " * 100}) + "\n")
    assert main(["encode", "--model", str(tmp_path / "no-architectures"), "--input", str(corpus), "--output",
                 str(tmp_path / "vectors.parquet"), "--max-length", "64", "--device", "cpu", "--quiet"]) == 0
    assert "1 truncated at 32 tokens" in capsys.readouterr().out  # each echoed copy keeps half: it said 64
    (tmp_path / "no-architectures" / "model.safetensors").unlink()  # a vectors file needs the terms, not the weights
    assert main(["index", str(tmp_path / "vectors.parquet"), str(tmp_path / "col"), "--pre-encoded", "--dense", "none",
                 "--quiet"]) == 0  # "could not load model ... no file named model.safetensors"
    with pytest.raises(ModelNotFoundError, match="has no LlamaForCausalLM head .* not a SPLADE model"):
        SpladeEncoder.from_pretrained(str(tmp_path / "headless"), device="cpu", query_max_length=64)
    LlamaForCausalLM(model.config).save_pretrained(tmp_path / "no-tokenizer")  # was told to install sentencepiece or tiktoken
    with pytest.raises(ModelNotFoundError, match="its folder lacks its tokenizer files"):
        SpladeEncoder.from_pretrained(str(tmp_path / "no-tokenizer"), device="cpu", query_max_length=64)


def test_each_constructor_refuses_the_other_kind_of_model(tiny_decoder):
    """``from_pretrained`` picks the class by the folder; a model given to the wrong constructor was pooled silently
    (a causal LM without its echo, a masked LM run causally)."""
    from transformers import BertConfig, BertForMaskedLM

    from lsr.encode.splade import SpladeEncoder

    _, reference, tokenizer = tiny_decoder
    with pytest.raises(ValueError, match="LlamaForCausalLM is a causal language model; give it to DecoderSpladeEncoder"):
        SpladeEncoder(reference, tokenizer, max_length=64, query_max_length=64, device="cpu")
    masked = BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ValueError, match="BertForMaskedLM is a masked language model, not a causal one"):
        DecoderSpladeEncoder(masked, tokenizer, max_length=64, query_max_length=64, device="cpu")
