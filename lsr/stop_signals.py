"""The signals that ask a run to stop, for the handlers that stop it cleanly (checkpoint, drain, resume hint).

SIGHUP is one of them (a closed terminal or ssh session: it killed a run at once, leaving partial ``.tmp`` files
and no resume hint), unless the process ignores it, as under ``nohup``: a handler there would undo that.
"""

from __future__ import annotations

import signal


def stop_signals() -> tuple[signal.Signals, ...]:
    """SIGINT, SIGTERM and, unless ignored, SIGHUP."""
    hang_up = () if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGINT, signal.SIGTERM, *hang_up)
