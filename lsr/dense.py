"""Dense side of hybrid search: a MiniLM-style bi-encoder and a faiss index over its embeddings.

The encoder is plain ``transformers`` (mean pooling over real tokens, then L2 normalisation,
which is what all-MiniLM-L6-v2's sentence-transformers config does), so sentence-transformers
is not a runtime dependency. The index keys faiss rows by position and keeps the doc-id list
beside it; removals are tombstones, which works the same for flat and HNSW indexes.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lsr import packed_bert
from lsr.encoders import check_texts, resolve_device, token_ids
from lsr.files import atomic_write, file_sha256
from lsr.models import load_with_hint

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it reports every CPU-feature probe at INFO


class DenseEncoder:
    """Text → L2-normalised float32 embeddings by masked mean pooling of the last hidden layer."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_length: int = 256, query_max_length: int = 64,
                 device: str | torch.device = "auto", name: str | None = None) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.query_max_length = query_max_length
        self.name = name or getattr(model, "name_or_path", type(model).__name__)
        self.dim = int(model.config.hidden_size)
        self._packed = packed_bert.supports(self.model)  # BERT encoders skip the padding (lsr.packed_bert)

    @classmethod
    def from_pretrained(cls, name_or_path: str = "minilm", *, max_length: int = 256, query_max_length: int = 64,
                        device: str | torch.device = "auto") -> "DenseEncoder":
        """Load a bundled short name (``minilm``), a local folder or a hub id."""
        from transformers import AutoModel, AutoTokenizer

        from lsr.encoders import SpladeEncoder

        tokenizer = load_with_hint(name_or_path, AutoTokenizer.from_pretrained)
        model = load_with_hint(name_or_path, SpladeEncoder._model_loader(AutoModel))
        return cls(model, tokenizer, max_length=max_length, query_max_length=query_max_length, device=device,
                   name=str(name_or_path))

    def encode_documents(self, texts: Sequence[str] | str, batch_size: int = 32, *, show_progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.max_length, batch_size, show_progress)

    def encode_queries(self, texts: Sequence[str] | str, batch_size: int = 8, *, show_progress: bool = False) -> np.ndarray:
        """Passes of 8 length-sorted queries, padding-free for BERT models (``lsr.packed_bert``). On
        one CPU thread a random micro-batch of 8 SciFact queries costs 8.7 ms a query (12-14 ms with
        padding), one of 32 costs 8.4 ms, and one query alone 20 ms."""
        return self._encode(texts, self.query_max_length, batch_size, show_progress)

    @torch.inference_mode()
    def _encode(self, texts: Any, max_length: int, batch_size: int, show_progress: bool) -> np.ndarray:
        """[n, dim] float32; empty texts get a zero vector (they match nothing, like an empty sparse vector)."""
        texts = check_texts(texts)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        out = np.zeros((len(texts), self.dim), np.float32)
        live = [i for i, t in enumerate(texts) if t.strip()]
        if not live:
            return out
        ids = token_ids(self.tokenizer, [texts[i] for i in live], truncation=True, max_length=max_length)
        order = sorted(range(len(live)), key=lambda j: -len(ids[j]))  # longest first: little padding per batch
        pad = self.tokenizer.pad_token_id or 0
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(order), unit="doc", desc="dense", smoothing=0.1)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(ids[j]) for j in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, j in enumerate(chunk):
                input_ids[r, : len(ids[j])] = torch.tensor(ids[j])
                mask[r, : len(ids[j])] = 1
            input_ids, mask = input_ids.to(self.device), mask.to(self.device)
            if self._packed:
                pooled = packed_bert.mean_pooled(self.model, input_ids, mask).float()
            else:
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[[live[j] for j in chunk]] = pooled.cpu().numpy()
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return out


class DenseIndex:
    """Inner-product faiss index (flat by default, HNSW with ``hnsw_m``) keyed by string doc ids."""

    INDEX_FILE = "faiss.index"
    IDS_FILE = "ids.parquet"

    def __init__(self, index: Any, ids: list[str | None]) -> None:
        self.index = index
        self._ids = ids  # faiss row → doc id; None marks a removed row
        self._row = {doc_id: row for row, doc_id in enumerate(ids) if doc_id is not None}

    @classmethod
    def create(cls, dim: int, hnsw_m: int | None = None, ef_construction: int = 200, ef_search: int = 128) -> "DenseIndex":
        import faiss

        if hnsw_m is None:
            return cls(faiss.IndexFlatIP(dim), [])
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        return cls(index, [])

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def kind(self) -> str:
        return "hnsw" if "HNSW" in type(self.index).__name__ else "flat"

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._row

    # ------------------------------------------------------------------ updates
    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Append vectors; an id already present is replaced (its old row becomes a tombstone)."""
        vectors = self._check_vectors(vectors)
        ids = [str(i) for i in ids]
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in one add() call")
        self.remove([i for i in ids if i in self._row])
        start = len(self._ids)
        self._add_rows(vectors)
        self._ids.extend(ids)
        self._row.update({doc_id: start + k for k, doc_id in enumerate(ids)})

    def _add_rows(self, vectors: np.ndarray) -> None:
        if self.kind == "hnsw":
            import faiss

            # HNSW insertion order decides the graph; one thread keeps the build reproducible.
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                self.index.add(vectors)
            finally:
                faiss.omp_set_num_threads(threads)
        else:
            self.index.add(vectors)

    def remove(self, ids: Sequence[str]) -> list[str]:
        """Tombstone the given ids; returns those that were not in the index."""
        unknown = []
        for doc_id in ids:
            row = self._row.pop(str(doc_id), None)
            if row is None:
                unknown.append(doc_id)
            else:
                self._ids[row] = None
        return unknown

    # ------------------------------------------------------------------ reads
    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (ids [n, k] object array, None where fewer hits; scores [n, k] float32, -inf there)."""
        vectors = self._check_vectors(vectors)
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        n = len(vectors)
        out_ids = np.full((n, k), None, dtype=object)
        out_scores = np.full((n, k), -np.inf, dtype=np.float32)
        if len(self) == 0 or n == 0:
            return out_ids, out_scores
        dead = len(self._ids) - len(self._row)
        fetch = min(k + dead, self.index.ntotal)
        scores, rows = self.index.search(vectors, fetch)
        for q in range(n):
            got = 0
            for score, row in zip(scores[q], rows[q]):
                if row < 0 or self._ids[row] is None:
                    continue
                out_ids[q, got], out_scores[q, got] = self._ids[row], score
                got += 1
                if got == k:
                    break
        return out_ids, out_scores

    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored embeddings of the given ids, [n, dim]; unknown ids raise KeyError naming them."""
        missing = [i for i in ids if i not in self._row]
        if missing:
            raise KeyError(f"ids not in the dense index: {missing[:5]}")
        if not ids:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.index.reconstruct(self._row[i]) for i in ids]).astype(np.float32)

    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None, :]
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"dense vectors must have dimension {self.dim}, got shape {tuple(vectors.shape)}")
        if not np.all(np.isfinite(vectors)):
            raise ValueError("dense vectors contain NaN or infinite values")
        return vectors

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write ``faiss.index`` and ``ids.parquet`` (each via temp file + rename)."""
        import faiss

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / self.INDEX_FILE, lambda fh: fh.write(faiss.serialize_index(self.index).tobytes()))
        ids = pa.table({"id": pa.array(self._ids, pa.string())})
        atomic_write(directory / self.IDS_FILE, lambda fh: pq.write_table(ids, fh, compression="zstd"))

    @classmethod
    def open(cls, directory: str | Path) -> "DenseIndex":
        import faiss

        directory = Path(directory)
        for name in (cls.INDEX_FILE, cls.IDS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"dense index {directory} has no {name}; rebuild it with `lsr index --overwrite`")
        index = faiss.read_index(str(directory / cls.INDEX_FILE))
        ids = pq.read_table(directory / cls.IDS_FILE).column("id").to_pylist()
        if len(ids) != index.ntotal:
            raise ValueError(f"dense index {directory}: {len(ids)} ids for {index.ntotal} vectors; rebuild it")
        return cls(index, ids)

    @staticmethod
    def checksum(directory: str | Path) -> str:
        """sha256 over the saved files; equal for equal contents."""
        h = hashlib.sha256()
        for name in (DenseIndex.INDEX_FILE, DenseIndex.IDS_FILE):
            h.update(file_sha256(Path(directory) / name).encode())
        return h.hexdigest()
