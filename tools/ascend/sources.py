#!/usr/bin/env python3
"""The Ascend sources of the tree, for tools/ascend/check.sh.

  sources.py list [ROOT]           one line per .cpp under ROOT (default kernels/ascend), sim/ left out:
                                   "kernel --vec|--cube|--mix FILE" or "host FILE"
  sources.py launch-headers OUTDIR KERNEL.cpp...
                                   writes aclrtlaunch_<kernel>.h for every kernel entry point the sources define

Exit status 1, with a message naming the file, for anything it cannot place, so that a new source is
never skipped in silence.
"""
import os
import re
import subprocess
import sys
import tempfile

# A host translation unit includes torch, ACL or the core by its project path ("csrc/..."): the CANN
# kernel build has neither on its include path (it reaches the core by a relative path).
HOST_INCLUDE = re.compile(r'#\s*include\s*[<"](torch|ATen|c10|torch_npu|acl|pybind11|csrc)/', re.M)
LOCAL_INCLUDE = re.compile(r'#\s*include\s*"([^"]+)"')
# The core type, as the hooks' kernel-sources.sh reads it (MIX before cube before vector), but never guessed.
MODES = [("--mix", r"KERNEL_TYPE_MIX|__mix__"),
         ("--cube", r"KERNEL_TYPE_AIC_ONLY|__cube__|ASCENDC_CUBE_ONLY"),
         ("--vec", r"KERNEL_TYPE_AIV_ONLY|__vector__")]
OTHER_SOURCES = (".asc", ".cc", ".cxx", ".c")


def fail(msg):
    print(f"ascend-check: {msg}", file=sys.stderr)
    sys.exit(1)


def text_with_local_headers(path):
    """The file and every header it reaches through #include "..." beside the including file."""
    seen, todo, parts = set(), [os.path.normpath(path)], []
    while todo:
        f = todo.pop()
        if f in seen or not os.path.isfile(f):
            continue  # a CANN or system header
        seen.add(f)
        with open(f, encoding="utf-8") as fh:
            parts.append(fh.read())
        todo += [os.path.normpath(os.path.join(os.path.dirname(f), inc)) for inc in LOCAL_INCLUDE.findall(parts[-1])]
    return "\n".join(parts)


def list_sources(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "sim")  # sim/ is the CPU emulation, built by make test
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if name.endswith(OTHER_SOURCES):
                fail(f"{path}: only .cpp sources are checked; teach tools/ascend/sources.py this kind of file")
            if not name.endswith(".cpp"):
                continue
            with open(path, encoding="utf-8") as fh:
                if HOST_INCLUDE.search(fh.read()):
                    print(f"host {path}")
                    continue
            text = text_with_local_headers(path)
            mode = next((m for m, pattern in MODES if re.search(pattern, text)), None)
            if mode is None:
                fail(f"{path}: a kernel source with no core type: give each entry point "
                     "KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY / KERNEL_TYPE_AIC_ONLY / KERNEL_TYPE_MIX_AIC_1_2)")
            print(f"kernel {mode} {path}")


# A kernel definition after preprocessing: keywords such as __global__ __aicore__ (or __mix__(1, 2)),
# void, the name, the parameters, the body.
ENTRY = re.compile(r"((?:\b__\w+__(?:\s*\([^()]*\))?\s+)+)void\s+(\w+)\s*\(([^()]*)\)\s*\{")


def preprocess(src, stubs):
    """src preprocessed with its own macros expanded and every header it cannot find read as empty.

    The entry points' parameter lists are the project's macros (nf4_kernels.h); kernel_operator.h and
    the other CANN headers are left empty so that GM_ADDR, __global__ and __aicore__ stay as written."""
    for _ in range(100):
        r = subprocess.run(["g++", "-E", "-P", "-x", "c++", "-std=c++17", "-D__NPU_ARCH__=2201",
                            "-I", stubs, src], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout
        missing = re.search(r"fatal error: (\S+): No such file or directory", r.stderr)
        if not missing:
            fail(f"{src}: preprocessing for the entry points failed:\n{r.stderr}")
        os.makedirs(os.path.dirname(os.path.join(stubs, missing.group(1))), exist_ok=True)
        open(os.path.join(stubs, missing.group(1)), "w").close()
    fail(f"{src}: more than 100 headers missing while looking for the entry points")


def launch_param(param):
    """A kernel parameter as CANN's generated launcher declares it: GM pointers become void*."""
    param = " ".join(param.split())
    name = re.findall(r"\w+", param)[-1]
    return f"void* {name}" if ("GM_ADDR" in param or "*" in param) else param


def launch_headers(outdir, sources):
    os.makedirs(outdir, exist_ok=True)
    where = {}
    with tempfile.TemporaryDirectory() as stubs:
        for src in sources:
            found = [m for m in ENTRY.finditer(preprocess(src, stubs)) if "__global__" in m.group(1)]
            if not found:
                fail(f"{src}: no __global__ entry point found, so no aclrtlaunch header for it")
            for m in found:
                kernel, params = m.group(2), [p for p in m.group(3).split(",") if p.strip() not in ("", "void")]
                if kernel in where:
                    fail(f"kernel {kernel} is defined in {where[kernel]} and in {src}")
                where[kernel] = src
                args = ", ".join(["uint32_t blockDim", "aclrtStream stream"] + [launch_param(p) for p in params])
                with open(os.path.join(outdir, f"aclrtlaunch_{kernel}.h"), "w") as fh:
                    fh.write(f"// Stand-in for the header CANN's ascendc_library generates, written by\n"
                             f"// tools/ascend/sources.py from the definition in {src}.\n"
                             f"#pragma once\n#include \"acl/acl_base.h\"\n"
                             f"#ifndef ACLRT_LAUNCH_KERNEL\n"
                             f"#define ACLRT_LAUNCH_KERNEL(kernel_func) aclrtlaunch_##kernel_func\n#endif\n"
                             f"extern \"C\" uint32_t aclrtlaunch_{kernel}({args});\n")
    print(len(where))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "list":
        list_sources(sys.argv[2] if len(sys.argv) > 2 else "kernels/ascend")
    elif len(sys.argv) >= 3 and sys.argv[1] == "launch-headers":
        launch_headers(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(__doc__)
