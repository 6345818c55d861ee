// Tile kernels of blocked attention (softmax pieces) on fp32 score tiles.
// Compiled once with target clones per instruction set; no torch headers.
#pragma once

#include <cstdint>

namespace loraops::cpu {

// One step of the online softmax over a tile of scores s [rows, cols] (row
// stride ld) against running row maxima m and sums l: row i keeps its first
// clamp(valid0 + i, 0, cols) entries (causal masking; valid0 >= cols for none),
// s becomes exp(s - m_new) with zeros past them, and row i of o [rows, dim]
// (row stride ld_o) is rescaled by exp(m_old - m_new).
void online_softmax_tile(float* s, int64_t ld, int64_t rows, int64_t cols, int64_t valid0, float* m, float* l,
                         float* o, int64_t ld_o, int64_t dim);

// Scores with keys as rows: s[j, i] = exp(s[j, i] - shift[i]) for columns
// i >= clamp(first0 + j, 0, cols), zero before (causal masking; first0 <= -rows
// for none).
void exp_tile_by_column(float* s, int64_t ld, int64_t rows, int64_t cols, int64_t first0, const float* shift);

// The softmax backward on a transposed tile: dp[j, i] = p[j, i] * (dp[j, i] - d[i]),
// d = rowsum(dO * O) per query.
void softmax_grad_tile(const float* p, float* dp, int64_t ld, int64_t rows, int64_t cols, const float* d);

// sum of x[i] * y[i] for i in [0, n).
float dot_row(const float* x, const float* y, int64_t n);

// dst[c * ld_dst + r] = src[r * ld_src + c] for r < rows, c < cols.
void transpose_tile(const float* src, int64_t ld_src, float* dst, int64_t ld_dst, int64_t rows, int64_t cols);

}  // namespace loraops::cpu
