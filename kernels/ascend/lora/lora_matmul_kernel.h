// Ascend C kernel (AI cube cores): the fp32 products of the LoRA low-rank
// branch, c [m, n] = op(a) op(b) (see LoraMatmulTiling), one CubeMatmul block
// per 128 x 128 tile of c; each core takes a run of consecutive tiles.
#pragma once

#include "kernel_operator.h"
// By relative path, as the other kernels: the sources compile as they are.
#include "../common/cube_matmul.h"
#include "lora_kernels.h"
#include "lora_tiling.h"

namespace loraops::ascend {

class LoraMatmulKernel {
 public:
  __aicore__ inline LoraMatmulKernel() {}

  __aicore__ inline void Init(GM_ADDR a, GM_ADDR b, GM_ADDR c, const LoraMatmulTiling& t, AscendC::TPipe* pipe) {
    t_ = t;
    a_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(a));
    b_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(b));
    c_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(c));
    mm_.Init(pipe);
  }

  __aicore__ inline void Process() {
    const CubeTileRun grid(t_.m, t_.n, t_.tiles_per_core);
    for (uint64_t tile = grid.first; tile < grid.end; ++tile) {
      const uint64_t m0 = grid.M0(tile), n0 = grid.N0(tile);
      CubeMatmulShape s;
      s.m = grid.Rows(m0);
      s.n = grid.Cols(n0);
      s.k = static_cast<uint32_t>(t_.k);
      s.lda = static_cast<uint32_t>(t_.lda);
      s.ldb = static_cast<uint32_t>(t_.ldb);
      s.ldc = static_cast<uint32_t>(t_.ldc);
      s.a_k_major = t_.a_k_major != 0;
      s.b_k_major = t_.b_k_major != 0;
      s.accumulate = false;
      // The block's origins: A's rows m0.. (its columns when k-major), B's rows or columns n0..
      const uint64_t a_at = t_.a_k_major ? m0 : m0 * t_.lda;
      const uint64_t b_at = t_.b_k_major ? n0 : n0 * t_.ldb;
      mm_.Compute(a_[a_at], b_[b_at], c_[m0 * t_.ldc + n0], s);
    }
  }

 private:
  LoraMatmulTiling t_;
  AscendC::GlobalTensor<float> a_, b_, c_;
  CubeMatmul<float, float> mm_;
};

}  // namespace loraops::ascend
