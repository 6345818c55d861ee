// The LoRA cube kernel's entry point.
#include "lora_matmul_kernel.h"

extern "C" __global__ __aicore__ void loraops_lora_matmul_fp32(LORAOPS_LORA_MATMUL_PARAMS) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIC_ONLY);
  loraops::ascend::LoraMatmulTiling tiling;
  tiling.m = m;
  tiling.n = n;
  tiling.k = k;
  tiling.lda = lda;
  tiling.ldb = ldb;
  tiling.ldc = ldc;
  tiling.a_k_major = a_k_major;
  tiling.b_k_major = b_k_major;
  tiling.tiles_per_core = tiles_per_core;
  AscendC::TPipe pipe;
  loraops::ascend::LoraMatmulKernel kernel;
  kernel.Init(a, b, c, tiling, &pipe);
  kernel.Process();
}
