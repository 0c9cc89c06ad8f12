// Bad inputs give dvm::Error with a message naming the problem, and a failed
// launch writes nothing the caller owns (output buffers keep a sentinel).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>

#include "test_util.h"

namespace dvm::test {
namespace {

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// Runs `f`, expecting a dvm::Error whose message contains every word of
// `words` (case-insensitive).
template <class F>
void ExpectError(F&& f, std::initializer_list<const char*> words) {
  try {
    f();
    ADD_FAILURE() << "expected dvm::Error, nothing was thrown";
  } catch (const Error& e) {
    const std::string m = Lower(e.what());
    for (const char* w : words)
      EXPECT_NE(m.find(Lower(w)), std::string::npos) << "message \"" << e.what() << "\" lacks \"" << w << "\"";
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected dvm::Error, got another exception: " << e.what();
  }
}

constexpr uint8_t kSentinel = 0xEE;

bool AllSentinel(const std::vector<uint8_t>& b) {
  return std::all_of(b.begin(), b.end(), [](uint8_t v) { return v == kSentinel; });
}

// ---- shapes -------------------------------------------------------------------

TEST(Errors, NonBroadcastableShapesAtBuild) {
  Kernel k;
  NDObject* a = k.Load(nullptr, {3, 4}, DType::kFloat32);
  NDObject* b = k.Load(nullptr, {5, 4}, DType::kFloat32);
  ExpectError([&] { k.Binary(BinaryOp::kAdd, a, b); }, {"broadcast", "add", "[3, 4]", "[5, 4]"});
  NDObject* c = k.Load(nullptr, {3, 1}, DType::kBool);
  NDObject* d = k.Load(nullptr, {2}, DType::kFloat32);
  ExpectError([&] { k.Select(c, a, d); }, {"broadcast", "select"});
  ExpectError([&] { k.Broadcast(a, {3, 5}); }, {"broadcast", "[3, 5]"});
  ExpectError([&] { k.Broadcast(a, {4}); }, {"broadcast", "rank"});
  // The kernel is still usable after the failed calls.
  k.Store(nullptr, k.Binary(BinaryOp::kMul, a, a));
  Rng rng(1);
  EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kFloat32, {3, 4}, Uniform(-1, 1), rng),
                              MakeTensor(DType::kFloat32, {5, 4}, Uniform(-1, 1), rng),
                              MakeTensor(DType::kBool, {3, 1}, IntUniform(0, 1), rng),
                              MakeTensor(DType::kFloat32, {2}, Uniform(-1, 1), rng)}));
  EXPECT_EQ(k.Dump().find("add"), std::string::npos) << "a failed op was recorded:\n" << k.Dump();
}

TEST(Errors, NonBroadcastableShapesAtLaunch) {
  Kernel k(KernelType::kDynamic);
  NDObject* a = k.Load(nullptr, {-1, -1}, DType::kFloat32);
  NDObject* b = k.Load(nullptr, {-1, -1}, DType::kFloat32);
  k.Store(nullptr, k.Binary(BinaryOp::kAdd, a, b));
  std::vector<float> x(12, 1.0f), y(20, 1.0f);
  std::vector<uint8_t> out(20 * 4, kSentinel);
  ExpectError([&] {
    k.Launch({{x.data(), {3, 4}, 48}, {y.data(), {5, 4}, 80}}, {{out.data(), {}, out.size()}});
  }, {"broadcast", "[3, 4]", "[5, 4]"});
  EXPECT_TRUE(AllSentinel(out));
  ExpectError([&] { k.OutputShapes(std::vector<Shape>{{3, 4}, {5, 4}}); }, {"broadcast"});
}

TEST(Errors, ReshapeMismatch) {
  Kernel k;
  NDObject* a = k.Load(nullptr, {2, 3}, DType::kFloat32);
  ExpectError([&] { k.Reshape(a, {4, 2}); }, {"reshape", "[2, 3]", "[4, 2]"});
  ExpectError([&] { k.Reshape(a, {-1, 4}); }, {"reshape"});
  ExpectError([&] { k.Reshape(a, {-1, -1}); }, {"reshape", "-1"});
  Kernel d(KernelType::kDynamic);
  NDObject* x = d.Load(nullptr, {-1}, DType::kFloat32);
  d.Store(nullptr, d.Reshape(x, {4, -1}));
  std::vector<float> buf(6);
  std::vector<uint8_t> out(64, kSentinel);
  ExpectError([&] { d.Launch({{buf.data(), {6}, 24}}, {{out.data(), {}, out.size()}}); },
              {"reshape", "[6]"});
  EXPECT_TRUE(AllSentinel(out));
}

TEST(Errors, BadAxes) {
  Kernel k;
  NDObject* a = k.Load(nullptr, {2, 3}, DType::kFloat32);
  ExpectError([&] { k.Reduce(ReduceOp::kSum, a, {2}, false); }, {"axis", "2", "rank"});
  ExpectError([&] { k.Reduce(ReduceOp::kSum, a, {-3}, false); }, {"axis", "-3"});
  ExpectError([&] { k.Reduce(ReduceOp::kMax, a, {0, 0}, false); }, {"duplicate", "axis"});
  ExpectError([&] { k.Reduce(ReduceOp::kMax, a, {1, -1}, false); }, {"duplicate", "axis"});
  ExpectError([&] { k.Transpose(a, {0, 0}); }, {"transpose", "perm"});
  ExpectError([&] { k.Transpose(a, {0}); }, {"transpose", "rank"});
  ExpectError([&] { k.Transpose(a, {0, 2}); }, {"transpose", "perm"});
}

// ---- dtypes -------------------------------------------------------------------

TEST(Errors, UnsupportedDTypeCombinations) {
  Kernel k;
  NDObject* f = k.Load(nullptr, {4}, DType::kFloat32);
  NDObject* h = k.Load(nullptr, {4}, DType::kFloat16);
  NDObject* i = k.Load(nullptr, {4}, DType::kInt32);
  NDObject* b = k.Load(nullptr, {4}, DType::kBool);
  ExpectError([&] { k.Unary(UnaryOp::kExp, i); }, {"exp", "dtype", "i32"});
  ExpectError([&] { k.Unary(UnaryOp::kSqrt, b); }, {"sqrt", "bool"});
  ExpectError([&] { k.Unary(UnaryOp::kNeg, b); }, {"neg", "bool"});
  ExpectError([&] { k.Binary(BinaryOp::kAdd, f, h); }, {"add", "dtype", "f32", "f16"});
  ExpectError([&] { k.Binary(BinaryOp::kLess, f, i); }, {"dtype", "f32", "i32"});
  ExpectError([&] { k.Binary(BinaryOp::kAdd, b, b); }, {"add", "bool"});
  ExpectError([&] { k.Binary(BinaryOp::kMul, b, 2.0); }, {"mul", "bool"});
  ExpectError([&] { k.Binary(BinaryOp::kPow, 2.0, b); }, {"pow", "bool"});
  ExpectError([&] { k.Reduce(ReduceOp::kSum, b, {0}, false); }, {"sum", "bool"});
  ExpectError([&] { k.Reduce(ReduceOp::kProd, b, {0}, false); }, {"prod", "bool"});
  ExpectError([&] { k.Select(f, f, f); }, {"select", "bool"});
  ExpectError([&] { k.Select(b, f, h); }, {"select", "dtype"});
  ExpectError([&] { k.Cast(f, static_cast<DType>(17)); }, {"cast", "dtype"});
  ExpectError([&] { k.Load(nullptr, {4}, static_cast<DType>(9)); }, {"dtype"});
}

TEST(Errors, BadHandlesAndOps) {
  Kernel k;
  NDObject* a = k.Load(nullptr, {4}, DType::kFloat32);
  ExpectError([&] { k.Unary(UnaryOp::kExp, nullptr); }, {"exp", "handle"});
  NDObject* st = k.Store(nullptr, a);
  ExpectError([&] { k.Unary(UnaryOp::kExp, st); }, {"store"});
  ExpectError([&] { k.Unary(static_cast<UnaryOp>(99), a); }, {"unary", "op"});
  ExpectError([&] { k.Binary(static_cast<BinaryOp>(99), a, a); }, {"binary", "op"});
  ExpectError([&] { k.Reduce(static_cast<ReduceOp>(9), a, {0}, false); }, {"reduce", "op"});
}

// ---- shapes at build ------------------------------------------------------------

TEST(Errors, BadDims) {
  Kernel k;
  ExpectError([&] { k.Load(nullptr, {-1, 4}, DType::kFloat32); }, {"load", "-1", "static"});
  ExpectError([&] { k.Load(nullptr, {1, 1, 1, 1, 1, 1, 1, 1, 1}, DType::kFloat32); }, {"rank", "9"});
  Kernel d(KernelType::kDynamic);
  ExpectError([&] { d.Load(nullptr, {-2}, DType::kFloat32); }, {"load", "-2"});
}

TEST(Errors, SizeOverflow) {
  const int64_t big = int64_t{1} << 40;
  {
    Kernel k;
    ExpectError([&] {
      NDObject* a = k.Load(nullptr, {big, big}, DType::kFloat32);
      k.Store(nullptr, a);
      k.CodeGen();
    }, {"overflow"});
  }
  {
    Kernel k(KernelType::kDynamic);
    NDObject* a = k.Load(nullptr, {-1, -1}, DType::kFloat32);
    k.Store(nullptr, k.Unary(UnaryOp::kExp, a));
    float x = 0;
    std::vector<uint8_t> out(64, kSentinel);
    ExpectError([&] { k.Launch({{&x, {big, big}, 4}}, {{out.data(), {}, out.size()}}); }, {"overflow"});
    EXPECT_TRUE(AllSentinel(out));
  }
  {
    Kernel k;
    ExpectError([&] {
      NDObject* s = k.Broadcast(1.0, D(Shape{big, big, big}), DType::kFloat32);
      k.Store(nullptr, s);
      k.CodeGen();
    }, {"overflow"});
  }
}

TEST(Errors, BadSliceParameters) {
  Kernel k;
  ExpectError([&] { k.StridedSliceLoad(nullptr, D(Shape{10}), DType::kFloat32, D(Shape{0}), D(Shape{10}), D(Shape{0})); }, {"slice", "0:10:0"});
  ExpectError([&] { k.StridedSliceLoad(nullptr, D(Shape{10}), DType::kFloat32, D(Shape{0}), D(Shape{11}), D(Shape{1})); }, {"slice", "size 10"});
  ExpectError([&] { k.StridedSliceLoad(nullptr, D(Shape{10}), DType::kFloat32, D(Shape{5}), D(Shape{4}), D(Shape{1})); }, {"slice"});
  ExpectError([&] { k.StridedSliceLoad(nullptr, D(Shape{10}), DType::kFloat32, D(Shape{-1}), D(Shape{4}), D(Shape{1})); }, {"slice"});
  ExpectError([&] { k.StridedSliceLoad(nullptr, D(Shape{10, 4}), DType::kFloat32, D(Shape{0}), D(Shape{4}), D(Shape{1})); }, {"slice", "rank"});
  ExpectError([&] { k.SliceLoad(nullptr, D(Shape{10}), DType::kFloat32, D(Shape{8}), D(Shape{3})); }, {"slice"});
  ExpectError([&] { k.SliceLoad(nullptr, D(Shape{10}), DType::kFloat32, D(Shape{0}), D(Shape{-1})); }, {"slice", "negative"});
  ExpectError([&] { k.SliceLoad(nullptr, D(Shape{10, 2}), DType::kFloat32, D(Shape{0, 0}), D(Shape{1})); }, {"slice", "rank"});
  EXPECT_EQ(k.num_inputs(), 0u) << "failed loads must not add inputs";

  // Dynamic: the slice is checked against the launch shape.
  Kernel d(KernelType::kDynamic);
  NDObject* x = d.StridedSliceLoad(nullptr, D(Shape{-1}), DType::kFloat32, D(Shape{2}), D(Shape{8}), D(Shape{2}));
  d.Store(nullptr, x);
  std::vector<float> in(5, 1.0f);
  std::vector<uint8_t> out(64, kSentinel);
  ExpectError([&] { d.Launch({{in.data(), {5}, 20}}, {{out.data(), {}, out.size()}}); }, {"slice", "2:8:2"});
  EXPECT_TRUE(AllSentinel(out));
}

TEST(Errors, PadStoreDoesNotFit) {
  Kernel k;
  NDObject* a = k.Load(nullptr, {2, 3}, DType::kFloat32);
  ExpectError([&] { k.PadStore(nullptr, a, D(Shape{2, 3, 1})); }, {"pad store", "rank"});
  ExpectError([&] { k.PadStore(nullptr, a, D(Shape{3, 3}), D(Shape{2, 0})); }, {"pad store", "fit"});
  ExpectError([&] { k.PadStore(nullptr, a, D(Shape{3, 3}), D(Shape{0})); }, {"pad store", "rank"});
  ExpectError([&] { k.PadStore(nullptr, a, D(Shape{2, 2})); }, {"pad store"});
  EXPECT_EQ(k.num_outputs(), 0u) << "failed stores must not add outputs";
  Kernel d(KernelType::kDynamic);
  NDObject* x = d.Load(nullptr, {-1}, DType::kFloat32);
  d.PadStore(nullptr, x, D(Shape{4}), D(Shape{1}));
  std::vector<float> in(4, 1.0f);
  std::vector<uint8_t> out(64, kSentinel);
  ExpectError([&] { d.Launch({{in.data(), {4}, 16}}, {{out.data(), {}, out.size()}}); }, {"pad store", "fit"});
  EXPECT_TRUE(AllSentinel(out));
}

// ---- launch -------------------------------------------------------------------

class LaunchErrors : public ::testing::Test {
 protected:
  void SetUp() override {
    x_ = k_.Load(nullptr, {-1, -1}, DType::kFloat32);
    k_.Store(nullptr, k_.Unary(UnaryOp::kTanh, x_));
    k_.Store(nullptr, k_.Reduce(ReduceOp::kSum, x_, {1}, false));
    in_.assign(3 * 5, 0.5f);
    out0_.assign(3 * 5 * 4, kSentinel);
    out1_.assign(3 * 4, kSentinel);
  }
  void ExpectUntouched() {
    EXPECT_TRUE(AllSentinel(out0_)) << "output 0 written by a failed launch";
    EXPECT_TRUE(AllSentinel(out1_)) << "output 1 written by a failed launch";
    std::vector<float> want(3 * 5, 0.5f);
    EXPECT_EQ(in_, want) << "input modified by a failed launch";
  }
  Kernel k_{KernelType::kDynamic};
  NDObject* x_ = nullptr;
  std::vector<float> in_;
  std::vector<uint8_t> out0_, out1_;
};

TEST_F(LaunchErrors, NullBuffers) {
  ExpectError([&] {
    k_.Launch({{nullptr, {3, 5}, 60}}, {{out0_.data(), {}, out0_.size()}, {out1_.data(), {}, out1_.size()}});
  }, {"input 0", "null"});
  ExpectError([&] {
    k_.Launch({{in_.data(), {3, 5}, 60}}, {{out0_.data(), {}, out0_.size()}, {nullptr, {}, 0}});
  }, {"output 1", "null"});
  ExpectUntouched();
}

TEST_F(LaunchErrors, TooSmallBuffers) {
  ExpectError([&] {
    k_.Launch({{in_.data(), {3, 5}, 59}}, {{out0_.data(), {}, out0_.size()}, {out1_.data(), {}, out1_.size()}});
  }, {"input 0", "59", "60"});
  ExpectError([&] {
    k_.Launch({{in_.data(), {3, 5}, 60}}, {{out0_.data(), {}, out0_.size()}, {out1_.data(), {}, 11}});
  }, {"output 1", "11", "12"});
  ExpectUntouched();
}

TEST_F(LaunchErrors, WrongRank) {
  ExpectError([&] {
    k_.Launch({{in_.data(), {15}, 60}}, {{out0_.data(), {}, out0_.size()}, {out1_.data(), {}, out1_.size()}});
  }, {"rank", "[15]"});
  ExpectError([&] {
    k_.Launch({{in_.data(), {3, 5, 1}, 60}}, {{out0_.data(), {}, out0_.size()}, {out1_.data(), {}, out1_.size()}});
  }, {"rank"});
  ExpectError([&] {
    k_.Launch({{in_.data(), {3, -5}, 60}}, {{out0_.data(), {}, out0_.size()}, {out1_.data(), {}, out1_.size()}});
  }, {"negative"});
  ExpectUntouched();
}

TEST_F(LaunchErrors, WrongNumberOfArgs) {
  ExpectError([&] { k_.Launch({}, {{out0_.data(), {}, 0}, {out1_.data(), {}, 0}}); }, {"inputs", "1", "0"});
  ExpectError([&] {
    k_.Launch({{in_.data(), {3, 5}, 60}, {in_.data(), {3, 5}, 60}},
              {{out0_.data(), {}, 0}, {out1_.data(), {}, 0}});
  }, {"inputs", "2"});
  ExpectError([&] { k_.Launch({{in_.data(), {3, 5}, 60}}, {{out0_.data(), {}, 0}}); }, {"outputs", "2", "1"});
  ExpectError([&] { k_.OutputShapes(std::vector<Shape>{{3, 5}, {3, 5}}); }, {"inputs", "2"});
  ExpectUntouched();
}

TEST_F(LaunchErrors, DynamicKernelNeedsShapes) {
  void* ins[] = {in_.data()};
  void* outs[] = {out0_.data(), out1_.data()};
  ExpectError([&] { k_.Launch(std::span<void* const>(ins), std::span<void* const>(outs)); }, {"dynamic", "shape"});
  ExpectUntouched();
}

TEST(Errors, StaticKernelWrongShapeAtLaunch) {
  Kernel k;
  NDObject* x = k.Load(nullptr, {3, 5}, DType::kFloat32);
  k.Store(nullptr, k.Unary(UnaryOp::kExp, x));
  std::vector<float> in(15, 0.0f);
  std::vector<uint8_t> out(60, kSentinel);
  ExpectError([&] { k.Launch({{in.data(), {5, 3}, 60}}, {{out.data(), {}, 60}}); }, {"shape", "[5, 3]", "[3, 5]"});
  EXPECT_TRUE(AllSentinel(out));
  ExpectError([&] { k.Launch({{in.data(), {3, 5}, 60}}, {{out.data(), {}, 59}}); }, {"output 0", "59", "60"});
  EXPECT_TRUE(AllSentinel(out));
  // Input bound at build time left null and not given at launch.
  ExpectError([&] { k.Launch(); }, {"null"});
  EXPECT_TRUE(AllSentinel(out));
}

TEST(Errors, KernelWithoutOutputs) {
  Kernel k;
  k.Load(nullptr, {3}, DType::kFloat32);
  ExpectError([&] { k.CodeGen(); }, {"no outputs"});
  ExpectError([&] { k.Launch(); }, {"no outputs"});
}

TEST(Errors, StaticKernelFrozenAfterCodeGen) {
  Kernel k;
  NDObject* x = k.Load(nullptr, {3}, DType::kFloat32);
  k.Store(nullptr, x);
  k.CodeGen();
  ExpectError([&] { k.Unary(UnaryOp::kExp, x); }, {"exp", "generated"});
}

TEST(Errors, CorruptBytecode) {
  Kernel k;
  NDObject* x = k.Load(nullptr, {3, 1025}, DType::kFloat32);
  k.Store(nullptr, k.Reduce(ReduceOp::kSum, k.Unary(UnaryOp::kExp, x), {1}, false));
  k.CodeGen();
  std::vector<uint8_t> bc = k.Bytecode();
  ASSERT_FALSE(bc.empty());
  EXPECT_NO_THROW(Verify(bc));
  EXPECT_FALSE(Disassemble(bc).empty());
  // Bad magic, truncation and empty buffers are rejected with an Error.
  std::vector<uint8_t> bad = bc;
  bad[0] ^= 0xFF;
  ExpectError([&] { Verify(bad); }, {"magic"});
  ExpectError([&] { Verify(std::span<const uint8_t>(bc.data(), bc.size() / 2)); }, {});
  ExpectError([&] { Verify(std::span<const uint8_t>()); }, {});
  ExpectError([&] { Disassemble(bad); }, {"magic"});
  // Flipping any single byte either verifies or throws dvm::Error (never crashes).
  for (size_t i = 0; i < bc.size(); ++i) {
    std::vector<uint8_t> m = bc;
    m[i] ^= 0x5A;
    try {
      Verify(m);
    } catch (const Error&) {
    }
  }
}

}  // namespace
}  // namespace dvm::test
