// A small MIX kernel (KERNEL_TYPE_MIX_AIC_1_2) that tests the emulation's MIX
// launches: per block, the two AIVs each double kMixRows / 2 rows of x into
// `work` and flag the AIC; the AIC multiplies the block's rows by w^T
// (CubeMatmul) into `product` and flags back; the AIVs add r and write out.
// Faults of the cross-core protocol can be built in.
#include "../common/cube_matmul.h"
#include "selftest_kernels.h"

namespace {

using loraops::ascend::kMixK;
using loraops::ascend::kMixN;
using loraops::ascend::kMixRows;
using loraops::ascend::MixFault;

constexpr uint16_t kWorkReady = 0;     // AIV -> AIC: its rows of work are in GM
constexpr uint16_t kProductReady = 1;  // AIC -> AIVs: the block's product is in GM
constexpr uint16_t kSiblingDone = 2;   // AIV <-> AIV of a block (mode 1)
constexpr uint16_t kAllAivsDone = 3;   // among all AIVs (mode 0)

__aicore__ inline void VectorSide(GM_ADDR x, GM_ADDR r, GM_ADDR work, GM_ADDR product, GM_ADDR out, MixFault fault) {
  using namespace AscendC;
  constexpr uint32_t kRows = kMixRows / 2, kIn = kRows * kMixK, kOut = kRows * kMixN;
  const uint64_t row = static_cast<uint64_t>(GetBlockIdx()) * kRows;  // AIV index = block * 2 + sub-block
  GlobalTensor<float> x_gm, r_gm, work_gm, product_gm, out_gm;
  x_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(x) + row * kMixK, kIn);
  work_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(work) + row * kMixK, kIn);
  r_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(r) + row * kMixN, kOut);
  product_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(product) + row * kMixN, kOut);
  out_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(out) + row * kMixN, kOut);
  TPipe pipe;
  TQue<TPosition::VECIN, 1> in;
  TQue<TPosition::VECIN, 1> in2;
  TQue<TPosition::VECOUT, 1> result;
  pipe.InitBuffer(in, 1, kIn * sizeof(float));
  pipe.InitBuffer(in2, 1, kOut * sizeof(float));
  pipe.InitBuffer(result, 1, kOut * sizeof(float));
  if (fault == MixFault::l1_on_aiv) {
    TQue<TPosition::A1, 1> l1;
    pipe.InitBuffer(l1, 1, 512);
  }

  LocalTensor<float> t = in.AllocTensor<float>();
  DataCopy(t, x_gm, kIn);
  in.EnQue(t);
  t = in.DeQue<float>();
  LocalTensor<float> doubled = result.AllocTensor<float>();
  Muls(doubled, t, 2.0f, static_cast<int32_t>(kIn));
  in.FreeTensor(t);
  result.EnQue(doubled);
  doubled = result.DeQue<float>();
  DataCopy(work_gm, doubled, kIn);
  result.FreeTensor(doubled);

  const uint16_t ready = fault == MixFault::mismatched_flag ? 3 : fault == MixFault::flag_id_range ? 11 : kWorkReady;
  const int sets = fault == MixFault::missing_flag ? 0 : fault == MixFault::extra_flag ? 2
                                                   : fault == MixFault::too_many_pending ? 16 : 1;
  for (int i = 0; i < sets; ++i) CrossCoreSetFlag<2, PIPE_MTE3>(ready);
  CrossCoreWaitFlag(kProductReady);

  LocalTensor<float> p = in2.AllocTensor<float>();
  DataCopy(p, product_gm, kOut);
  in2.EnQue(p);
  LocalTensor<float> residual = in.AllocTensor<float>();
  DataCopy(residual, r_gm, kOut);
  in.EnQue(residual);
  p = in2.DeQue<float>();
  residual = in.DeQue<float>();
  LocalTensor<float> sum = result.AllocTensor<float>();
  Add(sum, p, residual, static_cast<int32_t>(kOut));
  in2.FreeTensor(p);
  in.FreeTensor(residual);
  result.EnQue(sum);
  sum = result.DeQue<float>();
  DataCopy(out_gm, sum, kOut);
  result.FreeTensor(sum);
  // Barriers that change nothing here but exercise flag modes 1 and 0.
  CrossCoreSetFlag<1, PIPE_MTE3>(kSiblingDone);
  CrossCoreWaitFlag(kSiblingDone);
  CrossCoreSetFlag<0, PIPE_MTE3>(kAllAivsDone);
  CrossCoreWaitFlag(kAllAivsDone);
  if (!(fault == MixFault::sync_all_missed && GetSubBlockIdx() == 1)) SyncAll<false>();
}

__aicore__ inline void CubeSide(GM_ADDR w, GM_ADDR work, GM_ADDR product, MixFault fault) {
  using namespace AscendC;
  const uint64_t row = static_cast<uint64_t>(GetBlockIdx()) * kMixRows;
  GlobalTensor<float> w_gm, work_gm, product_gm;
  w_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(w), kMixN * kMixK);
  work_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(work) + row * kMixK, kMixRows * kMixK);
  product_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(product) + row * kMixN, kMixRows * kMixN);
  TPipe pipe;
  loraops::ascend::CubeMatmul<float, float> mm;
  mm.Init(&pipe);
  if (fault == MixFault::vector_on_aic) {
    TBuf<TPosition::A1> l1;
    pipe.InitBuffer(l1, 256);
    LocalTensor<float> t = l1.Get<float>();
    Muls(t, t, 2.0f, 64);
  }
  CrossCoreWaitFlag(kWorkReady);  // one wait takes the flag once both AIVs have raised it
  loraops::ascend::CubeMatmulShape s;
  s.m = kMixRows;
  s.n = kMixN;
  s.k = kMixK;
  s.lda = kMixK;
  s.ldb = kMixK;
  s.ldc = kMixN;
  s.a_k_major = false;
  s.b_k_major = false;
  s.accumulate = false;
  mm.Compute(work_gm, w_gm, product_gm, s);
  CrossCoreSetFlag<2, PIPE_FIX>(kProductReady);
  SyncAll<false>();
}

}  // namespace

extern "C" __global__ __aicore__ void loraops_mix_example(GM_ADDR x, GM_ADDR w, GM_ADDR r, GM_ADDR work,
                                                          GM_ADDR product, GM_ADDR out, int32_t fault_id) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_MIX_AIC_1_2);
  const auto fault = static_cast<MixFault>(fault_id);
  if ASCEND_IS_AIV {
    VectorSide(x, r, work, product, out, fault);
  }
  if ASCEND_IS_AIC {
    CubeSide(w, work, product, fault);
  }
}
