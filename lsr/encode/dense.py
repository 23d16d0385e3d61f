"""Dense side of hybrid search: a sentence-transformers bi-encoder (the faiss index is lsr.search.dense_index).

The encoder is plain ``transformers`` so sentence-transformers is not a runtime dependency, yet it
gives ``SentenceTransformer.encode``'s vectors for the same folder: the folder's ``modules.json``,
``sentence_bert_config.json`` and ``1_Pooling/config.json`` say the input length, the pooling and
whether a ``Normalize`` module follows, for queries and documents alike. A plain ``transformers``
folder without them gets mean pooling and L2 normalisation (cosine similarity by inner product).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal, Sequence, overload

import numpy as np
import torch

from lsr.encode.checks import check_length, check_whole, usable_positions
from lsr.encode import native_bert, packed_bert
from lsr.encode.batching import Pipeline, pad_multiple, right_pad
from lsr.encode.inputs import (EncodeInfo, model_max_tokens, report_truncation, resolve_device, resolve_dtype,
                               truncated_token_ids)
from lsr.encode.models import check_tokenizer_fits, load_with_hint, quiet_loader, resolve_model
from lsr.encode.st_folder import Prompts, read_json, read_json_list, read_lowercase, read_prompts, with_prompt
from lsr.encode.terms import transformers_tokenizer
from lsr.encode.texts import check_texts, is_blank, lowercased
from lsr.ingest.progress import progress_bar

log = logging.getLogger(__name__)

POOLING_KEYS = {  # 1_Pooling/config.json flag (sentence-transformers before 6) → our pooling name
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
}


@dataclass(frozen=True)
class SentenceConfig:
    """What a sentence-transformers folder says about turning token states into one vector."""

    pooling: str = "mean"
    normalize: bool = True
    lowercase: bool = False
    prompts: Prompts = Prompts()

    @classmethod
    def read(cls, folder: str) -> "SentenceConfig":
        """The folder's modules.json pipeline; the plain-transformers default when it has none."""
        modules = read_json_list(folder, "modules.json")
        if not modules:
            return cls()
        kinds = {m["type"].rsplit(".", 1)[-1]: m.get("path", "") for m in modules}
        unknown = set(kinds) - {"Transformer", "Pooling", "Normalize"}
        if unknown:
            raise ValueError(f"{folder}: sentence-transformers modules {sorted(unknown)} are not supported "
                             "(only Transformer, Pooling, Normalize)")
        pooling, prompts = "mean", read_prompts(folder)
        if "Pooling" in kinds:
            config = read_json(os.path.join(folder, kinds["Pooling"]), "config.json")
            pooling = _pooling_mode(folder, config)
            if config.get("include_prompt") is False and (prompts.query or prompts.document):
                raise ValueError(f"{folder}: pooling that leaves the prompt's tokens out (include_prompt false) is "
                                 "not supported")
        return cls(pooling, "Normalize" in kinds, read_lowercase(folder), prompts)


def _pooling_mode(folder: str, config: dict) -> str:
    """``pooling_mode`` (sentence-transformers 6: "mean", or a list of one) or one ``pooling_mode_*_tokens`` flag."""
    supported = sorted(set(POOLING_KEYS.values()))
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        mode = mode[0] if isinstance(mode, list) and len(mode) == 1 else mode
        if mode not in supported:
            raise ValueError(f"{folder}: pooling {mode!r} is not supported (one of {', '.join(supported)})")
        return mode
    chosen = [key for key, on in config.items() if key.startswith("pooling_mode_") and on is True]
    if len(chosen) != 1 or chosen[0] not in POOLING_KEYS:
        raise ValueError(f"{folder}: exactly one of {', '.join(POOLING_KEYS)} is supported, got {chosen or 'none'}")
    return POOLING_KEYS[chosen[0]]


class DenseEncoder:
    """Text → float32 embeddings, as ``SentenceTransformer.encode`` computes them for the same model folder.

    ``max_length`` (default: the folder's ``max_seq_length``) applies to queries and documents; longer
    texts are cut with a warning, and ``return_info`` says which. ``dtype`` "auto" runs bf16 (fp16) on
    a GPU, bf16 on a CPU that multiplies it natively (``cpu_has_native_bf16``: about twice fp32's speed,
    cosines ≥ 0.9999 to fp32) and fp32 on other CPUs; "fp32" gives ``SentenceTransformer``'s vectors to
    1e-5. Pooling and normalisation are fp32. On CPU a text's vector is the same bits in any batch (so a
    served query's does not depend on what else is in flight): BERT models attend text by text
    (``lsr.encode.packed_bert``), and other models run a forward per text below fp32.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_length: int | None = None,
                 config: SentenceConfig = SentenceConfig(), device: str | torch.device = "auto",
                 dtype: str | torch.dtype | None = "auto", name: str | None = None) -> None:
        self.device = resolve_device(device)
        check_tokenizer_fits(tokenizer, model)
        self.dtype = resolve_dtype(dtype, self.device, cpu_bf16=True) or next(model.parameters()).dtype
        self.model = model.to(self.device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        if max_length is None:  # not `max_length or`: 0 silently became the folder's length
            max_length = model_max_tokens(str(getattr(model, "name_or_path", "")), tokenizer)
        self.max_length = check_length(max_length, "max_length", model)
        self._positions = usable_positions(getattr(model, "config", None))  # what padding may not pass
        self.config = config
        self.name = name or getattr(model, "name_or_path", type(model).__name__)
        self.dim = int(model.config.hidden_size)
        # BERT encoders with mean pooling skip the padding (lsr.encode.packed_bert)
        self._packed = config.pooling == "mean" and packed_bert.supports(self.model)
        # Other models pad a batch to its longest text, which changes a low-precision vector's bits on CPU
        self._forward_per_text = not self._packed and self.device.type == "cpu" and self.dtype != torch.float32

    @property
    def pads_batches(self) -> bool:
        """Whether a batch costs every text its longest member's length (the service then groups similar lengths):
        not for packed BERT models, nor for a forward per text."""
        return not (self._packed or self._forward_per_text)

    @classmethod
    def from_pretrained(cls, name_or_path: str = "minilm", *, max_length: int | None = None,
                        device: str | torch.device = "auto", dtype: str | torch.dtype | None = "auto",
                        backend: str = "auto") -> "DenseEncoder":
        """Load a bundled short name (``minilm``), a local folder or a hub id.

        ``backend`` "auto" loads a mean-pooled BERT folder for inference without transformers
        (``native_bert``); "transformers" always uses it.
        """
        config = SentenceConfig.read(resolve_model(name_or_path))
        packed = config.pooling == "mean"  # the only pooling ``packed_bert`` gives, so the only one loaded natively
        loaded = native_bert.load_native(name_or_path, backend, native_bert.load_model if packed else None)
        if loaded is not None:
            model, tokenizer = loaded
        else:
            from transformers import AutoModel

            tokenizer = transformers_tokenizer(name_or_path)
            model = load_with_hint(name_or_path, quiet_loader(AutoModel))
        return cls(model, tokenizer, max_length=max_length, config=config, device=device, dtype=dtype,
                   name=str(name_or_path))

    @overload
    def encode_documents(self, texts: Sequence[str] | str, batch_size: int = ..., *, show_progress: bool = ...,
                         return_info: Literal[False] = ...) -> np.ndarray: ...
    @overload
    def encode_documents(self, texts: Sequence[str] | str, batch_size: int = ..., *, show_progress: bool = ...,
                         return_info: Literal[True]) -> tuple[np.ndarray, EncodeInfo]: ...

    def encode_documents(self, texts: Sequence[str] | str, batch_size: int = 32, *, show_progress: bool = False,
                         return_info: bool = False) -> np.ndarray | tuple[np.ndarray, EncodeInfo]:
        """[n, dim] float32 (with an EncodeInfo when ``return_info``); the folder's document prompt goes first."""
        return self._encode(texts, batch_size, show_progress, return_info, self.config.prompts.document)

    @overload
    def encode_queries(self, texts: Sequence[str] | str, batch_size: int = ..., *, show_progress: bool = ...,
                       return_info: Literal[False] = ...) -> np.ndarray: ...
    @overload
    def encode_queries(self, texts: Sequence[str] | str, batch_size: int = ..., *, show_progress: bool = ...,
                       return_info: Literal[True]) -> tuple[np.ndarray, EncodeInfo]: ...

    def encode_queries(self, texts: Sequence[str] | str, batch_size: int = 8, *, show_progress: bool = False,
                       return_info: bool = False) -> np.ndarray | tuple[np.ndarray, EncodeInfo]:
        """Passes of 8 length-sorted queries, padding-free for BERT models (``lsr.encode.packed_bert``). On
        one CPU thread a random micro-batch of 8 SciFact queries costs 8.7 ms a query (12-14 ms with
        padding), one of 32 costs 8.4 ms, and one query alone 20 ms. The folder's query prompt goes first."""
        return self._encode(texts, batch_size, show_progress, return_info, self.config.prompts.query)

    encode_query = encode_queries  # sentence-transformers' names (SentenceTransformer.encode_query)
    encode_document = encode_documents

    def _encode(self, texts: Any, batch_size: int, show_progress: bool, return_info: bool, prompt: str):
        """[n, dim] float32; empty texts get a zero vector (they match nothing, like an empty sparse vector).

        Batches of up to ``batch_size x max_length`` padded tokens through ``lsr.encode.batching``.
        """
        texts = check_texts(texts)
        batch_size = check_whole(batch_size, "batch_size", 1)
        live = np.asarray([i for i, t in enumerate(texts) if not is_blank(t)], np.int64)
        texts = with_prompt(texts, prompt)
        if self.config.lowercase:
            texts = [lowercased(t) for t in texts]
        out = np.zeros((len(texts), self.dim), np.float32)
        n_tokens = np.zeros(len(texts), np.int64)
        pad = self.tokenizer.pad_token_id or 0

        def tokenize(start: int, stop: int) -> list[list[int]]:
            rows, lengths = truncated_token_ids(self.tokenizer, [texts[i] for i in live[start:stop]], self.max_length)
            n_tokens[live[start:stop]] = lengths
            return rows

        bar = progress_bar("dense", len(live), enabled=show_progress and len(live) > 0)
        pipeline = Pipeline(self.device, max_tokens=batch_size * self.max_length, batch_size=batch_size)
        padded = lambda rows: right_pad(rows, pad, pad_multiple(self.device), self._positions)  # noqa: E731
        for positions, pooled in pipeline.run(len(live), tokenize, padded, self._encode_batch):
            out[live[positions]] = pooled
            bar.update(len(positions))
        bar.close()
        info: EncodeInfo = report_truncation(log, n_tokens, self.max_length)
        return (out, info) if return_info else out

    @torch.inference_mode()
    def _encode_batch(self, input_ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        if self._packed:
            pooled = packed_bert.mean_pooled(self.model, input_ids, mask)
        elif self._forward_per_text:  # right-padded rows: each text is its first ``length`` positions
            pooled = torch.cat([self._pooled(input_ids[i:i + 1, :length], mask[i:i + 1, :length])
                                for i, length in enumerate(mask.sum(dim=1).tolist())])
        else:
            pooled = self._pooled(input_ids, mask)
        if self.config.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.cpu().numpy()

    def _pooled(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        return _pool(hidden, mask, self.config.pooling)


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """sentence-transformers' Pooling module for one mode, over [B, L, H] fp32 states."""
    if pooling == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "max":
        return hidden.masked_fill(m == 0, -1e9).max(dim=1).values
    counts = m.sum(1).clamp(min=1e-9)
    return (hidden * m).sum(1) / (counts.sqrt() if pooling == "mean_sqrt_len_tokens" else counts)
