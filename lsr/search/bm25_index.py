"""The BM25 leg: bm25s (Lucene BM25, k1=1.5, b=0.75) with English stopwords and the Snowball English stemmer.

These are the settings of the BEIR baseline (``lsr.eval.backends.bm25_run`` builds through this
class), so a collection's BM25 leg scores exactly as the baseline does. The index is built from
the collection's build-time texts only, and keeps the build's statistics (``Bm25Stats``: document
count, average length, document frequencies) so that documents written later can be scored as if
they had been in the build (``lsr.search.bm25_leg``). Building is deterministic, so ``lsr repair``
rebuilds byte-equal files whose crc32s ``lsr.json`` records.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from lsr.encode.cpu_share import usable_cpus
from lsr.files import NUMPY_LOADS, atomic_write, write_failed, write_json_atomic
from lsr.ingest.layout import DOC_CHUNK, doc_chunks
from lsr.search.bm25_build import Bm25Builder, bm25s_module, counted_chunks, tokenize

BM25_DIR = "bm25"
IDS_FILE = "ids.json"
STATS_FILE = "stats.json"
DOC_FREQS_FILE = "doc_freqs.npy"
DESCRIPTION = "bm25s (lucene, k1=1.5, b=0.75) + English stopwords + PyStemmer Snowball English"


@dataclass(frozen=True)
class Bm25Stats:
    """The statistics a build scored its documents with: a shard of a sharded build holds the whole collection's."""

    num_docs: int
    avg_doc_len: float
    doc_freqs: np.ndarray  # documents holding each term, by the index's term id

    def idf(self, doc_freq: int) -> np.float32:
        """Lucene's IDF of a term in ``doc_freq`` documents: bm25s's float32 of ``math.log``'s double."""
        return np.float32(math.log(1 + (self.num_docs - doc_freq + 0.5) / (doc_freq + 0.5)))


class Bm25Index:
    """Text → (doc id, BM25 score) over the documents it was built from."""

    def __init__(self, retriever, ids: Sequence[str], stats: Bm25Stats | None = None) -> None:
        import Stemmer

        if getattr(retriever, "nonoccurrence_array", None) is not None:  # bm25l / bm25+: ``bm25_top_k`` adds no such term
            raise ValueError(f"BM25 method {retriever.method!r} is not supported; the BM25 leg is Lucene BM25")
        self.retriever = retriever
        self.ids = list(ids)
        self.stats = stats  # None for a leg saved before builds kept them
        self._stemmer = Stemmer.Stemmer("english")

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str], workers: int = 1) -> "Bm25Index":
        _check_one_id_a_text(ids, texts)  # else zip would drop the longer one's last chunks without a word
        return cls.build_from(zip(_chunked(ids), _chunked(texts)), workers)

    @classmethod
    def build_from(cls, chunks: Iterable[tuple[Sequence[str], Sequence[str]]], workers: int = 1,
                   on_chunk: Callable[[int], object] = lambda n: None) -> "Bm25Index":
        """The index of (ids, texts) chunks in order, holding a few chunks' texts at a time, tokenised by ``workers``
        processes (``bm25_build``); ``on_chunk`` is told each chunk's document count once it is counted."""
        builder = Bm25Builder()
        ids: list[str] = []
        for chunk_ids, counts in counted_chunks(_same_lengths(chunks), workers):
            builder.add(counts)
            ids += chunk_ids
            on_chunk(len(chunk_ids))
        retriever, n_docs, avg_doc_len, doc_freqs = builder.finish()
        return cls(retriever, ids, Bm25Stats(n_docs, avg_doc_len, doc_freqs))

    def split(self, sizes: Sequence[int]) -> list["Bm25Index"]:
        """Consecutive runs of ``sizes`` documents as separate indexes that keep this index's scores.

        Each (document, term) score is stored precomputed with the whole index's IDF and average length,
        so cutting the score matrix by document gives shards whose scores equal the unsharded leg's.
        """
        import copy

        if sum(sizes) != len(self.ids):
            raise ValueError(f"the sizes add up to {sum(sizes)} documents, the index holds {len(self.ids)}")
        scores = self.retriever.scores
        indptr, rows = scores["indptr"], scores["indices"]
        term_of = np.repeat(np.arange(len(indptr) - 1, dtype=np.int32), np.diff(indptr))
        parts, start = [], 0
        for size in sizes:
            keep = (rows >= start) & (rows < start + size)
            counts = np.bincount(term_of[keep], minlength=len(indptr) - 1)
            retriever = copy.copy(self.retriever)
            retriever.scores = {"data": scores["data"][keep], "indices": (rows[keep] - start).astype(rows.dtype),
                                "indptr": np.concatenate([[0], np.cumsum(counts)]).astype(indptr.dtype),
                                "num_docs": int(size)}
            parts.append(Bm25Index(retriever, self.ids[start : start + size], self.stats))
            start += size
        return parts

    def save(self, folder: Path) -> list[Path]:
        """Write the index into ``folder`` (replacing it); returns the files, for their crc32 records."""
        folder = Path(folder)
        shutil.rmtree(folder, ignore_errors=True)
        try:
            self.retriever.save(str(folder), show_progress=False)
        except OSError as exc:  # numpy's short write on a full disk said "28950 requested and 17376 written", no more
            raise write_failed(folder, exc) from exc
        atomic_write(folder / IDS_FILE, lambda fh: fh.write(json.dumps(self.ids).encode("utf-8")))
        if self.stats is not None:
            write_json_atomic(folder / STATS_FILE, {"num_docs": self.stats.num_docs, "avg_doc_len": self.stats.avg_doc_len})
            atomic_write(folder / DOC_FREQS_FILE, lambda fh: np.save(fh, self.stats.doc_freqs, allow_pickle=False))
        return sorted(p for p in folder.iterdir() if p.is_file())

    @classmethod
    def open(cls, folder: Path, with_stats: bool = True) -> "Bm25Index":
        """``with_stats=False`` ignores statistics files (a collection whose ``lsr.json`` does not vouch for them)."""
        folder = Path(folder)
        if not (folder / IDS_FILE).is_file():
            raise FileNotFoundError(f"{folder / IDS_FILE} is missing")
        with NUMPY_LOADS:  # bm25s loads .npy files too
            retriever = bm25s_module().BM25.load(str(folder), mmap=True, show_progress=False)
            stats = None
            if with_stats and (folder / STATS_FILE).is_file():
                recorded = json.loads((folder / STATS_FILE).read_text(encoding="utf-8"))
                stats = Bm25Stats(int(recorded["num_docs"]), float(recorded["avg_doc_len"]),
                                  np.load(folder / DOC_FREQS_FILE, allow_pickle=False))
        return cls(retriever, json.loads((folder / IDS_FILE).read_text(encoding="utf-8")), stats)

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """bm25s's words of each text (stopwords out, stemmed), as the build tokenised its documents."""
        return tokenize(texts, self._stemmer)

    def search(self, texts: Sequence[str], k: int, hidden: Iterable[str] = ()) -> list[dict[str, float]]:
        """Top ``k`` ids with a positive score per text; the ``hidden`` ids are never returned (the scoring loop of
        ``lsr.search.bm25_leg``, with no documents written since: bit for bit bm25s's scores)."""
        from lsr.search.bm25_leg import Bm25Leg

        return Bm25Leg(self, self.rows(hidden)).search(texts, k)

    def rows(self, ids: Iterable[str]) -> np.ndarray:
        """The rows of the ids this index holds (others are left out)."""
        ids = list(ids)
        if not ids:  # an open with no writes since the build asks for none: the map is not built for it
            return np.zeros(0, np.int64)
        row = self._row_of
        return np.asarray([row[doc_id] for doc_id in ids if doc_id in row], np.int64)

    @functools.cached_property
    def _row_of(self) -> dict[str, int]:
        """doc id → row, built when first asked (a leg with documents written since the build): a server that only
        searches never holds it (about 100 bytes a document)."""
        return {doc_id: row for row, doc_id in enumerate(self.ids)}


def build_bm25(out: Path, n_shards: int, on_chunk: Callable[[int], object] = lambda n: None,
               workers: int | None = None) -> list[Path]:
    """Build a collection's BM25 leg from its build texts into ``out/bm25``, tokenised by ``workers`` processes
    (default: one per CPU this process may use); returns the files written. ``on_chunk`` is told each chunk's
    document count (progress)."""
    return Bm25Index.build_from(doc_chunks(out, n_shards), workers or usable_cpus(), on_chunk).save(out / BM25_DIR)


def _same_lengths(chunks: Iterable[tuple[Sequence[str], Sequence[str]]]):
    """The chunks, each checked to hold as many ids as texts (a mismatch built an index whose rows named the wrong
    documents)."""
    for ids, texts in chunks:
        _check_one_id_a_text(ids, texts)
        yield ids, texts


def _check_one_id_a_text(ids: Sequence[str], texts: Sequence[str]) -> None:
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} ids for {len(texts)} texts: the BM25 index needs one id a text")


def _chunked(items: Sequence, size: int = DOC_CHUNK) -> Iterator[Sequence]:
    return (items[start : start + size] for start in range(0, len(items), size))
