"""The models a collection's searches run, each loaded the first time a search needs it.

A BM25 search needs no model, so `lsr search --mode bm25` starts without importing torch or transformers (about
2 s instead of 5 here); a sparse search never loads the dense model, a dense one never loads SPLADE. A server
loads them all before it reports SERVING, and `lsr search` those of its mode before its first query
(``Searcher.warm_up``), so no search's timings include a model load.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import numpy as np

from lsr.encode.idf import VersionedIdf
from lsr.files import reset_in_forked_child

log = logging.getLogger(__name__)

DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")  # a model's precision, by name (``lsr.encode.inputs.resolve_dtype``)


# What a loaded encoder depends on in a build's lsr.json: equal values in another build load the same encoder.
_SHAREABLE = {"documents": ("model", "model_content", "max_length"), "dense": ("dense_model", "dense_model_content")}


class ModelChanged(RuntimeError):
    """A model folder's files changed since the collection was indexed, and a write would encode documents with it."""


class SearchModels:
    """A collection's query encoder, dense encoder and (for upserts) document encoder, loaded on first use.

    ``query_encoder``: "splade" (the collection's model), "inference-free" (IDF weights from the document frequencies
    of ``doc_freqs()``, the collection as it is now: one index, or the sum over a sharded collection's shards) or
    "auto" (inference-free when the model folder ships an idf.json). Loading is thread-safe: concurrent first uses
    load once."""

    def __init__(self, meta: dict, query_encoder: str = "auto", *, doc_freqs: Callable[[], Any] | None = None,
                 device: str = "auto", dtype: str = "auto") -> None:
        self.meta = meta
        self._query_kind = query_encoder
        self._doc_freqs = doc_freqs
        self._idf = VersionedIdf()
        self._stale_warned: str | None = None
        self._device, self._dtype = device, dtype
        self._loaded: dict[str, Any] = {}
        self._changed: dict[str, bool] = {}  # model folders compared with the build's (once each: hashing reads them)
        self._warned: set[str] = set()
        self._lock = threading.RLock()
        reset_in_forked_child(self)

    def _after_fork(self) -> None:
        self._lock = threading.RLock()

    def like(self, meta: dict, doc_freqs: Callable[[], Any] | None = None) -> "SearchModels":
        """The models of another build of the collection (``meta``), with these options. An encoder loaded here is
        shared where that build names the same model the same way (a server's reload: loading it again took seconds,
        and memory for two copies). Inference-free query weights follow ``doc_freqs``, so they are made anew."""
        other = SearchModels(meta, self._query_kind, doc_freqs=doc_freqs, device=self._device, dtype=self._dtype)
        with self._lock:
            for name, keys in _SHAREABLE.items():
                if name in self._loaded and all(meta.get(key) == self.meta.get(key) for key in keys):
                    other._loaded[name] = self._loaded[name]
            if "documents" in other._loaded and self._loaded.get("query") is self._loaded["documents"]:
                other._loaded["query"] = other._loaded["documents"]  # SPLADE queries: the document encoder
        return other

    @property
    def has_dense(self) -> bool:
        """Whether the collection names a dense model (without loading it)."""
        return bool(self.meta.get("dense_model"))

    @property
    def query(self) -> Any:
        """The sparse query encoder."""
        return self._load("query", self._build_query)

    @property
    def dense(self) -> Any:
        """The dense encoder, or None when the collection has no dense model."""
        return self._load("dense", self._build_dense) if self.has_dense else None

    @property
    def documents(self) -> Any:
        """The SPLADE document encoder (upserts): the query encoder itself unless queries are inference-free."""
        return self._load("documents", self._build_documents)

    def idf(self, source: Any) -> np.ndarray:
        """BM25 IDF over the live documents ``source`` reads (``doc_freqs_version()``, ``doc_freqs()``: a search's
        pinned legs, or the collection as it is now), computed once per version of its document frequencies."""
        return self._idf.of(source.doc_freqs_version(), source.doc_freqs)

    def _query_idf(self) -> np.ndarray:
        """The inference-free query weights now: they follow upserts and deletes. While the sum cannot be had (a
        shard down), the last table stands in, with a warning: stale weights rank nearly as well, failing fails all."""
        source = self._doc_freqs()
        try:
            return self.idf(source)
        except Exception as exc:  # noqa: BLE001 - any failure to sum the shards' counts
            last, version = self._idf.last, source.doc_freqs_version()
            if last is None:
                raise
            if self._stale_warned != version:
                self._stale_warned = version
                log.warning("inference-free queries keep their previous IDF weights: %s", exc)
            return last

    def _load(self, name: str, build: Callable[[], Any]) -> Any:
        if name in self._loaded:
            return self._loaded[name]
        with self._lock:
            if name not in self._loaded:
                model = "dense_model" if name == "dense" else "model"
                if self.changed(model) and model not in self._warned:  # said once, where the hits moved unsaid
                    self._warned.add(model)
                    log.warning("the model %s changed since this collection was indexed (%s): its queries are now "
                                "encoded by another model than its documents were; index the collection again (or "
                                "restore the model)", self.meta[model], _what_changed(self.meta[f"{model}_content"]))
                self._loaded[name] = build()
            return self._loaded[name]

    def changed(self, model: str) -> bool:
        """Whether ``model`` ("model" or "dense_model" in lsr.json) holds other files than at the build (a folder
        retrained or replaced in place, a hub id cached at another revision); False where the build recorded none (a
        bundled model, a hub id not cached then)."""
        from lsr.encode.models import model_content_key

        with self._lock:
            if model not in self._changed:
                recorded = self.meta.get(f"{model}_content")
                self._changed[model] = bool(recorded) and model_content_key(self.meta[model]) not in (recorded, None)
            return self._changed[model]

    def check_for_writes(self) -> None:
        """ModelChanged where a model folder changed since the build: a query's mismatch ends with the folder's
        restore, documents written now would stay encoded by another model than the rest (only a warning about
        queries was said)."""
        for model in ("model", "dense_model"):
            if self.meta.get(model) and self.changed(model):
                raise ModelChanged(f"the model {self.meta[model]} changed since this collection was indexed "
                                   f"({_what_changed(self.meta[f'{model}_content'])}): documents written now would be "
                                   "encoded by another model than the rest; restore the model, or index the "
                                   "collection again")

    def _build_query(self) -> Any:
        from lsr.encode.splade import InferenceFreeQueryEncoder, idf_table_path

        kind, table = self._query_kind, idf_table_path(self.meta["model"])
        if kind == "auto":
            kind = "splade" if table is None else "inference-free"
        if kind == "splade":  # chosen (--query-encoder splade): no warning that the model was trained otherwise
            self.documents.idf_queries = False
            return self.documents
        live = self._query_idf if self._doc_freqs is not None and table is None else None
        return InferenceFreeQueryEncoder.from_pretrained(self.meta["model"], idf=live)

    def _build_documents(self) -> Any:
        from lsr.encode.splade import SpladeEncoder

        return SpladeEncoder.from_pretrained(self.meta["model"], max_length=self.meta.get("max_length", 256),
                                             device=self._device, dtype=self._dtype)

    def _build_dense(self) -> Any:
        from lsr.encode.dense import DenseEncoder

        return DenseEncoder.from_pretrained(self.meta["dense_model"], device=self._device, dtype=self._dtype)


def _what_changed(recorded: str) -> str:
    """What a changed content key means to the reader of a warning."""
    return "the hub revision its name points to" if recorded.startswith("hub:") else "its folder's files"
