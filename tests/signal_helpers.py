"""Children that take Ctrl-C as a terminal's foreground job would, started without ``preexec_fn``.

A pytest-xdist worker ignores SIGINT and its children inherit that, so they never raise KeyboardInterrupt. Resetting
it in ``preexec_fn`` runs Python between fork and exec in a worker whose gRPC threads are live; gRPC's fork handlers
then closed its poller under the child, which aborted (SIGABRT, "epoll_wait error: Bad file descriptor") before it
ran. A tiny launcher does the reset after exec instead, then execs the real command in the same process.
"""

from __future__ import annotations

import sys

_LAUNCHER = """\
import os, signal, sys
if sys.argv[1] == "--own-terminal":  # as a shell's job: Ctrl-C on the terminal (stdin) is SIGINT to this process
    import fcntl, termios
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    del sys.argv[1]
signal.signal(signal.SIGINT, signal.SIG_DFL)  # kept across exec, unlike a handler
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
"""


def interruptible(*args: str, own_terminal: bool = False) -> list[str]:
    """``python *args`` with SIGINT at its default; ``own_terminal`` (with ``start_new_session=True`` and a pty as
    stdin) also makes that pty its controlling terminal."""
    return [sys.executable, "-c", _LAUNCHER, *(["--own-terminal"] if own_terminal else []), *args]
