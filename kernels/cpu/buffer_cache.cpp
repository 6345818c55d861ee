#include "buffer_cache.h"

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include "csrc/sizes.h"
#include "memory.h"

// Under AddressSanitizer a cached buffer is poisoned until it is handed out
// again, so a use after free of a cached output is still reported.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define LORAOPS_POISON(ptr, bytes) ASAN_POISON_MEMORY_REGION(ptr, bytes)
#define LORAOPS_UNPOISON(ptr, bytes) ASAN_UNPOISON_MEMORY_REGION(ptr, bytes)
#else
#define LORAOPS_POISON(ptr, bytes) ((void)(ptr), (void)(bytes))
#define LORAOPS_UNPOISON(ptr, bytes) ((void)(ptr), (void)(bytes))
#endif

namespace loraops::cpu {
namespace {

constexpr size_t kHugePage = size_t{2} << 20;
// Smaller outputs come from torch's allocator: they fault little and malloc reuses them.
constexpr size_t kMinCachedBytes = size_t{4} << 20;

// LORAOPS_CPU_BUFFER_CACHE_MB: a whole number of megabytes. Anything else is an
// error rather than a silent 0 (which turns the cache off).
size_t capacity_from_env() {
  const char* env = std::getenv("LORAOPS_CPU_BUFFER_CACHE_MB");
  if (env == nullptr || *env == '\0') return size_t{512} << 20;
  constexpr unsigned long long kMaxMegabytes = (1ULL << 43) - 1;  // << 20 stays below 2^63
  char* end = nullptr;
  errno = 0;
  const unsigned long long mb = std::strtoull(env, &end, 10);
  TORCH_CHECK_VALUE(std::isdigit(static_cast<unsigned char>(*env)) && *end == '\0' && errno == 0 &&
                        mb <= kMaxMegabytes,
                    "LORAOPS_CPU_BUFFER_CACHE_MB must be a whole number of megabytes in [0, ", kMaxMegabytes,
                    "], got \"", env, "\"");
  return static_cast<size_t>(mb) << 20;
}

class BufferCache {
 public:
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* ptr = it->second;
        free_.erase(it);
        cached_bytes_ -= bytes;
        LORAOPS_UNPOISON(ptr, bytes);
        return ptr;
      }
    }
    void* ptr = std::aligned_alloc(kHugePage, bytes);
    TORCH_CHECK(ptr != nullptr, "loraops: out of memory allocating ", bytes, " bytes");
    advise_huge_pages(ptr, bytes);
    return ptr;
  }

  void give_back(void* ptr, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_bytes_ + bytes <= capacity_) {
        LORAOPS_POISON(ptr, bytes);
        free_.emplace(bytes, ptr);
        cached_bytes_ += bytes;
        return;
      }
    }
    std::free(ptr);
  }

  int64_t clear() {
    std::multimap<size_t, void*> victims;
    size_t released;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      victims.swap(free_);
      released = cached_bytes_;
      cached_bytes_ = 0;
    }
    for (auto& entry : victims) {
      LORAOPS_UNPOISON(entry.second, entry.first);
      std::free(entry.second);
    }
    return static_cast<int64_t>(released);
  }

  int64_t bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(cached_bytes_);
  }

  size_t capacity() const { return capacity_; }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;
  size_t cached_bytes_ = 0;
  const size_t capacity_ = capacity_from_env();
};

// Never destroyed: tensors may be freed after static destructors have run.
BufferCache& cache() {
  static BufferCache* instance = new BufferCache();
  return *instance;
}

struct CachedBuffer {
  void* ptr;
  size_t bytes;
};

void release(void* context) {
  auto* buffer = static_cast<CachedBuffer*>(context);
  cache().give_back(buffer->ptr, buffer->bytes);
  delete buffer;
}

}  // namespace

at::Tensor empty_output(at::IntArrayRef shape, at::ScalarType dtype) {
  const auto options = at::TensorOptions().dtype(dtype).device(at::kCPU);
  const int64_t element_bytes = static_cast<int64_t>(c10::elementSize(dtype));
  const auto bytes = static_cast<size_t>(element_bytes * checked_numel(shape, element_bytes, "loraops", "an output"));
  if (bytes < kMinCachedBytes || cache().capacity() == 0) return at::empty(shape, options);
  const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  auto* buffer = new CachedBuffer{cache().take(rounded), rounded};
  return at::from_blob(buffer->ptr, shape, [buffer](void*) { release(buffer); }, options);
}

int64_t empty_buffer_cache() { return cache().clear(); }

int64_t buffer_cache_bytes() { return cache().bytes(); }

}  // namespace loraops::cpu
