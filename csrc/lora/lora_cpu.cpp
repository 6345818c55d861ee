// CPU kernels of the LoRA ops: out = x W^T + bias + scale * (dropout(x) A^T) B^T.
//
// All arithmetic is fp32 (bf16/fp16 inputs are widened tile by tile): CPUs
// without native bf16 run torch's bf16 GEMM several times slower than fp32. The
// low-rank product is written first and the base GEMM accumulates onto it
// (beta = 1), so the LoRA term never takes a separate pass over the output.
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <numeric>

#include "../cpu/buffer_cache.h"
#include "../cpu/dropout.h"
#include "../nf4/nf4_checks.h"
#include "../nf4/nf4_cpu.h"
#include "lora_checks.h"

namespace loraops {
namespace {

// Largest fp32 tile of a base weight that is not fp32 in memory already.
constexpr int64_t kTileBytes = int64_t{32} << 20;

using lora_detail::kOp;
using lora_detail::leading_rows;
using lora_detail::out_shape;

// fp32 row tiles of the base weight W [N, K].
class WeightTiles {
 public:
  virtual ~WeightTiles() = default;
  virtual int64_t tile_rows() const = 0;
  // True when rows() returns views of the weight and needs no buffer.
  virtual bool views_weight() const { return false; }
  // Rows [n0, n1) as fp32 [n1 - n0, K]: a view of W when it is fp32, else
  // written into `buffer` (at least tile_rows() * K floats).
  virtual at::Tensor rows(int64_t n0, int64_t n1, at::Tensor& buffer) const = 0;
};

class DenseTiles final : public WeightTiles {
 public:
  explicit DenseTiles(const at::Tensor& w) : w_(w.contiguous()) {}
  bool views_weight() const override { return w_.scalar_type() == at::kFloat; }
  int64_t tile_rows() const override {
    if (w_.scalar_type() == at::kFloat) return std::max<int64_t>(1, w_.size(0));
    return std::max<int64_t>(1, kTileBytes / std::max<int64_t>(1, 4 * w_.size(1)));
  }
  at::Tensor rows(int64_t n0, int64_t n1, at::Tensor& buffer) const override {
    if (w_.scalar_type() == at::kFloat) return w_.slice(0, n0, n1);
    at::Tensor tile = buffer.view({-1}).slice(0, 0, (n1 - n0) * w_.size(1)).view({n1 - n0, w_.size(1)});
    return tile.copy_(w_.slice(0, n0, n1));
  }

 private:
  at::Tensor w_;
};

class NF4Tiles final : public WeightTiles {
 public:
  NF4Tiles(const NF4CpuTensor& w, int64_t k) : w_(w), k_(k) {}
  int64_t tile_rows() const override {
    // Tiles start on block boundaries: a multiple of blocksize / gcd(K, blocksize) rows.
    const int64_t unit = w_.blocksize() / std::gcd(std::max<int64_t>(k_, 1), w_.blocksize());
    const int64_t fit = kTileBytes / std::max<int64_t>(1, 4 * k_);
    return std::max(unit, fit / unit * unit);
  }
  at::Tensor rows(int64_t n0, int64_t n1, at::Tensor& buffer) const override {
    at::Tensor tile = buffer.view({-1}).slice(0, 0, (n1 - n0) * k_).view({n1 - n0, k_});
    const int64_t first = n0 * k_, last = n1 * k_;
    if (last > first)
      w_.dequantize_blocks(first / w_.blocksize(), (last + w_.blocksize() - 1) / w_.blocksize(),
                           tile.mutable_data_ptr(), at::kFloat);
    return tile;
  }

 private:
  const NF4CpuTensor& w_;
  int64_t k_;
};

// Calls fn(n0, n1, tile) over row tiles of W, sharing one buffer.
template <typename Fn>
void for_each_tile(const WeightTiles& w, int64_t n, int64_t k, Fn&& fn) {
  const int64_t step = std::min(w.tile_rows(), std::max<int64_t>(n, 1));
  at::Tensor buffer;
  if (!w.views_weight())
    buffer = at::empty({step * k}, at::TensorOptions().dtype(at::kFloat));
  for (int64_t n0 = 0; n0 < n; n0 += step) {
    const int64_t n1 = std::min(n, n0 + step);
    fn(n0, n1, w.rows(n0, n1, buffer));
  }
}

int64_t check_lora_args(const at::Tensor& x, int64_t n, int64_t k, const std::optional<at::Tensor>& bias,
                        const at::Tensor& a, const at::Tensor& b, double dropout) {
  return lora_detail::check_lora_args(x, n, k, bias, a, b, dropout, c10::DeviceType::CPU);
}

at::Tensor as_fp32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// dropout(x) for x [rows, k] fp32 contiguous, into out (may be x itself).
void apply_dropout(const at::Tensor& x, at::Tensor& out, double p, int64_t seed) {
  const uint32_t threshold = cpu::dropout_threshold(p);
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const float* in = x.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  const int64_t k = std::max<int64_t>(x.size(1), 1);
  at::parallel_for(0, x.size(0), std::max<int64_t>(1, 16384 / k), [&](int64_t r0, int64_t r1) {
    cpu::dropout_apply(in + r0 * x.size(1), dst + r0 * x.size(1), (r1 - r0) * x.size(1),
                       static_cast<uint64_t>(r0 * x.size(1)), static_cast<uint64_t>(seed), threshold, scale);
  });
}

at::Tensor dropped(const at::Tensor& x32, double p, int64_t seed) {
  if (p == 0.0) return x32;
  at::Tensor out = cpu::empty_output(x32.sizes(), at::kFloat);
  apply_dropout(x32, out, p, seed);
  return out;
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x, const WeightTiles& w, int64_t n, int64_t k,
                                           const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                           const at::Tensor& b, double scale, double p, int64_t seed) {
  // The ATen calls below are implementation detail: autograd is this op's own.
  const lora_detail::KernelDispatchGuard dispatch_guard;
  const int64_t m = leading_rows(x);
  const at::Tensor x32 = as_fp32(x.reshape({m, k}));
  const at::Tensor a32 = as_fp32(a), b32 = as_fp32(b);
  const at::Tensor xa = at::mm(dropped(x32, p, seed), a32.t());

  at::Tensor y = cpu::empty_output({m, n}, at::kFloat);
  if (bias.has_value())
    at::addmm_out(y, bias->to(at::kFloat), xa, b32.t(), 1.0, scale);
  else
    y.addmm_(xa, b32.t(), 0.0, scale);  // beta = 0: y's old contents are not read
  for_each_tile(w, n, k, [&](int64_t n0, int64_t n1, const at::Tensor& tile) {
    at::Tensor y_cols = y.slice(1, n0, n1);
    y_cols.addmm_(x32, tile.t());
  });
  return {y.to(x.scalar_type()).view(out_shape(x, n)), xa};
}

std::vector<at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& x, const WeightTiles& w,
                                 const at::Tensor* dense_weight, int64_t n, int64_t k,
                                 const std::optional<at::Tensor>& bias, const at::Tensor& a, const at::Tensor& b,
                                 const at::Tensor& xa, double scale, double p, int64_t seed, bool need_x,
                                 bool need_w, bool need_bias, bool need_a, bool need_b) {
  const lora_detail::KernelDispatchGuard dispatch_guard;
  // x itself is only read for dA and dW: with a frozen A (LoRA-FA) and W the
  // caller may pass a stand-in with x's shape and dtype but no data.
  const int64_t m = leading_rows(x);
  lora_detail::check_backward_args(grad_out, xa, m, n, a.size(0));
  const at::Tensor dy = as_fp32(grad_out.reshape({m, n}));
  const at::Tensor a32 = as_fp32(a), b32 = as_fp32(b);
  const at::Tensor d_xa = at::mm(dy, b32).mul_(scale);  // [m, r]
  const auto empty = [&](const at::Tensor& like) { return at::empty({0}, like.options()); };

  at::Tensor grad_x = empty(x), grad_w = dense_weight ? empty(*dense_weight) : empty(x);
  at::Tensor grad_bias = bias.has_value() ? empty(*bias) : empty(x);
  at::Tensor grad_a = empty(a), grad_b = empty(b);
  if (need_b) grad_b = at::mm(dy.t(), xa).mul_(scale).to(b.scalar_type());
  const bool need_w_grad = need_w && dense_weight != nullptr;
  const at::Tensor x32 = (need_a || need_w_grad) ? as_fp32(x.reshape({m, k})) : at::Tensor();
  if (need_a) grad_a = at::mm(d_xa.t(), dropped(x32, p, seed)).to(a.scalar_type());
  if (need_bias && bias.has_value()) grad_bias = at::sum(dy, {0}).to(bias->scalar_type());
  if (need_w_grad) grad_w = at::mm(dy.t(), x32).to(dense_weight->scalar_type());
  if (need_x) {
    at::Tensor dx = cpu::empty_output({m, k}, at::kFloat);
    at::mm_out(dx, d_xa, a32);
    if (p > 0.0) apply_dropout(dx, dx, p, seed);  // the same mask: d(x * mask / keep) = dx * mask / keep
    for_each_tile(w, n, k, [&](int64_t n0, int64_t n1, const at::Tensor& tile) {
      dx.addmm_(dy.slice(1, n0, n1), tile);
    });
    grad_x = dx.to(x.scalar_type()).view(x.sizes());
  }
  return {grad_x, grad_w, grad_bias, grad_a, grad_b};
}

// ----------------------------------------------------------------------------- dense weight
void check_dense_weight(const at::Tensor& weight) { lora_detail::check_dense_weight(weight, c10::DeviceType::CPU); }

std::tuple<at::Tensor, at::Tensor> lora_linear_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                                   const at::Tensor& b, double scale, double dropout, int64_t seed) {
  check_dense_weight(weight);
  check_lora_args(x, weight.size(0), weight.size(1), bias, a, b, dropout);
  return forward(x, DenseTiles(weight), weight.size(0), weight.size(1), bias, a, b, scale, dropout, seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& xa, double scale, double dropout, int64_t seed,
    std::array<bool, 5> needs) {
  check_dense_weight(weight);
  check_lora_args(x, weight.size(0), weight.size(1), bias, a, b, dropout);
  auto g = backward(grad_out, x, DenseTiles(weight), &weight, weight.size(0), weight.size(1), bias, a, b, xa, scale,
                    dropout, seed, needs[0], needs[1], needs[2], needs[3], needs[4]);
  return {g[0], g[1], g[2], g[3], g[4]};
}

// ----------------------------------------------------------------------------- NF4 weight
int64_t check_nf4_weight(const at::Tensor& packed, const at::Tensor& absmax,
                         const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
                         const std::optional<at::Tensor>& offset, int64_t blocksize, int64_t nested_blocksize,
                         at::IntArrayRef weight_shape) {
  lora_detail::check_weight_shape(weight_shape);
  TORCH_CHECK(packed.device().is_cpu(), kOp, ": the NF4 weight must be on the CPU for the CPU kernel");
  return nf4_detail::check_dequantize_args(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                           nested_blocksize, c10::fromIntArrayRefSlow(weight_shape), at::kFloat);
}

std::tuple<at::Tensor, at::Tensor> lora_linear_nf4_cpu(
    const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax,
    const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
    const std::optional<at::Tensor>& offset, int64_t blocksize, int64_t nested_blocksize,
    at::IntArrayRef weight_shape, const std::optional<at::Tensor>& bias, const at::Tensor& a, const at::Tensor& b,
    double scale, double dropout, int64_t seed) {
  const int64_t numel = check_nf4_weight(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                         nested_blocksize, weight_shape);
  const int64_t n = weight_shape[0], k = weight_shape[1];
  check_lora_args(x, n, k, bias, a, b, dropout);
  const NF4CpuTensor w(packed, absmax, nested_absmax, nested_code, offset, blocksize, nested_blocksize, numel);
  return forward(x, NF4Tiles(w, k), n, k, bias, a, b, scale, dropout, seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_nf4_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax,
    const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
    const std::optional<at::Tensor>& offset, int64_t blocksize, int64_t nested_blocksize,
    at::IntArrayRef weight_shape, const std::optional<at::Tensor>& bias, const at::Tensor& a, const at::Tensor& b,
    const at::Tensor& xa, double scale, double dropout, int64_t seed, std::array<bool, 4> needs) {
  const int64_t numel = check_nf4_weight(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                         nested_blocksize, weight_shape);
  const int64_t n = weight_shape[0], k = weight_shape[1];
  check_lora_args(x, n, k, bias, a, b, dropout);
  const NF4CpuTensor w(packed, absmax, nested_absmax, nested_code, offset, blocksize, nested_blocksize, numel);
  auto g = backward(grad_out, x, NF4Tiles(w, k), nullptr, n, k, bias, a, b, xa, scale, dropout, seed, needs[0],
                    false, needs[1], needs[2], needs[3]);
  return {g[0], g[2], g[3], g[4]};
}

}  // namespace

TORCH_LIBRARY_IMPL(loraops, CPU, m) {
  m.impl("lora_linear", &lora_linear_cpu);
  m.impl("lora_linear_backward", &lora_linear_backward_cpu);
  m.impl("lora_linear_nf4", &lora_linear_nf4_cpu);
  m.impl("lora_linear_nf4_backward", &lora_linear_nf4_backward_cpu);
}

}  // namespace loraops
