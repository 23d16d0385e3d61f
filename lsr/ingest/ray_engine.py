"""``lsr index --engine ray``: Ray Data maps a pool of encoder actors over the build's parts.

lsr decides the bytes, Ray holds the cluster. The driver reads the corpus with the same reader and cuts
the same parts (``checkpoint_every`` documents) as the single-process build, stages each part's ids and
texts in ``OUT/.lsr-input/``, and Ray Data maps encoder actors (one GPU each where the cluster has GPUs,
else an equal share of its CPUs) over the part numbers. An actor encodes a part exactly as the single
process does (``encode_block``: the same sub-chunks, batch size and length sorting) and writes its files
itself (``write_part``), so the collection is byte-identical to ``lsr index`` for the same model, device
and dtype. On CPU the thread count is part of that (``lsr.encode.batching`` sizes batches so that every
single-threaded worker gets one, and other batch shapes move the last bits of the vectors): an actor runs
``--threads`` threads when given, else its share of the CPUs, and equals ``lsr index --threads`` with that number.
OUT must be on storage every node sees (a shared filesystem on a cluster).

Parts finish out of order. The checkpoint keeps the finished prefix, as the single-process build does,
plus the parts finished beyond it (``BuildState.ahead``), so ``--resume`` (with either engine) encodes
only the parts that are not written yet.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lsr.files import MachineStateError, atomic_write, check_parquet_seal, write_sealed_parquet
from lsr.ingest.layout import RAY_INPUT
from lsr.ingest.corpus import CorpusHash, CorpusReader, DocChunk
from lsr.ingest.progress import progress_bar, quiet_logger, rows_total

if TYPE_CHECKING:
    from lsr.ingest.indexing import BuildState, IndexOptions, StageTimer

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "ray[data]>=2.60"'
CONNECT_TIMEOUT_S = 10.0
# Ray gives a new local instance's GCS 30 s to publish its port; on a busy 2-core machine with a cold disk that
# ran out (a CI run failed every sharded-serving test at start-up), so unless the user set it, it gets 2 minutes.
GCS_START_WAIT_S = "120"


@dataclass(frozen=True)
class RayOptions:
    """Where Ray runs and how many encoder actors it gets (these decide speed, never the bytes)."""

    address: str | None = None  # None: a local Ray instance; "auto", "HOST:PORT" or "ray://HOST:PORT": a cluster
    workers: int | None = None  # encoder actors; None: one per GPU, else one per node (with all its CPUs)


def import_ray() -> Any:
    """The ``ray`` module, with a patient start-up for the local instances it may launch."""
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", GCS_START_WAIT_S)
    # lsr starts or joins Ray itself (start_ray): a call after ray.shutdown, say from a server's reload under way as it
    # stopped, started a new local instance whose agents outlived the process
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"--engine ray and sharded serving need Ray, which is not installed here: {INSTALL_HINT}") from None
    return ray


def check_ray(ray_options: RayOptions, options: "IndexOptions") -> None:
    """Fail in one line before any work: Ray missing, a bad --workers or model, an unreachable address, pre-encoded input."""
    if ray_options.workers is not None and ray_options.workers <= 0:
        raise ValueError(f"--workers must be positive, got {ray_options.workers}")
    if options.pre_encoded:
        raise ValueError("--engine ray encodes documents; index a --pre-encoded file with the default engine")
    from lsr.encode.models import resolve_model

    for model in filter(None, (options.model, options.dense_model)):  # an actor that cannot load would be restarted
        resolve_model(model)
    check_reachable(ray_options.address)  # before Ray loads: it reads RAY_AUTH_MODE, which this may set, at import
    import_ray()


def check_reachable(address: str | None) -> None:
    """A TCP connect, then a gRPC handshake, each with a short timeout: Ray itself retries an unreachable cluster,
    or a port that is no Ray's (a web server's), for minutes, printing C++ warnings. A head that takes a token gets
    this machine's from the ``ray.init`` that follows (``RAY_AUTH_MODE=token`` when unset)."""
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or "://" in host or not port.isdigit() or not 0 < int(port) < 65536:  # http://, port 99999: input
        raise ValueError(f"--ray-address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise MachineStateError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc}; "
                                "check the address, or start one with `ray start --head`") from None
    problem = _not_a_ray_head(f"{host}:{port}", client=address.startswith("ray://"))
    if problem:
        raise RuntimeError(f"{address} {problem}")


def _not_a_ray_head(target: str, client: bool) -> str | None:
    """Why ``target`` is no Ray head Ray could join (None when it may be): no gRPC handshake (another service's
    port), no Ray GCS behind it, or a head that refuses the token this machine would send (or its lack). Ray's
    client server (``client``: ray://) gets the handshake only."""
    import grpc

    token = _ray_token()
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT_S)
        if client:
            return None
        cluster_id = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId",
                                         request_serializer=bytes, response_deserializer=bytes)
        try:
            cluster_id(b"", timeout=CONNECT_TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED or token is None:
                raise
            cluster_id(b"", timeout=CONNECT_TIMEOUT_S, metadata=(("authorization", f"Bearer {token[1]}"),))
            # a token head, and this machine's token opens it: Ray 2.60's driver sends its token only in token mode,
            # which it reads when it is imported, and without it ray.init retried the head every second, forever
            if "RAY_AUTH_MODE" not in os.environ and "ray" in sys.modules:
                return "takes a token, which Ray, already loaded in this process, will not send; set RAY_AUTH_MODE=token"
            os.environ.setdefault("RAY_AUTH_MODE", "token")
    except grpc.FutureTimeoutError:
        return (f"answers, but not as Ray does (no gRPC within {CONNECT_TIMEOUT_S:g} s): it is another service's "
                "port; Ray's head listens on 6379 (HOST:PORT) and its client server on 10001 (ray://HOST:10001)")
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            return ("is a gRPC service but not a Ray head (an `lsr serve`?); give the head's GCS port (6379 unless "
                    "`ray start --head --port` chose another), or ray://HOST:10001 for Ray's client server")
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            return ((f"is a Ray head that rejects this machine's token ({token[0]})" if token else
                     "is a Ray head that requires a token (token authentication), and this machine has none")
                    + "; set RAY_AUTH_TOKEN to the head's (its ~/.ray/auth_token), or RAY_AUTH_TOKEN_PATH to a file "
                      "holding it, with RAY_AUTH_MODE=token or unset")
    finally:
        channel.close()
    return None  # Ray's own errors (a version mismatch, ...) come from ray.init, one line


def _ray_token() -> tuple[str, str] | None:
    """(where it is from, the token) that ray.init would send to a head, by Ray 2.60's rules: none when RAY_AUTH_MODE
    is set to anything but token; else $RAY_AUTH_TOKEN, the file at $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token (which
    a new local instance writes: token authentication is Ray's default there)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        return None
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "$RAY_AUTH_TOKEN", os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return (str(path), token) if token else None


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """The connected ``ray`` module; a session this call starts is shut down after (one already running is kept)."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    with quiet_logger("ray"):  # its start-up notices would land in the middle of our progress bars
        start_ray(chosen_address(address), configure_logging=False)
    try:
        yield ray
    finally:
        with _signals_deferred("shuts down"):
            ray.shutdown()


def chosen_address(address: str | None) -> str:
    """``--ray-address``, or "local": a new instance. Ray's own default joined a cluster someone else had started on
    this machine, and read ``RAY_ADDRESS``: one that pointed nowhere was retried for minutes, deaf to SIGTERM."""
    if address is None and os.environ.get("RAY_ADDRESS"):
        log.warning(
            "RAY_ADDRESS=%s is set, and a new local Ray instance starts all the same; pass --ray-address %s to use "
            "that cluster", os.environ["RAY_ADDRESS"], os.environ["RAY_ADDRESS"])
    return address or "local"


def start_ray(address: str | None, **options: Any) -> None:
    """``ray.init`` without a dashboard or worker logs, keeping our SIGTERM and SIGINT handlers (Ray's exit at once,
    with status 15): a stopped `lsr index --engine ray` lost its exit 143 and the `--resume` line it prints, and one
    stopped while Ray started (seconds, for a local instance) exited 15 without a word. A signal received meanwhile
    stops us once Ray has started, and Ray is shut down before it propagates, so nothing we started outlives us.
    Any failure to start or join is one line."""
    ray = import_ray()
    from ray._private import ray_constants

    # Ray's C++ crash handler, which the driver's core worker would install beneath ours at the end of the start,
    # takes SIGTERM too (stack lines on stderr); Ray enables Python's faulthandler for the driver's crashes anyway.
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        with _signals_deferred("starts"):
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                     **options)
    except BaseException as exc:
        with _signals_deferred("shuts down"):
            ray.shutdown()
        if address == "auto" and isinstance(exc, ConnectionError):  # no cluster up (yet): the same command can work later
            raise MachineStateError("--ray-address auto found no running Ray cluster on this machine; start one with "
                                    "`ray start --head`, or leave --ray-address out for a new local instance") from None
        if isinstance(exc, Exception):  # Ray raises ConnectionError, RuntimeError or its own types here
            raise RuntimeError(f"cannot connect to Ray at {'a new local instance' if address == 'local' else address}: "
                               f"{exc}") from None
        raise


@contextmanager
def _signals_deferred(while_ray: str) -> Iterator[None]:
    """Hold SIGTERM and SIGINT while Ray starts or shuts down, then hand the first one received to our handler.

    ray.init replaces our SIGTERM handler first thing with one that calls ``sys.exit(15)``, and ray.shutdown leaves
    its own in place. Raised in the middle of the start, even our ``Terminated`` left a half-started local instance
    behind (its raylet's agents outlived us). So meanwhile a signal is only noted and Python code cannot set another
    handler for either (Ray defers SIGINT the same way); after, ours are set again and the signal noted is raised,
    for them to handle as if it came then. A second signal is handled at once: a start that hangs (a head that
    never answers) must not leave the user without a way out but kill -9.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread has handlers to keep
        yield
        return
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    received: list[int] = []
    set_handler = signal.signal

    def note(signum: int, _frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:
            print(f"lsr: stopping once Ray {while_ray}; a second Ctrl-C or SIGTERM stops at once, which may leave "
                  "Ray's processes behind", file=sys.stderr, flush=True)
            return
        received.clear()
        restore()
        signal.raise_signal(signum)

    def restore() -> None:
        signal.signal = set_handler
        for sig, handler in kept.items():
            set_handler(sig, handler)

    def keep_ours(signum: int, handler: Any) -> Any:
        return note if signum in kept else set_handler(signum, handler)

    for sig in kept:
        set_handler(sig, note)
    signal.signal = keep_ours
    try:
        yield
    finally:
        restore()
        if received:
            signal.raise_signal(received[0])


def _staged(out: Path, part: int) -> Path:
    return out / RAY_INPUT / f"part-{part:05d}.parquet"


def _stage_parts(reader: CorpusReader, out: Path, options: "IndexOptions", state: "BuildState",
                 progress: bool) -> tuple[list[str], list[int]]:
    """Write the input of every part not written yet; returns the corpus checksum after each part and its size.

    The checksums check a resumed job's source against the parts already written, as the single-process build does.
    """
    from lsr.ingest.indexing import ResumeRefused, document_blocks

    running = CorpusHash()
    hashes: list[str] = []
    sizes: list[int] = []
    with progress_bar("read", rows_total(reader.expected_rows(), options.limit), enabled=progress) as bar:
        for part, block in enumerate(document_blocks(reader, options.checkpoint_every)):
            hashes.append(running.update(block.ids, block.texts))
            sizes.append(len(block))
            if part < state.shards:
                expected = state.corpus_hash if part == state.shards - 1 else None
            elif str(part) in state.ahead:
                expected = state.ahead[str(part)]["corpus_hash"]
            else:
                expected = None
                table = pa.table({"id": pa.array(block.ids, pa.string()), "text": pa.array(block.texts, pa.string())})
                atomic_write(_staged(out, part), lambda fh, table=table: write_sealed_parquet(fh, table))
            if expected is not None and expected != hashes[-1]:
                raise ResumeRefused(f"cannot resume {out}: documents of {reader.source} differ from the ones already "
                                 "encoded (the source changed); use --overwrite to start over")
            bar.update(len(block))
    if len(hashes) < state.shards or any(int(part) >= len(hashes) for part in state.ahead):
        raise ResumeRefused(f"cannot resume {out}: {reader.source} now has fewer documents than were already encoded; "
                         "use --overwrite to start over")
    return hashes, sizes


class PartEncoder:
    """A Ray Data actor: loads the encoders once, then encodes and writes whole parts."""

    def __init__(self, out: str, options: "IndexOptions", threads: int) -> None:
        from lsr.encode.cpu_threads import set_threads
        from lsr.ingest.indexing import load_encoders

        set_threads(options.threads or threads)
        self.out, self.options = Path(out), options
        self.encoders = load_encoders(options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from lsr.ingest.indexing import StageTimer, encode_block, write_part

        counts = []
        for part in batch["part"].tolist():
            check_parquet_seal(_staged(self.out, part))
            table = pq.read_table(_staged(self.out, part), page_checksum_verification=True)
            ids, texts = table.column("id").to_pylist(), table.column("text").to_pylist()
            block = DocChunk(ids, texts, list(range(len(ids))))
            sparse, dense, truncated = encode_block(block, *self.encoders, self.options, StageTimer({}), lambda _: None)
            counts.append(json.dumps(write_part(self.out, part, block, sparse, dense, truncated, self.options.shards)))
        return {"part": batch["part"], "counts": np.array(counts, dtype=object)}


_CHAINED = "The above exception was the direct cause of the following exception:"


@contextmanager
def _actor_errors(ray: Any) -> Iterator[None]:
    """An actor's failure as one line naming its cause (Ray wraps it in a remote traceback). Ray Data wraps the
    actor's exception in a UserCodeException ("UDF failed to process a data block") that keeps it only as text: the
    cause is the last line before the first chained traceback's "direct cause" note."""
    try:
        yield
    except ray.exceptions.RayError as exc:
        text = str(exc)
        cause = getattr(exc, "cause", None) or exc
        if _CHAINED in text:
            line = text.split(_CHAINED)[0].strip().splitlines()[-1]
        else:
            lines = str(cause).strip().splitlines() or [type(cause).__name__]
            line = lines[-1] if cause is exc else lines[0]
        raise RuntimeError(f"a Ray encoder actor failed: {line}") from None


def _actor_resources(ray: Any, workers: int | None, options: "IndexOptions") -> tuple[int, dict[str, float], int]:
    """(actors, Ray resources per actor, torch threads per actor): a GPU each where there are GPUs, else CPU shares.

    More actors than GPUs share them (fractional resources), so a large --workers never waits forever. On CPUs the
    actors are at most the cluster's CPUs: more only share them, each holding a model (--workers 64 on 2 CPUs started
    one per part, 0.4 GB apiece, enough to run this 24 GB machine out of memory on a corpus of 100 parts).
    """
    cluster = ray.cluster_resources()
    gpus, cpus = int(cluster.get("GPU", 0)), max(1, int(cluster.get("CPU", 1)))
    if gpus and options.device != "cpu":
        workers = workers or gpus
        return workers, {"num_gpus": min(1.0, gpus / workers)}, 1
    # one actor per node by default: on one machine that is `lsr index`'s own thread count, so the same bytes
    workers = workers or max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
    if workers > cpus:
        log.warning("--workers %d: %d encoder actors, one per CPU of the Ray cluster (more would only share them, each "
                    "holding a model in memory)", workers, cpus)
        workers = cpus
    return workers, {"num_cpus": min(float(cpus // workers or 1), cpus / workers)}, max(1, cpus // workers)


def encode_on_ray(reader: CorpusReader, out: Path, options: "IndexOptions", state: "BuildState", stages: "StageTimer",
                  progress: bool, ray_options: RayOptions) -> None:
    """Encode every part not written yet on Ray, checkpointing as parts finish; see the module docstring."""
    out = out.resolve()
    with stages.time("read"):
        hashes, sizes = _stage_parts(reader, out, options, state, progress)
    if not hashes:
        raise ValueError(f"{reader.source} has no indexable documents"
                         + (f" ({reader.stats.n_skipped} bad rows skipped)" if reader.stats.n_skipped else ""))
    todo = [part for part in range(len(hashes)) if part >= state.shards and str(part) not in state.ahead]
    done = state.docs + sum(sum(row[0] for row in entry["counts"]) for entry in state.ahead.values())
    if todo:
        with stages.time("encode"):
            _run_actors(out, options, state, stages, progress, ray_options, todo, hashes, done, sum(sizes))
    shutil.rmtree(out / RAY_INPUT, ignore_errors=True)


def _run_actors(out: Path, options: "IndexOptions", state: "BuildState", stages: "StageTimer", progress: bool,
                ray_options: RayOptions, todo: list[int], hashes: list[str], done: int, total: int) -> None:
    """Map the encoder actors over the ``todo`` parts; checkpoint each part as it lands, whatever its order."""
    from lsr.ingest.indexing import part_records

    with ray_session(ray_options.address) as ray:
        context = ray.data.DataContext.get_current()  # importing Ray Data sets up its loggers: quiet them after
        context.enable_progress_bars = False  # ours counts documents across workers
        context.print_on_execution_start = False
        workers, resources, threads = _actor_resources(ray, ray_options.workers, options)
        parts = ray.data.from_items([{"part": part} for part in todo], override_num_blocks=len(todo))
        encoded = parts.map_batches(PartEncoder, fn_constructor_kwargs={"out": str(out), "options": options,
                                                                        "threads": threads},
                                    batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(workers, len(todo))),
                                    **resources)
        with progress_bar("encode", total, initial=done, enabled=progress) as bar, quiet_logger("ray.data"), \
                _actor_errors(ray):
            for row in encoded.iter_rows():
                part, counts = int(row["part"]), json.loads(row["counts"])
                state.ahead[str(part)] = {"counts": counts, "corpus_hash": hashes[part],
                                          "files": part_records(out, part, options.shards)}
                while str(state.shards) in state.ahead:  # the prefix grows as its next part lands
                    state.corpus_hash = hashes[state.shards]
                    landed = state.ahead[str(state.shards)]
                    state.add_part(landed["counts"], landed.get("files", []))
                state.stage_seconds = stages.seconds
                state.save(out)
                bar.update(sum(row[0] for row in counts))
