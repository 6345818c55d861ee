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
}
