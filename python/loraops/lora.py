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
from .nf4 import NF4Weight

__all__ = ["lora_linear", "vera_linear", "lora_linear_multi", "dora_linear"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------- fake kernels
def _forward_fake(x, n, lora_A):
    rows = math.prod(x.shape[:-1])
    return x.new_empty((*x.shape[:-1], n)), x.new_empty((rows, lora_A.shape[0]), dtype=torch.float32)


@torch.library.register_fake("loraops::lora_linear")
def _lora_linear_fake(x, weight, bias, lora_A, lora_B, scale, dropout, seed):
    return _forward_fake(x, weight.shape[0], lora_A)


@torch.library.register_fake("loraops::lora_linear_nf4")
def _lora_linear_nf4_fake(x, packed, absmax, nested_absmax, nested_code, offset, blocksize, nested_blocksize,
                          weight_shape, bias, lora_A, lora_B, scale, dropout, seed):
    return _forward_fake(x, weight_shape[0], lora_A)


def _grad_or_empty(need, like):
    return torch.empty_like(like) if need else like.new_empty((0,))


@torch.library.register_fake("loraops::lora_linear_backward")
def _lora_linear_backward_fake(grad_out, x, weight, bias, lora_A, lora_B, xa, scale, dropout, seed, needs_grad):
    bias_like = bias if bias is not None else x
    return tuple(_grad_or_empty(n, t) for n, t in zip(needs_grad, (x, weight, bias_like, lora_A, lora_B)))


@torch.library.register_fake("loraops::lora_linear_nf4_backward")
def _lora_linear_nf4_backward_fake(grad_out, x, packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                   nested_blocksize, weight_shape, bias, lora_A, lora_B, xa, scale, dropout, seed,
                                   needs_grad):
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
        seed: the dropout mask's seed; drawn from torch's generator when omitted.

    Returns ``[..., out_features]`` in x's dtype. On CPU all arithmetic is fp32.
    Inside ``torch.autocast``, float32 x, weight and bias are cast to the
    autocast dtype first (the adapters are not), as ``F.linear`` would be.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"lora_linear: x must be a torch.Tensor, got {type(x).__name__}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"lora_linear: dropout must be in [0, 1), got {dropout}")
    dropout = float(dropout)
    if seed is None:
        seed = _new_seed() if dropout > 0 else 0
    amp_dtype = _autocast.autocast_dtype(x.device.type)
    if amp_dtype is not None:
        x, bias = _autocast.cast(x, amp_dtype), _autocast.cast(bias, amp_dtype)
        if isinstance(weight, torch.Tensor):
            weight = _autocast.cast(weight, amp_dtype)
        with torch.autocast(x.device.type, enabled=False):
            return lora_linear(x, weight, lora_A, lora_B, scale, bias, dropout, seed=seed)
    if isinstance(weight, NF4Weight):
        if len(weight.shape) != 2:
            raise ValueError(f"lora_linear: an NF4 weight must be 2-D, got shape {tuple(weight.shape)}")
        out, _ = torch.ops.loraops.lora_linear_nf4(
            x, **weight.op_arguments(), weight_shape=list(weight.shape), bias=bias, lora_A=lora_A, lora_B=lora_B,
            scale=float(scale), dropout=dropout, seed=int(seed),
        )
        return out
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"lora_linear: weight must be a tensor or an NF4Weight, got {type(weight).__name__}")
    out, _ = torch.ops.loraops.lora_linear(x, weight, bias=bias, lora_A=lora_A, lora_B=lora_B, scale=float(scale),
                                           dropout=dropout, seed=int(seed))
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
    if lambda_d.shape != (vera_A.shape[0],) or lambda_b.shape != (vera_B.shape[0],):
        raise ValueError(
            f"vera_linear: lambda_d must be [{vera_A.shape[0]}] and lambda_b [{vera_B.shape[0]}], "
            f"got {tuple(lambda_d.shape)} and {tuple(lambda_b.shape)}"
        )
    return lora_linear(x, weight, vera_A * lambda_d.unsqueeze(1), vera_B * lambda_b.unsqueeze(1), 1.0, bias,
                       dropout, seed=seed)


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
    k = x.shape[-1]
    if lora_A.dim() != 3 or lora_B.dim() != 3 or lora_A.shape[0] != lora_B.shape[0] or lora_A.shape[2] != k \
            or lora_B.shape[2] != lora_A.shape[1]:
        raise ValueError(
            f"lora_linear_multi: lora_A must be [n, r, {k}] and lora_B [n, out, r], got {tuple(lora_A.shape)} "
            f"and {tuple(lora_B.shape)}"
        )
    rows = x.reshape(-1, k)
    index = adapter_index.reshape(-1)
    if index.numel() != rows.shape[0] or index.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"lora_linear_multi: adapter_index must be {rows.shape[0]} integers (one per row of x), got "
            f"{index.numel()} of {index.dtype}"
        )
    n_adapters = lora_A.shape[0]
    if index.numel() and (int(index.min()) < -1 or int(index.max()) >= n_adapters):
        raise ValueError(f"lora_linear_multi: adapter_index must be in [-1, {n_adapters}), got "
                         f"[{int(index.min())}, {int(index.max())}]")
    scales = torch.as_tensor(scale, dtype=torch.float32).expand(n_adapters)
    no_adapter_a = lora_A.new_empty((0, k))
    no_adapter_b = lora_B.new_empty((lora_B.shape[1], 0))
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
    return out.to(x.dtype).reshape(*x.shape[:-1], lora_B.shape[1])


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
    if magnitude.shape != (lora_B.shape[0],):
        raise ValueError(f"dora_linear: magnitude must be [{lora_B.shape[0]}], got {tuple(magnitude.shape)}")
    column_scale = magnitude.float() / dora_weight_norm(weight, lora_A, lora_B, scale)
    directional = lora_linear(x, weight, lora_A, lora_B, scale, None, 0.0)
    out = directional.float() * column_scale
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)
