"""Loads the compiled extension, failing early and clearly on a torch mismatch."""

import torch

try:
    from . import _build_config
except ImportError as exc:  # running from a source tree that was never built
    raise ImportError(
        "loraops is not built: install it with "
        "`pip install --no-build-isolation .` from the source tree (torch must be installed first)"
    ) from exc


def _check_torch_version() -> None:
    built, running = _build_config.torch_version, torch.__version__
    if built != running:
        raise ImportError(
            f"loraops was built against torch {built}, but torch {running} is installed. "
            "A C++ extension only works with the torch it was compiled for; rebuild loraops "
            "for this torch: `pip install --no-build-isolation --no-deps --force-reinstall "
            "<path to the loraops source>`"
        )


_check_torch_version()

from . import _C  # noqa: E402
