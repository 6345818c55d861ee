// nf4_roundtrip: quantize a random weight to NF4 with loraops' C++ API, dequantize
// it back, and check the round-trip error. Exits nonzero on failure.
// Build and run: see README.md.
#include <ATen/ATen.h>
#include <loraops/loraops.h>

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

}  // namespace

int main() {
  try {
    std::printf("build_info: %s\n", loraops::build_info_json().c_str());
    at::manual_seed(0);
    bool ok = true;
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) ok = roundtrip(dtype) && ok;
    std::printf("nf4_roundtrip: %s\n", ok ? "OK" : "FAILED");
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nf4_roundtrip: error: %s\n", e.what());
    return 2;
  }
}
