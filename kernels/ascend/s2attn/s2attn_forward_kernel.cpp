// The S2-Attn forward MIX kernel's entry points, one per input type.
#include "s2attn_forward_kernel.h"

LORAOPS_S2ATTN_FORWARD_ENTRY(loraops_s2attn_forward_fp32, float)
LORAOPS_S2ATTN_FORWARD_ENTRY(loraops_s2attn_forward_bf16, bfloat16_t)
LORAOPS_S2ATTN_FORWARD_ENTRY(loraops_s2attn_forward_fp16, half)
