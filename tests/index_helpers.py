"""Shared checks for the index tests: brute force over the index's own stored vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from lsr.index import InvertedIndex
from lsr.sparse import SparseBatch


def random_csr(rng: np.random.Generator, n_docs: int, vocab: int, density: float, levels: int | None = None) -> sp.csr_matrix:
    """Random non-negative sparse vectors; ``levels`` draws weights from few values to force ties."""
    matrix = sp.random(n_docs, vocab, density=density, format="csr", random_state=rng, dtype=np.float32)
    if levels:
        matrix.data = rng.integers(1, levels + 1, len(matrix.data)).astype(np.float32) / levels
    else:
        matrix.data = rng.exponential(1.0, len(matrix.data)).astype(np.float32)
    return matrix


def live_ids(idx: InvertedIndex) -> list[str]:
    return sorted(idx.doc_ids())


def brute_scores(idx: InvertedIndex, query: dict[int, float]) -> dict[str, float]:
    """Exact scores (float64) of every live doc over the dequantized stored vectors."""
    ids = live_ids(idx)
    if not ids:
        return {}
    docs = idx.get_vectors(ids).to_scipy().astype(np.float64)
    q = np.zeros(idx.vocab_size)
    for t, w in query.items():
        q[t] += w
    return dict(zip(ids, docs @ q))


def assert_exact_topk(idx: InvertedIndex, query: dict[int, float], k: int, **kwargs) -> None:
    """Same top-k as brute force: scores match, and nothing left out scores higher (ties aside)."""
    scores = brute_scores(idx, query)
    hits = idx.search(query, k=k, **kwargs)
    positive = sorted((s for s in scores.values() if s > 0), reverse=True)
    assert len(hits) == min(k, len(positive))
    tol = 1e-4 * max(1.0, positive[0] if positive else 1.0)
    got = [h.score for h in hits]
    assert got == sorted(got, reverse=True)
    assert len({h.doc_id for h in hits}) == len(hits)
    for h in hits:
        assert abs(h.score - scores[h.doc_id]) <= tol, (h, scores[h.doc_id])
    returned = {h.doc_id for h in hits}
    best_left_out = max((s for d, s in scores.items() if d not in returned and s > 0), default=0.0)
    if hits:
        assert hits[-1].score >= best_left_out - tol


def as_batch(matrix: sp.csr_matrix) -> SparseBatch:
    return SparseBatch.from_scipy(matrix)


def write_scifact_jsonl(path: Path, scifact, n_docs: int) -> Path:
    """The first ``n_docs`` real SciFact documents as a JSONL corpus (what `lsr index` reads)."""
    with open(path, "w", encoding="utf-8") as fh:
        for doc_id in list(scifact.corpus)[:n_docs]:
            doc = scifact.corpus[doc_id]
            fh.write(json.dumps({"_id": doc_id, "title": doc["title"], "text": doc["text"]}) + "\n")
    return path


def build_in_process(corpus: Path, out: Path, options, **kwargs):
    """build_collection's Summary, without progress, restoring torch's thread count (a build sets its own)."""
    import torch

    from lsr.ingest.indexing import build_collection

    threads = torch.get_num_threads()
    try:
        return build_collection(corpus, out, options, progress=False, **kwargs)
    finally:
        torch.set_num_threads(threads)
