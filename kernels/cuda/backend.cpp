// The CUDA backend's entry in build_info() (its kernels register per op, in nf4/ and lora/).
#include "csrc/build_info.h"

namespace {
const loraops::build_info::Backend kBackend("cuda");
}
