"""What a new user trips over in the verbs that manage and serve a collection: long documents sent to a server,
token and certificate files that are no files, a damaged file that `lsr repair` cannot rebuild, text that is not
UTF-8, and an address the machine lacks. Real models, real files, a real server."""

from __future__ import annotations

import json
import os
import select
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lsr.cli.main import main
from service_helpers import ServerProcess

DOCS = {
    "aspirin": "Aspirin lowers the risk of heart attack and stroke in adults.",
    "vitamin": "Vitamin D supplements improve bone density in older women.",
    "coffee": "Coffee consumption is linked to lower risk of liver disease.",
}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edges")
    source = root / "docs.jsonl"
    source.write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in DOCS.items()))
    assert main(["index", str(source), str(root / "col"), "--dense", "none", "--max-length", "32", "--quiet"]) == 0
    return root / "col"


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_upsert_through_a_server_sends_long_documents_under_its_request_limit(built, tmp_path, capsys):
    """64 documents of 20 KB went in one 1.3 MB message, over a 1 MiB server's limit, and failed RESOURCE_EXHAUSTED
    (exit 1: retry) on every retry; a document over the limit is one line naming it and the flag to raise."""
    col = shutil.copytree(built, tmp_path / "col")
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"_id": f"paper-{i}", "text": f"kinase {i} " + "signalling pathway " * 1100})
                            + "\n" for i in range(64)))
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps({"_id": "tome", "text": "volume " * 200_000}) + "\n")  # 1.3 MiB
    server = ServerProcess(col, "--max-message-mb", "1").wait_listening()
    try:
        assert main(["upsert", str(many), "--endpoint", server.address, "--quiet"]) == 0
        assert "upserted 64 documents" in capsys.readouterr().out
        with server.client() as client:
            assert client.search("kinase 17 signalling", k=1, mode="sparse").hits[0].doc_id == "paper-17"
        assert main(["upsert", str(huge), "--endpoint", server.address, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == ("lsr upsert: error: document 'tome' holds 1.3 MiB of text, over the server's 1 MiB request "
                       "limit; start `lsr serve` with a larger --max-message-mb, or leave the document out")
        import grpc

        from lsr.service import search_pb2 as pb, search_pb2_grpc

        message = pb.UpsertRequest(documents=[pb.Document(id="tome", text="volume " * 200_000)])
        with grpc.insecure_channel(server.address) as channel:  # a raw client: gRPC refuses the message itself
            for _ in range(5):  # gRPC may end the stream before it marks the call cancelled: a race, so try it often
                with pytest.raises(grpc.RpcError) as refused:
                    search_pb2_grpc.SearchServiceStub(channel).Upsert(iter([message]), timeout=30)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for last in (False, True) * 3:  # refused after a good message: the good one must not be written either,
                # though gRPC may end the stream as if whole before it marks the call cancelled
                good = pb.UpsertRequest(documents=[pb.Document(id="forerunner", text="zyzzyva")])
                huge = pb.UpsertRequest(documents=message.documents, last=last)
                with pytest.raises(grpc.RpcError) as refused:
                    search_pb2_grpc.SearchServiceStub(channel).Upsert(iter([good, huge]), timeout=30)
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # the server's log said the caller cancelled, which it had not; and then, when gRPC ended the stream before it
        # marked the call cancelled, that the stream held no documents
        refusals = lambda: [line for line in server.lines if "rpc=Upsert" in line and "upsert stream" in line]
        server.wait_for_line(lambda line: len(refusals()) >= 5)
        assert all("past the server's --max-message-mb" in line for line in refusals()), refusals()
        with server.client() as client:
            assert not client.search("zyzzyva", k=1, mode="bm25").hits
    finally:
        server.kill()


TOKEN_CASES = [(None, "--auth-token-file {path} is a folder, not a file"),
               (b"", "--auth-token-file {path} is empty; write the bearer token into it"),
               (b"\xffsecret", "--auth-token-file {path} is not UTF-8 text")]


@pytest.mark.parametrize("verb, flag, content, message", [
    *[(verb, "--auth-token-file", content, message) for verb in ("query", "serve") for content, message in TOKEN_CASES],
    ("query", "--tls", None, "--tls {path} is a folder, not a file"),
    ("query", "--tls", "missing", "--tls {path} does not exist"),
])
def test_a_token_or_certificate_file_that_is_no_file_is_one_line_naming_its_flag(built, tmp_path, capsys, verb, flag,
                                                                                 content, message):
    """A folder was `[Errno 21] Is a directory` and exit 1, as if the machine were at fault; a missing file named
    no flag, and undecodable bytes were a codec's message."""
    path = tmp_path / "secret"
    if content is None:
        path.mkdir()
    elif content == "missing":
        path = tmp_path / "missing.pem"
    else:
        path.write_bytes(content)
    where = (["query", "--endpoint", "127.0.0.1:1", "coffee"] if verb == "query"
             else ["serve", str(built), "--port", "0"])
    assert main([*where, flag, str(path)]) == 2
    err = capsys.readouterr().err
    assert message.format(path=path) in err and len(err.splitlines()) == 1


def test_a_damaged_source_file_is_not_sent_to_repair_which_cannot_rebuild_it(built, tmp_path, capsys):
    """A damaged text, vector or vocabulary file said "`lsr repair` rebuilds the sparse and dense indexes", and the
    repair it sent the user to failed: such files are its sources. A damaged BM25 file is what repair rebuilds."""
    col = shutil.copytree(built, tmp_path / "col")
    _flip_a_byte(col / "docs" / "part-00000.parquet")
    assert main(["search", str(col), "coffee", "--mode", "bm25"]) == 2
    err = capsys.readouterr().err
    assert "docs/part-00000.parquet fails its crc32 checksum" in err and "lsr repair" not in err
    assert f"restore it from a backup or re-index with `lsr index SOURCE {col} --overwrite`" in err
    col = shutil.copytree(built, tmp_path / "col2")
    _flip_a_byte(col / "bm25" / "ids.json")
    assert main(["doc", str(col), "coffee"]) == 2
    assert f"`lsr repair {col}` rebuilds the sparse, dense and BM25 indexes" in capsys.readouterr().err
    assert main(["repair", str(col)]) == 0
    assert main(["doc", str(col), "coffee"]) == 0 and capsys.readouterr().out.endswith(DOCS["coffee"] + "\n")


def test_outputs_into_a_collection_folders_not_in_utf8_and_bad_flags_without_a_server_are_refused_up_front(
        built, tmp_path, capsys):
    """`lsr encode --output col/docs/part-00000.parquet` replaced the collection's texts (exit 0; no repair rebuilds
    them); a collection in a folder named in Latin-1 was "damaged: run lsr repair" (or failed a build once every
    document was encoded); `lsr query --k 0` with no server up was "no server answered" (exit 1: retry)."""
    col = shutil.copytree(built, tmp_path / "col")
    (tmp_path / "t.txt").write_text("coffee and liver\n")
    assert main(["encode", "--input", str(tmp_path / "t.txt"), "--output", str(col / "docs" / "part-00000.parquet")]) == 2
    assert f"lies inside the collection {col}; write the vectors outside it" in capsys.readouterr().err
    assert main(["verify", str(col)]) == 0
    latin1 = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    shutil.copytree(built, latin1)
    for argv in (["search", str(latin1), "coffee"], ["verify", str(latin1)],
                 ["index", str(tmp_path / "t.txt"), str(latin1 / "new")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is not named in UTF-8; rename it" in err and "repair" not in err, argv
    assert not (latin1 / "new").exists()
    for flag in (["--k", "0"], ["--bound-factor", "0.5"]):
        assert main(["query", "--endpoint", "127.0.0.1:1", "coffee", *flag]) == 2
        assert "no server answered" not in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text("not json\n")  # its folders a/b were left behind
    assert main(["index", str(tmp_path / "bad.jsonl"), str(tmp_path / "a" / "b" / "col"), "--quiet"]) == 2
    assert "line 1: invalid JSON" in capsys.readouterr().err and not (tmp_path / "a").exists()


def test_text_that_is_not_utf8_is_named_as_the_user_gave_it(built, capsys):
    """Bytes Python could not decode from argv were "texts[0] is not UTF-8 text" (`lsr encode`, `lsr search`), a list
    the user never saw, or gRPC's "surrogates not allowed" (`lsr query`)."""
    for argv, what in ((["encode", "caf\udce9 au lait"], "TEXT"),
                       (["search", str(built), "caf\udce9", "--mode", "bm25"], "QUERY"),
                       (["query", "--endpoint", "127.0.0.1:1", "caf\udce9"], "the query")):
        assert main(argv) == 2
        assert capsys.readouterr().err == (f"lsr {argv[0]}: error: {what} is not UTF-8 text: an undecodable byte at "
                                           "character 3; give it as UTF-8\n")


def test_a_bad_piped_query_names_its_line_and_a_bad_typed_one_keeps_the_session(built):
    """Piped, a bad line stops the stream naming it (the lines before it were answered); typed at the prompt, it was
    the end of the session (exit 2, the models loaded again for the next query), now an error and the next prompt."""
    piped = subprocess.run([sys.executable, "-m", "lsr", "search", str(built), "--mode", "bm25", "-k", "1"],
                           input=b"coffee\ncaf\xe9\nvitamin\n", capture_output=True, timeout=300)
    assert piped.returncode == 2
    lines = piped.stdout.decode().splitlines()
    assert lines[0] == "> coffee" and lines[1].split()[2] == "coffee" and "vitamin" not in piped.stdout.decode()
    assert piped.stderr.decode() == ("lsr search: error: standard input line 2 is not UTF-8 text: an undecodable byte "
                                     "at character 3; give it as UTF-8\n")

    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "lsr", "search", str(built), "--mode", "bm25", "-k", "1"],
                            stdin=follower, stdout=follower, stderr=follower, close_fds=True, start_new_session=True)
    os.close(follower)
    seen = b""

    def read_until(marker: bytes, after: int) -> int:
        nonlocal seen
        deadline = time.monotonic() + 120
        while marker not in seen[after:] and time.monotonic() < deadline:
            if select.select([leader], [], [], 1.0)[0]:
                seen += os.read(leader, 4096)
        assert marker in seen[after:], seen.decode(errors="replace")
        return seen.index(marker, after) + len(marker)

    try:
        at = read_until(b"query> ", 0)
        os.write(leader, b"caf\xe9\n")
        at = read_until(b"the query is not UTF-8 text", at)
        at = read_until(b"query> ", at)
        os.write(leader, b"coffee liver\n")
        at = read_until(b"1 hits, bm25", at)
        read_until(b"query> ", at)
        os.write(leader, b"\x04")
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        os.close(leader)
    assert b"coffee" in seen.split(b"coffee liver", 1)[1]


def test_serve_on_an_address_this_machine_lacks_says_so(built):
    """gRPC's "Failed to bind to address ...; set GRPC_VERBOSITY=debug", after a log line of its own."""
    run = subprocess.run([sys.executable, "-m", "lsr", "serve", str(built), "--host", "192.0.2.1", "--port", "0"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "lsr serve: error: cannot bind --host 192.0.2.1: this machine has no such address; give one of its own "
        "addresses, 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")
    assert "GRPC_VERBOSITY" not in run.stderr


def test_a_new_word_in_more_upserted_documents_than_the_build_held_is_still_found_by_bm25(built, tmp_path, capsys):
    """BM25 keeps the build's statistics; a word the build never saw, once in more live documents than the build
    counted (3 here), took a negative IDF, and `lsr search --mode bm25` found none of the documents holding it."""
    col = shutil.copytree(built, tmp_path / "col")
    new = tmp_path / "quokkas.jsonl"
    new.write_text("".join(json.dumps({"_id": f"quokka-{i}", "text": f"Quokka colony {i} on Rottnest Island."}) + "\n"
                           for i in range(4)))
    assert main(["upsert", str(new), str(col), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["search", str(col), "quokka", "--mode", "bm25", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert sorted(hit["doc_id"] for hit in hits) == [f"quokka-{i}" for i in range(4)]
    assert all(hit["score"] > 0 for hit in hits)


def test_tls_to_a_plain_server_is_one_line_that_says_so(built):
    """gRPC's core logged a handshake failure a second (at INFO, on stderr) and the error asked only whether a server
    was running, where one was: it does not speak TLS."""
    col = built.parent / "tls-plain"
    shutil.copytree(built, col)
    server = ServerProcess(col).wait_listening()
    try:
        env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
        done = subprocess.run([sys.executable, "-m", "lsr", "query", "--endpoint", server.address, "--tls",
                               "--timeout", "3", "--", "aspirin"], capture_output=True, text=True, env=env, timeout=120)
    finally:
        server.kill()
    assert done.returncode == 2  # a fix (drop --tls), not a retry: it read "no server answered" (exit 1)
    assert done.stderr.strip() == (f"lsr query: error: the server at {server.address} does not speak TLS (a plain "
                                   "`lsr serve`, without --tls-cert): drop --tls, or start it with --tls-cert and "
                                   "--tls-key")


@pytest.mark.parametrize("argv, name", [
    (["index", "", "out"], "SOURCE"), (["index", "docs.jsonl", ""], "COLLECTION"), (["train", "pairs.jsonl", ""], "OUT"),
    (["train", "", "out"], "DATA"), (["search", "", "q"], "COLLECTION"), (["upsert", "docs.jsonl", ""], "COLLECTION"),
    (["doc", "", "1"], "COLLECTION"), (["eval", "run.trec", ""], "QRELS"), (["tune", "", "--dataset", "scifact"], "COLLECTION"),
    (["serve", ""], "COLLECTION"), (["verify", ""], "COLLECTION"),
])
def test_an_empty_path_argument_is_refused_not_read_as_the_current_folder(argv, name, tmp_path, monkeypatch, capsys):
    """"" was read as ".": `lsr train data.jsonl ""` wanted to write its model into the current folder, `lsr index ""`
    read every dataset below it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert f"lsr {argv[0]}: error: argument {name}: an empty path; name a file or folder" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("quiet", [False, True])
def test_the_cli_logs_our_info_lines_and_only_other_libraries_warnings(quiet):
    """matplotlib's "generated new fontManager" (INFO) came out in the README's first run on a fresh machine, and
    torch's exit-time INFO lines after a Ctrl-C's message; a verb's --quiet left our own INFO lines in."""
    code = ("import logging, sys\nfrom lsr.cli.main import main\n"
            f"main(['encode', 'protein folding', '--top', '1'{', ' + repr('--quiet') if quiet else ''}])\n"
            "logging.getLogger('matplotlib.font_manager').info('generated new fontManager')\n"
            "logging.getLogger('matplotlib').warning('a warning of theirs')\n"
            "logging.getLogger('lsr.somewhere').info('an INFO line of ours')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "fontManager" not in done.stderr and "a warning of theirs" in done.stderr
    assert ("an INFO line of ours" in done.stderr) != quiet


def test_a_topics_line_with_a_third_column_is_refused_not_searched(built, tmp_path, capsys):
    """`1<TAB>qqqxyz<TAB>vitamin` searched "qqqxyz\\tvitamin": a narrative or a second field went into the query."""
    topics = tmp_path / "q.tsv"
    topics.write_text("1\tqqqxyz\tvitamin\n")
    assert main(["search", str(built), "--topics", str(topics), "--output", "-", "--mode", "bm25", "--k", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (f"lsr search: error: {topics} line 1: expected 'qid<TAB>text', the two columns of a "
                                 "topics TSV, got 3 (for JSON topics use a .jsonl file)\n")


@pytest.mark.parametrize("content", ["\nqid\tquery\n1\tvitamin bone\n", "topic\tquery\n1\tvitamin bone\n"])
def test_a_topics_header_below_a_blank_line_or_naming_its_text_column_is_skipped(built, tmp_path, capsys, content):
    """A header was skipped only on line 1 and only by its id column: below a blank line, or as `topic<TAB>query`,
    it was searched as a query "query" and named in the run."""
    topics = tmp_path / "q.tsv"
    topics.write_text(content)
    assert main(["search", str(built), "--topics", str(topics), "--output", "-", "--mode", "bm25", "--k", "2"]) == 0
    out, err = capsys.readouterr()
    assert {line.split()[0] for line in out.splitlines()} == {"1"} and out.split()[2] == "vitamin"
    assert err.endswith("\n1 queries, 1 hits written to standard output\n") and "found no document" not in err


def _delete_piped(col: Path, ids: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lsr", "delete", str(col), "--ids-file", "-"], input=ids,
                          capture_output=True, timeout=300)


def test_ids_piped_to_delete_are_read_as_a_file_and_checked_line_by_line(built, tmp_path):
    """Standard input was read bare: a BOM stayed in the first id ("not in the collection: \\ufeffvitamin"), bytes
    that are not UTF-8 became surrogates, and `coffee<TAB>comment` was one id, not there, so coffee stayed (exit 0)."""
    col = shutil.copytree(built, tmp_path / "col")
    bad = _delete_piped(col, b"aspirin\ncoffee\tstale since May\n")
    assert bad.returncode == 2 and bad.stderr.decode() == (
        "lsr delete: error: --ids-file standard input line 2: id 'coffee\\tstale since May' holds '\\t' at character "
        "6; an id is one visible word, without whitespace, control, invisible or direction characters (a TREC run, a log "
        "or a terminal must show the id stored)\n")
    undecodable = _delete_piped(col, b"caf\xe9\n")
    assert undecodable.returncode == 2 and "is not UTF-8 text" in undecodable.stderr.decode()
    done = _delete_piped(col, b"\xef\xbb\xbfvitamin\r\n")
    assert done.returncode == 0 and done.stderr == b""
    assert done.stdout.decode() == f"deleted 1 of 1 documents from {col}\n"
    assert main(["doc", str(col), "aspirin"]) == 0  # the refused files deleted nothing


def test_eval_warns_of_judged_queries_without_a_relevant_document(tmp_path, capsys):
    """Qrels whose grades were all 0 (a column mixed up) scored every run 0 without a word; a query with no relevant
    document scores 0 too and pulls each mean down."""
    run, zero, half = tmp_path / "run.trec", tmp_path / "zero.qrels", tmp_path / "half.qrels"
    run.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0 t\nq2 Q0 d3 1 1.0 t\n")
    zero.write_text("q1\t0\td1\t0\nq2\t0\td3\t0\n")
    half.write_text("q1\t0\td1\t1\nq2\t0\td3\t0\n")
    assert main(["eval", str(run), str(zero)]) == 0
    out, err = capsys.readouterr()
    assert "ndcg@10     0.0000" in out and err == (
        f"warning: {zero} judges no document relevant (every grade is 0 or less), so every score is 0; is its grade "
        "column the third (BEIR's TSV) or the fourth (TREC's)?\n")
    assert main(["eval", str(run), str(half)]) == 0
    out, err = capsys.readouterr()
    assert "ndcg@10     0.5000" in out and err == (
        f"warning: 1 of the 2 queries {half} judges have no relevant document (the first: 'q2'); they score 0 in every "
        "run, as in BEIR, and pull the means down\n")
    run.write_text("q1 Q0 d1 1 2.0 t\n")
    half.write_text("q1\t0\td1\t1\nq1\t0\td3\t0\n")
    assert main(["eval", str(run), str(half)]) == 0 and capsys.readouterr().err == ""


def test_eval_of_an_empty_run_scores_every_judged_query_0_with_a_warning(built, tmp_path, capsys):
    """`lsr search --topics` where no query found anything writes an empty run and prints "score it with: lsr eval
    RUN QRELS", which then refused it ("holds no results")."""
    topics, run, qrels = tmp_path / "q.tsv", tmp_path / "none.trec", tmp_path / "q.qrels"
    topics.write_text("1\tqqqxyz\n")
    qrels.write_text("1 0 vitamin 1\n")
    assert main(["search", str(built), "--topics", str(topics), "--output", str(run), "--mode", "bm25"]) == 0
    assert run.read_bytes() == b"" and f"lsr eval {run} QRELS" in capsys.readouterr().out
    assert main(["eval", str(run), str(qrels)]) == 0
    out, err = capsys.readouterr()
    assert "ndcg@10     0.0000" in out and f"1 judged queries, 0 of them in {run} (1 missing score 0)" in out
    assert err == f"warning: {run} holds no results, so every judged query scores 0\n"


def test_eval_says_when_it_drops_a_self_hit_the_qrels_judge_relevant(tmp_path, capsys):
    """A hit whose doc id is its query's is dropped, as BEIR does; judged relevant, it scored 0 without a word."""
    run, qrels = tmp_path / "self.trec", tmp_path / "self.qrels"
    run.write_text("q1 Q0 q1 1 3.0 t\nq1 Q0 dB 2 2.0 t\n")
    qrels.write_text("q1 0 q1 1\n")
    assert main(["eval", str(run), str(qrels)]) == 0
    out, err = capsys.readouterr()
    assert "ndcg@10     0.0000" in out
    assert err == (f"warning: 1 hit of {run} whose doc id is its query's id (the first: query 'q1') was dropped, as "
                   f"BEIR does, 1 of them judged relevant by {qrels}; the hits below move up a rank, unlike trec_eval "
                   "(pass --keep-self-hits to keep them)\n")
    assert main(["eval", str(run), str(qrels), "--keep-self-hits"]) == 0
    out, err = capsys.readouterr()
    assert "ndcg@10     1.0000" in out and err == ""
    # an unjudged self-hit moved the relevant hit below it to rank 1 without a word: 1.0 where trec_eval gives 0.63
    run.write_text("1048585 Q0 1048585 1 9.0 t\n1048585 Q0 7187158 2 8.0 t\n")
    qrels.write_text("1048585 0 7187158 1\n")
    assert main(["eval", str(run), str(qrels)]) == 0
    out, err = capsys.readouterr()
    assert "ndcg@10     1.0000" in out and "1 hit of" in err and "judged relevant" not in err and "unlike trec_eval" in err
    assert main(["eval", str(run), str(qrels), "--keep-self-hits"]) == 0
    assert "ndcg@10     0.6309" in capsys.readouterr().out


def test_eval_reads_a_run_from_standard_input_and_old_mac_line_ends(tmp_path, capsys, monkeypatch):
    """`lsr search --output - | lsr eval - QRELS` said "- does not exist"; a qrels file with CR line ends was one
    line of 12 fields; a line mixing tabs and spaces was "id 'q1 0' is empty or holds whitespace" and no more."""
    import io

    qrels = tmp_path / "cr.qrels"
    qrels.write_bytes(b"q1 0 d2 1\rq2 0 d3 1\r")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0 t\n")))
    assert main(["eval", "-", str(qrels)]) == 0
    assert "ndcg@10     0.3155" in capsys.readouterr().out  # q1 at rank 2 (0.6309), q2 unanswered (0)
    mixed = tmp_path / "mixed.qrels"
    mixed.write_text("q1 0\td2\t1\n")
    assert main(["eval", str(tmp_path / "cr.qrels"), str(mixed)]) == 2
    assert "mixes tabs and spaces between its fields" in capsys.readouterr().err


@pytest.mark.parametrize("flags, said", [
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--threads", "0"], "--threads must be positive"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be positive"),
])
def test_a_bad_number_for_lsr_index_is_the_only_line(tmp_path, capsys, flags, said):
    """These were checked once the build began, after the "indexing SOURCE into OUT ..." line."""
    source = tmp_path / "docs.jsonl"
    source.write_text(json.dumps({"_id": "a", "text": "vitamin d"}) + "\n")
    assert main(["index", str(source), str(tmp_path / "out"), "--dense", "none", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lsr index: error: ") and said in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("verb", ["index", "upsert", "encode"])
def test_an_empty_corpus_file_is_one_line_before_any_progress_bar(built, tmp_path, capsys, verb):
    """It was said after an empty progress bar ("encode: 0doc", twice in a log file), and after the "indexing ..."
    line of lsr index."""
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    argv = {"index": ["index", str(empty), str(tmp_path / "out"), "--dense", "none"],
            "upsert": ["upsert", str(empty), str(built)],
            "encode": ["encode", "--input", str(empty), "--output", str(tmp_path / "v.parquet")]}[verb]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == f"lsr {verb}: error: {empty} is empty: it holds no documents\n" and not captured.out


def _lsr_with(redirect: str, *argv: str) -> subprocess.CompletedProcess:
    """`lsr ARGV REDIRECT` run by a shell, so a standard stream can be closed (`2>&-`) as a script closes it."""
    command = " ".join(map(shlex.quote, [sys.executable, "-m", "lsr", *argv])) + " " + redirect
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)


def test_closed_standard_streams_leave_a_verb_working_or_refused_in_one_line(built):
    """With stderr closed Python leaves sys.stderr None: every verb that reached a progress bar failed with exit 1
    and no word, and `lsr serve` answered every search INTERNAL. Closed stdout or stdin gave tracebacks (a finished
    `lsr index` exited 1)."""
    quiet = _lsr_with("2>&-", "search", str(built), "vitamin bone density", "-k", "1", "--mode", "sparse")
    assert quiet.returncode == 0 and quiet.stdout.split()[2] == "vitamin"
    unread = _lsr_with(">&-", "search", str(built), "vitamin", "--mode", "bm25")
    assert unread.returncode == 2
    assert unread.stderr == "lsr search: error: standard output is closed; redirect it to a file or /dev/null\n"
    nothing_in = _lsr_with("<&-", "search", str(built), "--mode", "bm25")  # queries from stdin: none
    assert nothing_in.returncode == 0 and nothing_in.stdout == "" and "Traceback" not in nothing_in.stderr


def test_version_into_a_closed_pipe_or_a_full_disk_is_an_exit_code_not_a_traceback():
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone, as `lsr --version | true` can find it
    try:
        gone = subprocess.run([sys.executable, "-m", "lsr", "--version"], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (gone.returncode, gone.stderr) == (141, "")
    full = _lsr_with("> /dev/full", "--version")
    assert full.returncode == 1
    assert full.stderr == "lsr: error: cannot write to standard output: No space left on device\n"


def test_a_tilde_in_a_path_flag_is_the_home_folder_and_a_dashed_path_is_hinted_behind_dot_slash(built, tmp_path,
                                                                                                  monkeypatch, capsys):
    """`--output=~/run.trec`, which no shell expands, made a folder named "~" in the current one (where other flags
    took it as the home folder); `try: lsr search -col` was read as a flag."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    (tmp_path / "topics.tsv").write_text("q1\tvitamin bone density\n")
    assert main(["search", str(built), "--topics=~/topics.tsv", "--output=~/run.trec", "--mode", "bm25"]) == 0
    assert (tmp_path / "run.trec").read_text().split()[:3] == ["q1", "Q0", "vitamin"]
    assert not (tmp_path / "cwd" / "~").exists()
    assert f"score it with: lsr eval {tmp_path / 'run.trec'} QRELS" in capsys.readouterr().out
    (tmp_path / "cwd" / "-docs.jsonl").write_text(json.dumps({"_id": "a", "text": "aspirin and the heart"}) + "\n")
    assert main(["index", "--dense", "none", "--quiet", "--", "-docs.jsonl", "-col"]) == 0
    assert 'try: lsr search ./-col "your question"' in capsys.readouterr().out


def test_an_output_encoding_that_cannot_hold_the_text_is_named_as_the_environment_s(tmp_path):
    """PYTHONIOENCODING=ascii: codec's words, exit 2 ("fix your input"), naming neither stdout nor the setting."""
    (tmp_path / "docs.jsonl").write_text(json.dumps({"_id": "dessert", "text": "crème brûlée"}) + "\n")
    assert main(["index", str(tmp_path / "docs.jsonl"), str(tmp_path / "col"), "--dense", "none", "--quiet"]) == 0
    ascii_out = subprocess.run([sys.executable, "-m", "lsr", "doc", str(tmp_path / "col"), "dessert"],
                               capture_output=True, text=True, timeout=120,
                               env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert ascii_out.returncode == 1, ascii_out.stderr
    assert ascii_out.stderr == ("lsr doc: error: standard output's encoding, ascii, cannot hold '\\xe8'; set "
                                "PYTHONIOENCODING=utf-8\n")
