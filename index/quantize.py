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
_SLICE = 1 << 20  # weights quantized at a time


def impact_dtype(quantization: str) -> np.dtype:
    try:
        return QUANTIZATIONS[quantization]
    except KeyError:
        raise ValueError(f"quantization must be one of {sorted(QUANTIZATIONS)}, got {quantization!r}") from None


def choose_scale(quantization: str, max_weight: float) -> float | None:
    """Scale mapping ``max_weight`` to the top of the integer range: an index's base scale, chosen at its build, or
    by the first write with a weight: None where nothing holds one (1.0 had rounded every later weight to a whole
    number)."""
    dtype = impact_dtype(quantization)
    if not max_weight > 0:
        return None
    return 1.0 if dtype.kind == "f" else float(max_weight) / float(np.iinfo(dtype).max)


def row_scales(quantization: str, row_max: np.ndarray, base: float) -> np.ndarray:
    """Each document's scale: ``base`` where it holds the document's largest weight, else the first of base·2,
    base·4, ... that does.

    A document's impacts so depend on it and the index's base scale alone, not on what was written before it:
    a rerun after a crash, which writes some documents twice, and ``lsr repair``, which rebuilds them at once, give
    the scores an uninterrupted run gives (with one scale grown by the largest write so far, documents written after
    it rounded coarser, and their scores moved by up to 1.2 %). Segments of one scale merge losslessly.
    """
    dtype = impact_dtype(quantization)
    if dtype.kind == "f":
        return np.ones(len(row_max))
    needed = np.asarray(row_max, np.float64) / float(np.iinfo(dtype).max)
    steps = np.zeros(len(needed), np.float64)
    over = needed > base
    if over.any():
        steps[over] = np.ceil(np.log2(needed[over] / base))
        steps[over & (base * np.exp2(steps) < needed)] += 1  # log2 rounded down
    return base * np.exp2(steps)


def quantize(values: np.ndarray, quantization: str, scale: float) -> np.ndarray:
    """Round ``values / scale`` to the stored dtype (values are already validated: finite, >= 0)."""
    dtype = impact_dtype(quantization)
    if dtype.kind == "f":
        return np.ascontiguousarray(values, dtype=dtype)
    top = np.iinfo(dtype).max
    out = np.empty(len(values), dtype)
    for start in range(0, len(values), _SLICE):  # float64 temporaries of one slice, not of every weight written
        part = np.asarray(values[start : start + _SLICE], np.float64) / scale
        out[start : start + _SLICE] = np.clip(np.rint(part, out=part), 0, top, out=part)
    return out


def dequantize(impacts: np.ndarray, scale: float) -> np.ndarray:
    return (np.asarray(impacts, np.float32) * np.float32(scale)).astype(np.float32)
