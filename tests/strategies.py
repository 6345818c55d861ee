"""Hypothesis strategies shared by the tests."""

import math

import torch
from hypothesis import strategies as st

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]


@st.composite
def shapes(draw, max_numel=6000, max_dims=3):
    """Shapes of 0..max_dims dims, including empty and one-element tensors and
    odd sizes that leave partial blocks and a half-filled last byte."""
    ndim = draw(st.integers(0, max_dims))
    dims = []
    budget = max_numel
    for _ in range(ndim):
        d = draw(st.integers(0, max(1, min(budget, 300))))
        dims.append(d)
        budget = max(1, budget // max(d, 1))
    return tuple(dims)


@st.composite
def float_tensors(draw, shape, dtype):
    """Random values with per-tensor magnitudes from tiny to huge (finite in
    `dtype`), some all-zero blocks and exact ties."""
    n = math.prod(shape)
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["normal", "uniform", "zeros", "sparse", "ties"]))
    if kind == "normal":
        x = torch.randn(n, generator=gen, dtype=torch.float64)
    elif kind == "uniform":
        x = torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1
    elif kind == "zeros":
        x = torch.zeros(n, dtype=torch.float64)
    elif kind == "sparse":  # long runs of zeros give all-zero blocks
        x = torch.randn(n, generator=gen, dtype=torch.float64)
        x[torch.rand(n, generator=gen) < 0.9] = 0
    else:  # values on a coarse grid: equal-magnitude maxima, repeated values (midpoints: test_nf4.py)
        x = torch.randint(-8, 9, (n,), generator=gen).to(torch.float64) / 8
    finfo = torch.finfo(dtype)
    log_lo, log_hi = math.log10(finfo.tiny) + 2, math.log10(finfo.max) - 1
    scale = 10 ** draw(st.floats(log_lo, log_hi))
    return (x * scale).to(dtype).reshape(shape)


@st.composite
def nf4_cases(draw, shape_strategy=None):
    """(weight, blocksize, double_quant): one quantization problem."""
    shape = draw(shape_strategy if shape_strategy is not None else shapes())
    dtype = draw(st.sampled_from(DTYPES))
    blocksize = draw(st.sampled_from(BLOCKSIZES))
    double_quant = draw(st.booleans())
    return draw(float_tensors(shape, dtype)), blocksize, double_quant
