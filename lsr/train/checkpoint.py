"""Resumable training state: weights, optimiser moments, step, RNG state, written atomically and checksummed.

A kill -9 at any line leaves either the previous checkpoint or the new one, never a torn file; a flipped
bit is refused (the file is ``MAGIC`` + the sha256 of the payload + ``torch.save``'s payload), and the
payload loads with ``weights_only=True``, so a planted file cannot run code. Restoring the RNG state
makes dropout after a resume draw what the uninterrupted run drew.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from lsr.files import atomic_write

CHECKPOINT_FILE = "checkpoint.pt"
MAGIC = b"lsr-train-checkpoint/1\n"
KEYS = {"guard", "step", "seconds", "run", "parameters", "optimizer", "torch_rng", "cuda_rng"}


def leftovers(out: Path) -> list[Path]:
    """Temporary files of checkpoint writes a kill -9 cut short (``atomic_write`` names them NAME.PID.tmp)."""
    return sorted(out.glob(f"{CHECKPOINT_FILE}.*.tmp"))


def save_checkpoint(out: Path, parameters: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                    step: int, run: dict[str, Any], seconds: float, guard: dict[str, Any],
                    first: dict[str, float] | None = None, loss_scale: dict[str, Any] | None = None,
                    skipped: int = 0, last: dict[str, float] | None = None) -> None:
    """``loss_scale``: fp16's GradScaler state (an empty dict when off), so a resumed run scales as it did;
    ``skipped``: the steps fp16's overflow skipped so far, which the learning-rate schedule does not count."""
    state = {
        "guard": guard,  # the best weights so far and the stop rules' counters
        "step": step,
        "seconds": seconds,
        "first": first,  # the run's first step (its loss), for the summary of a resumed run
        "last": last,  # and this one's: a run resumed only to export had none to show
        "run": run,
        "parameters": [p.detach().cpu().clone() for p in parameters],
        "optimizer": optimizer.state_dict(),
        "loss_scale": loss_scale or {},
        "skipped_steps": skipped,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    atomic_write(out / CHECKPOINT_FILE, lambda fh: fh.writelines([MAGIC, hashlib.sha256(payload).digest(), payload]))


def read_checkpoint(out: Path) -> dict[str, Any] | None:
    path = out / CHECKPOINT_FILE
    if not path.is_file():
        return None
    raw = path.read_bytes()
    start = len(MAGIC) + hashlib.sha256().digest_size
    if not raw.startswith(MAGIC):
        raise ValueError(f"{path} is not an lsr training checkpoint (or one from before checkpoints were checksummed); "
                         "train into a new folder")
    if hashlib.sha256(raw[start:]).digest() != raw[len(MAGIC):start]:
        raise ValueError(f"{path} is damaged (its checksum does not match); delete {out} to start over, or train into "
                         "a new folder")
    try:
        state = torch.load(io.BytesIO(raw[start:]), map_location="cpu", weights_only=True)
    except Exception as exc:  # a payload lsr did not write: say so, do not guess
        raise ValueError(f"{path} is not a readable training checkpoint ({exc})") from None
    if not isinstance(state, dict) or not KEYS <= state.keys():
        raise ValueError(f"{path} is not an lsr training checkpoint (it lacks the training state)")
    return state


def restore_checkpoint(state: dict[str, Any], parameters: list[torch.nn.Parameter],
                       optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
    with torch.no_grad():
        for param, saved in zip(parameters, state["parameters"], strict=True):
            param.copy_(saved)
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("loss_scale"):  # fp16's (a checkpoint from before it was kept has none)
        scaler.load_state_dict(state["loss_scale"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        # per GPU this machine has: one saved on more GPUs than are here failed as "invalid device ordinal"
        for device, rng in enumerate(state["cuda_rng"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng, device)
