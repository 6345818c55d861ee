// CUDA registrations of the LoRA ops: the shared host flow over lora_cuda_ops.h's kernels on the CUDA runtime.
#include <torch/library.h>

#include "../gpu_runtime.h"
#include "lora_cuda_ops.h"

namespace loraops {

using LoraCudaOps = cuda_ops::LoraOps<cuda_ops::CudaRuntime>;

TORCH_LIBRARY_IMPL(loraops, CUDA, m) {
  m.impl("lora_linear", &LoraCudaOps::lora_linear);
  m.impl("lora_linear_backward", &LoraCudaOps::lora_linear_backward);
  m.impl("lora_linear_nf4", &LoraCudaOps::lora_linear_nf4);
  m.impl("lora_linear_nf4_backward", &LoraCudaOps::lora_linear_nf4_backward);
}

}  // namespace loraops
