// The on-chip memories of one Atlas A2 AI core as the emulation models them:
// which TPosition lives in which memory, each memory's capacity and the
// alignment its instructions need, and the arena a core allocates from.
// Included by kernel_operator.h; written from the public documentation
// (Ascend C API fact sheet, sections 2 and 8).
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>

namespace AscendC {

enum class TPosition : uint8_t {
  GM, A1, A2, B1, B2, C1, C2, CO1, CO2, VECIN, VECOUT, VECCALC, LCM = VECCALC, SPM, SHM = SPM, TSCM,
  C2PIPE2GM, C2PIPE2LOCAL, MAX
};
using QuePosition = TPosition;

// The values kernels compare g_coreType with (ASCEND_IS_AIC / ASCEND_IS_AIV).
constexpr int32_t AIC = 1;
constexpr int32_t AIV = 2;

namespace sim {

enum class Memory : uint8_t { kUb, kL1, kL0A, kL0B, kL0C, kBiasTable, kCount, kNone = kCount };

struct MemorySpec {
  const char* name;
  uint32_t bytes;
  uint32_t align;     // bytes; every instruction operand starts on such a boundary
  int32_t core_type;  // the core that has this memory: AIV (UB) or AIC (the rest)
};

inline const MemorySpec& spec(Memory m) {
  static constexpr MemorySpec kSpecs[] = {
      {"Unified Buffer", 196608, 32, AIV}, {"L1", 524288, 32, AIC},  {"L0A", 65536, 512, AIC},
      {"L0B", 65536, 512, AIC},            {"L0C", 131072, 64, AIC}, {"BiasTable", 1024, 64, AIC},
  };
  return kSpecs[static_cast<int>(m)];
}

constexpr Memory memory_of(TPosition p) {
  switch (p) {
    case TPosition::VECIN: case TPosition::VECOUT: case TPosition::VECCALC: return Memory::kUb;
    case TPosition::A1: case TPosition::B1: case TPosition::C1: case TPosition::TSCM: return Memory::kL1;
    case TPosition::A2: return Memory::kL0A;
    case TPosition::B2: return Memory::kL0B;
    case TPosition::CO1: return Memory::kL0C;
    case TPosition::C2: return Memory::kBiasTable;
    default: return Memory::kNone;
  }
}

// One memory of one core: filled from the bottom by TPipe::InitBuffer. The
// storage is made on first use (a vector core never touches L1) and filled
// with a recognisable pattern, since none of these memories is zeroed.
struct Arena {
  std::unique_ptr<uint8_t[]> storage;
  uint8_t* base = nullptr;
  uint32_t used = 0;

  uint8_t* ensure(Memory m) {
    if (base == nullptr) {
      const uint32_t bytes = spec(m).bytes;
      storage.reset(new uint8_t[bytes + 512]);
      const auto address = reinterpret_cast<uintptr_t>(storage.get());
      base = storage.get() + (512 - address % 512) % 512;  // 512 covers every memory's alignment
      std::memset(base, 0xA5, bytes);
    }
    return base;
  }
  bool holds(const uint8_t* p, uint64_t bytes) const { return base && p >= base && p + bytes <= base + used; }
};

}  // namespace sim
}  // namespace AscendC
