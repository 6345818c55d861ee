// The LoRA ops over the CUDA kernels, for a Runtime (see nf4_cuda_ops.h): the
// CUDA runtime (lora_cuda.cpp) or the CPU emulation (sim/ops.cpp).
// out = x W^T + bias + scale * (dropout(x) A^T) B^T.
//
// The base GEMMs run in the input dtype through cuBLAS (tensor cores, fp32
// accumulation). Everything around them is ours: the low-rank products run in
// fp32, as peft's are with fp32 adapters, but read x, dy and the outputs in
// their own dtype (no widened copies of them), apply dropout on the fly with the
// CPU kernels' counter hash and add the LoRA term into y and dx in place,
// rounding once; xa = dropout(x) A^T is saved in fp32. An NF4 base weight is
// dequantized whole into the input dtype by our kernel, used and freed; for up to
// kDecodeMaxRows rows of x (decoding) it is never dequantized: a GEMV reads the
// packed weight and adds bias and the LoRA term.
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include <array>
#include <vector>

#include "../cpu/dropout.h"
#include "../lora/lora_checks.h"
#include "lora_cuda_kernels.h"
#include "nf4_cuda_ops.h"

namespace loraops::cuda_ops {

template <class Runtime>
struct LoraOps {
  static constexpr c10::DeviceType kDevice = Runtime::kDevice;

  static cuda::DropoutMask dropout_mask(double p, int64_t seed) {
    if (p == 0.0) return {};
    return {static_cast<uint64_t>(seed), cpu::dropout_threshold(p), static_cast<float>(1.0 / (1.0 - p))};
  }

  // out [rows, r] fp32 = out_scale * mask(x) r_mat^T; x [rows, cols] contiguous, r_mat [r, cols] fp32 contiguous.
  static at::Tensor low_rank_down(const at::Tensor& x, const at::Tensor& r_mat, cuda::DropoutMask mask,
                                  double out_scale) {
    at::Tensor out = at::empty({x.size(0), r_mat.size(0)}, x.options().dtype(at::kFloat));
    cuda::low_rank_down({x.const_data_ptr(), float_kind(x.scalar_type()), x.size(0), x.size(1),
                         r_mat.const_data_ptr<float>(), r_mat.size(0), mask, static_cast<float>(out_scale),
                         out.mutable_data_ptr<float>()},
                        Runtime::stream());
    Runtime::check_launch();
    return out;
  }

  // x [rows, cols] contiguous += mask(scale * l r_mat), l [rows, r], r_mat [r, cols] fp32 contiguous.
  static void low_rank_up_add(at::Tensor& x, const at::Tensor& l, const at::Tensor& r_mat, cuda::DropoutMask mask,
                              double scale) {
    cuda::low_rank_up_add({x.mutable_data_ptr(), float_kind(x.scalar_type()), x.size(0), x.size(1),
                           l.const_data_ptr<float>(), r_mat.const_data_ptr<float>(), l.size(1), mask,
                           static_cast<float>(scale)},
                          Runtime::stream());
    Runtime::check_launch();
  }

  // [r, cols] fp32 = l^T mask(x); x [rows, cols] contiguous, l [rows, r] fp32 contiguous.
  static at::Tensor low_rank_reduce(const at::Tensor& x, const at::Tensor& l, cuda::DropoutMask mask) {
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

  // w: the base weight [n, k] in x's dtype.
  static std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& w,
                                                    const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                                    const at::Tensor& b, double scale, double p, int64_t seed) {
    const int64_t n = w.size(0), k = w.size(1), m = lora_detail::leading_rows(x);
    const at::Tensor x2 = x.reshape({m, k}).contiguous();
    const at::Tensor xa = low_rank_down(x2, a.to(at::kFloat).contiguous(), dropout_mask(p, seed), 1.0);
    at::Tensor y = bias.has_value() ? at::addmm(bias->to(x.scalar_type()), x2, w.t()) : at::mm(x2, w.t());
    low_rank_up_add(y, xa, b.to(at::kFloat).t().contiguous(), {}, scale);  // in fp32, rounded once into y
    return {y.view(lora_detail::out_shape(x, n)), xa};
  }

  // w: the base weight [n, k], or undefined when dx is not needed (an NF4 weight
  // is then not dequantized); w_is_param: w is a dense parameter that may want dW.
  static std::vector<at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w,
                                          int64_t n, int64_t k, bool w_is_param,
                                          const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                          const at::Tensor& b, const at::Tensor& xa, double scale, double p,
                                          int64_t seed, std::array<bool, 5> need /* x, weight, bias, A, B */) {
    const int64_t m = lora_detail::leading_rows(x);
    lora_detail::check_backward_args(grad_out, xa, m, n, a.size(0));
    lora_detail::check_float(grad_out, "grad_out", kDevice);
    lora_detail::check_on_device_of_x(grad_out, "grad_out", x);
    lora_detail::check_on_device_of_x(xa, "xa", x);
    const at::Tensor dy = grad_out.reshape({m, n}).contiguous();
    const at::Tensor a32 = a.to(at::kFloat).contiguous();
    const cuda::DropoutMask mask = dropout_mask(p, seed);
    // d_xa = scale * dy B, [m, r] fp32: what dx's and dA's LoRA parts start from
    const at::Tensor d_xa =
        need[0] || need[3] ? low_rank_down(dy, b.to(at::kFloat).t().contiguous(), {}, scale) : at::Tensor();
    const auto empty = [](const at::Tensor& like) { return at::empty({0}, like.options()); };
    at::Tensor grad_x = empty(x), grad_w = w_is_param ? empty(w) : empty(x), grad_bias = bias ? empty(*bias) : empty(x);
    at::Tensor grad_a = empty(a), grad_b = empty(b);
    if (need[4]) grad_b = low_rank_reduce(dy, xa.contiguous(), {}).t().mul(scale).to(b.scalar_type());
    // x itself is read only for dA and dW: with A and W frozen it may be a data-free stand-in.
    if (need[3]) grad_a = low_rank_reduce(x.reshape({m, k}).contiguous(), d_xa, mask).to(a.scalar_type());
    if (need[2] && bias.has_value()) grad_bias = at::sum(dy, {0}, false, at::kFloat).to(bias->scalar_type());
    if (need[1] && w_is_param) grad_w = at::mm(dy.t(), x.reshape({m, k})).to(w.scalar_type());
    if (need[0]) {
      at::Tensor dx = at::mm(dy, w.to(dy.scalar_type()));
      low_rank_up_add(dx, d_xa, a32, mask, 1.0);  // the forward's mask: d(x * mask / keep) = dx * mask / keep
      grad_x = dx.to(x.scalar_type()).view(x.sizes());
    }
    return {grad_x, grad_w, grad_bias, grad_a, grad_b};
  }

  // ----------------------------------------------------------------------------- dense weight
  static std::tuple<at::Tensor, at::Tensor> lora_linear(const at::Tensor& x, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                                        const at::Tensor& b, double scale, double dropout,
                                                        int64_t seed) {
    lora_detail::check_dense_weight(weight, kDevice);
    lora_detail::check_lora_args(x, weight.size(0), weight.size(1), bias, a, b, dropout, kDevice);
    const lora_detail::KernelDispatchGuard dispatch_guard;
    const typename Runtime::Guard guard(x.device());
    return forward(x, weight.to(x.scalar_type()), bias, a, b, scale, dropout, seed);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_backward(
      const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
      const at::Tensor& a, const at::Tensor& b, const at::Tensor& xa, double scale, double dropout, int64_t seed,
      std::array<bool, 5> needs) {
    lora_detail::check_dense_weight(weight, kDevice);
    lora_detail::check_lora_args(x, weight.size(0), weight.size(1), bias, a, b, dropout, kDevice);
    const lora_detail::KernelDispatchGuard dispatch_guard;
    const typename Runtime::Guard guard(grad_out.device());
    auto g = backward(grad_out, x, weight, weight.size(0), weight.size(1), true, bias, a, b, xa, scale, dropout, seed,
                      needs);
    return {g[0], g[1], g[2], g[3], g[4]};
  }

  // ----------------------------------------------------------------------------- NF4 weight
  static void check_nf4_weight(const at::Tensor& x, const at::Tensor& packed, at::IntArrayRef weight_shape) {
    lora_detail::check_weight_shape(weight_shape);
    TORCH_CHECK(packed.device() == x.device(), lora_detail::kOp, ": the NF4 weight must be on ", x.device(),
                " like x, got ", packed.device());
  }

  static at::Tensor dequantized_weight(const at::Tensor& packed, const at::Tensor& absmax,
                                       const std::optional<at::Tensor>& nested_absmax,
                                       const std::optional<at::Tensor>& nested_code,
                                       const std::optional<at::Tensor>& offset, int64_t blocksize,
                                       int64_t nested_blocksize, at::IntArrayRef weight_shape, at::ScalarType dtype) {
    return NF4Ops<Runtime>::dequantize(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                       nested_blocksize, c10::fromIntArrayRefSlow(weight_shape), dtype);
  }

  // The decode path: xa by our down-projection kernel, then out by the NF4 GEMV
  // with bias and the LoRA term fused; the weight is read packed, once.
  static std::tuple<at::Tensor, at::Tensor> decode(const at::Tensor& x, const at::Tensor& packed,
                                                   const at::Tensor& absmax,
                                                   const std::optional<at::Tensor>& nested_absmax,
                                                   const std::optional<at::Tensor>& nested_code,
                                                   const std::optional<at::Tensor>& offset, int64_t blocksize,
                                                   int64_t nested_blocksize, int64_t n, int64_t k,
                                                   const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                                   const at::Tensor& b, double scale, double p, int64_t seed) {
    const int64_t m = lora_detail::leading_rows(x), r = a.size(0);
    const at::Tensor x2 = x.reshape({m, k}).contiguous();
    const at::Tensor a32 = a.to(at::kFloat).contiguous(), b32 = b.to(at::kFloat).contiguous();
    const at::Tensor bias_x = bias.has_value() ? bias->to(x.scalar_type()).contiguous() : at::Tensor();
    const at::Tensor xa = low_rank_down(x2, a32, dropout_mask(p, seed), 1.0);
    at::Tensor y = at::empty({m, n}, x.options());
    const cuda::FloatKind x_kind = float_kind(x.scalar_type());
    nf4_detail::with_device_tensors(
        packed, absmax, nested_absmax, nested_code, offset,
        [&](const at::Tensor& pk, const at::Tensor& am, const at::Tensor& nested, const at::Tensor& code,
            const at::Tensor& off) {
          cuda::nf4_gemv_lora({x2.const_data_ptr(), x_kind, m, n, k,
                               weight_view(pk, am, nested, code, off, blocksize, nested_blocksize),
                               bias_x.defined() ? bias_x.const_data_ptr() : nullptr, xa.const_data_ptr<float>(),
                               b32.const_data_ptr<float>(), r, static_cast<float>(scale), y.mutable_data_ptr()},
                              Runtime::stream());
          Runtime::check_launch();
        });
    return {y.view(lora_detail::out_shape(x, n)), xa};
  }

  static std::tuple<at::Tensor, at::Tensor> lora_linear_nf4(
      const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax,
      const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
      const std::optional<at::Tensor>& offset, int64_t blocksize, int64_t nested_blocksize,
      at::IntArrayRef weight_shape, const std::optional<at::Tensor>& bias, const at::Tensor& a, const at::Tensor& b,
      double scale, double dropout, int64_t seed) {
    check_nf4_weight(x, packed, weight_shape);
    lora_detail::check_lora_args(x, weight_shape[0], weight_shape[1], bias, a, b, dropout, kDevice);
    const lora_detail::KernelDispatchGuard dispatch_guard;
    const typename Runtime::Guard guard(x.device());
    const int64_t n = weight_shape[0], k = weight_shape[1], m = lora_detail::leading_rows(x);
    if (m >= 1 && m <= cuda::kDecodeMaxRows && n * k > 0) {
      nf4_detail::check_dequantize_args(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                        nested_blocksize, c10::fromIntArrayRefSlow(weight_shape), x.scalar_type());
      return decode(x, packed, absmax, nested_absmax, nested_code, offset, blocksize, nested_blocksize, n, k, bias, a,
                    b, scale, dropout, seed);
    }
    const at::Tensor w = dequantized_weight(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                            nested_blocksize, weight_shape, x.scalar_type());
    return forward(x, w, bias, a, b, scale, dropout, seed);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_nf4_backward(
      const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax,
      const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
      const std::optional<at::Tensor>& offset, int64_t blocksize, int64_t nested_blocksize,
      at::IntArrayRef weight_shape, const std::optional<at::Tensor>& bias, const at::Tensor& a, const at::Tensor& b,
      const at::Tensor& xa, double scale, double dropout, int64_t seed, std::array<bool, 4> needs) {
    check_nf4_weight(x, packed, weight_shape);
    lora_detail::check_lora_args(x, weight_shape[0], weight_shape[1], bias, a, b, dropout, kDevice);
    const lora_detail::KernelDispatchGuard dispatch_guard;
    const typename Runtime::Guard guard(grad_out.device());
    const at::Tensor w = needs[0] ? dequantized_weight(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                                       nested_blocksize, weight_shape, grad_out.scalar_type())
                                  : at::Tensor();
    auto g = backward(grad_out, x, w, weight_shape[0], weight_shape[1], false, bias, a, b, xa, scale, dropout, seed,
                      {needs[0], false, needs[1], needs[2], needs[3]});
    return {g[0], g[2], g[3], g[4]};
  }
};

}  // namespace loraops::cuda_ops
