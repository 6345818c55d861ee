// CUDA kernels of NF4 quantization and dequantization with double
// quantization, bitsandbytes' layout. Their arithmetic is the CPU backend's,
// rounding for rounding: explicit _rn intrinsics (and --fmad=false for this
// file) keep every product and sum separately rounded.
#include "nf4_cuda_device.cuh"

namespace loraops::cuda {
namespace {

using nf4_format::clamp_unit;
using nf4_format::nf4_index;
using nf4_format::reciprocal_of_absmax;

constexpr int kThreads = 256;

int blocks_for(int64_t work) {
  const int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<int>(grid_stride_blocks(b, 65535 * 16));
}

// One thread per packed byte (two elements of the same block: blocks are even).
template <typename Out>
__global__ void dequantize_kernel(NF4DequantizeLaunch a) {
  __shared__ float code[16];  // lanes index it at random: shared memory, not constant memory
  if (threadIdx.x < 16) code[threadIdx.x] = kNF4Code[threadIdx.x];
  __syncthreads();
  const int64_t bytes = (a.n + 1) / 2;
  Out* out = static_cast<Out*>(a.out);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < bytes; i += int64_t{gridDim.x} * blockDim.x) {
    const uint8_t byte = a.weight.packed[i];
    const int64_t e = 2 * i;
    const float absmax = element_absmax(a.weight, e);
    out[e] = from_float<Out>(__fmul_rn(code[byte >> 4], absmax));
    if (e + 1 < a.n) out[e + 1] = from_float<Out>(__fmul_rn(code[byte & 0x0F], absmax));
  }
}

// Eight outputs (four packed bytes of `word`, lowest first) as 16- or 32-byte stores.
__device__ __forceinline__ void store8(float* out, unsigned word, const float* code, float absmax) {
  float v[8];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const unsigned byte = (word >> (8 * j)) & 0xFFu;
    v[2 * j] = __fmul_rn(code[byte >> 4], absmax);
    v[2 * j + 1] = __fmul_rn(code[byte & 0x0Fu], absmax);
  }
  reinterpret_cast<float4*>(out)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(out)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

template <typename Half>
__device__ __forceinline__ unsigned half_bits(float v);
template <>
__device__ __forceinline__ unsigned half_bits<__nv_bfloat16>(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
template <>
__device__ __forceinline__ unsigned half_bits<__half>(float v) {
  return __half_as_ushort(__float2half_rn(v));
}

template <typename Half>
__device__ __forceinline__ void store8(Half* out, unsigned word, const float* code, float absmax) {
  unsigned pairs[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const unsigned byte = (word >> (8 * j)) & 0xFFu;
    pairs[j] = half_bits<Half>(__fmul_rn(code[byte >> 4], absmax)) |
               (half_bits<Half>(__fmul_rn(code[byte & 0x0Fu], absmax)) << 16);
  }
  *reinterpret_cast<uint4*>(out) = uint4{pairs[0], pairs[1], pairs[2], pairs[3]};
}

// One thread per 16 packed bytes (32 elements, inside one block: blocksizes are
// multiples of 32): a 16-byte load, 16-byte stores, one scale per thread, the
// code in shared memory (16 floats in 16 banks). Needs packed and out 16-byte
// aligned; a partial last chunk goes byte by byte.
template <typename Out>
__global__ void dequantize_vector_kernel(NF4DequantizeLaunch a) {
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = kNF4Code[threadIdx.x];
  __syncthreads();
  Out* out = static_cast<Out*>(a.out);
  const int64_t chunks = (a.n + 31) / 32;
  for (int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; c < chunks; c += int64_t{gridDim.x} * blockDim.x) {
    const float absmax = element_absmax(a.weight, c * 32);
    if ((c + 1) * 32 <= a.n) {
      const uint4 bytes = reinterpret_cast<const uint4*>(a.weight.packed)[c];
      Out* dst = out + c * 32;
      store8(dst, bytes.x, code, absmax);
      store8(dst + 8, bytes.y, code, absmax);
      store8(dst + 16, bytes.z, code, absmax);
      store8(dst + 24, bytes.w, code, absmax);
    } else {
      for (int64_t e = c * 32; e < a.n; e += 2) {
        const uint8_t byte = a.weight.packed[e / 2];
        out[e] = from_float<Out>(__fmul_rn(code[byte >> 4], absmax));
        if (e + 1 < a.n) out[e + 1] = from_float<Out>(__fmul_rn(code[byte & 0x0F], absmax));
      }
    }
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

// One warp per NF4 block: the absmax by shuffles, then the lanes write bytes.
template <typename In>
__global__ void quantize_kernel(NF4QuantizeLaunch a) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  const int64_t num_blocks = (a.n + a.blocksize - 1) / a.blocksize;
  const In* input = static_cast<const In*>(a.input);
  for (int64_t b = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32; b < num_blocks; b += warps) {
    const int64_t start = b * a.blocksize;
    const int64_t len = a.n - start < a.blocksize ? a.n - start : a.blocksize;
    bool finite = true;
    const float m = warp_absmax(len, lane, [&](int64_t i) {
      const float v = to_float(input[start + i]);
      finite = finite && isfinite(v);
      return v;
    });
    if (!finite) *a.nonfinite = 1;  // every writer stores the same value
    if (lane == 0) a.absmax[b] = m;
    const float recip = reciprocal_of_absmax(m);
    for (int64_t i = 2 * lane; i < len; i += 64) {
      const float v0 = to_float(input[start + i]);
      // an odd tail is padded with 0.0, the code of zero
      const float v1 = i + 1 < len ? to_float(input[start + i + 1]) : 0.0f;
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
  if (aligned16(a.weight.packed) && aligned16(a.out)) {
    const int grid = blocks_for((a.n + 31) / 32);
    with_float_type(a.out_kind, [&](auto type) {
    using T = decltype(type);
    LORAOPS_CUDA_LAUNCH(dequantize_vector_kernel<T>, grid, kThreads, stream)(a);
  });
    return;
  }
  const int grid = blocks_for((a.n + 1) / 2);
  with_float_type(a.out_kind, [&](auto type) {
    using T = decltype(type);
    LORAOPS_CUDA_LAUNCH(dequantize_kernel<T>, grid, kThreads, stream)(a);
  });
}

void nf4_quantize(const NF4QuantizeLaunch& a, cudaStream_t stream) {
  const int64_t warps = (a.n + a.blocksize - 1) / a.blocksize;
  const int grid = blocks_for(warps * 32);
  with_float_type(a.input_kind, [&](auto type) {
    using T = decltype(type);
    LORAOPS_CUDA_LAUNCH(quantize_kernel<T>, grid, kThreads, stream)(a);
  });
}

void quantize_to_code(const QuantizeToCodeLaunch& a, cudaStream_t stream) {
  const int64_t warps = (a.n + a.group_size - 1) / a.group_size;
  LORAOPS_CUDA_LAUNCH(quantize_to_code_kernel, blocks_for(warps * 32), kThreads, stream)(a);
}

}  // namespace loraops::cuda
