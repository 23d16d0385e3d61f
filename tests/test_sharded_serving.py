"""Sharded serving end to end: a real local Ray instance, shard servers as Ray actors, a real gRPC
coordinator on a free loopback port, the real models, a SciFact subset indexed whole and with
``--shards 3`` (global quantization scale and BM25 statistics), whose results must be identical.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from lsr.ingest.ray_engine import import_ray
from lsr.ingest.sharding import shard_of
from lsr.search.searcher import HybridOptions, PrfOptions, Searcher
from lsr.service import Client

pytest.importorskip("ray")
ray = import_ray()  # with its patient start-up

N_DOCS = 90
N_SHARDS = 3
MAX_LENGTH = 96
SHARD_TIMEOUT = 120.0  # far beyond every deadline the tests set: only a deadline can end their waits
STALL_DEADLINE = 5.0  # a call's deadline while a shard is stalled: at 2 s, on a busy machine, the healthy shards had
# not acknowledged an upsert in time either, so the message named all three


@pytest.fixture(scope="module")
def built(beir_dir, tmp_path_factory) -> dict[str, Path]:
    """The same documents as one collection and as 3 shards."""
    from lsr.ingest.indexing import IndexOptions, build_collection

    root = tmp_path_factory.mktemp("sharded")
    for name, shards in (("whole", 1), ("sharded", N_SHARDS)):
        build_collection(beir_dir / "scifact.tar.gz", root / name,
                         IndexOptions(max_length=MAX_LENGTH, limit=N_DOCS, shards=shards), progress=False)
    return {"whole": root / "whole", "sharded": root / "sharded"}


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _start(path: Path, reload: bool = False, **shard_options):
    from lsr.service.coordinator import ShardedSearcher
    from lsr.service.server import SearchServer, ServerConfig
    from lsr.service.shard_set import ShardOptions

    searcher = ShardedSearcher.open(path, threads=1, device="cpu",
                                    options=ShardOptions(shard_cpus=0.25, probe_seconds=0.2, **shard_options))
    return SearchServer(searcher, ServerConfig(port=0, encode_workers=1), reload).start()


def _answered(client, query: str) -> tuple[str, ...]:
    """The shards a search heard from; none while no shard server has started (UNAVAILABLE)."""
    try:
        return client.search(query, k=5).shards_answered
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        return ()


def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(built, ray_session):
    server = _start(built["sharded"], shard_timeout=SHARD_TIMEOUT)
    yield server
    server.stop(0)


@pytest.fixture(scope="module")
def client(server):
    with Client(f"127.0.0.1:{server.port}", timeout=120) as c:
        _wait(lambda: c.health() == "SERVING")
        yield c


@pytest.fixture(scope="module")
def whole(built):
    return Searcher.open(built["whole"], threads=1, device="cpu")


@pytest.fixture(scope="module")
def queries(scifact) -> list[str]:
    return list(scifact.queries.values())[:5]


def _hits(result) -> list[tuple]:
    return [(h.doc_id, h.score, h.sparse_score, h.dense_score, h.text, [tuple(e) for e in h.explanation])
            for h in result.hits]


# ---------------------------------------------------------------------------------- identity
@pytest.mark.parametrize("mode, prf, hybrid", [
    ("sparse", None, None), ("dense", None, None), ("hybrid", None, None),
    ("hybrid", PrfOptions(), None), ("sparse", PrfOptions(interpolate="both"), None), ("dense", PrfOptions(), None),
    ("hybrid", None, HybridOptions("rrf", 0.3)), ("hybrid", PrfOptions(interpolate="before"), HybridOptions("z_score", 0.6)),
    ("bm25", None, None), ("hybrid", PrfOptions(interpolate="none", min_idf=2.0, dense_weight=0.3), None),
    ("sparse", PrfOptions(interpolate="after", min_idf=1.5), None), ("hybrid", PrfOptions(), HybridOptions("min_max", 0.3, dense_weight=0.3, bm25_weight=0.4)),
    ("hybrid", PrfOptions(interpolate="after"), HybridOptions("min_max", 0.3, dense_weight=0.3, bm25_weight=0.4,
                                                              combination="harmonic_mean")),
])
def test_three_shards_answer_exactly_like_the_whole_collection(client, whole, queries, mode, prf, hybrid):
    for text in queries:
        sharded = client.search(text, k=10, mode=mode, prf=prf, hybrid=hybrid, include_text=True, explain=True)
        local = whole.search(text, k=10, mode=mode, prf=prf, hybrid=hybrid, include_text=True, explain=True)
        assert sharded.hits and _hits(sharded) == _hits(local), text
        assert not sharded.partial and sharded.shards_answered == ("shard-000", "shard-001", "shard-002")


def test_batches_and_vector_queries_match_the_whole_collection(client, whole, queries):
    batch = client.search_batch(queries, k=5, mode="hybrid", prf=PrfOptions())
    assert [_hits(r) for r in batch] == [_hits(whole.search(q, k=5, mode="hybrid", prf=PrfOptions())) for q in queries]
    sparse = {"vitamin": 1.5, "cancer": 0.75, "cell": 0.5}
    assert _hits(client.search(sparse=sparse, k=7)) == _hits(whole.search(sparse=sparse, k=7))


def test_stats_add_up_the_shards(client, whole):
    stats = client.stats()
    assert stats["num_docs"] == whole.stats()["num_docs"] == N_DOCS
    assert stats["details"]["shards"] == "3" and stats["details"]["shards_up"] == "3"


def test_the_inference_free_query_side_uses_the_whole_collections_idf(built, server, queries):
    from lsr.service.coordinator import ShardedSearcher
    from lsr.service.shard_set import ShardOptions

    whole = Searcher.open(built["whole"], query_encoder="inference-free")
    sharded = ShardedSearcher.open(built["sharded"], query_encoder="inference-free",
                                   options=ShardOptions(shard_cpus=0.25, probe_seconds=0.2))
    try:
        assert (sharded.query_encoder.idf == whole.query_encoder.idf).all()  # the shards' dfs, summed
        for text in queries:
            assert _hits(sharded.search(text, k=10, mode="hybrid")) == _hits(whole.search(text, k=10, mode="hybrid"))
    finally:
        sharded.close()


def test_the_callers_deadline_bounds_the_wait_on_shards(server, client, queries):
    from lsr.service.batching import DeadlinePassed

    with pytest.raises(DeadlinePassed, match="before the runs call was sent to the shards"):
        server.searcher.search(queries[0], k=10, deadline=time.monotonic())
    assert server.searcher.search(queries[0], k=10, deadline=time.monotonic() + 60).hits


# ---------------------------------------------------------------------------------- writes
def test_upsert_and_delete_route_to_the_owner_and_show_on_the_next_search(client, queries):
    ids = [f"new-{i}" for i in range(6)]
    assert len({shard_of(i, N_SHARDS) for i in ids}) > 1  # the writes span shards
    texts = [f"zebrafish regeneration of the heart, experiment {i}" for i in range(6)]
    assert client.upsert(ids, texts) == 6
    found = client.search("zebrafish heart regeneration", k=6)
    assert {h.doc_id for h in found.hits} == set(ids)
    # BM25 finds them too, each shard scoring with the whole collection's statistics: one text, one score
    lexical = client.search("zebrafish heart regeneration", k=6, mode="bm25")
    assert {h.doc_id for h in lexical.hits} == set(ids) and len({h.score for h in lexical.hits}) == 1
    assert client.delete([ids[0], "never-there"]) == ["never-there"]
    after = client.search("zebrafish heart regeneration", k=6)
    assert ids[0] not in {h.doc_id for h in after.hits} and ids[1] in {h.doc_id for h in after.hits}
    assert client.delete(ids[1:]) == []
    assert not {h.doc_id for h in client.search("zebrafish heart regeneration", k=10).hits} & set(ids)


def test_searches_running_through_writes_never_fail(client):
    """PRF fetches feedback vectors after the first runs; a delete in between must not break it (each shard
    answers a search's later calls from the view its first call read)."""
    from concurrent.futures import ThreadPoolExecutor

    ids = [f"churn-{i}" for i in range(4)]
    texts = [f"tardigrade desiccation survival protein {i}" for i in range(4)]

    def search(_):
        return client.search("tardigrade desiccation survival", k=5, mode="hybrid", prf=PrfOptions(feedback_docs=3))

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(lambda: [search(i) for i in range(8)]) for _ in range(3)]
        for _ in range(4):
            client.upsert(ids, texts)
            client.delete(ids)
        results = [r for future in running for r in future.result()]
    assert all(r.hits and not r.partial for r in results)
    assert not {h.doc_id for h in search(0).hits} & set(ids)


@contextlib.contextmanager
def _stalled(actor):
    """The shard server's process stopped (SIGSTOP: a frozen host, a long pause): calls reach it and get no answer."""
    pid = ray.get(actor.__ray_call__.remote(lambda _server: os.getpid()))
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _fails_by_the_deadline(call, deadline: float) -> str:
    """The details of the DEADLINE_EXCEEDED that ``call`` ends with, well before the shard timeout."""
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failure:
        call()
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < deadline + 5 < SHARD_TIMEOUT
    return failure.value.details()


def test_writes_wait_on_a_stalled_shard_only_until_the_callers_deadline_and_a_retry_is_safe(server, client):
    ids = [f"late-{i}" for i in range(6)]
    owners = {doc_id: shard_of(doc_id, N_SHARDS) for doc_id in ids}
    assert 1 in owners.values() and len(set(owners.values())) > 1
    texts = [f"axolotl limb blastema regrowth, sample {i}" for i in range(6)]
    query, deadline = "axolotl limb blastema regrowth", STALL_DEADLINE
    client.upsert(ids, texts, timeout=120)  # every shard's first write loads its code: many seconds on a busy machine
    client.delete(ids, timeout=120)
    with _stalled(server.searcher.shards.actors[1]):
        details = _fails_by_the_deadline(lambda: client.upsert(ids, texts, timeout=deadline), deadline)
        assert "before shard shard-001 acknowledged the upsert" in details and "may still be applied" in details
        details = _fails_by_the_deadline(lambda: client.search(query, k=10, timeout=deadline), deadline)
        assert details == "deadline exceeded waiting for shard shard-001"
    # The caller retries the same upsert, which lands once whether or not the stalled one did.
    assert client.upsert(ids, texts, timeout=60) == 6
    assert sorted(h.doc_id for h in client.search(query, k=10).hits if h.doc_id in owners) == ids
    _wait(lambda: client.stats()["num_docs"] == N_DOCS + 6, timeout=10)  # the stats come from the shards' probes
    with _stalled(server.searcher.shards.actors[1]):
        details = _fails_by_the_deadline(lambda: client.delete(ids, timeout=deadline), deadline)
        assert "before shard shard-001 acknowledged the delete" in details
    removed = {doc_id for doc_id, shard in owners.items() if shard != 1}  # by the shards that answered
    try:  # a retried delete reports what its first try removed as not found, NOT_FOUND when that is every id
        assert removed <= set(client.delete(ids, timeout=60))
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert not {h.doc_id for h in client.search(query, k=10).hits} & set(ids)
    _wait(lambda: client.stats()["num_docs"] == N_DOCS, timeout=10)


def test_a_write_given_up_on_is_never_applied_after_the_write_that_follows_it(server, client):
    """A shard runs calls on several threads: the coordinator sends a shard's next write only after its previous
    one finished, so a retry with new text cannot be overtaken by the stalled old text."""
    doc = next(f"order-{i}" for i in range(100) if shard_of(f"order-{i}", N_SHARDS) == 1)
    old, new = "quokka burrow humidity, old text", "quokka burrow humidity, new text"
    with _stalled(server.searcher.shards.actors[1]):
        _fails_by_the_deadline(lambda: client.upsert([doc], [old], timeout=STALL_DEADLINE), STALL_DEADLINE)
        details = _fails_by_the_deadline(lambda: client.upsert([doc], [new], timeout=STALL_DEADLINE), STALL_DEADLINE)
        assert details.startswith("deadline exceeded: shard shard-001 is still applying an earlier write")
        assert "(nothing was sent)" in details
    assert client.upsert([doc], [new], timeout=60) == 1
    hits = client.search("quokka burrow humidity", k=3, include_text=True).hits
    assert [(h.doc_id, h.text) for h in hits if h.doc_id == doc] == [(doc, new)]
    assert client.delete([doc], timeout=60) == []


# ---------------------------------------------------------------------------------- failures
def _first_failure(search, timeout: float = 20.0):
    """The first search after a kill that sees the shard gone (ray.kill is asynchronous: one may still pass)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = search()
        except grpc.RpcError as error:
            return error
        if result.partial:
            return result
    raise AssertionError("no search saw the killed shard missing")


def test_a_killed_shard_gives_partial_results_then_comes_back(server, client, queries):
    shards = server.searcher.shards
    ray.kill(shards.actors[1], no_restart=False)
    result = _first_failure(lambda: client.search(queries[0], k=10, mode="hybrid"))
    assert result.partial and result.shards_missing == ("shard-001",)
    assert result.shards_answered == ("shard-000", "shard-002")
    assert result.hits and all(shard_of(h.doc_id, N_SHARDS) != 1 for h in result.hits)
    _wait(lambda: client.health() == "SERVING" and not client.search(queries[0], k=10).partial)
    assert any(shard_of(h.doc_id, N_SHARDS) == 1 for h in client.search(queries[0], k=30).hits)


def test_a_shard_whose_server_is_gone_is_named_in_words_not_in_rays_text():
    """A write after a shard server's kill -9 said "shard-002 is down (ActorUnavailableError: The actor 993a... is
    unavailable: ... The task may or may not have been executed on the actor.), so this upsert was not sent to any
    shard (nothing was written)": an actor id, and a "may" beside "nothing"."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    from lsr.service.shard_set import _reason

    unavailable = ActorUnavailableError("The actor 993a3b is unavailable: The actor is restarting.. The task may or "
                                        "may not have been executed on the actor.", b"\x01" * 16)
    assert _reason(unavailable) == "its server is unreachable; it is being restarted"
    assert _reason(ValueError("Traceback ...\n  line\nshard folder is gone")) == "ValueError: shard folder is gone"
    assert _reason(ActorDiedError()).startswith("ActorDiedError: ")  # after a failed start: the shard's own error


@ray.remote
class _Hog:
    """Holds CPUs of the Ray instance so that only one new shard server can be placed."""

    def ready(self) -> bool:
        return True


def test_health_and_require_all_shards_follow_the_shards(built, client, queries):
    free = ray.available_resources().get("CPU", 0.0)
    hog = _Hog.options(num_cpus=free - 0.35).remote()
    ray.get(hog.ready.remote())
    server = _start(built["sharded"], require_all=True)
    try:
        with Client(f"127.0.0.1:{server.port}", timeout=120) as strict:
            time.sleep(1.0)
            assert strict.health() == "NOT_SERVING"  # two of its three shard servers cannot be placed
            with pytest.raises(grpc.RpcError) as failure:
                strict.search(queries[0], k=3)
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE and "shard-00" in failure.value.details()
            ray.kill(hog)
            _wait(lambda: strict.health() == "SERVING")
            assert not strict.search(queries[0], k=3).partial
            ray.kill(server.searcher.shards.actors[2], no_restart=False)
            failure = _first_failure(lambda: strict.search(queries[0], k=3))
            assert isinstance(failure, grpc.RpcError) and failure.code() == grpc.StatusCode.UNAVAILABLE
            assert "shard shard-002 did not answer" in failure.details()
            _wait(lambda: strict.health() == "SERVING")
            assert strict.search(queries[0], k=3).hits
    finally:
        server.stop(0)
        ray.kill(hog)


def _settled_free_cpus() -> float:
    """The Ray instance's free CPUs once the actors that earlier tests killed have let theirs go (ray.kill returns
    at once, and Ray frees their CPUs a little later)."""
    before, now = None, ray.available_resources().get("CPU", 0.0)
    while now != before:
        time.sleep(1.0)
        before, now = now, ray.available_resources().get("CPU", 0.0)
    return now


def test_shard_servers_ray_has_no_room_for_yet_are_down_pending_placement_not_late(built, ray_session, queries):
    """Shard servers the cluster could hold but has no CPUs free for: Ray keeps them pending without a word, and they
    were down as "starting", then "no answer within 30 s". They now say they wait to be placed, and for what."""
    from lsr.service.coordinator import _WholeCollection

    hog = _Hog.options(num_cpus=_settled_free_cpus() - 0.1).remote()
    ray.get(hog.ready.remote())
    server = _start(built["sharded"])  # 0.25 CPUs a shard server, 0.1 free
    try:
        waiting = "pending placement, waiting for resources: it asks for 0.25 CPUs and the cluster has 0.1 of 2 free"
        with Client(f"127.0.0.1:{server.port}", timeout=120) as c:
            def unavailable() -> str:
                with pytest.raises(grpc.RpcError) as failure:
                    c.search(queries[0], k=3)
                assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
                return failure.value.details()

            _wait(lambda: unavailable().startswith(f"shard shard-000 did not answer: it is down ({waiting}); 3 of 3"))
        shards = server.searcher.shards
        _wait(lambda: shards.down_reasons().count(waiting) == N_SHARDS)
        with pytest.raises(RuntimeError) as late:  # the inference-free query encoder waits for every shard
            _WholeCollection(shards, timeout=0.1).doc_freqs()
        assert f"within 0.1 s (shard-000 ({waiting}); shard-001 ({waiting})" in str(late.value)
    finally:
        server.stop(0)
        ray.kill(hog)


def test_a_sharded_collection_indexed_anew_under_its_server_turns_health_not_serving(built, ray_session, beir_dir,
                                                                                     queries, tmp_path):
    """`lsr index --shards 3 --overwrite` under a running sharded server: the shard servers kept writing the new
    shards from the old builds' stores (health SERVING). Each shard's look finds the new build: writes fail, health
    is NOT_SERVING, searches answer from the opened builds, and the new shards stay whole."""
    import shutil

    from lsr.cli.main import main

    path = shutil.copytree(built["sharded"], tmp_path / "sharded")
    server = _start(path)
    try:
        with Client(f"127.0.0.1:{server.port}", timeout=120) as c:
            _wait(lambda: c.health() == "SERVING")
            assert main(["index", str(beir_dir / "scifact.tar.gz"), str(path), "--overwrite", "--shards", "3",
                         "--limit", "12", "--max-length", "32", "--quiet"]) == 0
            _wait(lambda: c.health() == "NOT_SERVING")
            with pytest.raises(grpc.RpcError) as failure:
                c.upsert(["after-overwrite"], ["tardigrades survive vacuum"])
            assert "indexed anew" in failure.value.details()
            assert len(c.search(queries[0], k=N_DOCS).hits) > 12  # the builds it opened
    finally:
        server.stop(0)
    assert main(["verify", str(path)]) == 0


def test_a_sharded_collection_indexed_anew_under_its_server_is_served_without_a_restart(built, ray_session, beir_dir,
                                                                                        queries, tmp_path):
    """`lsr serve` of a sharded collection stayed NOT_SERVING after `lsr index --overwrite` until someone restarted it.
    It now starts the new build's shard servers (here 2 where there were 3), swaps them in once all are up, serves
    the new build (searches, texts and writes) and stops the old shard servers."""
    import shutil

    from lsr.cli.main import main

    path = shutil.copytree(built["sharded"], tmp_path / "sharded")
    server = _start(path, reload=True)
    old = server.searcher
    try:
        with Client(f"127.0.0.1:{server.port}", timeout=120) as c:
            _wait(lambda: c.health() == "SERVING")
            c.search(queries[0], k=1)  # the shards' versions as a search saw them
            before = c.stats()
            assert before["details"]["shards"] == str(N_SHARDS)
            assert main(["index", str(beir_dir / "scifact.tar.gz"), str(path), "--overwrite", "--shards", "2",
                         "--limit", "12", "--max-length", "32", "--quiet"]) == 0
            _wait(lambda: server.searcher is not old, timeout=180)
            _wait(lambda: c.health() == "SERVING")
            hits = c.search(queries[0], k=N_DOCS, include_text=True).hits
            assert len(hits) == 12 and all(hit.text for hit in hits)
            stats = c.stats()
            details = stats["details"]
            assert (stats["num_docs"], details["shards"], details["shards_up"], details["reloads"]) == (12, "2", "2", "1")
            # "<build>-<each shard's writes>": the new build's counts start again, under another build tag
            (old_tag, old_counts), (new_tag, new_counts) = (v["index_version"].split("-") for v in (before, stats))
            assert len(old_counts.split(".")) == N_SHARDS and new_counts == "1.1" and old_tag != new_tag
            c.upsert(["after-overwrite"], ["tardigrades survive the vacuum of space"])
            assert c.search("tardigrades vacuum", k=1).hits[0].doc_id == "after-overwrite"
            searched = c.last_index_version  # the versions the search read: the write's shard counts 2
            assert searched == c.stats()["index_version"] and searched.split("-")[1] in ("2.1", "1.2")
            _wait(lambda: old.shards._closed.is_set())  # the old build's shard servers stop once idle
    finally:
        server.stop(0)
    assert main(["verify", str(path)]) == 0


def test_a_shard_server_restarted_on_a_newer_build_is_down_not_mixed_in(built, ray_session, beir_dir, queries,
                                                                       tmp_path):
    """A shard server that Ray restarts (or the coordinator creates again) opens its folder as it is now: after
    `lsr index --overwrite`, the newer build, whose hits joined the other shards' from the build they had loaded (and
    a reload whose shards came up so swapped in such a mix). It is now down, named, and counts as indexed anew."""
    import shutil

    from lsr.cli.main import main
    from lsr.service.coordinator import ShardedSearcher
    from lsr.service.shard_set import ShardOptions

    path = shutil.copytree(built["sharded"], tmp_path / "sharded")
    assert main(["index", str(beir_dir / "scifact.tar.gz"), str(tmp_path / "newer"), "--shards", str(N_SHARDS),
                 "--limit", "12", "--max-length", "32", "--quiet"]) == 0
    searcher = ShardedSearcher.open(path, threads=1, device="cpu",
                                    options=ShardOptions(shard_cpus=0.25, probe_seconds=0.2))
    try:
        assert searcher.shards.wait_all_up(60) and not searcher.shards.replaced
        shutil.rmtree(path)
        (tmp_path / "newer").rename(path)
        ray.kill(searcher.shards.actors[1], no_restart=False)
        _wait(lambda: "opened a newer build of its folder" in searcher.shards.down_reasons())
        assert searcher.shards.replaced
        result = searcher.search(queries[0], k=N_DOCS)
        assert result.shards_missing == ("shard-001",) and all(shard_of(h.doc_id, N_SHARDS) != 1 for h in result)
    finally:
        searcher.close()


def test_in_process_shards_answer_every_call_the_coordinator_makes_of_shard_servers():
    """The coordinator serves both: a reopen that found an in-process collection indexed anew again asked its
    shards why they were down, which only Ray's shard set could say (AttributeError, not CollectionReplaced)."""
    from lsr.service.local_shards import LocalShards
    from lsr.service.shard_set import ShardSet

    public = {name for name in vars(ShardSet) if not name.startswith("_")}
    assert public and public <= set(dir(LocalShards))


def test_shards_opened_in_process_are_served_again_once_indexed_anew(built, beir_dir, queries, tmp_path):
    """The Python API may serve a sharded collection whose shards it opened in process (no Ray): a reload opens the
    new build's shards alike."""
    import shutil

    from lsr.cli.main import main
    from lsr.service.coordinator import ShardedSearcher
    from lsr.service.server import SearchServer, ServerConfig

    path = shutil.copytree(built["sharded"], tmp_path / "sharded")
    searcher = ShardedSearcher.open(path, threads=1, device="cpu", in_process=True)
    servable: list[bool] = []
    searcher.on_health(servable.append)
    server = SearchServer(searcher, ServerConfig(port=0, encode_workers=1), reload=True).start()
    try:
        assert main(["index", str(beir_dir / "scifact.tar.gz"), str(path), "--overwrite", "--shards", "2",
                     "--limit", "12", "--max-length", "32", "--quiet"]) == 0
        _wait(lambda: server.searcher is not searcher, timeout=120)
        assert servable == [True, False]  # NOT_SERVING once found indexed anew, until the new build is swapped in
        assert server.searcher.stats()["shards"] == 2
        assert len(server.searcher.search(queries[0], k=N_DOCS)) == 12
    finally:
        server.stop(0)


def test_a_sharded_collection_indexed_anew_unsharded_under_its_server_asks_for_a_restart(built, ray_session,
                                                                                         beir_dir, tmp_path):
    """A sharded collection indexed anew without --shards: its coordinator cannot serve it, so writes say to restart
    (FAILED_PRECONDITION), not "retry shortly" for good; searches answer from the shards it had."""
    import shutil

    from lsr.cli.main import main

    path = shutil.copytree(built["sharded"], tmp_path / "sharded")
    server = _start(path, reload=True)
    try:
        with Client(f"127.0.0.1:{server.port}", timeout=120) as c:
            _wait(lambda: c.health() == "SERVING")
            assert main(["index", str(beir_dir / "scifact.tar.gz"), str(path), "--overwrite", "--limit", "6",
                         "--max-length", "32", "--quiet"]) == 0

            def refused() -> str:
                with pytest.raises(grpc.RpcError) as failure:
                    c.upsert(["after-overwrite"], ["tardigrades survive vacuum"])
                return f"{failure.value.code().name}: {failure.value.details()}"

            _wait(lambda: refused().startswith("FAILED_PRECONDITION: "), timeout=120)
            assert f"{path} was indexed anew as an unsharded collection" in refused() and "restart" in refused()
            assert c.health() == "NOT_SERVING" and len(c.search("cancer", k=N_DOCS).hits) > 6
    finally:
        server.stop(0)


def test_a_write_one_shard_fails_names_it_and_the_shards_that_applied_it(built, ray_session, tmp_path):
    """One shard whose journal cannot be written (here immutable): the upsert landed on the other shards and the
    caller got a bare INTERNAL, so it could not know that 7 of its 9 documents were written and a retry was due."""
    import shutil

    if shutil.which("chattr") is None:
        pytest.skip("chattr is needed to make a journal unwritable")
    path = shutil.copytree(built["sharded"], tmp_path / "sharded")
    journal = path / "shard-002" / "journal.log"
    journal.touch()
    if subprocess.run(["chattr", "+i", str(journal)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem cannot make a file immutable")
    server = _start(path)
    try:
        ids = [f"imm-{i}" for i in range(9)]
        assert {shard_of(i, N_SHARDS) for i in ids} == {0, 1, 2}
        with Client(f"127.0.0.1:{server.port}", timeout=120) as c:
            _wait(lambda: c.health() == "SERVING")
            with pytest.raises(grpc.RpcError) as failure:
                c.upsert(ids, [f"immutable journal test {i}" for i in ids])
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE  # the shard's folder takes no writes: retry
            assert failure.value.details().startswith(f"shard shard-002 failed: NotJournaled: could not write "
                                                      f"{journal}: Operation not permitted; ")
            assert failure.value.details().endswith("this upsert was applied on shard-000, shard-001 (each shard "
                                                    "applies a write whole or not at all): retrying is safe once "
                                                    "shard-002 is fixed")
    finally:
        server.stop(0)
        subprocess.run(["chattr", "-i", str(journal)], check=True)


def test_a_deadline_shorter_than_the_shards_answer_is_deadline_exceeded(client, queries):
    with pytest.raises(grpc.RpcError) as failure:
        client.search(queries[1], k=10, mode="hybrid", prf=PrfOptions(), timeout=0.001)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("down", ["shard-001", "shard-000"])  # shard-000's refused the start: its lsr.json was read
def test_a_shard_that_cannot_open_is_named_and_the_others_answer(built, server, queries, tmp_path, caplog, down):
    import shutil

    others = tuple(name for name in ("shard-000", "shard-001", "shard-002") if name != down)
    broken = tmp_path / "broken"
    shutil.copytree(built["sharded"], broken)
    (broken / down / "lsr.json").unlink()
    with caplog.at_level(logging.INFO, logger="lsr.service"):
        partial = _start(broken)
    try:  # the warm-up waited for it a while, then warmed the encoders without a search (which logged it missing)
        assert re.search(r"event=warmed_up modes=encoders only for sparse/dense/bm25/hybrid "
                         rf"\(shards down: [\w,-]*{down}", caplog.text), caplog.text
        with Client(f"127.0.0.1:{partial.port}", timeout=120) as c:
            _wait(lambda: down in caplog.text and "is not an lsr collection" in caplog.text)
            _wait(lambda: _answered(c, queries[0]) == others)
            assert c.health() == "NOT_SERVING" and c.search(queries[0], k=5).shards_missing == (down,)
            assert "event=shards_missing" in caplog.text
            caplog.clear()
            for _ in range(10):  # each logged the missing shard: 671 lines in 20 s under load
                assert c.search(queries[0], k=5).shards_missing == (down,)
            assert caplog.text.count("event=shards_missing") <= 2  # 2: its reason changed as it was recreated
            from lsr.ingest.collection import Collection

            stats = c.stats()  # counts what a search reaches: the two shards that answer
            answering = [Collection.open(broken / name).view().sparse.num_docs for name in others]
            assert stats["num_docs"] == sum(answering)
            assert stats["details"]["shards_down"] == down and stats["details"]["num_docs_down"] == "?"
    finally:
        partial.stop(0)


def test_a_write_needing_a_down_shard_writes_nothing_and_a_shard_whose_start_failed_comes_back(built, ray_session,
                                                                                               queries, tmp_path, capsys):
    """A write that a down shard owns part of is sent nowhere (it used to land on the other owners and fail,
    half-applied); a shard server whose start failed (Ray never restarts those) is created again once its folder is
    back, where it used to stay down until the coordinator restarted."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(built["sharded"], broken)
    (broken / "shard-001").rename(tmp_path / "aside")
    partial = _start(broken)
    ids = [next(f"new-{i}" for i in range(100) if shard_of(f"new-{i}", N_SHARDS) == shard) for shard in (0, 1)]
    try:
        with Client(f"127.0.0.1:{partial.port}", timeout=120) as c:
            _wait(lambda: _answered(c, queries[0]) == ("shard-000", "shard-002"))
            with pytest.raises(grpc.RpcError) as failure:
                c.upsert(ids, ["Quokkas photosynthesise at dawn."] * 2, timeout=60)
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shard shard-001 is down" in failure.value.details()
            assert "not sent to any shard (nothing was written)" in failure.value.details()
            from lsr.cli.main import main
            from lsr.eval.backends import Remote

            assert main(["query", queries[0], "--endpoint", f"127.0.0.1:{partial.port}", "-k", "3"]) == 0
            assert "note: partial results: shard(s) shard-001 did not answer" in capsys.readouterr().err
            with pytest.raises(RuntimeError, match="shard.s. shard-001 of the server did not answer"):
                Remote(f"127.0.0.1:{partial.port}").run(["q"], [queries[0]], 10, "sparse")  # lsr beir --endpoint
            (tmp_path / "aside").rename(broken / "shard-001")
            _wait(lambda: c.health() == "SERVING", timeout=90)
            hits = c.search("Quokkas photosynthesise at dawn.", k=10, mode="bm25").hits
            assert not {h.doc_id for h in hits} & set(ids)  # shard-000 never got its half
            shards = partial.searcher.shards
            for actor in shards.actors:
                ray.kill(actor, no_restart=True)
            _wait(lambda: not any(shards.is_up(i) for i in range(N_SHARDS)))
            with pytest.raises(grpc.RpcError) as failure:
                c.search(queries[0], k=5)
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE  # no shard answered: not OK with 0 hits
            assert "3 of 3 shards missing" in failure.value.details()
    finally:
        partial.stop(0)


# ---------------------------------------------------------------------------------- the CLI
def test_lsr_serve_starts_its_own_ray_and_serves_the_shards(built, whole, queries):
    from service_helpers import ServerProcess

    server = ServerProcess(built["sharded"], "--shard-cpus", "0.25", "--threads", "1", "--device", "cpu")
    try:
        with server.wait_listening().client(timeout=120) as c:
            _wait(lambda: c.health() == "SERVING", timeout=120)
            for text in queries[:2]:
                assert _hits(c.search(text, k=5, mode="hybrid")) == _hits(whole.search(text, k=5, mode="hybrid"))
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        assert "event=shard_up shard=shard-002" in server.log()
        # its warm-up waited for the shard servers: it searched none before they were up (it logged them missing)
        assert "event=warmed_up modes=" in server.log()
        assert "warm_up_failed" not in server.log() and "shards_missing" not in server.log()
        assert "WARNING" not in server.log()  # Ray's 'Token authentication is enabled', its default, on every start
    finally:
        server.kill()


def test_lsr_serve_reloads_a_collection_indexed_anew_with_more_shards_than_its_ray_was_sized_for(built, beir_dir,
                                                                                                   tmp_path):
    """The local Ray instance `lsr serve` starts has CPUs for its shard servers twice over (6 for 3), and the old
    build's keep theirs until the new build's are up: 5 new shard servers asking for 1 CPU each stayed pending for
    good, the reload retrying every three minutes. They now share what is free. Nor does a shard server that holds
    its CPUs while its worker starts read as "pending placement" (a warning on every reload)."""
    import shutil

    from lsr.cli.main import main
    from service_helpers import ServerProcess

    path = shutil.copytree(built["sharded"], tmp_path / "sharded")
    server = ServerProcess(path, "--threads", "1", "--device", "cpu")
    try:
        with server.wait_listening().client(timeout=120) as c:
            _wait(lambda: c.health() == "SERVING", timeout=120)
            assert main(["index", str(beir_dir / "scifact.tar.gz"), str(path), "--overwrite", "--shards", "5",
                         "--limit", "12", "--max-length", "32", "--quiet"]) == 0
            _wait(lambda: c.stats()["details"]["shards"] == "5" and c.health() == "SERVING", timeout=120)
            assert c.stats()["num_docs"] == 12 and c.search("cancer", k=3).shards_answered[-1] == "shard-004"
        assert "event=shard_cpus_lowered shards=5 cpus=0.6 asked=1" in server.log()
        assert "pending placement" not in server.log()
    finally:
        server.kill()


def test_sigterm_during_a_reload_stops_its_shard_servers_and_starts_no_other_ray(built, beir_dir, tmp_path):
    """SIGTERM while a reload waited on a new build's shard server that could not start (a damaged file): the reload
    went on after Ray had shut down, and its next call started a second local Ray instance, whose agents outlived
    the server. The reload now ends with the server, and lsr never lets Ray start itself."""
    import shutil

    from lsr.cli.main import main
    from service_helpers import ServerProcess

    path = shutil.copytree(built["sharded"], tmp_path / "sharded")
    damaged = tmp_path / "damaged"
    assert main(["index", str(beir_dir / "scifact.tar.gz"), str(damaged), "--shards", str(N_SHARDS), "--limit", "12",
                 "--max-length", "32", "--dense", "none", "--quiet"]) == 0
    part = next((damaged / "shard-001" / "sparse").glob("*.doc_ptr.npy"))
    part.write_bytes(part.read_bytes()[:-1] + bytes([part.read_bytes()[-1] ^ 0xFF]))
    server = ServerProcess(path, "--shard-cpus", "0.25", "--threads", "1", "--device", "cpu")
    try:
        with server.wait_listening().client(timeout=120) as c:
            _wait(lambda: c.health() == "SERVING", timeout=120)
        sessions = lambda: sorted(Path("/tmp/ray").glob(f"session_*_{server.proc.pid}"))  # noqa: E731
        assert len(sessions()) == 1
        shutil.rmtree(path)
        damaged.rename(path)
        _wait(lambda: "fails its crc32 checksum" in server.log(), timeout=120)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
        time.sleep(3)  # the second instance came 0.6 s after the server stopped
        assert len(sessions()) == 1, sessions()
    finally:
        server.kill()


def test_sigterm_while_lsr_serve_starts_ray_ends_it_as_everywhere_else(built):
    """ray.init's own SIGTERM handler exited 15 without a word, in the seconds a local Ray instance takes to start."""
    from signal_helpers import signalled_while_ray_starts

    done, left = signalled_while_ray_starts("-m", "lsr", "serve", str(built["sharded"]), "--port", "0", "--device", "cpu")
    assert done.returncode == 143 and done.stderr.splitlines()[-1] == "terminated", done.stderr
    assert "Traceback" not in done.stderr and left == []


def test_shard_servers_the_cluster_can_never_place_are_refused_up_front_in_one_line(built, ray_session):
    """Ray keeps an actor no node can hold pending without a word: the shards were reported as not answering."""
    address = ray.get_runtime_context().gcs_address  # 2 CPUs on one node
    shards = "shard-000, shard-001, shard-002"
    for cpus, message in (("64", f"Ray cannot place {shards}: each asks for 64 CPUs and the cluster has 2"),
                          ("1", f"Ray cannot place all of {shards}: they ask for 1 CPU each, 3 in all, and the "
                                "cluster has 2")):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "lsr", "serve", str(built["sharded"]), "--port", "0",
                               "--ray-address", address, "--shard-cpus", cpus], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 2 and time.monotonic() - started < 60
        assert done.stderr.splitlines() == [f"lsr serve: error: {message} (lower --shard-cpus)"], done.stderr


def test_ray_options_on_an_unsharded_collection_and_an_unreachable_cluster_fail_in_one_line(built, free_port):
    for collection, flags, message, code in (
        (built["whole"], ["--require-all-shards"], "is not a sharded collection", 2),
        (built["sharded"], ["--ray-address", f"127.0.0.1:{free_port}"], "cannot reach a Ray cluster at", 1),
        (built["sharded"], ["--shard-timeout", "inf"], "the shard timeout in (0, 86400] seconds", 2),  # broke calls
        (built["sharded"], ["--shard-cpus", "inf"], "shard CPUs must be in 0..4096", 2),  # a traceback
    ):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "lsr", "serve", str(collection), "--port", "0", *flags],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == code and time.monotonic() - started < 30
        assert done.stderr.startswith("lsr serve: error: ") and message in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# ---------------------------------------------------------------------------------- in-process
def test_a_word_the_build_never_saw_is_scored_with_the_whole_collections_document_frequency(built, tmp_path):
    """Upserted into two shards, such a word was scored by each with its own count (1) where the whole collection
    has 2: another IDF, so BM25 and hybrid scores differed from the unsharded collection's (a README caveat)."""
    import shutil

    from lsr.service.coordinator import ShardedSearcher

    ids = ["quokka-a", "quokka-b", "quokka-c"]
    assert len({shard_of(i, N_SHARDS) for i in ids}) >= 2
    texts = [f"Quokkazoid marsupials number {i} grazing on Rottnest Island" for i in range(3)]
    whole = Searcher.open(shutil.copytree(built["whole"], tmp_path / "whole"), threads=1, device="cpu")
    sharded = ShardedSearcher.open(shutil.copytree(built["sharded"], tmp_path / "sharded"), threads=1, device="cpu",
                                   in_process=True)
    try:
        for searcher in (whole, sharded):
            searcher.upsert(ids, texts)
        assert list(whole.collection.view().bm25.new_word_doc_freqs("quokkazoid").values()) == [3]  # new: not SciFact's
        held = [sum(server.collection.view().bm25.new_word_doc_freqs("quokkazoid").values())
                for server in sharded.shards.servers]
        assert sum(held) == 3 and sum(1 for count in held if count) >= 2  # each shard alone would count 1 or 2
        for mode, hybrid in (("bm25", None), ("hybrid", HybridOptions("min_max", 0.4, dense_weight=0.3, bm25_weight=0.3))):
            got = sharded.search("quokkazoid grazing", k=5, mode=mode, hybrid=hybrid)
            want = whole.search("quokkazoid grazing", k=5, mode=mode, hybrid=hybrid)
            assert {h.doc_id for h in want.hits[:3]} == set(ids) and _hits(got) == _hits(want), mode
    finally:
        sharded.close()


def test_every_pass_of_one_search_reads_the_shard_views_its_first_pass_pinned(built, tmp_path):
    """A search's second BM25 round (a word the build never saw) and its PRF pass asked the shards for their current
    view: a document written after the first pass came back from them, then without its text (the fetch reads the
    pinned view), and one answer mixed two versions of the collection."""
    import shutil

    from lsr.service.coordinator import ShardedSearcher

    sharded = ShardedSearcher.open(shutil.copytree(built["sharded"], tmp_path / "sharded"), threads=1, device="cpu",
                                   in_process=True)
    try:
        sharded.upsert(["quokka-a", "quokka-b"], ["Quokkazoid marsupials grazing", "Quokkazoid grazing at dusk"])
        legs = sharded.legs()
        queries = {"bm25": "quokkazoid grazing", "sparse": sharded.query_encoder.encode_queries(["quokkazoid"])}
        queries["sparse"] = dict(zip(queries["sparse"].indices.tolist(), queries["sparse"].values.tolist()))
        first = legs.runs(queries, 10, {})
        sharded.upsert(["quokka-new"], ["Quokkazoid quokkazoid grazing grazing quokkazoid"])
        again = legs.runs(queries, 10, {})
        assert again == first and "quokka-new" not in again["bm25"]
        assert None not in legs.text(list(again["bm25"]))
        assert "quokka-new" in sharded.legs().runs(queries, 10, {})["bm25"]  # a new search reads the new view
    finally:
        sharded.close()


def test_lsr_search_opens_the_shards_in_process_and_answers_like_the_whole_collection(built, whole, queries, tmp_path,
                                                                                       capsys):
    """No Ray, no server: `lsr search` on a sharded collection opens its shards here (LocalShards) and gives the
    whole collection's hits, for one query and for a topics file."""
    import json

    from lsr.cli.main import main
    from lsr.service.coordinator import ShardedSearcher

    local = ShardedSearcher.open(built["sharded"], threads=1, device="cpu", in_process=True)
    try:
        for mode, prf, hybrid in (("sparse", None, None), ("dense", None, None), ("bm25", None, None),
                                  ("hybrid", PrfOptions(), HybridOptions("rrf", 0.3))):
            for text in queries:
                got = local.search(text, k=10, mode=mode, prf=prf, hybrid=hybrid, include_text=True, explain=True)
                want = whole.search(text, k=10, mode=mode, prf=prf, hybrid=hybrid, include_text=True, explain=True)
                assert got.hits and _hits(got) == _hits(want), (mode, text)
                assert got.shards_answered == ("shard-000", "shard-001", "shard-002")
    finally:
        local.close()

    topics = tmp_path / "topics.tsv"
    topics.write_text("".join(f"q{i}\t{text}\n" for i, text in enumerate(queries)), encoding="utf-8")
    printed = {}
    for name in ("sharded", "whole"):
        assert main(["search", str(built[name]), "--topics", str(topics), "--output", str(tmp_path / f"{name}.trec"),
                     "--k", "20", "--device", "cpu"]) == 0
        capsys.readouterr()
        assert main(["search", str(built[name]), queries[0], "--json", "--text", "--device", "cpu"]) == 0
        printed[name] = json.loads(capsys.readouterr().out)["hits"]
    assert (tmp_path / "sharded.trec").read_text() == (tmp_path / "whole.trec").read_text()
    assert len((tmp_path / "whole.trec").read_text().splitlines()) == 20 * len(queries)
    assert printed["sharded"] == printed["whole"] and len(printed["whole"]) == 10
