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

.PHONY: venv install test bench clean

venv: $(VENV)/.deps
$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" numpy scipy pytest hypothesis $(PEERS) \
		"scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja
	touch $@

# --no-build-isolation: build against the torch in this venv, not a fresh one.
# LORAOPS_ASCEND_SIM=ON adds the Ascend C kernels, compiled against the CPU
# emulation in kernels/ascend/sim, as test-only ops.
install: $(VENV)/.installed
$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(PIP) install -q --no-build-isolation --no-deps --config-settings=cmake.define.LORAOPS_ASCEND_SIM=ON .
	touch $@

test: install
	LORAOPS_REQUIRE_PEERS=1 LORAOPS_REQUIRE_ASCEND_SIM=1 $(PY) -m pytest -q tests

bench: install
	$(VENV)/bin/loraops-bench $(BENCH_ARGS)

clean:
	rm -rf build $(VENV)
