// The host side of the NF4 ops of the device backends (CUDA, Ascend NPU, the
// Ascend emulation): contiguous inputs, output allocation and the
// double-quantization steps done with ATen; the kernel launches are passed in.
// Dequantize callers have checked the arguments (check_dequantize_args).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/zeros.h>

#include <mutex>
#include <optional>
#include <tuple>
#include <type_traits>
#include <unordered_map>

#include "nf4_checks.h"
#include "nf4_double_quant.h"
#include "nf4_dynamic_code.h"

namespace loraops::nf4_detail {

// fn(packed, absmax, nested_absmax, nested_code, offset) with every tensor
// contiguous and on packed's device, the optional ones undefined without double
// quantization.
template <class Fn>
void with_device_tensors(const at::Tensor& packed_in, const at::Tensor& absmax_in,
                         const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
                         const std::optional<at::Tensor>& offset, const Fn& fn) {
  const at::Tensor packed = packed_in.contiguous(), absmax = absmax_in.contiguous();
  const bool dq = nested_absmax.has_value();
  const at::Tensor nested = dq ? nested_absmax->contiguous() : at::Tensor();
  const at::Tensor code = dq ? nested_code->to(packed.device()).contiguous() : at::Tensor();
  const at::Tensor off = dq ? offset->to(packed.device()).contiguous() : at::Tensor();
  fn(packed, absmax, nested, code, off);
}

// launch(packed, absmax, nested_absmax, nested_code, offset, out) as
// with_device_tensors. Nothing runs for an empty tensor.
template <class Launch>
void dequantize_on_device(const at::Tensor& packed, const at::Tensor& absmax,
                          const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
                          const std::optional<at::Tensor>& offset, int64_t n, at::Tensor& out, const Launch& launch) {
  if (n == 0) return;
  with_device_tensors(packed, absmax, nested_absmax, nested_code, offset,
                      [&](const at::Tensor& p, const at::Tensor& a, const at::Tensor& nested, const at::Tensor& code,
                          const at::Tensor& off) { launch(p, a, nested, code, off, out); });
}

// The nf4_dequantize and nf4_dequantize_into ops of a device backend, for
// TORCH_LIBRARY_IMPL: the checks and the output here, the launch in
// Dequantizer{blocksize, nested_blocksize}(packed, absmax, nested_absmax,
// nested_code, offset, n, out).
template <class Dequantizer>
at::Tensor dequantize_op(const at::Tensor& packed, const at::Tensor& absmax,
                         const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
                         const std::optional<at::Tensor>& offset, int64_t blocksize, int64_t nested_blocksize,
                         c10::SymIntArrayRef shape, at::ScalarType dtype) {
  const int64_t n = check_dequantize_args(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                          nested_blocksize, shape, dtype);
  at::Tensor out = at::empty(C10_AS_INTARRAYREF_SLOW(shape), packed.options().dtype(dtype));
  Dequantizer{blocksize, nested_blocksize}(packed, absmax, nested_absmax, nested_code, offset, n, out);
  return out;
}

template <class Dequantizer>
void dequantize_into_op(const at::Tensor& packed, const at::Tensor& absmax,
                        const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
                        const std::optional<at::Tensor>& offset, int64_t blocksize, int64_t nested_blocksize,
                        at::Tensor& out) {
  const int64_t n = check_dequantize_args(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                          nested_blocksize, out.sym_sizes(), out.scalar_type());
  TORCH_CHECK_VALUE(out.is_contiguous(), "nf4_dequantize: out must be contiguous");
  TORCH_CHECK_VALUE(out.device() == packed.device(), "nf4_dequantize: out must be on ", packed.device(), ", got ",
                    out.device());
  Dequantizer{blocksize, nested_blocksize}(packed, absmax, nested_absmax, nested_code, offset, n, out);
}

// The 256 midpoints of the dynamic code (+inf padded) on `device`, copied there
// once per device: a copy per call would be a synchronous host-to-device copy.
inline const at::Tensor& dynamic_code_midpoints_on(c10::Device device) {
  static std::mutex mutex;
  static auto* per_device = new std::unordered_map<c10::Device, at::Tensor>();  // never freed: no device frees at exit
  const std::lock_guard<std::mutex> lock(mutex);
  at::Tensor& bounds = (*per_device)[device];
  if (!bounds.defined()) {
    at::Tensor host = at::empty({256}, at::kFloat);
    code_midpoints(dynamic_code_cpu().const_data_ptr<float>(), 256, host.mutable_data_ptr<float>());
    bounds = host.to(device);
  }
  return bounds;
}

// quantize(input, packed, absmax) writes the packed codes and the fp32 absmax
// of the n > 0 elements; quantize_absmax(centered, bounds, codes,
// nested_absmax) the double quantization of centered = absmax - mean(absmax),
// bounds being the 256 midpoints of the dynamic code (+inf padded). Returns
// what nf4_quantize returns. A quantize that takes a fourth tensor, an int32
// flag set to 0, sets it when it meets NaN or Inf: the input is then read once,
// and the flag after the last launch; otherwise a separate pass checks first.
template <class Quantize, class QuantizeAbsmax>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize_on_device(
    const at::Tensor& input_arg, int64_t blocksize, bool double_quant, const Quantize& quantize,
    const QuantizeAbsmax& quantize_absmax) {
  check_input(input_arg, blocksize);
  const at::Tensor input = input_arg.contiguous();
  const int64_t n = input.numel();
  const auto float_opts = input.options().dtype(at::kFloat);
  const auto byte_opts = input.options().dtype(at::kByte);
  constexpr bool kernel_flags_nonfinite = std::is_invocable_v<Quantize, const at::Tensor&, at::Tensor&, at::Tensor&,
                                                              at::Tensor&>;
  const auto check_finite = [](bool finite) {
    TORCH_CHECK_VALUE(finite, "nf4_quantize: input contains NaN or Inf; NF4 quantization needs finite values");
  };
  if constexpr (!kernel_flags_nonfinite) check_finite(n == 0 || at::isfinite(input).all().item<bool>());
  at::Tensor nonfinite = kernel_flags_nonfinite ? at::zeros({}, input.options().dtype(at::kInt)) : at::Tensor();
  const int64_t nblocks = ceil_div(n, blocksize);
  at::Tensor packed = at::empty({(n + 1) / 2}, byte_opts);
  at::Tensor absmax = at::empty({nblocks}, float_opts);
  if (n > 0) {
    if constexpr (kernel_flags_nonfinite) {
      quantize(input, packed, absmax, nonfinite);
    } else {
      quantize(input, packed, absmax);
    }
    // bitsandbytes stores a partial last block's scale clamped to 1e-38.
    if (n % blocksize != 0) absmax.narrow(0, nblocks - 1, 1).clamp_min_(1e-38);
  }
  if (!double_quant) {
    if constexpr (kernel_flags_nonfinite) check_finite(nonfinite.item<int>() == 0);
    return {packed, absmax, at::empty({0}, float_opts), at::zeros({}, float_opts)};
  }

  at::Tensor offset = double_quant_offset(absmax);
  const at::Tensor centered = at::sub(absmax, offset).contiguous();
  at::Tensor codes = at::empty({nblocks}, byte_opts);
  at::Tensor nested_absmax = at::empty({ceil_div(nblocks, kNestedBlocksize)}, float_opts);
  if (nblocks > 0) {
    quantize_absmax(centered, dynamic_code_midpoints_on(input.device()), codes, nested_absmax);
  }
  if constexpr (kernel_flags_nonfinite) check_finite(nonfinite.item<int>() == 0);
  return {packed, codes, nested_absmax, offset};
}

}  // namespace loraops::nf4_detail
