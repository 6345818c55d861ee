"""LoRA problems drawn by Hypothesis and the float64 reference with error
bounds, shared by the tests of every backend."""

import math

import torch
from hypothesis import strategies as st

from loraops.lora_reference import lora_linear_reference

from strategies import DTYPES

# Accumulation is fp32 on CPU; results are rounded to their dtype once at the end:
# relative error half an ulp, and below the normal range half the subnormal spacing.
# The CPU's bf16 base GEMMs (loraops.set_cpu_bf16) round more: see base_gemm_roundings.
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
SUBNORMAL_ROUNDOFF = {torch.float32: 2.0**-150, torch.bfloat16: 2.0**-134, torch.float16: 2.0**-25}


@st.composite
def lora_problems(draw, max_rows=40, max_features=72):
    lead = draw(st.sampled_from([(), (1,), (3,), (2, 3), (0,), (1, 1)]))
    if not lead:
        lead = (draw(st.integers(1, max_rows)),)
    return dict(
        lead=lead,
        k=draw(st.integers(1, max_features)),
        n=draw(st.integers(1, max_features)),
        r=draw(st.sampled_from([1, 2, 3, 8, 16, 64])),
        dtype=draw(st.sampled_from(DTYPES)),
        adapter_dtype=draw(st.sampled_from([torch.float32, "same"])),
        bias=draw(st.booleans()),
        dropout=draw(st.sampled_from([0.0, 0.0, 0.1, 0.5])),
        scale=draw(st.sampled_from([1.0, 2.0, 0.125, 16 / math.sqrt(8)])),
        seed=draw(st.integers(-(2**62), 2**62)),
        nf4_blocksize=draw(st.sampled_from([None, None, 32, 64, 256])),
    )


def make_inputs(p, gen):
    dtype = p["dtype"]
    adapter_dtype = dtype if p["adapter_dtype"] == "same" else p["adapter_dtype"]
    x = torch.randn(*p["lead"], p["k"], generator=gen).to(dtype)
    weight = (torch.randn(p["n"], p["k"], generator=gen) / math.sqrt(p["k"])).to(dtype)
    a = (torch.randn(p["r"], p["k"], generator=gen) / math.sqrt(p["k"])).to(adapter_dtype)
    b = torch.randn(p["n"], p["r"], generator=gen).to(adapter_dtype)
    bias = torch.randn(p["n"], generator=gen).to(dtype) if p["bias"] else None
    return x, weight, a, b, bias


def reference_with_bounds(x, weight_dense, a, b, bias, p, grad):
    """float64 reference output and gradients, plus the same computed on absolute
    values: for sums of products that bounds every rounding error's magnitude."""
    def run(transform, g):
        leaves = [None if t is None else transform(t).detach().double().requires_grad_() for t in
                  (x, weight_dense, a, b, bias)]
        out = lora_linear_reference(leaves[0], leaves[1], leaves[2], leaves[3], p["scale"], leaves[4],
                                    p["dropout"], p["seed"])
        (out * g).sum().backward()
        return out.detach(), [None if t is None else t.grad for t in leaves]

    ref = run(lambda t: t, grad.double())
    bound = run(torch.abs, grad.double().abs())
    return ref, bound


def base_gemm_roundings(p, bf16_gemms):
    """Intermediate roundings to bf16 in the output and dx when the CPU runs the
    base GEMMs in bf16: the low-rank term (and bias) is rounded to bf16 as the
    GEMM's starting value, and an NF4 weight is dequantized to bf16. None without
    the bf16 GEMMs or for other dtypes; dW is one GEMM rounded once either way."""
    if not bf16_gemms or p["dtype"] != torch.bfloat16:
        return 0
    return 2 if p["nf4_blocksize"] is not None else 1


def assert_close_to_reference(got, want, bound, dtype, k_terms, what, intermediate_roundings=0):
    """fp32 sums of k_terms products, rounded once into dtype; each intermediate
    rounding into dtype (a GEMM in the input dtype, say) adds one unit roundoff
    of the bound."""
    tol = (4 * k_terms * 2.0**-24 * bound + UNIT_ROUNDOFF[dtype] * (want.abs() + intermediate_roundings * bound)
           + SUBNORMAL_ROUNDOFF[dtype])
    err = (got.double() - want).abs()
    assert torch.all(err <= tol), f"{what}: max error {err.max():.3e}, worst ratio {(err / tol).max():.2f}"
