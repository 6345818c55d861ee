// CUDA kernels of the LoRA ops: the dropout mask (the CPU's hash) and the decode
// path over an NF4 weight (the low-rank down-projection, then a GEMV that
// dequantizes in registers and adds bias and the LoRA term).
#include "../cpu/dropout.h"
#include "lora_cuda_kernels.h"
#include "nf4_cuda_device.cuh"

namespace loraops::cuda {
namespace {

constexpr int kThreads = 256;

int grid_for(int64_t blocks) { return static_cast<int>(blocks < 65535 * 32 ? (blocks > 0 ? blocks : 1) : 65535 * 32); }

__global__ void dropout_kernel(const float* in, float* out, int64_t n, uint64_t first_index, uint64_t seed,
                               uint32_t threshold, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const uint32_t bits = cpu::dropout_bits(seed, first_index + static_cast<uint64_t>(i));
    out[i] = bits >= threshold ? in[i] * scale : 0.0f;
  }
}

// One warp per (row m, adapter row j); the dropout mask of x's element m * k + kk.
template <typename X>
__global__ void lora_down_kernel(LoraDownLaunch a) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / 32);
  const X* x = static_cast<const X*>(a.x);
  for (int64_t w = blockIdx.x * int64_t{blockDim.x / 32} + threadIdx.x / 32; w < a.rows * a.r; w += warps) {
    const int64_t m = w / a.r, j = w % a.r;
    const X* x_row = x + m * a.k;
    const float* a_row = a.a + j * a.k;
    float sum = 0.0f;
    for (int64_t kk = lane; kk < a.k; kk += 32) {
      float v = to_float(x_row[kk]);
      if (a.dropout_threshold != 0)
        v = cpu::dropout_bits(a.seed, static_cast<uint64_t>(m * a.k + kk)) >= a.dropout_threshold ? v * a.keep_scale
                                                                                                    : 0.0f;
      sum += v * a_row[kk];
    }
    sum = warp_sum(sum);
    if (lane == 0) a.xa[m * a.r + j] = sum;
  }
}

// x[m, k0 .. k0 + 8) as floats, k0 a multiple of 8 (16- or 32-byte loads).
__device__ __forceinline__ void load8(const float* p, float* v) {
  const float4 lo = reinterpret_cast<const float4*>(p)[0], hi = reinterpret_cast<const float4*>(p)[1];
  v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* v) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const unsigned words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __uint_as_float(words[i] << 16);
    v[2 * i + 1] = __uint_as_float(words[i] & 0xFFFF0000u);
  }
}
__device__ __forceinline__ void load8(const __half* p, float* v) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const unsigned words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(words[i] & 0xFFFFu)));
    v[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(words[i] >> 16)));
  }
}

constexpr int kGemvWarps = 4;  // output features per thread block, one per warp

// One warp per output feature i, for up to kRows rows of x. Vectorized: each
// lane takes 16 packed bytes (32 weights of one NF4 block) at a time, so a warp
// reads 512 contiguous bytes per step; needs k % 32 == 0 and 16-byte aligned x
// and packed. Otherwise element by element.
template <typename X, int kRows, bool kVector>
__global__ void nf4_gemv_lora_kernel(NF4GemvLoraLaunch a) {
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = kNF4Code[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t i = blockIdx.x * int64_t{kGemvWarps} + threadIdx.x / 32;
  if (i >= a.n) return;
  const X* x = static_cast<const X*>(a.x);
  float acc[kRows];
#pragma unroll
  for (int m = 0; m < kRows; ++m) acc[m] = 0.0f;
  if constexpr (kVector) {
    const uint4* row = reinterpret_cast<const uint4*>(a.weight.packed + i * (a.k / 2));
    for (int64_t c = lane; c < a.k / 32; c += 32) {
      const uint4 bytes = row[c];
      const unsigned words[4] = {bytes.x, bytes.y, bytes.z, bytes.w};
      float part[kRows];
#pragma unroll
      for (int m = 0; m < kRows; ++m) part[m] = 0.0f;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        float w[8];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const unsigned byte = (words[q] >> (8 * j)) & 0xFFu;
          w[2 * j] = code[byte >> 4];
          w[2 * j + 1] = code[byte & 0x0Fu];
        }
#pragma unroll
        for (int m = 0; m < kRows; ++m) {
          if (m >= a.rows) break;
          float xv[8];
          load8(x + m * a.k + c * 32 + q * 8, xv);
#pragma unroll
          for (int e = 0; e < 8; ++e) part[m] += w[e] * xv[e];
        }
      }
      const float absmax = block_absmax(a.weight, (i * a.k + c * 32) / a.weight.blocksize);
#pragma unroll
      for (int m = 0; m < kRows; ++m) acc[m] += part[m] * absmax;
    }
  } else {
    for (int64_t kk = lane; kk < a.k; kk += 32) {
      const int64_t e = i * a.k + kk;
      const uint8_t byte = a.weight.packed[e / 2];
      const float w = __fmul_rn(code[e % 2 ? byte & 0x0F : byte >> 4], block_absmax(a.weight, e / a.weight.blocksize));
#pragma unroll
      for (int m = 0; m < kRows; ++m)
        if (m < a.rows) acc[m] += w * to_float(x[m * a.k + kk]);
    }
  }
  // The LoRA term of feature i: scale * xa[m, :] . B[i, :], spread over the lanes too.
  for (int64_t j = lane; j < a.r; j += 32) {
    const float b_ij = a.b[i * a.r + j];
#pragma unroll
    for (int m = 0; m < kRows; ++m)
      if (m < a.rows) acc[m] += a.scale * (a.xa[m * a.r + j] * b_ij);
  }
  const float bias = a.bias != nullptr ? to_float(static_cast<const X*>(a.bias)[i]) : 0.0f;
  X* out = static_cast<X*>(a.out);
#pragma unroll
  for (int m = 0; m < kRows; ++m) {
    if (m >= a.rows) break;  // uniform across the warp
    const float total = warp_sum(acc[m]);
    if (lane == 0) out[m * a.n + i] = from_float<X>(total + bias);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename X, int kRows>
void launch_gemv(const NF4GemvLoraLaunch& a, cudaStream_t stream) {
  const int grid = static_cast<int>((a.n + kGemvWarps - 1) / kGemvWarps);
  const bool vector = a.k % 32 == 0 && aligned16(a.x) && aligned16(a.weight.packed);
  auto* kernel = vector ? &nf4_gemv_lora_kernel<X, kRows, true> : &nf4_gemv_lora_kernel<X, kRows, false>;
  LORAOPS_CUDA_LAUNCH(kernel, grid, kGemvWarps * 32, stream)(a);
}

template <typename X>
void launch_gemv_rows(const NF4GemvLoraLaunch& a, cudaStream_t stream) {
  if (a.rows <= 1) return launch_gemv<X, 1>(a, stream);
  if (a.rows <= 2) return launch_gemv<X, 2>(a, stream);
  if (a.rows <= 4) return launch_gemv<X, 4>(a, stream);
  launch_gemv<X, 8>(a, stream);
}

}  // namespace

void dropout_apply(const float* in, float* out, int64_t n, uint64_t first_index, uint64_t seed, uint32_t threshold,
                   float scale, cudaStream_t stream) {
  if (n <= 0) return;
  LORAOPS_CUDA_LAUNCH(dropout_kernel, grid_for((n + kThreads - 1) / kThreads), kThreads, stream)(
      in, out, n, first_index, seed, threshold, scale);
}

void lora_down(const LoraDownLaunch& a, cudaStream_t stream) {
  if (a.rows * a.r == 0) return;
  const int grid = grid_for((a.rows * a.r + kThreads / 32 - 1) / (kThreads / 32));
  switch (a.x_kind) {
    case FloatKind::f32: LORAOPS_CUDA_LAUNCH(lora_down_kernel<float>, grid, kThreads, stream)(a); break;
    case FloatKind::bf16: LORAOPS_CUDA_LAUNCH(lora_down_kernel<__nv_bfloat16>, grid, kThreads, stream)(a); break;
    default: LORAOPS_CUDA_LAUNCH(lora_down_kernel<__half>, grid, kThreads, stream)(a); break;
  }
}

void nf4_gemv_lora(const NF4GemvLoraLaunch& a, cudaStream_t stream) {
  if (a.n == 0 || a.rows == 0) return;
  switch (a.x_kind) {
    case FloatKind::f32: launch_gemv_rows<float>(a, stream); break;
    case FloatKind::bf16: launch_gemv_rows<__nv_bfloat16>(a, stream); break;
    default: launch_gemv_rows<__half>(a, stream); break;
  }
}

}  // namespace loraops::cuda
