// The QLoRA MIX kernels' entry points (forward, and dx with the parameters renamed), one per input type.
#include "lora_nf4_fused_kernel.h"

LORAOPS_LORA_NF4_FUSED_ENTRY(loraops_lora_nf4_fused_forward_fp32, float)
LORAOPS_LORA_NF4_FUSED_ENTRY(loraops_lora_nf4_fused_forward_bf16, bfloat16_t)
LORAOPS_LORA_NF4_FUSED_ENTRY(loraops_lora_nf4_fused_forward_fp16, half)
LORAOPS_LORA_NF4_FUSED_DX_ENTRY(loraops_lora_nf4_fused_dx_fp32, float)
LORAOPS_LORA_NF4_FUSED_DX_ENTRY(loraops_lora_nf4_fused_dx_bf16, bfloat16_t)
LORAOPS_LORA_NF4_FUSED_DX_ENTRY(loraops_lora_nf4_fused_dx_fp16, half)
