"""Pure-PyTorch references of shifted short attention (LongLoRA's S2-Attn).

Both of LongLoRA's code paths, written the way LongLoRA writes them (copies,
rolls, SDPA per group), with the bugs that public versions have fixed:

- ``s2_attention_roll_reference``: the eager path. Shifted heads are rolled by
  ``-s`` along the sequence (``s = G // 2``, the same ``s`` both ways, so odd G
  comes back aligned), split into groups of G (the last may be shorter),
  attention within each group, rolled back by ``+s``. Groups wrap around.
- ``s2_attention_segments_reference``: the flash-attention path. Shifted heads
  attend within ``[0, s), [s, s+G), ...``, the last segment ending at the
  sequence end; nothing wraps.

Heads ``[0, H/2)`` are never shifted, heads ``[H/2, H)`` are. With ``seqlens``,
each sample is computed as if it were its first ``seqlens[b]`` tokens alone, and
padded positions output zeros. A group at least as long as a sample is plain
(causal) attention over it. Inputs are ``[B, N, H, D]`` (k, v ``[B, N, Hkv, D]``);
the result has q's dtype (tests pass float64).

``longlora_sdpa_peer`` is the LongLoRA-style implementation used as the
benchmark peer: one SDPA call over all groups (needs N to be a multiple of G).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["s2_attention_reference", "s2_attention_roll_reference", "s2_attention_segments_reference",
           "longlora_sdpa_peer", "segments"]


def segments(n: int, group_size: int, shifted: bool, mode: str = "segments") -> list[tuple[int, int]]:
    """(start, length) of each segment of one head over n tokens, in the order of
    the attention within it (positions start, start+1, ... modulo n)."""
    if n <= 0:
        return []
    shift = group_size // 2 if shifted and group_size < n else 0
    if shift == 0 or mode == "segments":
        bounds = ([0] if shift else []) + list(range(shift, n, group_size)) + [n]
        return [(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])]
    return [((p + shift) % n, min(group_size, n - p)) for p in range(0, n, group_size)]


def _expand_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.repeat_interleave(heads // x.shape[2], dim=2)


def _attend(q, k, v, causal, scale):
    """SDPA on [N, H, D] slices."""
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         is_causal=causal, scale=scale)
    return out.transpose(0, 1)


def _per_sample(q, k, v, seqlens, sample_fn):
    heads = q.shape[2]
    k, v = _expand_kv(k, heads), _expand_kv(v, heads)
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        n = q.shape[1] if seqlens is None else int(seqlens[b])
        if not 0 <= n <= q.shape[1]:  # as the op: the integration marks a sample not right padded with -1
            raise ValueError(f"s2_attention: seqlens[{b}] = {n} is outside [0, {q.shape[1]}]")
        if n > 0:
            out[b, :n] = sample_fn(q[b, :n], k[b, :n], v[b, :n])
    return out


def _scale(q, scale):
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale


def s2_attention_roll_reference(q, k, v, group_size: int, *, causal: bool = True,
                                seqlens: Optional[torch.Tensor] = None, scale: Optional[float] = None):
    scale = _scale(q, scale)

    def sample(qs, ks, vs):
        n, heads = qs.shape[0], qs.shape[1]
        half = heads // 2
        shift = group_size // 2 if group_size < n else 0
        rolled = []
        for x in (qs, ks, vs):
            x = x.clone()
            x[:, half:] = x[:, half:].roll(-shift, dims=0)
            rolled.append(x)
        out = torch.cat([_attend(*(x[p:p + group_size] for x in rolled), causal, scale)
                         for p in range(0, n, group_size)])
        out[:, half:] = out[:, half:].roll(shift, dims=0)
        return out

    return _per_sample(q, k, v, seqlens, sample)


def s2_attention_segments_reference(q, k, v, group_size: int, *, causal: bool = True,
                                    seqlens: Optional[torch.Tensor] = None, scale: Optional[float] = None):
    scale = _scale(q, scale)

    def sample(qs, ks, vs):
        n, heads = qs.shape[0], qs.shape[1]
        out = torch.empty_like(qs)
        for shifted, head_range in ((False, slice(0, heads // 2)), (True, slice(heads // 2, heads))):
            for start, length in segments(n, group_size, shifted):
                rows = slice(start, start + length)
                out[rows, head_range] = _attend(qs[rows, head_range], ks[rows, head_range], vs[rows, head_range],
                                                causal, scale)
        return out

    return _per_sample(q, k, v, seqlens, sample)


def s2_attention_reference(q, k, v, group_size: int, *, mode: str = "segments", causal: bool = True,
                           seqlens: Optional[torch.Tensor] = None, scale: Optional[float] = None):
    fn = {"segments": s2_attention_segments_reference, "roll": s2_attention_roll_reference}[mode]
    return fn(q, k, v, group_size, causal=causal, seqlens=seqlens, scale=scale)


def longlora_sdpa_peer(q, k, v, group_size: int):
    """LongLoRA's S2-Attn as usually written: roll half the heads by -G/2, fold the
    groups into the batch, one causal SDPA call, unfold, roll back. q, k, v are
    [B, N, H, D] with N a multiple of G and as many kv heads as query heads."""
    bsz, n, heads, dim = q.shape
    if n % group_size:
        raise ValueError(f"longlora_sdpa_peer: N ({n}) must be a multiple of group_size ({group_size})")
    half, shift = heads // 2, group_size // 2

    def group(x):
        x = torch.cat((x[:, :, :half], x[:, :, half:].roll(-shift, dims=1)), dim=2)
        return x.reshape(bsz * n // group_size, group_size, heads, dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(group(q), group(k), group(v), is_causal=True)
    out = out.transpose(1, 2).reshape(bsz, n, heads, dim)
    return torch.cat((out[:, :, :half], out[:, :, half:].roll(shift, dims=1)), dim=2)
