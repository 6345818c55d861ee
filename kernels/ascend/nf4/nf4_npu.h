// The NF4 kernels' launches on torch_npu's stream, shared by the NF4 ops
// (nf4_npu.cpp) and the LoRA ops (../lora/lora_npu.cpp), which dequantize
// through them. Built only with CANN (LORAOPS_ASCEND).
#pragma once

#include "../ascend_npu.h"
#include "aclrtlaunch_loraops_nf4_dequantize_bf16.h"
#include "aclrtlaunch_loraops_nf4_dequantize_fp16.h"
#include "aclrtlaunch_loraops_nf4_dequantize_fp32.h"
#include "csrc/nf4/nf4_checks.h"
#include "nf4_tiling.h"

namespace loraops::ascend_npu {

struct NF4Launcher {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::PrivateUse1;

  static uint32_t vector_cores(const at::Tensor& t) { return vector_core_count(t); }

  static void nf4_dequantize(const ascend::NF4BlockTiling& t, const nf4::NF4Tensor& w, const at::Tensor& out) {
    const at::ScalarType dtype = out.scalar_type();
    void *pp = ptr(w.packed), *pa = ptr(w.absmax), *pn = ptr(w.nested_absmax), *pc = ptr(w.nested_code),
         *pf = ptr(w.offset), *po = ptr(out);
    enqueue("loraops_nf4_dequantize", {w.packed, w.absmax, w.nested_absmax, w.nested_code, w.offset, out},
            [=](aclrtStream stream) {
              LORAOPS_ASCEND_LAUNCH_BY_DTYPE(dtype, loraops_nf4_dequantize, t.block_dim, stream, pp, pa, pn, pc, pf,
                                             po, t.n, t.num_blocks, t.blocks_per_core, t.blocksize,
                                             t.nested_blocksize, t.double_quant, t.tile_blocks)
            });
  }
};

}  // namespace loraops::ascend_npu
