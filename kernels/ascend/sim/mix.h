// Cube-only and MIX launches of the emulation, and the cross-core
// synchronisation of Atlas A2 (CrossCoreSetFlag / CrossCoreWaitFlag, SyncAll).
// Included at the end of kernel_operator.h.
//
// A MIX launch runs each block as one AIC and two AIVs, each on its own
// thread, but only one at a time: a core runs until it returns or blocks (a
// CrossCoreWaitFlag with nothing pending, a SyncAll the others have not
// reached), then the next runnable core in a fixed order takes over, so a run
// is deterministic. When every core left is blocked, that is a deadlock fault
// naming what each one waits for; never a hang.
#pragma once

#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#define ASCEND_IS_AIC (::AscendC::sim::core().type == ::AscendC::AIC)
#define ASCEND_IS_AIV (::AscendC::sim::core().type == ::AscendC::AIV)
#define ASCEND_IS_NOT_AIC (!ASCEND_IS_AIC)
#define ASCEND_IS_NOT_AIV (!ASCEND_IS_AIV)

namespace AscendC {

inline std::string sim::Core::name() const {
  if (type == AIC) return cat("AIC of block ", block_idx);
  if (task_ration == 2) return cat("AIV ", sub_block_idx, " of block ", block_idx / 2);
  return cat("AIV of block ", block_idx);
}

inline int64_t GetSubBlockIdx() { return sim::core().sub_block_idx; }
inline int64_t GetTaskRatio() { return sim::core().task_ration; }
inline int64_t GetTaskRation() { return GetTaskRatio(); }
inline int64_t GetSubBlockNum() { return sim::core().task_ration; }

namespace sim {

constexpr int kCrossCoreFlags = 11;  // flag ids 0..10
constexpr int kMaxPending = 15;      // per flag and core

// The cores of a MIX launch and who may run.
class MixRun {
 public:
  struct Member {
    Core* core = nullptr;
    enum State { kReady, kBlocked, kDone } state = kReady;
    std::function<bool()> can_go;  // while blocked: whether what it waits for has come
    std::string waits_for;
    // Flags pending on this core, by id: set by the AIC (mode 2) or the sibling AIV (mode 1) for an AIV; by
    // each AIV (mode 2) for the AIC, which one wait consumes only once both have set.
    int pending[kCrossCoreFlags][2] = {};
    int mode0_waits[kCrossCoreFlags] = {};
    int64_t sync_all_round = 0;
  };

  std::vector<Member> members;  // block b: AIC at 3b, AIVs at 3b + 1, 3b + 2
  int mode0_sets[2][kCrossCoreFlags] = {};  // by core type (0 AIC, 1 AIV)
  int64_t sync_all_arrived[2] = {};         // per round parity: cores that reached SyncAll
  std::mutex mu;
  std::condition_variable cv;
  int running = -1;
  bool aborted = false;
  std::exception_ptr error;

  int index_of(const Core& c) const {
    for (size_t i = 0; i < members.size(); ++i) {
      if (members[i].core == &c) return static_cast<int>(i);
    }
    fail("a MIX API on a core outside the launch");
  }
  int count(int32_t type) const {
    int n = 0;
    for (const Member& m : members) n += m.core->type == type;
    return n;
  }
  int mode0_pending(const Member& m, int id) const {
    const int t = m.core->type == AIC ? 0 : 1;
    return mode0_sets[t][id] / count(m.core->type) - m.mode0_waits[id];
  }

  // Called with the lock held by the running core when it blocks or ends:
  // hands over to the next core that can go, or reports a deadlock.
  void hand_over(std::unique_lock<std::mutex>& lock, int self) {
    const int n = static_cast<int>(members.size());
    for (int step = 1; step <= n; ++step) {
      const int i = (self + step) % n;
      Member& m = members[i];
      if (m.state == Member::kReady || (m.state == Member::kBlocked && m.can_go())) {
        m.state = Member::kReady;
        running = i;
        cv.notify_all();
        return;
      }
    }
    bool any_blocked = false;
    std::string why;
    for (const Member& m : members) {
      if (m.state != Member::kBlocked) continue;
      any_blocked = true;
      why += cat("; ", m.core->name(), " waits for ", m.waits_for);
    }
    if (!any_blocked) {  // every core returned
      running = -1;
      cv.notify_all();
      return;
    }
    fail("deadlock: every core left is blocked" + why);
  }

  // The running core blocks until `can_go()`; `what` names what it waits for.
  void block(Core& c, std::function<bool()> can_go, std::string what) {
    std::unique_lock<std::mutex> lock(mu);
    const int self = index_of(c);
    if (can_go()) return;
    Member& m = members[self];
    m.state = Member::kBlocked;
    m.can_go = std::move(can_go);
    m.waits_for = std::move(what);
    hand_over(lock, self);
    cv.wait(lock, [&] { return running == self || aborted; });
    if (aborted) throw Aborted{};
    m.can_go = nullptr;
  }

  struct Aborted {};  // unwinds a core's thread after another core's fault
};

inline MixRun*& current_mix() {
  static MixRun* run = nullptr;  // one MIX launch at a time per process (it holds its cores' threads)
  return run;
}

inline MixRun& mix(const char* what) {
  MixRun* run = current_mix();
  if (run == nullptr) {
    fail(cat(what, ": cross-core synchronisation needs a MIX launch (ascend_sim::launch_mix)"));
  }
  return *run;
}

inline void check_flag_id(uint16_t id, const char* what) {
  if (id >= kCrossCoreFlags) fail(cat(what, ": flag id ", id, " is out of range 0..", kCrossCoreFlags - 1));
}

}  // namespace sim

// Raises flag `flagId` on the cores modeId names: 0 every core of this core's
// type, 1 the other AIV of this block, 2 from the AIC to both AIVs of its
// block or from an AIV to its AIC. Each flag is a counter (at most 15 pending).
template <uint8_t modeId, pipe_t pipe>
void CrossCoreSetFlag(uint16_t flagId) {
  constexpr const char* what = "CrossCoreSetFlag";
  sim::check_flag_id(flagId, what);
  sim::MixRun& run = sim::mix(what);
  sim::Core& c = sim::core();
  std::unique_lock<std::mutex> lock(run.mu);
  const int self = run.index_of(c);
  const int block = self / 3 * 3;
  auto raise = [&](int target, int slot) {
    int& p = run.members[target].pending[flagId][slot];
    if (++p > sim::kMaxPending) {
      sim::fail(sim::cat(what, ": flag ", flagId, " would have ", p, " pending on the ", run.members[target].core->name(),
                         " (at most ", sim::kMaxPending, ")"));
    }
  };
  if constexpr (modeId == 0) {
    int& sets = run.mode0_sets[c.type == AIC ? 0 : 1][flagId];
    ++sets;
    if (sets / run.count(c.type) - run.members[self].mode0_waits[flagId] > sim::kMaxPending) {
      sim::fail(sim::cat(what, ": flag ", flagId, " would have more than ", sim::kMaxPending, " pending rounds"));
    }
  } else if constexpr (modeId == 1) {
    if (c.type != AIV) sim::fail(sim::cat(what, ": mode 1 syncs the two AIVs of a block; this is the ", c.name()));
    raise(block + (self - block == 1 ? 2 : 1), 0);
  } else if constexpr (modeId == 2) {
    if (c.type == AIC) {
      raise(block + 1, 0);
      raise(block + 2, 0);
    } else {
      raise(block, self - block - 1);
    }
  } else {
    static_assert(modeId <= 2, "CrossCoreSetFlag: modeId is 0, 1 or 2");
  }
}

// Waits until flag `flagId` is pending on this core, then takes one.
template <uint8_t modeId = 0, pipe_t pipe = PIPE_S>
void CrossCoreWaitFlag(uint16_t flagId) {
  constexpr const char* what = "CrossCoreWaitFlag";
  ++sim::core().counts.flag_waits;
  sim::check_flag_id(flagId, what);
  sim::MixRun& run = sim::mix(what);
  sim::Core& c = sim::core();
  sim::MixRun::Member* m;
  {
    std::lock_guard<std::mutex> lock(run.mu);
    m = &run.members[run.index_of(c)];
  }
  const bool aic = c.type == AIC;
  auto pending = [m, aic, flagId] { return aic ? std::min(m->pending[flagId][0], m->pending[flagId][1]) : m->pending[flagId][0]; };
  run.block(c, [&run, m, flagId, pending] { return pending() > 0 || run.mode0_pending(*m, flagId) > 0; },
            sim::cat("flag ", flagId));
  std::lock_guard<std::mutex> lock(run.mu);
  if (pending() > 0) {
    --m->pending[flagId][0];
    if (aic) --m->pending[flagId][1];
  } else {
    ++m->mode0_waits[flagId];
  }
}

// The hardware barrier: every AIV of the launch (isAIVOnly) or every core.
template <bool isAIVOnly = true>
void SyncAll() {
  constexpr const char* what = "SyncAll";
  sim::MixRun& run = sim::mix(what);
  sim::Core& c = sim::core();
  if (isAIVOnly && c.type == AIC) sim::fail(sim::cat(what, "<true> syncs the AIVs only; the AIC must not call it"));
  sim::MixRun::Member* m;
  int64_t round;
  int64_t parties;
  {
    std::lock_guard<std::mutex> lock(run.mu);
    m = &run.members[run.index_of(c)];
    parties = isAIVOnly ? run.count(AIV) : static_cast<int64_t>(run.members.size());
    round = m->sync_all_round++;
    ++run.sync_all_arrived[round % 2];
  }
  run.block(c, [&run, round, parties] { return run.sync_all_arrived[round % 2] >= parties * (round / 2 + 1); },
            sim::cat("SyncAll (round ", round + 1, ": ", "the other cores have not all reached it)"));
}

}  // namespace AscendC

namespace ascend_sim {

// Runs blocks 0 .. block_dim-1 of a cube-only kernel (KERNEL_TYPE_AIC_ONLY),
// one AIC each, one after another.
template <class Kernel, class... Args>
void launch_cube(uint32_t block_dim, std::vector<GmRegion> gm, Kernel kernel, Args... args) {
  using namespace AscendC::sim;
  if (block_dim == 0 || block_dim > 65535) fail("blockDim must be in [1, 65535]");
  std::vector<std::pair<bool, Counts>> counts;
  for (uint32_t b = 0; b < block_dim; ++b) {
    Core core;
    core.type = AscendC::AIC;
    core.block_idx = b;
    core.block_num = block_dim;
    core.gm = gm;
    current_core() = &core;
    try {
      kernel(args...);
      if (core.held != 0) fail(cat(core.held, " queue tensor(s) still held when the kernel returned"));
      if (core.atomic) fail("SetAtomicAdd still on when the kernel returned: SetAtomicNone is missing");
    } catch (const AscendC::SimError& e) {
      current_core() = nullptr;
      throw AscendC::SimError(cat(e.what(), " (", core.name(), " of ", block_dim, ")"));
    } catch (...) {
      current_core() = nullptr;
      throw;
    }
    current_core() = nullptr;
    counts.emplace_back(true, core.counts);
  }
  record_launch("aic", block_dim, gm, counts);
}

// Runs a MIX kernel (KERNEL_TYPE_MIX_AIC_1_2): block_dim blocks of one AIC and
// two AIVs, cooperating through CrossCore flags and SyncAll; throws
// AscendC::SimError at the first fault, naming the core and block.
template <class Kernel, class... Args>
void launch_mix(uint32_t block_dim, std::vector<GmRegion> gm, Kernel kernel, Args... args) {
  using namespace AscendC::sim;
  if (block_dim == 0 || block_dim > 65535) fail("blockDim must be in [1, 65535]");
  static std::mutex one_at_a_time;
  std::lock_guard<std::mutex> serial(one_at_a_time);
  MixRun run;
  std::vector<std::unique_ptr<Core>> cores;
  for (uint32_t b = 0; b < block_dim; ++b) {
    for (int s = 0; s < 3; ++s) {
      auto c = std::make_unique<Core>();
      c->type = s == 0 ? AscendC::AIC : AscendC::AIV;
      c->block_idx = s == 0 ? b : 2 * b + (s - 1);
      c->sub_block_idx = s == 0 ? 0 : s - 1;
      c->task_ration = s == 0 ? 1 : 2;
      c->block_num = block_dim;
      c->gm = gm;
      run.members.push_back(MixRun::Member{});
      run.members.back().core = c.get();
      cores.push_back(std::move(c));
    }
  }
  current_mix() = &run;
  auto body = [&](int i) {
    Core& core = *run.members[i].core;
    current_core() = &core;
    {
      std::unique_lock<std::mutex> lock(run.mu);
      run.cv.wait(lock, [&] { return run.running == i || run.aborted; });
      if (run.aborted) return;
    }
    try {
      kernel(args...);
      if (core.held != 0) fail(cat(core.held, " queue tensor(s) still held when the kernel returned"));
      if (core.atomic) fail("SetAtomicAdd still on when the kernel returned: SetAtomicNone is missing");
      std::unique_lock<std::mutex> lock(run.mu);
      run.members[i].state = MixRun::Member::kDone;
      run.hand_over(lock, i);
    } catch (const MixRun::Aborted&) {
    } catch (const AscendC::SimError& e) {
      std::lock_guard<std::mutex> lock(run.mu);
      if (!run.error) run.error = std::make_exception_ptr(AscendC::SimError(cat(e.what(), " (", core.name(), ")")));
      run.aborted = true;
      run.cv.notify_all();
    } catch (...) {
      std::lock_guard<std::mutex> lock(run.mu);
      if (!run.error) run.error = std::current_exception();
      run.aborted = true;
      run.cv.notify_all();
    }
    current_core() = nullptr;
  };
  std::vector<std::thread> threads;
  for (size_t i = 0; i < run.members.size(); ++i) threads.emplace_back(body, static_cast<int>(i));
  {
    std::lock_guard<std::mutex> lock(run.mu);
    run.running = 0;
    run.cv.notify_all();
  }
  for (std::thread& t : threads) t.join();
  current_mix() = nullptr;
  if (run.error) std::rethrow_exception(run.error);
  for (const MixRun::Member& m : run.members) {
    for (int id = 0; id < kCrossCoreFlags; ++id) {
      const int left = std::max(m.pending[id][0], m.pending[id][1]) + std::max(0, run.mode0_pending(m, id));
      if (left > 0) {
        fail(cat("flag ", id, " still pending on the ", m.core->name(),
                 " when the kernel returned: a CrossCoreWaitFlag is missing or waits for another id"));
      }
    }
  }
  std::vector<std::pair<bool, Counts>> counts;
  for (const auto& c : cores) counts.emplace_back(c->type == AscendC::AIC, c->counts);
  record_launch("mix", block_dim, gm, counts);
}

}  // namespace ascend_sim
