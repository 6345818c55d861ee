// The one place every loraops op schema is declared. Backends register kernels
// for these schemas in their own files (TORCH_LIBRARY_IMPL per dispatch key).
#include <torch/library.h>

TORCH_LIBRARY(loraops, m) {
  // NF4 (bitsandbytes layout). With double_quant the absmax comes back as uint8
  // codes plus nested_absmax (fp32, one per 256 blocks) and offset (0-dim fp32);
  // without it, absmax is fp32 and nested_absmax/offset are empty.
  m.def(
      "nf4_quantize(Tensor input, int blocksize, bool double_quant) -> "
      "(Tensor packed, Tensor absmax, Tensor nested_absmax, Tensor offset)");
  m.def(
      "nf4_dequantize(Tensor packed, Tensor absmax, Tensor? nested_absmax, Tensor? nested_code, "
      "Tensor? offset, int blocksize, int nested_blocksize, SymInt[] shape, ScalarType dtype) -> Tensor");
  // Writes into `out` (dtype and shape from it). Returns nothing, so that
  // torch.compile can functionalize it.
  m.def(
      "nf4_dequantize_into(Tensor packed, Tensor absmax, Tensor? nested_absmax, Tensor? nested_code, "
      "Tensor? offset, int blocksize, int nested_blocksize, Tensor(a!) out) -> ()");

  // LoRA matmul-plus-add: out = x W^T + bias + scale * (dropout(x) A^T) B^T.
  // Also returns xa = dropout(x) A^T (fp32, [rows, r]) for the backward. Dropout
  // keeps element i of x (flattened to [rows, in]) when hash(seed, i) clears p.
  m.def(
      "lora_linear(Tensor x, Tensor weight, Tensor? bias, Tensor lora_A, Tensor lora_B, float scale, "
      "float dropout, int seed) -> (Tensor out, Tensor xa)");
  // Gradients for (x, weight, bias, lora_A, lora_B) where needs_grad says so
  // (an empty tensor where not).
  m.def(
      "lora_linear_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor lora_A, "
      "Tensor lora_B, Tensor xa, float scale, float dropout, int seed, bool[5] needs_grad) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The same over an NF4 weight of shape [out, in], dequantized tile by tile.
  m.def(
      "lora_linear_nf4(Tensor x, Tensor packed, Tensor absmax, Tensor? nested_absmax, Tensor? nested_code, "
      "Tensor? offset, int blocksize, int nested_blocksize, int[2] weight_shape, Tensor? bias, Tensor lora_A, "
      "Tensor lora_B, float scale, float dropout, int seed) -> (Tensor out, Tensor xa)");
  m.def(
      "lora_linear_nf4_backward(Tensor grad_out, Tensor x, Tensor packed, Tensor absmax, Tensor? nested_absmax, "
      "Tensor? nested_code, Tensor? offset, int blocksize, int nested_blocksize, int[2] weight_shape, "
      "Tensor? bias, Tensor lora_A, Tensor lora_B, Tensor xa, float scale, float dropout, int seed, "
      "bool[4] needs_grad) -> (Tensor, Tensor, Tensor, Tensor)");

  // Shifted short attention (LongLoRA S2-Attn). q [B, N, H, D], k/v [B, N, Hkv, D];
  // mode "segments" or "roll"; seqlens [B] right-padded lengths or None; scale
  // None = 1/sqrt(D). Returns out [B, N, H, D] and the log-sum-exp [B, H, N]
  // (fp32) that the backward reads.
  m.def(
      "s2_attention(Tensor q, Tensor k, Tensor v, int group_size, str mode, bool causal, Tensor? seqlens, "
      "float? scale) -> (Tensor out, Tensor lse)");
  m.def(
      "s2_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, int group_size, "
      "str mode, bool causal, Tensor? seqlens, float? scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
}
