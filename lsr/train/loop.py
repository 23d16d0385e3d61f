"""The training loop: batches, losses, AdamW with warm-up + linear decay, accumulation, clipping, checkpoints.

Deterministic given the seed: each epoch's order and hard-negative draws come from ``(seed, epoch)``,
so a resumed run recomputes the exact batches it would have seen, and the checkpoint carries the
torch RNG (dropout) and the optimiser state. Ctrl-C finishes the current step, checkpoints, and stops.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lsr.train.checkpoint import read_checkpoint, restore_checkpoint, save_checkpoint
from lsr.train.config import TrainConfig
from lsr.train.data import Example
from lsr.train.losses import contrastive, flops, idf_flops_weights, margin_mse, quadratic_warmup
from lsr.train.model import TrainableSplade

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    seconds: float
    stopped: str  # "finished", "time limit" or "interrupted"
    history: list[dict[str, float]] = field(default_factory=list)  # per step: loss, flops, nnz_q, nnz_d


def fingerprint(config: TrainConfig, examples: list[Example]) -> dict:
    """What a resume must match: the settings and the exact data."""
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps(asdict(ex)).encode())
    return {"config": asdict(config), "examples": len(examples), "data_sha256": digest.hexdigest()}


def steps_per_epoch(config: TrainConfig, n_examples: int) -> int:
    return math.ceil(n_examples / (config.batch_size * config.accumulate))


MAX_WARMUP_STEPS = 20  # AdamW's moments settle within tens of steps; a large dataset must not spend a short run warming up


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction of steps (at most MAX_WARMUP_STEPS), then linear decay to zero."""
    warm = max(1, min(MAX_WARMUP_STEPS, int(total * warmup)))
    return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))


class _Epochs:
    """The per-epoch example order and negative draws, derived from (seed, epoch) alone."""

    def __init__(self, examples: list[Example], config: TrainConfig) -> None:
        self.examples, self.config = examples, config
        self._cached: tuple[int, np.ndarray, list[np.ndarray]] | None = None

    def micro_batches(self, step: int) -> list[list[tuple[Example, np.ndarray]]]:
        per_epoch = steps_per_epoch(self.config, len(self.examples))
        epoch, within = divmod(step, per_epoch)
        order, draws = self._epoch(epoch)
        size = self.config.batch_size
        batches = []
        for j in range(self.config.accumulate):
            start = (within * self.config.accumulate + j) * size
            rows = order[start : start + size]
            if len(rows):
                batches.append([(self.examples[i], draws[i]) for i in rows])
        return batches

    def _epoch(self, epoch: int) -> tuple[np.ndarray, list[np.ndarray]]:
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.config.seed, epoch])
            order = rng.permutation(len(self.examples))
            draws = [rng.permutation(len(ex.negatives))[: self.config.hard_negatives] for ex in self.examples]
            self._cached = (epoch, order, draws)
        return self._cached[1], self._cached[2]


def _batch_loss(model: TrainableSplade, batch: list[tuple[Example, np.ndarray]], config: TrainConfig,
                flops_scale: float, doc_term_weights: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
    queries = [ex.query for ex, _ in batch]
    positives = [ex.positive for ex, _ in batch]
    negatives = [ex.negatives[k] for ex, picks in batch for k in picks]
    if config.inference_free:
        q = model.encode_idf_queries(queries, config.query_max_length)
    else:
        q = model.encode(queries, config.query_max_length)
    d = model.encode(positives + negatives, config.max_length)
    # Another row's document is no negative when it is this query's positive (same query judged twice, shared doc).
    relevant = [{p for qq, p in zip(queries, positives) if qq == query} for query in queries]
    docs = positives + negatives
    mask = torch.tensor([[j != i and docs[j] in relevant[i] for j in range(len(docs))] for i in range(len(batch))],
                        device=q.device)
    rank = contrastive(q, d, mask)
    reg_q, reg_d = flops(q), flops(d, doc_term_weights)  # an IDF query has no gradient: its FLOPS is a constant
    loss = rank + flops_scale * (config.flops_query * reg_q + config.flops_doc * reg_d)
    distill = _distillation(q, d, batch)
    if distill is not None:
        loss = loss + config.distill * distill
    stats = {"loss": loss.detach().item(), "rank": rank.detach().item(), "flops_q": reg_q.detach().item(),
             "flops_d": reg_d.detach().item(),
             "nnz_q": float((q > 0).sum(1).float().mean()), "nnz_d": float((d > 0).sum(1).float().mean())}
    return loss, stats


def _distillation(q: torch.Tensor, d: torch.Tensor, batch: list[tuple[Example, np.ndarray]]) -> torch.Tensor | None:
    """Margin-MSE over (positive, drawn negative) pairs of rows whose file carries teacher scores."""
    rows, pos_cols, neg_cols, teacher_pos, teacher_neg = [], [], [], [], []
    column = len(batch)
    for i, (ex, picks) in enumerate(batch):
        for k in picks:
            if ex.scores is not None:
                rows.append(i)
                pos_cols.append(i)
                neg_cols.append(column)
                teacher_pos.append(ex.scores[0])
                teacher_neg.append(ex.scores[1 + int(k)])
            column += 1
    if not rows:
        return None
    index = torch.tensor(rows, device=q.device)
    student_pos = (q[index] * d[torch.tensor(pos_cols, device=q.device)]).sum(1)
    student_neg = (q[index] * d[torch.tensor(neg_cols, device=q.device)]).sum(1)
    return margin_mse(student_pos, student_neg, torch.tensor(teacher_pos, device=q.device),
                      torch.tensor(teacher_neg, device=q.device))


class _StopOnInterrupt:
    """The first Ctrl-C asks the loop to stop after the current step (so the checkpoint is whole); a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, _signum, _frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step (Ctrl-C again to abort without a checkpoint)")

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(model: TrainableSplade, examples: list[Example], out: Path, config: TrainConfig, *, resume: bool = False,
          max_minutes: float | None = None, checkpoint_every: int = 100, progress: bool = True,
          on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Optimise ``model`` on ``examples``; checkpoints go to ``out``. Returns how far it got and the per-step stats."""
    config.check()
    if checkpoint_every <= 0:
        raise ValueError(f"--checkpoint-every must be positive, got {checkpoint_every}")
    torch.manual_seed(config.seed)
    run = fingerprint(config, examples)
    total = config.epochs * steps_per_epoch(config, len(examples))
    decay = [p for p in model.parameters if p.dim() >= 2]
    plain = [p for p in model.parameters if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": plain, "weight_decay": 0.0}], lr=config.lr)
    start, seconds = 0, 0.0
    if resume:
        state = read_checkpoint(out)
        if state is None:
            raise ValueError(f"nothing to resume: {out} holds no checkpoint")
        if state["run"] != run:
            raise ValueError(f"{out}'s checkpoint was made with other settings or data; resume with the same "
                             "arguments, or train into a new folder")
        restore_checkpoint(state, model.parameters, optimizer)
        start, seconds = state["step"], state["seconds"]
        log.info("resuming at step %d of %d", start, total)
    batches = _Epochs(examples, config)
    doc_term_weights = None
    if config.inference_free:
        if model.idf is None:
            model.use_idf_queries(sorted({text for ex in examples for text in (ex.positive, *ex.negatives)}))
        doc_term_weights = idf_flops_weights(model.idf)
    flops_warm = int(min(total, steps_per_epoch(config, len(examples))) * config.flops_warmup)  # within the first epoch
    bar = _progress_bar(total, start, progress)
    history: list[dict[str, float]] = []
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    stopped, step = "finished", start
    model.train()
    with _StopOnInterrupt() as interrupt:
        while step < total:
            clock = time.perf_counter()
            stats = _step(model, optimizer, batches.micro_batches(step), config, step, total, flops_warm, doc_term_weights)
            seconds += time.perf_counter() - clock
            step += 1
            history.append(stats)
            if on_step is not None:
                on_step(step, stats)
            if bar is not None:
                bar.set_postfix(loss=f"{stats['loss']:.3f}", flops=f"{stats['flops_d']:.1f}",
                                nnz_q=f"{stats['nnz_q']:.0f}", nnz_d=f"{stats['nnz_d']:.0f}", refresh=False)
                bar.update(1)
            out_of_time = deadline is not None and time.monotonic() >= deadline
            if step % checkpoint_every == 0 or interrupt.requested or out_of_time:
                save_checkpoint(out, model.parameters, optimizer, step, run, seconds)
            if interrupt.requested or out_of_time:
                stopped = "interrupted" if interrupt.requested else "time limit"
                break
    if bar is not None:
        bar.close()
    model.train(False)
    return TrainResult(step, total, seconds, stopped, history)


def _step(model: TrainableSplade, optimizer: torch.optim.Optimizer, micro_batches, config: TrainConfig, step: int,
          total: int, flops_warm: int, doc_term_weights: torch.Tensor | None) -> dict[str, float]:
    flops_scale = quadratic_warmup(1.0, step, flops_warm)
    totals: dict[str, float] = {}
    for batch in micro_batches:
        loss, stats = _batch_loss(model, batch, config, flops_scale, doc_term_weights)
        (loss / len(micro_batches)).backward()
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value / len(micro_batches)
    torch.nn.utils.clip_grad_norm_(model.parameters, config.clip)
    for group in optimizer.param_groups:
        group["lr"] = config.lr * lr_factor(step, total, config.warmup)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return totals


def _progress_bar(total: int, start: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", desc="train", smoothing=0.1)
