// Ascend C kernel (AI cube cores): the LoRA low-rank products (x A^T, dy B,
// dy^T xa, d_xa^T x), in fp32:
//
//   c [m, n] (fp32) = sum over parts p of op(a_p) op(b_p)       (op as in CubeMatmulShape)
//
// In fp32 (one part, loraops_lora_matmul_fp32) on operands the vector kernels
// made fp32; or on bf16 activations as they are, the fp32 factor split into
// three bf16 parts hi + mid + lo (each the rounding of what the earlier ones
// leave: 24 bits of mantissa in all), the activation shared by the parts (part
// stride 0): bf16 x bf16 products are exact in fp32 and L0C sums them in fp32,
// so no fp32 copy of x or dy goes through global memory
// (loraops_lora_split_matmul_bf16). Each core takes a run of 128 x 128 tiles of c.
#pragma once

#include "kernel_operator.h"
// By relative path, as the other kernels: the sources compile as they are.
#include "../common/cube_matmul.h"
#include "lora_kernels.h"
#include "lora_tiling.h"

namespace loraops::ascend {

template <class T>
class LoraMatmulKernel {
 public:
  __aicore__ inline LoraMatmulKernel() {}

  __aicore__ inline void Init(GM_ADDR a, GM_ADDR b, GM_ADDR c, const LoraMatmulTiling& t, AscendC::TPipe* pipe) {
    t_ = t;
    a_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(a));
    b_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(b));
    c_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(c));
    operands_.Init(pipe);
    pipe->InitBuffer(acc_, 1, kLoraMatmulTileM * kLoraMatmulTileN * sizeof(float));
  }

  __aicore__ inline void Process() {
    const CubeTileRun grid(t_.m, t_.n, t_.tiles_per_core);
    CubeMatmulShape s;
    s.m = 0;
    s.n = 0;
    s.k = static_cast<uint32_t>(t_.k);
    s.lda = static_cast<uint32_t>(t_.lda);
    s.ldb = static_cast<uint32_t>(t_.ldb);
    s.ldc = static_cast<uint32_t>(t_.ldc);
    s.a_k_major = t_.a_k_major != 0;
    s.b_k_major = t_.b_k_major != 0;
    s.accumulate = false;
    for (uint64_t tile = grid.first; tile < grid.end; ++tile) {
      const uint64_t m0 = grid.M0(tile), n0 = grid.N0(tile);
      // The tile's origins: A's rows m0.. (its columns when k-major), B's rows or columns n0..
      const uint64_t a_at = s.a_k_major ? m0 : m0 * t_.lda;
      const uint64_t b_at = s.b_k_major ? n0 : n0 * t_.ldb;
      AscendC::LocalTensor<float> acc = acc_.AllocTensor<float>();
      for (uint32_t part = 0; part < t_.parts; ++part) {
        operands_.Accumulate(acc, a_[part * t_.a_part_stride + a_at], b_[part * t_.b_part_stride + b_at],
                             grid.Rows(m0), grid.Cols(n0), s, part == 0);
      }
      acc_.EnQue(acc);
      acc = acc_.DeQue<float>();
      CubeStore(c_[m0 * t_.ldc + n0], acc, grid.Rows(m0), grid.Cols(n0), s.ldc, false);
      acc_.FreeTensor(acc);
    }
  }

 private:
  LoraMatmulTiling t_;
  AscendC::GlobalTensor<T> a_, b_;
  AscendC::GlobalTensor<float> c_;
  CubeOperands<T> operands_;
  AscendC::TQue<AscendC::TPosition::CO1, 1> acc_;
};

}  // namespace loraops::ascend

#define LORAOPS_LORA_MATMUL_ENTRY(name, T)                                  \
  extern "C" __global__ __aicore__ void name(LORAOPS_LORA_MATMUL_PARAMS) {  \
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIC_ONLY);                         \
    loraops::ascend::LoraMatmulTiling tiling;                               \
    tiling.m = m;                                                           \
    tiling.n = n;                                                           \
    tiling.k = k;                                                           \
    tiling.lda = lda;                                                       \
    tiling.ldb = ldb;                                                       \
    tiling.ldc = ldc;                                                       \
    tiling.a_k_major = a_k_major;                                           \
    tiling.b_k_major = b_k_major;                                           \
    tiling.a_part_stride = a_part_stride;                                   \
    tiling.b_part_stride = b_part_stride;                                   \
    tiling.parts = parts;                                                   \
    tiling.tiles_per_core = tiles_per_core;                                 \
    AscendC::TPipe pipe;                                                    \
    loraops::ascend::LoraMatmulKernel<T> kernel;                            \
    kernel.Init(a, b, c, tiling, &pipe);                                    \
    kernel.Process();                                                       \
  }
