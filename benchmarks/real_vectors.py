"""Real splade-tiny vectors of SciFact + NFCorpus (docs, their sentences, test queries), cached as Parquet.

Encoding ~8.8k documents on CPU takes minutes, so the vectors are cached outside the repo
(``~/.cache/lsr/bench`` or ``$LSR_BENCH_CACHE``) and reused by the search benchmarks. "sentences" splits every
document into its sentences (about 90k): a real collection ten times larger, whose vectors keep the term
co-occurrence that clustering indexes such as Seismic rely on (a synthetic collection's independent terms do not).
"""

from __future__ import annotations

import os
import re
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
    ids, texts = _sentences(data) if kind == "sentences" else (list(data.corpus), data.doc_texts())
    parts = []
    for start in range(0, len(ids), chunk):
        part = target.with_name(f"{target.name}.part{start // chunk:04d}")
        if not part.exists():
            chunk_ids = ids[start : start + chunk]
            encoder.encode_documents(texts[start : start + chunk], batch_size=32).write_parquet(
                part, [f"{name}/{i}" for i in chunk_ids])
            print(f"{name}: {min(start + chunk, len(ids))}/{len(ids)} {kind} encoded", flush=True)
        parts.append(part)
    batches, all_ids = zip(*(SparseBatch.read_parquet(p) for p in parts))
    SparseBatch.concat(list(batches)).write_parquet(target, [i for chunk_ids in all_ids for i in chunk_ids])
    for part in parts:
        part.unlink()


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")
MIN_SENTENCE_WORDS = 6  # a shorter piece ("Methods.", "n = 12.") joins the sentence after it


def _sentences(data) -> tuple[list[str], list[str]]:
    """(id, text) of every sentence of every document, ids ``doc#n``; the title is the first document's sentence."""
    ids, texts = [], []
    for doc_id in data.corpus:
        doc = data.corpus[doc_id]
        pieces = [doc["title"].strip()] + _SENTENCE_END.split(doc["text"].strip())
        kept, pending = [], ""
        for piece in pieces:
            pending = f"{pending} {piece}".strip()
            if len(pending.split()) >= MIN_SENTENCE_WORDS:
                kept, pending = kept + [pending], ""
        kept += [pending] if pending else []
        ids += [f"{doc_id}#{n}" for n in range(len(kept))]
        texts += kept
    return ids, texts


def load(kind: str, names: tuple[str, ...] = DATASETS) -> tuple[SparseBatch, list[str]]:
    """``kind`` "docs", "sentences" or "queries": the concatenation over ``names``, with ``dataset/id`` ids."""
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
    for kind in ("queries", "docs", "sentences"):
        batch, ids = load(kind)
        print(kind, len(batch), "vectors, mean nnz", round(batch.nnz / max(1, len(batch)), 1))
