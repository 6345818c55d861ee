// The CUDA runtime types that loraops' kernel launchers name, for the CPU
// emulation (cuda_sim.h): this header defines no macros, so op files that
// include torch may include it.
#pragma once

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;
