// The LoRA vector kernels' entry points, one per input type.
#include "lora_vector_kernel.h"

LORAOPS_LORA_MASK_ENTRY(loraops_lora_mask_to_float_fp32, float, float)
LORAOPS_LORA_MASK_ENTRY(loraops_lora_mask_to_float_bf16, bfloat16_t, float)
LORAOPS_LORA_MASK_ENTRY(loraops_lora_mask_to_float_fp16, half, float)
LORAOPS_LORA_MASK_ENTRY(loraops_lora_masked_copy_bf16, bfloat16_t, bfloat16_t)
LORAOPS_LORA_ADD_MASKED_ENTRY(loraops_lora_add_masked_fp32, float)
LORAOPS_LORA_ADD_MASKED_ENTRY(loraops_lora_add_masked_bf16, bfloat16_t)
LORAOPS_LORA_ADD_MASKED_ENTRY(loraops_lora_add_masked_fp16, half)
