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
    base_.Init(pipe);
    low_rank_.Init(pipe);
    pipe->InitBuffer(acc_, 1, kLoraMatmulTileM * kLoraMatmulTileN * sizeof(float));
  }

  __aicore__ inline void Process() {
    const uint64_t tiles_n = (t_.n + kLoraMatmulTileN - 1) / kLoraMatmulTileN;
    const uint64_t tiles = (t_.m + kLoraMatmulTileM - 1) / kLoraMatmulTileM * tiles_n;
    const uint64_t first = static_cast<uint64_t>(AscendC::GetBlockIdx()) * t_.tiles_per_core;
    const uint64_t end = first + t_.tiles_per_core < tiles ? first + t_.tiles_per_core : tiles;
    const bool b_k_major = t_.b_k_major != 0;
    for (uint64_t tile = first; tile < end; ++tile) {
      const uint64_t m0 = tile / tiles_n * kLoraMatmulTileM, n0 = tile % tiles_n * kLoraMatmulTileN;
      const uint32_t tm = static_cast<uint32_t>(t_.m - m0 < kLoraMatmulTileM ? t_.m - m0 : kLoraMatmulTileM);
      const uint32_t tn = static_cast<uint32_t>(t_.n - n0 < kLoraMatmulTileN ? t_.n - n0 : kLoraMatmulTileN);
      AscendC::LocalTensor<float> acc = acc_.AllocTensor<float>();
      base_.Accumulate(acc, a1_[m0 * t_.lda1], b1_[b_k_major ? n0 : n0 * t_.ldb1], tm, tn,
                       Shape(t_.k1, t_.lda1, t_.ldb1), true);
      low_rank_.Accumulate(acc, a2_[m0 * t_.lda2], b2_[b_k_major ? n0 : n0 * t_.ldb2], tm, tn,
                           Shape(t_.k2, t_.lda2, t_.ldb2), t_.k1 == 0);
      acc_.EnQue(acc);
      acc = acc_.DeQue<float>();
      CubeStore(c_[m0 * t_.ldc + n0], acc, tm, tn, static_cast<uint32_t>(t_.ldc), false);
      acc_.FreeTensor(acc);
    }
  }

 private:
  __aicore__ inline CubeMatmulShape Shape(uint64_t k, uint64_t lda, uint64_t ldb) const {
    CubeMatmulShape s;
    s.m = 0;
    s.n = 0;
    s.k = static_cast<uint32_t>(k);
    s.lda = static_cast<uint32_t>(lda);
    s.ldb = static_cast<uint32_t>(ldb);
    s.ldc = static_cast<uint32_t>(t_.ldc);
    s.a_k_major = false;
    s.b_k_major = t_.b_k_major != 0;
    s.accumulate = false;
    return s;
  }

  LoraFusedTiling t_;
  AscendC::GlobalTensor<T> a1_, b1_, c_;
  AscendC::GlobalTensor<float> a2_, b2_;
  CubeOperands<T> base_;
  CubeOperands<float> low_rank_;
  AscendC::TQue<AscendC::TPosition::CO1, 1> acc_;
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
