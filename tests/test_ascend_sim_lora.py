"""The Ascend C LoRA kernels (kernels/ascend/lora) run in the CPU emulation
(kernels/ascend/sim): the LoRA ops with their real schemas (_ascend_sim_lora_*)
through the battery the CUDA backend runs, on larger shapes than the CPU tests
draw (several cube tiles and chunks of rows); the dropout mask bit for bit
against the reference's, and the vector kernels' arithmetic exactly."""
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

import loraops
from loraops.lora_reference import _MASK32, _mix32, dropout_keep_mask, dropout_threshold

from lora_testing import lora_problems, make_inputs
# The LoRA op battery of the CUDA backend and its emulation, collected here a
# second time with this module's `backend` fixture: the Ascend kernels.
from test_cuda import (Backend, check_lora_ops_against_reference, run_ops,  # noqa: F401
                       test_backward_computes_only_what_is_needed, test_dropout_mask_is_the_cpu_mask,
                       test_empty_dimensions, test_lora_ops_across_tile_boundaries,
                       test_lora_ops_match_float64_reference)

BACKENDS_BUILT = loraops.build_info()["backends"]
if "ascend_sim" not in BACKENDS_BUILT:
    if os.environ.get("LORAOPS_REQUIRE_ASCEND_SIM") == "1":
        raise RuntimeError("this loraops build has no Ascend emulation: build with -C cmake.define.LORAOPS_ASCEND_SIM=ON")
    pytest.skip("loraops was built without LORAOPS_ASCEND_SIM", allow_module_level=True)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture
def backend():
    return Backend("cpu", "_ascend_sim_")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocksize, rows, n", [(32, 300, 1100), (64, 300, 1100), (128, 40, 700), (256, 40, 200),
                                                (4096, 3, 130)])
def test_qlora_forward_dequantizes_strip_by_strip(backend, dtype, blocksize, rows, n):
    # in_features whole NF4 blocks: the MIX kernel's path. n = 1100 is 9 strips of
    # 128 rows, 3 per emulated AI core: each core's two workspace slots are reused
    # (the cube flags one free before the vector cores refill it); 700 gives cores
    # 2 strips each, 200 and 130 a single one (one slot) on fewer cores than there are.
    p = dict(lead=(rows,), k=blocksize if blocksize > 256 else 2 * blocksize, n=n, r=16, dtype=dtype,
             adapter_dtype=torch.float32, bias=True, dropout=0.1, scale=0.5, seed=5, nf4_blocksize=blocksize)
    check_lora_ops_against_reference(backend, p, torch.Generator().manual_seed(blocksize))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocksize, k", [(32, 1000 // 32 * 32), (64, 1024), (128, 640)])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_qlora_dx_dequantizes_column_strips(backend, dtype, blocksize, k, dropout):
    # dx = dy W (+ d_xa A) from 128-column strips of W dequantized beside the cube:
    # 5 to 8 strips over 3 emulated AI cores (each core's slots reused), a last
    # partial strip where k is not a multiple of 128, with dropout the base product
    # alone (the masked low-rank term added after).
    p = dict(lead=(2, 70), k=k, n=151, r=8, dtype=dtype, adapter_dtype=torch.float32, bias=False,
             dropout=dropout, scale=0.5, seed=3, nf4_blocksize=blocksize)
    check_lora_ops_against_reference(backend, p, torch.Generator().manual_seed(k))


@pytest.mark.parametrize("rows, k, n, r", [(5, 0, 8, 4), (5, 64, 0, 4), (5, 64, 8, 0), (0, 64, 8, 4), (7, 64, 8, 0)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("nf4", [False, True])
def test_empty_dimensions_without_dropout(backend, rows, k, n, r, bias, nf4):
    # No dropout: the fused kernels' paths (the CUDA battery's empty-dimension test
    # draws dropout 0.1 and a bias); rank 0 without a bias leaves the low-rank
    # term no column at all, in_features 0 the base product none.
    p = dict(lead=(rows,), k=k, n=n, r=r, dtype=torch.bfloat16, adapter_dtype=torch.float32, bias=bias,
             dropout=0.0, scale=2.0, seed=1, nf4_blocksize=64 if nf4 else None)
    x, weight, a, b, bias_t = make_inputs(p, torch.Generator().manual_seed(0))
    base = loraops.nf4.quantize(weight, blocksize=64) if nf4 else weight
    grad = torch.randn(rows, n).to(torch.bfloat16)
    got = run_ops(backend, p, x, base, a, b, bias_t, grad)
    want = run_ops(Backend("cpu", ""), p, x, base, a, b, bias_t, grad)
    for g, w in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        if w is not None:
            assert g.shape == w.shape and g.dtype == w.dtype
            assert torch.allclose(g.float(), w.float(), rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nf4", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_inputs_not_32_byte_aligned_in_global_memory(backend, dtype, nf4, dropout):
    # Views one element into their storage: the kernels' loads and stores take any
    # element address, so every result is the aligned inputs' bit for bit.
    gen = torch.Generator().manual_seed(7)
    rows, k, n, r = 37, 128, 40, 8
    def misaligned(t):
        storage = torch.empty(t.numel() + 1, dtype=t.dtype)
        view = storage[1:].view(t.shape)
        view.copy_(t)
        return view
    x = torch.randn(rows, k, generator=gen).to(dtype)
    grad = torch.randn(rows, n, generator=gen).to(dtype)
    weight = (torch.randn(n, k, generator=gen) / 8).to(dtype)
    a, b = torch.randn(r, k, generator=gen) / 8, torch.randn(n, r, generator=gen)
    bias = torch.randn(n, generator=gen).to(dtype)
    base = loraops.nf4.quantize(weight, blocksize=64) if nf4 else weight
    p = dict(scale=2.0, dropout=dropout, seed=11)
    aligned = run_ops(backend, p, x, base, a, b, bias, grad)
    shifted = run_ops(backend, p, misaligned(x), base if nf4 else misaligned(weight), misaligned(a), misaligned(b),
                      misaligned(bias), misaligned(grad))
    for want, got in zip([aligned[0], aligned[1], *aligned[2]], [shifted[0], shifted[1], *shifted[2]]):
        if want is not None:
            assert_same_bits(got, want)


@settings(max_examples=25, deadline=None)
@given(p=lora_problems(max_rows=300, max_features=300))
def test_lora_ops_on_shapes_over_several_cube_tiles(backend, p):
    check_lora_ops_against_reference(backend, p, torch.Generator().manual_seed(abs(p["seed"]) % (2**31)))
# Dropout indices across a multiple of 2^32, where the hash's key changes.
INDEX_BASES = st.one_of(st.integers(0, 10_000), st.integers(2**32 - 5_000, 2**32 + 100),
                        st.integers(0, 2**40))


def keep_mask(index_base, n, p, seed):
    """Bool [n]: dropout's keep decision for flat indices index_base .. index_base + n - 1."""
    index = torch.arange(index_base, index_base + n, dtype=torch.int64)
    seed &= (1 << 64) - 1
    key = _mix32((index >> 32) ^ (seed >> 32)) ^ (seed & _MASK32)
    return _mix32((index & _MASK32) ^ key) >= dropout_threshold(p)


def keep_scale(p):
    return torch.tensor(1.0 / (1.0 - p), dtype=torch.float32)


def masked(values, index_base, p, seed):
    """values (fp32) through dropout as the kernels apply it: kept ones times the fp32 keep scale."""
    if dropout_threshold(p) == 0:
        return values
    keep = keep_mask(index_base, values.numel(), p, seed).reshape(values.shape)
    return torch.where(keep, values * keep_scale(p), torch.zeros((), dtype=torch.float32))


def assert_same_bits(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.view(torch.int16 if got.element_size() == 2 else torch.int32),
                       want.view(torch.int16 if want.element_size() == 2 else torch.int32))


vector_problems = st.fixed_dictionaries(dict(
    rows=st.integers(0, 40), cols=st.integers(1, 300), dtype=st.sampled_from(DTYPES),
    p=st.sampled_from([0.0, 1e-12, 0.1, 0.5, 0.9, 0.999]), seed=st.integers(-2**63, 2**63 - 1),
    index_base=INDEX_BASES, cores=st.integers(1, 8)))


@settings(max_examples=60, deadline=None)
@given(q=vector_problems)
def test_mask_to_float_is_the_reference_mask(q):
    x = torch.randn(q["rows"], q["cols"]).to(q["dtype"])
    got = torch.ops.loraops._ascend_sim_lora_mask_to_float(x, q["index_base"], q["p"], q["seed"], q["cores"])
    assert_same_bits(got, masked(x.float(), q["index_base"], q["p"], q["seed"]))


@settings(max_examples=60, deadline=None)
@given(q=vector_problems, scale=st.sampled_from([1.0, 0.5, 3.7]))
def test_add_masked_rounds_once(q, scale):
    x = torch.randn(q["rows"], q["cols"]).to(q["dtype"])
    term = torch.randn(q["rows"], q["cols"])
    got = x.clone()
    torch.ops.loraops._ascend_sim_lora_add_masked(got, term, scale, q["index_base"], q["p"], q["seed"], q["cores"])
    scaled = term * torch.tensor(scale, dtype=torch.float32)
    assert_same_bits(got, (x.float() + masked(scaled, q["index_base"], q["p"], q["seed"])).to(q["dtype"]))


def test_mask_matches_the_lora_reference_mask():
    # The module's own mask function, from index 0, is what the kernels reproduce.
    x = torch.ones(37, 129)
    got = torch.ops.loraops._ascend_sim_lora_mask_to_float(x, 0, 0.3, 1234, 5)
    assert torch.equal(got != 0, dropout_keep_mask(37, 129, 0.3, 1234))


def test_the_launch_log_counts_what_the_cost_model_reads():
    from loraops.bench.ascend_model import parse_launch_log
    log = torch.ops.loraops._ascend_sim_launch_log
    x, w = torch.randn(128, 256).to(torch.bfloat16), torch.randn(128, 256).to(torch.bfloat16)
    a, b = torch.randn(16, 256), torch.randn(128, 16)

    def launches(dropout):
        log(True)
        torch.ops.loraops._ascend_sim_lora_linear(x, w, None, a, b, 2.0, dropout, 0)
        records = parse_launch_log(log(True))
        return {name: [r for r in records if r.kernel == name] for name in {r.kernel for r in records}}

    plain = launches(0.0)
    assert set(plain) == {"loraops_lora_split_matmul", "loraops_lora_fused_matmul"}
    [fused] = plain["loraops_lora_fused_matmul"]
    # One 128 x 128 tile of y: 8 x 8 output fractals over k = 256 (16 bf16 fractals deep) and the
    # rank-16 term in fp32 (2 fractals of 8 deep); y written once, in bf16.
    assert fused.mmad_fractals == {"half": 0, "bf16": 8 * 8 * 16, "float": 8 * 8 * 2}
    assert fused.gm_write_bytes == 128 * 128 * 2
    assert fused.gm_read_bytes == (128 * 256 + 128 * 256) * 2 + (128 * 16 + 128 * 16) * 4
    assert fused.core_type == "aic" and fused.cube_cores_busy == 1
    # xa = x A^T: x read once as it is, A as three bf16 parts, one pass each.
    [down] = plain["loraops_lora_split_matmul"]
    assert down.mmad_fractals == {"half": 0, "bf16": 3 * 8 * 1 * 16, "float": 0}
    assert down.gm_read_bytes == 3 * (128 * 256 + 16 * 256) * 2 and down.gm_write_bytes == 128 * 16 * 4
    # With dropout the cube reads a masked bf16 copy of x: each element read once, written once.
    [copy] = launches(0.1)["loraops_lora_masked_copy"]
    assert copy.core_type == "aiv" and sum(copy.vector_repeats) > 0
    assert copy.gm_read_bytes == 128 * 256 * 2 and copy.gm_write_bytes == 128 * 256 * 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_mask_of_every_dtype_is_the_cpu_mask(backend, dtype):
    # x = 1 and A = I make xa the dropped x itself: bf16 through the masked copy and
    # the split factor, fp16 and fp32 through the fp32 path.
    x, a, b = torch.ones(33, 64).to(dtype), torch.eye(64), torch.zeros(5, 64)
    _, xa = backend.op("lora_linear")(x, torch.zeros(5, 64).to(dtype), None, a, b, 1.0, 0.3, 1234)
    keep = dropout_keep_mask(33, 64, 0.3, 1234)
    assert torch.equal(xa != 0, keep)
    assert torch.equal(xa[keep], torch.full_like(xa[keep], 1 / 0.7))
