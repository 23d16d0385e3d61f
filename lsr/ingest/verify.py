"""``lsr verify``: check every file of a collection and that its stores agree, without changing anything.

Each problem names the file (or the stores) concerned. Notes are states that are not damage:
a store some journal records behind (the dense index between its saves, a store after a crash)
is caught up at the next open, and a cut-off journal tail is a write that was never acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsr.files import CorruptFileError, FolderBusyError, exclusive_folder
from lsr.ingest.collection import WRITE_WAIT, agreement_problems, apply_record, overlay_of
from lsr.ingest.docstore import DocStore
from lsr.ingest.journal import JOURNAL_FILE, scan
from lsr.ingest.layout import build_file_problems, read_meta, read_search_defaults
from lsr.ingest.written_parts import WrittenParts
from lsr.search.bm25_index import BM25_DIR
from lsr.search.bm25_leg_file import LEG_FILE, read_leg_file
from lsr.search.dense_index import DenseIndex


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # what was checked, for the summary


def verify_collection(path: Path) -> Report:
    """Check the collection without its lock, so a server's writes go on meanwhile. A check beside another process's
    write can find a file that write just replaced (a merged segment, a folded journal): problems are checked again
    holding the folder's lock, once the write is done, and only those that hold are reported."""
    report = _verify(path)
    if report.problems and path.is_dir():
        try:
            with exclusive_folder(path, wait=WRITE_WAIT):
                return _verify(path)
        except FolderBusyError:
            report.notes.append(f"another process held {path} for {WRITE_WAIT:.0f} s, so these problems were not checked "
                                "again: a write under way can make a whole collection look damaged; run lsr verify again")
    return report


def _verify(path: Path) -> Report:
    from lsr.index import InvertedIndex
    from lsr.index import storage

    report = Report()
    try:
        meta = read_meta(path)
    except CorruptFileError as exc:
        report.problems.append(str(exc))
        return report
    report.problems += build_file_problems(path, meta)
    report.checked.append(f"{len(meta['files'])} build files")
    try:
        if read_search_defaults(path) is not None:
            report.checked.append("tuned search defaults")
    except CorruptFileError as exc:
        report.problems.append(f"{exc}; run `lsr tune` again to rewrite it")

    seqs: dict[str, int] = {}
    sparse = None
    try:
        manifest = storage.read_manifest(path / "sparse")
        sparse_problems = storage.file_problems(path / "sparse", manifest)
        report.problems += sparse_problems
        seqs["sparse index"] = int(manifest.get("journal_seq", 0))
        if not sparse_problems:  # opening would name the same damaged file again
            sparse = InvertedIndex.open(path / "sparse")
    except (CorruptFileError, FileNotFoundError) as exc:
        report.problems.append(str(exc))
    report.checked.append("sparse index")
    dense = None
    if meta.get("dense_model"):
        dense_problems = DenseIndex.file_problems(path / "dense")
        report.problems += dense_problems
        if not dense_problems:
            try:  # a server's background save can replace its files between the check and the open
                dense = DenseIndex.open(path / "dense")
                seqs["dense index"] = dense.journal_seq
            except (CorruptFileError, FileNotFoundError) as exc:
                report.problems.append(str(exc))
        report.checked.append("dense index")

    if meta.get("bm25"):
        report.checked.append("BM25 index (its files among the build files)")  # no line named it: was it read?
        try:
            if read_leg_file(path / BM25_DIR / LEG_FILE) is not None:
                report.checked.append("saved BM25 leg")
        except CorruptFileError as exc:
            report.problems.append(f"{exc}; opens rebuild the leg from the journal meanwhile, `lsr repair` saves it anew")

    parts = None
    try:
        parts = WrittenParts.open(path)
        report.checked.append(f"{len(parts.parts)} written part{'' if len(parts.parts) == 1 else 's'}")
    except (CorruptFileError, OSError) as exc:
        report.problems.append(str(exc))
    folded = parts.upto if parts is not None else 0
    compared = parts is not None  # with the parts unreadable, where the journal should start is unknown: a "journal
    # truncated" problem, with `--salvage` for its fix, was then reported beside the parts' own
    try:
        journal = scan(path / JOURNAL_FILE)
    except CorruptFileError as exc:
        report.problems.append(str(exc))
        return report
    records = [record for record in journal.records if record.seq > folded]
    last = max(journal.records[-1].seq if journal.records else 0, folded)
    applied = max(seqs.values(), default=0)
    if journal.problem is not None:
        if compared and last < applied or len(seqs) < 1 + bool(meta.get("dense_model")):
            report.problems.append(f"{path / JOURNAL_FILE}: {journal.problem} (corrupted; `lsr repair --salvage` "
                                   "keeps the whole records around the damage)")
        else:
            report.notes.append(f"{path / JOURNAL_FILE}: {journal.problem}: a write cut off by a crash, never "
                                "acknowledged; the next open drops it")
    elif compared and last < applied:
        report.problems.append(f"{path / JOURNAL_FILE} ends at record {last}, but the stores hold record {applied} "
                               "(truncated or replaced: restore it from a backup, or `lsr repair --salvage` loses the "
                               "writes after it)")
    report.checked.append(f"journal ({len(records)} records)")
    for name, seq in seqs.items():
        if seq < last:
            writes = " into its folder, which must take writes" if name == "sparse index" else ""
            report.notes.append(f"the {name} is {last - seq} journal records behind; the next open replays them{writes}")

    if not report.problems and sparse is not None:
        behind = dense is not None and dense.journal_seq < folded
        sparse_ids = _replayed([*parts.records(), *records] if behind else records, sparse, dense)
        if dense is not None and dense.kind == "hnsw" and dense.dead_rows > len(dense):
            report.notes.append(f"the HNSW index holds {dense.dead_rows:,} rows of replaced or deleted documents beside "
                                f"{len(dense):,} live ones, so its searches walk {dense.dead_rows / max(len(dense), 1) + 1:.1f}× "
                                f"the rows for the same recall; `lsr repair {path}` rebuilds it without them")
        try:
            docs = DocStore(path / "docs", overlay_of(records), parts).ids()
        except CorruptFileError as exc:
            report.problems.append(str(exc))
        else:
            report.problems += agreement_problems(docs, sparse_ids, None if dense is None else set(dense.ids()))
            report.checked.append(f"{len(docs):,} ids agree across the stores")
            report.problems += _misplaced(path, meta.get("sharding"), docs)
    return report


def _misplaced(path: Path, sharding: dict | None, ids) -> list[str]:
    """A shard's documents whose ids hash to another shard (written into the shard folder itself, by hand or by an
    lsr that let it): a search found them, but a delete or upsert through the collection went to their owner."""
    from lsr.ingest.sharding import reindex_command, shard_of

    if not sharding:
        return []
    foreign = sorted(doc_id for doc_id in ids if shard_of(doc_id, sharding["n_shards"]) != sharding["shard"])
    if not foreign:
        return []
    return [f"{path} holds {len(foreign):,} document(s) other shards own ({', '.join(map(repr, foreign[:3]))}"
            f"{', ...' if len(foreign) > 3 else ''}): deletes and upserts through the collection miss them; restore "
            f"the shard from a backup, or index the corpus again (`{reindex_command(path)}`)"]


def _replayed(records: list, sparse: Any, dense: Any) -> set[str]:
    """The sparse index's ids once the records it lacks are replayed (after a crash between stores), found without
    writing into its folder as an open would; the dense index takes the records it lacks in memory, as an open does.
    The stores' agreement was left unchecked while the sparse index lagged, the usual state after a kill -9."""
    ids = set(sparse.doc_ids())
    dense_from = dense.journal_seq if dense is not None else 0
    for record in records:
        if dense is not None and record.lacked_by(dense_from):
            apply_record(record, None, dense)
        if record.lacked_by(sparse.journal_seq):
            (ids.update if record.op == "upsert" else ids.difference_update)(record.ids)
    return ids
