"""loraops-bench pictures: `plot RESULTS.json...` and a suite's `--plot FILE.png`."""

import json
import sys

import pytest

from conftest import require_peer
from loraops.bench import plot
from loraops.bench.cli import main

MACHINE = {"cpu_model": "Test CPU @ 1.00GHz", "usable_cpus": 2, "cpu_isa": "avx2", "torch_version": "2.13.0",
           "date": "2026-11-29T10:00:00+00:00"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def nf4_document():
    rows = []
    for shape in ("4096x4096", "11008x4096"):
        case = {"shape_name": shape, "dtype": "bf16", "status": "ok"}
        rows += [
            {**case, "op": "quantize", "impl": "loraops", "copy_fraction": 0.15,
             "speedup_vs": {"bitsandbytes": 28.0, "torchao": 94.0}},
            {**case, "op": "quantize", "impl": "bitsandbytes", "copy_fraction": 0.005},
            {**case, "op": "dequantize", "impl": "loraops", "copy_fraction": 0.73,
             "speedup_vs": {"bitsandbytes": 7.1, "torchao": 37.0}},
            {**case, "op": "dequantize", "impl": "loraops out=", "copy_fraction": 0.72,
             "speedup_vs": {"bitsandbytes": 7.0, "torchao": 36.0}},
            {**case, "op": "dequantize", "impl": "torchao", "status": "failed: RuntimeError: no"},
            {**case, "op": "copy", "impl": "copy ceiling"},
        ]
    return {"suite": "nf4", "config": {"blocksize": 64, "repeat": 20}, "machine": MACHINE, "results": rows}


def lora_document():
    rows = []
    for op in ("fwd", "fwd+bwd"):
        case = {"op": op, "shape_name": "4096x4096", "tokens_name": "4x512", "dtype": "fp32", "status": "ok"}
        rows.append({**case, "impl": "frozen nn.Linear", "dropout": None})
        for dropout in (0.0, 0.1):
            rows += [{**case, "impl": "loraops", "dropout": dropout, "vs_frozen": 1.01, "speedup_vs": {"peft": 1.2}},
                     {**case, "impl": "peft", "dropout": dropout, "vs_frozen": 1.2}]
    return {"suite": "lora", "config": {"rank": 16, "alpha": 32, "repeat": {"fp32": 5}}, "machine": MACHINE,
            "results": rows}


def s2attn_document():
    rows = []
    for op in ("fwd", "fwd+bwd"):
        case = {"op": op, "seq": 4096, "group": 1024, "dtype": "fp32", "status": "ok"}
        rows += [{**case, "impl": "loraops"},
                 {**case, "impl": "LongLoRA SDPA+roll", "ours_faster_by": 2.2},
                 {**case, "impl": "full causal SDPA", "ours_faster_by": 0.8}]
    config = {"mode": "segments", "batch": 1, "heads": 32, "kv_heads": 32, "head_dim": 128, "group_ratio": 0.25}
    return {"suite": "s2attn", "config": config, "machine": {**MACHINE, "gpu_name": "Test GPU", "cuda_version": "13.0"},
            "results": rows}


@pytest.fixture
def matplotlib():
    return require_peer("matplotlib")


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_figure_draws_ratios_per_peer_and_the_ceiling(matplotlib, tmp_path):
    fig = plot.figure([nf4_document(), lora_document(), s2attn_document()])
    # nf4 and lora: a ratio panel and a ceiling panel each; s2attn has no ceiling.
    nf4_ratio, nf4_copy, lora_ratio, lora_frozen, s2_ratio = fig.axes
    assert nf4_ratio.get_title().startswith("loraops-bench nf4")
    for ax in (nf4_ratio, lora_ratio):
        assert "Test CPU @ 1.00GHz, 2 cores" in ax.get_title() and "torch 2.13.0" in ax.get_title()
        assert "2026-11-29" in ax.get_title()
    assert "Test GPU" in s2_ratio.get_title()
    for ax in (nf4_ratio, lora_ratio, s2_ratio):
        assert "loraops speed ratio" in ax.get_ylabel() and ax.get_yscale() == "log"
    assert "copy bandwidth" in nf4_copy.get_ylabel() and "frozen nn.Linear" in lora_frozen.get_ylabel()

    assert legend_texts(nf4_ratio) == ["vs bitsandbytes", "vs torchao"]
    assert legend_texts(nf4_copy) == ["loraops", "loraops out="]
    assert legend_texts(lora_ratio) == ["loraops vs peft"]
    assert legend_texts(s2_ratio) == ["vs LongLoRA SDPA+roll", "vs full causal SDPA"]
    # Per case: the fields that differ under each tick, the shared ones said once.
    assert [t.get_text() for t in nf4_copy.get_xticklabels()] == [
        "quantize\n4096x4096", "dequantize\n4096x4096", "quantize\n11008x4096", "dequantize\n11008x4096"]
    assert nf4_copy.get_xlabel() == "every case: bf16"
    assert [t.get_text() for t in lora_frozen.get_xticklabels()] == [
        "fwd\ndropout 0", "fwd\ndropout 0.1", "fwd+bwd\ndropout 0", "fwd+bwd\ndropout 0.1"]
    # One bar per (case, series) with a value: nf4's quantize cases have no out= bar.
    assert len(nf4_ratio.patches) == 4 * 2 and len(nf4_copy.patches) == 4 + 2
    assert len(s2_ratio.patches) == 2 * 2
    # Ratios are bars from 1: a slower loraops (0.8x) points down.
    assert sorted(round(p.get_height(), 6) for p in s2_ratio.patches) == [-0.2, -0.2, 1.2, 1.2]

    out = tmp_path / "all.png"
    fig.savefig(out)
    assert_png(out)


def test_plot_command_draws_saved_results(matplotlib, tmp_path, capsys):
    paths = []
    for document in (nf4_document(), lora_document(), s2attn_document()):
        paths.append(tmp_path / f"{document['suite']}.json")
        paths[-1].write_text(json.dumps(document))
    assert main(["plot", str(paths[0])]) == 0
    assert_png(tmp_path / "nf4.png")  # one file: the picture goes beside it
    out = tmp_path / "pictures" / "all.png"
    assert main(["plot", *map(str, paths), "-o", str(out)]) == 0
    assert_png(out)
    assert f"wrote {out}" in capsys.readouterr().out

    with pytest.raises(SystemExit, match="-o FILE.png"):
        main(["plot", *map(str, paths)])
    (tmp_path / "other.json").write_text('{"suite": "other"}')
    with pytest.raises(SystemExit, match="not a loraops-bench result"):
        main(["plot", str(tmp_path / "other.json")])


def test_plot_option_draws_the_run_as_plot_draws_its_json(matplotlib, tmp_path, capsys):
    """--plot on a real (tiny) run, and `plot` on the JSON it wrote: one code path, the same picture."""
    assert main(["nf4", "--shapes", "64x96", "--dtype", "bf16", "--repeat", "1", "--warmup", "0",
                 "--json", str(tmp_path / "run.json"), "--plot", str(tmp_path / "run.png")]) == 0
    assert f"wrote {tmp_path / 'run.png'}" in capsys.readouterr().out
    assert_png(tmp_path / "run.png")
    assert main(["plot", str(tmp_path / "run.json"), "-o", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "run.png").read_bytes()

    fig = plot.figure([json.loads((tmp_path / "run.json").read_text())])
    ratio, copy = fig.axes  # without --peers: no ratios, the copy ceiling still
    assert ratio.texts[0].get_text() == "no peers measured (run with --peers)"
    assert [t.get_text() for t in copy.get_xticklabels()] == ["quantize", "dequantize"]
    assert copy.get_xlabel() == "every case: 64x96, bf16"


@pytest.mark.parametrize("argv", [["plot", "results.json"], ["nf4", "--quick", "--plot", "out.png"]])
def test_without_matplotlib_one_line_names_the_extra(argv, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""  # --plot fails before the benchmark starts
    assert err.strip() == plot.MISSING_MATPLOTLIB and "pip install 'loraops[bench]'" in err
