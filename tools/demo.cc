// `dvm demo`: dynamic-shape execution through the public API. Three dynamic
// kernels of a transformer layer are built once; a stream of requests with
// random sequence lengths runs through them. Each new shape set is encoded
// into bytecode at launch (microseconds); repeated shapes hit the program
// cache. Every output is checked against a scalar loop computed in double.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "bench_util.h"
#include "dvm/dvm.h"
#include "kernels.h"

namespace dvmtool {
namespace {

constexpr double kAtol = 1e-5, kRtol = 1e-4;

// Largest |got - want| and whether every element is within atol + rtol*|want|.
struct Check {
  double max_err = 0;
  bool ok = true;
  void Add(float got, double want) {
    double e = std::fabs(double(got) - want);
    if (!(e <= kAtol + kRtol * std::fabs(want))) ok = false;  // NaN fails too
    max_err = std::max(max_err, std::isnan(e) ? INFINITY : e);
  }
};

// One of the demo's kernels with its launch bookkeeping.
struct DemoKernel {
  const char* name;
  dvm::Kernel k{dvm::KernelType::kDynamic};
  double codegen_us = 0, max_codegen_us = 0, wall_us = 0;
  int max_codegen_seq = 0;

  // Launches; returns true when the program was generated for this launch.
  bool Launch(const std::vector<dvm::TensorArg>& in, const std::vector<dvm::TensorArg>& out,
              int seq, double& codegen, double& wall) {
    uint64_t before = k.stats().codegens;
    double t0 = NowUs();
    k.Launch(in, out);
    double dt = NowUs() - t0;
    bool gen = k.stats().codegens != before;
    double cg = gen ? k.stats().last_codegen_us : 0;
    codegen += cg;
    wall += dt;
    codegen_us += cg;
    wall_us += dt;
    if (cg > max_codegen_us) max_codegen_us = cg, max_codegen_seq = seq;
    return gen;
  }
};

dvm::TensorArg Arg(void* p, dvm::Shape s, size_t elem = sizeof(float)) {
  size_t n = 1;
  for (int64_t d : s) n *= size_t(d);
  return {p, std::move(s), n * elem};
}

}  // namespace

int DemoMain(Args& args) {
  const long requests = args.Int("--requests", 100, 1, 1000000);
  const long seed = args.Int("--seed", 1);
  const long max_len = args.Int("--max-len", 256, 1, 8192);
  const long H = args.Int("--hidden", 768, 1, 65536);
  const long threads = args.Int("--threads", 0, 0, 1024);
  const bool quiet = args.Flag("--quiet");
  args.Finish();
  if (threads > 0) dvm::SetNumThreads(int(threads));
  const long heads = std::max(1L, H / 64), F = 4 * H;

  std::printf("dvm demo: %ld requests, seq ~ U[1, %ld] (seed %ld), hidden %ld, ffn %ld, %ld heads, "
              "%d threads\n",
              requests, max_len, seed, H, F, heads, dvm::GetNumThreads());
  std::printf("kernels (built once, dynamic shapes):\n"
              "  ln      h = x + bias + residual; y = layernorm(h) * gamma + beta   [seq, %ld]\n"
              "  gelu    0.5*x*(1 + tanh(0.79788456*(x + 0.044715*x^3)))           [seq, %ld]\n"
              "  softmax exp(x - max) / sum(exp(x - max)) over the last axis    [%ld*seq, seq]\n\n",
              H, F, heads);

  DemoKernel ln{"ln"}, gelu{"gelu"}, softmax{"softmax"};
  BuildLayerNorm(ln.k, H, true);
  BuildGelu(gelu.k, 2);
  BuildSoftmax(softmax.k);
  for (DemoKernel* d : {&ln, &gelu, &softmax}) {
    d->k.CodeGen();                // dynamic: validates the graph only
    d->k.SetCacheCapacity(1024);   // keep every shape of the stream
  }

  Rng rng{uint64_t(seed)};
  std::vector<float> bias(H), gamma(H), beta(H);
  rng.Fill(bias.data(), H, -0.1f, 0.1f);
  rng.Fill(gamma.data(), H, 0.5f, 1.5f);
  rng.Fill(beta.data(), H, -0.1f, 0.1f);
  const size_t L = size_t(max_len);
  std::vector<float> x(L * H), res(L * H), h(L * H), y(L * H);
  std::vector<float> gx(L * F), gy(L * F), sx(heads * L * L), sy(heads * L * L);

  if (!quiet) std::printf("%5s %5s  %-4s %-4s %-7s %11s %10s %9s\n", "req", "seq", "ln", "gelu",
                          "softmax", "codegen_us", "run_us", "max_err");
  std::set<long> shapes;
  double total_cg = 0, total_wall = 0, steady_wall = 0;
  long steady_n = 0, failures = 0;
  for (long r = 1; r <= requests; ++r) {
    const long S = rng.Int(1, max_len), rows = heads * S;
    shapes.insert(S);
    rng.Fill(x.data(), S * H, -1, 1);
    rng.Fill(res.data(), S * H, -1, 1);
    rng.Fill(gx.data(), S * F, -4, 4);
    rng.Fill(sx.data(), rows * S, -4, 4);

    double cg = 0, wall = 0;
    bool g1 = ln.Launch({Arg(x.data(), {S, H}), Arg(bias.data(), {H}), Arg(res.data(), {S, H}),
                         Arg(gamma.data(), {H}), Arg(beta.data(), {H})},
                        {Arg(h.data(), {S, H}), Arg(y.data(), {S, H})}, S, cg, wall);
    bool g2 = gelu.Launch({Arg(gx.data(), {S, F})}, {Arg(gy.data(), {S, F})}, S, cg, wall);
    bool g3 = softmax.Launch({Arg(sx.data(), {rows, S})}, {Arg(sy.data(), {rows, S})}, S, cg, wall);
    total_cg += cg;
    total_wall += wall;
    if (!g1 && !g2 && !g3) steady_wall += wall, ++steady_n;

    // Scalar references in double.
    Check c;
    std::vector<double> hd(H);
    for (long i = 0; i < S; ++i) {
      double mean = 0, var = 0;
      for (long j = 0; j < H; ++j) {
        hd[j] = double(x[i * H + j]) + bias[j] + res[i * H + j];
        c.Add(h[i * H + j], hd[j]);
        mean += hd[j];
      }
      mean /= H;
      for (long j = 0; j < H; ++j) var += (hd[j] - mean) * (hd[j] - mean);
      double rstd = 1 / std::sqrt(var / H + kLayerNormEps);
      for (long j = 0; j < H; ++j) c.Add(y[i * H + j], (hd[j] - mean) * rstd * gamma[j] + beta[j]);
    }
    for (long i = 0; i < S * F; ++i) {
      double v = gx[i];
      c.Add(gy[i], 0.5 * v * (1 + std::tanh(kGeluC * (v + kGeluA * v * v * v))));
    }
    std::vector<double> e(S);
    for (long i = 0; i < rows; ++i) {
      const float* row = &sx[i * S];
      double m = *std::max_element(row, row + S), sum = 0;
      for (long j = 0; j < S; ++j) sum += e[j] = std::exp(row[j] - m);
      for (long j = 0; j < S; ++j) c.Add(sy[i * S + j], e[j] / sum);
    }
    if (!c.ok) ++failures;
    if (!quiet || !c.ok)
      std::printf("%5ld %5ld  %-4s %-4s %-7s %11.1f %10.1f %9.2e%s\n", r, S, g1 ? "gen" : "hit",
                  g2 ? "gen" : "hit", g3 ? "gen" : "hit", cg, wall - cg, c.max_err,
                  c.ok ? "" : "  MISMATCH");
  }

  uint64_t launches = 0, hits = 0, gens = 0;
  std::printf("\n%-8s %9s %9s %13s %15s %12s\n", "kernel", "programs", "hit_rate", "codegen_us",
              "largest_us(seq)", "wall_us");
  for (DemoKernel* d : {&ln, &gelu, &softmax}) {
    const dvm::KernelStats& s = d->k.stats();
    launches += s.launches, hits += s.cache_hits, gens += s.codegens;
    std::printf("%-8s %9llu %8.1f%% %13.1f %9.1f(%4d) %12.1f\n", d->name,
                (unsigned long long)s.codegens, 100.0 * s.cache_hits / std::max<uint64_t>(1, s.launches),
                d->codegen_us, d->max_codegen_us, d->max_codegen_seq, d->wall_us);
  }
  double largest = std::max({ln.max_codegen_us, gelu.max_codegen_us, softmax.max_codegen_us});
  std::printf("\nsummary: %ld requests, %zu distinct shapes, %llu programs generated\n", requests,
              shapes.size(), (unsigned long long)gens);
  std::printf("  total codegen   %10.1f us (%.2f%% of launch time), largest compile %.1f us\n", total_cg,
              100 * total_cg / std::max(total_wall, 1e-9), largest);
  std::printf("  total run       %10.1f us (launch wall time minus codegen)\n", total_wall - total_cg);
  std::printf("  total launches  %10.1f us wall, %.1f us per request; %.1f us per all-hit request (%ld)\n",
              total_wall, total_wall / requests, steady_n ? steady_wall / steady_n : 0.0, steady_n);
  std::printf("  cache hit rate  %10.1f%% (%llu of %llu launches)\n",
              100.0 * hits / std::max<uint64_t>(1, launches), (unsigned long long)hits,
              (unsigned long long)launches);
  if (failures) {
    std::printf("FAIL: %ld of %ld requests differ from the double reference (atol %g, rtol %g)\n",
                failures, requests, kAtol, kRtol);
    return 1;
  }
  std::printf("PASS: every output matches the double reference (atol %g, rtol %g)\n", kAtol, kRtol);
  return 0;
}

}  // namespace dvmtool
