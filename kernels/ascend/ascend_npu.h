// What every NPU host file of this backend needs from torch_npu and ACL: core
// counts, the device guard, and a launch queued on torch_npu's current stream.
// Built only with CANN (LORAOPS_ASCEND).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceGuard.h>

#include <utility>
#include <vector>

#include "acl/acl.h"
#include "torch_npu/csrc/core/npu/NPUStream.h"
#include "torch_npu/csrc/framework/OpCommand.h"

namespace loraops::ascend_npu {

// torch_npu registers the PrivateUse1 guard implementation this dispatches to.
using Guard = c10::DeviceGuard;

inline uint32_t device_count_of(const at::Tensor& t, aclDeviceInfo what, const char* name) {
  int64_t cores = 0;
  const aclError status = aclGetDeviceCapability(static_cast<uint32_t>(t.device().index()), what, &cores);
  TORCH_CHECK(status == ACL_SUCCESS && cores > 0, "loraops: cannot read the NPU's ", name, " count (aclError ",
              status, ")");
  return static_cast<uint32_t>(cores);
}

inline uint32_t vector_core_count(const at::Tensor& t) {
  return device_count_of(t, ACL_DEVICE_INFO_VECTOR_CORE_NUM, "vector core");
}
inline uint32_t cube_core_count(const at::Tensor& t) {
  return device_count_of(t, ACL_DEVICE_INFO_AI_CORE_NUM, "AI core");
}

inline void* ptr(const at::Tensor& t) { return t.defined() ? const_cast<void*>(t.const_data_ptr()) : nullptr; }

// Queues `launch` in order with torch_npu's other work; `keep` stays alive until it has run.
template <class Launch>
void enqueue(const char* name, std::vector<at::Tensor> keep, const Launch& launch) {
  aclrtStream stream = c10_npu::getCurrentNPUStream().stream(false);
  at_npu::native::OpCommand::RunOpApi(name, [stream, keep = std::move(keep), launch]() -> int {
    launch(stream);
    return 0;
  });
}

}  // namespace loraops::ascend_npu

// One launch of the kernel family `name` (entry points name_fp32, name_bf16,
// name_fp16) in `dtype`, through the aclrtlaunch_* functions CANN generates.
#define LORAOPS_ASCEND_LAUNCH_BY_DTYPE(dtype, name, ...) \
  if ((dtype) == at::kFloat) {                           \
    ACLRT_LAUNCH_KERNEL(name##_fp32)(__VA_ARGS__);       \
  } else if ((dtype) == at::kBFloat16) {                 \
    ACLRT_LAUNCH_KERNEL(name##_bf16)(__VA_ARGS__);       \
  } else {                                               \
    ACLRT_LAUNCH_KERNEL(name##_fp16)(__VA_ARGS__);       \
  }
