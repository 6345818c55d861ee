// CUDA registrations of the NF4 ops: the shared host flow over nf4_cuda_ops.h's kernels on the CUDA runtime.
#include <torch/library.h>

#include "../gpu_runtime.h"
#include "nf4_cuda_ops.h"

namespace loraops {

using NF4CudaKernels = cuda_ops::NF4Kernels<cuda_ops::CudaRuntime>;
using NF4CudaDequantize = nf4_detail::NF4DequantizeOps<NF4CudaKernels>;

TORCH_LIBRARY_IMPL(loraops, CUDA, m) {
  m.impl("nf4_quantize", &NF4CudaKernels::quantize);
  m.impl("nf4_dequantize", &NF4CudaDequantize::dequantize);
  m.impl("nf4_dequantize_into", &NF4CudaDequantize::dequantize_into);
}

}  // namespace loraops
