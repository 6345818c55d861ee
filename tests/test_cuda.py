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


# ----------------------------------------------------------------------------- LoRA
from loraops.lora_reference import dropout_keep_mask  # noqa: E402


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize("nf4", [False, True])
def test_lora_linear_matches_the_cpu_op(dtype, tol, dropout, nf4):
    torch.manual_seed(0)
    x = torch.randn(3, 17, 96, dtype=dtype)
    w = (torch.randn(80, 96) / 10).to(dtype)
    a, b = torch.randn(8, 96) / 10, torch.randn(80, 8) / 10
    bias = torch.randn(80, dtype=dtype)
    weight = loraops.nf4.quantize(w, blocksize=64) if nf4 else w

    def run(device):
        leaves = [t.to(device).requires_grad_() for t in (x, a, b, bias)]
        wt = weight.to(device)
        out = loraops.lora_linear(leaves[0], wt, leaves[1], leaves[2], 1.5, bias=leaves[3], dropout=dropout, seed=7)
        out.backward(torch.ones_like(out))
        return [out] + [t.grad for t in leaves]

    for got, want in zip(run("cuda"), run("cpu")):
        got = got.cpu().float()
        want = want.float()
        assert (got - want).abs().max().item() <= tol * max(1.0, want.abs().max().item())


def test_dropout_mask_is_the_cpu_mask():
    x = torch.ones(33, 70, device="cuda")
    zero_w = torch.zeros(5, 70, device="cuda")
    a = torch.eye(70, device="cuda")[:70]
    b = torch.zeros(5, 70, device="cuda")
    _, xa = torch.ops.loraops.lora_linear(x, zero_w, None, a, b, 1.0, 0.3, 1234)
    keep = dropout_keep_mask(33, 70, 0.3, 1234)
    assert torch.equal(xa.cpu() != 0, keep)
