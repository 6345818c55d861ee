"""The Ascend emulation's AI Cube core and MIX launches (kernels/ascend/sim/cube.h,
mix.h): CubeMatmul (kernels/ascend/common/cube_matmul.h) against float64 torch
with error bounds derived from the computation, each cube and cross-core fault
caught and named, and a small MIX kernel against torch.

Needs a build with LORAOPS_ASCEND_SIM=ON (``make test`` makes one); elsewhere
these tests skip, unless LORAOPS_REQUIRE_ASCEND_SIM=1 makes that an error."""

import os

import pytest
import torch
from hypothesis import given, strategies as st

import loraops

if "ascend_sim" not in loraops.build_info()["backends"]:
    if os.environ.get("LORAOPS_REQUIRE_ASCEND_SIM") == "1":
        raise RuntimeError("this loraops build has no Ascend emulation: build with -C cmake.define.LORAOPS_ASCEND_SIM=ON")
    pytest.skip("loraops was built without LORAOPS_ASCEND_SIM", allow_module_level=True)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Unit roundoff of each output type, and half its smallest subnormal (an absolute rounding floor).
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
SUBNORMAL_FLOOR = {torch.float32: 2.0**-150, torch.bfloat16: 2.0**-134, torch.float16: 2.0**-25}
SIDES = st.one_of(st.sampled_from([1, 15, 16, 17, 127, 128, 129, 257, 300]), st.integers(1, 300))


def cube_matmul(a, b, a_k_major, b_k_major, out_dtype, accumulate_into=None, cores=1):
    return torch.ops.loraops._ascend_sim_cube_matmul(a, b, a_k_major, b_k_major, out_dtype, accumulate_into, cores)


def strided(rows, cols, dtype, pad, gen, scale):
    """A [rows, cols] view with leading dimension cols + pad (rows not 32-byte aligned when pad is odd)."""
    full = torch.randn(rows, cols + pad, generator=gen, dtype=torch.float64) * scale
    return full.to(dtype)[:, :cols]


def assert_within_bound(actual, a, b, a_k_major, b_k_major, out_dtype, initial=None):
    """|actual - exact| <= k 2^-23 sum_k |a||b| (float accumulation of k products, each exact for
    16-bit inputs, rounded once for float) + the output type's rounding (twice with accumulation)."""
    a64 = (a.t() if a_k_major else a).double()
    b64 = (b if b_k_major else b.t()).double()
    k = a64.shape[1]
    product = a64 @ b64
    magnitude = a64.abs() @ b64.abs()
    exact = product if initial is None else product + initial.double()
    u = UNIT_ROUNDOFF[out_dtype]
    rounding = u * product.abs() + (0 if initial is None else u * exact.abs()) + 2 * SUBNORMAL_FLOOR[out_dtype]
    bound = (k + 1) * 2.0**-23 * magnitude * (1 + u) + rounding
    assert actual.dtype == out_dtype and actual.shape == exact.shape
    assert not torch.isnan(actual).any(), "the kernel left elements unwritten (the buffer starts as NaN)"
    # Results beyond the output type's range round to infinity, as they should; the rest must be in bounds.
    in_range = exact.abs() + bound < torch.finfo(out_dtype).max
    err = torch.where(in_range, (actual.double() - exact).abs(), 0)
    worst = (err - bound).argmax()
    assert (err <= bound).all(), f"error {err.flatten()[worst]} > bound {bound.flatten()[worst]}"


@st.composite
def matmul_cases(draw):
    m, n, k = draw(SIDES), draw(SIDES), draw(SIDES)
    a_k_major, b_k_major = draw(st.booleans()), draw(st.booleans())
    in_dtype, out_dtype = draw(st.sampled_from(DTYPES)), draw(st.sampled_from(DTYPES))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([1.0, 1e-3, 30.0]))
    a = strided(k, m, in_dtype, draw(st.integers(0, 5)), gen, scale) if a_k_major else \
        strided(m, k, in_dtype, draw(st.integers(0, 5)), gen, scale)
    b = strided(k, n, in_dtype, draw(st.integers(0, 5)), gen, scale) if b_k_major else \
        strided(n, k, in_dtype, draw(st.integers(0, 5)), gen, scale)
    initial = torch.randn(m, n, generator=gen).to(out_dtype) if draw(st.booleans()) else None
    return a, b, a_k_major, b_k_major, out_dtype, initial, draw(st.sampled_from([1, 2, 3, 5]))


@given(matmul_cases())
def test_cube_matmul_matches_float64_within_the_bound(case):
    a, b, a_k_major, b_k_major, out_dtype, initial, cores = case
    c = cube_matmul(a, b, a_k_major, b_k_major, out_dtype, initial, cores)
    assert_within_bound(c, a, b, a_k_major, b_k_major, out_dtype, initial)


@pytest.mark.parametrize("in_dtype", DTYPES)
@pytest.mark.parametrize("a_k_major, b_k_major", [(False, False), (True, False), (False, True), (True, True)])
def test_cube_matmul_every_layout(in_dtype, a_k_major, b_k_major):
    # k longer than one L0 step (128 / 64 elements) and m, n over two L0C tiles and two blocks of cores.
    gen = torch.Generator().manual_seed(0)
    m, n, k = 300, 260, 333
    a = strided(k, m, in_dtype, 1, gen, 1.0) if a_k_major else strided(m, k, in_dtype, 3, gen, 1.0)
    b = strided(k, n, in_dtype, 0, gen, 1.0) if b_k_major else strided(n, k, in_dtype, 5, gen, 1.0)
    for out_dtype in DTYPES:
        c = cube_matmul(a, b, a_k_major, b_k_major, out_dtype, cores=3)
        assert_within_bound(c, a, b, a_k_major, b_k_major, out_dtype)


def test_cube_matmul_accumulates_into_c():
    a, b = torch.randn(20, 40), torch.randn(24, 40)
    initial = torch.randn(20, 24)
    c = cube_matmul(a, b, False, False, torch.float32, initial, 2)
    assert_within_bound(c, a, b, False, False, torch.float32, initial)
    twice = cube_matmul(a, b, False, False, torch.float32, c, 2)
    torch.testing.assert_close(twice, initial + 2 * (a.double() @ b.double().t()).float(), rtol=1e-5, atol=1e-4)


def test_exact_products_of_16_bit_inputs():
    # Products of bf16 values need 16 bits of mantissa: exact in float, so a single product is exact.
    a = torch.tensor([[1 + 2**-7]], dtype=torch.bfloat16)
    b = torch.tensor([[1 + 2**-7]], dtype=torch.bfloat16)
    c = cube_matmul(a, b, False, False, torch.float32)
    assert c.item() == (1 + 2**-7) ** 2


def test_cube_matmul_checks_its_arguments():
    with pytest.raises(ValueError, match="disagree on k"):
        cube_matmul(torch.randn(4, 5), torch.randn(4, 6), False, False, torch.float32)
    with pytest.raises(ValueError, match="cores"):
        cube_matmul(torch.randn(4, 5), torch.randn(4, 5), False, False, torch.float32, cores=0)


# ----------------------------------------------------------------------------- cube faults
CUBE_FAULTS = [
    ("l1_overflow", r"L1 overflow: .* > 524288 bytes per core"),
    ("l0a_overflow", r"L0A overflow: .* > 65536 bytes per core"),
    ("l0b_overflow", r"L0B overflow: .* > 65536 bytes per core"),
    ("l0c_overflow", r"L0C overflow: .* > 131072 bytes per core"),
    ("bias_table_overflow", r"BiasTable overflow: .* > 1024 bytes per core"),
    ("l1_misaligned", r"DataCopy GM->L1 \(Nd2NzParams\): dst at L1 offset \d+ is not 32-byte aligned"),
    ("l0a_misaligned", r"LoadData \(LoadData2DParams\): dst at L0A offset 32 is not 512-byte aligned"),
    ("l0b_misaligned", r"LoadData \(LoadData2DParams\): dst at L0B offset 128 is not 512-byte aligned"),
    ("l0c_misaligned", r"Mmad: dst at L0C offset 32 is not 64-byte aligned"),
    ("mmad_dst_position", r"Mmad: dst is in L0A; it must be in L0C \(CO1\)"),
    ("load_src_position", r"LoadData \(LoadData2DParams\): src is in L0B; it must be in L1 \(A1/B1\)"),
    ("load_dst_position", r"LoadData \(LoadData2DParams\): dst is in L1; it must be in L0A \(A2\) or L0B \(B2\)"),
    ("mmad_beyond_l0a", r"Mmad: fm needs 1536 bytes of L0A but its tensor holds 1024"),
    ("mmad_beyond_l0b", r"Mmad: filter needs 2048 bytes of L0B but its tensor holds 1024"),
    ("mmad_beyond_l0c", r"Mmad: dst needs 1024 bytes of L0C but its tensor holds 256"),
    ("fixpipe_beyond_l0c", r"Fixpipe L0C->GM: src needs 5120 bytes of L0C but its tensor holds 2048"),
    ("fixpipe_outside_gm", r"Fixpipe L0C->GM: 64 bytes of global memory at .* are outside every buffer"),
    ("mmad_dtype_pair", r"Mmad: dst float, fm half, filter bfloat16_t is not a pair the Atlas A2 cube has"),
    ("fp32_load_transpose", r"ifTranspose transposes 16-bit fractals only; .* need LoadDataWithTranspose"),
    ("ub_on_aic", r"Unified Buffer exists only on the AI vector cores, and this is the AIC of block 0"),
    ("vector_on_aic", r"Muls: a vector instruction on the AI Cube core"),
    ("atomic_left_on", r"SetAtomicAdd still on when the kernel returned"),
    ("atomic_type", r"SetAtomicAdd<half> is set but the store writes float"),
]


@pytest.mark.parametrize("fault, message", CUBE_FAULTS)
def test_the_cube_names_each_fault(fault, message):
    with pytest.raises(RuntimeError, match=message) as info:
        torch.ops.loraops._ascend_sim_cube_selftest(fault)
    assert "AIC of block 0" in str(info.value)


def test_the_fault_free_cube_kernel_runs():
    torch.ops.loraops._ascend_sim_cube_selftest("none")  # checks its own result


def test_unknown_cube_fault_name():
    with pytest.raises(ValueError, match="unknown fault"):
        torch.ops.loraops._ascend_sim_cube_selftest("cosmic_ray")


# ----------------------------------------------------------------------------- MIX launches
def mix_example(blocks, fault="none", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(blocks * 16, 32, generator=gen)
    w = torch.randn(32, 32, generator=gen)
    r = torch.randn(blocks * 16, 32, generator=gen)
    return x, w, r, torch.ops.loraops._ascend_sim_mix_example(x, w, r, fault)


@pytest.mark.parametrize("blocks", [1, 3])
def test_a_mix_kernel_matches_torch(blocks):
    # AIVs double x into GM and flag the AIC; it multiplies by w^T and flags back; the AIVs add r.
    x, w, r, out = mix_example(blocks)
    expected = (2 * x.double()) @ w.double().t() + r.double()
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=32 * 2.0**-23 * 64 * 4 + 1e-5)


MIX_FAULTS = [
    ("missing_flag", r"deadlock: every core left is blocked; AIC of block 0 waits for flag 0; "
                     r"AIV 0 of block 0 waits for flag 1; AIV 1 of block 0 waits for flag 1"),
    ("extra_flag", r"flag 0 still pending on the AIC of block 0 when the kernel returned"),
    ("mismatched_flag", r"deadlock: .*AIC of block 0 waits for flag 0"),
    ("too_many_pending", r"CrossCoreSetFlag: flag 0 would have 16 pending on the AIC of block 0 \(at most 15\)"),
    ("flag_id_range", r"CrossCoreSetFlag: flag id 11 is out of range 0..10 \(AIV 0 of block 0\)"),
    ("sync_all_missed", r"deadlock: .*waits for SyncAll"),
    ("l1_on_aiv", r"L1 exists only on the AI cube cores, and this is the AIV 0 of block 0"),
    ("vector_on_aic", r"Muls: a vector instruction on the AI Cube core .*\(AIC of block 0\)"),
]


@pytest.mark.parametrize("fault, message", MIX_FAULTS)
def test_mix_launches_name_each_fault(fault, message):
    with pytest.raises(RuntimeError, match=message):
        mix_example(2, fault)


def test_unknown_mix_fault_name():
    with pytest.raises(ValueError, match="unknown fault"):
        mix_example(1, "cosmic_ray")
