"""LoraLinear: the dense LoRA layer."""

import math

import pytest
import torch

from loraops.nn import LoraLinear


def test_from_linear_initialises_like_peft():
    torch.manual_seed(0)
    lin = torch.nn.Linear(40, 12)
    layer = LoraLinear.from_linear(lin, r=8, alpha=16, dropout=0.05)
    assert layer.weight.data_ptr() == lin.weight.data_ptr()  # the base weight is shared, not copied
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert torch.equal(layer.lora_B, torch.zeros(12, 8))
    bound = 1 / math.sqrt(40)  # kaiming_uniform(a=sqrt(5)) on [r, in]
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.std() > bound / 3
    assert layer.scale == 2.0
    assert LoraLinear.from_linear(lin, r=16, alpha=16, use_rslora=True).scale == 4.0
    x = torch.randn(3, 40)
    torch.testing.assert_close(layer(x), lin(x))  # B = 0: the adapter starts as a no-op


def test_forward_matches_reference_and_merge_returns_an_equivalent_linear():
    torch.manual_seed(1)
    layer = LoraLinear.from_linear(torch.nn.Linear(48, 20), r=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.eval()
    x = torch.randn(5, 48)
    want = torch.nn.functional.linear(x, layer.weight + 2.0 * layer.lora_B @ layer.lora_A, layer.bias)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    before = layer.weight.clone()
    merged = layer.merge()
    assert type(merged) is torch.nn.Linear
    torch.testing.assert_close(merged(x), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(layer.weight, before)  # the layer itself is not changed
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)


def test_freeze_a_and_dropout_only_in_training():
    torch.manual_seed(2)
    layer = LoraLinear.from_linear(torch.nn.Linear(32, 8), r=2, alpha=2, dropout=0.5, freeze_A=True)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 32)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))  # a new mask each call
    layer(x).sum().backward()
    assert layer.lora_A.grad is None and layer.lora_B.grad is not None


def test_bad_arguments():
    with pytest.raises(ValueError, match="r must be a non-negative int"):
        LoraLinear(8, 8, r=-1)
    with pytest.raises(ValueError, match="dropout must be in"):
        LoraLinear(8, 8, r=2, dropout=1.5)
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        LoraLinear.from_linear(torch.nn.Conv1d(2, 2, 1), r=2)
