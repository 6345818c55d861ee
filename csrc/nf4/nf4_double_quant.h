// The double-quantization offset every backend computes alike.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>

#include <cmath>

namespace loraops::nf4_detail {

// offset = mean(absmax) through ATen on absmax's device, so it rounds exactly
// as bitsandbytes' own on that device (CPU and CUDA sum in different orders:
// their offsets may differ in the last bits). Where that fp32 mean overflows
// (absmax near the fp32 maximum, where bitsandbytes produces garbage), the mean
// is taken in float64 instead; on CUDA that choice is made on the device, with
// no host round trip.
inline at::Tensor double_quant_offset(const at::Tensor& absmax) {
  if (absmax.numel() == 0) return at::zeros({}, absmax.options());
  at::Tensor offset = at::mean(absmax);
  if (absmax.is_cuda()) return at::where(at::isfinite(offset), offset, at::mean(absmax, at::kDouble).to(at::kFloat));
  if (std::isfinite(offset.item<float>())) return offset;
  return at::mean(absmax, at::kDouble).to(at::kFloat);
}

}  // namespace loraops::nf4_detail
