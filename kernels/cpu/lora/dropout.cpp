#include "dropout.h"

#include <algorithm>

namespace loraops::cpu {

namespace {

// One run of indices sharing the high 32 bits (so the key is constant and the
// loop vectorizes).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void apply_run(const float* in, float* out, int64_t n, uint32_t first_low, uint32_t key, uint32_t threshold,
               float scale) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = dropout::mix32((first_low + static_cast<uint32_t>(i)) ^ key);
    out[i] = bits >= threshold ? in[i] * scale : 0.0f;
  }
}

}  // namespace

void dropout_apply(const float* in, float* out, int64_t n, uint64_t first_index, uint64_t seed, uint32_t threshold,
                   float scale) {
  int64_t done = 0;
  while (done < n) {
    const uint64_t index = first_index + static_cast<uint64_t>(done);
    const uint64_t to_boundary = (uint64_t{1} << 32) - (index & 0xFFFFFFFFu);
    const int64_t run = static_cast<int64_t>(std::min<uint64_t>(to_boundary, static_cast<uint64_t>(n - done)));
    apply_run(in + done, out + done, run, static_cast<uint32_t>(index), dropout::key(seed, index), threshold, scale);
    done += run;
  }
}

}  // namespace loraops::cpu
