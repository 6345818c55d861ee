// The CUDA LoRA kernels, compiled with the host compiler against the emulation.
#include "../lora/lora_cuda_kernels.cu"
