"""The gRPC service end to end: real `lsr serve` subprocesses on free loopback ports, a real
SciFact collection, real models. Results are compared with an in-process Searcher."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from lsr.search.searcher import HybridOptions, PrfOptions, Searcher
from lsr.service import Client
from lsr.service import search_pb2 as pb
from lsr.service import search_pb2_grpc
from service_helpers import ServerProcess

N_DOCS = 80
MAX_LENGTH = 96


def _build(source: Path, out: Path, **options) -> Path:
    from lsr.ingest.indexing import IndexOptions, build_collection

    build_collection(source, out, IndexOptions(max_length=MAX_LENGTH, **options), progress=False)
    return out


@pytest.fixture(scope="module")
def collections(beir_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("service")
    source = beir_dir / "scifact.tar.gz"
    return {
        "hybrid": _build(source, root / "hybrid", limit=N_DOCS),
        "sparse_only": _build(source, root / "sparse_only", limit=24, dense_model=None, bm25=False),
    }


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "server.crt", root / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def servers(collections, tls_files, tmp_path_factory):
    """The read-only servers, started together so their model loads overlap."""
    token_file = tmp_path_factory.mktemp("auth") / "token"
    token_file.write_text("s3cret-token\n")
    cert, key = tls_files
    started = {
        "main": ServerProcess(collections["hybrid"]),
        "sparse_only": ServerProcess(collections["sparse_only"]),
        "secure": ServerProcess(collections["sparse_only"], "--auth-token-file", str(token_file),
                                "--tls-cert", str(cert), "--tls-key", str(key)),
    }
    try:
        yield {name: server.wait_listening() for name, server in started.items()}
    finally:
        for server in started.values():
            server.kill()


@pytest.fixture(scope="module")
def client(servers):
    with servers["main"].client() as c:
        yield c


@pytest.fixture(scope="module")
def searcher(collections):
    """In-process twin of the main server: same collection, same torch thread count (so the same float sums)."""
    import torch

    previous = torch.get_num_threads()
    yield Searcher.open(collections["hybrid"], threads=1)  # `lsr serve` defaults to --threads 1
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def queries(scifact) -> list[str]:
    return list(scifact.queries.values())[:24]


def _stub(address: str) -> search_pb2_grpc.SearchServiceStub:
    return search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(address))


def _hits(result) -> list[tuple]:
    return [(h.doc_id, h.score, h.sparse_score, h.dense_score, h.text, [tuple(e) for e in h.explanation]) for h in result.hits]


# ---------------------------------------------------------------------------------- health, reflection
@pytest.mark.parametrize("protocol", ["v1alpha", "v1"])
def test_health_is_serving_and_reflection_lists_the_service(servers, client, protocol):
    """grpcurl, Postman and Evans ask reflection v1 first; older clients ask v1alpha: both answer."""
    from grpc_reflection.v1alpha import reflection_pb2

    assert client.health() == "SERVING"
    assert client.health("lsr.v1.SearchService") == "SERVING"
    channel = grpc.insecure_channel(servers["main"].address)
    info = channel.stream_stream(f"/grpc.reflection.{protocol}.ServerReflection/ServerReflectionInfo",
                                 request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    requests = iter([reflection_pb2.ServerReflectionRequest(list_services=""),
                     reflection_pb2.ServerReflectionRequest(file_containing_symbol="lsr.v1.SearchService")])
    listed, described = list(info(requests, timeout=10))
    names = {service.name for service in listed.list_services_response.service}
    assert {"lsr.v1.SearchService", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto  # descriptors are served, not just names
    channel.close()


# ---------------------------------------------------------------------------------- results
@pytest.mark.parametrize("mode, prf", [("sparse", None), ("dense", None), ("hybrid", None), ("hybrid", PrfOptions()),
                                       ("sparse", PrfOptions(interpolate="both")), ("bm25", None)])
def test_results_identical_to_in_process_search(client, searcher, queries, mode, prf):
    for text in queries[:6]:
        remote = client.search(text, k=10, mode=mode, prf=prf, include_text=True, explain=True)
        local = searcher.search(text, k=10, mode=mode, prf=prf, include_text=True, explain=True)
        assert remote.hits, text
        assert _hits(remote) == _hits(local)
        assert remote.truncated == local.truncated
        assert remote.timings["total"] > 0 and ("encode" in remote.timings) == (mode != "bm25")
        assert set(remote.timings) - {"queue"} <= set(local.timings) | {"total"}  # only the stages that ran
    assert client.last_index_version == searcher.index_version


def test_the_client_takes_k_second_as_the_searcher_does(client, searcher, queries):
    """pyserini's habit, `search(q, 5)`, worked on a Searcher but was a TypeError on the Client (k keyword-only)."""
    assert _hits(client.search(queries[0], 5)) == _hits(searcher.search(queries[0], 5)) == \
        _hits(client.search(queries[0], k=5))
    assert len(client.search(queries[0], 5).hits) == 5


@pytest.mark.parametrize("hybrid", [
    HybridOptions("rrf", 0.3, dense_weight=0.3, bm25_weight=0.4, rrf_k=20),
    HybridOptions("z_score", 0.0, dense_weight=0.6, bm25_weight=0.4),
    HybridOptions("min_max", 0.5, dense_weight=0.0, bm25_weight=0.5),
    HybridOptions("min_max", 0.4, dense_weight=0.3, bm25_weight=0.3, combination="geometric_mean"),
    HybridOptions("l2", 0.2, dense_weight=0.5, bm25_weight=0.3, combination="harmonic_mean"),
])
def test_fusion_of_any_legs_is_identical_to_in_process(client, searcher, queries, hybrid):
    for text in queries[:4]:
        remote = client.search(text, k=10, mode="hybrid", hybrid=hybrid)
        local = searcher.search(text, k=10, mode="hybrid", hybrid=hybrid)
        assert remote.hits and _hits(remote) == _hits(local)
        assert any(h.bm25_score is not None for h in remote.hits)
        assert all(h.sparse_score is None for h in remote.hits) == (hybrid.sparse_weight == 0)
    batch = client.search_batch(queries[:4], k=5, mode="hybrid", hybrid=hybrid)
    assert [_hits(r) for r in batch] == [_hits(searcher.search(q, k=5, mode="hybrid", hybrid=hybrid)) for q in queries[:4]]


def test_vector_queries_and_batches_identical_to_in_process(client, searcher, queries):
    sparse = {"vitamin": 1.5, "cancer": 0.75}
    assert _hits(client.search(sparse=sparse, k=5)) == _hits(searcher.search(sparse=sparse, k=5))
    plain = searcher.search(sparse=sparse, k=5).hits
    for scale in (1e-25, 1e25):  # far from 1, inside the accepted range: the same ranking, scores scaled alike
        scaled = client.search(sparse={t: w * scale for t, w in sparse.items()}, k=5).hits
        assert [h.doc_id for h in scaled] == [h.doc_id for h in plain]
        assert scaled[0].score == pytest.approx(plain[0].score * scale, rel=1e-5)
    dense = searcher.encode_dense([queries[0]])[0][0].tolist()
    assert _hits(client.search(dense=dense, mode="dense", k=5)) == _hits(searcher.search(dense=dense, mode="dense", k=5))
    both = client.search(queries[1], dense=dense, mode="hybrid", k=5)
    assert _hits(both) == _hits(searcher.search(queries[1], dense=dense, mode="hybrid", k=5))
    remote = client.search_batch(queries[:8], k=5, mode="hybrid", prf=PrfOptions())
    local = searcher.search_batch(queries[:8], k=5, mode="hybrid", prf=PrfOptions())
    assert [_hits(r) for r in remote] == [_hits(r) for r in local]


def test_lsr_query_cli_prints_the_endpoints_hits(servers, client, queries):
    out = subprocess.run(
        [sys.executable, "-m", "lsr", "query", "--endpoint", servers["main"].address, queries[2], "--k", "3", "--json"],
        check=True, capture_output=True, text=True, timeout=120,
    )
    printed = json.loads(out.stdout)
    # --mode auto: hybrid where the collection has other legs (GetStats' modes), sparse where SPLADE is alone
    assert client.stats()["details"]["modes"] == "sparse,dense,bm25,hybrid"
    want = client.search(queries[2], k=3, mode="hybrid").hits
    assert [(h["doc_id"], h["score"]) for h in printed["hits"]] == [(h.doc_id, h.score) for h in want]
    alone = subprocess.run([sys.executable, "-m", "lsr", "query", "--endpoint", servers["sparse_only"].address,
                            queries[2], "--k", "3", "--json"], check=True, capture_output=True, text=True, timeout=120)
    with Client(servers["sparse_only"].address) as sparse_only:
        assert sparse_only.stats()["details"]["modes"] == "sparse"
        want = sparse_only.search(queries[2], k=3, mode="sparse").hits
    assert [(h["doc_id"], h["score"]) for h in json.loads(alone.stdout)["hits"]] == [(h.doc_id, h.score) for h in want]


def test_lsr_search_and_lsr_query_print_one_result_alike(servers, collections, queries, capsys):
    """In-process and through a server, the same hits print the same JSON keys and the same table: the two had
    other keys (``timings`` in seconds against ``timings_ms``; text and explanation always there against on request)."""
    def printed(argv: list[str]) -> str:
        from lsr.cli.main import main

        assert main(argv) == 0
        return capsys.readouterr().out

    common = [queries[2], "-k", "3", "--mode", "sparse"]
    for extra in (["--json"], ["--json", "--text", "--explain"], ["--json", "--bound-factor", "3"]):
        local = json.loads(printed(["search", str(collections["hybrid"]), *common, *extra]))
        remote = json.loads(printed(["query", "--endpoint", servers["main"].address, *common, *extra]))
        assert set(remote) - set(local) == {"index_version"} and set(local) <= set(remote)
        assert set(local["timings_ms"]) <= set(remote["timings_ms"]) and local["timings_ms"]["encode"] > 0
        assert [set(hit) for hit in local["hits"]] == [set(hit) for hit in remote["hits"]]
        assert [hit["doc_id"] for hit in local["hits"]] == [hit["doc_id"] for hit in remote["hits"]]
        assert ("text" in local["hits"][0]) == ("--text" in extra) == ("explanation" in local["hits"][0])
    local = printed(["search", str(collections["hybrid"]), *common, "--text", "--explain"]).splitlines()
    remote = printed(["query", "--endpoint", servers["main"].address, *common, "--text", "--explain"]).splitlines()
    assert [line.split()[-1] for line in local[:-1:3]] == [line.split()[-1] for line in remote[:-1:3]]  # the doc ids
    assert local[-1].startswith("3 hits, sparse (") and remote[-1].startswith("3 hits, sparse (")
    assert len(local) == len(remote) == 3 * 3 + 1  # a hit's id, explanation and text lines, then the footer


def test_lsr_search_and_lsr_query_combine_by_the_mean_asked_for(servers, collections, searcher, queries, capsys):
    """--combination, OpenSearch's combination technique, in process and through a server: the hits of the
    HybridOptions it names, not those of the arithmetic mean."""
    from lsr.cli.main import main

    flags = ["-k", "5", "--mode", "hybrid", "--bm25-weight", "0.3", "--combination", "geometric_mean", "--json"]
    want = searcher.search(queries[1], k=5, mode="hybrid", hybrid=HybridOptions(bm25_weight=0.3,
                                                                                 combination="geometric_mean"))
    arithmetic = searcher.search(queries[1], k=5, mode="hybrid", hybrid=HybridOptions(bm25_weight=0.3))
    assert _hits(want) != _hits(arithmetic)
    for argv in (["search", str(collections["hybrid"])], ["query", "--endpoint", servers["main"].address]):
        assert main([*argv, queries[1], *flags]) == 0
        hits = json.loads(capsys.readouterr().out)["hits"]
        assert [hit["doc_id"] for hit in hits] == [hit.doc_id for hit in want.hits]
        assert [hit["score"] for hit in hits] == pytest.approx([hit.score for hit in want.hits])


@pytest.mark.parametrize("mode, never_loaded", [("bm25", ["torch", "transformers"]), ("sparse", ["lsr.encode.dense"]),
                                                ("dense", ["lsr.encode.splade"])])
def test_lsr_search_loads_only_the_models_its_mode_needs(collections, searcher, queries, mode, never_loaded):
    """A BM25 search imports no torch (about 2 s to hits, not 9); a sparse one never loads the dense model and a
    dense one never SPLADE. The hits are those of a searcher that loaded everything."""
    script = ("import json, sys\nfrom lsr.cli.main import main\nassert main(sys.argv[1:]) == 0\n"
              f"print(json.dumps([m for m in {never_loaded!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", script, "search", str(collections["hybrid"]), queries[3], "-k", "5",
                          "--mode", mode, "--json"], check=True, capture_output=True, text=True, timeout=300)
    *printed, loaded = out.stdout.splitlines()
    assert json.loads(loaded) == []
    want = searcher.search(queries[3], k=5, mode=mode).hits
    assert [(h["doc_id"], h["score"]) for h in json.loads("\n".join(printed))["hits"]] == [(h.doc_id, h.score) for h in want]


def test_lsr_query_user_errors_exit_2_with_one_line(servers, tls_files):
    cert, _ = tls_files
    refused = subprocess.run([sys.executable, "-m", "lsr", "query", "--endpoint", servers["secure"].address,
                              "--tls", str(cert), "vitamin d"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.startswith("lsr query: error: UNAUTHENTICATED") and len(refused.stderr.splitlines()) == 1


def test_a_tls_mismatch_is_a_fix_named_in_one_line_not_a_missing_server(servers, tls_files, tmp_path, capsys):
    """A server whose certificate the client does not trust, a plain client at a TLS server and a CA file that is no
    certificate all read "no server answered" (exit 1: retry), after seconds, under gRPC's own log lines."""
    from lsr.cli.main import main

    address = servers["secure"].address
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    for flags, says in ((["--tls"], f"the TLS handshake with {address} failed (")  # system roots: self-signed is untrusted
                        , ([], f"the server at {address} closed the connection at once: it serves TLS"),
                        (["--tls", str(garbage)], f"the TLS CA file {garbage} holds no PEM certificate")):
        assert main(["query", "--endpoint", address, "vitamin d", *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"lsr query: error: {says}") and len(err.splitlines()) == 1, err


def test_a_tls_certificate_without_the_endpoint_s_name_is_named_as_a_fix(collections, tmp_path, capsys):
    """gRPC 1.85 says "Hostname Verification Check failed", not "handshake failed": it read "no server answered"
    (exit 1: retry) after 5 s."""
    from lsr.cli.main import main

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "elsewhere.crt", tmp_path / "elsewhere.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=elsewhere",
                    "-addext", "subjectAltName=DNS:elsewhere", "-keyout", str(key), "-out", str(cert)], check=True,
                   capture_output=True)
    server = ServerProcess(collections["sparse_only"], "--tls-cert", str(cert), "--tls-key", str(key)).wait_listening()
    try:
        assert main(["query", "--endpoint", server.address, "--tls", str(cert), "vitamin d"]) == 2
    finally:
        server.kill()
    assert capsys.readouterr().err == (
        f"lsr query: error: the TLS handshake with {server.address} failed (the server's certificate does not hold "
        "the name 127.0.0.1); connect by a name its certificate holds, or give the server a certificate for this "
        "one\n")


def test_the_client_checks_its_switches_and_names_its_own_message_limit(servers):
    from lsr.service.client import call_failed

    with pytest.raises(TypeError, match="explain must be True or False, got 1"):
        Client(servers["main"].address).search("vitamin d", explain=1)  # taken as on
    with pytest.raises(TypeError, match="include_text must be True or False, got 'no'"):
        Client(servers["main"].address).search_batch(["vitamin d"], include_text="no")  # protobuf's words
    with pytest.raises(TypeError, match="max_message_bytes must be a whole number, got '10'"):
        Client(servers["main"].address, max_message_bytes="10")
    with pytest.raises(ValueError, match="max_message_bytes must be ≥ 1, got 0"):
        Client(servers["main"].address, max_message_bytes=0)
    client = Client(servers["main"].address, max_message_bytes=np.int64(64 << 20))  # numpy's, as everywhere else
    for chunk_size, error in ((2.5, TypeError), (None, TypeError), ("2", TypeError), (0, ValueError)):
        with pytest.raises(error, match="chunk_size must be"):  # float and None failed in slicing, "2" went as
            client.search_batch(["vitamin d"], chunk_size=chunk_size)  # UNKNOWN, which callers retry
        with pytest.raises(error, match="chunk_size must be"):
            client.upsert(["x"], ["a text"], chunk_size=chunk_size)

    def answer(dense):
        try:
            return client.search(dense=dense, mode="dense").hits
        except grpc.RpcError as exc:
            return exc.code()

    one_row = np.full((1, 384), 0.05, np.float32)  # an encoder's row, as Searcher.search takes it: a TypeError here
    assert answer(one_row) == answer(one_row[0].tolist())
    with Client(servers["main"].address, max_message_bytes=100) as small, pytest.raises(grpc.RpcError) as refused:
        small.search("vitamin d", k=50, include_text=True)
    said = str(call_failed(refused.value))  # it said to start lsr serve with a larger --max-message-mb
    assert "over this client's own limit" in said and "--max-message-mb" not in said, said


def test_lsr_beir_evaluates_a_server_behind_tls_and_a_token(servers, tls_files, capsys):
    """`lsr beir --endpoint` had no --tls or --auth-token-file: a secured server could not be evaluated."""
    from lsr.cli.main import main

    command = servers["secure"].command
    token_file = command[command.index("--auth-token-file") + 1]
    assert main(["beir", "--dataset", "scifact", "--methods", "sparse", "--quiet", "--endpoint",
                 servers["secure"].address, "--tls", str(tls_files[0]), "--auth-token-file", token_file]) == 0
    out = capsys.readouterr().out  # through TLS and the token, on the SciFact documents that server holds
    assert any(line.startswith("| sparse") for line in out.splitlines()), out
    assert main(["beir", "--dataset", "scifact", "--quiet", "--tls"]) == 2
    assert "--tls does nothing here: they reach a server given by --endpoint" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--tls", "vitamin d"], "the query is empty; give the words to search for (--tls took 'vitamin d' as its CA "
                             "certificate: put the query before --tls, or write --tls=CA_CERT)"),  # "required: text"
    (["\u200b"], "the query is empty; give the words to search for"),  # a zero-width space went to the server
])
def test_lsr_query_without_words_says_so_before_connecting(free_port, capsys, argv, message):
    from lsr.cli.main import main

    assert main(["query", "--endpoint", f"127.0.0.1:{free_port}", *argv]) == 2
    assert capsys.readouterr().err == f"lsr query: error: {message}\n"


@pytest.mark.parametrize("token, at", [("s3cr\u00e9t", 4), ("s3cret\nsecond-line", 6)], ids=["accented", "two-lines"])
def test_a_token_grpc_metadata_cannot_carry_is_one_line_naming_the_flag(servers, collections, tls_files, tmp_path,
                                                                        capsys, token, at):
    """A token with an accented letter or a newline inside failed every call in the client as INTERNAL "Invalid
    metadata" (exit 1, "retry", under a C-core error), and `lsr serve` took it and then could be called by no one."""
    from lsr.cli.main import main

    token_file = tmp_path / "token"
    token_file.write_text(token + "\n", encoding="utf-8")
    says = f"--auth-token-file {token_file} holds {token[at]!r} at character {at}; a bearer token is printable ASCII"
    assert main(["query", "--endpoint", servers["secure"].address, "--tls", str(tls_files[0]),
                 "--auth-token-file", str(token_file), "vitamin d"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lsr query: error: {says}") and len(err.splitlines()) == 1
    assert main(["serve", str(collections["sparse_only"]), "--port", "0", "--auth-token-file", str(token_file)]) == 2
    assert capsys.readouterr().err.startswith(f"lsr serve: error: {says}")  # refused before the model loads
    with pytest.raises(ValueError, match="the auth token holds"):
        Client(servers["secure"].address, token=token, tls=str(tls_files[0]))


def test_a_failed_call_says_whether_to_retry_or_fix_the_request(servers, tls_files, free_port):
    """Every failed call was exit 2, "fix your input", even a server that went away: a script could not tell a retry
    from a fix. The server's or the network's failure is a MachineStateError (exit 1), a refusal a RuntimeError."""
    from lsr.files import MachineStateError
    from lsr.service.client import call_failed

    with Client(f"127.0.0.1:{free_port}", timeout=2) as client, pytest.raises(grpc.RpcError) as down:
        client.search("statins", k=3)
    failure = call_failed(down.value)
    assert isinstance(failure, MachineStateError) and str(failure).startswith("UNAVAILABLE: ")
    with Client(servers["secure"].address, tls=str(tls_files[0])) as client, pytest.raises(grpc.RpcError) as refused:
        client.search("statins", k=3)  # no token
    failure = call_failed(refused.value)
    assert type(failure) is RuntimeError and str(failure).startswith("UNAUTHENTICATED: ")


@pytest.mark.parametrize("verb", [["query", "statins"], ["beir", "--dataset", "scifact", "--quiet"]])
def test_an_endpoint_that_is_down_fails_in_one_line_after_its_5_s_connect_wait(verb, free_port):
    """Not after a call's own timeout (60 s for lsr beir); 20 s holds the imports on a busy 2-core machine too."""
    address = f"127.0.0.1:{free_port}"
    verb = verb[:1] + ["--endpoint", address] + verb[1:]
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "lsr", *verb], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 20
    assert run.returncode == 1 and run.stdout == ""  # the machine's state (retry later), not a bad input (2)
    assert run.stderr == f"lsr {verb[0]}: error: no server answered at {address} within 5 s; is `lsr serve` running there?\n"


def test_a_bare_host_means_the_default_port_50051():
    from lsr.service.client import endpoint_address

    assert Client("localhost").endpoint == "localhost:50051"
    assert endpoint_address("search.internal:443") == "search.internal:443"
    assert endpoint_address("[::1]") == "[::1]:50051" and endpoint_address("::1") == "[::1]:50051"
    assert endpoint_address("[::1]:7000") == "[::1]:7000" and endpoint_address("unix:/tmp/s") == "unix:/tmp/s"
    for bad in ("localhost:99999", "localhost:0", "localhost:http", "[::1]:"):  # gRPC waited out the timeout on them
        with pytest.raises(ValueError, match="no valid port .* a port in 1..65535"):
            endpoint_address(bad)
    for bad in ("[::1", "[::1]x"):  # dialled as given, then "no server answered"
        with pytest.raises(ValueError, match="opens an IPv6 address with \\[ but does not close it"):
            endpoint_address(bad)
    for bad in ("http://localhost:50051", "grpcs://h:1"):  # "no server answered", exit 1, once the timeout ran out
        with pytest.raises(ValueError, match="has a URL scheme; give HOST:PORT without"):
            endpoint_address(bad)
    # 0 and 1e10 (past gRPC's int64 nanoseconds) failed every call at once as DEADLINE_EXCEEDED
    for timeout in (0, -1, float("nan"), float("inf"), 1e10):
        with pytest.raises(ValueError, match="the timeout must be a positive number of seconds"):
            Client("localhost", timeout=timeout)
    assert Client("localhost", timeout=1e8).timeout == 1e8
    with pytest.raises(TypeError, match="the timeout must be a number of seconds or None, got '5'"):
        Client("localhost", timeout="5")  # failed deep in a comparison of an int with a str
    with pytest.raises(TypeError, match="the endpoint must be a str HOST\\[:PORT\\]"):
        Client(None)  # "'NoneType' object has no attribute 'strip'"
    with socket.socket() as probe:  # through the CLI too, when nothing real listens on 50051 here
        if probe.connect_ex(("127.0.0.1", 50051)) == 0:
            return
    run = subprocess.run([sys.executable, "-m", "lsr", "query", "--endpoint", "127.0.0.1", "statins"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "no server answered at 127.0.0.1:50051" in run.stderr


# ---------------------------------------------------------------------------------- bad input
def test_the_client_checks_what_the_searcher_checks_before_sending(free_port):
    """k=0 went out as proto3's "unset" and came back as 10 hits; one str to search_batch went as one-character
    queries; an int sparse key failed inside protobuf. Nothing listens at the port: each fails before a send."""
    client = Client(f"127.0.0.1:{free_port}", timeout=2)
    with pytest.raises(ValueError, match="k must be an integer in 1..1000, got 0"):
        client.search("cancer", k=0)
    with pytest.raises(TypeError, match="search_batch takes a list of query texts, got one str"):
        client.search_batch("cancer")
    with pytest.raises(TypeError, match="maps tokens .str. to weights, got the key 3"):
        client.search(sparse={3: 1.0})
    with pytest.raises(TypeError, match="hybrid candidates must be a whole number, got 2.5"):
        client.search("cancer", mode="hybrid", hybrid=HybridOptions(candidates=2.5))
    with pytest.raises(ValueError, match=r"PRF weight must be in \[0, 10\], got 11"):
        client.search_batch(["cancer"], prf=PrfOptions(weight=11))
    with pytest.raises(ValueError, match="unknown mode 'fuzzy'"):
        client.search("cancer", mode="fuzzy")
    for timeout in (0, -1, float("nan")):  # a call's own timeout failed at once as DEADLINE_EXCEEDED, "retry"
        with pytest.raises(ValueError, match="the timeout must be a positive number of seconds"):
            client.search("cancer", timeout=timeout)
    with pytest.raises(ValueError, match="text is not UTF-8 text: an undecodable byte at character 3"):
        client.search("can\udcffcer")  # these two were protobuf's bare UnicodeEncodeError and "bad argument type"
    with pytest.raises(TypeError, match="text must be a str"):
        client.search(b"cancer")
    with pytest.raises(TypeError, match=r"texts\[1\] is NoneType, expected str"):
        client.search_batch(["cancer", None])


def test_bound_factor_searches_the_splade_list_approximately_in_process_and_over_grpc(client, searcher, queries,
                                                                                     monkeypatch):
    """``bound_factor`` was an InvertedIndex argument only: Searcher, the service and the CLI searched exactly. Every
    hit still carries its exact score; a served search equals the in-process one; a sharded search sends it along
    (a SparseQuery through the shards' legs)."""
    import lsr.index.index as index_module

    for query in queries[:4]:  # one 32k-document window: nothing is left out at SciFact's size
        served = client.search(query, k=10, mode="hybrid", prf=True, bound_factor=3.0)
        here = searcher.search(query, k=10, mode="hybrid", prf=True, bound_factor=3.0)
        assert [h.doc_id for h in served.hits] == [h.doc_id for h in here.hits]
    monkeypatch.setattr(index_module, "TAAT_WINDOW", 64)  # many windows: from the second on, terms are left out
    differs = 0
    for query in queries:
        exact = searcher.search(query, k=10, mode="sparse")
        approx = searcher.search(query, k=10, mode="sparse", bound_factor=1e6)
        full = {h.doc_id: h.score for h in searcher.search(query, k=1000, mode="sparse").hits}
        assert all(h.score == pytest.approx(full[h.doc_id], rel=1e-6) for h in approx.hits)  # rescored exactly
        differs += [h.doc_id for h in approx.hits] != [h.doc_id for h in exact.hits]
    assert differs > 0  # the factor reached the index
    batch = searcher.search_batch(queries[:3], k=10, mode="sparse", bound_factor=1e6)
    assert [[h.doc_id for h in r.hits] for r in batch] == [
        [h.doc_id for h in searcher.search(q, k=10, mode="sparse", bound_factor=1e6).hits] for q in queries[:3]]
    with pytest.raises(ValueError, match="bound_factor must be a number >= 1"):
        searcher.search(queries[0], bound_factor=0.9)
    with pytest.raises(ValueError, match="bound_factor must be a number >= 1"):
        client.search(queries[0], bound_factor=float("nan"))
    with pytest.raises(ValueError, match="bound_factor approximates the SPLADE list, and mode dense has none"):
        searcher.search(queries[0], mode="dense", bound_factor=3.0)
    with pytest.raises(ValueError, match="hybrid options set how hybrid fusion joins lists, and mode sparse runs one"):
        searcher.search_batch(queries[:2], mode="sparse", hybrid=HybridOptions("rrf"))
    assert searcher.search(queries[0], mode="sparse", hybrid=HybridOptions("rrf"), prf=True).hits  # PRF fuses by them


def _bad_requests() -> list[tuple[str, pb.SearchRequest, grpc.StatusCode, str]]:
    bad = grpc.StatusCode.INVALID_ARGUMENT
    return [
        ("empty", pb.SearchRequest(text=""), bad, "query"),
        ("whitespace", pb.SearchRequest(text=" \t\n "), bad, "empty"),
        ("negative k", pb.SearchRequest(text="cancer", k=-1), bad, "k must"),
        ("k over 1000", pb.SearchRequest(text="cancer", k=1001), bad, "k must"),
        ("unknown mode", pb.SearchRequest(text="cancer", mode=7), bad, "mode"),
        ("unknown normalization", pb.SearchRequest(text="cancer", mode=pb.HYBRID, hybrid=pb.HybridOptions(normalization=9)), bad, "normalization"),
        ("unknown interpolation", pb.SearchRequest(text="cancer", prf=pb.PrfOptions(enabled=True, interpolate=5)), bad, "interpolation"),
        ("unknown interpolation, PRF off", pb.SearchRequest(text="cancer", prf=pb.PrfOptions(interpolate=5)), bad, "interpolation"),
        ("NaN PRF weight, PRF off", pb.SearchRequest(text="cancer", prf=pb.PrfOptions(weight=float("nan"))), bad, "weight"),  # was OK
        ("unknown combination", pb.SearchRequest(text="cancer", mode=pb.HYBRID, hybrid=pb.HybridOptions(combination=9)), bad, "combination"),
        ("geometric mean of z-scores", pb.SearchRequest(text="cancer", mode=pb.HYBRID, hybrid=pb.HybridOptions(
            normalization=pb.HybridOptions.Z_SCORE, combination=pb.HybridOptions.GEOMETRIC_MEAN)), bad, "min_max or l2"),
        ("sparse weight out of range", pb.SearchRequest(text="cancer", mode=pb.HYBRID, hybrid=pb.HybridOptions(sparse_weight=1.5)), bad, "sparse_weight"),
        ("NaN weight", pb.SearchRequest(sparse={"cancer": float("nan")}), bad, "finite"),
        ("inf weight", pb.SearchRequest(sparse={"cancer": float("inf")}), bad, "finite"),
        ("negative weight", pb.SearchRequest(sparse={"cancer": -1.0}), bad, "non-negative"),
        ("unknown token", pb.SearchRequest(sparse={"no-such-token-xyz": 1.0}), bad, "unknown token"),
        ("sparse weight overflowing scores", pb.SearchRequest(sparse={"cancer": 3e38, "cell": 1.0}), bad, "between 1e-30 and 1e+30"),
        ("sparse weights underflowing scores", pb.SearchRequest(sparse={"cancer": 1e-44}), bad, "between 1e-30 and 1e+30"),
        ("sparse vector in hybrid mode", pb.SearchRequest(sparse={"cancer": 1.0}, mode=pb.HYBRID), bad, "sparse mode only"),
        # options the mode gives nothing to do were taken, and the hits were those without them (the CLI refused them)
        ("hybrid options in sparse mode", pb.SearchRequest(text="cancer", mode=pb.SPARSE, hybrid=pb.HybridOptions(
            normalization=pb.HybridOptions.RRF)), bad, "hybrid options set how hybrid fusion joins lists, and mode sparse"),
        ("bound factor in bm25 mode", pb.SearchRequest(text="cancer", mode=pb.BM25, bound_factor=3.0), bad,
         "bound_factor approximates the SPLADE list, and mode bm25 has none"),
        ("NUL-only text", pb.SearchRequest(text="\x00\x00"), bad, "empty"),
        ("soft hyphens and a direction mark only", pb.SearchRequest(text="\xad\u200e\xad"), bad, "empty"),
        ("dense overflowing scores", pb.SearchRequest(dense=[3e38] * 384, mode=pb.DENSE), bad, "between 1e-30 and 1e+30"),
        ("all-zero dense", pb.SearchRequest(dense=[0.0] * 384, mode=pb.DENSE), bad, "all zeros"),
        ("all-zero sparse", pb.SearchRequest(sparse={"cancer": 0.0, "cell": 0.0}), bad, "all 0"),  # was OK, no hits
        ("wrong dense dimension", pb.SearchRequest(dense=[0.1] * 7, mode=pb.DENSE), bad, "dimensions"),
        ("text and sparse", pb.SearchRequest(text="cancer", sparse={"cancer": 1.0}), bad, "only one"),
        ("bound_factor below 1", pb.SearchRequest(text="cancer", bound_factor=0.5), bad, "bound_factor must be"),
        ("NaN bound_factor", pb.SearchRequest(text="cancer", bound_factor=float("nan")), bad, "bound_factor must be"),
        ("inf bound_factor", pb.SearchRequest(text="cancer", bound_factor=float("inf")), bad, "bound_factor must be"),
        ("dense beside text outside hybrid", pb.SearchRequest(text="cancer", dense=[0.1] * 384, mode=pb.DENSE), bad, "only one"),
    ]


@pytest.mark.parametrize("case", _bad_requests(), ids=lambda case: case[0])
def test_bad_input_gets_the_right_status_and_the_server_keeps_serving(servers, client, case):
    _, request, code, words = case
    with pytest.raises(grpc.RpcError) as err:
        _stub(servers["main"].address).Search(request, timeout=30)
    assert err.value.code() == code, err.value.details()
    assert words.lower() in err.value.details().lower()
    assert client.search("cancer", k=1).hits  # still serving


@pytest.mark.parametrize("mode, hybrid, missing", [
    ("dense", None, "dense"), ("hybrid", None, "dense"), ("bm25", None, "BM25"),
    ("hybrid", HybridOptions(sparse_weight=0.5, dense_weight=0.0, bm25_weight=0.5), "BM25"),
])
def test_modes_without_their_index_fail_precondition(servers, mode, hybrid, missing):
    with servers["sparse_only"].client() as c:
        with pytest.raises(grpc.RpcError) as err:
            c.search("vitamin d", mode=mode, hybrid=hybrid)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert missing in err.value.details()
        assert c.search("vitamin d").hits


def test_auto_mode_is_hybrid_over_every_leg_or_sparse_alone_in_process_and_through_the_server(servers, client, searcher,
                                                                                          queries, collections, capsys):
    """The CLI's default mode was unknown to the API, the client and the wire ("unknown mode 'auto'"): now each
    resolves it as the CLI does; a vector query in auto mode runs its own leg; PRF in bm25 mode (a no-op that
    returned the BM25 list) is refused, and so is a fusion weight outside hybrid mode (ignored before)."""
    for text in queries[:3]:
        want = _hits(searcher.search(text, k=10, mode="hybrid"))
        assert _hits(searcher.search(text, k=10, mode="auto")) == want == _hits(client.search(text, k=10, mode="auto"))
    assert [_hits(r) for r in client.search_batch(queries[:3], k=5, mode="auto")] == \
        [_hits(searcher.search(q, k=5, mode="hybrid")) for q in queries[:3]]
    sparse = {"vitamin": 1.5, "cancer": 0.75}
    assert _hits(client.search(sparse=sparse, k=5, mode="auto")) == _hits(searcher.search(sparse=sparse, k=5))
    with servers["sparse_only"].client() as c:
        alone = Searcher.open(collections["sparse_only"])
        assert _hits(c.search(queries[0], k=5, mode="auto")) == _hits(alone.search(queries[0], k=5)) != []
    with pytest.raises(ValueError, match="PRF moves the SPLADE and dense queries, and bm25 mode has neither"):
        client.search(queries[0], mode="bm25", prf=True)
    with pytest.raises(ValueError, match="bm25 mode has neither"):
        searcher.search(queries[0], mode="bm25", prf=PrfOptions())
    from lsr.cli import main as cli_main

    for argv, said in (
        (["query", "--endpoint", servers["main"].address, "vitamin", "--mode", "sparse", "--bm25-weight", "0.3"],
         "lsr query: error: --bm25-weight weighs a list of hybrid fusion, and --mode sparse runs one list; use --mode "
         "hybrid"),
        (["search", str(collections["sparse_only"]), "vitamin", "--sparse-weight", "0.3"],
         "lsr search: error: --sparse-weight weighs a list of hybrid fusion, and --mode auto (sparse here: SPLADE is "
         "its only leg) runs one list; use --mode hybrid"),
        (["search", str(collections["hybrid"]), "vitamin", "--mode", "bm25", "--prf"],
         "lsr search: error: PRF moves the SPLADE and dense queries, and bm25 mode has neither; use it in sparse, "
         "dense, hybrid or auto mode"),
        (["search", str(collections["hybrid"]), "vitamin", "--mode", "bm25", "--normalization", "rrf"],  # ignored before
         "lsr search: error: --normalization sets how hybrid fusion joins lists, and --mode bm25 runs one list; use "
         "--mode hybrid (or --prf, whose second run they shape)"),
        (["query", "--endpoint", servers["main"].address, "vitamin", "--mode", "dense", "--candidates", "50"],
         "lsr query: error: --candidates sets how hybrid fusion joins lists, and --mode dense runs one list; use "
         "--mode hybrid (or --prf, whose second run they shape)"),
        (["search", str(collections["hybrid"]), "vitamin", "--mode", "sparse", "--combination", "harmonic_mean"],
         "lsr search: error: --combination sets how hybrid fusion joins lists, and --mode sparse runs one list; use "
         "--mode hybrid (or --prf, whose second run they shape)"),
        (["query", "--endpoint", servers["main"].address, "vitamin", "--normalization", "rrf", "--combination",
          "geometric_mean"],
         "lsr query: error: geometric_mean combines min_max or l2 scores, and the normalization is rrf: it sums "
         "reciprocal ranks"),
        (["search", str(collections["hybrid"]), "vitamin", "--mode", "hybrid", "--rrf-k", "5"],
         "lsr search: error: --rrf-k is RRF's rank constant, and --normalization is min_max; add --normalization rrf"),
    ):
        assert cli_main(argv) == 2
        assert capsys.readouterr().err.splitlines()[-1] == said
    # with PRF the depth and the after-run fusion are used, so they are taken
    assert cli_main(["search", str(collections["hybrid"]), "vitamin", "--mode", "sparse", "--prf", "--candidates",
                     "50", "--normalization", "rrf", "--rrf-k", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"]


def test_query_vectors_that_are_no_numbers_or_all_zero_are_refused_in_process_too(searcher):
    """Strings in a dense vector were converted ("1" searched as 1.0); an all-zero sparse query said OK, no hits."""
    with pytest.raises(TypeError, match="a dense query is a vector of numbers"):
        searcher.search(dense=["1"] * 384, mode="dense")
    with pytest.raises(ValueError, match="the sparse query's weights are all 0: it matches nothing"):
        searcher.search(sparse={"cancer": 0.0})


def test_overlong_query_is_truncated_and_flagged(servers, client):
    """Flagged in the response and the request's log line, with no warning line besides: one a long query let a
    client fill the server's log."""
    result = client.search("vitamin deficiency and bone density " * 400)
    assert result.truncated and result.hits
    assert " truncated=True" in servers["main"].wait_for_line(lambda line: "rpc=Search " in line and "truncated=True" in line)
    assert not [line for line in servers["main"].lines if "were truncated" in line]
    assert not client.search("vitamin deficiency").truncated
    paragraph = "vitamin deficiency and bone density " * 60  # ~300 tokens: past MiniLM's 256, within SPLADE's 512
    assert client.search(paragraph, mode="dense").truncated and not client.search(paragraph).truncated


@pytest.mark.parametrize("flag", ["--max-message-mb", "--max-response-mb", "--max-upserts-mb", "--max-answers-mb"])
def test_a_size_limit_of_zero_is_one_line_naming_the_flag(collections, capsys, flag):
    from lsr.cli.main import main

    for value in ("0", "2048", "inf", "nan"):  # 2048 and inf crashed gRPC's channel arguments in a traceback
        assert main(["serve", str(collections["hybrid"]), flag, value]) == 2  # refused before any model loads
        err = capsys.readouterr().err
        assert err == f"lsr serve: error: {flag} must be at least 1 KiB (0.001) and under 2048 MB, got {value}\n"
    for other, value, says in [("--batch-window-ms", "nan", "[0, 10000)"), ("--grace", "nan", "[0, 86400)"),
                               ("--stream-idle-s", "0", "(0, 86400)"), ("--stream-max-s", "nan", "(0, 86400)")]:  # NaN passed "< 0": searches waited forever
        assert main(["serve", str(collections["hybrid"]), other, value]) == 2
        assert capsys.readouterr().err == f"lsr serve: error: {other} must be in {says}, got {value}\n"
    assert main(["serve", str(collections["hybrid"]), "--max-answers-mb", "32"]) == 2  # the largest answer never fits
    said = capsys.readouterr().err
    assert said == "lsr serve: error: --max-answers-mb (32) must be at least --max-response-mb (64)\n"
    assert main(["serve", str(collections["hybrid"]), "--stream-idle-s", "100", "--stream-max-s", "10"]) == 2
    assert capsys.readouterr().err == "lsr serve: error: --stream-idle-s (100) must be at most --stream-max-s (10)\n"
    for other in ("--workers", "--max-batch"):  # 10^20 was taken
        assert main(["serve", str(collections["hybrid"]), other, "99999999999999999999"]) == 2
        assert capsys.readouterr().err == f"lsr serve: error: {other} must be at most 4096, got 99999999999999999999\n"


def test_a_taken_port_or_a_wrong_tls_key_is_named_before_the_load(collections, tls_files, tmp_path, capsys):
    """With 127.0.0.1:P taken, `--host localhost` bound only [::1]:P and served the clients that try IPv6 first; a key
    that is not the certificate's was reported as gRPC's "Failed to bind", after the whole collection had loaded."""
    import socket

    from lsr.cli.main import main

    cert, key = tls_files
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(collections["hybrid"]), "--host", "localhost", "--port", str(port)]) == 1
        assert capsys.readouterr().err == (f"lsr serve: error: could not bind localhost:{port}: 127.0.0.1 port {port} "
                                           "is in use (another server? pick another --port, or 0 for a free one)\n")
    other_key = tmp_path / "other.key"
    subprocess.run(["openssl", "genrsa", "-out", str(other_key), "2048"], check=True, capture_output=True)
    encrypted_key = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:secret", "-out", str(encrypted_key)],
                   check=True, capture_output=True)
    for bad_key, says in [(other_key, "--tls-key is not the private key of --tls-cert"),
                          (encrypted_key, f"--tls-key {encrypted_key} is encrypted; gRPC needs it unencrypted"),
                          (tmp_path / "absent.key", f"--tls-key {tmp_path / 'absent.key'} is not a file"),
                          (cert, "--tls-cert must be a PEM certificate chain and --tls-key its unencrypted PEM private key")]:
        assert main(["serve", str(collections["hybrid"]), "--tls-cert", str(cert), "--tls-key", str(bad_key)]) == 2
        err = capsys.readouterr().err  # an encrypted key made OpenSSL ask for its pass phrase on the terminal
        assert err.startswith(f"lsr serve: error: {says}") and err.count("\n") == 1


def test_a_batch_response_is_sized_as_grpc_counts_it():
    """SearchBatch summed its results' ByteSize(): a batch just under --max-response-mb passed the server's check and
    then failed in gRPC's own size check, without the server's message (each result also costs a tag and a length)."""
    from lsr.service.convert import size_in_batch

    results = [pb.SearchResponse(hits=[pb.Hit(doc_id="d", text="x" * n)]) for n in (0, 100, 130, 20_000, 3_000_000)]
    results.append(pb.SearchResponse())  # an empty result still costs its tag and length
    assert sum(size_in_batch(r) for r in results) == pb.SearchBatchResponse(results=results).ByteSize()


def test_oversize_message_is_resource_exhausted(client):
    with pytest.raises(grpc.RpcError) as err:
        client.search("protein " * (5 * 1024 * 1024 // 8))  # 5 MiB > the 4 MiB default limit
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.health() == "SERVING"


def test_a_request_over_the_servers_size_limit_exits_2_not_retry(servers, tmp_path, capsys):
    """400,000 ids to `lsr delete --endpoint` passed the server's 4 MiB request limit: RESOURCE_EXHAUSTED, exit 1 ("the
    machine: retry"), though every retry meets the same limit. Nothing is deleted."""
    from lsr.cli.main import main

    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"missing-id-{i:08d}\n" for i in range(400_000)))
    assert main(["delete", "--endpoint", servers["main"].address, "--ids-file", str(ids)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lsr delete: error: RESOURCE_EXHAUSTED: ") and "a retry meets the same limit" in err
    assert len(err.splitlines()) == 1


def test_delete_of_unknown_ids_is_not_found(client):
    with pytest.raises(grpc.RpcError) as err:
        client.delete(["no-such-doc-1", "no-such-doc-2"])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-doc" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # NOT_FOUND "(first: '')", where an upsert refuses an empty id
        client.delete(["no-such-doc-1", ""])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "ids[1] is empty" in err.value.details()


def test_deadlines_are_honoured_and_abandoned_work_stops(client, queries):
    before = client.stats()["abandoned"]
    with pytest.raises(grpc.RpcError) as err:
        client.search_batch(queries * 40, k=10, mode="hybrid", prf=PrfOptions(), chunk_size=960, timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 60
    while True:  # the server notices at its next stage boundary, stops, and the call leaves in_flight
        stats = client.stats()
        if stats["abandoned"] > before and stats["in_flight"] == 0:
            break
        assert time.monotonic() < deadline, f"the server never gave up the expired batch: {stats}"
        time.sleep(0.2)
    # Last, so that a server still unwinding this one cannot disturb the counts above.
    with pytest.raises(grpc.RpcError) as err:
        client.search(queries[0], timeout=0.0005)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# ---------------------------------------------------------------------------------- concurrency
def test_32_concurrent_clients_match_serial_results(servers, queries):
    configs = [("sparse", None), ("sparse", PrfOptions()), ("hybrid", PrfOptions())]
    with servers["main"].client() as serial:
        expected = {(q, c): serial.search(queries[q], k=10, mode=configs[c][0], prf=configs[c][1])
                    for q in range(len(queries)) for c in range(len(configs))}

    def one_client(worker: int) -> list[tuple[tuple[int, int], object]]:
        out = []
        with servers["main"].client() as c:
            for i in range(50):
                key = ((worker + i) % len(queries), (worker + i) % len(configs))
                mode, prf = configs[key[1]]
                out.append((key, c.search(queries[key[0]], k=10, mode=mode, prf=prf)))
        return out

    with ThreadPoolExecutor(32) as pool:
        answers = [pair for batch in pool.map(one_client, range(32)) for pair in batch]
    assert len(answers) == 32 * 50
    for key, result in answers:  # the same bits: a query's vectors do not depend on the micro-batch it joined
        assert _hits(result) == _hits(expected[key]), key
    with servers["main"].client() as c:
        details = c.stats()["details"]
    assert float(details["sparse_mean_micro_batch"]) > 1.0  # concurrent encodings really were batched


# ---------------------------------------------------------------------------------- writes, crash, drain
def test_writes_are_visible_durable_across_kill_9_and_sigterm_drains(collections, queries, tmp_path):
    index_dir = tmp_path / "writable"
    shutil.copytree(collections["hybrid"], index_dir)
    server = ServerProcess(index_dir).wait_listening()
    try:
        with server.client() as c:
            n_docs = c.stats()["num_docs"]
            text = "Quokka marsupials on Rottnest Island show unusual zinc metabolism in their kidneys."
            assert c.upsert(["svc-new-1"], [text]) == 1
            assert c.search("quokka zinc kidneys", k=1).hits[0].doc_id == "svc-new-1"
            victim = c.search(queries[0], k=1).hits[0].doc_id
            assert c.delete([victim, "no-such-doc"]) == ["no-such-doc"]
            assert victim not in {h.doc_id for h in c.search(queries[0], k=50).hits}
        server.proc.send_signal(signal.SIGKILL)  # no chance to flush anything the ack did not already make durable
        server.proc.wait(30)
    finally:
        server.kill()

    server = ServerProcess(index_dir).wait_listening()
    try:
        with server.client() as c:
            assert c.stats()["num_docs"] == n_docs
            assert c.search("quokka zinc kidneys", k=1).hits[0].doc_id == "svc-new-1"
            assert victim not in {h.doc_id for h in c.search(queries[0], k=50).hits}

            # SIGTERM while a long batch runs: NOT_SERVING, new searches refused, the batch completes, exit 0.
            batch: dict = {}
            worker = threading.Thread(target=lambda: batch.update(
                results=c.search_batch(queries * 4, k=10, mode="hybrid", prf=PrfOptions(), chunk_size=1000, timeout=300)))
            worker.start()
            deadline = time.monotonic() + 60
            while c.stats()["in_flight"] == 0:
                assert time.monotonic() < deadline and worker.is_alive()
                time.sleep(0.05)
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while c.health() != "NOT_SERVING":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert worker.is_alive(), "the batch finished before the drain could be observed; make it longer"
            with pytest.raises(grpc.RpcError) as err:
                c.search("new work during the drain")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            worker.join(300)
            assert len(batch["results"]) == len(queries) * 4
        assert server.proc.wait(60) == 0
        server.wait_for_line(lambda line: "event=stopped drained=True" in line)  # the log is read on a thread
    finally:
        server.kill()


def _eventually(check, timeout: float = 10.0) -> bool:
    """Whether ``check()`` holds within ``timeout`` seconds (tried every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_server_and_a_script_writing_one_collection_keep_each_others_writes(collections, tmp_path):
    """A script upserts beside a running server: the server's searches find it within a second, the server takes
    the script's write up before its own, waits while another process holds the collection, and the script's
    searches then find the server's write; nothing is lost."""
    from lsr.files import exclusive_folder
    from lsr.ingest.verify import verify_collection

    index_dir = tmp_path / "shared"
    shutil.copytree(collections["hybrid"], index_dir)
    server = ServerProcess(index_dir).wait_listening()
    script = Searcher.open(index_dir)
    try:
        with server.client() as c:
            n_docs = c.stats()["num_docs"]
            script.upsert(["script-1"], ["Quokka marsupials on Rottnest Island show unusual zinc metabolism."])
            # a server that only reads looks for other processes' writes every second: found in every leg
            assert _eventually(lambda: c.search("quokka zinc", k=1, mode="hybrid").hits[0].doc_id == "script-1")
            assert c.search("quokka zinc", k=1, mode="bm25").hits[0].doc_id == "script-1"
            assert c.upsert(["svc-2"], ["Axolotl limb regeneration depends on macrophages."]) == 1
            assert c.stats()["num_docs"] == n_docs + 2
            assert c.search("quokka zinc", k=1, mode="sparse").hits[0].doc_id == "script-1"
            done: dict = {}
            with exclusive_folder(index_dir):  # as `lsr repair` or another process's write would
                worker = threading.Thread(target=lambda: done.update(n=c.upsert(["svc-3"], ["Tardigrades survive vacuum."])))
                worker.start()
                time.sleep(1.0)
                assert worker.is_alive() and not done  # the write waits for the folder
            worker.join(60)
            assert done == {"n": 1}
        assert _eventually(lambda: script.search("axolotl limb regeneration", k=1, mode="sparse").hits[0].doc_id == "svc-2")
        script.upsert(["script-4"], ["Naked mole rats resist cancer."])
        assert script.stats()["num_docs"] == n_docs + 4
    finally:
        server.kill()
    assert not verify_collection(index_dir).problems


# ---------------------------------------------------------------------------------- auth, TLS, logs
def test_auth_refuses_requests_without_the_token_over_tls(servers, tls_files):
    cert, _ = tls_files
    address = servers["secure"].address
    for token in (None, "wrong-token"):
        with Client(address, token=token, tls=cert) as c:
            assert c.health() == "SERVING"  # health checks stay open for load balancers
            with pytest.raises(grpc.RpcError) as err:
                c.search("vitamin d")
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                c.upsert(["x"], ["y"])
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with Client(address, token="s3cret-token", tls=cert) as c:
        assert c.search("vitamin d").hits
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(Path(cert).read_bytes())) as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)  # the scheme is case-insensitive (RFC 7235); the token not
        assert stub.Search(pb.SearchRequest(text="vitamin d"), metadata=(("authorization", "bearer s3cret-token"),),
                           timeout=30).hits
        for sent in ("bearer S3CRET-TOKEN", "Bearer", "s3cret-token", "Basic s3cret-token", "Bearer  s3cret-token"):
            with pytest.raises(grpc.RpcError) as err:
                stub.Search(pb.SearchRequest(text="vitamin d"), metadata=(("authorization", sent),), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, sent
        for first, last in (("Bearer nope", "Bearer s3cret-token"), ("Bearer s3cret-token", "Bearer nope")):
            with pytest.raises(grpc.RpcError) as err:  # the last one counted: a proxy checking the first disagreed
                stub.Search(pb.SearchRequest(text="vitamin d"), timeout=30,
                            metadata=(("authorization", first), ("authorization", last)))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "more than one authorization header" in err.value.details()
    with Client(address, token="s3cret-token") as plain:  # TLS is required, not optional
        with pytest.raises(grpc.RpcError):
            plain.search("vitamin d", timeout=5)


def test_servers_warm_up_every_mode_before_they_listen(servers):
    """A fresh process's first search pays for lazy set-up (~200 ms against ~6 ms on splade-tiny): a server pays
    it before it listens, in every mode its collection serves."""
    for name, modes in (("main", "sparse,dense,bm25,hybrid"), ("sparse_only", "sparse")):
        lines = servers[name].lines
        warmed = next(i for i, line in enumerate(lines) if "event=warmed_up" in line)
        listening = next(i for i, line in enumerate(lines) if "event=listening" in line)
        assert warmed < listening and f"modes={modes} " in lines[warmed]


def test_logs_carry_request_id_and_stage_timings(servers, client):
    client.search("sodium intake and blood pressure", mode="hybrid")
    line = servers["main"].wait_for_line(lambda line: "rpc=Search" in line and "mode=hybrid" in line)
    fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
    assert len(fields["request_id"]) >= 8 and fields["status"] == "OK"
    for stage in ("encode", "sparse", "dense", "fuse", "prf", "queue", "total"):
        assert float(fields[f"{stage}_ms"]) >= 0.0
    assert float(fields["encode_ms"]) > 0.0


def test_prf_options_travel_whole_so_a_tuned_servers_stored_prf_fills_none_of_them():
    """PrfOptions(dense_weight=None) means a dense β equal to weight, but it went as an unset field, which the server
    fills from the collection's stored (tuned) PRF: `lsr beir --endpoint` scored hybrid-prf with the tuned dense β
    (0.9266 against 0.9255 in-process) and took a tuning split's choice into its report."""
    from lsr.service.convert import options_to_proto, prf_from_proto

    asked = PrfOptions(feedback_docs=3, weight=0.25, interpolate="both")
    sent = options_to_proto(10, "hybrid", None, asked)["prf"]
    got = prf_from_proto(sent, PrfOptions(feedback_docs=5, weight=0.1, dense_weight=1.0, min_idf=2.0))
    assert got.dense_beta() == asked.dense_beta() == 0.25
    assert (got.feedback_docs, got.weight, got.interpolate, got.min_idf) == (3, 0.25, "both", 0.0)
    # an after-weight set alone (`lsr query --prf --prf-after-weight 0.9`) meets the collection's interpolation:
    # before, untuned, where it was taken and ignored; PrfOptions sent whole name their own
    alone = pb.PrfOptions(enabled=True, after_weight=0.9)
    with pytest.raises(ValueError, match="the interpolation here is 'before' .* set it to after or both"):
        prf_from_proto(alone, PrfOptions())
    assert prf_from_proto(alone, PrfOptions(interpolate="both")).after_weight == 0.9
    assert prf_from_proto(options_to_proto(10, "hybrid", None, PrfOptions())["prf"], None).after_weight == 0.5


def test_health_watch_streams_opened_and_cancelled_by_the_thousand_leave_the_server_answering(collections):
    """grpcio-health-checking's servicer sent a Watch's first status under the lock that a cancelled stream's close
    callback takes on gRPC's one polling thread: within a few hundred such streams (a load balancer's probes) every
    call timed out for good, and SIGTERM hung in the drain."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = ServerProcess(collections["hybrid"], "--grace", "120").wait_listening()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(1500):  # the old servicer stalled after 90 to 1,409 of them
                watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
                watch.cancel()
            serving = health_pb2.HealthCheckResponse.SERVING
            assert stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status == serving
            listed = stub.List(health_pb2.HealthListRequest(), timeout=5).statuses
            assert {name: s.status for name, s in listed.items()} == {"": serving, "lsr.v1.SearchService": serving}
            with pytest.raises(grpc.RpcError) as unknown:
                stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "'nope'" in unknown.value.details()
            unknown_watch = stub.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
            assert next(unknown_watch).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            unknown_watch.cancel()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
    finally:
        server.kill()


def test_sigterm_does_not_wait_out_the_grace_for_health_watch_streams(collections):
    """A load balancer's health Watch stream stays open until cancelled: with nothing else in flight, a SIGTERM
    waited the whole --grace for it (30 s by default) before exiting."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = ServerProcess(collections["hybrid"], "--grace", "120").wait_listening()
    try:
        with grpc.insecure_channel(server.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            server.proc.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING  # told, then let go
            assert server.proc.wait(60) == 0  # well inside the grace
            with pytest.raises(grpc.RpcError):
                next(watch)
        server.wait_for_line(lambda line: "event=stopped drained=True" in line)
    finally:
        server.kill()
