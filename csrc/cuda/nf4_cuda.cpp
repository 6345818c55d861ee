// CUDA registrations of the NF4 ops (nf4_cuda_ops.h over the CUDA runtime).
#include <torch/library.h>

#include "gpu_runtime.h"
#include "nf4_cuda_ops.h"

namespace loraops {

using NF4CudaOps = cuda_ops::NF4Ops<cuda_ops::CudaRuntime>;

TORCH_LIBRARY_IMPL(loraops, CUDA, m) {
  m.impl("nf4_quantize", &NF4CudaOps::quantize);
  m.impl("nf4_dequantize", &NF4CudaOps::dequantize);
  m.impl("nf4_dequantize_into", &NF4CudaOps::dequantize_into);
}

}  // namespace loraops
