// The AI Cube core of the emulation (Atlas A2, arch 2201): the subset of the
// basic cube API a general GEMM needs, with the names, parameter structs and
// units of the real Ascend C API. Included at the end of kernel_operator.h.
//
// Layouts, as the instructions produce and consume them (C0 = 32 bytes of
// elements: 16 for half/bf16, 8 for float; a fractal is 16 rows x C0 = 512 B):
// - L1 (A1/B1): whatever DataCopy with Nd2NzParams writes: 32-byte row pieces,
//   piece k of row r of matrix i at i*dstNzMatrixStride elements + r*dstNzNStride
//   + k*dstNzC0Stride blocks of 32 B, a row's last piece zero-filled ("Nz" when
//   dstNzC0Stride is the row count rounded up to 16 and dstNzNStride is 1);
// - L0A (A2), what Mmad reads as A[m][k]: "Zz", fractal (m/16, k/C0) at
//   fractal index (m/16)*K1 + k/C0, rows inside, K1 = ceil(k/C0) (with
//   kDirectionAlign, float: 2*ceil(k/16));
// - L0B (B2), B[k][n]: "Zn", fractal (k/C0, n/16) at (k/C0)*N1 + n/16,
//   N1 = ceil(n/16), holding 16 n-rows of C0 k-values;
// - L0C (CO1), C[m][n] in float: "Nz" with 16x16 fractals, element (m, n) at
//   (n/16)*M16*16 + m*16 + n%16, M16 = m rounded up to 16.
// Mmad sums exactly k products (padding inside the last fractal does not
// enter), as the cube does with mmadParams.k = k (the 2201 matmul samples).
#pragma once

namespace AscendC {

struct Nd2NzParams {
  Nd2NzParams() = default;
  Nd2NzParams(uint16_t ndNumIn, uint16_t nValueIn, uint16_t dValueIn, uint16_t srcNdMatrixStrideIn,
              uint16_t srcDValueIn, uint16_t dstNzC0StrideIn, uint16_t dstNzNStrideIn, uint16_t dstNzMatrixStrideIn)
      : ndNum(ndNumIn), nValue(nValueIn), dValue(dValueIn), srcNdMatrixStride(srcNdMatrixStrideIn),
        srcDValue(srcDValueIn), dstNzC0Stride(dstNzC0StrideIn), dstNzNStride(dstNzNStrideIn),
        dstNzMatrixStride(dstNzMatrixStrideIn) {}
  uint16_t ndNum = 0;
  uint16_t nValue = 0;             // rows of each ND matrix
  uint16_t dValue = 0;             // elements per row
  uint16_t srcNdMatrixStride = 0;  // elements between ND matrices in GM
  uint16_t srcDValue = 0;          // elements between rows in GM
  uint16_t dstNzC0Stride = 0;      // 32-byte blocks between a row's pieces in L1
  uint16_t dstNzNStride = 0;       // 32-byte blocks between rows in L1
  uint16_t dstNzMatrixStride = 0;  // elements between matrices in L1
};

using LoadData2dParams = struct LoadData2DParams;
struct LoadData2DParams {
  LoadData2DParams() = default;
  LoadData2DParams(uint16_t startIndexIn, uint8_t repeatTimesIn, uint16_t srcStrideIn, uint8_t sidIn,
                   uint16_t dstGapIn, bool ifTransposeIn, uint8_t addrModeIn)
      : startIndex(startIndexIn), dstGap(dstGapIn), srcStride(srcStrideIn), ifTranspose(ifTransposeIn),
        repeatTimes(repeatTimesIn), sid(sidIn), addrMode(addrModeIn) {}
  uint16_t startIndex = 0;  // first source fractal (512 B units)
  uint16_t dstGap = 0;      // fractals between one destination fractal's end and the next one's start
  uint16_t srcStride = 0;   // fractals between source fractals, start to start
  bool ifTranspose = false; // transpose each 16x16 fractal (16-bit types only)
  uint8_t repeatTimes = 0;
  uint8_t sid = 0;
  uint8_t addrMode = 0;
};

struct LoadData2dTransposeParams {
  LoadData2dTransposeParams() = default;
  LoadData2dTransposeParams(uint16_t startIndexIn, uint8_t repeatTimesIn, uint16_t srcStrideIn, uint16_t dstGapIn,
                            uint16_t dstfracGapIn, uint8_t addrModeIn)
      : startIndex(startIndexIn), repeatTimes(repeatTimesIn), srcStride(srcStrideIn), dstGap(dstGapIn),
        dstFracGap(dstfracGapIn), addrMode(addrModeIn) {}
  LoadData2dTransposeParams(uint16_t startIndexIn, uint8_t repeatTimesIn, uint16_t srcStrideIn, uint16_t dstGapIn,
                            uint16_t dstfracGapIn)
      : startIndex(startIndexIn), repeatTimes(repeatTimesIn), srcStride(srcStrideIn), dstGap(dstGapIn),
        dstFracGap(dstfracGapIn) {}
  uint16_t startIndex = 0;  // first source square
  uint8_t repeatTimes = 0;
  uint16_t srcStride = 0;   // squares between source squares, start to start
  uint16_t dstGap = 0;      // destination fractals between repeats, less one
  uint16_t dstFracGap = 0;  // fractals between the two halves of a transposed 32-bit square, less one
  uint8_t addrMode = 0;
};

struct MmadParams {
  MmadParams() = default;
  MmadParams(uint16_t mIn, uint16_t nIn, uint16_t kIn, bool isBiasIn, int32_t fmOffsetIn, bool enSsparseIn,
             bool enWinogradAIn, bool enWinogradBIn)
      : m(mIn), n(nIn), k(kIn), isBias(isBiasIn), fmOffset(fmOffsetIn), enSsparse(enSsparseIn),
        enWinogradA(enWinogradAIn), enWinogradB(enWinogradBIn) {}
  MmadParams(uint16_t mIn, uint16_t nIn, uint16_t kIn, uint8_t unitFlagIn, bool cmatrixSourceIn,
             bool cmatrixInitValIn)
      : m(mIn), n(nIn), k(kIn), unitFlag(unitFlagIn), cmatrixSource(cmatrixSourceIn),
        cmatrixInitVal(cmatrixInitValIn) {}
  uint16_t m = 0;
  uint16_t n = 0;
  uint16_t k = 0;
  bool isBias = false;  // true: add into what L0C holds
  int32_t fmOffset = 0;
  bool enSsparse = false;
  bool enWinogradA = false;
  bool enWinogradB = false;
  uint8_t unitFlag = 0;
  bool kDirectionAlign = false;  // float: L0A's k fractals come in pairs (k rounded up to 16)
  bool cmatrixSource = false;    // true: the initial C comes from the bias table
  bool cmatrixInitVal = true;    // true: start from 0 (unless isBias)
};

enum class CO2Layout : uint8_t { NZ = 0, ROW_MAJOR, COLUMN_MAJOR };
struct FixpipeConfig {
  CO2Layout format;
};
constexpr FixpipeConfig CFG_NZ = {CO2Layout::NZ};
constexpr FixpipeConfig CFG_ROW_MAJOR = {CO2Layout::ROW_MAJOR};
constexpr FixpipeConfig CFG_COLUMN_MAJOR = {CO2Layout::COLUMN_MAJOR};

}  // namespace AscendC

// A compiler builtin on the NPU, hence global.
enum class QuantMode_t : uint64_t { NoQuant, DEQF16, DEQS16, F322BF16, F322F16 };

namespace AscendC {

struct FixpipeParamsV220 {
  FixpipeParamsV220() = default;
  FixpipeParamsV220(uint16_t nSizeIn, uint16_t mSizeIn, uint16_t srcStrideIn, uint32_t dstStrideIn, bool reluEnIn)
      : nSize(nSizeIn), mSize(mSizeIn), srcStride(srcStrideIn), dstStride(dstStrideIn), reluEn(reluEnIn) {}
  FixpipeParamsV220(uint16_t nSizeIn, uint16_t mSizeIn, uint16_t srcStrideIn, uint32_t dstStrideIn, bool reluEnIn,
                    QuantMode_t quantPreIn, int64_t deqScalarIn, uint16_t ndNumIn, uint16_t srcNdStrideIn,
                    uint16_t dstNdStrideIn, uint8_t unitFlagIn, bool isChannelSplitIn = false)
      : nSize(nSizeIn), mSize(mSizeIn), srcStride(srcStrideIn), dstStride(dstStrideIn), quantPre(quantPreIn),
        deqScalar(static_cast<uint64_t>(deqScalarIn)), ndNum(ndNumIn), srcNdStride(srcNdStrideIn),
        dstNdStride(dstNdStrideIn), reluEn(reluEnIn), unitFlag(unitFlagIn), isChannelSplit(isChannelSplitIn) {}
  uint16_t nSize = 0;
  uint16_t mSize = 0;
  uint16_t srcStride = 0;  // rows (16 floats each) between L0C's column blocks: m rounded up to 16
  uint32_t dstStride = 0;  // elements between rows of the ND result in GM
  QuantMode_t quantPre = QuantMode_t::NoQuant;
  uint64_t deqScalar = 0;
  uint16_t ndNum = 1;
  uint16_t srcNdStride = 0;
  uint16_t dstNdStride = 0;
  bool reluEn = false;
  uint8_t unitFlag = 0;
  bool isChannelSplit = false;
};

template <class T, class U>
struct IsSameType {
  static constexpr bool value = std::is_same_v<T, U>;
};

namespace sim {

constexpr uint32_t kFractalBytes = 512;

template <class T>
constexpr uint32_t c0() {
  return kBlockBytes / sizeof(T);
}

inline const char* memory_name(Memory m) { return m == Memory::kNone ? "no local memory" : spec(m).name; }

// The memory of this core that holds p, if any.
inline Memory locate(const uint8_t* p) {
  const Core& c = core();
  for (int i = 0; i < static_cast<int>(Memory::kCount); ++i) {
    const Arena& a = c.memory[i];
    if (a.base && p >= a.base && p < a.base + spec(static_cast<Memory>(i)).bytes) return static_cast<Memory>(i);
  }
  return Memory::kNone;
}

// An operand of a cube instruction: in memory `m` (its positions named in
// `positions`), inside the tensor it came from and the buffers the pipe
// allocated, and aligned as that memory requires.
template <class T>
void check_cube_operand(const LocalTensor<T>& t, uint64_t bytes, Memory m, const char* positions, const char* role,
                        const char* what) {
  const Core& c = core();
  if (c.type != AIC) fail(cat(what, ": a cube instruction on an AI vector core (the AIV has no ", spec(m).name, ")"));
  const Memory found = locate(t.sim_bytes());
  if (found != m) {
    fail(cat(what, ": ", role, " is in ", memory_name(found), "; it must be in ", spec(m).name, " (", positions, ")"));
  }
  const Arena& a = c.memory[static_cast<int>(m)];
  const uint64_t offset = static_cast<uint64_t>(t.sim_bytes() - a.base);
  if (offset % spec(m).align) {
    fail(cat(what, ": ", role, " at ", spec(m).name, " offset ", offset, " is not ", spec(m).align, "-byte aligned"));
  }
  if (bytes > t.GetLength()) {
    fail(cat(what, ": ", role, " needs ", bytes, " bytes of ", spec(m).name, " but its tensor holds ", t.GetLength()));
  }
  if (!a.holds(t.sim_bytes(), bytes)) {
    fail(cat(what, ": ", role, " runs past the ", spec(m).name, " buffers the pipe allocated"));
  }
}

template <class T>
void check_cube_type(const char* what) {
  static_assert(sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4, "cube data are 8-, 16- or 32-bit");
  if constexpr (std::is_same_v<T, int4b_t>) fail(cat(what, ": int4b_t is not emulated"));
}

// GM (ND) -> L1, the 32-byte pieces of each row placed as Nd2NzParams says.
template <class T>
void copy_gm_to_l1(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const Nd2NzParams& p) {
  constexpr const char* what = "DataCopy GM->L1 (Nd2NzParams)";
  check_cube_type<T>(what);
  if (core().type != AIC) fail(cat(what, ": Nd2Nz into the Unified Buffer is not emulated (the AIV has no L1)"));
  constexpr uint32_t C0 = c0<T>();
  if (p.ndNum == 0 || p.nValue == 0 || p.dValue == 0) return;
  if (p.dstNzC0Stride == 0 || p.dstNzNStride == 0) fail(cat(what, ": dstNzC0Stride and dstNzNStride start at 1"));
  const uint64_t pieces = (p.dValue + C0 - 1) / C0;
  const uint64_t last_piece = ((p.ndNum - 1) * uint64_t{p.dstNzMatrixStride}) * sizeof(T) +
                              ((p.nValue - 1) * uint64_t{p.dstNzNStride} + (pieces - 1) * p.dstNzC0Stride) * kBlockBytes;
  check_cube_operand(dst, last_piece + kBlockBytes, Memory::kL1, "A1/B1", "dst", what);
  for (uint64_t i = 0; i < p.ndNum; ++i) {
    for (uint64_t r = 0; r < p.nValue; ++r) {
      const T* row = src.GetPhyAddr() + i * p.srcNdMatrixStride + r * p.srcDValue;
      check_gm(row, uint64_t{p.dValue} * sizeof(T), what);
      for (uint64_t k = 0; k < pieces; ++k) {
        uint8_t* to = dst.sim_bytes() + i * p.dstNzMatrixStride * sizeof(T) +
                      (r * p.dstNzNStride + k * p.dstNzC0Stride) * kBlockBytes;
        const uint64_t n = std::min<uint64_t>(C0, p.dValue - k * C0);
        std::memcpy(to, row + k * C0, n * sizeof(T));
        std::memset(to + n * sizeof(T), 0, (C0 - n) * sizeof(T));
      }
    }
  }
}

// GM -> L1, contiguous (the DataCopy(LocalTensor, GlobalTensor, count) form on the AIC).
template <class T>
void copy_gm_to_l1(const LocalTensor<T>& dst, const GlobalTensor<T>& src, uint32_t count) {
  constexpr const char* what = "DataCopy GM->L1";
  check_copy_length<T>(count, what);
  check_cube_operand(dst, bytes_of<T>(count), Memory::kL1, "A1/B1", "dst", what);
  check_gm(src.GetPhyAddr(), bytes_of<T>(count), what);
  std::memcpy(dst.sim_bytes(), src.GetPhyAddr(), bytes_of<T>(count));
}

inline Memory l0_of(const uint8_t* p, const char* what) {
  const Memory m = locate(p);
  if (m != Memory::kL0A && m != Memory::kL0B) {
    fail(cat(what, ": dst is in ", memory_name(m), "; it must be in L0A (A2) or L0B (B2)"));
  }
  return m;
}

}  // namespace sim

template <class T>
void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const Nd2NzParams& params) {
  sim::copy_gm_to_l1(dst, src, params);
}

// L1 -> L0A / L0B: repeatTimes fractals of 512 B, each transposed with ifTranspose.
template <class T>
void LoadData(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LoadData2DParams& p) {
  constexpr const char* what = "LoadData (LoadData2DParams)";
  sim::check_cube_type<T>(what);
  if (p.sid != 0 || p.addrMode != 0) sim::fail(sim::cat(what, ": sid and addrMode other than 0 are not emulated"));
  if (p.ifTranspose && sizeof(T) != 2) {
    sim::fail(sim::cat(what, ": ifTranspose transposes 16-bit fractals only; 8- and 32-bit data need "
                             "LoadDataWithTranspose"));
  }
  if (p.repeatTimes == 0) return;
  using sim::kFractalBytes;
  const sim::Memory m = sim::l0_of(dst.sim_bytes(), what);
  const uint64_t n = p.repeatTimes;
  sim::check_cube_operand(src, (p.startIndex + (n - 1) * p.srcStride + 1) * uint64_t{kFractalBytes}, sim::Memory::kL1,
                          "A1/B1", "src", what);
  sim::check_cube_operand(dst, ((n - 1) * (p.dstGap + 1) + 1) * uint64_t{kFractalBytes}, m,
                          m == sim::Memory::kL0A ? "A2" : "B2", "dst", what);
  for (uint64_t i = 0; i < n; ++i) {
    const uint8_t* from = src.sim_bytes() + (p.startIndex + i * p.srcStride) * kFractalBytes;
    uint8_t* to = dst.sim_bytes() + i * (p.dstGap + 1) * kFractalBytes;
    if (!p.ifTranspose) {
      std::memmove(to, from, kFractalBytes);
    } else {
      uint16_t f[256];
      std::memcpy(f, from, kFractalBytes);
      for (int r = 0; r < 16; ++r) {
        for (int c = 0; c < 16; ++c) std::memcpy(to + (c * 16 + r) * 2, &f[r * 16 + c], 2);
      }
    }
  }
}

// L1 -> L0A / L0B, transposing squares of 32 bytes x 32 bytes' worth of rows:
// one 16x16 fractal for 16-bit types, two consecutive 16x8 fractals (the left
// and right halves of a 16x16 square) for 32-bit types, which land as two
// fractals dstFracGap + 1 apart.
template <class T>
void LoadDataWithTranspose(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LoadData2dTransposeParams& p) {
  constexpr const char* what = "LoadDataWithTranspose";
  sim::check_cube_type<T>(what);
  if constexpr (sizeof(T) == 1) sim::fail(sim::cat(what, ": 8-bit data are not emulated"));
  if (p.addrMode != 0) sim::fail(sim::cat(what, ": addrMode other than 0 is not emulated"));
  if (p.repeatTimes == 0) return;
  using sim::kFractalBytes;
  constexpr uint32_t halves = sizeof(T) / 2;  // fractals per 16x16 square
  const sim::Memory m = sim::l0_of(dst.sim_bytes(), what);
  const uint64_t n = p.repeatTimes;
  sim::check_cube_operand(src, (p.startIndex + (n - 1) * p.srcStride + 1) * uint64_t{kFractalBytes} * halves,
                          sim::Memory::kL1, "A1/B1", "src", what);
  const uint64_t second = halves == 2 ? uint64_t{p.dstFracGap} + 1 : 0;
  sim::check_cube_operand(dst, ((n - 1) * (p.dstGap + 1) + second + 1) * uint64_t{kFractalBytes}, m,
                          m == sim::Memory::kL0A ? "A2" : "B2", "dst", what);
  constexpr int C0 = sim::c0<T>();
  for (uint64_t i = 0; i < n; ++i) {
    T square[256];  // [16 rows][16 columns], gathered from its halves
    const auto* from = reinterpret_cast<const T*>(src.sim_bytes() + (p.startIndex + i * p.srcStride) * kFractalBytes * halves);
    for (int h = 0; h < static_cast<int>(halves); ++h) {
      for (int r = 0; r < 16; ++r) {
        for (int c = 0; c < C0; ++c) square[r * 16 + h * C0 + c] = from[h * 16 * C0 + r * C0 + c];
      }
    }
    uint8_t* base = dst.sim_bytes() + i * (p.dstGap + 1) * kFractalBytes;
    for (int h = 0; h < static_cast<int>(halves); ++h) {
      T* to = reinterpret_cast<T*>(base + h * second * kFractalBytes);
      // Half h of the transposed square: its columns h*C0 .. h*C0+C0-1, i.e. rows of the source.
      for (int r = 0; r < 16; ++r) {
        for (int c = 0; c < C0; ++c) to[r * C0 + c] = square[(h * C0 + c) * 16 + r];
      }
    }
  }
}

namespace sim {

template <class T>
float widen(T x) {
  return static_cast<float>(x);
}

}  // namespace sim

// C (L0C, float) = or += A (L0A) x B (L0B), products exact and summed in
// float in k order.
template <class T, class U, class S>
void Mmad(const LocalTensor<T>& dst, const LocalTensor<U>& fm, const LocalTensor<S>& filter, const MmadParams& p) {
  constexpr const char* what = "Mmad";
  constexpr bool supported = std::is_same_v<T, float> && std::is_same_v<U, S> &&
                             sim::one_of<U, half, bfloat16_t, float>;
  if constexpr (!supported) {
    sim::fail(sim::cat(what, ": dst ", sim::type_name<T>(), ", fm ", sim::type_name<U>(), ", filter ",
                       sim::type_name<S>(), " is not a pair the Atlas A2 cube has (float from half x half, "
                       "bfloat16_t x bfloat16_t or float x float; int8 -> int32 is not emulated)"));
  } else {
    if (p.unitFlag || p.cmatrixSource || p.fmOffset || p.enSsparse || p.enWinogradA || p.enWinogradB) {
      sim::fail(sim::cat(what, ": unitFlag, cmatrixSource (bias table), fmOffset, sparsity and Winograd are not "
                               "emulated"));
    }
    if (p.kDirectionAlign && !std::is_same_v<U, float>) sim::fail(sim::cat(what, ": kDirectionAlign is for float only"));
    if (p.m == 0 || p.n == 0 || p.k == 0) return;
    constexpr uint32_t C0 = sim::c0<U>();
    const uint64_t m1 = (p.m + 15) / 16, n1 = (p.n + 15) / 16, k1 = (p.k + C0 - 1) / C0;
    const uint64_t k1_a = p.kDirectionAlign ? (p.k + 15) / 16 * 2 : k1;  // L0A's fractals per row of them
    sim::check_cube_operand(fm, ((m1 - 1) * k1_a + k1) * sim::kFractalBytes, sim::Memory::kL0A, "A2", "fm", what);
    sim::check_cube_operand(filter, k1 * n1 * sim::kFractalBytes, sim::Memory::kL0B, "B2", "filter", what);
    sim::check_cube_operand(dst, m1 * n1 * 256 * sizeof(float), sim::Memory::kL0C, "CO1", "dst", what);
    sim::Counts& counts = sim::core().counts;
    (std::is_same_v<U, float> ? counts.fractals_float
     : std::is_same_v<U, half> ? counts.fractals_half : counts.fractals_bf16) += m1 * n1 * k1;
    if (sim::count_only()) return;
    const bool init = p.cmatrixInitVal && !p.isBias;  // as the 2201 implementation combines them
    const U* a = fm.sim_data();
    const S* b = filter.sim_data();
    float* c = dst.sim_data();
    const uint64_t m16 = m1 * 16;
    for (uint64_t i = 0; i < p.m; ++i) {
      for (uint64_t j = 0; j < p.n; ++j) {
        float& out = c[(j / 16) * m16 * 16 + i * 16 + j % 16];
        float sum = init ? 0.0f : out;
        for (uint64_t k = 0; k < p.k; ++k) {
          const float x = sim::widen(a[((i / 16) * k1_a + k / C0) * 16 * C0 + (i % 16) * C0 + k % C0]);
          const float y = sim::widen(b[((k / C0) * n1 + j / 16) * 16 * C0 + (j % 16) * C0 + k % C0]);
          // half and bf16 products are exact in float; float x float rounds once.
          sum += x * y;
        }
        out = sum;
      }
    }
  }
}

// L0C (Nz, float) -> GM, row-major [mSize][nSize] with rows dstStride apart,
// converted as quantPre says (round to nearest even); accumulated into GM
// after SetAtomicAdd<Out>().
template <class T, class U, const FixpipeConfig& config = CFG_ROW_MAJOR>
void Fixpipe(const GlobalTensor<T>& dst, const LocalTensor<U>& src, const FixpipeParamsV220& p) {
  constexpr const char* what = "Fixpipe L0C->GM";
  if constexpr (config.format != CO2Layout::ROW_MAJOR) {
    sim::fail(sim::cat(what, ": only CFG_ROW_MAJOR (Nz -> ND) is emulated"));
  } else if constexpr (!std::is_same_v<U, float>) {
    sim::fail(sim::cat(what, ": a ", sim::type_name<U>(), " L0C source is not emulated (float only)"));
  } else {
    const QuantMode_t expected = std::is_same_v<T, float>        ? QuantMode_t::NoQuant
                                 : std::is_same_v<T, half>       ? QuantMode_t::F322F16
                                 : std::is_same_v<T, bfloat16_t> ? QuantMode_t::F322BF16
                                                                 : QuantMode_t::DEQF16;
    if (expected == QuantMode_t::DEQF16 || p.quantPre != expected) {
      sim::fail(sim::cat(what, ": float -> ", sim::type_name<T>(), " with quantPre ", static_cast<int>(p.quantPre),
                         " is not emulated (NoQuant -> float, F322F16 -> half, F322BF16 -> bfloat16_t)"));
    }
    if (p.reluEn || p.ndNum != 1 || p.unitFlag || p.isChannelSplit) {
      sim::fail(sim::cat(what, ": reluEn, ndNum other than 1, unitFlag and isChannelSplit are not emulated"));
    }
    if (p.mSize == 0 || p.nSize == 0) return;
    if (p.srcStride < p.mSize) {
      sim::fail(sim::cat(what, ": srcStride ", p.srcStride, " is less than mSize ", p.mSize,
                         "; L0C's column blocks hold m rows rounded up to 16"));
    }
    const uint64_t n1 = (p.nSize + 15) / 16;
    sim::check_cube_operand(src, ((n1 - 1) * p.srcStride * 16 + uint64_t{p.mSize} * 16) * sizeof(float),
                            sim::Memory::kL0C, "CO1", "src", what);
    std::vector<T> row(p.nSize);
    for (uint64_t i = 0; i < p.mSize; ++i) {
      for (uint64_t j = 0; j < p.nSize; ++j) {
        const float v = src.sim_data()[(j / 16) * p.srcStride * 16 + i * 16 + j % 16];
        row[j] = static_cast<T>(v);
      }
      sim::store_gm(dst.GetPhyAddr() + i * p.dstStride, row.data(), p.nSize, what);
    }
  }
}

// What SetAtomicAdd<T>() switches on: GM stores (Fixpipe, DataCopy to GM)
// add to what GM holds. Atlas A2 has it for these types.
template <class T>
void SetAtomicAdd() {
  static_assert(sim::one_of<T, float, half, bfloat16_t, int32_t, int16_t, int8_t>,
                "SetAtomicAdd: float, half, bfloat16_t, int32_t, int16_t, int8_t on Atlas A2");
  sim::core().atomic = 1;
  sim::core().atomic_type = sim::type_name<T>();
}
inline void SetAtomicNone() {
  sim::core().atomic = 0;
  sim::core().atomic_type = nullptr;
}
inline void DisableDmaAtomic() { SetAtomicNone(); }

}  // namespace AscendC
