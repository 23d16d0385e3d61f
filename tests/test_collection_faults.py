"""A collection under faults: flipped bytes and truncation in every file, deleted indexes, crashes
between stores, and stores that disagree. Real SciFact documents, real models, real files."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from lsr.cli.main import main
from lsr.files import CorruptFileError
from lsr.ingest.collection import Collection
from lsr.ingest.verify import verify_collection

from collection_helpers import (NEW_TEXT, build_written, load_encoders, looked as _looked, searches as _searches,
                                write_at_once)


@pytest.fixture(scope="module")
def encoders():
    return load_encoders()


@pytest.fixture(scope="module")
def written(beir_dir, encoders, tmp_path_factory) -> Path:
    return build_written(beir_dir, encoders, tmp_path_factory.mktemp("faults") / "col")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.stat().st_size > 0)  # sparse/LOCK is empty


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _upsert_each(col: Collection, encoders, ids: list[str], texts: list[str]) -> None:
    """One write per document, encoded by the real models."""
    sparse, dense = encoders[0].encode_documents(texts), encoders[1].encode_documents(texts)
    for i, doc_id in enumerate(ids):
        col.upsert([doc_id], texts[i : i + 1], sparse[i : i + 1], dense[i : i + 1])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [_flip, _truncate], ids=["flip", "truncate"])
def test_damage_to_any_file_is_found_by_open_and_verify_naming_the_file(written, tmp_path, damage):
    files = [p.relative_to(written) for p in _data_files(written)]
    assert len(files) > 20 and {"lsr.json", "journal.log"} <= {f.as_posix() for f in files}
    for i, relative in enumerate(files):
        col = _copy(written, tmp_path / f"c{i}")
        damage(col / relative)
        problems = verify_collection(col).problems
        assert sum(relative.name in p for p in problems) == 1, (relative, problems)  # named once
        with pytest.raises(CorruptFileError, match=relative.name.replace(".", r"\.")) as raised:
            Collection.open(col)
        assert re.search(r"`lsr (repair|verify|index)[^`]*`|restore", str(raised.value)), str(raised.value)  # what to do
        shutil.rmtree(col)


def test_verify_names_every_damaged_file_at_once_in_order(written, tmp_path):
    """Files are checksummed on several threads (``lsr.files.each_problem``): every damaged one is still named once,
    in the order of the collection's records, and the first names the file open refuses."""
    from lsr.ingest.layout import read_meta

    col = _copy(written, tmp_path / "col")
    damaged = [r["file"] for r in read_meta(col)["files"] if not r["file"].startswith("bm25/")]
    assert len(damaged) >= 3, damaged
    for name in damaged:
        _flip(col / name)
    problems = [p for p in verify_collection(col).problems if "crc32" in p]
    named = [next(name for name in damaged if str(col / name) in p) for p in problems]
    assert named == damaged, problems
    with pytest.raises(CorruptFileError, match=re.escape(str(col / damaged[0]))):
        Collection.open(col)


def test_ctrl_c_while_files_are_checksummed_stops_the_checks_within_a_read(tmp_path, monkeypatch):
    """Files are checked on several threads: a Ctrl-C (or an error from one check) waited for the files under way to
    be read to their end, 7.8 s on 3 GB files, where checking one file at a time stopped at once."""
    import signal
    import threading

    import lsr.files
    from lsr.files import check_record, each_problem

    monkeypatch.setattr(lsr.files, "CHECK_THREADS", 2)  # two files under way, whatever this machine's CPUs
    records = []
    for i in range(6):
        with open(tmp_path / f"f{i}", "wb") as fh:
            fh.truncate(4 << 30)  # sparse: reading it costs memory bandwidth, not disk
        records.append({"file": f"f{i}", "bytes": 4 << 30, "crc32": 1})
    read_through, started = [], []

    def check(record: dict) -> None:
        started.append(record["file"])
        try:
            check_record(tmp_path, record)
        except CorruptFileError:  # the whole file read: its crc32 is not 1
            read_through.append(record["file"])
            raise

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            each_problem(records, check, CorruptFileError)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert started and len(started) < len(records) and read_through == [], (started, read_through)
    assert not [t for t in threading.enumerate() if t.name.startswith("lsr-check")]


_TRIP_DURING_PANDAS_IMPORT = """\
import importlib.abc, signal, sys
class Trip(importlib.abc.MetaPathFinder):  # Ctrl-C lands while pandas is being imported
    def find_spec(self, name, path, target=None):
        if name == "pandas.core.api":
            signal.raise_signal(signal.SIGINT)
sys.meta_path.insert(0, Trip())
from lsr.cli.main import main
sys.exit(main(["verify", sys.argv[1]]))
"""


def test_a_ctrl_c_while_pandas_loads_stops_lsr_verify(written, tmp_path):
    """pyarrow's first array conversion imports pandas from C++ and drops what that import raises: a Ctrl-C or
    SIGTERM landing there was lost, and `lsr verify` (or `lsr repair`) ran on, printed "intact" and exited 0."""
    import subprocess

    from signal_helpers import interruptible

    done = subprocess.run(interruptible("-c", _TRIP_DURING_PANDAS_IMPORT, str(written)), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 130 and "intact" not in done.stdout, (done.returncode, done.stdout, done.stderr[-2000:])
    assert done.stderr.strip().splitlines()[-1] == "interrupted"


def test_a_signal_a_library_swallowed_still_stops_the_verb():
    """Whatever library drops a signal's exception, a verb that then runs to its end exits as stopped."""
    import importlib
    import signal

    cli = importlib.import_module("lsr.cli.main")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # an xdist worker ignores SIGINT
    try:
        with cli._signals_as_exceptions():
            for signum, stopped in ((signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, cli.Terminated)):
                try:
                    signal.raise_signal(signum)
                except KeyboardInterrupt:  # a library's broad except
                    pass
                with pytest.raises(stopped):
                    cli._stop_if_swallowed()
            cli.interrupt_handled()  # the interactive prompt took it as "drop this line"
            cli._stop_if_swallowed()
    finally:
        signal.signal(signal.SIGINT, previous)


def test_verify_is_clean_on_an_intact_collection(written, capsys):
    assert main(["verify", str(written)]) == 0
    out = capsys.readouterr().out
    assert "is intact" in out and "checked  BM25 index" in out  # its files were checked, and no line said so


def test_verify_beside_a_dense_save_rechecks_instead_of_failing(written, encoders, tmp_path, monkeypatch, capsys):
    """A server's dense save replaced dense/ids-N.parquet between verify's file check and its open: "lsr verify:
    error: [Errno 2] Failed to open local file" (exit 2, bad input) on an intact collection. It is a problem to check
    again under the folder's lock, as any other file a write replaced."""
    from lsr.search import dense_index

    col = _copy(written, tmp_path / "col")
    read_ids, saved = dense_index.parquet_ids, []

    def a_save_right_before_the_ids_are_read(path):
        if not saved:  # another process's write and save, between the open's checks and its read
            saved.append(True)
            writer = Collection.open(col)
            _upsert_each(writer, encoders, ["between"], ["written while lsr verify opened the dense index"])
            writer.close()
        return read_ids(path)

    monkeypatch.setattr(dense_index, "parquet_ids", a_save_right_before_the_ids_are_read)
    before = sorted(p.name for p in (col / "dense").iterdir())
    assert main(["verify", str(col)]) == 0 and "is intact" in capsys.readouterr().out
    assert saved and sorted(p.name for p in (col / "dense").iterdir()) != before  # the files were replaced


@pytest.mark.parametrize("lost", ["sparse", "dense", "bm25"])
def test_lsr_repair_rebuilds_a_deleted_index(written, tmp_path, capsys, lost):
    col = _copy(written, tmp_path / "col")
    before = Collection.open(col)
    want_sparse, want_dense = sorted(before.sparse.doc_ids()), sorted(before.dense.ids())
    query = before.dense.get_vectors(["new-1"])
    bm25_before = before.view().bm25_search([NEW_TEXT, "vitamin d"], 10)
    if lost == "sparse":
        shutil.rmtree(col / "sparse")
    elif lost == "bm25":
        shutil.rmtree(col / "bm25")
    else:
        next((col / "dense").glob("vectors-*.npy")).unlink()
    assert main(["verify", str(col)]) == 1
    out = capsys.readouterr().out
    assert {"sparse": "manifest.json", "bm25": "bm25/ids.json", "dense": "vectors-"}[lost] in out and "BAD" in out
    quiet = lost == "dense"
    assert main(["repair", str(col), *(["--quiet"] if quiet else [])]) == 0
    said, bars = capsys.readouterr()
    assert "is intact" in said and "saved the BM25 leg of the" in said
    # every index rebuilt shows its bar with an ETA on stderr (a repair of 1M documents is minutes), unless --quiet
    for bar in ("sparse index (2 readings): 100%", "dense index: 100%", "bm25: 100%"):
        assert (bar in bars) != quiet, bars
    # rebuilding bm25/ removed the saved leg of the documents written since the build: every open then tokenized
    # them all again (13 s an open at 51,000 of them); repair now saves it, as of the journal's last record
    from lsr.search.bm25_index import Bm25Index
    from lsr.search.bm25_leg_file import load_leg

    saved = load_leg(Bm25Index.open(col / "bm25"), col / "bm25")
    assert saved is not None and saved[1] == before._journal.last_seq
    after = Collection.open(col)
    assert sorted(after.sparse.doc_ids()) == want_sparse and sorted(after.dense.ids()) == want_dense
    assert after.dense.search(query, k=1)[0][0, 0] == "new-1"
    assert after.view().bm25_search([NEW_TEXT, "vitamin d"], 10) == bm25_before
    assert after.view().sparse.search({int(t): 1.0 for t in after.sparse.get_vectors(["new-1"]).row(0)[0][:5]}, k=1)


def test_errors_name_the_file_and_what_to_run(written, tmp_path, capsys):
    col = _copy(written, tmp_path / "col")
    (col / "sparse" / "manifest.json").unlink()
    with pytest.raises(CorruptFileError, match=r"manifest\.json.*lsr repair"):
        Collection.open(col)
    (col / "lsr.json").write_text('{"format": 2, "model": ')
    assert main(["search", str(col), "vitamin"]) == 2
    assert "lsr.json" in capsys.readouterr().err


def test_a_write_journaled_but_not_applied_is_replayed_at_open(written, encoders, tmp_path):
    """kill -9 after the journal fsync and before the stores: the next open finishes the write."""
    col = Collection.open(_copy(written, tmp_path / "col"))
    victim = col.sparse.doc_ids()[1]
    text = "Axolotl limb regeneration depends on macrophages."
    col._journal.append("upsert", ["new-2"], [text], encoders[0].encode_documents([text]), encoders[1].encode_documents([text]))
    col._journal.append("delete", [victim])
    again = Collection.open(col.path)
    assert "new-2" in again.sparse and "new-2" in again.dense and again.text(["new-2"]) == [text]
    assert victim not in again.sparse and victim not in again.dense and again.text([victim]) == [None]
    assert not verify_collection(col.path).problems


def test_delete_reaches_an_id_that_only_some_stores_hold(written, tmp_path):
    col = Collection.open(_copy(written, tmp_path / "col"))
    victim = col.sparse.doc_ids()[2]
    col.sparse.delete([victim])  # a store that lost the id outside the journal
    assert col.delete([victim, "ghost"]) == ["ghost"]
    again = Collection.open(col.path)
    assert victim not in again.sparse and victim not in again.dense and again.text([victim]) == [None]


def test_a_search_keeps_its_snapshot_while_writes_publish_new_versions(written, encoders, tmp_path):
    col = Collection.open(_copy(written, tmp_path / "col"))
    view = col.view()
    victim = view.sparse.doc_ids()[0]
    vector = view.dense.get_vectors([victim])
    col.delete([victim])
    col.upsert(["new-3"], ["Tardigrades survive vacuum."], encoders[0].encode_documents(["x"]), encoders[1].encode_documents(["x"]))
    assert victim in view.sparse and victim in view.dense and view.text([victim])[0]  # the pinned version is whole
    np.testing.assert_array_equal(view.dense.get_vectors([victim]), vector)
    assert "new-3" not in view.dense.search(vector, k=50)[0][0]
    assert victim not in col.view().sparse and "new-3" in col.view().dense


def test_bm25_finds_upserted_documents_and_never_deleted_or_rewritten_ones(written, encoders, tmp_path):
    """The BM25 leg holds the build's texts and the documents written since: an upserted document is found by its
    text, a deleted one and a replaced one's old text never come back, before and after a reopen."""
    col = Collection.open(_copy(written, tmp_path / "col"))
    build = Collection.open(written)
    replaced = col.sparse.doc_ids()[1]
    old_text = col.text([replaced])[0]
    assert replaced in col.view().bm25_search([old_text], 5)[0]
    col.upsert([replaced], [NEW_TEXT], encoders[0].encode_documents([NEW_TEXT]), encoders[1].encode_documents([NEW_TEXT]))
    deleted = set(build.bm25.ids) - build.view().docs.ids()
    assert deleted  # the fixture deleted one build document
    for opened in (col, Collection.open(col.path)):
        old, new, other = opened.view().bm25_search([old_text, NEW_TEXT, "vitamin d deficiency"], 50)
        assert replaced not in old and not (set(old) | set(other)) & deleted
        assert list(new)[:2] == ["new-1", replaced] and new["new-1"] == new[replaced]  # same text: same score, earlier first
    col.delete(["new-1"])
    after = col.view().bm25_search([NEW_TEXT], 50)[0]
    assert list(after)[0] == replaced and "new-1" not in after


def test_processes_writing_one_collection_at_once_lose_nothing(written, encoders, tmp_path):
    """Two servers, or a script beside a server: two processes open one collection, then both write it at once.
    Each write waits for the other's, and a process takes up what the other wrote before its own write, so every
    write is kept (the journal used to get two records of one seq: the collection would not open again)."""
    path = _copy(written, tmp_path / "col")
    originals = Collection.open(path).sparse.doc_ids()
    plans, texts = {}, {}
    for name, victim in (("a", originals[0]), ("b", originals[1])):
        writes = []
        for i in range(8):
            doc, text = f"{name}-{i}", f"Document {i} of writer {name}: {NEW_TEXT}"
            texts[doc] = text
            writes.append(("upsert", ([doc], [text], encoders[0].encode_documents([text]),
                                      encoders[1].encode_documents([text]))))
        writes.insert(3, ("delete", ([victim],)))
        plans[name] = writes
    assert write_at_once(path, plans) == [0, 0]

    assert not verify_collection(path).problems
    col = Collection.open(path)
    expected = (set(originals) - set(originals[:2])) | set(texts)
    assert set(col.sparse.doc_ids()) == set(col.dense.ids()) == expected
    assert col.text(list(texts)) == list(texts.values()) and col.text(originals[:2]) == [None, None]
    assert col._journal.last_seq == Collection.open(written)._journal.last_seq + 18


def test_repair_lets_a_collection_built_before_the_bm25_statistics_find_its_upserts(written, tmp_path, caplog):
    """A collection whose lsr.json records no BM25 statistics (built before they were kept) hides its upserted
    documents from BM25 and says so; `lsr repair` writes the statistics and records them, and then BM25 finds them."""
    from lsr.files import sealed, write_json_atomic
    from lsr.ingest.layout import META_FILE, read_meta

    path = _copy(written, tmp_path / "col")
    meta = read_meta(path)
    old = [record for record in meta["files"] if record["file"] not in ("bm25/stats.json", "bm25/doc_freqs.npy")]
    assert len(old) == len(meta["files"]) - 2
    write_json_atomic(path / META_FILE, sealed({**meta, "files": old}))
    for name in ("stats.json", "doc_freqs.npy"):
        (path / "bm25" / name).unlink()
    with caplog.at_level("WARNING"):
        assert "new-1" not in Collection.open(path).view().bm25_search([NEW_TEXT], 10)[0]
    assert "`lsr repair` on the collection" in caplog.text
    assert main(["repair", str(path)]) == 0
    assert "new-1" in Collection.open(path).view().bm25_search([NEW_TEXT], 10)[0]
    assert len(read_meta(path)["files"]) == len(meta["files"]) and not verify_collection(path).problems


def test_a_collection_of_a_newer_lsr_asks_for_an_upgrade_not_a_reindex(written, tmp_path, capsys):
    """Told to re-index with --overwrite, an operator who had rolled lsr back replaced the newer version's collection."""
    from lsr.files import sealed, write_json_atomic
    from lsr.ingest.layout import FORMAT, META_FILE, read_meta

    path = _copy(written, tmp_path / "col")
    meta = read_meta(path)
    write_json_atomic(path / META_FILE, sealed({**meta, "format": FORMAT + 1, "created_with": "lsr 9.0"}))
    assert main(["search", str(path), "aspirin"]) == 2
    err = capsys.readouterr().err
    assert f"was written by a newer lsr (lsr 9.0, collection format {FORMAT + 1})" in err and "upgrade lsr" in err
    assert "overwrite" not in err


def test_a_process_taking_up_another_processs_writes_carries_its_bm25_leg_forward(written, encoders, tmp_path):
    """A write first takes up what another writer added: its BM25 leg then holds those documents (and no longer
    the old text of one they rewrote) with the scores a fresh open gives."""
    path = _copy(written, tmp_path / "col")
    first, second = Collection.open(path), Collection.open(path)

    def upsert(col: Collection, doc: str, text: str) -> None:
        col.upsert([doc], [text], encoders[0].encode_documents([text]), encoders[1].encode_documents([text]))

    upsert(first, "first-1", "Axolotl limb regrowth after amputation in the laboratory")
    upsert(first, "new-1", "Narwhal tusks sense salinity")  # rewrites a document both opened with
    upsert(second, "second-1", "Axolotl limb regrowth")  # takes up the two writes above first
    queries = ["axolotl limb regrowth", NEW_TEXT, "narwhal tusks"]
    got = second.view().bm25_search(queries, 20)
    assert got == Collection.open(path).view().bm25_search(queries, 20)
    assert {"first-1", "second-1"} <= set(got[0]) and "new-1" not in got[1] and list(got[2])[0] == "new-1"


def test_a_reader_takes_up_another_writers_records_within_a_look(written, encoders, tmp_path):
    """A process that only reads sees another's upserts, rewrites and deletes at its next look (every
    LOOK_INTERVAL), by applying the appended journal records to its own stores, exactly as a fresh open sees them."""
    path = _copy(written, tmp_path / "col")
    writer, reader = Collection.open(path), Collection.open(path)
    dense = reader.dense
    for doc, text in (("w-1", "Narwhal tusks sense salinity"), ("new-1", "Narwhal tusks again"), ("w-2", NEW_TEXT)):
        writer.upsert([doc], [text], encoders[0].encode_documents([text]), encoders[1].encode_documents([text]))
    writer.delete(["w-1"])
    _looked(reader)
    assert _searches(reader, encoders) == _searches(Collection.open(path), encoders)
    assert reader.dense is dense and {"w-2", "new-1"} <= reader.view().docs.ids()  # taken up, not reopened
    assert "w-1" not in reader.view().docs.ids()


def test_a_quiet_reader_takes_up_writes_with_no_search_to_start_the_look(written, encoders, tmp_path, monkeypatch):
    """The looks run on a timer: a server that had no search for a while answered its first one from before the
    writes other processes made meanwhile, when a look waited for a search and ran behind it."""
    import time

    import lsr.ingest.collection as collection

    monkeypatch.setattr(collection, "LOOK_INTERVAL", 0.1)
    path = _copy(written, tmp_path / "col")
    reader = Collection.open(path)
    assert "w-1" not in reader.view().docs.ids()
    writer = Collection.open(path)
    writer.upsert(["w-1"], [NEW_TEXT], encoders[0].encode_documents([NEW_TEXT]), encoders[1].encode_documents([NEW_TEXT]))
    time.sleep(3)
    assert "w-1" in reader.view().docs.ids() and "w-1" in reader.view().dense  # the first search after the quiet
    reader.close()
    time.sleep(0.5)
    writer.delete(["w-1"])
    time.sleep(1)
    assert "w-1" in reader.view().docs.ids()  # closed: it no longer looks


def test_a_look_applies_a_dead_writers_journaled_record_and_cuts_its_torn_tail(written, encoders, tmp_path):
    """A writer killed after journaling a record, before any store applied it: the next process to look applies it
    to the sparse index (committed) and its dense index. A torn tail (killed mid-append) reopens the stores, which
    cuts it off."""
    from lsr.ingest.journal import JOURNAL_FILE, Journal

    path = _copy(written, tmp_path / "col")
    reader = Collection.open(path)
    text = "Narwhal tusks sense salinity"
    Journal(path / JOURNAL_FILE, reader._journal.last_seq).append(  # the dead writer's record, applied nowhere
        "upsert", ["dead-1"], [text], encoders[0].encode_documents([text]), encoders[1].encode_documents([text]))
    _looked(reader)
    assert "dead-1" in reader.view().sparse and "dead-1" in reader.view().dense
    assert Collection.open(path).sparse.journal_seq == reader._journal.last_seq  # committed, not only in memory
    whole = (path / JOURNAL_FILE).stat().st_size
    with open(path / JOURNAL_FILE, "ab") as fh:
        fh.write(b"\x10\x00\x00\x00torn")
    dense = reader.dense
    _looked(reader)
    assert "dead-1" in reader.view().sparse and reader.dense is not dense  # reopened
    assert (path / JOURNAL_FILE).stat().st_size == whole
    reader.close()
    assert not verify_collection(path).problems


def test_a_look_never_waits_for_a_folder_another_process_holds(written, encoders, tmp_path):
    import time

    from lsr.files import exclusive_folder

    path = _copy(written, tmp_path / "col")
    writer, reader = Collection.open(path), Collection.open(path)
    writer.upsert(["w-1"], [NEW_TEXT], encoders[0].encode_documents([NEW_TEXT]), encoders[1].encode_documents([NEW_TEXT]))
    with exclusive_folder(path):  # as another process's write or `lsr repair` would
        start = time.monotonic()
        _looked(reader)
        assert time.monotonic() - start < 1.0  # the look gave up at once
        assert "w-1" not in reader.view().docs.ids()  # the last view
    _looked(reader)
    assert "w-1" in reader.view().docs.ids()


def test_a_collection_nothing_holds_is_freed_at_once_with_its_look_thread(written):
    """The folder hold kept its collection's bound method: a dropped collection (a Searcher a script let go) lived
    on in a cycle, its look thread stating the folder every second and warning once the folder was gone, until a
    garbage collection ran."""
    import gc
    import threading
    import weakref

    before = set(threading.enumerate())
    gc.disable()
    try:
        collection = Collection.open(written)
        freed = weakref.ref(collection)
        looks = [thread for thread in set(threading.enumerate()) - before if thread.name == "lsr-look"]
        del collection
        assert freed() is None and len(looks) == 1
    finally:
        gc.enable()
    looks[0].join(timeout=10)  # its next wake finds nothing to look for
    assert not looks[0].is_alive()


def test_a_folder_hold_is_released_by_its_last_holder_from_any_thread(tmp_path):
    """A collection's write and its background dense save share the folder lock: another process (here another
    descriptor) is kept out until both are done, whichever thread finishes last."""
    import threading

    from lsr.files import FolderBusyError, FolderHold, exclusive_folder

    hold = FolderHold(tmp_path)
    with hold.held():
        hold.acquire()  # the save, started by the write
        with pytest.raises(FolderBusyError):
            with exclusive_folder(tmp_path):
                pass
    with pytest.raises(FolderBusyError):  # the write is done, the save still holds it
        with exclusive_folder(tmp_path):
            pass
    saver = threading.Thread(target=hold.release)
    saver.start()
    saver.join()
    with exclusive_folder(tmp_path):
        pass


def test_dense_saves_run_beside_later_writes_and_lose_no_row(written, encoders, tmp_path, monkeypatch):
    """With a save due at every write, saves run in the background while the next writes apply: the last save
    and close leave the dense index on disk with every row and the journal's last seq; verify agrees."""
    import lsr.ingest.collection as collection
    from lsr.search.dense_index import DenseIndex

    monkeypatch.setattr(collection, "save_rows", lambda rows: 1)
    path = _copy(written, tmp_path / "col")
    col = Collection.open(path)
    texts = [f"Write {i}: {NEW_TEXT}" for i in range(12)]
    sparse, dense = encoders[0].encode_documents(texts), encoders[1].encode_documents(texts)
    for i, text in enumerate(texts):
        col.upsert([f"bg-{i}"], [text], sparse[i : i + 1], dense[i : i + 1])
        if i % 4 == 3:
            col.delete([f"bg-{i - 1}"])
    col.close()
    saved = DenseIndex.open(path / "dense")
    assert saved.journal_seq == col._journal.last_seq
    assert set(saved.ids()) == set(col.sparse.doc_ids()) == set(Collection.open(path).dense.ids())
    assert {"bg-0", "bg-11"} <= set(saved.ids()) and "bg-2" not in set(saved.ids())
    np.testing.assert_array_equal(saved.get_vectors(["bg-5"]), dense[5:6])
    assert not verify_collection(path).problems


_SAVING_WRITER = """
import pickle, sys
from pathlib import Path
import lsr.ingest.collection as collection

collection.save_rows = lambda rows: 1  # a background save falls due at every write
col = collection.Collection.open(sys.argv[1])
for doc, text, sparse, dense in pickle.loads(Path(sys.argv[2]).read_bytes()):
    col.upsert([doc], [text], sparse, dense)
    print(doc, flush=True)
"""


def test_kill_9_during_background_dense_saves_loses_no_acknowledged_write(written, encoders, tmp_path):
    """A writer whose every write starts a background dense save, killed mid-stream: every write it acknowledged is
    in every store at the next open, and verify agrees (a save cut short leaves the previous one whole)."""
    import pickle
    import subprocess
    import sys

    texts = [f"Write {i}: {NEW_TEXT}" for i in range(40)]
    sparse, dense = encoders[0].encode_documents(texts), encoders[1].encode_documents(texts)
    plan = tmp_path / "plan.pickle"
    plan.write_bytes(pickle.dumps([(f"k-{i}", t, sparse[i : i + 1], dense[i : i + 1]) for i, t in enumerate(texts)]))
    for kill_after in (3, 11):
        path = _copy(written, tmp_path / f"col-{kill_after}")
        proc = subprocess.Popen([sys.executable, "-c", _SAVING_WRITER, str(path), str(plan)], stdout=subprocess.PIPE,
                                text=True)
        acked = [proc.stdout.readline().strip() for _ in range(kill_after)]
        proc.kill()
        proc.wait(timeout=60)
        col = Collection.open(path)
        assert all(doc.startswith("k-") for doc in acked)
        assert set(acked) <= set(col.sparse.doc_ids()) & set(col.dense.ids()) & col.view().docs.ids()
        assert not verify_collection(path).problems


def test_a_write_after_the_collection_was_indexed_anew_asks_for_a_restart(written, beir_dir, encoders, tmp_path):
    """`lsr index --overwrite` under a process that has the old build open: its next write refuses, naming why,
    rather than mixing the old build's stores into the new one."""
    from lsr.ingest.collection import CollectionReplaced

    path = _copy(written, tmp_path / "col")
    col = Collection.open(path)
    assert main(["index", str(beir_dir / "scifact.tar.gz"), str(path), "--overwrite", "--limit", "5", "--dense",
                 "none", "--max-length", "64", "--quiet"]) == 0
    text = "Tardigrades survive vacuum."
    with pytest.raises(CollectionReplaced, match="indexed anew .* restart it to use the new build"):
        col.upsert(["new-4"], [text], encoders[0].encode_documents([text]), encoders[1].encode_documents([text]))
    assert Collection.open(path).sparse.num_docs == 5 and not verify_collection(path).problems


def test_a_write_after_a_half_applied_one_names_a_rebuild_since(written, beir_dir, encoders, tmp_path):
    """After a write failed half-applied, every later write said so ("an earlier write failed half-applied ...") even
    once the folder was indexed anew, where a reopen serves the new build (and a write that failed because the rebuild
    took its files away named a missing manifest). They now say the collection was indexed anew."""
    import shutil
    import subprocess

    from lsr.ingest.collection import CollectionReplaced

    path = _copy(written, tmp_path / "col")
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path / "sparse")]).returncode != 0:
        pytest.skip("chattr +i is needed to make a folder refuse writes")
    col = Collection.open(path)
    text = "Tardigrades survive vacuum."
    vectors = encoders[0].encode_documents([text]), encoders[1].encode_documents([text])
    try:
        with pytest.raises(OSError):
            col.upsert(["new-4"], [text], *vectors)
        with pytest.raises(CollectionReplaced, match="an earlier write failed half-applied"):
            col.upsert(["new-5"], [text], *vectors)
    finally:
        subprocess.run(["chattr", "-i", str(path / "sparse")], check=True)
    assert main(["index", str(beir_dir / "scifact.tar.gz"), str(path), "--overwrite", "--limit", "5", "--dense",
                 "none", "--max-length", "64", "--quiet"]) == 0
    with pytest.raises(CollectionReplaced, match="was indexed anew"):
        col.upsert(["new-5"], [text], *vectors)


def test_writes_leave_the_dense_index_to_the_journal_until_its_save_at_close(written, encoders, tmp_path):
    """A save rewrites the dense index whole, so writes no longer save it each time: the journal holds the rows
    since its last save, an open (after a crash too) and `lsr verify` replay them, and close saves them."""
    from lsr.search.dense_index import DenseIndex

    path = _copy(written, tmp_path / "col")
    col = Collection.open(path)
    saved, journaled = DenseIndex.open(path / "dense").journal_seq, col._journal.last_seq
    for i in range(3):
        text = f"Write {i}: {NEW_TEXT}"
        col.upsert([f"late-{i}"], [text], encoders[0].encode_documents([text]), encoders[1].encode_documents([text]))
    col.delete(["late-0"])
    assert DenseIndex.open(path / "dense").journal_seq == saved  # no dense save per write
    report = verify_collection(path)
    assert not report.problems and any("ids agree" in line for line in report.checked)
    crashed = shutil.copytree(path, tmp_path / "crashed")  # as if the process died here, before close
    for opened in (Collection.open(crashed), col):
        assert {"late-1", "late-2"} <= set(opened.dense.ids()) and "late-0" not in set(opened.dense.ids())
    assert DenseIndex.open(crashed / "dense").journal_seq == saved  # an open that only reads writes nothing there
    col.close()
    assert DenseIndex.open(path / "dense").journal_seq == col._journal.last_seq == journaled + 4
    assert set(DenseIndex.open(path / "dense").ids()) == set(Collection.open(path).sparse.doc_ids())


def _bm25_runs(path: Path) -> list:
    """BM25 runs over the collection at ``path`` as an open gives them, in order (ties too)."""
    runs = Collection.open(path).view().bm25_search([NEW_TEXT, "vitamin d deficiency", "Write 3", "zorblaxian",
                                                     "narwhal tusks"], 40)
    return [list(run.items()) for run in runs]


def test_the_bm25_leg_saved_with_the_collection_opens_to_the_runs_the_journal_gives(written, encoders, tmp_path,
                                                                                     monkeypatch, caplog):
    """The BM25 leg is saved in the background with the dense index and at close, so an open tokenises only the
    texts written after the save. After a crash past a save, after close, and with the saved leg damaged (a
    warning; verify names it; repair saves it anew), an open's BM25 runs equal those of the leg rebuilt from the
    journal alone."""
    import lsr.ingest.collection as collection
    from lsr.search.bm25_leg_file import LEG_FILE, read_leg_file

    monkeypatch.setattr(collection, "save_rows", lambda rows: 5)
    path = _copy(written, tmp_path / "col")
    leg_file = path / "bm25" / LEG_FILE
    col = Collection.open(path)
    texts = [f"Write {i}: {NEW_TEXT}" for i in range(6)] + ["zorblaxian quasars"]
    tied = ["Narwhal tusks."] * 3  # one score: their order is their rows', and a rewrite moves s-tie-0 last
    _upsert_each(col, encoders, [f"s-tie-{i}" for i in range(3)] + [f"s-{i}" for i in range(7)] + ["s-tie-0"],
                 tied + texts + tied[:1])
    col.delete(["s-1"])
    assert [doc_id for doc_id, _ in _bm25_runs(path)[4]] == ["s-tie-1", "s-tie-2", "s-tie-0"]  # a fresh open
    assert list(col.view().bm25_search(["narwhal tusks"], 40)[0]) == ["s-tie-1", "s-tie-2", "s-tie-0"]  # this one
    col._saver.join()
    saved_seq = int(read_leg_file(leg_file)["about"][1])
    assert 0 < saved_seq < col._journal.last_seq  # saved in the background; later writes are only journaled
    crashed = shutil.copytree(path, tmp_path / "crashed")  # as if killed here
    journal_only = shutil.copytree(path, tmp_path / "journal-only")
    (journal_only / "bm25" / LEG_FILE).unlink()
    want = _bm25_runs(journal_only)
    assert "s-6" in dict(want[3]) and "s-1" not in dict(want[2])
    assert _bm25_runs(crashed) == want
    col.close()
    assert int(read_leg_file(leg_file)["about"][1]) == col._journal.last_seq
    assert _bm25_runs(path) == want
    _flip(leg_file)
    with caplog.at_level("WARNING"):
        assert _bm25_runs(path) == want
    assert f"{LEG_FILE} is damaged" in caplog.text
    assert any(LEG_FILE in problem for problem in verify_collection(path).problems)
    assert main(["repair", str(path)]) == 0  # saved anew, as of the journal's last record
    assert int(read_leg_file(leg_file)["about"][1]) == col._journal.last_seq
    assert not verify_collection(path).problems and _bm25_runs(path) == want


def _flip_length(data: bytearray, start: int) -> None:
    data[start + 3] ^= 0x40  # the record's length: it now runs past the file, so the records after it must be found


def _flip_payload(data: bytearray, start: int) -> None:
    data[start + 40] ^= 0xFF


@pytest.mark.parametrize("damage", [_flip_payload, _flip_length], ids=["payload", "length"])
def test_repair_salvage_keeps_the_journal_records_around_a_damaged_one(written, encoders, tmp_path, capsys, damage):
    """A flipped byte inside one acknowledged record stops every open; `lsr repair --salvage` keeps the records
    before and after it (the writes in it are lost, and said so), keeps the damaged file, and the collection then
    opens, agrees with itself and takes writes."""
    from lsr.ingest.journal import JOURNAL_FILE, scan

    path = _copy(written, tmp_path / "col")
    col = Collection.open(path)
    texts = [f"Salvage {i}: {NEW_TEXT}" for i in range(5)]
    _upsert_each(col, encoders, [f"v-{i}" for i in range(5)], texts)
    gone = sorted(col.sparse.doc_ids())[0]
    col.delete([gone])  # after the damaged record: must stay deleted
    col.close()
    assert main(["repair", str(path), "--salvage"]) == 0
    assert "salvaged" not in capsys.readouterr().out  # a whole journal is left as it is
    journal = path / JOURNAL_FILE
    found = scan(journal)
    hit = next(i for i, record in enumerate(found.records) if record.ids == ["v-2"])
    data = bytearray(journal.read_bytes())
    damage(data, found.ends[hit - 1])
    journal.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="--salvage"):
        Collection.open(path)
    assert main(["repair", str(path), "--salvage"]) == 0  # ends with a verify that passes
    out = capsys.readouterr().out
    assert f"the writes of seq {found.records[hit].seq} are lost" in out and "journal.log.damaged" in out
    assert (path / "journal.log.damaged").read_bytes() == bytes(data)
    col = Collection.open(path)
    view = col.view()
    kept = {f"v-{i}" for i in (0, 1, 3, 4)}
    assert kept <= view.docs.ids() and kept <= set(col.sparse.doc_ids()) and kept <= set(col.dense.ids())
    assert "v-2" not in view.docs.ids() | set(col.sparse.doc_ids()) | set(col.dense.ids())
    assert gone not in view.docs.ids() and gone not in set(col.sparse.doc_ids())
    assert "v-3" in view.bm25_search(["Salvage 3"], 5)[0]
    _upsert_each(col, encoders, ["v-9"], texts[:1])
    col.close()
    assert "v-9" in Collection.open(path).view().docs.ids()
    assert not verify_collection(path).problems


def test_repair_without_salvage_never_cuts_a_damaged_last_record_it_cannot_judge(written, encoders, tmp_path, capsys):
    """With the sparse index gone, the dense index's older seq was all repair knew: a damaged last record (which
    verify reports as corruption) was cut as a crash's torn tail and its acknowledged write lost without a word."""
    from lsr.ingest.journal import JOURNAL_FILE, scan

    path = _copy(written, tmp_path / "col")
    col = Collection.open(path)
    _upsert_each(col, encoders, ["last-1", "last-2"], [NEW_TEXT, f"Again: {NEW_TEXT}"])
    col.close()
    journal = path / JOURNAL_FILE
    found = scan(journal)
    data = bytearray(journal.read_bytes())
    _flip_payload(data, found.ends[-2])  # inside the last record, whole and acknowledged
    journal.write_bytes(bytes(data))
    shutil.rmtree(path / "sparse")
    assert main(["verify", str(path)]) == 1 and "--salvage" in capsys.readouterr().out
    assert main(["repair", str(path)]) == 2
    assert "nothing tells that from a write a crash cut off" in capsys.readouterr().err
    assert journal.read_bytes() == bytes(data) and not (path / "sparse").exists()  # nothing cut, nothing half-built
    assert main(["repair", str(path), "--salvage"]) == 0
    assert f"the writes of seq {found.records[-1].seq} are lost" in capsys.readouterr().out  # lost, and said so


def test_an_emptied_journal_names_the_repair_that_works(written, encoders, tmp_path, capsys):
    """An emptied journal behind applied writes said "run `lsr repair` to rebuild from it", and that repair refused
    with the same line: only --salvage, which the message never named, rebuilds."""
    from lsr.ingest.journal import JOURNAL_FILE

    path = _copy(written, tmp_path / "col")
    col = Collection.open(path)
    _upsert_each(col, encoders, ["gone-1"], [NEW_TEXT])
    col.close()
    (path / JOURNAL_FILE).write_bytes(b"")
    assert main(["repair", str(path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"`lsr repair {path} --salvage` rebuilds from the build and the records left" in last, last
    assert main(["repair", str(path), "--salvage"]) == 0 and not verify_collection(path).problems


def test_kill_9_during_repair_leaves_the_old_index_that_opens(written, tmp_path):
    """repair deleted sparse/ and rebuilt it in place: a Ctrl-C or kill -9 meanwhile left a collection that every
    open refused. It now builds beside it and swaps it in."""
    import signal
    import subprocess
    import sys
    import time

    path = _copy(written, tmp_path / "col")
    want = sorted(Collection.open(path).sparse.doc_ids())
    proc = subprocess.Popen([sys.executable, "-m", "lsr", "repair", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (path / "sparse.rebuild").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sorted(Collection.open(path).sparse.doc_ids()) == want and not verify_collection(path).problems
    assert not (path / "sparse.rebuild").exists()  # the open dropped the half-built index (it stayed till a repair)
    assert main(["repair", str(path)]) == 0
    assert not (path / "sparse.rebuild").exists() and not (path / "sparse.replaced").exists()
    assert sorted(Collection.open(path).sparse.doc_ids()) == want


def test_a_repair_that_fails_on_a_full_disk_removes_its_half_built_index(written, tmp_path):
    """The half-built sparse.rebuild/ stayed on the full disk, holding its space, until the next open."""
    import subprocess
    import sys

    path = _copy(written, tmp_path / "col")
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (100_000,) * 2); "  # a term table's
              "from lsr.cli import main; sys.exit(main(sys.argv[1:]))")  # 244 KB cannot be written
    run = subprocess.run([sys.executable, "-c", script, "repair", str(path), "--quiet"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 1 and "File too large" in run.stderr.splitlines()[-1], run.stderr
    assert not (path / "sparse.rebuild").exists()
    assert not verify_collection(path).problems


def test_a_folder_where_the_journal_should_be_is_named_by_verify_and_open(written, tmp_path):
    from lsr.ingest.journal import JOURNAL_FILE

    path = _copy(written, tmp_path / "col")
    (path / JOURNAL_FILE).unlink()
    (path / JOURNAL_FILE).mkdir()  # verify called this intact, and the next upsert died in a traceback
    assert any("journal.log is not a file" in problem for problem in verify_collection(path).problems)
    with pytest.raises(CorruptFileError, match="journal.log is not a file"):
        Collection.open(path)


def test_verify_checks_problems_again_after_a_write_under_way(written, tmp_path, monkeypatch):
    """A check beside a write can find a file that write just replaced (here a sparse segment file missing while the
    folder is held, as a merge leaves it between its commit and the new view): it is checked again once the write is
    done, so a whole collection is not reported damaged. A folder held too long keeps the problems, with a note."""
    import threading
    import time

    import lsr.ingest.verify as verify
    from lsr.files import exclusive_folder

    path = _copy(written, tmp_path / "col")
    segment = sorted((path / "sparse").glob("s*.npy"))[0]
    aside = tmp_path / segment.name
    segment.rename(aside)
    held = threading.Event()

    def write_under_way() -> None:
        with exclusive_folder(path):
            held.set()
            time.sleep(2)
            aside.rename(segment)

    writer = threading.Thread(target=write_under_way)
    writer.start()
    held.wait()
    report = verify_collection(path)
    writer.join()
    assert not report.problems and not any("another process held" in line for line in report.notes)
    segment.rename(aside)
    monkeypatch.setattr(verify, "WRITE_WAIT", 0.5)
    with exclusive_folder(path):
        report = verify_collection(path)
    assert any(segment.name in line for line in report.problems)
    assert report.notes[-1].startswith(f"another process held {path} for 0 s, so these problems were not checked")
