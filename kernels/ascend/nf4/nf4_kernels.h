// The NF4 kernels' entry points, declared once: the kernel sources define them
// with these parameter lists, and the emulator's test ops call them through
// this header (the CANN build's launches are generated from the definitions).
// The tiling travels as scalars: CANN 8 has no documented way to pass a struct
// by value to a kernel.
#pragma once

#include "kernel_operator.h"

#define LORAOPS_NF4_DEQUANTIZE_PARAMS                                                                        \
  GM_ADDR packed, GM_ADDR absmax, GM_ADDR nested_absmax, GM_ADDR nested_code, GM_ADDR offset, GM_ADDR out, \
      uint64_t n, uint64_t num_blocks, uint64_t blocks_per_core, uint32_t blocksize, uint32_t nested_blocksize, \
      uint32_t double_quant, uint32_t tile_blocks
#define LORAOPS_NF4_QUANTIZE_PARAMS                                                                    \
  GM_ADDR input, GM_ADDR packed, GM_ADDR absmax, uint64_t n, uint64_t num_blocks, uint64_t blocks_per_core, \
      uint32_t blocksize, uint32_t tile_blocks
#define LORAOPS_NF4_QUANTIZE_ABSMAX_PARAMS                                                                 \
  GM_ADDR centered, GM_ADDR bounds, GM_ADDR codes, GM_ADDR nested_absmax, uint64_t n, uint64_t num_blocks, \
      uint64_t blocks_per_core, uint32_t blocksize, uint32_t tile_blocks

extern "C" {
// absmax as fp32 (double_quant = 0) or uint8 codes into nested_code (double_quant = 1); out in the named type.
__global__ __aicore__ void loraops_nf4_dequantize_fp32(LORAOPS_NF4_DEQUANTIZE_PARAMS);
__global__ __aicore__ void loraops_nf4_dequantize_bf16(LORAOPS_NF4_DEQUANTIZE_PARAMS);
__global__ __aicore__ void loraops_nf4_dequantize_fp16(LORAOPS_NF4_DEQUANTIZE_PARAMS);
// input in the named type -> packed codes and fp32 absmax.
__global__ __aicore__ void loraops_nf4_quantize_fp32(LORAOPS_NF4_QUANTIZE_PARAMS);
__global__ __aicore__ void loraops_nf4_quantize_bf16(LORAOPS_NF4_QUANTIZE_PARAMS);
__global__ __aicore__ void loraops_nf4_quantize_fp16(LORAOPS_NF4_QUANTIZE_PARAMS);
// Double quantization of centered = absmax - offset, bounds = the dynamic code's 256 midpoints.
__global__ __aicore__ void loraops_nf4_quantize_absmax(LORAOPS_NF4_QUANTIZE_ABSMAX_PARAMS);
}
