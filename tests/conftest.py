import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import loraops

# Small examples, many of them, no deadline: a 2-core CI machine has noisy timing.
settings.register_profile(
    "default", max_examples=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

COMPILED_ISAS = loraops.build_info()["cpu_isa_compiled"]


def _supported(isa):
    previous = loraops.build_info()["cpu_isa"]
    try:
        loraops.set_cpu_isa(isa)
        return True
    except ValueError:
        return False
    finally:
        loraops.set_cpu_isa(previous)


CPU_ISAS = [isa for isa in COMPILED_ISAS if _supported(isa)]


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request):
    """Runs a test once per instruction set this CPU supports."""
    previous = loraops.build_info()["cpu_isa"]
    loraops.set_cpu_isa(request.param)
    yield request.param
    loraops.set_cpu_isa(previous)


def require_peer(module_name):
    """Import a peer library the tests compare against. CI sets
    LORAOPS_REQUIRE_PEERS=1, so a missing peer fails there instead of skipping."""
    if os.environ.get("LORAOPS_REQUIRE_PEERS") == "1":
        return __import__(module_name)
    return pytest.importorskip(module_name)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
