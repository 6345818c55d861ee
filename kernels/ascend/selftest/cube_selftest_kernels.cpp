// Cube-only kernels (KERNEL_TYPE_AIC_ONLY) that test CubeMatmul and the
// emulation's cube unit: the GEMM over blocks of C, and one small product
// with a fault built in.
#include "../common/cube_matmul.h"
#include "selftest_kernels.h"

namespace loraops {
namespace ascend {

template <class In, class Out>
__aicore__ inline void CubeMatmulBlocks(LORAOPS_CUBE_MATMUL_PARAMS) {
  AscendC::GlobalTensor<In> a_gm, b_gm;
  AscendC::GlobalTensor<Out> c_gm;
  a_gm.SetGlobalBuffer(reinterpret_cast<__gm__ In*>(a));
  b_gm.SetGlobalBuffer(reinterpret_cast<__gm__ In*>(b));
  c_gm.SetGlobalBuffer(reinterpret_cast<__gm__ Out*>(c));
  AscendC::TPipe pipe;
  CubeMatmul<In, Out> mm;
  mm.Init(&pipe);
  const bool a_k_major = flags & kAKMajor, b_k_major = flags & kBKMajor;
  const uint32_t blocks_m = (m + kCubeBlock - 1) / kCubeBlock, blocks_n = (n + kCubeBlock - 1) / kCubeBlock;
  for (uint32_t t = AscendC::GetBlockIdx(); t < blocks_m * blocks_n; t += AscendC::GetBlockNum()) {
    const uint32_t i = t / blocks_n * kCubeBlock, j = t % blocks_n * kCubeBlock;
    CubeMatmulShape s;
    s.m = m - i < kCubeBlock ? m - i : kCubeBlock;
    s.n = n - j < kCubeBlock ? n - j : kCubeBlock;
    s.k = k;
    s.lda = lda;
    s.ldb = ldb;
    s.ldc = ldc;
    s.a_k_major = a_k_major;
    s.b_k_major = b_k_major;
    s.accumulate = flags & kAccumulate;
    mm.Compute(a_gm[a_k_major ? i : uint64_t{i} * lda], b_gm[b_k_major ? j : uint64_t{j} * ldb],
               c_gm[uint64_t{i} * ldc + j], s);
  }
}

}  // namespace ascend
}  // namespace loraops

#define LORAOPS_CUBE_MATMUL_ENTRY(name, In, Out)                          \
  extern "C" __global__ __aicore__ void name(LORAOPS_CUBE_MATMUL_PARAMS) { \
    KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIC_ONLY);                        \
    loraops::ascend::CubeMatmulBlocks<In, Out>(a, b, c, m, n, k, lda, ldb, ldc, flags); \
  }

LORAOPS_CUBE_MATMUL_ENTRY(loraops_cube_matmul_f32_f32, float, float)
LORAOPS_CUBE_MATMUL_ENTRY(loraops_cube_matmul_f32_f16, float, half)
LORAOPS_CUBE_MATMUL_ENTRY(loraops_cube_matmul_f32_bf16, float, bfloat16_t)
LORAOPS_CUBE_MATMUL_ENTRY(loraops_cube_matmul_f16_f32, half, float)
LORAOPS_CUBE_MATMUL_ENTRY(loraops_cube_matmul_f16_f16, half, half)
LORAOPS_CUBE_MATMUL_ENTRY(loraops_cube_matmul_f16_bf16, half, bfloat16_t)
LORAOPS_CUBE_MATMUL_ENTRY(loraops_cube_matmul_bf16_f32, bfloat16_t, float)
LORAOPS_CUBE_MATMUL_ENTRY(loraops_cube_matmul_bf16_f16, bfloat16_t, half)
LORAOPS_CUBE_MATMUL_ENTRY(loraops_cube_matmul_bf16_bf16, bfloat16_t, bfloat16_t)

// c[16][16] = a[16][16] b[16][16]^T in half, by hand through every stage, so that
// each fault sits at one instruction.
extern "C" __global__ __aicore__ void loraops_cube_fault_kernel(GM_ADDR a, GM_ADDR b, GM_ADDR c, int32_t fault_id) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIC_ONLY);
  using namespace AscendC;
  using loraops::ascend::CubeFault;
  const auto fault = static_cast<CubeFault>(fault_id);
  constexpr uint32_t kSide = 16, kElems = kSide * kSide;
  GlobalTensor<half> a_gm, b_gm;
  GlobalTensor<float> c_gm;
  a_gm.SetGlobalBuffer(reinterpret_cast<__gm__ half*>(a), kElems);
  b_gm.SetGlobalBuffer(reinterpret_cast<__gm__ half*>(b), kElems);
  c_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(c), kElems);
  TPipe pipe;
  TQue<TPosition::A1, 1> a1;
  TQue<TPosition::B1, 1> b1;
  TQue<TPosition::A2, 1> a2;
  TQue<TPosition::B2, 1> b2;
  TQue<TPosition::CO1, 1> c1;
  TBuf<TPosition::C2> bias;
  // Room for one misaligned tensor each, and the faults' oversized buffers.
  pipe.InitBuffer(a1, 1, fault == CubeFault::l1_overflow ? 520 * 1024 : 2 * kElems * sizeof(half));
  pipe.InitBuffer(b1, 1, kElems * sizeof(half));
  pipe.InitBuffer(a2, 1, fault == CubeFault::l0a_overflow ? 65 * 1024 : 2 * kElems * sizeof(half));
  pipe.InitBuffer(b2, 1, fault == CubeFault::l0b_overflow ? 65 * 1024 : 2 * kElems * sizeof(half));
  pipe.InitBuffer(c1, 1, fault == CubeFault::l0c_overflow ? 129 * 1024 : 2 * kElems * sizeof(float));
  pipe.InitBuffer(bias, fault == CubeFault::bias_table_overflow ? 2048 : 64);
  if (fault == CubeFault::ub_on_aic) {
    TBuf<TPosition::VECCALC> calc;
    pipe.InitBuffer(calc, 256);
  }

  Nd2NzParams nd2nz(1, kSide, kSide, 0, kSide, kSide, 1, 0);
  LocalTensor<half> a_l1 = a1.AllocTensor<half>();
  DataCopy(fault == CubeFault::l1_misaligned ? a_l1[8] : a_l1, a_gm, nd2nz);
  a1.EnQue(a_l1);
  LocalTensor<half> b_l1 = b1.AllocTensor<half>();
  DataCopy(b_l1, b_gm, nd2nz);
  b1.EnQue(b_l1);
  if (fault == CubeFault::vector_on_aic) Muls(a_l1, a_l1, static_cast<half>(2), static_cast<int32_t>(kElems));

  a_l1 = a1.DeQue<half>();
  b_l1 = b1.DeQue<half>();
  LocalTensor<half> a_l0 = a2.AllocTensor<half>();
  LocalTensor<half> b_l0 = b2.AllocTensor<half>();
  LoadData2DParams load(0, 1, 1, 0, 0, false, 0);
  LoadData(fault == CubeFault::l0a_misaligned ? a_l0[16] : fault == CubeFault::load_dst_position ? b_l1 : a_l0,
           fault == CubeFault::load_src_position ? b_l0 : a_l1, load);
  LoadData(fault == CubeFault::l0b_misaligned ? b_l0[64] : b_l0, b_l1, load);
  if (fault == CubeFault::fp32_load_transpose) {
    load.ifTranspose = true;
    LoadData(a_l0.ReinterpretCast<float>(), a_l1.ReinterpretCast<float>(), load);
  }
  a2.EnQue(a_l0);
  b2.EnQue(b_l0);
  a1.FreeTensor(a_l1);
  b1.FreeTensor(b_l1);

  a_l0 = a2.DeQue<half>();
  b_l0 = b2.DeQue<half>();
  LocalTensor<float> c_l0 = c1.AllocTensor<float>();
  MmadParams mmad;
  mmad.m = fault == CubeFault::mmad_beyond_l0a ? 48 : kSide;
  mmad.n = fault == CubeFault::mmad_beyond_l0b ? 64 : kSide;
  mmad.k = kSide;
  if (fault == CubeFault::mmad_dst_position) {
    Mmad(a_l0.ReinterpretCast<float>(), a_l0, b_l0, mmad);
  } else if (fault == CubeFault::mmad_dtype_pair) {
    Mmad(c_l0, a_l0, b_l0.ReinterpretCast<bfloat16_t>(), mmad);
  } else {
    Mmad(fault == CubeFault::l0c_misaligned ? c_l0[8] : fault == CubeFault::mmad_beyond_l0c ? c_l0[448] : c_l0, a_l0, b_l0, mmad);
  }
  a2.FreeTensor(a_l0);
  b2.FreeTensor(b_l0);
  c1.EnQue(c_l0);

  c_l0 = c1.DeQue<float>();
  FixpipeParamsV220 fix(kSide, kSide, kSide, kSide, false);
  if (fault == CubeFault::fixpipe_beyond_l0c) {
    fix.nSize = 2 * kSide;
    fix.srcStride = 64;
  }
  if (fault == CubeFault::fixpipe_outside_gm) fix.dstStride = 32;
  if (fault == CubeFault::atomic_left_on || fault == CubeFault::atomic_type) {
    if (fault == CubeFault::atomic_type) {
      SetAtomicAdd<half>();
    } else {
      SetAtomicAdd<float>();
    }
  }
  Fixpipe<float, float, CFG_ROW_MAJOR>(c_gm, c_l0, fix);
  if (fault != CubeFault::atomic_left_on) SetAtomicNone();
  c1.FreeTensor(c_l0);
}
