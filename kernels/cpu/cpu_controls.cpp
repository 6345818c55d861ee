// The CPU backend's entry in build_info() and its controls, as ops without
// tensors (torch.ops.loraops._cpu_isa, ...) that the Python API wraps:
// loraops.set_cpu_isa(), set_cpu_bf16(), empty_cpu_buffer_cache(),
// cpu_buffer_cache_bytes().
#include <torch/library.h>

#include <stdexcept>
#include <string>

#include "buffer_cache.h"
#include "csrc/build_info.h"
#include "isa.h"

namespace loraops::cpu {
namespace {

std::string quoted(const char* s) { return std::string("\"") + s + "\""; }

std::string compiled_isas_json() {
  std::string list = "[\"scalar\"";
#ifdef LORAOPS_HAVE_AVX2
  list += ", \"avx2\"";
#endif
#ifdef LORAOPS_HAVE_AVX512
  list += ", \"avx512\"";
#endif
  return list + "]";
}

const build_info::Backend kBackend("cpu");
const build_info::Fact kActiveIsa("cpu_isa", [] { return quoted(isa_name(active_isa())); });
const build_info::Fact kBestIsa("cpu_isa_best", [] { return quoted(isa_name(best_supported_isa())); });
const build_info::Fact kCompiledIsas("cpu_isa_compiled", compiled_isas_json);
const build_info::Fact kBf16("cpu_bf16", [] { return std::string(native_bf16_enabled() ? "true" : "false"); });
const build_info::Fact kBf16Native("cpu_bf16_native",
                                   [] { return std::string(cpu_has_native_bf16() ? "true" : "false"); });

std::string cpu_isa() { return isa_name(active_isa()); }

void set_cpu_isa(c10::string_view name) {
  const std::string wanted(name.data(), name.size());
  Isa isa;
  TORCH_CHECK_VALUE(isa_from_name(wanted.c_str(), &isa), "isa must be one of 'scalar', 'avx2', 'avx512', got '",
                    wanted, "'");
  try {
    set_active_isa(isa);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

void set_cpu_bf16(bool on) {
  try {
    set_native_bf16(on);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(loraops, m) {
  m.def("_cpu_isa() -> str", &cpu_isa);
  m.def("_set_cpu_isa(str isa) -> ()", &set_cpu_isa);
  m.def("_set_cpu_bf16(bool on) -> ()", &set_cpu_bf16);
  m.def("_empty_cpu_buffer_cache() -> int", &empty_buffer_cache);
  m.def("_cpu_buffer_cache_bytes() -> int", &buffer_cache_bytes);
}

}  // namespace loraops::cpu
