// CubeMatmul<In, Out>: one block of a GEMM on one AI Cube core (Atlas A2),
// with the basic cube API, for kernels that need a matmul inside (LoRA's
// x A^T and (x A^T) B^T, their backward products, S2-Attn's QK^T and PV).
//
//   C[m, n] (+)= sum_k op(A)[m, k] * op(B)[k, n]
//
// - A in GM, row-major with leading dimension lda: [m, k], or [k, m] when
//   a_k_major (op(A) = A^T);
// - B in GM, row-major with ldb: [n, k] (an nn.Linear weight, C = A B^T), or
//   [k, n] when b_k_major;
// - C in GM, row-major with ldc, of Out = float, half or bfloat16_t, written by
//   Fixpipe (rounding to nearest even); with `accumulate` added to what C holds
//   (atomic add in Out's precision), else overwritten;
// - In = float, half or bfloat16_t; products summed in float in L0C over all
//   of k; any m, n, k >= 1 and any leading dimensions (GM rows need no alignment);
//   leading dimensions up to 65535 elements (Nd2NzParams' srcDValue is 16 bits).
//
// Use, on the AIC (a cube kernel, or `if ASCEND_IS_AIC` in a MIX kernel):
//
//   AscendC::TPipe pipe;
//   CubeMatmul<half, float> mm;
//   mm.Init(&pipe);                       // takes kL1Bytes of L1, kL0ABytes, kL0BBytes, kL0CBytes
//   mm.Compute(a, b, c, {m, n, k, lda, ldb, ldc, a_k_major, b_k_major, accumulate});
//
// where a, b, c are GlobalTensors at the block's origins (A[0][0], B[0][0],
// C[0][0] of the block). Compute walks C in tiles of kTileM x kTileN (one L0C
// tile each) and k in steps of kTileK (GM -> L1 by Nd2Nz, L1 -> L0A/L0B by
// LoadData / LoadDataWithTranspose, Mmad accumulating in L0C), then one
// Fixpipe per C tile. It leaves the atomic mode off. Queues between the
// stages carry the pipe synchronisation (EnQue/DeQue), as in the 2201 samples.
//
// Its parts serve fused kernels: CubeOperands<In>::Accumulate adds one product
// into an L0C tile (two CubeOperands of different In can add into the same
// one, as LoRA's bf16 base product and its fp32 low-rank term), CubeStore
// writes the tile out.
//
// Layouts (see kernels/ascend/sim/cube.h for what each memory holds): an
// operand whose rows run along k (A [m, k], B [n, k]) goes to L1 as Nz and to
// L0 fractal by fractal; an operand stored k-major goes to L1 in groups of 16
// k-rows, each group a row of 16x16 squares, and is transposed square by
// square on the way to L0 (for float a square is two 16x8 fractals, and Mmad
// then reads L0A with kDirectionAlign).
#pragma once

#include "kernel_operator.h"

namespace loraops {
namespace ascend {

struct CubeMatmulShape {
  uint32_t m, n, k;
  uint32_t lda, ldb, ldc;  // elements
  bool a_k_major;          // A is [k, m]
  bool b_k_major;          // B is [k, n] (else [n, k])
  bool accumulate;         // C += ..., else C = ...
};

// The L1 and L0A/L0B side of the cube for In-typed operands: accumulates
// op(A) op(B) for one tile of C into an L0C tensor, over all of k. Two of
// these with different In (a half/bf16 product and a float one, say) can add
// into the same accumulator before one Fixpipe: L0C is float either way.
template <class In>
class CubeOperands {
 public:
  static constexpr uint32_t kTileM = 128;
  static constexpr uint32_t kTileN = 128;
  static constexpr uint32_t kTileK = 256 / sizeof(In);  // 128 half/bf16, 64 float: 32 KiB of L0A/L0B
  static constexpr uint32_t kL1Bytes = (kTileM + kTileN) * kTileK * sizeof(In);
  static constexpr uint32_t kL0ABytes = kTileM * kTileK * sizeof(In);
  static constexpr uint32_t kL0BBytes = kTileN * kTileK * sizeof(In);

  __aicore__ inline void Init(AscendC::TPipe* pipe) {
    pipe->InitBuffer(a1_, 1, kL0ABytes);
    pipe->InitBuffer(b1_, 1, kL0BBytes);
    pipe->InitBuffer(a2_, 1, kL0ABytes);
    pipe->InitBuffer(b2_, 1, kL0BBytes);
  }

  // acc [tm, tn] = (or += when !init) op(A) [tm, k] op(B) [k, tn], with a and b at
  // the tile's origins; tm, tn <= 128, s.m and s.n unused. k = 0 leaves acc
  // untouched, init or not.
  __aicore__ inline void Accumulate(const AscendC::LocalTensor<float>& acc, const AscendC::GlobalTensor<In>& a,
                                    const AscendC::GlobalTensor<In>& b, uint32_t tm, uint32_t tn,
                                    const CubeMatmulShape& s, bool init) {
    for (uint32_t kk = 0; kk < s.k; kk += kTileK) {
      const uint32_t tk = Min(kTileK, s.k - kk);
      const uint64_t a_at = s.a_k_major ? uint64_t{kk} * s.lda : kk;
      const uint64_t b_at = s.b_k_major ? uint64_t{kk} * s.ldb : kk;
      LoadA(a[a_at], tm, tk, s.lda, s.a_k_major);
      LoadB(b[b_at], tn, tk, s.ldb, s.b_k_major);
      Multiply(acc, tm, tn, tk, init && kk == 0, s.a_k_major);
    }
  }

 private:
  static constexpr uint32_t kC0 = 32 / sizeof(In);             // elements per 32-byte row of a fractal
  static constexpr uint32_t kFractal = 16 * kC0;               // elements per 512-byte fractal
  static constexpr uint32_t kSquare = 256;                     // elements per 16x16 square
  static constexpr uint32_t kFractalsPerSquare = 16 / kC0;     // 1 for 16-bit, 2 for float

  __aicore__ static inline uint32_t Min(uint32_t x, uint32_t y) { return x < y ? x : y; }
  __aicore__ static inline uint32_t Blocks(uint32_t x, uint32_t b) { return (x + b - 1) / b; }

  // rows x cols of GM (row-major, ld) into L1 as Nz: 32-byte pieces of each
  // row, piece p of row r at (p * rows16 + r) * 32 bytes.
  __aicore__ inline void CopyNz(const AscendC::LocalTensor<In>& l1, const AscendC::GlobalTensor<In>& gm,
                                uint32_t rows, uint32_t cols, uint32_t ld, uint32_t rows16) {
    AscendC::Nd2NzParams p;
    p.ndNum = 1;
    p.nValue = static_cast<uint16_t>(rows);
    p.dValue = static_cast<uint16_t>(cols);
    p.srcNdMatrixStride = 0;
    p.srcDValue = static_cast<uint16_t>(ld);
    p.dstNzC0Stride = static_cast<uint16_t>(rows16);
    p.dstNzNStride = 1;
    p.dstNzMatrixStride = 0;
    AscendC::DataCopy(l1, gm, p);
  }

  // k rows x cols of GM (k-major) into L1 as rows of 16x16 squares: group g of
  // 16 k-rows at g * 16 * cols16, square (g, j) at index g * cols16 / 16 + j.
  __aicore__ inline void CopySquares(const AscendC::LocalTensor<In>& l1, const AscendC::GlobalTensor<In>& gm,
                                     uint32_t k, uint32_t cols, uint32_t ld, uint32_t cols16) {
    for (uint32_t g = 0; g * 16 < k; ++g) {
      CopyNz(l1[g * 16 * cols16], gm[uint64_t{g} * 16 * ld], Min(16, k - g * 16), cols, ld, 16);
    }
  }

  // A tile [tm, tk] into L0A as Zz: fractal (m/16, k/C0) at (m/16) * K1 + k/C0.
  __aicore__ inline void LoadA(const AscendC::GlobalTensor<In>& gm, uint32_t tm, uint32_t tk, uint32_t ld,
                               bool k_major) {
    const uint32_t m16 = Blocks(tm, 16) * 16;
    AscendC::LocalTensor<In> l1 = a1_.template AllocTensor<In>();
    if (k_major) {
      CopySquares(l1, gm, tk, tm, ld, m16);
    } else {
      CopyNz(l1, gm, tm, tk, ld, m16);
    }
    a1_.EnQue(l1);
    l1 = a1_.template DeQue<In>();
    AscendC::LocalTensor<In> l0 = a2_.template AllocTensor<In>();
    if (k_major) {
      // Square (g, j) of A^T becomes fractals (j, g * F .. g * F + F - 1), F = kFractalsPerSquare.
      const uint32_t groups = Blocks(tk, 16), k1 = groups * kFractalsPerSquare;
      AscendC::LoadData2dTransposeParams p;
      p.repeatTimes = static_cast<uint8_t>(groups);
      p.srcStride = static_cast<uint16_t>(m16 / 16);
      p.dstGap = kFractalsPerSquare - 1;
      p.dstFracGap = 0;
      for (uint32_t j = 0; j < m16 / 16; ++j) {
        p.startIndex = static_cast<uint16_t>(j);
        AscendC::LoadDataWithTranspose(l0[j * k1 * kFractal], l1, p);
      }
    } else {
      const uint32_t k1 = Blocks(tk, kC0);
      AscendC::LoadData2DParams p;
      p.repeatTimes = static_cast<uint8_t>(k1);
      p.srcStride = static_cast<uint16_t>(m16 / 16);
      p.dstGap = 0;
      p.ifTranspose = false;
      for (uint32_t j = 0; j < m16 / 16; ++j) AscendC::LoadData(l0[j * k1 * kFractal], l1[j * kFractal], p);
    }
    a2_.EnQue(l0);
    a1_.FreeTensor(l1);
  }

  // B tile (op(B) [tk, tn]) into L0B as Zn: fractal (k/C0, n/16) at (k/C0) * N1 + n/16.
  __aicore__ inline void LoadB(const AscendC::GlobalTensor<In>& gm, uint32_t tn, uint32_t tk, uint32_t ld,
                               bool k_major) {
    const uint32_t n16 = Blocks(tn, 16) * 16, n1 = n16 / 16;
    AscendC::LocalTensor<In> l1 = b1_.template AllocTensor<In>();
    if (k_major) {
      CopySquares(l1, gm, tk, tn, ld, n16);
    } else {
      CopyNz(l1, gm, tn, tk, ld, n16);
    }
    b1_.EnQue(l1);
    l1 = b1_.template DeQue<In>();
    AscendC::LocalTensor<In> l0 = b2_.template AllocTensor<In>();
    if (k_major) {
      // Square (g, j) of B becomes fractals (g * F + h, j) for h < F, N1 apart.
      AscendC::LoadData2dTransposeParams p;
      p.repeatTimes = static_cast<uint8_t>(n1);
      p.srcStride = 1;
      p.dstGap = 0;
      p.dstFracGap = static_cast<uint16_t>(n1 - 1);
      for (uint32_t g = 0; g * 16 < tk; ++g) {
        p.startIndex = static_cast<uint16_t>(g * n1);
        AscendC::LoadDataWithTranspose(l0[g * kFractalsPerSquare * n1 * kFractal], l1, p);
      }
    } else {
      // L1's Nz of B [n, k] is already L0B's Zn: fractal (n/16, k/C0) at (k/C0) * N1 + n/16.
      AscendC::LoadData2DParams p;
      p.repeatTimes = static_cast<uint8_t>(Blocks(tk, kC0) * n1);
      p.srcStride = 1;
      p.dstGap = 0;
      p.ifTranspose = false;
      AscendC::LoadData(l0, l1, p);
    }
    b2_.EnQue(l0);
    b1_.FreeTensor(l1);
  }

  __aicore__ inline void Multiply(const AscendC::LocalTensor<float>& acc, uint32_t tm, uint32_t tn, uint32_t tk,
                                  bool first, bool a_k_major) {
    AscendC::LocalTensor<In> a = a2_.template DeQue<In>();
    AscendC::LocalTensor<In> b = b2_.template DeQue<In>();
    AscendC::MmadParams p;
    p.m = static_cast<uint16_t>(tm);
    p.n = static_cast<uint16_t>(tn);
    p.k = static_cast<uint16_t>(tk);
    p.cmatrixInitVal = first;  // the first k step starts from zero, the rest accumulate in L0C
    p.cmatrixSource = false;
    p.isBias = false;
    p.kDirectionAlign = kFractalsPerSquare == 2 && a_k_major;  // float A^T: k fractals in pairs
    AscendC::Mmad(acc, a, b, p);
    a2_.FreeTensor(a);
    b2_.FreeTensor(b);
  }

  AscendC::TQue<AscendC::TPosition::A1, 1> a1_;
  AscendC::TQue<AscendC::TPosition::B1, 1> b1_;
  AscendC::TQue<AscendC::TPosition::A2, 1> a2_;
  AscendC::TQue<AscendC::TPosition::B2, 1> b2_;
};

// This core's run of 128 x 128 tiles of an [m, n] result: tiles_per_core
// consecutive tiles of the row-major tile grid per core (block index).
struct CubeTileRun {
  uint64_t m, n, tiles_n, first, end;

  __aicore__ inline CubeTileRun(uint64_t rows, uint64_t cols, uint64_t tiles_per_core) : m(rows), n(cols) {
    tiles_n = (n + kTile - 1) / kTile;
    const uint64_t tiles = (m + kTile - 1) / kTile * tiles_n;
    first = static_cast<uint64_t>(AscendC::GetBlockIdx()) * tiles_per_core;
    end = first + tiles_per_core < tiles ? first + tiles_per_core : tiles;
    if (first > end) first = end;
  }
  __aicore__ inline uint64_t M0(uint64_t tile) const { return tile / tiles_n * kTile; }
  __aicore__ inline uint64_t N0(uint64_t tile) const { return tile % tiles_n * kTile; }
  __aicore__ inline uint32_t Rows(uint64_t m0) const { return static_cast<uint32_t>(m - m0 < kTile ? m - m0 : kTile); }
  __aicore__ inline uint32_t Cols(uint64_t n0) const { return static_cast<uint32_t>(n - n0 < kTile ? n - n0 : kTile); }

  static constexpr uint64_t kTile = 128;
};

// An L0C accumulator tile [tm, tn] into C (row-major, ldc) in Out by Fixpipe,
// rounding to nearest even; with `accumulate` added to what C holds.
template <class Out>
__aicore__ inline void CubeStore(const AscendC::GlobalTensor<Out>& c, const AscendC::LocalTensor<float>& acc,
                                 uint32_t tm, uint32_t tn, uint32_t ldc, bool accumulate) {
  AscendC::FixpipeParamsV220 p;
  p.nSize = static_cast<uint16_t>(tn);
  p.mSize = static_cast<uint16_t>(tm);
  p.srcStride = static_cast<uint16_t>((tm + 15) / 16 * 16);
  p.dstStride = ldc;
  p.ndNum = 1;
  if constexpr (AscendC::IsSameType<Out, half>::value) {
    p.quantPre = QuantMode_t::F322F16;
  } else if constexpr (AscendC::IsSameType<Out, bfloat16_t>::value) {
    p.quantPre = QuantMode_t::F322BF16;
  } else {
    p.quantPre = QuantMode_t::NoQuant;
  }
  if (accumulate) AscendC::SetAtomicAdd<Out>();
  AscendC::Fixpipe<Out, float, AscendC::CFG_ROW_MAJOR>(c, acc, p);
  if (accumulate) AscendC::SetAtomicNone();
}

template <class In, class Out>
class CubeMatmul {
 public:
  static constexpr uint32_t kTileM = CubeOperands<In>::kTileM;
  static constexpr uint32_t kTileN = CubeOperands<In>::kTileN;
  static constexpr uint32_t kTileK = CubeOperands<In>::kTileK;
  static constexpr uint32_t kL1Bytes = CubeOperands<In>::kL1Bytes;
  static constexpr uint32_t kL0ABytes = CubeOperands<In>::kL0ABytes;
  static constexpr uint32_t kL0BBytes = CubeOperands<In>::kL0BBytes;
  static constexpr uint32_t kL0CBytes = kTileM * kTileN * sizeof(float);

  __aicore__ inline void Init(AscendC::TPipe* pipe) {
    operands_.Init(pipe);
    pipe->InitBuffer(c1_, 1, kL0CBytes);
  }

  __aicore__ inline void Compute(const AscendC::GlobalTensor<In>& a, const AscendC::GlobalTensor<In>& b,
                                 const AscendC::GlobalTensor<Out>& c, const CubeMatmulShape& s) {
    for (uint32_t i = 0; i < s.m; i += kTileM) {
      for (uint32_t j = 0; j < s.n; j += kTileN) {
        const uint32_t tm = s.m - i < kTileM ? s.m - i : kTileM, tn = s.n - j < kTileN ? s.n - j : kTileN;
        AscendC::LocalTensor<float> acc = c1_.template AllocTensor<float>();
        operands_.Accumulate(acc, a[s.a_k_major ? i : uint64_t{i} * s.lda],
                             b[s.b_k_major ? j : uint64_t{j} * s.ldb], tm, tn, s, true);
        c1_.EnQue(acc);
        acc = c1_.template DeQue<float>();
        CubeStore(c[uint64_t{i} * s.ldc + j], acc, tm, tn, s.ldc, s.accumulate);
        c1_.FreeTensor(acc);
      }
    }
  }

 private:
  CubeOperands<In> operands_;
  AscendC::TQue<AscendC::TPosition::CO1, 1> c1_;
};

}  // namespace ascend
}  // namespace loraops
