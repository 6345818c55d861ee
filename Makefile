# Two entry points from a fresh clone: `make bench` and `make test`. Each
# creates the virtual environment, installs the CPU build of torch and the
# test/benchmark peers, builds loraops from source, then runs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PEERS ?= bitsandbytes==0.50.2 torchao==0.18.0 peft==0.21.2 transformers==5.24.0
BENCH_ARGS ?= nf4 --quick --peers

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SOURCES := $(shell find csrc kernels cmake python -type f 2>/dev/null) CMakeLists.txt pyproject.toml

.PHONY: venv install test bench cuda-check clean

venv: $(VENV)/.deps
$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" numpy scipy pytest hypothesis $(PEERS) \
		"scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja
	touch $@

# --no-build-isolation: build against the torch in this venv, not a fresh one.
# LORAOPS_ASCEND_SIM=ON and LORAOPS_CUDA_SIM=ON add the Ascend C and the CUDA
# kernels, compiled against their CPU emulations (kernels/ascend/sim,
# kernels/cuda/sim), as test-only ops.
install: $(VENV)/.installed
$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps --config-settings=cmake.define.LORAOPS_ASCEND_SIM=ON \
		--config-settings=cmake.define.LORAOPS_CUDA_SIM=ON .
	touch $@

test: install
	LORAOPS_REQUIRE_PEERS=1 LORAOPS_REQUIRE_ASCEND_SIM=1 LORAOPS_REQUIRE_CUDA_SIM=1 $(PY) -m pytest -q tests

bench: install
	$(VENV)/bin/loraops-bench $(BENCH_ARGS)

# The CUDA build, compile-checked against torch's CUDA wheel in its own venv and
# build dir: every .cu for sm_80 and sm_90. LORAOPS_CUDA=AUTO, as a user's build
# would be: the smoke check fails if AUTO did not find nvcc. On a machine without a GPU it checks
# that the build imports, lists "cuda" and that a CUDA call fails cleanly; with
# one it runs the CUDA tests.
CUDA_VENV ?= .venv-cu
TORCH_CUDA_SPEC ?= torch==2.14.1
CUDA_PY := $(CUDA_VENV)/bin/python
cuda-check: $(CUDA_VENV)/.installed
	$(CUDA_PY) tests/cuda_smoke.py
$(CUDA_VENV)/.deps:
	$(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install -q --upgrade pip
	$(CUDA_PY) -m pip install -q "$(TORCH_CUDA_SPEC)" numpy pytest hypothesis \
		"scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja
	touch $@
$(CUDA_VENV)/.installed: $(CUDA_VENV)/.deps $(SOURCES)
	$(CUDA_PY) -m pip install -q --no-build-isolation --no-deps --config-settings=build-dir=build/cu \
		--config-settings=cmake.define.LORAOPS_CUDA=AUTO .
	touch $@

clean:
	rm -rf build $(VENV) $(CUDA_VENV)
