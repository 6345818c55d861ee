// The split-factor cube kernel's entry point (bf16 activations).
#include "lora_split_kernel.h"

extern "C" __global__ __aicore__ void loraops_lora_split_matmul_bf16(LORAOPS_LORA_SPLIT_MATMUL_PARAMS) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIC_ONLY);
  loraops::ascend::LoraSplitTiling tiling;
  tiling.m = m;
  tiling.n = n;
  tiling.k = k;
  tiling.lda = lda;
  tiling.ldb = ldb;
  tiling.ldc = ldc;
  tiling.a_k_major = a_k_major;
  tiling.b_k_major = b_k_major;
  tiling.a_part_stride = a_part_stride;
  tiling.b_part_stride = b_part_stride;
  tiling.parts = parts;
  tiling.tiles_per_core = tiles_per_core;
  AscendC::TPipe pipe;
  loraops::ascend::LoraSplitMatmulKernel<bfloat16_t> kernel;
  kernel.Init(a, b, c, tiling, &pipe);
  kernel.Process();
}
