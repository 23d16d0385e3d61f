"""Progress for long work (indexing, encoding, training, batch search, tuning): one bar style on stderr, a true total.

Bars are context managers, so they are closed (their line ended) before an error prints; log lines
that would land inside a bar (per-batch truncation warnings) are silenced while it runs and counted instead, and
the others (``BarSafeHandler``) start a line of their own.
On a terminal a bar redraws in place several times a second; into a log file or pipe (nohup, CI, ``2> log``) it
redraws every ``LOG_REDRAW_S`` seconds, so the log holds a readable trail instead of thousands of updates.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Any


LOG_REDRAW_S = 30.0


def progress_bar(desc: str, total: int | None, *, initial: int = 0, enabled: bool = True, unit: str = "doc"):
    """A tqdm bar on stderr with total and ETA (disabled: every call on it does nothing)."""
    from tqdm.auto import tqdm

    interval = 0.1 if sys.stderr.isatty() else LOG_REDRAW_S
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, smoothing=0.05,
                dynamic_ncols=True, file=sys.stderr, mininterval=interval, maxinterval=max(10.0, interval))


class BarSafeHandler(logging.StreamHandler):
    """Log lines on a line of their own while a bar runs: on a terminal the bars are cleared and redrawn around
    them; into a file or pipe, where a bar's line has no end until its next redraw, a line is ended first (a
    training log read "...[00:00<?, ?step/s]2026-12-07 17:20:49,952 INFO ... step 50: dev nDCG@10 0.9754")."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._last = 0.0  # when this handler last wrote (time.time, as tqdm's last_print_t)

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        bars = list(getattr(tqdm, "_instances", ()))  # the bars running (lsr's draw on stderr, as its log)
        if bars and self.stream.isatty():
            with tqdm.external_write_mode(file=self.stream):
                super().emit(record)
            return
        if any(getattr(bar, "last_print_t", 0.0) >= self._last for bar in bars):  # a bar drew since this handler
            self.stream.write("\n")
        super().emit(record)
        self._last = time.time()


def rows_total(rows: int | None, limit: int | None) -> int | None:
    """Documents a run will see: the rows (if known) capped by ``limit``."""
    return limit if rows is None else min(rows, limit or rows)


def update_total(bar: Any, reader: Any, expected: int | None, limit: int | None) -> None:
    """Re-aim a CorpusReader's bar: the counted rows less those skipped, or an estimate from the share read so far."""
    if expected is not None:
        total = rows_total(expected - reader.stats.n_skipped - reader.stats.blank_lines, limit)
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
