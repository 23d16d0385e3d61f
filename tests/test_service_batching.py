"""MicroBatcher: concurrent texts share an encode call, answers reach the right caller, and work
for callers that gave up (deadline passed, cancelled) never reaches the encoder."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lsr.service.batching import DeadlinePassed, MicroBatcher, similar_lengths


class GatedEncoder:
    """Records each call's texts; the first call waits until released, so later submissions queue up."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, texts: list[str]) -> list[str]:
        self.calls.append(list(texts))
        self.entered.set()
        self.release.wait(30)
        return [t.upper() for t in texts]


def test_queued_texts_are_encoded_together_and_answered_in_place():
    encoder = GatedEncoder()
    batcher = MicroBatcher(encoder, window=0.05, max_batch=64)
    try:
        first = batcher.submit("first query")
        assert encoder.entered.wait(30)
        texts = [f"query number {i:02d}" for i in range(10)]
        futures = [batcher.submit(t) for t in texts]
        encoder.release.set()
        assert first.result(30) == "FIRST QUERY"
        assert [f.result(30) for f in futures] == [t.upper() for t in texts]
        assert encoder.calls[1] == sorted(texts, key=len)  # all ten queued texts went in one call
        assert batcher.stats.texts == 11 and batcher.stats.batches == 2
    finally:
        encoder.release.set()
        batcher.close()


@pytest.mark.parametrize("split_by_length", [True, False])
def test_a_padding_free_encoder_gets_the_whole_batch_in_one_call(split_by_length):
    """Texts of very different lengths queue behind a busy encoder: an encoder that pads its batches gets groups of
    similar length, a padding-free one (``pads_batches`` False) all of them at once."""
    encoder = GatedEncoder()
    batcher = MicroBatcher(encoder, window=0.05, max_batch=64, split_by_length=split_by_length)
    try:
        batcher.submit("first query")
        assert encoder.entered.wait(30)
        texts = ["aspirin", "statins", "x" * 120, "y" * 130]
        futures = [batcher.submit(t) for t in texts]
        encoder.release.set()
        assert [f.result(30) for f in futures] == [t.upper() for t in texts]
        want = [texts] if not split_by_length else [texts[:2], texts[2:]]
        assert encoder.calls[1:] == want
    finally:
        encoder.release.set()
        batcher.close()


def test_expired_and_cancelled_requests_are_never_encoded():
    encoder = GatedEncoder()
    batcher = MicroBatcher(encoder, window=0.0, max_batch=64)
    try:
        batcher.submit("blocker")
        assert encoder.entered.wait(30)
        expired = batcher.submit("too late", deadline=time.monotonic() - 1.0)
        cancelled = batcher.submit("gone away")
        assert cancelled.cancel()
        assert batcher.stats.dropped == 1  # it left the queue at once, while the encoder is still busy
        alive = batcher.submit("still wanted")
        encoder.release.set()
        assert alive.result(30) == "STILL WANTED"
        with pytest.raises(DeadlinePassed):
            expired.result(30)
        assert cancelled.cancelled()
        encoded = [t for call in encoder.calls for t in call]
        assert "too late" not in encoded and "gone away" not in encoded
        assert batcher.stats.dropped == 2
    finally:
        encoder.release.set()
        batcher.close()


def test_workers_gathering_a_batch_wake_within_their_window_under_contention():
    """The waits end at deadlines the workers own: 2 workers polling while 12 threads submit never stall."""
    batcher = MicroBatcher(lambda texts: [len(t) for t in texts], window=0.002, max_batch=64, workers=2,
                           busy=lambda: 64)
    try:
        def client(n: int) -> float:
            slowest = 0.0
            for i in range(100):
                started = time.monotonic()
                assert batcher.submit(f"text {n} {i}").result(30) == len(f"text {n} {i}")
                slowest = max(slowest, time.monotonic() - started)
            return slowest

        with ThreadPoolExecutor(12) as pool:
            slowest = max(pool.map(client, range(12)))
        assert slowest < 5.0, f"a request waited {slowest:.1f} s for a 2 ms batch window"
    finally:
        batcher.close()


def test_encoder_errors_reach_every_waiter_of_the_batch():
    def failing(texts):
        raise RuntimeError("model exploded")

    batcher = MicroBatcher(failing, window=0.0, max_batch=8)
    try:
        with pytest.raises(RuntimeError, match="model exploded"):
            batcher.submit("x").result(30)
    finally:
        batcher.close()


def test_max_batch_one_encodes_inline_one_by_one():
    encoder = GatedEncoder()
    encoder.release.set()
    batcher = MicroBatcher(encoder, max_batch=1)
    assert not batcher.batching
    assert [batcher.submit(t).result(0) for t in ("a", "b")] == ["A", "B"]
    assert encoder.calls == [["a"], ["b"]]


def test_lone_request_does_not_wait_for_the_window():
    encoder = GatedEncoder()
    encoder.release.set()
    batcher = MicroBatcher(encoder, window=30.0, max_batch=64, busy=lambda: 1)
    try:
        assert batcher.submit("alone").result(10) == "ALONE"  # would time out if it sat out the 30 s window
    finally:
        batcher.close()


def test_inline_encodes_a_lone_request_on_the_calling_thread():
    threads: list[threading.Thread] = []

    def encode(texts: list[str]) -> list[str]:
        threads.append(threading.current_thread())
        return [t.upper() for t in texts]

    batcher = MicroBatcher(encode, window=30.0, max_batch=64, busy=lambda: 1)
    try:
        future = batcher.submit("alone", inline=True)
        assert future.done() and future.result() == "ALONE"
        assert threads == [threading.current_thread()]
        assert batcher.stats.batches == 1
    finally:
        batcher.close()


def test_inline_queues_instead_when_others_are_in_flight_or_the_encoder_is_busy():
    """Concurrent requests still batch, and an inline request never waits for (or deadlocks on) a busy encoder."""
    encoder = GatedEncoder()
    in_flight = [2]
    batcher = MicroBatcher(encoder, window=0.0, max_batch=64, busy=lambda: in_flight[0])
    try:
        blocker = batcher.submit("blocker", inline=True)  # another request in flight: goes to a worker
        assert encoder.entered.wait(30)  # the worker now holds the encoder
        in_flight[0] = 1
        lone = batcher.submit("lone", inline=True)  # returns at once: queued, not waiting for a slot
        assert not lone.done()
        encoder.release.set()
        assert blocker.result(30) == "BLOCKER" and lone.result(30) == "LONE"
        assert encoder.calls == [["blocker"], ["lone"]]
    finally:
        encoder.release.set()
        batcher.close()


def test_similar_lengths_partitions_by_length():
    texts = ["short", "tiny", "a medium length query", "another medium query!", "x" * 200, "", "y" * 190]
    groups = similar_lengths(texts, ratio=1.3)
    assert sorted(i for g in groups for i in g) == list(range(len(texts)))
    for group in groups:
        lengths = [len(texts[i]) for i in group]
        assert max(lengths) <= 1.3 * min(lengths) + 8
    assert len(groups) == 3
    pair = ["q" * 10, "q" * 25]
    assert similar_lengths(pair, ratio=1.3) == [[0], [1]]
    assert similar_lengths(pair) == [[0, 1]]  # the default batches moderately different lengths together

class ConcurrencyProbe:
    """An encoder that records how many of its calls (across every batcher using it) overlap at most."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def __call__(self, texts: list[str]) -> list[str]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.01)
        with self.lock:
            self.running -= 1
        return [t.upper() for t in texts]


def submit_from_threads(batchers: list[MicroBatcher], count: int) -> list[str]:
    results: list[str] = [""] * count

    def one(i: int) -> None:
        results[i] = batchers[i % len(batchers)].submit(f"q{i}").result(30)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_batchers_sharing_slots_never_run_more_encodes_than_slots():
    probe = ConcurrencyProbe()
    slots = threading.Semaphore(2)
    batchers = [MicroBatcher(probe, window=0.0, max_batch=2, workers=3, slots=slots) for _ in range(2)]
    try:
        assert submit_from_threads(batchers, 24) == [f"Q{i}" for i in range(24)]
    finally:
        for batcher in batchers:
            batcher.close()
    assert probe.most == 2  # six workers, two slots: encodes overlap, never beyond the slots


def test_one_by_one_encodes_run_at_most_workers_at_once():
    probe = ConcurrencyProbe()
    batcher = MicroBatcher(probe, max_batch=1, workers=3)
    assert submit_from_threads([batcher], 16) == [f"Q{i}" for i in range(16)]
    assert probe.most == 3
