// Every op x every dtype it supports, compared with the reference evaluator.
//
// Each case runs over a list of shapes (ranks 0 to 8, zero-size tensors,
// sizes just below, at, above and many times the VM tiles) and over input
// layouts: contiguous loads, broadcast inputs (an explicit Broadcast op on
// operand 0, implicit numpy broadcasting on the others), strided-slice and
// slice loads. Static kernels carry their shapes in the loads; dynamic
// kernels use -1 dims, and with contiguous inputs one dynamic kernel per
// rank is launched with every shape of that rank, checking that the program
// cache generated one program per distinct shape set.
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <set>

#include "test_util.h"

namespace dvm::test {
namespace {

enum class Layout { kContiguous, kBroadcast, kStrided, kSlice };
constexpr Layout kAllLayouts[] = {Layout::kContiguous, Layout::kBroadcast, Layout::kStrided, Layout::kSlice};

const char* LayoutName(Layout l) {
  switch (l) {
    case Layout::kContiguous:
      return "contig";
    case Layout::kBroadcast:
      return "bcast";
    case Layout::kStrided:
      return "strided";
    case Layout::kSlice:
      return "slice";
  }
  return "?";
}
const char* TypeName(KernelType t) { return t == KernelType::kStatic ? "static" : "dynamic"; }

std::string Sanitize(std::string s) {
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  return s;
}

// Shapes for element-wise cases.
const std::vector<Shape>& ElementwiseShapes() {
  static const std::vector<Shape> s = {
      {},
      {0},
      {1},
      {7},
      {1023},
      {1024},
      {1025},
      {4095},
      {4096},
      {4097},
      {70000},
      {3, 0, 5},
      {2, 3},
      {3, 1025},
      {1025, 3},
      {2, 3, 4},
      {2, 1, 3, 5},
      {2, 3, 1, 2, 3},
      {3, 2, 1, 2, 3, 2},
      {2, 2, 2, 1, 2, 2, 3},
      {2, 1, 2, 3, 1, 2, 2, 3},
  };
  return s;
}

// A smaller list for the many-combination suites (casts, binary scalar forms).
const std::vector<Shape>& SmallShapes() {
  static const std::vector<Shape> s = {
      {}, {0}, {1}, {7}, {1023}, {1025}, {4097}, {3, 0, 5}, {3, 1025}, {2, 3, 4}, {2, 1, 2, 3, 1, 2, 2, 3},
  };
  return s;
}

struct OperandSpec {
  DType dtype;
  Gen gen;
  // When set, the generator depends on the operand's shape (reductions).
  std::function<Gen(const Shape&)> shaped;
  Gen For(const Shape& s) const { return shaped ? shaped(s) : gen; }
};

struct OpCase {
  std::vector<OperandSpec> operands;
  std::function<NDObject*(Kernel&, const std::vector<NDObject*>&)> build;
  // Shapes to skip (e.g. reductions whose axis pattern needs more dims).
  std::function<bool(const Shape&)> applies;
};

// Creates operand `i` of shape `target` in `k` and appends its input tensor.
// Values come from spec.For(target): their conditioning depends on the
// logical value (e.g. the extent a reduction sums), not on the buffer.
NDObject* MakeOperand(Kernel& k, bool dynamic, Layout layout, int i, const Shape& target, const OperandSpec& spec,
                      Rng& rng, std::vector<ref::Tensor>& inputs) {
  auto dims = [&](const Shape& s) { return dynamic ? Shape(s.size(), -1) : s; };
  const size_t r = target.size();
  switch (layout) {
    case Layout::kContiguous: {
      inputs.push_back(MakeTensor(spec.dtype, target, spec.For(target), rng));
      Shape d = dims(target);
      return k.Load(nullptr, D(d), spec.dtype);
    }
    case Layout::kBroadcast: {
      Shape src = target;
      for (size_t a = 0; a < r; ++a)
        if ((a + i) % 2 == 0) src[a] = 1;
      if (i % 2 == 1 && r >= 2) src.erase(src.begin());  // implicit rank extension too
      inputs.push_back(MakeTensor(spec.dtype, src, spec.For(target), rng));
      Shape d = dims(src);
      NDObject* x = k.Load(nullptr, D(d), spec.dtype);
      return i == 0 ? k.Broadcast(x, D(target)) : x;
    }
    case Layout::kStrided: {
      Shape full(r), start(r), end(r), step(r);
      for (size_t a = 0; a < r; ++a) {
        step[a] = 1 + static_cast<int64_t>((a + i) % 3);
        start[a] = static_cast<int64_t>((a + i) % 2);
        end[a] = target[a] == 0 ? start[a] : start[a] + step[a] * (target[a] - 1) + 1;
        full[a] = end[a] + static_cast<int64_t>(a % 2);
      }
      inputs.push_back(MakeTensor(spec.dtype, full, spec.For(target), rng));
      Shape d = dims(full);
      return k.StridedSliceLoad(nullptr, D(d), spec.dtype, D(start), D(end), D(step));
    }
    case Layout::kSlice: {
      Shape full(r), start(r);
      for (size_t a = 0; a < r; ++a) {
        start[a] = static_cast<int64_t>((a + i) % 3);
        full[a] = start[a] + target[a] + 1;
      }
      inputs.push_back(MakeTensor(spec.dtype, full, spec.For(target), rng));
      Shape d = dims(full);
      return k.SliceLoad(nullptr, D(d), spec.dtype, D(start), D(target));
    }
  }
  return nullptr;
}

// Runs `c` over `shapes` with the given layout and kernel type.
void RunCase(const OpCase& c, Layout layout, KernelType type, const std::vector<Shape>& shapes, uint64_t seed) {
  Rng rng(seed);
  if (type == KernelType::kDynamic && layout == Layout::kContiguous) {
    std::map<size_t, std::vector<Shape>> by_rank;
    for (const Shape& s : shapes)
      if (!c.applies || c.applies(s)) by_rank[s.size()].push_back(s);
    for (const auto& [rank, group] : by_rank) {
      SCOPED_TRACE("dynamic kernel of rank " + std::to_string(rank));
      try {
        Kernel k(KernelType::kDynamic);
        std::vector<NDObject*> xs;
        Shape dyn(rank, -1);
        for (const auto& op : c.operands) xs.push_back(k.Load(nullptr, D(dyn), op.dtype));
        k.Store(nullptr, c.build(k, xs));
        std::vector<ref::Tensor> first;
        for (const Shape& s : group) {
          SCOPED_TRACE("shape " + ShapeString(s));
          std::vector<ref::Tensor> inputs;
          for (const auto& op : c.operands) inputs.push_back(MakeTensor(op.dtype, s, op.For(s), rng));
          EXPECT_TRUE(CheckKernel(k, inputs));
          if (first.empty()) first = inputs;
        }
        // One program per distinct shape set; a repeated shape set is a hit.
        if (group.size() <= 16) {
          EXPECT_EQ(k.stats().codegens, group.size());
          uint64_t hits = k.stats().cache_hits;
          EXPECT_TRUE(CheckKernel(k, first));
          EXPECT_EQ(k.stats().codegens, group.size()) << "relaunch of a cached shape regenerated";
          EXPECT_GT(k.stats().cache_hits, hits);
        }
      } catch (const std::exception& e) {
        ADD_FAILURE() << "exception: " << e.what();
      }
    }
    return;
  }
  for (const Shape& s : shapes) {
    if (c.applies && !c.applies(s)) continue;
    SCOPED_TRACE("shape " + ShapeString(s));
    try {
      Kernel k(type);
      std::vector<ref::Tensor> inputs;
      std::vector<NDObject*> xs;
      for (size_t i = 0; i < c.operands.size(); ++i)
        xs.push_back(
            MakeOperand(k, type == KernelType::kDynamic, layout, static_cast<int>(i), s, c.operands[i], rng, inputs));
      k.Store(nullptr, c.build(k, xs));
      EXPECT_TRUE(CheckKernel(k, inputs));
    } catch (const std::exception& e) {
      ADD_FAILURE() << "exception: " << e.what();
    }
  }
}

uint64_t SeedOf(const std::string& name) { return std::hash<std::string>()(name) ^ 0x5eed; }

// ===========================================================================
// Unary
// ===========================================================================

bool UnarySupports(UnaryOp op, DType dt) {
  if (IsFloat(dt)) return true;
  switch (op) {
    case UnaryOp::kIsFinite:
    case UnaryOp::kLogicalNot:
      return true;
    case UnaryOp::kAbs:
    case UnaryOp::kNeg:
    case UnaryOp::kRelu:
    case UnaryOp::kFloor:
    case UnaryOp::kCeil:
    case UnaryOp::kRound:
      return dt != DType::kBool;
    default:
      return false;
  }
}

Gen UnaryGen(UnaryOp op, DType dt) {
  if (!IsFloat(dt)) {
    if (dt == DType::kBool) return IntUniform(0, 1);
    Gen special = dt == DType::kInt32 ? Choice({double(kI32Min), double(kI32Max), 0, -1}) : Choice({-128, 127, 0, -1});
    return Mix(DefaultGen(dt), 0.05, special);
  }
  switch (op) {
    case UnaryOp::kSqrt:
    case UnaryOp::kRsqrt:
    case UnaryOp::kLog:
      return Uniform(0.1, 10);
    case UnaryOp::kReciprocal:
      return SignedUniform(0.1, 10);
    case UnaryOp::kExp:
      return Uniform(-10, 10);
    case UnaryOp::kTanh:
    case UnaryOp::kSigmoid:
    case UnaryOp::kErf:
      return Uniform(-5, 5);
    case UnaryOp::kSin:
    case UnaryOp::kCos:
      return Uniform(-10, 10);
    case UnaryOp::kAbs:
    case UnaryOp::kNeg:
    case UnaryOp::kRelu:
    case UnaryOp::kFloor:
    case UnaryOp::kCeil:
    case UnaryOp::kRound:
      // Half-integers exercise round-half-to-even; also NaN and infinities.
      return Mix(
          Mix(Uniform(-100, 100), 0.3, [](Rng& r) { return 0.5 * std::uniform_int_distribution<int>(-9, 9)(r); }), 0.02,
          Choice({kNaN, kInf, -kInf, -0.0}));
    case UnaryOp::kIsFinite:
      return Mix(Uniform(-3, 3), 0.3, Choice({kNaN, kInf, -kInf, 3e38, 1e5}));
    case UnaryOp::kLogicalNot:
      return Mix(SmallGen(dt), 0.2, Choice({0.0, -0.0, kNaN}));
  }
  return Uniform(-1, 1);
}

struct UnaryParam {
  UnaryOp op;
  DType dt;
  Layout layout;
  KernelType type;
};

std::vector<UnaryParam> UnaryParams() {
  std::vector<UnaryParam> ps;
  for (int o = 0; o < kNumUnaryOps; ++o)
    for (DType dt : kAllDTypes)
      if (UnarySupports(UnaryOp(o), dt))
        for (Layout l : kAllLayouts)
          for (KernelType t : {KernelType::kStatic, KernelType::kDynamic}) ps.push_back({UnaryOp(o), dt, l, t});
  return ps;
}

class UnaryTest : public ::testing::TestWithParam<UnaryParam> {};

TEST_P(UnaryTest, MatchesReference) {
  const UnaryParam& p = GetParam();
  OpCase c;
  c.operands = {{p.dt, UnaryGen(p.op, p.dt), {}}};
  c.build = [&](Kernel& k, const std::vector<NDObject*>& x) {
    NDObject* y = k.Unary(p.op, x[0]);
    EXPECT_EQ(k.GetDType(y), (p.op == UnaryOp::kIsFinite || p.op == UnaryOp::kLogicalNot) ? DType::kBool : p.dt);
    return y;
  };
  RunCase(c, p.layout, p.type, ElementwiseShapes(), SeedOf(std::string(UnaryOpName(p.op)) + DTypeName(p.dt)));
}

INSTANTIATE_TEST_SUITE_P(Ops, UnaryTest, ::testing::ValuesIn(UnaryParams()),
                         [](const ::testing::TestParamInfo<UnaryParam>& i) {
                           return Sanitize(std::string(UnaryOpName(i.param.op)) + "_" + DTypeName(i.param.dt) + "_" +
                                           LayoutName(i.param.layout) + "_" + TypeName(i.param.type));
                         });

// ===========================================================================
// Binary: tensor-tensor, tensor-scalar, scalar-tensor
// ===========================================================================

bool IsPredicateOp(BinaryOp op) { return op >= BinaryOp::kEqual; }
bool IsArith(BinaryOp op) { return op <= BinaryOp::kPow; }

bool BinarySupports(BinaryOp op, DType dt) { return !(IsArith(op) && dt == DType::kBool); }

// Generators for operand a (k = 0) and b (k = 1).
Gen BinaryGen(BinaryOp op, DType dt, int k) {
  const bool fl = IsFloat(dt);
  if (dt == DType::kBool) return IntUniform(0, 1);
  switch (op) {
    case BinaryOp::kAdd:
    case BinaryOp::kSub:
    case BinaryOp::kMul:
      return fl ? Uniform(-3, 3) : DefaultGen(dt);  // ints wrap
    case BinaryOp::kDiv:
      if (fl) return k == 0 ? Uniform(-3, 3) : SignedUniform(0.25, 4);
      if (k == 0) return Mix(DefaultGen(dt), 0.1, Choice({dt == DType::kInt32 ? double(kI32Min) : -128.0, 0, 7}));
      return Mix(IntUniform(-5, 5), 0.3, DefaultGen(dt));  // zero and -1 divisors
    case BinaryOp::kPow:
      if (fl) return k == 0 ? Uniform(0.5, 2) : Uniform(-2, 2);
      if (k == 0) return IntUniform(-3, 3);
      return IntUniform(-3, dt == DType::kInt32 ? 40 : 12);
    case BinaryOp::kMaximum:
    case BinaryOp::kMinimum:
    case BinaryOp::kEqual:
    case BinaryOp::kNotEqual:
    case BinaryOp::kLess:
    case BinaryOp::kLessEqual:
    case BinaryOp::kGreater:
    case BinaryOp::kGreaterEqual:
      if (fl) return Mix(SmallGen(dt), 0.05, Choice({kNaN, kInf, -kInf}));
      return Mix(SmallGen(dt), 0.5, DefaultGen(dt));
    case BinaryOp::kLogicalAnd:
    case BinaryOp::kLogicalOr:
      if (fl) return Mix(SmallGen(dt), 0.1, Choice({kNaN, -0.0}));
      return Mix(SmallGen(dt), 0.2, DefaultGen(dt));
  }
  return DefaultGen(dt);
}

// Scalars for the scalar forms; `tensor_first` is the TS form.
std::vector<double> BinaryScalars(BinaryOp op, DType dt, bool tensor_first) {
  const bool fl = IsFloat(dt);
  if (dt == DType::kBool) return {0, 1, 0.5};
  switch (op) {
    case BinaryOp::kAdd:
    case BinaryOp::kSub:
    case BinaryOp::kMul:
      return fl ? std::vector<double>{1.5, -2.25, 0.1} : std::vector<double>{3, -7, 2.9, 1e10, 300};
    case BinaryOp::kDiv:
      if (fl) return tensor_first ? std::vector<double>{0.5, -3, 0.1} : std::vector<double>{1, -2.5};
      return {3, -1, 0, 2.9};
    case BinaryOp::kPow:
      if (fl) return tensor_first ? std::vector<double>{2, 0.5, -1.5, 0} : std::vector<double>{1.5, 0.75};
      return tensor_first ? std::vector<double>{3, 0, -1, 7} : std::vector<double>{2, -1, 3, 1};
    case BinaryOp::kLogicalAnd:
    case BinaryOp::kLogicalOr:
      return {0, 1, -0.5};
    default:
      return fl ? std::vector<double>{0.5, 1, -1, kNaN, kInf} : std::vector<double>{0, 1, -2, 2.5, 1e10};
  }
}

enum class Form { kTT, kTS, kST };
const char* FormName(Form f) { return f == Form::kTT ? "tt" : f == Form::kTS ? "ts" : "st"; }

struct BinaryParam {
  BinaryOp op;
  DType dt;
  Form form;
  Layout layout;
  KernelType type;
};

std::vector<BinaryParam> BinaryParams() {
  std::vector<BinaryParam> ps;
  for (int o = 0; o < kNumBinaryOps; ++o)
    for (DType dt : kAllDTypes)
      if (BinarySupports(BinaryOp(o), dt))
        for (Form f : {Form::kTT, Form::kTS, Form::kST})
          for (Layout l : kAllLayouts)
            for (KernelType t : {KernelType::kStatic, KernelType::kDynamic}) ps.push_back({BinaryOp(o), dt, f, l, t});
  return ps;
}

class BinaryTest : public ::testing::TestWithParam<BinaryParam> {};

TEST_P(BinaryTest, MatchesReference) {
  const BinaryParam& p = GetParam();
  const DType out_dt = IsPredicateOp(p.op) ? DType::kBool : p.dt;
  const std::string seed_name = std::string(BinaryOpName(p.op)) + DTypeName(p.dt) + FormName(p.form);
  if (p.form == Form::kTT) {
    OpCase c;
    c.operands = {{p.dt, BinaryGen(p.op, p.dt, 0), {}}, {p.dt, BinaryGen(p.op, p.dt, 1), {}}};
    c.build = [&](Kernel& k, const std::vector<NDObject*>& x) {
      NDObject* y = k.Binary(p.op, x[0], x[1]);
      EXPECT_EQ(k.GetDType(y), out_dt);
      return y;
    };
    RunCase(c, p.layout, p.type, ElementwiseShapes(), SeedOf(seed_name));
    return;
  }
  for (double s : BinaryScalars(p.op, p.dt, p.form == Form::kTS)) {
    SCOPED_TRACE("scalar " + FormatValue(s));
    OpCase c;
    // The tensor plays operand b in the ST form (e.g. the exponent of pow).
    c.operands = {{p.dt, BinaryGen(p.op, p.dt, p.form == Form::kTS ? 0 : 1), {}}};
    c.build = [&](Kernel& k, const std::vector<NDObject*>& x) {
      NDObject* y = p.form == Form::kTS ? k.Binary(p.op, x[0], s) : k.Binary(p.op, s, x[0]);
      EXPECT_EQ(k.GetDType(y), out_dt);
      return y;
    };
    RunCase(c, p.layout, p.type, SmallShapes(), SeedOf(seed_name + FormatValue(s)));
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, BinaryTest, ::testing::ValuesIn(BinaryParams()),
                         [](const ::testing::TestParamInfo<BinaryParam>& i) {
                           return Sanitize(std::string(BinaryOpName(i.param.op)) + "_" + DTypeName(i.param.dt) + "_" +
                                           FormName(i.param.form) + "_" + LayoutName(i.param.layout) + "_" +
                                           TypeName(i.param.type));
                         });

// Explicit integer division and power edge cases, every element checked.
TEST(BinaryEdgeCases, IntDivisionAndPow) {
  for (DType dt : {DType::kInt32, DType::kInt8}) {
    SCOPED_TRACE(DTypeName(dt));
    const double mn = dt == DType::kInt32 ? double(kI32Min) : -128.0;
    const double mx = dt == DType::kInt32 ? double(kI32Max) : 127.0;
    std::vector<double> a = {7, -7, 7, -7, 5, mn, mn, 0, mx, mx, -1, 1};
    std::vector<double> b = {2, 2, -2, -2, 0, -1, 1, 0, -1, mx, 0, mn};
    for (BinaryOp op : {BinaryOp::kDiv, BinaryOp::kPow, BinaryOp::kMul, BinaryOp::kAdd, BinaryOp::kSub}) {
      SCOPED_TRACE(BinaryOpName(op));
      Kernel k;
      Shape s = {static_cast<int64_t>(a.size())};
      NDObject* x = k.Load(nullptr, D(s), dt);
      NDObject* y = k.Load(nullptr, D(s), dt);
      k.Store(nullptr, k.Binary(op, x, y));
      EXPECT_TRUE(CheckKernel(k, {Filled(dt, s, a), Filled(dt, s, b)}));
    }
  }
  // pow on ints: negative exponents, bases 1 and -1.
  Kernel k;
  Shape s = {8};
  NDObject* x = k.Load(nullptr, D(s), DType::kInt32);
  NDObject* y = k.Load(nullptr, D(s), DType::kInt32);
  k.Store(nullptr, k.Binary(BinaryOp::kPow, x, y));
  auto got = RunKernel(k, {Filled(DType::kInt32, s, {1, -1, -1, 2, 0, 0, 2, 3}),
                           Filled(DType::kInt32, s, {-5, -3, -2, -1, 0, -1, 31, 21})});
  ASSERT_EQ(got.outputs.size(), 1u);
  uint32_t p21 = 1;
  for (int i = 0; i < 21; ++i) p21 *= 3u;
  EXPECT_TRUE(AllClose(Filled(DType::kInt32, s, {1, -1, 1, 0, 1, 0, double(kI32Min), double(int32_t(p21))}),
                       got.outputs[0], DType::kInt32));
}

// Float pow follows C/numpy at the edges: negative bases with integral
// exponents, zero bases, NaN with a zero exponent, base one with NaN.
TEST(BinaryEdgeCases, FloatPow) {
  for (DType dt : kFloatDTypes) {
    SCOPED_TRACE(DTypeName(dt));
    Kernel k;
    Shape s = {10};
    NDObject* x = k.Load(nullptr, D(s), dt);
    NDObject* y = k.Load(nullptr, D(s), dt);
    k.Store(nullptr, k.Binary(BinaryOp::kPow, x, y));
    k.Store(nullptr, k.Binary(BinaryOp::kPow, x, 2.0));
    EXPECT_TRUE(CheckKernel(k, {Filled(dt, s, {-2, -2, -2, 0, 0, kNaN, 1, 2, -0.5, kInf}),
                                Filled(dt, s, {3, 2, 0.5, 0, -1, 0, kNaN, -kInf, -3, -1})}));
  }
}

// ===========================================================================
// Cast: every (src, dst) pair
// ===========================================================================

Gen CastGen(DType src) {
  if (IsFloat(src))
    return Mix(Uniform(-300, 300), 0.1,
               Choice({kNaN, kInf, -kInf, 3e9, -3e9, 0.5, 1.5, 2.5, -0.5, -2.5, 65520, 1e5, -0.0, 127.5, 128, -128.5,
                       255.9, 1e-6}));
  if (src == DType::kInt32)
    return Mix(DefaultGen(src), 0.5, Mix(IntUniform(-300, 300), 0.1, Choice({16777217, 2049, 2051, -129, 257})));
  return DefaultGen(src);
}

struct CastParam {
  DType src, dst;
  Layout layout;
  KernelType type;
};

std::vector<CastParam> CastParams() {
  std::vector<CastParam> ps;
  for (DType s : kAllDTypes)
    for (DType d : kAllDTypes)
      for (Layout l : kAllLayouts)
        for (KernelType t : {KernelType::kStatic, KernelType::kDynamic}) ps.push_back({s, d, l, t});
  return ps;
}

class CastTest : public ::testing::TestWithParam<CastParam> {};

TEST_P(CastTest, MatchesReference) {
  const CastParam& p = GetParam();
  OpCase c;
  c.operands = {{p.src, CastGen(p.src), {}}};
  c.build = [&](Kernel& k, const std::vector<NDObject*>& x) {
    NDObject* y = k.Cast(x[0], p.dst);
    EXPECT_EQ(k.GetDType(y), p.dst);
    return y;
  };
  RunCase(c, p.layout, p.type, SmallShapes(), SeedOf(std::string("cast") + DTypeName(p.src) + DTypeName(p.dst)));
}

INSTANTIATE_TEST_SUITE_P(Ops, CastTest, ::testing::ValuesIn(CastParams()),
                         [](const ::testing::TestParamInfo<CastParam>& i) {
                           return Sanitize(std::string(DTypeName(i.param.src)) + "_to_" + DTypeName(i.param.dst) + "_" +
                                           LayoutName(i.param.layout) + "_" + TypeName(i.param.type));
                         });

// ===========================================================================
// Select, Copy (per dtype)
// ===========================================================================

struct DTypeParam {
  DType dt;
  Layout layout;
  KernelType type;
};

std::vector<DTypeParam> DTypeParams() {
  std::vector<DTypeParam> ps;
  for (DType dt : kAllDTypes)
    for (Layout l : kAllLayouts)
      for (KernelType t : {KernelType::kStatic, KernelType::kDynamic}) ps.push_back({dt, l, t});
  return ps;
}

std::string DTypeParamName(const ::testing::TestParamInfo<DTypeParam>& i) {
  return Sanitize(std::string(DTypeName(i.param.dt)) + "_" + LayoutName(i.param.layout) + "_" + TypeName(i.param.type));
}

class SelectTest : public ::testing::TestWithParam<DTypeParam> {};

TEST_P(SelectTest, MatchesReference) {
  const DTypeParam& p = GetParam();
  OpCase c;
  c.operands = {{DType::kBool, IntUniform(0, 1), {}},
                {p.dt, DefaultGen(p.dt), {}},
                {p.dt, Mix(DefaultGen(p.dt), 0.05, IsFloat(p.dt) ? Choice({kNaN, kInf}) : DefaultGen(p.dt)), {}}};
  c.build = [&](Kernel& k, const std::vector<NDObject*>& x) {
    NDObject* y = k.Select(x[0], x[1], x[2]);
    EXPECT_EQ(k.GetDType(y), p.dt);
    return y;
  };
  RunCase(c, p.layout, p.type, ElementwiseShapes(), SeedOf(std::string("select") + DTypeName(p.dt)));
}

INSTANTIATE_TEST_SUITE_P(Ops, SelectTest, ::testing::ValuesIn(DTypeParams()), DTypeParamName);

// A comparison feeding select, with a rank-0 condition and scalar branches.
TEST(SelectExtra, ComputedConditionAndScalarBranches) {
  for (KernelType t : {KernelType::kStatic, KernelType::kDynamic}) {
    Rng rng(7);
    Kernel k(t);
    Shape s = {3, 1025};
    Shape d = t == KernelType::kStatic ? s : Shape{-1, -1};
    NDObject* x = k.Load(nullptr, D(d), DType::kFloat32);
    NDObject* c0 = k.Load(nullptr, {}, DType::kBool);
    NDObject* pos = k.Binary(BinaryOp::kGreater, x, 0.0);
    NDObject* zero = k.Broadcast(0.0, {}, DType::kFloat32);
    NDObject* relu = k.Select(pos, x, zero);
    k.Store(nullptr, relu);
    k.Store(nullptr, k.Select(c0, x, k.Unary(UnaryOp::kNeg, x)));
    for (double cv : {0.0, 1.0}) {
      EXPECT_TRUE(
          CheckKernel(k, {MakeTensor(DType::kFloat32, s, Uniform(-2, 2), rng), Filled(DType::kBool, {}, {cv})}));
    }
  }
}

class CopyTest : public ::testing::TestWithParam<DTypeParam> {};

TEST_P(CopyTest, MatchesReference) {
  const DTypeParam& p = GetParam();
  OpCase c;
  c.operands = {{p.dt, Mix(DefaultGen(p.dt), 0.02, IsFloat(p.dt) ? Choice({kNaN, kInf, -0.0}) : DefaultGen(p.dt)), {}}};
  c.build = [&](Kernel& k, const std::vector<NDObject*>& x) { return k.Copy(x[0]); };
  RunCase(c, p.layout, p.type, ElementwiseShapes(), SeedOf(std::string("copy") + DTypeName(p.dt)));
}

INSTANTIATE_TEST_SUITE_P(Ops, CopyTest, ::testing::ValuesIn(DTypeParams()), DTypeParamName);

// A plain load stored as is (no op at all), every dtype and layout.
class LoadStoreTest : public ::testing::TestWithParam<DTypeParam> {};

TEST_P(LoadStoreTest, MatchesReference) {
  const DTypeParam& p = GetParam();
  OpCase c;
  c.operands = {{p.dt, DefaultGen(p.dt), {}}};
  c.build = [&](Kernel&, const std::vector<NDObject*>& x) { return x[0]; };
  RunCase(c, p.layout, p.type, ElementwiseShapes(), SeedOf(std::string("ld") + DTypeName(p.dt)));
}

INSTANTIATE_TEST_SUITE_P(Ops, LoadStoreTest, ::testing::ValuesIn(DTypeParams()), DTypeParamName);

// ===========================================================================
// Broadcast, Reshape, Transpose
// ===========================================================================

struct MoveParam {
  DType dt;
  KernelType type;
};
std::vector<MoveParam> MoveParams() {
  std::vector<MoveParam> ps;
  for (DType dt : kAllDTypes)
    for (KernelType t : {KernelType::kStatic, KernelType::kDynamic}) ps.push_back({dt, t});
  return ps;
}
std::string MoveParamName(const ::testing::TestParamInfo<MoveParam>& i) {
  return Sanitize(std::string(DTypeName(i.param.dt)) + "_" + TypeName(i.param.type));
}

class DataMovementTest : public ::testing::TestWithParam<MoveParam> {
 protected:
  // Builds `build(load)` for an input of `in_shape` and checks it; the input
  // is loaded plainly and, for a second kernel, through a strided slice.
  void Check(const Shape& in_shape, const std::function<NDObject*(Kernel&, NDObject*)>& build, uint64_t seed) {
    const MoveParam& p = GetParam();
    SCOPED_TRACE("input " + ShapeString(in_shape));
    Rng rng(seed);
    for (Layout l : {Layout::kContiguous, Layout::kStrided}) {
      SCOPED_TRACE(LayoutName(l));
      try {
        Kernel k(p.type);
        std::vector<ref::Tensor> inputs;
        NDObject* x =
            MakeOperand(k, p.type == KernelType::kDynamic, l, 0, in_shape, {p.dt, DefaultGen(p.dt), {}}, rng, inputs);
        k.Store(nullptr, build(k, x));
        EXPECT_TRUE(CheckKernel(k, inputs));
      } catch (const std::exception& e) {
        ADD_FAILURE() << "exception: " << e.what();
      }
    }
  }
};

TEST_P(DataMovementTest, Broadcast) {
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{}, {5}},
      {{}, {2, 3}},
      {{1}, {1025}},
      {{3}, {4, 3}},
      {{3, 1}, {3, 4097}},
      {{1, 7}, {1023, 7}},
      {{2, 1, 3}, {2, 5, 3}},
      {{1, 1, 1}, {4, 5, 6}},
      {{5}, {0, 5}},
      {{1}, {0}},
      {{2, 1, 2, 1, 2, 1, 2, 1}, {2, 2, 2, 2, 2, 2, 2, 2}},
      {{1, 1}, {70000, 1}},
      {{70000}, {2, 70000}},
      {{7, 1}, {3, 7, 1025}},
      {{4}, {4}},
  };
  for (const auto& [in, out] : cases) {
    SCOPED_TRACE("to " + ShapeString(out));
    Check(
        in, [&](Kernel& k, NDObject* x) { return k.Broadcast(x, D(out)); }, 11);
  }
}

TEST_P(DataMovementTest, BroadcastScalar) {
  const MoveParam& p = GetParam();
  const Shape shapes[] = {{}, {1}, {7}, {1025}, {3, 4097}, {0, 2}, {2, 1, 2, 1, 2, 1, 2, 1}};
  for (double s : {2.7, -129.0, 0.1, 1e10, -0.0, 300.0, kNaN}) {
    for (const Shape& shape : shapes) {
      SCOPED_TRACE("scalar " + FormatValue(s) + " to " + ShapeString(shape));
      try {
        // Stored directly.
        Kernel k(p.type);
        NDObject* b = k.Broadcast(s, D(shape), p.dt);
        EXPECT_EQ(k.GetDType(b), p.dt);
        k.Store(nullptr, b);
        EXPECT_TRUE(CheckKernel(k, {}));
        // Combined with a loaded tensor (max works on every dtype).
        Kernel k2(p.type);
        Shape d = p.type == KernelType::kStatic ? shape : Shape(shape.size(), -1);
        NDObject* x = k2.Load(nullptr, D(d), p.dt);
        k2.Store(nullptr, k2.Binary(BinaryOp::kMaximum, x, k2.Broadcast(s, D(shape), p.dt)));
        Rng rng(3);
        EXPECT_TRUE(CheckKernel(k2, {MakeTensor(p.dt, shape, DefaultGen(p.dt), rng)}));
      } catch (const std::exception& e) {
        ADD_FAILURE() << "exception: " << e.what();
      }
    }
  }
}

TEST_P(DataMovementTest, Reshape) {
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{2, 3, 4}, {4, 6}},
      {{2, 3, 4}, {-1}},
      {{70000}, {7, -1}},
      {{24}, {2, 3, 4}},
      {{2, 1, 2, 1, 2, 1, 2, 2}, {32}},
      {{32}, {2, 1, 2, 1, 2, 1, 2, 2}},
      {{3, 0, 2}, {0, 6}},
      {{}, {1, 1}},
      {{1, 1}, {}},
      {{3, 1025}, {1025, 3}},
      {{4097}, {1, 4097, 1}},
  };
  for (const auto& [in, out] : cases) {
    SCOPED_TRACE("to " + ShapeString(out));
    Check(
        in, [&](Kernel& k, NDObject* x) { return k.Reshape(x, D(out)); }, 12);
  }
  // Reshape of a non-contiguous value (a transpose).
  Check(
      {6, 4},
      [](Kernel& k, NDObject* x) {
        return k.Reshape(k.Transpose(x, {1, 0}), {3, 8});
      },
      13);
}

TEST_P(DataMovementTest, Transpose) {
  const std::vector<std::pair<Shape, Shape>> cases = {
      {{2, 3}, {1, 0}},
      {{1025, 7}, {1, 0}},
      {{3, 4097}, {1, 0}},
      {{64, 65}, {1, 0}},
      {{300, 257}, {1, 0}},
      {{2, 3, 4}, {2, 0, 1}},
      {{2, 3, 4}, {0, 2, 1}},
      {{2, 3, 4}, {0, 1, 2}},
      {{2, 3, 4, 5}, {3, 1, 2, 0}},
      {{2, 1, 3, 1, 2, 2, 1, 3}, {7, 6, 5, 4, 3, 2, 1, 0}},
      {{2, 3, 2, 3, 2, 3, 2, 3}, {1, 0, 3, 2, 5, 4, 7, 6}},
      {{0, 3}, {1, 0}},
      {{}, {}},
  };
  for (const auto& [in, perm] : cases) {
    SCOPED_TRACE("perm " + ShapeString(perm));
    Check(
        in, [&](Kernel& k, NDObject* x) { return k.Transpose(x, D(perm)); }, 14);
  }
  // A transpose feeding element-wise math.
  Check(
      {33, 1025},
      [](Kernel& k, NDObject* x) {
        NDObject* t = k.Transpose(x, {1, 0});
        return k.Binary(BinaryOp::kMaximum, t, t);
      },
      15);
}

INSTANTIATE_TEST_SUITE_P(Ops, DataMovementTest, ::testing::ValuesIn(MoveParams()), MoveParamName);

// Dynamic broadcast where -1 keeps the input dim.
TEST(DynamicBroadcast, MinusOneKeepsInputDim) {
  Kernel k(KernelType::kDynamic);
  NDObject* x = k.Load(nullptr, {-1, 1}, DType::kFloat32);
  k.Store(nullptr, k.Broadcast(x, {-1, 8}));
  Rng rng(5);
  for (int64_t rows : {3, 1025, 0, 1, 3}) {
    SCOPED_TRACE(rows);
    EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kFloat32, {rows, 1}, Uniform(-1, 1), rng)}));
  }
  EXPECT_EQ(k.stats().codegens, 4u);
}

// ===========================================================================
// Reduce
// ===========================================================================

enum class Axes { kLast, kFirst, kLeading2, kMiddle, kNonContig, kAll, kLastTwo };
constexpr Axes kAllAxes[] = {Axes::kLast,      Axes::kFirst, Axes::kLeading2, Axes::kMiddle,
                             Axes::kNonContig, Axes::kAll,   Axes::kLastTwo};
const char* AxesName(Axes a) {
  switch (a) {
    case Axes::kLast:
      return "last";
    case Axes::kFirst:
      return "first";
    case Axes::kLeading2:
      return "leading2";
    case Axes::kMiddle:
      return "middle";
    case Axes::kNonContig:
      return "noncontig";
    case Axes::kAll:
      return "all";
    case Axes::kLastTwo:
      return "last2";
  }
  return "?";
}

// Axes of the pattern for a rank, or empty when the pattern does not apply
// (or would duplicate a simpler pattern).
Shape AxesFor(Axes a, size_t rank) {
  const int64_t r = static_cast<int64_t>(rank);
  Shape ax;
  switch (a) {
    case Axes::kLast:
      if (r >= 1) ax = {r - 1};
      break;
    case Axes::kFirst:
      if (r >= 2) ax = {0};
      break;
    case Axes::kLeading2:
      if (r >= 3) ax = {0, 1};
      break;
    case Axes::kMiddle:
      if (r >= 3)
        for (int64_t i = 1; i < r - 1; ++i) ax.push_back(i);
      break;
    case Axes::kNonContig:
      if (r >= 3)
        for (int64_t i = 0; i < r; i += 2) ax.push_back(i);
      break;
    case Axes::kAll:
      for (int64_t i = 0; i < r; ++i) ax.push_back(i);
      break;
    case Axes::kLastTwo:
      if (r >= 3) ax = {r - 2, r - 1};
      break;
  }
  return ax;
}

const std::vector<Shape>& ReduceShapes() {
  static const std::vector<Shape> s = {
      {0},
      {1},
      {7},
      {1023},
      {1024},
      {1025},
      {4095},
      {4096},
      {4097},
      {70000},
      {3, 0},
      {0, 3},
      {5, 7},
      {3, 1025},
      {4097, 3},
      {65, 513},
      {64, 512},
      {130, 1025},
      {8, 4097},
      {300, 200},
      {2, 3, 4},
      {2, 0, 4},
      {1, 1, 5},
      {17, 1, 33},
      {3, 4, 5, 6},
      {2, 3, 2, 3, 2},
      {2, 2, 3, 2, 2, 3, 2, 2},
      {64, 1024},
  };
  return s;
}

int64_t ReducedExtent(const Shape& s, const Shape& axes) {
  int64_t n = 1;
  for (int64_t a : axes) n *= s[a];
  return n;
}

// Inputs chosen so that the reduction is well-conditioned in f32: sums of
// positive fractions over moderate extents and of small integers (exact in
// any order) beyond; products of values near 1 over tiny extents and of
// +-1 with rare powers of two (exact) beyond.
Gen ReduceGen(ReduceOp op, DType dt, int64_t extent) {
  const bool fl = IsFloat(dt);
  switch (op) {
    case ReduceOp::kSum:
      if (!fl) return DefaultGen(dt);  // wraps
      if (extent <= 5000 && dt == DType::kFloat32) return Uniform(0.5, 1.5);
      if (extent <= 256) return Uniform(0.5, 1.5);
      return IntUniform(0, 3);
    case ReduceOp::kProd: {
      if (!fl) return Mix(Choice({1, -1}), 0.3, IntUniform(-3, 3));
      if (extent <= 16) return Uniform(0.8, 1.25);
      double p = std::min(0.5, 8.0 / static_cast<double>(std::max<int64_t>(extent, 1)));
      return Mix(Choice({1, -1}), p, Choice({2, 0.5}));
    }
    case ReduceOp::kMax:
    case ReduceOp::kMin: {
      if (dt == DType::kBool) {
        // Mostly the identity-like value so that both outcomes occur.
        double p = std::min(0.5, 1.0 / static_cast<double>(std::max<int64_t>(extent, 1)));
        return op == ReduceOp::kMax ? Mix(Choice({0}), p, Choice({1})) : Mix(Choice({1}), p, Choice({0}));
      }
      if (!fl) return DefaultGen(dt);
      double p = 0.3 / static_cast<double>(std::max<int64_t>(extent, 1));
      return Mix(Mix(Uniform(-100, 100), 0.01, Choice({kInf, -kInf})), p, Choice({kNaN}));
    }
  }
  return DefaultGen(dt);
}

struct ReduceParam {
  ReduceOp op;
  DType dt;
  Axes axes;
  Layout layout;
  KernelType type;
};

std::vector<ReduceParam> ReduceParams() {
  std::vector<ReduceParam> ps;
  for (int o = 0; o < kNumReduceOps; ++o)
    for (DType dt : kAllDTypes) {
      bool ok = dt != DType::kBool || ReduceOp(o) == ReduceOp::kMax || ReduceOp(o) == ReduceOp::kMin;
      if (!ok) continue;
      for (Axes a : kAllAxes) {
        ps.push_back({ReduceOp(o), dt, a, Layout::kContiguous, KernelType::kStatic});
        ps.push_back({ReduceOp(o), dt, a, Layout::kContiguous, KernelType::kDynamic});
        ps.push_back({ReduceOp(o), dt, a, Layout::kStrided, KernelType::kStatic});
        ps.push_back({ReduceOp(o), dt, a, Layout::kBroadcast, KernelType::kDynamic});
      }
    }
  return ps;
}

class ReduceTest : public ::testing::TestWithParam<ReduceParam> {};

TEST_P(ReduceTest, MatchesReference) {
  const ReduceParam& p = GetParam();
  for (bool keep : {false, true}) {
    SCOPED_TRACE(keep ? "keepdims" : "no keepdims");
    OpCase c;
    OperandSpec spec;
    spec.dtype = p.dt;
    spec.shaped = [&](const Shape& s) {
      Shape ax = AxesFor(p.axes, s.size());
      // A broadcast input repeats values along the reduced axes: summing
      // many equal fractions accumulates correlated f32 rounding, so use the
      // exact (integer / power-of-two) generators there.
      int64_t extent = p.layout == Layout::kBroadcast ? int64_t{1} << 40 : ReducedExtent(s, ax);
      return ReduceGen(p.op, p.dt, extent);
    };
    c.operands = {spec};
    c.applies = [&](const Shape& s) { return !AxesFor(p.axes, s.size()).empty(); };
    c.build = [&](Kernel& k, const std::vector<NDObject*>& x) {
      Shape ax = AxesFor(p.axes, k.GetShape(x[0]).size());
      NDObject* y = k.Reduce(p.op, x[0], D(ax), keep);
      EXPECT_EQ(k.GetDType(y), p.dt);
      return y;
    };
    RunCase(c, p.layout, p.type, ReduceShapes(),
            SeedOf(std::string(ReduceOpName(p.op)) + DTypeName(p.dt) + AxesName(p.axes)));
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, ReduceTest, ::testing::ValuesIn(ReduceParams()),
                         [](const ::testing::TestParamInfo<ReduceParam>& i) {
                           return Sanitize(std::string(ReduceOpName(i.param.op)) + "_" + DTypeName(i.param.dt) + "_" +
                                           AxesName(i.param.axes) + "_" + LayoutName(i.param.layout) + "_" +
                                           TypeName(i.param.type));
                         });

// Negative and unsorted axes are normalised by the builder.
TEST(ReduceExtra, NegativeAndUnsortedAxes) {
  Rng rng(9);
  for (Shape axes : {Shape{-1}, Shape{2, 0}, Shape{-3, -1}}) {
    SCOPED_TRACE(ShapeString(axes));
    Kernel k;
    NDObject* x = k.Load(nullptr, {3, 5, 7}, DType::kFloat32);
    k.Store(nullptr, k.Reduce(ReduceOp::kSum, x, D(axes), false));
    EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kFloat32, {3, 5, 7}, Uniform(0, 1), rng)}));
  }
}

// Reductions fused with element-wise prologue and epilogue (softmax, mean,
// variance) and a reduction over a computed broadcast.
TEST(ReduceExtra, FusedPrologueEpilogue) {
  Rng rng(10);
  for (KernelType t : {KernelType::kStatic, KernelType::kDynamic}) {
    for (Shape s : {Shape{3, 7}, Shape{5, 1025}, Shape{2, 4097}, Shape{1, 1}, Shape{1023, 3}}) {
      SCOPED_TRACE(ShapeString(s));
      Kernel k(t);
      Shape d = t == KernelType::kStatic ? s : Shape{-1, -1};
      NDObject* x = k.Load(nullptr, D(d), DType::kFloat32);
      NDObject* mx = k.Reduce(ReduceOp::kMax, x, {1}, true);
      NDObject* e = k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, x, mx));
      NDObject* sum = k.Reduce(ReduceOp::kSum, e, {1}, true);
      k.Store(nullptr, k.Binary(BinaryOp::kDiv, e, sum));
      NDObject* mean = k.Binary(BinaryOp::kDiv, k.Reduce(ReduceOp::kSum, x, {1}, true), static_cast<double>(s[1]));
      NDObject* dev = k.Binary(BinaryOp::kSub, x, mean);
      k.Store(nullptr, k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, dev, dev), {1}, false));
      k.Store(nullptr, k.Reduce(ReduceOp::kMax, x, {0}, false));  // column reduction
      EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kFloat32, s, Uniform(-2, 2), rng)}));
    }
  }
}

// An empty axis list reduces nothing (numpy: sum(x, axis=())).
TEST(ReduceExtra, EmptyAxesIsIdentity) {
  Rng rng(11);
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kProd}) {
    SCOPED_TRACE(ReduceOpName(op));
    Kernel k;
    NDObject* x = k.Load(nullptr, {3, 5}, DType::kFloat32);
    k.Store(nullptr, k.Reduce(op, x, D(Shape{}), false));
    EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kFloat32, {3, 5}, Uniform(-1, 1), rng)}));
  }
}

// A full reduction of a row reduction, broadcast back against the input
// (regression: codegen "node shape [7, 2] does not fit domain [7]").
TEST(ReduceExtra, ReductionOfReductionBroadcastBack) {
  Rng rng(12);
  for (KernelType t : {KernelType::kStatic, KernelType::kDynamic}) {
    for (bool keep : {true, false}) {
      SCOPED_TRACE(keep ? "keepdims" : "no keepdims");
      Kernel k(t);
      NDObject* x = k.Load(nullptr, D(t == KernelType::kStatic ? Shape{7, 2} : Shape{-1, -1}), DType::kFloat32);
      NDObject* rows = k.Reduce(ReduceOp::kSum, x, {1}, false);     // [7]
      NDObject* e = k.Unary(UnaryOp::kExp, x);                      // [7, 2]
      NDObject* total = k.Reduce(ReduceOp::kSum, rows, {0}, keep);  // [1] or []
      k.Store(nullptr, k.Binary(BinaryOp::kAdd, total, e));
      EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kFloat32, {7, 2}, Uniform(-1, 1), rng)}));
    }
  }
}

// Softmax-like use of a full reduction longer than one chunk (4096): the
// chunked maximum is broadcast back and reduced again (regression: verifier
// "view outside tensor" on the generated program).
TEST(ReduceExtra, ChunkedFullReductionBroadcastAndReducedAgain) {
  Rng rng(13);
  for (int64_t n : {4096, 4097, 9000, 70000}) {
    for (KernelType t : {KernelType::kStatic, KernelType::kDynamic}) {
      SCOPED_TRACE("n " + std::to_string(n));
      Kernel k(t);
      NDObject* x = k.Load(nullptr, D(t == KernelType::kStatic ? Shape{n} : Shape{-1}), DType::kFloat32);
      NDObject* m = k.Reduce(ReduceOp::kMax, x, {0}, true);
      NDObject* e = k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, x, m));
      NDObject* s = k.Reduce(ReduceOp::kSum, e, {0}, true);
      k.Store(nullptr, k.Binary(BinaryOp::kDiv, e, s));
      k.Store(nullptr, k.ElemAny(k.Binary(BinaryOp::kLess, x, m)));
      EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kFloat32, {n}, Uniform(-3, 3), rng)}));
    }
  }
}

// A layernorm over rows longer than one tile runs in chunked stages. Its row
// scalars (mean, 1 / sqrt(var + eps)) are computed once per row in a small
// stage, not once per element in the long ones: RSQRT appears only in a
// stage over [rows] and the results still equal the reference.
TEST(ReduceExtra, LongRowScalarsComputedOncePerRow) {
  Rng rng(14);
  const int64_t R = 3, C = 40000;
  Kernel k(KernelType::kDynamic);
  NDObject* x = k.Load(nullptr, {-1, -1}, DType::kFloat32);
  NDObject* mean = k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, x, {1}, true), 1.0 / C);
  NDObject* d = k.Binary(BinaryOp::kSub, x, mean);
  NDObject* var =
      k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, d, d), {1}, true), 1.0 / C);
  k.Store(nullptr, k.Binary(BinaryOp::kMul, d, k.Unary(UnaryOp::kRsqrt, k.Binary(BinaryOp::kAdd, var, 1e-5))));
  EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kFloat32, {R, C}, Uniform(-2, 2), rng)}));
  const std::string das = k.Das();
  const size_t at = das.find("RSQRT");
  ASSERT_NE(at, std::string::npos) << das;
  EXPECT_EQ(das.find("RSQRT", at + 1), std::string::npos) << das;
  const size_t header = das.rfind("stage ", at);
  ASSERT_NE(header, std::string::npos) << das;
  const std::string line = das.substr(header, das.find('\n', header) - header);
  EXPECT_NE(line.find("full=[3]"), std::string::npos) << line << "\n" << das;
}

// Long-row programs run as row groups (all stages for a row while it is in
// cache): softmax and an affine layernorm over rows longer than a tile,
// 2-D and 3-D, rows that are and are not a multiple of the tile, equal the
// reference, and every stage of the program joins the group. (Same bits as
// stage by stage: DeterminismTest's long_* cases, whose thread counts run
// them in both orders.)
TEST(RowGroups, LongRowSoftmaxAndLayerNorm) {
  Rng rng(16);
  for (const Shape& s : {Shape{3, 40000}, Shape{4, 33001}, Shape{2, 3, 65536}, Shape{64, 20000}}) {
    SCOPED_TRACE(ShapeString(s));
    const int64_t K = s.back(), R = ir::NumElements(s, "test") / K;
    Kernel k(KernelType::kDynamic);
    NDObject* x = k.Load(nullptr, D(Shape(s.size(), -1)), DType::kFloat32);
    NDObject* g = k.Load(nullptr, {-1}, DType::kFloat32);
    NDObject* b = k.Load(nullptr, {-1}, DType::kFloat32);
    const int64_t ax = static_cast<int64_t>(s.size()) - 1;
    NDObject* m = k.Reduce(ReduceOp::kMax, x, {ax}, true);
    NDObject* e = k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, x, m));
    k.Store(nullptr, k.Binary(BinaryOp::kDiv, e, k.Reduce(ReduceOp::kSum, e, {ax}, true)));
    NDObject* mean = k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, x, {ax}, true), 1.0 / double(K));
    NDObject* d = k.Binary(BinaryOp::kSub, x, mean);
    NDObject* var =
        k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, d, d), {ax}, true), 1.0 / double(K));
    NDObject* y = k.Binary(BinaryOp::kMul, d, k.Unary(UnaryOp::kRsqrt, k.Binary(BinaryOp::kAdd, var, 1e-5)));
    k.Store(nullptr, k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, y, g), b));
    EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kFloat32, s, Uniform(-3, 3), rng),
                                MakeTensor(DType::kFloat32, {K}, Uniform(0.5, 1.5), rng),
                                MakeTensor(DType::kFloat32, {K}, Uniform(-1, 1), rng)}));
    const std::string das = k.Das();
    const std::string first = "stage 0 row rows=" + std::to_string(R) + " ";
    EXPECT_EQ(das.find(first), das.find("stage 0 ")) << das;
    for (size_t at = das.find("\nstage ", 1); at != std::string::npos; at = das.find("\nstage ", at + 1)) {
      const std::string line = das.substr(at + 1, das.find('\n', at + 1) - at - 1);
      if (line.rfind("stage 0 ", 0) == 0) continue;
      EXPECT_NE(line.find(" rows+" + std::to_string(R) + " "), std::string::npos) << line << "\n" << das;
    }
  }
}

// A later stage that reads another row's value (the row maxima of x
// reshaped into one row and added to every row of z) is not row-local: it
// is left out of the row group (which ends before it), and the results
// equal the reference.
TEST(RowGroups, CrossRowReadIsNotGrouped) {
  Rng rng(17);
  const int64_t R = 6, K = 40000;
  Kernel k(KernelType::kDynamic);
  NDObject* x = k.Load(nullptr, {-1, -1}, DType::kFloat32);
  NDObject* z = k.Load(nullptr, {-1, -1}, DType::kFloat32);
  NDObject* m = k.Reduce(ReduceOp::kMax, x, {1}, true);  // [R, 1]
  k.Store(nullptr, k.Binary(BinaryOp::kSub, x, m));
  k.Store(nullptr, k.Binary(BinaryOp::kAdd, z, k.Reshape(m, {1, -1})));  // [R, R] + [1, R]
  EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kFloat32, {R, K}, Uniform(-3, 3), rng),
                              MakeTensor(DType::kFloat32, {R, R}, Uniform(-3, 3), rng)}));
  const std::string das = k.Das();
  EXPECT_NE(das.find("stage 0 row rows=6 "), std::string::npos) << das;
  const size_t at = das.find("full=[6,6]");
  ASSERT_NE(at, std::string::npos) << das;
  const std::string line = das.substr(das.rfind("stage ", at), at - das.rfind("stage ", at));
  EXPECT_EQ(line.find("rows"), std::string::npos) << line << "\n" << das;
}

// StageBoundary: the marked value is computed once, in a stage of its own,
// and read from the workspace by every later use; results equal the
// reference for f32 and f16 (f16 values pass through the workspace in f32).
TEST(StageBoundary, ComputedOnceAndReadByLaterStages) {
  Rng rng(15);
  for (DType dt : {DType::kFloat32, DType::kFloat16})
    for (KernelType t : {KernelType::kStatic, KernelType::kDynamic}) {
      SCOPED_TRACE(std::string(DTypeName(dt)) + (t == KernelType::kStatic ? " static" : " dynamic"));
      Kernel k(t);
      NDObject* x = k.Load(nullptr, D(t == KernelType::kStatic ? Shape{37, 300} : Shape{-1, -1}), dt);
      NDObject* e = k.StageBoundary(k.Unary(UnaryOp::kExp, x));
      k.Store(nullptr, k.Binary(BinaryOp::kMul, e, 2.0));
      k.Store(nullptr, k.Reduce(ReduceOp::kSum, e, {1}, true));
      EXPECT_TRUE(CheckKernel(k, {MakeTensor(dt, {37, 300}, Uniform(-2, 2), rng)}));
      const std::string das = k.Das();
      const size_t at = das.find("EXP");
      ASSERT_NE(at, std::string::npos) << das;
      EXPECT_EQ(das.find("EXP", at + 1), std::string::npos) << "exp computed twice\n" << das;
      EXPECT_NE(das.find("stage 1"), std::string::npos) << das;
      EXPECT_NE(k.Dump().find("stage_boundary"), std::string::npos) << k.Dump();
    }
}

// A caller-owned workspace: WorkspaceBytes says how much, a launch with it
// equals one without; too small, null or misaligned is an error that names
// the sizes and writes no output.
TEST(StageBoundary, CallerWorkspace) {
  const int64_t R = 2, C = 70000;  // rows longer than a tile: staged
  Kernel k(KernelType::kDynamic);
  NDObject* x = k.Load(nullptr, {-1, -1}, DType::kFloat32);
  NDObject* m = k.Reduce(ReduceOp::kMax, x, {1}, true);
  NDObject* e = k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, x, m));
  k.Store(nullptr, k.Binary(BinaryOp::kDiv, e, k.Reduce(ReduceOp::kSum, e, {1}, true)));
  std::vector<float> in(R * C), a(R * C, -1.0f), b(R * C, -1.0f);
  for (int64_t i = 0; i < R * C; ++i) in[i] = static_cast<float>((i * 37) % 101) * 0.05f;
  const Shape shape{R, C};
  const size_t need = k.WorkspaceBytes(std::vector<Shape>{shape});
  EXPECT_GT(need, 0u);
  std::vector<float> ws(need / 4 + 1);
  k.Launch({{in.data(), shape, in.size() * 4}}, {{a.data(), {}, a.size() * 4}});
  const std::vector<TensorArg> ins{{in.data(), shape, in.size() * 4}};
  const std::vector<TensorArg> outs{{b.data(), {}, b.size() * 4}};
  k.Launch(ins, outs, TensorArg{ws.data(), {}, need});
  EXPECT_EQ(a, b);
  std::vector<float> c(R * C, -1.0f);
  const std::vector<TensorArg> outs_c{{c.data(), {}, c.size() * 4}};
  auto fails = [&](const TensorArg& w, const std::string& what) {
    try {
      k.Launch(ins, outs_c, w);
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& err) {
      EXPECT_NE(std::string(err.what()).find(what), std::string::npos) << err.what();
    }
  };
  fails(TensorArg{ws.data(), {}, need - 4},
        "workspace has " + std::to_string(need - 4) + " bytes, needs " + std::to_string(need));
  fails(TensorArg{nullptr, {}, need}, "workspace buffer is null");
  fails(TensorArg{reinterpret_cast<uint8_t*>(ws.data()) + 1, {}, need}, "not 4-byte aligned");
  // A workspace inside the output or the input it would overwrite.
  std::vector<float> big(R * C + need / 4 + 1, -1.0f);
  try {
    k.Launch(ins, std::vector<TensorArg>{{big.data(), {}, c.size() * 4}}, TensorArg{big.data() + 16, {}, need});
    ADD_FAILURE() << "no error for a workspace inside the output";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("workspace overlaps output 0"), std::string::npos) << err.what();
  }
  EXPECT_TRUE(std::all_of(big.begin(), big.end(), [](float v) { return v == -1.0f; }));
  fails(TensorArg{in.data() + 8, {}, need}, "workspace overlaps input 0");
  EXPECT_TRUE(std::all_of(c.begin(), c.end(), [](float v) { return v == -1.0f; }));
}

// ===========================================================================
// ElemAny
// ===========================================================================

struct AnyParam {
  DType dt;
  int density;  // 0: all zero, 1: one non-zero on average, 2: half non-zero
  Layout layout;
  KernelType type;
};

std::vector<AnyParam> AnyParams() {
  std::vector<AnyParam> ps;
  for (DType dt : kAllDTypes)
    for (int d : {0, 1, 2})
      for (Layout l : kAllLayouts)
        for (KernelType t : {KernelType::kStatic, KernelType::kDynamic}) ps.push_back({dt, d, l, t});
  return ps;
}

class ElemAnyTest : public ::testing::TestWithParam<AnyParam> {};

TEST_P(ElemAnyTest, MatchesReference) {
  const AnyParam& p = GetParam();
  const bool fl = IsFloat(p.dt);
  Gen zero = fl ? Choice({0.0, -0.0}) : Choice({0});
  Gen nonzero = fl ? Choice({1.0, -2.5, kNaN, kInf, 1e-3}) : p.dt == DType::kBool ? Choice({1}) : Choice({1, -1, 100});
  OpCase c;
  OperandSpec spec;
  spec.dtype = p.dt;
  spec.shaped = [&](const Shape& s) -> Gen {
    if (p.density == 0) return zero;
    if (p.density == 2) return Mix(zero, 0.5, nonzero);
    int64_t n = std::max<int64_t>(1, ir::NumElements(s, "any"));
    return Mix(zero, 1.0 / static_cast<double>(n), nonzero);
  };
  c.operands = {spec};
  c.build = [&](Kernel& k, const std::vector<NDObject*>& x) {
    NDObject* y = k.ElemAny(x[0]);
    EXPECT_EQ(k.GetDType(y), DType::kBool);
    EXPECT_TRUE(k.GetShape(y).empty());
    return y;
  };
  RunCase(c, p.layout, p.type, ElementwiseShapes(),
          SeedOf(std::string("any") + DTypeName(p.dt) + std::to_string(p.density)));
}

INSTANTIATE_TEST_SUITE_P(Ops, ElemAnyTest, ::testing::ValuesIn(AnyParams()),
                         [](const ::testing::TestParamInfo<AnyParam>& i) {
                           return Sanitize(std::string(DTypeName(i.param.dt)) + "_d" + std::to_string(i.param.density) +
                                           "_" + LayoutName(i.param.layout) + "_" + TypeName(i.param.type));
                         });

// A single non-zero at each interesting position of a tile-sized input.
TEST(ElemAnyExtra, SingleNonZeroPositions) {
  for (int64_t n : {1, 1023, 1024, 1025, 4097, 70000}) {
    Kernel k(KernelType::kDynamic);
    NDObject* x = k.Load(nullptr, {-1}, DType::kFloat32);
    k.Store(nullptr, k.ElemAny(x));
    for (int64_t pos : {int64_t{0}, n / 2, n - 1, int64_t{1023}, int64_t{1024}, int64_t{4096}}) {
      if (pos >= n) continue;
      SCOPED_TRACE("n " + std::to_string(n) + " pos " + std::to_string(pos));
      ref::Tensor t{DType::kFloat32, {n}, std::vector<double>(n, 0.0)};
      t.data[pos] = 1;
      auto got = RunKernel(k, {t});
      ASSERT_EQ(got.outputs.size(), 1u);
      EXPECT_EQ(got.outputs[0].data.at(0), 1.0);
    }
    ref::Tensor z{DType::kFloat32, {n}, std::vector<double>(n, -0.0)};
    auto got = RunKernel(k, {z});
    ASSERT_EQ(got.outputs.size(), 1u);
    EXPECT_EQ(got.outputs[0].data.at(0), 0.0);
  }
}

// ===========================================================================
// Slice loads with explicit parameters
// ===========================================================================

struct SliceCase {
  Shape full, start, end, step;
};

class SliceTest : public ::testing::TestWithParam<MoveParam> {};

TEST_P(SliceTest, StridedSliceLoad) {
  const MoveParam& p = GetParam();
  const SliceCase cases[] = {
      {{70000}, {0}, {70000}, {7}},
      {{70000}, {3}, {69990}, {1}},
      {{1025, 33}, {3, 5}, {1020, 30}, {4, 3}},
      {{5, 1, 4097}, {1, 0, 1}, {5, 1, 4097}, {2, 1, 2}},
      {{9}, {2}, {3}, {10}},             // step larger than the dim
      {{9, 4}, {4, 0}, {4, 4}, {1, 1}},  // empty
      {{3, 3, 3, 3, 3, 3, 3, 3}, {0, 1, 2, 0, 1, 2, 0, 1}, {3, 3, 3, 3, 3, 3, 3, 3}, {2, 1, 1, 3, 2, 1, 1, 1}},
      {{4100}, {1}, {4100}, {1}},
  };
  Rng rng(21);
  for (const SliceCase& c : cases) {
    SCOPED_TRACE("slice of " + ShapeString(c.full) + " start " + ShapeString(c.start) + " end " + ShapeString(c.end) +
                 " step " + ShapeString(c.step));
    try {
      Kernel k(p.type);
      Shape d = p.type == KernelType::kStatic ? c.full : Shape(c.full.size(), -1);
      NDObject* x = k.StridedSliceLoad(nullptr, D(d), p.dt, D(c.start), D(c.end), D(c.step));
      k.Store(nullptr, x);
      EXPECT_TRUE(CheckKernel(k, {MakeTensor(p.dt, c.full, DefaultGen(p.dt), rng)}));
    } catch (const std::exception& e) {
      ADD_FAILURE() << "exception: " << e.what();
    }
  }
}

TEST_P(SliceTest, SliceLoad) {
  const MoveParam& p = GetParam();
  const SliceCase cases[] = {
      // start, size (end unused)
      {{70000}, {1}, {}, {69998}},
      {{1025, 33}, {3, 5}, {}, {1000, 20}},
      {{4097, 2}, {0, 1}, {}, {4097, 1}},
      {{9, 4}, {4, 0}, {}, {0, 4}},
      {{2, 3, 2, 3, 2, 3, 2, 3}, {1, 1, 0, 1, 0, 2, 1, 0}, {}, {1, 2, 2, 1, 2, 1, 1, 3}},
      {{}, {}, {}, {}},
  };
  Rng rng(22);
  for (const SliceCase& c : cases) {
    SCOPED_TRACE("slice of " + ShapeString(c.full) + " start " + ShapeString(c.start) + " size " + ShapeString(c.step));
    try {
      Kernel k(p.type);
      Shape d = p.type == KernelType::kStatic ? c.full : Shape(c.full.size(), -1);
      NDObject* x = k.SliceLoad(nullptr, D(d), p.dt, D(c.start), D(c.step));
      // Also used in arithmetic with a second, plain input of the slice's shape.
      NDObject* y = k.Load(nullptr, D(p.type == KernelType::kStatic ? c.step : Shape(c.step.size(), -1)), p.dt);
      k.Store(nullptr, x);
      k.Store(nullptr, k.Binary(BinaryOp::kMaximum, x, y));
      EXPECT_TRUE(CheckKernel(
          k, {MakeTensor(p.dt, c.full, DefaultGen(p.dt), rng), MakeTensor(p.dt, c.step, DefaultGen(p.dt), rng)}));
    } catch (const std::exception& e) {
      ADD_FAILURE() << "exception: " << e.what();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, SliceTest, ::testing::ValuesIn(MoveParams()), MoveParamName);

// ===========================================================================
// PadStore
// ===========================================================================

class PadStoreTest : public ::testing::TestWithParam<MoveParam> {};

TEST_P(PadStoreTest, MatchesReference) {
  const MoveParam& p = GetParam();
  struct Case {
    Shape value, padded, before;
    double pad;
  };
  const Case cases[] = {
      {{3}, {7}, {2}, 1.5},
      {{1023}, {1025}, {1}, -2},
      {{2, 3}, {4, 5}, {1, 2}, 0},
      {{2, 3}, {4, 5}, {}, 7},
      {{0, 3}, {2, 3}, {1, 0}, 3},
      {{}, {}, {}, 0},
      {{4097}, {8200}, {4000}, 0.5},
      {{1, 2, 1, 2, 1, 2, 1, 2}, {2, 3, 2, 3, 2, 3, 2, 3}, {1, 1, 0, 1, 1, 0, 1, 0}, -1},
      {{5, 1025}, {5, 1025}, {0, 0}, 9},
      {{3, 4}, {3, 70000}, {0, 60000}, 300},  // pad 300 wraps in i8
      {{2, 2}, {3, 3}, {1, 1}, 0.1},
  };
  Rng rng(31);
  for (const Case& c : cases) {
    SCOPED_TRACE("value " + ShapeString(c.value) + " into " + ShapeString(c.padded) + " at " + ShapeString(c.before) +
                 " pad " + FormatValue(c.pad));
    try {
      Kernel k(p.type);
      Shape d = p.type == KernelType::kStatic ? c.value : Shape(c.value.size(), -1);
      NDObject* x = k.Load(nullptr, D(d), p.dt);
      NDObject* v = p.dt == DType::kBool ? k.Unary(UnaryOp::kLogicalNot, x) : k.Binary(BinaryOp::kMaximum, x, x);
      k.PadStore(nullptr, v, D(c.padded), D(c.before), c.pad);
      k.Store(nullptr, x);  // a second, plain output
      EXPECT_TRUE(CheckKernel(k, {MakeTensor(p.dt, c.value, DefaultGen(p.dt), rng)}));
    } catch (const std::exception& e) {
      ADD_FAILURE() << "exception: " << e.what();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ops, PadStoreTest, ::testing::ValuesIn(MoveParams()), MoveParamName);

// ===========================================================================
// Program cache and launch forms
// ===========================================================================

TEST(Cache, CodegenPerDistinctShapeSet) {
  Kernel k(KernelType::kDynamic);
  NDObject* x = k.Load(nullptr, {-1, -1}, DType::kFloat32);
  NDObject* y = k.Load(nullptr, {-1, -1}, DType::kFloat32);
  k.Store(nullptr, k.Binary(BinaryOp::kAdd, k.Unary(UnaryOp::kTanh, x), y));
  Rng rng(1);
  auto launch = [&](Shape sx, Shape sy) {
    auto a = MakeTensor(DType::kFloat32, sx, Uniform(-1, 1), rng);
    auto b = MakeTensor(DType::kFloat32, sy, Uniform(-1, 1), rng);
    auto want = ref::Evaluate(GetGraph(k), std::vector<ref::Tensor>{a, b});
    auto ba = ref::ToBytes(a), bb = ref::ToBytes(b);
    std::vector<uint8_t> out(ByteSize(DType::kFloat32, want[0].shape) + 1, 0xCD);
    k.Launch({{ba.data(), sx, ba.size()}, {bb.data(), sy, bb.size()}}, {{out.data(), {}, out.size() - 1}});
    EXPECT_EQ(out.back(), 0xCD);
    EXPECT_TRUE(AllClose(want[0], ref::FromBytes(out.data(), DType::kFloat32, want[0].shape), DType::kFloat32));
  };
  launch({3, 5}, {3, 5});
  launch({3, 5}, {1, 5});  // a different shape set (broadcast b)
  launch({3, 5}, {3, 5});
  launch({7, 1025}, {7, 1025});
  launch({3, 5}, {1, 5});
  EXPECT_EQ(k.stats().launches, 5u);
  EXPECT_EQ(k.stats().codegens, 3u);
  EXPECT_EQ(k.stats().cache_hits, 2u);

  // A capacity of 1 evicts: alternating shapes regenerate every time.
  Kernel k2(KernelType::kDynamic);
  NDObject* z = k2.Load(nullptr, {-1}, DType::kFloat32);
  k2.Store(nullptr, k2.Unary(UnaryOp::kExp, z));
  k2.SetCacheCapacity(1);
  for (int64_t n : {4, 5, 4, 5}) {
    EXPECT_TRUE(CheckKernel(k2, {MakeTensor(DType::kFloat32, {n}, Uniform(-1, 1), rng)}));
  }
  EXPECT_EQ(k2.stats().codegens, 4u);
}

// A dynamic kernel built further after a launch generates again: its
// cached programs are of the old graph (a new output would not be written).
TEST(Cache, DynamicKernelGrownAfterLaunch) {
  Kernel k(KernelType::kDynamic);
  NDObject* x = k.Load(nullptr, {-1}, DType::kFloat32);
  k.Store(nullptr, k.Binary(BinaryOp::kAdd, x, 1.0));
  std::vector<float> in(8, 1.0f), y(8, -7.0f), z(8, -7.0f);
  k.Launch({{in.data(), {8}, 32}}, {{y.data(), {}, 32}});
  EXPECT_EQ(y[0], 2.0f);
  k.Store(nullptr, k.Binary(BinaryOp::kMul, x, 3.0));
  k.Launch({{in.data(), {8}, 32}}, {{y.data(), {}, 32}, {z.data(), {}, 32}});
  EXPECT_EQ(y[7], 2.0f);
  EXPECT_EQ(z[7], 3.0f);
  EXPECT_EQ(k.stats().codegens, 2u);
}

TEST(Cache, StaticKernelGeneratesOnce) {
  Kernel k;
  NDObject* x = k.Load(nullptr, {4, 1025}, DType::kFloat32);
  k.Store(nullptr, k.Unary(UnaryOp::kSigmoid, x));
  k.CodeGen();
  Rng rng(2);
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kFloat32, {4, 1025}, Uniform(-4, 4), rng)}));
  EXPECT_EQ(k.stats().codegens, 1u);
  EXPECT_EQ(k.stats().launches, 3u);
}

// Addresses given at build time (Launch()) and relocation (Launch(void**)).
TEST(LaunchForms, BoundAddressesAndRelocation) {
  Rng rng(3);
  auto a = MakeTensor(DType::kFloat32, {5, 7}, Uniform(-1, 1), rng);
  auto b = MakeTensor(DType::kFloat32, {7}, Uniform(-1, 1), rng);
  auto ba = ref::ToBytes(a), bb = ref::ToBytes(b);
  std::vector<uint8_t> out(5 * 7 * 4, 0xCD);
  Kernel k;
  NDObject* x = k.Load(ba.data(), {5, 7}, DType::kFloat32);
  NDObject* y = k.Load(bb.data(), {7}, DType::kFloat32);
  k.Store(out.data(), k.Binary(BinaryOp::kMul, x, y));
  k.CodeGen();
  k.Launch();
  auto want = ref::Evaluate(GetGraph(k), std::vector<ref::Tensor>{a, b});
  EXPECT_TRUE(AllClose(want[0], ref::FromBytes(out.data(), DType::kFloat32, {5, 7}), DType::kFloat32));

  auto a2 = MakeTensor(DType::kFloat32, {5, 7}, Uniform(-1, 1), rng);
  auto ba2 = ref::ToBytes(a2);
  std::vector<uint8_t> out2(5 * 7 * 4, 0xCD);
  void* ins[] = {ba2.data(), bb.data()};
  void* outs[] = {out2.data()};
  k.Launch(std::span<void* const>(ins), std::span<void* const>(outs));
  auto want2 = ref::Evaluate(GetGraph(k), std::vector<ref::Tensor>{a2, b});
  EXPECT_TRUE(AllClose(want2[0], ref::FromBytes(out2.data(), DType::kFloat32, {5, 7}), DType::kFloat32));
}

// The same input feeding several outputs, and a value stored twice.
TEST(MultiOutput, SharedValues) {
  Rng rng(4);
  for (KernelType t : {KernelType::kStatic, KernelType::kDynamic}) {
    Kernel k(t);
    Shape s = {7, 1025};
    NDObject* x = k.Load(nullptr, D(t == KernelType::kStatic ? s : Shape{-1, -1}), DType::kFloat16);
    NDObject* e = k.Unary(UnaryOp::kExp, x);
    k.Store(nullptr, e);
    k.Store(nullptr, k.Cast(e, DType::kFloat32));
    k.Store(nullptr, k.Reduce(ReduceOp::kMax, e, {1}, false));
    k.Store(nullptr, k.Cast(k.Binary(BinaryOp::kGreater, e, 1.0), DType::kInt8));
    EXPECT_TRUE(CheckKernel(k, {MakeTensor(DType::kFloat16, s, Uniform(-2, 2), rng)}));
  }
}

}  // namespace
}  // namespace dvm::test
