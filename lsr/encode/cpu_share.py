"""The CPUs this process may use, how many of them other work holds, and how OpenMP threads should wait. No torch.

Why the wait policy: torch's CPU build runs its intra-op threads on GNU OpenMP, whose threads spin while they wait at
a barrier. A training step is thousands of short parallel regions; with another process on one of two cores, the
spinning thread fights it for that core and every barrier waits out a time slice: ``lsr train``'s step fell from
3.9 to 1.4 steps/s. Waiting passively (``OMP_WAIT_POLICY=PASSIVE``) gave 2.6 there, but 3.0 instead of 3.9 on a quiet
machine, so it is chosen only when other work holds the CPUs. The policy changes no arithmetic (the same threads
split the same work): a run trains the same weights either way. libgomp reads it once, when torch loads, so it is
chosen before the first ``import torch``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
PROC_STAT = Path("/proc/stat")
WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # a user who set either has chosen
SAMPLE_SECONDS = 0.3


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cpusets), capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cpus, quota) if quota else cpus)


def _cgroup_quota() -> int | None:
    """``cpu.max`` as whole CPUs (rounded up), None when unlimited or unreadable."""
    try:
        limit, period = CGROUP_CPU_MAX.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(1, math.ceil(int(limit) / int(period)))


def busy_cpus(seconds: float = SAMPLE_SECONDS) -> tuple[float, int] | None:
    """(how many were busy, how many were sampled) of the CPUs in this process's affinity mask over ``seconds``; this
    process sleeps meanwhile, so the busy ones ran other work. None where ``/proc/stat`` cannot be read."""
    cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)} if hasattr(os, "sched_getaffinity") else None

    def sample() -> dict[str, tuple[int, int]]:
        times = {}
        for line in PROC_STAT.read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu" and (cpus is None or name in cpus):
                ticks = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
                times[name] = (sum(ticks) - ticks[3] - ticks[4], sum(ticks))
        return times

    try:
        first = sample()
        time.sleep(seconds)
        second = sample()
    except (OSError, ValueError):
        return None
    busy = 0.0
    for name, (work, total) in second.items():
        if name in first and total > first[name][1]:
            busy += (work - first[name][0]) / (total - first[name][1])
    return busy, len(second)


def choose_wait_policy(threads: int) -> str | None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when other work leaves fewer idle CPUs than ``threads`` need; returns a line
    saying so (None when nothing was set: the user chose, torch already loaded, one thread, or CPUs to spare)."""
    if threads < 2 or any(name in os.environ for name in WAIT_POLICY_VARIABLES) or "torch" in sys.modules:
        return None
    sampled = busy_cpus()
    if sampled is None or sampled[1] - sampled[0] >= threads - 0.5:
        return None
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return (f"other work holds {sampled[0]:.1f} of this process's CPUs: its {threads} threads wait passively "
            "(OMP_WAIT_POLICY=PASSIVE: same results, faster beside other jobs; set it yourself to choose)")
