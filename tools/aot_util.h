// The hand-written ("aot") baselines of the dvm benchmarks (bench_vm.cc,
// bench_stages.cc, bench_stack.cc): a small static thread pool and scalar
// math that GCC vectorises at -O3 -march=native.
//
// The baselines do not use floating-point exceptions; without
// -fno-trapping-math GCC will not if-convert the clamps in ExpF and leaves
// the exp/tanh/GELU loops scalar (results are unchanged: it only drops trap
// semantics). `#pragma GCC optimize` applies to the functions defined AFTER
// it in a translation unit, so:
//  * every .cc that includes this header puts the same pragma at its very top,
//    before any #include: after the standard headers, GCC 12 vectorises none
//    of these loops (functions compiled with other options do not inline
//    into them);
//  * this header repeats it, so that everything defined below (ExpF, Pool,
//    the row reductions) is compiled with it even where an includer forgot.
// Pragmas accumulate: an includer may add more (bench_stack.cc adds
// no-math-errno for sqrt). Only include this from the benchmark files that
// are built -O3 -march=native.
#pragma once
#pragma GCC optimize("no-trapping-math")

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "kernels.h"

namespace dvmtool {

// ---- a small static thread pool for the hand-written baselines -------------
// Run(f) calls f(tid) on every thread (the caller is thread 0) and returns
// when all are done. Workers spin between back-to-back runs and sleep after
// Park() (called after every timed block, so that they never compete with
// DVM's own pool) or after 100 us without work.
class Pool {
 public:
  explicit Pool(int n) : n_(std::max(1, n)) {
    for (int t = 1; t < n_; ++t) th_.emplace_back([this, t] { Worker(t); });
  }
  ~Pool() {
    stop_ = true;
    gen_.fetch_add(1);
    {
      std::lock_guard<std::mutex> lk(mu_);
      cv_.notify_all();
    }
    for (auto& t : th_) t.join();
  }
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  int size() const { return n_; }
  void Park() { spin_.store(false, std::memory_order_relaxed); }

  template <class F>
  void Run(F& f) {
    if (n_ == 1) return f(0);
    fn_ = [](void* c, int t) { (*static_cast<F*>(c))(t); };
    ctx_ = &f;
    spin_.store(true, std::memory_order_relaxed);
    pending_.store(n_ - 1, std::memory_order_relaxed);
    gen_.fetch_add(1);  // seq_cst: publishes fn_/ctx_, ordered before the sleepers_ load
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lk(mu_);
      cv_.notify_all();
    }
    f(0);
    // Spin briefly, then yield: on a loaded machine a spinning waiter would
    // hold the core the straggler needs until the scheduler preempts it.
    for (int i = 0; pending_.load(std::memory_order_acquire) > 0; ++i) {
      if (i < 4096) _mm_pause();
      else std::this_thread::yield();
    }
  }

  // f(begin, end) over contiguous chunks of [0, n), one per thread, chunk
  // boundaries on multiples of `align`.
  template <class F>
  void For(size_t n, F&& f, size_t align = 64) {
    size_t chunk = (n + n_ - 1) / n_;
    chunk = (chunk + align - 1) / align * align;
    auto body = [&](int t) {
      size_t b = std::min(n, t * chunk), e = std::min(n, b + chunk);
      if (b < e) f(b, e);
    };
    Run(body);
  }

 private:
  void Worker(int tid) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t g;
      double spin_until = 0;
      for (long i = 0; (g = gen_.load(std::memory_order_acquire)) == seen; ++i) {
        if (spin_.load(std::memory_order_relaxed)) {  // spin for at most kSpinUs
          if (i == 0) spin_until = NowUs() + kSpinUs;
          if ((i & 255) || NowUs() < spin_until) {
            _mm_pause();
            continue;
          }
        }
        std::unique_lock<std::mutex> lk(mu_);
        sleepers_.fetch_add(1);
        cv_.wait(lk, [&] { return gen_.load() != seen; });
        sleepers_.fetch_sub(1);
      }
      seen = g;
      if (stop_) return;
      fn_(ctx_, tid);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }

  static constexpr double kSpinUs = 100;
  const int n_;
  std::vector<std::thread> th_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> pending_{0}, sleepers_{0};
  std::atomic<bool> spin_{false}, stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  void (*fn_)(void*, int) = nullptr;
  void* ctx_ = nullptr;
};

// ---- scalar building blocks that GCC vectorises ------------------------------
// exp: Cody-Waite range reduction and the Cephes polynomial (~1 ulp).
inline float ExpF(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = x - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return std::bit_cast<float>(std::bit_cast<int32_t>(p) + (static_cast<int32_t>(k) << 23));
}
inline float TanhF(float x) { return 1.0f - 2.0f / (ExpF(2.0f * x) + 1.0f); }
inline float GeluF(float x) {
  float u = x + (x * x * x) * float(kGeluA);
  return (x * 0.5f) * (TanhF(u * float(kGeluC)) + 1.0f);
}
inline uint16_t ToBF16(float x) {  // round to nearest even (inputs are finite)
  uint32_t u = std::bit_cast<uint32_t>(x);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// Lane-wise accumulators: no reassociation needed, so -O3 vectorises them.
constexpr int kLanes = 32;
inline float RowSum(const float* __restrict x, size_t n) {
  float acc[kLanes] = {};
  size_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += x[j + l];
  float s = 0;
  for (; j < n; ++j) s += x[j];
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}
inline float RowMax(const float* __restrict x, size_t n) {
  float acc[kLanes];
  for (int l = 0; l < kLanes; ++l) acc[l] = -INFINITY;
  size_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] = acc[l] > x[j + l] ? acc[l] : x[j + l];
  float m = -INFINITY;
  for (; j < n; ++j) m = m > x[j] ? m : x[j];
  for (int l = 0; l < kLanes; ++l) m = m > acc[l] ? m : acc[l];
  return m;
}
inline float RowSqDev(const float* __restrict x, float mean, size_t n) {
  float acc[kLanes] = {};
  size_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += (x[j + l] - mean) * (x[j + l] - mean);
  float s = 0;
  for (; j < n; ++j) s += (x[j] - mean) * (x[j] - mean);
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

}  // namespace dvmtool
