// The NF4 ops over the CUDA kernels, for a Runtime: the CUDA runtime
// (gpu_runtime.h, registered in nf4_cuda.cpp) or the CPU emulation
// (sim/ops.cpp). Checks, outputs and ATen steps are the shared host flow
// (csrc/nf4/nf4_host_flow.h); this file supplies the launches.
#pragma once

#include <ATen/core/Tensor.h>

#include "csrc/nf4/nf4_host_flow.h"
#include "nf4_cuda_kernels.h"

namespace loraops::cuda_ops {

inline cuda::FloatKind float_kind(at::ScalarType t) {
  return t == at::kFloat ? cuda::FloatKind::f32 : t == at::kBFloat16 ? cuda::FloatKind::bf16 : cuda::FloatKind::f16;
}

template <class T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// The kernels' view of an NF4 tensor whose parts are contiguous and on the
// device (contiguous_parts).
inline cuda::NF4WeightView weight_view(const nf4::NF4Tensor& w) {
  const bool dq = w.double_quant();
  const auto log2_or_minus_one = [](int64_t v) {
    return v > 0 && (v & (v - 1)) == 0 ? static_cast<int>(__builtin_ctzll(static_cast<uint64_t>(v))) : -1;
  };
  return {w.packed.const_data_ptr<uint8_t>(),
          log2_or_minus_one(w.blocksize),  // checked to be a power of two
          dq ? nullptr : w.absmax.const_data_ptr<float>(),
          dq ? w.absmax.const_data_ptr<uint8_t>() : nullptr,
          data_or_null<float>(w.nested_absmax),
          data_or_null<float>(w.nested_code),
          data_or_null<float>(w.offset),
          w.nested_blocksize,
          log2_or_minus_one(w.nested_blocksize)};
}

// The backend half of the NF4 ops (nf4_detail::NF4DequantizeOps supplies the
// other), for a Runtime: kDevice, a Guard(device), stream() and check_launch().
template <class Runtime>
struct NF4Kernels {
  static constexpr c10::DeviceType kDevice = Runtime::kDevice;

  static at::Tensor empty_output(at::IntArrayRef shape, at::TensorOptions options) {
    return at::empty(shape, options);
  }

  static void dequantize_into(const nf4::NF4Tensor& weight, int64_t n, at::Tensor& out) {
    const typename Runtime::Guard guard(out.device());
    const nf4::NF4Tensor w = nf4_detail::contiguous_parts(weight);
    cuda::nf4_dequantize({weight_view(w), n, out.data_ptr(), float_kind(out.scalar_type())}, Runtime::stream());
    Runtime::check_launch();
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
