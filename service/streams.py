"""Client streams (Upsert, reflection) may not hold the server's handler threads.

gRPC's sync server gives each call a handler thread for its whole life, and a call whose client streams holds it
while the client thinks, stalls or forgets to close: 64 idle reflection streams took every thread, health checks'
too. ``StreamGuard`` lets at most a quarter of the threads serve client streams (one more is refused at once with
RESOURCE_EXHAUSTED, to retry) and cancels a stream while the server waits on it when its client has sent nothing for
``idle_seconds``, or when it has been open for ``max_seconds``: a client trickling one small message just inside
the idle limit held a slot for as long as it liked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

log = logging.getLogger("lsr.service")


class _Waiting:
    """A stream's request iterator that notes since when the handler has been waiting for the client's next message."""

    def __init__(self, messages, context: grpc.ServicerContext, method: str) -> None:
        self.messages = iter(messages)
        self.context = context
        self.method = method
        self.opened = time.monotonic()
        self.since: float | None = None  # monotonic time the wait began; None while the server works

    def __iter__(self) -> "_Waiting":
        return self

    def __next__(self):
        self.since = time.monotonic()
        try:
            return next(self.messages)
        finally:
            self.since = None


class StreamGuard(grpc.ServerInterceptor):
    """At most ``slots`` client-streaming calls at once, each cancelled after ``idle_seconds`` without a message or
    ``max_seconds`` open, whichever comes first."""

    def __init__(self, slots: int, idle_seconds: float, workers: int, max_seconds: float) -> None:
        self.slots = slots
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.workers = workers
        self._free = threading.BoundedSemaphore(slots)
        self._open: set[_Waiting] = set()
        self._lock = threading.Lock()
        self._watchdog: threading.Thread | None = None

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not handler.request_streaming:
            return handler
        method = details.method
        if handler.response_streaming:
            behaviour = handler.stream_stream

            def guarded(messages, context):
                with self._holding(messages, context, method) as waiting:
                    yield from behaviour(waiting, context)

            kind = grpc.stream_stream_rpc_method_handler
        else:
            behaviour = handler.stream_unary

            def guarded(messages, context):
                with self._holding(messages, context, method) as waiting:
                    return behaviour(waiting, context)

            kind = grpc.stream_unary_rpc_method_handler
        return kind(guarded, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    @contextmanager
    def _holding(self, messages, context: grpc.ServicerContext, method: str) -> Iterator[_Waiting]:
        if not self._free.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{self.slots} client streams (upserts, reflection) are open, the server's limit (a quarter "
                          f"of its {self.workers} --workers, so that searches and health checks keep threads); "
                          "retry shortly")
        waiting = _Waiting(messages, context, method)
        with self._lock:
            self._open.add(waiting)
            if self._watchdog is None:
                self._watchdog = threading.Thread(target=self._watch, name="lsr-stream-watchdog", daemon=True)
                self._watchdog.start()
        try:
            yield waiting
        finally:
            with self._lock:
                self._release(waiting)

    def _release(self, waiting: _Waiting) -> None:
        """Free ``waiting``'s slot once (the watchdog frees it before cancelling, the handler when it ends); holds
        the lock."""
        if waiting in self._open:
            self._open.discard(waiting)
            self._free.release()

    def _expired(self, waiting: _Waiting, now: float) -> str | None:
        """Why ``waiting`` is to be cancelled now ("idle" or "too_long"), or None; never while the server works on it."""
        if waiting.since is None:
            return None
        if now - waiting.since > self.idle_seconds:
            return "idle"
        return "too_long" if now - waiting.opened > self.max_seconds else None

    def _watch(self) -> None:
        """Cancel the streams waited on too long; ends when none is open (the next one starts it again)."""
        tick = min(1.0, self.idle_seconds / 4, self.max_seconds / 4)
        while True:
            time.sleep(tick)
            now = time.monotonic()
            with self._lock:
                if not self._open:
                    self._watchdog = None
                    return
                expired = [(w, why) for w in self._open if (why := self._expired(w, now)) is not None]
                for waiting, _ in expired:  # free before cancelling: a client told CANCELLED may retry at once
                    self._release(waiting)
            for waiting, why in expired:
                seconds = self.idle_seconds if why == "idle" else self.max_seconds
                log.warning("event=stream_%s_cancelled method=%s seconds=%g", why, waiting.method, seconds)
                waiting.context.cancel()  # the blocked read raises, and the handler thread ends
