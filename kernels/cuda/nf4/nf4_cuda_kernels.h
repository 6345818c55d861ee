// Launchers of the CUDA NF4 kernels, behind raw pointers: the .cu file includes
// no torch headers, so nvcc compiles it in about a second per architecture.
#pragma once

#include <cstdint>

#include "../cuda_runtime_types.h"

namespace loraops::cuda {

enum class FloatKind : int { f32 = 0, bf16 = 1, f16 = 2 };

// An NF4 tensor in device memory, bitsandbytes' layout.
struct NF4WeightView {
  const uint8_t* packed;  // two codes per byte, the first in the high nibble
  int blocksize_shift;    // log2 of the (power-of-two) blocksize: element e is in block e >> blocksize_shift
  const float* absmax;          // fp32 per block, or null with double quantization
  const uint8_t* absmax_codes;  // uint8 per block with double quantization
  const float* nested_absmax;
  const float* nested_code;  // 256 floats
  const float* offset;       // one float, on the device
  int64_t nested_blocksize;
  int nested_shift;  // log2(nested_blocksize) when a power of two (bitsandbytes' 256), else -1
};

struct NF4DequantizeLaunch {
  NF4WeightView weight;
  int64_t n;  // elements; (n + 1) / 2 packed bytes
  void* out;
  FloatKind out_kind;
};

struct NF4QuantizeLaunch {
  const void* input;
  FloatKind input_kind;
  int64_t n;
  int64_t blocksize;
  uint8_t* packed;
  float* absmax;
  int* nonfinite;  // set to 1 when the input holds NaN or Inf
};

// Double quantization of centered absmax values: per group of group_size,
// nested_absmax = max |x| and codes = nearest of the 256 sorted code values by
// their midpoints `bounds` (+inf padded), ties to the lower code.
struct QuantizeToCodeLaunch {
  const float* input;
  int64_t n;
  int64_t group_size;
  const float* bounds;  // 256 floats
  uint8_t* codes;
  float* group_absmax;
};

void nf4_dequantize(const NF4DequantizeLaunch& a, cudaStream_t stream);
void nf4_quantize(const NF4QuantizeLaunch& a, cudaStream_t stream);
void quantize_to_code(const QuantizeToCodeLaunch& a, cudaStream_t stream);

}  // namespace loraops::cuda
