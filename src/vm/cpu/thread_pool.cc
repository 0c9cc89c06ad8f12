#include "vm/cpu/thread_pool.h"

#include <cblas.h>

#include <chrono>
#include <cstdlib>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>
#else
#include <thread>
#endif

#include "dvm/dvm.h"

namespace dvm::vm {
namespace {
constexpr int kSpinUs = 200;
constexpr int kWaitSpins = 2048;  // the caller's wait for workers: pauses, then
constexpr int kYieldUs = 2000;    // sched_yield for this long, then the futex
int CurrentCpu() {
#if defined(__linux__)
  return sched_getcpu();
#else
  return -1;
#endif
}
inline void Pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
}  // namespace

void WaitWord::Add(int32_t delta) {
  word_.fetch_add(static_cast<uint32_t>(delta));
  // seq_cst on both sides (Add's fetch_add then this load; Wait's increment
  // then its load): a sleeper either sees the new word or is counted here.
  if (sleepers_.load() > 0) {
#if defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word_), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
#endif
  }
}

void WaitWord::Wait(uint32_t old) {
  sleepers_.fetch_add(1);
  if (word_.load() == old) {
#if defined(__linux__)
    // Returns at once if the word has changed since the load (the kernel
    // compares it under its lock), else sleeps until a wake.
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word_), FUTEX_WAIT_PRIVATE, old, nullptr, nullptr, 0);
#else
    std::this_thread::yield();
#endif
  }
  sleepers_.fetch_sub(1);
}

ThreadPool& ThreadPool::Get() {
  static ThreadPool pool;
  return pool;
}

ThreadPool::ThreadPool() {
  // DVM runs GEMM blocks in parallel itself, each a single-threaded BLAS
  // call. OpenBLAS's own idle threads spin with sched_yield and take the
  // cores from this pool (measured: codegen 6.8 -> 12 us median, and every
  // VM benchmark), so the process's OpenBLAS runs on one thread unless the
  // caller sets it again (GEMM stages force one thread while they run).
  openblas_set_num_threads(1);
  int n = static_cast<int>(std::thread::hardware_concurrency());
  if (const char* env = std::getenv("DVM_NUM_THREADS")) {
    int v = std::atoi(env);
    if (v > 0) n = v;
  }
  Start(n < 1 ? 1 : n);
}

ThreadPool::~ThreadPool() { Stop(); }

void ThreadPool::Start(int n) {
  num_threads_ = n;
#if defined(__linux__)
  CPU_ZERO(&allowed_);
  if (sched_getaffinity(0, sizeof allowed_, &allowed_) != 0) CPU_ZERO(&allowed_);
#endif
  stop_.store(false);
  // Workers start from the current generation: a job posted before a new
  // thread first runs is still seen by it.
  const uint32_t gen = generation_.Load();
  for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, gen] { WorkerLoop(i, gen); });
}

void ThreadPool::Stop() {
  stop_.store(true);
  generation_.Add(1);
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::SetNumThreads(int n) {
  if (n < 1) n = 1;
  std::lock_guard<std::mutex> lock(run_mu_);
  if (n == num_threads_) return;
  Stop();
  Start(n);
}

// A worker that finds itself on the CPU the caller last ran a job from moves
// to the caller's other allowed CPUs. Measured on this 2-vCPU VM: after a
// pause, the kernel often woke the worker on the caller's vCPU and left it
// there (the other one idle); the caller, which waits only for workers that
// joined, then ran every launch alone and the worker, time-sliced with it,
// never joined: blocks of GELU [65536] launches at their one-thread time (46
// instead of 24 us) for as long as the run lasted. The move costs one
// sched_setaffinity call when it happens; the mask only ever leaves out the
// caller's CPU of the moment.
void ThreadPool::AvoidCallerCpu() {
#if defined(__linux__)
  const int caller = caller_cpu_.load(std::memory_order_relaxed);
  if (caller < 0 || caller >= CPU_SETSIZE || caller != CurrentCpu()) return;
  cpu_set_t set = allowed_;
  CPU_CLR(caller, &set);
  if (CPU_COUNT(&set) > 0) sched_setaffinity(0, sizeof set, &set);
#endif
}

void ThreadPool::WorkerLoop(int index, uint32_t seen) {
  for (;;) {
    // Spin (back-to-back launches), then sleep. The spin lasts kSpinUs,
    // longer than a launch the caller may have run alone: a worker that woke
    // after the caller had finished must still be spinning when the next
    // launch starts.
    uint32_t g = generation_.Load();
    if (g == seen) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinUs);
      for (int spin = 1; g == seen; ++spin) {
        Pause();
        g = generation_.Load();
        if (spin % 64 == 0 && std::chrono::steady_clock::now() > until) break;
      }
    }
    while (g == seen) {
      generation_.Wait(seen);
      g = generation_.Load();
    }
    seen = g;
    if (stop_.load()) return;
    // Join the job unless the caller has closed it: a worker that wakes up
    // late (its core was busy) never holds the caller up.
    active_.Add(1);
    AvoidCallerCpu();
    if (!closed_.load() && index < participants_) job_(ctx_, index);
    active_.Add(-1);
  }
}

void ThreadPool::Run(int participants, Job job, void* ctx) {
  if (participants > num_threads_) participants = num_threads_;
  std::unique_lock<std::mutex> lock(run_mu_, std::try_to_lock);
  if (participants <= 1 || !lock.owns_lock()) {
    // Busy with another launch (or one participant): run everything here.
    // Jobs take work from a shared counter, so one participant finishes it.
    job(ctx, 0);
    return;
  }
  // No worker is inside a job here (the previous Run waited for them).
  job_ = job;
  ctx_ = ctx;
  participants_ = participants;
  closed_.store(false);
  generation_.Add(1);
  caller_cpu_.store(CurrentCpu(), std::memory_order_relaxed);
  job(ctx, 0);  // returns when every tile has been claimed
  closed_.store(true);
  // Wait only for workers that joined (they are finishing claimed tiles):
  // spin, then yield, and sleep on the futex only after kYieldUs. A worker
  // the scheduler left on the caller's CPU runs only when the caller gives
  // that CPU up; and a futex sleep ends with the worker's wake-up, which
  // tends to move the caller onto the worker's CPU (the two then keep
  // sharing it). Measured, bench vm's L2 cases, 16 processes each: launches
  // that ended with caller and worker on one CPU, 130 and 182 in two of the
  // processes (bias_residual_l2 there 8.0 and 5.1 us, 4.1-5.2 elsewhere)
  // with a spin then the futex; at most 2 in each of 20 with the yield.
  // Other slow processes remain (host noise; no co-location counted).
  uint32_t a = active_.Load();
  std::chrono::steady_clock::time_point yield_until;
  for (int spin = 0; a != 0; ++spin) {
    if (spin < kWaitSpins) {
      Pause();
    } else {
      if (spin == kWaitSpins) yield_until = std::chrono::steady_clock::now() + std::chrono::microseconds(kYieldUs);
      std::this_thread::yield();
      if (spin % 64 == 0 && std::chrono::steady_clock::now() > yield_until) break;
    }
    a = active_.Load();
  }
  while (a != 0) {
    active_.Wait(a);
    a = active_.Load();
  }
}

}  // namespace dvm::vm

namespace dvm {
void SetNumThreads(int n) { vm::ThreadPool::Get().SetNumThreads(n); }
int GetNumThreads() { return vm::ThreadPool::Get().num_threads(); }
}  // namespace dvm
