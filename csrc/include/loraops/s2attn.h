// loraops C++ API: shifted short attention (LongLoRA's S2-Attn), forward and
// backward, for C++ trainers that run their own autograd.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <ATen/core/Tensor.h>

namespace loraops::s2attn {

struct Options {
  int64_t group_size = 1;
  // "segments": shifted heads attend within [0, G/2), [G/2, 3G/2), ... (no
  // wrap-around); "roll": LongLoRA's eager path (roll by -G/2, group, roll back).
  std::string mode = "segments";
  bool causal = true;
  std::optional<at::Tensor> seqlens;  // [B] int32/int64 right-padded lengths
  std::optional<double> scale;        // default 1/sqrt(head_dim)
};

struct Forward {
  at::Tensor out;  // [B, N, H, D], q's dtype
  at::Tensor lse;  // log-sum-exp, fp32 [B, H, N]: pass it to backward
};

struct Gradients {
  at::Tensor q, k, v;
};

// q [B, N, H, D], k and v [B, N, Hkv, D] (H a multiple of Hkv), any strides.
Forward attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Options& options);

Gradients attention_backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& v, const Forward& forward, const Options& options);

}  // namespace loraops::s2attn
