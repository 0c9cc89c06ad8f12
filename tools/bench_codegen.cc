// `dvm bench codegen`: what a cache miss costs. Dynamic kernels of 1, 10 and
// 50 ops are asked for the program of a shape they have never seen, every
// iteration; and a cached add kernel is launched on 1,024 elements.
//
// Codegen is timed two ways:
//  * OutputShapes(fresh shape): shape inference, cache lookup and miss,
//    codegen, verification and decode, with no run; the headline figures.
//  * Launch on tiny buffers with the cache capacity at 1 and two shapes
//    alternating, so every launch misses: the whole miss as a caller sees it
//    (a run over a few elements included, nothing subtracted).
// If OutputShapes does not generate a program, the launch method is the
// headline and the report says so.
#include <array>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_util.h"
#include "dvm/dvm.h"
#include "kernels.h"

namespace dvmtool {
namespace {

constexpr double kBarMedian10Us = 10, kBarMaxUs = 200, kBarLaunchUs = 2;

std::vector<dvm::Shape> ChainShapes(int ops, int64_t rows, int64_t cols) {
  if (ops < 3) return {{rows, cols}, {cols}};
  return {{rows, cols}, {cols}, {rows, cols}, {cols}};
}

struct CodegenResult {
  Stats wall, internal, launch_miss;
  size_t bytecode_bytes = 0;
  bool output_shapes_generates = true;
};

CodegenResult MeasureCodegen(int ops, long iters) {
  CodegenResult r;
  const int64_t cols = 256;
  {
    dvm::Kernel k(dvm::KernelType::kDynamic);
    BuildChain(k, ops);
    k.CodeGen();
    auto shapes = ChainShapes(ops, 1, cols);
    auto set_rows = [&](int64_t rows) {
      shapes[0][0] = rows;
      if (shapes.size() > 2) shapes[2][0] = rows;
    };
    for (int i = 0; i < 100; ++i) set_rows(1000000 + i), k.OutputShapes(shapes);  // warm-up
    std::vector<double> wall, internal;
    wall.reserve(iters);
    internal.reserve(iters);
    for (long i = 0; i < iters; ++i) {
      set_rows(1 + i);  // never seen before
      uint64_t before = k.stats().codegens;
      double t0 = NowUs();
      k.OutputShapes(shapes);
      double dt = NowUs() - t0;
      if (k.stats().codegens != before + 1) {
        r.output_shapes_generates = false;
        break;
      }
      wall.push_back(dt);
      internal.push_back(k.stats().last_codegen_us);
    }
    r.wall = Summarize(wall);
    r.internal = Summarize(internal);
    r.bytecode_bytes = k.Bytecode().size();
  }
  {
    dvm::Kernel k(dvm::KernelType::kDynamic);
    BuildChain(k, ops);
    k.CodeGen();
    k.SetCacheCapacity(1);
    const int64_t c = 8;
    std::vector<float> in(4 * c, 0.5f), out(4 * c);
    std::vector<dvm::TensorArg> args[2], outs[2];
    for (int s = 0; s < 2; ++s) {
      for (auto& sh : ChainShapes(ops, 2 + s, c)) args[s].push_back({in.data(), sh, 0});
      outs[s].push_back({out.data(), {}, 0});
    }
    std::vector<double> wall;
    wall.reserve(iters);
    for (long i = -50; i < iters; ++i) {
      uint64_t before = k.stats().codegens;
      double t0 = NowUs();
      k.Launch(args[i & 1], outs[i & 1]);
      double dt = NowUs() - t0;
      if (k.stats().codegens != before + 1)
        throw dvm::Error("bench codegen: a launch with cache capacity 1 and alternating shapes "
                         "did not generate a program");
      if (i >= 0) wall.push_back(dt);
    }
    r.launch_miss = Summarize(wall);
    if (!r.output_shapes_generates) r.wall = r.launch_miss;
  }
  return r;
}

Stats MeasureCachedLaunch(long launches, uint64_t& codegens) {
  const int64_t n = 1024;
  dvm::Kernel k(dvm::KernelType::kDynamic);
  auto* a = k.Load(nullptr, {-1}, DType::kFloat32);
  auto* b = k.Load(nullptr, {-1}, DType::kFloat32);
  k.Store(nullptr, k.Binary(BinaryOp::kAdd, a, b));
  k.CodeGen();
  std::vector<float> x(n, 1.0f), y(n, 2.0f), z(n);
  const std::array<dvm::TensorArg, 2> in = {{{x.data(), {n}, n * 4}, {y.data(), {n}, n * 4}}};
  const std::array<dvm::TensorArg, 1> out = {{{z.data(), {}, n * 4}}};
  for (int i = 0; i < 1000; ++i) k.Launch(in, out);
  std::vector<double> t(launches);
  for (long i = 0; i < launches; ++i) {
    double t0 = NowUs();
    k.Launch(in, out);
    t[i] = NowUs() - t0;
  }
  codegens = k.stats().codegens;
  if (z[0] != 3.0f || z[n - 1] != 3.0f) throw dvm::Error("bench codegen: add kernel gave a wrong result");
  return Summarize(t);
}

}  // namespace

int BenchCodegenMain(Args& args) {
  const std::string json = args.Str("--json", "");
  const long iters = args.Int("--iters", 2000, 1, 10000000);
  const long launches = args.Int("--launches", 20000, 1, 100000000);
  const long threads = args.Int("--threads", 0, 0, 1024);
  args.Finish();
  if (threads > 0) dvm::SetNumThreads(int(threads));

  Report rep;
  rep.suite = "codegen";
  rep.threads = dvm::GetNumThreads();
  const double load = LoadAverage();
  std::printf("dvm bench codegen: %ld new shapes per kernel, %ld cached launches, %d threads; "
              "load average %.2f\n\n",
              iters, launches, rep.threads, load);
  Table t({"case", "ops", "median_us", "min_us", "p99_us", "max_us", "internal_med_us",
           "launch_miss_med_us", "bytecode_B", "bar"});
  bool bars = true, fresh_shape_method = true;
  double worst_max = 0, median10 = 0;
  for (int ops : {1, 10, 50}) {
    CodegenResult r = MeasureCodegen(ops, iters);
    fresh_shape_method &= r.output_shapes_generates;
    std::string name = "codegen_" + std::to_string(ops) + "op";
    bool ok = r.wall.max <= kBarMaxUs && (ops != 10 || r.wall.median <= kBarMedian10Us);
    bars &= ok;
    worst_max = std::max(worst_max, r.wall.max);
    if (ops == 10) median10 = r.wall.median;
    t.Row({name, std::to_string(ops), Fmt(r.wall.median), Fmt(r.wall.min), Fmt(r.wall.p99),
           Fmt(r.wall.max), Fmt(r.internal.median), Fmt(r.launch_miss.median),
           std::to_string(r.bytecode_bytes), Bar(ok)});
    JsonObject m;
    m.Num("ops", ops).Num("iters", double(iters));
    m.Num("codegen_us_median", r.wall.median).Num("codegen_us_min", r.wall.min);
    m.Num("codegen_us_max", r.wall.max).Num("codegen_us_p99", r.wall.p99);
    m.Num("codegen_internal_us_median", r.internal.median);
    m.Num("launch_miss_us_median", r.launch_miss.median).Num("launch_miss_us_max", r.launch_miss.max);
    m.Num("bytecode_bytes", double(r.bytecode_bytes));
    rep.AddCase(name, m, "[1.." + std::to_string(iters) + ", 256]");
  }
  uint64_t codegens = 0;
  Stats l = MeasureCachedLaunch(launches, codegens);
  bool launch_ok = l.median <= kBarLaunchUs;
  bars &= launch_ok;
  t.Row({"launch_cached_1024", "1", Fmt(l.median), Fmt(l.min), Fmt(l.p99), Fmt(l.max), "-", "-", "-",
         Bar(launch_ok)});
  JsonObject m;
  m.Num("launch_us_median", l.median).Num("launch_us_min", l.min).Num("launch_us_max", l.max);
  m.Num("launch_us_p99", l.p99).Num("launch_us_mean", l.mean).Num("launches", double(launches));
  m.Num("codegens", double(codegens));
  rep.AddCase("launch_cached_1024", m, "[1024]");
  t.Print();

  const char* method = fresh_shape_method ? "OutputShapes(fresh shape)"
                                          : "Launch(cache capacity 1, alternating shapes)";
  std::printf("\nmethod: %s; internal = stats().last_codegen_us; launch_miss = Launch with cache "
              "capacity 1 on two alternating tiny shapes (run included)\n",
              method);
  std::printf("bars: 10-op median %.2f us <= %.0f us: %s; every max %.2f us <= %.0f us: %s; "
              "cached launch %.2f us <= %.0f us: %s\n",
              median10, kBarMedian10Us, Bar(median10 <= kBarMedian10Us), worst_max, kBarMaxUs,
              Bar(worst_max <= kBarMaxUs), l.median, kBarLaunchUs, Bar(launch_ok));
  rep.summary.Str("method", method).Num("loadavg_1min", load);
  rep.summary.Num("codegen_10op_us_median", median10).Num("codegen_us_max", worst_max);
  rep.summary.Num("launch_cached_us_median", l.median);
  rep.summary.Bool("bar_10op_median_le_10us", median10 <= kBarMedian10Us);
  rep.summary.Bool("bar_max_le_200us", worst_max <= kBarMaxUs);
  rep.summary.Bool("bar_launch_le_2us", launch_ok);
  rep.summary.Bool("bars_met", bars);
  return rep.Write(json) ? 0 : 1;
}

}  // namespace dvmtool
