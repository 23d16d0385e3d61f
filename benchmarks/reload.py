"""A collection indexed anew under its server: what searching clients see, our reload against a restart.

Clients search in closed loops (sparse, splade-tiny) while a new build of the collection is made from
another slice of SciFact, a few times in a row. ``reload``: `lsr index --overwrite` into the served folder,
one `lsr serve` throughout, which swaps each build in by itself. ``restart``: what an operator did before
it, building into a new folder beside the served one, then stopping the server (SIGTERM) and starting one
on the new folder. For each: searches answered and failed, the time from a build's end (its lsr.json
written) until searches return its documents, p50/p99 latency, and the server's memory after the last build
against before the first.

    python benchmarks/reload.py            # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak import RESULTS, Server, machine, machine_line  # noqa: E402

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "beir" / "scifact.tar.gz"
QUERIES = ["vitamin d fractures", "statins muscle pain", "cancer stem cells", "antibiotic resistance",
           "obesity insulin", "dna methylation", "blood pressure", "smoking lung"]


class Clients:
    """``n`` threads searching in closed loops; each answer's latency and doc ids, each failure's time."""

    def __init__(self, server: Server, n: int) -> None:
        self.server, self.stop = server, threading.Event()
        self.answers: list[tuple[float, float, set[str]]] = []  # (when, wall clock; seconds; doc ids)
        self.failures: list[float] = []
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(n)]
        for thread in self.threads:
            thread.start()

    def _loop(self, i: int) -> None:
        while not self.stop.is_set():
            server = self.server  # a restart replaces it
            try:
                with server.client(timeout=5) as client:
                    while not self.stop.is_set() and server is self.server:
                        started = time.perf_counter()
                        hits = client.search(QUERIES[i % len(QUERIES)], k=10, mode="sparse").hits
                        self.answers.append((time.time(), time.perf_counter() - started, {hit.doc_id for hit in hits}))
            except Exception:  # noqa: BLE001 - refused, unavailable, gone: counted
                self.failures.append(time.time())
                time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def build(collection: Path, skip: int, docs: int, overwrite: bool) -> tuple[float, set[str]]:
    """Index ``docs`` SciFact documents after the first ``skip`` into ``collection``; (when its lsr.json was written,
    wall clock; their ids)."""
    corpus = Path(tempfile.mkdtemp()) / "slice.jsonl"
    subprocess.run([sys.executable, "-c", _SLICE, str(SCIFACT), str(corpus), str(skip), str(docs)], check=True)
    ids = {json.loads(line)["_id"] for line in corpus.read_text().splitlines()}
    subprocess.run([sys.executable, "-m", "lsr", "index", str(corpus), str(collection), "--dense", "none",
                    "--max-length", "128", "--quiet", *(["--overwrite"] if overwrite else [])], check=True,
                   stdout=subprocess.DEVNULL)
    return (collection / "lsr.json").stat().st_mtime, ids


_SLICE = """
import sys
from lsr.eval.datasets import load_beir
import json
corpus = load_beir(sys.argv[1]).corpus
skip, n = int(sys.argv[3]), int(sys.argv[4])
with open(sys.argv[2], "w") as out:
    for doc_id in list(corpus)[skip : skip + n]:
        out.write(json.dumps({"_id": doc_id, **corpus[doc_id]}) + "\\n")
"""


def run(way: str, builds: int, docs: int, clients: int) -> dict:
    folder = Path(tempfile.mkdtemp())
    build(folder / "col-0", 0, docs, overwrite=False)
    server = Server(folder / "col-0")
    rss_before = server.rss_mb()
    searching = Clients(server, clients)
    time.sleep(3)
    served_after = []
    for n in range(1, builds + 1):
        if way == "reload":
            ended, ids = build(folder / "col-0", n * docs, docs, overwrite=True)
        else:
            ended, ids = build(folder / f"col-{n}", n * docs, docs, overwrite=False)
            server.proc.terminate()
            server.proc.wait(60)
            server = Server(folder / f"col-{n}")
            searching.server = server
        while not any(when > ended and hits and hits <= ids for when, _, hits in searching.answers[-50:]):
            time.sleep(0.05)
        served_after.append(next(when for when, _, hits in searching.answers if when > ended and hits and hits <= ids)
                            - ended)
        time.sleep(2)
    searching.close()
    rss_after = server.rss_mb()
    server.kill()
    latencies = sorted(seconds for _, seconds, _ in searching.answers)
    return {"way": way, "builds": builds, "docs": docs, "clients": clients, "answered": len(latencies),
            "failed": len(searching.failures), "new_build_served_after_s": [round(s, 2) for s in served_after],
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "rss_mb_before": round(rss_before), "rss_mb_after": round(rss_after)}


def write(rows: list[dict], meta: dict, one_core_busy: bool) -> None:
    name = "reload-one-core-busy" if one_core_busy else "reload"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": meta, "one_core_busy": one_core_busy, "rows": rows},
                                                     indent=2) + "\n")
    lines = [
        "# A collection indexed anew under its server" + (", one core busy" if one_core_busy else ""), "",
        f"{rows[0]['clients']} clients search (sparse, splade-tiny, k = 10) in closed loops while `lsr index` "
        f"makes a new build {rows[0]['builds']} times, each from another {rows[0]['docs']} SciFact documents "
        "(`--dense none`, 128 tokens). `reload`: `lsr index --overwrite` of the served folder, one `lsr serve` "
        "throughout, swapping each build in by itself. `restart`: the build made in a new folder, then the server "
        "stopped (SIGTERM) and one started on it. `served after`: seconds from a build's end (its lsr.json written) "
        "to the first answer holding only its documents. `failed`: searches refused or unanswered. "
        "`python benchmarks/reload.py` reproduces it"
        + (" (`--one-core-busy`: a busy loop pinned to one of the two cores ran throughout)." if one_core_busy else "."),
        "", machine_line(meta), "",
        "| way | answered | failed | served after (s) | p50 ms | p99 ms | server RSS MB, first → last |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['way']} | {r['answered']:,} | {r['failed']:,} | {', '.join(map(str, r['new_build_served_after_s']))} "
                     f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['rss_mb_before']} → {r['rss_mb_after']} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--builds", type=int, default=3)
    parser.add_argument("--docs", type=int, default=300, help="documents a build (default 300)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--one-core-busy", action="store_true",
                        help="run beside a busy loop pinned to one core (results: reload-one-core-busy.*)")
    args = parser.parse_args()
    from encode import contention

    meta = machine()
    with contention("one core busy" if args.one_core_busy else "quiet", Path(tempfile.gettempdir())):
        rows = [run(way, args.builds, args.docs, args.clients) for way in ("reload", "restart")]
    write(rows, meta, args.one_core_busy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
