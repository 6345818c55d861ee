// The LoRA ops' kernels on Ascend, for a Launcher: torch_npu's (lora_npu.cpp)
// or the CPU emulation's (sim/sim_launcher.h). The shared device flow
// (csrc/lora/lora_host_flow.h) does the checks and the order of work; this
// file supplies every product, on the cube: a base product and its low-rank
// term in one pass where no dropout stands between them (lora_fused_kernel.h):
// the forward y = x W^T + bias + s xa B^T, and dx = dy W + d_xa A; for an NF4 W
// the forward's W is dequantized strip by strip beside the cube
// (lora_nf4_fused_kernel.h). The low-rank products alone read bf16 activations
// as they are where no dropout applies, the fp32 factor in three bf16 parts
// otherwise they run in fp32 on the cube (both lora_matmul_kernel.h), with dropout and the dtype conversions on the vector
// cores (lora_vector_kernel.h); with dropout, dx's base product goes through
// ATen (torch_npu's matmul) before the masked term is added:
//
//   low_rank_down    x [rows, cols] -> fp32 via the mask, then  x A^T  on the cube
//   low_rank_up_add  l R on the cube into fp32, then x += mask(scale * l R) on the vector cores
//   low_rank_reduce  x -> fp32 via the mask, then l^T x on the cube
//
// The fp32 intermediates go through global memory in chunks of whole rows of at
// most Launcher::workspace_elements(), so their size stays bounded whatever rows is.
// A Launcher supplies kDevice, Guard, workspace_elements(), vector_cores(t),
// cube_cores(t) and one launch per kernel family: mask, add_masked,
// matmul, fused_matmul, nf4_fused (forward or dx), nf4_dequantize.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <initializer_list>
#include <optional>
#include <utility>

#include "../nf4/nf4_ascend_ops.h"
#include "csrc/lora/dropout_hash.h"
#include "csrc/lora/lora_host_flow.h"
#include "lora_tiling.h"

namespace loraops::ascend {

template <class Launcher>
struct AscendLoraKernels {
  static constexpr c10::DeviceType kDevice = Launcher::kDevice;
  using Guard = typename Launcher::Guard;

  // Rows per chunk of a [rows, cols] fp32 intermediate.
  static int64_t chunk_rows(int64_t rows, int64_t cols) {
    return std::max<int64_t>(1, std::min<int64_t>(rows, Launcher::workspace_elements() / std::max<int64_t>(cols, 1)));
  }

  static LoraVectorTiling vector_tiling(const at::Tensor& t, int64_t index_base, const dropout::Mask& mask,
                                        float scale) {
    LoraVectorTiling v = lora_vector_tiling(static_cast<uint64_t>(t.numel()), static_cast<uint64_t>(index_base),
                                            Launcher::vector_cores(t));
    v.seed = mask.seed;
    v.threshold = mask.threshold;
    v.keep_scale = mask.keep_scale;
    v.scale = scale;
    return v;
  }

  // x rows [row0, row0 + rows) as the cube's fp32 operand: x itself when nothing changes it.
  static at::Tensor masked_float_rows(const at::Tensor& x, int64_t row0, int64_t rows, const dropout::Mask& mask) {
    const at::Tensor part = x.narrow(0, row0, rows);
    if (x.scalar_type() == at::kFloat && mask.threshold == 0) return part;
    at::Tensor out = at::empty(part.sizes(), x.options().dtype(at::kFloat));
    Launcher::mask(vector_tiling(part, row0 * x.size(1), mask, 1.0f), part, out);
    return out;
  }

  // Nd2NzParams' row stride is 16 bits: GM rows the cube loads hold at most 65535 elements.
  static void check_cube_rows(std::initializer_list<at::Tensor> operands) {
    for (const at::Tensor& t : operands) {
      TORCH_CHECK_VALUE(t.stride(0) <= 65535, "lora_linear on Ascend: in_features and out_features must be at most "
                        "65535 (the cube's loads address rows of at most 65535 elements), got a row of ", t.stride(0));
    }
  }

  // bf16 activations go to the bf16 cube as they are (through a masked bf16 copy
  // with dropout: the kept values exactly, the keep scale moved to the other
  // factor), the fp32 factor split into three bf16 parts (lora_matmul_kernel.h).
  static bool on_bf16_cube(const at::Tensor& x) { return x.scalar_type() == at::kBFloat16; }

  // x as the bf16 cube reads it, and the factor the other operand takes on.
  static std::pair<at::Tensor, double> dropped_bf16(const at::Tensor& x, const dropout::Mask& mask) {
    if (mask.threshold == 0) return {x, 1.0};
    at::Tensor kept = at::empty(x.sizes(), x.options());
    Launcher::mask(vector_tiling(x, 0, dropout::Mask{mask.seed, mask.threshold, 1.0f}, 1.0f), x, kept);
    return {kept, mask.keep_scale};
  }

  // t (fp32) as bf16 hi, mid, lo, each the rounding of what the earlier ones leave:
  // [3, rows, cols], summing to t to fp32's precision (bf16 has fp32's exponent range).
  static at::Tensor split3(const at::Tensor& t) {
    const at::Tensor hi = t.to(at::kBFloat16);
    const at::Tensor rest = at::sub(t, hi.to(at::kFloat));
    const at::Tensor mid = rest.to(at::kBFloat16);
    return at::stack({hi, mid, at::sub(rest, mid.to(at::kFloat)).to(at::kBFloat16)});
  }

  // c [m, n] (fp32) = op(a) op(b) on the cube: a is [m, k], or [k, m] when a_k_major;
  // b is [n, k], or [k, n] when b_k_major; rows contiguous. Either both fp32, or one
  // bf16 and the other the [3, ., .] bf16 parts of an fp32 factor (split3).
  static void matmul(const at::Tensor& a, bool a_k_major, const at::Tensor& b, bool b_k_major, const at::Tensor& c,
                     int64_t m, int64_t n, int64_t k) {
    const at::Tensor a2 = a.dim() == 3 ? a[0] : a, b2 = b.dim() == 3 ? b[0] : b;
    check_cube_rows({a2, b2, c});
    LoraMatmulTiling t = lora_matmul_tiling(m, n, k, a2.stride(0), a_k_major, b2.stride(0), b_k_major, c.stride(0),
                                            Launcher::cube_cores(c));
    if (a.dim() == 3 || b.dim() == 3) {
      t.a_part_stride = a.dim() == 3 ? a.stride(0) : 0;
      t.b_part_stride = b.dim() == 3 ? b.stride(0) : 0;
      t.parts = 3;
    }
    Launcher::matmul(t, a, b, c);
  }

  static at::Tensor low_rank_down(const at::Tensor& x, const at::Tensor& r_mat, const dropout::Mask& mask,
                                  double out_scale) {
    const int64_t rows = x.size(0), cols = x.size(1), r = r_mat.size(0);
    if (rows == 0 || r == 0 || cols == 0) return at::zeros({rows, r}, x.options().dtype(at::kFloat));
    at::Tensor out = at::empty({rows, r}, x.options().dtype(at::kFloat));
    if (on_bf16_cube(x)) {
      const auto [kept, keep_scale] = dropped_bf16(x, mask);
      matmul(kept, false, split3(at::mul(r_mat, out_scale * keep_scale)), false, out, rows, r, cols);  // x right^T
      return out;
    }
    const at::Tensor right = out_scale == 1.0 ? r_mat : at::mul(r_mat, out_scale);
    const int64_t step = chunk_rows(rows, cols);
    for (int64_t row0 = 0; row0 < rows; row0 += step) {
      const int64_t m = std::min(step, rows - row0);
      // [m, r] = x_rows [m, cols] . right [r, cols]^T
      matmul(masked_float_rows(x, row0, m, mask), false, right, false, out.narrow(0, row0, m), m, r, cols);
    }
    return out;
  }

  static void low_rank_up_add(at::Tensor& x, const at::Tensor& l, const at::Tensor& r_mat, const dropout::Mask& mask,
                              double scale) {
    const int64_t rows = x.size(0), cols = x.size(1), r = l.size(1);
    if (rows == 0 || cols == 0 || r == 0) return;  // x + mask(0) is x
    const int64_t step = chunk_rows(rows, cols);
    at::Tensor term = at::empty({std::min(step, rows), cols}, x.options().dtype(at::kFloat));
    for (int64_t row0 = 0; row0 < rows; row0 += step) {
      const int64_t m = std::min(step, rows - row0);
      const at::Tensor t = term.narrow(0, 0, m);
      // [m, cols] = l_rows [m, r] . r_mat [r, cols]
      matmul(l.narrow(0, row0, m), false, r_mat, true, t, m, cols, r);
      const at::Tensor x_rows = x.narrow(0, row0, m);
      Launcher::add_masked(vector_tiling(x_rows, row0 * cols, mask, static_cast<float>(scale)), x_rows, t);
    }
  }

  static at::Tensor low_rank_reduce(const at::Tensor& x, const at::Tensor& l, const dropout::Mask& mask) {
    const int64_t rows = x.size(0), cols = x.size(1), r = l.size(1);
    at::Tensor out = at::zeros({r, cols}, x.options().dtype(at::kFloat));
    if (rows == 0 || r == 0 || cols == 0) return out;
    if (on_bf16_cube(x)) {
      const auto [kept, keep_scale] = dropped_bf16(x, mask);
      matmul(split3(keep_scale == 1.0 ? l : at::mul(l, keep_scale)), true, kept, true, out, r, cols, rows);  // l^T x
      return out;
    }
    const int64_t step = chunk_rows(rows, cols);
    at::Tensor partial = rows > step ? at::empty({r, cols}, out.options()) : out;
    for (int64_t row0 = 0; row0 < rows; row0 += step) {
      const int64_t m = std::min(step, rows - row0);
      // [r, cols] = l_rows^T [r, m] . x_rows [m, cols]
      matmul(l.narrow(0, row0, m), true, masked_float_rows(x, row0, m, mask), true, partial, r, cols, m);
      if (partial.data_ptr() != out.data_ptr()) out.add_(partial);
    }
    return out;
  }

  static at::Tensor dequantize(const nf4::NF4Tensor& w, at::ScalarType dtype) {
    return nf4_detail::NF4DequantizeOps<AscendNF4Dequantize<Launcher>>::dequantize_tensor(w, dtype);
  }

  // The forward in one cube pass: y = x2 W^T + [scale xa | 1] [B | bias]^T, rounded once.
  static std::optional<at::Tensor> fused_forward(const at::Tensor& x2, const at::Tensor& w,
                                                 const std::optional<at::Tensor>& bias, const at::Tensor& xa,
                                                 const at::Tensor& b, double scale) {
    const int64_t m = x2.size(0), n = w.size(0);
    const auto [xe, be] = low_rank_operands(xa, b, bias, scale, n);
    if (m == 0 || n == 0 || x2.size(1) + xe.size(1) == 0) return std::nullopt;
    at::Tensor y = at::empty({m, n}, x2.options());
    fused_matmul(x2, w.contiguous(), xe, be, y, false);
    return y;
  }

  // The low-rank term's operands [scale xa | 1] and [B | bias] (fp32, contiguous): the bias is one more column.
  static std::pair<at::Tensor, at::Tensor> low_rank_operands(const at::Tensor& xa, const at::Tensor& b,
                                                             const std::optional<at::Tensor>& bias, double scale,
                                                             int64_t n) {
    at::Tensor xe = at::mul(xa, scale), be = b.to(at::kFloat);
    if (bias.has_value()) {
      xe = at::cat({xe, at::ones({xa.size(0), 1}, xe.options())}, 1);
      be = at::cat({be, bias->to(at::kFloat).view({n, 1})}, 1);
    }
    return {xe.contiguous(), be.contiguous()};
  }

  // QLoRA's forward without dequantizing W whole (lora_nf4_fused_kernel.h): when
  // k is whole NF4 blocks, each AI core dequantizes 128-row strips of W into
  // two slots of a small workspace while its cube multiplies.
  static std::optional<at::Tensor> fused_forward(const at::Tensor& x2, const nf4::NF4Tensor& weight,
                                                 const std::optional<at::Tensor>& bias, const at::Tensor& xa,
                                                 const at::Tensor& b, double scale) {
    const int64_t m = x2.size(0), n = weight.shape[0], k = weight.shape[1];
    if (m == 0 || n == 0 || k == 0 || k % weight.blocksize != 0) return std::nullopt;
    const nf4::NF4Tensor w = nf4_detail::contiguous_parts(weight);
    const auto [xe, be] = low_rank_operands(xa, b, bias, scale, n);
    const std::optional<LoraNF4FusedTiling> t = nf4_fused_tiling(w, m, n, k, xe.size(1), n, Launcher::cube_cores(x2));
    if (!t) return std::nullopt;
    check_cube_rows({x2, xe, be});
    at::Tensor workspace =
        at::empty({t->block_dim, static_cast<int64_t>(lora_nf4_slots(*t)), kLoraMatmulTileN, k}, x2.options());
    at::Tensor y = at::empty({m, n}, x2.options());
    Launcher::nf4_fused(*t, false, x2, w, xe, be, y, workspace);
    return y;
  }

  // dx = dy W (+ d_xa A) in one cube pass, rounded once.
  static std::optional<at::Tensor> fused_dx(const at::Tensor& dy, const at::Tensor& w, const at::Tensor& d_xa,
                                            const at::Tensor& a, bool with_low_rank) {
    const int64_t m = dy.size(0), k = w.size(1), r = with_low_rank ? d_xa.size(1) : 0;
    if (m == 0 || k == 0 || dy.size(1) + r == 0) return std::nullopt;
    at::Tensor dx = at::empty({m, k}, dy.options());
    fused_matmul(dy, w.to(dy.scalar_type()).contiguous(), d_xa.narrow(1, 0, r).contiguous(), a.narrow(0, 0, r), dx,
                 true);
    return dx;
  }

  // The same with W in NF4, dequantized 128 columns at a time beside the cube
  // (lora_nf4_fused_kernel.h): where k is whole NF4 blocks of at most 128.
  static std::optional<at::Tensor> fused_dx(const at::Tensor& dy, const nf4::NF4Tensor& weight,
                                            const at::Tensor& d_xa, const at::Tensor& a, bool with_low_rank) {
    const int64_t m = dy.size(0), n = weight.shape[0], k = weight.shape[1];
    if (m == 0 || n == 0 || k == 0 || k % weight.blocksize != 0 || weight.blocksize > kLoraMatmulTileN) {
      return std::nullopt;
    }
    const nf4::NF4Tensor w = nf4_detail::contiguous_parts(weight);
    const at::Tensor low_d_xa = d_xa.narrow(1, 0, with_low_rank ? d_xa.size(1) : 0).contiguous();
    const std::optional<LoraNF4FusedTiling> t =
        nf4_fused_tiling(w, m, n, k, low_d_xa.size(1), k, Launcher::cube_cores(dy));
    if (!t) return std::nullopt;
    check_cube_rows({dy, low_d_xa, a});
    at::Tensor workspace =
        at::empty({t->block_dim, static_cast<int64_t>(lora_nf4_slots(*t)), n, kLoraMatmulTileN}, dy.options());
    at::Tensor dx = at::empty({m, k}, dy.options());
    Launcher::nf4_fused(*t, true, dy, w, low_d_xa, a, dx, workspace);
    return dx;
  }

  // The QLoRA MIX kernels' tiling: 128-wide strips of `strip_items` (W's rows for the
  // forward, its columns for dx) over the AI cores; nullopt where the NF4 tiling refuses.
  static std::optional<LoraNF4FusedTiling> nf4_fused_tiling(const nf4::NF4Tensor& w, int64_t m, int64_t n, int64_t k,
                                                            int64_t ke, int64_t strip_items, uint32_t cube_cores) {
    const auto nf4 = nf4_block_tiling(static_cast<uint64_t>(n * k), static_cast<uint32_t>(w.blocksize),
                                      static_cast<uint64_t>(w.nested_blocksize), w.double_quant(), 1);
    if (w.double_quant() && nf4.nested_blocksize == 0) return std::nullopt;
    LoraNF4FusedTiling t;
    t.m = m;
    t.n = n;
    t.k = k;
    t.ke = ke;
    t.blocksize = nf4.blocksize;
    t.nested_blocksize = nf4.nested_blocksize;
    t.double_quant = nf4.double_quant;
    t.tile_blocks = nf4.tile_blocks;
    const CoreRuns strips = core_runs((strip_items + kLoraMatmulTileN - 1) / kLoraMatmulTileN, cube_cores);
    t.strips_per_core = strips.per_core;
    t.block_dim = strips.cores;
    return t;
  }

  // c = a1 op(b1) + a2 op(b2) (lora_fused_kernel.h); k1 = a1's columns, k2 = a2's.
  static void fused_matmul(const at::Tensor& a1, const at::Tensor& b1, const at::Tensor& a2, const at::Tensor& b2,
                           const at::Tensor& c, bool b_k_major) {
    check_cube_rows({a1, b1, a2, b2, c});
    LoraFusedTiling t = lora_fused_tiling(c.size(0), c.size(1), a1.size(1), a2.size(1), b_k_major,
                                          Launcher::cube_cores(c));
    t.lda1 = a1.stride(0);
    t.ldb1 = b1.stride(0);
    t.lda2 = a2.stride(0);
    t.ldb2 = b2.stride(0);
    t.ldc = c.stride(0);
    Launcher::fused_matmul(t, a1, b1, a2, b2, c);
  }
};

// The LoRA ops as registered: the shared entry points and device flow over these kernels.
template <class Launcher>
using AscendLoraOps = lora_detail::LoraOpEntries<lora_detail::DeviceLoraFlow<AscendLoraKernels<Launcher>>>;

}  // namespace loraops::ascend
