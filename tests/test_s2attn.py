"""loraops.s2_attention (LongLoRA's S2-Attn) against a float64 brute force.

The brute force builds each head's attention mask straight from the definition
(segment ids or rolled positions) and is independent of the package's
references, which are checked against it too."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import loraops
from loraops.s2attn_reference import longlora_sdpa_peer, s2_attention_reference, s2_attention_roll_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Error allowed, relative to the largest magnitude of the float64 result: fp32
# compute, then rounding of the output (and, for gradients, of the saved output
# that the softmax backward reads) to the dtype.
OUT_TOL = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
GRAD_TOL = {torch.float32: 5e-5, torch.bfloat16: 4e-2, torch.float16: 6e-3}


# ----------------------------------------------------------------------------- brute force
def allowed_mask(n, heads, group, mode, causal):
    """[heads, query, key] bool: which keys each query of each head attends to."""
    i = torch.arange(n)
    masks = []
    for h in range(heads):
        shift = group // 2 if h >= heads // 2 and group < n else 0
        if mode == "roll":
            order = (i - shift) % n
            segment = order // group
        else:
            order = i
            segment = torch.div(i - shift, group, rounding_mode="floor")  # -1 before the shift
        mask = segment[:, None] == segment[None, :]
        if causal:
            mask &= order[None, :] <= order[:, None]
        masks.append(mask)
    return torch.stack(masks) if masks else torch.zeros(0, n, n, dtype=torch.bool)


def brute_force(q, k, v, group, mode="segments", causal=True, seqlens=None, scale=None):
    """float64 masked attention, sample by sample over each sample's own length."""
    bsz, n, heads, dim = q.shape
    scale = 1 / math.sqrt(dim) if scale is None else scale
    rep = heads // k.shape[2] if k.shape[2] else 1
    q, k, v = q.double(), k.double().repeat_interleave(rep, 2), v.double().repeat_interleave(rep, 2)
    rows = []
    for b in range(bsz):
        length = n if seqlens is None else int(seqlens[b])
        scores = torch.einsum("nhd,mhd->hnm", q[b, :length], k[b, :length]) * scale
        scores = scores.masked_fill(~allowed_mask(length, heads, group, mode, causal), -math.inf)
        out = torch.einsum("hnm,mhd->nhd", scores.softmax(-1), v[b, :length])
        rows.append(torch.cat([out, out.new_zeros(n - length, heads, dim)]))
    return torch.stack(rows) if rows else q.new_zeros(q.shape)


def assert_close(actual, expected, tol, what):
    bound = tol * max(1.0, expected.abs().max().item()) if expected.numel() else 0.0
    err = (actual.double() - expected).abs().max().item() if expected.numel() else 0.0
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def same_layout(a, b):
    return all(x == y for x, y, size in zip(a.stride(), b.stride(), a.shape) if size > 1)


def make_inputs(bsz, n, heads, kv_heads, dim, dtype, layout="bnhd", seed=0):
    gen = torch.Generator().manual_seed(seed)

    def tensor(h):
        if layout == "bhnd":  # [B, H, N, D] storage seen as [B, N, H, D]: what attention modules pass
            return torch.randn(bsz, h, n, dim, generator=gen).to(dtype).transpose(1, 2)
        return torch.randn(bsz, n, h, dim, generator=gen).to(dtype)

    return tensor(heads), tensor(kv_heads), tensor(kv_heads)


def check_against_brute_force(q, k, v, group, mode, causal, seqlens, dtype):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = loraops.s2_attention(*leaves, group, mode=mode, causal=causal, seqlens=seqlens)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    out.backward(grad)

    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = brute_force(*ref_leaves, group, mode, causal, seqlens)
    ref.backward(grad.double())
    assert_close(out, ref, OUT_TOL[dtype], "out")
    for name, leaf, ref_leaf in zip("qkv", leaves, ref_leaves):
        assert leaf.grad.shape == leaf.shape and same_layout(leaf.grad, leaf)
        assert_close(leaf.grad, ref_leaf.grad, GRAD_TOL[dtype], f"d{name}")
    if seqlens is not None:  # padding: exact zeros out and in
        for b, length in enumerate(seqlens.tolist()):
            for t in (out, *(leaf.grad for leaf in leaves)):
                assert not t[b, length:].any()


# ----------------------------------------------------------------------------- hypothesis
@st.composite
def s2_cases(draw, max_n=70):
    bsz = draw(st.integers(1, 3))
    n = draw(st.integers(0, max_n))
    kv_heads = draw(st.integers(1, 3))
    heads = kv_heads * draw(st.integers(1, 3))
    dim = draw(st.sampled_from([1, 3, 8, 16, 33]))
    group = draw(st.one_of(st.integers(1, 12), st.integers(1, max_n + 20)))  # odd, even, >= n
    seqlens = draw(st.one_of(st.none(), st.lists(st.integers(0, n), min_size=bsz, max_size=bsz)))
    return dict(bsz=bsz, n=n, heads=heads, kv_heads=kv_heads, dim=dim, group=group,
                mode=draw(st.sampled_from(["segments", "roll"])), causal=draw(st.booleans()),
                seqlens=None if seqlens is None else torch.tensor(seqlens),
                dtype=draw(st.sampled_from(DTYPES)), layout=draw(st.sampled_from(["bnhd", "bhnd"])),
                seed=draw(st.integers(0, 2**16)))


def run_case(case):
    q, k, v = make_inputs(case["bsz"], case["n"], case["heads"], case["kv_heads"], case["dim"], case["dtype"],
                          case["layout"], case["seed"])
    check_against_brute_force(q, k, v, case["group"], case["mode"], case["causal"], case["seqlens"], case["dtype"])


@given(s2_cases())
def test_matches_brute_force(case):
    run_case(case)


@settings(max_examples=15)
@given(s2_cases(max_n=300))
def test_matches_brute_force_across_blocks(case):
    # Sequences past the kernel's 64-query and 128-key blocks.
    run_case(case)


@given(s2_cases())
def test_references_match_brute_force(case):
    q, k, v = (t.double() for t in make_inputs(case["bsz"], case["n"], case["heads"], case["kv_heads"], case["dim"],
                                                torch.float64, seed=case["seed"]))
    expected = brute_force(q, k, v, case["group"], case["mode"], case["causal"], case["seqlens"])
    actual = s2_attention_reference(q, k, v, case["group"], mode=case["mode"], causal=case["causal"],
                                    seqlens=case["seqlens"])
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("group", [4, 5, 7])
def test_longlora_peer_is_the_roll_reference(group):
    n = group * 6
    q, k, v = make_inputs(2, n, 4, 4, 8, torch.float64)
    torch.testing.assert_close(longlora_sdpa_peer(q, k, v, group),
                               s2_attention_roll_reference(q, k, v, group))


def test_odd_group_rolls_back_to_the_same_positions():
    # Rolling by -(G+1)/2 and back by (G-1)/2 leaves the output one token off.
    q, k, v = make_inputs(1, 30, 2, 2, 8, torch.float32)
    out = loraops.s2_attention(q, k, v, 7, mode="roll")
    assert_close(out, brute_force(q, k, v, 7, "roll"), OUT_TOL[torch.float32], "out")
    # Query 0 of the shifted head is the last of its rolled group: it sees the
    # group's other tokens, which come first in the rolled order: (0-3) mod 30 = 27.
    mask = allowed_mask(30, 2, 7, "roll", True)[1]
    assert mask[0].nonzero().flatten().tolist() == [0, 24, 25, 26, 27, 28, 29][:mask[0].sum()]


@pytest.mark.parametrize("mode", ["segments", "roll"])
def test_group_at_least_n_is_causal_attention(mode):
    q, k, v = make_inputs(2, 50, 4, 2, 16, torch.float32)
    expected = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.repeat_interleave(2, 2).transpose(1, 2), v.repeat_interleave(2, 2).transpose(1, 2),
        is_causal=True).transpose(1, 2)
    for group in (50, 51, 1000):
        torch.testing.assert_close(loraops.s2_attention(q, k, v, group, mode=mode), expected, rtol=1e-5, atol=1e-5)


def test_segments_mode_never_sees_the_future():
    q, k, v = make_inputs(1, 100, 4, 4, 8, torch.float32)
    out = loraops.s2_attention(q, k, v, 24)
    for t in (0, 11, 12, 13, 50, 98):
        k2, v2 = k.clone(), v.clone()
        k2[:, t + 1:] += 3.0
        v2[:, t + 1:] -= 5.0
        torch.testing.assert_close(loraops.s2_attention(q, k2, v2, 24)[:, :t + 1], out[:, :t + 1], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["segments", "roll"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_padded_samples_equal_their_truncated_selves(mode, dtype):
    # Unequal lengths in one batch: each sample as if alone, in the right order.
    lengths = [90, 7, 0, 61]
    q, k, v = make_inputs(4, 90, 4, 2, 16, dtype, seed=3)
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    out = loraops.s2_attention(q, k, v, 20, mode=mode, seqlens=seqlens)
    for b, n in enumerate(lengths):
        alone = loraops.s2_attention(q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n], 20, mode=mode)
        torch.testing.assert_close(out[b:b + 1, :n], alone, rtol=0, atol=0)
        assert not out[b, n:].any()


def test_gqa_with_shifted_and_unshifted_heads_on_one_kv_head():
    # One kv head serves both halves: its dK/dV add up over two passes.
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v = make_inputs(2, 150, 6, 1, 24, dtype, seed=5)
        check_against_brute_force(q, k, v, 40, "segments", True, torch.tensor([150, 77]), dtype)


@pytest.mark.parametrize("dim", [128, 256])
def test_large_head_dims(dim):
    q, k, v = make_inputs(1, 150, 2, 1, dim, torch.float32, seed=2)
    check_against_brute_force(q, k, v, 64, "roll", True, None, torch.float32)


def test_results_do_not_depend_on_the_thread_count():
    q, k, v = make_inputs(2, 260, 8, 4, 32, torch.float32, seed=4)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, max(2, threads)):
            torch.set_num_threads(count)
            out = loraops.s2_attention(*leaves, 60)
            grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
            results.append((out, *grads))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(0, 10, 2, 8), (2, 0, 2, 8), (2, 10, 0, 8)])
def test_empty_tensors(shape):
    q = torch.randn(shape, requires_grad=True)
    k = torch.randn(shape[0], shape[1], 1 if shape[2] else 0, shape[3], requires_grad=True)
    v = torch.randn(k.shape, requires_grad=True)
    out = loraops.s2_attention(q, k, v, 4)
    assert out.shape == q.shape
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape


def test_custom_scale_and_non_causal():
    q, k, v = make_inputs(2, 40, 2, 2, 8, torch.float32)
    out = loraops.s2_attention(q, k, v, 9, causal=False, scale=0.3)
    assert_close(out, brute_force(q, k, v, 9, "segments", False, None, 0.3), OUT_TOL[torch.float32], "out")


# ----------------------------------------------------------------------------- torch integration
@pytest.mark.filterwarnings("ignore:Input #.* is not a double precision")
def test_gradcheck_small():
    q, k, v = (t.requires_grad_() for t in make_inputs(1, 9, 2, 1, 4, torch.float32))
    fn = lambda q, k, v: loraops.s2_attention(q, k, v, 4, mode="roll", seqlens=torch.tensor([8]))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-2, atol=1e-2, rtol=1e-2)


def test_opcheck():
    q, k, v = (t.requires_grad_() for t in make_inputs(2, 20, 4, 2, 8, torch.float32))
    seqlens = torch.tensor([20, 13])
    args = (q, k, v, 6, "segments", True, seqlens, None)
    torch.library.opcheck(torch.ops.loraops.s2_attention.default, args)
    out, lse = torch.ops.loraops.s2_attention(*args)
    plain = [t.detach() for t in (q, k, v)]
    back = (torch.randn_like(out), *plain, out.detach(), lse, 6, "segments", True, seqlens, None)
    torch.library.opcheck(torch.ops.loraops.s2_attention_backward.default, back)


def test_torch_compile():
    q, k, v = (t.requires_grad_() for t in make_inputs(1, 32, 2, 2, 8, torch.float32))

    def block(q, k, v):
        return (loraops.s2_attention(q, k, v, 8) * 2).sum()

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    expected = torch.autograd.grad(block(q, k, v), (q, k, v))
    actual = torch.autograd.grad(compiled(q, k, v), (q, k, v))
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- bad input
def _args(**over):
    q, k, v = make_inputs(2, 10, 4, 2, 8, torch.float32)
    args = dict(q=q, k=k, v=v, group_size=4, mode="segments", causal=True, seqlens=None, scale=None)
    args.update(over)
    return args


@pytest.mark.parametrize("over, error, match", [
    (dict(q=torch.randn(2, 10, 32)), ValueError, "q must be 4-D"),
    (dict(k=torch.randn(2, 10, 3, 8), v=torch.randn(2, 10, 3, 8)), ValueError, "multiple of"),
    (dict(k=torch.randn(2, 11, 2, 8), v=torch.randn(2, 11, 2, 8)), ValueError, "k must be"),
    (dict(v=torch.randn(2, 10, 2, 9)), ValueError, "same shape"),
    (dict(k=torch.randn(2, 10, 2, 8, dtype=torch.float64)), TypeError, "float32, bfloat16 or float16"),
    (dict(q=torch.randn(2, 10, 4, 8).bfloat16()), TypeError, "one dtype"),
    (dict(q=torch.randn(2, 10, 4, 0), k=torch.randn(2, 10, 2, 0), v=torch.randn(2, 10, 2, 0)), ValueError,
     "head_dim"),
    (dict(group_size=0), ValueError, "group_size"),
    (dict(mode="shift"), ValueError, "mode"),
    (dict(seqlens=torch.tensor([10])), ValueError, "seqlens must be 1-D of size batch"),
    (dict(seqlens=torch.tensor([10, 11])), ValueError, r"seqlens\[1\] = 11"),
    (dict(seqlens=torch.tensor([10, -1])), ValueError, "outside"),
    (dict(seqlens=torch.tensor([10.0, 2.0])), TypeError, "int32 or int64"),
    (dict(scale=float("nan")), ValueError, "scale must be a finite float32 value"),
])
def test_bad_input(over, error, match):
    a = _args(**over)
    with pytest.raises(error, match=match):
        loraops.s2_attention(a["q"], a["k"], a["v"], a["group_size"], mode=a["mode"], causal=a["causal"],
                             seqlens=a["seqlens"], scale=a["scale"])


def test_bad_input_to_the_op_itself():
    # Past the Python wrapper's own checks: the C++ op names the problem too.
    q, k, v = make_inputs(2, 10, 4, 2, 8, torch.float32)
    with pytest.raises(ValueError, match="mode must be"):
        torch.ops.loraops.s2_attention(q, k, v, 4, "shift", True, None, None)
    out, lse = torch.ops.loraops.s2_attention(q, k, v, 4, "roll", True, None, None)
    with pytest.raises(ValueError, match="grad_out must have q's shape"):
        torch.ops.loraops.s2_attention_backward(out[:, :5], q, k, v, out, lse, 4, "roll", True, None, None)
    with pytest.raises(ValueError, match=r"lse must be \[batch, heads, seq\]"):
        torch.ops.loraops.s2_attention_backward(out, q, k, v, out, lse[:, :2], 4, "roll", True, None, None)


def test_autocast_casts_q_k_v():
    # As F.scaled_dot_product_attention under autocast: fp32 inputs run in bf16.
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 40, 4, 16, requires_grad=True) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loraops.s2_attention(q, k, v, 16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, loraops.s2_attention(q.detach().bfloat16(), k.detach().bfloat16(),
                                                 v.detach().bfloat16(), 16))
    out.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in (q, k, v))


def test_devices_without_a_kernel_fall_back_to_the_reference(monkeypatch):
    # As on a CUDA device today: the PyTorch reference, differentiable, and a warning once.
    import loraops.s2attn as s2attn
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 40, 4, 16, requires_grad=True) for _ in range(3))
    seqlens = torch.tensor([40, 23])
    want = loraops.s2_attention(q, k, v, 16, seqlens=seqlens)
    want.sum().backward()
    want_grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    monkeypatch.setattr(s2attn, "_DEVICES_WITH_KERNEL", set())
    monkeypatch.setattr(s2attn, "_warned_fallback", set())
    with pytest.warns(UserWarning, match="no cpu kernel for s2_attention"):
        got = loraops.s2_attention(q, k, v, 16, seqlens=seqlens)
    got.sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for t, g in zip((q, k, v), want_grads):
        torch.testing.assert_close(t.grad, g, rtol=1e-4, atol=1e-5)


def test_the_reference_refuses_lengths_the_op_refuses(monkeypatch):
    # Compiled, the transformers integration marks a sample that is not right
    # padded with length -1 for the op to refuse; the fallback must refuse it too.
    import loraops.s2attn as s2attn
    monkeypatch.setattr(s2attn, "_DEVICES_WITH_KERNEL", set())
    monkeypatch.setattr(s2attn, "_warned_fallback", {"cpu"})
    q, k, v = make_inputs(2, 10, 4, 2, 8, torch.float32)
    for seqlens in (torch.tensor([10, -1]), torch.tensor([11, 10])):
        with pytest.raises(ValueError, match=r"seqlens\[\d\] = -?\d+ is outside \[0, 10\]"):
            loraops.s2_attention(q, k, v, 4, seqlens=seqlens)


def test_the_cpu_has_its_kernel():
    import loraops.s2attn as s2attn
    assert "cpu" in s2attn._DEVICES_WITH_KERNEL and "cpu" in s2attn._DEVICES_WITH_BACKWARD


@pytest.mark.parametrize("mode", ["segments", "roll"])
def test_reference_gradients_for_devices_without_a_backward_kernel(mode):
    # What a device with a forward kernel but no backward kernel runs: the reference's gradients.
    import loraops.s2attn as s2attn
    q, k, v = make_inputs(2, 40, 4, 2, 16, torch.float32, seed=2)
    seqlens = torch.tensor([40, 23])
    out, lse = torch.ops.loraops.s2_attention(q, k, v, 10, mode, True, seqlens, None)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    expected = torch.ops.loraops.s2_attention_backward(grad, q, k, v, out, lse, 10, mode, True, seqlens, None)
    for got, want in zip(s2attn._reference_gradients(grad, q, k, v, 10, mode, True, seqlens, None), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
