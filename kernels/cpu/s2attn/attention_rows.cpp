#include "attention_rows.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace loraops::cpu {

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LORAOPS_ROW_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LORAOPS_ROW_CLONES
#endif

// exp(x) in fp32, branch-free so loops over it vectorize: x = k ln2 + r with
// |r| <= ln2 / 2, exp(r) by Cephes' degree-6 polynomial (relative error ~1e-7),
// 2^k built in the exponent bits. Below -87.3 the result is 0 (not a denormal),
// which is what masked and far-below-max scores need.
__attribute__((always_inline)) inline float exp_approx(float x) {
  const float xc = std::min(std::max(x, -87.0f), 88.0f);
  const float round_magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float kf = (xc * 1.44269504088896341f + round_magic) - round_magic;
  const float r = (xc - kf * 0.693359375f) - kf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r * r + r + 1.0f;
  const int32_t k = static_cast<int32_t>(kf);
  const float two_k = std::bit_cast<float>((k + 127) << 23);
  return x < -87.0f ? 0.0f : er * two_k;
}

#define LORAOPS_INLINE inline __attribute__((always_inline))

LORAOPS_INLINE float row_max(const float* x, int64_t n) {
  // An explicit 16-lane vector: the compiler keeps a max reduction scalar (max
  // is not associative for NaN and signed zeros) and does not vectorize lanes.
  typedef float Lanes __attribute__((vector_size(64)));
  constexpr int64_t kLanes = 16;
  Lanes acc = x[0] - Lanes{};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Lanes v;
    std::memcpy(&v, x + i, sizeof v);
    acc = acc > v ? acc : v;
  }
  float m = x[0];
  for (int64_t l = 0; l < kLanes; ++l) m = m > acc[l] ? m : acc[l];
  for (; i < n; ++i) m = m > x[i] ? m : x[i];
  return m;
}

LORAOPS_INLINE float exp_shifted_sum(float* x, int64_t n, float shift) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) {
    const float e = exp_approx(x[i] - shift);
    x[i] = e;
    sum += e;
  }
  return sum;
}

}  // namespace

LORAOPS_ROW_CLONES
void online_softmax_tile(float* s, int64_t ld, int64_t rows, int64_t cols, int64_t valid0, float* m, float* l,
                         float* o, int64_t ld_o, int64_t dim) {
  for (int64_t i = 0; i < rows; ++i) {
    float* row = s + i * ld;
    const int64_t valid = std::clamp<int64_t>(valid0 + i, 0, cols);
    if (valid == 0) {
      std::fill_n(row, cols, 0.0f);
      continue;
    }
    const float m_new = std::max(m[i], row_max(row, valid));
    const float alpha = std::exp(m[i] - m_new);  // 0 on a row's first tile (m = -inf)
    const float sum = exp_shifted_sum(row, valid, m_new);
    std::fill(row + valid, row + cols, 0.0f);
    l[i] = l[i] * alpha + sum;
    m[i] = m_new;
    if (alpha != 1.0f) {
      float* orow = o + i * ld_o;
      for (int64_t d = 0; d < dim; ++d) orow[d] *= alpha;
    }
  }
}

LORAOPS_ROW_CLONES
void exp_tile_by_column(float* s, int64_t ld, int64_t rows, int64_t cols, int64_t first0, const float* shift) {
  for (int64_t j = 0; j < rows; ++j) {
    float* row = s + j * ld;
    const int64_t first = std::clamp<int64_t>(first0 + j, 0, cols);
    std::fill_n(row, first, 0.0f);
    for (int64_t i = first; i < cols; ++i) row[i] = exp_approx(row[i] - shift[i]);
  }
}

LORAOPS_ROW_CLONES
void softmax_grad_tile(const float* p, float* dp, int64_t ld, int64_t rows, int64_t cols, const float* d) {
  for (int64_t j = 0; j < rows; ++j) {
    const float* prow = p + j * ld;
    float* dprow = dp + j * ld;
    for (int64_t i = 0; i < cols; ++i) dprow[i] = prow[i] * (dprow[i] - d[i]);
  }
}

LORAOPS_ROW_CLONES
float dot_row(const float* x, const float* y, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i] * y[i];
  return sum;
}

namespace {

void transpose_scalar(const float* src, int64_t ld_src, float* dst, int64_t ld_dst, int64_t r0, int64_t r1,
                      int64_t c0, int64_t c1) {
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t c = c0; c < c1; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
}

#if defined(__x86_64__) && defined(__GNUC__)
// The classic AVX 8x8 transpose: unpack pairs of rows, shuffle quads, swap halves.
__attribute__((target("avx2"))) void transpose_avx2(const float* src, int64_t ld_src, float* dst, int64_t ld_dst,
                                                     int64_t rows, int64_t cols) {
  const int64_t rows8 = rows / 8 * 8, cols8 = cols / 8 * 8;
  for (int64_t r0 = 0; r0 < rows8; r0 += 8) {
    for (int64_t c0 = 0; c0 < cols8; c0 += 8) {
      const float* s = src + r0 * ld_src + c0;
      __m256 t[8], u[8];
      for (int i = 0; i < 8; i += 2) {
        const __m256 a = _mm256_loadu_ps(s + i * ld_src), b = _mm256_loadu_ps(s + (i + 1) * ld_src);
        t[i] = _mm256_unpacklo_ps(a, b);
        t[i + 1] = _mm256_unpackhi_ps(a, b);
      }
      for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      float* d = dst + c0 * ld_dst + r0;
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(d + i * ld_dst, _mm256_permute2f128_ps(u[i], u[i + 4], 0x20));
        _mm256_storeu_ps(d + (i + 4) * ld_dst, _mm256_permute2f128_ps(u[i], u[i + 4], 0x31));
      }
    }
    transpose_scalar(src, ld_src, dst, ld_dst, r0, r0 + 8, cols8, cols);
  }
  transpose_scalar(src, ld_src, dst, ld_dst, rows8, rows, 0, cols);
}
#endif

}  // namespace

void transpose_tile(const float* src, int64_t ld_src, float* dst, int64_t ld_dst, int64_t rows, int64_t cols) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  if (has_avx2) return transpose_avx2(src, ld_src, dst, ld_dst, rows, cols);
#endif
  // 8x8 sub-blocks keep both sides within a few cache lines.
  constexpr int64_t kB = 8;
  for (int64_t r0 = 0; r0 < rows; r0 += kB)
    for (int64_t c0 = 0; c0 < cols; c0 += kB)
      transpose_scalar(src, ld_src, dst, ld_dst, r0, std::min(rows, r0 + kB), c0, std::min(cols, c0 + kB));
}

}  // namespace loraops::cpu
