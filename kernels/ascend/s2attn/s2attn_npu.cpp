// loraops' s2_attention forward and backward for torch_npu tensors (dispatch key
// PrivateUse1): the host side of s2attn_ascend_ops.h over the S2-Attn MIX
// kernel, launched on torch_npu's current stream through its task queue.
// Built only with CANN (LORAOPS_ASCEND); the same kernel and host code run on
// CPU in kernels/ascend/sim (sim/s2attn_ops.cpp).
//
// s2_attention_backward is the backward MIX kernel over the same host code.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../ascend_npu.h"
#include "aclrtlaunch_loraops_s2attn_backward_bf16.h"
#include "aclrtlaunch_loraops_s2attn_backward_fp16.h"
#include "aclrtlaunch_loraops_s2attn_backward_fp32.h"
#include "aclrtlaunch_loraops_s2attn_forward_bf16.h"
#include "aclrtlaunch_loraops_s2attn_forward_fp16.h"
#include "aclrtlaunch_loraops_s2attn_forward_fp32.h"
#include "s2attn_ascend_ops.h"

namespace loraops {
namespace {

using ascend_npu::enqueue;
using ascend_npu::ptr;

struct NpuLauncher {
  using Guard = ascend_npu::Guard;

  static uint32_t cube_cores(const at::Tensor& t) { return ascend_npu::cube_core_count(t); }

  static void s2attn_forward(uint32_t block_dim, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& out, const at::Tensor& lse, const at::Tensor& plan,
                             const at::Tensor& workspace, float scale) {
    const at::ScalarType dtype = q.scalar_type();
    void *pq = ptr(q), *pk = ptr(k), *pv = ptr(v), *po = ptr(out), *pl = ptr(lse), *pp = ptr(plan),
         *pw = ptr(workspace);
    enqueue("loraops_s2attn_forward", {q, k, v, out, lse, plan, workspace}, [=](aclrtStream stream) {
      LORAOPS_ASCEND_LAUNCH_BY_DTYPE(dtype, loraops_s2attn_forward, block_dim, stream, pq, pk, pv, po, pl, pp, pw,
                                     scale)
    });
  }

  static void s2attn_backward(uint32_t block_dim, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                              const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                              const at::Tensor& dq32, const at::Tensor& dk32, const at::Tensor& dv32,
                              const at::Tensor& plan, const at::Tensor& workspace, float scale) {
    const at::ScalarType dtype = q.scalar_type();
    void *pg = ptr(grad_out), *pq = ptr(q), *pk = ptr(k), *pv = ptr(v), *po = ptr(out), *pl = ptr(lse),
         *pdq = ptr(dq32), *pdk = ptr(dk32), *pdv = ptr(dv32), *pp = ptr(plan), *pw = ptr(workspace);
    enqueue("loraops_s2attn_backward", {grad_out, q, k, v, out, lse, dq32, dk32, dv32, plan, workspace},
            [=](aclrtStream stream) {
              LORAOPS_ASCEND_LAUNCH_BY_DTYPE(dtype, loraops_s2attn_backward, block_dim, stream, pg, pq, pk, pv, po,
                                             pl, pdq, pdk, pdv, pp, pw, scale)
            });
  }
};

using S2AttnNpuOps = ascend::AscendS2AttnOps<NpuLauncher>;

}  // namespace

TORCH_LIBRARY_IMPL(loraops, PrivateUse1, m) {
  m.impl("s2_attention", &S2AttnNpuOps::s2_attention);
  m.impl("s2_attention_backward", &S2AttnNpuOps::s2_attention_backward);
}

}  // namespace loraops
