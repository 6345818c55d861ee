// Ascend C MIX kernel (per block one AI cube core and its two vector cores):
// the backward of shifted short attention, flash-attention style.
//
// The work items are the forward's (s2attn_tiling.h): a block of up to 64
// query rows of one segment of one (sample, head). Per item the vector cores
// first take D = rowsum(dO o) of their 32 rows and load the rows' lse; then
// per block of 128 keys (up to the diagonal when causal):
//   1. the cube writes S = Q K^T and dP = dO V^T into the block's workspace, flag;
//   2. each vector core, for its rows: P = exp(S scale - lse) (masked keys 0),
//      dS = P (dP - D) scale, both in the input type into the workspace, flag;
//   3. the cube adds dV += P^T dO, dK += dS^T Q (keys as rows) and dQ += dS K
//      into fp32 accumulators in GM, by atomic add.
// The accumulators take atomic adds because a key row gets contributions from
// every query block and query head of its kv head (both classes of heads,
// shifted and not, whose segments differ), and a query row from every key
// block; the host casts them to the inputs' dtype afterwards.
//
// Rows are gathered by position as in the forward (SplitRuns): q, k, v, out
// and grad_out are read where they are.
#pragma once

#include "s2attn_forward_kernel.h"

namespace loraops::ascend {

constexpr uint16_t kS2BwdScoresReady = 1;  // cube -> vector cores: S and dP of a key block are in the workspace
constexpr uint16_t kS2BwdGradsReady = 2;   // vector cores -> cube: P and dS are in the workspace

template <class T>
struct S2BackwardWorkspace {
  AscendC::GlobalTensor<float> s, dp;
  AscendC::GlobalTensor<T> p, ds;

  __aicore__ inline void Init(GM_ADDR workspace, uint64_t block) {
    __gm__ float* base = reinterpret_cast<__gm__ float*>(workspace) + block * s2_backward_workspace_floats();
    constexpr uint64_t tile = uint64_t{kS2BlockQ} * kS2BlockK;
    s.SetGlobalBuffer(base);
    dp.SetGlobalBuffer(base + tile);
    p.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(base + 2 * tile));
    ds.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(base + 3 * tile));
  }
};

template <class T>
__aicore__ inline void S2BackwardCubeSide(GM_ADDR grad_out, GM_ADDR q, GM_ADDR k, GM_ADDR v, GM_ADDR dq32,
                                          GM_ADDR dk32, GM_ADDR dv32, GM_ADDR plan, GM_ADDR workspace) {
  using namespace AscendC;
  constexpr uint32_t kK = kS2BlockK;
  S2Plan pl;
  pl.Init(plan);
  const uint64_t block = static_cast<uint64_t>(GetBlockIdx());
  const uint32_t d = static_cast<uint32_t>(pl.Get(kS2HeadDim)), dp = s2_padded_dim(d);
  const uint64_t per_kv = pl.Get(kS2HeadsPerKv), heads = pl.Get(kS2Heads), kv_heads = pl.Get(kS2KvHeads);
  const uint64_t seq = pl.Get(kS2Seq);
  S2Rows<T> gg, qg, kg, vg;
  gg.Init(grad_out, pl, kS2GStrideB);
  qg.Init(q, pl, kS2QStrideB);
  kg.Init(k, pl, kS2KStrideB);
  vg.Init(v, pl, kS2VStrideB);
  // The accumulators: [B, N, H(kv), dp] contiguous.
  S2Rows<float> dqg, dkg, dvg;
  dqg.Init(dq32, seq * heads * dp, heads * dp, dp);
  dkg.Init(dk32, seq * kv_heads * dp, kv_heads * dp, dp);
  dvg.Init(dv32, seq * kv_heads * dp, kv_heads * dp, dp);
  S2BackwardWorkspace<T> ws;
  ws.Init(workspace, block);
  TPipe pipe;
  CubeMatmul<T, float> mm;
  mm.Init(&pipe);
  for (uint64_t i = pl.ItemBegin(block); i < pl.ItemBegin(block + 1); ++i) {
    const S2Item it = pl.Item(i);
    const uint64_t hk = it.head / per_kv;
    const S2Runs qr = SplitRuns(it, it.row0, it.rows);
    const uint64_t kend = pl.KeyEnd(it);
    for (uint64_t k0 = 0; k0 < kend; k0 += kK) {
      const uint32_t nk = S2KeysFrom(k0, kend);
      const S2Runs kr = SplitRuns(it, k0, nk);
      // S = Q K^T and dP = dO V^T [rows, nk], by runs of rows and of keys.
      for (uint32_t a = 0; a < qr.num; ++a) {
        for (uint32_t c = 0; c < kr.num; ++c) {
          const uint64_t at = qr.offset[a] * kK + kr.offset[c];
          const CubeMatmulShape s{qr.count[a], kr.count[c], d, qg.Ld(), kg.Ld(), kK, false, false, false};
          mm.Compute(qg.At(it.b, it.head, qr.pos[a]), kg.At(it.b, hk, kr.pos[c]), ws.s[at], s);
          const CubeMatmulShape sp{qr.count[a], kr.count[c], d, gg.Ld(), vg.Ld(), kK, false, false, false};
          mm.Compute(gg.At(it.b, it.head, qr.pos[a]), vg.At(it.b, hk, kr.pos[c]), ws.dp[at], sp);
        }
      }
      CrossCoreSetFlag<2, PIPE_FIX>(kS2BwdScoresReady);
      CrossCoreWaitFlag(kS2BwdGradsReady);
      for (uint32_t a = 0; a < qr.num; ++a) {
        for (uint32_t c = 0; c < kr.num; ++c) {
          const uint64_t at = qr.offset[a] * kK + kr.offset[c];
          // dV [keys, d] += P^T dO and dK += dS^T Q: P and dS read k-major (the queries are the depth).
          const CubeMatmulShape sv{kr.count[c], d, qr.count[a], kK, gg.Ld(), dvg.Ld(), true, true, true};
          mm.Compute(ws.p[at], gg.At(it.b, it.head, qr.pos[a]), dvg.At(it.b, hk, kr.pos[c]), sv);
          const CubeMatmulShape sk{kr.count[c], d, qr.count[a], kK, qg.Ld(), dkg.Ld(), true, true, true};
          mm.Compute(ws.ds[at], qg.At(it.b, it.head, qr.pos[a]), dkg.At(it.b, hk, kr.pos[c]), sk);
          // dQ [rows, d] += dS K.
          const CubeMatmulShape sq{qr.count[a], d, kr.count[c], kK, kg.Ld(), dqg.Ld(), false, true, true};
          mm.Compute(ws.ds[at], kg.At(it.b, hk, kr.pos[c]), dqg.At(it.b, it.head, qr.pos[a]), sq);
        }
      }
    }
  }
}

template <class T>
__aicore__ inline void S2BackwardVectorSide(GM_ADDR grad_out, GM_ADDR out, GM_ADDR lse, GM_ADDR plan,
                                            GM_ADDR workspace, float scale) {
  using namespace AscendC;
  constexpr uint32_t kK = kS2BlockK, kR = kS2RowsPerVector;
  S2Plan pl;
  pl.Init(plan);
  const uint64_t block = static_cast<uint64_t>(GetBlockIdx()) / 2, sub = GetSubBlockIdx();
  const uint32_t d = static_cast<uint32_t>(pl.Get(kS2HeadDim)), dp = s2_padded_dim(d);
  const uint64_t heads = pl.Get(kS2Heads), seq = pl.Get(kS2Seq);
  S2Rows<T> og, gg;
  og.Init(out, pl, kS2OStrideB);
  gg.Init(grad_out, pl, kS2GStrideB);
  GlobalTensor<float> lse_gm;
  lse_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(lse));
  S2BackwardWorkspace<T> ws;
  ws.Init(workspace, block);

  TPipe pipe;
  TBuf<TPosition::VECCALC> s_buf, dp_buf, p_buf, ds_buf, a_buf, b_buf, stage_buf, idx_buf, bits_buf, red_buf,
      work_buf, lse_buf, di_buf;
  pipe.InitBuffer(s_buf, kR * kK * sizeof(float));
  pipe.InitBuffer(dp_buf, kR * kK * sizeof(float));
  pipe.InitBuffer(p_buf, kR * kK * sizeof(T));
  pipe.InitBuffer(ds_buf, kR * kK * sizeof(T));
  pipe.InitBuffer(a_buf, kR * dp * sizeof(float));
  pipe.InitBuffer(b_buf, kR * dp * sizeof(float));
  pipe.InitBuffer(stage_buf, kR * dp * sizeof(T));
  pipe.InitBuffer(idx_buf, kK * sizeof(float));
  pipe.InitBuffer(bits_buf, 32);
  pipe.InitBuffer(red_buf, 32);
  pipe.InitBuffer(work_buf, 32);
  pipe.InitBuffer(lse_buf, kR * 8 * sizeof(float));  // one row per 32-byte block: a run may start at any position
  pipe.InitBuffer(di_buf, kR * sizeof(float));
  const LocalTensor<float> s = s_buf.Get<float>(), dpt = dp_buf.Get<float>(), a = a_buf.Get<float>(),
                           bt = b_buf.Get<float>();
  const LocalTensor<T> p = p_buf.Get<T>(), ds = ds_buf.Get<T>(), stage = stage_buf.Get<T>();
  const LocalTensor<float> idx = idx_buf.Get<float>(), red = red_buf.Get<float>(), work = work_buf.Get<float>();
  const LocalTensor<uint8_t> bits = bits_buf.Get<uint8_t>();
  const LocalTensor<float> lse8 = lse_buf.Get<float>(), di = di_buf.Get<float>();
  CreateVecIndex(idx, 0.0f, kK);
  const uint32_t row_bytes = d * sizeof(T);
  const uint32_t gap_blocks = (dp * sizeof(T) - (row_bytes + 31) / 32 * 32) / 32;

  // An item's rows (runs of positions) of head h of sample b into dst [rows, dp] fp32.
  auto load_rows = [&](const LocalTensor<float>& dst, const S2Rows<T>& src, uint64_t b, uint64_t h,
                       const S2Runs& runs, uint32_t rows) {
    const LocalTensor<T> to = IsSameType<T, float>::value ? dst.template ReinterpretCast<T>() : stage;
    for (uint32_t r = 0; r < runs.num; ++r) {
      const DataCopyExtParams copy(static_cast<uint16_t>(runs.count[r]), row_bytes,
                                   static_cast<uint32_t>((src.sn - d) * sizeof(T)), gap_blocks, 0);
      DataCopyPad(to[runs.offset[r] * dp], src.At(b, h, runs.pos[r]), copy, DataCopyPadExtParams<T>(false, 0, 0, T{}));
    }
    PipeBarrier<PIPE_ALL>();
    if constexpr (!IsSameType<T, float>::value) {
      Cast(dst, stage, RoundMode::CAST_NONE, rows * dp);
      PipeBarrier<PIPE_ALL>();
    }
  };

  for (uint64_t i = pl.ItemBegin(block); i < pl.ItemBegin(block + 1); ++i) {
    const S2Item it = pl.Item(i);
    const uint32_t r0 = static_cast<uint32_t>(sub * kR);
    const uint32_t rows = S2VectorRows(it, r0);
    if (rows > 0) {
      // D = rowsum(dO o) over the head dim, and the rows' lse.
      const S2Runs runs = SplitRuns(it, it.row0 + r0, rows);
      load_rows(a, gg, it.b, it.head, runs, rows);
      load_rows(bt, og, it.b, it.head, runs, rows);
      Mul(a, a, bt, static_cast<int32_t>(rows * dp));
      for (uint32_t r = 0; r < runs.num; ++r) {
        const DataCopyExtParams copy(static_cast<uint16_t>(runs.count[r]), sizeof(float), 0, 0, 0);
        DataCopyPad(lse8[runs.offset[r] * 8], lse_gm[(it.b * heads + it.head) * seq + runs.pos[r]], copy,
                    DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
      }
      PipeBarrier<PIPE_ALL>();
      for (uint32_t r = 0; r < rows; ++r) {
        ReduceSum(red, a[r * dp], work, static_cast<int32_t>(d));
        PipeBarrier<PIPE_ALL>();
        di.SetValue(r, red.GetValue(0));
      }
      PipeBarrier<PIPE_ALL>();
    }
    const uint64_t kend = pl.KeyEnd(it);
    for (uint64_t k0 = 0; k0 < kend; k0 += kK) {
      const uint32_t nk = S2KeysFrom(k0, kend);
      CrossCoreWaitFlag(kS2BwdScoresReady);
      if (rows > 0) {
        DataCopy(s, ws.s[r0 * kK], rows * kK);
        DataCopy(dpt, ws.dp[r0 * kK], rows * kK);
        PipeBarrier<PIPE_ALL>();
        for (uint32_t r = 0; r < rows; ++r) {
          const LocalTensor<float> row = s[r * kK], grad = dpt[r * kK];
          // P = exp(S scale - lse); keys past the block or (causal) after the query give 0.
          Muls(row, row, scale, static_cast<int32_t>(kK));
          Adds(row, row, -lse8.GetValue(r * 8), static_cast<int32_t>(kK));
          S2MaskRow(row, bits, idx, pl.Get(kS2Causal) != 0, it.row0 + r0 + r, k0, nk);
          Exp(row, row, static_cast<int32_t>(kK));
          // dS = P (dP - D) scale: the scale of the scores, folded in once for dQ and dK.
          Adds(grad, grad, -di.GetValue(r), static_cast<int32_t>(kK));
          Mul(grad, grad, row, static_cast<int32_t>(kK));
          Muls(grad, grad, scale, static_cast<int32_t>(kK));
        }
        PipeBarrier<PIPE_ALL>();
        if constexpr (IsSameType<T, float>::value) {
          DataCopy(ws.p[r0 * kK], s, rows * kK);
          DataCopy(ws.ds[r0 * kK], dpt, rows * kK);
        } else {
          Cast(p, s, RoundMode::CAST_RINT, rows * kK);
          Cast(ds, dpt, RoundMode::CAST_RINT, rows * kK);
          PipeBarrier<PIPE_ALL>();
          DataCopy(ws.p[r0 * kK], p, rows * kK);
          DataCopy(ws.ds[r0 * kK], ds, rows * kK);
        }
        PipeBarrier<PIPE_ALL>();
      }
      CrossCoreSetFlag<2, PIPE_MTE3>(kS2BwdGradsReady);
    }
  }
}

}  // namespace loraops::ascend

#define LORAOPS_S2ATTN_BACKWARD_ENTRY(name, T)                                                              \
  extern "C" __global__ __aicore__ void name(LORAOPS_S2ATTN_BACKWARD_PARAMS) {                              \
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_2);                                                      \
    if ASCEND_IS_AIV {                                                                                      \
      loraops::ascend::S2BackwardVectorSide<T>(grad_out, out, lse, plan, workspace, scale);                 \
    }                                                                                                       \
    if ASCEND_IS_AIC {                                                                                      \
      loraops::ascend::S2BackwardCubeSide<T>(grad_out, q, k, v, dq32, dk32, dv32, plan, workspace);         \
    }                                                                                                       \
  }
