// CUDA registrations of the NF4 ops: argument checks and the ATen steps are the
// device backends' shared host flow (nf4/nf4_device_ops.h); the kernels are in
// nf4_cuda_kernels.cu.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../nf4/nf4_device_ops.h"
#include "nf4_cuda_kernels.h"

namespace loraops {
namespace {

cuda::FloatKind float_kind(at::ScalarType t) {
  return t == at::kFloat ? cuda::FloatKind::f32 : t == at::kBFloat16 ? cuda::FloatKind::bf16 : cuda::FloatKind::f16;
}

template <class T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// Launches the dequantize kernel; called by the shared op wrappers after their checks.
struct Dequantizer {
  int64_t blocksize, nested_blocksize;

  void operator()(const at::Tensor& packed, const at::Tensor& absmax, const std::optional<at::Tensor>& nested_absmax,
                  const std::optional<at::Tensor>& nested_code, const std::optional<at::Tensor>& offset, int64_t n,
                  at::Tensor& out) const {
    const c10::cuda::CUDAGuard guard(out.device());
    nf4_detail::dequantize_on_device(
        packed, absmax, nested_absmax, nested_code, offset, n, out,
        [&](const at::Tensor& p, const at::Tensor& a, const at::Tensor& nested, const at::Tensor& code,
            const at::Tensor& off, const at::Tensor& o) {
          const bool dq = nested.defined();
          cuda::NF4DequantizeLaunch launch{p.const_data_ptr<uint8_t>(),
                                           n,
                                           blocksize,
                                           dq ? nullptr : a.const_data_ptr<float>(),
                                           dq ? a.const_data_ptr<uint8_t>() : nullptr,
                                           data_or_null<float>(nested),
                                           data_or_null<float>(code),
                                           data_or_null<float>(off),
                                           nested_blocksize,
                                           o.data_ptr(),
                                           float_kind(o.scalar_type())};
          cuda::nf4_dequantize(launch, c10::cuda::getCurrentCUDAStream());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nf4_quantize_cuda(const at::Tensor& input,
                                                                             int64_t blocksize, bool double_quant) {
  const c10::cuda::CUDAGuard guard(input.device());
  return nf4_detail::quantize_on_device(
      input, blocksize, double_quant,
      [&](const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax) {
        cuda::nf4_quantize({x.const_data_ptr(), float_kind(x.scalar_type()), x.numel(), blocksize,
                            packed.mutable_data_ptr<uint8_t>(), absmax.mutable_data_ptr<float>()},
                           c10::cuda::getCurrentCUDAStream());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      },
      [&](const at::Tensor& centered, const at::Tensor& bounds, const at::Tensor& codes,
          const at::Tensor& nested_absmax) {
        cuda::quantize_to_code({centered.const_data_ptr<float>(), centered.numel(), kNestedBlocksize,
                                bounds.const_data_ptr<float>(), codes.mutable_data_ptr<uint8_t>(),
                                nested_absmax.mutable_data_ptr<float>()},
                               c10::cuda::getCurrentCUDAStream());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(loraops, CUDA, m) {
  m.impl("nf4_quantize", &nf4_quantize_cuda);
  m.impl("nf4_dequantize", &nf4_detail::dequantize_op<Dequantizer>);
  m.impl("nf4_dequantize_into", &nf4_detail::dequantize_into_op<Dequantizer>);
}

}  // namespace loraops
