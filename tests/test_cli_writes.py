"""`lsr upsert` and `lsr delete`: a corpus file into a collection that exists (a folder, a sharded folder, or a
running server), stopped and continued, and the bad inputs. Real models, real files, a real server."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lsr.cli.main import main
from lsr.ingest.collection import Collection
from lsr.ingest.verify import verify_collection
from service_helpers import ServerProcess
from signal_helpers import interruptible

DOCS = {
    "aspirin": "Aspirin lowers the risk of heart attack and stroke in adults.",
    "vitamin": "Vitamin D supplements improve bone density in older women.",
    "coffee": "Coffee consumption is linked to lower risk of liver disease.",
    "statins": "Statins reduce cholesterol and cardiovascular events.",
}
NEW = {
    "narwhal": "Narwhal tusks sense changes in seawater salinity. " * 20,  # longer than the build's 32 tokens
    "axolotl": "Axolotls regrow whole limbs after amputation.",
    "coffee": "Decaffeinated coffee still protects the liver from fibrosis.",  # replaces the build's coffee
}


def _jsonl(path: Path, docs: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": d, "contents": t}) + "\n" for d, t in docs.items()))  # pyserini's
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("writes")
    assert main(["index", str(_jsonl(root / "docs.jsonl", DOCS)), str(root / "col"), "--max-length", "32",
                 "--quiet"]) == 0
    return root / "col"


def test_upsert_writes_a_file_with_the_collections_own_model_length_and_fields(built, splade, tmp_path, capsys):
    """The new documents are found by every leg, the rewritten one has its new text, the summary counts new and
    replaced ones, and the stored vectors are the collection's model at the build's 32 tokens, not the default 256."""
    col = shutil.copytree(built, tmp_path / "col")
    assert main(["upsert", str(_jsonl(tmp_path / "new.jsonl", NEW)), str(col), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "upserted 3 documents" in out and "2 new, 1 replaced" in out and "1 longer than the collection's 32" in out
    opened = Collection.open(col)
    view = opened.view()
    assert view.text(["coffee", "axolotl"]) == [NEW["coffee"], NEW["axolotl"]]
    assert list(view.bm25_search(["axolotl limbs"], 3)[0])[0] == "axolotl"
    from lsr.search.legs import ViewLegs

    stored = ViewLegs(view).sparse_vectors(["narwhal"])
    want = type(splade).from_pretrained("splade-tiny", max_length=32, device="cpu").encode_documents([NEW["narwhal"]])
    assert stored.row(0)[0].tolist() == want.row(0)[0].tolist()  # the same terms as the build would give
    np.testing.assert_allclose(stored.row(0)[1], want.row(0)[1], atol=0.02)  # within uint8 quantization
    assert not verify_collection(col).problems


def test_a_sharded_collection_takes_upserts_and_deletes_and_doc_verify_repair_work_across_its_shards(tmp_path, capsys):
    """Each upserted document lands in the shard that owns it (and only there), deletes reach it, `lsr doc` reads it
    from there, and `lsr verify` / `lsr repair` of the root go through every shard, naming the damaged one."""
    from lsr.ingest.sharding import read_shard_map

    root = tmp_path / "sharded"
    assert main(["index", str(_jsonl(tmp_path / "docs.jsonl", DOCS)), str(root), "--shards", "2", "--dense", "none",
                 "--quiet"]) == 0
    assert main(["upsert", str(_jsonl(tmp_path / "new.jsonl", NEW)), str(root), "--quiet"]) == 0
    shard_map = read_shard_map(root)
    shards = [Collection.open(path) for path in shard_map.paths(root)]
    for doc_id in NEW:
        holders = [i for i, shard in enumerate(shards) if shard.view().docs.contains(doc_id)]
        assert holders == [shard_map.owner(doc_id)]
    assert shards[shard_map.owner("coffee")].text(["coffee"]) == [NEW["coffee"]]
    assert main(["delete", str(root), "axolotl", "aspirin"]) == 0
    assert not any(shard.view().docs.contains(d) for shard in (Collection.open(p) for p in shard_map.paths(root))
                   for d in ("axolotl", "aspirin"))
    capsys.readouterr()
    assert main(["doc", str(root), "coffee", "narwhal"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"coffee\t{NEW['coffee']}", f"narwhal\t{NEW['narwhal'].strip()}"]
    # a text's line break and tab read as another document's line ("narwhal<TAB>forged"): escaped in this form, as
    # are the terminal's escape sequences, the line breaks of other line readers and direction overrides
    forged = {"m1": "first line\nnarwhal\tforged text \\ done\x1b[2J\x0b\x85\u2028\u202e."}
    assert main(["upsert", str(_jsonl(tmp_path / "forged.jsonl", forged)), str(root), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["doc", str(root), "m1", "narwhal", "m1"]) == 0
    escaped = "first line\\nnarwhal\\tforged text \\\\ done\\x1b[2J\\x0b\\x85\\u2028\\u202e."
    assert capsys.readouterr().out.splitlines() == [f"m1\t{escaped}",
                                                    f"narwhal\t{NEW['narwhal'].strip()}"]
    assert main(["doc", str(root), "m1"]) == 0 and capsys.readouterr().out == forged["m1"] + "\n"  # one: as stored
    assert main(["search", str(root), "forged narwhal", "--mode", "bm25", "--text", "--k", "1"]) == 0
    shown = capsys.readouterr().out
    assert f"m1\n      {escaped}\n" in shown and len(shown.splitlines()) == 3  # the hit, its text and the footer
    assert main(["verify", str(root)]) == 0
    damaged = shard_map.names[shard_map.owner("narwhal")]
    shutil.rmtree(root / damaged / "sparse")
    capsys.readouterr()
    assert main(["verify", str(root)]) == 1
    bad = [line for line in capsys.readouterr().out.splitlines() if line.startswith("BAD")]
    assert bad and all(f"{damaged}: " in line for line in bad)
    assert main(["repair", str(root)]) == 0 and "is intact" in capsys.readouterr().out
    assert "narwhal" in set(Collection.open(root / damaged).sparse.doc_ids())  # rebuilt with the journal's upserts


def _continue(err: str) -> tuple[int, list[str]]:
    """(the documents a stopped run says it wrote, the command it prints to continue)."""
    hint = next(line for line in err.splitlines() if "Continue with:" in line)
    command = hint.split("Continue with: ", 1)[1].split()
    skip = int(command[command.index("--skip") + 1]) if "--skip" in command else 0
    assert f"stopped after writing {skip} documents" in hint and command[:2] == ["lsr", "upsert"]
    return skip, command[1:]


def test_a_stopped_upsert_keeps_its_writes_and_says_how_to_continue(built, tmp_path):
    """Ctrl-C mid-run: exit 130, every write it finished is kept (and no half one), and the command it prints
    (--skip) writes exactly the rest. Long texts (the dense model reads 256 tokens) keep each write slow enough for
    the signal to land mid-run on a busy machine."""
    col = shutil.copytree(built, tmp_path / "col")
    filler = " ".join(f"coral reef species {w} spawn under the full moon" for w in range(40))
    docs = {f"n{i:03d}": f"Document {i}: {filler}" for i in range(120)}
    source = _jsonl(tmp_path / "many.jsonl", docs)
    journal = col / "journal.log"
    size = journal.stat().st_size if journal.exists() else 0
    proc = subprocess.Popen(interruptible("-m", "lsr", "upsert", str(source), str(col), "--write-every", "4",
                                          "--threads", "1", "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while (not journal.exists() or journal.stat().st_size == size) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    skip, command = _continue(err)
    assert 0 < skip < len(docs)
    held = {d for d in docs if Collection.open(col).view().docs.contains(d)}
    assert held == set(list(docs)[:skip])
    assert not verify_collection(col).problems
    assert main([*command, "--write-every", "200"]) == 0
    assert all(Collection.open(col).view().docs.contains(d) for d in docs)


def test_an_upsert_stopped_by_a_bad_row_keeps_the_writes_before_it(built, tmp_path, capsys):
    col = shutil.copytree(built, tmp_path / "col")
    lines = [json.dumps({"id": f"b{i}", "contents": f"Bad row test document {i}."}) for i in range(10)]
    source = tmp_path / "bad.jsonl"
    source.write_text("\n".join(lines[:6] + ['{"id": "b6", "contents": 7}'] + lines[7:]) + "\n")
    assert main(["upsert", str(source), str(col), "--write-every", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "line 7" in err and "--on-error skip" in err
    skip, command = _continue(err)
    assert skip == 4 and {d for d in (f"b{i}" for i in range(10)) if Collection.open(col).view().docs.contains(d)} == \
        {"b0", "b1", "b2", "b3"}
    source.write_text("\n".join(lines) + "\n")  # the row fixed
    assert main(command) == 0 and "upserted 6 documents" in capsys.readouterr().out
    assert all(Collection.open(col).view().docs.contains(f"b{i}") for i in range(10))


def test_a_write_that_fails_half_applied_says_its_documents_may_be_kept(built, tmp_path, capsys):
    """A full disk (here an immutable sparse folder) failed a write after its journal record: "stopped after writing
    0 documents" said nothing of the 3 that the next open replayed from the journal (the audit's: 20 said, 40 kept)."""
    import subprocess

    col = shutil.copytree(built, tmp_path / "col")
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(col / "sparse")]).returncode != 0:
        pytest.skip("chattr +i is needed to make a folder refuse writes")
    source = _jsonl(tmp_path / "new.jsonl", {f"h{i}": f"Half applied write document {i}." for i in range(6)})
    try:
        assert main(["upsert", str(source), str(col), "--write-every", "3", "--quiet"]) == 1
    finally:
        subprocess.run(["chattr", "-i", str(col / "sparse")], check=True)
    err = capsys.readouterr().err
    assert "The 3 after them failed as they were written and may be kept too" in err, err
    skip, command = _continue(err)
    assert skip == 0 and all(Collection.open(col).view().docs.contains(f"h{i}") for i in range(3))  # replayed
    assert main(command) == 0 and "upserted 6 documents" in capsys.readouterr().out


def test_a_collection_whose_sparse_index_lags_its_journal_and_takes_no_writes_says_how_to_open_it(built, tmp_path,
                                                                                                    capsys):
    """A read-only copy of a collection whose last write a full disk stopped: every open failed with "[Errno 30]
    Read-only file system: .../sparse/LOCK", while `lsr verify` said it was intact and "the next open replays them"."""
    col = shutil.copytree(built, tmp_path / "col")
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(col / "sparse")]).returncode != 0:
        pytest.skip("chattr +i is needed to make a folder refuse writes")
    try:
        source = _jsonl(tmp_path / "new.jsonl", {"lagging": "A write the sparse index lacks."})
        assert main(["upsert", str(source), str(col), "--quiet"]) == 1
        capsys.readouterr()
        assert main(["search", str(col), "lacks", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "lacks the last 1 write(s) of its journal" in err and "open it once where it can be written" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert main(["verify", str(col)]) == 0
        assert "replays them into its folder, which must take writes" in capsys.readouterr().out
    finally:
        subprocess.run(["chattr", "-i", str(col / "sparse")], check=True)
    assert main(["search", str(col), "write the sparse index lacks", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["doc_id"] == "lagging"


def test_an_upsert_into_a_folder_that_takes_no_files_says_so_and_blames_no_full_disk(built, tmp_path, capsys):
    """It said the documents "failed as they were written and may be kept too (a full disk: the journal holds them
    ...)", where the folder took no file, before "[Errno 1] Operation not permitted: '...'"."""
    col = shutil.copytree(built, tmp_path / "col")
    (col / "journal.log").unlink(missing_ok=True)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(col)]).returncode != 0:
        pytest.skip("chattr +i is needed to make a folder refuse writes")
    try:
        source = _jsonl(tmp_path / "new.jsonl", {"refused": "A write the folder refuses."})
        assert main(["upsert", str(source), str(col), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == f"lsr upsert: error: could not write {col / 'journal.log'}: Operation not " \
            "permitted", err
        assert "full disk" not in err and "stopped after" not in err, err  # "... may be kept too; --skip 0"
    finally:
        subprocess.run(["chattr", "-i", str(col)], check=True)


def test_an_upsert_the_journal_cannot_take_names_it_and_says_its_documents_were_not_kept(built, tmp_path):
    """A full disk at the journal's append (here a file-size limit): "[Errno 28] No space left on device" named no
    file, and "the 3 after them failed as they were written and may be kept too", where the append was undone."""
    col = shutil.copytree(built, tmp_path / "col")
    journal = col / "journal.log"
    limit = (journal.stat().st_size if journal.exists() else 0) + 200  # under one record of 3 documents
    source = _jsonl(tmp_path / "new.jsonl", {f"n{i}": f"Not kept document number {i}." for i in range(6)})
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2); "
              "from lsr.cli import main; sys.exit(main(sys.argv[2:]))")
    run = subprocess.run([sys.executable, "-c", script, str(limit), "upsert", str(source), str(col), "--write-every",
                          "3", "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines()[-1] == f"lsr upsert: error: could not write {journal}: File too large", run.stderr
    assert "may be kept" not in run.stderr and "stopped after" not in run.stderr, run.stderr
    assert not any(Collection.open(col).view().docs.contains(f"n{i}") for i in range(6))


def test_an_upsert_cut_off_by_an_overwrite_says_to_run_it_again_whole(built, tmp_path, capsys, monkeypatch):
    """`lsr index --overwrite` under a running upsert: "stopped after writing 3 documents; they are kept. Continue
    with: ... --skip 3", and the command it gave skipped the 3 documents the new build had dropped."""
    from lsr.cli import upsert as upsert_cli

    col = shutil.copytree(built, tmp_path / "col")
    source = _jsonl(tmp_path / "new.jsonl", {f"o{i}": f"Overwritten upsert document {i}." for i in range(6)})
    rebuild = ["index", str(_jsonl(tmp_path / "docs.jsonl", DOCS)), str(col), "--overwrite", "--max-length", "32",
               "--quiet"]
    write, written = upsert_cli._LocalSink.write, []

    def write_then_overwrite(sink, ids, texts):
        if written:
            assert main(rebuild) == 0
        written.append(ids)
        return write(sink, ids, texts)

    monkeypatch.setattr(upsert_cli._LocalSink, "write", write_then_overwrite)
    assert main(["upsert", str(source), str(col), "--write-every", "3", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "stopped after" not in err and "--skip" not in err, err
    assert f"the 3 documents written went with the build it had opened: run the whole upsert again, lsr upsert " \
           f"{source} {col} --write-every 3 --quiet" in err, err
    assert not Collection.open(col).view().docs.contains("o0")


def test_an_id_a_trec_run_cannot_hold_is_refused_naming_its_line(built, tmp_path, capsys):
    """" padded" was stored, and then every TREC run of the collection failed at that document."""
    col = shutil.copytree(built, tmp_path / "col")
    source = _jsonl(tmp_path / "pad.jsonl", {"fine": "A fine id's text.", " padded": "A padded id's text."})
    assert main(["upsert", str(source), str(col), "--quiet"]) == 2
    assert "line 2: id ' padded' holds ' ' at character 0" in capsys.readouterr().err
    view = Collection.open(col).view()
    assert not view.docs.contains(" padded") and not view.docs.contains("fine")  # the upsert wrote nothing
    assert main(["upsert", str(source), str(col), "--quiet", "--on-error", "skip"]) == 0
    assert Collection.open(col).view().docs.contains("fine")


def test_skip_and_limit_count_positions_in_the_source(built, tmp_path, capsys):
    """--limit N keeps to the source's first N documents even with --skip, so a stopped `--limit` run continues to
    the same end."""
    col = shutil.copytree(built, tmp_path / "col")
    source = _jsonl(tmp_path / "ten.jsonl", {f"t{i}": f"Position test document {i}." for i in range(10)})
    assert main(["upsert", str(source), str(col), "--skip", "2", "--limit", "6", "--quiet"]) == 0
    assert "upserted 4 documents" in capsys.readouterr().out
    held = {f"t{i}" for i in range(10) if Collection.open(col).view().docs.contains(f"t{i}")}
    assert held == {"t2", "t3", "t4", "t5"}


_HELD_SIGNAL = """
import os, signal, time
from lsr.cli.upsert import uninterrupted
try:
    with uninterrupted():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # a handler that raised would have raised by now
        print("write finished", flush=True)
    print("after", flush=True)  # never: the held Ctrl-C is raised as the block ends
except KeyboardInterrupt:
    print("interrupted", signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
"""


def test_a_signal_during_a_write_waits_for_the_write_then_interrupts():
    out = subprocess.run(interruptible("-c", _HELD_SIGNAL), capture_output=True, text=True, timeout=60).stdout
    assert out.splitlines() == ["write finished", "interrupted True"]


def test_upsert_and_delete_through_a_running_server(built, tmp_path, capsys):
    col = shutil.copytree(built, tmp_path / "col")
    server = ServerProcess(col).wait_listening()
    try:
        assert main(["upsert", str(_jsonl(tmp_path / "new.jsonl", NEW)), "--endpoint", server.address, "--quiet"]) == 0
        assert f"upserted 3 documents into the server at {server.address}" in capsys.readouterr().out
        with server.client() as client:
            assert client.search("axolotl limbs regrow", k=1).hits[0].doc_id == "axolotl"
        ids = tmp_path / "ids.txt"
        ids.write_text(" axolotl \nnot-there\n\n")  # spaces around an id (none holds one): " axolotl " was not found
        assert main(["delete", "--endpoint", server.address, "--ids-file", str(ids)]) == 0
        captured = capsys.readouterr()
        assert "deleted 1 of 2 documents" in captured.out and "not in the collection: not-there" in captured.err
        assert main(["delete", "--endpoint", server.address, "not-there"]) == 1
        with server.client() as client:
            assert "axolotl" not in [hit.doc_id for hit in client.search("axolotl limbs regrow", k=10).hits]
        long_id = "z" * 300  # a legal id no path can be: its look for a collection folder said "File name too long"
        assert main(["upsert", str(_jsonl(tmp_path / "long.jsonl", {long_id: "giraffes"})), "--endpoint",
                     server.address, "--quiet"]) == 0
        assert main(["delete", "--endpoint", server.address, long_id]) == 0
        assert "deleted 1 of 1 documents" in capsys.readouterr().out
    finally:
        server.kill()


def test_a_write_past_its_deadline_says_it_may_have_landed_and_what_a_rerun_does(built, tmp_path, capsys):
    """The client gave up waiting, but the server may still apply the write: "DEADLINE_EXCEEDED: Deadline Exceeded"
    left the user to guess whether to rerun it."""
    from lsr.files import exclusive_folder

    col = shutil.copytree(built, tmp_path / "col")
    server = ServerProcess(col).wait_listening()
    try:
        with exclusive_folder(col):  # another process writes the collection: the server's writes wait past 1 s
            assert main(["upsert", str(_jsonl(tmp_path / "new.jsonl", NEW)), "--endpoint", server.address,
                         "--timeout", "1", "--quiet"]) == 1
            err = capsys.readouterr().err.strip()
            assert err.startswith("lsr upsert: error: DEADLINE_EXCEEDED: ") and len(err.splitlines()) == 1
            assert err.endswith("; the write may still have been applied: rerunning it is safe (an upsert replaces by id)")
            assert main(["delete", "--endpoint", server.address, "--timeout", "1", "d1"]) == 1
            err = capsys.readouterr().err.strip()
            assert err.startswith("lsr delete: error: DEADLINE_EXCEEDED: ") and err.endswith(
                "the write may still have been applied: a rerun names the ids it removed as not there (exit 1 when "
                "that is all of them)")
    finally:
        server.kill()


@pytest.mark.parametrize("argv, message", [
    (["upsert", "{src}"], "give COLLECTION (a folder written by `lsr index`) or --endpoint"),
    (["upsert", "{src}", "{col}", "--endpoint", "localhost:1"], "not both"),
    (["upsert", "{src}", "{col}/nope"], "is not a folder; create the collection with `lsr index`"),
    (["upsert", "{col}", "{src}"], "is a collection and {src} is not: the corpus comes first (`lsr upsert {src} {col}`)"),
    (["upsert", "{src}", "{col}", "--write-every", "0"], "--write-every must be positive"),
    (["upsert", "{col}/missing.jsonl", "{col}"], "does not exist"),
    (["delete", "{col}"], "no ids to delete"),
    (["delete", "{col}", "--ids-file", "{col}/none.txt"], "--ids-file"),
    (["upsert", "{src}", "{col}", "--auth-token-file", "{src}"],  # it was read by nobody
     "--auth-token-file does nothing here: COLLECTION is a folder written here, not a server (--endpoint)"),
    (["delete", "{col}", "not-there", "--tls", "--timeout", "5"], "--tls, --timeout do nothing here"),
    (["delete", "{col}", "d1", "--endpoint", "localhost:1"], "not both"),  # COLLECTION went to the server as an id
    (["delete", "{col}", "bad id"], "id 'bad id' holds ' ' at character 3"),  # "not in the collection", exit 1
    (["upsert", "{src}", "--endpoint", "localhost:1", "--batch-size", "8"],  # it was ignored: the server encodes
     "--batch-size does nothing here: they choose how this process encodes"),
])
def test_bad_writes_fail_in_one_line(built, tmp_path, capsys, argv, message):
    source = _jsonl(tmp_path / "new.jsonl", NEW)
    argv = [word.format(src=source, col=built) for word in argv]
    message = message.format(src=source, col=built)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_write_to_a_server_that_is_down_exits_1_to_say_retry(tmp_path, capsys):
    source = _jsonl(tmp_path / "new.jsonl", NEW)
    assert main(["upsert", str(source), "--endpoint", "127.0.0.1:1", "--timeout", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("lsr upsert: error: no server answered at 127.0.0.1:1 within 1 s; is `lsr serve` running there? "
                   "Or is --timeout 1 too short to connect?")  # under the 5 s it waits otherwise


def test_an_hnsw_collection_under_rewrites_is_noted_by_verify_and_rebuilt_by_repair(tmp_path, capsys):
    """Rewrites leave dead rows in an HNSW graph (filtered out, searched past with a wider beam): verify notes a graph
    holding more dead rows than live ones, and repair rebuilds it without them, still HNSW, with the same answers."""
    docs = _jsonl(tmp_path / "docs.jsonl", DOCS)
    col = tmp_path / "col"
    assert main(["index", str(docs), str(col), "--hnsw", "8", "--max-length", "32", "--quiet"]) == 0
    for _ in range(2):
        assert main(["upsert", str(docs), str(col), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["verify", str(col)]) == 0
    assert "the HNSW index holds 8 rows of replaced or deleted documents beside 4 live ones" in capsys.readouterr().out
    assert main(["search", str(col), "aspirin heart attack", "--mode", "dense", "-k", "1"]) == 0
    top = capsys.readouterr().out.splitlines()[0]  # rank, score, id (the next line is timings)
    assert "aspirin" in top
    assert main(["repair", str(col)]) == 0
    out = capsys.readouterr().out
    assert "is intact" in out and "HNSW index holds" not in out
    dense = Collection.open(col).dense
    assert dense.kind == "hnsw" and dense.dead_rows == 0 and len(dense) == 4
    assert main(["search", str(col), "aspirin heart attack", "--mode", "dense", "-k", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == top


SWALLOWED = """
import os, signal, sys, time
from lsr.cli.main import Terminated, _signals_as_exceptions

signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job starts with SIGINT ignored; a terminal's has it

class Finalized:
    def __del__(self):  # a signal arriving here is raised here, and Python ignores exceptions from finalizers
        os.kill(os.getpid(), signal.{signal})
        for _ in range(1000):
            pass

try:
    with _signals_as_exceptions():
        obj = Finalized()
        del obj
        end = time.monotonic() + 5
        while time.monotonic() < end:
            pass
    print("finished")
except Terminated:
    print("terminated")
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize("signal_name, outcome", [("SIGTERM", "terminated"), ("SIGINT", "interrupted")])
def test_a_signal_that_lands_in_a_finalizer_still_stops_the_command(signal_name, outcome):
    """A SIGTERM raised inside Ray's ActorHandle.__del__ was printed as "Exception ignored" and the build ran to its
    end (seen in CI); the swallowed signal is now sent again and stops the command where Ctrl-C would."""
    done = subprocess.run([sys.executable, "-c", SWALLOWED.format(signal=signal_name)], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == [outcome], done.stderr


def test_an_upsert_whose_closing_index_save_fails_still_reports_its_writes_kept(tmp_path):
    """Every document was journaled and applied, then the dense index's save at close hit the file-size limit: the
    upsert exited 1 with "could not write .../vectors-000002.npy", as if it had failed, and printed no summary."""
    import resource

    base = _jsonl(tmp_path / "base.jsonl", {f"b{i}": f"base text {i}" for i in range(300)})
    assert main(["index", str(base), str(tmp_path / "col"), "--max-length", "32", "--quiet", "--bm25", "none"]) == 0
    new = _jsonl(tmp_path / "new.jsonl", {f"a{i}": f"note {i} on aspirin and the heart" for i in range(120)})

    def small_files() -> None:  # the journal of 120 short documents fits; the 420 rows of 384 floats (645 kB) do not
        resource.setrlimit(resource.RLIMIT_FSIZE, (300 * 1024, 300 * 1024))

    done = subprocess.run([sys.executable, "-m", "lsr", "upsert", str(new), str(tmp_path / "col"), "--write-every", "4",
                           "--threads", "1", "--quiet"], capture_output=True, text=True, timeout=300,
                          preexec_fn=small_files)
    assert done.returncode == 0, done.stderr
    assert "upserted 120 documents" in done.stdout
    assert "saving its derived indexes failed (could not write" in done.stderr and "the next open replays" in done.stderr
    report = verify_collection(tmp_path / "col")
    assert not report.problems
    assert Collection.open(tmp_path / "col").view().text(["a119"]) == ["note 119 on aspirin and the heart"]


def test_verify_checks_the_stores_agree_while_the_sparse_index_lags_its_journal(built, tmp_path, capsys):
    """After a kill -9 between the journal and the sparse index (the usual crash), verify skipped its check that the
    stores hold the same ids: a sparse index from another build passed as intact, and every search then failed."""
    col = shutil.copytree(built, tmp_path / "col")
    before = shutil.copytree(col / "sparse", tmp_path / "sparse-before")
    assert main(["upsert", str(_jsonl(tmp_path / "new.jsonl", NEW)), str(col), "--quiet"]) == 0
    shutil.rmtree(col / "sparse")
    shutil.copytree(before, col / "sparse")  # the writes are in the journal only, as after a crash
    capsys.readouterr()
    assert main(["verify", str(col)]) == 0
    out = capsys.readouterr().out
    assert "the sparse index is 1 journal records behind" in out and "6 ids agree across the stores" in out
    other = tmp_path / "other"
    assert main(["index", str(_jsonl(tmp_path / "other.jsonl", {"walrus": "Walruses haul out on sea ice."})),
                 str(other), "--max-length", "32", "--quiet"]) == 0
    shutil.rmtree(col / "sparse")
    shutil.copytree(other / "sparse", col / "sparse")  # another build's index, behind this journal too
    capsys.readouterr()
    assert main(["verify", str(col)]) == 1
    assert "the sparse index holds 1 ids the doc store does not (first: 'walrus')" in capsys.readouterr().out


def test_a_text_file_upserts_into_a_collection_built_from_named_fields(built, tmp_path, capsys):
    """The build's fields ("contents") were passed to the .txt reader, which refuses fields it cannot have."""
    col = shutil.copytree(built, tmp_path / "col")
    (tmp_path / "more.txt").write_text("Walruses haul out on sea ice.\n\nNarwhals dive deep.\n")
    assert main(["upsert", str(tmp_path / "more.txt"), str(col), "--quiet"]) == 0
    assert "upserted 2 documents" in capsys.readouterr().out
    assert Collection.open(col).view().text(["1", "3"]) == ["Walruses haul out on sea ice.", "Narwhals dive deep."]
    assert main(["upsert", str(tmp_path / "more.txt"), str(col), "--fields", "contents"]) == 2
    assert "--fields names a column, and more.txt is a text file" in capsys.readouterr().err
