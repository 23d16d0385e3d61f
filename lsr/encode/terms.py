"""A SPLADE model's term space (its vocabulary size and the token of every term id), read from its tokenizer and
config.json without loading its weights.

Why: indexing vectors that were encoded elsewhere (`lsr index --pre-encoded`) needs only the model's terms, to
check the file against them and to name them in the collection. Loading the weights for that cost a decoder
backbone's many GB of memory on a machine that encodes nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from lsr.encode.models import check_tokenizer_rows, load_with_hint, resolve_model

# config.json architectures whose head projects onto the vocabulary, as SpladeEncoder.from_pretrained loads them
VOCABULARY_HEADS = ("ForMaskedLM", "ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class ModelTerms:
    """What an index needs of a SPLADE model that encodes nothing: its name, vocabulary size and token per id."""

    name: str
    vocab_size: int
    vocab: list[str]


def vocabulary_of(tokenizer: Any, vocab_size: int) -> list[str]:
    """Token string per term id; ids the tokenizer does not name (padding rows of the head) get a placeholder."""
    vocab = [""] * vocab_size
    for token, i in tokenizer.get_vocab().items():
        if 0 <= i < vocab_size:
            vocab[i] = token
    return [token or f"[unused:{i}]" for i, token in enumerate(vocab)]


def load_tokenizer(name_or_path: str) -> Any:
    """The model's tokenizer alone: a plain BERT WordPiece folder without importing transformers (the tokenizer
    ``native_bert`` loads with its model, and the same one transformers would build), else transformers'."""
    from lsr.encode import native_bert

    folder = resolve_model(name_or_path)
    tokenizer = native_bert.load_tokenizer(folder) if os.path.isdir(folder) else None
    return tokenizer if tokenizer is not None else transformers_tokenizer(name_or_path)


def transformers_tokenizer(name_or_path: str) -> Any:
    """transformers' tokenizer of the model. One built from a BERT WordPiece tokenizer.json that ``native_bert``
    reads gets that reader's ``word_prefix``, so a long text is tokenised only as far as its kept tokens
    (``inputs.truncated_token_ids``): ``lsr train`` read a 21 MB text whole, 28 s and 2.7 GB for 256 tokens."""
    from lsr.encode import native_bert
    from transformers import AutoTokenizer

    tokenizer = load_with_hint(name_or_path, AutoTokenizer.from_pretrained)
    folder = resolve_model(name_or_path)
    native = native_bert.load_tokenizer(folder) if os.path.isdir(folder) else None
    if native is not None:
        tokenizer.word_prefix = native.word_prefix
    return tokenizer


def is_causal_lm(config: Any) -> bool:
    """A decoder-only LM, pooled by ``DecoderSpladeEncoder``'s echo: Llama and Mistral (``...ForCausalLM``), GPT-2
    (``GPT2LMHeadModel``, which the ``ForCausalLM`` test alone missed). Where the architectures name neither head (none
    listed, a bare ``LlamaModel``, a classifier), the model type says: one transformers loads only as a causal LM is
    one (a GPT-2 folder without ``architectures`` was loaded as a masked LM, and refused in transformers' words; a
    headless Llama's error did not say it lacked its head). ``config``: a transformers config or a config.json dict."""
    fields = config if isinstance(config, dict) else config.to_dict()
    names = [str(name) for name in fields.get("architectures") or []]
    if fields.get("is_decoder") or any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in names):
        return True
    if any(name.endswith("ForMaskedLM") for name in names) or not isinstance(fields.get("model_type"), str):
        return False  # none, or a config.json's stray value
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    kind = fields["model_type"]
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def model_terms(name_or_path: str) -> ModelTerms | None:
    """The terms of a model folder on disk (local, bundled or a cached hub snapshot) whose config.json names a
    vocabulary head and states ``vocab_size``; None otherwise: load the encoder, whose loader then downloads the
    model or says what is wrong with it."""
    folder = resolve_model(name_or_path)
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    size, heads = config.get("vocab_size"), config.get("architectures") or []
    headed = any(str(name).endswith(VOCABULARY_HEADS) for name in heads) or (not heads and is_causal_lm(config))
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or not headed:  # a causal LM without
        return None  # architectures loads by its model_type: its terms are read without its weights too
    tokenizer = load_tokenizer(name_or_path)
    check_tokenizer_rows(tokenizer, size, folder)  # a folder without tokenizer files gets a 5-token stand-in
    return ModelTerms(str(name_or_path), size, vocabulary_of(tokenizer, size))
