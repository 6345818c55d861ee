"""Bad input to every public entry point and raw op: a clear exception naming the
argument, never a crash, a hang or a silent wrong result.

Conventions the ops and wrappers follow: a wrong type or dtype raises TypeError;
a wrong value, shape, size or a non-finite value ValueError; operands on
different devices RuntimeError naming the argument and both devices. Each case
states the type(s) and the regexes the message must match (bad_input_cases.py
checks them). Cases that can crash the interpreter (huge or overflowing sizes,
stride-0 views of huge shapes, an out= overlapping an input: whatever kernels
write through raw pointers) run in child processes, each announced before it
runs and rerun alone if the process dies in it, so a crash fails that one test
and names it. The generic sweeps at the end perturb one tensor argument of
each raw op's valid baseline call at a time.
"""

import functools
import json
import os
import subprocess
import sys

import pytest
import torch

import loraops
from loraops.nf4 import NF4Weight

import loraops.integrations.transformers as lt
from bad_input_cases import (META_AND_CPU, OVERFLOW, OVERLAP, arg, bad, case, check_isolated, check_outcome,
                             child_outcome, expect, key, not_naming, run_isolated)

NAN, INF = float("nan"), float("inf")
K, N, R, ROWS = 64, 8, 2, 3  # in_features, out_features, rank, rows of x
BACKENDS = loraops.build_info()["backends"]
needs_cuda_sim = pytest.mark.skipif("cuda_sim" not in BACKENDS, reason="built without LORAOPS_CUDA_SIM")
needs_ascend_sim = pytest.mark.skipif("ascend_sim" not in BACKENDS, reason="built without LORAOPS_ASCEND_SIM")
ops = torch.ops.loraops


def meta(shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def quantized(shape=(N, K), blocksize=32, double_quant=True):
    return loraops.nf4.quantize(torch.randn(shape), blocksize=blocksize, double_quant=double_quant)


def with_changes(fn, defaults, **changes):
    """fn called with a fresh valid set of arguments, some changed: one case, one change."""
    kwargs = defaults()
    kwargs.update(changes)
    return fn(**kwargs)


# ============================================================================= public API
# Each entry point's valid arguments; cases change one of them.
def lora_defaults():
    return dict(x=torch.randn(ROWS, K), weight=torch.randn(N, K), lora_A=torch.randn(R, K), lora_B=torch.randn(N, R),
                scale=2.0, bias=torch.randn(N), dropout=0.1, seed=3)


def vera_defaults():
    return dict(x=torch.randn(ROWS, K), weight=torch.randn(N, K), vera_A=torch.randn(R, K), vera_B=torch.randn(N, R),
                lambda_d=torch.randn(R), lambda_b=torch.randn(N), bias=torch.randn(N))


def multi_defaults():
    return dict(x=torch.randn(ROWS, K), weight=torch.randn(N, K), lora_A=torch.randn(3, R, K),
                lora_B=torch.randn(3, N, R), adapter_index=torch.tensor([0, 2, -1]), scale=2.0, bias=torch.randn(N))


def dora_defaults():
    return dict(x=torch.randn(ROWS, K), weight=torch.randn(N, K), lora_A=torch.randn(R, K), lora_B=torch.randn(N, R),
                magnitude=torch.rand(N) + 0.5, scale=2.0, bias=torch.randn(N))


def s2_defaults():
    return dict(q=torch.randn(2, 16, 4, 8), k=torch.randn(2, 16, 2, 8), v=torch.randn(2, 16, 2, 8), group_size=8,
                seqlens=torch.tensor([16, 11]), scale=None)


def dequantize_defaults():
    return dict(qw=quantized(), out=torch.empty(N, K))


def nf4_linear_defaults():
    return dict(weight=quantized(), bias=torch.randn(N), r=R, alpha=4.0)


def lora_linear_layer_defaults():
    return dict(in_features=K, out_features=N, r=R, alpha=4.0)


lora = functools.partial(with_changes, loraops.lora_linear, lora_defaults)
vera = functools.partial(with_changes, loraops.vera_linear, vera_defaults)
multi = functools.partial(with_changes, loraops.lora_linear_multi, multi_defaults)
dora = functools.partial(with_changes, loraops.dora_linear, dora_defaults)
s2 = functools.partial(with_changes, loraops.s2_attention, s2_defaults)
dequantize = functools.partial(with_changes, loraops.nf4.dequantize, dequantize_defaults)
quantize = functools.partial(with_changes, loraops.nf4.quantize, lambda: dict(w=torch.randn(N, K), blocksize=64))
nf4_weight = functools.partial(with_changes, NF4Weight, lambda: dict(
    packed=torch.zeros(32, dtype=torch.uint8), absmax=torch.ones(1), blocksize=64, shape=(8, 8), dtype=torch.float32))


def nf4_linear_forward(x=None, **changes):
    layer = with_changes(loraops.nn.NF4Linear, nf4_linear_defaults, **changes)
    return layer(torch.randn(ROWS, K) if x is None else x)


def lora_linear_layer_forward(**changes):
    layer = with_changes(loraops.nn.LoraLinear, lora_linear_layer_defaults, **changes)
    return layer(torch.randn(ROWS, K))


def bnb_state_dict(prefix="layer.", **changes):
    """A valid bitsandbytes state dict of an NF4 weight, some entries changed."""
    sd = quantized().to_bnb_state_dict(prefix)
    sd.update({prefix + key: value for key, value in changes.items()})
    return sd


def with_quant_state(**fields):
    """bnb_state_dict with fields of the JSON quant_state changed."""
    name = "layer.weight.quant_state.bitsandbytes__nf4"
    sd = bnb_state_dict()
    state = json.loads(bytes(sd[name].tolist()))
    state.update(fields)
    sd[name] = torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)
    return sd


def load(sd):
    return NF4Weight.from_bnb_state_dict(sd, prefix="layer.").dequantize()


PUBLIC_BASELINES = {
    "lora_linear": lambda: lora(),
    "lora_linear-nf4": lambda: lora(weight=quantized()),
    "vera_linear": lambda: vera(),
    "lora_linear_multi": lambda: multi(),
    "dora_linear": lambda: dora(),
    "dora_linear-nf4": lambda: dora(weight=quantized()),
    "s2_attention": lambda: s2(),
    "quantize": lambda: quantize(),
    "dequantize-out": lambda: dequantize(),
    "NF4Weight": lambda: nf4_weight().dequantize(),
    "from_bnb_state_dict": lambda: load(bnb_state_dict()),
    "NF4Linear": lambda: nf4_linear_forward(),
    "LoraLinear": lambda: lora_linear_layer_forward(),
}


@pytest.mark.parametrize("name", PUBLIC_BASELINES)
def test_public_baseline_call_works(name):
    # The cases below change one argument of these calls: these must work.
    PUBLIC_BASELINES[name]()


def no_config_model():
    return torch.nn.Sequential(torch.nn.Linear(4, 4))


def fused_peft_layer_with_meta_adapter():
    from conftest import require_peer

    peft = require_peer("peft")
    from loraops.integrations import peft as lp

    model = torch.nn.Sequential(torch.nn.Linear(K, N))
    model = peft.inject_adapter_in_model(peft.LoraConfig(r=R, target_modules=["0"]), model)
    lp.fuse(model)
    model[0].lora_A["default"].to("meta")
    return model(torch.randn(ROWS, K))


PUBLIC_CASES = [
    # ------------------------------------------------------------------ lora_linear (dense and NF4 weight)
    case("lora_linear-scale-nan", lambda: lora(scale=NAN), ValueError, arg("scale")),
    case("lora_linear-scale-inf", lambda: lora(scale=INF), ValueError, arg("scale")),
    case("lora_linear-scale-1e39-inf-in-fp32", lambda: lora(scale=1e39), ValueError, arg("scale")),
    case("lora_linear-nf4-scale-nan", lambda: lora(weight=quantized(), scale=NAN), ValueError, arg("scale")),
    case("lora_linear-dropout-nan", lambda: lora(dropout=NAN), ValueError, arg("dropout")),
    case("lora_linear-seed-2**64", lambda: lora(seed=2**64), ValueError, arg("seed")),
    case("lora_linear-seed--2**64", lambda: lora(seed=-(2**64)), ValueError, arg("seed")),
    case("lora_linear-weight-list", lambda: lora(weight=[[1.0]]), TypeError, arg("weight")),
    case("lora_linear-lora_A-None", lambda: lora(lora_A=None), TypeError, arg("lora_A")),
    case("lora_linear-lora_A-int64", lambda: lora(lora_A=torch.zeros(R, K, dtype=torch.int64)), TypeError,
         arg("lora_A")),
    case("lora_linear-lora_B-wrong-rank", lambda: lora(lora_B=torch.randn(N, R + 1)), ValueError, arg("lora_B")),
    case("lora_linear-x-0-dim", lambda: lora(x=torch.tensor(1.0)), ValueError, arg("x")),
    case("lora_linear-bias-meta", lambda: lora(bias=meta(N)), RuntimeError, arg("bias"), *META_AND_CPU),
    case("lora_linear-lora_B-meta", lambda: lora(lora_B=meta((N, R))), RuntimeError, arg("lora_B"),
         *META_AND_CPU),
    case("lora_linear-nf4-weight-meta", lambda: lora(weight=quantized().to("meta")), RuntimeError,
         r"\b(weight|packed)\b", *META_AND_CPU),
    case("lora_linear-nf4-bias-meta", lambda: lora(weight=quantized(), bias=meta(N)), RuntimeError, arg("bias"),
         *META_AND_CPU),
    case("lora_linear-nf4-weight-3-d", lambda: lora(weight=quantized((2, N, K))), ValueError, arg("weight")),
    # ------------------------------------------------------------------ vera_linear
    case("vera_linear-lambda_d-wrong-shape", lambda: vera(lambda_d=torch.randn(R + 1)), ValueError,
         arg("lambda_d")),
    case("vera_linear-lambda_d-list", lambda: vera(lambda_d=[1.0] * R), TypeError, arg("lambda_d")),
    case("vera_linear-lambda_b-meta", lambda: vera(lambda_b=meta(N)), RuntimeError, arg("lambda_b"),
         *META_AND_CPU),
    case("vera_linear-vera_A-wrong-in_features", lambda: vera(vera_A=torch.randn(R, K + 1)), ValueError,
         arg("vera_A")),
    # ------------------------------------------------------------------ lora_linear_multi
    case("lora_linear_multi-scale-wrong-length", lambda: multi(scale=[1.0, 2.0]), ValueError, arg("scale")),
    case("lora_linear_multi-scale-nan", lambda: multi(scale=NAN), ValueError, arg("scale")),
    case("lora_linear_multi-scale-nan-element", lambda: multi(scale=torch.tensor([1.0, NAN, 2.0])), ValueError,
         arg("scale")),
    case("lora_linear_multi-adapter_index-float", lambda: multi(adapter_index=torch.tensor([0.0, 1.0, 2.0])),
         TypeError, arg("adapter_index")),
    case("lora_linear_multi-adapter_index-out-of-range", lambda: multi(adapter_index=torch.tensor([0, 3, -1])),
         ValueError, arg("adapter_index")),
    case("lora_linear_multi-adapter_index-meta", lambda: multi(adapter_index=meta(ROWS, torch.int64)),
         RuntimeError, arg("adapter_index"), *META_AND_CPU),
    case("lora_linear_multi-lora_A-meta", lambda: multi(lora_A=meta((3, R, K))), RuntimeError, arg("lora_A"),
         *META_AND_CPU),
    case("lora_linear_multi-x-0-dim", lambda: multi(x=torch.tensor(1.0)), ValueError, arg("x")),
    case("lora_linear_multi-lora_B-wrong-rank", lambda: multi(lora_B=torch.randn(3, N, R + 1)), ValueError,
         arg("lora_B")),
    # ------------------------------------------------------------------ dora_linear
    case("dora_linear-lora_A-wrong-in_features", lambda: dora(lora_A=torch.randn(R, K + 1)), ValueError,
         arg("lora_A")),
    case("dora_linear-nf4-lora_A-wrong-in_features", lambda: dora(weight=quantized(), lora_A=torch.randn(R, K + 1)),
         ValueError, arg("lora_A")),
    case("dora_linear-lora_B-wrong-rank", lambda: dora(lora_B=torch.randn(N, R + 1)), ValueError, arg("lora_B")),
    case("dora_linear-nf4-lora_B-wrong-rank", lambda: dora(weight=quantized(), lora_B=torch.randn(N, R + 1)),
         ValueError, arg("lora_B")),
    case("dora_linear-magnitude-wrong-shape", lambda: dora(magnitude=torch.ones(N + 1)), ValueError,
         arg("magnitude")),
    case("dora_linear-bias-wrong-shape", lambda: dora(bias=torch.randn(N + 1)), ValueError, arg("bias")),
    case("dora_linear-scale-nan", lambda: dora(scale=NAN), ValueError, arg("scale")),
    case("dora_linear-magnitude-meta", lambda: dora(magnitude=meta(N)), RuntimeError, arg("magnitude"),
         *META_AND_CPU),
    case("dora_linear-bias-meta", lambda: dora(bias=meta(N)), RuntimeError, arg("bias"), *META_AND_CPU),
    # ------------------------------------------------------------------ s2_attention
    case("s2_attention-scale-1e39-inf-in-fp32", lambda: s2(scale=1e39), ValueError, arg("scale")),
    case("s2_attention-scale-inf", lambda: s2(scale=INF), ValueError, arg("scale")),
    case("s2_attention-scale-nan", lambda: s2(scale=NAN), ValueError, arg("scale")),
    case("s2_attention-group_size-7.9", lambda: s2(group_size=7.9), (TypeError, ValueError), arg("group_size")),
    case("s2_attention-group_size-str", lambda: s2(group_size="8"), TypeError, arg("group_size")),
    case("s2_attention-group_size-2**64", lambda: s2(group_size=2**64), ValueError, arg("group_size")),
    case("s2_attention-group_size-0", lambda: s2(group_size=0), ValueError, arg("group_size")),
    case("s2_attention-mode-unknown", lambda: s2(mode="rolled"), ValueError, arg("mode")),
    case("s2_attention-q-list", lambda: s2(q=[[1.0]]), TypeError, arg("q")),
    case("s2_attention-q-3-d", lambda: s2(q=torch.randn(2, 16, 32)), ValueError, arg("q")),
    case("s2_attention-seqlens-float", lambda: s2(seqlens=torch.tensor([16.0, 11.0])), TypeError, arg("seqlens")),
    case("s2_attention-seqlens-too-long", lambda: s2(seqlens=torch.tensor([17, 11])), ValueError, arg("seqlens")),
    case("s2_attention-seqlens-meta", lambda: s2(seqlens=meta(2, torch.int64)), RuntimeError, arg("seqlens"),
         *META_AND_CPU),
    case("s2_attention-k-meta", lambda: s2(k=meta((2, 16, 2, 8))), RuntimeError, arg("k"), *META_AND_CPU),
    # ------------------------------------------------------------------ nf4.quantize / dequantize / NF4Weight
    case("quantize-blocksize-2**64", lambda: quantize(blocksize=2**64), ValueError, arg("blocksize")),
    case("quantize-blocksize-float", lambda: quantize(blocksize=64.0), TypeError, arg("blocksize")),
    case("quantize-w-nan", lambda: quantize(w=torch.tensor([1.0, NAN] * 32)), ValueError, r"NaN"),
    case("dequantize-out-meta", lambda: dequantize(out=meta((N, K))), RuntimeError, arg("out"), *META_AND_CPU),
    case("dequantize-out-int64", lambda: dequantize(out=torch.empty(N, K, dtype=torch.int64)), TypeError,
         arg("out")),
    case("dequantize-out-list", lambda: dequantize(out=[0.0] * (N * K)), TypeError, arg("out")),
    case("dequantize-out-stride-0", lambda: dequantize(out=torch.empty(1, 1).expand(N, K)), ValueError, arg("out")),
    case("dequantize-out-wrong-shape", lambda: dequantize(out=torch.empty(K, N)), ValueError, arg("out")),
    case("NF4Weight-packed-list", lambda: nf4_weight(packed=[0] * 32), TypeError, arg("packed")),
    case("NF4Weight-blocksize-64.5", lambda: nf4_weight(blocksize=64.5), TypeError, arg("blocksize")),
    case("NF4Weight-blocksize-2**64", lambda: nf4_weight(blocksize=2**64), ValueError, arg("blocksize")),
    case("NF4Weight-nested_blocksize-2**64", lambda: nf4_weight(nested_blocksize=2**64), ValueError,
         arg("nested_blocksize")),
    case("NF4Weight-dtype-int32", lambda: nf4_weight(dtype=torch.int32), TypeError, arg("dtype")),
    # ------------------------------------------------------------------ NF4Weight.from_bnb_state_dict
    # (tests/test_nf4_state_dict_fuzz.py fuzzes it; these are the cases)
    case("from_bnb_state_dict-nested_offset-1e39-inf-in-fp32", lambda: load(with_quant_state(nested_offset=1e39)),
         ValueError, arg("nested_offset")),
    case("from_bnb_state_dict-nested_offset--1e39", lambda: load(with_quant_state(nested_offset=-1e39)),
         ValueError, arg("nested_offset")),
    case("from_bnb_state_dict-nested_blocksize-2**64", lambda: load(with_quant_state(nested_blocksize=2**64)),
         ValueError, arg("nested_blocksize")),
    case("from_bnb_state_dict-nested_blocksize-2**63", lambda: load(with_quant_state(nested_blocksize=2**63)),
         ValueError, arg("nested_blocksize")),
    case("from_bnb_state_dict-weight-meta", lambda: load(bnb_state_dict(weight=meta((N * K // 2, 1), torch.uint8))),
         (RuntimeError, ValueError), key("layer.weight"), *META_AND_CPU),
    case("from_bnb_state_dict-absmax-meta",
         lambda: load(bnb_state_dict(**{"weight.absmax": meta(N * K // 32, torch.uint8)})),
         (RuntimeError, ValueError), key("layer.weight.absmax"), *META_AND_CPU),
    # ------------------------------------------------------------------ nn.NF4Linear / nn.LoraLinear
    case("NF4Linear-weight-tensor", lambda: nf4_linear_forward(weight=torch.randn(N, K)), TypeError, arg("weight")),
    case("NF4Linear-bias-wrong-shape", lambda: nf4_linear_forward(bias=torch.randn(N + 1)), ValueError, arg("bias")),
    case("NF4Linear-bias-meta", lambda: nf4_linear_forward(bias=meta(N)), RuntimeError, arg("bias"), *META_AND_CPU),
    case("NF4Linear-alpha-nan", lambda: nf4_linear_forward(alpha=NAN), ValueError, arg("alpha")),
    case("NF4Linear-r-negative", lambda: nf4_linear_forward(r=-1), ValueError, arg("r")),
    case("NF4Linear-x-meta", lambda: nf4_linear_forward(x=meta((ROWS, K))), RuntimeError, arg("x"), *META_AND_CPU),
    case("NF4Linear-x-wrong-in_features", lambda: nf4_linear_forward(x=torch.randn(ROWS, K + 1)), ValueError,
         arg("x")),
    case("NF4Linear.from_linear-not-a-linear", lambda: loraops.nn.NF4Linear.from_linear(torch.nn.Conv1d(2, 2, 1)),
         TypeError, arg("linear")),
    case("NF4Linear.from_linear-blocksize-2**64",
         lambda: loraops.nn.NF4Linear.from_linear(torch.nn.Linear(K, N), blocksize=2**64), ValueError,
         arg("blocksize")),
    case("LoraLinear-alpha-nan", lambda: lora_linear_layer_forward(alpha=NAN), ValueError, arg("alpha")),
    case("LoraLinear-in_features-negative", lambda: lora_linear_layer_forward(in_features=-1), ValueError,
         arg("in_features")),
    case("LoraLinear-dropout-1", lambda: lora_linear_layer_forward(dropout=1.0), ValueError, arg("dropout")),
    case("LoraLinear.from_linear-not-a-linear", lambda: loraops.nn.LoraLinear.from_linear(torch.nn.Identity(), r=2),
         TypeError, arg("linear")),
    # ------------------------------------------------------------------ integrations, set_cpu_isa
    case("enable_s2_attention-model-without-config", lambda: lt.enable_s2_attention(no_config_model()),
         (TypeError, ValueError), r"\bconfig\b"),
    case("disable_s2_attention-model-without-config", lambda: lt.disable_s2_attention(no_config_model()),
         (TypeError, ValueError), r"\bconfig\b"),
    case("enable_s2_attention-group_size_ratio-str",
         lambda: lt.enable_s2_attention(no_config_model(), group_size_ratio="0.25"), TypeError,
         arg("group_size_ratio")),
    case("enable_s2_attention-group_size_ratio-nan",
         lambda: lt.enable_s2_attention(no_config_model(), group_size_ratio=NAN), ValueError,
         arg("group_size_ratio")),
    case("peft-fused-layer-lora_A-meta", fused_peft_layer_with_meta_adapter, RuntimeError, arg("lora_A"),
         *META_AND_CPU),
    case("set_cpu_isa-unknown", lambda: loraops.set_cpu_isa("avx9000"), ValueError, arg("isa")),
    case("set_cpu_isa-int", lambda: loraops.set_cpu_isa(5), TypeError, arg("isa")),
    case("set_cpu_isa-None", lambda: loraops.set_cpu_isa(None), TypeError, arg("isa")),
    case("set_cpu_bf16-str", lambda: loraops.set_cpu_bf16("on"), TypeError, arg("enabled")),
    case("set_cpu_bf16-int", lambda: loraops.set_cpu_bf16(1), TypeError, arg("enabled")),
]


@pytest.mark.parametrize("case", PUBLIC_CASES)
def test_public_api_rejects_bad_input_clearly(case):
    expect(case)


def test_valid_edge_values_still_work():
    """The checks above must not refuse what is valid at the edges."""
    x, w, a, b = torch.randn(ROWS, K), torch.randn(N, K), torch.randn(R, K), torch.randn(N, R)
    # scale 0: the base layer exactly; the int64 extremes as seeds
    assert torch.equal(loraops.lora_linear(x, w, a, b, 0.0), loraops.lora_linear(x, w, a, 0 * b, 1.0))
    for seed in (2**63 - 1, -(2**63)):
        assert torch.isfinite(loraops.lora_linear(x, w, a, b, 1.0, dropout=0.5, seed=seed)).all()
    # a tiny scale, groups of one token, one group longer than the sequence
    q = torch.randn(1, 8, 2, 4)
    for group_size, scale in ((4, 1e-30), (1, None), (64, 0.5)):
        assert torch.isfinite(loraops.s2_attention(q, q, q, group_size, scale=scale)).all()
    # an integer and a large finite fp32 nested_offset load; an empty weight dequantizes to nothing
    for offset in (1, 1e30):
        assert load(with_quant_state(nested_offset=offset)).shape == (N, K)
    assert loraops.nf4.quantize(torch.empty(0)).dequantize().shape == (0,)


# ----------------------------------------------------------------------------- NF4 state dicts
# (NF4Linear.load_state_dict's unexpected keys and copies: test_python_validation.py)
def nf4_model():
    return torch.nn.Sequential(loraops.nn.NF4Linear.from_linear(torch.nn.Linear(K, N)))


def shared_keys(sd, others):
    """Keys of sd whose tensors share memory with any of the tensors `others`."""
    memory = {t.untyped_storage().data_ptr() for t in others if t.numel()}
    return [k for k, t in sd.items() if t.numel() and t.untyped_storage().data_ptr() in memory]


def test_state_dicts_share_no_memory_with_each_other_or_loraops_constants():
    # A state dict may hold its own layer's tensors (as nn.Module's does), but
    # not one tensor shared by every weight: writing into one state dict (a
    # loader reusing buffers) would change all the others, and the NF4 code the
    # loader checks against.
    for first, second in [(quantized().to_bnb_state_dict(), quantized().to_bnb_state_dict()),
                          (nf4_model().state_dict(), nf4_model().state_dict())]:
        assert shared_keys(first, [*second.values(), loraops.nf4.NF4_CODE]) == []


# ============================================================================= raw ops
# One valid call per op (small: [ROWS, K] x, an [N, K] weight, rank R); the
# cases and sweeps change one argument of it.
def nf4_args():
    return quantized().op_arguments()  # double-quantized: absmax holds uint8 codes


def lora_args():
    return dict(x=torch.randn(ROWS, K), bias=torch.randn(N), lora_A=torch.randn(R, K), lora_B=torch.randn(N, R),
                scale=2.0, dropout=0.1, seed=5)


def lora_backward_args(forward, **weight):
    args = dict(lora_args(), **weight)
    _, xa = getattr(ops, forward)(**args)
    return dict(args, grad_out=torch.randn(ROWS, N), xa=xa)


def s2_args():
    return dict(q=torch.randn(2, 16, 4, 8), k=torch.randn(2, 16, 2, 8), v=torch.randn(2, 16, 2, 8), group_size=8,
                mode="segments", causal=True, seqlens=torch.tensor([16, 11]), scale=None)


def s2_backward_args():
    args = s2_args()
    out, lse = ops.s2_attention(**args)
    return dict(args, grad_out=torch.randn_like(out), out=out, lse=lse)


RAW_BASELINES = {
    "nf4_quantize": lambda: dict(input=torch.randn(N, K), blocksize=32, double_quant=True),
    "nf4_dequantize": lambda: dict(nf4_args(), shape=[N, K], dtype=torch.float32),
    "nf4_dequantize_into": lambda: dict(nf4_args(), out=torch.empty(N, K)),
    "lora_linear": lambda: dict(lora_args(), weight=torch.randn(N, K)),
    "lora_linear_backward": lambda: dict(lora_backward_args("lora_linear", weight=torch.randn(N, K)),
                                         needs_grad=[True] * 5),
    "lora_linear_nf4": lambda: dict(lora_args(), **nf4_args(), weight_shape=[N, K]),
    "lora_linear_nf4_backward": lambda: dict(lora_backward_args("lora_linear_nf4", **nf4_args(), weight_shape=[N, K]),
                                             needs_grad=[True] * 4),
    "s2_attention": s2_args,
    "s2_attention_backward": s2_backward_args,
}
# The Ascend kernels' LoRA ops in the emulation run the same host flow as every
# backend: the same arguments, the same checks and messages.
EMULATED_OPS = set()
if "ascend_sim" in BACKENDS:
    for _op in ("lora_linear", "lora_linear_backward", "lora_linear_nf4", "lora_linear_nf4_backward"):
        RAW_BASELINES["_ascend_sim_" + _op] = RAW_BASELINES[_op]
        EMULATED_OPS.add("_ascend_sim_" + _op)


def raw(op, **changes):
    return with_changes(getattr(ops, op), RAW_BASELINES[op], **changes)


def outputs(result):
    return [t for t in (result if isinstance(result, (tuple, list)) else [result]) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("op", RAW_BASELINES)
def test_raw_baseline_call_works(op):
    raw(op)  # the cases and sweeps below change one argument of this call


@pytest.mark.parametrize("op", [op for op in RAW_BASELINES if op != "nf4_quantize" and op not in EMULATED_OPS])
def test_raw_op_on_meta_tensors_only_infers_shapes(op):
    # The fake kernels serve torch.compile: every tensor on meta is valid, and
    # gives the shapes and dtypes of a real call.
    args = RAW_BASELINES[op]()
    want = outputs(getattr(ops, op)(**args))
    args = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    if op == "nf4_dequantize_into":
        ops.nf4_dequantize_into(**args)
        return
    got = outputs(getattr(ops, op)(**args))
    assert [(g.device.type, g.shape, g.dtype) for g in got] == [("meta", w.shape, w.dtype) for w in want]


RAW_CASES = [
    case("lora_linear-scale-nan", lambda: raw("lora_linear", scale=NAN), ValueError, arg("scale")),
    case("lora_linear-scale-inf", lambda: raw("lora_linear", scale=INF), ValueError, arg("scale")),
    case("lora_linear-dropout-nan", lambda: raw("lora_linear", dropout=NAN), ValueError, arg("dropout")),
    case("lora_linear_nf4-scale-nan", lambda: raw("lora_linear_nf4", scale=NAN), ValueError, arg("scale")),
    case("lora_linear_nf4-weight_shape-negative", lambda: raw("lora_linear_nf4", weight_shape=[-N, K]), ValueError,
         arg("weight_shape")),
    case("lora_linear_nf4-weight_shape-1-d", lambda: raw("lora_linear_nf4", weight_shape=[N * K]), ValueError,
         arg("weight_shape")),
    case("lora_linear_nf4-nested_blocksize-0", lambda: raw("lora_linear_nf4", nested_blocksize=0), ValueError,
         arg("nested_blocksize")),
    case("lora_linear_backward-scale-nan", lambda: raw("lora_linear_backward", scale=NAN), ValueError, arg("scale")),
    case("lora_linear_backward-grad_out-int64",
         lambda: raw("lora_linear_backward", grad_out=torch.zeros(ROWS, N, dtype=torch.int64)), TypeError,
         arg("grad_out")),
    case("lora_linear_backward-grad_out-wrong-shape", lambda: raw("lora_linear_backward", grad_out=torch.zeros(N)),
         ValueError, arg("grad_out")),
    case("lora_linear_backward-grad_out-wrong-out_features",
         lambda: raw("lora_linear_backward", grad_out=torch.zeros(ROWS, N + 1)), ValueError, arg("grad_out")),
    case("lora_linear_backward-xa-wrong-rank", lambda: raw("lora_linear_backward", xa=torch.zeros(ROWS, R + 1)),
         ValueError, arg("xa")),
    case("lora_linear_nf4_backward-grad_out-int64",
         lambda: raw("lora_linear_nf4_backward", grad_out=torch.zeros(ROWS, N, dtype=torch.int64)), TypeError,
         arg("grad_out")),
    case("lora_linear_nf4_backward-grad_out-wrong-shape",
         lambda: raw("lora_linear_nf4_backward", grad_out=torch.zeros(ROWS + 1, N)), ValueError, arg("grad_out")),
    case("s2_attention-scale-1e39", lambda: raw("s2_attention", scale=1e39), ValueError, arg("scale")),
    case("s2_attention-group_size-0", lambda: raw("s2_attention", group_size=0), ValueError, arg("group_size")),
    case("s2_attention_backward-scale-1e39", lambda: raw("s2_attention_backward", scale=1e39), ValueError,
         arg("scale")),
    case("s2_attention_backward-lse-wrong-shape", lambda: raw("s2_attention_backward", lse=torch.zeros(2, 4, 15)),
         ValueError, arg("lse")),
    case("nf4_dequantize-shape-negative", lambda: raw("nf4_dequantize", shape=[-N, -K]), ValueError, arg("shape")),
    case("nf4_dequantize-dtype-float64", lambda: raw("nf4_dequantize", dtype=torch.float64), TypeError, arg("dtype")),
    case("nf4_dequantize-nested_blocksize-negative", lambda: raw("nf4_dequantize", nested_blocksize=-256),
         ValueError, arg("nested_blocksize")),
    case("nf4_dequantize_into-out-stride-0", lambda: raw("nf4_dequantize_into", out=torch.empty(1).expand(N, K)),
         ValueError, arg("out")),
    case("nf4_quantize-blocksize-0", lambda: raw("nf4_quantize", blocksize=0), ValueError, arg("blocksize")),
]


@pytest.mark.parametrize("case", RAW_CASES)
def test_raw_op_rejects_bad_scalars_and_shapes_clearly(case):
    expect(case)


# ============================================================================= crash-prone: one child process each
HUGE = 2**42 + 1  # out_features: with 2**20 rows, 2**62 + 2**20 fp32 outputs, whose byte count wraps size_t


def huge_lora(op=None, nf4=False):
    """The issue's SIGSEGV: x [2**20, 0] against a [2**42 + 1, 0] weight (every
    input empty); the [2**20, 2**42 + 1] output cannot exist."""
    x, a, b = torch.empty(2**20, 0), torch.empty(0, 0), torch.empty(HUGE, 0)
    empty = loraops.nf4.quantize(torch.empty(0)).op_arguments()  # an NF4 weight of no elements
    if op is None:
        weight = NF4Weight(**empty, shape=(HUGE, 0), dtype=torch.float32) if nf4 else torch.empty(HUGE, 0)
        return loraops.lora_linear(x, weight, a, b, 1.0)
    if nf4:
        return op(x, *empty.values(), [HUGE, 0], None, a, b, 1.0, 0.0, 0)
    return op(x, torch.empty(HUGE, 0), None, a, b, 1.0, 0.0, 0)


def huge_q():
    return torch.zeros(1, 1, 1, 1).expand(1, 2**20, 1, HUGE)  # stride 0: 2**62 elements over one float


def huge_s2_backward():
    q = huge_q()
    return ops.s2_attention_backward(q, q, q, q, q, torch.zeros(1, 1, 2**20), 8, "segments", True, torch.tensor([0]),
                                     None)


def dequantize_op(name):
    """A dequantize op of the same arguments (the Ascend emulation adds a core count)."""
    op = getattr(ops, name)
    return (lambda *args: op(*args, 2)) if name.startswith("_ascend_sim") else op


def dequantize_huge(name, n=2**62):
    """Every part a stride-0 view of the size n elements need: only the output
    (2**64 bytes in fp32) overflows."""
    blocks = -(-n // 64)
    u8 = torch.zeros(1, dtype=torch.uint8)
    return dequantize_op(name)(u8.expand((n + 1) // 2), u8.expand(blocks), torch.ones(1).expand(-(-blocks // 256)),
                               loraops.nf4.dynamic_code(), torch.zeros(()), 64, 256, [n], torch.float32)


def dequantize_shape_of_int64_max(name):
    # Its element count fits int64; (n + 1) / 2, n + blocksize - 1 and the bytes do not.
    qw = quantized()
    return dequantize_op(name)(*qw.op_arguments().values(), [2**63 - 1], torch.float32)


def dequantize_nested_blocksize_of_int64_max(name):
    # ceil(blocks / (2**63 - 1)) = 1: valid, if pointless. Either refused as too
    # large, or right: one nested block, as with the real 256 (not a count of
    # nested_absmax computed with an overflow).
    qw = quantized()
    args = dict(qw.op_arguments(), nested_blocksize=2**63 - 1)
    got = dequantize_op(name)(*args.values(), list(qw.shape), torch.float32)
    assert torch.equal(got, qw.dequantize()), "nested_blocksize = 2**63 - 1 dequantized wrongly"


def overlapping_out(name, part, public=False):
    """dequantize into an out that shares memory with `part` of the weight:
    the kernel would overwrite its input while reading it."""
    qw = quantized((16, 64), blocksize=64, double_quant=part != "absmax")  # fp32 absmax without
    args = qw.op_arguments()
    buffer = torch.zeros(16 * 64)
    region = buffer.view(torch.uint8) if part == "packed" else buffer
    region[:args[part].numel()] = args[part]
    args[part] = region[:args[part].numel()]
    out = buffer.view(16, 64)
    if public:
        return loraops.nf4.dequantize(NF4Weight(**args, shape=qw.shape, dtype=qw.dtype), out=out)
    return getattr(ops, name)(*args.values(), out)


def quantize_huge(name):
    return getattr(ops, name)(torch.zeros(1).expand(2**62), 64, True, *([2] if "ascend" in name else []))


SIZE_ERRORS = (ValueError, RuntimeError, MemoryError)
# The CPU op and its emulated CUDA and Ascend versions (same arguments, same checks): op-name prefix, marks.
NF4_BACKENDS = [("", ()), ("_cuda_sim_", needs_cuda_sim), ("_ascend_sim_", needs_ascend_sim)]


def per_nf4_backend(op, what, build, raises, *match, may_succeed=False):
    """One case per backend: build(op name) makes the call."""
    return [case(f"ops.{prefix}{op}-{what}", functools.partial(build, prefix + op), raises, *match,
                 may_succeed=may_succeed, marks=marks) for prefix, marks in NF4_BACKENDS]


ISOLATED_CASES = [
    case("lora_linear-huge-output", huge_lora, SIZE_ERRORS, OVERFLOW),
    case("lora_linear-nf4-huge-output", lambda: huge_lora(nf4=True), SIZE_ERRORS, OVERFLOW),
    case("ops.lora_linear-huge-output", lambda: huge_lora(ops.lora_linear), SIZE_ERRORS, OVERFLOW),
    case("ops.lora_linear_nf4-huge-output", lambda: huge_lora(ops.lora_linear_nf4, nf4=True), SIZE_ERRORS, OVERFLOW),
    case("ops._cuda_sim_lora_linear-huge-output", lambda: huge_lora(ops._cuda_sim_lora_linear), SIZE_ERRORS,
         OVERFLOW, marks=needs_cuda_sim),
    case("ops._cuda_sim_lora_linear_nf4-huge-output", lambda: huge_lora(ops._cuda_sim_lora_linear_nf4, nf4=True),
         SIZE_ERRORS, OVERFLOW, marks=needs_cuda_sim),
    case("ops._ascend_sim_lora_linear-huge-output", lambda: huge_lora(ops._ascend_sim_lora_linear), SIZE_ERRORS,
         OVERFLOW, marks=needs_ascend_sim),
    case("ops._ascend_sim_lora_linear_nf4-huge-output",
         lambda: huge_lora(ops._ascend_sim_lora_linear_nf4, nf4=True), SIZE_ERRORS, OVERFLOW, marks=needs_ascend_sim),
    case("s2_attention-huge-stride-0-q",
         lambda: loraops.s2_attention(huge_q(), huge_q(), huge_q(), 8, seqlens=torch.tensor([0])), SIZE_ERRORS,
         OVERFLOW),
    case("ops.s2_attention_backward-huge-stride-0-q", huge_s2_backward, SIZE_ERRORS, OVERFLOW),
    *per_nf4_backend("nf4_dequantize", "huge-output", dequantize_huge, SIZE_ERRORS, OVERFLOW),
    *per_nf4_backend("nf4_dequantize", "shape-2**63-1", dequantize_shape_of_int64_max, ValueError, arg("shape"),
                     OVERFLOW),
    *per_nf4_backend("nf4_dequantize", "nested_blocksize-2**63-1", dequantize_nested_blocksize_of_int64_max,
                     ValueError, arg("nested_blocksize"), not_naming("nested_absmax"), may_succeed=True),
    *per_nf4_backend("nf4_quantize", "huge-stride-0-input", quantize_huge, SIZE_ERRORS, OVERFLOW),
    case("dequantize-out-overlaps-packed", lambda: overlapping_out(None, "packed", public=True),
         (RuntimeError, ValueError), arg("out"), OVERLAP),
    case("ops.nf4_dequantize_into-out-overlaps-packed", lambda: overlapping_out("nf4_dequantize_into", "packed"),
         (RuntimeError, ValueError), arg("out"), OVERLAP),
    case("ops.nf4_dequantize_into-out-overlaps-absmax", lambda: overlapping_out("nf4_dequantize_into", "absmax"),
         (RuntimeError, ValueError), arg("out"), OVERLAP),
    case("ops._cuda_sim_nf4_dequantize_into-out-overlaps-packed",
         lambda: overlapping_out("_cuda_sim_nf4_dequantize_into", "packed"), (RuntimeError, ValueError), arg("out"),
         OVERLAP, marks=needs_cuda_sim),
]


@pytest.fixture(scope="module")
def isolated_outcomes():
    # Every case in child processes, several to a process (a crash reruns the
    # case alone): one interpreter start instead of one per case.
    return run_isolated([p.values[0] for p in ISOLATED_CASES], "test_bad_input", "ISOLATED_CASES")


@pytest.mark.parametrize("case", ISOLATED_CASES)
def test_crash_prone_input_is_a_clear_error(case, isolated_outcomes):
    check_isolated(case, isolated_outcomes[case.id])


# ----------------------------------------------------------------------------- LORAOPS_CPU_BUFFER_CACHE_MB
# Read at import: the child imports loraops under the variable, then frees an
# 8 MiB dequantized weight (cached when the cache is on) and reports the cache.
CACHE_PROBE = """
import json, bad_input_cases as b
def probe():
    global cached
    import loraops, torch
    loraops.nf4.quantize(torch.randn(2048, 1024)).dequantize()
    cached = loraops.cpu_buffer_cache_bytes()
outcome = b.outcome_of(probe)
if outcome["raised"] is None:
    outcome["cached"] = cached
print(b.RESULT_MARK + json.dumps(outcome))
"""


# 2**44 MB << 20 wraps to 0; 2**43 MB is 2**63 bytes
@pytest.mark.parametrize("value", ["abc", "1e3", "-1", " 64", "64MB", str(2**44), str(2**43), "１２"])
def test_buffer_cache_variable_rejects_bad_values_at_import(value):
    what = f"LORAOPS_CPU_BUFFER_CACHE_MB={value}"
    outcome = child_outcome(CACHE_PROBE, what, {"LORAOPS_CPU_BUFFER_CACHE_MB": value})
    check_outcome(bad(what, None, ValueError, arg("LORAOPS_CPU_BUFFER_CACHE_MB")), outcome)


@pytest.mark.parametrize("value, cached", [("0", False), ("64", True), (str(2**43 - 1), True)])
def test_buffer_cache_variable_accepts_good_values(value, cached):
    outcome = child_outcome(CACHE_PROBE, f"LORAOPS_CPU_BUFFER_CACHE_MB={value}", {"LORAOPS_CPU_BUFFER_CACHE_MB": value})
    assert outcome["raised"] is None, outcome
    assert (outcome["cached"] >= 8 << 20) if cached else outcome["cached"] == 0, outcome


# LORAOPS_CPU_ISA: an unknown name (a typo) is an error at import, not a silent fallback.
@pytest.mark.parametrize("value", ["avx-512", "AVX2", "sse4"])
def test_cpu_isa_variable_rejects_unknown_names_at_import(value):
    what = f"LORAOPS_CPU_ISA={value}"
    outcome = child_outcome(CACHE_PROBE, what, {"LORAOPS_CPU_ISA": value})
    check_outcome(bad(what, None, ValueError, arg("LORAOPS_CPU_ISA")), outcome)


def test_cpu_isa_variable_pins_the_kernels():
    env = {**os.environ, "LORAOPS_CPU_ISA": "scalar"}
    proc = subprocess.run([sys.executable, "-c", "import loraops; print(loraops.build_info()['cpu_isa'])"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["scalar"], proc.stderr


# LORAOPS_CPU_BF16: only 0 and 1; a typo must not leave the bf16 GEMMs on silently.
@pytest.mark.parametrize("value", ["off", "false", "2"])
def test_cpu_bf16_variable_rejects_other_values_at_import(value):
    what = f"LORAOPS_CPU_BF16={value}"
    outcome = child_outcome(CACHE_PROBE, what, {"LORAOPS_CPU_BF16": value})
    check_outcome(bad(what, None, ValueError, arg("LORAOPS_CPU_BF16")), outcome)


@pytest.mark.parametrize("value", ["0", "1"])
def test_cpu_bf16_variable_sets_the_bf16_gemms(value):
    env = {**os.environ, "LORAOPS_CPU_BF16": value}
    proc = subprocess.run([sys.executable, "-c", "import loraops; b = loraops.build_info(); "
                           "print(b['cpu_bf16'], b['cpu_bf16_native'])"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    enabled, native = proc.stdout.split()
    assert enabled == ("True" if value == "1" and native == "True" else "False"), proc.stdout


def test_set_cpu_bf16_on_needs_native_bf16():
    previous = loraops.build_info()["cpu_bf16"]
    try:
        if loraops.build_info()["cpu_bf16_native"]:
            loraops.set_cpu_bf16(True)
            assert loraops.build_info()["cpu_bf16"] is True
        else:
            with pytest.raises(ValueError, match="native bf16"):
                loraops.set_cpu_bf16(True)
        loraops.set_cpu_bf16(False)
        assert loraops.build_info()["cpu_bf16"] is False
    finally:
        loraops.set_cpu_bf16(previous)


# ============================================================================= sweeps over the raw ops' tensors
# Each tensor argument of each baseline call, changed alone: (a) a wrong dtype,
# (b) on the meta device while the rest is on the CPU, (c) 0-dim or one
# dimension too many, (d) a stride-0 view, which must compute what its
# contiguous copy does.
def tensor_args(op):
    return [a.name for a in getattr(ops, op).default._schema.arguments if "Tensor" in str(a.type)]


UINT8_ARGS, INT_ARGS = {"packed", "absmax"}, {"seqlens"}  # the baselines' NF4 weights are double-quantized
WRONG_DTYPES = {"uint8": (torch.float32, torch.int8), "int": (torch.float32, torch.bool),
                "float": (torch.int64, torch.float64)}
# Arguments whose rank is fixed (x and a LoRA grad_out take any leading dimensions).
FIXED_RANK = {"weight", "bias", "lora_A", "lora_B", "xa", "q", "k", "v", "lse", "seqlens"}
S2_OPS = {"s2_attention", "s2_attention_backward"}


def call(op, args, name, value):
    """The op on args with args[name] = value; its tensor results (what it
    wrote, for nf4_dequantize_into: each call gets a fresh out)."""
    args = dict(args, **{name: value})
    if op == "nf4_dequantize_into":
        if name != "out":
            args["out"] = torch.empty_like(args["out"])
        ops.nf4_dequantize_into(**args)
        return [args["out"]]
    return outputs(getattr(ops, op)(**args))


def kind(name):
    return "uint8" if name in UINT8_ARGS else "int" if name in INT_ARGS else "float"


def sweep(variants):
    """pytest params (op, argument, variant) over every raw op's tensor arguments."""
    return [pytest.param(op, name, v, id=f"{op}-{name}-{v}")
            for op in RAW_BASELINES for name in tensor_args(op) for v in variants(op, name)]


DTYPE_SWEEP = sweep(lambda op, name: [str(d).removeprefix("torch.") for d in WRONG_DTYPES[kind(name)]])
# (The emulated ops are CPU ops: a meta argument finds no kernel to dispatch to.)
META_SWEEP = sweep(lambda op, name: ["meta"] if len(tensor_args(op)) > 1 and op not in EMULATED_OPS else [])
# Only the element count of these counts, and one element is valid (an
# nf4_dequantize_into out of shape [] is a request for one element).
ANY_SHAPE = {"input", "offset", "nested_absmax"}
OUTPUTS = {("nf4_dequantize_into", "out")}
RANK_SWEEP = sweep(lambda op, name: (
    ([] if name in ANY_SHAPE or (op, name) in OUTPUTS else ["0-dim"])
    + (["extra-dim"] if name in FIXED_RANK or (op in S2_OPS and name in {"out", "grad_out"}) else [])))
STRIDE0_SWEEP = sweep(lambda op, name: [] if name == "offset" or (op, name) in OUTPUTS else ["stride-0"])


@pytest.mark.parametrize("op, name, dtype", DTYPE_SWEEP)
def test_raw_op_rejects_a_wrong_dtype(op, name, dtype):
    args = RAW_BASELINES[op]()
    wrong = args[name].to(getattr(torch, dtype))
    expect(bad(f"{op}-{name}-{dtype}", lambda: call(op, args, name, wrong), TypeError, arg(name)))


@pytest.mark.parametrize("op, name, device", META_SWEEP)
def test_raw_op_rejects_a_meta_operand_among_cpu_ones(op, name, device):
    # The dispatcher sends any call with a meta tensor to the fake kernel, which
    # would return uninitialised CPU memory.
    args = RAW_BASELINES[op]()
    expect(bad(f"{op}-{name}-meta", lambda: call(op, args, name, args[name].to("meta")), RuntimeError, arg(name),
               *META_AND_CPU))


@pytest.mark.parametrize("op, name, variant", RANK_SWEEP)
def test_raw_op_rejects_a_wrong_rank(op, name, variant):
    args = RAW_BASELINES[op]()
    wrong = torch.zeros((), dtype=args[name].dtype) if variant == "0-dim" else args[name].unsqueeze(0)
    expect(bad(f"{op}-{name}-{variant}", lambda: call(op, args, name, wrong), ValueError, arg(name)))


@pytest.mark.parametrize("op, name, variant", STRIDE0_SWEEP)
def test_raw_op_reads_a_stride_0_view_as_its_copy(op, name, variant):
    # The view starts a contiguous tensor of the full size, so a kernel that
    # ignores strides reads wrong values, not past the end of memory.
    args = RAW_BASELINES[op]()
    view = args[name].flatten()[:1].expand(args[name].shape)
    for got, want in zip(call(op, args, name, view), call(op, args, name, view.contiguous()), strict=True):
        assert torch.equal(got, want), f"{op}: a stride-0 {name} gave another result than its contiguous copy"
