"""The BM25 leg scores as bm25s does, bit for bit, with ties at the k-th place going to the lower row."""

from __future__ import annotations

import numpy as np
import pytest

from lsr.search.bm25_index import Bm25Index, _bm25s


@pytest.fixture(scope="module")
def leg(scifact):
    ids = list(scifact.corpus)[:2000]
    return Bm25Index.build(ids, scifact.doc_texts(ids))


def bm25s_scores(leg: Bm25Index, text: str, hidden_rows=()) -> np.ndarray:
    """Every document's score as bm25s's own ``get_scores`` gives it (0 for a hidden row)."""
    words = _bm25s().tokenize([text], stopwords="en", stemmer=leg._stemmer, return_ids=False, show_progress=False)[0]
    mask = np.ones(len(leg.ids), np.float32)
    mask[list(hidden_rows)] = 0.0
    if not [w for w in words if w in leg.retriever.vocab_dict]:
        return np.zeros(len(leg.ids), np.float32)
    return leg.retriever.get_scores(words, weight_mask=mask)


@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_scores_are_bm25s_bits_and_ties_at_the_cut_go_to_the_lower_row(leg, scifact, k):
    texts = list(scifact.queries.values())[:150] + ["the of and", "protein protein protein", "zzzqx unknownword"]
    hidden = leg.ids[5::40]
    hidden_rows = [leg._row[i] for i in hidden]
    tied = 0
    for text, got in zip(texts, leg.search(texts, k, hidden=hidden)):
        want = bm25s_scores(leg, text, hidden_rows)
        positive = np.flatnonzero(want > 0)
        # best first; among equal scores the lower row, over every scored document
        expected = positive[np.lexsort((positive, -want[positive]))][:k]
        assert list(got) == [leg.ids[r] for r in expected]
        assert list(got.values()) == want[expected].tolist()  # the same float32 sums, not approximately
        assert not set(got) & set(hidden)
        if len(expected) == k and (want[positive] == want[expected[-1]]).sum() > (want[expected] == want[expected[-1]]).sum():
            tied += 1
    if k >= 100:
        assert tied > 0  # the case that decides between tied documents was met


def test_stopwords_only_unknown_words_and_an_empty_leg(leg, scifact):
    assert leg.search(["the of and", "zzzqx", ""], 10) == [{}, {}, {}]
    tiny = Bm25Index.build(["a"], ["protein folding"])
    assert tiny.search(["protein"], 10)[0].keys() == {"a"}
    assert tiny.search(["protein"], 10, hidden=["a"]) == [{}]


def test_a_corrupted_score_matrix_gives_wrong_scores_not_a_crash(leg, scifact):
    import copy

    broken = copy.copy(leg.retriever)
    scores = dict(leg.retriever.scores)
    rng = np.random.default_rng(0)
    indices = scores["indices"].copy()
    indices[rng.integers(0, len(indices), 500)] = np.iinfo(indices.dtype).max  # rows far past the end
    indices[rng.integers(0, len(indices), 500)] = -7
    indptr = scores["indptr"].copy()
    indptr[rng.integers(1, len(indptr), 50)] = np.iinfo(indptr.dtype).max  # pointers past the data
    broken.scores = {**scores, "indices": indices, "indptr": indptr}
    damaged = Bm25Index(broken, leg.ids)
    results = damaged.search(list(scifact.queries.values())[:50], 100)
    assert all(set(r) <= set(leg.ids) for r in results) and any(results)
