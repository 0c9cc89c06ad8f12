// `dvm bench eager`: runtime fusion of eager code, fused (ops recorded and
// flushed as fused kernels) against unfused (every op runs at once, as
// eager frameworks do), on two dynamic workloads:
//   solver   damped Newton iteration on a 4M-element f32 tensor, 8
//            elementwise ops per step, convergence checked on the host
//            every 4 steps (item() of a max reduction): the step count
//            depends on the data;
//   decoder  a Llama-style decoder layer (RMSNorm, rotary embeddings,
//            causal attention, SwiGLU MLP) over a stream of sequence
//            lengths drawn from 1..256.
// Both modes run on the same inputs and their results are checked equal
// before their times count. Every repetition uses fresh contexts, so the
// times include every compile and codegen.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench_util.h"
#include "dvm/eager.h"

namespace dvmtool {

using dvm::eager::Context;
using dvm::eager::ContextOptions;
using dvm::eager::ContextScope;
using dvm::eager::EagerStats;
using dvm::eager::Tensor;
namespace ea = dvm::eager;

namespace {

constexpr double kAtol = 1e-4, kRtol = 1e-4;  // fused vs unfused (as demo)

struct RunResult {
  double ms = 0;
  EagerStats st;
  std::vector<std::vector<double>> outputs;
  long steps = 0;
};

// ---- solver
// ------------------------------------------------------------------- Solves
// x^3 + a x = b per element by damped Newton steps
//   x <- x - (x^3 + a x - b) / ((3 x^2 + a) / w)
// with w = 0.5 (linear convergence, so the loop runs for a while); stops
// when max |step| < tol, checked every 4 steps.
struct Solver {
  Tensor a, b, a_over_w;
  double w = 0.5, tol = 1e-5;
  long max_steps = 400;

  Solver(int64_t n, uint64_t seed) {
    a = Tensor::Random({n}, 0.5, 2.0, seed);
    b = Tensor::Random({n}, -2.0, 2.0, seed + 1);
    a_over_w = a / w;
    ea::Sync();
  }

  RunResult Run(bool fuse) const {
    Context ctx({fuse});
    ContextScope scope(ctx);
    RunResult r;
    const double t0 = NowUs();
    Tensor x = Tensor::Zeros(a.shape());
    Tensor d;
    for (long step = 1; step <= max_steps; ++step) {
      Tensor x2 = x * x;          // 1
      Tensor f = (x2 + a) * x;    // 2, 3
      f = f - b;                  // 4
      Tensor g = x2 * (3.0 / w);  // 5
      g = g + a_over_w;           // 6
      d = f / g;                  // 7
      x = x - d;                  // 8
      r.steps = step;
      if (step % 4 == 0 && ea::max(ea::abs(d)).item() < tol) break;
    }
    (void)x.data();               // the result is computed; converting it for the check
    r.ms = (NowUs() - t0) / 1e3;  // below is not timed
    r.outputs.push_back(x.values());
    r.st = ctx.stats();
    return r;
  }
};

// ---- decoder layer
// --------------------------------------------------------------
struct Decoder {
  static constexpr int64_t H = 512, A = 8, D = 64, F = 1408;
  Tensor wq, wk, wv, wo, wg, wu, wd, g1, g2, inv_freq;

  explicit Decoder(uint64_t seed) {
    const double s = 1.0 / std::sqrt(double(H)), sf = 1.0 / std::sqrt(double(F));
    wq = Tensor::Random({H, H}, -s, s, seed + 1);
    wk = Tensor::Random({H, H}, -s, s, seed + 2);
    wv = Tensor::Random({H, H}, -s, s, seed + 3);
    wo = Tensor::Random({H, H}, -s, s, seed + 4);
    wg = Tensor::Random({H, F}, -s, s, seed + 5);
    wu = Tensor::Random({H, F}, -s, s, seed + 6);
    wd = Tensor::Random({F, H}, -sf, sf, seed + 7);
    g1 = Tensor::Random({H}, 0.9, 1.1, seed + 8);
    g2 = Tensor::Random({H}, 0.9, 1.1, seed + 9);
    std::vector<float> f(D / 2);
    for (int64_t i = 0; i < D / 2; ++i) f[i] = float(std::pow(10000.0, -2.0 * double(i) / double(D)));
    inv_freq = Tensor::FromVector(f, {D / 2});
  }

  static Tensor RmsNorm(const Tensor& x, const Tensor& g) {
    return x * ea::rsqrt(ea::mean(x * x, {-1}, true) + 1e-6) * g;
  }
  // x [S, A, D]; cos, sin [S, 1, D].
  static Tensor Rotary(const Tensor& x, const Tensor& c, const Tensor& s) {
    Tensor x1 = ea::slice(x, -1, 0, D / 2), x2 = ea::slice(x, -1, D / 2, D / 2);
    Tensor rot = ea::concat({-x2, x1}, -1);
    return x * c + rot * s;
  }

  Tensor Layer(const Tensor& x) const {
    const int64_t S = x.dim(0);
    Tensor pos = ea::reshape(ea::arange(S), {S, 1});
    Tensor freqs = pos * inv_freq;  // [S, D/2]
    Tensor emb = ea::reshape(ea::concat({freqs, freqs}, -1), {S, 1, D});
    Tensor c = ea::cos(emb), s = ea::sin(emb);
    Tensor h = RmsNorm(x, g1);
    Tensor q = Rotary(ea::reshape(ea::matmul(h, wq), {S, A, D}), c, s);
    Tensor k = Rotary(ea::reshape(ea::matmul(h, wk), {S, A, D}), c, s);
    Tensor v = ea::reshape(ea::matmul(h, wv), {S, A, D});
    q = ea::transpose(q, {1, 0, 2});
    k = ea::transpose(k, {1, 0, 2});
    v = ea::transpose(v, {1, 0, 2});
    Tensor sc = ea::matmul(q, k, false, true) * (1.0 / std::sqrt(double(D))) + ea::causal_mask(S, S);
    Tensor p = ea::exp(sc - ea::max(sc, {-1}, true));
    p = p / ea::sum(p, {-1}, true);
    Tensor o = ea::reshape(ea::transpose(ea::matmul(p, v), {1, 0, 2}), {S, H});
    Tensor x2 = x + ea::matmul(o, wo);
    Tensor h2 = RmsNorm(x2, g2);
    Tensor gate = ea::matmul(h2, wg), up = ea::matmul(h2, wu);
    return x2 + ea::matmul(gate * ea::sigmoid(gate) * up, wd);
  }

  // Both modes over the stream, interleaved per request (drift on a shared
  // machine hits both alike); fresh contexts, so compiles are included.
  std::pair<RunResult, RunResult> Run(const std::vector<Tensor>& xs) const {
    Context fused({true}), unfused({false});
    RunResult r[2];
    Context* ctx[2] = {&fused, &unfused};
    for (size_t i = 0; i < xs.size(); ++i)
      for (int m = 0; m < 2; ++m) {
        const int mode = (i % 2) ? 1 - m : m;  // alternate who goes first
        ContextScope scope(*ctx[mode]);
        const double t0 = NowUs();
        Tensor y = Layer(xs[i]);
        (void)y.data();  // flush; the conversion for the check is not timed
        r[mode].ms += (NowUs() - t0) / 1e3;
        r[mode].outputs.push_back(y.values());
      }
    for (int m = 0; m < 2; ++m) {
      r[m].st = ctx[m]->stats();
      r[m].steps = long(xs.size());
    }
    return {std::move(r[0]), std::move(r[1])};
  }
};

// Record cost alone, steady state: `body` records a trace whose values are
// all dropped, so each Sync forgets it without running anything.
double SteadyRecordNs(const std::function<void()>& body, int iters) {
  Context ctx({true, 1 << 20});
  ContextScope scope(ctx);
  for (int i = 0; i < iters; ++i) {
    body();
    ctx.Sync();
  }
  return ctx.stats().record_ns / double(std::max<uint64_t>(ctx.stats().ops, 1));
}

double MaxErr(const RunResult& f, const RunResult& u, bool* ok) {
  double err = 0;
  *ok = f.outputs.size() == u.outputs.size() && f.steps == u.steps;
  for (size_t k = 0; *ok && k < f.outputs.size(); ++k) {
    if (f.outputs[k].size() != u.outputs[k].size()) {
      *ok = false;
      break;
    }
    for (size_t i = 0; i < f.outputs[k].size(); ++i) {
      const double e = std::fabs(f.outputs[k][i] - u.outputs[k][i]);
      err = std::max(err, std::isnan(e) ? INFINITY : e);
      if (!(e <= kAtol + kRtol * std::fabs(u.outputs[k][i]))) *ok = false;
    }
  }
  return err;
}

struct Workload {
  std::string name;
  double ratio_bar = 0;
  std::vector<double> fused_ms, unfused_ms, record_ns, codegen_ms, compile_ms, hit_rate;
  RunResult last_fused, last_unfused;
  double max_err = 0;
  bool equal = true;
  double record_steady_ns = 0;
};

// `run` returns the (fused, unfused) results of one repetition.
void Measure(Workload& w, long reps, const std::function<std::pair<RunResult, RunResult>()>& run) {
  (void)run();  // warm the thread pool and the allocator
  for (long rep = 0; rep < reps; ++rep) {
    auto [f, u] = run();
    bool ok = false;
    w.max_err = std::max(w.max_err, MaxErr(f, u, &ok));
    w.equal = w.equal && ok;
    w.fused_ms.push_back(f.ms);
    w.unfused_ms.push_back(u.ms);
    w.record_ns.push_back(f.st.record_ns / double(std::max<uint64_t>(f.st.ops, 1)));
    w.codegen_ms.push_back(f.st.codegen_us / 1e3);
    w.compile_ms.push_back(f.st.compile_us / 1e3);
    const double lookups = double(f.st.cache_hits + f.st.cache_misses);
    w.hit_rate.push_back(lookups ? double(f.st.cache_hits) / lookups : 0);
    w.last_fused = std::move(f);
    w.last_unfused = std::move(u);
  }
}

}  // namespace

int BenchEagerMain(Args& args) {
  const long reps = args.Int("--reps", 3, 1, 1000);
  BenchOptions b = BenchOptions::Read(args);
  const long n = args.Int("--n", 4L << 20, 1, 1L << 30);
  const long requests = args.Int("--requests", 100, 1, 100000);
  const long seed = args.Int("--seed", 1, 0, 1L << 40);
  args.Finish();
  const int threads = b.StartThreads();
  std::printf(
      "bench eager: %d threads, load average %.2f, %ld reps "
      "(fresh contexts each: times include compiles)\n",
      threads, LoadAverage(), reps);

  std::vector<Workload> ws;
  if (!b.Skip("solver")) {
    Workload w;
    w.name = "solver";
    w.ratio_bar = 2.5;
    Solver solver(n, uint64_t(seed));
    long round = 0;
    Measure(w, reps, [&] {  // alternate which mode runs first
      const bool fused_first = round++ % 2 == 0;
      RunResult a = solver.Run(fused_first), b = solver.Run(!fused_first);
      return fused_first ? std::make_pair(std::move(a), std::move(b)) : std::make_pair(std::move(b), std::move(a));
    });
    Tensor small = Tensor::Zeros({1024});
    w.record_steady_ns = SteadyRecordNs(
        [&] {
          Tensor x = small, x2 = x * x, f = (x2 + 1.0) * x - 1.0;
          Tensor g = x2 * 6.0 + 2.0, d = f / g;
          x = x - d;
        },
        2000);
    std::printf("solver: %ld elements, %ld steps (converged by data)\n", n, w.last_fused.steps);
    ws.push_back(std::move(w));
  }
  if (!b.Skip("decoder")) {
    Workload w;
    w.name = "decoder";
    w.ratio_bar = 1.1;
    Decoder dec(uint64_t(seed) * 100);
    std::mt19937_64 rng{static_cast<uint64_t>(seed)};
    std::vector<Tensor> xs;
    for (long i = 0; i < requests; ++i) {
      const int64_t S = 1 + int64_t(rng() % 256);
      xs.push_back(Tensor::Random({S, Decoder::H}, -1, 1, uint64_t(seed) + i));
    }
    Measure(w, reps, [&] { return dec.Run(xs); });
    w.record_steady_ns = SteadyRecordNs([&] { Tensor y = dec.Layer(xs[0]); }, 300);
    std::printf(
        "decoder: hidden 512, 8 heads, MLP 1408, %ld sequence "
        "lengths from 1..256\n",
        requests);
    ws.push_back(std::move(w));
  }

  Table t({"workload", "fused_ms", "unfused_ms", "speedup", "record_ns/op", "steady", "codegen_ms", "compile_ms",
           "hit_rate", "kernels f/u", "max_err", "equal"});
  Report rep("eager", threads);
  bool all_pass = true, all_equal = true;
  std::vector<std::string> bars;
  for (Workload& w : ws) {
    const Stats f = Summarize(w.fused_ms), u = Summarize(w.unfused_ms);
    const double ratio = u.median / std::max(f.median, 1e-9);
    const double rec = Summarize(w.record_ns).median;
    const double cg = Summarize(w.codegen_ms).median;
    const double comp = Summarize(w.compile_ms).median;
    const double hit = Summarize(w.hit_rate).median;
    const double cg_pct = 100 * cg / std::max(f.median, 1e-9);
    t.Row({w.name, Fmt(f.median), Fmt(u.median), Fmt(ratio) + "x", Fmt(rec, 0), Fmt(w.record_steady_ns, 0), Fmt(cg, 3),
           Fmt(comp, 2), Fmt(hit, 3),
           std::to_string(w.last_fused.st.kernels) + "/" + std::to_string(w.last_unfused.st.kernels), Sci(w.max_err),
           w.equal ? "yes" : "NO"});
    JsonObject m;
    m.Num("fused_ms", f.median).Num("fused_ms_min", f.min).Num("fused_ms_max", f.max);
    m.Num("unfused_ms", u.median).Num("unfused_ms_min", u.min).Num("unfused_ms_max", u.max);
    m.Num("speedup", ratio).Num("record_ns_per_op", rec);
    m.Num("record_ns_per_op_steady", w.record_steady_ns);
    m.Num("codegen_ms_total", cg).Num("codegen_pct_of_fused", cg_pct);
    m.Num("compile_ms_total", comp).Num("cache_hit_rate", hit);
    m.Num("ops", double(w.last_fused.st.ops));
    m.Num("flushes", double(w.last_fused.st.flushes));
    m.Num("kernels_fused", double(w.last_fused.st.kernels));
    m.Num("kernels_unfused", double(w.last_unfused.st.kernels));
    m.Num("codegens", double(w.last_fused.st.codegens));
    m.Num("allocations_fused", double(w.last_fused.st.allocations));
    m.Num("allocations_unfused", double(w.last_unfused.st.allocations));
    m.Num("steps", double(w.last_fused.steps));
    m.Num("max_abs_err", w.max_err).Bool("outputs_equal", w.equal);
    rep.AddCase(w.name, m);
    const bool b_ratio = ratio >= w.ratio_bar, b_rec = rec <= 300, b_cg = cg_pct <= 5;
    all_pass = all_pass && b_ratio && b_rec && b_cg;
    all_equal = all_equal && w.equal;
    char line[256];
    std::snprintf(line, sizeof line, "  %-8s unfused_ms / fused_ms      = %6.2f  (>= %.1f)  %s", w.name.c_str(), ratio,
                  w.ratio_bar, Bar(b_ratio));
    bars.push_back(line);
    std::snprintf(line, sizeof line, "  %-8s record_ns_per_op           = %6.0f  (<= 300)  %s", w.name.c_str(), rec,
                  Bar(b_rec));
    bars.push_back(line);
    std::snprintf(line, sizeof line, "  %-8s codegen_ms_total / fused   = %5.2f%%  (<= 5%%)   %s", w.name.c_str(),
                  cg_pct, Bar(b_cg));
    bars.push_back(line);
    rep.summary.Num(w.name + "_speedup", ratio)
        .Bool(w.name + "_bar_speedup", b_ratio)
        .Bool(w.name + "_bar_record_ns", b_rec)
        .Bool(w.name + "_bar_codegen_pct", b_cg);
  }
  std::printf("\n");
  t.Print();
  std::printf("\nbars (medians of %ld reps):\n", reps);
  for (const std::string& l : bars) std::printf("%s\n", l.c_str());
  std::printf("%s: fused results %s unfused (atol %g, rtol %g)\n", all_equal ? "PASS" : "FAIL",
              all_equal ? "equal" : "DIFFER from", kAtol, kRtol);
  rep.summary.Bool("outputs_equal", all_equal).Bool("all_bars", all_pass);
  if (!rep.Write(b.json)) return 1;
  return all_equal ? 0 : 1;
}

}  // namespace dvmtool
