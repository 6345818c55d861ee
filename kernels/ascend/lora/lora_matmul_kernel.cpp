// The low-rank cube kernel's entry points: fp32 operands, or bf16 activations with a split fp32 factor.
#include "lora_matmul_kernel.h"

LORAOPS_LORA_MATMUL_ENTRY(loraops_lora_matmul_fp32, float)
LORAOPS_LORA_MATMUL_ENTRY(loraops_lora_split_matmul_bf16, bfloat16_t)
