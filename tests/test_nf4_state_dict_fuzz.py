"""A Hypothesis fuzzer over NF4Weight.from_bnb_state_dict: states written by
bitsandbytes, then broken or changed (keys dropped, renamed or added; the JSON
quant_state corrupted or its fields given odd values; tensors of another dtype,
size, rank, layout or device, or not tensors; other values).

Each example must end one of two ways:
- a ValueError that names, as it is spelled, a state-dict key or quant_state
  field one of the mutations touched or what that entry is checked against
  (RuntimeError too where a tensor was moved to the meta device, whose message
  also says "meta");
- a weight whose dequantization equals bitsandbytes' reading of the same state
  bit for bit. Only a state bitsandbytes can read may load: where it cannot,
  the loader must refuse.

Non-finite values (decided here): a state whose stored tensors hold NaN or Inf
may be refused (naming the key) or loaded; loaded, its dequantization must be
bitsandbytes' exactly: NaN in the same places, equal values (Inf included)
everywhere else. A JSON nested_offset that is not finite as the fp32 it is
used as (NaN, 1e39) must be refused: every weight would be garbage.

Mutations that keep the state valid (other finite values, another float dtype,
a shape of the same size, data tensors reshaped or strided, an extra key)
must load.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass

import torch
from hypothesis import example, given, note, strategies as st

from loraops.nf4 import NF4Weight

from bad_input_cases import FORBIDDEN, key as spelled
from conftest import require_peer

bnb = require_peer("bitsandbytes")
import bitsandbytes.functional as BF  # noqa: E402
from bitsandbytes.backends.default import ops as bnb_default  # noqa: E402
from bitsandbytes.backends.utils import _get_4bit_code  # noqa: E402

NAN, INF = float("nan"), float("inf")
QS = ".quant_state.bitsandbytes__nf4"
FIELDS = ("quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_offset", "nested_dtype")
DATA = ("", ".absmax", ".nested_absmax")  # packed codes and scales: any rank or strides read the same

# What a loader may name when an entry is wrong: the entry itself, or what it is
# checked against. Entries starting with "." (or "", the weight) are keys after
# "{prefix}weight"; the rest are quant_state fields.
RELATED = {
    "": ("", "shape"),
    ".absmax": (".absmax", "blocksize", "shape"),
    ".quant_map": (".quant_map",),
    # without both nested entries the state reads as single-quantized: absmax is then wrong
    ".nested_absmax": (".nested_absmax", ".nested_quant_map", ".absmax", "nested_blocksize"),
    ".nested_quant_map": (".nested_quant_map", ".nested_absmax", ".absmax"),
    QS: (QS, *FIELDS),
    "quant_type": ("quant_type",),
    "blocksize": ("blocksize", ".absmax"),
    "dtype": ("dtype",),
    "shape": ("shape", "", ".absmax", ".nested_absmax"),
    "nested_blocksize": ("nested_blocksize", ".nested_absmax"),
    "nested_offset": ("nested_offset",),
    "nested_dtype": ("nested_dtype",),
}

# (shape, dtype, blocksize, double_quant): odd sizes (a partial block, a half
# byte), both layouts, two nested blocks in the last one.
BASES = [((24, 64), torch.float32, 64, True), ((7, 96), torch.bfloat16, 32, False),
         ((5, 9), torch.float16, 64, True), ((300,), torch.float32, 128, False), ((64, 160), torch.bfloat16, 32, True)]
PREFIXES = ["", "model.layers.0.q_proj."]


@functools.lru_cache(maxsize=None)
def bnb_base(index):
    """bitsandbytes' state dict of a random weight (its keys without a prefix)."""
    shape, dtype, blocksize, double_quant = BASES[index]
    w = torch.randn(shape, generator=torch.Generator().manual_seed(index)).to(dtype)
    packed, state = BF.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=double_quant)
    sd = {"weight": packed}
    sd.update({f"weight.{k}": v for k, v in state.as_dict(packed=True).items()})
    return sd


# ----------------------------------------------------------------------------- mutations
@dataclass(frozen=True)
class Effect:
    names: frozenset = frozenset()  # what a refusal may name
    valid: bool = True  # the state stays valid: it must load


NO_EFFECT = Effect()


def touched(w, entry, valid=False):
    full = [w + e if e == "" or e.startswith(".") else e for e in RELATED[entry]]
    return Effect(frozenset(full), valid)


def tensor_at(sd, key):
    """The tensor a mutation may change there (None where there is none, or it is on meta: no data)."""
    t = sd.get(key)
    return t if isinstance(t, torch.Tensor) and not t.is_meta else None


def read_state(sd, w):
    try:
        state = json.loads(bytes(sd[w + QS].tolist()))
    except Exception:  # noqa: BLE001  (a corrupted or missing quant_state: field changes do nothing)
        return None
    return state if isinstance(state, dict) else None


def write_state(sd, w, state):
    sd[w + QS] = torch.tensor(list(json.dumps(state).encode()), dtype=torch.uint8)


def drop(sd, w, entry, _):
    if w + entry not in sd:
        return NO_EFFECT
    del sd[w + entry]
    return touched(w, entry)


def rename(sd, w, entry, new_name):
    if w + entry not in sd:
        return NO_EFFECT
    new_key = new_name.format(key=w + entry)
    sd[new_key] = sd.pop(w + entry)
    return Effect(touched(w, entry).names | {new_key}, False)


def add(sd, w, what, _):
    if what == "extra":  # an unrelated key beside the weight's
        sd[w + ".extra"] = torch.zeros(3)
        return NO_EFFECT
    if w + ".nested_absmax" in sd:  # "nested": double-quantization entries in a single-quantized state
        return NO_EFFECT
    sd[w + ".nested_absmax"] = torch.ones(1)
    sd[w + ".nested_quant_map"] = BF.create_dynamic_map()
    return Effect(touched(w, ".nested_absmax").names | touched(w, QS).names, False)


def corrupt_json(sd, w, how, seed):
    raw = tensor_at(sd, w + QS)
    if raw is None or raw.numel() == 0:
        return NO_EFFECT
    gen = torch.Generator().manual_seed(seed)
    if how == "truncate":
        raw = raw[: int(torch.randint(0, max(raw.numel(), 1), (), generator=gen))]
    elif how == "flip-byte":
        raw = raw.clone()
        raw[int(torch.randint(0, raw.numel(), (), generator=gen))] ^= 1 << int(torch.randint(0, 8, (), generator=gen))
    elif how == "not-utf8":
        raw = torch.cat([raw, torch.tensor([0xFF], dtype=torch.uint8)])
    else:  # valid JSON, not an object
        raw = torch.tensor(list(how.encode()), dtype=torch.uint8)
    sd[w + QS] = raw
    return touched(w, QS)


def set_field(sd, w, field, value):
    state = read_state(sd, w)
    if state is None:
        return NO_EFFECT
    present, old = field in state, state.get(field)
    value = value(old) if callable(value) else value
    state[field] = value
    write_state(sd, w, state)
    return touched(w, field, valid=present and (same(value, old) or valid_field(field, value, old)))


def delete_field(sd, w, field, _):
    state = read_state(sd, w)
    if state is None or field not in state:
        return NO_EFFECT
    del state[field]
    write_state(sd, w, state)
    return touched(w, field)


def same(a, b):
    return type(a) is type(b) and a == b


def valid_field(field, value, old):
    """Whether a changed field keeps the state valid."""
    if field == "dtype":
        return value in ("float32", "bfloat16", "float16")
    if field == "shape":
        return (isinstance(value, list) and isinstance(old, list) and all(type(d) is int and d > 0 for d in value)
                and math.prod(value) == math.prod(old))
    if field == "nested_offset":
        return type(value) in (int, float) and abs(value) <= 1e4
    return False


def change_dtype(sd, w, entry, dtype):
    t = tensor_at(sd, w + entry)
    if t is None or t.dtype == dtype:
        return NO_EFFECT
    sd[w + entry] = t.to(dtype)
    return touched(w, entry)


def change_size(sd, w, entry, how):
    t = tensor_at(sd, w + entry)
    if t is None:
        return NO_EFFECT
    flat = t.reshape(-1)
    sd[w + entry] = {"one-less": flat[:-1], "one-more": torch.cat([flat, flat[:1]]), "empty": flat[:0],
                     "doubled": torch.cat([flat, flat])}[how]
    return touched(w, entry)


def change_layout(sd, w, entry, how):
    t = tensor_at(sd, w + entry)
    if t is None:
        return NO_EFFECT
    if how == "strided":  # the same values, every other element of a bigger tensor
        t = torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0]
    else:
        t = t.reshape(-1) if how == "1-d" else t.reshape(-1, 1) if how == "column" else t.reshape(1, -1)
    sd[w + entry] = t
    return touched(w, entry, valid=entry in DATA)


def to_meta(sd, w, entry, _):
    t = tensor_at(sd, w + entry)
    if t is None:
        return NO_EFFECT
    sd[w + entry] = t.to("meta")
    return touched(w, entry)


def not_a_tensor(sd, w, entry, kind):
    t = tensor_at(sd, w + entry)
    if t is None:
        return NO_EFFECT
    sd[w + entry] = {"list": t.tolist, "numpy": t.float().numpy, "none": lambda: None, "int": lambda: 7}[kind]()
    return touched(w, entry)


def change_values(sd, w, entry, change):
    """New values: finite ones keep codes and scales valid; NaN, Inf and huge
    ones may be refused or must reproduce bitsandbytes' result."""
    how, seed = change
    t = tensor_at(sd, w + entry)
    if t is None or t.numel() == 0:
        return NO_EFFECT
    gen = torch.Generator().manual_seed(seed)
    if not t.is_floating_point():  # uint8 codes: any byte is valid
        sd[w + entry] = torch.randint(0, 256, t.shape, generator=gen, dtype=torch.uint8)
        return touched(w, entry, valid=entry != QS)
    t = t.clone()
    if how == "random":
        t = torch.randn(t.shape, generator=gen).to(t.dtype) * 3
    elif how == "negate":
        t = -t
    elif how == "zeros":
        t.zero_()
    else:  # one element NaN, Inf or huge
        t.reshape(-1)[int(torch.randint(0, t.numel(), (), generator=gen))] = {"nan": NAN, "inf": INF, "-inf": -INF,
                                                                               "huge": 3e38}[how]
    sd[w + entry] = t
    finite_change = how in ("random", "negate", "zeros")
    return touched(w, entry, valid=finite_change and entry in (".absmax", ".nested_absmax", ".nested_quant_map"))


APPLY = dict(drop=drop, rename=rename, add=add, corrupt_json=corrupt_json, set_field=set_field,
             delete_field=delete_field, dtype=change_dtype, size=change_size, layout=change_layout, meta=to_meta,
             not_a_tensor=not_a_tensor, values=change_values)


@dataclass(frozen=True)
class Mutation:
    kind: str
    target: str  # a key after "{prefix}weight" ("" is the weight itself), or a quant_state field
    value: object = None

    def apply(self, sd, w) -> Effect:
        return APPLY[self.kind](sd, w, self.target, self.value)


KEYS = ["", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", QS]
TENSOR_KEYS = st.sampled_from(KEYS)
ODD = [0, 1, -1, 3, 255, 257, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400, 0.0, 1.5, -1.0,
       64.0, 1e38, 3.5e38, 1e39, -1e39, 1e308, NAN, INF, -INF, True, False, None, "64", "", [], {}, [64]]


def shape_change(how, odd=None):
    """A function of the old shape (a field value computed at apply time)."""
    def change(old):
        if not (isinstance(old, list) and old and all(type(d) is int for d in old)):
            return old  # already broken: leave it
        return {"reverse": old[::-1], "append-1": [*old, 1], "flatten": [math.prod(old)], "prepend-0": [0, *old],
                "drop-last": old[:-1], "negate-first": [-old[0], *old[1:]], "as-int": math.prod(old),
                "odd-first": [odd, *old[1:]]}[how]
    change.__qualname__ = f"shape_change({how!r}, {odd!r})"  # readable in Hypothesis' report
    return change


FIELD_VALUES = {
    "quant_type": st.sampled_from(["fp4", "NF4", "nf4 ", "int8"]),
    "blocksize": st.sampled_from([32, 64, 128, 256, 512, 1024, 2048, 4096, 16, 8192]),
    "dtype": st.sampled_from(["float32", "bfloat16", "float16", "float64", "float", "half", "int8", "bool",
                              "torch.float32"]),
    "shape": st.builds(shape_change, st.sampled_from(["reverse", "append-1", "flatten", "prepend-0", "drop-last",
                                                      "negate-first", "as-int", "odd-first"]), st.sampled_from(ODD)),
    "nested_blocksize": st.sampled_from([256, 1, 2, 255, 257, 0, -1, 2**63 - 1, 2**63, 2**64, 256.0, "256"]),
    "nested_offset": st.sampled_from([0, 1, 0.0, 0.5, -3.25, 1e-30, 100.0, 1e38, 3.4028235e38, 3.5e38, 1e39, -1e39,
                                      1e308, 10**400, NAN, INF, -INF, "1.0"]),
    "nested_dtype": st.sampled_from(["float32", "float16", "bfloat16", "float64", "float"]),
}

KEY_MUTATIONS = st.one_of(
    st.builds(Mutation, st.just("drop"), TENSOR_KEYS),
    st.builds(Mutation, st.just("rename"), TENSOR_KEYS, st.sampled_from(["{key}_", "x.{key}", "{key}.old"])),
    st.builds(Mutation, st.just("add"), st.sampled_from(["extra", "nested"])),
)
JSON_MUTATIONS = st.one_of(
    st.builds(Mutation, st.just("corrupt_json"),
              st.sampled_from(["truncate", "flip-byte", "not-utf8", "[]", "5", '"nf4"', "null", ""]),
              st.integers(0, 2**31)),
    *[st.builds(Mutation, st.just("set_field"), st.just(f), st.one_of(values, st.sampled_from(ODD)))
      for f, values in FIELD_VALUES.items()],
    st.builds(Mutation, st.just("delete_field"), st.sampled_from(FIELDS)),
)
TENSOR_MUTATIONS = st.one_of(
    st.builds(Mutation, st.just("dtype"), TENSOR_KEYS,
              st.sampled_from([torch.uint8, torch.int8, torch.int32, torch.int64, torch.float16, torch.bfloat16,
                               torch.float32, torch.float64, torch.bool])),
    st.builds(Mutation, st.just("size"), TENSOR_KEYS, st.sampled_from(["one-less", "one-more", "empty", "doubled"])),
    st.builds(Mutation, st.just("layout"), TENSOR_KEYS, st.sampled_from(["1-d", "column", "row", "strided"])),
    st.builds(Mutation, st.just("meta"), TENSOR_KEYS),
    st.builds(Mutation, st.just("not_a_tensor"), TENSOR_KEYS, st.sampled_from(["list", "numpy", "none", "int"])),
)
VALUE_MUTATIONS = st.builds(
    Mutation, st.just("values"), TENSOR_KEYS,
    st.tuples(st.sampled_from(["random", "negate", "zeros", "nan", "inf", "-inf", "huge"]), st.integers(0, 2**31)))
ANY_MUTATION = st.one_of(KEY_MUTATIONS, JSON_MUTATIONS, TENSOR_MUTATIONS, VALUE_MUTATIONS)


def problems(mutations, max_mutations=3):
    return st.tuples(st.integers(0, len(BASES) - 1), st.sampled_from(PREFIXES),
                     st.lists(mutations, min_size=1, max_size=max_mutations))


# ----------------------------------------------------------------------------- bitsandbytes' reading
def eager(fn):
    return getattr(fn, "__wrapped__", fn)  # bitsandbytes' reference functions without torch.compile


def bnb_dequantize(sd, w):
    """bitsandbytes' reading of the weight at key w: QuantState.from_dict over the
    weight's quant-state entries (contiguous, as a checkpoint holds them; picking
    the weight's entries out of a state dict is the caller's business, as
    NF4Linear reports an extra key as unexpected), then the reference (pure
    PyTorch) dequantization, with the checks BF.dequantize_4bit makes first."""
    known = {"absmax", "quant_map", "nested_absmax", "nested_quant_map", QS[1:]}
    stats = {k[len(w) + 1:]: v.contiguous() if isinstance(v, torch.Tensor) else v
             for k, v in sd.items() if k.startswith(w + ".") and k[len(w) + 1:] in known}
    for name in ("absmax", "quant_map", "nested_absmax", "nested_quant_map"):
        # its CPU kernels read these flat, whatever their rank; the reference functions want them flat
        if isinstance(stats.get(name), torch.Tensor):
            stats[name] = stats[name].reshape(-1)
    state = BF.QuantState.from_dict(stats, device=torch.device("cpu"))
    absmax = state.absmax
    if state.nested:
        nested = state.state2
        if absmax.dtype != torch.uint8 or nested.blocksize <= 0:
            raise ValueError("bitsandbytes.dequantize_blockwise refuses this state")
        absmax = eager(bnb_default._dequantize_blockwise_compute)(
            absmax.reshape(-1), nested.absmax, nested.code, nested.blocksize, nested.dtype).reshape(absmax.shape)
        absmax = (absmax + state.offset).float()
    if state.blocksize not in (32, 64, 128, 256, 512, 1024, 2048, 4096):
        raise ValueError(f"bitsandbytes.dequantize_4bit: invalid blocksize {state.blocksize}")
    packed = sd[w].contiguous()
    packed = packed if packed.dtype == torch.uint8 else packed.view(torch.uint8)
    return eager(bnb_default._dequantize_4bit_compute)(packed.reshape(-1), absmax, _get_4bit_code(state.quant_type,
                                                       "cpu"), state.blocksize, state.shape, state.dtype)


def fp32_finite(value) -> bool:
    try:
        return math.isfinite(float(value)) and bool(torch.tensor(float(value), dtype=torch.float32).isfinite())
    except OverflowError:
        return False


def must_refuse(sd, w) -> str | None:
    """Why the state must be refused even if bitsandbytes reads it, or None."""
    state = read_state(sd, w)
    if state is None or not isinstance(sd.get(w + ".nested_absmax"), torch.Tensor):
        return None
    offset = state.get("nested_offset")
    if type(offset) in (int, float) and not fp32_finite(offset):
        return f"nested_offset {offset!r} is not finite as fp32"
    return None


# ----------------------------------------------------------------------------- the property
def check(problem):
    base, prefix, mutations = problem
    w = prefix + "weight"
    sd = {prefix + k: v.clone() for k, v in bnb_base(base).items()}
    effects = [m.apply(sd, w) for m in mutations]
    named = frozenset().union(*(e.names for e in effects))
    valid = all(e.valid for e in effects)
    on_meta = [m.kind == "meta" for m in mutations]
    try:
        ours = NF4Weight.from_bnb_state_dict(sd, prefix=prefix)
    except Exception as exc:  # noqa: BLE001  (judged below)
        message = f"{type(exc).__name__}: {exc}"
        note(f"loraops refused: {message}")
        allowed = (ValueError, RuntimeError) if any(on_meta) else ValueError
        assert isinstance(exc, allowed) and type(exc).__name__ not in FORBIDDEN, f"not a ValueError: {message}"
        assert not valid, f"a valid state was refused: {message}"
        assert any(re.search(spelled(n), str(exc)) for n in named), f"names none of {sorted(named)}: {message}"
        assert not all(on_meta) or re.search(r"\bmeta\b", str(exc)), f"does not say meta: {message}"
        return
    reason = must_refuse(sd, w)
    assert reason is None, f"loaded a state it must refuse: {reason}"
    try:
        got = ours.dequantize()
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"loaded, then failed to dequantize ({type(exc).__name__}: {exc})") from exc
    try:
        want = bnb_dequantize(sd, w)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"loaded a state bitsandbytes cannot read ({type(exc).__name__}: {exc})") from exc
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan), "NaN in other places than bitsandbytes'"
    assert torch.equal(got.masked_fill(nan, 0), want.masked_fill(nan, 0)), "values differ from bitsandbytes'"


def test_unmutated_states_load_as_bitsandbytes_reads_them():
    for base in range(len(BASES)):
        for prefix in PREFIXES:
            check((base, prefix, []))


# The cases, always run: an offset finite as a double but Inf in fp32,
# NaN, nested_blocksize 0 and past int64.
@example((0, "", [Mutation("set_field", "nested_offset", 1e39)]))
@example((2, "m.", [Mutation("set_field", "nested_offset", NAN)]))
@example((0, "", [Mutation("set_field", "nested_offset", 10**400)]))
@example((0, "", [Mutation("set_field", "nested_blocksize", 0)]))
@example((4, "", [Mutation("set_field", "nested_blocksize", 2**63)]))
@example((0, "", [Mutation("set_field", "nested_blocksize", 2**64)]))
@example((0, "", [Mutation("delete_field", "nested_dtype")]))
@given(problems(JSON_MUTATIONS))
def test_quant_state_json(problem):
    check(problem)


@example((0, "", [Mutation("add", "extra")]))
@given(problems(KEY_MUTATIONS))
def test_keys(problem):
    check(problem)


@example((0, "p.", [Mutation("meta", "")]))
@example((1, "", [Mutation("dtype", QS, torch.int64)]))
@given(problems(TENSOR_MUTATIONS))
def test_tensor_dtypes_sizes_layouts_devices(problem):
    check(problem)


@example((1, "", [Mutation("values", ".absmax", ("nan", 0))]))
@given(problems(VALUE_MUTATIONS))
def test_values(problem):
    check(problem)


@given(problems(ANY_MUTATION, max_mutations=4))
def test_any_mix(problem):
    check(problem)
