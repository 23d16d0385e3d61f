"""The BM25 leg scores as bm25s does, bit for bit, with ties at the k-th place going to the lower row."""

from __future__ import annotations

import numpy as np
import pytest

from lsr.search.bm25_build import tokenize
from lsr.search.bm25_index import Bm25Index


@pytest.fixture(scope="module")
def leg(scifact):
    ids = list(scifact.corpus)[:2000]
    return Bm25Index.build(ids, scifact.doc_texts(ids))


def bm25s_scores(leg: Bm25Index, text: str, hidden_rows=()) -> np.ndarray:
    """Every document's score as bm25s's own ``get_scores`` gives it (0 for a hidden row)."""
    words = tokenize([text], leg._stemmer)[0]
    mask = np.ones(len(leg.ids), np.float32)
    mask[list(hidden_rows)] = 0.0
    if not [w for w in words if w in leg.retriever.vocab_dict]:
        return np.zeros(len(leg.ids), np.float32)
    return leg.retriever.get_scores(words, weight_mask=mask)


@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_scores_are_bm25s_bits_and_ties_at_the_cut_go_to_the_lower_row(leg, scifact, k):
    texts = list(scifact.queries.values())[:150] + ["the of and", "protein protein protein", "zzzqx unknownword"]
    hidden = leg.ids[5::40]
    hidden_rows = leg.rows(hidden).tolist()
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


def test_a_build_with_no_word_matches_nothing_and_its_later_documents_score(recwarn):
    """Empty texts and stopwords only: bm25s failed ("max() arg is an empty sequence") at the end of a whole
    `lsr index`, and the written documents then scored 0 (an average length of 0), with a divide warning."""
    from lsr.search.bm25_leg import Bm25Leg

    empty = Bm25Index.build(["a", "b"], ["", "the and of"])
    assert empty.search(["the", "protein"], 10) == [{}, {}]
    later = Bm25Leg(empty).with_updates(["c"], ["aspirin lowers heart attack risk"])
    scores = later.search(["aspirin"], 10)[0]
    assert list(scores) == ["c"] and np.isfinite(scores["c"]) and scores["c"] > 0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_a_word_stored_or_typed_decomposed_is_found_by_its_composed_form_and_back():
    """bm25s's word pattern takes combining marks for no letters: "München" stored as "Mu" + U+0308 + "nchen" (macOS,
    some PDF extractions) became the words "mu" and "nchen", and a query typed "München" found nothing."""
    from lsr.search.bm25_leg import Bm25Leg

    decomposed, composed = "Mu\u0308nchen", "M\u00fcnchen"
    index = Bm25Index.build(["stored-nfd", "stored-nfc", "other"],
                            [f"{decomposed} has a famous beer festival", "the cafe\u0301 opens early",
                             "aspirin lowers heart attack risk"])
    assert list(index.search([composed], 10)[0]) == ["stored-nfd"]
    assert list(index.search(["caf\u00e9"], 10)[0]) == list(index.search(["cafe\u0301"], 10)[0]) == ["stored-nfc"]
    later = Bm25Leg(index).with_updates(["written-nfd"], [f"a {decomposed} guide"])  # an upsert: the same words
    assert set(later.search([composed], 10)[0]) == {"stored-nfd", "written-nfd"}


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


def test_documents_written_later_score_the_bits_the_build_gave_them(leg, scifact):
    """A build document deleted and upserted under a new id with its text, over many writes (so chunks are
    appended, merged and compacted), scores exactly as it did in the build, in every query's whole run."""
    from lsr.search.bm25_leg import Bm25Leg

    moved = leg.ids[::7]
    text = dict(zip(leg.ids, scifact.doc_texts(leg.ids)))
    version = Bm25Leg(leg)
    for start in range(0, len(moved), 9):  # ids rewritten twice: the first copies die, and get merged away
        batch = moved[start : start + 9]
        version = version.with_updates([f"new-{d}" for d in batch], ["placeholder words"] * len(batch))
        version = version.with_updates([f"new-{d}" for d in batch] + batch, [text[d] for d in batch] + [None] * len(batch))
    assert version.live_written == len(moved) and 1 < len(version._chunks) < 8
    queries = list(scifact.queries.values())[:120]
    renamed = set(moved)
    for got, want in zip(version.search(queries, len(leg.ids)), leg.search(queries, len(leg.ids))):
        assert got == {(f"new-{d}" if d in renamed else d): s for d, s in want.items()}
        assert list(got.values()) == sorted(got.values(), reverse=True)


def test_a_term_the_build_never_saw_takes_its_frequency_from_the_live_written_documents(leg):
    from lsr.search.bm25_index import Bm25Stats
    from lsr.search.bm25_leg import Bm25Leg

    assert leg.search(["zorblaxian"], 10) == [{}]
    one = Bm25Leg(leg).with_updates(["z1"], ["zorblaxian proteins"])
    two = one.with_updates(["z2"], ["zorblaxian zorblaxian proteins"])
    idf = Bm25Stats(len(leg.ids), 1.0, np.zeros(0)).idf
    assert idf(1) > idf(2) > 0 and leg.stats.num_docs == len(leg.ids)
    first = one.search(["zorblaxian"], 10)[0]
    assert list(first) == ["z1"] and first["z1"] > 0
    both = two.search(["zorblaxian"], 10)[0]
    assert list(both) == ["z2", "z1"] and both["z1"] < first["z1"]  # a second holder lowers the term's IDF
    assert one.search(["zorblaxian"], 10)[0] == first  # a pinned version is unchanged by later writes
    gone = two.with_updates(["z1", "z2"], [None, "proteins only"])
    assert gone.search(["zorblaxian"], 10) == [{}] and gone.live_written == 1
    assert "z2" in gone.search(["proteins"], len(leg.ids) + 5)[0]


def test_the_build_statistics_survive_save_open_and_split(leg, tmp_path):
    from lsr.search.bm25_index import Bm25Index
    from lsr.search.bm25_leg import Bm25Leg

    files = {p.name for p in leg.save(tmp_path / "bm25")}
    assert {"stats.json", "doc_freqs.npy"} <= files
    opened = Bm25Index.open(tmp_path / "bm25")
    # mapped, not read into memory: a server opening 201,000 documents held 269 MB for them, now 114 (ids and vocab)
    assert all(isinstance(opened.retriever.scores[name], np.memmap) for name in ("data", "indices", "indptr"))
    assert opened.search(["protein folding"], 10) == leg.search(["protein folding"], 10)
    Bm25Leg.written(opened, [], [])  # as a collection with no writes since the build opens its leg
    assert "_row_of" not in vars(opened)  # its id → row map is built for a write, not at open (28 MB at 500,000 docs)
    assert (opened.stats.num_docs, opened.stats.avg_doc_len) == (leg.stats.num_docs, leg.stats.avg_doc_len)
    np.testing.assert_array_equal(opened.stats.doc_freqs, leg.stats.doc_freqs)
    assert Bm25Index.open(tmp_path / "bm25", with_stats=False).stats is None
    parts = leg.split([1500, 500])
    assert all(part.stats is leg.stats for part in parts)  # a shard scores with the whole collection's statistics


def test_a_leg_saved_without_statistics_hides_written_documents_and_says_so(leg, caplog):
    from lsr.search.bm25_index import Bm25Index
    from lsr.search.bm25_leg import Bm25Leg

    old = Bm25Index(leg.retriever, leg.ids)
    victim = leg.ids[0]
    text = "protein folding in yeast"
    with caplog.at_level("WARNING"):
        version = Bm25Leg.written(old, [victim, "new"], [text, text])
    assert "`lsr repair` on the collection" in caplog.text and "2 documents upserted" in caplog.text
    found = version.search([text], len(leg.ids))[0]
    assert found and victim not in found and "new" not in found


def test_a_saved_leg_opens_to_the_same_runs_and_goes_on_taking_writes(leg, scifact, tmp_path):
    """A leg with rewritten, deleted and new-term documents over several chunks, saved and loaded: every query's
    whole run is the same (scores and tie order), new terms keep their IDF, and later writes apply alike."""
    from lsr.files import CorruptFileError
    from lsr.search.bm25_leg import Bm25Leg
    from lsr.search.bm25_leg_file import LEG_FILE, load_leg, save_leg

    texts = scifact.doc_texts(leg.ids[:60])
    version = Bm25Leg(leg)
    for start in range(0, 60, 6):
        version = version.with_updates([f"w-{i}" for i in range(start, start + 6)] + [leg.ids[start]],
                                       texts[start : start + 6] + [None])
    version = version.with_updates(["w-3", "w-7", "z1", "z2"], [None, "zorblaxian quasars", "zorblaxian proteins",
                                                                 "zorblaxian zorblaxian"])
    assert len(version._chunks) > 1 and version.live_written == 61
    assert load_leg(leg, tmp_path) is None
    save_leg(version, tmp_path, seq=17)
    loaded, seq = load_leg(leg, tmp_path)
    queries = list(scifact.queries.values())[:80] + ["zorblaxian", "quasars proteins"]
    assert seq == 17 and loaded.live_written == version.live_written
    assert loaded.search(queries, len(leg.ids) + 100) == version.search(queries, len(leg.ids) + 100)
    later = ["w-7", "z2", "z3", leg.ids[100]], ["quasars", None, "zorblaxian zorblaxian quasars", None]
    assert loaded.with_updates(*later).search(queries, 500) == version.with_updates(*later).search(queries, 500)
    other_build = Bm25Index.build(leg.ids[:1000], scifact.doc_texts(leg.ids[:1000]))
    assert load_leg(other_build, tmp_path) is None  # saved on another build: ignored, not misread
    data = bytearray((tmp_path / LEG_FILE).read_bytes())
    data[len(data) // 3] ^= 0x01
    (tmp_path / LEG_FILE).write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match=LEG_FILE):
        load_leg(leg, tmp_path)


FAKE_JAX = '''
import os
open(os.environ["JAX_MARKER"], "a").write("imported\\n")
'''
FAKE_LAX = '''
import numpy as np
def top_k(x, k):
    order = np.argsort(-np.asarray(x))[:k]
    return np.asarray(x)[order], order
'''
BUILD = """
import sys
{before}
from lsr.search.bm25_build import bm25s_module
from lsr.search.bm25_index import Bm25Index
leg = Bm25Index.build(["a", "b"], ["hello world", "foo bar"])
print(*leg.search(["hello"], 1)[0], 'jax' in sys.modules and sys.modules['jax'] is not None,
      bm25s_module().selection.JAX_IS_AVAILABLE)
"""


@pytest.mark.parametrize("jax_first", [False, True])
def test_bm25s_does_not_start_jax_unless_the_process_already_has_it(tmp_path, jax_first):
    """bm25s imports jax when it can and runs an op on its default backend (on a GPU: 75% of the card's memory,
    and 6.2 s of `lsr index` on a lent H200). A jax installed beside lsr stays unimported; one the process
    imported itself is left as it is."""
    import os
    import subprocess
    import sys

    (tmp_path / "jax").mkdir()
    (tmp_path / "jax" / "__init__.py").write_text(FAKE_JAX)
    (tmp_path / "jax" / "lax.py").write_text(FAKE_LAX)
    marker = tmp_path / "imported"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
           "JAX_MARKER": str(marker)}
    code = BUILD.format(before="import jax.lax" if jax_first else "")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == (["a", "True", "True"] if jax_first else ["a", "False", "False"])
    assert marker.exists() == jax_first
