"""The shard servers of a sharded collection as Ray actors: start, call with deadlines, watch.

Ray places the actors (a local instance, or a cluster at ``--ray-address``) and restarts a dead
one (``max_restarts``); this module only decides what a caller sees meanwhile. A probe thread
asks every shard for its ``info()`` every ``probe_seconds``: a shard is *up* once it answers and
*down* from the first failed call or probe until it answers again; one Ray gave up on (its start
failed) is created again, backing off. Searches skip down shards at once rather than wait on a
restart, so a search returns the other shards' hits marked partial (or fails UNAVAILABLE under
``require_all``, or when no shard answered); a write that needs a down shard is sent nowhere and
fails UNAVAILABLE. Health reports SERVING only while all are up. Shard servers that the cluster could
never place (too many CPUs asked of its nodes) are refused before any is created; one that waits for
CPUs others hold is down "pending placement", not late.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from lsr.ingest.collection import build_tag
from lsr.ingest.layout import read_meta
from lsr.ingest.ray_engine import check_reachable, chosen_address, import_ray, start_ray
from lsr.ingest.sharding import ShardMap
from lsr.service.batching import DeadlinePassed

log = logging.getLogger("lsr.service")

REPLY_MARGIN_S = 0.25  # the wait on shards ends this long before the caller's deadline, to leave time to reply
# (0.1 s was sometimes too little on a busy machine: the caller's own deadline came first, with a bare message)
MAX_SHARD_TIMEOUT = 86_400.0  # a day: Ray's and threading's timeouts overflow on larger ones (inf broke every call)
MAX_SHARD_CPUS = 4_096
RECREATE_BACKOFF_S = (1.0, 30.0)  # a shard server that failed to start is created again after 1, 2, 4 ... 30 s
DEAD_AFTER_S = 2.0  # probes failing at once for this long: Ray will not restart the shard server
MISSING_LOG_EVERY_S = 10.0  # the same shards missing are logged again after this long
PLACEMENT_GRACE_S = 5.0  # a shard server that holds its CPUs starts within this: only then is "pending placement" said
_OWN_LOCAL_INSTANCE = threading.Event()  # connect_ray started this process's Ray instance: its CPUs are ours to share


class ShardUnavailable(Exception):
    """A shard the call needs did not answer (gRPC UNAVAILABLE); the message names it."""


class ShardWriteFailed(Exception):
    """A write failed on a shard (``cause``, whose gRPC status it takes) after others applied it: the message names
    the shard and where the write was applied (``applied``), so the caller knows a retry is needed and safe."""

    def __init__(self, shard: str, applied: str, cause: BaseException) -> None:
        self.shard, self.applied, self.cause = shard, applied, cause
        super().__init__(f"shard {shard} failed: {type(cause).__name__}: {cause}; {applied}")


@dataclass(frozen=True)
class ShardOptions:
    ray_address: str | None = None  # None: start a local Ray instance; "auto" or "ray://host:port": join a cluster
    shard_cpus: float = 1.0  # CPUs Ray reserves for each shard server
    concurrency: int = 8  # calls one shard server runs at once (its searches release the GIL)
    require_all: bool = False  # a search missing a shard fails UNAVAILABLE instead of answering partial
    shard_timeout: float = 30.0  # a shard slower than this (when the call has no earlier deadline) counts as missing
    probe_seconds: float = 0.5
    max_restarts: int = -1  # Ray restarts a dead shard server this many times (-1: always)

    def __post_init__(self) -> None:
        if not 0 <= self.shard_cpus <= MAX_SHARD_CPUS or not self.concurrency >= 1 \
                or not 0 < self.shard_timeout <= MAX_SHARD_TIMEOUT:
            raise ValueError(f"shard CPUs must be in 0..{MAX_SHARD_CPUS}, shard concurrency ≥ 1 and the shard timeout "
                             f"in (0, {MAX_SHARD_TIMEOUT:g}] seconds")


def connect_ray(address: str | None, cpus_needed: float) -> None:
    """Join the cluster at ``address`` (checked reachable first: Ray retries for minutes), or start a local
    instance big enough to place every shard twice (a reload starts the new build's shard servers before it stops
    the old ones); a session already started in this process is used as is."""
    if "ray" in sys.modules and import_ray().is_initialized():
        return
    check_reachable(address)  # before Ray loads: it reads RAY_AUTH_MODE, which this may set, at import
    if address is None and "ray" not in sys.modules:  # token authentication, Ray's default for a new instance, which
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # it chooses with a WARNING line in every server's log
    local = {"num_cpus": max(os.cpu_count() or 1, math.ceil(2 * cpus_needed))} if address is None else {}
    start_ray(chosen_address(address), **local)
    if address is None:
        _OWN_LOCAL_INSTANCE.set()


def _fitted(options: ShardOptions, shards: int) -> ShardOptions:
    """``options`` with the CPUs a shard server reserves lowered to what is free, where this process started its local
    Ray instance and asking for more would leave shard servers pending for good: a reload to more shards than the
    instance was sized for, beside the shard servers of the build still served. On one machine Ray's CPUs only count
    who may start; they bound nothing. On a cluster a reload waits for room, and its shard servers say so."""
    if not _OWN_LOCAL_INSTANCE.is_set():
        return options
    free = import_ray().available_resources().get("CPU", 0.0)
    if options.shard_cpus * shards <= free:
        return options
    cpus = math.floor(free / shards * 10_000) / 10_000  # Ray counts resources in units of 1/10000
    log.info("event=shard_cpus_lowered shards=%d cpus=%g asked=%g: the local Ray instance has %g CPUs free beside "
             "the build still served", shards, cpus, options.shard_cpus, free)
    return replace(options, shard_cpus=cpus)


def _check_placeable(names: Sequence[str], cpus: float) -> None:
    """Refuse, in one line and before any is created, shard servers that the Ray cluster could never place: Ray keeps
    such an actor pending without a word, so they were reported as shards that did not answer in time. A shard
    server must fit on one node, and all of them in the cluster at once."""
    nodes = [node["Resources"].get("CPU", 0.0) for node in import_ray().nodes() if node.get("Alive")]
    total, largest = sum(nodes), max(nodes, default=0.0)
    shards = ", ".join(names) if len(names) <= 4 else f"the {len(names)} shards {names[0]} to {names[-1]}"
    if cpus > largest:
        has = f"the cluster has {total:g}" if len(nodes) == 1 else f"the largest node of the cluster has {largest:g}"
        raise RuntimeError(f"Ray cannot place {shards}: each asks for {_cpus(cpus)} and {has} (lower --shard-cpus)")
    if round(cpus * len(names), 4) > total:  # Ray counts resources in units of 1/10000
        raise RuntimeError(f"Ray cannot place all of {shards}: they ask for {_cpus(cpus)} each, "
                           f"{cpus * len(names):g} in all, and the cluster has {total:g} (lower --shard-cpus)")


def _build_of(path: str) -> str | None:
    """The tag of the build in a shard's folder now; None where it cannot be read (its server then says why)."""
    try:
        return build_tag(read_meta(Path(path)))
    except Exception:  # noqa: BLE001 - missing, damaged, being built: the shard server's start says which
        return None


def _cpus(amount: float) -> str:
    return f"{amount:g} CPU{'' if amount == 1 else 's'}"


def _give_up_at(deadline: float | None, started: float, method: str) -> float:
    """When to stop waiting on shards: never (``inf``) without a deadline, else a little before it, so the
    status and its message reach the caller before its own gRPC deadline ends the call with a bare
    "Deadline Exceeded" (the margin is REPLY_MARGIN_S, or a quarter of the time left when that is shorter)."""
    if deadline is None:
        return math.inf
    left = deadline - started
    if left <= 0:
        raise DeadlinePassed(f"deadline exceeded before the {method} call was sent to the shards (nothing was sent)")
    return deadline - min(REPLY_MARGIN_S, left / 4)


def _reason(exc: BaseException) -> str:
    """One line on why a shard did not answer: Ray's messages end with the shard's own error (after a traceback). A
    server Ray is restarting is said in words: Ray's text (an actor id, "the task may or may not have been executed")
    sat beside "nothing was written" in the error a write got. (A server that died keeps Ray's last line: after a
    failed start, that is the shard's own error, such as its folder being no collection.)"""
    if type(exc).__name__ == "ActorUnavailableError":
        return "its server is unreachable; it is being restarted"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {(lines[-1] if lines else '')[:300]}"


class ShardSet:
    """One Ray actor per shard, each serving ``ShardServer`` over its folder of a sharded collection."""

    def __init__(self, root: Path, shard_map: ShardMap, options: ShardOptions) -> None:
        from lsr.service.shards import ShardServer

        self.shard_map = shard_map
        self.names = shard_map.names
        connect_ray(options.ray_address, options.shard_cpus * shard_map.n_shards)  # before Ray loads: see there
        ray = import_ray()
        self.options = options = _fitted(options, shard_map.n_shards)
        _check_placeable(self.names, options.shard_cpus)
        actor = ray.remote(ShardServer).options(
            max_restarts=options.max_restarts, max_task_retries=0, num_cpus=options.shard_cpus,
            max_concurrency=options.concurrency,
        )
        self._actor, self._paths = actor, [str(path.resolve()) for path in shard_map.paths(root)]
        self._builds = [_build_of(path) for path in self._paths]  # each shard's build this set serves
        self.actors = [actor.remote(name, path) for name, path in zip(self.names, self._paths)]
        self._recreate_at = [0.0] * len(self.names)  # when a dead shard server may be created again
        self._dead_since: list[float | None] = [None] * len(self.names)  # the first of a run of ActorDiedErrors
        self._backoff = [RECREATE_BACKOFF_S[0]] * len(self.names)
        self.infos: list[dict[str, Any] | None] = [None] * len(self.names)
        self._not_up_since = [time.monotonic()] * len(self.names)  # created, or down since
        self.versions = ["0"] * len(self.names)
        self._up = [False] * len(self.names)
        self._reasons = [""] * len(self.names)
        self._lock = threading.Lock()
        self._write_locks = [threading.Lock() for _ in self.names]
        self._last_writes: list[Any] = [None] * len(self.names)  # each shard's latest write (a Ray ref)
        self._reporters: list[Callable[[bool], None]] = []
        self._on_replaced: list[Callable[[], None]] = []
        self._missing_said = ("", 0.0)  # the shards a call last logged as missing, and when
        self._closed = threading.Event()
        self._all_up = threading.Event()
        self._probe = threading.Thread(target=self._probe_loop, name="lsr-shard-probe", daemon=True)
        self._probe.start()

    # ------------------------------------------------------------------ state
    def is_up(self, shard: int) -> bool:
        return self._up[shard]

    def on_health(self, report: Callable[[bool], None]) -> None:
        with self._lock:
            self._reporters.append(report)
            healthy = self._healthy
        report(healthy)

    def when_replaced(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` the first time a shard server reports its shard indexed anew (or moved or deleted); at once
        if one already has."""
        with self._lock:
            self._on_replaced.append(listener)
            already = self._any_replaced()
        if already:
            listener()

    @property
    def replaced(self) -> bool:
        """Whether a shard server found its shard indexed anew (or moved or deleted), or opened a newer build."""
        with self._lock:
            return self._any_replaced()

    def _any_replaced(self) -> bool:  # under self._lock
        return any((info or {}).get("replaced") for info in self.infos)

    @property
    def _healthy(self) -> bool:
        """Every shard up, and none indexed anew under its server (``lsr index --overwrite``: it still answers
        searches from the build it opened, but its writes fail until the coordinator opens the new build)."""
        return all(self._up) and not self._any_replaced()

    def wait_all_up(self, timeout: float) -> bool:
        return self._all_up.wait(timeout)

    def down_reasons(self) -> str:
        """Each shard that is down and why, for messages: "shard-001 (pending placement, ...)"."""
        with self._lock:
            down = [(name, why) for name, up, why in zip(self.names, self._up, self._reasons) if not up]
        return "; ".join(f"{name} ({why or 'starting'})" for name, why in down)

    def _set_up(self, shard: int, up: bool, why: str = "", info: dict[str, Any] | None = None) -> None:
        """Record a shard's state (``info``: what an up shard answered the probe); log each change, and each new reason
        a down shard gives (a shard whose server cannot start, say on a damaged file, stays down from the start and
        says why only here). Health is reported whenever ``_healthy`` changes."""
        if self._closed.is_set():  # its shard servers killed on purpose: a probe under way says nothing
            return
        with self._lock:
            changed, told, was_healthy = self._up[shard] != up, self._reasons[shard] == why, self._healthy
            replaced_now = info is not None and info.get("replaced") and not (self.infos[shard] or {}).get("replaced")
            first_replaced = replaced_now and not self._any_replaced()
            self._up[shard], self._reasons[shard] = up, why
            if changed and not up:
                self._not_up_since[shard] = time.monotonic()
            if info is not None:
                self.infos[shard] = info
            healthy, all_up = self._healthy, all(self._up)
            reporters, listeners = list(self._reporters), list(self._on_replaced) if first_replaced else []
        if up and changed:
            log.info("event=shard_up shard=%s", self.names[shard])
        if not up and not told:
            log.warning("event=shard_down shard=%s reason=%r", self.names[shard], why)
        if replaced_now:
            log.warning("event=shard_replaced shard=%s: indexed anew under this server, whose writes fail until it "
                        "serves the new build", self.names[shard])
            for listener in listeners:
                listener()
        (self._all_up.set if all_up else self._all_up.clear)()
        if healthy != was_healthy:
            for report in reporters:
                report(healthy)

    def _probe_loop(self) -> None:
        """Ask every shard for its info; an answer means up, an error or no answer within the shard timeout down.

        A probe stays pending while its shard is being placed or restarted, so a slow shard
        never holds up the probes of the others."""
        ray = import_ray()
        from ray.exceptions import ActorDiedError

        pending: dict[int, tuple[Any, float]] = {}
        while not self._closed.is_set() and ray.is_initialized():  # Ray shut down as the process exits: nothing to ask
            now = time.monotonic()
            for shard, actor in enumerate(self.actors):
                if shard not in pending:
                    pending[shard] = actor.info.remote(), now
            refs = {ref: shard for shard, (ref, _) in pending.items()}
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=self.options.probe_seconds)
            for ref in ready:
                shard = refs[ref]
                del pending[shard]
                try:
                    info = ray.get(ref)
                except ActorDiedError as exc:  # Ray restarts a server that dies, never one whose start failed
                    self._set_up(shard, False, _reason(exc))
                    self._recreate_if_dead(shard)
                except Exception as exc:  # noqa: BLE001 - any failure to answer means down
                    self._dead_since[shard] = None
                    self._set_up(shard, False, _reason(exc))
                else:
                    self._dead_since[shard], self._backoff[shard] = None, RECREATE_BACKOFF_S[0]
                    self._builds[shard] = self._builds[shard] or info["build"]
                    if info["build"] == self._builds[shard]:
                        self._set_up(shard, True, info=info)
                    else:  # (re)started after its folder was indexed anew: its hits would mix two builds
                        self._set_up(shard, False, "it opened a newer build of its folder than the other shards "
                                     "(indexed anew under this server)", info={**info, "replaced": True})
            for shard, (ref, sent) in list(pending.items()):
                waiting = None if self._up[shard] else self._pending_placement(shard)
                if waiting:
                    self._set_up(shard, False, waiting)
                elif time.monotonic() - sent > self.options.shard_timeout:
                    self._set_up(shard, False, f"no answer within {self.options.shard_timeout:g} s")
            self._closed.wait(self.options.probe_seconds if ready else 0.0)

    def _pending_placement(self, shard: int) -> str | None:
        """Why a shard server that is not up has not answered, when Ray has not placed it (created, or restarted after
        a crash) because no node has the CPUs it asks for free; else None. Such a shard read as one that did not answer
        in time. The GCS actor table tells a pending actor that has no worker yet (Ray's state API would need the
        dashboard, which lsr does not start); a Ray Client session (ray://) cannot read it, and gets no reason."""
        from ray._private import state
        from ray.exceptions import RaySystemError

        try:
            actor = state.actors(self.actors[shard]._actor_id.hex())
        except RaySystemError:  # "Ray has not been started yet": this process holds no GCS connection of its own
            return None
        if actor.get("State") not in ("PENDING_CREATION", "RESTARTING") or actor["Address"]["Port"] \
                or time.monotonic() - self._not_up_since[shard] < PLACEMENT_GRACE_S:
            return None  # placed: starting (holding its CPUs before its worker has a port), or answering late
        cpus = self.options.shard_cpus
        free = [node.get("CPU", 0.0) for node in state.available_resources_per_node().values()]
        if max(free, default=0.0) >= cpus:
            return None  # Ray is placing it now
        total = import_ray().cluster_resources().get("CPU", 0.0)
        return (f"pending placement, waiting for resources: it asks for {_cpus(cpus)} and the cluster has "
                f"{sum(free):g} of {total:g} free")

    def _recreate_if_dead(self, shard: int) -> None:
        """Create a shard server again once Ray has given up on it, backing off: a server whose start failed (its
        folder briefly gone on shared storage, a lock held by a repair) stayed down until the coordinator restarted.
        A server Ray is restarting fails the probe that was running when it died, then holds the next one until it
        is back; one that Ray will not restart fails every probe at once, so it is dead after ``DEAD_AFTER_S``."""
        now = time.monotonic()
        since = self._dead_since[shard] = self._dead_since[shard] or now
        if now - since < DEAD_AFTER_S or now < self._recreate_at[shard] or self._closed.is_set():
            return
        self._recreate_at[shard], self._dead_since[shard] = now + self._backoff[shard], None
        self._backoff[shard] = min(self._backoff[shard] * 2, RECREATE_BACKOFF_S[1])
        log.info("event=shard_recreate shard=%s", self.names[shard])
        import_ray().kill(self.actors[shard], no_restart=True)
        self.actors[shard] = self._actor.remote(self.names[shard], self._paths[shard])
        self._not_up_since[shard] = time.monotonic()

    # ------------------------------------------------------------------ calls
    def call(self, method: str, args: dict[int, tuple], deadline: float | None, *,
             strict: bool = False, write: bool = False) -> tuple[dict[int, Any], list[int]]:
        """Call ``method(*args[shard])`` on each named shard in parallel: (answers, shards that did not answer).

        Searches and writes share this one deadline rule: the wait on each shard ends at the earlier of
        ``shard_timeout`` after sending (then the shard counts as missing) and the caller's ``deadline``
        (``time.monotonic()``) less a reply margin (then DeadlinePassed names the shards that had not
        answered). A call whose deadline passed before sending sends nothing. ``write``: the call changes
        the shards, goes to each shard only after that shard's previous write has finished (``_send_writes``),
        and the message says it may still be applied on the shards it reached. A shard that is down is
        not asked; ``strict`` (writes, and fetches a search needs whole) raises ShardUnavailable for a
        missing shard. An exception raised by our code in the shard is re-raised here as itself.
        """
        ray = import_ray()
        from ray.exceptions import GetTimeoutError, RayTaskError

        started = time.monotonic()
        give_up = _give_up_at(deadline, started, method)
        limit = started + self.options.shard_timeout
        up = [shard for shard in args if self._up[shard]]
        down = [shard for shard in args if shard not in up]
        if down and strict:  # known before anything is sent: a write lands on all its shards or none
            nothing = "nothing was written" if write else "nothing was asked"
            raise ShardUnavailable(f"shard {self.names[down[0]]} is down ({self._reasons[down[0]] or 'starting'}), so "
                                   f"this {method} was not sent to any shard ({nothing}); retry shortly")
        refs = self._send_writes(method, {shard: args[shard] for shard in up}, give_up, limit) if write else \
            {shard: getattr(self.actors[shard], method).remote(*args[shard]) for shard in up}
        answers: dict[int, Any] = {}
        failed: dict[int, BaseException] = {}  # a write's shards that raised: the others' answers are waited for
        missing = list(down)
        reasons = {shard: f"it is down ({self._reasons[shard] or 'starting'})" for shard in missing}
        for shard, ref in refs.items():
            try:
                answers[shard] = ray.get(ref, timeout=max(0.0, min(give_up, limit) - time.monotonic()))
            except GetTimeoutError:  # at the earlier bound (Ray's timer may fire a little before it)
                if give_up <= limit:
                    raise self._deadline_passed(method, refs, answers, write) from None
                ray.cancel(ref)
                missing.append(shard)
                reasons[shard] = f"no answer within {self.options.shard_timeout:g} s" + (
                    ", and the write may still be applied there" if write else "")
            except RayTaskError as exc:
                if not write:
                    raise exc.cause from None
                failed[shard] = exc.cause
            except Exception as exc:  # noqa: BLE001 - RayActorError, ActorUnavailableError: the shard is gone
                self._set_up(shard, False, _reason(exc))
                missing.append(shard)
                reasons[shard] = "its server died (Ray is restarting it)" + (
                    " during the write, which may have been applied there" if write else "")
        if failed:
            raise self._write_failed(method, failed, answers)
        if missing:
            self._say_missing(method, " ".join(f"{self.names[s]}={reasons[s]!r}" for s in sorted(missing)))
        if missing and (strict or self.options.require_all or not answers):
            shard = min(missing)
            applied = ", ".join(self.names[s] for s in sorted(answers))
            where = f"; it was applied on {applied} (each shard applies a write whole or not at all)" if write and \
                answers else ""
            raise ShardUnavailable(f"shard {self.names[shard]} did not answer: {reasons[shard]}; "
                                   f"{len(missing)} of {len(args)} shards missing{where}, retry shortly")
        return answers, sorted(missing)

    def _say_missing(self, method: str, which: str) -> None:
        """Log the shards a call missed once per change, then at most every ``MISSING_LOG_EVERY_S`` while it lasts: every
        search logged it, hundreds of lines a second under load while a shard was down."""
        now = time.monotonic()
        with self._lock:
            if which == self._missing_said[0] and now - self._missing_said[1] < MISSING_LOG_EVERY_S:
                return
            self._missing_said = which, now
        log.warning("event=shards_missing method=%s %s", method, which)

    def _write_failed(self, method: str, failed: dict[int, BaseException], answers: dict[int, Any]) -> BaseException:
        """A write one shard refused (a bad request: every shard refuses it alike) is its error as itself; one that
        failed on a shard where others applied it names both (it was a bare INTERNAL, 7 of 9 documents written)."""
        shard, cause = min(failed.items())
        if not answers:
            return cause
        applied = (f"this {method} was applied on {', '.join(self.names[s] for s in sorted(answers))} (each shard "
                   f"applies a write whole or not at all): retrying is safe once {self.names[shard]} is fixed")
        return ShardWriteFailed(self.names[shard], applied, cause)

    def _send_writes(self, method: str, args: dict[int, tuple], give_up: float, limit: float) -> dict[int, Any]:
        """Send a write to each shard once that shard's previous write has finished (applied, failed, or
        cancelled while queued). A shard runs calls on several threads, so without this a write whose caller
        gave up could land after a later write to the same ids and undo it. The wait counts against the call."""
        ray = import_ray()
        refs: dict[int, Any] = {}

        def time_left() -> float:
            return max(0.0, min(give_up, limit) - time.monotonic())

        for shard in sorted(args):
            lock = self._write_locks[shard]
            if not lock.acquire(timeout=time_left()):
                raise self._write_blocked(method, shard, refs, give_up <= limit)
            try:
                previous = self._last_writes[shard]
                if previous is not None and not ray.wait([previous], timeout=time_left())[0]:
                    raise self._write_blocked(method, shard, refs, give_up <= limit)
                refs[shard] = self._last_writes[shard] = getattr(self.actors[shard], method).remote(*args[shard])
            finally:
                lock.release()
        return refs

    def _write_blocked(self, method: str, shard: int, sent: dict[int, Any], by_deadline: bool) -> Exception:
        """The error for a write held back by an earlier write to ``shard`` that has not finished."""
        reached = ", ".join(self.names[s] for s in sent)
        where = f"; it was sent to {reached}, where it may still be applied" if sent else " (nothing was sent)"
        text = (f"shard {self.names[shard]} is still applying an earlier write, so this {method} was not sent "
                f"there{where}; retrying the same {method} is safe")
        if by_deadline:
            return DeadlinePassed(f"deadline exceeded: {text}")
        return ShardUnavailable(f"{text} (waited {self.options.shard_timeout:g} s)")

    def _deadline_passed(self, method: str, refs: dict[int, Any], answers: dict[int, Any],
                         write: bool) -> DeadlinePassed:
        """The error for a call whose deadline passed, naming every shard that had not answered yet; their
        calls are cancelled (nobody will read them: a queued one never runs, a running one finishes)."""
        ray = import_ray()
        pending = {shard: ref for shard, ref in refs.items() if shard not in answers}
        ready, _ = ray.wait(list(pending.values()), num_returns=len(pending), timeout=0)
        late = [shard for shard, ref in pending.items() if ref not in ready] or list(pending)[:1]
        for ref in pending.values():
            ray.cancel(ref)
        names = ", ".join(self.names[shard] for shard in late)
        shards = f"shard{'s' if len(late) > 1 else ''} {names}"
        if not write:
            return DeadlinePassed(f"deadline exceeded waiting for {shards}")
        return DeadlinePassed(
            f"deadline exceeded before {shards} acknowledged the {method}: it was sent and may still be applied "
            f"there (a shard applies a write whole or not at all); retrying the same {method} is safe")

    def close(self) -> None:
        ray = import_ray()
        self._closed.set()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
