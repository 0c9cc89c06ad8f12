// Shared helpers of the dvm command line: argument parsing, timing,
// statistics, tables and a hand-written JSON report.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "dvm/dvm.h"
#include "vm/cpu/jit.h"

namespace dvmtool {

// ---- commands (each returns the process exit status) -----------------------
class Args;
int DemoMain(Args& args);
int BenchCodegenMain(Args& args);
int BenchVmMain(Args& args);

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "--name value" / "--name=value" options and "--flag" switches. Every
// argument must be consumed: Finish() rejects what no command asked for.
class Args {
 public:
  // The arguments argv[first, argc) (none when first >= argc).
  Args(int argc, char** argv, int first) : a_(argv + std::min(first, argc), argv + argc), used_(a_.size()) {}

  bool Flag(const std::string& name) {
    for (size_t i = 0; i < a_.size(); ++i)
      if (!used_[i] && a_[i] == name) return used_[i] = true;
    return false;
  }
  std::string Str(const std::string& name, std::string def) {
    for (size_t i = 0; i < a_.size(); ++i) {
      if (used_[i]) continue;
      if (a_[i] == name) {
        if (i + 1 >= a_.size()) throw UsageError(name + " needs a value");
        used_[i] = used_[i + 1] = true;
        return a_[i + 1];
      }
      if (a_[i].rfind(name + "=", 0) == 0) {
        used_[i] = true;
        return a_[i].substr(name.size() + 1);
      }
    }
    return def;
  }
  long Int(const std::string& name, long def, long lo = 0, long hi = 1L << 40) {
    std::string s = Str(name, "");
    if (s.empty()) return def;
    char* end = nullptr;
    long v = std::strtol(s.c_str(), &end, 10);
    if (*end || v < lo || v > hi)
      throw UsageError(name + " wants an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" +
                       s + "'");
    return v;
  }
  void Finish() const {
    for (size_t i = 0; i < a_.size(); ++i)
      if (!used_[i]) throw UsageError("unknown argument '" + a_[i] + "'");
  }

 private:
  std::vector<std::string> a_;
  std::vector<bool> used_;
};

// How long OpenBLAS's idle workers keep spinning before they sleep (2^28
// TSC ticks; measured here: one core busy for 100 to 150 ms after a
// 2-thread sgemm, and after the library loads), with a margin.
constexpr int kSlowIdleMs = 250;

// The options every `dvm bench` suite (but codegen) reads: --json, --threads,
// --reps and, where the suite has named cases, --filter. Read() leaves
// Finish() to the caller, which may read options of its own first.
struct BenchOptions {
  std::string json, filter;
  long threads = 0, reps = 20;

  static BenchOptions Read(Args& args, bool with_filter = true) {
    BenchOptions o;
    o.json = args.Str("--json", "");
    o.threads = args.Int("--threads", 0, 0, 1024);
    o.reps = args.Int("--reps", 20, 1, 100000);
    if (with_filter) o.filter = args.Str("--filter", "");
    return o;
  }
  // Applies --threads to DVM's pool; returns the thread count in use. Then
  // waits kSlowIdleMs: OpenBLAS starts its worker threads when the library
  // loads and they spin (sched_yield) for ~0.1 s before they sleep, taking a
  // core from whatever runs first (measured: the first case of bench stages,
  // softmax [64, 32768], 740-1430 us with them spinning, 750-775 us with
  // OPENBLAS_NUM_THREADS=1).
  int StartThreads() const {
    if (threads > 0) dvm::SetNumThreads(int(threads));
    // More threads than CPUs time-slice DVM's pool and the baselines'
    // differently (DVM's caller does not wait for a worker that has not
    // joined; the baselines wait for all): the ratios then say little.
    const unsigned cpus = std::thread::hardware_concurrency();
    if (cpus > 0 && threads > long(cpus))
      std::fprintf(stderr, "dvm: note: --threads %ld on %u CPUs: oversubscribed, the timings are not comparable\n",
                   threads, cpus);
    std::this_thread::sleep_for(std::chrono::milliseconds(kSlowIdleMs));
    return dvm::GetNumThreads();
  }
  // Whether --filter rules out the case `name`.
  bool Skip(const std::string& name) const { return !filter.empty() && name.find(filter) == std::string::npos; }
};

// ---- timing and statistics -------------------------------------------------
inline double NowUs() {
  using namespace std::chrono;
  return duration<double, std::micro>(steady_clock::now().time_since_epoch()).count();
}

struct Stats {
  double median = 0, min = 0, max = 0, p99 = 0, mean = 0;
};

inline Stats Summarize(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  s.min = v.front();
  s.max = v.back();
  s.p99 = v[std::min(n - 1, static_cast<size_t>(std::ceil(0.99 * n)) - 1)];
  for (double x : v) s.mean += x;
  s.mean /= n;
  return s;
}

// The 1-minute load average (Linux), or -1. Benchmarks print it: these
// machines are shared and a busy one makes every figure noisy.
inline double LoadAverage() {
  double v = -1;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &v) != 1) v = -1;
    std::fclose(f);
  }
  return v;
}

inline double Geomean(const std::vector<double>& v) {
  if (v.empty()) return 0;
  double s = 0;
  for (double x : v) s += std::log(x);
  return std::exp(s / v.size());
}

// A thread of its own that runs closures handed to it, one at a time; Run
// waits for the closure. A baseline that threads itself with OpenMP runs its
// blocks here: a thread that has led a multi-threaded OpenMP team (libgomp)
// and then calls oneDNN single-threaded, as DVM's GEMM blocks do, ran them
// ~1.3x slower in this process (two such calls at once nearly serialised:
// measured 250 -> 340 us for two 128x256x256 halves), so the main thread,
// which launches DVM, must never lead one.
class Worker {
 public:
  Worker() : thread_([this] { Loop(); }) {}
  ~Worker() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;
  void Run(const std::function<void()>& f) {
    std::unique_lock<std::mutex> l(mu_);
    job_ = &f;
    done_ = false;
    cv_.notify_all();
    cv_.wait(l, [&] { return done_; });
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      cv_.wait(l, [&] { return stop_ || job_; });
      if (stop_) return;
      const std::function<void()>* f = job_;
      l.unlock();
      (*f)();
      l.lock();
      job_ = nullptr;
      done_ = true;
      cv_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void()>* job_ = nullptr;
  bool done_ = false, stop_ = false;
  std::thread thread_;
};

// Per-call times (us) of `reps` timed blocks of each implementation f[k].
// Each implementation runs its blocks back to back (steady state, as a
// serving loop launches), in rounds (f[0], f[1], ..., f[0], f[1], ...; up
// to 10, two blocks a round) so that drift on a shared machine hits all
// alike: this VM's hypervisor takes the cores away in bursts (steal time up
// to half of the CPU time during a suite, measured in /proc/stat), and with
// two long rounds a burst could land on one implementation's. Before each run of
// blocks: a pause of 2 ms, so the other implementations' worker threads stop
// spinning and go to sleep, then >= 3 untimed calls (>= 300 us) to wake its
// own threads. `calib_calls` untimed calls (0: none) size a repeat count so
// that a block of a short call lasts ~1 ms. `park`, when given, runs after
// each calibration and each run of blocks (the baseline pool's Park()).
// `slow_idle` names implementations whose idle threads keep spinning for
// a while (OpenBLAS: 2^28 TSC ticks; measured here, one core busy for 100 to
// 150 ms after a 2-thread sgemm; oneDNN's OpenMP threads too): the pause
// after their blocks is kSlowIdleMs, and with one set the last run of blocks
// is followed by one too. `on[k]`, where given and set, runs implementation
// k's calibration and blocks on that worker (timed there, per block).
inline std::vector<std::vector<double>> MeasureBlocks(const std::vector<std::function<void()>>& f, int reps,
                                                      int calib_calls = 3, const std::function<void()>& park = {},
                                                      const std::vector<int>& slow_idle = {},
                                                      const std::vector<Worker*>& on = {}) {
  const size_t n = f.size();
  auto at = [&](size_t k, const std::function<void()>& body) {
    if (k < on.size() && on[k])
      on[k]->Run(body);
    else
      body();
  };
  auto slow = [&](int k) { return std::find(slow_idle.begin(), slow_idle.end(), k) != slow_idle.end(); };
  std::vector<int> inner(n, 1);
  if (calib_calls > 0)
    for (size_t k = 0; k < n; ++k) {
      double best = INFINITY;
      at(k, [&] {
        for (int i = 0; i < calib_calls; ++i) {
          double t0 = NowUs();
          f[k]();
          best = std::min(best, NowUs() - t0);
        }
      });
      inner[k] = int(std::clamp(1000.0 / std::max(best, 0.05), 1.0, 100000.0));
      if (park) park();
      // A slow-idle implementation's threads must fall asleep before the
      // next one is calibrated or the first round starts.
      if (slow(int(k))) std::this_thread::sleep_for(std::chrono::milliseconds(kSlowIdleMs));
    }
  auto pause = [&](int prev) { std::this_thread::sleep_for(std::chrono::milliseconds(slow(prev) ? kSlowIdleMs : 2)); };
  std::vector<std::vector<double>> r(n);
  int prev = -1;
  const int rounds = std::clamp(reps / 2, 2, 10);
  for (int round = 0; round < rounds; ++round)
    for (size_t k = 0; k < n; ++k) {
      pause(prev);
      prev = int(k);
      at(k, [&] {
        const double warm_start = NowUs();
        for (int i = 0; i < 3 || NowUs() - warm_start < 300; ++i) f[k]();
        for (int rep = round; rep < reps; rep += rounds) {
          double t0 = NowUs();
          for (int i = 0; i < inner[k]; ++i) f[k]();
          r[k].push_back((NowUs() - t0) / inner[k]);
        }
      });
      if (park) park();
    }
  if (!slow_idle.empty()) pause(prev);
  return r;
}

// ---- checking ----------------------------------------------------------------
// Folds |x - ref| into max_err (infinite on NaN) and says whether x matches
// ref: bit-equal when `exact`, else |x - ref| <= atol + rtol |ref|.
inline bool Matches(float x, float ref, bool exact, double atol, double rtol, double& max_err) {
  const double err = std::fabs(double(x) - double(ref));
  max_err = std::max(max_err, std::isnan(err) ? INFINITY : err);
  return exact ? x == ref : err <= atol + rtol * std::fabs(double(ref));
}

// ---- buffers -------------------------------------------------------------------
struct Buf {  // n zeroed floats, 64-byte aligned
  explicit Buf(size_t n)
      : n(n), p(static_cast<float*>(std::aligned_alloc(64, std::max<size_t>((n * 4 + 63) / 64 * 64, 64))), &std::free) {
    if (!p) throw std::bad_alloc();
    std::memset(p.get(), 0, n * 4);
  }
  float* get() const { return p.get(); }
  size_t n;
  std::unique_ptr<float, decltype(&std::free)> p;
};

// Deterministic, fast uniform floats in [lo, hi).
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t Next() {
    s_ ^= s_ << 13;
    s_ ^= s_ >> 7;
    s_ ^= s_ << 17;
    return s_;
  }
  float Uniform(float lo, float hi) { return lo + (hi - lo) * float(Next() >> 40) * 0x1p-24f; }
  int64_t Int(int64_t lo, int64_t hi) { return lo + int64_t(Next() % uint64_t(hi - lo + 1)); }
  template <class T>
  void Fill(T* p, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; ++i) p[i] = Uniform(lo, hi);
  }

 private:
  uint64_t s_;
};

// ---- formatting --------------------------------------------------------------
inline std::string Fmt(double v, int prec = 2) {
  char b[64];
  if (!std::isfinite(v)) return "-";
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

inline std::string Sci(double v) {  // max_err columns
  char b[32];
  std::snprintf(b, sizeof b, "%.1e", v);
  return b;
}

inline std::string ShapeString(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
  return r + "]";
}

// A plain text table: columns sized to their widest cell, the first one
// left-aligned, the others right-aligned.
class Table {
 public:
  explicit Table(std::vector<std::string> head) { rows_.push_back(std::move(head)); }
  void Row(std::vector<std::string> r) { rows_.push_back(std::move(r)); }
  void Print(FILE* f = stdout) const {
    std::vector<size_t> w;
    for (auto& r : rows_)
      for (size_t i = 0; i < r.size(); ++i) {
        if (w.size() <= i) w.push_back(0);
        w[i] = std::max(w[i], r[i].size());
      }
    for (size_t k = 0; k < rows_.size(); ++k) {
      const auto& r = rows_[k];
      for (size_t i = 0; i < r.size(); ++i) std::fprintf(f, i == 0 ? "%-*s" : "  %*s", int(w[i]), r[i].c_str());
      std::fprintf(f, "\n");
      if (k == 0) {
        size_t total = 0;
        for (size_t x : w) total += x + 2;
        std::fprintf(f, "%s\n", std::string(total - 2, '-').c_str());
      }
    }
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

// ---- JSON --------------------------------------------------------------------
// An object written in insertion order; values are numbers, strings, booleans
// or already-serialised JSON.
class JsonObject {
 public:
  JsonObject& Num(const std::string& k, double v) {
    char b[64];
    if (std::isfinite(v))
      std::snprintf(b, sizeof b, "%.6g", v);
    else
      std::snprintf(b, sizeof b, "null");
    return Raw(k, b);
  }
  JsonObject& Str(const std::string& k, const std::string& v) { return Raw(k, Quote(v)); }
  JsonObject& Bool(const std::string& k, bool v) { return Raw(k, v ? "true" : "false"); }
  JsonObject& Raw(const std::string& k, const std::string& json) {
    kv_.emplace_back(k, json);
    return *this;
  }
  std::string str() const {
    std::string s = "{";
    for (size_t i = 0; i < kv_.size(); ++i) s += (i ? ", " : "") + Quote(kv_[i].first) + ": " + kv_[i].second;
    return s + "}";
  }
  static std::string Quote(const std::string& v) {
    std::string s = "\"";
    for (char c : v) {
      if (c == '"' || c == '\\')
        s += '\\', s += c;
      else if (static_cast<unsigned char>(c) < 0x20) {
        char b[8];
        std::snprintf(b, sizeof b, "\\u%04x", c);
        s += b;
      } else
        s += c;
    }
    return s + "\"";
  }

 private:
  std::vector<std::pair<std::string, std::string>> kv_;
};

inline std::string JsonArray(const std::vector<std::string>& items, const char* sep = ",\n    ") {
  std::string s = "[";
  for (size_t i = 0; i < items.size(); ++i) s += (i ? sep : "") + items[i];
  return s + "]";
}

// The report shape every bench writes:
// {"suite": ..., "threads": N, "cases": [{"name", "metrics"}...], "summary": {...}}
struct Report {
  std::string suite;
  int threads = 0;
  std::vector<std::string> cases;  // serialised case objects
  JsonObject summary;

  Report() = default;
  Report(std::string suite_name, int num_threads) : suite(std::move(suite_name)), threads(num_threads) {}

  void AddCase(const std::string& name, const JsonObject& metrics, const std::string& shape = "") {
    JsonObject c;
    c.Str("name", name);
    if (!shape.empty()) c.Str("shape", shape);
    c.Raw("metrics", metrics.str());
    cases.push_back(c.str());
  }
  std::string str() const {
    return "{\"suite\": " + JsonObject::Quote(suite) + ", \"threads\": " + std::to_string(threads) +
           ",\n  \"cases\": " + JsonArray(cases) + ",\n  \"summary\": " + summary.str() + "}\n";
  }
  // Writes the report when a path was given; false (with a message) on failure.
  bool Write(const std::string& path) const {
    if (path.empty()) return true;
    std::ofstream f(path);
    f << str();
    if (!f) {
      std::fprintf(stderr, "dvm: cannot write %s\n", path.c_str());
      return false;
    }
    std::printf("wrote %s\n", path.c_str());
    return true;
  }
};

inline const char* Bar(bool ok) { return ok ? "PASS" : "MISS"; }

// Which code ran the fused programs a bench timed (src/vm/cpu/jit.h): a
// line under its table, and two fields of its JSON summary. `before` is
// dvm::vm::NativeProgramsCompiled() at the bench's start.
inline void NoteNativePrograms(JsonObject& summary, int64_t before) {
  const bool on = dvm::vm::NativeSupported() && dvm::vm::NativeThresholdLanes() >= 0;
  const auto compiled = static_cast<long long>(dvm::vm::NativeProgramsCompiled() - before);
  std::printf("native programs: %s (threshold %lld lanes, DVM_JIT_LANES), %lld compiled during this run\n",
              on ? "on" : "off", static_cast<long long>(dvm::vm::NativeThresholdLanes()), compiled);
  summary.Bool("native_programs", on).Num("native_programs_compiled", static_cast<double>(compiled));
}

}  // namespace dvmtool
