"""The fused kernels compiled for GPUs this machine lacks (benchmarks/kernel_compile.py, Triton's compiler + ptxas).

Runs the script in a fresh process (kernels cannot be compiled once the interpreter has loaded them) for
an A100 and an H100: every committed launch-table entry and a few heuristic choices must compile, fit
the family's shared memory and keep their accumulators in registers; and the shared-memory model the
heuristic plans with must match what this Triton really allocates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lsr.kernels import launch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("kernel_compile")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "kernel_compile.py"), "--families", "sm80,sm90", "--selection", "smoke",
         "--workers", "1", "--results-dir", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rows compile and fit" in (out / "kernel_compile.md").read_text()
    return json.loads((out / "kernel_compile.json").read_text())["rows"]


def test_every_committed_table_entry_compiles_and_fits_its_gpu(compiled):
    table_rows = {f"{r['family']}/{r['kernel']}/{r['dtype']}/H{r['hidden']}/L{r['bucket']}/{r['mode']}": r
                  for r in compiled if r["source"] == "table"}
    assert set(table_rows) == {k for k in launch.launch_table() if k.split("/")[0] in ("sm80", "sm90")}
    for key, row in table_rows.items():
        assert row["ok"] and row["shared"] <= row["limit"] and row["dot"] == "wgmma", (key, row)


def test_heuristic_choices_compile_on_tensor_cores_or_fma_as_planned(compiled):
    forward = [r for r in compiled if r["kernel"] in launch.KERNELS]
    assert {r["family"] for r in forward} == {"sm80", "sm90"} and {r["kernel"] for r in forward} == {"packed", "tiled"}
    for row in forward:
        expected = "fma" if row["dtype"] == "fp32" else {"sm80": "mma", "sm90": "wgmma"}[row["family"]]
        assert row["ok"] and row["dot"] == expected and row["stack"] <= 256, row


def test_the_shared_memory_model_matches_what_triton_allocates(compiled):
    """heuristic() sizes tiles with operand_buffers(); a Triton that pipelines differently would make it wrong."""
    for row in (r for r in compiled if r["kernel"] in launch.KERNELS):
        key = launch.LaunchKey(row["family"], row["kernel"], row["dtype"], row["hidden"], row["bucket"], row["mode"] == "train")
        config = launch.LaunchConfig(*row["config"])
        planned = config.shared_bytes(4 if row["dtype"] == "fp32" else 2, launch.operand_buffers(key, config))
        assert planned <= row["shared"] <= planned + 8192, (row, planned)  # + the epilogue's scratch (4 KiB in Triton 3.6)


def test_backward_kernels_compile_for_both_families(compiled):
    backward = {(r["family"], r["kernel"]) for r in compiled if r["kernel"] not in launch.KERNELS and r["ok"]}
    names = ("grad_weight", "grad_hidden_atomic", "grad_hidden_segment")
    assert backward == {(f, k) for f in ("sm80", "sm90") for k in names}
