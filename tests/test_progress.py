"""Progress bars: redrawn in place on a terminal; a short, readable trail in a log file or pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import sys
import termios
import time

from lsr.ingest.progress import progress_bar


def _drive(stream, updates: int = 30, pause_s: float = 0.02) -> None:
    """Run a bar on ``stream`` as stderr for updates × pause_s seconds: several of a terminal's redraw intervals."""
    saved = sys.stderr
    sys.stderr = stream
    try:
        with progress_bar("encode", updates) as bar:
            for _ in range(updates):
                time.sleep(pause_s)
                bar.update(1)
    finally:
        sys.stderr = saved
    stream.flush()


def test_a_bar_into_a_log_file_draws_its_start_and_end_only(tmp_path):
    with open(tmp_path / "log", "w") as log:
        _drive(log)
    text = (tmp_path / "log").read_text()
    assert text.count("\r") <= 2 and "30/30" in text and text.endswith("\n")


def test_a_bar_on_a_terminal_redraws_as_it_goes():
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    with os.fdopen(slave, "w") as terminal:
        _drive(terminal)
        chunks = []
        while select.select([master], [], [], 0.2)[0]:
            chunks.append(os.read(master, 65536).decode())
    os.close(master)
    assert "".join(chunks).count("\r") >= 4


def test_a_disabled_bar_writes_nothing(tmp_path):
    with open(tmp_path / "log", "w") as log:
        saved, sys.stderr = sys.stderr, log
        try:
            with progress_bar("encode", 10, enabled=False) as bar:
                bar.update(10)
        finally:
            sys.stderr = saved
    assert (tmp_path / "log").read_text() == ""


def test_log_lines_during_a_bar_in_a_log_file_start_lines_of_their_own(tmp_path):
    """Into a file a bar's line has no end until it redraws: a training log read "...[00:00<?, ?step/s]2026-12-07
    17:20:49,952 INFO ... step 50: dev nDCG@10 0.9754". Two lines in a row get no blank line between them."""
    import logging

    from lsr.ingest.progress import BarSafeHandler

    logger = logging.getLogger("lsr.test.progress")
    with open(tmp_path / "log", "w") as log:
        saved, sys.stderr = sys.stderr, log
        handler = BarSafeHandler(log)
        logger.addHandler(handler)
        try:
            with progress_bar("train", 10) as bar:
                bar.update(1)
                logger.warning("step 1: dev nDCG@10 0.97")
                logger.warning("step 1: kept")
                bar.update(9)
        finally:
            logger.removeHandler(handler)
            sys.stderr = saved
    with open(tmp_path / "log", newline="") as log:  # a bar's redraws start with "\r", as written
        lines = log.read().split("\n")
    assert "step 1: dev nDCG@10 0.97" in lines and "step 1: kept" in lines and "" not in lines[:-1]
    assert lines.index("step 1: kept") == lines.index("step 1: dev nDCG@10 0.97") + 1
