// loraops' NF4 ops for torch_npu tensors (dispatch key PrivateUse1): the Ascend
// C kernels of this folder, launched on torch_npu's current stream through its
// task queue. Built only with CANN (LORAOPS_ASCEND); the same kernels and host
// code (csrc/nf4/nf4_host_flow.h) are tested on CPU through kernels/ascend/sim.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "aclrtlaunch_loraops_nf4_quantize_absmax.h"
#include "aclrtlaunch_loraops_nf4_quantize_bf16.h"
#include "aclrtlaunch_loraops_nf4_quantize_fp16.h"
#include "aclrtlaunch_loraops_nf4_quantize_fp32.h"
#include "csrc/nf4/nf4_host_flow.h"
#include "nf4_ascend_ops.h"
#include "nf4_npu.h"

namespace loraops {
namespace {

using ascend_npu::enqueue;
using ascend_npu::ptr;
using NpuDequantize = ascend::AscendNF4Dequantize<ascend_npu::NF4Launcher>;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nf4_quantize_npu(const at::Tensor& input,
                                                                            int64_t blocksize, bool double_quant) {
  const at::ScalarType dtype = input.scalar_type();
  const uint32_t cores = ascend_npu::vector_core_count(input);
  return nf4_detail::quantize_on_device(
      input, blocksize, double_quant,
      [dtype, cores, blocksize](const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax) {
        const auto t = ascend::nf4_block_tiling(x.numel(), static_cast<uint32_t>(blocksize), kNestedBlocksize,
                                                     false, cores);
        void *px = ptr(x), *pp = ptr(packed), *pa = ptr(absmax);
        enqueue("loraops_nf4_quantize", {x, packed, absmax}, [=](aclrtStream stream) {
          LORAOPS_ASCEND_LAUNCH_BY_DTYPE(dtype, loraops_nf4_quantize, t.block_dim, stream, px, pp, pa, t.n,
                                         t.num_blocks, t.blocks_per_core, t.blocksize, t.tile_blocks)
        });
      },
      [cores](const at::Tensor& centered, const at::Tensor& bounds, const at::Tensor& codes,
              const at::Tensor& nested_absmax) {
        const auto t = ascend::nf4_block_tiling(centered.numel(), kNestedBlocksize, kNestedBlocksize, false, cores);
        void *pc = ptr(centered), *pb = ptr(bounds), *po = ptr(codes), *pn = ptr(nested_absmax);
        enqueue("loraops_nf4_quantize_absmax", {centered, bounds, codes, nested_absmax}, [=](aclrtStream stream) {
          ACLRT_LAUNCH_KERNEL(loraops_nf4_quantize_absmax)(t.block_dim, stream, pc, pb, po, pn, t.n, t.num_blocks,
                                                           t.blocks_per_core, t.blocksize, t.tile_blocks);
        });
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(loraops, PrivateUse1, m) {
  m.impl("nf4_quantize", &nf4_quantize_npu);
  m.impl("nf4_dequantize", &nf4_detail::NF4DequantizeOps<NpuDequantize>::dequantize);
  m.impl("nf4_dequantize_into", &nf4_detail::NF4DequantizeOps<NpuDequantize>::dequantize_into);
}

}  // namespace loraops
