// The scratch (sharedTmpBuffer) ReduceMax needs on Atlas A2, from how the
// 2201 implementation of the count form uses it: one (value, index) pair per
// 256-byte repeat of the input, then, with calIndex, each further reduction
// level's pairs at the next 32-byte boundary. Included by kernel_operator.h.
#pragma once

namespace AscendC {
namespace sim {

// Elements of T the count form of ReduceMax writes into its scratch.
template <class T>
int64_t reduce_scratch_elements(int64_t count, bool cal_index) {
  constexpr int64_t kPerRepeat = 256 / sizeof(T), kPerBlock = kBlockBytes / sizeof(T), kPair = 2;
  auto block_end = [](int64_t x) { return (x + kPerBlock - 1) / kPerBlock * kPerBlock; };
  auto pairs_of = [](int64_t values) { return kPair * ((values + kPerRepeat - 1) / kPerRepeat); };
  const int64_t repeats = (count + kPerRepeat - 1) / kPerRepeat;
  if (!cal_index) return kPair * repeats;  // first level in place; the last pair lands at 0
  if (repeats == 1) return 0;              // one repeat writes dst directly
  const int64_t first = kPair * repeats;   // level 1 at 0
  const int64_t second_at = block_end(first), second = pairs_of(first);
  if (second == kPair) return second_at + second;
  const int64_t third_at = block_end(second_at + second);
  if (second <= kPerRepeat) return third_at + kPair;
  const int64_t third = pairs_of(second);
  return block_end(third_at + third) + kPair;
}

template <class T>
void check_reduce_scratch(const LocalTensor<T>& tmp, int32_t count, bool cal_index, const char* what) {
  const int64_t need = std::max<int64_t>(reduce_scratch_elements<T>(count, cal_index), 1);
  if (tmp.GetSize() < need) {
    fail(cat(what, ": sharedTmpBuffer holds ", tmp.GetSize(), " elements; ", count, " elements",
             cal_index ? " with calIndex" : "", " need ", need));
  }
  check_operand(tmp, need, what);
}

}  // namespace sim
}  // namespace AscendC
