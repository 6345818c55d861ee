// nf4_roundtrip: quantize a random weight to NF4 with loraops' C++ API, dequantize
// it back, and check the round-trip error; then run one QLoRA layer forward and
// backward (loraops::lora over the NF4 weight) against plain ATen. Exits nonzero
// on failure.
// Build and run: see README.md.
#include <ATen/ATen.h>
#include <loraops/loraops.h>

#include <algorithm>
#include <cstdio>
#include <exception>

namespace {

constexpr int64_t kBlocksize = 64;

// NF4 rounds each weight to the nearest of 16 codes scaled by its block's absmax;
// the widest gap between codes (-1 to -0.6962) bounds the error by 0.152 * absmax.
// Double quantization stores absmax itself in 8 bits and bf16 output rounds once
// more, which adds a little: allow 0.17 * absmax.
constexpr double kTolerance = 0.17;

// max over elements of |w - w_hat| / absmax(w's block).
double max_error_over_absmax(const at::Tensor& w, const at::Tensor& w_hat) {
  const at::Tensor wf = w.to(at::kFloat).reshape({-1, kBlocksize});
  const at::Tensor err = (wf - w_hat.to(at::kFloat).reshape({-1, kBlocksize})).abs();
  const at::Tensor absmax = wf.abs().amax(/*dim=*/1, /*keepdim=*/true);
  return (err / absmax).max().item<double>();
}

bool roundtrip(at::ScalarType dtype) {
  const at::Tensor w = at::randn({256, 512}).to(dtype);

  const loraops::nf4::NF4Tensor q = loraops::nf4::quantize(w, kBlocksize, /*double_quant=*/true);
  const at::Tensor w_hat = loraops::nf4::dequantize(q);  // back to w's dtype
  const double err = max_error_over_absmax(w, w_hat);

  // dequantize_out writes into a buffer you own (e.g. a reused scratch weight);
  // its dtype picks the output dtype.
  at::Tensor out = at::empty_like(w);
  loraops::nf4::dequantize_out(q, out);
  at::Tensor out_f32 = at::empty(w.sizes(), w.options().dtype(at::kFloat));
  loraops::nf4::dequantize_out(q, out_f32);
  const bool out_ok = at::equal(out, w_hat) && at::equal(out_f32, loraops::nf4::dequantize(q, at::kFloat));

  const bool ok = q.double_quant() && q.packed.numel() == w.numel() / 2 && w_hat.scalar_type() == dtype &&
                  w_hat.sizes() == w.sizes() && err <= kTolerance && out_ok;
  std::printf("%-8s 256x512 blocksize %lld: max |w - w_hat| / absmax = %.4f (tolerance %.2f), dequantize_out %s: %s\n",
              c10::toString(dtype), static_cast<long long>(kBlocksize), err, kTolerance,
              out_ok ? "matches" : "DIFFERS", ok ? "ok" : "FAILED");
  return ok;
}

// Relative max difference, against the largest magnitude of the expected tensor.
double relative_error(const at::Tensor& got, const at::Tensor& want) {
  return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item<double>();
}

bool qlora_step() {
  const at::Tensor w = at::randn({256, 512}) / 16;
  const loraops::nf4::NF4Tensor q = loraops::nf4::quantize(w, kBlocksize, /*double_quant=*/true);
  const at::Tensor x = at::randn({8, 512});
  const at::Tensor a = at::randn({4, 512}) / 16, b = at::randn({256, 4});
  loraops::lora::Options options;
  options.scale = 2.0;  // alpha / r

  const loraops::lora::Forward fwd = loraops::lora::linear(x, q, std::nullopt, a, b, options);
  const at::Tensor grad_out = at::randn({8, 256});
  const loraops::lora::Gradients grads = loraops::lora::linear_backward(
      grad_out, x, q, std::nullopt, a, b, fwd.xa, options, {/*x=*/true, /*bias=*/false, /*A=*/true, /*B=*/true});

  // The same layer in ATen, with the weight dequantized whole.
  const at::Tensor w_hat = loraops::nf4::dequantize(q);
  const at::Tensor want = at::mm(x, w_hat.t()) + options.scale * at::mm(at::mm(x, a.t()), b.t());
  const at::Tensor d_xa = options.scale * at::mm(grad_out, b);
  const double err = std::max({relative_error(fwd.out, want),
                               relative_error(grads.x, at::mm(grad_out, w_hat) + at::mm(d_xa, a)),
                               relative_error(grads.lora_A, at::mm(d_xa.t(), x)),
                               relative_error(grads.lora_B, options.scale * at::mm(grad_out.t(), at::mm(x, a.t())))});
  const bool ok = err < 1e-5 && !grads.weight.defined() && !grads.bias.defined();
  std::printf("qlora 8x512 -> 256, r=4: forward and backward vs ATen, max relative error %.1e: %s\n", err,
              ok ? "ok" : "FAILED");
  return ok;
}

// S2-Attn forward and backward on a small problem, checked against the same
// attention written in ATen (masks from the segment definition).
bool s2_attention_step() {
  const int64_t n = 24, heads = 4, dim = 16, group = 8;
  const at::Tensor q = at::randn({1, n, heads, dim}), k = at::randn({1, n, heads, dim}),
                   v = at::randn({1, n, heads, dim});
  loraops::s2attn::Options options;
  options.group_size = group;
  const loraops::s2attn::Forward fwd = loraops::s2attn::attention(q, k, v, options);
  const at::Tensor grad_out = at::randn({1, n, heads, dim});
  const loraops::s2attn::Gradients grads = loraops::s2attn::attention_backward(grad_out, q, k, v, fwd, options);

  // Segment ids: heads [0, H/2) in groups [0, G), ...; heads [H/2, H) shifted by G/2.
  const at::Tensor pos = at::arange(n);
  at::Tensor expected = at::empty_like(q);
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t shift = h >= heads / 2 ? group / 2 : 0;
    const at::Tensor segment = at::floor_divide(pos - shift + group, group);
    const at::Tensor allowed = segment.unsqueeze(1).eq(segment.unsqueeze(0)) & pos.unsqueeze(1).ge(pos.unsqueeze(0));
    const at::Tensor qh = q.select(2, h).squeeze(0), kh = k.select(2, h).squeeze(0), vh = v.select(2, h).squeeze(0);
    const at::Tensor scores = at::mm(qh, kh.t()) / std::sqrt(static_cast<double>(dim));
    expected.select(2, h).squeeze(0).copy_(at::mm(scores.masked_fill(~allowed, -INFINITY).softmax(-1), vh));
  }
  const double err = relative_error(fwd.out, expected);
  const bool ok = err < 1e-5 && grads.q.sizes() == q.sizes() && grads.k.sizes() == k.sizes() &&
                  grads.v.sizes() == v.sizes() && fwd.lse.sizes() == at::IntArrayRef({1, heads, n});
  std::printf("s2_attention 1x%ldx%ldx%ld, G=%ld: forward vs ATen, max relative error %.1e: %s\n", long(n), long(heads),
              long(dim), long(group), err, ok ? "ok" : "FAILED");
  return ok;
}

}  // namespace

int main() {
  try {
    std::printf("build_info: %s\n", loraops::build_info_json().c_str());
    at::manual_seed(0);
    bool ok = true;
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) ok = roundtrip(dtype) && ok;
    ok = qlora_step() && ok;
    ok = s2_attention_step() && ok;
    std::printf("nf4_roundtrip: %s\n", ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nf4_roundtrip: error: %s\n", e.what());
    return 2;
  }
}
