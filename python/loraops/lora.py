"""The LoRA matmul-plus-add, forward and backward, over a dense or NF4 base weight.

    out = x W^T + bias + scale * (dropout(x) A^T) B^T

``lora_linear`` is the function; autograd gives gradients for x, the adapters,
the bias, and a dense W when it requires grad. Dropout applies to the adapter's
input only, with a counter-based mask the backward regenerates (nothing stored).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from . import _autocast, _native  # noqa: F401  (_native registers the ops)
from ._checks import as_float, as_int, check_devices, require_tensor
from .nf4 import NF4Weight, _weight_parts

__all__ = ["lora_linear", "vera_linear", "lora_linear_multi", "dora_linear"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------- fake kernels
# Each checks devices as the C++ ops do: a meta operand among real ones would
# otherwise land here and get uninitialised memory back.
def _forward_fake(x, n, lora_A):
    rows = math.prod(x.shape[:-1])
    return x.new_empty((*x.shape[:-1], n)), x.new_empty((rows, lora_A.shape[0]), dtype=torch.float32)


@torch.library.register_fake("loraops::lora_linear")
def _lora_linear_fake(x, weight, bias, lora_A, lora_B, scale, dropout, seed):
    check_devices("lora_linear", "x", x, dict(weight=weight, bias=bias, lora_A=lora_A, lora_B=lora_B))
    return _forward_fake(x, weight.shape[0], lora_A)


@torch.library.register_fake("loraops::lora_linear_nf4")
def _lora_linear_nf4_fake(x, packed, absmax, nested_absmax, nested_code, offset, blocksize, nested_blocksize,
                          weight_shape, bias, lora_A, lora_B, scale, dropout, seed):
    parts = _weight_parts(packed, absmax, nested_absmax, nested_code, offset)
    check_devices("lora_linear", "x", x, dict(**parts, bias=bias, lora_A=lora_A, lora_B=lora_B))
    return _forward_fake(x, weight_shape[0], lora_A)


def _grad_or_empty(need, like):
    return torch.empty_like(like) if need else like.new_empty((0,))


@torch.library.register_fake("loraops::lora_linear_backward")
def _lora_linear_backward_fake(grad_out, x, weight, bias, lora_A, lora_B, xa, scale, dropout, seed, needs_grad):
    check_devices("lora_linear_backward", "x", x,
                  dict(grad_out=grad_out, weight=weight, bias=bias, lora_A=lora_A, lora_B=lora_B, xa=xa))
    bias_like = bias if bias is not None else x
    return tuple(_grad_or_empty(n, t) for n, t in zip(needs_grad, (x, weight, bias_like, lora_A, lora_B)))


@torch.library.register_fake("loraops::lora_linear_nf4_backward")
def _lora_linear_nf4_backward_fake(grad_out, x, packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                   nested_blocksize, weight_shape, bias, lora_A, lora_B, xa, scale, dropout, seed,
                                   needs_grad):
    parts = _weight_parts(packed, absmax, nested_absmax, nested_code, offset)
    check_devices("lora_linear_backward", "x", x,
                  dict(grad_out=grad_out, **parts, bias=bias, lora_A=lora_A, lora_B=lora_B, xa=xa))
    bias_like = bias if bias is not None else x
    return tuple(_grad_or_empty(n, t) for n, t in zip(needs_grad, (x, bias_like, lora_A, lora_B)))


# ----------------------------------------------------------------------------- autograd
# setup_context and backward get and return the op's arguments by position;
# these helpers name them from the op's schema instead.
def _argument_names(op) -> list:
    return [argument.name for argument in op.default._schema.arguments]


_DENSE_ARGS = _argument_names(torch.ops.loraops.lora_linear)
_NF4_ARGS = _argument_names(torch.ops.loraops.lora_linear_nf4)
_NF4_WEIGHT_PARTS = ("packed", "absmax", "nested_absmax", "nested_code", "offset")
_NF4_WEIGHT_ATTRS = ("blocksize", "nested_blocksize", "weight_shape")


def _needs_grad(ctx, names, args) -> dict:
    return {name: ctx.needs_input_grad[names.index(name)] for name in args}


def _grads_by_position(names, grads: dict) -> tuple:
    """The backward's result: grads[name] at the argument's position, None elsewhere."""
    return tuple(grads.get(name) for name in names)


def _saved_input(x, needs_x_itself: bool):
    """x when some gradient reads it (dA, dW); else a data-free stand-in with its
    shape and dtype. With a frozen A (LoRA-FA) the backward then keeps only
    xa = dropout(x) A^T, r columns, instead of x."""
    return x if needs_x_itself else x.new_zeros(()).expand(x.shape)


def _setup_dense(ctx, inputs, output):
    args = dict(zip(_DENSE_ARGS, inputs))
    ctx.needs = _needs_grad(ctx, _DENSE_ARGS, ("x", "weight", "bias", "lora_A", "lora_B"))
    x = _saved_input(args["x"], ctx.needs["weight"] or ctx.needs["lora_A"])
    ctx.save_for_backward(x, args["weight"], args["bias"], args["lora_A"], args["lora_B"], output[1])
    ctx.mark_non_differentiable(output[1])  # xa is saved state, not a result
    ctx.scale, ctx.dropout, ctx.seed = args["scale"], args["dropout"], args["seed"]


def _backward_dense(ctx, grad_out, _grad_xa):
    x, weight, bias, lora_A, lora_B, xa = ctx.saved_tensors
    needs = list(ctx.needs.values())
    grads = torch.ops.loraops.lora_linear_backward(
        grad_out.contiguous(), x, weight, bias, lora_A, lora_B, xa, scale=ctx.scale, dropout=ctx.dropout,
        seed=ctx.seed, needs_grad=needs,
    )
    return _grads_by_position(_DENSE_ARGS, {name: g for (name, need), g in zip(ctx.needs.items(), grads) if need})


torch.library.register_autograd("loraops::lora_linear", _backward_dense, setup_context=_setup_dense)


def _setup_nf4(ctx, inputs, output):
    args = dict(zip(_NF4_ARGS, inputs))
    ctx.needs = _needs_grad(ctx, _NF4_ARGS, ("x", "bias", "lora_A", "lora_B"))
    x = _saved_input(args["x"], ctx.needs["lora_A"])
    ctx.save_for_backward(x, *(args[name] for name in _NF4_WEIGHT_PARTS), args["bias"], args["lora_A"],
                          args["lora_B"], output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.weight_attrs = {name: args[name] for name in _NF4_WEIGHT_ATTRS}
    ctx.scale, ctx.dropout, ctx.seed = args["scale"], args["dropout"], args["seed"]


def _backward_nf4(ctx, grad_out, _grad_xa):
    x, *weight_parts, bias, lora_A, lora_B, xa = ctx.saved_tensors
    needs = list(ctx.needs.values())
    grads = torch.ops.loraops.lora_linear_nf4_backward(
        grad_out.contiguous(), x, *weight_parts, **ctx.weight_attrs, bias=bias, lora_A=lora_A, lora_B=lora_B,
        xa=xa, scale=ctx.scale, dropout=ctx.dropout, seed=ctx.seed, needs_grad=needs,
    )
    return _grads_by_position(_NF4_ARGS, {name: g for (name, need), g in zip(ctx.needs.items(), grads) if need})


torch.library.register_autograd("loraops::lora_linear_nf4", _backward_nf4, setup_context=_setup_nf4)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("loraops.lora_linear: double backward (gradients of gradients) is not supported")


torch.library.register_autograd("loraops::lora_linear_backward", _no_double_backward)
torch.library.register_autograd("loraops::lora_linear_nf4_backward", _no_double_backward)


# ----------------------------------------------------------------------------- API
def _new_seed() -> int:
    # From torch's generator, so torch.manual_seed makes runs reproducible.
    return int(torch.randint(-(2**62), 2**62, (), device="cpu").item())


def _weight_shape(where: str, weight) -> torch.Size:
    """The base weight's ``[out_features, in_features]``: a 2-D tensor or NF4Weight."""
    if not isinstance(weight, (torch.Tensor, NF4Weight)):
        raise TypeError(f"{where}: weight must be a tensor or an NF4Weight, got {type(weight).__name__}")
    if len(weight.shape) != 2:
        kind = "an NF4 weight" if isinstance(weight, NF4Weight) else "weight"
        raise ValueError(f"{where}: {kind} must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    return weight.shape


def _weight_tensor(weight) -> torch.Tensor:
    """The tensor whose device is the weight's."""
    return weight.packed if isinstance(weight, NF4Weight) else weight


def _check_adapter(where: str, x, weight, a_name: str, lora_A, b_name: str, lora_B) -> torch.Size:
    """For the functions that compute with the adapter in Python before the op
    (whose checks would come too late, or blame the wrong argument): x ``[..., in]``,
    A ``[r, in]`` and B ``[out, r]`` against the weight. Returns its shape."""
    shape = _weight_shape(where, weight)
    out_features, in_features = shape
    for name, t in (("x", x), (a_name, lora_A), (b_name, lora_B)):
        require_tensor(t, where, name)
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(f"{where}: x must have in_features = {in_features} as its last dimension, got shape "
                         f"{tuple(x.shape)}")
    if lora_A.dim() != 2 or lora_A.shape[1] != in_features:
        raise ValueError(f"{where}: {a_name} must be [r, {in_features}] (in_features of the weight), got "
                         f"{tuple(lora_A.shape)}")
    if lora_B.shape != (out_features, lora_A.shape[0]):
        raise ValueError(f"{where}: {b_name} must be [{out_features}, {lora_A.shape[0]}] (out_features of the "
                         f"weight, r of {a_name}), got {tuple(lora_B.shape)}")
    return shape


def lora_linear(
    x: torch.Tensor,
    weight,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scale: float,
    bias: Optional[torch.Tensor] = None,
    dropout: float = 0.0,
    *,
    seed: Optional[int] = None,
) -> torch.Tensor:
    """``x W^T + bias + scale * (dropout(x) A^T) B^T`` in one fused op.

    Args:
        x: ``[..., in_features]``, float32/bfloat16/float16.
        weight: dense ``[out_features, in_features]`` tensor, or an :class:`NF4Weight`
            (dequantized tile by tile inside the op, never whole).
        lora_A: ``[r, in_features]``; lora_B: ``[out_features, r]``.
        scale: the adapter scale (``alpha / r``, or ``alpha / sqrt(r)`` for rsLoRA).
        bias: optional ``[out_features]``.
        dropout: probability of zeroing an element of the adapter's input, in [0, 1).
        seed: the dropout mask's seed (an int64); drawn from torch's generator when omitted.

    Returns ``[..., out_features]`` in x's dtype. On CPU all arithmetic is fp32.
    Inside ``torch.autocast``, float32 x, weight and bias are cast to the
    autocast dtype first (the adapters are not), as ``F.linear`` would be.
    """
    require_tensor(x, "lora_linear", "x")
    _weight_shape("lora_linear", weight)
    scale = as_float(scale, "lora_linear", "scale")  # finite in float32: the op checks
    dropout = as_float(dropout, "lora_linear", "dropout")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"lora_linear: dropout must be in [0, 1), got {dropout}")
    if seed is None:
        seed = _new_seed() if dropout > 0 else 0
    seed = as_int(seed, "lora_linear", "seed")
    amp_dtype = _autocast.autocast_dtype(x.device.type)
    if amp_dtype is not None:
        x, bias = _autocast.cast(x, amp_dtype), _autocast.cast(bias, amp_dtype)
        if isinstance(weight, torch.Tensor):
            weight = _autocast.cast(weight, amp_dtype)
        with torch.autocast(x.device.type, enabled=False):
            return lora_linear(x, weight, lora_A, lora_B, scale, bias, dropout, seed=seed)
    if isinstance(weight, NF4Weight):
        # named here: the op would name the NF4 part (packed), not the argument
        check_devices("lora_linear", "x", x, {"weight": weight.packed})
        out, _ = torch.ops.loraops.lora_linear_nf4(
            x, **weight.op_arguments(), weight_shape=list(weight.shape), bias=bias, lora_A=lora_A, lora_B=lora_B,
            scale=scale, dropout=dropout, seed=seed,
        )
        return out
    out, _ = torch.ops.loraops.lora_linear(x, weight, bias=bias, lora_A=lora_A, lora_B=lora_B, scale=scale,
                                           dropout=dropout, seed=seed)
    return out


def vera_linear(
    x: torch.Tensor,
    weight,
    vera_A: torch.Tensor,
    vera_B: torch.Tensor,
    lambda_d: torch.Tensor,
    lambda_b: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    dropout: float = 0.0,
    *,
    seed: Optional[int] = None,
) -> torch.Tensor:
    """VeRA: ``x W^T + bias + ((dropout(x) A^T) * d) B^T * b`` with A ``[r, in]`` and
    B ``[out, r]`` frozen (shared across layers) and the vectors d ``[r]`` and
    b ``[out]`` trained. The same fused op, with the vectors folded into the
    adapter matrices (an ``r x in`` and an ``out x r`` product, nothing of x's size)."""
    _check_adapter("vera_linear", x, weight, "vera_A", vera_A, "vera_B", vera_B)
    require_tensor(lambda_d, "vera_linear", "lambda_d")
    require_tensor(lambda_b, "vera_linear", "lambda_b")
    if lambda_d.shape != (vera_A.shape[0],) or lambda_b.shape != (vera_B.shape[0],):
        raise ValueError(
            f"vera_linear: lambda_d must be [{vera_A.shape[0]}] and lambda_b [{vera_B.shape[0]}], "
            f"got {tuple(lambda_d.shape)} and {tuple(lambda_b.shape)}"
        )
    check_devices("vera_linear", "x", x, dict(weight=_weight_tensor(weight), vera_A=vera_A, vera_B=vera_B,
                                                 lambda_d=lambda_d, lambda_b=lambda_b, bias=bias))
    return lora_linear(x, weight, vera_A * lambda_d.unsqueeze(1), vera_B * lambda_b.unsqueeze(1), 1.0, bias,
                       dropout, seed=seed)


def _adapter_scales(scale, n: int) -> list:
    """lora_linear_multi's scale as n floats, each finite in float32 (the adapter
    products are fp32): a float, or n of them (a sequence, tensor or array)."""
    where = "lora_linear_multi"
    if hasattr(scale, "tolist"):  # a tensor or numpy array / scalar (devices are checked)
        scale = scale.tolist()
    if not isinstance(scale, (list, tuple)):
        return [as_float(scale, where, "scale", finite32=True)] * n
    if len(scale) != n:
        raise ValueError(f"{where}: scale must be a float or [{n}] per-adapter scales (one per adapter), got "
                         f"{len(scale)} values")
    return [as_float(v, where, f"scale[{i}]", finite32=True) for i, v in enumerate(scale)]


def lora_linear_multi(
    x: torch.Tensor,
    weight,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    adapter_index: torch.Tensor,
    scale,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Several adapters in one batch, for serving many adapters over one base model:
    row i of x (flattened to ``[rows, in]``) gets adapter ``adapter_index[i]`` from
    the stacks ``lora_A [n, r, in]`` and ``lora_B [n, out, r]`` (-1: base model
    only). ``scale`` is a float or ``[n]`` per-adapter scales. The base GEMM runs
    once for the whole batch; each adapter's low-rank product runs on its own rows."""
    where = "lora_linear_multi"
    for name, t in (("x", x), ("lora_A", lora_A), ("lora_B", lora_B), ("adapter_index", adapter_index)):
        require_tensor(t, where, name)
    out_features, _ = _weight_shape(where, weight)
    check_devices(where, "x", x, dict(weight=_weight_tensor(weight), lora_A=lora_A, lora_B=lora_B,
                                      adapter_index=adapter_index, bias=bias,
                                      scale=scale if isinstance(scale, torch.Tensor) else None), host_ok=("scale",))
    if x.device.type == "meta":  # which rows take which adapter depends on adapter_index's values
        raise RuntimeError(f"{where}: meta tensors are not supported (the rows of each adapter are data)")
    if x.dim() < 1:
        raise ValueError(f"{where}: x must be [..., in_features], got a 0-d tensor")
    k = x.shape[-1]
    if lora_A.dim() != 3 or lora_B.dim() != 3 or lora_A.shape[0] != lora_B.shape[0] or lora_A.shape[2] != k \
            or lora_B.shape[1] != out_features or lora_B.shape[2] != lora_A.shape[1]:
        raise ValueError(
            f"{where}: lora_A must be [n, r, {k}] and lora_B [n, {out_features}, r], got {tuple(lora_A.shape)} "
            f"and {tuple(lora_B.shape)}"
        )
    rows = x.reshape(-1, k)
    index = adapter_index.reshape(-1)
    if index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{where}: adapter_index must be int32 or int64, got {index.dtype}")
    if index.numel() != rows.shape[0]:
        raise ValueError(f"{where}: adapter_index must be {rows.shape[0]} integers (one per row of x), got "
                         f"{index.numel()}")
    n_adapters = lora_A.shape[0]
    if index.numel() and (int(index.min()) < -1 or int(index.max()) >= n_adapters):
        raise ValueError(f"{where}: adapter_index must be in [-1, {n_adapters}), got "
                         f"[{int(index.min())}, {int(index.max())}]")
    scales = _adapter_scales(scale, n_adapters)
    no_adapter_a = lora_A.new_empty((0, k))
    no_adapter_b = lora_B.new_empty((out_features, 0))
    out = lora_linear(rows, weight, no_adapter_a, no_adapter_b, 0.0, bias).float()
    order = torch.argsort(index, stable=True)
    adapters, counts = torch.unique_consecutive(index[order], return_counts=True)
    start = 0
    for adapter, count in zip(adapters.tolist(), counts.tolist()):
        segment = order[start:start + count]
        start += count
        if adapter < 0:
            continue
        x_seg = rows.index_select(0, segment).float()
        delta = (x_seg @ lora_A[adapter].float().t()) @ lora_B[adapter].float().t() * scales[adapter]
        out = out.index_add(0, segment, delta)
    return out.to(x.dtype).reshape(*x.shape[:-1], out_features)


@torch.no_grad()
def dora_weight_norm(weight, lora_A: torch.Tensor, lora_B: torch.Tensor, scale: float) -> torch.Tensor:
    """``||W + scale * B A||`` per output row (fp32 ``[out]``), without forming the
    ``out x in`` matrix: ``|W_n|^2 + 2 s (W A^T)_n . B_n + s^2 B_n (A A^T) B_n^T``.
    W is read once (``W A^T``, through the tiled op for an NF4 weight)."""
    a, b = lora_A.detach().float(), lora_B.detach().float()
    if isinstance(weight, NF4Weight):
        rows_sq = weight.row_norms_squared()
        no_a = a.new_empty((0, a.shape[1]))
        no_b = a.new_empty((weight.shape[0], 0))
        w_at = lora_linear(a, weight, no_a, no_b, 0.0).t()  # (A W^T)^T = W A^T, dequantized tile by tile
    else:
        w = weight.detach().float()
        rows_sq = w.double().pow(2).sum(1)
        w_at = w @ a.t()
    cross = (w_at.double() * b.double()).sum(1)
    lora_sq = ((b.double() @ (a.double() @ a.double().t())) * b.double()).sum(1)
    return (rows_sq + 2 * scale * cross + scale**2 * lora_sq).clamp_min(0).sqrt().float()


def dora_linear(
    x: torch.Tensor,
    weight,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    magnitude: torch.Tensor,
    scale: float,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """DoRA: ``m / ||W + s B A||_row * (x W^T + s (x A^T) B^T) + bias``, the norm
    treated as a constant in the backward (the DoRA paper's section 4.3, as peft
    does). The same fused op computes the parenthesis; magnitude ``m`` is ``[out]``."""
    where = "dora_linear"
    out_features, _ = _check_adapter(where, x, weight, "lora_A", lora_A, "lora_B", lora_B)
    scale = as_float(scale, where, "scale", finite32=True)  # the norm uses it before the op could check it
    require_tensor(magnitude, where, "magnitude")
    if magnitude.shape != (out_features,):
        raise ValueError(f"{where}: magnitude must be [{out_features}], got {tuple(magnitude.shape)}")
    # the bias is added here, not by the op: a [1] one would broadcast
    if bias is not None and require_tensor(bias, where, "bias").shape != (out_features,):
        raise ValueError(f"{where}: bias must be [{out_features}], got {tuple(bias.shape)}")
    check_devices(where, "x", x, dict(weight=_weight_tensor(weight), lora_A=lora_A, lora_B=lora_B,
                                      magnitude=magnitude, bias=bias))
    column_scale = magnitude.float() / dora_weight_norm(weight, lora_A, lora_B, scale)
    directional = lora_linear(x, weight, lora_A, lora_B, scale, None, 0.0)
    out = directional.float() * column_scale
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)
