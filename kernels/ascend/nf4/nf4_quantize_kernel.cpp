// The NF4 quantize kernels' entry points: one per input type, and the double
// quantization of the block scales.
#include "nf4_quantize_kernel.h"

LORAOPS_NF4_QUANTIZE_ENTRY(loraops_nf4_quantize_fp32, float)
LORAOPS_NF4_QUANTIZE_ENTRY(loraops_nf4_quantize_bf16, bfloat16_t)
LORAOPS_NF4_QUANTIZE_ENTRY(loraops_nf4_quantize_fp16, half)
LORAOPS_NF4_QUANTIZE_ABSMAX_ENTRY(loraops_nf4_quantize_absmax)
