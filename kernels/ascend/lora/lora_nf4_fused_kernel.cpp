// The QLoRA forward MIX kernel's entry points, one per input type.
#include "lora_nf4_fused_kernel.h"

LORAOPS_LORA_NF4_FUSED_ENTRY(loraops_lora_nf4_fused_forward_fp32, float)
LORAOPS_LORA_NF4_FUSED_ENTRY(loraops_lora_nf4_fused_forward_bf16, bfloat16_t)
LORAOPS_LORA_NF4_FUSED_ENTRY(loraops_lora_nf4_fused_forward_fp16, half)
