"""Children that take Ctrl-C as a terminal's foreground job would, started without ``preexec_fn``.

A pytest-xdist worker ignores SIGINT and its children inherit that, so they never raise KeyboardInterrupt. Resetting
it in ``preexec_fn`` runs Python between fork and exec in a worker whose gRPC threads are live; gRPC's fork handlers
then closed its poller under the child, which aborted (SIGABRT, "epoll_wait error: Bad file descriptor") before it
ran. A tiny launcher does the reset after exec instead, then execs the real command in the same process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_LAUNCHER = """\
import os, signal, sys
if sys.argv[1] == "--own-terminal":  # as a shell's job: Ctrl-C on the terminal (stdin) is SIGINT to this process
    import fcntl, termios
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    del sys.argv[1]
signal.signal(signal.SIGINT, signal.SIG_DFL)  # kept across exec, unlike a handler
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a test run under nohup ignores it
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
"""


def interruptible(*args: str, own_terminal: bool = False) -> list[str]:
    """``python *args`` with SIGINT at its default; ``own_terminal`` (with ``start_new_session=True`` and a pty as
    stdin) also makes that pty its controlling terminal."""
    return [sys.executable, "-c", _LAUNCHER, *(["--own-terminal"] if own_terminal else []), *args]


def signalled_while_ray_starts(*args: str, signum: int = signal.SIGTERM,
                               timeout: float = 120.0) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``python *args`` (interruptible) and send it ``signum`` once it has launched the GCS of a local Ray
    instance, in the middle of ray.init (its raylet, agents and the driver's connection come after); returns the
    finished run and the processes it started that are still alive a moment after it ended (those are killed).

    The child gets its own RAY_TMPDIR: it starts a Ray instance of its own even while a test holds another, and
    every process it starts, down to its raylet's agents, carries that in its environment.
    """
    ray_tmp = tempfile.mkdtemp(prefix="lsr-ray-")  # short: Ray's socket paths must fit in 107 bytes
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    job = subprocess.Popen(interruptible(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**env, "RAY_TMPDIR": ray_tmp})
    try:
        deadline = time.monotonic() + timeout
        while "gcs_server" not in _children(job.pid):
            if job.poll() is not None or time.monotonic() > deadline:
                job.kill()
                raise AssertionError(f"it started no local Ray instance to signal: {job.communicate()}")
            time.sleep(0.02)
        job.send_signal(signum)
        stdout, stderr = job.communicate(timeout=timeout)
        left = _outliving(f"RAY_TMPDIR={ray_tmp}\0")
        return subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr), left
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _children(pid: int) -> list[str]:
    """The command names of ``pid``'s child processes."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            comm, fields = stat.read_text().rsplit(")", 1)  # "PID (COMM) STATE PPID ...": COMM may hold anything
        except OSError:  # ended meanwhile
            continue
        if int(fields.split()[1]) == pid:
            names.append(comm.split("(", 1)[1])
    return names


def _outliving(marker: str, wait_s: float = 10.0) -> list[str]:
    """The command lines of the processes whose environment holds ``marker``, once those still stopping have had
    ``wait_s`` to end; they are killed, so that a failed test leaves none behind."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = {}
        for environ in Path("/proc").glob("[0-9]*/environ"):
            try:
                if marker.encode() in environ.read_bytes():
                    alive[int(environ.parent.name)] = (environ.parent / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:  # ended meanwhile, or another user's
                continue
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return [command.decode(errors="replace").strip() for command in alive.values()]
