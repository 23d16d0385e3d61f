"""The fused Triton pooling kernel against the float64 PyTorch definition, forward and backward.

Without a GPU the kernels run in Triton's interpreter on CPU tensors; TRITON_INTERPRET is read when
the kernels are decorated, so it is set before ``lsr.kernels.pool_triton`` is imported.
"""

import os
import subprocess
import sys

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lsr.kernels.pool_torch import splade_max_pool_reference  # noqa: E402
from lsr.kernels.pool_triton import INTERPRET, splade_max_pool_triton  # noqa: E402

if DEVICE == "cpu" and not INTERPRET:
    pytest.skip("pool_triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)

# Norm-wise relative error bounds. 16-bit outputs and grads are rounded to their dtype once
# (bf16 keeps 8 significant bits, ~4e-3 relative; fp16 11 bits); accumulation is fp32 throughout.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# B, L, H, V with ragged tails. Up to L = 128 the packed kernel runs (several sequences per tile);
# L = 150 takes the tiled kernel, which loops over sequence tiles.
SHAPES = [(1, 1, 16, 1), (2, 19, 72, 333), (3, 17, 40, 129), (3, 5, 8, 70), (2, 150, 24, 70)]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    want = want.double().cpu()
    return ((got.double().cpu() - want).norm() / want.norm().clamp_min(1e-30)).item()


def make_inputs(B: int, L: int, H: int, V: int, dtype: torch.dtype, seed: int, bias: bool = True):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, H, generator=gen)
    weight = torch.randn(V, H, generator=gen) / H**0.5
    b = torch.randn(V, generator=gen) * 0.5 if bias else None
    lengths = torch.randint(1, L + 1, (B,), generator=gen)
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    if B > 1:
        mask[-1] = 0  # one fully padded row
    to = dict(device=DEVICE, dtype=dtype)
    return hidden.to(**to), weight.to(**to), None if b is None else b.to(**to), mask.to(DEVICE)


def reference_grads(hidden, weight, bias, mask, grad_out):
    """Autograd through the float64 reference on CPU: (out, grad_hidden, grad_weight, grad_bias)."""
    leaves = [t.detach().cpu().double().requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    out = splade_max_pool_reference(*leaves, mask.cpu())
    out.backward(grad_out.cpu().double())
    return out, *(t.grad if t is not None else None for t in leaves)


def kernel_grads(hidden, weight, bias, mask, grad_out, deterministic: bool):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (hidden, weight, bias)]
    out = splade_max_pool_triton(*leaves, mask, deterministic=deterministic)
    out.backward(grad_out.to(out.dtype))
    return out, *(t.grad if t is not None else None for t in leaves)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_float64_reference_fp32(shape, bias):
    hidden, weight, b, mask = make_inputs(*shape, torch.float32, seed=sum(shape), bias=bias)
    out = splade_max_pool_triton(hidden, weight, b, mask)
    want = splade_max_pool_reference(hidden.double(), weight.double(), None if b is None else b.double(), mask)
    assert out.dtype == torch.float32 and out.shape == want.shape
    assert rel_err(out, want) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_forward_16bit_within_stated_tolerance(dtype):
    hidden, weight, b, mask = make_inputs(3, 19, 72, 333, dtype, seed=7)
    out = splade_max_pool_triton(hidden, weight, b, mask)
    want = splade_max_pool_reference(hidden.double(), weight.double(), b.double(), mask)
    assert out.dtype == dtype
    assert rel_err(out, want) <= TOLERANCE[dtype]


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize(
    "dtype,shape",
    [
        (torch.float32, (3, 19, 72, 333)),
        (torch.float32, (2, 17, 40, 129)),
        (torch.bfloat16, (3, 19, 72, 333)),
        (torch.float32, (2, 150, 24, 70)),
    ],
)
def test_backward_matches_autograd_through_reference(dtype, shape, deterministic):
    hidden, weight, b, mask = make_inputs(*shape, dtype, seed=11)
    grad_out = torch.randn(shape[0], shape[3], generator=torch.Generator().manual_seed(3)).to(DEVICE)
    _, *want = reference_grads(hidden, weight, b, mask, grad_out)
    _, *got = kernel_grads(hidden, weight, b, mask, grad_out, deterministic)
    for name, g, w in zip(("hidden", "weight", "bias"), got, want):
        assert g.dtype == dtype, name
        assert rel_err(g, w) <= TOLERANCE[dtype], name


def test_backward_without_bias_and_frozen_weight():
    hidden, weight, _, mask = make_inputs(2, 19, 72, 133, torch.float32, seed=5)
    grad_out = torch.randn(2, 133).to(DEVICE)
    _, want_hidden, _, _ = reference_grads(hidden, weight, None, mask, grad_out)
    leaf = hidden.clone().requires_grad_()
    splade_max_pool_triton(leaf, weight, None, mask).backward(grad_out)
    assert weight.grad is None
    assert rel_err(leaf.grad, want_hidden) <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("deterministic", [False, True])
def test_backward_of_the_bias_alone(deterministic):
    """Bias-only fine-tuning (frozen encoder and head) broke the custom op's rule that outputs may not alias: both
    unneeded gradients were one empty tensor."""
    hidden, weight, b, mask = make_inputs(2, 19, 72, 133, torch.float32, seed=6)
    grad_out = torch.randn(2, 133).to(DEVICE)
    _, _, _, want = reference_grads(hidden, weight, b, mask, grad_out)
    leaf = b.clone().requires_grad_()
    splade_max_pool_triton(hidden, weight, leaf, mask, deterministic=deterministic).backward(grad_out)
    assert rel_err(leaf.grad, want) <= TOLERANCE[torch.float32]


def test_an_infinite_pooled_logit_gives_inf_not_nan():
    """log1p's rounding fix computed inf * (inf / inf) = nan where the reference gives inf."""
    hidden, weight, _, mask = make_inputs(1, 3, 16, 3, torch.float32, seed=7)
    bias = torch.tensor([float("inf"), 0.0, float("-inf")], device=DEVICE)
    want = splade_max_pool_reference(hidden.double(), weight.double(), bias.double(), mask)
    got = splade_max_pool_triton(hidden, weight, bias, mask)
    assert got[0, 0] == float("inf") and got[0, 2] == 0
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_all_negative_logits_give_zeros_and_zero_grads():
    hidden, weight, b, mask = make_inputs(2, 19, 72, 133, torch.float32, seed=2)
    hidden, weight, b = hidden.abs(), -weight.abs(), -b.abs()
    out, grad_hidden, grad_weight, grad_bias = kernel_grads(hidden, weight, b, mask, torch.ones(2, 133, device=DEVICE), False)
    assert torch.equal(out, torch.zeros_like(out))
    for grad in (grad_hidden, grad_weight, grad_bias):
        assert torch.equal(grad, torch.zeros_like(grad))


def test_fully_masked_rows_give_zeros_and_no_gradient():
    hidden, weight, b, mask = make_inputs(3, 19, 72, 133, torch.float32, seed=4)
    mask[1] = 0
    out, grad_hidden, _, _ = kernel_grads(hidden, weight, b, mask, torch.ones(3, 133, device=DEVICE), True)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(grad_hidden[1], torch.zeros_like(grad_hidden[1]))
    assert out[0].abs().sum() > 0  # the unmasked rows are not zeroed too


@pytest.mark.parametrize("L", [19, 150])
@pytest.mark.parametrize("deterministic", [False, True])
def test_ties_send_gradient_to_first_position(deterministic, L):
    """Exactly representable values make positions 3, 11 and 17 tie exactly (across sequence tiles at L = 150)."""
    gen = torch.Generator().manual_seed(9)
    B, H, V = 2, 24, 70
    hidden = torch.randint(-4, 5, (B, L, H), generator=gen).float() / 4
    hidden[:, [11, 17]] = hidden[:, 3:4]
    others = [i for i in range(L) if i not in (3, 11, 17)]
    hidden[:, others] = hidden[:, 3:4] / 2  # strictly smaller wherever the tied logit is positive
    weight = torch.randint(-4, 5, (V, H), generator=gen).float() / 4
    mask = torch.ones(B, L, dtype=torch.long)
    hidden, weight, mask = hidden.to(DEVICE), weight.to(DEVICE), mask.to(DEVICE)
    grad_out = torch.ones(B, V, device=DEVICE)
    _, want_hidden, want_weight, _ = reference_grads(hidden, weight, None, mask, grad_out)
    first = kernel_grads(hidden, weight, None, mask, grad_out, deterministic)
    again = kernel_grads(hidden, weight, None, mask, grad_out, deterministic)
    grad_hidden, grad_weight = first[1], first[2]
    assert grad_hidden[:, 3].abs().sum() > 0
    assert torch.equal(grad_hidden[:, [11, 17]], torch.zeros_like(grad_hidden[:, [11, 17]]))
    # The reference splits a tie evenly; the totals agree, only the recipient differs.
    assert rel_err(grad_hidden[:, 3], want_hidden[:, [3, 11, 17]].sum(dim=1)) <= 1e-6
    assert rel_err(grad_weight, want_weight) <= 1e-6
    if deterministic:  # fp32 atomics may add in any order on a GPU
        assert torch.equal(grad_hidden, again[1])


def test_non_contiguous_inputs_match_contiguous():
    hidden, weight, b, mask = make_inputs(3, 19, 72, 133, torch.float32, seed=8)
    hidden_nc = hidden.transpose(0, 1).contiguous().transpose(0, 1)  # [B, L, H] with batch stride H
    weight_nc = weight.t().contiguous().t()  # column-major
    bias_nc = torch.stack([b, b], dim=1)[:, 0]  # stride 2
    mask_nc = mask.t().contiguous().t().bool()
    assert not (hidden_nc.is_contiguous() or weight_nc.is_contiguous() or bias_nc.is_contiguous() or mask_nc.is_contiguous())
    grad_out = torch.randn(3, 133).to(DEVICE)
    want = kernel_grads(hidden, weight, b, mask, grad_out, True)
    got = kernel_grads(hidden_nc, weight_nc, bias_nc, mask_nc, grad_out, True)
    for g, w in zip(got, want):
        assert rel_err(g, w) <= 1e-6


@pytest.fixture
def poisoned_allocations():
    """torch.empty fills floats with NaN and ints with their max: any element a kernel skips shows."""
    import torch.utils.deterministic as det

    previous = (torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True)
    det.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(previous[0])
    det.fill_uninitialized_memory = previous[1]


@pytest.mark.parametrize("deterministic", [False, True])
def test_every_output_element_is_written(poisoned_allocations, deterministic):
    assert torch.empty(4).isnan().all()  # the poison is on
    B, L, H, V = 3, 19, 72, 333
    hidden, weight, b, mask = make_inputs(B, L, H, V, torch.float32, seed=12)
    out, pooled, arg = torch.ops.lsr.splade_max_pool(hidden, weight, b, mask, True, deterministic)
    assert not out.isnan().any() and not pooled.isnan().any()
    assert ((arg >= 0) & (arg < L)).all()
    grad_out = torch.randn(B, V).to(DEVICE)
    _, *want = reference_grads(hidden, weight, b, mask, grad_out)
    _, *got = kernel_grads(hidden, weight, b, mask, grad_out, deterministic)
    for g, w in zip(got, want):
        assert not g.isnan().any()
        assert rel_err(g, w) <= TOLERANCE[torch.float32]


def test_deterministic_mode_equals_fast_mode_and_repeats_bitwise():
    hidden, weight, b, mask = make_inputs(3, 19, 72, 333, torch.float32, seed=13)
    grad_out = torch.randn(3, 333).to(DEVICE)
    fast = kernel_grads(hidden, weight, b, mask, grad_out, False)
    exact = kernel_grads(hidden, weight, b, mask, grad_out, True)
    exact_again = kernel_grads(hidden, weight, b, mask, grad_out, True)
    for f, e, e2 in zip(fast, exact, exact_again):
        torch.testing.assert_close(f, e, rtol=1e-5, atol=1e-6)  # fast mode's atomics may sum in any order
        assert torch.equal(e, e2)


def test_custom_op_passes_opcheck():
    """Schema, fake (meta) impl, autograd registration and AOT dispatch of ``lsr::splade_max_pool``."""
    hidden, weight, b, mask = make_inputs(2, 17, 40, 70, torch.float32, seed=14)
    args = (hidden.requires_grad_(), weight.requires_grad_(), b.requires_grad_(), mask, True, True)
    torch.library.opcheck(torch.ops.lsr.splade_max_pool.default, args)


def test_composes_with_torch_compile():
    hidden, weight, b, mask = make_inputs(2, 19, 72, 133, torch.float32, seed=15)
    grad_out = torch.randn(2, 133).to(DEVICE)

    def loss(h, w, bias):
        return (splade_max_pool_triton(h, w, bias, mask) * grad_out).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, b)]
    compiled(*leaves).backward()
    _, *want = reference_grads(hidden, weight, b, mask, grad_out)
    for g, w in zip((t.grad for t in leaves), want):
        assert rel_err(g, w) <= TOLERANCE[torch.float32]


def test_bad_inputs_are_rejected_with_a_clear_message():
    hidden, weight, b, mask = make_inputs(2, 5, 8, 70, torch.float32, seed=16)
    with pytest.raises(TypeError, match="share one dtype"):
        splade_max_pool_triton(hidden, weight.half(), b, mask)
    with pytest.raises(ValueError, match=r"weight must be \[vocab, 8\]"):
        splade_max_pool_triton(hidden, weight[:, :4], b, mask)
    with pytest.raises(ValueError, match="attention_mask must be"):
        splade_max_pool_triton(hidden, weight, b, mask[:, :3])
    with pytest.raises(ValueError, match="bias must be"):
        splade_max_pool_triton(hidden, weight, b[:5], mask)
    with pytest.raises(ValueError, match="hidden size of at least 1"):  # the packed kernel left its output unwritten
        splade_max_pool_triton(hidden[:, :, :0], weight[:, :0], b, mask)
    with pytest.raises(TypeError, match="float32/bfloat16/float16"):
        splade_max_pool_triton(hidden.double(), weight.double(), b, mask)


def test_cpu_tensors_without_interpreter_are_rejected():
    script = (
        "import torch\n"
        "from lsr.kernels.pool_triton import splade_max_pool_triton\n"
        "try:\n"
        "    splade_max_pool_triton(torch.ones(1, 2, 16), torch.ones(3, 16), None, torch.ones(1, 2))\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert "impl='chunked'" in result.stdout, result.stderr


def test_precompile_is_a_no_op_where_nothing_compiles():
    from lsr.kernels.pool_triton import precompile

    _, weight, bias, _ = make_inputs(2, 16, 16, 70, torch.float32, seed=5)
    expected = 0 if DEVICE == "cpu" else 1
    assert precompile([(2, 16)], weight, bias) == expected  # the interpreter compiles nothing
    assert precompile([], weight, bias) == 0


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU: the interpreter compiles nothing")
def test_precompiled_kernels_are_the_ones_later_launches_use(monkeypatch):
    """precompile() compiles side by side; the launches that follow find every kernel and compile none."""
    import triton

    from lsr.kernels.pool_triton import precompile

    compiles = []
    monkeypatch.setattr(triton.knobs.runtime, "jit_cache_hook", lambda **kw: compiles.append(kw["repr"]))
    shapes = [(8, 32), (3, 16), (5, 48), (4, 200)]  # packed whole tiles, a ragged tail, tiled
    _, weight, bias, _ = make_inputs(2, 16, 80, 1000, torch.bfloat16, seed=6)  # H = 80: no other test's kernels
    assert precompile(shapes, weight, bias) == len(shapes)
    assert compiles, "nothing was compiled"
    compiles.clear()
    for B, L in shapes:
        hidden = torch.randn(B, L, 80, device=DEVICE, dtype=torch.bfloat16)
        mask = torch.ones(B, L, dtype=torch.int64, device=DEVICE)
        out = splade_max_pool_triton(hidden, weight, bias, mask)
        assert rel_err(out, splade_max_pool_reference(hidden.double(), weight.double(), bias.double(), mask)) < 1e-2
    assert compiles == []


# GPU families and their opt-in shared memory (KiB): the configurations a launch gets differ between them.
FAMILIES = [("sm75", 64), ("sm80", 163), ("sm86", 99), ("sm90", 227), ("sm100", 227), ("sm120", 99)]


def _variants(shapes, family: str, shared_kib: int, dtype: torch.dtype, H: int) -> dict:
    """The compiled kernels these (batch, length) inference launches would need on that GPU family, each with
    the first shape that needs it."""
    from dataclasses import replace

    from lsr.kernels import launch
    from lsr.kernels.pool_triton import _plan

    weight, bias = torch.empty((30522, H), dtype=dtype, device="meta"), torch.empty(30522, dtype=dtype, device="meta")
    found = {}
    for B, L in shapes:
        hidden = torch.empty((B, L, H), dtype=dtype, device="meta")
        mask = torch.empty((B, L), dtype=torch.int64, device="meta")
        out = torch.empty((B, 30522), dtype=dtype, device="meta")
        key, _, variant = _plan(hidden, weight, bias, mask, out, out.new_empty(0), out.new_empty(0, dtype=torch.int32), False)
        key = replace(key, gpu=family)
        found.setdefault(variant(launch.launch_table().get(key.text()) or launch.heuristic(key, shared_kib * 1024)), (B, L))
    return found


@pytest.mark.parametrize("max_length", [48, 128, 200, 256, 512])
def test_warm_up_compiles_every_kernel_an_encode_pass_launches(max_length, monkeypatch):
    """A fresh process must not compile during its first pass (an H200 run compiled ~1.8 s there): every
    batch an encoder of up to max_length tokens launches (any row count, lengths padded to 16) needs a
    kernel that the warm-up shapes already compiled, on every GPU family, dtype and hidden size."""
    from lsr.kernels import pool_triton

    monkeypatch.setattr(pool_triton, "INTERPRET", True)  # launch keys without asking a GPU; families are set below
    shapes = pool_triton.warm_up_shapes(max_length)
    assert all(16 <= L <= -(-max_length // 16) * 16 and L % 16 == 0 for _, L in shapes), shapes
    launched = [(B, L) for L in range(16, -(-max_length // 16) * 16 + 1, 16)
                for B in [*range(1, 18), 24, 32, 63, 64, 127, 128, 256, 2047, 2048]]
    for family, shared_kib in FAMILIES:
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            for H in (128, 768):
                warm = _variants(shapes, family, shared_kib, dtype, H)
                needed = _variants(launched, family, shared_kib, dtype, H)
                missed = [shape for variant, shape in needed.items() if variant not in warm]
                assert not missed, f"{family} {dtype} H={H}: (batch, length) {missed} compile in the first pass"
                assert len(warm) > len({L for _, L in shapes}) // 2  # not one kernel for all: variants are told apart


def test_compile_variant_tells_apart_what_triton_compiles_apart(monkeypatch):
    """Batches of one bucket share a kernel unless a constexpr differs: whole packed tiles or a ragged tail."""
    from lsr.kernels import pool_triton

    monkeypatch.setattr(pool_triton, "INTERPRET", True)
    one = lambda B, L: set(_variants([(B, L)], "sm90", 227, torch.bfloat16, 128))  # noqa: E731
    assert one(8, 32) == one(2048, 32)  # whole tiles of 8 sequences (do_not_specialize B: no new kernel)
    assert one(3, 32) == one(2047, 32) != one(8, 32)  # a ragged last tile
    assert one(4, 48) != one(4, 64)  # shorter than the bucket: columns are masked (4 whole sequences fill a tile at 64)
    assert one(3, 176) == one(2048, 256)  # the tiled kernel has no such variants
