// The S2-Attn backward MIX kernel's entry points, one per input type.
#include "s2attn_backward_kernel.h"

LORAOPS_S2ATTN_BACKWARD_ENTRY(loraops_s2attn_backward_fp32, float)
LORAOPS_S2ATTN_BACKWARD_ENTRY(loraops_s2attn_backward_bf16, bfloat16_t)
LORAOPS_S2ATTN_BACKWARD_ENTRY(loraops_s2attn_backward_fp16, half)
