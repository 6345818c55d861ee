// Ascend C kernel: NF4 dequantization with double quantization, bitsandbytes'
// layout (two codes per byte, high nibble first; absmax per block, as fp32 or
// as uint8 codes into nested_code scaled by nested_absmax per group of blocks,
// plus offset). Compiled by CANN for the NPU and by g++ against
// kernels/ascend/sim. The arithmetic is the CPU backend's, rounding for
// rounding: absmax = nested_code[q] * nested_absmax[g] + offset (two roundings),
// value = code * absmax in fp32, then rounded to the output type.
//
// Each core takes a contiguous run of blocks, in tiles of whole blocks through
// double-buffered queues: copy in (packed bytes and the tile's absmax), compute,
// copy out. The codes are looked up with Gather: bytes get their nibbles
// swapped (the NPU's int4 puts element 2i in the LOW nibble) and their top bits
// flipped (so a signed int4 reads as code - 8), are cast int4 -> half, shifted
// by 8, cast to int32 and turned into byte offsets into the 16-entry table.
#pragma once

#include "kernel_operator.h"
// By relative path: the kernel sources compile as they are, with no include
// path for the core (CANN's ascendc_library, the Ascend C type check).
#include "../../../csrc/nf4/nf4_format.h"
#include "nf4_kernels.h"
#include "nf4_tiling.h"

namespace loraops::ascend {

using namespace AscendC;

// std::is_same without the standard library, which device code may not have.
template <class A, class B>
struct SameType {
  static constexpr bool value = false;
};
template <class A>
struct SameType<A, A> {
  static constexpr bool value = true;
};

template <class OutT>
class NF4DequantizeKernel {
 public:
  __aicore__ inline NF4DequantizeKernel() {}

  __aicore__ inline void Init(GM_ADDR packed, GM_ADDR absmax, GM_ADDR nested_absmax, GM_ADDR nested_code,
                              GM_ADDR offset, GM_ADDR out, const NF4BlockTiling& t, TPipe* pipe) {
    t_ = t;
    first_block_ = static_cast<uint64_t>(GetBlockIdx()) * t.blocks_per_core;
    end_block_ = first_block_ + t.blocks_per_core;
    if (end_block_ > t.num_blocks) end_block_ = t.num_blocks;
    packed_.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t*>(packed), (t.n + 1) / 2);
    out_.SetGlobalBuffer(reinterpret_cast<__gm__ OutT*>(out), t.n);
    if (t.double_quant) {
      codes_.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t*>(absmax), t.num_blocks);
      nested_absmax_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(nested_absmax),
                                     (t.num_blocks + t.nested_blocksize - 1) / t.nested_blocksize);
      nested_code_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(nested_code), 256);
      GlobalTensor<float> offset_gm;
      offset_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(offset), 1);
      offset_value_ = offset_gm.GetValue(0);
    } else {
      absmax_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(absmax), t.num_blocks);
    }
    const uint32_t tile = t.tile_blocks * t.blocksize;
    pipe->InitBuffer(in_queue_, 2, tile / 2);
    // Room for one 32-byte-padded row of absmax per block: a strip's tile (ProcessColumns) has a row per few blocks.
    pipe->InitBuffer(absmax_queue_, 2, t.tile_blocks * kBlockPad);
    pipe->InitBuffer(out_queue_, 2, tile * sizeof(OutT));
    pipe->InitBuffer(words_, tile / 2);
    pipe->InitBuffer(scratch_words_, tile / 2);
    pipe->InitBuffer(mask_, tile / 2);
    pipe->InitBuffer(halves_, tile * sizeof(half));
    pipe->InitBuffer(offsets_, tile * sizeof(int32_t));
    pipe->InitBuffer(values_, tile * sizeof(float));
    pipe->InitBuffer(table_, 16 * sizeof(float));
    LocalTensor<float> table = table_.Get<float>();
    for (uint32_t i = 0; i < 16; ++i) table.SetValue(i, nf4_format::nf4_code_value(i));
    if (t.double_quant) {
      pipe->InitBuffer(nested_code_, 256 * sizeof(float));
      DataCopy(nested_code_.Get<float>(), nested_code_gm_, 256);
    }
    // The table (scalar writes) and nested_code (MTE2) are read by Gather and scalar reads below.
    PipeBarrier<PIPE_ALL>();
  }

  // Instead of this core's share: blocks [first, end) into `out`, which holds
  // element first * blocksize at its start (a fused kernel's workspace, say).
  __aicore__ inline void SetBlocks(uint64_t first, uint64_t end, const GlobalTensor<OutT>& out) {
    first_block_ = first;
    end_block_ = end;
    out_origin_block_ = first;
    out_ = out;
  }

  __aicore__ inline void Process() {
    for (uint64_t b0 = first_block_; b0 < end_block_; b0 += t_.tile_blocks) {
      const uint64_t b1 = b0 + t_.tile_blocks < end_block_ ? b0 + t_.tile_blocks : end_block_;
      const Segment seg{b0, 1, static_cast<uint32_t>(b1 - b0), 0, TileElements(b0, b1)};
      CopyIn(seg);
      Compute(seg);
      CopyOut(seg, out_[(b0 - out_origin_block_) * t_.blocksize]);
    }
  }

  // A column strip of a [rows, cols] weight (cols = row_blocks blocks per row):
  // rows [row0, row1), blocks [col_block, col_block + width_blocks) of each, into
  // `out` as a contiguous [row1 - row0, width_blocks * blocksize] matrix. The
  // strip's rows come in tiles of tile_blocks / width_blocks rows, each gathered
  // by one strided copy (a row per tile for strips narrower than 64 elements).
  __aicore__ inline void ProcessColumns(uint64_t row0, uint64_t row1, uint64_t row_blocks, uint64_t col_block,
                                        uint32_t width_blocks, const GlobalTensor<OutT>& out) {
    // Rows gathered by one copy land back to back in UB only when a row's packed
    // bytes are whole 32-byte blocks (the copy pads each to 32); else a row per tile.
    const bool gathered = uint64_t{width_blocks} * t_.blocksize / 2 % kBlockPad == 0;
    const uint64_t tile_rows = gathered && t_.tile_blocks / width_blocks > 0 ? t_.tile_blocks / width_blocks : 1;
    const uint64_t width = uint64_t{width_blocks} * t_.blocksize;
    for (uint64_t r = row0; r < row1; r += tile_rows) {
      const uint32_t rows = static_cast<uint32_t>(row1 - r < tile_rows ? row1 - r : tile_rows);
      const Segment seg{r * row_blocks + col_block, rows, width_blocks, row_blocks,
                        static_cast<uint32_t>(rows * width)};
      CopyIn(seg);
      Compute(seg);
      CopyOut(seg, out[(r - row0) * width]);
    }
  }

 private:
  // UB bytes per row of absmax (or codes) a strided copy pads to.
  static constexpr uint32_t kBlockPad = 32;

  // A tile: `rows` runs of `run` consecutive blocks, the first at block `first`,
  // runs `stride` blocks apart (rows 1: a plain run); `elements` in all.
  struct Segment {
    uint64_t first;
    uint32_t rows, run;
    uint64_t stride;
    uint32_t elements;
  };

  __aicore__ inline uint32_t TileElements(uint64_t b0, uint64_t b1) const {
    const uint64_t end = b1 * t_.blocksize < t_.n ? b1 * t_.blocksize : t_.n;
    return static_cast<uint32_t>(end - b0 * t_.blocksize);
  }

  // The tile's packed codes contiguous in UB (each run's bytes a multiple of 32 when
  // rows > 1), and its absmax (or codes) a row of kBlockPad bytes per run when rows > 1.
  __aicore__ inline void CopyIn(const Segment& seg) {
    const uint64_t gap_blocks = seg.rows > 1 ? seg.stride - seg.run : 0;
    LocalTensor<uint8_t> packed = in_queue_.AllocTensor<uint8_t>();
    const uint32_t run_bytes = seg.rows > 1 ? seg.run * t_.blocksize / 2 : (seg.elements + 1) / 2;
    DataCopyPad(packed, packed_[seg.first * t_.blocksize / 2],
                DataCopyExtParams(static_cast<uint16_t>(seg.rows), run_bytes,
                                  static_cast<uint32_t>(gap_blocks * t_.blocksize / 2), 0, 0),
                DataCopyPadExtParams<uint8_t>(false, 0, 0, 0));
    in_queue_.EnQue(packed);
    if (t_.double_quant) {
      LocalTensor<uint8_t> codes = absmax_queue_.AllocTensor<uint8_t>();
      DataCopyPad(codes, codes_[seg.first],
                  DataCopyExtParams(static_cast<uint16_t>(seg.rows), seg.run, static_cast<uint32_t>(gap_blocks), 0, 0),
                  DataCopyPadExtParams<uint8_t>(false, 0, 0, 0));
      absmax_queue_.EnQue(codes);
    } else {
      LocalTensor<float> absmax = absmax_queue_.AllocTensor<float>();
      DataCopyPad(absmax, absmax_[seg.first],
                  DataCopyExtParams(static_cast<uint16_t>(seg.rows), seg.run * sizeof(float),
                                    static_cast<uint32_t>(gap_blocks * sizeof(float)), 0, 0),
                  DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
      absmax_queue_.EnQue(absmax);
    }
  }

  // The absmax of the tile's block j (row j / run, block j % run of the row).
  __aicore__ inline float Absmax(const LocalTensor<uint8_t>& tile, const Segment& seg, uint32_t j) {
    const uint32_t row = j / seg.run, col = j % seg.run;
    const uint32_t pitch = seg.rows > 1 ? kBlockPad / (t_.double_quant ? 1 : sizeof(float)) : seg.run;
    if (!t_.double_quant) return tile.ReinterpretCast<float>().GetValue(row * pitch + col);
    const uint64_t block = seg.first + row * seg.stride + col;
    const uint64_t group = block / t_.nested_blocksize;
    if (group != cached_group_) {
      cached_group_ = group;
      cached_nested_absmax_ = nested_absmax_.GetValue(group);
    }
    // volatile: the product is rounded to fp32 before the add, on every compiler.
    volatile float scaled = nested_code_.Get<float>().GetValue(tile.GetValue(row * pitch + col)) * cached_nested_absmax_;
    return scaled + offset_value_;
  }

  __aicore__ inline void Compute(const Segment& seg) {
    const uint32_t elements = seg.elements;
    const uint32_t even = (elements + 1) / 2 * 2;
    const uint32_t word_count = (even / 2 + 1) / 2;
    LocalTensor<uint8_t> packed = in_queue_.DeQue<uint8_t>();
    LocalTensor<uint8_t> absmax_tile = absmax_queue_.DeQue<uint8_t>();
    PipeBarrier<PIPE_ALL>();  // the scalar unit reads the tile's absmax below
    LocalTensor<uint16_t> words = packed.ReinterpretCast<uint16_t>();
    LocalTensor<uint16_t> swapped = words_.Get<uint16_t>();
    LocalTensor<uint16_t> scratch = scratch_words_.Get<uint16_t>();
    LocalTensor<uint16_t> mask = mask_.Get<uint16_t>();
    // Swap the nibbles of every byte: (b << 4) & 0xF0 | (b >> 4) & 0x0F.
    ShiftLeft(swapped, words, static_cast<uint16_t>(4), word_count);
    Duplicate(mask, static_cast<uint16_t>(0xF0F0), word_count);
    And(swapped, swapped, mask, word_count);
    ShiftRight(scratch, words, static_cast<uint16_t>(4), word_count);
    Duplicate(mask, static_cast<uint16_t>(0x0F0F), word_count);
    And(scratch, scratch, mask, word_count);
    Or(swapped, swapped, scratch, word_count);
    // XOR 0x8888 as (x | m) & ~(x & m): a code c then reads as the signed int4 c - 8.
    Duplicate(mask, static_cast<uint16_t>(0x8888), word_count);
    Or(scratch, swapped, mask, word_count);
    And(swapped, swapped, mask, word_count);
    Not(swapped, swapped, word_count);
    And(swapped, scratch, swapped, word_count);

    LocalTensor<half> halves = halves_.Get<half>();
    LocalTensor<int32_t> offsets = offsets_.Get<int32_t>();
    Cast(halves, swapped.ReinterpretCast<int4b_t>(), RoundMode::CAST_NONE, even);
    Adds(halves, halves, static_cast<half>(8.0f), even);
    Cast(offsets, halves, RoundMode::CAST_RINT, even);
    ShiftLeft(offsets, offsets, static_cast<int32_t>(2), even);  // code -> byte offset into the fp32 table

    LocalTensor<OutT> out = out_queue_.AllocTensor<OutT>();
    LocalTensor<float> values;
    if constexpr (SameType<OutT, float>::value) {
      values = out;
    } else {
      values = values_.Get<float>();
    }
    Gather(values, table_.Get<float>(), offsets.ReinterpretCast<uint32_t>(), 0, even);
    const uint32_t blocks = seg.rows * seg.run;
    for (uint32_t j = 0; j < blocks; ++j) {
      const uint32_t start = j * t_.blocksize;
      const uint32_t length = elements - start < t_.blocksize ? elements - start : t_.blocksize;
      Muls(values[start], values[start], Absmax(absmax_tile, seg, j), static_cast<int32_t>(length));
    }
    if constexpr (!SameType<OutT, float>::value) {
      Cast(out, values, RoundMode::CAST_RINT, even);
    }
    out_queue_.EnQue(out);
    in_queue_.FreeTensor(packed);
    absmax_queue_.FreeTensor(absmax_tile);
  }

  __aicore__ inline void CopyOut(const Segment& seg, const GlobalTensor<OutT>& to) {
    LocalTensor<OutT> out = out_queue_.DeQue<OutT>();
    DataCopyPad(to, out, DataCopyExtParams(1, seg.elements * sizeof(OutT), 0, 0, 0));
    out_queue_.FreeTensor(out);
  }

  NF4BlockTiling t_;
  uint64_t first_block_ = 0, end_block_ = 0, out_origin_block_ = 0;
  uint64_t cached_group_ = ~uint64_t{0};
  float cached_nested_absmax_ = 0.0f, offset_value_ = 0.0f;
  GlobalTensor<uint8_t> packed_, codes_;
  GlobalTensor<float> absmax_, nested_absmax_, nested_code_gm_;
  GlobalTensor<OutT> out_;
  TQue<TPosition::VECIN, 1> in_queue_, absmax_queue_;
  TQue<TPosition::VECOUT, 1> out_queue_;
  TBuf<TPosition::VECCALC> words_, scratch_words_, mask_, halves_, offsets_, values_, table_, nested_code_;
};

}  // namespace loraops::ascend

// One entry point per output type, with the parameters nf4_kernels.h declares.
#define LORAOPS_NF4_DEQUANTIZE_ENTRY(name, OutT)                                                                  \
  extern "C" __global__ __aicore__ void name(LORAOPS_NF4_DEQUANTIZE_PARAMS) {                                   \
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                                                             \
    loraops::ascend::NF4BlockTiling tiling;                                                                     \
    tiling.n = n;                                                                                               \
    tiling.num_blocks = num_blocks;                                                                             \
    tiling.blocks_per_core = blocks_per_core;                                                                   \
    tiling.blocksize = blocksize;                                                                               \
    tiling.nested_blocksize = nested_blocksize;                                                                 \
    tiling.double_quant = double_quant;                                                                         \
    tiling.tile_blocks = tile_blocks;                                                                           \
    AscendC::TPipe pipe;                                                                                        \
    loraops::ascend::NF4DequantizeKernel<OutT> kernel;                                                          \
    kernel.Init(packed, absmax, nested_absmax, nested_code, offset, out, tiling, &pipe);                        \
    kernel.Process();                                                                                           \
  }
