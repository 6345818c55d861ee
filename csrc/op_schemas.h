// The argument lists of loraops' NF4, LoRA and S2-Attn op schemas: registration.cpp
// declares the ops with them, and the CUDA emulation's test ops
// (kernels/cuda/sim/ops.cpp) reuse them under their own names.
#pragma once

#define LORAOPS_NF4_QUANTIZE_SIGNATURE \
  "(Tensor input, int blocksize, bool double_quant) -> "   \
  "(Tensor packed, Tensor absmax, Tensor nested_absmax, Tensor offset)"
#define LORAOPS_NF4_DEQUANTIZE_SIGNATURE                                                \
  "(Tensor packed, Tensor absmax, Tensor? nested_absmax, Tensor? nested_code, "         \
  "Tensor? offset, int blocksize, int nested_blocksize, SymInt[] shape, ScalarType dtype) -> Tensor"
#define LORAOPS_NF4_DEQUANTIZE_INTO_SIGNATURE                                   \
  "(Tensor packed, Tensor absmax, Tensor? nested_absmax, Tensor? nested_code, " \
  "Tensor? offset, int blocksize, int nested_blocksize, Tensor(a!) out) -> ()"
#define LORAOPS_LORA_LINEAR_SIGNATURE                                                   \
  "(Tensor x, Tensor weight, Tensor? bias, Tensor lora_A, Tensor lora_B, float scale, " \
  "float dropout, int seed) -> (Tensor out, Tensor xa)"
#define LORAOPS_LORA_LINEAR_BACKWARD_SIGNATURE                                            \
  "(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor lora_A, "              \
  "Tensor lora_B, Tensor xa, float scale, float dropout, int seed, bool[5] needs_grad) -> " \
  "(Tensor, Tensor, Tensor, Tensor, Tensor)"
#define LORAOPS_LORA_LINEAR_NF4_SIGNATURE                                                                     \
  "(Tensor x, Tensor packed, Tensor absmax, Tensor? nested_absmax, Tensor? nested_code, "                     \
  "Tensor? offset, int blocksize, int nested_blocksize, int[2] weight_shape, Tensor? bias, Tensor lora_A, " \
  "Tensor lora_B, float scale, float dropout, int seed) -> (Tensor out, Tensor xa)"
#define LORAOPS_LORA_LINEAR_NF4_BACKWARD_SIGNATURE                                          \
  "(Tensor grad_out, Tensor x, Tensor packed, Tensor absmax, Tensor? nested_absmax, "       \
  "Tensor? nested_code, Tensor? offset, int blocksize, int nested_blocksize, int[2] weight_shape, " \
  "Tensor? bias, Tensor lora_A, Tensor lora_B, Tensor xa, float scale, float dropout, int seed, " \
  "bool[4] needs_grad) -> (Tensor, Tensor, Tensor, Tensor)"

#define LORAOPS_S2_ATTENTION_SIGNATURE                                                            \
  "(Tensor q, Tensor k, Tensor v, int group_size, str mode, bool causal, Tensor? seqlens, "      \
  "float? scale) -> (Tensor out, Tensor lse)"
#define LORAOPS_S2_ATTENTION_BACKWARD_SIGNATURE                                                   \
  "(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int group_size, "     \
  "str mode, bool causal, Tensor? seqlens, float? scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)"
