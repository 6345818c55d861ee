"""Op registration: schemas, fake kernels (opcheck), torch.compile, build facts."""

import pytest
import torch

import loraops
from loraops import _build_config, _native


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_opcheck_nf4_quantize(double_quant, dtype):
    w = torch.randn(33, 40).to(dtype)
    torch.library.opcheck(torch.ops.loraops.nf4_quantize.default, (w, 64, double_quant))


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_opcheck_nf4_dequantize(double_quant, dtype):
    qw = loraops.nf4.quantize(torch.randn(33, 40), blocksize=32, double_quant=double_quant)
    args = (qw.packed, qw.absmax, qw.nested_absmax, qw.nested_code, qw.offset, 32, 256)
    torch.library.opcheck(torch.ops.loraops.nf4_dequantize.default, (*args, [33, 40], dtype))
    out = torch.empty(33, 40, dtype=dtype)
    torch.library.opcheck(torch.ops.loraops.nf4_dequantize_into.default, (*args, out))


def test_torch_compile_traces_dequantize():
    qw = loraops.nf4.quantize(torch.randn(48, 64), blocksize=64)
    x = torch.randn(5, 64)

    def layer(x, packed, absmax, nested_absmax, nested_code, offset):
        w = torch.ops.loraops.nf4_dequantize(packed, absmax, nested_absmax, nested_code, offset, 64, 256,
                                             [48, 64], torch.float32)
        return x @ w.t()

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    args = (x, qw.packed, qw.absmax, qw.nested_absmax, qw.nested_code, qw.offset)
    assert torch.equal(compiled(*args), layer(*args))


def test_build_info():
    info = loraops.build_info()
    assert info["version"] == loraops.__version__
    assert info["torch_version"] == torch.__version__
    assert "cpu" in info["backends"]
    assert info["cpu_isa"] in info["cpu_isa_compiled"]
    assert info["cpu_isa_best"] in info["cpu_isa_compiled"]


def test_set_cpu_isa_rejects_unknown():
    with pytest.raises(ValueError, match="isa must be one of"):
        loraops.set_cpu_isa("sse9")


def test_torch_mismatch_fails_with_rebuild_instructions(monkeypatch):
    monkeypatch.setattr(_build_config, "torch_version", "1.0.0+elsewhere")
    with pytest.raises(ImportError) as info:
        _native._check_torch_version()
    message = str(info.value)
    assert "1.0.0+elsewhere" in message and torch.__version__ in message
    assert "--no-build-isolation" in message


def test_cmake_prefix_path_has_the_package_config():
    import os

    config = os.path.join(loraops.cmake_prefix_path, "loraops", "loraopsConfig.cmake")
    assert os.path.isfile(config)
