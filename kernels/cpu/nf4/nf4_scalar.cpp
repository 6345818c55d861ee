// Portable NF4 kernels: the fallback on any CPU and the definition the vector
// variants are tested against.
#include "nf4_common.h"

namespace loraops::cpu {

using namespace detail;

int64_t nf4_quantize_blocks_scalar(const NF4QuantizeArgs& a, int64_t block_begin, int64_t block_end) {
  int64_t nonfinite = 0;
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t start = b * a.blocksize;
    const int64_t len = block_length(a.n, a.blocksize, b);
    float absmax = 0.0f;
    for (int64_t i = 0; i < len; ++i) {
      const float v = std::fabs(load_as_float(a.input, a.dtype, start + i));
      nonfinite += !is_finite_value(v);
      absmax = v > absmax ? v : absmax;
    }
    a.absmax[b] = absmax;
    quantize_tail(a, start, 0, len, reciprocal_of_absmax(absmax));
  }
  return nonfinite;
}

void nf4_dequantize_blocks_scalar(const NF4DequantizeArgs& a, int64_t block_begin, int64_t block_end) {
  uint32_t lut[16];
  BlockScales scales(a, block_begin);
  for (int64_t b = block_begin; b < block_end; ++b) {
    block_lut_bits(scales.next(), a.out_dtype, lut);
    dequantize_tail(a, b * a.blocksize, 0, block_length(a.n, a.blocksize, b), lut);
  }
}

int64_t quantize_to_code_blocks(const float* input, int64_t n, int64_t blocksize, const float* code,
                                int code_size, uint8_t* out, float* absmax_out, int64_t block_begin,
                                int64_t block_end) {
  // Midpoints padded with +inf to 256 entries, for a fixed-length branchless search.
  float bounds[256];
  nf4_format::code_midpoints(code, code_size, bounds);
  int64_t nonfinite = 0;
  for (int64_t b = block_begin; b < block_end; ++b) {
    const int64_t start = b * blocksize;
    const int64_t len = block_length(n, blocksize, b);
    float absmax = 0.0f;
    for (int64_t i = 0; i < len; ++i) {
      const float v = std::fabs(input[start + i]);
      nonfinite += !is_finite_value(v);
      absmax = v > absmax ? v : absmax;
    }
    absmax_out[b] = absmax;
    const float recip = reciprocal_of_absmax(absmax);
    for (int64_t i = 0; i < len; ++i) {
      const float v = clamp_unit(input[start + i] * recip);
      // number of midpoints strictly below v (ties to the lower code)
      int idx = 0;
      for (int step = 128; step >= 1; step /= 2) idx += bounds[idx + step - 1] < v ? step : 0;
      out[start + i] = static_cast<uint8_t>(idx);
    }
  }
  return nonfinite;
}

}  // namespace loraops::cpu
