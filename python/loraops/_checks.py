"""Argument checks shared by the Python API. Each failure names the function,
the argument and what was expected, with the exception types of the ops' C++
checks: TypeError for a wrong type, ValueError for a wrong value, RuntimeError
for a device mismatch."""

from __future__ import annotations

import math
import numbers
import operator
import os
import struct
from typing import Mapping, Optional

import torch

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def require_tensor(value, where: str, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def as_int(value, where: str, name: str, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    """``value`` as a Python int in [lo, hi] (the ops take int64). Python ints and
    integral numpy/torch scalars pass; a float (even 8.0: 7.9 must not become 7)
    or a bool is a TypeError."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{where}: {name} must be an int, got a bool")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{where}: {name} must be an int, got {type(value).__name__}") from None
    if not lo <= result <= hi:
        raise ValueError(f"{where}: {name} must be an int in [{lo}, {hi}], got {result}")
    return result


def fits_float32(value: float) -> bool:
    """Whether ``value`` is finite once rounded to float32 (1e39 is finite as a
    double, Inf in float32)."""
    return math.isfinite(struct.unpack("f", struct.pack("f", value))[0])


def as_float(value, where: str, name: str, *, finite32: bool = False) -> float:
    """``value`` as a Python float: a real number or a one-element real tensor, not
    a bool or a string. With ``finite32``, it must be finite as float32, the
    precision it is used in."""
    is_tensor = isinstance(value, torch.Tensor)
    if (isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor))
            or (is_tensor and (value.numel() != 1 or value.dtype == torch.bool or value.is_complex()))):
        kind = f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}" if is_tensor else type(value).__name__
        raise TypeError(f"{where}: {name} must be a float, got {kind}")
    result = float(value)
    if finite32 and not fits_float32(result):
        raise ValueError(f"{where}: {name} must be a finite float32 value, got {result}")
    return result


def as_bool(value, where: str, name: str) -> bool:
    """``value`` if it is a bool: truthiness would turn any object (``"false"``) into one."""
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be a bool, got {type(value).__name__}")
    return value


def check_devices(where: str, primary_name: str, primary: torch.Tensor, tensors: Mapping[str, Optional[torch.Tensor]],
                  host_ok=(), error=RuntimeError) -> None:
    """Every tensor of ``tensors`` (name -> tensor or None) must be on ``primary``'s
    device, as the ops' C++ checks require; those named in ``host_ok`` may also be
    on the CPU (the op copies them). A meta tensor never mixes with real ones:
    the dispatcher would run the op's fake kernel and return uninitialised memory."""
    device = primary.device
    for name, t in tensors.items():
        if t is None or t.device == device:
            continue
        if name in host_ok and t.device.type == "cpu" and device.type != "meta":
            continue
        raise error(f"{where}: {name} must be on {device} like {primary_name}, got {t.device}")


MAX_CPU_BUFFER_CACHE_MB = 2**43 - 1  # its bytes, MB << 20, must fit int64, as the C++ side requires


def check_cpu_buffer_cache_env() -> None:
    """LORAOPS_CPU_BUFFER_CACHE_MB, read by the CPU kernels at their first large
    output, checked at import: a typo (``abc``, ``1e3``) once turned the cache off
    silently, and ``2**44`` wrapped to 0."""
    value = os.environ.get("LORAOPS_CPU_BUFFER_CACHE_MB", "")
    digits = value.lstrip("0") or "0"
    if value and not (value.isascii() and value.isdigit() and len(digits) <= len(str(MAX_CPU_BUFFER_CACHE_MB))
                      and int(digits) <= MAX_CPU_BUFFER_CACHE_MB):
        raise ValueError(f"LORAOPS_CPU_BUFFER_CACHE_MB must be a whole number of megabytes in "
                         f"[0, {MAX_CPU_BUFFER_CACHE_MB}] (0 turns the CPU buffer cache off, unset means 512), "
                         f"got {value!r}")


CPU_ISAS = ("scalar", "avx2", "avx512")


def check_cpu_isa_env() -> None:
    """LORAOPS_CPU_ISA, checked at import: an unknown name (a typo) once fell back
    to the default silently."""
    value = os.environ.get("LORAOPS_CPU_ISA", "")
    if value and value not in CPU_ISAS:
        raise ValueError(f"LORAOPS_CPU_ISA must be one of {', '.join(CPU_ISAS)}, got {value!r}")


def check_cpu_bf16_env() -> None:
    """LORAOPS_CPU_BF16, checked at import: only 0 and 1 mean something, and a
    typo must not leave the bf16 GEMMs on silently."""
    value = os.environ.get("LORAOPS_CPU_BF16", "")
    if value and value not in ("0", "1"):
        raise ValueError(f"LORAOPS_CPU_BF16 must be 0 (fp32 base GEMMs) or 1 (bf16 where the CPU has native bf16), "
                         f"got {value!r}")
