"""A collection's BM25 leg at one version: the build's index, and the documents written since scored alike.

bm25s cannot add documents, and rebuilding it rescores every document, so the build's index stays as it was
and hides every document written since (deleted, or replaced: its old text). The documents upserted since are
held beside it in chunks, each document stored as its terms and their term-frequency components at the build's
average length, and scored with the build's IDF: a document upserted with its build text scores the same bits
as before, and one with new text scores as if the build had held it. A term the build never saw takes its
document frequency from the live upserted documents (in a sharded collection, those of its shard).

A version is immutable (a search pins it); ``with_updates`` gives the next one. Chunks are appended per write
and merged while the one before the last holds at most twice the last's live documents, so a leg holds a
logarithmic number of chunks and each document is copied a logarithmic number of times; once dead rows
outnumber the live ones every chunk is rewritten as one.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

from lsr.search.bm25_index import Bm25Index
from lsr.search.bm25_top_k import best_first, bm25_chunk_top_k, new_heap, push_matrix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Chunk:
    """Documents written after the build, term by term as the build's score matrix is: ``rows`` and ``tfc`` of
    term ``term_ids[i]`` at ``term_ptr[i]:term_ptr[i + 1]``; terms past the build's vocabulary sort last."""

    ids: tuple[str, ...]  # by row
    term_ids: np.ndarray  # int64, sorted
    term_ptr: np.ndarray  # int64, one more than the terms
    rows: np.ndarray  # int32
    tfc: np.ndarray  # float64: bm25s's term-frequency component at the build's average length
    alive: np.ndarray  # bool per row: False once the document is rewritten or deleted

    @property
    def live(self) -> int:
        return int(self.alive.sum())

    def terms_from(self, first: int, row: int) -> np.ndarray:
        """The terms numbered ``first`` or above that ``row`` holds."""
        start = int(np.searchsorted(self.term_ids, first))
        entries = np.arange(self.term_ptr[start], self.term_ptr[-1])
        terms = np.repeat(self.term_ids[start:], np.diff(self.term_ptr[start:]))
        return terms[self.rows[entries] == row]

    def live_entries(self, first_row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(term, row, tfc) of every live document's terms, the live rows numbered from ``first_row``."""
        renumbered = first_row + np.cumsum(self.alive) - 1
        terms = np.repeat(self.term_ids, np.diff(self.term_ptr))
        keep = self.alive[self.rows]
        return terms[keep], renumbered[self.rows[keep]], self.tfc[keep]


def _chunk(ids: Sequence[str], terms: np.ndarray, rows: np.ndarray, tfc: np.ndarray) -> _Chunk:
    """A chunk of ``ids`` from its (term, row, tfc) entries, rows ascending (a term's entries keep their order).

    A merge hands over the chunks' entries one after another, each run sorted by term already: the stable sort
    (timsort) merges the runs in linear time.
    """
    order = np.argsort(terms, kind="stable")
    term_ids, counts = np.unique(terms[order], return_counts=True)
    return _Chunk(tuple(ids), term_ids.astype(np.int64), np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                  rows[order].astype(np.int32), tfc[order].astype(np.float64), np.ones(len(ids), np.bool_))


def _merge(chunks: Sequence[_Chunk]) -> _Chunk:
    """One chunk of the live documents of ``chunks``, in their order."""
    ids, parts = [], []
    for chunk in chunks:
        parts.append(chunk.live_entries(len(ids)))
        ids += [chunk.ids[r] for r in np.flatnonzero(chunk.alive).tolist()]
    return _chunk(ids, *(np.concatenate(column) for column in zip(*parts)))


class Bm25Leg:
    """``search`` over the build's BM25 index and the documents written since; ``with_updates`` for the next
    version. A build saved without its statistics (``Bm25Index.stats`` None) only hides what was written."""

    def __init__(self, base: Bm25Index, hidden_rows: np.ndarray | None = None, chunks: tuple[_Chunk, ...] = (),
                 where: dict[str, tuple[int, int]] | None = None, new_terms: dict[str, int] | None = None,
                 new_doc_freqs: dict[int, int] | None = None) -> None:
        self.base = base
        self._hidden_rows = np.zeros(0, np.int64) if hidden_rows is None else hidden_rows  # build rows written since
        self._chunks = chunks
        self._where = where or {}  # id → (chunk, row) of its live later-written document
        self._new_terms = {} if new_terms is None else new_terms  # shared by later versions, only ever added to
        self._new_doc_freqs = new_doc_freqs or {}  # new term id → live documents holding it, in this version
        sizes = np.asarray([len(chunk.ids) for chunk in chunks], np.int64)
        self._offsets = len(base.ids) + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

    @classmethod
    def written(cls, base: Bm25Index, ids: Sequence[str], texts: Sequence[str | None]) -> "Bm25Leg":
        """The leg of a collection whose journal wrote ``texts`` (None: deleted) under ``ids`` since the build."""
        upserted = sum(text is not None for text in texts)
        if upserted and base.stats is None:
            log.warning("this collection's BM25 leg was built before lsr kept the build's statistics: the %d "
                        "documents upserted since the build are not in it; `lsr repair` on the collection (its "
                        "servers stopped) adds them", upserted)
        return cls(base).with_updates(ids, texts)

    def saved_state(self) -> dict:
        """All a later open needs to rebuild this version (``bm25_leg_file``): the build rows written since, the live
        documents upserted since as one chunk's ``ids``, ``term_ids``, ``term_ptr``, ``rows`` and ``tfc``, and the
        words the build never saw, in term id order. The base must have its statistics."""
        empty = [np.zeros(0, dtype) for dtype in (np.int64, np.int64, np.float64)]
        chunk = _merge(self._chunks) if self._chunks else _chunk([], *empty)
        return {"hidden_rows": self._hidden_rows, "ids": list(chunk.ids), "term_ids": chunk.term_ids,
                "term_ptr": chunk.term_ptr, "rows": chunk.rows, "tfc": chunk.tfc,
                "new_words": sorted(self._new_terms, key=self._new_terms.__getitem__)}

    @classmethod
    def from_saved(cls, base: Bm25Index, state: dict) -> "Bm25Leg":
        """The version ``saved_state`` described, without tokenising a text again."""
        ids = state["ids"]
        chunk = _Chunk(tuple(ids), state["term_ids"], state["term_ptr"], state["rows"], state["tfc"],
                       np.ones(len(ids), np.bool_))
        n_vocab = len(base.stats.doc_freqs)
        new = chunk.term_ids >= n_vocab
        doc_freqs = dict(zip(chunk.term_ids[new].tolist(), np.diff(chunk.term_ptr)[new].tolist()))
        where = {doc_id: (0, row) for row, doc_id in enumerate(ids)}
        return cls(base, state["hidden_rows"], (chunk,) if ids else (), where,
                   {word: n_vocab + i for i, word in enumerate(state["new_words"])}, doc_freqs)

    @property
    def live_written(self) -> int:
        """Documents upserted since the build and still live: those the BM25 leg holds beside the build's."""
        return len(self._where)

    def with_updates(self, ids: Sequence[str], texts: Sequence[str | None]) -> "Bm25Leg":
        """The next version: ``texts`` (None: deleted) under ``ids``, the last text winning for a repeated id."""
        latest = dict(zip(ids, texts))
        hidden = np.union1d(self._hidden_rows, self.base.rows(latest))
        if self.base.stats is None:
            return Bm25Leg(self.base, hidden)
        chunks, where, doc_freqs = list(self._chunks), dict(self._where), dict(self._new_doc_freqs)
        n_vocab = len(self.base.stats.doc_freqs)  # term ids from here on are new since the build
        copied: set[int] = set()
        for doc_id in latest:
            if doc_id in where:
                c, row = where.pop(doc_id)
                if c not in copied:
                    chunks[c] = replace(chunks[c], alive=chunks[c].alive.copy())
                    copied.add(c)
                chunks[c].alive[row] = False
                gone = chunks[c].terms_from(n_vocab, row)
                self._add_doc_freqs(doc_freqs, gone, -np.ones(len(gone), np.int64))
        upserted = [(doc_id, text) for doc_id, text in latest.items() if text is not None]
        if upserted:
            chunk = self._scored([doc_id for doc_id, _ in upserted], [text for _, text in upserted])
            new = chunk.term_ids >= n_vocab
            self._add_doc_freqs(doc_freqs, chunk.term_ids[new], np.diff(chunk.term_ptr)[new])
            chunks.append(chunk)
        chunks, first_new = _merged(chunks, len(self._chunks))
        for c in range(first_new, len(chunks)):  # new chunks hold live rows only
            where.update((doc_id, (c, row)) for row, doc_id in enumerate(chunks[c].ids))
        return Bm25Leg(self.base, hidden, tuple(chunks), where, self._new_terms, doc_freqs)

    @staticmethod
    def _add_doc_freqs(doc_freqs: dict[int, int], terms: np.ndarray, counts: np.ndarray) -> None:
        """Add ``counts`` to the live document frequencies of the new ``terms``, dropping those that reach 0."""
        for term, count in zip(terms.tolist(), counts.tolist()):
            doc_freqs[term] = doc_freqs.get(term, 0) + count
            if not doc_freqs[term]:
                del doc_freqs[term]

    def _scored(self, ids: list[str], texts: list[str]) -> _Chunk:
        """A chunk of the texts: each term's term-frequency component, as bm25s's build computes it."""
        from bm25s.scoring import _select_tfc_scorer

        retriever, stats = self.base.retriever, self.base.stats
        tfc_of = _select_tfc_scorer(retriever.method)
        vocab, n_vocab = retriever.vocab_dict, len(stats.doc_freqs)
        # a numpy scalar, as bm25s's mean is: it sets tfc's dtype. A build with no word has no average length (0:
        # every later score was 0, with a divide warning); 1 scores later documents as a one-word average would
        avg_doc_len = np.float64(stats.avg_doc_len or 1.0)
        terms, rows, tfc = [], [], []
        for row, words in enumerate(self.base.tokenize(texts)):
            counts = Counter(words)
            terms.append(np.asarray([vocab[w] if w in vocab else self._new_terms.setdefault(w, n_vocab + len(self._new_terms))
                                     for w in counts], np.int64))
            rows.append(np.full(len(counts), row, np.int64))
            tfc.append(np.asarray(tfc_of(tf_array=np.asarray(list(counts.values()), np.float32), l_d=len(words),
                                         l_avg=avg_doc_len, k1=retriever.k1, b=retriever.b), np.float64))
        return _chunk(ids, *(np.concatenate([np.zeros(0, dtype)] + column) for column, dtype in
                             ((terms, np.int64), (rows, np.int64), (tfc, np.float64))))

    def search(self, texts: Sequence[str], k: int,
               new_word_doc_freqs: Mapping[str, int] | None = None) -> list[dict[str, float]]:
        """Top ``k`` ids with a positive score per text, best first; ties go to the build's documents (the lower
        row first), then to the later-written ones. ``new_word_doc_freqs`` replaces this leg's document frequency of
        a word the build never saw (a sharded collection's sum over its shards, so each shard scores as the whole
        collection would)."""
        return [self._search_words(words, k, new_word_doc_freqs or {}) for words in self.base.tokenize(texts)]

    def new_word_doc_freqs(self, text: str) -> dict[str, int]:
        """The live documents of this version holding each word of ``text`` that the build never saw (none left
        out): what a sharded search sums over the shards."""
        if self.base.stats is None:
            return {}
        vocab = self.base.retriever.vocab_dict
        found = {word: self._new_doc_freqs.get(self._new_terms.get(word, -1), 0)
                 for word in self.base.tokenize([text])[0] if word not in vocab}
        return {word: count for word, count in found.items() if count}

    def _search_words(self, words: list[str], k: int, new_word_doc_freqs: Mapping[str, int]) -> dict[str, float]:
        base = self.base
        heap = new_heap(min(k, len(base.ids) + len(self._where)))
        vocab = base.retriever.vocab_dict
        push_matrix(base.retriever.scores, np.asarray([vocab[w] for w in words if w in vocab], np.int64),
                    self._hidden_rows, heap)
        if self._where and len(heap[0]):
            terms, idf = self._query_terms(words, new_word_doc_freqs)
            if len(terms):
                for chunk, offset in zip(self._chunks, self._offsets.tolist()):
                    bm25_chunk_top_k(chunk.term_ids, chunk.term_ptr, chunk.rows, chunk.tfc, chunk.alive, terms, idf,
                                     offset, *heap)
        rows, scores = best_first(heap)
        return dict(zip(map(self._doc_id, rows.tolist()), scores.tolist()))

    def _query_terms(self, words: list[str], new_word_doc_freqs: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """The query's term ids in order (repeats kept) that a later-written document may hold, with their IDF (a
        new word's from ``new_word_doc_freqs`` where it is given)."""
        stats, vocab = self.base.stats, self.base.retriever.vocab_dict
        terms, idf = [], []
        for word in words:
            if word in vocab:
                term = vocab[word]
                doc_freq = int(stats.doc_freqs[term])
            else:
                term = self._new_terms.get(word, -1)
                doc_freq = self._new_doc_freqs.get(term, 0)
                doc_freq = doc_freq and new_word_doc_freqs.get(word, doc_freq)  # held here: the given count
            if doc_freq:
                terms.append(term)
                # a new word may be in more live documents than the build counted: its IDF went negative, and the
                # documents holding it, the more of them the surer, were never found (a hit needs a positive score)
                idf.append(stats.idf(min(doc_freq, stats.num_docs)))
        return np.asarray(terms, np.int64), np.asarray(idf, np.float32)

    def _doc_id(self, row: int) -> str:
        if row < len(self.base.ids):
            return self.base.ids[row]
        c = int(np.searchsorted(self._offsets, row, side="right")) - 1
        return self._chunks[c].ids[row - int(self._offsets[c])]


def _merged(chunks: list[_Chunk], first_new: int) -> tuple[list[_Chunk], int]:
    """Chunks merged so that each holds more than twice the live documents of the next, or all as one once dead
    rows outnumber live ones; with the index of the first chunk not among the given ones before ``first_new``."""
    live = sum(chunk.live for chunk in chunks)
    if sum(len(chunk.ids) for chunk in chunks) > 2 * live:
        return ([_merge(chunks)] if live else []), 0
    while len(chunks) > 1 and chunks[-2].live <= 2 * chunks[-1].live:
        chunks[-2:] = [_merge(chunks[-2:])]
        first_new = min(first_new, len(chunks) - 1)
    return chunks, first_new
