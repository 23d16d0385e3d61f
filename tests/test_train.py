"""``lsr train`` on the real splade-tiny and real SciFact rows: learning, sparsity, resume, export, bad input."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lsr.cli.main import main
from lsr.train.data import Example, load_examples
from lsr.train.losses import SCALES, contrastive
from lsr.train.config import TrainConfig
from lsr.train.loop import train
from lsr.train.model import TrainableSplade

SHORT = ["--max-length", "64", "--query-max-length", "16"]


@pytest.fixture(scope="module")
def tiny_beir(scifact, tmp_path_factory) -> Path:
    """A BEIR folder with 12 SciFact train queries, their relevant documents and 60 other documents; 4 as dev."""
    folder = tmp_path_factory.mktemp("beir") / "tiny"
    (folder / "qrels").mkdir(parents=True)
    qrels = dict(list(scifact.qrels["train"].items())[:12])
    judged = {d for docs in qrels.values() for d in docs}
    others = [d for d in scifact.corpus if d not in judged][:60]
    with open(folder / "corpus.jsonl", "w") as fh:
        for d in sorted(judged) + others:
            fh.write(json.dumps({"_id": d, **scifact.corpus[d]}) + "\n")
    with open(folder / "queries.jsonl", "w") as fh:
        for q in qrels:
            fh.write(json.dumps({"_id": q, "text": scifact.queries[q]}) + "\n")
    for split, rows in (("train", qrels.items()), ("dev", list(qrels.items())[8:12])):  # dev: mechanics, not quality
        with open(folder / "qrels" / f"{split}.tsv", "w") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            fh.writelines(f"{q}\t{d}\t{g}\n" for q, docs in rows for d, g in docs.items())
    return folder


@pytest.fixture(scope="module")
def examples(tiny_beir) -> list[Example]:
    return load_examples(str(tiny_beir))


def fresh_model() -> TrainableSplade:
    torch.set_num_threads(2)
    return TrainableSplade.load("splade-tiny", device="cpu", dtype="fp32", max_length=64, query_max_length=16)


def test_mined_negatives_exclude_judged_documents(tiny_beir, scifact, examples):
    judged_texts = {q: set(scifact.doc_texts(list(docs))) for q, docs in scifact.qrels["train"].items()}
    by_query = {scifact.queries[q]: q for q in judged_texts}
    assert len(examples) >= 12 and all(ex.negatives for ex in examples)
    for ex in examples:
        assert ex.positive in judged_texts[by_query[ex.query]]
        assert not set(ex.negatives) & judged_texts[by_query[ex.query]]


def test_model_mined_negatives_are_the_models_own_top_unjudged_documents(tiny_beir, scifact):
    from lsr.eval.datasets import load_beir
    from lsr.train.data import model_miner

    model = TrainableSplade.load("splade-tiny", device="cpu", dtype="fp32")
    mined = load_examples(str(tiny_beir), miner=model_miner(model.encoder))
    data = load_beir(tiny_beir, splits=("train",))
    doc_ids = list(data.corpus)
    doc_texts = data.doc_texts(doc_ids)
    docs = model.encoder.encode_documents(doc_texts).to_dense()
    judged = {data.queries[q]: set(data.doc_texts(list(ds))) for q, ds in data.qrels["train"].items()}
    assert len(mined) >= 12
    for ex in mined:
        scores = docs @ model.encoder.encode_queries([ex.query]).to_dense()[0]
        ranked = [doc_texts[j] for j in np.argsort(-scores, kind="stable") if doc_texts[j] not in judged[ex.query]]
        assert not set(ex.negatives) & judged[ex.query]
        assert list(ex.negatives) == ranked[: len(ex.negatives)] and len(ex.negatives) == 20
    bm25 = {ex.query: ex.negatives for ex in load_examples(str(tiny_beir))}
    assert any(bm25[ex.query] != ex.negatives for ex in mined)  # a different miner, not BM25 under another name


def _loss(model: TrainableSplade, examples: list[Example]) -> float:
    with torch.no_grad():
        q = model.encode([ex.query for ex in examples], 16)
        d = model.encode([ex.positive for ex in examples] + [ex.negatives[0] for ex in examples], 64)
        return float(contrastive(q, d))


def _doc_nnz(model: TrainableSplade, examples: list[Example]) -> float:
    with torch.no_grad():
        return float((model.encode([ex.positive for ex in examples], 64) > 0).sum(1).float().mean())


def test_a_few_steps_lower_the_training_loss(examples, tmp_path):
    model = fresh_model()
    before = _loss(model, examples)
    config = TrainConfig(blend=1.0, epochs=4, batch_size=4, lr=2e-4, max_length=64, query_max_length=16,
                         flops_query=0, flops_doc=0)
    result = train(model, examples, tmp_path, config, progress=False)
    assert result.stopped == "finished" and result.steps == result.total_steps
    assert _loss(model, examples) < 0.8 * before


def test_flops_regularisation_lowers_non_zeros(examples, tmp_path):
    model = fresh_model()
    before = _doc_nnz(model, examples)
    config = TrainConfig(blend=1.0, epochs=3, batch_size=4, lr=2e-4, max_length=64, query_max_length=16,
                         flops_query=0.05, flops_doc=0.05, flops_warmup=0.0)
    train(model, examples, tmp_path / "flops", config, progress=False)
    unregularised = fresh_model()
    train(unregularised, examples, tmp_path / "plain",
          TrainConfig(**{**config.__dict__, "flops_query": 0.0, "flops_doc": 0.0}), progress=False)
    assert _doc_nnz(model, examples) < 0.7 * before
    assert _doc_nnz(model, examples) < 0.7 * _doc_nnz(unregularised, examples)


def _train_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lsr", "train", str(data), str(out), "--batch-size", "2", "--epochs", "3",
            "--checkpoint-every", "3", "--dev-every", "2", "--patience", "100", "--seed", "7", "--quiet", *SHORT, *extra]


@pytest.fixture(scope="module")
def trained(tiny_beir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "model"
    done = subprocess.run(_train_command(tiny_beir, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and not (out / "checkpoint.pt").exists()
    return out


def test_kill_9_then_resume_ends_with_the_uninterrupted_weights(tiny_beir, trained, tmp_path):
    out = tmp_path / "model"
    proc = subprocess.Popen(_train_command(tiny_beir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = subprocess.run(_train_command(tiny_beir, out, "--resume"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    resumed, uninterrupted = load_file(out / "model.safetensors"), load_file(trained / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name
    start = load_file(_bundled_weights())
    assert any(not torch.equal(start[n], uninterrupted[n]) for n in uninterrupted if n in start)
    # The dev scores and the best step kept survive the kill: they travel in the checkpoint.
    fields = ("dev_split", "dev_scores", "kept", "stopped")
    resumed_run, uninterrupted_run = (json.loads((folder / "lsr_train.json").read_text()) for folder in (out, trained))
    assert {f: resumed_run[f] for f in fields} == {f: uninterrupted_run[f] for f in fields}
    assert uninterrupted_run["dev_split"] == "dev" and len(uninterrupted_run["dev_scores"]) >= 4
    # The run's first step travels in the checkpoint too: a resumed summary said "loss ... at step 74", its own first.
    assert uninterrupted_run["first_step"]["step"] == 1 and resumed_run["first_step"] == uninterrupted_run["first_step"]
    assert resumed_run["last_step"]["step"] == resumed_run["total_steps"] and "at step 1 ->" in done.stdout


def test_how_openmp_threads_wait_changes_no_weight(tiny_beir, tmp_path):
    """lsr train makes its threads wait passively when other work holds the CPUs (lsr.encode.cpu_share): that is safe
    only because the wait policy changes no arithmetic, so a run trains the same weights whichever it got."""
    import os

    runs = {}
    for policy in ("PASSIVE", "ACTIVE"):
        out = tmp_path / policy
        env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
        done = subprocess.run(_train_command(tiny_beir, out, "--threads", "2", "--epochs", "2"), capture_output=True,
                              text=True, timeout=600, env={**env, "OMP_WAIT_POLICY": policy})
        assert done.returncode == 0, done.stderr
        assert json.loads((out / "lsr_train.json").read_text())["omp_wait_policy"] == policy
        runs[policy] = (out / "model.safetensors").read_bytes()
    assert runs["PASSIVE"] == runs["ACTIVE"]


def test_a_run_into_an_out_another_run_holds_is_refused_in_one_line(tiny_beir, tmp_path):
    """A second `lsr train OUT` (or `--resume`) while a run writes OUT would interleave their checkpoints."""
    from lsr.files import exclusive_folder

    out = tmp_path / "model"
    with exclusive_folder(out):  # as the run in progress holds it
        done = subprocess.run(_train_command(tiny_beir, out), capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and done.stderr.endswith(
        f"lsr train: error: another process (`lsr index`, `lsr train`, `lsr repair` or a writer such as `lsr serve`) "
        f"is writing {out} right now; wait for it to finish or stop it, then run this again\n")
    assert list(out.iterdir()) == []


def test_kill_9_while_the_model_folder_is_written_leaves_nothing_loadable_and_resume_writes_it(tiny_beir, trained,
                                                                                               tmp_path):
    """The folder is written aside and moved in with config.json last, after a checkpoint of the last step: a kill
    that once left config, weights and a vocabulary-less tokenizer_config.json (a folder that loaded and made every
    word [UNK]) now leaves no config.json, and --resume writes the uninterrupted run's folder."""
    from lsr.encode.models import ModelNotFoundError
    from lsr.encode.splade import SpladeEncoder
    from lsr.train.checkpoint import read_checkpoint
    from lsr.train.export import STAGING

    for attempt in range(3):  # the write lasts a fraction of a second: on a busy machine the poll may miss it
        out = tmp_path / f"model-{attempt}"
        proc = subprocess.Popen(_train_command(tiny_beir, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not (out / STAGING).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        killed = proc.wait() == -signal.SIGKILL
        if killed and not (out / "config.json").exists():
            break
        # the kill came after the write: config.json went in last (the emptied staging folder may still be there)
        assert not (out / STAGING).exists() or not any((out / STAGING).iterdir())
    else:
        pytest.fail("each run had written its folder before it could be killed")
    with pytest.raises((ModelNotFoundError, ValueError, OSError)):
        SpladeEncoder.from_pretrained(str(out), device="cpu")
    state = read_checkpoint(out)
    assert state["step"] == json.loads((trained / "lsr_train.json").read_text())["total_steps"]
    again = subprocess.run(_train_command(tiny_beir, out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "add --resume" in again.stderr
    done = subprocess.run(_train_command(tiny_beir, out, "--resume"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not (out / STAGING).exists() and not (out / "checkpoint.pt").exists()
    resumed, uninterrupted = load_file(out / "model.safetensors"), load_file(trained / "model.safetensors")
    assert all(torch.equal(resumed[name], tensor) for name, tensor in uninterrupted.items())
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # transformers left it 0600


def test_a_stop_during_the_closing_eval_prints_the_resume_command_and_the_resume_finishes(tiny_beir, tmp_path):
    """SIGTERM (or Ctrl-C) while the trained model was scored printed a bare "terminated": OUT held a checkpoint and
    no summary, a rerun was refused as an unfinished run, and nothing said --resume finishes it."""
    import shutil

    evalset = shutil.copytree(tiny_beir, tmp_path / "evalset")
    shutil.copy(evalset / "qrels" / "dev.tsv", evalset / "qrels" / "test.tsv")
    for attempt in range(3):  # the closing eval lasts about a second: on a busy machine the poll may miss it
        out = tmp_path / f"model-{attempt}"
        command = _train_command(tiny_beir, out, "--eval", str(evalset))
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not (out / "config.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=300)[1]
        if proc.returncode == 128 + signal.SIGTERM and not (out / "lsr_train.json").exists():
            break
        # it had finished before the signal came, or the signal came once its summary was written (no resume then)
        assert proc.returncode in (0, 128 + signal.SIGTERM, -signal.SIGTERM), err
        assert (out / "lsr_train.json").exists() and not (out / "checkpoint.pt").exists() and "--resume" not in err
    else:
        pytest.fail("each run had finished before it could be stopped in its closing eval")
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted (SIGTERM) after step ") and "while writing the model and its scores" in last
    assert last.endswith("--resume") and not (out / "lsr_train.json").exists() and (out / "checkpoint.pt").exists()
    done = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "lsr_train.json").read_text())["eval"] and not (out / "checkpoint.pt").exists()


def test_a_stop_in_the_closing_dev_scoring_prints_the_resume_command(tiny_beir, tmp_path, monkeypatch, capsys):
    """The last step's checkpoint was written, then a Ctrl-C while the guard scored the dev split a last time (or a
    second Ctrl-C in a step) printed a bare "interrupted": nothing said --resume finishes the run."""
    from lsr.cli.main import main
    from lsr.train import guard

    def stopped(*_args, **_kwargs):
        raise KeyboardInterrupt  # where a Ctrl-C lands in that scoring

    out = tmp_path / "out"
    argv = _train_command(tiny_beir, out, "--max-steps", "2")[3:]  # the arguments after `-m lsr`
    with monkeypatch.context() as patch:
        patch.setattr(guard.Guard, "finish", stopped)
        assert main(argv) == 128 + signal.SIGINT
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("interrupted (SIGINT); the training up to its last checkpoint is in "
                           f"{out / 'checkpoint.pt'}")
    assert last.endswith("--resume") and (out / "checkpoint.pt").is_file() and not (out / "config.json").exists()
    assert main(argv + ["--resume"]) == 0
    summary = json.loads((out / "lsr_train.json").read_text())
    assert (out / "config.json").is_file() and summary["steps"] == 2
    assert summary["last_step"]["step"] == 2 and summary["first_step"]["step"] == 1  # last was null: no loss line


def test_a_second_export_cut_short_leaves_no_config_beside_the_first_exports_files(tmp_path, monkeypatch):
    """A --max-minutes run resumed exports into a folder that holds the first export: a kill between two renames
    left the old config.json beside new weights, a mix that loaded without error. Now config.json goes first."""
    from lsr.encode.models import ModelNotFoundError
    from lsr.encode.splade import SpladeEncoder
    from lsr.train import export

    out = tmp_path / "out"
    export.save_model_folder(fresh_model(), out)
    SpladeEncoder.from_pretrained(str(out), device="cpu")  # the first export loads
    renames = []

    def killed_after_one(src, dst):
        if Path(dst).parent == out:  # a move into OUT, not a staged file's own atomic write
            if renames:
                raise KeyboardInterrupt  # where a kill -9 could land: one entry moved in, the rest still staged
            renames.append(dst)
        os.rename(src, dst)

    monkeypatch.setattr(export.os, "replace", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        export.save_model_folder(fresh_model(), out)
    assert len(renames) == 1 and not (out / "config.json").exists()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        SpladeEncoder.from_pretrained(str(out), device="cpu")


def test_sigterm_finishes_the_step_checkpoints_it_and_exits_143(tiny_beir, tmp_path):
    """A scheduler's SIGTERM (pre-emption) stops the run like Ctrl-C: after the current step, with a checkpoint of
    that step, not of the last periodic one (which a plain exit would fall back to)."""
    from lsr.train.checkpoint import read_checkpoint

    out = tmp_path / "model"
    proc = subprocess.Popen(_train_command(tiny_beir, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    line = next(line for line in stderr.splitlines() if line.startswith("interrupted (SIGTERM) at step "))
    step = int(line.split(" at step ")[1].split()[0])
    assert read_checkpoint(out)["step"] == step >= 3 and "--resume" in line


def _bundled_weights() -> str:
    from lsr.encode.models import resolve_model

    return str(Path(resolve_model("splade-tiny")) / "model.safetensors")


def test_saved_folder_loads_in_splade_encoder_and_sparse_encoder_with_equal_vectors(trained, scifact):
    from sentence_transformers import SparseEncoder

    from lsr.encode.splade import SpladeEncoder

    texts = scifact.doc_texts(list(scifact.corpus)[:6]) + ["aspirin and heart attacks"]
    encoder = SpladeEncoder.from_pretrained(str(trained), device="cpu")
    assert type(encoder.model).__name__ == "NativeBertForMaskedLM"  # the written folder needs no transformers to load
    ours = encoder.encode_documents(texts).to_dense()
    theirs = SparseEncoder(str(trained), device="cpu").encode_document(texts, convert_to_tensor=True).to_dense().numpy()
    assert (ours > 0).sum() > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert json.loads((trained / "lsr_train.json").read_text())["stopped"] == "finished"


def _only_test_split(scifact, folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "", "text": "a document"}) + "\n")
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "a query"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return folder


def _train_and_dev_splits(folder: Path, *, dev_finds: bool) -> Path:
    """A BEIR folder whose dev qrels are its train qrels (``dev_finds``), or judge nothing of its corpus relevant."""
    (folder / "qrels").mkdir(parents=True)
    words = ["aspirin heart", "statin muscle", "zinc kidney", "vitamin bone", "iron blood", "salt pressure"]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"{w} study"}) + "\n"
                                                 for i, w in enumerate(words)))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": w}) + "\n"
                                                  for i, w in enumerate(words)))
    train = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(4))
    (folder / "qrels" / "train.tsv").write_text(train)
    (folder / "qrels" / "dev.tsv").write_text(train if dev_finds else "query-id\tcorpus-id\tscore\nq5\td5\t0\n"
                                                                      "q4\tgone\t1\n")
    return folder


def test_a_bad_data_file_is_one_line_beside_other_work_too(tmp_path):
    """Where other work held the CPUs, the wait-policy notice came first, and a bad file took two lines."""
    from lsr.encode.cpu_share import WAIT_POLICY_VARIABLES, usable_cpus

    data = tmp_path / "pairs.jsonl"
    data.write_text("\n")
    env = {key: value for key, value in os.environ.items() if key not in WAIT_POLICY_VARIABLES}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(usable_cpus())]
    try:
        time.sleep(0.5)
        done = subprocess.run([sys.executable, "-m", "lsr", "train", str(data), str(tmp_path / "out"), "--threads", "2"],
                              capture_output=True, text=True, timeout=300, env=env)
    finally:
        for loop in busy:
            loop.kill()
            loop.wait()
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("case, message", [
    ("no-train-split", "has no qrels/train.tsv"),
    ("empty-jsonl", "holds no training rows"),
    ("no-positive", "line 2: no 'positive' key (the row has 'query'; keys: query or anchor, positive, "),
    ("other-keys", "line 1: no 'query' key (the row has 'q', 'pos'; keys: query or anchor, positive, "),
    ("query-and-anchor", "line 1: both 'query' and 'anchor', which name the same thing; keep one"),  # anchor dropped
    ("blank-positive", "line 1: 'positive' must be a non-empty string"),
    ("batch-size-0", "--batch-size must be positive"),
    ("max-steps-0", "--max-steps must be positive, got 0"),
    ("threads-0", "--threads must be ≥ 1"),
    ("blend-0", "--blend must be in (0, 1]"),
    ("model-negatives-for-jsonl", "--negatives model mines a BEIR corpus"),
    ("no-dev-split", "has no qrels/dev.tsv to validate on"),
    ("nan-score", "line 1: 'scores' must be 2 finite numbers"),
    ("huge-score", "line 1: teacher 'scores' must lie within ±10,000, got 1e+308"),  # inf in float32: "lower --lr"
    ("huge-int-score", "line 1: teacher 'scores' must lie within ±10,000, got a number of 401 digits"),  # Overflow-
    ("label-column", "line 1: a 'label' column is not read; give the teacher's 'scores'"),  # Error; label ignored
    ("deep-json", "line 1: JSON nested too deeply to read"),  # "maximum recursion depth exceeded", no line
    ("max-minutes-nan", "--max-minutes must be a positive number"),  # NaN was no limit at all
    ("seed-negative", "--seed must be in [0, 2**32)"),
    ("flops-inf", "--flops-query and --flops-doc must be numbers from 0 to 1000"),  # these failed at step 1, as
    ("flops-huge", "must be numbers from 0 to 1000, got 1e-05 and 1e+300"),  # "lower --lr"
    ("checkpoint-every-0", "--checkpoint-every must be positive"),  # after the data and the model had loaded
    ("not-utf8", "pairs.jsonl line 2: not UTF-8 text (byte 0xff at column 3)"),  # named neither file nor line
    ("lone-surrogate", "pairs.jsonl line 2: holds a lone surrogate"),  # failed when its batch came up, unnamed
    ("max-length-1024", "--max-length 1024 is more than the 512 token positions splade-tiny has"),  # at a long text
    ("out-under-a-file", "pairs.jsonl is a file, not a folder"),  # a bare errno, once the data and the model had loaded
    # a contrastive loss of 0: the run trained only sparsity and exited 0
    ("one-example", 'nothing to learn from: with one example a query has no in-batch negatives, and '),
    ("batch-size-1", "nothing to learn from: with --batch-size 1 a query has no in-batch negatives, and --hard-negatives 0"),
    # every in-batch document was masked as relevant: the same query, or the same positive, in every row
    ("one-query", "nothing to learn from: with every positive relevant to every query (one query, or one positive, in "
                  "all the rows) a query has no in-batch negatives, and "),
    ("one-positive", "nothing to learn from: with every positive relevant to every query"),
    ("eval-unknown", "unknown BEIR dataset 'nosuchdataset'"),  # after the model loaded, leaving an empty OUT
    ("damaged-gzip", "pairs.jsonl.gz is not a whole gzip file"),  # was taken for a BEIR name: "not a BEIR folder"
    ("negative-is-positive", "line 1: 'negatives' holds the positive itself"),  # silently no negative for the row
    ("zero-width-positive", "line 1: 'positive' must be a non-empty string"),  # trained on a text with no word
    ("misspelt-key", "line 1: unknown key 'score'; did you mean 'scores'?"),  # dropped: trained without the teacher
    ("hard-negs-key", "line 1: unknown key 'hard_negs'; did you mean 'negatives'?"),  # too far from ours for difflib
    ("teacher-scores-key", "line 1: unknown key 'teacher_scores'; did you mean 'scores'?"),
    # validated on the training queries, as if held out
    ("dev-is-train", "qrels/dev.tsv is its qrels/train.tsv, the split being trained on"),
    # every dev score 0: the untrained model was kept, exit 0
    ("dev-finds-nothing", "dev split judges no document of its corpus relevant, so every score on it would be 0"),
    # its files changed the --model folder's, so every --resume was refused as "the --model folder's files differ"
    ("out-inside-model", "lies inside the --model folder"),
    # a test "gain" measured on the training queries, printed with a p-value as if held out
    ("eval-trained-split", "beir scores the test split this run trains on"),
    ("eval-trained-split-archived", "beir.zip scores the test split this run trains on"),  # a folder and its zip
    ("jsonl-with-split", "--split does nothing here: "),  # ignored: the rows were trained on as if it were not given
    ("jsonl-with-data-dir", "--data-dir does nothing here: "),
    # taken and ignored, then a --resume that changed them was refused as a change of settings
    ("dev-every-without-dev", "--dev-every, --patience do nothing here: this run has no held-out split to validate on"),
    ("accumulate-huge", "--accumulate 1000000000 is more than the 1 batch of --batch-size 16 in an epoch of 2 examples"),
    ("json-name", "pairs.json is neither a training file (named .jsonl or .jsonl.gz) nor a BEIR .zip or .tar.gz archive"),
])
def test_bad_input_fails_in_one_line_with_exit_2(case, message, scifact, tmp_path, capsys):
    data, extra = tmp_path / "pairs.jsonl", []
    if case in ("no-train-split", "no-dev-split", "eval-trained-split", "eval-trained-split-archived"):
        data = _only_test_split(scifact, tmp_path / "beir")
        archived = shutil.make_archive(str(tmp_path / "beir"), "zip", tmp_path, "beir")
        extra = {"no-dev-split": ["--split", "test", "--dev-split", "dev"],
                 "eval-trained-split": ["--split", "test", "--eval", str(data)],
                 "eval-trained-split-archived": ["--split", "test", "--eval", archived]}.get(case, [])
    elif case in ("dev-is-train", "dev-finds-nothing"):
        data = _train_and_dev_splits(tmp_path / "beir", dev_finds=case == "dev-is-train")
    elif case in ("hard-negs-key", "teacher-scores-key"):
        key, value = ("hard_negs", ["n"]) if case == "hard-negs-key" else ("teacher_scores", [2.0, 1.0])
        data.write_text(json.dumps({"query": "q", "positive": "p", "negatives": ["n"], key: value}) + "\n")
    elif case == "damaged-gzip":
        data = tmp_path / "pairs.jsonl.gz"
        data.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n")  # named .gz, not compressed
    elif case == "negative-is-positive":
        data.write_text(json.dumps({"query": "q", "positive": "p", "negatives": ["n", "p"]}) + "\n")
    elif case == "zero-width-positive":
        data.write_text(json.dumps({"query": "q", "positive": "\u200b\u200b"}) + "\n")
    elif case == "misspelt-key":
        data.write_text(json.dumps({"query": "q", "positive": "p", "negatives": ["n"], "score": [2.0, 1.0]}) + "\n")
    elif case == "empty-jsonl":
        data.write_text("\n")
    elif case == "nan-score":  # one such row made every weight NaN, and the run wrote a dead model with exit 0
        data.write_text(json.dumps({"query": "q", "positive": "p", "negatives": ["n"], "scores": [float("nan"), 1.0]}))
    elif case == "huge-score":
        data.write_text(json.dumps({"query": "q", "positive": "p", "negatives": ["n"], "scores": [1e308, 1.0]}))
    elif case == "huge-int-score":
        data.write_text('{"query": "q", "positive": "p", "negatives": ["n"], "scores": [' + "9" * 401 + ', 1.0]}\n')
    elif case == "label-column":  # sentence-transformers' MarginMSE layout: trained contrastive-only, without a word
        data.write_text(json.dumps({"anchor": "q", "positive": "p", "negative": "n", "label": 1.0}) + "\n")
    elif case == "deep-json":
        data.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    elif case == "not-utf8":
        data.write_bytes(b"\xef\xbb\xbf" + json.dumps({"query": "q", "positive": "p"}).encode() + b"\n{\"\xff\"}\n")  # a BOM is fine
    elif case == "accumulate-huge":  # one step looped over 10^9 empty micro-batches, deaf to SIGTERM for minutes
        data.write_text("".join(json.dumps({"query": f"q{i}", "positive": f"p{i}"}) + "\n" for i in range(2)))
        extra = ["--accumulate", "1000000000"]
    elif case == "json-name":  # was "not a BEIR folder, .zip or .tar.gz archive"
        data = tmp_path / "pairs.json"
        data.write_text(json.dumps({"query": "q", "positive": "p", "negatives": ["n"]}) + "\n")
    elif case in ("one-query", "one-positive"):
        data.write_text("".join(json.dumps({"query": "red fruit" if case == "one-query" else f"red fruit {i}",
                                            "positive": f"apple {i}" if case == "one-query" else "an apple"}) + "\n"
                                for i in range(8)))
    elif case in ("other-keys", "query-and-anchor", "blank-positive"):
        data.write_text(json.dumps({"other-keys": {"q": "a query", "pos": "a document"},
                                    "query-and-anchor": {"query": "q", "anchor": "a", "positive": "p"},
                                    "blank-positive": {"query": "q", "positive": " "}}[case]) + "\n")
    elif case == "no-positive":
        data.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n" + json.dumps({"query": "q"}) + "\n")
    elif case == "lone-surrogate":
        data.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n" + json.dumps({"query": "bad \ud800", "positive": "p"})
                        + "\n")
    else:
        data.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n")
        extra = {"batch-size-0": ["--batch-size", "0"], "threads-0": ["--threads", "0"], "max-steps-0": ["--max-steps", "0"],
                 "blend-0": ["--blend", "0"], "max-minutes-nan": ["--max-minutes", "nan"], "seed-negative": ["--seed", "-1"],
                 "flops-inf": ["--flops-doc", "inf"],
                 "flops-huge": ["--flops-doc", "1e300"], "checkpoint-every-0": ["--checkpoint-every", "0"],
                 "max-length-1024": ["--max-length", "1024"], "out-under-a-file": [], "one-example": [],
                 "batch-size-1": ["--batch-size", "1", "--hard-negatives", "0"], "eval-unknown": ["--eval", "nosuchdataset"],
                 "jsonl-with-split": ["--split", "dev"], "jsonl-with-data-dir": ["--data-dir", str(tmp_path)],
                 "dev-every-without-dev": ["--dev-every", "10", "--patience", "5"]}.get(case, ["--negatives", "model"])
    out = tmp_path / "runs" / "out"  # neither OUT nor the folder made for it is left behind
    if case == "out-under-a-file":
        out = data / "model"
    elif case == "out-inside-model":
        (tmp_path / "base").mkdir()
        out, extra = tmp_path / "base" / "out", ["--model", str(tmp_path / "base")]
    assert main(["train", str(data), str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lsr train: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not (tmp_path / "base" / "out").exists()


def test_an_existing_out_that_cannot_be_written_is_refused_before_anything_loads(tmp_path, capsys, unwritable_folder):
    out = unwritable_folder
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"query": "q", "positive": "p"}) + "\n")
    assert main(["train", str(data), str(out), "--negatives", "model"]) == 1  # was an errno at the first checkpoint
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lsr train: error: cannot write in the model folder {out}:") and len(err.splitlines()) == 1
    assert out.is_dir() and not any(out.iterdir())


def test_a_gzipped_or_upper_case_jsonl_file_is_read_as_training_rows(tmp_path):
    """pairs.jsonl.gz and PAIRS.JSONL were taken for BEIR names and refused as "not a BEIR folder"."""
    import gzip

    rows = "".join(json.dumps({"query": f"q{i}", "positive": f"p{i}", "negatives": [f"n{i}"]}) + "\n" for i in range(3))
    (tmp_path / "pairs.jsonl").write_text(rows)
    (tmp_path / "PAIRS.JSONL").write_text(rows)
    (tmp_path / "pairs.jsonl.gz").write_bytes(gzip.compress(rows.encode()))
    plain = load_examples(str(tmp_path / "pairs.jsonl"))
    assert len(plain) == 3
    assert load_examples(str(tmp_path / "pairs.jsonl.gz")) == plain == load_examples(str(tmp_path / "PAIRS.JSONL"))


def test_a_time_limit_that_runs_out_on_the_last_step_is_a_finished_run(examples, tmp_path):
    """It said "time limit", kept its checkpoint and offered a --resume with no step left to train."""
    config = TrainConfig(epochs=1, batch_size=len(examples), max_length=32, query_max_length=16)
    result = train(fresh_model(), examples, tmp_path / "out", config, max_minutes=1e-9, progress=False)
    assert (result.steps, result.total_steps, result.stopped) == (1, 1, "finished")


def test_max_steps_caps_the_run_and_its_learning_rate_decays_over_them(examples, tmp_path):
    """There was no way to cap the steps (sentence-transformers' max_steps), and --epochs takes whole passes only."""
    from lsr.train.loop import lr_factor

    config = TrainConfig(epochs=4, max_steps=3, batch_size=2, max_length=32, query_max_length=16)
    result = train(fresh_model(), examples, tmp_path / "out", config, progress=False)
    assert (result.steps, result.total_steps, result.stopped) == (3, 3, "finished") and 4 * len(examples) // 2 > 3
    assert lr_factor(2, result.total_steps, config.warmup) > 0 == lr_factor(3, result.total_steps, config.warmup)


def test_max_steps_overrides_epochs_and_trains_past_them(examples, tmp_path):
    """--max-steps capped the run at the epochs' steps, where sentence-transformers' max_steps (and HF's) overrides
    num_train_epochs: asking for more steps than one epoch holds trained one epoch and said "finished"."""
    config = TrainConfig(epochs=1, max_steps=5, batch_size=len(examples) // 2, max_length=32, query_max_length=16)
    result = train(fresh_model(), examples, tmp_path / "out", config, progress=False)
    assert (result.steps, result.total_steps, result.stopped) == (5, 5, "finished")
    assert [row["step"] for row in result.history] == [1, 2, 3, 4, 5]  # steps 3..5 run the next epochs' batches


def test_a_run_under_max_steps_resumes_with_another_epochs_but_not_other_max_steps(examples, tmp_path, capsys):
    """--epochs stayed in the resume check under --max-steps, which overrides it: a resume that changed only
    --epochs, which decides nothing there, was refused."""
    out = tmp_path / "out"
    config = TrainConfig(epochs=1, max_steps=3, batch_size=4, max_length=32, query_max_length=16)
    result = train(fresh_model(), examples, out, config, progress=False, checkpoint_every=1, max_minutes=1e-9)
    assert (result.steps, result.stopped) == (1, "time limit")
    with pytest.raises(ValueError, match=r"\(--max-steps 3 then, 4 now\)"):
        train(fresh_model(), examples, out, TrainConfig(**{**asdict(config), "max_steps": 4}), resume=True,
              progress=False)
    # `lsr train --resume` says so before the data, the model or an --eval loads (it did once all had: 88 s here)
    from lsr.cli.main import main

    flags = ["--epochs", "1", "--batch-size", "4", "--max-length", "32", "--query-max-length", "16", "--resume",
             "--eval", "nosuchdataset"]
    assert main(["train", str(tmp_path / "unread.jsonl"), str(out), "--max-steps", "4", *flags]) == 2
    assert "(--max-steps 3 then, 4 now)" in capsys.readouterr().err
    result = train(fresh_model(), examples, out, TrainConfig(**{**asdict(config), "epochs": 7}), resume=True,
                   progress=False)
    assert (result.steps, result.total_steps, result.stopped) == (3, 3, "finished")


def test_fp16_scales_the_loss_skips_overflowing_steps_and_resumes_with_its_scale(examples, tmp_path):
    """fp16 trained with no loss scale: a SPLADE gradient's small entries underflow fp16 to zero, and ``--dtype
    auto`` picks fp16 on a GPU without bf16. The scale starts at 2^16, where a step's gradient can overflow: such a
    step is skipped (the weights stay), the scale halves, and the run goes on where it raised "not finite"."""
    from lsr.train.checkpoint import read_checkpoint
    from lsr.train.loop import lr_factor

    torch.set_num_threads(2)
    model = TrainableSplade.load("splade-tiny", device="cpu", dtype="fp16", max_length=64, query_max_length=16)
    config = TrainConfig(epochs=1, max_steps=4, batch_size=4, max_length=32, query_max_length=16)
    out = tmp_path / "out"
    result = train(model, examples, out, config, progress=False, checkpoint_every=1, max_minutes=1e-9)
    assert (result.steps, result.stopped) == (1, "time limit")
    rows = list(result.history)
    scale = read_checkpoint(out)["loss_scale"]
    assert scale["scale"] in (2.0 ** 16, 2.0 ** 15) and scale["scale"] == 2.0 ** (16 - result.history[0]["skipped"])
    resumed = TrainableSplade.load("splade-tiny", device="cpu", dtype="fp16", max_length=64, query_max_length=16)
    result = train(resumed, examples, out, config, resume=True, progress=False, checkpoint_every=1)
    assert (result.steps, result.stopped) == (4, "finished") and all(math.isfinite(row["loss"]) for row in result.history)
    skipped = sum(row["skipped"] for row in result.history)
    assert read_checkpoint(out)["loss_scale"]["scale"] == scale["scale"] / 2 ** skipped  # resumed from the saved scale
    assert skipped < 3  # the other steps trained: the weights moved
    # A skipped step does not advance the learning-rate schedule (as in sentence-transformers' trainer), across the
    # resume too: it advanced, so the run decayed past steps it never applied.
    rows += result.history
    assert result.skipped_steps == sum(row["skipped"] for row in rows) >= 1  # 2^16 overflows the first steps
    skipped_before = 0
    for row in rows:
        assert row["lr"] == pytest.approx(config.lr * lr_factor(row["step"] - 1 - skipped_before, 4, config.warmup))
        skipped_before += int(row["skipped"])
    start = TrainableSplade.load("splade-tiny", device="cpu", dtype="fp32", max_length=64, query_max_length=16)
    assert any(not torch.equal(a, b) for a, b in zip(start.parameters, resumed.parameters))


def test_a_loss_that_stops_being_finite_stops_the_run_before_the_weights_and_writes_nothing(examples, tmp_path,
                                                                                           capsys):
    """A learning rate that blows the weights up: the step whose loss is NaN must not reach the optimizer, and the
    run fails in one line instead of writing a model that encodes every text to nothing."""
    data, out = tmp_path / "pairs.jsonl", tmp_path / "out"
    data.write_text("".join(json.dumps({"query": ex.query, "positive": ex.positive, "negatives": [ex.negatives[0]]})
                            + "\n" for ex in examples[:8]))
    assert main(["train", str(data), str(out), "--lr", "1e30", "--epochs", "3", "--batch-size", "4",
                 "--max-length", "32", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lsr train: error: step ") and "not finite" in err and len(err.splitlines()) == 1
    assert "nothing was written: lower --lr" in err
    assert not (out / "model.safetensors").exists()
    # A checkpoint of the wrecked weights was written at step 1, yet the line said nothing was; and the progress bar
    # was drawn again after the error, which was glued onto its line.
    again = tmp_path / "again"
    assert main(["train", str(data), str(again), "--lr", "1e30", "--epochs", "3", "--batch-size", "4",
                 "--max-length", "32", "--checkpoint-every", "1"]) == 2
    last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]
    assert last.startswith("lsr train: error: step 2: the loss or its gradient is not finite"), last
    assert f"{again}'s checkpoint (step 1) holds the weights before it, which may already have diverged" in last
    # The last step's own update is checked too: one step at 1e30 exported a model that encodes nothing, exit 0.
    once = tmp_path / "once"
    assert main(["train", str(data), str(once), "--lr", "1e30", "--max-steps", "1", "--batch-size", "4",
                 "--max-length", "32", "--quiet"]) == 2
    assert "step 1: the update left weights whose loss is not finite, so no model was exported" in \
        capsys.readouterr().err
    assert not (once / "model.safetensors").exists()


def test_inference_free_trains_documents_against_idf_queries_and_exports_the_table(examples, tmp_path, caplog):
    from lsr.encode.splade import InferenceFreeQueryEncoder
    from lsr.train.export import save_model_folder

    model = fresh_model()
    model.use_idf_queries(sorted({t for ex in examples for t in (ex.positive, *ex.negatives)}))
    queries = [ex.query for ex in examples]

    def loss() -> float:  # at the best logit scale, as training scores it (IDF queries are far from scale 1)
        with torch.no_grad():
            d = model.encode([ex.positive for ex in examples] + [ex.negatives[0] for ex in examples], 64)
            q = model.encode_idf_queries(queries, 16)
            return min(float(contrastive(q, d, scale=scale)) for scale in SCALES)

    before = loss()
    config = TrainConfig(blend=1.0, epochs=4, batch_size=4, lr=2e-4, max_length=64, query_max_length=16,
                         inference_free=True)
    train(model, examples, tmp_path / "run", config, progress=False)
    assert loss() < 0.8 * before
    save_model_folder(model, tmp_path / "out")
    served_side = InferenceFreeQueryEncoder.from_pretrained(str(tmp_path / "out"))
    served = served_side.encode_queries(queries).to_dense()
    trained = model.encode_idf_queries(queries, 64).cpu().numpy()
    seen = trained > 0  # the training table's words: the served weights are the trained ones
    np.testing.assert_allclose(served[seen], trained[seen], rtol=1e-6)
    # a word no training document had weighs as the rarest one, where a 0 dropped it from every query (a collection
    # holding it returned nothing); --eval's query side (query_encoder) weighs it alike
    vocab = model.encoder.vocab
    word = next(vocab[i] for i in range(2000, len(vocab)) if model.idf[i] == 0 and vocab[i].isalpha())
    unseen = served_side.encode_queries([word]).to_dicts()[0]
    assert unseen == {word: pytest.approx(float(model.idf.max()))}, unseen
    assert model.query_encoder().encode_queries([word]).to_dicts()[0] == unseen
    assert model.encode_idf_queries([word], 16).abs().sum() == 0  # training keeps 0 (IDF-aware FLOPS)

    # sentence-transformers loads the same two sides: a Router, IDF weights for queries, the MLM for documents
    from sentence_transformers import SparseEncoder

    from lsr.encode.splade import SpladeEncoder

    theirs = SparseEncoder(str(tmp_path / "out"), device="cpu")
    documents = [ex.positive for ex in examples[:4]]
    np.testing.assert_allclose(theirs.encode_query(queries, convert_to_tensor=True).to_dense().numpy(), served, rtol=1e-6)
    long_query = [" ".join(ex.positive for ex in examples)]  # past 256 tokens: sentence-transformers cut it at 512
    np.testing.assert_allclose(theirs.encode_query(long_query, convert_to_tensor=True).to_dense().numpy(),
                               served_side.encode_queries(long_query).to_dense(), rtol=1e-6)
    both = SpladeEncoder.from_pretrained(str(tmp_path / "out"), device="cpu")
    ours = both.encode_documents(documents).to_dense()
    np.testing.assert_allclose(theirs.encode_document(documents, convert_to_tensor=True).to_dense().numpy(), ours,
                               rtol=1e-4, atol=1e-5)
    # its queries through SpladeEncoder are the model's expansions, where SparseEncoder gives the IDF weights: said once
    with caplog.at_level("WARNING", logger="lsr.encode.splade"):
        both.encode_queries(queries[:1]), both.encode_queries(queries[:1])
    said = [r.getMessage() for r in caplog.records if "idf.json" in r.getMessage()]
    assert len(said) == 1 and "was trained for IDF queries" in said[0] and "InferenceFreeQueryEncoder" in said[0], said


def test_an_inference_free_run_is_scored_and_searched_with_its_idf_queries(graded_beir, tmp_path, capsys):
    """--eval scores the variant as it will serve (IDF queries, not the model's own), on each dataset it names, and a
    collection indexed with the trained folder searches with those IDF queries by default."""
    import shutil

    from lsr.encode.splade import InferenceFreeQueryEncoder, SpladeEncoder
    from lsr.search.searcher import Searcher
    from lsr.train.evaluate import sparse_quality

    data, other = tmp_path / "graded", tmp_path / "other"
    shutil.copytree(graded_beir, data)
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\nq2\td4\t1\nq3\td5\t1\n")
    shutil.copytree(graded_beir, other)  # the same documents judged otherwise: another dataset's scores
    (other / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\nq3\td9\t1\n")
    out = tmp_path / "out"
    assert main(["train", str(data), str(out), "--inference-free", "--eval", str(data), "--eval", str(other),
                 "--eval", str(data), "--batch-size", "2", "--epochs", "2", "--quiet", *SHORT]) == 0
    printed = capsys.readouterr().out
    evals = json.loads((out / "lsr_train.json").read_text())["eval"]
    assert [scores["dataset"] for scores in evals] == [str(data), str(other)]  # each named dataset once, in order
    documents = SpladeEncoder.from_pretrained(str(out), device="cpu")
    idf_queries = InferenceFreeQueryEncoder.from_pretrained(str(out))
    for scores, dataset in zip(evals, (data, other)):
        served = sparse_quality(documents, str(dataset), progress=False, query_encoder=idf_queries)
        assert scores["after"] == pytest.approx(served, abs=1e-9)
        assert scores["before"]["query_nnz"] == pytest.approx(served["query_nnz"])  # the same IDF queries before
        assert f"{dataset} test nDCG@10 {scores['before']['ndcg@10']:.4f} -> {served['ndcg@10']:.4f}" in printed
        assert 0 < scores["p_value"] <= 1 and scores["test"].startswith("paired randomization")  # after vs before
    assert evals[0]["after"]["ndcg@10"] != pytest.approx(evals[1]["after"]["ndcg@10"])
    own = sparse_quality(documents, str(data), progress=False)
    assert evals[0]["after"]["query_nnz"] != pytest.approx(own["query_nnz"])  # the model's own queries are not scored

    collection = tmp_path / "collection"
    assert main(["index", str(data), str(collection), "--model", str(out), "--dense", "none", "--bm25", "none",
                 "--quiet"]) == 0
    searcher = Searcher.open(collection, device="cpu")
    assert isinstance(searcher.query_encoder, InferenceFreeQueryEncoder)
    query = "vitamin d and green tea"
    assert searcher.query_encoder.encode_queries([query]).to_dicts() == idf_queries.encode_queries([query]).to_dicts()
    assert searcher.search(query, k=3).hits
    capsys.readouterr()
    again = tmp_path / "again"  # from the inference-free folder, without --inference-free: it dropped idf.json unsaid
    assert main(["train", str(data), str(again), "--model", str(out), "--batch-size", "2", "--epochs", "1", "--quiet",
                 *SHORT]) == 0
    assert "ships idf.json" in capsys.readouterr().err and not (again / "idf.json").exists()


def _mean_margin(model: TrainableSplade, examples: list[Example]) -> float:
    with torch.no_grad():
        q = model.encode([ex.query for ex in examples], 16)
        pos = (q * model.encode([ex.positive for ex in examples], 64)).sum(1)
        neg = (q * model.encode([ex.negatives[0] for ex in examples], 64)).sum(1)
        return float((pos - neg).abs().mean())


def test_margin_mse_pulls_margins_toward_the_teachers(examples, tmp_path):
    """The teacher calls positive and negative equally good (margin 0); contrastive alone widens the margin."""
    path = tmp_path / "teacher.jsonl"
    path.write_text("".join(json.dumps({"query": ex.query, "positive": ex.positive, "negatives": [ex.negatives[0]],
                                        "scores": [5.0, 5.0]}) + "\n" for ex in examples))
    rows = load_examples(str(path))
    margins = {}
    for distill in (0.0, 1.0):
        model = fresh_model()
        config = TrainConfig(blend=1.0, epochs=4, batch_size=4, lr=2e-4, max_length=64, query_max_length=16,
                             distill=distill, flops_query=0, flops_doc=0)
        train(model, rows, tmp_path / f"run{distill}", config, progress=False)
        margins[distill] = _mean_margin(model, rows)
    assert margins[1.0] < 0.7 * margins[0.0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_a_folders_prompts_and_activation_are_trained_through_and_exported(tmp_path):
    """Training ignored a sentence-transformers folder's prompts and its log1p_relu activation, and the export wrote
    empty prompts and max/relu pooling: the trained model was used otherwise than it was trained and saved."""
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    from lsr.encode.models import resolve_model
    from lsr.encode.splade import SpladeEncoder
    from lsr.train.export import save_model_folder

    st.SparseEncoder(modules=[MLMTransformer(resolve_model("splade-tiny")),
                              SpladePooling(pooling_strategy="max", activation_function="log1p_relu")],
                     prompts={"query": "query: ", "document": "passage: "}, device="cpu").save(str(tmp_path / "st"))
    # a cased tokenizer in a folder that lowercases, and a shorter length: training read cased text, and the export
    # wrote do_lower_case false and 256 tokens
    for name, changes in (("sentence_bert_config.json", {"do_lower_case": True, "max_seq_length": 48}),
                          ("tokenizer_config.json", {"do_lower_case": False})):
        config = json.loads((tmp_path / "st" / name).read_text())
        (tmp_path / "st" / name).write_text(json.dumps({**config, **changes}))
    model = TrainableSplade.load(str(tmp_path / "st"), device="cpu", dtype="fp32")
    assert (model.encoder.lowercase, model.encoder.max_length) == (True, 48)
    texts = ["Vitamin D and Bone Density", "Statins cause MUSCLE pain"]
    with torch.no_grad():
        for side, length in (("query", 16), ("document", 48)):
            trained = model.encode(texts, length, getattr(model.encoder.prompts, side)).numpy()
            model.encoder.query_max_length = model.encoder.max_length = length
            served = model.encoder.encode_queries if side == "query" else model.encoder.encode_documents
            np.testing.assert_allclose(trained, served(texts).to_dense(), atol=1e-5)
    save_model_folder(model, tmp_path / "out")
    reloaded = SpladeEncoder.from_pretrained(str(tmp_path / "out"), device="cpu", dtype="fp32")
    assert (reloaded.activation, reloaded.prompts.query, reloaded.prompts.document) == ("log1p_relu", "query: ",
                                                                                        "passage: ")
    assert (reloaded.lowercase, reloaded.max_length) == (True, 48)


def test_gpu_benchmark_without_cuda_fails_fast_in_one_line(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_gpu.py"
    proc = subprocess.run([sys.executable, str(script), "--results-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and not list(tmp_path.iterdir())
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "needs a CUDA GPU" in proc.stderr


def test_a_decoder_only_backbone_trains_and_reloads_as_a_decoder_encoder(examples, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lsr.encode.models import resolve_model
    from lsr.encode.splade import DecoderSpladeEncoder
    from lsr.train.export import save_model_folder

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("splade-tiny"))
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    # what the folder says it reads: the trained folder lost it, so search read other text than training did
    (tmp_path / "start" / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48,
                                                                              "do_lower_case": True}))
    (tmp_path / "start" / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: ", "document": "passage: "}}))
    model = TrainableSplade.load(str(tmp_path / "start"), device="cpu", dtype="fp32", max_length=64, query_max_length=16)
    assert isinstance(model.encoder, DecoderSpladeEncoder) and model.encoder.lowercase
    before = _loss(model, examples)
    config = TrainConfig(blend=1.0, epochs=4, batch_size=4, lr=1e-3, max_length=64, query_max_length=16)
    train(model, examples, tmp_path / "run", config, progress=False)
    assert _loss(model, examples) < 0.8 * before
    save_model_folder(model, tmp_path / "out")
    texts = ["aspirin lowers the risk of heart attacks", "vitamin d and bone fractures"]  # shorter than any budget
    reloaded = DecoderSpladeEncoder.from_pretrained(str(tmp_path / "out"), device="cpu", max_length=64)
    assert (reloaded.lowercase, reloaded.prompts) == (True, model.encoder.prompts)
    as_found = DecoderSpladeEncoder.from_pretrained(str(tmp_path / "out"), device="cpu")  # 256 when it was lost
    assert as_found.max_length == model.encoder.max_length == 64
    with torch.no_grad():
        np.testing.assert_allclose(reloaded.encode_documents(texts).to_dense(),
                                   model.encode(texts, 64, model.encoder.prompts.document).numpy(), rtol=1e-4, atol=1e-5)


def test_batch_scores_each_document_once_and_never_pushes_down_a_judged_one():
    from lsr.train.loop import batch_documents, relevant_by_query

    a = Example("q1", "doc A", ("doc C",), judged=("doc B",))  # q1 judges B relevant (a lower grade)
    b = Example("q2", "doc B", ("doc A", "doc D"))  # q2's mined negative A is q1's positive: fine for q2
    c = Example("q3", "doc A", ("doc C",))  # another query with the same positive as q1
    pairs = [Example("q4", "doc E"), Example("q4", "doc F")]  # JSONL style: one query, two rows
    batch = [(a, "doc A", np.array([0])), (b, "doc B", np.array([0, 1])), (c, "doc A", np.array([0])),
             (pairs[0], "doc E", np.array([], int)), (pairs[1], "doc F", np.array([], int))]
    docs, targets, mask = batch_documents(batch, relevant_by_query([a, b, c, *pairs]))
    assert sorted(docs) == ["doc A", "doc B", "doc C", "doc D", "doc E", "doc F"] and len(docs) == 6
    assert [docs[t] for t in targets] == ["doc A", "doc B", "doc A", "doc E", "doc F"]
    masked = [{docs[j] for j, m in enumerate(row) if m} for row in mask]
    assert masked == [{"doc B"}, set(), set(), {"doc F"}, {"doc E"}]
    # the masked column is out of row 0's softmax: its loss equals the loss over the other columns alone
    q, d = torch.randn(5, 8), torch.randn(6, 8)
    keep = [j for j in range(6) if not mask[0][j]]
    full = contrastive(q[:1], d, torch.tensor(mask[:1]), torch.tensor(targets[:1]))
    alone = contrastive(q[:1], d[keep], None, torch.tensor([keep.index(targets[0])]))
    assert torch.allclose(full, alone) and not torch.allclose(full, contrastive(q[:1], d, None, torch.tensor(targets[:1])))


@pytest.fixture(scope="module")
def graded_beir(tmp_path_factory) -> Path:
    """Three queries: one with two grade-2 and two grade-1 documents, two with one each; ten other documents."""
    folder = tmp_path_factory.mktemp("graded") / "graded"
    (folder / "qrels").mkdir(parents=True)
    docs = {f"d{i}": f"document {i} about {topic}" for i, topic in
            enumerate(["vitamin d bones", "vitamin d sun", "vitamin d diet", "vitamin d milk", "coffee heart",
                       "green tea", *[f"unrelated topic {k} vitamin coffee tea" for k in range(10)]])}
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in docs.items()))
    queries = {"q1": "vitamin d", "q2": "coffee and the heart", "q3": "green tea"}
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t2\nq1\td1\t2\nq1\td2\t1\n"
                                                "q1\td3\t1\nq2\td4\t1\nq3\td5\t2\n")
    return folder


def test_judged_documents_absent_or_blank_leave_their_queries_out_with_a_warning(graded_beir, tmp_path, caplog):
    """Qrels judging documents the corpus lacks trained on the queries left, without a word; a blank document was
    trained on as a query's positive."""
    folder = shutil.copytree(graded_beir, tmp_path / "mismatched")
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    for row in corpus:
        row["text"] = "" if row["_id"] == "d4" else row["text"]  # q2's only positive
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in corpus if row["_id"] != "d5"))
    with caplog.at_level("WARNING", logger="lsr"):
        examples = load_examples(str(folder))
    assert [ex.query for ex in examples] == ["vitamin d"]
    said = [r.getMessage() for r in caplog.records]
    assert "qrels/train.tsv judges 1 documents relevant that corpus.jsonl does not hold (such as 'd5'); no search " \
           "can find them" in said
    assert any(m.startswith("2 of the 3 queries ") and "judges have no relevant document with text in its corpus "
               "(such as 'q2'); they are left out of training" in m for m in said), said


def test_beir_examples_are_one_per_query_and_each_epoch_draws_one_top_grade_positive(graded_beir):
    from lsr.train.loop import _Epochs

    examples = load_examples(str(graded_beir))
    assert [ex.query for ex in examples] == ["vitamin d", "coffee and the heart", "green tea"]
    vitamin = examples[0]
    assert set(vitamin.positives) == {"document 0 about vitamin d bones", "document 1 about vitamin d sun"}
    assert set(vitamin.judged) == {"document 2 about vitamin d diet", "document 3 about vitamin d milk"}
    assert not set(vitamin.negatives) & {*vitamin.positives, *vitamin.judged} and vitamin.negatives
    epochs = _Epochs(examples, TrainConfig(batch_size=2, epochs=8))
    drawn = []
    for epoch in range(8):
        rows = [row for step in (2 * epoch, 2 * epoch + 1) for batch in epochs.micro_batches(step) for row in batch]
        assert sorted(ex.query for ex, _, _ in rows) == sorted(ex.query for ex in examples)  # each query once
        drawn += [positive for ex, positive, _ in rows if ex is vitamin]
    assert set(drawn) == set(vitamin.positives)  # both grade-2 documents get their turn, never a grade-1 one


def test_fitted_scale_tempers_over_confident_scores_and_keeps_confident_ones():
    from lsr.train.losses import fit_scale

    generator = torch.Generator().manual_seed(0)
    targets = torch.zeros(64, dtype=torch.long)
    no_mask = torch.zeros(64, 32, dtype=torch.bool)
    noisy = 20 * torch.randn(64, 32, generator=generator)  # the positive is top by chance: 1 in 32
    noisy[:, 0] += 15  # somewhat above the rest, far from always top
    clean = torch.randn(64, 32, generator=generator)
    clean[:, 0] += 20  # always far ahead
    assert fit_scale(noisy, no_mask, targets) < 0.3
    assert fit_scale(clean, no_mask, targets) == 1.0
    masked = no_mask.clone()
    masked[:, 1:] = noisy[:, 1:] > noisy[:, :1]  # hide every document that beats the positive: no longer over-confident
    assert fit_scale(noisy, masked, targets) == 1.0


def test_blend_mixes_the_trained_weights_with_the_starting_ones(examples, tmp_path):
    config = TrainConfig(epochs=1, batch_size=4, lr=2e-4, max_length=32, query_max_length=16, blend=1.0)
    trained = fresh_model()
    start = [p.detach().clone() for p in trained.parameters]
    train(trained, examples, tmp_path / "alone", config, progress=False)
    blended = fresh_model()
    train(blended, examples, tmp_path / "blended", TrainConfig(**{**config.__dict__, "blend": 0.25}), progress=False)
    moved = 0
    for b, t, s in zip(blended.parameters, trained.parameters, start, strict=True):
        assert torch.allclose(b, s + 0.25 * (t - s), rtol=0, atol=1e-6)
        moved += int(not torch.equal(t, s))
    assert moved > len(start) // 2  # training moved most tensors, so the blend was tested on real differences


def test_dev_validation_keeps_the_best_weights_and_stops_without_a_gain(examples, tmp_path):
    model = fresh_model()
    start = [p.detach().clone() for p in model.parameters]

    def closeness_to_start() -> float:  # a held-out score that training can only lower
        return -float(sum((p.detach() - s).abs().sum() for p, s in zip(model.parameters, start)))

    config = TrainConfig(epochs=4, batch_size=4, lr=2e-4, max_length=32, query_max_length=16, dev_every=1, patience=2,
                         score_scale=1.0)
    result = train(model, examples, tmp_path, config, progress=False, validate=closeness_to_start)
    assert result.stopped == "no gain" and result.steps == 2 < result.total_steps
    assert [step for step, _ in result.dev_scores] == [0, 1, 2] and "step 0" in result.kept
    assert all(torch.equal(p, s) for p, s in zip(model.parameters, start))
    # its checkpoint stays until `lsr train` has written the summary; a resume (after a Ctrl-C in --eval) trained on
    again = train(model, examples, tmp_path, config, resume=True, progress=False, validate=closeness_to_start)
    assert (again.stopped, again.steps, again.history, again.kept) == ("no gain", 2, [], result.kept)
    assert all(torch.equal(p, s) for p, s in zip(model.parameters, start))
    from lsr.cli.train import _summary_text

    summary = {"model": "splade-tiny", "data": "pairs.jsonl", "examples": 8, "steps": result.steps, "total_steps": 8,
               "stopped": result.stopped, "train_seconds": 6.0, "device": "cpu", "dtype": "fp32", "dev_scores": [],
               "kept": result.kept, "config": {"blend": 0.5, "inference_free": False}, "first_step": None,
               "last_step": None, "eval": [], "dev_split": "dev"}
    text = _summary_text(summary, tmp_path)  # it said "OUT holds 0.5 × the trained weights + 0.5 × splade-tiny's"
    assert "OUT is splade-tiny unchanged: training never beat it on dev" in text and "OUT holds" not in text
    collapsed = _summary_text({**summary, "stopped": "collapsed", "dev_split": None,
                               "kept": "kept the weights of step 0 (the starting model)"}, tmp_path)
    assert "OUT is splade-tiny unchanged: the run collapsed, and without dev scores" in collapsed  # "never beat it"


def test_a_collapse_stops_the_run_and_gives_back_the_starting_weights(examples, tmp_path):
    model = fresh_model()
    start = [p.detach().clone() for p in model.parameters]
    config = TrainConfig(epochs=20, batch_size=2, lr=1e-3, max_length=16, query_max_length=8, flops_query=3.0,
                         flops_doc=3.0, flops_warmup=0.0, score_scale=1.0)
    result = train(model, examples, tmp_path, config, progress=False)
    nnz = [s["nnz_d"] for s in result.history]
    assert result.stopped == "collapsed" and result.steps < result.total_steps
    assert np.mean(nnz[-5:]) < 0.25 * np.mean(nnz[:5]) and "starting model" in result.kept
    assert all(torch.equal(p, s) for p, s in zip(model.parameters, start))
    allowed = train(model, examples, tmp_path / "allowed", TrainConfig(**{**config.__dict__, "epochs": 2,
                                                                          "collapse_fraction": 0.0}), progress=False)
    assert allowed.stopped == "finished" and allowed.history[-1]["nnz_d"] < 0.25 * allowed.history[0]["nnz_d"]


def test_cli_validates_on_dev_and_writes_the_best_scoring_weights(graded_beir, tmp_path):
    import shutil

    from lsr.encode.splade import SpladeEncoder
    from lsr.train.evaluate import sparse_quality

    data = tmp_path / "graded"
    shutil.copytree(graded_beir, data)
    (data / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\nq2\td6\t1\nq3\td9\t1\n")
    out = tmp_path / "out"
    assert main(["train", str(data), str(out), "--batch-size", "1", "--epochs", "2", "--dev-every", "1",
                 "--patience", "6", "--lr", "1e-3", "--quiet", *SHORT]) == 0
    summary = json.loads((out / "lsr_train.json").read_text())
    steps = [step for step, _ in summary["dev_scores"]]
    assert summary["dev_split"] == "dev" and steps == list(range(summary["steps"] + 1)) and summary["steps"] >= 3
    best_step, best = max(summary["dev_scores"], key=lambda hit: hit[1])
    assert best > summary["dev_scores"][-1][1] and f"step {best_step} " in summary["kept"]  # an earlier step won
    written = sparse_quality(SpladeEncoder.from_pretrained(str(out), device="cpu"), str(data), "dev", progress=False)
    assert written["ndcg@10"] == pytest.approx(best, abs=1e-9)


def test_a_scorer_says_once_that_it_truncates(tiny_beir, caplog):
    """Dev validation every 50 steps printed the same truncation line each time, into the progress bar's line."""
    from lsr.encode.splade import SpladeEncoder
    from lsr.train.evaluate import quality_scorer

    encoder = SpladeEncoder.from_pretrained("splade-tiny", device="cpu", max_length=32)
    score = quality_scorer(encoder, str(tiny_beir), "dev")
    with caplog.at_level(logging.WARNING, logger="lsr.encode.splade"):
        first, again = score(), score()
    said = [record for record in caplog.records if "were truncated" in record.getMessage()]
    assert len(said) == 1 and first == again
    assert not logging.getLogger("lsr.encode.splade").filters  # the filter goes with the call


def _checkpointed(examples, out: Path, model: str = "splade-tiny") -> TrainConfig:
    config = TrainConfig(model=model, blend=1.0, epochs=1, batch_size=4, max_length=64, query_max_length=16)
    train(fresh_model(), examples, out, config, progress=False, checkpoint_every=1)
    return config


def test_a_damaged_or_planted_checkpoint_is_refused_and_runs_no_code(examples, tmp_path):
    """One flipped bit in checkpoint.pt resumed with exit 0 into weights of -4e36; a pickled payload ran its code."""
    import hashlib

    from lsr.train.checkpoint import CHECKPOINT_FILE, MAGIC, read_checkpoint

    config = _checkpointed(examples, tmp_path / "run")
    path = tmp_path / "run" / CHECKPOINT_FILE
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="damaged"):
        train(fresh_model(), examples, tmp_path / "run", config, progress=False, resume=True)

    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (Path.touch, (marker,))

    import io

    buffer = io.BytesIO()
    torch.save({"step": 1, "payload": Planted()}, buffer)
    payload = buffer.getvalue()
    path.write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        read_checkpoint(tmp_path / "run")
    assert not marker.exists()


def test_a_checkpoint_with_a_good_checksum_but_not_this_runs_state_is_one_line(examples, tmp_path):
    """Forged with a recomputed checksum: an empty guard was a KeyError traceback, a step past the end trained nothing
    and exited 0, a missing parameter was zip()'s message."""
    import hashlib
    import io

    from lsr.train.checkpoint import CHECKPOINT_FILE, MAGIC, read_checkpoint

    config = _checkpointed(examples, tmp_path / "run")
    path = tmp_path / "run" / CHECKPOINT_FILE
    good = read_checkpoint(tmp_path / "run")
    for forged in ({**good, "guard": {}}, {**good, "step": 10**9}, {**good, "parameters": good["parameters"][:-1]}):
        buffer = io.BytesIO()
        torch.save(forged, buffer)
        payload = buffer.getvalue()
        path.write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)
        with pytest.raises(ValueError, match=r"checkpoint.pt is not a usable training checkpoint for this run \("):
            train(fresh_model(), examples, tmp_path / "run", config, progress=False, resume=True)


def test_a_resume_from_a_model_folder_whose_files_changed_is_refused(examples, tmp_path):
    """The run was keyed on --model's name: a folder retrained in place resumed, and blended with the wrong start."""
    import shutil

    from lsr.encode.models import resolve_model

    folder = tmp_path / "start"
    shutil.copytree(resolve_model("splade-tiny"), folder)
    config = _checkpointed(examples, tmp_path / "run", model=str(folder))
    (folder / "config.json").write_text((folder / "config.json").read_text() + "\n")
    with pytest.raises(ValueError, match="the --model folder's files"):
        train(fresh_model(), examples, tmp_path / "run", config, progress=False, resume=True)


def test_a_resume_in_another_dtype_or_thread_count_is_refused_naming_both_values(examples, tmp_path):
    """Resumed in bf16 (or with another --threads, as the default is on a machine with more cores), a run ended with
    other weights than the uninterrupted one and its summary named only the last dtype; the flags that differ are
    named with their values then and now (a changed --lr was named without either)."""
    from dataclasses import replace

    config = _checkpointed(examples, tmp_path / "run")
    bf16 = TrainableSplade.load("splade-tiny", device="cpu", dtype="bf16", max_length=64, query_max_length=16)
    with pytest.raises(ValueError, match=r"other settings or data \(--dtype fp32 then, bf16 now\); resume with"):
        train(bf16, examples, tmp_path / "run", config, progress=False, resume=True)
    model = fresh_model()
    torch.set_num_threads(1)
    try:
        with pytest.raises(ValueError, match=r"\(--threads 2 then, 1 now\)"):
            train(model, examples, tmp_path / "run", config, progress=False, resume=True)
    finally:
        torch.set_num_threads(2)
    with pytest.raises(ValueError, match=r"\(--lr 0.0001 then, 0.001 now\)"):
        train(fresh_model(), examples, tmp_path / "run", replace(config, lr=1e-3), progress=False, resume=True)
    # changed data was named "(the training data)", with neither what changed nor how
    with pytest.raises(ValueError, match=rf"\(the training data: {len(examples)} examples then, {len(examples) - 1} now\)"):
        train(fresh_model(), examples[:-1], tmp_path / "run", config, progress=False, resume=True)
    edited = [replace(examples[0], query=examples[0].query + " again"), *examples[1:]]
    with pytest.raises(ValueError, match=rf"\(the training data: as many examples \({len(examples)}\), other texts\)"):
        train(fresh_model(), edited, tmp_path / "run", config, progress=False, resume=True)
    assert train(fresh_model(), examples, tmp_path / "run", config, progress=False, resume=True).stopped == "finished"


def test_a_checkpoint_write_cut_short_leaves_an_out_a_new_run_can_use(examples, tmp_path, capfd):
    """kill -9 during the first checkpoint write left only checkpoint.pt.PID.tmp: neither a new run nor --resume
    could use OUT. A new run now takes it, and a run (new or resumed) sweeps such leftovers when it starts."""
    data, out = tmp_path / "pairs.jsonl", tmp_path / "out"
    data.write_text("".join(json.dumps({"query": ex.query, "positive": ex.positive}) + "\n" for ex in examples[:8]))
    out.mkdir()
    (out / "checkpoint.pt.4242.tmp").write_bytes(b"half a checkpoint")
    assert main(["train", str(data), str(out), "--epochs", "1", "--batch-size", "4", "--max-length", "32",
                 "--dev-split", "none", "--quiet"]) == 0
    assert (out / "model.safetensors").exists() and not list(out.glob("*.tmp"))
    assert "%|" not in capfd.readouterr().err  # --quiet: no bar, transformers' "Writing model shards" neither


def test_sentence_transformers_column_names_are_read_as_ours(tmp_path):
    """(anchor, positive, negative) and negative_1..N rows, sentence-transformers' training columns, lost their
    negatives ("negative" was not "negatives") and failed on "anchor"; an extra key such as an id is still ignored."""
    data = tmp_path / "st.jsonl"
    data.write_text(json.dumps({"anchor": "q1", "positive": "p1", "negative": "n1"}) + "\n"
                    + json.dumps({"query": "q2", "positive": "p2", "negative_2": "b", "negative_1": "a", "id": 7}) + "\n")
    first, second = load_examples(str(data))
    assert (first.query, first.positive, first.negatives) == ("q1", "p1", ("n1",))
    assert (second.query, second.negatives) == ("q2", ("a", "b"))
