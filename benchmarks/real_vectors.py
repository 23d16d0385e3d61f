"""Real splade-tiny vectors of SciFact + NFCorpus (docs and test queries), cached as Parquet.

Encoding ~8.8k documents on CPU takes minutes, so the vectors are cached outside the repo
(``~/.cache/lsr/bench`` or ``$LSR_BENCH_CACHE``) and reused by the search benchmarks.
"""

from __future__ import annotations

import os
from pathlib import Path

from lsr.sparse import SparseBatch

DATASETS = ("nfcorpus", "scifact")
BEIR_DIR = Path(os.environ.get("LSR_BEIR_DIR", "/work/shared/data/beir"))


def cache_dir() -> Path:
    path = Path(os.environ.get("LSR_BENCH_CACHE", Path.home() / ".cache" / "lsr" / "bench"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _encode(name: str, target: Path, kind: str, chunk: int = 512) -> None:
    """Encode in chunks cached as parts, so an interrupted run resumes where it stopped."""
    from lsr.eval.datasets import load_beir
    from lsr.encode.splade import SpladeEncoder

    data = load_beir(BEIR_DIR / f"{name}.tar.gz", splits=("test",))
    encoder = SpladeEncoder.from_pretrained("splade-tiny", device="cpu")
    if kind == "queries":
        ids = [q for q in data.queries if q in data.qrels["test"]]
        batch = encoder.encode_queries([data.queries[q] for q in ids], batch_size=64)
        batch.write_parquet(target, [f"{name}/{i}" for i in ids])
        return
    ids = list(data.corpus)
    parts = []
    for start in range(0, len(ids), chunk):
        part = target.with_name(f"{target.name}.part{start // chunk:04d}")
        if not part.exists():
            chunk_ids = ids[start : start + chunk]
            encoder.encode_documents(data.doc_texts(chunk_ids), batch_size=32).write_parquet(
                part, [f"{name}/{i}" for i in chunk_ids])
            print(f"{name}: {min(start + chunk, len(ids))}/{len(ids)} docs encoded", flush=True)
        parts.append(part)
    batches, all_ids = zip(*(SparseBatch.read_parquet(p) for p in parts))
    SparseBatch.concat(list(batches)).write_parquet(target, [i for chunk_ids in all_ids for i in chunk_ids])
    for part in parts:
        part.unlink()


def load(kind: str, names: tuple[str, ...] = DATASETS) -> tuple[SparseBatch, list[str]]:
    """``kind`` "docs" or "queries": the concatenation over ``names``, with ``dataset/id`` ids."""
    batches, ids = [], []
    for name in names:
        target = cache_dir() / f"{name}.splade-tiny.{kind}.parquet"
        if not target.exists():
            _encode(name, target, kind)
        batch, batch_ids = SparseBatch.read_parquet(target)
        batches.append(batch)
        ids.extend(batch_ids)
    return SparseBatch.concat(batches), ids


if __name__ == "__main__":
    for kind in ("queries", "docs"):
        batch, ids = load(kind)
        print(kind, len(batch), "vectors, mean nnz", round(batch.nnz / max(1, len(batch)), 1))
