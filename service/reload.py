"""Serve a collection's new build without a restart.

`lsr index --overwrite` under a running server replaces the folder the server opened (and a write
that failed half-applied, a full disk, leaves its stores behind its journal). The server notices
(its background look, or a write or text read; `Collection.check_in_place`), reports
NOT_SERVING and goes on answering searches from the build it had loaded. ``Reloader`` then tries
to open the folder again every ``interval`` seconds (``Searcher.reopen``: models the new build
names as the old one did are shared, not loaded again): while the new build is unfinished (or the
folder is gone) that fails and the old build keeps answering; once it opens, it is warmed up and
swapped in, and health turns SERVING again. Requests that started on the old build finish on it
(``SearchServicer.swap``), so no request mixes one build's query encoder with another's index.
For a moment both builds are in memory. A sharded collection is served again the same way
(``ShardedSearcher.reopen``): the first shard server to find its shard indexed anew starts the
reload, which starts shard servers for the new build (as many as it has now) beside the old ones,
waits until all are up, then swaps; the old ones stop once their requests have finished. A folder
indexed anew as the other kind (sharded or not) needs a restart, and writes say so.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from lsr.ingest.collection import CollectionReplaced

log = logging.getLogger("lsr.service")

MAX_PAUSE = 60.0  # seconds at most between two tries to open the collection again
STOP_WAIT_S = 10.0  # a stopping server waits this long for a reload under way to close what it opened


class Reloader:
    """Opens the collection of ``current()`` (the searcher being served) again once it was found indexed anew, warms
    it up and hands it to ``swap``; ``stop`` ends a reload under way (the searcher it opened is closed). ``blocked``:
    why no reload can serve the folder until the server restarts (the other kind of collection was built there), else
    None."""

    def __init__(self, current: Callable[[], Any], swap: Callable[[Any], None], interval: float = 1.0) -> None:
        self._current = current
        self._swap = swap
        self._interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._again = False  # found replaced again while a reload ran: once it has swapped in, reload again
        self.blocked: str | None = None

    def watch(self, searcher: Any) -> None:
        """Reload when ``searcher``'s collection is found indexed anew (or moved or deleted: reopening then waits
        until a collection is there again)."""
        searcher.when_replaced(self._start)

    def stop(self) -> None:
        """End a reload under way: it closes what it opened (a sharded build's shard servers, before Ray stops)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(STOP_WAIT_S)

    def _start(self) -> None:
        with self._lock:  # one reload at a time
            if self._stop.is_set():
                return
            if self._thread is not None:  # its build was found replaced before it was swapped in
                self._again = True
                return
            log.info("event=reloading reason=%r", "the collection was indexed anew, moved or deleted, or a write failed "
                     "half-applied: searches answer from the loaded build until the collection there opens")
            self._thread = threading.Thread(target=self._reload, name="lsr-reload", daemon=True)
            self._thread.start()

    def _reload(self) -> None:
        noticed = time.monotonic()
        while True:
            searcher = self._reopened()
            if searcher is None:  # the server is stopping
                return
            try:
                searcher.warm_up()
            except Exception as exc:  # noqa: BLE001 - only a speed-up, as at start
                log.warning("event=warm_up_failed error=%s", " ".join(str(exc).split()))
            if self._stop.is_set():
                searcher.close()
                return
            self._swap(searcher)
            log.info("event=reloaded index_version=%s seconds=%.3f", searcher.index_version, time.monotonic() - noticed)
            with self._lock:
                if not self._again:
                    self._thread = None
                    return
                self._again = False

    def _reopened(self) -> Any | None:
        """The collection opened again, watched from that moment (its own look may find it replaced before it is
        swapped in), once that succeeds; None once ``stop`` is called."""
        said, pause = None, self._interval
        while not self._stop.wait(pause):
            tried = time.monotonic()
            try:
                searcher = self._current().reopen(self._stop)
            except Exception as exc:  # noqa: BLE001 - unfinished, gone, or damaged: the old build answers meanwhile
                if self._stop.is_set():
                    return None
                reason = " ".join(str(exc).split())
                # looked at each time: a rebuild into the other kind failed alike under way and once done, and under
                # load the server kept saying "retry shortly" for good
                self.blocked = self._kind_changed()
                if (reason, self.blocked) != said:  # once per reason, not once a second
                    self._say_waiting(reason)
                    said = reason, self.blocked
                # A build under way fails at once, and is looked at every second; a damaged one fails after its
                # checksums, which would keep a core busy: it is looked at less often, at most a fifth of the time.
                # One found indexed anew again as it opened (a sharded build's shard servers take seconds) is tried
                # again at once: that wait kept a whole new build waiting up to a minute.
                slow = not isinstance(exc, CollectionReplaced)
                pause = min(MAX_PAUSE, max(self._interval, 4 * (time.monotonic() - tried) * slow))
                continue
            self.blocked = None
            self.watch(searcher)
            return searcher
        return None

    def _kind_changed(self) -> str | None:
        """What to do where the other kind of collection is there now (not a build under way, nor a folder moved
        away): no reload can serve it."""
        from lsr.ingest.layout import META_FILE
        from lsr.ingest.sharding import is_sharded

        current = self._current()
        path = current.path
        sharded = is_sharded(path) and not current.sharded
        unsharded = current.sharded and not is_sharded(path) and (path / META_FILE).is_file()
        return None if not (sharded or unsharded) else (
            f"{path} was indexed anew as {'a sharded' if sharded else 'an unsharded'} collection, which `lsr serve` "
            f"serves {'through a coordinator' if sharded else 'without one'}: restart the server")

    def _say_waiting(self, reason: str) -> None:
        if self.blocked:
            log.warning("event=reload_waiting reason=%r", self.blocked)
        else:
            log.info("event=reload_waiting reason=%r", reason)
