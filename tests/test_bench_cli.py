"""loraops-bench runs end to end and writes the JSON it documents."""

import json
import subprocess
import sys


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
