// Memory hints for large CPU outputs.
#pragma once

#include <cstddef>

namespace loraops::cpu {

// Ask the kernel to back [ptr, ptr + bytes) with transparent huge pages before it
// is first written. A fresh multi-megabyte output otherwise costs one page fault
// per 4 KiB, which on small VMs takes longer than the kernel that fills it; with
// 2 MiB pages the first touch is about twice as fast. A no-op for small buffers,
// on systems without THP, or where the hint is refused.
void advise_huge_pages(void* ptr, size_t bytes);

}  // namespace loraops::cpu
