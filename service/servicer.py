"""lsr.v1.SearchService on top of a Searcher: request validation, deadlines, status codes, logs.

Every RPC runs inside ``_rpc``, which gives it a request id, counts it as in flight (for the
SIGTERM drain), turns exceptions into gRPC status codes with the human message, and writes one
structured ``key=value`` log line with the per-stage timings. Handlers check the deadline and
the caller's liveness between stages, so work for a caller that gave up stops early.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import gc
import itertools
import logging
import re
import threading
import time
import uuid
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Iterator

import grpc
import numpy as np

from lsr.encode.texts import check_query_length, is_blank
from lsr.files import CorruptFileError, FolderBusyError
from lsr.ingest.collection import CollectionReplaced
from lsr.search.models import ModelChanged
from lsr.search.searcher import FailedPrecondition, legs_of, row_dict
from lsr.service import search_pb2 as pb
from lsr.service import search_pb2_grpc
from lsr.service.batching import BatchStats, DeadlinePassed, MicroBatcher
from lsr.service.shard_set import ShardUnavailable, ShardWriteFailed
from lsr.sparse import id_problem, short_repr
from lsr.service.convert import (
    NO_RETRY, TIMING_FIELDS, hybrid_from_proto, k_from_proto, mode_from_proto, prf_from_proto, result_to_proto, size_in_batch,
)

log = logging.getLogger("lsr.service")

MAX_BATCH_TEXTS = 1000
MAX_UPSERT_DOCS = 10_000  # documents in one Upsert stream
MAX_UPSERT_BYTES = 64 * 1024 * 1024  # ids + texts of one Upsert stream, checked as messages arrive
MAX_UPSERT_BYTES_HELD = 256 * 1024 * 1024  # ids + texts of every Upsert stream the server holds at once
MAX_ANSWER_BYTES_HELD = 512 * 1024 * 1024  # answers built and not yet read by their clients
_BATCH_CHUNK = 8  # SearchBatch encodes this many texts at a time (an encode cannot be interrupted)
SLOT_LOOK_S = 0.05  # how often an upsert waiting for an encode slot looks whether its caller is still there
TRIM_AFTER_WRITES_S = 10.0  # at most this often, once no upsert is encoding, the memory writes freed goes back
# A caller's x-request-id is logged and echoed only if it is one short word: "abc status=OK" forged log fields.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/-]{1,64}")
MAX_MESSAGE_CHARS = 1000  # of an error's status message: gRPC's trailers hold 8-16 KB, and a long id once passed them
# Bytes of one hit in a response beside its text: id, scores, field tags; explain adds up to 10 terms.
_HIT_BYTES = 64
_EXPLAIN_BYTES = 10 * 32


class Abandoned(Exception):
    """The caller cancelled or went away; the rest of its work is skipped."""


class Draining(Exception):
    """The server is shutting down and takes no new searches."""


class TooLarge(Exception):
    """The request would need more memory than the server's limits allow; the message names the limit."""


class RequestTooLarge(TooLarge):
    """TooLarge whatever else the server holds: the same request fails on every retry. Its RESOURCE_EXHAUSTED carries
    the trailing metadata ``lsr-retry: no``, so a client tells it from a busy server's (``lsr.service.client``)."""


class BytesHeld:
    """Bytes of one kind the server holds at once, bounded: each holder takes its bytes and gives them back when it
    is done, so many large upserts, or answers their clients do not read, cannot exhaust the server's memory."""

    def __init__(self, limit: int, what: str, flag: str, advice: str) -> None:
        self.limit, self.what, self.flag, self.advice = limit, what, flag, advice
        self.held = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        """Hold ``n`` bytes more; TooLarge (to retry) while the others hold too much."""
        with self._lock:
            if self.held + n > self.limit:
                raise TooLarge(f"the server holds {self.held / 2**20:,.1f} MiB of {self.what}, and this one would "
                               f"pass its {self.limit / 2**20:,.0f} MiB limit for them ({self.flag}); retry shortly, "
                               f"{self.advice}")
            self.held += n

    def give(self, n: int) -> None:
        with self._lock:
            self.held -= n

    @contextlib.contextmanager
    def stream(self) -> Iterator[Callable[[int], None]]:
        """A stream's ``take(n)``, all it took given back at exit."""
        taken = 0

        def take(n: int) -> None:
            nonlocal taken
            self.take(n)
            taken += n

        try:
            yield take
        finally:
            self.give(taken)

    def until_call_ends(self, n: int, context: grpc.ServicerContext) -> None:
        """Hold an answer's ``n`` bytes until its call ends: gRPC keeps an answer its client has not read (a
        stopped or slow client) until then, 58 MB for a 28 MiB one, with no bound on how many."""
        self.take(n)
        if not context.add_callback(functools.partial(self.give, n)):  # the call has ended already
            self.give(n)


class Undecodable:
    """What the lenient deserializer (``lsr.service.server``) hands over for bytes that are not a valid message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def decoded(message):
    """``message``, or INVALID_ARGUMENT when its bytes did not parse (e.g. a string that is not UTF-8)."""
    if isinstance(message, Undecodable):
        raise ValueError(f"the request is not a valid lsr.v1 message (strings must be UTF-8): {message.error}")
    return message


def _status_of(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, ShardWriteFailed):
        return _status_of(exc.cause)
    if isinstance(exc, (DeadlinePassed, FutureTimeout)):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, Abandoned):
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, (Draining, ShardUnavailable, FolderBusyError)):  # busy: another process writes the collection
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, TooLarge) or _disk_error(exc, errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if _disk_error(exc, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO):  # the server's folder: not the request
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, CorruptFileError):  # before ValueError: a damaged file is the server's problem, not the caller's
        return grpc.StatusCode.DATA_LOSS
    if isinstance(exc, (FailedPrecondition, CollectionReplaced, ModelChanged)):  # before ValueError: it may subclass it
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, KeyError):
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.INTERNAL


def _disk_error(exc: BaseException, *numbers: int) -> bool:
    """A full disk or a folder that takes no writes: the request was fine (it got INTERNAL, with a traceback)."""
    return isinstance(exc, OSError) and exc.errno in numbers


def _reloading_status(exc: CollectionReplaced, blocked: str | None) -> tuple[grpc.StatusCode, str]:
    """A write while the server opens its collection again: retry shortly; or, where no reload can
    serve what is there now (``blocked``), what the operator must do (it said "retry shortly" for good)."""
    if blocked:
        return grpc.StatusCode.FAILED_PRECONDITION, f"{blocked}; searches and texts answer from the build it had loaded"
    return grpc.StatusCode.UNAVAILABLE, (f"{exc.what}; the server answers searches and texts from what it had loaded, "
                                         "and writes once it has opened the collection again, which it does by "
                                         "itself: retry shortly")


def _message_of(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])  # str(KeyError) adds quotes
    if _disk_error(exc, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO):
        return (f"the server could not write its collection ({exc}); retry once its folder takes writes again (the "
                "write may yet be applied from the collection's journal: retrying it is safe)")
    return str(exc) or type(exc).__name__


NO_DEADLINE_S = 30 * 24 * 3600.0  # a longer remaining time means the caller set none


class _Call:
    """What one RPC records for its log line, and the searcher it uses (``serving``, set once it is in flight)."""

    def __init__(self, method: str, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        self.method = method
        given = metadata.get("x-request-id")
        self.request_id = given if isinstance(given, str) and _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        self.started = time.perf_counter()
        self.fields: dict[str, object] = {}
        remaining = context.time_remaining()
        # A call without a deadline reports an enormous remaining time, which waits cannot take (OverflowError)
        self.deadline = None if remaining is None or not remaining < NO_DEADLINE_S else time.monotonic() + remaining
        self.context = context
        self.serving: Serving | None = None

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def check(self, stage: str) -> None:
        """Raise if the caller is gone or its deadline passed; called between stages."""
        if self.expired():  # first: an expired call is inactive too
            raise DeadlinePassed(f"deadline exceeded before {stage}")
        if not self.context.is_active():
            raise Abandoned(f"the caller cancelled before {stage}")

    def remaining(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def elapsed_ms(self) -> float:
        return 1000.0 * (time.perf_counter() - self.started)


def _rpc(method):
    name = method.__name__

    @functools.wraps(method)
    def handler(self: "SearchServicer", request, context: grpc.ServicerContext):
        call = _Call(name, context)
        context.set_trailing_metadata((("x-request-id", call.request_id),))
        failure: tuple[grpc.StatusCode, str] | None = None
        with self._tracked() as call.serving:
            try:
                if self._draining.is_set() and name != "GetStats":
                    raise Draining("the server is shutting down; retry on another replica")
                response = method(self, decoded(request), call)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status code
                code, message = _status_of(exc), _message_of(exc)[:MAX_MESSAGE_CHARS]
                if isinstance(exc, CollectionReplaced) and self.reloader is not None:  # soon served again: retry
                    code, message = _reloading_status(exc, self.reloader.blocked)
                    message = message[:MAX_MESSAGE_CHARS]
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("rpc=%s request_id=%s internal error", name, call.request_id)
                    message = f"internal error (request id {call.request_id}); the server log has details"
                    if isinstance(exc, ShardWriteFailed):  # where the write landed is the caller's to know
                        message = f"shard {exc.shard}: {message}; {exc.applied}"
                failure = code, message
                if isinstance(exc, RequestTooLarge):
                    context.set_trailing_metadata((("x-request-id", call.request_id), (NO_RETRY, "no")))
        if failure is not None:
            code, message = failure
            log.info("rpc=%s request_id=%s status=%s ms=%.2f %s error=%r", name, call.request_id, code.name,
                     call.elapsed_ms(), _format(call.fields), message)
            if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                # Counted once the call has left in_flight and is logged: whoever sees it abandoned also sees it gone,
                # and its log line written.
                self._count("abandoned")
            context.abort(code, message)
        if name in ("Upsert", "Delete") and call.expired():
            call.fields["past_deadline"] = True  # applied; its caller may be told DEADLINE_EXCEEDED (a retry is safe)
            self._count("writes_past_deadline")
        log.info("rpc=%s request_id=%s status=OK ms=%.2f %s", name, call.request_id, call.elapsed_ms(), _format(call.fields))
        return response

    return handler


def _format(fields: dict[str, object]) -> str:
    return " ".join(f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}" for key, value in fields.items())


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    """Validates requests, micro-batches text encodings, and hands the rest to the Searcher."""

    def __init__(self, searcher, *, batch_window: float = 0.002, max_batch: int = 64, encode_workers: int = 2,
                 max_response_bytes: int = 64 * 1024 * 1024, max_upsert_bytes_held: int = MAX_UPSERT_BYTES_HELD,
                 max_answer_bytes_held: int = MAX_ANSWER_BYTES_HELD, reloader=None) -> None:
        """``reloader``: opens a collection indexed anew by itself (``lsr.service.reload``), if the server has one."""
        self.max_response_bytes = max_response_bytes
        self.upsert_bytes = BytesHeld(max_upsert_bytes_held, "upserts being written", "--max-upserts-mb",
                                      "or send smaller upserts")
        self.answer_bytes = BytesHeld(max_answer_bytes_held, "answers their clients have not read yet",
                                      "--max-answers-mb", "or ask for fewer hits or texts")
        # One pool of encode slots for both encoders: a hybrid query's two encodings overlap, yet no
        # more forward passes run at once than there are cores to run them.
        busy = lambda: self.in_flight  # noqa: E731 - requests that may still join a batch
        self._batching = {"window": batch_window, "max_batch": max_batch, "busy": busy, "workers": encode_workers,
                          "slots": threading.Semaphore(max(1, encode_workers))}
        self._serving = Serving(searcher, self._batching)
        # Upserts encode their documents in slots of their own, as many. Measured with 8 streams of 4 x 64 SciFact
        # documents on 2 cores, 33-34 documents/s either way: unbounded (before), a search meanwhile took p50 41-43 ms
        # (15-16 ms now), and an encode holds ~120 MB; in the query slots, searches waited behind document batches
        # (p50 250-585 ms, p90 3.6 s).
        self._document_slots = threading.Semaphore(max(1, encode_workers))
        self._upserts_encoding = 0
        self._trimmed_at = 0.0
        self.started = time.monotonic()
        # writes_past_deadline: applied, as they held the write lock when their deadline passed (a details entry)
        self.counters = {"requests": 0, "abandoned": 0, "writes_past_deadline": 0}
        self.reloads = 0  # new builds swapped in
        self._retired = {"sparse": BatchStats(), "dense": BatchStats()}  # micro-batches of builds swapped out
        self.reloader = reloader
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.in_flight = 0
        self._draining = threading.Event()

    @property
    def searcher(self):
        """The searcher new requests use (a reload swaps in another)."""
        return self._serving.searcher

    @property
    def sparse_batcher(self) -> MicroBatcher:
        return self._serving.sparse_batcher

    def swap(self, searcher) -> None:
        """Serve ``searcher`` from the next request on; the one it replaces is closed, with its batchers, once the
        requests that started on it have finished (in the background: a long one keeps only it waiting)."""
        with self._lock:
            old, self._serving = self._serving, Serving(searcher, self._batching)
            self.reloads += 1
        threading.Thread(target=self._retire, args=([old],), name="lsr-retire", daemon=True).start()

    def _retire(self, held: list["Serving"]) -> None:
        """Close the build in ``held`` once idle, then, with no reference to it left, give its memory back."""
        old = held.pop()
        self._close_when_idle(old)
        del old
        for pause in RETIRED_COLLECTIONS_S:  # a cycle something still held at the first collection is let go later:
            time.sleep(pause)  # the old build's files stayed open past a minute, where no automatic collection ran
            _return_freed_memory()

    def _close_when_idle(self, old: "Serving") -> None:
        with self._idle:
            self._idle.wait_for(lambda: old.users == 0)
        old.close()
        old.searcher.close()
        with self._lock:  # GetStats counts on from them: its counters restarted with each build
            for name, batcher in (("sparse", old.sparse_batcher), ("dense", old.dense_batcher)):
                self._retired[name].batches += batcher.stats.batches
                self._retired[name].texts += batcher.stats.texts

    # ------------------------------------------------------------------------------- RPCs
    @_rpc
    def Search(self, request: pb.SearchRequest, call: _Call) -> pb.SearchResponse:
        searcher = call.serving.searcher
        options = self._options(request, searcher)
        text, sparse, dense = _query_of(request)
        options["mode"] = searcher.resolve_mode(options["mode"], sparse=sparse, dense=dense, text=text)
        call.fields.update(mode=options["mode"], k=options["k"], prf=options["prf"] is not None)
        searcher.check_request(text, sparse, dense, *(options[key] for key in ("k", "mode", "hybrid", "prf", "bound_factor")),
                               explain=options["explain"], include_text=options["include_text"])
        self._check_response_size(1, options, searcher)
        call.check("encoding")
        if text is not None and dense is None:
            result = self._search_text(text, options, call, call.serving)
        else:  # vectors given: nothing to encode except text beside a dense vector, which is rare
            result = searcher.search(text, sparse=sparse, dense=dense, deadline=call.deadline, **options)
        response = result_to_proto(result, request_id=call.request_id,
                                   total_ms=call.elapsed_ms())
        size = response.ByteSize()
        if size > self.max_response_bytes:  # the estimate was low: these hits' texts (or ids) are long
            raise RequestTooLarge(f"the response is {size / 2**20:,.0f} MiB, over the server's "
                           f"{self.max_response_bytes / 2**20:.0f} MiB response limit (k={options['k']}: these "
                           "documents are long); ask for fewer hits, or include_text=false and fetch the texts")
        self.answer_bytes.until_call_ends(size, call.context)
        self._count("requests")
        if result.partial:
            call.fields.update(shards_missing=",".join(result.shards_missing))
        call.fields.update(hits=len(result.hits), truncated=result.truncated,
                           **{f"{stage}_ms": value for stage, value in _timings_ms(response).items()})
        return response

    @_rpc
    def SearchBatch(self, request: pb.SearchBatchRequest, call: _Call) -> pb.SearchBatchResponse:
        searcher = call.serving.searcher
        options = self._options(request, searcher)
        texts = list(request.texts)
        if not texts:
            raise ValueError("texts is empty; send at least one query")
        if len(texts) > MAX_BATCH_TEXTS:
            raise ValueError(f"{len(texts)} texts in one batch; send at most {MAX_BATCH_TEXTS} per request")
        for i, text in enumerate(texts):
            if is_blank(text):
                raise ValueError(f"texts[{i}] is empty or whitespace; every query needs some words")
            check_query_length(text, f"texts[{i}]")
        options["mode"] = searcher.resolve_mode(options["mode"])
        call.fields.update(mode=options["mode"], k=options["k"], prf=options["prf"] is not None, texts=len(texts))
        self._check_response_size(len(texts), options, searcher)
        out = pb.SearchBatchResponse()
        size = 0
        for start in range(0, len(texts), _BATCH_CHUNK):
            call.check(f"texts[{start}:]")
            numbers = itertools.count(start)  # the batch's numbering, not the chunk's (always below 8 in the log)

            def check(_stage: str, numbers=numbers) -> None:
                call.check(f"query {next(numbers)} of the batch")

            results = searcher.search_batch(texts[start : start + _BATCH_CHUNK], check=check, deadline=call.deadline,
                                            **options)
            for result in results:
                message = result_to_proto(result, request_id=call.request_id)
                size += size_in_batch(message)
                if size > self.max_response_bytes:  # the estimate was low (unusually long texts): stop now
                    raise RequestTooLarge(f"the response passed the server's {self.max_response_bytes / 2**20:.0f} MiB limit "
                                   f"after {len(out.results)} of {len(texts)} texts; send fewer texts or a smaller k")
                out.results.append(message)
        self.answer_bytes.until_call_ends(size, call.context)
        self._count("requests", len(texts))
        return out

    @_rpc
    def Upsert(self, request_iterator, call: _Call) -> pb.UpsertResponse:
        with self.upsert_bytes.stream() as take, self._encoding_documents():  # StreamGuard bounds the open streams
            ids, texts = _read_upsert_stream(request_iterator, call, take)
            searcher = call.serving.searcher
            searcher.upsert(ids, texts, deadline=call.deadline, check=call.check, allow_empty=True,  # checked above
                            encode_slot=lambda stage: self._encode_slot(call, stage))
        call.fields.update(docs=len(ids))
        return pb.UpsertResponse(upserted=len(ids), index_version=searcher.index_version)

    @_rpc
    def Delete(self, request: pb.DeleteRequest, call: _Call) -> pb.DeleteResponse:
        ids = list(request.ids)
        if not ids:
            raise ValueError("ids is empty; name the documents to delete")
        searcher = call.serving.searcher
        not_found = list(searcher.delete(ids, deadline=call.deadline, check=call.check))
        call.fields.update(ids=len(ids), not_found=len(not_found))
        if len(not_found) == len(set(ids)):
            raise KeyError(f"none of the {len(set(ids))} ids is in the collection (first: {short_repr(not_found[0])})")
        return pb.DeleteResponse(deleted=len(set(ids)) - len(not_found), not_found=not_found,
                                 index_version=searcher.index_version)

    @_rpc
    def GetStats(self, request: pb.StatsRequest, call: _Call) -> pb.StatsResponse:
        searcher = call.serving.searcher
        stats = dict(searcher.stats())
        known = {f.name for f in pb.StatsResponse.DESCRIPTOR.fields}
        fields = {key: value for key, value in stats.items() if key in known and value is not None}
        fields.update({key: n for key, n in self.counters.items() if key in known},
                      index_version=searcher.index_version,
                      uptime_seconds=time.monotonic() - self.started, in_flight=self.in_flight - 1)
        response = pb.StatsResponse(**fields)
        for key, value in stats.items():
            if key not in known:
                response.details[key] = str(value)
        for name, batcher in (("sparse", call.serving.sparse_batcher), ("dense", call.serving.dense_batcher)):
            with self._lock:
                total = BatchStats(self._retired[name].batches + batcher.stats.batches,
                                   self._retired[name].texts + batcher.stats.texts)
            response.details[f"{name}_micro_batches"] = str(total.batches)
            response.details[f"{name}_mean_micro_batch"] = f"{total.mean_batch:.2f}"
        response.details["upsert_bytes_held"] = str(self.upsert_bytes.held)
        response.details["answer_bytes_held"] = str(self.answer_bytes.held)
        response.details["reloads"] = str(self.reloads)
        response.details["writes_past_deadline"] = str(self.counters["writes_past_deadline"])
        return response

    # ------------------------------------------------------------------------------- lifecycle
    def refuse_new(self) -> None:
        """Every call from now on but GetStats is UNAVAILABLE: the server is shutting down."""
        self._draining.set()

    def drain(self, timeout: float) -> bool:
        """Refuse new searches and wait up to ``timeout`` seconds for in-flight ones; True if none remain."""
        self.refuse_new()
        with self._idle:
            return self._idle.wait_for(lambda: self.in_flight == 0, timeout=timeout)

    # ------------------------------------------------------------------------------- helpers
    @contextlib.contextmanager
    def _tracked(self) -> Iterator["Serving"]:
        """Count the call as in flight (what the batchers' ``busy`` and the SIGTERM drain see) while it runs, and give
        it the searcher it uses throughout (held from retiring until it ends)."""
        with self._lock:
            self.in_flight += 1
            serving = self._serving
            serving.users += 1
        try:
            yield serving
        finally:
            with self._lock:
                self.in_flight -= 1
                serving.users -= 1
                self._idle.notify_all()

    @contextlib.contextmanager
    def _encode_slot(self, call: _Call, stage: str) -> Iterator[None]:
        """A document encode slot for an upsert's next documents: concurrent upserts encoded at once on their own
        threads (16 streams on 2 cores: seconds each, the server 1 GB larger, and a cancelled one ran on while
        holding its stream's slot). The caller is looked at while it waits, and once it holds one."""
        slots = self._document_slots
        while not slots.acquire(timeout=SLOT_LOOK_S):
            call.check(stage)
        try:
            call.check(stage)
            yield
        finally:
            slots.release()

    @contextlib.contextmanager
    def _encoding_documents(self) -> Iterator[None]:
        """Count an upsert in; the last one out gives the memory the encodes freed back (glibc kept it: 617 MB grew to
        1,787 MB over 2,048 upserted documents, and malloc_trim gave 800 MB back), at most every
        ``TRIM_AFTER_WRITES_S``, on a thread of its own."""
        with self._lock:
            self._upserts_encoding += 1
        try:
            yield
        finally:
            with self._lock:
                self._upserts_encoding -= 1
                due = self._upserts_encoding == 0 and time.monotonic() - self._trimmed_at >= TRIM_AFTER_WRITES_S
                if due:
                    self._trimmed_at = time.monotonic()
            if due:
                threading.Thread(target=_return_freed_memory, args=(False,), name="lsr-trim", daemon=True).start()

    def _check_response_size(self, n_texts: int, options: dict, searcher) -> None:
        """Refuse before any work a response that would pass the limit (k hits per text, maybe with texts)."""
        per_hit = _HIT_BYTES + (_EXPLAIN_BYTES if options["explain"] else 0)
        if options["include_text"]:
            per_hit += searcher.mean_text_bytes()
        estimate = n_texts * options["k"] * per_hit
        if estimate > self.max_response_bytes:
            raise RequestTooLarge(
                f"the response would be about {estimate / 2**20:,.0f} MiB ({n_texts} texts × k={options['k']}"
                f"{' with text' if options['include_text'] else ''}{' and explain' if options['explain'] else ''}), "
                f"over the server's {self.max_response_bytes / 2**20:.0f} MiB response limit; send fewer texts per "
                "request, a smaller k" + ("".join(f", or {o}=false" for o in ("include_text", "explain") if options[o])))

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    @staticmethod
    def _options(request, searcher) -> dict:
        mode = mode_from_proto(request.mode)
        return {
            "k": k_from_proto(request.k),
            "mode": mode,
            "hybrid": hybrid_from_proto(request.hybrid) if request.HasField("hybrid") else None,  # None: the collection's
            "prf": prf_from_proto(request.prf, searcher.default_prf),
            "include_text": request.include_text,
            "explain": request.explain,
            "bound_factor": request.bound_factor or 1.0,  # proto3's unset 0: exact
        }

    def _search_text(self, text: str, options: dict, call: _Call, serving: "Serving"):
        """Encode through the micro-batchers (deadline and cancellation honoured), then search."""
        legs = legs_of(options["mode"], serving.searcher.hybrid_or_default(options["hybrid"]))
        submitted = time.perf_counter()
        wanted = [batcher for batcher, needed in ((serving.dense_batcher, "dense" in legs),
                                                  (serving.sparse_batcher, "sparse" in legs)) if needed]
        # Submit every encoding before waiting on any, so a hybrid query's two encodings overlap; only
        # the last may run on this thread (when nothing else is in flight), after the other is queued.
        pending = {batcher: self._submit(batcher, text, call, inline=batcher is wanted[-1]) for batcher in wanted}
        sparse, dense = (self._wait(pending[b], call) if b in pending else None
                         for b in (serving.sparse_batcher, serving.dense_batcher))
        waited = time.perf_counter() - submitted
        encode = max((item[2] for item in (sparse, dense) if item is not None), default=0.0)
        call.check("search")
        result = serving.searcher.search_encoded(
            sparse and sparse[0], dense and dense[0], text=text, timings={"encode": encode},
            truncated=any(item[1] for item in (sparse, dense) if item is not None), deadline=call.deadline, **options,
        )
        result.timings["queue"] = max(0.0, waited - encode)
        return result

    @staticmethod
    def _submit(batcher: MicroBatcher, text: str, call: _Call, *, inline: bool) -> Future:
        future = batcher.submit(text, call.deadline, inline=inline)
        call.context.add_callback(future.cancel)  # the caller went away: drop it from the batch
        return future

    @staticmethod
    def _wait(future: Future, call: _Call):
        try:
            return future.result(timeout=call.remaining())
        except FutureTimeout:
            future.cancel()
            raise DeadlinePassed("deadline exceeded while waiting for the query encoder") from None
        except CancelledError:  # gRPC cancelled it when the call ended: deadline passed or caller left
            call.check("search")
            raise Abandoned("the call ended while its query was waiting for the encoder") from None

    def close(self) -> None:
        self._serving.close()


class Serving:
    """One searcher and its micro-batchers: what a request uses from start to end, so a reload (a new build swapped
    in) never encodes a query with one build's model and searches another's index. ``users``: requests in flight on
    it (the servicer's lock guards it)."""

    def __init__(self, searcher, batching: dict) -> None:
        self.searcher = searcher
        self.users = 0
        # An encoder without a model (inference-free: tokenize and look up weights) costs the same per
        # text in a batch as alone, so its texts are encoded on the handler thread, one by one, and
        # never wait behind forward passes for a slot.
        sparse_batching = (batching if getattr(searcher.query_encoder, "batch_gain", True)
                           else {**batching, "max_batch": 1, "slots": None})
        # Sparse and dense encoders batch separately, so a hybrid query's two encodings overlap. A padding-free
        # encoder (BERT models on CPU) encodes a gathered batch whole: splitting it by length only shrinks the
        # GEMMs (SciFact queries, c=32 HYBRID, three alternating runs: +5% QPS pooled, -4% to +15%).
        self.sparse_batcher = MicroBatcher(_sparse_encodings(searcher), **sparse_batching,
                                           split_by_length=_pads_batches(searcher.query_encoder))
        self.dense_batcher = MicroBatcher(_dense_encodings(searcher), **batching,
                                          split_by_length=_pads_batches(searcher.dense_encoder))

    def close(self) -> None:
        self.sparse_batcher.close()
        self.dense_batcher.close()


RETIRED_COLLECTIONS_S = (0.0, 1.0, 4.0, 10.0)  # pauses before each collection of a retired build's garbage


def _return_freed_memory(collect: bool = True) -> None:
    """glibc keeps what a retired build freed in its arenas: reloads that loaded their models anew (another SPLADE
    length) grew a server 614 to 990 MB over six, with no old encoder left alive; malloc_trim gives it back (555 to
    637 MB). Other C libraries lack it, and keep their own ways. ``collect``: collect Python's garbage cycles first
    (a retired build's; after writes there are none worth a full collection's pause)."""
    if collect:
        gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _pads_batches(encoder) -> bool:
    """An encoder that does not say (a custom one) is taken to pad its batches."""
    return getattr(encoder, "pads_batches", True)


def _sparse_encodings(searcher):
    """Batch → one (term id → weight dict, truncated, batch seconds) per text."""

    def encode(texts: list[str]) -> list:
        started = time.perf_counter()
        batch, info = searcher.encode_queries(texts)
        elapsed = time.perf_counter() - started
        return [(row_dict(batch, i), bool(cut), elapsed) for i, cut in enumerate(info.truncated)]

    return encode


def _dense_encodings(searcher):
    """Batch → one (vector, truncated, batch seconds) per text."""

    def encode(texts: list[str]) -> list:
        started = time.perf_counter()
        vectors, info = searcher.encode_dense(texts)
        elapsed = time.perf_counter() - started
        return [(vector, bool(cut), elapsed) for vector, cut in zip(vectors, info.truncated)]

    return encode


_ENDED_EARLY = ("the upsert stream ended early: the caller cancelled, or sent a message past the server's "
                "--max-message-mb, which gRPC refused with RESOURCE_EXHAUSTED")
REFUSAL_NOTICE_S = 0.5  # how long a stream with no message marked last waits to learn whether it was cut short


def _read_upsert_stream(messages, call: _Call, take: Callable[[int], None]) -> tuple[list[str], list[str]]:
    """The stream's ids and texts, checked as they arrive: bounded count and bytes (``take`` each document's from
    the server's budget for all streams), no repeats, no empty texts."""
    ids, texts, seen, size, whole = [], [], set(), 0, False
    for number, message in enumerate(_stream(messages, call)):
        message = decoded(message)
        call.check("reading the upsert stream")
        if whole:
            raise ValueError(f"message {number} of the upsert stream follows the one marked last; set last on the "
                             "final message only")
        whole = message.last
        if not message.documents and not whole:  # free against every limit: a trickle of them held a slot for good
            raise ValueError(f"message {number} of the upsert stream holds no documents; send some in each message "
                             "(only the one marked last may hold none)")
        for doc in message.documents:
            where = f"document {len(ids)} of the stream"
            problem = id_problem(doc.id)
            if problem is not None:
                raise ValueError(f"{where}: its id {short_repr(doc.id)} {problem}")
            if doc.id in seen:
                raise ValueError(f"{where} repeats id {doc.id!r}; send each id once")
            if not message.allow_empty_documents and is_blank(doc.text):
                raise ValueError(f"{where} ({doc.id!r}) has empty, whitespace or NUL-only text; "
                                 "set allow_empty_documents to store it anyway")
            doc_bytes = doc.ByteSize()  # UTF-8 bytes: len() counted characters, a quarter of an emoji text's
            size += doc_bytes
            if len(ids) + 1 > MAX_UPSERT_DOCS or size > MAX_UPSERT_BYTES:
                raise RequestTooLarge(f"the upsert stream passed the server's limit of {MAX_UPSERT_DOCS:,} documents or "
                               f"{MAX_UPSERT_BYTES / 2**20:.0f} MiB at {where}; split it into several upserts")
            take(doc_bytes)
            seen.add(doc.id)
            ids.append(doc.id)
            texts.append(doc.text)
    if not whole and _cancelled_within(call.context, REFUSAL_NOTICE_S):
        raise _cut_short(call, "while the server waited to learn whether the upsert stream, with no message marked "
                               "last, was whole")
    if not ids:
        raise ValueError("the upsert stream held no documents")
    return ids, texts


def _cancelled_within(context: grpc.ServicerContext, seconds: float) -> bool:
    """Whether the call turns out cancelled within ``seconds``: gRPC ends a stream cut short (a cancel, a message
    past --max-message-mb) as if the client had closed it, and may mark the call cancelled only a moment later; a
    cut stream written anyway stored what its caller was told failed."""
    until = time.monotonic() + seconds
    while context.is_active():
        if time.monotonic() >= until:
            return False
        time.sleep(0.005)
    return True


def _stream(messages, call: _Call) -> Iterator:
    """A client stream's messages; one that ends early (gRPC raises RpcError from the read) is DEADLINE_EXCEEDED where
    the deadline passed, else CANCELLED, not an internal error with a traceback. gRPC itself refused a message past
    --max-message-mb (the caller got RESOURCE_EXHAUSTED), which looks the same here, so the log names both."""
    messages = iter(messages)
    while True:
        try:
            yield next(messages)
        except StopIteration:
            return
        except grpc.RpcError:
            raise _cut_short(call, "before reading the upsert stream") from None


def _cut_short(call: _Call, when: str) -> Exception:
    """What ended an upsert stream early: its deadline, or else its caller (a cancel, or a refused message)."""
    return DeadlinePassed(f"deadline exceeded {when}") if call.expired() else Abandoned(_ENDED_EARLY)


def _query_of(request: pb.SearchRequest):
    """(text, sparse, dense) with proto3's empty values read as 'not given'; the Searcher checks the combination."""
    text = request.text if request.text else None
    sparse = dict(request.sparse) if request.sparse else None
    dense = np.asarray(request.dense, dtype=np.float32) if request.dense else None
    return text, sparse, dense


def _timings_ms(response: pb.SearchResponse) -> dict[str, float]:
    timings = response.timings
    return {name: getattr(timings, name) for name in TIMING_FIELDS}
