// Counter-based dropout: the keep decision for element i is a hash of (seed, i),
// so the backward pass regenerates the forward's mask instead of storing it.
// The same function is the definition for every backend.
#pragma once

#include <cstdint>

// The hash runs on CUDA devices too (csrc/cuda), from this one definition.
#if defined(__CUDACC__)
#define LORAOPS_HOST_DEVICE __host__ __device__
#else
#define LORAOPS_HOST_DEVICE
#endif

namespace loraops::cpu {

// A 32-bit integer hash with full avalanche (Wellons' "lowbias32").
LORAOPS_HOST_DEVICE inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// Keyed by the seed and the high half of the index, then mixed with the low half.
LORAOPS_HOST_DEVICE inline uint32_t dropout_key(uint64_t seed, uint64_t index) {
  return mix32(static_cast<uint32_t>(index >> 32) ^ static_cast<uint32_t>(seed >> 32)) ^ static_cast<uint32_t>(seed);
}

LORAOPS_HOST_DEVICE inline uint32_t dropout_bits(uint64_t seed, uint64_t index) {
  return mix32(static_cast<uint32_t>(index) ^ dropout_key(seed, index));
}

// An element is kept when its bits are >= threshold = round(p * 2^32).
inline uint32_t dropout_threshold(double p) {
  const double t = p * 4294967296.0;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t + 0.5);
}

// out[i] = keep(first_index + i) ? in[i] * scale : 0, for i in [0, n). in may equal out.
void dropout_apply(const float* in, float* out, int64_t n, uint64_t first_index, uint64_t seed, uint32_t threshold,
                   float scale);

}  // namespace loraops::cpu
