"""Evaluate on a BEIR dataset: BM25, SPLADE, MiniLM, hybrid, hybrid+PRF, fusion and the untuned defaults in one run
(fusion+PRF with --methods: its joint grid takes many minutes).

The dataset is found in --data-dir, then $LSR_BEIR_DIR, then a shared/data/beir folder beside the
checkout or beside (or inside) the current directory, then the cache (~/.cache/lsr or $LSR_CACHE_DIR),
and otherwise, for arguana, nfcorpus and scifact (the datasets whose md5 is known here), downloaded from the
official BEIR mirror and checked; any other BEIR dataset: download its zip and pass --data-dir or the path.
The index is built once and cached under a key of models + corpus checksum. Hybrid α, PRF m, β,
the fusion's method and weights and the PRF variant (Rocchio, high-IDF Rocchio, Vector-PRF, feedback
from the fused list, interpolation before/after/both; chosen jointly with the fusion: the PRF
shortlist is also tried on the next best fusions) are tuned on the train/dev qrels only and
frozen for the reported split; the report lists every method and PRF variant with its settings.

Examples:
  lsr beir --dataset scifact --out runs/beir-scifact
  lsr beir --dataset nfcorpus --methods sparse,hybrid --data-dir ~/data/beir
  lsr beir --dataset scifact --endpoint localhost:50051
  lsr beir --dataset scifact --serve     # index, start `lsr serve`, evaluate through it, stop it
  lsr beir --dataset nfcorpus --methods bm25,sparse,dense,fusion,fusion-prf,defaults   # + the joint fusion/PRF grid (slow)
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
from pathlib import Path

from lsr.cli.device import add_device_arguments, device_options
from lsr.cli.endpoint import add_endpoint_arguments, read_token
from lsr.cli.main import flags_given, name_argument, path_argument, refuse_unused
from lsr.files import check_folder_writable

HELP = "evaluate BM25 / sparse / dense / hybrid / PRF / fusion on a BEIR dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from lsr.eval.beir import DEFAULT_METHODS, METHODS

    p.add_argument("--dataset", required=True, metavar="NAME_OR_PATH",
                   help="BEIR name (scifact, nfcorpus, arguana download; others are found in --data-dir) or a BEIR "
                        "folder/.zip/.tar.gz")
    p.add_argument("--data-dir", default=None, type=path_argument, help="folder holding NAME/, NAME.zip or NAME.tar.gz (before $LSR_BEIR_DIR)")
    p.add_argument("--split", default="test", help="qrels split to report (default: test)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)} (default: all but fusion-prf, whose "
                        "joint fusion + PRF grid on train/dev takes many minutes on a CPU)")
    p.add_argument("-k", "--k", type=int, default=100,
                   help="retrieval depth, 10..999 (default: 100; the metrics read the top 100; hybrid fuses the "
                        "top max(k + 1, 100): one spare for a dropped self-hit)")
    add_endpoint_arguments(p, required=False, timeout=60.0)  # a running `lsr serve` instead of in-process search
    p.add_argument("--serve", action="store_true",
                   help="index the dataset, start `lsr serve` on a free loopback port, evaluate through it, then stop it")
    p.add_argument("--out", default=None, type=path_argument,
                   help="folder for results.md, results.json and ndcg.png (default: none, the table is only printed)")
    p.add_argument("--model", type=name_argument, default="splade-tiny", help="SPLADE model (default: splade-tiny)")
    p.add_argument("--dense", type=name_argument, default="minilm", help="dense model, or 'none' (default: minilm)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: every CPU this process may use); with --serve also the server's "
                        "--threads (default 1 there)")
    add_device_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--note", default=None, help="a sentence added to the report (e.g. that the CPU was shared)")


def run(args: argparse.Namespace) -> int:
    from lsr.eval.beir import check_methods_and_depth

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    check_methods_and_depth(methods, args.k)  # before a --serve index build, which can take minutes
    if args.out is not None:  # it failed only after the whole evaluation, as "[Errno 17] File exists: 'OUT'"
        check_folder_writable(Path(args.out), "the --out folder")
    if methods == ["bm25"]:  # a --serve built an index and started a server that nothing asked
        refuse_unused(flags_given(args, "endpoint", "serve"), "bm25 is scored in this process, with bm25s")
    if args.serve and args.endpoint:
        raise ValueError("--serve starts its own server; drop --endpoint (or drop --serve to use yours)")
    if args.endpoint:
        refuse_unused(flags_given(args, "model", "dense", "threads", "device", "dtype"),
                      "with --endpoint the server's collection and models are evaluated (`lsr serve --device ...`)")
    if not args.endpoint:  # a secured server's flags: a --serve server is plain and local
        refuse_unused(flags_given(args, "tls", "auth_token_file", "timeout"), "they reach a server given by --endpoint")
    connection = {"token": read_token(args.auth_token_file), "tls": args.tls, "timeout": args.timeout}
    if args.endpoint and set(methods) - {"bm25"}:
        from lsr.eval.backends import Remote

        Remote(args.endpoint, **connection).client.close()  # one that is down fails now, not after the dataset load

    from lsr.encode.cpu_threads import set_threads
    from lsr.eval.beir import run_beir
    from lsr.eval.report import markdown
    from lsr.ingest.indexing import IndexOptions

    dense = None if args.dense.lower() == "none" else args.dense
    if dense is None and {"dense", "hybrid", "hybrid-prf", "fusion", "fusion-prf", "defaults"} & set(methods):
        raise ValueError("--dense none leaves no dense model; keep only bm25 and sparse in --methods")
    encoding = device_options(args)
    options = IndexOptions(model=args.model, dense_model=dense, threads=args.threads, **encoding)
    set_threads(args.threads)
    with contextlib.ExitStack() as stack:
        endpoint, collection = args.endpoint, None
        if args.serve:
            from lsr.eval.beir import cached_collection, reported_qrels
            from lsr.eval.datasets import load_beir, locate_dataset

            source = locate_dataset(args.dataset, args.data_dir)
            dataset = load_beir(source)
            reported_qrels(dataset, args.split, source)
            collection, _ = cached_collection(source, dataset, options, progress=not args.quiet)
            endpoint = stack.enter_context(_served(collection, args.threads, encoding, _serve_log(args.out),
                                                   temporary=args.out is None))
        report = run_beir(args.dataset, data_dir=args.data_dir, split=args.split, methods=methods, k=args.k,
                          endpoint=endpoint, connection=None if args.serve else connection, tune_locally=collection,
                          out=args.out, options=options,
                          progress=not args.quiet, note=args.note)
    print()
    print(markdown(report))
    if report["collection"]:
        print(f"\nthe collection is cached at {report['collection']}; search it: lsr search {report['collection']}")
    return 0


def _serve_log(out: str | None) -> Path:
    """Where the server's own log goes (OUT/serve.log, or a temp file), so its request lines stay out of the results."""
    if out is None:
        import tempfile

        return Path(tempfile.mkstemp(prefix="lsr-serve-", suffix=".log")[1])
    Path(out).mkdir(parents=True, exist_ok=True)
    return Path(out) / "serve.log"


@contextlib.contextmanager
def _served(collection: Path, threads: int | None, encoding: dict[str, str], log_path: Path, temporary: bool):
    """Run `lsr serve` on a free loopback port until the block ends; SIGTERM must drain it to exit 0. A
    ``temporary`` log is removed after a clean run (every run left one in the temp folder) and kept otherwise."""
    from lsr.service import Client

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "lsr", "serve", str(collection), "--host", "127.0.0.1", "--port", str(port)]
    if threads:
        command += ["--threads", str(threads)]
    command += ["--device", encoding["device"], "--dtype", encoding["dtype"]]
    endpoint = f"127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # so a SIGTERM to us also stops the server
    try:
        with Client(endpoint) as client:
            _wait_serving(client, server, log_path, timeout=300.0)
        print(f"lsr serve is up at {endpoint} (pid {server.pid}); its log: {log_path}", file=sys.stderr)
        yield endpoint
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.terminate()
        code = server.wait(timeout=120)
        print(f"lsr serve stopped (exit {code})", file=sys.stderr)
        if code != 0 and sys.exc_info()[0] is None:
            raise RuntimeError(f"lsr serve exited with {code} after SIGTERM; expected a clean drain (0); see {log_path}")
        if temporary and sys.exc_info()[0] is None:
            log_path.unlink(missing_ok=True)


def _wait_serving(client, server: subprocess.Popen, log_path: Path, timeout: float) -> None:
    """Poll health until SERVING; fail fast if the server process dies while loading."""
    import time

    import grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"lsr serve exited with {server.returncode} before it was ready; see {log_path}")
        try:
            if client.health(timeout=1.0) == "SERVING":
                return
        except grpc.RpcError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"lsr serve was not ready after {timeout:.0f} s")


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt
