// MatMul ("mix" kernels): GEMM through BLAS with fused prologues/epilogues,
// against the float64 reference.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cmath>

#include "test_util.h"
#include "vm/cpu/gemm.h"

namespace dvm::test {
namespace {

struct MMCase {
  int64_t m, k, n;
  bool ta, tb;
  Shape batch_a, batch_b;
  DType dt = DType::kFloat32;
};

std::string Name(const MMCase& c) {
  std::string s = std::to_string(c.m) + "x" + std::to_string(c.k) + "x" + std::to_string(c.n);
  if (c.ta) s += "_ta";
  if (c.tb) s += "_tb";
  for (int64_t d : c.batch_a) s += "_a" + std::to_string(d);
  for (int64_t d : c.batch_b) s += "_b" + std::to_string(d);
  return s + "_" + DTypeName(c.dt);
}

Shape Operand(const Shape& batch, int64_t r, int64_t c, bool trans) {
  Shape s = batch;
  s.push_back(trans ? c : r);
  s.push_back(trans ? r : c);
  return s;
}

class MatMulTest : public ::testing::TestWithParam<MMCase> {};

TEST_P(MatMulTest, MatchesReference) {
  const MMCase& c = GetParam();
  Rng rng(42);
  const Shape sa = Operand(c.batch_a, c.m, c.k, c.ta), sb = Operand(c.batch_b, c.k, c.n, c.tb);
  for (KernelType type : {KernelType::kStatic, KernelType::kDynamic}) {
    SCOPED_TRACE(type == KernelType::kStatic ? "static" : "dynamic");
    Kernel k(type);
    auto dims = [&](const Shape& s) { return type == KernelType::kStatic ? s : Shape(s.size(), -1); };
    Shape da = dims(sa), db = dims(sb);
    auto* a = k.Load(nullptr, D(da), c.dt);
    auto* b = k.Load(nullptr, D(db), c.dt);
    k.Store(nullptr, k.MatMul(a, b, c.ta, c.tb));
    std::vector<ref::Tensor> in = {MakeTensor(c.dt, sa, Uniform(-1, 1), rng),
                                   MakeTensor(c.dt, sb, Uniform(-1, 1), rng)};
    // f32 sums of K products drift from float64 with K (either library, in
    // any order: at K = 520, 5 of 133,900 sums ~1.6e-5 off against the
    // default atol 1e-5): K >= 256 gets atol 1e-5 * K / 64.
    const Tolerance wide{1.3e-6, 1e-5 * static_cast<double>(c.k) / 64};
    EXPECT_TRUE(CheckKernel(k, in, c.dt == DType::kFloat32 && c.k >= 256 ? &wide : nullptr));
  }
}

std::vector<MMCase> Cases() {
  std::vector<MMCase> v = {
      {1, 1, 1, false, false, {}, {}},
      {1, 768, 64, false, false, {}, {}},
      {7, 1, 5, false, false, {}, {}},
      {300, 3, 2, false, false, {}, {}},  // tall-skinny
      {2, 5, 700, false, false, {}, {}},
      {129, 65, 33, false, false, {}, {}},  // odd tiles
      {70, 31, 90, true, false, {}, {}},
      {70, 31, 90, false, true, {}, {}},
      {33, 17, 9, true, true, {}, {}},
      {8, 16, 8, false, false, {3}, {3}},
      {8, 16, 8, false, false, {2, 1}, {3}},
      {5, 4, 6, true, false, {1, 2}, {2, 1}},
      {300, 64, 96, false, false, {}, {}},
      {0, 4, 5, false, false, {}, {}},
      {3, 0, 5, false, false, {}, {}},
      // Rank 8: six batch dims that merge (the format holds four); size-1
      // and broadcast dims among them.
      {5, 4, 6, false, false, {2, 3, 2, 1, 2, 2}, {2, 3, 2, 1, 2, 2}},
      {5, 4, 6, false, true, {2, 3, 1, 1, 2, 2}, {1, 1, 3, 1, 1, 1}},
      // Large enough for oneDNN's blocks where the CPU has AVX-512 (gemm.h:
      // >= 2^22 multiply-adds or a B of >= 2^19 elements), with odd dims,
      // every transpose, batches with a broadcast B, and one row.
      {130, 520, 1030, false, false, {}, {}},
      {130, 520, 1030, true, false, {}, {}},
      {130, 520, 1030, false, true, {}, {}},
      {129, 521, 1031, true, true, {}, {}},
      {65, 300, 230, false, false, {3}, {1}},
      {1, 1024, 2100, false, false, {}, {}},
  };
  for (DType dt : {DType::kFloat16, DType::kBFloat16}) {
    v.push_back({33, 40, 17, false, false, {}, {}, dt});
    v.push_back({9, 20, 31, true, true, {2}, {}, dt});
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(MatMul, MatMulTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return Name(info.param); });

// A GEMM's results do not depend on how many threads cut it into blocks:
// every block of one GEMM goes through one library (gemm.h), which gives a
// row the same bits in any block. Small and large GEMMs (the two libraries
// where the CPU has AVX-512), row and column splits, transposes.
TEST(MatMul, SameBitsForAnyThreadCount) {
  const int before = GetNumThreads();
  Rng rng(11);
  for (auto [M, K, N, tb] : std::vector<std::array<int64_t, 4>>{
           {300, 64, 96, 0}, {1, 768, 1536, 0}, {40, 768, 768, 0}, {200, 768, 768, 1}, {513, 256, 130, 0}}) {
    SCOPED_TRACE(std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N) + (tb ? " tb" : ""));
    auto a = MakeTensor(DType::kFloat32, {M, K}, Uniform(-1, 1), rng);
    auto b = MakeTensor(DType::kFloat32, tb ? Shape{N, K} : Shape{K, N}, Uniform(-1, 1), rng);
    std::vector<std::vector<double>> out;  // floats widened: equal iff the same bits (no NaNs here)
    for (int threads : {1, 2, 3}) {
      SetNumThreads(threads);
      Kernel k(KernelType::kDynamic);
      auto* A = k.Load(nullptr, {-1, -1}, DType::kFloat32);
      auto* B = k.Load(nullptr, {-1, -1}, DType::kFloat32);
      k.Store(nullptr, k.MatMul(A, B, false, tb != 0));
      auto r = RunKernel(k, {a, b});
      ASSERT_TRUE(r.problems.empty()) << r.problems;
      out.push_back(r.outputs[0].data);
    }
    EXPECT_EQ(out[0], out[1]) << "1 vs 2 threads";
    EXPECT_EQ(out[0], out[2]) << "1 vs 3 threads";
  }
  SetNumThreads(before);
}

// A GEMM operand whose rows are more than 2^31 - 1 elements apart (here a
// [2, 64] slice of a [2, 2^31 + 16] tensor, its 16 GiB reserved but never
// touched beyond the slice) does not fit OpenBLAS's 32-bit int strides,
// which the policy would pick for so small a GEMM. It runs through oneDNN
// (64-bit dims) where DVM has it, else fails with an error naming the
// stride. Until session 22 OpenBLAS got the stride cut to an int, printed
// "illegal value" and left C as it was: a wrong answer.
TEST(MatMul, RowStrideBeyondInt) {
  const int64_t H = (int64_t{1} << 31) + 16;
  const size_t bytes = size_t(2) * size_t(H) * sizeof(float);
  void* map = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (map == MAP_FAILED) GTEST_SKIP() << "cannot reserve " << bytes << " bytes of address space";
  float* big = static_cast<float*>(map);
  Rng rng(5);
  std::uniform_real_distribution<float> u(-1, 1);
  for (int64_t r = 0; r < 2; ++r)
    for (int64_t j = 0; j < 64; ++j) big[r * H + j] = u(rng);
  std::vector<float> b(64 * 8), c(16, std::nanf(""));
  for (float& x : b) x = u(rng);
  Kernel k(KernelType::kDynamic);
  const int64_t shape[] = {2, H}, start[] = {0, 0}, size[] = {2, 64};
  auto* A = k.SliceLoad(nullptr, shape, DType::kFloat32, start, size);
  k.Store(nullptr, k.MatMul(A, k.Load(nullptr, {64, 8}, DType::kFloat32)));
  try {
    k.Launch({{big, {2, H}, bytes}, {b.data(), {64, 8}, b.size() * 4}}, {{c.data(), {}, c.size() * 4}});
    EXPECT_TRUE(vm::HaveOneDnn()) << "ran without oneDNN";
    for (int64_t r = 0; r < 2; ++r)
      for (int64_t n = 0; n < 8; ++n) {
        double want = 0;
        for (int64_t j = 0; j < 64; ++j) want += double(big[r * H + j]) * b[size_t(j * 8 + n)];
        EXPECT_NEAR(c[size_t(r * 8 + n)], want, 1e-5) << "C[" << r << ", " << n << "]";
      }
  } catch (const Error& e) {
    EXPECT_FALSE(vm::HaveOneDnn()) << e.what();
    EXPECT_NE(std::string(e.what()).find("lda (A's row stride) = 2147483664"), std::string::npos) << e.what();
    for (float x : c) EXPECT_TRUE(std::isnan(x)) << "the output was written";
  }
  munmap(map, bytes);
}

// A kernel's explicit compile step takes oneDNN's one-time JIT where the
// policy sends large GEMMs to oneDNN (vm::WarmGemm), not its first launch.
// CTest runs each test in a process of its own, where no GEMM ran before.
TEST(MatMul, CodeGenWarmsGemm) {
  Kernel k;
  k.Store(nullptr, k.MatMul(k.Load(nullptr, {4, 8}, DType::kFloat32), k.Load(nullptr, {8, 2}, DType::kFloat32)));
  k.CodeGen();
  EXPECT_EQ(vm::GemmWarmed(), vm::GemmLibFor(256, 256, 256, 256, 256) == vm::GemmLib::kOneDnn);
}

// Batch dims that alternate between the operands do not merge: more than
// the format's four is an error that names the operands, not a crash.
TEST(MatMulErrors, TooManyUnmergeableBatchDims) {
  Kernel k(KernelType::kDynamic);
  auto* a = k.Load(nullptr, {-1, -1, -1, -1, -1, -1, -1, -1}, DType::kFloat32);
  auto* b = k.Load(nullptr, {-1, -1, -1, -1, -1, -1, -1, -1}, DType::kFloat32);
  k.Store(nullptr, k.MatMul(a, b));
  std::vector<float> x(2 * 2 * 2 * 2 * 2 * 3 * 4, 1.0f), y(x.size(), 1.0f), o(1024);
  try {
    k.Launch({{x.data(), {2, 1, 2, 1, 2, 1, 3, 4}, 0}, {y.data(), {1, 2, 1, 2, 1, 2, 4, 3}, 0}},
             {{o.data(), {}, o.size() * 4}});
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("batch dims that do not merge"), std::string::npos) << e.what();
  }
}

// Bias + GELU (tanh form) + residual fused on C equals the same ops run as
// a separate kernel on a stored C, bit for bit.
TEST(MatMulEpilogue, FusedEqualsUnfused) {
  Rng rng(7);
  for (auto [M, K, N] : std::vector<std::array<int64_t, 3>>{{4, 32, 48}, {200, 64, 130}}) {
    SCOPED_TRACE(std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N));
    auto a = MakeTensor(DType::kFloat32, {M, K}, Uniform(-1, 1), rng);
    auto b = MakeTensor(DType::kFloat32, {K, N}, Uniform(-1, 1), rng);
    auto bias = MakeTensor(DType::kFloat32, {N}, Uniform(-1, 1), rng);
    auto res = MakeTensor(DType::kFloat32, {M, N}, Uniform(-1, 1), rng);
    auto epilogue = [](Kernel& k, NDObject* c, NDObject* bias, NDObject* res) {
      auto* x = k.Binary(BinaryOp::kAdd, c, bias);
      auto* x3 = k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kMul, x, x), x);
      auto* u =
          k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kAdd, x, k.Binary(BinaryOp::kMul, x3, 0.044715)), 0.7978845608);
      auto* g = k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kMul, x, 0.5),
                         k.Binary(BinaryOp::kAdd, k.Unary(UnaryOp::kTanh, u), 1.0));
      return k.Binary(BinaryOp::kAdd, g, res);
    };
    Kernel fused(KernelType::kDynamic);
    {
      auto* A = fused.Load(nullptr, {-1, -1}, DType::kFloat32);
      auto* B = fused.Load(nullptr, {-1, -1}, DType::kFloat32);
      auto* Bi = fused.Load(nullptr, {-1}, DType::kFloat32);
      auto* R = fused.Load(nullptr, {-1, -1}, DType::kFloat32);
      fused.Store(nullptr, epilogue(fused, fused.MatMul(A, B), Bi, R));
    }
    auto out_fused = RunKernel(fused, {a, b, bias, res});
    ASSERT_TRUE(out_fused.problems.empty()) << out_fused.problems;
    // One GEMM stage carries the epilogue.
    EXPECT_NE(fused.Das().find("gemm"), std::string::npos);
    EXPECT_EQ(fused.Das().find("stage 1"), std::string::npos) << fused.Das();

    Kernel mm(KernelType::kDynamic), ep(KernelType::kDynamic);
    {
      auto* A = mm.Load(nullptr, {-1, -1}, DType::kFloat32);
      auto* B = mm.Load(nullptr, {-1, -1}, DType::kFloat32);
      mm.Store(nullptr, mm.MatMul(A, B));
      auto* C = ep.Load(nullptr, {-1, -1}, DType::kFloat32);
      auto* Bi = ep.Load(nullptr, {-1}, DType::kFloat32);
      auto* R = ep.Load(nullptr, {-1, -1}, DType::kFloat32);
      ep.Store(nullptr, epilogue(ep, C, Bi, R));
    }
    auto c = RunKernel(mm, {a, b});
    auto out_unfused = RunKernel(ep, {c.outputs[0], bias, res});
    EXPECT_TRUE(BitsEqual(out_fused.outputs[0], out_unfused.outputs[0]));
    EXPECT_TRUE(CheckKernel(fused, {a, b, bias, res}));
  }
}

// A prologue (cast and scale of an input) is computed into the GEMM operand.
TEST(MatMulPrologue, CastAndScale) {
  Rng rng(9);
  Kernel k(KernelType::kDynamic);
  auto* a = k.Load(nullptr, {-1, -1}, DType::kBFloat16);
  auto* b = k.Load(nullptr, {-1, -1}, DType::kFloat32);
  auto* a32 = k.Binary(BinaryOp::kMul, k.Cast(a, DType::kFloat32), 0.125);
  k.Store(nullptr, k.Cast(k.MatMul(a32, b), DType::kBFloat16));
  EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kBFloat16, {37, 50}, Uniform(-2, 2), rng),
                              MakeTensor(DType::kFloat32, {50, 21}, Uniform(-1, 1), rng)}));
}

// An elementwise op that reads the product through a transpose cannot run
// in the GEMM stage's epilogue: a block's epilogue would read elements of
// blocks not yet computed. Found by the randomized test (seed
// 4167791308244410924): maximum(C^T^T', C) over [64, 8, 64] had 8424 of
// 32768 elements wrong; codegen now splits such a reader off.
TEST(MatMulEpilogue, TransposedReadOfTheProductSplits) {
  Rng rng(21);
  {
    SCOPED_TRACE("batch and column axes swapped");
    Kernel k;
    auto* a = k.Load(nullptr, {64, 8, 3}, DType::kFloat32);
    auto* c = k.MatMul(a, k.Load(nullptr, {1, 3, 64}, DType::kFloat32));
    k.Store(nullptr, k.Binary(BinaryOp::kMaximum, k.Transpose(k.Transpose(c, {2, 0, 1}), {0, 2, 1}), c));
    EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kFloat32, {64, 8, 3}, Uniform(-2, 2), rng),
                                MakeTensor(DType::kFloat32, {1, 3, 64}, Uniform(-2, 2), rng)}));
  }
  {
    SCOPED_TRACE("rows and columns swapped");
    Kernel k;
    auto* a = k.Load(nullptr, {4, 16, 3}, DType::kFloat32);
    auto* c = k.MatMul(a, k.Load(nullptr, {3, 16}, DType::kFloat32));
    k.Store(nullptr, k.Binary(BinaryOp::kMaximum, k.Transpose(c, {0, 2, 1}), c));
    EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kFloat32, {4, 16, 3}, Uniform(-2, 2), rng),
                                MakeTensor(DType::kFloat32, {3, 16}, Uniform(-2, 2), rng)}));
  }
}

TEST(MatMulErrors, ClearMessages) {
  {
    Kernel k;
    float buf[64] = {};
    auto* a = k.Load(buf, {4, 3}, DType::kFloat32);
    auto* b = k.Load(buf, {4, 2}, DType::kFloat32);
    try {
      k.MatMul(a, b);
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("inner dims differ"), std::string::npos) << e.what();
    }
  }
  {
    Kernel k;
    float buf[256] = {};
    auto* a = k.Load(buf, {2, 4, 3}, DType::kFloat32);
    auto* b = k.Load(buf, {3, 3, 2}, DType::kFloat32);
    EXPECT_THROW(k.MatMul(a, b), Error);  // batch dims 2 vs 3
  }
  {
    Kernel k;
    int32_t buf[16] = {};
    auto* a = k.Load(buf, {2, 2}, DType::kInt32);
    try {
      k.MatMul(a, a);
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("i32"), std::string::npos) << e.what();
    }
  }
  {  // dynamic kernel: the mismatch shows up at launch
    Kernel k(KernelType::kDynamic);
    auto* a = k.Load(nullptr, {-1, -1}, DType::kFloat32);
    auto* b = k.Load(nullptr, {-1, -1}, DType::kFloat32);
    k.Store(nullptr, k.MatMul(a, b));
    std::vector<float> x(64), y(64), z(64, 5.0f);
    EXPECT_THROW(k.Launch({{x.data(), {4, 3}}, {y.data(), {4, 2}}}, {{z.data(), {}}}), Error);
    EXPECT_EQ(z[0], 5.0f);  // nothing written
  }
}

}  // namespace
}  // namespace dvm::test
