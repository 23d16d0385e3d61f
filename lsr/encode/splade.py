"""SPLADE encoders: text → SparseBatch.

The transformer runs with its vocabulary projection swapped out, so it returns the hidden
states that feed the LM head; ``lsr.kernels.splade_max_pool`` then applies head + bias +
log1p∘relu + masked max without materialising B×L×V logits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any, Callable, Literal, Sequence, overload

import numpy as np
import torch

from lsr.encode.checks import check_length, check_number, check_switch, check_whole, usable_positions
from lsr.encode import native_bert, packed_bert
from lsr.encode.batching import Pipeline, pad_multiple, right_pad, scatter_csr
from lsr.encode.inputs import (DEFAULT_MAX_TOKENS, EncodeInfo, model_max_tokens, report_truncation, resolve_device,
                               resolve_dtype, token_ids, truncated_token_ids)
from lsr.encode.idf import idf_of_index
from lsr.encode.models import check_tokenizer_fits, document_length, load_with_hint, quiet_loader, resolve_model
from lsr.encode.st_folder import (ACTIVATIONS, Prompts, load_json, read_lowercase, read_max_active_dims, read_prompts,
                                  read_splade_pooling, with_prompt)
from lsr.encode.terms import is_causal_lm, load_tokenizer, transformers_tokenizer, vocabulary_of
from lsr.encode.texts import check_texts, is_blank, lowercased
from lsr.ingest.progress import progress_bar
from lsr.kernels import splade_max_pool
from lsr.kernels.pool import check_impl
from lsr.kernels.pool_torch import splade_sum_pool_chunked
from lsr.sparse import SparseBatch, short_repr

log = logging.getLogger(__name__)

POOLINGS = ("max", "sum")
IDF_TABLE = "idf.json"  # {token: weight}: an inference-free model's query side


def default_query_length(folder: str, tokenizer: Any) -> int:
    """Query tokens when none are asked for: the model's own limit (``model_max_tokens``), at most
    ``DEFAULT_MAX_TOKENS`` (512). A paragraph-long query (~250 tokens) is never cut; the old fixed 64 cut them."""
    return min(model_max_tokens(folder, tokenizer), DEFAULT_MAX_TOKENS)


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
                object.__setattr__(model, "_lsr_projection_slot", (module, child_name))
                return head.weight.detach(), None if head.bias is None else head.bias.detach()
    raise ValueError("could not locate the output projection inside the model")


def _check_model_kind(model: torch.nn.Module, *, decoder: bool) -> None:
    """A causal LM given to SpladeEncoder was pooled at every position, without the echo, and a masked LM given to
    DecoderSpladeEncoder ran causally, both silently: ``from_pretrained`` picks the class, and the constructors
    refuse the other kind."""
    kind = type(model).__name__
    if decoder and kind.endswith("ForMaskedLM"):
        raise ValueError(f"{kind} is a masked language model, not a causal one; give it to SpladeEncoder")
    if not decoder and kind.endswith(("ForCausalLM", "LMHeadModel")):
        raise ValueError(f"{kind} is a causal language model; give it to DecoderSpladeEncoder (SpladeEncoder."
                         "from_pretrained picks it for a causal LM's folder)")


def _take_logit_softcap(model: torch.nn.Module) -> float | None:
    """The cap of a model whose forward caps its logits, ``cap * tanh(logits / cap)`` (Gemma 2's
    ``final_logit_softcapping``), turned off in its forward: with the projection detached it capped the hidden states
    instead (a Gemma 2 weight of 4.40 where the logits gave 3.43). The encoder caps the pooled logits itself
    (``softcapped``). None for a model that caps nothing."""
    if hasattr(model, "_lsr_softcap"):  # taken already
        return model._lsr_softcap
    config = getattr(model, "config", None)
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None:
        config.final_logit_softcapping = None
        cap = float(cap)
    object.__setattr__(model, "_lsr_softcap", cap)
    return cap


def softcapped(pooled: torch.Tensor, cap: float) -> torch.Tensor:
    """Max-pooled ``log1p(relu(logits))`` as if the logits had been capped, ``cap * tanh(logits / cap)``: the cap
    rises with its input and keeps its sign, so the max over positions commutes with it, and the pooled logit is
    ``expm1`` of the pooled weight."""
    return torch.log1p(cap * torch.tanh(torch.expm1(pooled.float()) / cap)).to(pooled.dtype)


@contextlib.contextmanager
def output_projection_attached(model: torch.nn.Module):
    """Put the detached vocabulary projection (and the logit cap) back for the block, so ``save_pretrained`` writes
    the complete model."""
    module, child_name = model._lsr_projection_slot
    setattr(module, child_name, model._lsr_projection)
    cap = getattr(model, "_lsr_softcap", None)
    if cap is not None:
        model.config.final_logit_softcapping = cap
    try:
        yield model
    finally:
        setattr(module, child_name, torch.nn.Identity())
        if cap is not None:
            model.config.final_logit_softcapping = None


def sparse_rows(pooled: torch.Tensor, top_k: int | None, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[B, V] scores → (non-zeros per row, columns, values) on the host: weights > threshold, at most top_k per row.

    Runs on the scores' device with no per-row Python; top_k keeps the largest weights, ties going
    to the lower term id. On CUDA the three parts come back in one copy.
    """
    pooled = pooled.float()
    if top_k is not None and top_k < pooled.shape[1]:
        best, where = torch.sort(pooled, dim=1, descending=True, stable=True)
        pooled = torch.zeros_like(pooled).scatter_(1, where[:, :top_k], best[:, :top_k])
    kept = pooled > threshold
    rows, cols = torch.nonzero(kept, as_tuple=True)
    parts = (kept.sum(dim=1, dtype=torch.int32), cols.to(torch.int32), pooled[rows, cols].view(torch.int32))
    packed = torch.cat(parts).cpu().numpy()  # the batch's one device-to-host copy
    b, n = pooled.shape[0], cols.shape[0]
    return packed[:b].astype(np.int64), packed[b : b + n], packed[b + n :].view(np.float32)


class SpladeEncoder:
    """Symmetric SPLADE: the same MLM encodes queries and documents.

    Options: ``pooling`` ("max" or "sum"), ``activation`` ("relu": log1p∘relu; "log1p_relu": log1p∘log1p∘relu, as
    OpenSearch's doc-only models declare), ``prompts`` (texts put before queries and documents), ``lowercase``
    (each text lowercased, prompt included, before tokenising), ``top_k`` / ``threshold`` pruning per vector,
    ``query_expansion`` / ``doc_expansion`` (False keeps only the input's own tokens). ``from_pretrained`` takes
    pooling, activation, prompts and lowercasing from a sentence-transformers folder. A blank text (no characters but
    whitespace) encodes to a vector with no terms: it matches nothing (``SparseEncoder`` expands its [CLS] [SEP]).
    The encoder takes ``model`` over, as ``SparseEncoder`` takes its modules: it moves it to ``device`` and ``dtype``
    and detaches its vocabulary projection, so its own forward then returns hidden states; give each encoder a model
    of its own (``copy.deepcopy`` one that is still used elsewhere).
    A folder with an ``idf.json`` (an inference-free model) was trained for queries that run no model:
    ``InferenceFreeQueryEncoder.from_pretrained`` gives those; this class's ``encode_queries`` runs the model on them.
    """

    auto_model_class = "AutoModelForMaskedLM"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        max_length: int = 256,
        query_max_length: int | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = "auto",
        pooling: str = "max",
        activation: str = "relu",
        prompts: Prompts = Prompts(),
        lowercase: bool = False,
        top_k: int | None = None,
        threshold: float = 0.0,
        query_expansion: bool = True,
        doc_expansion: bool = True,
        impl: str = "auto",
        name: str | None = None,
    ) -> None:
        _check_model_kind(model, decoder=isinstance(self, DecoderSpladeEncoder))
        check_tokenizer_fits(tokenizer, model)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if activation not in ACTIVATIONS or (activation, pooling) == ("log1p_relu", "sum"):
            raise ValueError(f"activation must be one of {ACTIVATIONS} (log1p_relu with max pooling), got {activation!r}"
                             f" with {pooling} pooling")
        if query_max_length is None:
            query_max_length = default_query_length(str(getattr(model, "name_or_path", "")), tokenizer)
        max_length = check_length(max_length, "max_length", model)
        query_max_length = check_length(query_max_length, "query_max_length", model)
        self._positions = usable_positions(getattr(model, "config", None))  # what padding may not pass
        top_k = None if top_k is None else check_whole(top_k, "top_k", 1)
        threshold = check_number(threshold, "threshold", 0.0)  # -1 kept every term, NaN none
        if not isinstance(prompts, Prompts):  # a str failed at the first encode: "'str' object has no attribute"
            raise TypeError(f"prompts must be a Prompts(query=..., document=...), got {type(prompts).__name__}")
        lowercase, query_expansion, doc_expansion = (check_switch(value, name) for value, name in (
            (lowercase, "lowercase"), (query_expansion, "query_expansion"), (doc_expansion, "doc_expansion")))
        self.device = resolve_device(device)
        check_impl(impl, self.device)
        self.model = model.to(self.device, dtype=resolve_dtype(dtype, self.device)).eval()
        self.weight, self.bias = _detach_output_projection(self.model)
        self.logit_softcap = _take_logit_softcap(self.model)
        if self.logit_softcap is not None and pooling == "sum":
            raise ValueError(f"{type(model).__name__} caps its logits, which sum pooling cannot undo; use max pooling")
        if self._runs_bert_padded() and self.weight.dtype in (torch.bfloat16, torch.float16):
            packed_bert.keep_norms_float32(self.model)  # the head, detached first, keeps its half copy even when tied
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.query_max_length = int(query_max_length)
        self.pooling = pooling
        self.activation = activation
        self.prompts = prompts
        self.lowercase = lowercase
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
        self._special_mask = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
        self._special_mask[[i for i in special if 0 <= i < self.vocab_size]] = True
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # the folder ships idf.json: trained for IDF queries (``InferenceFreeQueryEncoder``), which encode_queries
        # warns of once (the Python API expanded them with the model, unsaid, where SparseEncoder.encode_query does not)
        self.idf_queries = False
        if self.device.type == "cuda":
            self.warm_up()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "splade-tiny",
        *,
        max_length: int | None = None,
        query_max_length: int | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = "auto",
        backend: str = "auto",
        **options: Any,
    ) -> "SpladeEncoder":
        """Load a hub id, a local folder, or a bundled short name (``splade-tiny``).

        ``backend`` "auto" loads a plain BERT MLM folder for inference without transformers
        (``native_bert``: about 3 s less at every start, the same vectors); "transformers" always uses it.
        ``SpladeEncoder.from_pretrained`` of a causal LM's folder (Llama, Mistral, GPT-2) gives a
        ``DecoderSpladeEncoder``, so every verb's ``--model`` takes one (they refused it as no masked LM).
        ``max_length`` (document tokens): 256, or the folder's ``max_seq_length`` where smaller (``document_length``).
        """
        if max_length is None:
            max_length = document_length(name_or_path)
        config = folder_config(name_or_path) or {}
        if cls is SpladeEncoder and is_causal_lm(config):
            return DecoderSpladeEncoder.from_pretrained(
                name_or_path, max_length=max_length, query_max_length=query_max_length, device=device, dtype=dtype,
                backend=backend, **options)
        masked_lm = cls.auto_model_class == "AutoModelForMaskedLM"
        architectures = [str(a) for a in config.get("architectures") or []]
        if not masked_lm and architectures and all(a.endswith("ForMaskedLM") for a in architectures):
            # a BERT MLM ran causally, and its echoed vectors looked plausible
            raise ValueError(f"{name_or_path} is {', '.join(architectures)}, a masked language model, not a causal "
                             "one; load it with SpladeEncoder")
        loaded = native_bert.load_native(name_or_path, backend, native_bert.load_masked_lm if masked_lm else None)
        if loaded is not None:
            model, tokenizer = loaded
        else:
            import transformers

            tokenizer = transformers_tokenizer(name_or_path)
            model = load_with_hint(name_or_path, quiet_loader(getattr(transformers, cls.auto_model_class), head_required=True))
        folder = resolve_model(name_or_path)
        declared = read_splade_pooling(folder)
        if declared is not None:
            options = {"pooling": declared[0], "activation": declared[1], **options}
        options.setdefault("prompts", read_prompts(folder))
        options.setdefault("lowercase", read_lowercase(folder))
        if "max_active_dims" in options:  # sentence-transformers' name for it
            if options.get("top_k") is not None:
                raise ValueError("give top_k or max_active_dims (its sentence-transformers name), not both")
            options["top_k"] = options.pop("max_active_dims")
        options.setdefault("top_k", read_max_active_dims(folder))
        encoder = cls(
            model, tokenizer, max_length=max_length, query_max_length=query_max_length,
            device=device, dtype=dtype, name=str(name_or_path), **options,
        )
        encoder.idf_queries = idf_table_path(folder) is not None
        return encoder

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, device={str(self.device)!r}, dtype={str(self.weight.dtype)!r}, "
                f"max_length={self.max_length})")

    # ------------------------------------------------------------------ public API
    def warm_up(self) -> None:
        """Run one batch of every shape the pooling kernel compiles for (``warm_up_shapes``) now.

        Done at load on CUDA, so a fresh process encodes at warm speed and a server compiles before
        it reports SERVING. The kernels are first compiled side by side (``precompile``), then each
        shape runs once; Triton's on-disk cache makes later processes' compiles cheap.
        """
        from lsr.kernels.pool import resolve_impl
        from lsr.kernels.pool_triton import precompile, warm_up_shapes

        shapes = warm_up_shapes(max(self.max_length, self.query_max_length), self._positions)
        if self.pooling == "max" and resolve_impl(self.impl, self.device) == "triton":
            precompile(shapes, self.weight, None if self.bias is None else self.bias.to(self.weight.dtype))
        token = next(i for i in range(self.vocab_size) if i not in self._special_ids)
        for batch, length in shapes:
            ids = torch.full((batch, length), token, device=self.device)
            mask = torch.ones_like(ids)
            self._encode_batch(ids, mask, mask, None)

    @overload
    def encode_documents(self, texts: Sequence[str] | str, batch_size: int = ..., *, show_progress: bool = ...,
                         return_info: Literal[False] = ...) -> SparseBatch: ...
    @overload
    def encode_documents(self, texts: Sequence[str] | str, batch_size: int = ..., *, show_progress: bool = ...,
                         return_info: Literal[True]) -> tuple[SparseBatch, EncodeInfo]: ...

    def encode_documents(
        self, texts: Sequence[str] | str, batch_size: int = 32, *, show_progress: bool = False, return_info: bool = False
    ) -> SparseBatch | tuple[SparseBatch, EncodeInfo]:
        """Encode documents (``max_length`` tokens, ``doc_expansion``); returns SparseBatch in input order."""
        return self._encode(texts, self.max_length, self.doc_expansion, batch_size, show_progress, return_info,
                            self.prompts.document)

    @overload
    def encode_queries(self, texts: Sequence[str] | str, batch_size: int = ..., *, show_progress: bool = ...,
                       return_info: Literal[False] = ...) -> SparseBatch: ...
    @overload
    def encode_queries(self, texts: Sequence[str] | str, batch_size: int = ..., *, show_progress: bool = ...,
                       return_info: Literal[True]) -> tuple[SparseBatch, EncodeInfo]: ...

    def encode_queries(
        self, texts: Sequence[str] | str, batch_size: int = 64, *, show_progress: bool = False, return_info: bool = False
    ) -> SparseBatch | tuple[SparseBatch, EncodeInfo]:
        """Encode queries (``query_max_length`` tokens, ``query_expansion``); returns SparseBatch in input order."""
        if self.idf_queries:
            self.idf_queries = False  # said once
            log.warning("%s was trained for IDF queries (it ships idf.json), and encode_queries expands them with the "
                        "model; InferenceFreeQueryEncoder.from_pretrained(%r) encodes them as it was trained (as lsr "
                        "search and SparseEncoder.encode_query do)", self.name, self.name)
        return self._encode(texts, self.query_max_length, self.query_expansion, batch_size, show_progress, return_info,
                            self.prompts.query)

    encode_query = encode_queries  # sentence-transformers' names (SparseEncoder.encode_query), for code moving over
    encode_document = encode_documents

    @property
    def pads_batches(self) -> bool:
        """Whether a batch costs every text its longest member's length (the service then groups similar lengths):
        not with the padding-free forward, whose int8 screen also packs each text's tokens."""
        return not self._runs_packed()

    def _runs_packed(self) -> bool:
        """A BERT MLM on CPU runs padding-free (``packed_bert``): faster, and a text's vector is the same bits in
        any batch. A GPU keeps the padded forward its tables were measured with (boolean indexing would stall the
        pipeline on a host sync). Asked per batch: ``lsr train`` toggles training mode."""
        return self.device.type == "cpu" and packed_bert.supports_masked_lm(self.model)

    def _runs_bert_padded(self) -> bool:
        """A BERT MLM on a GPU runs ``packed_bert``'s padded forward: native models (loaded without transformers)
        have no forward of their own, and it launches fewer ops than transformers' (a 2-layer model is host-bound)."""
        return self.device.type != "cpu" and packed_bert.supports_masked_lm(self.model)

    @property
    def document_tokens(self) -> int:
        """Tokens of a document it keeps: ``max_length``, or a decoder's copy of the echoed text (about half)."""
        return self._token_budget(self.max_length)

    # ------------------------------------------------------------------ internals
    def _token_budget(self, max_length: int) -> int:
        """How many tokens of one text a ``max_length`` input holds (what truncation is judged against)."""
        return max_length

    def _tokenize(self, texts: list[str], max_length: int) -> tuple[list[list[int]], np.ndarray]:
        return truncated_token_ids(self.tokenizer, texts, max_length)

    def _batch_inputs(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask, pool_mask); the pool mask marks positions that may win the max."""
        input_ids, mask = right_pad(ids, self._pad_id, pad_multiple(self.device), self._positions)
        return input_ids, mask, mask

    def _pool(self, hidden: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(hidden.dtype)
        bias = None if self.bias is None else self.bias.to(hidden.dtype)
        if self.pooling == "sum":
            return splade_sum_pool_chunked(hidden, weight, bias, pool_mask)
        return self.activated(splade_max_pool(hidden, weight, bias, pool_mask, impl=self.impl))

    def activated(self, pooled: torch.Tensor) -> torch.Tensor:
        """Max-pooled ``log1p(relu(logits))`` with the rest of the model's activation: its logit cap, and the second
        log1p of "log1p_relu" (both rise with their input, so the max over positions commutes with them)."""
        if self.logit_softcap is not None:
            pooled = softcapped(pooled, self.logit_softcap)
        return torch.log1p(pooled) if self.activation == "log1p_relu" else pooled

    def _own_tokens_mask(self, input_ids: torch.Tensor, pool_mask: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """[B, V] bool: the non-special tokens among each row's pooled positions, less the prompt's: a token counts
        where a row holds it more often than ``prompt`` ([V + 1] counts of the prompt's tokens) does (with a "query: "
        prompt and no expansion, every query had matched documents holding "query" or ":")."""
        vocab = self.vocab_size
        ids = torch.where(pool_mask.bool() & (input_ids < vocab), input_ids, vocab)  # others land in a spare column
        counts = torch.zeros((input_ids.shape[0], vocab + 1), dtype=torch.int32, device=input_ids.device)
        counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.int32))
        return (counts > prompt)[:, :vocab] & ~self._special_mask

    def _prompt_counts(self, prompt: str) -> torch.Tensor:
        """[V + 1] int32: how often each token occurs in ``prompt`` (tokenised as it is inside a text)."""
        ids = token_ids(self.tokenizer, [prompt], add_special_tokens=False, truncation=False)[0] if prompt else []
        ids = torch.tensor([i for i in ids if 0 <= i < self.vocab_size], dtype=torch.int64)
        return torch.bincount(ids, minlength=self.vocab_size + 1).to(torch.int32).to(self.device)

    @torch.inference_mode()
    def _encode_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor,
                      own_only: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``own_only``: None to expand, else the prompt's token counts (``_prompt_counts``) to keep the text's own."""
        if self._runs_packed():
            hidden = packed_bert.masked_lm_hidden(self.model, input_ids, attention_mask.bool())
        elif self._runs_bert_padded():
            hidden = packed_bert.masked_lm_hidden_padded(self.model, input_ids, attention_mask.bool())
        else:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        pooled = self._pool(hidden, pool_mask)
        if own_only is not None:
            pooled = pooled * self._own_tokens_mask(input_ids, pool_mask, own_only)
        return sparse_rows(pooled, self.top_k, self.threshold)

    def model_texts(self, texts: list[str], prompt: str = "") -> list[str]:
        """The texts as the model reads them: lowercased where its folder says (the prompt too, as sentence-transformers
        does), after the prompt. Training reads them so too (it trained a lowercasing model on cased text)."""
        if self.lowercase:
            texts, prompt = [lowercased(t) for t in texts], lowercased(prompt)
        return with_prompt(texts, prompt)

    def _pipeline(self, batch_size: int, max_length: int) -> Pipeline:
        return Pipeline(self.device, max_tokens=batch_size * max_length, batch_size=batch_size)

    def _encode(
        self, texts: Any, max_length: int, expansion: bool, batch_size: int, show_progress: bool, return_info: bool,
        prompt: str = "",
    ):
        """Batches of up to ``batch_size x max_length`` padded tokens through ``lsr.encode.batching``."""
        texts = check_texts(texts)
        batch_size = check_whole(batch_size, "batch_size", 1)
        live = np.asarray([i for i, t in enumerate(texts) if not is_blank(t)], np.int64)  # NUL-only: no words
        texts = self.model_texts(texts, prompt)
        prompt = lowercased(prompt) if self.lowercase else prompt
        own_only = None if expansion else self._prompt_counts(prompt)
        n_tokens = np.zeros(len(texts), np.int64)

        def tokenize(start: int, stop: int) -> list[list[int]]:
            rows, lengths = self._tokenize([texts[i] for i in live[start:stop]], max_length)
            n_tokens[live[start:stop]] = lengths
            return rows

        parts = []
        progress = progress_bar("encode", len(live), enabled=show_progress and len(live) > 0)
        for positions, (counts, columns, values) in self._pipeline(batch_size, max_length).run(
            len(live), tokenize, self._batch_inputs, lambda *tensors: self._encode_batch(*tensors, own_only)
        ):
            parts.append((live[positions], counts, columns, values))
            progress.update(len(positions))
        progress.close()
        info = report_truncation(log, n_tokens, self._token_budget(max_length))
        batch = SparseBatch(*scatter_csr(len(texts), parts), self.vocab_size, self.vocab)
        return (batch, info) if return_info else batch


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

    def _token_budget(self, max_length: int) -> int:
        """One copy's share, BOS included: each echoed copy gets half of what is left after BOS."""
        return (max_length - len(self._bos)) // (2 if self.echo else 1) + len(self._bos)

    def _tokenize(self, texts: list[str], max_length: int) -> tuple[list[list[int]], np.ndarray]:
        """Text tokens only (no specials), cut to one copy's share of ``max_length`` (the whole echoed input)."""
        enc = token_ids(self.tokenizer, texts, add_special_tokens=False, truncation=False)
        lengths = np.fromiter((len(ids) for ids in enc), dtype=np.int64, count=len(enc))
        budget = self._token_budget(max_length) - len(self._bos)
        return [ids[:budget] for ids in enc], lengths + len(self._bos)  # reported length counts one copy

    def _batch_inputs(self, ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.echo:
            return super()._batch_inputs([self._bos + r for r in ids])
        input_ids, mask = right_pad([self._bos + r + r for r in ids], self._pad_id, pad_multiple(self.device),
                                    self._positions)
        lengths = torch.tensor([len(r) for r in ids])[:, None]
        start = len(self._bos) + lengths
        position = torch.arange(mask.shape[1])
        return input_ids, mask, ((position >= start) & (position < start + lengths)).long()


def folder_config(name_or_path: str) -> dict | None:
    """The config.json of a model folder on disk (a local folder, a bundled name or a cached hub snapshot); None when
    there is none to read (the loader then says what is wrong)."""
    try:
        with open(os.path.join(resolve_model(name_or_path), "config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def is_causal_folder(name_or_path: str) -> bool:
    """``is_causal_lm`` of a model folder on disk; False when it has no config.json to read."""
    config = folder_config(name_or_path)
    return config is not None and is_causal_lm(config)


class InferenceFreeQueryEncoder:
    """Query side without a model (OpenSearch doc-only style): tokenize, weight each token by IDF.

    The IDF table comes from the model folder's ``idf.json`` ({token: weight}) when it ships one,
    else from an index's document frequencies. There is no forward pass at query time.
    """

    batch_gain = False  # a batch costs the sum of its texts, so the service encodes these without micro-batching

    def __init__(self, tokenizer: Any, idf: np.ndarray | Callable[[], np.ndarray], *,
                 query_max_length: int = DEFAULT_MAX_TOKENS, name: str | None = None, prompt: str = ""):
        """``idf``: the weights, or a function giving the current ones at each encode (an index's document
        frequencies change with every upsert and delete; a weight table read once would go stale). ``prompt``: put
        before each query, as ``SparseEncoder.encode_query`` puts the folder's query prompt."""
        self.tokenizer = tokenizer
        self.prompt = prompt
        self._idf_now = idf if callable(idf) else None
        self.idf = _checked_idf(idf() if callable(idf) else idf)
        tokens = getattr(tokenizer, "vocab_size", None) or len(tokenizer.get_vocab())  # not the added tokens
        if len(self.idf) < tokens:  # the tokens past its end were dropped from every query without a word
            raise ValueError(f"idf has {len(self.idf):,} weights but the tokenizer has {tokens:,} tokens; give one "
                             "weight per token id")
        self.vocab_size = len(self.idf)
        self.query_max_length = check_whole(query_max_length, "query_max_length", 1)  # 0 gave every query no terms
        self.name = name
        self.vocab = vocabulary_of(tokenizer, self.vocab_size)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str = "splade-tiny", *, idf: Any = None, index: Any = None, query_max_length: int | None = None
    ) -> "InferenceFreeQueryEncoder":
        """IDF from (in order): the ``idf`` argument (weights, or a function that gives the current ones), ``idf.json``
        in the model folder, the ``index``'s document frequencies as they are at each encode."""
        folder = resolve_model(name_or_path)
        tokenizer = load_tokenizer(name_or_path)
        vocab_size = len(tokenizer.get_vocab())
        table_path = idf_table_path(folder)
        where = "idf"
        if idf is None and table_path is not None:
            idf, where = load_json(table_path), table_path
            if not isinstance(idf, dict):
                raise ValueError(f"{table_path} must map tokens to IDF weights, not hold a {type(idf).__name__}")
        if idf is None and index is not None:
            idf = idf_of_index(index)
        if idf is None:
            raise ValueError(
                f"no IDF table for {name_or_path!r}: its folder has no idf.json; pass idf= or index= "
                "(an InvertedIndex whose document frequencies give the weights)"
            )
        if isinstance(idf, dict):
            idf = _idf_table(idf, tokenizer.get_vocab(), vocab_size, where)
        if query_max_length is None:
            query_max_length = default_query_length(folder, tokenizer)
        prompt = read_prompts(folder).query if os.path.isdir(folder) else ""
        return cls(tokenizer, idf, query_max_length=query_max_length, name=str(name_or_path), prompt=prompt)

    @overload
    def encode_queries(self, texts: Sequence[str] | str, batch_size: int = ..., *, show_progress: bool = ...,
                       return_info: Literal[False] = ...) -> SparseBatch: ...
    @overload
    def encode_queries(self, texts: Sequence[str] | str, batch_size: int = ..., *, show_progress: bool = ...,
                       return_info: Literal[True]) -> tuple[SparseBatch, EncodeInfo]: ...

    def encode_queries(self, texts: Sequence[str] | str, batch_size: int = 64, *, show_progress: bool = False,
                       return_info: bool = False) -> SparseBatch | tuple[SparseBatch, EncodeInfo]:
        """One weight per distinct query token: its IDF. ``batch_size`` and ``show_progress`` are checked and then
        unused (no model runs), so code written for ``SpladeEncoder`` runs unchanged; another keyword is refused."""
        check_whole(batch_size, "batch_size", 1)  # -1 was taken, and any misspelt keyword with it
        texts = check_texts(texts)
        idf = self._current_idf()
        enc = token_ids(self.tokenizer, with_prompt(texts, self.prompt), add_special_tokens=False, truncation=False)
        indptr, indices, values = [0], [], []
        lengths = np.zeros(len(texts), np.int64)
        for i, (text, ids) in enumerate(zip(texts, enc)):
            lengths[i] = len(ids)
            if is_blank(text):
                ids = []
            terms = np.unique(np.asarray(ids[: self.query_max_length], np.int64))  # a special's weight is the table's
            terms = terms[terms < self.vocab_size]
            weights = idf[terms]
            keep = weights > 0
            indices.extend(terms[keep].tolist())
            values.extend(weights[keep].tolist())
            indptr.append(len(indices))
        batch = SparseBatch(np.asarray(indptr), np.asarray(indices), np.asarray(values), self.vocab_size, self.vocab)
        info = report_truncation(log, lengths, self.query_max_length)
        return (batch, info) if return_info else batch

    encode_query = encode_queries  # sentence-transformers' name (SparseEncoder.encode_query)

    def _current_idf(self) -> np.ndarray:
        if self._idf_now is not None:
            idf = self._idf_now()
            if idf is not self.idf:  # a new version of the index: check it once
                idf = _checked_idf(idf)
                if len(idf) != self.vocab_size:
                    raise ValueError(f"the IDF table changed size: {len(idf)} weights for a {self.vocab_size}-term vocabulary")
                self.idf = idf
        return self.idf


def _idf_table(weights: dict, vocab: dict[str, int], vocab_size: int, where: str) -> np.ndarray:
    """A weight per vocabulary id from a {token: IDF} mapping, each weight checked and named where it is wrong. A
    table whose tokens the tokenizer lacks gave every query no terms (0 hits, unsaid); some such are a warning."""
    table = np.zeros(max(vocab_size, max(vocab.values()) + 1), np.float32)
    unknown = [token for token in weights if token not in vocab]
    for token, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < 3.4e38:
            raise ValueError(f"{where}: token {short_repr(token)} has the weight {short_repr(weight)}; an IDF weight is "
                             "a finite number >= 0")
        if token in vocab:
            table[vocab[token]] = weight
    if len(unknown) == len(weights):
        raise ValueError(f"{where} names none of the tokenizer's tokens ({len(weights):,} entries), so every query "
                         "would have no terms; is it the table of another model?")
    if unknown:
        log.warning("%s names %d tokens the tokenizer does not have (such as %s); they are left out", where,
                    len(unknown), short_repr(unknown[0]))
    return table


def _checked_idf(idf: Any) -> np.ndarray:
    idf = np.asarray(idf, dtype=np.float32)
    if idf.ndim != 1 or not np.all(np.isfinite(idf)) or (idf < 0).any():
        raise ValueError("idf must be a 1-D array of finite non-negative weights")
    return idf


def idf_table_path(name_or_path: str) -> str | None:
    """The model folder's ``idf.json``, if it ships one: the model was trained for IDF queries (``lsr train
    --inference-free``, OpenSearch's doc-only models), so its query side is ``InferenceFreeQueryEncoder``."""
    path = os.path.join(resolve_model(name_or_path), IDF_TABLE)
    return path if os.path.isfile(path) else None
