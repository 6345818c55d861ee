"""``loraops-bench``: one subcommand per benchmark suite.

A suite is a module in this package with ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> exit code``; adding one (``lora``,
``s2attn``) means writing the module and listing it in ``SUITES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

#: Suite modules, relative to this package, in the order ``--help`` lists them.
SUITES = ("nf4", "lora", "s2attn")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraops-bench",
        description="Benchmarks of loraops kernels against peer libraries and the memory-bandwidth ceiling.",
    )
    subcommands = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for module_name in SUITES:
        suite = importlib.import_module(f"{__package__}.{module_name}")
        sub = subcommands.add_parser(suite.NAME, help=suite.HELP, description=suite.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        suite.add_arguments(sub)
        sub.set_defaults(run=suite.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
