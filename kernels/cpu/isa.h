// The instruction sets the CPU kernels are compiled for, and the run-time
// choice among them. No torch headers: kernel files include this.
#pragma once

namespace loraops::cpu {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

// Instruction-set selection: the best the CPU supports, unless LORAOPS_CPU_ISA
// (scalar | avx2 | avx512) asks for a lower one.
Isa best_supported_isa();
Isa active_isa();
void set_active_isa(Isa isa);  // throws std::invalid_argument if unsupported
const char* isa_name(Isa isa);
bool isa_from_name(const char* name, Isa* isa);

// Native bf16 arithmetic (AVX512_BF16 or AMX-BF16): where the CPU has it, the
// LoRA kernels run the base GEMMs of bf16 inputs in bf16 (torch's oneDNN GEMM,
// fp32 accumulation) instead of widening them to fp32; without it torch's bf16
// GEMM is emulated and slower than fp32. On by default where supported;
// LORAOPS_CPU_BF16=0 turns it off at start-up.
bool cpu_has_native_bf16();
bool native_bf16_enabled();
void set_native_bf16(bool on);  // throws std::invalid_argument if on and unsupported

}  // namespace loraops::cpu
