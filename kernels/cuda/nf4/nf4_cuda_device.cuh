// Device helpers shared by the CUDA kernel files: the NF4 code, a block's scale
// under double quantization, and loads and stores in the three float types.
#pragma once

#include "../cuda_compat.h"
#include "csrc/nf4/nf4_format.h"
#include "nf4_cuda_kernels.h"

namespace loraops::cuda {
namespace {

using nf4_format::nf4_code_value;

// The NF4 code in constant memory, for kernels that stage it into shared memory.
__constant__ float kNF4Code[16] = {
    nf4_code_value(0),  nf4_code_value(1),  nf4_code_value(2),  nf4_code_value(3),
    nf4_code_value(4),  nf4_code_value(5),  nf4_code_value(6),  nf4_code_value(7),
    nf4_code_value(8),  nf4_code_value(9),  nf4_code_value(10), nf4_code_value(11),
    nf4_code_value(12), nf4_code_value(13), nf4_code_value(14), nf4_code_value(15),
};

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
