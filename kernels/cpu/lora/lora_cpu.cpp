// CPU kernels of the LoRA ops: out = x W^T + bias + scale * (dropout(x) A^T) B^T.
//
// The low-rank products are fp32 (bf16/fp16 inputs widened). The base GEMMs
// are fp32 too, bf16/fp16 tensors widened tile by tile, except where the CPU
// has native bf16 (cpu::native_bf16_enabled()): there bf16 inputs run them in
// bf16 through torch's oneDNN GEMM (fp32 accumulation, the result rounded to
// bf16), about twice as fast; elsewhere torch emulates bf16 GEMMs, several
// times slower than fp32. The low-rank product is written first and the base
// GEMM accumulates onto it (beta = 1), so the LoRA term never takes a separate
// pass over the output.
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <numeric>
#include <utility>

#include "../buffer_cache.h"
#include "../isa.h"
#include "../nf4/nf4_cpu.h"
#include "csrc/lora/lora_host_flow.h"
#include "dropout.h"

namespace loraops {
namespace {

// Largest tile of a base weight that is not in the GEMMs' dtype in memory already.
constexpr int64_t kTileBytes = int64_t{32} << 20;

using lora_detail::kOp;
using lora_detail::leading_rows;
using lora_detail::out_shape;

// The dtype the base GEMMs run in: bf16 where all their operands are bf16 (an
// NF4 weight dequantizes to either, so it is not among them) and the CPU has
// native bf16 with torch's oneDNN on (without it torch's bf16 GEMM is the slow
// emulated one); else fp32.
at::ScalarType base_gemm_dtype(std::initializer_list<at::ScalarType> operands) {
  const bool bf16 = std::all_of(operands.begin(), operands.end(), [](at::ScalarType t) { return t == at::kBFloat16; }) &&
                    cpu::native_bf16_enabled() && at::hasMKLDNN() && at::globalContext().userEnabledMkldnn();
  return bf16 ? at::kBFloat16 : at::kFloat;
}

// Row tiles of the base weight W [N, K] in the GEMMs' dtype (fp32 or bf16).
class WeightTiles {
 public:
  explicit WeightTiles(at::ScalarType dtype) : dtype_(dtype) {}
  virtual ~WeightTiles() = default;
  at::ScalarType dtype() const { return dtype_; }
  virtual int64_t tile_rows() const = 0;
  // True when rows() returns views of the weight and needs no buffer.
  virtual bool views_weight() const { return false; }
  // Rows [n0, n1) as [n1 - n0, K] of dtype(): a view of W when it is of that
  // dtype, else written into `buffer` (at least tile_rows() * K elements).
  virtual at::Tensor rows(int64_t n0, int64_t n1, at::Tensor& buffer) const = 0;

 protected:
  int64_t rows_in_tile_bytes(int64_t k) const {
    return kTileBytes / std::max<int64_t>(1, c10::elementSize(dtype_) * k);
  }

 private:
  at::ScalarType dtype_;
};

class DenseTiles final : public WeightTiles {
 public:
  DenseTiles(const at::Tensor& w, at::ScalarType dtype) : WeightTiles(dtype), w_(w.contiguous()) {}
  bool views_weight() const override { return w_.scalar_type() == dtype(); }
  int64_t tile_rows() const override {
    if (views_weight()) return std::max<int64_t>(1, w_.size(0));
    return std::max<int64_t>(1, rows_in_tile_bytes(w_.size(1)));
  }
  at::Tensor rows(int64_t n0, int64_t n1, at::Tensor& buffer) const override {
    if (views_weight()) return w_.slice(0, n0, n1);
    at::Tensor tile = buffer.view({-1}).slice(0, 0, (n1 - n0) * w_.size(1)).view({n1 - n0, w_.size(1)});
    return tile.copy_(w_.slice(0, n0, n1));
  }

 private:
  at::Tensor w_;
};

class NF4Tiles final : public WeightTiles {
 public:
  NF4Tiles(const nf4::NF4Tensor& w, at::ScalarType dtype)
      : WeightTiles(dtype), w_(w, w.shape[0] * w.shape[1]), k_(w.shape[1]) {}
  int64_t tile_rows() const override {
    // Tiles start on block boundaries: a multiple of blocksize / gcd(K, blocksize) rows.
    const int64_t unit = w_.blocksize() / std::gcd(std::max<int64_t>(k_, 1), w_.blocksize());
    return std::max(unit, rows_in_tile_bytes(k_) / unit * unit);
  }
  at::Tensor rows(int64_t n0, int64_t n1, at::Tensor& buffer) const override {
    at::Tensor tile = buffer.view({-1}).slice(0, 0, (n1 - n0) * k_).view({n1 - n0, k_});
    const int64_t first = n0 * k_, last = n1 * k_;
    if (last > first)
      w_.dequantize_blocks(first / w_.blocksize(), (last + w_.blocksize() - 1) / w_.blocksize(),
                           tile.mutable_data_ptr(), dtype());
    return tile;
  }

 private:
  NF4CpuTensor w_;
  int64_t k_;
};

// Rows per tile of W [n, k].
int64_t tile_step(const WeightTiles& w, int64_t n) { return std::min(w.tile_rows(), std::max<int64_t>(n, 1)); }

// Calls fn(n0, n1, tile) over row tiles of W, sharing one buffer.
template <typename Fn>
void for_each_tile(const WeightTiles& w, int64_t n, int64_t k, Fn&& fn) {
  const int64_t step = tile_step(w, n);
  at::Tensor buffer;
  if (!w.views_weight())
    buffer = at::empty({step * k}, at::TensorOptions().dtype(w.dtype()));
  for (int64_t n0 = 0; n0 < n; n0 += step) {
    const int64_t n1 = std::min(n, n0 + step);
    fn(n0, n1, w.rows(n0, n1, buffer));
  }
}

at::Tensor as_fp32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// dropout(x) for x [rows, k] fp32 contiguous, into out (may be x itself).
void apply_dropout(const at::Tensor& x, at::Tensor& out, double p, int64_t seed) {
  const uint32_t threshold = dropout::threshold(p);
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
  const int64_t m = leading_rows(x);
  const at::Tensor x2 = x.reshape({m, k});
  at::Tensor x32 = as_fp32(x2);
  const at::Tensor a32 = as_fp32(a), b32 = as_fp32(b);
  const at::Tensor xa = at::mm(dropped(x32, p, seed), a32.t());

  at::Tensor y = cpu::empty_output({m, n}, at::kFloat);
  if (bias.has_value())
    at::addmm_out(y, bias->to(at::kFloat), xa, b32.t(), 1.0, scale);
  else
    y.addmm_(xa, b32.t(), 0.0, scale);  // beta = 0: y's old contents are not read
  if (w.dtype() == at::kBFloat16) {
    // The low-rank term and bias, rounded to bf16, are the GEMM's starting
    // value: oneDNN adds them to its fp32 sums and rounds once more. The fp32
    // copies are freed before the weight tile is made.
    x32.reset();
    at::Tensor out = cpu::empty_output({m, n}, at::kBFloat16).copy_(y);
    y.reset();
    for_each_tile(w, n, k, [&](int64_t n0, int64_t n1, const at::Tensor& tile) {
      at::Tensor out_cols = out.slice(1, n0, n1);
      out_cols.addmm_(x2, tile.t());
    });
    return {out.view(out_shape(x, n)), xa};
  }
  for_each_tile(w, n, k, [&](int64_t n0, int64_t n1, const at::Tensor& tile) {
    at::Tensor y_cols = y.slice(1, n0, n1);
    y_cols.addmm_(x32, tile.t());
  });
  return {y.to(x.scalar_type()).view(out_shape(x, n)), xa};
}

// dx + dy W in bf16 GEMMs, for dx fp32 [m, k] and dy bf16 [m, n]. With W in one
// tile, dx rounded to bf16 is the GEMM's starting value; with several, each
// tile's product is rounded once and summed into dx in fp32, so the error does
// not grow with the number of tiles.
at::Tensor add_base_product_bf16(at::Tensor dx, const at::Tensor& dy, const WeightTiles& w, int64_t n, int64_t k) {
  if (tile_step(w, n) >= n) {
    at::Tensor out = cpu::empty_output(dx.sizes(), at::kBFloat16).copy_(dx);
    dx.reset();  // before the weight tile is made
    for_each_tile(w, n, k, [&](int64_t, int64_t, const at::Tensor& tile) { out.addmm_(dy, tile); });
    return out;
  }
  at::Tensor part = cpu::empty_output(dx.sizes(), at::kBFloat16);
  for_each_tile(w, n, k, [&](int64_t n0, int64_t n1, const at::Tensor& tile) {
    at::mm_out(part, dy.slice(1, n0, n1), tile);
    dx.add_(part);
  });
  return dx.to(at::kBFloat16);
}

lora_detail::Gradients backward(const at::Tensor& grad_out, const at::Tensor& x, const WeightTiles& w,
                                const at::Tensor* dense_weight, int64_t n, int64_t k, const std::optional<at::Tensor>& bias,
                                const at::Tensor& a, const at::Tensor& b, const at::Tensor& xa, double scale, double p,
                                int64_t seed, const lora_detail::Needs& needs) {
  // x itself is only read for dA and dW: with a frozen A (LoRA-FA) and W the
  // caller may pass a stand-in with x's shape and dtype but no data.
  const int64_t m = leading_rows(x);
  const bool bf16 = w.dtype() == at::kBFloat16;  // then grad_out, x (and a dense W) are bf16
  const at::Tensor dy2 = grad_out.reshape({m, n});
  at::Tensor dy = as_fp32(dy2);
  const at::Tensor a32 = as_fp32(a), b32 = as_fp32(b);
  const at::Tensor d_xa = at::mm(dy, b32).mul_(scale);  // [m, r]

  lora_detail::Gradients g;
  if (needs.b) g.b = at::mm(dy.t(), xa).mul_(scale).to(b.scalar_type());
  const bool need_w = needs.weight && dense_weight != nullptr;
  at::Tensor x32 = (needs.a || (need_w && !bf16)) ? as_fp32(x.reshape({m, k})) : at::Tensor();
  if (needs.a) g.a = at::mm(d_xa.t(), dropped(x32, p, seed)).to(a.scalar_type());
  if (needs.bias) g.bias = at::sum(dy, {0}).to(bias->scalar_type());
  if (need_w)
    g.weight = bf16 ? at::mm(dy2.t(), x.reshape({m, k})) : at::mm(dy.t(), x32).to(dense_weight->scalar_type());
  if (needs.x) {
    at::Tensor dx = cpu::empty_output({m, k}, at::kFloat);
    at::mm_out(dx, d_xa, a32);
    if (p > 0.0) apply_dropout(dx, dx, p, seed);  // the same mask: d(x * mask / keep) = dx * mask / keep
    if (bf16) {
      dy.reset();  // the fp32 copies are done with before the weight tile is made
      x32.reset();
      g.x = add_base_product_bf16(std::move(dx), dy2, w, n, k).view(x.sizes());
    } else {
      for_each_tile(w, n, k, [&](int64_t n0, int64_t n1, const at::Tensor& tile) {
        dx.addmm_(dy.slice(1, n0, n1), tile);
      });
      g.x = dx.to(x.scalar_type()).view(x.sizes());
    }
  }
  return g;
}

// The CPU side of the shared entry points (csrc/lora/lora_host_flow.h), which
// have checked every argument.
struct CpuLora {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  struct Guard {
    explicit Guard(c10::Device) {}
  };

  static std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                                    const at::Tensor& b, double scale, double p, int64_t seed) {
    const DenseTiles w(weight, base_gemm_dtype({x.scalar_type(), weight.scalar_type()}));
    return loraops::forward(x, w, weight.size(0), weight.size(1), bias, a, b, scale, p, seed);
  }
  static std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x, const nf4::NF4Tensor& w,
                                                    const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                                    const at::Tensor& b, double scale, double p, int64_t seed) {
    const NF4Tiles tiles(w, base_gemm_dtype({x.scalar_type()}));
    return loraops::forward(x, tiles, w.shape[0], w.shape[1], bias, a, b, scale, p, seed);
  }
  static lora_detail::Gradients backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                         const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                         const at::Tensor& b, const at::Tensor& xa, double scale, double p,
                                         int64_t seed, const lora_detail::Needs& needs) {
    const DenseTiles w(weight, base_gemm_dtype({x.scalar_type(), weight.scalar_type(), grad_out.scalar_type()}));
    return loraops::backward(grad_out, x, w, &weight, weight.size(0), weight.size(1), bias, a, b, xa, scale, p, seed,
                             needs);
  }
  static lora_detail::Gradients backward(const at::Tensor& grad_out, const at::Tensor& x, const nf4::NF4Tensor& w,
                                         const std::optional<at::Tensor>& bias, const at::Tensor& a,
                                         const at::Tensor& b, const at::Tensor& xa, double scale, double p,
                                         int64_t seed, const lora_detail::Needs& needs) {
    const NF4Tiles tiles(w, base_gemm_dtype({x.scalar_type(), grad_out.scalar_type()}));
    return loraops::backward(grad_out, x, tiles, nullptr, w.shape[0], w.shape[1], bias, a, b, xa, scale, p, seed,
                             needs);
  }
};

using CpuLoraOps = lora_detail::LoraOpEntries<CpuLora>;

}  // namespace

TORCH_LIBRARY_IMPL(loraops, CPU, m) {
  m.impl("lora_linear", &CpuLoraOps::lora_linear);
  m.impl("lora_linear_backward", &CpuLoraOps::lora_linear_backward);
  m.impl("lora_linear_nf4", &CpuLoraOps::lora_linear_nf4);
  m.impl("lora_linear_nf4_backward", &CpuLoraOps::lora_linear_nf4_backward);
}

}  // namespace loraops
