"""Training speed on one CUDA GPU: ``lsr train``'s step vs sentence-transformers' SpladeLoss (MNRL + FLOPS).

Same model, batch, sequence length and data for both: (query, positive) pairs from SciFact's train
split, in-batch negatives, bf16 autocast, AdamW, max_length ``MAX_LENGTH`` on both sides. Each
measurement runs in a fresh subprocess so peak GPU memory is its own:

- **splade-tiny** (V = 30,522), batch ``BATCH``: steps/s over ``STEPS`` steps after ``WARMUP`` steps,
  and peak memory (target: ours ≥ 1.5× the steps/s at ≤ 0.5× the memory);
- **random V = 250,002** (splade-tiny's shape with a 250,002-term vocabulary, random weights, seed 0):
  the largest batch (doubling from 8) that completes two steps without running out of memory
  (target: ours ≥ 4× theirs).

Ours is ``lsr.train.loop.train`` itself (fused Triton pooling and backward, never B×L×V logits);
theirs is ``SpladeLoss(SparseMultipleNegativesRankingLoss)`` driven step by step, which is what
``SparseEncoderTrainer`` runs per step without its data-loading and logging overhead.

    python benchmarks/train_gpu.py        # at most 6 minutes on one GPU; needs CUDA

Writes benchmarks/results/train_gpu.md and .json. The children also run on CPU (fp32, peak RSS for memory):
``benchmarks/train_cpu.py`` drives them there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from encode_gpu import REPO, SCIFACT, publish, require_cuda  # the shared GPU-benchmark preamble (same folder)

MAX_LENGTH = 256
BATCH = 64
WARMUP = 3
STEPS = 20
BIG_VOCAB = 250_002
MAX_BATCH = 8192
FLOPS_WEIGHT = 5e-4


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
def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    _synchronize(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float:
    """Peak GPU memory allocated since ``_reset_peak``; on CPU the process's peak RSS (model loading included)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child_ours(path: str, batch: int, steps: int, device: str = "cuda", max_length: int = MAX_LENGTH) -> dict:
    from lsr.train.config import TrainConfig
    from lsr.train.data import Example
    from lsr.train.loop import train
    from lsr.train.model import TrainableSplade

    dtype = "bf16" if device.startswith("cuda") else "fp32"
    model = TrainableSplade.load(path, device=device, dtype=dtype, max_length=max_length, query_max_length=max_length)
    examples = [Example(q, d) for q, d in pairs(batch * (WARMUP + steps))]
    config = TrainConfig(model=path, batch_size=batch, hard_negatives=0, flops_query=FLOPS_WEIGHT, flops_doc=FLOPS_WEIGHT,
                         max_length=max_length, query_max_length=max_length, warmup=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        train(model, examples[: batch * WARMUP], Path(tmp) / "warm", config, progress=False, checkpoint_every=10**9)
        _reset_peak(device)
        result = train(model, examples[batch * WARMUP :], Path(tmp) / "run", config, progress=False,
                       checkpoint_every=10**9)
        _synchronize(device)
    return {"steps_per_s": result.steps / result.seconds, "peak_gib": _peak_gib(device)}


def child_sentence_transformers(path: str, batch: int, steps: int, device: str = "cuda",
                                max_length: int = MAX_LENGTH) -> dict:
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss
    from sentence_transformers.sparse_encoder.models import MLMTransformer, SpladePooling

    transformer = MLMTransformer(path, max_seq_length=max_length)
    model = SparseEncoder(modules=[transformer, SpladePooling("max")], device=device)
    loss = SpladeLoss(model, SparseMultipleNegativesRankingLoss(model), document_regularizer_weight=FLOPS_WEIGHT,
                      query_regularizer_weight=FLOPS_WEIGHT)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    data = pairs(batch * (WARMUP + steps))

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
    for i in range(WARMUP):
        step(i)
    _reset_peak(device)
    clock = time.perf_counter()
    for i in range(WARMUP, WARMUP + steps):
        step(i)
    _synchronize(device)
    return {"steps_per_s": steps / (time.perf_counter() - clock), "peak_gib": _peak_gib(device)}


CHILDREN = {"ours": child_ours, "sentence-transformers": child_sentence_transformers}


def run_child(system: str, path: str, batch: int, steps: int, device: str = "cuda",
              max_length: int = MAX_LENGTH) -> dict | None:
    """One measurement in a fresh process; None when it ran out of GPU memory."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        proc = subprocess.run([sys.executable, __file__, "--child", system, "--path", path, "--batch", str(batch),
                               "--steps", str(steps), "--device", device, "--max-length", str(max_length),
                               "--child-out", out.name], capture_output=True, text=True)
        if proc.returncode != 0:
            if "OutOfMemoryError" in proc.stderr or "out of memory" in proc.stderr:
                return None
            raise RuntimeError(f"{system} at batch {batch} failed:\n{proc.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text())


def largest_batch(system: str, path: str) -> int:
    batch, fits = 8, 0
    while batch <= MAX_BATCH and run_child(system, path, batch, 2) is not None:
        fits, batch = batch, batch * 2
    return fits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--child", choices=tuple(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measured = CHILDREN[args.child](args.path, args.batch, args.steps, args.device, args.max_length)
        Path(args.child_out).write_text(json.dumps(measured))
        return
    require_cuda("train_gpu.py", "benchmarks/train_cpu.py measures CPU training")

    from lsr.encode.models import resolve_model
    from lsr.eval.report import machine

    started = time.perf_counter()
    tiny = resolve_model("splade-tiny")
    import torch

    report = {"machine": machine(), "gpu": torch.cuda.get_device_name(0), "batch": BATCH, "max_length": MAX_LENGTH, "steps": STEPS, "dtype": "bf16",
              "speed": {system: run_child(system, tiny, BATCH, STEPS) for system in CHILDREN}}
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big-vocab"
        make_big_vocab_model(big)
        report["largest_batch_v250k"] = {system: largest_batch(system, str(big)) for system in CHILDREN}
    report["total_seconds"] = time.perf_counter() - started
    publish(report, render(report), args.results_dir / "train_gpu")


def render(report: dict) -> str:
    ours, theirs = report["speed"]["ours"], report["speed"]["sentence-transformers"]
    big = report["largest_batch_v250k"]
    return "\n".join([
        f"# Training step on one GPU ({report['gpu']}; {report['machine']}), bf16, max_length {report['max_length']}",
        "",
        "| | ours (lsr train) | SpladeLoss (MNRL + FLOPS) | ratio | target |",
        "|---|---:|---:|---:|---:|",
        f"| steps/s, splade-tiny, batch {report['batch']} | {ours['steps_per_s']:.2f} | {theirs['steps_per_s']:.2f} "
        f"| {ours['steps_per_s'] / theirs['steps_per_s']:.2f}× | ≥ 1.5× |",
        f"| peak GiB, splade-tiny, batch {report['batch']} | {ours['peak_gib']:.2f} | {theirs['peak_gib']:.2f} "
        f"| {ours['peak_gib'] / theirs['peak_gib']:.2f}× | ≤ 0.5× |",
        f"| largest batch, V = {BIG_VOCAB:,} | {big['ours']} | {big['sentence-transformers']} "
        f"| {big['ours'] / max(1, big['sentence-transformers']):.1f}× | ≥ 4× |",
        "",
        f"Total {report['total_seconds']:.0f} s.",
    ])


if __name__ == "__main__":
    main()
