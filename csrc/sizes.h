// Size arithmetic for the ops' checks and host flows, overflow-checked: a size
// that does not fit is an error naming what it is, never a wrapped count that
// a kernel then writes past.
#pragma once

#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace loraops {

// ceil(a / b) for a >= 0 and b >= 1, without the overflow of (a + b - 1) / b.
inline int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

// Bytes of packed 4-bit codes for n elements: ceil(n / 2).
inline int64_t packed_nibble_bytes(int64_t n) { return ceil_div(n, 2); }

// The elements of a tensor of `sizes` (each checked non-negative), when it and
// its bytes at `element_bytes` each fit int64 (0 when any size is 0, however
// large the others); otherwise a ValueError "<op>: <what> of shape [...] ...".
inline int64_t checked_numel(c10::ArrayRef<int64_t> sizes, int64_t element_bytes, const char* op, const char* what) {
  bool empty = false;
  for (const int64_t s : sizes) {
    TORCH_CHECK_VALUE(s >= 0, op, ": ", what, " must not have negative sizes, got ", sizes);
    empty = empty || s == 0;
  }
  if (empty) return 0;
  int64_t n = 1;
  bool overflow = false;
  for (const int64_t s : sizes) overflow = overflow || __builtin_mul_overflow(n, s, &n);
  int64_t bytes = 0;
  overflow = overflow || __builtin_mul_overflow(n, element_bytes, &bytes);
  TORCH_CHECK_VALUE(!overflow, op, ": ", what, " of shape ", sizes, " would have more than 2^63 bytes at ",
                    element_bytes, " per element");
  return n;
}

}  // namespace loraops
