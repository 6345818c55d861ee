"""loraops' ops inside ``torch.autocast``: they run as the matmuls they replace
would, on float32 activations and base weights cast to the autocast dtype (the
LoRA adapters keep theirs: the low-rank branch is computed in fp32 anyway). The
ops themselves ignore autocast and compute in their inputs' dtypes."""

from __future__ import annotations

from typing import Optional

import torch


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype for ``device_type``, or None where autocast is off or
    does not exist (meta tensors: asking torch would raise)."""
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def cast(t: Optional[torch.Tensor], dtype: Optional[torch.dtype]) -> Optional[torch.Tensor]:
    """``t`` in ``dtype`` where autocast would cast it (float32 only)."""
    if dtype is None or t is None or t.dtype != torch.float32:
        return t
    return t.to(dtype)
