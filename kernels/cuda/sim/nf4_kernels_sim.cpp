// The CUDA NF4 kernels, compiled with the host compiler against the emulation.
#include "../nf4/nf4_cuda_kernels.cu"
