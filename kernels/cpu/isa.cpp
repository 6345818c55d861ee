// Run-time choice of the instruction set for the CPU kernels.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "isa.h"

namespace loraops::cpu {

namespace {

bool cpu_supports(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  switch (isa) {
    case Isa::scalar: return true;
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
#else
  return isa == Isa::scalar;
#endif
}

Isa initial_isa() {
  Isa best = best_supported_isa();
  if (const char* env = std::getenv("LORAOPS_CPU_ISA")) {
    Isa wanted;
    // An unknown or unsupported request falls back to the best supported set
    // rather than failing at import; set_active_isa reports errors explicitly.
    if (isa_from_name(env, &wanted) && cpu_supports(wanted)) return wanted;
  }
  return best;
}

std::atomic<int>& active_isa_storage() {
  static std::atomic<int> value{static_cast<int>(initial_isa())};
  return value;
}

}  // namespace

Isa best_supported_isa() {
#if defined(LORAOPS_HAVE_AVX512)
  if (cpu_supports(Isa::avx512)) return Isa::avx512;
#endif
#if defined(LORAOPS_HAVE_AVX2)
  if (cpu_supports(Isa::avx2)) return Isa::avx2;
#endif
  return Isa::scalar;
}

Isa active_isa() { return static_cast<Isa>(active_isa_storage().load(std::memory_order_relaxed)); }

void set_active_isa(Isa isa) {
  const bool compiled = isa == Isa::scalar
#if defined(LORAOPS_HAVE_AVX2)
                        || isa == Isa::avx2
#endif
#if defined(LORAOPS_HAVE_AVX512)
                        || isa == Isa::avx512
#endif
      ;
  if (!compiled || !cpu_supports(isa))
    throw std::invalid_argument(std::string("instruction set '") + isa_name(isa) +
                                "' is not supported by this CPU or this build");
  active_isa_storage().store(static_cast<int>(isa), std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    default: return "scalar";
  }
}

bool isa_from_name(const char* name, Isa* isa) {
  for (Isa candidate : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (std::strcmp(name, isa_name(candidate)) == 0) {
      *isa = candidate;
      return true;
    }
  }
  return false;
}

}  // namespace loraops::cpu
