"""``loraops-bench ascend``: predicted times of loraops' Ascend C kernels on an
Atlas A2 (910B-class) NPU, from the CPU emulation's launch counts and public
figures of the part (:mod:`loraops.bench.ascend_model`), against the same
model's floor and unfused peer at the target shapes. Nothing here is
measured: every number is a model estimate and a lower bound (re-reads that
fit in L2 are not charged to HBM; see ascend_model).

Printed: (a) the figures with their sources; (b) per target case, the floor,
our kernels' prediction and the unfused peer's, with the ratios the targets
set; (c) per kernel of ours, its GM traffic against the minimum (inputs read
once, outputs written once).

Where the counts come from:

- NF4 dequantize runs in the emulation at the target shape (4096x4096: about
  half a second) on the SKU's vector cores (the emulated op takes a core count),
  so its counts are used as they are.
- The LoRA ops (``_ascend_sim_lora_linear[_nf4][_backward]``) run on 3 emulated
  cube cores, too slowly for 8192 tokens. With ``--count-only`` (or
  ``LORAOPS_ASCEND_SIM_COUNT_ONLY=1``, which also tells the emulation to count
  without computing) they run at the target shape. Otherwise they run on fewer
  tokens with the target's features and rank, and the counts of each kernel are
  scaled by tokens_target / tokens_run (the NF4 dequantize inside the QLoRA op
  reads the whole weight whatever the tokens: not scaled). Either way each
  kernel's work is spread evenly over the SKU's cores, and its launch count is
  re-chunked from the emulation's 4096-element workspace (one row per launch at
  4096 features) to the NPU's 2^24 elements. Scaled counts also scale what each
  launch pays once (re-reading the rank-r factors, a 1-row tile padded to 16),
  so they overstate our kernels: such rows are shown and not judged.

The base GEMMs of the LoRA ops (x W^T, dy W) run in torch_npu's matmul unless
our kernels compute them (a forward or backward whose launches multiply in
half/bf16 on the cube: the low-rank products are fp32): those from torch_npu
are modelled as bf16 cube GEMMs at peak (max of flops and bytes), as in the
floor and the peer, without launch cost. The frozen weight gets no dW.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, Optional

import torch

from . import ascend_model as am
from . import common
from .plot import CEILING, RATIO, Chart

NAME = "ascend"
HELP = "predicted Atlas A2 NPU times of the Ascend kernels (cost model over the emulation's counts; not measured)"

LABEL = am.ESTIMATE_LABEL
TOKENS, IN_FEATURES, OUT_FEATURES, RANK = 8192, 4096, 4096, 16
NF4_SHAPE = (4096, 4096)
BLOCKSIZE, NESTED_BLOCKSIZE = 64, 256
SCALED_TOKENS, QUICK_TOKENS = 64, 16
COUNT_ONLY_ENV = "LORAOPS_ASCEND_SIM_COUNT_ONLY"
#: SimLauncher::workspace_elements() (kernels/ascend/sim/sim_launcher.h: the NPU's
#: in count-only mode) and the NPU launcher's (kernels/ascend/lora/lora_npu.cpp):
#: fp32 elements per chunk of rows.
SIM_WORKSPACE_ELEMENTS = 4096
NPU_WORKSPACE_ELEMENTS = 1 << 24


#: The kernels the host flow launches once per chunk of rows of its fp32 intermediates.
CHUNKED_KERNELS = ("loraops_lora_mask_to_float", "loraops_lora_add_masked", "loraops_lora_matmul")


def dequantizes_whole(kernel: str) -> bool:
    """The NF4 dequantize kernel: it reads the whole weight whatever the tokens."""
    return kernel.startswith("loraops_nf4_dequantize")

LORA_LIMIT, QLORA_LIMIT, NF4_LIMIT, GM_LIMIT = 1.10, 1.20, 1.25, 1.10

NF4_OP, LORA_OP, QLORA_OP = "NF4 dequantize to bf16", "LoRA r=16 fwd+bwd bf16", "QLoRA r=16 fwd+bwd (NF4 base)"
OURS, OURS_QLORA, PEFT, PEFT_BNB = "loraops", "loraops QLoRA", "peft (unfused)", "peft+bitsandbytes (unfused)"
FLOOR_HBM, FLOOR_BASE = "HBM floor", "base GEMMs alone (fwd, dx)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--figures", metavar="FILE", default=None,
                        help='JSON object of figure overrides: {"hbm_bytes_per_s": 1.5e12} or '
                        '{"clock_hz": {"value": 1.65e9, "source": "..."}}')
    parser.add_argument("--figure", metavar="NAME=VALUE", action="append", default=[],
                        help=f"override one figure (repeatable); names: {', '.join(am.Figures.names())}")
    parser.add_argument("--count-only", action="store_true",
                        help=f"run the emulated LoRA ops at the target shape ({TOKENS} tokens), with "
                        f"{COUNT_ONLY_ENV}=1 set for the emulation (default: when that variable is already 1)")
    parser.add_argument("--quick", action="store_true",
                        help=f"scaled LoRA runs on {QUICK_TOKENS} tokens instead of {SCALED_TOKENS}")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write figures, predictions and targets as JSON to FILE; '-' prints it to stdout "
                        "(the tables then go to stderr); an existing directory gets "
                        "DIR/<machine key>/ascend-<time>.json")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="also draw the predicted ratios (needs matplotlib)")


# ----------------------------------------------------------------------------- emulation counts


def _op(name: str):
    ops = torch.ops.loraops
    return getattr(ops, name) if hasattr(ops, name) else None


def counts_available() -> Optional[str]:
    """None when the emulation can give launch counts, else why not."""
    import loraops

    if "ascend_sim" not in loraops.build_info().get("backends", []):
        return "the Ascend emulation isn't built (LORAOPS_ASCEND_SIM=OFF)"
    if _op("_ascend_sim_launch_log") is None:
        return "the Ascend emulation has no launch log (torch.ops.loraops._ascend_sim_launch_log)"
    return None


def logged(fn: Callable[[], object]) -> list[am.LaunchRecord]:
    """The launches ``fn`` made, from the emulation's log."""
    log = _op("_ascend_sim_launch_log")
    log(True)  # drop whatever earlier calls left
    fn()
    return am.parse_launch_log(log(True))


def _chunks(rows: int, cols: int, workspace: int) -> int:
    return math.ceil(rows / max(1, workspace // max(cols, 1)))


def project_op(records: list[am.LaunchRecord], figures: am.Figures, *, tokens_run: int, tokens: int,
               cols: int, sim_workspace: int = SIM_WORKSPACE_ELEMENTS) -> list[am.LaunchRecord]:
    """An emulated LoRA op call's launches as the NPU would run them at ``tokens``:
    one record per kernel, counts scaled by tokens / tokens_run (not the NF4
    dequantize's: it reads the whole weight whatever the tokens), work spread
    over the SKU's cores, launches re-chunked from the emulation's workspace to
    the NPU's (kernels launched fewer times than there are chunks are not chunked)."""
    sim_chunks = _chunks(tokens_run, cols, sim_workspace)
    npu_chunks = _chunks(tokens, cols, NPU_WORKSPACE_ELEMENTS)
    out = []
    for family in am.merge(records):
        weight_sized = dequantizes_whole(family.kernel)
        launches = family.launches
        if sim_workspace != NPU_WORKSPACE_ELEMENTS and family.kernel.startswith(CHUNKED_KERNELS) and launches >= sim_chunks:
            launches = max(1, round(launches / sim_chunks)) * npu_chunks
        factor = 1.0 if weight_sized else tokens / tokens_run
        out.append(am.project(family, figures, factor=factor, launches=launches))
    return out


def lora_inputs(tokens: int, qlora: bool):
    g = torch.Generator().manual_seed(0)
    randn = lambda *s: torch.randn(s, generator=g).to(torch.bfloat16)  # noqa: E731
    x, dy = randn(tokens, IN_FEATURES), randn(tokens, OUT_FEATURES)
    w = randn(OUT_FEATURES, IN_FEATURES) * IN_FEATURES ** -0.5
    a, b = randn(RANK, IN_FEATURES), randn(OUT_FEATURES, RANK)
    nf4 = None
    if qlora:
        import loraops

        nf4 = loraops.nf4.quantize(w, blocksize=BLOCKSIZE, double_quant=True)
    return x, dy, w, a, b, nf4


def run_lora_counts(tokens: int, qlora: bool) -> tuple[list, list]:
    """(forward launches, backward launches) of one emulated op call each."""
    x, dy, w, a, b, qw = lora_inputs(tokens, qlora)
    scale, dropout, seed = 2.0, 0.0, 0
    if not qlora:
        fwd, bwd = _op("_ascend_sim_lora_linear"), _op("_ascend_sim_lora_linear_backward")
        if fwd is None or bwd is None:
            raise LookupError("the emulation has no _ascend_sim_lora_linear / _backward")
        out = {}
        f = logged(lambda: out.setdefault("r", fwd(x, w, None, a, b, scale, dropout, seed)))
        xa = out["r"][1]
        # needs_grad: x, weight (frozen), bias (none), lora_A, lora_B
        g = logged(lambda: bwd(dy, x, w, None, a, b, xa, scale, dropout, seed, [True, False, False, True, True]))
        return f, g
    fwd, bwd = _op("_ascend_sim_lora_linear_nf4"), _op("_ascend_sim_lora_linear_nf4_backward")
    if fwd is None or bwd is None:
        raise LookupError("the emulation has no _ascend_sim_lora_linear_nf4 / _backward")
    nf4_args = (qw.packed, qw.absmax, qw.nested_absmax, qw.nested_code, qw.offset, qw.blocksize, qw.nested_blocksize,
                [OUT_FEATURES, IN_FEATURES])
    out = {}
    f = logged(lambda: out.setdefault("r", fwd(x, *nf4_args, None, a, b, scale, dropout, seed)))
    xa = out["r"][1]
    # needs_grad: x, bias (none), lora_A, lora_B
    g = logged(lambda: bwd(dy, x, *nf4_args, None, a, b, xa, scale, dropout, seed, [True, False, True, True]))
    return f, g


def run_nf4_counts(figures: am.Figures) -> list[am.LaunchRecord]:
    import loraops

    op = _op("_ascend_sim_nf4_dequantize")
    if op is None:
        raise LookupError("the emulation has no _ascend_sim_nf4_dequantize")
    w = torch.randn(NF4_SHAPE, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    qw = loraops.nf4.quantize(w, blocksize=BLOCKSIZE, double_quant=True)
    return logged(lambda: op(qw.packed, qw.absmax, qw.nested_absmax, qw.nested_code, qw.offset, qw.blocksize,
                             qw.nested_blocksize, list(NF4_SHAPE), torch.bfloat16, figures.vector_cores))


# ----------------------------------------------------------------------------- minimum GM traffic per kernel


def minimum_gm_bytes(kernel: str, op: str, launches: int) -> Optional[int]:
    """The least GM traffic of our kernel ``kernel`` over one op call at the
    target shape (each launch reads its inputs once and writes its outputs once),
    from the host flow (kernels/ascend/lora/lora_ascend_ops.h); None for a
    kernel this does not know. ``op`` is "fwd", "bwd", "qlora fwd", "qlora bwd"
    or "nf4"; ``launches`` the NPU launches of the kernel in that call."""
    m, k, n, r = TOKENS, IN_FEATURES, OUT_FEATURES, RANK
    bf16, f32 = am.BF16, am.FP32
    fwd = op.endswith("fwd")
    if dequantizes_whole(kernel):
        rows, cols = NF4_SHAPE if op == "nf4" else (n, k)
        return launches * (am.nf4_bytes(rows, cols, BLOCKSIZE) + rows * cols * bf16)
    if "nf4_fused" in kernel:  # y = x W^T + [s xa | 1] [B | bias]^T, W read packed (the workspace is not minimal)
        return m * k * bf16 + am.nf4_bytes(n, k, BLOCKSIZE) + (m + n) * (r + 1) * f32 + m * n * bf16
    if op == "nf4":
        return None
    c = _chunks(m, max(k, n), NPU_WORKSPACE_ELEMENTS)
    if "fused" in kernel:  # base product + low-rank term in one accumulator; the weight re-read per launch
        if fwd:  # y = x W^T + [s xa | 1] [B | bias]^T
            return m * k * bf16 + launches * (n * k * bf16 + n * (r + 1) * f32) + m * r * f32 + m * n * bf16
        return m * n * bf16 + launches * (n * k * bf16 + r * k * f32) + m * r * f32 + m * k * bf16  # dx
    if "mask_to_float" in kernel:  # x (or dy) in bf16 -> fp32
        elements = m * k if fwd else 2 * m * n + m * k  # bwd: dy for d_xa and for dB, x for dA
        return elements * (bf16 + f32)
    if "add_masked" in kernel:  # y (or dx) += fp32 term, in place
        return (m * n if fwd else m * k) * (bf16 + f32 + bf16)
    if "matmul" in kernel:  # fp32 operands; the rank-r factor re-read once per chunk
        if fwd:
            return f32 * ((m * k + c * r * k + m * r) + (m * r + c * r * n + m * n))
        return f32 * ((m * n + c * r * n + m * r) + (m * r + m * n + c * r * n)
                      + (m * r + m * k + c * r * k) + (m * r + c * r * k + m * k))
    return None


# ----------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    report = sys.stderr if args.json == "-" else sys.stdout
    try:
        figures = am.load_figures(args.figures, args.figure)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"loraops-bench ascend: {exc}") from None
    count_only = args.count_only or os.environ.get(COUNT_ONLY_ENV) == "1"
    if args.count_only:
        os.environ[COUNT_ONLY_ENV] = "1"  # read by the emulation at each launch
    tokens_run = TOKENS if count_only else (QUICK_TOKENS if args.quick else SCALED_TOKENS)

    machine = common.machine_info(torch.device("cpu"))
    print(common.machine_header(machine), file=report)
    print(f"every figure below: {LABEL}; a lower bound, never a measured time", file=report)
    print(file=report)
    print(format_figures(figures), file=report, flush=True)

    rows, kernel_rows, failed = [], [], False
    unavailable = counts_available()
    m, k, n, r = TOKENS, IN_FEATURES, OUT_FEATURES, RANK
    base = am.base_gemm_floor(m, n, k, figures)

    # NF4 dequantize
    floor = am.nf4_dequantize_floor(*NF4_SHAPE, figures)
    nf4_case = {"op": NF4_OP, "shape": common.shape_name(NF4_SHAPE)}
    rows.append(_row(nf4_case, FLOOR_HBM, floor, "analytic: NF4 storage read + bf16 written, over HBM bandwidth"))
    if unavailable is None:
        try:
            records = [am.project(rec, figures) for rec in run_nf4_counts(figures)]
        except Exception as exc:
            rows.append(_failed(nf4_case, OURS, exc))
            failed = True
        else:
            rows.append(_row(nf4_case, OURS, am.op_prediction(records, figures),
                             "emulated counts at the target shape", floor=floor))
            kernel_rows += _kernel_rows(records, figures, "nf4", NF4_OP, scaled=False)

    # LoRA and QLoRA fwd+bwd
    for op_name, qlora, ours_name, peer_name in ((LORA_OP, False, OURS, PEFT), (QLORA_OP, True, OURS_QLORA, PEFT_BNB)):
        case = {"op": op_name, "shape": f"{IN_FEATURES}->{OUT_FEATURES}", "tokens": TOKENS, "rank": RANK}
        rows.append(_row(case, FLOOR_BASE, base, "analytic: x W^T and dy W at max(bf16 cube peak, HBM)"))
        peer_kernels = am.peft_qlora_kernels(m, n, k, r) if qlora else am.peft_lora_step(m, n, k, r)
        # The base GEMMs cost what they cost in the floor (no launch cost); each other kernel pays a launch.
        peer = _sum([base, am.sequence_prediction([kk for kk in peer_kernels if not kk.name.startswith("base")],
                                                  figures)])
        if unavailable is None:
            try:
                fwd, bwd = run_lora_counts(tokens_run, qlora)
            except Exception as exc:
                rows.append(_failed(case, ours_name, exc))
                failed = failed or not isinstance(exc, LookupError)
            else:
                prefix = "qlora " if qlora else ""
                projected = {}
                for part, records in (("fwd", fwd), ("bwd", bwd)):
                    projected[part] = project_op(records, figures, tokens_run=tokens_run, tokens=TOKENS,
                                                 cols=max(IN_FEATURES, OUT_FEATURES),
                                                 sim_workspace=NPU_WORKSPACE_ELEMENTS if count_only
                                                 else SIM_WORKSPACE_ELEMENTS)
                    kernel_rows += _kernel_rows(projected[part], figures, prefix + part, op_name,
                                                scaled=tokens_run != TOKENS)
                # A part whose kernels do its base GEMM's half/bf16 cube work computes it itself (the fused
                # kernels); otherwise (dx with dropout) the base GEMM runs in torch_npu's matmul.
                in_torch_npu = [g for part, g in zip(("fwd", "bwd"), am.base_gemms(m, n, k))
                                if sum(rec.mmad_fractals["half"] + rec.mmad_fractals["bf16"]
                                       for rec in projected[part]) * am.HALF_FRACTAL_MACS < g.flops / 2]
                ours = _sum([am.op_prediction(projected["fwd"] + projected["bwd"], figures),
                             am.sequence_prediction(in_torch_npu, figures, overhead=False)])
                how = ("emulated counts at the target shape" if tokens_run == TOKENS
                       else f"emulated on {tokens_run} tokens, counts scaled x{TOKENS // tokens_run}: overstated")
                if in_torch_npu:
                    how += f"; + {', '.join(g.name for g in in_torch_npu)} (torch_npu, modelled at peak)"
                rows.append(_row(case, ours_name, ours, how, floor=base, scaled=tokens_run != TOKENS))
        rows.append(_row(case, peer_name, peer, "analytic: separate kernels through GM" +
                         ("; W dequantized whole before each GEMM" if qlora else "") + "; + base GEMMs", floor=base))
    _add_peer_ratios(rows)
    targets = check_targets(rows, kernel_rows)
    machine["cpu_busy_after_run"] = None  # nothing timed on this machine

    print(file=report)
    print(format_rows(rows), file=report)
    if unavailable is not None:
        print(f"our kernels' counts are unavailable: {unavailable}; showing the floors and peers only", file=report)
    if kernel_rows:
        print(file=report)
        print(format_kernel_rows(kernel_rows), file=report)
    print(file=report)
    print(format_targets(targets), file=report, flush=True)
    config = {"tokens": TOKENS, "in_features": IN_FEATURES, "out_features": OUT_FEATURES, "rank": RANK,
              "dtype": "bf16", "nf4_shape": list(NF4_SHAPE), "blocksize": BLOCKSIZE, "double_quant": True,
              "count_only": count_only, "tokens_emulated": tokens_run, "quick": args.quick,
              "counts": "unavailable: " + unavailable if unavailable else "emulation launch log"}
    common.finish_run(args, NAME, machine, {}, config, rows, report, label=LABEL, figures=figures.as_dict(),
                      kernels=kernel_rows, targets=targets)
    return 1 if failed else 0


def _sum(parts: list[am.Prediction]) -> am.Prediction:
    hbm, cube, vector, launch = (sum(getattr(p, a) for p in parts) for a in ("hbm_s", "cube_s", "vector_s", "launch_s"))
    return am.Prediction(time_s=sum(p.time_s for p in parts), bound=am._bound(hbm, cube, vector, launch), hbm_s=hbm,
                         cube_s=cube, vector_s=vector, launch_s=launch, gm_bytes=sum(p.gm_bytes for p in parts),
                         launches=sum(p.launches for p in parts))


def _row(case: dict, impl: str, p: am.Prediction, how: str, *, floor: Optional[am.Prediction] = None,
         scaled: bool = False) -> dict:
    row = {"suite": NAME, **case, "impl": impl, "status": "ok", "label": LABEL, "how": how,
           "predicted_ms": p.time_s * 1e3, "bound": p.bound, "hbm_ms": p.hbm_s * 1e3, "cube_ms": p.cube_s * 1e3,
           "vector_ms": p.vector_s * 1e3, "launch_ms": p.launch_s * 1e3, "gm_bytes": p.gm_bytes,
           "launches": p.launches, "scaled": scaled}
    if floor is not None:
        row["vs_floor"] = p.time_s / floor.time_s
    return row


def _failed(case: dict, impl: str, exc: Exception) -> dict:
    message = str(exc).splitlines()[0] if str(exc) else ""
    return {"suite": NAME, **case, "impl": impl, "status": f"failed: {type(exc).__name__}: {message}", "label": LABEL}


def _add_peer_ratios(rows: list[dict]) -> None:
    """On our rows: the peer's predicted time over ours (higher: ours faster)."""
    for ours, peer in ((OURS, PEFT), (OURS_QLORA, PEFT_BNB)):
        theirs = {r["op"]: r for r in rows if r["impl"] == peer and r["status"] == "ok"}
        for row in rows:
            if row["impl"] == ours and row["status"] == "ok" and row["op"] in theirs:
                row["speedup_vs_peer"] = theirs[row["op"]]["predicted_ms"] / row["predicted_ms"]


def _kernel_rows(records: list[am.LaunchRecord], figures: am.Figures, op: str, op_name: str, *,
                 scaled: bool) -> list[dict]:
    out = []
    for rec in records:
        p = am.predict(rec, figures)
        minimum = minimum_gm_bytes(rec.kernel, op, rec.launches)
        out.append({"label": LABEL, "op": op_name, "part": op, "kernel": rec.kernel, "launches": rec.launches,
                    "gm_bytes": rec.gm_bytes, "min_gm_bytes": minimum,
                    "gm_vs_min": rec.gm_bytes / minimum if minimum else None, "predicted_ms": p.time_s * 1e3,
                    "bound": p.bound, "flag_waits": rec.flag_waits,
                    "scaled": scaled and not dequantizes_whole(rec.kernel)})  # the whole-weight dequantize: never scaled
    return out


# ----------------------------------------------------------------------------- targets


def check_targets(rows: list[dict], kernel_rows: list[dict]) -> list[dict]:
    """The Atlas A2 targets, on this model's predictions. ``met`` is
    None where the counts were scaled (they overstate our kernels: shown, not judged)."""
    targets = []
    limits = {NF4_OP: (OURS, NF4_LIMIT, f"NF4 dequantize <= {NF4_LIMIT}x HBM floor"),
              LORA_OP: (OURS, LORA_LIMIT, f"LoRA fwd+bwd <= {LORA_LIMIT}x base GEMMs alone"),
              QLORA_OP: (OURS_QLORA, QLORA_LIMIT, f"QLoRA fwd+bwd <= {QLORA_LIMIT}x base GEMMs alone")}
    for row in rows:
        impl, limit, target = limits[row["op"]]
        if row["impl"] == impl and row["status"] == "ok":
            targets.append({"target": target, "case": row["op"], "value": row["vs_floor"], "limit": limit,
                            "unit": "x", "met": None if row["scaled"] else row["vs_floor"] <= limit, "label": LABEL})
    for k in kernel_rows:
        if k["gm_vs_min"] is not None:
            targets.append({"target": f"GM traffic <= {GM_LIMIT}x minimum", "case": f"{k['kernel']} ({k['part']})",
                            "value": k["gm_vs_min"], "limit": GM_LIMIT, "unit": "x",
                            "met": None if k["scaled"] else k["gm_vs_min"] <= GM_LIMIT, "label": LABEL})
    return targets


def format_targets(targets: list[dict]) -> str:
    if not targets:
        return "targets (Atlas A2 model): nothing to judge without our kernels' counts"
    table = [[t["target"], t["case"], f"{t['value']:.2f}x", f"<= {t['limit']:.2f}x",
              "scaled counts: not judged" if t["met"] is None else "met" if t["met"] else "missed"] for t in targets]
    return (f"targets (Atlas A2, {LABEL}):\n"
            + common.format_table(["target", "case", "predicted", "limit", ""], table))


# ----------------------------------------------------------------------------- output


def format_figures(figures: am.Figures) -> str:
    def value(name):
        v = getattr(figures, name)
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    table = [[name, value(name), figures.sources.get(name, "")] for name in am.Figures.names()]
    peak = figures.cube_peak_flops_half
    return (f"figures ({LABEL}):\n" + common.format_table(["figure", "value", "source"], table)
            + f"\nderived: cube peak {peak / 1e12:.1f} TFLOPS half/bf16, {figures.cube_peak_flops_float / 1e12:.1f} "
            f"fp32; vector {figures.vector_cores * figures.vector_bytes_per_cycle * figures.clock_hz / 1e12:.1f} "
            "TB/s of UB operands over all AIVs")


def format_rows(rows: list[dict]) -> str:
    headers = ["op", "impl", "predicted ms", "bound", "GM MB", "launches", "vs floor", "peer/ours", "how"]
    table: list[Optional[list[str]]] = []
    previous = None
    for row in rows:
        if previous is not None and row["op"] != previous:
            table.append(None)
        previous = row["op"]
        if row["status"] != "ok":
            table.append([row["op"], row["impl"], "", "", "", "", "", "", row["status"]])
            continue
        table.append([row["op"], row["impl"], f"{row['predicted_ms']:.4f}", row["bound"],
                      common.format_float(row["gm_bytes"] / 1e6), str(row["launches"]),
                      f"{row['vs_floor']:.3f}x" if "vs_floor" in row else "",
                      f"{row['speedup_vs_peer']:.2f}x" if "speedup_vs_peer" in row else "", row["how"]])
    return (f"predicted at {TOKENS} tokens, {IN_FEATURES}->{OUT_FEATURES}, r={RANK}, bf16; NF4 "
            f"{common.shape_name(NF4_SHAPE)} blocksize {BLOCKSIZE}, double quant ({LABEL}):\n"
            + common.format_table(headers, table)
            + "\nvs floor: predicted / the floor row above it (HBM floor, or the base GEMMs alone); "
            "peer/ours: the unfused peer's prediction over ours; GM MB: 1e6 bytes")


def format_kernel_rows(kernel_rows: list[dict]) -> str:
    table = [[k["part"], k["kernel"], str(k["launches"]), common.format_float(k["gm_bytes"] / 1e6),
              "" if k["min_gm_bytes"] is None else common.format_float(k["min_gm_bytes"] / 1e6),
              "" if k["gm_vs_min"] is None else f"{k['gm_vs_min']:.3f}x", f"{k['predicted_ms']:.4f}", k["bound"],
              "scaled" if k["scaled"] else ""] for k in kernel_rows]
    return (f"our kernels per op call, as on the NPU ({LABEL}):\n"
            + common.format_table(["part", "kernel", "launches", "GM MB", "min MB", "GM/min", "predicted ms", "bound",
                                   ""], table))


def chart(document: dict) -> Chart:
    """Per target case: the peer's predicted time over ours, and the floor's over ours."""
    points = []
    for row in document["results"]:
        if row.get("status") != "ok" or row["impl"] not in (OURS, OURS_QLORA):
            continue
        case = {"op": row["op"]}
        if "speedup_vs_peer" in row:
            points.append((case, RATIO, f"{row['impl']} vs unfused peer", row["speedup_vs_peer"]))
        if "vs_floor" in row:
            points.append((case, CEILING, row["impl"], 1 / row["vs_floor"]))
    return Chart(f"loraops-bench ascend: {LABEL}", "floor / predicted\n(100% = at the floor)", points)
