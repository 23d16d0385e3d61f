"""The shards of a sharded collection opened in this process, for the coordinator to search without Ray.

``lsr search`` on a sharded collection searches once and exits: starting Ray and a shard server per shard
would cost more than the search. ``LocalShards`` answers the coordinator's calls like ``ShardSet`` does,
on the same ``ShardServer`` objects, called from a thread per shard (their searches release the GIL), so
the results are the sharded searcher's exactly. Nothing restarts or goes down here: a shard that fails
to open fails the open.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from lsr.ingest.sharding import ShardMap


class LocalShards:
    """One in-process ``ShardServer`` per shard, with ``ShardSet``'s calls."""

    def __init__(self, root: Path, shard_map: ShardMap) -> None:
        from lsr.service.shards import ShardServer

        self.shard_map = shard_map
        self.names = shard_map.names
        self.servers = [ShardServer(name, path) for name, path in zip(self.names, shard_map.paths(root))]
        self._pool = ThreadPoolExecutor(max_workers=len(self.names), thread_name_prefix="lsr-shard")
        self.versions = ["0"] * len(self.names)

    @property
    def infos(self) -> list[dict[str, Any] | None]:
        """Each shard's facts as of now (``ShardSet`` keeps its probes' latest answers)."""
        return [server.info() for server in self.servers]

    def is_up(self, shard: int) -> bool:
        return True

    def on_health(self, report: Callable[[bool], None]) -> None:
        """Servable until a shard is found indexed anew (its writes fail until the new build is opened)."""
        report(True)
        self.when_replaced(lambda: report(False))

    def wait_all_up(self, timeout: float) -> bool:
        return True

    def down_reasons(self) -> str:
        return ""  # shards in this process are never down

    @property
    def replaced(self) -> bool:
        return any(server.collection.replaced for server in self.servers)

    def when_replaced(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` once, the first time a shard's collection is found indexed anew (or moved or deleted)."""
        lock, told = threading.Lock(), []

        def tell_once() -> None:
            with lock:
                if told:
                    return
                told.append(True)
            listener()

        for server in self.servers:
            server.collection.when_replaced(tell_once)

    def call(self, method: str, args: dict[int, tuple], deadline: float | None, *,
             strict: bool = False, write: bool = False) -> tuple[dict[int, Any], list[int]]:
        """``method(*args[shard])`` on each named shard in parallel: (answers, no missing shard). An exception raised
        in a shard is raised here as itself; the deadline is not watched (nothing here waits on another process)."""
        calls = {shard: self._pool.submit(getattr(self.servers[shard], method), *args[shard]) for shard in args}
        return {shard: future.result() for shard, future in calls.items()}, []

    def close(self) -> None:
        for server in self.servers:
            server.collection.close()
        self._pool.shutdown()
