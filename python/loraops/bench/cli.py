"""``loraops-bench``: one subcommand per benchmark suite, and ``plot``.

A suite is a module in this package with ``NAME``, ``HELP``,
``add_arguments(parser)``, ``run(args) -> exit code`` and ``chart(document)``
(what ``plot`` draws from its JSON); adding one means writing the module and
listing it in ``SUITES``. ``plot`` (:mod:`loraops.bench.plot`) has the same
interface but runs no benchmark.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

#: Suite modules, relative to this package, in the order ``--help`` lists them.
SUITES = ("nf4", "lora", "s2attn", "ascend")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraops-bench",
        description="Benchmarks of loraops kernels against peer libraries and the memory-bandwidth ceiling; "
        "`plot` draws saved results.",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in (*SUITES, "plot"):
        suite = importlib.import_module(f"{__package__}.{module_name}")
        sub = subcommands.add_parser(suite.NAME, help=suite.HELP, description=suite.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        suite.add_arguments(sub)
        sub.set_defaults(run=suite.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "plot", None):  # a missing matplotlib fails now, not after the run
        from . import plot

        plot.require_matplotlib()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
