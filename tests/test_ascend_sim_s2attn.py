"""The Ascend C S2-Attn forward and backward (kernels/ascend/s2attn) run in the
CPU emulation (kernels/ascend/sim) through _ascend_sim_s2_attention and
_ascend_sim_s2_attention_backward, which have the ops' schemas and run the NPU
ops' host side: outputs, log-sum-exp and the three gradients against float64
brute force on Hypothesis shapes past the kernels' 64-query and 128-key
blocks, both modes, GQA, padding, strided and transposed inputs.

Needs a build with LORAOPS_ASCEND_SIM=ON; elsewhere these tests skip, unless
LORAOPS_REQUIRE_ASCEND_SIM=1 makes that an error."""

import math
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

import loraops

from test_s2attn import allowed_mask, brute_force, make_inputs

if "ascend_sim" not in loraops.build_info()["backends"]:
    if os.environ.get("LORAOPS_REQUIRE_ASCEND_SIM") == "1":
        raise RuntimeError("this loraops build has no Ascend emulation: build with -C cmake.define.LORAOPS_ASCEND_SIM=ON")
    pytest.skip("loraops was built without LORAOPS_ASCEND_SIM", allow_module_level=True)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Unit roundoff of the dtype P is rounded to before the P V product (the input
# dtype, as flash attention does; fp32 inputs keep P in fp32).
P_ROUNDING = {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def sim_s2(q, k, v, group, mode="segments", causal=True, seqlens=None, scale=None):
    return torch.ops.loraops._ascend_sim_s2_attention(q, k, v, group, mode, causal, seqlens, scale)


def brute_force_lse(q, k, group, mode, causal, seqlens):
    """[B, H, N] float64 log-sum-exp of each query's allowed scores; padded positions 0 (as the CPU op)."""
    bsz, n, heads, dim = q.shape
    rep = heads // k.shape[2]
    q, k = q.double(), k.double().repeat_interleave(rep, 2)
    lse = torch.zeros(bsz, heads, n, dtype=torch.float64)
    for b in range(bsz):
        length = n if seqlens is None else int(seqlens[b])
        scores = torch.einsum("nhd,mhd->hnm", q[b, :length], k[b, :length]) / math.sqrt(dim)
        scores = scores.masked_fill(~allowed_mask(length, heads, group, mode, causal), -math.inf)
        lse[b, :, :length] = scores.logsumexp(-1)
    return lse


def check(q, k, v, group, mode, causal, seqlens, dtype):
    out, lse = sim_s2(q, k, v, group, mode, causal, seqlens)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == torch.float32
    ref = brute_force(q, k, v, group, mode, causal, seqlens)
    # out: P rounded to the dtype moves each output by at most u sum_j p_j |v_j| <= u max|v|, the output's
    # own rounding by u max|out|; fp32 sums and exp add a few ulps of fp32 (2e-5 relative, as the CPU op's).
    u = P_ROUNDING[dtype]
    vmax = v.double().abs().max().item() if v.numel() else 0.0
    rmax = ref.abs().max().item() if ref.numel() else 0.0
    bound = u * (vmax + rmax) + 2e-5 * max(1.0, rmax)
    err = (out.double() - ref).abs().max().item() if ref.numel() else 0.0
    assert err <= bound, f"out: max error {err:.3g} > {bound:.3g}"
    # lse: fp32 scores of exactly representable inputs, fp32 exp, ln: 1e-5 relative.
    ref_lse = brute_force_lse(q, k, group, mode, causal, seqlens)
    if ref_lse.numel():
        lse_err = (lse.double() - ref_lse).abs().max().item()
        assert lse_err <= 1e-5 * max(1.0, ref_lse.abs().max().item()), f"lse: max error {lse_err:.3g}"
    if seqlens is not None:  # padded rows: exact zeros, lse 0 as the CPU op writes
        for b, length in enumerate(seqlens.tolist()):
            assert not out[b, length:].any() and not lse[b, :, length:].any()
    return out, lse


@st.composite
def cases(draw):
    bsz = draw(st.integers(1, 2))
    n = draw(st.one_of(st.integers(0, 70), st.integers(120, 200)))  # across the 64-query and 128-key blocks
    kv_heads = draw(st.integers(1, 2))
    heads = kv_heads * draw(st.integers(1, 2))
    group = draw(st.one_of(st.integers(1, 12), st.integers(1, n + 20)))  # odd, even, >= n
    seqlens = draw(st.one_of(st.none(), st.lists(st.integers(0, n), min_size=bsz, max_size=bsz)))
    return dict(bsz=bsz, n=n, heads=heads, kv_heads=kv_heads, dim=draw(st.sampled_from([64, 128, 33, 1])),
                group=group, mode=draw(st.sampled_from(["segments", "roll"])), causal=draw(st.booleans()),
                seqlens=None if seqlens is None else torch.tensor(seqlens), dtype=draw(st.sampled_from(DTYPES)),
                layout=draw(st.sampled_from(["bnhd", "bhnd"])), seed=draw(st.integers(0, 2**16)))


@settings(max_examples=80, deadline=None)
@given(cases())
def test_forward_matches_brute_force(case):
    q, k, v = make_inputs(case["bsz"], case["n"], case["heads"], case["kv_heads"], case["dim"], case["dtype"],
                          case["layout"], case["seed"])
    check(q, k, v, case["group"], case["mode"], case["causal"], case["seqlens"], case["dtype"])


@pytest.mark.parametrize("mode", ["segments", "roll"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lse_and_out_match_the_cpu_op(mode, dtype):
    # A wrapping roll segment split across a query block and a key block, GQA, padding, head_dim 256.
    q, k, v = make_inputs(2, 150, 4, 2, 256, dtype, seed=5)
    seqlens = torch.tensor([150, 131])
    out, lse = check(q, k, v, 96, mode, True, seqlens, dtype)
    cpu_out, cpu_lse = torch.ops.loraops.s2_attention(q, k, v, 96, mode, True, seqlens, None)
    torch.testing.assert_close(lse, cpu_lse, rtol=1e-5, atol=1e-5)
    assert (out.float() - cpu_out.float()).abs().max() <= 4 * P_ROUNDING[dtype] * v.abs().max()


def test_strided_views_are_read_in_place_or_made_loadable():
    # q a slice of a wider tensor (rows 3 H D apart), k with head_dim strided (made contiguous for the cube),
    # v transposed [B, H, N, D] storage.
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 140, 3 * 4, 64, generator=gen).to(torch.bfloat16)[:, :, 4:8]
    k = torch.randn(2, 140, 2, 128, generator=gen).to(torch.bfloat16)[..., ::2]
    v = torch.randn(2, 2, 140, 64, generator=gen).to(torch.bfloat16).transpose(1, 2)
    assert not q.is_contiguous() and k.stride(3) == 2 and not v.is_contiguous()
    for mode in ("segments", "roll"):
        out, _ = check(q, k, v, 50, mode, True, None, torch.bfloat16)
        contiguous, _ = sim_s2(q.contiguous(), k.contiguous(), v.contiguous(), 50, mode)
        assert torch.equal(out, contiguous)


def test_segments_mode_never_sees_the_future():
    q, k, v = make_inputs(1, 140, 4, 2, 64, torch.float32)
    out, _ = sim_s2(q, k, v, 48)
    for t in (0, 23, 24, 70, 130):
        k2, v2 = k.clone(), v.clone()
        k2[:, t + 1:] += 3.0
        v2[:, t + 1:] -= 5.0
        torch.testing.assert_close(sim_s2(q, k2, v2, 48)[0][:, :t + 1], out[:, :t + 1], rtol=0, atol=0)


def test_head_dim_over_256_is_refused():
    q, k, v = make_inputs(1, 8, 2, 2, 257, torch.bfloat16)
    with pytest.raises(ValueError, match="head_dim must be at most 256, got 257"):
        sim_s2(q, k, v, 4)


def test_work_is_spread_over_the_cores():
    torch.ops.loraops._ascend_sim_launch_log(True)
    q, k, v = make_inputs(1, 200, 4, 4, 64, torch.bfloat16)
    sim_s2(q, k, v, 64)
    import json
    (launch,) = json.loads(torch.ops.loraops._ascend_sim_launch_log(True))
    assert launch["kernel"] == "loraops_s2attn_forward" and launch["core_type"] == "mix"
    assert launch["block_dim"] == 3 and launch["cube_cores_busy"] == 3


# ----------------------------------------------------------------------------- backward
def sim_s2_backward(grad, q, k, v, out, lse, group, mode="segments", causal=True, seqlens=None, scale=None):
    return torch.ops.loraops._ascend_sim_s2_attention_backward(grad, q, k, v, out, lse, group, mode, causal, seqlens,
                                                              scale)


def brute_force_backward(q, k, v, grad, out, group, mode, causal, seqlens):
    """float64 dq, dk, dv of the backward's definition, and for each element the sum of the magnitudes of its
    terms (A, the error bound's scale). P from q and k; D = rowsum(dO out) from the out passed in (as every
    backward takes it); dS = P (dP - D); dq = scale dS k, dk = scale dS^T q, dv = P^T dO, dk and dv summed over
    the query heads of a kv head; padded positions 0."""
    bsz, n, heads, dim = q.shape
    kv_heads = k.shape[2]
    rep = heads // kv_heads if kv_heads else 1
    scale = 1 / math.sqrt(dim)
    q, g, o = q.double(), grad.double(), out.double()
    k, v = k.double().repeat_interleave(rep, 2), v.double().repeat_interleave(rep, 2)
    grads = [torch.zeros(bsz, n, h, dim, dtype=torch.float64) for h in (heads, kv_heads, kv_heads)]
    mags = [torch.zeros_like(t) for t in grads]
    for b in range(bsz):
        length = n if seqlens is None else int(seqlens[b])
        if length == 0 or heads == 0:
            continue
        qb, kb, vb, gb, ob = q[b, :length], k[b, :length], v[b, :length], g[b, :length], o[b, :length]
        scores = torch.einsum("nhd,mhd->hnm", qb, kb) * scale
        p = scores.masked_fill(~allowed_mask(length, heads, group, mode, causal), -math.inf).softmax(-1)
        dp = torch.einsum("nhd,mhd->hnm", gb, vb)
        di = (gb * ob).sum(-1).transpose(0, 1)[..., None]  # [H, N, 1]
        ds, w = p * (dp - di), p * (dp.abs() + di.abs())
        per_head = [
            (scale * torch.einsum("hnm,mhd->nhd", ds, kb), scale * torch.einsum("hnm,mhd->nhd", w, kb.abs())),
            (scale * torch.einsum("hnm,nhd->mhd", ds, qb), scale * torch.einsum("hnm,nhd->mhd", w, qb.abs())),
            (torch.einsum("hnm,nhd->mhd", p, gb), torch.einsum("hnm,nhd->mhd", p, gb.abs())),
        ]
        for i, (grad_h, mag_h) in enumerate(per_head):
            if i > 0:  # sum over the query heads sharing a kv head
                grad_h = grad_h.reshape(length, kv_heads, rep, dim).sum(2)
                mag_h = mag_h.reshape(length, kv_heads, rep, dim).sum(2)
            grads[i][b, :length] = grad_h
            mags[i][b, :length] = mag_h
    return grads, mags


def check_backward(q, k, v, group, mode, causal, seqlens, dtype, seed=7):
    out, lse = sim_s2(q, k, v, group, mode, causal, seqlens)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    got = sim_s2_backward(grad, q, k, v, out, lse, group, mode, causal, seqlens)
    refs, mags = brute_force_backward(q, k, v, grad, out, group, mode, causal, seqlens)
    # Per element, A its terms' magnitudes (brute_force_backward): P and dS rounded to the dtype before the
    # cube's products move dv and dq, dk by u A each; the gradient's own rounding by u |grad| <= u A; so 2u A,
    # bounded by 3u A (1.4u seen). fp32 sums, exp and the saved lse: 2e-5 relative, on A plus 1e-3 of its
    # largest (where the terms cancel). fp32 inputs keep P and dS in fp32 (u = 0).
    u = P_ROUNDING[dtype]
    for name, t, x, ref, mag in zip("qkv", got, (q, k, v), refs, mags):
        assert t.shape == x.shape and t.dtype == dtype, f"d{name}: {t.shape} {t.dtype}"
        if seqlens is not None:  # padded positions: exactly zero
            for b, length in enumerate(seqlens.tolist()):
                assert not t[b, length:].any(), f"d{name}: padded rows not zero"
        if not ref.numel():
            continue
        bound = (3 * u + 2e-5) * (mag + 1e-3 * mag.max())
        excess = ((t.double() - ref).abs() - bound).max().item()
        assert excess <= 0, f"d{name}: an error exceeds its bound by {excess:.3g}"
    return got, grad, out, lse


@settings(max_examples=80, deadline=None)
@given(cases())
def test_backward_matches_brute_force(case):
    q, k, v = make_inputs(case["bsz"], case["n"], case["heads"], case["kv_heads"], case["dim"], case["dtype"],
                          case["layout"], case["seed"])
    check_backward(q, k, v, case["group"], case["mode"], case["causal"], case["seqlens"], case["dtype"])


@pytest.mark.parametrize("mode", ["segments", "roll"])
def test_backward_gqa_padding_head_dim_256_against_the_cpu_op(mode):
    # Four query heads on one kv head, two unshifted and two shifted (whose segments differ, so dK and dV
    # sum over both segment plans), a wrapping roll segment, padding.
    q, k, v = make_inputs(2, 150, 4, 1, 256, torch.bfloat16, seed=5)
    seqlens = torch.tensor([150, 131])
    got, grad, out, lse = check_backward(q, k, v, 96, mode, False, seqlens, torch.bfloat16)
    cpu = torch.ops.loraops.s2_attention_backward(grad, q, k, v, out, lse, 96, mode, False, seqlens, None)
    # Both round the gradient (u each); the kernel also rounds P and dS (1.7u of the largest seen).
    for name, t, c in zip("qkv", got, cpu):
        assert c.dtype == t.dtype == torch.bfloat16
        largest = c.float().abs().max().item()
        assert (t.float() - c.float()).abs().max().item() <= 4 * P_ROUNDING[torch.bfloat16] * largest, f"d{name}"


def test_backward_reads_strided_views_in_place():
    # q a slice of a wider tensor, k with head_dim strided (made contiguous for the cube), v and grad_out
    # transposed [B, H, N, D] storage; odd head_dim; the gradients equal those of contiguous copies.
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 140, 3 * 4, 33, generator=gen).to(torch.float16)[:, :, 4:8]
    k = torch.randn(2, 140, 2, 66, generator=gen).to(torch.float16)[..., ::2]
    v = torch.randn(2, 2, 140, 33, generator=gen).to(torch.float16).transpose(1, 2)
    for mode in ("segments", "roll"):
        got, grad, out, lse = check_backward(q, k, v, 50, mode, True, None, torch.float16)
        grad_t = grad.transpose(1, 2).contiguous().transpose(1, 2)
        strided = sim_s2_backward(grad_t, q, k, v, out, lse, 50, mode)
        contiguous = sim_s2_backward(grad, q.contiguous(), k.contiguous(), v.contiguous(), out, lse, 50, mode)
        for a, b, c in zip(got, strided, contiguous):
            assert torch.equal(a, b) and torch.equal(a, c)


def test_backward_fp32_gqa_causal_one_group():
    # G >= N (plain causal attention), fp32 (P and dS kept in fp32), three query heads per kv head.
    q, k, v = make_inputs(1, 131, 6, 2, 64, torch.float32, seed=3)
    check_backward(q, k, v, 200, "segments", True, torch.tensor([129]), torch.float32)


def test_backward_runs_one_mix_launch():
    torch.ops.loraops._ascend_sim_launch_log(True)
    q, k, v = make_inputs(1, 200, 4, 4, 64, torch.bfloat16)
    out, lse = sim_s2(q, k, v, 64)
    torch.ops.loraops._ascend_sim_launch_log(True)
    sim_s2_backward(torch.ones_like(out), q, k, v, out, lse, 64)
    import json
    (launch,) = json.loads(torch.ops.loraops._ascend_sim_launch_log(True))
    assert launch["kernel"] == "loraops_s2attn_backward" and launch["core_type"] == "mix"
    assert launch["block_dim"] == 3 and launch["cube_cores_busy"] == 3
