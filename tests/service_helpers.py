"""A real `lsr serve` child process for the service tests."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from lsr.service import Client

START_TIMEOUT = 180.0


class ServerProcess:
    """`lsr serve DIR --port 0 ...` as a child process; the port comes from its event=listening log line."""

    def __init__(self, index_dir: Path, *args: str) -> None:
        self.command = [sys.executable, "-m", "lsr", "serve", str(index_dir), "--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.address: str | None = None
        self._listening = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if "event=listening" in line:
                self.address = line.split("address=")[1].split()[0]
                self._listening.set()
        self._listening.set()

    def wait_listening(self) -> "ServerProcess":
        if not self._listening.wait(START_TIMEOUT) or self.address is None:
            self.kill()
            raise AssertionError(f"server did not start: {' '.join(self.command)}\n{''.join(self.lines)[-3000:]}")
        assert self.address.startswith("127.0.0.1:")
        return self

    def client(self, **kwargs) -> Client:
        return Client(self.address, **kwargs)

    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, wanted: Callable[[str], bool], timeout: float = 30.0) -> str:
        """The latest log line ``wanted`` takes, waiting for it: the log is read on a thread, so a line the server
        wrote before answering may not be in ``lines`` yet when the answer is."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in reversed(self.lines) if wanted(line)), None)
            if found is not None:
                return found
            assert time.monotonic() < deadline, f"no such log line within {timeout:g} s:\n{self.log()[-3000:]}"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
