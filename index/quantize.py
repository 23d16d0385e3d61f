"""Impact quantization: float weights <-> stored integers with one scale per segment.

Small integer impacts shrink the postings 4x (uint8) and keep the kernels' inner loops in cache.
Scores are computed as ``sum(query_weight * scale * stored_impact)``, i.e. in original units.
"""

from __future__ import annotations

import numpy as np

QUANTIZATIONS: dict[str, np.dtype] = {
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "float32": np.dtype(np.float32),
}


def impact_dtype(quantization: str) -> np.dtype:
    try:
        return QUANTIZATIONS[quantization]
    except KeyError:
        raise ValueError(f"quantization must be one of {sorted(QUANTIZATIONS)}, got {quantization!r}") from None


def choose_scale(quantization: str, max_weight: float, current_scale: float | None = None) -> float:
    """Scale mapping ``max_weight`` to the top of the integer range.

    An existing scale is kept whenever it can still represent ``max_weight``: segments that share
    a scale merge losslessly, so later adds do not re-round the vectors of earlier segments.
    """
    dtype = impact_dtype(quantization)
    if dtype.kind == "f":
        return 1.0
    needed = float(max_weight) / float(np.iinfo(dtype).max) if max_weight > 0 else 0.0
    if current_scale is not None and current_scale > 0 and needed <= current_scale:
        return float(current_scale)
    return needed if needed > 0 else 1.0


def quantize(values: np.ndarray, quantization: str, scale: float) -> np.ndarray:
    """Round ``values / scale`` to the stored dtype (values are already validated: finite, >= 0)."""
    dtype = impact_dtype(quantization)
    if dtype.kind == "f":
        return np.ascontiguousarray(values, dtype=dtype)
    top = np.iinfo(dtype).max
    return np.clip(np.rint(np.asarray(values, np.float64) / scale), 0, top).astype(dtype)


def dequantize(impacts: np.ndarray, scale: float) -> np.ndarray:
    return (np.asarray(impacts, np.float32) * np.float32(scale)).astype(np.float32)
