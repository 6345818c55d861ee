// Row kernels of blocked attention (softmax pieces) on fp32 score tiles.
// Compiled once with target clones per instruction set; no torch headers.
#pragma once

#include <cstdint>

namespace loraops::cpu {

// max of x[0, n); n >= 1.
float row_max(const float* x, int64_t n);

// y[i] = exp(x[i] - shift) for i in [0, n); returns the sum of y. x may equal y.
float exp_shifted_sum(const float* x, float* y, int64_t n, float shift);

// y[i] = exp(x[i] - shift[i]) for i in [0, n). x may equal y.
void exp_shifted_each(const float* x, float* y, int64_t n, const float* shift);

// dp[i] = p[i] * (dp[i] - d[i]) for i in [0, n): the softmax backward of one row
// of transposed scores, with d = rowsum(dO * O) per query.
void softmax_grad_each(const float* p, float* dp, int64_t n, const float* d);

// x[i] *= a for i in [0, n).
void scale_row(float* x, int64_t n, float a);

// sum of x[i] * y[i] for i in [0, n).
float dot_row(const float* x, const float* y, int64_t n);

// dst[c * ld_dst + r] = src[r * ld_src + c] for r < rows, c < cols.
void transpose_tile(const float* src, int64_t ld_src, float* dst, int64_t ld_dst, int64_t rows, int64_t cols);

}  // namespace loraops::cpu
