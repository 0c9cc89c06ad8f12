// Eager API: results against a float64 reference for random op sequences
// with random flush points (fused and unfused), flush rules, kernel counts,
// the structure cache, allocation counts, threads and error messages.
#include "dvm/eager.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace dvm::eager {
namespace {

#define EXPECT_HAS(text, sub)                                                               \
  do {                                                                                      \
    const std::string t_ = (text);                                                          \
    EXPECT_NE(t_.find(sub), std::string::npos) << "'" << t_ << "' lacks '" << (sub) << "'"; \
  } while (0)

std::string ErrorOf(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// PyTorch's default f32 tolerances.
constexpr double kRtol = 1.3e-6, kAtol = 1e-5;

// A float64 reference tensor.
struct Ref {
  Shape shape;
  std::vector<double> v;
  size_t size() const { return v.size(); }
};

Ref RefFrom(const Tensor& t) { return {t.shape(), t.values()}; }

// numpy broadcast of a and b, elementwise f.
Ref RefBinary(const Ref& a, const Ref& b, const std::function<double(double, double)>& f) {
  const size_t r = std::max(a.shape.size(), b.shape.size());
  Shape s(r);
  auto dim = [&](const Shape& x, size_t i) { return i + x.size() >= r ? x[i + x.size() - r] : int64_t(1); };
  for (size_t i = 0; i < r; ++i) s[i] = std::max(dim(a.shape, i), dim(b.shape, i));
  Ref out{s, {}};
  size_t n = 1;
  for (int64_t d : s) n *= size_t(d);
  out.v.resize(n);
  std::vector<int64_t> idx(r, 0);
  auto offset = [&](const Shape& x) {
    size_t o = 0;
    for (size_t i = 0; i < r; ++i) {
      const int64_t d = dim(x, i);
      o = o * size_t(d) + size_t(d == 1 ? 0 : idx[i]);
    }
    return o;
  };
  for (size_t k = 0; k < n; ++k) {
    out.v[k] = f(a.v[offset(a.shape)], b.v[offset(b.shape)]);
    for (size_t i = r; i-- > 0;) {
      if (++idx[i] < s[i]) break;
      idx[i] = 0;
    }
  }
  return out;
}

Ref RefUnary(const Ref& a, const std::function<double(double)>& f) {
  Ref r = a;
  for (double& x : r.v) x = f(x);
  return r;
}

// Reduction over the last axis with keepdims.
Ref RefReduceLast(const Ref& a, bool is_max, bool mean) {
  const int64_t c = a.shape.back();
  Ref r{a.shape, {}};
  r.shape.back() = 1;
  for (size_t row = 0; row < a.v.size() / size_t(c); ++row) {
    double acc = is_max ? -INFINITY : 0;
    for (int64_t j = 0; j < c; ++j) {
      const double x = a.v[row * size_t(c) + size_t(j)];
      acc = is_max ? std::max(acc, x) : acc + x;
    }
    r.v.push_back(mean ? acc / double(c) : acc);
  }
  return r;
}

void ExpectClose(const Ref& ref, const Tensor& t, const std::string& what) {
  ASSERT_EQ(ref.shape, t.shape()) << what;
  const std::vector<double> got = t.values();
  for (size_t i = 0; i < ref.size(); ++i)
    ASSERT_LE(std::fabs(got[i] - ref.v[i]), kAtol + kRtol * std::fabs(ref.v[i]))
        << what << " element " << i << ": got " << got[i] << ", want " << ref.v[i];
}

// A random program over a pool of values kept in [-1, 1] (so the float64
// reference bounds the f32 rounding error): unary maps, products,
// averages, where/compare, scalar affine maps, last-axis mean/max with
// keepdims, matmuls, column rolls (slices + concat), reshapes and
// transposes, broadcasting against [C] and [R, 1] operands. Reads, syncs
// and dropped handles at random points.
void RunRandomProgram(uint64_t seed, bool fuse, int max_trace) {
  std::mt19937_64 rng(seed);
  auto pick = [&](size_t n) { return size_t(rng() % n); };
  Context ctx({fuse, max_trace, 64});
  ContextScope scope(ctx);
  const int64_t R = 1 + int64_t(rng() % 9), C = 1 + int64_t(rng() % 70);
  std::vector<Tensor> pool;
  std::vector<Ref> refs;
  const Shape shapes[3] = {{R, C}, {C}, {R, 1}};
  for (int i = 0; i < 4; ++i) {
    Tensor t = Tensor::Random(shapes[i % 3], -1, 1, seed * 10 + i);
    refs.push_back(RefFrom(t));
    pool.push_back(t);
  }
  const Tensor zeros = Tensor::Zeros({R, C});
  const Ref zeros_ref = RefFrom(zeros);
  const Tensor w = Tensor::Random({C, C}, -1.0 / double(C), 1.0 / double(C), seed * 10 + 9);
  const Ref w_ref = RefFrom(w);
  const int steps = 20 + int(rng() % 40);
  for (int s = 0; s < steps; ++s) {
    const size_t a = pick(pool.size()), b = pick(pool.size());
    Tensor t;
    Ref r;
    // Full [R, C] operands for matmul and slices: broadcast against zeros.
    auto full = [&](size_t k) { return pool[k] + zeros; };
    auto full_ref = [&](size_t k) { return RefBinary(refs[k], zeros_ref, [](double x, double) { return x; }); };
    switch (rng() % 14) {
      case 12: {  // [R, C] x [C, C] with |w| <= 1/C keeps values in [-1, 1]
        t = matmul(full(a), w);
        const Ref x = full_ref(a);
        r = {{R, C}, std::vector<double>(size_t(R * C), 0.0)};
        for (int64_t i = 0; i < R; ++i)
          for (int64_t j = 0; j < C; ++j)
            for (int64_t k = 0; k < C; ++k)
              r.v[size_t(i * C + j)] += x.v[size_t(i * C + k)] * w_ref.v[size_t(k * C + j)];
        break;
      }
      case 13: {  // a roll of the columns: slices and a concat
        const int64_t k = int64_t(rng() % uint64_t(C));
        const Tensor x = full(a);
        t = k ? concat({slice(x, 1, k, C - k), slice(x, -1, 0, k)}, 1)
              : reshape(transpose(reshape(x, {R * C, 1}), {1, 0}), {R, C});
        const Ref xr = full_ref(a);
        r = xr;
        for (int64_t i = 0; i < R; ++i)
          for (int64_t j = 0; j < C; ++j) r.v[size_t(i * C + j)] = xr.v[size_t(i * C + (j + k) % C)];
        break;
      }
      case 0:
        t = tanh(pool[a]), r = RefUnary(refs[a], [](double x) { return std::tanh(x); });
        break;
      case 1:
        t = sin(pool[a]), r = RefUnary(refs[a], [](double x) { return std::sin(x); });
        break;
      case 2:
        t = sigmoid(pool[a]) * 2.0 - 1.0;
        r = RefUnary(refs[a], [](double x) { return 2 / (1 + std::exp(-x)) - 1; });
        break;
      case 3:
        t = pool[a] * pool[b];
        r = RefBinary(refs[a], refs[b], [](double x, double y) { return x * y; });
        break;
      case 4:
        t = (pool[a] + pool[b]) * 0.5;
        r = RefBinary(refs[a], refs[b], [](double x, double y) { return (x + y) * 0.5; });
        break;
      case 5:
        t = maximum(pool[a], pool[b]) - relu(pool[b]) * 0.5;
        r = RefBinary(refs[a], refs[b], [](double x, double y) { return std::max(x, y) - std::max(y, 0.0) * 0.5; });
        break;
      case 6:
        t = where(pool[a] > pool[b], pool[a], neg(pool[b]));
        r = RefBinary(refs[a], refs[b], [](double x, double y) { return x > y ? x : -y; });
        break;
      case 7:
        t = 0.25 - abs(pool[a]) * 0.75;
        r = RefUnary(refs[a], [](double x) { return 0.25 - std::fabs(x) * 0.75; });
        break;
      case 8:
        t = mean(pool[a], {-1}, true);
        r = RefReduceLast(refs[a], false, true);
        break;
      case 9:
        t = max(pool[a], {-1}, true) * cos(pool[b]);
        r = RefBinary(RefReduceLast(refs[a], true, false), refs[b], [](double x, double y) { return x * std::cos(y); });
        break;
      case 10:
        t = erf(pool[a]) / 1.5;
        r = RefUnary(refs[a], [](double x) { return std::erf(x) / 1.5; });
        break;
      default:
        t = minimum(pool[a], 0.5) * pool[b];
        r = RefBinary(refs[a], refs[b], [](double x, double y) { return std::min(x, 0.5) * y; });
        break;
    }
    pool.push_back(t);
    refs.push_back(r);
    const int what = int(rng() % 10);
    if (what == 0) {  // a read
      const size_t k = pick(pool.size());
      ExpectClose(refs[k], pool[k], "read at step " + std::to_string(s));
    } else if (what == 1) {
      ctx.Sync();
    } else if (what <= 4 && pool.size() > 3) {  // drop a handle
      const size_t k = pick(pool.size());
      pool.erase(pool.begin() + long(k));
      refs.erase(refs.begin() + long(k));
    }
  }
  for (size_t k = 0; k < pool.size(); ++k) ExpectClose(refs[k], pool[k], "final value " + std::to_string(k));
}

TEST(EagerRandom, FusedMatchesFloat64Reference) {
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    RunRandomProgram(seed, true, 512);
    if (HasFatalFailure()) return;
  }
}

TEST(EagerRandom, SmallTraceLimitMatchesFloat64Reference) {
  for (uint64_t seed = 100; seed <= 115; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    RunRandomProgram(seed, true, 1 + int(seed % 7));
    if (HasFatalFailure()) return;
  }
}

TEST(EagerRandom, UnfusedMatchesFloat64Reference) {
  for (uint64_t seed = 200; seed <= 210; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    RunRandomProgram(seed, false, 512);
    if (HasFatalFailure()) return;
  }
}

// A 10-op elementwise chain on x [64, 100] and b [100].
Tensor Chain10(const Tensor& x, const Tensor& b) {
  Tensor y = x * 2.0;
  y = y + b;
  y = tanh(y);
  y = y * x;
  y = exp(y);
  y = y - 1.0;
  y = abs(y);
  y = sqrt(y);
  y = y * b + 1.0;
  return y;
}

double Chain10Ref(double x, double b) {
  double y = std::tanh(x * 2 + b) * x;
  y = std::sqrt(std::fabs(std::exp(y) - 1));
  return y * b + 1;
}

TEST(EagerFusion, TenOpChainReadOnceIsOneKernel) {
  Context ctx;
  ContextScope scope(ctx);
  Tensor x = Tensor::Random({64, 100}, -1, 1, 1);
  Tensor b = Tensor::Random({100}, -1, 1, 2);
  const uint64_t allocs = ctx.stats().allocations;
  Tensor y = Chain10(x, b);
  EXPECT_EQ(ctx.stats().ops, 10u);
  EXPECT_EQ(ctx.stats().flushes, 0u);
  EXPECT_TRUE(y.pending());
  const std::vector<double> got = y.values();
  EXPECT_FALSE(y.pending());
  EXPECT_EQ(ctx.stats().flushes, 1u);
  EXPECT_EQ(ctx.stats().kernels, 1u);
  EXPECT_EQ(ctx.stats().launches, 1u);
  // Only the result was allocated: the nine intermediates never were.
  EXPECT_EQ(ctx.stats().allocations - allocs, 1u);
  const std::vector<double> xv = x.values(), bv = b.values();
  for (size_t i = 0; i < got.size(); ++i) {
    const double want = Chain10Ref(xv[i], bv[i % 100]);
    ASSERT_NEAR(got[i], want, kAtol + kRtol * std::fabs(want)) << i;
  }
}

TEST(EagerFusion, UnfusedRunsEveryOpAtOnce) {
  Context ctx({/*fuse=*/false});
  ContextScope scope(ctx);
  Tensor x = Tensor::Random({64, 100}, -1, 1, 1);
  Tensor b = Tensor::Random({100}, -1, 1, 2);
  const uint64_t allocs = ctx.stats().allocations;
  Tensor y = Chain10(x, b);
  EXPECT_FALSE(y.pending());
  EXPECT_EQ(ctx.stats().flushes, 10u);
  EXPECT_EQ(ctx.stats().kernels, 10u);
  EXPECT_EQ(ctx.stats().allocations - allocs, 10u);  // every op's result
}

TEST(EagerFusion, EscapingIntermediatesAreWritten) {
  Context ctx;
  ContextScope scope(ctx);
  Tensor x = Tensor::Random({8, 16}, -1, 1, 3);
  const uint64_t allocs = ctx.stats().allocations;
  Tensor a = exp(x);             // kept: escapes
  Tensor c = tanh(a * 0.5) + a;  // a * 0.5 and tanh(...) do not
  ctx.Sync();
  EXPECT_EQ(ctx.stats().allocations - allocs, 2u);
  EXPECT_FALSE(a.pending());
  const std::vector<double> xv = x.values(), av = a.values(), cv = c.values();
  for (size_t i = 0; i < xv.size(); ++i) {
    ASSERT_NEAR(av[i], std::exp(xv[i]), 1e-5 * std::exp(xv[i]));
    const double want = std::tanh(av[i] * 0.5) + av[i];
    ASSERT_NEAR(cv[i], want, kAtol + kRtol * std::fabs(want));
  }
}

TEST(EagerFusion, DeadValuesAreNotComputed) {
  Context ctx;
  ContextScope scope(ctx);
  Tensor x = Tensor::Random({8, 16}, -1, 1, 3);
  { Tensor dropped = exp(x) * 2.0; }
  EXPECT_EQ(ctx.pending_ops(), 2u);
  ctx.Sync();
  EXPECT_EQ(ctx.pending_ops(), 0u);
  EXPECT_EQ(ctx.stats().flushes, 0u);  // nothing escaped: nothing ran
  EXPECT_EQ(ctx.stats().kernels, 0u);
}

TEST(EagerAlloc, LargeBuffersComeBackFromTheCache) {
  Context ctx;
  ContextScope scope(ctx);
  Tensor x = Tensor::Random({1 << 18}, -1, 1, 5);  // 1 MiB
  for (int i = 0; i < 3; ++i) {
    Tensor y = exp(x);
    EXPECT_FLOAT_EQ(float(y.values()[7]), std::exp(float(x.values()[7])));
  }  // y's buffer goes back to the cache
  EXPECT_EQ(ctx.stats().allocations, 4u);
  EXPECT_GE(ctx.stats().reused, 2u);
}

TEST(EagerFlush, ReadFlushes) {
  Context ctx;
  ContextScope scope(ctx);
  Tensor x = Tensor::Full({4, 4}, 2.0);
  Tensor s = sum(x * x);
  EXPECT_EQ(ctx.pending_ops(), 2u);
  EXPECT_EQ(s.item(), 64.0);
  EXPECT_EQ(ctx.pending_ops(), 0u);
  EXPECT_EQ(ctx.stats().flushes, 1u);
  // A host comparison flushes too.
  Tensor big = sum(x) > 10.0;
  EXPECT_TRUE(big.pending());
  EXPECT_TRUE(static_cast<bool>(big));
  EXPECT_EQ(ctx.stats().flushes, 2u);
}

TEST(EagerFlush, SizeLimitFlushes) {
  Context ctx({true, /*max_trace=*/8});
  ContextScope scope(ctx);
  Tensor x = Tensor::Full({16}, 1.0);
  for (int i = 0; i < 7; ++i) x = x + 1.0;
  EXPECT_EQ(ctx.stats().flushes, 0u);
  EXPECT_EQ(ctx.pending_ops(), 7u);
  x = x + 1.0;  // the 8th op fills the trace
  EXPECT_EQ(ctx.stats().flushes, 1u);
  EXPECT_EQ(ctx.pending_ops(), 0u);
  EXPECT_FALSE(x.pending());
  for (int i = 0; i < 20; ++i) x = x + 1.0;
  EXPECT_EQ(ctx.stats().flushes, 3u);
  EXPECT_EQ(ctx.pending_ops(), 4u);
  EXPECT_EQ(x.values()[5], 29.0);
}

TEST(EagerFlush, SyncFlushes) {
  Context ctx;
  ContextScope scope(ctx);
  Tensor x = Tensor::Full({3}, 1.5);
  Tensor y = x * 2.0;
  EXPECT_TRUE(y.pending());
  Sync();  // the active context
  EXPECT_FALSE(y.pending());
  EXPECT_EQ(ctx.stats().flushes, 1u);
  EXPECT_EQ(y.values(), (std::vector<double>{3, 3, 3}));
}

TEST(EagerFlush, UnfusibleOpFlushes) {
  Context ctx;
  ContextScope scope(ctx);
  Tensor x = Tensor::FromVector({0, 1, -2, 0, 3, 0}, {2, 3});
  Tensor other = exp(x);  // pending, unrelated
  Tensor nz = nonzero(x * 2.0);
  EXPECT_FALSE(other.pending());  // the whole trace ran
  EXPECT_EQ(ctx.stats().flushes, 1u);
  EXPECT_EQ(nz.shape(), (Shape{3, 2}));
  EXPECT_EQ(nz.values(), (std::vector<double>{0, 1, 0, 2, 1, 1}));
}

TEST(EagerCache, RepeatedLoopBodyHitsCache) {
  Context ctx;
  ContextScope scope(ctx);
  for (int64_t n : {1000, 1000, 1000, 37, 1000, 5000}) {
    Tensor x = Tensor::Random({n}, 0, 1, uint64_t(n));
    Tensor b = Tensor::Random({n}, 0, 1, 7);
    for (int step = 0; step < 5; ++step) {
      x = x * 0.5 + b;
      x = sqrt(x * x + 1.0) - 1.0;
      (void)x.values();  // the loop body is one trace
    }
  }
  // 30 flushes of one structure: one compile; the pattern (all dims in one
  // class) does not change with n, so new lengths cost codegens only.
  EXPECT_EQ(ctx.stats().flushes, 30u);
  EXPECT_EQ(ctx.stats().cache_misses, 1u);
  EXPECT_EQ(ctx.stats().cache_hits, 29u);
  EXPECT_EQ(ctx.cache_size(), 1u);
  EXPECT_GE(ctx.stats().codegens, 3u);  // 1000, 37, 5000
  EXPECT_LE(ctx.stats().codegens, 4u);
}

TEST(EagerCache, EqualityPatternIsPartOfTheKey) {
  Context ctx;
  ContextScope scope(ctx);
  auto run = [&](int64_t r, int64_t c) {
    Tensor x = Tensor::Random({r, c}, -1, 1, 1);
    return sum(exp(x), {-1}).values();
  };
  run(4, 8);
  run(5, 9);  // same pattern: two classes
  EXPECT_EQ(ctx.stats().cache_misses, 1u);
  run(6, 6);  // one class
  EXPECT_EQ(ctx.stats().cache_misses, 2u);
  run(1, 9);  // a dim of 1 is a constant
  EXPECT_EQ(ctx.stats().cache_misses, 3u);
  const std::vector<double> v = run(7, 7);
  EXPECT_EQ(ctx.stats().cache_misses, 3u);
  EXPECT_EQ(v.size(), 7u);
}

TEST(EagerCache, CapacityBoundsTheCache) {
  Context ctx({true, 512, /*cache_capacity=*/2});
  ContextScope scope(ctx);
  Tensor x = Tensor::Full({4}, 1.0);
  for (double s : {1.0, 2.0, 3.0, 4.0})  // scalars are part of the key
    EXPECT_EQ((x * s).values()[0], s);
  EXPECT_EQ(ctx.stats().cache_misses, 4u);
  EXPECT_EQ(ctx.cache_size(), 2u);
}

TEST(EagerThreads, TwoThreadsComputeIndependently) {
  Tensor shared = Tensor::Random({256, 64}, -1, 1, 9);  // materialised
  std::vector<double> result[2];
  std::vector<uint64_t> flushes(2);
  auto work = [&](int id) {
    Context& ctx = Context::Current();  // this thread's default context
    Tensor acc = shared * double(id + 1);
    for (int i = 0; i < 200; ++i) {
      acc = tanh(acc) * 0.9 + shared * 0.1;
      if (i % 50 == 49) (void)sum(acc).item();
    }
    result[id] = acc.values();
    flushes[id] = ctx.stats().flushes;
  };
  std::thread t0(work, 0), t1(work, 1);
  t0.join();
  t1.join();
  const std::vector<double> s = shared.values();
  for (int id = 0; id < 2; ++id) {
    EXPECT_EQ(flushes[id], 4u);  // the reads; values() finds acc computed
    for (size_t i = 0; i < s.size(); i += 97) {
      double a = s[i] * (id + 1);
      for (int k = 0; k < 200; ++k) a = std::tanh(a) * 0.9 + s[i] * 0.1;
      ASSERT_NEAR(result[id][i], a, 1e-4) << "thread " << id << " elem " << i;
    }
  }
}

TEST(EagerErrors, RecordTimeErrorNamesTheOp) {
  Context ctx;
  ContextScope scope(ctx);
  Tensor a = Tensor::Zeros({3, 4}), b = Tensor::Zeros({5});
  Tensor t = exp(a) * 2.0 + 1.0;  // ops #0..#2
  const std::string e = ErrorOf([&] { (void)(t - b); });
  EXPECT_HAS(e, "eager op #3 (sub)");
  EXPECT_HAS(e, "[3, 4]");
  EXPECT_HAS(e, "[5]");
  EXPECT_HAS(ErrorOf([&] {
               (void)(a + Tensor::Zeros({3, 4}, DType::kInt32));
             }),
             "(add): add: dtype mismatch f32 vs i32");
  EXPECT_HAS(ErrorOf([&] { (void)matmul(a, a); }), "(matmul): inner dims differ");
  EXPECT_HAS(ErrorOf([&] { (void)reshape(a, {5, -1}); }), "(reshape): cannot reshape");
  EXPECT_HAS(ErrorOf([&] { (void)sum(a, {2}); }), "axis 2 out of range");
  EXPECT_HAS(ErrorOf([&] { (void)slice(a, 1, 2, 3); }), "(slice)");
  EXPECT_HAS(ErrorOf([&] { (void)exp(Tensor::Zeros({2}, DType::kInt32)); }), "exp: dtype i32 not supported");
  // The trace survives a rejected op.
  EXPECT_EQ(ctx.pending_ops(), 3u);
  EXPECT_EQ(t.values()[0], 3.0);
}

TEST(EagerErrors, FlushTimeErrorNamesTheOp) {
  Context ctx;
  ContextScope scope(ctx);
  // Gather checks its ids when it runs: the error surfaces at the flush
  // and names the gather by its position in the trace.
  Tensor table = Tensor::Random({4, 3}, -1, 1, 1);
  const int32_t bad[2] = {1, 7};
  Tensor ids = Tensor::FromData(bad, {2}, DType::kInt32);
  Tensor y = exp(table) * 2.0;      // #0, #1
  Tensor g = gather(y, ids) + 1.0;  // #2, #3
  const std::string e = ErrorOf([&] { (void)g.values(); });
  EXPECT_HAS(e, "eager op #2 (gather)");
  EXPECT_HAS(e, "7");
  EXPECT_HAS(ErrorOf([&] { (void)g.values(); }), "trace failed");
  EXPECT_HAS(ErrorOf([&] { (void)(g * 2.0); }), "trace that failed");
  // The context goes on.
  EXPECT_EQ((table * 0.0 + 1.0).values()[0], 1.0);
}

TEST(EagerOps, ShapesLibraryOpsAndReductions) {
  Context ctx;
  ContextScope scope(ctx);
  Tensor a = Tensor::FromVector({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(transpose(a, {1, 0}).values(), (std::vector<double>{1, 4, 2, 5, 3, 6}));
  EXPECT_EQ(reshape(a, {3, -1}).shape(), (Shape{3, 2}));
  EXPECT_EQ(sum(a, {0}).values(), (std::vector<double>{5, 7, 9}));
  EXPECT_EQ(max(a, {1}, true).shape(), (Shape{2, 1}));
  EXPECT_EQ(max(a, {1}, true).values(), (std::vector<double>{3, 6}));
  EXPECT_EQ(min(a).item(), 1.0);
  EXPECT_EQ(prod(a).item(), 720.0);
  EXPECT_EQ(mean(a, {1}).values(), (std::vector<double>{2, 5}));
  EXPECT_EQ(slice(a, 1, 1, 2).values(), (std::vector<double>{2, 3, 5, 6}));
  EXPECT_EQ(concat({a, a * 10.0}, 0).shape(), (Shape{4, 3}));
  EXPECT_EQ(concat({slice(a, 1, 2, 1), slice(a, 1, 0, 2)}, 1).values(), (std::vector<double>{3, 1, 2, 6, 4, 5}));
  EXPECT_EQ(broadcast_to(Tensor::FromVector({1, 2}, {2, 1}), {2, 3}).values(), (std::vector<double>{1, 1, 1, 2, 2, 2}));
  EXPECT_EQ(matmul(a, a, false, true).values(), (std::vector<double>{14, 32, 32, 77}));
  EXPECT_EQ(matmul(a, a, true, false).shape(), (Shape{3, 3}));
  EXPECT_EQ(cast(a * 1.6, DType::kInt32).values(), (std::vector<double>{1, 3, 4, 6, 8, 9}));
  EXPECT_EQ(where(a > 3.0, a, Tensor::Zeros({1})).values(), (std::vector<double>{0, 0, 0, 4, 5, 6}));
  EXPECT_EQ(arange(4, DType::kFloat32, 1, 2).values(), (std::vector<double>{1, 3, 5, 7}));
  const std::vector<double> m = causal_mask(2, 3).values();
  EXPECT_EQ(m[1], 0.0);
  EXPECT_TRUE(std::isinf(m[2]) && m[2] < 0);
  const int32_t ids[3] = {1, 0, 1};
  EXPECT_EQ(gather(a, Tensor::FromData(ids, {3}, DType::kInt32)).values(),
            (std::vector<double>{4, 5, 6, 1, 2, 3, 4, 5, 6}));
  EXPECT_EQ((2.0 - a).values()[0], 1.0);
  EXPECT_EQ((12.0 / a).values()[5], 2.0);
  EXPECT_EQ((a == 2.0).dtype(), DType::kBool);
  EXPECT_EQ(swapaxes(reshape(a, {1, 2, 3}), 0, 2).shape(), (Shape{3, 2, 1}));
}

TEST(EagerOps, FromBufferReadsTheCallersMemory) {
  Context ctx;
  ContextScope scope(ctx);
  std::vector<float> v = {1, 2, 3};
  Tensor t = Tensor::FromBuffer(v.data(), {3}, DType::kFloat32);
  const uint64_t allocs = ctx.stats().allocations;
  EXPECT_EQ(t.data(), static_cast<const void*>(v.data()));
  EXPECT_EQ(ctx.stats().allocations, allocs);
  EXPECT_EQ(sum(t * t).item(), 14.0);
}

// A layer-like trace (matmul, softmax, reshapes, slices, mask) gives the
// same values fused and unfused, across lengths that share one plan.
TEST(EagerFusion, AttentionFusedEqualsUnfused) {
  auto attention = [](int64_t S, Context& ctx) {
    ContextScope scope(ctx);
    Tensor x = Tensor::Random({S, 32}, -1, 1, uint64_t(S));
    Tensor w = Tensor::Random({32, 96}, -0.3, 0.3, 2);
    Tensor qkv = matmul(x, w);
    Tensor q = reshape(slice(qkv, 1, 0, 32), {S, 4, 8});
    Tensor k = reshape(slice(qkv, 1, 32, 32), {S, 4, 8});
    Tensor v = reshape(slice(qkv, 1, 64, 32), {S, 4, 8});
    q = transpose(q, {1, 0, 2});
    k = transpose(k, {1, 0, 2});
    v = transpose(v, {1, 0, 2});
    Tensor s = matmul(q, k, false, true) * 0.35 + causal_mask(S, S);
    Tensor p = exp(s - max(s, {-1}, true));
    p = p / sum(p, {-1}, true);
    Tensor o = reshape(transpose(matmul(p, v), {1, 0, 2}), {S, 32});
    return (o + x).values();
  };
  Context fused, unfused({false});
  for (int64_t S : {5, 17, 3, 17}) {
    const std::vector<double> a = attention(S, fused), b = attention(S, unfused);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], kAtol + kRtol * std::fabs(b[i])) << S << " " << i;
  }
  EXPECT_EQ(fused.stats().cache_misses, 1u);  // one plan for every S > 1
  EXPECT_EQ(fused.stats().cache_hits, 3u);
  EXPECT_LT(fused.stats().kernels, unfused.stats().kernels);
}

}  // namespace
}  // namespace dvm::eager
