// NF4 CPU kernels behind raw pointers. No torch headers here: these files are
// compiled once per instruction set (scalar, AVX2, AVX-512) with their own flags.
#pragma once

#include <cstdint>

#include "../isa.h"

namespace loraops::cpu {

enum class FloatType : int { f32 = 0, bf16 = 1, f16 = 2 };


struct NF4QuantizeArgs {
  const void* input;  // n elements of `dtype`, contiguous
  FloatType dtype;
  int64_t n;
  int64_t blocksize;  // even, >= 32
  uint8_t* packed;    // (n + 1) / 2 bytes
  float* absmax;      // ceil(n / blocksize) floats
};

struct NF4DequantizeArgs {
  const uint8_t* packed;  // (n + 1) / 2 bytes
  int64_t n;
  int64_t blocksize;
  // Either plain fp32 absmax, or double-quantized absmax:
  //   absmax[b] = nested_code[absmax_codes[b]] * nested_absmax[b / nested_blocksize] + offset
  const float* absmax;
  const uint8_t* absmax_codes;
  const float* nested_absmax;
  const float* nested_code;  // 256 floats
  float offset;
  int64_t nested_blocksize;
  void* out;  // element e goes to out[e - out_first_element]; 64-byte aligned when stream_stores is set
  FloatType out_dtype;
  // First element written: lets a caller dequantize a range of blocks (a tile
  // of rows) into a buffer of just that size.
  int64_t out_first_element = 0;
  // Write with non-temporal stores: for outputs far larger than the caches, it
  // saves reading every destination line before overwriting it.
  bool stream_stores = false;
};

// Each processes blocks [block_begin, block_end). Quantize returns the number of
// non-finite inputs it met (the caller turns that into an error).
int64_t nf4_quantize_blocks(Isa isa, const NF4QuantizeArgs& args, int64_t block_begin, int64_t block_end);
void nf4_dequantize_blocks(Isa isa, const NF4DequantizeArgs& args, int64_t block_begin, int64_t block_end);

// Blockwise quantization to an arbitrary sorted code of `code_size` (<= 256) values
// (bitsandbytes' dynamic 8-bit map for double quantization): nearest code by
// midpoints, ties to the lower code. Returns the number of non-finite inputs.
int64_t quantize_to_code_blocks(const float* input, int64_t n, int64_t blocksize, const float* code,
                                int code_size, uint8_t* out, float* absmax, int64_t block_begin,
                                int64_t block_end);

// Per-ISA entry points (defined in nf4_scalar.cpp, nf4_avx2.cpp, nf4_avx512.cpp).
int64_t nf4_quantize_blocks_scalar(const NF4QuantizeArgs&, int64_t, int64_t);
int64_t nf4_quantize_blocks_avx2(const NF4QuantizeArgs&, int64_t, int64_t);
int64_t nf4_quantize_blocks_avx512(const NF4QuantizeArgs&, int64_t, int64_t);
void nf4_dequantize_blocks_scalar(const NF4DequantizeArgs&, int64_t, int64_t);
void nf4_dequantize_blocks_avx2(const NF4DequantizeArgs&, int64_t, int64_t);
void nf4_dequantize_blocks_avx512(const NF4DequantizeArgs&, int64_t, int64_t);

}  // namespace loraops::cpu
