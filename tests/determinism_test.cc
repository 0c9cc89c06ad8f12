// Reductions combine per-tile partials in a fixed order: the same program
// gives the same bits with 1, 2 or 3 threads and on every run.
#include <gtest/gtest.h>

#include <functional>

#include "test_util.h"

namespace dvm::test {
namespace {

struct DetCase {
  const char* name;
  std::vector<std::pair<DType, Shape>> inputs;
  std::function<void(Kernel&, const std::vector<NDObject*>&)> build;
  Gen gen;
};

// Raw output bytes of one launch.
std::vector<std::vector<uint8_t>> RunBytes(Kernel& k, const std::vector<ref::Tensor>& inputs) {
  RunOutput r = RunKernel(k, inputs);
  EXPECT_TRUE(r.problems.empty()) << r.problems;
  std::vector<std::vector<uint8_t>> out;
  for (const auto& t : r.outputs) out.push_back(ref::ToBytes(t));
  return out;
}

::testing::AssertionResult SameBits(const std::vector<std::vector<uint8_t>>& a,
                                    const std::vector<std::vector<uint8_t>>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << "output count differs";
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].size() != b[i].size()) return ::testing::AssertionFailure() << "output " << i << " size differs";
    for (size_t j = 0; j < a[i].size(); ++j)
      if (a[i][j] != b[i][j]) return ::testing::AssertionFailure() << "output " << i << " differs at byte " << j;
  }
  return ::testing::AssertionSuccess();
}

class DeterminismTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override { saved_threads_ = GetNumThreads(); }
  void TearDown() override { SetNumThreads(saved_threads_); }
  int saved_threads_ = 1;
};

std::vector<DetCase> Cases() {
  using V = std::vector<NDObject*>;
  return {
      {"row_sum",
       {{DType::kFloat32, {256, 4096}}},
       [](Kernel& k, const V& x) { k.Store(nullptr, k.Reduce(ReduceOp::kSum, x[0], {1}, false)); },
       Uniform(-1, 1)},
      {"col_sum",
       {{DType::kFloat32, {4096, 256}}},
       [](Kernel& k, const V& x) { k.Store(nullptr, k.Reduce(ReduceOp::kSum, x[0], {0}, false)); },
       Uniform(-1, 1)},
      {"full_sum",
       {{DType::kFloat32, {1 << 20}}},
       [](Kernel& k, const V& x) { k.Store(nullptr, k.Reduce(ReduceOp::kSum, x[0], {0}, false)); },
       Uniform(-1, 1)},
      {"full_sum_2d",
       {{DType::kFloat32, {1000, 1000}}},
       [](Kernel& k, const V& x) {
         k.Store(nullptr, k.Reduce(ReduceOp::kSum, x[0], {0, 1}, true));
       },
       Uniform(-1, 1)},
      {"full_prod_f16",
       {{DType::kFloat16, {1 << 20}}},
       [](Kernel& k, const V& x) { k.Store(nullptr, k.Reduce(ReduceOp::kProd, x[0], {0}, false)); },
       Uniform(0.9999, 1.0001)},
      {"middle_sum_bf16",
       {{DType::kBFloat16, {64, 1024, 16}}},
       [](Kernel& k, const V& x) { k.Store(nullptr, k.Reduce(ReduceOp::kSum, x[0], {1}, false)); },
       Uniform(-1, 1)},
      {"noncontig_sum",
       {{DType::kFloat32, {32, 64, 16, 32}}},
       [](Kernel& k, const V& x) {
         k.Store(nullptr, k.Reduce(ReduceOp::kSum, x[0], {0, 2}, false));
       },
       Uniform(-1, 1)},
      {"softmax",
       {{DType::kFloat32, {512, 2048}}},
       [](Kernel& k, const V& x) {
         NDObject* m = k.Reduce(ReduceOp::kMax, x[0], {1}, true);
         NDObject* e = k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, x[0], m));
         NDObject* s = k.Reduce(ReduceOp::kSum, e, {1}, true);
         k.Store(nullptr, k.Binary(BinaryOp::kDiv, e, s));
       },
       Uniform(-5, 5)},
      {"layernorm_stats",
       {{DType::kFloat32, {1024, 1024}}},
       [](Kernel& k, const V& x) {
         NDObject* mean = k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, x[0], {1}, true), 1.0 / 1024);
         NDObject* d = k.Binary(BinaryOp::kSub, x[0], mean);
         NDObject* var =
             k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, d, d), {1}, true), 1.0 / 1024);
         k.Store(nullptr, k.Binary(BinaryOp::kMul, d, k.Unary(UnaryOp::kRsqrt, k.Binary(BinaryOp::kAdd, var, 1e-5))));
         k.Store(nullptr, k.Reduce(ReduceOp::kSum, x[0], {0, 1}, false));
       },
       Uniform(-2, 2)},
      // Row groups: 3 rows run row by row on 1 and 3 threads, stage by
      // stage on 2; 8 rows row by row on 1 and 2, stage by stage on 3.
      {"long_softmax",
       {{DType::kFloat32, {3, 40000}}},
       [](Kernel& k, const V& x) {
         NDObject* m = k.Reduce(ReduceOp::kMax, x[0], {1}, true);
         NDObject* e = k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, x[0], m));
         k.Store(nullptr, k.Binary(BinaryOp::kDiv, e, k.Reduce(ReduceOp::kSum, e, {1}, true)));
       },
       Uniform(-5, 5)},
      {"long_layernorm",
       {{DType::kFloat32, {8, 33001}}, {DType::kFloat32, {33001}}},
       [](Kernel& k, const V& x) {
         NDObject* mean = k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, x[0], {1}, true), 1.0 / 33001);
         NDObject* d = k.Binary(BinaryOp::kSub, x[0], mean);
         NDObject* var =
             k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, d, d), {1}, true), 1.0 / 33001);
         NDObject* y = k.Binary(BinaryOp::kMul, d, k.Unary(UnaryOp::kRsqrt, k.Binary(BinaryOp::kAdd, var, 1e-5)));
         k.Store(nullptr, k.Binary(BinaryOp::kMul, y, x[1]));
       },
       Uniform(-2, 2)},
      {"elementwise",
       {{DType::kFloat32, {1 << 20}}, {DType::kFloat32, {1 << 20}}},
       [](Kernel& k, const V& x) {
         NDObject* t = k.Unary(UnaryOp::kTanh, k.Binary(BinaryOp::kMul, x[0], x[1]));
         k.Store(nullptr, k.Binary(BinaryOp::kAdd, k.Unary(UnaryOp::kSigmoid, t), k.Unary(UnaryOp::kExp, x[1])));
       },
       Uniform(-3, 3)},
      {"int_sum",
       {{DType::kInt32, {4096, 257}}},
       [](Kernel& k, const V& x) {
         k.Store(nullptr, k.Reduce(ReduceOp::kSum, x[0], {0}, false));
         k.Store(nullptr, k.Reduce(ReduceOp::kSum, x[0], {0, 1}, false));
       },
       IntUniform(kI32Min, kI32Max)},
  };
}

TEST_P(DeterminismTest, SameBitsForEveryThreadCountAndRun) {
  const DetCase c = Cases()[GetParam()];
  SCOPED_TRACE(c.name);
  for (KernelType type : {KernelType::kStatic, KernelType::kDynamic}) {
    SCOPED_TRACE(type == KernelType::kStatic ? "static" : "dynamic");
    Kernel k(type);
    std::vector<NDObject*> xs;
    std::vector<ref::Tensor> inputs;
    Rng rng(1234);
    for (const auto& [dt, shape] : c.inputs) {
      Shape d = type == KernelType::kStatic ? shape : Shape(shape.size(), -1);
      xs.push_back(k.Load(nullptr, D(d), dt));
      inputs.push_back(MakeTensor(dt, shape, c.gen, rng));
    }
    c.build(k, xs);

    SetNumThreads(1);
    ASSERT_EQ(GetNumThreads(), 1);
    auto one = RunBytes(k, inputs);
    auto one_again = RunBytes(k, inputs);
    EXPECT_TRUE(SameBits(one, one_again)) << "1 thread, run to run";
    for (int n : {2, 3}) {
      SetNumThreads(n);
      ASSERT_EQ(GetNumThreads(), n);
      auto a = RunBytes(k, inputs);
      auto b = RunBytes(k, inputs);
      EXPECT_TRUE(SameBits(one, a)) << "1 vs " << n << " threads";
      EXPECT_TRUE(SameBits(a, b)) << n << " threads, run to run";
    }
    // A different output buffer fill must not change the result.
    SetNumThreads(2);
    RunOutput r = RunKernel(k, inputs, 0x00);
    std::vector<std::vector<uint8_t>> z;
    for (const auto& t : r.outputs) z.push_back(ref::ToBytes(t));
    EXPECT_TRUE(SameBits(one, z)) << "result depends on the output buffer's prior contents";
  }
}

INSTANTIATE_TEST_SUITE_P(Reductions, DeterminismTest, ::testing::Range(0, static_cast<int>(Cases().size())),
                         [](const ::testing::TestParamInfo<int>& i) { return std::string(Cases()[i.param].name); });

// The thread count is a process-wide setting read back as set.
TEST(Threads, SetAndGet) {
  int saved = GetNumThreads();
  EXPECT_GE(saved, 1);
  SetNumThreads(3);
  EXPECT_EQ(GetNumThreads(), 3);
  SetNumThreads(1);
  EXPECT_EQ(GetNumThreads(), 1);
  SetNumThreads(saved);
  EXPECT_EQ(GetNumThreads(), saved);
}

}  // namespace
}  // namespace dvm::test
