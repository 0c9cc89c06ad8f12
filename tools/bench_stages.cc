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
// Timing as bench vm: interleaved rounds of back-to-back blocks, a 2 ms
// pause and >= 3 untimed calls before each run of blocks, calls shorter than
// 1 ms repeated inside a block. Both write the same output buffer: with
// outputs of their own, the page offsets of each output against the inputs
// differed, and so did the 4K-aliasing stalls of loads running ahead of
// stores (after the softmax cases freed their buffers, glibc put
// layernorm_32k's on the heap at x + 128 for gamma, + 256 beta, + 384
// DVM's output, + 608 the baseline's: DVM 255 -> 283-310 us, the baseline
// 217 -> 229-235). Bar: aot_us / dvm_us >= 0.8 in every case.
// The baseline thread pool, exp and row max are aot_util.h's (as bench vm's).

// See aot_util.h: lets GCC if-convert ExpF's clamps and vectorise it. It
// must come before the includes (and aot_util.h repeats it).
#pragma GCC optimize("no-trapping-math")

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "aot_util.h"
#include "bench_util.h"
#include "dvm/dvm.h"
#include "kernels.h"

namespace dvmtool {
namespace {

constexpr size_t kBlock = 4096;  // elements summed in f32 lanes before folding into double

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

struct Case {
  Case(std::string n, size_t r, size_t c, double tol, double b)
      : name(std::move(n)), rows(r), cols(c), atol(tol), bytes(b) {}
  std::string name;
  size_t rows, cols;
  double atol;
  double bytes;  // read + written by the fused kernel
  std::vector<Buf> bufs;
  // Both write `out` (the same memory, so the same page offsets against
  // the inputs); the check keeps DVM's result in `out_dvm` first.
  float *out = nullptr, *out_dvm = nullptr;
  std::unique_ptr<dvm::Kernel> kernel = std::make_unique<dvm::Kernel>(dvm::KernelType::kDynamic);
  std::vector<dvm::TensorArg> in, outs;
  std::function<void()> aot;
  void Dvm() const { kernel->Launch(in, outs); }
};

Case MakeSoftmax(Pool& P, size_t R, size_t C) {
  Case c{"softmax", R, C, 1e-9, 2.0 * R * C * 4};
  const size_t n = R * C;
  c.bufs.emplace_back(n), c.bufs.emplace_back(n), c.bufs.emplace_back(n);
  float *x = c.bufs[0].get(), *o2 = c.bufs[1].get();
  c.out = o2, c.out_dvm = c.bufs[2].get();
  Rng rng(11);
  rng.Fill(x, n, -5, 5);
  BuildSoftmax(*c.kernel);
  c.in = {{x, {int64_t(R), int64_t(C)}, 0}};
  c.outs = {{o2, {}, n * 4}};
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
  float *x = c.bufs[0].get(), *g = c.bufs[1].get(), *bt = c.bufs[2].get(), *o2 = c.bufs[3].get();
  c.out = o2, c.out_dvm = c.bufs[4].get();
  Rng rng(12);
  rng.Fill(x, n, -1.5f, 2.5f), rng.Fill(g, C, 0.5f, 1.5f), rng.Fill(bt, C, -0.5f, 0.5f);
  BuildLayerNorm(*c.kernel, int64_t(C), false);
  c.in = {{x, {int64_t(R), int64_t(C)}, 0}, {g, {int64_t(C)}, 0}, {bt, {int64_t(C)}, 0}};
  c.outs = {{o2, {}, n * 4}};
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
    const float a = c.out_dvm[i], b = c.out[i];
    if (!Matches(a, b, false, c.atol, 1e-4, max_err)) {
      char msg[160];
      std::snprintf(msg, sizeof msg, "element %zu (row %zu): dvm %.9g, aot %.9g", i, i / c.cols, a, b);
      return msg;
    }
  }
  return "";
}

}  // namespace

int BenchStagesMain(Args& args) {
  const BenchOptions opt = BenchOptions::Read(args);
  args.Finish();
  const int nt = opt.StartThreads();
  const int64_t native_before = dvm::vm::NativeProgramsCompiled();
  Pool pool(nt);

  Report rep{"stages", nt};
  const double load = LoadAverage();
  std::printf("dvm bench stages: %d threads, reps %ld, medians; load average %.2f\n\n", nt, opt.reps, load);

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
    if (opt.Skip(nc.name)) continue;
    Case c = nc.make(pool);
    const std::string shape = ShapeString({int64_t(c.rows), int64_t(c.cols)});
    JsonObject m;
    m.Num("rows", double(c.rows)).Num("cols", double(c.cols)).Num("bytes", c.bytes);
    std::string err;
    double max_err = 0;
    std::vector<std::vector<double>> tm;
    try {
      c.Dvm();
      std::memcpy(c.out_dvm, c.out, c.rows * c.cols * sizeof(float));
      c.aot();
      pool.Park();
      err = Compare(c, max_err);
      // Per-call times (us) of dvm ([0]) and aot ([1]); see the file comment.
      if (err.empty()) {
        tm = MeasureBlocks({[&c] { c.Dvm(); }, c.aot}, int(opt.reps), 3, [&pool] { pool.Park(); });
        // Checked again: a program run often enough is compiled to native
        // code while it is timed (jit.h), and the timed calls ran that.
        c.Dvm();
        std::memcpy(c.out_dvm, c.out, c.rows * c.cols * sizeof(float));
        c.aot();
        pool.Park();
        double after = 0;
        err = Compare(c, after);
        if (!err.empty()) err = "after timing: " + err;
        max_err = std::max(max_err, after);
      }
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
    Stats d = Summarize(tm[0]), a = Summarize(tm[1]);
    const double ratio = a.median / d.median;
    if (ratio < min_ratio) min_ratio = ratio, min_case = nc.name;
    t.Row({nc.name, shape, Fmt(d.median, 1), Fmt(a.median, 1), Fmt(c.bytes / d.median / 1e3, 1),
           Fmt(ratio), Sci(max_err), Bar(ratio >= 0.8)});
    m.Num("dvm_us", d.median).Num("dvm_us_min", d.min).Num("dvm_us_max", d.max);
    m.Num("aot_us", a.median).Num("aot_us_min", a.min).Num("aot_us_max", a.max);
    m.Num("gbps", c.bytes / d.median / 1e3).Num("aot_gbps", c.bytes / a.median / 1e3);
    m.Num("aot_over_dvm", ratio).Bool("bar_aot_over_dvm_ge_0_8", ratio >= 0.8);
    m.Num("reps", double(tm[0].size()));
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
  NoteNativePrograms(rep.summary, native_before);
  bool wrote = rep.Write(opt.json);
  return failed || !wrote ? 1 : 0;
}

}  // namespace dvmtool
