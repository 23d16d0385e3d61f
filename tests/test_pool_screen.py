"""The screened CPU pooling (int8 and bf16 screens): its margin is a real bound, and its output equals the fp32
reference. Each test runs every screen this CPU's GEMMs are sound for (bf16 runs emulated where there is no bf16
hardware: slow, still exact)."""

import math

import pytest
import torch

from lsr.kernels import splade_max_pool
from lsr.kernels.pool_screen import (
    MAX_INT8_HIDDEN,
    ScreenedHead,
    _bf16_max,
    best_precision,
    bf16_matmul_is_sound,
    int8_matmul_is_exact,
    forget_screened_heads,
    screen_applies,
    screened_head,
    splade_max_pool_screened,
)
from lsr.kernels.pool_torch import splade_max_pool_chunked, splade_max_pool_reference

PRECISIONS = [pytest.param("int8", marks=pytest.mark.skipif(not int8_matmul_is_exact(), reason="this CPU's int8 GEMM "
                                                               "saturates; the int8 screen refuses to run here")),
              pytest.param("bf16", marks=pytest.mark.skipif(not bf16_matmul_is_sound(), reason="this CPU's bf16 GEMM "
                                                               "errs beyond the bf16 screen's margin"))]


def random_inputs(B, L, H, V, seed, lengths=None):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, H, generator=gen) * 4
    weight = torch.randn(V, H, generator=gen) / H**0.5
    bias = torch.randn(V, generator=gen) * 2 - 6
    lengths = torch.randint(0, L + 1, (B,), generator=gen) if lengths is None else torch.tensor(lengths)
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long()
    return hidden, weight, bias, mask


def assert_equal_to_reference(hidden, weight, bias, mask, precision):
    got = splade_max_pool_screened(hidden, weight, bias, mask, precision)
    want = splade_max_pool_reference(hidden, weight, bias, mask)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(got > 0, want > 0), "non-zero sets differ"
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    return got


def full_screen_logits(head: ScreenedHead, h: torch.Tensor):
    """Every per-token screened logit ``s r_v q_t.p_v + b_v`` (float64, exact) and the margin."""
    q, scale, coefficients = head.quantize(h[None])
    dots = (q[0].double() @ head.quantized.double().t()) * (head.row_scale * scale[0])
    return dots + head.bias.double(), (coefficients @ head.margin_rows)[0]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(
    "B,L,H,V,seed",
    [(4, 17, 32, 300, 0), (3, 40, 128, 1000, 1), (5, 9, 20, 77, 2), (2, 300, 64, 5000, 3)],
)
def test_random_shapes_and_ragged_masks(B, L, H, V, seed, precision):
    hidden, weight, bias, mask = random_inputs(B, L, H, V, seed)
    assert_equal_to_reference(hidden, weight, bias, mask, precision)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_non_prefix_masks_and_all_masked_rows(precision):
    hidden, weight, bias, _ = random_inputs(4, 20, 32, 400, seed=4)
    gen = torch.Generator().manual_seed(5)
    mask = (torch.rand(4, 20, generator=gen) < 0.5).long()
    mask[1] = 0
    mask[3] = 1
    got = assert_equal_to_reference(hidden, weight, bias, mask, precision)
    assert not got[1].any()
    assert got[0].any() and got[3].any()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_all_negative_logits_and_no_bias(precision):
    hidden, weight, bias, mask = random_inputs(3, 16, 32, 500, seed=6, lengths=[16, 3, 1])
    assert not assert_equal_to_reference(hidden, weight, bias - 100, mask, precision).any()
    assert assert_equal_to_reference(hidden, weight, None, mask, precision).any()


def test_the_bf16_max_read_through_int16_bits_equals_amax():
    """Columns all negative (where the int16 order is reversed), mixed signs, zeros of both signs and infinities."""
    gen = torch.Generator().manual_seed(12)
    y = (torch.randn(6, 40, 9, generator=gen) * 3 - 2).bfloat16()
    y[:, :, 0] = -y[:, :, 0].abs() - 1  # every value negative
    y[:, :, 1] = -0.0
    y[:, ::2, 2] = 0.0
    y[:, 1::2, 2] = -5.0
    y[:, 3, 3], y[:, 5, 4], y[:, :, 5] = float("inf"), float("-inf"), float("-inf")
    y[:, :, 6] = torch.finfo(torch.bfloat16).min
    y[:, 7, 6] = -torch.finfo(torch.bfloat16).tiny
    for dim in range(3):
        assert torch.equal(_bf16_max(y, dim), y.amax(dim)), dim


@pytest.mark.parametrize("precision", PRECISIONS)
def test_zero_hidden_and_single_token(precision):
    hidden, weight, bias, mask = random_inputs(2, 5, 16, 200, seed=7, lengths=[5, 1])
    hidden[0] = 0
    got = assert_equal_to_reference(hidden, weight, bias, mask, precision)
    assert torch.equal(got[0], torch.log1p(torch.relu(bias)))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_adversarial_logits_near_zero(precision):
    """Bias puts every max logit within 1e-5..1e-4 of zero, either side: the screen must keep them all."""
    hidden, weight, bias, mask = random_inputs(3, 24, 64, 2000, seed=8, lengths=[24, 10, 2])
    gen = torch.Generator().manual_seed(9)
    logits = hidden @ weight.t()
    row = 0
    best = logits[row, : int(mask[row].sum())].amax(dim=0)
    offsets = (torch.rand(2000, generator=gen) * 9e-5 + 1e-5) * torch.where(torch.rand(2000, generator=gen) < 0.5, -1, 1)
    bias = -best + offsets
    got = assert_equal_to_reference(hidden, weight, bias, mask, precision)
    # The constructed row really is adversarial: about half its entries sit just above zero.
    assert 700 < int((got[row] > 0).sum()) < 1300
    assert float(got[row].max()) < 2e-4


@pytest.mark.parametrize("precision", PRECISIONS)
def test_margin_bounds_every_token_logit_on_random_and_real_data(splade, scifact, precision):
    gen = torch.Generator().manual_seed(10)
    weight = torch.randn(3000, 96, generator=gen) / 10
    bias = torch.randn(3000, generator=gen)
    cases = [(ScreenedHead.prepare(weight, bias, precision), torch.randn(50, 96, generator=gen) * 7)]
    real_head = ScreenedHead.prepare(splade.weight, splade.bias, precision)
    cases += [(real_head, h) for h in real_hidden_states(splade, scifact, 3)]
    for head, h in cases:
        screened, margin = full_screen_logits(head, h)
        fp32 = (h @ head.weight.t() + head.bias).double()
        exact = h.double() @ head.weight.double().t() + head.bias.double()
        for value in (fp32, exact):
            assert bool(((value - screened).abs() <= margin).all()), "margin does not bound the screen error"
        # The bound is not vacuous: the worst observed error reaches a fair share of it.
        assert float(((fp32 - screened).abs() / margin).max()) > 0.05
        candidates = head.upper_bounds(h[None])[0] > 0
        assert candidates[fp32.amax(dim=0) > 0].all(), "an entry with positive max logit was screened out"


def real_hidden_states(splade, scifact, count):
    """Hidden states that feed splade-tiny's LM head, for the first ``count`` SciFact documents."""
    texts = scifact.doc_texts(list(scifact.corpus)[:count])
    enc = splade.tokenizer(texts, truncation=True, max_length=256, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = splade.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    return [hidden[i][enc["attention_mask"][i].bool()].clone() for i in range(count)]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_real_splade_tiny_head_on_scifact(splade, scifact, precision):
    texts = scifact.doc_texts(list(scifact.corpus)[:12])
    enc = splade.tokenizer(texts, truncation=True, max_length=256, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = splade.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        got = assert_equal_to_reference(hidden, splade.weight, splade.bias, enc["attention_mask"], precision)
    nnz = (got > 0).sum(dim=1)
    assert (nnz > 50).all() and (nnz < 2000).all()
    head = screened_head(splade.weight, splade.bias, precision)
    kept = sum(int((head.upper_bounds(h[None]) > 0).sum()) for h in real_hidden_states(splade, scifact, 4)) / 4
    assert kept < 0.1 * splade.vocab_size, f"screen kept {kept:.0f} of {splade.vocab_size}: no speed-up left"


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("B,L,H,V,seed", [(4, 17, 32, 300, 4), (3, 40, 128, 1000, 5), (2, 9, 20, 77, 6)])
def test_training_steps_through_the_screen_equal_the_chunked_paths(B, L, H, V, seed, precision):
    """Training pools through the screen: at each of three SGD steps (each updating the head in place, so the screen
    must re-prepare it) the outputs and gradients match the chunked path's on the same weights, with holes in the masks.
    Both paths step from the chunked gradients, so float32 rounding cannot compound across steps."""
    hidden, weight, bias, mask = random_inputs(B, L, H, V, seed)
    gen = torch.Generator().manual_seed(seed)
    mask = mask * (torch.rand(B, L, generator=gen) > 0.3)
    grad_out = torch.randn(B, V, generator=gen)
    params = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    fired = False
    for _ in range(3):
        runs = {}
        for name, pool in (("screened", lambda *a: splade_max_pool_screened(*a, precision)),
                           ("chunked", splade_max_pool_chunked)):
            out = pool(*params, mask)
            runs[name] = (out.detach(), *torch.autograd.grad(out, params, grad_out))
        for got, want in zip(runs["screened"], runs["chunked"]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        fired |= bool((runs["chunked"][0] > 0).any())
        with torch.no_grad():
            for p, g in zip(params, runs["chunked"][1:]):
                p.sub_(0.5 * g)
    assert fired


@pytest.mark.parametrize("precision", PRECISIONS)
def test_inplace_weight_update_is_seen(precision):
    hidden, weight, bias, mask = random_inputs(2, 8, 16, 100, seed=11)
    assert_equal_to_reference(hidden, weight, bias, mask, precision)
    weight.mul_(3)
    assert_equal_to_reference(hidden, weight, bias, mask, precision)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_writes_through_data_are_seen(precision):
    """``.data`` writes (re-initialisation, weight tying, copying another model in) do not bump the version counters
    the cache was keyed on: the stale screen's output was off by 1.5."""
    hidden, weight, bias, mask = random_inputs(2, 8, 16, 100, seed=12)
    assert_equal_to_reference(hidden, weight, bias, mask, precision)
    weight.data.mul_(-3)
    assert_equal_to_reference(hidden, weight, bias, mask, precision)
    bias.data.copy_(torch.randn(100))
    assert_equal_to_reference(hidden, weight, bias, mask, precision)
    weight.data[5] += 10  # one row: the sample may miss it, and forgetting the prepared heads is the way
    forget_screened_heads()
    assert_equal_to_reference(hidden, weight, bias, mask, precision)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_logits_that_underflow_into_denormals_are_kept(precision):
    """Higham's bound assumes no underflow: this logit is exactly -0.8 of the smallest denormal, but each positive
    product rounds up to one denormal in fp32, so the reference gives 2.2e-44 and the int8 screen had dropped it."""
    hidden = (torch.tensor([1.0, -1.0, -1.0] * 16) * 2.0**-70).reshape(1, 1, 48)
    weight = (torch.tensor([0.55, 0.3, 0.3] * 16) * 2.0**-79).reshape(1, 48)
    mask = torch.ones(1, 1, dtype=torch.long)
    want = splade_max_pool_reference(hidden, weight, None, mask)
    got = splade_max_pool_screened(hidden, weight, None, mask, precision=precision)
    assert torch.equal(got, want) and (want > 0).all()


@pytest.mark.parametrize("precision", PRECISIONS)
def test_inference_tensors_are_served_without_caching(precision):
    with torch.inference_mode():
        hidden, weight, bias, mask = random_inputs(2, 8, 16, 100, seed=14)
        assert_equal_to_reference(hidden, weight, bias, mask, precision)
        weight.mul_(-1)
        assert_equal_to_reference(hidden, weight, bias, mask, precision)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_non_finite_hidden_propagates_like_the_reference(precision):
    hidden, weight, bias, mask = random_inputs(2, 6, 16, 50, seed=12, lengths=[6, 6])
    hidden[0, 2, 3] = float("nan")
    got = splade_max_pool_screened(hidden, weight, bias, mask, precision)
    want = splade_max_pool_reference(hidden, weight, bias, mask)
    assert torch.equal(got.isnan(), want.isnan()) and got[0].isnan().any()
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-5)
    bias[7] = float("inf")
    got = splade_max_pool_screened(hidden, weight, bias, mask, precision)
    want = splade_max_pool_reference(hidden, weight, bias, mask)
    assert torch.isinf(got[1, 7]) and torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-5)


def test_each_cpu_screens_with_its_fastest_sound_gemm(monkeypatch):
    """AMX CPUs multiply bf16 several times faster than int8 (an EPYC's VNNI the other way round); LSR_SCREEN
    picks one by hand, where its GEMM is sound."""
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    fastest = "bf16" if amx and bf16_matmul_is_sound() else "int8" if int8_matmul_is_exact() else None
    assert best_precision() == fastest
    for precision, sound in (("int8", int8_matmul_is_exact()), ("bf16", bf16_matmul_is_sound())):
        monkeypatch.setenv("LSR_SCREEN", precision)
        assert best_precision() == (precision if sound else None)
    monkeypatch.setenv("LSR_SCREEN", "fp4")
    with pytest.raises(ValueError, match="LSR_SCREEN='fp4' is not a screen; use int8 or bf16"):
        best_precision()
    monkeypatch.delenv("LSR_SCREEN")
    hidden, weight, bias, mask = random_inputs(2, 6, 16, 50, seed=15)
    with pytest.raises(ValueError, match="unknown screen precision 'fp8'"):
        splade_max_pool_screened(hidden, weight, bias, mask, "fp8")
    with pytest.raises(ValueError, match="unknown screen precision"):
        ScreenedHead.prepare(weight, bias, "int4")


@pytest.mark.skipif(best_precision() is None, reason="no sound screen GEMM on this CPU")
def test_refuses_inputs_it_cannot_serve_exactly():
    hidden, weight, bias, mask = random_inputs(2, 6, 16, 50, seed=13)
    with pytest.raises(ValueError, match="needs float32 CPU tensors"):
        splade_max_pool_screened(hidden.double(), weight.detach().double(), bias.double(), mask)
    with pytest.raises(ValueError, match="attention_mask"):
        splade_max_pool_screened(hidden[0], weight.detach(), bias, mask)


def test_a_hidden_size_whose_int8_sums_overflow_int32_is_pooled_without_the_int8_screen(monkeypatch):
    """At H = 140,000 the int8 screen's sums wrapped negative and "proved" every entry zero: [[0, 0]] for
    [[11.85, 11.85]]. Past 133,144 the dispatch takes the chunked path and the int8 screen refuses."""
    monkeypatch.setenv("LSR_SCREEN", "int8")
    if best_precision() is None:
        pytest.skip("no exact int8 GEMM on this CPU")
    for H, applies in ((MAX_INT8_HIDDEN, True), (MAX_INT8_HIDDEN + 1, False)):
        assert screen_applies(torch.ones(1, 1, H), torch.ones(2, H), None) is applies
    hidden, weight, mask = torch.ones(1, 1, 140_000), torch.ones(2, 140_000), torch.ones(1, 1)
    got = splade_max_pool(hidden, weight, None, mask)
    torch.testing.assert_close(got, torch.full((1, 2), math.log1p(140_000.0)))
    with pytest.raises(ValueError, match="a hidden size of at most 133,144"):
        splade_max_pool_screened(hidden, weight, None, mask, precision="int8")
