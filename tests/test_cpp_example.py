"""Configure, build and run examples/cpp against the installed loraops, the way a
C++ trainer would: find_package(loraops) with loraops' and torch's CMake prefix paths."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import loraops

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "cpp"


def _tool(module: str, attr: str, name: str):
    """`name` from the pip package `module` of this interpreter, else from PATH."""
    try:
        mod = __import__(module)
        path = Path(getattr(mod, attr)) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    except (ImportError, AttributeError):
        pass
    return shutil.which(name)


def _cxx_compiler():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _run(cmd, env=None, timeout=600):
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited with {proc.returncode} after {elapsed:.1f}s\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    return proc


def test_cpp_example_nf4_roundtrip(tmp_path):
    cmake = _tool("cmake", "CMAKE_BIN_DIR", "cmake")
    if cmake is None:
        pytest.skip("cmake not found (pip install cmake, or put it on PATH)")
    cxx = _cxx_compiler()
    if cxx is None:
        pytest.skip("no C++ compiler found (set CXX, or install c++/g++/clang++)")

    build = tmp_path / "build"
    prefix_path = ";".join([loraops.cmake_prefix_path, torch.utils.cmake_prefix_path])
    configure = [cmake, "-S", EXAMPLE_DIR, "-B", build, f"-DCMAKE_PREFIX_PATH={prefix_path}",
                 f"-DCMAKE_CXX_COMPILER={cxx}", "-DCMAKE_BUILD_TYPE=Release"]
    ninja = _tool("ninja", "BIN_DIR", "ninja")
    if ninja is not None:
        configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    out = _run(configure).stdout

    # find_package(loraops) must point the imported target at the installed headers.
    include_dir = Path(loraops.__file__).resolve().parent / "include"
    line = next((l for l in out.splitlines() if "-- loraops " in l), None)
    assert line is not None, out
    assert line.endswith(f"include {include_dir}"), line
    assert f"loraops {loraops.__version__} " in line, line

    _run([cmake, "--build", build])

    # The executable must find libloraops.so and torch's libraries via its RUNPATH.
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    exe = build / ("nf4_roundtrip.exe" if sys.platform == "win32" else "nf4_roundtrip")
    proc = _run([exe], env=env, timeout=120)
    lines = proc.stdout.splitlines()

    assert lines[0].startswith("build_info: "), proc.stdout
    info = json.loads(lines[0][len("build_info: "):])
    expected = loraops.build_info()
    for key in ("version", "torch_version", "backends", "cpu_isa_best", "cpu_isa_compiled"):
        assert info[key] == expected[key], (key, info, expected)

    # The README's expected output, line for line, numbers aside.
    expected_lines = _readme_expected_output()
    assert len(lines) == len(expected_lines), (proc.stdout, expected_lines)
    for got, want in zip(lines[1:], expected_lines[1:]):
        assert re.fullmatch(_with_any_numbers(want), got), (got, want)


def _readme_expected_output() -> list:
    readme = (EXAMPLE_DIR / "README.md").read_text()
    block = re.search(r"Expected output.*?```\n(.*?)```", readme, re.S)
    assert block is not None, "examples/cpp/README.md has no expected-output block"
    return block.group(1).splitlines()


def _with_any_numbers(line: str) -> str:
    """A regex for `line` in which every number may be any number."""
    number = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
    return number.join(re.escape(part) for part in re.split(number, line))
