"""Shifted short attention (LongLoRA's S2-Attn) in transformers models.

    model = AutoModelForCausalLM.from_pretrained(...)
    loraops.integrations.transformers.enable_s2_attention(model, group_size_ratio=0.25)
    lora_config = peft.LoraConfig(..., modules_to_save=longlora_modules_to_save(model))
    model = peft.get_peft_model(model, lora_config)
    loraops.integrations.transformers.mark_embeddings_and_norms_trainable(model)
    ...train on long sequences...
    loraops.integrations.transformers.disable_s2_attention(model)

``enable_s2_attention`` registers an attention function through transformers'
``AttentionInterface`` and switches the model to it. As LongLoRA prescribes, the
model then uses S2-Attn in training mode (groups of ``int(N * group_size_ratio)``
tokens) and its own attention in eval mode, so inference sees full attention.
The model's former implementation (``sdpa`` or ``eager``) serves eval mode and
builds the masks. Works with Llama- and Qwen2-family models (any model whose
attention calls ``ALL_ATTENTION_FUNCTIONS``). Training-mode calls use the model's
own attention instead when S2-Attn does not apply: with a KV cache, on a
sliding-window layer, or for a single token.

Padding must be on the right; its lengths are read from the attention mask.
Under ``torch.compile`` (``fullgraph=True`` works) the lengths stay on the
device: nothing is read on the host, so a batch padded otherwise is caught by
the attention op when the graph runs, as a ``ValueError`` on ``seqlens`` (such a
sample gets length -1), rather than by the check that names right padding.
Attention dropout, logit soft-capping, attention sinks and position biases are
not supported in training mode (they raise).
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from .._checks import as_float
from ..s2attn import s2_attention

__all__ = ["enable_s2_attention", "disable_s2_attention", "mark_embeddings_and_norms_trainable",
           "longlora_modules_to_save", "quantize_model", "load_quantized_model", "S2_ATTENTION_PREFIX"]

S2_ATTENTION_PREFIX = "loraops_s2_"
_SETTINGS = "_loraops_s2_settings"
_SUPPORTED_ORIGINALS = ("sdpa", "eager")


@dataclass(frozen=True)
class _Settings:
    group_size_ratio: float
    mode: str
    original: str


def _base_model(model: nn.Module, where: str) -> nn.Module:
    """The transformers model (inside a peft one), which must have a config."""
    get_base = getattr(model, "get_base_model", None)  # peft.PeftModel
    base = get_base() if callable(get_base) else model
    if not isinstance(base, nn.Module) or not hasattr(getattr(base, "config", None), "_attn_implementation") \
            or not callable(getattr(base, "set_attn_implementation", None)):
        raise TypeError(f"{where}: model must be a transformers model (or a peft model around one), with a config "
                        f"naming its attention implementation; got a {type(base).__name__} without one")
    return base


def _original_attention(module: nn.Module, original: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if original == "eager":
        # The model's own eager function lives in its modeling file.
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[original]


# Every layer of one forward gets the same mask object: its lengths are read
# once (the reading ends in a device-to-host copy) and reused while the mask
# is unchanged.
_last_lengths: dict = {}


def _seqlens_from_mask(mask: torch.Tensor | None, batch: int, n: int) -> torch.Tensor | None:
    if mask is None:
        return None
    if torch.compiler.is_compiling():
        # Host reads (and this cache's weak reference) would break the graph;
        # the compiler computes the lengths in the graph instead, once per
        # layer (cheap: a sum over [B, N]).
        return _traced_seqlens(mask, batch, n)
    key = (mask._version, batch, n)
    cached = _last_lengths.get("mask")
    if cached is not None and cached() is mask and _last_lengths["key"] == key:
        return _last_lengths["seqlens"]
    seqlens = _read_seqlens(mask, batch, n)
    _last_lengths.update(mask=weakref.ref(mask), key=key, seqlens=seqlens)
    return seqlens


def _mask_lengths(mask: torch.Tensor, batch: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample lengths [B] from a 4-D [B, 1, N, N] mask (bool: True = attend;
    float: 0 = attend), and whether each sample is right padded. The last query
    row of a causal mask allows exactly the sample's keys; with right padding
    they are a prefix. Tensor ops only, so torch.compile traces it."""
    if mask.dim() != 4 or mask.shape[-1] != n or mask.shape[-2] != n:
        raise ValueError(f"S2-Attn: expected a [batch, 1, {n}, {n}] attention mask, got shape {tuple(mask.shape)}")
    last_row = mask[:, 0, -1, :]
    allowed = last_row if mask.dtype == torch.bool else last_row == 0
    allowed = allowed.expand(batch, n)
    lengths = allowed.sum(dim=-1)
    prefix = torch.arange(n, device=mask.device).unsqueeze(0) < lengths.unsqueeze(1)
    return lengths, (allowed == prefix).all(dim=-1)


def _read_seqlens(mask: torch.Tensor, batch: int, n: int) -> torch.Tensor | None:
    """The lengths on the host, or None without padding; a batch not right padded raises."""
    lengths, right_padded = _mask_lengths(mask, batch, n)
    if not bool(right_padded.all()):
        raise ValueError("S2-Attn needs right padding (tokens first, padding last); this batch is padded otherwise")
    return None if bool((lengths == n).all()) else lengths.to(torch.int64).cpu()


def _traced_seqlens(mask: torch.Tensor, batch: int, n: int) -> torch.Tensor:
    """The lengths as a device tensor, always (all-full lengths compute the same
    as None). Checking right padding here would need a host read, a graph break;
    a sample padded otherwise gets length -1 instead, which the op refuses
    (ValueError) when the graph runs."""
    lengths, right_padded = _mask_lengths(mask, batch, n)
    return torch.where(right_padded, lengths, -1)


def _make_attention(original: str):
    def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                  sliding_window=None, **kwargs):
        settings: _Settings | None = getattr(module, _SETTINGS, None)
        n = query.shape[2]
        use_s2 = (settings is not None and module.training and key.shape[2] == n and n > 1
                  and sliding_window is None)
        if not use_s2:
            return _original_attention(module, original)(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                sliding_window=sliding_window, **kwargs)
        if dropout:
            raise ValueError("S2-Attn does not support attention dropout; set the config's attention_dropout to 0")
        unsupported = [name for name in ("softcap", "s_aux", "position_bias") if kwargs.get(name) is not None]
        if unsupported:
            raise ValueError(f"S2-Attn does not support this model's attention extras: {', '.join(unsupported)}")
        group = max(1, int(n * settings.group_size_ratio))
        seqlens = _seqlens_from_mask(attention_mask, query.shape[0], n)
        # [B, H, N, D] -> [B, N, H, D] views: the op reads any strides.
        out = s2_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), group,
                           mode=settings.mode, causal=True, seqlens=seqlens, scale=scaling)
        return out, None

    return attention


def _register(original: str) -> str:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    name = S2_ATTENTION_PREFIX + original
    if name not in ALL_ATTENTION_FUNCTIONS.valid_keys():
        AttentionInterface.register(name, _make_attention(original))
        mask_fn = ALL_MASK_ATTENTION_FUNCTIONS[original]
        type(ALL_MASK_ATTENTION_FUNCTIONS).register(name, mask_fn)
    return name


def _attention_modules(model: nn.Module) -> Iterable[nn.Module]:
    for module in model.modules():
        if type(module).__name__.endswith("Attention") and hasattr(module, "config"):
            yield module


def enable_s2_attention(model: nn.Module, group_size_ratio: float = 0.25, mode: str = "segments") -> nn.Module:
    """Switch a transformers model (or a peft model around one) to S2-Attn in
    training mode. ``group_size_ratio``: group size as a fraction of the
    sequence length (LongLoRA uses 1/4). ``mode``: ``"segments"`` (LongLoRA's
    flash path, no wrap-around) or ``"roll"`` (its eager path). Returns the model."""
    group_size_ratio = as_float(group_size_ratio, "enable_s2_attention", "group_size_ratio")
    if not 0.0 < group_size_ratio <= 1.0:
        raise ValueError(f"enable_s2_attention: group_size_ratio must be in (0, 1], got {group_size_ratio}")
    if mode not in ("segments", "roll"):
        raise ValueError(f"enable_s2_attention: mode must be 'segments' or 'roll', got {mode!r}")
    base = _base_model(model, "enable_s2_attention")
    current = base.config._attn_implementation
    original = current[len(S2_ATTENTION_PREFIX):] if str(current).startswith(S2_ATTENTION_PREFIX) else current
    if original not in _SUPPORTED_ORIGINALS:
        raise ValueError(f"enable_s2_attention: the model uses attention {original!r}; "
                         f"S2-Attn wraps one of {_SUPPORTED_ORIGINALS} (load it with attn_implementation='sdpa')")
    modules = list(_attention_modules(base))
    if not modules:
        raise ValueError("enable_s2_attention: found no attention modules in this model")
    settings = _Settings(group_size_ratio, mode, original)
    for module in modules:
        setattr(module, _SETTINGS, settings)
    base.set_attn_implementation(_register(original))
    return model


def disable_s2_attention(model: nn.Module) -> nn.Module:
    """Undo ``enable_s2_attention``: the model's former attention everywhere."""
    base = _base_model(model, "disable_s2_attention")
    current = base.config._attn_implementation
    if str(current).startswith(S2_ATTENTION_PREFIX):
        base.set_attn_implementation(current[len(S2_ATTENTION_PREFIX):])
    for module in _attention_modules(base):
        if hasattr(module, _SETTINGS):
            delattr(module, _SETTINGS)
    return model


def _checked_keys(keys, what: str) -> tuple:
    # a lone str would be iterated letter by letter, matching nearly every name
    keys = tuple(keys) if not isinstance(keys, str) and isinstance(keys, Iterable) else None
    if keys is None or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"{what}: keys must be an iterable of str, e.g. (\"embed\",)")
    return keys


# What peft names the frozen original inside a module it trains a copy of (modules_to_save).
_PEFT_ORIGINAL = ".original_module."
_PEFT_TRAINED_COPY = ".modules_to_save."


def longlora_modules_to_save(model: nn.Module, keys: Iterable[str] = ("embed", "norm")) -> list[str]:
    """The ``modules_to_save`` of a peft ``LoraConfig`` for LongLoRA's recipe: the
    modules (by their last name) holding the parameters ``mark_embeddings_and_norms_trainable``
    trains, so that peft trains them and ``save_pretrained`` writes them with the
    adapters. Call it on the model before ``get_peft_model``."""
    keys = _checked_keys(keys, "longlora_modules_to_save")
    names = set()
    for name, param in model.named_parameters():
        if any(k in name for k in keys) and param.is_floating_point() and "." in name:
            names.add(name.rsplit(".", 2)[-2])  # "model.layers.0.input_layernorm.weight" -> "input_layernorm"
    return sorted(names)


def mark_embeddings_and_norms_trainable(model: nn.Module, keys: Iterable[str] = ("embed", "norm")) -> list[str]:
    """LongLoRA's recipe: next to the LoRA adapters, train the embeddings and the
    normalization layers (parameters whose name contains one of ``keys``).
    Returns the names of the parameters it marked.

    On a peft model, only a module listed in the adapter's ``modules_to_save``
    (``longlora_modules_to_save``) is written by ``save_pretrained``; the others
    would train and be lost on saving, so they draw a warning. Of a module peft
    trains a copy of, the copy is marked, never its frozen original."""
    keys = _checked_keys(keys, "mark_embeddings_and_norms_trainable")
    marked = []
    for name, param in model.named_parameters():
        if any(k in name for k in keys) and param.is_floating_point() and _PEFT_ORIGINAL not in name:
            param.requires_grad_(True)
            marked.append(name)
    if hasattr(model, "peft_config"):
        unsaved = [name for name in marked if _PEFT_TRAINED_COPY not in name]
        if unsaved:
            import warnings

            warnings.warn(f"mark_embeddings_and_norms_trainable: {len(unsaved)} trained tensor(s) (e.g. {unsaved[0]}) "
                          "are not in the adapter's modules_to_save, so save_pretrained will not write them; create "
                          "the adapter with peft.LoraConfig(modules_to_save=longlora_modules_to_save(model))",
                          stacklevel=2)
    return marked


# ----------------------------------------------------------------------------- QLoRA: NF4 base models

def _skipped(name: str, skip: tuple) -> bool:
    """A skip entry names a module by its full name or its last names ("lm_head",
    "mlp.down_proj"), or a parent whose linears all stay dense."""
    return any(name == key or name.endswith("." + key) or f".{key}." in f".{name}" for key in skip)


def _replace_linears(model: nn.Module, skip: tuple, make) -> int:
    count = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if type(child) is nn.Linear and not _skipped(name, skip):
                setattr(parent, child_name, make(child))
                count += 1
    return count


def quantize_model(model: nn.Module, blocksize: int = 64, double_quant: bool = True,
                   skip: Iterable[str] = ("lm_head",)) -> nn.Module:
    """QLoRA's base model: every ``nn.Linear`` of a transformers model (except
    those ``skip`` names: a module's name, its last names, or a parent's) becomes
    a frozen :class:`loraops.nn.NF4Linear`, in place, biases kept. Returns the model.

    peft wraps the NF4 layers with LoRA once the config is registered
    (``loraops.integrations.peft.register_nf4_linear``), and ``fuse`` runs them
    fused. The model's config records a bitsandbytes 4-bit quantization, so its
    ``save_pretrained`` checkpoint loads with :func:`load_quantized_model` and, where
    bitsandbytes is installed, with transformers' ``from_pretrained``."""
    from ..nn import NF4Linear

    _require_model(model, "quantize_model")
    skip = _checked_keys(skip, "quantize_model")
    dtypes = {child.weight.dtype for child in model.modules() if type(child) is nn.Linear}
    count = _replace_linears(model, skip, lambda linear: NF4Linear.from_linear(
        linear, blocksize=blocksize, double_quant=double_quant))
    if count == 0:
        raise ValueError("quantize_model: found no nn.Linear to quantize (all skipped, or quantized already)")
    config = getattr(model, "config", None)
    if config is not None:
        from transformers import BitsAndBytesConfig

        compute_dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
        config.quantization_config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=list(skip)).to_dict()
    return model


def _require_model(model, where: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be an nn.Module (a transformers model), got {type(model).__name__}")


class _ParametersOnMeta:
    """Modules built inside allocate their parameters on the meta device (no
    memory, no initialisation); buffers stay real, as rotary tables need."""

    def __enter__(self):
        self._register = nn.Module.register_parameter

        def register_on_meta(module, name, param):
            self._register(module, name, param)
            if param is not None:
                moved = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
                module._parameters[name] = moved

        nn.Module.register_parameter = register_on_meta
        return self

    def __exit__(self, *exc):
        nn.Module.register_parameter = self._register


def load_quantized_model(path, model_class=None) -> nn.Module:
    """Load a checkpoint of a model quantized by :func:`quantize_model` (or any
    bitsandbytes NF4 checkpoint in safetensors) with ``NF4Linear`` layers, without
    bitsandbytes. ``model_class``: a transformers class (default
    ``AutoModelForCausalLM``). The layers are built empty and take the stored
    tensors as they are: nothing is quantized again."""
    import glob
    import os

    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..nn import NF4Linear

    config = AutoConfig.from_pretrained(path)
    quantization = getattr(config, "quantization_config", None)
    quantization = quantization.to_dict() if hasattr(quantization, "to_dict") else quantization
    if not isinstance(quantization, dict) or not quantization.get("load_in_4bit") \
            or quantization.get("bnb_4bit_quant_type") != "nf4":
        raise ValueError(f"load_quantized_model: {path} holds no NF4 4-bit model (its config's "
                         f"quantization_config is {quantization!r})")
    files = sorted(glob.glob(os.path.join(str(path), "*.safetensors")))
    if not files:
        raise ValueError(f"load_quantized_model: no .safetensors files in {path}")
    del config.quantization_config  # the model is built plain, then its linears made NF4
    with _ParametersOnMeta():
        model = (model_class or AutoModelForCausalLM).from_config(config)
        skip = tuple(quantization.get("llm_int8_skip_modules") or ())
        _replace_linears(model, skip, lambda linear: NF4Linear.from_linear(
            linear, blocksize=64, double_quant=bool(quantization.get("bnb_4bit_use_double_quant"))))
    state = {}
    for file in files:
        state.update(load_file(file))
    model.load_state_dict(state, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    for module in model.modules():
        if isinstance(module, NF4Linear):  # the empty adapter buffers of r = 0 were built on meta
            for name, buffer in module.named_buffers(recurse=False):
                if buffer.is_meta and buffer.numel() == 0:
                    setattr(module, name, torch.empty_like(buffer, device=module.weight.device))
    left = [name for name, p in model.named_parameters() if p.is_meta]
    left += [name for name, m in model.named_modules() if isinstance(m, NF4Linear) and m.weight.device.type == "meta"]
    if left:
        raise ValueError(f"load_quantized_model: {path} lacks {len(left)} tensor(s), e.g. {left[0]}")
    config.quantization_config = quantization
    return model.eval()
