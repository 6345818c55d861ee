"""NF4 against bitsandbytes itself: same bytes, same scales, same values, and
state dicts that load both ways."""

import warnings

import pytest
import torch
from hypothesis import given, strategies as st

import loraops
from loraops.nf4 import NF4Weight
from loraops.nf4_reference import NF4_CODE, dynamic_code

from conftest import require_peer
from strategies import BLOCKSIZES, DTYPES, float_tensors, nf4_cases, shapes

bnb = require_peer("bitsandbytes")
import bitsandbytes.functional as BF  # noqa: E402

# bitsandbytes' CPU dequantize falls back to a torch.compile'd function for some
# shapes, recompiling per shape: slow and noisy, and not what is being tested.
torch._dynamo.config.recompile_limit = 1
warnings.filterwarnings("ignore", module="torch._dynamo")


def bnb_quantize(w, blocksize, double_quant):
    return BF.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=double_quant)


def bnb_default_quantize_blockwise(a, code, blocksize):
    """bitsandbytes' reference (pure-PyTorch "default" backend) blockwise quantizer,
    called directly: on CPU the op otherwise routes to its C++ kernel."""
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    return torch.ops.bitsandbytes.quantize_blockwise.default.redispatch(keys, a, code, blocksize)


def bnb_reference_dequantize(packed, state, dtype):
    """bitsandbytes' reference (pure-PyTorch) 4-bit dequantization of a state."""
    absmax = state.absmax
    if state.nested:
        absmax = BF.dequantize_blockwise(state.absmax, state.state2) + state.offset
    keys = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
    return torch.ops.bitsandbytes.dequantize_4bit.default.redispatch(
        keys, packed, absmax.float(), state.blocksize, "nf4", state.shape, dtype
    )


def rows_hold_whole_blocks(shape, blocksize):
    # bitsandbytes 0.50's CPU dequantize kernel is wrong when a block spans two
    # rows (last dim not a multiple of the blocksize); its reference path is right
    return len(shape) == 1 or shape[-1] % blocksize == 0


def bnb_state_dict(packed, state, prefix=""):
    sd = {f"{prefix}weight": packed}
    sd.update({f"{prefix}weight.{k}": v for k, v in state.as_dict(packed=True).items()})
    return sd


def nonempty_shapes():
    # bitsandbytes cannot quantize an empty tensor (the mean of no scales is NaN)
    # and its CPU dequantize indexes shape[-1], so 0-dim tensors are ours alone
    return shapes(max_numel=4000).filter(lambda s: len(s) >= 1 and all(d > 0 for d in s))


def test_codes_equal_bitsandbytes_tables():
    assert torch.equal(BF.get_4bit_type("nf4", device="cpu"), NF4_CODE)
    assert torch.equal(BF.create_dynamic_map(), dynamic_code())


@given(data=st.data())
def test_same_packed_bytes_and_scales(data):
    shape = data.draw(nonempty_shapes())
    dtype = data.draw(st.sampled_from(DTYPES))
    blocksize = data.draw(st.sampled_from(BLOCKSIZES))
    w = data.draw(float_tensors(shape, dtype))

    packed, state = bnb_quantize(w, blocksize, False)
    qw = loraops.nf4.quantize(w, blocksize=blocksize, double_quant=False)
    assert torch.equal(qw.packed, packed.reshape(-1))
    assert torch.equal(qw.absmax, state.absmax)

    packed, state = bnb_quantize(w, blocksize, True)
    qw = loraops.nf4.quantize(w, blocksize=blocksize, double_quant=True)
    assert torch.equal(qw.packed, packed.reshape(-1))
    if not torch.isfinite(state.offset):
        # scales near the fp32 maximum overflow bitsandbytes' fp32 mean; ours
        # falls back to a float64 mean and stays usable
        assert torch.isfinite(qw.offset) and torch.isfinite(qw.dequantize()).all()
        return
    assert torch.equal(qw.offset, state.offset)
    assert torch.equal(qw.nested_absmax, state.state2.absmax)
    # The absmax codes equal bitsandbytes' reference quantizer exactly ...
    fp32_absmax = bnb_quantize(w, blocksize, False)[1].absmax
    ref_codes, _ = bnb_default_quantize_blockwise(fp32_absmax - state.offset, dynamic_code(), 256)
    assert torch.equal(qw.absmax, ref_codes)
    # ... while its CPU C++ kernel searches the 8-bit code approximately: where it
    # disagrees, our code is the nearer one to the scaled value.
    code = dynamic_code().double()
    groups = torch.arange(qw.absmax.numel()) // 256
    scaled = ((fp32_absmax - state.offset) * (1.0 / qw.nested_absmax.clamp(min=1e-38))[groups]).clamp(-1, 1)
    ours_error = (scaled.double() - code[qw.absmax.long()]).abs()
    theirs_error = (scaled.double() - code[state.absmax.long()]).abs()
    assert torch.all(ours_error <= theirs_error + 1e-12)


def test_exact_midpoints_take_the_lower_code_as_in_bitsandbytes():
    midpoints = (NF4_CODE[:-1] + NF4_CODE[1:]) / 2
    w = torch.cat([torch.ones(1), midpoints]).float().repeat(4).reshape(1, -1)
    packed, _ = bnb_quantize(w, 64, False)
    assert torch.equal(loraops.nf4.quantize(w, blocksize=64, double_quant=False).packed, packed.flatten())


def test_bitsandbytes_cpu_dequantize_breaks_on_blocks_spanning_rows():
    """Documents why the comparisons above use bitsandbytes' reference path for
    such shapes: its CPU kernel gets them wrong; ours matches the reference."""
    w = torch.randn(40, 96)
    packed, state = bnb_quantize(w, 64, False)
    ours = NF4Weight.from_bnb_state_dict(bnb_state_dict(packed, state)).dequantize()
    assert torch.equal(ours, bnb_reference_dequantize(packed, state, torch.float32))
    assert not torch.equal(BF.dequantize_4bit(packed, state), ours)


def test_cpu_kernel_absmax_code_agreement_rate():
    w = torch.randn(2048, 1024, dtype=torch.bfloat16)
    _, state = bnb_quantize(w, 64, True)
    qw = loraops.nf4.quantize(w, blocksize=64)
    disagree = (qw.absmax != state.absmax).float().mean().item()
    assert disagree < 0.01, f"{disagree:.2%} of absmax codes differ from bitsandbytes' CPU kernel"


@given(case=nf4_cases(nonempty_shapes()), out_dtype=st.sampled_from(DTYPES))
def test_dequantize_bitsandbytes_state_identically(case, out_dtype):
    w, blocksize, double_quant = case
    shape = w.shape

    packed, state = bnb_quantize(w, blocksize, double_quant)
    if double_quant and not torch.isfinite(state.offset):
        # scales near the fp32 maximum overflow bitsandbytes' fp32 mean: a state
        # that dequantizes to garbage, which the reader refuses by name
        with pytest.raises(ValueError, match="nested_offset must be finite"):
            NF4Weight.from_bnb_state_dict(bnb_state_dict(packed, state))
        return
    qw = NF4Weight.from_bnb_state_dict(bnb_state_dict(packed, state))
    ours = qw.dequantize(out_dtype)
    assert ours.shape == shape
    assert torch.equal(ours, bnb_reference_dequantize(packed, state, out_dtype))
    if rows_hold_whole_blocks(shape, blocksize):
        state.dtype = out_dtype
        # (bitsandbytes' CPU kernel returns 1-D tensors as [n, 1]: compare values)
        assert torch.equal(ours, BF.dequantize_4bit(packed, state).reshape(shape))


@given(case=nf4_cases(nonempty_shapes()))
def test_bitsandbytes_dequantizes_our_state_identically(case):
    w, blocksize, double_quant = case
    shape, dtype = w.shape, w.dtype

    qw = loraops.nf4.quantize(w, blocksize=blocksize, double_quant=double_quant)
    sd = qw.to_bnb_state_dict(prefix="layer.")
    state = BF.QuantState.from_dict({k: v for k, v in sd.items() if k != "layer.weight"}, device="cpu")
    assert state.blocksize == blocksize and state.dtype == dtype and tuple(state.shape) == shape
    assert torch.equal(bnb_reference_dequantize(sd["layer.weight"], state, dtype), qw.dequantize())
    if rows_hold_whole_blocks(shape, blocksize):
        assert torch.equal(BF.dequantize_4bit(sd["layer.weight"], state).reshape(shape), qw.dequantize())


def test_state_dict_keys_match_bitsandbytes():
    w = torch.randn(48, 64)
    packed, state = bnb_quantize(w, 64, True)
    theirs = bnb_state_dict(packed, state, prefix="proj.")
    ours = loraops.nf4.quantize(w).to_bnb_state_dict(prefix="proj.")
    assert set(ours) == set(theirs)
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype and ours[key].shape == theirs[key].shape, key


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_linear4bit_state_dict_loads_into_nf4linear(compute_dtype, cpu_bf16):
    lin = torch.nn.Linear(128, 40).to(compute_dtype)
    l4 = bnb.nn.Linear4bit(128, 40, compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4")
    l4.load_state_dict(lin.state_dict())
    l4 = l4.to("cpu")  # quantizes
    ours = loraops.nn.NF4Linear.from_linear(lin)
    ours.load_state_dict(l4.state_dict())
    w_bnb = BF.dequantize_4bit(l4.weight.data, l4.weight.quant_state)
    assert torch.equal(ours.weight.dequantize(), w_bnb)
    x = torch.randn(5, 128, dtype=compute_dtype)
    # loraops computes in fp32 and rounds once to the input dtype; with bf16 GEMMs
    # the weight is dequantized to bf16 first, as bitsandbytes does for bf16 compute
    w_used = w_bnb.to(torch.bfloat16) if cpu_bf16 and compute_dtype == torch.bfloat16 else w_bnb
    want = torch.nn.functional.linear(x.float(), w_used.float(), l4.bias.to(compute_dtype).float()).to(compute_dtype)
    torch.testing.assert_close(ours(x), want)


def test_nf4linear_state_dict_loads_into_bitsandbytes():
    lin = torch.nn.Linear(192, 24, dtype=torch.bfloat16)
    ours = loraops.nn.NF4Linear.from_linear(lin)
    sd = ours.state_dict()
    # How transformers loads pre-quantized 4-bit checkpoints into Linear4bit.
    stats = {k: v for k, v in sd.items() if k.startswith("weight.")}
    weight = bnb.nn.Params4bit.from_prequantized(data=sd["weight"], quantized_stats=stats, device="cpu")
    assert torch.equal(BF.dequantize_4bit(weight.data, weight.quant_state), ours.weight.dequantize())
    l4 = bnb.nn.Linear4bit(192, 24, compute_dtype=torch.bfloat16, quant_type="nf4")
    l4.weight = weight
    l4.bias = torch.nn.Parameter(sd["bias"])
    x = torch.randn(3, 192, dtype=torch.bfloat16)
    # bitsandbytes computes in bf16, loraops in fp32: equal up to bf16 rounding of the sums
    torch.testing.assert_close(l4(x).float(), ours(x).float(), rtol=0.02, atol=0.02)
