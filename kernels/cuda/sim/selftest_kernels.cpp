// Small kernels, written as CUDA, that show what the emulation checks: "none"
// is correct (a block-wide sum through shuffles and shared memory) and each
// other case breaks one rule that a GPU leaves undefined ("missing_barrier" is
// caught in one of the two scheduling orders, by its wrong result).
#include <string>

#include "../cuda_compat.h"
#include "selftest.h"

namespace loraops::cuda_sim {
namespace {

__device__ __forceinline__ float warp_sum(float v, unsigned mask) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(mask, v, offset);
  return v;
}

// out[0] = sum of threadIdx.x over a 128-thread block.
__global__ void block_sum(float* out) {
  __shared__ float partial[4];
  const float v = warp_sum(static_cast<float>(threadIdx.x), 0xFFFFFFFFu);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = partial[0] + partial[1] + partial[2] + partial[3];
}

// Half the warp has returned when the other half shuffles with the full mask.
__global__ void shuffle_after_exit(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = warp_sum(1.0f, 0xFFFFFFFFu);
}

// Half the warp waits at __syncthreads while the other half shuffles with it.
__global__ void barrier_and_shuffle(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    out[threadIdx.x] = warp_sum(1.0f, 0xFFFFFFFFu);
    __syncthreads();
  }
}

// Each thread reads its neighbour's slot with no __syncthreads after the writes:
// in one of the two scheduling orders the neighbour has not written yet.
__global__ void missing_barrier(float* out) {
  __shared__ float slots[64];
  slots[threadIdx.x] = 1.0f + threadIdx.x;
  out[threadIdx.x] = slots[(threadIdx.x + 1) % 64];
}

// Lanes of one warp name different masks.
__global__ void mismatched_masks(float* out) {
  const unsigned mask = threadIdx.x < 8 ? 0x000000FFu : 0xFFFFFFFFu;
  out[threadIdx.x] = __shfl_sync(mask, 1.0f, 0);
}

}  // namespace

void run_selftest(const std::string& fault) {
  float out[128] = {};
  if (fault == "none") {
    LORAOPS_CUDA_LAUNCH(block_sum, 2, 128, nullptr)(out);
    if (out[0] != 127.0f * 128.0f / 2.0f) throw CudaSimError("cuda sim selftest: wrong block sum");
  } else if (fault == "shuffle_after_exit") {
    LORAOPS_CUDA_LAUNCH(shuffle_after_exit, 1, 32, nullptr)(out);
  } else if (fault == "barrier_and_shuffle") {
    LORAOPS_CUDA_LAUNCH(barrier_and_shuffle, 1, 64, nullptr)(out);
  } else if (fault == "missing_barrier") {
    LORAOPS_CUDA_LAUNCH(missing_barrier, 1, 64, nullptr)(out);
    for (int t = 0; t < 64; ++t)
      if (out[t] != 1.0f + (t + 1) % 64)
        throw CudaSimError("cuda sim selftest: thread " + std::to_string(t) + " read a slot not yet written");
  } else if (fault == "mismatched_masks") {
    LORAOPS_CUDA_LAUNCH(mismatched_masks, 1, 32, nullptr)(out);
  } else if (fault == "bad_launch") {
    LORAOPS_CUDA_LAUNCH(block_sum, 1, 2048, nullptr)(out);
  } else {
    throw std::invalid_argument("cuda sim selftest: unknown fault '" + fault + "'");
  }
}

}  // namespace loraops::cuda_sim
