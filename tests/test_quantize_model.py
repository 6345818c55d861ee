"""Model-level QLoRA: quantize_model, peft over NF4Linear, checkpoints both ways."""

import pytest
import torch

from loraops.nf4 import quantize
from loraops.integrations import peft as lp
from loraops.integrations import transformers as lt
from loraops.nn import NF4Linear

from conftest import require_peer

peft = require_peer("peft")
transformers = require_peer("transformers")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_qwen2(tie=False):
    config = transformers.Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=tie)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def ids():
    return torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(1))


def logits(model):
    with torch.no_grad():
        return model(input_ids=ids()).logits


def test_quantize_model_makes_every_linear_but_the_skipped_nf4_with_its_bias():
    dense = tiny_qwen2()
    originals = {name: (m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
                 for name, m in dense.named_modules() if isinstance(m, torch.nn.Linear)}
    model = lt.quantize_model(tiny_qwen2(), blocksize=128, double_quant=False)
    for name, (weight, bias) in originals.items():
        layer = model.get_submodule(name)
        if name == "lm_head":
            assert type(layer) is torch.nn.Linear
            continue
        assert isinstance(layer, NF4Linear), name
        want = quantize(weight, blocksize=128, double_quant=False)
        assert torch.equal(layer.weight.packed, want.packed) and torch.equal(layer.weight.absmax, want.absmax)
        assert (layer.bias is None) == (bias is None), name  # Qwen2's q, k, v projections have one
        if bias is not None:
            assert torch.equal(layer.bias, bias) and not layer.bias.requires_grad
    assert any(model.get_submodule(n).bias is not None for n in originals if n != "lm_head")
    assert model.config.quantization_config["bnb_4bit_quant_type"] == "nf4"
    with torch.no_grad():  # the dense model over the NF4-rounded weights computes the same
        for name, (weight, _) in originals.items():
            if name != "lm_head":
                dense.get_submodule(name).weight.copy_(quantize(weight, 128, double_quant=False).dequantize())
    torch.testing.assert_close(logits(model), logits(dense), rtol=1e-5, atol=1e-5)
    kept = lt.quantize_model(tiny_qwen2(), skip=("lm_head", "mlp"))
    assert type(kept.model.layers[0].mlp.down_proj) is torch.nn.Linear
    assert isinstance(kept.model.layers[0].self_attn.o_proj, NF4Linear)


def test_quantize_model_rejects_bad_arguments():
    with pytest.raises(TypeError, match="quantize_model: model must be an nn.Module"):
        lt.quantize_model("model")
    with pytest.raises(TypeError, match="quantize_model: keys must be an iterable of str"):
        lt.quantize_model(tiny_qwen2(), skip="lm_head")
    with pytest.raises(ValueError, match="quantize_model: found no nn.Linear"):
        lt.quantize_model(lt.quantize_model(tiny_qwen2()))
    with pytest.raises(ValueError, match="blocksize"):
        lt.quantize_model(tiny_qwen2(), blocksize=3)


def qlora(model, **config):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, **config)
    return peft.get_peft_model(model, lp.register_nf4_linear(config))


def step(model):
    model.zero_grad()
    out = model(input_ids=ids(), labels=ids())
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_peft_wraps_nf4_linear_once_registered_and_fuse_runs_it_fused():
    with pytest.raises(ValueError, match="NF4Linear"):  # peft alone does not know the layer
        peft.get_peft_model(lt.quantize_model(tiny_qwen2()), peft.LoraConfig(r=4, target_modules=TARGETS))
    model = qlora(lt.quantize_model(tiny_qwen2()))
    model.train()
    want_logits, want_grads = step(model)
    assert set(want_grads) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in want_grads) and len(want_grads) == 4 * len(TARGETS)
    report = lp.fuse(model, strict=True)
    assert report == 2 * len(TARGETS)
    got_logits, got_grads = step(model)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_lora_variants_over_nf4_linear_are_refused():
    with pytest.raises(ValueError, match="DoraLinearVariant over an NF4Linear base is not supported"):
        qlora(lt.quantize_model(tiny_qwen2()), use_dora=True)


def test_merging_into_nf4_requantizes_and_unmerging_subtracts_again():
    model = qlora(lt.quantize_model(tiny_qwen2())).eval()
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    base = layer.get_base_layer()
    delta = layer.get_delta_weight("default").float()
    before = base.weight.dequantize(torch.float32)
    with pytest.warns(UserWarning, match="re-quantizes"):
        model.merge_adapter()
    assert layer.merged
    want = quantize(before + delta, blocksize=64, double_quant=True)
    assert torch.equal(base.weight.packed, want.packed) and torch.equal(base.weight.absmax, want.absmax)
    merged = base.weight.dequantize(torch.float32)
    with pytest.warns(UserWarning, match="re-quantizes"):
        model.unmerge_adapter()
    want = quantize(merged - delta, blocksize=64, double_quant=True)
    assert torch.equal(base.weight.packed, want.packed) and torch.equal(base.weight.absmax, want.absmax)


@pytest.mark.parametrize("tie", [False, True])
def test_checkpoint_loads_with_ours_and_with_transformers_bitsandbytes(tmp_path, tie):
    model = lt.quantize_model(tiny_qwen2(tie), skip=() if not tie else ("lm_head",))
    want = logits(model)
    model.save_pretrained(tmp_path)
    ours = lt.load_quantized_model(tmp_path)
    assert isinstance(ours.model.layers[1].mlp.up_proj, NF4Linear)
    assert not any(p.is_meta for p in ours.parameters())
    assert torch.equal(logits(ours), want)
    if tie:
        assert ours.lm_head.weight is ours.model.embed_tokens.weight
    require_peer("bitsandbytes")
    # train mode: bitsandbytes' eval pass on an avx512_bf16 CPU repacks its weights and
    # asserts out_features % 32 == 0, which the 97-word lm_head is not (its limitation)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).train()
    assert type(theirs.model.layers[1].mlp.up_proj).__name__ == "Linear4bit"
    torch.testing.assert_close(logits(theirs), want, rtol=1e-5, atol=1e-5)


def test_adapters_trained_over_nf4_reload_onto_the_loaded_checkpoint(tmp_path):
    base = lt.quantize_model(tiny_qwen2())
    base.save_pretrained(tmp_path / "base")
    model = qlora(base)
    lp.fuse(model)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        model(input_ids=ids(), labels=ids()).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    want = logits(model)
    model.save_pretrained(tmp_path / "adapter")
    base = lt.load_quantized_model(tmp_path / "base")
    config = lp.register_nf4_linear(peft.LoraConfig.from_pretrained(tmp_path / "adapter"))
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter", config=config).eval()
    assert torch.equal(logits(reloaded), want)


def test_load_quantized_model_refuses_a_checkpoint_that_is_not_nf4(tmp_path):
    tiny_qwen2().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds no NF4 4-bit model"):
        lt.load_quantized_model(tmp_path)
