"""``loraops-bench s2attn``: shifted short attention (LongLoRA's S2-Attn),
forward and forward+backward, as in training, against the LongLoRA-style
implementation and against full causal attention.

q, k and v are ``[B, N, H, D]`` and require grad; the group size is
``N * --group-ratio`` (LongLoRA uses 1/4). Rows, for each sequence length and dtype:

- ``loraops``: ``loraops.s2_attention`` (``--mode``, default ``segments``);
- ``LongLoRA SDPA+roll`` (``--peers``): LongLoRA's S2-Attn as usually written:
  roll half the heads by -G/2, fold the groups into the batch, one causal
  ``scaled_dot_product_attention`` call, unfold, roll back
  (``loraops.s2attn_reference.longlora_sdpa_peer``);
- ``full causal SDPA`` (``--peers``): causal ``scaled_dot_product_attention``
  over the whole sequence, what S2-Attn replaces in training.

Implementations of one case are timed round-robin (one call of each per round).
``peak MiB`` is the most memory one forward+backward needed above what was in
use before it (on CPU the growth of the process's peak resident set, with
loraops' buffer cache emptied first, so its outputs count as fresh allocations;
on CUDA the allocator's peak).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import loraops
from loraops.s2attn_reference import longlora_sdpa_peer

from . import common
from .plot import RATIO, Chart

NAME = "s2attn"
HELP = "S2-Attn forward and backward vs the LongLoRA-style SDPA+roll and full causal SDPA"

DEFAULT_SEQS = [4096]
DEFAULT_DTYPES = [torch.float32, torch.bfloat16]
DEFAULT_BATCH, DEFAULT_HEADS, DEFAULT_HEAD_DIM = 1, 32, 128
DEFAULT_GROUP_RATIO = 0.25
DEFAULT_REPEAT = 3
HALF_DEFAULT_REPEAT = 2  # torch's CPU SDPA in bf16 takes seconds per call: the peers set the pace
DEFAULT_WARMUP = 1
QUICK_SEQS = [1024]
QUICK_HEADS = 8
QUICK_DTYPES = [torch.float32]
QUICK_REPEAT = 2
PEAK_MEMORY_SAMPLES = 2

OURS = "loraops"
LONGLORA = "LongLoRA SDPA+roll"
FULL = "full causal SDPA"
FWD = "fwd"
FWD_BWD = "fwd+bwd"
OPS = (FWD, FWD_BWD)

# The CPU targets the "targets" block checks (fwd+bwd), judged only at the shapes
# they are set for: B=1 H=Hkv=32 D=128 G=N/4, speed at N=4096, memory at N=8192.
# Elsewhere they are shown, not judged.
SPEEDUP_FP32 = 2.0  # over the LongLoRA-style peer in fp32
SPEEDUP_BF16 = 8.0  # the same in bf16
TARGET_GEOMETRY = {"batch": 1, "heads": 32, "kv_heads": 32, "head_dim": 128}
SPEED_TARGET_SEQ = 4096
MEMORY_TARGET_SEQ = 8192


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seq", type=_positive_ints, default=None,
                        help="comma-separated sequence lengths N (default: 4096)")
    parser.add_argument("--batch", type=common._positive_int, default=DEFAULT_BATCH,
                        help=f"batch size B (default: {DEFAULT_BATCH})")
    parser.add_argument("--heads", type=common._positive_int, default=None,
                        help=f"query heads H (default: {DEFAULT_HEADS})")
    parser.add_argument("--kv-heads", type=common._positive_int, default=None,
                        help="key/value heads (default: H; GQA when fewer; the peers then get them repeated)")
    parser.add_argument("--head-dim", type=common._positive_int, default=DEFAULT_HEAD_DIM,
                        help=f"head dimension D (default: {DEFAULT_HEAD_DIM})")
    parser.add_argument("--group-ratio", type=float, default=DEFAULT_GROUP_RATIO,
                        help=f"group size as a fraction of N (default: {DEFAULT_GROUP_RATIO})")
    parser.add_argument("--mode", choices=("segments", "roll"), default="segments",
                        help="loraops' S2-Attn mode (default: segments)")
    parser.add_argument("--dtype", type=common.parse_dtypes, default=None,
                        help="comma-separated dtypes: bf16, fp16, fp32 (default: fp32,bf16)")
    parser.add_argument("--ascend-model", action="store_true",
                        help="print the Atlas A2 NPU cost model's predictions for the Ascend kernels (estimates from "
                             "the CPU emulation's counts, not measured) instead of timing this machine")
    parser.add_argument("--count-only", action="store_true",
                        help="with --ascend-model: the emulation counts the cube's work without computing it")
    parser.add_argument("--peers", action="store_true",
                        help="also time the LongLoRA-style SDPA+roll and full causal SDPA")
    common.add_common_arguments(
        parser, repeat_default=f"{DEFAULT_REPEAT}, {HALF_DEFAULT_REPEAT} for bf16/fp16",
        warmup_default=str(DEFAULT_WARMUP),
        quick_help=f"a smoke run: --seq {QUICK_SEQS[0]} --heads {QUICK_HEADS} --dtype fp32 --repeat {QUICK_REPEAT}, "
        "unless given explicitly",
    )


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"'{text}': lengths must be positive")
    return values


# ----------------------------------------------------------------------------- implementations


class Case:
    """q, k, v (leaves that require grad) and the output gradient of one (N, dtype)."""

    def __init__(self, seq: int, dtype: torch.dtype, args: argparse.Namespace, heads: int, device: torch.device):
        self.seq, self.dtype, self.device = seq, dtype, device
        self.batch, self.heads, self.head_dim = args.batch, heads, args.head_dim
        self.kv_heads = args.kv_heads or heads
        if heads % self.kv_heads:
            raise SystemExit(f"loraops-bench: --heads {heads} is not a multiple of --kv-heads {self.kv_heads}")
        self.group = max(1, int(seq * args.group_ratio))
        self.mode = args.mode
        gen = torch.Generator(device=device).manual_seed(0)

        def randn(h):  # drawn in fp32 and cast, so every dtype sees the same values
            return torch.randn(self.batch, seq, h, self.head_dim, generator=gen, device=device).to(dtype)

        self.q = randn(heads).requires_grad_()
        self.k = randn(self.kv_heads).requires_grad_()
        self.v = randn(self.kv_heads).requires_grad_()
        self.grad_out = randn(heads)

    def name(self) -> str:
        return f"B={self.batch} N={self.seq} H={self.heads} Hkv={self.kv_heads} D={self.head_dim} G={self.group}"

    def kv_for_peers(self):
        rep = self.heads // self.kv_heads
        if rep == 1:
            return self.k, self.v
        return self.k.repeat_interleave(rep, 2), self.v.repeat_interleave(rep, 2)

    def forward(self, impl: str) -> torch.Tensor:
        if impl == OURS:
            return loraops.s2_attention(self.q, self.k, self.v, self.group, mode=self.mode)
        k, v = self.kv_for_peers()
        if impl == LONGLORA:
            return longlora_sdpa_peer(self.q, k, v, self.group)
        # Attention modules hold [B, H, N, D] views of the projections, as here.
        out = F.scaled_dot_product_attention(self.q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=True)
        return out.transpose(1, 2)

    def clear_grads(self) -> None:
        for t in (self.q, self.k, self.v):
            t.grad = None

    def fns(self, impl: str) -> dict[str, Callable[[], object]]:
        def forward():
            return self.forward(impl)  # with grad enabled, as in training: the graph is built, then dropped

        def forward_backward():
            self.clear_grads()  # backward allocates its gradients each time, as a training step does
            self.forward(impl).backward(self.grad_out)

        return {FWD: forward, FWD_BWD: forward_backward}


def implementations(peers: bool, case: Case) -> list[str]:
    impls = [OURS]
    if peers:
        if case.seq % case.group == 0:
            impls.append(LONGLORA)
        impls.append(FULL)
    return impls


# ----------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    if args.ascend_model:
        from . import ascend_s2attn

        return ascend_s2attn.run(args)
    device = common.resolve_device(args.device)
    if device.type not in loraops.build_info().get("backends", []):
        raise SystemExit(f"loraops-bench: this loraops build has no {device.type} backend")
    if not 0.0 < args.group_ratio <= 1.0:
        raise SystemExit(f"loraops-bench: --group-ratio must be in (0, 1], got {args.group_ratio}")
    seqs = args.seq or (QUICK_SEQS if args.quick else DEFAULT_SEQS)
    dtypes = args.dtype or (QUICK_DTYPES if args.quick else DEFAULT_DTYPES)
    heads = args.heads or (QUICK_HEADS if args.quick else DEFAULT_HEADS)
    warmup = args.warmup if args.warmup is not None else DEFAULT_WARMUP
    report = sys.stderr if args.json == "-" else sys.stdout

    machine = common.machine_info(device)
    print(common.machine_header(machine), file=report, flush=True)
    # Without a kernel for the device, loraops.s2_attention runs its PyTorch reference.
    fallback = device.type not in loraops.s2attn._DEVICES_WITH_KERNEL
    if fallback:
        print(f"note: loraops has no {device.type} kernel for s2_attention; its rows time the PyTorch reference "
              "it falls back to", file=report, flush=True)
    peers = {LONGLORA: common.Peer(LONGLORA, f"torch {torch.__version__}"),
             FULL: common.Peer(FULL, f"torch {torch.__version__}")} if args.peers else {}

    n_impls = 1 + 2 * args.peers
    progress = common.Progress(len(seqs) * len(dtypes) * len(OPS) * n_impls)
    rows = []
    with common.quiet_library_noise():
        for seq in seqs:
            for dtype in dtypes:
                repeat = args.repeat or (QUICK_REPEAT if args.quick else
                                         HALF_DEFAULT_REPEAT if dtype != torch.float32 else DEFAULT_REPEAT)
                case = Case(seq, dtype, args, heads, device)
                impls = implementations(args.peers, case)
                for op in OPS:
                    rows += _measure(case, impls, op, progress, repeat=repeat, warmup=warmup)
                del case
                common.release_free_memory()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    _add_comparisons(rows)
    targets = check_targets(rows) if device.type == "cpu" else []
    machine["cpu_busy_after_run"] = common.cpu_busy_fraction()

    print(file=report)
    print(format_rows(rows), file=report)
    print(file=report)
    print(format_targets(targets, device), file=report, flush=True)
    config = {
        "seqs": seqs, "batch": args.batch, "heads": heads, "kv_heads": args.kv_heads or heads,
        "head_dim": args.head_dim, "group_ratio": args.group_ratio, "mode": args.mode,
        "dtypes": [common.dtype_name(d) for d in dtypes], "warmup": warmup, "device": str(device),
        "quick": args.quick, "peers": args.peers, "layout": "[B, N, H, D]",
        "loraops_reference_fallback": fallback,
    }
    common.finish_run(args, NAME, machine, peers, config, rows, report, targets=targets)
    return 1 if any(r["impl"] == OURS and r["status"] != "ok" for r in rows) else 0


def _measure(case: Case, impls: list[str], op: str, progress: common.Progress, *, repeat: int,
             warmup: int) -> list[dict]:
    fns = {impl: case.fns(impl)[op] for impl in impls}
    progress.stream.write(f"{NAME} {op} {case.name()} {common.dtype_name(case.dtype)}: {len(fns)} "
                          f"implementations round-robin, {warmup} warm-up + {repeat} timed calls each ...\n")
    progress.stream.flush()
    timings = common.time_interleaved(fns, device=case.device, repeat=repeat, warmup=warmup)
    case.clear_grads()
    rows = []
    for impl in impls:
        row = {"suite": NAME, "op": op, "impl": impl, "seq": case.seq, "batch": case.batch, "heads": case.heads,
               "kv_heads": case.kv_heads, "head_dim": case.head_dim, "group": case.group,
               "mode": case.mode if impl == OURS else None, "dtype": common.dtype_name(case.dtype),
               "device": str(case.device), "repeat": repeat, "warmup": warmup, "status": "ok"}
        rows.append(row)
        with progress.step(f"{NAME} {op} {impl} N={case.seq} {row['dtype']}") as outcome:
            timing = timings[impl]
            if not isinstance(timing, common.Timing):
                row["status"] = _failure(timing)
                outcome.append(row["status"])
                continue
            row.update(median_ms=timing.median_ms, min_ms=timing.min_ms, max_ms=timing.max_ms,
                       mean_ms=timing.mean_ms, samples_ms=timing.samples_ms)
            text = f"{timing.median_ms:.1f} ms"
            if op == FWD_BWD:
                case.clear_grads()
                peak = common.peak_memory_during(_then_clear_grads(fns[impl], case), case.device,
                                                 samples=PEAK_MEMORY_SAMPLES)
                if peak is not None:
                    row["peak_memory_bytes"] = peak
                    text += f", peak {peak / 2**20:.1f} MiB"
            outcome.append(text)
    return rows


def _then_clear_grads(fn: Callable[[], object], case: Case) -> Callable[[], None]:
    """fwd+bwd that ends as it started, without gradients: the peak already
    counted them, and a later reading must not see them freed as room."""

    def call():
        fn()
        case.clear_grads()

    return call


def _failure(exc: Exception) -> str:
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"failed: {type(exc).__name__}: {message}"


def _add_comparisons(rows: list[dict]) -> None:
    """Per case and op: each peer's median over ours (how many times faster ours is)."""
    ours = {(r["seq"], r["dtype"], r["op"]): r for r in rows if r["impl"] == OURS and r["status"] == "ok"}
    for row in rows:
        mine = ours.get((row["seq"], row["dtype"], row["op"]))
        if row["impl"] != OURS and row["status"] == "ok" and mine is not None:
            row["ours_faster_by"] = row["median_ms"] / mine["median_ms"]


def format_rows(rows: list[dict]) -> str:
    headers = ["op", "impl", "N", "G", "dtype", "median ms", "min ms", "max ms", "peak MiB", "loraops faster by"]
    any_note = any(r["status"] != "ok" for r in rows)
    if any_note:
        headers.append("note")
    table: list[Optional[list[str]]] = []
    previous = None
    for row in rows:
        group = (row["seq"], row["dtype"], row["op"])
        if previous is not None and group != previous:
            table.append(None)
        previous = group
        ok = row["status"] == "ok"
        cells = [row["op"], row["impl"], str(row["seq"]), str(row["group"]), row["dtype"]]
        if ok:
            cells += [common.format_float(row[k]) for k in ("median_ms", "min_ms", "max_ms")]
            peak = row.get("peak_memory_bytes")
            cells.append("" if peak is None else common.format_float(peak / 2**20))
            cells.append(f"{row['ours_faster_by']:.2f}x" if "ours_faster_by" in row else "")
        else:
            cells += [""] * 5
        if any_note:
            cells.append("" if ok else row["status"])
        table.append(cells)
    legend = ("peak MiB: most extra memory one fwd+bwd needed; "
              "loraops faster by: this row's median / loraops' median, same case and op")
    return common.format_table(headers, table) + "\n" + legend


# ----------------------------------------------------------------------------- targets


def check_targets(rows: list[dict]) -> list[dict]:
    """The CPU targets: fwd+bwd speed over the LongLoRA-style peer (fp32 and
    bf16) and fwd+bwd peak memory no more than full causal SDPA's, one entry
    per case; ``met`` is ``None`` away from the target shape."""
    targets = []
    fwd_bwd = {(r["seq"], r["dtype"], r["impl"]): r for r in rows if r["op"] == FWD_BWD and r["status"] == "ok"}
    for (seq, dtype, impl), row in fwd_bwd.items():
        case = (f"B={row['batch']} N={seq} H={row['heads']} Hkv={row['kv_heads']} D={row['head_dim']} "
                f"G={row['group']} {dtype}")
        limit = {"fp32": SPEEDUP_FP32, "bf16": SPEEDUP_BF16}.get(dtype)
        if impl == LONGLORA and "ours_faster_by" in row and limit is not None:
            value = row["ours_faster_by"]
            targets.append({"target": f"fwd+bwd >= {limit:g}x faster than {LONGLORA}", "case": case,
                            "value": value, "limit": limit, "unit": "x", "at_least": True,
                            "met": value >= limit if _at_target_shape(row, SPEED_TARGET_SEQ) else None})
        if impl == FULL:
            ours = fwd_bwd.get((seq, dtype, OURS))
            if ours and "peak_memory_bytes" in ours and "peak_memory_bytes" in row:
                value, limit = ours["peak_memory_bytes"] / 2**20, row["peak_memory_bytes"] / 2**20
                targets.append({"target": f"fwd+bwd peak memory <= {FULL}", "case": case, "value": value,
                                "limit": limit, "unit": "MiB",
                                "met": value <= limit if _at_target_shape(row, MEMORY_TARGET_SEQ) else None})
    return targets


def _at_target_shape(row: dict, seq: int) -> bool:
    return row["seq"] == seq and row["group"] == seq // 4 and all(row[k] == v for k, v in TARGET_GEOMETRY.items())


def format_targets(targets: list[dict], device: torch.device) -> str:
    geometry = "B={batch} H={heads} Hkv={kv_heads} D={head_dim}".format(**TARGET_GEOMETRY)
    return common.format_targets(
        targets, device, judged_at=f"{geometry} G=N/4 only: speed at N={SPEED_TARGET_SEQ}, "
        f"memory at N={MEMORY_TARGET_SEQ}", nothing="nothing to check with these options (the targets need --peers)")


def chart(document: dict) -> Chart:
    """What ``--plot`` and ``loraops-bench plot`` draw: per N, dtype and op,
    loraops against each peer (no ceiling: full causal SDPA is a peer, not a bound)."""
    config = document["config"]
    points = [({"op": row["op"], "seq": f"N={row['seq']} G={row['group']}", "dtype": row["dtype"]},
               RATIO, f"vs {row['impl']}", row["ours_faster_by"])
              for row in document["results"] if row["status"] == "ok" and "ours_faster_by" in row]
    kv = f" Hkv={config['kv_heads']}" if config["kv_heads"] != config["heads"] else ""
    title = (f"loraops-bench s2attn ({config['mode']}): B={config['batch']} H={config['heads']}{kv} "
             f"D={config['head_dim']}, G=N*{config['group_ratio']:g}")
    return Chart(title, None, points)
