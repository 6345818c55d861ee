// The Ascend backend's entry in build_info() (its kernels register per op, in nf4/).
#include "csrc/build_info.h"

namespace {
const loraops::build_info::Backend kBackend("ascend");
}
