"""The CUDA kernels against the CPU backend (NF4 bit for bit). Skipped without a GPU."""

import pytest
import torch
from hypothesis import given, strategies as st

import loraops

from strategies import BLOCKSIZES, DTYPES, float_tensors

if not torch.cuda.is_available() or "cuda" not in loraops.build_info()["backends"]:
    pytest.skip("needs a CUDA GPU and a CUDA build of loraops", allow_module_level=True)


def same_bits(a, b):
    a, b = a.cpu(), b.cpu()
    if a.dtype == torch.float32:
        a, b = a.view(torch.int32), b.view(torch.int32)
    elif a.dtype in (torch.bfloat16, torch.float16):
        a, b = a.view(torch.int16), b.view(torch.int16)
    return a.shape == b.shape and torch.equal(a, b)


@st.composite
def cases(draw):
    n = draw(st.one_of(st.integers(0, 300), st.integers(300, 50000)))
    weight = draw(float_tensors((n,), draw(st.sampled_from(DTYPES))))
    return weight, draw(st.sampled_from(BLOCKSIZES)), draw(st.booleans()), draw(st.sampled_from(DTYPES))


@given(cases())
def test_nf4_quantize_and_dequantize_match_the_cpu_backend(case):
    weight, blocksize, double_quant, out_dtype = case
    cpu = torch.ops.loraops.nf4_quantize(weight, blocksize, double_quant)
    gpu = torch.ops.loraops.nf4_quantize(weight.cuda(), blocksize, double_quant)
    for name, a, b in zip(("packed", "absmax", "nested_absmax", "offset"), gpu, cpu):
        assert same_bits(a, b), name
    qw = loraops.nf4.quantize(weight, blocksize=blocksize, double_quant=double_quant)
    expected = loraops.nf4.dequantize(qw, dtype=out_dtype)
    assert same_bits(loraops.nf4.dequantize(qw.to("cuda"), dtype=out_dtype), expected)


def test_dequantize_into_a_buffer():
    qw = loraops.nf4.quantize(torch.randn(256, 512), blocksize=64).to("cuda")
    out = torch.empty(256, 512, dtype=torch.bfloat16, device="cuda")
    loraops.nf4.dequantize(qw, out=out)
    assert same_bits(out, loraops.nf4.dequantize(qw.to("cpu"), dtype=torch.bfloat16))
