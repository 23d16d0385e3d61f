"""Building the BM25 leg from texts given a chunk at a time: bm25s's index, bit for bit, in bounded memory.

``bm25s.BM25.index`` needs every text and every document's word list at once, as Python lists, on one core: 1M
SciFact-sized documents peaked at 7.0 GB. Here bm25s tokenises one chunk at a time, in worker processes where
there are several chunks, and each (document, word) pair is kept as a word id and a count, 8 bytes. The scores need
the corpus's statistics (document count, average length, document frequencies), so they are computed once the last
chunk is in, with bm25s's formulas in bm25s's order of float operations, and laid out term by term as bm25s's CSC
matrix. The files ``Bm25Index.save`` writes are byte-equal to bm25s's own build (``tests/test_bm25_build.py``).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import logging
import math
import multiprocessing
import os
import signal
import sys
import unicodedata
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from lsr.files import MachineStateError
from lsr.index.jit import njit

K1 = 1.5  # bm25s's defaults: the Lucene BM25 of the BEIR baseline
B = 0.75
PR_SET_PDEATHSIG = 1  # linux/prctl.h
MAX_WORKERS = 8  # tokenising processes at most: past it, the merge in the building process keeps up no more
SCORE_DOCS = 1024  # documents scored at a time: bounds the float64 temporaries (about 40 bytes a pair)


@functools.cache
def bm25s_module():
    """bm25s, imported on first use with its logger quietened once (it sets DEBUG on import; setting a level
    clears every logger's cache, 0.3 ms that a search must not pay per query), and without jax (``_jax_hidden``)."""
    with _jax_hidden():
        import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


@contextmanager
def _jax_hidden() -> Iterator[None]:
    """While it stands, ``import jax`` fails, unless this process imported jax already.

    Where jax is installed, bm25s imports it on import, for a top-k lsr never calls, and runs one op with it: jax
    then starts its default backend, which on a GPU takes 75% of the card's memory (its default preallocation)
    from the encoder beside it. On a lent H200 that made `lsr index`'s BM25 stage 6.2 s against 1.0 s here.
    """
    if "jax" in sys.modules:
        yield
        return
    sys.modules["jax"] = None  # an import finding None here raises ImportError, which bm25s takes as "no jax"
    try:
        yield
    finally:
        if sys.modules.get("jax", False) is None:  # still our marker: no other import put jax there meanwhile
            del sys.modules["jax"]


def tokenize(texts: Sequence[str], stemmer) -> list[list[str]]:
    """bm25s's words of each text: English stopwords out, stemmed (the leg's one tokenisation)."""
    return bm25s_module().tokenize(composed(texts), stopwords="en", stemmer=stemmer, return_ids=False,
                                   show_progress=False)


def composed(texts: Sequence[str]) -> list[str]:
    """The texts in NFC. A word stored or typed decomposed (macOS input, some PDF extractions: "Mu" + U+0308 + "nchen")
    was split at its combining marks, which bm25s's word pattern takes for no letters: "München" found none of it."""
    return [unicodedata.normalize("NFC", text) for text in texts]


@dataclass
class ChunkCounts:
    """A chunk's word counts: each (document, word) pair of its documents, in document order, with words numbered by
    the chunk (``words``); what a tokenising worker sends back, a fraction of the word lists bm25s gives."""

    words: list[str]  # the chunk's word number -> word
    pair_words: np.ndarray  # int32, the chunk's numbers
    pair_counts: np.ndarray  # float32: the word's count in the document (bm25s's tf)
    pairs_per_doc: np.ndarray  # int64
    lengths: np.ndarray  # int64: words per document, repeats counted (bm25s's document length)


def count_words(texts: Sequence[str]) -> ChunkCounts:
    """Tokenise a chunk of documents as bm25s does and count each document's words."""
    import Stemmer

    tokens = bm25s_module().tokenize(composed(texts), stopwords="en", stemmer=Stemmer.Stemmer("english"),
                                     return_ids=True, show_progress=False)
    lengths = np.fromiter(map(len, tokens.ids), np.int64, count=len(tokens.ids))
    flat = np.fromiter(itertools.chain.from_iterable(tokens.ids), np.int64, count=int(lengths.sum()))
    n_words = max(len(tokens.vocab), 1)
    pairs, counts = np.unique(np.repeat(np.arange(len(lengths), dtype=np.int64), lengths) * n_words + flat,
                              return_counts=True)
    return ChunkCounts(sorted(tokens.vocab, key=tokens.vocab.__getitem__), (pairs % n_words).astype(np.int32),
                       counts.astype(np.float32), np.bincount(pairs // n_words, minlength=len(lengths)).astype(np.int64),
                       lengths)


def counted_chunks(chunks: Iterable[tuple[Sequence[str], Sequence[str]]],
                   workers: int) -> Iterator[tuple[Sequence[str], ChunkCounts]]:
    """(ids, counts) of each (ids, texts) chunk, in order; tokenised by ``workers`` processes where there is more
    than one chunk (bm25s's tokeniser is Python: one core does about 9,000 SciFact documents a second)."""
    chunks = iter(chunks)
    first = list(itertools.islice(chunks, 2))
    if workers <= 1 or len(first) < 2 or sys.platform != "linux":
        for ids, texts in itertools.chain(first, chunks):
            yield ids, count_words(texts)
        return
    workers = min(workers, MAX_WORKERS)
    # forked, as PyTorch's DataLoader workers are: spawned ones import the caller's __main__ again, which runs a
    # script's top-level code (not under `if __name__ == "__main__"`) in every worker
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_start,
                               initargs=(os.getpid(),))
    try:
        pending: deque = deque()  # at most two chunks a worker read ahead: memory stays a few chunks' texts
        for ids, texts in itertools.chain(first, chunks):
            pending.append((ids, pool.submit(count_words, texts)))
            if len(pending) > 2 * workers:
                yield _result(*pending.popleft())
        while pending:
            yield _result(*pending.popleft())
    except BaseException:  # a failure, Ctrl-C, SIGTERM, or the consumer gone: the workers' chunks are not waited for
        _kill_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(ids: Sequence[str], counted) -> tuple[Sequence[str], ChunkCounts]:
    try:
        return ids, counted.result()
    except BrokenProcessPool:
        raise MachineStateError("a process tokenising texts for the BM25 leg ended abruptly (killed, or out of "
                                "memory: each holds about 300 MB)") from None


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Python 3.14's ``ProcessPoolExecutor.kill_workers``, on the versions before it."""
    if hasattr(pool, "kill_workers"):
        pool.kill_workers()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()


def _worker_start(parent: int) -> None:
    """A worker dies with the building process, even by kill -9 (forked, it holds the task pipe's write end too, so it
    would never read end-of-file, and waited forever), and sits in a process group of its own: a Ctrl-C or SIGTERM to
    the building process's group is that process's to handle (it kills the workers), while the pool's own SIGTERM (a
    worker died: the others are stopped) still ends it."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    os.setpgid(0, 0)


class Bm25Builder:
    """Takes chunks' word counts in corpus order (``add``), then gives the bm25s retriever and its statistics
    (``finish``)."""

    def __init__(self) -> None:
        self._words: dict[str, int] = {}  # word -> id, in the order first seen
        self._pair_words: list[np.ndarray] = []  # per chunk: the word id of each (document, word) pair
        self._pair_counts: list[np.ndarray] = []  # per chunk: its count in the document (float32, as bm25s's tf)
        self._pairs_per_doc: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []  # per chunk: words per document, repeats counted (int64)

    def add(self, counts: ChunkCounts) -> None:
        """Keep a chunk's counts, its words numbered as the builder's."""
        to_word = np.fromiter((self._words.setdefault(word, len(self._words)) for word in counts.words), np.int32,
                              count=len(counts.words))
        self._pair_words.append(to_word[counts.pair_words])
        self._pair_counts.append(counts.pair_counts)
        self._pairs_per_doc.append(counts.pairs_per_doc)
        self._lengths.append(counts.lengths)

    def finish(self):
        """(bm25s retriever, document count, average length, document frequencies); the builder is spent."""
        words = list(self._words)
        order = sorted(range(len(words)), key=words.__getitem__)  # files a function of the texts alone
        final = np.empty(len(words), np.int32)
        final[order] = np.arange(len(words), dtype=np.int32)
        vocab = {words[w]: i for i, w in enumerate(order)} or {"\x00": 0}  # no word: one column nothing holds
        for chunk in self._pair_words:
            chunk[:] = final[chunk]
        terms = _joined(self._pair_words, np.int32)
        counts = _joined(self._pair_counts, np.float32)
        pairs_per_doc = _joined(self._pairs_per_doc, np.int64)
        lengths = _joined(self._lengths, np.int64)
        n_docs = len(lengths)
        avg = lengths.mean() if n_docs else np.float64(0.0)  # bm25s's own mean: numpy's, over an int64 array
        doc_freqs = np.bincount(terms, minlength=len(vocab)).astype(np.int64)
        scores = _scores(terms, counts, pairs_per_doc, lengths, avg, _idf(doc_freqs, n_docs))
        indptr = np.zeros(len(vocab) + 1, np.int64)
        np.cumsum(doc_freqs, out=indptr[1:])
        data, rows = np.empty(len(terms), np.float32), np.empty(len(terms), np.int32)
        _by_term(terms, scores, pairs_per_doc, indptr, data, rows)
        return _retriever(data, rows, indptr, n_docs, vocab), n_docs, float(avg), doc_freqs


def _joined(chunks: list[np.ndarray], dtype) -> np.ndarray:
    """The chunks as one array; the list is emptied as it goes, so the pieces are freed."""
    out = np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.zeros(0, dtype)
    chunks.clear()
    return out


def _idf(doc_freqs: np.ndarray, n_docs: int) -> np.ndarray:
    """bm25s's Lucene IDF per term, float32 of ``math.log``'s double (numpy's log may differ in the last bit)."""
    values = {df: math.log(1 + (n_docs - df + 0.5) / (df + 0.5)) for df in np.unique(doc_freqs).tolist() if df}
    return np.array([values.get(df, 0.0) for df in doc_freqs.tolist()], np.float32)


def _scores(terms: np.ndarray, counts: np.ndarray, pairs_per_doc: np.ndarray, lengths: np.ndarray, avg,
            idf: np.ndarray) -> np.ndarray:
    """Each pair's score, into ``counts``'s array: ``idf * tf / (k1 * ((1 - b) + b * l_d / l_avg) + tf)``, each
    operation in float64 as bm25s's scalar-times-array code does, then rounded to float32 as bm25s stores it."""
    with np.errstate(divide="ignore", invalid="ignore"):  # no word in any document: avg 0, and no pair to score
        norm = K1 * ((1 - B) + B * lengths / avg)
    starts = np.concatenate([[0], np.cumsum(pairs_per_doc)])
    for first in range(0, len(lengths), SCORE_DOCS):
        docs = slice(first, first + SCORE_DOCS)
        pairs = slice(starts[first], starts[min(first + SCORE_DOCS, len(lengths))])
        tf = counts[pairs].astype(np.float64)
        counts[pairs] = idf[terms[pairs]] * (tf / (np.repeat(norm[docs], pairs_per_doc[docs]) + tf))
    return counts


@njit(cache=True, nogil=True)
def _by_term(terms, scores, pairs_per_doc, indptr, data, rows):
    """Scatter the pairs (in document order) into CSC by term: each term's documents ascending, as bm25s sorts."""
    cursor = indptr[:-1].copy()
    pair = 0
    for doc in range(pairs_per_doc.shape[0]):
        for _ in range(pairs_per_doc[doc]):
            at = cursor[terms[pair]]
            data[at] = scores[pair]
            rows[at] = doc
            cursor[terms[pair]] = at + 1
            pair += 1


def _retriever(data: np.ndarray, rows: np.ndarray, indptr: np.ndarray, n_docs: int, vocab: dict[str, int]):
    """A bm25s ``BM25`` holding these scores, as ``BM25.index`` leaves one (``""`` added last to its vocabulary)."""
    retriever = bm25s_module().BM25()
    if (retriever.k1, retriever.b, retriever.method) != (K1, B, "lucene"):
        raise RuntimeError(f"bm25s's defaults changed to k1={retriever.k1}, b={retriever.b}, {retriever.method}")
    retriever.scores = {"data": data, "indices": rows, "indptr": indptr, "num_docs": n_docs}
    retriever.vocab_dict = {**vocab, "": len(vocab)}
    retriever.unique_token_ids_set = set(retriever.vocab_dict.values())
    retriever.nonoccurrence_array = None
    return retriever
