"""NF4 kernels against the pure-PyTorch reference, on every CPU instruction set."""

import math

import pytest
import torch
from hypothesis import given

import loraops
from loraops.nf4_reference import (
    NF4_CODE,
    dequantize_reference,
    dynamic_code,
    nf4_code_from_normal_quantiles,
    quantize_reference,
)

from strategies import BLOCKSIZES, DTYPES, nf4_cases


def assert_matches_reference(w, blocksize, double_quant):
    qw = loraops.nf4.quantize(w, blocksize=blocksize, double_quant=double_quant)
    ref = quantize_reference(w, blocksize, double_quant)
    assert qw.shape == w.shape and qw.dtype == w.dtype
    assert torch.equal(qw.packed, ref["packed"]), "packed codes differ"
    assert qw.absmax.dtype == ref["absmax"].dtype
    assert torch.equal(qw.absmax, ref["absmax"]), "absmax differs"
    if double_quant:
        assert torch.equal(qw.offset, ref["offset"]), "offset differs"
        assert torch.equal(qw.nested_absmax, ref["nested_absmax"]), "nested absmax differs"
    for out_dtype in DTYPES:
        got = qw.dequantize(out_dtype)
        want = dequantize_reference(
            ref["packed"], ref["absmax"], w.shape, out_dtype, blocksize,
            ref.get("nested_absmax"), ref.get("nested_code"), ref.get("offset"),
        )
        assert got.dtype == out_dtype and got.shape == w.shape
        assert torch.equal(got, want), f"dequantized {out_dtype} differs"
    return qw


@given(case=nf4_cases())
def test_kernels_equal_reference(cpu_isa, case):
    assert_matches_reference(*case)


@pytest.mark.parametrize("blocksize", BLOCKSIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_blocksize_with_partial_blocks(cpu_isa, blocksize, dtype):
    # 3 full blocks, then a partial one of odd length: exercises vector bodies and tails
    n = 3 * blocksize + blocksize // 2 + 1
    assert_matches_reference(torch.randn(n).to(dtype), blocksize, True)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 31, 33, 64, 65, 127])
def test_tiny_and_empty(cpu_isa, n):
    qw = assert_matches_reference(torch.randn(n), 64, True)
    assert qw.packed.numel() == (n + 1) // 2


def test_odd_length_pads_with_code_of_zero(cpu_isa):
    qw = loraops.nf4.quantize(torch.tensor([1.0, -1.0, 0.5]), blocksize=64)
    assert qw.packed.tolist() == [0xF0, (NF4_CODE - 0.5).abs().argmin().item() << 4 | 7]


def exact_midpoint_block():
    """1.0 (the absmax) then the 15 fp32 midpoints of the code, four times: a
    block of 64 whose scaled values land exactly on the midpoints."""
    midpoints = (NF4_CODE[:-1] + NF4_CODE[1:]) / 2
    return torch.cat([torch.ones(1), midpoints]).float().repeat(4)


def test_exact_midpoints_take_the_lower_code(cpu_isa):
    qw = assert_matches_reference(exact_midpoint_block(), 64, False)
    codes = torch.stack([qw.packed >> 4, qw.packed & 15], 1).flatten()
    assert codes[:16].tolist() == [15] + list(range(15))


def test_all_zero_and_mixed_zero_blocks(cpu_isa):
    w = torch.zeros(4 * 64)
    w[64:128] = torch.randn(64)
    qw = assert_matches_reference(w, 64, True)
    deq = qw.dequantize()
    assert torch.equal(deq[:64], torch.zeros(64)) and torch.equal(deq[128:], torch.zeros(128))
    assert_matches_reference(torch.zeros(1000), 64, True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_magnitudes(cpu_isa, dtype):
    info = torch.finfo(dtype)
    huge = torch.randn(640, dtype=torch.float64).clamp(-3, 3) * (info.max / 4)
    assert_matches_reference(huge.to(dtype), 64, True)
    # subnormal inputs (smallest magnitudes the dtype can hold)
    tiny = torch.randint(-3, 4, (640,)).to(dtype) * torch.tensor(info.tiny / 8, dtype=dtype)
    assert_matches_reference(tiny, 64, True)
    assert_matches_reference(tiny, 64, False)


def test_noncontiguous_input(cpu_isa):
    w = torch.randn(96, 130).t()
    assert not w.is_contiguous()
    qw = assert_matches_reference(w, 64, True)
    assert torch.equal(qw.dequantize(), loraops.nf4.quantize(w.contiguous()).dequantize())


@pytest.mark.parametrize("out_dtype", DTYPES)
def test_dequantized_values_against_float64(out_dtype):
    """The kernel returns code * absmax rounded to the output dtype: within half an
    ulp of the fp32 product, so within 1 ulp (rel 2^-23 fp32, 2^-10 fp16, 2^-7 bf16)
    of the exact float64 product."""
    w = torch.randn(128, 96) * 3
    qw = loraops.nf4.quantize(w, blocksize=64)
    exact = dequantize_reference(
        qw.packed, qw.absmax, w.shape, torch.float64, 64, qw.nested_absmax, qw.nested_code,
        qw.offset, compute_dtype=torch.float64,
    )
    got = qw.dequantize(out_dtype).to(torch.float64)
    rel = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[out_dtype]
    torch.testing.assert_close(got, exact, rtol=rel, atol=0)


def test_quantization_error_is_bounded():
    # every value lands on the nearest code: error <= half the widest code gap * absmax
    w = torch.randn(256, 256)
    qw = loraops.nf4.quantize(w, blocksize=64, double_quant=False)
    err = (qw.dequantize() - w).abs().reshape(-1, 64)
    half_gap = (NF4_CODE[1:] - NF4_CODE[:-1]).max() / 2
    assert torch.all(err <= half_gap * qw.absmax.unsqueeze(1) * (1 + 1e-6))


@pytest.mark.parametrize("out_dtype", DTYPES)
def test_dequantize_out(cpu_isa, out_dtype):
    w = torch.randn(70, 33)
    qw = loraops.nf4.quantize(w, blocksize=32)
    out = torch.full((70, 33), float("nan"), dtype=out_dtype)
    result = loraops.nf4.dequantize(qw, out=out)
    assert result.data_ptr() == out.data_ptr()
    assert torch.equal(out, qw.dequantize(out_dtype))


def test_nf4_code_is_the_normal_quantile_construction():
    assert torch.equal(nf4_code_from_normal_quantiles(), NF4_CODE)


def test_dynamic_code_is_sorted_and_signed():
    code = dynamic_code()
    assert code.shape == (256,) and torch.all(code[1:] > code[:-1])
    assert code[-1] == 1.0 and (code == 0).sum() == 1 and code.min() > -1


def test_kernel_dynamic_code_matches_python_construction():
    qw = loraops.nf4.quantize(torch.randn(64 * 300), blocksize=64)
    assert torch.equal(qw.nested_code, dynamic_code())


def test_nbytes_is_about_4_127_bits_per_weight():
    qw = loraops.nf4.quantize(torch.randn(4096, 4096, dtype=torch.bfloat16), blocksize=64)
    bits = 8 * (qw.packed.numel() + qw.absmax.numel() + 4 * qw.nested_absmax.numel() + 4) / qw.numel()
    assert math.isclose(bits, 4 + 8 / 64 + 32 / (64 * 256), rel_tol=1e-4)
    assert qw.nbytes >= qw.packed.numel() + qw.absmax.numel() + 4 * qw.nested_absmax.numel()
    # spelled as on a tensor: nbytes a property, numel() a method
    assert math.isclose(qw.nbytes * 8 / qw.numel(), bits, rel_tol=1e-3)


def test_to_device_roundtrip():
    qw = loraops.nf4.quantize(torch.randn(64, 64))
    assert qw.to("cpu") is qw
    moved = qw.to(torch.device("cpu"))
    assert torch.equal(moved.dequantize(), qw.dequantize())
    assert "NF4Weight(shape=(64, 64)" in repr(qw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_isas_agree_on_large_tensor(dtype):
    w = (torch.randn(1000, 515) * 0.02).to(dtype)
    results = {}
    for isa in [i for i in loraops.build_info()["cpu_isa_compiled"]]:
        try:
            loraops.set_cpu_isa(isa)
        except ValueError:
            continue
        qw = loraops.nf4.quantize(w, blocksize=64)
        results[isa] = (qw.packed, qw.absmax, qw.dequantize(torch.bfloat16))
    loraops.set_cpu_isa(loraops.build_info()["cpu_isa_best"])
    first = next(iter(results.values()))
    for isa, got in results.items():
        assert all(torch.equal(a, b) for a, b in zip(got, first)), isa


def test_large_outputs_reuse_cached_buffers():
    loraops.empty_cpu_buffer_cache()
    w = torch.randn(1024, 2048)  # 8 MiB fp32 output: above the caching threshold
    qw = loraops.nf4.quantize(w)
    first = qw.dequantize()
    expected = first.clone()
    ptr = first.data_ptr()
    first.fill_(float("nan"))  # stale contents must be overwritten on reuse
    del first
    assert loraops.cpu_buffer_cache_bytes() >= 8 << 20
    second = qw.dequantize()
    assert second.data_ptr() == ptr
    assert torch.equal(second, expected)
    assert loraops.cpu_buffer_cache_bytes() == 0
    del second
    assert loraops.empty_cpu_buffer_cache() >= 8 << 20
    assert loraops.cpu_buffer_cache_bytes() == 0


def test_buffer_cache_can_be_turned_off():
    import os
    import subprocess
    import sys

    code = (
        "import torch, loraops\n"
        "qw = loraops.nf4.quantize(torch.randn(1024, 2048))\n"
        "out = qw.dequantize(); del out\n"
        "print(loraops.cpu_buffer_cache_bytes())\n"
    )
    env = {**os.environ, "LORAOPS_CPU_BUFFER_CACHE_MB": "0"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "0"
