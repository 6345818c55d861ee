#include "nf4_dynamic_code.h"

#include <cmath>
#include <vector>

#include <ATen/ops/add.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/div.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/linspace.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/tensor.h>

namespace loraops {

namespace {

// The map of "8-Bit Approximations for Parallelism in Deep Learning" (Dettmers,
// 2016), signed, 7 exponent bits: for each exponent i, the means of 2^i + 1
// linearly spaced fractions in [0.1, 1], scaled by 10^(i - 6), both signs; then 0 and 1.
at::Tensor build_dynamic_code() {
  constexpr int kExponentBits = 7;
  std::vector<at::Tensor> parts;
  for (int i = 0; i < kExponentBits; ++i) {
    const int64_t fraction_items = (int64_t{1} << i) + 1;
    const at::Tensor boundaries = at::linspace(0.1, 1.0, fraction_items, at::TensorOptions().dtype(at::kFloat));
    const at::Tensor means = at::div(at::add(boundaries.slice(0, 0, -1), boundaries.slice(0, 1)), 2.0);
    const double scale = std::pow(10.0, -(kExponentBits - 1) + i);
    parts.push_back(at::mul(means, scale));
    parts.push_back(at::mul(means, -scale));
  }
  parts.push_back(at::tensor({0.0f, 1.0f}, at::TensorOptions().dtype(at::kFloat)));
  return std::get<0>(at::sort(at::cat(parts)));
}

}  // namespace

const at::Tensor& dynamic_code_cpu() {
  static const at::Tensor code = build_dynamic_code();
  return code;
}

}  // namespace loraops
