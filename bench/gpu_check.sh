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
# card's own), JOBS (default: all cores), SANITIZE=1 (also run the kernel tests
# under compute-sanitizer's memcheck and racecheck).
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
# SANITIZE=1: the kernel tests once more under compute-sanitizer (out-of-bounds
# and misaligned accesses; shared-memory races), a few minutes more.
if [ "${SANITIZE:-0}" = 1 ]; then
  for tool in memcheck racecheck; do
    echo "== compute-sanitizer --tool $tool"
    compute-sanitizer --tool "$tool" --error-exitcode 9 "$PYTHON" -m pytest -q -p no:cacheprovider -x \
      tests/test_cuda.py -k "not sim and (tile or misaligned or midpoint or dropout or refuses)" || status=1
  done
fi

echo "== benchmarks"
mkdir -p bench/results
# The shapes and token counts of the GPU targets (../TARGETS.md's H200/H100 rows):
# NF4 up to 28672x8192, LoRA/QLoRA over 8192 tokens in bf16, QLoRA decoding one token.
runs=(
  "nf4:nf4 --peers --shapes 4096x4096,11008x4096,28672x8192 --dtype bf16"
  "lora:lora --peers --qlora --shapes 4096x4096,11008x4096 --tokens 1x8192 --dtype bf16 --dropout 0"
  "decode:lora --peers --qlora --shapes 4096x4096 --tokens 1 --dtype bf16 --dropout 0"
  "s2attn:s2attn --peers"
)
for run in "${runs[@]}"; do
  name=${run%%:*}
  "$PYTHON" -m loraops.bench.cli ${run#*:} --device cuda --json bench/results > "/tmp/gpu-bench-$name.txt" 2>&1 \
    || echo "($name: some rows failed; see /tmp/gpu-bench-$name.txt)"
done
# On the lent machine, $OUT is what comes back.
if [ -n "${OUT:-}" ]; then
  cp -r bench/results /tmp/gpu-bench-*.txt "$OUT"/ 2>/dev/null
fi

echo "== summary"
for run in "${runs[@]}"; do
  name=${run%%:*}
  echo "-- $name"
  sed -n '/^op /,/^$/p' "/tmp/gpu-bench-$name.txt" | head -40
done
exit $status
