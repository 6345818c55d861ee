# Two entry points from a fresh clone: `make bench` and `make test`. Each
# creates the virtual environment, installs the CPU build of torch and the
# test/benchmark peers, builds loraops from source, then runs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PEERS ?= bitsandbytes==0.50.2 torchao==0.18.0 peft==0.21.2 transformers==5.24.0 matplotlib jsonschema==4.26.0
BENCH_ARGS ?= nf4 --quick --peers

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SOURCES := $(shell find csrc kernels cmake python -type f 2>/dev/null) CMakeLists.txt pyproject.toml

.PHONY: venv install test bench cuda-check ascend-check sanitize readme-install clean

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
	@echo "Building loraops from source: about 3 minutes on 2 cores from scratch, seconds when little changed"
	$(PIP) install -v --no-build-isolation --no-deps --config-settings=cmake.define.LORAOPS_ASCEND_SIM=ON \
		--config-settings=cmake.define.LORAOPS_CUDA_SIM=ON .
	touch $@

test: install
	LORAOPS_REQUIRE_PEERS=1 LORAOPS_REQUIRE_ASCEND_SIM=1 LORAOPS_REQUIRE_CUDA_SIM=1 $(PY) -m pytest -q tests

bench: install
	$(VENV)/bin/loraops-bench $(BENCH_ARGS)

# The Ascend backend checked without CANN or an NPU (tools/ascend/README.md): every
# kernel source type-checked by clang against the real Ascend C headers (asc-devkit:
# ASC_DEVKIT, else ../shared/asc-devkit; skipped with one line where neither is there,
# unless LORAOPS_REQUIRE_ASCEND_CHECK=1), and the host code (*_npu.cpp) compiled
# -fsyntax-only against torch_npu's headers (its wheel cached under build/ascend-check).
ascend-check: $(VENV)/.deps
	PY=$(PY) bash tools/ascend/check.sh

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
	@echo "Building loraops with CUDA (sm_80, sm_90): about 3 minutes on 2 cores from scratch"
	$(CUDA_PY) -m pip install -v --no-build-isolation --no-deps --config-settings=build-dir=build/cu \
		--config-settings=cmake.define.LORAOPS_CUDA=AUTO .
	touch $@

# The C++ under AddressSanitizer and UBSan (LORAOPS_SANITIZE=ON), with both CPU
# emulations as in `make install` and without CUDA, in its own venv and build dir,
# then the tests under it. SANITIZE_TESTS (paths): the bad-input suite first, then
# the whole suite, peers included (their tests drive our kernels with bitsandbytes'
# and peft's layouts). No subset is needed: on 2 cores the build takes 2-5 min and
# the tests 3.5-6 min (idle machine - busy one), so CI stays well within 30 min.
# Python is not instrumented, so libasan is preloaded, libstdc++ with it or ASan's
# __cxa_throw interceptor finds no real one and the first C++ throw aborts.
# ASan's reports go to files under SAN_LOGS, one per process (the bad-input suite
# keeps only the tail of a crashed child's stderr), printed at the end; anything
# there but SAN_EXPECTED fails the target. UBSan's go to stderr (GCC's libubsan
# ignores log_path beside libasan) and end in a SUMMARY line such a tail keeps.
SAN_VENV ?= .venv-sanitize
SAN_PY := $(SAN_VENV)/bin/python
SAN_CXX ?= g++
SAN_LOGS := $(CURDIR)/build/sanitize/reports
SANITIZE_TESTS ?= tests/test_bad_input.py tests
SAN_PRELOAD = $(shell $(SAN_CXX) -print-file-name=libasan.so) $(shell $(SAN_CXX) -print-file-name=libstdc++.so.6)
# detect_leaks=0: CPython and torch keep allocations until exit by design.
# detect_stack_use_after_return=0: fake frames do not follow swapcontext onto the CUDA sim's fiber stacks.
# allocator_may_return_null=1: an allocation too large fails as in production (torch raises), not as a report.
# abort_on_error=1: die by SIGABRT, so faulthandler prints the Python stack, naming the test.
# log_path: see above; also keeps the swapcontext warning, which no option turns off, out of the output.
ASAN_OPTS = detect_leaks=0:detect_stack_use_after_return=0:allocator_may_return_null=1:abort_on_error=1:log_path=$(SAN_LOGS)/report
# halt_on_error=1: undefined behaviour fails the run; print_stacktrace=1: with its call stack;
# print_summary=1, report_error_type=1: a last line with the kind and file:line; abort_on_error=1: as above.
UBSAN_OPTS = halt_on_error=1:print_stacktrace=1:print_summary=1:report_error_type=1:abort_on_error=1
# Expected in the logs: the fiber warning (once per process that runs the CUDA sim), and
# the line allocator_may_return_null=1 writes where an allocation fails and torch raises.
SAN_EXPECTED := -e "ASan doesn't fully support makecontext/swapcontext" -e "WARNING: AddressSanitizer failed to allocate"
# --capture=sys: pytest leaves fd 2 alone, so faulthandler's output is not lost when a report aborts a test.
sanitize: $(SAN_VENV)/.installed
	rm -rf $(SAN_LOGS) && mkdir -p $(SAN_LOGS)
	LD_PRELOAD="$(SAN_PRELOAD)" ASAN_OPTIONS="$(ASAN_OPTS)" UBSAN_OPTIONS="$(UBSAN_OPTS)" \
		LORAOPS_REQUIRE_PEERS=1 LORAOPS_REQUIRE_ASCEND_SIM=1 LORAOPS_REQUIRE_CUDA_SIM=1 \
		$(SAN_PY) -m pytest -q --capture=sys $(wildcard $(SANITIZE_TESTS)); rc=$$?; \
	if grep -v -h -F $(SAN_EXPECTED) $(SAN_LOGS)/* 2>/dev/null | grep -q .; then \
		echo "--- sanitizer reports ($(SAN_LOGS)):"; grep -v -h -F $(SAN_EXPECTED) $(SAN_LOGS)/*; exit 1; fi; \
	exit $$rc
$(SAN_VENV)/.deps:
	$(PYTHON) -m venv $(SAN_VENV)
	$(SAN_PY) -m pip install -q --upgrade pip
	$(SAN_PY) -m pip install -q "$(TORCH_SPEC)" numpy scipy pytest hypothesis $(PEERS) \
		"scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja
	touch $@
$(SAN_VENV)/.installed: $(SAN_VENV)/.deps $(SOURCES)
	@echo "Building loraops with AddressSanitizer and UBSan: about 3 minutes on 2 cores from scratch"
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(SAN_PY) -m pip install -v --no-build-isolation --no-deps \
		--config-settings=build-dir=build/sanitize --config-settings=cmake.define.LORAOPS_SANITIZE=ON \
		--config-settings=cmake.define.LORAOPS_CUDA=OFF --config-settings=cmake.define.LORAOPS_ASCEND_SIM=ON \
		--config-settings=cmake.define.LORAOPS_CUDA_SIM=ON .
	touch $@

# README's Install commands, verbatim, in a fresh venv (build/readme-venv).
readme-install:
	TORCH_SPEC="$(TORCH_SPEC)" bash .ci/readme-install

clean:
	rm -rf build $(VENV) $(CUDA_VENV) $(SAN_VENV)
