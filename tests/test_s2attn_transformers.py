"""loraops.integrations.transformers: S2-Attn in tiny random Qwen2 and Llama models."""

import copy

import pytest
import torch

from loraops.integrations import transformers as lt
from loraops.s2attn_reference import s2_attention_reference

from conftest import require_peer

transformers = require_peer("transformers")
peft = require_peer("peft")

VOCAB = 97
RATIO = 0.25


def tiny_model(kind, attn="sdpa", **config):
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, attn_implementation=attn, **config)
    config = transformers.Qwen2Config(**common) if kind == "qwen2" else transformers.LlamaConfig(**common)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def batch(lengths=(40, 40), n=40):
    ids = torch.randint(0, VOCAB, (len(lengths), n), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


_reference_state = {}


def _reference_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """S2-Attn by the float64 PyTorch reference, lengths from the test's 2-D mask."""
    n = query.shape[2]
    group = max(1, int(n * RATIO))
    seqlens = _reference_state["mask"].sum(-1)
    out = s2_attention_reference(*(t.transpose(1, 2).double() for t in (query, key, value)), group,
                                 mode=_reference_state["mode"], seqlens=seqlens, scale=scaling)
    return out.to(query.dtype), None


def reference_model(model, mode, mask):
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register("s2_reference_for_tests", _reference_attention)
    AttentionMaskInterface.register("s2_reference_for_tests", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    _reference_state.update(mode=mode, mask=mask)
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("s2_reference_for_tests")
    return ref


def qkv_grads(model):
    return {n: p.grad for n, p in model.named_parameters()
            if n.endswith("weight") and any(k in n for k in ("q_proj", "k_proj", "v_proj"))}


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.parametrize("mode", ["segments", "roll"])
@pytest.mark.parametrize("lengths", [(40, 40), (40, 27)])
def test_training_mode_is_s2_attention(kind, mode, lengths):
    model = tiny_model(kind)
    ids, mask = batch(lengths)
    ref = reference_model(model, mode, mask)
    lt.enable_s2_attention(model, group_size_ratio=RATIO, mode=mode)
    model.train()
    ref.train()
    logits = model(ids, attention_mask=mask).logits
    expected = ref(ids, attention_mask=mask).logits
    valid = mask.bool()
    torch.testing.assert_close(logits[valid], expected[valid], rtol=1e-4, atol=1e-4)
    logits[valid].square().mean().backward()
    expected[valid].square().mean().backward()
    grads, ref_grads = qkv_grads(model), qkv_grads(ref)
    assert len(grads) == 6
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_eval_mode_is_the_models_own_attention(kind, attn):
    model = tiny_model(kind, attn).eval()
    ids, mask = batch((40, 31))
    expected = model(ids, attention_mask=mask).logits
    lt.enable_s2_attention(model)
    assert model.config._attn_implementation == lt.S2_ATTENTION_PREFIX + attn
    torch.testing.assert_close(model(ids, attention_mask=mask).logits, expected, rtol=0, atol=0)
    model.train()  # and training mode is something else
    assert not torch.allclose(model(ids, attention_mask=mask).logits, expected, atol=1e-3)
    lt.disable_s2_attention(model)
    assert model.config._attn_implementation == attn
    torch.testing.assert_close(model(ids, attention_mask=mask).logits, expected, rtol=0, atol=0)


def test_generation_with_a_cache_uses_full_attention():
    model = tiny_model("llama").eval()
    ids, _ = batch((12,), n=12)
    expected = model.generate(ids, max_new_tokens=5, do_sample=False)
    lt.enable_s2_attention(model)
    torch.testing.assert_close(model.generate(ids, max_new_tokens=5, do_sample=False), expected)


def test_left_padding_is_refused_in_training():
    model = tiny_model("qwen2")
    lt.enable_s2_attention(model)
    model.train()
    ids, mask = batch((40, 40))
    mask[1, :5] = 0
    with pytest.raises(ValueError, match="right padding"):
        model(ids, attention_mask=mask)


def test_peft_model_with_longlora_recipe():
    model = tiny_model("qwen2")
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                           init_lora_weights=False, modules_to_save=lt.longlora_modules_to_save(model))
    model = peft.get_peft_model(model, lora)
    lt.enable_s2_attention(model, group_size_ratio=0.25)
    marked = lt.mark_embeddings_and_norms_trainable(model)
    assert any("embed_tokens" in n for n in marked) and any("norm" in n for n in marked)
    model.train()
    ids, mask = batch((40, 33))
    out = model(input_ids=ids, attention_mask=mask, labels=ids)
    out.loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("lora_A" in n for n in trained) and any("embed_tokens" in n for n in trained)
    assert any("layernorm" in n for n in trained)


def test_bad_arguments():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="group_size_ratio"):
        lt.enable_s2_attention(model, group_size_ratio=0.0)
    with pytest.raises(ValueError, match="mode"):
        lt.enable_s2_attention(model, mode="shift")
    model = tiny_model("llama", attention_dropout=0.1)
    lt.enable_s2_attention(model)
    model.train()
    ids, mask = batch()
    with pytest.raises(ValueError, match="attention dropout"):
        model(ids, attention_mask=mask)


def test_attention_extras_are_refused_in_training():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model = tiny_model("llama")
    lt.enable_s2_attention(model)
    model.train()
    attention = ALL_ATTENTION_FUNCTIONS[model.config._attn_implementation]
    module = model.model.layers[0].self_attn
    q = torch.randn(1, 4, 16, 16)
    kv = torch.randn(1, 2, 16, 16)
    out, _ = attention(module, q, kv, kv, None, scaling=0.25)
    assert out.shape == (1, 16, 4, 16)
    with pytest.raises(ValueError, match="softcap"):
        attention(module, q, kv, kv, None, scaling=0.25, softcap=30.0)
