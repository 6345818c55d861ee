"""loraops: fused kernels for LoRA-family fine-tuning (QLoRA NF4, LoRA, LongLoRA S2-Attn).

Ops live in ``torch.ops.loraops`` and are dispatched to CPU, CUDA or Ascend NPU
kernels; the Python API wraps them:

    >>> import torch, loraops
    >>> qw = loraops.nf4.quantize(torch.randn(256, 128), blocksize=64)
    >>> w = loraops.nf4.dequantize(qw, dtype=torch.bfloat16)
"""

import json as _json
import os as _os

import torch as _torch

from . import _checks

# before the extension loads: a bad value fails here, clearly
_checks.check_cpu_buffer_cache_env()
_checks.check_cpu_isa_env()
_checks.check_cpu_bf16_env()

from ._native import _C  # noqa: F401,E402  (loads the extension, registers the ops)
from . import _build_config
from . import nf4, nn  # noqa: E402
from .lora import dora_linear, lora_linear, lora_linear_multi, vera_linear  # noqa: E402
from .s2attn import s2_attention  # noqa: E402

__version__ = _build_config.version

#: Directory to put on CMAKE_PREFIX_PATH so ``find_package(loraops)`` works,
#: next to ``torch.utils.cmake_prefix_path``.
cmake_prefix_path = _os.path.join(_os.path.dirname(__file__), "share", "cmake")


def build_info() -> dict:
    """What this build of loraops is: its version, the torch it was built against,
    the compiled backends, the CPU instruction set its kernels use and whether
    bf16 base GEMMs are on."""
    return _json.loads(_C.build_info_json())


def set_cpu_isa(isa: str) -> None:
    """Pin the CPU kernels to an instruction set: ``"scalar"``, ``"avx2"`` or
    ``"avx512"`` (the default is the best one the CPU supports; the environment
    variable ``LORAOPS_CPU_ISA`` sets it at start-up)."""
    if not isinstance(isa, str):
        raise TypeError(f"set_cpu_isa: isa must be a str (scalar, avx2 or avx512), got {type(isa).__name__}")
    _torch.ops.loraops._set_cpu_isa(isa)


def set_cpu_bf16(enabled: bool) -> None:
    """Whether the CPU LoRA ops run the base GEMMs of bf16 inputs in bf16 (oneDNN,
    fp32 accumulation, the product rounded to bf16) instead of widening them to
    fp32. On by default where the CPU has native bf16 (AVX512_BF16 or AMX), where
    it is about twice as fast; ``LORAOPS_CPU_BF16=0`` turns it off at start-up.
    ``build_info()["cpu_bf16"]`` says whether it is on, ``["cpu_bf16_native"]``
    whether the CPU could; turning it on elsewhere is a ValueError."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_cpu_bf16: enabled must be a bool, got {type(enabled).__name__}")
    _torch.ops.loraops._set_cpu_bf16(enabled)


def empty_cpu_buffer_cache() -> int:
    """Return the cached CPU output buffers to the system; gives the bytes released.

    Large CPU outputs (4 MiB and up, e.g. a dequantized weight) are kept after they
    are freed and reused for the next output of the same size, which spares the
    page faults of fresh memory. At most ``LORAOPS_CPU_BUFFER_CACHE_MB`` megabytes
    (default 512, 0 turns caching off) are kept."""
    return _torch.ops.loraops._empty_cpu_buffer_cache()


def cpu_buffer_cache_bytes() -> int:
    """Bytes of freed CPU output buffers currently kept for reuse."""
    return _torch.ops.loraops._cpu_buffer_cache_bytes()


__all__ = ["nf4", "nn", "lora_linear", "lora_linear_multi", "vera_linear", "dora_linear", "s2_attention", "build_info", "set_cpu_isa", "set_cpu_bf16", "empty_cpu_buffer_cache", "cpu_buffer_cache_bytes", "cmake_prefix_path", "__version__"]
