"""The one pooling entry point, ``splade_max_pool``, and its dispatch between implementations."""

from __future__ import annotations

import functools
import os

import torch

from .pool_torch import check_pool_inputs, splade_max_pool_chunked, splade_max_pool_reference

IMPLS = ("auto", "triton", "chunked", "torch")


def resolve_impl(impl: str, device: torch.device) -> str:
    """``LSR_POOL_IMPL`` overrides the argument; "auto" means Triton on CUDA GPUs from sm80 on, chunked elsewhere.

    Below sm80 (T4, V100) Triton's dot runs on CUDA cores, so cuBLAS's tensor cores in the chunked
    path win there. "chunked" serves CPU inference through the screened exact path
    (kernels/pool_screen.py) whenever no gradient is needed, and the plain vocabulary-chunked loop otherwise.
    """
    impl = os.environ.get("LSR_POOL_IMPL") or impl or "auto"  # an empty LSR_POOL_IMPL is unset, not "auto"
    if impl not in IMPLS:
        raise ValueError(f"unknown pooling impl {impl!r}; choose one of {', '.join(IMPLS)} (argument or LSR_POOL_IMPL)")
    if impl == "auto":
        return "triton" if device.type == "cuda" and fused_kernel_has_tensor_cores(device) else "chunked"
    return impl


def check_impl(impl: str, device: torch.device) -> None:
    """Refuse, when an encoder is made, an ``impl`` its first encode would fail on: an unknown name, or Triton on a
    CPU outside Triton's interpreter (``TRITON_INTERPRET=1``, which the tests run it under)."""
    if resolve_impl(impl, device) == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("impl 'triton' runs on a CUDA GPU (or under TRITON_INTERPRET=1); on CPU use 'auto' or "
                         "'chunked'")


def fused_kernel_has_tensor_cores(device: torch.device) -> bool:
    """Whether the Triton kernel's 16-bit dot uses tensor cores on this GPU (compute capability 8.0 or newer)."""
    from .launch import gpu_family, tensor_core_dot

    index = device.index if device.index is not None else torch.cuda.current_device()
    return tensor_core_dot(gpu_family(_capability(index)), "bf16")


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def splade_max_pool(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    attention_mask: torch.Tensor,
    impl: str = "auto",
    deterministic: bool = False,
) -> torch.Tensor:
    """``log1p(relu(max over unmasked positions of hidden @ weight.T + bias))`` as [B, V]; differentiable.

    hidden [B, L, H], weight [V, H], bias [V] or None, attention_mask [B, L] (non-zero = keep).
    ``deterministic`` asks the Triton backward for bitwise-reproducible gradients (no atomics);
    the PyTorch paths ignore it.
    """
    check_pool_inputs(hidden, weight, bias, attention_mask)
    chosen = resolve_impl(impl, hidden.device)
    if chosen == "torch":
        return splade_max_pool_reference(hidden, weight, bias, attention_mask)
    if chosen == "chunked":
        from .pool_screen import screen_applies, splade_max_pool_screened

        # CPU in fp32 (inference and training): an int8 (or bf16, with AMX) screen with a proven margin, then exact
        # fp32 on the ~2% of entries that can be non-zero. Same output and gradients as the chunked path, several
        # times faster.
        if screen_applies(hidden, weight, bias):
            return splade_max_pool_screened(hidden, weight, bias, attention_mask)
        return splade_max_pool_chunked(hidden, weight, bias, attention_mask)
    from .pool_triton import splade_max_pool_triton

    return splade_max_pool_triton(hidden, weight, bias, attention_mask, deterministic=deterministic)
