"""Shifted short attention (LongLoRA's S2-Attn), forward and backward.

``s2_attention(q, k, v, group_size)`` attends causally within groups of
``group_size`` tokens; half the heads use groups shifted by half a group, so
information flows between groups across layers. See ``s2attn_reference`` for
the exact definition of both modes.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch

from . import _autocast, _native  # noqa: F401  (_native registers the ops)
from ._checks import as_bool, as_float, as_int, check_devices, require_tensor
from .s2attn_reference import s2_attention_reference

__all__ = ["s2_attention"]

_MODES = ("segments", "roll")

# Device types with a loraops kernel for the op (read once the library is loaded;
# a set lookup, so torch.compile traces it), and meta, which the fake kernel
# serves. Elsewhere s2_attention falls back to the PyTorch reference: SDPA per
# group, differentiable, slower.
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "npu": "PrivateUse1"}
_DEVICES_WITH_KERNEL = {"meta"} | {
    device for device, key in _DISPATCH_KEYS.items()
    if torch._C._dispatch_has_kernel_for_dispatch_key("loraops::s2_attention", key)
}
# The backward has its own kernels (CPU, and the NPU's Ascend kernel where the
# build has it): a device with the forward's but not the backward's gets the
# reference's gradients, recomputed.
_DEVICES_WITH_BACKWARD = {"meta"} | {
    device for device, key in _DISPATCH_KEYS.items()
    if torch._C._dispatch_has_kernel_for_dispatch_key("loraops::s2_attention_backward", key)
}
_warned_fallback: set = set()


@torch.library.register_fake("loraops::s2_attention")
def _s2_attention_fake(q, k, v, group_size, mode, causal, seqlens, scale):
    # as the C++ op: seqlens may be on the host; a meta operand among real ones lands here
    check_devices("s2_attention", "q", q, dict(k=k, v=v, seqlens=seqlens), host_ok=("seqlens",))
    bsz, n, heads, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((bsz, heads, n), dtype=torch.float32)


@torch.library.register_fake("loraops::s2_attention_backward")
def _s2_attention_backward_fake(grad_out, q, k, v, out, lse, group_size, mode, causal, seqlens, scale):
    check_devices("s2_attention_backward", "q", q, dict(grad_out=grad_out, k=k, v=v, out=out, lse=lse,
                                                        seqlens=seqlens), host_ok=("seqlens",))
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, group_size, mode, causal, seqlens, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, seqlens)
    ctx.mark_non_differentiable(lse)
    ctx.args = (group_size, mode, causal, scale)


def _reference_gradients(grad_out, q, k, v, group_size, mode, causal, seqlens, scale):
    """dq, dk, dv of s2attn_reference by autograd (SDPA per group), for a device without a backward kernel."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = s2_attention_reference(*leaves, group_size, mode=mode, causal=causal, seqlens=seqlens, scale=scale)
        return torch.autograd.grad(out, leaves, grad_out)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, seqlens = ctx.saved_tensors
    group_size, mode, causal, scale = ctx.args
    if q.device.type in _DEVICES_WITH_BACKWARD:
        dq, dk, dv = torch.ops.loraops.s2_attention_backward(grad_out, q, k, v, out, lse, group_size, mode, causal,
                                                             seqlens, scale)
    else:
        dq, dk, dv = _reference_gradients(grad_out, q, k, v, group_size, mode, causal, seqlens, scale)
    return dq, dk, dv, None, None, None, None, None


torch.library.register_autograd("loraops::s2_attention", _backward, setup_context=_setup)


def s2_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group_size: int, *, mode: str = "segments",
                 causal: bool = True, seqlens: Optional[torch.Tensor] = None,
                 scale: Optional[float] = None) -> torch.Tensor:
    """Shifted short attention over q ``[B, N, H, D]``, k and v ``[B, N, Hkv, D]``.

    Heads ``[0, H/2)`` attend within groups ``[0, G), [G, 2G), ...``; heads
    ``[H/2, H)`` within groups shifted by ``s = G // 2``:

    - ``mode="segments"`` (LongLoRA's flash path): ``[0, s), [s, s+G), ...``, no
      wrap-around, so no token sees the future;
    - ``mode="roll"`` (LongLoRA's eager path): roll by ``-s`` with wrap-around,
      group, roll back, for parity with models trained that way.

    ``causal`` applies within groups. ``seqlens`` ``[B]`` gives right-padded
    lengths: a sample is computed as if it were its first ``seqlens[b]`` tokens
    alone and its padded positions output zeros. ``G >= N`` is plain attention.
    Any strides work (a transpose of ``[B, H, N, D]`` needs no copy); the output
    is a new contiguous ``[B, N, H, D]`` tensor. ``scale`` defaults to ``D**-0.5``.
    Inside ``torch.autocast``, float32 q, k, v are cast to the autocast dtype
    first, as for ``F.scaled_dot_product_attention``. On a device loraops has no
    kernel for (CUDA, for now) it runs ``s2attn_reference`` (SDPA per group), with
    a warning the first time. On an Ascend NPU the forward and the backward are
    loraops' kernels.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        require_tensor(t, "s2_attention", name)
    if seqlens is not None:
        require_tensor(seqlens, "s2_attention", "seqlens")
    # before the reference fallback, which has no checks of its own
    check_devices("s2_attention", "q", q, dict(k=k, v=v, seqlens=seqlens), host_ok=("seqlens",))
    if mode not in _MODES:
        raise ValueError(f"s2_attention: mode must be one of {_MODES}, got {mode!r}")
    group_size = as_int(group_size, "s2_attention", "group_size", 1)
    causal = as_bool(causal, "s2_attention", "causal")
    if scale is not None:
        scale = as_float(scale, "s2_attention", "scale", finite32=True)
    if q.device.type not in _DEVICES_WITH_KERNEL:
        if q.device.type not in _warned_fallback and not torch.compiler.is_compiling():
            _warned_fallback.add(q.device.type)
            warnings.warn(f"loraops has no {q.device.type} kernel for s2_attention yet; using the PyTorch "
                          "reference (SDPA per group), which computes the same but slower", stacklevel=2)
        return s2_attention_reference(q, k, v, group_size, mode=mode, causal=causal, seqlens=seqlens, scale=scale)
    amp_dtype = _autocast.autocast_dtype(q.device.type)
    if amp_dtype is not None:
        q, k, v = (_autocast.cast(t, amp_dtype) for t in (q, k, v))
        with torch.autocast(q.device.type, enabled=False):
            return s2_attention(q, k, v, group_size, mode=mode, causal=causal, seqlens=seqlens, scale=scale)
    out, _ = torch.ops.loraops.s2_attention(q, k, v, group_size, mode, causal, seqlens, scale)
    return out
