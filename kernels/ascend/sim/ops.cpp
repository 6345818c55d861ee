// Test-only torch ops that run loraops' Ascend C kernels on CPU tensors through
// the emulation in this folder (built with LORAOPS_ASCEND_SIM=ON):
//   _ascend_sim_nf4_quantize(..., int cores) and _ascend_sim_nf4_dequantize(..., int cores): the NF4
//     ops on `cores` emulated vector cores;
//   _ascend_sim_selftest(str fault): a small kernel with the named fault built in ("none": none);
//   _ascend_sim_cube_matmul(...): CubeMatmul (kernels/ascend/common/cube_matmul.h) on `cores` emulated AI cube
//     cores; _ascend_sim_cube_selftest(str fault): a small cube kernel with the named fault built in;
//   _ascend_sim_mix_example(x, w, r, str fault): a MIX kernel (AIC + 2 AIVs per block) with a fault built in.
// A fault the emulation catches surfaces as a RuntimeError that names it.
#include <ATen/core/Tensor.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <string_view>

#include "../nf4/nf4_kernels.h"
#include "../selftest/selftest_kernels.h"
#include "../nf4/nf4_tiling.h"
#include "csrc/build_info.h"
#include "../nf4/nf4_ascend_ops.h"
#include "csrc/nf4/nf4_host_flow.h"
#include "sim_launcher.h"

namespace loraops {
namespace {

using ascend_sim_ops::gm;
using ascend_sim_ops::region;
using ascend_sim_ops::run;
using ascend_sim_ops::SimLauncher;
using ascend_sim_ops::VectorCores;

const build_info::Backend kBackend("ascend_sim");

void check_cores(int64_t cores) {
  TORCH_CHECK_VALUE(cores >= 1 && cores <= 65535, "ascend sim: cores must be in [1, 65535], got ", cores);
}

at::Tensor ascend_sim_nf4_dequantize(const at::Tensor& packed, const at::Tensor& absmax,
                                     const std::optional<at::Tensor>& nested_absmax,
                                     const std::optional<at::Tensor>& nested_code,
                                     const std::optional<at::Tensor>& offset, int64_t blocksize,
                                     int64_t nested_blocksize, c10::SymIntArrayRef shape, at::ScalarType dtype,
                                     int64_t cores) {
  const nf4::NF4Tensor weight =
      nf4_detail::nf4_tensor(packed, absmax, nested_absmax, nested_code, offset, blocksize, nested_blocksize, shape);
  const int64_t n = nf4_detail::check_nf4_tensor(weight, dtype);
  check_cores(cores);
  at::Tensor out = at::empty(weight.shape, packed.options().dtype(dtype));
  if (n == 0) return out;
  const VectorCores use(cores);
  ascend::AscendNF4Dequantize<SimLauncher>::dequantize_into(weight, n, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ascend_sim_nf4_quantize(const at::Tensor& input,
                                                                                   int64_t blocksize,
                                                                                   bool double_quant, int64_t cores) {
  check_cores(cores);
  auto kernel = input.scalar_type() == at::kFloat      ? loraops_nf4_quantize_fp32
                : input.scalar_type() == at::kBFloat16 ? loraops_nf4_quantize_bf16
                                                       : loraops_nf4_quantize_fp16;
  const auto n_cores = static_cast<uint32_t>(cores);
  return nf4_detail::quantize_on_device(
      input, blocksize, double_quant,
      [&](const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax) {
        const auto t =
            ascend::nf4_block_tiling(x.numel(), static_cast<uint32_t>(blocksize), kNestedBlocksize, false, n_cores);
        run("loraops_nf4_quantize", [&] {
          ascend_sim::launch(t.block_dim, {region(x), region(packed), region(absmax)}, kernel, gm(x), gm(packed),
                             gm(absmax), t.n, t.num_blocks, t.blocks_per_core, t.blocksize, t.tile_blocks);
        });
      },
      [&](const at::Tensor& centered, const at::Tensor& bounds, const at::Tensor& codes,
          const at::Tensor& nested_absmax) {
        const auto t = ascend::nf4_block_tiling(centered.numel(), kNestedBlocksize, kNestedBlocksize, false,
                                                     n_cores);
        run("loraops_nf4_quantize_absmax", [&] {
          ascend_sim::launch(t.block_dim, {region(centered), region(bounds), region(codes), region(nested_absmax)},
                             loraops_nf4_quantize_absmax, gm(centered), gm(bounds), gm(codes), gm(nested_absmax),
                             t.n, t.num_blocks, t.blocks_per_core, t.blocksize, t.tile_blocks);
        });
      });
}

// ----------------------------------------------------------------------------- self test

enum Fault : int32_t {
  kNone, kMisalignedCopy, kUbOverflow, kMissingFree, kDequeBeforeEnque, kDepthExceeded, kGmOutOfBounds,
  kMisalignedOperand, kGatherOffset, kFreeWhileQueued, kSelectScratch, kPartialCompare, kGatherCount,
};

constexpr std::pair<std::string_view, Fault> kFaults[] = {
    {"none", kNone},
    {"misaligned_copy", kMisalignedCopy},
    {"ub_overflow", kUbOverflow},
    {"missing_free", kMissingFree},
    {"deque_before_enque", kDequeBeforeEnque},
    {"depth_exceeded", kDepthExceeded},
    {"gm_out_of_bounds", kGmOutOfBounds},
    {"misaligned_operand", kMisalignedOperand},
    {"gather_offset", kGatherOffset},
    {"free_while_queued", kFreeWhileQueued},
    {"select_scratch", kSelectScratch},
    {"partial_compare", kPartialCompare},
    {"gather_count", kGatherCount},
};

// Copies 64 floats from src to dst through a queue, with `fault` built in.
extern "C" __global__ __aicore__ void loraops_sim_fault_kernel(GM_ADDR src, GM_ADDR dst, int32_t fault) {
  using namespace AscendC;
  constexpr uint32_t kCount = 64;
  TPipe pipe;
  TQue<TPosition::VECIN, 1> in;
  TQue<TPosition::VECOUT, 1> out;
  TBuf<TPosition::VECCALC> calc;
  GlobalTensor<float> src_gm, dst_gm;
  src_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(src), kCount);
  dst_gm.SetGlobalBuffer(reinterpret_cast<__gm__ float*>(dst), kCount);
  pipe.InitBuffer(in, 2, kCount * sizeof(float));
  pipe.InitBuffer(out, 1, kCount * sizeof(float));
  const uint32_t calc_bytes = fault == kUbOverflow ? 200 * 1024 : fault == kSelectScratch ? 190 * 1024 : 256;
  pipe.InitBuffer(calc, calc_bytes);

  LocalTensor<float> x = in.AllocTensor<float>();
  if (fault == kDequeBeforeEnque) in.DeQue<float>();
  DataCopy(x, src_gm[fault == kGmOutOfBounds ? 8 : 0], fault == kMisalignedCopy ? kCount - 1 : kCount);
  in.EnQue(x);
  if (fault == kFreeWhileQueued) in.FreeTensor(x);
  if (fault == kDepthExceeded) {
    LocalTensor<float> second = in.AllocTensor<float>();
    in.EnQue(second);
  }
  x = in.DeQue<float>();
  LocalTensor<float> y = out.AllocTensor<float>();
  if (fault == kSelectScratch || fault == kPartialCompare) {
    // y = x > 10 ? x : 0, through a comparison mask.
    LocalTensor<uint8_t> mask = calc.Get<uint8_t>();
    Compares(mask, x, 10.0f, CMPMODE::GT, fault == kPartialCompare ? kCount - 8 : kCount);
    Select(y, mask, x, 0.0f, SELMODE::VSEL_TENSOR_SCALAR_MODE, kCount);
    Muls(y, y, 2.0f, kCount);
  } else if (fault == kGatherOffset || fault == kGatherCount) {
    LocalTensor<uint32_t> offsets = calc.Get<uint32_t>();
    for (uint32_t i = 0; i < kCount; ++i) offsets.SetValue(i, i * sizeof(float) + (i == 5 ? 2 : 0));
    Gather(y, x, offsets, 0, fault == kGatherCount ? 16384 : kCount);
  } else {
    const LocalTensor<int32_t> bits = x.ReinterpretCast<int32_t>();
    And(bits, bits, bits, kCount);  // x & x == x: 32-bit bitwise ops exist on Atlas A2
    Muls(fault == kMisalignedOperand ? y[1] : y, x, 2.0f, fault == kMisalignedOperand ? kCount - 1 : kCount);
  }
  out.EnQue(y);
  if (fault != kMissingFree) in.FreeTensor(x);
  y = out.DeQue<float>();
  DataCopy(dst_gm, y, kCount);
  out.FreeTensor(y);
}

void ascend_sim_selftest(c10::string_view fault_name) {
  const std::string_view name(fault_name.data(), fault_name.size());
  const auto* found = std::find_if(std::begin(kFaults), std::end(kFaults), [&](const auto& f) { return f.first == name; });
  TORCH_CHECK_VALUE(found != std::end(kFaults), "_ascend_sim_selftest: unknown fault \"", name, "\"");
  at::Tensor src = at::arange(64, at::kFloat), dst = at::zeros({64}, at::kFloat);
  run("loraops_sim_fault_kernel", [&] {
    ascend_sim::launch(2, {region(src), region(dst)}, loraops_sim_fault_kernel, gm(src), gm(dst),
                       static_cast<int32_t>(found->second));
  });
  TORCH_CHECK(at::equal(dst, at::mul(src, 2)), "_ascend_sim_selftest: the fault-free kernel computed a wrong result");
}

// ----------------------------------------------------------------------------- cube and MIX

using CubeMatmulKernel = void (*)(LORAOPS_CUBE_MATMUL_PARAMS);

CubeMatmulKernel cube_matmul_kernel(at::ScalarType in, at::ScalarType out) {
  const int i = in == at::kFloat ? 0 : in == at::kHalf ? 1 : 2;
  const int o = out == at::kFloat ? 0 : out == at::kHalf ? 1 : 2;
  static constexpr CubeMatmulKernel kKernels[3][3] = {
      {loraops_cube_matmul_f32_f32, loraops_cube_matmul_f32_f16, loraops_cube_matmul_f32_bf16},
      {loraops_cube_matmul_f16_f32, loraops_cube_matmul_f16_f16, loraops_cube_matmul_f16_bf16},
      {loraops_cube_matmul_bf16_f32, loraops_cube_matmul_bf16_f16, loraops_cube_matmul_bf16_bf16}};
  return kKernels[i][o];
}

bool cube_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

// Leading dimension of a row-major 2-D tensor with unit column stride.
int64_t leading_dim(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 2 && (t.stride(1) == 1 || t.size(1) == 1), "_ascend_sim_cube_matmul: ", name,
                    " must be 2-D with unit column stride");
  const int64_t ld = t.size(0) == 1 ? t.size(1) : t.stride(0);
  TORCH_CHECK_VALUE(ld >= t.size(1) && ld <= 65535, "_ascend_sim_cube_matmul: ", name,
                    "'s leading dimension must be in [columns, 65535]");
  return ld;
}

// C = op(a) op(b) (+ accumulate_into), C written into rows of n + 3 elements
// (so that C's rows are not 32-byte aligned) and returned as a view.
at::Tensor ascend_sim_cube_matmul(const at::Tensor& a, const at::Tensor& b, bool a_k_major, bool b_k_major,
                                  at::ScalarType out_dtype, const std::optional<at::Tensor>& accumulate_into,
                                  int64_t cores) {
  check_cores(cores);
  TORCH_CHECK_VALUE(cube_dtype(a.scalar_type()) && a.scalar_type() == b.scalar_type() && cube_dtype(out_dtype),
                    "_ascend_sim_cube_matmul: a and b of one of float, half, bfloat16; out likewise");
  const int64_t lda = leading_dim(a, "a"), ldb = leading_dim(b, "b");
  const int64_t m = a.size(a_k_major ? 1 : 0), k = a.size(a_k_major ? 0 : 1);
  const int64_t n = b.size(b_k_major ? 1 : 0);
  TORCH_CHECK_VALUE(b.size(b_k_major ? 0 : 1) == k, "_ascend_sim_cube_matmul: a and b disagree on k");
  TORCH_CHECK_VALUE(m >= 1 && n >= 1 && k >= 1, "_ascend_sim_cube_matmul: m, n, k must be at least 1");
  const int64_t ldc = n + 3;
  at::Tensor storage = at::full({m, ldc}, NAN, a.options().dtype(out_dtype));
  at::Tensor c = storage.narrow(1, 0, n);
  if (accumulate_into) {
    TORCH_CHECK_VALUE(accumulate_into->sizes() == c.sizes() && accumulate_into->scalar_type() == out_dtype,
                      "_ascend_sim_cube_matmul: accumulate_into must be [m, n] of out_dtype");
    c.copy_(*accumulate_into);
  }
  const uint32_t flags = (a_k_major ? ascend::kAKMajor : 0) | (b_k_major ? ascend::kBKMajor : 0) |
                         (accumulate_into ? ascend::kAccumulate : 0);
  run("loraops_cube_matmul", [&] {
    ascend_sim::launch_cube(static_cast<uint32_t>(cores), {region(a), region(b), region(storage)},
                            cube_matmul_kernel(a.scalar_type(), out_dtype), gm(a), gm(b), gm(storage),
                            static_cast<uint32_t>(m), static_cast<uint32_t>(n), static_cast<uint32_t>(k),
                            static_cast<uint32_t>(lda), static_cast<uint32_t>(ldb), static_cast<uint32_t>(ldc), flags);
  });
  return c;
}

template <class Names>
int32_t fault_id(const Names& names, c10::string_view fault, const char* op) {
  const std::string_view name(fault.data(), fault.size());
  const auto* found = std::find(std::begin(names), std::end(names), name);
  TORCH_CHECK_VALUE(found != std::end(names), op, ": unknown fault \"", name, "\"");
  return static_cast<int32_t>(found - std::begin(names));
}

#define LORAOPS_FAULT_NAME(name) #name,
constexpr std::string_view kCubeFaults[] = {LORAOPS_CUBE_FAULTS(LORAOPS_FAULT_NAME)};
constexpr std::string_view kMixFaults[] = {LORAOPS_MIX_FAULTS(LORAOPS_FAULT_NAME)};
#undef LORAOPS_FAULT_NAME

void ascend_sim_cube_selftest(c10::string_view fault) {
  const int32_t id = fault_id(kCubeFaults, fault, "_ascend_sim_cube_selftest");
  at::Tensor a = at::randn({16, 16}).to(at::kHalf), b = at::randn({16, 16}).to(at::kHalf);
  at::Tensor c = at::zeros({16, 16}, at::kFloat);
  run("loraops_cube_fault_kernel", [&] {
    ascend_sim::launch_cube(1, {region(a), region(b), region(c)}, loraops_cube_fault_kernel, gm(a), gm(b), gm(c),
                            id);
  });
  TORCH_CHECK(at::allclose(c, at::matmul(a.to(at::kFloat), b.to(at::kFloat).t()), 1e-5, 1e-5),
              "_ascend_sim_cube_selftest: the fault-free kernel computed a wrong result");
}

at::Tensor ascend_sim_mix_example(const at::Tensor& x, const at::Tensor& w, const at::Tensor& r,
                                  c10::string_view fault) {
  const int32_t id = fault_id(kMixFaults, fault, "_ascend_sim_mix_example");
  const int64_t rows = ascend::kMixRows, k = ascend::kMixK, n = ascend::kMixN;
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(0) % rows == 0 && x.size(0) > 0 && x.size(1) == k &&
                        x.scalar_type() == at::kFloat && x.is_contiguous(),
                    "_ascend_sim_mix_example: x must be contiguous float [blocks * ", rows, ", ", k, "]");
  TORCH_CHECK_VALUE(w.sizes() == at::IntArrayRef({n, k}) && w.scalar_type() == at::kFloat && w.is_contiguous(),
                    "_ascend_sim_mix_example: w must be contiguous float [", n, ", ", k, "]");
  TORCH_CHECK_VALUE(r.sizes() == at::IntArrayRef({x.size(0), n}) && r.scalar_type() == at::kFloat &&
                        r.is_contiguous(),
                    "_ascend_sim_mix_example: r must be contiguous float [rows, ", n, "]");
  at::Tensor work = at::full_like(x, NAN), product = at::full_like(r, NAN), out = at::full_like(r, NAN);
  run("loraops_mix_example", [&] {
    ascend_sim::launch_mix(static_cast<uint32_t>(x.size(0) / rows),
                           {region(x), region(w), region(r), region(work), region(product), region(out)},
                           loraops_mix_example, gm(x), gm(w), gm(r), gm(work), gm(product), gm(out), id);
  });
  return out;
}

// out[0, 8): DataCopyPad's UB block of src[0, 3) (added to ones with `atomic`); out[8, 10): ReduceMax of
// src[0, reduce_count).
at::Tensor ascend_sim_vector_probe(const at::Tensor& src, bool is_pad, int64_t right_padding, int64_t reduce_count,
                                   int64_t tmp_elems, bool cal_index, bool atomic) {
  TORCH_CHECK_VALUE(src.scalar_type() == at::kFloat && src.is_contiguous() && src.numel() >= 8 &&
                        src.numel() >= reduce_count && reduce_count % 8 == 0 && right_padding >= 0 &&
                        right_padding <= 5 && tmp_elems >= 0 && tmp_elems <= 16384,
                    "_ascend_sim_vector_probe: contiguous float src of at least max(8, reduce_count) elements, "
                    "reduce_count a multiple of 8, right_padding in [0, 5], tmp_elems in [0, 16384]");
  at::Tensor out = at::full({16}, atomic ? 1.0 : NAN, src.options());
  run("loraops_vector_probe", [&] {
    ascend_sim::launch(1, {region(src), region(out)}, loraops_vector_probe, gm(src), gm(out),
                       static_cast<int32_t>(is_pad), static_cast<int32_t>(right_padding),
                       static_cast<int32_t>(reduce_count), static_cast<int32_t>(tmp_elems),
                       static_cast<int32_t>(cal_index), static_cast<int32_t>(atomic));
  });
  return out;
}

// Exp / Ln (op 0 / 1) of src in UB over op_count elements from element ub_offset (out: the buffer's first
// src.numel() floats), or ReduceSum (op 2; out[0]: the sum).
at::Tensor ascend_sim_vector_math_probe(const at::Tensor& src, int64_t op, int64_t op_count, int64_t ub_offset) {
  TORCH_CHECK_VALUE(src.scalar_type() == at::kFloat && src.is_contiguous() && src.dim() == 1 && src.numel() >= 1 &&
                        src.numel() <= 16384 && op >= 0 && op <= 2 && ub_offset >= 0 && ub_offset < src.numel(),
                    "_ascend_sim_vector_math_probe: contiguous 1-D float src of 1 to 16384 elements, op in [0, 2], "
                    "ub_offset inside src");
  at::Tensor out = at::full({src.numel()}, NAN, src.options());
  run("loraops_vector_math_probe", [&] {
    ascend_sim::launch(1, {region(src), region(out)}, loraops_vector_math_probe, gm(src), gm(out),
                       static_cast<int32_t>(op), static_cast<int32_t>(src.numel()), static_cast<int32_t>(op_count),
                       static_cast<int32_t>(ub_offset));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(loraops, m) {
  m.def("_ascend_sim_vector_math_probe(Tensor src, int op, int op_count, int ub_offset) -> Tensor");
  m.def(
      "_ascend_sim_nf4_dequantize(Tensor packed, Tensor absmax, Tensor? nested_absmax, Tensor? nested_code, "
      "Tensor? offset, int blocksize, int nested_blocksize, SymInt[] shape, ScalarType dtype, int cores) -> Tensor");
  m.def(
      "_ascend_sim_nf4_quantize(Tensor input, int blocksize, bool double_quant, int cores) -> "
      "(Tensor packed, Tensor absmax, Tensor nested_absmax, Tensor offset)");
  m.def("_ascend_sim_selftest(str fault) -> ()");
  m.def(
      "_ascend_sim_cube_matmul(Tensor a, Tensor b, bool a_k_major, bool b_k_major, ScalarType out_dtype, "
      "Tensor? accumulate_into, int cores) -> Tensor");
  m.def("_ascend_sim_cube_selftest(str fault) -> ()");
  m.def("_ascend_sim_mix_example(Tensor x, Tensor w, Tensor r, str fault) -> Tensor");
  m.def(
      "_ascend_sim_vector_probe(Tensor src, bool is_pad, int right_padding, int reduce_count, int tmp_elems, "
      "bool cal_index, bool atomic=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(loraops, CPU, m) {
  m.impl("_ascend_sim_nf4_dequantize", &ascend_sim_nf4_dequantize);
  m.impl("_ascend_sim_nf4_quantize", &ascend_sim_nf4_quantize);
  m.impl("_ascend_sim_cube_matmul", &ascend_sim_cube_matmul);
  m.impl("_ascend_sim_mix_example", &ascend_sim_mix_example);
  m.impl("_ascend_sim_vector_probe", &ascend_sim_vector_probe);
  m.impl("_ascend_sim_vector_math_probe", &ascend_sim_vector_math_probe);
}

TORCH_LIBRARY_IMPL(loraops, CompositeExplicitAutograd, m) {
  m.impl("_ascend_sim_selftest", &ascend_sim_selftest);
  m.impl("_ascend_sim_cube_selftest", &ascend_sim_cube_selftest);
}

}  // namespace loraops
