// Unit tests of the reference evaluator itself, with hand-computed expected
// values for each semantic rule (rounding points, integer wrapping and
// division, NaN handling, scalar conversion, casts, data movement,
// reductions and their identities, slicing and padded stores).
//
// The graphs are built directly in the IR, so these tests do not depend on
// the Kernel builder.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "ir/dtype.h"
#include "ir/ir.h"
#include "runtime/reference.h"

namespace dvm {
namespace {

using ir::Node;
using ir::Op;
using ref::Tensor;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kI32Min = std::numeric_limits<int32_t>::min();
constexpr double kI32Max = std::numeric_limits<int32_t>::max();

// A minimal IR builder (mirrors what Kernel's builder records).
struct G {
  ir::Graph g;
  std::vector<Tensor> inputs;

  int Add(Node n) {
    g.nodes.push_back(std::move(n));
    return static_cast<int>(g.nodes.size()) - 1;
  }
  DType Dt(int id) const { return g.nodes[id].dtype; }
  int In(DType dt, Shape shape, std::vector<double> values) {
    Node n;
    n.op = Op::kLoad;
    n.dtype = dt;
    n.a0 = shape;
    n.shape = shape;
    n.io = static_cast<int>(g.inputs.size());
    int id = Add(n);
    g.inputs.push_back(id);
    inputs.push_back(Tensor{dt, shape, std::move(values)});
    return id;
  }
  int Slice(DType dt, Shape shape, std::vector<double> values, Shape start, Shape end, Shape step) {
    int id = In(dt, shape, std::move(values));
    g.nodes[id].a1 = start;
    g.nodes[id].a2 = end;
    g.nodes[id].a3 = step;
    return id;
  }
  int Store(int v) {
    Node n;
    n.op = Op::kStore;
    n.dtype = Dt(v);
    n.in[0] = v;
    n.io = static_cast<int>(g.outputs.size());
    int id = Add(n);
    g.outputs.push_back(id);
    return id;
  }
  int PadStore(int v, Shape padded, Shape before, double pad) {
    int id = Store(v);
    g.nodes[id].sub = 1;
    g.nodes[id].a0 = padded;
    g.nodes[id].a1 = before;
    g.nodes[id].scalar = pad;
    return id;
  }
  int Unary(UnaryOp op, int x) {
    Node n;
    n.op = Op::kUnary;
    n.sub = static_cast<uint8_t>(op);
    n.dtype = (op == UnaryOp::kIsFinite || op == UnaryOp::kLogicalNot) ? DType::kBool : Dt(x);
    n.in[0] = x;
    return Add(n);
  }
  static bool Pred(BinaryOp op) { return op >= BinaryOp::kEqual; }
  int Binary(BinaryOp op, int a, int b) {
    Node n;
    n.op = Op::kBinary;
    n.sub = static_cast<uint8_t>(op);
    n.dtype = Pred(op) ? DType::kBool : Dt(a);
    n.in[0] = a;
    n.in[1] = b;
    return Add(n);
  }
  int BinaryTS(BinaryOp op, int a, double s) {
    Node n;
    n.op = Op::kBinaryTS;
    n.sub = static_cast<uint8_t>(op);
    n.dtype = Pred(op) ? DType::kBool : Dt(a);
    n.in[0] = a;
    n.scalar = s;
    return Add(n);
  }
  int BinaryST(BinaryOp op, double s, int a) {
    int id = BinaryTS(op, a, s);
    g.nodes[id].op = Op::kBinaryST;
    return id;
  }
  int Scalar(double s, Shape shape, DType dt) {
    Node n;
    n.op = Op::kScalar;
    n.dtype = dt;
    n.scalar = s;
    n.a0 = shape;
    return Add(n);
  }
  int Select(int c, int a, int b) {
    Node n;
    n.op = Op::kSelect;
    n.dtype = Dt(a);
    n.in[0] = c;
    n.in[1] = a;
    n.in[2] = b;
    return Add(n);
  }
  int Cast(int x, DType dt) {
    Node n;
    n.op = Op::kCast;
    n.dtype = dt;
    n.in[0] = x;
    return Add(n);
  }
  int Shaped(Op op, int x, Shape a0) {
    Node n;
    n.op = op;
    n.dtype = Dt(x);
    n.in[0] = x;
    n.a0 = a0;
    return Add(n);
  }
  int Copy(int x) { return Shaped(Op::kCopy, x, {}); }
  int Reduce(ReduceOp op, int x, Shape axes, bool keepdims) {
    int id = Shaped(Op::kReduce, x, axes);
    g.nodes[id].sub = static_cast<uint8_t>(op);
    g.nodes[id].keepdims = keepdims;
    return id;
  }
  int Any(int x) {
    Node n;
    n.op = Op::kElemAny;
    n.dtype = DType::kBool;
    n.in[0] = x;
    return Add(n);
  }
  std::vector<Tensor> Run() { return ref::Evaluate(g, inputs); }
  // Stores `v` as the only output and evaluates.
  Tensor Out(int v) {
    Store(v);
    return Run().at(0);
  }
};

// Exact comparison (NaN == NaN; -0 == +0).
void ExpectValues(const Tensor& t, const std::vector<double>& want) {
  ASSERT_EQ(t.data.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(want[i])) EXPECT_TRUE(std::isnan(t.data[i])) << "index " << i << ": " << t.data[i];
    else EXPECT_EQ(t.data[i], want[i]) << "index " << i;
  }
}

double F(double v) { return static_cast<float>(v); }

// ---- float rounding points ------------------------------------------------

TEST(Reference, F32RoundsEveryOp) {
  G g;
  int x = g.In(DType::kFloat32, {3}, {1.0, F(0.1), 16777216.0});
  int y = g.In(DType::kFloat32, {3}, {1e-8, 3.0, 1.0});
  Tensor add = [&] { G h = g; return h.Out(h.Binary(BinaryOp::kAdd, x, y)); }();
  ExpectValues(add, {1.0, F(F(0.1) + 3.0), 16777216.0});  // 2^24 + 1 rounds to 2^24
  Tensor mul = [&] { G h = g; return h.Out(h.Binary(BinaryOp::kMul, x, y)); }();
  ExpectValues(mul, {F(1e-8), F(F(0.1) * 3.0), 16777216.0});
  // (1 + 1e-8) - 1 == 0 in f32: the intermediate is rounded.
  G h = g;
  Tensor sub = h.Out(h.BinaryTS(BinaryOp::kSub, h.Binary(BinaryOp::kAdd, x, y), 1.0));
  ExpectValues(sub, {0.0, F(F(F(0.1) + 3.0) - 1.0), 16777215.0});
}

TEST(Reference, F16ComputesInF32AndRoundsAtStore) {
  const double e11 = std::ldexp(1.0, -11);  // half an f16 ulp at 1
  {
    G g;
    int a = g.In(DType::kFloat16, {2}, {1.0, 1.0});
    int b = g.In(DType::kFloat16, {2}, {e11, 3 * e11});
    // 1 + 2^-11 is a tie between 1 and 1 + 2^-10: even -> 1. 1 + 3*2^-11 -> 1 + 2^-9.
    ExpectValues(g.Out(g.Binary(BinaryOp::kAdd, a, b)), {1.0, 1.0 + 4 * e11});
  }
  {
    G g;
    int a = g.In(DType::kFloat16, {2}, {1.0, 1.0});
    int b = g.In(DType::kFloat16, {2}, {e11, 3 * e11});
    // Not rounded to f16 in between: cast to f32 keeps 1 + 2^-11.
    ExpectValues(g.Out(g.Cast(g.Binary(BinaryOp::kAdd, a, b), DType::kFloat32)),
                 {1.0 + e11, 1.0 + 3 * e11});
  }
  {
    G g;
    // (1 + 2^-11) - 1 in f32 = 2^-11, even though 1 + 2^-11 is not an f16.
    int a = g.In(DType::kFloat16, {1}, {1.0});
    int s = g.BinaryTS(BinaryOp::kSub, g.BinaryTS(BinaryOp::kAdd, a, e11), 1.0);
    ExpectValues(g.Out(s), {e11});
  }
}

TEST(Reference, BF16RoundsToNearestEvenAtStore) {
  const double e8 = std::ldexp(1.0, -8);
  G g;
  int a = g.In(DType::kFloat32, {4}, {1.0 + e8, 1.0 + 3 * e8, 1.0 + 1.5 * e8, -(1.0 + e8)});
  ExpectValues(g.Out(g.Cast(a, DType::kBFloat16)),
               {1.0, 1.0 + 4 * e8, 1.0 + 2 * e8, -1.0});
  G h;
  int b = h.In(DType::kBFloat16, {2}, {1.0, 1.0});
  int s = h.BinaryTS(BinaryOp::kAdd, b, e8);
  h.Store(s);
  h.Store(h.Cast(s, DType::kFloat32));
  auto outs = h.Run();
  ExpectValues(outs[0], {1.0, 1.0});          // stored as bf16
  ExpectValues(outs[1], {1.0 + e8, 1.0 + e8});  // the f32 value before the store
}

TEST(Reference, InputsAreReadAsStored) {
  G g;
  // An f16 input given 1 + 2^-12 reads as 1 (what its buffer would hold).
  int a = g.In(DType::kFloat16, {2}, {1.0 + std::ldexp(1.0, -12), 70000.0});
  ExpectValues(g.Out(g.Cast(a, DType::kFloat32)), {1.0, kInf});
  G h;
  int b = h.In(DType::kInt8, {2}, {200, -129});
  ExpectValues(h.Out(h.Copy(b)), {-56, 127});
}

// ---- integers -------------------------------------------------------------

TEST(Reference, I32Wraps) {
  G g;
  int a = g.In(DType::kInt32, {4}, {kI32Max, kI32Min, 65536, -7});
  int b = g.In(DType::kInt32, {4}, {1, 1, 65536, 3});
  G h = g, k = g;
  ExpectValues(g.Out(g.Binary(BinaryOp::kAdd, a, b)), {kI32Min, kI32Min + 1, 131072, -4});
  ExpectValues(h.Out(h.Binary(BinaryOp::kMul, a, b)), {kI32Max, kI32Min, 0, -21});
  ExpectValues(k.Out(k.Binary(BinaryOp::kSub, b, a)), {kI32Min + 2, kI32Min + 1, 0, 10});
}

TEST(Reference, I8WrapsAfterEveryOp) {
  G g;
  int a = g.In(DType::kInt8, {4}, {100, 16, -128, 127});
  int b = g.In(DType::kInt8, {4}, {100, 16, 1, 1});
  G h = g;
  ExpectValues(g.Out(g.Binary(BinaryOp::kAdd, a, b)), {-56, 32, -127, -128});
  // (100*100) wraps to 16 before the subtraction: 16 - 100 = -84.
  ExpectValues(h.Out(h.Binary(BinaryOp::kSub, h.Binary(BinaryOp::kMul, a, b), b)),
               {-84, -16, -129 + 256, 126});
}

TEST(Reference, IntUnaryEdgeCases) {
  G g;
  int a = g.In(DType::kInt32, {4}, {kI32Min, -5, 0, 7});
  G h = g, k = g, m = g, n = g;
  ExpectValues(g.Out(g.Unary(UnaryOp::kAbs, a)), {kI32Min, 5, 0, 7});
  ExpectValues(h.Out(h.Unary(UnaryOp::kNeg, a)), {kI32Min, 5, 0, -7});
  ExpectValues(k.Out(k.Unary(UnaryOp::kRelu, a)), {0, 0, 0, 7});
  ExpectValues(m.Out(m.Unary(UnaryOp::kFloor, a)), {kI32Min, -5, 0, 7});
  ExpectValues(n.Out(n.Unary(UnaryOp::kIsFinite, a)), {1, 1, 1, 1});
  G p;
  int b = p.In(DType::kInt8, {3}, {-128, -3, 0});
  G q = p, s = p;
  ExpectValues(p.Out(p.Unary(UnaryOp::kAbs, b)), {-128, 3, 0});
  ExpectValues(q.Out(q.Unary(UnaryOp::kNeg, b)), {-128, 3, 0});
  ExpectValues(s.Out(s.Unary(UnaryOp::kLogicalNot, b)), {0, 0, 1});
}

TEST(Reference, IntDivision) {
  G g;
  int a = g.In(DType::kInt32, {7}, {7, -7, 7, -7, 5, kI32Min, 0});
  int b = g.In(DType::kInt32, {7}, {2, 2, -2, -2, 0, -1, 0});
  ExpectValues(g.Out(g.Binary(BinaryOp::kDiv, a, b)), {3, -3, -3, 3, 0, kI32Min, 0});
  G h;
  int c = h.In(DType::kInt8, {3}, {-128, 127, -128});
  int d = h.In(DType::kInt8, {3}, {-1, 0, 2});
  ExpectValues(h.Out(h.Binary(BinaryOp::kDiv, c, d)), {-128, 0, -64});
}

TEST(Reference, IntPow) {
  G g;
  int a = g.In(DType::kInt32, {10}, {2, 2, 2, 3, 1, -1, -1, 0, 0, -2});
  int b = g.In(DType::kInt32, {10}, {10, 31, 32, -1, -5, -3, -2, 0, -1, 3});
  ExpectValues(g.Out(g.Binary(BinaryOp::kPow, a, b)),
               {1024, kI32Min, 0, 0, 1, -1, 1, 1, 0, -8});
  G h;
  int c = h.In(DType::kInt8, {3}, {2, 3, -2});
  int d = h.In(DType::kInt8, {3}, {7, 5, 7});
  ExpectValues(h.Out(h.Binary(BinaryOp::kPow, c, d)), {-128, 243 - 256, -128});
  // 3^40 mod 2^32, computed by repeated wrapping multiplication.
  uint32_t p = 1;
  for (int i = 0; i < 40; ++i) p *= 3u;
  G k;
  int e = k.In(DType::kInt32, {1}, {3});
  ExpectValues(k.Out(k.BinaryTS(BinaryOp::kPow, e, 40)), {double(int32_t(p))});
}

// ---- NaN, comparisons, logical ops --------------------------------------

TEST(Reference, ComparisonsWithNaN) {
  auto run = [](BinaryOp op) {
    G g;
    int a = g.In(DType::kFloat32, {4}, {kNaN, kNaN, 1.0, 2.0});
    int b = g.In(DType::kFloat32, {4}, {kNaN, 1.0, kNaN, 2.0});
    Tensor t = g.Out(g.Binary(op, a, b));
    EXPECT_EQ(t.dtype, G::Pred(op) ? DType::kBool : DType::kFloat32);
    return t;
  };
  ExpectValues(run(BinaryOp::kEqual), {0, 0, 0, 1});
  ExpectValues(run(BinaryOp::kNotEqual), {1, 1, 1, 0});
  ExpectValues(run(BinaryOp::kLess), {0, 0, 0, 0});
  ExpectValues(run(BinaryOp::kLessEqual), {0, 0, 0, 1});
  ExpectValues(run(BinaryOp::kGreater), {0, 0, 0, 0});
  ExpectValues(run(BinaryOp::kGreaterEqual), {0, 0, 0, 1});
  ExpectValues(run(BinaryOp::kLogicalAnd), {1, 1, 1, 1});
  ExpectValues(run(BinaryOp::kLogicalOr), {1, 1, 1, 1});
  ExpectValues(run(BinaryOp::kMaximum), {kNaN, kNaN, kNaN, 2});
  ExpectValues(run(BinaryOp::kMinimum), {kNaN, kNaN, kNaN, 2});
}

TEST(Reference, LogicalOps) {
  G g;
  int a = g.In(DType::kFloat32, {4}, {0.0, -0.0, 0.5, kNaN});
  int b = g.In(DType::kFloat32, {4}, {1.0, 0.0, -2.0, 0.0});
  G h = g, k = g;
  ExpectValues(g.Out(g.Binary(BinaryOp::kLogicalAnd, a, b)), {0, 0, 1, 0});
  ExpectValues(h.Out(h.Binary(BinaryOp::kLogicalOr, a, b)), {1, 0, 1, 1});
  ExpectValues(k.Out(k.Unary(UnaryOp::kLogicalNot, a)), {1, 1, 0, 0});
  G m;
  int c = m.In(DType::kInt8, {3}, {0, -1, 5});
  int d = m.In(DType::kInt8, {3}, {7, 0, 5});
  ExpectValues(m.Out(m.Binary(BinaryOp::kLogicalAnd, c, d)), {0, 0, 1});
}

TEST(Reference, MaxMinOnInts) {
  G g;
  int a = g.In(DType::kInt32, {3}, {kI32Min, 5, -1});
  int b = g.In(DType::kInt32, {3}, {kI32Max, 5, -2});
  G h = g;
  ExpectValues(g.Out(g.Binary(BinaryOp::kMaximum, a, b)), {kI32Max, 5, -1});
  ExpectValues(h.Out(h.Binary(BinaryOp::kMinimum, a, b)), {kI32Min, 5, -2});
}

// ---- unary on floats --------------------------------------------------------

TEST(Reference, FloatUnary) {
  auto run = [](UnaryOp op, std::vector<double> x) {
    G g;
    int a = g.In(DType::kFloat32, {static_cast<int64_t>(x.size())}, x);
    return g.Out(g.Unary(op, a));
  };
  ExpectValues(run(UnaryOp::kSqrt, {4, 2, -1}), {2, F(std::sqrt(2.0)), kNaN});
  ExpectValues(run(UnaryOp::kRsqrt, {4, 0.25, 0}), {0.5, 2, kInf});
  ExpectValues(run(UnaryOp::kAbs, {-1.5, kNaN, -kInf}), {1.5, kNaN, kInf});
  ExpectValues(run(UnaryOp::kNeg, {1.5, 0}), {-1.5, 0});
  ExpectValues(run(UnaryOp::kExp, {0, 1, -kInf}), {1, F(std::exp(1.0)), 0});
  ExpectValues(run(UnaryOp::kLog, {1, 0, -1}), {0, -kInf, kNaN});
  ExpectValues(run(UnaryOp::kReciprocal, {4, 0, -0.5}), {0.25, kInf, -2});
  ExpectValues(run(UnaryOp::kTanh, {0, 100, -100}), {0, 1, -1});
  ExpectValues(run(UnaryOp::kSigmoid, {0, 200, -200}), {0.5, 1, 0});
  ExpectValues(run(UnaryOp::kErf, {0, 10, 0.5}), {0, 1, F(std::erf(0.5))});
  ExpectValues(run(UnaryOp::kRelu, {-1, 2.5, kNaN, 0}), {0, 2.5, kNaN, 0});
  ExpectValues(run(UnaryOp::kSin, {0, 1}), {0, F(std::sin(1.0))});
  ExpectValues(run(UnaryOp::kCos, {0, 1}), {1, F(std::cos(1.0))});
  ExpectValues(run(UnaryOp::kFloor, {-1.5, 1.5, -0.0}), {-2, 1, 0});
  ExpectValues(run(UnaryOp::kCeil, {-1.5, 1.5, 2}), {-1, 2, 2});
  ExpectValues(run(UnaryOp::kRound, {0.5, 1.5, 2.5, -2.5, -0.4, 3.7}), {0, 2, 2, -2, 0, 4});
  ExpectValues(run(UnaryOp::kIsFinite, {1, kInf, -kInf, kNaN, 3.4e38}), {1, 0, 0, 0, 1});
}

TEST(Reference, UnaryResultIsRoundedToF32) {
  G g;
  int a = g.In(DType::kFloat32, {1}, {3.0});
  Tensor t = g.Out(g.Unary(UnaryOp::kSqrt, a));
  EXPECT_EQ(t.data[0], F(std::sqrt(3.0)));
  EXPECT_NE(t.data[0], std::sqrt(3.0));
}

// ---- scalars --------------------------------------------------------------

TEST(Reference, ScalarsTakeTheTensorDType) {
  {
    G g;
    int a = g.In(DType::kInt32, {3}, {1, -1, 10});
    ExpectValues(g.Out(g.BinaryTS(BinaryOp::kAdd, a, 2.7)), {3, 1, 12});  // 2.7 -> 2
  }
  {
    G g;
    int a = g.In(DType::kInt32, {3}, {1, -1, 10});
    ExpectValues(g.Out(g.BinaryTS(BinaryOp::kAdd, a, 3e10)), {kI32Min, kI32Max - 1, kI32Min + 9});
  }
  {
    G g;
    int a = g.In(DType::kInt32, {3}, {3, 4, 0});
    ExpectValues(g.Out(g.BinaryST(BinaryOp::kDiv, 10, a)), {3, 2, 0});  // 10 / x, x/0 = 0
  }
  {
    G g;
    int a = g.In(DType::kInt8, {2}, {1, 100});
    ExpectValues(g.Out(g.BinaryTS(BinaryOp::kAdd, a, 300)), {45, 144 - 256});  // 300 -> 44
  }
  {
    G g;
    int a = g.In(DType::kInt32, {3}, {1, 2, 3});
    ExpectValues(g.Out(g.BinaryTS(BinaryOp::kLess, a, 2.9)), {1, 0, 0});  // 2.9 -> 2
  }
  {
    G g;
    int a = g.In(DType::kFloat32, {1}, {1.0});
    ExpectValues(g.Out(g.BinaryTS(BinaryOp::kAdd, a, 0.1)), {F(1.0 + F(0.1))});
  }
  {
    G g;
    int a = g.In(DType::kFloat32, {2}, {2.0, 0.5});
    ExpectValues(g.Out(g.BinaryST(BinaryOp::kSub, 1.0, a)), {-1.0, 0.5});
  }
  {
    G g;
    int a = g.In(DType::kBool, {2}, {0, 1});
    ExpectValues(g.Out(g.BinaryTS(BinaryOp::kLogicalAnd, a, 0.5)), {0, 1});  // 0.5 -> true
  }
  {
    G g;
    ExpectValues(g.Out(g.Scalar(2.7, {2, 2}, DType::kInt32)), {2, 2, 2, 2});
  }
  {
    G g;
    ExpectValues(g.Out(g.Scalar(-129, {2}, DType::kInt8)), {127, 127});
  }
  {
    G g;
    Tensor t = g.Out(g.Scalar(0.1, {}, DType::kFloat16));
    EXPECT_TRUE(t.shape.empty());
    ExpectValues(t, {F16ToF32(F32ToF16(0.1f))});
  }
}

// ---- casts ------------------------------------------------------------------

TEST(Reference, Casts) {
  auto cast = [](DType from, DType to, std::vector<double> x) {
    G g;
    int a = g.In(from, {static_cast<int64_t>(x.size())}, x);
    Tensor t = g.Out(g.Cast(a, to));
    EXPECT_EQ(t.dtype, to);
    return t;
  };
  ExpectValues(cast(DType::kFloat32, DType::kInt32, {2.9, -2.9, kNaN, kInf, -kInf, 3e9, -0.5}),
               {2, -2, 0, kI32Max, kI32Min, kI32Max, 0});
  ExpectValues(cast(DType::kFloat32, DType::kInt8, {200.7, -129.5, 127.9, kInf, kNaN}),
               {-56, 127, 127, -1, 0});
  ExpectValues(cast(DType::kFloat32, DType::kBool, {kNaN, 0.0, -0.0, 1e-30, -kInf}), {1, 0, 0, 1, 1});
  ExpectValues(cast(DType::kInt32, DType::kFloat32, {16777217, -3}), {16777216, -3});
  ExpectValues(cast(DType::kInt32, DType::kInt8, {300, -129, 128}), {44, 127, -128});
  ExpectValues(cast(DType::kInt32, DType::kFloat16, {2049, 2051, 70000}), {2048, 2052, kInf});
  ExpectValues(cast(DType::kInt32, DType::kBool, {0, -5}), {0, 1});
  ExpectValues(cast(DType::kInt8, DType::kInt32, {-128, 127}), {-128, 127});
  ExpectValues(cast(DType::kFloat32, DType::kFloat16, {65520, 65519, 1e-8, kNaN}),
               {kInf, 65504, 0, kNaN});
  ExpectValues(cast(DType::kFloat16, DType::kFloat32, {0.1}), {F16ToF32(F32ToF16(0.1f))});
  ExpectValues(cast(DType::kFloat16, DType::kBFloat16, {1.0 + std::ldexp(1.0, -8)}), {1.0});
  ExpectValues(cast(DType::kBFloat16, DType::kInt8, {-300}), {-44});
  ExpectValues(cast(DType::kBool, DType::kFloat32, {1, 0}), {1, 0});
  ExpectValues(cast(DType::kBool, DType::kInt8, {1, 0}), {1, 0});
  ExpectValues(cast(DType::kFloat32, DType::kFloat32, {0.1}), {F(0.1)});
  ExpectValues(cast(DType::kInt32, DType::kBFloat16, {257}), {256});
}

// ---- data movement ----------------------------------------------------------

TEST(Reference, SelectBroadcastsAllThree) {
  G g;
  int c = g.In(DType::kBool, {2, 1}, {1, 0});
  int a = g.In(DType::kFloat32, {1, 3}, {1, 2, 3});
  int b = g.In(DType::kFloat32, {}, {9});
  Tensor t = g.Out(g.Select(c, a, b));
  EXPECT_EQ(t.shape, (Shape{2, 3}));
  ExpectValues(t, {1, 2, 3, 9, 9, 9});
}

TEST(Reference, BroadcastBinary) {
  G g;
  int a = g.In(DType::kInt32, {2, 1, 3}, {1, 2, 3, 4, 5, 6});
  int b = g.In(DType::kInt32, {2, 1}, {10, 20});
  Tensor t = g.Out(g.Binary(BinaryOp::kAdd, a, b));
  EXPECT_EQ(t.shape, (Shape{2, 2, 3}));
  ExpectValues(t, {11, 12, 13, 21, 22, 23, 14, 15, 16, 24, 25, 26});
}

TEST(Reference, BroadcastOp) {
  {
    G g;
    int a = g.In(DType::kFloat32, {3}, {1, 2, 3});
    Tensor t = g.Out(g.Shaped(Op::kBroadcast, a, {2, 3}));
    ExpectValues(t, {1, 2, 3, 1, 2, 3});
  }
  {
    G g;
    int a = g.In(DType::kFloat32, {2, 1}, {1, 2});
    ExpectValues(g.Out(g.Shaped(Op::kBroadcast, a, {2, 3})), {1, 1, 1, 2, 2, 2});
  }
  {
    G g;
    int a = g.In(DType::kInt8, {}, {-7});
    Tensor t = g.Out(g.Shaped(Op::kBroadcast, a, {2, 2}));
    EXPECT_EQ(t.shape, (Shape{2, 2}));
    ExpectValues(t, {-7, -7, -7, -7});
  }
  {
    G g;
    int a = g.In(DType::kFloat32, {1, 2}, {1, 2});
    Tensor t = g.Out(g.Shaped(Op::kBroadcast, a, {0, 2}));
    EXPECT_EQ(t.shape, (Shape{0, 2}));
    EXPECT_TRUE(t.data.empty());
  }
}

TEST(Reference, TransposeAndReshape) {
  {
    G g;
    int a = g.In(DType::kFloat32, {2, 3}, {1, 2, 3, 4, 5, 6});
    Tensor t = g.Out(g.Shaped(Op::kTranspose, a, {1, 0}));
    EXPECT_EQ(t.shape, (Shape{3, 2}));
    ExpectValues(t, {1, 4, 2, 5, 3, 6});
  }
  {
    G g;
    std::vector<double> v(24);
    for (int i = 0; i < 24; ++i) v[i] = i;
    int a = g.In(DType::kInt32, {2, 3, 4}, v);
    Tensor t = g.Out(g.Shaped(Op::kTranspose, a, {2, 0, 1}));
    EXPECT_EQ(t.shape, (Shape{4, 2, 3}));
    // out[i][j][k] = in[j][k][i]
    std::vector<double> want;
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 2; ++j)
        for (int k = 0; k < 3; ++k) want.push_back(j * 12 + k * 4 + i);
    ExpectValues(t, want);
  }
  {
    G g;
    int a = g.In(DType::kFloat32, {2, 3}, {1, 2, 3, 4, 5, 6});
    Tensor t = g.Out(g.Shaped(Op::kReshape, g.Shaped(Op::kTranspose, a, {1, 0}), {-1}));
    EXPECT_EQ(t.shape, (Shape{6}));
    ExpectValues(t, {1, 4, 2, 5, 3, 6});
  }
  {
    // rank 8 reversal
    G g;
    Shape s = {2, 1, 2, 1, 2, 1, 2, 2};
    std::vector<double> v(32);
    for (int i = 0; i < 32; ++i) v[i] = i;
    int a = g.In(DType::kFloat32, s, v);
    Tensor t = g.Out(g.Shaped(Op::kTranspose, a, {7, 6, 5, 4, 3, 2, 1, 0}));
    EXPECT_EQ(t.shape, (Shape{2, 2, 1, 2, 1, 2, 1, 2}));
    // Index math: in strides (non-unit axes 0,2,4,6,7) = 16, 8, 4, 2, 1.
    std::vector<double> want;
    for (int i7 = 0; i7 < 2; ++i7)
      for (int i6 = 0; i6 < 2; ++i6)
        for (int i4 = 0; i4 < 2; ++i4)
          for (int i2 = 0; i2 < 2; ++i2)
            for (int i0 = 0; i0 < 2; ++i0) want.push_back(i0 * 16 + i2 * 8 + i4 * 4 + i6 * 2 + i7);
    ExpectValues(t, want);
  }
}

TEST(Reference, StridedSliceLoad) {
  std::vector<double> v(20);
  for (int i = 0; i < 20; ++i) v[i] = i;
  {
    G g;
    int a = g.Slice(DType::kFloat32, {4, 5}, v, {1, 0}, {4, 5}, {2, 2});
    Tensor t = g.Out(a);
    EXPECT_EQ(t.shape, (Shape{2, 3}));
    ExpectValues(t, {5, 7, 9, 15, 17, 19});
  }
  {
    G g;
    int a = g.Slice(DType::kFloat32, {4, 5}, v, {0, 1}, {3, 4}, {1, 1});
    Tensor t = g.Out(a);
    EXPECT_EQ(t.shape, (Shape{3, 3}));
    ExpectValues(t, {1, 2, 3, 6, 7, 8, 11, 12, 13});
  }
  {
    G g;
    int a = g.Slice(DType::kFloat32, {4, 5}, v, {2, 3}, {2, 5}, {1, 3});
    Tensor t = g.Out(a);
    EXPECT_EQ(t.shape, (Shape{0, 1}));
  }
}

TEST(Reference, PadStore) {
  {
    G h;
    int b = h.In(DType::kFloat32, {2, 2}, {1, 2, 3, 4});
    h.PadStore(b, {3, 4}, {1, 1}, -1.5);
    Tensor p = h.Run()[0];
    EXPECT_EQ(p.shape, (Shape{3, 4}));
    ExpectValues(p, {-1.5, -1.5, -1.5, -1.5, -1.5, 1, 2, -1.5, -1.5, 3, 4, -1.5});
  }
  {
    G g;
    int b = g.In(DType::kInt8, {2}, {5, 6});
    g.PadStore(b, {4}, {}, 300);  // pad value 300 -> 44 in i8; empty offset = zeros
    ExpectValues(g.Run()[0], {5, 6, 44, 44});
  }
  {
    G g;
    int b = g.In(DType::kFloat16, {1}, {1});
    g.PadStore(b, {2}, {1}, 0.1);  // pad rounded to f16 at the store
    ExpectValues(g.Run()[0], {F16ToF32(F32ToF16(0.1f)), 1});
  }
  {
    G g;
    int b = g.In(DType::kFloat32, {0, 2}, {});
    g.PadStore(b, {2, 3}, {1, 0}, 7);
    ExpectValues(g.Run()[0], {7, 7, 7, 7, 7, 7});
  }
}

// ---- reductions ---------------------------------------------------------------

TEST(Reference, ReduceAxesAndKeepdims) {
  std::vector<double> v(24);
  for (int i = 0; i < 24; ++i) v[i] = i;
  {
    G g;
    int a = g.In(DType::kFloat32, {2, 3, 4}, v);
    Tensor t = g.Out(g.Reduce(ReduceOp::kSum, a, {1}, false));
    EXPECT_EQ(t.shape, (Shape{2, 4}));
    ExpectValues(t, {12, 15, 18, 21, 48, 51, 54, 57});
  }
  {
    G g;
    int a = g.In(DType::kFloat32, {2, 3, 4}, v);
    Tensor t = g.Out(g.Reduce(ReduceOp::kMax, a, {0, 2}, true));
    EXPECT_EQ(t.shape, (Shape{1, 3, 1}));
    ExpectValues(t, {15, 19, 23});
  }
  {
    G g;
    int a = g.In(DType::kInt32, {2, 3, 4}, v);
    Tensor t = g.Out(g.Reduce(ReduceOp::kMin, a, {0, 1, 2}, false));
    EXPECT_TRUE(t.shape.empty());
    ExpectValues(t, {0});
  }
  {
    G g;
    int a = g.In(DType::kFloat32, {2, 3}, {1, 2, 3, 4, 5, 6});
    ExpectValues(g.Out(g.Reduce(ReduceOp::kProd, a, {1}, false)), {6, 120});
  }
}

TEST(Reference, ReduceIntWraps) {
  G g;
  int a = g.In(DType::kInt32, {3}, {kI32Max, 1, 1});
  ExpectValues(g.Out(g.Reduce(ReduceOp::kSum, a, {0}, false)), {kI32Min + 1});
  G h;
  int b = h.In(DType::kInt8, {3}, {100, 100, 1});
  ExpectValues(h.Out(h.Reduce(ReduceOp::kSum, b, {0}, false)), {-55});
  G k;
  int c = k.In(DType::kInt32, {2}, {65536, 65537});
  ExpectValues(k.Out(k.Reduce(ReduceOp::kProd, c, {0}, false)), {65536});
  G m;
  int d = m.In(DType::kInt8, {2}, {16, 17});
  ExpectValues(m.Out(m.Reduce(ReduceOp::kProd, d, {0}, false)), {16});  // 272 - 256
}

TEST(Reference, ReduceFloatRoundsOnceAtTheEnd) {
  // 2^24 + 1 + 1 summed in double is 2^24 + 2, representable in f32.
  G g;
  int a = g.In(DType::kFloat32, {3}, {16777216.0, 1, 1});
  ExpectValues(g.Out(g.Reduce(ReduceOp::kSum, a, {0}, false)), {16777218.0});
}

TEST(Reference, ReduceNaN) {
  G g;
  int a = g.In(DType::kFloat32, {2, 3}, {1, kNaN, 3, 4, 5, 6});
  G h = g, k = g;
  ExpectValues(g.Out(g.Reduce(ReduceOp::kMax, a, {1}, false)), {kNaN, 6});
  ExpectValues(h.Out(h.Reduce(ReduceOp::kMin, a, {1}, false)), {kNaN, 4});
  ExpectValues(k.Out(k.Reduce(ReduceOp::kSum, a, {1}, false)), {kNaN, 15});
}

TEST(Reference, ReduceEmptyGivesIdentity) {
  struct Case {
    DType dt;
    ReduceOp op;
    double want;
  };
  const Case cases[] = {
      {DType::kFloat32, ReduceOp::kSum, 0},      {DType::kFloat32, ReduceOp::kProd, 1},
      {DType::kFloat32, ReduceOp::kMax, -kInf},  {DType::kFloat32, ReduceOp::kMin, kInf},
      {DType::kFloat16, ReduceOp::kMax, -kInf},  {DType::kBFloat16, ReduceOp::kMin, kInf},
      {DType::kInt32, ReduceOp::kSum, 0},        {DType::kInt32, ReduceOp::kProd, 1},
      {DType::kInt32, ReduceOp::kMax, kI32Min},  {DType::kInt32, ReduceOp::kMin, kI32Max},
      {DType::kInt8, ReduceOp::kMax, -128},      {DType::kInt8, ReduceOp::kMin, 127},
      {DType::kInt8, ReduceOp::kProd, 1},        {DType::kBool, ReduceOp::kMax, 0},
      {DType::kBool, ReduceOp::kMin, 1},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(DTypeName(c.dt)) + " " + ReduceOpName(c.op));
    G g;
    int a = g.In(c.dt, {2, 0}, {});
    Tensor t = g.Out(g.Reduce(c.op, a, {1}, false));
    EXPECT_EQ(t.shape, (Shape{2}));
    ExpectValues(t, {c.want, c.want});
  }
}

TEST(Reference, ReduceBool) {
  G g;
  int a = g.In(DType::kBool, {2, 2}, {0, 1, 1, 1});
  G h = g;
  ExpectValues(g.Out(g.Reduce(ReduceOp::kMax, a, {1}, false)), {1, 1});
  ExpectValues(h.Out(h.Reduce(ReduceOp::kMin, a, {1}, false)), {0, 1});
}

TEST(Reference, ElemAny) {
  auto any = [](DType dt, Shape s, std::vector<double> v) {
    G g;
    int a = g.In(dt, s, std::move(v));
    Tensor t = g.Out(g.Any(a));
    EXPECT_EQ(t.dtype, DType::kBool);
    EXPECT_TRUE(t.shape.empty());
    return t;
  };
  ExpectValues(any(DType::kFloat32, {3}, {0, -0.0, 0}), {0});
  ExpectValues(any(DType::kFloat32, {3}, {0, kNaN, 0}), {1});
  ExpectValues(any(DType::kFloat32, {0, 4}, {}), {0});
  ExpectValues(any(DType::kInt8, {2, 2}, {0, 0, 0, -1}), {1});
  ExpectValues(any(DType::kBool, {}, {0}), {0});
}

// ---- shapes and helpers -------------------------------------------------------

TEST(Reference, RankZeroAndZeroSize) {
  {
    G g;
    int a = g.In(DType::kFloat32, {}, {2});
    int b = g.In(DType::kFloat32, {}, {3});
    Tensor t = g.Out(g.Binary(BinaryOp::kMul, a, b));
    EXPECT_TRUE(t.shape.empty());
    ExpectValues(t, {6});
  }
  {
    G g;
    int a = g.In(DType::kFloat32, {3, 0, 2}, {});
    Tensor t = g.Out(g.Unary(UnaryOp::kExp, a));
    EXPECT_EQ(t.shape, (Shape{3, 0, 2}));
    EXPECT_TRUE(t.data.empty());
  }
  {
    G g;
    int a = g.In(DType::kFloat32, {1, 1, 1, 1, 1, 1, 1, 2}, {1, 2});
    int b = g.In(DType::kFloat32, {2, 1, 1, 1, 1, 1, 1, 1}, {10, 20});
    Tensor t = g.Out(g.Binary(BinaryOp::kAdd, a, b));
    EXPECT_EQ(t.shape, (Shape{2, 1, 1, 1, 1, 1, 1, 2}));
    ExpectValues(t, {11, 12, 21, 22});
  }
}

TEST(Reference, MultipleOutputs) {
  G g;
  int a = g.In(DType::kFloat32, {2}, {1, 2});
  g.Store(g.BinaryTS(BinaryOp::kMul, a, 2));
  g.Store(g.Reduce(ReduceOp::kSum, a, {0}, false));
  auto outs = g.Run();
  ASSERT_EQ(outs.size(), 2u);
  ExpectValues(outs[0], {2, 4});
  ExpectValues(outs[1], {3});
}

TEST(Reference, BytesRoundTrip) {
  {
    Tensor t{DType::kFloat16, {3}, {1.0, -2.0, 0.1}};
    auto b = ref::ToBytes(t);
    ASSERT_EQ(b.size(), 6u);
    EXPECT_EQ(b[0], 0x00);
    EXPECT_EQ(b[1], 0x3C);  // 1.0 = 0x3C00
    EXPECT_EQ(b[2], 0x00);
    EXPECT_EQ(b[3], 0xC0);  // -2.0 = 0xC000
    Tensor r = ref::FromBytes(b.data(), DType::kFloat16, {3});
    ExpectValues(r, {1.0, -2.0, F16ToF32(F32ToF16(0.1f))});
  }
  {
    Tensor t{DType::kBFloat16, {1}, {1.0}};
    auto b = ref::ToBytes(t);
    EXPECT_EQ(b[0], 0x80);
    EXPECT_EQ(b[1], 0x3F);
  }
  for (DType dt : {DType::kFloat32, DType::kInt32, DType::kInt8, DType::kBool}) {
    Tensor t{dt, {2, 2}, {0, 1, -1, 100}};
    Tensor r = ref::FromBytes(ref::ToBytes(t).data(), dt, t.shape);
    EXPECT_EQ(r.shape, t.shape);
    std::vector<double> want = t.data;
    if (dt == DType::kBool) want = {0, 1, 1, 1};
    ExpectValues(r, want);
  }
}

TEST(Reference, Errors) {
  G g;
  int a = g.In(DType::kFloat32, {2}, {1, 2});
  g.Store(a);
  std::vector<Tensor> none;
  EXPECT_THROW(ref::Evaluate(g.g, none), Error);
  std::vector<Tensor> wrong_dtype = {Tensor{DType::kInt32, {2}, {1, 2}}};
  EXPECT_THROW(ref::Evaluate(g.g, wrong_dtype), Error);
  std::vector<Tensor> wrong_shape = {Tensor{DType::kFloat32, {3}, {1, 2, 3}}};
  EXPECT_THROW(ref::Evaluate(g.g, wrong_shape), Error);
  std::vector<Tensor> short_data = {Tensor{DType::kFloat32, {2}, {1}}};
  EXPECT_THROW(ref::Evaluate(g.g, short_data), Error);
}

}  // namespace
}  // namespace dvm
