"""Persistence, corruption detection, kill -9 during commits, and readers during commits."""

from __future__ import annotations

import errno
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from index_helpers import assert_exact_topk, random_csr
from lsr.index import CorruptIndexError, InvertedIndex
from lsr.sparse import SparseBatch


def _vectors(seed: int, n: int, vocab: int = 300, density: float = 0.05) -> sp.csr_matrix:
    return random_csr(np.random.default_rng(seed), n, vocab, density)


def _files(path: Path) -> list[tuple[str, str]]:
    """(role, file name) of every data file the committed manifest names."""
    manifest = InvertedIndex.open(path)._state.manifest
    out = [("vocab", manifest["vocab"]["file"])] if manifest["vocab"] else []
    for seg in manifest["segments"]:
        out.extend((role, rec["file"]) for role, rec in seg["files"].items())
    return sorted(out)


def test_round_trip_and_stable_checksum(tmp_path):
    matrix = _vectors(1, 500)
    vocab = [f"t{i}" for i in range(300)]
    batch = SparseBatch.from_scipy(matrix, vocab)
    ids = [f"doc-{i}" for i in range(500)]
    built = InvertedIndex.build(tmp_path / "a", batch, ids)
    chunks = [(batch[i : i + 128], ids[i : i + 128]) for i in range(0, 500, 128)]
    chunked = InvertedIndex.build(tmp_path / "b", iter(chunks))
    reopened = InvertedIndex.open(tmp_path / "a")
    assert built.checksum == chunked.checksum == reopened.checksum
    assert reopened.vocab == vocab and len(reopened) == 500 and reopened.version == built.version == 1
    query = {int(t): 1.0 + t % 3 for t in range(0, 300, 7)}
    assert reopened.search(query, k=20) == built.search(query, k=20) == chunked.search(query, k=20)
    with pytest.raises(FileExistsError, match="already holds an index; pass overwrite=True"):
        InvertedIndex.build(tmp_path / "a", batch, ids)
    rebuilt = InvertedIndex.build(tmp_path / "a", batch, ids, overwrite=True)  # in place: new version, same content
    assert rebuilt.version == 2 and rebuilt.checksum == built.checksum
    reopened.add(_vectors(2, 3), ["x", "y", "z"])
    assert reopened.version == 3 and reopened.checksum != built.checksum
    assert InvertedIndex.open(tmp_path / "a").checksum == reopened.checksum
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.endswith(".tmp")]


def test_an_index_of_a_newer_lsr_asks_for_an_upgrade_and_an_unknown_format_is_refused(tmp_path):
    """A newer format version was called a damaged index, whose repair rewrote it in the older format."""
    import json
    import zlib

    from lsr.files import canonical_json
    from lsr.index.storage import FORMAT_VERSION, MANIFEST

    InvertedIndex.build(tmp_path, SparseBatch.from_scipy(_vectors(1, 20), [f"t{i}" for i in range(300)]),
                        [f"doc-{i}" for i in range(20)])
    path = tmp_path / MANIFEST
    body = {k: v for k, v in json.loads(path.read_bytes()).items() if k != "manifest_crc32"}
    for version, error, said in ((FORMAT_VERSION + 1, ValueError, "written by a newer lsr"),
                                 ("1", CorruptIndexError, "this code reads")):
        changed = {**body, "format_version": version}
        path.write_bytes(json.dumps({**changed, "manifest_crc32": zlib.crc32(canonical_json(changed))}).encode())
        with pytest.raises(error, match=said) as raised:
            InvertedIndex.open(tmp_path)
        assert raised.type is error  # not damage, which a collection sends to `lsr repair`


class _Reread:
    """(batch, ids) chunks made anew at each reading, as an object reading files is: none is kept between readings."""

    def __init__(self, n_chunks: int, docs: int, per_doc: int, renamed_on: int | None = None):
        self.n_chunks, self.docs, self.per_doc, self.renamed_on, self.readings = n_chunks, docs, per_doc, renamed_on, 0

    def __iter__(self):
        self.readings += 1
        for c in range(self.n_chunks):
            rng = np.random.default_rng(c)
            terms = np.arange(self.per_doc, dtype=np.int32) * 100 + rng.integers(0, 100, (self.docs, self.per_doc))
            weights = (rng.gamma(1.0, 0.5, (self.docs, self.per_doc)) + 0.01).astype(np.float32)
            batch = SparseBatch(np.arange(self.docs + 1, dtype=np.int64) * self.per_doc, terms.ravel().astype(np.int32),
                                weights.ravel(), self.per_doc * 100)
            prefix = "x" if self.readings == self.renamed_on and c == 1 else "d"
            yield batch, [f"{prefix}{c}-{i}" for i in range(self.docs)]


def test_a_build_reads_its_chunks_twice_and_never_holds_their_float_weights_whole(tmp_path):
    """A build listed every chunk, concatenated them and quantized through float64 temporaries: about 40 bytes a
    non-zero weight at its peak, where the index keeps 6 (a collection's build held 8 more: its chunk list). Chunks
    that can be read again are now read twice, sizes then impacts, each quantized into arrays of the final size."""
    import tracemalloc

    InvertedIndex.build(tmp_path / "warm", _Reread(n_chunks=1, docs=10, per_doc=5))  # numba's first load is counted too
    chunks = _Reread(n_chunks=8, docs=2_500, per_doc=100)
    nnz = 8 * 2_500 * 100
    tracemalloc.start()
    streamed = InvertedIndex.build(tmp_path / "streamed", chunks)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert chunks.readings == 2 and peak < 16 * nnz, f"{peak / nnz:.1f} bytes a weight at the peak"
    listed = InvertedIndex.build(tmp_path / "listed", list(chunks))
    assert streamed.checksum == listed.checksum and len(streamed) == 20_000
    query = {int(t): 1.0 for t in range(0, 10_000, 37)}
    assert streamed.search(query, k=10) == listed.search(query, k=10)
    with pytest.raises(RuntimeError, match="the vectors changed between the build's two readings of them"):
        InvertedIndex.build(tmp_path / "changed", _Reread(n_chunks=2, docs=10, per_doc=5, renamed_on=2))


def test_a_bad_weight_is_named_by_its_row_among_all_chunks(tmp_path):
    good = SparseBatch.from_dense(np.eye(3, dtype=np.float32))
    bad = SparseBatch.from_dense(np.array([[1, 0, 0], [0, -2, 0]], np.float32))
    with pytest.raises(ValueError, match=r"weight -2 out of range \(row 4\)"):
        InvertedIndex.build(tmp_path / "idx", [(good, ["a", "b", "c"]), (bad, ["d", "e"])])
    assert not (tmp_path / "idx").exists()


def test_build_refuses_a_folder_holding_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not part of an index \\(notes.txt\\)"):
        InvertedIndex.build(tmp_path, _vectors(1, 5), [str(i) for i in range(5)], overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def _index_with_every_file_kind(path: Path) -> InvertedIndex:
    idx = InvertedIndex.build(path, SparseBatch.from_scipy(_vectors(3, 200), [f"t{i}" for i in range(300)]),
                              [str(i) for i in range(200)])
    idx.delete(["0", "1"])
    return idx


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_corruption_of_each_file_kind_is_named_on_open(tmp_path, damage):
    path = tmp_path / "idx"
    _index_with_every_file_kind(path)
    for role, name in _files(path) + [("manifest", "manifest.json")]:
        target = path / name
        original = target.read_bytes()
        if damage == "flip":
            pos = len(original) // 2
            target.write_bytes(original[:pos] + bytes([original[pos] ^ 0x5A]) + original[pos + 1 :])
        elif damage == "truncate":
            target.write_bytes(original[: len(original) - 3])
        else:
            target.unlink()
        expected = (FileNotFoundError, CorruptIndexError) if role == "manifest" else CorruptIndexError
        with pytest.raises(expected, match=name):
            InvertedIndex.open(path)
        target.write_bytes(original)
    InvertedIndex.open(path).verify()


def test_running_out_of_file_handles_is_the_machines_error_not_a_corrupt_file(tmp_path):
    """An open that met the process's file limit (EMFILE) at an array's memory map said the file was "not a readable
    .npy array" and to run `lsr repair`, on a whole index."""
    _index_with_every_file_kind(tmp_path / "idx")
    script = f"""
import os, resource, sys
from lsr.index import InvertedIndex
from lsr.index.storage import CorruptIndexError
InvertedIndex.open({str(tmp_path / "idx")!r})  # warm: every import and compile done before the limit
found = set()
base = len(os.listdir("/proc/self/fd"))
for spare in range(0, 40):
    resource.setrlimit(resource.RLIMIT_NOFILE, (base + spare, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    try:
        InvertedIndex.open({str(tmp_path / "idx")!r})
        found.add("opened")
    except CorruptIndexError as exc:
        found.add("corrupt: " + str(exc))
    except OSError as exc:
        found.add(exc.errno)
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(sorted(map(str, found)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found = done.stdout.strip()
    assert "corrupt" not in found and str(errno.EMFILE) in found and "opened" in found, found


def test_verify_finds_corruption_past_the_cheaply_checked_head(tmp_path):
    path = tmp_path / "idx"
    idx = InvertedIndex.build(path, _vectors(4, 60000, vocab=2000, density=0.01), [str(i) for i in range(60000)])
    target = path / dict(_files(path))["post_delta"]
    assert target.stat().st_size > 1 << 20
    data = bytearray(target.read_bytes())
    data[-200000:] = np.random.default_rng(0).integers(0, 256, 200000, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    damaged = InvertedIndex.open(path)  # the cheap check passes: size and head are intact
    with pytest.raises(CorruptIndexError, match=target.name):
        damaged.verify()
    for algorithm in ("taat", "rescore", "maxscore"):  # garbage doc ids are range-checked: answers, never a crash
        for t in range(0, 2000, 97):
            damaged.search({t: 1.0, (t + 1) % 2000: 0.5}, k=10, algorithm=algorithm)
    del idx


_CHILD = textwrap.dedent(
    """
    import sys, numpy as np, scipy.sparse as sp
    from lsr.index import InvertedIndex
    path, op = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(42)
    m = sp.random(100000, 3000, density=0.01, format="csr", random_state=rng, dtype=np.float32)
    ids = [f"k{i}" for i in range(100000)]
    print("ready", flush=True)
    if op == "build":
        InvertedIndex.build(path, m, ids, overwrite=True)
    elif op == "add":
        InvertedIndex.open(path).add(m, ids)
    else:
        InvertedIndex.open(path).merge()
    print("done", flush=True)
    """
)


def _wait_for_new_files(path: Path, prefix: str, child: subprocess.Popen) -> None:
    """Block until the child has started writing the new commit's files (or has exited)."""
    while child.poll() is None and not any(p.name.startswith(prefix) for p in path.iterdir()):
        time.sleep(0.002)


@pytest.mark.parametrize("op", ["build", "add", "merge"])
def test_kill_9_during_commit_leaves_previous_state(tmp_path, op):
    path = tmp_path / "idx"
    base = _vectors(5, 3000, vocab=3000, density=0.01)
    InvertedIndex.build(path, base, [f"b{i}" for i in range(3000)])
    if op == "merge":  # at the base's scale, so that merge() has both segments to merge
        extra = _vectors(6, 100000, vocab=3000, density=0.01)
        InvertedIndex.open(path).add(extra * (base.max() / extra.max()), [f"k{i}" for i in range(100000)])
    before = InvertedIndex.open(path)
    old = (before.version, before.checksum, len(before))
    query = {int(t): 1.0 for t in range(0, 3000, 11)}
    old_hits = before.search(query, k=10)
    outcomes = set()
    for delay in (None, 0.0, 0.2):  # None: before any file is written; else after the first
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), op], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        if delay is not None:
            _wait_for_new_files(path, f"s{old[0] + 1:06d}", child)
            time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        after = InvertedIndex.open(path)
        after.verify()
        if after.version == old[0]:
            if any(p.name.startswith(f"s{old[0] + 1:06d}") for p in path.iterdir()):
                outcomes.add("killed while writing")
            assert (after.checksum, len(after)) == old[1:]
            assert after.search(query, k=10) == old_hits
            outcomes.add("old")
        else:  # the commit finished before the kill: the new state, whole
            outcomes.add("new")
            assert len(after) == {"build": 100000, "add": 103000, "merge": old[2]}[op]
            assert_exact_topk(after, query, 10)
            if op != "build":
                return
            InvertedIndex.build(path, base, [f"b{i}" for i in range(3000)], overwrite=True)
            before = InvertedIndex.open(path)
            old = (before.version, before.checksum, len(before))
    assert {"old", "killed while writing"} <= outcomes
    InvertedIndex.open(path).add(_vectors(7, 1, vocab=3000), ["last"])  # the next commit clears the debris
    assert {p.name for p in path.iterdir()} == {name for _, name in _files(path)} | {"manifest.json", "LOCK"}


def test_readers_during_commits_see_whole_snapshots(tmp_path):
    path = tmp_path / "idx"
    base = _vectors(8, 2000, vocab=50, density=0.1)
    base.data = np.minimum(base.data, 1.0)
    idx = InvertedIndex.build(path, base, [f"b{i}" for i in range(2000)])
    query = {0: 1.0}
    errors: list[str] = []
    stop = threading.Event()

    def check(hits) -> None:
        fresh = [h for h in hits if h.doc_id.startswith("n")]
        numbers = sorted(int(h.doc_id[1:]) for h in fresh)
        if not numbers or numbers != list(range(numbers[0], numbers[0] + len(numbers))) or len(numbers) > 2:
            errors.append(f"inconsistent snapshot: {hits}")
        for h in fresh:
            if abs(h.score - (10 + int(h.doc_id[1:]))) > 0.2:
                errors.append(f"wrong score {h}")

    def search_loop() -> None:
        while not stop.is_set():
            check(idx.search(query, k=4))

    def open_loop() -> None:
        while not stop.is_set():
            try:
                check(InvertedIndex.open(path).search(query, k=4))
            except Exception as exc:  # any failure to open during a commit is a bug
                errors.append(f"open failed: {exc!r}")

    def vector(i: int) -> sp.csr_matrix:
        return sp.csr_matrix(([10.0 + i], ([0], [0])), shape=(1, 50), dtype=np.float32)

    idx.add(vector(0), ["n0"])
    readers = [threading.Thread(target=search_loop) for _ in range(3)] + [threading.Thread(target=open_loop)]
    for r in readers:
        r.start()
    try:
        for i in range(1, 12):
            idx.add(vector(i), [f"n{i}"])
            idx.delete([f"n{i - 1}"])
            if i % 4 == 0:
                idx.merge()
    finally:
        stop.set()
        for r in readers:
            r.join()
    assert not errors, errors[:3]
    assert [h.doc_id for h in idx.search(query, k=1)] == ["n11"]


def test_one_document_upserts_merge_tier_by_tier_and_keep_exact_results(tmp_path):
    """Each upsert adds a segment; add() merges a size tier once it holds MERGE_FACTOR segments, so a long run of
    one-document upserts (and deletes) leaves a handful of segments, no unreferenced files, and exact top-k."""
    from lsr.index.index import MERGE_FACTOR

    vocab = 300
    built = InvertedIndex.build(tmp_path / "idx", SparseBatch.from_scipy(_vectors(3, 40, vocab)),
                                [f"base-{i}" for i in range(40)])
    extra = _vectors(4, 260, vocab)
    counts = []
    for i in range(extra.shape[0]):
        built.add(SparseBatch.from_scipy(extra[i]), [f"new-{i}"])
        if i % 7 == 0:
            built.delete([f"new-{i // 2}"] if f"new-{i // 2}" in built else [])
        counts.append(built.num_segments)
    assert max(counts) <= 3 * (MERGE_FACTOR - 1)  # three tiers (1-9, 10-99, 100-999 documents) of at most 9
    tiers = [int(np.log10(max(s.n_docs, 1))) for s in built._state.segments]
    assert all(tiers.count(t) < MERGE_FACTOR for t in tiers)
    on_disk = {p.name for p in (tmp_path / "idx").iterdir()} - {"manifest.json", "LOCK"}
    assert on_disk == {name for _, name in _files(tmp_path / "idx")}
    reopened = InvertedIndex.open(tmp_path / "idx")
    assert sorted(reopened.doc_ids()) == sorted(built.doc_ids()) and len(reopened.doc_ids()) == 40 + 260 - 38
    rng = np.random.default_rng(5)
    for _ in range(20):
        terms = rng.choice(vocab, 6, replace=False)
        assert_exact_topk(reopened, {int(t): float(w) for t, w in zip(terms, rng.exponential(1.0, 6))}, k=10)


def test_a_merge_refuses_a_segment_damaged_since_the_open_rather_than_rewrite_it_under_a_fresh_checksum(tmp_path):
    """Bit rot after open under a long-lived writer: the merge copied the damaged rows into a new segment with a
    valid crc32 and deleted the old file, so `lsr verify` called the index intact and the hits stayed wrong."""
    from lsr.index.index import MERGE_FACTOR

    index = InvertedIndex.build(tmp_path / "idx", SparseBatch.from_scipy(_vectors(3, 5)), [f"d{i}" for i in range(5)])
    damaged = next(tmp_path.glob("idx/*doc_imp.npy"))
    with open(damaged, "r+b") as fh:  # in place, as the writer's own mapping sees it
        fh.seek(-1, 2)
        last = fh.read(1)[0]
        fh.seek(-1, 2)
        fh.write(bytes([last ^ 0xFF]))
    with pytest.raises(CorruptIndexError, match=f"{damaged.name} fails its crc32 checksum"):
        for i in range(MERGE_FACTOR):  # the last one crowds the tier of one-document segments
            index.add(SparseBatch.from_scipy(_vectors(4 + i, 1)), [f"n{i}"])
    assert damaged.exists()
    with pytest.raises(CorruptIndexError, match=damaged.name):
        InvertedIndex.open(tmp_path / "idx").verify()


def test_a_lock_file_that_is_a_folder_or_a_link_is_named_with_what_to_do(tmp_path):
    """A write failed with a bare IsADirectoryError (ELOOP for a link to itself), and so did every open of a
    collection that replays a journal."""
    index = InvertedIndex.build(tmp_path / "idx", SparseBatch.from_scipy(_vectors(3, 5)), [f"d{i}" for i in range(5)])
    lock = tmp_path / "idx" / "LOCK"
    lock.unlink()
    for damage, undo in ((lock.mkdir, lock.rmdir), (lambda: lock.symlink_to(lock), lock.unlink)):
        damage()
        with pytest.raises(CorruptIndexError, match=f"index file {lock} is not a plain file; remove it"):
            index.add(SparseBatch.from_scipy(_vectors(4, 1)), ["new"])
        undo()
    index.add(SparseBatch.from_scipy(_vectors(4, 1)), ["new"])
    assert "new" in index


def test_one_outlier_weight_that_rounds_the_others_away_is_a_warning(tmp_path, caplog):
    """One segment, one uint8 scale: a weight far above the rest (a damaged or foreign vectors file) rounds every
    other weight to 0, so a search finds only that document; the write says so instead of staying quiet."""
    matrix = _vectors(2, 200)
    ids = [f"doc-{i}" for i in range(200)]
    with caplog.at_level("WARNING", logger="lsr.index.index"):
        InvertedIndex.build(tmp_path / "plain", SparseBatch.from_scipy(matrix), ids)
    assert not caplog.records
    matrix.data[0] = 1e6
    with caplog.at_level("WARNING", logger="lsr.index.index"):
        InvertedIndex.build(tmp_path / "outlier", SparseBatch.from_scipy(matrix), ids)
    assert "round to 0 at uint8, whose scale (the base scale, set by the build's largest weight) holds weights up to 1e+06" in caplog.text


def test_a_larger_scale_never_re_rounds_the_documents_written_before_it(tmp_path):
    """A write whose largest weight the index's uint8 scale cannot hold starts a larger scale. Merging the older
    segments into it rounded their impacts a second time, so re-upserting some documents moved the scores of
    others; segments of different scales now stay apart, in add()'s merges and in merge()."""
    from lsr.index.index import MERGE_FACTOR

    rng = np.random.default_rng(3)
    idx = InvertedIndex.build(tmp_path / "idx", SparseBatch.from_scipy(_vectors(4, 5)), [f"old-{i}" for i in range(5)])
    query = SparseBatch.from_scipy(sp.csr_matrix(np.ones((1, 300), np.float32)))[0]
    before = {hit.doc_id: hit.score for hit in idx.search(query, k=5)}
    for i in range(3 * MERGE_FACTOR):  # one-document writes, most at a larger scale: the tier merges repeatedly
        vector = sp.csr_matrix(rng.random((1, 300)) * (5.0 if i % 3 else 0.5))
        idx.add(SparseBatch.from_scipy(vector), [f"new-{i}"])
    idx.merge()
    after = {hit.doc_id: hit.score for hit in idx.search(query, k=len(idx)) if hit.doc_id.startswith("old-")}
    assert after == before  # the same bits
    assert len({seg.scale for seg in idx._state.segments}) == idx.num_segments >= 2


def test_a_documents_scores_depend_on_it_and_the_base_scale_alone_not_on_earlier_writes(tmp_path):
    """With one scale grown by the largest write so far, a document written after a larger one rounded coarser: a
    rerun after a crash (some documents written twice) and `lsr repair` (all at once) moved sparse scores by up to
    1.2 % from the uninterrupted run's. Now each document takes the base scale, or base·2^k where it must."""
    build = SparseBatch.from_scipy(_vectors(4, 20))
    big = SparseBatch.from_scipy(_vectors(5, 6) * 7.0)  # needs base·8: a segment of its own scale
    small = SparseBatch.from_scipy(_vectors(6, 9))
    big_ids, small_ids = [f"big-{i}" for i in range(6)], [f"small-{i}" for i in range(9)]
    query = SparseBatch.from_scipy(sp.csr_matrix(np.ones((1, 300), np.float32)))[0]

    def scores(idx: InvertedIndex) -> dict[str, float]:
        return {hit.doc_id: hit.score for hit in idx.search(query, k=len(idx))}

    first = InvertedIndex.build(tmp_path / "first", build, [f"b{i}" for i in range(20)])
    first.add(big, big_ids)
    first.add(small, small_ids)
    other = InvertedIndex.build(tmp_path / "other", build, [f"b{i}" for i in range(20)])
    other.add(small, small_ids)
    other.add(big, big_ids)
    assert scores(first) == scores(other)
    want = scores(first)
    first.add(small, small_ids)  # a rerun writes them again
    first.add(big[:3], big_ids[:3])
    assert scores(first) == want
    rebuilt = InvertedIndex.build(tmp_path / "rebuilt", SparseBatch.concat([build, big, small]),  # as lsr repair does
                                  [f"b{i}" for i in range(20)] + big_ids + small_ids, scale=first.base_scale)
    assert scores(rebuilt) == want
    steps = sorted(seg.scale / first.base_scale for seg in rebuilt._state.segments)  # one segment per step used
    assert steps[0] == 1.0 and len(steps) > 1 and all(float(np.log2(step)).is_integer() for step in steps)
    reopened = InvertedIndex.open(tmp_path / "first")
    assert reopened.base_scale == first.base_scale == InvertedIndex.open(tmp_path / "rebuilt").base_scale

    # a build without a weight leaves the base to the first write, and repair takes it from the index's record
    from lsr.ingest.repair import _build_scale

    blank = SparseBatch(np.zeros(3, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), 300)
    bare = InvertedIndex.build(tmp_path / "bare" / "sparse", blank, ["e0", "e1"])
    assert bare.base_scale is None  # it had recorded 1.0, rounding every later weight to a whole number
    bare.add(blank[:1], ["e2"])  # a write without a weight leaves it unset too
    assert InvertedIndex.open(tmp_path / "bare" / "sparse").base_scale is None
    bare.add(small, small_ids)
    bare.add(big, big_ids)
    scale = _build_scale(tmp_path / "bare", {"settings": {"quantization": "uint8"}}, [(blank, ["e0", "e1"])])
    assert scale == bare.base_scale
    again = InvertedIndex.build(tmp_path / "again", [(blank, ["e0", "e1"]), (blank[:1], ["e2"]), (small, small_ids),
                                                     (big, big_ids)],
                                scale=scale)
    assert scores(again) == scores(bare)


def test_a_short_write_names_the_file_and_leaves_no_temporary(tmp_path):
    """On a full disk numpy's save said only "49803 requested and 49088 written", not which file: the index stage
    failed with no clue where. A file-size limit (RLIMIT_FSIZE) makes the same short write here."""
    script = textwrap.dedent("""
        import resource, signal, sys
        from pathlib import Path
        import numpy as np
        from lsr.files import atomic_write
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
        for name, write in [("a.npy", lambda fh: np.save(fh, np.zeros(100_000))), ("b.bin", lambda fh: fh.write(bytes(100_000)))]:
            try:
                atomic_write(Path(sys.argv[1]) / name, write)
            except OSError as exc:
                print(exc)
    """)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    short, too_large = out.stdout.splitlines()
    assert re.fullmatch(rf"could not write {re.escape(str(tmp_path / 'a.npy'))}: 100000 requested and \d+ written "
                        r"\(a short write: is the disk full\?\)", short), out.stderr
    assert too_large == f"could not write {tmp_path / 'b.bin'}: File too large"
    assert list(tmp_path.iterdir()) == []


def test_a_failed_atomic_write_leaves_no_folder_it_made(tmp_path):
    """A write that fails (a full disk, Ctrl-C) removed its temporary file but kept the folders made for it, empty;
    folders that were there before stay."""
    from lsr.files import atomic_write

    def fail(fh) -> None:
        fh.write(b"half")
        raise OSError(28, "No space left on device")

    (tmp_path / "kept").mkdir()
    with pytest.raises(OSError, match="could not write"):
        atomic_write(tmp_path / "kept" / "made" / "deeper" / "file.bin", fail)
    assert [p.name for p in tmp_path.rglob("*")] == ["kept"]
