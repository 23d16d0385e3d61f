"""DecoderSpladeEncoder on a tiny randomly initialised causal LM (no decoder weights exist offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

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
