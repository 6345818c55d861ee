// Entry points of the kernels that test the emulation's cube unit and
// cross-core launches (run by the _ascend_sim_* test ops), declared once for
// their definitions and the test ops.
#pragma once

#include "kernel_operator.h"

#define LORAOPS_CUBE_MATMUL_PARAMS                                                                          \
  GM_ADDR a, GM_ADDR b, GM_ADDR c, uint32_t m, uint32_t n, uint32_t k, uint32_t lda, uint32_t ldb, uint32_t ldc, \
      uint32_t flags

namespace loraops {
namespace ascend {
// Bits of the matmul kernels' `flags`.
constexpr uint32_t kAKMajor = 1, kBKMajor = 2, kAccumulate = 4;
// C blocks one core takes at a time: 2 x 2 tiles of CubeMatmul, so that both
// the spread over cores and the tiling inside a block are exercised.
constexpr uint32_t kCubeBlock = 256;

// The cube faults the cube self-test kernel can build in, in this order.
#define LORAOPS_CUBE_FAULTS(X)                                                                        \
  X(none) X(l1_overflow) X(l0a_overflow) X(l0b_overflow) X(l0c_overflow) X(bias_table_overflow)       \
  X(l1_misaligned) X(l0a_misaligned) X(l0b_misaligned) X(l0c_misaligned) X(mmad_dst_position)          \
  X(load_src_position) X(load_dst_position) X(mmad_beyond_l0a) X(mmad_beyond_l0b) X(mmad_beyond_l0c) X(fixpipe_beyond_l0c) \
  X(fixpipe_outside_gm) X(mmad_dtype_pair) X(fp32_load_transpose) X(ub_on_aic) X(vector_on_aic)         \
  X(atomic_left_on) X(atomic_type)
#define LORAOPS_MIX_FAULTS(X)                                                                          \
  X(none) X(missing_flag) X(extra_flag) X(mismatched_flag) X(too_many_pending) X(flag_id_range)       \
  X(sync_all_missed) X(l1_on_aiv) X(vector_on_aic)
#define LORAOPS_ENUM_ITEM(name) name,
enum class CubeFault : int32_t { LORAOPS_CUBE_FAULTS(LORAOPS_ENUM_ITEM) };
enum class MixFault : int32_t { LORAOPS_MIX_FAULTS(LORAOPS_ENUM_ITEM) };
#undef LORAOPS_ENUM_ITEM
// The MIX example's tile: each block's AIVs produce kMixRows rows of kMixK.
constexpr uint32_t kMixRows = 16, kMixK = 32, kMixN = 32;
}  // namespace ascend
}  // namespace loraops

extern "C" {
// C (+)= op(A) op(B) over blocks of kCubeBlock x kCubeBlock, on the AI cube cores; In_Out names the types.
__global__ __aicore__ void loraops_cube_matmul_f32_f32(LORAOPS_CUBE_MATMUL_PARAMS);
__global__ __aicore__ void loraops_cube_matmul_f32_f16(LORAOPS_CUBE_MATMUL_PARAMS);
__global__ __aicore__ void loraops_cube_matmul_f32_bf16(LORAOPS_CUBE_MATMUL_PARAMS);
__global__ __aicore__ void loraops_cube_matmul_f16_f32(LORAOPS_CUBE_MATMUL_PARAMS);
__global__ __aicore__ void loraops_cube_matmul_f16_f16(LORAOPS_CUBE_MATMUL_PARAMS);
__global__ __aicore__ void loraops_cube_matmul_f16_bf16(LORAOPS_CUBE_MATMUL_PARAMS);
__global__ __aicore__ void loraops_cube_matmul_bf16_f32(LORAOPS_CUBE_MATMUL_PARAMS);
__global__ __aicore__ void loraops_cube_matmul_bf16_f16(LORAOPS_CUBE_MATMUL_PARAMS);
__global__ __aicore__ void loraops_cube_matmul_bf16_bf16(LORAOPS_CUBE_MATMUL_PARAMS);
// A 16x16 half product through every cube stage, with `fault` (a CubeFault) built in; c is 16x16 float.
__global__ __aicore__ void loraops_cube_fault_kernel(GM_ADDR a, GM_ADDR b, GM_ADDR c, int32_t fault);
// out = (2 x) w^T + r, per block of kMixRows rows: the AIVs double x into `work`, the AIC multiplies
// it into `product`, the AIVs add r; with `fault` (a MixFault) built in.
// DataCopyPad's padding and ReduceMax's scratch, observed (a vector kernel).
__global__ __aicore__ void loraops_vector_probe(GM_ADDR src, GM_ADDR out, int32_t is_pad, int32_t right_padding,
                                                int32_t reduce_count, int32_t tmp_elems, int32_t cal_index,
                                                int32_t atomic);
// Exp / Ln (op 0 / 1) or ReduceSum (op 2) of src[0, count) in UB, at UB element offset ub_offset, over op_count.
__global__ __aicore__ void loraops_vector_math_probe(GM_ADDR src, GM_ADDR out, int32_t op, int32_t count,
                                                     int32_t op_count, int32_t ub_offset);
__global__ __aicore__ void loraops_mix_example(GM_ADDR x, GM_ADDR w, GM_ADDR r, GM_ADDR work, GM_ADDR product,
                                               GM_ADDR out, int32_t fault);
}
