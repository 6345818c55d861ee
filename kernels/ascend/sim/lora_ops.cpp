// Test-only torch ops that run loraops' Ascend C LoRA kernels and their host
// flow (kernels/ascend/lora/lora_ascend_ops.h) on CPU tensors through the
// emulation in this folder:
//   _ascend_sim_lora_linear, _ascend_sim_lora_linear_backward, _ascend_sim_lora_linear_nf4,
//   _ascend_sim_lora_linear_nf4_backward: the LoRA ops with their real schemas, on
//     kSimCubeCores emulated AI cores (kSimVectorCores vector cores);
//   _ascend_sim_lora_mask_to_float, _ascend_sim_lora_add_masked: the vector kernels alone,
//     on `cores` vector cores, to compare the dropout mask bit for bit.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "../lora/lora_ascend_ops.h"
#include "csrc/op_schemas.h"
#include "sim_launcher.h"

namespace loraops {
namespace {

using ascend_sim_ops::SimLauncher;
using ascend_sim_ops::VectorCores;

using Kernels = ascend::AscendLoraKernels<SimLauncher>;
using LoraSimOps = ascend::AscendLoraOps<SimLauncher>;

void check_vector_args(const at::Tensor& x, int64_t index_base, double p) {
  TORCH_CHECK_VALUE(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous matrix");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 ||
                       x.scalar_type() == at::kHalf,
                   "x must be float32, bfloat16 or float16");
  TORCH_CHECK_VALUE(index_base >= 0, "index_base must be non-negative");
  TORCH_CHECK_VALUE(p >= 0.0 && p < 1.0, "dropout must be in [0, 1)");
}

at::Tensor ascend_sim_lora_mask_to_float(const at::Tensor& x, int64_t index_base, double p, int64_t seed,
                                         int64_t cores) {
  check_vector_args(x, index_base, p);
  const VectorCores use(cores);
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  if (x.numel() == 0) return out;
  SimLauncher::mask(Kernels::vector_tiling(x, index_base, dropout::mask(p, seed), 1.0f), x, out);
  return out;
}

void ascend_sim_lora_add_masked(at::Tensor& x, const at::Tensor& term, double scale, int64_t index_base, double p,
                                int64_t seed, int64_t cores) {
  check_vector_args(x, index_base, p);
  TORCH_CHECK_VALUE(term.sizes() == x.sizes() && term.scalar_type() == at::kFloat && term.is_contiguous(),
                    "term must be a contiguous float32 matrix of x's shape");
  const VectorCores use(cores);
  if (x.numel() == 0) return;
  SimLauncher::add_masked(Kernels::vector_tiling(x, index_base, dropout::mask(p, seed), static_cast<float>(scale)), x,
                          term);
}

// The emulation's launch log (JSON, see ascend_sim::record_launch); reading it starts the recording.
std::string ascend_sim_launch_log(bool reset) { return ascend_sim::read_launch_log(reset); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(loraops, m) {
  m.def("_ascend_sim_launch_log(bool reset) -> str");
  m.def("_ascend_sim_lora_linear" LORAOPS_LORA_LINEAR_SIGNATURE);
  m.def("_ascend_sim_lora_linear_backward" LORAOPS_LORA_LINEAR_BACKWARD_SIGNATURE);
  m.def("_ascend_sim_lora_linear_nf4" LORAOPS_LORA_LINEAR_NF4_SIGNATURE);
  m.def("_ascend_sim_lora_linear_nf4_backward" LORAOPS_LORA_LINEAR_NF4_BACKWARD_SIGNATURE);
  m.def("_ascend_sim_lora_mask_to_float(Tensor x, int index_base, float dropout, int seed, int cores) -> Tensor");
  m.def(
      "_ascend_sim_lora_add_masked(Tensor(a!) x, Tensor term, float scale, int index_base, float dropout, int seed, "
      "int cores) -> ()");
}

TORCH_LIBRARY_IMPL(loraops, CompositeExplicitAutograd, m) {
  m.impl("_ascend_sim_launch_log", &ascend_sim_launch_log);
}

TORCH_LIBRARY_IMPL(loraops, CPU, m) {
  m.impl("_ascend_sim_lora_linear", &LoraSimOps::lora_linear);
  m.impl("_ascend_sim_lora_linear_backward", &LoraSimOps::lora_linear_backward);
  m.impl("_ascend_sim_lora_linear_nf4", &LoraSimOps::lora_linear_nf4);
  m.impl("_ascend_sim_lora_linear_nf4_backward", &LoraSimOps::lora_linear_nf4_backward);
  m.impl("_ascend_sim_lora_mask_to_float", &ascend_sim_lora_mask_to_float);
  m.impl("_ascend_sim_lora_add_masked", &ascend_sim_lora_add_masked);
}

}  // namespace loraops
