// Test-only torch op that runs loraops' Ascend C S2-Attn forward and its host
// side (kernels/ascend/s2attn/s2attn_ascend_ops.h) on CPU tensors through the
// emulation in this folder, on kSimCubeCores emulated AI cores:
//   _ascend_sim_s2_attention: s2_attention's schema and results (out, lse);
//   _ascend_sim_s2_attention_backward: s2_attention_backward's (dq, dk, dv).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "../s2attn/s2attn_ascend_ops.h"
#include "csrc/op_schemas.h"
#include "sim_launcher.h"

namespace loraops {
namespace {

using S2AttnSimOps = ascend::AscendS2AttnOps<ascend_sim_ops::SimLauncher>;

}  // namespace

TORCH_LIBRARY_FRAGMENT(loraops, m) {
  m.def("_ascend_sim_s2_attention" LORAOPS_S2_ATTENTION_SIGNATURE);
  m.def("_ascend_sim_s2_attention_backward" LORAOPS_S2_ATTENTION_BACKWARD_SIGNATURE);
}

TORCH_LIBRARY_IMPL(loraops, CPU, m) {
  m.impl("_ascend_sim_s2_attention", &S2AttnSimOps::s2_attention);
  m.impl("_ascend_sim_s2_attention_backward", &S2AttnSimOps::s2_attention_backward);
}

}  // namespace loraops
