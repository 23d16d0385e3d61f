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
from typing import Any, Callable

import numpy as np
import torch

from lsr.files import stop_signals
from lsr.ingest.progress import progress_bar
from lsr.train.checkpoint import CHECKPOINT_FILE, leftovers, read_checkpoint, restore_checkpoint, save_checkpoint
from lsr.train.config import TrainConfig
from lsr.train.data import Example
from lsr.train.guard import Guard
from lsr.train.losses import contrastive, fit_scale, flops, idf_flops_weights, margin_mse, quadratic_warmup
from lsr.train.model import TrainableSplade

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int
    total_steps: int
    seconds: float
    stopped: str  # "finished", "time limit", "interrupted" (Ctrl-C or SIGTERM), or the guard's "collapsed" / "no gain"
    history: list[dict[str, float]] = field(default_factory=list)  # per step of this run: step, loss, flops, nnz_q, nnz_d,
    # skipped (1.0 where fp16's scaled gradient overflowed), lr
    dev_scores: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out score), when validating
    kept: str | None = None  # set when the returned weights are an earlier step's: which, and why
    signal: int | None = None  # what interrupted the run: SIGINT or SIGTERM
    first_step: dict[str, float] | None = None  # the run's first step, before any resume: step, loss, ...
    last_step: dict[str, float] | None = None  # and its last, after any resume
    skipped_steps: int = 0  # the steps fp16's overflow skipped, before any resume too


def fingerprint(config: TrainConfig, examples: list[Example], validation: str | None = None,
                numerics: dict | None = None) -> dict:
    """What a resume must match: the settings, the exact data, what a folder ``config.model`` holds (retrained in
    place, the same name is another start), what ``validation`` names (the held-out split the guard scores) and
    ``numerics`` (``numerics_of``: device, dtype and CPU threads, which change the weights' last bits)."""
    from lsr.encode.models import model_content_key

    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps(asdict(ex)).encode())
    return {"config": asdict(config), "examples": len(examples), "data_sha256": digest.hexdigest(),
            "model_content": model_content_key(config.model), "validation": validation, "numerics": numerics}


def numerics_of(model: TrainableSplade) -> dict:
    """Where and how the steps compute: another dtype, device or CPU thread count sums in another order, so a run
    resumed with one (bf16 after fp32, or on a machine with more cores) ended with other weights, and its summary
    named only the last dtype."""
    from lsr.encode.inputs import dtype_name

    cpu = model.device.type == "cpu"
    return {"device": model.device.type, "dtype": dtype_name(model.autocast_dtype or torch.float32),
            "threads": torch.get_num_threads() if cpu else None}


def _same_run(saved: dict, now: dict) -> bool:
    """A checkpoint from before ``numerics`` was kept matches on the rest."""
    saved, now = _deciding(saved, now)
    return saved == (now if "numerics" in saved else {k: v for k, v in now.items() if k != "numerics"})


def _check_same_run(out: Path, saved: dict, now: dict) -> None:
    if not _same_run(saved, now):
        differ = ", ".join(_differences(saved, now)) or "the run"
        raise ValueError(f"{out}'s checkpoint was made with other settings or data ({differ}); resume with the "
                         "same arguments and data, or train into a new folder")


def check_resume_settings(out: Path, config: TrainConfig) -> None:
    """Refuse, before the data, the model and any --eval load, a resume whose checkpoint is damaged or was made with
    other flags: both were found only once all of them had (88 s on 2 cores). The data, the model's files and the
    numerics are compared later, when they are known."""
    state = read_checkpoint(out)
    if state is not None:
        _check_same_run(out, state["run"], {**state["run"], "config": asdict(config)})


def _deciding(saved: dict, now: dict) -> tuple[dict, dict]:
    """Two fingerprints less what leaves the weights alone: ``epochs`` where both runs take ``max_steps``, which
    overrides it (a run resumed with another --epochs and the same --max-steps was refused)."""
    configs = [run.get("config") or {} for run in (saved, now)]
    if any(config.get("max_steps") is None for config in configs):
        return saved, now
    saved, now = ({**run, "config": {k: v for k, v in config.items() if k != "epochs"}}
                  for run, config in zip((saved, now), configs))
    return saved, now


def _differences(saved: dict, now: dict) -> list[str]:
    """Which parts of two fingerprints differ, named as a user would look for them, with both values for a flag."""
    def then_now(name: str, before: Any, after: Any) -> str:
        return f"{name} {before} then, {after} now"

    found, (saved, now) = [], _deciding(saved, now)
    for part in ("config", "numerics"):
        before, after = saved.get(part) or {}, now.get(part) or {}
        found += [then_now(f"--{key.replace('_', '-')}", before.get(key), after.get(key))
                  for key in sorted(set(before) | set(after)) if part in saved and before.get(key) != after.get(key)]
    if saved.get("examples") != now.get("examples"):
        found.append(then_now("the training data:", f"{saved.get('examples')} examples", now.get("examples")))
    elif saved.get("data_sha256") != now.get("data_sha256"):
        found.append(f"the training data: as many examples ({now.get('examples')}), other texts")
    contents = saved.get("model_content"), now.get("model_content")
    if contents[0] != contents[1] and None not in contents:  # None: a bundled name, or a hub id cached only since
        found.append("the --model's hub revision" if contents[1].startswith("hub:") else "the --model folder's files")
    if saved.get("validation") != now.get("validation"):
        found.append(then_now("--dev-split", saved.get("validation"), now.get("validation")))
    return found


def check_accumulate(config: TrainConfig, n_examples: int) -> None:
    """At most an epoch's batches per optimiser step: --accumulate 10^9 made one step loop over a billion empty
    micro-batches for minutes, deaf to --max-minutes and to SIGTERM."""
    batches = math.ceil(n_examples / config.batch_size)
    if config.accumulate > batches:
        raise ValueError(f"--accumulate {config.accumulate} is more than the {batches:,} batch{'es' * (batches != 1)} "
                         f"of --batch-size {config.batch_size} in an epoch of {n_examples:,} examples; use at most "
                         f"{batches:,}")


def steps_per_epoch(config: TrainConfig, n_examples: int) -> int:
    return math.ceil(n_examples / (config.batch_size * config.accumulate))


MAX_WARMUP_STEPS = 20  # AdamW's moments settle within tens of steps; a large dataset must not spend a short run warming up


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction of steps (at most MAX_WARMUP_STEPS), then linear decay to zero."""
    warm = max(1, min(MAX_WARMUP_STEPS, int(total * warmup)))
    return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))


Row = tuple[Example, str, np.ndarray]  # an example, this epoch's positive of it, its drawn negatives' indices


class _Epochs:
    """The per-epoch example order, positive and negative draws, derived from (seed, epoch) alone."""

    def __init__(self, examples: list[Example], config: TrainConfig) -> None:
        self.examples, self.config = examples, config
        self._cached: tuple[int, np.ndarray, list[np.ndarray], list[int]] | None = None

    def micro_batches(self, step: int) -> list[list[Row]]:
        per_epoch = steps_per_epoch(self.config, len(self.examples))
        epoch, within = divmod(step, per_epoch)
        order, draws, positives = self._epoch(epoch)
        size = self.config.batch_size
        batches = []
        for j in range(self.config.accumulate):
            start = (within * self.config.accumulate + j) * size
            rows = order[start : start + size]
            if len(rows):
                batches.append([(self.examples[i], self.examples[i].positives[positives[i]], draws[i]) for i in rows])
        return batches

    def _epoch(self, epoch: int) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
        if self._cached is None or self._cached[0] != epoch:
            rng = np.random.default_rng([self.config.seed, epoch])
            order = rng.permutation(len(self.examples))
            draws = [rng.permutation(len(ex.negatives))[: self.config.hard_negatives] for ex in self.examples]
            positives = [int(rng.integers(len(ex.positives))) if ex.alternatives else 0 for ex in self.examples]
            self._cached = (epoch, order, draws, positives)
        return self._cached[1:]


def relevant_by_query(examples: list[Example]) -> dict[str, frozenset[str]]:
    """Every document known relevant to each query text: its examples' positives and judged documents.

    A JSONL file lists one row per (query, positive), so a query's other rows are where its other positives are.
    """
    relevant: dict[str, set[str]] = {}
    for ex in examples:
        relevant.setdefault(ex.query, set()).update(ex.positives, ex.judged)
    return {query: frozenset(docs) for query, docs in relevant.items()}


def batch_documents(batch: list[Row], relevant: dict[str, frozenset[str]]) -> tuple[list[str], list[int], list[list[bool]]]:
    """The batch's distinct documents, each row's positive column, and the columns that are no negative for a row.

    A document in the batch twice (two queries' positive, or one's positive and another's mined negative) is encoded
    and scored once, so it is never a negative beside itself; one judged relevant to row i's query (another of its
    positives, or a document it shares with another query) is masked out of row i's softmax, not pushed down.
    """
    docs = list(dict.fromkeys([positive for _, positive, _ in batch] + [ex.negatives[k] for ex, _, picks in batch for k in picks]))
    column = {text: j for j, text in enumerate(docs)}
    targets = [column[positive] for _, positive, _ in batch]
    mask = [[j != target and text in relevant[ex.query] for j, text in enumerate(docs)]
            for (ex, _, _), target in zip(batch, targets)]
    return docs, targets, mask


def _encode_batch(model: TrainableSplade, batch: list[Row], config: TrainConfig, relevant: dict[str, frozenset[str]]):
    """(query vectors, document vectors, false-negative mask, target columns, distinct documents) of one micro-batch."""
    queries = [ex.query for ex, _, _ in batch]
    if config.inference_free:
        q = model.encode_idf_queries(queries, config.query_max_length)
    else:
        q = model.encode(queries, config.query_max_length, model.encoder.prompts.query)
    docs, targets, mask = batch_documents(batch, relevant)
    d = model.encode(docs, config.max_length, model.encoder.prompts.document)
    return q, d, torch.tensor(mask, device=q.device), torch.tensor(targets, device=q.device), docs


def _batch_loss(model: TrainableSplade, batch: list[Row], config: TrainConfig, flops_scale: float,
                doc_term_weights: torch.Tensor | None, relevant: dict[str, frozenset[str]],
                scale: float | None) -> tuple[torch.Tensor, dict[str, float]]:
    q, d, mask, targets, docs = _encode_batch(model, batch, config, relevant)
    if scale is None:  # fitted to this batch's scores: the loss then has no pull to shrink (or grow) every vector
        scale = fit_scale((q @ d.t()).detach(), mask, targets)
    rank = contrastive(q, d, mask, targets, scale)
    reg_q, reg_d = flops(q), flops(d, doc_term_weights)  # an IDF query has no gradient: its FLOPS is a constant
    loss = rank + flops_scale * (config.flops_query * reg_q + config.flops_doc * reg_d)
    distill = _distillation(q, d, batch, docs)
    if distill is not None:
        loss = loss + config.distill * distill
    stats = {"loss": loss.detach().item(), "rank": rank.detach().item(), "flops_q": reg_q.detach().item(),
             "flops_d": reg_d.detach().item(),
             "nnz_q": float((q > 0).sum(1).float().mean()), "nnz_d": float((d > 0).sum(1).float().mean()), "scale": scale}
    return loss, stats


def _distillation(q: torch.Tensor, d: torch.Tensor, batch: list[Row], docs: list[str]) -> torch.Tensor | None:
    """Margin-MSE over (positive, drawn negative) pairs of rows whose file carries teacher scores."""
    column = {text: j for j, text in enumerate(docs)}
    rows, pos_cols, neg_cols, teacher_pos, teacher_neg = [], [], [], [], []
    for i, (ex, positive, picks) in enumerate(batch):
        for k in picks:
            if ex.scores is not None:
                rows.append(i)
                pos_cols.append(column[positive])
                neg_cols.append(column[ex.negatives[k]])
                teacher_pos.append(ex.scores[0])
                teacher_neg.append(ex.scores[1 + int(k)])
    if not rows:
        return None
    index = torch.tensor(rows, device=q.device)
    student_pos = (q[index] * d[torch.tensor(pos_cols, device=q.device)]).sum(1)
    student_neg = (q[index] * d[torch.tensor(neg_cols, device=q.device)]).sum(1)
    return margin_mse(student_pos, student_neg, torch.tensor(teacher_pos, device=q.device),
                      torch.tensor(teacher_neg, device=q.device))


class _StopOnInterrupt:
    """The first Ctrl-C, SIGTERM or SIGHUP asks the loop to stop after the current step (so the checkpoint is whole);
    a second one aborts. A scheduler's SIGTERM (pre-emption, then SIGKILL after a grace period) thus keeps the steps
    since the last periodic checkpoint, and so does a closed ssh session's SIGHUP (unless nohup ignores it)."""

    def __init__(self) -> None:
        self.requested: int | None = None  # the signal that asked
        self._previous: dict = {}

    def __enter__(self) -> "_StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in stop_signals()}
        return self

    def _handle(self, signum, _frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signum
        log.warning("%s: stopping after this step (Ctrl-C again to abort without a checkpoint)", signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(model: TrainableSplade, examples: list[Example], out: Path, config: TrainConfig, *, resume: bool = False,
          max_minutes: float | None = None, checkpoint_every: int = 100, progress: bool = True,
          validate: Callable[[], float] | None = None, validation: str | None = None) -> TrainResult:
    """Optimise ``model`` on ``examples``; checkpoints go to ``out``. Returns how far it got and the per-step stats.

    ``validate`` (a held-out score, higher is better) runs at the start and every ``config.dev_every`` steps; the
    model ends with the best-scoring weights (see ``Guard``). ``validation`` names what it scores, for the
    resume check."""
    config.check()
    check_accumulate(config, len(examples))
    if checkpoint_every <= 0:
        raise ValueError(f"--checkpoint-every must be positive, got {checkpoint_every}")
    torch.manual_seed(config.seed)
    for stale in leftovers(out):  # checkpoint writes a kill -9 cut short (the caller holds OUT: none is under way)
        stale.unlink()
    run = fingerprint(config, examples, validation, numerics_of(model))
    total = config.max_steps or config.epochs * steps_per_epoch(config, len(examples))  # max_steps overrides (as in ST)
    decay = [p for p in model.parameters if p.dim() >= 2]
    plain = [p for p in model.parameters if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": plain, "weight_decay": 0.0}], lr=config.lr)
    scaler = loss_scaler(model)
    batches, relevant = _Epochs(examples, config), relevant_by_query(examples)
    doc_term_weights = None
    if config.inference_free:
        doc_term_weights = idf_flops_weights(idf_queries(model, examples))
    guard = Guard(model.parameters, None if validate is None else _in_eval_mode(model, validate), config.dev_every,
                  config.patience, config.collapse_fraction)
    starting = [p.detach().clone() for p in model.parameters] if config.blend < 1 else None  # before a resume restores
    start, seconds, checkpointed, first, skipped, last = 0, 0.0, None, None, 0, None
    if resume:
        state = read_checkpoint(out)
        if state is None:
            raise ValueError(f"nothing to resume: {out} holds no checkpoint")
        _check_same_run(out, state["run"], run)
        try:  # a checkpoint with a good checksum that lsr did not write: one line, not a traceback or a no-op
            restore_checkpoint(state, model.parameters, optimizer, scaler)
            guard.load(state["guard"])
            start, seconds, first = int(state["step"]), float(state["seconds"]), state.get("first")
            last = state.get("last")  # none in a checkpoint from before it was kept
            skipped = int(state.get("skipped_steps", 0))  # none in a checkpoint from before they were kept
            checkpointed = start
            if not 0 <= start <= total:
                raise ValueError(f"step {start} is outside 0..{total}")
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise ValueError(f"{out / CHECKPOINT_FILE} is not a usable training checkpoint for this run ({exc}); "
                             "train into a new folder") from None
        log.info("resuming at step %d of %d", start, total)
    guard.start(start)
    flops_warm = int(min(total, steps_per_epoch(config, len(examples))) * config.flops_warmup)  # within the first epoch
    history: list[dict[str, float]] = []
    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    step, halt = start, guard.halted  # a checkpoint of a run the guard stopped, kept until its summary was written
    stopped = halt.split(":")[0] if halt else "finished"
    model.train()
    bar = progress_bar("train", total, initial=start, enabled=progress, unit="step")
    with bar, _StopOnInterrupt() as interrupt:  # the bar ends its line before an error prints: the error is the last line
        while step < total and halt is None:
            clock = time.perf_counter()
            try:
                stats = _step(model, optimizer, scaler, batches.micro_batches(step), config, step, step - skipped,
                              total, flops_warm, doc_term_weights, relevant, config.score_scale)
            except NonFiniteLoss as error:
                raise _after_non_finite(error, out, checkpointed) from None
            seconds += time.perf_counter() - clock
            step, skipped = step + 1, skipped + int(stats["skipped"])
            history.append({"step": step, **stats})  # after a resume the first is not step 1
            first, last = first or history[0], history[-1]
            halt = guard.after_step(step, stats)
            _show_step(bar, stats, guard.scores, deadline)
            # a limit that runs out on the last step cut nothing: that run finished (it said "time limit", kept its
            # checkpoint and offered a --resume with no step left to train)
            out_of_time = step < total and deadline is not None and time.monotonic() >= deadline
            # the last step too: a kill while OUT's model folder is written then loses no training (--resume exports)
            if step % checkpoint_every == 0 or step == total or interrupt.requested or out_of_time or halt:
                save_checkpoint(out, model.parameters, optimizer, step, run, seconds, guard.state(), first,
                                scaler.state_dict(), skipped, last)
                checkpointed = step
            if interrupt.requested or out_of_time or halt:
                stopped = "interrupted" if interrupt.requested else "time limit" if out_of_time else halt.split(":")[0]
                break
    if halt:
        log.warning("stopped at step %d: %s", step, halt)
    kept = None if stopped == "interrupted" else guard.finish(step, collapsed=stopped == "collapsed")
    if kept:
        log.warning("%s", kept)
    if history and stopped != "interrupted":  # the weights to export: the guard's, or the last update's
        _check_last_update(model, batches.micro_batches(step - 1)[0], config, doc_term_weights, relevant, out, step)
    if starting is not None and stopped != "interrupted":
        blend_weights(model.parameters, starting, config.blend)
    model.train(False)
    return TrainResult(step, total, seconds, stopped, history, guard.scores, kept, interrupt.requested, first, last,
                       skipped)


def _show_step(bar: Any, stats: dict[str, float], scores: list[tuple[int, float]], deadline: float | None) -> None:
    """Advance the bar by a step: its loss and sparsity, the latest held-out score (this step's when it was just
    scored; it showed the one before), and under --max-minutes the time left (tqdm's ETA counts the whole schedule:
    hundreds of millions of hours for a run that stopped after 3 seconds)."""
    extra = {"dev": f"{scores[-1][1]:.4f}"} if scores else {}
    if deadline is not None:
        extra["time_left"] = bar.format_interval(max(0.0, deadline - time.monotonic()))
    bar.set_postfix(loss=f"{stats['loss']:.3f}", flops=f"{stats['flops_d']:.1f}", nnz_q=f"{stats['nnz_q']:.0f}",
                    nnz_d=f"{stats['nnz_d']:.0f}", **extra, refresh=False)
    bar.update(1)


class NonFiniteLoss(ValueError):
    """A step whose loss or gradient is NaN or infinite; ``train`` says what OUT then holds."""


def _after_non_finite(error: NonFiniteLoss, out: Path, checkpointed: int | None) -> ValueError:
    """The one-line error: a checkpoint already in OUT holds weights that may have diverged before this step (a
    --lr of 1e30 wrecked them at step 1 and failed at step 2, yet the line said nothing was written), and a
    --resume would only meet the same step again."""
    remedy = "lower --lr, or look for extreme values in the training data"
    if checkpointed is None:
        return ValueError(f"{error}; nothing was written: {remedy}")
    return ValueError(f"{error}; {out}'s checkpoint (step {checkpointed}) holds the weights before it, which may "
                      f"already have diverged, and --resume would meet this step again: train into a new folder and "
                      f"{remedy}")


def _check_last_update(model: TrainableSplade, batch: Any, config: TrainConfig, doc_term_weights: Any,
                       relevant: Any, out: Path, step: int) -> None:
    """The last step's batch scored again with the weights its update left: each step checks the loss before its
    update, so a diverging last one (--lr 1e30, one step) was exported as a model that encodes nothing, exit 0."""
    with torch.no_grad():
        loss, _ = _batch_loss(model, batch, config, 1.0, doc_term_weights, relevant, config.score_scale)
    if not math.isfinite(float(loss)):
        raise ValueError(f"step {step}: the update left weights whose loss is not finite, so no model was exported "
                         f"({out}'s checkpoint holds those weights): train into a new folder and lower --lr, or look "
                         "for extreme values in the training data")


def blend_weights(parameters: list[torch.nn.Parameter], starting: list[torch.Tensor], share: float) -> None:
    """Weight-space ensembling (WiSE-FT): each parameter becomes ``share`` of itself plus the rest of its starting
    value. Fine-tuning on one small dataset trades away some of what the model knew; a 0.5 blend kept most of the
    gain and lost nothing on a dataset never seen (benchmarks/results/train-scifact.md). Exact where
    training left a parameter (or the whole model, when the guard gave back the starting weights) unchanged."""
    with torch.no_grad():
        for param, start in zip(parameters, starting, strict=True):
            param.copy_(torch.lerp(start, param, share))


def idf_queries(model: TrainableSplade, examples: list[Example]) -> torch.Tensor:
    """The inference-free variant's IDF table, from the training documents (once: a resume computes the same)."""
    if model.idf is None:
        model.use_idf_queries(sorted({text for ex in examples for text in (*ex.positives, *ex.judged, *ex.negatives)}))
    return model.idf


def _in_eval_mode(model: TrainableSplade, validate: Callable[[], float]) -> Callable[[], float]:
    """``validate`` without dropout (so it draws no random numbers and a resume stays exact), then back to training."""
    def run() -> float:
        model.train(False)
        try:
            return validate()
        finally:
            model.train()

    return run


def loss_scaler(model: TrainableSplade) -> torch.amp.GradScaler:
    """fp16's dynamic loss scale (off for fp32 and bf16): unscaled, a SPLADE gradient's small entries underflow
    fp16's range to zero, and ``--dtype auto`` picks fp16 on a GPU without bf16 (a T4, a V100). A step whose scaled
    gradient overflows is skipped and the scale halved, as sentence-transformers' fp16 training does."""
    return torch.amp.GradScaler(model.device.type, enabled=model.autocast_dtype == torch.float16)


def _step(model: TrainableSplade, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, micro_batches,
          config: TrainConfig, step: int, scheduled: int, total: int, flops_warm: int,
          doc_term_weights: torch.Tensor | None, relevant: dict[str, frozenset[str]],
          scale: float | None) -> dict[str, float]:
    """One optimiser step; its stats carry ``skipped`` 1.0 where fp16's scaled gradient overflowed, and ``lr``.
    The learning rate follows ``scheduled``, the steps applied so far: a step fp16 skipped does not advance the
    schedule (sentence-transformers' trainer steps its scheduler only after an optimiser step that was run)."""
    flops_scale = quadratic_warmup(1.0, step, flops_warm)
    totals: dict[str, float] = {}
    for batch in micro_batches:
        loss, stats = _batch_loss(model, batch, config, flops_scale, doc_term_weights, relevant, scale)
        scaler.scale(loss / len(micro_batches)).backward()
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value / len(micro_batches)
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters, config.clip)
    overflowed = not bool(torch.isfinite(norm))  # one host sync: under fp16's scale, the step is skipped
    if not math.isfinite(totals["loss"]) or overflowed and not scaler.is_enabled():  # every weight NaN
        raise NonFiniteLoss(f"step {step + 1}: the loss or its gradient is not finite (loss {totals['loss']}), so the "
                            "step was not applied")
    lr = config.lr * lr_factor(scheduled, total, config.warmup)
    for group in optimizer.param_groups:
        group["lr"] = lr
    scaler.step(optimizer)  # skips the update where the unscaled gradient holds an inf or a NaN
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return {**totals, "skipped": float(overflowed), "lr": lr}
