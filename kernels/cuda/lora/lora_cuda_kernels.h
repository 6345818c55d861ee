// Launchers of the CUDA kernels of the LoRA ops (raw pointers, no torch headers).
#pragma once

#include <cstdint>

#include "../cuda_runtime_types.h"
#include "../nf4/nf4_cuda_kernels.h"
#include "csrc/lora/dropout_hash.h"

namespace loraops::cuda {

// The low-rank products of the LoRA ops, in fp32, reading the dense operand X
// ([rows, cols], contiguous, in its own dtype) once and never widening it into
// a temporary. An optional dropout mask applies to X, element (m, c) being
// index m * cols + c of dropout::Mask.

// out[m, j] = out_scale * sum_c mask(X)[m, c] R[j, c]: xa = dropout(x) A^T
// (R = A) and d_xa = scale * dy B (R = B^T). out is fp32 [rows, r].
struct LowRankDownLaunch {
  const void* x;
  FloatKind x_kind;
  int64_t rows, cols;
  const float* r_mat;  // [r, cols] contiguous
  int64_t r;
  dropout::Mask mask;
  float out_scale;
  float* out;
};

// X[m, c] += mask(scale * sum_j L[m, j] R[j, c]), summed in fp32 and rounded
// once into X's dtype: y += scale * xa B^T (R = B^T) and, with dropout's mask,
// dx += mask(d_xa A) (R = A).
struct LowRankUpAddLaunch {
  void* x;
  FloatKind x_kind;
  int64_t rows, cols;
  const float* l;      // [rows, r] contiguous
  const float* r_mat;  // [r, cols] contiguous
  int64_t r;
  dropout::Mask mask;
  float scale;
};

// out[j, c] = sum_m L[m, j] mask(X)[m, c]: dA = d_xa^T dropout(x) and
// dB^T = xa^T dy. Row ranges are summed separately into partial
// [splits, r, cols] (splits from low_rank_reduce_splits), which the caller
// adds up: deterministic, no atomics.
struct LowRankReduceLaunch {
  const void* x;
  FloatKind x_kind;
  int64_t rows, cols;
  const float* l;  // [rows, r] contiguous
  int64_t r;
  dropout::Mask mask;
  int64_t splits;
  float* partial;
};

void low_rank_down(const LowRankDownLaunch& a, cudaStream_t stream);
void low_rank_up_add(const LowRankUpAddLaunch& a, cudaStream_t stream);
int64_t low_rank_reduce_splits(int64_t rows, int64_t cols);
void low_rank_reduce(const LowRankReduceLaunch& a, cudaStream_t stream);

// The decode path (few rows of x) over an NF4 weight: xa by low_rank_down, then
//   out[m, i] = sum_k x[m, k] W[i, k] + bias[i] + scale * sum_j xa[m, j] B[i, j]
// with W dequantized in registers, never stored, and everything summed in fp32
// and rounded once into x's dtype.
inline constexpr int64_t kDecodeMaxRows = 8;

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

void nf4_gemv_lora(const NF4GemvLoraLaunch& a, cudaStream_t stream);

}  // namespace loraops::cuda
