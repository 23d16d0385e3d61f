"""One torch intra-op thread for a block of small CPU ops, whichever thread runs it.

Why: each small op on several intra-op threads ends in a barrier; when another process holds a core, that barrier
waits out the descheduled thread's time slice, so many small ops cost far more than their work (the exact screen's
per-document recompute, a lone query's encode). torch keeps the count per thread (OpenMP's per-thread setting),
so this leaves other threads alone.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Run the block with one intra-op thread; the calling thread's count is restored after."""
    own = torch.get_num_threads()
    if own == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(own)
