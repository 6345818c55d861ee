"""The source tree keeps one definition of each format-defining number: every
backend (CPU, CUDA, Ascend C, both emulators) compiles csrc/nf4/nf4_format.h and
csrc/lora/dropout_hash.h instead of a copy."""

import pathlib

import pytest

from loraops import nf4_reference

ROOT = pathlib.Path(__file__).resolve().parent.parent
NATIVE_SOURCES = [p for d in ("csrc", "kernels") for p in (ROOT / d).rglob("*")
                  if p.suffix in {".h", ".cpp", ".cu", ".cuh"}]


def code_of(path):
    """The file without its // comments (which may quote a constant)."""
    return "\n".join(line.split("//", 1)[0] for line in path.read_text().splitlines())


def files_containing(text):
    return sorted(str(p.relative_to(ROOT)) for p in NATIVE_SOURCES if text in code_of(p))


@pytest.mark.skipif(not (ROOT / "csrc").is_dir(), reason="needs the source tree")
@pytest.mark.parametrize("literal", [
    *(repr(float(v)) for v in nf4_reference.NF4_CODE.tolist() if v not in (-1.0, 0.0, 1.0)),
    "1e-38",       # the absmax clamp
    "0x7feb352d",  # the dropout hash's multipliers
    "0x846ca68b",
])
def test_each_format_constant_is_defined_once(literal):
    assert files_containing(literal) in (["csrc/lora/dropout_hash.h"], ["csrc/nf4/nf4_format.h"])
