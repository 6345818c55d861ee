"""Modules built on the loraops ops."""

from .lora_linear import LoraLinear
from .nf4_linear import NF4Linear

__all__ = ["LoraLinear", "NF4Linear"]
