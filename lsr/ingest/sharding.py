"""Sharded collections: which shard owns a document, and the map that names the shards.

A sharded collection is a folder holding ``lsr-shards.json`` (written last, sealed with its crc32)
and one complete collection per shard, ``shard-000`` ... ``shard-NNN``. Documents go to shards by
a stable hash of their id, so the indexer, the coordinator's Upsert/Delete routing and any later
tool agree on the owner of an id without asking anyone.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from lsr.files import CorruptFileError, read_sealed_json, sealed, write_json_atomic

SHARDS_FILE = "lsr-shards.json"
SHARDS_FORMAT = 1
HASH_NAME = "blake2b-64"


def shard_of(doc_id: str, n_shards: int) -> int:
    """The shard that owns ``doc_id``: the first 8 bytes of its blake2b digest, modulo ``n_shards``.

    Stable across processes, machines and Python versions (unlike ``hash()``), and uniform.
    """
    if n_shards <= 0:
        raise ValueError(f"the number of shards must be positive, got {n_shards}")
    digest = hashlib.blake2b(str(doc_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


def shard_dir_name(shard: int) -> str:
    return f"shard-{shard:03d}"


SHARD_DIR_PATTERN = r"shard-\d{3}"  # the names shard_dir_name gives


@dataclass(frozen=True)
class ShardMap:
    """The shards of a sharded collection, in shard order; ``names[i]`` owns ids with ``shard_of(id, n) == i``.
    ``build``: the id its build gave every shard (``sharding.build`` in their lsr.json); None in maps written before."""

    names: tuple[str, ...]
    build: str | None = None

    @property
    def n_shards(self) -> int:
        return len(self.names)

    def owner(self, doc_id: str) -> int:
        return shard_of(doc_id, self.n_shards)

    def positions_by_owner(self, doc_ids: Sequence[str]) -> dict[int, list[int]]:
        """shard → the positions in ``doc_ids`` of the ids it owns, in shard order."""
        groups: dict[int, list[int]] = {}
        for position, doc_id in enumerate(doc_ids):
            groups.setdefault(self.owner(str(doc_id)), []).append(position)
        return dict(sorted(groups.items()))

    def paths(self, root: Path) -> list[Path]:
        return [Path(root) / name for name in self.names]

    @classmethod
    def of_size(cls, n_shards: int, build: str | None = None) -> "ShardMap":
        check_shard_count(n_shards)
        return cls(tuple(shard_dir_name(i) for i in range(n_shards)), build)


MAX_SHARDS = 256  # each shard is a whole collection (its files, and a server process when served): 1,000 shards of 20
# documents took 46 s and 795 MB, and a typo of 100,000 would have filled a disk


def check_shard_count(n_shards: int) -> None:
    """``--shards``: 1 to ``MAX_SHARDS``."""
    if not 1 <= n_shards <= MAX_SHARDS:
        raise ValueError(f"--shards must be between 1 and {MAX_SHARDS}, got {n_shards} (each shard is a whole "
                         "collection, served by a process of its own)")


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` holds a sharded collection; a folder this user may not read is named as such (it was named
    by a file it lacks, lsr-shards.json)."""
    try:
        return (Path(path) / SHARDS_FILE).is_file()
    except PermissionError:
        raise PermissionError(f"cannot read the folder {path}: permission denied (made under another user's umask?)") from None


def missing_shard(folder: Path) -> str:
    """A shard whose folder is gone: nothing in the other shards can rebuild its documents (unless a build of the
    collection is under way, or was stopped, and writes it)."""
    from lsr.ingest.layout import BUILD_STATE, REPLACED

    if (folder.parent / BUILD_STATE).is_file() or (folder.parent / REPLACED).is_dir():
        return (f"the shard's folder {folder} is missing: the collection is being indexed (or its indexing was "
                f"stopped: finish it with `lsr index SOURCE {folder.parent} --resume`)")
    return (f"the shard's folder {folder} is missing; its documents are nowhere else: restore the folder from a "
            f"backup, or index the corpus again (`{reindex_command(folder)}`)")


def refuse_shard_folder(path: Path, verb: str) -> None:
    """ValueError when ``path`` is one shard of a sharded collection: documents written or built there sit in a shard
    that may not own them, where a delete through the collection missed them and `lsr verify` said "intact"."""
    from lsr.ingest.layout import BUILD_STATE

    path = Path(path).expanduser().resolve()  # a link to a shard folder is that shard
    if (path.parent / BUILD_STATE).is_file() and re.fullmatch(SHARD_DIR_PATTERN, path.name):
        # a shard finished before its build stopped: writes there were folded in by the resume, into a shard that
        # may not own them (searched, but out of reach of `lsr doc` and deletes)
        raise ValueError(f"{path} is a shard of {path.parent}, whose sharded build was stopped before it finished: "
                         f"finish it with `lsr index SOURCE {path.parent} --resume`, then {verb} the collection itself")
    if not is_sharded(path.parent):
        return
    try:
        names = read_shard_map(path.parent).names
    except (OSError, ValueError):  # a damaged map: what reads the collection says so
        return
    if path.name in names:
        raise ValueError(f"{path} is a shard of the sharded collection {path.parent}; {verb} the collection itself, "
                         "which sends each document to the shard that owns it")


def reindex_command(path: Path) -> str:
    """The `lsr index` that rebuilds ``path`` from its corpus: for a shard, its whole sharded collection (hints said
    `lsr index SOURCE col/shard-001 --overwrite`, which put every document of the corpus in that one shard)."""
    path = Path(path)
    if not is_sharded(path.parent):
        return f"lsr index SOURCE {path} --overwrite"
    try:
        shards = str(read_shard_map(path.parent).n_shards)
    except (OSError, ValueError):  # a damaged map: the count is the one its build was given
        shards = "N"
    return f"lsr index SOURCE {path.parent} --shards {shards} --overwrite"


def read_shard_map(path: Path) -> ShardMap:
    """The map of a sharded collection; a damaged file is a CorruptFileError naming it and what to do."""
    try:
        data = read_sealed_json(Path(path) / SHARDS_FILE)
    except CorruptFileError as exc:  # it was the whole message: no next step
        raise CorruptFileError(f"{exc}; it names the shards: restore it from a backup (the shards are whole) or index "
                               "the corpus again") from None
    if data.get("format") != SHARDS_FORMAT or data.get("hash") != HASH_NAME:
        raise ValueError(f"{Path(path) / SHARDS_FILE}: unknown sharding format {data.get('format')!r} / "
                         f"hash {data.get('hash')!r}; re-index with `lsr index --shards N --overwrite`")
    if not isinstance(data.get("shards"), list) or not data["shards"]:  # searches said "exceptions must derive from
        raise CorruptFileError(f"{Path(path) / SHARDS_FILE} names no shards; restore it from a backup (the shards "
                               "are whole) or index the corpus again")  # BaseException"
    return ShardMap(tuple(data["shards"]), data.get("build"))


def check_shard_place(path: Path, meta: dict) -> None:
    """CorruptFileError unless the folder at ``path``, when its sharded collection's map names it, holds the shard
    the map puts there: of as many shards, and of the same build. Swapped shard folders, a map of another build, an
    unsharded collection or another build's shard in a shard's place were searched as if whole (their documents
    silently missing, deletes of them "not in the collection", upserts duplicating them) and `lsr verify` said
    "intact"; `lsr repair` then wrote each folder another's BM25 leg."""
    folder = Path(path).expanduser().resolve()
    try:
        shard_map = read_shard_map(folder.parent) if is_sharded(folder.parent) else None
    except (OSError, ValueError):  # a damaged map: what reads the collection says so
        return
    if shard_map is None or folder.name not in shard_map.names:
        return  # a shard copied out on its own is a collection of its documents
    position, sharding = shard_map.names.index(folder.name), meta.get("sharding") or {}
    where = f"{folder} is shard {position} of {shard_map.n_shards} in {folder.parent / SHARDS_FILE}, but"
    fix = (f"put the shard folders back as their lsr.json says, or restore {folder.name} from a backup (or index the "
           f"corpus again: `{reindex_command(folder)}`)")
    if not sharding:
        raise CorruptFileError(f"{where} holds an unsharded collection; {fix}")
    if (sharding.get("shard"), sharding.get("n_shards")) != (position, shard_map.n_shards):
        raise CorruptFileError(f"{where} its lsr.json says shard {sharding.get('shard')} of {sharding.get('n_shards')} "
                               f"(folders swapped, or the map replaced?); {fix}")
    if shard_map.build is not None and sharding.get("build") != shard_map.build:
        raise CorruptFileError(f"{where} it holds a shard of another build of the collection; {fix}")


def write_shard_map(path: Path, shard_map: ShardMap) -> None:
    """Write the map last, once every shard is complete: its presence means the sharded collection is."""
    write_json_atomic(Path(path) / SHARDS_FILE,
                      sealed({"format": SHARDS_FORMAT, "hash": HASH_NAME, "shards": list(shard_map.names),
                              "build": shard_map.build}))


def global_doc_freqs(parts: Iterable[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    """(document frequency per term, number of documents) summed over the shards' ``(doc_freqs, num_docs)``.

    Shards partition the documents, so the sums equal the unsharded index's ``doc_freqs()`` and
    ``num_docs`` (live documents, so upserts and deletes count too): the inference-free query side's IDF
    (``idf_from_doc_freqs``) of a sharded collection is computed from them rather than stored.
    """
    parts = list(parts)
    return np.sum([p[0] for p in parts], axis=0).astype(np.int64), sum(int(p[1]) for p in parts)
