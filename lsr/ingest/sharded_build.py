"""Sharded builds: route each encoded part to the shards that own its documents, then finish every shard
with the whole collection's statistics, so merged shard results score exactly as the unsharded collection.

Documents are encoded once, in the same parts (and batches) as an unsharded build; each part's rows are
written into the folder of the shard that owns them (``shard_of``), so every shard holds a ``part-NNNNN``
of every part, possibly empty. Each shard is then finished like any collection except for:

- the sparse index's quantization scale: the whole collection's (its largest weight), so every shard stores
  the same integer impacts as the unsharded index and scores equal;
- the BM25 leg: built once over every document and cut by shard (``Bm25Index.split``), so IDF and average
  document length are global;
- document frequencies for the inference-free query side's IDF are not stored: a coordinator sums the
  shards' live counts (``lsr.ingest.sharding.global_doc_freqs``), which equals the unsharded index's counts,
  after upserts and deletes too.

``lsr-shards.json`` is written last: its presence means every shard is complete.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from lsr.files import CorruptFileError
from lsr.ingest.layout import (META_FILE, build_file_problems, disk_size, doc_chunks, drop_build_state, read_meta,
                               read_vector_shards, write_shard)
from lsr.ingest.progress import progress_bar
from lsr.ingest.sharding import HASH_NAME, ShardMap, reindex_command, shard_dir_name, shard_of, write_shard_map
from lsr.sparse import SparseBatch

if TYPE_CHECKING:
    from lsr.ingest.indexing import BuildState, IndexOptions, Summary


def route_part(out: Path, part: int, ids: list[str], texts: list[str], sparse: SparseBatch, dense: np.ndarray | None,
               truncated: np.ndarray, n_shards: int) -> list[list[int]]:
    """Write each shard's rows of one encoded part into its folder; [docs, postings, truncated] per shard."""
    owners = np.fromiter((shard_of(doc_id, n_shards) for doc_id in ids), np.int64, len(ids))
    counts = []
    for shard in range(n_shards):
        rows = np.flatnonzero(owners == shard)
        vectors = sparse.select(rows)
        write_shard(out / shard_dir_name(shard), part, [ids[r] for r in rows], [texts[r] for r in rows], vectors,
                    dense[rows] if dense is not None else None)
        counts.append([len(rows), vectors.nnz, int(truncated[rows].sum())])
    return counts


def global_scale(folders: list[Path], n_parts: int, quantization: str) -> float | None:
    """The quantization scale the unsharded index would choose: from the largest weight of any shard; None where no
    document holds a weight (the unsharded index leaves it to the first write with one: 1.0 rounded weights to whole
    numbers)."""
    from lsr.index.quantize import choose_scale

    top = max((float(batch.values.max(initial=0.0)) for folder in folders
               for batch, _ in read_vector_shards(folder, n_parts)), default=0.0)
    return choose_scale(quantization, top)


def global_bm25_legs(folders: list[Path], n_parts: int, on_chunk: Callable[[int], object] = lambda n: None,
                     workers: int | None = None) -> list:
    """One BM25 leg per shard, cut from a leg over every document (global IDF and average length), tokenised by
    ``workers`` processes (default: one per usable CPU); ``on_chunk`` is told each chunk's document count."""
    from lsr.encode.cpu_share import usable_cpus
    from lsr.search.bm25_index import Bm25Index

    sizes = [0] * len(folders)

    def chunks():
        for shard, folder in enumerate(folders):
            for ids, texts in doc_chunks(folder, n_parts):
                sizes[shard] += len(ids)
                yield ids, texts

    return Bm25Index.build_from(chunks(), workers or usable_cpus(), on_chunk).split(sizes)


def rebuild_shard_bm25(path: Path, meta: dict, progress: bool = False, legs_of: dict | None = None) -> list[Path]:
    """``lsr repair`` of one shard's BM25 leg: cut again from a leg over every shard's texts, as the build did.
    ``legs_of`` (sharded collection → its legs) keeps them for the next shard of one repair of every shard, which
    built the whole collection's leg once a shard."""
    from lsr.ingest.sharding import is_sharded, read_shard_map
    from lsr.search.bm25_index import BM25_DIR

    root = Path(path).resolve().parent
    if not is_sharded(root):
        raise ValueError(f"{path} is a shard whose BM25 leg needs its sibling shards to be rebuilt, but {root} holds "
                         "no lsr-shards.json; repair it inside its sharded collection")
    folders = read_shard_map(root).paths(root)
    _check_sibling_texts(folders)
    legs = (legs_of or {}).get(root)
    if legs is None:
        total = sum(read_meta(folder)["n_docs"] for folder in folders)
        with progress_bar("bm25 (every shard's texts)", total, enabled=progress) as bar:
            legs = global_bm25_legs(folders, meta["shards"], bar.update)
        if legs_of is not None:
            legs_of[root] = legs
    return legs[meta["sharding"]["shard"]].save(path / BM25_DIR)


def _check_sibling_texts(folders: list[Path]) -> None:
    """Every shard's build texts against their crc32s, before any feeds the leg: a sibling's flipped byte still
    decoded, and its garbage words changed the global IDF, so repairing a sound shard rewrote its BM25 files to ones
    its own checksums refuse (and the whole collection's `lsr repair` damaged every shard before the broken one)."""
    for folder in folders:
        damaged = build_file_problems(folder, read_meta(folder), under="docs")
        if damaged:
            raise CorruptFileError(f"{damaged[0]}: every shard's BM25 leg is cut from all the shards' texts, so none "
                                   f"was rebuilt; restore the file from a backup or re-index the sharded collection "
                                   f"with `{reindex_command(folder)}`")


def finish_sharded(out: Path, state: "BuildState", options: "IndexOptions", stages, skipped: dict[str, int],
                   resumed_from: int, progress: bool) -> "Summary":
    """Finish every shard with the global statistics, then write the shard map (last)."""
    from lsr.ingest.indexing import BuildState, Summary, finish, unfinish

    shard_map = ShardMap.of_size(options.shards, uuid.uuid4().hex)  # each shard's lsr.json names the build it is of
    folders = shard_map.paths(out)
    with stages.time("statistics"):
        scale = global_scale(folders, state.shards, options.quantization)
        legs = [None] * len(folders)
        if options.bm25:
            with progress_bar("bm25 (every shard's texts)", state.docs, enabled=progress) as bar:
                legs = global_bm25_legs(folders, state.shards, bar.update, workers=options.threads)
    checksums = {}
    for shard, (name, folder) in enumerate(zip(shard_map.names, folders)):
        docs, postings, truncated = state.per_shard[shard]
        part_state = BuildState(state.settings, shards=state.shards, docs=docs, postings=postings, truncated=truncated,
                                corpus_hash=state.corpus_hash)
        sharding = {"shard": shard, "n_shards": shard_map.n_shards, "hash": HASH_NAME, "sparse_scale": scale,
                    "bm25_statistics": "global", "build": shard_map.build}
        if (folder / META_FILE).is_file():  # finished by a build stopped before its map was written
            unfinish(folder)
        summary = finish(folder, part_state, options, stages, skipped, resumed_from, progress, scale=scale,
                         bm25=legs[shard], extra_meta={"sharding": sharding})
        checksums[name] = summary.checksums
    write_shard_map(out, shard_map)  # last: the sharded collection is complete
    drop_build_state(out)
    return Summary(state.docs, skipped, state.postings, disk_size(out), stages.seconds, checksums, state.truncated,
                   resumed_from, encoded_with=options.recorded_encoding())
