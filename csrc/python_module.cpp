// The _C extension module. Importing it loads libloraops, whose static
// initializers register every op with the dispatcher (backend controls, such as
// the CPU's instruction-set switch, are ops too); it also exposes build facts.
// No tensors cross pybind11 here (ops go through torch.ops.loraops), so
// libtorch_python is not needed.
#include <pybind11/pybind11.h>

#include "loraops/loraops.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "loraops native extension: registers the torch.ops.loraops operators";
  m.def("build_info_json", &loraops::build_info_json,
        "Package version, torch version built against, compiled backends and their facts, as JSON.");
}
