// loraops C++ API: everything a C++ trainer links against.
#pragma once

#include <string>

#include <loraops/lora.h>
#include <loraops/nf4.h>
#include <loraops/s2attn.h>

namespace loraops {

// Package version, the torch it was built against, backends and CPU ISA, as JSON.
std::string build_info_json();

}  // namespace loraops
