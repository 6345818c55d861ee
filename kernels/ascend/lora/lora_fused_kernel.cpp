// The fused LoRA cube kernel's entry points, one per input type.
#include "lora_fused_kernel.h"

LORAOPS_LORA_FUSED_MATMUL_ENTRY(loraops_lora_fused_matmul_fp32, float)
LORAOPS_LORA_FUSED_MATMUL_ENTRY(loraops_lora_fused_matmul_bf16, bfloat16_t)
LORAOPS_LORA_FUSED_MATMUL_ENTRY(loraops_lora_fused_matmul_fp16, half)
