"""A cost model of loraops' Ascend C kernels on an Atlas A2 (910B-class) NPU.

No NPU is reachable, so the CPU emulation (``kernels/ascend/sim``) counts what
each kernel launch does and this module turns the counts into a predicted time
with public figures of the part. A prediction is a **lower bound** (a
roofline: the slowest of memory, cube and vector work, as if each ran at its
peak and they overlapped perfectly, plus a fixed cost per launch): a real
kernel is at least this slow, never a measured time. Re-reads of operands
(tiled GEMMs) are taken as L2 hits where the launch's buffers fit in L2, and
L2's own bandwidth is not bounded: that is where the bound is most optimistic.

Launch log format
-----------------
``torch.ops.loraops._ascend_sim_launch_log(bool reset) -> str`` returns a JSON
array with one object per kernel launch since the last reset, in launch order.
Every key is required and no other key is accepted::

    {
      "kernel": str,              # the kernel's name, e.g. "loraops_nf4_dequantize_bf16"
      "block_dim": int,           # blocks launched (>= 1)
      "core_type": "aiv" | "aic" | "mix",
      "gm_read_bytes": int,       # bytes read from global memory, all cores together
      "gm_write_bytes": int,      # bytes written to global memory, all cores together
      "gm_buffer_bytes": int,     # bytes of the global-memory buffers the launch was given
      "mmad_fractals": {          # fractal-sized Mmad steps, summed over cores:
        "half": int,              #   16x16x16 MACs each
        "bf16": int,              #   16x16x16 MACs each
        "float": int              #   16x8x16 MACs each
      },
      "vector_repeats": [int],    # 256-byte vector repeats issued, one entry per vector core used
      "cube_cores_busy": int,     # cube cores that issued any Mmad
      "flag_waits": int           # cross-core / pipe flag waits (recorded, not timed)
    }

Integers are non-negative (booleans are not integers here). The model:

- HBM: the bytes that must cross HBM over ``hbm_bytes_per_s``: where the
  launch's buffers (``gm_buffer_bytes``) fit in L2, each of their bytes once
  (re-reads are L2 hits, whose bandwidth the model does not bound), else every
  request (``gm_read_bytes + gm_write_bytes``). The requests themselves are
  reported as the launch's GM traffic, against its minimum;
- cube: fractal MACs over ``min(cube_cores_busy, ai_cores)`` cores at
  ``cube_macs_per_cycle_half`` (half, bf16) or ``cube_macs_per_cycle_float``
  (float, a quarter of that) per cycle;
- vector: the busiest vector core's repeats at ``vector_bytes_per_cycle / 256``
  repeats per cycle; blocks beyond the SKU's vector cores run in later waves on
  the same cores (block i on core i mod vector_cores), so they serialise;
- plus ``launch_overhead_s`` per launch.

``time = max(HBM, cube, vector) + launch``; the bound is whichever term is largest.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

#: The label every printed or saved figure of this model carries.
ESTIMATE_LABEL = "model estimate (Atlas A2, not measured)"

REPEAT_BYTES = 256  # one vector repeat: 8 data blocks of 32 B [ASCEND-C-API.md section 8]
HALF_FRACTAL_MACS = 16 * 16 * 16
FLOAT_FRACTAL_MACS = 16 * 8 * 16

# ----------------------------------------------------------------------------- figures

_FACT_SHEET = ("CANN's Ascend C programming guide, hardware specifications of NPU architecture 2201 "
               "(hiascend.com documentation)")
_SMI = ("npu-smi info -t common on a 910B1 (64 GB): 'Aicore Count: 24', 'Aicore Freq(MHZ): 1800', quoted in "
        "https://arthurchiao.art/blog/gpu-advanced-notes-2-zh/ section 3.3")

#: One source string per figure of the default part.
DEFAULT_SOURCES = {
    "sku": "assumption: Atlas 800T A2 server, Ascend 910B2-class NPU (64 GB HBM2e), the usual A2 training part",
    "ai_cores": ("24 AI cores for 910B2: HAMi vNPU device config (github.com/Project-HAMi/HAMi, chipName 910B2, "
                 "aiCore: 24); " + _SMI + "; 910B1/B2 24, B3/B4 20 per " + _FACT_SHEET),
    "vector_cores": "2 AIV per AI core on Atlas A2 (1 AIC + 2 AIV): " + _FACT_SHEET + "; 910B2 24/48",
    "clock_hz": (_SMI + ". Check: 24 x 4096 MACs x 2 x 1.8 GHz = 354 TFLOPS fp16, the 353.89 TFLOPS some public "
                 "roofline tables list for 910B2 and inside the 280-376 TFLOPS A2 parts are sold at; "
                 "fact sheet: 1.6-1.8 GHz"),
    "hbm_bytes_per_s": ("assumption 1.6e12: public claims span 1.2-1.6 TB/s (" + _FACT_SHEET + "); one public spec "
                        "table lists 910B1 1.6 TB/s, 910B2 1.5 TB/s; 4 HBM2E stacks at 3.2 Gb/s/pin give 1.64 TB/s "
                        "(Micron HBM2E: 410-461 GB/s per placement, micron.com/products/ultra-bandwidth-solutions). "
                        "The top of the range keeps the prediction a lower bound; --figure hbm_bytes_per_s=1.5e12 "
                        "for the more cautious figure"),
    "cube_macs_per_cycle_half": ("16x16x16 fractal per cycle per AI core = 4096 MACs (half/bf16): Hot Chips 31 "
                                 "DaVinci talk (HC31_1.11_Huawei.Davinci.HengLiao) and " + _FACT_SHEET),
    "cube_macs_per_cycle_float": "fp32 cube throughput 1/4 of half = 1024 MACs/cycle: " + _FACT_SHEET,
    "vector_bytes_per_cycle": ("256 B (one repeat) per cycle per AIV, the programming guide's usual assumption: "
                               + _FACT_SHEET),
    "launch_overhead_s": ("assumption: 3 us per kernel launch on one stream (device-side dispatch and block start; "
                          "the host enqueue overlaps earlier kernels); no public A2 figure found, so the low end of "
                          "'a few us' keeps the prediction a lower bound; override with "
                          "--figure launch_overhead_s=..."),
    "l2_bytes": ("192 MB L2 on 910B-class parts (the SoC configuration CANN ships for Ascend910B, as quoted in "
                 "public repositories); " + _FACT_SHEET + ". The model lets a launch whose buffers fit in it read "
                 "each byte from HBM once, re-reads served by L2 (whose bandwidth it does not bound)"),
}


@dataclass(frozen=True)
class Figures:
    """The part's figures, each with the source it comes from (``sources[name]``)."""

    sku: str = "Ascend 910B2 (Atlas 800T A2)"
    ai_cores: int = 24
    vector_cores: int = 48
    clock_hz: float = 1.8e9
    hbm_bytes_per_s: float = 1.6e12
    cube_macs_per_cycle_half: int = 4096
    cube_macs_per_cycle_float: int = 1024
    vector_bytes_per_cycle: int = 256
    launch_overhead_s: float = 3e-6
    l2_bytes: int = 192 * 2**20
    sources: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SOURCES), compare=False)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "sources"]

    @property
    def cube_peak_flops_half(self) -> float:
        return self.ai_cores * self.cube_macs_per_cycle_half * 2 * self.clock_hz

    @property
    def cube_peak_flops_float(self) -> float:
        return self.ai_cores * self.cube_macs_per_cycle_float * 2 * self.clock_hz

    def with_overrides(self, overrides: Mapping[str, object], source: str) -> "Figures":
        """A copy with ``overrides`` (name -> value, or name -> {"value", "source"}).
        Unknown names and values of the wrong kind raise ``ValueError``."""
        values, sources = {}, dict(self.sources)
        for name, raw in overrides.items():
            if name not in self.names():
                raise ValueError(f"unknown figure '{name}'; known: {', '.join(self.names())}")
            why = source
            if isinstance(raw, Mapping):
                if set(raw) - {"value", "source"} or "value" not in raw:
                    raise ValueError(f"figure '{name}': give a value or {{\"value\": ..., \"source\": ...}}")
                why = str(raw.get("source", source))
                raw = raw["value"]
            values[name] = _figure_value(name, raw)
            sources[name] = why
        return dataclasses.replace(self, **values, sources=sources)

    def as_dict(self) -> dict:
        return {name: {"value": getattr(self, name), "source": self.sources.get(name, "")} for name in self.names()}


def _figure_value(name: str, raw: object):
    if name == "sku":
        return str(raw)
    try:
        value = float(raw) if isinstance(raw, (str, int, float)) and not isinstance(raw, bool) else None
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise ValueError(f"figure '{name}' must be a positive number, got {raw!r}")
    if name in ("ai_cores", "vector_cores", "cube_macs_per_cycle_half", "cube_macs_per_cycle_float",
                "vector_bytes_per_cycle"):
        if value != int(value):
            raise ValueError(f"figure '{name}' must be a whole number, got {raw!r}")
        return int(value)
    return value


def load_figures(json_path: Optional[str] = None, assignments: Sequence[str] = ()) -> Figures:
    """The default figures, then a JSON file's overrides, then ``name=value`` ones."""
    figures = Figures()
    if json_path:
        with open(json_path) as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"{json_path}: expected a JSON object of figure names")
        figures = figures.with_overrides(data, f"user override ({json_path})")
    parsed = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--figure '{item}' is not name=value")
        parsed[name.strip()] = value.strip()
    return figures.with_overrides(parsed, "user override (--figure)") if parsed else figures


# ----------------------------------------------------------------------------- launch records

_CORE_TYPES = ("aiv", "aic", "mix")
_FRACTAL_KINDS = ("half", "bf16", "float")
_KEYS = ("kernel", "block_dim", "core_type", "gm_read_bytes", "gm_write_bytes", "gm_buffer_bytes", "mmad_fractals",
         "vector_repeats", "cube_cores_busy", "flag_waits")


@dataclass(frozen=True)
class LaunchRecord:
    """One kernel launch's counts (see the module docstring). ``launches`` is not
    part of the JSON: it is how many launches a record made by ``merge`` stands for."""

    kernel: str
    block_dim: int
    core_type: str
    gm_read_bytes: int
    gm_write_bytes: int
    gm_buffer_bytes: int
    mmad_fractals: Mapping[str, int]
    vector_repeats: tuple
    cube_cores_busy: int
    flag_waits: int
    launches: int = 1

    @property
    def gm_bytes(self) -> int:
        return self.gm_read_bytes + self.gm_write_bytes


class LaunchLogError(ValueError):
    """A launch log that does not follow the format in this module's docstring."""


def _count(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LaunchLogError(f"{where} must be a non-negative integer, got {value!r}")
    return value


def parse_record(obj: object, index: int = 0) -> LaunchRecord:
    where = f"launch record {index}"
    if not isinstance(obj, dict):
        raise LaunchLogError(f"{where} must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in _KEYS if k not in obj]
    unknown = sorted(set(obj) - set(_KEYS))
    if missing or unknown:
        raise LaunchLogError(f"{where}: " + "; ".join(
            ([f"missing key(s) {', '.join(missing)}"] if missing else [])
            + ([f"unknown key(s) {', '.join(unknown)}"] if unknown else [])))
    if not isinstance(obj["kernel"], str) or not obj["kernel"]:
        raise LaunchLogError(f"{where}: kernel must be a non-empty string, got {obj['kernel']!r}")
    where = f"{where} ({obj['kernel']})"
    if obj["core_type"] not in _CORE_TYPES:
        raise LaunchLogError(f"{where}: core_type must be one of {', '.join(_CORE_TYPES)}, got {obj['core_type']!r}")
    fractals = obj["mmad_fractals"]
    if not isinstance(fractals, dict) or set(fractals) != set(_FRACTAL_KINDS):
        raise LaunchLogError(f"{where}: mmad_fractals must be an object with exactly the keys half, bf16, float, "
                             f"got {fractals!r}")
    repeats = obj["vector_repeats"]
    if not isinstance(repeats, list):
        raise LaunchLogError(f"{where}: vector_repeats must be a list of integers, got {repeats!r}")
    record = LaunchRecord(
        kernel=obj["kernel"],
        block_dim=_count(obj["block_dim"], f"{where}: block_dim"),
        core_type=obj["core_type"],
        gm_read_bytes=_count(obj["gm_read_bytes"], f"{where}: gm_read_bytes"),
        gm_write_bytes=_count(obj["gm_write_bytes"], f"{where}: gm_write_bytes"),
        gm_buffer_bytes=_count(obj["gm_buffer_bytes"], f"{where}: gm_buffer_bytes"),
        mmad_fractals={k: _count(fractals[k], f"{where}: mmad_fractals.{k}") for k in _FRACTAL_KINDS},
        vector_repeats=tuple(_count(r, f"{where}: vector_repeats[{i}]") for i, r in enumerate(repeats)),
        cube_cores_busy=_count(obj["cube_cores_busy"], f"{where}: cube_cores_busy"),
        flag_waits=_count(obj["flag_waits"], f"{where}: flag_waits"),
    )
    if record.block_dim < 1:
        raise LaunchLogError(f"{where}: block_dim must be at least 1")
    if any(record.mmad_fractals.values()) and record.cube_cores_busy == 0:
        raise LaunchLogError(f"{where}: Mmad fractals counted but cube_cores_busy is 0")
    return record


def parse_launch_log(text: str) -> list[LaunchRecord]:
    """The records of a launch log's JSON text; ``LaunchLogError`` says what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LaunchLogError(f"launch log is not JSON: {exc}") from None
    if not isinstance(data, list):
        raise LaunchLogError(f"launch log must be a JSON array of launch records, got {type(data).__name__}")
    return [parse_record(obj, i) for i, obj in enumerate(data)]


# ----------------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class Prediction:
    """A lower bound on one launch's (or a sequence's) time, in seconds, and its parts."""

    time_s: float
    bound: str  # "HBM", "cube", "vector" or "launch"
    hbm_s: float
    cube_s: float
    vector_s: float
    launch_s: float
    gm_bytes: int = 0
    launches: int = 1


def _bound(hbm: float, cube: float, vector: float, launch: float) -> str:
    terms = {"HBM": hbm, "cube": cube, "vector": vector, "launch": launch}
    return max(terms, key=terms.get)


def hbm_bytes(record: LaunchRecord, figures: Figures) -> int:
    """The bytes a launch must move to or from HBM at least: each byte of its
    buffers once where they fit in L2 (re-reads hit L2), else every request.
    A merged record (``launches`` > 1) is taken as that many like launches."""
    if record.gm_buffer_bytes <= figures.l2_bytes * record.launches:
        return min(record.gm_bytes, record.gm_buffer_bytes)
    return record.gm_bytes


def predict(record: LaunchRecord, figures: Figures) -> Prediction:
    """The model of the module docstring for one launch (a lower bound)."""
    hbm = hbm_bytes(record, figures) / figures.hbm_bytes_per_s
    fr = record.mmad_fractals
    cube = 0.0
    if any(fr.values()):
        cores = min(max(record.cube_cores_busy, 1), figures.ai_cores)
        cycles = ((fr["half"] + fr["bf16"]) * HALF_FRACTAL_MACS / figures.cube_macs_per_cycle_half
                  + fr["float"] * FLOAT_FRACTAL_MACS / figures.cube_macs_per_cycle_float)
        cube = cycles / cores / figures.clock_hz
    vector = 0.0
    if record.vector_repeats:
        # Blocks beyond the physical vector cores run in later waves: block i on core i mod P.
        per_core = [0] * min(len(record.vector_repeats), figures.vector_cores)
        for i, repeats in enumerate(record.vector_repeats):
            per_core[i % figures.vector_cores] += repeats
        repeats_per_cycle = figures.vector_bytes_per_cycle / REPEAT_BYTES
        vector = max(per_core) / repeats_per_cycle / figures.clock_hz
    launch = record.launches * figures.launch_overhead_s
    return Prediction(time_s=max(hbm, cube, vector) + launch, bound=_bound(hbm, cube, vector, launch),
                      hbm_s=hbm, cube_s=cube, vector_s=vector, launch_s=launch, gm_bytes=record.gm_bytes,
                      launches=record.launches)


def op_prediction(records: Iterable[LaunchRecord], figures: Figures) -> Prediction:
    """One op call: its launches run one after another on one stream, so the
    times add up. The parts are sums too; the bound is the largest summed part."""
    parts = [predict(r, figures) for r in records]
    hbm, cube, vector, launch = (sum(getattr(p, a) for p in parts) for a in ("hbm_s", "cube_s", "vector_s", "launch_s"))
    return Prediction(time_s=sum(p.time_s for p in parts), bound=_bound(hbm, cube, vector, launch) if parts else "-",
                      hbm_s=hbm, cube_s=cube, vector_s=vector, launch_s=launch,
                      gm_bytes=sum(p.gm_bytes for p in parts), launches=sum(p.launches for p in parts))


def merge(records: Iterable[LaunchRecord]) -> list[LaunchRecord]:
    """One record per kernel name (first-seen order) with the counts of all its
    launches summed (vector repeats per core index), ``launches`` their number."""
    merged: dict[str, LaunchRecord] = {}
    for r in records:
        m = merged.get(r.kernel)
        if m is None:
            merged[r.kernel] = r
            continue
        width = max(len(m.vector_repeats), len(r.vector_repeats))
        pad = lambda t: tuple(t) + (0,) * (width - len(t))  # noqa: E731
        merged[r.kernel] = dataclasses.replace(
            m, block_dim=max(m.block_dim, r.block_dim), gm_read_bytes=m.gm_read_bytes + r.gm_read_bytes,
            gm_write_bytes=m.gm_write_bytes + r.gm_write_bytes, gm_buffer_bytes=m.gm_buffer_bytes + r.gm_buffer_bytes,
            mmad_fractals={k: m.mmad_fractals[k] + r.mmad_fractals[k] for k in _FRACTAL_KINDS},
            vector_repeats=tuple(a + b for a, b in zip(pad(m.vector_repeats), pad(r.vector_repeats))),
            cube_cores_busy=max(m.cube_cores_busy, r.cube_cores_busy), flag_waits=m.flag_waits + r.flag_waits,
            launches=m.launches + r.launches)
    return list(merged.values())


def project(record: LaunchRecord, figures: Figures, *, factor: float = 1.0,
            launches: Optional[int] = None) -> LaunchRecord:
    """``record`` as the NPU would run it: its counts times ``factor`` (a linear
    scale-up from an emulated run on a smaller shape), its work spread over the
    SKU's cores where the emulation ran on fewer (evenly: the host tiling splits
    these shapes over every core; even spreading is the lower bound), and
    ``launches`` launches (the NPU's chunking, which the emulation's does not match)."""
    scale = lambda v: int(round(v * factor))  # noqa: E731
    repeats = record.vector_repeats
    if repeats and len(repeats) < figures.vector_cores:
        total = sum(repeats) * factor
        repeats = (math.ceil(total / figures.vector_cores),) * figures.vector_cores
    else:
        repeats = tuple(scale(r) for r in repeats)
    busy, cube_work = record.cube_cores_busy, any(record.mmad_fractals.values())
    if cube_work:
        busy = max(busy, figures.ai_cores)
    return dataclasses.replace(
        record, gm_read_bytes=scale(record.gm_read_bytes), gm_write_bytes=scale(record.gm_write_bytes),
        gm_buffer_bytes=scale(record.gm_buffer_bytes),
        mmad_fractals={k: scale(v) for k, v in record.mmad_fractals.items()}, vector_repeats=repeats,
        cube_cores_busy=busy, block_dim=max(record.block_dim, len(repeats), busy if cube_work else 0),
        launches=record.launches if launches is None else launches)


# ----------------------------------------------------------------------------- analytic floors and peers

BF16 = 2
FP32 = 4


@dataclass(frozen=True)
class Kernel:
    """A kernel described analytically: bytes it moves over GM and cube flops."""

    name: str
    gm_bytes: int
    flops: float = 0.0
    float_cube: bool = False  # fp32 operands: the cube at a quarter rate

    def predict(self, figures: Figures, *, overhead: bool = True) -> Prediction:
        hbm = self.gm_bytes / figures.hbm_bytes_per_s
        peak = figures.cube_peak_flops_float if self.float_cube else figures.cube_peak_flops_half
        cube = self.flops / peak
        launch = figures.launch_overhead_s if overhead else 0.0
        return Prediction(time_s=max(hbm, cube) + launch, bound=_bound(hbm, cube, 0.0, launch), hbm_s=hbm,
                          cube_s=cube, vector_s=0.0, launch_s=launch, gm_bytes=self.gm_bytes, launches=int(overhead))


def gemm(name: str, m: int, n: int, k: int, esize: int = BF16) -> Kernel:
    """c [m, n] = a [m, k] b [k, n]: 2mnk flops, each operand read once, c written once."""
    return Kernel(name, (m * k + k * n + m * n) * esize, 2.0 * m * n * k, float_cube=esize == FP32)


def elementwise(name: str, elements: int, reads: int, writes: int, esize: int = BF16) -> Kernel:
    return Kernel(name, elements * (reads + writes) * esize)


def base_gemms(m: int, n: int, k: int) -> list[Kernel]:
    """The frozen base GEMMs of a LoRA layer step, bf16: forward y = x W^T and dx = dy W
    (W frozen: no dW)."""
    return [gemm("base fwd x W^T", m, n, k), gemm("base dx dy W", m, k, n)]


def sequence_prediction(kernels: Sequence[Kernel], figures: Figures, *, overhead: bool = True) -> Prediction:
    parts = [kern.predict(figures, overhead=overhead) for kern in kernels]
    hbm, cube, launch = (sum(getattr(p, a) for p in parts) for a in ("hbm_s", "cube_s", "launch_s"))
    return Prediction(time_s=sum(p.time_s for p in parts), bound=_bound(hbm, cube, 0.0, launch), hbm_s=hbm,
                      cube_s=cube, vector_s=0.0, launch_s=launch, gm_bytes=sum(p.gm_bytes for p in parts),
                      launches=sum(p.launches for p in parts))


def base_gemm_floor(m: int, n: int, k: int, figures: Figures) -> Prediction:
    """"The frozen base GEMMs alone": forward and dx, each at max(cube peak, HBM), no launch cost."""
    return sequence_prediction(base_gemms(m, n, k), figures, overhead=False)


def peft_lora_kernels(m: int, n: int, k: int, r: int) -> list[Kernel]:
    """peft's LoRA adapter in bf16 on the NPU, one kernel per step, each through GM
    (the base GEMMs excluded): forward x A^T, (x A^T) B^T, add into y; backward
    dy B, (dy B) A, dA = (dy B)^T x, dB = dy^T (x A^T), add into dx. The scaling
    (alpha / r) is taken as folded into one of them."""
    return [
        gemm("peft x A^T", m, r, k), gemm("peft (xA^T) B^T", m, n, r), elementwise("peft y += lora", m * n, 2, 1),
        gemm("peft dy B", m, r, n), gemm("peft (dyB) A", m, k, r), gemm("peft dA", r, k, m),
        gemm("peft dB", n, r, m), elementwise("peft dx += lora", m * k, 2, 1),
    ]


def nf4_bytes(n: int, k: int, blocksize: int = 64, nested_blocksize: int = 256) -> int:
    """NF4 storage with double quantization: 4-bit codes, uint8 absmax per block,
    fp32 absmax per nested block, the 256-entry fp32 code and an fp32 offset."""
    elements = n * k
    blocks = math.ceil(elements / blocksize)
    return elements // 2 + blocks + math.ceil(blocks / nested_blocksize) * FP32 + 256 * FP32 + FP32


def nf4_dequantize_kernel(n: int, k: int, blocksize: int = 64, name: str = "NF4 dequantize to bf16") -> Kernel:
    """Read the NF4 storage once, write the bf16 weight once."""
    return Kernel(name, nf4_bytes(n, k, blocksize) + n * k * BF16)


def nf4_dequantize_floor(n: int, k: int, figures: Figures, blocksize: int = 64) -> Prediction:
    """The HBM floor of dequantizing [n, k] NF4 to bf16: bytes read + written over bandwidth."""
    return nf4_dequantize_kernel(n, k, blocksize).predict(figures, overhead=False)


def peft_qlora_kernels(m: int, n: int, k: int, r: int, blocksize: int = 64) -> list[Kernel]:
    """peft over bitsandbytes on the NPU: the whole weight dequantized to bf16
    before the forward GEMM and again before the dx GEMM (which read it back),
    plus peft's LoRA kernels. The base GEMMs themselves are listed too."""
    return ([nf4_dequantize_kernel(n, k, blocksize, "dequantize W (fwd)"), gemm("base fwd x W^T", m, n, k),
             nf4_dequantize_kernel(n, k, blocksize, "dequantize W (bwd)"), gemm("base dx dy W", m, k, n)]
            + peft_lora_kernels(m, n, k, r))


def peft_lora_step(m: int, n: int, k: int, r: int) -> list[Kernel]:
    """The whole unfused step: base GEMMs (forward, dx) and peft's LoRA kernels."""
    return base_gemms(m, n, k) + peft_lora_kernels(m, n, k, r)


__all__ = [
    "ESTIMATE_LABEL", "Figures", "DEFAULT_SOURCES", "load_figures", "LaunchRecord", "LaunchLogError",
    "parse_record", "parse_launch_log", "Prediction", "predict", "op_prediction", "merge", "project", "Kernel",
    "gemm", "elementwise", "base_gemms", "base_gemm_floor", "sequence_prediction", "peft_lora_kernels",
    "peft_lora_step", "peft_qlora_kernels", "nf4_bytes", "nf4_dequantize_kernel", "nf4_dequantize_floor",
]
