// Ascend C kernels: NF4 quantization in bitsandbytes' layout, in two steps.
//
// 1. loraops_nf4_quantize_<dtype>: per block, absmax = max |x| and the 4-bit
//    codes of clamp(x * (1 / max(absmax, 1e-38)), -1, 1): the number of NF4
//    midpoints strictly below the value (ties to the lower code), two codes per
//    byte, high nibble first. The tile is zero-padded, so an odd tail's missing
//    partner is the code of 0.0, as in bitsandbytes.
// 2. loraops_nf4_quantize_absmax: double quantization of centered = absmax -
//    offset (offset = mean(absmax), taken by the host through ATen): per group
//    of nested_blocksize blocks, nested_absmax = max |centered| and 8-bit codes
//    of centered * (1 / nested_absmax) into the signed dynamic map, found by an
//    8-step binary search over its midpoints (given by the host).
//
// The arithmetic is the CPU backend's, rounding for rounding. Compiled by CANN
// for the NPU and by g++ against kernels/ascend/sim.
#pragma once

#include "kernel_operator.h"
#include "nf4_dequantize_kernel.h"
#include "nf4_kernels.h"
#include "nf4_tiling.h"

namespace loraops::ascend {

using namespace AscendC;

constexpr uint32_t kRepeatFloats = 64;  // Compare works on whole 256-byte repeats

__aicore__ inline uint32_t RoundUpRepeats(uint32_t count) {
  return (count + kRepeatFloats - 1) / kRepeatFloats * kRepeatFloats;
}

// ReduceMax's scratch for up to `count` floats: two per 256-byte repeat, rounded up to 32 bytes.
__aicore__ inline uint32_t ReduceScratchBytes(uint32_t count) {
  return ((count + kRepeatFloats - 1) / kRepeatFloats * 2 * sizeof(float) + 31) / 32 * 32;
}

// Scales each block of `values` by the reciprocal of its absmax, written to
// `absmax`; work is a scratch tile as long as a block.
__aicore__ inline void ScaleBlocksByAbsmax(const LocalTensor<float>& values, uint32_t elements, uint32_t blocksize,
                                           const LocalTensor<float>& work, const LocalTensor<float>& scratch,
                                           const LocalTensor<float>& reduced, const LocalTensor<float>& absmax) {
  const uint32_t blocks = (elements + blocksize - 1) / blocksize;
  for (uint32_t j = 0; j < blocks; ++j) {
    const uint32_t start = j * blocksize;
    const int32_t length = static_cast<int32_t>(elements - start < blocksize ? elements - start : blocksize);
    Abs(work, values[start], length);
    ReduceMax(reduced, work, scratch, length);
    PipeBarrier<PIPE_ALL>();  // the scalar unit reads the vector result
    const float a = reduced.GetValue(0);
    absmax.SetValue(j, a);
    const float reciprocal = nf4_format::reciprocal_of_absmax(a);
    Muls(values[start], values[start], reciprocal, length);
  }
}

// Zeroes values [elements, RoundUpRepeats(elements)) and clamps all to [-1, 1].
__aicore__ inline uint32_t PadAndClamp(const LocalTensor<float>& values, uint32_t elements) {
  const uint32_t padded = RoundUpRepeats(elements);
  PipeBarrier<PIPE_ALL>();
  for (uint32_t i = elements; i < padded; ++i) values.SetValue(i, 0.0f);
  PipeBarrier<PIPE_ALL>();
  Maxs(values, values, -1.0f, static_cast<int32_t>(padded));
  Mins(values, values, 1.0f, static_cast<int32_t>(padded));
  return padded;
}

// Both steps: per block absmax and scaling, then padding and clamping.
// Returns the padded element count.
__aicore__ inline uint32_t NormalizeBlocks(const LocalTensor<float>& values, uint32_t elements, uint32_t blocksize,
                                           const LocalTensor<float>& work, const LocalTensor<float>& scratch,
                                           const LocalTensor<float>& reduced, const LocalTensor<float>& absmax) {
  ScaleBlocksByAbsmax(values, elements, blocksize, work, scratch, reduced, absmax);
  return PadAndClamp(values, elements);
}

// float codes with integer values 0..255 -> uint8, through half (exact).
__aicore__ inline void CodesToBytes(const LocalTensor<uint8_t>& dst, const LocalTensor<float>& codes,
                                    const LocalTensor<half>& halves, uint32_t count) {
  Cast(halves, codes, RoundMode::CAST_NONE, count);
  Cast(dst, halves, RoundMode::CAST_RINT, count);
}

template <class InT>
class NF4QuantizeKernel {
 public:
  __aicore__ inline NF4QuantizeKernel() {}

  __aicore__ inline void Init(GM_ADDR input, GM_ADDR packed, GM_ADDR absmax, const NF4BlockTiling& t,
                              TPipe* pipe) {
    t_ = t;
    first_block_ = static_cast<uint64_t>(GetBlockIdx()) * t.blocks_per_core;
    end_block_ = first_block_ + t.blocks_per_core;
    if (end_block_ > t.num_blocks) end_block_ = t.num_blocks;
    input_.SetGlobalBuffer(reinterpret_cast<__gm__ InT*>(input), t.n);
    packed_.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t*>(packed), (t.n + 1) / 2);
    absmax_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(absmax), t.num_blocks);
    const uint32_t tile = t.tile_blocks * t.blocksize;  // a multiple of 64: blocksize >= 32, 4096-element tiles
    pipe->InitBuffer(in_queue_, 2, tile * sizeof(InT));
    pipe->InitBuffer(packed_queue_, 2, tile / 2);
    pipe->InitBuffer(absmax_queue_, 2, t.tile_blocks * sizeof(float));
    pipe->InitBuffer(values_, tile * sizeof(float));
    pipe->InitBuffer(work_, tile * sizeof(float));
    pipe->InitBuffer(ones_, tile * sizeof(float));
    pipe->InitBuffer(codes_, tile * sizeof(float));
    pipe->InitBuffer(mask_, tile / 8);
    pipe->InitBuffer(even_, tile / 2 * sizeof(int32_t));
    pipe->InitBuffer(odd_, tile / 2 * sizeof(int32_t));
    pipe->InitBuffer(even_offsets_, tile / 2 * sizeof(uint32_t));
    pipe->InitBuffer(odd_offsets_, tile / 2 * sizeof(uint32_t));
    pipe->InitBuffer(reduced_, 32);
    pipe->InitBuffer(scratch_, ReduceScratchBytes(t.blocksize));
    Duplicate(ones_.Get<float>(), 1.0f, static_cast<int32_t>(tile));
    LocalTensor<uint32_t> even_offsets = even_offsets_.Get<uint32_t>();
    LocalTensor<uint32_t> odd_offsets = odd_offsets_.Get<uint32_t>();
    for (uint32_t i = 0; i < tile / 2; ++i) {
      even_offsets.SetValue(i, i * 8);
      odd_offsets.SetValue(i, i * 8 + 4);
    }
    PipeBarrier<PIPE_ALL>();
  }

  __aicore__ inline void Process() {
    for (uint64_t b0 = first_block_; b0 < end_block_; b0 += t_.tile_blocks) {
      const uint64_t b1 = b0 + t_.tile_blocks < end_block_ ? b0 + t_.tile_blocks : end_block_;
      const uint64_t end = b1 * t_.blocksize < t_.n ? b1 * t_.blocksize : t_.n;
      const uint32_t elements = static_cast<uint32_t>(end - b0 * t_.blocksize);
      CopyIn(b0, elements);
      Compute(elements);
      CopyOut(b0, b1, elements);
    }
  }

 private:
  __aicore__ inline void CopyIn(uint64_t b0, uint32_t elements) {
    LocalTensor<InT> x = in_queue_.AllocTensor<InT>();
    DataCopyPad(x, input_[b0 * t_.blocksize], DataCopyExtParams(1, elements * sizeof(InT), 0, 0, 0),
                DataCopyPadExtParams<InT>(false, 0, 0, InT()));
    in_queue_.EnQue(x);
  }

  __aicore__ inline void Compute(uint32_t elements) {
    LocalTensor<InT> x = in_queue_.DeQue<InT>();
    LocalTensor<float> values = values_.Get<float>();
    if constexpr (SameType<InT, float>::value) {
      Muls(values, x, 1.0f, static_cast<int32_t>(elements));
    } else {
      Cast(values, x, RoundMode::CAST_NONE, elements);
    }
    in_queue_.FreeTensor(x);

    LocalTensor<float> absmax = absmax_queue_.AllocTensor<float>();
    const uint32_t padded = NormalizeBlocks(values, elements, t_.blocksize, work_.Get<float>(), scratch_.Get<float>(),
                                            reduced_.Get<float>(), absmax);

    // code = the number of the 15 NF4 midpoints strictly below the value.
    LocalTensor<float> codes = codes_.Get<float>();
    LocalTensor<float> hit = work_.Get<float>();
    LocalTensor<uint8_t> mask = mask_.Get<uint8_t>();
    Duplicate(codes, 0.0f, static_cast<int32_t>(padded));
    for (uint32_t k = 0; k < 15; ++k) {
      const float midpoint = nf4_format::nf4_midpoint(k);
      Compares(mask, values, midpoint, CMPMODE::GT, padded);
      Select(hit, mask, ones_.Get<float>(), 0.0f, SELMODE::VSEL_TENSOR_SCALAR_MODE, padded);
      Add(codes, codes, hit, static_cast<int32_t>(padded));
    }

    // Two codes per byte, high nibble first: (code[2i] << 4) + code[2i + 1].
    LocalTensor<int32_t> codes32 = values.ReinterpretCast<int32_t>();
    LocalTensor<int32_t> even = even_.Get<int32_t>();
    LocalTensor<int32_t> odd = odd_.Get<int32_t>();
    const uint32_t pairs = padded / 2;
    Cast(codes32, codes, RoundMode::CAST_RINT, padded);
    Gather(even, codes32, even_offsets_.Get<uint32_t>(), 0, pairs);
    Gather(odd, codes32, odd_offsets_.Get<uint32_t>(), 0, pairs);
    ShiftLeft(even, even, static_cast<int32_t>(4), static_cast<int32_t>(pairs));
    Add(even, even, odd, static_cast<int32_t>(pairs));
    LocalTensor<float> bytes = odd.ReinterpretCast<float>();
    Cast(bytes, even, RoundMode::CAST_NONE, pairs);
    LocalTensor<uint8_t> packed = packed_queue_.AllocTensor<uint8_t>();
    CodesToBytes(packed, bytes, work_.Get<half>(), pairs);
    packed_queue_.EnQue(packed);
    PipeBarrier<PIPE_ALL>();  // the absmax were written by the scalar unit
    absmax_queue_.EnQue(absmax);
  }

  __aicore__ inline void CopyOut(uint64_t b0, uint64_t b1, uint32_t elements) {
    LocalTensor<uint8_t> packed = packed_queue_.DeQue<uint8_t>();
    DataCopyPad(packed_[b0 * t_.blocksize / 2], packed, DataCopyExtParams(1, (elements + 1) / 2, 0, 0, 0));
    packed_queue_.FreeTensor(packed);
    LocalTensor<float> absmax = absmax_queue_.DeQue<float>();
    DataCopyPad(absmax_[b0], absmax, DataCopyExtParams(1, static_cast<uint32_t>(b1 - b0) * sizeof(float), 0, 0, 0));
    absmax_queue_.FreeTensor(absmax);
  }

  NF4BlockTiling t_;
  uint64_t first_block_ = 0, end_block_ = 0;
  GlobalTensor<InT> input_;
  GlobalTensor<uint8_t> packed_;
  GlobalTensor<float> absmax_;
  TQue<TPosition::VECIN, 1> in_queue_;
  TQue<TPosition::VECOUT, 1> packed_queue_, absmax_queue_;
  TBuf<TPosition::VECCALC> values_, work_, ones_, codes_, mask_, even_, odd_, even_offsets_, odd_offsets_, reduced_,
      scratch_;
};

// Double quantization of the centered absmax; one tile holds whole groups of
// nested_blocksize (256) values. `tiling` counts groups as its blocks and the
// centered values as its elements.
class NF4QuantizeAbsmaxKernel {
 public:
  __aicore__ inline NF4QuantizeAbsmaxKernel() {}

  __aicore__ inline void Init(GM_ADDR centered, GM_ADDR bounds, GM_ADDR codes, GM_ADDR nested_absmax,
                              const NF4BlockTiling& t, TPipe* pipe) {
    t_ = t;
    first_group_ = static_cast<uint64_t>(GetBlockIdx()) * t.blocks_per_core;
    end_group_ = first_group_ + t.blocks_per_core;
    if (end_group_ > t.num_blocks) end_group_ = t.num_blocks;
    centered_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(centered), t.n);
    codes_gm_.SetGlobalBuffer(reinterpret_cast<__gm__ uint8_t*>(codes), t.n);
    nested_absmax_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(nested_absmax), t.num_blocks);
    GlobalTensor<float> bounds_gm;
    bounds_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(bounds), 256);
    const uint32_t tile = t.tile_blocks * t.blocksize;
    pipe->InitBuffer(in_queue_, 2, tile * sizeof(float));
    pipe->InitBuffer(codes_queue_, 2, tile);
    pipe->InitBuffer(absmax_queue_, 2, t.tile_blocks * sizeof(float));
    pipe->InitBuffer(values_, tile * sizeof(float));
    pipe->InitBuffer(work_, tile * sizeof(float));
    pipe->InitBuffer(found_, tile * sizeof(float));
    pipe->InitBuffer(probe_, tile * sizeof(int32_t));
    pipe->InitBuffer(steps_, tile * sizeof(float));
    pipe->InitBuffer(mask_, tile / 8);
    pipe->InitBuffer(bounds_, 256 * sizeof(float));
    pipe->InitBuffer(reduced_, 32);
    pipe->InitBuffer(scratch_, ReduceScratchBytes(t.blocksize));
    DataCopy(bounds_.Get<float>(), bounds_gm, 256);
    PipeBarrier<PIPE_ALL>();
  }

  __aicore__ inline void Process() {
    for (uint64_t g0 = first_group_; g0 < end_group_; g0 += t_.tile_blocks) {
      const uint64_t g1 = g0 + t_.tile_blocks < end_group_ ? g0 + t_.tile_blocks : end_group_;
      const uint64_t end = g1 * t_.blocksize < t_.n ? g1 * t_.blocksize : t_.n;
      const uint32_t elements = static_cast<uint32_t>(end - g0 * t_.blocksize);
      LocalTensor<float> x = in_queue_.AllocTensor<float>();
      DataCopyPad(x, centered_[g0 * t_.blocksize], DataCopyExtParams(1, elements * sizeof(float), 0, 0, 0),
                  DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
      in_queue_.EnQue(x);
      Compute(elements);
      LocalTensor<uint8_t> codes = codes_queue_.DeQue<uint8_t>();
      DataCopyPad(codes_gm_[g0 * t_.blocksize], codes, DataCopyExtParams(1, elements, 0, 0, 0));
      codes_queue_.FreeTensor(codes);
      LocalTensor<float> absmax = absmax_queue_.DeQue<float>();
      DataCopyPad(nested_absmax_[g0], absmax, DataCopyExtParams(1, static_cast<uint32_t>(g1 - g0) * sizeof(float), 0, 0, 0));
      absmax_queue_.FreeTensor(absmax);
    }
  }

 private:
  __aicore__ inline void Compute(uint32_t elements) {
    LocalTensor<float> x = in_queue_.DeQue<float>();
    LocalTensor<float> values = values_.Get<float>();
    Muls(values, x, 1.0f, static_cast<int32_t>(elements));
    in_queue_.FreeTensor(x);
    LocalTensor<float> absmax = absmax_queue_.AllocTensor<float>();
    const uint32_t padded = NormalizeBlocks(values, elements, t_.blocksize, work_.Get<float>(), scratch_.Get<float>(),
                                            reduced_.Get<float>(), absmax);

    // Binary search: found += step where bounds[found + step - 1] < value, for
    // step = 128, 64, ..., 1: the number of midpoints strictly below the value.
    LocalTensor<float> found = found_.Get<float>();
    LocalTensor<float> work = work_.Get<float>();
    LocalTensor<float> steps = steps_.Get<float>();
    LocalTensor<int32_t> probe = probe_.Get<int32_t>();
    LocalTensor<uint8_t> mask = mask_.Get<uint8_t>();
    Duplicate(found, 0.0f, static_cast<int32_t>(padded));
    for (uint32_t step = 128; step >= 1; step /= 2) {
      Adds(work, found, static_cast<float>(step - 1), static_cast<int32_t>(padded));
      Cast(probe, work, RoundMode::CAST_RINT, padded);
      ShiftLeft(probe, probe, static_cast<int32_t>(2), static_cast<int32_t>(padded));  // index -> byte offset
      Gather(work, bounds_.Get<float>(), probe.ReinterpretCast<uint32_t>(), 0, padded);
      Compare(mask, work, values, CMPMODE::LT, padded);
      Duplicate(steps, static_cast<float>(step), static_cast<int32_t>(padded));
      Select(work, mask, steps, 0.0f, SELMODE::VSEL_TENSOR_SCALAR_MODE, padded);
      Add(found, found, work, static_cast<int32_t>(padded));
    }
    LocalTensor<uint8_t> codes = codes_queue_.AllocTensor<uint8_t>();
    CodesToBytes(codes, found, work.ReinterpretCast<half>(), padded);
    codes_queue_.EnQue(codes);
    PipeBarrier<PIPE_ALL>();  // the absmax were written by the scalar unit
    absmax_queue_.EnQue(absmax);
  }

  NF4BlockTiling t_;
  uint64_t first_group_ = 0, end_group_ = 0;
  GlobalTensor<float> centered_, nested_absmax_;
  GlobalTensor<uint8_t> codes_gm_;
  TQue<TPosition::VECIN, 1> in_queue_;
  TQue<TPosition::VECOUT, 1> codes_queue_, absmax_queue_;
  TBuf<TPosition::VECCALC> values_, work_, found_, probe_, steps_, mask_, bounds_, reduced_, scratch_;
};

}  // namespace loraops::ascend

#define LORAOPS_NF4_TILING_FROM_SCALARS(tiling) \
  loraops::ascend::NF4BlockTiling tiling;       \
  tiling.n = n;                                 \
  tiling.num_blocks = num_blocks;               \
  tiling.blocks_per_core = blocks_per_core;     \
  tiling.blocksize = blocksize;                 \
  tiling.tile_blocks = tile_blocks

// The entry points, with the parameters nf4_kernels.h declares.

#define LORAOPS_NF4_QUANTIZE_ENTRY(name, InT)                                                                   \
  extern "C" __global__ __aicore__ void name(LORAOPS_NF4_QUANTIZE_PARAMS) {                                     \
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                                                             \
    LORAOPS_NF4_TILING_FROM_SCALARS(tiling);                                                                    \
    AscendC::TPipe pipe;                                                                                        \
    loraops::ascend::NF4QuantizeKernel<InT> kernel;                                                             \
    kernel.Init(input, packed, absmax, tiling, &pipe);                                                          \
    kernel.Process();                                                                                           \
  }

#define LORAOPS_NF4_QUANTIZE_ABSMAX_ENTRY(name)                                                                  \
  extern "C" __global__ __aicore__ void name(LORAOPS_NF4_QUANTIZE_ABSMAX_PARAMS) {                              \
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                                                             \
    LORAOPS_NF4_TILING_FROM_SCALARS(tiling);                                                                    \
    AscendC::TPipe pipe;                                                                                        \
    loraops::ascend::NF4QuantizeAbsmaxKernel kernel;                                                            \
    kernel.Init(centered, bounds, codes, nested_absmax, tiling, &pipe);                                         \
    kernel.Process();                                                                                           \
  }
