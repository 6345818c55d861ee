// Launchers of the CUDA kernels of the LoRA ops (raw pointers, no torch headers).
#pragma once

#include <cstdint>

#include "cuda_runtime_types.h"
#include "nf4_cuda_kernels.h"

namespace loraops::cuda {

// out[i] = keep(first_index + i) ? in[i] * scale : 0 for i < n, with the
// counter-based mask of csrc/cpu/dropout.h (the CPU kernels' mask, bit for bit).
// in may equal out.
void dropout_apply(const float* in, float* out, int64_t n, uint64_t first_index, uint64_t seed, uint32_t threshold,
                   float scale, cudaStream_t stream);

// The decode path (few rows of x) over an NF4 weight, in two kernels:
//   xa[m, j] = sum_k dropout(x)[m, k] A[j, k]                      (fp32)
//   out[m, i] = sum_k x[m, k] W[i, k] + bias[i] + scale * sum_j xa[m, j] B[i, j]
// with W dequantized in registers, never stored, and everything summed in fp32
// and rounded once into x's dtype.
inline constexpr int64_t kDecodeMaxRows = 8;

struct LoraDownLaunch {
  const void* x;  // [rows, k] contiguous, x_kind
  FloatKind x_kind;
  const float* a;  // [r, k] contiguous
  int64_t rows, k, r;
  uint64_t seed;
  uint32_t dropout_threshold;  // 0: no dropout
  float keep_scale;            // 1 / (1 - p)
  float* xa;                   // [rows, r]
};

struct NF4GemvLoraLaunch {
  const void* x;  // [rows, k] contiguous, x_kind; rows <= kDecodeMaxRows
  FloatKind x_kind;
  int64_t rows, n, k;
  NF4WeightView weight;  // [n, k]
  const void* bias;      // [n] in x_kind, or null
  const float* xa;       // [rows, r]
  const float* b;        // [n, r] contiguous
  int64_t r;
  float scale;
  void* out;  // [rows, n] in x_kind
};

void lora_down(const LoraDownLaunch& a, cudaStream_t stream);
void nf4_gemv_lora(const NF4GemvLoraLaunch& a, cudaStream_t stream);

}  // namespace loraops::cuda
