"""--device / --dtype on every model verb: a missing GPU is one line and exit 2, before anything loads."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from lsr.encode.inputs import resolve_device, resolve_dtype

VERB_ARGS = [
    ("encode", ["some text"]),
    ("encode", ["--input", "no-such-corpus.jsonl", "--output", "vectors.parquet"]),
    ("index", ["no-such-corpus.jsonl", "out-folder"]),
    ("search", ["no-such-collection", "a query"]),
    ("serve", ["no-such-collection"]),
    ("beir", ["--dataset", "scifact"]),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("verb, args", VERB_ARGS)
def test_cuda_without_a_gpu_is_one_clean_line_and_exit_2(verb, args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lsr", verb, *args, "--device", "cuda"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [lines[-1]] and lines[0].startswith(f"lsr {verb}: error: device 'cuda'"), proc.stderr
    assert "sees no CUDA GPU" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out-folder").exists()


def test_device_and_dtype_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype(None, torch.device("cpu")) is None
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_cpu_bf16_encoder_runs_and_stays_close_to_fp32(splade):
    from lsr.encode.splade import SpladeEncoder

    half = SpladeEncoder.from_pretrained("splade-tiny", device="cpu", dtype="bf16")
    text = "vitamin d deficiency and bone density in older adults"
    want = splade.encode_documents([text]).to_dense()[0]
    got = half.encode_documents([text]).to_dense()[0]
    assert half.model.dtype == torch.bfloat16
    assert np.linalg.norm(got - want) <= 5e-2 * np.linalg.norm(want)


def test_a_vectors_file_is_encoded_in_the_dtype_asked_for(splade, tmp_path):
    from lsr.ingest.vector_file import VectorFileReader, encode_file

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "vitamin d deficiency and bone density in older adults"}\n')
    vectors = {}
    for dtype in ("fp32", "bf16"):
        encode_file(corpus, tmp_path / f"{dtype}.parquet", device="cpu", dtype=dtype, progress=False)
        vectors[dtype] = next(iter(VectorFileReader(tmp_path / f"{dtype}.parquet"))).vectors.to_dense()[0]
    want = splade.encode_documents(["vitamin d deficiency and bone density in older adults"]).to_dense()[0]
    np.testing.assert_array_equal(vectors["fp32"], want)
    assert not np.array_equal(vectors["bf16"], want)  # bf16 ran: its weights keep 8 bits
    assert np.linalg.norm(vectors["bf16"] - want) <= 5e-2 * np.linalg.norm(want)


def test_searcher_open_refuses_a_bad_device_dtype_or_thread_count_before_opening_anything(tmp_path):
    """Each was taken at open and failed at the first search, deep in torch (device "tpu", "cuda" on a CPU-only
    build, threads 2.5), or was dropped silently (threads 0). The folder does not exist: the checks come first."""
    from lsr import Searcher

    missing = tmp_path / "no-collection"
    with pytest.raises(ValueError, match="(unknown|unsupported) device 'tpu'"):
        Searcher.open(missing, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            Searcher.open(missing, device="cuda")
    with pytest.raises(ValueError, match="dtype must be one of auto, fp32, bf16, fp16, got 'int8'"):
        Searcher.open(missing, dtype="int8")
    with pytest.raises(TypeError, match="threads must be a whole number, got 2.5"):
        Searcher.open(missing, threads=2.5)
    with pytest.raises(ValueError, match="threads must be ≥ 1, got 0"):
        Searcher.open(missing, threads=0)
