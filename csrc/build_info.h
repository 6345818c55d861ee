// What build_info_json() reports. Each backend announces itself, and any facts
// of its own, from a static object in its own files, so the core names no
// backend:
//   static const loraops::build_info::Backend kRegistered("cuda");
//   static const loraops::build_info::Fact kIsa("cpu_isa", [] { return std::string("\"avx2\""); });
#pragma once

#include <string>

namespace loraops::build_info {

struct Backend {
  explicit Backend(const char* name);
};

// json_value is called each time build_info_json() runs and returns a JSON value.
struct Fact {
  Fact(const char* key, std::string (*json_value)());
};

}  // namespace loraops::build_info
