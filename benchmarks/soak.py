"""Soak `lsr serve` under writes and faults at the sizes of issue 13, against 127.0.0.1 only.

Phases, each bounded in count and seconds:
  searches  N no-write HYBRID/PRF/explain/DENSE searches from 12 threads, 15 s deadline each
  race      12 threads search one query (HYBRID, PRF before/both, explain, text) while its top
            document is deleted and upserted again, C cycles
  kill      a writer streams upserts and deletes; the server is killed (SIGKILL) at K random
            moments and restarted; afterwards every acknowledged write must be there, the stores
            must agree (`lsr verify`) and every remaining id must be deletable
  batch     one SearchBatch of 500 texts × k=1000 with text: refused, and the server's RSS growth
  files     a byte flip and a truncation in every file of the collection: found by `lsr verify`
            and by opening, each naming the file; then `lsr repair` after deleting the inverted
            index and the dense index's saved rows

    python benchmarks/soak.py --index runs/nfcorpus      # writes benchmarks/results/soak.{json,md}

The collection is copied first; the original is never written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SEARCHES = [("hybrid", "before", True), ("hybrid", "both", True), ("sparse", "after", True), ("dense", None, False)]


class Server:
    """`lsr serve` as a child process on a free 127.0.0.1 port; stderr kept for the report."""

    def __init__(self, index: Path) -> None:
        cmd = [sys.executable, "-m", "lsr", "serve", str(index), "--host", "127.0.0.1", "--port", "0"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        for line in self.proc.stderr:
            self.lines.append(line)
            if "event=listening" in line:
                self.address = line.split("address=")[1].split()[0]
                break
        else:
            raise RuntimeError(f"server did not start:\n{''.join(self.lines[-20:])}")
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()

    def client(self, **kwargs):
        from lsr.service import Client

        return Client(self.address, **kwargs)

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(60)


def _search_kwargs(mode: str, interpolate: str | None, explain: bool) -> dict:
    from lsr.search.searcher import PrfOptions

    return {"mode": mode, "prf": PrfOptions(interpolate=interpolate) if interpolate else None, "explain": explain}


def phase_searches(server: Server, queries: list[str], total: int, threads: int, seconds: float) -> dict:
    import grpc

    errors: list[str] = []
    latencies: list[float] = []
    counter = iter(range(total))
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(w: int) -> None:
        with server.client() as c:
            while time.monotonic() < stop_at:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                started = time.perf_counter()
                try:
                    c.search(queries[i % len(queries)], k=10, timeout=15, **_search_kwargs(*SEARCHES[i % len(SEARCHES)]))
                    latencies.append(time.perf_counter() - started)
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}"[:200])

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    hangs = sum("DEADLINE_EXCEEDED" in e for e in errors)
    return {"target": total, "requests": len(latencies) + len(errors), "errors": len(errors), "hangs": hangs,
            "seconds": round(time.monotonic() - started, 1), "p50_ms": round(1000 * float(np.median(latencies)), 1),
            "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 1), "error_sample": errors[:3],
            "met": len(errors) == 0 and len(latencies) == total}


def phase_race(server: Server, query: str, cycles: int, threads: int) -> dict:
    import grpc

    with server.client() as c:
        top = c.search(query, k=1, mode="hybrid", include_text=True).hits[0]
    stop = threading.Event()
    errors: list[str] = []
    done = [0]

    def searcher(w: int) -> None:
        kwargs = _search_kwargs("hybrid", "before" if w % 2 else "both", True)
        with server.client() as c:
            while not stop.is_set():
                try:
                    c.search(query, k=10, include_text=True, timeout=30, **kwargs)
                    done[0] += 1
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}"[:200])

    write_errors = []
    with ThreadPoolExecutor(threads) as pool:
        running = [pool.submit(searcher, w) for w in range(threads)]
        with server.client() as writer:
            for _ in range(cycles):
                try:
                    writer.delete([top.doc_id])
                    writer.upsert([top.doc_id], [top.text])
                except grpc.RpcError as exc:
                    write_errors.append(f"{exc.code().name}: {exc.details()}"[:200])
        stop.set()
        for f in running:
            f.result()
    return {"cycles": cycles, "searches": done[0], "errors": len(errors) + len(write_errors),
            "error_sample": (errors + write_errors)[:3], "met": not errors and not write_errors}


def phase_kill(path: Path, moments: int, seed: int) -> dict:
    """Upserts and deletes until SIGKILL at a random moment, K times; then check what survived."""
    import grpc

    from lsr.ingest.verify import verify_collection

    rng = random.Random(seed)
    states: dict[str, set] = {}  # id → acceptable stored texts (None: absent); two while a write was cut
    acked = 0
    for moment in range(moments):
        server = Server(path)
        halt = threading.Event()

        def writer() -> None:
            nonlocal acked
            with server.client(timeout=30) as c:
                n = 0
                while not halt.is_set():
                    doc_id = f"soak-{rng.randrange(40)}"
                    before = states.get(doc_id, {None})
                    text = None if (None not in before and rng.random() < 0.3) else f"soak write {moment}.{n} zinc quokka"
                    try:
                        c.upsert([doc_id], [text]) if text else c.delete([doc_id])
                    except grpc.RpcError:
                        states[doc_id] = before | {text}
                        return
                    states[doc_id] = {text}
                    acked += 1
                    n += 1

        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(rng.uniform(0.2, 3.0))
        server.kill()
        halt.set()
        thread.join(60)
    problems_before_open = verify_collection(path).problems
    server = Server(path)
    try:
        with server.client() as c:
            hits = c.search("soak write zinc quokka", k=1000, include_text=True).hits
            stored = {h.doc_id: h.text for h in hits if h.doc_id.startswith("soak-")}
            lost = [d for d, ok in states.items() if stored.get(d) not in ok]
            undeletable = c.delete(list(stored)) if stored else []
    finally:
        server.kill()
    problems = verify_collection(path).problems
    return {"kills": moments, "acked_writes": acked, "lost": len(lost), "lost_sample": lost[:3],
            "verify_before_reopen": problems_before_open[:3], "disagreeing_after": len(problems),
            "undeletable": len(undeletable), "met": not lost and not problems and not undeletable}


def phase_batch(server: Server, queries: list[str]) -> dict:
    import grpc

    from lsr.service import search_pb2 as pb
    from lsr.service import search_pb2_grpc

    rss_before = server.rss_mb()
    stub = search_pb2_grpc.SearchServiceStub(grpc.insecure_channel(server.address))
    started = time.perf_counter()
    try:
        stub.SearchBatch(pb.SearchBatchRequest(texts=(queries * 500)[:500], k=1000, include_text=True), timeout=300)
        code, details = "OK", ""
    except grpc.RpcError as exc:
        code, details = exc.code().name, exc.details()
    seconds = time.perf_counter() - started
    growth = server.rss_mb() - rss_before
    return {"status": code, "details": details, "seconds": round(seconds, 3), "rss_growth_mb": round(growth, 1),
            "met": code == "RESOURCE_EXHAUSTED" and growth <= 100}


def phase_files(path: Path, scratch: Path) -> dict:
    """Damage each file in place (restored after), so the collection need not be copied per damage."""
    from lsr.cli.main import main as lsr_main
    from lsr.files import CorruptFileError
    from lsr.ingest.collection import Collection
    from lsr.ingest.verify import verify_collection

    server = Server(path)  # one upsert and one delete first, so the journal and later versions exist
    try:
        with server.client() as c:
            c.upsert(["soak-file"], ["a document written before the damage"])
            c.delete([c.search("vitamin", k=1).hits[0].doc_id])
    finally:
        server.kill()
    files = sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file() and p.stat().st_size > 0)
    damages = detected = named = 0
    missed = []
    for relative in files:
        target = path / relative
        original = target.read_bytes()
        for kind in ("flip", "truncate"):
            data = bytearray(original)
            if kind == "flip":
                data[len(data) // 2] ^= 0xFF
            else:
                data = data[: len(data) // 2]
            target.write_bytes(bytes(data))
            damages += 1
            problems = verify_collection(path).problems
            try:
                Collection.open(path)
                opened = "opened"
            except (CorruptFileError, ValueError, FileNotFoundError) as exc:
                opened = str(exc)
            detected += bool(problems) and opened != "opened"
            if any(relative.name in p for p in problems) and relative.name in opened:
                named += 1
            else:
                missed.append(f"{kind} {relative}")
            target.write_bytes(original)
    intact = not verify_collection(path).problems
    copy = shutil.copytree(path, scratch / "repaired")
    shutil.rmtree(copy / "sparse")
    rows = [*(copy / "dense").glob("vectors-*.npy"), *(copy / "dense").glob("faiss-*.index")]  # flat, HNSW
    if not rows:
        raise SystemExit(f"{copy / 'dense'} holds no saved rows to delete")
    for saved in rows:
        saved.unlink()
    with open(os.devnull, "w") as quiet:
        stdout, sys.stdout = sys.stdout, quiet
        try:
            repaired = lsr_main(["repair", str(copy)]) == 0 and lsr_main(["verify", str(copy)]) == 0
        finally:
            sys.stdout = stdout
    return {"files": len(files), "damages": damages, "detected": detected, "named": named, "missed": missed[:5],
            "intact_after_restore": intact, "repair_restores_deleted_indexes": repaired,
            "met": detected == named == damages and intact and repaired}


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average_at_start": os.getloadavg(),
            "note": "shared with other developers' jobs during the run (timings are not benchmarks)"}


def machine_line(meta: dict) -> str:
    """The "Machine: ..." line of a results table, from ``machine()``."""
    return (f"Machine: {meta['cpu']}, {meta['cores']} cores, Python {meta['python']}, load average at start "
            f"{' '.join(f'{x:.1f}' for x in meta['load_average_at_start'])}.")


def write_markdown(path: Path, report: dict) -> None:
    m = report["machine"]
    p = report["phases"]
    rows = [
        ("searches", f"{p['searches']['target']:,} no-write hybrid/PRF/explain/dense searches, 12 threads",
         f"{p['searches']['requests']:,} done, {p['searches']['errors']} errors, {p['searches']['hangs']} hangs; "
         f"p50 {p['searches']['p50_ms']} ms, p99 {p['searches']['p99_ms']} ms, {p['searches']['seconds']} s",
         p["searches"]["met"]),
        ("race", f"delete/re-upsert of the top hit, {p['race']['cycles']} cycles, 12 searching threads",
         f"{p['race']['searches']:,} searches, {p['race']['errors']} errors", p["race"]["met"]),
        ("kill", f"SIGKILL at {p['kill']['kills']} random moments during upserts/deletes",
         f"{p['kill']['acked_writes']:,} acked writes, {p['kill']['lost']} lost, {p['kill']['disagreeing_after']} "
         f"store disagreements, {p['kill']['undeletable']} undeletable", p["kill"]["met"]),
        ("batch", "SearchBatch 500 texts × k=1000 with text",
         f"{p['batch']['status']} in {p['batch']['seconds']} s, RSS +{p['batch']['rss_growth_mb']} MB", p["batch"]["met"]),
        ("files", f"byte flip + truncation in each of {p['files']['files']} files; repair after deleting both indexes",
         f"{p['files']['detected']}/{p['files']['damages']} detected, {p['files']['named']} naming the file; "
         f"repair {'restored' if p['files']['repair_restores_deleted_indexes'] else 'FAILED'}", p["files"]["met"]),
    ]
    lines = [
        "# Soak: the service under writes and faults (issue 13)", "",
        f"Collection `{report['index']}` ({report['num_docs']:,} docs, copied before writing), server on 127.0.0.1. "
        f"Machine: {m['cores']} cores, {m['platform']}, Python {m['python']}, load average at start "
        f"{m['load_average_at_start'][0]:.1f}; {m['note']}. Total {report['seconds']:.0f} s.", "",
        "| phase | what | result | met |", "|---|---|---|---|",
    ] + [f"| {a} | {b} | {c} | {'yes' if d else '**no**'} |" for a, b, c, d in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    beir = Path(os.environ.get("LSR_BEIR_DIR", REPO.parent / "shared/data/beir"))
    for flag, kind, default, what in (
        ("--index", Path, None, "a collection from `lsr index` with --dense minilm (required)"),
        ("--beir", Path, beir / "nfcorpus.tar.gz", "the BEIR archive whose queries are sent"),
        ("--searches", int, 10_000, "no-write searches in the first phase"),
        ("--search-seconds", float, 1200.0, "bound on the searches phase"),
        ("--cycles", int, 20, "delete/re-upsert cycles in the race phase"),
        ("--kills", int, 20, "SIGKILLs in the kill phase"),
        ("--seed", int, 13, "random seed of the kill phase"),
        ("--out", Path, RESULTS / "soak.json", "where the JSON goes (the Markdown goes beside it)"),
    ):
        parser.add_argument(flag, type=kind, default=default, required=default is None, help=what)
    args = parser.parse_args()

    from lsr.eval.datasets import load_beir
    from lsr.files import read_sealed_json

    queries = list(load_beir(args.beir).queries.values())
    report = {"index": str(args.index), "num_docs": read_sealed_json(args.index / "lsr.json")["n_docs"],
              "machine": machine(), "phases": {}}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lsr-soak-") as tmp:
        work = Path(tmp) / "col"
        shutil.copytree(args.index, work)
        server = Server(work)
        try:
            print("searches ...", flush=True)
            report["phases"]["searches"] = phase_searches(server, queries, args.searches, 12, args.search_seconds)
            print("race ...", flush=True)
            report["phases"]["race"] = phase_race(server, queries[0], args.cycles, 12)
            print("batch ...", flush=True)
            report["phases"]["batch"] = phase_batch(server, queries)
        finally:
            server.kill()
        print("kill ...", flush=True)
        report["phases"]["kill"] = phase_kill(work, args.kills, args.seed)
        print("files ...", flush=True)
        fresh = shutil.copytree(args.index, Path(tmp) / "files")
        report["phases"]["files"] = phase_files(fresh, Path(tmp))
    report["seconds"] = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    write_markdown(args.out.with_suffix(".md"), report)
    print(args.out.with_suffix(".md").read_text())
    return 0 if all(phase["met"] for phase in report["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
