// `dvm bench stages`: softmax and layernorm over long rows (32K and 256K f32
// elements: [64, 32768] and [8, 262144]), cached DVM programs of kernels.h's
// BuildSoftmax / BuildLayerNorm against the same fusion written by hand in
// C++ (compiled -O3 -march=native with this file), on the same number of
// threads, parallel over rows:
//   softmax:   per row a max pass, an exp-and-sum pass (writes exp(x - max)
//              to the output), a normalize pass
//   layernorm: per row a mean/variance pass (sum and sum of squares), a
//              normalize pass
// Sums run in 32 f32 lanes over blocks of 4096 elements, folded into double,
// so the baseline is accurate at 256K elements without being slow.
//
// A row this long does not fit a tile; DVM is expected to split such rows
// into stages itself. Results are checked before times count (close: |dvm -
// aot| <= atol + 1e-4 |aot|; atol 1e-9 for softmax, 1e-5 for layernorm).
// Timing as bench vm: two interleaved rounds of back-to-back blocks, a 2 ms
// pause and >= 3 untimed calls before each run of blocks, calls shorter than
// 1 ms repeated inside a block. Bar: aot_us / dvm_us >= 0.8 in every case.
// The baseline thread pool and exp are copies of bench_vm.cc's.

// See bench_vm.cc: lets GCC if-convert ExpF's clamps and vectorise it.
#pragma GCC optimize("no-trapping-math")

#include <immintrin.h>

#include <atomic>
#include <bit>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "dvm/dvm.h"
#include "kernels.h"

namespace dvmtool {
namespace {

std::string Sci(double v) {  // max_err column
  char b[32];
  std::snprintf(b, sizeof b, "%.1e", v);
  return b;
}

// ---- the baseline thread pool (bench_vm.cc's) -------------------------------
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
  int size() const { return n_; }
  void Park() { spin_.store(false, std::memory_order_relaxed); }

  template <class F>
  void Run(F& f) {
    if (n_ == 1) return f(0);
    fn_ = [](void* c, int t) { (*static_cast<F*>(c))(t); };
    ctx_ = &f;
    spin_.store(true, std::memory_order_relaxed);
    pending_.store(n_ - 1, std::memory_order_relaxed);
    gen_.fetch_add(1);
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lk(mu_);
      cv_.notify_all();
    }
    f(0);
    for (int i = 0; pending_.load(std::memory_order_acquire) > 0; ++i) {
      if (i < 4096) _mm_pause();
      else std::this_thread::yield();
    }
  }

  // f(begin, end) over contiguous chunks of [0, n), one per thread.
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
        if (spin_.load(std::memory_order_relaxed)) {
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

// exp: Cody-Waite range reduction and the Cephes polynomial (~1 ulp).
inline float ExpF(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
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

constexpr int kLanes = 32;
constexpr size_t kBlock = 4096;  // elements summed in f32 lanes before folding into double

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

// o[j] = exp(x[j] - mx) over [0, n); returns the sum of o.
inline double ExpSum(const float* __restrict x, float* __restrict o, float mx, size_t n) {
  double total = 0;
  for (size_t b = 0; b < n; b += kBlock) {
    const size_t e = std::min(n, b + kBlock);
    float acc[kLanes] = {};
    size_t j = b;
    for (; j + kLanes <= e; j += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const float v = ExpF(x[j + l] - mx);
        o[j + l] = v;
        acc[l] += v;
      }
    float s = 0;
    for (; j < e; ++j) s += (o[j] = ExpF(x[j] - mx));
    for (int l = 0; l < kLanes; ++l) s += acc[l];
    total += s;
  }
  return total;
}

// Sum and sum of squares of x[0, n).
inline void Moments(const float* __restrict x, size_t n, double& sum, double& sumsq) {
  sum = sumsq = 0;
  for (size_t b = 0; b < n; b += kBlock) {
    const size_t e = std::min(n, b + kBlock);
    float a1[kLanes] = {}, a2[kLanes] = {};
    size_t j = b;
    for (; j + kLanes <= e; j += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        a1[l] += x[j + l];
        a2[l] += x[j + l] * x[j + l];
      }
    float s1 = 0, s2 = 0;
    for (; j < e; ++j) s1 += x[j], s2 += x[j] * x[j];
    for (int l = 0; l < kLanes; ++l) s1 += a1[l], s2 += a2[l];
    sum += s1, sumsq += s2;
  }
}

struct Buf {  // 64-byte aligned floats
  explicit Buf(size_t n)
      : p(static_cast<float*>(std::aligned_alloc(64, std::max<size_t>((n * 4 + 63) / 64 * 64, 64))),
          &std::free) {
    if (!p) throw std::bad_alloc();
    std::memset(p.get(), 0, n * 4);
  }
  float* get() const { return p.get(); }
  std::unique_ptr<float, decltype(&std::free)> p;
};

struct Case {
  Case(std::string n, size_t r, size_t c, double tol, double b)
      : name(std::move(n)), rows(r), cols(c), atol(tol), bytes(b) {}
  std::string name;
  size_t rows, cols;
  double atol;
  double bytes;  // read + written by the fused kernel
  std::vector<Buf> bufs;
  float *out_dvm = nullptr, *out_aot = nullptr;
  std::unique_ptr<dvm::Kernel> kernel = std::make_unique<dvm::Kernel>(dvm::KernelType::kDynamic);
  std::vector<dvm::TensorArg> in, out;
  std::function<void()> aot;
  void Dvm() const { kernel->Launch(in, out); }
};

Case MakeSoftmax(Pool& P, size_t R, size_t C) {
  Case c{"softmax", R, C, 1e-9, 2.0 * R * C * 4};
  const size_t n = R * C;
  c.bufs.emplace_back(n), c.bufs.emplace_back(n), c.bufs.emplace_back(n);
  float *x = c.bufs[0].get(), *o2 = c.bufs[2].get();
  c.out_dvm = c.bufs[1].get(), c.out_aot = o2;
  Rng rng(11);
  rng.Fill(x, n, -5, 5);
  BuildSoftmax(*c.kernel);
  c.in = {{x, {int64_t(R), int64_t(C)}, 0}};
  c.out = {{c.out_dvm, {}, n * 4}};
  c.aot = [&P, x, o2, R, C] {
    P.For(R, [&](size_t b, size_t end) {
      for (size_t i = b; i < end; ++i) {
        const float* __restrict xr = x + i * C;
        float* __restrict o = o2 + i * C;
        const float mx = RowMax(xr, C);
        const float inv = float(1.0 / ExpSum(xr, o, mx, C));
        for (size_t j = 0; j < C; ++j) o[j] *= inv;
      }
    }, 1);
  };
  return c;
}

Case MakeLayerNorm(Pool& P, size_t R, size_t C) {
  Case c{"layernorm", R, C, 1e-5, (2.0 * R * C + 2.0 * C) * 4};
  const size_t n = R * C;
  c.bufs.emplace_back(n), c.bufs.emplace_back(C), c.bufs.emplace_back(C);
  c.bufs.emplace_back(n), c.bufs.emplace_back(n);
  float *x = c.bufs[0].get(), *g = c.bufs[1].get(), *bt = c.bufs[2].get(), *o2 = c.bufs[4].get();
  c.out_dvm = c.bufs[3].get(), c.out_aot = o2;
  Rng rng(12);
  rng.Fill(x, n, -1.5f, 2.5f), rng.Fill(g, C, 0.5f, 1.5f), rng.Fill(bt, C, -0.5f, 0.5f);
  BuildLayerNorm(*c.kernel, int64_t(C), false);
  c.in = {{x, {int64_t(R), int64_t(C)}, 0}, {g, {int64_t(C)}, 0}, {bt, {int64_t(C)}, 0}};
  c.out = {{c.out_dvm, {}, n * 4}};
  c.aot = [&P, x, g, bt, o2, R, C] {
    P.For(R, [&](size_t b, size_t end) {
      for (size_t i = b; i < end; ++i) {
        const float* __restrict xr = x + i * C;
        const float* __restrict gr = g;
        const float* __restrict br = bt;
        float* __restrict o = o2 + i * C;
        double s, s2;
        Moments(xr, C, s, s2);
        const double mean_d = s / double(C);
        const double var = std::max(0.0, s2 / double(C) - mean_d * mean_d);
        const float mean = float(mean_d), rs = float(1.0 / std::sqrt(var + kLayerNormEps));
        for (size_t j = 0; j < C; ++j) o[j] = ((xr[j] - mean) * rs) * gr[j] + br[j];
      }
    }, 1);
  };
  return c;
}

// Empty when dvm and aot agree; else the first element that differs.
std::string Compare(const Case& c, double& max_err) {
  max_err = 0;
  const size_t n = c.rows * c.cols;
  for (size_t i = 0; i < n; ++i) {
    const float a = c.out_dvm[i], b = c.out_aot[i];
    const double err = std::fabs(double(a) - double(b));
    max_err = std::max(max_err, std::isnan(err) ? INFINITY : err);
    if (!(err <= c.atol + 1e-4 * std::fabs(double(b)))) {
      char msg[160];
      std::snprintf(msg, sizeof msg, "element %zu (row %zu): dvm %.9g, aot %.9g", i, i / c.cols, a, b);
      return msg;
    }
  }
  return "";
}

// Per-call times (us) of dvm ([0]) and aot ([1]); see the file comment.
std::vector<double> Measure(const Case& c, Pool& pool, int reps, std::vector<double>* aot) {
  std::function<void()> f[2] = {[&c] { c.Dvm(); }, c.aot};
  int inner[2] = {1, 1};
  for (int k = 0; k < 2; ++k) {
    double best = INFINITY;
    for (int i = 0; i < 3; ++i) {
      double t0 = NowUs();
      f[k]();
      best = std::min(best, NowUs() - t0);
    }
    inner[k] = int(std::clamp(1000.0 / std::max(best, 0.05), 1.0, 100000.0));
    pool.Park();
  }
  std::vector<double> r[2];
  for (int round = 0; round < 2; ++round)
    for (int k = 0; k < 2; ++k) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      const double warm_start = NowUs();
      for (int i = 0; i < 3 || NowUs() - warm_start < 300; ++i) f[k]();
      for (int rep = round; rep < reps; rep += 2) {
        double t0 = NowUs();
        for (int i = 0; i < inner[k]; ++i) f[k]();
        r[k].push_back((NowUs() - t0) / inner[k]);
      }
      pool.Park();
    }
  *aot = std::move(r[1]);
  return r[0];
}

}  // namespace

int BenchStagesMain(Args& args) {
  const std::string json = args.Str("--json", "");
  const long threads = args.Int("--threads", 0, 0, 1024);
  const long reps = args.Int("--reps", 20, 1, 100000);
  const std::string filter = args.Str("--filter", "");
  args.Finish();
  if (threads > 0) dvm::SetNumThreads(int(threads));
  const int nt = dvm::GetNumThreads();
  Pool pool(nt);

  Report rep;
  rep.suite = "stages";
  rep.threads = nt;
  const double load = LoadAverage();
  std::printf("dvm bench stages: %d threads, reps %ld, medians; load average %.2f\n\n", nt, reps, load);

  struct Named {
    std::string name;
    std::function<Case(Pool&)> make;
  };
  std::vector<Named> cases = {
      {"softmax_32k", [](Pool& p) { return MakeSoftmax(p, 64, 32768); }},
      {"softmax_256k", [](Pool& p) { return MakeSoftmax(p, 8, 262144); }},
      {"layernorm_32k", [](Pool& p) { return MakeLayerNorm(p, 64, 32768); }},
      {"layernorm_256k", [](Pool& p) { return MakeLayerNorm(p, 8, 262144); }},
  };

  Table t({"case", "shape", "dvm_us", "aot_us", "dvm_GB/s", "aot/dvm", "max_err", "bar"});
  double min_ratio = INFINITY;
  std::string min_case;
  int failed = 0;
  for (const Named& nc : cases) {
    if (!filter.empty() && nc.name.find(filter) == std::string::npos) continue;
    Case c = nc.make(pool);
    const std::string shape = ShapeString({int64_t(c.rows), int64_t(c.cols)});
    JsonObject m;
    m.Num("rows", double(c.rows)).Num("cols", double(c.cols)).Num("bytes", c.bytes);
    std::string err;
    double max_err = 0;
    std::vector<double> td, ta;
    try {
      c.Dvm(), c.aot();
      pool.Park();
      err = Compare(c, max_err);
      if (err.empty()) td = Measure(c, pool, int(reps), &ta);
    } catch (const dvm::Error& e) {
      err = std::string("dvm::Error: ") + e.what();
    }
    m.Num("max_abs_diff", max_err);
    if (!err.empty()) {
      ++failed;
      std::printf("%s FAILED: %s\n", nc.name.c_str(), err.c_str());
      t.Row({nc.name, shape, "-", "-", "-", "-", "-", "FAILED"});
      m.Bool("failed", true).Str("error", err);
      rep.AddCase(nc.name, m, shape);
      continue;
    }
    Stats d = Summarize(td), a = Summarize(ta);
    const double ratio = a.median / d.median;
    if (ratio < min_ratio) min_ratio = ratio, min_case = nc.name;
    t.Row({nc.name, shape, Fmt(d.median, 1), Fmt(a.median, 1), Fmt(c.bytes / d.median / 1e3, 1),
           Fmt(ratio), Sci(max_err), Bar(ratio >= 0.8)});
    m.Num("dvm_us", d.median).Num("dvm_us_min", d.min).Num("dvm_us_max", d.max);
    m.Num("aot_us", a.median).Num("aot_us_min", a.min).Num("aot_us_max", a.max);
    m.Num("gbps", c.bytes / d.median / 1e3).Num("aot_gbps", c.bytes / a.median / 1e3);
    m.Num("aot_over_dvm", ratio).Bool("bar_aot_over_dvm_ge_0_8", ratio >= 0.8);
    m.Num("reps", double(td.size()));
    rep.AddCase(nc.name, m, shape);
  }
  t.Print();
  const bool bar = failed == 0 && min_ratio >= 0.8;
  if (min_case.empty()) std::printf("\nbar: aot/dvm >= 0.8 in every case: %s (no case ran)\n", Bar(bar));
  else
    std::printf("\nbar: aot/dvm >= 0.8 in every case: %s (min %.2f, %s)\n", Bar(bar), min_ratio,
                min_case.c_str());
  if (failed) std::printf("FAILED: %d case(s) did not match\n", failed);
  rep.summary.Num("loadavg_1min", load).Num("min_aot_over_dvm", min_ratio).Str("min_case", min_case);
  rep.summary.Num("failed", failed).Bool("bar_aot_over_dvm_ge_0_8", bar);
  bool wrote = rep.Write(json);
  return failed || !wrote ? 1 : 0;
}

}  // namespace dvmtool
