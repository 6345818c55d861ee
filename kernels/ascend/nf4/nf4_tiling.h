// Host-side tiling of the NF4 Ascend C kernels (quantize, the double
// quantization of the absmax, dequantize): how blocks of the flattened tensor
// are split across AI vector cores and into Unified Buffer tiles. Plain C++,
// shared by the CANN build and the CPU emulation.
#pragma once

#include <cstdint>

namespace loraops::ascend {

// Elements per UB tile: about 86 KiB of UB with double-buffered input and output
// queues at fp32 output, under half of the 192 KiB a vector core has.
constexpr uint32_t kNF4TileElements = 4096;

struct NF4BlockTiling {
  uint64_t n = 0;                // elements
  uint64_t num_blocks = 0;       // ceil(n / blocksize)
  uint64_t blocks_per_core = 0;  // contiguous blocks each core takes (the last core may get fewer)
  uint32_t blocksize = 64;       // power of two in [32, 4096] (256 for the absmax kernel's groups)
  uint32_t nested_blocksize = 256;  // 0: the caller's value does not fit 32 bits (see nf4_block_tiling)
  uint32_t double_quant = 1;
  uint32_t tile_blocks = 64;  // blocks per UB tile
  uint32_t block_dim = 1;     // cores launched
};

// Host side only (the kernels get the fields as scalars). A nested block of at
// least num_blocks blocks is one group, so a larger nested_blocksize is clamped
// to that; one that still exceeds 32 bits comes back as 0, for the caller to refuse.
inline NF4BlockTiling nf4_block_tiling(uint64_t n, uint32_t blocksize, uint64_t nested_blocksize,
                                       bool double_quant, uint32_t vector_cores) {
  NF4BlockTiling t;
  t.n = n;
  t.blocksize = blocksize;
  t.double_quant = double_quant ? 1 : 0;
  t.num_blocks = n / blocksize + (n % blocksize != 0 ? 1 : 0);
  const uint64_t one_group = t.num_blocks > 0 ? t.num_blocks : 1;
  const uint64_t nested = nested_blocksize < one_group ? nested_blocksize : one_group;
  t.nested_blocksize = nested <= UINT32_MAX ? static_cast<uint32_t>(nested) : 0;
  t.tile_blocks = blocksize >= kNF4TileElements ? 1 : kNF4TileElements / blocksize;
  const uint64_t cores = vector_cores > 0 ? vector_cores : 1;
  t.blocks_per_core = t.num_blocks > cores ? (t.num_blocks + cores - 1) / cores : 1;
  const uint64_t used = (t.num_blocks + t.blocks_per_core - 1) / t.blocks_per_core;
  t.block_dim = static_cast<uint32_t>(used > 0 ? used : 1);
  return t;
}

}  // namespace loraops::ascend
