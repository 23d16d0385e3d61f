"""Launch choices of the fused kernel (kernels/launch.py): length buckets, the committed table, the heuristic,
and the persisted LSR_AUTOTUNE cache. Kernels run in Triton's interpreter on CPU (see test_pool_triton.py)."""

import json
import logging
import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lsr.kernels import launch  # noqa: E402
from lsr.kernels import pool_triton  # noqa: E402
from lsr.kernels.launch import LaunchConfig, LaunchKey, fits, heuristic, launch_table, length_bucket  # noqa: E402

if DEVICE == "cpu" and not pool_triton.INTERPRET:
    pytest.skip("pool_triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)


def inputs(B, L, H, V, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, H, generator=gen)
    weight = torch.randn(V, H, generator=gen) / H**0.5
    bias = torch.randn(V, generator=gen) * 0.5
    mask = (torch.arange(L)[None, :] < torch.randint(1, L + 1, (B,), generator=gen)[:, None]).long()
    return hidden.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE), mask.to(DEVICE)


def test_lengths_fall_into_a_handful_of_power_of_two_buckets():
    assert [length_bucket(n) for n in (1, 16, 17, 100, 128, 129, 256, 257, 512)] == [16, 16, 32, 128, 128, 256, 256, 512, 512]
    assert len({length_bucket(n) for n in range(1, 513)}) == 6


@pytest.mark.parametrize("L, padded", [(37, 64), (19, 32), (150, 256)])  # packed, packed, tiled
def test_output_padded_to_the_bucket_equals_the_unpadded_output(L, padded):
    hidden, weight, bias, mask = inputs(3, L, 40, 129, seed=L)
    out = pool_triton.splade_max_pool_triton(hidden, weight, bias, mask)
    pad = padded - L
    hidden_padded = torch.cat([hidden, torch.randn(3, pad, 40).to(hidden)], dim=1)  # garbage, masked out
    mask_padded = torch.cat([mask, torch.zeros(3, pad, dtype=mask.dtype, device=mask.device)], dim=1)
    assert length_bucket(L) == length_bucket(padded)
    assert torch.equal(pool_triton.splade_max_pool_triton(hidden_padded, weight, bias, mask_padded), out)


def test_committed_table_entries_are_valid_launches():
    table = launch_table()
    assert table, "launch_table.json has no entries"
    for text, config in table.items():
        gpu, kernel, dtype, hidden, bucket, mode = text.split("/")
        key = LaunchKey(gpu, kernel, dtype, int(hidden[1:]), int(bucket[1:]), mode == "train")
        assert key.text() == text and kernel in launch.KERNELS and fits(kernel, key.bucket, config), text
        assert (kernel == "packed") == (key.bucket <= pool_triton.PACK_MAX_LEN), text


def test_table_is_used_for_a_measured_key_and_the_heuristic_elsewhere():
    chooser = launch.LaunchChooser("source")
    measured = LaunchKey("sm90", "packed", "bf16", 768, 32, False)
    assert chooser._pick(measured, torch.device("cpu"), False, launch=None) == LaunchConfig(256, 128, 64, 8, 3)
    unseen = LaunchKey("sm90", "packed", "bf16", 1024, 32, False)
    assert chooser._pick(unseen, torch.device("cpu"), True, launch=None) == heuristic(unseen, launch._FALLBACK_SHARED_MEMORY)


@pytest.mark.parametrize("kernel, bucket", [("packed", 16), ("packed", 64), ("packed", 128), ("tiled", 256), ("tiled", 1024)])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("gpu, shared", [("sm86", 99 * 1024), ("sm80", 163 * 1024), ("sm90", 227 * 1024)])
def test_heuristic_fits_the_kernel_and_the_shared_memory(kernel, bucket, dtype, gpu, shared):
    key = LaunchKey(gpu, kernel, dtype, 768, bucket, False)
    config = heuristic(key, shared)
    assert fits(kernel, bucket, config)
    buffers = launch.operand_buffers(key, config)
    assert config.shared_bytes(4 if dtype == "fp32" else 2, buffers) <= launch.SHARED_MEMORY_SHARE * shared
    if dtype == "fp32":  # an FMA dot: the accumulator tile stays in registers
        assert config.accumulators_per_thread() <= launch.max_accumulators(key) and config.block_h == 32
    else:
        assert config.block_v >= 128 and config.block_n >= min(bucket, 128)  # tensor cores keep big tiles


def test_tensor_core_dots_from_sm80_in_16_bit_only():
    assert launch.tensor_core_dot("sm90", "bf16") and launch.tensor_core_dot("sm80", "fp16")
    assert not launch.tensor_core_dot("sm75", "fp16") and not launch.tensor_core_dot("sm90", "fp32")
    config = LaunchConfig(128, 256, 64, 8, 3)
    assert launch.operand_buffers(LaunchKey("sm90", "tiled", "bf16", 768, 256, False), config) == 3  # TMA
    assert launch.operand_buffers(LaunchKey("sm100", "tiled", "bf16", 768, 256, False), config) == 3
    assert launch.operand_buffers(LaunchKey("sm80", "tiled", "bf16", 768, 256, False), config) == 2  # cp.async
    assert launch.operand_buffers(LaunchKey("sm120", "tiled", "bf16", 768, 256, False), config) == 2
    assert launch.operand_buffers(LaunchKey("sm90", "tiled", "fp32", 768, 256, False), config) == 2


@pytest.mark.parametrize("kernel, bucket", [("packed", 16), ("packed", 128), ("tiled", 256), ("tiled", 512)])
def test_autotune_measures_only_tiles_that_keep_an_fma_dot_in_registers(kernel, bucket):
    for gpu in ("sm80", "sm90", "sm100"):
        fp32 = launch.candidates(LaunchKey(gpu, kernel, "fp32", 768, bucket, True))
        assert fp32 and all(c.accumulators_per_thread() <= 64 and fits(kernel, bucket, c) for c in fp32)
        assert len(launch.candidates(LaunchKey(gpu, kernel, "bf16", 768, bucket, False))) > len(fp32)


def test_a_launch_that_does_not_fit_steps_down_and_the_smaller_one_is_kept(caplog):
    """Another Triton may allocate more than the heuristic planned for: Triton raises OutOfResources before
    running anything, and the chooser retries smaller instead of failing the encode."""
    from triton.runtime.errors import OutOfResources

    chooser = launch.LaunchChooser("source")
    key = LaunchKey("sm86", "tiled", "bf16", 1024, 512, False)  # not in the table: the heuristic's choice
    first = heuristic(key, launch._FALLBACK_SHARED_MEMORY)
    tried = []

    def launch_on_a_small_gpu(config):
        tried.append(config)
        need = config.shared_bytes(2, config.stages)  # pretend this Triton keeps one buffer per stage
        if need > 48 * 1024:
            raise OutOfResources(need, 48 * 1024, "shared memory")

    with caplog.at_level(logging.WARNING, logger="lsr.kernels.launch"):
        used = chooser.launch(key, torch.device("cpu"), True, launch_on_a_small_gpu)  # no GPU: the fallback shared memory
    assert tried[0] == first and used == tried[-1] and len(tried) > 1
    assert used.shared_bytes(2, used.stages) <= 48 * 1024 and fits("tiled", 512, used)
    assert "does not fit this GPU" in caplog.text
    tried.clear()
    assert chooser.launch(key, torch.device("cpu"), True, launch_on_a_small_gpu) == used and tried == [used]

    def never_fits(config):
        raise OutOfResources(10**9, 1, "shared memory")

    with pytest.raises(OutOfResources):
        launch.LaunchChooser("source").launch(key, torch.device("cpu"), True, never_fits)


def test_autotune_results_persist_are_reused_and_ignored_when_stale(monkeypatch, tmp_path, caplog):
    hidden, weight, bias, mask = inputs(2, 20, 24, 70)
    want = pool_triton.splade_max_pool_triton(hidden, weight, bias, mask)  # table/heuristic launch
    monkeypatch.setenv("LSR_AUTOTUNE", "1")
    monkeypatch.setenv("LSR_CACHE_DIR", str(tmp_path))
    path = tmp_path / launch.TUNING_FILE

    def run_fresh() -> list[str]:
        """A new process's view: no in-memory choices, only the file."""
        pool_triton._CHOOSER.forget()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lsr.kernels.launch"):
            assert torch.equal(pool_triton.splade_max_pool_triton(hidden, weight, bias, mask), want)
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("tuned")]

    try:
        assert len(run_fresh()) == 1  # tuned once, then written
        saved = json.loads(path.read_text())
        (stamp, entries), = saved.items()
        gpu = "interpreter" if pool_triton.INTERPRET else torch.cuda.get_device_name(hidden.device)
        assert stamp.startswith("triton ") and f"|{gpu}|" in stamp
        key = launch.launch_key(hidden.device, pool_triton.INTERPRET, "packed", torch.float32, 24, 20, False)
        assert list(entries) == [key.text()] and key.text().endswith("/packed/fp32/H24/L32/infer")

        assert run_fresh() == []  # reused from disk

        stale = stamp.replace("triton ", "triton 0.0-old ")
        path.write_text(json.dumps({stale: entries}))
        assert len(run_fresh()) == 1  # another Triton's tuning is ignored and replaced
        assert list(json.loads(path.read_text())) == [stamp]

        path.write_text("{not json")
        assert len(run_fresh()) == 1  # a damaged file is ignored too

        # JSON of another shape, and entries edited by hand or written by another version, crashed the launch (a
        # TypeError, a ZeroDivisionError, Triton's "power of 2") or made every later process tune every key again
        for damaged in ([], 7, {stamp: []}, {stamp: {key.text(): [32, 16]}}, {stamp: {key.text(): [32, 12, 32, 4, 1]}},
                        {stamp: {key.text(): [32, 0, 32, 4, 1]}}, {stamp: {key.text(): "12345"}},
                        {stamp: {key.text(): [32, 16, 32, 4, 1]}}):  # the last does not fit the packed kernel at L32
            path.write_text(json.dumps(damaged))
            assert len(run_fresh()) == 1, damaged
            retuned = launch.LaunchConfig(*json.loads(path.read_text())[stamp][key.text()])
            assert retuned in launch.candidates(key)  # the fastest of them: another one than before on a busy machine
            assert run_fresh() == []  # the repaired file serves the next process
        other = "other/key"
        path.write_text(json.dumps({stamp: {other: [1, 2], key.text(): entries[key.text()]}}))
        assert run_fresh() == []  # a malformed entry beside it costs only itself
        assert any("ignoring 1 malformed entry(ies)" in r.getMessage() for r in caplog.records)

        monkeypatch.setenv("LSR_CACHE_DIR", str(path))  # a file where the cache folder should be: nothing is saved
        caplog.clear()
        assert len(run_fresh()) == 1
        assert any("could not save a tuned launch" in r.getMessage() for r in caplog.records)
    finally:
        pool_triton._CHOOSER.forget()
