// Graph API, fuser and executor: kernel counts of fused patterns, fused vs
// unfused differential runs on random graphs and bindings, memory-plan
// safety (poisoned freed buffers), errors for bad graphs and bindings.
#include "dvm/graph.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "fusion/fuser.h"
#include "graph/graph_ir.h"
#include "models/gpt2.h"
#include "runtime/memplan.h"
#include "vm/cpu/gemm.h"

namespace dvm {
namespace {

#define EXPECT_HAS(text, sub)                                                               \
  do {                                                                                      \
    const std::string t_ = (text);                                                          \
    EXPECT_NE(t_.find(sub), std::string::npos) << "'" << t_ << "' lacks '" << (sub) << "'"; \
  } while (0)

std::vector<float> Rand(size_t n, uint32_t seed, float lo = -1, float hi = 1) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

std::string ErrorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// Runs a one-input, one-output f32 graph fused and unfused.
struct Runner {
  const Graph& g;
  CompiledGraph fused, unfused;
  explicit Runner(const Graph& graph) : g(graph), fused(graph), unfused(graph, CompileOptions{false, false}) {}
  std::vector<std::vector<float>> Run(CompiledGraph& cg, const std::vector<std::vector<float>*>& ins,
                                      const std::vector<Shape>& shapes, bool poison = false) {
    std::vector<TensorArg> args;
    for (size_t i = 0; i < ins.size(); ++i) args.push_back({ins[i]->data(), shapes[i], ins[i]->size() * 4});
    std::vector<Shape> oshapes = cg.OutputShapes(shapes);
    std::vector<std::vector<float>> outs;
    std::vector<TensorArg> oargs;
    for (const Shape& s : oshapes) {
      size_t n = 1;
      for (int64_t d : s) n *= static_cast<size_t>(d);
      outs.emplace_back(n, -12345.f);
    }
    for (auto& o : outs) oargs.push_back({o.data(), {}, o.size() * 4});
    RunOptions opt;
    opt.poison_freed = poison;
    cg.Run(args, oargs, opt);
    return outs;
  }
};

void ExpectClose(const std::vector<float>& a, const std::vector<float>& b, double rtol = 1e-5, double atol = 1e-5) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    ASSERT_LE(std::fabs(double(a[i]) - b[i]), atol + rtol * std::fabs(double(b[i])))
        << "at " << i << ": " << a[i] << " vs " << b[i];
}

TEST(GraphFusion, LayerNormFromPrimitivesIsOneKernel) {
  Graph g;
  auto gamma = Rand(64, 1), beta = Rand(64, 2);
  Value x = g.Input("x", {"rows", 64}, DType::kFloat32);
  Value y = models::LayerNorm(g, x, g.Constant("g", {64}, DType::kFloat32, gamma.data()),
                              g.Constant("b", {64}, DType::kFloat32, beta.data()), 64);
  g.Output(y);
  CompiledGraph cg(g);
  EXPECT_EQ(cg.num_kernels(), 1) << cg.Dump();
  for (int64_t rows : {1, 7, 300}) {
    auto xs = Rand(rows * 64, 3 + rows);
    std::vector<float> out(rows * 64);
    cg.Run({{xs.data(), {rows, 64}}}, {{out.data(), {}}});
    for (int64_t r = 0; r < rows; ++r) {
      double m = 0, v = 0;
      for (int c = 0; c < 64; ++c) m += xs[r * 64 + c];
      m /= 64;
      for (int c = 0; c < 64; ++c) v += (xs[r * 64 + c] - m) * (xs[r * 64 + c] - m);
      v /= 64;
      for (int c = 0; c < 64; ++c) {
        double want = (xs[r * 64 + c] - m) / std::sqrt(v + 1e-5) * gamma[c] + beta[c];
        ASSERT_NEAR(out[r * 64 + c], want, 1e-5 + 1e-4 * std::fabs(want)) << rows << " " << r << " " << c;
      }
    }
  }
}

TEST(GraphFusion, SoftmaxIsOneKernel) {
  Graph g;
  Value x = g.Input("x", {"rows", "cols"}, DType::kFloat32);
  g.Output(models::Softmax(g, x));
  CompiledGraph cg(g);
  EXPECT_EQ(cg.num_kernels(), 1) << cg.Dump();
  auto xs = Rand(5 * 33, 9, -4, 4);
  std::vector<float> out(5 * 33);
  cg.Run({{xs.data(), {5, 33}}}, {{out.data(), {}}});
  for (int r = 0; r < 5; ++r) {
    double mx = -1e30, s = 0;
    for (int c = 0; c < 33; ++c) mx = std::max(mx, double(xs[r * 33 + c]));
    for (int c = 0; c < 33; ++c) s += std::exp(xs[r * 33 + c] - mx);
    for (int c = 0; c < 33; ++c) ASSERT_NEAR(out[r * 33 + c], std::exp(xs[r * 33 + c] - mx) / s, 1e-6);
  }
}

TEST(GraphFusion, MlpIsTwoKernels) {
  Graph g;
  auto w1 = Rand(32 * 128, 1, -0.2f, 0.2f), b1 = Rand(128, 2), w2 = Rand(128 * 32, 3, -0.2f, 0.2f), b2 = Rand(32, 4);
  Value x = g.Input("x", {"seq", 32}, DType::kFloat32);
  Value h = g.Binary(BinaryOp::kAdd, g.MatMul(x, g.Constant("w1", {32, 128}, DType::kFloat32, w1.data())),
                     g.Constant("b1", {128}, DType::kFloat32, b1.data()));
  h = models::GeluTanh(g, h);
  Value y = g.Binary(BinaryOp::kAdd, g.MatMul(h, g.Constant("w2", {128, 32}, DType::kFloat32, w2.data())),
                     g.Constant("b2", {32}, DType::kFloat32, b2.data()));
  g.Output(y);
  Runner r(g);
  EXPECT_EQ(r.fused.num_kernels(), 2) << r.fused.Dump();
  EXPECT_EQ(r.fused.num_matmul_kernels(), 2);
  EXPECT_GT(r.unfused.num_kernels(), 10);
  for (int64_t seq : {1, 5, 64}) {
    auto xs = Rand(seq * 32, seq);
    auto a = r.Run(r.fused, {&xs}, {{seq, 32}});
    auto b = r.Run(r.unfused, {&xs}, {{seq, 32}});
    ExpectClose(a[0], b[0]);
  }
}

// Compiling a graph with a matmul makes oneDNN JIT-compile its GEMM kernels
// there (vm::WarmGemm) where the policy sends large GEMMs to oneDNN, so
// that the first Run does not pay it (bench graph's first request: ~106 ->
// ~81 ms). CTest runs each test in a process of its own, where nothing
// else has made a GEMM.
TEST(GraphCompile, MatMulWarmsGemm) {
  Graph g;
  Value x = g.Input("x", {"seq", 32}, DType::kFloat32);
  std::vector<float> w(32 * 8, 0.5f);
  g.Output(g.MatMul(x, g.Constant("w", {32, 8}, DType::kFloat32, w.data())));
  CompiledGraph cg(g);
  EXPECT_EQ(vm::GemmWarmed(), vm::GemmLibFor(256, 256, 256, 256, 256) == vm::GemmLib::kOneDnn);
}

// A graph's output written over its input, as a caller may pass it: an
// independent kernel (the product) reads x too, in the same launch or
// after the output was written. An input that an output overlaps is read
// from a copy, so the outputs equal the run with separate buffers. Outputs
// that overlap each other are an error, before any launch.
TEST(GraphRun, OutputOverItsInput) {
  Graph g;
  auto w = Rand(32 * 48, 1, -0.2f, 0.2f);
  Value x = g.Input("x", {"seq", 32}, DType::kFloat32);
  g.Output(g.Binary(BinaryOp::kAdd, g.Binary(BinaryOp::kMul, x, 2.0), 1.0));
  g.Output(g.MatMul(x, g.Constant("w", {32, 48}, DType::kFloat32, w.data())));
  CompiledGraph cg(g);
  for (int64_t seq : {1, 5, 64, 300}) {
    const auto xs = Rand(seq * 32, seq);
    std::vector<float> y1(seq * 32), p1(seq * 48), p2(seq * 48);
    cg.Run({{const_cast<float*>(xs.data()), {seq, 32}}}, {{y1.data(), {}}, {p1.data(), {}}});
    std::vector<float> buf = xs;
    cg.Run({{buf.data(), {seq, 32}}}, {{buf.data(), {}}, {p2.data(), {}}});
    EXPECT_EQ(buf, y1) << seq;
    EXPECT_EQ(p2, p1) << seq;
    std::vector<float> both(seq * 80, -3.0f);
    try {
      cg.Run({{const_cast<float*>(xs.data()), {seq, 32}}}, {{both.data(), {}}, {both.data() + 8, {}}});
      ADD_FAILURE() << "overlapping outputs ran";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("outputs 0 and 1 overlap"), std::string::npos) << e.what();
    }
    for (float v : both) ASSERT_EQ(v, -3.0f);
  }
}

TEST(GraphFusion, DecoderLayerKernelCount) {
  models::Gpt2Config cfg;
  cfg.layers = 1;
  cfg.hidden = 64;
  cfg.heads = 4;
  cfg.vocab = 100;
  cfg.max_positions = 64;
  models::Gpt2 model(cfg);
  CompiledGraph cg(model.graph());
  // Per layer 11: layernorm (with the residual add before it), Q, K, V
  // (+bias), Q.K^T, softmax (+scale, mask), P.V, output projection (with
  // the merge-heads transpose as its prologue), bias + residual +
  // layernorm, MLP up (+bias, GELU), MLP down. Plus the final bias +
  // residual + layernorm: 12 kernels, 8 with a matmul; Q, K and V launch
  // as one stack.
  EXPECT_EQ(cg.num_kernels(), 12) << cg.Dump();
  EXPECT_EQ(cg.num_matmul_kernels(), 8) << cg.Dump();
  EXPECT_EQ(cg.num_launch_groups(), 12 - 2 + 4) << cg.Dump();
  EXPECT_EQ(cg.num_library_ops(), 4) << cg.Dump();  // 2 gathers, iota, causal mask
}

// A random graph over inputs with symbolic dims; fused and unfused runs
// agree for random bindings.
TEST(GraphFusion, RandomGraphsFusedEqualsUnfused) {
  std::mt19937 rng(20261125);
  std::vector<float> w(16 * 16);
  for (float& v : w) v = std::uniform_real_distribution<float>(-0.3f, 0.3f)(rng);
  for (int trial = 0; trial < 60; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    Graph g;
    std::vector<Value> pool;  // values of shape [s, 16] / [s, 1] / [16]
    std::vector<int> kind;    // 0: [s,16], 1: [s,1], 2: [16]
    pool.push_back(g.Input("a", {"s", 16}, DType::kFloat32)), kind.push_back(0);
    pool.push_back(g.Input("b", {"s", 16}, DType::kFloat32)), kind.push_back(0);
    pool.push_back(g.Input("c", {16}, DType::kFloat32)), kind.push_back(2);
    Value wv = g.Constant("w", {16, 16}, DType::kFloat32, w.data());
    const int nops = 3 + trial % 10;
    auto pick = [&](int want) {
      std::vector<int> c;
      for (size_t i = 0; i < pool.size(); ++i)
        if (want < 0 || kind[i] == want) c.push_back(static_cast<int>(i));
      return c[rng() % c.size()];
    };
    for (int i = 0; i < nops; ++i) {
      const int op = static_cast<int>(rng() % 8);
      if (op <= 1) {
        int a = pick(-1), b = pick(kind[a] == 2 ? 0 : -1);
        const BinaryOp ops[] = {BinaryOp::kAdd, BinaryOp::kMul, BinaryOp::kSub, BinaryOp::kMaximum};
        pool.push_back(g.Binary(ops[rng() % 4], pool[a], pool[b]));
        kind.push_back(kind[a] == 0 || kind[b] == 0 || (kind[a] != kind[b]) ? 0 : kind[a]);
      } else if (op == 2) {
        int a = pick(-1);
        const UnaryOp ops[] = {UnaryOp::kTanh, UnaryOp::kSigmoid, UnaryOp::kAbs, UnaryOp::kNeg, UnaryOp::kRelu};
        pool.push_back(g.Unary(ops[rng() % 5], pool[a]));
        kind.push_back(kind[a]);
      } else if (op == 3) {
        int a = pick(0);
        const ReduceOp ops[] = {ReduceOp::kSum, ReduceOp::kMax};
        pool.push_back(g.Reduce(ops[rng() % 2], pool[a], {-1}, true));
        kind.push_back(1);
      } else if (op == 4) {
        int a = pick(0);
        pool.push_back(g.MatMul(pool[a], wv));
        kind.push_back(0);
      } else if (op == 5) {
        int a = pick(0);  // a view: reshape [s,16] -> [s,4,4] -> back
        Value r = g.Reshape(pool[a], {-1, 4, 4});
        r = g.Transpose(r, {0, 2, 1});
        pool.push_back(g.Reshape(r, {-1, 16}));
        kind.push_back(0);
      } else if (op == 6) {
        int a = pick(-1);
        pool.push_back(g.Binary(BinaryOp::kMul, pool[a], 0.5));
        kind.push_back(kind[a]);
      } else {
        int a = pick(0);  // softmax-like: x - max(x)
        pool.push_back(g.Binary(BinaryOp::kSub, pool[a], g.Reduce(ReduceOp::kMax, pool[a], {1}, true)));
        kind.push_back(0);
      }
    }
    g.Output(pool.back());
    g.Output(pool[pool.size() / 2 + 1]);
    Runner r(g);
    ASSERT_LE(r.fused.num_kernels(), r.unfused.num_kernels());
    for (int64_t s : {int64_t(1), int64_t(3), int64_t(1 + rng() % 200)}) {
      auto a = Rand(s * 16, rng()), b = Rand(s * 16, rng()), c = Rand(16, rng());
      std::vector<Shape> shapes = {{s, 16}, {s, 16}, {16}};
      auto x = r.Run(r.fused, {&a, &b, &c}, shapes, /*poison=*/true);
      auto y = r.Run(r.unfused, {&a, &b, &c}, shapes, /*poison=*/true);
      ASSERT_EQ(x.size(), y.size());
      for (size_t i = 0; i < x.size(); ++i) ExpectClose(x[i], y[i], 1e-5, 1e-5);
    }
  }
}

TEST(GraphFusion, EqualSymbolsFuseUnknownBroadcastDoesNot) {
  {
    Graph g;  // [s0, 768] + [s0, 768] -> one kernel without knowing s0
    Value a = g.Input("a", {"s0", 768}, DType::kFloat32), b = g.Input("b", {"s0", 768}, DType::kFloat32);
    g.Output(g.Unary(UnaryOp::kExp, g.Binary(BinaryOp::kAdd, a, b)));
    EXPECT_EQ(CompiledGraph(g).num_kernels(), 1);
  }
  {
    // [a, 8] + [b, 8] has shape [max(a, b), 8]: a and b are unrelated, so
    // exp(a) [a, 8] provably shares no loop nest with it and is not fused.
    Graph g;
    Value a = g.Input("a", {"a", 8}, DType::kFloat32), b = g.Input("b", {"b", 8}, DType::kFloat32);
    Value s = g.Binary(BinaryOp::kAdd, a, b);
    EXPECT_EQ(g.ShapeString(s), "[max(a, b), 8]");
    g.Output(g.Binary(BinaryOp::kMul, g.Unary(UnaryOp::kExp, a), s));
    CompiledGraph cg(g);
    EXPECT_EQ(cg.num_kernels(), 2) << cg.Dump();
    for (auto [na, nb] : {std::pair<int64_t, int64_t>{1, 5}, {5, 1}, {5, 5}}) {
      auto xa = Rand(na * 8, 1), xb = Rand(nb * 8, 2);
      const int64_t n = std::max(na, nb);
      std::vector<float> out(n * 8);
      cg.Run({{xa.data(), {na, 8}}, {xb.data(), {nb, 8}}}, {{out.data(), {}}});
      for (int64_t i = 0; i < n; ++i)
        for (int j = 0; j < 8; ++j) {
          float va = xa[(na == 1 ? 0 : i) * 8 + j], vb = xb[(nb == 1 ? 0 : i) * 8 + j];
          ASSERT_NEAR(out[i * 8 + j], std::exp(va) * (va + vb), 1e-5);
        }
    }
    auto xa = Rand(24, 1), xb = Rand(32, 2);
    std::vector<float> out(64);
    EXPECT_HAS(ErrorOf([&] { cg.Run({{xa.data(), {3, 8}}, {xb.data(), {4, 8}}}, {{out.data(), {}}}); }), "a = 3");
  }
}

TEST(GraphErrors, InconsistentGraphRejectedWhenBuilt) {
  Graph g;
  Value a = g.Input("a", {"m", 3}, DType::kFloat32), b = g.Input("b", {4, "n"}, DType::kFloat32);
  EXPECT_HAS(ErrorOf([&] { g.MatMul(a, b); }), "matmul");
  Graph g2;
  Value c = g2.Input("c", {5, 3}, DType::kFloat32), d = g2.Input("d", {4, 3}, DType::kFloat32);
  EXPECT_HAS(ErrorOf([&] { g2.Binary(BinaryOp::kAdd, c, d); }), "add");
  Graph g3;
  Value e = g3.Input("e", {"s", 6}, DType::kFloat32);
  Value f = g3.Input("f", {5, 6}, DType::kFloat32);
  EXPECT_HAS(ErrorOf([&] { g3.Reshape(f, {4, 7}); }), "reshape");
  EXPECT_HAS(ErrorOf([&] { g3.Reduce(ReduceOp::kSum, e, {2}, false); }), "axis 2");
  EXPECT_HAS(ErrorOf([&] { g3.Transpose(e, {0, 0}); }), "transpose");
  EXPECT_HAS(ErrorOf([&] { g3.Binary(BinaryOp::kAdd, e, g3.Cast(e, DType::kInt32)); }), "dtype");
}

TEST(GraphErrors, BadBindings) {
  Graph g;
  auto w = Rand(8 * 4, 1);
  Value x = g.Input("x", {"seq", "k"}, DType::kFloat32);
  Value y = g.Input("y", {"seq", 8}, DType::kFloat32);
  Value wk = g.Input("w", {"k2", 4}, DType::kFloat32);
  Value z = g.MatMul(g.Binary(BinaryOp::kAdd, x, y),
                     wk);  // k == 8 (broadcast) and k == k2 (matmul)
  g.Output(z);
  CompiledGraph cg(g);
  auto xs = Rand(3 * 8, 1), ys = Rand(3 * 8, 2);
  std::vector<float> out(3 * 4);
  // Rank mismatch.
  EXPECT_HAS(ErrorOf([&] {
               cg.Run({{xs.data(), {24}}, {ys.data(), {3, 8}}, {w.data(), {8, 4}}}, {{out.data(), {}}});
             }),
             "rank 1");
  // seq bound twice with different values.
  EXPECT_HAS(ErrorOf([&] {
               cg.Run({{xs.data(), {3, 8}}, {ys.data(), {2, 8}}, {w.data(), {8, 4}}}, {{out.data(), {}}});
             }),
             "seq");
  // Constant dim violated (k2 == k == 8 was deduced).
  std::vector<float> w2(7 * 4);
  std::string e = ErrorOf([&] {
    cg.Run({{xs.data(), {3, 8}}, {ys.data(), {3, 8}}, {w2.data(), {7, 4}}}, {{out.data(), {}}});
  });
  EXPECT_HAS(e, "7");
  EXPECT_HAS(e, "8");
  // Output too small.
  EXPECT_HAS(ErrorOf([&] {
               cg.Run({{xs.data(), {3, 8}}, {ys.data(), {3, 8}}, {w.data(), {8, 4}}}, {{out.data(), {}, 8}});
             }),
             "bytes");
  // Correct run works and the output is untouched by the failed runs above.
  cg.Run({{xs.data(), {3, 8}}, {ys.data(), {3, 8}}, {w.data(), {8, 4}}}, {{out.data(), {}}});
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) {
      double want = 0;
      for (int k = 0; k < 8; ++k) want += double(xs[i * 8 + k] + ys[i * 8 + k]) * w[k * 4 + j];
      ASSERT_NEAR(out[i * 4 + j], want, 1e-5);
    }
  // A symbol no input binds.
  Graph g2;
  g2.Output(g2.Iota("n", DType::kFloat32));
  CompiledGraph cg2(g2);
  EXPECT_HAS(ErrorOf([&] { cg2.Run({}, {{out.data(), {}}}); }), "'n'");
}

TEST(GraphMemory, PlanNeverOverlapsLiveBuffers) {
  std::mt19937 rng(7);
  for (int t = 0; t < 200; ++t) {
    std::vector<runtime::BufferReq> reqs(1 + rng() % 40);
    for (auto& r : reqs) {
      r.bytes = rng() % 5000;
      r.first = static_cast<int>(rng() % 30);
      r.last = r.first + static_cast<int>(rng() % 10);
    }
    runtime::MemPlan plan = runtime::PlanMemory(reqs);
    ASSERT_EQ(runtime::CheckPlan(reqs, plan), "");
    size_t max_live = 0;  // a lower bound for the peak
    for (int time = 0; time < 40; ++time) {
      size_t live = 0;
      for (auto& r : reqs)
        if (r.first <= time && time <= r.last) live += r.bytes;
      max_live = std::max(max_live, live);
    }
    ASSERT_GE(plan.peak, max_live);
  }
  // A plan that overlaps live buffers is caught by the checker.
  std::vector<runtime::BufferReq> reqs = {{100, 0, 2}, {100, 1, 3}};
  runtime::MemPlan bad{{0, 64}, 256};
  EXPECT_NE(runtime::CheckPlan(reqs, bad), "");
}

TEST(GraphMemory, FusedPeakBelowUnfusedAndPoisonedRunsAgree) {
  models::Gpt2Config cfg;
  cfg.layers = 2;
  cfg.hidden = 64;
  cfg.heads = 4;
  cfg.vocab = 50;
  cfg.max_positions = 64;
  models::Gpt2 model(cfg);
  CompiledGraph fused(model.graph()), unfused(model.graph(), CompileOptions{false, false});
  for (int64_t seq : {1, 17, 40}) {
    std::vector<int32_t> ids(seq);
    for (int64_t i = 0; i < seq; ++i) ids[i] = static_cast<int32_t>((i * 7) % cfg.vocab);
    std::vector<float> a(seq * 64), b(seq * 64), c(seq * 64);
    RunStats sa, sb;
    RunOptions poison;
    poison.poison_freed = true;
    fused.Run(std::vector<TensorArg>{{ids.data(), {seq}}}, std::vector<TensorArg>{{a.data(), {}}}, poison, &sa);
    unfused.Run(std::vector<TensorArg>{{ids.data(), {seq}}}, std::vector<TensorArg>{{b.data(), {}}}, poison, &sb);
    fused.Run(std::vector<TensorArg>{{ids.data(), {seq}}}, std::vector<TensorArg>{{c.data(), {}}});
    ExpectClose(a, b, 1e-4, 1e-4);
    ExpectClose(a, c, 0, 0);
    for (float v : a) ASSERT_TRUE(std::isfinite(v));
    EXPECT_LT(sa.peak_bytes, sb.peak_bytes);
    EXPECT_LT(sa.launches, sb.launches);
  }
}

TEST(GraphIR, DumpShowsSymbolicShapesAndFacts) {
  Graph g;
  Value x = g.Input("x", {"batch", "seq", 64}, DType::kFloat32);
  Value r = g.Reshape(x, {-1, 64});
  EXPECT_EQ(g.ShapeString(r), "[batch*seq, 64]");
  Value w = g.Input("w", {"k", 32}, DType::kFloat32);
  Value y = g.MatMul(r, w);
  EXPECT_EQ(g.ShapeString(y), "[batch*seq, 32]");
  EXPECT_HAS(g.Facts(), "matmul");
  EXPECT_HAS(g.Dump(), "reshape");
  // The deduced k == 64 is enforced at run time.
  g.Output(y);
  CompiledGraph cg(g);
  std::vector<float> xs(2 * 3 * 64), ws(64 * 32), out(6 * 32);
  cg.Run({{xs.data(), {2, 3, 64}}, {ws.data(), {64, 32}}}, {{out.data(), {}}});
  EXPECT_HAS(ErrorOf([&] { cg.Run({{xs.data(), {2, 3, 64}}, {ws.data(), {60, 32}}}, {{out.data(), {}}}); }), "64");
}

}  // namespace
}  // namespace dvm

namespace dvm {
namespace {

// The passes one at a time, on the graph IR directly.
struct PassFixture {
  Graph g;
  graph::GraphIR ir;
  void Finish() {
    ir = g.impl().ir;
    ir.Finalize();
  }
  static int Kernels(const fusion::FusionState& s) {
    int n = 0;
    for (int grp : s.Groups()) n += s.IsKernelNode(s.Members(grp)[0]) ? 1 : 0;
    return n;
  }
};

TEST(FusionPasses, ElementwiseAloneFusesChainsNotReductions) {
  PassFixture f;
  Value x = f.g.Input("x", {"s", 16}, DType::kFloat32);
  Value y = f.g.Unary(UnaryOp::kExp, f.g.Binary(BinaryOp::kMul, x, 2.0));
  Value m = f.g.Reduce(ReduceOp::kSum, y, {-1}, true);
  f.g.Output(f.g.Binary(BinaryOp::kDiv, y, m));
  f.Finish();
  fusion::FusionState s(f.ir);
  EXPECT_EQ(PassFixture::Kernels(s), 4);
  fusion::FuseElementwise(s);
  s.Verify("elementwise");
  EXPECT_EQ(PassFixture::Kernels(s), 3);  // {mul, exp}, {sum}, {div}
  fusion::FuseReduce(s);
  s.Verify("reduce");
  EXPECT_EQ(PassFixture::Kernels(s), 1);
}

TEST(FusionPasses, MatMulEpilogueAndViews) {
  PassFixture f;
  std::vector<float> w(16 * 16, 0.f);
  Value x = f.g.Input("x", {"s", 16}, DType::kFloat32);
  Value xt = f.g.Transpose(f.g.Reshape(x, {-1, 4, 4}), {0, 2, 1});
  Value mm = f.g.MatMul(f.g.Reshape(xt, {-1, 16}), f.g.Constant("w", {16, 16}, DType::kFloat32, w.data()));
  f.g.Output(f.g.Unary(UnaryOp::kRelu, f.g.Binary(BinaryOp::kAdd, mm, 1.0)));
  f.Finish();
  fusion::FusionState s(f.ir);
  fusion::FuseElementwise(s);
  fusion::FuseMatMulEpilogue(s);
  s.Verify("matmul_epilogue");
  EXPECT_EQ(PassFixture::Kernels(s), 4);  // 3 views, {matmul, add, relu}
  fusion::FuseViews(s);
  s.Verify("views");
  EXPECT_EQ(PassFixture::Kernels(s), 1);
}

TEST(FusionPasses, NoReductionInMatMulKernelAndNoCycles) {
  PassFixture f;
  std::vector<float> w(16 * 16, 0.f);
  Value x = f.g.Input("x", {"s", 16}, DType::kFloat32);
  Value mm = f.g.MatMul(x, f.g.Constant("w", {16, 16}, DType::kFloat32, w.data()));
  Value sm = models::Softmax(f.g, mm);
  // x + mm + softmax(mm): the add of x and mm may join the GEMM, the softmax not.
  f.g.Output(f.g.Binary(BinaryOp::kAdd, f.g.Binary(BinaryOp::kAdd, x, mm), sm));
  f.Finish();
  fusion::Partition p = fusion::Fuse(f.ir, {});
  for (const auto& grp : p.groups) EXPECT_FALSE(grp.has_matmul && grp.has_reduce);
  EXPECT_EQ(p.num_kernels(), 2) << p.Dump(f.ir);
  // A state that merges across a path through another group is rejected.
  fusion::FusionState s(f.ir);
  const int g_mm = s.GroupOf(mm.id);
  int g_last = s.GroupOf(static_cast<int>(f.ir.outputs[0]));
  EXPECT_FALSE(s.TryMerge(g_mm, g_last));  // mm -> softmax -> last: a cycle
  s.Verify("manual");
}

}  // namespace
}  // namespace dvm

namespace dvm {
namespace {

TEST(GraphLibraryOps, GatherConcatSplitIotaMaskExpand) {
  Graph g;
  std::vector<float> table = Rand(10 * 4, 5);
  Value ids = g.Input("ids", {"n"}, DType::kInt32);
  Value x = g.Input("x", {"n", 3}, DType::kFloat32);
  Value emb = g.Gather(g.Constant("table", {10, 4}, DType::kFloat32, table.data()), ids);  // [n, 4]
  Value cat = g.Concat({emb, x}, 1);                                                       // [n, 7]
  std::vector<Value> parts = g.Split(cat, -1, {2, 5});                                     // [n, 2], [n, 5]
  Value pos = g.Cast(g.Iota("n", DType::kInt32, 1, 2), DType::kFloat32);                   // 1, 3, 5, ...
  Value wide = g.Broadcast(g.Reshape(pos, {-1, 1}), {"n", "m"});                           // [n, m]: a library expand
  g.Output(g.Binary(BinaryOp::kAdd, parts[1], g.Reshape(pos, {-1, 1})));
  g.Output(parts[0]);
  g.Output(g.CausalMask("n", "m", DType::kFloat32));
  g.Output(g.Unary(UnaryOp::kNeg, wide));
  Value m_in = g.Input("m", {"m"}, DType::kFloat32);  // binds m
  (void)m_in;
  CompiledGraph cg(g);
  for (int64_t n : {1, 4}) {
    const int64_t m = n + 2;
    std::vector<int32_t> id(n);
    for (int64_t i = 0; i < n; ++i) id[i] = static_cast<int32_t>((3 * i + 1) % 10);
    auto xs = Rand(n * 3, 9);
    std::vector<float> mv(m), o0(n * 5), o1(n * 2), o2(n * m), o3(n * m);
    cg.Run({{id.data(), {n}}, {xs.data(), {n, 3}}, {mv.data(), {m}}},
           {{o0.data(), {}}, {o1.data(), {}}, {o2.data(), {}}, {o3.data(), {}}});
    for (int64_t i = 0; i < n; ++i) {
      float row[7];
      for (int c = 0; c < 4; ++c) row[c] = table[id[i] * 4 + c];
      for (int c = 0; c < 3; ++c) row[4 + c] = xs[i * 3 + c];
      for (int c = 0; c < 2; ++c) ASSERT_EQ(o1[i * 2 + c], row[c]);
      for (int c = 0; c < 5; ++c) ASSERT_EQ(o0[i * 5 + c], row[2 + c] + float(1 + 2 * i));
      for (int64_t j = 0; j < m; ++j) {
        ASSERT_EQ(o2[i * m + j], j <= i + (m - n) ? 0.f : -INFINITY);
        ASSERT_EQ(o3[i * m + j], -float(1 + 2 * i));
      }
    }
  }
  // A gather id out of range names the op and the value.
  std::vector<int32_t> bad = {11};
  std::vector<float> xs(3), mv(3), o0(5, 7.f), o1(2, 7.f), o2(3, 7.f), o3(3, 7.f);
  EXPECT_HAS(ErrorOf([&] {
               cg.Run({{bad.data(), {1}}, {xs.data(), {1, 3}}, {mv.data(), {3}}},
                      {{o0.data(), {}}, {o1.data(), {}}, {o2.data(), {}}, {o3.data(), {}}});
             }),
             "11");
  for (const auto* o : {&o0, &o1, &o2, &o3})
    for (float v : *o) EXPECT_EQ(v, 7.f);  // nothing written
}

}  // namespace
}  // namespace dvm

namespace dvm {
namespace {

// A reduction over every axis is not fused with values that are also stored
// (its chunk stages would compute them a second time); its private prologue
// is fused.
TEST(FusionPasses, FullReductionKeepsOnlyPrivatePrologue) {
  Graph g;
  Value x = g.Input("x", {"n"}, DType::kFloat32);
  Value d = g.Binary(BinaryOp::kMul, g.Unary(UnaryOp::kTanh, x), 0.5);
  Value y = g.Binary(BinaryOp::kSub, x, d);
  g.Output(y);                                                                // stored
  g.Output(g.Reduce(ReduceOp::kMax, g.Unary(UnaryOp::kAbs, d), {0}, false));  // max |d|
  CompiledGraph cg(g);
  EXPECT_EQ(cg.num_kernels(), 2) << cg.Dump();
  Graph g2;  // nothing stored but the sum: one kernel
  Value x2 = g2.Input("x", {"n"}, DType::kFloat32);
  g2.Output(g2.Reduce(ReduceOp::kSum, g2.Unary(UnaryOp::kExp, x2), {0}, true));
  EXPECT_EQ(CompiledGraph(g2).num_kernels(), 1);
  std::vector<float> xs = Rand(5000, 3), out(5000), mx(1);
  cg.Run({{xs.data(), {5000}}}, {{out.data(), {}}, {mx.data(), {}}});
  double want = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const double di = std::tanh(double(xs[i])) * 0.5;
    ASSERT_NEAR(out[i], xs[i] - di, 1e-6);
    want = std::max(want, std::fabs(di));
  }
  EXPECT_NEAR(mx[0], want, 1e-6);
}

}  // namespace
}  // namespace dvm
