// The NF4 kernels' entry points: the variant of the active instruction set.
#include "nf4_kernels.h"

namespace loraops::cpu {

int64_t nf4_quantize_blocks(Isa isa, const NF4QuantizeArgs& args, int64_t b0, int64_t b1) {
  switch (isa) {
#if defined(LORAOPS_HAVE_AVX512)
    case Isa::avx512: return nf4_quantize_blocks_avx512(args, b0, b1);
#endif
#if defined(LORAOPS_HAVE_AVX2)
    case Isa::avx2: return nf4_quantize_blocks_avx2(args, b0, b1);
#endif
    default: return nf4_quantize_blocks_scalar(args, b0, b1);
  }
}

void nf4_dequantize_blocks(Isa isa, const NF4DequantizeArgs& args, int64_t b0, int64_t b1) {
  switch (isa) {
#if defined(LORAOPS_HAVE_AVX512)
    case Isa::avx512: return nf4_dequantize_blocks_avx512(args, b0, b1);
#endif
#if defined(LORAOPS_HAVE_AVX2)
    case Isa::avx2: return nf4_dequantize_blocks_avx2(args, b0, b1);
#endif
    default: return nf4_dequantize_blocks_scalar(args, b0, b1);
  }
}

}  // namespace loraops::cpu
