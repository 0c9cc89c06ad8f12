// A persistent pool: workers sleep on an atomic generation counter and run
// one job per wake-up; the calling thread is participant 0. Concurrent
// launches from other threads run inline instead of waiting for the pool.
#pragma once

#if defined(__linux__)
#include <sched.h>
#endif

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace dvm::vm {

// A 32-bit word threads sleep on until it changes (a Linux futex, with a
// count of sleepers so that a change makes no system call when nobody
// sleeps). Used instead of std::atomic<T>::wait/notify_all, measured on this
// VM with the rest of the pool unchanged (GCC 12's libstdc++, GELU [65536]
// at 2 threads, blocks of 20 launches after 2 ms pauses): 41 us per launch
// with std::atomic's wait (the worker joined only part of the launches),
// 23.2 us with this word (one thread: 45.5).
class WaitWord {
 public:
  uint32_t Load(std::memory_order o = std::memory_order_acquire) const { return word_.load(o); }
  // Changes the word (seq_cst) and wakes its sleepers.
  void Add(int32_t delta);
  // Returns once the word is not `old` (possibly spuriously early).
  void Wait(uint32_t old);

 private:
  std::atomic<uint32_t> word_{0};
  std::atomic<int> sleepers_{0};
};

class ThreadPool {
 public:
  using Job = void (*)(void* ctx, int participant);
  static ThreadPool& Get();
  ~ThreadPool();

  int num_threads() const { return num_threads_; }
  void SetNumThreads(int n);
  // Runs job(ctx, i) for i in [0, participants) and returns when all are done.
  // participants is clamped to num_threads().
  void Run(int participants, Job job, void* ctx);

 private:
  ThreadPool();
  void Start(int n);
  void Stop();
  void WorkerLoop(int index, uint32_t seen);
  void AvoidCallerCpu();

  int num_threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex run_mu_;
  WaitWord generation_;             // bumped for every job and for Stop
  WaitWord active_;                 // workers inside the current job
  std::atomic<bool> closed_{true};  // no worker may join the current job
  std::atomic<bool> stop_{false};
  std::atomic<int> caller_cpu_{-1};  // where the last Run's caller ran
#if defined(__linux__)
  cpu_set_t allowed_{};  // the process's CPUs when the workers started
#endif
  Job job_ = nullptr;
  void* ctx_ = nullptr;
  int participants_ = 0;
};

}  // namespace dvm::vm
