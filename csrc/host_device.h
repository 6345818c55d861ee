// LORAOPS_HOST_DEVICE marks the few functions that every backend compiles from
// one definition: the host compiler (CPU kernels, both emulators), nvcc (CUDA
// device code) and CANN's Ascend C compiler (AI core code). An Ascend C source
// includes kernel_operator.h, which defines __aicore__, before any header that
// uses this one.
#pragma once

#if defined(__CUDACC__)
#define LORAOPS_HOST_DEVICE __host__ __device__
#elif defined(__aicore__)
#define LORAOPS_HOST_DEVICE __aicore__
#else
#define LORAOPS_HOST_DEVICE
#endif
