// The S2-Attn kernels' entry points, declared once: the kernel source defines
// them with this parameter list, the emulator's test op calls them through
// this header (the CANN build's launches are generated from the definitions).
#pragma once

#include "kernel_operator.h"

// q, k, v [B, N, H(kv), D] at any strides with unit stride along D; out
// [B, N, H, D] and lse [B, H, N] fp32; plan and workspace as s2attn_tiling.h.
#define LORAOPS_S2ATTN_FORWARD_PARAMS                                                                    \
  GM_ADDR q, GM_ADDR k, GM_ADDR v, GM_ADDR out, GM_ADDR lse, GM_ADDR plan, GM_ADDR workspace, float scale

extern "C" {
__global__ __aicore__ void loraops_s2attn_forward_fp32(LORAOPS_S2ATTN_FORWARD_PARAMS);
__global__ __aicore__ void loraops_s2attn_forward_bf16(LORAOPS_S2ATTN_FORWARD_PARAMS);
__global__ __aicore__ void loraops_s2attn_forward_fp16(LORAOPS_S2ATTN_FORWARD_PARAMS);
}
