"""Search latency through the sharded coordinator (1, 2, 4 shards) against one plain `lsr serve`.

A synthetic collection (``synth.synthetic_docs``: term counts, document frequencies and weights
drawn from real splade-tiny document vectors) is indexed from a pre-encoded vectors file four
times: unsharded, and with ``--shards 1``, ``2`` and ``4``. Each is served by its own `lsr serve`
on 127.0.0.1; the coordinators' shard servers share one local Ray instance that this script
starts (and stops). Real SciFact test queries are sent in SPARSE mode, k=10, in closed loops at
concurrency 1 and 32 (``benchmarks/service.py``'s loop), the four servers taking turns in short
alternating rounds so that a drift in machine speed (other jobs on shared cores) hits all alike.

    python benchmarks/scale_serve.py                     # the issue's 1M documents
    python benchmarks/scale_serve.py --docs 20000 --seconds 4 --note "quick run, shared cores"

Writes benchmarks/results/scale_serve.{json,md}. Built collections are cached under
``$LSR_BENCH_CACHE`` (default ``~/.cache/lsr/bench``), keyed by size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_vectors import cache_dir  # noqa: E402
from service import Level, Server, Tally, closed_loop, grpc_search, _warm_up  # noqa: E402
from synth import synthetic_docs  # noqa: E402

from lsr.sparse import SparseBatch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARDS = (1, 2, 4)
SHARD_CPUS = 0.25  # every shard server of every coordinator fits one small Ray instance


def calibration(beir: Path, n_docs: int) -> SparseBatch:
    """Real splade-tiny vectors of the first ``n_docs`` SciFact documents (cached: encoding takes a while)."""
    path = cache_dir() / f"scifact-calibration-{n_docs}.parquet"
    if not path.exists():
        from lsr.encode.splade import SpladeEncoder
        from lsr.eval.datasets import load_beir

        data = load_beir(beir, splits=("test",))
        ids = list(data.corpus)[:n_docs]
        encoder = SpladeEncoder.from_pretrained("splade-tiny", device="cpu")
        encoder.encode_documents(data.doc_texts(ids), batch_size=32).write_parquet(path, ids)
    return SparseBatch.read_parquet(path)[0]


def build_collections(args) -> dict[str, Path]:
    """The synthetic vectors file, then one collection per side (cached by size)."""
    from lsr.ingest.indexing import IndexOptions, build_collection

    root = cache_dir() / f"scale-serve-{args.docs}"
    root.mkdir(parents=True, exist_ok=True)
    vectors = root / "vectors.parquet"
    if not vectors.exists():
        docs = synthetic_docs(calibration(args.beir, args.calibrate_docs), args.docs, seed=0)
        docs.write_parquet(vectors, [f"d{i}" for i in range(args.docs)])
    sides = {"plain": (root / "plain", 1), **{f"{n} shard{'s' if n > 1 else ''}": (root / f"shards-{n}", n) for n in SHARDS}}
    for name, (path, shards) in sides.items():
        started = time.perf_counter()
        if shards == 1 and name != "plain":  # `--shards 1` builds a plain collection; the coordinator needs a map
            one_shard(root / "plain", path)
        else:
            build_collection(vectors, path, IndexOptions(pre_encoded=True, dense_model=None, bm25=False, shards=shards),
                             resume=path.exists(), progress=False)
        print(f"{name}: {path} ready in {time.perf_counter() - started:.1f}s", flush=True)
    return {name: path for name, (path, _) in sides.items()}


def one_shard(plain: Path, out: Path) -> None:
    """A sharded collection of one shard: a copy of the plain one as ``shard-000``, its lsr.json saying it is shard 0
    of 1 (a shard folder holding an unsharded collection is refused as misplaced), then the map."""
    from lsr.files import sealed, write_json_atomic
    from lsr.ingest.layout import META_FILE
    from lsr.ingest.sharding import HASH_NAME, ShardMap, is_sharded, write_shard_map

    if is_sharded(out):
        return
    shard_map = ShardMap.of_size(1)
    shutil.rmtree(out, ignore_errors=True)
    shard = shard_map.paths(out)[0]
    shutil.copytree(plain, shard)
    meta = json.loads((shard / META_FILE).read_text(encoding="utf-8"))
    meta.pop("crc32", None)
    write_json_atomic(shard / META_FILE, sealed({**meta, "sharding": {"shard": 0, "n_shards": 1, "hash": HASH_NAME}}))
    write_shard_map(out, shard_map)


def start_servers(collections: dict[str, Path], ray_address: str, servers: dict[str, Server]) -> dict[str, Server]:
    """A server per collection, each added to ``servers`` as it starts (the caller stops those on a failure)."""
    for name, path in collections.items():
        flags = ["--threads", "1", "--device", "cpu"]
        if name != "plain":
            flags += ["--ray-address", ray_address, "--shard-cpus", str(SHARD_CPUS)]
        servers[name] = Server(path, *flags)
    return servers


def wait_serving(servers: dict[str, Server], timeout: float = 300.0) -> None:
    from lsr.service import Client

    deadline = time.monotonic() + timeout
    for name, server in servers.items():
        with Client(server.address) as client:
            while client.health() != "SERVING":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not turn SERVING within {timeout:g} s")
                time.sleep(0.5)


def measure(servers: dict[str, Server], texts: list[str], concurrency: int, args) -> list[Level]:
    """Closed loops on every server in ``args.rounds`` alternating rounds (see benchmarks/service.py)."""
    totals = {name: Tally() for name in servers}
    for r in range(args.rounds):
        rotated = texts[r * 97 % len(texts):] + texts[: r * 97 % len(texts)]
        for name, server in servers.items():
            search, clients = grpc_search(server.address, concurrency, "sparse", None)
            _warm_up(search, rotated, concurrency)
            totals[name].add(closed_loop(search, rotated, concurrency, args.max_requests // args.rounds,
                                         args.seconds / args.rounds, server.proc.pid))
            for client in clients:
                client.close()
    return [tally.level(name, "splade-tiny", "SPARSE", concurrency) for name, tally in totals.items()]


def write_markdown(path: Path, report: dict) -> None:
    m = report["machine"]
    lines = [
        "# Sharded serving: search latency through the coordinator", "",
        f"Synthetic collection of **{report['docs']:,} documents** (calibrated on {report['calibrate_docs']} real "
        f"splade-tiny SciFact document vectors), {report['num_queries']} real SciFact test queries, SPARSE mode, k=10. "
        "`plain` is one `lsr serve` on the unsharded collection; `N shards` is `lsr serve` on the same documents "
        f"indexed with `--shards N`: a coordinator that encodes each query and fans it out to N shard servers "
        f"(Ray actors, {SHARD_CPUS} CPU each, all in one local Ray instance). Closed loops, ≤{report['max_requests']} "
        f"requests or {report['seconds']} s per level, the servers taking turns in {report['rounds']} alternating "
        "rounds. `CPU ms` counts the serving process only (a coordinator's shard servers are other processes). "
        "A coordinator's `sparse ms` is its slowest shard's own search time; the Ray round trip to the shards "
        "is in neither stage column, only in p50/p99.", "",
        f"Machine: {m['cores']} cores, {m['platform']}, load average at start {m['load_average_at_start'][0]:.1f}.", "",
    ]
    if report["note"]:
        lines += [f"**Note:** {report['note']}", ""]
    lines += ["| side | c | requests | errors | QPS | p50 ms | p99 ms | CPU ms | encode ms | sparse ms |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in report["levels"]:
        lines.append(f"| {lv['side']} | {lv['concurrency']} | {lv['requests']} | {lv['errors']} | {lv['qps']:.1f} "
                     f"| {lv['p50_ms']:.2f} | {lv['p99_ms']:.2f} | {lv['cpu_ms']:.1f} | {lv['stages_ms']['encode']:.2f} "
                     f"| {lv['stages_ms']['sparse']:.2f} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=1_000_000, help="synthetic documents (default 1,000,000)")
    parser.add_argument("--calibrate-docs", type=int, default=500, help="real SciFact documents the synthesis follows")
    parser.add_argument("--beir", type=Path, default=Path(os.environ.get("LSR_BEIR_DIR", REPO.parent / "shared/data/beir"))
                        / "scifact.tar.gz")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32])
    parser.add_argument("--max-requests", type=int, default=400, help="requests per level and server at most")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per level and server at most")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per level")
    parser.add_argument("--note", default="", help="a line written into the results (e.g. how loaded the machine was)")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale_serve.json")
    args = parser.parse_args()

    from lsr.eval.datasets import load_beir
    from lsr.ingest.ray_engine import import_ray

    ray = import_ray()

    dataset = load_beir(args.beir, splits=("test",))
    texts = [dataset.queries[q] for q in dataset.qrels["test"]]
    collections = build_collections(args)
    ray.init(address="local", num_cpus=max(2, int(np.ceil(SHARD_CPUS * sum(SHARDS)))), include_dashboard=False,
             log_to_driver=False)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "platform": platform.platform(), "load_average_at_start": os.getloadavg()}
    servers: dict[str, Server] = {}
    try:  # the servers started before one that fails are stopped too (they ran on, parented to init)
        servers.update(start_servers(collections, ray.get_runtime_context().gcs_address, servers))
        wait_serving(servers)
        levels = [lv for c in args.concurrency for lv in measure(servers, texts, c, args)]
    finally:
        for server in servers.values():
            server.stop()
        ray.shutdown()
    report = {"docs": args.docs, "calibrate_docs": args.calibrate_docs, "num_queries": len(texts),
              "max_requests": args.max_requests, "seconds": args.seconds, "rounds": args.rounds, "note": args.note,
              "machine": machine, "levels": [asdict(lv) for lv in levels]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    write_markdown(args.out.with_suffix(".md"), report)
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
