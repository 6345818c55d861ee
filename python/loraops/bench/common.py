"""Helpers every benchmark suite shares: timing a callable, bandwidth arithmetic,
describing the machine, printing an aligned table and writing results as JSON.

Nothing here knows about a particular op, so the ``lora`` and ``s2attn`` suites
can use it as ``nf4`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib
import json
import logging
import os
import platform
import re
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Optional, Sequence, TextIO

import torch

# ----------------------------------------------------------------------------- CLI pieces

#: Accepted spellings of the dtypes a suite can be asked for, and the short name
#: tables and JSON use for each.
_DTYPE_ALIASES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}
_DTYPE_SHORT = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}


def add_common_arguments(parser: argparse.ArgumentParser, *, repeat_default: str = "20",
                         warmup_default: str = "3", quick_help: Optional[str] = None) -> None:
    """Options every suite takes. Defaults are ``None`` so a suite can tell
    "not given" apart from an explicit value (``--quick`` only lowers what the
    user left alone). A suite whose defaults differ from ``resolve_repeat_warmup``'s
    passes the texts ``--help`` should show."""
    parser.add_argument("--device", default="cpu", help="device to run on: cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--repeat", type=_positive_int, default=None,
                        help=f"timed calls per measurement (default: {repeat_default})")
    parser.add_argument("--warmup", type=_non_negative_int, default=None,
                        help=f"untimed calls first (default: {warmup_default})")
    parser.add_argument(
        "--quick", action="store_true",
        help=quick_help
        or "a smoke run: --repeat 5 --warmup 1 and only the first shape and dtype, unless given explicitly",
    )
    parser.add_argument(
        "--json", metavar="FILE", default=None,
        help="also write machine description and results as JSON to FILE; '-' prints it to stdout "
        "(the table then goes to stderr); an existing directory gets DIR/<machine key>/<suite>-<time>.json",
    )
    parser.add_argument(
        "--plot", metavar="FILE.png", default=None,
        help="also draw the results (ratios against each peer per case, the ceiling where the suite has one) "
        "to FILE.png, as `loraops-bench plot` draws a saved --json; needs matplotlib (pip install 'loraops[bench]')",
    )


DEFAULT_REPEAT = 20
DEFAULT_WARMUP = 3
QUICK_REPEAT = 5
QUICK_WARMUP = 1


def resolve_repeat_warmup(args: argparse.Namespace) -> tuple[int, int]:
    repeat = args.repeat if args.repeat is not None else (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    warmup = args.warmup if args.warmup is not None else (QUICK_WARMUP if args.quick else DEFAULT_WARMUP)
    return repeat, warmup


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def parse_shapes(text: str) -> list[tuple[int, ...]]:
    """``"4096x4096,11008x4096"`` -> ``[(4096, 4096), (11008, 4096)]``."""
    shapes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            dims = tuple(int(d) for d in item.split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"shape '{item}' is not like 4096x4096") from None
        if not dims or any(d < 1 for d in dims):
            raise argparse.ArgumentTypeError(f"shape '{item}' must have positive dimensions")
        shapes.append(dims)
    if not shapes:
        raise argparse.ArgumentTypeError("no shapes given")
    return shapes


def parse_dtypes(text: str) -> list[torch.dtype]:
    """``"bf16,fp32"`` -> ``[torch.bfloat16, torch.float32]``."""
    dtypes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item not in _DTYPE_ALIASES:
            raise argparse.ArgumentTypeError(f"dtype '{item}' is not one of bf16, fp16, fp32")
        dtypes.append(_DTYPE_ALIASES[item])
    if not dtypes:
        raise argparse.ArgumentTypeError("no dtypes given")
    return dtypes


def shape_name(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_SHORT.get(dtype, str(dtype).replace("torch.", ""))


def resolve_device(name: str) -> torch.device:
    """The device to run on; ``SystemExit`` with a plain message when it is not there."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SystemExit(f"loraops-bench: bad --device '{name}': {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("loraops-bench: --device cuda asked for, but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"loraops-bench: --device {name} is not supported (cpu or cuda)")
    return device


# ----------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Wall-clock statistics of one measurement, in milliseconds."""

    median_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    samples_ms: list[float]
    warmup: int
    #: CUDA only: the most memory allocated during the timed calls, and how much
    #: of it the calls themselves added on top of what was allocated before.
    peak_memory_bytes: Optional[int] = None
    extra_memory_bytes: Optional[int] = None


def synchronize(device: torch.device) -> None:
    """Wait for queued work, so a timer stopped afterwards covers the kernels
    and not just their launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class CallTimer:
    """Times one call in milliseconds. On CPU: the host clock around the call and
    a synchronize. On CUDA: device events around the call on the current stream,
    after an L2 flush (twice the cache zeroed), as triton's do_bench does: an
    operand that fits in L2 is not timed warm, and the host's wait for the
    device is left out, while gaps the host leaves between one call's kernels
    count."""

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 128 * 2**20
            self._flush = torch.empty(2 * l2_bytes // 4, dtype=torch.int32, device=device)
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.device.type != "cuda":
            start = time.perf_counter()
            fn()
            synchronize(self.device)
            return (time.perf_counter() - start) * 1e3
        stream = torch.cuda.current_stream(self.device)
        self._flush.zero_()
        self._start.record(stream)
        fn()
        self._end.record(stream)
        self._end.synchronize()
        return self._start.elapsed_time(self._end)


def time_callable(fn: Callable[[], object], *, device: torch.device, repeat: int, warmup: int) -> Timing:
    """Call ``fn`` ``warmup`` times untimed (first-call costs: compilation, caches,
    lazy allocation), then ``repeat`` times, timing each call on its own."""
    for _ in range(warmup):
        fn()
    timer = CallTimer(device)  # before the memory baseline: its flush buffer is not the call's
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        allocated_before = torch.cuda.memory_allocated(device)
    # A collection pause inside a timed call would land on whichever op was
    # unlucky; collect now and keep the collector out of the timed loop.
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    samples = []
    try:
        for _ in range(repeat):
            samples.append(timer(fn))
    finally:
        if gc_was_enabled:
            gc.enable()
    timing = Timing(
        median_ms=statistics.median(samples),
        min_ms=min(samples),
        max_ms=max(samples),
        mean_ms=statistics.fmean(samples),
        samples_ms=samples,
        warmup=warmup,
    )
    if device.type == "cuda":
        timing.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
        timing.extra_memory_bytes = timing.peak_memory_bytes - allocated_before
    return timing


def time_interleaved(fns: dict[str, Callable[[], object]], *, device: torch.device, repeat: int,
                     warmup: int) -> dict[str, "Timing | Exception"]:
    """Time several callables round-robin: warm each up ``warmup`` times, then
    ``repeat`` rounds that call each once, timing every call on its own.

    On a shared or throttling machine a slow spell then hits every callable
    alike, so ratios between them stay meaningful; timed one after another, a
    spell lands on whichever was running. A callable that raises is dropped
    from the rounds and its exception returned in its place."""
    results: dict[str, Timing | Exception] = {}
    live = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            synchronize(device)
        except Exception as exc:
            results[name] = exc
        else:
            live[name] = fn
    samples: dict[str, list[float]] = {name: [] for name in live}
    timer = CallTimer(device)
    gc.collect()  # as in time_callable: no collection pause inside a timed call
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            for name, fn in list(live.items()):
                try:
                    samples[name].append(timer(fn))
                except Exception as exc:
                    results[name] = exc
                    del live[name]
    finally:
        if gc_was_enabled:
            gc.enable()
    for name in live:
        results[name] = Timing(
            median_ms=statistics.median(samples[name]), min_ms=min(samples[name]), max_ms=max(samples[name]),
            mean_ms=statistics.fmean(samples[name]), samples_ms=samples[name], warmup=warmup,
        )
    return {name: results[name] for name in fns}


def gb_per_s(nbytes: int, ms: float) -> float:
    """Decimal GB/s, as memory bandwidth is quoted."""
    return nbytes / (ms * 1e-3) / 1e9


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Progress:
    """One line per measurement on stderr, ``[3/12] what ... 12.3 ms``, so a long
    run shows where it is without mixing into the table on stdout."""

    def __init__(self, total: int, stream: TextIO = sys.stderr):
        self.total = total
        self.done = 0
        self.stream = stream

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[list]:
        """Yields a list; append the result text (e.g. "12.3 ms") to finish the line."""
        self.done += 1
        width = len(str(self.total))
        self.stream.write(f"[{self.done:>{width}}/{self.total}] {label} ...")
        self.stream.flush()
        outcome: list = []
        try:
            yield outcome
        finally:
            self.stream.write(f" {outcome[0] if outcome else 'failed'}\n")
            self.stream.flush()


# ----------------------------------------------------------------------------- memory


def release_free_memory() -> None:
    """Collect garbage and hand freed memory that is still held back to the OS:
    loraops' cache of large CPU output buffers and the C heap's free pages
    (glibc's ``malloc_trim``), so the resident set afterwards is close to what
    is live. Without it, memory freed by earlier calls stays resident and a
    later peak measurement would see it as already there (and a call reusing
    a cached buffer as needing none)."""
    gc.collect()
    import loraops

    if hasattr(loraops, "empty_cpu_buffer_cache"):  # older builds have no cache
        loraops.empty_cpu_buffer_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim with
        pass


def _proc_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field_name} in /proc/self/status")


def peak_rss_during(fn: Callable[[], object]) -> Optional[int]:
    """How far the process's resident set rose above its size before the call
    while ``fn`` ran, in bytes: the peak extra host memory ``fn`` needed.

    Linux only (``None`` elsewhere, or when the kernel does not allow resetting
    the high-water mark): writing 5 to ``/proc/self/clear_refs`` resets VmHWM to
    the current VmRSS, so VmHWM after the call is the peak during it. The result
    is process-wide, so other threads' allocations in that window count too."""
    release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss_before = _proc_status_kib("VmRSS")
    except (OSError, ValueError):
        return None
    fn()
    try:
        peak = _proc_status_kib("VmHWM")
    except (OSError, ValueError):
        return None
    return max(0, peak - rss_before) * 1024


def peak_memory_during(fn: Callable[[], object], device: torch.device, samples: int = 1) -> Optional[int]:
    """The peak extra memory ``fn`` needed on ``device``, in bytes: on CUDA the
    most allocated above what was allocated before; on CPU ``peak_rss_during``.

    With ``samples > 1``, ``fn`` runs that many times and the smallest reading
    is kept. On CPU the reading also counts freed blocks the C heap kept around
    instead of reusing (which ones it keeps varies from call to call, by a whole
    buffer); the smallest reading is the closest to what ``fn`` really needs."""
    readings = [_peak_memory_once(fn, device) for _ in range(samples)]
    known = [r for r in readings if r is not None]
    return min(known) if known else None


def _peak_memory_once(fn: Callable[[], object], device: torch.device) -> Optional[int]:
    if device.type != "cuda":
        return peak_rss_during(fn)
    synchronize(device)
    gc.collect()
    torch.cuda.reset_peak_memory_stats(device)
    allocated_before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - allocated_before


# ----------------------------------------------------------------------------- third-party noise


@contextlib.contextmanager
def quiet_library_noise() -> Iterator[None]:
    """Silence warnings and log chatter from the libraries compared against.

    bitsandbytes' CPU fallbacks are ``torch.compile``d with ``dynamic=False``, so
    every new shape recompiles; past dynamo's recompile limit each call warns and
    falls back to eager, which would both flood the output and change what is
    being timed. Raising the limit keeps every shape compiled once (during warm-up).
    """
    saved_levels = {}
    saved_dynamo = {}
    dynamo_config = None
    try:
        import torch._dynamo.config as dynamo_config
    except Exception:  # a torch without dynamo: nothing to raise
        pass
    if dynamo_config is not None:
        # The option was renamed from cache_size_limit to recompile_limit (torch 2.6);
        # set whichever names this torch has.
        for option in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                       "accumulated_cache_size_limit"):
            if hasattr(dynamo_config, option):
                saved_dynamo[option] = getattr(dynamo_config, option)
                setattr(dynamo_config, option, max(saved_dynamo[option], 1024))
    # torch.utils._pytree: torchao's import registers Enum constants that this torch deprecates, once per Enum.
    for name in ("torch._dynamo", "torch._inductor", "torch.utils._pytree", "bitsandbytes", "torchao"):
        logger = logging.getLogger(name)
        saved_levels[name] = logger.level
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        # Reverse order: the old and new names are aliases, so restoring the
        # first one last leaves the value it had before.
        for option, value in reversed(saved_dynamo.items()):
            setattr(dynamo_config, option, value)


def optional_import(module: str) -> tuple[Optional[object], str]:
    """``(module, version)`` when importable, else ``(None, "not installed")``
    (or the import error, when it is installed but broken)."""
    try:
        with quiet_library_noise():
            mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return None, "not installed"
        return None, f"import failed: {exc}"
    except Exception as exc:  # installed but broken (wrong torch, missing native lib, ...)
        return None, f"import failed: {type(exc).__name__}: {exc}"
    top = importlib.import_module(module.split(".")[0])
    return mod, str(getattr(top, "__version__", "unknown version"))


# ----------------------------------------------------------------------------- peers


@dataclass
class Peer:
    """A library compared against: what a suite uses of it (functions, modules),
    or why it is left out."""

    name: str
    version: Optional[str] = None
    note: Optional[str] = None  # set when unavailable
    api: dict = field(default_factory=dict)

    @property
    def available(self) -> bool:
        return self.note is None


# ----------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
    except OSError:
        cpuinfo = ""
    # x86 names the model "model name"; some Arm kernels only give "Hardware" or "Model".
    for key in ("model name", "Hardware", "Model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_busy_fraction(interval_s: float = 0.25) -> Optional[float]:
    """The fraction of all CPUs busy over ``interval_s`` while this process sleeps,
    i.e. how much other work competes with the benchmark (Linux only, else None).
    Worth recording: on a small shared machine a neighbour's build or test run
    halves multi-threaded kernels' throughput and makes timings bimodal."""

    def totals():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    try:
        total_before, idle_before = totals()
        time.sleep(interval_s)
        total_after, idle_after = totals()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total_after - total_before
    return None if elapsed <= 0 else 1.0 - (idle_after - idle_before) / elapsed


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on; goes at the top of every JSON result."""
    import loraops

    try:
        usable_cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable_cpus = os.cpu_count()
    build = loraops.build_info()
    info = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "loraops_version": loraops.__version__,
        "loraops_build_info": build,
        "cpu_isa": build.get("cpu_isa"),
        "cpu_bf16": build.get("cpu_bf16"),
        "device": str(device),
        "cpu_busy_before_run": cpu_busy_fraction(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_name=props.name,
            gpu_memory_bytes=props.total_memory,
            cuda_version=torch.version.cuda,
        )
    info["key"] = machine_key(info)
    return info


def machine_key(info: dict) -> str:
    """A file-name-safe name for the machine, e.g. ``intel-xeon-processor-2-50ghz-2cpu``
    or ``...-nvidia-h100-80gb-hbm3``: results from one machine go under one directory."""
    cpu = re.sub(r"\((r|tm)\)|\bcpu\b|@", " ", info["cpu_model"], flags=re.IGNORECASE)
    parts = [cpu, f"{info['usable_cpus']}cpu"]
    if info.get("gpu_name"):
        parts.append(info["gpu_name"])
    slug = re.sub(r"[^a-z0-9]+", "-", " ".join(parts).lower())
    return slug.strip("-")


#: Other work above this share of the CPUs gets a warning under the machine line.
BUSY_WARNING_FRACTION = 0.10


def machine_header(info: dict) -> str:
    """One line naming the machine, printed above every table."""
    text = (
        f"machine: {info['cpu_model']}, {info['usable_cpus']} cores ({info['torch_threads']} torch threads), "
        f"ISA {info['cpu_isa']}{' + bf16 GEMMs' if info.get('cpu_bf16') else ''}, torch {info['torch_version']}, loraops {info['loraops_version']}"
    )
    if info.get("gpu_name"):
        text += f", GPU {info['gpu_name']} (CUDA {info['cuda_version']})"
    warning = busy_warning(info.get("cpu_busy_before_run"), "before the run")
    if warning:
        text += "\n" + warning
    return text


def busy_warning(busy_fraction: Optional[float], when: str) -> Optional[str]:
    """A warning line when other work held more than ``BUSY_WARNING_FRACTION`` of the CPUs."""
    if busy_fraction is None or busy_fraction <= BUSY_WARNING_FRACTION:
        return None
    return (
        f"warning: {100 * busy_fraction:.0f}% of the CPUs were busy with other work {when}; "
        "timings are likely noisy and slow"
    )


# ----------------------------------------------------------------------------- output


def format_float(value: float) -> str:
    """About four significant digits without an exponent, so a column of
    milliseconds or GB/s spanning decades stays readable: 739.3, 43.76, 6.923, 0.178."""
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 10:
        return f"{value:.2f}"
    return f"{value:.3f}"


def format_table(headers: Sequence[str], rows: Sequence[Optional[Sequence[str]]]) -> str:
    """An aligned plain-text table. Cells are strings; numeric-looking columns
    are right-aligned. A ``None`` row draws a separator (to group rows)."""
    widths = [len(h) for h in headers]
    for row in rows:
        if row is not None:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def numeric(cell: str) -> bool:
        return bool(re.fullmatch(r"[-+]?[\d.,]+(e[-+]?\d+)?\s*[x%]?", cell.strip()))

    right = [
        all(numeric(row[i]) or not row[i].strip() for row in rows if row is not None)
        and any(row is not None and row[i].strip() for row in rows)
        for i in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(headers), rule]
    for row in rows:
        out.append(rule if row is None else line(row))
    return "\n".join(out)


def write_json(destination: str, suite: str, document: dict, stream: TextIO = sys.stdout) -> Optional[str]:
    """Write ``document`` as JSON to ``destination``: ``-`` for ``stream``, an
    existing directory for ``<dir>/<machine key>/<suite>-<UTC time>.json``,
    else that file. Returns the path written, if any."""
    text = json_text(document)
    if destination == "-":
        stream.write(text)
        return None
    path = destination
    if os.path.isdir(destination):
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = os.path.join(destination, document["machine"]["key"], f"{suite}-{stamp}.json")
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def json_text(document: dict) -> str:
    return json.dumps(document, indent=2, default=_json_default) + "\n"


def _json_default(value):
    if isinstance(value, torch.dtype):
        return dtype_name(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


__all__ = [
    "DEFAULT_REPEAT", "DEFAULT_WARMUP", "QUICK_REPEAT", "QUICK_WARMUP",
    "Timing", "Progress",
    "add_common_arguments", "resolve_repeat_warmup", "parse_shapes", "parse_dtypes",
    "shape_name", "dtype_name", "resolve_device",
    "synchronize", "time_callable", "time_interleaved", "gb_per_s", "tensor_bytes",
    "release_free_memory", "peak_rss_during", "peak_memory_during",
    "quiet_library_noise", "optional_import",
    "cpu_busy_fraction", "busy_warning", "machine_info", "machine_key", "machine_header",
    "format_float", "format_table", "format_targets", "NOT_A_TARGET_SHAPE", "json_text", "write_json",
]


#: What a target entry's ``met`` is ``None`` for: the case is not one the target is set for.
NOT_A_TARGET_SHAPE = "not a target shape"


def format_targets(targets: list[dict], device: torch.device, *, judged_at: str,
                   nothing: str = "nothing to check with these options") -> str:
    """The ``targets (CPU)`` block: one line per target entry (``target``,
    ``case``, ``value``, ``limit``, ``unit`` ``"x"`` or ``"MiB"``, ``met``, and
    ``at_least`` when the value must reach the limit rather than stay under it).
    ``met`` is ``None`` where the case is not a target shape (``judged_at``
    names those): the comparison is shown, but a smaller layer's fixed costs
    are not a missed target."""
    if device.type != "cpu":
        return f"targets: these are CPU targets; not checked on {device}"
    if not targets:
        return f"targets: {nothing}"

    def amount(value, unit):
        return f"{value:.2f}x" if unit == "x" else f"{value:.1f} MiB"

    table = [[t["target"], t["case"], amount(t["value"], t["unit"]),
              (">= " if t.get("at_least") else "<= ") + amount(t["limit"], t["unit"]),
              NOT_A_TARGET_SHAPE if t["met"] is None else "met" if t["met"] else "missed"] for t in targets]
    return f"targets (CPU; judged at {judged_at}):\n" + format_table(["target", "case", "measured", "limit", ""], table)


def finish_run(args: argparse.Namespace, suite: str, machine: dict, peers: dict, config: dict, rows: list[dict],
               report: TextIO, **extra) -> None:
    """The end every suite shares, after its tables are printed: warn when the
    machine was busy, write the JSON document when --json asked for it and
    draw it when --plot did."""
    warning = busy_warning(machine["cpu_busy_after_run"], "right after the run")
    if warning:
        print(warning, file=report)
    if not (args.json or args.plot):
        return
    document = {
        "suite": suite,
        "config": config,
        "machine": machine,
        "peers": {name: {"available": p.available, "version": p.version, "note": p.note} for name, p in peers.items()},
        "results": rows,
        **extra,
    }
    if args.json:
        path = write_json(args.json, suite, document)
        if path:
            print(f"\nwrote {path}", file=report)
    if args.plot:
        from . import plot  # only now: matplotlib is an optional extra

        # Drawn from the document as its JSON reads back, so this picture and
        # `loraops-bench plot` on the saved file come from the same data.
        plot.save([json.loads(json_text(document))], args.plot)
        print(f"wrote {args.plot}", file=report)
