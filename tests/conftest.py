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


CPU_BF16_NATIVE = loraops.build_info()["cpu_bf16_native"]


@pytest.fixture(params=[False, True], ids=["fp32-gemms", "bf16-gemms"])
def cpu_bf16(request):
    """Runs a test with the CPU LoRA ops' bf16 base GEMMs off, then on (where the
    CPU has native bf16)."""
    if request.param and not CPU_BF16_NATIVE:
        pytest.skip("this CPU has no native bf16 (AVX512_BF16 or AMX-BF16), so the bf16 base GEMMs stay off")
    previous = loraops.build_info()["cpu_bf16"]
    loraops.set_cpu_bf16(request.param)
    yield request.param
    loraops.set_cpu_bf16(previous)


def require_peer(module_name):
    """Import a peer library the tests compare against. CI sets
    LORAOPS_REQUIRE_PEERS=1, so a missing peer fails there instead of skipping."""
    if os.environ.get("LORAOPS_REQUIRE_PEERS") == "1":
        return __import__(module_name)
    return pytest.importorskip(module_name)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
