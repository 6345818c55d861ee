"""Bad input to the NF4 API and ops: a clear exception naming the argument,
never a crash or a silent wrong result."""

import json

import pytest
import torch

import loraops
from loraops.nf4 import NF4Weight


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.uint8, torch.bool])
def test_quantize_rejects_dtype(dtype):
    with pytest.raises(TypeError, match="w must be float32, bfloat16 or float16"):
        loraops.nf4.quantize(torch.zeros(64, dtype=dtype))


def test_quantize_rejects_non_tensor():
    with pytest.raises(TypeError, match="w must be a torch.Tensor"):
        loraops.nf4.quantize([1.0, 2.0])


@pytest.mark.parametrize("blocksize", [0, -64, 16, 48, 100, 8192])
def test_quantize_rejects_blocksize(blocksize):
    with pytest.raises(ValueError, match="blocksize must be a power of two between 32 and 4096"):
        loraops.nf4.quantize(torch.randn(256), blocksize=blocksize)


def test_quantize_rejects_float_blocksize():
    with pytest.raises(TypeError, match="blocksize must be an int"):
        loraops.nf4.quantize(torch.randn(256), blocksize=64.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_quantize_rejects_nonfinite(cpu_isa, bad, dtype):
    for position in (0, 77, 199):  # vector body and scalar tail
        w = torch.randn(200).to(dtype)
        w[position] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            loraops.nf4.quantize(w)


def test_raw_op_checks_input():
    with pytest.raises(TypeError, match="input must be float32"):
        torch.ops.loraops.nf4_quantize(torch.zeros(4, dtype=torch.float64), 64, True)
    with pytest.raises(ValueError, match="blocksize"):
        torch.ops.loraops.nf4_quantize(torch.zeros(4), 63, True)


@pytest.fixture
def qw():
    return loraops.nf4.quantize(torch.randn(10, 70), blocksize=32)


def raw_args(qw, **changes):
    args = dict(
        packed=qw.packed, absmax=qw.absmax, nested_absmax=qw.nested_absmax, nested_code=qw.nested_code,
        offset=qw.offset, blocksize=qw.blocksize, nested_blocksize=qw.nested_blocksize,
        shape=list(qw.shape), dtype=torch.float32,
    )
    args.update(changes)
    return list(args.values())


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(packed=torch.zeros(349, dtype=torch.uint8)), "packed must hold"),
        (dict(packed=torch.zeros(351, dtype=torch.uint8)), "packed must hold"),
        (dict(packed=torch.zeros(350, dtype=torch.int8)), "packed must be uint8"),
        (dict(absmax=torch.zeros(21, dtype=torch.uint8)), "absmax must have"),
        (dict(absmax=torch.zeros(22, dtype=torch.float32)), "absmax must be uint8"),
        (dict(nested_absmax=torch.zeros(2)), "nested_absmax must have"),
        (dict(nested_absmax=torch.zeros(1, dtype=torch.float64)), "nested_absmax must be float32"),
        (dict(nested_code=torch.zeros(255)), "nested_code must have 256"),
        (dict(offset=torch.zeros(2)), "offset must have one element"),
        (dict(offset=None), "must be given together"),
        (dict(blocksize=64), "absmax must have"),
        (dict(blocksize=33), "blocksize must be a power of two"),
        (dict(nested_blocksize=0), "nested_blocksize must be positive"),
        (dict(shape=[10, 71]), "packed must hold"),
        (dict(shape=[-10, -70]), "negative"),
        (dict(shape=[2**40, 2**40, 2**40]), r"more than 2\^63 bytes"),
        (dict(dtype=torch.float64), "dtype must be float32"),
    ],
)
def test_raw_dequantize_op_checks_every_argument(qw, changes, message):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        torch.ops.loraops.nf4_dequantize(*raw_args(qw, **changes))


def test_raw_dequantize_without_double_quant_needs_fp32_absmax():
    q = loraops.nf4.quantize(torch.randn(64), double_quant=False)
    with pytest.raises(TypeError, match="absmax must be float32"):
        torch.ops.loraops.nf4_dequantize(q.packed, q.absmax.to(torch.uint8), None, None, None, 64, 256, [64],
                                         torch.float32)


def test_dequantize_out_checks(qw):
    with pytest.raises(ValueError, match="out must have shape"):
        loraops.nf4.dequantize(qw, out=torch.empty(70, 10))
    with pytest.raises(ValueError, match="out must be contiguous"):
        loraops.nf4.dequantize(qw, out=torch.empty(70, 10).t())
    with pytest.raises(TypeError, match="disagrees with out.dtype"):
        loraops.nf4.dequantize(qw, torch.float16, out=torch.empty(10, 70))
    with pytest.raises(TypeError, match="dtype must be float32"):
        loraops.nf4.dequantize(qw, torch.float64)
    with pytest.raises(TypeError, match="qw must be an NF4Weight"):
        loraops.nf4.dequantize(torch.zeros(3))


# ----------------------------------------------------------------------------- state dicts
@pytest.fixture
def sd():
    return loraops.nf4.quantize(torch.randn(24, 64)).to_bnb_state_dict()


def with_state(sd, **changes):
    key = "weight.quant_state.bitsandbytes__nf4"
    state = json.loads(bytes(sd[key].tolist()))
    state.update(changes)
    out = dict(sd)
    out[key] = torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)
    return out


def test_state_dict_roundtrip(sd):
    qw = NF4Weight.from_bnb_state_dict(sd)
    assert all(torch.equal(a, b) for a, b in zip(qw.to_bnb_state_dict().values(), sd.values()))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda sd: {k: v for k, v in sd.items() if k != "weight.absmax"}, "missing key 'weight.absmax'"),
        (lambda sd: {k: v for k, v in sd.items() if k != "weight"}, "missing key 'weight'"),
        (lambda sd: {k: v for k, v in sd.items() if "quant_state" not in k},
         "missing key 'weight.quant_state.bitsandbytes__nf4'"),
        (lambda sd: {k: v for k, v in sd.items() if k != "weight.nested_absmax"}, "missing key 'weight.nested_absmax'"),
        (lambda sd: {**sd, "weight": sd["weight"][:-1]}, "'weight' must hold 768 bytes"),
        (lambda sd: {**sd, "weight": sd["weight"].to(torch.int16)}, "must be uint8"),
        (lambda sd: {**sd, "weight.absmax": sd["weight.absmax"][:-1]}, "'weight.absmax' must have 24"),
        (lambda sd: {**sd, "weight.absmax": sd["weight.absmax"].float()}, "must be uint8 codes"),
        (lambda sd: {**sd, "weight.nested_absmax": torch.zeros(2)}, "nested_absmax' must be float32 with 1"),
        (lambda sd: {**sd, "weight.nested_quant_map": torch.zeros(16)}, "nested_quant_map' must be 256"),
        (lambda sd: {**sd, "weight.quant_map": torch.zeros(16)}, "is not the NF4 code"),
        (lambda sd: {**sd, "weight.absmax": [1, 2]}, "must be a tensor"),
        (lambda sd: {**sd, "weight.quant_state.bitsandbytes__nf4":
                     sd["weight.quant_state.bitsandbytes__nf4"][:-5]}, "is not a JSON object"),
        (lambda sd: with_state(sd, quant_type="fp4"), "quant_type must be 'nf4'"),
        (lambda sd: with_state(sd, blocksize=100), "blocksize must be a power of two"),
        (lambda sd: with_state(sd, blocksize="64"), "'blocksize' must be"),
        (lambda sd: with_state(sd, dtype="float64"), "dtype must be float32"),
        (lambda sd: with_state(sd, shape=[24, -64]), "shape must be a list of non-negative ints"),
        (lambda sd: with_state(sd, shape=[24, 65]), "'weight' must hold"),
        (lambda sd: with_state(sd, nested_offset=float("nan")), "nested_offset must be finite"),
        (lambda sd: with_state(sd, nested_blocksize=0), "nested_blocksize must be positive"),
    ],
)
def test_malformed_state_dict_is_a_clear_error(sd, mutate, message):
    with pytest.raises(ValueError, match=message):
        NF4Weight.from_bnb_state_dict(mutate(sd))


def test_prefix_is_respected(sd):
    prefixed = {f"model.q_proj.{k}": v for k, v in sd.items()}
    assert NF4Weight.from_bnb_state_dict(prefixed, prefix="model.q_proj.").shape == (24, 64)
    with pytest.raises(ValueError, match="missing key 'weight.quant_state"):
        NF4Weight.from_bnb_state_dict(prefixed)
