"""Micro-batching of concurrent query encodings.

One forward pass over 32 short queries costs far less than 32 passes over one, so under load
the server gathers the texts of concurrent requests for at most ``window`` seconds (or until
``max_batch`` texts wait) and encodes them in a single call. It only waits while more requests
are in flight than the batch holds (``busy``), so a lone request is never delayed. Requests
whose caller went away leave the queue at once; those whose deadline passed while queued are
dropped before the batch is encoded, so abandoned work never reaches the model. A caller that is the only request in flight may
be encoded on its own thread instead (``submit(..., inline=True)``), skipping the hand-off. The
encoders are thread-safe (``lsr.encode.splade.token_ids``), so several workers encode batches at once.

Workers wait on a Condition with deadlines they compute themselves and re-check after every
wake-up: ``queue.SimpleQueue.get(timeout=...)`` was seen to sleep for seconds past its timeout on
Python 3.11 while another thread waited on the same queue, holding an encode slot meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

EncodeFn = Callable[[list[str]], list]  # texts → one encoded item per text, in order
_POLL = 0.0005  # while waiting for a batch to fill, how often ``busy`` is asked again
# Longest / shortest text within one encoded group: splitting a batch costs more than its padding
# until lengths differ a lot (SciFact queries, c=32: ratio 1.3 made groups of ~4 and 1.28x the QPS
# of one-by-one encoding; 3.0 gave 1.82x, no split at all 1.89x) ...
_LENGTH_RATIO = 3.0
_LENGTH_SLACK = 8  # ... plus this many characters, so very short texts are not split needlessly


class DeadlinePassed(Exception):
    """The request's deadline passed: waiting for an encoding batch (never encoded) or on shards (the message says)."""


@dataclass(eq=False)  # identity: the queue removes this very request when its caller leaves
class _Pending:
    text: str
    deadline: float | None  # time.monotonic() value
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    batches: int = 0
    texts: int = 0
    dropped: int = 0  # requests abandoned before their batch was encoded

    @property
    def mean_batch(self) -> float:
        return self.texts / self.batches if self.batches else 0.0


_EMPTY = object()  # what ``_Queue.get`` returns when its deadline passed with nothing queued


class _Queue:
    """FIFO of pending requests (and close markers) whose waits end at deadlines the caller owns."""

    def __init__(self) -> None:
        self._items: deque = deque()
        self._cond = threading.Condition()

    def put(self, item) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()

    def get(self, until: float | None = None):
        """The oldest item; waits until ``until`` (time.monotonic()) at most, then ``_EMPTY``; None: forever."""
        with self._cond:
            while not self._items:
                if until is None:
                    self._cond.wait()
                    continue
                left = until - time.monotonic()
                if left <= 0:
                    return _EMPTY
                self._cond.wait(left)
            return self._items.popleft()

    def discard(self, item) -> bool:
        """Remove ``item`` if it is still queued; True if it was."""
        with self._cond:
            try:
                self._items.remove(item)
            except ValueError:
                return False
            return True


class MicroBatcher:
    """Submit a text, get a Future of its encoding; with ``max_batch <= 1`` each text encodes alone, inline.

    A worker that receives the close marker exits; ``close`` sends one per worker.
    ``split_by_length``: encode a gathered batch in groups of similar length (``similar_lengths``), for
    encoders that pad a batch to its longest text; False encodes it whole (the encoder's ``pads_batches``).
    """

    def __init__(
        self,
        encode: EncodeFn,
        *,
        window: float = 0.002,
        max_batch: int = 64,
        busy: Callable[[], int] | None = None,
        workers: int = 1,
        slots: threading.Semaphore | None = None,
        split_by_length: bool = True,
    ) -> None:
        if window < 0:
            raise ValueError(f"batch window must be ≥ 0 seconds, got {window}")
        self._encode = encode
        self._busy = busy or (lambda: self.max_batch)
        self.window = window
        self.max_batch = max(1, int(max_batch))
        self.split_by_length = split_by_length
        self.stats = BatchStats()
        self._queue = _Queue()
        self._stats_lock = threading.Lock()
        # Several workers: while one encodes a batch the next one fills, and each can use a core.
        self._workers = [
            threading.Thread(target=self._run, name=f"lsr-microbatch-{i}", daemon=True)
            for i in range(max(1, workers) if self.max_batch > 1 else 0)
        ]
        for worker in self._workers:
            worker.start()
        # Encodes running at once, across every batcher that shares ``slots``. Without batching,
        # texts encode on their callers' threads, and 32 concurrent forward passes on 2 cores took
        # 1.5x the CPU per text of 2 at a time; with batching, a worker takes a slot before it
        # gathers, so all that queued while the cores were busy forms one batch.
        self._slots = slots if slots is not None else threading.Semaphore(max(1, workers))

    @property
    def batching(self) -> bool:
        return bool(self._workers)

    def submit(self, text: str, deadline: float | None = None, *, inline: bool = False) -> Future:
        """Queue one text; cancel the returned Future to withdraw it before it is encoded.

        ``inline``: if no other request is in flight and a core is free, encode on the calling thread
        instead. A lone request gains nothing from a batch, and the hand-off to a worker and back
        costs two thread wake-ups on every call.
        """
        pending = _Pending(text, deadline)
        if not self._workers:
            with self._slots:
                self._process([pending])
        elif not (inline and self._encode_if_idle(pending)):
            pending.future.add_done_callback(lambda future: self._withdraw(pending) if future.cancelled() else None)
            self._queue.put(pending)
        return pending.future

    def _withdraw(self, pending: _Pending) -> None:
        """A cancelled request leaves the queue now, not when a batch would have reached it."""
        if self._queue.discard(pending):
            self._count(dropped=1)

    def close(self) -> None:
        """Encode what is queued, then stop the worker."""
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join()
        self._workers = []

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            with self._slots:
                if self._collect_and_process(first):
                    return

    def _collect_and_process(self, first: _Pending) -> bool:
        """Gather a batch behind ``first`` and encode it; True if the close marker came meanwhile.

        The caller holds an encode slot, so everything that queued while the cores were busy joins.
        """
        batch = [first]
        closing = False
        until = time.monotonic() + self.window
        while len(batch) < self.max_batch:
            item = self._queue.get(until=0.0)  # whatever queued while the cores were busy joins without waiting
            if item is _EMPTY:
                now = time.monotonic()
                if now >= until or len(batch) >= self._busy():
                    break
                item = self._queue.get(until=min(until, now + _POLL))
                if item is _EMPTY:
                    continue
            if item is None:
                closing = True
                break
            batch.append(item)
        self._process(batch)
        return closing

    def _encode_if_idle(self, pending: _Pending) -> bool:
        """Encode ``pending`` here if no other request is in flight and a slot is free; False: queue it.

        The slot is only tried, never waited for, and the workers take every queued text, so an
        inline encode can neither deadlock nor strand a queued request.
        """
        if self._busy() > 1 or not self._slots.acquire(blocking=False):
            return False
        try:
            live = self._live([pending])
            if live:
                self._encode_group(live)
        finally:
            self._slots.release()
        return True

    def _process(self, batch: list[_Pending]) -> None:
        live = self._live(batch)
        if not self.split_by_length:
            if live:
                self._encode_group(live)
            return
        for group in similar_lengths([item.text for item in live]):
            self._encode_group([live[i] for i in group])

    def _live(self, batch: list[_Pending]) -> list[_Pending]:
        """The items still wanted; cancelled ones are dropped and expired ones failed, unencoded."""
        now = time.monotonic()
        live = []
        for item in batch:
            if not item.future.set_running_or_notify_cancel():
                self._count(dropped=1)
            elif item.deadline is not None and now >= item.deadline:
                self._count(dropped=1)
                item.future.set_exception(DeadlinePassed("deadline passed while waiting to be encoded"))
            else:
                live.append(item)
        return live

    def _encode_group(self, members: list[_Pending]) -> None:
        """One encode call for ``members``, answering each."""
        try:
            encoded = self._encode([item.text for item in members])
        except BaseException as exc:  # noqa: BLE001 - every waiter must learn of the failure
            for item in members:
                item.future.set_exception(exc)
            return
        self._count(batches=1, texts=len(members))
        for item, result in zip(members, encoded):
            item.future.set_result(result)

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            for name, n in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + n)


def similar_lengths(texts: list[str], ratio: float = _LENGTH_RATIO) -> list[list[int]]:
    """Indices grouped so a group's longest text is at most ``ratio`` × its shortest.

    A batch is padded to its longest member and SPLADE's vocabulary pooling costs the same for a
    pad as for a token, so one batch of mixed lengths can cost more than encoding one by one;
    groups of similar length keep the batching gain. Character length stands in for token count.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    groups: list[list[int]] = []
    for i in order:
        if groups and len(texts[i]) <= ratio * len(texts[groups[-1][0]]) + _LENGTH_SLACK:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
