// The S2-Attn kernels' entry points (forward and backward), declared once: the kernel source defines
// them with this parameter list, the emulator's test op calls them through
// this header (the CANN build's launches are generated from the definitions).
#pragma once

#include "kernel_operator.h"

// q, k, v [B, N, H(kv), D] at any strides with unit stride along D; out
// [B, N, H, D] and lse [B, H, N] fp32; plan and workspace as s2attn_tiling.h.
#define LORAOPS_S2ATTN_FORWARD_PARAMS                                                                    \
  GM_ADDR q, GM_ADDR k, GM_ADDR v, GM_ADDR out, GM_ADDR lse, GM_ADDR plan, GM_ADDR workspace, float scale

// The backward: grad_out, out [B, N, H, D] as q (any strides, unit along D);
// dq32, dk32, dv32 fp32 [B, N, H(kv), padded D] (s2_padded_dim), zeroed, which
// the kernel adds into.
#define LORAOPS_S2ATTN_BACKWARD_PARAMS                                                                   \
  GM_ADDR grad_out, GM_ADDR q, GM_ADDR k, GM_ADDR v, GM_ADDR out, GM_ADDR lse, GM_ADDR dq32, GM_ADDR dk32, \
      GM_ADDR dv32, GM_ADDR plan, GM_ADDR workspace, float scale

extern "C" {
__global__ __aicore__ void loraops_s2attn_forward_fp32(LORAOPS_S2ATTN_FORWARD_PARAMS);
__global__ __aicore__ void loraops_s2attn_forward_bf16(LORAOPS_S2ATTN_FORWARD_PARAMS);
__global__ __aicore__ void loraops_s2attn_forward_fp16(LORAOPS_S2ATTN_FORWARD_PARAMS);
__global__ __aicore__ void loraops_s2attn_backward_fp32(LORAOPS_S2ATTN_BACKWARD_PARAMS);
__global__ __aicore__ void loraops_s2attn_backward_bf16(LORAOPS_S2ATTN_BACKWARD_PARAMS);
__global__ __aicore__ void loraops_s2attn_backward_fp16(LORAOPS_S2ATTN_BACKWARD_PARAMS);
}
