"""BERT encoders for inference, loaded from a model folder without importing transformers.

Why: importing transformers' BERT pulls in torch._dynamo and torch.distributed and costs about 3 s and
250 MB at every process start, more than ``lsr search`` then spends on everything else. A plain BERT
folder (config.json, model.safetensors, tokenizer.json: the bundled models, ``lsr train``'s output,
most SPLADE and sentence-transformers BERT checkpoints) needs only its weights, its WordPiece tokenizer
and the forwards of ``packed_bert`` (padding-free on CPU, padded on a GPU), which run every BERT encode
anyway. The modules here carry the names ``BertModel`` gives its parts, so those forwards and the
safetensors keys fit them as they are, and the vectors are the same bits. Anything else (other
architectures, .bin or sharded weights, a tokenizer.json that its tokenizer_config.json contradicts,
training) returns None here and loads through transformers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
SPECIAL_ROLES = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
IGNORED_KEYS = ("pooler.", "embeddings.position_ids", "embeddings.token_type_ids")  # unused by our forward
# A character class, left open: ASCII whitespace and punctuation, and the other spaces and the common punctuation
# of other scripts (no-break and ideographic spaces, dashes and quotes, CJK, full-width, Arabic and Devanagari
# marks), each a word break to BERT's normaliser and pre-tokenizer: without them a 4 MB text spaced by U+00A0 was
# read whole (3.5 s). Not Python's ``\s``: it takes \x1c-\x1f and \x85, control characters the normaliser drops,
# which joins the words around them.
WORD_BREAKS = (r"[ \t\n\r!-/:-@\[-`{-~\u00a0\u1680\u2000-\u200a\u2010-\u2029\u202f\u205f\u3000-\u3003"
               r"\u3008-\u3011\u3014-\u301f\uff01-\uff03\uff05-\uff0a\uff0c-\uff0f\uff1a\uff1b\uff1f\uff20"
               r"\uff3b-\uff3d\uff3f\uff5b\uff5d\uff5f-\uff65\u060c\u061b\u061f\u06d4\u0964\u0965")
CJK_IDEOGRAPHS = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # within those BERT's normaliser spaces


@dataclass(frozen=True)
class BertShape:
    """The config.json fields the forward needs (``packed_bert`` reads them as transformers' config)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    tie_word_embeddings: bool
    position_embedding_type: str = "absolute"
    is_decoder: bool = False

    @classmethod
    def read(cls, config: dict) -> "BertShape | None":
        """None unless the config is a plain absolute-position BERT encoder with exact GELU."""
        plain = (config.get("model_type") == "bert" and config.get("hidden_act") == "gelu"
                 and config.get("position_embedding_type", "absolute") == "absolute"
                 and not config.get("is_decoder") and not config.get("add_cross_attention"))
        try:
            return cls(*(int(config[k]) for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                                  "intermediate_size", "max_position_embeddings", "type_vocab_size")),
                       float(config.get("layer_norm_eps", 1e-12)), bool(config.get("tie_word_embeddings", True))) \
                if plain else None
        except (KeyError, TypeError, ValueError):
            return None


class _Embeddings(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.word_embeddings = _embedding(shape.vocab_size, shape.hidden_size)
        self.position_embeddings = _embedding(shape.max_position_embeddings, shape.hidden_size)
        self.token_type_embeddings = _embedding(shape.type_vocab_size, shape.hidden_size)
        self.LayerNorm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """``BertEmbeddings`` with token type 0, its additions in its order."""
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(embeddings + self.position_embeddings(position_ids))


def _embedding(rows: int, dim: int) -> nn.Embedding:
    """An embedding table left uninitialised: its random init on the meta device imports torch._dynamo (1.7 s)."""
    return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))


class _SelfAttention(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.num_attention_heads = shape.num_attention_heads
        self.attention_head_size = shape.hidden_size // shape.num_attention_heads
        self.query, self.key, self.value = (nn.Linear(shape.hidden_size, shape.hidden_size) for _ in range(3))


class _DenseNorm(nn.Module):
    """A linear map whose output ``packed_bert`` adds to the residual and normalises."""

    def __init__(self, n_in: int, shape: BertShape) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, shape.hidden_size)
        self.LayerNorm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)


class _Attention(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.self = _SelfAttention(shape)
        self.output = _DenseNorm(shape.hidden_size, shape)


class _Intermediate(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.dense = nn.Linear(shape.hidden_size, shape.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.attention = _Attention(shape)
        self.intermediate = _Intermediate(shape)
        self.output = _DenseNorm(shape.intermediate_size, shape)


class _Layers(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(shape) for _ in range(shape.num_hidden_layers))


class _Native(nn.Module):
    """What callers read of a transformers model besides its modules: its config, folder and dtype."""

    def __init__(self, shape: BertShape, name_or_path: str) -> None:
        super().__init__()
        self.config = shape
        self.name_or_path = name_or_path

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class NativeBertModel(_Native):
    """``BertModel``'s weights (no pooler) for ``packed_bert.last_hidden_packed``; it has no forward of its own."""

    def __init__(self, shape: BertShape, name_or_path: str = "") -> None:
        super().__init__(shape, name_or_path)
        self.embeddings = _Embeddings(shape)
        self.encoder = _Layers(shape)

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings


class _Transform(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.dense = nn.Linear(shape.hidden_size, shape.hidden_size)
        self.LayerNorm = nn.LayerNorm(shape.hidden_size, eps=shape.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(nn.functional.gelu(self.dense(x)))


class _Predictions(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.transform = _Transform(shape)
        self.decoder = nn.Linear(shape.hidden_size, shape.vocab_size)


class _MaskedLMHead(nn.Module):
    def __init__(self, shape: BertShape) -> None:
        super().__init__()
        self.predictions = _Predictions(shape)


class NativeBertForMaskedLM(_Native):
    """``BertForMaskedLM``'s weights: the encoder and the MLM head whose decoder SPLADE pools through."""

    def __init__(self, shape: BertShape, name_or_path: str = "") -> None:
        super().__init__(shape, name_or_path)
        self.bert = NativeBertModel(shape, name_or_path)
        self.cls = _MaskedLMHead(shape)

    def get_input_embeddings(self) -> nn.Module:
        return self.bert.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.cls.predictions.decoder


class NativeTokenizer:
    """A BERT WordPiece tokenizer.json behind the calls our encoders make of a transformers tokenizer
    (``backend`` is the ``tokenizers.Tokenizer`` for anything else)."""

    def __init__(self, backend: Any, specials: dict[str, str], model_max_length: int | None, *,
                 chinese_chars: bool = True) -> None:
        self.backend = backend
        # Its normaliser works character by character, and its pre-tokenizer starts a new word before ASCII
        # whitespace and punctuation (and CJK ideographs, where the normaliser spaces them) before WordPiece reads
        # each word alone: a text cut there gives the whole text's first tokens (inputs.truncated_token_ids).
        self._word_breaks = re.compile(WORD_BREAKS + (CJK_IDEOGRAPHS if chinese_chars else "") + "]")
        self._special_texts = sorted(set(specials.values()))
        vocab = backend.get_vocab(with_added_tokens=True)
        self._vocab = vocab
        self.all_special_ids = sorted({vocab[token] for token in specials.values()})
        self.pad_token_id = vocab[specials["pad_token"]]
        self.bos_token_id = self.eos_token_id = None
        self.model_max_length = model_max_length

    def __call__(self, texts: list[str] | str, *, add_special_tokens: bool = True, truncation: bool = False,
                 verbose: bool = False) -> dict[str, list]:
        """``{"input_ids": ...}``: a list of ids per text, or one list for one string (as transformers answers)."""
        if truncation:
            raise ValueError("NativeTokenizer does not truncate; lsr.encode.inputs.truncated_token_ids does")
        single = isinstance(texts, str)
        # encode_batch_fast skips the character offsets, which nothing here reads: 8% less time on SciFact's documents
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        rows = [e.ids for e in encode([texts] if single else texts, add_special_tokens=add_special_tokens)]
        return {"input_ids": rows[0] if single else rows}

    def word_prefix(self, text: str, chars: int) -> str:
        """``text`` cut before its last word break within ``chars`` characters, so that its tokens are the whole
        text's first ones; the same object when it is not cut (shorter, or no break in the second half of the span).
        A special token written in the text ("[SEP]") is matched before any word is split, so a cut never falls
        inside one."""
        if len(text) <= chars:
            return text
        cut = None
        for cut in self._word_breaks.finditer(text, chars // 2, chars):
            pass
        if cut is None:
            return text
        at = cut.start()
        for token in self._special_texts:
            inside = text.rfind(token, max(0, at - len(token) + 1), at + len(token) - 1)  # one spanning the cut
            if inside != -1:
                at = inside
        return text[:at]

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab)


def load_tokenizer(folder: str) -> NativeTokenizer | None:
    """The folder's tokenizer.json when it is a BERT WordPiece tokenizer that its tokenizer_config.json agrees with
    (what transformers builds from either is then the same tokenizer), else None."""
    config = _read_json(folder, "tokenizer_config.json")
    raw = _read_json(folder, TOKENIZER)
    if config is None or raw is None or config.get("tokenizer_class") not in ("BertTokenizer", "BertTokenizerFast"):
        return None
    specials = {role: config.get(role, f"[{role.split('_')[0].upper()}]") for role in SPECIAL_ROLES}
    if not all(isinstance(token, str) for token in specials.values()):
        return None
    expected_normalizer = {"type": "BertNormalizer", "clean_text": True,
                           "handle_chinese_chars": config.get("tokenize_chinese_chars", True),
                           "strip_accents": config.get("strip_accents"), "lowercase": config.get("do_lower_case", True)}
    template = [{"SpecialToken": {"id": specials["cls_token"], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": specials["sep_token"], "type_id": 0}}]
    wordpiece = raw.get("model") or {}
    declared = (_read_json(folder, "special_tokens_map.json") or {}).get("additional_special_tokens")
    added = {entry.get("content") for entry in (config.get("added_tokens_decoder") or {}).values()
             if isinstance(entry, dict)}
    # transformers builds its WordPiece from the vocabulary with the default settings, and adds the special tokens
    # that special_tokens_map.json and added_tokens_decoder declare: a folder that says otherwise loads with it
    agrees = (raw.get("normalizer") == expected_normalizer
              and raw.get("pre_tokenizer") == {"type": "BertPreTokenizer"}
              and wordpiece.get("type") == "WordPiece"
              and wordpiece.get("unk_token") == specials["unk_token"]
              and wordpiece.get("continuing_subword_prefix", "##") == "##"
              and wordpiece.get("max_input_chars_per_word", 100) == 100
              and not declared and added <= set(specials.values())
              and (raw.get("post_processor") or {}).get("type") == "TemplateProcessing"
              and raw["post_processor"].get("single") == template
              and {t.get("content") for t in raw.get("added_tokens", [])} <= set(specials.values())
              and not config.get("additional_special_tokens") and not config.get("extra_special_tokens"))
    if not agrees:
        return None
    import tokenizers

    backend = tokenizers.Tokenizer.from_file(os.path.join(folder, TOKENIZER))
    backend.no_truncation()
    backend.no_padding()
    if any(backend.token_to_id(token) is None for token in specials.values()):
        return None
    limit = config.get("model_max_length")
    return NativeTokenizer(backend, specials, int(limit) if isinstance(limit, int) else None,
                           chinese_chars=expected_normalizer["handle_chinese_chars"])


def load_masked_lm(folder: str) -> tuple[NativeBertForMaskedLM, NativeTokenizer] | None:
    """A ``BertForMaskedLM`` folder as (model, tokenizer) in eval mode, or None (load it with transformers)."""
    found = _load(folder, ("BertForMaskedLM",), NativeBertForMaskedLM)
    if found is None:
        return None
    model, weights, tokenizer = found
    weights = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in weights.items()}
    head, tied = "cls.predictions.", model.config.tie_word_embeddings
    bias, decoder = weights.pop(head + "decoder.bias", None), weights.pop(head + "decoder.weight", None)
    head_bias = weights.pop(head + "bias", None)  # the decoder's bias where tied; unused by transformers' forward if not
    weights[head + "decoder.bias"] = _tied(bias, head_bias) if tied else bias
    weights[head + "decoder.weight"] = _tied(decoder, weights.get("embeddings.word_embeddings.weight")) if tied else decoder
    body = {k: v for k, v in weights.items() if not k.startswith("cls.")}
    if not _assign(model.bert, body) or not _assign(model.cls, {k[4:]: v for k, v in weights.items() if k.startswith("cls.")}):
        return None
    if tied:
        model.cls.predictions.decoder.weight = model.bert.embeddings.word_embeddings.weight
    return model.eval(), tokenizer


def load_model(folder: str) -> tuple[NativeBertModel, NativeTokenizer] | None:
    """A BERT encoder folder (``AutoModel``'s view: an MLM checkpoint's ``bert.`` part too) as (model, tokenizer), or None."""
    found = _load(folder, ("BertModel", "BertForMaskedLM"), NativeBertModel)
    if found is None:
        return None
    model, weights, tokenizer = found
    prefixed = any(k.startswith("bert.") for k in weights)
    body = {k[len("bert."):]: v for k, v in weights.items() if k.startswith("bert.")} if prefixed else weights
    return (model.eval(), tokenizer) if _assign(model, {k: v for k, v in body.items() if not k.startswith("cls.")}) else None


def _load(folder: str, architectures: tuple[str, ...], kind: type) -> tuple[nn.Module, dict, NativeTokenizer] | None:
    """(empty ``kind`` module, the folder's tensors, its tokenizer) when the folder is a plain BERT of ``architectures``."""
    config = _read_json(folder, "config.json")
    if config is None or not set(config.get("architectures") or ["BertModel"]) <= set(architectures):
        return None
    shape = BertShape.read(config)
    if shape is None or not os.path.isfile(os.path.join(folder, WEIGHTS)):
        return None
    tokenizer = load_tokenizer(folder)
    if tokenizer is None:
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with torch.device("meta"):
        model = kind(shape, folder)
    try:
        weights = load_file(os.path.join(folder, WEIGHTS))
    except SafetensorError as exc:
        from lsr.encode.models import load_error

        raise load_error(folder, exc) from None
    return model, weights, tokenizer


def _tied(*tensors: torch.Tensor | None) -> torch.Tensor | None:
    """The tensor of a tied parameter stored under several names; None when none is, or when they differ (which
    one transformers keeps is then its call, so the folder is left to it)."""
    given = [t for t in tensors if t is not None]
    return given[0] if given and all(torch.equal(given[0], t) for t in given[1:]) else None


def _assign(module: nn.Module, weights: dict[str, torch.Tensor | None]) -> bool:
    """Give ``module`` exactly these tensors (legacy gamma/beta names read as weight/bias); False if any is missing,
    unknown or of the wrong shape."""
    named = {}
    for key, tensor in weights.items():
        if key.startswith(IGNORED_KEYS):
            continue
        if key.endswith(".gamma") or key.endswith(".beta"):
            key = key.rsplit(".", 1)[0] + (".weight" if key.endswith(".gamma") else ".bias")
        named[key] = tensor
    expected = module.state_dict()
    if set(named) != set(expected) or any(named[k] is None or named[k].shape != expected[k].shape for k in expected):
        return False
    module.load_state_dict(named, assign=True)
    return True


def _read_json(folder: str, name: str) -> dict | None:
    path = os.path.join(folder, name)
    try:
        with open(path, encoding="utf-8") as fh:
            found = json.load(fh)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


BACKENDS = ("auto", "transformers")


def load_native(name_or_path: str, backend: str,
                loader: Callable[[str], tuple[nn.Module, NativeTokenizer] | None] | None
                ) -> tuple[nn.Module, NativeTokenizer] | None:
    """``loader``'s (model, tokenizer) for a local folder when ``backend`` is "auto" (CPU or GPU); None means
    load with transformers ("transformers" always does: training needs its modules and ``save_pretrained``), as
    does a model kind with no ``loader`` here."""
    from lsr.encode.models import resolve_model

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if loader is None or backend != "auto":
        return None
    folder = resolve_model(name_or_path)
    return loader(folder) if os.path.isdir(folder) else None
