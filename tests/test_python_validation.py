"""The Python API's own checks: bad input gets a clear exception naming the
function, the argument and what was expected, never a silent wrong result.

TypeError for a wrong type, ValueError for a wrong value, RuntimeError for
operands on different devices (naming both), as the ops' C++ checks do. Meta
tensors get their own section: mixed with CPU tensors they send a call to the
op's fake kernel, which used to return uninitialised CPU memory.
"""

import json
import types
import warnings

import numpy as np
import pytest
import torch

import loraops
from loraops import _checks
from loraops.nf4 import NF4Weight

NAN, INF = float("nan"), float("inf")
K, N, R, ROWS = 64, 8, 2, 3  # in_features, out_features, rank, rows of x
BOTH_DEVICES = r"(?=.*\bmeta\b)(?=.*\bcpu\b)"  # a device mismatch names both devices


def meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def quantized(shape=(N, K), double_quant=True):
    return loraops.nf4.quantize(torch.randn(shape), blocksize=32, double_quant=double_quant)


# Each builds a fresh valid call (the same one each time: fixed seed) and changes some of its arguments.
def lora(**changes):
    torch.manual_seed(0)
    args = dict(x=torch.randn(ROWS, K), weight=torch.randn(N, K), lora_A=torch.randn(R, K), lora_B=torch.randn(N, R),
                scale=2.0, bias=torch.randn(N), dropout=0.1, seed=3)
    return loraops.lora_linear(**{**args, **changes})


def dora(**changes):
    torch.manual_seed(0)
    args = dict(x=torch.randn(ROWS, K), weight=torch.randn(N, K), lora_A=torch.randn(R, K), lora_B=torch.randn(N, R),
                magnitude=torch.rand(N) + 0.5, scale=2.0, bias=torch.randn(N))
    return loraops.dora_linear(**{**args, **changes})


def vera(**changes):
    torch.manual_seed(0)
    args = dict(x=torch.randn(ROWS, K), weight=torch.randn(N, K), vera_A=torch.randn(R, K), vera_B=torch.randn(N, R),
                lambda_d=torch.randn(R), lambda_b=torch.randn(N), bias=torch.randn(N))
    return loraops.vera_linear(**{**args, **changes})


def multi(**changes):
    torch.manual_seed(0)
    args = dict(x=torch.randn(ROWS, K), weight=torch.randn(N, K), lora_A=torch.randn(3, R, K),
                lora_B=torch.randn(3, N, R), adapter_index=torch.tensor([0, 2, -1]), scale=2.0, bias=torch.randn(N))
    return loraops.lora_linear_multi(**{**args, **changes})


def s2(**changes):
    torch.manual_seed(0)
    args = dict(q=torch.randn(2, 16, 4, 8), k=torch.randn(2, 16, 2, 8), v=torch.randn(2, 16, 2, 8), group_size=8,
                seqlens=torch.tensor([16, 11]))
    return loraops.s2_attention(**{**args, **changes})


STATE_KEY = "weight.quant_state.bitsandbytes__nf4"


def state_dict(double_quant=True, **fields):
    """A valid bitsandbytes state dict, with fields of its JSON quant_state changed."""
    sd = quantized(double_quant=double_quant).to_bnb_state_dict()
    state = json.loads(bytes(sd[STATE_KEY].tolist()))
    state.update(fields)
    sd[STATE_KEY] = torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)
    return sd


# ============================================================================= meta operands among CPU ones
@pytest.mark.parametrize("call, name", [
    (lambda: lora(bias=meta(N)), "bias"),
    (lambda: lora(lora_B=meta(N, R)), "lora_B"),
    (lambda: lora(x=meta(ROWS, K)), "weight"),  # x decides: the CPU weight is the odd one
    (lambda: lora(weight=quantized(), bias=meta(N)), "bias"),
    (lambda: lora(weight=quantized().to("meta")), "weight"),
    (lambda: vera(lambda_b=meta(N)), "lambda_b"),
    (lambda: dora(magnitude=meta(N)), "magnitude"),
    (lambda: dora(bias=meta(N)), "bias"),
    (lambda: dora(weight=quantized(), lora_A=meta(R, K)), "lora_A"),
    (lambda: multi(adapter_index=meta(ROWS, dtype=torch.int64)), "adapter_index"),
    (lambda: multi(lora_A=meta(3, R, K)), "lora_A"),
    (lambda: multi(scale=meta(3)), "scale"),
    (lambda: s2(seqlens=meta(2, dtype=torch.int64)), "seqlens"),
    (lambda: s2(k=meta(2, 16, 2, 8)), "k"),
    (lambda: s2(q=meta(2, 16, 4, 8)), "k"),
    (lambda: loraops.nf4.dequantize(quantized(), out=meta(N, K)), "out"),
    (lambda: NF4Weight(torch.zeros(32, dtype=torch.uint8), meta(2), blocksize=32, shape=(8, 8),
                       dtype=torch.float32), "absmax"),
    (lambda: loraops.nn.NF4Linear(quantized(), bias=meta(N)), "bias"),
])
def test_public_api_refuses_a_meta_operand(call, name):
    with pytest.raises(RuntimeError, match=rf"\b{name}\b must be on .*{BOTH_DEVICES}"):
        call()


def raw_args(op):
    """One valid call of a raw op, by argument name."""
    qw = quantized()
    lora_args = dict(x=torch.randn(ROWS, K), bias=torch.randn(N), lora_A=torch.randn(R, K),
                     lora_B=torch.randn(N, R), scale=2.0, dropout=0.1, seed=5)
    nf4 = dict(qw.op_arguments(), weight_shape=[N, K])
    s2_args = dict(q=torch.randn(2, 16, 4, 8), k=torch.randn(2, 16, 2, 8), v=torch.randn(2, 16, 2, 8), group_size=8,
                   mode="segments", causal=True, seqlens=torch.tensor([16, 11]), scale=None)
    if op == "nf4_dequantize":
        return dict(qw.op_arguments(), shape=[N, K], dtype=torch.float32)
    if op == "nf4_dequantize_into":
        return dict(qw.op_arguments(), out=torch.empty(N, K))
    if op in ("lora_linear", "lora_linear_backward"):
        args = dict(lora_args, weight=torch.randn(N, K))
    elif op in ("lora_linear_nf4", "lora_linear_nf4_backward"):
        args = dict(lora_args, **nf4)
    else:
        args = s2_args
    if op.endswith("_backward"):
        out = getattr(torch.ops.loraops, op.removesuffix("_backward"))(**args)
        if op.startswith("lora"):
            needs_grad = [True] * (4 if "nf4" in op else 5)
            args = dict(args, grad_out=torch.randn(ROWS, N), xa=out[1], needs_grad=needs_grad)
        else:
            args = dict(args, grad_out=torch.randn_like(out[0]), out=out[0], lse=out[1])
    return args


RAW_META_CASES = [
    ("lora_linear", "bias"), ("lora_linear", "weight"), ("lora_linear_nf4", "absmax"),
    ("lora_linear_nf4", "nested_code"), ("lora_linear_backward", "xa"), ("lora_linear_backward", "grad_out"),
    ("lora_linear_nf4_backward", "lora_A"), ("s2_attention", "v"), ("s2_attention", "seqlens"),
    ("s2_attention_backward", "lse"), ("nf4_dequantize", "nested_absmax"), ("nf4_dequantize", "offset"),
    ("nf4_dequantize_into", "out"),
]


@pytest.mark.parametrize("op, name", RAW_META_CASES)
def test_fake_kernels_refuse_a_meta_operand_among_cpu_ones(op, name):
    args = raw_args(op)
    args[name] = args[name].to("meta")
    with pytest.raises(RuntimeError, match=rf"\b{name}\b must be on .*{BOTH_DEVICES}"):
        getattr(torch.ops.loraops, op)(**args)


@pytest.mark.parametrize("op", list(dict.fromkeys(op for op, _ in RAW_META_CASES)))
def test_fake_kernels_still_infer_shapes_on_meta(op):
    args = {k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in raw_args(op).items()}
    getattr(torch.ops.loraops, op)(**args)


def test_public_api_on_meta_tensors_infers_shapes():
    # Autocast has no meta device: asking it used to raise from lora_linear.
    out = lora(**{k: meta(*v.shape) for k, v in dict(x=torch.empty(ROWS, K), weight=torch.empty(N, K),
                                                      lora_A=torch.empty(R, K), lora_B=torch.empty(N, R),
                                                      bias=torch.empty(N)).items()})
    assert out.device.type == "meta" and out.shape == (ROWS, N)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fake kernel serves meta: no fallback to the reference, no warning
        out = loraops.s2_attention(meta(2, 16, 4, 8), meta(2, 16, 2, 8), meta(2, 16, 2, 8), 8)
    assert out.device.type == "meta" and out.shape == (2, 16, 4, 8)
    assert loraops.nf4.dequantize(quantized().to("meta")).device.type == "meta"


def test_device_rule_lets_host_tensors_go_with_a_device_operand():
    # seqlens and the NF4 nested_code / offset may come from the host (the op copies
    # them); never from meta, and a meta primary takes nothing real.
    def on(device):
        return types.SimpleNamespace(device=torch.device(device))

    _checks.check_devices("op", "q", on("cuda"), {"seqlens": on("cpu")}, host_ok=("seqlens",))
    with pytest.raises(RuntimeError, match=r"seqlens must be on cuda like q, got meta"):
        _checks.check_devices("op", "q", on("cuda"), {"seqlens": on("meta")}, host_ok=("seqlens",))
    with pytest.raises(RuntimeError, match=r"k must be on cuda like q, got cpu"):
        _checks.check_devices("op", "q", on("cuda"), {"k": on("cpu")}, host_ok=("seqlens",))
    with pytest.raises(RuntimeError, match=r"seqlens must be on meta like q, got cpu"):
        _checks.check_devices("op", "q", on("meta"), {"seqlens": on("cpu")}, host_ok=("seqlens",))


@pytest.mark.parametrize("key", ["weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax",
                                 "weight.nested_quant_map", STATE_KEY])
def test_state_dict_with_a_tensor_on_meta_is_refused_by_key(key):
    sd = state_dict()
    sd[key] = sd[key].to("meta")
    with pytest.raises(ValueError, match=rf"^(?=.*'{key}')(?=.*must be on){BOTH_DEVICES}"):
        NF4Weight.from_bnb_state_dict(sd)


def test_state_dict_all_on_meta_is_refused_not_read():
    sd = {k: v.to("meta") for k, v in state_dict().items()}
    with pytest.raises(ValueError, match=rf"'{STATE_KEY}' is on meta"):
        NF4Weight.from_bnb_state_dict(sd)


# ============================================================================= values checked as they are used
@pytest.mark.parametrize("offset", [1e39, -1e39, 10**400, 3.4028236e38])
def test_state_dict_nested_offset_must_be_finite_in_float32(offset):
    # finite as a double (or a JSON int), Inf as the float32 the kernels use
    with pytest.raises(ValueError, match="nested_offset must be finite in float32"):
        NF4Weight.from_bnb_state_dict(state_dict(nested_offset=offset))


def test_state_dict_largest_float32_offset_loads():
    assert NF4Weight.from_bnb_state_dict(state_dict(nested_offset=3.4028234e38)).offset.isfinite()


@pytest.mark.parametrize("key, double_quant", [("weight.absmax", False), ("weight.nested_absmax", True),
                                               ("weight.nested_quant_map", True)])
@pytest.mark.parametrize("bad", [NAN, INF])
def test_state_dict_scales_must_be_finite(key, double_quant, bad):
    sd = state_dict(double_quant=double_quant)
    sd[key] = sd[key].clone()
    sd[key][0] = bad
    with pytest.raises(ValueError, match=rf"'{key}' must be finite"):
        NF4Weight.from_bnb_state_dict(sd)


@pytest.mark.parametrize("nested_blocksize", [2**63, 2**64])
def test_state_dict_nested_blocksize_beyond_int64_is_refused_at_load(nested_blocksize):
    with pytest.raises(ValueError, match="nested_blocksize must be positive and fit int64"):
        NF4Weight.from_bnb_state_dict(state_dict(nested_blocksize=nested_blocksize))


def test_state_dict_shape_beyond_int64_is_refused():
    with pytest.raises(ValueError, match="shape must be a list of non-negative ints"):
        NF4Weight.from_bnb_state_dict(state_dict(shape=[2**64, 0]))


def test_state_dict_bitsandbytes_cannot_read_is_refused():
    sd = state_dict()
    state = json.loads(bytes(sd[STATE_KEY].tolist()))
    del state["nested_dtype"]
    sd[STATE_KEY] = torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)
    with pytest.raises(ValueError, match="quant_state is missing 'nested_dtype'"):
        NF4Weight.from_bnb_state_dict(sd)
    sd = state_dict()
    sd[STATE_KEY] = sd[STATE_KEY].long()  # the same values, not the same bytes
    with pytest.raises(ValueError, match=rf"'{STATE_KEY}' must be uint8"):
        NF4Weight.from_bnb_state_dict(sd)


def test_state_dict_container_and_prefix_types():
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        NF4Weight.from_bnb_state_dict([("weight", torch.zeros(1))])
    with pytest.raises(TypeError, match="prefix must be a str"):
        NF4Weight.from_bnb_state_dict(state_dict(), prefix=None)


@pytest.mark.parametrize("call, error, message", [
    (lambda: dora(scale=NAN), ValueError, "dora_linear: scale must be a finite float32 value"),
    (lambda: dora(scale=1e39), ValueError, "dora_linear: scale must be a finite float32 value"),
    (lambda: multi(scale=NAN), ValueError, "lora_linear_multi: scale must be a finite float32 value"),
    (lambda: multi(scale=1e39), ValueError, "lora_linear_multi: scale must be a finite float32 value"),
    (lambda: multi(scale=torch.tensor([1.0, NAN, 2.0])), ValueError, r"scale\[1\] must be a finite float32"),
    (lambda: multi(scale=[1.0, 2.0]), ValueError, r"scale must be a float or \[3\] per-adapter scales"),
    (lambda: multi(scale=torch.ones(4)), ValueError, r"scale must be a float or \[3\]"),
    (lambda: multi(scale=True), TypeError, "scale must be a float, got a bool|scale must be a float, got bool"),
    (lambda: multi(scale="2"), TypeError, "lora_linear_multi: scale must be a float"),
    (lambda: s2(scale=1e39), ValueError, "s2_attention: scale must be a finite float32 value"),
    (lambda: lora(scale="2"), TypeError, "lora_linear: scale must be a float"),
    (lambda: lora(dropout="0.1"), TypeError, "lora_linear: dropout must be a float"),
    (lambda: lora(dropout=NAN), ValueError, r"lora_linear: dropout must be in \[0, 1\)"),
])
def test_floats_are_numbers_finite_where_used(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_multi_adapter_scales_accept_floats_sequences_tensors_and_arrays():
    want = multi(scale=[0.5, 1.0, 2.0])
    for scale in ((0.5, 1.0, 2.0), torch.tensor([0.5, 1.0, 2.0]), np.array([0.5, 1.0, 2.0])):
        assert torch.equal(multi(scale=scale), want)
    assert torch.equal(multi(scale=np.float32(2.0)), multi(scale=torch.tensor(2.0)))


# ============================================================================= ints: int64, integral, not bool
@pytest.mark.parametrize("call, name", [
    (lambda v: lora(seed=v), "seed"),
    (lambda v: loraops.vera_linear(torch.randn(ROWS, K), torch.randn(N, K), torch.randn(R, K), torch.randn(N, R),
                                   torch.randn(R), torch.randn(N), dropout=0.1, seed=v), "seed"),
    (lambda v: loraops.nf4.quantize(torch.randn(N, K), blocksize=v), "blocksize"),
    (lambda v: s2(group_size=v), "group_size"),
    (lambda v: NF4Weight(torch.zeros(32, dtype=torch.uint8), torch.ones(1), blocksize=v, shape=(8, 8),
                         dtype=torch.float32), "blocksize"),
    (lambda v: NF4Weight(torch.zeros(32, dtype=torch.uint8), torch.ones(1), blocksize=64, shape=(8, 8),
                         dtype=torch.float32, nested_blocksize=v), "nested_blocksize"),
    (lambda v: loraops.nn.NF4Linear.from_linear(torch.nn.Linear(K, N), blocksize=v), "blocksize"),
])
def test_int_arguments(call, name):
    for value in (2**64, -(2**64), 2**63):
        with pytest.raises(ValueError, match=rf"\b{name} must be an int in \["):
            call(value)
    for value, kind in ((7.9, "float"), (64.0, "float"), (True, "bool"), ("64", "str"), ([64], "list")):
        with pytest.raises(TypeError, match=rf"\b{name} must be an int, got a? ?{kind}"):
            call(value)


def test_integral_numpy_and_torch_ints_are_ints():
    assert torch.equal(s2(group_size=np.int64(8)), s2(group_size=8))
    assert torch.equal(s2(group_size=torch.tensor(8)), s2(group_size=8))
    assert loraops.nf4.quantize(torch.randn(N, K), blocksize=np.int32(64)).blocksize == 64
    assert torch.equal(lora(seed=np.int64(-(2**63))), lora(seed=-(2**63)))


def test_nf4weight_constructor_checks_its_parts():
    packed, absmax = torch.zeros(32, dtype=torch.uint8), torch.ones(1)
    with pytest.raises(TypeError, match="NF4Weight: packed must be a torch.Tensor"):
        NF4Weight([0] * 32, absmax, blocksize=64, shape=(8, 8), dtype=torch.float32)
    with pytest.raises(TypeError, match="NF4Weight: dtype must be float32"):
        NF4Weight(packed, absmax, blocksize=64, shape=(8, 8), dtype=torch.int32)
    with pytest.raises(ValueError, match="NF4Weight: shape must be an int in"):
        NF4Weight(packed, absmax, blocksize=64, shape=(8, -8), dtype=torch.float32)
    with pytest.raises(TypeError, match="NF4Weight: shape must be an int, got float"):
        NF4Weight(packed, absmax, blocksize=64, shape=(8, 8.0), dtype=torch.float32)
    with pytest.raises(ValueError, match="must be given together"):
        NF4Weight(packed, absmax, blocksize=64, shape=(8, 8), dtype=torch.float32, offset=torch.zeros(()))


# ============================================================================= shapes that name the argument
@pytest.mark.parametrize("call, message", [
    (lambda: dora(lora_A=torch.randn(R, K + 1)), r"dora_linear: lora_A must be \[r, 64\]"),
    (lambda: dora(weight=quantized(), lora_A=torch.randn(R, K + 1)), r"dora_linear: lora_A must be \[r, 64\]"),
    (lambda: dora(lora_B=torch.randn(N, R + 1)), r"dora_linear: lora_B must be \[8, 2\]"),
    (lambda: dora(weight=quantized(), lora_B=torch.randn(N, R + 1)), r"dora_linear: lora_B must be \[8, 2\]"),
    (lambda: dora(x=torch.randn(ROWS, K + 1)), "dora_linear: x must have in_features = 64"),
    (lambda: dora(magnitude=torch.ones(N + 1)), r"dora_linear: magnitude must be \[8\]"),
    (lambda: dora(bias=torch.ones(1)), r"dora_linear: bias must be \[8\]"),  # it would broadcast
    (lambda: vera(vera_A=torch.randn(R, K + 1)), r"vera_linear: vera_A must be \[r, 64\]"),
    (lambda: vera(vera_A=torch.randn(K)), r"vera_linear: vera_A must be \[r, 64\]"),
    (lambda: multi(lora_B=torch.randn(3, N + 1, R)), r"lora_linear_multi: lora_A must be \[n, r, 64\] and lora_B "
                                                      r"\[n, 8, r\]"),
    (lambda: multi(x=torch.tensor(1.0)), "lora_linear_multi: x must be"),
])
def test_shapes_are_checked_against_the_weight(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("call, message", [
    (lambda: multi(adapter_index=torch.tensor([0.0, 1.0, 2.0])), "adapter_index must be int32 or int64"),
    (lambda: multi(adapter_index=[0, 1, 2]), "adapter_index must be a torch.Tensor"),
    (lambda: vera(lambda_d=[1.0] * R), "lambda_d must be a torch.Tensor"),
    (lambda: dora(weight=[[1.0]]), "weight must be a tensor or an NF4Weight"),
    (lambda: s2(q=[[1.0]]), "q must be a torch.Tensor"),
    (lambda: s2(causal="no"), "s2_attention: causal must be a bool"),
    (lambda: loraops.nf4.quantize(torch.randn(N, K), double_quant="no"), "quantize: double_quant must be a bool"),
    (lambda: loraops.nf4.dequantize(quantized(), out=torch.empty(N, K, dtype=torch.int64)),
     "dequantize: out must be float32"),
    (lambda: loraops.nf4.dequantize(quantized(), out=[0.0] * (N * K)), "dequantize: out must be a torch.Tensor"),
    (lambda: loraops.nn.NF4Linear(quantized(), bias=torch.zeros(N, dtype=torch.int64)), "bias must be a floating"),
    (lambda: loraops.set_cpu_isa(5), "set_cpu_isa: isa must be a str"),
])
def test_wrong_types_are_type_errors(call, message):
    with pytest.raises(TypeError, match=message):
        call()


# ============================================================================= nn modules
@pytest.mark.parametrize("cls", ["LoraLinear", "NF4Linear"])
@pytest.mark.parametrize("change, error, message", [
    (dict(alpha=NAN), ValueError, "alpha must be a finite float32 value"),
    (dict(alpha=1e39), ValueError, "alpha must be a finite float32 value"),
    (dict(alpha="8"), TypeError, "alpha must be a float"),
    (dict(dropout="0.1"), TypeError, "dropout must be a float"),
    (dict(dropout=NAN), ValueError, r"dropout must be in \[0, 1\)"),
    (dict(r=2.0), TypeError, "r must be an int"),
    (dict(r=True), TypeError, "r must be an int"),
    (dict(use_rslora="no"), TypeError, "use_rslora must be a bool"),
])
def test_adapter_arguments(cls, change, error, message):
    args = {"r": R, "alpha": 4.0, **change}
    with pytest.raises(error, match=rf"{cls}: {message}"):
        if cls == "LoraLinear":
            loraops.nn.LoraLinear(K, N, **args)
        else:
            loraops.nn.NF4Linear(quantized(), **args)


def test_lora_linear_layer_sizes():
    with pytest.raises(ValueError, match="LoraLinear: in_features must be an int in"):
        loraops.nn.LoraLinear(-1, N, r=R)
    with pytest.raises(TypeError, match="LoraLinear: out_features must be an int"):
        loraops.nn.LoraLinear(K, 8.5, r=R)


def nf4_model():
    return torch.nn.Sequential(loraops.nn.NF4Linear.from_linear(torch.nn.Linear(K, N)))


def test_nf4linear_load_reports_unexpected_weight_keys():
    model = nf4_model()
    sd = model.state_dict()
    sd["0.weight.bogus"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"0\.weight\.bogus\""):
        model.load_state_dict(sd)
    result = model.load_state_dict(sd, strict=False)
    assert result.unexpected_keys == ["0.weight.bogus"] and result.missing_keys == []


def test_nf4linear_load_copies_unless_assign():
    source = nf4_model()
    sd = source.state_dict()
    model = nf4_model()
    model.load_state_dict(sd)
    want = source[0].weight.dequantize()
    assert not any(t.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
                   for t in model[0].weight._tensors().values() for v in sd.values())
    for value in sd.values():  # the caller reuses its buffers
        value.zero_()
    assert torch.equal(model[0].weight.dequantize(), want)
    assigned = nf4_model()
    sd = source.state_dict()
    assigned.load_state_dict(sd, assign=True)  # as nn.Module: the state dict's tensors themselves
    assert assigned[0].weight.packed.untyped_storage().data_ptr() == sd["0.weight"].untyped_storage().data_ptr()


# ============================================================================= integrations
def test_s2_attention_integration_needs_a_transformers_model():
    from loraops.integrations import transformers as lt

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    for fn in (lt.enable_s2_attention, lt.disable_s2_attention):
        with pytest.raises(TypeError, match=rf"{fn.__name__}: model must be a transformers model .*config"):
            fn(model)
    with pytest.raises(TypeError, match="enable_s2_attention: group_size_ratio must be a float"):
        lt.enable_s2_attention(model, group_size_ratio="0.25")


def test_mark_trainable_refuses_a_lone_string():
    from loraops.integrations import transformers as lt

    model = torch.nn.Sequential(torch.nn.Embedding(4, 4), torch.nn.Linear(4, 4))
    model.requires_grad_(False)
    with pytest.raises(TypeError, match="keys must be an iterable of str"):
        lt.mark_embeddings_and_norms_trainable(model, "embed")  # would match every name with an e, m, b or d
    assert lt.mark_embeddings_and_norms_trainable(model, ["0."]) == ["0.weight"]


def test_peft_fuse_needs_a_module():
    from loraops.integrations import peft as lp

    with pytest.raises(TypeError, match="fuse: model must be an nn.Module"):
        lp.fuse("model")


def test_meta_nf4_weight_has_no_bnb_state_dict():
    with pytest.raises(RuntimeError, match="to_bnb_state_dict: the weight is on meta"):
        quantized().to("meta").to_bnb_state_dict()


def test_checked_wrappers_trace_under_torch_compile():
    # The checks are plain Python over shapes, devices and Python scalars: fullgraph still holds.
    layer = loraops.nn.NF4Linear.from_linear(torch.nn.Linear(K, N), r=R, alpha=4.0)
    x = torch.randn(ROWS, K, requires_grad=True)
    torch.testing.assert_close(torch.compile(layer, backend="aot_eager", fullgraph=True)(x), layer(x))

    def attention(q):
        return loraops.s2_attention(q, q, q, 4, seqlens=torch.tensor([8, 6]), scale=0.3)

    q = torch.randn(2, 8, 4, 8)
    torch.testing.assert_close(torch.compile(attention, backend="aot_eager", fullgraph=True)(q), attention(q))


def test_bnb_state_dict_does_not_hand_out_the_nf4_code_constant():
    # a caller reusing its state dict's buffers (zeroing them, say) must not change the NF4 code itself
    sd = quantized().to_bnb_state_dict()
    assert sd["weight.quant_map"].untyped_storage().data_ptr() != loraops.nf4.NF4_CODE.untyped_storage().data_ptr()
