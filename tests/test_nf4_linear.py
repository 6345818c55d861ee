"""NF4Linear: the frozen QLoRA base layer."""

import pytest
import torch

import loraops
from loraops.nn import NF4Linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_is_linear_over_dequantized_weight(dtype, bias, cpu_bf16):
    lin = torch.nn.Linear(96, 40, bias=bias).to(dtype)
    layer = NF4Linear.from_linear(lin, blocksize=32)
    x = torch.randn(2, 3, 96, dtype=dtype)
    w = loraops.nf4.quantize(lin.weight, blocksize=32).dequantize(torch.float32)
    if cpu_bf16 and dtype == torch.bfloat16:
        w = w.to(torch.bfloat16).float()  # bf16 GEMMs take the weight dequantized to bf16
    # computed in fp32 and rounded once to the input dtype
    want = torch.nn.functional.linear(x.float(), w, None if lin.bias is None else lin.bias.float()).to(dtype)
    torch.testing.assert_close(layer(x), want)
    assert not any(p is layer.weight for p in layer.parameters())
    assert not any(p.requires_grad for p in layer.parameters())  # r = 0: nothing to train


def test_state_dict_roundtrip():
    layer = NF4Linear.from_linear(torch.nn.Linear(64, 24))
    sd = layer.state_dict()
    fresh = NF4Linear.from_linear(torch.nn.Linear(64, 24))
    fresh.load_state_dict(sd)
    assert all(torch.equal(sd[k], v) for k, v in fresh.state_dict().items())
    x = torch.randn(4, 64)
    assert torch.equal(fresh(x), layer(x))


def test_load_rejects_wrong_shape_and_malformed():
    layer = NF4Linear.from_linear(torch.nn.Linear(64, 24))
    other = NF4Linear.from_linear(torch.nn.Linear(64, 32)).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        layer.load_state_dict({**other, "bias": layer.bias.detach()})
    broken = dict(layer.state_dict())
    broken["weight.absmax"] = broken["weight.absmax"][:3]
    with pytest.raises(RuntimeError, match="weight.absmax' must have"):
        layer.load_state_dict(broken)
    missing = {k: v for k, v in layer.state_dict().items() if not k.startswith("weight")}
    with pytest.raises(RuntimeError, match="Missing key"):
        layer.load_state_dict(missing)


def test_module_to_and_dense_linear():
    lin = torch.nn.Linear(64, 16)
    layer = NF4Linear.from_linear(lin).to("cpu")
    dense = layer.dense_linear()
    assert isinstance(dense, torch.nn.Linear)
    x = torch.randn(3, 64)
    torch.testing.assert_close(dense(x), layer(x))
    assert "blocksize=64" in repr(layer)


def test_rejects_bad_construction():
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        NF4Linear.from_linear(torch.nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="weight must be 2-D"):
        NF4Linear(loraops.nf4.quantize(torch.randn(8, 8, 8)))
    with pytest.raises(ValueError, match="bias must have shape"):
        NF4Linear(loraops.nf4.quantize(torch.randn(8, 64)), torch.zeros(9))


@pytest.mark.parametrize("use_rslora", [False, True])
def test_qlora_adapter_trains_and_merges(use_rslora):
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 24, dtype=torch.bfloat16)
    layer = NF4Linear.from_linear(lin, r=4, alpha=8, dropout=0.1, use_rslora=use_rslora)
    assert layer.scale == (8 / 2 if use_rslora else 2)
    assert layer.lora_A.dtype == torch.float32 and layer.lora_B.dtype == torch.float32  # fp32 adapters, as peft
    assert torch.equal(layer.lora_B, torch.zeros(24, 4))
    trainable = [n for n, p in layer.named_parameters() if p.requires_grad]
    assert trainable == ["lora_A", "lora_B"]
    opt = torch.optim.SGD([layer.lora_A, layer.lora_B], lr=0.1)
    x = torch.randn(16, 64, dtype=torch.bfloat16)
    target = torch.randn(16, 24)
    losses = []
    for _ in range(5):
        loss = (layer(x).float() - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    layer.eval()
    merged = layer.merge()
    assert isinstance(merged, torch.nn.Linear) and merged.weight.dtype == torch.bfloat16
    torch.testing.assert_close(merged(x).float(), layer(x).float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("double_quant", [False, True])
def test_quantization_state_is_frozen_parameters_that_dtype_casts_leave_alone(double_quant):
    # Parameters, so FSDP2's fully_shard shards them; a module-wide cast must not
    # round the fp32 scales (nor the nested code and offset) to half precision.
    layer = NF4Linear.from_linear(torch.nn.Linear(64, 24), r=2, double_quant=double_quant)
    names = {n for n, p in layer.named_parameters() if not p.requires_grad}
    assert {"weight_packed", "weight_absmax"} <= names and ("weight_nested_absmax" in names) == double_quant
    x = torch.randn(3, 64)
    want = layer(x)
    before = {k: v.clone() for k, v in layer.weight.op_arguments().items() if isinstance(v, torch.Tensor)}
    layer.half()
    assert layer.lora_A.dtype == torch.float16 and layer.bias.dtype == torch.float16
    for name, tensor in layer.weight.op_arguments().items():
        if isinstance(tensor, torch.Tensor):
            assert tensor.dtype == before[name].dtype and torch.equal(tensor, before[name]), name
    assert isinstance(layer.weight_packed, torch.nn.Parameter) and not layer.weight_packed.requires_grad
    layer.float()
    torch.testing.assert_close(layer(x), want, rtol=1e-2, atol=1e-2)  # only lora_A, lora_B, bias went via fp16
    assert set(layer.state_dict()) >= {"weight", "weight.absmax", "weight.quant_map"}
    assert not any(k.startswith("weight_") for k in layer.state_dict())
