// Device helpers shared by the CUDA kernel files: the NF4 code, a block's scale
// under double quantization, and loads and stores in the three float types.
#pragma once

#include "cuda_compat.h"
#include "nf4_cuda_kernels.h"

namespace loraops::cuda {
namespace {

// The NF4 code as a literal type: the midpoints below are compile-time
// constants, computed in fp32 as the CPU backend computes them at run time.
struct NF4Table {
  float v[16];
};
__host__ __device__ constexpr NF4Table nf4_code() {
  return {{-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
           -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
           0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
           0.7229568362236023f, 1.0f}};
}
__constant__ float kNF4Code[16] = {
    nf4_code().v[0],  nf4_code().v[1],  nf4_code().v[2],  nf4_code().v[3],  nf4_code().v[4],  nf4_code().v[5],
    nf4_code().v[6],  nf4_code().v[7],  nf4_code().v[8],  nf4_code().v[9],  nf4_code().v[10], nf4_code().v[11],
    nf4_code().v[12], nf4_code().v[13], nf4_code().v[14], nf4_code().v[15],
};

struct NF4Midpoints {
  float v[15];
};
__host__ __device__ constexpr NF4Midpoints nf4_midpoints() {
  NF4Midpoints m{};
  for (int k = 0; k < 15; ++k) m.v[k] = (nf4_code().v[k] + nf4_code().v[k + 1]) / 2.0f;
  return m;
}

// The fp32 scale of NF4 block `block`: stored, or decoded from its 8-bit code
// as the CPU backend does (code * nested absmax, then + offset, each rounded).
__device__ __forceinline__ float block_absmax(const NF4WeightView& w, int64_t block) {
  if (w.absmax_codes == nullptr) return w.absmax[block];
  const int64_t group = w.nested_shift >= 0 ? block >> w.nested_shift : block / w.nested_blocksize;
  const float scaled = __fmul_rn(w.nested_code[w.absmax_codes[block]], w.nested_absmax[group]);
  return __fadd_rn(scaled, *w.offset);
}

// The scale of the block holding element e.
__device__ __forceinline__ float element_absmax(const NF4WeightView& w, int64_t e) {
  return block_absmax(w, e >> w.blocksize_shift);
}

// Host side: whether p may be read or written with 16-byte vector accesses.
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

// Host side: fn(T{}) with T the C++ type of kind, to pick a kernel's instance.
template <class Fn>
void with_float_type(FloatKind kind, const Fn& fn) {
  switch (kind) {
    case FloatKind::f32: fn(float{}); break;
    case FloatKind::bf16: fn(__nv_bfloat16{}); break;
    default: fn(__half{}); break;
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
  return v;
}

}  // namespace
}  // namespace loraops::cuda
