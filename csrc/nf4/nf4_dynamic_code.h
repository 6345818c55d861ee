// bitsandbytes' signed dynamic 8-bit map, the code of double-quantized absmax.
#pragma once

#include <ATen/core/Tensor.h>

#include "nf4_format.h"

namespace loraops {

using nf4_format::kNestedBlocksize;

// 256 fp32 values, sorted; built with the same torch ops bitsandbytes'
// create_dynamic_map() uses, so the values agree bit for bit. Cached.
const at::Tensor& dynamic_code_cpu();

}  // namespace loraops
