// The counter-based dropout mask (lora/dropout_hash.h) applied to fp32 rows.
#pragma once

#include <cstdint>

#include "csrc/lora/dropout_hash.h"

namespace loraops::cpu {

// out[i] = keep(first_index + i) ? in[i] * scale : 0, for i in [0, n). in may equal out.
void dropout_apply(const float* in, float* out, int64_t n, uint64_t first_index, uint64_t seed, uint32_t threshold,
                   float scale);

}  // namespace loraops::cpu
