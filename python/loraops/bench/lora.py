"""``loraops-bench lora``: a LoRA linear layer's forward and forward+backward,
as in training, against the frozen ``nn.Linear`` it adapts and against peft.

Shapes are ``OUTxIN``, the shape of the ``nn.Linear`` weight: ``11008x4096`` is
``in_features=4096, out_features=11008``. ``--tokens 4x512`` makes the input
``x`` of shape ``[4, 512, in_features]``; ``x`` requires grad, as a hidden
state does in training, so backward computes ``dx`` (and the adapter's grads).

Rows, for each shape, tokens and dtype:

- ``frozen nn.Linear``: the base layer alone, ``requires_grad_(False)``: the
  cost a LoRA layer adds to (timed once, it has no dropout);
- ``loraops``: ``loraops.nn.LoraLinear.from_linear`` over that Linear;
- ``peft`` (``--peers``): peft's LoRA layer wrapping the same Linear;
- ``loraops QLoRA`` (``--qlora``): ``loraops.nn.NF4Linear.from_linear``
  (NF4, blocksize 64, double quantization);
- ``peft+bitsandbytes`` (``--peers --qlora``): peft's LoRA layer over
  ``bitsandbytes.nn.Linear4bit`` (NF4, double quantization), as peft builds it
  for a model loaded in 4 bit.

Every adapter has rank r, alpha 2r, and a random (non-zero) ``lora_B``, so the
adapter path really runs. The layers of one case are timed round-robin (one
call of each per round), so a busy spell on a shared machine slows the frozen
baseline as much as what is compared with it. ``peak MiB`` is the most memory
one forward+backward needed above what was in use before it, the smallest of
3 readings (on CPU the growth of the process's peak resident set, so it
includes allocator overhead; on CUDA the allocator's peak).

Defaults keep a full run to about four minutes on 2 cores: on CPUs without
native bf16 torch's CPU GEMM in bf16/fp16 is about 2.5x slower than in fp32
(the frozen Linear and peft run it), so half-precision dtypes get 3 repeats
instead of 5 unless --repeat is given. Where the CPU has native bf16, loraops
runs bf16 base GEMMs in bf16 too (``LORAOPS_CPU_BF16=0`` keeps them fp32, to
compare); the machine line says which ran.
"""

from __future__ import annotations

import argparse
import sys
from functools import cached_property
from typing import Callable, Optional

import torch
from torch import nn

import loraops

from . import common
from .plot import CEILING, RATIO, Chart

NAME = "lora"
HELP = "LoRA/QLoRA linear forward and backward vs frozen nn.Linear, peft and peft+bitsandbytes"

DEFAULT_SHAPES = [(4096, 4096)]
DEFAULT_TOKENS = [(4, 512)]
DEFAULT_RANK = 16
DEFAULT_DTYPES = [torch.float32, torch.bfloat16]
DEFAULT_DROPOUTS = [0.0, 0.1]
DEFAULT_REPEAT = 5
DEFAULT_WARMUP = 1  # the first call absorbs page faults and bitsandbytes' torch.compile; calls are 0.3-3 s each
HALF_DTYPES = (torch.bfloat16, torch.float16)
HALF_DEFAULT_REPEAT = 3
QUICK_SHAPES = [(1024, 1024)]
QUICK_TOKENS = [(1, 256)]
QUICK_DTYPES = [torch.float32]
QUICK_REPEAT = 3
QUICK_WARMUP = 1
BLOCKSIZE = 64

FROZEN = "frozen nn.Linear"
OURS = "loraops"
OURS_QLORA = "loraops QLoRA"
PEFT = "peft"
PEFT_BNB = "peft+bitsandbytes"
OUR_IMPLS = (FROZEN, OURS, OURS_QLORA)
#: Which peer each of our adapters is compared with in the "vs peft" column.
PEER_OF = {OURS: PEFT, OURS_QLORA: PEFT_BNB}
#: fwd+bwd calls whose peak memory is read; the smallest reading is reported (see common.peak_memory_during).
PEAK_MEMORY_SAMPLES = 3
FWD = "fwd"
FWD_BWD = "fwd+bwd"
OPS = (FWD, FWD_BWD)

# The CPU targets the "targets" block checks, judged only at the layer they are set
# for: elsewhere (a smaller layer pays fixed costs) they are shown, not judged.
TARGET_SHAPE = (4096, 4096)
TARGET_TOKENS = (4, 512)
TARGET_RANK = 16
LORA_LIMIT = 1.05  # loraops fwd+bwd over frozen nn.Linear, dropout 0
LORA_DROPOUT_LIMIT = 1.08  # the same with dropout > 0 (masking the adapter's input is extra work)
QLORA_LIMIT = 1.15  # loraops QLoRA fwd+bwd over frozen nn.Linear of the same dtype
HALF_VS_FP32_LIMIT = 1.3  # bf16 loraops fwd+bwd over the fp32 frozen nn.Linear


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shapes", type=_parse_linear_shapes, default=None,
        help="comma-separated base weight shapes OUTxIN, e.g. 11008x4096 is in=4096, out=11008 "
        "(default: 4096x4096)",
    )
    parser.add_argument(
        "--tokens", type=common.parse_shapes, default=None,
        help="comma-separated leading dims of the input: 4x512 makes x [4, 512, IN] (default: 4x512)",
    )
    parser.add_argument("--rank", type=common._positive_int, default=DEFAULT_RANK,
                        help=f"adapter rank r; alpha is 2r (default: {DEFAULT_RANK})")
    parser.add_argument(
        "--dtype", type=common.parse_dtypes, default=None,
        help="comma-separated dtypes of the base weight and x: bf16, fp16, fp32 (default: fp32,bf16)",
    )
    parser.add_argument(
        "--dropout", type=_parse_dropouts, default=None,
        help="comma-separated adapter dropout probabilities (default: 0,0.1)",
    )
    parser.add_argument("--peers", action="store_true",
                        help="also time peft (and peft over bitsandbytes with --qlora), when installed")
    parser.add_argument("--qlora", action="store_true",
                        help="also time the QLoRA layers: an NF4 base weight (blocksize 64, double quantization)")
    common.add_common_arguments(
        parser, repeat_default=f"{DEFAULT_REPEAT}, {HALF_DEFAULT_REPEAT} for bf16/fp16",
        warmup_default=str(DEFAULT_WARMUP),
        quick_help=f"a smoke run: --shapes {_names(QUICK_SHAPES)} --tokens {_names(QUICK_TOKENS)} "
        f"--dtype fp32 --repeat {QUICK_REPEAT} --warmup {QUICK_WARMUP}, unless given explicitly",
    )


def _names(shapes) -> str:
    return ",".join(common.shape_name(s) for s in shapes)


def _parse_linear_shapes(text: str) -> list[tuple[int, ...]]:
    shapes = common.parse_shapes(text)
    for shape in shapes:
        if len(shape) != 2:
            raise argparse.ArgumentTypeError(f"shape '{common.shape_name(shape)}' is not OUTxIN")
    return shapes


def _parse_dropouts(text: str) -> list[float]:
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"dropout '{item}' is not a number") from None
        if not 0.0 <= value < 1.0:
            raise argparse.ArgumentTypeError(f"dropout '{item}' is not in [0, 1)")
        values.append(value)
    if not values:
        raise argparse.ArgumentTypeError("no dropout given")
    return values


# ----------------------------------------------------------------------------- peers


def find_peers(qlora: bool) -> dict[str, common.Peer]:
    """Import what is installed; anything missing or broken is recorded with the
    reason instead of raising."""
    peers = {}
    peft, peft_version = common.optional_import("peft")
    if peft is None:
        peers[PEFT] = common.Peer(PEFT, note=peft_version)
    elif not all(hasattr(peft, f) for f in ("get_peft_model", "LoraConfig")):
        peers[PEFT] = common.Peer(PEFT, peft_version, note=f"API differs in {peft_version}: no get_peft_model")
    else:
        peers[PEFT] = common.Peer(PEFT, peft_version, api={"peft": peft})
    if qlora:
        bnb, bnb_version = common.optional_import("bitsandbytes")
        version = f"peft {peft_version}, bitsandbytes {bnb_version}"
        if not peers[PEFT].available:
            peers[PEFT_BNB] = common.Peer(PEFT_BNB, note=f"peft {peers[PEFT].note}")
        elif bnb is None:
            peers[PEFT_BNB] = common.Peer(PEFT_BNB, note=f"bitsandbytes {bnb_version}")
        elif not hasattr(getattr(bnb, "nn", None), "Linear4bit"):
            peers[PEFT_BNB] = common.Peer(PEFT_BNB, version, note=f"API differs in bitsandbytes {bnb_version}: no Linear4bit")
        else:
            peers[PEFT_BNB] = common.Peer(PEFT_BNB, version, api={"peft": peft, "bitsandbytes": bnb})
    return peers


# ----------------------------------------------------------------------------- one shape, tokens and dtype


class Case:
    """The base Linear, input and output gradient for one (shape, tokens, dtype),
    built on first use and shared by every layer timed on it."""

    def __init__(self, shape: tuple[int, int], tokens: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                 rank: int, peers: dict[str, common.Peer]):
        self.out_features, self.in_features = shape
        self.shape = shape
        self.tokens = tokens
        self.dtype = dtype
        self.device = device
        self.rank = rank
        self.peers = peers
        self.generator = torch.Generator(device=device).manual_seed(0)

    def randn(self, *size: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        # Drawn in fp32 and cast, so every dtype sees the same values.
        values = torch.randn(size, generator=self.generator, device=self.device, dtype=torch.float32)
        return values.to(dtype or self.dtype)

    @cached_property
    def linear(self) -> nn.Linear:
        # Built on the meta device, so nn.Linear's own initialisation is skipped for a seeded weight.
        linear = nn.Linear(self.in_features, self.out_features, bias=False, device="meta", dtype=self.dtype)
        weight = self.randn(self.out_features, self.in_features, dtype=torch.float32) * self.in_features ** -0.5
        linear.weight = nn.Parameter(weight.to(self.dtype), requires_grad=False)
        return linear

    @cached_property
    def x(self) -> torch.Tensor:
        return self.randn(*self.tokens, self.in_features).requires_grad_(True)

    @cached_property
    def grad_out(self) -> torch.Tensor:
        return self.randn(*self.tokens, self.out_features)

    def activate(self, lora_B: torch.Tensor) -> None:
        """A random ``lora_B``: it starts at zero, and a zero adapter is not what training runs."""
        with torch.no_grad():
            lora_B.copy_(self.randn(*lora_B.shape, dtype=lora_B.dtype) * self.rank ** -0.5)


class _Holder(nn.Module):
    """The smallest model peft can wrap: one linear layer named ``proj``."""

    def __init__(self, proj: nn.Module):
        super().__init__()
        self.proj = proj


# A layer builder: (case, dropout) -> the module to time.
Builder = Callable[[Case, float], nn.Module]


def _frozen(case: Case, dropout: float) -> nn.Module:
    return case.linear


def _ours(case: Case, dropout: float) -> nn.Module:
    layer = loraops.nn.LoraLinear.from_linear(case.linear, r=case.rank, alpha=2 * case.rank, dropout=dropout)
    case.activate(layer.lora_B)
    return layer


def _ours_qlora(case: Case, dropout: float) -> nn.Module:
    layer = loraops.nn.NF4Linear.from_linear(case.linear, r=case.rank, alpha=2 * case.rank, dropout=dropout,
                                             blocksize=BLOCKSIZE, double_quant=True)
    case.activate(layer.lora_B)
    return layer


def _peft_wrap(case: Case, peft, base: nn.Module, dropout: float, loaded_in_4bit: bool = False) -> nn.Module:
    holder = _Holder(base)
    # transformers sets this on a model loaded in 4 bit; peft reads it to pick its bitsandbytes LoRA layer.
    holder.is_loaded_in_4bit = loaded_in_4bit
    config = peft.LoraConfig(r=case.rank, lora_alpha=2 * case.rank, lora_dropout=dropout, target_modules=["proj"])
    peft.get_peft_model(holder, config)  # replaces holder.proj in place
    layer = holder.proj
    case.activate(layer.lora_B["default"].weight)
    return layer


def _peft(case: Case, dropout: float) -> nn.Module:
    return _peft_wrap(case, case.peers[PEFT].api["peft"], case.linear, dropout)


def _peft_bnb(case: Case, dropout: float) -> nn.Module:
    modules = case.peers[PEFT_BNB].api
    base = modules["bitsandbytes"].nn.Linear4bit(
        case.in_features, case.out_features, bias=False, compute_dtype=case.dtype, compress_statistics=True,
        quant_type="nf4",
    )
    # Cast the still unquantized weight first, so it is quantized from this dtype as
    # transformers does (quant_state.dtype is then the dtype it dequantizes to).
    base = base.to(case.dtype)
    base.load_state_dict(case.linear.state_dict())
    base = base.to(case.device)  # moving an unquantized Params4bit quantizes it
    return _peft_wrap(case, modules["peft"], base, dropout, loaded_in_4bit=True)


BUILDERS: dict[str, Builder] = {FROZEN: _frozen, OURS: _ours, OURS_QLORA: _ours_qlora, PEFT: _peft,
                                PEFT_BNB: _peft_bnb}


def plan(dropouts: list[float], qlora: bool, peers: dict[str, common.Peer]) -> list[tuple[str, Optional[float]]]:
    """(impl, dropout) for every layer timed on one case, in table order; the
    frozen Linear has no dropout and is timed once."""
    available = {name for name, peer in peers.items() if peer.available}
    impls = [OURS] + [PEFT] * (PEFT in available)
    if qlora:
        impls += [OURS_QLORA] + [PEFT_BNB] * (PEFT_BNB in available)
    return [(FROZEN, None)] + [(impl, p) for p in dropouts for impl in impls]


# ----------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    device = common.resolve_device(args.device)
    if device.type not in loraops.build_info().get("backends", []):
        raise SystemExit(f"loraops-bench: this loraops build has no {device.type} backend")
    shapes = args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    tokens_list = args.tokens or (QUICK_TOKENS if args.quick else DEFAULT_TOKENS)
    dtypes = args.dtype or (QUICK_DTYPES if args.quick else DEFAULT_DTYPES)
    warmup = args.warmup if args.warmup is not None else (QUICK_WARMUP if args.quick else DEFAULT_WARMUP)
    repeats = {dtype: _repeat_for(dtype, args) for dtype in dtypes}
    dropouts = args.dropout or DEFAULT_DROPOUTS
    # With --json - stdout carries the JSON, so the human-readable part moves to stderr.
    report = sys.stderr if args.json == "-" else sys.stdout

    machine = common.machine_info(device)
    print(common.machine_header(machine), file=report, flush=True)
    peers = find_peers(args.qlora) if args.peers else {}
    if peers:
        print("peers: " + ", ".join(
            f"{p.name} ({p.version})" if p.available else f"{p.name} {p.note}" for p in peers.values()
        ), file=report, flush=True)

    steps = plan(dropouts, args.qlora, peers)
    progress = common.Progress(len(shapes) * len(tokens_list) * len(dtypes) * len(OPS) * len(steps))
    rows = []
    with common.quiet_library_noise():
        for shape in shapes:
            for tokens in tokens_list:
                for dtype in dtypes:
                    case = Case(shape, tokens, dtype, device, args.rank, peers)
                    layers = [Layer(case, impl, dropout, repeat=repeats[dtype], warmup=warmup)
                              for impl, dropout in steps]
                    for op in OPS:
                        rows += _measure(case, layers, op, progress, repeat=repeats[dtype], warmup=warmup)
                    del layers, case  # free this case's tensors before allocating the next
                    common.release_free_memory()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    _add_comparisons(rows)
    targets = check_targets(rows) if device.type == "cpu" else []
    # Sampled again after the run: a neighbour that started mid-run shows up here.
    machine["cpu_busy_after_run"] = common.cpu_busy_fraction()

    print(file=report)
    print(format_rows(rows), file=report)
    print(file=report)
    print(format_targets(targets, device), file=report, flush=True)
    config = {
        "shapes": [list(s) for s in shapes], "shape_layout": "[out_features, in_features]",
        "tokens": [list(t) for t in tokens_list], "rank": args.rank, "alpha": 2 * args.rank,
        "dtypes": [common.dtype_name(d) for d in dtypes],
        "dropouts": dropouts,
        "repeat": {common.dtype_name(d): repeats[d] for d in dtypes}, "warmup": warmup,
        "device": str(device), "quick": args.quick, "peers": args.peers, "qlora": args.qlora,
        "blocksize": BLOCKSIZE, "double_quant": True,
    }
    common.finish_run(args, NAME, machine, peers, config, rows, report, targets=targets)
    failed = [r for r in rows if r["impl"] in OUR_IMPLS and r["status"] != "ok"]
    return 1 if failed else 0


def _repeat_for(dtype: torch.dtype, args: argparse.Namespace) -> int:
    if args.repeat is not None:
        return args.repeat
    if args.quick:
        return QUICK_REPEAT
    return HALF_DEFAULT_REPEAT if dtype in HALF_DTYPES else DEFAULT_REPEAT


class Layer:
    """One layer timed on a case: the module, the calls that time it and its
    fwd and fwd+bwd rows."""

    def __init__(self, case: Case, impl: str, dropout: Optional[float], *, repeat: int, warmup: int):
        self.impl = impl
        self.dropout = dropout
        self.x, self.grad_out = case.x, case.grad_out
        self.rows = {op: {
            "suite": NAME, "op": op, "impl": impl,
            "shape": list(case.shape), "shape_name": common.shape_name(case.shape),
            "in_features": case.in_features, "out_features": case.out_features,
            "tokens": list(case.tokens), "tokens_name": common.shape_name(case.tokens),
            "dtype": common.dtype_name(case.dtype), "dropout": dropout,
            "rank": None if impl == FROZEN else case.rank, "device": str(case.device),
            "repeat": repeat, "warmup": warmup, "status": "ok",
        } for op in OPS}
        self.error: Optional[str] = None
        try:
            self.module = BUILDERS[impl](case, 0.0 if dropout is None else dropout)
        except Exception as exc:  # a peer's API differs or it rejects this dtype: note it, keep going
            self.error = _failure(exc)
            self.grad_holders = []
            return
        self.module.train()  # dropout is only applied in training mode
        self.grad_holders = [self.x] + [p for p in self.module.parameters() if p.requires_grad]

    def label(self, op: str) -> str:
        row = self.rows[op]
        where = f"{row['shape_name']} {row['tokens_name']} {row['dtype']}"
        return f"{NAME} {op} {self.impl} {where}" + ("" if self.dropout is None else f" dropout {self.dropout:g}")

    def clear_grads(self) -> None:
        for tensor in self.grad_holders:
            tensor.grad = None

    def forward(self):
        return self.module(self.x)  # with grad enabled, as in training: the graph is built, then dropped

    def forward_backward(self) -> None:
        self.module(self.x).backward(self.grad_out)

    def step(self) -> None:
        self.clear_grads()  # so backward allocates its gradients each time, as a training step does
        self.forward_backward()


def _measure(case: Case, layers: list[Layer], op: str, progress: common.Progress,
             *, repeat: int, warmup: int) -> list[dict]:
    """One op of every layer of a case, timed round-robin (``common.time_interleaved``)
    so that a busy spell on a shared machine slows the frozen baseline as much as
    the layers compared with it; then each fwd+bwd's peak memory on its own."""
    fns = {layer.label(op): (layer.forward if op == FWD else layer.step) for layer in layers if layer.error is None}
    if fns:
        progress.stream.write(f"{NAME} {op} {common.shape_name(case.shape)} {common.shape_name(case.tokens)} "
                              f"{common.dtype_name(case.dtype)}: {len(fns)} layers round-robin, "
                              f"{warmup} warm-up + {repeat} timed calls each ...\n")
        progress.stream.flush()
    timings = common.time_interleaved(fns, device=case.device, repeat=repeat, warmup=warmup)
    for layer in layers:
        layer.clear_grads()  # the last timed step left them
    rows = []
    for layer in layers:
        rows.append(layer.rows[op])
        with progress.step(layer.label(op)) as outcome:
            outcome.append(_record(layer, op, layer.error or timings[layer.label(op)], case.device))
    return rows


def _record(layer: Layer, op: str, timing, device: torch.device) -> str:
    """Fill the layer's row for ``op`` from its timing, or the reason there is
    none (a build failure's text, or the exception a call raised); measure a
    fwd+bwd's peak memory. Returns the text for the progress line."""
    row = layer.rows[op]
    if not isinstance(timing, common.Timing):
        row["status"] = timing if isinstance(timing, str) else _failure(timing)
        return row["status"]
    row.update(median_ms=timing.median_ms, min_ms=timing.min_ms, max_ms=timing.max_ms, mean_ms=timing.mean_ms,
               samples_ms=timing.samples_ms)
    text = f"{timing.median_ms:.1f} ms"
    if op == FWD_BWD:
        try:
            peak = common.peak_memory_during(_without_grads(layer), device, samples=PEAK_MEMORY_SAMPLES)
        except Exception as exc:
            row["status"] = _failure(exc)
            return row["status"]
        finally:
            layer.clear_grads()
        if peak is not None:
            row["peak_memory_bytes"] = peak
            text += f", peak {peak / 2**20:.1f} MiB"
    return text


def _without_grads(layer: Layer) -> Callable[[], None]:
    """fwd+bwd starting from no gradients, as each timed step does; the first
    clearing happens before any reading starts, so freeing gradients left from
    earlier calls does not make room that hides this call's own."""
    layer.clear_grads()

    def forward_backward():
        layer.forward_backward()
        # The peak already counted these gradients; freeing them here starts the next sample as this one started.
        layer.clear_grads()

    return forward_backward


def _failure(exc: Exception) -> str:
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"failed: {type(exc).__name__}: {message}"


def _case_key(row: dict) -> tuple:
    return row["shape_name"], row["tokens_name"], row["dtype"]


def _add_comparisons(rows: list[dict]) -> None:
    """Per timed layer: its median over the frozen Linear's (same case and op),
    and for our adapters the matching peer's median over ours."""
    measured = [r for r in rows if r["status"] == "ok"]
    frozen_ms = {(*_case_key(r), r["op"]): r["median_ms"] for r in measured if r["impl"] == FROZEN}
    peer_ms = {(*_case_key(r), r["op"], r["dropout"], r["impl"]): r["median_ms"]
               for r in measured if r["impl"] in PEER_OF.values()}
    for row in measured:
        if row["impl"] == FROZEN:
            continue
        frozen = frozen_ms.get((*_case_key(row), row["op"]))
        if frozen is not None:
            row["vs_frozen"] = row["median_ms"] / frozen
        peer = PEER_OF.get(row["impl"])
        peer_median = peer_ms.get((*_case_key(row), row["op"], row["dropout"], peer))
        if peer_median is not None:
            row["speedup_vs"] = {peer: peer_median / row["median_ms"]}


def format_rows(rows: list[dict]) -> str:
    headers = ["op", "impl", "shape", "tokens", "dtype", "dropout", "median ms", "min ms", "max ms", "peak MiB",
               "vs frozen", "vs peft"]
    any_note = any(r["status"] != "ok" for r in rows)
    if any_note:
        headers.append("note")
    table: list[Optional[list[str]]] = []
    previous_group = None
    for row in rows:  # measured, so listed, op by op within each case
        group = (_case_key(row), row["op"])
        if previous_group is not None and group != previous_group:
            table.append(None)
        previous_group = group
        ok = row["status"] == "ok"
        cells = [row["op"], row["impl"], row["shape_name"], row["tokens_name"], row["dtype"],
                 "-" if row["dropout"] is None else f"{row['dropout']:g}"]
        if ok:
            cells += [common.format_float(row[k]) for k in ("median_ms", "min_ms", "max_ms")]
            peak = row.get("peak_memory_bytes")
            cells.append("" if peak is None else common.format_float(peak / 2**20))
            cells.append(f"{row['vs_frozen']:.2f}x" if "vs_frozen" in row else "")
            speedups = row.get("speedup_vs", {})
            cells.append(f"{next(iter(speedups.values())):.2f}x" if speedups else "")
        else:
            cells += [""] * 6
        if any_note:
            cells.append("" if ok else row["status"])
        table.append(cells)
    legend = (
        "shape: OUTxIN of the base weight; tokens: leading dims of x [.., IN]; peak MiB: most extra memory one "
        "fwd+bwd needed\n"
        "vs frozen: median / frozen nn.Linear median, same dtype (lower is better; the adapter's overhead)\n"
        f"vs peft: peer median / ours (higher is faster): {OURS} vs {PEFT}, {OURS_QLORA} vs {PEFT_BNB}"
    )
    return common.format_table(headers, table) + "\n" + legend


# ----------------------------------------------------------------------------- targets


def check_targets(rows: list[dict]) -> list[dict]:
    """The CPU targets, one entry per case they apply to: fwd+bwd time relative
    to the frozen Linear, and peak memory relative to peft; ``met`` is ``None``
    away from the target shape."""
    fwd_bwd = [r for r in rows if r["op"] == FWD_BWD and r["status"] == "ok"]
    by_key = {(*_case_key(r), r["impl"], r["dropout"]): r for r in fwd_bwd}
    # One list per kind of target, so the block reads kind by kind.
    lora, qlora, half, memory = [], [], [], []

    def entry(target, row, value, limit, unit):
        where = f"{row['shape_name']} {row['tokens_name']} r={row['rank']} {row['dtype']} dropout {row['dropout']:g}"
        return {"target": target, "case": where, "value": value, "limit": limit, "unit": unit,
                "met": value <= limit if _at_target_shape(row) else None}

    for row in fwd_bwd:
        if row["impl"] == OURS and "vs_frozen" in row:
            limit = LORA_LIMIT if row["dropout"] == 0 else LORA_DROPOUT_LIMIT
            lora.append(entry(f"LoRA fwd+bwd <= {limit}x frozen", row, row["vs_frozen"], limit, "x"))
        if row["impl"] == OURS_QLORA and "vs_frozen" in row:
            qlora.append(entry(f"QLoRA fwd+bwd <= {QLORA_LIMIT}x frozen", row, row["vs_frozen"], QLORA_LIMIT, "x"))
        if row["impl"] == OURS and row["dtype"] == "bf16":
            fp32_frozen = by_key.get((row["shape_name"], row["tokens_name"], "fp32", FROZEN, None))
            if fp32_frozen is not None:
                half.append(entry(f"bf16 LoRA fwd+bwd <= {HALF_VS_FP32_LIMIT}x fp32 frozen", row,
                                  row["median_ms"] / fp32_frozen["median_ms"], HALF_VS_FP32_LIMIT, "x"))
        peer = by_key.get((*_case_key(row), PEER_OF.get(row["impl"]), row["dropout"]))
        if peer is not None and row.get("peak_memory_bytes") is not None \
                and peer.get("peak_memory_bytes") is not None:
            memory.append(entry(f"{row['impl']} peak memory <= {peer['impl']}", row,
                                row["peak_memory_bytes"] / 2**20, peer["peak_memory_bytes"] / 2**20, "MiB"))
    return lora + qlora + half + memory


def _at_target_shape(row: dict) -> bool:
    return (row["shape_name"], row["tokens_name"], row["rank"]) == (
        common.shape_name(TARGET_SHAPE), common.shape_name(TARGET_TOKENS), TARGET_RANK)


def format_targets(targets: list[dict], device: torch.device) -> str:
    return common.format_targets(
        targets, device, judged_at=f"{common.shape_name(TARGET_SHAPE)}, tokens {common.shape_name(TARGET_TOKENS)}, "
        f"r={TARGET_RANK} only")


def chart(document: dict) -> Chart:
    """What ``--plot`` and ``loraops-bench plot`` draw: per case, loraops and
    loraops QLoRA against their peft peer, and their speed as a share of the
    frozen nn.Linear's (the adapter's cost: 100% = free)."""
    config = document["config"]
    points = []
    for row in document["results"]:
        if row["status"] != "ok" or row["impl"] not in (OURS, OURS_QLORA):
            continue
        case = {"op": row["op"], "shape": row["shape_name"], "tokens": f"x {row['tokens_name']}",
                "dtype": row["dtype"], "dropout": f"dropout {row['dropout']:g}"}
        points += [(case, RATIO, f"{row['impl']} vs {peer}", ratio)
                   for peer, ratio in row.get("speedup_vs", {}).items()]
        if "vs_frozen" in row:
            points.append((case, CEILING, row["impl"], 1 / row["vs_frozen"]))
    repeats = ", ".join(f"{n} calls ({dtype})" for dtype, n in config["repeat"].items())
    title = f"loraops-bench lora: r={config['rank']}, alpha={config['alpha']}, medians of {repeats}"
    return Chart(title, "speed as a share of the\nfrozen nn.Linear's (100% = free)", points)
