"""torch.compile over the integrations, in one graph (fullgraph=True raises at
any graph break), matching eager: S2-Attn in a transformers model in training
mode, and peft's fused LoRA over a bitsandbytes NF4 base."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from loraops.integrations import peft as lp
from loraops.integrations import transformers as lt

from conftest import require_peer
from test_peft import TARGETS, bnb_base_model

transformers = require_peer("transformers")
peft = require_peer("peft")

VOCAB = 97
N = 16
# aot_eager traces forward and backward as inductor would, without its code
# generation, which takes minutes on a 2-core CI machine.
BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Other test modules lower the recompile limit for the session; each model
    # here is new code for dynamo to guard.
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=8):
        yield
    torch._dynamo.reset()


def tiny_model(kind, layers=2):
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, attn_implementation="sdpa")
    config = transformers.Qwen2Config(**common) if kind == "qwen2" else transformers.LlamaConfig(**common)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


def right_padded(lengths):
    return (torch.arange(N)[None, :] < torch.tensor(lengths)[:, None]).long()


IDS = torch.randint(0, VOCAB, (2, N), generator=torch.Generator().manual_seed(1))


def train_step(run, model, mask):
    """Loss and every gradient of one forward + backward of ``run`` (the model or its compiled self)."""
    model.zero_grad()
    loss = run(input_ids=IDS, attention_mask=mask, labels=IDS).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_step(got, want):
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    assert set(got[1]) == set(want[1]) and got[1]
    for name, grad in want[1].items():
        torch.testing.assert_close(got[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_s2_attention_compiles_to_one_graph_in_training():
    model = tiny_model("qwen2")  # the eager tests cover Llama too; the attention path is the same
    lt.enable_s2_attention(model, group_size_ratio=0.25)
    model.train()
    counter = CompileCounterWithBackend(BACKEND)
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for lengths in [(N, 11), (N, N), (9, 13)]:
        mask = right_padded(lengths)
        assert_same_step(train_step(compiled, model, mask), train_step(model, model, mask))
    # The lengths are data in the graph, never read on the host: one graph, no
    # recompilation when they change.
    assert counter.frame_count == 1
    assert_same_step(train_step(compiled, model, None), train_step(model, model, None))
    assert counter.frame_count == 2  # without a mask: another graph, with no lengths at all


def test_left_padding_is_refused_compiled_too():
    model = tiny_model("qwen2", layers=1)
    lt.enable_s2_attention(model)
    model.train()
    mask = right_padded((N, N))
    mask[1, :3] = 0
    with pytest.raises(ValueError, match="right padding"):  # eager: the integration's own check
        model(IDS, attention_mask=mask)
    compiled = torch.compile(model, backend=BACKEND, fullgraph=True)
    compiled(IDS, attention_mask=right_padded((N, 12)))  # compiled, and fine with right padding
    # Compiled, the check cannot read the mask on the host; the sample's length
    # is -1, which the op refuses as the graph runs.
    with pytest.raises(ValueError, match=r"seqlens\[1\] = -1 is outside"):
        compiled(IDS, attention_mask=mask)


def bnb_peft_model():
    model = peft.get_peft_model(bnb_base_model(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                                                                  init_lora_weights=False))
    assert lp.fuse(model) == len(TARGETS) * model.config.num_hidden_layers
    return model.train()


def test_fused_bitsandbytes_base_compiles_to_one_graph():
    model = bnb_peft_model()
    mask = right_padded((N, 11))
    want = train_step(model, model, mask)
    assert_same_step(train_step(torch.compile(model, backend=BACKEND, fullgraph=True), model, mask), want)


def test_fused_bitsandbytes_base_compiles_before_its_weight_is_read():
    # A layer whose bitsandbytes state changed since it was last read (moved,
    # repacked) is read again, outside the graph. Tracing that read used to let
    # dynamo compile Params4bit.__torch_function__ into a graph that re-entered
    # itself: RecursionError.
    model = bnb_peft_model()
    want = train_step(model, model, None)

    def forget_the_weights():
        for module in model.modules():
            module.__dict__.pop(lp._NF4_CACHE, None)

    forget_the_weights()
    assert_same_step(train_step(torch.compile(model, backend=BACKEND), model, None), want)
    torch._dynamo.reset()
    forget_the_weights()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="quant_state"):  # the read is a graph break
        torch.compile(model, backend=BACKEND, fullgraph=True)(input_ids=IDS, labels=IDS)
