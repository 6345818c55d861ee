// Ascend C MIX kernel (per block one AI cube core and its two vector cores):
// QLoRA's forward without dequantizing the whole NF4 weight,
//
//   y [m, n] = x [m, k] W^T + [s xa | 1] [B | bias]^T      (W [n, k] in NF4, rounded once into T)
//
// Each block takes a run of 128-row strips of W (128 output features). For a
// strip, the two vector cores dequantize 64 rows each into one of the block's
// two workspace slots in GM (T [128, k]) and flag the cube core; it multiplies
// every 128-row tile of x by the strip and adds the low-rank term in the same
// L0C tile (FusedTile, lora_fused_kernel.h), writes y's tiles, and flags the
// slot free. With two slots (one where a core takes a single strip) the vector
// cores dequantize the next strip while the cube multiplies this one. Needs k to be a multiple of the NF4 blocksize, so that
// a strip is whole NF4 blocks (the host flow dequantizes whole otherwise).
#pragma once

#include "kernel_operator.h"
// By relative path, as the other kernels: the sources compile as they are.
#include "../common/cube_matmul.h"
#include "../nf4/nf4_dequantize_kernel.h"
#include "lora_fused_kernel.h"
#include "lora_kernels.h"
#include "lora_tiling.h"

namespace loraops::ascend {

// Cross-core flags (mode 2: a block's cube core and its vector cores), one per slot.
constexpr uint16_t kStripReadyFlag[2] = {2, 3};  // vector cores -> cube: the strip is in its slot
constexpr uint16_t kSlotFreeFlag[2] = {4, 5};    // cube -> vector cores: the slot may be overwritten
constexpr uint32_t kStripRows = kLoraMatmulTileN;

// A block's run of 128-wide strips of `extent` rows or columns, and the last
// slot-free flags the cube raises for it, which the vector cores take at the end
// so that none is left pending.
struct StripRun {
  uint64_t first, end;

  __aicore__ inline StripRun(uint64_t extent, uint64_t block, uint64_t strips_per_core) {
    const uint64_t strips = (extent + kStripRows - 1) / kStripRows;
    first = block * strips_per_core;
    end = first + strips_per_core < strips ? first + strips_per_core : strips;
    if (first > end) first = end;
  }
  __aicore__ inline void TakeLastFreeFlags() const {
    for (uint64_t strip = end > first + 2 ? end - 2 : first; strip < end; ++strip) {
      AscendC::CrossCoreWaitFlag(kSlotFreeFlag[(strip - first) % 2]);
    }
  }
};

// The NF4 dequantize kernel's tiling for the whole weight W [t.n, t.k]: the
// vector cores then dequantize strips of it (SetBlocks, ProcessColumns).
__aicore__ inline NF4BlockTiling WeightTiling(const LoraNF4FusedTiling& t) {
  NF4BlockTiling nf4;
  nf4.n = t.n * t.k;
  nf4.blocksize = t.blocksize;
  nf4.num_blocks = nf4.n / t.blocksize;
  nf4.nested_blocksize = t.nested_blocksize;
  nf4.double_quant = t.double_quant;
  nf4.tile_blocks = t.tile_blocks;
  nf4.blocks_per_core = nf4.num_blocks;
  return nf4;
}

template <class T>
__aicore__ inline void LoraNF4FusedVectorSide(GM_ADDR packed, GM_ADDR absmax, GM_ADDR nested_absmax,
                                              GM_ADDR nested_code, GM_ADDR offset, GM_ADDR workspace,
                                              const LoraNF4FusedTiling& t) {
  using namespace AscendC;
  const uint64_t block = static_cast<uint64_t>(GetBlockIdx()) / 2, half = GetSubBlockIdx();
  TPipe pipe;
  NF4DequantizeKernel<T> dequantize;
  // Its output is set per strip (SetBlocks) to a slot of this core's workspace.
  dequantize.Init(packed, absmax, nested_absmax, nested_code, offset, workspace, WeightTiling(t), &pipe);
  const uint64_t slot_count = lora_nf4_slots(t);
  GlobalTensor<T> slots;
  slots.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(workspace) + block * slot_count * kStripRows * t.k,
                        slot_count * kStripRows * t.k);
  const StripRun run(t.n, block, t.strips_per_core);
  const uint64_t first = run.first, end = run.end;
  const uint64_t blocks_per_row = t.k / t.blocksize;
  for (uint64_t strip = first; strip < end; ++strip) {
    const uint32_t slot = (strip - first) % 2;
    if (strip - first >= 2) CrossCoreWaitFlag(kSlotFreeFlag[slot]);
    // This vector core's half of the strip's rows.
    const uint64_t row0 = strip * kStripRows + half * (kStripRows / 2);
    const uint64_t row1 = row0 + kStripRows / 2 < t.n ? row0 + kStripRows / 2 : t.n;
    if (row0 < row1) {
      dequantize.SetBlocks(row0 * blocks_per_row, row1 * blocks_per_row,
                           slots[(slot * kStripRows + half * (kStripRows / 2)) * t.k]);
      dequantize.Process();
    }
    CrossCoreSetFlag<2, PIPE_MTE3>(kStripReadyFlag[slot]);
  }
  // The cube's last flags: taken, so that none is left pending.
  run.TakeLastFreeFlags();
}

template <class T>
__aicore__ inline void LoraNF4FusedCubeSide(GM_ADDR x, GM_ADDR xe, GM_ADDR be, GM_ADDR y, GM_ADDR workspace,
                                            const LoraNF4FusedTiling& t) {
  using namespace AscendC;
  const uint64_t block = static_cast<uint64_t>(GetBlockIdx());
  GlobalTensor<T> x_gm, y_gm, slots;
  GlobalTensor<float> xe_gm, be_gm;
  x_gm.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(x));
  y_gm.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(y));
  xe_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(xe));
  be_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(be));
  slots.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(workspace) + block * lora_nf4_slots(t) * kStripRows * t.k);
  TPipe pipe;
  FusedTile<T> tile;
  tile.Init(&pipe);
  const StripRun run(t.n, block, t.strips_per_core);
  const uint64_t first = run.first, end = run.end;
  for (uint64_t strip = first; strip < end; ++strip) {
    const uint32_t slot = (strip - first) % 2;
    const uint64_t n0 = strip * kStripRows;
    const uint32_t tn = static_cast<uint32_t>(t.n - n0 < kStripRows ? t.n - n0 : kStripRows);
    CrossCoreWaitFlag(kStripReadyFlag[slot]);
    for (uint64_t m0 = 0; m0 < t.m; m0 += kLoraMatmulTileM) {
      const uint32_t tm = static_cast<uint32_t>(t.m - m0 < kLoraMatmulTileM ? t.m - m0 : kLoraMatmulTileM);
      tile.Compute(x_gm[m0 * t.k], slots[slot * kStripRows * t.k], xe_gm[m0 * t.ke], be_gm[n0 * t.ke],
                   y_gm[m0 * t.n + n0], tm, tn, t.k, t.k, t.k, t.ke, t.ke, t.ke, t.n, false);
    }
    CrossCoreSetFlag<2, PIPE_FIX>(kSlotFreeFlag[slot]);
  }
}

// QLoRA's dx = dy W (+ d_xa A) the same way, by column strips of W: per strip
// of 128 columns of W (128 columns of dx), the vector cores dequantize all n
// rows of the strip (each half of them, the NF4 blocks of a row's 128 columns
// gathered by strided copies) into a slot [n, 128]; the cube multiplies every
// 128-row tile of dy by it, adds d_xa A's columns, and writes dx's tiles. Needs
// k a multiple of the blocksize and the blocksize at most 128. Here t.n is W's
// rows (the product's depth), t.k its columns, t.ke the low-rank width (0: none).
template <class T>
__aicore__ inline void LoraNF4DxVectorSide(GM_ADDR packed, GM_ADDR absmax, GM_ADDR nested_absmax, GM_ADDR nested_code,
                                           GM_ADDR offset, GM_ADDR workspace, const LoraNF4FusedTiling& t) {
  using namespace AscendC;
  const uint64_t block = static_cast<uint64_t>(GetBlockIdx()) / 2, half = GetSubBlockIdx();
  TPipe pipe;
  NF4DequantizeKernel<T> dequantize;
  dequantize.Init(packed, absmax, nested_absmax, nested_code, offset, workspace, WeightTiling(t), &pipe);
  const uint64_t slot_elements = t.n * kStripRows, slot_count = lora_nf4_slots(t);
  GlobalTensor<T> slots;
  slots.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(workspace) + block * slot_count * slot_elements,
                        slot_count * slot_elements);
  const StripRun run(t.k, block, t.strips_per_core);
  const uint64_t first = run.first, end = run.end;
  const uint64_t half_rows = (t.n + 1) / 2;
  const uint64_t row0 = half * half_rows, row1 = row0 + half_rows < t.n ? row0 + half_rows : t.n;
  for (uint64_t strip = first; strip < end; ++strip) {
    const uint32_t slot = (strip - first) % 2;
    if (strip - first >= 2) CrossCoreWaitFlag(kSlotFreeFlag[slot]);
    const uint64_t col0 = strip * kStripRows;
    const uint64_t width = t.k - col0 < kStripRows ? t.k - col0 : kStripRows;
    if (row0 < row1) {
      dequantize.ProcessColumns(row0, row1, t.k / t.blocksize, col0 / t.blocksize,
                                static_cast<uint32_t>(width / t.blocksize), slots[slot * slot_elements + row0 * width]);
    }
    CrossCoreSetFlag<2, PIPE_MTE3>(kStripReadyFlag[slot]);
  }
  run.TakeLastFreeFlags();
}

template <class T>
__aicore__ inline void LoraNF4DxCubeSide(GM_ADDR dy, GM_ADDR d_xa, GM_ADDR a, GM_ADDR dx, GM_ADDR workspace,
                                         const LoraNF4FusedTiling& t) {
  using namespace AscendC;
  const uint64_t block = static_cast<uint64_t>(GetBlockIdx());
  const uint64_t slot_elements = t.n * kStripRows;
  GlobalTensor<T> dy_gm, dx_gm, slots;
  GlobalTensor<float> d_xa_gm, a_gm;
  dy_gm.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(dy));
  dx_gm.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(dx));
  d_xa_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(d_xa));
  a_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(a));
  slots.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(workspace) + block * lora_nf4_slots(t) * slot_elements);
  TPipe pipe;
  FusedTile<T> tile;
  tile.Init(&pipe);
  const StripRun run(t.k, block, t.strips_per_core);
  const uint64_t first = run.first, end = run.end;
  for (uint64_t strip = first; strip < end; ++strip) {
    const uint32_t slot = (strip - first) % 2;
    const uint64_t col0 = strip * kStripRows;
    const uint32_t width = static_cast<uint32_t>(t.k - col0 < kStripRows ? t.k - col0 : kStripRows);
    CrossCoreWaitFlag(kStripReadyFlag[slot]);
    for (uint64_t m0 = 0; m0 < t.m; m0 += kLoraMatmulTileM) {
      const uint32_t tm = static_cast<uint32_t>(t.m - m0 < kLoraMatmulTileM ? t.m - m0 : kLoraMatmulTileM);
      // dy [tm, n] . slot [n, width] + d_xa [tm, ke] . A [ke, col0 .. col0 + width)
      tile.Compute(dy_gm[m0 * t.n], slots[slot * slot_elements], d_xa_gm[m0 * t.ke], a_gm[col0], dx_gm[m0 * t.k + col0],
                   tm, width, t.n, t.n, width, t.ke, t.ke, t.k, t.k, true);
    }
    CrossCoreSetFlag<2, PIPE_FIX>(kSlotFreeFlag[slot]);
  }
}

}  // namespace loraops::ascend

#define LORAOPS_LORA_NF4_FUSED_TILING              \
  loraops::ascend::LoraNF4FusedTiling tiling;      \
  tiling.m = m;                                    \
  tiling.n = n;                                    \
  tiling.k = k;                                    \
  tiling.ke = ke;                                  \
  tiling.blocksize = blocksize;                    \
  tiling.nested_blocksize = nested_blocksize;      \
  tiling.double_quant = double_quant;              \
  tiling.tile_blocks = tile_blocks;                \
  tiling.strips_per_core = strips_per_core

#define LORAOPS_LORA_NF4_FUSED_ENTRY(name, T)                                                          \
  extern "C" __global__ __aicore__ void name(LORAOPS_LORA_NF4_FUSED_PARAMS) {                          \
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_2);                                                 \
    LORAOPS_LORA_NF4_FUSED_TILING;                                                                     \
    if ASCEND_IS_AIV {                                                                                 \
      loraops::ascend::LoraNF4FusedVectorSide<T>(packed, absmax, nested_absmax, nested_code, offset,   \
                                                 workspace, tiling);                                   \
    }                                                                                                  \
    if ASCEND_IS_AIC {                                                                                 \
      loraops::ascend::LoraNF4FusedCubeSide<T>(x, xe, be, y, workspace, tiling);                       \
    }                                                                                                  \
  }

#define LORAOPS_LORA_NF4_FUSED_DX_ENTRY(name, T)                                                         \
  extern "C" __global__ __aicore__ void name(LORAOPS_LORA_NF4_FUSED_PARAMS) {                           \
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_2);                                                  \
    LORAOPS_LORA_NF4_FUSED_TILING;                                                                      \
    if ASCEND_IS_AIV {                                                                                  \
      loraops::ascend::LoraNF4DxVectorSide<T>(packed, absmax, nested_absmax, nested_code, offset,       \
                                              workspace, tiling);                                       \
    }                                                                                                   \
    if ASCEND_IS_AIC {                                                                                  \
      loraops::ascend::LoraNF4DxCubeSide<T>(x, xe, be, y, workspace, tiling);                           \
    }                                                                                                   \
  }
