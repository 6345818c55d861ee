"""Run peft's LoRA layers through the fused loraops op.

    model = peft.get_peft_model(model, config)
    loraops.integrations.peft.fuse(model)     # every eligible LoRA layer now runs fused
    ...train...
    model.save_pretrained(path)               # the same adapter files peft writes
    loraops.integrations.peft.unfuse(model)   # back to peft's own forward

``fuse`` changes no module and no parameter: each peft LoRA layer keeps its
``base_layer``, ``lora_A``, ``lora_B`` and names; only its forward is routed to
``loraops.lora_linear``. Per call, a layer falls back to peft's own forward when
the fused op cannot express it: adapters disabled or merged, several active
adapters, per-sample ``adapter_names``, LoRA variants other than DoRA, DoRA under
dropout in training, ``lora_bias``, ``fan_in_fan_out`` bases, or a base that is
neither ``nn.Linear`` nor a bitsandbytes NF4 ``Linear4bit``.
"""

from __future__ import annotations

import types

from torch import nn

from ..lora import dora_linear, lora_linear
from ..nf4 import NF4Weight

__all__ = ["fuse", "unfuse", "is_fused"]

_ORIGINAL_FORWARD = "_loraops_original_forward"
_NF4_CACHE = "_loraops_nf4_weight"


def _require_module(model, where: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be an nn.Module (a peft model), got {type(model).__name__}")


def _peft_lora_layer_types():
    from peft.tuners.lora.layer import Linear

    types_ = [Linear]
    try:
        from peft.tuners.lora.bnb import Linear4bit

        types_.append(Linear4bit)
    except ImportError:  # bitsandbytes not installed
        pass
    return tuple(types_)


def _nf4_weight(layer, base) -> NF4Weight | None:
    """The bitsandbytes base weight as an NF4Weight (the same tensors, no copy), cached."""
    weight = base.weight
    state = getattr(weight, "quant_state", None)
    if state is None or getattr(state, "quant_type", None) != "nf4":
        return None
    cached = layer.__dict__.get(_NF4_CACHE)
    if cached is not None and cached[0] is state and cached[1] == weight.data_ptr():
        return cached[2]
    sd = {"weight": weight.data}
    sd.update({f"weight.{k}": v for k, v in state.as_dict(packed=True).items()})
    nf4 = NF4Weight.from_bnb_state_dict(sd)
    layer.__dict__[_NF4_CACHE] = (state, weight.data_ptr(), nf4)
    return nf4


def _base_weight(layer):
    base = layer.get_base_layer()
    if type(base) is nn.Linear:
        return base.weight, base.bias
    if type(base).__name__ == "Linear4bit":
        nf4 = _nf4_weight(layer, base)
        return (nf4, base.bias) if nf4 is not None else (None, None)
    return None, None


def _fused_forward(self, x, *args, **kwargs):
    original = self.__dict__[_ORIGINAL_FORWARD]
    if args or kwargs or self.disable_adapters or self.merged:
        return original(x, *args, **kwargs)
    active = [a for a in self.active_adapters if a in self.lora_A]
    if len(active) != 1:
        return original(x, *args, **kwargs)
    adapter = active[0]
    dropout = self.lora_dropout[adapter]
    if (self.lora_bias.get(adapter, False) or getattr(self, "fan_in_fan_out", False)
            or not isinstance(dropout, (nn.Dropout, nn.Identity))):
        return original(x, *args, **kwargs)
    p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
    variant = self.lora_variant.get(adapter)
    dora = variant is not None and type(variant).__name__ == "DoraLinearVariant"
    if (variant is not None and not dora) or (dora and p > 0):
        # other variants, and DoRA under dropout (peft then runs the base GEMM
        # twice, on x and on dropout(x)), keep peft's forward
        return original(x, *args, **kwargs)
    weight, bias = _base_weight(self)
    if weight is None:
        return original(x, *args, **kwargs)
    lora_A, lora_B = self.lora_A[adapter].weight, self.lora_B[adapter].weight
    if dora:
        magnitude = self.lora_magnitude_vector[adapter].weight
        return dora_linear(x, weight, lora_A, lora_B, magnitude, self.scaling[adapter], bias)
    return lora_linear(x, weight, lora_A, lora_B, self.scaling[adapter], bias, p)


def fuse(model: nn.Module) -> int:
    """Route every peft LoRA layer of ``model`` (over ``nn.Linear`` or a
    bitsandbytes NF4 ``Linear4bit``) through ``loraops.lora_linear``, in place.
    Returns the number of layers fused; fusing twice is a no-op."""
    _require_module(model, "fuse")
    layer_types = _peft_lora_layer_types()
    count = 0
    for module in model.modules():
        if isinstance(module, layer_types) and not is_fused(module):
            module.__dict__[_ORIGINAL_FORWARD] = module.forward
            module.__dict__["forward"] = types.MethodType(_fused_forward, module)
            count += 1
    return count


def unfuse(model: nn.Module) -> int:
    """Undo :func:`fuse`: peft's own forward again. Returns the number of layers restored."""
    _require_module(model, "unfuse")
    count = 0
    for module in model.modules():
        if is_fused(module):
            original = module.__dict__.pop(_ORIGINAL_FORWARD)
            module.__dict__.pop(_NF4_CACHE, None)
            if getattr(original, "__func__", None) is type(module).forward:
                del module.__dict__["forward"]  # the class's own method again
            else:
                module.__dict__["forward"] = original
            count += 1
    return count


def is_fused(module: nn.Module) -> bool:
    return _ORIGINAL_FORWARD in module.__dict__
