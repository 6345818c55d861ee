"""``loraops-bench s2attn --ascend-model``: predicted Atlas A2 times of the S2-Attn
kernels (:mod:`loraops.bench.ascend_model`'s roofline over the emulation's launch
counts) at the target shapes, next to the floor and the same model's prediction
for LongLoRA's way on an NPU and for full causal attention. Every number is a
model estimate and a lower bound, never a measurement.

Where the counts come from: the emulated kernels run at the target sequence
length with one sample and two query heads (one unshifted, one shifted: every
head of a kind does the same work) and their counts are scaled to the target's
heads and spread over the SKU's cores. With ``--count-only`` (or
``LORAOPS_ASCEND_SIM_COUNT_ONLY=1``) the cube's arithmetic is skipped.

The floor: the multiply-adds inside the causal segments (QK^T and PV forward;
QK^T again, dP = dO V^T, dV, dQ, dK backward) over the cube's bf16 peak, or the
bytes every kernel must move (q, k, v and out forward, lse besides; q, k, v,
out, dout and lse read and dq, dk, dv written backward) over HBM bandwidth,
whichever is larger, no launch cost.

The peers are modelled as flash-attention kernels with the floor's flops and
bytes plus the softmax's vector work, taken as ``VECTOR_OPS_FORWARD`` (scale,
mask, subtract the max, exp, row sum, cast) and ``VECTOR_OPS_BACKWARD`` (scale,
mask, subtract lse, exp, subtract D, multiply by P, two casts) fp32 vector ops
per score: an assumption, printed. LongLoRA's way rolls half the heads of q, k
and v by -G/2 (a copy each, also of dout in the backward), runs causal attention
over groups of G (every group full, with wrap-around), and rolls the output
(the gradients in the backward) back. Full causal attention runs causal attention
over the whole sequence.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
import torch

from ..s2attn_reference import segments
from . import ascend_model as am

SEQS = (4096, 8192, 16384)
HEADS, HEAD_DIM, GROUP_RATIO = 32, 128, 0.25
VECTOR_OPS_FORWARD, VECTOR_OPS_BACKWARD = 6, 8
COUNT_ONLY_ENV = "LORAOPS_ASCEND_SIM_COUNT_ONLY"
TARGET_SEQ, TARGET_VS_FULL, TARGET_VS_FLOOR = 16384, 3.5, 1.5


def causal_pairs(lengths) -> int:
    """(query, key) pairs a causal attention over segments of these lengths scores."""
    return sum(length * (length + 1) // 2 for length in lengths)


def s2_pairs(n: int, heads: int, group: int) -> int:
    unshifted, shifted = heads - heads // 2, heads // 2
    return (unshifted * causal_pairs(length for _, length in segments(n, group, False))
            + shifted * causal_pairs(length for _, length in segments(n, group, True)))


@dataclass(frozen=True)
class Attention:
    """An attention call described analytically: scored pairs and the tensors it moves."""

    name: str
    pairs: int
    rows: int  # batch * heads * tokens: rows of q (and of out, dout, lse)
    kv_rows: int
    head_dim: int
    backward: bool
    esize: int = am.BF16

    def flops(self) -> float:
        return 2.0 * (5 if self.backward else 2) * self.pairs * self.head_dim

    def gm_bytes(self) -> int:
        q_side, kv_side = self.rows * self.head_dim * self.esize, self.kv_rows * self.head_dim * self.esize
        if self.backward:  # read q, k, v, out, dout, lse; write dq, dk, dv
            return 4 * q_side + 4 * kv_side + self.rows * am.FP32
        return 2 * q_side + 2 * kv_side + self.rows * am.FP32  # read q, k, v; write out, lse

    def kernel(self, figures: am.Figures) -> am.Prediction:
        vector_ops = VECTOR_OPS_BACKWARD if self.backward else VECTOR_OPS_FORWARD
        return _prediction(figures, self.gm_bytes(), self.flops(), vector_ops * self.pairs * am.FP32, launches=1)


def _prediction(figures: am.Figures, gm_bytes: float, flops: float, vector_bytes: float, launches: int,
                ) -> am.Prediction:
    hbm = gm_bytes / figures.hbm_bytes_per_s
    cube = flops / figures.cube_peak_flops_half
    vector = vector_bytes / (figures.vector_bytes_per_cycle * figures.vector_cores * figures.clock_hz)
    launch = launches * figures.launch_overhead_s
    terms = {"HBM": hbm, "cube": cube, "vector": vector, "launch": launch}
    return am.Prediction(time_s=max(hbm, cube, vector) + launch, bound=max(terms, key=terms.get), hbm_s=hbm,
                         cube_s=cube, vector_s=vector, launch_s=launch, gm_bytes=int(gm_bytes), launches=launches)


def _sum(parts: list[am.Prediction]) -> am.Prediction:
    total = {a: sum(getattr(p, a) for p in parts) for a in ("time_s", "hbm_s", "cube_s", "vector_s", "launch_s")}
    terms = {"HBM": total["hbm_s"], "cube": total["cube_s"], "vector": total["vector_s"], "launch": total["launch_s"]}
    return am.Prediction(bound=max(terms, key=terms.get), gm_bytes=sum(p.gm_bytes for p in parts),
                         launches=sum(p.launches for p in parts), **total)


def floor(n: int, heads: int, d: int, group: int, figures: am.Figures, backward: bool) -> am.Prediction:
    att = Attention("floor", s2_pairs(n, heads, group), heads * n, heads * n, d, backward)
    return _prediction(figures, att.gm_bytes(), att.flops(), 0.0, launches=0)


def _copy(elements: int, figures: am.Figures) -> am.Prediction:
    """A copy kernel (a roll): read and write each bf16 element once."""
    return _prediction(figures, 2 * elements * am.BF16, 0.0, 0.0, launches=1)


def longlora_way(n: int, heads: int, d: int, group: int, figures: am.Figures, backward: bool) -> am.Prediction:
    half = heads // 2 * n * d
    groups_pairs = heads * causal_pairs([group] * (n // group) + ([n % group] if n % group else []))
    parts = [_copy(half, figures) for _ in range(3)]  # roll q, k, v
    parts.append(Attention("grouped", groups_pairs, heads * n, heads * n, d, False).kernel(figures))
    parts.append(_copy(half, figures))  # roll out back
    if backward:
        parts.append(_copy(half, figures))  # roll dout
        parts.append(Attention("grouped", groups_pairs, heads * n, heads * n, d, True).kernel(figures))
        parts += [_copy(half, figures) for _ in range(3)]  # roll dq, dk, dv back
    return _sum(parts)


def full_causal(n: int, heads: int, d: int, figures: am.Figures, backward: bool) -> am.Prediction:
    pairs = heads * causal_pairs([n])
    parts = [Attention("full", pairs, heads * n, heads * n, d, False).kernel(figures)]
    if backward:
        parts.append(Attention("full", pairs, heads * n, heads * n, d, True).kernel(figures))
    return _sum(parts)


# ----------------------------------------------------------------------------- our kernels, from the emulation


def _op(name: str):
    ops = torch.ops.loraops
    return getattr(ops, name) if hasattr(ops, name) else None


def ours(n: int, heads: int, d: int, group: int, figures: am.Figures) -> tuple:
    """(forward, backward or None where the emulation has no backward kernel, how
    many times the bytes charged the GM requests taken as L2 hits were), from
    the emulated kernels' counts at one sample and two heads, scaled."""
    from .ascend import logged

    forward = _op("_ascend_sim_s2_attention")
    if forward is None:
        raise LookupError("the emulation has no _ascend_sim_s2_attention (build with LORAOPS_ASCEND_SIM=ON)")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, 2, d, generator=g).to(torch.bfloat16) for _ in range(3))
    out = {}
    fwd = logged(lambda: out.setdefault("r", forward(q, k, v, group, "segments", True, None, None)))
    factor = heads / 2
    esize = q.element_size()
    requests = [0, 0]  # GM requests of the launches taken as L2 hits, and the bytes once they were charged

    def project(records, *, inputs: int, outputs: int, accumulators: int) -> am.Prediction:
        """Scaled to the target's heads. ``inputs`` / ``outputs``: [rows, d] tensors
        read / written (lse besides); ``accumulators``: fp32 [rows, d] ones written in
        parts and read back once. GM requests beyond those bytes once are taken as
        L2 hits where every core's working set (its segment's k and v, their fp32
        accumulators, its workspace) fits in L2 at once, else charged in full."""
        projected = []
        for r in am.merge(records):
            def unique(rows: int) -> tuple[int, int]:
                tensors, lse = rows * d, rows * am.FP32
                read = inputs * tensors * esize + (lse if outputs > 1 else 0) + accumulators * tensors * am.FP32
                write = outputs * tensors * esize + (0 if outputs > 1 else lse) + accumulators * tensors * am.FP32
                return read, write
            emulated = sum(unique(2 * n))
            workspace = max(0, r.gm_buffer_bytes - emulated) / max(1, r.cube_cores_busy)
            segment = 2 * group * d * (esize + (am.FP32 if accumulators else 0))
            p = am.project(r, figures, factor=factor)
            if figures.ai_cores * (segment + workspace) <= figures.l2_bytes:
                read, write = unique(heads * n)
                requests[0] += p.gm_read_bytes + p.gm_write_bytes
                requests[1] += read + write
                p = dataclasses.replace(p, gm_read_bytes=read, gm_write_bytes=write, gm_buffer_bytes=read + write)
            projected.append(p)
        return am.op_prediction(projected, figures)

    backward = _op("_ascend_sim_s2_attention_backward")
    bwd = None
    if backward is not None:
        o, lse = out["r"]
        dout = torch.randn(o.shape, generator=g).to(o.dtype)
        records = logged(lambda: backward(dout, q, k, v, o, lse, group, "segments", True, None, None))
        # q, k, v, out, dout (and lse) in; dq, dk, dv out, through fp32 accumulators
        bwd = project(records, inputs=5, outputs=3, accumulators=3)
    fwd = project(fwd, inputs=3, outputs=1, accumulators=0)  # q, k, v in; out (and lse) out
    return fwd, bwd, (requests[0] / requests[1] if requests[1] else None)


# ----------------------------------------------------------------------------- the command


def run(args: argparse.Namespace) -> int:
    from .ascend import counts_available

    if getattr(args, "count_only", False):
        os.environ[COUNT_ONLY_ENV] = "1"
    figures = am.load_figures()
    why = counts_available()
    seqs = args.seq or list(SEQS)
    heads = args.heads or HEADS
    d = args.head_dim if args.head_dim else HEAD_DIM
    print(f"S2-Attn on Ascend, B=1, H={heads}, D={d}, G=N*{GROUP_RATIO:g}, bf16, causal, segments mode: "
          f"{am.ESTIMATE_LABEL}")
    print(f"peers: flash-attention kernels with the floor's flops and bytes plus {VECTOR_OPS_FORWARD} (forward) / "
          f"{VECTOR_OPS_BACKWARD} (backward) fp32 vector ops per score (an assumption)")
    if why:
        print(f"our kernels: not predicted ({why})")
    header = f"{'N':>6}  {'pass':<8} {'floor':>10} {'loraops':>18} {'LongLoRA way':>14} {'full causal':>13}"
    print(header)
    rows = []
    for n in seqs:
        group = max(1, int(n * GROUP_RATIO))
        mine = (None, None, None)
        if not why:
            mine = ours(n, heads, d, group, figures)
            if mine[2]:
                print(f"{n:>6}  our kernels' GM requests are {mine[2]:.1f}x the bytes charged (the rest is "
                      "taken as L2 hits: every core's segment and workspace fit in L2)")
        for label, backward in (("fwd", False), ("fwd+bwd", True)):
            fl = floor(n, heads, d, group, figures, False)
            peer = longlora_way(n, heads, d, group, figures, False)
            full = full_causal(n, heads, d, figures, False)
            our = mine[0]
            if backward:
                fl = _sum([fl, floor(n, heads, d, group, figures, True)])
                peer = longlora_way(n, heads, d, group, figures, True)
                full = full_causal(n, heads, d, figures, True)
                our = _sum([mine[0], mine[1]]) if mine[1] is not None else None
            ours_text = (f"{our.time_s * 1e3:7.2f} ms ({our.time_s / fl.time_s:.2f}x, {our.bound})"
                         if our is not None else "no kernel")
            print(f"{n:>6}  {label:<8} {fl.time_s * 1e3:7.2f} ms {ours_text:>18} {peer.time_s * 1e3:11.2f} ms "
                  f"{full.time_s * 1e3:10.2f} ms")
            rows.append(dict(seq=n, passes=label, floor_s=fl.time_s, loraops_s=None if our is None else our.time_s,
                             loraops_bound=None if our is None else our.bound, longlora_s=peer.time_s,
                             full_causal_s=full.time_s))
    target = [r for r in rows if r["seq"] == TARGET_SEQ and r["passes"] == "fwd+bwd" and r["loraops_s"]]
    for r in target:
        vs_full, vs_floor = r["full_causal_s"] / r["loraops_s"], r["loraops_s"] / r["floor_s"]
        print(f"target at N={TARGET_SEQ}, fwd+bwd: {vs_full:.2f}x faster than full causal (>= {TARGET_VS_FULL}x: "
              f"{'met' if vs_full >= TARGET_VS_FULL else 'missed'}), {vs_floor:.2f}x the floor (<= {TARGET_VS_FLOOR}x: "
              f"{'met' if vs_floor <= TARGET_VS_FLOOR else 'missed'})")
    return 0
