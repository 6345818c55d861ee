// Vector kernels that show behaviours of the Atlas A2 API the emulation
// reproduces: what DataCopyPad leaves in a UB block's padding, the scratch
// ReduceMax needs; and Exp, Ln, ReduceSum with their operand checks.
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

// Exp, Ln (op 0, 1) over op_count floats at UB element offset ub_offset of
// src[0, count) copied into UB, out = the buffer's first count floats; or
// (op 2) ReduceSum of them, out[0] = the sum.
extern "C" __global__ __aicore__ void loraops_vector_math_probe(GM_ADDR src, GM_ADDR out, int32_t op, int32_t count,
                                                                int32_t op_count, int32_t ub_offset) {
  KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);
  using namespace AscendC;
  GlobalTensor<float> src_gm, out_gm;
  src_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(src));
  out_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(out));
  TPipe pipe;
  TBuf<TPosition::VECCALC> values, reduced, tmp;
  const uint32_t capacity = (static_cast<uint32_t>(count) + 7) / 8 * 8;
  pipe.InitBuffer(values, capacity * sizeof(float));
  pipe.InitBuffer(reduced, 8 * sizeof(float));
  pipe.InitBuffer(tmp, 8 * sizeof(float));
  const LocalTensor<float> x = values.Get<float>();
  const DataCopyExtParams copy(1, static_cast<uint32_t>(count) * sizeof(float), 0, 0, 0);
  DataCopyPad(x, src_gm, copy, DataCopyPadExtParams<float>(false, 0, 0, 0.0f));
  PipeBarrier<PIPE_ALL>();
  const LocalTensor<float> operand = x[static_cast<uint32_t>(ub_offset)];
  if (op == 2) {
    const LocalTensor<float> r = reduced.Get<float>();
    ReduceSum(r, operand, tmp.Get<float>(), op_count);
    PipeBarrier<PIPE_ALL>();
    DataCopyPad(out_gm, r, DataCopyExtParams(1, sizeof(float), 0, 0, 0));
    return;
  }
  if (op == 0) {
    Exp(operand, operand, op_count);
  } else {
    Ln(operand, operand, op_count);
  }
  PipeBarrier<PIPE_ALL>();
  DataCopyPad(out_gm, x, copy);
}
