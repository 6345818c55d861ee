// Counter-based dropout: the keep decision for element i is a hash of (seed, i),
// so the backward pass regenerates the forward's mask instead of storing it.
// This header is the definition for every backend (CPU kernels, CUDA kernels
// on the device, the emulators) and the Python reference mirrors it.
#pragma once

#include <cstdint>

#include "../host_device.h"

namespace loraops::dropout {

// A 32-bit integer hash with full avalanche (Wellons' "lowbias32"). Its
// constants are named: the Ascend kernels run the same steps on vector lanes.
constexpr uint32_t kMixShift1 = 16, kMixShift2 = 15, kMixShift3 = 16;
constexpr uint32_t kMixMultiplier1 = 0x7feb352dU, kMixMultiplier2 = 0x846ca68bU;

LORAOPS_HOST_DEVICE inline uint32_t mix32(uint32_t x) {
  x ^= x >> kMixShift1;
  x *= kMixMultiplier1;
  x ^= x >> kMixShift2;
  x *= kMixMultiplier2;
  x ^= x >> kMixShift3;
  return x;
}

// Keyed by the seed and the high half of the index, then mixed with the low half.
LORAOPS_HOST_DEVICE inline uint32_t key(uint64_t seed, uint64_t index) {
  return mix32(static_cast<uint32_t>(index >> 32) ^ static_cast<uint32_t>(seed >> 32)) ^ static_cast<uint32_t>(seed);
}

LORAOPS_HOST_DEVICE inline uint32_t bits(uint64_t seed, uint64_t index) {
  return mix32(static_cast<uint32_t>(index) ^ key(seed, index));
}

// An element is kept when its bits are >= threshold = round(p * 2^32).
inline uint32_t threshold(double p) {
  const double t = p * 4294967296.0;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t + 0.5);
}

// A mask as kernels apply it to a matrix x flattened row-major: element i is
// kept when bits(seed, i) >= threshold, then scaled by keep_scale; threshold 0
// keeps everything unscaled.
struct Mask {
  uint64_t seed = 0;
  uint32_t threshold = 0;
  float keep_scale = 1.0f;
};

// The mask of dropout probability p in [0, 1) with this seed (none for p = 0).
inline Mask mask(double p, int64_t seed) {
  if (p == 0.0) return {};
  return {static_cast<uint64_t>(seed), threshold(p), static_cast<float>(1.0 / (1.0 - p))};
}

LORAOPS_HOST_DEVICE inline float apply(const Mask& m, uint64_t index, float v) {
  if (m.threshold == 0) return v;
  return bits(m.seed, index) >= m.threshold ? v * m.keep_scale : 0.0f;
}

}  // namespace loraops::dropout
