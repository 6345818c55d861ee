// The S2-Attn forward's and backward's host side over a Launcher (the NPU's in s2attn_npu.cpp,
// the emulation's in sim/sim_launcher.h): the shared checks, the outputs, the
// plan of work items, one MIX launch.
//
// The plan comes from the segment plan every backend shares
// (csrc/s2attn/s2attn_segments.h): per (sample, head), each segment cut into
// blocks of kS2BlockQ query rows; items sorted largest first (a causal block
// costs its rows times the keys up to its diagonal) and dealt to the least
// loaded AI core. q, k, v are read where they are; the cube loads rows of
// unit stride along head_dim and a row stride along N of at most 65535
// elements (Nd2Nz's 16-bit source stride), so a tensor outside that is made
// contiguous first (none of the layouts attention modules pass is).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <numeric>
#include <optional>
#include <string_view>
#include <tuple>
#include <vector>

#include "csrc/s2attn/s2attn_checks.h"
#include "s2attn_tiling.h"

namespace loraops::ascend {

// The cube's GM loads take rows of unit stride, at most 65535 elements apart.
inline bool s2_cube_loadable(const at::Tensor& t) {
  const int64_t d = t.size(3);
  const int64_t sn = t.size(1) > 1 ? t.stride(1) : d;
  return (d == 1 || t.stride(3) == 1) && sn >= d && sn <= 65535;
}

inline at::Tensor s2_cube_operand(const at::Tensor& t, const char* name) {
  if (s2_cube_loadable(t)) return t;
  at::Tensor c = t.contiguous();
  TORCH_CHECK_VALUE(s2_cube_loadable(c), "s2_attention on Ascend: ", name, "'s rows are ", c.stride(1),
                    " elements apart; the cube loads rows at most 65535 apart");
  return c;
}

// Strides along B, N, H, with N's normalised where N is 1 (it is then only a
// load's leading dimension).
inline void s2_put_strides(std::vector<int64_t>& plan, uint32_t at, const at::Tensor& t) {
  plan[at] = t.stride(0);
  plan[at + 1] = t.size(1) > 1 ? t.stride(1) : t.size(3);
  plan[at + 2] = t.stride(2);
}

struct S2PlanItem {
  int64_t fields[kS2ItemFields];
  double cost;
};

// The plan tensor (on the host) for `cores` AI cores; block_dim gets the cores used (0: no work).
// grad_out is the backward's (the forward passes out).
inline at::Tensor s2_plan(const s2attn::Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& out, const at::Tensor& grad_out, uint32_t cores, uint32_t& block_dim) {
  std::vector<S2PlanItem> items;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t n = p.lengths[b];
    for (int64_t h = 0; h < p.heads; ++h) {
      s2attn::for_each_segment(p.mode, s2attn::is_shifted_head(h, p.heads), n, p.group, [&](const s2attn::Segment& seg) {
        for (int64_t row0 = 0; row0 < seg.length; row0 += kS2BlockQ) {
          const int64_t rows = std::min<int64_t>(kS2BlockQ, seg.length - row0);
          const int64_t keys = p.causal ? row0 + rows : seg.length;
          items.push_back(S2PlanItem{{b, h, seg.start, seg.length, row0, n},
                                     static_cast<double>(rows) * static_cast<double>(keys) + rows});
        }
      });
    }
  }
  block_dim = static_cast<uint32_t>(std::min<size_t>(cores, items.size()));
  if (block_dim == 0) return at::Tensor();
  std::stable_sort(items.begin(), items.end(), [](const S2PlanItem& x, const S2PlanItem& y) { return x.cost > y.cost; });
  // Largest first to the least loaded core.
  std::vector<double> load(block_dim, 0.0);
  std::vector<std::vector<size_t>> per_core(block_dim);
  for (size_t i = 0; i < items.size(); ++i) {
    const size_t c = std::min_element(load.begin(), load.end()) - load.begin();
    load[c] += items[i].cost;
    per_core[c].push_back(i);
  }
  const size_t first_item = kS2Header + block_dim + 1;
  std::vector<int64_t> plan(first_item + items.size() * kS2ItemFields, 0);
  plan[kS2Cores] = block_dim;
  plan[kS2HeadDim] = p.head_dim;
  plan[kS2Heads] = p.heads;
  plan[kS2HeadsPerKv] = p.heads_per_kv();
  plan[kS2Causal] = p.causal ? 1 : 0;
  plan[kS2Seq] = p.seq;
  s2_put_strides(plan, kS2QStrideB, q);
  s2_put_strides(plan, kS2KStrideB, k);
  s2_put_strides(plan, kS2VStrideB, v);
  s2_put_strides(plan, kS2OStrideB, out);
  s2_put_strides(plan, kS2GStrideB, grad_out);
  plan[kS2KvHeads] = p.kv_heads;
  size_t next = 0;
  for (uint32_t c = 0; c < block_dim; ++c) {
    plan[kS2Header + c] = static_cast<int64_t>(next);
    for (size_t i : per_core[c]) {
      std::copy_n(items[i].fields, kS2ItemFields, plan.begin() + first_item + next * kS2ItemFields);
      ++next;
    }
  }
  plan[kS2Header + block_dim] = static_cast<int64_t>(next);
  at::Tensor t = at::empty({static_cast<int64_t>(plan.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(plan.begin(), plan.end(), t.data_ptr<int64_t>());
  return t;
}

template <class Launcher>
struct AscendS2AttnOps {
  // The forward: out [B, N, H, D] in q's dtype (contiguous), lse [B, H, N] fp32.
  // Padded rows: out 0 and lse 0, as the CPU op writes them.
  static std::tuple<at::Tensor, at::Tensor> s2_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                         int64_t group_size, c10::string_view mode, bool causal,
                                                         const std::optional<at::Tensor>& seqlens,
                                                         std::optional<double> scale) {
    const s2attn::Problem p = s2attn::make_problem(q, k, v, group_size, std::string_view(mode.data(), mode.size()),
                                                   causal, seqlens, scale);
    TORCH_CHECK_VALUE(p.head_dim <= kS2MaxHeadDim, "s2_attention on Ascend: head_dim must be at most ", kS2MaxHeadDim,
                      ", got ", p.head_dim);
    const typename Launcher::Guard guard(q.device());
    at::Tensor out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
    at::Tensor lse = at::zeros({p.batch, p.heads, p.seq}, q.options().dtype(at::kFloat));
    for (int64_t b = 0; b < p.batch; ++b) {
      if (p.lengths[b] < p.seq) out.select(0, b).narrow(0, p.lengths[b], p.seq - p.lengths[b]).zero_();
    }
    if (out.numel() == 0) return {out, lse};
    const at::Tensor qc = s2_cube_operand(q, "q"), kc = s2_cube_operand(k, "k"), vc = s2_cube_operand(v, "v");
    uint32_t block_dim = 0;
    const at::Tensor plan_host = s2_plan(p, qc, kc, vc, out, out, Launcher::cube_cores(q), block_dim);
    if (block_dim == 0) return {out, lse};
    const at::Tensor plan = plan_host.to(q.device());
    const at::Tensor workspace = at::zeros(
        {static_cast<int64_t>(block_dim * s2_workspace_floats(static_cast<uint32_t>(p.head_dim)))},
        q.options().dtype(at::kFloat));
    Launcher::s2attn_forward(block_dim, qc, kc, vc, out, lse, plan, workspace, p.scale);
    return {out, lse};
  }

  // The backward: dq, dk, dv in the inputs' dtype (a gradient keeps its input's
  // layout where that is dense, as the CPU op's). The kernel adds into fp32
  // accumulators [B, N, H(kv), padded D], zeroed, so padded rows stay exactly
  // zero; they are cast into the gradients at the end.
  static std::tuple<at::Tensor, at::Tensor, at::Tensor> s2_attention_backward(
      const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
      const at::Tensor& out, const at::Tensor& lse, int64_t group_size, c10::string_view mode, bool causal,
      const std::optional<at::Tensor>& seqlens, std::optional<double> scale) {
    const s2attn::Problem p = s2attn::make_problem(q, k, v, group_size, std::string_view(mode.data(), mode.size()),
                                                   causal, seqlens, scale);
    s2attn::check_backward_args(p, q, grad_out, out, lse);
    TORCH_CHECK_VALUE(p.head_dim <= kS2MaxHeadDim, "s2_attention on Ascend: head_dim must be at most ", kS2MaxHeadDim,
                      ", got ", p.head_dim);
    const typename Launcher::Guard guard(q.device());
    const int64_t dp = s2_padded_dim(static_cast<uint32_t>(p.head_dim));
    const auto f32 = q.options().dtype(at::kFloat);
    at::Tensor dq32 = at::zeros({p.batch, p.seq, p.heads, dp}, f32);
    at::Tensor dk32 = at::zeros({p.batch, p.seq, p.kv_heads, dp}, f32);
    at::Tensor dv32 = at::zeros({p.batch, p.seq, p.kv_heads, dp}, f32);
    if (q.numel() > 0 && k.numel() > 0) {
      const at::Tensor qc = s2_cube_operand(q, "q"), kc = s2_cube_operand(k, "k"), vc = s2_cube_operand(v, "v");
      const at::Tensor gc = s2_cube_operand(grad_out, "grad_out"), oc = s2_cube_operand(out, "out");
      uint32_t block_dim = 0;
      const at::Tensor plan_host = s2_plan(p, qc, kc, vc, oc, gc, Launcher::cube_cores(q), block_dim);
      if (block_dim > 0) {
        const at::Tensor plan = plan_host.to(q.device());
        const at::Tensor workspace =
            at::zeros({static_cast<int64_t>(block_dim * s2_backward_workspace_floats())}, f32);
        const at::Tensor lse_c = lse.contiguous();
        Launcher::s2attn_backward(block_dim, gc, qc, kc, vc, oc, lse_c, dq32, dk32, dv32, plan, workspace, p.scale);
      }
    }
    auto cast = [&](const at::Tensor& acc, const at::Tensor& like) {
      at::Tensor g = like.is_non_overlapping_and_dense() ? at::empty_like(like)
                                                         : at::empty(like.sizes(), like.options());
      g.copy_(acc.narrow(3, 0, p.head_dim));
      return g;
    };
    return {cast(dq32, q), cast(dk32, k), cast(dv32, v)};
  }
};

}  // namespace loraops::ascend
