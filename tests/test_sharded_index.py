"""`lsr index --shards N`: documents routed by shard_of, each shard a complete collection whose merged
results equal the unsharded collection's (collection-wide statistics), resumable like any build."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lsr.ingest.collection import Collection
from index_helpers import build_in_process, write_scifact_jsonl
from lsr.ingest.indexing import IndexOptions
from lsr.ingest.layout import BUILD_STATE, META_FILE
from lsr.ingest.sharding import SHARDS_FILE, global_doc_freqs, read_shard_map, shard_of

N_DOCS = 90
EVERY = 20  # documents per encoded part: 5 parts, the last one short
N_SHARDS = 3
K = 10


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, scifact) -> Path:
    return write_scifact_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", scifact, N_DOCS)


def options(**overrides) -> IndexOptions:
    return IndexOptions(**{"checkpoint_every": EVERY, "max_length": 64, "threads": 1, **overrides})


def build(corpus: Path, out: Path, **overrides) -> Path:
    build_in_process(corpus, out, options(**overrides))
    return out


@pytest.fixture(scope="module")
def unsharded(corpus, tmp_path_factory) -> Path:
    return build(corpus, tmp_path_factory.mktemp("one") / "col")


@pytest.fixture(scope="module")
def sharded(corpus, tmp_path_factory) -> Path:
    return build(corpus, tmp_path_factory.mktemp("three") / "col", shards=N_SHARDS)


@pytest.fixture(scope="module")
def shards(sharded) -> list[Collection]:
    return [Collection.open(path) for path in read_shard_map(sharded).paths(sharded)]


@pytest.fixture(scope="module")
def queries(scifact) -> list[str]:
    return [scifact.queries[q] for q in list(scifact.queries)[:12]]


def merged(per_shard: list[list[tuple[str, float]]], k: int) -> list[tuple[str, float]]:
    """The coordinator's merge: every shard's top k, best score first."""
    return sorted((hit for hits in per_shard for hit in hits), key=lambda hit: -hit[1])[:k]


def assert_same_ranking(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    """Equal scores, and equal ids up to the order of exactly tied scores (which no engine orders alike)."""
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=0, atol=1e-6)
    last = want[-1][1] if want else 0.0

    def above_the_cut(hits: list[tuple[str, float]]) -> list[tuple[float, str]]:
        return sorted((-round(s, 5), doc_id) for doc_id, s in hits if s > last + 1e-6)

    assert above_the_cut(got) == above_the_cut(want)


def test_every_document_is_in_the_shard_its_hash_names(sharded, shards, corpus):
    ids = [json.loads(line)["_id"] for line in corpus.read_text().splitlines()]
    shard_map = read_shard_map(sharded)
    assert shard_map.names == ("shard-000", "shard-001", "shard-002") and (sharded / SHARDS_FILE).is_file()
    held = [set(col.sparse.doc_ids()) for col in shards]
    for shard, col in enumerate(shards):
        assert held[shard] and all(shard_of(doc_id, N_SHARDS) == shard for doc_id in held[shard])
        assert set(col.dense.ids()) == held[shard] and len(col.bm25.ids) == len(held[shard])
        assert col.meta["sharding"]["shard"] == shard and col.meta["n_docs"] == len(held[shard])
        assert all(text is not None for text in col.text(sorted(held[shard])))
    assert sorted(i for h in held for i in h) == sorted(ids)
    assert not (sharded / BUILD_STATE).exists() and not (sharded / META_FILE).exists()


def test_sparse_results_merged_over_shards_equal_the_unsharded_ones(unsharded, shards, queries, splade):
    whole = Collection.open(unsharded)
    vectors = splade.encode_queries(queries)
    for i in range(len(queries)):
        terms, weights = vectors.row(i)
        query = dict(zip(terms.tolist(), weights.tolist()))
        want = [(h.doc_id, h.score) for h in whole.sparse.search(query, k=K)]
        got = merged([[(h.doc_id, h.score) for h in col.sparse.search(query, k=K)] for col in shards], K)
        assert_same_ranking(got, want)


def test_dense_results_merged_over_shards_equal_the_unsharded_ones(unsharded, shards, queries):
    from lsr.encode.dense import DenseEncoder

    whole = Collection.open(unsharded)
    vectors = DenseEncoder.from_pretrained("minilm", device="cpu").encode_queries(queries)
    want_ids, want_scores = whole.dense.search(vectors, k=K)
    per_shard = [col.dense.search(vectors, k=K) for col in shards]
    for i in range(len(queries)):
        got = merged([[(d, float(s)) for d, s in zip(ids[i], scores[i]) if d is not None] for ids, scores in per_shard], K)
        assert_same_ranking(got, list(zip(want_ids[i].tolist(), want_scores[i].astype(float).tolist())))


def test_bm25_results_merged_over_shards_equal_the_unsharded_ones(unsharded, shards, queries):
    want = Collection.open(unsharded).view().bm25_search(queries, K)
    per_shard = [col.view().bm25_search(queries, K) for col in shards]
    for i in range(len(queries)):
        assert want[i], "the BM25 leg found nothing: the queries do not test it"
        got = merged([list(hits[i].items()) for hits in per_shard], K)
        assert_same_ranking(got, list(want[i].items())[:K])


def test_summed_shard_doc_freqs_are_the_collection_s(unsharded, shards):
    whole = Collection.open(unsharded).sparse
    doc_freqs, num_docs = global_doc_freqs((col.sparse.doc_freqs(), col.sparse.num_docs) for col in shards)
    assert num_docs == whole.num_docs == N_DOCS
    np.testing.assert_array_equal(doc_freqs, whole.doc_freqs())


def test_an_interrupted_sharded_build_resumes_to_the_same_bytes(corpus, sharded, tmp_path):
    out = tmp_path / "col"

    def stop(part: int) -> None:
        if part == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_in_process(corpus, out, options(shards=N_SHARDS), on_shard=stop)
    assert (out / BUILD_STATE).is_file() and not (out / SHARDS_FILE).exists()
    refused = subprocess.run([sys.executable, "-m", "lsr", "index", str(corpus), str(out), "--shards", "2",
                              "--checkpoint-every", str(EVERY), "--max-length", "64", "--resume", "--quiet"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "shards=3 (now 2)" in refused.stderr
    summary = build_in_process(corpus, out, options(shards=N_SHARDS), resume=True)
    assert summary.docs == N_DOCS and summary.resumed_from == 2 * EVERY
    for name in read_shard_map(out).names:
        assert (json.loads((out / name / META_FILE).read_text())["checksums"]
                == json.loads((sharded / name / META_FILE).read_text())["checksums"])
    again = build_in_process(corpus, out, options(shards=N_SHARDS), resume=True)
    assert again.already_complete and again.docs == N_DOCS and again.encoded_with == options().encoding() == summary.encoded_with


def test_a_sharded_build_stopped_as_it_finishes_refuses_writes_to_its_shards_and_resumes_to_the_same_bytes(
        corpus, sharded, tmp_path, monkeypatch, capsys):
    """Stopped after shard-000 was finished but before the map: `lsr upsert X col/shard-000` was taken, and the resume
    folded it in (a document searched in a shard that does not own it, which `lsr doc` could not find); the resumed
    shard's indexes were named as a second generation, not the uninterrupted build's bytes."""
    import lsr.ingest.sharded_build as sharded_build
    from lsr.cli.main import main

    out = tmp_path / "col"

    def stopped(*_args) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(sharded_build, "write_shard_map", stopped)
        with pytest.raises(KeyboardInterrupt):
            build_in_process(corpus, out, options(shards=N_SHARDS))
    shard = out / "shard-000"
    assert (shard / META_FILE).is_file() and (out / BUILD_STATE).is_file() and not (out / SHARDS_FILE).exists()
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"_id": "zz-a", "text": "alpha wombat misrouted"}) + "\n")
    assert main(["upsert", str(new), str(shard)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"lsr upsert: error: {shard} is a shard of {out}, whose sharded build was stopped before it finished: finish "
        f"it with `lsr index SOURCE {out} --resume`, then write to the collection itself")
    build_in_process(corpus, out, options(shards=N_SHARDS), resume=True)

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.name not in (META_FILE, SHARDS_FILE)}  # those name their build and its timings

    assert files(out) == files(sharded)


@pytest.mark.parametrize("value", ["0", "-2", "257", "100000"])  # 100,000 would have filled a disk, 0.8 MB a shard
def test_a_shard_count_out_of_range_is_refused_in_one_line(corpus, tmp_path, value):
    result = subprocess.run([sys.executable, "-m", "lsr", "index", str(corpus), str(tmp_path / "col"), "--shards", value],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"lsr index: error: --shards must be between 1 and 256, got {value} "
                                                  "(each shard is a whole collection, served by a process of its own)"]
    assert not (tmp_path / "col").exists()


def test_repairing_a_shard_rebuilds_it_with_the_collection_wide_statistics(sharded, tmp_path):
    import shutil

    from lsr.ingest.repair import repair_collection

    copy = tmp_path / "col"
    shutil.copytree(sharded, copy)
    shard = copy / "shard-001"
    sparse_before = Collection.open(shard).sparse.checksum
    shutil.rmtree(shard / "bm25")
    shutil.rmtree(shard / "sparse")
    assert "rebuilt the BM25 leg from every shard's build texts" in repair_collection(shard)
    repaired = Collection.open(shard)  # checks the rebuilt BM25 files against the crc32s the build recorded
    assert repaired.sparse.checksum == sparse_before
    assert repaired.view().bm25_search(["cancer"], 3) == Collection.open(sharded / "shard-001").view().bm25_search(["cancer"], 3)


def test_a_shards_rebuilt_bm25_leg_is_checked_against_its_recorded_crc32s(sharded, tmp_path):
    """A plain collection's repair compared its rebuilt BM25 files with the crc32s the build recorded; a shard's did
    not, and reported the repair done (only a later open or verify said the leg was wrong)."""
    import shutil

    from lsr.files import CorruptFileError, sealed, write_json_atomic
    from lsr.ingest.layout import META_FILE, read_meta
    from lsr.ingest.repair import repair_collection

    shard = tmp_path / "col" / "shard-000"
    shutil.copytree(sharded, tmp_path / "col")
    meta = read_meta(shard)
    record = next(r for r in meta["files"] if r["file"] == "bm25/doc_freqs.npy")
    record["crc32"] ^= 1  # the build recorded other files than the texts now give
    write_json_atomic(shard / META_FILE, sealed({k: v for k, v in meta.items() if k != "crc32"}))
    with pytest.raises(CorruptFileError, match="the rebuilt BM25 leg differs from the one recorded .*doc_freqs.npy"):
        repair_collection(shard)


def test_repairing_every_shard_builds_the_collection_wide_bm25_leg_once(sharded, tmp_path, capsys):
    """Each shard's leg is cut from a leg over every shard's texts: `lsr repair` of the sharded collection built that
    leg again for every shard (N shards, N builds of the whole corpus's leg)."""
    import shutil

    from lsr.cli.main import main

    col = tmp_path / "col"
    shutil.copytree(sharded, col)
    shards = sorted(col.glob("shard-*"))
    for shard in shards:
        shutil.rmtree(shard / "bm25")
    assert main(["repair", str(col)]) == 0  # ends with a verify: every rebuilt leg matches its recorded crc32s
    bars = capsys.readouterr().err
    assert bars.count("bm25 (every shard's texts): 100%") == 1, bars
    for shard in shards:
        got = Collection.open(shard).view().bm25_search(["cancer"], 3)
        assert got == Collection.open(sharded / shard.name).view().bm25_search(["cancer"], 3)


def test_verify_and_repair_name_a_missing_shard_folder(sharded, tmp_path, capsys):
    """verify's line said to create the shard with `lsr index` (an unsharded collection of the whole corpus inside
    the sharded one) and exit 2; repair failed on pyarrow's bare FileNotFoundError while rebuilding another shard."""
    import shutil

    from lsr.cli.main import main

    col = tmp_path / "col"
    shutil.copytree(sharded, col)
    shutil.rmtree(col / "shard-002")
    assert main(["verify", str(col)]) == 1
    out = capsys.readouterr().out
    assert f"BAD      shard-002: the shard's folder {col / 'shard-002'} is missing; its documents are nowhere else" in out
    assert f"(`lsr index SOURCE {col} --shards 3 --overwrite`)" in out  # the map knows the count: it said N
    assert "checked  shard-000:" in out and "1 problem(s)" in out
    before = {p: p.stat().st_mtime_ns for p in col.rglob("*") if p.is_file()}
    assert main(["repair", str(col)]) == 2
    assert capsys.readouterr().err.startswith("lsr repair: error: nothing was repaired: the shard's folder")
    assert {p: p.stat().st_mtime_ns for p in col.rglob("*") if p.is_file()} == before
    from lsr.ingest.collection import Collection  # doc, upsert, delete: they said `lsr index SOURCE col/shard-002`

    with pytest.raises(FileNotFoundError, match=f"the shard's folder {col / 'shard-002'} is missing; its documents"):
        Collection.open(col / "shard-002")
    (col / ".lsr-replaced").mkdir()  # `lsr index --overwrite` under way: no backup is needed (a server said so)
    with pytest.raises(FileNotFoundError, match="shard-002 is missing: the collection is being indexed"):
        Collection.open(col / "shard-002")
    data = bytearray((col / SHARDS_FILE).read_bytes())  # a damaged shard map is a finding (1), not bad input (2)
    data[len(data) // 2] ^= 0x01
    (col / SHARDS_FILE).write_bytes(bytes(data))
    assert main(["verify", str(col)]) == 1
    assert capsys.readouterr().out.startswith(f"BAD      {col / SHARDS_FILE}")
    assert main(["search", str(col), "cancer", "--mode", "bm25"]) == 2  # it said only "fails its checksum"
    assert "; it names the shards: restore it from a backup (the shards are whole)" in capsys.readouterr().err
    from lsr.files import sealed, write_json_atomic

    write_json_atomic(col / SHARDS_FILE, sealed({"format": 1, "hash": "blake2b-64", "shards": []}))  # checks out
    assert main(["search", str(col), "cancer", "--mode", "bm25"]) == 2  # "exceptions must derive from BaseException"
    assert f"{col / SHARDS_FILE} names no shards; restore it from a backup" in capsys.readouterr().err


def test_a_write_or_build_aimed_at_one_shard_is_refused(sharded, corpus, tmp_path, capsys):
    """`lsr upsert X col/shard-001` put a document the hash gives shard-000 into shard-001: a later upsert through the
    collection made a second copy, a delete through it left the first, and `lsr verify` said "intact". `lsr index
    SOURCE col/shard-001 --overwrite` filled one shard with documents of every shard."""
    from lsr.cli.main import main

    col = shutil.copytree(sharded, tmp_path / "col")
    before = {p: p.stat().st_mtime_ns for p in col.rglob("*") if p.is_file()}
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"_id": "zz-a", "text": "alpha wombat misrouted"}) + "\n")
    shard = col / read_shard_map(col).names[1]
    for argv, verb in ((["upsert", str(new), str(shard)], "write to"), (["delete", str(shard), "zz-a"], "write to"),
                       (["index", str(corpus), str(shard), "--overwrite"], "index into")):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == (f"lsr {argv[0]}: error: {shard} is a shard of the sharded collection "
                                                   f"{col}; {verb} the collection itself, which sends each document "
                                                   "to the shard that owns it")
    assert {p: p.stat().st_mtime_ns for p in col.rglob("*") if p.is_file()} == before


def test_shard_folders_out_of_their_place_are_refused_by_every_open_verify_and_repair(sharded, unsharded, tmp_path,
                                                                                       capsys):
    """Swapped shard folders, a map of another build and an unsharded collection in a shard's place were searched as
    if whole (documents silently missing, deletes of them "not in the collection", upserts duplicating them),
    `lsr verify` said "intact", and `lsr repair` wrote each folder another's BM25 leg (helper audit)."""
    from lsr.cli.main import main
    from lsr.files import CorruptFileError
    from lsr.ingest.sharding import ShardMap, write_shard_map

    col = shutil.copytree(sharded, tmp_path / "col")
    one, two = col / "shard-001", col / "shard-002"
    one.rename(tmp_path / "aside")
    two.rename(one)
    (tmp_path / "aside").rename(two)
    swapped = f"{one} is shard 1 of 3 in {col / SHARDS_FILE}, but its lsr.json says shard 2 of 3 (folders swapped"
    with pytest.raises(CorruptFileError, match=re.escape(swapped)):
        Collection.open(one)
    assert main(["search", str(col), "cancer", "--mode", "bm25"]) == 2
    assert swapped in capsys.readouterr().err
    assert main(["verify", str(col)]) == 1
    out = capsys.readouterr().out
    assert f"BAD      shard-001: {swapped}" in out
    assert f"BAD      shard-002: {two} is shard 2 of 3 in {col / SHARDS_FILE}, but its lsr.json says shard 1 of 3" in out
    before = {p: p.stat().st_mtime_ns for p in col.rglob("*") if p.is_file()}
    assert main(["repair", str(col)]) == 2 and swapped in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in col.rglob("*") if p.is_file()} == before  # nothing was rewritten
    one.rename(tmp_path / "aside")
    two.rename(one)
    (tmp_path / "aside").rename(two)
    assert main(["verify", str(col)]) == 0
    capsys.readouterr()

    names = read_shard_map(col).names
    write_shard_map(col, ShardMap(names, "0" * 32))  # a map restored from another build
    with pytest.raises(CorruptFileError, match="but it holds a shard of another build of the collection"):
        Collection.open(col / names[0])
    write_shard_map(col, ShardMap(names))  # a map written before maps named their build: not compared
    assert main(["verify", str(col)]) == 0
    capsys.readouterr()

    shutil.rmtree(one)
    shutil.copytree(unsharded, one)
    with pytest.raises(CorruptFileError, match=re.escape(f"{one} is shard 1 of 3 in {col / SHARDS_FILE}, but holds an "
                                                         "unsharded collection")):
        Collection.open(one)
    (col / SHARDS_FILE).unlink()  # "not an lsr collection (no lsr.json)" sent its operator to re-index
    with pytest.raises(FileNotFoundError, match="holds shard folders but no shard map"):
        Collection.open(col)


def test_verify_names_documents_in_a_shard_that_does_not_own_them(sharded, tmp_path, capsys):
    """Written into one shard by its own folder, a document another shard owns was found by searches but missed by
    deletes and upserts through the collection, and `lsr verify` said "intact" (helper audit)."""
    from lsr.cli.main import main
    from lsr.search.searcher import Searcher

    col = shutil.copytree(sharded, tmp_path / "col")
    stray = next(f"stray-{i}" for i in range(100) if shard_of(f"stray-{i}", N_SHARDS) != 1)
    with Searcher.open(col / "shard-001") as searcher:  # the API's own writer does not route
        searcher.upsert([stray], ["a document in the wrong shard"])
    assert main(["verify", str(col)]) == 1
    assert (f"BAD      shard-001: {col / 'shard-001'} holds 1 document(s) other shards own ('{stray}'): deletes and "
            "upserts through the collection miss them") in capsys.readouterr().out


def test_repair_reads_every_shard_before_it_rewrites_any(sharded, tmp_path, capsys):
    """A damaged lsr.json in shard-001: repair rebuilt shard-000, then stopped on it (helper audit)."""
    from lsr.cli.main import main

    col = shutil.copytree(sharded, tmp_path / "col")
    meta = col / "shard-001" / META_FILE
    data = bytearray(meta.read_bytes())
    data[len(data) // 2] ^= 0x01
    meta.write_bytes(bytes(data))
    before = {p: p.stat().st_mtime_ns for p in col.rglob("*") if p.is_file()}
    assert main(["repair", str(col)]) == 2 and f"{meta}" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in col.rglob("*") if p.is_file()} == before


def test_a_link_to_a_shard_folder_is_that_shard(sharded, tmp_path, capsys):
    """Through a symbolic link, `lsr upsert` wrote into one shard documents that others own (helper audit)."""
    from lsr.cli.main import main

    col = shutil.copytree(sharded, tmp_path / "col")
    link = tmp_path / "link"
    link.symlink_to(col / "shard-001")
    new = tmp_path / "new.jsonl"
    new.write_text(json.dumps({"_id": "zz-a", "text": "alpha wombat misrouted"}) + "\n")
    assert main(["upsert", str(new), str(link)]) == 2
    assert "is a shard of the sharded collection" in capsys.readouterr().err


def test_tied_documents_are_kept_by_doc_id_sharded_or_not(tmp_path):
    """20 copies of one text tie in every leg. Each leg cut ties by its own row order, so 3 shards kept other copies
    than one collection did, and the sharded top 3 was not the start of its top 7; ties are now settled by doc id."""
    from lsr.search.searcher import Searcher
    from lsr.service.coordinator import ShardedSearcher

    corpus = tmp_path / "ties.jsonl"
    texts = {f"d{i:03d}": "zebrafish heart regeneration study" if i % 3 == 0 else f"unrelated note number {i} on soil"
             for i in range(60)}
    order = [f"d{(7 * i) % 60:03d}" for i in range(60)]  # rows not in id order: a row cut keeps other copies
    corpus.write_text("".join(json.dumps({"_id": d, "text": texts[d]}) + "\n" for d in order))
    one = Searcher.open(build(corpus, tmp_path / "one"), threads=1, device="cpu")
    three = ShardedSearcher.open(build(corpus, tmp_path / "three", shards=N_SHARDS), in_process=True, threads=1,
                                 device="cpu")  # as `lsr search` opens the shards: the coordinator's merge, no Ray
    copies = sorted(d for d, t in texts.items() if t.startswith("zebrafish"))
    for mode in ("sparse", "dense", "bm25", "hybrid"):
        for k in (3, 7):
            got = [[h.doc_id for h in s.search("zebrafish heart regeneration", k=k, mode=mode).hits] for s in (one, three)]
            assert got[0] == got[1] == copies[:k], (mode, k, got)
    for searcher in (one, three):  # both look up ids alike: None was looked up as a document named "None"
        assert searcher.doc(copies[0]) == texts[copies[0]]
        with pytest.raises(TypeError, match="doc_id is None; an id is a str"):
            searcher.doc(None)


def test_hundreds_of_tied_documents_are_cut_by_doc_id_too(tmp_path):
    """300 copies of one text, written in reverse id order: a leg widened its cut for ties up to 256 more documents
    only, so the top 2 were the first rows written (t042, t043), not the lowest ids (t000, t001) that 3 shards kept."""
    from lsr.search.searcher import Searcher

    corpus = tmp_path / "ties.jsonl"
    rows = [(f"t{i:03d}", "identical tardigrade text") for i in reversed(range(300))]
    rows += [(f"u{i:02d}", f"unrelated soil note {i}") for i in range(20)]
    corpus.write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in rows))
    searcher = Searcher.open(build(corpus, tmp_path / "col", max_length=16), threads=1, device="cpu")
    for mode in ("sparse", "dense", "bm25", "hybrid"):
        assert [h.doc_id for h in searcher.search("identical tardigrade text", k=2, mode=mode).hits] == ["t000", "t001"]


def test_a_closed_searcher_refuses_searches_writes_and_lookups_sharded_or_not(unsharded, sharded, tmp_path):
    """After close() a local searcher still answered, and took writes that only its journal kept; a sharded one failed
    deep in a stopped shard. Both now refuse every call in one line, as a closed file does; `with` closes them."""
    import shutil

    from lsr.search.searcher import Searcher
    from lsr.service.coordinator import ShardedSearcher

    one, three = (shutil.copytree(c, tmp_path / name) for c, name in ((unsharded, "one"), (sharded, "three")))
    opened = (Searcher.open(one, threads=1, device="cpu"),
              ShardedSearcher.open(three, in_process=True, threads=1, device="cpu"))
    for searcher in opened:
        with searcher as same:
            assert same is searcher and searcher.search("heart", k=1).hits
        searcher.close()  # a second close does nothing
        calls = (lambda: searcher.search("heart", k=1), lambda: searcher.search_batch(["heart"], k=1),
                 lambda: searcher.search_encoded({5: 1.0}, None), lambda: searcher.upsert(["new"], ["heart text"]),
                 lambda: searcher.delete(["new"]), lambda: searcher.doc("new"), lambda: searcher.stats(),
                 lambda: searcher.index_version, lambda: searcher.encode_queries(["heart"]))  # the last three answered
        for call in calls:
            with pytest.raises(ValueError, match=r"^this Searcher is closed; open the collection again"):
                call()
    with Searcher.open(one, threads=1, device="cpu") as reopened, pytest.raises(KeyError):
        reopened.doc("new")  # the refused upsert wrote nothing


def _garble_texts(shard: Path) -> Path:
    """Rewrite a shard's build texts as a valid parquet file with other words: a flipped byte that still decodes."""
    import pyarrow.parquet as pq

    path = shard / "docs" / "part-00000.parquet"
    table = pq.read_table(path)
    texts = [f"garbled{i} quokka{i}" for i in range(table.num_rows)]
    pq.write_table(table.set_column(table.schema.get_field_index("text"), "text", [texts]), path)
    return path


def test_repairing_a_shard_beside_one_with_damaged_texts_leaves_it_intact_and_names_the_damage(sharded, tmp_path):
    """The BM25 leg was cut from every shard's texts unchecked: another shard's damaged texts changed the global IDF,
    so repairing a sound shard rewrote its BM25 files into ones its own checksums refuse."""
    import shutil

    from lsr.files import CorruptFileError
    from lsr.ingest.repair import repair_collection

    col = tmp_path / "col"
    shutil.copytree(sharded, col)
    damaged = _garble_texts(col / "shard-002")
    with pytest.raises(CorruptFileError, match=f"{damaged}.*re-index the sharded collection with `lsr index SOURCE "
                                               f"{col} --shards {N_SHARDS} --overwrite`"):
        repair_collection(col / "shard-000")
    Collection.open(col / "shard-000")  # its BM25 files still match the crc32s the build recorded


def test_a_shard_s_damaged_source_file_says_to_re_index_the_whole_sharded_collection(sharded, tmp_path):
    """The hints said `lsr index SOURCE col/shard-002 --overwrite`: the whole corpus as one collection inside the
    sharded one."""
    import shutil

    from lsr.files import CorruptFileError

    col = tmp_path / "col"
    shutil.copytree(sharded, col)
    command = f"`lsr index SOURCE {col} --shards {N_SHARDS} --overwrite`"
    _garble_texts(col / "shard-002")
    with pytest.raises(CorruptFileError, match=f"re-index with {command}"):
        Collection.open(col / "shard-002")
    meta = col / "shard-001" / META_FILE
    meta.write_bytes(meta.read_bytes().replace(b'"docs"', b'"dpcs"', 1))
    with pytest.raises(CorruptFileError, match=f"{meta} fails its checksum.*index the corpus again \\({command}\\)"):
        Collection.open(col / "shard-001")


def test_upserts_to_a_shard_empty_at_its_build_score_like_the_unsharded_collection(corpus, queries, tmp_path):
    """A shard the build left empty had no segment to hold the collection's quantization scale, so its first upsert
    chose one from its own documents: their sparse scores (and every fused score) differed from the unsharded ones."""
    from lsr.cli.main import main
    from lsr.search.searcher import Searcher
    from lsr.service.coordinator import ShardedSearcher

    lines = corpus.read_text().splitlines(keepends=True)
    (tmp_path / "three.jsonl").write_text("".join(lines[:3]))
    one, many = (build(tmp_path / "three.jsonl", tmp_path / name, **extra) for name, extra in
                 (("one", {}), ("many", {"shards": 8})))
    docs = [json.loads(line) for line in lines[:3]]
    built = {shard_of(doc["_id"], 8) for doc in docs}
    ids = [f"copy{i}" for i in range(40) if shard_of(f"copy{i}", 8) not in built][:6]  # owned by empty shards; the
    (tmp_path / "new.jsonl").write_text("".join(  # built texts again, so the build's scale holds their weights
        json.dumps({**docs[i % 3], "_id": doc_id}) + "\n" for i, doc_id in enumerate(ids)))
    for col in (one, many):
        assert main(["upsert", str(tmp_path / "new.jsonl"), str(col), "--quiet"]) == 0
    searchers = (Searcher.open(one, threads=1, device="cpu"),
                 ShardedSearcher.open(many, in_process=True, threads=1, device="cpu"))
    for query in queries[:4]:
        got = [[(h.doc_id, h.score) for h in s.search(query, k=5, mode="sparse").hits] for s in searchers]
        assert got[0] == got[1], query


def test_upserts_past_the_builds_scale_score_like_the_unsharded_collection(tmp_path):
    """An upsert whose weights the build's scale could not hold grew a shard's scale from its own documents, so sharded
    scores left the unsharded ones by ~0.2 %; each document now takes the shared base scale or base·2^k alone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lsr.cli.main import main
    from lsr.sparse import SparseBatch

    rng = np.random.default_rng(0)
    terms = [np.sort(rng.choice(np.arange(2000, 3000), 20, replace=False)) for _ in range(40)]
    weak = SparseBatch(np.arange(0, 820, 20), np.concatenate(terms).astype(np.int32),
                       (rng.random(800) * 0.3).astype(np.float32), 30522)  # far below splade-tiny's weights
    table = weak.to_arrow([f"d{i}" for i in range(40)]).append_column(
        "text", pa.array([f"document number {i} about aspirin" for i in range(40)]))
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"lsr.model": b"splade-tiny",
                                                  b"lsr.max_length": b"256"}), tmp_path / "weak.parquet")
    (tmp_path / "up.jsonl").write_text("".join(json.dumps({"_id": f"u{i}", "text": f"aspirin stroke prevention {i}"})
                                               + "\n" for i in range(6)))
    (tmp_path / "q.tsv").write_text("q1\taspirin heart\nq2\tstroke prevention\n")
    runs = []
    for shards in ("1", "2"):
        col = tmp_path / f"c{shards}"
        assert main(["index", str(tmp_path / "weak.parquet"), str(col), "--pre-encoded", "--dense", "none", "--bm25",
                     "none", "--shards", shards, "--quiet"]) == 0
        assert main(["upsert", str(tmp_path / "up.jsonl"), str(col), "--quiet"]) == 0
        assert main(["search", str(col), "--topics", str(tmp_path / "q.tsv"), "--output", str(col) + ".trec",
                     "--mode", "sparse", "--k", "20", "--quiet"]) == 0
        runs.append((tmp_path / f"c{shards}.trec").read_text())
    assert runs[0] == runs[1] and "u1" in runs[0]


def test_a_sharded_search_carries_bound_factor_to_every_shard(sharded, scifact, monkeypatch):
    """A Searcher's ``bound_factor`` goes to each shard with the SPLADE query (a ``SparseQuery``), so shards search
    approximately as one collection does (tests/test_service.py shows the index honouring it); hits keep exact
    scores, and an exact search sends the plain weights as before."""
    from lsr.search import legs
    from lsr.service.coordinator import ShardedSearcher

    received, search = [], legs.ViewLegs._search

    def recorded(self, leg, query, depth):  # the real search, noting what each shard's legs were asked
        if leg == "sparse":
            received.append(query)
        return search(self, leg, query, depth)

    monkeypatch.setattr(legs.ViewLegs, "_search", recorded)
    query = list(scifact.queries.values())[0]
    with ShardedSearcher.open(sharded, in_process=True, threads=1, device="cpu") as searcher:
        received.clear()  # the shards' warm-up searches
        exact = searcher.search(query, k=5, mode="sparse")
        assert len(received) == N_SHARDS and all(isinstance(q, dict) for q in received)
        received.clear()
        approx = searcher.search(query, k=5, mode="sparse", bound_factor=3.0)
    assert len(received) == N_SHARDS and {(type(q), q.bound_factor) for q in received} == {(legs.SparseQuery, 3.0)}
    assert [(h.doc_id, h.score) for h in approx.hits] == [(h.doc_id, h.score) for h in exact.hits]  # 30 docs a shard
