"""SPLADE encoders: text → SparseBatch.

The transformer runs with its vocabulary projection swapped out, so it returns the hidden
states that feed the LM head; ``lsr.kernels.splade_max_pool`` then applies head + bias +
log1p∘relu + masked max without materialising B×L×V logits.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from lsr.encode.inputs import check_texts, resolve_device, token_ids
from lsr.encode.models import load_with_hint, quiet_loader
from lsr.kernels import splade_max_pool
from lsr.kernels.pool_torch import splade_sum_pool_chunked
from lsr.sparse import SparseBatch

log = logging.getLogger(__name__)

POOLINGS = ("max", "sum")


@dataclass
class EncodeInfo:
    """Per-text facts of one encode call that callers may surface (e.g. the service flags truncation)."""

    truncated: np.ndarray  # bool per input text
    n_tokens: np.ndarray  # int per input text, before truncation


def _detach_output_projection(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Swap the vocabulary projection for Identity so the model returns pre-projection hidden states.

    Returns the projection's weight [V, H] and bias [V] (None if it has none). Works for any
    model whose ``get_output_embeddings()`` is a Linear: BERT/RoBERTa MLM heads, causal LM heads.
    """
    head = getattr(model, "_lsr_projection", None) or model.get_output_embeddings()
    if isinstance(model.get_output_embeddings(), torch.nn.Identity) and head is not None:
        return head.weight.detach(), None if head.bias is None else head.bias.detach()  # already detached
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"{type(model).__name__} has no Linear vocabulary projection; cannot build a SPLADE encoder")
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if child is head:
                setattr(module, child_name, torch.nn.Identity())
                object.__setattr__(model, "_lsr_projection", head)  # not a submodule: keeps state_dict clean
                return head.weight.detach(), None if head.bias is None else head.bias.detach()
    raise ValueError("could not locate the output projection inside the model")


def vocabulary_of(tokenizer: Any, vocab_size: int) -> list[str]:
    """Token string per term id; ids the tokenizer does not name (padding rows of the head) get a placeholder."""
    vocab = [""] * vocab_size
    for token, i in tokenizer.get_vocab().items():
        if 0 <= i < vocab_size:
            vocab[i] = token
    return [token or f"[unused:{i}]" for i, token in enumerate(vocab)]


def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def _to_sparse(pooled: torch.Tensor, top_k: int | None, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[B, V] dense scores → CSR parts, keeping weights > threshold and at most top_k per row."""
    pooled = pooled.float()
    if top_k is not None and top_k < pooled.shape[1]:
        kth = torch.topk(pooled, top_k, dim=1).values[:, -1:]
        pooled = torch.where(pooled >= kth, pooled, torch.zeros_like(pooled))
    rows, cols = torch.nonzero(pooled > threshold, as_tuple=True)
    values = pooled[rows, cols]
    counts = torch.bincount(rows, minlength=pooled.shape[0])
    if top_k is not None:
        # Ties at the k-th weight may let a row keep more than top_k; trim them by term id.
        keep = torch.ones_like(rows, dtype=torch.bool)
        start = 0
        for r, c in enumerate(counts.tolist()):
            if c > top_k:
                seg = values[start : start + c]
                order = torch.argsort(-seg, stable=True)
                keep[start + order[top_k:]] = False
            start += c
        rows, cols, values = rows[keep], cols[keep], values[keep]
        counts = torch.bincount(rows, minlength=pooled.shape[0])
    indptr = np.zeros(pooled.shape[0] + 1, np.int64)
    np.cumsum(counts.cpu().numpy(), out=indptr[1:])
    return indptr, cols.cpu().numpy(), values.cpu().numpy()


class SpladeEncoder:
    """Symmetric SPLADE: the same MLM encodes queries and documents.

    Options: ``pooling`` ("max" or "sum"), ``top_k`` / ``threshold`` pruning per vector,
    ``query_expansion`` / ``doc_expansion`` (False keeps only the input's own tokens).
    """

    auto_model_class = "AutoModelForMaskedLM"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        max_length: int = 256,
        query_max_length: int = 64,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        pooling: str = "max",
        top_k: int | None = None,
        threshold: float = 0.0,
        query_expansion: bool = True,
        doc_expansion: bool = True,
        impl: str = "auto",
        name: str | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        for label, value in (("max_length", max_length), ("query_max_length", query_max_length)):
            if not isinstance(value, int) or value < 4:
                raise ValueError(f"{label} must be an integer ≥ 4, got {value!r}")
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k must be positive or None, got {top_k}")
        self.device = resolve_device(device)
        self.model = model.to(self.device, dtype=dtype).eval()
        self.weight, self.bias = _detach_output_projection(self.model)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.query_max_length = query_max_length
        self.pooling = pooling
        self.top_k = top_k
        self.threshold = float(threshold)
        self.query_expansion = query_expansion
        self.doc_expansion = doc_expansion
        self.impl = impl
        self.name = name or getattr(model, "name_or_path", type(model).__name__)
        self.vocab_size = int(self.weight.shape[0])
        self.vocab = vocabulary_of(tokenizer, self.vocab_size)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._special_ids = special
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "splade-tiny",
        *,
        max_length: int = 256,
        query_max_length: int = 64,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        **options: Any,
    ):
        """Load a hub id, a local folder, or a bundled short name (``splade-tiny``)."""
        import transformers

        tokenizer = load_with_hint(name_or_path, transformers.AutoTokenizer.from_pretrained)
        model = load_with_hint(name_or_path, quiet_loader(getattr(transformers, cls.auto_model_class)))
        return cls(
            model, tokenizer, max_length=max_length, query_max_length=query_max_length,
            device=device, dtype=dtype, name=str(name_or_path), **options,
        )

    # ------------------------------------------------------------------ public API
    def encode_documents(
        self, texts: Sequence[str] | str, batch_size: int = 32, *, show_progress: bool = False, return_info: bool = False
    ):
        """Encode documents (``max_length`` tokens, ``doc_expansion``); returns SparseBatch in input order."""
        return self._encode(texts, self.max_length, self.doc_expansion, batch_size, show_progress, return_info)

    def encode_queries(
        self, texts: Sequence[str] | str, batch_size: int = 64, *, show_progress: bool = False, return_info: bool = False
    ):
        """Encode queries (``query_max_length`` tokens, ``query_expansion``); returns SparseBatch in input order."""
        return self._encode(texts, self.query_max_length, self.query_expansion, batch_size, show_progress, return_info)

    # ------------------------------------------------------------------ internals
    def _tokenize(self, texts: list[str], max_length: int) -> tuple[list[list[int]], np.ndarray]:
        """Token ids with special tokens, truncated to max_length keeping trailing special tokens."""
        enc = token_ids(self.tokenizer, texts, add_special_tokens=True, truncation=False)
        lengths = np.fromiter((len(ids) for ids in enc), dtype=np.int64, count=len(enc))
        out = []
        for ids in enc:
            if len(ids) > max_length:
                tail = 0
                while tail < len(ids) and ids[len(ids) - 1 - tail] in self._special_ids:
                    tail += 1
                ids = ids[: max_length - tail] + ids[len(ids) - tail :]
            out.append(ids)
        return out, lengths

    def _batch_inputs(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, pool_mask); the pool mask marks positions that may win the max."""
        input_ids, mask = _right_pad(ids, self._pad_id)
        return input_ids, mask, mask

    def _pool(self, hidden: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(hidden.dtype)
        bias = None if self.bias is None else self.bias.to(hidden.dtype)
        if self.pooling == "sum":
            return splade_sum_pool_chunked(hidden, weight, bias, pool_mask)
        return splade_max_pool(hidden, weight, bias, pool_mask, impl=self.impl)

    def _own_tokens_mask(self, rows: list[list[int]]) -> torch.Tensor:
        keep = torch.zeros((len(rows), self.vocab_size), dtype=torch.bool, device=self.device)
        for i, row in enumerate(rows):
            own = [t for t in set(row) if t not in self._special_ids and t < self.vocab_size]
            keep[i, own] = True
        return keep

    @torch.inference_mode()
    def _encode_batch(self, rows: list[list[int]], expansion: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        input_ids, attention_mask, pool_mask = (t.to(self.device) for t in self._batch_inputs(rows))
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        pooled = self._pool(hidden, pool_mask)
        if not expansion:
            pooled = pooled * self._own_tokens_mask(rows)
        return _to_sparse(pooled, self.top_k, self.threshold)

    def _encode(
        self, texts: Any, max_length: int, expansion: bool, batch_size: int, show_progress: bool, return_info: bool
    ):
        texts = check_texts(texts)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        live = [i for i, t in enumerate(texts) if t.strip()]
        rows, lengths = self._tokenize([texts[i] for i in live], max_length) if live else ([], np.zeros(0, np.int64))
        truncated = np.zeros(len(texts), bool)
        n_tokens = np.zeros(len(texts), np.int64)
        truncated[live] = lengths > max_length
        n_tokens[live] = lengths
        if truncated.any():
            log.warning(
                "%d of %d texts were longer than %d tokens and were truncated (longest: %d tokens)",
                int(truncated.sum()), len(texts), max_length, int(lengths.max()),
            )
        # Longest first, so each batch pads little and memory peaks at the start.
        order = sorted(range(len(rows)), key=lambda j: -len(rows[j]))
        per_row: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int32), np.zeros(0, np.float32))] * len(texts)
        progress = _progress(len(rows), show_progress)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            indptr, indices, values = self._encode_batch([rows[j] for j in chunk], expansion)
            for k, j in enumerate(chunk):
                per_row[live[j]] = (indices[indptr[k] : indptr[k + 1]], values[indptr[k] : indptr[k + 1]])
            if progress is not None:
                progress.update(len(chunk))
        if progress is not None:
            progress.close()
        indptr = np.zeros(len(texts) + 1, np.int64)
        np.cumsum([len(ix) for ix, _ in per_row], out=indptr[1:])
        batch = SparseBatch(
            indptr,
            np.concatenate([ix for ix, _ in per_row]) if per_row else np.zeros(0, np.int32),
            np.concatenate([v for _, v in per_row]) if per_row else np.zeros(0, np.float32),
            self.vocab_size,
            self.vocab,
        )
        return (batch, EncodeInfo(truncated, n_tokens)) if return_info else batch


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="doc", desc="encode", smoothing=0.1)


class DecoderSpladeEncoder(SpladeEncoder):
    """SPLADE on a causal LM (Mistral-SPLADE): the input is echoed and only the second copy is pooled.

    A causal model's early tokens cannot see later ones; in the echoed copy every token has
    seen the whole text once. We pad on the right ourselves, whatever the tokenizer's
    ``padding_side``, so default position ids stay correct and pads never precede real tokens.
    """

    auto_model_class = "AutoModelForCausalLM"

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, echo: bool = True, **kwargs: Any) -> None:
        self.echo = echo
        super().__init__(model, tokenizer, **kwargs)
        if tokenizer.pad_token_id is None:
            self._pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self._bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []

    def _tokenize(self, texts: list[str], max_length: int) -> tuple[list[list[int]], np.ndarray]:
        """Text tokens only (no specials); each echoed copy gets half of what is left after BOS."""
        enc = token_ids(self.tokenizer, texts, add_special_tokens=False, truncation=False)
        lengths = np.fromiter((len(ids) for ids in enc), dtype=np.int64, count=len(enc))
        budget = (max_length - len(self._bos)) // (2 if self.echo else 1)
        return [ids[:budget] for ids in enc], lengths + len(self._bos)  # reported length counts one copy

    def _batch_inputs(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.echo:
            return super()._batch_inputs([self._bos + r for r in ids])
        full = [self._bos + r + r for r in ids]
        input_ids, mask = _right_pad(full, self._pad_id)
        pool_mask = torch.zeros_like(mask)
        for i, r in enumerate(ids):
            start = len(self._bos) + len(r)
            pool_mask[i, start : start + len(r)] = 1
        return input_ids, mask, pool_mask

    def _encode(self, texts, max_length, expansion, batch_size, show_progress, return_info):
        # Truncation is judged on one copy of the text against the per-copy budget.
        per_copy = (max_length - len(self._bos)) // (2 if self.echo else 1) + len(self._bos)
        return super()._encode(texts, per_copy, expansion, batch_size, show_progress, return_info)


class InferenceFreeQueryEncoder:
    """Query side without a model (OpenSearch doc-only style): tokenize, weight each token by IDF.

    The IDF table comes from the model folder's ``idf.json`` ({token: weight}) when it ships one,
    else from an index's document frequencies. There is no forward pass at query time.
    """

    batch_gain = False  # a batch costs the sum of its texts, so the service encodes these without micro-batching

    def __init__(self, tokenizer: Any, idf: np.ndarray, *, query_max_length: int = 64, name: str | None = None):
        self.tokenizer = tokenizer
        self.idf = np.asarray(idf, dtype=np.float32)
        if self.idf.ndim != 1 or not np.all(np.isfinite(self.idf)) or (self.idf < 0).any():
            raise ValueError("idf must be a 1-D array of finite non-negative weights")
        self.vocab_size = len(self.idf)
        self.query_max_length = query_max_length
        self.name = name
        self.vocab = vocabulary_of(tokenizer, self.vocab_size)
        self._special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = "splade-tiny", *, idf: Any = None, index: Any = None, query_max_length: int = 64
    ) -> "InferenceFreeQueryEncoder":
        """IDF from (in order): the ``idf`` argument, ``idf.json`` in the model folder, the ``index``'s dfs."""
        from transformers import AutoTokenizer

        from lsr.encode.models import resolve_model

        tokenizer = load_with_hint(name_or_path, AutoTokenizer.from_pretrained)
        vocab_size = len(tokenizer.get_vocab())
        table_path = os.path.join(resolve_model(name_or_path), "idf.json")
        if idf is None and os.path.isfile(table_path):
            with open(table_path, encoding="utf-8") as fh:
                idf = json.load(fh)
        if idf is None and index is not None:
            idf = idf_from_doc_freqs(index.doc_freqs(), index.num_docs)
        if idf is None:
            raise ValueError(
                f"no IDF table for {name_or_path!r}: its folder has no idf.json; pass idf= or index= "
                "(an InvertedIndex whose document frequencies give the weights)"
            )
        if isinstance(idf, dict):
            vocab = tokenizer.get_vocab()
            table = np.zeros(max(vocab_size, max(vocab.values()) + 1), np.float32)
            for token, weight in idf.items():
                if token in vocab:
                    table[vocab[token]] = weight
            idf = table
        return cls(tokenizer, idf, query_max_length=query_max_length, name=str(name_or_path))

    def encode_queries(self, texts: Sequence[str] | str, batch_size: int = 0, *, return_info: bool = False, **_: Any):
        """One weight per distinct query token: its IDF. ``batch_size`` is accepted for API symmetry."""
        texts = check_texts(texts)
        enc = token_ids(self.tokenizer, texts, add_special_tokens=False, truncation=False)
        indptr, indices, values = [0], [], []
        lengths = np.zeros(len(texts), np.int64)
        for i, (text, ids) in enumerate(zip(texts, enc)):
            lengths[i] = len(ids)
            if not text.strip():
                ids = []
            terms = np.unique(np.asarray([t for t in ids[: self.query_max_length] if t not in self._special_ids], np.int64))
            terms = terms[terms < self.vocab_size]
            weights = self.idf[terms]
            keep = weights > 0
            indices.extend(terms[keep].tolist())
            values.extend(weights[keep].tolist())
            indptr.append(len(indices))
        batch = SparseBatch(np.asarray(indptr), np.asarray(indices), np.asarray(values), self.vocab_size, self.vocab)
        truncated = lengths > self.query_max_length
        return (batch, EncodeInfo(truncated, lengths)) if return_info else batch


def idf_from_doc_freqs(doc_freqs: np.ndarray, num_docs: int) -> np.ndarray:
    """BM25's non-negative IDF, ``log(1 + (N - df + 0.5) / (df + 0.5))``; 0 for terms no document has."""
    df = np.asarray(doc_freqs, dtype=np.float64)
    idf = np.log1p((num_docs - df + 0.5) / (df + 0.5))
    idf[df == 0] = 0.0
    return idf.astype(np.float32)
