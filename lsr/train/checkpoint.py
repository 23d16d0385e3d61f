"""Resumable training state: weights, optimiser moments, step, RNG state, written atomically.

A kill -9 at any line leaves either the previous checkpoint or the new one, never a torn file;
restoring the RNG state makes dropout after a resume draw what the uninterrupted run drew.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from lsr.files import atomic_write

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(out: Path, parameters: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer,
                    step: int, run: dict[str, Any], seconds: float, guard: dict[str, Any]) -> None:
    state = {
        "guard": guard,  # the best weights so far and the stop rules' counters
        "step": step,
        "seconds": seconds,
        "run": run,
        "parameters": [p.detach().cpu().clone() for p in parameters],
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(out / CHECKPOINT_FILE, lambda fh: fh.write(buffer.getvalue()))


def read_checkpoint(out: Path) -> dict[str, Any] | None:
    path = out / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a foreign or damaged file: say which, do not guess
        raise ValueError(f"{path} is not a readable training checkpoint ({exc})") from None


def restore_checkpoint(state: dict[str, Any], parameters: list[torch.nn.Parameter],
                       optimizer: torch.optim.Optimizer) -> None:
    with torch.no_grad():
        for param, saved in zip(parameters, state["parameters"], strict=True):
            param.copy_(saved)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
