"""loraops.integrations.peft on tiny random transformers models wrapped by peft."""

import copy
import warnings

import pytest
import torch

from loraops.integrations import peft as lp

from conftest import require_peer

peft = require_peer("peft")
transformers = require_peer("transformers")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_model(kind):
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    config = transformers.Qwen2Config(**common) if kind == "qwen2" else transformers.LlamaConfig(**common)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def peft_model(kind, dropout=0.0, **config):
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=TARGETS,
                           init_lora_weights=False, **config)  # random B: the adapters are active
    return peft.get_peft_model(tiny_model(kind), lora)


def batch():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (2, 12), generator=gen)
    return dict(input_ids=ids, labels=ids)


def lora_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}


def train_step(model):
    """Logits and LoRA gradients of one forward + backward."""
    model.zero_grad()
    out = model(**batch())
    out.loss.backward()
    return out.logits.detach(), lora_grads(model)


def assert_same_step(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-4)
    assert set(got[1]) == set(want[1])
    for name, grad in want[1].items():
        torch.testing.assert_close(got[1][name], grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls that really went through the fused op."""
    calls = []

    def counting(real):
        def call(*args, **kwargs):
            calls.append(real.__name__)
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(lp, "lora_linear", counting(lp.lora_linear))
    monkeypatch.setattr(lp, "dora_linear", counting(lp.dora_linear))
    return calls


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.parametrize("use_rslora", [False, True])
def test_logits_and_lora_gradients_match_peft(kind, use_rslora, fused_calls):
    model = peft_model(kind, use_rslora=use_rslora)
    model.train()
    want = train_step(model)
    assert len(want[1]) == 4 * len(TARGETS)

    assert lp.fuse(model) == 2 * len(TARGETS)
    assert lp.fuse(model) == 0  # idempotent
    assert_same_step(train_step(model), want)
    assert fused_calls == ["lora_linear"] * (2 * len(TARGETS))

    assert lp.unfuse(model) == 2 * len(TARGETS)
    assert not any(lp.is_fused(m) for m in model.modules())
    torch.testing.assert_close(model(**batch()).logits, want[0], rtol=0, atol=0)


def test_training_follows_peft_loss_curve():
    theirs = peft_model("qwen2")
    ours = copy.deepcopy(theirs)
    lp.fuse(ours)
    curves = []
    for model in (theirs, ours):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        losses = []
        for _ in range(4):
            loss = model(**batch()).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[0][-1] < curves[0][0]
    for a, b in zip(*curves):
        assert abs(a - b) <= 1e-4 * abs(a)


def test_save_pretrained_writes_peft_files(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    model = peft_model("llama")
    model.save_pretrained(tmp_path / "plain")
    lp.fuse(model)
    model.save_pretrained(tmp_path / "fused")
    plain = safetensors.load_file(tmp_path / "plain" / "adapter_model.safetensors")
    fused = safetensors.load_file(tmp_path / "fused" / "adapter_model.safetensors")
    assert set(plain) == set(fused) and len(plain) == 4 * len(TARGETS)
    assert all(torch.equal(plain[k], fused[k]) for k in plain)
    assert (tmp_path / "fused" / "adapter_config.json").read_text() == (
        tmp_path / "plain" / "adapter_config.json").read_text()


def test_dropout_is_used_in_training_only():
    model = peft_model("qwen2", dropout=0.2)
    model.eval()
    want = model(**batch()).logits
    lp.fuse(model)
    torch.testing.assert_close(model(**batch()).logits, want, rtol=1e-4, atol=1e-4)
    model.train()
    first, second = model(**batch()).logits, model(**batch()).logits
    assert not torch.equal(first, second)


def test_dora_matches_peft(fused_calls):
    model = peft_model("llama", use_dora=True)
    model.train()  # no dropout: DoRA runs fused in training too
    want = train_step(model)
    assert any("magnitude" in name for name in want[1])
    lp.fuse(model)
    assert_same_step(train_step(model), want)
    assert fused_calls == ["dora_linear"] * (2 * len(TARGETS))


@pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed")  # the tiny model's layers have no bias
def test_layers_the_op_cannot_express_fall_back(fused_calls):
    for config, reason in ((dict(use_dora=True, dropout=0.1), "DoRA with lora_dropout > 0"),
                           (dict(lora_bias=True), "lora_bias")):
        model = peft_model("qwen2", **config)
        model.train()
        torch.manual_seed(3)
        want = model(**batch()).logits
        report = lp.fuse(model)
        # the report says so: no layer fused, each with its reason
        assert report == 0 and len(report.layers) == 2 * len(TARGETS)
        assert all(r.startswith(reason) for r in report.fallbacks.values()), report.fallbacks
        assert reason in str(report) and "q_proj" in str(report)
        torch.manual_seed(3)  # same dropout masks: peft's own forward runs
        with pytest.warns(UserWarning, match="runs peft's forward") as caught:
            torch.testing.assert_close(model(**batch()).logits, want, rtol=0, atol=0)
        assert len([w for w in caught if "runs peft's forward" in str(w.message)]) == 1  # once, not per layer
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model(**batch())  # warned already
        assert not fused_calls, config
        with pytest.raises(ValueError, match=f"strict=True.*{len(report.layers)} LoRA layer.*{reason}"):
            lp.fuse(peft_model("qwen2", **config), strict=True)
    with model.disable_adapter():
        plain = model(**batch()).logits
    assert not torch.allclose(plain, want)


def test_qlora_over_bitsandbytes_linear4bit(fused_calls):
    model = peft.get_peft_model(bnb_base_model(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                      init_lora_weights=False))
    model.train()
    want = train_step(model)
    assert lp.fuse(model) == 2 * len(TARGETS)
    assert_same_step(train_step(model), want)
    assert fused_calls == ["lora_linear"] * (2 * len(TARGETS))


def test_longlora_recipe_saves_the_trained_embeddings_and_norms(tmp_path):
    # LongLoRA trains embeddings and norms beside the adapters: with them in the
    # adapter's modules_to_save, save_pretrained writes them and a reload gives the
    # trained model's logits exactly.
    from loraops.integrations import transformers as lt
    base = tiny_model("qwen2")
    modules = lt.longlora_modules_to_save(base)
    assert modules == ["embed_tokens", "input_layernorm", "norm", "post_attention_layernorm"]
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False, modules_to_save=modules)
    model = peft.get_peft_model(base, lora)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing trained is left out of the saved adapter
        marked = lt.mark_embeddings_and_norms_trainable(model)
    assert marked and all(".modules_to_save." in name for name in marked)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    for _ in range(2):
        model(**batch()).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        want = model(input_ids=batch()["input_ids"]).logits
    model.save_pretrained(tmp_path)
    reloaded = peft.PeftModel.from_pretrained(tiny_model("qwen2"), tmp_path).eval()
    with torch.no_grad():
        got = reloaded(input_ids=batch()["input_ids"]).logits
    assert torch.equal(got, want)
    # the embeddings did train: the untouched base model's logits differ
    with torch.no_grad():
        assert not torch.equal(tiny_model("qwen2")(input_ids=batch()["input_ids"]).logits, want)


def test_trainable_tensors_that_saving_would_lose_draw_a_warning():
    from loraops.integrations import transformers as lt
    model = peft_model("qwen2")  # no modules_to_save
    with pytest.warns(UserWarning, match="modules_to_save"):
        marked = lt.mark_embeddings_and_norms_trainable(model)
    assert any("embed_tokens" in name for name in marked)


def test_fuse_report_counts_and_lists_the_fused_layers():
    model = peft_model("qwen2")
    report = lp.fuse(model)
    assert isinstance(report, int) and report == 2 * len(TARGETS) and f"{report}" == str(2 * len(TARGETS))
    assert not report.fallbacks and all(reason is None for reason in report.layers.values())
    assert "base_model.model.model.layers.0.self_attn.q_proj" in report.layers
    assert str(report).startswith(f"loraops fuse: {2 * len(TARGETS)} of {2 * len(TARGETS)} LoRA layers run fused")
    assert lp.fuse(model) == 0 and not lp.fuse(model).layers  # fused before: nothing new


def test_a_layer_that_falls_back_at_run_time_warns_once_or_raises_when_strict(fused_calls):
    for strict in (False, True):
        model = peft_model("qwen2")
        model.train()
        assert lp.fuse(model, strict=strict) == 2 * len(TARGETS)
        model(**batch())
        assert len(fused_calls) == 2 * len(TARGETS)
        # a second adapter, both active: the fused op runs one
        model.add_adapter("other", peft.LoraConfig(r=2, target_modules=TARGETS))
        model.base_model.set_adapter(["default", "other"])
        if strict:
            with pytest.raises(RuntimeError, match="strict=True.*q_proj cannot run fused: 2 active adapters"):
                model(**batch())
        else:
            with pytest.warns(UserWarning, match="q_proj runs peft's forward.*2 active adapters"):
                model(**batch())
        fused_calls.clear()
    # disabled adapters run the base layer alone: no fallback, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with model.disable_adapter():
            model(**batch())


def bnb_base_model():
    """The tiny Llama with its target linears as bitsandbytes NF4 Linear4bit."""
    bnb = require_peer("bitsandbytes")
    base = tiny_model("llama")
    for module in list(base.modules()):
        for child_name, child in list(module.named_children()):
            if child_name in TARGETS:
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4")
                q.load_state_dict(child.state_dict())
                setattr(module, child_name, q.to("cpu"))
    return base


def test_bitsandbytes_cpu_repacked_base_is_read_after_a_no_grad_pass(fused_calls):
    # On CPUs with avx512_bf16, bitsandbytes repacks a Linear4bit weight in place
    # on a no-grad eval forward (blocked layout, bf16 scales). A fused call after
    # that must read the weight, not raise.
    import bitsandbytes as bnb
    model = peft.get_peft_model(bnb_base_model(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                                  init_lora_weights=False))
    bases = [m.get_base_layer() for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]

    def no_grad_pass_that_repacks():
        if bnb.functional.has_avx512bf16():
            model.eval()
            with torch.no_grad(), model.disable_adapter():  # e.g. a DPO reference pass
                model(input_ids=batch()["input_ids"])
            model.train()
        else:  # force the repack this CPU would not do
            for base in bases:
                base.weight.data, base.weight.quant_state = bnb.functional._convert_weight_packed_for_cpu(
                    base.weight.data, base.weight.quant_state)
        assert all(b.weight.quant_state.packing_format_for_cpu for b in bases)

    no_grad_pass_that_repacks()  # before fuse
    assert lp.fuse(model) == 2 * len(TARGETS)
    model.train()
    train_step(model)
    no_grad_pass_that_repacks()  # and after
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        got = train_step(model)
    assert fused_calls == ["lora_linear"] * (4 * len(TARGETS))
    assert not any(b.weight.quant_state.packing_format_for_cpu for b in bases)
    lp.unfuse(model)
    assert_same_step(got, train_step(model))  # peft's own forward on the same (restored) weights


def test_fuse_under_fsdp2_reports_a_base_sharded_on_itself_and_runs_those_sharded_by_a_parent(fused_calls):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        model = peft_model("qwen2")
        layers = model.base_model.model.model.layers
        fully_shard(layers[0].self_attn.q_proj.base_layer)  # the base layer itself: its weight is never whole for us
        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
        report = lp.fuse(model)
        assert report == 2 * len(TARGETS) - 1, report.fallbacks
        (name, reason), = report.fallbacks.items()
        assert name.endswith("layers.0.self_attn.q_proj") and "fully_shard on the base layer itself" in reason
        model.train()
        with pytest.warns(UserWarning, match="q_proj runs peft's forward.*fully_shard on the base layer itself"):
            model(**batch()).loss.backward()
        assert len(fused_calls) == 2 * len(TARGETS) - 1
    finally:
        dist.destroy_process_group()
