"""On-disk layout and crash safety: durable file writes, checksums, the manifest, mmap loading.

An index directory holds immutable data files and ``manifest.json``, the single source of truth.
A commit writes new files under fresh names (temp file, fsync, rename, fsync of the directory),
then replaces the manifest the same way, and only then deletes files the new manifest no longer
names. A crash at any point leaves the previous manifest and every file it names intact.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import re
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lsr.files import (NUMPY_LOADS, CorruptFileError, atomic_write, canonical_json, crc32_file, each_problem,
                       file_record, fsync_dir, parquet_ids)

FORMAT = "lsr-inverted-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = "LOCK"
_HEAD_BYTES = 1 << 16
_FULL_CHECK_ON_OPEN = 1 << 20
# out of file handles or memory, or no permission: the machine, not the file (the CLI exits 1 on a bare OSError)
MACHINE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EACCES, errno.EPERM})
_DATA_FILE = re.compile(r"^(s\d+(-\d+)?\..+|vocab\..+|.+\.tmp)$")  # s000012-1: a write's segment of another scale


class CorruptIndexError(CorruptFileError):
    """A file of the index is missing, truncated or does not match its checksum."""


def _durable_write(path: Path, write) -> dict:
    """Write via ``write(file)`` to a temp name, fsync, rename into place; return the file record."""
    atomic_write(path, write)
    return {**file_record(path), "head_crc32": crc32_file(path, _HEAD_BYTES)}


def write_array(directory: Path, name: str, array: np.ndarray) -> dict:
    return _durable_write(directory / f"{name}.npy", lambda f: np.save(f, np.ascontiguousarray(array)))


def write_ids(directory: Path, name: str, ids: list[str]) -> dict:
    table = pa.table({"id": pa.array(ids, pa.string())})
    return _durable_write(directory / f"{name}.parquet", lambda f: pq.write_table(table, f, compression="zstd"))


def write_json(directory: Path, name: str, obj) -> dict:
    data = json.dumps(obj).encode()
    return _durable_write(directory / name, lambda f: f.write(data))


def check_file(directory: Path, record: dict, full: bool = False) -> Path:
    """Cheap check (exists, size, checksum of the head; whole file when small) or a full one."""
    path = directory / record["file"]
    if not path.is_file():
        raise CorruptIndexError(f"index file {path} is missing; restore the index or rebuild it")
    size = path.stat().st_size
    if size != record["bytes"]:
        raise CorruptIndexError(
            f"index file {path} has {size} bytes, the manifest says {record['bytes']} (truncated or overwritten)")
    if full or size <= _FULL_CHECK_ON_OPEN:
        if crc32_file(path) != record["crc32"]:
            raise CorruptIndexError(f"index file {path} fails its crc32 checksum (corrupted)")
    elif crc32_file(path, _HEAD_BYTES) != record["head_crc32"]:
        raise CorruptIndexError(f"index file {path} fails its header checksum (corrupted)")
    return path


def load_array(directory: Path, record: dict, dtype: np.dtype, length: int) -> np.ndarray:
    path = check_file(directory, record)
    try:
        with NUMPY_LOADS:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        if getattr(exc, "errno", None) in MACHINE_ERRNOS:  # the file may be whole: "corrupted, lsr repair" misled
            raise
        raise CorruptIndexError(f"index file {path} is not a readable .npy array: {exc}") from exc
    if array.dtype != dtype or array.shape != (length,):
        raise CorruptIndexError(
            f"index file {path} holds {array.dtype}{list(array.shape)}, expected {dtype}[{length}]")
    # A plain ndarray view of the same mapping: numba types a memmap subclass on a slow path,
    # tens of microseconds per argument on every kernel call.
    return np.asarray(array)


def load_ids(directory: Path, record: dict, length: int) -> np.ndarray:
    path = check_file(directory, record)
    try:
        ids = parquet_ids(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise CorruptIndexError(f"index file {path} is not a readable Parquet id table: {exc}") from exc
    if len(ids) != length:
        raise CorruptIndexError(f"index file {path} holds {len(ids)} ids, expected {length}")
    return np.array(ids, dtype=object)


def load_json(directory: Path, record: dict):
    path = check_file(directory, record)
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:
        raise CorruptIndexError(f"index file {path} is not valid JSON: {exc}") from exc


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST
    if not path.is_file():
        if (directory / "sparse" / MANIFEST).is_file():  # a collection `lsr index` wrote: "rebuild it" misled
            raise FileNotFoundError(f"{directory} is a collection folder, not an inverted index: open it with "
                                    f"lsr.Searcher.open, or its inverted index at {directory / 'sparse'}")
        raise FileNotFoundError(f"no index at {directory}: {MANIFEST} is missing (in a collection, rebuild it with "
                                f"`lsr repair COLLECTION`; elsewhere with InvertedIndex.build)")
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError as exc:
        raise CorruptIndexError(f"index file {path} is not valid JSON: {exc}") from exc
    body = {k: v for k, v in manifest.items() if k != "manifest_crc32"}
    if manifest.get("manifest_crc32") != zlib.crc32(canonical_json(body)):
        raise CorruptIndexError(f"index file {path} fails its checksum (corrupted)")
    version = manifest.get("format_version")
    if manifest.get("format") == FORMAT and isinstance(version, int) and version > FORMAT_VERSION:
        # not damage: a repair would rewrite it in the older format
        raise ValueError(f"index file {path} was written by a newer lsr (format v{version}; this lsr reads "
                         f"v{FORMAT_VERSION}): upgrade lsr to open it")
    if manifest.get("format") != FORMAT or version != FORMAT_VERSION:
        raise CorruptIndexError(
            f"index file {path} has format {manifest.get('format')!r} v{manifest.get('format_version')}, "
            f"this code reads {FORMAT!r} v{FORMAT_VERSION}")
    return manifest


def commit_manifest(directory: Path, manifest: dict) -> None:
    """The commit point: the renamed manifest makes the new files the index. Then drop garbage."""
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    body["manifest_crc32"] = zlib.crc32(canonical_json(body))
    fsync_dir(directory)  # the data files' renames are durable before the manifest names them
    _durable_write(directory / MANIFEST, lambda f: f.write(json.dumps(body, indent=1).encode()))
    fsync_dir(directory)
    remove_unreferenced(directory, body)


def referenced_files(manifest: dict) -> set[str]:
    names = set()
    if manifest.get("vocab"):
        names.add(manifest["vocab"]["file"])
    for seg in manifest["segments"]:
        names.update(record["file"] for record in seg["files"].values())
    return names


def file_problems(directory: Path, manifest: dict) -> list[str]:
    """Full check of every file the manifest names: one message per missing or damaged file."""
    records = ([manifest["vocab"]] if manifest.get("vocab") else []) + [
        record for seg in manifest["segments"] for record in seg["files"].values()]
    return each_problem(sorted(records, key=lambda r: r["file"]),
                        lambda record: check_file(directory, record, full=True), CorruptIndexError)


def remove_unreferenced(directory: Path, manifest: dict) -> None:
    """Delete data files of superseded commits and leftovers of interrupted ones."""
    keep = referenced_files(manifest)
    for path in directory.iterdir():
        if _DATA_FILE.match(path.name) and path.name not in keep:
            path.unlink(missing_ok=True)


def check_build_target(directory: Path, overwrite: bool) -> None:
    """A build may use a new or empty folder, or one holding only index files; an index there only if ``overwrite``."""
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a folder; choose another path for the index")
    if not directory.is_dir():
        return
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in (MANIFEST, LOCK) and not _DATA_FILE.match(p.name))
    if foreign:
        raise FileExistsError(f"{directory} holds files that are not part of an index ({', '.join(foreign[:3])}); "
                              "choose a new or empty folder")
    if (directory / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{directory} already holds an index; pass overwrite=True to replace it")


def content_checksum(manifest: dict) -> str:
    """Digest of what the index holds (file checksums and counts), free of names and versions."""
    segments = [
        [seg["n_docs"], seg["nnz"], seg["scale"], sorted((role, rec["crc32"], rec["bytes"]) for role, rec in seg["files"].items())]
        for seg in manifest["segments"]
    ]
    vocab = manifest["vocab"]["crc32"] if manifest.get("vocab") else None
    body = [manifest["format_version"], manifest["vocab_size"], manifest["quantization"], vocab, segments]
    return hashlib.sha256(canonical_json(body)).hexdigest()


@contextmanager
def writer_lock(directory: Path) -> Iterator[None]:
    """Exclusive across processes: one writer per index directory at a time."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / LOCK).is_symlink() or (directory / LOCK).exists() and not (directory / LOCK).is_file():
        # a folder or a link there failed every write, and every open that replays a journal, with a bare errno
        raise CorruptIndexError(f"index file {directory / LOCK} is not a plain file; remove it (lsr makes it anew)")
    with open(directory / LOCK, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
