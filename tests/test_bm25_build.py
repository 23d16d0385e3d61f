"""The chunked BM25 build writes the bytes bm25s's own ``BM25.index`` writes, whatever the chunking."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import Stemmer

from lsr.search.bm25_build import bm25s_module, tokenize
from lsr.search.bm25_index import Bm25Index, Bm25Stats


def bm25s_build(ids: list[str], texts: list[str]) -> Bm25Index:
    """The index as bm25s builds it from every document's word list at once (the leg's build before chunking)."""
    bm25s = bm25s_module()
    words = tokenize(texts, Stemmer.Stemmer("english"))
    vocab = {token: i for i, token in enumerate(sorted({w for doc in words for w in doc}))}
    tokens = bm25s.tokenization.Tokenized(ids=[[vocab[w] for w in doc] for doc in words], vocab=vocab)
    retriever = bm25s.BM25()
    with np.errstate(divide="ignore", invalid="ignore"):
        retriever.index(tokens if vocab else bm25s.tokenization.Tokenized(ids=tokens.ids, vocab={"\x00": 0}),
                        show_progress=False)
    stats = Bm25Stats(len(words), float(np.array([len(doc) for doc in tokens.ids]).mean()) if words else 0.0,
                      np.diff(retriever.scores["indptr"]).astype(np.int64))
    return Bm25Index(retriever, ids, stats)


def saved(index: Bm25Index, folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in index.save(folder)}


@pytest.mark.parametrize("chunk", [1, 7, 500, 10_000])
def test_chunked_build_writes_bm25s_bytes(scifact, tmp_path, chunk):
    ids = list(scifact.corpus)[:1500]
    texts = scifact.doc_texts(ids)
    expected = saved(bm25s_build(ids, texts), tmp_path / "bm25s")
    chunks = ((ids[i : i + chunk], texts[i : i + chunk]) for i in range(0, len(ids), chunk))
    got = saved(Bm25Index.build_from(chunks), tmp_path / "ours")
    assert sorted(got) == sorted(expected)
    different = [name for name in expected if got[name] != expected[name]]
    assert not different, different


def test_worker_processes_write_the_same_bytes(scifact, tmp_path):
    ids = list(scifact.corpus)[:2000]
    texts = scifact.doc_texts(ids)
    chunks = [(ids[i : i + 150], texts[i : i + 150]) for i in range(0, len(ids), 150)]
    told = []
    pooled = Bm25Index.build_from(iter(chunks), workers=2, on_chunk=told.append)
    assert told == [len(chunk_ids) for chunk_ids, _ in chunks]
    assert saved(pooled, tmp_path / "pooled") == saved(bm25s_build(ids, texts), tmp_path / "ref")


def test_ids_and_texts_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="3 ids for 2 texts"):
        Bm25Index.build(["a", "b", "c"], ["protein", "folding"])
    ids = [str(i) for i in range(25_000)]
    with pytest.raises(ValueError, match="25000 ids for 12000 texts"):  # whole chunks apart: zip dropped them
        Bm25Index.build(ids, ["protein folding"] * 12_000)
    with pytest.raises(ValueError, match="2 ids for 3 texts"):
        Bm25Index.build_from([(ids[:5], ["a"] * 5), (ids[5:7], ["b"] * 3)])


@pytest.mark.parametrize("texts", [
    ["protein folding"],
    ["", "the and of"],  # no word at all: an index that matches nothing
    ["", "cell cell cell", "the cell", "Cells, cells; CELL!"],
    ["ünïcödé wörds", "日本語 テキスト", "x", "a b c"],  # one-letter tokens are not words (bm25s's pattern)
])
def test_small_corpora_match_bm25s(tmp_path, texts):
    ids = [f"d{i}" for i in range(len(texts))]
    assert saved(Bm25Index.build(ids, texts), tmp_path / "ours") == saved(bm25s_build(ids, texts), tmp_path / "ref")


def test_whole_scifact_matches_bm25s_and_its_stats(scifact, tmp_path):
    ids = list(scifact.corpus)
    texts = scifact.doc_texts(ids)
    ours, reference = Bm25Index.build(ids, texts), bm25s_build(ids, texts)
    assert saved(ours, tmp_path / "ours") == saved(reference, tmp_path / "ref")
    assert (ours.stats.num_docs, ours.stats.avg_doc_len) == (reference.stats.num_docs, reference.stats.avg_doc_len)
    assert np.array_equal(ours.stats.doc_freqs, reference.stats.doc_freqs)
    query = scifact.queries[next(iter(scifact.qrels["test"]))]
    assert ours.search([query], 10) == reference.search([query], 10)


def test_build_memory_grows_a_fraction_as_fast_as_bm25s(scifact):
    """Chunks made anew, as a collection's docs files are read: the build must not hold every text's word list.
    What 1,500 more documents add to the peak is compared, so fixed costs (compiled code, and the vocabulary: the
    corpus is 750 documents repeated) cancel."""
    texts = scifact.doc_texts(list(scifact.corpus)[:750]) * 4
    ids = [str(i) for i in range(len(texts))]

    def peak(build, n: int) -> int:
        tracemalloc.start()
        try:
            build(ids[:n], texts[:n])
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def chunked(ids, texts):
        return Bm25Index.build_from((ids[i : i + 250], texts[i : i + 250]) for i in range(0, len(ids), 250))

    chunked(ids[:10], texts[:10]), bm25s_build(ids[:10], texts[:10])  # imports and compiled code come first
    ours = peak(chunked, 3000) - peak(chunked, 1500)
    theirs = peak(bm25s_build, 3000) - peak(bm25s_build, 1500)
    assert ours < theirs / 3, (ours, theirs)


ENDLESS_BUILD = """
import itertools
from lsr.search.bm25_index import Bm25Index

def chunks():
    for i in itertools.count():
        if i == 6:
            print("pooled", flush=True)
        yield [f"{i}-{j}" for j in range(300)], [f"protein folding in yeast cells {i} " * 300] * 300  # ~0.5 s a chunk

Bm25Index.build_from(chunks(), workers=2)
"""


def _worker_pids(parent: int) -> list[int]:
    from pathlib import Path

    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return pids


STOPS = ["kill -9 of the building process", "Ctrl-C to the process group", "Ctrl-C twice", "kill -9 of a worker"]


@pytest.mark.parametrize("stop", STOPS)
def test_tokenising_workers_end_with_the_build(tmp_path, stop):
    """Forked workers hold the task pipe's write end: without a parent-death signal they outlived a kill -9 and waited
    forever. They ignored Ctrl-C and SIGTERM, so the pool could not stop them: a worker killed (the OOM killer) left
    the build waiting for ever, as did a second Ctrl-C during the first one's clean-up. Now the building process
    alone takes the signal and kills its workers; a worker's death is one line."""
    import os
    import signal
    import subprocess
    import time
    import uuid

    from signal_helpers import _outliving, interruptible

    marker = f"LSR_TEST_BM25_POOL={uuid.uuid4().hex}"
    key, value = marker.split("=")
    job = subprocess.Popen(interruptible("-c", ENDLESS_BUILD), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env={**os.environ, key: value}, start_new_session=True)
    try:
        assert job.stdout.readline().strip() == "pooled", job.communicate(timeout=60)
        if stop == "kill -9 of the building process":
            job.kill()
        elif stop == "kill -9 of a worker":
            os.kill(_worker_pids(job.pid)[0], signal.SIGKILL)
        else:
            os.killpg(job.pid, signal.SIGINT)
            if stop == "Ctrl-C twice":
                time.sleep(0.3)  # while the first one's clean-up waits for the workers
                os.killpg(job.pid, signal.SIGINT)
        _, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert _outliving(marker + "\0", wait_s=10.0) == []
    if stop == "kill -9 of a worker":
        assert job.returncode != 0 and "tokenising texts for the BM25 leg ended abruptly" in stderr, stderr
    elif stop == "Ctrl-C to the process group":
        assert job.returncode != 0 and stderr.count("KeyboardInterrupt") == 1, stderr


def test_a_full_disk_while_saving_names_the_folder_and_the_cause(scifact, tmp_path):
    """bm25s writes its arrays itself: on a full disk `lsr index` failed "28950 requested and 17376 written", naming
    neither the file nor the disk (a tmpfs of 64 KiB here)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        ids, texts = list(scifact.corpus)[:2000], [doc["text"] for doc in list(scifact.corpus.values())[:2000]]
        with pytest.raises(OSError, match=r"could not write .*bm25.*(is the disk full|No space left)") as err:
            Bm25Index.build(ids, texts).save(disk / "bm25")
        assert err.value.errno == 28  # a short write carries none: it is a full disk to the server (RESOURCE_EXHAUSTED)
    finally:
        subprocess.run(["umount", str(disk)])
