// A persistent pool: workers sleep on an atomic generation counter and run
// one job per wake-up; the calling thread is participant 0. Concurrent
// launches from other threads run inline instead of waiting for the pool.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace dvm::vm {

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
  void WorkerLoop(int index, uint64_t seen);

  int num_threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex run_mu_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> active_{0};      // workers inside the current job
  std::atomic<bool> closed_{true};  // no worker may join the current job
  std::atomic<bool> stop_{false};
  Job job_ = nullptr;
  void* ctx_ = nullptr;
  int participants_ = 0;
};

}  // namespace dvm::vm
