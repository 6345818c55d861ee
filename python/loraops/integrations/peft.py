"""Run peft's LoRA layers through the fused loraops op.

    model = peft.get_peft_model(model, config)
    report = loraops.integrations.peft.fuse(model)   # every eligible LoRA layer now runs fused
    print(report)                                    # which layers, and why any do not
    ...train...
    model.save_pretrained(path)               # the same adapter files peft writes
    loraops.integrations.peft.unfuse(model)   # back to peft's own forward

``fuse`` changes no module and no parameter: each peft LoRA layer keeps its
``base_layer``, ``lora_A``, ``lora_B`` and names; only its forward is routed to
``loraops.lora_linear``. A layer runs peft's own forward instead where the fused
op cannot express it: several active adapters, per-sample ``adapter_names``,
LoRA variants other than DoRA, DoRA under dropout in training, ``lora_bias``,
``fan_in_fan_out`` bases, a base weight sharded by FSDP2 on the base layer
itself, or a base that is neither ``nn.Linear``, ``loraops.nn.NF4Linear`` nor a
bitsandbytes NF4 ``Linear4bit``. ``fuse`` reports each such layer and its
reason; a layer that first falls back at run time warns once;
``fuse(model, strict=True)`` raises instead. (Disabled or merged adapters run
the base layer alone, as peft does: that is not a fallback.)

A model quantized by ``loraops.integrations.transformers.quantize_model`` has
``NF4Linear`` layers; peft wraps them once its config knows how:
``peft.get_peft_model(model, register_nf4_linear(peft.LoraConfig(...)))``.
"""

from __future__ import annotations

import types
import warnings

import torch
from torch import nn

from ..lora import dora_linear, lora_linear
from ..nf4 import NF4Weight, quantize
from ..nn import NF4Linear

__all__ = ["fuse", "unfuse", "is_fused", "FuseReport", "register_nf4_linear"]

_ORIGINAL_FORWARD = "_loraops_original_forward"
_NF4_CACHE = "_loraops_nf4_weight"
_NAME = "_loraops_layer_name"
_STRICT = "_loraops_strict"
_WARNED = "_loraops_fallback_warned"


class FuseReport(int):
    """What :func:`fuse` did: an ``int`` (the number of LoRA layers that run
    fused), with ``layers`` mapping each LoRA layer it routed to ``None`` (fused)
    or the reason it runs peft's own forward. ``print(report)`` shows them."""

    layers: dict

    def __new__(cls, layers: dict):
        report = super().__new__(cls, sum(reason is None for reason in layers.values()))
        report.layers = layers
        return report

    @property
    def fallbacks(self) -> dict:
        """The layers that run peft's forward, by name, with the reason."""
        return {name: reason for name, reason in self.layers.items() if reason is not None}

    def __format__(self, spec: str) -> str:
        return format(int(self), spec)  # f"{report}" is the count, as for an int

    def __repr__(self) -> str:
        return f"FuseReport(fused={int(self)}, falls_back={len(self.fallbacks)})"

    def __str__(self) -> str:
        lines = [f"loraops fuse: {int(self)} of {len(self.layers)} LoRA layers run fused"]
        width = max((len(name) for name in self.layers), default=0)
        lines += [f"  {name:<{width}}  {'fused' if reason is None else 'peft forward: ' + reason}"
                  for name, reason in self.layers.items()]
        return "\n".join(lines)


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


def _restore_bnb_layout(weight) -> None:
    """Undo bitsandbytes' CPU repacking of a ``Linear4bit`` weight, in place.

    On CPUs with avx512_bf16, bitsandbytes rewrites the weight into a blocked
    layout (bf16 scales, no double quantization) on a no-grad forward, and
    restores it itself before saving or moving it. Its own inverse brings the
    standard layout back; the next no-grad pass repacks it again."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    with torch.no_grad():
        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)


def _bnb_nf4_weight(layer, base) -> tuple[NF4Weight | None, str | None]:
    """The bitsandbytes base weight as an NF4Weight (the same tensors, no copy),
    cached; or None and the reason it cannot be read."""
    weight = base.weight
    state = getattr(weight, "quant_state", None)
    if state is None:
        return None, "bitsandbytes weight without a quant_state (not quantized, or sharded)"
    if getattr(state, "quant_type", None) != "nf4":
        return None, f"bitsandbytes {getattr(state, 'quant_type', '?')} weight (the fused op reads NF4)"
    if getattr(state, "packing_format_for_cpu", False):
        try:
            _restore_bnb_layout(weight)
        except Exception as exc:  # a bitsandbytes without the inverse, or a layout it changed
            return None, f"bitsandbytes' CPU-packed weight layout could not be restored ({exc})"
        state = weight.quant_state
    cached = layer.__dict__.get(_NF4_CACHE)
    if cached is not None and cached[0] is state and cached[1] == weight.data_ptr():
        return cached[2], None
    sd = {"weight": weight.data}
    try:
        sd.update({f"weight.{k}": v for k, v in state.as_dict(packed=True).items()})
        nf4 = NF4Weight.from_bnb_state_dict(sd)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a layout this version does not read
        return None, f"bitsandbytes weight layout not readable: {exc}"
    layer.__dict__[_NF4_CACHE] = (state, weight.data_ptr(), nf4)
    return nf4, None


# Reading bitsandbytes' state cannot be traced (a data pointer, its JSON and
# .item()): a graph break there lets dynamo compile Params4bit.__torch_function__
# as a frame of its own, whose graph reads .data of the Params4bit again and so
# re-enters it without end (RecursionError). Compiled code takes the NF4Weight an
# eager read cached (fuse reads every layer); a new read runs outside the graph.
_read_bnb_nf4_weight_eagerly = torch.compiler.disable(
    _bnb_nf4_weight, reason="reads a bitsandbytes quant_state; fuse(model) or one eager forward reads it first")


def _compiled_bnb_nf4_weight(layer, base) -> tuple[NF4Weight | None, str | None]:
    cached = layer.__dict__.get(_NF4_CACHE)
    state = getattr(base.weight, "quant_state", None)
    # bitsandbytes moves a quant_state to another device in place: compare devices too
    if cached is None or cached[0] is not state or cached[2].absmax.device != state.absmax.device:
        return _read_bnb_nf4_weight_eagerly(layer, base)
    return cached[2], None


def _is_sharded(tensor) -> bool:
    return type(tensor).__name__ == "DTensor"


def _sharding_reason(base, fusing: bool) -> str | None:
    """Why a sharded base weight cannot be read. FSDP2 gathers a weight in its
    module's forward: a base sharded by a parent is whole when the layer runs
    (so fusing judges it fine: None), one sharded on itself never is for us."""
    if type(base).__name__.startswith("FSDP"):  # fully_shard's class for the module it wraps
        return "the base weight is sharded by fully_shard on the base layer itself (shard its parents instead)"
    return None if fusing else "the base weight is sharded here (called outside its fully_shard parent's forward)"


def _base_weight(layer, fusing: bool = False):
    """(weight, bias, None), or (None, None, reason) where the fused op cannot read the base."""
    base = layer.get_base_layer()
    if isinstance(base, nn.Linear) and type(base).forward is nn.Linear.forward:
        if _is_sharded(base.weight):
            return None, None, _sharding_reason(base, fusing)
        return base.weight, base.bias, None
    if isinstance(base, NF4Linear):
        if _is_sharded(base.weight_packed):
            return None, None, _sharding_reason(base, fusing)
        if base.r > 0:
            return None, None, "the NF4Linear base has an adapter of its own"
        return base.weight, base.bias, None
    if type(base).__name__ == "Linear4bit":
        nf4, reason = (_compiled_bnb_nf4_weight if torch.compiler.is_compiling() else _bnb_nf4_weight)(layer, base)
        return (nf4, base.bias, None) if nf4 is not None else (None, None, reason)
    return None, None, f"base layer {type(base).__name__} (fused: nn.Linear, NF4Linear, bitsandbytes NF4 Linear4bit)"


def _active_adapters(layer) -> list:
    return [a for a in layer.active_adapters if a in layer.lora_A]


def _adapter_reason(layer, dropout_on: bool | None) -> str | None:
    """Why the active adapter cannot run fused, or None. ``dropout_on``: whether
    dropout acts (training); None asks about training with the configured dropout."""
    active = _active_adapters(layer)
    if len(active) != 1:
        return f"{len(active)} active adapters (the fused op runs one)"
    adapter = active[0]
    if layer.lora_bias.get(adapter, False):
        return "lora_bias"
    if getattr(layer, "fan_in_fan_out", False):
        return "fan_in_fan_out base"
    dropout = layer.lora_dropout[adapter]
    if not isinstance(dropout, (nn.Dropout, nn.Identity)):
        return f"dropout module {type(dropout).__name__}"
    variant = layer.lora_variant.get(adapter)
    if variant is not None and type(variant).__name__ != "DoraLinearVariant":
        return f"LoRA variant {type(variant).__name__}"
    p = dropout.p if isinstance(dropout, nn.Dropout) else 0.0
    if variant is not None and p > 0 and (dropout_on is None or dropout_on):
        # peft then runs the base GEMM twice, on x and on dropout(x)
        return "DoRA with lora_dropout > 0 (in training mode)"
    return None


def _fall_back(self, reason: str, original, x, args, kwargs):
    name = self.__dict__.get(_NAME, type(self).__name__)
    if self.__dict__.get(_STRICT):
        raise RuntimeError(f"loraops fuse(strict=True): LoRA layer {name} cannot run fused: {reason}")
    warned = self.__dict__[_WARNED]  # shared by the layers of one fuse(): one warning per reason
    if reason not in warned:
        warned.add(reason)
        warnings.warn(f"loraops: LoRA layer {name} runs peft's forward, not the fused op: {reason} "
                      "(warned once; other layers may fall back for the same reason)", stacklevel=3)
    return original(x, *args, **kwargs)


def _fused_forward(self, x, *args, **kwargs):
    original = self.__dict__[_ORIGINAL_FORWARD]
    if self.disable_adapters or self.merged:
        return original(x, *args, **kwargs)  # the base layer alone, as peft computes it
    if args or kwargs:
        return _fall_back(self, f"call arguments {sorted(kwargs) or 'positional'} (e.g. adapter_names)",
                          original, x, args, kwargs)
    active = _active_adapters(self)
    adapter = active[0] if len(active) == 1 else None
    dropout = self.lora_dropout[adapter] if adapter is not None else None
    training_dropout = isinstance(dropout, nn.Dropout) and dropout.training
    reason = _adapter_reason(self, training_dropout)
    if reason is not None:
        return _fall_back(self, reason, original, x, args, kwargs)
    weight, bias, reason = _base_weight(self)
    if reason is not None:
        return _fall_back(self, reason, original, x, args, kwargs)
    p = dropout.p if training_dropout else 0.0
    lora_A, lora_B = self.lora_A[adapter].weight, self.lora_B[adapter].weight
    if self.lora_variant.get(adapter) is not None:  # DoRA (the only variant _adapter_reason lets through)
        magnitude = self.lora_magnitude_vector[adapter].weight
        return dora_linear(x, weight, lora_A, lora_B, magnitude, self.scaling[adapter], bias)
    return lora_linear(x, weight, lora_A, lora_B, self.scaling[adapter], bias, p)


def _static_reason(layer) -> str | None:
    """Why a layer will run peft's forward in training, judged when fusing."""
    return _adapter_reason(layer, None) or _base_weight(layer, fusing=True)[2]


def fuse(model: nn.Module, strict: bool = False) -> FuseReport:
    """Route every peft LoRA layer of ``model`` through ``loraops.lora_linear``, in place.

    Returns a :class:`FuseReport`: the number of layers that run fused (an int;
    layers fused before are not counted again), and per layer ``None`` or the
    reason it runs peft's forward; ``print(report)`` lists them. With
    ``strict=True`` any such layer raises ``ValueError`` here (and nothing is
    fused), and a layer that cannot run fused at run time raises instead of
    falling back."""
    _require_module(model, "fuse")
    layer_types = _peft_lora_layer_types()
    layers = {name: module for name, module in model.named_modules()
              if isinstance(module, layer_types) and not is_fused(module)}
    reasons = {name: _static_reason(module) for name, module in layers.items()}
    if strict:
        refused = {name: reason for name, reason in reasons.items() if reason is not None}
        if refused:
            listing = "; ".join(f"{name}: {reason}" for name, reason in refused.items())
            raise ValueError(f"fuse(strict=True): {len(refused)} LoRA layer(s) cannot run fused: {listing}")
    warned = set()
    for name, module in layers.items():
        module.__dict__[_ORIGINAL_FORWARD] = module.forward
        module.__dict__["forward"] = types.MethodType(_fused_forward, module)
        module.__dict__[_NAME] = name
        module.__dict__[_STRICT] = bool(strict)
        module.__dict__[_WARNED] = warned
    return FuseReport(reasons)


def unfuse(model: nn.Module) -> int:
    """Undo :func:`fuse`: peft's own forward again. Returns the number of layers restored."""
    _require_module(model, "unfuse")
    count = 0
    for module in model.modules():
        if is_fused(module):
            original = module.__dict__.pop(_ORIGINAL_FORWARD)
            for key in (_NF4_CACHE, _NAME, _STRICT, _WARNED):
                module.__dict__.pop(key, None)
            if getattr(original, "__func__", None) is type(module).forward:
                del module.__dict__["forward"]  # the class's own method again
            else:
                module.__dict__["forward"] = original
            count += 1
    return count


def is_fused(module: nn.Module) -> bool:
    return _ORIGINAL_FORWARD in module.__dict__


_NF4_LORA_LINEAR = None


def _nf4_lora_linear_class():
    """peft's LoRA ``Linear`` over an ``NF4Linear`` base (peft is imported only here)."""
    global _NF4_LORA_LINEAR
    if _NF4_LORA_LINEAR is not None:
        return _NF4_LORA_LINEAR
    from peft.tuners.lora.layer import Linear
    from peft.tuners.tuners_utils import check_adapters_to_merge

    class NF4LoraLinear(Linear):
        """LoRA over a frozen ``NF4Linear``: peft's ``Linear``, whose base layer
        computes ``x W^T + b`` from the NF4 weight. Merging re-quantizes W."""

        def _get_in_out_features(self, module):
            return module.in_features, module.out_features  # peft would warn of an unknown layer type

        def resolve_lora_variant(self, *, config, **kwargs):
            variant = super().resolve_lora_variant(config=config, **kwargs)
            if variant is not None:
                raise ValueError(f"LoRA variant {type(variant).__name__} over an NF4Linear base is not supported "
                                 "(it needs the dense weight); use plain LoRA, or a bitsandbytes Linear4bit base")
            return None

        def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
            for adapter in check_adapters_to_merge(self, adapter_names):
                if adapter in self.lora_A:
                    self._add_to_weight(adapter, +1.0, safe_merge)
                    self.merged_adapters.append(adapter)

        def unmerge(self) -> None:
            if not self.merged:
                warnings.warn("Already unmerged. Nothing to do.")
                return
            while self.merged_adapters:
                adapter = self.merged_adapters.pop()
                if adapter in self.lora_A:
                    self._add_to_weight(adapter, -1.0, False)

        @torch.no_grad()
        def _add_to_weight(self, adapter, sign: float, check_finite: bool) -> None:
            base = self.get_base_layer()
            warnings.warn("Merging a LoRA adapter into an NF4 weight re-quantizes it: outputs change by the "
                          "rounding, and unmerging does not restore the original codes", stacklevel=3)
            weight = base.weight.dequantize(torch.float32) + sign * self.get_delta_weight(adapter).float()
            if check_finite and not torch.isfinite(weight).all():
                raise ValueError(f"NaNs detected in the merged weights. The adapter {adapter} seems to be broken")
            base.weight = quantize(weight.to(base.weight.dtype), blocksize=base.weight.blocksize,
                                   double_quant=base.weight.double_quant)
            if self.lora_bias[adapter]:
                base.bias += sign * self.lora_B[adapter].bias * self.scaling[adapter]

    NF4LoraLinear.__module__, NF4LoraLinear.__qualname__ = __name__, "NF4LoraLinear"
    _NF4_LORA_LINEAR = NF4LoraLinear
    return NF4LoraLinear


def register_nf4_linear(config):
    """Teach a peft ``LoraConfig`` to wrap ``loraops.nn.NF4Linear`` layers (the
    layers ``quantize_model`` makes) with LoRA; returns the config. Use it for
    ``get_peft_model`` and for ``PeftModel.from_pretrained(..., config=...)``."""
    register = getattr(config, "_register_custom_module", None)
    if not callable(register):
        raise TypeError(f"register_nf4_linear: config must be a peft LoraConfig, got {type(config).__name__}")
    register({NF4Linear: _nf4_lora_linear_class()})
    return config
