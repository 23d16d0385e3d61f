"""benchmarks/device_kit.py: the bundled models survive the trip to a GPU machine as their bf16-rounded weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import benchmark_script


@pytest.fixture(scope="module")
def kit():
    return benchmark_script("device_kit")


def test_floats_come_back_as_their_bf16_values_and_integers_exactly(kit):
    gen = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(7, 5, generator=gen) * 1e3, "b": torch.randn(3, generator=gen, dtype=torch.float64),
               "ids": torch.arange(11, dtype=torch.int64).reshape(1, 11) * 10**12, "scalar": torch.tensor(0.1)}
    header, blob = kit.encode_weights(tensors)
    back = kit.decode_weights(json.loads(json.dumps(header)), blob)
    assert list(back) == list(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        expected = tensor.to(torch.bfloat16).to(tensor.dtype) if tensor.is_floating_point() else tensor
        assert torch.equal(back[name], expected), name
    assert not torch.equal(back["w"], tensors["w"])  # rounded, not stored whole


def test_a_packed_model_is_smaller_and_decodes_to_the_bundled_weights(kit, tmp_path):
    from safetensors.torch import load_file

    from lsr.encode.models import resolve_model

    kit.pack_model("splade-tiny", tmp_path)
    weights = Path(resolve_model("splade-tiny")) / "model.safetensors"
    assert (tmp_path / "splade-tiny.weights.xz").stat().st_size < 0.4 * weights.stat().st_size
    back = kit.decode_weights(json.loads((tmp_path / "splade-tiny.json").read_text()),
                              (tmp_path / "splade-tiny.weights.xz").read_bytes())
    original = load_file(weights)
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k].to(torch.bfloat16).to(original[k].dtype)) for k in original)


def test_unpacking_where_no_kit_was_packed_says_to_pack_it_in_one_line(tmp_path):
    """It was a traceback naming one missing model file, on a device whose time is counted."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "device_kit.py"
    result = subprocess.run([sys.executable, str(script), "unpack", str(tmp_path / "kit")], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"device_kit.py: error: {tmp_path / 'kit'} holds no packed kit: run `python benchmarks/device_kit.py pack` "
        "here, then carry .device-kit to the device")
