// Run-time choice of the instruction set for the CPU kernels.
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "isa.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

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

#if defined(__x86_64__) || defined(__i386__)
// XCR0: which register states the OS saves, i.e. lets programs use.
uint64_t enabled_xstate() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_OSXSAVE)) return 0;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
#endif

bool detect_native_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const unsigned max_subleaf = eax;
  // AMX-BF16 (leaf 7 EDX bit 22), usable when the OS saves the tile state
  // (XCR0 bits 17 and 18); oneDNN asks Linux for the tiles itself.
  const bool amx = (edx & (1u << 22)) && (enabled_xstate() & (3ull << 17)) == (3ull << 17);
  // AVX512_BF16 (leaf 7 subleaf 1 EAX bit 5); __builtin_cpu_supports checks
  // that the OS saves the AVX-512 state.
  bool avx512_bf16 = false;
  if (max_subleaf >= 1 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx))
    avx512_bf16 = (eax & (1u << 5)) && cpu_supports(Isa::avx512);
  return amx || avx512_bf16;
#else
  return false;
#endif
}

bool initial_native_bf16() {
  // Only "0" turns it off; other values are refused by the Python import check.
  const char* env = std::getenv("LORAOPS_CPU_BF16");
  return cpu_has_native_bf16() && !(env && std::strcmp(env, "0") == 0);
}

std::atomic<bool>& native_bf16_storage() {
  static std::atomic<bool> value{initial_native_bf16()};
  return value;
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

bool cpu_has_native_bf16() {
  static const bool has = detect_native_bf16();
  return has;
}

bool native_bf16_enabled() { return native_bf16_storage().load(std::memory_order_relaxed); }

void set_native_bf16(bool on) {
  if (on && !cpu_has_native_bf16())
    throw std::invalid_argument("native bf16 (AVX512_BF16 or AMX-BF16) is not supported by this CPU");
  native_bf16_storage().store(on, std::memory_order_relaxed);
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
