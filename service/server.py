"""The gRPC server's lifecycle: bind, health, reflection, auth, TLS, and a clean SIGTERM drain.

``serve()`` is what ``lsr serve`` runs. Shutdown order matters for zero-error deploys: health
turns NOT_SERVING first (load balancers stop routing), new searches get UNAVAILABLE, in-flight
requests finish, then the server stops and the process exits 0. A collection indexed anew under it
is opened again and swapped in (``lsr.service.reload``).
"""

from __future__ import annotations

import ctypes
import errno
import hmac
import logging
import os
import signal
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from lsr.files import stop_signals
from lsr.service import search_pb2, search_pb2_grpc
from lsr.service.client import token_problem
from lsr.service.health import SERVICE_NAME as HEALTH_SERVICE, Health
from lsr.service.reload import Reloader
from lsr.service.servicer import SearchServicer, Undecodable
from lsr.service.streams import StreamGuard

log = logging.getLogger("lsr.service")

SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_HEALTH_METHODS = (_HEALTH_CHECK, "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/List")
MAX_THREADS = 4096  # --workers (handler threads) and --max-batch (queries a batch waits for) at most
AFTER_DRAIN_GRACE_S = 0.5  # for the calls left once every search and write has finished (``serve``)


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def enable_reflection(service_names: tuple[str, ...], server: grpc.Server) -> None:
    """Serve reflection as both ``grpc.reflection.v1`` and ``v1alpha``.

    grpcio-reflection serves only v1alpha; current grpcurl, Postman and Evans ask v1 first. The two protocols'
    messages are the same on the wire, so one servicer answers both names.
    """
    servicer = reflection.ReflectionServicer(service_names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": info}),))


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port (logged as event=listening)
    workers: int = 64  # handler threads: concurrent requests being served
    max_concurrent_rpcs: int = 512  # beyond this, calls are refused with RESOURCE_EXHAUSTED
    max_message_bytes: int = 4 * 1024 * 1024  # largest request
    max_response_bytes: int = 64 * 1024 * 1024  # largest answer: a full batch of k=1000 hits is larger than a request
    max_upsert_bytes_held: int = 256 * 1024 * 1024  # ids + texts of all the Upsert streams held at once
    max_answer_bytes_held: int = 512 * 1024 * 1024  # answers built and not yet read by their clients
    batch_window_ms: float = 2.0
    max_batch: int = 64  # 1 disables micro-batching: every request encodes on its own
    encode_workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # encodes running at once, both encoders together
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_token: str | None = None
    grace_seconds: float = 30.0
    stream_idle_seconds: float = 60.0  # a client stream (upsert, reflection) silent this long is cancelled
    stream_max_seconds: float = 600.0  # ... and one open this long, while the server waits on its client

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        for name in ("workers", "max_batch", "encode_workers", "max_concurrent_rpcs", "max_message_bytes",
                     "max_response_bytes", "max_upsert_bytes_held", "max_answer_bytes_held"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for flag, value in (("--workers", self.workers), ("--max-batch", self.max_batch)):  # 10^20 was taken
            if value > MAX_THREADS:
                raise ValueError(f"{flag} must be at most {MAX_THREADS}, got {value}")
        for flag, value, low, high in (("--batch-window-ms", self.batch_window_ms, 0, 10_000),
                                       ("--grace", self.grace_seconds, 0, 86_400),
                                       ("--stream-idle-s", self.stream_idle_seconds, 0, 86_400),
                                       ("--stream-max-s", self.stream_max_seconds, 0, 86_400)):
            positive = flag.startswith("--stream-")
            if not (low <= value < high and (value > 0 or not positive)):  # NaN failed no "< 0"
                interval = f"(0, {high})" if positive else f"[0, {high})"
                raise ValueError(f"{flag} must be in {interval}, got {value:g}")
        if self.stream_idle_seconds > self.stream_max_seconds:  # the idle limit could never apply
            raise ValueError(f"--stream-idle-s ({self.stream_idle_seconds:g}) must be at most --stream-max-s "
                             f"({self.stream_max_seconds:g})")
        if self.max_answer_bytes_held < self.max_response_bytes:  # the largest answer would never get through
            raise ValueError(f"--max-answers-mb ({self.max_answer_bytes_held / 2**20:g}) must be at least "
                             f"--max-response-mb ({self.max_response_bytes / 2**20:g})")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
        if self.tls_cert is not None:
            check_tls_pair(Path(self.tls_cert), Path(self.tls_key))
        check_port_free(self.host, self.port)  # before the slow collection load; again at bind
        if self.auth_token is not None and not self.auth_token:
            raise ValueError("the auth token is empty; put a non-empty token in the --auth-token-file")
        problem = token_problem(self.auth_token) if self.auth_token else None
        if problem is not None:  # no client could send it
            raise ValueError(f"the auth token {problem}")


def check_tls_pair(cert: Path, key: Path) -> None:
    """gRPC takes any PEM bytes and then fails to bind ("Failed to bind", as if the port were taken) when the key
    does not match the certificate; Python's ssl says which of the two is wrong."""
    def encrypted() -> bytes:  # else OpenSSL asks for the pass phrase on the terminal, and the start hangs there
        raise ValueError(f"--tls-key {key} is encrypted; gRPC needs it unencrypted (openssl pkey -in KEY -out PLAIN)")

    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not path.is_file():
            raise FileNotFoundError(f"{flag} {path} is not a file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=encrypted)
    except ssl.SSLError as exc:
        what = ("--tls-key is not the private key of --tls-cert" if "KEY_VALUES_MISMATCH" in str(exc)
                else "--tls-cert must be a PEM certificate chain and --tls-key its unencrypted PEM private key")
        raise ValueError(f"{what} ({cert}, {key}: {exc.reason or exc})") from None


def check_port_free(host: str, port: int) -> None:
    """gRPC binds each address a host name resolves to and succeeds if any binds: with 127.0.0.1:P taken by another
    server, ``--host localhost`` bound only [::1]:P and took the clients that try IPv6 first. Every address must be
    free (addresses this machine lacks, such as ::1 without IPv6, are left to gRPC, which skips them), and at least one
    must be this machine's (port 0 probes a free port)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ValueError(f"cannot bind --host {host!r}: {exc.strerror}") from None
    lacked = 0
    for family, kind, proto, _name, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no conflict
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(f"could not bind {host}:{port}: {address[0]} port {port} is in use "
                                  "(another server? pick another --port, or 0 for a free one)") from None
                lacked += exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
    if addresses and lacked == len(addresses):  # gRPC said "Failed to bind ... set GRPC_VERBOSITY=debug"
        raise ValueError(f"cannot bind --host {host}: this machine has no such address; give one of its own "
                         "addresses, 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)")


class BearerTokenAuth(grpc.ServerInterceptor):
    """Refuse calls without ``authorization: Bearer <token>`` with UNAUTHENTICATED; health checks stay open."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method in _HEALTH_METHODS:
            return handler
        sent = [value for key, value in details.invocation_metadata if key == "authorization"]
        if len(sent) > 1:  # a proxy that checks the first, and this server the last, would disagree
            return _refusing_handler(handler, "more than one authorization header: send one, 'Bearer <token>'")
        scheme, _, token = sent[0].partition(" ") if sent and isinstance(sent[0], str) else ("", "", "")
        # The scheme is case-insensitive (RFC 7235): clients that send "bearer TOKEN" were refused with the right token
        if scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self._expected):
            return handler
        return _refusing_handler(handler, "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'")


class HealthOnOwnThreads(grpc.ServerInterceptor):
    """Health checks run on threads of their own: behind a full pool (every --workers thread busy, a hundred heavy
    searches queued) a probe timed out for seconds, and a liveness probe would restart a server that is only busy.
    gRPC runs a behaviour that names an ``experimental_thread_pool`` there."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lsr-health")

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or details.method != _HEALTH_CHECK:
            return handler
        check = handler.unary_unary

        def on_own_thread(request, context):
            return check(request, context)

        on_own_thread.experimental_thread_pool = self.pool
        return _handler_like(handler, on_own_thread, handler.request_deserializer)


class LenientDecoding(grpc.ServerInterceptor):
    """Hand undecodable request bytes to the servicer as ``Undecodable`` instead of failing in gRPC.

    gRPC answers a deserializer's exception with INTERNAL "Exception deserializing request!";
    bytes that are not a valid message (a string that is not UTF-8) are the caller's mistake,
    which the servicer answers with INVALID_ARGUMENT and a message that says what is wrong.
    """

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None or not details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        parse = handler.request_deserializer

        def lenient(data: bytes):
            try:
                return parse(data)
            except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and others
                return Undecodable(exc)

        return _handler_like(handler, _behaviour(handler), lenient)


def _behaviour(handler: grpc.RpcMethodHandler):
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


def _handler_like(handler: grpc.RpcMethodHandler, behaviour, deserializer) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` with another behaviour and deserializer."""
    kind = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return kind(behaviour, request_deserializer=deserializer, response_serializer=handler.response_serializer)


def _refusing_handler(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    def refuse(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    return _handler_like(handler, refuse, handler.request_deserializer)


class SearchServer:
    """A started gRPC server around one Searcher; ``drain()`` then ``stop()`` shuts it down in order."""

    def __init__(self, searcher, config: ServerConfig, reload: bool = False) -> None:
        """``reload``: serve the collection again once it is indexed anew (``lsr.service.reload``); without it the
        server stays NOT_SERVING until a restart."""
        self.config = config
        self._reloader = Reloader(lambda: self.searcher, self._swap_in) if reload else None
        self.servicer = SearchServicer(searcher, batch_window=config.batch_window_ms / 1000.0, max_batch=config.max_batch,
                                       encode_workers=config.encode_workers,
                                       max_response_bytes=config.max_response_bytes,
                                       max_upsert_bytes_held=config.max_upsert_bytes_held,
                                       max_answer_bytes_held=config.max_answer_bytes_held, reloader=self._reloader)
        self._health_threads = HealthOnOwnThreads()
        interceptors = [self._health_threads]  # first: the handler it returns is the one gRPC runs
        interceptors += [BearerTokenAuth(config.auth_token)] if config.auth_token is not None else []
        interceptors += [LenientDecoding(), StreamGuard(max(1, config.workers // 4), config.stream_idle_seconds,
                                                        config.workers, config.stream_max_seconds)]
        limits = [  # both bounded to protect the server
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_response_bytes),
            # gRPC sets SO_REUSEPORT by default: a second server on a taken port would bind too and
            # silently share its traffic; without it the bind fails and says so.
            ("grpc.so_reuseport", 0),
        ]
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="lsr-rpc"),
            interceptors=interceptors, options=limits, maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        )
        search_pb2_grpc.add_SearchServiceServicer_to_server(self.servicer, self._server)
        self.health = Health()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        enable_reflection((SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME), self._server)
        address = f"{config.host}:{config.port}"
        check_port_free(config.host, config.port)
        if config.tls_cert is not None:
            creds = grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())])
            self.port = self._server.add_secure_port(address, creds)
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"could not bind {address}: is the port in use?")

    def start(self) -> "SearchServer":
        """Warm the searcher up (``Searcher.warm_up``), then listen: no request pays for a first search."""
        started = time.monotonic()
        try:
            modes = self.searcher.warm_up()
            log.info("event=warmed_up modes=%s seconds=%.3f", ",".join(modes), time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - only a speed-up: a search that fails here fails its request with a status
            log.warning("event=warm_up_failed error=%s", " ".join(str(exc).split()))
        self._server.start()
        self.searcher.on_health(self._report_health)  # a sharded searcher reports again whenever a shard comes or goes
        if self._reloader is not None:
            self._reloader.watch(self.searcher)
        log.info(
            "event=listening address=%s:%d tls=%s auth=%s workers=%d batching=%s window_ms=%g max_batch=%d encode_workers=%d",
            self.config.host, self.port, self.config.tls_cert is not None, self.config.auth_token is not None,
            self.config.workers, self.servicer.sparse_batcher.batching, self.config.batch_window_ms, self.config.max_batch,
            self.config.encode_workers,
        )
        return self

    @property
    def searcher(self):
        """The searcher new requests use."""
        return self.servicer.searcher

    def _swap_in(self, searcher) -> None:
        """A reload's new build: served from the next request on, and SERVING again."""
        self.servicer.swap(searcher)
        searcher.on_health(self._report_health)

    def _report_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)  # ignored once draining: shutdown stays NOT_SERVING

    def drain(self, timeout: float) -> bool:
        """NOT_SERVING, refuse new searches, wait for in-flight ones; True if they all finished in time."""
        self.servicer.refuse_new()  # first: a search sent on seeing NOT_SERVING could slip in before the refusal
        self.health.enter_graceful_shutdown()
        return self.servicer.drain(timeout)

    def stop(self, grace: float | None = None) -> None:
        if self._reloader is not None:
            self._reloader.stop()
        self._server.stop(grace).wait()
        self._health_threads.pool.shutdown(wait=False)
        self.servicer.close()
        self.searcher.close()


def one_malloc_arena_per_core() -> None:
    """glibc gives each thread that allocates while others do an arena of its own, up to 8 per core, and each keeps
    what it freed: 8 upsert streams on 2 cores (2 encoding at a time) took a server to a 3.0 GB peak, 1.8-2.1 GB with
    an arena per core, at the same documents/s and search latency (benchmarks/results/upsert_load.md); hybrid search
    QPS at 8 and 32 clients stayed within 5 % (benchmarks/service.py, two rounds each way). Called before
    any thread allocates (`lsr serve`'s first step: the model loads start torch's); ``MALLOC_ARENA_MAX``, where set,
    decides instead. Other C libraries: nothing to do."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL(None).mallopt(-8, max(2, os.cpu_count() or 1))  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def serve(open_searcher: Callable[[], Any], config: ServerConfig, reload: bool = False) -> int:
    """Serve the searcher ``open_searcher()`` opens until SIGTERM/SIGINT, then drain and stop; returns the process
    exit code. ``reload`` as in ``SearchServer``. An opener, not a searcher: an argument stays referenced by its
    caller's frame for the whole call, which kept the first build's memory and deleted files (152 MB at 200k
    documents) for the server's life, however many reloads retired it."""
    for encoder_log in ("lsr.encode.splade", "lsr.encode.dense"):
        # Each request's log line says truncated=; the encoders' own warning, a line per long query, let a client
        # write the log as fast as it could send queries.
        logging.getLogger(encoder_log).setLevel(logging.ERROR)
    server = SearchServer(open_searcher(), config, reload).start()
    received: list[int] = []

    def on_signal(signum, _frame):
        # Nothing here may take a lock: the handler runs in the main thread between two of its bytecodes, maybe
        # holding that lock. ``Event.set()`` here deadlocked once in ~50 SIGTERMs, on the lock of the
        # ``Event.wait(1.0)`` it interrupted as the wait timed out, and the server never drained nor exited.
        received.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in stop_signals()}
    try:
        while not received:
            time.sleep(0.1)
        started = time.monotonic()
        log.info("event=draining signal=%s in_flight=%d", signal.Signals(received[0]).name, server.servicer.in_flight)
        finished = server.drain(config.grace_seconds)
        # What is left once every search and write has finished: health Watch streams (a load balancer's), which
        # stay open until cancelled, and refusals on their way out. Waiting out the grace for them held every
        # SIGTERM for the whole --grace (30 s), past an orchestrator's kill timeout.
        left = max(0.0, config.grace_seconds - (time.monotonic() - started))
        server.stop(grace=min(left, AFTER_DRAIN_GRACE_S) if finished else left)
        log.info("event=stopped drained=%s seconds=%.3f", finished, time.monotonic() - started)
        return 0 if finished else 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
