// Ascend C kernels (AI vector cores) for the elementwise ends of the LoRA
// low-rank products, whose matrix products run on the cube (lora_matmul_kernel.h):
//
//   mask_to_fp32:  out[i] = mask(x)[i] as fp32, x in T           (what the cube reads for x A^T, l^T mask(x))
//   add_masked:    x[i] = T(x[i] + mask(scale * t)[i]), t fp32   (the cube's l R added into y or dx)
//
// mask(v)[i] is dropout by the counter hash of csrc/lora/dropout_hash.h at the
// flat index index_base + i: v * keep_scale where bits(seed, index) >= threshold,
// else 0 (threshold 0: no dropout, v unchanged). The hash runs on the vector
// unit in uint32 lanes: xor as (a | b) & ~(a & b) on uint16 views, the odd
// multiplications as wrapping int32 Muls; the unsigned comparison with the
// threshold, which Atlas A2 has no integer Compare for, becomes an exact fp32
// one: bits >= threshold iff 2 * hi + [lo >= threshold_lo] >= 2 * threshold_hi + 1
// with hi, lo the 16-bit halves of bits.
//
// Each core takes a contiguous run of tiles of kLoraVectorTile elements, through
// double-buffered queues: copy in, compute, copy out.
#pragma once

#include "kernel_operator.h"
// By relative path, as the NF4 kernels: the sources compile as they are.
#include "../../../csrc/lora/dropout_hash.h"
#include "lora_kernels.h"
#include "lora_tiling.h"

namespace loraops::ascend {

using namespace AscendC;

// The dropout mask of a tile, applied in place to fp32 values.
class DropoutMaskTile {
 public:
  __aicore__ inline DropoutMaskTile() {}

  __aicore__ inline void Init(TPipe* pipe, uint64_t seed, uint32_t threshold, float keep_scale) {
    seed_ = seed;
    threshold_ = threshold;
    keep_scale_ = keep_scale;
    if (threshold == 0) return;
    pipe->InitBuffer(steps_, kLoraVectorTile * sizeof(int32_t));
    pipe->InitBuffer(bits_, kLoraVectorTile * sizeof(uint32_t));
    pipe->InitBuffer(scratch_, kLoraVectorTile * sizeof(uint32_t));
    pipe->InitBuffer(operand_, kLoraVectorTile * sizeof(uint32_t));
    pipe->InitBuffer(high_, kLoraVectorTile * sizeof(float));
    pipe->InitBuffer(selection_, kLoraVectorTile / 8);
    CreateVecIndex(steps_.Get<int32_t>(), static_cast<int32_t>(0), kLoraVectorTile);
  }

  // values[0, count) belong to flat indices first_index .. first_index + count - 1, which
  // lie in one aligned run of kLoraVectorTile indices (LoraVectorRange), so the
  // hash's key (the index's high 32 bits) is the same for all of them.
  __aicore__ inline void Apply(const LocalTensor<float>& values, uint64_t first_index, uint32_t count) {
    if (threshold_ == 0 || count == 0) return;
    const uint32_t n = Repeats(count);
    const uint32_t key = dropout::key(seed_, first_index);
    LocalTensor<uint32_t> bits = bits_.Get<uint32_t>();
    LocalTensor<uint32_t> operand = operand_.Get<uint32_t>();
    // bits = mix32(low32(index) ^ key), as dropout::bits
    Adds(bits.ReinterpretCast<int32_t>(), steps_.Get<int32_t>(), static_cast<int32_t>(first_index & 0xFFFFFFFFull),
         static_cast<int32_t>(n));
    Duplicate(operand, key, static_cast<int32_t>(n));
    Xor(bits, bits, operand, n);
    XorShift(bits, dropout::kMixShift1, n);
    MulWrap(bits, dropout::kMixMultiplier1, n);
    XorShift(bits, dropout::kMixShift2, n);
    MulWrap(bits, dropout::kMixMultiplier2, n);
    XorShift(bits, dropout::kMixShift3, n);
    // low = bits & 0xFFFF, high = bits >> 16, both exact in fp32
    Duplicate(operand, 0xFFFFu, static_cast<int32_t>(n));
    LocalTensor<uint32_t> low = scratch_.Get<uint32_t>();
    And(low.ReinterpretCast<uint16_t>(), bits.ReinterpretCast<uint16_t>(), operand.ReinterpretCast<uint16_t>(),
        static_cast<int32_t>(2 * n));
    LocalTensor<float> high = high_.Get<float>();
    ShiftRight(bits, bits, 16u, static_cast<int32_t>(n));
    Cast(high, bits.ReinterpretCast<int32_t>(), RoundMode::CAST_NONE, n);
    LocalTensor<float> low_f = operand.ReinterpretCast<float>();
    Cast(low_f, low.ReinterpretCast<int32_t>(), RoundMode::CAST_NONE, n);
    // key = 2 * high + [low >= threshold_lo]; kept iff key >= 2 * threshold_hi + 1
    Adds(low_f, low_f, 1.0f - static_cast<float>(threshold_ & 0xFFFFu), static_cast<int32_t>(n));
    Maxs(low_f, low_f, 0.0f, static_cast<int32_t>(n));
    Mins(low_f, low_f, 1.0f, static_cast<int32_t>(n));
    Muls(high, high, 2.0f, static_cast<int32_t>(n));
    Add(high, high, low_f, static_cast<int32_t>(n));
    LocalTensor<uint8_t> keep = selection_.Get<uint8_t>();
    Compares(keep, high, 2.0f * static_cast<float>(threshold_ >> 16) + 1.0f, CMPMODE::GE, n);
    Muls(values, values, keep_scale_, static_cast<int32_t>(count));
    Select(values, keep, values, 0.0f, SELMODE::VSEL_TENSOR_SCALAR_MODE, count);
  }

 private:
  // Whole 256-byte repeats for Compares (the lanes past count are computed and ignored).
  static __aicore__ inline uint32_t Repeats(uint32_t count) { return (count + 63) / 64 * 64; }

  // dst = a ^ b on n uint32 lanes (uses the scratch buffer).
  __aicore__ inline void Xor(const LocalTensor<uint32_t>& dst, const LocalTensor<uint32_t>& a,
                             const LocalTensor<uint32_t>& b, uint32_t n) {
    LocalTensor<uint16_t> d = dst.ReinterpretCast<uint16_t>();
    LocalTensor<uint16_t> x = a.ReinterpretCast<uint16_t>();
    LocalTensor<uint16_t> y = b.ReinterpretCast<uint16_t>();
    LocalTensor<uint16_t> s = scratch_.Get<uint16_t>();
    const int32_t halves = static_cast<int32_t>(2 * n);
    Or(s, x, y, halves);
    And(d, x, y, halves);
    Not(d, d, halves);
    And(d, d, s, halves);
  }

  // bits ^= bits >> shift
  __aicore__ inline void XorShift(const LocalTensor<uint32_t>& bits, uint32_t shift, uint32_t n) {
    LocalTensor<uint32_t> shifted = operand_.Get<uint32_t>();
    ShiftRight(shifted, bits, shift, static_cast<int32_t>(n));
    Xor(bits, bits, shifted, n);
  }

  // bits *= factor, modulo 2^32
  __aicore__ inline void MulWrap(const LocalTensor<uint32_t>& bits, uint32_t factor, uint32_t n) {
    LocalTensor<int32_t> b = bits.ReinterpretCast<int32_t>();
    Muls(b, b, static_cast<int32_t>(factor), static_cast<int32_t>(n));
  }

  uint64_t seed_ = 0;
  uint32_t threshold_ = 0;
  float keep_scale_ = 1.0f;
  TBuf<TPosition::VECCALC> steps_, bits_, scratch_, operand_, high_, selection_;
};

// A core's tiles. Tiles follow the grid of kLoraVectorTile flat indices
// (index_base + i), so that none straddles a multiple of 2^32: local tile j is
// [j * kLoraVectorTile - grid_offset, (j + 1) * kLoraVectorTile - grid_offset) within [0, n).
struct LoraVectorRange {
  uint64_t n = 0, grid_offset = 0, first_tile = 0, end_tile = 0;

  __aicore__ inline void Init(const LoraVectorTiling& t) {
    n = t.n;
    grid_offset = t.index_base % kLoraVectorTile;
    const uint64_t tiles = (t.n + grid_offset + kLoraVectorTile - 1) / kLoraVectorTile;
    first_tile = static_cast<uint64_t>(GetBlockIdx()) * t.tiles_per_core;
    end_tile = first_tile + t.tiles_per_core < tiles ? first_tile + t.tiles_per_core : tiles;
  }
  __aicore__ inline uint64_t Start(uint64_t tile) const {
    return tile == 0 ? 0 : tile * kLoraVectorTile - grid_offset;
  }
  __aicore__ inline uint32_t Length(uint64_t tile) const {
    const uint64_t end = (tile + 1) * kLoraVectorTile - grid_offset;
    return static_cast<uint32_t>((end < n ? end : n) - Start(tile));
  }
};

template <class T>
__aicore__ inline void CopyInPadded(const LocalTensor<T>& dst, const GlobalTensor<T>& src, uint32_t count) {
  DataCopyPad(dst, src, DataCopyExtParams(1, count * sizeof(T), 0, 0, 0), DataCopyPadExtParams<T>(false, 0, 0, T{}));
}

template <class T>
__aicore__ inline void CopyOutPadded(const GlobalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count) {
  DataCopyPad(dst, src, DataCopyExtParams(1, count * sizeof(T), 0, 0, 0));
}

// x (T) -> fp32 in `values`, `count` elements.
template <class T>
__aicore__ inline void WidenToFloat(const LocalTensor<float>& values, const LocalTensor<T>& x, uint32_t count) {
  if constexpr (IsSameType<T, float>::value) {
    DataCopy(values, x, (count + 7) / 8 * 8);
  } else {
    Cast(values, x, RoundMode::CAST_NONE, count);
  }
}

// out = mask(x) in Out: fp32 (for the fp32 cube), or T itself (a masked copy the
// bf16 cube reads, with keep_scale 1: the kept values exactly, the scale then
// applied to the other factor).
template <class T, class Out>
class LoraMaskKernel {
 public:
  __aicore__ inline LoraMaskKernel() {}

  __aicore__ inline void Init(GM_ADDR x, GM_ADDR out, const LoraVectorTiling& t, TPipe* pipe) {
    t_ = t;
    range_.Init(t);
    x_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(x), t.n);
    out_.SetGlobalBuffer(reinterpret_cast<__gm__ Out*>(out), t.n);
    pipe->InitBuffer(in_queue_, 2, kLoraVectorTile * sizeof(T));
    pipe->InitBuffer(out_queue_, 2, kLoraVectorTile * sizeof(Out));
    if constexpr (!IsSameType<Out, float>::value) pipe->InitBuffer(values_, kLoraVectorTile * sizeof(float));
    mask_.Init(pipe, t.seed, t.threshold, t.keep_scale);
  }

  __aicore__ inline void Process() {
    for (uint64_t tile = range_.first_tile; tile < range_.end_tile; ++tile) {
      const uint64_t start = range_.Start(tile);
      const uint32_t count = range_.Length(tile);
      LocalTensor<T> x = in_queue_.AllocTensor<T>();
      CopyInPadded(x, x_[start], count);
      in_queue_.EnQue(x);
      x = in_queue_.DeQue<T>();
      LocalTensor<Out> out = out_queue_.AllocTensor<Out>();
      LocalTensor<float> values;
      if constexpr (IsSameType<Out, float>::value) {
        values = out;
      } else {
        values = values_.Get<float>();
      }
      WidenToFloat(values, x, count);
      in_queue_.FreeTensor(x);
      mask_.Apply(values, t_.index_base + start, count);
      if constexpr (!IsSameType<Out, float>::value) Cast(out, values, RoundMode::CAST_RINT, count);
      out_queue_.EnQue(out);
      out = out_queue_.DeQue<Out>();
      CopyOutPadded(out_[start], out, count);
      out_queue_.FreeTensor(out);
    }
  }

 private:
  LoraVectorTiling t_;
  LoraVectorRange range_;
  GlobalTensor<T> x_;
  GlobalTensor<Out> out_;
  TQue<TPosition::VECIN, 1> in_queue_;
  TQue<TPosition::VECOUT, 1> out_queue_;
  TBuf<TPosition::VECCALC> values_;
  DropoutMaskTile mask_;
};

template <class T>
class LoraAddMaskedKernel {
 public:
  __aicore__ inline LoraAddMaskedKernel() {}

  __aicore__ inline void Init(GM_ADDR x, GM_ADDR t_gm, const LoraVectorTiling& t, TPipe* pipe) {
    t_ = t;
    range_.Init(t);
    x_.SetGlobalBuffer(reinterpret_cast<__gm__ T*>(x), t.n);
    term_.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(t_gm), t.n);
    pipe->InitBuffer(x_queue_, 2, kLoraVectorTile * sizeof(T));
    pipe->InitBuffer(term_queue_, 2, kLoraVectorTile * sizeof(float));
    pipe->InitBuffer(out_queue_, 2, kLoraVectorTile * sizeof(T));
    pipe->InitBuffer(sum_, kLoraVectorTile * sizeof(float));
    mask_.Init(pipe, t.seed, t.threshold, t.keep_scale);
  }

  __aicore__ inline void Process() {
    for (uint64_t tile = range_.first_tile; tile < range_.end_tile; ++tile) {
      const uint64_t start = range_.Start(tile);
      const uint32_t count = range_.Length(tile);
      LocalTensor<T> x = x_queue_.AllocTensor<T>();
      CopyInPadded(x, x_[start], count);
      x_queue_.EnQue(x);
      LocalTensor<float> term = term_queue_.AllocTensor<float>();
      CopyInPadded(term, term_[start], count);
      term_queue_.EnQue(term);
      x = x_queue_.DeQue<T>();
      term = term_queue_.DeQue<float>();
      // x + mask(scale * t), rounded once into T
      Muls(term, term, t_.scale, static_cast<int32_t>(count));
      mask_.Apply(term, t_.index_base + start, count);
      LocalTensor<T> out = out_queue_.AllocTensor<T>();
      if constexpr (IsSameType<T, float>::value) {
        Add(out, x, term, static_cast<int32_t>(count));
      } else {
        LocalTensor<float> sum = sum_.Get<float>();
        Cast(sum, x, RoundMode::CAST_NONE, count);
        Add(sum, sum, term, static_cast<int32_t>(count));
        Cast(out, sum, RoundMode::CAST_RINT, count);
      }
      x_queue_.FreeTensor(x);
      term_queue_.FreeTensor(term);
      out_queue_.EnQue(out);
      out = out_queue_.DeQue<T>();
      CopyOutPadded(x_[start], out, count);
      out_queue_.FreeTensor(out);
    }
  }

 private:
  LoraVectorTiling t_;
  LoraVectorRange range_;
  GlobalTensor<T> x_;
  GlobalTensor<float> term_;
  TQue<TPosition::VECIN, 1> x_queue_, term_queue_;
  TQue<TPosition::VECOUT, 1> out_queue_;
  TBuf<TPosition::VECCALC> sum_;
  DropoutMaskTile mask_;
};

}  // namespace loraops::ascend

#define LORAOPS_LORA_VECTOR_TILING                                  \
  loraops::ascend::LoraVectorTiling tiling;                         \
  tiling.n = n;                                                     \
  tiling.tiles_per_core = tiles_per_core;                           \
  tiling.index_base = index_base;                                   \
  tiling.seed = seed;                                               \
  tiling.threshold = threshold;                                     \
  tiling.keep_scale = keep_scale;                                   \
  tiling.scale = scale

// One entry point per input type, with the parameters lora_kernels.h declares.
#define LORAOPS_LORA_MASK_ENTRY(name, T, Out)                              \
  extern "C" __global__ __aicore__ void name(LORAOPS_LORA_MASK_TO_FLOAT_PARAMS) { \
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                        \
    const float scale = 1.0f;                                              \
    LORAOPS_LORA_VECTOR_TILING;                                            \
    AscendC::TPipe pipe;                                                   \
    loraops::ascend::LoraMaskKernel<T, Out> kernel;                        \
    kernel.Init(x, out, tiling, &pipe);                                    \
    kernel.Process();                                                      \
  }

#define LORAOPS_LORA_ADD_MASKED_ENTRY(name, T)                          \
  extern "C" __global__ __aicore__ void name(LORAOPS_LORA_ADD_MASKED_PARAMS) { \
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                     \
    LORAOPS_LORA_VECTOR_TILING;                                         \
    AscendC::TPipe pipe;                                                \
    loraops::ascend::LoraAddMaskedKernel<T> kernel;                     \
    kernel.Init(x, term, tiling, &pipe);                                \
    kernel.Process();                                                   \
  }
