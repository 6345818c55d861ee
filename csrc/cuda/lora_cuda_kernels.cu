// CUDA kernels of the LoRA ops: the dropout mask, from the same hash as the CPU.
#include "../cpu/dropout.h"
#include "lora_cuda_kernels.h"

namespace loraops::cuda {
namespace {

__global__ void dropout_kernel(const float* in, float* out, int64_t n, uint64_t first_index, uint64_t seed,
                               uint32_t threshold, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    const uint32_t bits = cpu::dropout_bits(seed, first_index + static_cast<uint64_t>(i));
    out[i] = bits >= threshold ? in[i] * scale : 0.0f;
  }
}

}  // namespace

void dropout_apply(const float* in, float* out, int64_t n, uint64_t first_index, uint64_t seed, uint32_t threshold,
                   float scale, cudaStream_t stream) {
  if (n <= 0) return;
  constexpr int kThreads = 256;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  dropout_kernel<<<static_cast<int>(blocks < 65535 * 32 ? blocks : 65535 * 32), kThreads, 0, stream>>>(
      in, out, n, first_index, seed, threshold, scale);
}

}  // namespace loraops::cuda
