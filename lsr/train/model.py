"""A SPLADE encoder with gradients: SpladeEncoder's tokenisation and head swap, pooled through splade_max_pool.

Training and inference share one tokeniser path (truncation keeps trailing special tokens) and one
pooling definition, so the vectors a trained folder produces at index time are the ones optimised here.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import numpy as np
import torch

from lsr.encode.models import load_with_hint
from lsr.encode.st_folder import with_prompt
from lsr.encode.splade import DecoderSpladeEncoder, SpladeEncoder
from lsr.encode.terms import is_causal_lm
from lsr.kernels import splade_max_pool


class TrainableSplade:
    """Wraps a loaded encoder; ``encode`` returns differentiable [B, V] SPLADE vectors."""

    def __init__(self, encoder: SpladeEncoder, *, autocast_dtype: torch.dtype | None = None) -> None:
        self.encoder = encoder
        self.model = encoder.model
        self.head = self.model._lsr_projection  # the live Linear whose (tied) weight and bias we train
        self.device = encoder.device
        self.autocast_dtype = autocast_dtype
        self.idf: torch.Tensor | None = None  # set by ``use_idf_queries``: the inference-free variant
        seen: set[int] = set()
        self.parameters: list[torch.nn.Parameter] = []
        for p in list(self.model.parameters()) + list(self.head.parameters()):
            if id(p) not in seen:
                seen.add(id(p))
                self.parameters.append(p)

    @classmethod
    def load(cls, name: str, *, device: str, dtype: str, max_length: int | None = None,
             query_max_length: int | None = None) -> "TrainableSplade":
        """Weights stay fp32 (the optimiser's master copy); bf16/fp16 run the forward under autocast.

        ``max_length``/``query_max_length`` are the wrapped encoder's (mining and ``--eval``); None keeps the
        inference defaults, so those see documents as the exported folder will. ``encode`` takes its own lengths.
        """
        import transformers

        config = load_with_hint(name, transformers.AutoConfig.from_pretrained)
        encoder_class = DecoderSpladeEncoder if is_causal_lm(config) else SpladeEncoder
        lengths = {"max_length": max_length, "query_max_length": query_max_length}
        encoder = encoder_class.from_pretrained(name, device=device, dtype="fp32", backend="transformers",
                                                **{k: v for k, v in lengths.items() if v is not None})
        if encoder.pooling != "max":
            raise ValueError(f"{name} declares {encoder.pooling} pooling; lsr train trains max-pooled SPLADE")
        autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
        return cls(encoder, autocast_dtype=autocast)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def encode(self, texts: Sequence[str], max_length: int, prompt: str = "") -> torch.Tensor:
        """[len(texts), V] vectors with gradients; the fused Triton backward on CUDA, the chunked path on CPU.
        ``prompt`` (the folder's query or document prompt) goes before each text, as the encoder puts it."""
        ids, _ = self.encoder._tokenize(self.encoder.model_texts(list(texts), prompt), max_length)
        input_ids, mask, pool_mask = (t.to(self.device) for t in self.encoder._batch_inputs(ids))
        with self._autocast():
            hidden = self.model(input_ids=input_ids, attention_mask=mask).logits
            if self.autocast_dtype is not None:  # CUDA's autocast ends the transform's LayerNorm in fp32, and the
                hidden = hidden.to(self.autocast_dtype)  # fused pooling then ran fp32 dots, not bf16 tensor cores
            weight = self.head.weight.to(hidden.dtype)
            bias = None if self.head.bias is None else self.head.bias.to(hidden.dtype)
            pooled = splade_max_pool(hidden, weight, bias, pool_mask, impl=self.encoder.impl, deterministic=True)
        return self.encoder.activated(pooled).float()

    def use_idf_queries(self, documents: Sequence[str]) -> None:
        """Inference-free variant: queries become IDF-weighted bags of their tokens, IDF from ``documents``.

        The same table is exported as ``idf.json``, which ``InferenceFreeQueryEncoder`` reads at search time.
        """
        from lsr.encode.inputs import token_ids
        from lsr.encode.idf import idf_from_doc_freqs

        vocab = self.encoder.vocab_size
        doc_freqs = np.zeros(vocab, np.int64)
        for ids in token_ids(self.encoder.tokenizer, self.encoder.model_texts(list(documents)), add_special_tokens=False,
                             truncation=False):
            terms = np.unique(np.asarray(ids, np.int64))
            doc_freqs[terms[terms < vocab]] += 1
        doc_freqs[list(i for i in self.encoder._special_ids if 0 <= i < vocab)] = 0
        self.idf = torch.from_numpy(idf_from_doc_freqs(doc_freqs, len(documents))).to(self.device)

    def query_encoder(self) -> Any:
        """What encodes queries at search time: the model itself, or for the inference-free variant its IDF table,
        as ``InferenceFreeQueryEncoder`` reads it back from the exported folder (``--eval`` and dev scores use it)."""
        if self.idf is None:
            return self.encoder
        from lsr.encode.splade import InferenceFreeQueryEncoder

        return InferenceFreeQueryEncoder(self.encoder.tokenizer, self.search_idf(),
                                         query_max_length=self.encoder.query_max_length, name=self.encoder.name,
                                         prompt=self.encoder.prompts.query)

    def search_idf(self) -> np.ndarray:
        """The inference-free query side's table at search time (exported as ``idf.json``): the training table, with
        the words no training document had weighing as the rarest (``unseen_as_rarest``). Training keeps 0 for them:
        its IDF-aware FLOPS penalises documents' expansion into them most."""
        from lsr.encode.idf import unseen_as_rarest

        return unseen_as_rarest(self.idf.cpu().numpy(), self.encoder._special_ids)

    def encode_idf_queries(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        """[B, V] query vectors of the inference-free side: each distinct token's IDF (no model, no gradient), the
        folder's query prompt first, as ``InferenceFreeQueryEncoder`` and ``SparseEncoder.encode_query`` put it."""
        from lsr.encode.inputs import truncated_token_ids

        out = torch.zeros(len(texts), self.encoder.vocab_size, device=self.device)
        # read only as far as kept: a 1M-word query was tokenised whole at every step (5 s a step, 2.9 GB)
        rows, _ = truncated_token_ids(self.encoder.tokenizer, with_prompt(list(texts), self.encoder.prompts.query),
                                      max_length, specials=False)
        for row, ids in enumerate(rows):
            terms = torch.tensor([t for t in ids if t < self.encoder.vocab_size], dtype=torch.long,
                                 device=self.device)
            out[row, terms] = self.idf[terms]
        return out

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)
