"""Progress for long work (indexing, encoding files, batch search, tuning): one bar style on stderr, a true total.

Bars are context managers, so they are closed (their line ended) before an error prints; log lines
that would land inside a bar (per-batch truncation warnings) are silenced while it runs and counted instead.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Any


def progress_bar(desc: str, total: int | None, *, initial: int = 0, enabled: bool = True, unit: str = "doc"):
    """A tqdm bar on stderr with total and ETA."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, smoothing=0.05,
                dynamic_ncols=True, file=sys.stderr)


def rows_total(rows: int | None, limit: int | None) -> int | None:
    """Documents a run will see: the rows (if known) capped by ``limit``."""
    return limit if rows is None else min(rows, limit or rows)


def update_total(bar: Any, reader: Any, expected: int | None, limit: int | None) -> None:
    """Re-aim a CorpusReader's bar: the counted rows less those skipped, or an estimate from the share read so far."""
    if expected is not None:
        total = rows_total(expected - reader.stats.n_skipped, limit)
    elif reader.stats.fraction:
        total = rows_total(int(round(reader.stats.docs / reader.stats.fraction)), limit)
    else:
        return
    bar.total = max(bar.n, total)


@contextmanager
def quiet_logger(name: str):
    """Raise a logger to ERROR for the block (its warnings would break the bar's line)."""
    target = logging.getLogger(name)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)
