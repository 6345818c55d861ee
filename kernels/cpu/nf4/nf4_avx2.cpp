// NF4 kernels for AVX2 + FMA + F16C. Compiled with -mavx2 -mfma -mf16c (and
// -ffp-contract=off, so no multiply is fused); only called after a run-time check.
#include <immintrin.h>

#include "nf4_common.h"

namespace loraops::cpu {

using namespace detail;

namespace {

// Load 8 elements as fp32 (the caller guarantees 8 are in range).
inline __m256 load8(const void* base, FloatType t, int64_t i) {
  switch (t) {
    case FloatType::f32: return _mm256_loadu_ps(static_cast<const float*>(base) + i);
    case FloatType::bf16: {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    default: {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
      return _mm256_cvtph_ps(h);
    }
  }
}

inline float horizontal_max(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

inline __m256i round_to_bf16_bits(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  return _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
}

}  // namespace

int64_t nf4_quantize_blocks_avx2(const NF4QuantizeArgs& a, int64_t block_begin, int64_t block_end) {
  __m256 vb[15];
  for (int k = 0; k < 15; ++k) vb[k] = _mm256_set1_ps(kNF4Midpoints.v[k]);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 inf = _mm256_set1_ps(INFINITY);
  const __m256 one = _mm256_set1_ps(1.0f), minus_one = _mm256_set1_ps(-1.0f);
  const __m128i low_nibble_of_word = _mm_set1_epi16(0x00F0);
  int64_t nonfinite = 0;

  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t start = b * a.blocksize;
    const int64_t len = block_length(a.n, a.blocksize, b);
    const int64_t vec_len = len & ~int64_t{7};

    __m256 vmax = _mm256_setzero_ps();
    for (int64_t i = 0; i < vec_len; i += 8) {
      const __m256 v = _mm256_and_ps(load8(a.input, a.dtype, start + i), abs_mask);
      nonfinite += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(v, inf, _CMP_NLT_UQ)));
      vmax = _mm256_max_ps(vmax, v);
    }
    float absmax = horizontal_max(vmax);
    for (int64_t i = vec_len; i < len; ++i) {
      const float v = std::fabs(load_as_float(a.input, a.dtype, start + i));
      nonfinite += !is_finite_value(v);
      absmax = v > absmax ? v : absmax;
    }
    a.absmax[b] = absmax;
    const float recip_scalar = reciprocal_of_absmax(absmax);
    const __m256 recip = _mm256_set1_ps(recip_scalar);

    for (int64_t i = 0; i < vec_len; i += 8) {
      __m256 s = _mm256_mul_ps(load8(a.input, a.dtype, start + i), recip);
      s = _mm256_min_ps(_mm256_max_ps(s, minus_one), one);
      __m256i idx = _mm256_setzero_si256();
      for (int k = 0; k < 15; ++k)  // a true compare is -1: subtracting counts it
        idx = _mm256_sub_epi32(idx, _mm256_castps_si256(_mm256_cmp_ps(s, vb[k], _CMP_GT_OQ)));
      // 8 indices -> 4 bytes, element 2j in the high nibble
      const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(idx), _mm256_extracti128_si256(idx, 1));
      const __m128i q = _mm_packus_epi16(words, _mm_setzero_si128());
      const __m128i hi = _mm_and_si128(_mm_slli_epi16(q, 4), low_nibble_of_word);
      const __m128i lo = _mm_srli_epi16(q, 8);
      const __m128i bytes = _mm_packus_epi16(_mm_or_si128(hi, lo), _mm_setzero_si128());
      const int32_t four = _mm_cvtsi128_si32(bytes);
      std::memcpy(a.packed + (start + i) / 2, &four, 4);
    }
    quantize_tail(a, start, vec_len, len, recip_scalar);
  }
  return nonfinite;
}

namespace {

template <bool kStream>
void dequantize_blocks(const NF4DequantizeArgs& a, int64_t block_begin, int64_t block_end) {
  const __m256 code_lo = _mm256_loadu_ps(kNF4Code.v);
  const __m256 code_hi = _mm256_loadu_ps(kNF4Code.v + 8);
  const __m128i low4 = _mm_set1_epi16(0x000F);
  alignas(32) uint32_t lut_scalar[16];
  BlockScales scales(a, block_begin);

  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t start = b * a.blocksize;
    const int64_t len = block_length(a.n, a.blocksize, b);
    const __m256 scale = _mm256_set1_ps(scales.next());
    const __m256 v_lo = _mm256_mul_ps(code_lo, scale), v_hi = _mm256_mul_ps(code_hi, scale);
    __m256i lut_lo, lut_hi;
    switch (a.out_dtype) {
      case FloatType::f32:
        lut_lo = _mm256_castps_si256(v_lo);
        lut_hi = _mm256_castps_si256(v_hi);
        break;
      case FloatType::bf16:
        lut_lo = round_to_bf16_bits(v_lo);
        lut_hi = round_to_bf16_bits(v_hi);
        break;
      default:
        lut_lo = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(v_lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        lut_hi = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(v_hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        break;
    }

    const uint8_t* src = a.packed + start / 2;
    int64_t i = 0;
    for (; i + 16 <= len; i += 16) {
      const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i / 2)));
      const __m128i nib = _mm_or_si128(_mm_srli_epi16(w, 4), _mm_slli_epi16(_mm_and_si128(w, low4), 8));
      __m256i out[2];
      for (int h = 0; h < 2; ++h) {
        const __m256i idx = _mm256_cvtepu8_epi32(h ? _mm_srli_si128(nib, 8) : nib);
        // permutevar uses the low 3 bits; bit 3 (moved to the sign) picks the upper table
        const __m256 from_lo = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(lut_lo, idx));
        const __m256 from_hi = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(lut_hi, idx));
        out[h] = _mm256_castps_si256(
            _mm256_blendv_ps(from_lo, from_hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28))));
      }
      if (a.out_dtype == FloatType::f32) {
        auto* dst = reinterpret_cast<__m256i*>(static_cast<uint32_t*>(a.out) + (start + i - a.out_first_element));
        for (int h = 0; h < 2; ++h) kStream ? _mm256_stream_si256(dst + h, out[h]) : _mm256_storeu_si256(dst + h, out[h]);
      } else {
        auto* dst = reinterpret_cast<__m128i*>(static_cast<uint16_t*>(a.out) + (start + i - a.out_first_element));
        for (int h = 0; h < 2; ++h) {
          const __m128i half = _mm_packus_epi32(_mm256_castsi256_si128(out[h]), _mm256_extracti128_si256(out[h], 1));
          kStream ? _mm_stream_si128(dst + h, half) : _mm_storeu_si128(dst + h, half);
        }
      }
    }
    if (i < len) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(lut_scalar), lut_lo);
      _mm256_store_si256(reinterpret_cast<__m256i*>(lut_scalar + 8), lut_hi);
      dequantize_tail(a, start, i, len, lut_scalar);
    }
  }
  if (kStream) _mm_sfence();  // order the non-temporal stores before the caller reads
}

}  // namespace

void nf4_dequantize_blocks_avx2(const NF4DequantizeArgs& a, int64_t block_begin, int64_t block_end) {
  if (can_stream_stores(a))
    dequantize_blocks<true>(a, block_begin, block_end);
  else
    dequantize_blocks<false>(a, block_begin, block_end);
}

}  // namespace loraops::cpu
