// The CUDA runtime as the op templates (nf4_cuda_ops.h, lora_cuda_ops.h) use it:
// the device type, a device guard, the current stream, the launch check.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace loraops::cuda_ops {

struct CudaRuntime {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;
  using Guard = c10::cuda::CUDAGuard;
  static cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }
  static void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }
};

}  // namespace loraops::cuda_ops
