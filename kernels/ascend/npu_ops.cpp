// loraops' NF4 ops for torch_npu tensors (dispatch key PrivateUse1): the Ascend
// C kernels of this folder, launched on torch_npu's current stream through its
// task queue. Built only with CANN (LORAOPS_ASCEND); the same kernels are tested
// on CPU through kernels/ascend/sim.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "acl/acl.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"
#include "torch_npu/csrc/framework/OpCommand.h"

#include "aclrtlaunch_loraops_nf4_dequantize_bf16.h"
#include "aclrtlaunch_loraops_nf4_dequantize_fp16.h"
#include "aclrtlaunch_loraops_nf4_dequantize_fp32.h"
#include "nf4/nf4_checks.h"
#include "nf4_tiling.h"

namespace loraops {
namespace {

uint32_t vector_core_count(const at::Tensor& t) {
  int64_t cores = 0;
  const aclError status =
      aclGetDeviceCapability(static_cast<uint32_t>(t.device().index()), ACL_DEVICE_INFO_VECTOR_CORE_NUM, &cores);
  TORCH_CHECK(status == ACL_SUCCESS && cores > 0, "nf4_dequantize: cannot read the NPU's vector core count (aclError ",
              status, ")");
  return static_cast<uint32_t>(cores);
}

void dequantize_into_npu(const at::Tensor& packed_in, const at::Tensor& absmax_in,
                         const std::optional<at::Tensor>& nested_absmax, const std::optional<at::Tensor>& nested_code,
                         const std::optional<at::Tensor>& offset, int64_t blocksize, int64_t nested_blocksize,
                         int64_t n, at::Tensor& out) {
  if (n == 0) return;
  const at::Tensor packed = packed_in.contiguous(), absmax = absmax_in.contiguous();
  const bool dq = nested_absmax.has_value();
  const at::Tensor nested = dq ? nested_absmax->contiguous() : at::Tensor();
  const at::Tensor code = dq ? nested_code->contiguous() : at::Tensor();
  const at::Tensor off = dq ? offset->to(packed.device()).contiguous() : at::Tensor();
  const auto t = ascend::nf4_dequantize_tiling(static_cast<uint64_t>(n), static_cast<uint32_t>(blocksize),
                                               static_cast<uint32_t>(nested_blocksize), dq, vector_core_count(out));
  void* p_packed = packed.data_ptr();
  void* p_absmax = absmax.data_ptr();
  void* p_nested = dq ? nested.data_ptr() : nullptr;
  void* p_code = dq ? code.data_ptr() : nullptr;
  void* p_offset = dq ? off.data_ptr() : nullptr;
  void* p_out = out.data_ptr();
  const at::ScalarType dtype = out.scalar_type();
  aclrtStream stream = c10_npu::getCurrentNPUStream().stream(false);
  // Queued in order with torch_npu's other work; the tensors captured here stay alive until it has run.
  auto launch = [=, keep = std::vector<at::Tensor>{packed, absmax, nested, code, off, out}]() -> int {
#define LORAOPS_LAUNCH(kernel)                                                                                      \
  ACLRT_LAUNCH_KERNEL(kernel)(t.block_dim, stream, p_packed, p_absmax, p_nested, p_code, p_offset, p_out, t.n,      \
                              t.num_blocks, t.blocks_per_core, t.blocksize, t.nested_blocksize, t.double_quant, \
                              t.tile_blocks)
    if (dtype == at::kFloat) {
      LORAOPS_LAUNCH(loraops_nf4_dequantize_fp32);
    } else if (dtype == at::kBFloat16) {
      LORAOPS_LAUNCH(loraops_nf4_dequantize_bf16);
    } else {
      LORAOPS_LAUNCH(loraops_nf4_dequantize_fp16);
    }
#undef LORAOPS_LAUNCH
    return 0;
  };
  at_npu::native::OpCommand::RunOpApi("loraops_nf4_dequantize", launch);
}

at::Tensor nf4_dequantize_npu(const at::Tensor& packed, const at::Tensor& absmax,
                              const std::optional<at::Tensor>& nested_absmax,
                              const std::optional<at::Tensor>& nested_code, const std::optional<at::Tensor>& offset,
                              int64_t blocksize, int64_t nested_blocksize, c10::SymIntArrayRef shape,
                              at::ScalarType dtype) {
  const int64_t n = nf4_detail::check_dequantize_args(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                                      nested_blocksize, shape, dtype);
  at::Tensor out = at::empty(C10_AS_INTARRAYREF_SLOW(shape), packed.options().dtype(dtype));
  dequantize_into_npu(packed, absmax, nested_absmax, nested_code, offset, blocksize, nested_blocksize, n, out);
  return out;
}

void nf4_dequantize_into_npu(const at::Tensor& packed, const at::Tensor& absmax,
                             const std::optional<at::Tensor>& nested_absmax,
                             const std::optional<at::Tensor>& nested_code, const std::optional<at::Tensor>& offset,
                             int64_t blocksize, int64_t nested_blocksize, at::Tensor& out) {
  const int64_t n = nf4_detail::check_dequantize_args(packed, absmax, nested_absmax, nested_code, offset, blocksize,
                                                      nested_blocksize, out.sym_sizes(), out.scalar_type());
  TORCH_CHECK_VALUE(out.is_contiguous(), "nf4_dequantize: out must be contiguous");
  TORCH_CHECK_VALUE(out.device() == packed.device(), "nf4_dequantize: out must be on ", packed.device(), ", got ",
                    out.device());
  dequantize_into_npu(packed, absmax, nested_absmax, nested_code, offset, blocksize, nested_blocksize, n, out);
}

}  // namespace

TORCH_LIBRARY_IMPL(loraops, PrivateUse1, m) {
  m.impl("nf4_dequantize", &nf4_dequantize_npu);
  m.impl("nf4_dequantize_into", &nf4_dequantize_into_npu);
}

}  // namespace loraops
