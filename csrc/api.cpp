// The public C++ API (csrc/include/loraops): thin calls through the PyTorch
// dispatcher, so they reach whichever backend holds the tensors.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <sstream>
#include <utility>
#include <vector>

#include "build_info.h"
#include "loraops/loraops.h"
#include "nf4/nf4_dynamic_code.h"

#ifndef LORAOPS_VERSION
#define LORAOPS_VERSION "unknown"
#endif
#ifndef LORAOPS_TORCH_VERSION
#define LORAOPS_TORCH_VERSION "unknown"
#endif

namespace loraops {

namespace {

std::optional<at::Tensor> optional_if(bool present, const at::Tensor& t) {
  return present ? std::optional<at::Tensor>(t) : std::nullopt;
}

template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

}  // namespace

namespace nf4 {

namespace {

using QuantizeFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, bool);
using DequantizeIntoFn = void(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                              const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t, int64_t,
                              at::Tensor&);

}  // namespace

at::Tensor dynamic_code() { return dynamic_code_cpu().clone(); }

NF4Tensor quantize(const at::Tensor& input, int64_t blocksize, bool double_quant) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("loraops::nf4_quantize", "").typed<QuantizeFn>();
  auto [packed, absmax, nested_absmax, offset] = op.call(input, blocksize, double_quant);
  NF4Tensor q;
  q.packed = packed;
  q.absmax = absmax;
  if (double_quant) {
    q.nested_absmax = nested_absmax;
    q.offset = offset;
    q.nested_code = dynamic_code_cpu().to(input.device());
  }
  q.blocksize = blocksize;
  q.shape = input.sizes().vec();
  q.dtype = input.scalar_type();
  return q;
}

at::Tensor& dequantize_out(const NF4Tensor& q, at::Tensor& out) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("loraops::nf4_dequantize_into", "")
                             .typed<DequantizeIntoFn>();
  TORCH_CHECK_VALUE(out.sizes().vec() == q.shape, "nf4_dequantize: out must have shape ", q.shape, ", got ",
                    out.sizes());
  const bool dq = q.double_quant();
  op.call(q.packed, q.absmax, optional_if(dq, q.nested_absmax), optional_if(dq, q.nested_code),
          optional_if(dq, q.offset), q.blocksize, q.nested_blocksize, out);
  return out;
}

at::Tensor dequantize(const NF4Tensor& q, std::optional<at::ScalarType> dtype) {
  at::Tensor out = at::empty(q.shape, q.packed.options().dtype(dtype.value_or(q.dtype)));
  dequantize_out(q, out);
  return out;
}

}  // namespace nf4

namespace lora {

namespace {

using ForwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                      const std::optional<at::Tensor>&, const at::Tensor&,
                                                      const at::Tensor&, double, double, int64_t);
using BackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, double, double, int64_t, std::array<bool, 5>);
using ForwardNF4Fn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t, int64_t, at::IntArrayRef,
    const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, double, double, int64_t);
using BackwardNF4Fn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t, int64_t, at::IntArrayRef,
    const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double,
    int64_t, std::array<bool, 4>);

at::Tensor defined_if(bool wanted, const at::Tensor& t) { return wanted ? t : at::Tensor(); }

void check_2d(const nf4::NF4Tensor& w) {
  TORCH_CHECK_VALUE(w.shape.size() == 2, "lora_linear: an NF4 weight must be 2-D, got ", w.shape.size(), " dims");
}

}  // namespace

Forward linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
               const at::Tensor& lora_A, const at::Tensor& lora_B, const Options& o) {
  static const auto op = find_op<ForwardFn>("loraops::lora_linear");
  auto [out, xa] = op.call(x, weight, bias, lora_A, lora_B, o.scale, o.dropout, o.seed);
  return {out, xa};
}

Gradients linear_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& lora_A, const at::Tensor& lora_B,
                          const at::Tensor& xa, const Options& o, std::array<bool, 5> needs) {
  static const auto op = find_op<BackwardFn>("loraops::lora_linear_backward");
  auto [gx, gw, gbias, ga, gb] = op.call(grad_out, x, weight, bias, lora_A, lora_B, xa, o.scale, o.dropout, o.seed,
                                         needs);
  return {defined_if(needs[0], gx), defined_if(needs[1], gw), defined_if(needs[2] && bias.has_value(), gbias),
          defined_if(needs[3], ga), defined_if(needs[4], gb)};
}

Forward linear(const at::Tensor& x, const nf4::NF4Tensor& w, const std::optional<at::Tensor>& bias,
               const at::Tensor& lora_A, const at::Tensor& lora_B, const Options& o) {
  check_2d(w);
  static const auto op = find_op<ForwardNF4Fn>("loraops::lora_linear_nf4");
  const bool dq = w.double_quant();
  auto [out, xa] = op.call(x, w.packed, w.absmax, optional_if(dq, w.nested_absmax), optional_if(dq, w.nested_code),
                           optional_if(dq, w.offset), w.blocksize, w.nested_blocksize, w.shape, bias, lora_A, lora_B,
                           o.scale, o.dropout, o.seed);
  return {out, xa};
}

Gradients linear_backward(const at::Tensor& grad_out, const at::Tensor& x, const nf4::NF4Tensor& w,
                          const std::optional<at::Tensor>& bias, const at::Tensor& lora_A, const at::Tensor& lora_B,
                          const at::Tensor& xa, const Options& o, std::array<bool, 4> needs) {
  check_2d(w);
  static const auto op = find_op<BackwardNF4Fn>("loraops::lora_linear_nf4_backward");
  const bool dq = w.double_quant();
  auto [gx, gbias, ga, gb] = op.call(grad_out, x, w.packed, w.absmax, optional_if(dq, w.nested_absmax),
                                     optional_if(dq, w.nested_code), optional_if(dq, w.offset), w.blocksize,
                                     w.nested_blocksize, w.shape, bias, lora_A, lora_B, xa, o.scale, o.dropout,
                                     o.seed, needs);
  return {defined_if(needs[0], gx), at::Tensor(), defined_if(needs[1] && bias.has_value(), gbias),
          defined_if(needs[2], ga), defined_if(needs[3], gb)};
}

}  // namespace lora

namespace s2attn {
namespace {

using AttentionFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                       int64_t, c10::string_view, bool,
                                                       const std::optional<at::Tensor>&, std::optional<double>);
using AttentionBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    int64_t, c10::string_view, bool, const std::optional<at::Tensor>&, std::optional<double>);

}  // namespace

Forward attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Options& o) {
  static const auto op = find_op<AttentionFn>("loraops::s2_attention");
  auto [out, lse] = op.call(q, k, v, o.group_size, o.mode, o.causal, o.seqlens, o.scale);
  return {out, lse};
}

Gradients attention_backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                             const at::Tensor& v, const Forward& forward, const Options& o) {
  static const auto op = find_op<AttentionBackwardFn>("loraops::s2_attention_backward");
  auto [dq, dk, dv] = op.call(grad_out, q, k, v, forward.out, forward.lse, o.group_size, o.mode, o.causal, o.seqlens,
                              o.scale);
  return {dq, dk, dv};
}

}  // namespace s2attn

namespace build_info {
namespace {

struct Registry {
  std::mutex mutex;
  std::vector<std::string> backends;
  std::map<std::string, std::string (*)()> facts;
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

Backend::Backend(const char* name) {
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mutex);
  r.backends.emplace_back(name);
}

Fact::Fact(const char* key, std::string (*json_value)()) {
  Registry& r = registry();
  const std::lock_guard<std::mutex> lock(r.mutex);
  r.facts[key] = json_value;
}

}  // namespace build_info

std::string build_info_json() {
  build_info::Registry& r = build_info::registry();
  const std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> backends = r.backends;
  // "cpu" first, the rest by name: the same list whatever the order libraries initialize in.
  std::sort(backends.begin(), backends.end(), [](const std::string& a, const std::string& b) {
    return std::make_pair(a != "cpu", a) < std::make_pair(b != "cpu", b);
  });
  std::ostringstream s;
  s << "{\"version\": \"" << LORAOPS_VERSION << "\", \"torch_version\": \"" << LORAOPS_TORCH_VERSION
    << "\", \"backends\": [";
  for (size_t i = 0; i < backends.size(); ++i) s << (i ? ", " : "") << '"' << backends[i] << '"';
  s << "]";
  for (const auto& [key, json_value] : r.facts) s << ", \"" << key << "\": " << json_value();
  s << "}";
  return s.str();
}

}  // namespace loraops
