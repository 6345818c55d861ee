// Test-only torch ops that run loraops' CUDA kernels and their host flow on CPU
// tensors through the emulation in this folder (built with LORAOPS_CUDA_SIM=ON):
// _cuda_sim_<op> for each NF4 and LoRA op the CUDA backend registers, with the
// same schema; and _cuda_sim_selftest(str fault), a small kernel with the named
// fault built in ("none": none). A fault surfaces as a RuntimeError naming it.
#include <torch/library.h>

#include "../lora/lora_cuda_ops.h"
#include "../nf4/nf4_cuda_ops.h"
#include "csrc/build_info.h"
#include "csrc/op_schemas.h"
#include "selftest.h"

namespace loraops {
namespace {

struct SimRuntime {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  struct Guard {
    explicit Guard(c10::Device) {}
  };
  static cudaStream_t stream() { return nullptr; }
  static void check_launch() {}
};

const build_info::Backend kBackend("cuda_sim");

using NF4SimKernels = cuda_ops::NF4Kernels<SimRuntime>;
using NF4SimDequantize = nf4_detail::NF4DequantizeOps<NF4SimKernels>;
using LoraSimOps = cuda_ops::LoraOps<SimRuntime>;

void cuda_sim_selftest(c10::string_view fault) { cuda_sim::run_selftest(std::string(fault)); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(loraops, m) {
  m.def("_cuda_sim_nf4_quantize" LORAOPS_NF4_QUANTIZE_SIGNATURE);
  m.def("_cuda_sim_nf4_dequantize" LORAOPS_NF4_DEQUANTIZE_SIGNATURE);
  m.def("_cuda_sim_nf4_dequantize_into" LORAOPS_NF4_DEQUANTIZE_INTO_SIGNATURE);
  m.def("_cuda_sim_lora_linear" LORAOPS_LORA_LINEAR_SIGNATURE);
  m.def("_cuda_sim_lora_linear_backward" LORAOPS_LORA_LINEAR_BACKWARD_SIGNATURE);
  m.def("_cuda_sim_lora_linear_nf4" LORAOPS_LORA_LINEAR_NF4_SIGNATURE);
  m.def("_cuda_sim_lora_linear_nf4_backward" LORAOPS_LORA_LINEAR_NF4_BACKWARD_SIGNATURE);
  m.def("_cuda_sim_selftest(str fault) -> ()");
}

TORCH_LIBRARY_IMPL(loraops, CPU, m) {
  m.impl("_cuda_sim_nf4_quantize", &NF4SimKernels::quantize);
  m.impl("_cuda_sim_nf4_dequantize", &NF4SimDequantize::dequantize);
  m.impl("_cuda_sim_nf4_dequantize_into", &NF4SimDequantize::dequantize_into);
  m.impl("_cuda_sim_lora_linear", &LoraSimOps::lora_linear);
  m.impl("_cuda_sim_lora_linear_backward", &LoraSimOps::lora_linear_backward);
  m.impl("_cuda_sim_lora_linear_nf4", &LoraSimOps::lora_linear_nf4);
  m.impl("_cuda_sim_lora_linear_nf4_backward", &LoraSimOps::lora_linear_nf4_backward);
}

TORCH_LIBRARY_IMPL(loraops, CompositeExplicitAutograd, m) { m.impl("_cuda_sim_selftest", &cuda_sim_selftest); }

}  // namespace loraops
