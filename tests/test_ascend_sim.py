"""The Ascend C kernels (NF4 quantize and dequantize), compiled with g++ against
kernels/ascend/sim, against the CPU backend (bit for bit), and the emulation's
fault checks.

Needs a build with LORAOPS_ASCEND_SIM=ON (``make test`` makes one); elsewhere
these tests skip, unless LORAOPS_REQUIRE_ASCEND_SIM=1 makes that an error."""

import os

import pytest
import torch
from hypothesis import given, strategies as st

import loraops
from loraops.nf4_reference import NF4_CODE

from strategies import DTYPES, float_tensors

if "ascend_sim" not in loraops.build_info()["backends"]:
    if os.environ.get("LORAOPS_REQUIRE_ASCEND_SIM") == "1":
        raise RuntimeError("this loraops build has no Ascend emulation: build with -C cmake.define.LORAOPS_ASCEND_SIM=ON")
    pytest.skip("loraops was built without LORAOPS_ASCEND_SIM", allow_module_level=True)

# Powers of two the Ascend tiling accepts: UB tiles of 4096 elements hold whole blocks.
BLOCKSIZES = [32, 64, 128, 256, 512, 1024, 2048, 4096]


def sim_dequantize(qw, dtype, cores):
    return torch.ops.loraops._ascend_sim_nf4_dequantize(
        qw.packed, qw.absmax, qw.nested_absmax, qw.nested_code, qw.offset, qw.blocksize, qw.nested_blocksize,
        list(qw.shape), dtype, cores)


def assert_bit_equal(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[expected.dtype]
    assert torch.equal(actual.view(bits), expected.view(bits))


@st.composite
def dequantize_cases(draw):
    # Lengths that are not multiples of 32 bytes, of a block or of a 4096-element
    # tile; more blocks than cores and more cores than blocks.
    n = draw(st.one_of(st.integers(0, 300), st.integers(300, 20000)))
    shape = draw(st.sampled_from([(n,), (1, n)] + ([(n // 7, 7)] if n % 7 == 0 and n else [])))
    dtype_in = draw(st.sampled_from(DTYPES))
    weight = draw(float_tensors(shape, dtype_in))
    return (weight, draw(st.sampled_from(BLOCKSIZES)), draw(st.booleans()), draw(st.sampled_from(DTYPES)),
            draw(st.sampled_from([1, 2, 3, 8, 48])))


@given(dequantize_cases())
def test_dequantize_matches_the_cpu_backend_bit_for_bit(case):
    weight, blocksize, double_quant, out_dtype, cores = case
    qw = loraops.nf4.quantize(weight, blocksize=blocksize, double_quant=double_quant)
    assert_bit_equal(sim_dequantize(qw, out_dtype, cores), loraops.nf4.dequantize(qw, dtype=out_dtype))


@pytest.mark.parametrize("double_quant", [True, False])
def test_dequantize_a_layer_over_many_cores(double_quant):
    # 2 tiles per core and a nested group (256 blocks) split across cores.
    qw = loraops.nf4.quantize(torch.randn(256, 1000), blocksize=64, double_quant=double_quant)
    for cores in (1, 20, 40):
        assert_bit_equal(sim_dequantize(qw, torch.bfloat16, cores), loraops.nf4.dequantize(qw, dtype=torch.bfloat16))


def test_dequantize_checks_its_arguments():
    qw = loraops.nf4.quantize(torch.randn(8, 64))
    with pytest.raises(ValueError, match="packed must hold"):
        torch.ops.loraops._ascend_sim_nf4_dequantize(qw.packed[:-1], qw.absmax, qw.nested_absmax, qw.nested_code,
                                                      qw.offset, 64, 256, [8, 64], torch.float32, 4)
    with pytest.raises(ValueError, match="cores"):
        sim_dequantize(qw, torch.float32, 0)


# ----------------------------------------------------------------------------- the emulation's fault checks
@pytest.mark.parametrize("fault, message", [
    ("misaligned_copy", r"DataCopy GM->UB: 252 bytes is not a multiple of 32; the hardware would move only 224"),
    ("ub_overflow", r"Unified Buffer overflow: .* > 196608 bytes per core"),
    ("missing_free", r"still allocated or enqueued when the kernel returned: a FreeTensor is missing"),
    ("deque_before_enque", r"DeQue with nothing enqueued"),
    ("depth_exceeded", r"EnQue beyond the queue depth 1"),
    ("gm_out_of_bounds", r"outside every buffer passed to the kernel"),
    ("misaligned_operand", r"Muls: UB address offset \d+ is not 32-byte aligned"),
    ("gather_offset", r"Gather: byte offset 22 of element 5 is not a multiple of 4"),
    ("free_while_queued", r"FreeTensor of a tensor still in the queue"),
    ("select_scratch", r"Select: modes 1 and 2 use the top 8192 bytes of UB"),
    ("partial_compare", r"Compares: 56 elements are not whole 256-byte repeats"),
    ("gather_count", r"Gather: 16384 elements are 256 full repeats of 64; the repeat count is 8 bits"),
])
def test_the_emulation_names_each_fault(fault, message):
    with pytest.raises(RuntimeError, match=message) as info:
        torch.ops.loraops._ascend_sim_selftest(fault)
    assert "(block 0 of 2)" in str(info.value)


def test_the_fault_free_kernel_runs():
    torch.ops.loraops._ascend_sim_selftest("none")  # checks its own result


def test_unknown_fault_name():
    with pytest.raises(ValueError, match="unknown fault"):
        torch.ops.loraops._ascend_sim_selftest("cosmic_ray")


# ----------------------------------------------------------------------------- quantize
def sim_quantize(weight, blocksize, double_quant, cores):
    return torch.ops.loraops._ascend_sim_nf4_quantize(weight, blocksize, double_quant, cores)


def assert_same_quantization(actual, expected):
    for name, a, b in zip(("packed", "absmax", "nested_absmax", "offset"), actual, expected):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.equal(a.view(torch.int32) if a.dtype == torch.float32 else a,
                           b.view(torch.int32) if b.dtype == torch.float32 else b), name


@st.composite
def quantize_cases(draw):
    n = draw(st.one_of(st.integers(0, 300), st.integers(300, 20000)))
    weight = draw(float_tensors((n,), draw(st.sampled_from(DTYPES))))
    return weight, draw(st.sampled_from(BLOCKSIZES)), draw(st.booleans()), draw(st.sampled_from([1, 2, 3, 8, 48]))


@given(quantize_cases())
def test_quantize_matches_the_cpu_backend_bit_for_bit(case):
    # Magnitudes from tiny to huge, all-zero blocks, equal-magnitude maxima.
    weight, blocksize, double_quant, cores = case
    assert_same_quantization(sim_quantize(weight, blocksize, double_quant, cores),
                             torch.ops.loraops.nf4_quantize(weight, blocksize, double_quant))


def test_exact_midpoints_take_the_lower_code():
    midpoints = (NF4_CODE[:-1] + NF4_CODE[1:]) / 2
    weight = torch.cat([torch.ones(1), midpoints]).float().repeat(4)
    assert_same_quantization(sim_quantize(weight, 64, False, 1), torch.ops.loraops.nf4_quantize(weight, 64, False))


def test_quantize_a_layer_over_many_cores():
    # Several nested groups of 256 blocks, split across cores at odd places.
    weight = torch.randn(300, 1000, dtype=torch.bfloat16)
    expected = torch.ops.loraops.nf4_quantize(weight, 64, True)
    for cores in (1, 7, 40):
        assert_same_quantization(sim_quantize(weight, 64, True, cores), expected)
    qw = loraops.nf4.quantize(weight, blocksize=64)
    assert_bit_equal(sim_dequantize(qw, torch.bfloat16, 40), qw.dequantize())


def test_quantize_refuses_non_finite_input():
    with pytest.raises(ValueError, match="NaN or Inf"):
        sim_quantize(torch.tensor([1.0, float("nan")] * 32), 64, True, 2)
