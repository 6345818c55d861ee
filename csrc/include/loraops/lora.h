// loraops C++ API: the fused LoRA matmul-plus-add,
//   out = x W^T + bias + scale * (dropout(x) A^T) B^T,
// forward and backward, for C++ trainers that run their own autograd.
#pragma once

#include <array>
#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>

#include <loraops/nf4.h>

namespace loraops::lora {

struct Forward {
  at::Tensor out;  // [..., out_features], x's dtype
  at::Tensor xa;   // dropout(x) A^T, fp32 [rows, r]: pass it to backward
};

// Gradients; undefined where not asked for.
struct Gradients {
  at::Tensor x, weight, bias, lora_A, lora_B;
};

struct Options {
  double scale = 1.0;
  double dropout = 0.0;  // in [0, 1)
  int64_t seed = 0;      // the dropout mask's seed; the backward must get the same one
};

Forward linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
               const at::Tensor& lora_A, const at::Tensor& lora_B, const Options& options);

// needs: gradients wanted for (x, weight, bias, lora_A, lora_B).
Gradients linear_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& lora_A, const at::Tensor& lora_B,
                          const at::Tensor& xa, const Options& options, std::array<bool, 5> needs);

// The same over an NF4 base weight (2-D), dequantized tile by tile inside the op.
Forward linear(const at::Tensor& x, const nf4::NF4Tensor& weight, const std::optional<at::Tensor>& bias,
               const at::Tensor& lora_A, const at::Tensor& lora_B, const Options& options);

// needs: gradients wanted for (x, bias, lora_A, lora_B); `weight` of the result stays undefined.
Gradients linear_backward(const at::Tensor& grad_out, const at::Tensor& x, const nf4::NF4Tensor& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& lora_A, const at::Tensor& lora_B,
                          const at::Tensor& xa, const Options& options, std::array<bool, 4> needs);

}  // namespace loraops::lora
