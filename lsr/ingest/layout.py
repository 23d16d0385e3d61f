"""The collection folder format: what ``lsr index`` writes and every reader opens.

Layout (``lsr.json`` is written last, so its presence means the collection is complete)::

    OUT/lsr.json                      metadata, the crc32 of each build file below, and its own crc32
    OUT/vocab.json                    the model's vocabulary (term id → token), once for all shards
    OUT/vectors/part-00000.parquet    encoded sparse vectors per shard (id, indices, values)
    OUT/docs/part-00000.parquet       id, text per shard (for include_text / explain)
    OUT/dense/embeddings-00000.npy    float32 embeddings per shard, rows aligned with the parts
    OUT/journal.log                   write-ahead journal of later upserts and deletes (lsr.ingest.journal)
    OUT/journal.log.cutting           the journal less its folded records while it is written (lsr.ingest.journal_fold)
    OUT/written/manifest.json, part-N.parquet   the documents written since the build that the journal was folded
                                      into: id, deleted, text, vectors (lsr.ingest.written_parts; sealed manifest
                                      with each part's crc32)
    OUT/dense/manifest.json, vectors-N.npy (flat) or faiss-N.index (HNSW), ids-N.parquet   the DenseIndex (derived)
    OUT/sparse/                       the InvertedIndex (derived)
    OUT/bm25/                         the BM25 index over the build's texts, with the statistics it scored with
                                      (lsr.search.bm25_index; derived, deterministic, so its crc32s sit in lsr.json
                                      with the build files); later writes are added at open (lsr.search.bm25_leg)
    OUT/bm25/written.npz              the documents written since the build as the BM25 leg holds them, as of a
                                      journal record (lsr.search.bm25_leg_file; derived, crc32 per array)
    OUT/search-defaults.json          fusion settings `lsr tune` chose on train/dev qrels (sealed with its crc32)
    OUT/.lsr-build.json               checkpoint of an unfinished build (removed when done)

The build files, the written parts and the journal are the source of truth; the sparse and dense indexes are
derived from them and ``lsr repair`` rebuilds them. Every file is covered by a crc32: build files
in ``lsr.json``, written parts in their manifest, index files in their index's manifest, journal records in their
own header, the saved BM25 leg's arrays in the file itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lsr.files import (CorruptFileError, FolderBusyError, atomic_write, check_record, each_problem, file_sha256,
                       folder_busy, read_sealed_json, sealed, write_json_atomic)
from lsr.ingest.corpus import parquet_batches
from lsr.ingest.docstore import DOC_ROW_GROUP
from lsr.sparse import SparseBatch

DOC_CHUNK = 10_000  # documents a BM25 build tokenises at a time

FORMAT = 2  # 2: journal, per-file crc32s, sealed lsr.json, versioned dense files
META_FILE = "lsr.json"
RAY_INPUT = ".lsr-input"  # the ids and texts a Ray build stages for its encoder actors (lsr.ingest.ray_engine)
REPLACED = ".lsr-replaced"  # where --overwrite keeps the collection it replaces until the new one is whole
MOVING = ".lsr-moving"  # its moves of that collection's files pass through here (lsr.ingest.indexing)
BUILD_STATE = ".lsr-build.json"
VOCAB_FILE = "vocab.json"
SEARCH_DEFAULTS = "search-defaults.json"


def shard_name(kind: str, shard: int) -> str:
    """Relative path of a shard file: ``vectors`` / ``docs`` parquet parts and ``dense`` .npy embeddings."""
    if kind == "dense":
        return f"dense/embeddings-{shard:05d}.npy"
    return f"{kind}/part-{shard:05d}.parquet"


def write_shard(out: Path, shard: int, ids: list[str], texts: list[str], sparse: SparseBatch,
                dense: np.ndarray | None) -> None:
    """Write one shard's files, each atomically (temp + rename); the caller checkpoints after."""
    if dense is not None:
        atomic_write(out / shard_name("dense", shard), lambda fh: np.save(fh, np.ascontiguousarray(dense, np.float32)))
    docs = pa.table({"id": pa.array(ids, pa.string()), "text": pa.array(texts, pa.string())})
    atomic_write(out / shard_name("docs", shard),
            lambda fh: pq.write_table(docs, fh, compression="zstd", row_group_size=DOC_ROW_GROUP))
    atomic_write(out / shard_name("vectors", shard), lambda fh: pq.write_table(sparse.to_arrow(ids), fh, compression="zstd"))
    if sparse.vocab is not None and not (out / VOCAB_FILE).is_file():
        write_json_atomic(out / VOCAB_FILE, list(sparse.vocab))


def read_vector_shards(out: Path, n_shards: int) -> Iterator[tuple[SparseBatch, list[str]]]:
    """Each shard's vectors and ids; term names from ``vocab.json`` (older shards carry their own)."""
    vocab = json.loads((out / VOCAB_FILE).read_text(encoding="utf-8")) if (out / VOCAB_FILE).is_file() else None
    for shard in range(n_shards):
        batch, ids = SparseBatch.read_parquet(out / shard_name("vectors", shard), vocab)
        yield batch, ids


class Rereadable:
    """(batch, ids) chunks made anew by ``make()`` each time they are iterated, from files: the sparse index build
    reads them twice (sizes, then impacts) rather than hold every float weight of the collection. ``on_chunk`` is
    told each chunk's document count (a progress bar)."""

    def __init__(self, make: Callable[[], Iterator[tuple[SparseBatch, list[str]]]],
                 on_chunk: Callable[[int], Any] | None = None):
        self.make, self.on_chunk = make, on_chunk

    def __iter__(self) -> Iterator[tuple[SparseBatch, list[str]]]:
        for batch, ids in self.make():
            yield batch, ids
            if self.on_chunk is not None:
                self.on_chunk(len(ids))


def doc_chunks(out: Path, n_shards: int, rows: int = DOC_CHUNK) -> Iterator[tuple[list[str], list[str]]]:
    """Every build document's (ids, texts), about ``rows`` at a time, in shard order (what the BM25 leg is built
    from: a chunk at a time, never the whole corpus's texts)."""
    for shard in range(n_shards):
        for table in parquet_batches(pq.ParquetFile(out / shard_name("docs", shard)), rows, ["id", "text"]):
            yield table.column("id").to_pylist(), table.column("text").to_pylist()


def swap_names(folder: Path) -> tuple[Path, Path]:
    """Where ``lsr repair`` builds a store anew beside ``folder``, and where it moves the old one while it swaps."""
    return folder.with_name(folder.name + ".rebuild"), folder.with_name(folder.name + ".replaced")


def remove_swap_leftovers(folder: Path) -> None:
    """Drop what a repair killed before its swap left beside ``folder`` (a half-built index: disk, and nothing
    else, until the next repair); kept while ``folder`` is missing (killed between the renames), for that repair.
    Looked for first, and left where it cannot go (a read-only mount)."""
    if not folder.is_dir():
        return
    for leftover in swap_names(folder):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)


def files_checksum(paths: Sequence[Path]) -> str:
    """sha256 over the files' sha256s, in order: equal content ⇔ equal checksum."""
    h = hashlib.sha256()
    for path in paths:
        h.update(file_sha256(path).encode())
    return h.hexdigest()


def disk_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def is_collection_dir(path: Path) -> bool:
    """True for a complete, sharded or unfinished collection (the only folders ``--overwrite`` may clear)."""
    from lsr.ingest.sharding import SHARDS_FILE

    return any((path / name).is_file() for name in (META_FILE, BUILD_STATE, SHARDS_FILE))


def check_utf8_path(path: Path) -> None:
    """A collection's folder must be named in UTF-8: Parquet's reader takes its paths as UTF-8, so a folder named in
    another encoding was reported as damaged ("run lsr repair"), and a build failed once every document was encoded."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"the collection folder {ascii(str(path))} is not named in UTF-8; rename it (or a folder "
                         "above it)") from None


def collection_holding(path: Path) -> Path | None:
    """The collection folder ``path`` lies in (symlinks followed), or None: a file written there replaces one of its
    files or is one ``lsr verify`` does not know."""
    for folder in Path(os.path.realpath(path)).parents:
        if is_collection_dir(folder):
            return folder
    return None


def drop_build_state(path: Path) -> None:
    """Remove a finished build's checkpoint, the temporary copies of it a kill -9 mid-write left behind, and the
    corpus copy a Ray build staged (``RAY_INPUT``: a Ray build resumed by the local engine kept it, a copy of the
    corpus's ids and texts in the finished collection)."""
    for leftover in path.glob(f"{BUILD_STATE}.*.tmp"):
        leftover.unlink()
    shutil.rmtree(path / RAY_INPUT, ignore_errors=True)
    (path / BUILD_STATE).unlink(missing_ok=True)


def read_meta(path: Path) -> dict:
    """``lsr.json`` of a complete collection; every error names the file and what to run."""
    check_utf8_path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        if (path / BUILD_STATE).is_file():
            if folder_busy(path):  # a build in progress is no interrupted one: --resume would wait on its lock
                raise FolderBusyError(f"{path} is being indexed right now by another process; it opens once that "
                                      "`lsr index` has finished")
            aside = (f"; the collection `--overwrite` replaces is kept in {path / REPLACED} until then (to keep it "
                     "instead, move that folder out and use it)") if (path / REPLACED).is_dir() else ""
            raise ValueError(f"{path} is an unfinished collection (indexing was interrupted); "
                             f"finish it with `lsr index SOURCE {path} --resume`{aside}")
        from lsr.ingest.sharding import SHARDS_FILE, is_sharded, missing_shard, shard_dir_name

        if not path.exists() and is_sharded(path.parent):  # `lsr index SOURCE shard-001` would make a stray collection
            raise FileNotFoundError(missing_shard(path))
        if not path.exists():
            raise FileNotFoundError(f"collection {path} does not exist; create it with `lsr index SOURCE {path}`")
        if path.is_file():  # "col/lsr.json is not an lsr collection (no lsr.json)"
            inside = f"; give the folder that holds it, {path.parent}" if path.name in (META_FILE, SHARDS_FILE) else ""
            raise ValueError(f"{path} is a file; a collection is a folder (`lsr index` makes one){inside}")

        if is_sharded(path):
            raise ValueError(f"{path} is a sharded collection: search it with `lsr search {path}` or serve it with "
                             f"`lsr serve {path}`; other commands take one shard ({path}/shard-000 ...)")
        if (path / shard_dir_name(0) / META_FILE).is_file():  # "not an lsr collection" sent its operator to re-index
            raise FileNotFoundError(f"{path} holds shard folders but no shard map ({path / SHARDS_FILE}): restore "
                                    "it from a backup (its shards are whole)")
        kept = next((path / name for name in (MOVING, REPLACED) if (path / name).is_dir()), None)
        if kept is not None:
            raise ValueError(f"{path}: an `lsr index --overwrite` stopped before the new collection was whole; the one "
                             f"it replaces is kept in {kept}. Run that `lsr index` again: one that fails before its first "
                             "checkpoint puts the old collection back")
        raise FileNotFoundError(f"{path} is not an lsr collection (no {META_FILE}); create one with `lsr index`")
    try:
        meta = read_sealed_json(meta_path)
    except CorruptFileError as exc:  # it holds the checksums every other file is checked by: nothing rebuilds it
        from lsr.ingest.sharding import reindex_command

        raise CorruptFileError(f"{exc}; restore {META_FILE} from a backup or index the corpus again "
                               f"(`{reindex_command(path)}`)") from None
    found = meta.get("format")
    if isinstance(found, int) and found > FORMAT:  # re-indexing it, as said before, lost a newer lsr's collection
        raise ValueError(f"{path} was written by a newer lsr ({meta.get('created_with', 'unknown')}, collection "
                         f"format {found}); this lsr reads format {FORMAT}: upgrade lsr to open it")
    if found != FORMAT:
        raise ValueError(f"{path} has collection format {found!r}; this lsr reads format {FORMAT}. "
                         "Re-index with `lsr index --overwrite`")
    from lsr.ingest.sharding import check_shard_place

    check_shard_place(path, meta)
    return meta


def read_search_defaults(path: Path) -> dict | None:
    """The settings `lsr tune` stored (None when it has not run); a damaged file is a CorruptFileError naming it."""
    return read_sealed_json(path / SEARCH_DEFAULTS) if (path / SEARCH_DEFAULTS).is_file() else None


def usable_search_defaults(path: Path) -> dict | None:
    """``read_search_defaults`` for searching: a damaged file is a warning and the untuned defaults, not a
    collection that no verb (`lsr tune`, which rewrites it, included) can open; `lsr verify` still reports it."""
    try:
        return read_search_defaults(path)
    except (CorruptFileError, OSError) as exc:
        logging.getLogger(__name__).warning("%s; searching with the untuned defaults until `lsr tune` rewrites it",
                                            exc)
        return None


def write_search_defaults(path: Path, defaults: dict) -> None:
    write_json_atomic(path / SEARCH_DEFAULTS, sealed(defaults))


def build_file_problems(path: Path, meta: dict, *, under: str | None = None, skip: str | None = None) -> list[str]:
    """The build's files (vectors, docs, embeddings, BM25) checked against their recorded crc32s; ``under`` /
    ``skip`` keep / leave out the files in one folder."""
    def kept(record: dict) -> bool:
        folder = record["file"].split("/", 1)[0]
        return (under is None or folder == under) and (skip is None or folder != skip)

    return each_problem([r for r in meta["files"] if kept(r)], lambda record: check_record(path, record),
                        CorruptFileError)
