// `dvm bench vm`: cached DVM programs against the same fusion written by hand
// in plain C++ loops (compiled -O3 -march=native with this file) and against
// unfused per-op loops with materialised intermediates (how eager frameworks
// run it). All three use the same number of threads and are checked for
// equality before their times count.
//
// Each case runs at an L2-sized shape (256 KiB - 1 MiB touched) and a
// DRAM-sized one (>= 64 MiB). Medians over reps, timed as Measure says.

// See aot_util.h: lets GCC vectorise the baselines' exp/tanh/GELU loops. It
// must come before the includes (and aot_util.h repeats it).
#pragma GCC optimize("no-trapping-math")

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "aot_util.h"
#include "bench_util.h"
#include "dvm/dvm.h"
#include "kernels.h"

namespace dvmtool {
namespace {

// Generic per-op loops for the unfused baselines.
template <class F>
void Map1(Pool& p, const float* a, float* o, size_t n, F f) {
  p.For(n, [&](size_t b, size_t e) {
    const float* __restrict x = a;
    float* __restrict y = o;
    for (size_t i = b; i < e; ++i) y[i] = f(x[i]);
  });
}
template <class F>
void Map2(Pool& p, const float* a, const float* b2, float* o, size_t n, F f) {
  p.For(n, [&](size_t b, size_t e) {
    const float* __restrict x = a;
    const float* __restrict z = b2;
    float* __restrict y = o;
    for (size_t i = b; i < e; ++i) y[i] = f(x[i], z[i]);
  });
}
// o[i, j] = f(x[i, j], v[i]) (per-row value) or f(x[i, j], v[j]) (per-column).
template <class F>
void MapRows(Pool& p, const float* x, const float* v, float* o, size_t rows, size_t cols,
             bool per_row, F f) {
  p.For(rows, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) {
      const float* __restrict xr = x + i * cols;
      float* __restrict orow = o + i * cols;
      if (per_row) {
        const float s = v[i];
        for (size_t j = 0; j < cols; ++j) orow[j] = f(xr[j], s);
      } else {
        const float* __restrict vr = v;
        for (size_t j = 0; j < cols; ++j) orow[j] = f(xr[j], vr[j]);
      }
    }
  }, 1);
}
template <class F>
void ReduceRows(Pool& p, const float* x, float* o, size_t rows, size_t cols, F row_op) {
  p.For(rows, [&](size_t b, size_t e) {
    for (size_t i = b; i < e; ++i) o[i] = row_op(x + i * cols, cols);
  }, 1);
}
void ColSum(Pool& p, const float* x, float* o, size_t rows, size_t cols) {
  p.For(cols, [&](size_t b, size_t e) {
    float* __restrict acc = o + b;
    const size_t w = e - b;
    for (size_t j = 0; j < w; ++j) acc[j] = 0;
    for (size_t i = 0; i < rows; ++i) {
      const float* __restrict xr = x + i * cols + b;
      for (size_t j = 0; j < w; ++j) acc[j] += xr[j];
    }
  }, 16);
}

// ---- buffers and cases ---------------------------------------------------------
struct Arena {
  std::vector<std::unique_ptr<void, decltype(&std::free)>> blocks;
  template <class T>
  T* Alloc(size_t n) {
    size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, std::max<size_t>(bytes, 64));
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
    blocks.emplace_back(p, &std::free);
    return static_cast<T*>(p);
  }
  float* F(size_t n) { return Alloc<float>(n); }
};

struct Output {  // one output of each implementation, compared element-wise
  const void* dvm;
  const void* aot;
  const void* unfused;
  size_t n;
  bool bf16;
};

struct Case {
  Case(std::string n, std::string s, bool dram_sized, bool exact_equal, double bytes_moved)
      : name(std::move(n)), shape(std::move(s)), dram(dram_sized), exact(exact_equal),
        bytes(bytes_moved) {}
  std::string name, shape;
  bool dram, exact;  // DRAM-sized shape; results must be bit-equal
  double bytes;      // inputs read + outputs written by the fused kernel
  std::shared_ptr<Arena> mem = std::make_shared<Arena>();
  std::shared_ptr<dvm::Kernel> kernel = std::make_shared<dvm::Kernel>(dvm::KernelType::kDynamic);
  std::vector<dvm::TensorArg> in, out;
  std::function<void()> aot, unfused;
  std::vector<Output> outputs;

  void Dvm() const { kernel->Launch(in, out); }
  void Bind(std::vector<std::pair<void*, dvm::Shape>> ins,
            std::vector<std::pair<void*, size_t>> outs) {
    for (auto& [p, s] : ins) in.push_back({p, s, 0});
    for (auto& [p, bytes] : outs) out.push_back({p, {}, bytes});
  }
};

using CaseFactory = std::function<Case(Pool&)>;

std::string Dims2(size_t r, size_t c) { return ShapeString({int64_t(r), int64_t(c)}); }

Case MakeAdd(Pool& P, size_t n, bool dram) {
  Case c{"add", ShapeString({int64_t(n)}), dram, true, 3.0 * n * 4};
  Rng rng(1);
  float *a = c.mem->F(n), *b = c.mem->F(n), *o1 = c.mem->F(n), *o2 = c.mem->F(n), *o3 = c.mem->F(n);
  rng.Fill(a, n, -1, 1), rng.Fill(b, n, -1, 1);
  auto* x = c.kernel->Load(nullptr, {-1}, DType::kFloat32);
  auto* y = c.kernel->Load(nullptr, {-1}, DType::kFloat32);
  c.kernel->Store(nullptr, c.kernel->Binary(BinaryOp::kAdd, x, y));
  c.Bind({{a, {int64_t(n)}}, {b, {int64_t(n)}}}, {{o1, n * 4}});
  c.aot = [&P, a, b, o2, n] {
    P.For(n, [&](size_t s, size_t e) {
      const float* __restrict x = a;
      const float* __restrict y = b;
      float* __restrict o = o2;
      for (size_t i = s; i < e; ++i) o[i] = x[i] + y[i];
    });
  };
  c.unfused = [&P, a, b, o3, n] { Map2(P, a, b, o3, n, [](float x, float y) { return x + y; }); };
  c.outputs = {{o1, o2, o3, n, false}};
  return c;
}

Case MakeBiasResidual(Pool& P, size_t R, size_t C, bool dram) {
  const size_t n = R * C;
  Case c{"bias_residual", Dims2(R, C), dram, true, (3.0 * n + C) * 4};
  Rng rng(2);
  float *x = c.mem->F(n), *bias = c.mem->F(C), *res = c.mem->F(n);
  float *o1 = c.mem->F(n), *o2 = c.mem->F(n), *o3 = c.mem->F(n), *t = c.mem->F(n);
  rng.Fill(x, n, -1, 1), rng.Fill(bias, C, -1, 1), rng.Fill(res, n, -1, 1);
  dvm::Kernel& k = *c.kernel;
  auto* X = k.Load(nullptr, {-1, -1}, DType::kFloat32);
  auto* B = k.Load(nullptr, {-1}, DType::kFloat32);
  auto* Rs = k.Load(nullptr, {-1, -1}, DType::kFloat32);
  k.Store(nullptr, k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kAdd, X, B), Rs));
  c.Bind({{x, {int64_t(R), int64_t(C)}}, {bias, {int64_t(C)}}, {res, {int64_t(R), int64_t(C)}}},
         {{o1, n * 4}});
  c.aot = [&P, x, bias, res, o2, R, C] {
    P.For(R, [&](size_t s, size_t e) {
      for (size_t i = s; i < e; ++i) {
        const float* __restrict xr = x + i * C;
        const float* __restrict rr = res + i * C;
        const float* __restrict br = bias;
        float* __restrict o = o2 + i * C;
        for (size_t j = 0; j < C; ++j) o[j] = (xr[j] + br[j]) + rr[j];
      }
    }, 1);
  };
  c.unfused = [&P, x, bias, res, o3, t, R, C] {
    MapRows(P, x, bias, t, R, C, false, [](float a, float b) { return a + b; });
    Map2(P, t, res, o3, R * C, [](float a, float b) { return a + b; });
  };
  c.outputs = {{o1, o2, o3, n, false}};
  return c;
}

Case MakeGelu(Pool& P, size_t n, bool dram) {
  Case c{"gelu", ShapeString({int64_t(n)}), dram, false, 2.0 * n * 4};
  Rng rng(3);
  float *x = c.mem->F(n), *o1 = c.mem->F(n), *o2 = c.mem->F(n), *o3 = c.mem->F(n);
  rng.Fill(x, n, -4, 4);
  std::vector<float*> t;
  for (int i = 0; i < 8; ++i) t.push_back(c.mem->F(n));
  BuildGelu(*c.kernel, 1);
  c.Bind({{x, {int64_t(n)}}}, {{o1, n * 4}});
  c.aot = [&P, x, o2, n] {
    P.For(n, [&](size_t s, size_t e) {
      const float* __restrict a = x;
      float* __restrict o = o2;
      for (size_t i = s; i < e; ++i) o[i] = GeluF(a[i]);
    });
  };
  c.unfused = [&P, x, o3, t, n] {
    const float A = float(kGeluA), K = float(kGeluC);
    Map2(P, x, x, t[0], n, [](float a, float b) { return a * b; });           // x^2
    Map2(P, t[0], x, t[1], n, [](float a, float b) { return a * b; });        // x^3
    Map1(P, t[1], t[2], n, [A](float a) { return a * A; });                   // *0.044715
    Map2(P, x, t[2], t[3], n, [](float a, float b) { return a + b; });        // x + .
    Map1(P, t[3], t[4], n, [K](float a) { return a * K; });                   // *sqrt(2/pi)
    Map1(P, t[4], t[5], n, [](float a) { return TanhF(a); });                 // tanh
    Map1(P, t[5], t[6], n, [](float a) { return a + 1.0f; });                 // 1 + .
    Map1(P, x, t[7], n, [](float a) { return a * 0.5f; });                    // 0.5 * x
    Map2(P, t[7], t[6], o3, n, [](float a, float b) { return a * b; });       // product
  };
  c.outputs = {{o1, o2, o3, n, false}};
  return c;
}

Case MakeSoftmax(Pool& P, size_t R, size_t C, bool dram) {
  const size_t n = R * C;
  Case c{"softmax", Dims2(R, C), dram, false, 2.0 * n * 4};
  Rng rng(4);
  float *x = c.mem->F(n), *o1 = c.mem->F(n), *o2 = c.mem->F(n), *o3 = c.mem->F(n);
  float *m = c.mem->F(R), *s = c.mem->F(R), *d = c.mem->F(n), *e = c.mem->F(n);
  rng.Fill(x, n, -5, 5);
  BuildSoftmax(*c.kernel);
  c.Bind({{x, {int64_t(R), int64_t(C)}}}, {{o1, n * 4}});
  c.aot = [&P, x, o2, R, C] {
    P.For(R, [&](size_t b, size_t end) {
      for (size_t i = b; i < end; ++i) {
        const float* __restrict xr = x + i * C;
        float* __restrict o = o2 + i * C;
        const float mx = RowMax(xr, C);
        for (size_t j = 0; j < C; ++j) o[j] = ExpF(xr[j] - mx);
        const float inv = 1.0f / RowSum(o, C);
        for (size_t j = 0; j < C; ++j) o[j] *= inv;
      }
    }, 1);
  };
  c.unfused = [&P, x, o3, m, s, d, e, R, C] {
    ReduceRows(P, x, m, R, C, RowMax);
    MapRows(P, x, m, d, R, C, true, [](float a, float b) { return a - b; });
    Map1(P, d, e, R * C, [](float a) { return ExpF(a); });
    ReduceRows(P, e, s, R, C, RowSum);
    MapRows(P, e, s, o3, R, C, true, [](float a, float b) { return a / b; });
  };
  c.outputs = {{o1, o2, o3, n, false}};
  return c;
}

Case MakeLayerNorm(Pool& P, size_t R, size_t C, bool dram) {
  const size_t n = R * C;
  Case c{"layernorm", Dims2(R, C), dram, false, (2.0 * n + 2.0 * C) * 4};
  Rng rng(5);
  float *x = c.mem->F(n), *g = c.mem->F(C), *bt = c.mem->F(C);
  float *o1 = c.mem->F(n), *o2 = c.mem->F(n), *o3 = c.mem->F(n);
  float *sum = c.mem->F(R), *rstd = c.mem->F(R), *d = c.mem->F(n), *d2 = c.mem->F(n);
  float *y = c.mem->F(n), *yg = c.mem->F(n);
  rng.Fill(x, n, -1.5f, 2.5f), rng.Fill(g, C, 0.5f, 1.5f), rng.Fill(bt, C, -0.5f, 0.5f);
  BuildLayerNorm(*c.kernel, int64_t(C), false);
  c.Bind({{x, {int64_t(R), int64_t(C)}}, {g, {int64_t(C)}}, {bt, {int64_t(C)}}}, {{o1, n * 4}});
  const float inv_n = float(1.0 / double(C)), eps = float(kLayerNormEps);
  c.aot = [&P, x, g, bt, o2, R, C, inv_n, eps] {
    P.For(R, [&](size_t b, size_t end) {
      for (size_t i = b; i < end; ++i) {
        const float* __restrict xr = x + i * C;
        const float* __restrict gr = g;
        const float* __restrict br = bt;
        float* __restrict o = o2 + i * C;
        const float mean = RowSum(xr, C) * inv_n;
        const float rs = 1.0f / std::sqrt(RowSqDev(xr, mean, C) * inv_n + eps);
        for (size_t j = 0; j < C; ++j) o[j] = ((xr[j] - mean) * rs) * gr[j] + br[j];
      }
    }, 1);
  };
  c.unfused = [&P, x, g, bt, o3, sum, rstd, d, d2, y, yg, R, C, inv_n, eps] {
    ReduceRows(P, x, sum, R, C, RowSum);                                       // sum
    for (size_t i = 0; i < R; ++i) sum[i] *= inv_n;                            // mean (tiny)
    MapRows(P, x, sum, d, R, C, true, [](float a, float b) { return a - b; }); // x - mean
    Map2(P, d, d, d2, R * C, [](float a, float b) { return a * b; });          // square
    ReduceRows(P, d2, rstd, R, C, RowSum);                                     // sum
    for (size_t i = 0; i < R; ++i) rstd[i] = 1.0f / std::sqrt(rstd[i] * inv_n + eps);
    MapRows(P, d, rstd, y, R, C, true, [](float a, float b) { return a * b; });
    MapRows(P, y, g, yg, R, C, false, [](float a, float b) { return a * b; });
    MapRows(P, yg, bt, o3, R, C, false, [](float a, float b) { return a + b; });
  };
  c.outputs = {{o1, o2, o3, n, false}};
  return c;
}

Case MakeReduce(Pool& P, size_t R, size_t C, bool rows, bool dram) {
  const size_t n = R * C, m = rows ? R : C;
  Case c{rows ? "row_sum" : "col_sum", Dims2(R, C), dram, false, (double(n) + m) * 4};
  Rng rng(6);
  float *x = c.mem->F(n), *o1 = c.mem->F(m), *o2 = c.mem->F(m), *o3 = c.mem->F(m);
  rng.Fill(x, n, 0, 1);
  dvm::Kernel& k = *c.kernel;
  auto* X = k.Load(nullptr, {-1, -1}, DType::kFloat32);
  k.Store(nullptr, k.Reduce(ReduceOp::kSum, X, {rows ? 1 : 0}, false));
  c.Bind({{x, {int64_t(R), int64_t(C)}}}, {{o1, m * 4}});
  if (rows) {
    c.aot = [&P, x, o2, R, C] { ReduceRows(P, x, o2, R, C, RowSum); };
    c.unfused = [&P, x, o3, R, C] { ReduceRows(P, x, o3, R, C, RowSum); };
  } else {
    c.aot = [&P, x, o2, R, C] { ColSum(P, x, o2, R, C); };
    c.unfused = [&P, x, o3, R, C] { ColSum(P, x, o3, R, C); };
  }
  c.outputs = {{o1, o2, o3, m, false}};
  return c;
}

Case MakeCast(Pool& P, size_t n, bool dram) {
  Case c{"cast_bf16", ShapeString({int64_t(n)}), dram, true, n * 6.0};
  Rng rng(7);
  float* x = c.mem->F(n);
  auto *o1 = c.mem->Alloc<uint16_t>(n), *o2 = c.mem->Alloc<uint16_t>(n),
       *o3 = c.mem->Alloc<uint16_t>(n);
  rng.Fill(x, n, -100, 100);
  auto* X = c.kernel->Load(nullptr, {-1}, DType::kFloat32);
  c.kernel->Store(nullptr, c.kernel->Cast(X, DType::kBFloat16));
  c.Bind({{x, {int64_t(n)}}}, {{o1, n * 2}});
  auto cast = [&P, x, n](uint16_t* out) {
    P.For(n, [&](size_t s, size_t e) {
      const float* __restrict a = x;
      uint16_t* __restrict o = out;
      for (size_t i = s; i < e; ++i) o[i] = ToBF16(a[i]);
    });
  };
  c.aot = [cast, o2] { cast(o2); };
  c.unfused = [cast, o3] { cast(o3); };
  c.outputs = {{o1, o2, o3, n, true}};
  return c;
}

struct NamedCase {
  std::string name;  // <case>_l2 or <case>_dram
  CaseFactory make;
};

std::vector<NamedCase> AllCases() {
  std::vector<NamedCase> v;
  for (bool dram : {false, true}) {
    auto add = [&](const char* name, CaseFactory f) {
      v.push_back({std::string(name) + (dram ? "_dram" : "_l2"), std::move(f)});
    };
    add("add", [=](Pool& p) { return MakeAdd(p, dram ? 8u << 20 : 32u << 10, dram); });
    add("bias_residual",
        [=](Pool& p) { return MakeBiasResidual(p, dram ? 8192 : 64, 768, dram); });
    add("gelu", [=](Pool& p) { return MakeGelu(p, dram ? 8u << 20 : 64u << 10, dram); });
    add("softmax", [=](Pool& p) {
      return dram ? MakeSoftmax(p, 2048, 4096, dram) : MakeSoftmax(p, 64, 1024, dram);
    });
    add("layernorm", [=](Pool& p) {
      return dram ? MakeLayerNorm(p, 2048, 4096, dram) : MakeLayerNorm(p, 128, 768, dram);
    });
    add("row_sum", [=](Pool& p) {
      return dram ? MakeReduce(p, 4096, 4096, true, dram) : MakeReduce(p, 128, 1024, true, dram);
    });
    add("col_sum", [=](Pool& p) {
      return dram ? MakeReduce(p, 4096, 4096, false, dram) : MakeReduce(p, 128, 1024, false, dram);
    });
    add("cast_bf16", [=](Pool& p) { return MakeCast(p, dram ? 16u << 20 : 64u << 10, dram); });
  }
  return v;
}

// ---- checking and timing --------------------------------------------------------
constexpr double kRtol = 1e-5, kAtol = 1e-5;

// Empty when dvm, aot and unfused agree; else what differs. `max_err` gets
// the largest |dvm - other|.
std::string Compare(const Case& c, double& max_err) {
  max_err = 0;
  for (const Output& o : c.outputs) {
    for (int which = 0; which < 2; ++which) {
      const void* other = which ? o.unfused : o.aot;
      for (size_t i = 0; i < o.n; ++i) {
        float a, b;
        if (o.bf16) {
          uint16_t x = static_cast<const uint16_t*>(o.dvm)[i], y = static_cast<const uint16_t*>(other)[i];
          a = std::bit_cast<float>(uint32_t(x) << 16), b = std::bit_cast<float>(uint32_t(y) << 16);
        } else {
          a = static_cast<const float*>(o.dvm)[i], b = static_cast<const float*>(other)[i];
        }
        if (!Matches(a, b, c.exact, kAtol, kRtol, max_err)) {
          char msg[160];
          std::snprintf(msg, sizeof msg, "element %zu: dvm %.9g, %s %.9g", i, a,
                        which ? "unfused" : "aot", b);
          return msg;
        }
      }
    }
  }
  return "";
}

// Per-call times (us) of dvm ([0]), aot ([1]), unfused ([2]) and any `extra`
// functions ([3]...): `reps` timed blocks of each, as MeasureBlocks says.
// L2-sized cases repeat the call inside a block for ~1 ms (sized by 5
// untimed calls); DRAM-sized ones do not.
std::vector<std::vector<double>> Measure(const Case& c, Pool& pool, int reps,
                                         const std::vector<std::function<void()>>& extra = {}) {
  std::vector<std::function<void()>> f = {[&c] { c.Dvm(); }, c.aot, c.unfused};
  f.insert(f.end(), extra.begin(), extra.end());
  return MeasureBlocks(f, reps, c.dram ? 0 : 5, [&pool] { pool.Park(); });
}

// A plain parallel copy of 64 MiB (memcpy per 4 KiB-aligned chunk): the
// bandwidth the DRAM-sized add is held to.
struct Copier {
  static constexpr size_t kBytes = size_t(64) << 20;
  Pool& pool;
  Arena mem;
  char *src = mem.Alloc<char>(kBytes), *dst = mem.Alloc<char>(kBytes);
  explicit Copier(Pool& p) : pool(p) { std::memset(src, 1, kBytes); }
  void Run() {
    pool.For(
        kBytes, [this](size_t b, size_t e) { std::memcpy(dst + b, src + b, e - b); }, 4096);
  }
  double Gbps(double us) const { return 2.0 * kBytes / us / 1e3; }
  // Read + write GB/s, median of `reps` copies timed back to back.
  double Measure(int reps) {
    Run();
    std::vector<double> t;
    for (int i = 0; i < reps; ++i) {
      double t0 = NowUs();
      Run();
      t.push_back(NowUs() - t0);
    }
    pool.Park();
    return Gbps(Summarize(t).median);
  }
};

}  // namespace

int BenchVmMain(Args& args) {
  const BenchOptions opt = BenchOptions::Read(args);
  args.Finish();
  const int nt = opt.StartThreads();
  const int64_t native_before = dvm::vm::NativeProgramsCompiled();
  Pool pool(nt);
  const int dram_reps = std::max(3, int(opt.reps / 2));

  Report rep{"vm", nt};
  const double load = LoadAverage();
  Copier copier(pool);
  const double copy_start_gbps = copier.Measure(10);
  // The add_dram bar compares with the copy timed in the same rounds as
  // add_dram (a fourth function in its blocks): the host's memory
  // bandwidth drifts by 1.5x within a run, so a copy timed once at the start
  // (as before session 16) read 39 GB/s while add and copy ran at 26-29 a
  // minute later.
  double copy_gbps = copy_start_gbps;
  std::printf(
      "dvm bench vm: %d threads, reps %ld (L2-sized) / %d (DRAM-sized), medians; "
      "copy %.1f GB/s at the start (64 MiB, read + write); load average %.2f\n\n",
      nt, opt.reps, dram_reps, copy_start_gbps, load);

  Table t({"case", "shape", "MiB", "dvm_us", "aot_us", "unfused_us", "dvm_GB/s", "aot/dvm",
           "unfused/dvm", "max_err", "check", "bar"});
  std::vector<double> ratios;
  double min_ratio = INFINITY, add_dram_gbps = 0;
  std::string min_case;
  int failed = 0;
  for (const NamedCase& nc : AllCases()) {
    const std::string& name = nc.name;
    if (opt.Skip(name)) continue;
    Case c = nc.make(pool);
    JsonObject m;
    m.Num("bytes", c.bytes);
    std::string err;
    double max_err = 0;
    std::vector<std::vector<double>> tm;
    try {
      c.Dvm(), c.aot(), c.unfused();
      pool.Park();
      err = Compare(c, max_err);
      if (err.empty()) {
        std::vector<std::function<void()>> extra;
        if (name == "add_dram") extra.push_back([&copier] { copier.Run(); });
        tm = Measure(c, pool, c.dram ? dram_reps : int(opt.reps), extra);
        if (name == "add_dram") copy_gbps = copier.Gbps(Summarize(tm[3]).median);
        // Checked again on the timed calls' outputs: a program run often
        // enough is compiled to native code while it is timed (jit.h).
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
      std::printf("%s FAILED: %s\n", name.c_str(), err.c_str());
      t.Row({name, c.shape, Fmt(c.bytes / (1 << 20), 2), "-", "-", "-", "-", "-", "-", "-", "FAILED", "-"});
      m.Bool("failed", true).Str("error", err);
      rep.AddCase(name, m, c.shape);
      continue;
    }
    Stats d = Summarize(tm[0]), a = Summarize(tm[1]), u = Summarize(tm[2]);
    double ratio = a.median / d.median, gbps = c.bytes / d.median / 1e3;
    ratios.push_back(ratio);
    if (ratio < min_ratio) min_ratio = ratio, min_case = name;
    if (name == "add_dram") add_dram_gbps = gbps;
    t.Row({name, c.shape, Fmt(c.bytes / (1 << 20), 2), Fmt(d.median, 1), Fmt(a.median, 1),
           Fmt(u.median, 1), Fmt(gbps, 1), Fmt(ratio), Fmt(u.median / d.median), Fmt(max_err, 7),
           c.exact ? "exact" : "close", Bar(ratio >= 0.6)});
    m.Num("dvm_us", d.median).Num("dvm_us_min", d.min).Num("dvm_us_max", d.max);
    m.Num("aot_us", a.median).Num("aot_us_min", a.min).Num("aot_us_max", a.max);
    m.Num("unfused_us", u.median).Num("unfused_us_min", u.min).Num("unfused_us_max", u.max);
    m.Num("gbps", gbps).Num("aot_gbps", c.bytes / a.median / 1e3);
    m.Num("aot_over_dvm", ratio).Num("unfused_over_dvm", u.median / d.median);
    m.Num("reps", double(tm[0].size()));
    rep.AddCase(name, m, c.shape);
  }
  t.Print();

  const double geo = Geomean(ratios);
  const bool bar_geo = geo >= 0.8, bar_min = min_ratio >= 0.6,
             bar_bw = add_dram_gbps >= 0.8 * copy_gbps;
  std::printf("\nbars: geomean aot/dvm %.2f >= 0.8: %s; min aot/dvm %.2f (%s) >= 0.6: %s; ", geo,
              Bar(bar_geo), min_ratio, min_case.c_str(), Bar(bar_min));
  if (add_dram_gbps > 0)
    std::printf("add_dram %.1f GB/s >= 80%% of copy %.1f GB/s in the same rounds (%.0f%%): %s\n", add_dram_gbps,
                copy_gbps, 100 * add_dram_gbps / copy_gbps, Bar(bar_bw));
  else
    std::printf("add_dram not run\n");
  if (failed) std::printf("FAILED: %d case(s) did not match\n", failed);
  rep.summary.Num("loadavg_1min", load);
  rep.summary.Num("copy_gbps", copy_gbps).Num("copy_gbps_start", copy_start_gbps);
  rep.summary.Num("geomean_aot_over_dvm", geo);
  rep.summary.Num("min_aot_over_dvm", min_ratio).Str("min_case", min_case);
  rep.summary.Num("add_dram_gbps", add_dram_gbps).Num("add_dram_over_copy", add_dram_gbps / copy_gbps);
  rep.summary.Num("failed", failed);
  rep.summary.Bool("bar_geomean_ge_0_8", bar_geo).Bool("bar_min_ge_0_6", bar_min);
  rep.summary.Bool("bar_add_dram_ge_80pct_copy", bar_bw);
  NoteNativePrograms(rep.summary, native_before);
  bool wrote = rep.Write(opt.json);
  return failed || !wrote ? 1 : 0;
}

}  // namespace dvmtool
