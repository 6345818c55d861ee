// loraops C++ API: NF4 quantization with double quantization, in the
// bitsandbytes layout. Works on every device loraops has kernels for (the call
// goes through the PyTorch dispatcher).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

namespace loraops::nf4 {

// A quantized tensor. `packed` holds (numel + 1) / 2 bytes, element 2j in the
// high nibble. Without double quantization `absmax` is fp32 per block; with it,
// `absmax` holds uint8 codes into `nested_code` (bitsandbytes' signed dynamic
// 8-bit map), scaled per `nested_blocksize` blocks by `nested_absmax`, plus `offset`.
struct NF4Tensor {
  at::Tensor packed;
  at::Tensor absmax;
  at::Tensor nested_absmax;  // undefined without double quantization
  at::Tensor nested_code;    // undefined without double quantization
  at::Tensor offset;         // 0-dim fp32; undefined without double quantization
  int64_t blocksize = 64;
  int64_t nested_blocksize = 256;
  std::vector<int64_t> shape;
  at::ScalarType dtype = at::kFloat;

  bool double_quant() const { return nested_absmax.defined(); }
};

// Quantize a float32/bfloat16/float16 tensor. blocksize: a power of two in [32, 4096].
NF4Tensor quantize(const at::Tensor& input, int64_t blocksize = 64, bool double_quant = true);

// Dequantize to `dtype` (default: the dtype the tensor was quantized from).
at::Tensor dequantize(const NF4Tensor& q, std::optional<at::ScalarType> dtype = std::nullopt);

// Dequantize into an existing tensor of the right shape (dtype taken from `out`).
at::Tensor& dequantize_out(const NF4Tensor& q, at::Tensor& out);

// bitsandbytes' signed dynamic 8-bit map (256 fp32 values), used for the absmax codes.
at::Tensor dynamic_code();

}  // namespace loraops::nf4
