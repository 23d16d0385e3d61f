"""What every encoder does before its forward pass: check the texts, tokenise thread-safely, pick the device."""

from __future__ import annotations

import threading
from typing import Any, Sequence

import torch


def check_texts(texts: Any) -> list[str]:
    """Accept a string or a sequence of strings; a non-string raises TypeError naming its position."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Sequence) and not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
    return texts


def token_ids(tokenizer: Any, texts: list[str], **options: Any) -> list[list[int]]:
    """``tokenizer(texts, **options)["input_ids"]``, one call at a time per tokenizer object.

    A fast tokenizer re-applies its truncation and padding settings inside a call, mutating its Rust
    state; two threads overlapping there fail with "Already borrowed". Serialising only this call
    lets the forward passes of concurrent encodes (the service's micro-batches) run in parallel.
    """
    lock = tokenizer.__dict__.setdefault("_lsr_call_lock", threading.Lock())
    with lock:
        return tokenizer(texts, verbose=False, **options)["input_ids"]


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
