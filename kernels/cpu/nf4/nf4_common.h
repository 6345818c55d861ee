// Scalar building blocks shared by every instruction-set variant of the NF4
// kernels. They define the exact arithmetic the vector paths must reproduce.
// Compiled with -ffp-contract=off: a fused multiply-add would change results.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "csrc/nf4/nf4_format.h"
#include "nf4_kernels.h"

namespace loraops::cpu::detail {

using nf4_format::clamp_unit;
using nf4_format::nf4_index;
using nf4_format::reciprocal_of_absmax;

// The NF4 code and its midpoints as arrays, for vector loads.
inline constexpr nf4_format::NF4CodeTable kNF4Code = nf4_format::nf4_code();
inline constexpr nf4_format::NF4Midpoints kNF4Midpoints = nf4_format::nf4_midpoints();

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

// Round to nearest even, as torch's float -> bfloat16 conversion does.
inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if (std::isnan(f)) return 0x7FC0;
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// IEEE half conversions (round to nearest even, subnormals kept).
inline float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24
    const float mag = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign ? -mag : mag;
  }
  if (exp == 31) return bits_to_float(sign | 0x7F800000u | (mant << 13));
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline uint16_t float_to_f16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return sign | (abs > 0x7F800000u ? 0x7E00u : 0x7C00u);
  if (abs >= 0x477FF000u) return sign | 0x7C00u;  // rounds to >= 65520: overflow to inf
  if (abs < 0x38800000u) {
    // result is subnormal (or zero) in half: round |f| * 2^24 to nearest even integer
    const float mag = bits_to_float(abs) * 16777216.0f;  // exact: scaling by a power of two
    const float r = std::nearbyint(mag);                 // default rounding mode: nearest even
    return sign | static_cast<uint16_t>(r);
  }
  // normal half: drop 13 mantissa bits with round to nearest even
  uint32_t v = abs - (112u << 23);
  v += 0x0FFFu + ((v >> 13) & 1u);
  return sign | static_cast<uint16_t>(v >> 13);
}

inline float load_as_float(const void* base, FloatType t, int64_t i) {
  switch (t) {
    case FloatType::f32: return static_cast<const float*>(base)[i];
    case FloatType::bf16: return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
    default: return f16_to_float(static_cast<const uint16_t*>(base)[i]);
  }
}

inline bool is_finite_value(float v) { return std::fabs(v) <= 3.4028234663852886e38f; }

// The absmax of consecutive blocks, reconstructed from double quantization when
// present. Walks the nested groups incrementally: a division per block would cost
// more than dequantizing the block.
class BlockScales {
 public:
  BlockScales(const NF4DequantizeArgs& a, int64_t first_block) : a_(a), block_(first_block) {
    if (a.absmax_codes != nullptr) {
      group_ = first_block / a.nested_blocksize;
      group_end_ = (group_ + 1) * a.nested_blocksize;
    }
  }

  // absmax of the next block (the first call gives first_block's).
  float next() {
    const int64_t b = block_++;
    if (a_.absmax_codes == nullptr) return a_.absmax[b];
    if (b == group_end_) {
      ++group_;
      group_end_ += a_.nested_blocksize;
    }
    const float scaled = a_.nested_code[a_.absmax_codes[b]] * a_.nested_absmax[group_];
    return scaled + a_.offset;  // two roundings, as bitsandbytes: no fused multiply-add
  }

 private:
  const NF4DequantizeArgs& a_;
  int64_t block_;
  int64_t group_ = 0;
  int64_t group_end_ = 0;
};

// Non-temporal vector stores need 32/64-byte aligned addresses: true for every
// 16-element group when the output is 64-byte aligned, since blocks start at
// multiples of 32 elements.
inline bool can_stream_stores(const NF4DequantizeArgs& a) {
  return a.stream_stores && reinterpret_cast<uintptr_t>(a.out) % 64 == 0 && a.out_first_element % 32 == 0;
}

// Element range of block b.
inline int64_t block_length(int64_t n, int64_t blocksize, int64_t b) {
  const int64_t start = b * blocksize;
  return n - start < blocksize ? n - start : blocksize;
}

// The 16 dequantized values of a block, rounded to the output type, stored as
// raw bits (fp32 bits, or a 16-bit pattern in the low half).
inline void block_lut_bits(float absmax, FloatType out, uint32_t lut[16]) {
  for (int k = 0; k < 16; ++k) {
    const float v = kNF4Code.v[k] * absmax;
    switch (out) {
      case FloatType::f32: lut[k] = float_to_bits(v); break;
      case FloatType::bf16: lut[k] = float_to_bf16(v); break;
      default: lut[k] = float_to_f16(v); break;
    }
  }
}

// Scalar quantization of elements [from, len) of a block whose data starts at
// element `start`; `from` is even. Writes bytes from/2 .. ceil(len/2).
inline void quantize_tail(const NF4QuantizeArgs& a, int64_t start, int64_t from, int64_t len,
                          float recip) {
  for (int64_t i = from; i < len; i += 2) {
    const float v0 = load_as_float(a.input, a.dtype, start + i);
    // an odd tail is padded with 0.0, which maps to the code of zero (index 7)
    const float v1 = (i + 1 < len) ? load_as_float(a.input, a.dtype, start + i + 1) : 0.0f;
    const uint8_t q0 = nf4_index(clamp_unit(v0 * recip));
    const uint8_t q1 = nf4_index(clamp_unit(v1 * recip));
    a.packed[(start + i) / 2] = static_cast<uint8_t>((q0 << 4) | q1);
  }
}

// Scalar dequantization of elements [from, len) of block starting at `start`.
inline void dequantize_tail(const NF4DequantizeArgs& a, int64_t start, int64_t from, int64_t len,
                            const uint32_t lut[16]) {
  for (int64_t i = from; i < len; ++i) {
    const uint8_t byte = a.packed[(start + i) / 2];
    const uint32_t bits = lut[(i & 1) ? (byte & 0x0F) : (byte >> 4)];
    const int64_t at = start + i - a.out_first_element;
    if (a.out_dtype == FloatType::f32)
      static_cast<uint32_t*>(a.out)[at] = bits;
    else
      static_cast<uint16_t*>(a.out)[at] = static_cast<uint16_t>(bits);
  }
}

}  // namespace loraops::cpu::detail
