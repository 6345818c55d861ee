// cudaStream_t for the raw-pointer kernel launchers: CUDA's own, or the CPU
// emulation's stand-in (LORAOPS_CUDA_SIM).
#pragma once

#if defined(LORAOPS_CUDA_SIM)
#include "sim/cuda_sim_types.h"
#else
#include <cuda_runtime_api.h>
#endif
