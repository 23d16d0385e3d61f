"""Closed-loop load on `lsr serve` versus in-process search, on a SciFact collection with real queries.

For each query encoder (splade-tiny, inference-free) and each configuration (SPARSE, HYBRID,
HYBRID+PRF), C client threads (C = 1, 8, 32) each send their next query as soon as the previous
answer arrives. The same loop runs against an in-process ``Searcher`` in this process; at C = 1
the two sides take turns query by query, so a drift in machine speed hits both alike. A server
started with ``--max-batch 1`` (every request encodes on its own) measures what micro-batching
buys at C = 32, against a second micro-batching server in alternating rounds. Every level is
bounded in requests and seconds; the server binds 127.0.0.1 only.

    python benchmarks/service.py --index runs/scifact           # writes benchmarks/results/service.{json,md}
    python benchmarks/service.py --index runs/scifact --one-core-busy   # beside a busy loop: service-one-core-busy.*

Targets (issue 6): gRPC overhead ≤ 15 % of in-process p50 at C = 1; micro-batching ≥ 2× the QPS of
one-by-one encoding at C = 32; no errors; p99 ≤ 5× p50 at C = 32.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIGS = {"SPARSE": ("sparse", False), "HYBRID": ("hybrid", False), "HYBRID+PRF": ("hybrid", True)}
STAGES = ("queue", "encode", "sparse", "dense", "fuse", "prf")


@dataclass
class Level:
    side: str  # grpc | in-process | grpc-unbatched
    encoder: str
    config: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    qps: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float  # CPU time the serving process spent per request (all its threads)
    stages_ms: dict[str, float] = field(default_factory=dict)  # mean per request
    error_sample: str = ""


@dataclass
class Tally:
    """One side's requests: latencies, errors, per-stage sums, the seconds they took, CPU spent."""

    latencies: list[float] = field(default_factory=list)  # seconds
    errors: list[str] = field(default_factory=list)
    stage_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))  # seconds
    seconds: float = 0.0
    cpu: float = 0.0

    def call(self, search, worker: int, text: str) -> None:
        """Time one request; a failure is counted, not raised."""
        started = time.perf_counter()
        try:
            result = search(worker, text)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            return
        self.latencies.append(time.perf_counter() - started)
        timings = getattr(result, "timings", None) or {}  # a health check has none
        for stage in STAGES:
            self.stage_sums[stage] += timings.get(stage, 0.0)

    def add(self, other: "Tally") -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        for stage in STAGES:
            self.stage_sums[stage] += other.stage_sums[stage]
        self.seconds += other.seconds
        self.cpu += other.cpu

    def level(self, side: str, encoder: str, config: str, concurrency: int) -> Level:
        n = len(self.latencies)
        lat = np.asarray(self.latencies) * 1000.0
        level = Level(
            side, encoder, config, concurrency, n, len(self.errors), round(self.seconds, 3), round(n / self.seconds, 2),
            round(float(np.percentile(lat, 50)), 3) if n else float("nan"),
            round(float(np.percentile(lat, 99)), 3) if n else float("nan"),
            round(1000.0 * self.cpu / max(1, n), 3),
            {stage: round(1000.0 * total / max(1, n), 3) for stage, total in self.stage_sums.items()},
            self.errors[0] if self.errors else "",
        )
        print(f"{side:15s} {encoder:15s} {config:11s} c={concurrency:<3d} n={n:<5d} err={len(self.errors):<3d} "
              f"qps={level.qps:8.1f} p50={level.p50_ms:8.2f}ms p99={level.p99_ms:8.2f}ms cpu={level.cpu_ms:7.1f}ms "
              + " ".join(f"{k}={v:.1f}" for k, v in level.stages_ms.items() if v), flush=True)
        return level


def closed_loop(search, texts: list[str], concurrency: int, max_requests: int, max_seconds: float,
                pid: int | None = None) -> Tally:
    """Run ``concurrency`` workers back to back; ``search(worker, text)`` returns a SearchResult.
    ``pid``: the serving process whose CPU time is counted (``None``: this one)."""
    counter = itertools.count()
    tally = Tally()
    lock = threading.Lock()
    stop_at = time.perf_counter() + max_seconds

    def worker(w: int) -> None:
        while True:
            i = next(counter)
            if i >= max_requests or time.perf_counter() > stop_at:
                return
            mine = Tally()
            mine.call(search, w, texts[i % len(texts)])
            with lock:
                tally.add(mine)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    cpu_before, began = cpu_seconds(pid), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tally.seconds = time.perf_counter() - began
    tally.cpu = cpu_seconds(pid) - cpu_before
    return tally


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (``None``: this one), all threads."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paired_loop(searches: list, texts: list[str], max_requests: int, max_seconds: float) -> list[Tally]:
    """Concurrency 1 on several sides at once: each query goes to every side in turn, back to back.

    This VM's speed drifts by up to 2x over minutes, so timing one side and then the other compares
    two machines (the same setup measured +16% to +78% gRPC overhead in separate runs). Taking turns
    per query spreads the drift over every side alike. Each side's ``seconds`` is its busy time and
    its ``cpu`` what this process spent on its calls.
    """
    tallies = [Tally() for _ in searches]
    stop_at = time.perf_counter() + max_seconds * len(searches)
    for i in range(max_requests):
        if time.perf_counter() > stop_at:
            break
        for search, tally in zip(searches, tallies):
            cpu, started = time.process_time(), time.perf_counter()
            tally.call(search, 0, texts[i % len(texts)])
            tally.seconds += time.perf_counter() - started
            tally.cpu += time.process_time() - cpu
    return tallies


def measure(side, encoder, config, concurrency, search, texts, args, pid: int | None = None) -> Level:
    _warm_up(search, texts, concurrency)
    return closed_loop(search, texts, concurrency, args.max_requests, args.seconds, pid).level(side, encoder, config, concurrency)


def measure_paired(encoder, config, grpc_side, local_search, client, texts, args, pid: int) -> list[Level]:
    """gRPC and in-process at concurrency 1, taking turns per query (see ``paired_loop``); the gRPC
    side's CPU is the server's. A third turn times a bare health-check RPC to the same server: the
    transport's own round trip, the floor under any gRPC overhead."""
    floor = lambda w, text: client.health()  # noqa: E731
    for side in (grpc_side, local_search, floor):
        _warm_up(side, texts, 1)
    cpu_before = cpu_seconds(pid)
    remote, local, bare = paired_loop([grpc_side, local_search, floor], texts, args.max_requests, args.seconds)
    remote.cpu = cpu_seconds(pid) - cpu_before
    return [remote.level("grpc", encoder, config, 1), local.level("in-process", encoder, config, 1),
            bare.level("grpc-health", encoder, config, 1)]


def measure_alternating(encoder, config, concurrency, servers: dict, texts, args, rounds: int = 4) -> list[Level]:
    """Closed loops on several servers in alternating rounds of ``args.seconds / rounds``.

    The batching target compares two servers; measured one after the other they ran on a machine
    whose speed had drifted in between (the same comparison gave 2.15x and 1.39x in two runs).
    Short alternating rounds give both the same mix of fast and slow minutes.
    """
    mode, prf = _mode_and_prf(config)
    totals = {side: Tally() for side in servers}
    for r in range(rounds):
        rotated = texts[r * 97 % len(texts):] + texts[: r * 97 % len(texts)]
        for side, server in servers.items():
            search, clients = grpc_search(server.address, concurrency, mode, prf)
            _warm_up(search, rotated, concurrency)
            totals[side].add(closed_loop(search, rotated, concurrency, args.max_requests // rounds,
                                         args.seconds / rounds, server.proc.pid))
            for client in clients:
                client.close()
    return [tally.level(side, encoder, config, concurrency) for side, tally in totals.items()]


def _mode_and_prf(config: str):
    from lsr.search.searcher import PrfOptions

    mode, with_prf = CONFIGS[config]
    return mode, PrfOptions() if with_prf else None


def _warm_up(search, texts: list[str], concurrency: int) -> None:
    for w in range(min(concurrency, 4)):  # connections, numba, torch allocator
        search(w, texts[w])


class Server:
    """`lsr serve` as a child process on a free 127.0.0.1 port."""

    def __init__(self, index: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "lsr", "serve", str(index), "--host", "127.0.0.1", "--port", "0", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.address = None
        said: list[str] = []
        for line in self.proc.stderr:
            if "event=listening" in line:
                self.address = line.split("address=")[1].split()[0]
                break
            said = [*said[-4:], line.rstrip()]
        if self.address is None:  # its own error line says why ("... holds an unsharded collection ...")
            raise RuntimeError(f"server did not start: {' '.join(cmd)}\n" + "\n".join(said))
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()  # keep the pipe drained

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(120)


def grpc_search(address: str, concurrency: int, mode: str, prf):
    from lsr.service import Client

    clients = [Client(address) for _ in range(concurrency)]
    return (lambda w, text: clients[w].search(text, k=10, mode=mode, prf=prf)), clients


def run_encoder(encoder: str, args, texts: list[str], levels: list[Level]) -> None:
    from lsr.search.searcher import Searcher

    flag = "splade" if encoder == "splade-tiny" else "inference-free"
    searcher = Searcher.open(args.index, query_encoder=flag, threads=args.threads)
    server = Server(args.index, "--query-encoder", flag, "--threads", str(args.threads))
    try:
        for config in args.configs:
            mode, prf = _mode_and_prf(config)
            local = lambda w, text, mode=mode, prf=prf: searcher.search(text, k=10, mode=mode, prf=prf)  # noqa: E731
            for c in args.concurrency:
                search, clients = grpc_search(server.address, c, mode, prf)
                if c == 1:  # the overhead target: both sides in one interleaved loop
                    levels += measure_paired(encoder, config, search, local, clients[0], texts, args, server.proc.pid)
                else:
                    levels.append(measure("grpc", encoder, config, c, search, texts, args, server.proc.pid))
                    levels.append(measure("in-process", encoder, config, c, local, texts, args))
                for client in clients:
                    client.close()
    finally:
        print(f"server exit code {server.stop()}")
    if encoder != "splade-tiny":
        return
    # Micro-batching against one-by-one encoding (--max-batch 1) at the highest concurrency, the
    # two servers side by side in alternating rounds.
    servers = {"grpc-batched": Server(args.index, "--query-encoder", flag, "--threads", str(args.threads)),
               "grpc-unbatched": Server(args.index, "--query-encoder", flag, "--max-batch", "1", "--threads", str(args.threads))}
    try:
        for config in [c for c in ("SPARSE", "HYBRID") if c in args.configs]:
            levels += measure_alternating(encoder, config, max(args.concurrency), servers, texts, args)
    finally:
        print("batching comparison exit codes", [server.stop() for server in servers.values()])


def find(levels: list[Level], side: str, encoder: str, config: str, c: int) -> Level | None:
    return next((lv for lv in levels if (lv.side, lv.encoder, lv.config, lv.concurrency) == (side, encoder, config, c)), None)


def targets(levels: list[Level], concurrency: list[int]) -> list[dict]:
    lo, hi = min(concurrency), max(concurrency)
    out = []
    for grpc_level in (lv for lv in levels if lv.side == "grpc" and lv.concurrency == lo):
        local = find(levels, "in-process", grpc_level.encoder, grpc_level.config, lo)
        bare = find(levels, "grpc-health", grpc_level.encoder, grpc_level.config, lo)
        overhead = (grpc_level.p50_ms - local.p50_ms) / local.p50_ms
        floor = f"; a bare health-check RPC: {bare.p50_ms:.2f} ms = {100 * bare.p50_ms / local.p50_ms:.0f}%" if bare else ""
        out.append({"target": "gRPC overhead at c=1 ≤ 15%", "case": f"{grpc_level.encoder} {grpc_level.config}",
                    "value": f"{100 * overhead:+.1f}% ({grpc_level.p50_ms:.2f} vs {local.p50_ms:.2f} ms p50{floor})",
                    "met": overhead <= 0.15})
    for unbatched in (lv for lv in levels if lv.side == "grpc-unbatched"):
        batched = find(levels, "grpc-batched", unbatched.encoder, unbatched.config, hi)
        ratio = batched.qps / unbatched.qps
        out.append({"target": f"micro-batching ≥ 2× one-by-one QPS at c={hi}", "case": f"{batched.encoder} {batched.config}",
                    "value": f"{ratio:.2f}× ({batched.qps:.1f} vs {unbatched.qps:.1f} QPS; CPU/request "
                             f"{batched.cpu_ms:.1f} vs {unbatched.cpu_ms:.1f} ms)", "met": ratio >= 2.0})
    errors = sum(lv.errors for lv in levels)
    out.append({"target": "no errors at any level", "case": "all", "value": str(errors), "met": errors == 0})
    for lv in (lv for lv in levels if lv.side == "grpc" and lv.concurrency == hi):
        ratio = lv.p99_ms / lv.p50_ms
        out.append({"target": f"p99 ≤ 5× p50 at c={hi}", "case": f"{lv.encoder} {lv.config}",
                    "value": f"{ratio:.2f}× ({lv.p99_ms:.1f} / {lv.p50_ms:.1f} ms)", "met": ratio <= 5.0})
    return out


def machine(threads: int) -> dict:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": threads, "platform": platform.platform(),
            "load_average_at_start": os.getloadavg()}


def write_markdown(path: Path, report: dict) -> None:
    lines = [
        "# gRPC service benchmark", "",
        f"Collection `{report['index']}` ({report['num_docs']} docs), {report['num_queries']} real SciFact queries, k=10. "
        f"Closed loop, ≤{report['max_requests']} requests or {report['seconds']} s per level. At c=1 the gRPC and in-process "
        "sides take turns query by query in one loop (this VM's speed drifts by up to 2× over minutes; separate loops "
        "measured the same overhead at +16% to +78%), and their QPS is requests over their own busy time; a third turn, "
        "`grpc-health`, times a bare health-check RPC to the same server, the transport's floor. The batching "
        "target compares `grpc-batched` with `grpc-unbatched` (`--max-batch 1`: every text encoded alone, as many at once as the server has cores), two servers measured in 4 alternating rounds. "
        f"Machine: {report['machine']['cores']} cores, {report['machine']['platform']}, torch {report['machine']['torch']} "
        f"({report['machine']['torch_threads']} thread per encode call), "
        f"load average at start {report['machine']['load_average_at_start'][0]:.1f}."
        + (" A busy loop pinned to one core ran throughout (`--one-core-busy`)." if report.get("one_core_busy") else ""),
        "",
        "Stage columns are the mean per request in ms as the server (or in-process Searcher) timed them; "
        "`queue` is time waiting for a micro-batch. `CPU ms` is the serving process's CPU time per request "
        "(all threads; in-process rows include the load generator).", "",
        "| side | encoder | config | c | requests | errors | QPS | p50 ms | p99 ms | CPU ms | " + " | ".join(STAGES) + " |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(STAGES),
    ]
    for lv in report["levels"]:
        lines.append(f"| {lv['side']} | {lv['encoder']} | {lv['config']} | {lv['concurrency']} | {lv['requests']} | {lv['errors']} "
                     f"| {lv['qps']:.1f} | {lv['p50_ms']:.2f} | {lv['p99_ms']:.2f} | {lv['cpu_ms']:.1f} | "
                     + " | ".join(f"{lv['stages_ms'].get(s, 0.0):.2f}" for s in STAGES) + " |")
    lines += ["", "## Targets", "", "| target | case | measured | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['case']} | {t['value']} | {'yes' if t['met'] else '**no**'} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="a collection from `lsr index` (SciFact, with --dense minilm)")
    parser.add_argument("--beir", type=Path, default=Path(os.environ.get("LSR_BEIR_DIR", REPO.parent / "shared/data/beir")) / "scifact.tar.gz",
                        help="the BEIR archive whose test queries are sent")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--encoders", type=lambda s: s.split(","), default=["splade-tiny", "inference-free"])
    parser.add_argument("--configs", type=lambda s: s.split(","), default=list(CONFIGS), help="subset of " + ",".join(CONFIGS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads, server and in-process alike (default 1)")
    parser.add_argument("--max-requests", type=int, default=400, help="requests per level at most")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per level at most")
    parser.add_argument("--one-core-busy", action="store_true",
                        help="run beside a busy loop pinned to one core (default --out: service-one-core-busy.json)")
    parser.add_argument("--out", type=Path, help="results JSON, the table beside it (default: results/service.json)")
    args = parser.parse_args()
    args.out = args.out or RESULTS / ("service-one-core-busy.json" if args.one_core_busy else "service.json")

    from encode import contention
    from lsr.eval.datasets import load_beir

    dataset = load_beir(args.beir, splits=("test",))
    texts = [dataset.queries[q] for q in dataset.qrels["test"]]
    report_machine = machine(args.threads)
    levels: list[Level] = []
    with contention("one core busy" if args.one_core_busy else "quiet", Path(tempfile.gettempdir())):
        for encoder in args.encoders:
            run_encoder(encoder, args, texts, levels)
    num_docs = json.loads((args.index / "lsr.json").read_text())["n_docs"]
    report = {
        "index": str(args.index), "num_docs": num_docs, "num_queries": len(texts), "max_requests": args.max_requests,
        "seconds": args.seconds, "machine": report_machine, "levels": [asdict(lv) for lv in levels],
        "targets": targets(levels, args.concurrency), "one_core_busy": args.one_core_busy,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    write_markdown(args.out.with_suffix(".md"), report)
    print()
    for t in report["targets"]:
        print(f"{'met ' if t['met'] else 'MISS'}  {t['target']:45s} {t['case']:30s} {t['value']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
