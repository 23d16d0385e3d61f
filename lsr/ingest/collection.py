"""An opened collection: one published version of every store, and atomic writes across them.

Writes go to the journal first (fsynced), then to the sparse index (committed with the journal seq it holds),
the dense index (in memory) and the doc overlay and BM25 leg (in memory too); only then is the new version published.
The dense index and the BM25 leg are saved with their seq every ``save_rows`` documents written, in the background,
and at ``close``. So readers never see a half-applied write, and what a store lacks after a crash, or what was
written since the last save, the next open replays from the journal. After a save, a journal that holds many
documents or records is folded into the written parts (``journal_fold``): Parquet the doc store reads texts from
by row group, so an open decodes, and memory holds, only the writes since the last fold.

Several processes may open one collection (two servers, a script beside a server) and write it: each write,
and each open (whose replay writes), holds the folder's lock, and a process that finds the collection
written by another since it last looked first takes up what the other wrote: the journal records past its
own, applied to its in-memory stores, and the sparse index's new commit (a full reopen only when the journal
is not simply longer). An opened collection also looks every ``LOOK_INTERVAL`` seconds, in a background thread,
so a server that only reads sees another process's writes within about a second of them, however long it has had no
search, and no search waits for them to be taken up.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import threading
import time
import weakref
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from lsr.files import (WRITE_WAIT, CorruptFileError, FolderBusyError, FolderHold, MachineStateError, canonical_json,
                       exclusive_folder, reset_in_forked_child)
from lsr.ingest.docstore import DocStore
from lsr.ingest.journal import JOURNAL_FILE, Journal, Record, recover
from lsr.ingest.journal_fold import fold, fold_due, remove_leftover
from lsr.ingest.layout import META_FILE, build_file_problems, read_meta, remove_swap_leftovers, usable_search_defaults
from lsr.ingest.sharding import reindex_command
from lsr.ingest.written_parts import WrittenParts
from lsr.search.bm25_index import BM25_DIR, STATS_FILE, Bm25Index
from lsr.search.bm25_leg import Bm25Leg
from lsr.search.bm25_leg_file import load_leg, save_leg
from lsr.search.dense_index import DenseIndex, DenseSnapshot
from lsr.sparse import SparseBatch

log = logging.getLogger(__name__)
LOOK_INTERVAL = 1.0  # seconds between a reader's looks for another process's writes (two stat calls and a read)


def save_rows(rows: int) -> int:
    """Documents written between saves of the dense index and the BM25 leg, for a dense index of ``rows`` rows (or a
    leg of that many upserted documents): a save rewrites each whole (1.5 GB at 1M MiniLM vectors), so saving every
    write made an upsert cost O(collection); the journal holds the documents between saves and an open replays
    them. A tenth of the index keeps the saves' amortised cost at ten rows a row written."""
    return min(10_000, max(1_000, rows // 10))


def build_tag(meta: dict) -> str:
    """A short tag of a build's ``lsr.json`` seal, which differs in every build (its build_id): index versions start
    with it, so a client can tell two builds' versions apart (each counts writes from 1)."""
    return f"{zlib.crc32(canonical_json(meta)):08x}"


class CollectionReplaced(MachineStateError):
    """What this process opened is no longer what it may write: the folder was indexed anew, moved or deleted, or a
    write failed half-applied (a full disk); only opening it again (which replays the journal) writes again.
    ``what``: the path and what happened, for a caller that words the remedy itself (a server reopens it by itself);
    ``gone``: the folder was indexed anew, moved or deleted, and what this process wrote went with the build it opened
    (else the journal holds it)."""

    def __init__(self, what: str, then: str, gone: bool = False) -> None:
        super().__init__(f"{what}; searches answer from what this process had loaded: restart it {then}")
        self.what, self.then, self.gone = what, then, gone

    def __reduce__(self):  # a shard server's, through Ray: unpickled with every argument
        return type(self), (self.what, self.then, self.gone)


class CollectionView:
    """One published version of every store; a search pins it once and reads only it."""

    __slots__ = ("sparse", "dense", "docs", "bm25")

    def __init__(self, sparse: Any, dense: DenseIndex | None, docs: DocStore, bm25: Bm25Leg | None = None) -> None:
        self.sparse, self.dense, self.docs, self.bm25 = sparse, dense, docs, bm25

    def bm25_search(self, texts: Sequence[str], k: int,
                    new_word_doc_freqs: Mapping[str, int] | None = None) -> list[dict[str, float]]:
        """BM25 over the live documents: the build's, less those written since, and those upserted since (words
        the build never saw scored with ``new_word_doc_freqs`` where given: a sharded collection's sums)."""
        return self.bm25.search(texts, k, new_word_doc_freqs)

    def text(self, doc_ids: Sequence[str]) -> list[str | None]:
        """Stored texts in the given order; None for unknown or deleted ids."""
        return self.docs.get([str(i) for i in doc_ids])


class Collection:
    """An opened collection: ``meta``, the current ``view()``, and atomic ``upsert``/``delete``.

    Writes go to the journal first (fsynced), then to the sparse index, the dense index and the
    doc overlay (see the module docstring); then the new version is published. Readers never see
    a half-applied write, and what a store lacks is replayed at open.
    """

    def __init__(self, path: Path, meta: dict, sparse: Any, dense: DenseIndex | None, docs: DocStore,
                 journal: Journal, bm25: Bm25Leg | None = None, parts: WrittenParts | None = None,
                 records: Sequence[Record] = ()) -> None:
        self.path = path
        self.meta = meta
        self.build_tag = build_tag(meta)
        self._meta_seen = _file_identity(path / META_FILE)  # a new build (`lsr index --overwrite`) writes a new lsr.json
        self.replaced = False  # this process found the collection indexed anew (or gone): only a reopen writes again
        self._on_replaced: list[Callable[[], None]] = []
        self._told = False  # the listeners heard that only a reopen writes again (replaced, or a failed write)
        self.sparse = sparse  # the writable stores; readers use view()
        self.dense = dense
        self.bm25 = bm25.base if bm25 is not None else None  # the build's BM25 index; each view's leg adds later writes
        self.search_defaults = usable_search_defaults(path)  # what `lsr tune` chose, or None
        self._journal = journal
        self._lock = threading.Lock()
        self._failed: BaseException | None = None
        self._unsaved = 0  # documents written since the dense index and BM25 leg were saved: the journal holds them
        # this process's hold on the folder: its writes and its dense save share it; one gone is CollectionReplaced
        self._folder = FolderHold(path, missing=self.check_in_place)
        self._saver: threading.Thread | None = None  # the dense save running in the background, if any
        self._watch_stop: threading.Event | None = None  # set to end the background looks (``watch``)
        self._look_failure_said = False  # warned once about a look at another process's writes that failed
        self._parts = parts if parts is not None else WrittenParts(path)  # what the journal was folded into
        self._folded: WrittenParts | None = None  # a background fold's parts, for a write or look to take up
        self._folded_lock = threading.Lock()  # hands ``_folded`` from the fold's thread to the one taking it up
        self._fold_thread: threading.Thread | None = None  # the fold running in the background, if any
        self._since = [_written_by(record) for record in records]  # (seq, ids, texts) the journal holds, for a fold
        self._view = CollectionView(sparse.pinned(), dense.pinned() if dense is not None else None, docs, bm25)
        reset_in_forked_child(self)

    def _after_fork(self) -> None:
        """In a child ``os.fork`` made: fresh locks, and a look thread of its own (without one a pre-fork server's
        worker kept serving documents deleted hours before). A write of the parent's under way at the fork left
        the stores half-updated here: this process writes again once it reopens the collection."""
        writing = self._lock.locked()
        self._lock, self._folded_lock = threading.Lock(), threading.Lock()
        self._folder = FolderHold(self.path, missing=self.check_in_place)
        if writing and self._failed is None:
            self._failed = RuntimeError("this process was forked while its parent wrote the collection")
        if self._watch_stop is not None and not self._watch_stop.is_set():
            self._watch_stop = None
            self.watch()

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Collection":
        """Check every file, replay journal records a store missed, and check the stores agree. FolderBusyError
        when another process is still writing the collection after ``WRITE_WAIT`` seconds."""
        path = Path(path).expanduser().absolute()  # a relative path moved with os.chdir: false damage, stray folders
        meta = read_meta(path)
        with exclusive_folder(path, wait=WRITE_WAIT):  # the replay writes: never beside another process's write
            opened = cls._load(path, meta)
        opened.watch()
        return opened

    @classmethod
    def _load(cls, path: Path, meta: dict, before: CollectionView | None = None) -> "Collection":
        """``open`` once the folder is locked; the BM25 leg of ``before`` (an earlier view) is carried forward."""
        from lsr.index import InvertedIndex

        remove_leftover(path)
        remove_swap_leftovers(path / "sparse")
        sources = build_file_problems(path, meta, skip=BM25_DIR)  # no repair rebuilds these: it reads them
        if sources:
            raise CorruptFileError(f"{sources[0]}; {_SOURCE_HINT.format(path=path, reindex=reindex_command(path))}")
        problems = build_file_problems(path, meta, under=BM25_DIR)
        if problems:
            raise CorruptFileError(f"{problems[0]}; {_HINT.format(path=path)}")
        parts = WrittenParts.open(path)
        parts.remove_unnamed()
        try:
            sparse = InvertedIndex.open(path / "sparse")
            sparse.verify()
            dense = DenseIndex.open(path / "dense") if meta.get("dense_model") else None
        except (CorruptFileError, FileNotFoundError) as exc:  # built from the build's files and the journal
            rebuilt = "the sparse and dense indexes" if meta.get("dense_model") else "the sparse index"
            raise CorruptFileError(f"{exc}; `lsr repair {path}` rebuilds {rebuilt}") from None
        applied = max(sparse.journal_seq, dense.journal_seq if dense is not None else 0)
        records = recover(path / JOURNAL_FILE, applied, parts.upto)
        behind = min(sparse.journal_seq, dense.journal_seq if dense is not None else sparse.journal_seq) < parts.upto
        replayed = [*parts.records(), *records] if behind else records
        try:
            replay(replayed, sparse, dense)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            lacked = sum(record.lacked_by(sparse.journal_seq) for record in replayed)
            raise MachineStateError(
                f"{path}: its sparse index lacks the last {lacked} write(s) of its journal (a crash or a full disk "
                f"stopped them) and the folder takes no writes ({exc.strerror}); open it once where it can be written "
                "(any `lsr search` there), which applies them, then make it read-only again") from None
        docs = DocStore(path / "docs", overlay_of(records), parts)
        disagreement = agreement_problems(docs.ids(), set(sparse.doc_ids()), None if dense is None else set(dense.ids()))
        if disagreement:
            raise CorruptFileError(f"{path}: {disagreement[0]}; rebuild the indexes with `lsr repair {path}`")
        bm25 = None
        if before is not None and before.bm25 is not None and before.docs.folded_upto == parts.upto:
            # the build's index is static: add what changed since
            changed = docs.written_since(before.docs)
            bm25 = before.bm25.with_updates(changed, docs.get(changed))
        elif meta.get("bm25"):  # statistics a build before they were kept lacks, or whose crc32 it lacks
            base = Bm25Index.open(path / BM25_DIR, with_stats=any(record["file"] == f"{BM25_DIR}/{STATS_FILE}"
                                                                  for record in meta["files"]))
            bm25 = bm25_leg_at_open(path, base, records, docs)
        journal = Journal(path / JOURNAL_FILE, records[-1].seq if records else parts.upto, records)
        return cls(path, meta, sparse, dense, docs, journal, bm25, parts, records)

    @property
    def checksum(self) -> str:
        """One digest of the build's content checksums (the ``index_checksum`` BEIR results report)."""
        return hashlib.sha256(json.dumps(self.meta["checksums"], sort_keys=True).encode()).hexdigest()

    def view(self) -> CollectionView:
        """The current version of every store, for one search to read; the background looks keep it current with
        other processes' writes, so no search waits while they are taken up (a batch of 256 documents: about 0.1 s of
        tokenising for the BM25 leg alone)."""
        return self._view

    def watch(self) -> None:
        """Look for other processes' writes every ``LOOK_INTERVAL`` seconds in a daemon thread, until ``close`` or
        until nothing else holds this collection. A look that waited for a search left a server that had been quiet
        answering its first search from before writes made seconds or hours earlier."""
        if self._watch_stop is None or self._watch_stop.is_set():
            self._watch_stop = threading.Event()
            threading.Thread(target=_watch, args=(weakref.ref(self), self._watch_stop), name="lsr-look",
                             daemon=True).start()

    def look(self) -> None:
        """Take up what other processes wrote now, waiting for a look or write of this process under way (but not for
        another process's: a folder held elsewhere is looked at again next time)."""
        self._look_at_disk(wait=True)

    def _look_at_disk(self, wait: bool = False) -> None:
        """Take up what another process wrote, unless a write elsewhere (or, unless ``wait``, here) holds the collection
        (the next look tries again). A crash in the look thread is a crash like any other (the journal holds the writes)."""
        if self._failed is not None or not self._lock.acquire(blocking=wait):
            return
        try:
            self._take_up_fold()
            if self._changed_on_disk():
                self.check_in_place()  # a rebuild holds the folder for minutes: found now, not once it lets go
                with self._folder.held():  # no wait: a busy folder is looked at again next time
                    if self._changed_on_disk():
                        self._take_up_disk()
        except FolderBusyError:
            pass
        except Exception as exc:  # searches go on reading the last whole view; a write here raises it again
            heard = isinstance(exc, CollectionReplaced) and self._on_replaced  # they say what they do (a server reloads)
            if not self._look_failure_said and not heard:
                log.warning("%s; searches keep reading what this process last saw", exc)
                self._look_failure_said = True
        finally:
            self._lock.release()

    def text(self, doc_ids: Sequence[str]) -> list[str | None]:
        return self._view.text(doc_ids)

    def upsert(self, ids: Sequence[str], texts: Sequence[str], sparse: SparseBatch, dense: np.ndarray | None, *,
               deadline: float | None = None, check: Callable[[str], None] | None = None) -> None:
        """Add or replace documents in every store; durable and visible once this returns. ``deadline`` and
        ``check`` as in ``_writing``."""
        ids = [str(i) for i in ids]
        if self.dense is not None and dense is None:
            raise ValueError("this collection has a dense index; upserts need dense vectors too")
        # before the journal takes it: a record no store can apply (another model's vectors) failed every later open
        # and repair, while lsr verify called the collection intact
        self.sparse.check_vectors(sparse, ids)
        if self.dense is not None:
            self.dense.check_vectors(dense)
        with self._writing(deadline, check):
            self._apply(self._journal.append("upsert", ids, list(texts), sparse, dense if self.dense is not None else None))

    def delete(self, ids: Sequence[str], *, deadline: float | None = None,
               check: Callable[[str], None] | None = None) -> list[str]:
        """Delete ids found in any store from every store; returns the ids no store held."""
        ids = list(dict.fromkeys(str(i) for i in ids))
        with self._writing(deadline, check):
            view = self._view
            known = [i for i in ids if view.docs.contains(i) or i in self.sparse
                     or (self.dense is not None and i in self.dense)]
            if known:
                self._apply(self._journal.append("delete", known))
            known_ids = set(known)
            return [i for i in ids if i not in known_ids]

    @contextmanager
    def _writing(self, deadline: float | None = None, check: Callable[[str], None] | None = None) -> Iterator[None]:
        """One writer at a time, across threads and processes; a collection another process wrote since this one
        last looked is first taken up from disk. After a failed apply the process must reopen (and so replay) first.

        The folder is waited for until ``deadline`` (``time.monotonic()``), at most ``WRITE_WAIT`` s, and
        ``check(stage)`` (the service's: has the caller gone?) runs once it is held: a write whose caller gave up
        while another process held the folder was applied up to 30 s later, over a newer acknowledged one."""
        wait = WRITE_WAIT if deadline is None else max(0.0, min(WRITE_WAIT, deadline - time.monotonic()))
        with self._lock:
            if self._failed is not None:
                self.check_in_place()  # indexed anew since: say that, not what the old build's write hit
                raise CollectionReplaced(f"{self.path}: an earlier write failed half-applied ({self._failed})",
                                         "to replay the journal, which holds it")
            try:
                self._folder.acquire(wait)
            except FolderBusyError:
                if check is not None:
                    check("waiting for the collection folder")  # gone: its own status, not UNAVAILABLE
                raise
            try:
                if check is not None:
                    check("writing")
                self._take_up_fold()
                if self._changed_on_disk():
                    self._take_up_disk()
                journaled = self._journal.last_seq
                try:
                    yield
                except BaseException as exc:
                    if self._journal.last_seq != journaled:
                        self._fail(exc)
                    raise
            except Exception as exc:
                if not isinstance(exc, CollectionReplaced):  # a file gone under `lsr index --overwrite`: say so
                    self.check_in_place()
                raise
            finally:
                self._folder.release()

    def _changed_on_disk(self) -> bool:
        """Whether another process wrote, repaired or rebuilt the collection since this one last looked (a rebuild's
        journal and sparse commit can look like the old ones: both new, both empty, both at version 1)."""
        return (self._journal.changed_on_disk() or self.sparse.changed_on_disk()
                or _file_identity(self.path / META_FILE) != self._meta_seen)

    def when_replaced(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` once this process finds the collection indexed anew (or moved), by a write, a text read
        or a background look, or once a write fails half-applied: only opening it again writes again (a server
        reports NOT_SERVING and opens it again: ``lsr.service.reload``)."""
        self._on_replaced.append(listener)

    def _tell_listeners(self) -> None:
        if not self._told:
            self._told = True
            for listener in self._on_replaced:
                listener()

    def _fail(self, exc: BaseException) -> None:
        """A write or a take-up failed half-applied (a full disk, a read-only folder): the journal holds records the
        stores may lack, and only a reopen replays them. A server's reload does that once it can: it stayed stale,
        refusing every write INTERNAL with health SERVING, until someone restarted it."""
        self._failed = exc
        self._tell_listeners()

    def check_in_place(self) -> None:
        """CollectionReplaced unless the folder still holds the build this process opened: indexed anew, or moved or
        deleted (a write failed INTERNAL; a text read by path, DATA_LOSS, pointing at `lsr verify`, which found
        nothing). One stat while lsr.json is the file this process last saw.
        The listeners hear of it once (a server reports NOT_SERVING)."""
        if not self.replaced and _file_identity(self.path / META_FILE) == self._meta_seen:
            return
        try:  # asked again each time: a rebuild under way leaves the folder missing for a moment
            if read_meta(self.path) == self.meta and not self.replaced:
                return
            why, then = "was indexed anew (`lsr index --overwrite`)", "to use the new build"
        except (FileNotFoundError, ValueError, FolderBusyError):  # gone, or a rebuild under way or unfinished
            why, then = "was moved, deleted or is being indexed anew", "on the collection where it is now"
        self.replaced = True
        self._tell_listeners()
        raise CollectionReplaced(f"{self.path} {why} since it was opened", then, gone=True)

    def _take_up_disk(self) -> None:
        """Another process wrote the collection (or repaired it): apply the journal records it appended to this
        process's stores (the sparse index from its new commit, and any record a writer that died left unapplied),
        so this write follows the other's instead of undoing it. Anything but whole records appended after ours
        (a torn tail, a repair) reloads every store from disk."""
        meta_seen = _file_identity(self.path / META_FILE)
        self.check_in_place()
        self._meta_seen = meta_seen  # rewritten alike (a repair)
        appended = self._journal.appended_since()
        if appended is not None:
            try:
                self.sparse.take_up_disk()
                for record in appended:
                    self._apply(record)
            except BaseException as exc:  # the journal counts records the stores may lack: reopen to replay them
                self._fail(exc)
                raise
            return
        fresh = self._load(self.path, self.meta, self._view)
        self.sparse, self.dense, self._journal, self._view = fresh.sparse, fresh.dense, fresh._journal, fresh._view
        with self._folded_lock:
            self._parts, self._since, self._folded = fresh._parts, fresh._since, None
        self._unsaved = 0  # the rows it replayed are the other process's to save (or the next threshold's)

    def _take_up_fold(self) -> None:
        """A background fold finished: the documents it folded are read from the parts from now on, and only the
        writes since stay in memory (the caller holds ``_lock``)."""
        with self._folded_lock:  # a fold starting now reads the parts it finished either way
            folded, self._folded = self._folded, None
            if folded is None:
                return
            self._parts = folded
        self._since = [written for written in self._since if written[0] > folded.upto]
        view = self._view
        self._view = CollectionView(view.sparse, view.dense, DocStore(self.path / "docs", _overlay(self._since), folded),
                                    view.bm25)

    def _save(self, seq: int) -> None:
        """Save the dense index and the BM25 leg as of record ``seq`` in the background, then fold the journal
        when that is due. A dense save rewrites the index whole (13 to 18 s at 1M MiniLM vectors here), so the write
        that reaches the threshold no longer waits for it and this process's writes go on meanwhile; other processes
        wait for the folder as for a write. One save at a time: documents written past a running one wait in the
        journal for the next threshold or ``close``."""
        if self._saver is not None and self._saver.is_alive():
            return
        dense = self.dense.snapshot(seq) if self.dense is not None else None  # flat: its live bits; HNSW: a clone
        leg = self._view.bm25 if _savable(self._view.bm25) else None  # immutable: no copy needed
        self._unsaved = 0
        self._folder.acquire()  # the calling write holds the folder already, so this never waits
        self._saver = threading.Thread(target=self._write_saves, args=(seq, dense, leg), name="lsr-save")
        self._saver.start()

    def _write_saves(self, seq: int, dense: DenseSnapshot | None, leg: Bm25Leg | None) -> None:
        try:
            saved = True
            if dense is not None:
                saved &= self._logged_save("dense index", lambda: dense.write(self.path / "dense"))
            if leg is not None:
                saved &= self._logged_save("BM25 leg", lambda: save_leg(leg, self.path / BM25_DIR, seq))
            if saved:  # the stores hold ``seq``: an open applies none of the folded records
                self._start_fold(seq)
        finally:
            self._folder.release()

    def _start_fold(self, seq: int) -> None:
        """Fold the journal up to ``seq`` (which every store holds) in a thread of its own when that is due and no
        fold runs: a fold that merges parts takes seconds, and the saves meanwhile keep their cadence (a crash
        leaves no more for an open to replay than between two saves)."""
        if not fold_due(self._journal.tally) or (self._fold_thread is not None and self._fold_thread.is_alive()):
            return
        self._folder.acquire()  # the calling save holds the folder already, so this never waits
        self._fold_thread = threading.Thread(target=self._background_fold, args=(seq,), name="lsr-fold")
        self._fold_thread.start()

    def _settle(self) -> None:
        """Wait for the background save, then for the fold it may have started."""
        if self._saver is not None:
            self._saver.join()
        if self._fold_thread is not None:
            self._fold_thread.join()

    def _background_fold(self, seq: int) -> None:
        try:
            self._fold_journal(seq)
        finally:
            self._folder.release()

    def _fold_journal(self, seq: int) -> None:
        """Fold the journal's records up to ``seq`` into the written parts when that is due, for a write or look to
        take up (``_take_up_fold``). A failure (a full disk) is logged: the journal keeps what it held, and the
        next save tries again."""
        if not fold_due(self._journal.tally):
            return
        before = self._journal.size
        with self._folded_lock:  # the last fold's parts, taken up or not
            parts = self._folded if self._folded is not None else self._parts
        try:
            folded = fold(self._journal, parts, seq, self.sparse.vocab_size,
                          self.dense.dim if self.dense is not None else None)
        except Exception as exc:
            log.error("folding the journal of %s into its written parts failed (%s); it keeps its records", self.path,
                      exc)
            return
        if folded is not None:
            with self._folded_lock:
                self._folded = folded
            log.info("folded the journal of %s into %d written parts (%d rows): %.1f MB -> %.1f MB", self.path,
                     len(folded.parts), folded.rows, before / 1e6, self._journal.size / 1e6)

    def _logged_save(self, name: str, save: Callable[[], None]) -> bool:
        """Run one save; a failure is logged, not raised (the journal still holds its rows). Whether it succeeded."""
        try:
            save()
        except Exception as exc:  # the journal still holds the rows: an open replays them, a later save retries
            log.error("saving the %s of %s failed (%s); its rows stay in the journal", name, self.path, exc)
            return False
        return True

    def save_bm25_leg(self) -> bool:
        """Save the BM25 leg as of the journal's last record, for a caller that holds the folder (`lsr repair`:
        rebuilding ``bm25/`` removed the saved leg, and every open then tokenized each document written since the
        build again: 13 s an open with 51,000 of them, 2 s once saved). Whether there was one to save."""
        if not _savable(self._view.bm25):
            return False
        save_leg(self._view.bm25, self.path / BM25_DIR, self._journal.last_seq)
        return True

    def close(self) -> None:
        """Wait for a background save and fold, then save what only the journal holds (the dense rows, the BM25 leg's
        documents written since its last save), so the next open replays none, and fold the journal when due;
        skipped when another process wrote since (its saves and the journal hold everything) or holds the collection."""
        if self._watch_stop is not None:
            self._watch_stop.set()
        with self._lock:
            self._settle()
            if not self._unsaved or self._failed is not None:
                return
            try:
                with self._folder.held(WRITE_WAIT):
                    if not self._changed_on_disk():
                        if self.dense is not None:
                            self.dense.save(self.path / "dense", journal_seq=self._journal.last_seq)
                        if _savable(self._view.bm25):
                            save_leg(self._view.bm25, self.path / BM25_DIR, self._journal.last_seq)
                        self._unsaved = 0
                        self._fold_journal(self._journal.last_seq)
            except (FolderBusyError, CollectionReplaced):  # the journal holds them; a new build is another's
                pass
            except OSError as exc:  # a full disk: every write is in the journal, which the next open replays
                log.warning("%s: the writes are kept in its journal, but saving its derived indexes failed (%s); the "
                            "next open replays them", self.path, " ".join(str(exc).split()))

    def _apply(self, record: Record) -> None:
        """Apply ``record`` to the stores that lack it (another process's commit may hold it in the sparse index),
        publish the next view, and start a save when one is due."""
        apply_record(record, self.sparse if record.lacked_by(self.sparse.journal_seq) else None, self.dense)
        written = _written_by(record)
        texts = written[2]
        view = self._view
        self._view = CollectionView(self.sparse.pinned(), self.dense.pinned() if self.dense is not None else None,
                                    view.docs.with_updates(record.ids, texts),
                                    view.bm25.with_updates(record.ids, texts) if view.bm25 is not None else None)
        self._since.append(written)
        self._unsaved += len(record.ids)
        if self.dense is not None:
            rows = len(self.dense)
        elif _savable(self._view.bm25):
            rows = self._view.bm25.live_written
        else:  # nothing to save: only the journal's fold
            rows = self.sparse.num_docs
        if self._unsaved >= save_rows(rows):
            self._save(record.seq)


def _written_by(record: Record) -> tuple[int, list[str], list[str | None]]:
    """(seq, ids, texts) of a record, None for a deleted id: what the doc store's overlay takes from it."""
    return record.seq, record.ids, record.texts if record.op == "upsert" else [None] * len(record.ids)


def _savable(leg: Bm25Leg | None) -> bool:
    """Whether a BM25 leg is saved with the collection: one whose build kept its statistics."""
    return leg is not None and leg.base.stats is not None


def apply_record(record: Record, sparse: Any | None, dense: DenseIndex | None) -> None:
    """Apply one journal record to the sparse index (committed with its seq) and/or the dense index (in memory)."""
    if record.op == "upsert":
        if sparse is not None:
            sparse.add(record.sparse, record.ids, journal_seq=record.seq)
        if dense is not None:
            dense.add(record.ids, record.dense)
        return
    if sparse is not None:
        sparse.delete([i for i in record.ids if i in sparse], journal_seq=record.seq)
    if dense is not None:
        dense.remove(record.ids)


def replay(records: Sequence[Record], sparse: Any, dense: DenseIndex | None) -> None:
    """Apply to each store the records it does not hold yet: the sparse index's after a crash between stores
    (committed), the dense index's since its last save (in memory only: an open that only reads writes nothing
    there, and the writer's next save or close stores them)."""
    dense_from = dense.journal_seq if dense is not None else 0
    for record in records:
        apply_record(record, sparse if record.lacked_by(sparse.journal_seq) else None,
                     dense if dense is not None and record.lacked_by(dense_from) else None)


def overlay_of(records: Sequence[Record]) -> dict[str, str | None]:
    """The doc store's texts of journaled writes (None = deleted), latest write winning."""
    return _overlay(map(_written_by, records))


def _overlay(writes: Iterable[tuple[int, list[str], list[str | None]]]) -> dict[str, str | None]:
    """Each id at its last write, in the order of those writes (the order the BM25 leg numbers its rows in)."""
    overlay: dict[str, str | None] = {}
    for _, ids, texts in writes:
        for doc_id, text in zip(ids, texts):
            overlay.pop(doc_id, None)
            overlay[doc_id] = text
    return overlay


def bm25_leg_at_open(path: Path, base: Bm25Index, records: Sequence[Record], docs: DocStore) -> Bm25Leg:
    """The BM25 leg of the journal's ``records``: the one saved with the last save (``bm25_leg_file``) and the
    records after it, or, when none was saved (or it is stale, damaged, or older than the written parts), every
    text written since the build (the parts' and the journal's)."""
    try:
        saved = load_leg(base, path / BM25_DIR)
    except CorruptFileError as exc:
        log.warning("%s; rebuilding the BM25 leg from the journal (`lsr repair` saves it anew)", exc)
        saved = None
    last = records[-1].seq if records else docs.folded_upto
    if saved is not None and docs.folded_upto <= saved[1] <= last:
        leg, seq = saved
        later = overlay_of([record for record in records if record.lacked_by(seq)])
        return leg.with_updates(list(later), list(later.values())) if later else leg
    written = docs.written()
    return Bm25Leg.written(base, written, docs.get(written))


_HINT = "run `lsr verify {path}` for a full report; `lsr repair {path}` rebuilds the sparse, dense and BM25 indexes"
# a build's vectors, texts, embeddings or vocabulary: `lsr repair` rebuilds the indexes from them, so it cannot help
_SOURCE_HINT = ("run `lsr verify {path}` for a full report; this file is a source no repair can rebuild: restore it "
                "from a backup or re-index with `{reindex}`")


def agreement_problems(docs: set[str], sparse: set[str], dense: set[str] | None) -> list[str]:
    """Ids that one store holds and another does not (the doc store is the reference)."""
    problems = []
    for name, ids in (("sparse index", sparse), ("dense index", dense)):
        if ids is None:
            continue
        extra, missing = sorted(ids - docs), sorted(docs - ids)
        if extra:
            problems.append(f"the {name} holds {len(extra)} ids the doc store does not (first: {extra[0]!r})")
        if missing:
            problems.append(f"the {name} lacks {len(missing)} ids of the doc store (first: {missing[0]!r})")
    return problems


def _watch(ref: "weakref.ref[Collection]", stop: threading.Event) -> None:
    """The look thread: it holds the collection only while looking, so a collection nothing else holds is freed."""
    while not stop.wait(LOOK_INTERVAL):
        collection = ref()
        if collection is None:
            return
        collection._look_at_disk()
        del collection


def _file_identity(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime) of a file that is only ever replaced whole; zeros when there is none."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return 0, 0, 0
    return stat.st_ino, stat.st_size, stat.st_mtime_ns
