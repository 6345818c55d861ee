"""The LoRA op against the float64 reference: outputs and every gradient, dense
and NF4 base weights, with and without dropout."""

import math

import pytest
import torch
from hypothesis import given

import loraops
from loraops.lora_reference import dropout_keep_mask, lora_linear_reference

from lora_testing import (assert_close_to_reference, base_gemm_roundings, lora_problems, make_inputs,
                          reference_with_bounds)


@given(p=lora_problems())
def test_forward_and_gradients_match_float64_reference(p, cpu_bf16):
    gen = torch.Generator().manual_seed(abs(p["seed"]) % (2**31))
    x, weight, a, b, bias = make_inputs(p, gen)
    nf4 = p["nf4_blocksize"] is not None
    if nf4:
        base = loraops.nf4.quantize(weight, blocksize=p["nf4_blocksize"])
        weight_dense = base.dequantize(torch.float32)
    else:
        base = weight_dense = weight.requires_grad_()
    for t in (x, a, b, bias):
        if t is not None:
            t.requires_grad_()

    out = loraops.lora_linear(x, base, a, b, p["scale"], bias, p["dropout"], seed=p["seed"])
    assert out.shape == (*p["lead"], p["n"]) and out.dtype == p["dtype"]
    grad = torch.randn(out.shape, generator=gen).to(out.dtype)
    out.backward(grad)

    (want, want_grads), (bound, bound_grads) = reference_with_bounds(x, weight_dense, a, b, bias, p, grad)
    check_against_reference(p, out, want, bound, [x, None if nf4 else weight, a, b, bias], want_grads, bound_grads,
                            base_gemm_roundings(p, cpu_bf16))


def check_against_reference(p, out, want, bound, leaves, want_grads, bound_grads, roundings):
    """out and the leaves' gradients against the float64 reference; `roundings`
    intermediate ones in the output and dx (the base GEMMs')."""
    terms = p["k"] + p["r"] + p["n"] + math.prod(p["lead"]) + 2
    assert_close_to_reference(out, want, bound, p["dtype"], terms, "out", roundings)
    names = ["x", "weight", "lora_A", "lora_B", "bias"]
    for name, t, g, gb in zip(names, leaves, want_grads, bound_grads):
        if t is None:
            continue
        assert t.grad is not None and t.grad.dtype == t.dtype and t.grad.shape == t.shape, name
        assert_close_to_reference(t.grad, g, gb, t.dtype, terms, f"grad {name}", roundings if name == "x" else 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nf4_weight_in_several_tiles(dtype, cpu_bf16):
    # The kernels dequantize at most 32 MiB of the weight at a time: 4200x4096
    # takes two bf16 tiles or three fp32 ones (and the last is partial).
    p = dict(lead=(5,), k=4096, n=4200, r=4, dtype=dtype, adapter_dtype=torch.float32, bias=True, dropout=0.1,
             scale=2.0, seed=21, nf4_blocksize=64)
    gen = torch.Generator().manual_seed(21)
    x, weight, a, b, bias = make_inputs(p, gen)
    base = loraops.nf4.quantize(weight, blocksize=64)
    weight_dense = base.dequantize(torch.float32)
    for t in (x, a, b, bias):
        t.requires_grad_()
    out = loraops.lora_linear(x, base, a, b, p["scale"], bias, p["dropout"], seed=p["seed"])
    grad = torch.randn(out.shape, generator=gen).to(dtype)
    out.backward(grad)
    (want, want_grads), (bound, bound_grads) = reference_with_bounds(x, weight_dense, a, b, bias, p, grad)
    check_against_reference(p, out, want, bound, [x, None, a, b, bias], want_grads, bound_grads,
                            base_gemm_roundings(p, cpu_bf16))


def test_frozen_weight_gets_no_gradient_and_none_needed():
    x = torch.randn(4, 16, requires_grad=True)
    weight = torch.randn(8, 16)
    a, b = torch.randn(2, 16, requires_grad=True), torch.zeros(8, 2, requires_grad=True)
    loraops.lora_linear(x, weight, a, b, 2.0).sum().backward()
    assert weight.grad is None and x.grad is not None and b.grad is not None
    # lora_B = 0 at init: the adapter contributes nothing, and dA is zero
    assert torch.equal(a.grad, torch.zeros_like(a))


@pytest.mark.filterwarnings("ignore:Input #.* is not a double precision")
def test_gradcheck_small():
    torch.manual_seed(1)
    args = [torch.randn(3, 5, dtype=torch.float32, requires_grad=True),
            torch.randn(4, 5, requires_grad=True),
            torch.randn(2, 5, requires_grad=True),
            torch.randn(4, 2, requires_grad=True),
            torch.randn(4, requires_grad=True)]

    def fn(x, w, a, b, bias):
        return loraops.lora_linear(x, w, a, b, 1.5, bias, 0.25, seed=7)

    # the op computes in fp32: finite differences need a large step and loose tolerances
    assert torch.autograd.gradcheck(fn, args, eps=1e-2, atol=2e-2, rtol=2e-2, nondet_tol=0.0)


@pytest.mark.filterwarnings("ignore:Input #.* is not a double precision")
def test_gradcheck_nf4():
    torch.manual_seed(2)
    qw = loraops.nf4.quantize(torch.randn(6, 40), blocksize=32)
    args = [torch.randn(3, 40, requires_grad=True), torch.randn(2, 40, requires_grad=True),
            torch.randn(6, 2, requires_grad=True), torch.randn(6, requires_grad=True)]

    def fn(x, a, b, bias):
        return loraops.lora_linear(x, qw, a, b, 0.5, bias, 0.1, seed=3)

    assert torch.autograd.gradcheck(fn, args, eps=1e-2, atol=2e-2, rtol=2e-2)


# ----------------------------------------------------------------------------- dropout
def test_dropout_mask_is_the_reference_mask():
    x = torch.randn(50, 64)
    w = torch.zeros(3, 64)
    a = torch.eye(64)  # xa = dropout(x): exposes the mask exactly
    out_unused, xa = torch.ops.loraops.lora_linear(x, w, None, a, torch.zeros(3, 64), 1.0, 0.3, 99)
    keep = dropout_keep_mask(50, 64, 0.3, 99)
    torch.testing.assert_close(xa, x * keep / 0.7, rtol=1e-6, atol=0)


def test_dropout_keep_rate_and_seeds():
    keep = dropout_keep_mask(1000, 1000, 0.1, 12345)
    rate = keep.double().mean().item()
    assert abs(rate - 0.9) < 5 * math.sqrt(0.09 / 1e6)
    other = dropout_keep_mask(1000, 1000, 0.1, 12346)
    assert (keep != other).double().mean() > 0.15  # independent masks differ in ~18% of places
    # neighbouring rows and columns are not correlated
    k = keep.double() - 0.9
    assert abs((k[:, 1:] * k[:, :-1]).mean()) < 5 * 0.09 / 1000
    assert abs((k[1:] * k[:-1]).mean()) < 5 * 0.09 / 1000


def test_default_seed_follows_torch_generator():
    x, w, a, b = torch.randn(8, 32), torch.randn(4, 32), torch.randn(2, 32), torch.randn(4, 2)
    torch.manual_seed(5)
    first = loraops.lora_linear(x, w, a, b, 1.0, dropout=0.5)
    second = loraops.lora_linear(x, w, a, b, 1.0, dropout=0.5)
    torch.manual_seed(5)
    again = loraops.lora_linear(x, w, a, b, 1.0, dropout=0.5)
    assert torch.equal(first, again) and not torch.equal(first, second)


def test_double_backward_is_refused():
    x = torch.randn(3, 8, requires_grad=True)
    a, b = torch.randn(2, 8, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    out = loraops.lora_linear(x, torch.randn(4, 8), a, b, 1.0)
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_no_dropout_ignores_seed():
    x, w, a, b = torch.randn(8, 32), torch.randn(4, 32), torch.randn(2, 32), torch.randn(4, 2)
    assert torch.equal(loraops.lora_linear(x, w, a, b, 1.0, seed=1), loraops.lora_linear(x, w, a, b, 1.0, seed=2))


# ----------------------------------------------------------------------------- registration
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_opcheck_dense(dropout):
    args = (torch.randn(2, 3, 24, requires_grad=True), torch.randn(10, 24), torch.randn(10, requires_grad=True),
            torch.randn(4, 24, requires_grad=True), torch.randn(10, 4, requires_grad=True), 2.0, dropout, 11)
    torch.library.opcheck(torch.ops.loraops.lora_linear.default, args)
    out, xa = torch.ops.loraops.lora_linear(*args)
    # as autograd calls it: on plain tensors (its own gradients are refused, see below)
    plain = [t.detach() for t in args[:5]]
    back = (torch.randn_like(out).detach(), *plain, xa, 2.0, dropout, 11, [True, False, True, True, True])
    torch.library.opcheck(torch.ops.loraops.lora_linear_backward.default, back)


def test_opcheck_nf4():
    qw = loraops.nf4.quantize(torch.randn(10, 64))
    nf4 = (qw.packed, qw.absmax, qw.nested_absmax, qw.nested_code, qw.offset, 64, 256, [10, 64])
    args = (torch.randn(5, 64, requires_grad=True), *nf4, None, torch.randn(4, 64, requires_grad=True),
            torch.randn(10, 4, requires_grad=True), 2.0, 0.1, 3)
    torch.library.opcheck(torch.ops.loraops.lora_linear_nf4.default, args)


def test_torch_compile_of_a_module():
    layer = loraops.nn.LoraLinear.from_linear(torch.nn.Linear(32, 16), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    model = torch.nn.Sequential(layer, torch.nn.GELU())
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(6, 32, requires_grad=True)
    out = compiled(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in layer.parameters() if p.requires_grad]
    layer.zero_grad()
    torch.testing.assert_close(out, model(x))
    model(x).sum().backward()
    for g, p in zip(grads, [p for p in layer.parameters() if p.requires_grad]):
        torch.testing.assert_close(g, p.grad)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(x=torch.randn(3, 17)), ValueError, "x must have in_features = 16"),
        (dict(x=torch.randn(3, 16, dtype=torch.float64)), TypeError, "x must be float32"),
        (dict(x=torch.ones(3, 16, dtype=torch.int32)), TypeError, "x must be float32"),
        (dict(a=torch.randn(2, 15)), ValueError, r"lora_A must be \[r, 16\]"),
        (dict(b=torch.randn(8, 3)), ValueError, r"lora_B must be \[8, 2\]"),
        (dict(b=torch.randn(7, 2)), ValueError, r"lora_B must be \[8, 2\]"),
        (dict(bias=torch.randn(9)), ValueError, r"bias must be \[8\]"),
        (dict(weight=torch.randn(8, 16, 1)), ValueError, "weight must be 2-D"),
        (dict(dropout=1.0), ValueError, r"dropout must be in \[0, 1\)"),
        (dict(dropout=-0.1), ValueError, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_input_is_a_clear_error(change, error, message):
    args = dict(x=torch.randn(3, 16), weight=torch.randn(8, 16), a=torch.randn(2, 16), b=torch.randn(8, 2),
                bias=torch.randn(8), dropout=0.0)
    args.update(change)
    with pytest.raises(error, match=message):
        loraops.lora_linear(args["x"], args["weight"], args["a"], args["b"], 1.0, args["bias"], args["dropout"])


def test_bad_nf4_weight():
    qw = loraops.nf4.quantize(torch.randn(4, 4, 8))
    with pytest.raises(ValueError, match="NF4 weight must be 2-D"):
        loraops.lora_linear(torch.randn(2, 8), qw, torch.randn(1, 8), torch.randn(4, 1), 1.0)
    with pytest.raises(TypeError, match="weight must be a tensor or an NF4Weight"):
        loraops.lora_linear(torch.randn(2, 8), [1.0], torch.randn(1, 8), torch.randn(4, 1), 1.0)
    qw = loraops.nf4.quantize(torch.randn(4, 8))
    with pytest.raises(ValueError, match="packed must hold"):
        torch.ops.loraops.lora_linear_nf4(torch.randn(2, 9), qw.packed, qw.absmax, qw.nested_absmax,
                                         qw.nested_code, qw.offset, 64, 256, [4, 9], None, torch.randn(1, 9),
                                         torch.randn(4, 1), 1.0, 0.0, 0)


def test_backward_checks_saved_shapes():
    x, w, a, b = torch.randn(3, 16), torch.randn(8, 16), torch.randn(2, 16), torch.randn(8, 2)
    with pytest.raises(ValueError, match=r"xa must be \[3, 2\]"):
        torch.ops.loraops.lora_linear_backward(torch.randn(3, 8), x, w, None, a, b, torch.randn(4, 2), 1.0, 0.0, 0,
                                               [True] * 5)
    with pytest.raises(ValueError, match="grad_out must be"):
        torch.ops.loraops.lora_linear_backward(torch.randn(3, 9), x, w, None, a, b, torch.randn(3, 2), 1.0, 0.0, 0,
                                               [True] * 5)


def saved_storage_bytes(fn):
    """Bytes of the storages autograd saves for backward while fn runs."""
    sizes = []

    def pack(t):
        sizes.append(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(sizes)


@pytest.mark.parametrize("nf4", [False, True])
def test_frozen_a_saves_xa_not_x(nf4):
    """LoRA-FA: with A frozen, the backward keeps x A^T (r columns), not x."""
    torch.manual_seed(3)
    x = torch.randn(256, 512, requires_grad=True)
    w = torch.randn(64, 512)
    base = loraops.nf4.quantize(w) if nf4 else w
    b = torch.randn(64, 4, requires_grad=True)
    frozen_a, trained_a = torch.randn(4, 512), torch.randn(4, 512, requires_grad=True)

    with_x = saved_storage_bytes(lambda: loraops.lora_linear(x, base, trained_a, b, 2.0, dropout=0.1))
    without_x = saved_storage_bytes(lambda: loraops.lora_linear(x, base, frozen_a, b, 2.0, dropout=0.1))
    assert with_x - without_x >= x.numel() * 4 - 64

    # and the gradients are the same as with x saved
    out = loraops.lora_linear(x, base, frozen_a, b, 2.0, dropout=0.1, seed=4)
    out.backward(torch.ones_like(out))
    gx, gb = x.grad.clone(), b.grad.clone()
    x.grad = b.grad = None
    a = frozen_a.clone().requires_grad_()
    out = loraops.lora_linear(x, base, a, b, 2.0, dropout=0.1, seed=4)
    out.backward(torch.ones_like(out))
    assert torch.equal(gx, x.grad) and torch.equal(gb, b.grad)


# ----------------------------------------------------------------------------- variants
@pytest.mark.parametrize("nf4", [False, True])
def test_vera_matches_reference(nf4):
    torch.manual_seed(6)
    x = torch.randn(2, 7, 48, requires_grad=True)
    w = torch.randn(20, 48) / 7
    base = loraops.nf4.quantize(w, blocksize=32) if nf4 else w
    dense = base.dequantize(torch.float32) if nf4 else w
    shared_a, shared_b = torch.randn(8, 48), torch.randn(20, 8)  # frozen, shared across layers
    d = torch.rand(8, requires_grad=True)
    b = torch.rand(20, requires_grad=True)
    bias = torch.randn(20)
    out = loraops.vera_linear(x, base, shared_a, shared_b, d, b, bias, dropout=0.2, seed=8)
    g = torch.randn(out.shape)
    out.backward(g)

    leaves = [t.detach().double().requires_grad_() for t in (x, d, b)]
    want = lora_linear_reference(leaves[0], dense.double(), shared_a.double() * leaves[1].unsqueeze(1),
                                 shared_b.double() * leaves[2].unsqueeze(1), 1.0, bias.double(), 0.2, 8)
    want.backward(g.double())
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-4)
    for got, ref in zip((x, d, b), leaves):
        torch.testing.assert_close(got.grad.double(), ref.grad, rtol=1e-4, atol=1e-4)
    assert shared_a.grad is None and shared_b.grad is None
    with pytest.raises(ValueError, match="lambda_d must be"):
        loraops.vera_linear(x, base, shared_a, shared_b, torch.rand(7), b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_multi_adapter_rows_get_their_own_adapter(dtype):
    torch.manual_seed(7)
    n, r, k, out_features = 3, 4, 40, 24
    x = torch.randn(2, 9, k).to(dtype)
    w = (torch.randn(out_features, k) / 6).to(dtype)
    a_stack, b_stack = torch.randn(n, r, k) / 6, torch.randn(n, out_features, r)
    index = torch.tensor([0, 2, -1, 1, 1, 0, 2, 2, -1] * 2)
    scales = torch.tensor([0.5, 2.0, 1.0])
    got = loraops.lora_linear_multi(x, w, a_stack, b_stack, index, scales, bias=torch.ones(out_features))
    rows = x.reshape(-1, k).double()
    want = rows @ w.double().t() + 1.0
    for i, adapter in enumerate(index.tolist()):
        if adapter >= 0:
            want[i] += scales[adapter].item() * (rows[i] @ a_stack[adapter].double().t()) @ b_stack[adapter].double().t()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got.double(), want.reshape(2, 9, out_features), **tol)


def test_multi_adapter_bad_input():
    x, w = torch.randn(4, 8), torch.randn(5, 8)
    a, b = torch.randn(2, 3, 8), torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="adapter_index must be in"):
        loraops.lora_linear_multi(x, w, a, b, torch.tensor([0, 1, 2, 0]), 1.0)
    with pytest.raises(ValueError, match="one per row"):
        loraops.lora_linear_multi(x, w, a, b, torch.tensor([0, 1]), 1.0)
    with pytest.raises(ValueError, match=r"lora_A must be \[n, r, 8\]"):
        loraops.lora_linear_multi(x, w, torch.randn(2, 3, 7), b, torch.zeros(4, dtype=torch.long), 1.0)


@pytest.mark.parametrize("nf4", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dora_matches_reference(nf4, dtype):
    torch.manual_seed(9)
    x = torch.randn(3, 5, 64).to(dtype).requires_grad_()
    w = (torch.randn(24, 64) / 8).to(dtype)
    base = loraops.nf4.quantize(w, blocksize=64) if nf4 else w
    dense = base.dequantize(torch.float32).double() if nf4 else w.double()
    a = (torch.randn(4, 64) / 8).requires_grad_()
    b = torch.randn(24, 4).requires_grad_()
    magnitude = (dense.norm(dim=1).float() * (1 + 0.1 * torch.randn(24))).requires_grad_()
    bias = torch.randn(24).to(dtype)
    out = loraops.dora_linear(x, base, a, b, magnitude, 0.5, bias)
    g = torch.randn(out.shape)
    out.backward(g.to(out.dtype))

    leaves = [t.detach().double().requires_grad_() for t in (x, a, b, magnitude)]
    xr, ar, br, mr = leaves
    norm = (dense + 0.5 * br @ ar).norm(dim=1).detach()  # the norm is a constant for the backward
    want = (mr / norm) * (xr @ dense.t() + 0.5 * (xr @ ar.t()) @ br.t()) + bias.double()
    want.backward(g.double())
    # fp32: accumulation error only. bf16: x, the output and the directional part
    # (x W^T + s x A^T B^T, which the backward multiplies by m/norm) are rounded to
    # bf16, so each gradient is good to a few bf16 ulps of its largest entries.
    def check(got, ref):
        if dtype == torch.float32:
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        else:
            torch.testing.assert_close(got, ref, rtol=2e-2, atol=2.0**-7 * ref.abs().max().item())

    check(out.double(), want)
    for got, ref in zip((x, a, b, magnitude), leaves):
        check(got.grad.double(), ref.grad)
    norm_got = loraops.lora.dora_weight_norm(base, a, b, 0.5).double()
    torch.testing.assert_close(norm_got, norm, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nf4", [False, True])
def test_autocast_casts_activations_and_base_weight(nf4):
    # As F.linear under autocast: fp32 x, W and bias run in the autocast dtype;
    # the adapters keep fp32 (the low-rank branch is fp32 anyway).
    torch.manual_seed(0)
    x = torch.randn(3, 5, 64, requires_grad=True)
    w = (torch.randn(32, 64) / 8).requires_grad_(not nf4)
    base = loraops.nf4.quantize(w.detach(), blocksize=64) if nf4 else w
    a, b = (torch.randn(4, 64) / 8).requires_grad_(), (torch.randn(32, 4) / 8).requires_grad_()
    bias = torch.randn(32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loraops.lora_linear(x, base, a, b, 2.0, bias)
    assert out.dtype == torch.bfloat16
    want = loraops.lora_linear(x.detach().bfloat16(), base if nf4 else w.detach().bfloat16(), a.detach(), b.detach(),
                               2.0, bias.detach().bfloat16())
    assert torch.equal(out, want)
    out.float().sum().backward()
    for t in (x, a, b, bias) + (() if nf4 else (w,)):
        assert t.grad is not None and t.grad.dtype == torch.float32
    # The op itself ignores autocast: its GEMMs keep the inputs' dtypes.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        direct, _ = torch.ops.loraops.lora_linear(x.detach(), w.detach(), None, a.detach(), b.detach(), 2.0, 0.0, 0)
    assert direct.dtype == torch.float32
    assert torch.equal(direct, torch.ops.loraops.lora_linear(x.detach(), w.detach(), None, a.detach(), b.detach(),
                                                             2.0, 0.0, 0)[0])
