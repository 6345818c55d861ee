// The LoRA kernels' entry points, declared once: the kernel sources define them
// with these parameter lists, and the emulator's test ops call them through
// this header (the CANN build's launches are generated from the definitions).
// Scalars only, as the NF4 kernels (nf4_kernels.h).
#pragma once

#include "kernel_operator.h"

#define LORAOPS_LORA_VECTOR_SCALARS                                                                        \
  uint64_t n, uint64_t tiles_per_core, uint64_t index_base, uint64_t seed, uint32_t threshold, float keep_scale
#define LORAOPS_LORA_MASK_TO_FLOAT_PARAMS GM_ADDR x, GM_ADDR out, LORAOPS_LORA_VECTOR_SCALARS
#define LORAOPS_LORA_ADD_MASKED_PARAMS GM_ADDR x, GM_ADDR term, LORAOPS_LORA_VECTOR_SCALARS, float scale
#define LORAOPS_LORA_FUSED_MATMUL_PARAMS                                                                     \
  GM_ADDR a1, GM_ADDR b1, GM_ADDR a2, GM_ADDR b2, GM_ADDR c, uint64_t m, uint64_t n, uint64_t k1, uint64_t k2, \
      uint64_t lda1, uint64_t ldb1, uint64_t lda2, uint64_t ldb2, uint64_t ldc, uint32_t b_k_major,            \
      uint64_t tiles_per_core
#define LORAOPS_LORA_NF4_FUSED_PARAMS                                                                      \
  GM_ADDR x, GM_ADDR packed, GM_ADDR absmax, GM_ADDR nested_absmax, GM_ADDR nested_code, GM_ADDR offset,     \
      GM_ADDR xe, GM_ADDR be, GM_ADDR y, GM_ADDR workspace, uint64_t m, uint64_t n, uint64_t k, uint64_t ke, \
      uint32_t blocksize, uint32_t nested_blocksize, uint32_t double_quant, uint32_t tile_blocks,            \
      uint64_t strips_per_core
#define LORAOPS_LORA_MATMUL_PARAMS                                                                     \
  GM_ADDR a, GM_ADDR b, GM_ADDR c, uint64_t m, uint64_t n, uint64_t k, uint64_t lda, uint64_t ldb, uint64_t ldc, \
      uint32_t a_k_major, uint32_t b_k_major, uint64_t a_part_stride, uint64_t b_part_stride, uint32_t parts,   \
      uint64_t tiles_per_core

extern "C" {
// out (fp32) = dropout mask of x (in the named type), flat index index_base + i.
__global__ __aicore__ void loraops_lora_mask_to_float_fp32(LORAOPS_LORA_MASK_TO_FLOAT_PARAMS);
__global__ __aicore__ void loraops_lora_mask_to_float_bf16(LORAOPS_LORA_MASK_TO_FLOAT_PARAMS);
__global__ __aicore__ void loraops_lora_mask_to_float_fp16(LORAOPS_LORA_MASK_TO_FLOAT_PARAMS);
// out (bf16) = dropout mask of x (bf16) with the tiling's keep_scale (1: the kept values exactly).
__global__ __aicore__ void loraops_lora_masked_copy_bf16(LORAOPS_LORA_MASK_TO_FLOAT_PARAMS);
// x (in the named type) += dropout mask of scale * term (fp32), rounded once.
__global__ __aicore__ void loraops_lora_add_masked_fp32(LORAOPS_LORA_ADD_MASKED_PARAMS);
__global__ __aicore__ void loraops_lora_add_masked_bf16(LORAOPS_LORA_ADD_MASKED_PARAMS);
__global__ __aicore__ void loraops_lora_add_masked_fp16(LORAOPS_LORA_ADD_MASKED_PARAMS);
// c (fp32) = sum of op(a_p) op(b_p) over parts (see LoraMatmulTiling): all fp32, or a bf16
// activation and the bf16 parts of an fp32 factor.
__global__ __aicore__ void loraops_lora_matmul_fp32(LORAOPS_LORA_MATMUL_PARAMS);
__global__ __aicore__ void loraops_lora_split_matmul_bf16(LORAOPS_LORA_MATMUL_PARAMS);
// c = a1 op(b1) + a2 op(b2): a1, b1, c in the named type, a2, b2 fp32 (see LoraFusedTiling).
__global__ __aicore__ void loraops_lora_fused_matmul_fp32(LORAOPS_LORA_FUSED_MATMUL_PARAMS);
__global__ __aicore__ void loraops_lora_fused_matmul_bf16(LORAOPS_LORA_FUSED_MATMUL_PARAMS);
__global__ __aicore__ void loraops_lora_fused_matmul_fp16(LORAOPS_LORA_FUSED_MATMUL_PARAMS);
// y = x W^T + xe be^T with W in NF4 (see LoraNF4FusedTiling); x, y, workspace in the named type.
__global__ __aicore__ void loraops_lora_nf4_fused_forward_fp32(LORAOPS_LORA_NF4_FUSED_PARAMS);
__global__ __aicore__ void loraops_lora_nf4_fused_forward_bf16(LORAOPS_LORA_NF4_FUSED_PARAMS);
__global__ __aicore__ void loraops_lora_nf4_fused_forward_fp16(LORAOPS_LORA_NF4_FUSED_PARAMS);
// dx = dy W + d_xa A with W in NF4: x, xe, be, y of the parameter list carry dy, d_xa, A, dx; n, k
// are W's rows and columns, ke the low-rank width (0: dy W alone).
__global__ __aicore__ void loraops_lora_nf4_fused_dx_fp32(LORAOPS_LORA_NF4_FUSED_PARAMS);
__global__ __aicore__ void loraops_lora_nf4_fused_dx_bf16(LORAOPS_LORA_NF4_FUSED_PARAMS);
__global__ __aicore__ void loraops_lora_nf4_fused_dx_fp16(LORAOPS_LORA_NF4_FUSED_PARAMS);
}
