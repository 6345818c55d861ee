// Launchers of the CUDA kernels of the LoRA ops (raw pointers, no torch headers).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace loraops::cuda {

// out[i] = keep(first_index + i) ? in[i] * scale : 0 for i < n, with the
// counter-based mask of csrc/cpu/dropout.h (the CPU kernels' mask, bit for bit).
// in may equal out.
void dropout_apply(const float* in, float* out, int64_t n, uint64_t first_index, uint64_t seed, uint32_t threshold,
                   float scale, cudaStream_t stream);

}  // namespace loraops::cuda
