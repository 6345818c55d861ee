"""``loraops-bench nf4``: NF4 quantize and dequantize, against bitsandbytes and
torchao where installed, and against the copy bandwidth of the machine.

Every case is QLoRA's setting: blocksize 64 with double quantization (absmax
stored as 8-bit codes in blocks of 256). Bandwidth counts the bytes an op must
read plus write (the full-precision tensor on one side, the NF4 storage on the
other); peers are charged the same bytes, since their formats are the same size.
"""

from __future__ import annotations

import argparse
import sys
from functools import cached_property
from typing import Callable, Optional

import torch

import loraops

from . import common
from .plot import CEILING, RATIO, Chart

NAME = "nf4"
HELP = "NF4 quantize/dequantize vs bitsandbytes, torchao and memcpy"

BLOCKSIZE = 64
SCALER_BLOCKSIZE = 256  # blocksize of the double quantization, fixed by the QLoRA format
DEFAULT_SHAPES = [(4096, 4096), (11008, 4096)]
DEFAULT_DTYPES = [torch.bfloat16, torch.float32]

OURS = "loraops"
OURS_OUT = "loraops out="
COPY = "copy ceiling"
PEER_NAMES = ("bitsandbytes", "torchao")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shapes", type=common.parse_shapes, default=None,
        help="comma-separated weight shapes (default: 4096x4096,11008x4096)",
    )
    parser.add_argument(
        "--dtype", type=common.parse_dtypes, default=None,
        help="comma-separated dtypes to quantize from and dequantize to: bf16, fp16, fp32 (default: bf16,fp32)",
    )
    parser.add_argument("--peers", action="store_true", help="also time bitsandbytes and torchao, when installed")
    common.add_common_arguments(parser)


# ----------------------------------------------------------------------------- peers


def find_peers() -> dict[str, common.Peer]:
    """Import what is installed; anything missing, broken or with another API is
    recorded with the reason instead of raising."""
    peers = {}
    bnb, version = common.optional_import("bitsandbytes.functional")
    if bnb is None:
        peers["bitsandbytes"] = common.Peer("bitsandbytes", note=version)
    elif not all(hasattr(bnb, f) for f in ("quantize_4bit", "dequantize_4bit")):
        peers["bitsandbytes"] = common.Peer("bitsandbytes", version, note=f"API differs in {version}: no quantize_4bit")
    else:
        peers["bitsandbytes"] = common.Peer(
            "bitsandbytes", version, api={"quantize": bnb.quantize_4bit, "dequantize": bnb.dequantize_4bit}
        )

    # torchao moved NF4Tensor between releases; try the newer home first.
    for module in ("torchao.quantization.quantize_.workflows.nf4.nf4_tensor", "torchao.dtypes.nf4tensor"):
        nf4tensor, version = common.optional_import(module)
        if nf4tensor is not None and hasattr(nf4tensor, "to_nf4"):
            peers["torchao"] = common.Peer("torchao", version, api={"to_nf4": nf4tensor.to_nf4})
            break
    else:
        note = version if nf4tensor is None else f"API differs in {version}: no to_nf4"
        peers["torchao"] = common.Peer("torchao", note=note)
    return peers


# ----------------------------------------------------------------------------- one shape and dtype


class Case:
    """The inputs for one (shape, dtype), built on first use so a peer that is
    skipped costs nothing, and freed together when the case is done."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, peers: dict[str, common.Peer]):
        self.shape = shape
        self.dtype = dtype
        self.device = device
        self.peers = peers

    @cached_property
    def weight(self) -> torch.Tensor:
        generator = torch.Generator(device=self.device).manual_seed(0)
        return torch.randn(self.shape, generator=generator, device=self.device, dtype=torch.float32).to(self.dtype)

    @property
    def full_bytes(self) -> int:
        return common.tensor_bytes(self.weight)

    @cached_property
    def nf4(self) -> "loraops.nf4.NF4Weight":
        return loraops.nf4.quantize(self.weight, blocksize=BLOCKSIZE, double_quant=True)

    def bnb_quantize(self):
        return self.peers["bitsandbytes"].api["quantize"](
            self.weight, blocksize=BLOCKSIZE, quant_type="nf4", compress_statistics=True
        )

    @cached_property
    def bnb(self):
        return self.bnb_quantize()

    def torchao_quantize(self):
        return self.peers["torchao"].api["to_nf4"](
            self.weight, block_size=BLOCKSIZE, scaler_block_size=SCALER_BLOCKSIZE
        )

    @cached_property
    def torchao(self):
        return self.torchao_quantize()


# A measurement: builds its inputs and returns (callable to time, bytes read, bytes written).
Builder = Callable[[Case], tuple[Callable[[], object], int, int]]


def _quantize_bytes(case: Case) -> tuple[int, int]:
    return case.full_bytes, case.nf4.nbytes


def _dequantize_bytes(case: Case) -> tuple[int, int]:
    return case.nf4.nbytes, case.full_bytes


def _ours_quantize(case: Case):
    weight = case.weight
    return (lambda: loraops.nf4.quantize(weight, blocksize=BLOCKSIZE, double_quant=True)), *_quantize_bytes(case)


def _bnb_quantize(case: Case):
    return case.bnb_quantize, *_quantize_bytes(case)


def _torchao_quantize(case: Case):
    return case.torchao_quantize, *_quantize_bytes(case)


def _ours_dequantize(case: Case):
    qw = case.nf4
    return (lambda: loraops.nf4.dequantize(qw)), *_dequantize_bytes(case)


def _ours_dequantize_out(case: Case):
    qw = case.nf4
    out = torch.empty_like(case.weight)
    return (lambda: loraops.nf4.dequantize(qw, out=out)), *_dequantize_bytes(case)


def _bnb_dequantize(case: Case):
    packed, state = case.bnb
    dequantize = case.peers["bitsandbytes"].api["dequantize"]
    return (lambda: dequantize(packed, state)), *_dequantize_bytes(case)


def _torchao_dequantize(case: Case):
    # Looked up here, so an API without it becomes a note on the row rather than a crash.
    return case.torchao.get_original_weight, *_dequantize_bytes(case)


def _copy(case: Case):
    """The ceiling: ``copy_`` of a tensor the size of the full-precision weight
    into a preallocated one; no (de)quantizer can move its bytes faster."""
    source = case.weight
    destination = torch.empty_like(source)
    return (lambda: destination.copy_(source)), case.full_bytes, case.full_bytes


def plan(peers: dict[str, common.Peer]) -> list[tuple[str, str, Builder]]:
    """(op, impl, builder) for every measurement of one case, in table order."""
    steps: list[tuple[str, str, Builder]] = [("quantize", OURS, _ours_quantize)]
    available = {name for name, peer in peers.items() if peer.available}
    if "bitsandbytes" in available:
        steps.append(("quantize", "bitsandbytes", _bnb_quantize))
    if "torchao" in available:
        steps.append(("quantize", "torchao", _torchao_quantize))
    steps += [("dequantize", OURS, _ours_dequantize), ("dequantize", OURS_OUT, _ours_dequantize_out)]
    if "bitsandbytes" in available:
        steps.append(("dequantize", "bitsandbytes", _bnb_dequantize))
    if "torchao" in available:
        steps.append(("dequantize", "torchao", _torchao_dequantize))
    steps.append(("copy", COPY, _copy))
    return steps


# ----------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    device = common.resolve_device(args.device)
    if device.type not in loraops.build_info().get("backends", []):
        raise SystemExit(f"loraops-bench: this loraops build has no {device.type} backend")
    repeat, warmup = common.resolve_repeat_warmup(args)
    # --quick keeps to the first default shape and dtype; explicit lists are honoured.
    shapes = args.shapes or (DEFAULT_SHAPES[:1] if args.quick else DEFAULT_SHAPES)
    dtypes = args.dtype or (DEFAULT_DTYPES[:1] if args.quick else DEFAULT_DTYPES)
    # With --json - stdout carries the JSON, so the human-readable part moves to stderr.
    report = sys.stderr if args.json == "-" else sys.stdout

    machine = common.machine_info(device)
    print(common.machine_header(machine), file=report, flush=True)
    peers = find_peers() if args.peers else {}
    if peers:
        print("peers: " + ", ".join(
            f"{p.name} {p.version}" if p.available else f"{p.name} {p.note}" for p in peers.values()
        ), file=report, flush=True)

    steps = plan(peers)
    progress = common.Progress(len(shapes) * len(dtypes) * len(steps))
    rows = []
    with common.quiet_library_noise():
        for shape in shapes:
            for dtype in dtypes:
                case = Case(shape, dtype, device, peers)
                for op, impl, build in steps:
                    rows.append(_measure(case, op, impl, build, progress, repeat=repeat, warmup=warmup))
                del case  # free this case's tensors before allocating the next, larger one
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    _add_comparisons(rows, peers)
    # Sampled again after the run: a neighbour that started mid-run shows up here.
    machine["cpu_busy_after_run"] = common.cpu_busy_fraction()

    print(file=report)
    print(format_rows(rows, peers), file=report, flush=True)
    config = {
        "shapes": [list(s) for s in shapes], "dtypes": [common.dtype_name(d) for d in dtypes],
        "device": str(device), "repeat": repeat, "warmup": warmup, "quick": args.quick,
        "blocksize": BLOCKSIZE, "double_quant": True, "nested_blocksize": SCALER_BLOCKSIZE,
    }
    common.finish_run(args, NAME, machine, peers, config, rows, report)
    failed = [r for r in rows if r["impl"] in (OURS, OURS_OUT, COPY) and r["status"] != "ok"]
    return 1 if failed else 0


def _measure(case: Case, op: str, impl: str, build: Builder, progress: common.Progress,
             *, repeat: int, warmup: int) -> dict:
    row = {
        "suite": NAME, "op": op, "impl": impl,
        "shape": list(case.shape), "shape_name": common.shape_name(case.shape),
        "dtype": common.dtype_name(case.dtype), "device": str(case.device),
        "repeat": repeat, "status": "ok",
    }
    what = impl if impl.startswith(op) else f"{op} {impl}"  # "copy ceiling", not "copy copy ceiling"
    label = f"{NAME} {what} {row['shape_name']} {row['dtype']}"
    with progress.step(label) as outcome:
        try:
            fn, bytes_read, bytes_written = build(case)
            timing = common.time_callable(fn, device=case.device, repeat=repeat, warmup=warmup)
        except Exception as exc:  # a peer's API or dtype support differs: note it, keep going
            row["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            outcome.append(row["status"])
            return row
        row.update(
            warmup=timing.warmup,
            median_ms=timing.median_ms, min_ms=timing.min_ms, max_ms=timing.max_ms, mean_ms=timing.mean_ms,
            samples_ms=timing.samples_ms,
            bytes_read=bytes_read, bytes_written=bytes_written,
            gb_per_s=common.gb_per_s(bytes_read + bytes_written, timing.median_ms),
        )
        if timing.peak_memory_bytes is not None:
            row.update(peak_memory_bytes=timing.peak_memory_bytes, extra_memory_bytes=timing.extra_memory_bytes)
        outcome.append(f"{timing.median_ms:.3f} ms")
    return row


def _add_comparisons(rows: list[dict], peers: dict[str, common.Peer]) -> None:
    """Per row: the fraction of copy bandwidth it reaches, and for loraops rows how
    many times faster than each peer at the same op, shape and dtype."""
    def key(row):
        return row["shape_name"], row["dtype"]

    measured = [r for r in rows if r["status"] == "ok"]
    copy_gbps = {key(r): r["gb_per_s"] for r in measured if r["impl"] == COPY}
    peer_ms = {(r["op"], *key(r), r["impl"]): r["median_ms"] for r in measured if r["impl"] in peers}
    for row in measured:
        if row["impl"] == COPY:
            continue
        if key(row) in copy_gbps:
            row["copy_fraction"] = row["gb_per_s"] / copy_gbps[key(row)]
        if row["impl"] in (OURS, OURS_OUT):
            row["speedup_vs"] = {
                name: peer_ms[(row["op"], *key(row), name)] / row["median_ms"]
                for name in peers if (row["op"], *key(row), name) in peer_ms
            }


def format_rows(rows: list[dict], peers: dict[str, common.Peer]) -> str:
    compared = [name for name, p in peers.items() if p.available]
    headers = ["op", "impl", "shape", "dtype", "median ms", "min ms", "max ms", "GB/s", "% copy BW"]
    headers += [f"vs {name}" for name in compared]
    any_note = any(r["status"] != "ok" for r in rows)
    if any_note:
        headers.append("note")
    table: list[Optional[list[str]]] = []
    previous_case = None
    for row in rows:
        case = (row["shape_name"], row["dtype"])
        if previous_case is not None and case != previous_case:
            table.append(None)
        previous_case = case
        ok = row["status"] == "ok"
        cells = [row["op"], row["impl"], row["shape_name"], row["dtype"]]
        if ok:
            cells += [common.format_float(row[k]) for k in ("median_ms", "min_ms", "max_ms", "gb_per_s")]
            cells.append(f"{100 * row['copy_fraction']:.0f}%" if "copy_fraction" in row else "")
        else:
            cells += [""] * 5
        speedups = row.get("speedup_vs", {})
        cells += [_ratio(speedups[name]) if name in speedups else "" for name in compared]
        if any_note:
            cells.append("" if ok else row["status"])
        table.append(cells)
    legend = (
        "GB/s: (bytes read + written) / median; % copy BW: that over the copy ceiling's GB/s; "
        "vs PEER: PEER median / loraops median (higher is faster)"
    )
    return common.format_table(headers, table) + "\n" + legend


def _ratio(value: float) -> str:
    # Two decimals below 1, so a slower loraops reads 0.82x rather than 0.8x or 0.0x.
    return f"{value:.2f}x" if value < 1 else f"{value:.1f}x"


def chart(document: dict) -> Chart:
    """What ``--plot`` and ``loraops-bench plot`` draw: per op, shape and dtype,
    loraops against each peer, and loraops' share of the copy bandwidth."""
    config = document["config"]
    points = []
    for row in document["results"]:
        if row["status"] != "ok" or row["impl"] not in (OURS, OURS_OUT):
            continue
        case = {"op": row["op"], "shape": row["shape_name"], "dtype": row["dtype"]}
        if row["impl"] == OURS:  # out= times the same kernel; its ratios would repeat these
            points += [(case, RATIO, f"vs {peer}", ratio) for peer, ratio in row.get("speedup_vs", {}).items()]
        if "copy_fraction" in row:
            points.append((case, CEILING, row["impl"], row["copy_fraction"]))
    title = (f"loraops-bench nf4: NF4 blocksize {config['blocksize']}, double quantization, "
             f"medians of {config['repeat']} calls")
    return Chart(title, "share of copy bandwidth\n(copy_ of the full tensor = 100%)", points)
