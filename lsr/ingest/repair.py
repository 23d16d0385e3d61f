"""``lsr repair``: rebuild the derived stores (inverted index, faiss index, BM25 leg) from the source of truth.

The build's vector and embedding shards plus the written parts and journal of later writes hold every
document's current vectors and texts. The sparse and dense indexes are pure
functions of them, so a missing or damaged index file is repaired by rebuilding the index. The
BM25 leg is a deterministic function of the build's texts, so its rebuilt files match the crc32s
``lsr.json`` recorded for them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np

from lsr.files import WRITE_WAIT, CorruptFileError, exclusive_folder, file_record, fsync_dir, sealed, write_json_atomic
from lsr.ingest.collection import Collection
from lsr.ingest.journal import JOURNAL_FILE, Record, latest_writes, recover, scan
from lsr.ingest.journal_salvage import salvage_journal
from lsr.ingest.layout import (META_FILE, Rereadable, build_file_problems, read_meta, read_vector_shards, shard_name,
                               swap_names)
from lsr.ingest.progress import progress_bar
from lsr.ingest.written_parts import WrittenParts
from lsr.search.bm25_index import BM25_DIR, DOC_FREQS_FILE, STATS_FILE, build_bm25
from lsr.search.dense_index import MANIFEST, DenseIndex
from lsr.sparse import SparseBatch

T = TypeVar("T")


def repair_collection(path: Path, salvage: bool = False, progress: bool = False,
                      bm25_legs: dict | None = None) -> list[str]:
    """Rebuild every index; returns what was done. Raises CorruptFileError if a source file is damaged (with
    ``salvage``, a journal damaged in the middle first keeps its whole records: ``journal_salvage``), and
    FolderBusyError while an ``lsr index``, another repair or a write is under way in the collection. ``progress``:
    a bar with an ETA for each index rebuilt (on stderr). ``bm25_legs``: one dict passed to the repairs of every
    shard of a sharded collection, so the collection-wide BM25 leg they are cut from is built once."""
    meta = read_meta(path)  # a missing or foreign folder fails here, before the lock would create it
    with exclusive_folder(path, wait=WRITE_WAIT):  # a server's write under way ends soon
        return _rebuild(path, meta, salvage, progress, bm25_legs)


def _rebuild(path: Path, meta: dict, salvage: bool, progress: bool, bm25_legs: dict | None) -> list[str]:
    from lsr.index import InvertedIndex

    damaged = build_file_problems(path, meta, skip=BM25_DIR)
    if damaged:
        raise CorruptFileError(f"{damaged[0]}: a source file is damaged, so the indexes cannot be rebuilt; "
                               "restore it from a backup or re-index with `lsr index --overwrite`")
    parts = WrittenParts.open(path)  # a damaged or lost part or manifest: its error says what to restore
    parts.remove_unnamed()
    applied, every_store = _applied_seq(path, meta)
    salvaged = salvage_journal(path / JOURNAL_FILE, applied, parts.upto) if salvage else None
    problem = scan(path / JOURNAL_FILE).problem
    if problem is not None and not every_store:  # as `lsr verify` judges it
        raise CorruptFileError(f"{path / JOURNAL_FILE}: {problem}; with an index unreadable, nothing tells that from "
                               "a write a crash cut off, so it is not cut as one (acknowledged writes may lie in it): "
                               f"`lsr repair {path} --salvage` keeps the whole records around it")
    records = recover(path / JOURNAL_FILE, applied, parts.upto)
    last = records[-1].seq if records else parts.upto
    latest = latest_writes([*parts.records(), *records])

    live = _journaled(latest)
    scale = _build_scale(path, meta, Rereadable(lambda: read_vector_shards(path, meta["shards"])))
    # the build reads the shards twice (sizes, then impacts), as `lsr index`'s does
    with progress_bar("sparse index (2 readings)", 2 * meta["n_docs"], enabled=progress) as bar:
        built = Rereadable(lambda: read_vector_shards(path, meta["shards"]), bar.update)
        sparse = _swapped_in(path / "sparse", lambda folder: InvertedIndex.build(
            folder, Rereadable(lambda: _current_vectors(built, latest, live)), journal_seq=last,
            quantization=meta["settings"]["quantization"], scale=scale))
    done = [salvaged] if salvaged else []
    done.append(f"rebuilt the sparse index: {sparse.num_docs:,} documents")
    if meta.get("dense_model"):
        dense = None
        with progress_bar("dense index", meta["n_docs"], enabled=progress) as bar:
            for shard, (_, ids) in enumerate(read_vector_shards(path, meta["shards"])):
                vectors = np.load(path / shard_name("dense", shard))
                if dense is None:
                    dense = DenseIndex.create(vectors.shape[1], meta["settings"]["hnsw_m"])
                keep = [i for i, doc_id in enumerate(ids) if doc_id not in latest]
                dense.add([ids[i] for i in keep], vectors[keep])
                bar.update(len(ids))
        if live:
            dense.add([doc_id for doc_id, _, _ in live], np.stack([record.dense[row] for _, record, row in live]))
        if _committed_seq(lambda: DenseIndex.committed_seq(path / "dense")) is None:  # a damaged manifest must not
            (path / "dense" / MANIFEST).unlink(missing_ok=True)  # stop the new save; a sound one stays till replaced
        dense.save(path / "dense", journal_seq=last)
        done.append(f"rebuilt the dense index: {len(dense):,} documents")
    if meta.get("bm25"):
        sharded = "sharding" in meta
        if sharded:  # scored with the whole collection's statistics
            from lsr.ingest.sharded_build import rebuild_shard_bm25

            rebuild_shard_bm25(path, meta, progress, bm25_legs)
        else:
            with progress_bar("bm25", meta["n_docs"], enabled=progress) as bar:
                build_bm25(path, meta["shards"], bar.update)
        differs = build_file_problems(path, meta, under=BM25_DIR)
        if differs:
            raise CorruptFileError(f"the rebuilt BM25 leg differs from the one recorded ({differs[0]}); "
                                   "re-index with `lsr index --overwrite`")
        done.append("rebuilt the BM25 leg from " + ("every shard's build texts" if sharded else "the build's texts"))
    if meta.get("bm25") and _record_bm25_statistics(path, meta):
        done.append("recorded the BM25 leg's statistics: it now finds the documents upserted since the build")
    if meta.get("bm25") and live and Collection._load(path, read_meta(path)).save_bm25_leg():
        done.append(f"saved the BM25 leg of the {len(live):,} documents written since the build")
    return done


def _current_vectors(built: Iterable, latest: dict, live: list) -> Iterator[tuple[SparseBatch, list[str]]]:
    """Every live document's vectors: the build's shards less what later writes replaced or deleted, then the
    journal's upserts (``live``)."""
    for batch, ids in built:
        yield _without(batch, ids, latest)
    if live:
        yield (SparseBatch.concat([record.sparse[row : row + 1] for _, record, row in live]),
               [doc_id for doc_id, _, _ in live])


def _build_scale(path: Path, meta: dict, built: Iterable) -> float | None:
    """The sparse index's base scale as its build chose it (a sharded collection's shared one, else from the build's
    vectors), so a document written since scores as it did before the rebuild (``row_scales``). A build without a
    weight left it to the first write: the index's record of it, while the index opens (else None: chosen anew)."""
    from lsr.index import InvertedIndex
    from lsr.index.quantize import choose_scale

    shared = meta.get("sharding", {}).get("sparse_scale")  # None where no document of any shard held a weight
    if shared is not None:
        return shared
    top = max((float(batch.values.max(initial=0.0)) for batch, _ in built), default=0.0)
    chosen = choose_scale(meta["settings"]["quantization"], top)
    if chosen is not None:
        return chosen
    try:
        return InvertedIndex.open(path / "sparse").base_scale
    except Exception:  # noqa: BLE001 - whatever the damage (a manifest that is a list: AttributeError), repair rebuilds
        return None


def _record_bm25_statistics(path: Path, meta: dict) -> bool:
    """A collection built before the BM25 leg kept its statistics: the rebuild wrote them, so record their crc32s in
    ``lsr.json``, which an open requires before it trusts them. Whether there were any to record."""
    recorded = {record["file"] for record in meta["files"]}
    written = [file for file in (path / BM25_DIR / STATS_FILE, path / BM25_DIR / DOC_FREQS_FILE)
               if file.relative_to(path).as_posix() not in recorded]
    if written:
        write_json_atomic(path / META_FILE, sealed({**meta, "files": meta["files"] + [file_record(f, path) for f in written]}))
    return bool(written)


def _applied_seq(path: Path, meta: dict) -> tuple[int, bool]:
    """The highest journal seq a readable store claims (so a damaged journal is not mistaken for a cut-off one), and
    whether every store the collection has could be read (if not, the journal's damage may hide applied records)."""
    from lsr.index import storage

    reads = [lambda: storage.read_manifest(path / "sparse").get("journal_seq", 0)]
    if meta.get("dense_model"):
        reads.append(lambda: DenseIndex.committed_seq(path / "dense"))
    seqs = [_committed_seq(read) for read in reads]
    return max([0] + [seq for seq in seqs if seq is not None]), None not in seqs


def _committed_seq(read: Callable[[], object]) -> int | None:
    """A store's committed journal seq, None when it cannot be read (missing or damaged)."""
    try:
        return int(read())
    except (CorruptFileError, OSError, KeyError, TypeError, ValueError):
        return None


def _swapped_in(folder: Path, build: Callable[[Path], T]) -> T:
    """``build(a new folder)`` beside ``folder``, then swapped in by two renames: a repair interrupted while it
    builds (Ctrl-C, kill -9) leaves the old store as it was, where it used to leave none and every open failed. A
    build that fails removes its folder (on a full disk it held the space until the next open)."""
    fresh, replaced = swap_names(folder)
    for leftover in (fresh, replaced):  # an earlier repair's, cut short
        if leftover.exists():
            shutil.rmtree(leftover)
    try:
        built = build(fresh)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    if folder.exists():
        os.rename(folder, replaced)
    os.rename(fresh, folder)
    fsync_dir(folder.parent)
    if replaced.exists():
        shutil.rmtree(replaced)
    return built


def _without(batch: SparseBatch, ids: list[str], latest: dict) -> tuple[SparseBatch, list[str]]:
    """A build shard less the documents the journal replaced or deleted."""
    keep = [i for i, doc_id in enumerate(ids) if doc_id not in latest]
    return batch.select(keep), [ids[i] for i in keep]


def _journaled(latest: dict) -> list[tuple[str, Record, int]]:
    """(id, upsert record, row) of every document whose last journaled write is an upsert."""
    return [(doc_id, where[0], where[1]) for doc_id, where in latest.items() if where is not None]
