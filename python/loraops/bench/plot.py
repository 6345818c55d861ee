"""``loraops-bench plot RESULTS.json...``: draw saved results as a PNG; a
suite's ``--plot FILE.png`` draws its own run the same way.

Each suite's ``chart(document)`` says what to draw from its JSON document: per
case, loraops' speed ratio against each peer (above 1 = loraops faster) and,
where the suite has one, loraops' fraction of a ceiling (NF4: the copy
bandwidth; LoRA: the frozen ``nn.Linear``). One block of panels per document,
titled with the machine, torch version and date the document records.

matplotlib is an optional extra (``pip install 'loraops[bench]'``), imported
only to draw, through its object-oriented API on the Agg canvas: no window, and
pyplot's global state in the caller's process is left alone.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

NAME = "plot"
HELP = "draw saved --json results as a PNG (needs matplotlib: pip install 'loraops[bench]')"

MISSING_MATPLOTLIB = ("loraops-bench: plotting needs matplotlib: pip install 'loraops[bench]' "
                      "(or pip install matplotlib)")

RATIO = "ratio"
CEILING = "ceiling"
RATIO_LABEL = "loraops speed ratio\n(peer time / loraops time)"
DPI = 100


@dataclass
class Chart:
    """What a suite draws from one document. ``points`` are
    ``(case, panel, series, value)`` in the order the results were measured:
    ``case`` maps field names to display texts (``{"op": "fwd", "dtype": "bf16"}``),
    ``panel`` is ``RATIO`` or ``CEILING``, ``series`` the legend entry."""

    title: str
    ceiling_label: Optional[str] = None  # y label of the ceiling panel; None: the suite has no ceiling
    points: list[tuple[dict, str, str, float]] = field(default_factory=list)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+", metavar="RESULTS.json",
                        help="JSON written by a suite's --json; several draw one block of panels each")
    parser.add_argument("-o", "--output", metavar="FILE.png", default=None,
                        help="where to write the picture (default, for one RESULTS.json: the same path with .png)")


def run(args: argparse.Namespace) -> int:
    require_matplotlib()
    if args.output is None and len(args.results) > 1:
        raise SystemExit("loraops-bench plot: several results given: name the picture with -o FILE.png")
    output = args.output or str(Path(args.results[0]).with_suffix(".png"))
    save([load(path) for path in args.results], output)
    print(f"wrote {output}")
    return 0


def require_matplotlib() -> None:
    """Exit with status 2 and one line naming the extra when matplotlib is not
    installed. Called before a benchmark starts, so a run with ``--plot`` fails
    at once rather than after minutes of timing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(MISSING_MATPLOTLIB, file=sys.stderr)
        raise SystemExit(2) from None


def load(path: str) -> dict:
    try:
        with open(path) as f:
            document = json.load(f)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"loraops-bench plot: cannot read {path}: {exc}") from None
    from .cli import SUITES  # here, not at the top: cli imports this module

    if not isinstance(document, dict) or document.get("suite") not in SUITES:
        raise SystemExit(f"loraops-bench plot: {path} is not a loraops-bench result "
                         f"(no suite among {', '.join(SUITES)})")
    return document


def save(documents: Sequence[dict], path: str) -> None:
    parent = Path(path).parent
    parent.mkdir(parents=True, exist_ok=True)
    figure(documents).savefig(path, dpi=DPI)


def figure(documents: Sequence[dict]):
    """The ``matplotlib.figure.Figure`` for ``documents``: per document a ratio
    panel, then a ceiling panel when its suite has one, sharing the case axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    charts = [importlib.import_module(f"{__package__}.{doc['suite']}").chart(doc) for doc in documents]
    panels = [1 + (chart.ceiling_label is not None) for chart in charts]
    widest = max(len(_cases(chart.points)) for chart in charts)
    fig = Figure(figsize=(max(8.0, 1.0 + 1.1 * widest), 0.9 + 2.9 * sum(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    blocks = fig.subfigures(len(charts), 1, squeeze=False, height_ratios=panels)[:, 0]
    for block, chart, document, n in zip(blocks, charts, documents, panels):
        axes = block.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
        cases = _cases(chart.points)
        axes[0].set_title(f"{chart.title}\n{machine_line(document['machine'])}", fontsize=10)
        _bars(axes[0], cases, [p for p in chart.points if p[1] == RATIO], ratio=True)
        axes[0].set_ylabel(RATIO_LABEL)
        if chart.ceiling_label is not None:
            _bars(axes[1], cases, [p for p in chart.points if p[1] == CEILING], ratio=False)
            axes[1].set_ylabel(chart.ceiling_label)
        labels, shared = case_labels(cases)
        axes[-1].set_xticks(range(len(cases)), labels, fontsize=8)
        if shared:
            axes[-1].set_xlabel(f"every case: {shared}", fontsize=8)
    return fig


def machine_line(machine: dict) -> str:
    """``AMD EPYC, 2 cores, avx512 | torch 2.13.0+cpu | 2026-11-29``, with the GPU when there is one."""
    where = f"{machine['cpu_model']}, {machine['usable_cpus']} cores, {machine.get('cpu_isa')}"
    if machine.get("gpu_name"):
        where = f"{machine['gpu_name']} (CUDA {machine.get('cuda_version')}); {where}"
    return f"{where} | torch {machine['torch_version']} | {machine['date'][:10]}"


def _cases(points) -> list[dict]:
    cases: list[dict] = []
    for case, *_ in points:
        if case not in cases:
            cases.append(case)
    return cases


def case_labels(cases: list[dict]) -> tuple[list[str], str]:
    """Tick labels from the fields that differ between cases, one per line; the
    fields every case shares are said once, in the returned text, instead of
    under every tick."""
    if not cases:
        return [], ""
    keys = list(cases[0])
    varying = [k for k in keys if len({c[k] for c in cases}) > 1]
    shared = ", ".join(cases[0][k] for k in keys if k not in varying)
    return ["\n".join(c[k] for k in varying) for c in cases], shared


def _bars(ax, cases: list[dict], points, *, ratio: bool) -> None:
    """Grouped bars, one group per case and one bar per series. Ratios are drawn
    from 1 on a log axis, so 2x faster and 2x slower are bars of one length in
    opposite directions; fractions of the ceiling from 0, the ceiling a line at 100%."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

    series = list(dict.fromkeys(p[2] for p in points))
    if not series:
        ax.text(0.5, 0.5, "no peers measured (run with --peers)" if ratio else "nothing to compare",
                ha="center", va="center", transform=ax.transAxes)
    width = 0.8 / max(1, len(series))
    for i, name in enumerate(series):
        values = {cases.index(case): value for case, _, s, value in points if s == name and math.isfinite(value)}
        xs = [x - 0.4 + width * (i + 0.5) for x in values]
        heights = list(values.values())
        if ratio:
            bars = ax.bar(xs, [v - 1 for v in heights], width, bottom=1, label=name)
            text = [f"{v:.3g}x" for v in heights]
        else:
            bars = ax.bar(xs, heights, width, label=name)
            text = [f"{100 * v:.0f}%" for v in heights]
        ax.bar_label(bars, text, fontsize=7, padding=1)
    ax.axhline(1, color="black", linewidth=0.8)
    if ratio:
        ax.set_yscale("log")
        # Ticks at powers of 2 read as ratios (0.5x, 1x, 2x, 4x); base 10's 2x10^0 does not.
        ax.yaxis.set_major_locator(LogLocator(base=2))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.margins(y=0.15)
    else:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
        ax.margins(y=0.12)
    ax.set_xlim(-0.6, len(cases) - 0.4)
    ax.grid(axis="y", alpha=0.3)
    if series:
        ax.legend(fontsize=8, loc="best")
