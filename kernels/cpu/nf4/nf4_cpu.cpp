// CPU kernels of the NF4 ops: argument checks, threading, and the call into the
// per-ISA kernels beside it.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>

#include "../buffer_cache.h"
#include "../memory.h"
#include "csrc/nf4/nf4_host_flow.h"
#include "nf4_cpu.h"
#include "nf4_kernels.h"

namespace loraops {
namespace {

using cpu::FloatType;
using namespace nf4_detail;

FloatType float_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return FloatType::f32;
    case at::kBFloat16: return FloatType::bf16;
    default: return FloatType::f16;
  }
}

// Outputs this large do not stay in cache for the caller anyway.
constexpr size_t kStreamingStoreBytes = size_t{8} << 20;

// Enough elements per task that thread start-up stays small next to the work.
int64_t grain_blocks(int64_t blocksize) { return std::max<int64_t>(1, (int64_t{1} << 16) / blocksize); }

void fail_nonfinite(int64_t count) {
  TORCH_CHECK_VALUE(count == 0, "nf4_quantize: input contains ", count,
                    " NaN or Inf value(s); NF4 quantization needs finite values");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> nf4_quantize_cpu(const at::Tensor& input_arg,
                                                                            int64_t blocksize,
                                                                            bool double_quant) {
  check_input(input_arg, blocksize);
  const at::Tensor input = input_arg.contiguous();
  const int64_t n = input.numel();
  const int64_t nblocks = ceil_div(n, blocksize);
  const auto byte_opts = input.options().dtype(at::kByte);
  const auto float_opts = input.options().dtype(at::kFloat);
  at::Tensor packed = at::empty({packed_nibble_bytes(n)}, byte_opts);
  cpu::advise_huge_pages(packed.mutable_data_ptr(), packed.nbytes());
  at::Tensor absmax = at::empty({nblocks}, float_opts);

  cpu::NF4QuantizeArgs args{input.const_data_ptr(), float_type(input.scalar_type()), n, blocksize,
                            packed.mutable_data_ptr<uint8_t>(), absmax.mutable_data_ptr<float>()};
  const cpu::Isa isa = cpu::active_isa();
  std::atomic<int64_t> nonfinite{0};
  at::parallel_for(0, nblocks, grain_blocks(blocksize), [&](int64_t b0, int64_t b1) {
    nonfinite += cpu::nf4_quantize_blocks(isa, args, b0, b1);
  });
  fail_nonfinite(nonfinite.load());
  // bitsandbytes stores the scale of a partial last block clamped to 1e-38
  // (full blocks keep 0); the dequantized values are the same either way.
  if (n % blocksize != 0) {
    float& last = absmax.mutable_data_ptr<float>()[nblocks - 1];
    last = std::max(last, nf4_format::kMinAbsmax);
  }

  if (!double_quant) return {packed, absmax, at::empty({0}, float_opts), at::zeros({}, float_opts)};

  at::Tensor offset = double_quant_offset(absmax);
  const at::Tensor centered = at::sub(absmax, offset).contiguous();
  const int64_t nested_blocks = ceil_div(nblocks, kNestedBlocksize);
  at::Tensor codes = at::empty({nblocks}, byte_opts);
  at::Tensor nested_absmax = at::empty({nested_blocks}, float_opts);
  const at::Tensor code = dynamic_code_cpu();
  std::atomic<int64_t> nonfinite_scales{0};
  at::parallel_for(0, nested_blocks, 16, [&](int64_t g0, int64_t g1) {
    nonfinite_scales += cpu::quantize_to_code_blocks(
        centered.const_data_ptr<float>(), nblocks, kNestedBlocksize, code.const_data_ptr<float>(), 256,
        codes.mutable_data_ptr<uint8_t>(), nested_absmax.mutable_data_ptr<float>(), g0, g1);
  });
  TORCH_INTERNAL_ASSERT(nonfinite_scales.load() == 0, "nf4_quantize: non-finite block scales after centering");
  return {packed, codes, nested_absmax, offset};
}

// The CPU side of the shared nf4_dequantize / nf4_dequantize_into ops.
struct CpuDequantize {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
  static at::Tensor empty_output(at::IntArrayRef shape, at::TensorOptions options) {
    return cpu::empty_output(shape, options.dtype().toScalarType());
  }
  static void dequantize_into(const nf4::NF4Tensor& w, int64_t n, at::Tensor& out) {
    const NF4CpuTensor weight(w, n);
    weight.dequantize_blocks(0, weight.num_blocks(), out.mutable_data_ptr(), out.scalar_type());
  }
};

}  // namespace

NF4CpuTensor::NF4CpuTensor(const nf4::NF4Tensor& w, int64_t n)
    : packed_(w.packed.contiguous()), absmax_(w.absmax.contiguous()) {
  args_.packed = packed_.const_data_ptr<uint8_t>();
  args_.n = n;
  args_.blocksize = w.blocksize;
  if (w.double_quant()) {
    nested_absmax_ = w.nested_absmax.contiguous();
    nested_code_ = w.nested_code.contiguous();
    args_.absmax_codes = absmax_.const_data_ptr<uint8_t>();
    args_.nested_absmax = nested_absmax_.const_data_ptr<float>();
    args_.nested_code = nested_code_.const_data_ptr<float>();
    args_.offset = w.offset.item<float>();
    args_.nested_blocksize = w.nested_blocksize;
  } else {
    args_.absmax = absmax_.const_data_ptr<float>();
  }
}
void NF4CpuTensor::dequantize_blocks(int64_t block_begin, int64_t block_end, void* out, at::ScalarType dtype) const {
  cpu::NF4DequantizeArgs args = args_;
  args.out = out;
  args.out_dtype = float_type(dtype);
  args.out_first_element = block_begin * args.blocksize;
  const int64_t last = std::min(args.n, block_end * args.blocksize);
  args.stream_stores = static_cast<size_t>(last - args.out_first_element) * c10::elementSize(dtype) >=
                       kStreamingStoreBytes;
  const cpu::Isa isa = cpu::active_isa();
  at::parallel_for(block_begin, block_end, grain_blocks(args.blocksize),
                   [&](int64_t b0, int64_t b1) { cpu::nf4_dequantize_blocks(isa, args, b0, b1); });
}

TORCH_LIBRARY_IMPL(loraops, CPU, m) {
  m.impl("nf4_quantize", &nf4_quantize_cpu);
  m.impl("nf4_dequantize", &NF4DequantizeOps<CpuDequantize>::dequantize);
  m.impl("nf4_dequantize_into", &NF4DequantizeOps<CpuDequantize>::dequantize_into);
}

}  // namespace loraops
