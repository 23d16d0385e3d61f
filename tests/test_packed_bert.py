"""The padding-free BERT forward equals transformers' padded one on the real MiniLM, ragged batches included."""

from __future__ import annotations

import pytest
import torch

from lsr.encode import packed_bert
from lsr.encode.dense import DenseEncoder


@pytest.fixture(scope="module")
def minilm():
    return DenseEncoder.from_pretrained("minilm", device="cpu", dtype="fp32")


def padded_mean(model, input_ids, mask):
    hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1)


def test_equals_the_padded_forward_on_ragged_real_text(minilm, scifact):
    assert packed_bert.supports(minilm.model)
    texts = list(scifact.queries.values())[:12] + ["x", scifact.doc_texts([next(iter(scifact.corpus))])[0]]
    enc = minilm.tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    lengths = enc["attention_mask"].sum(1)
    assert lengths.min() <= 3 and lengths.max() == 128  # one text is all padding but 3 tokens, one fills the width
    with torch.inference_mode():
        want = padded_mean(minilm.model, enc["input_ids"], enc["attention_mask"])
        got = packed_bert.mean_pooled(minilm.model, enc["input_ids"], enc["attention_mask"])
        hidden = packed_bert.last_hidden_packed(minilm.model, enc["input_ids"], enc["attention_mask"].bool())
    assert hidden.shape == (int(lengths.sum()), minilm.dim)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_the_gpus_padded_attention_equals_the_cpus_text_by_text(minilm, scifact):
    """A GPU attends over the padded batch in one launch; on CPU each text attends alone (same bits in any batch)."""
    texts = list(scifact.queries.values())[:9] + ["x"]
    enc = minilm.tokenizer(texts, padding=True, return_tensors="pt")
    keep = enc["attention_mask"].bool()
    layer = minilm.model.encoder.layer[0].attention.self
    with torch.inference_mode():
        x = minilm.model.embeddings(input_ids=enc["input_ids"])[keep]
        padded = packed_bert._attention(layer, x, keep, per_text=False)
        per_text = packed_bert._attention(layer, x, keep)
    assert per_text.shape == x.shape
    torch.testing.assert_close(per_text, padded, rtol=0, atol=1e-5)


def test_other_models_keep_their_own_forward(minilm, splade):
    assert not packed_bert.supports(splade.model)  # BertForMaskedLM: the SPLADE encoder's own path
    minilm.model.train()
    try:
        assert not packed_bert.supports(minilm.model)  # dropout would differ
    finally:
        minilm.model.eval()
