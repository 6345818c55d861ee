// The one place every loraops op schema is declared. Backends register kernels
// for these schemas in their own files (TORCH_LIBRARY_IMPL per dispatch key).
#include <torch/library.h>

#include "op_schemas.h"

TORCH_LIBRARY(loraops, m) {
  // NF4 (bitsandbytes layout). With double_quant the absmax comes back as uint8
  // codes plus nested_absmax (fp32, one per 256 blocks) and offset (0-dim fp32);
  // without it, absmax is fp32 and nested_absmax/offset are empty.
  m.def("nf4_quantize" LORAOPS_NF4_QUANTIZE_SIGNATURE);
  m.def("nf4_dequantize" LORAOPS_NF4_DEQUANTIZE_SIGNATURE);
  // Writes into `out` (dtype and shape from it). Returns nothing, so that
  // torch.compile can functionalize it.
  m.def("nf4_dequantize_into" LORAOPS_NF4_DEQUANTIZE_INTO_SIGNATURE);

  // LoRA matmul-plus-add: out = x W^T + bias + scale * (dropout(x) A^T) B^T.
  // Also returns xa = dropout(x) A^T (fp32, [rows, r]) for the backward. Dropout
  // keeps element i of x (flattened to [rows, in]) when hash(seed, i) clears p.
  m.def("lora_linear" LORAOPS_LORA_LINEAR_SIGNATURE);
  // Gradients for (x, weight, bias, lora_A, lora_B) where needs_grad says so
  // (an empty tensor where not).
  m.def("lora_linear_backward" LORAOPS_LORA_LINEAR_BACKWARD_SIGNATURE);
  // The same over an NF4 weight of shape [out, in], dequantized tile by tile.
  m.def("lora_linear_nf4" LORAOPS_LORA_LINEAR_NF4_SIGNATURE);
  m.def("lora_linear_nf4_backward" LORAOPS_LORA_LINEAR_NF4_BACKWARD_SIGNATURE);

  // Shifted short attention (LongLoRA S2-Attn). q [B, N, H, D], k/v [B, N, Hkv, D];
  // mode "segments" or "roll"; seqlens [B] right-padded lengths or None; scale
  // None = 1/sqrt(D). Returns out [B, N, H, D] and the log-sum-exp [B, H, N]
  // (fp32) that the backward reads.
  m.def("s2_attention" LORAOPS_S2_ATTENTION_SIGNATURE);
  m.def("s2_attention_backward" LORAOPS_S2_ATTENTION_BACKWARD_SIGNATURE);
}
