// loraops' LoRA ops for torch_npu tensors (dispatch key PrivateUse1): the shared
// host flow (csrc/lora/lora_host_flow.h) over this folder's Ascend C kernels,
// launched on torch_npu's current stream through its task queue. Built only
// with CANN (LORAOPS_ASCEND); the same kernels and host code run on CPU in
// kernels/ascend/sim (sim/lora_ops.cpp).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "../nf4/nf4_npu.h"
#include "aclrtlaunch_loraops_lora_add_masked_bf16.h"
#include "aclrtlaunch_loraops_lora_add_masked_fp16.h"
#include "aclrtlaunch_loraops_lora_add_masked_fp32.h"
#include "aclrtlaunch_loraops_lora_fused_matmul_bf16.h"
#include "aclrtlaunch_loraops_lora_fused_matmul_fp16.h"
#include "aclrtlaunch_loraops_lora_fused_matmul_fp32.h"
#include "aclrtlaunch_loraops_lora_mask_to_float_bf16.h"
#include "aclrtlaunch_loraops_lora_mask_to_float_fp16.h"
#include "aclrtlaunch_loraops_lora_mask_to_float_fp32.h"
#include "aclrtlaunch_loraops_lora_masked_copy_bf16.h"
#include "aclrtlaunch_loraops_lora_matmul_fp32.h"
#include "aclrtlaunch_loraops_lora_nf4_fused_dx_bf16.h"
#include "aclrtlaunch_loraops_lora_nf4_fused_dx_fp16.h"
#include "aclrtlaunch_loraops_lora_nf4_fused_dx_fp32.h"
#include "aclrtlaunch_loraops_lora_nf4_fused_forward_bf16.h"
#include "aclrtlaunch_loraops_lora_nf4_fused_forward_fp16.h"
#include "aclrtlaunch_loraops_lora_nf4_fused_forward_fp32.h"
#include "aclrtlaunch_loraops_lora_split_matmul_bf16.h"
#include "lora_ascend_ops.h"

namespace loraops {
namespace {

using ascend_npu::enqueue;
using ascend_npu::ptr;

// The NF4 launches (for dequantize) and the LoRA kernels'.
struct NpuLauncher : ascend_npu::NF4Launcher {
  using Guard = ascend_npu::Guard;
  static int64_t workspace_elements() { return int64_t{1} << 24; }  // 64 MiB of fp32 per intermediate

  static uint32_t cube_cores(const at::Tensor& t) { return ascend_npu::cube_core_count(t); }

  // out = mask(x): fp32, or x's bf16 (a masked copy).
  static void mask(const ascend::LoraVectorTiling& t, const at::Tensor& x, const at::Tensor& out) {
    const at::ScalarType dtype = x.scalar_type();
    const bool copy = out.scalar_type() == at::kBFloat16;
    void *px = ptr(x), *po = ptr(out);
    enqueue("loraops_lora_mask", {x, out}, [=](aclrtStream stream) {
      if (copy) {
        ACLRT_LAUNCH_KERNEL(loraops_lora_masked_copy_bf16)(t.block_dim, stream, px, po, t.n, t.tiles_per_core,
                                                           t.index_base, t.seed, t.threshold, t.keep_scale);
      } else {
        LORAOPS_ASCEND_LAUNCH_BY_DTYPE(dtype, loraops_lora_mask_to_float, t.block_dim, stream, px, po, t.n,
                                       t.tiles_per_core, t.index_base, t.seed, t.threshold, t.keep_scale)
      }
    });
  }

  static void add_masked(const ascend::LoraVectorTiling& t, const at::Tensor& x, const at::Tensor& term) {
    const at::ScalarType dtype = x.scalar_type();
    void *px = ptr(x), *pt = ptr(term);
    enqueue("loraops_lora_add_masked", {x, term}, [=](aclrtStream stream) {
      LORAOPS_ASCEND_LAUNCH_BY_DTYPE(dtype, loraops_lora_add_masked, t.block_dim, stream, px, pt, t.n,
                                     t.tiles_per_core, t.index_base, t.seed, t.threshold, t.keep_scale, t.scale)
    });
  }

  static void matmul(const ascend::LoraMatmulTiling& t, const at::Tensor& a, const at::Tensor& b,
                     const at::Tensor& c) {
    const bool split = a.scalar_type() == at::kBFloat16;
    void *pa = ptr(a), *pb = ptr(b), *pc = ptr(c);
    enqueue("loraops_lora_matmul", {a, b, c}, [=](aclrtStream stream) {
#define LORAOPS_LAUNCH(kernel)                                                                                     \
  ACLRT_LAUNCH_KERNEL(kernel)(t.block_dim, stream, pa, pb, pc, t.m, t.n, t.k, t.lda, t.ldb, t.ldc, t.a_k_major, \
                              t.b_k_major, t.a_part_stride, t.b_part_stride, t.parts, t.tiles_per_core)
      if (split) {
        LORAOPS_LAUNCH(loraops_lora_split_matmul_bf16);
      } else {
        LORAOPS_LAUNCH(loraops_lora_matmul_fp32);
      }
#undef LORAOPS_LAUNCH
    });
  }

  static void fused_matmul(const ascend::LoraFusedTiling& t, const at::Tensor& a1, const at::Tensor& b1,
                           const at::Tensor& a2, const at::Tensor& b2, const at::Tensor& c) {
    const at::ScalarType dtype = c.scalar_type();
    void *p1 = ptr(a1), *q1 = ptr(b1), *p2 = ptr(a2), *q2 = ptr(b2), *pc = ptr(c);
    enqueue("loraops_lora_fused_matmul", {a1, b1, a2, b2, c}, [=](aclrtStream stream) {
      LORAOPS_ASCEND_LAUNCH_BY_DTYPE(dtype, loraops_lora_fused_matmul, t.block_dim, stream, p1, q1, p2, q2, pc, t.m,
                                     t.n, t.k1, t.k2, t.lda1, t.ldb1, t.lda2, t.ldb2, t.ldc, t.b_k_major,
                                     t.tiles_per_core)
    });
  }

  // The QLoRA MIX kernels: the forward, or dx (x, xe, be, y carrying dy, d_xa, A, dx).
  static void nf4_fused(const ascend::LoraNF4FusedTiling& t, bool dx, const at::Tensor& x, const nf4::NF4Tensor& w,
                        const at::Tensor& xe, const at::Tensor& be, const at::Tensor& y, const at::Tensor& workspace) {
    const at::ScalarType dtype = x.scalar_type();
    void *px = ptr(x), *pp = ptr(w.packed), *pa = ptr(w.absmax), *pn = ptr(w.nested_absmax),
         *pc = ptr(w.nested_code), *pf = ptr(w.offset), *pxe = ptr(xe), *pbe = ptr(be), *py = ptr(y),
         *pw = ptr(workspace);
    enqueue("loraops_lora_nf4_fused",
            {x, w.packed, w.absmax, w.nested_absmax, w.nested_code, w.offset, xe, be, y, workspace},
            [=](aclrtStream stream) {
#define LORAOPS_LAUNCH(name)                                                                                      \
  LORAOPS_ASCEND_LAUNCH_BY_DTYPE(dtype, name, t.block_dim, stream, px, pp, pa, pn, pc, pf, pxe, pbe, py, pw, t.m, \
                                 t.n, t.k, t.ke, t.blocksize, t.nested_blocksize, t.double_quant, t.tile_blocks,   \
                                 t.strips_per_core)
              if (dx) {
                LORAOPS_LAUNCH(loraops_lora_nf4_fused_dx)
              } else {
                LORAOPS_LAUNCH(loraops_lora_nf4_fused_forward)
              }
#undef LORAOPS_LAUNCH
            });
  }
};

using LoraNpuOps = ascend::AscendLoraOps<NpuLauncher>;

}  // namespace

TORCH_LIBRARY_IMPL(loraops, PrivateUse1, m) {
  m.impl("lora_linear", &LoraNpuOps::lora_linear);
  m.impl("lora_linear_backward", &LoraNpuOps::lora_linear_backward);
  m.impl("lora_linear_nf4", &LoraNpuOps::lora_linear_nf4);
  m.impl("lora_linear_nf4_backward", &LoraNpuOps::lora_linear_nf4_backward);
}

}  // namespace loraops
