// The NF4 ops over the CUDA kernels, for a Runtime: the CUDA runtime
// (gpu_runtime.h, registered in nf4_cuda.cpp) or the CPU emulation
// (sim/ops.cpp). A Runtime gives kDevice, a Guard(device), stream() and
// check_launch(). Checks and ATen steps are the device backends' shared host
// flow (nf4/nf4_device_ops.h).
#pragma once

#include <ATen/core/Tensor.h>

#include "../nf4/nf4_device_ops.h"
#include "nf4_cuda_kernels.h"

namespace loraops::cuda_ops {

inline cuda::FloatKind float_kind(at::ScalarType t) {
  return t == at::kFloat ? cuda::FloatKind::f32 : t == at::kBFloat16 ? cuda::FloatKind::bf16 : cuda::FloatKind::f16;
}

template <class T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// The kernels' view of contiguous device tensors of an NF4 weight (nested ones
// undefined without double quantization).
inline cuda::NF4WeightView weight_view(const at::Tensor& packed, const at::Tensor& absmax, const at::Tensor& nested,
                                       const at::Tensor& code, const at::Tensor& offset, int64_t blocksize,
                                       int64_t nested_blocksize) {
  const bool dq = nested.defined();
  const auto log2_or_minus_one = [](int64_t v) {
    return v > 0 && (v & (v - 1)) == 0 ? static_cast<int>(__builtin_ctzll(static_cast<uint64_t>(v))) : -1;
  };
  return {packed.const_data_ptr<uint8_t>(),
          log2_or_minus_one(blocksize),  // checked to be a power of two
          dq ? nullptr : absmax.const_data_ptr<float>(),
          dq ? absmax.const_data_ptr<uint8_t>() : nullptr,
          data_or_null<float>(nested),
          data_or_null<float>(code),
          data_or_null<float>(offset),
          nested_blocksize,
          log2_or_minus_one(nested_blocksize)};
}

template <class Runtime>
struct NF4Ops {
  // Launches the dequantize kernel; called by the shared op wrappers after their checks.
  struct Dequantizer {
    int64_t blocksize, nested_blocksize;

    void operator()(const at::Tensor& packed, const at::Tensor& absmax,
                    const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
                    const std::optional<at::Tensor>& offset, int64_t n, at::Tensor& out) const {
      const typename Runtime::Guard guard(out.device());
      nf4_detail::dequantize_on_device(
          packed, absmax, nested_absmax, nested_code, offset, n, out,
          [&](const at::Tensor& p, const at::Tensor& a, const at::Tensor& nested, const at::Tensor& code,
              const at::Tensor& off, const at::Tensor& o) {
            cuda::nf4_dequantize({weight_view(p, a, nested, code, off, blocksize, nested_blocksize), n,
                                  o.data_ptr(), float_kind(o.scalar_type())},
                                 Runtime::stream());
            Runtime::check_launch();
          });
    }
  };

  static at::Tensor dequantize(const at::Tensor& packed, const at::Tensor& absmax,
                               const std::optional<at::Tensor>& nested_absmax,
                               const std::optional<at::Tensor>& nested_code, const std::optional<at::Tensor>& offset,
                               int64_t blocksize, int64_t nested_blocksize, c10::SymIntArrayRef shape,
                               at::ScalarType dtype) {
    return nf4_detail::dequantize_op<Dequantizer>(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                                  nested_blocksize, shape, dtype);
  }

  static void dequantize_into(const at::Tensor& packed, const at::Tensor& absmax,
                              const std::optional<at::Tensor>& nested_absmax,
                              const std::optional<at::Tensor>& nested_code, const std::optional<at::Tensor>& offset,
                              int64_t blocksize, int64_t nested_blocksize, at::Tensor& out) {
    nf4_detail::dequantize_into_op<Dequantizer>(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                                nested_blocksize, out);
  }

  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> quantize(const at::Tensor& input,
                                                                             int64_t blocksize, bool double_quant) {
    const typename Runtime::Guard guard(input.device());
    return nf4_detail::quantize_on_device(
        input, blocksize, double_quant,
        [&](const at::Tensor& x, at::Tensor& packed, at::Tensor& absmax, at::Tensor& nonfinite) {
          cuda::nf4_quantize({x.const_data_ptr(), float_kind(x.scalar_type()), x.numel(), blocksize,
                              packed.mutable_data_ptr<uint8_t>(), absmax.mutable_data_ptr<float>(),
                              nonfinite.mutable_data_ptr<int>()},
                             Runtime::stream());
          Runtime::check_launch();
        },
        [&](const at::Tensor& centered, const at::Tensor& bounds, const at::Tensor& codes,
            const at::Tensor& nested_absmax) {
          cuda::quantize_to_code({centered.const_data_ptr<float>(), centered.numel(), kNestedBlocksize,
                                  bounds.const_data_ptr<float>(), codes.mutable_data_ptr<uint8_t>(),
                                  nested_absmax.mutable_data_ptr<float>()},
                                 Runtime::stream());
          Runtime::check_launch();
        });
  }
};

}  // namespace loraops::cuda_ops
