"""loraops-bench runs end to end and writes the JSON it documents."""

import json
import subprocess
import sys

import torch

from loraops.bench import lora, s2attn


def run_bench(*args):
    return subprocess.run(
        [sys.executable, "-m", "loraops.bench.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_nf4_suite_with_peers_writes_json(tmp_path):
    out = tmp_path / "nf4.json"
    result = run_bench("nf4", "--shapes", "64x96", "--dtype", "bf16,fp32", "--repeat", "2", "--warmup", "0",
                       "--peers", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "machine:" in result.stdout and "copy ceiling" in result.stdout
    data = json.loads(out.read_text())
    assert data["machine"]["cpu_isa"] and data["machine"]["loraops_version"]
    rows = {(r["op"], r["impl"], r["dtype"]) for r in data["results"] if r["status"] == "ok"}
    for dtype in ("bf16", "fp32"):
        for op in ("quantize", "dequantize"):
            assert (op, "loraops", dtype) in rows
            assert (op, "bitsandbytes", dtype) in rows
        assert ("dequantize", "loraops out=", dtype) in rows
    assert all(r["median_ms"] > 0 for r in data["results"] if r["status"] == "ok")


def test_bad_arguments_are_reported():
    result = run_bench("nf4", "--shapes", "64xq")
    assert result.returncode != 0 and "64xq" in result.stderr
    result = run_bench("nf4", "--dtype", "int8")
    assert result.returncode != 0 and "int8" in result.stderr


def test_lora_suite_with_peers_and_qlora_writes_json(tmp_path):
    out = tmp_path / "lora.json"
    result = run_bench("lora", "--shapes", "64x32", "--tokens", "1x8", "--rank", "2", "--dropout", "0,0.1",
                       "--repeat", "1", "--warmup", "0", "--peers", "--qlora", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "frozen nn.Linear" in result.stdout and "targets (CPU; judged at 4096x4096" in result.stdout
    # 64x32 is not the layer the targets are set for: shown, not judged.
    assert "not a target shape" in result.stdout and "missed" not in result.stdout
    data = json.loads(out.read_text())
    assert data["config"]["shapes"] == [[64, 32]] and data["config"]["shape_layout"].startswith("[out_features")
    ok = [r for r in data["results"] if r["status"] == "ok"]
    rows = {(r["op"], r["impl"], r["dropout"]) for r in ok}
    for op in ("fwd", "fwd+bwd"):
        assert (op, "frozen nn.Linear", None) in rows
        for dropout in (0.0, 0.1):
            for impl in ("loraops", "peft", "loraops QLoRA", "peft+bitsandbytes"):
                assert (op, impl, dropout) in rows, (op, impl, dropout)
    assert all(r["in_features"] == 32 and r["out_features"] == 64 and r["median_ms"] > 0 for r in ok)
    assert all("vs_frozen" in r for r in ok if r["impl"] != "frozen nn.Linear")
    assert all("speedup_vs" in r for r in ok if r["impl"] in ("loraops", "loraops QLoRA"))
    assert any(t["target"].startswith("LoRA fwd+bwd") for t in data["targets"])


def test_lora_bad_arguments_are_reported():
    result = run_bench("lora", "--shapes", "64x32x2")
    assert result.returncode != 0 and "64x32x2" in result.stderr
    result = run_bench("lora", "--dropout", "1.5")
    assert result.returncode != 0 and "1.5" in result.stderr


def test_s2attn_suite_with_peers_writes_json(tmp_path):
    out = tmp_path / "s2attn.json"
    result = run_bench("s2attn", "--seq", "64,48", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
                       "--dtype", "fp32,bf16", "--repeat", "1", "--warmup", "0", "--peers", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "LongLoRA SDPA+roll" in result.stdout and "targets (CPU; judged at" in result.stdout
    assert "not a target shape" in result.stdout and "missed" not in result.stdout
    data = json.loads(out.read_text())
    assert data["config"]["seqs"] == [64, 48] and data["config"]["kv_heads"] == 2
    ok = [r for r in data["results"] if r["status"] == "ok"]
    rows = {(r["op"], r["impl"], r["seq"], r["dtype"]) for r in ok}
    for op in ("fwd", "fwd+bwd"):
        for dtype in ("fp32", "bf16"):
            for seq in (64, 48):
                for impl in ("loraops", "LongLoRA SDPA+roll", "full causal SDPA"):
                    assert (op, impl, seq, dtype) in rows, (op, impl, seq, dtype)
    assert all(r["group"] in (16, 12) and r["median_ms"] > 0 for r in ok)
    assert all("ours_faster_by" in r for r in ok if r["impl"] != "loraops")
    assert any(t["target"].startswith("fwd+bwd peak memory") for t in data["targets"])


def test_s2attn_bad_arguments_are_reported():
    result = run_bench("s2attn", "--seq", "64,x")
    assert result.returncode != 0 and "64,x" in result.stderr
    result = run_bench("s2attn", "--heads", "6", "--kv-heads", "4", "--seq", "32")
    assert result.returncode != 0 and "multiple" in result.stderr


CPU = torch.device("cpu")


def lora_rows(shape, tokens, rank=16):
    case = {"op": "fwd+bwd", "status": "ok", "shape_name": shape, "tokens_name": tokens, "dtype": "fp32",
            "dropout": 0.0, "rank": rank}
    return [{**case, "impl": "loraops", "vs_frozen": 1.3, "median_ms": 13.0, "peak_memory_bytes": 2**21},
            {**case, "impl": "peft", "vs_frozen": 1.4, "median_ms": 14.0, "peak_memory_bytes": 2**20}]


def test_lora_targets_are_judged_only_at_the_target_shape():
    at_target = lora.check_targets(lora_rows("4096x4096", "4x512"))
    assert [(t["target"], t["met"]) for t in at_target] == [
        ("LoRA fwd+bwd <= 1.05x frozen", False), ("loraops peak memory <= peft", False)]
    assert "missed" in lora.format_targets(at_target, CPU)
    for rows in (lora_rows("1024x1024", "4x512"), lora_rows("4096x4096", "1x256"),
                 lora_rows("4096x4096", "4x512", rank=8)):
        elsewhere = lora.check_targets(rows)
        assert [t["met"] for t in elsewhere] == [None, None]
        text = lora.format_targets(elsewhere, CPU)
        assert text.count("not a target shape") == 2 and "missed" not in text


def s2attn_rows(seq, heads=32):
    case = {"op": "fwd+bwd", "status": "ok", "seq": seq, "group": seq // 4, "batch": 1, "heads": heads,
            "kv_heads": heads, "head_dim": 128, "dtype": "fp32"}
    return [{**case, "impl": "loraops", "peak_memory_bytes": 2**21},
            {**case, "impl": "LongLoRA SDPA+roll", "ours_faster_by": 1.5},
            {**case, "impl": "full causal SDPA", "ours_faster_by": 4.0, "peak_memory_bytes": 2**20}]


def test_s2attn_targets_are_judged_only_at_their_target_shapes():
    def verdicts(rows):
        return [t["met"] for t in s2attn.check_targets(rows)]

    # [speed vs LongLoRA, memory vs full causal SDPA]: speed is set at N=4096, memory at N=8192.
    assert verdicts(s2attn_rows(4096)) == [False, None]
    assert verdicts(s2attn_rows(8192)) == [None, False]
    assert verdicts(s2attn_rows(4096, heads=8)) == [None, None]
    text = s2attn.format_targets(s2attn.check_targets(s2attn_rows(1024)), CPU)
    assert text.count("not a target shape") == 2 and "missed" not in text

