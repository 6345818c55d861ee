// Argument checks for the NF4 ops, shared by every backend. Each failure names
// the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

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

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Validates every tensor of a quantized NF4 tensor against shape/blocksize, so
// the kernels can index without bounds checks. Returns the element count.
inline int64_t check_dequantize_args(const at::Tensor& packed, const at::Tensor& absmax,
                                     const std::optional<at::Tensor>& nested_absmax,
                                     const std::optional<at::Tensor>& nested_code,
                                     const std::optional<at::Tensor>& offset, int64_t blocksize,
                                     int64_t nested_blocksize, c10::SymIntArrayRef shape,
                                     at::ScalarType dtype) {
  check_blocksize(blocksize, "nf4_dequantize: blocksize");
  TORCH_CHECK_TYPE(is_supported_float(dtype),
                   "nf4_dequantize: dtype must be float32, bfloat16 or float16, got ", dtype);
  int64_t n = 1;
  for (const auto& d : shape) {
    const int64_t v = d.guard_int(__FILE__, __LINE__);
    TORCH_CHECK_VALUE(v >= 0, "nf4_dequantize: shape must not have negative sizes, got ", shape);
    TORCH_CHECK_VALUE(!__builtin_mul_overflow(n, v, &n), "nf4_dequantize: shape ", shape,
                      " has more elements than int64 can count");
  }
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte,
                   "nf4_dequantize: packed must be uint8, got ", packed.scalar_type());
  TORCH_CHECK_VALUE(packed.numel() == (n + 1) / 2, "nf4_dequantize: packed must hold (numel + 1) // 2 = ",
                    (n + 1) / 2, " bytes for shape ", shape, ", got ", packed.numel());
  const int64_t nblocks = ceil_div(n, blocksize);
  TORCH_CHECK_VALUE(absmax.numel() == nblocks, "nf4_dequantize: absmax must have ceil(numel / blocksize) = ",
                    nblocks, " elements, got ", absmax.numel());
  const bool nested = nested_absmax.has_value();
  TORCH_CHECK_VALUE(nested == nested_code.has_value() && nested == offset.has_value(),
                    "nf4_dequantize: nested_absmax, nested_code and offset must be given together "
                    "(double quantization) or not at all");
  TORCH_CHECK(packed.device() == absmax.device(), "nf4_dequantize: absmax must be on ", packed.device(),
              " like packed, got ", absmax.device());
  if (!nested) {
    TORCH_CHECK_TYPE(absmax.scalar_type() == at::kFloat,
                     "nf4_dequantize: absmax must be float32 without double quantization, got ",
                     absmax.scalar_type());
    return n;
  }
  TORCH_CHECK_TYPE(absmax.scalar_type() == at::kByte,
                   "nf4_dequantize: absmax must be uint8 codes with double quantization, got ",
                   absmax.scalar_type());
  TORCH_CHECK_VALUE(nested_blocksize >= 1, "nf4_dequantize: nested_blocksize must be positive, got ",
                    nested_blocksize);
  const int64_t nested_blocks = ceil_div(nblocks, nested_blocksize);
  TORCH_CHECK_TYPE(nested_absmax->scalar_type() == at::kFloat,
                   "nf4_dequantize: nested_absmax must be float32, got ", nested_absmax->scalar_type());
  TORCH_CHECK_VALUE(nested_absmax->numel() == nested_blocks,
                    "nf4_dequantize: nested_absmax must have ceil(blocks / nested_blocksize) = ",
                    nested_blocks, " elements, got ", nested_absmax->numel());
  TORCH_CHECK_TYPE(nested_code->scalar_type() == at::kFloat,
                   "nf4_dequantize: nested_code must be float32, got ", nested_code->scalar_type());
  TORCH_CHECK_VALUE(nested_code->numel() == 256, "nf4_dequantize: nested_code must have 256 elements, got ",
                    nested_code->numel());
  TORCH_CHECK_TYPE(offset->scalar_type() == at::kFloat,
                   "nf4_dequantize: offset must be float32, got ", offset->scalar_type());
  TORCH_CHECK_VALUE(offset->numel() == 1, "nf4_dequantize: offset must have one element, got ",
                    offset->numel());
  for (const at::Tensor* t : {&*nested_absmax, &*nested_code, &*offset})
    TORCH_CHECK(t->device() == packed.device(), "nf4_dequantize: every tensor must be on ", packed.device(),
                ", got one on ", t->device());
  return n;
}

}  // namespace loraops::nf4_detail
