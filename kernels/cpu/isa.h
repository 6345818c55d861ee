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

}  // namespace loraops::cpu
