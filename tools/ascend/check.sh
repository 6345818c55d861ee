#!/usr/bin/env bash
# The Ascend backend checked without CANN or an NPU (tools/ascend/README.md):
#  1. kernels: every Ascend C kernel source under kernels/ascend (sim/ aside) type-checked by clang
#     against the real Ascend C API headers (asc-devkit), as a vector, cube or MIX kernel as the
#     source says (tools/ascend/typecheck);
#  2. host: every host source there (the PrivateUse1 registrations and launches, *_npu.cpp) compiled
#     with g++ -fsyntax-only against torch's and torch_npu's own headers, with the aclrtlaunch_*.h
#     headers CANN would generate written from the kernels' definitions.
# usage: tools/ascend/check.sh    (from `make ascend-check`, which makes the venv first)
# env: PY             python of a venv with the CPU torch (default .venv/bin/python)
#      ASC_DEVKIT     asc-devkit checkout (default ../shared/asc-devkit beside the repo, if there)
#      CLANGXX        clang++ for part 1 (default clang++-14, else clang++)
#      LORAOPS_REQUIRE_ASCEND_CHECK=1   no headers or no clang fails instead of skipping part 1
#      TORCH_NPU_VERSION  the torch_npu wheel whose headers part 2 uses (default 2.13.0)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
here=tools/ascend
out=build/ascend-check
PY=${PY:-.venv/bin/python}
TORCH_NPU_VERSION=${TORCH_NPU_VERSION:-2.13.0}
require=${LORAOPS_REQUIRE_ASCEND_CHECK:-0}

list=$(python3 "$here/sources.py" list kernels/ascend) || exit 1
mapfile -t kernels < <(awk '$1 == "kernel" {print $3}' <<<"$list")
mapfile -t hosts < <(awk '$1 == "host" {print $2}' <<<"$list")
status=0
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

# ---- 1. kernels
start=$(now)
devkit=${ASC_DEVKIT:-../shared/asc-devkit}
clang=${CLANGXX:-$(command -v clang++-14 || command -v clang++)}
why=""
[ -f "$devkit/include/kernel_operator.h" ] ||
  why="no asc-devkit headers at $devkit (set ASC_DEVKIT to a checkout of CANN's asc-devkit)"
[ -n "$why" ] || command -v "$clang" >/dev/null || why="no clang++ (apt-get install clang-14)"
if [ -n "$why" ] && [ "$require" = 1 ]; then
  echo "ascend-check: kernels: FAILED: $why, and LORAOPS_REQUIRE_ASCEND_CHECK=1"
  status=1
elif [ -n "$why" ]; then
  echo "ascend-check: kernels: skipped: $why"
else
  failed=""
  while read -r _ mode src; do
    [ "$mode" = --vec ] && mode=""  # typecheck.sh's default
    ASC_DEVKIT=$devkit CXX=$clang bash "$here/typecheck/typecheck.sh" ${mode:+"$mode"} "$src" ||
      failed="$failed $src"
  done < <(grep '^kernel ' <<<"$list")
  n=${#kernels[@]}
  if [ -n "$failed" ]; then
    echo "ascend-check: kernels: FAILED:$failed ($n checked against $devkit, $(took "$start"))"
    status=1
  else
    echo "ascend-check: kernels: $n sources type-check against $devkit, 0 errors ($(took "$start"))"
  fi
fi

# ---- 2. host
start=$(now)
# The wheel is kept (43 MB, downloaded once); its headers are unpacked afresh each run. Importing
# torch_npu needs CANN; its headers do not.
mkdir -p "$out/wheels"
wheels=("$out"/wheels/torch_npu-"$TORCH_NPU_VERSION"-*.whl)
if [ ! -f "${wheels[0]}" ]; then
  "$PY" -m pip download -q --no-deps -d "$out/wheels" "torch_npu==$TORCH_NPU_VERSION" || {
    echo "ascend-check: host: FAILED: cannot download torch_npu==$TORCH_NPU_VERSION from PyPI"; exit 1; }
  wheels=("$out"/wheels/torch_npu-"$TORCH_NPU_VERSION"-*.whl)
fi
rm -rf "$out/torch_npu" "$out/aclrtlaunch"
nlaunch=$(python3 "$here/sources.py" launch-headers "$out/aclrtlaunch" "${kernels[@]}") || exit 1
# One interpreter start (importing torch takes seconds): unpack torch_npu's include/, print torch's
# version and include dirs.
info=$("$PY" - "${wheels[0]}" "$out" <<'PY'
import sys, zipfile
import torch
from torch.utils.cpp_extension import include_paths
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("torch_npu/include/")])
print(torch.__version__, *include_paths(), sep="\n")
PY
) || { echo "ascend-check: host: FAILED: no torch in $PY (make venv) or a bad wheel ${wheels[0]}"; exit 1; }
mapfile -t info <<<"$info"
torch_version=${info[0]}
inc=()
for d in "${info[@]:1}"; do inc+=(-isystem "$d"); done
# torch_npu's own extension flags (torch_npu/utils/cpp_extension.py); its include/ also carries the ACL
# headers a CANN install has under $ASCEND_HOME_PATH/include.
inc+=(-isystem "$out/torch_npu/include" -isystem "$out/torch_npu/include/third_party/hccl/inc")
# As kernels/ascend/CMakeLists.txt builds the loraops target: C++20, the repo root and csrc/include,
# the generated launch headers, LORAOPS_WITH_ASCEND, the project's warnings (errors alone fail).
flags=(-std=c++20 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -DLORAOPS_WITH_ASCEND
       -I. -Icsrc/include -I"$out/aclrtlaunch")
failed=""
for src in "${hosts[@]}"; do
  g++ "${flags[@]}" "${inc[@]}" "$src" || failed="$failed $src"
done
n=${#hosts[@]}
what="torch $torch_version + torch_npu $TORCH_NPU_VERSION headers, $nlaunch aclrtlaunch stand-ins"
if [ -n "$failed" ]; then
  echo "ascend-check: host: FAILED:$failed ($n compiled with $what, $(took "$start"))"
  status=1
else
  echo "ascend-check: host: $n sources compile with $what, 0 errors ($(took "$start"))"
fi
exit $status
