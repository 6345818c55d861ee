#!/usr/bin/env bash
# One run on a CUDA machine: build loraops with its CUDA kernels, run the CUDA
# tests, benchmark against the peers and store the results under
# bench/results/<machine key, naming the card>/. Prints a short table last.
#
#   bash bench/gpu_check.sh            # from the repository root
#
# Peers that cannot be installed there (bitsandbytes) come as wheels in .whl/
# (see the device notes); they are installed into /tmp/site first.
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default: the
# card's own), JOBS (default: all cores).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-$(nproc)}
SITE=/tmp/loraops-gpu-site
status=0

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST
fi

echo "== build (CUDA arch $TORCH_CUDA_ARCH_LIST, $JOBS jobs)"
rm -rf "$SITE"
CMAKE_BUILD_PARALLEL_LEVEL=$JOBS "$PYTHON" -m pip install -q --no-build-isolation --no-deps --target "$SITE" \
  --config-settings=build-dir=build/gpu --config-settings=cmake.define.LORAOPS_CUDA=ON . || exit 1
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
"$PYTHON" -c "import loraops; print(loraops.build_info())" || exit 1

echo "== tests"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_nf4.py || status=1

echo "== benchmarks"
mkdir -p bench/results
for suite in "nf4 --peers" "lora --peers --qlora" "s2attn --peers"; do
  "$PYTHON" -m loraops.bench.cli $suite --device cuda --json bench/results > "/tmp/gpu-bench-${suite%% *}.txt" 2>&1 \
    || echo "($suite: some rows failed; see /tmp/gpu-bench-${suite%% *}.txt)"
done

echo "== summary"
for suite in nf4 lora s2attn; do
  echo "-- $suite"
  sed -n '/^op /,/^$/p' "/tmp/gpu-bench-$suite.txt" | head -40
done
exit $status
