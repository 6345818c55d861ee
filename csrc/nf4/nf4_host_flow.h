// The host flow of the NF4 ops: the op's arguments as one checked NF4Tensor,
// outputs, and (for the device backends: CUDA, its emulation, Ascend and its
// emulation) the double-quantization steps done with ATen around the kernels,
// whose launches the backend passes in.
#pragma once

#include <ATen/MemoryOverlap.h>
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
#include <utility>

#include "nf4_checks.h"
#include "nf4_double_quant.h"
#include "nf4_dynamic_code.h"

namespace loraops::nf4_detail {

// w with every part contiguous (check_nf4_tensor has checked them all on packed's device).
inline nf4::NF4Tensor contiguous_parts(const nf4::NF4Tensor& w) {
  nf4::NF4Tensor c = w;
  c.packed = w.packed.contiguous();
  c.absmax = w.absmax.contiguous();
  if (w.double_quant()) {
    c.nested_absmax = w.nested_absmax.contiguous();
    c.nested_code = w.nested_code.contiguous();
    c.offset = w.offset.contiguous();
  }
  return c;
}

// The nf4_dequantize and nf4_dequantize_into ops of a backend, for
// TORCH_LIBRARY_IMPL: the op's arguments become an NF4Tensor, checked, with the
// output here. The backend supplies
//   static constexpr c10::DeviceType kDevice;
//   static at::Tensor empty_output(at::IntArrayRef shape, at::TensorOptions options);
//   static void dequantize_into(const nf4::NF4Tensor& w, int64_t n, at::Tensor& out);
// which dequantizes the n > 0 elements of the checked w into the contiguous
// out on w's device.
template <class Backend>
struct NF4DequantizeOps {
  static void check_on_backend(const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().type() == Backend::kDevice, "nf4_dequantize: ", name, " must be a ",
                c10::DeviceTypeName(Backend::kDevice), " tensor for this kernel, got ", t.device());
  }

  // The kernels read the quantized parts while writing out: they must not share memory.
  static void check_no_overlap(const at::Tensor& out, const nf4::NF4Tensor& w) {
    const std::pair<const char*, const at::Tensor*> parts[] = {{"packed", &w.packed},
                                                               {"absmax", &w.absmax},
                                                               {"nested_absmax", &w.nested_absmax},
                                                               {"nested_code", &w.nested_code},
                                                               {"offset", &w.offset}};
    for (const auto& [name, part] : parts) {
      if (!part->defined() || part->numel() == 0) continue;
      const at::MemOverlapStatus status = at::get_overlap_status(out, *part);
      const bool overlaps = status == at::MemOverlapStatus::Full || status == at::MemOverlapStatus::Partial ||
                            (status == at::MemOverlapStatus::TooHard && out.storage().is_alias_of(part->storage()));
      TORCH_CHECK_VALUE(!overlaps, "nf4_dequantize: out must not share memory with ", name);
    }
  }

  static at::Tensor dequantize(const at::Tensor& packed, const at::Tensor& absmax,
                               const std::optional<at::Tensor>& nested_absmax,
                               const std::optional<at::Tensor>& nested_code, const std::optional<at::Tensor>& offset,
                               int64_t blocksize, int64_t nested_blocksize, c10::SymIntArrayRef shape,
                               at::ScalarType dtype) {
    const nf4::NF4Tensor w = nf4_tensor(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                        nested_blocksize, shape);
    const int64_t n = check_nf4_tensor(w, dtype);
    check_on_backend(packed, "packed");
    at::Tensor out = Backend::empty_output(w.shape, packed.options().dtype(dtype));
    if (n > 0) Backend::dequantize_into(w, n, out);
    return out;
  }

  static void dequantize_into(const at::Tensor& packed, const at::Tensor& absmax,
                              const std::optional<at::Tensor>& nested_absmax,
                              const std::optional<at::Tensor>& nested_code, const std::optional<at::Tensor>& offset,
                              int64_t blocksize, int64_t nested_blocksize, at::Tensor& out) {
    const nf4::NF4Tensor w = nf4_tensor(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                        nested_blocksize, out.sym_sizes());
    TORCH_CHECK_TYPE(is_supported_float(out.scalar_type()),
                     "nf4_dequantize: out must be float32, bfloat16 or float16, got ", out.scalar_type());
    const int64_t n = check_nf4_tensor(w, out.scalar_type());
    TORCH_CHECK_VALUE(out.is_contiguous(), "nf4_dequantize: out must be contiguous");
    check_on_backend(packed, "packed");
    TORCH_CHECK_VALUE(out.device() == packed.device(), "nf4_dequantize: out must be on ", packed.device(), ", got ",
                      out.device());
    check_no_overlap(out, w);
    if (n > 0) Backend::dequantize_into(w, n, out);
  }

  // The whole of a checked NF4 tensor, for the backend's other ops (an NF4 base weight).
  static at::Tensor dequantize_tensor(const nf4::NF4Tensor& w, at::ScalarType dtype) {
    at::Tensor out = Backend::empty_output(w.shape, w.packed.options().dtype(dtype));
    if (out.numel() > 0) Backend::dequantize_into(w, out.numel(), out);
    return out;
  }
};

// The 256 midpoints of the dynamic code (+inf padded) on `device`, copied there
// once per device: a copy per call would be a synchronous host-to-device copy.
inline const at::Tensor& dynamic_code_midpoints_on(c10::Device device) {
  static std::mutex mutex;
  static auto* per_device = new std::unordered_map<c10::Device, at::Tensor>();  // never freed: no device frees at exit
  const std::lock_guard<std::mutex> lock(mutex);
  at::Tensor& bounds = (*per_device)[device];
  if (!bounds.defined()) {
    at::Tensor host = at::empty({256}, at::kFloat);
    nf4_format::code_midpoints(dynamic_code_cpu().const_data_ptr<float>(), 256, host.mutable_data_ptr<float>());
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
  at::Tensor packed = at::empty({packed_nibble_bytes(n)}, byte_opts);
  at::Tensor absmax = at::empty({nblocks}, float_opts);
  if (n > 0) {
    if constexpr (kernel_flags_nonfinite) {
      quantize(input, packed, absmax, nonfinite);
    } else {
      quantize(input, packed, absmax);
    }
    // bitsandbytes stores a partial last block's scale clamped to 1e-38.
    if (n % blocksize != 0) absmax.narrow(0, nblocks - 1, 1).clamp_min_(nf4_format::kMinAbsmax);
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
