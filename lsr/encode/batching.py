"""Bulk encoding as a pipeline: token-budget batches, tokenised ahead of the device, results in bulk.

Why: a loop that tokenises, pads, runs and converts one batch at a time leaves the device idle while
Python works, and the CPU idle while the device does. Here

- texts are tokenised in windows by a background thread, which also sorts each window longest first,
  cuts it into batches by a token budget (rows x padded length, not a document count: short texts get
  big batches, long ones small) and pads them (pinned host memory on CUDA);
- on CUDA the main thread copies each batch with ``non_blocking=True`` and runs it while the next one
  is being prepared; the encoder reduces its output on the device and copies it back once;
- on CPU, batches go to worker threads with one torch thread each (``lsr.encode.cpu_threads`` says
  why: no barrier to stall on when another process takes a core), and a batch computed in the caller's
  thread (one text, one batch) runs on one torch thread too, so a text's vector is the same bits either way.

Every batch is independent, so results are those of the one-by-one loop, in any completion order;
each carries the positions of its texts.
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from lsr.encode.cpu_threads import encode_workers, on_one_thread, start_single_threaded

# Padded lengths on CUDA are multiples of 16: the fused pooling kernel then compiles one variant per
# length bucket (Triton specialises integer arguments on divisibility by 16), and tensor cores want it.
CUDA_PAD_MULTIPLE = 16
# The first window is two batches' worth, so the device starts early; later ones grow to this many
# batches, so sorting by length still keeps padding low. On CUDA the queue holds a whole window of ready
# batches, so the device does not wait while the tokenising thread reads the next window.
MAX_WINDOW_BATCHES = 16
_POLL_SECONDS = 0.1


def pad_multiple(device: torch.device) -> int:
    """What padded lengths are rounded up to on this device."""
    return CUDA_PAD_MULTIPLE if device.type == "cuda" else 1


def padded_width(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def budget_batches(lengths: np.ndarray, max_tokens: int, multiple: int = 1) -> list[np.ndarray]:
    """Positions sorted longest first, cut so that rows x padded length stays within ``max_tokens``.

    A text longer than the budget still gets a batch of its own.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        width = padded_width(max(int(lengths[order[start]]), 1), multiple)
        take = max(1, max_tokens // width)
        batches.append(order[start : start + take])
        start += take
    return batches


def right_pad(rows: Sequence[Sequence[int]], pad_id: int, multiple: int = 1,
              positions: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) int64 [rows, width], width the longest row rounded up to ``multiple`` but not
    past the model's ``positions`` (a BERT with 40 of them, a full-length text padded to 48 on CUDA: a device-side
    assert)."""
    lengths = np.fromiter(map(len, rows), np.int64, len(rows))
    longest = int(lengths.max(initial=1))
    width = padded_width(longest, multiple) if positions is None else min(padded_width(longest, multiple),
                                                                          max(positions, longest))
    keep = np.arange(width) < lengths[:, None]
    ids = np.full((len(rows), width), pad_id, np.int64)
    ids[keep] = np.fromiter(itertools.chain.from_iterable(rows), np.int64, int(lengths.sum()))
    return torch.from_numpy(ids), torch.from_numpy(keep.astype(np.int64))


@dataclass(frozen=True)
class Pipeline:
    """How one encode call batches: the device, the token budget per batch and the padding multiple."""

    device: torch.device
    max_tokens: int
    batch_size: int  # the nominal batch, for window sizes

    def windows(self, count: int) -> list[tuple[int, int]]:
        """[start, stop) slices of the texts, growing from 2 to MAX_WINDOW_BATCHES batches' worth."""
        out, start, batches = [], 0, 2
        while start < count:
            stop = min(count, start + batches * self.batch_size)
            out.append((start, stop))
            start, batches = stop, min(2 * batches, MAX_WINDOW_BATCHES)
        return out

    def run(
        self,
        count: int,
        tokenize: Callable[[int, int], list[list[int]]],
        prepare: Callable[[list[list[int]]], tuple[torch.Tensor, ...]],
        compute: Callable[..., Any],
    ) -> Iterator[tuple[np.ndarray, Any]]:
        """Yield (positions, ``compute(*device tensors)``) for every batch of texts 0..count-1.

        ``tokenize(start, stop)`` returns the token rows of texts start..stop-1 (it runs on the
        background thread); ``prepare(rows)`` pads rows into host tensors.
        """
        windows = self.windows(count)
        workers = 1 if self.device.type == "cuda" else encode_workers()
        if self.device.type == "cpu":
            compute = on_one_thread(compute)
        if count <= 1 or (workers == 1 and len(windows) == 1 and count <= self.batch_size):
            yield from self._run_inline(windows, tokenize, prepare, compute)  # one batch: no thread is worth starting
            return
        todo: queue.Queue = queue.Queue(maxsize=MAX_WINDOW_BATCHES if self.device.type == "cuda" else 2 * workers + 2)
        stop = threading.Event()
        producer = threading.Thread(
            target=self._produce, args=(windows, tokenize, prepare, todo, stop, workers), name="lsr-tokenize",
            daemon=True,
        )
        producer.start()
        try:
            if workers == 1:
                yield from self._consume_here(todo, stop, compute)
            else:
                yield from self._consume_on_workers(todo, stop, compute, workers)
        finally:
            stop.set()
            producer.join()

    # ------------------------------------------------------------------ internals
    def _batches(self, windows, tokenize, prepare, workers: int = 1
                 ) -> Iterator[tuple[np.ndarray, tuple[torch.Tensor, ...]]]:
        """Each window's batches; on CPU the budget shrinks until every worker has a batch of the window."""
        for start, stop in windows:
            rows = tokenize(start, stop)
            lengths = np.fromiter(map(len, rows), np.int64, len(rows))
            budget = min(self.max_tokens, -(-int(lengths.sum()) // workers))
            for part in budget_batches(lengths, budget, pad_multiple(self.device)):
                tensors = prepare([rows[i] for i in part])
                if self.device.type == "cuda":
                    tensors = _each_once(tensors, torch.Tensor.pin_memory)
                yield start + part, tensors

    def _to_device(self, tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return _each_once(tensors, lambda t: t.to(self.device, non_blocking=True))

    def _run_inline(self, windows, tokenize, prepare, compute):
        for positions, tensors in self._batches(windows, tokenize, prepare):
            yield positions, compute(*self._to_device(tensors))

    def _produce(self, windows, tokenize, prepare, todo: queue.Queue, stop: threading.Event, consumers: int) -> None:
        try:
            for item in self._batches(windows, tokenize, prepare, consumers):
                if not _put(todo, item, stop):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it in the caller's thread
            _put(todo, _Failure(exc), stop)
            return
        for _ in range(consumers):
            _put(todo, None, stop)

    def _consume_here(self, todo: queue.Queue, stop: threading.Event, compute):
        while (item := _get(todo, stop)) is not None:
            _raise_failure(item)
            positions, tensors = item
            yield positions, compute(*self._to_device(tensors))

    def _consume_on_workers(self, todo: queue.Queue, stop: threading.Event, compute, workers: int):
        done: queue.SimpleQueue = queue.SimpleQueue()

        def work() -> None:
            try:
                while (item := _get(todo, stop)) is not None:
                    _raise_failure(item)
                    positions, tensors = item
                    done.put((positions, compute(*tensors)))
            except BaseException as exc:
                stop.set()
                done.put(_Failure(exc))
            done.put(None)

        threads = start_single_threaded(work, workers)
        try:
            finished = 0
            while finished < workers:
                item = done.get()
                if item is None:
                    finished += 1
                    continue
                _raise_failure(item)
                yield item
        finally:
            stop.set()
            for thread in threads:
                thread.join()


def _each_once(tensors: tuple[torch.Tensor, ...], convert: Callable[[torch.Tensor], torch.Tensor]
               ) -> tuple[torch.Tensor, ...]:
    """``convert`` applied to each distinct tensor once: a SPLADE batch gives one mask as both its attention and its
    pool mask, which is then pinned and copied to the device once, and stays one tensor."""
    done: dict[int, torch.Tensor] = {}
    for tensor in tensors:
        if id(tensor) not in done:
            done[id(tensor)] = convert(tensor)
    return tuple(done[id(tensor)] for tensor in tensors)


@dataclass(frozen=True)
class _Failure:
    error: BaseException


def _raise_failure(item: Any) -> None:
    if isinstance(item, _Failure):
        raise item.error


def _put(todo: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless the consumers have stopped; False if they have."""
    while not stop.is_set():
        try:
            todo.put(item, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def _get(todo: queue.Queue, stop: threading.Event) -> Any:
    """The next item, or None once the run is stopping."""
    while not stop.is_set():
        try:
            return todo.get(timeout=_POLL_SECONDS)
        except queue.Empty:
            continue
    return None


def scatter_csr(count: int, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR of ``count`` rows from per-batch (positions, row counts, columns, values), batches in any order."""
    if not parts:
        return np.zeros(count + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)
    positions, counts, columns, values = (np.concatenate(p) for p in zip(*parts))
    per_row = np.zeros(count, np.int64)
    per_row[positions] = counts
    indptr = np.zeros(count + 1, np.int64)
    np.cumsum(per_row, out=indptr[1:])
    source_start = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=source_start[1:])
    target = np.repeat(indptr[positions] - source_start, counts) + np.arange(len(columns))
    indices = np.empty(len(columns), np.int32)
    weights = np.empty(len(columns), np.float32)
    indices[target] = columns
    weights[target] = values
    return indptr, indices, weights
