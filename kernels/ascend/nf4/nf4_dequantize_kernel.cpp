// The NF4 dequantize kernels' entry points, one per output type.
#include "nf4_dequantize_kernel.h"

LORAOPS_NF4_DEQUANTIZE_ENTRY(loraops_nf4_dequantize_fp32, float)
LORAOPS_NF4_DEQUANTIZE_ENTRY(loraops_nf4_dequantize_bf16, bfloat16_t)
LORAOPS_NF4_DEQUANTIZE_ENTRY(loraops_nf4_dequantize_fp16, half)
