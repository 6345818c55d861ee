// loraops' NF4 ops for torch_npu tensors (dispatch key PrivateUse1): the Ascend
// C kernels of this folder, launched on torch_npu's current stream through its
// task queue. Built only with CANN (LORAOPS_ASCEND); the same kernels and host
// code (csrc/nf4/nf4_host_flow.h) are tested on CPU through kernels/ascend/sim.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "acl/acl.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"
#include "torch_npu/csrc/framework/OpCommand.h"

#include "aclrtlaunch_loraops_nf4_dequantize_bf16.h"
#include "aclrtlaunch_loraops_nf4_dequantize_fp16.h"
#include "aclrtlaunch_loraops_nf4_dequantize_fp32.h"
#include "aclrtlaunch_loraops_nf4_quantize_absmax.h"
#include "aclrtlaunch_loraops_nf4_quantize_bf16.h"
#include "aclrtlaunch_loraops_nf4_quantize_fp16.h"
#include "aclrtlaunch_loraops_nf4_quantize_fp32.h"
#include "csrc/nf4/nf4_host_flow.h"
#include "nf4_tiling.h"

namespace loraops {
namespace {

uint32_t vector_core_count(const at::Tensor& t) {
  int64_t cores = 0;
  const aclError status =
      aclGetDeviceCapability(static_cast<uint32_t>(t.device().index()), ACL_DEVICE_INFO_VECTOR_CORE_NUM, &cores);
  TORCH_CHECK(status == ACL_SUCCESS && cores > 0, "loraops: cannot read the NPU's vector core count (aclError ",
              status, ")");
  return static_cast<uint32_t>(cores);
}

void* ptr(const at::Tensor& t) { return t.defined() ? const_cast<void*>(t.const_data_ptr()) : nullptr; }

// Queues `launch` in order with torch_npu's other work; `keep` stays alive until it has run.
template <class Launch>
void enqueue(const char* name, std::vector<at::Tensor> keep, const Launch& launch) {
  aclrtStream stream = c10_npu::getCurrentNPUStream().stream(false);
  at_npu::native::OpCommand::RunOpApi(name, [stream, keep = std::move(keep), launch]() -> int {
    launch(stream);
    return 0;
  });
}

// The NPU side of the shared nf4_dequantize / nf4_dequantize_into ops.
struct NpuDequantize {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::PrivateUse1;

  static at::Tensor empty_output(at::IntArrayRef shape, at::TensorOptions options) {
    return at::empty(shape, options);
  }

  static void dequantize_into(const nf4::NF4Tensor& weight, int64_t n, at::Tensor& out) {
    const nf4::NF4Tensor w = nf4_detail::contiguous_parts(weight);
    const auto t = ascend::nf4_block_tiling(n, static_cast<uint32_t>(w.blocksize),
                                            static_cast<uint64_t>(w.nested_blocksize), w.double_quant(),
                                            vector_core_count(out));
    TORCH_CHECK_VALUE(!w.double_quant() || t.nested_blocksize != 0, "nf4_dequantize: nested_blocksize ",
                      w.nested_blocksize, " over more than 2^32 blocks is not supported on Ascend");
    const at::ScalarType dtype = out.scalar_type();
    void *pp = ptr(w.packed), *pa = ptr(w.absmax), *pn = ptr(w.nested_absmax), *pc = ptr(w.nested_code),
         *pf = ptr(w.offset), *po = ptr(out);
    enqueue("loraops_nf4_dequantize", {w.packed, w.absmax, w.nested_absmax, w.nested_code, w.offset, out},
            [=](aclrtStream stream) {
#define LORAOPS_LAUNCH(kernel)                                                                                  \
  ACLRT_LAUNCH_KERNEL(kernel)(t.block_dim, stream, pp, pa, pn, pc, pf, po, t.n, t.num_blocks, t.blocks_per_core, \
                              t.blocksize, t.nested_blocksize, t.double_quant, t.tile_blocks)
              if (dtype == at::kFloat) {
                LORAOPS_LAUNCH(loraops_nf4_dequantize_fp32);
              } else if (dtype == at::kBFloat16) {
                LORAOPS_LAUNCH(loraops_nf4_dequantize_bf16);
              } else {
                LORAOPS_LAUNCH(loraops_nf4_dequantize_fp16);
              }
#undef LORAOPS_LAUNCH
            });
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nf4_quantize_npu(const at::Tensor& input,
                                                                            int64_t blocksize, bool double_quant) {
  const at::ScalarType dtype = input.scalar_type();
  const uint32_t cores = vector_core_count(input);
  return nf4_detail::quantize_on_device(
      input, blocksize, double_quant,
      [dtype, cores, blocksize](const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax) {
        const auto t = ascend::nf4_block_tiling(x.numel(), static_cast<uint32_t>(blocksize), kNestedBlocksize,
                                                     false, cores);
        void *px = ptr(x), *pp = ptr(packed), *pa = ptr(absmax);
        enqueue("loraops_nf4_quantize", {x, packed, absmax}, [=](aclrtStream stream) {
#define LORAOPS_LAUNCH(kernel) \
  ACLRT_LAUNCH_KERNEL(kernel)(t.block_dim, stream, px, pp, pa, t.n, t.num_blocks, t.blocks_per_core, t.blocksize, t.tile_blocks)
          if (dtype == at::kFloat) {
            LORAOPS_LAUNCH(loraops_nf4_quantize_fp32);
          } else if (dtype == at::kBFloat16) {
            LORAOPS_LAUNCH(loraops_nf4_quantize_bf16);
          } else {
            LORAOPS_LAUNCH(loraops_nf4_quantize_fp16);
          }
#undef LORAOPS_LAUNCH
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
