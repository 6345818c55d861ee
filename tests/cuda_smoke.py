"""`make cuda-check`: the CUDA build imports, lists its backend and has CUDA
kernels for the NF4 and LoRA ops; without a GPU a CUDA call fails with torch's
own error, with one the CUDA tests run."""

import subprocess
import sys

import torch

import loraops

info = loraops.build_info()
assert "cuda" in info["backends"], f"the CUDA build lists no cuda backend: {info}"
print(f"loraops {info['version']} for torch {info['torch_version']}: backends {info['backends']}")
for op in ("nf4_quantize", "nf4_dequantize", "nf4_dequantize_into", "lora_linear", "lora_linear_backward",
           "lora_linear_nf4", "lora_linear_nf4_backward"):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"loraops::{op}", "CUDA"), f"no CUDA kernel for {op}"

if not torch.cuda.is_available():
    try:
        torch.ops.loraops.nf4_quantize(torch.ones(64, device="cuda"), 64, True)
    except RuntimeError as exc:
        print(f"no GPU here; a CUDA call fails cleanly: {str(exc).splitlines()[0]}")
    else:
        sys.exit("a CUDA call succeeded although torch sees no GPU")
    sys.exit(0)

sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "tests/test_cuda.py"]))
