"""Checks of the numbers a caller passes (sizes, weights, limits), shared by the encoders, the Searcher and its
options: Python's and numpy's numbers alike, one line that names the argument, TypeError for the wrong kind (2.5 or
"50" where a count goes) and ValueError out of range, before anything deep in torch or numba sees them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

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


def check_switch(value: Any, what: str) -> bool:
    """An on/off option: True or False (numpy's too), as a bool; "no" was taken as on."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be True or False, got {value!r}")
    return bool(value)


def check_number(value: Any, what: str, low: float, high: float = math.inf) -> float:
    """A finite real number (numpy's too) in [low, high], as a float: TypeError for another kind ("1"), ValueError
    out of range."""
    if not is_real(value):
        raise TypeError(f"{what} must be a number, got {value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        bounds = f"a finite number ≥ {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ValueError(f"{what} must be {bounds}, got {value}")
    return float(value)


# models whose position ids start after the padding id (RoBERTa's create_position_ids_from_input_ids): a model with
# 514 positions and pad id 1 reaches 512 tokens
POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer",
                           "mpnet", "roberta-prelayernorm", "xmod")


def usable_positions(config: Any) -> int | None:
    """The longest input a model's position embeddings reach (``config``: a transformers config or its config.json
    as a dict); None where it declares none."""
    def get(key: str) -> Any:
        return config.get(key) if isinstance(config, dict) else getattr(config, key, None)

    positions = get("max_position_embeddings")
    if positions is None:
        positions = get("n_positions")  # GPT-2's name
    if not is_whole(positions):
        return None
    if get("model_type") in POSITIONS_AFTER_PADDING and is_whole(get("pad_token_id")):
        positions -= get("pad_token_id") + 1
    return int(positions)


def check_length(value: Any, what: str, model: Any) -> int:
    """A token length of at least 4 that the model's position embeddings reach, as an int: a longer one was taken,
    and a text past the model's positions then failed deep in torch (IndexError)."""
    value = check_whole(value, what, 4)
    positions = usable_positions(getattr(model, "config", None))
    if positions is not None and value > positions:
        raise ValueError(f"{what} {value} is more than the {positions} token positions the model has")
    return value
