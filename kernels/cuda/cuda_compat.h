// What a kernel file (.cu) includes for the CUDA types and its launches. nvcc
// gets the CUDA headers; the CPU emulation (LORAOPS_CUDA_SIM, sim/cuda_sim.h)
// compiles the same kernels with the host compiler. Launches are written
//   LORAOPS_CUDA_LAUNCH(kernel, grid, block, stream)(args...);
// (no dynamic shared memory; a kernel template with several arguments goes
// through a pointer first, as macro arguments cannot hold its commas).
#pragma once

#if defined(LORAOPS_CUDA_SIM)
#include "sim/cuda_sim.h"
#define LORAOPS_CUDA_LAUNCH(kernel, grid, block, stream) \
  ::loraops::cuda_sim::Launch { dim3(grid), dim3(block), kernel }
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define LORAOPS_CUDA_LAUNCH(kernel, grid, block, stream) kernel<<<grid, block, 0, stream>>>
#endif

#include <cstdint>

namespace loraops::cuda {

// The most blocks a launcher asks for along a grid-stride loop, given what it
// would ask for on a GPU: the emulation asks for few, so that the loops' later
// rounds (and the barriers between them) run in the tests.
inline constexpr int64_t grid_stride_blocks(int64_t wanted, int64_t gpu_most) {
#if defined(LORAOPS_CUDA_SIM)
  gpu_most = gpu_most < 3 ? gpu_most : 3;
#endif
  return wanted < 1 ? 1 : (wanted < gpu_most ? wanted : gpu_most);
}

}  // namespace loraops::cuda
