// A quantized NF4 tensor as the CPU kernels see it, for the ops that
// dequantize it (whole, or block range by block range as tiles).
#pragma once

#include <ATen/core/Tensor.h>

#include "loraops/nf4.h"

#include "nf4_kernels.h"

namespace loraops {

class NF4CpuTensor {
 public:
  // w must have passed nf4_detail::check_nf4_tensor, which counted its n elements.
  NF4CpuTensor(const nf4::NF4Tensor& w, int64_t n);

  int64_t numel() const { return args_.n; }
  int64_t blocksize() const { return args_.blocksize; }
  int64_t num_blocks() const { return (args_.n + args_.blocksize - 1) / args_.blocksize; }

  // Dequantize blocks [block_begin, block_end) into `out` (contiguous, of
  // `dtype`), element block_begin * blocksize landing at out[0]. Multi-threaded.
  void dequantize_blocks(int64_t block_begin, int64_t block_end, void* out, at::ScalarType dtype) const;

 private:
  at::Tensor packed_, absmax_, nested_absmax_, nested_code_;  // contiguous, kept alive for args_
  cpu::NF4DequantizeArgs args_{};
};

}  // namespace loraops
