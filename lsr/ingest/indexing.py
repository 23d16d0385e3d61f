"""The bulk indexing pipeline: read → encode in batches → checkpointed shards → build indexes.

Encoding is the expensive step, so its output is written in shards of ``checkpoint_every``
documents, each followed by a checkpoint (``.lsr-build.json``). Shard boundaries depend only on
document positions, so a run resumed after Ctrl-C or kill -9 encodes exactly the same batches
as an uninterrupted one and produces bit-identical files. The resumed run re-reads the corpus
prefix it already encoded and checks it against the checkpoint's running checksum, so two
different corpora are never mixed. Index building (cheap) runs from the shards afterwards.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from lsr.encode.models import document_length, lasting_name, model_content_key
from lsr.ingest.layout import (
    BUILD_STATE, FORMAT, META_FILE, MOVING, REPLACED, VOCAB_FILE, check_utf8_path, disk_size, drop_build_state,
    files_checksum, Rereadable, is_collection_dir, read_vector_shards, shard_name, write_shard,
)
from lsr.ingest.corpus import DEFAULT_FIELDS, CorpusHash, CorpusReader, DocChunk
from lsr.ingest.progress import progress_bar, quiet_logger, rows_total, update_total
from lsr.ingest.sharding import check_shard_count, shard_dir_name
from lsr.search.bm25_index import DESCRIPTION as BM25_DESCRIPTION
from lsr.search.bm25_index import BM25_DIR, build_bm25
from lsr.search.dense_index import MANIFEST as DENSE_MANIFEST
from lsr.search.dense_index import DenseIndex
from lsr.files import (WRITE_WAIT, CorruptFileError, check_record, exclusive_folder, file_record, fsync_dir,
                       read_sealed_json, sealed, write_json_atomic)
from lsr.sparse import SparseBatch

if TYPE_CHECKING:
    from lsr.ingest.ray_engine import RayOptions

log = logging.getLogger(__name__)


class ResumeRefused(ValueError):
    """--resume of a build whose source or settings changed: the command that continues it is no longer the one
    typed, so `lsr index` does not offer it again."""


@dataclass
class IndexOptions:
    """Everything that decides the collection's content (``threads`` and ``device`` only decide speed).

    ``dtype`` changes vectors slightly (bf16 keeps 8 bits); the collection's metadata records it.
    """

    model: str = "splade-tiny"
    dense_model: str | None = "minilm"
    bm25: bool = True  # build the BM25 leg (lsr.search.bm25_index) beside the sparse index
    fields: tuple[str, ...] = DEFAULT_FIELDS
    id_field: str = "_id"
    batch_size: int = 32
    max_length: int | None = None  # SPLADE document tokens; None: 256, or the model folder's max_seq_length if smaller
    limit: int | None = None
    on_error: str = "fail"
    checkpoint_every: int = 10_000
    hnsw_m: int | None = None
    quantization: str = "uint8"
    threads: int | None = None
    pre_encoded: bool = False  # SOURCE is a vectors file from `lsr encode --output`: only dense is encoded here
    device: str = "auto"
    dtype: str = "auto"
    shards: int = 1  # > 1: a sharded collection (lsr.ingest.sharded_build), documents routed by shard_of(id)
    # a vectors file's own device and dtype ({} where it does not say: files of older versions), set as it is opened
    pre_encoded_with: dict[str, str] | None = None
    # what the model folder held when it encoded the file (None where the file does not say), set as it is opened:
    # the collection records it, not what the folder holds here (a folder with no weights serves a pre-encoded
    # build, and its key would make every later search warn that the model changed)
    pre_encoded_content: str | None = None

    def __post_init__(self) -> None:
        if self.max_length is None:  # resolved here, so the collection and a resume record the length used
            self.max_length = document_length(self.model)
        self.model = lasting_name(self.model)  # the collection names it for every later search, from any folder
        self.dense_model = self.dense_model and lasting_name(self.dense_model)

    def check(self) -> None:
        check_shard_count(self.shards)
        if self.batch_size <= 0:
            raise ValueError(f"--batch-size must be positive, got {self.batch_size}")
        if self.max_length < 4:
            raise ValueError(f"--max-length must be at least 4, got {self.max_length}")
        if self.checkpoint_every <= 0:
            raise ValueError(f"--checkpoint-every must be positive, got {self.checkpoint_every}")
        if self.threads is not None and self.threads <= 0:
            raise ValueError(f"--threads must be positive, got {self.threads}")
        if self.hnsw_m is not None and not 4 <= self.hnsw_m <= 256:
            raise ValueError(f"--hnsw M must be in 4..256, got {self.hnsw_m}")

    def encoding(self) -> dict[str, str]:
        """The concrete device and dtype names ("auto" resolved on this machine): SPLADE's dtype, and with a dense
        model its own (``dense_dtype``: bf16 on a CPU with native bf16, where SPLADE keeps fp32)."""
        from lsr.encode.inputs import dtype_name, resolve_device, resolve_dtype

        device = resolve_device(self.device)
        out = {"device": str(device), "dtype": dtype_name(resolve_dtype(self.dtype, device))}
        if self.dense_model:
            out["dense_dtype"] = dtype_name(resolve_dtype(self.dtype, device, cpu_bf16=True))
        return out

    def recorded_encoding(self) -> dict[str, str]:
        """``encoding()`` as the collection records it: a pre-encoded build's SPLADE ran where its vectors file was
        made ("unknown" where the file does not say: an older version's), its dense model here (the summary had said
        this machine's "cpu: SPLADE fp32" of bf16 vectors)."""
        out = self.encoding()
        if self.pre_encoded:
            here = out.pop("device")
            out = {"device": "unknown", "dtype": "unknown", **out, **(self.pre_encoded_with or {})}
            if self.dense_model:
                out["dense_device"] = here
        return out

    def settings(self, source: Path) -> dict:
        """What a resumed run must agree on with the interrupted one.

        Not ``threads`` (speed only) and not ``on_error``: the resumed run re-reads the encoded prefix
        under its own rule, so switching fail → skip after a bad row continues cleanly, and skip → fail
        stops at a bad row in the prefix as it should.
        """
        out = asdict(self)
        # the vectors file's own device and dtype are under "precision"; its content key is read again at a resume
        for how in ("threads", "on_error", "device", "dtype", "pre_encoded_with", "pre_encoded_content"):
            out.pop(how)
        out["fields"] = list(self.fields)
        if self.shards == 1:  # unsharded settings stay as they were (``_changes`` reads a missing count as 1)
            out.pop("shards")
        # the precision the vectors are encoded in, not the device: another dtype (or "auto" on another device)
        # resumed a build in two precisions and recorded the second for all
        out["precision"] = {key: value for key, value in self.encoding().items() if key != "device"}
        out["source"] = str(source.resolve())
        # what a model folder holds (None for bundled and hub names): one retrained while the build was stopped gave
        # its resume the vectors of two models in one collection
        if not self.pre_encoded:
            out["model_content"] = model_content_key(self.model)
        if self.dense_model:
            out["dense_model_content"] = model_content_key(self.dense_model)
        return out


def describe_encoding(encoded: dict[str, str]) -> str:
    """"cpu: SPLADE fp32, dense bf16": what a collection's ``encoded_with`` says, for summaries and reports."""
    dense = f", dense {encoded['dense_dtype']}" if "dense_dtype" in encoded else ""
    dense += f" on {encoded['dense_device']}" if dense and "dense_device" in encoded else ""
    if encoded["device"] == "unknown":  # a vectors file of an older version
        return f"SPLADE as the vectors file did not record{dense}"
    return f"{encoded['device']}: SPLADE {encoded['dtype']}{dense}"


@dataclass
class Summary:
    """End-of-run report."""

    docs: int
    skipped: dict[str, int]
    postings: int
    size_bytes: int
    stage_seconds: dict[str, float]
    checksums: dict[str, Any]  # name -> checksum; a sharded build: shard name -> its checksums
    truncated: int = 0
    resumed_from: int = 0
    already_complete: bool = False
    encoded_with: dict[str, str] = field(default_factory=dict)  # IndexOptions.encoding() of the build

    @property
    def mean_terms(self) -> float:
        return self.postings / self.docs if self.docs else 0.0

    def format(self) -> str:
        lines = [
            f"docs            {self.docs:,}" + (f" (resumed after {self.resumed_from:,})" if self.resumed_from else ""),
            f"skipped rows    {sum(self.skipped.values()):,}"
            + ("" if not self.skipped else " (" + ", ".join(f"{k}: {v:,}" for k, v in sorted(self.skipped.items())) + ")"),
            f"truncated docs  {self.truncated:,} (longer than --max-length tokens)",
            f"postings        {self.postings:,}",
            f"mean terms/doc  {self.mean_terms:.1f}",
            f"size on disk    {self.size_bytes / 2**20:,.1f} MiB",
        ]
        if self.encoded_with:
            lines.append(f"encoded on      {describe_encoding(self.encoded_with)}")
        lines += [f"time {stage:<10} {seconds:8.1f} s" for stage, seconds in self.stage_seconds.items()]
        return "\n".join(lines)


@dataclass
class BuildState:
    """The checkpoint: how many shards are final and the corpus checksum after their documents."""

    settings: dict
    shards: int = 0
    docs: int = 0
    postings: int = 0
    truncated: int = 0
    corpus_hash: str = field(default_factory=lambda: CorpusHash().hexdigest)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    complete: bool = False  # set only when OUT already holds the finished collection
    per_shard: list[list[int]] | None = None  # sharded builds: [docs, postings, truncated] per shard
    ahead: dict[str, dict] = field(default_factory=dict)  # parts written beyond ``shards`` (engines that run parts
    # out of order): part -> {"counts": per-shard counts, "corpus_hash": the running checksum after that part,
    # "files": its files' records}
    parts: list[dict] = field(default_factory=list)  # the prefix's parts: {"counts", "corpus_hash" after it, "files":
    # crc32 records of its files (``part_records``)}, so a resume finds a part damaged since and encodes it again

    def save(self, out: Path) -> None:
        write_json_atomic(out / BUILD_STATE, asdict(self))

    def add_part(self, counts: list[list[int]], records: list[dict]) -> None:
        """Count the next part of the prefix: [docs, postings, truncated] per shard (one row when unsharded), with
        ``corpus_hash`` already the checksum after it, and keep its files' ``records``."""
        self.ahead.pop(str(self.shards), None)
        self.parts.append({"counts": counts, "corpus_hash": self.corpus_hash, "files": records})
        self.shards += 1
        self.docs += sum(row[0] for row in counts)
        self.postings += sum(row[1] for row in counts)
        self.truncated += sum(row[2] for row in counts)
        if len(counts) > 1:
            totals = self.per_shard or [[0, 0, 0] for _ in counts]
            self.per_shard = [[a + b for a, b in zip(total, row)] for total, row in zip(totals, counts)]

    def rewind(self, part: int) -> None:
        """Keep the prefix's first ``part`` parts only (and no part ahead of it), as if the build had stopped there."""
        kept = self.parts[:part]
        self.shards, self.docs, self.postings, self.truncated, self.per_shard = 0, 0, 0, 0, None
        self.corpus_hash, self.parts, self.ahead = CorpusHash().hexdigest, [], {}
        for entry in kept:
            self.corpus_hash = entry["corpus_hash"]
            self.add_part(entry["counts"], entry["files"])


def part_records(out: Path, part: int, n_shards: int) -> list[dict]:
    """crc32 records of one encoded part's files (each shard's, when sharded), taken as it is checkpointed: a resume
    checks them (``check_parts``), so a part damaged since is named, not built into the collection and sealed."""
    folders = [out] if n_shards == 1 else [out / shard_dir_name(s) for s in range(n_shards)]
    paths = [folder / shard_name(kind, part) for folder in folders for kind in ("vectors", "docs", "dense")]
    return [file_record(path, out) for path in paths if path.is_file()]


def check_parts(out: Path, state: BuildState) -> None:
    """Rewind the checkpoint to the first part whose files are no longer what was written (a byte flipped, a file cut
    short or gone since the build stopped), so the resume encodes it and those after it again; a damaged part ahead
    of the prefix is dropped. Resumed as it was, a damaged dense part ranked one document first for every query."""
    for part, entry in enumerate(state.parts):
        problem = _part_problem(out, entry)
        if problem is not None:
            log.warning("%s: part %d changed after its checkpoint (%s); encoding it and the %d after it again", out,
                        part, problem, len(state.parts) - part - 1)
            state.rewind(part)
            return
    for part, entry in list(state.ahead.items()):
        problem = _part_problem(out, entry)
        if problem is not None:
            log.warning("%s: part %s changed after its checkpoint (%s); encoding it again", out, part, problem)
            del state.ahead[part]


def _part_problem(out: Path, entry: dict) -> str | None:
    for record in entry.get("files", []):
        try:
            check_record(out, record)
        except CorruptFileError as exc:
            return str(exc)
    return None


def write_part(out: Path, part: int, block: DocChunk, sparse: SparseBatch, dense: np.ndarray | None,
               truncated: np.ndarray, n_shards: int) -> list[list[int]]:
    """Write one encoded part (into each shard's folder when sharded); returns [docs, postings, truncated] per shard."""
    if n_shards == 1:
        write_shard(out, part, block.ids, block.texts, sparse, dense)
        return [[len(block), sparse.nnz, int(truncated.sum())]]
    from lsr.ingest.sharded_build import route_part

    return route_part(out, part, block.ids, block.texts, sparse, dense, truncated, n_shards)


class StageTimer:
    """Accumulates wall time per stage (carried over from the checkpoint on resume)."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = dict(seconds)

    @contextmanager
    def time(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def prepare_output(out: Path, settings: dict, *, resume: bool, overwrite: bool) -> BuildState | None:
    """Decide what to do with an existing OUT. Returns the checkpoint to resume from, or None for a fresh start."""
    if (out / MOVING).is_dir():
        _move_back(out)
    if out.is_dir() and any(out.iterdir()):
        if not is_collection_dir(out) and not (out / REPLACED).is_dir():
            raise FileExistsError(f"{out} is not empty and is not an lsr collection; choose a new or empty folder")
        if overwrite:
            _set_aside(out)
        elif not resume and (out / BUILD_STATE).is_file():  # an interrupted build, not a finished collection
            raise FileExistsError(f"{out} holds an unfinished build; pass --resume to continue it or --overwrite to "
                                  "start over")
        elif not resume:
            raise FileExistsError(f"{out} already holds a collection; pass --resume to continue it or --overwrite to replace it")
        else:
            return _load_state(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    return None


def _load_state(out: Path, settings: dict) -> BuildState:
    import json

    finished = _finished_meta(out)
    if finished is not None and not (out / BUILD_STATE).is_file():
        meta = read_sealed_json(finished)
        changed = _changes(meta.get("settings", {}), settings)
        if changed:
            raise ValueError(f"{out} holds a finished collection built with {changed}; use --overwrite to replace it")
        return BuildState(settings, complete=True)
    if not (out / BUILD_STATE).is_file():  # only a collection --overwrite set aside: its new build never checkpointed
        raise ValueError(f"nothing to resume in {out}: its new build stopped before its first checkpoint; run it "
                         "with --overwrite instead")
    raw = json.loads((out / BUILD_STATE).read_text(encoding="utf-8"))
    changed = _changes(raw.get("settings", {}), settings)
    if changed:
        raise ResumeRefused(f"cannot resume {out}: it was started with {changed}; "
                         "rerun with the same options, or use --overwrite to start over")
    raw["settings"] = settings
    return BuildState(**raw)


def recorded_max_length(out: Path) -> int | None:
    """The document length the build in ``out`` (unfinished or finished) recorded, for a ``--resume`` that does not
    give one: a build begun before the default followed the model folder recorded 256, and its resume was refused."""
    import json

    try:
        path = out / BUILD_STATE if (out / BUILD_STATE).is_file() else _finished_meta(out)
        length = json.loads(path.read_text(encoding="utf-8"))["settings"]["max_length"] if path else None
    except (OSError, ValueError, KeyError, TypeError):  # no build there, or a damaged record: the default, checked
        return None
    return length if isinstance(length, int) else None


def _finished_meta(out: Path) -> Path | None:
    """The ``lsr.json`` that records a finished build's settings (a sharded one's first shard), or None."""
    from lsr.ingest.sharding import is_sharded, read_shard_map

    if (out / META_FILE).is_file():
        return out / META_FILE
    return read_shard_map(out).paths(out)[0] / META_FILE if is_sharded(out) else None


# A setting left out where it has this value (an unsharded build records no shard count).
_UNRECORDED = {"shards": 1}


def _changes(old: dict, new: dict) -> str:
    """``name=old (now new)`` for each setting that differs; settings the old run did not record are ignored, but
    for those left out at their usual value (a resume with --shards 2 of an unsharded build mixed both layouts)."""
    old, new = {**_UNRECORDED, **old}, {**_UNRECORDED, **new}
    return ", ".join(_change(key, old, new) for key in sorted(new) if key in old and old[key] != new[key]
                     and not (key.endswith("_content") and None in (old[key], new[key])))  # a hub id cached since


def _change(key: str, old: dict, new: dict) -> str:
    if key.endswith("_content"):  # a digest of a model folder says nothing to its reader
        return f"{new[key.removesuffix('_content')]} as that folder was then (its model files changed since)"
    return f"{key}={_plain(old.get(key))} (now {_plain(new[key])})"


def _plain(value: Any) -> str:
    """A setting as a user would write it (Python's reprs read "dense_model='minilm' (now None)")."""
    if value is None:
        return "none"
    if isinstance(value, dict):
        return " ".join(f"{key}:{_plain(item)}" for key, item in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return ",".join(map(_plain, value))
    return str(value)


def document_blocks(reader: CorpusReader, size: int) -> Iterator[DocChunk]:
    """Regroup the reader's chunks into blocks of exactly ``size`` documents (the last may be shorter)."""
    pending = DocChunk([], [], [])
    for chunk in reader:
        pending = pending.extend(chunk)
        while len(pending) >= size:
            yield pending.slice(0, size)
            pending = pending.slice(size)
    if len(pending):
        yield pending


def build_collection(
    source: str | Path,
    out: str | Path,
    options: IndexOptions,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
    ray: "RayOptions | None" = None,
) -> Summary:
    """Index ``source`` into the collection folder ``out``; see the module docstring.

    ``ray``: encode the parts on Ray (lsr.ingest.ray_engine) instead of in this process; same bytes.
    A run that fails before its first shard is checkpointed removes what it created, so the
    same command can simply be run again; later failures keep the shards for ``--resume``.
    """
    options.check()
    if ray is not None:
        from lsr.ingest.ray_engine import check_ray

        check_ray(ray, options)  # before OUT is touched: missing Ray or an unreachable cluster is one line
    if resume and overwrite:
        raise ValueError("pass either --resume or --overwrite, not both")
    source, out = Path(source).expanduser(), Path(out).expanduser()
    check_utf8_path(out.absolute())
    if out.is_symlink() and not out.exists():  # it failed as "OUT: File exists"
        raise ValueError(f"{out} is a link to {os.readlink(out)}, which does not exist; create that folder, or give "
                         "another COLLECTION")
    reader = _reader(source, options)
    if not options.pre_encoded:  # the fields the corpus was read by, as a resumed run and lsr.json record them
        options = replace(options, fields=tuple(reader.fields), id_field=reader.id_field)
    if overwrite and out.resolve() in source.resolve().parents:
        raise ValueError(f"the corpus {source} lies inside {out}, which --overwrite clears; move it out first")
    made = next((folder for folder in (*reversed(out.parents), out) if not folder.exists()), None)  # and made now
    # One build at a time per collection folder, at once; a whole collection's writer (a server's upsert) is waited
    # for, as writes wait for each other: an --overwrite under a server taking writes failed 4 times in 7.
    with exclusive_folder(out, wait=WRITE_WAIT if (out / META_FILE).is_file() else 0.0):
        return _build(reader, out, options, made, resume, overwrite, progress, on_shard, ray)


def _build(reader: CorpusReader, out: Path, options: IndexOptions, made: Path | None, resume: bool,
           overwrite: bool, progress: bool, on_shard: Callable[[int], None] | None, ray: "RayOptions | None") -> Summary:
    from lsr.encode.cpu_threads import set_threads

    settings = options.settings(reader.source)
    try:
        state = prepare_output(out, settings, resume=resume, overwrite=overwrite)
    except (Exception, KeyboardInterrupt):  # a Ctrl-C in or right after the set-aside left the collection aside,
        if overwrite and not (out / BUILD_STATE).is_file():
            if (out / MOVING).is_dir():
                _move_back(out)
            elif (out / REPLACED).is_dir():  # and no build
                _restore_aside(out)
        raise
    if state is not None and state.complete:
        return _summary_of_complete(out)
    if state is not None:
        check_parts(out, state)
    resumed_from = state.docs if state is not None else 0
    state = state or BuildState(settings)
    try:
        state.save(out)
        set_threads(options.threads)
        stages = StageTimer(state.stage_seconds)
        if ray is None:
            _encode_shards(reader, out, options, state, stages, resumed_from, progress, on_shard)
        else:
            from lsr.ingest.ray_engine import encode_on_ray

            encode_on_ray(reader, out, options, state, stages, progress, ray)
        if options.shards > 1:
            from lsr.ingest.sharded_build import finish_sharded

            summary = finish_sharded(out, state, options, stages, reader.stats.skipped, resumed_from, progress)
        else:
            summary = finish(out, state, options, stages, reader.stats.skipped, resumed_from, progress)
    except BaseException:
        if state.shards == 0 and not state.ahead:  # nothing worth resuming: leave OUT as this run found it
            if (out / REPLACED).is_dir():
                _restore_aside(out)
            else:
                _remove_made(out, made)
        raise
    if (out / REPLACED).exists():  # the new collection is whole: the one it replaces goes
        shutil.rmtree(out / REPLACED)
    return summary


def _reader(source: Path, options: IndexOptions) -> CorpusReader:
    if not options.pre_encoded:
        return CorpusReader(source, fields=options.fields, id_field=options.id_field, on_error=options.on_error,
                            limit=options.limit)
    from lsr.ingest.vector_file import VectorFileReader

    reader = VectorFileReader(source, on_error=options.on_error, limit=options.limit)
    if reader.model is not None and reader.model != options.model and (
            reader.model_content is None or reader.model_content != model_content_key(options.model)):  # not a copy
        raise ValueError(f"{source} was encoded with {reader.model!r}, not {options.model!r}; "
                         f"pass --model {reader.model} (or leave --model out)")
    if options.dense_model and not reader.has_text:
        raise ValueError(f"{source} has no text column to compute dense embeddings from; pass --dense none")
    if options.bm25 and not reader.has_text:  # a BM25 leg of empty texts found nothing, and auto fused it in
        raise ValueError(f"{source} has no text column to build the BM25 leg from; pass --bm25 none")
    options.pre_encoded_with = reader.encoded_with or {}  # the summary said this machine's "cpu: SPLADE fp32"
    options.pre_encoded_content = reader.model_content
    return reader


# --overwrite moves the collection it replaces into REPLACED, and deletes it once the new one is complete: a bad row,
# a misspelt --model or a Ctrl-C before the first checkpoint used to leave neither collection, and now restores it.
# Files move one by one, through MOVING: a kill between two moves left the old collection split between OUT and
# REPLACED, and the next --overwrite deleted OUT's part as a partial build. Whatever lies in MOVING belongs in OUT.


def _set_aside(out: Path) -> None:
    """Move OUT's collection into ``REPLACED``; a partial build an earlier --overwrite left beside one is dropped.
    Files move into ``MOVING``, which becomes ``REPLACED`` in one rename once all are there."""
    aside = out / REPLACED
    if aside.is_dir():  # that earlier run's own partial build is what lies beside it: the whole one is kept
        _remove_contents(out, keep_folder=True)
        return
    moving = out / MOVING
    moving.mkdir()
    for child in out.iterdir():
        if child.name not in (REPLACED, MOVING):
            os.rename(child, moving / child.name)
    fsync_dir(moving)
    os.rename(moving, aside)
    fsync_dir(out)


def _restore_aside(out: Path) -> None:
    """Put the collection ``_set_aside`` moved back, in place of what this run wrote: ``REPLACED`` becomes
    ``MOVING`` in one rename once this run's files are gone, and ``_move_back`` empties it into OUT."""
    _remove_contents(out, keep_folder=True)
    os.rename(out / REPLACED, out / MOVING)
    fsync_dir(out)
    _move_back(out)


def _move_back(out: Path) -> None:
    """Move everything in ``MOVING`` into OUT: it finishes a restore, or undoes a set-aside a kill cut short."""
    moving = out / MOVING
    for child in moving.iterdir():
        os.rename(child, out / child.name)
    moving.rmdir()
    fsync_dir(out)


def _remove_made(out: Path, made: Path | None) -> None:
    """OUT's contents, and OUT with the folders above it up to ``made`` where this build made them (a first build
    failing on its corpus's first row left the empty folders of /a/b/c/collection behind)."""
    _remove_contents(out, keep_folder=made is None)
    for folder in out.parents if made is not None else ():
        if not folder.is_relative_to(made):
            break
        try:
            folder.rmdir()
        except OSError:  # something else was put there meanwhile
            break


def _remove_contents(out: Path, keep_folder: bool) -> None:
    if not keep_folder:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():
        if child.name not in (REPLACED, MOVING):  # the collection --overwrite set aside stays until the new one is whole
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _encode_shards(reader: CorpusReader, out: Path, options: IndexOptions, state: BuildState, stages: StageTimer,
                   resumed_from: int, progress: bool, on_shard: Callable[[int], None] | None) -> None:
    """Encode the documents after the checkpoint into shards, checkpointing after each; verify the prefix before."""
    source = reader.source
    expected = reader.expected_rows()
    running = CorpusHash()
    shard = 0
    encoders = None
    blocks = document_blocks(reader, options.checkpoint_every)
    with progress_bar("encode", rows_total(expected, options.limit), initial=resumed_from, enabled=progress) as bar:
        def advance(docs: int) -> None:
            bar.update(docs)
            update_total(bar, reader, expected, options.limit)

        while True:
            with stages.time("read"):
                block = next(blocks, None)
            if block is None:
                break
            if shard < state.shards:  # already encoded: verify the prefix is the same corpus
                running.update(block.ids, block.texts)
                shard += 1
                if shard == state.shards and running.hexdigest != state.corpus_hash:
                    raise ResumeRefused(f"cannot resume {out}: the first {state.docs:,} documents of {source} differ from "
                                     "the ones already encoded (the source changed); use --overwrite to start over")
                continue
            if encoders is None:  # loaded only now, so a bad first row fails fast
                with stages.time("load"):
                    encoders = load_encoders(options)
            sparse, dense, truncated = encode_block(block, *encoders, options, stages, advance)
            with stages.time("write"):
                counts = write_part(out, shard, block, sparse, dense, truncated, options.shards)
                state.corpus_hash = running.update(block.ids, block.texts)
                state.add_part(counts, part_records(out, shard, options.shards))
            shard += 1
            state.stage_seconds = stages.seconds
            state.save(out)
            if on_shard is not None:
                on_shard(shard)
    if shard < state.shards:
        raise ResumeRefused(f"cannot resume {out}: {source} now has fewer documents than were already encoded; "
                         "use --overwrite to start over")
    if state.docs == 0:
        raise ValueError(f"{source} has no indexable documents"
                         + (f" ({reader.stats.n_skipped} bad rows skipped)" if reader.stats.n_skipped else ""))
    if blank := reader.stats.blank_warning(source, options.fields, "indexed"):
        log.warning("%s", blank)


def load_encoders(options: IndexOptions) -> tuple:
    """(SpladeEncoder, DenseEncoder or None): SPLADE documents of ``options.max_length`` tokens, dense ones of
    the dense model's own ``max_seq_length`` (so the vectors equal sentence-transformers'). A build encodes no
    query, so on a GPU the SPLADE encoder compiles and warms up no length past the documents'. A pre-encoded
    build gets the SPLADE model's terms (``lsr.encode.terms``) in place of its encoder where its folder allows."""
    from lsr.encode.splade import SpladeEncoder
    from lsr.encode.terms import model_terms

    how = options.encoding()
    sparse = model_terms(options.model) if options.pre_encoded else None
    if sparse is None:
        sparse = SpladeEncoder.from_pretrained(options.model, max_length=options.max_length,
                                               query_max_length=options.max_length, device=how["device"],
                                               dtype=how["dtype"])
    dense = None
    if options.dense_model:
        from lsr.encode.dense import DenseEncoder

        dense = DenseEncoder.from_pretrained(options.dense_model, device=how["device"], dtype=how["dense_dtype"])
    return sparse, dense


def encode_block(block: DocChunk, sparse_encoder, dense_encoder, options: IndexOptions, stages: StageTimer,
                  advance: Callable[[int], None]):
    """Encode one shard in sub-chunks (so progress moves); sub-chunk bounds depend only on positions and device.

    On CPU a sub-chunk is four batches (about a second here): enough for every single-threaded worker to
    take a length-sorted batch. A GPU gets 64 batches at a time, so its pipeline stays full.
    """
    encoding = dense_encoder if options.pre_encoded else sparse_encoder  # a pre-encoded build encodes dense only
    step = options.batch_size * (64 if encoding is not None and encoding.device.type == "cuda" else 4)
    sparse_parts, dense_parts, truncated = [], [], []
    for start in range(0, len(block), step):
        texts = block.texts[start : start + step]
        if options.pre_encoded:  # the model names the terms and must agree on how many there are
            sparse_parts.append(_named_terms(block.vectors[start : start + step], sparse_encoder))
            if block.truncated is not None:  # the file's own count: this build cut nothing
                truncated.append(np.asarray(block.truncated[start : start + step], bool))
        else:
            with stages.time("sparse"), quiet_logger("lsr.encode.splade"):  # truncation is counted for the summary
                batch, info = sparse_encoder.encode_documents(texts, batch_size=options.batch_size, return_info=True)
            sparse_parts.append(batch)
            truncated.append(np.asarray(info.truncated, bool))
        if dense_encoder is not None:
            with stages.time("dense"), quiet_logger("lsr.encode.dense"):  # cut at the model's own max_seq_length, as ST
                dense_parts.append(dense_encoder.encode_documents(texts, batch_size=options.batch_size))
        advance(len(texts))
    sparse = SparseBatch.concat(sparse_parts)
    flags = np.concatenate(truncated) if truncated else np.zeros(len(block), bool)  # per document, for routing
    return sparse, (np.concatenate(dense_parts) if dense_parts else None), flags


def _named_terms(vectors: SparseBatch, encoder) -> SparseBatch:
    if vectors.vocab_size != encoder.vocab_size:
        raise ValueError(f"the pre-encoded vectors have {vectors.vocab_size:,} terms but model {encoder.name!r} has "
                         f"{encoder.vocab_size:,}; pass the --model that encoded them")
    if vectors.vocab is not None and list(vectors.vocab) != list(encoder.vocab):  # the file's names were replaced
        term = next(i for i, (a, b) in enumerate(zip(vectors.vocab, encoder.vocab)) if a != b)
        raise ValueError(f"the pre-encoded vectors name term {term} {vectors.vocab[term]!r}, but model {encoder.name!r} "
                         f"names it {encoder.vocab[term]!r}; pass the --model that encoded them")
    return SparseBatch(vectors.indptr, vectors.indices, vectors.values, vectors.vocab_size, encoder.vocab)


def unfinish(out: Path) -> None:
    """Take back what ``finish`` wrote in ``out``, keeping the encoded parts: a shard an interrupted sharded build had
    finished (its map never written) is finished again, and its indexes built over the old ones took the next
    generation's file names, so the resumed build was not the same bytes as an uninterrupted one. The dense index
    loses its manifest only, as `lsr repair` does: its next save starts at the first generation's names again."""
    (out / META_FILE).unlink(missing_ok=True)  # first: stopped anywhere after this, the shard is an unfinished one
    shutil.rmtree(out / "sparse", ignore_errors=True)
    shutil.rmtree(out / BM25_DIR, ignore_errors=True)
    (out / "dense" / DENSE_MANIFEST).unlink(missing_ok=True)


def finish(out: Path, state: BuildState, options: IndexOptions, stages: StageTimer, skipped: dict[str, int],
           resumed_from: int, progress: bool, *, scale: float | None = None, bm25=None,
           extra_meta: dict | None = None) -> Summary:
    """Build the indexes from the encoded parts and write ``lsr.json`` last.

    A shard of a sharded collection passes the whole collection's quantization ``scale`` and a ``bm25`` leg
    scored with the whole collection's statistics, so its scores equal the unsharded collection's.
    """
    from lsr.index import InvertedIndex

    vector_files = [out / shard_name("vectors", s) for s in range(state.shards)]
    doc_files = [out / shard_name("docs", s) for s in range(state.shards)]
    embedding_files = [out / shard_name("dense", s) for s in range(state.shards)] if options.dense_model else []
    vocab_files = [out / VOCAB_FILE] if (out / VOCAB_FILE).is_file() else []
    # the build reads the shards twice (sizes, then impacts), so the bar counts two readings of every document
    with stages.time("index"), progress_bar("index (2 readings)", 2 * state.docs, enabled=progress) as bar:
        shards = Rereadable(lambda: read_vector_shards(out, state.shards), bar.update)
        sparse = InvertedIndex.build(out / "sparse", shards, quantization=options.quantization, overwrite=True,
                                     scale=scale)
    dense_checksum = None
    if options.dense_model:
        with stages.time("dense-index"), progress_bar("dense-index", state.docs, enabled=progress) as bar:
            index = None
            for s, (_, ids) in enumerate(read_vector_shards(out, state.shards)):
                vectors = np.load(out / shard_name("dense", s))
                if index is None:
                    index = DenseIndex.create(vectors.shape[1], options.hnsw_m)
                index.add(ids, vectors)
                bar.update(len(ids))
            index.save(out / "dense")
        dense_checksum = DenseIndex.checksum(out / "dense")
    bm25_files = []
    if options.bm25:
        with stages.time("bm25"), progress_bar("bm25", state.docs, enabled=progress and bm25 is None) as bar:
            if bm25 is not None:  # a shard's cut of the global leg (``sharded_build``)
                bm25_files = bm25.save(out / BM25_DIR)
            else:
                bm25_files = build_bm25(out, state.shards, bar.update, workers=options.threads)
    checksums = {
        "corpus": state.corpus_hash,
        "vectors": files_checksum(vector_files),
        "vocab": files_checksum(vocab_files) if vocab_files else None,
        "docs": files_checksum(doc_files),
        "sparse": sparse.checksum,
        "dense_embeddings": files_checksum(embedding_files) if options.dense_model else None,
        "dense": dense_checksum,
        "bm25": files_checksum(bm25_files) if bm25_files else None,
    }
    meta = {
        "format": FORMAT,
        "model": options.model,
        "dense_model": options.dense_model,
        # what a local model folder held (None for bundled names and hub ids): searches warn once it changes
        # a pre-encoded build: what encoded the file, as it says (none for older files), not the folder here,
        # which may lack the weights
        "model_content": options.pre_encoded_content if options.pre_encoded else model_content_key(options.model),
        "dense_model_content": options.dense_model and model_content_key(options.dense_model),
        "bm25": BM25_DESCRIPTION if options.bm25 else None,
        "max_length": options.max_length,
        "fields": list(options.fields),
        "vocab": VOCAB_FILE if vocab_files else None,
        "n_docs": state.docs,
        "postings": state.postings,
        "truncated": state.truncated,
        "shards": state.shards,
        "corpus_checksum": state.corpus_hash,
        "checksums": checksums,
        "files": [file_record(path, out) for path in vector_files + doc_files + embedding_files + vocab_files + bm25_files],
        "settings": state.settings,
        "skipped": skipped,
        "stage_seconds": {k: round(v, 3) for k, v in stages.seconds.items()},
        "encoded_with": options.recorded_encoding(),
        "created_with": f"lsr {_version()}",
        "build_id": uuid.uuid4().hex,  # sets this build's seal apart from an identical one's (index_version)
        **(extra_meta or {}),
    }
    write_json_atomic(out / META_FILE, sealed(meta))  # last: its presence means "complete"
    drop_build_state(out)
    return Summary(state.docs, skipped, state.postings, disk_size(out), stages.seconds, checksums, state.truncated,
                   resumed_from, encoded_with=meta["encoded_with"])


def _summary_of_complete(out: Path) -> Summary:
    from lsr.ingest.sharding import is_sharded, read_shard_map

    if not is_sharded(out):
        meta = read_sealed_json(out / META_FILE)
        return Summary(meta["n_docs"], meta.get("skipped", {}), meta["postings"], disk_size(out),
                       meta.get("stage_seconds", {}), meta["checksums"], meta.get("truncated", 0), already_complete=True,
                       encoded_with=meta.get("encoded_with", {}))
    shard_map = read_shard_map(out)
    metas = [read_sealed_json(path / META_FILE) for path in shard_map.paths(out)]
    return Summary(sum(m["n_docs"] for m in metas), metas[0].get("skipped", {}), sum(m["postings"] for m in metas),
                   disk_size(out), metas[-1].get("stage_seconds", {}),
                   {name: m["checksums"] for name, m in zip(shard_map.names, metas)},
                   sum(m.get("truncated", 0) for m in metas), already_complete=True,
                   encoded_with=metas[0].get("encoded_with", {}))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lsr")
    except PackageNotFoundError:
        return "0+unknown"
