// Argument checks for the NF4 ops, shared by every backend. Each failure names
// the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "../sizes.h"
#include "loraops/nf4.h"

namespace loraops::nf4_detail {

inline void check_blocksize(int64_t blocksize, const char* name) {
  TORCH_CHECK_VALUE(blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0,
                    name, " must be a power of two between 32 and 4096, got ", blocksize);
}

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

inline void check_input(const at::Tensor& input, int64_t blocksize) {
  TORCH_CHECK_TYPE(is_supported_float(input.scalar_type()),
                   "nf4_quantize: input must be float32, bfloat16 or float16, got ", input.scalar_type());
  check_blocksize(blocksize, "nf4_quantize: blocksize");
}

// The NF4 tensor of an op's arguments: the dispatcher passes its parts one by
// one, every backend gets them as the C++ API's one struct. The optional parts
// stay undefined without double quantization. Shape sizes are checked later
// (check_nf4_tensor); a symbolic size must be concrete here.
inline nf4::NF4Tensor nf4_tensor(const at::Tensor& packed, const at::Tensor& absmax,
                                 const std::optional<at::Tensor>& nested_absmax,
                                 const std::optional<at::Tensor>& nested_code, const std::optional<at::Tensor>& offset,
                                 int64_t blocksize, int64_t nested_blocksize, c10::SymIntArrayRef shape) {
  nf4::NF4Tensor w;
  w.packed = packed;
  w.absmax = absmax;
  w.nested_absmax = nested_absmax.value_or(at::Tensor());
  w.nested_code = nested_code.value_or(at::Tensor());
  w.offset = offset.value_or(at::Tensor());
  w.blocksize = blocksize;
  w.nested_blocksize = nested_blocksize;
  w.shape.reserve(shape.size());
  for (const auto& d : shape) w.shape.push_back(d.guard_int(__FILE__, __LINE__));
  return w;
}

// Validates every part of an NF4 tensor against its shape and blocksize, so the
// kernels can index without bounds checks; `dtype` is the type it is
// dequantized to. Returns the element count.
inline int64_t check_nf4_tensor(const nf4::NF4Tensor& w, at::ScalarType dtype) {
  check_blocksize(w.blocksize, "nf4_dequantize: blocksize");
  TORCH_CHECK_TYPE(is_supported_float(dtype),
                   "nf4_dequantize: dtype must be float32, bfloat16 or float16, got ", dtype);
  for (const int64_t v : w.shape)
    TORCH_CHECK_VALUE(v >= 0, "nf4_dequantize: shape must not have negative sizes, got ", w.shape);
  const int64_t n = checked_numel(w.shape, c10::elementSize(dtype), "nf4_dequantize", "the dequantized tensor");
  TORCH_CHECK_TYPE(w.packed.scalar_type() == at::kByte,
                   "nf4_dequantize: packed must be uint8, got ", w.packed.scalar_type());
  TORCH_CHECK_VALUE(w.packed.numel() == packed_nibble_bytes(n), "nf4_dequantize: packed must hold (numel + 1) // 2 = ",
                    packed_nibble_bytes(n), " bytes for shape ", w.shape, ", got ", w.packed.numel());
  const int64_t nblocks = ceil_div(n, w.blocksize);
  TORCH_CHECK_VALUE(w.absmax.numel() == nblocks, "nf4_dequantize: absmax must have ceil(numel / blocksize) = ",
                    nblocks, " elements, got ", w.absmax.numel());
  const bool nested = w.nested_absmax.defined();
  TORCH_CHECK_VALUE(nested == w.nested_code.defined() && nested == w.offset.defined(),
                    "nf4_dequantize: nested_absmax, nested_code and offset must be given together "
                    "(double quantization) or not at all");
  TORCH_CHECK(w.packed.device() == w.absmax.device(), "nf4_dequantize: absmax must be on ", w.packed.device(),
              " like packed, got ", w.absmax.device());
  if (!nested) {
    TORCH_CHECK_TYPE(w.absmax.scalar_type() == at::kFloat,
                     "nf4_dequantize: absmax must be float32 without double quantization, got ",
                     w.absmax.scalar_type());
    return n;
  }
  TORCH_CHECK_TYPE(w.absmax.scalar_type() == at::kByte,
                   "nf4_dequantize: absmax must be uint8 codes with double quantization, got ",
                   w.absmax.scalar_type());
  TORCH_CHECK_VALUE(w.nested_blocksize >= 1, "nf4_dequantize: nested_blocksize must be positive, got ",
                    w.nested_blocksize);
  const int64_t nested_blocks = ceil_div(nblocks, w.nested_blocksize);
  TORCH_CHECK_TYPE(w.nested_absmax.scalar_type() == at::kFloat,
                   "nf4_dequantize: nested_absmax must be float32, got ", w.nested_absmax.scalar_type());
  TORCH_CHECK_VALUE(w.nested_absmax.numel() == nested_blocks,
                    "nf4_dequantize: nested_absmax must have ceil(blocks / nested_blocksize) = ",
                    nested_blocks, " elements, got ", w.nested_absmax.numel());
  TORCH_CHECK_TYPE(w.nested_code.scalar_type() == at::kFloat,
                   "nf4_dequantize: nested_code must be float32, got ", w.nested_code.scalar_type());
  TORCH_CHECK_VALUE(w.nested_code.numel() == 256, "nf4_dequantize: nested_code must have 256 elements, got ",
                    w.nested_code.numel());
  TORCH_CHECK_TYPE(w.offset.scalar_type() == at::kFloat,
                   "nf4_dequantize: offset must be float32, got ", w.offset.scalar_type());
  TORCH_CHECK_VALUE(w.offset.numel() == 1, "nf4_dequantize: offset must have one element, got ",
                    w.offset.numel());
  for (const at::Tensor* t : {&w.nested_absmax, &w.nested_code, &w.offset})
    TORCH_CHECK(t->device() == w.packed.device(), "nf4_dequantize: every tensor must be on ", w.packed.device(),
                ", got one on ", t->device());
  return n;
}

}  // namespace loraops::nf4_detail
