"""Training speed on one CUDA GPU: ``lsr train``'s step vs sentence-transformers' SpladeLoss (MNRL + FLOPS).

Same model, batch, sequence length and data for both: (query, positive) pairs from SciFact's train
split, in-batch negatives, bf16 autocast, AdamW, max_length ``MAX_LENGTH`` on both sides. Each
measurement runs in a fresh subprocess so peak GPU memory is its own:

- **splade-tiny** (V = 30,522), batch ``BATCH``: steps/s over ``STEPS`` steps after ``WARMUP`` steps,
  and peak memory (target: ours ≥ 1.5× the steps/s at ≤ 0.5× the memory);
- **random V = 250,002** (splade-tiny's shape with a 250,002-term vocabulary, random weights, seed 0):
  the largest power-of-two batch that completes two steps without running out of memory (target: ours ≥ 4×
  theirs). Theirs starts at ``THEIRS_START``, halving or doubling; ours starts at 4× theirs (halving if that fails) and doubles while the
  time budget lasts, up to ``MAX_BATCH``; the table says what stopped each search.

Ours is ``lsr.train.loop.train`` itself (fused Triton pooling and backward, never B×L×V logits);
theirs is ``SpladeLoss(SparseMultipleNegativesRankingLoss)`` driven step by step, which is what
``SparseEncoderTrainer`` runs per step without its data-loading and logging overhead.

    python benchmarks/train_gpu.py        # at most 6 minutes on one GPU; needs CUDA

Writes benchmarks/results/train_gpu.md and .json, again after each piece, so a run cut off at its limit keeps
what it measured. The children also run on CPU (fp32, peak RSS for memory): ``benchmarks/train_cpu.py`` drives
them there, and ``LSR_BENCH_REHEARSE=1`` runs this whole script there at toy sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from encode_gpu import (DEVICE, REHEARSAL, REPO, SCIFACT, device_name, peak_gib, publish, require_cuda,  # the shared
                        reset_peak, synchronize)  # GPU-benchmark preamble (same folder)

MAX_LENGTH = 32 if REHEARSAL else 256
BATCH = 8 if REHEARSAL else 64
WARMUP = 3
STEPS = 2 if REHEARSAL else 50
BIG_VOCAB = 50_000 if REHEARSAL else 250_002
MAX_BATCH = 16 if REHEARSAL else 8192
FLOPS_WEIGHT = 5e-4
THEIRS_START = 4 if REHEARSAL else 32  # their B x L x V logits take about 0.5 GB a pair at V = 250,002, L = 256
BUDGET_SECONDS = 330  # the whole script; gpu_session.sh gives its stage 360 s


def pairs(count: int) -> list[tuple[str, str]]:
    """``count`` (query, positive) pairs from SciFact train, cycled when more are asked for than exist."""
    from lsr.eval.datasets import load_beir

    data = load_beir(SCIFACT, splits=("train",))
    found = [(data.queries[q], data.doc_texts([d])[0]) for q, docs in data.qrels["train"].items() for d in docs]
    return [found[i % len(found)] for i in range(count)]


def make_big_vocab_model(path: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    from lsr.encode.models import resolve_model

    tiny = resolve_model("splade-tiny")
    config = AutoConfig.from_pretrained(tiny)
    config.vocab_size = BIG_VOCAB
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(path)


# ---------------------------------------------------------------------------- children (one per measurement)
def child_ours(path: str, batch: int, steps: int, device: str = "cuda", max_length: int = MAX_LENGTH,
               warmup: int = WARMUP) -> dict:
    from lsr.train.config import TrainConfig
    from lsr.train.data import Example
    from lsr.train.loop import train
    from lsr.train.model import TrainableSplade

    dtype = "bf16" if device.startswith("cuda") else "fp32"
    model = TrainableSplade.load(path, device=device, dtype=dtype, max_length=max_length, query_max_length=max_length)
    examples = [Example(q, d) for q, d in pairs(batch * (warmup + steps))]
    config = TrainConfig(model=path, batch_size=batch, hard_negatives=0, flops_query=FLOPS_WEIGHT, flops_doc=FLOPS_WEIGHT,
                         max_length=max_length, query_max_length=max_length, warmup=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        train(model, examples[: batch * warmup], Path(tmp) / "warm", config, progress=False, checkpoint_every=10**9)
        reset_peak(device)
        result = train(model, examples[batch * warmup :], Path(tmp) / "run", config, progress=False,
                       checkpoint_every=10**9)
        synchronize(device)
    return {"steps_per_s": result.steps / result.seconds, "peak_gib": peak_gib(device)}


def child_sentence_transformers(path: str, batch: int, steps: int, device: str = "cuda",
                                max_length: int = MAX_LENGTH, warmup: int = WARMUP) -> dict:
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    transformer = MLMTransformer(path, max_seq_length=max_length)
    model = SparseEncoder(modules=[transformer, SpladePooling("max")], device=device)
    loss = SpladeLoss(model, SparseMultipleNegativesRankingLoss(model), document_regularizer_weight=FLOPS_WEIGHT,
                      query_regularizer_weight=FLOPS_WEIGHT)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    data = pairs(batch * (warmup + steps))

    def step(i: int) -> None:
        chunk = data[i * batch : (i + 1) * batch]
        features = [{k: v.to(device) if isinstance(v, torch.Tensor) else v  # newer versions add non-tensor keys
                     for k, v in model.tokenize([t[side] for t in chunk]).items()} for side in (0, 1)]
        cuda = device.startswith("cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext():
            value = loss(features, None)
        if isinstance(value, dict):  # SpladeLoss returns its parts (ranking, query and document FLOPS); the trainer sums them
            value = sum(value.values())
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train()
    for i in range(warmup):
        step(i)
    reset_peak(device)
    clock = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    synchronize(device)
    return {"steps_per_s": steps / (time.perf_counter() - clock), "peak_gib": peak_gib(device)}


CHILDREN = {"ours": child_ours, "sentence-transformers": child_sentence_transformers}


def run_child(system: str, path: str, batch: int, steps: int, device: str = DEVICE,
              max_length: int = MAX_LENGTH, warmup: int = WARMUP) -> dict | None:
    """One measurement in a fresh process; None when it ran out of GPU memory."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = subprocess.run([sys.executable, __file__, "--child", system, "--path", path, "--batch", str(batch),
                               "--steps", str(steps), "--warmup", str(warmup), "--device", device, "--max-length",
                               str(max_length), "--child-out", out.name], capture_output=True, text=True)
        if proc.returncode != 0:
            if "OutOfMemoryError" in proc.stderr or "out of memory" in proc.stderr:
                return None
            raise RuntimeError(f"{system} at batch {batch} failed:\n{proc.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text())


def speed(system: str, path: str) -> dict:
    """steps/s and peak memory at ``BATCH``, or the failure (the rest of the benchmark still runs)."""
    try:
        return run_child(system, path, BATCH, STEPS) or {"error": f"out of memory at batch {BATCH}"}
    except RuntimeError as error:
        return {"error": str(error)[-3000:]}


def largest_batch(system: str, path: str, start: int, deadline: float) -> dict:
    """The largest power-of-two batch from ``start`` that runs two steps, and what stopped the search.

    Halves from ``start`` while it does not fit; doubles while it does, until out of memory, ``MAX_BATCH``,
    ``deadline`` (``time.perf_counter()``) or a failure other than running out of memory (reported, with the
    largest batch that ran before it). Two steps: the second holds the optimizer state, the peak.
    """
    known, size = 0, min(start, MAX_BATCH)
    try:
        while run_child(system, path, size, 1, warmup=1) is None:
            if size <= 1:
                return {"batch": 0, "stopped": "out of memory"}
            size //= 2
        known = size
        if known < min(start, MAX_BATCH):
            return {"batch": known, "stopped": "out of memory"}
        while True:
            size = known * 2
            if size > MAX_BATCH:
                return {"batch": known, "stopped": f"the cap ({MAX_BATCH})"}
            if time.perf_counter() > deadline:
                return {"batch": known, "stopped": "the time budget"}
            if run_child(system, path, size, 1, warmup=1) is None:
                return {"batch": known, "stopped": "out of memory"}
            known = size
    except RuntimeError as error:
        return {"batch": known, "stopped": f"a failure at batch {size}", "error": str(error)[-3000:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--budget-seconds", type=float, default=BUDGET_SECONDS,
                        help="stop growing the largest-batch search after this long (default: %(default)s)")
    parser.add_argument("--child", choices=tuple(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=WARMUP, help=argparse.SUPPRESS)
    parser.add_argument("--device", default=DEVICE, help=argparse.SUPPRESS)
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measured = CHILDREN[args.child](args.path, args.batch, args.steps, args.device, args.max_length, args.warmup)
        Path(args.child_out).write_text(json.dumps(measured))
        return
    require_cuda("train_gpu.py", "benchmarks/train_cpu.py measures CPU training")

    from lsr.encode.models import resolve_model
    from lsr.eval.report import machine

    started = time.perf_counter()
    deadline = started + args.budget_seconds - 45  # one more child at a large batch takes about that long
    stem = args.results_dir / "train_gpu"
    tiny = resolve_model("splade-tiny")
    report = {"machine": machine(), "gpu": device_name(), "batch": BATCH, "max_length": MAX_LENGTH, "steps": STEPS,
              "dtype": "fp32" if REHEARSAL else "bf16", "speed": {system: speed(system, tiny) for system in CHILDREN},
              "largest_batch_v250k": {}}
    report["total_seconds"] = time.perf_counter() - started
    publish(report, render(report), stem)
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big-vocab"
        make_big_vocab_model(big)
        theirs = report["largest_batch_v250k"]["sentence-transformers"] = largest_batch("sentence-transformers", str(big),
                                                                                         THEIRS_START, deadline)
        publish(report, render(report), stem)
        report["largest_batch_v250k"]["ours"] = largest_batch("ours", str(big), max(8, 4 * theirs["batch"]), deadline)
    report["total_seconds"] = time.perf_counter() - started
    publish(report, render(report), stem)


def render(report: dict) -> str:
    ours, theirs = report["speed"]["ours"], report["speed"]["sentence-transformers"]
    lines = [
        f"# Training step on one GPU ({report['gpu']}; {report['machine']}), {report['dtype']}, max_length "
        f"{report['max_length']}",
        "",
        "| | ours (lsr train) | SpladeLoss (MNRL + FLOPS) | ratio | target |",
        "|---|---:|---:|---:|---:|",
    ]
    failed = {system: run["error"] for system, run in report["speed"].items() if "error" in run}
    lines += [f"| steps/s and peak, splade-tiny, batch {report['batch']}: **{system} failed** "
              f"`{error.strip().splitlines()[-1] if error.strip() else ''}` | | | | |" for system, error in failed.items()]
    lines += [] if failed else [
        f"| steps/s, splade-tiny, batch {report['batch']} | {ours['steps_per_s']:.2f} | {theirs['steps_per_s']:.2f} "
        f"| {ours['steps_per_s'] / theirs['steps_per_s']:.2f}× | ≥ 1.5× |",
        f"| peak GiB, splade-tiny, batch {report['batch']} | {ours['peak_gib']:.2f} | {theirs['peak_gib']:.2f} "
        f"| {ours['peak_gib'] / theirs['peak_gib']:.2f}× | ≤ 0.5× |",
    ]
    big = report["largest_batch_v250k"]
    if len(big) == 2:
        lines += [f"| largest batch, V = {BIG_VOCAB:,} | {big['ours']['batch']} | {big['sentence-transformers']['batch']} "
                  f"| {big['ours']['batch'] / max(1, big['sentence-transformers']['batch']):.1f}× | ≥ 4× |", "",
                  f"The largest-batch searches stopped at: ours, {big['ours']['stopped']}; SpladeLoss, "
                  f"{big['sentence-transformers']['stopped']}."]
    else:
        lines += ["", f"The largest-batch search at V = {BIG_VOCAB:,} has not finished."]
    lines += ["", f"Total {report['total_seconds']:.0f} s ({STEPS} timed steps after {WARMUP} warm-up steps)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
