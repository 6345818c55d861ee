// A CPU emulation of the subset of CUDA that loraops' kernels use, so that the
// .cu files compile with the host compiler and run on CPU tensors in CI (built
// with LORAOPS_CUDA_SIM=ON). Each thread of a block runs as a fiber with its own
// stack, a warp at a time as far as it can go; __syncthreads and the warp
// shuffles are barriers at which the fibers wait for their block or warp. What a GPU leaves undefined and this catches
// (CudaSimError naming the block and thread): a shuffle or __syncwarp whose mask
// includes a lane that has exited or waits elsewhere, lanes of one warp syncing
// with different masks, a __syncthreads that not every live thread reaches.
// A read of another thread's write with no barrier between goes wrong in one
// of the two scheduling orders (LORAOPS_CUDA_SIM_ORDER=forward|reverse), and
// shared memory starts zeroed in each block. Not modelled: timing, memory
// coalescing, bank conflicts, true concurrency (the fibers run one at a time),
// device memory bounds (the host checks of the ops guard those).
//
// Include this only in translation units that hold kernels: it defines the
// CUDA keywords and built-in variables as macros.
#pragma once

#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>

#include "cuda_sim_types.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __constant__
#define __restrict__ __restrict
#define __launch_bounds__(...)
// One copy per block: each block runs on a host thread of its own, which
// starts with these zeroed.
#define __shared__ static thread_local

namespace loraops::cuda_sim {

struct CudaSimError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const dim3& thread_index();
const dim3& block_index();
const dim3& block_dim();
const dim3& grid_dim();

// Every live thread of the block waits here until all of them arrive.
void sync_block();
// The calling lane publishes `value` to its warp, waits for the lanes in mask,
// and gets the value of lane `source` (its own when source is out of range).
uint64_t exchange_in_warp(unsigned mask, uint64_t value, int source);
void sync_warp(unsigned mask);
int lane_id();

void launch(dim3 grid, dim3 block, const std::function<void()>& body);

// kernel<<<grid, block, 0, stream>>>(args...) is Launch{grid, block, kernel}(args...).
template <class Kernel>
struct Launch {
  dim3 grid, block;
  Kernel kernel;
  template <class... Args>
  void operator()(Args... args) const {
    launch(grid, block, [&] { kernel(args...); });
  }
};
template <class Kernel>
Launch(dim3, dim3, Kernel) -> Launch<Kernel>;

template <class T>
T shuffle(unsigned mask, T value, int source) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = exchange_in_warp(mask, bits, source);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

}  // namespace loraops::cuda_sim

#define threadIdx (::loraops::cuda_sim::thread_index())
#define blockIdx (::loraops::cuda_sim::block_index())
#define blockDim (::loraops::cuda_sim::block_dim())
#define gridDim (::loraops::cuda_sim::grid_dim())
constexpr int warpSize = 32;

inline void __syncthreads() { ::loraops::cuda_sim::sync_block(); }
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu) { ::loraops::cuda_sim::sync_warp(mask); }
template <class T>
T __shfl_sync(unsigned mask, T v, int source, int width = 32) {
  const int lane = ::loraops::cuda_sim::lane_id();
  return ::loraops::cuda_sim::shuffle(mask, v, (lane & ~(width - 1)) + (source & (width - 1)));
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = ::loraops::cuda_sim::lane_id();
  const int source = lane ^ lane_mask;
  return ::loraops::cuda_sim::shuffle(mask, v, (source & ~(width - 1)) == (lane & ~(width - 1)) ? source : lane);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::loraops::cuda_sim::lane_id();
  const int source = lane + static_cast<int>(delta);
  return ::loraops::cuda_sim::shuffle(mask, v, (source & ~(width - 1)) == (lane & ~(width - 1)) ? source : lane);
}
template <class T>
T __ldg(const T* p) {
  return *p;
}

using std::isfinite;

// Arithmetic intrinsics: each rounds once (the sim compiles without contraction).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }

// The half-precision types as storage, with the conversions CUDA defines.
struct __nv_bfloat16 {
  uint16_t __x;
};
struct __half {
  uint16_t __x;
};
struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};
struct alignas(4) __half2 {
  __half x, y;
};
inline float __bfloat162float(__nv_bfloat16 v) {
  const uint32_t bits = uint32_t{v.__x} << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return {0x7FFF};  // CUDA's canonical NaN
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return {static_cast<uint16_t>(bits >> 16)};
}
inline float __half2float(__half v) { return c10::detail::fp16_ieee_to_fp32_value(v.__x); }
inline __half __float2half_rn(float f) { return {c10::detail::fp16_ieee_from_fp32_value(f)}; }

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 v) { return v.__x; }
inline unsigned short __half_as_ushort(__half v) { return v.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short v) { return {v}; }
inline __half __ushort_as_half(unsigned short v) { return {v}; }
inline float __uint_as_float(unsigned v) {
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned v;
  std::memcpy(&v, &f, 4);
  return v;
}
