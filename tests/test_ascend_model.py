"""The Atlas A2 cost model (loraops.bench.ascend_model) on synthetic launch
records and hand-computed floors, and the `loraops-bench ascend` suite, with
and without the emulation's launch log."""

import argparse
import json
import subprocess
import sys

import pytest

from loraops.bench import ascend, ascend_model as am

FIG = am.Figures()
CLOCK = FIG.clock_hz


def record(**overrides):
    # Buffers larger than L2 unless a test says otherwise: every request goes to HBM.
    fields = {"kernel": "k", "block_dim": 1, "core_type": "aiv", "gm_read_bytes": 0, "gm_write_bytes": 0,
              "gm_buffer_bytes": 2**40, "mmad_fractals": {"half": 0, "bf16": 0, "float": 0}, "vector_repeats": [], "cube_cores_busy": 0,
              "flag_waits": 0}
    fields.update(overrides)
    return fields


def parse(**overrides):
    return am.parse_record(record(**overrides))


# ----------------------------------------------------------------------------- the model


def test_hbm_bound_launch():
    p = am.predict(parse(gm_read_bytes=1_000_000_000, gm_write_bytes=600_000_000, vector_repeats=[10] * 48), FIG)
    assert p.bound == "HBM"
    assert p.hbm_s == pytest.approx(1.6e9 / 1.6e12)
    assert p.time_s == pytest.approx(1e-3 + FIG.launch_overhead_s)


def test_re_reads_of_buffers_that_fit_in_l2_are_not_charged_to_hbm():
    # A GEMM's tiles read 1 GB of operands whose buffers hold 100 MB: 100 MB cross HBM.
    fits = am.predict(parse(gm_read_bytes=1_000_000_000, gm_buffer_bytes=100_000_000), FIG)
    assert fits.hbm_s == pytest.approx(1e8 / 1.6e12) and fits.gm_bytes == 1_000_000_000
    # Buffers larger than L2: every request.
    spills = am.predict(parse(gm_read_bytes=1_000_000_000, gm_buffer_bytes=FIG.l2_bytes + 1), FIG)
    assert spills.hbm_s == pytest.approx(1e9 / 1.6e12)
    # A launch that touches less than its buffers: what it touched.
    partial = am.predict(parse(gm_read_bytes=1000, gm_buffer_bytes=100_000_000), FIG)
    assert partial.hbm_s == pytest.approx(1000 / 1.6e12)


def test_merged_launches_get_the_l2_credit_of_each_launch():
    # Three like launches, each with 68 MB of buffers (under L2) and 226 MB of requests.
    one = parse(gm_read_bytes=226_000_000, gm_buffer_bytes=68_000_000)
    [merged] = am.merge([one, one, one])
    assert merged.launches == 3
    assert am.predict(merged, FIG).hbm_s == pytest.approx(3 * 68e6 / 1.6e12)


def test_cube_bound_launch_and_cores_capped_at_the_skus():
    fractals = 24 * 1_800_000  # one millisecond of half fractals on 24 cores at 1.8 GHz
    p = am.predict(parse(core_type="aic", block_dim=24, cube_cores_busy=24,
                         mmad_fractals={"half": fractals // 2, "bf16": fractals // 2, "float": 0}), FIG)
    assert p.bound == "cube" and p.cube_s == pytest.approx(1e-3)
    more = am.predict(parse(core_type="aic", block_dim=48, cube_cores_busy=48,
                            mmad_fractals={"half": fractals, "bf16": 0, "float": 0}), FIG)
    assert more.cube_s == pytest.approx(1e-3)  # 48 blocks still run on 24 cube units
    fewer = am.predict(parse(core_type="aic", block_dim=12, cube_cores_busy=12,
                             mmad_fractals={"half": fractals, "bf16": 0, "float": 0}), FIG)
    assert fewer.cube_s == pytest.approx(2e-3)


def test_float_cube_runs_at_a_quarter_of_the_half_rate():
    half = am.predict(parse(cube_cores_busy=1, mmad_fractals={"half": 1000, "bf16": 0, "float": 0}), FIG)
    # 16x8x16 float fractals: twice as many for the same MACs as 16x16x16 half ones
    flt = am.predict(parse(cube_cores_busy=1, mmad_fractals={"half": 0, "bf16": 0, "float": 2000}), FIG)
    assert flt.cube_s == pytest.approx(4 * half.cube_s)
    assert half.cube_s == pytest.approx(1000 / CLOCK)


def test_vector_time_is_the_busiest_core_and_extra_blocks_serialise():
    even = am.predict(parse(vector_repeats=[100_000] * 48), FIG)
    assert even.bound == "vector" and even.vector_s == pytest.approx(100_000 / CLOCK)
    uneven = am.predict(parse(vector_repeats=[300_000] + [100_000] * 47), FIG)
    assert uneven.vector_s == pytest.approx(300_000 / CLOCK)
    twice = am.predict(parse(block_dim=96, vector_repeats=[100_000] * 96), FIG)  # two waves on 48 AIVs
    assert twice.vector_s == pytest.approx(200_000 / CLOCK)
    wider = am.predict(parse(vector_repeats=[100_000] * 48), FIG.with_overrides({"vector_bytes_per_cycle": 512}, "t"))
    assert wider.vector_s == pytest.approx(50_000 / CLOCK)


def test_tiny_launch_is_launch_bound_and_an_op_sums_its_launches():
    tiny = parse(gm_read_bytes=1024, vector_repeats=[4])
    p = am.predict(tiny, FIG)
    assert p.bound == "launch" and p.time_s == pytest.approx(FIG.launch_overhead_s + max(1024 / 1.6e12, 4 / CLOCK))
    big = parse(gm_read_bytes=16_000_000)
    op = am.op_prediction([tiny, big, tiny], FIG)
    assert op.time_s == pytest.approx(2 * p.time_s + am.predict(big, FIG).time_s)
    assert op.launches == 3 and op.gm_bytes == 16_000_000 + 2048 and op.bound == "HBM"


def test_merge_and_project():
    a = parse(kernel="mm", gm_read_bytes=100, cube_cores_busy=3, mmad_fractals={"half": 0, "bf16": 0, "float": 30})
    b = parse(kernel="vec", gm_write_bytes=50, vector_repeats=[6, 2])
    merged = am.merge([a, b, a, b])
    assert [(r.kernel, r.launches, r.gm_bytes) for r in merged] == [("mm", 2, 200), ("vec", 2, 100)]
    assert merged[1].vector_repeats == (12, 4) and merged[0].mmad_fractals["float"] == 60
    vec = am.project(merged[1], FIG, factor=48.0, launches=2)
    assert vec.vector_repeats == (16,) * 48 and vec.gm_bytes == 4800  # 16 * 48 repeats spread evenly over 48 AIVs
    mm = am.project(merged[0], FIG, factor=2.0)
    assert mm.cube_cores_busy == 24 and mm.mmad_fractals["float"] == 120 and mm.launches == 2


def test_project_op_rechunks_launches_and_does_not_scale_the_weight_sized_dequantize():
    rows = 16  # the emulation's 4096-element workspace: one row per chunk at 4096 features
    recs = [parse(kernel="loraops_lora_mask_to_float_bf16", gm_read_bytes=8192, vector_repeats=[1])] * rows
    recs += [parse(kernel="loraops_nf4_dequantize_bf16", gm_read_bytes=1000, vector_repeats=[1] * 6)]
    out = ascend.project_op(recs, FIG, tokens_run=rows, tokens=8192, cols=4096)
    mask, dq = out
    assert mask.launches == 2 and mask.gm_bytes == 8192 * 8192  # 8192 rows = 2 NPU chunks of 4096
    assert dq.launches == 1 and dq.gm_bytes == 1000


# ----------------------------------------------------------------------------- strict parsing


@pytest.mark.parametrize("obj, message", [
    ({k: v for k, v in record().items() if k != "flag_waits"}, "missing key(s) flag_waits"),
    (record(extra=1), "unknown key(s) extra"),
    (record(core_type="aicore"), "core_type must be one of aiv, aic, mix"),
    (record(gm_read_bytes=-1), "gm_read_bytes must be a non-negative integer"),
    (record(gm_write_bytes=True), "gm_write_bytes must be a non-negative integer"),
    (record(block_dim=2.0), "block_dim must be a non-negative integer"),
    (record(block_dim=0), "block_dim must be at least 1"),
    (record(mmad_fractals={"half": 1, "bf16": 0}), "exactly the keys half, bf16, float"),
    (record(mmad_fractals={"half": 1, "bf16": 0, "float": 0}), "cube_cores_busy is 0"),
    (record(vector_repeats=7), "vector_repeats must be a list"),
    (record(vector_repeats=[1, "2"]), "vector_repeats[1]"),
    (record(kernel=""), "kernel must be a non-empty string"),
])
def test_parser_rejects_records_off_the_format(obj, message):
    with pytest.raises(am.LaunchLogError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        am.parse_launch_log(json.dumps([obj]))


def test_parser_reads_a_log_and_rejects_what_is_not_one():
    log = am.parse_launch_log(json.dumps([record(kernel="a"), record(kernel="b", vector_repeats=[1, 2])]))
    assert [r.kernel for r in log] == ["a", "b"] and log[1].vector_repeats == (1, 2)
    with pytest.raises(am.LaunchLogError, match="not JSON"):
        am.parse_launch_log("[{")
    with pytest.raises(am.LaunchLogError, match="JSON array"):
        am.parse_launch_log(json.dumps(record()))


# ----------------------------------------------------------------------------- figures


def test_default_figures_land_on_the_quoted_peak_and_every_figure_has_a_source():
    assert 300e12 <= FIG.cube_peak_flops_half <= 360e12  # 24 x 4096 x 2 x 1.8 GHz = 353.9 TFLOPS
    assert FIG.cube_peak_flops_float == pytest.approx(FIG.cube_peak_flops_half / 4)
    assert all(FIG.sources[name] for name in am.Figures.names())


def test_overrides_from_file_and_assignments(tmp_path):
    path = tmp_path / "fig.json"
    path.write_text(json.dumps({"hbm_bytes_per_s": {"value": 1.2e12, "source": "910B4 sheet"}, "ai_cores": 20}))
    fig = am.load_figures(str(path), ["clock_hz=1.65e9", "sku=910B4"])
    assert (fig.hbm_bytes_per_s, fig.ai_cores, fig.clock_hz, fig.sku) == (1.2e12, 20, 1.65e9, "910B4")
    assert fig.sources["hbm_bytes_per_s"] == "910B4 sheet" and "fig.json" in fig.sources["ai_cores"]
    assert "--figure" in fig.sources["clock_hz"] and fig.sources["vector_cores"] == am.DEFAULT_SOURCES["vector_cores"]
    for bad, message in ((["nope=1"], "unknown figure 'nope'"), (["clock_hz"], "not name=value"),
                         (["clock_hz=-1"], "positive number"), (["ai_cores=2.5"], "whole number"),
                         (["hbm_bytes_per_s=fast"], "positive number")):
        with pytest.raises(ValueError, match=message):
            am.load_figures(None, bad)


# ----------------------------------------------------------------------------- analytic floors and peers


def test_base_gemm_floor_by_hand():
    m, n, k = 8192, 4096, 4096
    peak = 24 * 4096 * 2 * 1.8e9
    floor = am.base_gemm_floor(m, n, k, FIG)
    assert floor.time_s == pytest.approx(2 * 2 * m * n * k / peak)  # cube-bound: fwd and dx
    assert floor.bound == "cube" and floor.launches == 0
    assert floor.gm_bytes == 2 * (m * k + k * n + m * n) * 2
    # A skinny GEMM is bytes-bound: x [8192, 4096] A^T [4096, 16]
    skinny = am.gemm("x A^T", m, 16, k).predict(FIG, overhead=False)
    assert skinny.bound == "HBM" and skinny.time_s == pytest.approx((m * k + k * 16 + m * 16) * 2 / 1.6e12)


def test_nf4_floor_by_hand():
    packed, absmax, nested, code, offset = 4096 * 4096 // 2, 4096 * 4096 // 64, 4096 * 4096 // 64 // 256 * 4, 1024, 4
    assert am.nf4_bytes(4096, 4096) == packed + absmax + nested + code + offset == 8_655_876
    floor = am.nf4_dequantize_floor(4096, 4096, FIG)
    assert floor.gm_bytes == 8_655_876 + 4096 * 4096 * 2
    assert floor.time_s == pytest.approx(42_210_308 / 1.6e12) and floor.bound == "HBM"


def test_peft_peers_by_hand():
    m, n, k, r = 64, 32, 48, 4
    kernels = {kk.name: kk for kk in am.peft_lora_kernels(m, n, k, r)}
    assert len(kernels) == 8
    down = kernels["peft x A^T"]
    assert down.gm_bytes == (m * k + k * r + m * r) * 2 and down.flops == 2 * m * r * k
    assert kernels["peft dB"].gm_bytes == (n * m + m * r + n * r) * 2  # dy^T [n, m] (x A^T) [m, r]
    assert kernels["peft y += lora"].gm_bytes == 3 * m * n * 2
    step = am.sequence_prediction(am.peft_lora_kernels(m, n, k, r), FIG)
    assert step.launches == 8 and step.time_s >= 8 * FIG.launch_overhead_s
    q = am.peft_qlora_kernels(m, n, k, r)
    dequantizes = [kk for kk in q if kk.name.startswith("dequantize")]
    assert len(dequantizes) == 2 and all(kk.gm_bytes == am.nf4_bytes(n, k) + n * k * 2 for kk in dequantizes)
    assert sum(kk.name.startswith("base") for kk in q) == 2


def test_minimum_gm_bytes_of_our_kernels():
    m, k = ascend.TOKENS, ascend.IN_FEATURES
    assert ascend.minimum_gm_bytes("loraops_lora_mask_to_float_bf16", "fwd", 2) == m * k * 6
    assert ascend.minimum_gm_bytes("loraops_lora_add_masked_bf16", "bwd", 2) == m * k * 8
    assert ascend.minimum_gm_bytes("loraops_nf4_dequantize_bf16", "nf4", 1) == 42_210_308
    assert ascend.minimum_gm_bytes("something_new", "fwd", 1) is None


# ----------------------------------------------------------------------------- the suite


def run_bench(*args):
    return subprocess.run([sys.executable, "-m", "loraops.bench.cli", "ascend", *args], capture_output=True,
                          text=True, timeout=600)


def test_cli_quick_prints_figures_floors_peers_and_the_label(tmp_path):
    out = tmp_path / "ascend.json"
    result = run_bench("--quick", "--figure", "launch_overhead_s=4e-6", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert am.ESTIMATE_LABEL in result.stdout
    for text in ("hbm_bytes_per_s", "user override (--figure)", "HBM floor", "base GEMMs alone", "peft (unfused)",
                 "peft+bitsandbytes (unfused)"):
        assert text in result.stdout, text
    data = json.loads(out.read_text())
    assert data["suite"] == "ascend" and data["label"] == am.ESTIMATE_LABEL
    assert data["figures"]["launch_overhead_s"]["value"] == 4e-6
    assert all(row["label"] == am.ESTIMATE_LABEL for row in data["results"])
    if ascend.counts_available() is not None:  # no emulation or no launch log yet: one line says so
        assert "our kernels' counts are unavailable" in result.stdout
        assert not any(row["impl"] in (ascend.OURS, ascend.OURS_QLORA) for row in data["results"])


def test_cli_rejects_bad_figures():
    result = run_bench("--figure", "warp_size=32")
    assert result.returncode != 0 and "unknown figure 'warp_size'" in result.stderr


class FakeEmulation:
    """Stand-ins for the emulated ops and their launch log: each op call logs
    launches shaped like the real host flow's (one row per chunk)."""

    def __init__(self):
        self.log = []

    def launch_log(self, reset):
        text = json.dumps(self.log)
        if reset:
            self.log = []
        return text

    def vector(self, name, rows, cols, cores=6):
        for _ in range(rows):
            self.log.append(record(kernel=name, block_dim=cores, gm_read_bytes=cols * 2, gm_write_bytes=cols * 4,
                                   vector_repeats=[cols * 4 // 256 // cores] * cores))

    def matmul(self, rows, n, k):
        for _ in range(rows):
            self.log.append(record(kernel="loraops_lora_matmul_fp32", core_type="aic", block_dim=3, cube_cores_busy=3,
                                   gm_read_bytes=(k + 16 * k) * 4, gm_write_bytes=n * 4,
                                   mmad_fractals={"half": 0, "bf16": 0, "float": 2 * k // 16}))

    def lora_forward(self, x, *args):
        rows, cols = x.shape
        self.vector("loraops_lora_mask_to_float_bf16", rows, cols)
        self.matmul(rows, 16, cols)
        self.matmul(rows, cols, 16)
        self.vector("loraops_lora_add_masked_bf16", rows, cols)
        return x, x[:, :16]

    def lora_backward(self, dy, x, *args):
        for _ in range(2):
            self.lora_forward(dy)
        return (x,) * 5

    def nf4_dequantize(self, *args):
        self.log.append(record(kernel="loraops_nf4_dequantize_bf16", block_dim=48, gm_read_bytes=8_655_876,
                               gm_write_bytes=4096 * 4096 * 2, vector_repeats=[20_000] * 48))

    def nf4_forward(self, x, *args):
        self.nf4_dequantize()
        return self.lora_forward(x)

    def nf4_backward(self, dy, x, *args):
        self.nf4_dequantize()
        return self.lora_backward(dy, x)[:4]


def test_suite_with_a_fake_launch_log(monkeypatch, capsys):
    fake = FakeEmulation()
    ops = {"_ascend_sim_launch_log": fake.launch_log, "_ascend_sim_nf4_dequantize": fake.nf4_dequantize,
           "_ascend_sim_lora_linear": fake.lora_forward, "_ascend_sim_lora_linear_backward": fake.lora_backward,
           "_ascend_sim_lora_linear_nf4": fake.nf4_forward, "_ascend_sim_lora_linear_nf4_backward": fake.nf4_backward}
    monkeypatch.setattr(ascend, "_op", ops.get)
    monkeypatch.setattr(ascend, "counts_available", lambda: None)
    args = argparse.Namespace(figures=None, figure=[], count_only=False, quick=True, json=None, plot=None)
    assert ascend.run(args) == 0
    text = capsys.readouterr().out
    assert am.ESTIMATE_LABEL in text and "unavailable" not in text
    assert "loraops QLoRA" in text and "scaled counts: not judged" in text
    nf4_row = next(line for line in text.splitlines() if line.startswith("NF4 dequantize") and " loraops " in line)
    floor = am.nf4_dequantize_floor(4096, 4096, FIG).time_s  # the fake moves exactly the minimum bytes
    assert f"{(floor + FIG.launch_overhead_s) / floor:.3f}x" in nf4_row
    assert "GM traffic <= 1.1x minimum" in text


def test_a_fused_base_product_is_not_counted_twice(monkeypatch, capsys):
    """When our forward does x W^T's bf16 cube work it computes x W^T itself:
    only dy W is then added from torch_npu's matmul."""
    fake = FakeEmulation()
    forward = fake.lora_forward

    def fused_forward(x, *args):
        out = forward(x, *args)
        # x W^T's cube work at the tokens run: [tokens, 4096] x [4096, 4096] in 16x16x16 fractals.
        fractals = x.shape[0] * 4096 * 4096 // am.HALF_FRACTAL_MACS
        fake.log.append(record(kernel="loraops_lora_fused_matmul_bf16", core_type="aic", block_dim=3,
                               cube_cores_busy=3, mmad_fractals={"half": 0, "bf16": fractals, "float": 0}))
        return out

    ops = {"_ascend_sim_launch_log": fake.launch_log, "_ascend_sim_nf4_dequantize": fake.nf4_dequantize,
           "_ascend_sim_lora_linear": fused_forward, "_ascend_sim_lora_linear_backward": fake.lora_backward}
    monkeypatch.setattr(ascend, "_op", ops.get)
    monkeypatch.setattr(ascend, "counts_available", lambda: None)
    args = argparse.Namespace(figures=None, figure=[], count_only=False, quick=True, json=None, plot=None)
    assert ascend.run(args) == 0  # the QLoRA ops are missing: a row says so, not a failure
    text = capsys.readouterr().out
    ours = next(line for line in text.splitlines() if line.startswith("LoRA") and " loraops " in line)
    assert "+ base dx dy W (torch_npu" in ours and "base fwd" not in ours
    assert "LookupError" in text


def test_s2attn_model_counts_the_pairs_the_mask_allows_and_orders_the_peers():
    from loraops.bench import ascend_s2attn as s2m

    from test_s2attn import allowed_mask
    for n, heads, group in ((40, 4, 10), (37, 2, 9), (16, 4, 32), (64, 6, 7)):
        assert s2m.s2_pairs(n, heads, group) == int(allowed_mask(n, heads, group, "segments", True).sum())
    figures = am.load_figures()
    n, heads, d, group = 16384, 32, 128, 4096
    for backward in (False, True):
        fl = s2m.floor(n, heads, d, group, figures, backward)
        longlora = s2m.longlora_way(n, heads, d, group, figures, backward)
        full = s2m.full_causal(n, heads, d, figures, backward)
        assert fl.time_s < longlora.time_s < full.time_s  # copies cost; full causal scores ~4x the pairs
        assert fl.bound == "cube" and fl.launches == 0


def test_s2attn_cli_prints_estimates_for_our_forward_and_the_peers():
    result = subprocess.run([sys.executable, "-m", "loraops.bench.cli", "s2attn", "--ascend-model", "--count-only",
                             "--seq", "512"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert am.ESTIMATE_LABEL in result.stdout and "LongLoRA way" in result.stdout
    forward = next(line for line in result.stdout.splitlines() if line.split()[:2] == ["512", "fwd"])
    if ascend.counts_available() is None:  # our kernel's prediction, against the floor
        assert "x, " in forward and "no kernel" not in forward, forward
