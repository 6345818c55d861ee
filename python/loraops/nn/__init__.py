"""Modules built on the loraops ops."""

from .nf4_linear import NF4Linear

__all__ = ["NF4Linear"]
