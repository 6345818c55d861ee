// The CPU emulation's side of the Ascend host flows: launches of the kernels
// on emulated cores (ascend_sim::launch*), named for the launch log, a fault
// as a RuntimeError; the Launcher the LoRA, NF4 and S2-Attn flows run over
// (lora_ascend_ops.h, nf4_ascend_ops.h, s2attn_ascend_ops.h), as lora_npu.cpp's
// and s2attn_npu.cpp's are for the NPU.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "../lora/lora_kernels.h"
#include "../lora/lora_tiling.h"
#include "../nf4/nf4_kernels.h"
#include "../nf4/nf4_tiling.h"
#include "../s2attn/s2attn_kernels.h"
#include "csrc/nf4/nf4_checks.h"
#include "kernel_operator.h"

namespace loraops::ascend_sim_ops {

// Atlas A2's ratio of two vector cores per cube core, on fewer cores than a
// 910B has, so that work splits unevenly across them.
constexpr uint32_t kSimCubeCores = 3;
constexpr uint32_t kSimVectorCores = 2 * kSimCubeCores;

inline GM_ADDR gm(const at::Tensor& t) {
  return t.defined() ? static_cast<uint8_t*>(const_cast<void*>(t.const_data_ptr())) : nullptr;
}

// The bytes a (possibly strided) tensor spans.
inline ascend_sim::GmRegion region(const at::Tensor& t) {
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  return ascend_sim::gm_region(t.const_data_ptr(), t.numel() == 0 ? 0 : (last + 1) * t.element_size());
}

// Runs a launch logged under `name`, a fault as a RuntimeError.
template <class Fn>
void run(const char* name, const Fn& fn) {
  const ascend_sim::NamedLaunch named(name);
  try {
    fn();
  } catch (const AscendC::SimError& e) {
    TORCH_CHECK(false, e.what());
  }
}

template <class Kernel>
Kernel by_dtype(at::ScalarType dtype, Kernel fp32, Kernel bf16, Kernel fp16) {
  return dtype == at::kFloat ? fp32 : dtype == at::kBFloat16 ? bf16 : fp16;
}

struct SimLauncher {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  struct Guard {
    explicit Guard(c10::Device) {}
  };
  // Small, so that the tests' matrices go through the host flow in several
  // chunks of rows; the NPU's when counting for the cost model.
  static int64_t workspace_elements() { return AscendC::sim::count_only() ? int64_t{1} << 24 : 4096; }
  // Set by the vector test ops for one call.
  static inline thread_local uint32_t vector_core_count = kSimVectorCores;

  static uint32_t vector_cores(const at::Tensor&) { return vector_core_count; }
  static uint32_t cube_cores(const at::Tensor&) { return kSimCubeCores; }

  // out = mask(x): fp32, or x's bf16 (a masked copy).
  static void mask(const ascend::LoraVectorTiling& t, const at::Tensor& x, const at::Tensor& out) {
    const bool copy = out.scalar_type() == at::kBFloat16;
    const auto kernel = copy ? loraops_lora_masked_copy_bf16
                             : by_dtype(x.scalar_type(), loraops_lora_mask_to_float_fp32,
                                        loraops_lora_mask_to_float_bf16, loraops_lora_mask_to_float_fp16);
    run(copy ? "loraops_lora_masked_copy" : "loraops_lora_mask_to_float", [&] {
      ascend_sim::launch(t.block_dim, {region(x), region(out)}, kernel, gm(x), gm(out), t.n, t.tiles_per_core,
                         t.index_base, t.seed, t.threshold, t.keep_scale);
    });
  }

  static void add_masked(const ascend::LoraVectorTiling& t, const at::Tensor& x, const at::Tensor& term) {
    const auto kernel = by_dtype(x.scalar_type(), loraops_lora_add_masked_fp32, loraops_lora_add_masked_bf16,
                                 loraops_lora_add_masked_fp16);
    run("loraops_lora_add_masked", [&] {
      ascend_sim::launch(t.block_dim, {region(x), region(term)}, kernel, gm(x), gm(term), t.n, t.tiles_per_core,
                         t.index_base, t.seed, t.threshold, t.keep_scale, t.scale);
    });
  }

  static void matmul(const ascend::LoraMatmulTiling& t, const at::Tensor& a, const at::Tensor& b,
                     const at::Tensor& c) {
    const bool split = a.scalar_type() == at::kBFloat16;
    run(split ? "loraops_lora_split_matmul" : "loraops_lora_matmul", [&] {
      ascend_sim::launch_cube(t.block_dim, {region(a), region(b), region(c)},
                              split ? loraops_lora_split_matmul_bf16 : loraops_lora_matmul_fp32, gm(a), gm(b), gm(c),
                              t.m, t.n, t.k, t.lda, t.ldb, t.ldc, t.a_k_major, t.b_k_major, t.a_part_stride,
                              t.b_part_stride, t.parts, t.tiles_per_core);
    });
  }

  static void fused_matmul(const ascend::LoraFusedTiling& t, const at::Tensor& a1, const at::Tensor& b1,
                           const at::Tensor& a2, const at::Tensor& b2, const at::Tensor& c) {
    const auto kernel = by_dtype(c.scalar_type(), loraops_lora_fused_matmul_fp32, loraops_lora_fused_matmul_bf16,
                                 loraops_lora_fused_matmul_fp16);
    run("loraops_lora_fused_matmul", [&] {
      ascend_sim::launch_cube(t.block_dim, {region(a1), region(b1), region(a2), region(b2), region(c)}, kernel,
                              gm(a1), gm(b1), gm(a2), gm(b2), gm(c), t.m, t.n, t.k1, t.k2, t.lda1, t.ldb1, t.lda2,
                              t.ldb2, t.ldc, t.b_k_major, t.tiles_per_core);
    });
  }

  // The QLoRA MIX kernels: the forward, or dx (x, xe, be, y carrying dy, d_xa, A, dx).
  static void nf4_fused(const ascend::LoraNF4FusedTiling& t, bool dx, const at::Tensor& x, const nf4::NF4Tensor& w,
                        const at::Tensor& xe, const at::Tensor& be, const at::Tensor& y, const at::Tensor& workspace) {
    const auto kernel = dx ? by_dtype(x.scalar_type(), loraops_lora_nf4_fused_dx_fp32, loraops_lora_nf4_fused_dx_bf16,
                                      loraops_lora_nf4_fused_dx_fp16)
                           : by_dtype(x.scalar_type(), loraops_lora_nf4_fused_forward_fp32,
                                      loraops_lora_nf4_fused_forward_bf16, loraops_lora_nf4_fused_forward_fp16);
    std::vector<ascend_sim::GmRegion> regions{region(x), region(w.packed), region(w.absmax), region(xe), region(be),
                                              region(y), region(workspace)};
    if (w.double_quant()) regions.insert(regions.end(), {region(w.nested_absmax), region(w.nested_code), region(w.offset)});
    run(dx ? "loraops_lora_nf4_fused_dx" : "loraops_lora_nf4_fused_forward", [&] {
      ascend_sim::launch_mix(t.block_dim, regions, kernel, gm(x), gm(w.packed), gm(w.absmax), gm(w.nested_absmax),
                             gm(w.nested_code), gm(w.offset), gm(xe), gm(be), gm(y), gm(workspace), t.m, t.n, t.k,
                             t.ke, t.blocksize, t.nested_blocksize, t.double_quant, t.tile_blocks, t.strips_per_core);
    });
  }

  // The S2-Attn forward MIX kernel (s2attn_ascend_ops.h).
  static void s2attn_forward(uint32_t block_dim, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& out, const at::Tensor& lse, const at::Tensor& plan,
                             const at::Tensor& workspace, float scale) {
    const auto kernel = by_dtype(q.scalar_type(), loraops_s2attn_forward_fp32, loraops_s2attn_forward_bf16,
                                 loraops_s2attn_forward_fp16);
    run("loraops_s2attn_forward", [&] {
      ascend_sim::launch_mix(block_dim, {region(q), region(k), region(v), region(out), region(lse), region(plan),
                                         region(workspace)},
                             kernel, gm(q), gm(k), gm(v), gm(out), gm(lse), gm(plan), gm(workspace), scale);
    });
  }

  // The S2-Attn backward MIX kernel (s2attn_ascend_ops.h).
  static void s2attn_backward(uint32_t block_dim, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                              const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                              const at::Tensor& dq32, const at::Tensor& dk32, const at::Tensor& dv32,
                              const at::Tensor& plan, const at::Tensor& workspace, float scale) {
    const auto kernel = by_dtype(q.scalar_type(), loraops_s2attn_backward_fp32, loraops_s2attn_backward_bf16,
                                 loraops_s2attn_backward_fp16);
    run("loraops_s2attn_backward", [&] {
      ascend_sim::launch_mix(block_dim, {region(grad_out), region(q), region(k), region(v), region(out), region(lse),
                                         region(dq32), region(dk32), region(dv32), region(plan), region(workspace)},
                             kernel, gm(grad_out), gm(q), gm(k), gm(v), gm(out), gm(lse), gm(dq32), gm(dk32),
                             gm(dv32), gm(plan), gm(workspace), scale);
    });
  }

  static void nf4_dequantize(const ascend::NF4BlockTiling& t, const nf4::NF4Tensor& w, const at::Tensor& out) {
    const auto kernel = by_dtype(out.scalar_type(), loraops_nf4_dequantize_fp32, loraops_nf4_dequantize_bf16,
                                 loraops_nf4_dequantize_fp16);
    const bool dq = w.double_quant();
    std::vector<ascend_sim::GmRegion> regions{region(w.packed), region(w.absmax), region(out)};
    if (dq) regions.insert(regions.end(), {region(w.nested_absmax), region(w.nested_code), region(w.offset)});
    run("loraops_nf4_dequantize", [&] {
      ascend_sim::launch(t.block_dim, regions, kernel, gm(w.packed), gm(w.absmax), gm(w.nested_absmax),
                         gm(w.nested_code), gm(w.offset), gm(out), t.n, t.num_blocks, t.blocks_per_core, t.blocksize,
                         t.nested_blocksize, t.double_quant, t.tile_blocks);
    });
  }
};

// The vector kernels alone, on `cores` vector cores.
struct VectorCores {
  explicit VectorCores(int64_t cores) {
    TORCH_CHECK_VALUE(cores >= 1 && cores <= 65535, "ascend sim: cores must be in [1, 65535], got ", cores);
    SimLauncher::vector_core_count = static_cast<uint32_t>(cores);
  }
  ~VectorCores() { SimLauncher::vector_core_count = kSimVectorCores; }
};

}  // namespace loraops::ascend_sim_ops
