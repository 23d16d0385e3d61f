"""The BM25 leg: bm25s (Lucene BM25, k1=1.5, b=0.75) with English stopwords and the Snowball English stemmer.

These are the settings of the BEIR baseline (``lsr.eval.backends.bm25_run`` builds through this
class), so a collection's BM25 leg scores exactly as the baseline does. The index is built from
the collection's build-time texts only. Upserts and deletes do not rewrite it: a search masks every
document written after the build (``weight_mask``), so a deleted document never comes back and a
replaced one is never scored on its old text; upserted documents are not in the BM25 leg until the
collection is re-indexed. Building is deterministic, so ``lsr repair`` rebuilds byte-equal files
whose crc32s ``lsr.json`` records.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from lsr.files import atomic_write
from lsr.ingest.layout import read_doc_shards

BM25_DIR = "bm25"
IDS_FILE = "ids.json"
DESCRIPTION = "bm25s (lucene, k1=1.5, b=0.75) + English stopwords + PyStemmer Snowball English"


@functools.cache
def _bm25s():
    """bm25s, imported on first use with its logger quietened once (it sets DEBUG on import; setting a level
    clears every logger's cache, 0.3 ms that a search must not pay per query)."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


class Bm25Index:
    """Text → (doc id, BM25 score) over the documents it was built from."""

    def __init__(self, retriever, ids: Sequence[str]) -> None:
        import Stemmer

        if getattr(retriever, "nonoccurrence_array", None) is not None:  # bm25l / bm25+: ``bm25_top_k`` adds no such term
            raise ValueError(f"BM25 method {retriever.method!r} is not supported; the BM25 leg is Lucene BM25")
        self.retriever = retriever
        self.ids = list(ids)
        self._row = {doc_id: row for row, doc_id in enumerate(self.ids)}
        self._stemmer = Stemmer.Stemmer("english")

    @classmethod
    def build(cls, ids: Sequence[str], texts: Sequence[str]) -> "Bm25Index":
        import Stemmer

        bm25s = _bm25s()
        words = bm25s.tokenize(list(texts), stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False,
                               show_progress=False)
        # bm25s numbers tokens in set order, which changes with the process's hash seed; sorted ids make
        # the files a function of the texts alone (so resumed builds and repairs are byte-identical)
        vocab = {token: i for i, token in enumerate(sorted({w for doc in words for w in doc}))}
        tokens = bm25s.tokenization.Tokenized(ids=[[vocab[w] for w in doc] for doc in words], vocab=vocab)
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        return cls(retriever, ids)

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
        term_of = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
        parts, start = [], 0
        for size in sizes:
            keep = (rows >= start) & (rows < start + size)
            counts = np.bincount(term_of[keep], minlength=len(indptr) - 1)
            retriever = copy.copy(self.retriever)
            retriever.scores = {"data": scores["data"][keep], "indices": (rows[keep] - start).astype(rows.dtype),
                                "indptr": np.concatenate([[0], np.cumsum(counts)]).astype(indptr.dtype),
                                "num_docs": int(size)}
            parts.append(Bm25Index(retriever, self.ids[start : start + size]))
            start += size
        return parts

    def save(self, folder: Path) -> list[Path]:
        """Write the index into ``folder`` (replacing it); returns the files, for their crc32 records."""
        folder = Path(folder)
        shutil.rmtree(folder, ignore_errors=True)
        self.retriever.save(str(folder), show_progress=False)
        atomic_write(folder / IDS_FILE, lambda fh: fh.write(json.dumps(self.ids).encode("utf-8")))
        return sorted(p for p in folder.iterdir() if p.is_file())

    @classmethod
    def open(cls, folder: Path) -> "Bm25Index":
        folder = Path(folder)
        if not (folder / IDS_FILE).is_file():
            raise FileNotFoundError(f"{folder / IDS_FILE} is missing")
        retriever = _bm25s().BM25.load(str(folder), mmap=False, show_progress=False)
        return cls(retriever, json.loads((folder / IDS_FILE).read_text(encoding="utf-8")))

    def search(self, texts: Sequence[str], k: int, hidden: Iterable[str] = ()) -> list[dict[str, float]]:
        """Top ``k`` ids with a positive score per text; the ``hidden`` ids are never returned.

        bm25s tokenises and stems the texts; ``lsr.search.bm25_top_k`` sums the scores, bit for bit bm25s's.
        """
        from lsr.search.bm25_top_k import top_k

        hidden_rows = np.asarray([self._row[doc_id] for doc_id in hidden if doc_id in self._row], np.int64)
        words = _bm25s().tokenize(list(texts), stopwords="en", stemmer=self._stemmer, return_ids=False,
                                  show_progress=False)
        vocab, scores = self.retriever.vocab_dict, self.retriever.scores
        out = []
        for query in words:
            terms = np.asarray([vocab[w] for w in query if w in vocab], np.int64)
            rows, values = top_k(scores, terms, hidden_rows, min(k, len(self.ids)))
            out.append(dict(zip([self.ids[r] for r in rows.tolist()], values.tolist())))
        return out


def build_bm25(out: Path, n_shards: int) -> list[Path]:
    """Build a collection's BM25 leg from its build texts into ``out/bm25``; returns the files written."""
    return Bm25Index.build(*read_doc_shards(out, n_shards)).save(out / BM25_DIR)
