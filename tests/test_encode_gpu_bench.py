"""benchmarks/encode_gpu.py without a GPU: it refuses in one line, and its measuring pieces are right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import benchmark_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "encode_gpu.py"


@pytest.fixture(scope="module")
def bench():
    return benchmark_script("encode_gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_without_cuda_it_fails_fast_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--results-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "needs a CUDA GPU" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_bias_shift_centres_the_number_of_kept_terms(bench):
    rng = np.random.default_rng(0)
    pooled = rng.normal(2.0, 1.0, size=(64, 5000)) + rng.normal(0, 0.2, size=(64, 1))  # most terms positive
    kept = (pooled - bench.bias_shift(pooled, 200) > 0).sum(axis=1)
    assert abs(kept.mean() - 200) < 20 and kept.min() > 50


def test_agreement_counts_nonzero_sets_and_relative_error(bench):
    reference = np.array([[0.0, 1.0, 2.0, 0.0], [3.0, 0.0, 0.0, 4.0]])
    assert bench.agreement(reference, reference) == {"entry_agreement": 1.0, "nonzero_agreement": 1.0, "relative_error": 0.0}
    ours = reference.copy()
    ours[0, 0] = 0.5  # one entry only ours has: 4 shared of 5 non-zero
    got = bench.agreement(ours, reference)
    assert got["nonzero_agreement"] == pytest.approx(0.8) and got["entry_agreement"] == pytest.approx(7 / 8)
    assert got["relative_error"] == pytest.approx(0.5 / np.sqrt(30))


def test_long_documents_pick_the_first_that_fill_the_length(bench):
    lengths = np.array([300, 12, 256, 255, 400])
    assert bench.long_documents(lengths, 3, 256).tolist() == [0, 2, 4]
    with pytest.raises(ValueError, match="only 3 documents"):
        bench.long_documents(lengths, 4, 256)
