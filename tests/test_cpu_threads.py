"""CPU thread counts: the affinity mask is respected, workers and batches computed in the caller's thread run one
torch thread, the caller keeps its own."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch

from lsr.encode.cpu_threads import on_one_thread, set_threads, start_single_threaded, usable_cpus


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_usable_cpus_follow_the_affinity_mask():
    out = _run(
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); import torch\n"
        "from lsr.encode.cpu_threads import set_threads, usable_cpus\n"
        "print(usable_cpus(), set_threads(None), torch.get_num_threads())"
    )
    assert out == "1 1 1"


def test_threads_flag_wins_and_is_checked():
    previous = torch.get_num_threads()
    try:
        assert set_threads(3) == 3 and torch.get_num_threads() == 3
        assert set_threads(None) == usable_cpus()
        with pytest.raises(ValueError, match="--threads"):
            set_threads(0)
        with pytest.raises(ValueError, match=f"--threads 100000 is more than 4 x the {usable_cpus()} CPUs"):
            set_threads(100_000)  # OpenBLAS crashed on it (exit 139)
        assert set_threads(4 * usable_cpus()) == 4 * usable_cpus()
    finally:
        torch.set_num_threads(previous)


def test_workers_run_one_thread_and_the_caller_keeps_its_count():
    torch.set_num_threads(2)
    seen = []
    lock = threading.Lock()

    def work():
        with lock:
            seen.append(torch.get_num_threads())

    for thread in start_single_threaded(work, 3):
        thread.join()
    assert seen == [1, 1, 1]
    assert torch.get_num_threads() == 2
    later = []
    fresh = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert later == [2]  # threads started afterwards get the caller's default again


def test_a_batch_in_the_callers_thread_runs_one_thread_and_the_count_comes_back_even_after_an_error():
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert on_one_thread(lambda x: (x, torch.get_num_threads()))("batch") == ("batch", 1)
        assert torch.get_num_threads() == 2

        def fail() -> None:
            raise RuntimeError("out of memory")

        with pytest.raises(RuntimeError, match="out of memory"):
            on_one_thread(fail)()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def _run_clean(code: str, **env: str) -> str:
    """``code`` in a fresh interpreter (torch not loaded) without the user's OpenMP wait settings, plus ``env``."""
    import os

    from lsr.encode.cpu_share import WAIT_POLICY_VARIABLES

    clean = {k: v for k, v in os.environ.items() if k not in WAIT_POLICY_VARIABLES}
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                          env={**clean, **env}).stdout.strip()


CHOOSE = ("import os, sys\nfrom lsr.encode.cpu_share import choose_wait_policy\n{before}"
          "line = choose_wait_policy(len(os.sched_getaffinity(0)))\n"
          "print(repr(line), os.environ.get('OMP_WAIT_POLICY'))")


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_threads_wait_passively_when_other_work_holds_a_cpu_unless_the_user_chose():
    """A busy loop on one of this process's CPUs: every thread the process would run cannot have a CPU of its own,
    so OpenMP's spinning waits would fight it (lsr train: 1.4 steps/s against 2.6 waiting passively)."""
    import os

    cpu = min(os.sched_getaffinity(0))
    busy = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        chosen = _run_clean(CHOOSE.format(before=""))
        assert chosen.startswith('"other work holds') and "wait passively" in chosen and chosen.endswith(" PASSIVE")
        assert _run_clean(CHOOSE.format(before=""), OMP_WAIT_POLICY="ACTIVE") == "None ACTIVE"  # the user's choice
        assert _run_clean(CHOOSE.format(before=""), GOMP_SPINCOUNT="1000") == "None None"
        assert _run_clean(CHOOSE.format(before="import torch\n")) == "None None"  # too late: OpenMP has read it
    finally:
        busy.kill()
        busy.wait()
