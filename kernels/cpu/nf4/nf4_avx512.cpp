// NF4 kernels for AVX-512 (F, BW, VL, DQ). Compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512dq; only called after a run-time CPU check.
#include <immintrin.h>

#include "nf4_common.h"

namespace loraops::cpu {

using namespace detail;

namespace {

// Load up to 16 elements (masked) as fp32; masked-off lanes read as 0.0.
inline __m512 load16(const void* base, FloatType t, int64_t i, __mmask16 m) {
  switch (t) {
    case FloatType::f32: return _mm512_maskz_loadu_ps(m, static_cast<const float*>(base) + i);
    case FloatType::bf16: {
      const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + i);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    default: {
      const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(base) + i);
      return _mm512_cvtph_ps(h);
    }
  }
}

inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xFFFF)
                         : static_cast<__mmask16>((1u << remaining) - 1u);
}

// Round fp32 lanes to bf16 bit patterns (nearest even), one per 32-bit lane.
inline __m512i round_to_bf16_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb);
  return _mm512_srli_epi32(r, 16);
}

}  // namespace

int64_t nf4_quantize_blocks_avx512(const NF4QuantizeArgs& a, int64_t block_begin, int64_t block_end) {
  // The 15 midpoints in one register (lane 15 is never read): a 4-step
  // branchless binary search per lane replaces 15 compares.
  alignas(64) float bounds16[16];
  std::memcpy(bounds16, kNF4Midpoints.v, sizeof(float) * 15);
  bounds16[15] = INFINITY;
  const __m512 vbounds = _mm512_load_ps(bounds16);
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7FFFFFFF));
  const __m512 inf = _mm512_set1_ps(INFINITY);
  const __m512 one = _mm512_set1_ps(1.0f), minus_one = _mm512_set1_ps(-1.0f);
  const __m128i low_nibble_of_word = _mm_set1_epi16(0x00F0);
  int64_t nonfinite = 0;

  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t start = b * a.blocksize;
    const int64_t len = block_length(a.n, a.blocksize, b);

    __m512 vmax = _mm512_setzero_ps();
    for (int64_t i = 0; i < len; i += 16) {
      const __m512 v = _mm512_and_ps(load16(a.input, a.dtype, start + i, tail_mask(len - i)), abs_mask);
      // not (|v| < inf) catches both Inf and NaN
      nonfinite += __builtin_popcount(_mm512_cmp_ps_mask(v, inf, _CMP_NLT_UQ));
      vmax = _mm512_max_ps(vmax, v);
    }
    const float absmax = _mm512_reduce_max_ps(vmax);
    a.absmax[b] = absmax;
    const __m512 recip = _mm512_set1_ps(reciprocal_of_absmax(absmax));

    for (int64_t i = 0; i < len; i += 16) {
      const int64_t rem = len - i;
      // masked-off lanes load 0.0 -> index 7, which is exactly bitsandbytes'
      // padding nibble for an odd-length tail
      __m512 s = _mm512_mul_ps(load16(a.input, a.dtype, start + i, tail_mask(rem)), recip);
      s = _mm512_min_ps(_mm512_max_ps(s, minus_one), one);
      // idx = number of midpoints strictly below s (ties go to the lower code)
      __m512i idx = _mm512_setzero_si512();
      for (int step = 8; step >= 1; step /= 2) {
        const __m512 probe = _mm512_permutexvar_ps(_mm512_add_epi32(idx, _mm512_set1_epi32(step - 1)), vbounds);
        idx = _mm512_mask_add_epi32(idx, _mm512_cmp_ps_mask(s, probe, _CMP_GT_OQ), idx, _mm512_set1_epi32(step));
      }
      // 16 indices -> 8 bytes, element 2j in the high nibble
      const __m128i q = _mm512_cvtepi32_epi8(idx);
      const __m128i hi = _mm_and_si128(_mm_slli_epi16(q, 4), low_nibble_of_word);
      const __m128i lo = _mm_srli_epi16(q, 8);
      const __m128i bytes = _mm_packus_epi16(_mm_or_si128(hi, lo), _mm_setzero_si128());
      uint8_t* dst = a.packed + (start + i) / 2;
      if (rem >= 16) {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), bytes);
      } else {
        const int nbytes = static_cast<int>((rem + 1) / 2);
        _mm_mask_storeu_epi8(dst, static_cast<__mmask16>((1u << nbytes) - 1u), bytes);
      }
    }
  }
  return nonfinite;
}

namespace {

template <bool kStream>
void dequantize_blocks(const NF4DequantizeArgs& a, int64_t block_begin, int64_t block_end) {
  const __m512 code = _mm512_loadu_ps(kNF4Code.v);
  const __m128i low4 = _mm_set1_epi16(0x000F);
  uint32_t lut_scalar[16];
  BlockScales scales(a, block_begin);

  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t start = b * a.blocksize;
    const int64_t len = block_length(a.n, a.blocksize, b);
    const __m512 values = _mm512_mul_ps(code, _mm512_set1_ps(scales.next()));
    __m512i lut;
    switch (a.out_dtype) {
      case FloatType::f32: lut = _mm512_castps_si512(values); break;
      case FloatType::bf16: lut = round_to_bf16_bits(values); break;
      default:
        lut = _mm512_cvtepu16_epi32(_mm512_cvtps_ph(values, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        break;
    }

    const uint8_t* src = a.packed + start / 2;
    int64_t i = 0;
    for (; i + 16 <= len; i += 16) {
      // 8 bytes -> 16 nibble indices in element order (high nibble first)
      const __m128i w = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i / 2)));
      const __m128i nib = _mm_or_si128(_mm_srli_epi16(w, 4), _mm_slli_epi16(_mm_and_si128(w, low4), 8));
      const __m512i out = _mm512_permutexvar_epi32(_mm512_cvtepu8_epi32(nib), lut);
      if (a.out_dtype == FloatType::f32) {
        auto* dst = reinterpret_cast<__m512i*>(static_cast<uint32_t*>(a.out) + (start + i - a.out_first_element));
        kStream ? _mm512_stream_si512(dst, out) : _mm512_storeu_si512(dst, out);
      } else {
        auto* dst = reinterpret_cast<__m256i*>(static_cast<uint16_t*>(a.out) + (start + i - a.out_first_element));
        kStream ? _mm256_stream_si256(dst, _mm512_cvtepi32_epi16(out))
                : _mm256_storeu_si256(dst, _mm512_cvtepi32_epi16(out));
      }
    }
    if (i < len) {
      _mm512_storeu_si512(lut_scalar, lut);
      dequantize_tail(a, start, i, len, lut_scalar);
    }
  }
  if (kStream) _mm_sfence();  // order the non-temporal stores before the caller reads
}

}  // namespace

void nf4_dequantize_blocks_avx512(const NF4DequantizeArgs& a, int64_t block_begin, int64_t block_end) {
  if (can_stream_stores(a))
    dequantize_blocks<true>(a, block_begin, block_end);
  else
    dequantize_blocks<false>(a, block_begin, block_end);
}

}  // namespace loraops::cpu
