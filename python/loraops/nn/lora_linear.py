"""LoRA modules: a linear layer plus a trainable low-rank adapter, computed by
the fused ``lora_linear`` op."""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import as_bool, as_float, as_int
from ..lora import lora_linear


def adapter_dtype(base_dtype) -> torch.dtype:
    """Adapters train in fp32 over half-precision bases, as peft does by default."""
    return torch.float32 if base_dtype in (None, torch.bfloat16, torch.float16) else base_dtype


class LoraAdapterMixin:
    """The adapter half of a LoRA layer: ``lora_A [r, in]``, ``lora_B [out, r]``,
    scale and dropout, initialised as peft does (Kaiming-uniform A, zero B)."""

    def _init_adapter(self, in_features, out_features, r, alpha, dropout, use_rslora, freeze_A, device, dtype):
        where = type(self).__name__
        r = as_int(r, where, "r")
        if r < 0:
            raise ValueError(f"{where}: r must be a non-negative int, got {r}")
        dropout = as_float(dropout, where, "dropout")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{where}: dropout must be in [0, 1), got {dropout}")
        # finite in float32, so is the scale (alpha / r or alpha / sqrt(r), r >= 1) the op multiplies by
        alpha = r if alpha is None else as_float(alpha, where, "alpha", finite32=True)
        use_rslora = as_bool(use_rslora, where, "use_rslora")
        freeze_A = as_bool(freeze_A, where, "freeze_A")
        self.r = r
        self.lora_alpha = alpha
        self.use_rslora = use_rslora
        self.scale = (alpha / math.sqrt(r) if use_rslora else alpha / r) if r > 0 else 0.0
        self.lora_dropout = dropout
        if r == 0:
            # No adapter: empty buffers keep one code path and stay out of the state dict.
            self.register_buffer("lora_A", torch.empty(0, in_features, device=device, dtype=dtype), persistent=False)
            self.register_buffer("lora_B", torch.empty(out_features, 0, device=device, dtype=dtype), persistent=False)
            return
        self.lora_A = nn.Parameter(torch.empty(r, in_features, device=device, dtype=dtype), requires_grad=not freeze_A)
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def _lora_forward(self, x, weight):
        dropout = self.lora_dropout if self.training else 0.0
        return lora_linear(x, weight, self.lora_A, self.lora_B, self.scale, self.bias, dropout)

    def _delta_weight(self, dtype) -> torch.Tensor:
        return (self.scale * (self.lora_B.float() @ self.lora_A.float())).to(dtype)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A new dense ``nn.Linear`` with the adapter folded in: ``W + scale * B A``
        (W dequantized when it is NF4) and the bias, computing what this layer
        computes in eval mode. The layer itself is left as it is: an NF4 weight
        cannot take the update without re-quantizing it, so no loraops layer
        merges in place."""
        linear = self.dense_linear()
        if self.r > 0:
            linear.weight += self._delta_weight(linear.weight.dtype)
        return linear

    def _adapter_repr(self) -> str:
        return f"r={self.r}, alpha={self.lora_alpha}, dropout={self.lora_dropout}, rslora={self.use_rslora}"


class LoraLinear(LoraAdapterMixin, nn.Module):
    """``y = x W^T + b + scale * (dropout(x) A^T) B^T`` with W and b frozen.

    ``merge()`` returns a new ``nn.Linear`` with the adapter folded into W.
    """

    def __init__(self, in_features, out_features, r, alpha=None, dropout=0.0, bias=True, use_rslora=False,
                 freeze_A=False, device=None, dtype=None):
        super().__init__()
        in_features = as_int(in_features, "LoraLinear", "in_features", 0)
        out_features = as_int(out_features, "LoraLinear", "out_features", 0)
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype),
                                   requires_grad=False)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._init_adapter(in_features, out_features, r, alpha, dropout, use_rslora, freeze_A, device,
                           adapter_dtype(dtype))

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int, alpha=None, dropout: float = 0.0, use_rslora: bool = False,
                    freeze_A: bool = False) -> "LoraLinear":
        """Wrap an ``nn.Linear`` (its weight and bias are reused, not copied)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"LoraLinear.from_linear: linear must be an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, r, alpha, dropout, linear.bias is not None,
                    use_rslora, freeze_A, device=linear.weight.device, dtype=linear.weight.dtype)
        layer.weight = nn.Parameter(linear.weight.detach(), requires_grad=False)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._lora_forward(x, self.weight)

    def dense_linear(self) -> nn.Linear:
        """A new ``nn.Linear`` with copies of the base weight and bias (no adapter)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self._adapter_repr()}")
