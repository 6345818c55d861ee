// Ascend C MIX kernel (per block one AI cube core and its two vector cores):
// the forward of shifted short attention, flash-attention style.
//
// Each block takes its run of work items from the plan (s2attn_tiling.h): a
// block of up to 64 query rows of one segment of one (sample, head). Per item
// the cube walks the segment's keys in blocks of 128 (up to the diagonal when
// causal): S = Q K^T into the block's workspace, flag; the vector cores (32
// query rows each) scale, mask and exponentiate S with the running row max
// (online softmax in fp32), write P in the input type, flag; the cube adds
// P V into the workspace, flag; the vector cores rescale their fp32 output
// rows and add it. At the end of the item they divide by the row sums, round
// into the output and store the log-sum-exp.
//
// Rows are gathered by position: a segment's rows t = 0, 1, ... sit at
// positions (start + t) mod n, so a block of rows is at most two runs of
// consecutive positions (two when a roll-mode segment wraps), each a strided
// matrix in GM (leading dimension = q's, k's or v's stride along N) that the
// cube loads as it is. The shift is index arithmetic; nothing is copied.
#pragma once

#include "kernel_operator.h"
// By relative path, as the other kernels: the sources compile as they are.
#include "../common/cube_matmul.h"
#include "s2attn_kernels.h"
#include "s2attn_tiling.h"

namespace loraops::ascend {

// Cross-core flags (mode 2: a block's cube core and its vector cores).
constexpr uint16_t kS2ScoresReady = 1;  // cube -> vector cores: S of a key block is in the workspace
constexpr uint16_t kS2ProbsReady = 2;   // vector cores -> cube: its P is in the workspace
constexpr uint16_t kS2OutReady = 3;     // cube -> vector cores: P V is in the workspace

// One work item of the plan.
struct S2Item {
  uint64_t b, head, start, length, row0, n;
  uint32_t rows;
};

struct S2Plan {
  AscendC::GlobalTensor<int64_t> gm;

  __aicore__ inline void Init(GM_ADDR plan) { gm.SetGlobalBuffer(reinterpret_cast<__gm__ int64_t*>(plan)); }
  __aicore__ inline uint64_t Get(uint64_t i) const { return static_cast<uint64_t>(gm.GetValue(i)); }
  __aicore__ inline uint64_t ItemBegin(uint64_t core) const { return Get(kS2Header + core); }
  __aicore__ inline S2Item Item(uint64_t i) const {
    const uint64_t at = kS2Header + Get(kS2Cores) + 1 + i * kS2ItemFields;
    S2Item it;
    it.b = Get(at + kS2ItemB);
    it.head = Get(at + kS2ItemHead);
    it.start = Get(at + kS2ItemStart);
    it.length = Get(at + kS2ItemLength);
    it.row0 = Get(at + kS2ItemRow0);
    it.n = Get(at + kS2ItemN);
    it.rows = static_cast<uint32_t>(it.length - it.row0 < kS2BlockQ ? it.length - it.row0 : kS2BlockQ);
    return it;
  }
  // The last key (exclusive, in segment rows) an item's queries see.
  __aicore__ inline uint64_t KeyEnd(const S2Item& it) const { return Get(kS2Causal) ? it.row0 + it.rows : it.length; }
};

// A [B, N, H, D] tensor in GM at any strides along B, N, H (unit along D).
template <class T>
struct S2Rows {
  AscendC::GlobalTensor<T> gm;
  uint64_t sb, sn, sh;

  // At the plan's strides, field its kS2?StrideB.
  __aicore__ inline void Init(GM_ADDR addr, const S2Plan& pl, uint32_t field) {
    Init(addr, pl.Get(field), pl.Get(field + 1), pl.Get(field + 2));
  }
  __aicore__ inline void Init(GM_ADDR addr, uint64_t stride_b, uint64_t stride_n, uint64_t stride_h) {
    gm.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(addr));
    sb = stride_b;
    sn = stride_n;
    sh = stride_h;
  }
  // Row `pos` of head h of sample b; rows of a run follow Ld() elements apart.
  __aicore__ inline AscendC::GlobalTensor<T> At(uint64_t b, uint64_t h, uint64_t pos) const {
    return gm[b * sb + pos * sn + h * sh];
  }
  __aicore__ inline uint32_t Ld() const { return static_cast<uint32_t>(sn); }
};

// Segment rows [t0, t0 + count) as at most two runs of consecutive positions.
struct S2Runs {
  uint64_t pos[2];
  uint32_t offset[2], count[2];
  uint32_t num;
};

__aicore__ inline S2Runs SplitRuns(const S2Item& it, uint64_t t0, uint32_t count) {
  S2Runs r;
  uint64_t p = it.start + t0;
  if (p >= it.n) p -= it.n;
  const uint64_t to_end = it.n - p;
  r.pos[0] = p;
  r.offset[0] = 0;
  if (count <= to_end) {
    r.count[0] = count;
    r.num = 1;
  } else {
    r.count[0] = static_cast<uint32_t>(to_end);
    r.pos[1] = 0;
    r.offset[1] = static_cast<uint32_t>(to_end);
    r.count[1] = count - static_cast<uint32_t>(to_end);
    r.num = 2;
  }
  return r;
}

// The lowest float: masked scores (and the forward's running max before any
// key). Exp of it minus a row max or an lse is 0, with no infinity in the arithmetic.
constexpr float kS2Masked = -3.40282346638528859811704183484516925440e+38f;

// Keys of the block at k0, up to kend.
__aicore__ inline uint32_t S2KeysFrom(uint64_t k0, uint64_t kend) {
  return static_cast<uint32_t>(kend - k0 < kS2BlockK ? kend - k0 : kS2BlockK);
}

// How many of an item's rows the vector core whose first row is r0 takes.
__aicore__ inline uint32_t S2VectorRows(const S2Item& it, uint32_t r0) {
  return it.rows > r0 ? (it.rows - r0 < kS2RowsPerVector ? it.rows - r0 : kS2RowsPerVector) : 0;
}

// Sets to kS2Masked the scores of a row (segment row t, keys k0 + j) whose keys
// are past the block's nk or, causal, after the query. idx holds 0, 1, ...
__aicore__ inline void S2MaskRow(const AscendC::LocalTensor<float>& row, const AscendC::LocalTensor<uint8_t>& bits,
                                 const AscendC::LocalTensor<float>& idx, bool causal, uint64_t t, uint64_t k0,
                                 uint32_t nk) {
  using namespace AscendC;
  uint32_t limit = nk;
  if (causal && t + 1 - k0 < limit) limit = static_cast<uint32_t>(t + 1 - k0);
  if (limit < kS2BlockK) {
    Compares(bits, idx, static_cast<float>(limit), CMPMODE::LT, kS2BlockK);
    Select(row, bits, row, kS2Masked, SELMODE::VSEL_TENSOR_SCALAR_MODE, kS2BlockK);
  }
}

// An AI core's slots in the workspace (s2_workspace_floats): S, P, P V.
template <class T>
struct S2Workspace {
  AscendC::GlobalTensor<float> s, o;
  AscendC::GlobalTensor<T> p;

  __aicore__ inline void Init(GM_ADDR workspace, uint64_t block, uint32_t d) {
    __gm__ float* base = reinterpret_cast<__gm__ float*>(workspace) + block * s2_workspace_floats(d);
    s.SetGlobalBuffer(base);
    p.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(base + kS2BlockQ * kS2BlockK));
    o.SetGlobalBuffer(base + 2 * kS2BlockQ * kS2BlockK);
  }
};

template <class T>
__aicore__ inline void S2ForwardCubeSide(GM_ADDR q, GM_ADDR k, GM_ADDR v, GM_ADDR plan, GM_ADDR workspace) {
  using namespace AscendC;
  constexpr uint32_t kK = kS2BlockK;
  S2Plan pl;
  pl.Init(plan);
  const uint64_t block = static_cast<uint64_t>(GetBlockIdx());
  const uint32_t d = static_cast<uint32_t>(pl.Get(kS2HeadDim)), dp = s2_padded_dim(d);
  const uint64_t per_kv = pl.Get(kS2HeadsPerKv);
  S2Rows<T> qg, kg, vg;
  qg.Init(q, pl, kS2QStrideB);
  kg.Init(k, pl, kS2KStrideB);
  vg.Init(v, pl, kS2VStrideB);
  S2Workspace<T> ws;
  ws.Init(workspace, block, d);
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
      // S [rows, nk] = Q K^T, by runs of rows and of keys.
      for (uint32_t a = 0; a < qr.num; ++a) {
        for (uint32_t c = 0; c < kr.num; ++c) {
          const CubeMatmulShape s{qr.count[a], kr.count[c], d, qg.Ld(), kg.Ld(), kK, false, false, false};
          mm.Compute(qg.At(it.b, it.head, qr.pos[a]), kg.At(it.b, hk, kr.pos[c]),
                     ws.s[qr.offset[a] * kK + kr.offset[c]], s);
        }
      }
      CrossCoreSetFlag<2, PIPE_FIX>(kS2ScoresReady);
      CrossCoreWaitFlag(kS2ProbsReady);
      // P V [rows, d], the second run of keys added on top of the first.
      for (uint32_t c = 0; c < kr.num; ++c) {
        const CubeMatmulShape s{it.rows, d, kr.count[c], kK, vg.Ld(), dp, false, true, c > 0};
        mm.Compute(ws.p[kr.offset[c]], vg.At(it.b, hk, kr.pos[c]), ws.o, s);
      }
      CrossCoreSetFlag<2, PIPE_FIX>(kS2OutReady);
    }
  }
}

template <class T>
__aicore__ inline void S2ForwardVectorSide(GM_ADDR out, GM_ADDR lse, GM_ADDR plan, GM_ADDR workspace, float scale) {
  using namespace AscendC;
  constexpr uint32_t kK = kS2BlockK, kR = kS2RowsPerVector;
  S2Plan pl;
  pl.Init(plan);
  const uint64_t block = static_cast<uint64_t>(GetBlockIdx()) / 2, sub = GetSubBlockIdx();
  const uint32_t d = static_cast<uint32_t>(pl.Get(kS2HeadDim)), dp = s2_padded_dim(d);
  const uint64_t heads = pl.Get(kS2Heads), seq = pl.Get(kS2Seq);
  S2Rows<T> og;
  og.Init(out, pl, kS2OStrideB);
  GlobalTensor<float> lse_gm;
  lse_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(lse));
  S2Workspace<T> ws;
  ws.Init(workspace, block, d);

  TPipe pipe;
  TBuf<TPosition::VECCALC> s_buf, p_buf, o_buf, part_buf, y_buf, idx_buf, bits_buf, red_buf, work_buf, state_buf,
      lse_buf;
  pipe.InitBuffer(s_buf, kR * kK * sizeof(float));
  pipe.InitBuffer(p_buf, kR * kK * sizeof(T));
  pipe.InitBuffer(o_buf, kR * dp * sizeof(float));
  pipe.InitBuffer(part_buf, kR * dp * sizeof(float));
  pipe.InitBuffer(y_buf, kR * dp * sizeof(T));
  pipe.InitBuffer(idx_buf, kK * sizeof(float));
  pipe.InitBuffer(bits_buf, 32);
  pipe.InitBuffer(red_buf, 32);
  pipe.InitBuffer(work_buf, 32);  // ReduceMax's scratch: a (value, index) pair per 256-byte repeat
  pipe.InitBuffer(state_buf, 6 * kR * sizeof(float));
  pipe.InitBuffer(lse_buf, kR * 8 * sizeof(float));  // one row per 32-byte block, for DataCopyPad to any position
  const LocalTensor<float> s = s_buf.Get<float>(), o = o_buf.Get<float>(), part = part_buf.Get<float>();
  const LocalTensor<T> p = p_buf.Get<T>(), y = y_buf.Get<T>();
  const LocalTensor<float> idx = idx_buf.Get<float>(), red = red_buf.Get<float>(), work = work_buf.Get<float>();
  const LocalTensor<uint8_t> bits = bits_buf.Get<uint8_t>();
  const LocalTensor<float> state = state_buf.Get<float>(), lse8 = lse_buf.Get<float>();
  // Per row: running max, max after this key block, row sum, this block's sum, rescale factor, log-sum-exp.
  const LocalTensor<float> m = state, m_new = state[kR], l = state[2 * kR], l_blk = state[3 * kR],
                           alpha = state[4 * kR], lse_rows = state[5 * kR];
  CreateVecIndex(idx, 0.0f, kK);

  for (uint64_t i = pl.ItemBegin(block); i < pl.ItemBegin(block + 1); ++i) {
    const S2Item it = pl.Item(i);
    // This vector core's rows of the item.
    const uint32_t r0 = static_cast<uint32_t>(sub * kR);
    const uint32_t rows = S2VectorRows(it, r0);
    const int32_t n_rows = static_cast<int32_t>(rows);
    if (rows > 0) {
      Duplicate(m, kS2Masked, n_rows);
      Duplicate(l, 0.0f, n_rows);
      Duplicate(o, 0.0f, n_rows * static_cast<int32_t>(dp));
    }
    const uint64_t kend = pl.KeyEnd(it);
    for (uint64_t k0 = 0; k0 < kend; k0 += kK) {
      const uint32_t nk = S2KeysFrom(k0, kend);
      CrossCoreWaitFlag(kS2ScoresReady);
      if (rows > 0) {
        DataCopy(s, ws.s[r0 * kK], rows * kK);
        PipeBarrier<PIPE_ALL>();
        for (uint32_t r = 0; r < rows; ++r) {
          const LocalTensor<float> row = s[r * kK];
          Muls(row, row, scale, static_cast<int32_t>(kK));
          S2MaskRow(row, bits, idx, pl.Get(kS2Causal) != 0, it.row0 + r0 + r, k0, nk);
          ReduceMax(red, row, work, static_cast<int32_t>(kK));
          PipeBarrier<PIPE_ALL>();
          const float block_max = red.GetValue(0), old_max = m.GetValue(r);
          const float new_max = block_max > old_max ? block_max : old_max;
          m_new.SetValue(r, new_max);
          PipeBarrier<PIPE_ALL>();
          Adds(row, row, -new_max, static_cast<int32_t>(kK));
          Exp(row, row, static_cast<int32_t>(kK));
          ReduceSum(red, row, work, static_cast<int32_t>(kK));
          PipeBarrier<PIPE_ALL>();
          l_blk.SetValue(r, red.GetValue(0));
          if constexpr (IsSameType<T, float>::value) {
            DataCopy(p[r * kK], row, kK);
          } else {
            Cast(p[r * kK], row, RoundMode::CAST_RINT, kK);
          }
        }
        PipeBarrier<PIPE_ALL>();
        // l = l exp(m - m_new) + this block's sum; m = m_new.
        Sub(alpha, m, m_new, n_rows);
        Exp(alpha, alpha, n_rows);
        Mul(l, l, alpha, n_rows);
        Add(l, l, l_blk, n_rows);
        Adds(m, m_new, 0.0f, n_rows);
        PipeBarrier<PIPE_ALL>();
        DataCopy(ws.p[r0 * kK], p, rows * kK);
      }
      CrossCoreSetFlag<2, PIPE_MTE3>(kS2ProbsReady);
      CrossCoreWaitFlag(kS2OutReady);
      if (rows > 0) {
        DataCopy(part, ws.o[r0 * dp], rows * dp);
        PipeBarrier<PIPE_ALL>();
        for (uint32_t r = 0; r < rows; ++r) {
          Muls(o[r * dp], o[r * dp], alpha.GetValue(r), static_cast<int32_t>(dp));
        }
        Add(o, o, part, n_rows * static_cast<int32_t>(dp));
      }
    }
    if (rows == 0) continue;
    // lse = m + ln(l); out = o / l in the output type.
    Ln(lse_rows, l, n_rows);
    Add(lse_rows, lse_rows, m, n_rows);
    PipeBarrier<PIPE_ALL>();
    for (uint32_t r = 0; r < rows; ++r) {
      const float inv = 1.0f / l.GetValue(r);
      Muls(o[r * dp], o[r * dp], inv, static_cast<int32_t>(dp));
      lse8.SetValue(r * 8, lse_rows.GetValue(r));
    }
    PipeBarrier<PIPE_ALL>();
    LocalTensor<T> rounded;
    if constexpr (IsSameType<T, float>::value) {
      rounded = o;
    } else {
      Cast(y, o, RoundMode::CAST_RINT, rows * dp);
      rounded = y;
    }
    PipeBarrier<PIPE_ALL>();
    const uint32_t row_bytes = d * sizeof(T);
    const uint32_t gap_blocks = (dp * sizeof(T) - (row_bytes + 31) / 32 * 32) / 32;
    const S2Runs runs = SplitRuns(it, it.row0 + r0, rows);
    for (uint32_t a = 0; a < runs.num; ++a) {
      const DataCopyExtParams out_copy(static_cast<uint16_t>(runs.count[a]), row_bytes, gap_blocks,
                                       static_cast<uint32_t>((og.sn - d) * sizeof(T)), 0);
      DataCopyPad(og.At(it.b, it.head, runs.pos[a]), rounded[runs.offset[a] * dp], out_copy);
      const DataCopyExtParams lse_copy(static_cast<uint16_t>(runs.count[a]), sizeof(float), 0, 0, 0);
      DataCopyPad(lse_gm[(it.b * heads + it.head) * seq + runs.pos[a]], lse8[runs.offset[a] * 8], lse_copy);
    }
    PipeBarrier<PIPE_ALL>();
  }
}

}  // namespace loraops::ascend

#define LORAOPS_S2ATTN_FORWARD_ENTRY(name, T)                                                 \
  extern "C" __global__ __aicore__ void name(LORAOPS_S2ATTN_FORWARD_PARAMS) {                 \
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_2);                                        \
    if ASCEND_IS_AIV {                                                                        \
      loraops::ascend::S2ForwardVectorSide<T>(out, lse, plan, workspace, scale);              \
    }                                                                                         \
    if ASCEND_IS_AIC {                                                                        \
      loraops::ascend::S2ForwardCubeSide<T>(q, k, v, plan, workspace);                        \
    }                                                                                         \
  }
