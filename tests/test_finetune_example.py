"""examples/finetune: QLoRA + LongLoRA end to end, one process and under torchrun
(DDP and FSDP2, 2 processes on gloo)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import require_peer

peft = require_peer("peft")
transformers = require_peer("transformers")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "finetune" / "finetune.py"
STEPS = 6
ARGS = ["--steps", str(STEPS), "--quiet", "--seq-len", "128", "--batch-size", "4"]


def load_example():
    spec = importlib.util.spec_from_file_location("finetune_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(out: Path, parallel: str):
    if parallel == "none":
        command = [sys.executable, str(SCRIPT)]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                   str(SCRIPT), "--parallel", parallel]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command + ARGS + ["--output", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("finetune")
    return {parallel: (run(base / parallel, parallel), base / parallel) for parallel in ("none", "ddp", "fsdp")}


def test_loss_goes_down_and_every_layer_runs_fused(runs):
    metrics, out = runs["none"]
    assert len(metrics["loss"]) == STEPS and metrics["loss"][-1] < metrics["loss"][0] - 0.3
    assert metrics["fused_layers"] == 2 * 7  # every projection of the 2 layers
    assert (out / "loss.png").stat().st_size > 0 and metrics["tokens_per_s"] > 0


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_follow_the_single_process_losses(runs, parallel):
    metrics = runs[parallel][0]
    assert metrics["world_size"] == 2
    torch.testing.assert_close(torch.tensor(metrics["loss"]), torch.tensor(runs["none"][0]["loss"]),
                               rtol=1e-5, atol=1e-5)


def test_fsdp2_shards_the_nf4_weights(runs):
    (whole,) = runs["none"][0]["nf4_bytes_per_rank"]
    assert runs["ddp"][0]["nf4_bytes_per_rank"] == [whole, whole]  # replicated
    sharded = runs["fsdp"][0]["nf4_bytes_per_rank"]
    assert sum(sharded) >= whole and all(abs(b - whole / 2) <= 0.01 * whole for b in sharded), (sharded, whole)


@pytest.mark.parametrize("parallel", ["none", "ddp", "fsdp"])
def test_saved_adapter_reloads_to_the_same_logits(runs, parallel):
    example = load_example()
    out = runs[parallel][1]
    saved = torch.load(out / "eval_logits.pt")
    args = example.parse_args(ARGS)
    model = example.load_trained(args, out / "adapter")
    assert any("modules_to_save" in name for name, _ in model.named_parameters())  # embeddings and norms too
    with torch.no_grad():
        logits = model(input_ids=saved["input_ids"]).logits
    torch.testing.assert_close(logits, saved["logits"], rtol=0, atol=1e-5)


def test_fsdp2_full_state_dict_loads_into_an_unsharded_model(runs):
    example = load_example()
    out = runs["fsdp"][1]
    saved = torch.load(out / "eval_logits.pt")
    args = example.parse_args(ARGS)
    model, _ = example.build_model(args, torch.device("cpu"))
    model, _ = example.qlora_longlora(model, args)
    state = torch.load(out / "full_state_dict.pt")
    assert any(k.endswith("weight.quant_state.bitsandbytes__nf4") for k in state)  # the NF4 base, gathered
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=saved["input_ids"]).logits
    torch.testing.assert_close(logits, saved["logits"], rtol=0, atol=1e-5)
