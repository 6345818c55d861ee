// Host-side tiling of the LoRA Ascend C kernels: how their work is split across
// cores. Plain C++, shared by the CANN build, the emulation and the kernels.
#pragma once

#include <stdint.h>

namespace loraops::ascend {

// `items` split into runs of consecutive items, one run per core.
struct CoreRuns {
  uint64_t per_core = 1;  // items per core (the last core may get fewer)
  uint32_t cores = 1;     // cores used
};
inline CoreRuns core_runs(uint64_t items, uint32_t cores) {
  CoreRuns r;
  const uint64_t c = cores > 0 ? cores : 1;
  r.per_core = items > c ? (items + c - 1) / c : 1;
  const uint64_t used = (items + r.per_core - 1) / r.per_core;
  r.cores = static_cast<uint32_t>(used > 0 ? used : 1);
  return r;
}

// Elements per UB tile of the vector kernels: their buffers (double-buffered
// queues, the dropout hash's lanes) then take under 100 KiB of a vector core's
// 192 KiB, below the 184 KiB that Select leaves.
constexpr uint32_t kLoraVectorTile = 2048;

struct LoraVectorTiling {
  uint64_t n = 0;               // elements of the flattened [rows, cols] matrix
  uint64_t tiles_per_core = 0;  // tiles of the kLoraVectorTile grid each core takes
  uint64_t index_base = 0;      // the dropout index of element 0
  uint64_t seed = 0;
  uint32_t threshold = 0;       // 0: no dropout
  float keep_scale = 1.0f;
  float scale = 1.0f;           // add_masked: the factor of the added term
  uint32_t block_dim = 1;       // cores launched
};

// Host side only. The tiles follow the grid of kLoraVectorTile dropout indices
// (see LoraVectorRange in lora_vector_kernel.h).
inline LoraVectorTiling lora_vector_tiling(uint64_t n, uint64_t index_base, uint32_t vector_cores) {
  LoraVectorTiling t;
  t.n = n;
  t.index_base = index_base;
  const CoreRuns runs =
      core_runs((n + index_base % kLoraVectorTile + kLoraVectorTile - 1) / kLoraVectorTile, vector_cores);
  t.tiles_per_core = runs.per_core;
  t.block_dim = runs.cores;
  return t;
}

// Tiles of the cube kernels' results (CubeTileRun in common/cube_matmul.h):
// fp32, so a 128 x 128 tile is 64 KiB of L0C's 128 KiB.
constexpr uint32_t kLoraMatmulTileM = 128;
constexpr uint32_t kLoraMatmulTileN = 128;

// The low-rank cube kernel (lora_matmul_kernel.h): c [m, n] fp32 = sum over p < parts
// of op(a_p) op(b_p), a_p at a + p * a_part_stride (0: shared by the parts), likewise b_p.
// Tiles of an [m, n] result.
inline uint64_t lora_tile_count(uint64_t m, uint64_t n) {
  return ((m + kLoraMatmulTileM - 1) / kLoraMatmulTileM) * ((n + kLoraMatmulTileN - 1) / kLoraMatmulTileN);
}

struct LoraMatmulTiling {
  uint64_t m = 0, n = 0, k = 0;        // c [m, n] = op(a) [m, k] op(b) [k, n]
  uint64_t lda = 0, ldb = 0, ldc = 0;  // row strides in elements
  uint32_t a_k_major = 0;              // a stored [k, m] (else [m, k])
  uint32_t b_k_major = 0;              // b stored [k, n] (else [n, k], a Linear weight)
  uint64_t a_part_stride = 0, b_part_stride = 0;
  uint32_t parts = 1;
  uint64_t tiles_per_core = 0;         // consecutive tiles of c (row-major over the tile grid) per core
  uint32_t block_dim = 1;              // cube cores launched
};

inline LoraMatmulTiling lora_matmul_tiling(uint64_t m, uint64_t n, uint64_t k, uint64_t lda, bool a_k_major,
                                           uint64_t ldb, bool b_k_major, uint64_t ldc, uint32_t cube_cores) {
  LoraMatmulTiling t;
  t.m = m;
  t.n = n;
  t.k = k;
  t.lda = lda;
  t.ldb = ldb;
  t.ldc = ldc;
  t.a_k_major = a_k_major ? 1 : 0;
  t.b_k_major = b_k_major ? 1 : 0;
  const CoreRuns runs = core_runs(lora_tile_count(m, n), cube_cores);
  t.tiles_per_core = runs.per_core;
  t.block_dim = runs.cores;
  return t;
}

// The fused kernel (lora_fused_kernel.h): c [m, n] = a1 [m, k1] op(b1) + a2 [m, k2] op(b2),
// k1 + k2 >= 1.
struct LoraFusedTiling {
  uint64_t m = 0, n = 0, k1 = 0, k2 = 0;
  uint64_t lda1 = 0, ldb1 = 0, lda2 = 0, ldb2 = 0, ldc = 0;  // row strides in elements
  uint32_t b_k_major = 0;       // b1 and b2 stored [k, n] (else [n, k])
  uint64_t tiles_per_core = 0;  // 128 x 128 tiles of c, row-major over the tile grid
  uint32_t block_dim = 1;
};

inline LoraFusedTiling lora_fused_tiling(uint64_t m, uint64_t n, uint64_t k1, uint64_t k2, bool b_k_major,
                                         uint32_t cube_cores) {
  const CoreRuns runs = core_runs(lora_tile_count(m, n), cube_cores);
  LoraFusedTiling t;
  t.m = m;
  t.n = n;
  t.k1 = k1;
  t.k2 = k2;
  t.b_k_major = b_k_major ? 1 : 0;
  t.tiles_per_core = runs.per_core;
  t.block_dim = runs.cores;
  return t;
}

// The QLoRA forward MIX kernel (lora_nf4_fused_kernel.h): y [m, n] = x [m, k] W^T + xe [m, ke] be [n, ke]^T,
// W [n, k] in NF4 with k a multiple of blocksize, 128-row strips of W per block.
struct LoraNF4FusedTiling {
  uint64_t m = 0, n = 0, k = 0, ke = 0;
  uint32_t blocksize = 64, nested_blocksize = 256, double_quant = 1, tile_blocks = 64;  // as NF4BlockTiling
  uint64_t strips_per_core = 0;
  uint32_t block_dim = 1;  // AI cores (each one cube and two vector cores)
};

// Workspace slots per AI core of the QLoRA forward (two, one when a core takes one strip).
inline uint64_t lora_nf4_slots(const LoraNF4FusedTiling& t) { return t.strips_per_core > 1 ? 2 : 1; }

}  // namespace loraops::ascend
