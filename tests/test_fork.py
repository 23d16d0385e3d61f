"""A Searcher opened before ``os.fork``, as a pre-fork server's workers (gunicorn ``--preload``) and 'fork'
multiprocessing pools use one: children that write, read other processes' writes, and never block their parent.
Real model and files; each scenario runs in a process of its own, since forking a pytest worker with gRPC threads
live is unsafe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lsr.cli.main import main

_SCENARIOS = textwrap.dedent("""
    import os, sys, threading, time
    from pathlib import Path
    from lsr import Searcher
    from lsr.files import folder_busy

    path, scenario = sys.argv[1], sys.argv[2]
    searcher = Searcher.open(path, threads=1)
    searcher.search("aspirin heart", k=1, mode="sparse")  # the model loaded before the fork

    def child(work):
        pid = os.fork()
        if pid == 0:
            try:
                work()
                os._exit(0)
            except BaseException as exc:
                print(f"child: {exc!r}", flush=True)
                os._exit(3)
        return pid

    def reaped(pid, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return "hung"

    if scenario == "write-while-parent-writes":  # each child was forked holding the parent's write locks
        # encoded once, before: a child forked while a thread of its parent runs torch may hang inside torch itself
        vector = searcher.models.documents.encode_documents(["a document written in a loop"])
        stop = threading.Event()

        def parent_writes():
            i = 0
            while not stop.is_set():
                searcher.store([f"parent-{i % 5}"], [f"parent document number {i}"], vector, None)
                i += 1

        writer = threading.Thread(target=parent_writes)
        writer.start()
        pids = []
        for n in range(6):
            time.sleep(0.05)
            pids.append(child(lambda n=n: searcher.store([f"child-{n}"], [f"written by child {n}"], vector, None)))
        codes = [reaped(pid, 90) for pid in pids]
        stop.set()
        writer.join()
        codes.append(reaped(child(lambda: searcher.upsert(["late"], ["forked once the parent was idle"])), 90))
        print("codes", codes)  # 0: written; 3: refused with a reason (forked mid-write); never hung
    elif scenario == "reads-others-writes":
        def reader():
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    searcher.doc("coffee")
                except KeyError:  # deleted
                    return
                time.sleep(0.1)
            raise AssertionError("the child kept serving a document deleted in another process")

        pid = child(reader)
        time.sleep(0.5)
        Searcher.open(path).delete(["coffee"])  # another writer than the child's parent object
        print("codes", [reaped(pid, 60)])
    elif scenario == "idle-child-holds-nothing":
        with searcher.collection._folder.held():  # forked while a look or write held the folder: they inherited it
            pids = [child(lambda: time.sleep(120)) for _ in range(4)]
        time.sleep(0.2)
        for _ in range(10):
            searcher.upsert(["lock-test"], ["a write while idle children live"])
            time.sleep(0.11)
        deadline = time.monotonic() + 20  # a child's look holds it a moment to take the writes up; a hold it
        while (busy := folder_busy(Path(path))) and time.monotonic() < deadline:  # inherited lasts its whole life
            time.sleep(0.05)
        print("busy", busy)
        for pid in pids:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        print("codes", [0])
""")


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fork")
    docs = {"aspirin": "Aspirin lowers the risk of heart attack.", "coffee": "Coffee is linked to liver health."}
    (root / "docs.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in docs.items()))
    assert main(["index", str(root / "docs.jsonl"), str(root / "col"), "--dense", "none", "--quiet"]) == 0
    return root / "col"


def _run(collection: Path, tmp_path: Path, scenario: str) -> str:
    import shutil

    path = shutil.copytree(collection, tmp_path / "col")
    run = subprocess.run([sys.executable, "-c", _SCENARIOS, str(path), scenario], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_children_forked_while_the_parent_writes_write_or_say_why_never_hang(collection, tmp_path):
    out = _run(collection, tmp_path, "write-while-parent-writes")
    codes = eval(out.split("codes", 1)[1])
    assert set(codes[:-1]) <= {0, 3} and codes[-1] == 0, out  # a child forked mid-write waited forever
    refused = [line for line in out.splitlines() if line.startswith("child:")]
    assert all("forked while its parent wrote" in line for line in refused), refused


def test_a_forked_child_sees_another_process_s_delete(collection, tmp_path):
    out = _run(collection, tmp_path, "reads-others-writes")
    assert "codes [0]" in out, out


def test_idle_forked_children_hold_no_lock_on_the_collection(collection, tmp_path):
    out = _run(collection, tmp_path, "idle-child-holds-nothing")
    assert "busy False" in out, out
