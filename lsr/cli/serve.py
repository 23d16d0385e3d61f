"""Serve a collection over gRPC (lsr.v1.SearchService, health checks, reflection).

Binds to loopback unless --host says otherwise. SIGTERM (or Ctrl-C) drains: health turns
NOT_SERVING, in-flight requests finish, the process exits 0.

The collection may be indexed anew while it is served (`lsr index --overwrite`, same folder): health
turns NOT_SERVING and searches answer from the old build until the new one is whole; the server
then opens it, warms it up and serves it (SERVING again) without a restart. Texts and writes fail
UNAVAILABLE (retry) in between. For that moment both builds are in memory. A sharded collection
is served again the same way: the new build's shard servers start beside the old ones (Ray needs
the CPUs for both for that moment; a local instance reserves them) and take over once all are up.

A sharded collection (`lsr index --shards N`) is served by a coordinator: it starts one shard
server per shard as a Ray actor (a local Ray instance, or the cluster at --ray-address), encodes
each query once and merges the shards' answers into exactly the unsharded results. Ray restarts a
shard server that dies; meanwhile searches answer from the other shards and say so (partial), or
fail UNAVAILABLE with --require-all-shards. Health is NOT_SERVING while any shard is down.
Searches and writes wait on shards until the caller's deadline or --shard-timeout, whichever is
sooner. A write that times out may still be applied on the shards it names; retrying the same
write is safe.

Examples:
  lsr serve runs/scifact
  lsr serve runs/scifact --port 0 --auth-token-file token.txt
  lsr serve runs/scifact --host 0.0.0.0 --tls-cert server.crt --tls-key server.key
  lsr serve runs/msmarco-4shards                        # shard servers on a local Ray instance
  lsr serve runs/msmarco-4shards --ray-address auto     # ... on the Ray cluster this machine belongs to
  lsr serve runs/msmarco-4shards --ray-address ray://head:10001 --require-all-shards
"""

from __future__ import annotations

import argparse

from lsr.cli.device import add_device_arguments, add_query_encoder_argument, device_options
from lsr.cli.endpoint import read_token
from lsr.cli.main import flags_given, folder_argument, refuse_unused

HELP = "serve a collection over gRPC"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("collection", type=folder_argument, metavar="COLLECTION", help="a collection made by `lsr index`")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=50051, help="port (default 50051; 0 picks a free one and logs it)")
    p.add_argument("--workers", type=int, default=64, help="requests served concurrently (default 64)")
    add_query_encoder_argument(p)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per encoding call (default 1: concurrency comes from micro-batches "
                        "and parallel requests; more threads per call made a 2-core server slower)")
    p.add_argument("--tls-cert", type=folder_argument, help="PEM certificate chain; with --tls-key enables TLS")
    p.add_argument("--tls-key", type=folder_argument, help="PEM private key for --tls-cert")
    p.add_argument("--auth-token-file", type=folder_argument,
                   help="file holding a bearer token every call must send (health checks excepted)")
    p.add_argument("--batch-window-ms", type=float, default=2.0,
                   help="how long concurrent query encodings are collected into one batch (default 2)")
    p.add_argument("--max-batch", type=int, default=64, help="most queries encoded together (default 64; 1 = no batching)")
    p.add_argument("--max-message-mb", type=float, default=4.0, help="largest request in MiB; larger ones get RESOURCE_EXHAUSTED (default 4)")
    p.add_argument("--max-response-mb", type=float, default=64.0,
                   help="largest answer in MiB; a search whose hits (k, texts) would pass it gets RESOURCE_EXHAUSTED "
                        "naming the limit (default 64)")
    p.add_argument("--max-upserts-mb", type=float, default=256.0,
                   help="ids and texts in MiB that all the upserts being written may hold at once; one that would "
                        "pass it gets RESOURCE_EXHAUSTED, to retry (default 256; one upsert holds at most 64)")
    p.add_argument("--max-answers-mb", type=float, default=512.0,
                   help="answers in MiB that the server holds until their clients read them (a stopped client's "
                        "stay until its call ends, at about twice their size in memory); a search that would pass "
                        "it gets RESOURCE_EXHAUSTED, to retry (default 512; at least --max-response-mb)")
    add_device_arguments(p)
    p.add_argument("--grace", type=float, default=30.0, help="seconds in-flight requests get to finish on SIGTERM (default 30)")
    p.add_argument("--stream-idle-s", type=float, default=60.0,
                   help="seconds a client stream (an upsert, a reflection session) may send nothing before the "
                        "server cancels it (the client gets CANCELLED; nothing of an upsert is applied) and frees its "
                        "handler thread (default 60); at most a quarter of --workers such streams are open at once")
    p.add_argument("--stream-max-s", type=float, default=600.0,
                   help="seconds a client stream may stay open while the server waits on it, however often it sends "
                        "(default 600: 64 MiB, an upsert's limit, at 1 Mbit/s); past it the stream is cancelled as an "
                        "idle one is")
    sharded = p.add_argument_group("sharded collections")
    sharded.add_argument("--ray-address", metavar="ADDRESS",
                         help="Ray cluster for the shard servers: auto, HOST:PORT or ray://HOST:PORT (default: start "
                              "a local instance, whatever RAY_ADDRESS says)")
    sharded.add_argument("--require-all-shards", action="store_true",
                         help="fail searches with UNAVAILABLE while a shard is down, instead of answering from the others")
    sharded.add_argument("--shard-cpus", type=float, default=1.0,
                         help="CPUs Ray reserves per shard server (default 1); each must fit on one node and all of "
                              "them in the cluster's CPUs, else serve refuses to start (fractions like 0.25 are fine)")
    sharded.add_argument("--shard-concurrency", type=int, default=8,
                         help="calls one shard server runs at once (default 8)")
    sharded.add_argument("--shard-timeout", type=float, default=30.0,
                         help="seconds a shard may take to answer before it counts as missing (default 30); "
                              "a call with an earlier deadline, search or write, waits only until its deadline "
                              "and then fails DEADLINE_EXCEEDED naming the late shards (a write may still land there)")


def run(args: argparse.Namespace) -> int:
    from lsr.ingest.sharding import is_sharded
    from lsr.search.searcher import Searcher
    from lsr.service.server import ServerConfig, one_malloc_arena_per_core, serve

    one_malloc_arena_per_core()  # before the models load: torch's threads allocate too
    for flag in ("max_message_mb", "max_response_mb", "max_upserts_mb", "max_answers_mb"):  # the flags' words
        # gRPC takes a C int: 2048 MB or inf crashed its channel arguments in a traceback, 0.001 MB printed as 0
        if not 1 / 1024 <= getattr(args, flag) < 2048:
            raise ValueError(f"--{flag.replace('_', '-')} must be at least 1 KiB (0.001) and under 2048 MB, "
                             f"got {getattr(args, flag):g}")
    config = ServerConfig(  # checks its values before the slow collection load
        host=args.host, port=args.port, workers=args.workers,
        max_message_bytes=int(args.max_message_mb * 1024 * 1024),
        max_response_bytes=int(args.max_response_mb * 1024 * 1024),
        max_upsert_bytes_held=int(args.max_upserts_mb * 1024 * 1024),
        max_answer_bytes_held=int(args.max_answers_mb * 1024 * 1024),
        batch_window_ms=args.batch_window_ms, max_batch=args.max_batch,
        tls_cert=args.tls_cert, tls_key=args.tls_key, auth_token=read_token(args.auth_token_file),
        grace_seconds=args.grace, stream_idle_seconds=args.stream_idle_s,
        stream_max_seconds=args.stream_max_s,
    )
    if args.threads < 1:
        raise ValueError(f"--threads must be ≥ 1, got {args.threads}")
    options = dict(query_encoder=args.query_encoder, threads=args.threads, **device_options(args))
    if is_sharded(args.collection):
        from lsr.service.coordinator import ShardedSearcher
        from lsr.service.shard_set import ShardOptions

        shards = ShardOptions(ray_address=args.ray_address, shard_cpus=args.shard_cpus,
                              concurrency=args.shard_concurrency, require_all=args.require_all_shards,
                              shard_timeout=args.shard_timeout)
        return serve(lambda: ShardedSearcher.open(args.collection, options=shards, **options), config, reload=True)
    refuse_unused(flags_given(args, "ray_address", "require_all_shards", "shard_cpus", "shard_concurrency",
                              "shard_timeout"),
                  f"{args.collection} is not a sharded collection (`lsr index --shards N` makes those)")
    return serve(lambda: Searcher.open(args.collection, **options), config, reload=True)
