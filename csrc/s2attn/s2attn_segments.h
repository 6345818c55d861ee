// Where each head of shifted short attention (LongLoRA's S2-Attn) attends: the
// segments of one sample, shared by every backend. No torch headers.
//
// A segment is `length` consecutive rows t = 0, 1, ... at sequence positions
// (start + t) mod n; attention is causal in t within a segment. Every head's
// segments partition [0, n).
#pragma once

#include <algorithm>
#include <cstdint>

namespace loraops::s2attn {

enum class Mode : int {
  // LongLoRA's flash-attention path: shifted heads use [0, s), [s, s+G), ...
  // with s = G / 2, the last segment ending at n. No wrap-around.
  kSegments = 0,
  // LongLoRA's eager path: shifted heads are rolled by -s, grouped by G, causal
  // within groups, rolled back by +s. A group may wrap around the sequence end.
  kRoll = 1,
};

struct Segment {
  int64_t start;
  int64_t length;
};

// Heads [0, H/2) keep the unshifted grouping; heads [H/2, H) are shifted.
inline bool is_shifted_head(int64_t head, int64_t num_heads) { return head >= num_heads / 2; }

// Calls fn(Segment) for every segment of one head in a sample of n tokens.
// A group at least as long as the sample means plain attention over it.
template <class Fn>
void for_each_segment(Mode mode, bool shifted, int64_t n, int64_t group, Fn&& fn) {
  if (n <= 0) return;
  const int64_t shift = (shifted && group < n) ? group / 2 : 0;
  if (shift == 0 || mode == Mode::kSegments) {
    if (shift > 0) fn(Segment{0, shift});
    for (int64_t s = shift; s < n; s += group) fn(Segment{s, std::min(group, n - s)});
    return;
  }
  for (int64_t p = 0; p < n; p += group) fn(Segment{(p + shift) % n, std::min(group, n - p)});
}

// Position of row t of a segment.
inline int64_t segment_position(const Segment& seg, int64_t t, int64_t n) {
  const int64_t p = seg.start + t;
  return p < n ? p : p - n;
}

}  // namespace loraops::s2attn
