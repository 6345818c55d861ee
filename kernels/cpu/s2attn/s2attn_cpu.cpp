// CPU kernels of shifted short attention, forward and backward.
//
// Flash-attention style: per (sample, head, segment), queries in blocks of
// kBlockQ against keys in blocks of kBlockK, online softmax in fp32, the
// log-sum-exp saved for the backward, which recomputes the scores. Rows are
// gathered by position (the shift and the roll are index arithmetic), widened
// to fp32 into per-thread tiles and multiplied with torch's small-GEMM kernel
// (cpublas::brgemm). Memory is the outputs plus tiles of O(group x head_dim)
// per thread: nothing of size seq x group is ever kept.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../buffer_cache.h"
#include "attention_rows.h"
#include "csrc/s2attn/s2attn_checks.h"

namespace loraops {
namespace {

using s2attn::Problem;
using s2attn::Segment;
using s2attn::segment_position;

constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 128;

// Element access to a [B, N, H, D] tensor of any strides.
template <typename T>
struct Rows {
  T* data;
  int64_t sb, sn, sh, sd;
  T* row(int64_t b, int64_t pos, int64_t h) const { return data + b * sb + pos * sn + h * sh; }
};

template <typename T>
Rows<T> rows_of(const at::Tensor& t) {
  return Rows<T>{static_cast<T*>(t.data_ptr()), t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// C[M, N] (+)= A[M, K] B[K, N], all row-major fp32.
inline void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                 int64_t ldc, bool accumulate) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, /*is_vnni=*/false);
}

// dst[r * ld + d] = mult * x[row t0 + r of the segment][d], widened to fp32.
// Rows of one head sit a whole token apart ([B, N, H, D]): each is its own page
// for the hardware prefetcher, so the rows ahead are prefetched by hand.
template <typename T>
void gather_rows(const Rows<const T>& x, int64_t b, int64_t h, const Segment& seg, int64_t n, int64_t t0,
                 int64_t rows, int64_t dim, float mult, float* dst, int64_t ld) {
  constexpr int64_t kAhead = 16;
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t r = 0; r < rows; ++r) {
    if (r + kAhead < rows && x.sd == 1) {
      const T* ahead = x.row(b, segment_position(seg, t0 + r + kAhead, n), h);
      for (int64_t d = 0; d < dim; d += kLine) __builtin_prefetch(ahead + d, 0, 2);
    }
    const T* src = x.row(b, segment_position(seg, t0 + r, n), h);
    float* out = dst + r * ld;
    if (x.sd == 1) {
      for (int64_t d = 0; d < dim; ++d) out[d] = static_cast<float>(src[d]) * mult;
    } else {
      for (int64_t d = 0; d < dim; ++d) out[d] = static_cast<float>(src[d * x.sd]) * mult;
    }
  }
}

// K^T of a whole segment in blocks of kBlockK keys, block kb at kt + kb * dim *
// kBlockK as [dim, kBlockK]: a short leading dimension keeps the GEMM's B operand
// clear of 4 KiB cache aliasing. k is [len, dim].
void transpose_key_blocks(const float* k, int64_t len, int64_t dim, float* kt) {
  for (int64_t k0 = 0; k0 < len; k0 += kBlockK)
    cpu::transpose_tile(k + k0 * dim, dim, kt + k0 * dim, kBlockK, std::min(kBlockK, len - k0), dim);
}

// x[b, pos, h, :] = mult * src (or += when accumulate).
template <typename T>
void store_row(const Rows<T>& x, int64_t b, int64_t pos, int64_t h, const float* src, int64_t dim, float mult,
               bool accumulate = false) {
  T* out = x.row(b, pos, h);
  if (!accumulate && x.sd == 1) {
    for (int64_t d = 0; d < dim; ++d) out[d] = static_cast<T>(src[d] * mult);
    return;
  }
  for (int64_t d = 0; d < dim; ++d) {
    const float value = src[d] * mult;
    T& slot = out[d * x.sd];
    slot = static_cast<T>(accumulate ? static_cast<float>(slot) + value : value);
  }
}

template <typename T>
void zero_row(const Rows<T>& x, int64_t b, int64_t pos, int64_t h, int64_t dim) {
  T* out = x.row(b, pos, h);
  for (int64_t d = 0; d < dim; ++d) out[d * x.sd] = static_cast<T>(0.0f);
}

// One unit of parallel work: a segment of sample b for a query head (forward)
// or for the query heads of one class sharing kv head `head` (backward).
struct Task {
  int64_t b;
  int64_t head;
  int shifted;
  Segment seg;
  double cost;  // a segment's length squared overflows int64 beyond 2^31.5 tokens
};

// Runs every task once across torch's threads, largest first, each thread
// taking the next task when done (segments differ in length).
template <typename Scratch, typename Fn>
void run_tasks(std::vector<Task>& tasks, const Fn& fn) {
  if (tasks.empty()) return;
  std::stable_sort(tasks.begin(), tasks.end(), [](const Task& x, const Task& y) { return x.cost > y.cost; });
  std::atomic<size_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(tasks.size()));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    Scratch scratch;
    for (size_t t = next.fetch_add(1); t < tasks.size(); t = next.fetch_add(1)) fn(tasks[t], scratch);
    at::native::cpublas::brgemm_release(/*is_vnni=*/false);
  });
}

// K of a segment ([len, dim] into k_rows), its transposed key blocks (kt) and
// V ([len, dim] into v_rows). k_rows may be v_rows: K is transposed before V
// is loaded.
template <typename T>
void load_segment_kv(const Rows<const T>& k, const Rows<const T>& v, int64_t b, int64_t hk, const Segment& seg,
                     int64_t n, int64_t dim, float* k_rows, float* kt, float* v_rows) {
  gather_rows(k, b, hk, seg, n, 0, seg.length, dim, 1.0f, k_rows, dim);
  transpose_key_blocks(k_rows, seg.length, dim, kt);
  gather_rows(v, b, hk, seg, n, 0, seg.length, dim, 1.0f, v_rows, dim);
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

double segment_cost(const Segment& seg, bool causal) {
  const double len = static_cast<double>(seg.length);
  return len * len / (causal ? 2 : 1) + len;
}

// ----------------------------------------------------------------------------- forward
struct ForwardScratch {
  std::vector<float> kt, v, q, s, o, m, l;
};

template <typename T>
void forward_segment(const Problem& p, const Rows<const T>& q, const Rows<const T>& k, const Rows<const T>& v,
                     const Rows<T>& out, float* lse, const Task& task, ForwardScratch& w) {
  const int64_t b = task.b, h = task.head, n = p.lengths[b], dim = p.head_dim, len = task.seg.length;
  const int64_t hk = h / p.heads_per_kv();
  const Segment& seg = task.seg;
  w.kt.resize(dim * round_up(len, kBlockK));
  w.v.resize(len * dim);
  w.q.resize(kBlockQ * dim);
  w.s.resize(kBlockQ * kBlockK);
  w.o.resize(kBlockQ * dim);
  w.m.resize(kBlockQ);
  w.l.resize(kBlockQ);
  // K^T and V of the whole segment, reused by every query block.
  load_segment_kv(k, v, b, hk, seg, n, dim, w.v.data(), w.kt.data(), w.v.data());
  float* lse_head = lse + (b * p.heads + h) * p.seq;

  for (int64_t q0 = 0; q0 < len; q0 += kBlockQ) {
    const int64_t mq = std::min(kBlockQ, len - q0);
    gather_rows(q, b, h, seg, n, q0, mq, dim, p.scale, w.q.data(), dim);
    std::fill_n(w.m.data(), mq, -std::numeric_limits<float>::infinity());
    std::fill_n(w.l.data(), mq, 0.0f);
    std::fill_n(w.o.data(), mq * dim, 0.0f);
    const int64_t kend = p.causal ? q0 + mq : len;
    for (int64_t k0 = 0; k0 < kend; k0 += kBlockK) {
      const int64_t nk = std::min(kBlockK, kend - k0);
      gemm(mq, nk, dim, w.q.data(), dim, w.kt.data() + k0 * dim, kBlockK, w.s.data(), kBlockK, false);
      cpu::online_softmax_tile(w.s.data(), kBlockK, mq, nk, p.causal ? q0 - k0 + 1 : nk, w.m.data(), w.l.data(),
                               w.o.data(), dim, dim);
      gemm(mq, dim, nk, w.s.data(), kBlockK, w.v.data() + k0 * dim, dim, w.o.data(), dim, true);
    }
    for (int64_t i = 0; i < mq; ++i) {
      const int64_t pos = segment_position(seg, q0 + i, n);
      store_row(out, b, pos, h, w.o.data() + i * dim, dim, 1.0f / w.l[i]);
      lse_head[pos] = w.m[i] + std::log(w.l[i]);
    }
  }
}

template <typename T>
void forward_impl(const Problem& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                  at::Tensor& lse) {
  const Rows<const T> qr = rows_of<const T>(q), kr = rows_of<const T>(k), vr = rows_of<const T>(v);
  const Rows<T> outr = rows_of<T>(out);
  float* lse_data = lse.data_ptr<float>();
  std::vector<Task> tasks;
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t h = 0; h < p.heads; ++h) {
      const bool shifted = s2attn::is_shifted_head(h, p.heads);
      s2attn::for_each_segment(p.mode, shifted, p.lengths[b], p.group, [&](const Segment& seg) {
        tasks.push_back(Task{b, h, shifted, seg, segment_cost(seg, p.causal)});
      });
      // Padded queries: zero output (and a zero log-sum-exp nobody reads).
      for (int64_t pos = p.lengths[b]; pos < p.seq; ++pos) {
        zero_row(outr, b, pos, h, p.head_dim);
        lse_data[(b * p.heads + h) * p.seq + pos] = 0.0f;
      }
    }
  }
  run_tasks<ForwardScratch>(tasks, [&](const Task& task, ForwardScratch& scratch) {
    forward_segment<T>(p, qr, kr, vr, outr, lse_data, task, scratch);
  });
}

// ----------------------------------------------------------------------------- backward
struct BackwardScratch {
  std::vector<float> k, kt, v, dk, dv, q, qt, dout, doutt, o, st, dpt, dqt, lse, di;
};

// Where the backward writes dK and dV: straight into the gradients, or into
// fp32 accumulators when two passes add into the same rows in half precision.
template <typename T>
struct KvSink {
  Rows<T> dk, dv;
};

// Per query block and key block, with keys as rows (S^T = K Q^T) so that the
// softmax runs along rows: P^T, dP^T = V dO^T, dV += P^T dO, dS^T, dK += dS^T Q
// and dQ^T += K^T dS^T: five GEMMs and no transpose of a score tile.
template <typename T, typename KvT>
void backward_segment(const Problem& p, const Rows<const T>& q, const Rows<const T>& k, const Rows<const T>& v,
                      const Rows<const T>& out, const Rows<const T>& grad_out, const float* lse, const Rows<T>& dq,
                      const KvSink<KvT>& sink, bool accumulate_kv, const Task& task, BackwardScratch& w) {
  const int64_t b = task.b, g = task.head, n = p.lengths[b], dim = p.head_dim, len = task.seg.length;
  const Segment& seg = task.seg;
  w.k.resize(len * dim);
  w.kt.resize(dim * round_up(len, kBlockK));
  w.v.resize(len * dim);
  w.dk.assign(len * dim, 0.0f);
  w.dv.assign(len * dim, 0.0f);
  w.q.resize(kBlockQ * dim);
  w.qt.resize(dim * kBlockQ);
  w.dout.resize(kBlockQ * dim);
  w.doutt.resize(dim * kBlockQ);
  w.o.resize(kBlockQ * dim);
  w.st.resize(kBlockK * kBlockQ);
  w.dpt.resize(kBlockK * kBlockQ);
  w.dqt.resize(dim * kBlockQ);
  w.lse.resize(kBlockQ);
  w.di.resize(kBlockQ);
  load_segment_kv(k, v, b, g, seg, n, dim, w.k.data(), w.kt.data(), w.v.data());

  const int64_t per_kv = p.heads_per_kv();
  for (int64_t h = g * per_kv; h < (g + 1) * per_kv; ++h) {
    if (static_cast<int>(s2attn::is_shifted_head(h, p.heads)) != task.shifted) continue;
    const float* lse_head = lse + (b * p.heads + h) * p.seq;
    for (int64_t q0 = 0; q0 < len; q0 += kBlockQ) {
      const int64_t mq = std::min(kBlockQ, len - q0);
      // Scores are (scale q) k^T: with q scaled on load, dK = dS^T (scale q).
      gather_rows(q, b, h, seg, n, q0, mq, dim, p.scale, w.q.data(), dim);
      cpu::transpose_tile(w.q.data(), dim, w.qt.data(), kBlockQ, mq, dim);
      gather_rows(grad_out, b, h, seg, n, q0, mq, dim, 1.0f, w.dout.data(), dim);
      cpu::transpose_tile(w.dout.data(), dim, w.doutt.data(), kBlockQ, mq, dim);
      gather_rows(out, b, h, seg, n, q0, mq, dim, 1.0f, w.o.data(), dim);
      for (int64_t i = 0; i < mq; ++i) {
        w.lse[i] = lse_head[segment_position(seg, q0 + i, n)];
        w.di[i] = cpu::dot_row(w.dout.data() + i * dim, w.o.data() + i * dim, dim);
      }
      std::fill_n(w.dqt.data(), dim * kBlockQ, 0.0f);
      const int64_t kend = p.causal ? q0 + mq : len;
      for (int64_t k0 = 0; k0 < kend; k0 += kBlockK) {
        const int64_t nk = std::min(kBlockK, kend - k0);
        gemm(nk, mq, dim, w.k.data() + k0 * dim, dim, w.qt.data(), kBlockQ, w.st.data(), kBlockQ, false);
        cpu::exp_tile_by_column(w.st.data(), kBlockQ, nk, mq, p.causal ? k0 - q0 : -nk, w.lse.data());
        gemm(nk, mq, dim, w.v.data() + k0 * dim, dim, w.doutt.data(), kBlockQ, w.dpt.data(), kBlockQ, false);
        gemm(nk, dim, mq, w.st.data(), kBlockQ, w.dout.data(), dim, w.dv.data() + k0 * dim, dim, true);
        cpu::softmax_grad_tile(w.st.data(), w.dpt.data(), kBlockQ, nk, mq, w.di.data());
        gemm(nk, dim, mq, w.dpt.data(), kBlockQ, w.q.data(), dim, w.dk.data() + k0 * dim, dim, true);
        gemm(dim, mq, nk, w.kt.data() + k0 * dim, kBlockK, w.dpt.data(), kBlockQ, w.dqt.data(), kBlockQ, true);
      }
      cpu::transpose_tile(w.dqt.data(), kBlockQ, w.o.data(), dim, dim, mq);
      for (int64_t i = 0; i < mq; ++i)
        store_row(dq, b, segment_position(seg, q0 + i, n), h, w.o.data() + i * dim, dim, p.scale);
    }
  }
  for (int64_t t = 0; t < len; ++t) {
    const int64_t pos = segment_position(seg, t, n);
    store_row(sink.dk, b, pos, g, w.dk.data() + t * dim, dim, 1.0f, accumulate_kv);
    store_row(sink.dv, b, pos, g, w.dv.data() + t * dim, dim, 1.0f, accumulate_kv);
  }
}

template <typename T>
void backward_impl(const Problem& p, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, at::Tensor& dq, at::Tensor& dk,
                   at::Tensor& dv) {
  const Rows<const T> qr = rows_of<const T>(q), kr = rows_of<const T>(k), vr = rows_of<const T>(v);
  const Rows<const T> outr = rows_of<const T>(out), gr = rows_of<const T>(grad_out);
  const Rows<T> dqr = rows_of<T>(dq);
  const at::Tensor lse_c = lse.contiguous();
  const float* lse_data = lse_c.data_ptr<float>();
  const int64_t per_kv = p.heads_per_kv();
  if (p.kv_heads == 0) return;

  // A kv head whose query heads are partly shifted gets dK/dV from two passes
  // (unshifted segments, then shifted ones added on top).
  std::vector<char> has_class[2];
  has_class[0].assign(p.kv_heads, 0);
  has_class[1].assign(p.kv_heads, 0);
  for (int64_t h = 0; h < p.heads; ++h) has_class[s2attn::is_shifted_head(h, p.heads)][h / per_kv] = 1;
  bool two_passes = false;
  for (int64_t g = 0; g < p.kv_heads; ++g) two_passes |= has_class[0][g] && has_class[1][g];

  std::vector<Task> passes[2];
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t g = 0; g < p.kv_heads; ++g) {
      for (int shifted = 0; shifted < 2; ++shifted) {
        if (!has_class[shifted][g]) continue;
        int64_t heads_in_class = 0;
        for (int64_t h = g * per_kv; h < (g + 1) * per_kv; ++h)
          heads_in_class += s2attn::is_shifted_head(h, p.heads) == static_cast<bool>(shifted);
        s2attn::for_each_segment(p.mode, shifted, p.lengths[b], p.group, [&](const Segment& seg) {
          passes[two_passes ? shifted : 0].push_back(
              Task{b, g, shifted, seg, static_cast<double>(heads_in_class) * segment_cost(seg, p.causal)});
        });
      }
    }
  }

  // Padded positions get zero gradients.
  const Rows<T> dkr = rows_of<T>(dk), dvr = rows_of<T>(dv);
  for (int64_t b = 0; b < p.batch; ++b) {
    for (int64_t pos = p.lengths[b]; pos < p.seq; ++pos) {
      for (int64_t h = 0; h < p.heads; ++h) zero_row(dqr, b, pos, h, p.head_dim);
      for (int64_t g = 0; g < p.kv_heads; ++g) {
        zero_row(dkr, b, pos, g, p.head_dim);
        zero_row(dvr, b, pos, g, p.head_dim);
      }
    }
  }

  auto run = [&](auto sink) {
    for (int pass = 0; pass < 2; ++pass) {
      run_tasks<BackwardScratch>(passes[pass], [&](const Task& task, BackwardScratch& scratch) {
        const bool accumulate = pass == 1 && has_class[0][task.head];
        backward_segment<T>(p, qr, kr, vr, outr, gr, lse_data, dqr, sink, accumulate, task, scratch);
      });
    }
  };
  if (!two_passes || std::is_same_v<T, float>) {
    run(KvSink<T>{dkr, dvr});
    return;
  }
  // Zero-filled, so padded rows (never written by a segment) stay zero.
  at::Tensor dk32 = at::zeros(dk.sizes(), dk.options().dtype(at::kFloat));
  at::Tensor dv32 = at::zeros(dv.sizes(), dv.options().dtype(at::kFloat));
  run(KvSink<float>{rows_of<float>(dk32), rows_of<float>(dv32)});
  dk.copy_(dk32);
  dv.copy_(dv32);
}

// ----------------------------------------------------------------------------- ops
template <typename Fn>
void dispatch_dtype(at::ScalarType dtype, const Fn& fn) {
  switch (dtype) {
    case at::kFloat: fn(float{}); break;
    case at::kBFloat16: fn(c10::BFloat16{}); break;
    case at::kHalf: fn(c10::Half{}); break;
    default: TORCH_CHECK_TYPE(false, "s2_attention: unsupported dtype ", dtype);
  }
}

// A gradient keeps its input's layout (a transposed q gets a transposed dq).
at::Tensor gradient_like(const at::Tensor& t) {
  return t.is_contiguous() ? cpu::empty_output(t.sizes(), t.scalar_type()) : at::empty_like(t);
}

std::tuple<at::Tensor, at::Tensor> s2_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                    int64_t group_size, c10::string_view mode, bool causal,
                                                    const std::optional<at::Tensor>& seqlens,
                                                    std::optional<double> scale) {
  const Problem p = s2attn::make_problem(q, k, v, group_size, std::string_view(mode.data(), mode.size()), causal,
                                         seqlens, scale);
  at::Tensor out = cpu::empty_output(q.sizes(), q.scalar_type());
  at::Tensor lse = at::empty({p.batch, p.heads, p.seq}, q.options().dtype(at::kFloat));
  dispatch_dtype(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    forward_impl<T>(p, q, k, v, out, lse);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> s2_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, int64_t group_size, c10::string_view mode, bool causal,
    const std::optional<at::Tensor>& seqlens, std::optional<double> scale) {
  const Problem p = s2attn::make_problem(q, k, v, group_size, std::string_view(mode.data(), mode.size()), causal,
                                         seqlens, scale);
  s2attn::check_backward_args(p, q, grad_out, out, lse);
  at::Tensor dq = gradient_like(q);
  at::Tensor dk = gradient_like(k);
  at::Tensor dv = gradient_like(v);
  dispatch_dtype(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    backward_impl<T>(p, grad_out, q, k, v, out, lse, dq, dk, dv);
  });
  return {dq, dk, dv};
}

TORCH_LIBRARY_IMPL(loraops, CPU, m) {
  m.impl("s2_attention", &s2_attention_cpu);
  m.impl("s2_attention_backward", &s2_attention_backward_cpu);
}

}  // namespace
}  // namespace loraops
