// Argument checks of the s2_attention ops, shared by the backends: after them,
// kernels index q, k, v, out and lse without bounds checks.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "../sizes.h"
#include "s2attn_segments.h"

namespace loraops::s2attn {

struct Problem {
  int64_t batch = 0, seq = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int64_t group = 1;
  Mode mode = Mode::kSegments;
  bool causal = true;
  float scale = 1.0f;
  std::vector<int64_t> lengths;  // valid tokens per sample (right padding beyond)

  int64_t heads_per_kv() const { return kv_heads > 0 ? heads / kv_heads : 1; }
};

inline Mode parse_mode(std::string_view mode) {
  if (mode == "segments") return Mode::kSegments;
  if (mode == "roll") return Mode::kRoll;
  TORCH_CHECK_VALUE(false, "s2_attention: mode must be \"segments\" or \"roll\", got \"", mode, "\"");
}

inline void check_float_4d(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, "s2_attention: ", name, " must be 4-D [batch, seq, heads, head_dim], got shape ",
                    t.sizes());
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, "s2_attention: ", name,
                   " must be float32, bfloat16 or float16, got ", dtype);
}

inline Problem make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t group_size,
                            std::string_view mode, bool causal, const std::optional<at::Tensor>& seqlens,
                            std::optional<double> scale) {
  check_float_4d(q, "q");
  check_float_4d(k, "k");
  check_float_4d(v, "v");
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                   "s2_attention: q, k and v must have one dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
                   v.scalar_type());
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"k", &k}, {"v", &v}})
    TORCH_CHECK(t->device() == q.device(), "s2_attention: ", name, " must be on ", q.device(), " like q, got ",
                t->device());
  TORCH_CHECK_VALUE(k.sizes() == v.sizes(), "s2_attention: k and v must have the same shape, got ", k.sizes(), " and ",
                    v.sizes());
  TORCH_CHECK_VALUE(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3),
                    "s2_attention: k must be [batch, seq, kv_heads, head_dim] with q's batch, seq and head_dim, got q ",
                    q.sizes(), " and k ", k.sizes());
  Problem p;
  p.batch = q.size(0);
  p.seq = q.size(1);
  p.heads = q.size(2);
  p.kv_heads = k.size(2);
  p.head_dim = q.size(3);
  TORCH_CHECK_VALUE(p.head_dim >= 1, "s2_attention: head_dim must be at least 1, got ", p.head_dim);
  TORCH_CHECK_VALUE(p.kv_heads >= 1 ? p.heads % p.kv_heads == 0 : p.heads == 0,
                    "s2_attention: q's heads (", p.heads, ") must be a multiple of k's and v's heads (", p.kv_heads,
                    ")");
  TORCH_CHECK_VALUE(group_size >= 1, "s2_attention: group_size must be at least 1, got ", group_size);
  p.group = group_size;
  p.mode = parse_mode(mode);
  p.causal = causal;
  const double s = scale.has_value() ? *scale : 1.0 / std::sqrt(static_cast<double>(p.head_dim));
  p.scale = static_cast<float>(s);
  // The kernels scale in fp32: finite as a double is not enough.
  TORCH_CHECK_VALUE(std::isfinite(p.scale), "s2_attention: scale must be a finite float32 value, got ", s);
  // Outputs and gradients are allocated with q's and k's shapes, which a
  // stride-0 view can make far larger than its memory.
  checked_numel(q.sizes(), c10::elementSize(q.scalar_type()), "s2_attention", "the output (q's shape)");
  checked_numel(k.sizes(), 4, "s2_attention", "the fp32 gradient of k (k's shape)");
  checked_numel({p.batch, p.heads, p.seq}, 4, "s2_attention", "lse [batch, heads, seq]");
  p.lengths.assign(p.batch, p.seq);
  if (seqlens.has_value()) {
    const at::Tensor& lens = *seqlens;
    TORCH_CHECK_VALUE(lens.dim() == 1 && lens.size(0) == p.batch, "s2_attention: seqlens must be 1-D of size batch (",
                      p.batch, "), got shape ", lens.sizes());
    TORCH_CHECK_TYPE(lens.scalar_type() == at::kInt || lens.scalar_type() == at::kLong,
                     "s2_attention: seqlens must be int32 or int64, got ", lens.scalar_type());
    const at::Tensor host = lens.to(at::kCPU, at::kLong).contiguous();
    const int64_t* values = host.data_ptr<int64_t>();
    for (int64_t b = 0; b < p.batch; ++b) {
      TORCH_CHECK_VALUE(values[b] >= 0 && values[b] <= p.seq, "s2_attention: seqlens[", b, "] = ", values[b],
                        " is outside [0, ", p.seq, "]");
      p.lengths[b] = values[b];
    }
  }
  return p;
}

inline void check_backward_args(const Problem& p, const at::Tensor& q, const at::Tensor& grad_out,
                                const at::Tensor& out, const at::Tensor& lse) {
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"grad_out", &grad_out}, {"out", &out}}) {
    TORCH_CHECK_TYPE(t->scalar_type() == q.scalar_type(), "s2_attention_backward: ", name, " must have q's dtype ",
                     q.scalar_type(), ", got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->sizes() == q.sizes(), "s2_attention_backward: ", name, " must have q's shape ", q.sizes(),
                      ", got ", t->sizes());
  }
  TORCH_CHECK_TYPE(lse.scalar_type() == at::kFloat, "s2_attention_backward: lse must be float32, got ",
                   lse.scalar_type());
  TORCH_CHECK_VALUE(lse.dim() == 3 && lse.size(0) == p.batch && lse.size(1) == p.heads && lse.size(2) == p.seq,
                    "s2_attention_backward: lse must be [batch, heads, seq] = [", p.batch, ", ", p.heads, ", ", p.seq,
                    "], got ", lse.sizes());
}

}  // namespace loraops::s2attn
