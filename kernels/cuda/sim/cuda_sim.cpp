// The scheduler of the CUDA emulation: a block's threads are ucontext fibers on
// a host thread of the block's own, run in order (or in reverse) until each
// finishes or waits at a barrier; a barrier opens when every thread it names
// waits at it. See cuda_sim.h for what is checked.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <string_view>
#include <thread>
#include <sstream>
#include <vector>

#include "cuda_sim.h"

namespace loraops::cuda_sim {
namespace {

enum class Wait { none, block, warp, exited };

struct Fiber {
  ucontext_t context;
  dim3 index;
  Wait wait = Wait::none;
  unsigned mask = 0;       // while waiting at a warp barrier
  uint64_t published = 0;  // the value it shuffles
  int source = 0;
};

// Fiber stacks with a guard page below each, so an overflow faults at once.
class Stacks {
 public:
  static constexpr size_t kBytes = 256 * 1024;
  explicit Stacks(size_t count) : page_(static_cast<size_t>(sysconf(_SC_PAGESIZE))), count_(count) {
    base_ = static_cast<char*>(mmap(nullptr, count * (kBytes + page_), PROT_READ | PROT_WRITE,
                                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (base_ == MAP_FAILED) throw CudaSimError("cuda sim: cannot map fiber stacks");
    for (size_t i = 0; i < count; ++i) mprotect(base_ + i * (kBytes + page_), page_, PROT_NONE);
  }
  ~Stacks() { munmap(base_, count_ * (kBytes + page_)); }
  Stacks(const Stacks&) = delete;
  Stacks& operator=(const Stacks&) = delete;
  char* stack(size_t i) const { return base_ + i * (kBytes + page_) + page_; }

 private:
  size_t page_, count_;
  char* base_;
};

struct BlockRun {
  dim3 grid, block, block_index;
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  // Zeroed: swapcontext does not fill uc_stack when it saves a context, and
  // ASan's interceptor reads it to clear the target's stack shadow.
  ucontext_t scheduler{};
  size_t current = 0;
  bool reverse = false;  // run the fibers last to first
  std::exception_ptr error;
};

thread_local BlockRun* active = nullptr;

Fiber& self() { return active->fibers[active->current]; }

std::string where(const BlockRun& run, size_t thread) {
  std::ostringstream s;
  const dim3& b = run.block_index;
  const dim3& t = run.fibers[thread].index;
  s << "block (" << b.x << "," << b.y << "," << b.z << ") thread (" << t.x << "," << t.y << "," << t.z << ")";
  return s.str();
}

void fiber_main() {
  BlockRun& run = *active;
  try {
    (*run.body)();
  } catch (...) {
    if (!run.error) run.error = std::current_exception();
  }
  run.fibers[run.current].wait = Wait::exited;
  // returning resumes uc_link, the scheduler
}

void wait_at(Wait kind) {
  Fiber& f = self();
  f.wait = kind;
  swapcontext(&f.context, &active->scheduler);
}

// Opens the barriers of the warp at warp_start whose lanes have all arrived;
// false when none could open.
bool release_warp(BlockRun& run, size_t warp_start) {
  bool released = false;
  const size_t warp_end = std::min(run.fibers.size(), warp_start + 32);
  {
    for (size_t i = warp_start; i < warp_end; ++i) {
      if (run.fibers[i].wait != Wait::warp) continue;
      const unsigned mask = run.fibers[i].mask;
      if (!(mask >> (i - warp_start) & 1u))
        throw CudaSimError("cuda sim: " + where(run, i) + " syncs its warp with a mask that excludes itself");
      bool all_here = true;
      for (size_t lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        const size_t j = warp_start + lane;
        if (j >= warp_end || run.fibers[j].wait == Wait::exited)
          throw CudaSimError("cuda sim: " + where(run, i) + " syncs its warp with lane " + std::to_string(lane) +
                             ", which has exited or does not exist");
        if (run.fibers[j].wait == Wait::warp && run.fibers[j].mask != mask)
          throw CudaSimError("cuda sim: lanes of one warp sync with different masks, at " + where(run, i) + " and " +
                             where(run, j));
        all_here = all_here && run.fibers[j].wait == Wait::warp;
      }
      if (!all_here) continue;
      for (size_t j = warp_start; j < warp_end; ++j)
        if (run.fibers[j].wait == Wait::warp && run.fibers[j].mask != mask && (run.fibers[j].mask & mask) != 0)
          throw CudaSimError("cuda sim: lanes of one warp sync with different masks, at " + where(run, i) + " and " +
                             where(run, j));
      // Every lane reads before any lane can publish its next value.
      std::vector<uint64_t> values(32);
      for (size_t lane = 0; lane < 32; ++lane)
        if (mask >> lane & 1u) values[lane] = run.fibers[warp_start + lane].published;
      for (size_t lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        Fiber& f = run.fibers[warp_start + lane];
        const int src = f.source;
        if (src >= 0 && src < 32 && !(mask >> src & 1u))
          throw CudaSimError("cuda sim: " + where(run, warp_start + lane) + " shuffles from lane " +
                             std::to_string(src) + ", outside the mask");
        f.published = src >= 0 && src < 32 ? values[src] : f.published;
        f.wait = Wait::none;
      }
      released = true;
    }
  }
  return released;
}

bool release_block(BlockRun& run) {
  bool any_waiting = false;
  for (const Fiber& f : run.fibers) {
    if (f.wait == Wait::none || f.wait == Wait::warp) return false;
    any_waiting = any_waiting || f.wait == Wait::block;
  }
  if (!any_waiting) return false;
  for (Fiber& f : run.fibers)
    if (f.wait == Wait::block) f.wait = Wait::none;
  return true;
}

// Runs a fiber until it finishes or waits; rethrows what the kernel threw.
void resume(BlockRun& run, size_t i) {
  run.current = i;
  swapcontext(&run.scheduler, &run.fibers[i].context);
  if (run.error) std::rethrow_exception(run.error);
}

// One warp at a time runs as far as it can (its own shuffles resolved at once)
// before the next starts, as far ahead of the others as a GPU may let it: a
// warp that reads shared memory another warp writes without __syncthreads
// between then reads it unwritten.
void run_block(BlockRun& run, const Stacks& stacks) {
  const size_t count = run.fibers.size();
  for (size_t i = 0; i < count; ++i) {
    Fiber& f = run.fibers[i];
    f.wait = Wait::none;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stacks.stack(i);
    f.context.uc_stack.ss_size = Stacks::kBytes;
    f.context.uc_link = &run.scheduler;
    makecontext(&f.context, &fiber_main, 0);
  }
  const size_t warps = (count + 31) / 32;
  for (;;) {
    for (size_t w = 0; w < warps; ++w) {
      const size_t warp_start = 32 * (run.reverse ? warps - 1 - w : w);
      const size_t lanes = std::min<size_t>(32, count - warp_start);
      do {
        for (size_t l = 0; l < lanes; ++l) {
          const size_t i = warp_start + (run.reverse ? lanes - 1 - l : l);
          if (run.fibers[i].wait == Wait::none) resume(run, i);
        }
      } while (release_warp(run, warp_start));
    }
    bool done = true;
    for (const Fiber& f : run.fibers) done = done && f.wait == Wait::exited;
    if (done) return;
    if (release_block(run)) continue;
    size_t stuck = 0;
    while (run.fibers[stuck].wait == Wait::exited) ++stuck;
    throw CudaSimError("cuda sim: deadlock in " + where(run, stuck) +
                       ": threads wait at __syncthreads while others of the block wait in a warp sync or have "
                       "work only after it");
  }
}

}  // namespace

const dim3& thread_index() { return self().index; }
const dim3& block_index() { return active->block_index; }
const dim3& block_dim() { return active->block; }
const dim3& grid_dim() { return active->grid; }
int lane_id() { return static_cast<int>(active->current % 32); }

void sync_block() { wait_at(Wait::block); }

uint64_t exchange_in_warp(unsigned mask, uint64_t value, int source) {
  Fiber& f = self();
  f.mask = mask;
  f.published = value;
  f.source = source;
  wait_at(Wait::warp);
  return self().published;
}

void sync_warp(unsigned mask) {
  Fiber& f = self();
  f.mask = mask;
  f.source = -1;
  wait_at(Wait::warp);
}

void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
  const size_t threads = size_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535)
    throw CudaSimError("cuda sim: invalid launch configuration (block of " + std::to_string(threads) +
                       " threads, grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y) + "x" +
                       std::to_string(grid.z) + ")");
  if (active != nullptr) throw CudaSimError("cuda sim: a kernel launched from a kernel");
  Stacks stacks(threads);
  BlockRun run;
  run.grid = grid;
  run.block = block;
  run.body = &body;
  // A thread that reads what another wrote without a barrier between sees it
  // only if the writer ran first: the tests run both orders.
  const char* order = std::getenv("LORAOPS_CUDA_SIM_ORDER");
  run.reverse = order != nullptr && std::string_view(order) == "reverse";
  run.fibers.resize(threads);
  for (unsigned z = 0, i = 0; z < block.z; ++z)
    for (unsigned y = 0; y < block.y; ++y)
      for (unsigned x = 0; x < block.x; ++x, ++i) run.fibers[i].index = dim3(x, y, z);
  // Each block runs on a fresh host thread: its __shared__ variables (thread
  // locals) start zeroed, not holding what the previous block left there, so a
  // kernel that reads shared memory before writing it goes wrong here as well.
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        run.block_index = dim3(bx, by, bz);
        std::exception_ptr failure;
        std::thread worker([&] {
          active = &run;
          try {
            run_block(run, stacks);
          } catch (...) {
            failure = std::current_exception();
          }
          active = nullptr;
        });
        worker.join();
        if (failure) std::rethrow_exception(failure);
      }
}

}  // namespace loraops::cuda_sim
