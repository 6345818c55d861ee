"""Benchmarks of loraops, run as ``loraops-bench SUITE`` and drawn by
``loraops-bench plot`` (see :mod:`loraops.bench.cli`).

Shared timing, machine-description and reporting helpers are in
:mod:`loraops.bench.common`; each suite (``nf4``, ...) is its own module.
"""
