// The public C++ API (csrc/include/loraops): thin calls through the PyTorch
// dispatcher, so they reach whichever backend holds the tensors.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>

#include <sstream>

#include "cpu/nf4_kernels.h"
#include "loraops/loraops.h"
#include "nf4/nf4_dynamic_code.h"

#ifndef LORAOPS_VERSION
#define LORAOPS_VERSION "unknown"
#endif
#ifndef LORAOPS_TORCH_VERSION
#define LORAOPS_TORCH_VERSION "unknown"
#endif

namespace loraops {

namespace nf4 {

namespace {

using QuantizeFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, int64_t, bool);
using DequantizeIntoFn = void(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                              const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, int64_t, int64_t,
                              at::Tensor&);

std::optional<at::Tensor> optional_if(bool present, const at::Tensor& t) {
  return present ? std::optional<at::Tensor>(t) : std::nullopt;
}

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

std::string build_info_json() {
  std::ostringstream s;
  s << "{\"version\": \"" << LORAOPS_VERSION << "\", \"torch_version\": \"" << LORAOPS_TORCH_VERSION
    << "\", \"backends\": [\"cpu\"";
#ifdef LORAOPS_WITH_CUDA
  s << ", \"cuda\"";
#endif
#ifdef LORAOPS_WITH_ASCEND
  s << ", \"ascend\"";
#endif
#ifdef LORAOPS_WITH_ASCEND_SIM
  s << ", \"ascend_sim\"";
#endif
  s << "], \"cpu_isa\": \"" << cpu::isa_name(cpu::active_isa()) << "\", \"cpu_isa_best\": \""
    << cpu::isa_name(cpu::best_supported_isa()) << "\", \"cpu_isa_compiled\": [\"scalar\"";
#ifdef LORAOPS_HAVE_AVX2
  s << ", \"avx2\"";
#endif
#ifdef LORAOPS_HAVE_AVX512
  s << ", \"avx512\"";
#endif
  s << "]}";
  return s.str();
}

}  // namespace loraops
