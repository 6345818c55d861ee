// The emulation's self-test kernels (selftest_kernels.cpp), for _cuda_sim_selftest.
#pragma once

#include <string>

namespace loraops::cuda_sim {

// "none", "shuffle_after_exit", "barrier_and_shuffle", "missing_barrier",
// "mismatched_masks" or "bad_launch"; a fault surfaces as CudaSimError.
void run_selftest(const std::string& fault);

}  // namespace loraops::cuda_sim
