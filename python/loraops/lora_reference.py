"""Pure-PyTorch reference of the LoRA matmul-plus-add and its dropout mask.

    out = x W^T + bias + scale * (dropout(x) A^T) B^T

The dropout mask is the kernels' counter-based one, reproduced here bit for bit,
so kernel and reference can be compared exactly with dropout on.
"""

from __future__ import annotations

from typing import Optional

import torch

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # Wellons' lowbias32 on uint32 values held in int64
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def dropout_threshold(p: float) -> int:
    t = p * 4294967296.0
    return _MASK32 if t >= 4294967295.0 else int(t + 0.5)


def dropout_keep_mask(rows: int, cols: int, p: float, seed: int) -> torch.Tensor:
    """Bool [rows, cols]: which elements of x (flattened to [rows, in]) dropout keeps.
    Element i is kept when mix32(low32(i) ^ key(seed, high32(i))) >= round(p * 2^32)."""
    index = torch.arange(rows * cols, dtype=torch.int64)
    seed &= (1 << 64) - 1
    high_key = _mix32((index >> 32) ^ (seed >> 32)) ^ (seed & _MASK32)
    bits = _mix32((index & _MASK32) ^ high_key)
    return (bits >= dropout_threshold(p)).reshape(rows, cols)


def lora_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: float,
    bias: Optional[torch.Tensor] = None,
    dropout: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The LoRA output computed in ``dtype`` (float64 by default), differentiable
    in every tensor argument."""
    k = weight.shape[1]
    x2 = x.reshape(-1, k).to(dtype)
    dropped = x2
    if dropout > 0:
        keep = dropout_keep_mask(x2.shape[0], k, dropout, seed).to(x2.device)
        dropped = x2 * keep / (1.0 - dropout)
    out = x2 @ weight.to(dtype).t() + scale * (dropped @ lora_A.to(dtype).t()) @ lora_B.to(dtype).t()
    if bias is not None:
        out = out + bias.to(dtype)
    return out.reshape(*x.shape[:-1], weight.shape[0])
