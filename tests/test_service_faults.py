"""The service under concurrent writes and faults: real `lsr serve` processes on free loopback ports,
a small real SciFact collection, real models. Full-size runs of these targets live in benchmarks/soak.py."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import grpc
import pytest

from lsr.search.searcher import PrfOptions
from lsr.service import search_pb2 as pb
from lsr.service import search_pb2_grpc
from lsr.service.servicer import REFUSAL_NOTICE_S
from service_helpers import ServerProcess

N_DOCS = 40
SEARCH_CONFIGS = [  # the shapes that hung or failed in the adversarial pass
    dict(mode="hybrid", prf=PrfOptions(interpolate="before"), explain=True),
    dict(mode="hybrid", prf=PrfOptions(interpolate="both"), explain=True, include_text=True),
    dict(mode="sparse", prf=PrfOptions(), explain=True),
    dict(mode="dense"),
]


@pytest.fixture(scope="module")
def collection(beir_dir, tmp_path_factory) -> Path:
    from lsr.ingest.indexing import IndexOptions, build_collection

    out = tmp_path_factory.mktemp("faults") / "col"
    build_collection(beir_dir / "scifact.tar.gz", out, IndexOptions(limit=N_DOCS, max_length=64), progress=False)
    return out


@pytest.fixture(scope="module")
def server(collection, tmp_path_factory):
    writable = tmp_path_factory.mktemp("served") / "col"
    shutil.copytree(collection, writable)
    process = ServerProcess(writable).wait_listening()
    yield process
    process.kill()


@pytest.fixture(scope="module")
def queries(scifact) -> list[str]:
    return list(scifact.queries.values())[:12]


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _stub(address: str) -> search_pb2_grpc.SearchServiceStub:
    return search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(address))


def _call_raw(address: str, method: str, payload: bytes):
    """Send bytes the client library would never produce."""
    channel = grpc.insecure_channel(address)
    try:
        return channel.unary_unary(f"/lsr.v1.SearchService/{method}")(payload, timeout=30)
    finally:
        channel.close()


# ---------------------------------------------------------------------------------- concurrency
def test_concurrent_no_write_searches_never_hang(server, queries):
    def worker(n: int) -> list[str]:
        errors = []
        with server.client() as c:
            for i in range(8):
                config = SEARCH_CONFIGS[(n + i) % len(SEARCH_CONFIGS)]
                try:
                    assert c.search(queries[(n * 3 + i) % len(queries)], k=10, timeout=15, **config).hits
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}")
        return errors

    with ThreadPoolExecutor(12) as pool:
        errors = [e for batch in pool.map(worker, range(12)) for e in batch]
    assert errors == []
    assert "CancelledError" not in server.log() and "Traceback" not in server.log()


def test_delete_and_reupsert_race_gives_no_errors(server, queries):
    query = queries[0]
    with server.client() as c:
        top = c.search(query, k=1, mode="hybrid", include_text=True).hits[0]
    stop = threading.Event()

    def searcher(n: int) -> tuple[int, list[str]]:
        done, errors = 0, []
        with server.client() as c:
            while not stop.is_set():
                try:
                    c.search(query, k=10, timeout=30, **SEARCH_CONFIGS[n % 2])
                    done += 1
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}")
        return done, errors

    with ThreadPoolExecutor(12) as pool:
        running = [pool.submit(searcher, n) for n in range(12)]
        with server.client() as writer:
            for _ in range(3):
                assert writer.delete([top.doc_id]) == []
                assert writer.upsert([top.doc_id], [top.text]) == 1
        stop.set()
        outcomes = [f.result() for f in running]
    assert [e for _, errors in outcomes for e in errors] == []
    assert sum(done for done, _ in outcomes) >= 12


def test_an_upsert_whose_caller_gave_up_never_lands_over_a_later_write(server):
    """The server encodes an upsert before writing it; a stream whose deadline passed while it was encoded must be
    dropped, not written seconds later over the write its caller made after the DEADLINE_EXCEEDED."""
    fillers = [f"late-{i}" for i in range(599)]
    words = "vitamin d supplementation and bone fracture risk in older adults " * 6
    with server.client() as c:
        with pytest.raises(grpc.RpcError) as err:
            c.upsert(["late-victim", *fillers], ["stale quokka version", *[f"{words} {i}" for i in range(599)]],
                     timeout=1.0)  # several seconds of encoding
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert c.upsert(["late-victim"], ["fresh wombat version"]) == 1
        give_up = time.monotonic() + 90
        while not any("rpc=Upsert" in line and ("DEADLINE_EXCEEDED" in line or "docs=600" in line)
                      for line in server.lines):
            assert time.monotonic() < give_up, "the expired upsert never ended"
            time.sleep(0.1)
        line = next(line for line in server.lines if "rpc=Upsert" in line and "docs=1" not in line)
        assert "status=DEADLINE_EXCEEDED" in line and "encoding documents" in line
        (hit,) = c.search("quokka wombat", k=1, mode="bm25", include_text=True).hits
        assert (hit.doc_id, hit.text) == ("late-victim", "fresh wombat version")
        with pytest.raises(grpc.RpcError) as err:
            c.delete(fillers)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # none of the dropped stream was written


# ---------------------------------------------------------------------------------- limits
def _fix_not_retry(error: grpc.RpcError) -> bool:
    """Whether the client takes a refusal for a request to fix (the CLI exits 2), not a retry (exit 1)."""
    from lsr.files import MachineStateError
    from lsr.service.client import call_failed

    return not isinstance(call_failed(error), MachineStateError)


def test_oversized_search_batch_is_refused_before_any_work(server, queries):
    with server.client() as c:
        before_rss, before = _rss_bytes(server.proc.pid), c.stats()["requests"]
        with pytest.raises(grpc.RpcError) as err:
            _stub(server.address).SearchBatch(pb.SearchBatchRequest(texts=(queries * 42)[:500], k=1000, include_text=True),
                                              timeout=60)  # the Client would split it into small requests
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "MiB response limit" in err.value.details() and "500 texts" in err.value.details()
        assert c.stats()["requests"] == before
    assert _rss_bytes(server.proc.pid) - before_rss < 100 * 2**20


def test_a_search_whose_long_texts_pass_the_response_limit_says_so(collection, tmp_path):
    """The estimate made before a search uses the build's mean text size; upserted texts far longer than those
    must still get the server's own RESOURCE_EXHAUSTED, not a transport error after an OK in its log."""
    server = ServerProcess(shutil.copytree(collection, tmp_path / "col"), "--max-response-mb", "1").wait_listening()
    try:
        with server.client() as c:
            long_texts = [f"quokka {i} " + " ".join(f"word{j}" for j in range(40_000)) for i in range(4)]  # ~0.4 MB
            assert c.upsert([f"long-{i}" for i in range(4)], long_texts) == 4
            assert len(c.search("quokka", k=2, mode="bm25", include_text=True).hits) == 2  # 0.8 MB: under
            with pytest.raises(grpc.RpcError) as err:
                c.search("quokka", k=4, mode="bm25", include_text=True)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "over the server's 1 MiB response limit" in err.value.details()
            assert _fix_not_retry(err.value)  # it was exit 1, "retry", which meets the same limit
        line = server.wait_for_line(lambda line: "rpc=Search " in line and " k=2 " not in line)
        assert "status=RESOURCE_EXHAUSTED" in line
    finally:
        server.kill()


def test_search_batch_splits_a_request_whose_texts_pass_the_response_limit(collection, tmp_path, queries):
    """The client sized its requests by hits alone: with the hits' texts (or explanations) a plain search_batch was
    refused RESOURCE_EXHAUSTED on every retry (50 texts at k=1000 with text: 75 MiB). A refused request now goes again
    as two halves, down to one text, whose refusal is the caller's to fix."""
    server = ServerProcess(shutil.copytree(collection, tmp_path / "col"), "--max-response-mb", "1").wait_listening()
    try:
        with server.client() as c:
            texts = queries * 5  # 60 texts × k=150 × the mean text: about 14 MiB were asked for at once
            for extra in ({"include_text": True}, {"include_text": True, "explain": True}):
                batch = c.search_batch(texts, k=150, mode="sparse", **extra)
                alone = [c.search(q, k=150, mode="sparse", **extra) for q in texts]
                assert [[(h.doc_id, h.score, h.text) for h in r.hits] for r in batch] == \
                       [[(h.doc_id, h.score, h.text) for h in r.hits] for r in alone]
                assert sum(len(r.hits) for r in batch) > 60 * 20 and all(h.text for r in batch for h in r.hits)
            with pytest.raises(grpc.RpcError) as err:  # one text whose own response is too large
                c.search_batch(queries[:3], k=1000, mode="bm25", include_text=True, explain=True)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "with text and explain" in err.value.details() and "or explain=false" in err.value.details()
        assert "status=RESOURCE_EXHAUSTED" in server.wait_for_line(lambda line: "rpc=SearchBatch " in line
                                                                   and "RESOURCE_EXHAUSTED" in line)
    finally:
        server.kill()


def test_a_write_waiting_on_another_process_ends_at_its_deadline_and_is_never_applied(collection, tmp_path):
    """While another process held the folder, a write waited up to 30 s whatever its deadline, holding a handler
    thread, and was then applied after its caller had been told DEADLINE_EXCEEDED, over a newer write."""
    from lsr.files import exclusive_folder

    path = shutil.copytree(collection, tmp_path / "col")
    server = ServerProcess(path).wait_listening()
    try:
        with server.client() as c:
            kept = c.search("protein", k=1, mode="bm25").hits[0].doc_id
            with exclusive_folder(path):  # as `lsr upsert COLLECTION` or `lsr repair` would
                started = time.monotonic()
                for write in (lambda: c.upsert(["stale"], ["quokka version one"], timeout=1.0),
                              lambda: c.delete([kept], timeout=1.0)):
                    with pytest.raises(grpc.RpcError) as err:
                        write()
                    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert time.monotonic() - started < 10  # each was held 19.5 s or more
                assert c.health() == "SERVING"
            time.sleep(2.0)  # nothing is left to apply them once the folder is free
            assert not c.search("quokka", k=5, mode="bm25").hits
            assert c.search("protein", k=1, mode="bm25").hits[0].doc_id == kept
            assert c.upsert(["fresh"], ["wombat"]) == 1
    finally:
        server.kill()


def test_upserts_held_at_once_are_bounded_across_streams(collection, tmp_path):
    """Each stream is bounded on its own; many at once must be too: a stream that would pass the server's budget for
    all of them gets RESOURCE_EXHAUSTED (to retry) while another holds it, and gets through once that one ends."""
    server = ServerProcess(shutil.copytree(collection, tmp_path / "col"), "--max-upserts-mb", "1").wait_listening()
    release = threading.Event()
    text = "quokka " * 100_000  # 0.7 MB

    def stalled():
        yield pb.UpsertRequest(documents=[pb.Document(id="held-1", text=text)])
        release.wait(60)  # the server holds this stream's bytes meanwhile

    try:
        with server.client() as c, ThreadPoolExecutor(1) as pool:
            first = pool.submit(_stub(server.address).Upsert, stalled(), timeout=120)
            give_up = time.monotonic() + 30
            while int(c.stats()["details"]["upsert_bytes_held"]) < 700_000:
                assert time.monotonic() < give_up, "the first stream's bytes were never taken"
                time.sleep(0.05)
            with pytest.raises(grpc.RpcError) as err:
                c.upsert(["held-2"], [text])
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-upserts-mb" in err.value.details() and "retry" in err.value.details()
            assert not _fix_not_retry(err.value)  # the others' load: a retry can pass
            release.set()
            assert first.result().upserted == 1
            assert c.stats()["details"]["upsert_bytes_held"] == "0"
            assert c.upsert(["held-2"], [text]) == 1
            with pytest.raises(grpc.RpcError) as err:  # 1.2 MB of UTF-8 in 300,000 characters: it counted those
                c.upsert(["emoji"], ["\U0001f642" * 300_000])
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-upserts-mb" in err.value.details()
    finally:
        release.set()
        server.kill()


def test_upsert_streams_are_checked_as_they_arrive(server):
    sent = []

    def stream():
        for i in range(200):
            sent.append(i)
            doc_id = "dup" if i in (1, 2) else f"stream-{i}"
            yield pb.UpsertRequest(documents=[pb.Document(id=doc_id, text="lorem ipsum " * 2000)])
            time.sleep(0.01)

    channel = grpc.insecure_channel(server.address)
    upsert = channel.stream_unary("/lsr.v1.SearchService/Upsert", request_serializer=pb.UpsertRequest.SerializeToString,
                                  response_deserializer=pb.UpsertResponse.FromString)
    with pytest.raises(grpc.RpcError) as err:
        upsert(stream(), timeout=60)
    channel.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'dup'" in err.value.details()
    assert len(sent) < 200  # refused at the repeat, not after buffering the whole stream
    with server.client() as c:
        with pytest.raises(grpc.RpcError) as err:
            c.upsert([f"many-{i}" for i in range(10_001)], ["t"] * 10_001, chunk_size=2000)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "10,000 documents" in err.value.details()
        assert _fix_not_retry(err.value)


def test_an_upsert_message_without_documents_is_refused(server):
    """Empty messages cost nothing against the stream's limits: a client trickling them held one of the few stream
    slots as long as it liked, and 16 such clients refused every upsert."""
    doc = pb.Document(id="trickle", text="zyzzyva")
    for messages in ([pb.UpsertRequest()], [pb.UpsertRequest(documents=[doc]), pb.UpsertRequest()]):
        with pytest.raises(grpc.RpcError) as err:
            _stub(server.address).Upsert(iter(messages), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"message {len(messages) - 1} of the upsert stream holds no documents" in err.value.details()
    for messages in ([], [pb.UpsertRequest(last=True)]):  # none at all: the client's bug, not a refused message
        with pytest.raises(grpc.RpcError) as err:
            _stub(server.address).Upsert(iter(messages), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "the upsert stream held no documents"
    with pytest.raises(grpc.RpcError) as err:  # marked last too early: the rest would have been lost unsaid
        _stub(server.address).Upsert(iter([pb.UpsertRequest(documents=[doc], last=True),
                                           pb.UpsertRequest(documents=[pb.Document(id="late", text="t")])]), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message 1 of the upsert stream follows the one marked last" in err.value.details()
    with server.client() as c:
        assert not c.search("zyzzyva", k=1, mode="bm25").hits  # nothing of the refused streams was written


def test_an_upsert_stream_is_written_whole_marked_last_or_not(server):
    """A cut stream can reach the server as one that ended; the final message marked ``last`` (which may hold no
    documents) says it is whole, and a stream without the mark is written once the server waited to learn it was
    not cut. Each is written, the unmarked one a little later."""
    docs = [pb.Document(id=f"whole-{i}", text="numbat termite mound") for i in range(3)]
    timings = {}
    for name, messages in {"marked": [pb.UpsertRequest(documents=docs[:2]), pb.UpsertRequest(documents=docs[2:], last=True)],
                           "empty last": [pb.UpsertRequest(documents=docs), pb.UpsertRequest(last=True)],
                           "unmarked": [pb.UpsertRequest(documents=docs[:1]), pb.UpsertRequest(documents=docs[1:])]}.items():
        started = time.monotonic()
        assert _stub(server.address).Upsert(iter(messages), timeout=60).upserted == 3, name
        timings[name] = time.monotonic() - started
    assert timings["unmarked"] >= REFUSAL_NOTICE_S
    with pytest.raises(grpc.RpcError) as err:  # unmarked, with less time than the wait: nothing written
        _stub(server.address).Upsert(iter([pb.UpsertRequest(documents=[pb.Document(id="hasty", text="numbat")])]),
                                     timeout=REFUSAL_NOTICE_S * 0.8)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # not CANCELLED: the log names what ended it
    server.wait_for_line(lambda line: "rpc=Upsert" in line and "status=DEADLINE_EXCEEDED" in line)
    with server.client() as c:
        assert {hit.doc_id for hit in c.search("numbat termite", k=5, mode="bm25").hits} >= {d.id for d in docs}
        assert "hasty" not in {hit.doc_id for hit in c.search("numbat", k=10, mode="bm25").hits}


def test_stalled_client_streams_cannot_take_every_thread(collection, tmp_path):
    """64 stalled Upsert streams, or 64 idle reflection sessions, held all 64 handler threads: searches and health
    checks timed out. Past a quarter of --workers, a client stream is refused at once (RESOURCE_EXHAUSTED, retry);
    searches keep answering; a stream silent for --stream-idle-s is cancelled, its upsert not applied, and the
    slot it held serves the next stream."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server = ServerProcess(shutil.copytree(collection, tmp_path / "col"), "--workers", "8",
                           "--stream-idle-s", "5").wait_listening()
    release = threading.Event()

    def stalled(i: int):
        yield pb.UpsertRequest(documents=[pb.Document(id=f"stalled-{i}", text="quokka")])
        release.wait(60)

    def reflection_session():
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        release.wait(60)

    sessions = []  # held open: a dropped response iterator cancels its call

    def listed_services() -> list[str]:
        sessions.append(reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(server.address))
                        .ServerReflectionInfo(reflection_session(), timeout=120))
        return [s.name for s in next(sessions[-1]).list_services_response.service]

    try:
        with ThreadPoolExecutor(3) as pool:
            assert "lsr.v1.SearchService" in listed_services()  # answered, then idle, holding 1 of 8 // 4 = 2 slots
            streams = [pool.submit(_stub(server.address).Upsert, stalled(i), timeout=120) for i in range(2)]
            done, _ = wait(streams, timeout=30, return_when=FIRST_COMPLETED)
            assert len(done) == 1
            refused = done.pop()
            assert refused.exception().code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "2 client streams (upserts, reflection) are open" in refused.exception().details()
            with server.client() as c:
                assert c.search("quokka habitat", k=3, timeout=10).hits is not None
            health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.address))
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
            stalled_upsert = next(f for f in streams if f is not refused)
            assert stalled_upsert.exception(timeout=30).code() == grpc.StatusCode.CANCELLED  # idle for 5 s
            for method in ("ServerReflectionInfo", "Upsert"):  # logged once its slot is free, before the cancel
                server.wait_for_line(lambda line: "event=stream_idle_cancelled" in line and method in line)
            assert "lsr.v1.SearchService" in listed_services()  # the idle session's slot serves a new one
            with server.client() as c:
                assert c.stats(timeout=10)["num_docs"] == N_DOCS  # neither stalled upsert was applied
    finally:
        release.set()
        server.kill()


def test_a_stream_that_trickles_within_the_idle_limit_is_cancelled_at_the_stream_limit(collection, tmp_path):
    """One small document a second, each inside --stream-idle-s, held an upsert stream slot for as long as the client
    liked (10,000 documents: hours); past --stream-max-s it is cancelled like an idle one, and nothing of it is
    applied."""
    server = ServerProcess(shutil.copytree(collection, tmp_path / "col"), "--workers", "4", "--stream-idle-s", "2",
                           "--stream-max-s", "3").wait_listening()

    def trickle():
        for i in range(30):
            yield pb.UpsertRequest(documents=[pb.Document(id=f"trickle-{i}", text="quokka")])
            time.sleep(0.5)

    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            _stub(server.address).Upsert(trickle(), timeout=60)
        assert err.value.code() == grpc.StatusCode.CANCELLED and time.monotonic() - started < 10
        server.wait_for_line(lambda line: "event=stream_too_long_cancelled method=/lsr.v1.SearchService/Upsert" in line)
        with server.client() as c:
            assert c.stats(timeout=10)["num_docs"] == N_DOCS
            c.upsert(["after"], ["quokka habitat"], timeout=30)  # the slot is free again
            assert c.stats(timeout=10)["num_docs"] == N_DOCS + 1
    finally:
        server.kill()


def test_a_cancelled_upsert_stream_is_abandoned_not_internal(server):
    """A client that cancels mid-stream (or whose deadline passes) made the read raise RpcError inside the handler:
    logged as an internal error with a traceback, and not counted as abandoned."""
    release = threading.Event()

    def slow():
        yield pb.UpsertRequest(documents=[pb.Document(id="cancelled-1", text="quokka")])
        release.wait(5)
        yield pb.UpsertRequest(documents=[pb.Document(id="cancelled-2", text="quokka")])

    with server.client() as c:
        before = c.stats()["abandoned"]
        future = _stub(server.address).Upsert.future(slow(), timeout=60)
        time.sleep(1.0)
        future.cancel()
        release.set()
        deadline = time.monotonic() + 30
        while c.stats()["abandoned"] == before:
            assert time.monotonic() < deadline, "the cancelled stream was never counted as abandoned"
            time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as err:
            c.delete(["cancelled-1"])
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # nothing was written
    server.wait_for_line(lambda line: "rpc=Upsert" in line and "status=CANCELLED" in line)
    assert "internal error" not in server.log()


@pytest.mark.parametrize("doc_id, problem", [
    ("spaced id", "holds ' ' at character 6"), ("nul\x00id", "holds '\\x00'"), ("tab\tid", "holds '\\t'"),
    ("x" * 600, "is 600 bytes long; an id may hold at most 512"),
])
def test_ids_a_trec_run_or_a_trailer_cannot_hold_are_refused(server, doc_id, problem):
    """Ids with whitespace or NUL were stored, then broke every TREC run of the collection; a 20 KB id echoed in an
    error passed gRPC's trailer limit, so the caller got RESOURCE_EXHAUSTED ('Stream removed') for a NOT_FOUND."""
    with server.client() as c:
        with pytest.raises(grpc.RpcError) as err:
            c.upsert([doc_id], ["quokka"])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and problem in err.value.details()
        assert len(err.value.details()) < 400
        with pytest.raises(grpc.RpcError) as err:
            c.delete(["Z" * 20_000])
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "20,000 characters" in err.value.details()


def test_the_client_checks_writes_as_the_searcher_does_before_sending(server):
    """Client.delete("ab") deleted the documents "a" and "b" (Searcher.delete refuses one str), upsert("xy", "pq")
    stored one document per character, and an int id or a text with a lone surrogate failed inside the request
    stream: UNKNOWN "Exception iterating requests!", which the CLI reads as "retry"."""
    with server.client() as c:
        assert c.upsert(["a", "b"], ["quokka one", "quokka two"]) == 2
        with pytest.raises(TypeError, match=r"ids must be a list of ids, not one str: pass \['ab'\]"):
            c.delete("ab")
        with pytest.raises(TypeError, match="texts must be a list of texts, one per id, not one str"):
            c.upsert("xy", "pq")
        with pytest.raises(ValueError, match=r"texts\[0\] \(id 'lone'\) is not UTF-8 text"):
            c.upsert(["lone"], ["quokka \udcff"])
        with pytest.raises(TypeError, match=r"ids\[0\] is None"):
            c.upsert([None], ["quokka"])
        assert c.upsert([77], ["quokka seventy-seven"]) == 1  # a whole number is its digits, as in-process
        assert c.delete(["a", "b", 77]) == []  # "a" and "b" were still there; "77" was stored
        with pytest.raises(grpc.RpcError) as err:
            c.delete(["x", "y"])
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # upsert("xy", "pq") sent nothing


def test_a_forged_request_id_is_replaced_and_a_huge_query_refused(server):
    """x-request-id 'abc status=OK ...' forged log fields; a 4 MB query held the tokenizer (and 1.9 GB) for seconds."""
    stub = _stub(server.address)
    _, call = stub.Search.with_call(pb.SearchRequest(text="quokka", k=3),
                                    metadata=(("x-request-id", "abc status=OK fake=1"),), timeout=30)
    given = dict(call.trailing_metadata())["x-request-id"]
    assert given != "abc status=OK fake=1" and " " not in given
    _, call = stub.Search.with_call(pb.SearchRequest(text="quokka", k=3), metadata=(("x-request-id", "req-42"),),
                                    timeout=30)
    assert dict(call.trailing_metadata())["x-request-id"] == "req-42"
    assert "fake=1" not in server.log()
    for request in (pb.SearchRequest(text="protein " * 500_000), pb.SearchBatchRequest(texts=["ok", "protein " * 20_000])):
        with pytest.raises(grpc.RpcError) as err:
            (stub.Search if isinstance(request, pb.SearchRequest) else stub.SearchBatch)(request, timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "a query may hold at most 100,000" in err.value.details()


# ---------------------------------------------------------------------------------- statuses
@pytest.mark.parametrize("text", ["", "   \t\n", "\x00\x00", " \x00 "], ids=["empty", "whitespace", "nul", "nul-space"])
def test_empty_documents_are_refused_unless_allowed(server, text):
    with server.client() as c:
        with pytest.raises(grpc.RpcError) as err:
            c.upsert(["empty-doc"], [text])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "allow_empty_documents" in err.value.details()
        assert c.upsert(["empty-doc"], [text], allow_empty=True) == 1
        assert c.delete(["empty-doc"]) == []


def test_invalid_utf8_is_invalid_argument(server):
    bad = b"\x0a\x02\xff\xfe"  # field 1 (text), 2 bytes that are not UTF-8
    for method in ("Search", "SearchBatch", "Delete"):
        with pytest.raises(grpc.RpcError) as err:
            _call_raw(server.address, method, bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert "UTF-8" in err.value.details()


def test_expired_search_batch_stops_promptly_logged_at_info_and_counted(server, queries):
    with server.client() as c:
        before = c.stats()["abandoned"]
        with pytest.raises(grpc.RpcError) as err:
            # Long enough that the server surely starts the call (a 1 ms deadline can pass before gRPC hands it
            # to the handler, which then never runs), far shorter than the ~30 s the 1,000 texts would take.
            c.search_batch(queries * 10, k=10, mode="hybrid", prf=PrfOptions(), chunk_size=1000, timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 30
        while c.stats()["abandoned"] == before:
            assert time.monotonic() < deadline, "the expired batch was never counted as abandoned"
            time.sleep(0.05)
    line = server.wait_for_line(lambda line: "rpc=SearchBatch" in line and "status=DEADLINE_EXCEEDED" in line)
    assert " INFO " in line
    assert float(line.split(" ms=")[1].split()[0]) < 5000  # stopped within a few queries of the deadline, not ~30 s on


def test_a_file_damaged_while_serving_is_data_loss_naming_it(collection, queries, tmp_path):
    path = shutil.copytree(collection, tmp_path / "col")
    server = ServerProcess(path).wait_listening()  # its own: texts read by other tests are cached
    part = path / "docs" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    try:
        with server.client() as c:
            with pytest.raises(grpc.RpcError) as err:
                c.search(queries[1], k=3, include_text=True)
            assert err.value.code() == grpc.StatusCode.DATA_LOSS
            assert "part-00000.parquet" in err.value.details()
            assert c.search(queries[1], k=3).hits  # searches without texts still work
    finally:
        server.kill()


# ---------------------------------------------------------------------------------- crashes
def test_kill_9_during_writes_loses_no_acknowledged_write(collection, tmp_path):
    """A writer streams upserts and deletes; the server is killed at random moments and restarted."""
    from lsr.ingest.verify import verify_collection

    path = shutil.copytree(collection, tmp_path / "col")
    rng = random.Random(13)
    allowed: dict[str, set[str | None]] = {}  # per id: the acknowledged state, plus the cut write's outcome
    for round_ in range(3):
        server = ServerProcess(path).wait_listening()
        stop = threading.Event()

        def write() -> None:
            with server.client(timeout=30) as c:
                i = 0
                while not stop.is_set():
                    doc_id = f"kill-{round_}-{i % 6}"
                    current = allowed.get(doc_id, {None})
                    delete = None not in current and rng.random() < 0.3
                    new = None if delete else f"round {round_} write {i}: zinc metabolism of quokka kidneys"
                    try:
                        c.delete([doc_id]) if delete else c.upsert([doc_id], [new])
                    except grpc.RpcError:  # the kill: not acknowledged, so it may or may not have happened
                        allowed[doc_id] = current | {new}
                        return
                    allowed[doc_id] = {new}
                    i += 1

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(rng.uniform(0.5, 2.0))
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        stop.set()
        writer.join(60)
    assert allowed
    assert not verify_collection(path).problems  # at most a cut-off tail, which the open below drops
    server = ServerProcess(path).wait_listening()
    try:
        with server.client() as c:
            hits = c.search("zinc metabolism of quokka kidneys", k=1000, include_text=True).hits
            stored = {h.doc_id: h.text for h in hits if h.doc_id.startswith("kill-")}
            for doc_id, states in allowed.items():
                assert stored.get(doc_id) in states, (doc_id, stored.get(doc_id), states)
            assert c.delete(list(stored)) == []  # every remaining id is deletable
    finally:
        server.kill()
    assert not verify_collection(path).problems


def _wait_until(condition, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.2)


def test_a_server_serves_its_collection_indexed_anew_without_a_restart(collection, beir_dir, tmp_path):
    """`lsr index --overwrite` under a running server: the server's next write went into the new build from its old
    stores (both builds' journals empty, both sparse commits at version 1) and left it unopenable; later the server
    went NOT_SERVING until someone restarted it. It now opens the new build by itself, warms it up and serves it:
    SERVING again, searches, texts and writes all on the new build, which stays whole. Its index_version differs
    from the old build's (which restarted at "1", so a client could not tell the builds apart). Searches with texts
    are answered throughout: texts read by path failed UNAVAILABLE for the whole rebuild."""
    from lsr.cli.main import main
    from lsr.ingest.verify import verify_collection

    path = shutil.copytree(collection, tmp_path / "col")
    server = ServerProcess(path).wait_listening()
    stop, failures, answered = threading.Event(), [], []

    def search_on() -> None:  # every search before, during and after the swap is answered
        with server.client() as searching:
            while not stop.is_set():
                try:
                    hits = searching.search("cancer", k=N_DOCS, mode="hybrid", include_text=True, timeout=30).hits
                except grpc.RpcError as exc:
                    failures.append(exc.details())
                    continue
                answered.append(len(hits))
                failures.extend(f"{hit.doc_id} came without its text" for hit in hits if not hit.text)

    try:
        with server.client() as c, ThreadPoolExecutor(2) as pool:
            assert len(c.search("cancer", k=N_DOCS, timeout=30).hits) > 5
            old_version = c.last_index_version
            first_build = _files_held(server.proc.pid, path)
            assert first_build
            searching = [pool.submit(search_on) for _ in range(2)]
            assert main(["index", str(beir_dir / "scifact.tar.gz"), str(path), "--overwrite", "--limit", "5",
                         "--max-length", "64", "--quiet"]) == 0
            _wait_until(lambda: c.stats(timeout=30)["details"]["reloads"] == "1")  # no write: the look finds it
            time.sleep(0.5)
            stop.set()
            [future.result() for future in searching]
            assert not failures and max(answered) > 5 and answered[-1] <= 5, (failures, answered)
            server.wait_for_line(lambda line: "event=reloaded" in line)

            def encoded() -> float:  # the query texts GetStats counts: every build's (they restarted with each)
                details = c.stats(timeout=30)["details"]
                return int(details["sparse_micro_batches"]) * float(details["sparse_mean_micro_batch"])

            _wait_until(lambda: encoded() >= 0.95 * (len(answered) + 1), 30)  # once the old build is retired
            # ... its files let go: the build the server started on stayed open, 152 MB of deleted files at 200k docs
            _wait_until(lambda: not _files_held(server.proc.pid, path, deleted=True) & first_build, 60)
            assert c.health() == "SERVING" and c.health("lsr.v1.SearchService") == "SERVING"
            assert c.stats(timeout=30)["num_docs"] == 5
            hits = c.search("cancer", k=N_DOCS, include_text=True, timeout=30).hits
            assert 0 < len(hits) <= 5 and all(hit.text for hit in hits)  # the new build's documents, with texts
            new_version = c.last_index_version
            assert new_version != old_version and new_version == c.stats(timeout=30)["index_version"]
            c.upsert(["after-overwrite"], ["tardigrades survive vacuum"], timeout=60)
            assert c.search("tardigrades vacuum", k=1, timeout=30).hits[0].doc_id == "after-overwrite"
            assert c.last_index_version not in (new_version, old_version)
    finally:
        server.kill()
    assert not verify_collection(path).problems


def _files_held(pid: int, folder: Path, deleted: bool = False) -> set[tuple[int, int]]:
    """(device, inode) of the files under ``folder`` that process ``pid`` holds open (``deleted``: those deleted)."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed while listed
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith(str(folder)) and (not deleted or target.endswith(" (deleted)")):
                found = os.stat(f"/proc/{pid}/fd/{fd}")
                held.add((found.st_dev, found.st_ino))
    return held


def test_the_texts_of_the_build_a_searcher_opened_outlive_the_folder_indexed_anew(collection, beir_dir, tmp_path):
    """A server answers from the build it opened until its reload swaps the new one in, and texts were read by path
    when a search asked for them: once `lsr index --overwrite` began, a search with texts failed UNAVAILABLE for the
    whole rebuild, and a shard server's read the new build's file of the same name (other documents' texts, or none).
    Each docs part is now mapped at open."""
    import pyarrow.parquet as pq

    from lsr.cli.main import main
    from lsr.search.searcher import Searcher
    from lsr.service.shards import ShardServer

    path = shutil.copytree(collection, tmp_path / "col")
    (part,) = (path / "docs").glob("part-*.parquet")
    table = pq.read_table(part)
    want = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist()))
    searcher, shard = Searcher.open(path, device="cpu", threads=1), ShardServer("shard-000", path)
    ids = [hit.doc_id for hit in searcher.search("cancer", k=N_DOCS).hits]  # no text read yet: none is cached
    assert main(["index", str(beir_dir / "scifact.tar.gz"), str(path), "--overwrite", "--limit", "5",
                 "--max-length", "32", "--quiet"]) == 0  # the same first 5 documents, the others gone
    assert len(ids) > 5 and shard.text(ids) == [want[doc_id] for doc_id in ids]
    hits = searcher.search("cancer", k=N_DOCS, include_text=True).hits
    assert [hit.doc_id for hit in hits] == ids and [hit.text for hit in hits] == [want[doc_id] for doc_id in ids]
    assert searcher.doc(ids[-1]) == want[ids[-1]]
    with pytest.raises(Exception, match="indexed anew"):  # writes still refuse the build no longer there
        searcher.delete([ids[0]])
    searcher.close()


def test_a_server_whose_collection_was_moved_away_says_so_and_serves_it_once_it_is_back(collection, tmp_path):
    """A write to a moved collection failed INTERNAL with a traceback in the log, its texts DATA_LOSS, and health
    stayed SERVING. Now the write is UNAVAILABLE, to retry, health is NOT_SERVING, searches and texts answer from
    the build it had loaded, and once a collection is there again the server opens it and serves it."""
    path = shutil.copytree(collection, tmp_path / "col")
    server = ServerProcess(path).wait_listening()
    try:
        with server.client() as c:
            path.rename(tmp_path / "moved")
            with pytest.raises(grpc.RpcError) as err:
                c.upsert(["after-move"], ["tardigrades survive vacuum"], timeout=60)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            details = err.value.details()
            assert "was moved, deleted or is being indexed anew" in details and "retry" in details, details
            assert c.health() == "NOT_SERVING"
            hits = c.search("cancer", k=N_DOCS, include_text=True, timeout=30).hits  # what it had loaded
            assert hits and all(hit.text for hit in hits)
            time.sleep(3)  # the background looks go on
            assert not path.exists()  # they made it anew, empty: `mv moved col` then put the collection inside it
            (tmp_path / "moved").rename(path)
            _wait_until(lambda: c.health() == "SERVING")
            assert c.search("cancer", k=3, include_text=True, timeout=30).hits[0].text
            c.upsert(["after-move"], ["tardigrades survive vacuum"], timeout=60)
    finally:
        server.kill()


def test_a_reopened_searcher_shares_the_models_its_new_build_names_alike(collection, beir_dir, tmp_path):
    """A server's reload loaded every model again: a second or more, and memory for two copies (its RSS grew
    150 MB a reload, 650 to 1,250 MB over four). The new build's models are now those of the old where it names
    them alike; one built with another SPLADE length gets its own."""
    from lsr.cli.main import main
    from lsr.search.searcher import Searcher

    path = shutil.copytree(collection, tmp_path / "col")
    index = ["index", str(beir_dir / "scifact.tar.gz"), str(path), "--overwrite", "--limit", "5", "--quiet"]
    with Searcher.open(path) as first:
        first.warm_up()
        assert main([*index, "--max-length", "64"]) == 0
        with first.reopen() as same:
            assert same.query_encoder is first.query_encoder and same.dense_encoder is first.dense_encoder
            assert same.stats()["num_docs"] == 5 and same.search("cancer", k=3).hits
        assert main([*index, "--max-length", "32"]) == 0
        with first.reopen() as other:
            assert other.query_encoder is not first.query_encoder and other.query_encoder.max_length == 32
            assert other.dense_encoder is first.dense_encoder


def test_a_write_that_failed_half_applied_is_replayed_by_the_server_once_the_folder_takes_writes(collection, tmp_path):
    """A write that failed after its journal record (a full disk; here an immutable sparse folder) left the server
    refusing every later write INTERNAL ("restart to replay the journal") with health SERVING, until someone restarted
    it. Now those writes get UNAVAILABLE, health turns NOT_SERVING, and once the folder takes writes again the server
    opens the collection anew, which replays the journal: SERVING, the failed write there, writes accepted."""
    import subprocess

    from lsr.ingest.verify import verify_collection

    path = shutil.copytree(collection, tmp_path / "col")
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path / "sparse")]).returncode != 0:
        pytest.skip("chattr +i is needed to make a folder refuse writes")
    server = ServerProcess(path).wait_listening()
    try:
        with server.client() as c:
            with pytest.raises(grpc.RpcError) as err:  # it was INTERNAL, with a traceback in the log
                c.upsert(["stuck"], ["tardigrades survive the vacuum of space"], timeout=60)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "could not write its collection" in err.value.details() and "Traceback" not in server.log()
            _wait_until(lambda: c.health() == "NOT_SERVING")
            with pytest.raises(grpc.RpcError) as err:
                c.upsert(["next"], ["water bears"], timeout=60)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "failed half-applied" in err.value.details() and "retry" in err.value.details()
            subprocess.run(["chattr", "-i", str(path / "sparse")], check=True)
            _wait_until(lambda: c.health() == "SERVING")
            assert c.search("tardigrades vacuum space", k=1, timeout=30).hits[0].doc_id == "stuck"  # from the journal
            c.upsert(["next"], ["water bears"], timeout=60)
    finally:
        subprocess.run(["chattr", "-i", str(path / "sparse")])
        server.kill()
    assert not verify_collection(path).problems


def test_a_rebuild_holding_the_folder_is_found_at_once_not_when_it_lets_go(collection, tmp_path):
    """`lsr index --overwrite` holds the folder's lock for the whole build: the server's look found the folder busy
    and said nothing, so health stayed SERVING through the build (texts failing) and turned NOT_SERVING for a
    second at its end. Here the test holds the lock with lsr.json gone, as a build does."""
    import os

    from lsr.files import exclusive_folder

    path = shutil.copytree(collection, tmp_path / "col")
    server = ServerProcess(path).wait_listening()
    try:
        with server.client() as c:
            with exclusive_folder(path):
                os.rename(path / "lsr.json", tmp_path / "lsr.json")
                _wait_until(lambda: c.health() == "NOT_SERVING", seconds=15)
                assert c.search("cancer", k=3, timeout=30).hits  # the loaded build answers
                os.rename(tmp_path / "lsr.json", path / "lsr.json")
            _wait_until(lambda: c.health() == "SERVING")
            assert c.search("cancer", k=3, include_text=True, timeout=30).hits[0].text
    finally:
        server.kill()


def test_a_collection_indexed_anew_as_sharded_under_its_server_asks_for_a_restart(collection, beir_dir, tmp_path):
    """No reload serves a sharded build (a coordinator does): the server told clients "retry shortly" for good."""
    from lsr.cli.main import main

    path = shutil.copytree(collection, tmp_path / "col")
    server = ServerProcess(path).wait_listening()
    try:
        with server.client() as c:
            assert main(["index", str(beir_dir / "scifact.tar.gz"), str(path), "--overwrite", "--shards", "2",
                         "--limit", "6", "--max-length", "32", "--quiet"]) == 0
            server.wait_for_line(lambda line: "event=reload_waiting" in line and "restart the server" in line)
            with pytest.raises(grpc.RpcError) as err:
                c.upsert(["after-overwrite"], ["tardigrades survive vacuum"], timeout=60)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
            assert "indexed anew as a sharded collection" in err.value.details() and "restart" in err.value.details()
            assert c.health() == "NOT_SERVING" and c.search("cancer", k=3, include_text=True, timeout=30).hits[0].text
    finally:
        server.kill()


@pytest.mark.parametrize("number, code", [(28, "RESOURCE_EXHAUSTED"), (27, "RESOURCE_EXHAUSTED"), (30, "UNAVAILABLE")])
def test_a_write_the_disk_refuses_is_the_servers_state_not_an_internal_error(number, code):
    """A journal past the process's file-size limit (EFBIG, 27) answered INTERNAL with a traceback on every write,
    where a full disk (ENOSPC, 28) answered RESOURCE_EXHAUSTED and said to retry once the folder takes writes."""
    import os

    from lsr.service.servicer import _message_of, _status_of

    error = OSError(number, os.strerror(number))
    assert _status_of(error) == getattr(grpc.StatusCode, code)
    assert _message_of(error).startswith("the server could not write its collection")


@pytest.fixture()
def two_workers(collection, tmp_path):
    """A server in this process with 2 handler threads and 1 encode slot, which a test can hold: every search and
    upsert then waits for it, on a handler thread."""
    from lsr.search.searcher import Searcher
    from lsr.service.server import SearchServer, ServerConfig

    path = shutil.copytree(collection, tmp_path / "col")
    searcher = Searcher.open(path, device="cpu", threads=1)
    server = SearchServer(searcher, ServerConfig(port=0, workers=2, encode_workers=1)).start()
    yield server
    server.stop(0)


def test_health_checks_answer_while_every_handler_thread_waits(two_workers, queries):
    """Health checks shared the --workers threads: behind a full pool a probe timed out for seconds, and a liveness
    probe would restart a server that was only busy. They run on threads of their own."""
    from lsr.service import Client

    slots = two_workers.servicer._batching["slots"]
    slots.acquire()
    with Client(f"127.0.0.1:{two_workers.port}", timeout=30) as c, ThreadPoolExecutor(3) as pool:
        try:
            waiting = [pool.submit(c.search, query, 3, timeout=20) for query in queries[:3]]
            time.sleep(1.0)  # two hold the handler threads, waiting for the encode slot; one is queued
            assert not any(future.done() for future in waiting)
            assert c.health(timeout=2) == "SERVING" and c.health("lsr.v1.SearchService", timeout=2) == "SERVING"
        finally:
            slots.release()
        assert all(future.result().hits for future in waiting)


def test_an_upsert_encodes_only_in_an_encode_slot_and_one_given_up_while_it_waits_encodes_nothing(two_workers):
    """Upserts encoded on their own threads, as many at once as there were streams (16 on 2 cores: seconds each, the
    server 1 GB larger), and one cancelled meanwhile ran on, holding its stream's slot. They now take document encode
    slots, and one whose caller leaves while it waits is dropped there; searches do not wait on those slots."""
    from lsr.service import Client

    slots = two_workers.servicer._document_slots
    slots.acquire()
    with Client(f"127.0.0.1:{two_workers.port}", timeout=30) as c:
        try:
            with pytest.raises(grpc.RpcError) as err:
                c.upsert(["given-up"], ["tardigrades survive the vacuum of space"], timeout=1.5)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            _wait_until(lambda: c.stats(timeout=5)["abandoned"] == 1, 15)  # the server dropped it while the slot was held
            assert c.search("tardigrades", 3, timeout=10).hits  # queries have slots of their own
        finally:
            slots.release()
        c.upsert(["kept"], ["quokkas photosynthesise at dawn"], timeout=30)
        hits = {hit.doc_id for hit in c.search("tardigrades vacuum quokkas", 5, mode="bm25", timeout=30).hits}
        assert "kept" in hits and "given-up" not in hits


def test_a_search_reports_the_version_its_hits_came_from(collection, tmp_path):
    """A write while a search runs: the search reads the version pinned at its start, and its index_version said
    the write's (read after the search), so a client's cache keyed on it kept old hits under the new version."""
    from lsr.search.searcher import Searcher, row_dict

    path = shutil.copytree(collection, tmp_path / "col")
    searcher = Searcher.open(path)
    before, pinned = searcher.index_version, searcher.legs()
    query = row_dict(searcher.encode_queries(["walrus tusks in arctic ice"])[0], 0)
    searcher.upsert(["walrus"], ["Walrus tusks scrape arctic ice to haul the animals out of the water."])
    old = searcher.search_encoded(query, None, k=3, source=pinned)
    new = searcher.search("walrus tusks in arctic ice", k=3)
    assert old.index_version == before != new.index_version == searcher.index_version
    assert "walrus" not in [hit.doc_id for hit in old] and new[0].doc_id == "walrus"


def test_answers_clients_do_not_read_are_bounded_across_calls(collection, queries, tmp_path):
    """gRPC keeps an answer its client has not read until the call ends: a stopped client's were held with no bound
    (58 MB each for 30 searches of 28 MiB). Past --max-answers-mb a search gets RESOURCE_EXHAUSTED (to retry), and
    the bytes come back when the stopped client's call ends."""
    server = ServerProcess(shutil.copytree(collection, tmp_path / "col"), "--max-answers-mb", "16",
                           "--max-response-mb", "16").wait_listening()
    texts = (queries * 50)[:600]  # 600 x 10 hits with their texts: about 9 MB, far past what the sockets buffer
    reader = textwrap.dedent(f"""
        import time, grpc
        from lsr.service import search_pb2 as pb, search_pb2_grpc
        options = [("grpc.max_receive_message_length", 64 << 20)]
        stub = search_pb2_grpc.SearchServiceStub(grpc.insecure_channel({server.address!r}, options=options))
        call = stub.SearchBatch.future(pb.SearchBatchRequest(texts={texts!r}, k=10, include_text=True))
        time.sleep(600)  # stopped before its answer comes: it never reads it
    """)
    stopped = subprocess.Popen([sys.executable, "-c", reader])
    try:
        with server.client() as c:
            give_up = time.monotonic() + 120
            while c.stats()["in_flight"] == 0:  # encoding its 600 queries takes seconds
                assert time.monotonic() < give_up and stopped.poll() is None, "the batch never started"
                time.sleep(0.02)
            stopped.send_signal(signal.SIGSTOP)
            while int(c.stats()["details"]["answer_bytes_held"]) < 4 << 20:
                assert time.monotonic() < give_up, "the unread answer's bytes were never taken"
                time.sleep(0.05)
            with pytest.raises(grpc.RpcError) as err:  # BM25: no encoding, so it ends while the other is held
                c.search_batch(texts, k=10, mode="bm25", include_text=True, chunk_size=1000, timeout=60)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-answers-mb" in err.value.details() and not _fix_not_retry(err.value)
            assert c.search(texts[0], k=1, mode="bm25", include_text=True).hits  # a small answer still fits
            stopped.kill()  # its connection closes: the call ends and its answer is let go
            stopped.wait(30)
            while c.stats()["details"]["answer_bytes_held"] != "0":
                assert time.monotonic() < give_up, "the ended call's answer was never given back"
                time.sleep(0.05)
            assert len(c.search_batch(texts, k=10, mode="bm25", include_text=True, chunk_size=1000,
                                      timeout=60)) == len(texts)
    finally:
        stopped.kill()
        server.kill()
