// The S2-Attn kernels' plan: what the host writes into one int64 tensor in
// device memory and the kernels read with scalar loads. Plain C++, shared by
// the host (s2attn_ascend_ops.h) and the kernels (s2attn_forward_kernel.h,
// s2attn_backward_kernel.h). The forward and the backward take the same items.
//
//   [0, kHeader)                       the fields below
//   [kHeader, kHeader + cores + 1)     each core's first item; the last entry is the item count
//   then items, kItemFields each       (sample, head, segment start, segment length, first row, sample length)
#pragma once

#include <cstdint>

namespace loraops::ascend {

// A work item is one block of up to kS2BlockQ query rows of a segment; it
// walks the segment's keys in blocks of kS2BlockK. Each of the AI core's two
// vector cores takes half of the rows.
constexpr uint32_t kS2BlockQ = 64;
constexpr uint32_t kS2BlockK = 128;
constexpr uint32_t kS2RowsPerVector = kS2BlockQ / 2;
constexpr uint32_t kS2MaxHeadDim = 256;

// Header fields.
enum S2PlanField : uint32_t {
  kS2Cores = 0,
  kS2HeadDim,
  kS2Heads,
  kS2HeadsPerKv,
  kS2Causal,
  kS2Seq,  // N: lse is [B, H, N]
  kS2QStrideB, kS2QStrideN, kS2QStrideH,
  kS2KStrideB, kS2KStrideN, kS2KStrideH,
  kS2VStrideB, kS2VStrideN, kS2VStrideH,
  kS2OStrideB, kS2OStrideN, kS2OStrideH,
  kS2GStrideB, kS2GStrideN, kS2GStrideH,  // grad_out (the backward; the forward's plan repeats out's)
  kS2KvHeads,
  kS2Header
};

enum S2ItemField : uint32_t { kS2ItemB = 0, kS2ItemHead, kS2ItemStart, kS2ItemLength, kS2ItemRow0, kS2ItemN, kS2ItemFields };

// Head dim rounded up to 16 elements: rows of fp32 and of 16-bit data start
// 32-byte aligned in UB and the workspace.
inline constexpr uint32_t s2_padded_dim(uint32_t d) { return (d + 15) / 16 * 16; }

// Workspace per AI core, in floats: scores [kS2BlockQ, kS2BlockK] fp32,
// probabilities [kS2BlockQ, kS2BlockK] in the input type (a float slot),
// the block's P V [kS2BlockQ, padded D] fp32.
inline constexpr uint64_t s2_workspace_floats(uint32_t d) {
  return uint64_t{2} * kS2BlockQ * kS2BlockK + uint64_t{kS2BlockQ} * s2_padded_dim(d);
}

// Backward workspace per AI core, in floats: S and dP [kS2BlockQ, kS2BlockK]
// fp32, P and dS [kS2BlockQ, kS2BlockK] in the input type (a float slot each).
inline constexpr uint64_t s2_backward_workspace_floats() { return uint64_t{4} * kS2BlockQ * kS2BlockK; }

}  // namespace loraops::ascend
