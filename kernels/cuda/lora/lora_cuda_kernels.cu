// CUDA kernels of the LoRA ops: the low-rank products around the base GEMM
// (fp32, X read in its own dtype, dropout applied on the fly with the CPU
// kernels' hash), and the decode path's NF4 GEMV that dequantizes in registers
// and adds bias and the LoRA term.
#include "../nf4/nf4_cuda_device.cuh"
#include "csrc/lora/dropout_hash.h"
#include "lora_cuda_kernels.h"

namespace loraops::cuda {
namespace {

int grid_for(int64_t blocks) { return static_cast<int>(grid_stride_blocks(blocks, 65535 * 32)); }

__device__ __forceinline__ float masked(const dropout::Mask& mask, int64_t index, float v) {
  return dropout::apply(mask, static_cast<uint64_t>(index), v);
}

// ----------------------------------------------------------------------------- low-rank products
// Adapter rows per pass: the register and shared-memory tiles hold 16 of them;
// a larger rank takes several passes.
constexpr int kRankChunk = 16;

// low_rank_down for few rows (decoding): a block per output (m, j), its threads
// spread over the columns, then a block-wide sum: a few dozen outputs still
// keep many loads in flight.
constexpr int kDownBlockThreads = 256;

template <typename X>
__global__ void low_rank_down_block_kernel(LowRankDownLaunch a) {
  __shared__ float warp_sums[kDownBlockThreads / 32];
  const X* x = static_cast<const X*>(a.x);
  for (int64_t o = blockIdx.x; o < a.rows * a.r; o += gridDim.x) {
    const int64_t m = o / a.r, j = o % a.r;
    float sum = 0.0f;
    for (int64_t c = threadIdx.x; c < a.cols; c += blockDim.x)
      sum += masked(a.mask, m * a.cols + c, to_float(x[m * a.cols + c])) * a.r_mat[j * a.cols + c];
    sum = warp_sum(sum);
    __syncthreads();  // the previous output's partial sums are read
    if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
      float total = 0.0f;
      for (int w = 0; w < kDownBlockThreads / 32; ++w) total += warp_sums[w];
      a.out[m * a.r + j] = a.out_scale * total;
    }
  }
}

// low_rank_down for many rows: a block takes 32 rows (4 per warp) and walks the
// columns in tiles of 256, with 16 rows of R per tile in shared memory (read
// from L2 once per 32 rows of X); lane l takes columns l, l + 32, ... of a tile,
// so X loads are coalesced and shared reads conflict-free.
constexpr int kDownRowsPerWarp = 4;
constexpr int kDownWarps = 8;
constexpr int kDownTileCols = 256;

template <typename X>
__global__ void __launch_bounds__(kDownWarps * 32) low_rank_down_tiled_kernel(LowRankDownLaunch a) {
  __shared__ float r_tile[kRankChunk][kDownTileCols];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const X* x = static_cast<const X*>(a.x);
  constexpr int64_t kBlockRows = kDownWarps * kDownRowsPerWarp;
  for (int64_t block_row = blockIdx.x * kBlockRows; block_row < a.rows; block_row += gridDim.x * kBlockRows) {
    const int64_t first_row = block_row + warp * kDownRowsPerWarp;
    for (int64_t j0 = 0; j0 < a.r; j0 += kRankChunk) {
      float acc[kDownRowsPerWarp][kRankChunk];
#pragma unroll
      for (int i = 0; i < kDownRowsPerWarp; ++i)
#pragma unroll
        for (int j = 0; j < kRankChunk; ++j) acc[i][j] = 0.0f;
      for (int64_t c0 = 0; c0 < a.cols; c0 += kDownTileCols) {
        __syncthreads();  // the previous tile is consumed
        for (int idx = threadIdx.x; idx < kRankChunk * kDownTileCols; idx += blockDim.x) {
          const int j = idx / kDownTileCols, c = idx % kDownTileCols;
          r_tile[j][c] = j0 + j < a.r && c0 + c < a.cols ? a.r_mat[(j0 + j) * a.cols + c0 + c] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < kDownRowsPerWarp; ++i) {
          const int64_t m = first_row + i;
          if (m >= a.rows) break;  // uniform across the warp
#pragma unroll
          for (int e = 0; e < kDownTileCols / 32; ++e) {
            const int64_t c = c0 + lane + 32 * e;
            const float v = c < a.cols ? masked(a.mask, m * a.cols + c, to_float(x[m * a.cols + c])) : 0.0f;
#pragma unroll
            for (int j = 0; j < kRankChunk; ++j) acc[i][j] += v * r_tile[j][lane + 32 * e];
          }
        }
      }
#pragma unroll
      for (int i = 0; i < kDownRowsPerWarp; ++i) {
        const int64_t m = first_row + i;
        if (m >= a.rows) break;
#pragma unroll
        for (int j = 0; j < kRankChunk; ++j) {
          const float sum = warp_sum(acc[i][j]);
          if (lane == 0 && j0 + j < a.r) a.out[m * a.r + j0 + j] = a.out_scale * sum;
        }
      }
    }
  }
}

// l_tile[i][j] = L[first_row + i, j0 + j] (zero past row_end or the rank), by the whole block.
template <int kRows>
__device__ __forceinline__ void stage_rank_chunk(float (&l_tile)[kRows][kRankChunk], const float* l, int64_t r,
                                                 int64_t j0, int64_t first_row, int64_t row_end) {
  for (int idx = threadIdx.x; idx < kRows * kRankChunk; idx += blockDim.x) {
    const int i = idx / kRankChunk, j = idx % kRankChunk;
    l_tile[i][j] = first_row + i < row_end && j0 + j < r ? l[(first_row + i) * r + j0 + j] : 0.0f;
  }
}

// low_rank_up_add: a block owns a 32-row x 256-column tile of X, one column per
// thread and an accumulator per row; 16 values of R per thread in registers, L
// for the tile's rows in shared memory (every thread reads the same address).
constexpr int kUpRows = 32;
constexpr int kUpCols = 256;

template <typename X>
__global__ void low_rank_up_add_kernel(LowRankUpAddLaunch a) {
  __shared__ float l_tile[kUpRows][kRankChunk];
  const int64_t c = blockIdx.x * int64_t{kUpCols} + threadIdx.x;
  X* x = static_cast<X*>(a.x);
  for (int64_t first_row = blockIdx.y * int64_t{kUpRows}; first_row < a.rows;
       first_row += gridDim.y * int64_t{kUpRows}) {
    float acc[kUpRows];
#pragma unroll
    for (int i = 0; i < kUpRows; ++i) acc[i] = 0.0f;
    for (int64_t j0 = 0; j0 < a.r; j0 += kRankChunk) {
      __syncthreads();
      stage_rank_chunk(l_tile, a.l, a.r, j0, first_row, a.rows);
      __syncthreads();
      float rv[kRankChunk];
#pragma unroll
      for (int j = 0; j < kRankChunk; ++j) rv[j] = c < a.cols && j0 + j < a.r ? a.r_mat[(j0 + j) * a.cols + c] : 0.0f;
#pragma unroll
      for (int i = 0; i < kUpRows; ++i)
#pragma unroll
        for (int j = 0; j < kRankChunk; ++j) acc[i] += l_tile[i][j] * rv[j];
    }
    if (c < a.cols) {
#pragma unroll
      for (int i = 0; i < kUpRows; ++i) {
        const int64_t m = first_row + i;
        if (m >= a.rows) break;
        const int64_t index = m * a.cols + c;
        x[index] = from_float<X>(to_float(x[index]) + masked(a.mask, index, a.scale * acc[i]));
      }
    }
  }
}

// low_rank_reduce: a block owns 256 columns (one per thread, 16 accumulators)
// and one range of rows; L for 64 rows at a time in shared memory.
constexpr int kReduceCols = 256;
constexpr int kReduceRowTile = 64;

template <typename X>
__global__ void low_rank_reduce_kernel(LowRankReduceLaunch a) {
  __shared__ float l_tile[kReduceRowTile][kRankChunk];
  const int64_t c = blockIdx.x * int64_t{kReduceCols} + threadIdx.x;
  const int64_t split = blockIdx.y;
  const int64_t rows_per_split = (a.rows + a.splits - 1) / a.splits;
  const int64_t row_begin = split * rows_per_split;
  const int64_t row_end = row_begin + rows_per_split < a.rows ? row_begin + rows_per_split : a.rows;
  const X* x = static_cast<const X*>(a.x);
  for (int64_t j0 = 0; j0 < a.r; j0 += kRankChunk) {
    float acc[kRankChunk];
#pragma unroll
    for (int j = 0; j < kRankChunk; ++j) acc[j] = 0.0f;
    for (int64_t m0 = row_begin; m0 < row_end; m0 += kReduceRowTile) {
      __syncthreads();
      stage_rank_chunk(l_tile, a.l, a.r, j0, m0, row_end);
      __syncthreads();
      if (c < a.cols) {
        const int64_t tile_rows = row_end - m0 < kReduceRowTile ? row_end - m0 : kReduceRowTile;
        for (int64_t i = 0; i < tile_rows; ++i) {
          const int64_t index = (m0 + i) * a.cols + c;
          const float v = masked(a.mask, index, to_float(x[index]));
#pragma unroll
          for (int j = 0; j < kRankChunk; ++j) acc[j] += l_tile[i][j] * v;
        }
      }
    }
    if (c < a.cols)
#pragma unroll
      for (int j = 0; j < kRankChunk; ++j)
        if (j0 + j < a.r) a.partial[(split * a.r + j0 + j) * a.cols + c] = acc[j];
  }
}

// x[m, k0 .. k0 + 8) as floats, k0 a multiple of 8 (16- or 32-byte loads).
__device__ __forceinline__ void load8(const float* p, float* v) {
  const float4 lo = reinterpret_cast<const float4*>(p)[0], hi = reinterpret_cast<const float4*>(p)[1];
  v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w, v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* v) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const unsigned words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __uint_as_float(words[i] << 16);
    v[2 * i + 1] = __uint_as_float(words[i] & 0xFFFF0000u);
  }
}
__device__ __forceinline__ void load8(const __half* p, float* v) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const unsigned words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(words[i] & 0xFFFFu)));
    v[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(words[i] >> 16)));
  }
}

constexpr int kGemvWarps = 4;  // output features per thread block, one per warp

// One warp per output feature i, for up to kRows rows of x. Vectorized: each
// lane takes 16 packed bytes (32 weights of one NF4 block) at a time, so a warp
// reads 512 contiguous bytes per step; needs k % 32 == 0 and 16-byte aligned x
// and packed. Otherwise element by element.
template <typename X, int kRows, bool kVector>
__global__ void nf4_gemv_lora_kernel(NF4GemvLoraLaunch a) {
  __shared__ float code[16];
  if (threadIdx.x < 16) code[threadIdx.x] = kNF4Code[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x % 32;
  const int64_t i = blockIdx.x * int64_t{kGemvWarps} + threadIdx.x / 32;
  if (i >= a.n) return;
  const X* x = static_cast<const X*>(a.x);
  float acc[kRows];
#pragma unroll
  for (int m = 0; m < kRows; ++m) acc[m] = 0.0f;
  if constexpr (kVector) {
    const uint4* row = reinterpret_cast<const uint4*>(a.weight.packed + i * (a.k / 2));
    for (int64_t c = lane; c < a.k / 32; c += 32) {
      const uint4 bytes = row[c];
      const unsigned words[4] = {bytes.x, bytes.y, bytes.z, bytes.w};
      float part[kRows];
#pragma unroll
      for (int m = 0; m < kRows; ++m) part[m] = 0.0f;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        float w[8];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const unsigned byte = (words[q] >> (8 * j)) & 0xFFu;
          w[2 * j] = code[byte >> 4];
          w[2 * j + 1] = code[byte & 0x0Fu];
        }
#pragma unroll
        for (int m = 0; m < kRows; ++m) {
          if (m >= a.rows) break;
          float xv[8];
          load8(x + m * a.k + c * 32 + q * 8, xv);
#pragma unroll
          for (int e = 0; e < 8; ++e) part[m] += w[e] * xv[e];
        }
      }
      const float absmax = element_absmax(a.weight, i * a.k + c * 32);
#pragma unroll
      for (int m = 0; m < kRows; ++m) acc[m] += part[m] * absmax;
    }
  } else {
    for (int64_t kk = lane; kk < a.k; kk += 32) {
      const int64_t e = i * a.k + kk;
      const uint8_t byte = a.weight.packed[e / 2];
      const float w = __fmul_rn(code[e % 2 ? byte & 0x0F : byte >> 4], element_absmax(a.weight, e));
#pragma unroll
      for (int m = 0; m < kRows; ++m)
        if (m < a.rows) acc[m] += w * to_float(x[m * a.k + kk]);
    }
  }
  // The LoRA term of feature i: scale * xa[m, :] . B[i, :], spread over the lanes too.
  for (int64_t j = lane; j < a.r; j += 32) {
    const float b_ij = a.b[i * a.r + j];
#pragma unroll
    for (int m = 0; m < kRows; ++m)
      if (m < a.rows) acc[m] += a.scale * (a.xa[m * a.r + j] * b_ij);
  }
  const float bias = a.bias != nullptr ? to_float(static_cast<const X*>(a.bias)[i]) : 0.0f;
  X* out = static_cast<X*>(a.out);
#pragma unroll
  for (int m = 0; m < kRows; ++m) {
    if (m >= a.rows) break;  // uniform across the warp
    const float total = warp_sum(acc[m]);
    if (lane == 0) out[m * a.n + i] = from_float<X>(total + bias);
  }
}

template <typename X, int kRows>
void launch_gemv(const NF4GemvLoraLaunch& a, cudaStream_t stream) {
  const int grid = static_cast<int>((a.n + kGemvWarps - 1) / kGemvWarps);
  const bool vector = a.k % 32 == 0 && aligned16(a.x) && aligned16(a.weight.packed);
  auto* kernel = vector ? &nf4_gemv_lora_kernel<X, kRows, true> : &nf4_gemv_lora_kernel<X, kRows, false>;
  LORAOPS_CUDA_LAUNCH(kernel, grid, kGemvWarps * 32, stream)(a);
}

template <typename X>
void launch_gemv_rows(const NF4GemvLoraLaunch& a, cudaStream_t stream) {
  if (a.rows <= 1) return launch_gemv<X, 1>(a, stream);
  if (a.rows <= 2) return launch_gemv<X, 2>(a, stream);
  if (a.rows <= 4) return launch_gemv<X, 4>(a, stream);
  launch_gemv<X, 8>(a, stream);
}

}  // namespace

void low_rank_down(const LowRankDownLaunch& a, cudaStream_t stream) {
  if (a.rows * a.r == 0) return;
  if (a.rows <= kDecodeMaxRows) {
    with_float_type(a.x_kind, [&](auto type) {
      using T = decltype(type);
      LORAOPS_CUDA_LAUNCH(low_rank_down_block_kernel<T>, grid_for(a.rows * a.r), kDownBlockThreads, stream)(a);
    });
    return;
  }
  const int64_t rows_per_block = kDownWarps * kDownRowsPerWarp;
  const int grid = grid_for((a.rows + rows_per_block - 1) / rows_per_block);
  with_float_type(a.x_kind, [&](auto type) {
    using T = decltype(type);
    LORAOPS_CUDA_LAUNCH(low_rank_down_tiled_kernel<T>, grid, kDownWarps * 32, stream)(a);
  });
}

void low_rank_up_add(const LowRankUpAddLaunch& a, cudaStream_t stream) {
  if (a.rows * a.cols * a.r == 0) return;
  const int64_t row_blocks = (a.rows + kUpRows - 1) / kUpRows;
  const dim3 grid(static_cast<unsigned>((a.cols + kUpCols - 1) / kUpCols),
                  static_cast<unsigned>(grid_stride_blocks(row_blocks, 65535)));
  with_float_type(a.x_kind, [&](auto type) {
    using T = decltype(type);
    LORAOPS_CUDA_LAUNCH(low_rank_up_add_kernel<T>, grid, kUpCols, stream)(a);
  });
}

int64_t low_rank_reduce_splits(int64_t rows, int64_t cols) {
  // About 512 blocks in all (a few per SM), but no range shorter than a row tile.
  if (rows == 0 || cols == 0) return 0;
  const int64_t column_blocks = (cols + kReduceCols - 1) / kReduceCols;
  const int64_t wanted = (512 + column_blocks - 1) / column_blocks;
  const int64_t most = (rows + kReduceRowTile - 1) / kReduceRowTile;
  return wanted < most ? wanted : most;
}

void low_rank_reduce(const LowRankReduceLaunch& a, cudaStream_t stream) {
  if (a.rows * a.cols * a.r == 0) return;
  const dim3 grid(static_cast<unsigned>((a.cols + kReduceCols - 1) / kReduceCols), static_cast<unsigned>(a.splits));
  with_float_type(a.x_kind, [&](auto type) {
    using T = decltype(type);
    LORAOPS_CUDA_LAUNCH(low_rank_reduce_kernel<T>, grid, kReduceCols, stream)(a);
  });
}

void nf4_gemv_lora(const NF4GemvLoraLaunch& a, cudaStream_t stream) {
  if (a.n == 0 || a.rows == 0) return;
  with_float_type(a.x_kind, [&](auto type) {
    using T = decltype(type);
    launch_gemv_rows<T>(a, stream);
  });
}

}  // namespace loraops::cuda
