// Argument checks, shape helpers and the dispatch guard of the LoRA ops,
// shared by the backends; each passes the device its kernels need.
#pragma once

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>

#include <c10/util/accumulate.h>

#include <cmath>
#include <optional>
#include <vector>

#include "../sizes.h"

namespace loraops::lora_detail {

inline constexpr const char* kOp = "lora_linear";

// What a LoRA kernel runs under: below autograd (the op has its own) and
// outside autocast, so that the ATen GEMMs it calls keep its inputs' dtypes
// (the Python API casts for autocast before the op).
struct KernelDispatchGuard {
  at::AutoDispatchBelowAutograd below_autograd;
  c10::impl::ExcludeDispatchKeyGuard no_autocast{c10::autocast_dispatch_keyset};
};

inline void check_float(const at::Tensor& t, const char* name, c10::DeviceType device) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 ||
                       t.scalar_type() == at::kHalf,
                   kOp, ": ", name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  TORCH_CHECK(t.device().type() == device, kOp, ": ", name, " must be a ", c10::DeviceTypeName(device),
              " tensor for this kernel, got ", t.device());
}

// Rows of x flattened to [rows, in] (counted from the shape, so in = 0 works too).
inline int64_t leading_rows(const at::Tensor& x) {
  return c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
}

// Kernels read every operand through raw pointers: all on x's device.
inline void check_on_device_of_x(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.device() == x.device(), kOp, ": ", name, " must be on ", x.device(), " like x, got ", t.device());
}

// Validates everything but the base weight [n, k]; returns the rank.
inline int64_t check_lora_args(const at::Tensor& x, int64_t n, int64_t k, const std::optional<at::Tensor>& bias,
                               const at::Tensor& a, const at::Tensor& b, double scale, double dropout,
                               c10::DeviceType device) {
  check_float(x, "x", device);
  check_float(a, "lora_A", device);
  check_float(b, "lora_B", device);
  check_on_device_of_x(a, "lora_A", x);
  check_on_device_of_x(b, "lora_B", x);
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) == k, kOp, ": x must have in_features = ", k,
                    " as its last dimension, got shape ", x.sizes());
  TORCH_CHECK_VALUE(a.dim() == 2 && a.size(1) == k, kOp, ": lora_A must be [r, ", k, "], got ", a.sizes());
  const int64_t r = a.size(0);
  TORCH_CHECK_VALUE(b.dim() == 2 && b.size(0) == n && b.size(1) == r, kOp, ": lora_B must be [", n, ", ", r,
                    "] to match the weight and lora_A, got ", b.sizes());
  if (bias.has_value()) {
    check_float(*bias, "bias", device);
    check_on_device_of_x(*bias, "bias", x);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n, kOp, ": bias must be [", n, "], got ",
                      bias->sizes());
  }
  // The scale multiplies fp32 values: finite as a double is not enough.
  TORCH_CHECK_VALUE(std::isfinite(static_cast<float>(scale)), kOp, ": scale must be a finite float32 value, got ",
                    scale);
  TORCH_CHECK_VALUE(dropout >= 0.0 && dropout < 1.0, kOp, ": dropout must be in [0, 1), got ", dropout);
  // Every [rows, *] intermediate is at most fp32; x may be a stride-0 view far
  // larger than its memory, so these are counted, not taken from tensors.
  const int64_t rows = checked_numel(x.sizes().slice(0, x.dim() - 1), 1, kOp, "x's leading dimensions");
  checked_numel({rows, k}, 4, kOp, "x as fp32 [rows, in_features]");
  checked_numel({rows, n}, 4, kOp, "the output [rows, out_features]");
  checked_numel({rows, r}, 4, kOp, "xa [rows, r]");
  checked_numel({n, k}, 4, kOp, "the weight as fp32 [out_features, in_features]");
  return r;
}

inline void check_dense_weight(const at::Tensor& weight, c10::DeviceType device) {
  check_float(weight, "weight", device);
  TORCH_CHECK_VALUE(weight.dim() == 2, kOp, ": weight must be 2-D [out_features, in_features], got ",
                    weight.sizes());
}

// The backward's grad_out and saved xa, for x [..., k] (checked) and n outputs, rank r.
inline void check_backward_args(const at::Tensor& grad_out, const at::Tensor& xa, const at::Tensor& x, int64_t n,
                                int64_t r, c10::DeviceType device) {
  const char* op = "lora_linear_backward";
  check_float(grad_out, "grad_out", device);
  check_on_device_of_x(grad_out, "grad_out", x);
  check_on_device_of_x(xa, "xa", x);
  const int64_t m = leading_rows(x);
  TORCH_CHECK_VALUE(grad_out.dim() >= 1 && grad_out.size(-1) == n && grad_out.numel() == m * n, op,
                    ": grad_out must be [..., ", n, "] with the ", m, " rows of x, got ", grad_out.sizes());
  TORCH_CHECK_TYPE(xa.scalar_type() == at::kFloat, op, ": xa must be float32, got ", xa.scalar_type());
  TORCH_CHECK_VALUE(xa.dim() == 2 && xa.size(0) == m && xa.size(1) == r, op, ": xa must be [", m, ", ", r,
                    "], got ", xa.sizes());
}

inline void check_weight_shape(at::IntArrayRef weight_shape) {
  TORCH_CHECK_VALUE(weight_shape.size() == 2 && weight_shape[0] >= 0 && weight_shape[1] >= 0, kOp,
                    ": weight_shape must be [out_features, in_features], got ", weight_shape);
}

// x's shape with the last dimension replaced by the n outputs.
inline std::vector<int64_t> out_shape(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  return shape;
}

}  // namespace loraops::lora_detail
