// `dvm bench matmul`: f32 GEMM through DVM (a dynamic kernel Load A, Load B,
// Store(MatMul(A, B)); cached program) against the libraries DVM calls, each
// called directly on the same data in the same run with its own threading set
// to the same thread count: OpenBLAS's cblas_sgemm and, where DVM was built
// with it, oneDNN's dnnl_sgemm (OpenMP). DVM cuts C into blocks and runs each
// block as a single-threaded library call on its own pool (vm/cpu/gemm.h says
// which library a block gets); a library threads one call itself. blas_* is
// the faster of the two libraries in each case (blas_lib names it).
//
// Shapes: 256^3, 1024^3 and M in {1, 32, 128, 512} x K = 768 x N in {768,
// 3072}. Every case with M >= 32 also times a bias + GELU (tanh form)
// epilogue three ways:
//  * fused:     one DVM kernel, GELU_tanh(MatMul(A, B) + bias)
//  * unfused:   the DVM GEMM kernel, then a DVM add-bias kernel, then a DVM
//               GELU kernel (three launches, two intermediates in memory;
//               the GELU kernel is kernels.h's BuildGelu, itself one kernel)
//  * gemm_only: the DVM GEMM kernel alone (the same measurement as dvm_us)
//
// Inputs are uniform in [-1, 1). Results are checked before times count:
// max over elements of |x - ref| / max(|ref|, 1) <= 1e-4, where ref is the
// BLAS result (and, for the epilogue, bias + GELU of it in double).
//
// Ratios: dvm_over_blas = dvm_gflops / blas_gflops (higher is better; bar
// >= 0.9 at 1024^3 and M = 512, against the faster library); fused_over_gemm = fused_us / gemm_only_us
// (lower is better; bar <= 1.15 at M >= 128).
//
// Timing follows bench vm: each implementation runs its timed blocks back to
// back, in interleaved rounds; short calls repeat inside a block for
// ~1 ms; before each run of blocks a pause (2 ms, or kSlowIdleMs after a
// library's blocks: OpenBLAS's idle workers spin for ~100 ms before they sleep
// and would take the cores DVM's pool needs; OpenMP's spin too) and >= 3
// untimed calls.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.h"
#include "dvm/dvm.h"
#include "kernels.h"
#include "vm/cpu/gemm.h"

namespace dvmtool {
namespace {

constexpr double kMaxRelErr = 1e-4;
constexpr double kBarGflops = 0.9, kBarFused = 1.15;

// 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))), as BuildGelu.
NDObject* Gelu(dvm::Kernel& k, NDObject* x) {
  NDObject* x3 = k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kMul, x, x), x);
  NDObject* u = k.Binary(BinaryOp::kAdd, x, k.Binary(BinaryOp::kMul, x3, kGeluA));
  NDObject* t = k.Unary(UnaryOp::kTanh, k.Binary(BinaryOp::kMul, u, kGeluC));
  return k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kMul, x, 0.5), k.Binary(BinaryOp::kAdd, t, 1.0));
}

double GeluRef(double x) {
  return 0.5 * x * (1.0 + std::tanh(kGeluC * (x + kGeluA * x * x * x)));
}

// max |x - ref| / max(|ref|, 1); infinite on NaN.
double MaxRelErr(const float* x, const float* ref, size_t n) {
  double e = 0;
  for (size_t i = 0; i < n; ++i) {
    double d = std::fabs(double(x[i]) - double(ref[i])) / std::max(std::fabs(double(ref[i])), 1.0);
    if (!(d <= e)) e = std::isnan(d) ? INFINITY : d;
  }
  return e;
}

struct Shape3 {
  int64_t m, k, n;
};

std::vector<Shape3> AllShapes() {
  std::vector<Shape3> v = {{256, 256, 256}, {1024, 1024, 1024}};
  for (int64_t m : {1, 32, 128, 512})
    for (int64_t n : {768, 3072}) v.push_back({m, 768, n});
  return v;
}

std::string CaseName(const Shape3& s) {
  return "gemm_" + std::to_string(s.m) + "x" + std::to_string(s.k) + "x" + std::to_string(s.n);
}

}  // namespace

int BenchMatmulMain(Args& args) {
  const BenchOptions opt = BenchOptions::Read(args);
  args.Finish();
  const int nt = opt.StartThreads();
  const int blas_threads_before = openblas_get_num_threads();

  Report rep{"matmul", nt};
  const double load = LoadAverage();
  const bool have_onednn = [] {
    float a = 1, b = 2, c = 0;  // also JIT-compiles oneDNN's kernels before anything is timed
    return dvm::vm::SgemmWith(dvm::vm::GemmLib::kOneDnn, 1, false, false, 1, 1, 1, &a, 1, &b, 1, &c, 1);
  }();
  const std::string policy = dvm::vm::GemmPolicy();
  Worker onednn_thread;
  std::printf(
      "dvm bench matmul: %d threads (DVM pool; the libraries set to %d for their own calls), reps %ld, "
      "medians; load average %.2f\n"
      "DVM's GEMM blocks: %s\n"
      "blas = the faster of OpenBLAS%s called directly (blas_lib); "
      "unfused = DVM GEMM kernel + DVM add-bias kernel + DVM GELU kernel\n\n",
      nt, nt, opt.reps, load, policy.c_str(), have_onednn ? " and oneDNN" : "");

  // The DVM kernels, shared by every shape (dynamic; one cached program per shape).
  dvm::Kernel gemm(dvm::KernelType::kDynamic), fused(dvm::KernelType::kDynamic),
      add_bias(dvm::KernelType::kDynamic), gelu(dvm::KernelType::kDynamic);
  {
    auto* a = gemm.Load(nullptr, {-1, -1}, DType::kFloat32);
    auto* b = gemm.Load(nullptr, {-1, -1}, DType::kFloat32);
    gemm.Store(nullptr, gemm.MatMul(a, b));
    auto* fa = fused.Load(nullptr, {-1, -1}, DType::kFloat32);
    auto* fb = fused.Load(nullptr, {-1, -1}, DType::kFloat32);
    auto* bias = fused.Load(nullptr, {-1}, DType::kFloat32);
    fused.Store(nullptr, Gelu(fused, fused.Binary(BinaryOp::kAdd, fused.MatMul(fa, fb), bias)));
    auto* x = add_bias.Load(nullptr, {-1, -1}, DType::kFloat32);
    auto* ab = add_bias.Load(nullptr, {-1}, DType::kFloat32);
    add_bias.Store(nullptr, add_bias.Binary(BinaryOp::kAdd, x, ab));
    BuildGelu(gelu, 2);
    for (dvm::Kernel* k : {&gemm, &fused, &add_bias, &gelu}) k->SetCacheCapacity(32);
  }

  Table t({"case", "dvm_us", "openblas_us", "onednn_us", "dvm_GF", "blas_GF", "dvm/blas", "fused_us", "unfused_us",
           "gemm_us", "fused/gemm", "max_err", "bar"});
  int failed = 0;
  bool bar_gflops = true, bar_fused = true;
  int n_bar_gflops = 0, n_bar_fused = 0;
  std::string miss_gflops, miss_fused;
  for (const Shape3& s : AllShapes()) {
    const std::string name = CaseName(s);
    if (opt.Skip(name)) continue;
    const int64_t M = s.m, K = s.k, N = s.n;
    const bool epilogue = M >= 32;
    const double flops = 2.0 * M * K * N;
    Buf A(M * K), B(K * N), bias(N), c_dvm(M * N), c_blas(M * N), c_onednn(M * N);
    Rng rng(uint64_t(M * 1000003 + K * 1009 + N));
    rng.Fill(A.get(), A.n, -1, 1), rng.Fill(B.get(), B.n, -1, 1), rng.Fill(bias.get(), N, -1, 1);
    std::unique_ptr<Buf> c_fused, c_unfused, tmp1, tmp2;
    if (epilogue) {
      c_fused = std::make_unique<Buf>(M * N), c_unfused = std::make_unique<Buf>(M * N);
      tmp1 = std::make_unique<Buf>(M * N), tmp2 = std::make_unique<Buf>(M * N);
    }
    const dvm::Shape sa{M, K}, sb{K, N}, sc{M, N}, sbias{N};
    const size_t cbytes = size_t(M * N) * 4;
    auto run_gemm = [&](float* out) {
      gemm.Launch({{A.get(), sa, 0}, {B.get(), sb, 0}}, {{out, {}, cbytes}});
    };
    auto direct = [&](dvm::vm::GemmLib lib, float* c) {
      dvm::vm::SgemmWith(lib, nt, false, false, M, N, K, A.get(), K, B.get(), N, c, N);
    };
    // impl: 0 DVM, 1 OpenBLAS, [2 oneDNN], then fused and unfused.
    std::vector<std::function<void()>> impl = {[&] { run_gemm(c_dvm.get()); },
                                               [&] { direct(dvm::vm::GemmLib::kOpenBlas, c_blas.get()); }};
    // oneDNN's own threading runs on a thread of its own (see Worker), also
    // for the untimed check call.
    if (have_onednn) impl.push_back([&] { direct(dvm::vm::GemmLib::kOneDnn, c_onednn.get()); });
    const size_t fused_at = impl.size();
    if (epilogue) {
      impl.push_back([&] {
        fused.Launch({{A.get(), sa, 0}, {B.get(), sb, 0}, {bias.get(), sbias, 0}},
                     {{c_fused->get(), {}, cbytes}});
      });
      impl.push_back([&] {
        run_gemm(tmp1->get());
        add_bias.Launch({{tmp1->get(), sc, 0}, {bias.get(), sbias, 0}}, {{tmp2->get(), {}, cbytes}});
        gelu.Launch({{tmp2->get(), sc, 0}}, {{c_unfused->get(), {}, cbytes}});
      });
    }

    JsonObject m;
    m.Num("m", double(M)).Num("k", double(K)).Num("n", double(N)).Num("flops", flops);
    std::string err;
    double max_err = 0;
    std::vector<std::vector<double>> tm;
    try {
      for (size_t k = 0; k < impl.size(); ++k)
        if (have_onednn && k == 2)
          onednn_thread.Run(impl[k]);
        else
          impl[k]();
      max_err = MaxRelErr(c_dvm.get(), c_blas.get(), M * N);
      if (!(max_err <= kMaxRelErr)) err = "dvm GEMM differs from OpenBLAS: max rel err " + Fmt(max_err, 8);
      if (err.empty() && have_onednn) {
        const double e = MaxRelErr(c_onednn.get(), c_blas.get(), M * N);
        max_err = std::max(max_err, e);
        if (!(e <= kMaxRelErr)) err = "oneDNN differs from OpenBLAS: max rel err " + Fmt(e, 8);
      }
      if (err.empty() && epilogue) {
        std::vector<float> ref(M * N);
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j)
            ref[i * N + j] = float(GeluRef(double(c_blas.get()[i * N + j]) + bias.get()[j]));
        double ef = MaxRelErr(c_fused->get(), ref.data(), M * N);
        double eu = MaxRelErr(c_unfused->get(), ref.data(), M * N);
        max_err = std::max({max_err, ef, eu});
        if (!(ef <= kMaxRelErr)) err = "fused bias+GELU differs: max rel err " + Fmt(ef, 8);
        else if (!(eu <= kMaxRelErr)) err = "unfused bias+GELU differs: max rel err " + Fmt(eu, 8);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(kSlowIdleMs));  // OpenBLAS workers asleep
      // Per-call times (us) of each implementation; see the file comment
      // (the libraries' own threads spin when idle).
      std::vector<int> slow_idle = {1};
      std::vector<Worker*> on(impl.size(), nullptr);
      if (have_onednn) slow_idle.push_back(2), on[2] = &onednn_thread;
      if (err.empty()) tm = MeasureBlocks(impl, int(opt.reps), 3, {}, slow_idle, on);
    } catch (const dvm::Error& e) {
      err = std::string("dvm::Error: ") + e.what();
    }
    m.Num("max_rel_err", max_err);
    if (!err.empty()) {
      ++failed;
      std::printf("%s FAILED: %s\n", name.c_str(), err.c_str());
      t.Row({name, "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "FAILED"});
      m.Bool("failed", true).Str("error", err);
      rep.AddCase(name, m, ShapeString({M, K}) + "x" + ShapeString({K, N}));
      continue;
    }
    const Stats d = Summarize(tm[0]), ob = Summarize(tm[1]);
    const Stats od = have_onednn ? Summarize(tm[2]) : Stats{};
    const bool onednn_best = have_onednn && od.median < ob.median;
    const Stats& b = onednn_best ? od : ob;
    const double dgf = flops / d.median / 1e3, bgf = flops / b.median / 1e3, ratio = dgf / bgf;
    m.Num("dvm_us", d.median).Num("dvm_us_min", d.min).Num("dvm_us_max", d.max);
    m.Num("dvm_gflops", dgf);
    m.Num("openblas_us", ob.median).Num("openblas_gflops", flops / ob.median / 1e3);
    if (have_onednn) m.Num("onednn_us", od.median).Num("onednn_gflops", flops / od.median / 1e3);
    m.Str("blas_lib", onednn_best ? "onednn" : "openblas");
    m.Num("blas_us", b.median).Num("blas_us_min", b.min).Num("blas_us_max", b.max);
    m.Num("blas_gflops", bgf).Num("dvm_over_blas", ratio);
    std::vector<std::string> bars;
    if (M == 512 || (M == 1024 && K == 1024 && N == 1024)) {
      const bool ok = ratio >= kBarGflops;
      ++n_bar_gflops;
      if (!ok) {
        bar_gflops = false;
        miss_gflops += (miss_gflops.empty() ? "" : ", ") + name + " " + Fmt(ratio);
      }
      bars.push_back(std::string("GF ") + Bar(ok));
      m.Bool("bar_dvm_gflops_ge_0_9_blas", ok);
    }
    std::string fcol = "-", ucol = "-", gcol = "-", rcol = "-";
    if (epilogue) {
      Stats f = Summarize(tm[fused_at]), u = Summarize(tm[fused_at + 1]);
      const double fr = f.median / d.median;
      m.Num("fused_us", f.median).Num("fused_us_min", f.min).Num("fused_us_max", f.max);
      m.Num("unfused_us", u.median).Num("unfused_us_min", u.min).Num("unfused_us_max", u.max);
      m.Num("gemm_only_us", d.median).Num("fused_over_gemm", fr);
      m.Num("unfused_over_fused", u.median / f.median);
      fcol = Fmt(f.median, 1), ucol = Fmt(u.median, 1), gcol = Fmt(d.median, 1), rcol = Fmt(fr);
      if (M >= 128) {
        const bool ok = fr <= kBarFused;
        ++n_bar_fused;
        if (!ok) {
          bar_fused = false;
          miss_fused += (miss_fused.empty() ? "" : ", ") + name + " " + Fmt(fr);
        }
        bars.push_back(std::string("epi ") + Bar(ok));
        m.Bool("bar_fused_le_1_15_gemm", ok);
      }
    }
    m.Num("reps", double(tm[0].size()));
    std::string bar;
    for (auto& x : bars) bar += (bar.empty() ? "" : " ") + x;
    t.Row({name, Fmt(d.median, 1), Fmt(ob.median, 1), have_onednn ? Fmt(od.median, 1) : "-", Fmt(dgf, 1), Fmt(bgf, 1),
           Fmt(ratio), fcol, ucol, gcol, rcol, Sci(max_err), bar.empty() ? "-" : bar});
    rep.AddCase(name, m, ShapeString({M, K}) + "x" + ShapeString({K, N}));
  }
  openblas_set_num_threads(blas_threads_before);
  t.Print();

  std::printf(
      "\nbars: dvm_gflops >= 0.9 x blas_gflops (the faster library) at 1024^3 and M=512 (%d cases): %s%s; "
      "fused <= 1.15 x gemm_only at M >= 128 (%d cases): %s%s\n",
      n_bar_gflops, Bar(bar_gflops), miss_gflops.empty() ? "" : (" [" + miss_gflops + "]").c_str(), n_bar_fused,
      Bar(bar_fused), miss_fused.empty() ? "" : (" [" + miss_fused + "]").c_str());
  if (failed) std::printf("FAILED: %d case(s) did not match\n", failed);
  rep.summary.Str("gemm_policy", policy).Bool("onednn", have_onednn);
  rep.summary.Num("loadavg_1min", load).Str("unfused", "dvm gemm kernel + dvm add-bias kernel + dvm gelu kernel");
  rep.summary.Num("failed", failed);
  rep.summary.Bool("bar_dvm_gflops_ge_0_9_blas", bar_gflops).Str("bar_gflops_misses", miss_gflops);
  rep.summary.Bool("bar_fused_le_1_15_gemm", bar_fused).Str("bar_fused_misses", miss_fused);
  bool wrote = rep.Write(opt.json);
  return failed || !wrote ? 1 : 0;
}

}  // namespace dvmtool
