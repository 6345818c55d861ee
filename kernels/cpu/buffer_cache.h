// A bounded cache of large CPU output buffers.
//
// A fresh multi-megabyte CPU tensor costs a page fault per 4 KiB on first write,
// which on small VMs takes longer than the kernel that fills it. Outputs that are
// made and freed over and over (a QLoRA layer dequantizes its weight every step)
// instead reuse a warm buffer of the same size from here. Buffers are 2 MiB
// aligned and hinted for transparent huge pages. The cache holds at most
// LORAOPS_CPU_BUFFER_CACHE_MB megabytes of freed buffers (default 512; 0 turns it
// off); loraops.empty_cpu_buffer_cache() returns them to the system.
#pragma once

#include <ATen/core/Tensor.h>

namespace loraops::cpu {

// An uninitialized contiguous CPU tensor; large ones come from the cache.
at::Tensor empty_output(at::IntArrayRef shape, at::ScalarType dtype);

// Frees every cached buffer; returns the bytes released.
int64_t empty_buffer_cache();

// Bytes held by freed buffers waiting for reuse.
int64_t buffer_cache_bytes();

}  // namespace loraops::cpu
