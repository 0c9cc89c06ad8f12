// Stacked kernels: independent programs launched as one equal the same
// programs launched one by one, bit for bit.
#include <gtest/gtest.h>

#include "test_util.h"

namespace dvm::test {
namespace {

struct Launch {
  Kernel* k;
  std::vector<ref::Tensor> inputs;
};

// Runs every launch on its own and all of them as one stack, twice (the
// second launch reuses the cached stacked program): each stacked output
// equals its separate one bit for bit. Returns the stack's disassembly.
std::string ExpectStackEqualsSeparate(std::vector<Launch>& launches) {
  std::vector<LaunchBuffers> sep, stk;
  for (auto& l : launches) {
    sep.emplace_back(*l.k, l.inputs);
    stk.emplace_back(*l.k, l.inputs);
  }
  for (size_t i = 0; i < launches.size(); ++i) launches[i].k->Launch(sep[i].in_args, sep[i].out_args);
  KernelStack stack;
  for (int rep = 0; rep < 2; ++rep) {
    stack.Clear();
    for (size_t i = 0; i < launches.size(); ++i) stack.Add(*launches[i].k, stk[i].in_args, stk[i].out_args);
    EXPECT_EQ(stack.size(), launches.size());
    stack.Launch();
    for (size_t i = 0; i < launches.size(); ++i)
      for (size_t o = 0; o < sep[i].out.size(); ++o) EXPECT_EQ(sep[i].out[o], stk[i].out[o]) << "launch " << i;
  }
  return stack.Das();
}

TEST(KernelStack, EqualsSeparateLaunches) {
  Rng rng(11);
  // An elementwise kernel, a row softmax, a full reduction (two stages) and
  // a matmul with an epilogue, at several shapes; one kernel added twice.
  Kernel ew(KernelType::kDynamic), sm(KernelType::kDynamic), total(KernelType::kDynamic), mm(KernelType::kDynamic);
  {
    auto* x = ew.Load(nullptr, {-1}, DType::kFloat32);
    auto* y = ew.Load(nullptr, {-1}, DType::kFloat32);
    ew.Store(nullptr, ew.Binary(BinaryOp::kAdd, ew.Binary(BinaryOp::kMul, x, 0.9), y));
    auto* s = sm.Load(nullptr, {-1, -1}, DType::kFloat32);
    auto* e = sm.Unary(UnaryOp::kExp, sm.Binary(BinaryOp::kSub, s, sm.Reduce(ReduceOp::kMax, s, {1}, true)));
    sm.Store(nullptr, sm.Binary(BinaryOp::kDiv, e, sm.Reduce(ReduceOp::kSum, e, {1}, true)));
    auto* t = total.Load(nullptr, {-1}, DType::kFloat32);
    total.Store(nullptr, total.Reduce(ReduceOp::kSum, t, {0}, false));
    auto* a = mm.Load(nullptr, {-1, -1}, DType::kFloat32);
    auto* b = mm.Load(nullptr, {-1, -1}, DType::kFloat32);
    mm.Store(nullptr, mm.Unary(UnaryOp::kRelu, mm.MatMul(a, b)));
  }
  auto T = [&](Shape s) { return MakeTensor(DType::kFloat32, s, Uniform(-1, 1), rng); };
  std::vector<Launch> launches = {
      {&ew, {T({100}), T({100})}}, {&ew, {T({70001}), T({70001})}},
      {&ew, {T({100}), T({100})}}, {&sm, {T({33, 1000})}},
      {&total, {T({300000})}},     {&mm, {T({40, 30}), T({30, 50})}},
      {&sm, {T({1, 7})}},          {&total, {T({5})}},
  };
  for (int threads : {1, 2}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    SetNumThreads(threads);
    const std::string das = ExpectStackEqualsSeparate(launches);
    EXPECT_NE(das.find("concurrent"), std::string::npos) << das;
  }
  SetNumThreads(2);
}

// Kernels with the same program but for their constants, and the same
// kernel over many tensors, stacked: equal programs share one decoded copy
// (vm ShareChainPrograms), programs that differ in a constant, a flag or
// an operand do not; every launch equals its separate launch bit for bit.
TEST(KernelStack, SimilarProgramsKeepTheirConstants) {
  Rng rng(17);
  auto make = [](Kernel& k, double a, double b, bool sub) {
    auto* x = k.Load(nullptr, {-1}, DType::kFloat32);
    auto* y = k.Load(nullptr, {-1}, DType::kFloat32);
    auto* t = k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, x, a), k.Binary(BinaryOp::kMul, y, b));
    k.Store(nullptr, k.Binary(sub ? BinaryOp::kSub : BinaryOp::kAdd, k.Binary(BinaryOp::kDiv, t, 3.0), x));
  };
  std::vector<std::unique_ptr<Kernel>> ks;
  const double consts[][2] = {{0.9, 0.1}, {0.5, 0.1}, {0.9, 0.25}, {0.9, 0.1}};
  for (int i = 0; i < 5; ++i) {
    ks.push_back(std::make_unique<Kernel>(KernelType::kDynamic));
    make(*ks.back(), consts[i % 4][0], consts[i % 4][1], i == 4);
  }
  std::vector<Launch> launches;
  for (int rep = 0; rep < 3; ++rep)
    for (auto& k : ks) {
      const int64_t n = 50 + 37 * static_cast<int64_t>(launches.size());
      launches.push_back({k.get(),
                          {MakeTensor(DType::kFloat32, {n}, Uniform(-1, 1), rng),
                           MakeTensor(DType::kFloat32, {n}, Uniform(-1, 1), rng)}});
    }
  ExpectStackEqualsSeparate(launches);
}

// A stacked launch runs the tiles of consecutive stages that share one
// fused program as segments of one call of it (vm RunDirectRun): runs of
// an Adam-like program (long: strips of four vectors) and of a short one
// (strips of eight), broken where the program changes, over more stages
// than one call takes, with tensors of several tiles (merged into one
// segment) and ragged tails. Bit for bit the launches one by one, with 1
// and 2 threads.
TEST(KernelStack, RunsOfOneProgramAsSegments) {
  Rng rng(23);
  auto adam = [](Kernel& k) { BuildAdam(k); };
  auto axpby = [](Kernel& k) {
    auto* x = k.Load(nullptr, {-1}, DType::kFloat32);
    auto* y = k.Load(nullptr, {-1}, DType::kFloat32);
    k.Store(nullptr, k.Binary(BinaryOp::kSub, k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, x, 0.75), y), x));
  };
  std::vector<std::unique_ptr<Kernel>> ks;
  for (int i = 0; i < 4; ++i) {
    ks.push_back(std::make_unique<Kernel>(KernelType::kDynamic));
    (i < 3 ? adam : axpby)(*ks.back());
  }
  std::vector<Launch> launches;
  const int64_t sizes[] = {64, 77, 1000, 4096, 4111, 16384, 50000, 1, 17, 300, 70001, 129};
  for (int i = 0; i < 40; ++i) {
    // Runs of Adam (three kernels, one program), then the short program.
    Kernel* k = ks[(i / 7) % 2 == 0 ? i % 3 : 3].get();
    const int64_t n = sizes[i % 12];
    std::vector<ref::Tensor> in;
    for (int a = 0; a < (k == ks[3].get() ? 2 : 4); ++a)
      in.push_back(MakeTensor(DType::kFloat32, {n}, a == 3 ? Uniform(0, 1e-4) : Uniform(-1, 1), rng));
    launches.push_back({k, std::move(in)});
  }
  for (int threads : {1, 2}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    SetNumThreads(threads);
    ExpectStackEqualsSeparate(launches);
  }
  SetNumThreads(2);
}

// An optimizer's steps, as a training loop runs them: Adam over many
// tensors in place (p', m', v' written over p, m, v), the same stack
// recorded again each step over the same buffers, each step reading what
// the last one wrote. Three steps stacked equal the same steps launched one
// by one in place, bit for bit, with 1 and 2 threads: tensors of one strip
// to several tiles, ragged, in runs of one shared program (segments).
TEST(KernelStack, OptimizerStepsInPlace) {
  Rng rng(29);
  // Two kernels (two learning rates: parameter groups), one program shape.
  Kernel k0(KernelType::kDynamic), k1(KernelType::kDynamic);
  BuildAdam(k0, 1e-3);
  BuildAdam(k1, 3e-4);
  const int64_t sizes[] = {64, 77, 1000, 4096, 4111, 16384, 50000, 1, 17, 300, 70001, 129, 2};
  const int kTensors = 30, kSteps = 3;
  // State per tensor: p, m, v (updated in place) and g (read only).
  struct State {
    std::vector<float> p, g, m, v;
  };
  std::vector<State> init(kTensors);
  for (int i = 0; i < kTensors; ++i) {
    const auto n = static_cast<size_t>(sizes[i % 13]);
    auto fill = [&](std::vector<float>& x, double lo, double hi) {
      const ref::Tensor t = MakeTensor(DType::kFloat32, {static_cast<int64_t>(n)}, Uniform(lo, hi), rng);
      x.resize(n);
      std::memcpy(x.data(), ref::ToBytes(t).data(), n * sizeof(float));
    };
    fill(init[i].p, -1, 1), fill(init[i].g, -0.1, 0.1), fill(init[i].m, -0.01, 0.01), fill(init[i].v, 0, 1e-4);
  }
  auto args = [&](State& s, int i) {
    const int64_t n = sizes[i % 13];
    const size_t bytes = static_cast<size_t>(n) * sizeof(float);
    std::pair<std::vector<TensorArg>, std::vector<TensorArg>> a;
    for (float* x : {s.p.data(), s.g.data(), s.m.data(), s.v.data()}) a.first.push_back({x, {n}, bytes});
    for (float* x : {s.p.data(), s.m.data(), s.v.data()}) a.second.push_back({x, {}, bytes});
    return a;
  };
  for (int threads : {1, 2}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    SetNumThreads(threads);
    std::vector<State> sep = init, stk = init;
    KernelStack stack;
    for (int step = 0; step < kSteps; ++step) {
      for (int i = 0; i < kTensors; ++i) {
        auto [in, out] = args(sep[i], i);
        (i % 4 == 3 ? k1 : k0).Launch(in, out);
      }
      stack.Clear();
      std::vector<std::pair<std::vector<TensorArg>, std::vector<TensorArg>>> all;
      for (int i = 0; i < kTensors; ++i) all.push_back(args(stk[i], i));
      for (int i = 0; i < kTensors; ++i) stack.Add(i % 4 == 3 ? k1 : k0, all[i].first, all[i].second);
      stack.Launch();
      for (int i = 0; i < kTensors; ++i) {
        SCOPED_TRACE("step " + std::to_string(step) + ", tensor " + std::to_string(i));
        EXPECT_EQ(sep[i].p, stk[i].p);
        EXPECT_EQ(sep[i].m, stk[i].m);
        EXPECT_EQ(sep[i].v, stk[i].v);
        EXPECT_NE(stk[i].p, init[i].p);  // the step wrote in place
      }
    }
  }
  SetNumThreads(2);
}

TEST(KernelStack, ManyShapesBeyondTheKernelCache) {
  // More distinct shapes than the kernel keeps programs for: the stack keeps
  // the programs it recorded alive.
  Rng rng(5);
  Kernel k(KernelType::kDynamic);
  k.SetCacheCapacity(2);
  auto* x = k.Load(nullptr, {-1}, DType::kFloat32);
  k.Store(nullptr, k.Unary(UnaryOp::kSigmoid, x));
  std::vector<std::vector<ref::Tensor>> ins;
  std::vector<LaunchBuffers> bufs;
  for (int i = 0; i < 20; ++i)
    ins.push_back({MakeTensor(DType::kFloat32, {int64_t(10 + 37 * i)}, Uniform(-3, 3), rng)});
  for (auto& in : ins) bufs.emplace_back(k, in);
  KernelStack stack;
  for (auto& b : bufs) stack.Add(k, b.in_args, b.out_args);
  stack.Launch();
  for (size_t i = 0; i < ins.size(); ++i) {
    auto want = ref::Evaluate(GetGraph(k), ins[i]);
    auto got = ref::FromBytes(bufs[i].out[0].data(), DType::kFloat32, want[0].shape);
    EXPECT_TRUE(AllClose(want[0], got, DType::kFloat32)) << "entry " << i;
  }
}

TEST(KernelStack, BadArgumentsAreRejectedAtAdd) {
  Kernel k(KernelType::kDynamic);
  auto* x = k.Load(nullptr, {-1}, DType::kFloat32);
  k.Store(nullptr, k.Copy(x));
  std::vector<float> a(8), b(8, 3.0f);
  KernelStack stack;
  EXPECT_THROW(stack.Add(k, {{a.data(), {8}}}, {{nullptr, {}}}), Error);
  EXPECT_THROW(stack.Add(k, {{a.data(), {8}}}, {{b.data(), {}, 4}}), Error);  // 4 bytes < 32
  EXPECT_EQ(stack.size(), 0u);
  stack.Launch();  // nothing recorded: nothing runs
  EXPECT_EQ(b[0], 3.0f);
}

// A kernel's launch count takes every stacked launch that ran, once: a
// repeated Launch counts again, Adds cleared without a Launch and a Launch
// that fails count nothing.
TEST(KernelStack, LaunchCountsFollowWhatRan) {
  Kernel k(KernelType::kDynamic);
  auto* x = k.Load(nullptr, {-1}, DType::kFloat32);
  k.Store(nullptr, k.Binary(BinaryOp::kMul, x, 2.0));
  // One input, read by every launch; an output of its own for each.
  std::vector<float> a(64, 1.5f), b(64 * 40000);
  const std::vector<TensorArg> in = {{a.data(), {64}, 256}};
  auto out = [&](int i) { return std::vector<TensorArg>{{b.data() + 64 * i, {}, 256}}; };
  KernelStack stack;
  stack.Add(k, in, out(0)), stack.Add(k, in, out(1));
  stack.Launch();
  EXPECT_EQ(k.stats().launches, 2u);
  EXPECT_EQ(b[127], 3.0f);
  stack.Launch();
  EXPECT_EQ(k.stats().launches, 4u);
  stack.Clear();
  stack.Add(k, in, out(0));
  stack.Clear();  // never launched
  EXPECT_EQ(k.stats().launches, 4u);
  stack.Add(k, in, out(0)), stack.Add(k, in, out(1)), stack.Add(k, in, out(2));
  stack.Launch();
  EXPECT_EQ(k.stats().launches, 7u);
  // Two tensors a launch: 40000 launches pass the stacked program's 65535.
  stack.Clear();
  for (int i = 0; i < 40000; ++i) stack.Add(k, in, out(i));
  try {
    stack.Launch();
    ADD_FAILURE() << "a stack of 80000 tensors launched";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("too many tensors"), std::string::npos) << e.what();
  }
  EXPECT_EQ(k.stats().launches, 7u);
  stack.Clear();
  EXPECT_EQ(k.stats().launches, 7u);
}

// Add takes the launch recorded at its position last step again only while
// it is the same kernel, unchanged, at the same shapes: steps that change
// shapes, order or kernels, grow a kernel, or pass a bad buffer where the
// last step's was good all run as recorded, and errors still come.
TEST(KernelStack, StepsFollowChangesAtEachPosition) {
  Rng rng(21);
  Kernel a(KernelType::kDynamic), b(KernelType::kDynamic);
  auto* xa = a.Load(nullptr, {-1}, DType::kFloat32);
  a.Store(nullptr, a.Binary(BinaryOp::kMul, a.Binary(BinaryOp::kAdd, xa, 1.0), 0.5));
  auto* xb = b.Load(nullptr, {-1, -1}, DType::kFloat32);
  b.Store(nullptr, b.Reduce(ReduceOp::kSum, xb, {1}, false));
  auto T = [&](Shape sh) { return MakeTensor(DType::kFloat32, sh, Uniform(-1, 1), rng); };
  KernelStack stack;
  // Each step: its launches, checked against the reference.
  auto step = [&](std::vector<std::pair<Kernel*, std::vector<ref::Tensor>>> ls) {
    std::vector<LaunchBuffers> bufs;
    for (auto& [k, in] : ls) bufs.emplace_back(*k, in);
    stack.Clear();
    for (size_t i = 0; i < ls.size(); ++i) stack.Add(*ls[i].first, bufs[i].in_args, bufs[i].out_args);
    stack.Launch();
    for (size_t i = 0; i < ls.size(); ++i) {
      const auto want = ref::Evaluate(GetGraph(*ls[i].first), ls[i].second);
      for (size_t o = 0; o < want.size(); ++o) {
        const auto got = ref::FromBytes(bufs[i].out[o].data(), DType::kFloat32, want[o].shape);
        EXPECT_TRUE(AllClose(want[o], got, DType::kFloat32)) << "launch " << i << " output " << o;
      }
    }
  };
  step({{&a, {T({100})}}, {&b, {T({3, 50})}}});
  step({{&a, {T({100})}}, {&b, {T({3, 50})}}});                 // taken again
  step({{&a, {T({101})}}, {&b, {T({3, 50})}}});                 // a's shape changes
  step({{&a, {T({101})}}, {&b, {T({5, 20})}}});                 // b's shape changes, same element count
  step({{&b, {T({5, 20})}}, {&a, {T({101})}}});                 // order swapped
  step({{&a, {T({101})}}, {&a, {T({7})}}, {&b, {T({2, 2})}}});  // longer
  step({{&a, {T({7})}}});                                       // shorter
  // a grows a second output: the recorded program (one output) is stale.
  a.Store(nullptr, a.Binary(BinaryOp::kSub, xa, 2.0));
  step({{&a, {T({7})}}, {&b, {T({2, 2})}}});
  // A bad buffer where the recorded launch had a good one.
  std::vector<float> in(7, 1.0f), out0(7, 5.0f);
  stack.Clear();
  EXPECT_THROW(stack.Add(a, {{in.data(), {7}}}, {{out0.data(), {}}, {nullptr, {}}}), Error);
  EXPECT_THROW(stack.Add(a, {{in.data(), {7}}}, {{out0.data(), {}}, {out0.data(), {}, 8}}), Error);  // 8 < 28
  EXPECT_EQ(stack.size(), 0u);
  EXPECT_EQ(out0[0], 5.0f);
  step({{&a, {T({7})}}, {&b, {T({2, 2})}}});
}

}  // namespace
}  // namespace dvm::test
