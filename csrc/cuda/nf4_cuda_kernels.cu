// CUDA kernels of NF4 quantization and dequantization with double
// quantization, bitsandbytes' layout. Their arithmetic is the CPU backend's,
// rounding for rounding: explicit _rn intrinsics (and --fmad=false for this
// file) keep every product and sum separately rounded.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "nf4_cuda_kernels.h"

namespace loraops::cuda {
namespace {

__constant__ float kNF4Code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
    -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
    0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f,
    1.0f,
};

constexpr int kThreads = 256;
constexpr float kMinAbsmax = 1e-38f;

int blocks_for(int64_t work) {
  const int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<int>(b < 65535 * 16 ? (b > 0 ? b : 1) : 65535 * 16);
}

__device__ __forceinline__ float block_absmax(const NF4DequantizeLaunch& a, int64_t block) {
  if (a.absmax_codes == nullptr) return a.absmax[block];
  const float scaled = __fmul_rn(a.nested_code[a.absmax_codes[block]], a.nested_absmax[block / a.nested_blocksize]);
  return __fadd_rn(scaled, *a.offset);
}

template <typename Out>
__device__ __forceinline__ Out from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ float load_float(const void* base, FloatKind kind, int64_t i) {
  switch (kind) {
    case FloatKind::f32: return static_cast<const float*>(base)[i];
    case FloatKind::bf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    default: return __half2float(static_cast<const __half*>(base)[i]);
  }
}

// One thread per packed byte (two elements of the same block: blocks are even).
template <typename Out>
__global__ void dequantize_kernel(NF4DequantizeLaunch a) {
  const int64_t bytes = (a.n + 1) / 2;
  Out* out = static_cast<Out*>(a.out);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < bytes; i += int64_t{gridDim.x} * blockDim.x) {
    const uint8_t byte = a.packed[i];
    const int64_t e = 2 * i;
    const float absmax = block_absmax(a, e / a.blocksize);
    out[e] = from_float<Out>(__fmul_rn(kNF4Code[byte >> 4], absmax));
    if (e + 1 < a.n) out[e + 1] = from_float<Out>(__fmul_rn(kNF4Code[byte & 0x0F], absmax));
  }
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
  return v;
}

// max |load(i)| over i < len, spread across a warp's lanes; every lane gets it.
template <class Load>
__device__ __forceinline__ float warp_absmax(int64_t len, int lane, const Load& load) {
  float m = 0.0f;
  for (int64_t i = lane; i < len; i += 32) m = fmaxf(m, fabsf(load(i)));
  return warp_max(m);
}

// As bitsandbytes: the reciprocal of absmax clamped to 1e-38, correctly rounded.
__device__ __forceinline__ float reciprocal_of_absmax(float m) { return __fdiv_rn(1.0f, m < kMinAbsmax ? kMinAbsmax : m); }

__device__ __forceinline__ float clamp_unit(float v) { return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v); }

__device__ __forceinline__ uint8_t nf4_index(float v) {
  uint8_t idx = 0;
#pragma unroll
  for (int k = 0; k < 15; ++k) idx += v > __fdiv_rn(__fadd_rn(kNF4Code[k], kNF4Code[k + 1]), 2.0f);
  return idx;
}

// One warp per NF4 block: the absmax by shuffles, then the lanes write bytes.
__global__ void quantize_kernel(NF4QuantizeLaunch a) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  const int64_t num_blocks = (a.n + a.blocksize - 1) / a.blocksize;
  for (int64_t b = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32; b < num_blocks; b += warps) {
    const int64_t start = b * a.blocksize;
    const int64_t len = a.n - start < a.blocksize ? a.n - start : a.blocksize;
    const float m = warp_absmax(len, lane, [&](int64_t i) { return load_float(a.input, a.input_kind, start + i); });
    if (lane == 0) a.absmax[b] = m;
    const float recip = reciprocal_of_absmax(m);
    for (int64_t i = 2 * lane; i < len; i += 64) {
      const float v0 = load_float(a.input, a.input_kind, start + i);
      // an odd tail is padded with 0.0, the code of zero
      const float v1 = i + 1 < len ? load_float(a.input, a.input_kind, start + i + 1) : 0.0f;
      const uint8_t q0 = nf4_index(clamp_unit(__fmul_rn(v0, recip)));
      const uint8_t q1 = nf4_index(clamp_unit(__fmul_rn(v1, recip)));
      a.packed[(start + i) / 2] = static_cast<uint8_t>((q0 << 4) | q1);
    }
  }
}

// One warp per group; the 256 bounds in shared memory.
__global__ void quantize_to_code_kernel(QuantizeToCodeLaunch a) {
  __shared__ float bounds[256];
  for (int k = threadIdx.x; k < 256; k += blockDim.x) bounds[k] = a.bounds[k];
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  const int64_t groups = (a.n + a.group_size - 1) / a.group_size;
  for (int64_t g = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32; g < groups; g += warps) {
    const int64_t start = g * a.group_size;
    const int64_t len = a.n - start < a.group_size ? a.n - start : a.group_size;
    const float m = warp_absmax(len, lane, [&](int64_t i) { return a.input[start + i]; });
    if (lane == 0) a.group_absmax[g] = m;
    const float recip = reciprocal_of_absmax(m);
    for (int64_t i = lane; i < len; i += 32) {
      const float v = clamp_unit(__fmul_rn(a.input[start + i], recip));
      int idx = 0;
      for (int step = 128; step >= 1; step /= 2) idx += bounds[idx + step - 1] < v ? step : 0;
      a.codes[start + i] = static_cast<uint8_t>(idx);
    }
  }
}

}  // namespace

void nf4_dequantize(const NF4DequantizeLaunch& a, cudaStream_t stream) {
  const int grid = blocks_for((a.n + 1) / 2);
  switch (a.out_kind) {
    case FloatKind::f32: dequantize_kernel<float><<<grid, kThreads, 0, stream>>>(a); break;
    case FloatKind::bf16: dequantize_kernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(a); break;
    default: dequantize_kernel<__half><<<grid, kThreads, 0, stream>>>(a); break;
  }
}

void nf4_quantize(const NF4QuantizeLaunch& a, cudaStream_t stream) {
  const int64_t warps = (a.n + a.blocksize - 1) / a.blocksize;
  quantize_kernel<<<blocks_for(warps * 32), kThreads, 0, stream>>>(a);
}

void quantize_to_code(const QuantizeToCodeLaunch& a, cudaStream_t stream) {
  const int64_t warps = (a.n + a.group_size - 1) / a.group_size;
  quantize_to_code_kernel<<<blocks_for(warps * 32), kThreads, 0, stream>>>(a);
}

}  // namespace loraops::cuda
