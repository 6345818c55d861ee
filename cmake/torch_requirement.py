"""scikit-build-core metadata provider: the wheel's dependencies, with torch
pinned to the release it is built against (a C++ extension only imports with
that torch). torch must be importable at build time, so the build runs without
isolation; in an isolated build this stops at once with the command to run."""

import sys


def _torch_release() -> str:
    try:
        import torch
    except ImportError:
        sys.stderr.write(
            "loraops: torch is not importable in this build environment. loraops compiles against the torch "
            "it will run with: `pip install torch scikit-build-core pybind11 cmake ninja`, then "
            "`pip install --no-build-isolation .`\n"
        )
        raise SystemExit(1) from None
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return f"{major}.{minor}"


def dynamic_metadata(field, settings=None, project=None):
    if field != "dependencies":
        raise ValueError(f"torch_requirement provides 'dependencies', not {field!r}")
    return [f"torch=={_torch_release()}.*", "numpy"]
