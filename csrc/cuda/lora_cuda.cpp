// CUDA registrations of the LoRA ops, out = x W^T + bias + scale * (dropout(x) A^T) B^T.
//
// The base GEMMs run in the input dtype through cuBLAS (tensor cores, fp32
// accumulation); the low-rank branch runs in fp32 (x widened, as peft does with
// fp32 adapters), so xa = dropout(x) A^T is exact enough to save for the
// backward. The dropout mask is the CPU kernels' counter hash, bit for bit. An
// NF4 base weight is dequantized whole into the input dtype by our kernel, used
// and freed.
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../cpu/dropout.h"
#include "../lora/lora_checks.h"
#include "../nf4/nf4_checks.h"
#include "lora_cuda_kernels.h"

namespace loraops {
namespace {

using lora_detail::kOp;
using lora_detail::leading_rows;
using lora_detail::out_shape;
constexpr auto kCUDA = c10::DeviceType::CUDA;

// dropout(x32) for x32 [rows, k] fp32 contiguous, in place when out is x32.
void apply_dropout(const at::Tensor& x32, at::Tensor& out, double p, int64_t seed) {
  cuda::dropout_apply(x32.const_data_ptr<float>(), out.mutable_data_ptr<float>(), x32.numel(), 0,
                      static_cast<uint64_t>(seed), cpu::dropout_threshold(p), static_cast<float>(1.0 / (1.0 - p)),
                      c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor dropped(const at::Tensor& x32, double p, int64_t seed) {
  if (p == 0.0) return x32;
  at::Tensor out = at::empty_like(x32);
  apply_dropout(x32, out, p, seed);
  return out;
}

// w: the base weight [n, k] in x's dtype.
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias,
                                           const at::Tensor& a, const at::Tensor& b, double scale, double p,
                                           int64_t seed) {
  at::AutoDispatchBelowAutograd below_autograd;
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = w.size(0), k = w.size(1), m = leading_rows(x);
  const at::Tensor x2 = x.reshape({m, k});
  const at::Tensor xa = at::mm(dropped(x2.to(at::kFloat).contiguous(), p, seed), a.to(at::kFloat).t());
  at::Tensor y = bias.has_value() ? at::addmm(bias->to(x.scalar_type()), x2, w.t()) : at::mm(x2, w.t());
  y.add_(at::mm(xa, b.to(at::kFloat).t()), scale);  // in fp32, rounded once into y's dtype
  return {y.view(out_shape(x, n)), xa};
}

// w: the base weight [n, k], or undefined when dx is not needed (an NF4 weight
// is then not dequantized); w_is_param: w is a dense parameter that may want dW.
std::vector<at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w, int64_t n,
                                 int64_t k, bool w_is_param, const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                 const at::Tensor& b, const at::Tensor& xa, double scale, double p, int64_t seed,
                                 std::array<bool, 5> need /* x, weight, bias, A, B */) {
  at::AutoDispatchBelowAutograd below_autograd;
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const int64_t m = leading_rows(x);
  lora_detail::check_backward_args(grad_out, xa, m, n, a.size(0));
  const at::Tensor dy = grad_out.reshape({m, n});
  const at::Tensor dy32 = dy.to(at::kFloat);
  const at::Tensor a32 = a.to(at::kFloat), b32 = b.to(at::kFloat);
  const at::Tensor d_xa = at::mm(dy32, b32).mul_(scale);  // [m, r]
  const auto empty = [](const at::Tensor& like) { return at::empty({0}, like.options()); };
  at::Tensor grad_x = empty(x), grad_w = w_is_param ? empty(w) : empty(x), grad_bias = bias ? empty(*bias) : empty(x);
  at::Tensor grad_a = empty(a), grad_b = empty(b);
  if (need[4]) grad_b = at::mm(dy32.t(), xa).mul_(scale).to(b.scalar_type());
  // x itself is read only for dA and dW: with A and W frozen it may be a data-free stand-in.
  if (need[3]) grad_a = at::mm(d_xa.t(), dropped(x.reshape({m, k}).to(at::kFloat).contiguous(), p, seed)).to(a.scalar_type());
  if (need[2] && bias.has_value()) grad_bias = at::sum(dy32, {0}).to(bias->scalar_type());
  if (need[1] && w_is_param) grad_w = at::mm(dy.t(), x.reshape({m, k})).to(w.scalar_type());
  if (need[0]) {
    at::Tensor dx_lora = at::mm(d_xa, a32);  // [m, k] fp32
    if (p > 0.0) apply_dropout(dx_lora, dx_lora, p, seed);  // the same mask: d(x * mask / keep) = dx * mask / keep
    at::Tensor dx = at::mm(dy, w.to(dy.scalar_type()));
    dx.add_(dx_lora);
    grad_x = dx.to(x.scalar_type()).view(x.sizes());
  }
  return {grad_x, grad_w, grad_bias, grad_a, grad_b};
}

// ----------------------------------------------------------------------------- dense weight
std::tuple<at::Tensor, at::Tensor> lora_linear_cuda(const at::Tensor& x, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                                    const at::Tensor& b, double scale, double dropout, int64_t seed) {
  lora_detail::check_dense_weight(weight, kCUDA);
  lora_detail::check_lora_args(x, weight.size(0), weight.size(1), bias, a, b, dropout, kCUDA);
  return forward(x, weight.to(x.scalar_type()), bias, a, b, scale, dropout, seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& xa, double scale, double dropout, int64_t seed,
    std::array<bool, 5> needs) {
  lora_detail::check_dense_weight(weight, kCUDA);
  lora_detail::check_lora_args(x, weight.size(0), weight.size(1), bias, a, b, dropout, kCUDA);
  auto g = backward(grad_out, x, weight, weight.size(0), weight.size(1), true, bias, a, b, xa, scale, dropout, seed,
                    needs);
  return {g[0], g[1], g[2], g[3], g[4]};
}

// ----------------------------------------------------------------------------- NF4 weight
at::Tensor dequantized_weight(const at::Tensor& packed, const at::Tensor& absmax,
                              const std::optional<at::Tensor>& nested_absmax,
                              const std::optional<at::Tensor>& nested_code, const std::optional<at::Tensor>& offset,
                              int64_t blocksize, int64_t nested_blocksize, at::IntArrayRef weight_shape,
                              at::ScalarType dtype) {
  lora_detail::check_weight_shape(weight_shape);
  TORCH_CHECK(packed.is_cuda(), kOp, ": the NF4 weight must be on the GPU for the CUDA kernel, got ", packed.device());
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("loraops::nf4_dequantize", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                               int64_t, int64_t, c10::SymIntArrayRef, at::ScalarType)>();
  return op.call(packed, absmax, nested_absmax, nested_code, offset, blocksize, nested_blocksize,
                 c10::fromIntArrayRefSlow(weight_shape), dtype);
}

std::tuple<at::Tensor, at::Tensor> lora_linear_nf4_cuda(
    const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax,
    const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
    const std::optional<at::Tensor>& offset, int64_t blocksize, int64_t nested_blocksize,
    at::IntArrayRef weight_shape, const std::optional<at::Tensor>& bias, const at::Tensor& a, const at::Tensor& b,
    double scale, double dropout, int64_t seed) {
  lora_detail::check_weight_shape(weight_shape);
  lora_detail::check_lora_args(x, weight_shape[0], weight_shape[1], bias, a, b, dropout, kCUDA);
  const at::Tensor w = dequantized_weight(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                          nested_blocksize, weight_shape, x.scalar_type());
  return forward(x, w, bias, a, b, scale, dropout, seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_nf4_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax,
    const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
    const std::optional<at::Tensor>& offset, int64_t blocksize, int64_t nested_blocksize,
    at::IntArrayRef weight_shape, const std::optional<at::Tensor>& bias, const at::Tensor& a, const at::Tensor& b,
    const at::Tensor& xa, double scale, double dropout, int64_t seed, std::array<bool, 4> needs) {
  lora_detail::check_weight_shape(weight_shape);
  lora_detail::check_lora_args(x, weight_shape[0], weight_shape[1], bias, a, b, dropout, kCUDA);
  const at::Tensor w = needs[0] ? dequantized_weight(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                                     nested_blocksize, weight_shape, grad_out.scalar_type())
                                : at::Tensor();
  auto g = backward(grad_out, x, w, weight_shape[0], weight_shape[1], false, bias, a, b, xa, scale, dropout, seed,
                    {needs[0], false, needs[1], needs[2], needs[3]});
  return {g[0], g[2], g[3], g[4]};
}

}  // namespace

TORCH_LIBRARY_IMPL(loraops, CUDA, m) {
  m.impl("lora_linear", &lora_linear_cuda);
  m.impl("lora_linear_backward", &lora_linear_backward_cuda);
  m.impl("lora_linear_nf4", &lora_linear_nf4_cuda);
  m.impl("lora_linear_nf4_backward", &lora_linear_nf4_backward_cuda);
}

}  // namespace loraops
