// The LoRA ops' kernels on CUDA, for a Runtime (see nf4_cuda_ops.h): the CUDA
// runtime (lora_cuda.cpp) or the CPU emulation (sim/ops.cpp). The shared
// device flow (csrc/lora/lora_host_flow.h) does the checks, the base GEMMs in
// the input dtype through ATen (cuBLAS: tensor cores, fp32 accumulation) and
// the order of work; this file supplies its launches: the low-rank products in
// fp32 reading x, dy and the outputs in their own dtype with dropout on the fly,
// the NF4 dequantize, and for up to kDecodeMaxRows rows of x (decoding) a GEMV
// that reads the packed NF4 weight and adds bias and the LoRA term, so that the
// weight is never dequantized whole.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include <optional>

#include "../nf4/nf4_cuda_ops.h"
#include "csrc/lora/dropout_hash.h"
#include "csrc/lora/lora_host_flow.h"
#include "lora_cuda_kernels.h"

namespace loraops::cuda_ops {

template <class Runtime>
struct LoraKernels {
  static constexpr c10::DeviceType kDevice = Runtime::kDevice;
  using Guard = typename Runtime::Guard;

  static at::Tensor low_rank_down(const at::Tensor& x, const at::Tensor& r_mat, const dropout::Mask& mask,
                                  double out_scale) {
    at::Tensor out = at::empty({x.size(0), r_mat.size(0)}, x.options().dtype(at::kFloat));
    cuda::low_rank_down({x.const_data_ptr(), float_kind(x.scalar_type()), x.size(0), x.size(1),
                         r_mat.const_data_ptr<float>(), r_mat.size(0), mask, static_cast<float>(out_scale),
                         out.mutable_data_ptr<float>()},
                        Runtime::stream());
    Runtime::check_launch();
    return out;
  }

  static void low_rank_up_add(at::Tensor& x, const at::Tensor& l, const at::Tensor& r_mat, const dropout::Mask& mask,
                              double scale) {
    cuda::low_rank_up_add({x.mutable_data_ptr(), float_kind(x.scalar_type()), x.size(0), x.size(1),
                           l.const_data_ptr<float>(), r_mat.const_data_ptr<float>(), l.size(1), mask,
                           static_cast<float>(scale)},
                          Runtime::stream());
    Runtime::check_launch();
  }

  static at::Tensor low_rank_reduce(const at::Tensor& x, const at::Tensor& l, const dropout::Mask& mask) {
    const int64_t rows = x.size(0), cols = x.size(1), r = l.size(1);
    const int64_t splits = cuda::low_rank_reduce_splits(rows, cols);
    if (rows == 0 || splits == 0) return at::zeros({r, cols}, x.options().dtype(at::kFloat));
    at::Tensor partial = at::empty({splits, r, cols}, x.options().dtype(at::kFloat));
    cuda::low_rank_reduce({x.const_data_ptr(), float_kind(x.scalar_type()), rows, cols, l.const_data_ptr<float>(), r,
                           mask, splits, partial.mutable_data_ptr<float>()},
                          Runtime::stream());
    Runtime::check_launch();
    return splits == 1 ? partial[0] : at::sum(partial, {0});
  }

  static at::Tensor dequantize(const nf4::NF4Tensor& w, at::ScalarType dtype) {
    return nf4_detail::NF4DequantizeOps<NF4Kernels<Runtime>>::dequantize_tensor(w, dtype);
  }

  // The decode path: the NF4 GEMV with bias and the LoRA term fused; the weight is read packed, once.
  // A dense base goes to cuBLAS (the flow's GEMMs); no fused dx either.
  static std::optional<at::Tensor> fused_forward(const at::Tensor&, const at::Tensor&,
                                                 const std::optional<at::Tensor>&, const at::Tensor&,
                                                 const at::Tensor&, double) {
    return std::nullopt;
  }
  template <class Weight>
  static std::optional<at::Tensor> fused_dx(const at::Tensor&, const Weight&, const at::Tensor&, const at::Tensor&,
                                            bool) {
    return std::nullopt;
  }

  static std::optional<at::Tensor> fused_forward(const at::Tensor& x2, const nf4::NF4Tensor& weight,
                                                     const std::optional<at::Tensor>& bias, const at::Tensor& xa,
                                                     const at::Tensor& b, double scale) {
    const int64_t m = x2.size(0), n = weight.shape[0], k = weight.shape[1];
    if (m < 1 || m > cuda::kDecodeMaxRows || n * k == 0) return std::nullopt;
    const at::Tensor b32 = b.to(at::kFloat).contiguous();
    const at::Tensor bias_x = bias.has_value() ? bias->to(x2.scalar_type()).contiguous() : at::Tensor();
    const nf4::NF4Tensor w = nf4_detail::contiguous_parts(weight);
    at::Tensor y = at::empty({m, n}, x2.options());
    cuda::nf4_gemv_lora({x2.const_data_ptr(), float_kind(x2.scalar_type()), m, n, k, weight_view(w),
                         bias_x.defined() ? bias_x.const_data_ptr() : nullptr, xa.const_data_ptr<float>(),
                         b32.const_data_ptr<float>(), xa.size(1), static_cast<float>(scale), y.mutable_data_ptr()},
                        Runtime::stream());
    Runtime::check_launch();
    return y;
  }
};

// The LoRA ops as registered: the shared entry points and device flow over these kernels.
template <class Runtime>
using LoraOps = lora_detail::LoraOpEntries<lora_detail::DeviceLoraFlow<LoraKernels<Runtime>>>;

}  // namespace loraops::cuda_ops
