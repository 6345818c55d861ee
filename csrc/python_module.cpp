// The _C extension module. Importing it loads libloraops, whose static
// initializers register every op with the dispatcher; it also exposes build
// facts and the CPU instruction-set switch. No tensors cross pybind11 here
// (ops go through torch.ops.loraops), so libtorch_python is not needed.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "cpu/buffer_cache.h"
#include "cpu/nf4_kernels.h"
#include "loraops/loraops.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "loraops native extension: registers the torch.ops.loraops operators";
  m.def("build_info_json", &loraops::build_info_json,
        "Package version, torch version built against, compiled backends and CPU ISA, as JSON.");
  m.def("cpu_isa", [] { return std::string(loraops::cpu::isa_name(loraops::cpu::active_isa())); },
        "The instruction set the CPU kernels use now.");
  m.def(
      "set_cpu_isa",
      [](const std::string& name) {
        loraops::cpu::Isa isa;
        if (!loraops::cpu::isa_from_name(name.c_str(), &isa))
          throw py::value_error("isa must be one of 'scalar', 'avx2', 'avx512', got '" + name + "'");
        try {
          loraops::cpu::set_active_isa(isa);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("isa"), "Choose the instruction set of the CPU kernels (for tests and benchmarks).");
  m.def("empty_cpu_buffer_cache", &loraops::cpu::empty_buffer_cache,
        "Free the cached CPU output buffers; returns the bytes released.");
  m.def("cpu_buffer_cache_bytes", &loraops::cpu::buffer_cache_bytes,
        "Bytes of freed CPU output buffers kept for reuse.");
}
