// `dvm bench stack`: one Adam optimizer step over 300 f32 tensors whose sizes
// are drawn log-uniformly from [64, 16384] elements (seeded), three ways on
// the same number of threads:
//  * separate: one dynamic DVM kernel per tensor, launched once per tensor
//              (300 launches of cached programs, each waiting for the last)
//  * stacked:  the same 300 kernels recorded into a dvm::KernelStack and run
//              as one stacked launch; timed per step as Clear() + 300 Add()
//              + Launch(), as an optimizer loop would call it (Launch() of an
//              already recorded stack is reported as stacked_launch_us, and
//              the Clear + Add part of the timed steps as stacked_add_us)
//  * aot:      one hand-written loop over all tensors (compiled -O3
//              -march=native with this file), parallel over tensors: each
//              thread takes a contiguous run of tensors holding ~1/threads
//              of the elements
// Also reported, not barred: separate_shared_us, the 300 launches through one
// shared dynamic kernel holding all 300 programs in its cache.
//
// Per tensor: inputs p, g, m, v; scalars as Binary(op, x, scalar) constants
// (lr 1e-3, beta1 0.9, beta2 0.999, eps 1e-8, step t = 10):
//   m' = m * b1 + g * (1 - b1)
//   v' = v * b2 + (g * g) * (1 - b2)
//   p' = p - (m' / (1 - b1^t)) * lr / (sqrt(v' / (1 - b2^t)) + eps)
// outputs p', m', v' (to separate buffers, so every step computes the same).
// Checked before times count: separate and stacked bit-equal, aot close
// (|x - aot| <= 1e-9 + 1e-5 |aot|; GCC contracts the baseline's a * b + c
// into FMAs). Timing as bench vm (interleaved rounds of back-to-back
// blocks, a 2 ms pause and >= 3 untimed calls before each run of blocks),
// in two series: stacked, aot and Launch only for the aot bar; separate,
// stacked and shared for the separate bar (the one-tensor launches slow
// whatever block follows them in the host's busy minutes; see below).
// Bars: separate_us / stacked_us >= 2; aot_us / stacked_us >= 0.8.
// The baseline thread pool is aot_util.h's (as bench vm's).

// See aot_util.h (it must come before the includes, and aot_util.h repeats
// it). The baseline's sqrt also needs -fno-math-errno, which CMakeLists.txt
// passes for this file: as a pragma it left the loop scalar (until session
// 12 the baseline ran one element at a time, 1.7 ms per step instead of
// ~0.22, and aot/stacked read 1.5-2.5 where it is ~0.3).
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

// ---- Adam ------------------------------------------------------------------------
constexpr int kTensors = 300;
constexpr int64_t kMinSize = 64, kMaxSize = 16384;
constexpr double kLr = 1e-3, kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;
constexpr int kStep = 10;

struct AdamConsts {
  double b1 = kBeta1, c1 = 1.0 - kBeta1, b2 = kBeta2, c2 = 1.0 - kBeta2;
  double bc1 = 1.0 - std::pow(kBeta1, kStep), bc2 = 1.0 - std::pow(kBeta2, kStep);
  double lr = kLr, eps = kEps;
};

// Inputs p, g, m, v [?]; outputs p', m', v'.
void BuildAdam(dvm::Kernel& k, const AdamConsts& a) {
  const DType f = DType::kFloat32;
  NDObject* p = k.Load(nullptr, {-1}, f);
  NDObject* g = k.Load(nullptr, {-1}, f);
  NDObject* m = k.Load(nullptr, {-1}, f);
  NDObject* v = k.Load(nullptr, {-1}, f);
  NDObject* m1 = k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, m, a.b1), k.Binary(BinaryOp::kMul, g, a.c1));
  NDObject* v1 = k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, v, a.b2),
                          k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kMul, g, g), a.c2));
  NDObject* mh = k.Binary(BinaryOp::kDiv, m1, a.bc1);
  NDObject* vh = k.Binary(BinaryOp::kDiv, v1, a.bc2);
  NDObject* den = k.Binary(BinaryOp::kAdd, k.Unary(UnaryOp::kSqrt, vh), a.eps);
  NDObject* upd = k.Binary(BinaryOp::kDiv, k.Binary(BinaryOp::kMul, mh, a.lr), den);
  k.Store(nullptr, k.Binary(BinaryOp::kSub, p, upd));
  k.Store(nullptr, m1);
  k.Store(nullptr, v1);
}

enum { kP, kG, kM, kV, kNumIn };
enum Impl { kSeparate, kStacked, kAot, kShared, kNumImpl };
const char* kImplName[kNumImpl] = {"separate", "stacked", "aot", "separate_shared"};

struct Problem {
  std::vector<int64_t> size, off;  // per tensor: elements, offset (multiple of 16) into the arenas
  size_t total = 0;                // elements
  size_t span = 0;                 // arena length
  std::vector<Buf> in;             // p, g, m, v
  std::vector<Buf> out[kNumImpl];  // p', m', v' of each implementation
};

Problem MakeProblem(uint64_t seed) {
  Problem pr;
  Rng rng(seed);
  const float lo = std::log(float(kMinSize)), hi = std::log(float(kMaxSize));
  for (int i = 0; i < kTensors; ++i) {
    int64_t n = std::clamp<int64_t>(std::llround(std::exp(rng.Uniform(lo, hi))), kMinSize, kMaxSize);
    pr.off.push_back(int64_t(pr.span));
    pr.size.push_back(n);
    pr.total += n;
    pr.span += (n + 15) / 16 * 16;
  }
  for (int a = 0; a < kNumIn; ++a) pr.in.emplace_back(pr.span);
  for (auto& o : pr.out)
    for (int a = 0; a < 3; ++a) o.emplace_back(pr.span);
  rng.Fill(pr.in[kP].get(), pr.span, -1, 1);
  rng.Fill(pr.in[kG].get(), pr.span, -0.1f, 0.1f);
  rng.Fill(pr.in[kM].get(), pr.span, -0.01f, 0.01f);
  rng.Fill(pr.in[kV].get(), pr.span, 0, 1e-4f);
  return pr;
}

// Launch arguments of tensor i into the outputs of implementation `impl`.
struct LaunchArgs {
  std::vector<dvm::TensorArg> in, out;
};
LaunchArgs ArgsOf(const Problem& pr, int i, Impl impl) {
  LaunchArgs a;
  const int64_t n = pr.size[i], o = pr.off[i];
  for (int k = 0; k < kNumIn; ++k) a.in.push_back({pr.in[k].get() + o, {n}, size_t(n) * 4});
  for (int k = 0; k < 3; ++k) a.out.push_back({pr.out[impl][k].get() + o, {}, size_t(n) * 4});
  return a;
}

// One tensor's step (a function of its own, with the pointers as
// restrict parameters: inside AotStep GCC 12 left the loop scalar).
void AdamLoop(const float* __restrict p, const float* __restrict g, const float* __restrict m,
              const float* __restrict v, float* __restrict po, float* __restrict mo, float* __restrict vo, int64_t n,
              const AdamConsts& a) {
  const float B1 = float(a.b1), C1 = float(a.c1), B2 = float(a.b2), C2 = float(a.c2);
  const float BC1 = float(a.bc1), BC2 = float(a.bc2), LR = float(a.lr), EPS = float(a.eps);
  for (int64_t j = 0; j < n; ++j) {
    const float gj = g[j];
    const float m1 = m[j] * B1 + gj * C1;
    const float v1 = v[j] * B2 + (gj * gj) * C2;
    const float den = std::sqrt(v1 / BC2) + EPS;
    po[j] = p[j] - ((m1 / BC1) * LR) / den;
    mo[j] = m1;
    vo[j] = v1;
  }
}

// The hand-written step: thread t runs tensors [first[t], first[t + 1]).
void AotStep(const Problem& pr, const std::vector<int>& first, int t, const AdamConsts& a) {
  for (int i = first[t]; i < first[t + 1]; ++i) {
    const int64_t o = pr.off[i];
    AdamLoop(pr.in[kP].get() + o, pr.in[kG].get() + o, pr.in[kM].get() + o, pr.in[kV].get() + o,
             pr.out[kAot][0].get() + o, pr.out[kAot][1].get() + o, pr.out[kAot][2].get() + o, pr.size[i], a);
  }
}

// Empty when the outputs of `x` and `ref` agree (bit-equal when `exact`);
// else the first element that differs. max_err gets the largest |x - ref|.
std::string Compare(const Problem& pr, Impl x, Impl ref, bool exact, double& max_err) {
  static const char* kOut[3] = {"p'", "m'", "v'"};
  max_err = 0;
  for (int k = 0; k < 3; ++k)
    for (int i = 0; i < kTensors; ++i) {
      const float* a = pr.out[x][k].get() + pr.off[i];
      const float* b = pr.out[ref][k].get() + pr.off[i];
      for (int64_t j = 0; j < pr.size[i]; ++j) {
        if (!Matches(a[j], b[j], exact, 1e-9, 1e-5, max_err)) {
          char msg[200];
          std::snprintf(msg, sizeof msg, "%s vs %s: %s of tensor %d, element %lld: %.9g vs %.9g", kImplName[x],
                        kImplName[ref], kOut[k], i, static_cast<long long>(j), a[j], b[j]);
          return msg;
        }
      }
    }
  return "";
}

}  // namespace

int BenchStackMain(Args& args) {
  const BenchOptions opt = BenchOptions::Read(args, /*with_filter=*/false);
  const long seed = args.Int("--seed", 1, 0, 1L << 40);
  args.Finish();
  const int nt = opt.StartThreads();
  Pool pool(nt);
  const AdamConsts ac;
  const int64_t native_before = dvm::vm::NativeProgramsCompiled();

  Problem pr = MakeProblem(uint64_t(seed));
  const double bytes = 7.0 * double(pr.total) * 4;  // 4 arrays read, 3 written
  Report rep{"stack", nt};
  const double load = LoadAverage();
  std::printf(
      "dvm bench stack: Adam step, %d tensors of %lld..%lld elements (log-uniform, seed %ld), "
      "%zu elements, %.1f MiB moved; %d threads, reps %ld, medians; load average %.2f\n\n",
      kTensors, static_cast<long long>(*std::min_element(pr.size.begin(), pr.size.end())),
      static_cast<long long>(*std::max_element(pr.size.begin(), pr.size.end())), seed, pr.total, bytes / (1 << 20), nt,
      opt.reps, load);

  // One kernel per tensor (one cached program each), and one shared kernel.
  std::vector<std::unique_ptr<dvm::Kernel>> kernels;
  dvm::Kernel shared(dvm::KernelType::kDynamic);
  BuildAdam(shared, ac);
  shared.SetCacheCapacity(2 * kTensors);
  std::vector<LaunchArgs> args_of[kNumImpl];
  for (int i = 0; i < kTensors; ++i) {
    kernels.push_back(std::make_unique<dvm::Kernel>(dvm::KernelType::kDynamic));
    BuildAdam(*kernels.back(), ac);
    for (Impl impl : {kSeparate, kStacked, kShared}) args_of[impl].push_back(ArgsOf(pr, i, impl));
  }
  // AOT partition: contiguous runs of tensors, ~total/threads elements each.
  std::vector<int> first(nt + 1, kTensors);
  {
    first[0] = 0;
    size_t cum = 0;
    int t = 1;
    for (int i = 0; i < kTensors && t < nt; ++i) {
      cum += pr.size[i];
      while (t < nt && cum * nt >= pr.total * size_t(t)) first[t++] = i + 1;
    }
  }

  dvm::KernelStack stack;
  auto separate = [&] {
    for (int i = 0; i < kTensors; ++i) kernels[i]->Launch(args_of[kSeparate][i].in, args_of[kSeparate][i].out);
  };
  // The Clear + Add part of each timed stacked step, apart (a diagnostic:
  // the Adds run on the caller alone, with the launch before them having
  // evicted what they read).
  std::vector<double> add_us;
  bool timing = false;
  auto stacked = [&] {
    const double t0 = timing ? NowUs() : 0;
    stack.Clear();
    for (int i = 0; i < kTensors; ++i) stack.Add(*kernels[i], args_of[kStacked][i].in, args_of[kStacked][i].out);
    if (timing) add_us.push_back(NowUs() - t0);
    stack.Launch();
  };
  auto stacked_launch = [&] { stack.Launch(); };
  auto aot = [&] {
    auto body = [&](int t) { AotStep(pr, first, t, ac); };
    pool.Run(body);
  };
  auto shared_run = [&] {
    for (int i = 0; i < kTensors; ++i) shared.Launch(args_of[kShared][i].in, args_of[kShared][i].out);
  };

  std::string err;
  double err_stacked = 0, err_shared = 0, err_aot = 0;
  // Per-call times: t1 of stacked, aot, Launch only; t2 of separate,
  // stacked, shared.
  std::vector<std::vector<double>> t1, t2;
  try {
    separate(), stacked(), aot(), shared_run();
    pool.Park();
    err = Compare(pr, kStacked, kSeparate, true, err_stacked);
    if (err.empty()) err = Compare(pr, kShared, kSeparate, true, err_shared);
    if (err.empty()) err = Compare(pr, kSeparate, kAot, false, err_aot);
    if (err.empty()) err = Compare(pr, kStacked, kAot, false, err_aot);
    if (err.empty()) {
      // Two series of interleaved blocks, one per bar (until session 27
      // all five implementations in one series). The 300 one-tensor
      // launches of `separate` and `shared` slow the block that follows
      // them in the host's busy minutes, whatever it is (docs/design.md,
      // Stacking, session 27), so the stacked step and the hand loop are
      // timed against each other without them, and the one-tensor
      // launches against a stacked step of their own series. 140
      // alternating runs against one series in the order separate,
      // stacked, shared, aot, Launch only: aot/stacked below 0.8 in 0
      // against 7 (busy minutes' medians 1.06 and 1.01).
      timing = true;
      t1 = MeasureBlocks({stacked, aot, stacked_launch}, int(opt.reps), 3, [&pool] { pool.Park(); });
      timing = false;
      t2 = MeasureBlocks({separate, stacked, shared_run}, int(opt.reps), 3, [&pool] { pool.Park(); });
      // Checked again on the timed calls' outputs: a program run often
      // enough is compiled to native code while it is timed (jit.h).
      double e1 = 0, e2 = 0, e3 = 0;
      err = Compare(pr, kStacked, kSeparate, true, e1);
      if (err.empty()) err = Compare(pr, kShared, kSeparate, true, e2);
      if (err.empty()) err = Compare(pr, kStacked, kAot, false, e3);
      if (!err.empty()) err = "after timing: " + err;
      err_aot = std::max(err_aot, e3);
    }
  } catch (const dvm::Error& e) {
    err = std::string("dvm::Error: ") + e.what();
  }
  JsonObject m;
  m.Num("tensors", kTensors).Num("elements", double(pr.total)).Num("bytes", bytes);
  m.Num("max_abs_diff_aot", err_aot);
  if (!err.empty()) {
    std::printf("adam FAILED: %s\n", err.c_str());
    m.Bool("failed", true).Str("error", err);
    rep.AddCase("adam", m);
    rep.summary.Num("loadavg_1min", load).Num("failed", 1);
    rep.Write(opt.json);
    return 1;
  }
  const Stats st = Summarize(t1[0]), a = Summarize(t1[1]), sl = Summarize(t1[2]);
  const Stats s = Summarize(t2[0]), st2 = Summarize(t2[1]), sh = Summarize(t2[2]);  // st2: separate's series
  const double sep_ratio = s.median / st2.median, aot_ratio = a.median / st.median;
  const bool bar_sep = sep_ratio >= 2, bar_aot = aot_ratio >= 0.8;
  Table t({"impl", "us/step", "min", "max", "GB/s", "vs stacked"});
  auto row = [&](const char* name, const Stats& x, const Stats& ref, bool moves = true) {
    t.Row({name, Fmt(x.median, 1), Fmt(x.min, 1), Fmt(x.max, 1), moves ? Fmt(bytes / x.median / 1e3, 1) : "-",
           Fmt(x.median / ref.median)});
  };
  const Stats ad = Summarize(add_us);
  row("stacked (Clear+Add+Launch)", st, st);
  row("  of which Clear+Add", ad, st, false);
  row("stacked (Launch only)", sl, st);
  row("aot (one loop)", a, st);
  row("stacked, separate's series", st2, st2);
  row("separate (300 launches)", s, st2);
  row("separate, one shared kernel", sh, st2);
  t.Print();
  std::printf("\nbars: separate/stacked %.2f >= 2: %s; aot/stacked %.2f >= 0.8: %s\n", sep_ratio, Bar(bar_sep),
              aot_ratio, Bar(bar_aot));
  m.Num("separate_us", s.median).Num("separate_us_min", s.min).Num("separate_us_max", s.max);
  m.Num("stacked_us", st.median).Num("stacked_us_min", st.min).Num("stacked_us_max", st.max);
  m.Num("stacked_us_separate_series", st2.median);
  m.Num("stacked_launch_us", sl.median).Num("stacked_add_us", ad.median);
  m.Num("aot_us", a.median).Num("aot_us_min", a.min).Num("aot_us_max", a.max);
  m.Num("separate_shared_us", sh.median);
  m.Num("separate_over_stacked", sep_ratio).Num("aot_over_stacked", aot_ratio);
  m.Num("stacked_gbps", bytes / st.median / 1e3).Num("reps", double(t1[0].size()));
  rep.AddCase("adam", m, std::to_string(kTensors) + " tensors");
  rep.summary.Num("loadavg_1min", load).Num("failed", 0);
  rep.summary.Bool("bar_separate_over_stacked_ge_2", bar_sep).Bool("bar_aot_over_stacked_ge_0_8", bar_aot);
  NoteNativePrograms(rep.summary, native_before);
  bool wrote = rep.Write(opt.json);
  return wrote ? 0 : 1;
}

}  // namespace dvmtool
