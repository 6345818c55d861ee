"""Pure-PyTorch reference of NF4 quantization with double quantization.

This is the definition the kernels are tested against. The format is defined by
fp32 arithmetic (bitsandbytes computes scales and midpoints in fp32), so the
reference computes in fp32 where the format does, and in float64 only where a
value is judged rather than produced.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

# The 16 NF4 values, sorted (index = 4-bit code), exactly as bitsandbytes stores them.
NF4_CODE = torch.tensor(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=torch.float32,
)

# QLoRA's quantile range: the outermost quantile is 0.9677083 = 1/2 (1/32 + 1/30)
# (the mean of the tail probabilities for 15 and 16 bins, as the paper describes).
_NF4_OFFSET = 0.9677083


def nf4_code_from_normal_quantiles(offset: float = _NF4_OFFSET) -> torch.Tensor:
    """Rebuild the NF4 code from quantiles of N(0, 1), as the QLoRA paper does:
    8 positive quantiles and 7 negative ones over [1 - offset, offset] so that 0 is
    exactly representable, normalized to [-1, 1]. The probabilities and the
    normalization are fp32, as in the code that produced the published table.
    Needs scipy."""
    from scipy.stats import norm

    positive = norm.ppf(torch.linspace(offset, 0.5, 9, dtype=torch.float32)[:-1].numpy())
    negative = -norm.ppf(torch.linspace(offset, 0.5, 8, dtype=torch.float32)[:-1].numpy())
    values = torch.tensor([*positive, 0.0, *negative], dtype=torch.float32).sort().values
    return values / values.max()


@functools.lru_cache(maxsize=None)
def _dynamic_code_cpu() -> torch.Tensor:
    # bitsandbytes' signed dynamic map (7 exponent bits): for exponent i, the
    # means of 2^i + 1 linearly spaced points in [0.1, 1] scaled by 10^(i-6),
    # with both signs; then 0 and 1; sorted.
    parts = []
    for i in range(7):
        boundaries = torch.linspace(0.1, 1.0, 2**i + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        scale = 10.0 ** (i - 6)
        parts += [means * scale, means * -scale]
    parts.append(torch.tensor([0.0, 1.0]))
    return torch.sort(torch.cat(parts)).values


@functools.lru_cache(maxsize=None)
def _dynamic_code_on(device: torch.device) -> torch.Tensor:
    return _dynamic_code_cpu().to(device)


def dynamic_code(device=None) -> torch.Tensor:
    """bitsandbytes' signed dynamic 8-bit code (256 fp32 values) on ``device``, a
    new tensor (copied on the device from one made there once, not from the host
    each time)."""
    device = torch.empty(0, device=device or "cpu").device  # "cuda" -> "cuda:<current>"
    return _dynamic_code_on(device).clone()


def _quantize_blocks(flat: torch.Tensor, code: torch.Tensor, blocksize: int):
    """Blockwise absmax scaling and nearest-code search (midpoints, ties to the
    lower code), in fp32. Returns (indices int64 [n], absmax fp32 [blocks])."""
    n = flat.numel()
    blocks = -(-n // blocksize)
    padded = torch.zeros(blocks * blocksize, dtype=torch.float32)
    padded[:n] = flat
    padded = padded.view(blocks, blocksize)
    absmax = padded.abs().amax(dim=1)
    scaled = torch.clamp(padded * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1), -1, 1)
    bounds = (code[:-1] + code[1:]) / 2
    idx = torch.bucketize(scaled.reshape(-1), bounds, right=False)
    return idx[:n], absmax


def quantize_reference(w: torch.Tensor, blocksize: int = 64, double_quant: bool = True) -> dict:
    """Reference NF4 quantization. Returns a dict with ``packed``, ``absmax`` and,
    with double quantization, ``nested_absmax``, ``offset`` (fp32 0-dim) and ``nested_code``."""
    flat = w.detach().reshape(-1).to("cpu", torch.float32)
    n = flat.numel()
    idx, absmax = _quantize_blocks(flat, NF4_CODE, blocksize)
    if n % blocksize:  # bitsandbytes keeps a partial last block's scale >= 1e-38
        absmax[-1] = absmax[-1].clamp(min=1e-38)
    if n % 2:  # the odd tail is padded with the code of 0.0, as bitsandbytes does
        idx = torch.cat([idx, torch.tensor([7])])
    idx = idx.to(torch.uint8)
    packed = (idx[0::2] << 4) | idx[1::2]
    out = {"packed": packed, "absmax": absmax}
    if double_quant:
        codes, nested_absmax, offset = double_quantize_reference(absmax)
        out.update(absmax=codes, nested_absmax=nested_absmax, offset=offset, nested_code=dynamic_code())
    return out


def double_quantize_reference(absmax: torch.Tensor, offset: Optional[torch.Tensor] = None):
    """Double quantization of fp32 block scales: ``(codes uint8, nested_absmax,
    offset)``, the scales less ``offset`` quantized to the dynamic 8-bit code in
    blocks of 256. ``offset`` defaults to their fp32 mean on the CPU (float64 where
    that overflows); a device backend passes the mean its own device computed,
    which may differ in the last bits."""
    absmax = absmax.to("cpu", torch.float32)
    if offset is None:
        offset = absmax.mean() if absmax.numel() else torch.zeros((), dtype=torch.float32)
        if not torch.isfinite(offset):  # the fp32 mean overflows near the fp32 maximum
            offset = absmax.double().mean().float()
    offset = offset.to("cpu", torch.float32)
    codes, nested_absmax = _quantize_blocks(absmax - offset, dynamic_code(), 256)
    return codes.to(torch.uint8), nested_absmax, offset


def dequantize_reference(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape,
    dtype: torch.dtype,
    blocksize: int = 64,
    nested_absmax: Optional[torch.Tensor] = None,
    nested_code: Optional[torch.Tensor] = None,
    offset: Optional[torch.Tensor] = None,
    nested_blocksize: int = 256,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Reference NF4 dequantization: ``code[q] * absmax`` per element, computed in
    ``compute_dtype`` (fp32 gives the format's exact values; float64 gives the
    value to judge rounding against), then cast to ``dtype``."""
    n = 1
    for d in shape:
        n *= d
    packed = packed.reshape(-1).cpu()
    idx = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1)[:n].long()
    if nested_absmax is not None:
        blocks = absmax.numel()
        scale = nested_absmax.cpu()[torch.arange(blocks) // nested_blocksize]
        absmax = (nested_code.cpu()[absmax.cpu().long()] * scale + offset.cpu()).to(torch.float32)
    per_element = absmax.cpu()[torch.arange(n) // blocksize].to(compute_dtype)
    values = NF4_CODE.to(compute_dtype)[idx] * per_element
    return values.to(dtype).reshape(shape)
