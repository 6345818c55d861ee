// The host flow of the LoRA ops, shared by the backends.
//
// LoraOpEntries<Impl> is what a backend registers: it turns an op's arguments
// into the structs below (an NF4 base weight into one nf4::NF4Tensor, the
// needs_grad flags into Needs), checks everything, and runs the backend's
// forward/backward below autograd and outside autocast.
//
// DeviceLoraFlow<Kernels> is that forward and backward for a device backend
// (CUDA, Ascend and their CPU emulations), which then supplies only its
// launches. Where a backend has no fused path (fused_forward, fused_dx), the
// base GEMMs run through ATen in the input dtype and the low-rank products in
// fp32 in the backend's kernels, reading x, dy and the outputs in their own
// dtype, dropout applied on the fly from the seed (the mask is never stored),
// the LoRA term added into y and dx in place. An NF4 base weight is then
// dequantized whole by the backend's NF4 kernel, used and freed.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>

#include <array>
#include <optional>
#include <tuple>
#include <utility>

#include "../nf4/nf4_checks.h"
#include "dropout_hash.h"
#include "lora_checks.h"

namespace loraops::lora_detail {

// The gradients a backward computes: of x, the base weight (dense only), the
// bias, lora_A and lora_B.
struct Needs {
  bool x = false, weight = false, bias = false, a = false, b = false;
};

// Undefined where not needed.
struct Gradients {
  at::Tensor x, weight, bias, a, b;
};

// The op entry points, for TORCH_LIBRARY_IMPL. Impl supplies
//   static constexpr c10::DeviceType kDevice;
//   using Guard = ...;  // a device guard constructed from a c10::Device
//   static std::tuple<at::Tensor, at::Tensor> forward(x, const Weight& w, bias, a, b, scale, dropout, seed);
//   static Gradients backward(grad_out, x, const Weight& w, bias, a, b, xa, scale, dropout, seed, Needs);
// for Weight = at::Tensor (dense, checked) and nf4::NF4Tensor (2-D, checked).
template <class Impl>
struct LoraOpEntries {
  static constexpr c10::DeviceType kDevice = Impl::kDevice;

  // An op's result tensor where the gradient was not asked for.
  static at::Tensor or_empty(const at::Tensor& g, const at::Tensor& like) {
    return g.defined() ? g : at::empty({0}, like.options());
  }

  static nf4::NF4Tensor checked_nf4_weight(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax,
                                           const std::optional<at::Tensor>& nested_absmax,
                                           const std::optional<at::Tensor>& nested_code,
                                           const std::optional<at::Tensor>& offset, int64_t blocksize,
                                           int64_t nested_blocksize, at::IntArrayRef weight_shape) {
    check_weight_shape(weight_shape);
    TORCH_CHECK(packed.device() == x.device(), kOp, ": the NF4 weight must be on ", x.device(), " like x, got ",
                packed.device());
    nf4::NF4Tensor w = nf4_detail::nf4_tensor(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                              nested_blocksize, c10::fromIntArrayRefSlow(weight_shape));
    nf4_detail::check_nf4_tensor(w, at::kFloat);
    return w;
  }

  static std::tuple<at::Tensor, at::Tensor> lora_linear(const at::Tensor& x, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                                        const at::Tensor& b, double scale, double dropout,
                                                        int64_t seed) {
    check_dense_weight(weight, kDevice);
    check_lora_args(x, weight.size(0), weight.size(1), bias, a, b, scale, dropout, kDevice);
    const KernelDispatchGuard dispatch_guard;
    const typename Impl::Guard guard(x.device());
    return Impl::forward(x, weight, bias, a, b, scale, dropout, seed);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_backward(
      const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
      const at::Tensor& a, const at::Tensor& b, const at::Tensor& xa, double scale, double dropout, int64_t seed,
      std::array<bool, 5> needs_grad) {
    check_dense_weight(weight, kDevice);
    const int64_t r = check_lora_args(x, weight.size(0), weight.size(1), bias, a, b, scale, dropout, kDevice);
    check_backward_args(grad_out, xa, x, weight.size(0), r, kDevice);
    const KernelDispatchGuard dispatch_guard;
    const typename Impl::Guard guard(grad_out.device());
    const Needs needs{needs_grad[0], needs_grad[1], needs_grad[2] && bias.has_value(), needs_grad[3], needs_grad[4]};
    const Gradients g = Impl::backward(grad_out, x, weight, bias, a, b, xa, scale, dropout, seed, needs);
    return {or_empty(g.x, x), or_empty(g.weight, weight), or_empty(g.bias, bias ? *bias : x), or_empty(g.a, a),
            or_empty(g.b, b)};
  }

  static std::tuple<at::Tensor, at::Tensor> lora_linear_nf4(
      const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax,
      const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
      const std::optional<at::Tensor>& offset, int64_t blocksize, int64_t nested_blocksize,
      at::IntArrayRef weight_shape, const std::optional<at::Tensor>& bias, const at::Tensor& a, const at::Tensor& b,
      double scale, double dropout, int64_t seed) {
    const nf4::NF4Tensor w = checked_nf4_weight(x, packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                                nested_blocksize, weight_shape);
    check_lora_args(x, w.shape[0], w.shape[1], bias, a, b, scale, dropout, kDevice);
    const KernelDispatchGuard dispatch_guard;
    const typename Impl::Guard guard(x.device());
    return Impl::forward(x, w, bias, a, b, scale, dropout, seed);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_nf4_backward(
      const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax,
      const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
      const std::optional<at::Tensor>& offset, int64_t blocksize, int64_t nested_blocksize,
      at::IntArrayRef weight_shape, const std::optional<at::Tensor>& bias, const at::Tensor& a, const at::Tensor& b,
      const at::Tensor& xa, double scale, double dropout, int64_t seed, std::array<bool, 4> needs_grad) {
    const nf4::NF4Tensor w = checked_nf4_weight(x, packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                                nested_blocksize, weight_shape);
    const int64_t r = check_lora_args(x, w.shape[0], w.shape[1], bias, a, b, scale, dropout, kDevice);
    check_backward_args(grad_out, xa, x, w.shape[0], r, kDevice);
    const KernelDispatchGuard dispatch_guard;
    const typename Impl::Guard guard(grad_out.device());
    const Needs needs{needs_grad[0], false, needs_grad[1] && bias.has_value(), needs_grad[2], needs_grad[3]};
    const Gradients g = Impl::backward(grad_out, x, w, bias, a, b, xa, scale, dropout, seed, needs);
    return {or_empty(g.x, x), or_empty(g.bias, bias ? *bias : x), or_empty(g.a, a), or_empty(g.b, b)};
  }
};

// The base weight's size [n, k] as the flows need it.
inline int64_t out_features(const at::Tensor& w) { return w.size(0); }
inline int64_t in_features(const at::Tensor& w) { return w.size(1); }
inline int64_t out_features(const nf4::NF4Tensor& w) { return w.shape[0]; }
inline int64_t in_features(const nf4::NF4Tensor& w) { return w.shape[1]; }

// forward and backward for a device backend. Kernels supplies, with every
// tensor on the device, fp32 adapters and results:
//   kDevice, Guard (as Impl above);
//   static at::Tensor low_rank_down(const at::Tensor& x, const at::Tensor& r_mat, const dropout::Mask& mask,
//                                   double out_scale);
//       [rows, r] = out_scale * mask(x) r_mat^T; x [rows, cols] contiguous, r_mat [r, cols]
//   static void low_rank_up_add(at::Tensor& x, const at::Tensor& l, const at::Tensor& r_mat,
//                               const dropout::Mask& mask, double scale);
//       x [rows, cols] contiguous += mask(scale * l r_mat), rounded once into x's dtype
//   static at::Tensor low_rank_reduce(const at::Tensor& x, const at::Tensor& l, const dropout::Mask& mask);
//       [r, cols] = l^T mask(x); x [rows, cols] contiguous, l [rows, r]
//   static at::Tensor dequantize(const nf4::NF4Tensor& w, at::ScalarType dtype);   // the whole weight
//   static std::optional<at::Tensor> fused_forward(const at::Tensor& x2, const Weight& w,
//       const std::optional<at::Tensor>& bias, const at::Tensor& xa, const at::Tensor& b, double scale);
//       for Weight = at::Tensor (in x2's dtype) and nf4::NF4Tensor: out [rows, n] = x2 W^T + bias +
//       scale * xa B^T in one pass (an NF4 W never dequantized whole: e.g. a GEMV for decoding),
//       or nullopt when the backend has no such path for these shapes;
//   static std::optional<at::Tensor> fused_dx(const at::Tensor& dy, const Weight& w, const at::Tensor& d_xa,
//                                             const at::Tensor& a, bool with_low_rank);
//       dx [rows, k] = dy W (+ d_xa A with_low_rank) in one pass, in dy's dtype, or nullopt.
template <class Kernels>
struct DeviceLoraFlow {
  static constexpr c10::DeviceType kDevice = Kernels::kDevice;
  using Guard = typename Kernels::Guard;

  static std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                                    const at::Tensor& b, double scale, double p, int64_t seed) {
    const auto [x2, xa] = rows_and_xa(x, in_features(weight), a, p, seed);
    const at::Tensor w = weight.to(x.scalar_type());
    std::optional<at::Tensor> y = Kernels::fused_forward(x2, w, bias, xa, b, scale);
    if (!y) y = base_plus_lora(x2, w, bias, b, scale, xa);
    return {y->view(out_shape(x, out_features(weight))), xa};
  }

  static std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x, const nf4::NF4Tensor& w,
                                                    const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                                    const at::Tensor& b, double scale, double p, int64_t seed) {
    const auto [x2, xa] = rows_and_xa(x, in_features(w), a, p, seed);
    std::optional<at::Tensor> y = Kernels::fused_forward(x2, w, bias, xa, b, scale);
    if (!y) y = base_plus_lora(x2, Kernels::dequantize(w, x.scalar_type()), bias, b, scale, xa);
    return {y->view(out_shape(x, out_features(w))), xa};
  }

  // needs.weight is set for a dense weight only; dx needs the weight: an NF4 one
  // is dequantized whole for it where the backend has no fused_dx for it.
  template <class Weight>
  static Gradients backward(const at::Tensor& grad_out, const at::Tensor& x, const Weight& w,
                            const std::optional<at::Tensor>& bias, const at::Tensor& a, const at::Tensor& b,
                            const at::Tensor& xa, double scale, double p, int64_t seed, const Needs& needs) {
    return backward_with(grad_out, x, w, out_features(w), in_features(w), bias, a, b, xa, scale, p, seed, needs);
  }

 private:
  // x as [rows, k] contiguous, and xa = dropout(x) A^T (fp32 [rows, r]).
  static std::pair<at::Tensor, at::Tensor> rows_and_xa(const at::Tensor& x, int64_t k, const at::Tensor& a, double p,
                                                       int64_t seed) {
    const at::Tensor x2 = x.reshape({leading_rows(x), k}).contiguous();
    return {x2, Kernels::low_rank_down(x2, a.to(at::kFloat).contiguous(), dropout::mask(p, seed), 1.0)};
  }

  // [rows, n] = x2 w^T + bias + scale * xa B^T; w [n, k] in x2's dtype.
  static at::Tensor base_plus_lora(const at::Tensor& x2, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                                   const at::Tensor& b, double scale, const at::Tensor& xa) {
    at::Tensor y = bias.has_value() ? at::addmm(bias->to(x2.scalar_type()), x2, w.t()) : at::mm(x2, w.t());
    Kernels::low_rank_up_add(y, xa, b.to(at::kFloat).t().contiguous(), {}, scale);  // fp32, rounded once into y
    return y;
  }

  // The weight in `dtype`, dense.
  static at::Tensor dense(const at::Tensor& w, at::ScalarType dtype) { return w.to(dtype); }
  static at::Tensor dense(const nf4::NF4Tensor& w, at::ScalarType dtype) { return Kernels::dequantize(w, dtype); }
  static at::ScalarType weight_dtype(const at::Tensor& w) { return w.scalar_type(); }
  static at::ScalarType weight_dtype(const nf4::NF4Tensor&) { return at::kFloat; }  // no dW for NF4

  // w: the base weight [n, k], the dense parameter itself or an NF4 one.
  template <class Weight>
  static Gradients backward_with(const at::Tensor& grad_out, const at::Tensor& x, const Weight& w, int64_t n,
                                 int64_t k, const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                 const at::Tensor& b, const at::Tensor& xa, double scale, double p, int64_t seed,
                                 const Needs& needs) {
    const int64_t m = leading_rows(x);
    const at::Tensor dy = grad_out.reshape({m, n}).contiguous();
    const dropout::Mask mask = dropout::mask(p, seed);
    // d_xa = scale * dy B, [m, r] fp32: what dx's and dA's LoRA parts start from
    const at::Tensor d_xa = needs.x || needs.a
                                ? Kernels::low_rank_down(dy, b.to(at::kFloat).t().contiguous(), {}, scale)
                                : at::Tensor();
    Gradients g;
    if (needs.b) g.b = Kernels::low_rank_reduce(dy, xa.contiguous(), {}).t().mul(scale).to(b.scalar_type());
    // x itself is read only for dA and dW: with A and W frozen it may be a data-free stand-in.
    if (needs.a) g.a = Kernels::low_rank_reduce(x.reshape({m, k}).contiguous(), d_xa, mask).to(a.scalar_type());
    if (needs.bias) g.bias = at::sum(dy, {0}, false, at::kFloat).to(bias->scalar_type());
    if (needs.weight) g.weight = at::mm(dy.t(), x.reshape({m, k})).to(weight_dtype(w));
    if (needs.x) {
      const at::Tensor a32 = a.to(at::kFloat).contiguous();
      // Without dropout the backend may add d_xa A in the same pass; with it the
      // forward's mask stands between: d(x * mask / keep) = dx * mask / keep.
      bool whole = mask.threshold == 0;
      std::optional<at::Tensor> dx = Kernels::fused_dx(dy, w, d_xa, a32, whole);
      if (!dx) {
        dx = at::mm(dy, dense(w, dy.scalar_type()));
        whole = false;
      }
      if (!whole) Kernels::low_rank_up_add(*dx, d_xa, a32, mask, 1.0);
      g.x = dx->to(x.scalar_type()).view(x.sizes());
    }
    return g;
  }
};

}  // namespace loraops::lora_detail
