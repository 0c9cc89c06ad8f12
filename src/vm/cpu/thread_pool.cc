#include "vm/cpu/thread_pool.h"

#include <cblas.h>

#include <cstdlib>

#include "dvm/dvm.h"

namespace dvm::vm {

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
  stop_.store(false);
  // Workers start from the current generation: a job posted before a new
  // thread first runs is still seen by it.
  const uint64_t gen = generation_.load();
  for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, gen] { WorkerLoop(i, gen); });
}

void ThreadPool::Stop() {
  stop_.store(true);
  generation_.fetch_add(1);
  generation_.notify_all();
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

void ThreadPool::WorkerLoop(int index, uint64_t seen) {
  for (;;) {
    // Spin briefly (back-to-back launches), then sleep.
    uint64_t g = generation_.load(std::memory_order_acquire);
    for (int spin = 0; g == seen && spin < 20000; ++spin) g = generation_.load(std::memory_order_acquire);
    while (g == seen) {
      generation_.wait(seen);
      g = generation_.load(std::memory_order_acquire);
    }
    seen = g;
    if (stop_.load()) return;
    // Join the job unless the caller has closed it: a worker that wakes up
    // late (its core was busy) never holds the caller up.
    active_.fetch_add(1);
    if (!closed_.load() && index < participants_) job_(ctx_, index);
    if (active_.fetch_sub(1) == 1) active_.notify_all();
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
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  job(ctx, 0);  // returns when every tile has been claimed
  closed_.store(true);
  // Wait only for workers that joined (they are finishing claimed tiles).
  int a = active_.load();
  for (int spin = 0; a != 0 && spin < 100000; ++spin) a = active_.load();
  while (a != 0) {
    active_.wait(a);
    a = active_.load();
  }
}

}  // namespace dvm::vm

namespace dvm {
void SetNumThreads(int n) { vm::ThreadPool::Get().SetNumThreads(n); }
int GetNumThreads() { return vm::ThreadPool::Get().num_threads(); }
}  // namespace dvm
