"""`lsr index --engine ray`: encoder actors on a local Ray instance write a collection byte-identical to the
single-process build, sharded or not, and a killed job resumes to the same bytes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from index_helpers import build_in_process, write_scifact_jsonl  # noqa: E402
from lsr.ingest.indexing import IndexOptions  # noqa: E402
from lsr.ingest.layout import BUILD_STATE, META_FILE  # noqa: E402
from lsr.ingest.layout import RAY_INPUT  # noqa: E402
from lsr.ingest.ray_engine import RayOptions, import_ray  # noqa: E402
from lsr.ingest.sharding import read_shard_map  # noqa: E402

N_DOCS = 60
EVERY = 12  # documents per part: 5 parts, so two workers share them and a kill lands between parts


@pytest.fixture(scope="module")
def ray_cluster():
    """One small local Ray instance for the whole module (starting one costs seconds)."""
    ray = import_ray()
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, scifact) -> Path:
    return write_scifact_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", scifact, N_DOCS)


def options(**overrides) -> IndexOptions:
    return IndexOptions(**{"checkpoint_every": EVERY, "max_length": 64, "threads": 1, **overrides})


def build(corpus: Path, out: Path, ray: RayOptions | None = None, **overrides) -> Path:
    build_in_process(corpus, out, options(**overrides), ray=ray)
    return out


def checksums(out: Path) -> dict:
    return json.loads((out / META_FILE).read_text())["checksums"]


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    return build(corpus, tmp_path_factory.mktemp("local") / "col")


def test_more_workers_than_cpus_start_one_encoder_actor_per_cpu(ray_cluster, caplog):
    """--workers 64 on 2 CPUs started an actor (a model in memory, 0.4 GB) per part, up to 64 of them."""
    from lsr.ingest.ray_engine import _actor_resources

    ray = import_ray()
    with caplog.at_level("WARNING", "lsr.ingest.ray_engine"):
        assert _actor_resources(ray, 64, options()) == (2, {"num_cpus": 1.0}, 1)
    assert "--workers 64: 2 encoder actors, one per CPU of the Ray cluster" in caplog.text
    assert _actor_resources(ray, 2, options()) == (2, {"num_cpus": 1.0}, 1)


def test_two_ray_workers_write_the_single_process_bytes(ray_cluster, corpus, reference, tmp_path):
    out = build(corpus, tmp_path / "col", RayOptions(workers=2))
    assert checksums(out) == checksums(reference)
    assert not (out / RAY_INPUT).exists() and not (out / BUILD_STATE).exists()


def test_a_sharded_ray_build_equals_the_sharded_single_process_build(ray_cluster, corpus, tmp_path):
    local = build(corpus, tmp_path / "local", shards=3)
    distributed = build(corpus, tmp_path / "ray", RayOptions(workers=1), shards=3)
    for name in read_shard_map(local).names:
        assert checksums(distributed / name) == checksums(local / name)
    ray_map, local_map = read_shard_map(distributed), read_shard_map(local)
    assert ray_map.names == local_map.names and ray_map.build != local_map.build  # each build names itself


def _parts_written(out: Path, in_order: bool = False) -> int:
    """Parts checkpointed; ``in_order``: only those before the first missing one (Ray may finish a later part
    first: it is kept "ahead" of them, and a resume starts after the in-order ones)."""
    try:
        state = json.loads((out / BUILD_STATE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return state["shards"] + (0 if in_order else len(state.get("ahead", {})))


def _ray_build_signalled(ray_cluster: str, corpus: Path, out: Path, parts: int, signum: int,
                         in_order: bool = False) -> subprocess.Popen:
    """`lsr index --engine ray` in a subprocess, sent ``signum`` once ``parts`` parts are checkpointed."""
    cmd = [sys.executable, "-m", "lsr", "index", str(corpus), str(out), "--checkpoint-every", str(EVERY),
           "--max-length", "64", "--threads", "1", "--quiet", "--engine", "ray", "--ray-address", ray_cluster,
           "--workers", "1"]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while _parts_written(out, in_order) < parts and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, f"the job ended before it could be signalled: {job.communicate()}"
    job.send_signal(signum)
    return job


def test_a_killed_ray_job_resumes_only_its_unfinished_parts(ray_cluster, corpus, reference, tmp_path):
    out = tmp_path / "col"
    # at 2 parts of 5, a poll a second late found the job done: the last parts land within a second of each other
    job = _ray_build_signalled(ray_cluster, corpus, out, 1, signal.SIGKILL, in_order=True)
    job.communicate(timeout=60)
    written = _parts_written(out)
    assert 1 <= written < N_DOCS // EVERY and not (out / META_FILE).exists()
    state = json.loads((out / BUILD_STATE).read_text())
    locally = shutil.copytree(out, tmp_path / "resumed-locally")
    summary = build_in_process(corpus, out, options(), resume=True, ray=RayOptions(workers=2))
    assert summary.resumed_from == state["docs"] > 0
    assert checksums(out) == checksums(reference)
    build_in_process(corpus, locally, options(), resume=True)  # it kept the Ray build's copy of the corpus
    assert checksums(locally) == checksums(reference) and not (locally / RAY_INPUT).exists()


def test_sigterm_stops_a_ray_build_as_ctrl_c_does(ray_cluster, corpus, tmp_path):
    """ray.init replaced our SIGTERM handler with one that exits 15 at once, with C++ stack lines and no --resume
    line; a scheduler's SIGTERM now stops the build as everywhere else: exit 143, the resume command printed."""
    out = tmp_path / "col"
    job = _ray_build_signalled(ray_cluster, corpus, out, 1, signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 143, err
    assert "--resume" in err and "SIGTERM received" not in err
    assert (out / BUILD_STATE).exists() and not (out / META_FILE).exists()


def test_sigterm_while_ray_starts_stops_the_build_as_ctrl_c_does(corpus, tmp_path):
    """ray.init sets a SIGTERM handler that calls sys.exit(15) first thing: a build stopped while its local Ray
    instance started (seconds) exited 15 without a word, no --resume line. It now stops as everywhere else, its
    checkpointed parts kept, and no process of that Ray instance outlives it."""
    from signal_helpers import signalled_while_ray_starts

    out = tmp_path / "col"

    def stop(part: int) -> None:
        if part == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # one part checkpointed, by the single-process engine
        build_in_process(corpus, out, options(), on_shard=stop)
    command = ["index", str(corpus), str(out), "--resume", "--engine", "ray", "--workers", "1", "--checkpoint-every",
               str(EVERY), "--max-length", "64", "--threads", "1", "--quiet"]
    done, left = signalled_while_ray_starts("-m", "lsr", *command)
    assert done.returncode == 143, done.stderr
    assert done.stderr.splitlines()[-2:] == [
        f"stopped; the encoded shards are kept. Continue with: {shlex.join(['lsr', *command])}", "terminated"]
    assert left == []
    assert _parts_written(out) == 1 and not (out / META_FILE).exists()
    assert "lsr: stopping once Ray starts; a second Ctrl-C or SIGTERM stops at once" in done.stderr


def test_a_second_signal_while_ray_starts_is_handled_at_once(capfd):
    """The first signal waits for ray.init to return; a start that hung (a head that never answers) kept every
    later Ctrl-C and SIGTERM too, leaving kill -9 as the only way out."""
    from lsr.ingest.ray_engine import _signals_deferred

    class Stopped(Exception):
        pass

    def ours(_signum, _frame):
        raise Stopped

    set_handler = signal.signal
    kept = signal.signal(signal.SIGTERM, ours)
    try:
        with pytest.raises(Stopped):
            with _signals_deferred("starts"):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # a Python handler runs between bytecodes: the first signal is only noted
                assert "stopping once Ray starts" in capfd.readouterr().err
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
                pytest.fail("the second signal waited too")
        assert signal.getsignal(signal.SIGTERM) is ours and signal.signal is set_handler  # both ours again
    finally:
        signal.signal(signal.SIGTERM, kept)


def _lsr_index(*args: str, prelude: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    code = f"import sys; {prelude}from lsr.cli.main import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, "index", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_without_ray_installed_the_engine_says_how_to_install_it(corpus, tmp_path):
    result = _lsr_index(str(corpus), str(tmp_path / "col"), "--engine", "ray", prelude="sys.modules['ray'] = None; ")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("lsr index: error: ") and 'pip install "ray[data]>=2.60"' in line
    assert not (tmp_path / "col").exists()


def test_an_unreachable_ray_address_fails_in_one_line_quickly(corpus, tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        start = time.monotonic()
        result = _lsr_index(str(corpus), str(tmp_path / "col"), "--engine", "ray", "--ray-address", address)
        assert time.monotonic() - start < 30
        assert result.returncode == 1  # the cluster's state (down), to retry; a port that is no Ray's is 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"lsr index: error: cannot reach a Ray cluster at {address}")
        assert not (tmp_path / "col").exists()


def test_without_ray_address_a_new_local_instance_starts_whatever_ray_address_says(corpus, reference, tmp_path):
    """RAY_ADDRESS pointing nowhere, and no --ray-address: ray.init read it and retried for over 11 minutes, deaf to
    SIGTERM (helper audit); without it, a cluster already up on the machine was joined. The help promises a new local
    instance: it starts, and a warning says how to use that cluster."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    result = _lsr_index(str(corpus), str(tmp_path / "col"), "--engine", "ray", "--workers", "1", "--checkpoint-every",
                        str(EVERY), "--max-length", "64", "--threads", "1", "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    assert (f"RAY_ADDRESS=127.0.0.1:{port} is set, and a new local Ray instance starts all the same; pass "
            f"--ray-address 127.0.0.1:{port} to use that cluster") in result.stderr
    assert checksums(tmp_path / "col") == checksums(reference)


def test_a_port_that_is_not_rays_fails_in_one_line_quickly(corpus, tmp_path):
    """A web server's port (a typo, the dashboard's 8265) made Ray retry for minutes, printing C++ warnings."""
    import http.server
    import threading

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        for address in (f"127.0.0.1:{web.server_port}", f"ray://127.0.0.1:{web.server_port}"):
            start = time.monotonic()
            result = _lsr_index(str(corpus), str(tmp_path / "col"), "--engine", "ray", "--ray-address", address)
            assert time.monotonic() - start < 60 and result.returncode == 2
            (line,) = result.stderr.strip().splitlines()
            assert line.startswith(f"lsr index: error: {address} answers, but not as Ray does")
            assert not (tmp_path / "col").exists()
    finally:
        web.shutdown()


@pytest.mark.parametrize("status, token, said", [
    ("UNIMPLEMENTED", None, "is a gRPC service but not a Ray head"),
    ("UNAUTHENTICATED", None, "is a Ray head that requires a token (token authentication), and this machine has none; "
                              "set RAY_AUTH_TOKEN to the head's (its ~/.ray/auth_token)"),
    ("UNAUTHENTICATED", "not-the-heads", "is a Ray head that rejects this machine's token ($RAY_AUTH_TOKEN); set "
                                         "RAY_AUTH_TOKEN to the head's"),
])
def test_a_grpc_port_that_is_no_ray_head_or_wants_a_token_fails_in_one_line(corpus, tmp_path, status, token, said):
    """Each passed the TCP check and then hung in ray.init for minutes. A token head (Ray's default for new
    clusters, RAY_AUTH_MODE=token) answers Ray's GetClusterId with UNAUTHENTICATED to a caller without its token (as
    Ray 2.60's does, checked by hand: a real token head here would be joined by other tests' ray.init()); other gRPC
    servers say UNIMPLEMENTED. HOME is a new folder, so no ~/.ray/auth_token of this machine's is sent."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    class Refusing(grpc.GenericRpcHandler):
        def service(self, details):
            if status == "UNIMPLEMENTED":
                return None
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: context.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken"))

    server = grpc.server(ThreadPoolExecutor(2), handlers=[Refusing()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH")}
        result = _lsr_index(str(corpus), str(tmp_path / "col"), "--engine", "ray", "--ray-address", f"127.0.0.1:{port}",
                            env={**env, "HOME": str(tmp_path), **({"RAY_AUTH_TOKEN": token} if token else {})})
    finally:
        server.stop(None)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"lsr index: error: 127.0.0.1:{port} {said}")


def test_a_model_the_actors_could_not_load_is_refused_before_ray_starts(corpus, tmp_path):
    result = _lsr_index(str(corpus), str(tmp_path / "col"), "--engine", "ray", "--model", str(tmp_path / "no-model"))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("lsr index: error: model folder") and "no-model" in line
    assert not (tmp_path / "col").exists()


def test_a_local_ray_start_waits_two_minutes_for_its_gcs_unless_the_user_says_otherwise(monkeypatch):
    """Ray's own 30 s ran out on a busy CI machine; a user's setting is kept."""
    monkeypatch.delenv("RAY_gcs_server_port_wait_time_s", raising=False)
    import_ray()
    assert os.environ["RAY_gcs_server_port_wait_time_s"] == "120"
    monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "7")
    import_ray()
    assert os.environ["RAY_gcs_server_port_wait_time_s"] == "7"


def test_a_token_head_this_machine_can_open_is_joined_in_token_mode(tmp_path):
    """Ray 2.60's driver sends its token only with RAY_AUTH_MODE=token, read when Ray is imported: with it unset,
    `--ray-address HOST:PORT` to a token head passed the check (the token opened it) and then retried the head every
    second, forever, deaf to Ctrl-C and SIGTERM. The check now sets token mode before Ray loads, and says what to set
    where Ray is already loaded. A fake head: UNAUTHENTICATED unless the right token comes."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    class TokenHead(grpc.GenericRpcHandler):
        def service(self, details):
            def answer(request, context):
                if ("authorization", "Bearer right") not in context.invocation_metadata():
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, "InvalidAuthToken")
                return b""
            return grpc.unary_unary_rpc_method_handler(answer)

    server = grpc.server(ThreadPoolExecutor(2), handlers=[TokenHead()])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}, "HOME": str(tmp_path),
           "RAY_AUTH_TOKEN": "right"}
    check = ("import os, sys\nfrom lsr.ingest.ray_engine import check_reachable\n"
             f"{{}}check_reachable('127.0.0.1:{port}')\nprint(os.environ.get('RAY_AUTH_MODE'), 'ray' in sys.modules)")
    try:
        fresh = subprocess.run([sys.executable, "-c", check.format("")], env=env, capture_output=True, text=True,
                               timeout=120)
        loaded = subprocess.run([sys.executable, "-c", check.format("import ray\n")], env=env, capture_output=True,
                                text=True, timeout=120)
    finally:
        server.stop(None)
    assert fresh.returncode == 0 and fresh.stdout.split() == ["token", "False"], fresh.stderr
    assert loaded.returncode == 1
    assert (f"127.0.0.1:{port} takes a token, which Ray, already loaded in this process, will not send; set "
            "RAY_AUTH_MODE=token") in loaded.stderr


def test_a_malformed_ray_address_is_bad_input_and_auto_with_no_cluster_is_worth_a_retry(corpus, tmp_path):
    """http://HOST:PORT and a port past 65535 were reported as unreachable clusters (exit 1, retry); `auto` with no
    cluster up was exit 2. Both the other way round now."""
    for address in ("http://127.0.0.1:18080", "127.0.0.1:99999"):
        result = _lsr_index(str(corpus), str(tmp_path / "col"), "--engine", "ray", "--ray-address", address)
        assert result.returncode == 2
        assert f"--ray-address must be auto, HOST:PORT or ray://HOST:PORT, got '{address}'" in result.stderr
    # Ray's own answer when no cluster runs (auto finds one by its processes too, so another test's would be joined)
    none_running = ("import ray; ray.init = lambda *a, **k: (_ for _ in ()).throw(ConnectionError('Could not find any "
                    "running Ray instance.')); ")
    result = _lsr_index(str(corpus), str(tmp_path / "col"), "--engine", "ray", "--ray-address", "auto",
                        prelude=none_running)
    assert result.returncode == 1 and "--ray-address auto found no running Ray cluster on this machine" in result.stderr
    assert not (tmp_path / "col").exists()


def test_an_actor_failure_names_its_cause(ray_cluster):
    """Ray Data wraps an actor's exception in "UDF failed to process a data block", which was all `lsr index` said;
    the actor's own exception is the cause to name."""
    import ray

    from lsr.ingest.ray_engine import _actor_errors

    class FailingEncoder:  # defined here, so Ray ships it by value: the workers cannot import this test module
        """Fails as an encoder actor does when its staged part is gone."""

        def __call__(self, batch):
            raise FileNotFoundError("/shared/col/.lsr-input/part-00004.parquet")

    blocks = ray.data.range(2).map_batches(FailingEncoder, concurrency=1)
    with pytest.raises(RuntimeError) as err, _actor_errors(ray):
        blocks.take_all()
    assert str(err.value) == ("a Ray encoder actor failed: FileNotFoundError: "
                              "/shared/col/.lsr-input/part-00004.parquet")
