"""Checks of the numbers a caller passes (sizes, weights, limits), shared by the encoders, the Searcher and its
options: Python's and numpy's numbers alike, one line that names the argument, TypeError for the wrong kind (2.5 or
"50" where a count goes) and ValueError out of range, before anything deep in torch or numba sees them."""

from __future__ import annotations

import math
from typing import Any

from lsr.sparse import is_real, is_whole


def check_whole(value: Any, what: str, low: int, high: int | None = None) -> int:
    """A whole number (numpy's too) in low..high (no upper bound: None), as an int: TypeError for another kind
    (2.5, "50"), ValueError out of range."""
    if not is_whole(value):
        raise TypeError(f"{what} must be a whole number, got {value!r}")
    if not low <= value <= (value if high is None else high):
        bounds = f"≥ {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{what} must be {bounds}, got {value}")
    return int(value)


def check_number(value: Any, what: str, low: float, high: float = math.inf) -> float:
    """A finite real number (numpy's too) in [low, high], as a float: TypeError for another kind ("1"), ValueError
    out of range."""
    if not is_real(value):
        raise TypeError(f"{what} must be a number, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        bounds = f"a finite number ≥ {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ValueError(f"{what} must be {bounds}, got {value}")
    return float(value)


def check_length(value: Any, what: str, model: Any) -> int:
    """A token length of at least 4 that the model's position embeddings reach, as an int: a longer one was taken,
    and a text past the model's positions then failed deep in torch (IndexError)."""
    value = check_whole(value, what, 4)
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and value > positions:
        raise ValueError(f"{what} {value} is more than the {positions} token positions the model has")
    return value
