// The NF4 dequantize kernel as the shared dequantize flow
// (csrc/nf4/nf4_host_flow.h) wants it, for a Launcher that supplies kDevice,
// vector_cores(t) and nf4_dequantize(tiling, weight, out): torch_npu's
// (nf4_npu.h) or the CPU emulation's (sim/lora_ops.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include "csrc/nf4/nf4_host_flow.h"
#include "nf4_tiling.h"

namespace loraops::ascend {

template <class Launcher>
struct AscendNF4Dequantize {
  static constexpr c10::DeviceType kDevice = Launcher::kDevice;

  static at::Tensor empty_output(at::IntArrayRef shape, at::TensorOptions options) {
    return at::empty(shape, options);
  }

  static void dequantize_into(const nf4::NF4Tensor& weight, int64_t n, at::Tensor& out) {
    const nf4::NF4Tensor w = nf4_detail::contiguous_parts(weight);
    const auto t = nf4_block_tiling(n, static_cast<uint32_t>(w.blocksize), static_cast<uint64_t>(w.nested_blocksize),
                                    w.double_quant(), Launcher::vector_cores(out));
    TORCH_CHECK_VALUE(!w.double_quant() || t.nested_blocksize != 0, "nf4_dequantize: nested_blocksize ",
                      w.nested_blocksize, " over more than 2^32 blocks is not supported on Ascend");
    Launcher::nf4_dequantize(t, w, out);
  }
};

}  // namespace loraops::ascend
