"""Writes into a collection that exists, from outside a server (`lsr upsert`, `lsr delete`).

The collection's own models encode the documents (as a server's upserts do: the model and SPLADE length its
``lsr.json`` names), and each document goes to the shard that owns it in a sharded collection. Every call is one
atomic, durable write per collection (its journal's), and servers holding the collection take it up within a
second (``Collection.view``), so this runs beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from lsr.ingest.collection import Collection
from lsr.ingest.progress import quiet_logger
from lsr.ingest.sharding import ShardMap, is_sharded, read_shard_map, refuse_shard_folder
from lsr.search.models import SearchModels
from lsr.sparse import SparseBatch


class CollectionWriter:
    """Upserts and deletes into the collection folder ``path``, sharded or not."""

    def __init__(self, path: str | Path, *, device: str = "auto", dtype: str = "auto") -> None:
        path = Path(path).expanduser()
        refuse_shard_folder(path, "write to")
        self.shard_map: ShardMap | None = read_shard_map(path) if is_sharded(path) else None
        paths = self.shard_map.paths(path) if self.shard_map is not None else [path]
        self.collections = [Collection.open(p) for p in paths]
        self.meta = self.collections[0].meta
        self.models = SearchModels(self.meta, device=device, dtype=dtype)

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> tuple[SparseBatch, np.ndarray | None, int]:
        """The texts' SPLADE vectors, their embeddings when the collection has a dense leg, and how many texts were
        longer than the collection's SPLADE length (cut, as the build cut its own)."""
        texts = list(texts)
        self.models.check_for_writes()
        with quiet_logger("lsr.encode.splade"), quiet_logger("lsr.encode.dense"):  # counted instead of logged per batch
            sparse, info = self.models.documents.encode_documents(texts, batch_size=batch_size, return_info=True)
            dense = self.models.dense.encode_documents(texts, batch_size=batch_size) if self.models.has_dense else None
        return sparse, dense, int(np.count_nonzero(info.truncated))

    def known(self, ids: Sequence[str]) -> int:
        """How many of ``ids`` the collection holds now (an upsert of them replaces them)."""
        held = 0
        for collection, rows in self._by_owner(ids):
            docs = collection.view().docs
            held += sum(docs.contains(ids[r]) for r in rows)
        return held

    def upsert(self, ids: Sequence[str], texts: Sequence[str], sparse: SparseBatch, dense: np.ndarray | None) -> None:
        """Add or replace encoded documents; durable once this returns (per shard in a sharded collection)."""
        for collection, rows in self._by_owner(ids):
            collection.upsert([ids[r] for r in rows], [texts[r] for r in rows], sparse.select(rows),
                              None if dense is None else dense[rows])

    def delete(self, ids: Sequence[str]) -> list[str]:
        """Delete ``ids``; returns those the collection did not hold."""
        not_found: set[str] = set()
        for collection, rows in self._by_owner(ids):
            not_found.update(collection.delete([ids[r] for r in rows]))
        return [doc_id for doc_id in dict.fromkeys(ids) if doc_id in not_found]

    def close(self) -> None:
        """Save what only the journals hold (``Collection.close``)."""
        for collection in self.collections:
            collection.close()

    def _by_owner(self, ids: Sequence[str]) -> list[tuple[Collection, list[int]]]:
        """Each collection holding some of ``ids``, with the positions of its ids."""
        if self.shard_map is None:
            return [(self.collections[0], list(range(len(ids))))] if len(ids) else []
        return [(self.collections[shard], rows) for shard, rows in self.shard_map.positions_by_owner(ids).items()]
