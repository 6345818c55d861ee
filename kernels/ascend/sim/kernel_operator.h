// loraops' CPU emulation of the subset of the public Ascend C API that its
// kernels use, so that one kernel source compiles with CANN's compiler for an
// Ascend NPU and with g++ here. Written from the public API documentation
// (names, signatures and documented behaviour); no CANN source is copied.
//
// A vector-only launch (ascend_sim::launch, here) runs every block one after
// another on the calling thread; cube-only and MIX launches, the AI cube core
// and the memories of an AI core are in mix.h, cube.h and memory.h. It turns
// what the hardware punishes silently into a SimError naming the fault:
// - the capacity of each memory (Unified Buffer: 192 KiB per AI vector core);
// - 32-byte alignment of UB operands and of DataCopy lengths (the hardware
//   rounds a DataCopy length down without a word);
// - queue discipline: AllocTensor with no free buffer, EnQue beyond the depth,
//   DeQue with nothing enqueued, FreeTensor of a tensor not held, and tensors
//   still allocated or enqueued when the kernel returns;
// - global memory outside the buffers the launch registered;
// - Gather byte offsets that are not multiples of the element size, Cast
//   pairs and round modes Atlas A2 does not have, bf16 arithmetic.
// It does not model timing, pipe parallelism (PipeBarrier, SetFlag and
// WaitFlag are no-ops: queue order is the only synchronisation), bank
// conflicts or the data cache.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "memory.h"

#define __global__
#define __aicore__
#define __gm__
#ifndef GM_ADDR
#define GM_ADDR uint8_t*
#endif

// Ascend C's scalar types: half is IEEE binary16; bfloat16_t and int4b_t are
// storage types here (bfloat16_t converts to and from float, rounding to
// nearest even; int4b_t only exists inside tensors, two per byte).
using half = _Float16;

struct bfloat16_t {
  uint16_t bits = 0;
  bfloat16_t() = default;
  explicit bfloat16_t(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
      bits = static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
    } else {
      bits = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    }
  }
  explicit operator float() const {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

struct int4b_t {
  uint8_t two_values;
};

// Global, as in the real headers (kernel_utils_macros.h): AscendC::KERNEL_TYPE_*
// does not compile there, so it must not here.
enum KernelMetaType : uint8_t {
  KERNEL_TYPE_AIV_ONLY, KERNEL_TYPE_AIC_ONLY, KERNEL_TYPE_MIX_AIV_1_0, KERNEL_TYPE_MIX_AIC_1_0,
  KERNEL_TYPE_MIX_AIC_1_1, KERNEL_TYPE_MIX_AIC_1_2, KERNEL_TYPE_AICORE, KERNEL_TYPE_VECTORCORE,
  KERNEL_TYPE_MIX_AICORE, KERNEL_TYPE_MIX_VECTOR_CORE, KERNEL_TYPE_MAX
};
// The sim runs vector-core code only; the kernel type is not checked.
#define KERNEL_TASK_TYPE_DEFAULT(value) static_cast<void>(::value)

namespace AscendC {

class SimError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace sim {

constexpr uint32_t kUbBytes = 196608;  // Unified Buffer per AI vector core, Atlas A2
constexpr uint32_t kBlockBytes = 32;   // UB alignment and DataCopy granule
constexpr int kMaxBuffers = 64;        // buffers per kernel

template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  return s.str();
}

[[noreturn]] inline void fail(const std::string& what) { throw SimError("ascend sim: " + what); }

struct GmRegion {
  const uint8_t* begin;
  const uint8_t* end;
};

// The state of one core of the launch: an AI vector core (the only kind a
// vector-only launch has) or, in a MIX launch, the AI cube core of a block.
// What a core did, for the cost model (python/loraops/bench/ascend_model.py):
// bytes moved to and from global memory, cube fractals by input type (16x16x16
// MACs for half/bf16, 16x8x16 for float), 256-byte vector repeats, flag waits.
struct Counts {
  uint64_t gm_read = 0, gm_write = 0;
  uint64_t fractals_half = 0, fractals_bf16 = 0, fractals_float = 0;
  uint64_t vector_repeats = 0;
  uint64_t flag_waits = 0;
};

struct Core {
  Counts counts;
  int32_t type = AIV;          // AIV or AIC, what g_coreType says on the NPU
  int64_t block_idx = 0;       // what GetBlockIdx() returns on this core
  int64_t block_num = 1;
  int64_t sub_block_idx = 0;   // 0 or 1 for the two AIVs of a MIX block; 0 on an AIC
  int64_t task_ration = 1;     // AIVs per block: 2 on an AIV of a MIX launch, else 1
  std::vector<GmRegion> gm;
  Arena memory[static_cast<int>(Memory::kCount)];
  uint8_t* ub = memory[0].ensure(Memory::kUb);
  uint32_t& ub_used = memory[0].used;
  int buffers = 0;
  int64_t held = 0;  // tensors taken from queues (allocated or enqueued) and not freed
  bool pipe_live = false;
  int atomic = 0;    // 0 none, 1 add: what SetAtomicAdd<T>() makes GM stores do
  const char* atomic_type = nullptr;  // the T of SetAtomicAdd<T>
  std::string name() const;  // "AIC of block 3", for fault messages (defined with the launches)
};

// LORAOPS_ASCEND_SIM_COUNT_ONLY=1: Mmad counts its fractals but skips the
// arithmetic, so that the cost model can count target-size shapes (whose
// results are then meaningless).
inline bool count_only() {
  const char* v = std::getenv("LORAOPS_ASCEND_SIM_COUNT_ONLY");
  return v != nullptr && v[0] == '1' && v[1] == '\0';
}

inline Core*& current_core() {
  thread_local Core* core = nullptr;
  return core;
}

inline Core& core() {
  Core* c = current_core();
  if (c == nullptr) fail("an Ascend C API was called outside a kernel launch");
  return *c;
}

template <class T>
constexpr uint64_t bytes_of(uint64_t count) {
  if constexpr (std::is_same_v<T, int4b_t>) {
    return count / 2;
  } else {
    return count * sizeof(T);
  }
}

// Also counts the access (a read, or a write with `write`).
inline void check_gm(const void* address, uint64_t bytes, const char* what, bool write = false) {
  const auto* p = static_cast<const uint8_t*>(address);
  Core& c = core();
  for (const GmRegion& r : c.gm) {
    if (p >= r.begin && p + bytes <= r.end) {
      (write ? c.counts.gm_write : c.counts.gm_read) += bytes;
      return;
    }
  }
  fail(cat(what, ": ", bytes, " bytes of global memory at ", address,
           " are outside every buffer passed to the kernel"));
}

template <class T>
const char* type_name() {
  if constexpr (std::is_same_v<T, float>) return "float";
  else if constexpr (std::is_same_v<T, half>) return "half";
  else if constexpr (std::is_same_v<T, bfloat16_t>) return "bfloat16_t";
  else if constexpr (std::is_same_v<T, int32_t>) return "int32_t";
  else if constexpr (std::is_same_v<T, int16_t>) return "int16_t";
  else if constexpr (std::is_same_v<T, int8_t>) return "int8_t";
  else return "another type";
}

// A store of `count` elements of T into GM, as DataCopy and Fixpipe do it:
// plain, or added to what GM holds after SetAtomicAdd<T>() (in T's precision).
template <class T>
void store_gm(T* to, const T* from, uint64_t count, const char* what) {
  check_gm(to, bytes_of<T>(count), what, true);
  const Core& c = core();
  if (c.atomic == 0) {
    std::memcpy(static_cast<void*>(to), from, bytes_of<T>(count));
    return;
  }
  if (std::strcmp(c.atomic_type, type_name<T>()) != 0) {
    fail(cat(what, ": SetAtomicAdd<", c.atomic_type, "> is set but the store writes ", type_name<T>(),
             "; the hardware would add the bits as the wrong type"));
  }
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, half> || std::is_same_v<T, int32_t> ||
                std::is_same_v<T, int16_t> || std::is_same_v<T, int8_t>) {
    for (uint64_t i = 0; i < count; ++i) to[i] = static_cast<T>(to[i] + from[i]);
  } else if constexpr (std::is_same_v<T, bfloat16_t>) {
    for (uint64_t i = 0; i < count; ++i) to[i] = bfloat16_t(static_cast<float>(to[i]) + static_cast<float>(from[i]));
  } else {
    fail(cat(what, ": atomic add of ", type_name<T>(), " does not exist on Atlas A2"));
  }
}

inline uint32_t ub_offset(const uint8_t* p) { return static_cast<uint32_t>(p - core().ub); }

inline void check_ub(const uint8_t* p, uint64_t bytes, const char* what) {
  const Core& c = core();
  if (c.type != AIV) fail(cat(what, ": a vector instruction on the AI Cube core (the AIC has no Unified Buffer)"));
  if (p < c.ub || p + bytes > c.ub + c.ub_used) {
    fail(cat(what, ": ", bytes, " bytes at UB offset ", static_cast<int64_t>(p - c.ub),
             " run outside the buffers the pipe allocated (", c.ub_used, " bytes)"));
  }
  if (ub_offset(p) % kBlockBytes != 0) {
    fail(cat(what, ": UB address offset ", ub_offset(p), " is not 32-byte aligned"));
  }
}

}  // namespace sim

enum class RoundMode { CAST_NONE = 0, CAST_RINT, CAST_FLOOR, CAST_CEIL, CAST_ROUND, CAST_TRUNC, CAST_ODD, CAST_HYBRID };


inline int64_t GetBlockIdx() { return sim::core().block_idx; }
inline int64_t GetBlockNum() { return sim::core().block_num; }

// Synchronisation is not modelled: the sim runs every instruction in order.
enum pipe_t { PIPE_S, PIPE_V, PIPE_M, PIPE_MTE1, PIPE_MTE2, PIPE_MTE3, PIPE_FIX, PIPE_ALL };
template <pipe_t p>
inline void PipeBarrier() {}

// ----------------------------------------------------------------------------- tensors

template <class T>
class GlobalTensor {
 public:
  using PrimType = T;
  void SetGlobalBuffer(__gm__ T* buffer, uint64_t size) {
    data_ = buffer;
    size_ = size;
  }
  void SetGlobalBuffer(__gm__ T* buffer) {
    data_ = buffer;
    size_ = 0;
  }
  GlobalTensor operator[](uint64_t offset) const {
    GlobalTensor view;
    view.data_ = data_ + offset;
    view.size_ = size_ > offset ? size_ - offset : 0;
    return view;
  }
  T GetValue(uint64_t offset) const {
    sim::check_gm(data_ + offset, sizeof(T), "GlobalTensor::GetValue");
    return data_[offset];
  }
  void SetValue(uint64_t offset, T value) {
    sim::check_gm(data_ + offset, sizeof(T), "GlobalTensor::SetValue", true);
    data_[offset] = value;
  }
  uint64_t GetSize() const { return size_; }
  __gm__ T* GetPhyAddr() const { return data_; }
  __gm__ T* GetPhyAddr(uint64_t offset) const { return data_ + offset; }

 private:
  T* data_ = nullptr;
  uint64_t size_ = 0;  // elements; 0 when not given
};

template <class T>
class LocalTensor {
 public:
  using PrimType = T;
  LocalTensor() = default;
  LocalTensor operator[](uint32_t offset) const {
    if constexpr (std::is_same_v<T, int4b_t>) {
      if (offset % 2) sim::fail("LocalTensor<int4b_t>: an offset must be even");
    }
    if (offset > size_) sim::fail(sim::cat("LocalTensor: offset ", offset, " past the tensor's ", size_, " elements"));
    return LocalTensor(data_ + sim::bytes_of<T>(offset), size_ - offset);
  }
  T GetValue(uint32_t index) const {
    check_index(index, "LocalTensor::GetValue");
    return reinterpret_cast<const T*>(data_)[index];
  }
  template <class U>
  void SetValue(uint32_t index, U value) const {
    check_index(index, "LocalTensor::SetValue");
    reinterpret_cast<T*>(data_)[index] = static_cast<T>(value);
  }
  T& operator()(uint32_t index) const {
    check_index(index, "LocalTensor::operator()");
    return reinterpret_cast<T*>(data_)[index];
  }
  uint32_t GetSize() const { return size_; }
  uint32_t GetLength() const { return static_cast<uint32_t>(sim::bytes_of<T>(size_)); }
  template <class U>
  LocalTensor<U> ReinterpretCast() const {
    const uint64_t bytes = sim::bytes_of<T>(size_);
    const uint64_t count = std::is_same_v<U, int4b_t> ? bytes * 2 : bytes / sizeof(U);
    return LocalTensor<U>(data_, static_cast<uint32_t>(count));
  }
  uint64_t GetPhyAddr() const { return reinterpret_cast<uint64_t>(data_); }

  // The sim's own access, unchecked beyond the tensor's bounds.
  uint8_t* sim_bytes() const { return data_; }
  T* sim_data() const { return reinterpret_cast<T*>(data_); }
  LocalTensor(uint8_t* data, uint32_t size) : data_(data), size_(size) {}

 private:
  template <class U>
  friend class LocalTensor;
  void check_index(uint32_t index, const char* what) const {
    if (index >= size_) sim::fail(sim::cat(what, ": index ", index, " past the tensor's ", size_, " elements"));
  }
  uint8_t* data_ = nullptr;
  uint32_t size_ = 0;  // elements
};

// ----------------------------------------------------------------------------- pipe, queues, buffers

class TPipe;

namespace sim {

// One buffer of a queue and its state in the Alloc -> EnQue -> DeQue -> Free cycle.
struct QueueBuffer {
  uint8_t* data = nullptr;
  uint32_t bytes = 0;
  enum State { kFree, kHeld, kQueued } state = kFree;
};

// Takes `bytes` (rounded up to 32, as InitBuffer does) from the memory that
// holds `pos` on this core.
inline uint8_t* allocate(TPosition pos, uint32_t bytes, const char* what) {
  Core& c = core();
  const Memory m = memory_of(pos);
  if (m == Memory::kNone) fail(cat(what, ": TPosition ", static_cast<int>(pos), " is no on-chip memory"));
  const MemorySpec& s = spec(m);
  if (s.core_type != c.type) {
    fail(cat(what, ": ", s.name, " exists only on the ", s.core_type == AIV ? "AI vector" : "AI cube",
             " cores, and this is the ", c.name()));
  }
  const uint32_t rounded = (bytes + kBlockBytes - 1) / kBlockBytes * kBlockBytes;
  if (++c.buffers > kMaxBuffers) fail(cat(what, ": more than ", kMaxBuffers, " buffers in one kernel"));
  Arena& a = c.memory[static_cast<int>(m)];
  if (static_cast<uint64_t>(a.used) + rounded > s.bytes) {
    fail(cat(what, ": ", s.name, " overflow: ", a.used, " bytes in use + ", rounded, " requested > ", s.bytes,
             " bytes per core"));
  }
  uint8_t* p = a.ensure(m) + a.used;
  a.used += rounded;
  return p;
}

}  // namespace sim

template <TPosition pos, int32_t depth, auto mask = 0>
class TQue {
 public:
  static_assert(depth >= 0, "TQue depth must not be negative");

  template <class T>
  LocalTensor<T> AllocTensor() {
    for (auto& b : buffers_) {
      if (b.state == sim::QueueBuffer::kFree) {
        b.state = sim::QueueBuffer::kHeld;
        ++sim::core().held;
        return LocalTensor<T>(b.data, count_of<T>(b.bytes));
      }
    }
    sim::fail(buffers_.empty() ? "AllocTensor on a queue the pipe never initialised (TPipe::InitBuffer)"
                               : "AllocTensor with every buffer of the queue in use: a FreeTensor is missing");
  }
  template <class T>
  bool EnQue(const LocalTensor<T>& tensor) {
    sim::QueueBuffer& b = find(tensor.sim_bytes(), "EnQue");
    if (b.state != sim::QueueBuffer::kHeld) sim::fail("EnQue of a tensor that is not allocated or is already queued");
    if (static_cast<int32_t>(fifo_.size()) >= std::max<int32_t>(depth, 1)) {
      sim::fail(sim::cat("EnQue beyond the queue depth ", depth, ": DeQue before enqueuing again"));
    }
    b.state = sim::QueueBuffer::kQueued;
    fifo_.push_back(&b);
    return true;
  }
  template <class T>
  LocalTensor<T> DeQue() {
    if (fifo_.empty()) sim::fail("DeQue with nothing enqueued: EnQue first");
    sim::QueueBuffer* b = fifo_.front();
    fifo_.pop_front();
    b->state = sim::QueueBuffer::kHeld;
    return LocalTensor<T>(b->data, count_of<T>(b->bytes));
  }
  template <class T>
  void FreeTensor(LocalTensor<T>& tensor) {
    sim::QueueBuffer& b = find(tensor.sim_bytes(), "FreeTensor");
    if (b.state == sim::QueueBuffer::kFree) sim::fail("FreeTensor of a tensor that is already free");
    if (b.state == sim::QueueBuffer::kQueued) sim::fail("FreeTensor of a tensor still in the queue: DeQue it first");
    b.state = sim::QueueBuffer::kFree;
    --sim::core().held;
  }
  bool VacantInQue() const { return static_cast<int32_t>(fifo_.size()) < std::max<int32_t>(depth, 1); }
  bool HasTensorInQue() const { return !fifo_.empty(); }
  int32_t GetTensorCountInQue() const { return static_cast<int32_t>(fifo_.size()); }

 private:
  friend class TPipe;
  template <class T>
  static uint32_t count_of(uint32_t bytes) {
    return std::is_same_v<T, int4b_t> ? bytes * 2 : bytes / sizeof(T);
  }
  sim::QueueBuffer& find(const uint8_t* data, const char* what) {
    for (auto& b : buffers_) {
      if (b.data == data) return b;
    }
    sim::fail(sim::cat(what, ": the tensor does not start a buffer of this queue"));
  }
  std::vector<sim::QueueBuffer> buffers_;
  std::deque<sim::QueueBuffer*> fifo_;
};

template <TPosition pos>
class TBuf {
 public:
  template <class T>
  LocalTensor<T> Get() const {
    return LocalTensor<T>(data_, count_of<T>(bytes_));
  }
  template <class T>
  LocalTensor<T> Get(uint32_t len) const {
    if (sim::bytes_of<T>(len) > bytes_) sim::fail(sim::cat("TBuf::Get: ", len, " elements exceed the buffer"));
    return LocalTensor<T>(data_, len);
  }
  template <class T>
  LocalTensor<T> GetWithOffset(uint32_t size, uint32_t buf_offset) const {
    if (buf_offset % sim::kBlockBytes) sim::fail("TBuf::GetWithOffset: the byte offset is not 32-byte aligned");
    if (buf_offset + sim::bytes_of<T>(size) > bytes_) sim::fail("TBuf::GetWithOffset: past the end of the buffer");
    return LocalTensor<T>(data_ + buf_offset, size);
  }

 private:
  friend class TPipe;
  template <class T>
  static uint32_t count_of(uint32_t bytes) {
    return std::is_same_v<T, int4b_t> ? bytes * 2 : bytes / sizeof(T);
  }
  uint8_t* data_ = nullptr;
  uint32_t bytes_ = 0;
};

class TPipe {
 public:
  TPipe() {
    sim::Core& c = sim::core();
    if (c.pipe_live) sim::fail("a second TPipe while one is alive: one TPipe per kernel");
    c.pipe_live = true;
  }
  ~TPipe() {
    if (sim::Core* c = sim::current_core()) c->pipe_live = false;
  }
  TPipe(const TPipe&) = delete;
  TPipe& operator=(const TPipe&) = delete;

  template <TPosition pos, int32_t depth, auto mask>
  bool InitBuffer(TQue<pos, depth, mask>& que, uint8_t num, uint32_t len) {
    if (num == 0 || len == 0) sim::fail("TPipe::InitBuffer: a queue needs at least one buffer of at least one byte");
    if (!que.buffers_.empty()) sim::fail("TPipe::InitBuffer: this queue is already initialised");
    for (uint8_t i = 0; i < num; ++i) {
      que.buffers_.push_back(sim::QueueBuffer{sim::allocate(pos, len, "TPipe::InitBuffer"), round_up(len)});
    }
    return true;
  }
  template <TPosition pos>
  bool InitBuffer(TBuf<pos>& buf, uint32_t len) {
    if (buf.data_ != nullptr) sim::fail("TPipe::InitBuffer: this TBuf is already initialised");
    buf.data_ = sim::allocate(pos, len, "TPipe::InitBuffer");
    buf.bytes_ = round_up(len);
    return true;
  }

 private:
  static uint32_t round_up(uint32_t len) { return (len + sim::kBlockBytes - 1) / sim::kBlockBytes * sim::kBlockBytes; }
};

// ----------------------------------------------------------------------------- data movement

struct DataCopyParams {
  uint16_t blockCount = 1;
  uint16_t blockLen = 0;
  uint16_t srcStride = 0;
  uint16_t dstStride = 0;
  DataCopyParams() = default;
  DataCopyParams(uint16_t count, uint16_t len, uint16_t src_stride, uint16_t dst_stride)
      : blockCount(count), blockLen(len), srcStride(src_stride), dstStride(dst_stride) {}
};

struct DataCopyExtParams {
  uint16_t blockCount = 1;
  uint32_t blockLen = 0;  // bytes
  uint32_t srcStride = 0;
  uint32_t dstStride = 0;
  uint32_t rsv = 0;
  DataCopyExtParams() = default;
  DataCopyExtParams(uint16_t count, uint32_t len, uint32_t src_stride, uint32_t dst_stride, uint32_t reserved)
      : blockCount(count), blockLen(len), srcStride(src_stride), dstStride(dst_stride), rsv(reserved) {}
};

template <class T>
struct DataCopyPadExtParams {
  bool isPad = false;
  uint8_t leftPadding = 0;
  uint8_t rightPadding = 0;
  T paddingValue{};
  DataCopyPadExtParams() = default;
  DataCopyPadExtParams(bool is_pad, uint8_t left, uint8_t right, T value)
      : isPad(is_pad), leftPadding(left), rightPadding(right), paddingValue(value) {}
};

namespace sim {

template <class T>
void check_copy_length(uint64_t count, const char* what) {
  const uint64_t bytes = bytes_of<T>(count);
  if (bytes % kBlockBytes != 0) {
    fail(cat(what, ": ", bytes, " bytes is not a multiple of 32; the hardware would move only ",
             bytes / kBlockBytes * kBlockBytes, " and drop the tail without a word (use DataCopyPad)"));
  }
}

template <class T>
void check_local_count(const LocalTensor<T>& t, uint64_t count, const char* what) {
  if (count > t.GetSize()) fail(cat(what, ": ", count, " elements exceed the local tensor's ", t.GetSize()));
  check_ub(t.sim_bytes(), bytes_of<T>(count), what);
}

}  // namespace sim

namespace sim {
template <class T>
void copy_gm_to_l1(const LocalTensor<T>& dst, const GlobalTensor<T>& src, uint32_t count);  // cube.h
template <class T>
void check_reduce_scratch(const LocalTensor<T>& tmp, int32_t count, bool cal_index, const char* what);  // reduce.h
}  // namespace sim

// GM -> UB (GM -> L1 on the AI cube core)
template <class T>
void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, uint32_t count) {
  if (sim::core().type == AIC) return sim::copy_gm_to_l1(dst, src, count);
  sim::check_copy_length<T>(count, "DataCopy GM->UB");
  sim::check_local_count(dst, count, "DataCopy GM->UB");
  sim::check_gm(src.GetPhyAddr(), sim::bytes_of<T>(count), "DataCopy GM->UB");
  std::memcpy(dst.sim_bytes(), src.GetPhyAddr(), sim::bytes_of<T>(count));
}

// UB -> GM
template <class T>
void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count) {
  sim::check_copy_length<T>(count, "DataCopy UB->GM");
  sim::check_local_count(src, count, "DataCopy UB->GM");
  sim::store_gm(dst.GetPhyAddr(), src.sim_data(), count, "DataCopy UB->GM");
}

// UB -> UB
template <class T>
void DataCopy(const LocalTensor<T>& dst, const LocalTensor<T>& src, uint32_t count) {
  sim::check_copy_length<T>(count, "DataCopy UB->UB");
  sim::check_local_count(dst, count, "DataCopy UB->UB");
  sim::check_local_count(src, count, "DataCopy UB->UB");
  std::memmove(dst.sim_bytes(), src.sim_bytes(), sim::bytes_of<T>(count));
}

// GM -> UB, any byte length: blockCount blocks of blockLen bytes; GM blocks
// srcStride bytes apart (end to start), UB blocks each padded to 32 bytes and
// dstStride 32-byte blocks apart. With no pads requested (left and right 0)
// the hardware fills a block's tail with the block's first element whatever
// isPad says: on Atlas A2 isPad only loads the pad-value register
// (set_mov_pad_val), which the copy uses for requested pads alone. Requested
// right pads get paddingValue with isPad, else whatever the register held
// (left as UB garbage here); the rest of the 32 bytes is not written.
template <class T>
void DataCopyPad(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const DataCopyExtParams& p,
                 const DataCopyPadExtParams<T>& pad) {
  constexpr const char* what = "DataCopyPad GM->UB";
  if (p.blockCount == 0 || p.blockLen == 0) return;
  if (p.blockLen % sizeof(T)) sim::fail(sim::cat(what, ": blockLen ", p.blockLen, " bytes is not a multiple of the element size"));
  if (pad.leftPadding != 0) sim::fail(sim::cat(what, ": left padding is not emulated"));
  const uint64_t padded = p.blockLen + uint64_t{pad.rightPadding} * sizeof(T);
  const uint64_t ub_block = (padded + sim::kBlockBytes - 1) / sim::kBlockBytes * sim::kBlockBytes;
  const auto* gm = reinterpret_cast<const uint8_t*>(src.GetPhyAddr());
  uint8_t* ub = dst.sim_bytes();
  const uint64_t ub_total = p.blockCount * ub_block + (p.blockCount - 1) * uint64_t{p.dstStride} * sim::kBlockBytes;
  if (ub_total > dst.GetLength()) sim::fail(sim::cat(what, ": ", ub_total, " bytes exceed the local tensor's ", dst.GetLength()));
  sim::check_ub(ub, ub_total, what);
  for (uint16_t i = 0; i < p.blockCount; ++i) {
    const uint8_t* from = gm + i * (uint64_t{p.blockLen} + p.srcStride);
    uint8_t* to = ub + i * (ub_block + uint64_t{p.dstStride} * sim::kBlockBytes);
    sim::check_gm(from, p.blockLen, what);
    std::memcpy(to, from, p.blockLen);
    if (pad.rightPadding == 0) {
      for (uint64_t b = p.blockLen; b + sizeof(T) <= ub_block; b += sizeof(T)) std::memcpy(to + b, from, sizeof(T));
    } else if (pad.isPad) {
      for (uint64_t b = p.blockLen; b < padded; b += sizeof(T)) std::memcpy(to + b, &pad.paddingValue, sizeof(T));
    }
  }
}

// UB -> GM, any byte length: UB blocks srcStride 32-byte blocks apart (each
// starting 32-byte aligned), GM blocks dstStride bytes apart.
template <class T>
void DataCopyPad(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyExtParams& p) {
  constexpr const char* what = "DataCopyPad UB->GM";
  if (p.blockCount == 0 || p.blockLen == 0) return;
  if (p.blockLen % sizeof(T)) sim::fail(sim::cat(what, ": blockLen ", p.blockLen, " bytes is not a multiple of the element size"));
  const uint64_t ub_block = (p.blockLen + sim::kBlockBytes - 1) / sim::kBlockBytes * sim::kBlockBytes;
  const uint64_t ub_total = (p.blockCount - 1) * (ub_block + uint64_t{p.srcStride} * sim::kBlockBytes) + p.blockLen;
  if (ub_total > src.GetLength()) sim::fail(sim::cat(what, ": ", ub_total, " bytes exceed the local tensor's ", src.GetLength()));
  sim::check_ub(src.sim_bytes(), ub_total, what);
  auto* gm = reinterpret_cast<uint8_t*>(dst.GetPhyAddr());
  for (uint16_t i = 0; i < p.blockCount; ++i) {
    uint8_t* to = gm + i * (uint64_t{p.blockLen} + p.dstStride);
    sim::store_gm(reinterpret_cast<T*>(to),
                  reinterpret_cast<const T*>(src.sim_bytes() + i * (ub_block + uint64_t{p.srcStride} * sim::kBlockBytes)),
                  p.blockLen / sizeof(T), what);
  }
}

// ----------------------------------------------------------------------------- vector instructions (count forms)

namespace sim {

template <class T, class... Allowed>
constexpr bool one_of = (std::is_same_v<T, Allowed> || ...);

template <class T>
void check_operand(const LocalTensor<T>& t, int64_t count, const char* what) {
  if (count < 0) fail(cat(what, ": negative count"));
  check_local_count(t, static_cast<uint64_t>(count), what);
}

// One vector instruction over `bytes` of its widest operand: 256-byte repeats.
inline void count_repeats(uint64_t bytes) { core().counts.vector_repeats += (bytes + 255) / 256; }

template <class T, class Op>
void elementwise(const LocalTensor<T>& dst, const LocalTensor<T>& src, int64_t count, const char* what, Op op) {
  count_repeats(count * sizeof(T));
  check_operand(dst, count, what);
  check_operand(src, count, what);
  T* d = dst.sim_data();
  const T* s = src.sim_data();
  for (int64_t i = 0; i < count; ++i) d[i] = op(s[i]);
}

template <class T, class Op>
void elementwise(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, int64_t count,
                 const char* what, Op op) {
  count_repeats(count * sizeof(T));
  check_operand(dst, count, what);
  check_operand(a, count, what);
  check_operand(b, count, what);
  T* d = dst.sim_data();
  const T* x = a.sim_data();
  const T* y = b.sim_data();
  for (int64_t i = 0; i < count; ++i) d[i] = op(x[i], y[i]);
}

}  // namespace sim

namespace sim {
// Integer lanes wrap modulo 2^bits, as the hardware's (and C++'s signed overflow would be undefined).
template <class T, class Op>
T wrapping(T x, T y, Op op) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(op(static_cast<U>(x), static_cast<U>(y))));
  } else {
    return static_cast<T>(op(x, y));
  }
}
}  // namespace sim

#define LORAOPS_SIM_ARITH_TYPES(T, name)                                                                 \
  static_assert(sim::one_of<T, int16_t, half, int32_t, float>, name ": Atlas A2 supports int16, half, " \
                                                                     "int32 and float only (no bf16 arithmetic)")

template <class T>
void Add(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, const int32_t& count) {
  LORAOPS_SIM_ARITH_TYPES(T, "Add");
  sim::elementwise(dst, a, b, count, "Add", [](T x, T y) { return sim::wrapping(x, y, [](auto u, auto v) { return u + v; }); });
}
template <class T>
void Sub(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, const int32_t& count) {
  LORAOPS_SIM_ARITH_TYPES(T, "Sub");
  sim::elementwise(dst, a, b, count, "Sub", [](T x, T y) { return sim::wrapping(x, y, [](auto u, auto v) { return u - v; }); });
}
template <class T>
void Mul(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, const int32_t& count) {
  LORAOPS_SIM_ARITH_TYPES(T, "Mul");
  sim::elementwise(dst, a, b, count, "Mul", [](T x, T y) { return sim::wrapping(x, y, [](auto u, auto v) { return u * v; }); });
}
template <class T>
void Max(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, const int32_t& count) {
  LORAOPS_SIM_ARITH_TYPES(T, "Max");
  sim::elementwise(dst, a, b, count, "Max", [](T x, T y) { return x > y ? x : y; });
}
template <class T>
void Min(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, const int32_t& count) {
  LORAOPS_SIM_ARITH_TYPES(T, "Min");
  sim::elementwise(dst, a, b, count, "Min", [](T x, T y) { return x < y ? x : y; });
}
template <class T>
void Adds(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalar, const int32_t& count) {
  LORAOPS_SIM_ARITH_TYPES(T, "Adds");
  sim::elementwise(dst, src, count, "Adds",
                   [scalar](T x) { return sim::wrapping(x, scalar, [](auto u, auto v) { return u + v; }); });
}
template <class T>
void Muls(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalar, const int32_t& count) {
  LORAOPS_SIM_ARITH_TYPES(T, "Muls");
  sim::elementwise(dst, src, count, "Muls",
                   [scalar](T x) { return sim::wrapping(x, scalar, [](auto u, auto v) { return u * v; }); });
}
template <class T>
void Maxs(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalar, const int32_t& count) {
  LORAOPS_SIM_ARITH_TYPES(T, "Maxs");
  sim::elementwise(dst, src, count, "Maxs", [scalar](T x) { return x > scalar ? x : scalar; });
}
template <class T>
void Mins(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalar, const int32_t& count) {
  LORAOPS_SIM_ARITH_TYPES(T, "Mins");
  sim::elementwise(dst, src, count, "Mins", [scalar](T x) { return x < scalar ? x : scalar; });
}
// Count forms of Exp and Ln (half and float on Atlas A2). The hardware's
// rounding of exp and ln is not documented; the emulation rounds the float
// result of the C library's.
template <class T>
void Exp(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t& count) {
  static_assert(sim::one_of<T, half, float>, "Exp: half and float only");
  sim::elementwise(dst, src, count, "Exp", [](T x) { return static_cast<T>(std::exp(static_cast<float>(x))); });
}
template <class T>
void Ln(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t& count) {
  static_assert(sim::one_of<T, half, float>, "Ln: half and float only");
  sim::elementwise(dst, src, count, "Ln", [](T x) { return static_cast<T>(std::log(static_cast<float>(x))); });
}
template <class T>
void Abs(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t& count) {
  static_assert(sim::one_of<T, half, float>, "Abs: half and float only");
  sim::elementwise(dst, src, count, "Abs", [](T x) { return x < T(0) ? static_cast<T>(-x) : x; });
}
template <class T>
void Duplicate(const LocalTensor<T>& dst, const T& scalar, const int32_t& count) {
  static_assert(sim::one_of<T, int16_t, uint16_t, half, bfloat16_t, int32_t, uint32_t, float>,
                "Duplicate: 16- and 32-bit types only");
  sim::count_repeats(static_cast<uint64_t>(count) * sizeof(T));
  sim::check_operand(dst, count, "Duplicate");
  std::fill_n(dst.sim_data(), count, scalar);
}

// dst[i] = firstValue + i
template <class T>
void CreateVecIndex(LocalTensor<T> dst, const T& firstValue, uint32_t count) {
  static_assert(sim::one_of<T, half, int16_t, float, int32_t>, "CreateVecIndex: half, int16, float and int32 only");
  sim::count_repeats(static_cast<uint64_t>(count) * sizeof(T));
  sim::check_operand(dst, count, "CreateVecIndex");
  for (uint32_t i = 0; i < count; ++i) {
    if constexpr (std::is_integral_v<T>) {
      dst.sim_data()[i] = sim::wrapping(firstValue, static_cast<T>(i), [](auto u, auto v) { return u + v; });
    } else {
      dst.sim_data()[i] = static_cast<T>(static_cast<float>(firstValue) + static_cast<float>(i));
    }
  }
}

// The types AndImpl / OrImpl accept on Atlas A2 (dav_c220 kernel_operator_vec_binary_impl.h).
#define LORAOPS_SIM_BITWISE_TYPES(T, name)                                               \
  static_assert(sim::one_of<T, int16_t, uint16_t, int32_t, uint32_t>, name ": 16- and 32-bit " \
                                                                          "integers only (reinterpret other data)")

template <class T>
void And(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, const int32_t& count) {
  LORAOPS_SIM_BITWISE_TYPES(T, "And");
  sim::elementwise(dst, a, b, count, "And", [](T x, T y) { return static_cast<T>(x & y); });
}
template <class T>
void Or(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, const int32_t& count) {
  LORAOPS_SIM_BITWISE_TYPES(T, "Or");
  sim::elementwise(dst, a, b, count, "Or", [](T x, T y) { return static_cast<T>(x | y); });
}
template <class T>
void Not(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t& count) {
  LORAOPS_SIM_BITWISE_TYPES(T, "Not");
  sim::elementwise(dst, src, count, "Not", [](T x) { return static_cast<T>(~x); });
}

#define LORAOPS_SIM_SHIFT_TYPES(T, name) \
  static_assert(sim::one_of<T, int16_t, uint16_t, int32_t, uint32_t>, name ": 16- and 32-bit integers only")

template <class T>
void ShiftLeft(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalar, const int32_t& count) {
  LORAOPS_SIM_SHIFT_TYPES(T, "ShiftLeft");
  using U = std::make_unsigned_t<T>;
  sim::elementwise(dst, src, count, "ShiftLeft", [scalar](T x) { return static_cast<T>(static_cast<U>(x) << scalar); });
}
// Arithmetic for signed types, logical for unsigned.
template <class T>
void ShiftRight(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalar, const int32_t& count) {
  LORAOPS_SIM_SHIFT_TYPES(T, "ShiftRight");
  sim::elementwise(dst, src, count, "ShiftRight", [scalar](T x) { return static_cast<T>(x >> scalar); });
}

// dst[i] = src[(srcBaseAddr + srcOffset[i]) / sizeof(T)]; offsets in bytes.
template <class T>
void Gather(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<uint32_t>& srcOffset,
            const uint32_t srcBaseAddr, const uint32_t count) {
  static_assert(sim::one_of<T, int16_t, uint16_t, half, bfloat16_t, int32_t, uint32_t, float>,
                "Gather: 16- and 32-bit types only");
  // The count form issues count / (256 / sizeof(T)) full repeats, a count held
  // in 8 bits (kernel_operator_vec_gather_intf_impl.h): beyond 255 the hardware
  // silently drops the rest.
  constexpr uint32_t kPerRepeat = 256 / sizeof(T);
  if (count / kPerRepeat > 255) {
    sim::fail(sim::cat("Gather: ", count, " elements are ", count / kPerRepeat, " full repeats of ", kPerRepeat,
                       "; the repeat count is 8 bits, so at most ", 256 * kPerRepeat - 1, " elements per call"));
  }
  sim::count_repeats(static_cast<uint64_t>(count) * sizeof(T));
  sim::check_operand(dst, count, "Gather");
  sim::check_operand(srcOffset, count, "Gather");
  if (dst.sim_bytes() == src.sim_bytes()) sim::fail("Gather: src and dst must not be the same memory");
  const uint32_t* offsets = srcOffset.sim_data();
  T* d = dst.sim_data();
  for (uint32_t i = 0; i < count; ++i) {
    const uint64_t byte = uint64_t{srcBaseAddr} + offsets[i];
    if (byte % sizeof(T)) {
      sim::fail(sim::cat("Gather: byte offset ", byte, " of element ", i, " is not a multiple of ", sizeof(T),
                         "; the hardware would return shifted data without a word"));
    }
    const uint64_t index = byte / sizeof(T);
    if (index >= src.GetSize()) sim::fail(sim::cat("Gather: element ", i, " reads past the source tensor"));
    d[i] = src.sim_data()[index];
  }
}

// ----------------------------------------------------------------------------- compare, select, reduce

enum class CMPMODE : uint8_t { LT = 0, GT, EQ, LE, GE, NE };
enum class SELMODE : uint8_t { VSEL_CMPMASK_SPR = 0, VSEL_TENSOR_SCALAR_MODE, VSEL_TENSOR_TENSOR_MODE };

namespace sim {

template <class T>
bool compare(T a, T b, CMPMODE mode) {
  switch (mode) {
    case CMPMODE::LT: return a < b;
    case CMPMODE::GT: return a > b;
    case CMPMODE::EQ: return a == b;
    case CMPMODE::LE: return a <= b;
    case CMPMODE::GE: return a >= b;
    default: return a != b;
  }
}

// Compare and Compares work on whole 256-byte repeats: a partial last repeat is
// dropped by the hardware without a word.
template <class T>
void check_repeats(uint32_t count, const char* what) {
  if (count * sizeof(T) % 256 != 0) {
    fail(cat(what, ": ", count, " elements are not whole 256-byte repeats; the hardware would ignore the last ",
             count * sizeof(T) % 256, " bytes"));
  }
}

template <class U>
void set_mask_bits(const LocalTensor<U>& dst, uint32_t count, const char* what, auto&& bit) {
  check_operand(dst.template ReinterpretCast<uint8_t>(), (count + 7) / 8, what);
  uint8_t* bits = dst.sim_bytes();
  std::memset(bits, 0, (count + 7) / 8);
  for (uint32_t i = 0; i < count; ++i) bits[i / 8] |= static_cast<uint8_t>(bit(i) ? 1u << (i % 8) : 0u);
}

}  // namespace sim

// One bit per element, element i in byte i / 8, bit i % 8.
template <class T, class U>
void Compare(const LocalTensor<U>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1, CMPMODE mode,
             uint32_t count) {
  static_assert(sim::one_of<T, half, float>, "Compare: half and float (int32 EQ only, not emulated)");
  sim::check_repeats<T>(count, "Compare");
  sim::count_repeats(static_cast<uint64_t>(count) * sizeof(T));
  sim::check_operand(src0, count, "Compare");
  sim::check_operand(src1, count, "Compare");
  sim::set_mask_bits(dst, count, "Compare",
                     [&](uint32_t i) { return sim::compare(src0.sim_data()[i], src1.sim_data()[i], mode); });
}

template <class T, class U>
void Compares(const LocalTensor<U>& dst, const LocalTensor<T>& src0, const T scalar, CMPMODE mode, uint32_t count) {
  static_assert(sim::one_of<T, half, float>, "Compares: half and float only");
  sim::check_repeats<T>(count, "Compares");
  sim::count_repeats(static_cast<uint64_t>(count) * sizeof(T));
  sim::check_operand(src0, count, "Compares");
  sim::set_mask_bits(dst, count, "Compares", [&](uint32_t i) { return sim::compare(src0.sim_data()[i], scalar, mode); });
}

namespace sim {
// Select in modes 1 and 2 uses the top 8 KiB of the Unified Buffer as scratch.
constexpr uint32_t kSelectReservedBytes = 8192;
inline void check_select_scratch(const char* what) {
  if (core().ub_used > kUbBytes - kSelectReservedBytes) {
    fail(cat(what, ": modes 1 and 2 use the top 8192 bytes of UB as scratch, but the pipe allocated ", core().ub_used,
             " bytes (at most ", kUbBytes - kSelectReservedBytes, ")"));
  }
}
}  // namespace sim

// Mask bit 1 takes src0, 0 takes the scalar (mode VSEL_TENSOR_SCALAR_MODE).
template <class T, class U>
void Select(const LocalTensor<T>& dst, const LocalTensor<U>& selMask, const LocalTensor<T>& src0, T src1, SELMODE mode,
            uint32_t count) {
  static_assert(sim::one_of<T, half, float>, "Select: half and float only");
  if (mode != SELMODE::VSEL_TENSOR_SCALAR_MODE) sim::fail("Select with a scalar needs VSEL_TENSOR_SCALAR_MODE");
  sim::check_select_scratch("Select");
  sim::count_repeats(static_cast<uint64_t>(count) * sizeof(T));
  sim::check_operand(dst, count, "Select");
  sim::check_operand(src0, count, "Select");
  sim::check_operand(selMask.template ReinterpretCast<uint8_t>(), (count + 7) / 8, "Select");
  const uint8_t* bits = selMask.sim_bytes();
  for (uint32_t i = 0; i < count; ++i) dst.sim_data()[i] = (bits[i / 8] >> (i % 8)) & 1 ? src0.sim_data()[i] : src1;
}

// dst[0] = max(src[0, count)); with calIndex, dst[1] holds the first index of
// the maximum in T's bits. sharedTmpBuffer must be given (unused here).
template <class T>
void ReduceMax(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& sharedTmpBuffer,
               const int32_t count, bool calIndex = false) {
  static_assert(sim::one_of<T, half, float>, "ReduceMax: half and float only");
  if (count <= 0) sim::fail("ReduceMax: count must be positive");
  sim::count_repeats(uint64_t(count) * sizeof(T));
  sim::check_operand(src, count, "ReduceMax");
  sim::check_operand(dst, calIndex ? 2 : 1, "ReduceMax");
  sim::check_reduce_scratch<T>(sharedTmpBuffer, count, calIndex, "ReduceMax");
  const T* x = src.sim_data();
  int32_t best = 0;
  for (int32_t i = 1; i < count; ++i) best = x[i] > x[best] ? i : best;
  dst.sim_data()[0] = x[best];
  if (calIndex) {
    using Bits = std::conditional_t<sizeof(T) == 2, uint16_t, uint32_t>;
    const Bits index = static_cast<Bits>(best);
    std::memcpy(dst.sim_data() + 1, &index, sizeof index);
  }
}

// dst[0] = sum(src[0, count)). On Atlas A2 the count form is one vcadd whose
// accumulator the scalar unit reads back: count in [1, UB bytes / sizeof(T)],
// sharedTmpBuffer not touched (the signature still takes it), nothing of dst
// but element 0 written. The order of the hardware's additions is not
// documented; the emulation adds in index order in T.
template <class T>
void ReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& sharedTmpBuffer,
               const int32_t count) {
  static_assert(sim::one_of<T, half, float>, "ReduceSum: half and float only");
  if (count < 1 || static_cast<uint64_t>(count) > sim::kUbBytes / sizeof(T)) {
    sim::fail(sim::cat("ReduceSum: count ", count, " is outside [1, ", sim::kUbBytes / sizeof(T), "]"));
  }
  sim::count_repeats(uint64_t(count) * sizeof(T));
  sim::check_operand(src, count, "ReduceSum");
  sim::check_operand(dst, 1, "ReduceSum");
  const T* x = src.sim_data();
  T sum = x[0];
  for (int32_t i = 1; i < count; ++i) sum = static_cast<T>(sum + x[i]);
  dst.sim_data()[0] = sum;
}

// ----------------------------------------------------------------------------- Cast

namespace sim {

template <class To>
To round_float(double x, RoundMode mode) {
  double r;
  switch (mode) {
    case RoundMode::CAST_RINT: r = std::nearbyint(x); break;  // the default FE_TONEAREST: half to even
    case RoundMode::CAST_FLOOR: r = std::floor(x); break;
    case RoundMode::CAST_CEIL: r = std::ceil(x); break;
    case RoundMode::CAST_ROUND: r = std::round(x); break;
    case RoundMode::CAST_TRUNC: r = std::trunc(x); break;
    default: fail("Cast to an integer needs one of CAST_RINT, CAST_FLOOR, CAST_CEIL, CAST_ROUND, CAST_TRUNC");
  }
  return static_cast<To>(r);
}

inline float bf16_round(float x, RoundMode mode) {
  if (mode == RoundMode::CAST_RINT) return static_cast<float>(bfloat16_t(x));
  fail("Cast float->bfloat16_t: only CAST_RINT is emulated (CAST_NONE does not exist on Atlas A2)");
}

}  // namespace sim

// The pairs and modes Atlas A2 supports that loraops' kernels use; anything
// else is refused, since the NPU build would reject or mis-handle it.
template <class To, class From>
void Cast(const LocalTensor<To>& dst, const LocalTensor<From>& src, const RoundMode& mode, const uint32_t count) {
  sim::count_repeats(static_cast<uint64_t>(count) * std::max(sizeof(To), sizeof(From)));
  sim::check_operand(dst, count, "Cast");
  sim::check_operand(src, count, "Cast");
  To* d = dst.sim_data();
  if constexpr (std::is_same_v<From, int4b_t> && std::is_same_v<To, half>) {
    // Byte i holds element 2i in its LOW nibble and 2i+1 in its high nibble, each signed.
    if (mode != RoundMode::CAST_NONE) sim::fail("Cast int4b_t->half: CAST_NONE only");
    if (count % 2) sim::fail("Cast int4b_t->half: the count must be even");
    const uint8_t* s = src.sim_bytes();
    for (uint32_t i = 0; i < count; ++i) {
      const int v = (s[i / 2] >> (4 * (i % 2))) & 0xF;
      d[i] = static_cast<half>(v >= 8 ? v - 16 : v);
    }
  } else if constexpr (std::is_same_v<From, uint8_t> && std::is_same_v<To, half>) {
    if (mode != RoundMode::CAST_NONE) sim::fail("Cast uint8->half: CAST_NONE only");
    for (uint32_t i = 0; i < count; ++i) d[i] = static_cast<half>(src.sim_data()[i]);
  } else if constexpr ((std::is_same_v<From, half> || std::is_same_v<From, float>) &&
                       (std::is_same_v<To, int32_t> || std::is_same_v<To, int16_t>)) {
    for (uint32_t i = 0; i < count; ++i) d[i] = sim::round_float<To>(static_cast<double>(src.sim_data()[i]), mode);
  } else if constexpr (std::is_same_v<From, half> && std::is_same_v<To, uint8_t>) {
    for (uint32_t i = 0; i < count; ++i) {
      const double v = static_cast<double>(src.sim_data()[i]);
      d[i] = mode == RoundMode::CAST_NONE ? static_cast<uint8_t>(std::nearbyint(v)) : sim::round_float<uint8_t>(v, mode);
    }
  } else if constexpr (std::is_same_v<From, half> && std::is_same_v<To, float>) {
    if (mode != RoundMode::CAST_NONE) sim::fail("Cast half->float: CAST_NONE only");
    for (uint32_t i = 0; i < count; ++i) d[i] = static_cast<float>(src.sim_data()[i]);
  } else if constexpr (std::is_same_v<From, bfloat16_t> && std::is_same_v<To, float>) {
    if (mode != RoundMode::CAST_NONE) sim::fail("Cast bfloat16_t->float: CAST_NONE only");
    for (uint32_t i = 0; i < count; ++i) d[i] = static_cast<float>(src.sim_data()[i]);
  } else if constexpr (std::is_same_v<From, float> && std::is_same_v<To, bfloat16_t>) {
    for (uint32_t i = 0; i < count; ++i) d[i] = bfloat16_t(sim::bf16_round(src.sim_data()[i], mode));
  } else if constexpr (std::is_same_v<From, float> && std::is_same_v<To, half>) {
    // _Float16 conversion rounds to nearest even, which CAST_RINT and CAST_NONE are.
    if (mode != RoundMode::CAST_RINT && mode != RoundMode::CAST_NONE) {
      sim::fail("Cast float->half: only CAST_RINT and CAST_NONE are emulated");
    }
    for (uint32_t i = 0; i < count; ++i) d[i] = static_cast<half>(src.sim_data()[i]);
  } else if constexpr (std::is_same_v<From, int32_t> && std::is_same_v<To, float>) {
    if (mode != RoundMode::CAST_NONE && mode != RoundMode::CAST_RINT) {
      sim::fail("Cast int32->float: only CAST_NONE and CAST_RINT are emulated");
    }
    for (uint32_t i = 0; i < count; ++i) d[i] = static_cast<float>(src.sim_data()[i]);
  } else {
    static_assert(!std::is_same_v<To, To>, "Cast: this pair is not available on Atlas A2 or not emulated");
  }
}

}  // namespace AscendC

// The AI cube core: L1/L0 data movement, Mmad, Fixpipe, DMA atomics.
#include "cube.h"
// ReduceMax's scratch size.
#include "reduce.h"

// ----------------------------------------------------------------------------- launching

namespace ascend_sim {

using AscendC::sim::GmRegion;

// A buffer in global memory the kernel may touch.
inline GmRegion gm_region(const void* data, uint64_t bytes) {
  const auto* p = static_cast<const uint8_t*>(data);
  return GmRegion{p, p + bytes};
}

// The launch log the cost model reads (torch.ops.loraops._ascend_sim_launch_log):
// one JSON object per launch, recorded once the log has been read the first
// time (so test runs that never read it keep nothing).
struct LaunchLog {
  std::mutex mu;
  bool recording = false;
  std::vector<std::string> records;
};
inline LaunchLog& launch_log() {
  static LaunchLog log;
  return log;
}

// The name the next launches on this thread are logged under.
inline std::string& launch_name() {
  thread_local std::string name;
  return name;
}
struct NamedLaunch {
  explicit NamedLaunch(const char* name) { launch_name() = name; }
  ~NamedLaunch() { launch_name().clear(); }
  NamedLaunch(const NamedLaunch&) = delete;
  NamedLaunch& operator=(const NamedLaunch&) = delete;
};

// One launch's cores (true for an AIC) and what each did; `gm` the buffers it was given.
inline void record_launch(const char* core_type, uint32_t block_dim, const std::vector<GmRegion>& gm,
                          const std::vector<std::pair<bool, AscendC::sim::Counts>>& cores) {
  LaunchLog& log = launch_log();
  std::lock_guard<std::mutex> lock(log.mu);
  if (!log.recording) return;
  AscendC::sim::Counts total;
  uint64_t cube_busy = 0;
  std::ostringstream repeats;
  bool first = true;
  for (const auto& [is_cube, c] : cores) {
    total.gm_read += c.gm_read;
    total.gm_write += c.gm_write;
    total.fractals_half += c.fractals_half;
    total.fractals_bf16 += c.fractals_bf16;
    total.fractals_float += c.fractals_float;
    total.flag_waits += c.flag_waits;
    if (is_cube) {
      cube_busy += c.fractals_half + c.fractals_bf16 + c.fractals_float > 0 ? 1 : 0;
    } else {
      repeats << (first ? "" : ", ") << c.vector_repeats;
      first = false;
    }
  }
  uint64_t buffer_bytes = 0;
  for (const GmRegion& r : gm) buffer_bytes += static_cast<uint64_t>(r.end - r.begin);
  const std::string& name = launch_name();
  std::ostringstream r;
  r << "{\"kernel\": \"" << (name.empty() ? "unnamed" : name) << "\", \"block_dim\": " << block_dim
    << ", \"core_type\": \"" << core_type << "\", \"gm_read_bytes\": " << total.gm_read
    << ", \"gm_write_bytes\": " << total.gm_write << ", \"gm_buffer_bytes\": " << buffer_bytes
    << ", \"mmad_fractals\": {\"half\": " << total.fractals_half
    << ", \"bf16\": " << total.fractals_bf16 << ", \"float\": " << total.fractals_float
    << "}, \"vector_repeats\": [" << repeats.str() << "], \"cube_cores_busy\": " << cube_busy
    << ", \"flag_waits\": " << total.flag_waits << "}";
  log.records.push_back(r.str());
}

// The records since the last reset, as a JSON array; starts the recording.
inline std::string read_launch_log(bool reset) {
  LaunchLog& log = launch_log();
  std::lock_guard<std::mutex> lock(log.mu);
  log.recording = true;
  std::string out = "[";
  for (size_t i = 0; i < log.records.size(); ++i) out += (i ? ",\n " : "") + log.records[i];
  out += "]";
  if (reset) log.records.clear();
  return out;
}

// Runs blocks 0 .. block_dim-1 of `kernel(args...)`, one after another, as
// `kernel<<<block_dim, nullptr, stream>>>(args...)` would on the NPU; throws
// AscendC::SimError at the first fault, naming the block.
template <class Kernel, class... Args>
void launch(uint32_t block_dim, std::vector<GmRegion> gm, Kernel kernel, Args... args) {
  using AscendC::sim::Core;
  if (block_dim == 0 || block_dim > 65535) AscendC::sim::fail("blockDim must be in [1, 65535]");
  std::vector<std::pair<bool, AscendC::sim::Counts>> counts;
  for (uint32_t b = 0; b < block_dim; ++b) {
    Core core;
    core.block_idx = b;
    core.block_num = block_dim;
    core.gm = gm;
    AscendC::sim::current_core() = &core;
    try {
      kernel(args...);
      if (core.held != 0) {
        AscendC::sim::fail(AscendC::sim::cat(core.held, " queue tensor(s) still allocated or enqueued when the "
                                             "kernel returned: a FreeTensor is missing"));
      }
      if (core.atomic) AscendC::sim::fail("SetAtomicAdd still on when the kernel returned: SetAtomicNone is missing");
    } catch (const AscendC::SimError& e) {
      AscendC::sim::current_core() = nullptr;
      throw AscendC::SimError(std::string(e.what()) + " (block " + std::to_string(b) + " of " +
                              std::to_string(block_dim) + ")");
    } catch (...) {
      AscendC::sim::current_core() = nullptr;
      throw;
    }
    AscendC::sim::current_core() = nullptr;
    counts.emplace_back(false, core.counts);
  }
  record_launch("aiv", block_dim, gm, counts);
}

}  // namespace ascend_sim

// Cube-only and MIX launches, cross-core flags, SyncAll.
#include "mix.h"
