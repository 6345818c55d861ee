"""NF4 quantization with double quantization (QLoRA), in bitsandbytes' format.

``quantize`` turns a float tensor into an :class:`NF4Weight`; ``dequantize``
turns it back. The layout is bitsandbytes' bit for bit, and
:meth:`NF4Weight.to_bnb_state_dict` / :meth:`NF4Weight.from_bnb_state_dict`
read and write its state-dict keys, so checkpoints move both ways.
"""

from __future__ import annotations

import json
import math
from typing import Mapping, Optional

import torch

from . import _native  # noqa: F401  (registers the ops)
from ._checks import INT64_MAX, as_bool, as_int, check_devices, fits_float32, require_tensor
from .nf4_reference import NF4_CODE, dynamic_code

__all__ = ["NF4Weight", "quantize", "dequantize", "NF4_CODE", "dynamic_code"]

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_NESTED_BLOCKSIZE = 256
_BNB_QUANT_STATE_KEY = "quant_state.bitsandbytes__nf4"
# Every key of a bitsandbytes NF4 weight, after "{prefix}weight".
_BNB_WEIGHT_SUFFIXES = ("", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", f".{_BNB_QUANT_STATE_KEY}")


def _weight_parts(packed, absmax, nested_absmax, nested_code, offset) -> dict:
    """An NF4 weight's tensors by name, for check_devices."""
    return dict(packed=packed, absmax=absmax, nested_absmax=nested_absmax, nested_code=nested_code, offset=offset)


# ----------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("loraops::nf4_quantize")
def _nf4_quantize_fake(input, blocksize, double_quant):
    n = input.numel()
    blocks = -(-n // blocksize)
    packed = input.new_empty(((n + 1) // 2,), dtype=torch.uint8)
    if double_quant:
        return (
            packed,
            input.new_empty((blocks,), dtype=torch.uint8),
            input.new_empty((-(-blocks // _NESTED_BLOCKSIZE),), dtype=torch.float32),
            input.new_empty((), dtype=torch.float32),
        )
    return (
        packed,
        input.new_empty((blocks,), dtype=torch.float32),
        input.new_empty((0,), dtype=torch.float32),
        input.new_empty((), dtype=torch.float32),
    )


@torch.library.register_fake("loraops::nf4_dequantize")
def _nf4_dequantize_fake(
    packed, absmax, nested_absmax, nested_code, offset, blocksize, nested_blocksize, shape, dtype
):
    parts = _weight_parts(packed, absmax, nested_absmax, nested_code, offset)
    check_devices("nf4_dequantize", "packed", packed, parts)
    return packed.new_empty(shape, dtype=dtype)


@torch.library.register_fake("loraops::nf4_dequantize_into")
def _nf4_dequantize_into_fake(packed, absmax, nested_absmax, nested_code, offset, blocksize, nested_blocksize, out):
    parts = _weight_parts(packed, absmax, nested_absmax, nested_code, offset)
    check_devices("nf4_dequantize", "packed", packed, {**parts, "out": out})
    return None


def bnb_state_dict(prefix: str, packed_column, absmax, nested_absmax, nested_code, offset, *, blocksize: int,
                   nested_blocksize: int, shape, dtype) -> dict:
    """bitsandbytes' state-dict entries for an NF4 weight's tensors, taken as
    they are (``packed_column``: the codes as ``[bytes, 1]``); they may be shards
    of a sharded model, only the offset's value is read."""
    if nested_absmax is not None and offset.device.type == "meta":
        raise RuntimeError("to_bnb_state_dict: the weight is on meta: its offset has no value for nested_offset")
    w = f"{prefix}weight"
    state = {"quant_type": "nf4", "blocksize": blocksize, "dtype": _DTYPE_NAMES[dtype], "shape": list(shape)}
    sd = {
        w: packed_column,
        f"{w}.absmax": absmax,
        f"{w}.quant_map": NF4_CODE.to(absmax.device, copy=True),  # not the module's constant: callers may write
    }
    if nested_absmax is not None:
        sd[f"{w}.nested_absmax"] = nested_absmax
        sd[f"{w}.nested_quant_map"] = nested_code
        state.update(nested_blocksize=nested_blocksize, nested_dtype="float32", nested_offset=float(offset.item()))
    payload = json.dumps(state).encode("utf-8")
    sd[f"{w}.{_BNB_QUANT_STATE_KEY}"] = torch.tensor(list(payload), dtype=torch.uint8)
    return sd


# ----------------------------------------------------------------------------- NF4Weight
class NF4Weight:
    """A tensor quantized to NF4, with its quantization state.

    Attributes:
        packed: uint8 ``[(numel + 1) // 2]``, element ``2j`` in the high nibble.
        absmax: per-block scale: uint8 codes with double quantization, else float32.
        nested_absmax, nested_code, offset: the double-quantization state (``None`` without it).
        blocksize, nested_blocksize: block sizes of the two levels.
        shape, dtype: shape and dtype of the original tensor.
    """

    __slots__ = (
        "packed", "absmax", "nested_absmax", "nested_code", "offset",
        "blocksize", "nested_blocksize", "shape", "dtype", "_row_norms",
    )

    def __init__(
        self,
        packed: torch.Tensor,
        absmax: torch.Tensor,
        *,
        blocksize: int,
        shape,
        dtype: torch.dtype,
        nested_absmax: Optional[torch.Tensor] = None,
        nested_code: Optional[torch.Tensor] = None,
        offset: Optional[torch.Tensor] = None,
        nested_blocksize: int = _NESTED_BLOCKSIZE,
    ):
        parts = _weight_parts(packed, absmax, nested_absmax, nested_code, offset)
        for name, t in parts.items():
            if t is not None or name in ("packed", "absmax"):
                require_tensor(t, "NF4Weight", name)
        if len({nested_absmax is None, nested_code is None, offset is None}) != 1:
            raise ValueError("NF4Weight: nested_absmax, nested_code and offset must be given together "
                             "(double quantization) or not at all")
        check_devices("NF4Weight", "packed", packed, parts)
        if dtype not in _FLOAT_DTYPES:
            raise TypeError(f"NF4Weight: dtype must be float32, bfloat16 or float16, got {dtype}")
        try:
            dims = list(shape)
        except TypeError:
            raise TypeError(f"NF4Weight: shape must be a sequence of ints, got {type(shape).__name__}") from None
        self.packed = packed
        self.absmax = absmax
        self.nested_absmax = nested_absmax
        self.nested_code = nested_code
        self.offset = offset
        self.blocksize = as_int(blocksize, "NF4Weight", "blocksize")
        self.nested_blocksize = as_int(nested_blocksize, "NF4Weight", "nested_blocksize", 1)
        self.shape = torch.Size(as_int(d, "NF4Weight", "shape", 0) for d in dims)
        self.dtype = dtype
        self._row_norms = None  # cache for row_norms_squared()

    @property
    def double_quant(self) -> bool:
        return self.nested_absmax is not None

    @property
    def device(self) -> torch.device:
        return self.packed.device

    def numel(self) -> int:
        return math.prod(self.shape)

    def op_arguments(self) -> dict:
        """The quantization state as the ops' keyword arguments (``packed`` ...
        ``nested_blocksize``), the one place the Python side spells them out."""
        return dict(packed=self.packed, absmax=self.absmax, nested_absmax=self.nested_absmax,
                    nested_code=self.nested_code, offset=self.offset, blocksize=self.blocksize,
                    nested_blocksize=self.nested_blocksize)

    def _tensors(self) -> dict:
        names = ("packed", "absmax", "nested_absmax", "nested_code", "offset")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    @property
    def nbytes(self) -> int:
        """Bytes of storage: packed codes plus every scale (about 4.127 bits per weight
        with double quantization and blocksize 64)."""
        return sum(t.numel() * t.element_size() for t in self._tensors().values())

    def to(self, device, *, copy: bool = False) -> "NF4Weight":
        """A copy on ``device`` (this object when already there, unless ``copy``)."""
        device = torch.device(device)
        if self.packed.device == device and not copy:
            return self
        moved = {k: v.to(device, copy=copy) for k, v in self._tensors().items()}
        return self._replace(**moved)

    def _replace(self, **tensors) -> "NF4Weight":
        fields = self._tensors()
        fields.update(tensors)
        packed = fields.pop("packed")
        absmax = fields.pop("absmax")
        return NF4Weight(
            packed, absmax, blocksize=self.blocksize, shape=self.shape, dtype=self.dtype,
            nested_blocksize=self.nested_blocksize, **fields,
        )

    def row_norms_squared(self) -> torch.Tensor:
        """float64 ``[out]``: the squared norm of each row of the dequantized 2-D
        weight (DoRA needs it every step; the weight is frozen, so it is cached)."""
        if self._row_norms is None:
            if len(self.shape) != 2:
                raise ValueError(f"row_norms_squared: the weight must be 2-D, got {tuple(self.shape)}")
            self._row_norms = self.dequantize(torch.float32).double().pow(2).sum(1)
        return self._row_norms

    def dequantize(self, dtype: Optional[torch.dtype] = None, *, out: Optional[torch.Tensor] = None):
        return dequantize(self, dtype, out=out)

    def __repr__(self) -> str:
        dq = f", nested_blocksize={self.nested_blocksize}" if self.double_quant else ""
        return (
            f"NF4Weight(shape={tuple(self.shape)}, dtype={self.dtype}, blocksize={self.blocksize}, "
            f"double_quant={self.double_quant}{dq}, device={self.device})"
        )

    # ------------------------------------------------------------------ bitsandbytes format
    def to_bnb_state_dict(self, prefix: str = "") -> dict:
        """The state-dict entries bitsandbytes' ``Linear4bit`` writes for its weight:
        ``{prefix}weight``, ``{prefix}weight.absmax``, ``{prefix}weight.quant_map``,
        ``{prefix}weight.nested_absmax``, ``{prefix}weight.nested_quant_map`` and
        ``{prefix}weight.quant_state.bitsandbytes__nf4`` (JSON bytes)."""
        return bnb_state_dict(prefix, self.packed.reshape(-1, 1), self.absmax, self.nested_absmax, self.nested_code,
                              self.offset, blocksize=self.blocksize, nested_blocksize=self.nested_blocksize,
                              shape=self.shape, dtype=self.dtype)

    @classmethod
    def from_bnb_state_dict(cls, state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> "NF4Weight":
        """Read a weight written by bitsandbytes (``Linear4bit``, transformers'
        4-bit checkpoints) or by :meth:`to_bnb_state_dict`. Raises ``ValueError``
        naming the key for anything missing, inconsistent, not NF4, or on another
        device than the weight. The result holds the state dict's tensors, not copies."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"NF4 state dict: state_dict must be a mapping, got {type(state_dict).__name__}")
        if not isinstance(prefix, str):
            raise TypeError(f"NF4 state dict: prefix must be a str, got {type(prefix).__name__}")
        w = f"{prefix}weight"
        state_key = f"{w}.{_BNB_QUANT_STATE_KEY}"

        def get(key):
            if key not in state_dict:
                raise ValueError(f"NF4 state dict: missing key '{key}'")
            value = state_dict[key]
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"NF4 state dict: '{key}' must be a tensor, got {type(value).__name__}")
            return value

        def check_finite(key, t):
            # a NaN or Inf scale would dequantize a whole block to NaN or Inf
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"NF4 state dict: '{key}' must be finite, got NaN or Inf")

        raw_state = get(state_key)
        packed = get(w)
        # Devices before values: a meta tensor has none to read, and mixed with
        # real ones it would make the ops run their fake kernels. The
        # quant_state and quant_map are read here on the host (bitsandbytes
        # keeps its quant_state on the CPU), so they may be there.
        others = {k: get(k) for k in (w + suffix for suffix in _BNB_WEIGHT_SUFFIXES[1:]) if k in state_dict}
        check_devices("NF4 state dict", f"'{w}'", packed, {f"'{k}'": v for k, v in others.items()},
                      host_ok=(f"'{state_key}'", f"'{w}.quant_map'"), error=ValueError)
        if packed.device.type == "meta":
            raise ValueError(f"NF4 state dict: '{state_key}' is on meta: its quantization state cannot be read")
        if raw_state.dtype != torch.uint8:  # bitsandbytes reads its bytes, not its values
            raise ValueError(f"NF4 state dict: '{state_key}' must be uint8 (JSON bytes), got {raw_state.dtype}")
        try:
            state = json.loads(bytes(raw_state.detach().reshape(-1).cpu().tolist()).decode("utf-8"))
            if not isinstance(state, dict):
                raise TypeError("not a JSON object")
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            raise ValueError(f"NF4 state dict: '{state_key}' is not a JSON object: {exc}") from exc

        def field(name, kind):
            if name not in state:
                raise ValueError(f"NF4 state dict: quant_state is missing '{name}'")
            value = state[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"NF4 state dict: quant_state '{name}' must be {kind}, got {value!r}")
            return value

        quant_type = field("quant_type", str)
        if quant_type != "nf4":
            raise ValueError(f"NF4 state dict: quant_type must be 'nf4', got '{quant_type}' (FP4 is not supported)")
        blocksize = field("blocksize", int)
        if blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
            raise ValueError(f"NF4 state dict: blocksize must be a power of two in [32, 4096], got {blocksize}")
        dtype_name = field("dtype", str)
        dtype = {v: k for k, v in _DTYPE_NAMES.items()}.get(dtype_name)
        if dtype is None:
            raise ValueError(f"NF4 state dict: dtype must be float32, bfloat16 or float16, got '{dtype_name}'")
        shape = field("shape", list)
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= INT64_MAX for d in shape):
            raise ValueError(f"NF4 state dict: shape must be a list of non-negative ints (int64), got {shape}")
        n = math.prod(shape)

        if packed.dtype != torch.uint8:
            raise ValueError(f"NF4 state dict: '{w}' must be uint8 packed codes, got {packed.dtype}")
        if packed.numel() != (n + 1) // 2:
            raise ValueError(
                f"NF4 state dict: '{w}' must hold {(n + 1) // 2} bytes for shape {shape}, got {packed.numel()}"
            )
        quant_map = get(f"{w}.quant_map")
        if quant_map.numel() != 16 or not torch.equal(quant_map.detach().float().cpu(), NF4_CODE):
            raise ValueError(f"NF4 state dict: '{w}.quant_map' is not the NF4 code")
        blocks = -(-n // blocksize)
        absmax = get(f"{w}.absmax")
        if absmax.numel() != blocks:
            raise ValueError(f"NF4 state dict: '{w}.absmax' must have {blocks} elements, got {absmax.numel()}")

        nested_keys = [k for k in (f"{w}.nested_absmax", f"{w}.nested_quant_map") if k in state_dict]
        if not nested_keys:
            if absmax.dtype != torch.float32:
                raise ValueError(f"NF4 state dict: '{w}.absmax' must be float32 without double quantization")
            check_finite(f"{w}.absmax", absmax)
            return cls(packed.reshape(-1), absmax.reshape(-1), blocksize=blocksize, shape=shape, dtype=dtype)

        nested_absmax = get(f"{w}.nested_absmax")
        nested_code = get(f"{w}.nested_quant_map")
        nested_blocksize = field("nested_blocksize", int)
        if not 1 <= nested_blocksize <= INT64_MAX:
            raise ValueError(f"NF4 state dict: nested_blocksize must be positive and fit int64, got {nested_blocksize}")
        offset = field("nested_offset", (int, float))
        # Used as float32: 1e39 is finite as a double, Inf in float32 (and a
        # JSON int may not even fit a double; 2**128 is past the float32 range).
        if not (abs(offset) < 2**128 and fits_float32(float(offset))):
            raise ValueError(f"NF4 state dict: nested_offset must be finite in float32, got {offset}")
        nested_dtype = field("nested_dtype", str)  # bitsandbytes cannot read a state without it
        if nested_dtype != "float32":
            raise ValueError(f"NF4 state dict: nested_dtype must be float32, got {nested_dtype!r}")
        if absmax.dtype != torch.uint8:
            raise ValueError(f"NF4 state dict: '{w}.absmax' must be uint8 codes with double quantization")
        nested_blocks = -(-blocks // nested_blocksize)
        if nested_absmax.dtype != torch.float32 or nested_absmax.numel() != nested_blocks:
            raise ValueError(
                f"NF4 state dict: '{w}.nested_absmax' must be float32 with {nested_blocks} elements, "
                f"got {nested_absmax.dtype} with {nested_absmax.numel()}"
            )
        if nested_code.dtype != torch.float32 or nested_code.numel() != 256:
            raise ValueError(f"NF4 state dict: '{w}.nested_quant_map' must be 256 float32 values")
        check_finite(f"{w}.nested_absmax", nested_absmax)
        check_finite(f"{w}.nested_quant_map", nested_code)
        return cls(
            packed.reshape(-1),
            absmax.reshape(-1),
            blocksize=blocksize,
            shape=shape,
            dtype=dtype,
            nested_absmax=nested_absmax.reshape(-1),
            nested_code=nested_code.reshape(-1),
            offset=torch.tensor(float(offset), dtype=torch.float32, device=packed.device),
            nested_blocksize=nested_blocksize,
        )


# ----------------------------------------------------------------------------- API
def quantize(w: torch.Tensor, blocksize: int = 64, double_quant: bool = True) -> NF4Weight:
    """Quantize ``w`` (float32, bfloat16 or float16, any shape) to NF4 in blocks of
    ``blocksize`` (a power of two in [32, 4096]) over the flattened tensor; with
    ``double_quant`` the per-block absmax is itself quantized to 8 bits in blocks
    of 256, as QLoRA does. NaN or Inf in ``w`` raise ``ValueError``."""
    require_tensor(w, "quantize", "w")
    if w.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"quantize: w must be float32, bfloat16 or float16, got {w.dtype}")
    blocksize = as_int(blocksize, "quantize", "blocksize")
    double_quant = as_bool(double_quant, "quantize", "double_quant")
    w = w.detach()
    packed, absmax, nested_absmax, offset = torch.ops.loraops.nf4_quantize(w, blocksize, double_quant)
    if not double_quant:
        return NF4Weight(packed, absmax, blocksize=blocksize, shape=w.shape, dtype=w.dtype)
    return NF4Weight(
        packed, absmax, blocksize=blocksize, shape=w.shape, dtype=w.dtype,
        nested_absmax=nested_absmax, nested_code=dynamic_code(w.device), offset=offset,
    )


def dequantize(
    qw: NF4Weight, dtype: Optional[torch.dtype] = None, *, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Dequantize ``qw`` to ``dtype`` (default: the dtype it was quantized from).
    With ``out`` (contiguous, ``qw.shape``) the result is written there, which on
    CPU saves the page faults of a fresh allocation."""
    if not isinstance(qw, NF4Weight):
        raise TypeError(f"dequantize: qw must be an NF4Weight, got {type(qw).__name__}")
    if out is not None:
        require_tensor(out, "dequantize", "out")
        if dtype is not None and dtype != out.dtype:
            raise TypeError(f"dequantize: dtype {dtype} disagrees with out.dtype {out.dtype}")
        if out.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"dequantize: out must be float32, bfloat16 or float16, got {out.dtype}")
        if out.shape != qw.shape:
            raise ValueError(f"dequantize: out must have shape {tuple(qw.shape)}, got {tuple(out.shape)}")
        torch.ops.loraops.nf4_dequantize_into(**qw.op_arguments(), out=out)
        return out
    target = qw.dtype if dtype is None else dtype
    if target not in _FLOAT_DTYPES:
        raise TypeError(f"dequantize: dtype must be float32, bfloat16 or float16, got {target}")
    return torch.ops.loraops.nf4_dequantize(**qw.op_arguments(), shape=list(qw.shape), dtype=target)
