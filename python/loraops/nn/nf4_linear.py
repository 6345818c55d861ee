"""A frozen linear layer over an NF4 weight (the base layer of QLoRA)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .._checks import check_devices, require_tensor
from ..nf4 import _BNB_WEIGHT_SUFFIXES, NF4Weight, bnb_state_dict, quantize
from .lora_linear import LoraAdapterMixin, adapter_dtype


class NF4Linear(LoraAdapterMixin, nn.Module):
    """``y = x W^T + b (+ scale * (dropout(x) A^T) B^T)`` with ``W`` stored in NF4
    (bitsandbytes layout): the QLoRA layer.

    The weight and bias are frozen; with ``r > 0`` the layer carries a trainable
    LoRA adapter. The base weight is dequantized tile by tile inside the fused op,
    never whole. The state dict uses bitsandbytes' keys for the weight
    (``weight``, ``weight.absmax``, ...), so it loads into
    ``bitsandbytes.nn.Linear4bit`` and back.

    The packed codes and the scales are frozen parameters (``weight_packed``,
    ``weight_absmax``, ``weight_nested_absmax``), so FSDP2's ``fully_shard``
    shards them like any weight (each rank keeps about 1/world of the bytes) and
    all-gathers them for the forward and backward; ``weight`` is the
    :class:`NF4Weight` over them. Dtype casts of the module (``.half()``,
    ``.to(torch.bfloat16)``) leave the quantization state's dtypes alone.
    """

    # the quantization state's tensors: sharded parameters, then small replicated buffers
    _PARAMETERS = {"packed": "weight_packed", "absmax": "weight_absmax", "nested_absmax": "weight_nested_absmax"}
    _BUFFERS = {"nested_code": "weight_nested_code", "offset": "weight_offset"}

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

    @property
    def weight(self) -> NF4Weight:
        """The NF4 weight over this layer's tensors (rebuilt only when they change)."""
        tensors = {field: getattr(self, name) for field, name in {**self._PARAMETERS, **self._BUFFERS}.items()}
        cached = self.__dict__.get("_weight_view")
        if cached is not None and all(cached[0].get(k) is v for k, v in tensors.items()):
            return cached[1]
        weight = NF4Weight(tensors["packed"].reshape(-1), tensors["absmax"], nested_absmax=tensors["nested_absmax"],
                           nested_code=tensors["nested_code"], offset=tensors["offset"], blocksize=self._nf4_blocksize, nested_blocksize=self._nf4_nested_blocksize,
                           shape=self._nf4_shape, dtype=self._nf4_dtype)
        self.__dict__["_weight_view"] = (tensors, weight)
        return weight

    @weight.setter
    def weight(self, weight: NF4Weight) -> None:
        self._nf4_blocksize, self._nf4_nested_blocksize = weight.blocksize, weight.nested_blocksize
        self._nf4_shape, self._nf4_dtype = weight.shape, weight.dtype
        # bitsandbytes' shape for the codes: [bytes, 1]
        tensors = dict(packed=weight.packed.reshape(-1, 1), absmax=weight.absmax, nested_absmax=weight.nested_absmax,
                       nested_code=weight.nested_code, offset=weight.offset)
        for field, name in self._PARAMETERS.items():
            t = tensors[field]
            self.register_parameter(name, None if t is None else nn.Parameter(t, requires_grad=False))
        for field, name in self._BUFFERS.items():
            self.register_buffer(name, tensors[field], persistent=False)
        self.__dict__.pop("_weight_view", None)

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
        # Follow device moves (.to / .cuda / .cpu / to_empty) but not dtype casts:
        # the quantization state keeps its dtypes (a cast may replace a
        # parameter's data in place, so the tensors are held from before).
        before = {name: (t.detach(), name in self._parameters) for name in self._quantization_state_names()
                  if (t := getattr(self, name)) is not None}
        super()._apply(fn, recurse)
        for name, (old, is_parameter) in before.items():
            new = getattr(self, name)
            if new.dtype != old.dtype:
                new = old.to(new.device)
                if is_parameter:
                    self._parameters[name] = nn.Parameter(new, requires_grad=False)
                else:
                    self._buffers[name] = new
        return self

    def _quantization_state_names(self):
        return (*self._PARAMETERS.values(), *self._BUFFERS.values())

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in self._PARAMETERS.values():
            destination.pop(prefix + name, None)
        # bitsandbytes' keys, from the tensors as they are (DTensor shards under FSDP2 included)
        def value(t):
            return t if keep_vars or t is None else t.detach()
        destination.update(bnb_state_dict(
            prefix, value(self.weight_packed), value(self.weight_absmax), value(self.weight_nested_absmax),
            self.weight_nested_code, self.weight_offset, blocksize=self._nf4_blocksize,
            nested_blocksize=self._nf4_nested_blocksize, shape=self._nf4_shape, dtype=self._nf4_dtype))

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
        own_names = {prefix + name for name in self._PARAMETERS.values()}  # read from the bitsandbytes keys above
        missing_keys[:] = [k for k in missing_keys if k not in own_names]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, blocksize={self.weight.blocksize}, "
                f"double_quant={self.weight.double_quant}, {self._adapter_repr()}")
