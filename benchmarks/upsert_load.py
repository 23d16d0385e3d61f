"""Searching while clients upsert through the same server: write throughput, search latency and server memory.

One `lsr serve` on a copy of a small SciFact collection; ``--streams`` clients each send ``--rounds`` Upsert
streams of ``--docs`` SciFact documents (one atomic write each) while one client searches (sparse, k = 10) in a
closed loop with a 50 ms pause. Reported: documents upserted per second, the searches' p50/p90 latency meanwhile,
and the server's RSS before, at its peak and 2 s after the last write (upserts encode in document slots of their
own, and the last one out hands what the encodes freed back to the system; before that, 8 streams on 2 cores took a
search p50 of 41-43 ms and left the server at 2.1-2.2 GB; `lsr serve` keeps one malloc arena per core, without which
the peak was 3.0 GB).

    lsr index ../shared/data/beir/scifact.tar.gz /tmp/sci300 --limit 300
    python benchmarks/upsert_load.py /tmp/sci300           # about 2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak import RESULTS, Server, machine, machine_line  # noqa: E402

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "beir" / "scifact.tar.gz"


def scifact_texts(limit: int) -> list[str]:
    with tarfile.open(SCIFACT) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("corpus.jsonl"))
        lines = archive.extractfile(member).read().decode().splitlines()
    return [json.loads(line)["text"] for line in lines[:limit]]


def run(collection: Path, streams: int, rounds: int, docs: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        served = Path(scratch) / "col"
        shutil.copytree(collection, served)
        server = Server(served)
        try:
            texts = scifact_texts(2000)
            rss_before, peak, stop, latencies = server.rss_mb(), [0.0], threading.Event(), []

            def search() -> None:
                with server.client(timeout=120) as client:
                    while not stop.is_set():
                        started = time.perf_counter()
                        client.search("vitamin d deficiency and heart disease", 10, mode="sparse")
                        latencies.append(1000 * (time.perf_counter() - started))
                        peak[0] = max(peak[0], server.rss_mb())
                        time.sleep(0.05)

            def upsert(stream: int) -> None:
                with server.client(timeout=600) as client:
                    for r in range(rounds):
                        start = (stream * rounds + r) * docs % (len(texts) - docs)
                        client.upsert([f"load-{stream}-{r}-{i}" for i in range(docs)], texts[start:start + docs])

            searcher = threading.Thread(target=search)
            searcher.start()
            started = time.perf_counter()
            with ThreadPoolExecutor(streams) as pool:
                list(pool.map(upsert, range(streams)))
            seconds = time.perf_counter() - started
            stop.set()
            searcher.join()
            time.sleep(2.0)
            ordered = sorted(latencies)
            return {"streams": streams, "rounds": rounds, "docs": docs, "seconds": round(seconds, 1),
                    "docs_per_s": round(streams * rounds * docs / seconds, 1), "searches": len(ordered),
                    "search_p50_ms": round(statistics.median(ordered), 1),
                    "search_p90_ms": round(ordered[int(0.9 * len(ordered))], 1),
                    "rss_mb_before": round(rss_before), "rss_mb_peak": round(max(peak[0], server.rss_mb())),
                    "rss_mb_after": round(server.rss_mb())}
        finally:
            server.kill()


def write(rows: list[dict], meta: dict, name: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Searching while clients upsert", "",
        "One `lsr serve` (splade-tiny + MiniLM + BM25, SciFact); `streams` clients each send `rounds` Upsert streams "
        "of `docs` SciFact documents while one client searches (sparse, k = 10) with a 50 ms pause. RSS: the "
        "server's, before, at its peak, and 2 s after the last write. `python benchmarks/upsert_load.py` "
        "reproduces it. Before upserts had encode slots of their own (8 streams, same machine, a /tmp A/B): "
        "33-34 documents/s, search p50 41-43 ms, p90 83-90 ms, RSS 2.1-2.2 GB after; with glibc's default malloc "
        "arenas (8 per core, not `lsr serve`'s one) the 8-stream peak was 3.0 GB.", "",
        machine_line(meta), "",
        "| streams | docs/s | searches | search p50 ms | search p90 ms | RSS MB before → peak → after |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['streams']} | {r['docs_per_s']} | {r['searches']:,} | {r['search_p50_ms']} | "
                     f"{r['search_p90_ms']} | {r['rss_mb_before']} → {r['rss_mb_peak']} → {r['rss_mb_after']} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("collection", type=Path, help="a built collection to copy and serve (lsr index ... --limit 300)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--docs", type=int, default=64)
    args = parser.parse_args()
    meta = machine()
    rows = [run(args.collection, streams, args.rounds, args.docs) for streams in args.streams]
    write(rows, meta, "upsert_load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
