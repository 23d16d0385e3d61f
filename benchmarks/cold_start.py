"""What a fresh process waits before its first answer: `lsr search`, `lsr encode`, `lsr serve` and the Python API.

Each case runs in a new process, from spawn to its first result (a search's hits, a text's terms, the server's
``event=listening`` line), with the peak resident memory the kernel reports for it (``os.wait4``). ``--before``
runs the same cases on a checkout of older code (``PYTHONPATH``), and sentence-transformers' ``SparseEncoder``
loading the same splade-tiny folder and encoding one query is the peer for the API case. Every round runs all
versions of a case back to back, in an order flipped each round; medians over the rounds.

    git worktree add /tmp/before 1e22bf2     # before the CPU loads skipped transformers
    python benchmarks/cold_start.py --collection /tmp/nf2 --before /tmp/before             # about 5 minutes
    python benchmarks/cold_start.py --collection /tmp/nf2 --before /tmp/before --one-core-busy

The collection should have a dense leg (`lsr index` does by default), so the default hybrid search loads both models.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
QUERY = "does vitamin d deficiency raise the risk of fractures"
API_OURS = f"from lsr import SpladeEncoder; SpladeEncoder.from_pretrained('splade-tiny', device='cpu').encode_queries([{QUERY!r}])"
API_PEER = ("from sentence_transformers import SparseEncoder; from lsr.encode.models import resolve_model; "
            f"SparseEncoder(resolve_model('splade-tiny'), device='cpu').encode_query([{QUERY!r}])")


def cases(collection: str) -> dict[str, list[str]]:
    """Case name → the command line after the interpreter (``-m lsr …`` or ``-c …``)."""
    return {
        "lsr search (hybrid)": ["-m", "lsr", "search", collection, QUERY, "-k", "10"],
        "lsr search --mode sparse": ["-m", "lsr", "search", collection, QUERY, "-k", "10", "--mode", "sparse"],
        "lsr encode TEXT": ["-m", "lsr", "encode", QUERY],
        "lsr serve: listening": ["-m", "lsr", "serve", collection, "--host", "127.0.0.1", "--port", "0"],
        "Python: load + encode a query": ["-c", API_OURS],
    }


def timed(argv: list[str], env: dict[str, str], until_line: str | None) -> tuple[float, float]:
    """(seconds to exit, or to the first stderr line holding ``until_line``; peak resident MB of the process)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv], env=env, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seconds = None
    log = []
    for line in proc.stderr:
        log.append(line)
        if until_line and until_line in line:
            seconds = time.perf_counter() - start
            proc.terminate()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if seconds is None:
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{''.join(log)[-2000:]}")
    return seconds, usage.ru_maxrss / 1024


def run(args: argparse.Namespace) -> dict[str, dict[str, list[tuple[float, float]]]]:
    here = dict(os.environ)
    versions = {"now": here, **({"before": dict(here, PYTHONPATH=args.before)} if args.before else {})}
    measured: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for rnd in range(args.rounds):
        for case, argv in cases(args.collection).items():
            runs = [(name, argv, env) for name, env in versions.items()]
            if case.startswith("Python"):
                runs.append(("SparseEncoder", ["-c", API_PEER], here))
            for name, command, env in runs if rnd % 2 == 0 else runs[::-1]:
                result = timed(command, env, "event=listening" if "serve" in case else None)
                measured.setdefault(case, {}).setdefault(name, []).append(result)
                print(f"round {rnd + 1} {case:32s} {name:14s} {result[0]:6.2f} s {result[1]:6.0f} MB", flush=True)
    return measured


def report(measured: dict, args: argparse.Namespace) -> None:
    from lsr.eval.report import write_table

    names = ["before", "now", "SparseEncoder"]
    header = ["case"] + [f"{n} {unit}" for n in names for unit in ("s", "MB")]
    rows = []
    for case, by_name in measured.items():
        cells = [case]
        for name in names:
            runs = by_name.get(name)
            cells += ([f"{statistics.median(s for s, _ in runs):.2f}", f"{statistics.median(m for _, m in runs):.0f}"]
                      if runs else ["", ""])
        rows.append(cells)
    busy = " A busy loop ran on one of the cores." if args.one_core_busy else ""
    before = "-"
    if args.before:
        commit = subprocess.run(["git", "-C", args.before, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        before = f"{args.before} ({commit.stdout.strip() or 'not a git checkout'})"
    intro = (f"Fresh processes, from spawn to the first answer, median of {args.rounds} rounds (versions taking turns, "
             f"order flipped each round), and the process's peak resident memory. `before`: {before}; "
             f"collection: {args.collection}; query: {QUERY!r}.{busy}")
    name = "cold_start" + ("-one-core-busy" if args.one_core_busy else "")
    write_table(RESULTS, name, "A fresh process's first answer", intro, header, rows,
                {"rounds": args.rounds, "before": args.before, "collection": args.collection,
                 "runs": {case: {n: [{"s": s, "mb": m} for s, m in runs] for n, runs in by.items()}
                          for case, by in measured.items()}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collection", required=True, help="a collection built by `lsr index` (read only)")
    parser.add_argument("--before", help="a checkout of older code to compare with")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (default %(default)s)")
    parser.add_argument("--one-core-busy", action="store_true",
                        help="run beside a busy loop pinned to one core (results under cold_start-one-core-busy)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from encode import contention

    with contention("one core busy" if args.one_core_busy else "quiet", Path(tempfile.gettempdir())):
        measured = run(args)
    report(measured, args)


if __name__ == "__main__":
    main()
