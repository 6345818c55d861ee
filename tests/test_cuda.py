"""The CUDA backend, kernels and host flow: NF4 bit for bit against the CPU
backend; the LoRA ops (dense and NF4 base, the decode path for few rows,
dropout) against the float64 reference, forward and backward.

Each test runs on "cuda", a GPU (skipped without one), and on "sim-forward" and
"sim-reverse": the same kernels compiled with the host compiler against the CPU
emulation of CUDA in kernels/cuda/sim (CPU tensors, the _cuda_sim_* test ops), its
threads scheduled first to last and last to first. `make test` builds the
emulation and sets LORAOPS_REQUIRE_CUDA_SIM=1, so there it cannot skip."""

import math
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

import loraops
from loraops.lora_reference import dropout_keep_mask
from loraops.nf4_reference import NF4_CODE, double_quantize_reference

from lora_testing import assert_close_to_reference, lora_problems, make_inputs, reference_with_bounds
from strategies import BLOCKSIZES, DTYPES, float_tensors

BACKENDS_BUILT = loraops.build_info()["backends"]
if "cuda_sim" not in BACKENDS_BUILT and os.environ.get("LORAOPS_REQUIRE_CUDA_SIM") == "1":
    raise RuntimeError("this loraops build has no CUDA emulation: build with -C cmake.define.LORAOPS_CUDA_SIM=ON")
HAVE_GPU = torch.cuda.is_available() and "cuda" in BACKENDS_BUILT


class Backend:
    def __init__(self, device, op_prefix, sim_order=None):
        self.device, self.op_prefix, self.sim_order = device, op_prefix, sim_order

    def op(self, name):
        op = getattr(torch.ops.loraops, self.op_prefix + name)
        if self.sim_order is None:
            return op

        def in_order(*args):
            # The emulation runs a block's threads first to last or last to first:
            # a read of another thread's write with no barrier between fails in one.
            before = os.environ.get("LORAOPS_CUDA_SIM_ORDER")
            os.environ["LORAOPS_CUDA_SIM_ORDER"] = self.sim_order
            try:
                return op(*args)
            finally:
                if before is None:
                    del os.environ["LORAOPS_CUDA_SIM_ORDER"]
                else:
                    os.environ["LORAOPS_CUDA_SIM_ORDER"] = before
        return in_order

    def put(self, t):
        return None if t is None else t.to(self.device)

    def nf4_args(self, qw):
        return [self.put(qw.packed), self.put(qw.absmax), self.put(qw.nested_absmax), self.put(qw.nested_code),
                self.put(qw.offset), qw.blocksize, qw.nested_blocksize]


@pytest.fixture(params=[
    pytest.param(Backend("cuda", ""), id="cuda", marks=pytest.mark.skipif(not HAVE_GPU, reason="needs a CUDA GPU")),
    *[pytest.param(Backend("cpu", "_cuda_sim_", order), id=f"sim-{order}", marks=pytest.mark.skipif(
        "cuda_sim" not in BACKENDS_BUILT, reason="loraops was built without LORAOPS_CUDA_SIM"))
      for order in ("forward", "reverse")],
])
def backend(request):
    return request.param


def assert_same_bits(actual, expected, what=""):
    actual = actual.cpu()
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, what
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}.get(expected.dtype)
    if bits is not None:
        actual, expected = actual.view(bits), expected.view(bits)
    assert torch.equal(actual, expected), what


# ----------------------------------------------------------------------------- NF4
@st.composite
def nf4_problems(draw):
    # Lengths that leave a partial 32-element chunk, a partial block, a half byte.
    n = draw(st.one_of(st.integers(0, 300), st.integers(300, 20000)))
    shape = draw(st.sampled_from([(n,), (1, n)] + ([(n // 32, 32)] if n % 32 == 0 and n else [])))
    weight = draw(float_tensors(shape, draw(st.sampled_from(DTYPES))))
    return weight, draw(st.sampled_from(BLOCKSIZES)), draw(st.booleans()), draw(st.sampled_from(DTYPES))


@settings(max_examples=60)
@given(problem=nf4_problems())
def test_nf4_quantize_and_dequantize_match_the_cpu_backend(backend, problem):
    weight, blocksize, double_quant, out_dtype = problem
    packed, scales, _, _ = torch.ops.loraops.nf4_quantize(weight, blocksize, False)
    got = backend.op("nf4_quantize")(backend.put(weight), blocksize, double_quant)
    assert_same_bits(got[0], packed, "packed")
    if not double_quant:
        assert_same_bits(got[1], scales, "absmax")
    else:
        # The offset is the mean of the scales as torch computes it on the
        # backend's device (as bitsandbytes' there: CPU and CUDA sum in different
        # orders); the rest is, bit for bit, the double quantization of the
        # scales less that offset.
        on_device = backend.put(scales)
        offset = on_device.mean() if scales.numel() else torch.zeros((), device=on_device.device)
        if not torch.isfinite(offset):
            offset = on_device.double().mean().float()
        assert_same_bits(got[3], offset.cpu(), "offset")
        codes, nested_absmax, _ = double_quantize_reference(scales, offset)
        assert_same_bits(got[1], codes, "absmax codes")
        assert_same_bits(got[2], nested_absmax, "nested_absmax")
        if backend.device == "cpu":  # the emulation: the same offset, so the CPU backend's output exactly
            for name, g, w in zip(("absmax", "nested_absmax", "offset"), got[1:],
                                  torch.ops.loraops.nf4_quantize(weight, blocksize, True)[1:]):
                assert_same_bits(g, w, name)
    qw = loraops.nf4.quantize(weight, blocksize=blocksize, double_quant=double_quant)
    out = backend.op("nf4_dequantize")(*backend.nf4_args(qw), list(qw.shape), out_dtype)
    assert_same_bits(out, loraops.nf4.dequantize(qw, dtype=out_dtype), "dequantize")


def test_exact_midpoints_take_the_lower_code(backend):
    midpoints = (NF4_CODE[:-1] + NF4_CODE[1:]) / 2
    weight = torch.cat([torch.ones(1), midpoints]).float().repeat(4)
    packed = backend.op("nf4_quantize")(backend.put(weight), 64, False)[0]
    assert_same_bits(packed, torch.ops.loraops.nf4_quantize(weight, 64, False)[0])
    codes = torch.stack([packed.cpu() >> 4, packed.cpu() & 15], 1).flatten()
    assert codes[:16].tolist() == [15] + list(range(15))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("misalign", ["none", "out", "packed"])
def test_dequantize_into_aligned_and_misaligned_buffers(backend, dtype, misalign):
    # 16-byte aligned buffers take the vectorized kernel, others the bytewise one.
    qw = loraops.nf4.quantize(torch.randn(40, 96), blocksize=64)
    args = backend.nf4_args(qw)
    if misalign == "packed":
        args[0] = torch.cat([args[0].new_zeros(1), args[0]])[1:]
    buffer = torch.empty(qw.numel() + 1, dtype=dtype, device=backend.device)
    out = buffer[1:] if misalign == "out" else buffer[:-1]
    backend.op("nf4_dequantize_into")(*args, out)
    assert_same_bits(out.view(40, 96), loraops.nf4.dequantize(qw, dtype=dtype))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("double_quant", [False, True])
def test_quantize_refuses_nan_and_inf(backend, bad, double_quant):
    weight = torch.randn(5000)
    weight[4321] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        backend.op("nf4_quantize")(backend.put(weight), 64, double_quant)


# ----------------------------------------------------------------------------- LoRA
def run_ops(backend, p, x, base, a, b, bias, grad):
    """Forward and backward through the backend's ops, as the autograd wrapper calls them."""
    put = backend.put
    scalars = (p["scale"], p["dropout"], p["seed"])
    if isinstance(base, loraops.nf4.NF4Weight):
        nf4 = backend.nf4_args(base) + [list(base.shape)]
        out, xa = backend.op("lora_linear_nf4")(put(x), *nf4, put(bias), put(a), put(b), *scalars)
        grads = backend.op("lora_linear_nf4_backward")(put(grad), put(x), *nf4, put(bias), put(a), put(b), xa,
                                                       *scalars, [True] * 4)
        grads = [grads[0], None, grads[2], grads[3], grads[1]]  # x, weight, A, B, bias
    else:
        out, xa = backend.op("lora_linear")(put(x), put(base), put(bias), put(a), put(b), *scalars)
        grads = backend.op("lora_linear_backward")(put(grad), put(x), put(base), put(bias), put(a), put(b), xa,
                                                   *scalars, [True] * 5)
        grads = [grads[0], grads[1], grads[3], grads[4], grads[2]]
    return out.cpu(), xa.cpu(), [None if g is None else g.cpu() for g in grads]


def check_lora_ops_against_reference(backend, p, gen):
    """Forward and every gradient of the backend's ops on inputs drawn from gen,
    against the float64 reference."""
    x, weight, a, b, bias = make_inputs(p, gen)
    nf4 = p["nf4_blocksize"] is not None
    base = loraops.nf4.quantize(weight, blocksize=p["nf4_blocksize"]) if nf4 else weight
    weight_dense = base.dequantize(torch.float32) if nf4 else weight
    grad = torch.randn(*p["lead"], p["n"], generator=gen).to(p["dtype"])

    out, xa, grads = run_ops(backend, p, x, base, a, b, bias, grad)
    assert out.shape == (*p["lead"], p["n"]) and out.dtype == p["dtype"]
    assert xa.shape == (math.prod(p["lead"]), p["r"]) and xa.dtype == torch.float32

    (want, want_grads), (bound, bound_grads) = reference_with_bounds(x, weight_dense, a, b, bias, p, grad)
    terms = p["k"] + p["r"] + p["n"] + math.prod(p["lead"]) + 2
    # The base GEMMs round into the input dtype before the fp32 LoRA term is
    # added, and an NF4 weight is dequantized into that dtype first.
    roundings = 3
    assert_close_to_reference(out, want, bound, p["dtype"], terms, "out", roundings)
    for name, t, g, want_g, bound_g in zip(["x", "weight", "lora_A", "lora_B", "bias"], (x, weight, a, b, bias),
                                           grads, want_grads, bound_grads):
        if t is None or (nf4 and name == "weight"):
            continue
        assert g.dtype == t.dtype and g.shape == t.shape, name
        assert_close_to_reference(g, want_g, bound_g, t.dtype, terms, f"grad {name}", roundings)


@settings(max_examples=80)
@given(p=lora_problems(), data=st.data())
def test_lora_ops_match_float64_reference(backend, p, data):
    # Also k a multiple of 32 (the decode path's vectorized GEMV) and few rows.
    if data.draw(st.booleans(), label="k multiple of 32"):
        p["k"] = data.draw(st.sampled_from([32, 64, 96, 160]), label="k")
    check_lora_ops_against_reference(backend, p, torch.Generator().manual_seed(abs(p["seed"]) % (2**31)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("nf4", [False, True])
def test_lora_ops_across_tile_boundaries(backend, dtype, nf4):
    # Rows over several 32-row tiles and reduction ranges, in/out features over
    # several 256-column tiles (partial last ones), a rank over two 16-row chunks.
    p = dict(lead=(3, 67), k=600, n=300, r=20, dtype=dtype, adapter_dtype=torch.float32, bias=True, dropout=0.1,
             scale=0.5, seed=99, nf4_blocksize=64 if nf4 else None)
    check_lora_ops_against_reference(backend, p, torch.Generator().manual_seed(5))


@pytest.mark.parametrize("rows, k, n, r", [(5, 0, 8, 4), (40, 0, 8, 4), (5, 64, 0, 4), (40, 64, 0, 4),
                                           (5, 64, 8, 0), (40, 64, 8, 0), (0, 64, 8, 4)])
@pytest.mark.parametrize("nf4", [False, True])
def test_empty_dimensions(backend, rows, k, n, r, nf4):
    p = dict(lead=(rows,), k=k, n=n, r=r, dtype=torch.bfloat16, adapter_dtype=torch.float32, bias=True,
             dropout=0.1, scale=2.0, seed=1, nf4_blocksize=64 if nf4 else None)
    x, weight, a, b, bias = make_inputs(p, torch.Generator().manual_seed(0))
    base = loraops.nf4.quantize(weight, blocksize=64) if nf4 else weight
    grad = torch.randn(rows, n).to(torch.bfloat16)
    got = run_ops(backend, p, x, base, a, b, bias, grad)
    want = run_ops(Backend("cpu", ""), p, x, base, a, b, bias, grad)
    for g, w in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        if w is None:
            continue
        assert g.shape == w.shape and g.dtype == w.dtype
        assert torch.allclose(g.float(), w.float(), rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("needs", [[False, False, False, False, True], [False, False, True, True, False],
                                   [True, False, False, False, False], [False, True, False, False, False]])
def test_backward_computes_only_what_is_needed(backend, needs):
    torch.manual_seed(3)
    x, w, bias = torch.randn(40, 64), torch.randn(24, 64) / 8, torch.randn(24)
    a, b, grad = torch.randn(4, 64) / 8, torch.randn(24, 4) / 8, torch.randn(40, 24)
    put = backend.put
    out, xa = backend.op("lora_linear")(put(x), put(w), put(bias), put(a), put(b), 2.0, 0.1, 5)
    args = (put(grad), put(x), put(w), put(bias), put(a), put(b), xa, 2.0, 0.1, 5)
    every = backend.op("lora_linear_backward")(*args, [True] * 5)
    some = backend.op("lora_linear_backward")(*args, needs)
    for need, full, partial in zip(needs, every, some):
        if need:
            assert torch.equal(partial.cpu(), full.cpu())
        else:
            assert partial.numel() == 0


@pytest.mark.parametrize("rows", [5, 33])  # the decode path's kernel and the general one
def test_dropout_mask_is_the_cpu_mask(backend, rows):
    # x = 1 and A = I make xa the dropped x itself.
    x = torch.ones(rows, 64)
    a, b = torch.eye(64), torch.zeros(5, 64)
    base = loraops.nf4.quantize(torch.zeros(5, 64), blocksize=64)
    p = dict(scale=1.0, dropout=0.3, seed=1234)
    _, xa, _ = run_ops(backend, p, x, base, a, b, None, torch.zeros(rows, 5))
    keep = dropout_keep_mask(rows, 64, 0.3, 1234)
    assert torch.equal(xa != 0, keep)
    assert torch.equal(xa[keep], torch.full_like(xa[keep], 1 / 0.7))


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_path_with_a_misaligned_x(backend, rows, dtype):
    # A view one element into its storage: the GEMV's element-by-element variant.
    torch.manual_seed(rows)
    x = torch.randn(rows * 64 + 1).to(dtype)[1:].view(rows, 64)
    weight, a, b = torch.randn(24, 64) / 8, torch.randn(4, 64) / 8, torch.randn(24, 4) / 8
    qw = loraops.nf4.quantize(weight, blocksize=32)
    p = dict(scale=2.0, dropout=0.0, seed=0)
    out, _, _ = run_ops(backend, p, x, qw, a, b, None, torch.zeros(rows, 24, dtype=dtype))
    want = x.double() @ qw.dequantize(torch.float32).double().t() + 2.0 * (x.double() @ a.double().t()) @ b.double().t()
    assert (out.double() - want).abs().max() <= 4 * {torch.float32: 2**-24, torch.bfloat16: 2**-8,
                                                     torch.float16: 2**-11}[dtype] * want.abs().max()


# ----------------------------------------------------------------------------- the emulation itself
@pytest.mark.parametrize("fault, message", [
    ("shuffle_after_exit", "has exited"),
    ("barrier_and_shuffle", "deadlock"),
    ("mismatched_masks", "different masks"),
    ("missing_barrier", "not yet written"),
    ("bad_launch", "invalid launch configuration"),
])
@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_the_emulation_catches_what_a_gpu_leaves_undefined(fault, message, order):
    if "cuda_sim" not in BACKENDS_BUILT:
        pytest.skip("loraops was built without LORAOPS_CUDA_SIM")
    selftest = Backend("cpu", "_cuda_sim_", order).op("selftest")
    selftest("none")
    with pytest.raises(RuntimeError, match=message):
        selftest(fault)


# ----------------------------------------------------------------------------- a GPU only
@pytest.mark.skipif(not HAVE_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("nf4", [False, True])
@pytest.mark.parametrize("rows", [4, 33])
def test_autograd_through_the_module_function_on_the_gpu(nf4, rows):
    torch.manual_seed(0)
    x, w = torch.randn(rows, 96, dtype=torch.bfloat16), (torch.randn(80, 96) / 10).to(torch.bfloat16)
    a, b, bias = torch.randn(8, 96) / 10, torch.randn(80, 8) / 10, torch.randn(80, dtype=torch.bfloat16)
    weight = loraops.nf4.quantize(w, blocksize=64) if nf4 else w

    def run(device):
        leaves = [t.to(device).requires_grad_() for t in (x, a, b, bias)]
        out = loraops.lora_linear(leaves[0], weight.to(device), leaves[1], leaves[2], 1.5, bias=leaves[3],
                                  dropout=0.2, seed=7)
        out.backward(torch.ones_like(out))
        return [out] + [t.grad for t in leaves]

    for got, want in zip(run("cuda"), run("cpu")):
        assert (got.cpu().float() - want.float()).abs().max().item() <= 3e-2 * max(1.0, want.abs().max().item())


@pytest.mark.skipif(not HAVE_GPU, reason="needs a CUDA GPU")
def test_weight_on_another_device_is_a_clear_error():
    qw = loraops.nf4.quantize(torch.randn(8, 64), blocksize=64)
    x = torch.randn(2, 64, device="cuda")
    with pytest.raises(RuntimeError, match="NF4 weight must be on"):
        loraops.lora_linear(x, qw, torch.zeros(2, 64, device="cuda"), torch.zeros(8, 2, device="cuda"), 1.0)


@pytest.mark.skipif(not HAVE_GPU, reason="needs a CUDA GPU")
@pytest.mark.parametrize("rows", [5, 40])  # the decode path and the general one
def test_opcheck_on_the_gpu(rows):
    qw = loraops.nf4.quantize(torch.randn(10, 64)).to("cuda")
    nf4 = (qw.packed, qw.absmax, qw.nested_absmax, qw.nested_code, qw.offset, 64, 256, [10, 64])
    cuda = dict(device="cuda", requires_grad=True)
    args = (torch.randn(rows, 64, **cuda), *nf4, None, torch.randn(4, 64, **cuda), torch.randn(10, 4, **cuda), 2.0,
            0.1, 3)
    torch.library.opcheck(torch.ops.loraops.lora_linear_nf4.default, args)
    dense = (torch.randn(rows, 64, **cuda), torch.randn(10, 64, device="cuda"), torch.randn(10, **cuda),
             torch.randn(4, 64, **cuda), torch.randn(10, 4, **cuda), 2.0, 0.1, 3)
    torch.library.opcheck(torch.ops.loraops.lora_linear.default, dense)
    torch.library.opcheck(torch.ops.loraops.nf4_quantize.default, (torch.randn(1000, device="cuda"), 64, True))


@pytest.mark.skipif(not HAVE_GPU, reason="needs a CUDA GPU")
def test_qlora_module_moves_to_the_gpu_and_trains():
    torch.manual_seed(0)
    layer = loraops.nn.NF4Linear.from_linear(torch.nn.Linear(96, 48), r=8, alpha=16, dropout=0.0)
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 7, 96)
    want = layer(x)
    want.sum().backward()
    want_grad = layer.lora_A.grad.clone()
    layer.zero_grad()
    layer.cuda()
    got = layer(x.cuda())
    got.sum().backward()
    assert (got.cpu() - want).abs().max() <= 1e-3 * want.abs().max()
    assert (layer.lora_A.grad.cpu() - want_grad).abs().max() <= 1e-3 * want_grad.abs().max()


@pytest.mark.skipif(not HAVE_GPU, reason="needs a CUDA GPU")
def test_s2_attention_on_the_gpu_matches_the_cpu():
    # No CUDA kernel yet: the PyTorch reference runs there (with a warning).
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 64, 4, 32) for _ in range(3))
    want = loraops.s2_attention(q, k, v, 16, seqlens=torch.tensor([64, 37]))
    with pytest.warns(UserWarning, match="s2_attention"):
        got = loraops.s2_attention(q.cuda(), k.cuda(), v.cuda(), 16, seqlens=torch.tensor([64, 37]))
    torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-3)
