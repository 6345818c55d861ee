// Ascend C kernel (AI cube cores): a LoRA layer's product and its low-rank
// term in one L0C accumulator, rounded once into T:
//
//   c [m, n] = a1 [m, k1] op(b1) + a2 [m, k2] op(b2)      (a1, b1, c in T; a2, b2 fp32)
//
// op(b) is b^T for b stored [n, k] (a Linear weight), b itself when stored
// [k, n] (b_k_major). The forward y = x W^T + [s xa | 1] [B | bias]^T takes the
// bias as one more low-rank column; the backward dx = dy W + d_xa A (no
// dropout) is the same with b_k_major. Each core takes a run of 128 x 128
// tiles of c; per tile the base product runs in T (fp32 products of half or
// bf16, as the cube multiplies) and the low-rank one in fp32, both summed in
// L0C, then one Fixpipe.
#pragma once

#include "kernel_operator.h"
// By relative path, as the other kernels: the sources compile as they are.
#include "../common/cube_matmul.h"
#include "lora_kernels.h"
#include "lora_tiling.h"

namespace loraops::ascend {

// The host tiles results (lora_tiling.h) as the cube kernels walk them.
static_assert(CubeTileRun::kTile == kLoraMatmulTileM && CubeTileRun::kTile == kLoraMatmulTileN,
              "the host's tile size must be the kernels'");

// One tile of c [tm, tn] = a1 op(b1) + a2 op(b2) on the cube: the base product
// in T and the low-rank one in fp32 summed in one L0C tile, then one Fixpipe
// rounds it into c. Shared by the fused kernel below and the QLoRA MIX kernel.
// Needs k1 + k2 >= 1 (else the accumulator would be written out unset).
template <class T>
class FusedTile {
 public:
  __aicore__ inline void Init(AscendC::TPipe* pipe) {
    base_.Init(pipe);
    low_rank_.Init(pipe);
    pipe->InitBuffer(acc_, 1, kLoraMatmulTileM * kLoraMatmulTileN * sizeof(float));
  }

  // a1, b1, a2, b2 and c at the tile's origins; ld* row strides in elements.
  __aicore__ inline void Compute(const AscendC::GlobalTensor<T>& a1, const AscendC::GlobalTensor<T>& b1,
                                 const AscendC::GlobalTensor<float>& a2, const AscendC::GlobalTensor<float>& b2,
                                 const AscendC::GlobalTensor<T>& c, uint32_t tm, uint32_t tn, uint64_t k1,
                                 uint64_t lda1, uint64_t ldb1, uint64_t k2, uint64_t lda2, uint64_t ldb2,
                                 uint64_t ldc, bool b_k_major) {
    AscendC::LocalTensor<float> acc = acc_.template AllocTensor<float>();
    base_.Accumulate(acc, a1, b1, tm, tn, Shape(k1, lda1, ldb1, b_k_major), true);
    low_rank_.Accumulate(acc, a2, b2, tm, tn, Shape(k2, lda2, ldb2, b_k_major), k1 == 0);
    acc_.EnQue(acc);
    acc = acc_.template DeQue<float>();
    CubeStore(c, acc, tm, tn, static_cast<uint32_t>(ldc), false);
    acc_.FreeTensor(acc);
  }

 private:
  __aicore__ static inline CubeMatmulShape Shape(uint64_t k, uint64_t lda, uint64_t ldb, bool b_k_major) {
    CubeMatmulShape s;
    s.m = 0;
    s.n = 0;
    s.k = static_cast<uint32_t>(k);
    s.lda = static_cast<uint32_t>(lda);
    s.ldb = static_cast<uint32_t>(ldb);
    s.ldc = 0;
    s.a_k_major = false;
    s.b_k_major = b_k_major;
    s.accumulate = false;
    return s;
  }

  CubeOperands<T> base_;
  CubeOperands<float> low_rank_;
  AscendC::TQue<AscendC::TPosition::CO1, 1> acc_;
};

template <class T>
class LoraFusedMatmulKernel {
 public:
  __aicore__ inline LoraFusedMatmulKernel() {}

  __aicore__ inline void Init(GM_ADDR a1, GM_ADDR b1, GM_ADDR a2, GM_ADDR b2, GM_ADDR c, const LoraFusedTiling& t,
                              AscendC::TPipe* pipe) {
    t_ = t;
    a1_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(a1));
    b1_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(b1));
    a2_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(a2));
    b2_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(b2));
    c_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(c));
    tile_.Init(pipe);
  }

  __aicore__ inline void Process() {
    const CubeTileRun grid(t_.m, t_.n, t_.tiles_per_core);
    const bool b_k_major = t_.b_k_major != 0;
    for (uint64_t tile = grid.first; tile < grid.end; ++tile) {
      const uint64_t m0 = grid.M0(tile), n0 = grid.N0(tile);
      tile_.Compute(a1_[m0 * t_.lda1], b1_[b_k_major ? n0 : n0 * t_.ldb1], a2_[m0 * t_.lda2],
                    b2_[b_k_major ? n0 : n0 * t_.ldb2], c_[m0 * t_.ldc + n0], grid.Rows(m0), grid.Cols(n0), t_.k1,
                    t_.lda1, t_.ldb1, t_.k2, t_.lda2, t_.ldb2, t_.ldc, b_k_major);
    }
  }

 private:
  LoraFusedTiling t_;
  AscendC::GlobalTensor<T> a1_, b1_, c_;
  AscendC::GlobalTensor<float> a2_, b2_;
  FusedTile<T> tile_;
};

}  // namespace loraops::ascend

#define LORAOPS_LORA_FUSED_MATMUL_ENTRY(name, T)                                  \
  extern "C" __global__ __aicore__ void name(LORAOPS_LORA_FUSED_MATMUL_PARAMS) {  \
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIC_ONLY);                               \
    loraops::ascend::LoraFusedTiling tiling;                                      \
    tiling.m = m;                                                                 \
    tiling.n = n;                                                                 \
    tiling.k1 = k1;                                                               \
    tiling.k2 = k2;                                                               \
    tiling.lda1 = lda1;                                                           \
    tiling.ldb1 = ldb1;                                                           \
    tiling.lda2 = lda2;                                                           \
    tiling.ldb2 = ldb2;                                                           \
    tiling.ldc = ldc;                                                             \
    tiling.b_k_major = b_k_major;                                                 \
    tiling.tiles_per_core = tiles_per_core;                                       \
    AscendC::TPipe pipe;                                                          \
    loraops::ascend::LoraFusedMatmulKernel<T> kernel;                             \
    kernel.Init(a1, b1, a2, b2, c, tiling, &pipe);                                \
    kernel.Process();                                                             \
  }
