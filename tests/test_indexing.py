"""`lsr index`: real models, real files, real subprocesses killed mid-run and resumed bit-identically."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from signal_helpers import interruptible

from lsr.cli import main as cli_main
from lsr.ingest.collection import Collection
from lsr.ingest.layout import BUILD_STATE, META_FILE, MOVING
from lsr.ingest.indexing import IndexOptions, build_collection
from lsr.search.models import ModelChanged
from lsr.sparse import SparseBatch

N_DOCS = 96
EVERY = 6  # documents per checkpointed shard: 16 shards, so a kill lands mid-run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, scifact) -> Path:
    """Real SciFact documents, cut to 64 tokens at encoding: long enough that a run can be interrupted mid-way."""
    path = tmp_path_factory.mktemp("corpus") / "titles.jsonl"
    ids = list(scifact.corpus)[:N_DOCS]
    with open(path, "w", encoding="utf-8") as fh:
        for doc_id in ids:
            doc = scifact.corpus[doc_id]
            fh.write(json.dumps({"_id": doc_id, "title": doc["title"], "text": doc["text"]}) + "\n")
    return path


def options(**overrides) -> IndexOptions:
    return IndexOptions(**{"checkpoint_every": EVERY, "max_length": 64, "threads": 1, **overrides})


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """An uninterrupted build, in-process."""
    out = tmp_path_factory.mktemp("ref") / "col"
    threads = torch.get_num_threads()
    try:
        summary = build_collection(corpus, out, options(), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert summary.docs == N_DOCS and summary.postings > N_DOCS
    return out


def checksums(out: Path) -> dict:
    return json.loads((out / META_FILE).read_text())["checksums"]


def test_collection_holds_what_was_indexed(reference, corpus):
    col = Collection.open(reference)
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert col.meta["n_docs"] == col.sparse.num_docs == len(col.dense) == N_DOCS
    assert col.meta["shards"] == N_DOCS // EVERY
    assert col.text([rows[5]["_id"], "nope"]) == [f'{rows[5]["title"]} {rows[5]["text"]}', None]
    # each document's own vectors find it first
    first = [r["_id"] for r in rows[:5]]
    vectors = col.sparse.get_vectors(first)
    for i, doc_id in enumerate(first):
        terms, weights = vectors.row(i)
        assert col.sparse.search(dict(zip(terms.tolist(), weights.tolist())), k=1)[0].doc_id == doc_id
    ids, scores = col.dense.search(col.dense.get_vectors(first), k=1)
    assert ids[:, 0].tolist() == first
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert all(len(v) == 64 for v in col.meta["checksums"].values())
    assert not (reference / BUILD_STATE).exists()


def test_dense_documents_take_bf16_where_the_cpu_has_it_and_agree_with_fp32(reference, corpus):
    """A bulk build's dense model runs bf16 on a CPU with native bf16 (twice as fast); SPLADE and queries stay fp32."""
    from lsr.encode.dense import DenseEncoder
    from lsr.encode.inputs import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    assert options(device="cpu").encoding() == {"device": "cpu", "dtype": "fp32", "dense_dtype": "bf16" if native else "fp32"}
    assert options(device="cpu", dtype="fp32").encoding()["dense_dtype"] == "fp32"
    assert "dense_dtype" not in options(device="cpu", dense_model=None).encoding()
    col = Collection.open(reference)
    assert col.meta["encoded_with"] == options().encoding()
    rows = [json.loads(line) for line in corpus.read_text().splitlines()][:16]
    stored = col.dense.get_vectors([r["_id"] for r in rows])
    exact = DenseEncoder.from_pretrained("minilm", device="cpu", dtype="fp32").encode_documents(
        [f'{r["title"]} {r["text"]}' for r in rows])
    assert (stored * exact).sum(1).min() >= 0.9999
    assert bool(np.abs(stored - exact).max() > 1e-5) == (col.meta["encoded_with"]["dense_dtype"] == "bf16")


def test_the_vocabulary_is_stored_once_per_collection(reference, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    from lsr.ingest.layout import read_vector_shards, shard_name

    vocab = json.loads((reference / "vocab.json").read_text())
    assert len(vocab) == 30522 and Collection.open(reference).meta["vocab"] == "vocab.json"
    first = reference / shard_name("vectors", 0)
    assert b"lsr.vocab" not in pq.read_schema(first).metadata and first.stat().st_size < 20_000
    ((batch, ids),) = read_vector_shards(reference, 1)
    assert list(batch.vocab) == vocab
    older = tmp_path / "older"  # a collection from before vocab.json: its shards carry the vocabulary
    shutil.copytree(reference, older)
    (older / "vocab.json").unlink()
    batch.write_parquet(older / shard_name("vectors", 0), ids=ids, with_vocab=True)
    ((again, _),) = read_vector_shards(older, 1)
    assert list(again.vocab) == vocab


def _cli(*args: str) -> list[str]:
    """`lsr index args` in a child that takes Ctrl-C as a terminal's job does."""
    return interruptible("-m", "lsr", "index", *args)


def _shards(out: Path) -> int:
    try:
        return json.loads((out / BUILD_STATE).read_text())["shards"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _interrupt_after(cmd: list[str], out: Path, shards: int, sig: int) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _shards(out) < shards and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def test_ctrl_c_kill_9_and_sigterm_then_resume_is_bit_identical(corpus, reference, tmp_path):
    out = tmp_path / "col"
    args = [str(corpus), str(out), "--checkpoint-every", str(EVERY), "--max-length", "64", "--threads", "1", "--quiet"]
    first = _interrupt_after(_cli(*args), out, 2, signal.SIGINT)
    assert first.returncode == 130, first.stderr
    assert f"Continue with: {shlex.join(['lsr', 'index', *args, '--resume'])}\n" in first.stderr
    done = _shards(out)
    assert 2 <= done < N_DOCS // EVERY and not (out / META_FILE).exists()

    refused = subprocess.run(_cli(*args), capture_output=True, text=True)
    assert refused.returncode == 2 and "--resume" in refused.stderr and "--overwrite" in refused.stderr

    second = _interrupt_after(_cli(*args, "--resume"), out, done + 2, signal.SIGKILL)
    assert second.returncode == -signal.SIGKILL
    assert _shards(out) >= done + 2 and not (out / META_FILE).exists()

    done = _shards(out)  # a scheduler's SIGTERM stops it like Ctrl-C: the shards are kept, the hint is printed
    termed = _interrupt_after(_cli(*args, "--resume"), out, done + 2, signal.SIGTERM)
    assert termed.returncode == 128 + signal.SIGTERM, termed.stderr
    assert f"Continue with: {shlex.join(['lsr', 'index', *args, '--resume'])}\n" in termed.stderr
    assert termed.stderr.endswith("terminated\n") and _shards(out) >= done + 2

    done = _shards(out)  # a closed terminal or ssh session's SIGHUP killed it at once, with no hint
    hung_up = _interrupt_after(_cli(*args, "--resume"), out, done + 1, signal.SIGHUP)
    assert hung_up.returncode == 128 + signal.SIGHUP, hung_up.stderr
    assert f"Continue with: {shlex.join(['lsr', 'index', *args, '--resume'])}\n" in hung_up.stderr
    assert hung_up.stderr.endswith("hung up (SIGHUP)\n") and _shards(out) >= done + 1

    (out / ".lsr-build.json.4242.tmp").write_text('{"docs": ')  # a kill -9 inside the checkpoint's write leaves it
    third = subprocess.run(_cli(*args, "--resume"), capture_output=True, text=True)
    assert third.returncode == 0, third.stderr
    assert not list(out.glob("*.tmp"))  # it stayed in the finished collection
    assert f"docs            {N_DOCS}" in third.stdout and "resumed after" in third.stdout
    assert checksums(out) == checksums(reference)


def test_a_second_build_of_a_collection_being_built_fails_at_once_and_harms_nothing(corpus, reference, tmp_path,
                                                                                      monkeypatch):
    """While one build writes a collection, another `lsr index` into it (--resume or --overwrite) stops at once with
    one line, and an `lsr repair` of it once it has waited for the write (a server's) it takes it for; the first build
    ends as if alone."""
    from lsr.files import FolderBusyError, exclusive_folder
    from lsr.ingest import repair
    from lsr.ingest.repair import repair_collection

    out = tmp_path / "col"
    args = [str(corpus), str(out), "--checkpoint-every", str(EVERY), "--max-length", "64", "--threads", "1", "--quiet"]
    refused = []

    def second_builds(shard: int) -> None:
        if shard == 2:
            refused.extend(subprocess.run(_cli(*args, extra), capture_output=True, text=True, timeout=120)
                           for extra in ("--resume", "--overwrite"))
            # a search of it meanwhile is told it is being built, not that a build was interrupted (and to --resume)
            refused.append(subprocess.run([sys.executable, "-m", "lsr", "search", str(out), "aspirin", "--quiet"],
                                          capture_output=True, text=True, timeout=120))

    build_collection(corpus, out, options(), progress=False, on_shard=second_builds)
    assert len(refused) == 3
    searched = refused.pop()
    assert searched.returncode == 1 and searched.stderr == (f"lsr search: error: {out} is being indexed right now by "
                                                            "another process; it opens once that `lsr index` has finished\n")
    for run in refused:
        assert run.returncode == 1, run.stderr
        assert run.stderr == (f"lsr index: error: another process (`lsr index`, `lsr train`, `lsr repair` or a "
                              f"writer such as `lsr serve`) is writing {out} right now; wait for it to finish or stop "
                              "it, then run this again\n")
    assert checksums(out) == checksums(reference)
    monkeypatch.setattr(repair, "WRITE_WAIT", 0.5)
    with exclusive_folder(out):
        with pytest.raises(FolderBusyError, match="is writing"):
            repair_collection(out)
    assert repair_collection(out)[0].startswith("rebuilt the sparse index")  # free again once the holder is gone


def test_an_overwrite_waits_for_a_write_under_way_in_the_collection(corpus, reference, tmp_path):
    """A server taking writes holds a collection's folder for each one: `lsr index --overwrite` under it failed at
    once ("is writing ... right now") 4 times in 7; it now waits for the write, as writes wait for each other."""
    import shutil
    import threading

    from lsr.files import exclusive_folder

    out = shutil.copytree(reference, tmp_path / "col")
    held, release = threading.Event(), threading.Event()

    def write_under_way() -> None:
        with exclusive_folder(out):
            held.set()
            release.wait(30)

    writer = threading.Thread(target=write_under_way)
    writer.start()
    held.wait(30)
    threading.Timer(2.0, release.set).start()
    try:
        summary = build_collection(corpus, out, options(limit=5), overwrite=True, progress=False)
    finally:
        release.set()
        writer.join()
    assert summary.docs == 5


def test_a_filesystem_that_cannot_lock_gets_a_warning_not_a_failed_build(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    from lsr.files import exclusive_folder

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # as on some FUSE mounts of object storage
    with caplog.at_level("WARNING"), exclusive_folder(tmp_path / "col"):
        assert (tmp_path / "col").is_dir()
    assert f"cannot lock {tmp_path / 'col'} on this filesystem (No locks available)" in caplog.text


def test_existing_output_needs_resume_or_overwrite(reference, corpus, tmp_path):
    with pytest.raises(FileExistsError, match="--resume to continue it or --overwrite"):
        build_collection(corpus, reference, options(), progress=False)
    again = build_collection(corpus, reference, options(), resume=True, progress=False)
    assert again.already_complete and again.checksums == checksums(reference)
    encoded = options().encoding()
    assert f"encoded on      {encoded['device']}: SPLADE {encoded['dtype']}, dense {encoded['dense_dtype']}" in again.format()
    with pytest.raises(ValueError, match=r"built with fields=title,text \(now title\)"):
        build_collection(corpus, reference, options(fields=("title",)), resume=True, progress=False)
    stranger = tmp_path / "not-a-collection"
    stranger.mkdir()
    (stranger / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an lsr collection"):
        build_collection(corpus, stranger, options(), overwrite=True, progress=False)
    assert (stranger / "precious.txt").exists()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")  # it failed as "dangling: File exists"
    with pytest.raises(ValueError, match=f"dangling is a link to {tmp_path / 'nowhere'}, which does not exist"):
        build_collection(corpus, dangling, options(), progress=False)


def test_resume_refuses_a_changed_source_and_overwrite_starts_over(corpus, tmp_path):
    source = tmp_path / "c.jsonl"
    source.write_text(corpus.read_text())
    out = tmp_path / "col"

    def stop(shard: int) -> None:
        if shard == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_collection(source, out, options(dense_model=None), progress=False, on_shard=stop)
    lines = source.read_text().splitlines()
    lines[3] = json.dumps({"_id": json.loads(lines[3])["_id"], "title": "a different title"})
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="differ from the ones already encoded"):
        build_collection(source, out, options(dense_model=None), resume=True, progress=False)
    with pytest.raises(ValueError, match=r"started with checkpoint_every=6 \(now 16\); rerun with the same options"):
        build_collection(source, out, options(dense_model=None, checkpoint_every=16), resume=True, progress=False)
    # --shards 2 went on into shard folders beside the first run's parts (then no verb could open or repair it),
    # and another dtype went on in a second precision and recorded it for the whole collection
    with pytest.raises(ValueError, match=r"started with shards=1 \(now 2\)"):
        build_collection(source, out, options(dense_model=None, shards=2), resume=True, progress=False)
    with pytest.raises(ValueError, match=r"started with precision=dtype:fp32 \(now dtype:bf16\)"):
        build_collection(source, out, options(dense_model=None, dtype="bf16"), resume=True, progress=False)
    assert not any(out.glob("shard-*"))
    summary = build_collection(source, out, options(dense_model=None, limit=20), overwrite=True, progress=False)
    assert summary.docs == 20 and not (out / ".lsr-replaced").exists()  # the replaced build went once this was whole
    col = Collection.open(out)
    assert col.dense is None and col.text([json.loads(lines[3])["_id"]]) == ["a different title"]
    before = checksums(out)
    # An --overwrite that fails before its first checkpoint (a bad row, a misspelt model) used to leave nothing:
    # the collection it would have replaced is back, whole. A corpus inside the folder it clears is refused.
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:2] + [json.dumps({"text": "no id"})]) + "\n")
    with pytest.raises(ValueError, match="line 3"):
        build_collection(bad, out, options(dense_model=None), overwrite=True, progress=False)
    with pytest.raises(Exception, match="no-such-model"):
        build_collection(source, out, options(dense_model=None, model="no-such-model"), overwrite=True, progress=False)
    assert checksums(out) == before and not (out / ".lsr-replaced").exists()
    assert Collection.open(out).text([json.loads(lines[3])["_id"]]) == ["a different title"]
    inside = out / "corpus.jsonl"
    inside.write_text(source.read_text())
    with pytest.raises(ValueError, match="lies inside .*, which --overwrite clears; move it out first"):
        build_collection(inside, out, options(dense_model=None), overwrite=True, progress=False)


class _Killed(BaseException):
    """Stands for a kill -9 at one rename: nothing of the build's own clean-up runs for it (it is outside them)."""


def test_resume_refuses_a_model_folder_whose_files_changed_since(corpus, tmp_path):
    """A folder retrained in place while the build was stopped: the resume encoded the rest with the new weights
    and recorded one model for a collection of two."""
    from lsr.encode.models import resolve_model

    model = tmp_path / "model"
    shutil.copytree(resolve_model("splade-tiny"), model)

    def stop(shard: int) -> None:
        if shard == 2:
            raise KeyboardInterrupt

    out = tmp_path / "col"
    with pytest.raises(KeyboardInterrupt):
        build_collection(corpus, out, options(model=str(model), dense_model=None), progress=False, on_shard=stop)
    config = model / "config.json"
    config.write_text(config.read_text() + "\n")
    with pytest.raises(ValueError, match=f"started with {model} as that folder was then \\(its model files changed"):
        build_collection(corpus, out, options(model=str(model), dense_model=None), resume=True, progress=False)


def test_a_kill_at_any_move_of_an_overwrite_loses_nothing_of_the_collection_it_replaces(reference, corpus, tmp_path,
                                                                                    monkeypatch):
    """--overwrite moves the old collection's files aside one by one, and back when the run fails before its first
    checkpoint. A kill between two moves left the files split between COLLECTION and .lsr-replaced, and the next
    --overwrite deleted COLLECTION's part as a partial build. At every rename: a kill there, then any `lsr index`
    into the folder (this one fails on a bad row, so it puts the old collection back) leaves the collection whole."""
    from lsr.ingest.layout import read_meta

    bad = tmp_path / "bad.jsonl"
    bad.write_text(corpus.read_text().splitlines()[0] + "\n" + json.dumps({"text": "no id"}) + "\n")
    before, rename, kill_at = checksums(reference), os.rename, 1
    while True:
        out = shutil.copytree(reference, tmp_path / f"col-{kill_at}")
        calls = []

        def killing_rename(src, dst):
            calls.append(src)
            if len(calls) == kill_at:
                raise _Killed
            rename(src, dst)

        monkeypatch.setattr(os, "rename", killing_rename)
        try:
            build_collection(bad, out, options(), overwrite=True, progress=False)
        except _Killed:
            pass
        except ValueError as exc:  # the run's renames ended before the kill_at'th: every point was tried
            assert "line 2" in str(exc) and kill_at > 10
            break
        finally:
            monkeypatch.setattr(os, "rename", rename)
        try:
            read_meta(out)
        except ValueError as exc:  # "is not an lsr collection", where the old one lay aside whole
            assert "an `lsr index --overwrite` stopped before the new collection was whole; the one it replaces" in str(exc)
        if not (out / MOVING).is_dir() and not (out / META_FILE).is_file():  # only the old one, set aside whole
            with pytest.raises(ValueError, match="nothing to resume .* stopped before its first checkpoint"):
                build_collection(bad, out, options(), resume=True, progress=False)  # it read a missing file
        with pytest.raises(ValueError, match="line 2"):
            build_collection(bad, out, options(), overwrite=True, progress=False)
        assert checksums(out) == before and sorted(p.name for p in out.iterdir()) == sorted(
            p.name for p in reference.iterdir()), f"killed at rename {kill_at}"
        assert Collection.open(out).sparse.num_docs == Collection.open(reference).sparse.num_docs
        kill_at += 1


def test_a_ctrl_c_right_after_the_set_aside_of_an_overwrite_puts_the_collection_back(reference, corpus, tmp_path,
                                                                                     monkeypatch):
    """Between moving the old collection aside and the build's own clean-up, a Ctrl-C left only .lsr-replaced, and
    `lsr index` said the folder "holds the collection it had" (helper audit)."""
    import lsr.ingest.indexing as indexing

    out, before, fsync_dir = shutil.copytree(reference, tmp_path / "col"), checksums(reference), indexing.fsync_dir

    def interrupted_after_the_set_aside(path):
        fsync_dir(path)
        if (path / ".lsr-replaced").is_dir():
            raise KeyboardInterrupt

    monkeypatch.setattr(indexing, "fsync_dir", interrupted_after_the_set_aside)
    with pytest.raises(KeyboardInterrupt):
        build_collection(corpus, out, options(), overwrite=True, progress=False)
    monkeypatch.undo()
    assert checksums(out) == before and sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in reference.iterdir())


def test_bad_rows_stop_with_the_line_or_are_skipped(tmp_path, capsys):
    rows = [
        json.dumps({"_id": "a", "text": "aspirin and heart attacks"}),
        json.dumps({"_id": "a", "text": "a duplicate"}),
        json.dumps({"text": "no id at all"}),
        json.dumps({"_id": "b", "text": ["not", "a", "string"]}),
        "{not json",
        json.dumps({"_id": "c", "text": "vitamin d and bones"}),
        json.dumps({"_id": "d", "body": "the text is under a key --fields does not name"}),
    ]
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(rows) + "\n")
    assert cli_main(["index", str(source), str(tmp_path / "fail"), "--dense", "none", "--quiet"]) == 2
    assert "line 2: duplicate id 'a'" in capsys.readouterr().err
    assert not (tmp_path / "fail").exists()  # nothing half-made blocks the retry
    out = tmp_path / "skip"
    assert cli_main(["index", str(source), str(out), "--dense", "none", "--quiet", "--on-error", "skip"]) == 0
    report = capsys.readouterr().out
    assert "docs            2" in report and "skipped rows    5" in report
    for reason in ("duplicate id: 1", "missing id: 1", "non-string text: 1", "invalid JSON: 1", "missing text: 1"):
        assert reason in report
    assert Collection.open(out).sparse.num_docs == 2
    only_missing = tmp_path / "missing.jsonl"
    only_missing.write_text(rows[0] + "\n" + rows[-1] + "\n")
    assert cli_main(["index", str(only_missing), str(tmp_path / "m"), "--dense", "none", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"lsr index: error: {only_missing} line 2: none of the text fields ['title', 'text'] is present" in err


def test_a_resume_encodes_again_a_part_damaged_after_its_checkpoint(corpus, reference, tmp_path, caplog):
    """A dense part changed between the kill and --resume was built in, and its crc sealed into lsr.json: one
    document came first for every dense query and `lsr verify` called the collection intact. A part cut short or
    gone failed in numpy or zstd, naming no file, and the message offered the same --resume again. The resume now
    names the part and encodes it, and those after it, again."""
    out = tmp_path / "col"

    def stop_at(last: int):
        def stop(shard: int) -> None:
            if shard == last:
                raise KeyboardInterrupt
        return stop

    with pytest.raises(KeyboardInterrupt):
        build_collection(corpus, out, options(), progress=False, on_shard=stop_at(4))
    part = out / "dense" / "embeddings-00001.npy"
    data = bytearray(part.read_bytes())
    data[-1] ^= 0x40  # one float of the part's last document grows
    part.write_bytes(bytes(data))
    (out / "docs" / "part-00003.parquet").unlink()
    with pytest.raises(KeyboardInterrupt), caplog.at_level("WARNING", logger="lsr.ingest.indexing"):
        build_collection(corpus, out, options(), resume=True, progress=False, on_shard=stop_at(2))
    assert f"part 1 changed after its checkpoint ({part} fails its crc32 checksum" in caplog.text
    assert "encoding it and the 2 after it again" in caplog.text
    summary = build_collection(corpus, out, options(), resume=True, progress=False)
    assert summary.resumed_from == 2 * EVERY  # the rewound checkpoint's parts were kept
    assert checksums(out) == checksums(reference)


def test_a_part_damaged_ahead_of_the_checkpoints_prefix_is_named_and_dropped(tmp_path, caplog):
    """A part Ray finished out of order, beyond the prefix, and damaged after the kill: it was encoded again without
    the warning a damaged part of the prefix gets."""
    from lsr.files import file_record
    from lsr.ingest.indexing import BuildState, check_parts

    part = tmp_path / "vectors" / "part-00002.parquet"
    part.parent.mkdir()
    part.write_bytes(b"encoded vectors")
    state = BuildState(settings={}, ahead={"2": {"counts": [[1, 1, 0]], "files": [file_record(part, tmp_path)]}})
    part.write_bytes(b"encoded vectorz")
    with caplog.at_level("WARNING", logger="lsr.ingest.indexing"):
        check_parts(tmp_path, state)
    assert not state.ahead
    assert "part 2 changed after its checkpoint" in caplog.text and "encoding it again" in caplog.text


def test_a_bad_row_after_checkpoints_resumes_with_on_error_skip(tmp_path, capsys):
    rows = [json.dumps({"_id": f"d{i}", "text": f"note {i} about aspirin"}) for i in range(14)]
    rows.insert(13, json.dumps({"_id": "d3", "text": "a duplicate after two shards"}))
    source = tmp_path / "late-bad.jsonl"
    source.write_text("\n".join(rows) + "\n")
    out = tmp_path / "col"
    args = ["index", str(source), str(out), "--dense", "none", "--quiet", "--checkpoint-every", "6", "--max-length", "16"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err  # a failure, not only a Ctrl-C, says how to keep the checkpointed parts
    assert "line 14: duplicate id 'd3'" in err
    assert (f"the encoded shards are kept; once the cause below is fixed, continue with: "
            f"{shlex.join(['lsr', *args, '--resume'])}\n") in err
    assert _shards(out) == 2  # the encoded shards are kept
    assert cli_main([*args, "--resume", "--checkpoint-every", "5"]) == 2  # a resume refused: it offered itself again
    err = capsys.readouterr().err
    assert "cannot resume" in err and "checkpoint_every=6 (now 5)" in err and "continue with" not in err
    assert cli_main([*args, "--resume", "--on-error", "skip"]) == 0
    report = capsys.readouterr().out
    assert "docs            14 (resumed after 12)" in report and "duplicate id: 1" in report
    # an --overwrite that fails after a checkpoint keeps the collection it replaces aside, and says where
    assert cli_main([*args, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"the collection --overwrite replaces stays in {out / '.lsr-replaced'} until the new one is whole" in err
    assert (out / ".lsr-replaced" / "lsr.json").is_file()
    with pytest.raises(ValueError, match=r"--resume`; the collection `--overwrite` replaces is kept in .*\.lsr-replaced"):
        Collection.open(out)  # every verb said only "unfinished ... --resume", not where the old collection is
    assert cli_main([*args, "--resume", "--on-error", "skip"]) == 0
    assert not (out / ".lsr-replaced").exists()


def test_open_explains_unfinished_and_missing_collections(tmp_path):
    with pytest.raises(FileNotFoundError, match="lsr index"):
        Collection.open(tmp_path / "absent")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / BUILD_STATE).write_text("{}")
    with pytest.raises(ValueError, match="--resume"):
        Collection.open(tmp_path / "half")


def test_upsert_and_delete_keep_texts_in_step(reference, corpus, tmp_path):
    import shutil

    from lsr.encode.dense import DenseEncoder
    from lsr.encode.splade import SpladeEncoder

    path = tmp_path / "col"
    shutil.copytree(reference, path)
    col = Collection.open(path)
    first = json.loads(corpus.read_text().splitlines()[0])["_id"]
    text = "Intermittent fasting improves insulin sensitivity"
    sparse = SpladeEncoder.from_pretrained("splade-tiny", device="cpu").encode_documents([text])
    dense = DenseEncoder.from_pretrained("minilm", device="cpu").encode_documents([text])
    col.upsert(["new"], [text], sparse, dense)
    assert col.delete([first, "ghost"]) == ["ghost"]
    reopened = Collection.open(path)
    assert reopened.text(["new", first]) == [text, None]
    assert reopened.sparse.num_docs == len(reopened.dense) == N_DOCS
    assert reopened.dense.search(dense, k=1)[0][0, 0] == "new"


@pytest.mark.parametrize("hnsw_m", [None, 16])
def test_dense_index_upserts_removes_and_round_trips(tmp_path, hnsw_m):
    from lsr.search.dense_index import DenseIndex

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"d{i}" for i in range(300)]
    index = DenseIndex.create(32, hnsw_m)
    index.add(ids, vectors)
    found, scores = index.search(vectors[:20], k=3)
    assert found[:, 0].tolist() == ids[:20]
    assert index.remove(["d0", "ghost"]) == ["ghost"]
    index.add(["d1"], -vectors[1])  # replace: the old vector is gone
    found, _ = index.search(vectors[:2], k=300)
    assert "d0" not in found[0] and found[1, 0] != "d1" and len(index) == 299
    np.testing.assert_allclose(index.get_vectors(["d1"])[0], -vectors[1])
    index.save(tmp_path / "a")
    again = DenseIndex.open(tmp_path / "a")
    assert again.kind == ("hnsw" if hnsw_m else "flat")
    np.testing.assert_array_equal(again.search(vectors[:5], k=4)[0], index.search(vectors[:5], k=4)[0])
    rebuilt = DenseIndex.create(32, hnsw_m)
    rebuilt.add(ids, vectors)
    rebuilt.remove(["d0"])
    rebuilt.add(["d1"], -vectors[1])
    rebuilt.save(tmp_path / "b")
    assert DenseIndex.checksum(tmp_path / "a") == DenseIndex.checksum(tmp_path / "b")  # reproducible bytes
    with pytest.raises(ValueError, match="dimension 32"):
        index.search(np.zeros((1, 8), np.float32), k=1)
    missing, padded = index.search(vectors[:1], k=400)
    assert missing[0, -1] is None and padded[0, -1] == -np.inf


def test_a_build_warms_up_no_length_past_its_documents():
    """A build encodes documents only: its SPLADE encoder's query side is no longer than they are, so a GPU's
    load-time warm-up (``warm_up_shapes`` up to the longer of the two) compiles no bucket a build never runs."""
    from lsr.ingest.indexing import load_encoders
    from lsr.kernels.pool_triton import warm_up_shapes

    sparse, _ = load_encoders(IndexOptions(max_length=100, dense_model=None))
    assert sparse.max_length == sparse.query_max_length == 100
    assert max(length for _, length in warm_up_shapes(max(sparse.max_length, sparse.query_max_length))) == 112


def test_a_model_folder_given_relative_is_recorded_absolute_and_searches_from_anywhere(tmp_path, monkeypatch, capsys):
    """`--model mymodel` was stored as typed: a search from another folder said the model was not installed, and from
    a folder holding another `mymodel` it searched with that model without a word."""
    from lsr.encode.models import resolve_model

    shutil.copytree(resolve_model("splade-tiny"), tmp_path / "mymodel")
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in
                                                 enumerate(["aspirin and the heart", "vitamin d and bones"])))
    monkeypatch.chdir(tmp_path)
    assert cli_main(["index", "docs.jsonl", "col", "--model", "mymodel", "--dense", "none", "--max-length", "32",
                          "--quiet"]) == 0
    assert json.loads((tmp_path / "col" / META_FILE).read_text())["model"] == str(tmp_path / "mymodel")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert cli_main(["search", str(tmp_path / "col"), "aspirin heart", "--mode", "sparse", "--k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["doc_id"] == "d0"


def test_a_collection_and_an_index_opened_by_a_relative_path_survive_a_change_of_folder(tmp_path, monkeypatch):
    """They kept the path as given: after os.chdir, `doc` said a file was damaged, an upsert said the folder was no
    collection, and empty folders and a LOCK were made under the new working folder."""
    from lsr.index import InvertedIndex
    from lsr.search.searcher import Searcher

    (tmp_path / "docs.jsonl").write_text(json.dumps({"_id": "d0", "text": "aspirin and the heart"}) + "\n")
    assert cli_main(["index", str(tmp_path / "docs.jsonl"), str(tmp_path / "col"), "--dense", "none", "--bm25", "none",
                     "--max-length", "32", "--quiet"]) == 0
    InvertedIndex.build(tmp_path / "idx", SparseBatch(np.array([0, 1]), np.array([1]), np.array([1.0]), 10), ["a"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    with Searcher.open("col") as searcher:
        index = InvertedIndex.open("idx")
        monkeypatch.chdir(elsewhere)
        assert searcher.doc("d0") == "aspirin and the heart"
        searcher.upsert(["d1"], ["vitamin d and bones"])
        assert searcher.search("vitamin bones", k=1).hits[0].doc_id == "d1"
        index.add(SparseBatch(np.array([0, 1]), np.array([2]), np.array([1.0]), 10), ["b"])
        assert [h.doc_id for h in index.search({2: 1.0}, k=1)] == ["b"]
    assert list(elsewhere.iterdir()) == []
    with Searcher.open(tmp_path / "col") as again:
        assert again.doc("d1") == "vitamin d and bones"
    assert [h.doc_id for h in InvertedIndex.open(tmp_path / "idx").search({2: 1.0}, k=1)] == ["b"]


def test_a_search_warns_when_the_model_folder_changed_since_the_build(tmp_path, caplog):
    """A folder retrained or replaced in place after `lsr index` encoded the queries with another model than the
    documents: the hits moved and nothing said why. The build records what the folder held; a search that loads the
    model compares, and warns once."""
    from lsr.encode.models import model_content_key, resolve_model
    from lsr.search.searcher import Searcher

    folder = tmp_path / "mymodel"
    shutil.copytree(resolve_model("splade-tiny"), folder)
    (tmp_path / "docs.jsonl").write_text(json.dumps({"_id": "d0", "text": "aspirin and the heart"}) + "\n")
    assert cli_main(["index", str(tmp_path / "docs.jsonl"), str(tmp_path / "col"), "--model", str(folder),
                     "--dense", "none", "--max-length", "32", "--quiet"]) == 0
    assert json.loads((tmp_path / "col" / META_FILE).read_text())["model_content"] == model_content_key(str(folder))
    with caplog.at_level("WARNING"):
        Searcher.open(tmp_path / "col", device="cpu").search("aspirin", k=1)
    assert "changed since this collection was indexed" not in caplog.text
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    with caplog.at_level("WARNING"):
        searcher = Searcher.open(tmp_path / "col", device="cpu")
        searcher.search("aspirin", k=1)
        searcher.search("heart", k=1)
    assert caplog.text.count(f"the model {folder} changed since this collection was indexed (its folder's files)") == 1
    # a write is refused: the documents it wrote stayed encoded by the other model, restored folder or not
    with pytest.raises(ModelChanged, match=f"the model {folder} changed .* documents written now would be"):
        searcher.upsert(["d1"], ["vitamin d and bones"])
    (tmp_path / "more.jsonl").write_text(json.dumps({"_id": "d2", "text": "coffee and the liver"}) + "\n")
    assert cli_main(["upsert", str(tmp_path / "more.jsonl"), str(tmp_path / "col"), "--quiet"]) == 2
    assert Collection.open(tmp_path / "col").view().text(["d1", "d2"]) == [None, None]


def test_an_upsert_of_vectors_no_store_can_take_is_refused_before_the_journal_takes_it(tmp_path):
    """Vectors of another vocabulary (the model folder replaced by another model) were journaled, then refused by
    the index: every later open replayed the record and failed, `lsr repair` too, and `lsr verify` said intact."""
    from lsr.ingest.journal import JOURNAL_FILE

    (tmp_path / "docs.jsonl").write_text(json.dumps({"_id": "d0", "text": "aspirin and the heart"}) + "\n")
    assert cli_main(["index", str(tmp_path / "docs.jsonl"), str(tmp_path / "col"), "--dense", "none",
                     "--max-length", "32", "--quiet"]) == 0
    collection = Collection.open(tmp_path / "col")
    other = SparseBatch(np.array([0, 1]), np.array([39_000]), np.array([1.0], np.float32), 40_000)
    with pytest.raises(ValueError, match="vectors have vocab_size 40000, the index uses 30522"):
        collection.upsert(["d1"], ["another model's vector"], other, None)
    journal = tmp_path / "col" / JOURNAL_FILE
    assert not journal.exists() or journal.stat().st_size == 0
    collection.close()
    assert cli_main(["search", str(tmp_path / "col"), "aspirin", "--mode", "bm25", "--quiet"]) == 0


def test_ctrl_c_of_an_overwrite_into_a_new_folder_says_nothing_was_kept(corpus, tmp_path):
    """It said "<out> holds the collection it had" of a folder that held none (there was nothing to overwrite)."""
    out = tmp_path / "new"
    proc = subprocess.Popen(_cli(str(corpus), str(out), "--overwrite", "--max-length", "64", "--threads", "1",
                                 "--dense", "none", "--quiet"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # into the models' load or the encoding, long before the end
    assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, stderr
    assert "nothing was kept. Run the same command again." in stderr and "holds the collection it had" not in stderr


def test_a_plain_rerun_after_a_kill_before_any_checkpoint_names_the_unfinished_build(corpus, tmp_path):
    """It said "the encoded shards are kept" (none were) above "already holds a collection" (it held none)."""
    out = tmp_path / "killed"
    flags = ("--max-length", "64", "--threads", "1", "--dense", "none", "--quiet")
    proc = subprocess.Popen(_cli(str(corpus), str(out), *flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / BUILD_STATE).is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()}"
    proc.kill()
    proc.communicate(timeout=60)
    rerun = subprocess.run(_cli(str(corpus), str(out), *flags), capture_output=True, text=True, timeout=120)
    assert rerun.returncode != 0
    assert rerun.stderr.strip().splitlines()[-1].endswith(f"{out} holds an unfinished build; pass --resume to "
                                                          "continue it or --overwrite to start over")
    assert "kept" not in rerun.stderr
    assert subprocess.run(_cli(str(corpus), str(out), *flags, "--resume"), capture_output=True, timeout=600).returncode == 0
