"""What a user installs: the wheel's metadata, the version every part reports,
the license and changelog, and the isolated build that must stop at once."""

import importlib.metadata as metadata
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

import loraops

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_requires_the_torch_release_it_was_built_against():
    release = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    torch_requirements = [r for r in metadata.requires("loraops") if re.match(r"torch\b", r)]
    assert torch_requirements == [f"torch=={release}.*"]


def test_one_version_everywhere():
    assert loraops.__version__ == metadata.version("loraops") == loraops.build_info()["version"]


def test_license_and_changelog():
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert metadata.metadata("loraops")["License"] == "Apache-2.0"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(loraops.__version__)}\b", changelog, re.M), "no section for this version"


def test_isolated_build_stops_at_once_saying_what_to_run(tmp_path):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", tmp_path,
                           ROOT], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "pip install --no-build-isolation ." in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert time.monotonic() - start < 120  # before CMake: no compile
