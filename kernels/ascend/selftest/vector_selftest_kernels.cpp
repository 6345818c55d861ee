// A vector kernel that shows two behaviours of the Atlas A2 API the emulation
// reproduces: what DataCopyPad leaves in a UB block's padding, and the
// scratch ReduceMax needs.
#include "selftest_kernels.h"

// out[0, 8): the UB block DataCopyPad makes of src[0, 3) (floats) with the
// given isPad and right padding (pad value 7); out[8, 10): ReduceMax of
// src[0, reduce_count) (dst[0] the value, dst[1] the index bits) with a
// scratch of tmp_elems floats, when reduce_count > 0. With `atomic` the block
// is added to out[0, 8) (SetAtomicAdd<float>) instead of overwriting it.
extern "C" __global__ __aicore__ void loraops_vector_probe(GM_ADDR src, GM_ADDR out, int32_t is_pad,
                                                           int32_t right_padding, int32_t reduce_count,
                                                           int32_t tmp_elems, int32_t cal_index, int32_t atomic) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  using namespace AscendC;
  constexpr uint32_t kBlock = 8;
  GlobalTensor<float> src_gm, out_gm;
  src_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(src));
  out_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(out), 2 * kBlock);
  TPipe pipe;
  TBuf<TPosition::VECCALC> block, values, reduced, tmp;
  pipe.InitBuffer(block, kBlock * sizeof(float));
  pipe.InitBuffer(values, (reduce_count > 0 ? reduce_count : 1) * sizeof(float));
  pipe.InitBuffer(reduced, kBlock * sizeof(float));
  pipe.InitBuffer(tmp, (tmp_elems > 0 ? tmp_elems : 1) * sizeof(float));

  LocalTensor<float> b = block.Get<float>();
  Duplicate(b, -1.0f, static_cast<int32_t>(kBlock));
  DataCopyExtParams copy(1, 3 * sizeof(float), 0, 0, 0);
  DataCopyPadExtParams<float> pad(is_pad != 0, 0, static_cast<uint8_t>(right_padding), 7.0f);
  DataCopyPad(b, src_gm, copy, pad);
  if (atomic) SetAtomicAdd<float>();
  DataCopy(out_gm, b, kBlock);
  if (atomic) SetAtomicNone();

  if (reduce_count > 0) {
    LocalTensor<float> v = values.Get<float>();
    LocalTensor<float> r = reduced.Get<float>();
    Duplicate(r, 0.0f, static_cast<int32_t>(kBlock));
    DataCopy(v, src_gm, static_cast<uint32_t>(reduce_count));
    ReduceMax(r, v, tmp.Get<float>(static_cast<uint32_t>(tmp_elems)), reduce_count, cal_index != 0);
    DataCopy(out_gm[kBlock], r, kBlock);
  }
}
