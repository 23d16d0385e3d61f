"""What a sentence-transformers folder declares beside its transformer: prompts, lowercasing and SPLADE pooling.

Our encoders give ``SentenceTransformer``'s and ``SparseEncoder``'s vectors for the same folder, so they read what
those read: a folder's prompts were left out (an e5-style "query: " prefix), and its ``SpladePooling`` settings
(sum pooling, OpenSearch's ``log1p_relu``) were replaced by max over log1p∘relu, without a word.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

ACTIVATIONS = ("relu", "log1p_relu")  # log1p∘relu, and log1p∘log1p∘relu (OpenSearch's doc-only SPLADE)
DOCUMENT_PROMPT_NAMES = ("document", "passage", "corpus")  # SparseEncoder.encode_document's order


@dataclass(frozen=True)
class Prompts:
    """The texts put before each query and each document, as ``encode_query`` / ``encode_document`` do."""

    query: str = ""
    document: str = ""


def with_prompt(texts: list[str], prompt: str) -> list[str]:
    """Each text with ``prompt`` before it (sentence-transformers tokenises the two as one text)."""
    return [prompt + text for text in texts] if prompt else texts


def read_json(folder: str, name: str) -> dict:
    """``folder/name`` as a dict; {} when it is not there."""
    return _read(folder, name, dict, "a JSON object") or {}


def read_json_list(folder: str, name: str) -> list[dict]:
    """``folder/name`` as a list of objects (modules.json); [] when it is not there."""
    found = _read(folder, name, list, "a JSON list of modules") or []
    if not all(isinstance(m, dict) for m in found):
        raise ValueError(f"{os.path.join(folder, name)}: expected a JSON list of modules")
    return found


def load_json(path: str):
    """The JSON in ``path``; a ValueError naming the file where it is not JSON (json's own message named none)."""
    with open(path, encoding="utf-8") as fh:
        try:
            return json.load(fh)
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}): restore the model folder's file") from None


def _read(folder: str, name: str, kind: type, what: str):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    data = load_json(path)
    if not isinstance(data, kind):
        raise ValueError(f"{path}: expected {what}")
    return data


def declared_max_tokens(folder: str, tokenizer_limit: object) -> int | None:
    """The longest input a model folder declares, as ``SentenceTransformer`` reads it: ``sentence_bert_config.json``'s
    ``max_seq_length``, else the smaller of the tokenizer's ``model_max_length`` and the model's positions (GPT-2
    names them ``n_positions``); None where it declares none (tokenizers say 1e30 for "unknown")."""
    def usable(n: object) -> bool:
        return isinstance(n, int) and 0 < n < 100_000

    declared = read_json(folder, "sentence_bert_config.json").get("max_seq_length")
    if usable(declared):
        return int(declared)
    from lsr.encode.checks import usable_positions

    limits = [int(n) for n in (tokenizer_limit, usable_positions(read_json(folder, "config.json"))) if usable(n)]
    return min(limits) if limits else None


def read_lowercase(folder: str) -> bool:
    """``sentence_bert_config.json``'s ``do_lower_case``: sentence-transformers lowercases each text with its prompt
    (a Lowercase normaliser ahead of the tokenizer's own), whatever the tokenizer itself does (``lowercased``)."""
    return bool(read_json(folder, "sentence_bert_config.json").get("do_lower_case", False))


def read_prompts(folder: str) -> Prompts:
    """``config_sentence_transformers.json``'s prompts: "query" for queries, the first of document / passage / corpus
    for documents, else the ``default_prompt_name``'s."""
    config = read_json(folder, "config_sentence_transformers.json")
    prompts = config.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(p, str) for p in prompts.values()):
        raise ValueError(f"{folder}: config_sentence_transformers.json's prompts must map names to texts")
    default = prompts.get(config.get("default_prompt_name") or "", "")
    document = next((prompts[name] for name in DOCUMENT_PROMPT_NAMES if name in prompts), default)
    return Prompts(prompts.get("query", default), document)


def read_max_active_dims(folder: str) -> int | None:
    """``config_sentence_transformers.json``'s ``max_active_dims``: ``SparseEncoder`` keeps at most that many terms
    per vector (``SparseEncoder(..., max_active_dims=N).save``), which our ``top_k`` is; None where it sets none."""
    path = os.path.join(folder, "config_sentence_transformers.json")
    found = read_json(folder, "config_sentence_transformers.json").get("max_active_dims")
    if found is not None and (isinstance(found, bool) or not isinstance(found, int) or found <= 0):
        raise ValueError(f"{path}: max_active_dims must be a positive whole number or null, got {found!r}")
    return found


def read_splade_pooling(folder: str) -> tuple[str, str] | None:
    """(pooling, activation) of the folder's ``SpladePooling`` module (a plain or a routed SparseEncoder folder), or
    None when it has none (a plain masked-LM folder)."""
    modules = read_json_list(folder, "modules.json")
    paths = [m.get("path", "") for m in modules if str(m.get("type", "")).endswith("SpladePooling")]
    router = read_json(folder, "router_config.json")
    paths += [path for path, kind in (router.get("types") or {}).items() if str(kind).endswith("SpladePooling")]
    if not paths:
        return None
    config = read_json(os.path.join(folder, paths[0]), "config.json")
    pooling, activation = config.get("pooling_strategy", "max"), config.get("activation_function", "relu")
    if pooling not in ("max", "sum") or activation not in ACTIVATIONS:
        raise ValueError(f"{folder}: SpladePooling {pooling!r} with {activation!r} is not supported (pooling max or "
                         f"sum, activation {' or '.join(ACTIVATIONS)})")
    return pooling, activation
