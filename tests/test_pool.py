"""``splade_max_pool`` dispatch and the PyTorch paths: chunked against the naive reference."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when pool_triton is first imported

from lsr.kernels import splade_max_pool  # noqa: E402
from lsr.kernels import pool  # noqa: E402
from lsr.kernels.pool import resolve_impl  # noqa: E402
from lsr.kernels.pool_torch import (  # noqa: E402
    splade_max_pool_chunked,
    splade_max_pool_reference,
    splade_sum_pool_chunked,
)


def make_inputs(B=3, L=13, H=24, V=203, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, H, generator=gen, dtype=torch.float64)
    weight = torch.randn(V, H, generator=gen, dtype=torch.float64) / H**0.5
    bias = torch.randn(V, generator=gen, dtype=torch.float64) * 0.5
    mask = (torch.arange(L)[None, :] < torch.tensor([L, 5, 0])[:B, None]).long()
    return hidden, weight, bias, mask


def grads_of(fn, hidden, weight, bias, mask, grad_out):
    leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
    out = fn(*leaves, mask)
    out.backward(grad_out)
    return out.detach(), *(t.grad for t in leaves)


@pytest.mark.parametrize("capability, fused", [((9, 0), "triton"), ((8, 0), "triton"), ((12, 0), "triton"),
                                               ((7, 5), "chunked"), ((7, 0), "chunked")])
def test_auto_picks_triton_on_gpus_with_tensor_core_dots_and_chunked_elsewhere(monkeypatch, capability, fused):
    """The GPU's capability is the one thing faked here: this machine has none."""
    monkeypatch.delenv("LSR_POOL_IMPL", raising=False)
    monkeypatch.setattr(pool, "_capability", lambda index: capability)
    assert resolve_impl("auto", torch.device("cuda:0")) == fused
    assert resolve_impl("auto", torch.device("cpu")) == "chunked"
    assert resolve_impl("torch", torch.device("cuda:0")) == "torch"
    assert resolve_impl("triton", torch.device("cuda:0")) == "triton"  # asked for by name: still honoured


def test_environment_overrides_the_argument(monkeypatch):
    monkeypatch.setenv("LSR_POOL_IMPL", "torch")
    assert resolve_impl("triton", torch.device("cuda")) == "torch"
    monkeypatch.setenv("LSR_POOL_IMPL", "fused")
    with pytest.raises(ValueError, match="LSR_POOL_IMPL"):
        splade_max_pool(*make_inputs(), impl="auto")
    monkeypatch.setenv("LSR_POOL_IMPL", "")  # set but empty is unset: it overrode impl="torch" with auto
    assert resolve_impl("torch", torch.device("cpu")) == "torch"


@pytest.mark.parametrize("impl", ["torch", "chunked"])
def test_shapes_every_impl_refuses_and_an_empty_sequence(impl):
    """A [1, L] mask for two documents was broadcast, a 2-D hidden gave [B, V] of wrong rows, mixed dtypes failed
    inside a matmul, and L = 0 raised amax's IndexError (the screened and Triton paths gave zeros)."""
    hidden, weight, bias, mask = (t.float() if t.is_floating_point() else t for t in make_inputs(B=2))
    for args, error, message in (
        ((hidden, weight, bias, mask[:1]), ValueError, r"attention_mask must be \[batch, seq\]=\(2, 13\)"),
        ((hidden[0], weight, bias, mask), ValueError, "hidden must be"),
        ((hidden[:, :, :0], weight[:, :0], bias, mask), ValueError, "hidden size of at least 1"),
        ((hidden, weight.double(), bias, mask), TypeError, "share one dtype"),
    ):
        with pytest.raises(error, match=message):
            splade_max_pool(*args, impl=impl)
    for dtype in (torch.float32, torch.float64):  # fp64: the plain chunked loop, not the screen
        leaf = weight.detach().to(dtype).clone().requires_grad_()
        out = splade_max_pool(hidden[:, :0].to(dtype), leaf, bias.to(dtype), mask[:, :0], impl=impl)
        assert out.shape == (2, weight.shape[0]) and not out.any()
        out.sum().backward()
        assert not leaf.grad.any()


def test_the_reference_keeps_weight_gradients_finite_past_a_non_finite_padding_position():
    """impl="torch" masked after log1p: an inf at a padded position, times its zero gradient, made every weight
    gradient nan."""
    hidden, weight, bias, mask = make_inputs(B=2)
    hidden[0, 12] = float("inf")
    mask[0, 12] = 0
    got = grads_of(splade_max_pool_reference, hidden, weight, bias, mask, torch.ones(2, 203, dtype=torch.float64))
    want = grads_of(splade_max_pool_chunked, hidden, weight, bias, mask, torch.ones(2, 203, dtype=torch.float64))
    assert all(bool(torch.isfinite(g).all()) for g in got)
    for g, w in zip(got, want):
        torch.testing.assert_close(g[:1] if g.dim() == 3 else g, w[:1] if w.dim() == 3 else w)


@pytest.mark.parametrize("vocab_chunk", [1, 64, 203, 4096])
def test_chunked_matches_reference_forward_and_backward(vocab_chunk):
    hidden, weight, bias, mask = make_inputs()
    grad_out = torch.randn(3, 203, dtype=torch.float64)
    want = grads_of(splade_max_pool_reference, hidden, weight, bias, mask, grad_out)
    chunked = lambda h, w, b, m: splade_max_pool_chunked(h, w, b, m, vocab_chunk=vocab_chunk)  # noqa: E731
    got = grads_of(chunked, hidden, weight, bias, mask, grad_out)
    assert torch.equal(got[0][2], torch.zeros(203, dtype=torch.float64))  # fully masked row
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_chunked_bias_after_the_max_keeps_the_references_infinities():
    """The chunked path adds the bias after its max; an infinite bias still gives inf on rows with a kept position
    and 0 on a row with none, as the reference's activation-then-mask does."""
    hidden, weight, bias, mask = make_inputs()
    bias[5], bias[7] = float("inf"), float("-inf")
    got = splade_max_pool_chunked(hidden, weight, bias, mask, vocab_chunk=64)
    want = splade_max_pool_reference(hidden, weight, bias, mask)
    assert torch.isinf(got[:2, 5]).all() and torch.equal(got[2], torch.zeros(203, dtype=torch.float64))
    assert not got.isnan().any()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_sum_pool_chunked_matches_naive_sum():
    hidden, weight, bias, mask = make_inputs()
    naive = (torch.log1p(torch.relu(hidden @ weight.t() + bias)) * mask[..., None]).sum(dim=1)
    torch.testing.assert_close(splade_sum_pool_chunked(hidden, weight, bias, mask, vocab_chunk=50), naive)
    # an inf at a masked position made its row nan (times 0), and a mask of 2 doubled a position: any non-zero keeps
    hidden[0, 12], mask[0, 12], mask[1, 0] = float("inf"), 0, 2
    keep = (mask != 0)[..., None]
    want = (torch.log1p(torch.relu(hidden.where(keep, 0.0) @ weight.t() + bias)) * keep).sum(dim=1)
    torch.testing.assert_close(splade_sum_pool_chunked(hidden, weight, bias, mask, vocab_chunk=50), want)
    with pytest.raises(ValueError, match="attention_mask must be"):  # broadcast where the max pool refused it
        splade_sum_pool_chunked(hidden, weight, bias, mask[:1])
    assert splade_sum_pool_chunked(hidden, weight[:0], bias[:0], mask).shape == (3, 0)


@pytest.mark.parametrize("impl", ["torch", "chunked"])
def test_a_tied_max_sends_its_gradient_to_the_first_position_and_no_vocabulary_gives_no_columns(impl):
    """impl="torch" (amax) split a tie's gradient between its positions, where the chunked, screened and Triton
    paths send it to the first; an empty vocabulary failed the chunked path's torch.cat."""
    hidden = torch.tensor([[[1.0, 2.0], [1.0, 2.0]]], dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    splade_max_pool(hidden, weight, None, torch.ones(1, 2), impl=impl).sum().backward()
    assert hidden.grad[0, 1].abs().sum() == 0 and hidden.grad[0, 0].abs().sum() > 0
    assert splade_max_pool(hidden.detach(), weight[:0], None, torch.ones(1, 2), impl=impl).shape == (1, 0)  # fp64: no screen


@pytest.mark.parametrize("impl", ["torch", "chunked", "triton"])
def test_every_impl_agrees_through_the_entry_point(impl, monkeypatch):
    monkeypatch.delenv("LSR_POOL_IMPL", raising=False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hidden, weight, bias, mask = make_inputs(seed=1)
    grad_out = torch.randn(3, 203, dtype=torch.float64)
    want = grads_of(splade_max_pool_reference, hidden, weight, bias, mask, grad_out)
    hidden, weight, bias, mask, grad_out = (
        t.to(device, torch.float32) if t.is_floating_point() else t.to(device) for t in (hidden, weight, bias, mask, grad_out)
    )
    entry = lambda h, w, b, m: splade_max_pool(h, w, b, m, impl=impl, deterministic=True)  # noqa: E731
    got = grads_of(entry, hidden, weight, bias, mask, grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double().cpu(), w, rtol=1e-5, atol=1e-6)
