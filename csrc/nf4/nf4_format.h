// The arithmetic that defines NF4 (bitsandbytes' format, bit for bit), defined
// once for every backend: the CPU kernels, the CUDA kernels, the Ascend C
// kernels and both emulators include this header. No torch and no tables in
// memory: Ascend C device code keeps no global data, CUDA device code cannot
// read a host array, so the code is a switch and everything else constexpr.
// Compiled everywhere without fused multiply-add: it would change the results.
#pragma once

#include <cstdint>

#include "../host_device.h"

namespace loraops::nf4_format {

// The 16 NF4 code values, sorted (index = 4-bit code), as bitsandbytes'
// get_4bit_type("nf4").
LORAOPS_HOST_DEVICE constexpr float nf4_code_value(uint32_t i) {
  switch (i) {
    case 0: return -1.0f;
    case 1: return -0.6961928009986877f;
    case 2: return -0.5250730514526367f;
    case 3: return -0.39491748809814453f;
    case 4: return -0.28444138169288635f;
    case 5: return -0.18477343022823334f;
    case 6: return -0.09105003625154495f;
    case 7: return 0.0f;
    case 8: return 0.07958029955625534f;
    case 9: return 0.16093020141124725f;
    case 10: return 0.24611230194568634f;
    case 11: return 0.33791524171829224f;
    case 12: return 0.44070982933044434f;
    case 13: return 0.5626170039176941f;
    case 14: return 0.7229568362236023f;
    default: return 1.0f;
  }
}

// Midpoint k between codes k and k + 1, in fp32 as bitsandbytes computes it.
LORAOPS_HOST_DEVICE constexpr float nf4_midpoint(uint32_t k) {
  return (nf4_code_value(k) + nf4_code_value(k + 1)) / 2.0f;
}

// The code and its 15 midpoints as literal arrays, for vector loads (CPU) and
// compile-time immediates (CUDA).
struct NF4CodeTable {
  float v[16];
};
struct NF4Midpoints {
  float v[15];
};
LORAOPS_HOST_DEVICE constexpr NF4CodeTable nf4_code() {
  NF4CodeTable t{};
  for (uint32_t i = 0; i < 16; ++i) t.v[i] = nf4_code_value(i);
  return t;
}
LORAOPS_HOST_DEVICE constexpr NF4Midpoints nf4_midpoints() {
  NF4Midpoints m{};
  for (uint32_t k = 0; k < 15; ++k) m.v[k] = nf4_midpoint(k);
  return m;
}

// bitsandbytes clamps absmax to 1e-38 before the reciprocal, so an all-zero
// block maps every value to the code of 0.0 (and a partial last block's stored
// scale is clamped to it).
constexpr float kMinAbsmax = 1e-38f;

// Blocks per group of double quantization (bitsandbytes' nested blocksize).
constexpr int64_t kNestedBlocksize = 256;

LORAOPS_HOST_DEVICE inline float reciprocal_of_absmax(float absmax) {
  return 1.0f / (absmax < kMinAbsmax ? kMinAbsmax : absmax);
}

LORAOPS_HOST_DEVICE inline float clamp_unit(float v) { return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v); }

// The nearest code of a scaled value: the number of midpoints strictly below it
// (torch.bucketize with right=False), so ties go to the lower code.
LORAOPS_HOST_DEVICE inline uint8_t nf4_index(float scaled) {
  constexpr NF4Midpoints kMidpoints = nf4_midpoints();
  uint8_t idx = 0;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int k = 0; k < 15; ++k) idx += static_cast<uint8_t>(scaled > kMidpoints.v[k]);
  return idx;
}

// Midpoints between consecutive entries of a sorted code of code_size <= 256
// values (the dynamic 8-bit map of double quantization), in fp32 as
// bitsandbytes computes them, padded with +inf to 256 entries for a
// fixed-length search. Host code only.
inline void code_midpoints(const float* code, int code_size, float bounds[256]) {
  for (int k = 0; k < 256; ++k) bounds[k] = k + 1 < code_size ? (code[k] + code[k + 1]) / 2.0f : __builtin_inff();
}

}  // namespace loraops::nf4_format
