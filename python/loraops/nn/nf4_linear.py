"""A frozen linear layer over an NF4 weight (the base layer of QLoRA)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._checks import check_devices, require_tensor
from ..nf4 import _BNB_WEIGHT_SUFFIXES, NF4Weight, quantize
from .lora_linear import LoraAdapterMixin, adapter_dtype


class NF4Linear(LoraAdapterMixin, nn.Module):
    """``y = x W^T + b (+ scale * (dropout(x) A^T) B^T)`` with ``W`` stored in NF4
    (bitsandbytes layout): the QLoRA layer.

    The weight and bias are frozen; with ``r > 0`` the layer carries a trainable
    LoRA adapter. The base weight is dequantized tile by tile inside the fused op,
    never whole. The state dict uses bitsandbytes' keys for the weight
    (``weight``, ``weight.absmax``, ...), so it loads into
    ``bitsandbytes.nn.Linear4bit`` and back.
    """

    def __init__(self, weight: NF4Weight, bias: Optional[torch.Tensor] = None, r: int = 0, alpha=None,
                 dropout: float = 0.0, use_rslora: bool = False, freeze_A: bool = False):
        super().__init__()
        if not isinstance(weight, NF4Weight):
            raise TypeError(f"NF4Linear: weight must be an NF4Weight, got {type(weight).__name__}")
        if len(weight.shape) != 2:
            raise ValueError(f"NF4Linear: weight must be 2-D [out_features, in_features], got {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        if bias is not None:
            if require_tensor(bias, "NF4Linear", "bias").shape != (self.out_features,):
                raise ValueError(f"NF4Linear: bias must have shape ({self.out_features},), got {tuple(bias.shape)}")
            if not bias.is_floating_point():
                raise TypeError(f"NF4Linear: bias must be a floating-point tensor, got {bias.dtype}")
            check_devices("NF4Linear", "weight", weight.packed, {"bias": bias})
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._init_adapter(self.in_features, self.out_features, r, alpha, dropout, use_rslora, freeze_A,
                           weight.device, adapter_dtype(weight.dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int = 0, alpha=None, dropout: float = 0.0, *, blocksize: int = 64,
                    double_quant: bool = True, use_rslora: bool = False, freeze_A: bool = False) -> "NF4Linear":
        """Quantize an ``nn.Linear``'s weight to NF4; with ``r > 0`` add a LoRA adapter
        of rank r and scale ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"NF4Linear.from_linear: linear must be an nn.Linear, got {type(linear).__name__}")
        qw = quantize(linear.weight.detach(), blocksize=blocksize, double_quant=double_quant)
        bias = None if linear.bias is None else linear.bias.detach()
        return cls(qw, bias, r, alpha, dropout, use_rslora, freeze_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._lora_forward(x, self.weight)

    def dense_linear(self) -> nn.Linear:
        """A new ``nn.Linear`` with the dequantized weight and the bias (no adapter)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight.dequantize())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # Follow device moves (.to / .cuda / .cpu) without touching the quantized data's dtypes.
        probe = fn(torch.empty(0, device=self.weight.device))
        if probe.device != self.weight.device:
            self.weight = self.weight.to(probe.device)
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination.update(self.weight.to_bnb_state_dict(prefix))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        weight_keys = [k for k in state_dict if k == f"{prefix}weight" or k.startswith(f"{prefix}weight.")]
        if weight_keys:
            try:
                weight = NF4Weight.from_bnb_state_dict(state_dict, prefix)
            except ValueError as exc:
                error_msgs.append(str(exc))
            else:
                if weight.shape != self.weight.shape:
                    error_msgs.append(
                        f"size mismatch for {prefix}weight: checkpoint has shape {tuple(weight.shape)}, "
                        f"this layer {tuple(self.weight.shape)}"
                    )
                elif local_metadata.get("assign_to_params_buffers", False):
                    self.weight = weight  # load_state_dict(assign=True) takes the tensors, as nn.Module does
                else:
                    # copied, as nn.Module copies into its parameters: the layer
                    # must not alias (and see later changes to) the caller's tensors
                    self.weight = weight.to(self.weight.device, copy=True)
            if strict:
                known = {f"{prefix}weight{suffix}" for suffix in _BNB_WEIGHT_SUFFIXES}
                unexpected_keys.extend(k for k in weight_keys if k not in known)
        elif strict:
            missing_keys.append(f"{prefix}weight")
        rest = {k: v for k, v in state_dict.items() if k not in weight_keys}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, blocksize={self.weight.blocksize}, "
                f"double_quant={self.weight.double_quant}, {self._adapter_repr()}")
