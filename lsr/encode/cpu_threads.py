"""How many CPU threads encoding may use, and worker threads that each run one torch intra-op thread.

Why workers: a bulk CPU encode used to run each batch with every torch thread, through thousands of
short intra-op parallel regions (the int8 screen runs several per vocabulary chunk, the transformer
several per layer). Each region splits its work evenly and ends in a barrier, so when another
process holds one of the two cores, every region waits for the descheduled thread's share (and its
time slice): on 2 cores with one busy-loop, 128 SciFact documents fell from 117 to 40 docs/s, the
pooling phase 3x slower than on one thread alone. One intra-op thread per worker, each worker taking
whole batches from a shared queue, has no barrier to wait at: a slowed worker only finishes fewer
batches (85 docs/s in the same setting, and no slower on a quiet machine).

Every CPU batch runs on one intra-op thread, a lone text too (``on_one_thread``): MKL multiplies a few rows
(5 to 11 here, a short query's tokens) differently on two threads, so a lone query's vector moved by ~2e-6 from
the one the same query gets inside a batch, and a served query's hits hung on whether it had company.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

import torch

from lsr.encode.cpu_share import usable_cpus
from lsr.kernels.threads import one_intra_op_thread

T = TypeVar("T")


OVERSUBSCRIBE = 4  # threads per usable CPU at most: past that, threads only take turns


def set_threads(threads: int | None) -> int:
    """Apply ``--threads``: that many torch threads, or every usable CPU when None. Returns the count.

    torch's own default counts the machine's cores even when the process may use fewer of them.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be ≥ 1, got {threads}")
    cpus = usable_cpus()
    if threads is not None and threads > OVERSUBSCRIBE * cpus:  # 100,000 crashed OpenBLAS (segfault, exit 139)
        raise ValueError(f"--threads {threads} is more than {OVERSUBSCRIBE} x the {cpus} CPUs this process may use")
    count = threads or cpus
    torch.set_num_threads(count)
    return count


def encode_workers() -> int:
    """Worker threads for a bulk CPU encode: the caller's torch thread count, at most the usable CPUs."""
    return max(1, min(torch.get_num_threads(), usable_cpus()))


def start_single_threaded(target: Callable[[], None], count: int) -> list[threading.Thread]:
    """Start ``count`` daemon threads running ``target``, each with one torch intra-op thread.

    torch keeps the intra-op count per thread (OpenMP's per-thread setting), but ``set_num_threads``
    also stores it as the default for threads that have not run torch yet. Each worker takes the
    default first, then sets 1 for itself; once all have, the caller re-applies its own count, which
    restores that default for everyone else.
    """
    own = torch.get_num_threads()
    ready = threading.Barrier(count + 1)

    def run() -> None:
        torch.get_num_threads()  # settle this thread's initial count before overriding it
        torch.set_num_threads(1)
        ready.wait()
        target()

    threads = [threading.Thread(target=run, name=f"lsr-encode-{i}", daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    ready.wait()
    torch.set_num_threads(own)
    return threads


def on_one_thread(compute: Callable[..., T]) -> Callable[..., T]:
    """``compute`` run with one torch intra-op thread in whichever thread calls it, that thread's count restored after.

    A worker of ``start_single_threaded`` has one already; this is for a batch computed in the caller's thread.
    """

    def run(*args: object) -> T:
        with one_intra_op_thread():
            return compute(*args)

    return run
