// Micro-kernel tests: every handler family of src/vm/cpu/kernels*.cc through
// single-op kernels, against a scalar oracle written here, at lengths below,
// equal to, above and a multiple of the vector length (up to 16 f32 lanes)
// and of the VM tiles (ELEM 1024, ROW 2048, full-reduction chunks 4096).
// Then the accuracy of the transcendental functions (max ulp error over a
// grid, erf's max absolute error), f16/bf16 conversions of every bit
// pattern, and round-to-nearest-even of f32 -> bf16/f16 casts on ties.
//
// Measured values are printed as "[ measured ]" lines and recorded as test
// properties (visible in --gtest_output=xml).
#include "vm/cpu/kernels.h"

#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "dvm/dvm.h"
#include "ir/dtype.h"
#include "vm/cpu/vm.h"

namespace dvm {
namespace {

using Bytes = std::vector<uint8_t>;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Lengths around the vector length (4, 8 or 16 f32 lanes) and the tiles.
const std::vector<int64_t> kLengths = {1,  3,  4,  5,  7,    8,    9,    15,   16,   17,   31,  32,
                                       33, 63, 64, 65, 1023, 1024, 1025, 2048, 2049, 4096, 5000};

// ---- storage encoding -------------------------------------------------------------

double Decode(DType dt, const uint8_t* p) {
  switch (dt) {
    case DType::kFloat32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::kFloat16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return F16ToF32(h);
    }
    case DType::kBFloat16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return BF16ToF32(h);
    }
    case DType::kInt32: {
      int32_t i;
      std::memcpy(&i, p, 4);
      return i;
    }
    case DType::kInt8:
      return static_cast<int8_t>(*p);
    case DType::kBool:
      return *p;
  }
  return 0;
}

// Rounds an f32 result to the storage dtype (f16/bf16 round to nearest even,
// ints wrap, bool is != 0).
double ToStorage(DType dt, double v) {
  switch (dt) {
    case DType::kFloat32:
      return static_cast<float>(v);
    case DType::kFloat16:
      return F16ToF32(F32ToF16(static_cast<float>(v)));
    case DType::kBFloat16:
      return BF16ToF32(F32ToBF16(static_cast<float>(v)));
    case DType::kInt32:
      return static_cast<int32_t>(static_cast<int64_t>(v));
    case DType::kInt8:
      return WrapI8(static_cast<int32_t>(static_cast<int64_t>(v)));
    case DType::kBool:
      return v != 0;
  }
  return v;
}

void Encode(DType dt, uint8_t* p, double v) {
  switch (dt) {
    case DType::kFloat32: {
      float f = static_cast<float>(v);
      std::memcpy(p, &f, 4);
      break;
    }
    case DType::kFloat16: {
      uint16_t h = F32ToF16(static_cast<float>(v));
      std::memcpy(p, &h, 2);
      break;
    }
    case DType::kBFloat16: {
      uint16_t h = F32ToBF16(static_cast<float>(v));
      std::memcpy(p, &h, 2);
      break;
    }
    case DType::kInt32: {
      int32_t i = static_cast<int32_t>(static_cast<int64_t>(v));
      std::memcpy(p, &i, 4);
      break;
    }
    case DType::kInt8:
      *p = static_cast<uint8_t>(static_cast<int64_t>(v) & 0xff);
      break;
    case DType::kBool:
      *p = v != 0;
      break;
  }
}

// ---- running single-op kernels ------------------------------------------------------

struct Tensor {
  DType dt = DType::kFloat32;
  Shape shape;
  Bytes bytes;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  double at(int64_t i) const { return Decode(dt, bytes.data() + i * DTypeSize(dt)); }
  std::vector<double> values() const {
    std::vector<double> v(numel());
    for (int64_t i = 0; i < numel(); ++i) v[i] = at(i);
    return v;
  }
};

Tensor MakeTensor(DType dt, Shape shape, const std::vector<double>& v) {
  Tensor t{dt, std::move(shape), {}};
  EXPECT_EQ(static_cast<int64_t>(v.size()), t.numel());
  t.bytes.resize(v.size() * DTypeSize(dt));
  for (size_t i = 0; i < v.size(); ++i) Encode(dt, t.bytes.data() + i * DTypeSize(dt), v[i]);
  return t;
}

using Build = std::function<std::vector<NDObject*>(Kernel&, const std::vector<NDObject*>&)>;

// Builds a static kernel with one Load per input, stores what `build`
// returns, launches it and returns the outputs.
std::vector<Tensor> Run(const std::vector<Tensor>& ins, const Build& build) {
  Kernel k;
  std::vector<NDObject*> xs;
  for (const Tensor& t : ins) xs.push_back(k.Load(nullptr, Dims(t.shape.data(), t.shape.size()), t.dt));
  std::vector<NDObject*> outs = build(k, xs);
  std::vector<DType> out_dt;
  for (NDObject* o : outs) {
    out_dt.push_back(k.GetDType(o));
    k.Store(nullptr, o);
  }
  k.CodeGen();
  std::vector<Shape> shapes = k.OutputShapes();
  std::vector<Tensor> res(outs.size());
  std::vector<void*> in_ptrs, out_ptrs;
  for (const Tensor& t : ins) in_ptrs.push_back(const_cast<uint8_t*>(t.bytes.data()));
  for (size_t i = 0; i < outs.size(); ++i) {
    res[i].dt = out_dt[i];
    res[i].shape = shapes[i];
    res[i].bytes.assign(res[i].numel() * DTypeSize(out_dt[i]) + 1, 0xCD);  // +1: non-null for 0 elements
    out_ptrs.push_back(res[i].bytes.data());
  }
  k.Launch(std::span<void* const>(in_ptrs), std::span<void* const>(out_ptrs));
  for (Tensor& t : res) t.bytes.pop_back();
  return res;
}

Tensor RunOne(const std::vector<Tensor>& ins,
              const std::function<NDObject*(Kernel&, const std::vector<NDObject*>&)>& f) {
  return Run(ins, [&](Kernel& k, const std::vector<NDObject*>& xs) { return std::vector<NDObject*>{f(k, xs)}; })[0];
}

// ---- comparison ---------------------------------------------------------------------

// Distance in units in the last place of dtype `dt` between two values of it.
double UlpDistance(DType dt, double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b) ? 0 : kInf;
  if (a == b) return 0;
  if (std::isinf(a) || std::isinf(b)) return kInf;
  auto ordered = [&](double v) -> int64_t {
    int64_t bits;
    if (dt == DType::kFloat32) {
      uint32_t u = F32Bits(static_cast<float>(v));
      bits = u & 0x7fffffff;
      return (u >> 31) ? -bits : bits;
    }
    uint16_t h = dt == DType::kFloat16 ? F32ToF16(static_cast<float>(v)) : F32ToBF16(static_cast<float>(v));
    bits = h & 0x7fff;
    return (h >> 15) ? -bits : bits;
  };
  return static_cast<double>(std::llabs(ordered(a) - ordered(b)));
}

bool SameValue(double want, double got) {
  if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
  return want == got && std::signbit(want) == std::signbit(got);
}

// Compares `got` with `want` elementwise: floats within `ulps` of the
// output dtype (0 = bit-exact up to NaN payloads, sign of zero included),
// others exactly. Reports the first few mismatches.
::testing::AssertionResult Matches(const Tensor& got, const std::vector<double>& want, double ulps,
                                   const std::vector<double>* in = nullptr) {
  if (got.numel() != static_cast<int64_t>(want.size()))
    return ::testing::AssertionFailure() << "got " << got.numel() << " values, want " << want.size();
  const bool fl = IsFloat(got.dt);
  int bad = 0;
  auto f = ::testing::AssertionFailure();
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = got.at(i), w = ToStorage(got.dt, want[i]);
    const bool ok = fl ? (ulps == 0 ? SameValue(w, g) : UlpDistance(got.dt, w, g) <= ulps) : g == w;
    if (!ok) {
      if (bad < 4) {
        f << "\n  [" << i << "]";
        if (in) f << " x=" << (*in)[i];
        f << " got " << g << " want " << w;
      }
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return f << "\n  " << bad << " of " << got.numel() << " differ (" << DTypeName(got.dt) << ", tolerance " << ulps
           << " ulp)";
}

// ---- value generators -----------------------------------------------------------------

std::vector<double> Values(DType dt, int64_t n, uint64_t seed, double lo = -4, double hi = 4) {
  std::mt19937_64 rng(seed);
  std::vector<double> v(n);
  for (auto& x : v) {
    switch (dt) {
      case DType::kInt32:
        x = static_cast<int32_t>(static_cast<uint32_t>(rng()));
        if (rng() % 4 == 0) x = static_cast<int32_t>(rng() % 64) - 32;  // small values too
        break;
      case DType::kInt8:
        x = static_cast<int8_t>(rng() & 0xff);
        break;
      case DType::kBool:
        x = rng() & 1;
        break;
      default:
        x = ToStorage(dt, std::uniform_real_distribution<double>(lo, hi)(rng));
    }
  }
  return v;
}

// Sprinkles special float values into the first lanes.
void AddSpecials(DType dt, std::vector<double>& v) {
  if (!IsFloat(dt)) return;
  const double sp[] = {0.0, -0.0, kInf, -kInf, kNaN, 0.5, -0.5, 1.5, -2.5, 1e-3};
  for (size_t i = 0; i < v.size() && i < std::size(sp); ++i) v[i * 7 % v.size()] = ToStorage(dt, sp[i]);
}

constexpr DType kFloats[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
constexpr DType kInts[] = {DType::kInt32, DType::kInt8};

// ---- unary ---------------------------------------------------------------------------

struct UnaryCase {
  UnaryOp op;
  std::function<double(float)> f;  // oracle on the f32 lanes
  double ulps;                     // tolerance in f32 ulps (f16/bf16: 1 if non-zero)
  double lo = -4, hi = 4;
  bool specials = true;  // the handler gets +-0, +-inf, NaN right
};

std::vector<UnaryCase> FloatUnaryCases() {
  return {
      {UnaryOp::kSqrt, [](float x) { return std::sqrt(x); }, 0, 0, 8},
      {UnaryOp::kRsqrt, [](float x) { return 1.0f / std::sqrt(x); }, 0, 0, 8},
      {UnaryOp::kAbs, [](float x) { return std::fabs(x); }, 0},
      {UnaryOp::kNeg, [](float x) { return -x; }, 0},
      {UnaryOp::kExp, [](float x) { return std::exp(double(x)); }, 2, -80, 80, false},
      {UnaryOp::kLog, [](float x) { return std::log(double(x)); }, 2, 1e-3, 100, false},
      {UnaryOp::kReciprocal, [](float x) { return 1.0f / x; }, 0},
      {UnaryOp::kTanh, [](float x) { return std::tanh(double(x)); }, 4, -10, 10},
      {UnaryOp::kSigmoid, [](float x) { return 1 / (1 + std::exp(-double(x))); }, 4, -20, 20, false},
      {UnaryOp::kErf, [](float x) { return std::erf(double(x)); }, 0, -6, 6, false},  // abs bound below
      {UnaryOp::kRelu, [](float x) { return x < 0 ? 0.0f : x; }, 0},
      {UnaryOp::kSin, [](float x) { return std::sin(double(x)); }, 4, -100, 100, false},
      {UnaryOp::kCos, [](float x) { return std::cos(double(x)); }, 4, -100, 100, false},
      {UnaryOp::kFloor, [](float x) { return std::floor(x); }, 0},
      {UnaryOp::kCeil, [](float x) { return std::ceil(x); }, 0},
      {UnaryOp::kRound, [](float x) { return std::nearbyint(x); }, 0},
      {UnaryOp::kIsFinite, [](float x) { return std::isfinite(x) ? 1.0 : 0.0; }, 0},
      {UnaryOp::kLogicalNot, [](float x) { return x == 0 ? 1.0 : 0.0; }, 0},
  };
}

TEST(KernelsUnary, FloatOpsAllLengths) {
  for (const UnaryCase& c : FloatUnaryCases()) {
    for (DType dt : kFloats) {
      for (int64_t n : kLengths) {
        SCOPED_TRACE(std::string(UnaryOpName(c.op)) + " " + DTypeName(dt) + " n=" + std::to_string(n));
        std::vector<double> x = Values(dt, n, 1000 + n, c.lo, c.hi);
        if (c.specials) AddSpecials(dt, x);
        Tensor out = RunOne({MakeTensor(dt, {n}, x)}, [&](Kernel& k, auto& v) { return k.Unary(c.op, v[0]); });
        std::vector<double> want(n);
        for (int64_t i = 0; i < n; ++i) want[i] = c.f(static_cast<float>(x[i]));
        if (c.op == UnaryOp::kErf) {
          for (int64_t i = 0; i < n; ++i)
            ASSERT_NEAR(out.at(i), ToStorage(out.dt, want[i]), dt == DType::kFloat32 ? 5e-7 : 1e-2);
          continue;
        }
        const double tol = dt == DType::kFloat32 ? c.ulps : (c.ulps > 0 ? 1 : 0);
        ASSERT_TRUE(Matches(out, want, tol, &x));
      }
    }
  }
}

TEST(KernelsUnary, IntegerOpsAllLengths) {
  struct C {
    UnaryOp op;
    std::function<int64_t(int64_t)> f;
  };
  const C cases[] = {
      {UnaryOp::kAbs, [](int64_t x) { return x < 0 ? -x : x; }},
      {UnaryOp::kNeg, [](int64_t x) { return -x; }},
      {UnaryOp::kRelu, [](int64_t x) { return x < 0 ? 0 : x; }},
      {UnaryOp::kFloor, [](int64_t x) { return x; }},
      {UnaryOp::kCeil, [](int64_t x) { return x; }},
      {UnaryOp::kRound, [](int64_t x) { return x; }},
      {UnaryOp::kIsFinite, [](int64_t) { return 1; }},
      {UnaryOp::kLogicalNot, [](int64_t x) { return x == 0; }},
  };
  for (const C& c : cases) {
    for (DType dt : kInts) {
      for (int64_t n : kLengths) {
        SCOPED_TRACE(std::string(UnaryOpName(c.op)) + " " + DTypeName(dt) + " n=" + std::to_string(n));
        std::vector<double> x = Values(dt, n, 2000 + n);
        x[0] = dt == DType::kInt8 ? -128 : std::numeric_limits<int32_t>::min();  // abs/neg wrap
        Tensor out = RunOne({MakeTensor(dt, {n}, x)}, [&](Kernel& k, auto& v) { return k.Unary(c.op, v[0]); });
        std::vector<double> want(n);
        for (int64_t i = 0; i < n; ++i) want[i] = static_cast<double>(c.f(static_cast<int64_t>(x[i])));
        ASSERT_TRUE(Matches(out, want, 0, &x));  // ToStorage wraps to the dtype
      }
    }
  }
}

// ---- binary --------------------------------------------------------------------------

double FloatBinary(BinaryOp op, float a, float b) {
  auto truth = [](float v) { return v != 0 || std::isnan(v); };
  switch (op) {
    case BinaryOp::kAdd:
      return a + b;
    case BinaryOp::kSub:
      return a - b;
    case BinaryOp::kMul:
      return a * b;
    case BinaryOp::kDiv:
      return a / b;
    case BinaryOp::kPow:
      return std::pow(a, b);
    case BinaryOp::kMaximum:
      return std::isnan(a) ? a : std::isnan(b) ? b : (a > b ? a : b);
    case BinaryOp::kMinimum:
      return std::isnan(a) ? a : std::isnan(b) ? b : (a < b ? a : b);
    case BinaryOp::kEqual:
      return a == b;
    case BinaryOp::kNotEqual:
      return a != b;
    case BinaryOp::kLess:
      return a < b;
    case BinaryOp::kLessEqual:
      return a <= b;
    case BinaryOp::kGreater:
      return a > b;
    case BinaryOp::kGreaterEqual:
      return a >= b;
    case BinaryOp::kLogicalAnd:
      return truth(a) && truth(b);
    case BinaryOp::kLogicalOr:
      return truth(a) || truth(b);
  }
  return 0;
}

int64_t IntBinary(BinaryOp op, int32_t a, int32_t b) {
  const uint32_t ua = static_cast<uint32_t>(a), ub = static_cast<uint32_t>(b);
  switch (op) {
    case BinaryOp::kAdd:
      return static_cast<int32_t>(ua + ub);
    case BinaryOp::kSub:
      return static_cast<int32_t>(ua - ub);
    case BinaryOp::kMul:
      return static_cast<int32_t>(ua * ub);
    case BinaryOp::kDiv:  // truncating; x / 0 = 0; INT_MIN / -1 wraps
      if (b == 0) return 0;
      if (b == -1) return static_cast<int32_t>(0u - ua);
      return a / b;
    case BinaryOp::kPow: {  // wrapping; negative exponents: 1, +-1 or 0
      if (b < 0) return a == 1 ? 1 : a == -1 ? ((b & 1) ? -1 : 1) : 0;
      uint32_t r = 1;
      for (int32_t i = 0; i < b && i < 64; ++i) r *= ua;
      if (b >= 64) {  // square-and-multiply for large exponents
        r = 1;
        uint32_t base = ua;
        for (uint32_t e = ub; e; e >>= 1, base *= base)
          if (e & 1) r *= base;
      }
      return static_cast<int32_t>(r);
    }
    case BinaryOp::kMaximum:
      return std::max(a, b);
    case BinaryOp::kMinimum:
      return std::min(a, b);
    case BinaryOp::kEqual:
      return a == b;
    case BinaryOp::kNotEqual:
      return a != b;
    case BinaryOp::kLess:
      return a < b;
    case BinaryOp::kLessEqual:
      return a <= b;
    case BinaryOp::kGreater:
      return a > b;
    case BinaryOp::kGreaterEqual:
      return a >= b;
    case BinaryOp::kLogicalAnd:
      return a != 0 && b != 0;
    case BinaryOp::kLogicalOr:
      return a != 0 || b != 0;
  }
  return 0;
}

constexpr BinaryOp kAllBinary[] = {
    BinaryOp::kAdd,       BinaryOp::kSub,     BinaryOp::kMul,          BinaryOp::kDiv,        BinaryOp::kPow,
    BinaryOp::kMaximum,   BinaryOp::kMinimum, BinaryOp::kEqual,        BinaryOp::kNotEqual,   BinaryOp::kLess,
    BinaryOp::kLessEqual, BinaryOp::kGreater, BinaryOp::kGreaterEqual, BinaryOp::kLogicalAnd, BinaryOp::kLogicalOr,
};

// form 0: a op b; 1: a op scalar; 2: scalar op a.
NDObject* BuildBinary(Kernel& k, BinaryOp op, int form, NDObject* a, NDObject* b, double s) {
  if (form == 0) return k.Binary(op, a, b);
  if (form == 1) return k.Binary(op, a, s);
  return k.Binary(op, s, a);
}

TEST(KernelsBinary, FloatOpsAllFormsAllLengths) {
  for (BinaryOp op : kAllBinary) {
    for (DType dt : kFloats) {
      for (int form = 0; form < 3; ++form) {
        for (int64_t n : kLengths) {
          SCOPED_TRACE(std::string(BinaryOpName(op)) + " " + DTypeName(dt) + " form " + std::to_string(form) +
                       " n=" + std::to_string(n));
          std::vector<double> a = Values(dt, n, 3000 + n), b = Values(dt, n, 4000 + n);
          AddSpecials(dt, a);
          for (int64_t i = 0; i < n; i += 5) b[i] = a[i];  // ties for compares and min/max
          if (op == BinaryOp::kPow)
            for (double& x : a) x = std::fabs(x);
          const double s = op == BinaryOp::kPow ? 2.0 : -1.5;
          Tensor out = RunOne({MakeTensor(dt, {n}, a), MakeTensor(dt, {n}, b)},
                              [&](Kernel& k, auto& v) { return BuildBinary(k, op, form, v[0], v[1], s); });
          std::vector<double> want(n);
          for (int64_t i = 0; i < n; ++i) {
            const float x = static_cast<float>(a[i]), y = static_cast<float>(b[i]), sf = static_cast<float>(s);
            want[i] = form == 0 ? FloatBinary(op, x, y) : form == 1 ? FloatBinary(op, x, sf) : FloatBinary(op, sf, x);
          }
          ASSERT_TRUE(Matches(out, want, op == BinaryOp::kPow ? 1 : 0, &a));
        }
      }
    }
  }
}

TEST(KernelsBinary, IntegerOpsAllFormsAllLengths) {
  for (BinaryOp op : kAllBinary) {
    for (DType dt : kInts) {
      for (int form = 0; form < 3; ++form) {
        for (int64_t n : kLengths) {
          SCOPED_TRACE(std::string(BinaryOpName(op)) + " " + DTypeName(dt) + " form " + std::to_string(form) +
                       " n=" + std::to_string(n));
          std::vector<double> a = Values(dt, n, 5000 + n), b = Values(dt, n, 6000 + n);
          for (int64_t i = 0; i < n; i += 5) b[i] = a[i];
          for (int64_t i = 3; i < n; i += 11) b[i] = 0;  // division by zero
          if (op == BinaryOp::kPow)
            for (double& x : b) x = static_cast<double>(static_cast<int64_t>(x) % 40);  // some negative
          const double s = op == BinaryOp::kPow ? 3 : -7;
          Tensor out = RunOne({MakeTensor(dt, {n}, a), MakeTensor(dt, {n}, b)},
                              [&](Kernel& k, auto& v) { return BuildBinary(k, op, form, v[0], v[1], s); });
          std::vector<double> want(n);
          for (int64_t i = 0; i < n; ++i) {
            const int32_t x = static_cast<int32_t>(a[i]), y = static_cast<int32_t>(b[i]), si = static_cast<int32_t>(s);
            want[i] = static_cast<double>(form == 0   ? IntBinary(op, x, y)
                                          : form == 1 ? IntBinary(op, x, si)
                                                      : IntBinary(op, si, x));
          }
          ASSERT_TRUE(Matches(out, want, 0, &a));
        }
      }
    }
  }
}

TEST(KernelsBinary, BoolLogicAndCompare) {
  const BinaryOp ops[] = {BinaryOp::kLogicalAnd, BinaryOp::kLogicalOr, BinaryOp::kEqual,
                          BinaryOp::kNotEqual,   BinaryOp::kMaximum,   BinaryOp::kMinimum};
  for (BinaryOp op : ops) {
    for (int64_t n : kLengths) {
      SCOPED_TRACE(std::string(BinaryOpName(op)) + " n=" + std::to_string(n));
      std::vector<double> a = Values(DType::kBool, n, 7000 + n), b = Values(DType::kBool, n, 7100 + n);
      Tensor out = RunOne({MakeTensor(DType::kBool, {n}, a), MakeTensor(DType::kBool, {n}, b)},
                          [&](Kernel& k, auto& v) { return k.Binary(op, v[0], v[1]); });
      std::vector<double> want(n);
      for (int64_t i = 0; i < n; ++i) want[i] = static_cast<double>(IntBinary(op, int32_t(a[i]), int32_t(b[i])));
      ASSERT_TRUE(Matches(out, want, 0));
    }
  }
}

// ---- select, cast ---------------------------------------------------------------------

TEST(KernelsSelect, AllDTypesAllLengths) {
  for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt32, DType::kInt8, DType::kBool}) {
    for (int64_t n : kLengths) {
      SCOPED_TRACE(std::string(DTypeName(dt)) + " n=" + std::to_string(n));
      std::vector<double> c = Values(DType::kBool, n, 8000 + n), a = Values(dt, n, 8100 + n),
                          b = Values(dt, n, 8200 + n);
      AddSpecials(dt, a);
      Tensor out = RunOne({MakeTensor(DType::kBool, {n}, c), MakeTensor(dt, {n}, a), MakeTensor(dt, {n}, b)},
                          [&](Kernel& k, auto& v) { return k.Select(v[0], v[1], v[2]); });
      std::vector<double> want(n);
      for (int64_t i = 0; i < n; ++i) want[i] = c[i] != 0 ? a[i] : b[i];
      ASSERT_TRUE(Matches(out, want, 0));
    }
  }
}

// Oracle of Cast: float sources are f32 numbers; ints and bool are integers.
double CastOracle(DType from, DType to, double v) {
  if (IsFloat(from)) {
    const float f = static_cast<float>(v);
    if (IsFloat(to)) return f;  // ToStorage rounds to nearest even
    if (to == DType::kBool) return f != 0 || std::isnan(f);
    const int32_t i = SatF32ToI32(f);
    return to == DType::kInt8 ? WrapI8(i) : i;
  }
  const int32_t i = static_cast<int32_t>(v);
  if (IsFloat(to)) return static_cast<float>(i);  // i32 -> f32 -> f16/bf16
  if (to == DType::kBool) return i != 0;
  return to == DType::kInt8 ? WrapI8(i) : i;
}

TEST(KernelsCast, AllPairsAllLengths) {
  const DType all[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt32, DType::kInt8, DType::kBool};
  for (DType from : all) {
    for (DType to : all) {
      if (from == to) continue;
      for (int64_t n : kLengths) {
        SCOPED_TRACE(std::string(DTypeName(from)) + " -> " + DTypeName(to) + " n=" + std::to_string(n));
        std::vector<double> x = Values(from, n, 9000 + n, -300, 300);
        AddSpecials(from, x);
        if (IsFloat(from) && n > 20) {  // saturation
          x[11] = ToStorage(from, 3e9);
          x[12] = ToStorage(from, -3e9);
        }
        Tensor out = RunOne({MakeTensor(from, {n}, x)}, [&](Kernel& k, auto& v) { return k.Cast(v[0], to); });
        std::vector<double> want(n);
        for (int64_t i = 0; i < n; ++i) want[i] = CastOracle(from, to, x[i]);
        ASSERT_TRUE(Matches(out, want, 0, &x));
      }
    }
  }
}

// f32 -> bf16 stores, bit for bit against F32ToBF16 on every class of
// input: where the CPU has AVX512-BF16 the store converts pairs of vectors
// by instruction, which flushes denormals, so pairs with a denormal lane
// (here at every 97th element) must go lane by lane; NaN payloads, ties,
// overflow to infinity and lengths with tails as well.
TEST(KernelsCast, BF16StoresEqualScalarOnEveryClass) {
  std::mt19937 rng(17);
  const uint32_t specials[] = {0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu, 0x00400000u, 0x00008000u,
                               0x7f800000u, 0xff800000u, 0x7fc00001u, 0xffa5a5a5u, 0x7f800001u, 0x7f7fffffu,
                               0x7f7f8000u, 0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x00800000u, 0x80800000u};
  for (int64_t n : {1, 31, 32, 33, 4096, 65536 + 37}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::vector<uint32_t> bits(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      uint32_t u = static_cast<uint32_t>(rng());
      if (i % 97 == 5) u &= 0x807fffffu;  // a denormal (or zero)
      if (i % 101 == 7) u = specials[(i / 101) % std::size(specials)];
      bits[static_cast<size_t>(i)] = u;
    }
    std::vector<uint16_t> out(static_cast<size_t>(n), 0xdead);
    Kernel k(KernelType::kDynamic);
    k.Store(nullptr, k.Cast(k.Load(nullptr, {-1}, DType::kFloat32), DType::kBFloat16));
    k.Launch({{bits.data(), {n}, bits.size() * 4}}, {{out.data(), {}, out.size() * 2}});
    int bad = 0;
    for (int64_t i = 0; i < n && bad < 5; ++i) {
      const uint16_t want = F32ToBF16(std::bit_cast<float>(bits[static_cast<size_t>(i)]));
      if (out[static_cast<size_t>(i)] != want) {
        ++bad;
        ADD_FAILURE() << "element " << i << ": f32 bits " << std::hex << bits[static_cast<size_t>(i)] << " -> "
                      << out[static_cast<size_t>(i)] << ", want " << want;
      }
    }
  }
}

// ---- reductions -------------------------------------------------------------------------

double ReduceOracle(ReduceOp op, const std::vector<double>& v, size_t begin, size_t count, size_t stride, DType dt) {
  const bool fl = IsFloat(dt);
  double acc = op == ReduceOp::kSum ? 0 : op == ReduceOp::kProd ? 1 : op == ReduceOp::kMax ? -kInf : kInf;
  uint32_t iacc = op == ReduceOp::kProd ? 1 : 0;
  bool first = true;
  for (size_t j = 0; j < count; ++j) {
    const double x = v[begin + j * stride];
    switch (op) {
      case ReduceOp::kSum:
        if (fl)
          acc += x;
        else
          iacc += static_cast<uint32_t>(static_cast<int32_t>(x));
        break;
      case ReduceOp::kProd:
        if (fl)
          acc *= x;
        else
          iacc *= static_cast<uint32_t>(static_cast<int32_t>(x));
        break;
      case ReduceOp::kMax:
        acc = std::isnan(acc) ? acc : std::isnan(x) ? x : (first || x > acc ? x : acc);
        break;
      case ReduceOp::kMin:
        acc = std::isnan(acc) ? acc : std::isnan(x) ? x : (first || x < acc ? x : acc);
        break;
    }
    first = false;
  }
  if (!fl && (op == ReduceOp::kSum || op == ReduceOp::kProd)) return static_cast<int32_t>(iacc);
  if (!fl && count == 0) {  // identities of max/min
    if (dt == DType::kInt8) return op == ReduceOp::kMax ? -128 : 127;
    if (dt == DType::kBool) return op == ReduceOp::kMax ? 0 : 1;
    return op == ReduceOp::kMax ? std::numeric_limits<int32_t>::min() : std::numeric_limits<int32_t>::max();
  }
  return acc;
}

std::vector<double> ReduceValues(ReduceOp op, DType dt, int64_t n, uint64_t seed) {
  // Products near 1 so that long rows stay finite.
  if (op == ReduceOp::kProd && IsFloat(dt)) return Values(dt, n, seed, 0.99, 1.01);
  if (op == ReduceOp::kProd && !IsFloat(dt)) {
    std::vector<double> v = Values(dt, n, seed);
    for (double& x : v) x = (static_cast<int64_t>(x) & 3) - 1;  // -1, 0, 1, 2
    return v;
  }
  return Values(dt, n, seed);
}

// Sums rounded once from f64 (VM) vs an f64 oracle: 1 ulp; max/min exact.
double ReduceTolerance(ReduceOp op, DType dt) {
  if (!IsFloat(dt) || op == ReduceOp::kMax || op == ReduceOp::kMin) return 0;
  return 1;
}

constexpr ReduceOp kReduceOps[] = {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kProd};

// f32 sums add eight values in f32 before widening to f64 (kernels.cc RowF
// along a row, ColSum8 down eight rows): three roundings per element, each
// at most half an ulp of a partial of at most eight inputs, so |error| <=
// 1.5 eps * sum |x| plus the final rounding. Sum i of `want` reduces the
// `len` elements x[i * start + j * step].
void ExpectPairwiseSums(const Tensor& out, const std::vector<double>& want, const std::vector<double>& x, int64_t start,
                        int64_t len, int64_t step) {
  for (size_t i = 0; i < want.size(); ++i) {
    double abs_sum = 0;
    for (int64_t j = 0; j < len; ++j) abs_sum += std::fabs(x[int64_t(i) * start + j * step]);
    const double bound = 3 * std::ldexp(abs_sum, -24) + std::fabs(want[i]) * std::ldexp(1.0, -23);
    EXPECT_LE(std::fabs(out.at(int64_t(i)) - want[i]), bound) << "sum " << i;
  }
}

// Reduction of the last axis of [3, K]: a ROW stage with K lanes per row.
TEST(KernelsReduce, RowsAllLengths) {
  for (ReduceOp op : kReduceOps) {
    for (DType dt : {DType::kFloat32, DType::kBFloat16, DType::kInt32, DType::kInt8}) {
      for (int64_t K : kLengths) {
        SCOPED_TRACE(std::string(ReduceOpName(op)) + " " + DTypeName(dt) + " K=" + std::to_string(K));
        const int64_t rows = 3;
        std::vector<double> x = ReduceValues(op, dt, rows * K, 10000 + K);
        Tensor out =
            RunOne({MakeTensor(dt, {rows, K}, x)}, [&](Kernel& k, auto& v) { return k.Reduce(op, v[0], {1}, false); });
        std::vector<double> want(rows);
        for (int64_t r = 0; r < rows; ++r) want[r] = ReduceOracle(op, x, r * K, K, 1, dt);
        if (op == ReduceOp::kSum && dt == DType::kFloat32) {
          ExpectPairwiseSums(out, want, x, K, K, 1);
          continue;
        }
        ASSERT_TRUE(Matches(out, want, ReduceTolerance(op, dt)));
      }
    }
  }
}

// Reduction of the first axis of [R, C]: a COL stage, C columns per tile.
TEST(KernelsReduce, ColumnsAllLengths) {
  for (ReduceOp op : kReduceOps) {
    for (DType dt : {DType::kFloat32, DType::kFloat16, DType::kInt32, DType::kInt8}) {
      for (int64_t C : kLengths) {
        SCOPED_TRACE(std::string(ReduceOpName(op)) + " " + DTypeName(dt) + " C=" + std::to_string(C));
        const int64_t R = C > 1000 ? 5 : 70;  // 70 > the 64-row accumulation block
        std::vector<double> x = ReduceValues(op, dt, R * C, 11000 + C);
        Tensor out =
            RunOne({MakeTensor(dt, {R, C}, x)}, [&](Kernel& k, auto& v) { return k.Reduce(op, v[0], {0}, false); });
        std::vector<double> want(C);
        for (int64_t c = 0; c < C; ++c) want[c] = ReduceOracle(op, x, c, R, C, dt);
        if (op == ReduceOp::kSum && dt == DType::kFloat32) {
          ExpectPairwiseSums(out, want, x, 1, R, C);
          continue;
        }
        ASSERT_TRUE(Matches(out, want, ReduceTolerance(op, dt)));
      }
    }
  }
}

// The VM runs COL stages that only load and accumulate f32 rows as one
// strip-mined pass (ColAccumulator): it must give the bits of one WACC per
// row in row order, for every op, NaN, infinities and signed zeros included;
// except that sums take full blocks of eight rows (from the first row) as
// one f32 pairwise sum per column, ((x0 + x1) + (x2 + x3)) + ((x4 + x5) +
// (x6 + x7)), widened once (ColSum8).
TEST(KernelsReduce, ColumnPassEqualsPerRowAccumulation) {
  std::mt19937 rng(77);
  std::uniform_real_distribution<float> u(-2, 2);
  const float specials[] = {0.0f, -0.0f, std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()};
  for (int op = 0; op < 4; ++op) {
    for (int64_t rows : {1, 7, 8, 9, 16, 23, 70}) {
      for (int64_t cols : {1, 3, 4, 5, 16, 31, 32, 33, 64, 100}) {
        SCOPED_TRACE("op " + std::to_string(op) + " rows " + std::to_string(rows) + " cols " + std::to_string(cols));
        const int64_t stride = cols + 5;
        std::vector<float> x(rows * stride);
        for (float& v : x) v = (rng() % 16 == 0) ? specials[rng() % 5] : u(rng);
        std::vector<double> w(cols), want(cols);
        for (int64_t c = 0; c < cols; ++c) w[c] = want[c] = (c % 7 == 0) ? 0.0 : u(rng);
        int64_t r0 = 0;
        if (op == 0) {
          for (; r0 + 8 <= rows; r0 += 8)
            for (int64_t c = 0; c < cols; ++c) {
              auto e = [&](int k) { return x[(r0 + k) * stride + c]; };
              const float s = ((e(0) + e(1)) + (e(2) + e(3))) + ((e(4) + e(5)) + (e(6) + e(7)));
              want[c] += double(s);
            }
        }
        for (int64_t r = r0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) {
            const double a = want[c], b = x[r * stride + c];
            if (op == 0)
              want[c] = a + b;
            else if (op == 3)
              want[c] = a * b;
            else if (std::isnan(a))
              want[c] = a;
            else if (std::isnan(b))
              want[c] = b;
            else
              want[c] = op == 1 ? (a > b ? a : b) : (a < b ? a : b);
          }
        vm::ColAccumulator(op)(w.data(), x.data(), stride, rows, cols);
        for (int64_t c = 0; c < cols; ++c) {
          if (std::isnan(want[c])) {
            EXPECT_TRUE(std::isnan(w[c])) << "column " << c;
          } else {
            EXPECT_EQ(std::memcmp(&w[c], &want[c], 8), 0) << "column " << c << ": " << w[c] << " vs " << want[c];
          }
        }
      }
    }
  }
}

// Reduction of a whole vector: chunks of 4096 into a workspace, then a
// reduction of the chunk partials.
TEST(KernelsReduce, FullVector) {
  const int64_t lengths[] = {1, 15, 16, 17, 4095, 4096, 4097, 8192, 70001};
  for (ReduceOp op : kReduceOps) {
    for (DType dt : {DType::kFloat32, DType::kInt32}) {
      for (int64_t n : lengths) {
        SCOPED_TRACE(std::string(ReduceOpName(op)) + " " + DTypeName(dt) + " n=" + std::to_string(n));
        std::vector<double> x = ReduceValues(op, dt, n, 12000 + n);
        Tensor out =
            RunOne({MakeTensor(dt, {n}, x)}, [&](Kernel& k, auto& v) { return k.Reduce(op, v[0], {0}, false); });
        const double want = ReduceOracle(op, x, 0, n, 1, dt);
        if (IsFloat(dt) && op == ReduceOp::kSum) {
          double mag = 0;
          for (double v : x) mag += std::fabs(v);
          EXPECT_NEAR(out.at(0), want, 2e-7 * mag + 1e-30);  // partials are rounded to f32 once
        } else if (IsFloat(dt) && op == ReduceOp::kProd) {
          EXPECT_NEAR(out.at(0), want, 2e-6 * std::fabs(want));
        } else {
          EXPECT_TRUE(Matches(out, {want}, 0));
        }
      }
    }
  }
}

// ---- fused instructions ---------------------------------------------------------------

NDObject* GeluTanhGraph(Kernel& k, NDObject* x, double half) {
  NDObject* x3 = k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kMul, x, x), x);
  NDObject* u = k.Binary(BinaryOp::kAdd, x, k.Binary(BinaryOp::kMul, x3, 0.044715));
  NDObject* t = k.Unary(UnaryOp::kTanh, k.Binary(BinaryOp::kMul, u, 0.7978845608028654));
  return k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kMul, x, half), k.Binary(BinaryOp::kAdd, t, 1.0));
}

// GELU (tanh form) written as its op sequence runs as one GELU instruction
// with the same roundings: the bits of the sequence computed step by step
// (tanh from the VM's TANH), specials included; a near miss is not fused.
TEST(KernelsFused, GeluTanhEqualsOpSequence) {
  for (double half : {0.5, 0.4}) {
    Kernel k;
    k.Store(nullptr, GeluTanhGraph(k, k.Load(nullptr, {16}, DType::kFloat32), half));
    k.CodeGen();
    EXPECT_EQ(k.Das().find("GELU") != std::string::npos, half == 0.5) << k.Das();
  }
  const int64_t n = 5000;
  std::vector<double> x = Values(DType::kFloat32, n, 4242, -6, 6);
  const double specials[] = {0.0, -0.0, kInf, -kInf, kNaN, 1e-30, -1e-30, 20, -20, 1e20, -1e20};
  for (size_t i = 0; i < std::size(specials); ++i) x[i] = specials[i];
  Tensor y =
      RunOne({MakeTensor(DType::kFloat32, {n}, x)}, [&](Kernel& k, auto& v) { return GeluTanhGraph(k, v[0], 0.5); });
  std::vector<double> arg(n);
  for (int64_t i = 0; i < n; ++i) {  // volatile: each step rounded, no FMA
    volatile float xf = static_cast<float>(x[i]);
    volatile float x2 = xf * xf;
    volatile float x3 = x2 * xf;
    volatile float t = x3 * 0.044715f;
    volatile float u = xf + t;
    arg[i] = u * static_cast<float>(0.7978845608028654);
  }
  Tensor th = RunOne({MakeTensor(DType::kFloat32, {n}, arg)},
                     [&](Kernel& k, auto& v) { return k.Unary(UnaryOp::kTanh, v[0]); });
  for (int64_t i = 0; i < n; ++i) {
    volatile float w = static_cast<float>(th.at(i)) + 1.0f;
    volatile float h = static_cast<float>(x[i]) * 0.5f;
    const float want = h * w, got = static_cast<float>(y.at(i));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << "x = " << x[i];
    } else {
      EXPECT_EQ(std::memcmp(&want, &got, 4), 0) << "x = " << x[i] << ": " << got << " vs " << want;
    }
  }
}

// x op max(x, row) for the float binary ops: BCAST and its reader run fused
// (one pass, the row's value broadcast per vector; row tails through a
// buffer). Row max is exact, so the result must have the host's bits, for
// rows shorter than, equal to and longer than a vector, several rows a tile.
TEST(KernelsFused, RowBroadcastOperand) {
  const BinaryOp ops[] = {BinaryOp::kAdd, BinaryOp::kSub,     BinaryOp::kMul,
                          BinaryOp::kDiv, BinaryOp::kMaximum, BinaryOp::kMinimum};
  for (BinaryOp op : ops) {
    for (int64_t K : {1, 3, 7, 8, 9, 17, 33, 100, 257, 1000}) {
      SCOPED_TRACE("op " + std::to_string(int(op)) + " K=" + std::to_string(K));
      const int64_t R = 37;
      std::vector<double> x = Values(DType::kFloat32, R * K, 900 + K, -3, 3);
      if (K > 2) x[K + 1] = kNaN;
      Tensor y = RunOne({MakeTensor(DType::kFloat32, {R, K}, x)}, [&](Kernel& k, auto& v) {
        return k.Binary(op, v[0], k.Reduce(ReduceOp::kMax, v[0], {1}, true));
      });
      for (int64_t r = 0; r < R; ++r) {
        float m = -INFINITY;
        for (int64_t j = 0; j < K; ++j) {
          const float v = static_cast<float>(x[r * K + j]);
          m = std::isnan(m) ? m : std::isnan(v) ? v : std::max(m, v);
        }
        for (int64_t j = 0; j < K; ++j) {
          const float v = static_cast<float>(x[r * K + j]);
          float want;
          switch (op) {
            case BinaryOp::kAdd:
              want = v + m;
              break;
            case BinaryOp::kSub:
              want = v - m;
              break;
            case BinaryOp::kMul:
              want = v * m;
              break;
            case BinaryOp::kDiv:
              want = v / m;
              break;
            case BinaryOp::kMaximum:
              want = std::isnan(v) || std::isnan(m) ? NAN : std::max(v, m);
              break;
            default:
              want = std::isnan(v) || std::isnan(m) ? NAN : std::min(v, m);
              break;
          }
          const float got = static_cast<float>(y.at(r * K + j));
          if (std::isnan(want)) {
            EXPECT_TRUE(std::isnan(got)) << r << "," << j;
          } else {
            EXPECT_EQ(std::memcmp(&want, &got, 4), 0) << r << "," << j << ": " << got << " vs " << want;
          }
        }
      }
    }
  }
}

// x / y with y a row value: DivRowF divides by the row's reciprocal with one
// FMA correction (Markstein) where x and y are in range, and divides where
// they are not. Either way the bits must be the divide's: numerators over
// every 64th f32 significand at several binades (in range, at its edges,
// subnormal, zero, inf, NaN) against divisors with extreme significands
// (1 + ulp, 2 - ulp), ordinary ones and ones outside [2^-20, 2^20]; the
// divisor both as a row reduction and as a [R, 1] input.
TEST(KernelsFused, RowDivisionEqualsDivide) {
  const float divisors[] = {1.0f,       0x1.000002p0f, 0x1.fffffep0f,  3.0f,  -7.0f, 1234.567f,
                            0x1.8p-20f, 0x1p20f,       0x1.000002p20f, 1e-7f, 3e7f,  -0x1.fffffep-3f};
  const int64_t R = std::size(divisors);
  std::vector<double> x;
  const int exps[] = {0, 1, -3, 99, -100, -101, 100, 126, -127, -135};
  for (int e : exps)
    for (uint32_t m = 0; m < (1u << 23); m += 64 * 1021) {  // a stride coprime to the vector sizes
      const float v = std::ldexp(1.0f + std::ldexp(float(m), -23), e);
      x.push_back(v), x.push_back(-v);
    }
  for (double v : {0.0, -0.0, kInf, -kInf, kNaN, 1e-45, 0x1p-100, 0x1.fffffep99, 0x1p100})
    for (int rep = 0; rep < 16; ++rep) x.push_back(rep % 2 ? -v : v);
  const int64_t K = static_cast<int64_t>(x.size());
  std::vector<double> xs, ds, d1;
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t j = 0; j < K; ++j) {
      xs.push_back(x[(j + 5 * r) % K]);  // each row its own alignment of the special runs
      ds.push_back(j == r ? divisors[r] : -kInf);
    }
    d1.push_back(divisors[r]);
  }
  const Tensor xt = MakeTensor(DType::kFloat32, {R, K}, xs);
  const Tensor y_red = RunOne({xt, MakeTensor(DType::kFloat32, {R, K}, ds)}, [&](Kernel& k, auto& v) {
    return k.Binary(BinaryOp::kDiv, v[0], k.Reduce(ReduceOp::kMax, v[1], {1}, true));
  });
  const Tensor y_in = RunOne({xt, MakeTensor(DType::kFloat32, {R, 1}, d1)},
                             [&](Kernel& k, auto& v) { return k.Binary(BinaryOp::kDiv, v[0], v[1]); });
  int64_t checked = 0;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < K; ++j) {
      const float want = static_cast<float>(xs[r * K + j]) / divisors[r];
      for (const Tensor* y : {&y_red, &y_in}) {
        const float got = static_cast<float>(y->at(r * K + j));
        if (std::isnan(want))
          ASSERT_TRUE(std::isnan(got)) << r << "," << j;
        else
          ASSERT_EQ(std::memcmp(&want, &got, 4), 0)
              << "x = " << xs[r * K + j] << " / " << divisors[r] << ": " << got << " vs " << want;
        ++checked;
      }
    }
  EXPECT_GT(checked, 2 * R * 2000);
}

// x / k for a constant k, alone (DivF) and inside fused chains, the
// division first ((x / k) * 3, sqrt(x / k)) or second ((x * 1) / k): by
// reciprocal where in range (UniformDivisor), the divide elsewhere; the
// bits must be the divide's. Numerators as in RowDivisionEqualsDivide.
TEST(KernelsFused, ConstantDivisionEqualsDivide) {
  const float divisors[] = {1.0f,       0x1.000002p0f, 0x1.fffffep0f,  3.0f,  -7.0f, 1234.567f,      0.6513216f,
                            0x1.8p-20f, 0x1p20f,       0x1.000002p20f, 1e-7f, 3e7f,  -0x1.fffffep-3f};
  std::vector<double> x;
  const int exps[] = {0, 1, -3, 99, -100, -101, 100, 126, -127, -135};
  for (int e : exps)
    for (uint32_t m = 0; m < (1u << 23); m += 64 * 1021) {
      const float v = std::ldexp(1.0f + std::ldexp(float(m), -23), e);
      x.push_back(v), x.push_back(-v);
    }
  for (double v : {0.0, -0.0, kInf, -kInf, kNaN, 1e-45, 0x1p-100, 0x1.fffffep99, 0x1p100})
    for (int rep = 0; rep < 16; ++rep) x.push_back(rep % 2 ? -v : v);
  const int64_t n = static_cast<int64_t>(x.size());
  const Tensor xt = MakeTensor(DType::kFloat32, {n}, x);
  int64_t checked = 0;
  for (float k : divisors) {
    SCOPED_TRACE("k = " + std::to_string(k));
    const double kd = k;
    const Tensor plain = RunOne({xt}, [&](Kernel& b, auto& v) { return b.Binary(BinaryOp::kDiv, v[0], kd); });
    const Tensor times3 = RunOne(
        {xt}, [&](Kernel& b, auto& v) { return b.Binary(BinaryOp::kMul, b.Binary(BinaryOp::kDiv, v[0], kd), 3.0); });
    const Tensor root =
        RunOne({xt}, [&](Kernel& b, auto& v) { return b.Unary(UnaryOp::kSqrt, b.Binary(BinaryOp::kDiv, v[0], kd)); });
    const Tensor after = RunOne(
        {xt}, [&](Kernel& b, auto& v) { return b.Binary(BinaryOp::kDiv, b.Binary(BinaryOp::kMul, v[0], 1.0), kd); });
    for (int64_t j = 0; j < n; ++j) {
      const float q = static_cast<float>(x[j]) / k;
      const float want[] = {q, q * 3.0f, std::sqrt(q), q};
      const Tensor* got[] = {&plain, &times3, &root, &after};
      for (int w = 0; w < 4; ++w) {
        const float g = static_cast<float>(got[w]->at(j));
        if (std::isnan(want[w]))
          ASSERT_TRUE(std::isnan(g)) << w << ": x = " << x[j];
        else
          ASSERT_EQ(std::memcmp(&want[w], &g, 4), 0)
              << w << ": x = " << x[j] << " / " << k << ": " << g << " vs " << want[w];
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 4 * 13 * 2000);
}

// Fused ELEM programs (vm.cc FuseChainPrograms, threaded strips of eight
// vectors and their one-vector tails) against the same ops run one kernel
// each: random chains of 3..16 ops over two inputs (unary ops, constants on
// either side, the other input, the value with itself, an earlier value),
// with a middle value stored too, on lengths below, at and past the strip
// and tile sizes. Bit for bit (NaN payloads aside); seeds printed.
std::vector<NDObject*> AdamStep(Kernel& k, const std::vector<NDObject*>& in);

// n floats at `off` floats past a 64-byte boundary inside `store`, with
// kGuard sentinels on either side; ExpectGuards checks they are intact.
constexpr int64_t kGuard = 32;
constexpr float kSentinel = -12345.0f;
float* PlaceGuarded(std::vector<float>& store, int64_t n, int64_t off) {
  store.assign(static_cast<size_t>(n + 2 * kGuard + 32), kSentinel);
  const auto mis = static_cast<int64_t>(reinterpret_cast<uintptr_t>(store.data()) / 4 % 16);
  return store.data() + kGuard + (16 - mis) % 16 + off;
}
void ExpectGuards(const float* got, int64_t n, size_t output) {
  for (int64_t g = 1; g <= kGuard; ++g) {
    EXPECT_EQ(got[-g], kSentinel) << "output " << output << " lane " << -g;
    EXPECT_EQ(got[n - 1 + g], kSentinel) << "output " << output << " lane " << n - 1 + g;
  }
}

// Random fused programs (3-16 steps of every op, operand kind and fold)
// against the same ops run one kernel each: the bits, for each seed.
void CheckProgramsEqualOpByOp(uint32_t seeds) {
  const BinaryOp bins[] = {BinaryOp::kAdd, BinaryOp::kSub,     BinaryOp::kMul,
                           BinaryOp::kDiv, BinaryOp::kMaximum, BinaryOp::kMinimum};
  const UnaryOp uns[] = {UnaryOp::kSqrt, UnaryOp::kRsqrt, UnaryOp::kAbs,  UnaryOp::kNeg,  UnaryOp::kReciprocal,
                         UnaryOp::kRelu, UnaryOp::kFloor, UnaryOp::kCeil, UnaryOp::kRound};
  const int64_t lengths[] = {1, 7, 16, 127, 128, 129, 1000, 4099, 65543};
  struct Step {
    // 0 unary, 1 x op k, 2 k op x, 3 x op b, 4 b op x, 5 x op x, 6 x op earlier,
    // 7 (input op2 k2) op (x op3 k): a loaded value scaled into a later op
    // (FoldOperandSteps when op2 is +, - or *)
    int kind;
    int op;
    double k;
    int earlier;
    int op2, op3;
    double k2;
  };
  int programs = 0, slots = 0, folds = 0, direct = 0, half = 0;
  for (uint32_t seed = 1; seed <= seeds; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937 rng(seed);
    const int64_t n = lengths[seed % std::size(lengths)];
    std::vector<Step> plan(3 + rng() % 14);
    for (Step& st : plan) {
      st.kind = static_cast<int>(rng() % 8);
      st.op = static_cast<int>(rng() % (st.kind == 0 ? std::size(uns) : std::size(bins)));
      st.k = std::ldexp(static_cast<double>(rng() % 2001) - 1000.0, -7);
      st.earlier = static_cast<int>(rng() % 1000);
      st.op2 = static_cast<int>(rng() % std::size(bins));
      st.op3 = static_cast<int>(rng() % std::size(bins));
      st.k2 = std::ldexp(static_cast<double>(rng() % 2001) - 1000.0, -8);
    }
    std::vector<double> va = Values(DType::kFloat32, n, seed, -3, 3), vb = Values(DType::kFloat32, n, seed + 99, -3, 3);
    const double specials[] = {0.0, -0.0, kInf, -kInf, kNaN, 1e-40, 0.5, 2.5, -1.5};
    for (size_t i = 0; i < std::size(specials) && static_cast<int64_t>(i * 5) < n; ++i) va[i * 5] = specials[i];
    const Tensor a = MakeTensor(DType::kFloat32, {n}, va), b = MakeTensor(DType::kFloat32, {n}, vb);
    const size_t mid = plan.size() / 2;
    // Fused: the whole plan in one kernel, the middle and the last value stored.
    auto build = [&](Kernel& k, const std::vector<NDObject*>& in) {
      std::vector<NDObject*> vals = {in[0]};
      for (const Step& st : plan) {
        NDObject* x = vals.back();
        const BinaryOp op = bins[st.op % std::size(bins)];
        switch (st.kind) {
          case 0:
            vals.push_back(k.Unary(uns[st.op], x));
            break;
          case 1:
            vals.push_back(k.Binary(op, x, st.k));
            break;
          case 2:
            vals.push_back(k.Binary(op, st.k, x));
            break;
          case 3:
            vals.push_back(k.Binary(op, x, in[1]));
            break;
          case 4:
            vals.push_back(k.Binary(op, in[1], x));
            break;
          case 5:
            vals.push_back(k.Binary(op, x, x));
            break;
          case 6:
            vals.push_back(k.Binary(op, x, vals[st.earlier % vals.size()]));
            break;
          default: {
            NDObject* scaled = k.Binary(bins[st.op2], in[st.earlier % 2], st.k2);
            vals.push_back(k.Binary(op, scaled, k.Binary(bins[st.op3], x, st.k)));
            break;
          }
        }
      }
      return std::vector<NDObject*>{vals[mid + 1], vals.back()};
    };
    const std::vector<Tensor> fused = dvm::Run({a, b}, build);
    // Op by op: one kernel per step.
    std::vector<Tensor> vals = {a};
    for (const Step& st : plan) {
      const Tensor x = vals.back();
      const BinaryOp op = bins[st.op % std::size(bins)];
      const Tensor e = vals[st.earlier % vals.size()];
      switch (st.kind) {
        case 0:
          vals.push_back(RunOne({x}, [&](Kernel& k, auto& v) { return k.Unary(uns[st.op], v[0]); }));
          break;
        case 1:
          vals.push_back(RunOne({x}, [&](Kernel& k, auto& v) { return k.Binary(op, v[0], st.k); }));
          break;
        case 2:
          vals.push_back(RunOne({x}, [&](Kernel& k, auto& v) { return k.Binary(op, st.k, v[0]); }));
          break;
        case 3:
          vals.push_back(RunOne({x, b}, [&](Kernel& k, auto& v) { return k.Binary(op, v[0], v[1]); }));
          break;
        case 4:
          vals.push_back(RunOne({b, x}, [&](Kernel& k, auto& v) { return k.Binary(op, v[0], v[1]); }));
          break;
        case 5:
          vals.push_back(RunOne({x}, [&](Kernel& k, auto& v) { return k.Binary(op, v[0], v[0]); }));
          break;
        case 6:
          vals.push_back(RunOne({x, e}, [&](Kernel& k, auto& v) { return k.Binary(op, v[0], v[1]); }));
          break;
        default: {
          const Tensor scaled =
              RunOne({st.earlier % 2 ? b : a}, [&](Kernel& k, auto& v) { return k.Binary(bins[st.op2], v[0], st.k2); });
          const Tensor y = RunOne({x}, [&](Kernel& k, auto& v) { return k.Binary(bins[st.op3], v[0], st.k); });
          vals.push_back(RunOne({scaled, y}, [&](Kernel& k, auto& v) { return k.Binary(op, v[0], v[1]); }));
          break;
        }
      }
    }
    EXPECT_TRUE(Matches(fused[0], vals[mid + 1].values(), 0));
    EXPECT_TRUE(Matches(fused[1], vals.back().values(), 0));
    Kernel k;
    std::vector<NDObject*> in = {k.Load(nullptr, {n}, DType::kFloat32), k.Load(nullptr, {n}, DType::kFloat32)};
    for (NDObject* o : build(k, in)) k.Store(nullptr, o);
    k.CodeGen();
    const vm::Executable ex(k.Bytecode());
    programs += ex.fused_programs();
    slots += ex.program_slots();
    folds += ex.folded_operands();
    direct += ex.direct_stages();
    half += ex.half_strip_programs();
  }
  EXPECT_GT(programs, 30);  // the plans do fuse
  EXPECT_GT(slots, 10);     // and keep values read by later steps in strip slots
  EXPECT_GT(folds, 10);     // and fold scaled loads into their readers (23 in 45)
  EXPECT_GT(direct, 20);    // and run tiles without the handlers (33 in 45)
  EXPECT_GT(half, 5);       // and run long programs in strips of four vectors
}

TEST(KernelsFused, ProgramsEqualOpByOp) { CheckProgramsEqualOpByOp(45); }

// Sets the lanes after which executables compile their programs (jit.h)
// for a scope.
class NativeThreshold {
 public:
  explicit NativeThreshold(int64_t lanes) : old_(vm::NativeThresholdLanes()) { vm::SetNativeThresholdLanes(lanes); }
  ~NativeThreshold() { vm::SetNativeThresholdLanes(old_); }

 private:
  int64_t old_;
};

// The same random programs, more of them, compiled to native code at their
// first launch: the bits of the ops one by one (special values included:
// NaN, infinities, signed zeros, a denormal), and the programs were
// compiled. 500 plans include steps that read a value an earlier step
// stored to tile memory (seeds 179, 317, 479): loads the native code issues
// at the strip's start must not take those (with that check removed, 45
// seeds passed).
TEST(KernelsFused, NativeProgramsEqualOpByOp) {
  if (!vm::NativeSupported()) GTEST_SKIP() << "no native programs in this build or on this CPU";
  NativeThreshold native(0);
  const int64_t before = vm::NativeProgramsCompiled();
  CheckProgramsEqualOpByOp(500);
  EXPECT_GT(vm::NativeProgramsCompiled() - before, 30);
}

// An executable compiles its programs once they have run the threshold's
// lanes, summed over its launches (program stages' lanes a launch), and
// never with a negative threshold; every launch gives the same bits.
TEST(KernelsFused, NativeAfterThresholdLanes) {
  if (!vm::NativeSupported()) GTEST_SKIP() << "no native programs in this build or on this CPU";
  const int64_t n = 4096;
  std::vector<std::vector<float>> in(4);
  for (int i = 0; i < 4; ++i) {
    const std::vector<double> v = Values(DType::kFloat32, n, 200 + i, i == 3 ? 0 : -1, 1);
    in[i].assign(v.begin(), v.end());
  }
  auto launch = [&](Kernel& k, std::vector<std::vector<float>>& out) {
    out.assign(3, std::vector<float>(n));
    void* ins[] = {in[0].data(), in[1].data(), in[2].data(), in[3].data()};
    void* outs[] = {out[0].data(), out[1].data(), out[2].data()};
    k.Launch(std::span<void* const>(ins), std::span<void* const>(outs));
  };
  auto adam = [&](Kernel& k) {
    std::vector<NDObject*> loads;
    for (int i = 0; i < 4; ++i) loads.push_back(k.Load(nullptr, {n}, DType::kFloat32));
    for (NDObject* o : AdamStep(k, loads)) k.Store(nullptr, o);
  };
  std::vector<std::vector<float>> first, out;
  {
    NativeThreshold at(10000);  // compiled at the third launch's start: 3 x 4096 >= 10000
    Kernel k;
    adam(k);
    const int64_t before = vm::NativeProgramsCompiled();
    launch(k, first);
    launch(k, out);
    EXPECT_EQ(vm::NativeProgramsCompiled(), before) << "compiled before 10000 lanes had run";
    EXPECT_EQ(out, first);
    launch(k, out);
    EXPECT_EQ(vm::NativeProgramsCompiled(), before + 1) << "Adam's one program, compiled at the third launch";
    EXPECT_EQ(out, first);
    launch(k, out);
    EXPECT_EQ(vm::NativeProgramsCompiled(), before + 1) << "compiled once";
    EXPECT_EQ(out, first);
  }
  {
    NativeThreshold never(-1);
    Kernel k;
    adam(k);
    const int64_t before = vm::NativeProgramsCompiled();
    for (int r = 0; r < 5; ++r) {
      launch(k, out);
      EXPECT_EQ(out, first);
    }
    EXPECT_EQ(vm::NativeProgramsCompiled(), before);
  }
}

// Native and threaded code of the same programs over buffers on and off
// vector boundaries (the native code's alignment pass and masked tail),
// lengths around the strip (64 lanes) and the alignment threshold (256),
// in place and not: equal bits, and nothing written outside the outputs.
TEST(KernelsFused, NativeEqualsThreadedCode) {
  if (!vm::NativeSupported()) GTEST_SKIP() << "no native programs in this build or on this CPU";
  auto short_program = [](Kernel& k, const std::vector<NDObject*>& in) {
    NDObject* t = k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, in[0], 1.5), in[1]), 0.75);
    return std::vector<NDObject*>{k.Binary(BinaryOp::kSub, t, in[0]), k.Unary(UnaryOp::kRelu, t)};
  };
  auto minmax_program = [](Kernel& k, const std::vector<NDObject*>& in) {
    NDObject* t = k.Binary(BinaryOp::kMaximum, k.Binary(BinaryOp::kMul, in[0], -0.5), in[1]);
    NDObject* u = k.Unary(UnaryOp::kFloor, k.Binary(BinaryOp::kMinimum, 3.25, k.Binary(BinaryOp::kDiv, t, 0.3)));
    return std::vector<NDObject*>{k.Unary(UnaryOp::kRsqrt, k.Unary(UnaryOp::kAbs, u)), k.Unary(UnaryOp::kNeg, u)};
  };
  const int64_t before = vm::NativeProgramsCompiled();
  for (int program = 0; program < 3; ++program) {
    const int nin = program == 1 ? 4 : 2;
    for (int64_t n : {1, 15, 16, 63, 64, 65, 255, 256, 257, 300, 1000, 4099, 40000}) {
      std::vector<std::vector<double>> vals;
      for (int i = 0; i < nin; ++i) {
        vals.push_back(Values(DType::kFloat32, n, 90 + 3 * n + i, i == 3 ? 0 : -2, 2));
        const double specials[] = {kNaN, -0.0, kInf, -kInf, 1e-40, 0.0};
        for (size_t q = 0; q < std::size(specials) && static_cast<int64_t>(q * 7 + i) < n; ++q)
          vals[i][q * 7 + i] = specials[q];
      }
      auto build = [&](Kernel& k) {
        std::vector<NDObject*> loads;
        for (int i = 0; i < nin; ++i) loads.push_back(k.Load(nullptr, {n}, DType::kFloat32));
        const std::vector<NDObject*> outs = program == 0   ? short_program(k, loads)
                                            : program == 1 ? AdamStep(k, loads)
                                                           : minmax_program(k, loads);
        for (NDObject* o : outs) k.Store(nullptr, o);
        return outs.size();
      };
      Kernel threaded, native;
      const size_t nout = build(threaded);
      build(native);
      for (auto [ioff, ooff] : {std::pair<int64_t, int64_t>{0, 0}, {13, 13}, {1, 9}, {15, 0}}) {
        for (bool in_place : {false, true}) {
          // In place: Adam's p', m', v' over p, m, v (inputs 0, 2, 3).
          if (in_place && (program != 1 || ioff != ooff)) continue;
          SCOPED_TRACE("program " + std::to_string(program) + " n=" + std::to_string(n) + " offsets " +
                       std::to_string(ioff) + "/" + std::to_string(ooff) + (in_place ? " in place" : ""));
          std::vector<float> got_store[4], want_store[4], gin_store[4], win_store[4];
          std::vector<void*> gin, win, gout, wout;
          for (int i = 0; i < nin; ++i) {
            float* g = PlaceGuarded(gin_store[i], n, ioff);
            float* w = PlaceGuarded(win_store[i], n, ioff);
            for (int64_t j = 0; j < n; ++j) g[j] = w[j] = static_cast<float>(vals[i][j]);
            gin.push_back(g), win.push_back(w);
          }
          for (size_t o = 0; o < nout; ++o) {
            const int src = o == 0 ? 0 : o == 1 ? 2 : 3;
            gout.push_back(in_place ? gin[src] : PlaceGuarded(got_store[o], n, ooff));
            wout.push_back(in_place ? win[src] : PlaceGuarded(want_store[o], n, ooff));
          }
          {
            NativeThreshold off(-1);
            threaded.Launch(std::span<void* const>(win), std::span<void* const>(wout));
          }
          {
            NativeThreshold now(0);
            native.Launch(std::span<void* const>(gin), std::span<void* const>(gout));
          }
          for (size_t o = 0; o < nout; ++o) {
            const float* got = static_cast<const float*>(gout[o]);
            const float* want = static_cast<const float*>(wout[o]);
            EXPECT_EQ(0, std::memcmp(got, want, static_cast<size_t>(n) * 4)) << "output " << o;
            ExpectGuards(got, n, o);
          }
        }
      }
    }
  }
  EXPECT_GT(vm::NativeProgramsCompiled() - before, 20);
}

// Adam's update (bench stack): m * b1 and v * b2 are each loaded, scaled
// and read once by a later add, so they fold into those adds
// (FoldOperandSteps), leaving one strip slot ((m' / bc1) * lr, read by the
// last division); every output has the bits of the ops run one by one.
TEST(KernelsFused, AdamFoldsScaledLoadsIntoItsAdds) {
  const double b1 = 0.9, c1 = 0.1, b2 = 0.999, c2 = 0.001, bc1 = 1 - std::pow(0.9, 10), bc2 = 1 - std::pow(0.999, 10);
  const double lr = 1e-3, eps = 1e-8;
  for (int64_t n : {1, 7, 16, 129, 4099, 40000}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const Tensor p = MakeTensor(DType::kFloat32, {n}, Values(DType::kFloat32, n, 1 + n, -1, 1));
    const Tensor g = MakeTensor(DType::kFloat32, {n}, Values(DType::kFloat32, n, 2 + n, -0.1, 0.1));
    const Tensor m = MakeTensor(DType::kFloat32, {n}, Values(DType::kFloat32, n, 3 + n, -0.01, 0.01));
    const Tensor v = MakeTensor(DType::kFloat32, {n}, Values(DType::kFloat32, n, 4 + n, 0, 1e-4));
    auto build = [&](Kernel& k, const std::vector<NDObject*>& in) {
      NDObject* m1 = k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, in[2], b1), k.Binary(BinaryOp::kMul, in[1], c1));
      NDObject* v1 = k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, in[3], b2),
                              k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kMul, in[1], in[1]), c2));
      NDObject* den = k.Binary(BinaryOp::kAdd, k.Unary(UnaryOp::kSqrt, k.Binary(BinaryOp::kDiv, v1, bc2)), eps);
      NDObject* upd = k.Binary(BinaryOp::kDiv, k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kDiv, m1, bc1), lr), den);
      return std::vector<NDObject*>{k.Binary(BinaryOp::kSub, in[0], upd), m1, v1};
    };
    const std::vector<Tensor> fused = dvm::Run({p, g, m, v}, build);
    auto one = [&](const Tensor& x, BinaryOp op, double c) {
      return RunOne({x}, [&](Kernel& k, auto& in) { return k.Binary(op, in[0], c); });
    };
    auto two = [&](const Tensor& x, BinaryOp op, const Tensor& y) {
      return RunOne({x, y}, [&](Kernel& k, auto& in) { return k.Binary(op, in[0], in[1]); });
    };
    const Tensor m1 = two(one(m, BinaryOp::kMul, b1), BinaryOp::kAdd, one(g, BinaryOp::kMul, c1));
    const Tensor v1 =
        two(one(v, BinaryOp::kMul, b2), BinaryOp::kAdd, one(two(g, BinaryOp::kMul, g), BinaryOp::kMul, c2));
    const Tensor vh = one(v1, BinaryOp::kDiv, bc2);
    const Tensor den =
        one(RunOne({vh}, [&](Kernel& k, auto& in) { return k.Unary(UnaryOp::kSqrt, in[0]); }), BinaryOp::kAdd, eps);
    const Tensor upd = two(one(one(m1, BinaryOp::kDiv, bc1), BinaryOp::kMul, lr), BinaryOp::kDiv, den);
    EXPECT_TRUE(Matches(fused[0], two(p, BinaryOp::kSub, upd).values(), 0));
    EXPECT_TRUE(Matches(fused[1], m1.values(), 0));
    EXPECT_TRUE(Matches(fused[2], v1.values(), 0));
    Kernel k;
    std::vector<NDObject*> in;
    for (int i = 0; i < 4; ++i) in.push_back(k.Load(nullptr, {n}, DType::kFloat32));
    for (NDObject* o : build(k, in)) k.Store(nullptr, o);
    k.CodeGen();
    const vm::Executable ex(k.Bytecode());
    EXPECT_EQ(ex.fused_programs(), 1) << k.Das();
    EXPECT_EQ(ex.folded_operands(), 2) << k.Das();
    EXPECT_EQ(ex.program_slots(), 1) << k.Das();
    EXPECT_EQ(ex.half_strip_programs(), 1) << k.Das();        // twelve steps: strips of four vectors
    EXPECT_EQ(ex.direct_stages(), n > 1 ? 1 : 0) << k.Das();  // [1] is a scalar view
    // In place, as an optimizer steps (p', m', v' over p, m, v): a folded
    // step reads m and v again where their outputs are written, before.
    std::vector<float> bufs[3];
    const Tensor* src[3] = {&p, &m, &v};
    for (int i = 0; i < 3; ++i) {
      bufs[i].resize(n);
      std::memcpy(bufs[i].data(), src[i]->bytes.data(), n * sizeof(float));
    }
    void* ins[] = {bufs[0].data(), const_cast<uint8_t*>(g.bytes.data()), bufs[1].data(), bufs[2].data()};
    void* outs[] = {bufs[0].data(), bufs[1].data(), bufs[2].data()};
    k.Launch(std::span<void* const>(ins), std::span<void* const>(outs));
    for (int i = 0; i < 3; ++i)
      EXPECT_EQ(0, std::memcmp(bufs[i].data(), fused[i].bytes.data(), n * sizeof(float))) << "output " << i;
  }
}

// A fused program over slices (views at an offset) and whole tensors, one
// tile or many, lengths on and off the vector: its tiles run it directly
// (Executable::SetupDirect, each view's offset plus the tile's start), with
// the bits of the ops run one by one on copies of the slices.
TEST(KernelsFused, DirectProgramsOverSlices) {
  for (int64_t n : {5, 16, 300, 4099, 40000, 70001}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const int64_t pad = 13;
    const Tensor big = MakeTensor(DType::kFloat32, {n + pad}, Values(DType::kFloat32, n + pad, 5 + n, -2, 2));
    const Tensor y = MakeTensor(DType::kFloat32, {n}, Values(DType::kFloat32, n, 6 + n, -2, 2));
    std::vector<double> part;
    for (int64_t i = 0; i < n; ++i) part.push_back(big.at(7 + i));
    const Tensor x = MakeTensor(DType::kFloat32, {n}, part);
    auto program = [](Kernel& k, NDObject* xs, NDObject* ys) {
      NDObject* t = k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, xs, 1.5), ys), 0.75);
      return std::vector<NDObject*>{k.Binary(BinaryOp::kSub, t, xs), t};
    };
    Kernel k;
    const int64_t full[] = {n + pad}, start[] = {7}, size[] = {n};
    NDObject* xs = k.SliceLoad(nullptr, Dims(full, 1), DType::kFloat32, Dims(start, 1), Dims(size, 1));
    NDObject* ys = k.Load(nullptr, {n}, DType::kFloat32);
    for (NDObject* o : program(k, xs, ys)) k.Store(nullptr, o);
    k.CodeGen();
    const vm::Executable ex(k.Bytecode());
    EXPECT_EQ(ex.direct_stages(), 1) << k.Das();
    std::vector<float> o0(n), o1(n);
    void* ins[] = {const_cast<uint8_t*>(big.bytes.data()), const_cast<uint8_t*>(y.bytes.data())};
    void* outs[] = {o0.data(), o1.data()};
    k.Launch(std::span<void* const>(ins), std::span<void* const>(outs));
    const Tensor t =
        RunOne({RunOne({RunOne({x}, [](Kernel& q, auto& v) { return q.Binary(BinaryOp::kMul, v[0], 1.5); }), y},
                       [](Kernel& q, auto& v) { return q.Binary(BinaryOp::kAdd, v[0], v[1]); })},
               [](Kernel& q, auto& v) { return q.Binary(BinaryOp::kMul, v[0], 0.75); });
    const Tensor want0 = RunOne({t, x}, [](Kernel& q, auto& v) { return q.Binary(BinaryOp::kSub, v[0], v[1]); });
    EXPECT_EQ(0, std::memcmp(o0.data(), want0.bytes.data(), n * 4));
    EXPECT_EQ(0, std::memcmp(o1.data(), t.bytes.data(), n * 4));
  }
}

// An Adam step (lr 1e-3, betas 0.9 / 0.999, step 10) over inputs p, g, m,
// v: outputs p', m', v' (twelve program steps: strips of four).
std::vector<NDObject*> AdamStep(Kernel& k, const std::vector<NDObject*>& in) {
  NDObject* m1 = k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, in[2], 0.9), k.Binary(BinaryOp::kMul, in[1], 0.1));
  NDObject* v1 = k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, in[3], 0.999),
                          k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kMul, in[1], in[1]), 0.001));
  NDObject* den = k.Binary(BinaryOp::kAdd, k.Unary(UnaryOp::kSqrt, k.Binary(BinaryOp::kDiv, v1, 0.00995512)), 1e-8);
  NDObject* upd = k.Binary(BinaryOp::kDiv, k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kDiv, m1, 0.651322), 1e-3), den);
  return std::vector<NDObject*>{k.Binary(BinaryOp::kSub, in[0], upd), m1, v1};
}

// Fused programs over buffers that start off a vector boundary (RunChainF
// then takes the lanes up to the first written stream's boundary in a
// masked pass): every stream at the same offset, and inputs and outputs at
// different ones, for a program in strips of eight (4 steps) and one in
// strips of four (Adam's, 12 steps), on every target. The bits equal the
// same kernel over 64-byte-aligned copies, and nothing outside the outputs
// is written.
TEST(KernelsFused, ProgramsOverMisalignedBuffers) {
  auto short_program = [](Kernel& k, const std::vector<NDObject*>& in) {
    NDObject* t = k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, in[0], 1.5), in[1]), 0.75);
    return std::vector<NDObject*>{k.Binary(BinaryOp::kSub, t, in[0]), t};
  };
  for (int program = 0; program < 2; ++program) {
    const int nin = program == 0 ? 2 : 4;
    for (int64_t n : {255, 300, 700, 4099}) {
      std::vector<std::vector<double>> vals;
      for (int i = 0; i < nin; ++i) vals.push_back(Values(DType::kFloat32, n, 70 + 3 * n + i, i == 3 ? 0 : -1, 1));
      for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
        hwy::SetSupportedTargetsForTest(target);
        Kernel k;  // decoded for this target
        std::vector<NDObject*> loads;
        for (int i = 0; i < nin; ++i) loads.push_back(k.Load(nullptr, {n}, DType::kFloat32));
        const std::vector<NDObject*> outs = program == 0 ? short_program(k, loads) : AdamStep(k, loads);
        for (NDObject* o : outs) k.Store(nullptr, o);
        // (in offset, out offset): the same, or different.
        for (auto [ioff, ooff] : {std::pair<int64_t, int64_t>{0, 0}, {4, 4}, {13, 13}, {1, 9}, {0, 7}, {15, 0}}) {
          SCOPED_TRACE("program " + std::to_string(program) + " n=" + std::to_string(n) + " target " +
                       vm::TargetName() + " offsets " + std::to_string(ioff) + "/" + std::to_string(ooff));
          std::vector<std::vector<float>> in_store(nin), out_store(outs.size()), want_store(outs.size());
          std::vector<void*> in_ptrs, out_ptrs, aligned_in, want_ptrs;
          std::vector<std::vector<float>> aligned_store(nin);
          for (int i = 0; i < nin; ++i) {
            float* p = PlaceGuarded(in_store[i], n, ioff);
            float* a = PlaceGuarded(aligned_store[i], n, 0);
            for (int64_t j = 0; j < n; ++j) p[j] = a[j] = static_cast<float>(vals[i][j]);
            in_ptrs.push_back(p), aligned_in.push_back(a);
          }
          for (size_t o = 0; o < outs.size(); ++o) {
            out_ptrs.push_back(PlaceGuarded(out_store[o], n, ooff));
            want_ptrs.push_back(PlaceGuarded(want_store[o], n, 0));
          }
          k.Launch(std::span<void* const>(aligned_in), std::span<void* const>(want_ptrs));
          k.Launch(std::span<void* const>(in_ptrs), std::span<void* const>(out_ptrs));
          for (size_t o = 0; o < outs.size(); ++o) {
            const float* got = static_cast<const float*>(out_ptrs[o]);
            EXPECT_EQ(0, std::memcmp(got, want_ptrs[o], static_cast<size_t>(n) * 4)) << "output " << o;
            ExpectGuards(got, n, o);
          }
        }
      }
      hwy::SetSupportedTargetsForTest(0);
    }
  }
}

// An elementwise chain longer than one program (kMaxChainSteps) runs as
// several programs in one direct stage, the later ones reading the earlier
// ones' values from scratch: the pointer recipe (SetupDirect) lists each
// program's pointers in turn. The bits equal the ops run one by one.
TEST(KernelsFused, DirectStageOfSeveralPrograms) {
  constexpr int kOps = 2 * vm::kMaxChainSteps + 7;
  auto step = [](Kernel& k, int i, NDObject* t, NDObject* x, NDObject* y) {
    return i % 3 == 0 ? k.Binary(BinaryOp::kMul, t, 0.5)
                      : k.Binary(i % 3 == 1 ? BinaryOp::kAdd : BinaryOp::kSub, t, i % 3 == 1 ? y : x);
  };
  for (int64_t n : {7, 64, 4099, 70001}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const Tensor x = MakeTensor(DType::kFloat32, {n}, Values(DType::kFloat32, n, 11 + n, -2, 2));
    const Tensor y = MakeTensor(DType::kFloat32, {n}, Values(DType::kFloat32, n, 12 + n, -2, 2));
    Kernel k;
    NDObject* xs = k.Load(nullptr, {n}, DType::kFloat32);
    NDObject* ys = k.Load(nullptr, {n}, DType::kFloat32);
    NDObject* t = xs;
    for (int i = 0; i < kOps; ++i) {
      t = step(k, i, t, xs, ys);
      if (i == 20) k.Store(nullptr, t);  // a value of the first program, stored
    }
    k.Store(nullptr, t);
    k.CodeGen();
    const vm::Executable ex(k.Bytecode());
    EXPECT_EQ(ex.direct_stages(), 1) << k.Das();
    EXPECT_GE(ex.fused_programs(), 3) << k.Das();
    std::vector<float> o0(n), o1(n);
    void* ins[] = {const_cast<uint8_t*>(x.bytes.data()), const_cast<uint8_t*>(y.bytes.data())};
    void* outs[] = {o0.data(), o1.data()};
    k.Launch(std::span<void* const>(ins), std::span<void* const>(outs));
    Tensor want = x, want20 = x;
    for (int i = 0; i < kOps; ++i) {  // t * 0.5 alone, t + y, t - x
      const Tensor& other = i % 3 == 1 ? y : x;
      want = i % 3 == 0 ? RunOne({want}, [&](Kernel& q, auto& v) { return step(q, i, v[0], nullptr, nullptr); })
                        : RunOne({want, other}, [&](Kernel& q, auto& v) { return step(q, i, v[0], v[1], v[1]); });
      if (i == 20) want20 = want;
    }
    EXPECT_EQ(0, std::memcmp(o0.data(), want20.bytes.data(), n * 4));
    EXPECT_EQ(0, std::memcmp(o1.data(), want.bytes.data(), n * 4));
  }
}

// Fused programs give the same bits on every SIMD target this machine runs
// (each forced in turn; programs decoded after the switch take that target's
// steps): full strips, single vectors and the partial last vector (masked on
// AVX2 and AVX-512, through copies before), divisions by constants (by
// reciprocal only where FMA is native), folded operands and direct tiles.
TEST(KernelsFused, ProgramsAgreeOnEveryTarget) {
  auto build = [](Kernel& k, const std::vector<NDObject*>& in) {
    std::vector<NDObject*> out = AdamStep(k, in);
    out.push_back(k.Binary(BinaryOp::kMinimum, k.Binary(BinaryOp::kDiv, in[0], 3.0), k.Unary(UnaryOp::kRelu, out[1])));
    return out;
  };
  for (int64_t n : {5, 77, 300, 4099}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::vector<Tensor> ins;
    for (int i = 0; i < 4; ++i)
      ins.push_back(MakeTensor(DType::kFloat32, {n}, Values(DType::kFloat32, n, 40 + 4 * n + i, i == 3 ? 0 : -1, 1)));
    const std::vector<Tensor> want = dvm::Run(ins, build);
    for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
      hwy::SetSupportedTargetsForTest(target);
      SCOPED_TRACE(std::string("target ") + vm::TargetName());
      const std::vector<Tensor> got = dvm::Run(ins, build);
      for (size_t o = 0; o < want.size(); ++o) EXPECT_EQ(got[o].bytes, want[o].bytes) << "output " << o;
    }
    hwy::SetSupportedTargetsForTest(0);
  }
}

// Every op codegen sizes tiles for as a fused-program op (bc::ProgramOp)
// has step functions for both strip widths, and no other op has.
TEST(KernelsFused, ProgramOpsHaveSteps) {
  for (int o = 0; o < bc::kNumOpcodes; ++o) {
    const auto op = static_cast<bc::Opcode>(o);
    const bool binary = bc::kOpInfo[o].kind == bc::Kind::kBin;
    vm::ChainStep st;
    st.op = static_cast<uint8_t>(o);
    st.operand = binary ? vm::ChainOperand::kReg : vm::ChainOperand::kNone;
    st.load = st.store = true;
    for (vm::StepWidth w : {vm::StepWidth::kStrip, vm::StepWidth::kOne, vm::StepWidth::kHalfStrip})
      EXPECT_EQ(vm::ChainStepFn(st, w) != nullptr, bc::ProgramOp(op))
          << bc::kOpInfo[o].name << " width " << static_cast<int>(w);
  }
}

// Row max and min with NaN and infinities anywhere in the row (the vector
// loop, its tail, the first and last element): a NaN anywhere makes the
// result NaN; infinities are ordinary values.
TEST(KernelsReduce, RowMaxMinWithSpecials) {
  for (ReduceOp op : {ReduceOp::kMax, ReduceOp::kMin}) {
    for (int64_t K : {1, 2, 15, 16, 17, 33, 64, 100, 4096, 4099}) {
      SCOPED_TRACE(std::string(ReduceOpName(op)) + " K=" + std::to_string(K));
      std::vector<int64_t> at = {0, K - 1, K / 2, K / 3};
      const int64_t R = 3 * static_cast<int64_t>(at.size()) + 1;
      std::vector<double> x = Values(DType::kFloat32, R * K, 4242 + K, -3, 3);
      for (size_t i = 0; i < at.size(); ++i) {
        x[(3 * i) * K + at[i]] = kNaN;
        x[(3 * i + 1) * K + at[i]] = kInf;
        x[(3 * i + 2) * K + at[i]] = -kInf;
        if (i + 1 < at.size()) x[(3 * i + 1) * K + at[i + 1]] = kNaN;
      }
      Tensor out = RunOne({MakeTensor(DType::kFloat32, {R, K}, x)},
                          [&](Kernel& k, auto& v) { return k.Reduce(op, v[0], {1}, false); });
      for (int64_t r = 0; r < R; ++r) {
        const double want = ReduceOracle(op, x, r * K, K, 1, DType::kFloat32);
        if (std::isnan(want))
          EXPECT_TRUE(std::isnan(out.at(r))) << "row " << r;
        else
          EXPECT_EQ(out.at(r), want) << "row " << r;
      }
    }
  }
}

// sum(x * x, row): the MUL is fused into the RSUM when the sum is its only
// reader. Same bits as when the square is also stored (not fused).
// Two f32 ADD/SUB/MUL in a row run as one pass (vm.cc FuseBinaryChains),
// with the intermediate rounded as the two instructions round it: every
// chain kind (register, constant, constant first, register first, row
// broadcasts in a ROW stage, exp of a difference) gives the bits of the same ops with each
// intermediate also stored (a stored intermediate is not fused), specials
// included, at row lengths that leave vector tails.
TEST(KernelsFused, BinaryChainsEqualSeparateOps) {
  for (int64_t K : {16, 37, 300}) {
    SCOPED_TRACE("K " + std::to_string(K));
    const int64_t R = 5, n = R * K;
    std::vector<double> x = Values(DType::kFloat32, n, 71, -3, 3), y = Values(DType::kFloat32, n, 72, -3, 3),
                        z = Values(DType::kFloat32, n, 73, -3, 3);
    const double specials[] = {kInf, -kInf, kNaN, 0.0, -0.0, 1e30, -1e-30};
    for (size_t i = 0; i < std::size(specials); ++i) x[i * 7] = specials[i], y[i * 5 + 1] = specials[i];
    const std::vector<Tensor> in = {MakeTensor(DType::kFloat32, {R, K}, x), MakeTensor(DType::kFloat32, {R, K}, y),
                                    MakeTensor(DType::kFloat32, {R, K}, z)};
    auto build = [&](Kernel& k, const std::vector<NDObject*>& v, bool store_steps) {
      std::vector<NDObject*> outs, steps;
      auto step = [&](NDObject* t) {
        if (store_steps) steps.push_back(t);
        return t;
      };
      auto bin = [&](BinaryOp op, NDObject* a, NDObject* b) { return k.Binary(op, a, b); };
      outs.push_back(bin(BinaryOp::kMul, step(bin(BinaryOp::kAdd, v[0], v[1])), v[2]));      // (x + y) * z
      outs.push_back(bin(BinaryOp::kSub, step(k.Binary(BinaryOp::kMul, v[0], 2.5)), v[2]));  // x * 2.5 - z
      outs.push_back(k.Binary(BinaryOp::kSub, 3.0, step(bin(BinaryOp::kSub, v[0], v[1]))));  // 3 - (x - y)
      outs.push_back(bin(BinaryOp::kSub, v[2], step(bin(BinaryOp::kMul, v[0], v[1]))));      // z - x * y
      outs.push_back(k.Binary(BinaryOp::kAdd, step(k.Binary(BinaryOp::kMul, 1.5, v[1])), -0.25));
      // Row broadcasts (ROW stage): (x - rowmax) * rowsum, then * y.
      NDObject* mx = k.Reduce(ReduceOp::kMax, v[0], {1}, true);
      NDObject* sm = k.Reduce(ReduceOp::kSum, v[2], {1}, true);
      NDObject* c = step(bin(BinaryOp::kSub, v[0], mx));
      outs.push_back(bin(BinaryOp::kMul, step(bin(BinaryOp::kMul, c, sm)), v[1]));
      outs.push_back(k.Unary(UnaryOp::kExp, step(bin(BinaryOp::kSub, v[1], mx))));  // exp(y - rowmax)
      // DIV on either side, SQRT as the second op (Adam's update).
      outs.push_back(bin(BinaryOp::kDiv, step(bin(BinaryOp::kMul, v[0], v[1])), v[2]));      // (x * y) / z
      outs.push_back(bin(BinaryOp::kDiv, v[2], step(bin(BinaryOp::kAdd, v[0], v[1]))));      // z / (x + y)
      outs.push_back(k.Unary(UnaryOp::kSqrt, step(k.Binary(BinaryOp::kDiv, v[1], 2.5))));    // sqrt(y / 2.5)
      outs.push_back(k.Binary(BinaryOp::kDiv, 3.0, step(bin(BinaryOp::kDiv, v[0], v[1]))));  // 3 / (x / y)
      // GELU(x + y), tanh form (codegen's GELU instruction; a GEMM epilogue's bias + GELU).
      NDObject* g = step(bin(BinaryOp::kAdd, v[0], v[1]));
      NDObject* g3 = bin(BinaryOp::kMul, bin(BinaryOp::kMul, g, g), g);
      NDObject* u = bin(BinaryOp::kAdd, g, k.Binary(BinaryOp::kMul, g3, 0.044715));
      NDObject* th = k.Unary(UnaryOp::kTanh, k.Binary(BinaryOp::kMul, u, 0.7978845608028654));
      outs.push_back(bin(BinaryOp::kMul, k.Binary(BinaryOp::kMul, g, 0.5), k.Binary(BinaryOp::kAdd, th, 1.0)));
      outs.insert(outs.end(), steps.begin(), steps.end());
      return outs;
    };
    {  // the chains are fused: twelve pairs in the kernel without stored steps
      Kernel k;
      std::vector<NDObject*> v;
      for (const Tensor& t : in) v.push_back(k.Load(nullptr, Dims(t.shape.data(), t.shape.size()), t.dt));
      for (NDObject* o : build(k, v, false)) k.Store(nullptr, o);
      k.CodeGen();
      const std::string das = k.Das();
      EXPECT_NE(das.find("GELU"), std::string::npos) << das;
      EXPECT_EQ(vm::Executable(k.Bytecode()).fused_chains(), 12) << das;
    }
    std::vector<Tensor> want;
    for (bool store_steps : {false, true}) {
      std::vector<Tensor> got =
          ::dvm::Run(in, [&](Kernel& k, const std::vector<NDObject*>& v) { return build(k, v, store_steps); });
      if (store_steps) {
        ASSERT_EQ(got.size(), want.size() + 13);
        for (size_t o = 0; o < want.size(); ++o) EXPECT_EQ(got[o].bytes, want[o].bytes) << "output " << o;
      } else {
        want = got;
      }
    }
  }
}

TEST(KernelsFused, SumOfSquaresEqualsMulThenSum) {
  for (int64_t K : {1, 3, 8, 15, 16, 17, 100, 768, 1000, 4096}) {
    SCOPED_TRACE("K=" + std::to_string(K));
    const int64_t R = 9;
    std::vector<double> x = Values(DType::kFloat32, R * K, 700 + K, -3, 3);
    const Tensor in = MakeTensor(DType::kFloat32, {R, K}, x);
    auto sq_sum = [](Kernel& k, NDObject* v) {
      return k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, v, v), {1}, false);
    };
    Tensor fused = RunOne({in}, [&](Kernel& k, auto& v) { return sq_sum(k, v[0]); });
    std::vector<Tensor> plain = dvm::Run({in}, [&](Kernel& k, const std::vector<NDObject*>& v) {
      NDObject* sq = k.Binary(BinaryOp::kMul, v[0], v[0]);
      return std::vector<NDObject*>{k.Reduce(ReduceOp::kSum, sq, {1}, false), sq};
    });
    ASSERT_EQ(fused.bytes.size(), plain[0].bytes.size());
    EXPECT_EQ(fused.bytes, plain[0].bytes);
  }
}

// A layernorm: its tail ((x - mean) * rstd) * gamma + beta runs as one pass
// (NormAffineHandler), with the bits of the ops run apart (the normalised
// value stored). Rows in ROW tiles and rows longer than a tile.
TEST(KernelsFused, LayerNormTailEqualsSeparateOps) {
  for (int64_t K : {17, 768, 32768, 40000}) {
    SCOPED_TRACE("K=" + std::to_string(K));
    const int64_t R = 4;
    const std::vector<Tensor> in = {
        MakeTensor(DType::kFloat32, {R, K}, Values(DType::kFloat32, R * K, 1100 + K, -3, 3)),
        MakeTensor(DType::kFloat32, {K}, Values(DType::kFloat32, K, 1200 + K, 0.5, 1.5)),
        MakeTensor(DType::kFloat32, {K}, Values(DType::kFloat32, K, 1300 + K, -1, 1))};
    auto build = [K](Kernel& k, const std::vector<NDObject*>& v, bool store_norm) {
      NDObject* mean = k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, v[0], {1}, true), 1.0 / double(K));
      NDObject* d = k.Binary(BinaryOp::kSub, v[0], mean);
      NDObject* var = k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, d, d), {1}, true),
                               1.0 / double(K));
      NDObject* y = k.Binary(BinaryOp::kMul, d, k.Unary(UnaryOp::kRsqrt, k.Binary(BinaryOp::kAdd, var, 1e-5)));
      std::vector<NDObject*> outs = {k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, y, v[1]), v[2])};
      if (store_norm) outs.push_back(y);
      return outs;
    };
    std::vector<Tensor> fused =
        dvm::Run(in, [&](Kernel& k, const std::vector<NDObject*>& v) { return build(k, v, false); });
    std::vector<Tensor> plain =
        dvm::Run(in, [&](Kernel& k, const std::vector<NDObject*>& v) { return build(k, v, true); });
    EXPECT_EQ(fused[0].bytes, plain[0].bytes);
    Kernel k;
    std::vector<NDObject*> v;
    for (const Tensor& t : in) v.push_back(k.Load(nullptr, Dims(t.shape.data(), t.shape.size()), t.dt));
    for (NDObject* o : build(k, v, false)) k.Store(nullptr, o);
    k.CodeGen();
    // Long rows: (x - mean) * rstd and * gamma + beta are chains, then one
    // pass (3), and the row scalars' own stage has var * (1 / K) + eps (1);
    // in ROW tiles the variance has an x - mean of its own (fused into its
    // sum), so the normalisation is the same three (3). Rows a multiple of
    // the chunk combine their chunks' moments over the partials: S_c / n -
    // m and (..)^2 * n + M2_c are two more (6). The row scalars' stage of
    // long rows (three ops and the rsqrt in an ELEM stage) runs as one
    // fused program instead of a pair (FuseChainPrograms).
    const vm::Executable ex(k.Bytecode());
    EXPECT_EQ(ex.fused_chains() + ex.fused_programs(), K > 16384 ? (K % 4096 == 0 ? 6 : 4) : 3) << k.Das();
    EXPECT_EQ(ex.fused_programs(), K > 16384 ? 1 : 0) << k.Das();
  }
}

// The sum of (x - m)^2 over long rows (a multiple of the chunk), m the
// row's mean or any other row value: the chunk stage that sums x also sums
// each chunk's squared deviations from its own mean, and the rows combine
// them (codegen ChunkMoments), so x is read by one stage, not two. Checked
// against float64 with the f32 m, also far from zero (1000 + noise, where
// E[x^2] - m^2 would cancel).
TEST(KernelsFused, LongRowVarianceFromChunkMoments) {
  const int64_t R = 3;
  for (int64_t K : {int64_t{20480}, int64_t{65536}}) {
    for (double center : {0.0, 1000.0}) {
      for (bool given_m : {false, true}) {
        SCOPED_TRACE("K=" + std::to_string(K) + " center=" + std::to_string(center) + (given_m ? " m given" : ""));
        const Tensor x =
            MakeTensor(DType::kFloat32, {R, K}, Values(DType::kFloat32, R * K, 31 + K, center - 2, center + 2));
        const Tensor mg = MakeTensor(DType::kFloat32, {R, 1}, {center + 0.5, center - 0.25, center});
        auto build = [&](Kernel& k, const std::vector<NDObject*>& v) {
          NDObject* m =
              given_m ? v[1] : k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, v[0], {1}, true), 1.0 / double(K));
          NDObject* d = k.Binary(BinaryOp::kSub, v[0], m);
          return std::vector<NDObject*>{k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, d, d), {1}, true), m};
        };
        std::vector<Tensor> ins = {x};
        if (given_m) ins.push_back(mg);
        const std::vector<Tensor> out = dvm::Run(ins, build);
        for (int64_t r = 0; r < R; ++r) {
          const double m = out[1].at(r);
          double want = 0;
          for (int64_t c = 0; c < K; ++c) want += (x.at(r * K + c) - m) * (x.at(r * K + c) - m);
          EXPECT_NEAR(out[0].at(r), want, 4e-6 * want) << "row " << r;
        }
        Kernel k;
        std::vector<NDObject*> v = {k.Load(nullptr, {R, K}, DType::kFloat32)};
        if (given_m) v.push_back(k.Load(nullptr, {R, 1}, DType::kFloat32));
        for (NDObject* o : build(k, v)) k.Store(nullptr, o);
        k.CodeGen();
        const vm::Executable ex(k.Bytecode());
        int reads_x = 0;
        for (const bc::Stage& st : ex.program().stages)
          reads_x += std::any_of(st.views.begin(), st.views.end(), [](const bc::View& w) { return w.tensor == 0; });
        EXPECT_EQ(reads_x, 1) << k.Das();
        // Each chunk's sum and squared deviations in one pass.
        EXPECT_EQ(ex.fused_moments(), 1) << k.Das();
      }
    }
  }
  // x gathered from every other element: the same result as the
  // contiguous copy of those elements.
  const int64_t K = 20480;
  const Tensor x2 = MakeTensor(DType::kFloat32, {R, 2 * K}, Values(DType::kFloat32, R * 2 * K, 7, -2, 2));
  std::vector<double> every_other;
  for (int64_t i = 0; i < R * K; ++i) every_other.push_back(x2.at(2 * i));
  const Tensor x1 = MakeTensor(DType::kFloat32, {R, K}, every_other);
  auto variance = [](Kernel& k, NDObject* x) {
    NDObject* d =
        k.Binary(BinaryOp::kSub, x, k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, x, {1}, true), 1.0 / K));
    k.Store(nullptr, k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, d, d), {1}, true));
  };
  Kernel strided, plain;
  const int64_t shape[] = {R, 2 * K}, start[] = {0, 0}, step[] = {1, 2};
  variance(strided, strided.StridedSliceLoad(nullptr, shape, DType::kFloat32, start, shape, step));
  variance(plain, plain.Load(nullptr, {R, K}, DType::kFloat32));
  strided.CodeGen();
  plain.CodeGen();
  EXPECT_EQ(vm::Executable(strided.Bytecode()).fused_moments(), 1) << strided.Das();
  EXPECT_EQ(vm::Executable(plain.Bytecode()).fused_moments(), 1) << plain.Das();
  std::vector<float> a(R), b(R);
  void* in_a[] = {const_cast<uint8_t*>(x2.bytes.data())};
  void* in_b[] = {const_cast<uint8_t*>(x1.bytes.data())};
  void* out_a[] = {a.data()};
  void* out_b[] = {b.data()};
  strided.Launch(std::span<void* const>(in_a), std::span<void* const>(out_a));
  plain.Launch(std::span<void* const>(in_b), std::span<void* const>(out_b));
  EXPECT_EQ(a, b);
}

// Squared deviations from each row's mean, summed (a layernorm's variance):
// SUB of the row value, MUL and RSUM run as one handler (FuseSquareSums),
// and that runs inside the mean's RSUM (FuseMoments): one pass over x.
// Short rows (ROW tiles of several rows), and long ones (chunked: each
// chunk's moments, then combined). Within 2e-6 of the float64 sum, whether
// d is stored too or not (the same bits). Where a row's (chunk's) first
// vector, the shift, is far from its mean, the one-pass formula would
// cancel (~1e-4 off for the long rows here): the handler takes the two
// passes, with the bits of the ops run apart (kernels of their own). Rows
// with an inf or a NaN give NaN, as the ops run apart do.
TEST(KernelsFused, SumOfSquaredDeviationsInOnePass) {
  for (int64_t K : {1, 17, 768, 5000, 32768}) {
    // data: 0 around 0, 1 around 1000, 2 each chunk's first 16 lanes 1000
    // above the rest, 3 an inf and a NaN row.
    for (int data = 0; data < 4; ++data) {
      SCOPED_TRACE("K=" + std::to_string(K) + " data " + std::to_string(data));
      const int64_t R = 5;  // 5 rows: also a row group (K = 32768)
      std::vector<double> x =
          Values(DType::kFloat32, R * K, 900 + K + data, data == 1 ? 997.0 : -3.0, data == 1 ? 1003.0 : 3.0);
      if (data == 2)
        for (int64_t i = 0; i < R * K; ++i) x[i] += (i % K) % 4096 < 16 ? 1000.0 : 0.0;
      if (data == 3) {
        x[K / 2] = std::numeric_limits<double>::infinity();
        x[K + K / 3] = std::numeric_limits<double>::quiet_NaN();
      }
      const Tensor in = MakeTensor(DType::kFloat32, {R, K}, x);
      auto build = [K](Kernel& k, NDObject* v, bool store_dev) {
        NDObject* mean = k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, v, {1}, true), 1.0 / double(K));
        NDObject* d = k.Binary(BinaryOp::kSub, v, mean);
        std::vector<NDObject*> outs = {k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, d, d), {1}, false)};
        if (store_dev) outs.push_back(d);
        return outs;
      };
      std::vector<Tensor> fused =
          dvm::Run({in}, [&](Kernel& k, const std::vector<NDObject*>& v) { return build(k, v[0], false); });
      std::vector<Tensor> plain =
          dvm::Run({in}, [&](Kernel& k, const std::vector<NDObject*>& v) { return build(k, v[0], true); });
      ASSERT_EQ(fused[0].bytes.size(), plain[0].bytes.size());
      if (data != 3) {
        EXPECT_EQ(fused[0].bytes, plain[0].bytes);
      }
      // As two kernels (the squares stored, then summed), as an unfused
      // graph runs them.
      std::vector<Tensor> squares = dvm::Run({in}, [&](Kernel& k, const std::vector<NDObject*>& v) {
        NDObject* mean = k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, v[0], {1}, true), 1.0 / double(K));
        NDObject* d = k.Binary(BinaryOp::kSub, v[0], mean);
        return std::vector<NDObject*>{k.Binary(BinaryOp::kMul, d, d)};
      });
      std::vector<Tensor> apart = dvm::Run({squares[0]}, [&](Kernel& k, const std::vector<NDObject*>& v) {
        return std::vector<NDObject*>{k.Reduce(ReduceOp::kSum, v[0], {1}, false)};
      });
      for (int64_t r = 0; r < R; ++r) {
        double mean = 0, want = 0;
        for (int64_t c = 0; c < K; ++c) mean += static_cast<float>(x[r * K + c]);
        mean /= double(K);
        for (int64_t c = 0; c < K; ++c) {
          const double dev = static_cast<float>(x[r * K + c]) - mean;
          want += dev * dev;
        }
        if (!std::isfinite(want)) {
          EXPECT_TRUE(std::isnan(fused[0].at(r))) << "row " << r;
          EXPECT_TRUE(std::isnan(apart[0].at(r))) << "row " << r;
          continue;
        }
        EXPECT_NEAR(fused[0].at(r), want, 2e-6 * want) << "row " << r;
      }
      // A shift far off, in rows of one tile's chunk: the two passes' bits.
      if (data == 2 && (K == 768 || K == 5000)) {
        EXPECT_EQ(fused[0].bytes, apart[0].bytes);
      }
      Kernel k;
      NDObject* v = k.Load(nullptr, {R, K}, DType::kFloat32);
      for (NDObject* o : build(k, v, false)) k.Store(nullptr, o);
      k.CodeGen();
      // (K = 1: a sum of one element is no reduction)
      const vm::Executable ex(k.Bytecode());
      EXPECT_EQ(ex.fused_deviations(), K > 1 ? 1 : 0) << k.Das();
      EXPECT_EQ(ex.fused_moments(), K > 1 ? 1 : 0) << k.Das();
    }
  }
}

// Two variances (x's and y's) in one ROW stage (short rows) or in two
// chunked stages (long ones): each pair of sums runs as one pass with a
// register of the VM's own, one per pair in a stage, so neither overwrites
// the other's value before its copy.
TEST(KernelsFused, TwoMomentsInOneStage) {
  for (int64_t K : {768, 32768}) {
    SCOPED_TRACE("K=" + std::to_string(K));
    const int64_t R = 3;
    const Tensor x = MakeTensor(DType::kFloat32, {R, K}, Values(DType::kFloat32, R * K, 41, -3, 3));
    const Tensor y = MakeTensor(DType::kFloat32, {R, K}, Values(DType::kFloat32, R * K, 43, 90, 110));
    auto build = [K](Kernel& k, const std::vector<NDObject*>& v) {
      std::vector<NDObject*> outs;
      for (NDObject* t : v) {
        NDObject* mean = k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, t, {1}, true), 1.0 / double(K));
        NDObject* d = k.Binary(BinaryOp::kSub, t, mean);
        outs.push_back(k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, d, d), {1}, false));
      }
      return outs;
    };
    const std::vector<Tensor> out = dvm::Run({x, y}, build);
    for (int t = 0; t < 2; ++t) {
      const Tensor& in = t == 0 ? x : y;
      for (int64_t r = 0; r < R; ++r) {
        double mean = 0, want = 0;
        for (int64_t c = 0; c < K; ++c) mean += in.at(r * K + c);
        mean /= double(K);
        for (int64_t c = 0; c < K; ++c) want += (in.at(r * K + c) - mean) * (in.at(r * K + c) - mean);
        EXPECT_NEAR(out[t].at(r), want, 2e-6 * want) << "output " << t << " row " << r;
      }
    }
    Kernel k;
    std::vector<NDObject*> v = {k.Load(nullptr, {R, K}, DType::kFloat32), k.Load(nullptr, {R, K}, DType::kFloat32)};
    for (NDObject* o : build(k, v)) k.Store(nullptr, o);
    k.CodeGen();
    const vm::Executable ex(k.Bytecode());
    EXPECT_EQ(ex.fused_moments(), 2) << k.Das();
    // Short rows: one stage, two registers of the VM's own; long rows: a
    // chunked stage each, which reuse one.
    EXPECT_EQ(ex.num_regs(), int(ex.program().num_regs) + (K == 768 ? 2 : 1)) << k.Das();
  }
}

// A layernorm's statistics kept for the backward pass (PyTorch's
// native_layer_norm returns the mean too): the mean, an output as well, is
// written into it as it is computed (store forwarding), and the sums still
// run in one pass (FuseMoments looks through the forwarding). Short rows
// and long (chunked) ones; the mean and the variance against float64.
TEST(KernelsFused, MomentsWithTheMeanStored) {
  for (int64_t K : {768, 32768}) {
    SCOPED_TRACE("K=" + std::to_string(K));
    const int64_t R = 3;
    const Tensor x = MakeTensor(DType::kFloat32, {R, K}, Values(DType::kFloat32, R * K, 47, -2, 4));
    auto build = [K](Kernel& k, const std::vector<NDObject*>& v) {
      NDObject* mean = k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, v[0], {1}, true), 1.0 / double(K));
      NDObject* d = k.Binary(BinaryOp::kSub, v[0], mean);
      NDObject* var = k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, d, d), {1}, false);
      return std::vector<NDObject*>{mean, var};
    };
    const std::vector<Tensor> out = dvm::Run({x}, build);
    for (int64_t r = 0; r < R; ++r) {
      double mean = 0, want = 0;
      for (int64_t c = 0; c < K; ++c) mean += x.at(r * K + c);
      mean /= double(K);
      for (int64_t c = 0; c < K; ++c) want += (x.at(r * K + c) - mean) * (x.at(r * K + c) - mean);
      EXPECT_NEAR(out[0].at(r), mean, 1e-5 + 1.3e-6 * std::abs(mean)) << "row " << r;
      EXPECT_NEAR(out[1].at(r), want, 2e-6 * want) << "row " << r;
    }
    Kernel k;
    NDObject* v = k.Load(nullptr, {R, K}, DType::kFloat32);
    for (NDObject* o : build(k, {v})) k.Store(nullptr, o);
    k.CodeGen();
    const vm::Executable ex(k.Bytecode());
    EXPECT_EQ(ex.fused_moments(), 1) << k.Das();
  }
}

// Softmax: exp(x - max) and its row sum run as one pass (FuseChainSums),
// with the bits of the two instructions run apart (kernels of their own);
// long rows also keep exp(x - max) in the output until the division
// overwrites it in place (SetupOutputAliases). Short rows (ROW tiles),
// tails, long rows (chunked, a row group), masked lanes (exp -> 0).
TEST(KernelsFused, ExpSumEqualsSeparateOps) {
  for (int64_t K : {1, 17, 768, 5000, 40000}) {
    SCOPED_TRACE("K=" + std::to_string(K));
    const int64_t R = 5;
    std::vector<double> x = Values(DType::kFloat32, R * K, 700 + K, -8, 8);
    for (int64_t i = 3; i < R * K; i += 7) x[i] = -1e9;  // masked: a lane far below -104
    const Tensor in = MakeTensor(DType::kFloat32, {R, K}, x);
    auto exp_dev = [](Kernel& k, NDObject* v) {
      return k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, v, k.Reduce(ReduceOp::kMax, v, {1}, true)));
    };
    std::vector<Tensor> fused = dvm::Run({in}, [&](Kernel& k, const std::vector<NDObject*>& v) {
      NDObject* e = exp_dev(k, v[0]);
      NDObject* s = k.Reduce(ReduceOp::kSum, e, {1}, true);
      return std::vector<NDObject*>{k.Binary(BinaryOp::kDiv, e, s), s};
    });
    const Tensor e = RunOne({in}, [&](Kernel& k, const std::vector<NDObject*>& v) { return exp_dev(k, v[0]); });
    const Tensor s = RunOne(
        {e}, [&](Kernel& k, const std::vector<NDObject*>& v) { return k.Reduce(ReduceOp::kSum, v[0], {1}, true); });
    const Tensor y = RunOne(
        {e, s}, [&](Kernel& k, const std::vector<NDObject*>& v) { return k.Binary(BinaryOp::kDiv, v[0], v[1]); });
    EXPECT_EQ(fused[1].bytes, s.bytes);
    EXPECT_EQ(fused[0].bytes, y.bytes);
    Kernel k;
    NDObject* v = k.Load(nullptr, {R, K}, DType::kFloat32);
    NDObject* ex = exp_dev(k, v);
    k.Store(nullptr, k.Binary(BinaryOp::kDiv, ex, k.Reduce(ReduceOp::kSum, ex, {1}, true)));
    k.CodeGen();
    const vm::Executable ee(k.Bytecode());
    EXPECT_EQ(ee.fused_chain_sums(), K > 1 ? 1 : 0) << k.Das();
    EXPECT_EQ(ee.output_aliases(), K > 16384 ? 1 : 0) << k.Das();
  }
}

// A long-row softmax whose output is stored transposed: the division reads
// exp(x - max) where it does not write, so that value keeps a workspace of
// its own (no output alias), and the result is still the softmax.
TEST(KernelsFused, TransposedSoftmaxKeepsItsWorkspace) {
  const int64_t R = 3, K = 20000;
  const Tensor in = MakeTensor(DType::kFloat32, {R, K}, Values(DType::kFloat32, R * K, 77, -4, 4));
  auto softmax = [](Kernel& k, NDObject* v) {
    NDObject* e = k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, v, k.Reduce(ReduceOp::kMax, v, {1}, true)));
    return k.Binary(BinaryOp::kDiv, e, k.Reduce(ReduceOp::kSum, e, {1}, true));
  };
  const Tensor y = RunOne({in}, [&](Kernel& k, const std::vector<NDObject*>& v) { return softmax(k, v[0]); });
  const Tensor yt = RunOne({in}, [&](Kernel& k, const std::vector<NDObject*>& v) {
    const int64_t perm[] = {1, 0};
    return k.Transpose(softmax(k, v[0]), Dims(perm, 2));
  });
  ASSERT_EQ(yt.shape, (Shape{K, R}));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < K; c += 97) ASSERT_EQ(yt.at(c * R + r), y.at(r * K + c)) << r << "," << c;
  Kernel k;
  const int64_t perm[] = {1, 0};
  k.Store(nullptr, k.Transpose(softmax(k, k.Load(nullptr, {R, K}, DType::kFloat32)), Dims(perm, 2)));
  k.CodeGen();
  EXPECT_EQ(vm::Executable(k.Bytecode()).output_aliases(), 0) << k.Das();
}

// Two workspaces read where the output is written (both reduced values of
// the final MAX): at most one may live in the output, or the stage that
// writes both would overwrite one with the other (found by the random test).
TEST(KernelsFused, OneWorkspacePerOutputAlias) {
  const int64_t R = 5, K = 7;
  const Tensor x = MakeTensor(DType::kFloat32, {R, K}, Values(DType::kFloat32, R * K, 91, -2, 2));
  const Tensor y = MakeTensor(DType::kFloat32, {R, K}, Values(DType::kFloat32, R * K, 92, -2, 2));
  auto build = [](Kernel& k, NDObject* a, NDObject* b) {
    NDObject* m6 = k.Reduce(ReduceOp::kMin, k.Reduce(ReduceOp::kMax, b, {1}, true), {1}, false);
    return k.Binary(BinaryOp::kMaximum, k.Reduce(ReduceOp::kMin, a, {1}, false), m6);
  };
  const Tensor out = RunOne({x, y}, [&](Kernel& k, const std::vector<NDObject*>& v) { return build(k, v[0], v[1]); });
  for (int64_t r = 0; r < R; ++r) {
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t c = 0; c < K; ++c) lo = std::min(lo, x.at(r * K + c)), hi = std::max(hi, y.at(r * K + c));
    EXPECT_EQ(out.at(r), std::max(lo, hi)) << r;
  }
  Kernel k;
  k.Store(nullptr, build(k, k.Load(nullptr, {R, K}, DType::kFloat32), k.Load(nullptr, {R, K}, DType::kFloat32)));
  k.CodeGen();
  EXPECT_LE(vm::Executable(k.Bytecode()).output_aliases(), 1) << k.Das();
}

// A softmax over short rows: the exp(x - max) chain (with its sum) writes
// straight into the output and the division runs there in place
// (Executable::ForwardProducers). Same bits as the ops run as separate
// kernels, for rows shorter than, equal to and longer than a vector, rows
// whose length is not a multiple of 16 (no forwarding at run time for
// those tiles), and several rows per tile. When exp(x - max) is also an
// output of its own, it keeps its register and nothing is forwarded.
TEST(KernelsFused, ProducerForwardedIntoOutput) {
  auto exp_dev = [](Kernel& k, NDObject* v) {
    return k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, v, k.Reduce(ReduceOp::kMax, v, {1}, true)));
  };
  for (int64_t K : {1, 7, 16, 33, 256, 1000, 4096}) {
    SCOPED_TRACE("K=" + std::to_string(K));
    const int64_t R = 9;
    std::vector<double> x = Values(DType::kFloat32, R * K, 1700 + K, -6, 6);
    for (int64_t i = 5; i < R * K; i += 11) x[i] = -1e9;
    const Tensor in = MakeTensor(DType::kFloat32, {R, K}, x);
    const Tensor e = RunOne({in}, [&](Kernel& k, const std::vector<NDObject*>& v) { return exp_dev(k, v[0]); });
    const Tensor s = RunOne(
        {e}, [&](Kernel& k, const std::vector<NDObject*>& v) { return k.Reduce(ReduceOp::kSum, v[0], {1}, true); });
    const Tensor want = RunOne(
        {e, s}, [&](Kernel& k, const std::vector<NDObject*>& v) { return k.Binary(BinaryOp::kDiv, v[0], v[1]); });
    const Tensor got = RunOne({in}, [&](Kernel& k, const std::vector<NDObject*>& v) {
      NDObject* ex = exp_dev(k, v[0]);
      return k.Binary(BinaryOp::kDiv, ex, k.Reduce(ReduceOp::kSum, ex, {1}, true));
    });
    EXPECT_EQ(got.bytes, want.bytes);
    std::vector<Tensor> both = dvm::Run({in}, [&](Kernel& k, const std::vector<NDObject*>& v) {
      NDObject* ex = exp_dev(k, v[0]);
      return std::vector<NDObject*>{k.Binary(BinaryOp::kDiv, ex, k.Reduce(ReduceOp::kSum, ex, {1}, true)), ex};
    });
    EXPECT_EQ(both[0].bytes, want.bytes);
    EXPECT_EQ(both[1].bytes, e.bytes);
    // exp(x - max) read again after the division: it must survive it.
    std::vector<Tensor> later = dvm::Run({in}, [&](Kernel& k, const std::vector<NDObject*>& v) {
      NDObject* ex = exp_dev(k, v[0]);
      NDObject* y = k.Binary(BinaryOp::kDiv, ex, k.Reduce(ReduceOp::kSum, ex, {1}, true));
      return std::vector<NDObject*>{y, k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, y, 0.0), ex)};
    });
    EXPECT_EQ(later[0].bytes, want.bytes);
    for (int64_t i = 0; i < R * K; ++i) ASSERT_EQ(later[1].at(i), e.at(i) + 0.0 * want.at(i)) << i;
    for (bool also_exp : {false, true}) {
      Kernel k;
      NDObject* ex = exp_dev(k, k.Load(nullptr, {R, K}, DType::kFloat32));
      k.Store(nullptr, k.Binary(BinaryOp::kDiv, ex, k.Reduce(ReduceOp::kSum, ex, {1}, true)));
      if (also_exp) k.Store(nullptr, ex);
      k.CodeGen();
      const vm::Executable ee(k.Bytecode());
      EXPECT_EQ(ee.forwarded_producers(), also_exp || K == 1 ? 0 : 1) << k.Das();
    }
  }
}

// A row repeated over the rows of a tile (a bias, gamma, beta) is expanded
// once per thread and launch (Executable::FindInvariantLoads), including
// for a tensor's last tile split into whole vectors and a tail (windows not
// starting on a row). Bits as on the host; a second launch with another
// row must see that row, not the first launch's expansion.
TEST(KernelsFused, RowInvariantLoadsExpandedPerLaunch) {
  for (int64_t K : {7, 16, 33, 768, 1000}) {
    for (int64_t R : {2, 3, 64, 1023}) {
      SCOPED_TRACE("R=" + std::to_string(R) + " K=" + std::to_string(K));
      Kernel k(KernelType::kDynamic);
      NDObject* x = k.Load(nullptr, {-1, -1}, DType::kFloat32);
      NDObject* b = k.Load(nullptr, {-1}, DType::kFloat32);
      NDObject* res = k.Load(nullptr, {-1, -1}, DType::kFloat32);
      k.Store(nullptr, k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, x, b), res));
      std::vector<double> xv = Values(DType::kFloat32, R * K, 31 + K, -3, 3);
      std::vector<double> rv = Values(DType::kFloat32, R * K, 32 + K, -3, 3);
      std::vector<float> xs(xv.begin(), xv.end()), rs(rv.begin(), rv.end()), out(R * K);
      for (int launch = 0; launch < 2; ++launch) {
        std::vector<double> bv = Values(DType::kFloat32, K, 33 + K + launch, -2, 2);
        std::vector<float> bs(bv.begin(), bv.end());
        std::vector<TensorArg> in = {{xs.data(), {R, K}, 0}, {bs.data(), {K}, 0}, {rs.data(), {R, K}, 0}};
        std::vector<TensorArg> o = {{out.data(), {}, out.size() * 4}};
        k.Launch(in, o);
        for (int64_t i = 0; i < R * K; ++i) {
          const float want = xs[i] * bs[i % K] + rs[i];
          ASSERT_EQ(std::memcmp(&want, &out[i], 4), 0) << "launch " << launch << " i " << i;
        }
      }
    }
  }
  // The layernorm over [128, 768] runs several rows per tile, gamma and
  // beta read row by row, with the bits of gamma and beta given as full
  // [128, 768] tensors (read in place).
  const int64_t R = 128, H = 768;
  std::vector<double> x = Values(DType::kFloat32, R * H, 41, -2, 3), g = Values(DType::kFloat32, H, 42, 0.5, 1.5),
                      bt = Values(DType::kFloat32, H, 43, -0.5, 0.5);
  std::vector<double> gf(R * H), bf(R * H);
  for (int64_t i = 0; i < R * H; ++i) gf[i] = g[i % H], bf[i] = bt[i % H];
  auto ln = [&](Kernel& k, NDObject* v, NDObject* gm, NDObject* bb) {
    NDObject* mean = k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, v, {1}, true), 1.0 / H);
    NDObject* d = k.Binary(BinaryOp::kSub, v, mean);
    NDObject* var =
        k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, d, d), {1}, true), 1.0 / H);
    NDObject* y = k.Binary(BinaryOp::kMul, d, k.Unary(UnaryOp::kRsqrt, k.Binary(BinaryOp::kAdd, var, 1e-5)));
    return k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, y, gm), bb);
  };
  const Tensor xt = MakeTensor(DType::kFloat32, {R, H}, x);
  const Tensor got = RunOne({xt, MakeTensor(DType::kFloat32, {H}, g), MakeTensor(DType::kFloat32, {H}, bt)},
                            [&](Kernel& k, auto& v) { return ln(k, v[0], v[1], v[2]); });
  const Tensor want = RunOne({xt, MakeTensor(DType::kFloat32, {R, H}, gf), MakeTensor(DType::kFloat32, {R, H}, bf)},
                             [&](Kernel& k, auto& v) { return ln(k, v[0], v[1], v[2]); });
  EXPECT_EQ(got.bytes, want.bytes);
  Kernel k;
  k.Store(nullptr, ln(k, k.Load(nullptr, {R, H}, DType::kFloat32), k.Load(nullptr, {H}, DType::kFloat32),
                      k.Load(nullptr, {H}, DType::kFloat32)));
  k.CodeGen();
  // gamma and beta are read in place by the fused affine pass, row by row.
  const vm::Executable ex(k.Bytecode());
  EXPECT_EQ(ex.invariant_loads(), 0) << k.Das();
  EXPECT_EQ(ex.periodic_loads(), 2) << k.Das();
}

// A row-invariant operand of a fused chain (a bias) is read in place, row
// by row (ChainHandler kind 3), where tiles hold several rows: the bits of
// the same program with the operand given as a full [R, K] tensor (read
// element for element), for y and z operands, swapped commuting operands,
// both at once, two rows, a unary second op, tiles that start and end
// inside rows; and the forms it cannot take keep the expansion.
TEST(KernelsFused, RowInvariantOperandsReadInPlace) {
  using F = std::function<NDObject*(Kernel&, NDObject*, NDObject*, NDObject*, NDObject*)>;
  auto bin = [](BinaryOp op) { return [op](Kernel& k, NDObject* a, NDObject* b) { return k.Binary(op, a, b); }; };
  auto add = bin(BinaryOp::kAdd), sub = bin(BinaryOp::kSub), mul = bin(BinaryOp::kMul), div = bin(BinaryOp::kDiv);
  struct Form {
    const char* name;
    F f;
    int periodic;  // row-invariant loads read in place
  };
  const std::vector<Form> forms = {
      {"(x + b) + r", [&](Kernel& k, auto* x, auto* b, auto*, auto* r) { return add(k, add(k, x, b), r); }, 1},
      {"(b + x) * r", [&](Kernel& k, auto* x, auto* b, auto*, auto* r) { return mul(k, add(k, b, x), r); }, 1},
      {"(x * r) - b", [&](Kernel& k, auto* x, auto* b, auto*, auto* r) { return sub(k, mul(k, x, r), b); }, 1},
      {"(x - r) / b", [&](Kernel& k, auto* x, auto* b, auto*, auto* r) { return div(k, sub(k, x, r), b); }, 1},
      {"b - (x / b)", [&](Kernel& k, auto* x, auto* b, auto*, auto*) { return sub(k, b, div(k, x, b)); }, 1},
      {"(x * b) + c", [&](Kernel& k, auto* x, auto* b, auto* c, auto*) { return add(k, mul(k, x, b), c); }, 2},
      {"exp(x - b)", [&](Kernel& k, auto* x, auto* b, auto*, auto*) { return k.Unary(UnaryOp::kExp, sub(k, x, b)); },
       1},
      {"(b - x) + r", [&](Kernel& k, auto* x, auto* b, auto*, auto* r) { return add(k, sub(k, b, x), r); }, 0},
  };
  for (const Form& form : forms) {
    for (auto [R, K] : std::vector<std::pair<int64_t, int64_t>>{{3, 7}, {64, 768}, {5, 33}, {1023, 16}, {300, 48}}) {
      SCOPED_TRACE(std::string(form.name) + " R=" + std::to_string(R) + " K=" + std::to_string(K));
      const Tensor x = MakeTensor(DType::kFloat32, {R, K}, Values(DType::kFloat32, R * K, 51, -3, 3));
      const Tensor r = MakeTensor(DType::kFloat32, {R, K}, Values(DType::kFloat32, R * K, 52, -3, 3));
      std::vector<double> bv = Values(DType::kFloat32, K, 53, 0.5, 2), cv = Values(DType::kFloat32, K, 54, -2, 2);
      std::vector<double> bf(R * K), cf(R * K);
      for (int64_t i = 0; i < R * K; ++i) bf[i] = bv[i % K], cf[i] = cv[i % K];
      auto body = [&](Kernel& k, auto& v) { return form.f(k, v[0], v[1], v[2], v[3]); };
      const Tensor got =
          RunOne({x, MakeTensor(DType::kFloat32, {K}, bv), MakeTensor(DType::kFloat32, {K}, cv), r}, body);
      const Tensor want =
          RunOne({x, MakeTensor(DType::kFloat32, {R, K}, bf), MakeTensor(DType::kFloat32, {R, K}, cf), r}, body);
      EXPECT_EQ(got.bytes, want.bytes);
      Kernel k;
      NDObject* xs = k.Load(nullptr, {R, K}, DType::kFloat32);
      NDObject* bs = k.Load(nullptr, {K}, DType::kFloat32);
      NDObject* cs = k.Load(nullptr, {K}, DType::kFloat32);
      NDObject* rs = k.Load(nullptr, {R, K}, DType::kFloat32);
      k.Store(nullptr, form.f(k, xs, bs, cs, rs));
      k.CodeGen();
      const vm::Executable ex(k.Bytecode());
      if (ex.invariant_loads() + ex.periodic_loads() > 0) {  // tiles of several rows
        EXPECT_EQ(ex.periodic_loads(), form.periodic) << k.Das();
      }
      if (R * K >= 4096) {
        EXPECT_GT(ex.invariant_loads() + ex.periodic_loads(), 0) << k.Das();
      }
    }
  }
}

// ---- data movement: loads and stores of every dtype, every path ------------------------

// Contiguous runs (vector + scalar tail), strided runs (element at a time),
// broadcast (stride 0) and padded stores.
TEST(KernelsMove, LoadStoreAllDTypesAllPaths) {
  const DType all[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt32, DType::kInt8, DType::kBool};
  for (DType dt : all) {
    for (int64_t n : kLengths) {
      SCOPED_TRACE(std::string(DTypeName(dt)) + " n=" + std::to_string(n));
      std::vector<double> x = Values(dt, 2 * n + 1, 13000 + n);
      AddSpecials(dt, x);
      Tensor in = MakeTensor(dt, {2 * n + 1}, x);
      // copy of a contiguous slice [1, n + 1)
      {
        int64_t full[] = {2 * n + 1}, start[] = {1}, size[] = {n};
        Kernel k;
        auto* v = k.SliceLoad(nullptr, Dims(full, 1), dt, Dims(start, 1), Dims(size, 1));
        k.Store(nullptr, v);
        k.CodeGen();
        Bytes out(n * DTypeSize(dt));
        void* ip[] = {in.bytes.data()};
        void* op[] = {out.data()};
        k.Launch(std::span<void* const>(ip, 1), std::span<void* const>(op, 1));
        EXPECT_EQ(0, std::memcmp(out.data(), in.bytes.data() + DTypeSize(dt), out.size())) << "contiguous slice";
      }
      // every other element (step 2), stored padded by 3 on each side
      {
        int64_t full[] = {2 * n + 1}, start[] = {0}, end[] = {2 * n}, step[] = {2};
        int64_t padded[] = {n + 6}, before[] = {3};
        Kernel k;
        auto* v = k.StridedSliceLoad(nullptr, Dims(full, 1), dt, Dims(start, 1), Dims(end, 1), Dims(step, 1));
        k.PadStore(nullptr, v, Dims(padded, 1), Dims(before, 1), 1.0);
        k.CodeGen();
        Bytes out((n + 6) * DTypeSize(dt));
        void* ip[] = {in.bytes.data()};
        void* op[] = {out.data()};
        k.Launch(std::span<void* const>(ip, 1), std::span<void* const>(op, 1));
        Tensor got{dt, {n + 6}, out};
        std::vector<double> want(n + 6, 1.0);
        for (int64_t i = 0; i < n; ++i) want[3 + i] = x[2 * i];
        EXPECT_TRUE(Matches(got, want, 0)) << "strided load, padded store";
      }
      // broadcast of element 0 to [2, n]
      {
        Tensor one = MakeTensor(dt, {1}, {x.back()});
        Tensor got = RunOne({one}, [&](Kernel& k, auto& v) { return k.Broadcast(v[0], {2, n}); });
        EXPECT_TRUE(Matches(got, std::vector<double>(2 * n, x.back()), 0)) << "broadcast";
      }
    }
  }
}

// ---- accuracy of the transcendental functions ---------------------------------------------

// Error of an f32 result in ulps of the exact value `y` (f64).
double UlpError(float r, double y) {
  if (std::isnan(y) || std::isnan(r)) return std::isnan(y) && std::isnan(r) ? 0 : kInf;
  if (std::isinf(r) || std::isinf(y)) {
    if (static_cast<double>(r) == y) return 0;
    if (std::isinf(r) && std::fabs(y) >= 3.4028235677973366e38) return 0;  // rounds to inf
    return kInf;
  }
  int e = 0;
  std::frexp(y, &e);
  const double ulp = y == 0 ? std::ldexp(1.0, -149) : std::ldexp(1.0, std::max(e - 1, -126) - 23);
  return std::fabs(static_cast<double>(r) - y) / ulp;
}

std::vector<float> Grid(double lo, double hi, int n) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = static_cast<float>(lo + (hi - lo) * i / (n - 1));
  return v;
}
// Every `step`-th f32 bit pattern from lo to hi.
std::vector<float> BitSweep(uint32_t lo, uint32_t hi, int n) {
  std::vector<float> v;
  const uint64_t step = std::max<uint64_t>(1, (uint64_t{hi} - lo) / n);
  for (uint64_t b = lo; b <= hi; b += step) v.push_back(BitsF32(static_cast<uint32_t>(b)));
  return v;
}

std::vector<float> RunUnaryF32(UnaryOp op, const std::vector<float>& x) {
  Kernel k;
  const int64_t n = static_cast<int64_t>(x.size());
  k.Store(nullptr, k.Unary(op, k.Load(nullptr, Dims(&n, 1), DType::kFloat32)));
  k.CodeGen();
  std::vector<float> y(x.size());
  void* ip[] = {const_cast<float*>(x.data())};
  void* op_[] = {y.data()};
  k.Launch(std::span<void* const>(ip, 1), std::span<void* const>(op_, 1));
  return y;
}

struct Accuracy {
  double max_ulp = 0, at = 0;
};
Accuracy MeasureUlp(UnaryOp op, double (*f)(double), const std::vector<float>& x) {
  std::vector<float> y = RunUnaryF32(op, x);
  Accuracy a;
  for (size_t i = 0; i < x.size(); ++i) {
    const double e = UlpError(y[i], f(x[i]));
    if (e > a.max_ulp) a = {e, x[i]};
  }
  return a;
}

void Report(const std::string& name, double value, double at) {
  std::printf("[ measured ] %-34s %.9g (at x = %.9g) on %s\n", name.c_str(), value, at, vm::TargetName());
  ::testing::Test::RecordProperty(name, std::to_string(value));
}

double Exp(double x) { return std::exp(x); }
double Log(double x) { return std::log(x); }
double Tanh(double x) { return std::tanh(x); }
double Sin(double x) { return std::sin(x); }
double Cos(double x) { return std::cos(x); }
double Sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

TEST(KernelsAccuracy, ErfApproxMaxAbsError) {
  // Dense grid on [-6, 6] (2^21 + 1 points, step ~5.7e-6), through the scalar
  // twin and through the VM's ERF handler (they must agree bit for bit).
  const int n = (1 << 21) + 1;
  std::vector<float> x = Grid(-6, 6, n);
  std::vector<float> y = RunUnaryF32(UnaryOp::kErf, x);
  double worst = 0, at = 0, max_mag = 0, mag_at = 0;
  int twin_diff = 0;
  for (int i = 0; i < n; ++i) {
    const float t = vm::ErfApprox(x[i]);
    if (F32Bits(t) != F32Bits(y[i])) ++twin_diff;
    const double e = std::fabs(static_cast<double>(t) - std::erf(static_cast<double>(x[i])));
    if (e > worst) worst = e, at = x[i];
    if (std::fabs(static_cast<double>(t)) > max_mag) max_mag = std::fabs(static_cast<double>(t)), mag_at = x[i];
  }
  Report("erf max abs error [-6,6]", worst, at);
  Report("erf max |result|", max_mag, mag_at);
  EXPECT_EQ(twin_diff, 0) << "ErfApprox disagrees with the ERF handler";
  EXPECT_LT(worst, 5e-7);
  EXPECT_TRUE(vm::ErfApprox(0.0f) == 0.0f);
  EXPECT_TRUE(std::signbit(vm::ErfApprox(-0.0f)));
  for (int i = 0; i < n; ++i) ASSERT_EQ(vm::ErfApprox(x[i]), -vm::ErfApprox(-x[i])) << "erf is odd";
}

TEST(KernelsAccuracy, TranscendentalMaxUlp) {
  struct C {
    const char* name;
    UnaryOp op;
    double (*f)(double);
    std::vector<float> x;
    double bound;
  };
  const int n = 1 << 21;
  const C cases[] = {
      {"exp ulp [-87.3,88.7]", UnaryOp::kExp, Exp, Grid(-87.3, 88.7, n), 2},
      {"exp ulp [-1,1]", UnaryOp::kExp, Exp, Grid(-1, 1, n), 2},
      {"exp ulp subnormal results", UnaryOp::kExp, Exp, Grid(-103, -87.4, n / 8), 2},
      {"log ulp all normal x (bit sweep)", UnaryOp::kLog, Log, BitSweep(0x00800000, 0x7f7fffff, n), 2},
      {"log ulp [0.5,2]", UnaryOp::kLog, Log, Grid(0.5, 2, n), 2},
      {"log ulp subnormal x", UnaryOp::kLog, Log, BitSweep(1, 0x007fffff, n / 8), 2},
      {"tanh ulp [-10,10]", UnaryOp::kTanh, Tanh, Grid(-10, 10, n), 5},
      {"tanh ulp (0,1] (bit sweep)", UnaryOp::kTanh, Tanh, BitSweep(0x00800000, 0x3f800000, n), 5},
      {"sin ulp [-10,10]", UnaryOp::kSin, Sin, Grid(-10, 10, n), 4},
      {"cos ulp [-10,10]", UnaryOp::kCos, Cos, Grid(-10, 10, n), 4},
      {"sin ulp [-39000,39000]", UnaryOp::kSin, Sin, Grid(-39000, 39000, n), 4},
      {"cos ulp [-39000,39000]", UnaryOp::kCos, Cos, Grid(-39000, 39000, n), 4},
      {"sin ulp (0,1] (bit sweep)", UnaryOp::kSin, Sin, BitSweep(0x00800000, 0x3f800000, n), 4},
      {"sigmoid ulp [-80,20]", UnaryOp::kSigmoid, Sigmoid, Grid(-80, 20, n), 4},
  };
  for (const C& c : cases) {
    Accuracy a = MeasureUlp(c.op, c.f, c.x);
    Report(c.name, a.max_ulp, a.at);
    EXPECT_LE(a.max_ulp, c.bound) << c.name << " at x = " << a.at;
  }
}

// Special inputs that the handlers get right today.
TEST(KernelsAccuracy, SpecialValuesHandled) {
  const float inf = std::numeric_limits<float>::infinity();
  auto one = [](UnaryOp op, float x) { return RunUnaryF32(op, {x})[0]; };
  EXPECT_EQ(one(UnaryOp::kExp, -inf), 0.0f);
  EXPECT_EQ(one(UnaryOp::kExp, inf), inf);
  EXPECT_EQ(one(UnaryOp::kExp, 89.0f), inf);
  EXPECT_EQ(one(UnaryOp::kExp, 0.0f), 1.0f);
  EXPECT_EQ(one(UnaryOp::kExp, -200.0f), 0.0f);
  EXPECT_EQ(one(UnaryOp::kLog, 1.0f), 0.0f);
  EXPECT_EQ(one(UnaryOp::kTanh, inf), 1.0f);
  EXPECT_EQ(one(UnaryOp::kTanh, -inf), -1.0f);
  EXPECT_TRUE(std::isnan(one(UnaryOp::kTanh, NAN)));
  EXPECT_EQ(one(UnaryOp::kSigmoid, inf), 1.0f);
  EXPECT_EQ(one(UnaryOp::kSigmoid, -inf), 0.0f);
  EXPECT_LE(one(UnaryOp::kSigmoid, -100.0f), 1e-43f);  // 3.8e-44 exactly
  EXPECT_EQ(one(UnaryOp::kErf, inf), 1.0f);
  EXPECT_EQ(one(UnaryOp::kErf, -inf), -1.0f);
  EXPECT_EQ(one(UnaryOp::kSin, 0.0f), 0.0f);
  EXPECT_EQ(one(UnaryOp::kCos, 0.0f), 1.0f);
}

// A masked softmax's exp: lanes far below the range (-1e9, -inf, just under
// -103.97208) are +0 and the other lanes of the same vector keep their bits,
// whether the vector also holds subnormal-range or NaN lanes or not.
TEST(KernelsAccuracy, ExpMaskedLanesSameBits) {
  const float inf = std::numeric_limits<float>::infinity();
  const float masked[] = {-1e9f, -inf, -103.97209f, -200.0f, -3.4e38f};
  const float extra[] = {0.0f, -95.0f, NAN, -103.97208f};  // 0: none; else one lane of the slow path
  for (float ex : extra) {
    std::vector<float> x, plain;
    for (int i = 0; i < 256; ++i) {
      const float v = std::sin(0.37f * i) * 20.0f;
      const bool mask = i % 3 == 1 || (i >= 100 && i < 140);
      x.push_back(mask ? masked[i % 5] : (i == 57 && ex != 0.0f ? ex : v));
      plain.push_back(v);
    }
    const std::vector<float> y = RunUnaryF32(UnaryOp::kExp, x), ref = RunUnaryF32(UnaryOp::kExp, plain);
    for (int i = 0; i < 256; ++i) {
      if (x[i] != plain[i] && !(i == 57 && ex != 0.0f)) {
        EXPECT_EQ(F32Bits(y[i]), 0u) << "masked lane " << i << " x = " << x[i];
      } else if (i == 57 && ex != 0.0f) {
        const float want = RunUnaryF32(UnaryOp::kExp, {ex})[0];
        EXPECT_EQ(std::isnan(y[i]), std::isnan(want));
        if (!std::isnan(want)) {
          EXPECT_EQ(F32Bits(y[i]), F32Bits(want)) << "x = " << ex;
        }
      } else {
        EXPECT_EQ(F32Bits(y[i]), F32Bits(ref[i])) << "lane " << i << " x = " << x[i];
      }
    }
  }
}

// Special inputs the handlers get wrong today (Highway's vector math has no
// special-case handling outside its documented input ranges). Each
// expectation is what std:: / PyTorch return. Enable once fixed.
TEST(KernelsAccuracy, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  auto one = [](UnaryOp op, float x) { return RunUnaryF32(op, {x})[0]; };
  EXPECT_EQ(one(UnaryOp::kExp, 200.0f), inf);                   // today 0 (x >~ 179)
  EXPECT_EQ(one(UnaryOp::kExp, 1e5f), inf);                     // today 3.4e-35
  EXPECT_TRUE(std::isnan(one(UnaryOp::kExp, NAN)));             // today 0
  EXPECT_EQ(one(UnaryOp::kSigmoid, -200.0f), 0.0f);             // today 1 (exp(200) = 0)
  EXPECT_EQ(one(UnaryOp::kSigmoid, -1000.0f), 0.0f);            // today 1
  EXPECT_TRUE(std::isnan(one(UnaryOp::kSigmoid, NAN)));         // today 1
  EXPECT_EQ(one(UnaryOp::kLog, 0.0f), -inf);                    // today -105.36
  EXPECT_EQ(one(UnaryOp::kLog, -0.0f), -inf);                   // today 72.09
  EXPECT_EQ(one(UnaryOp::kLog, inf), inf);                      // today 88.72
  EXPECT_TRUE(std::isnan(one(UnaryOp::kLog, -1.0f)));           // today a finite number
  EXPECT_TRUE(std::isnan(one(UnaryOp::kLog, NAN)));             // today 89.13
  EXPECT_TRUE(std::isnan(one(UnaryOp::kErf, NAN)));             // today -1
  EXPECT_TRUE(std::isnan(one(UnaryOp::kSin, inf)));             // today -inf
  EXPECT_TRUE(std::isnan(one(UnaryOp::kCos, inf)));             // today inf
  EXPECT_LE(std::fabs(one(UnaryOp::kSin, 1e30f)), 1.0f);        // today -inf
  EXPECT_LE(std::fabs(one(UnaryOp::kErf, -3.9832354f)), 1.0f);  // today -1.00000036
}

// ---- f16 / bf16 conversions -------------------------------------------------------------

// All 65536 bit patterns through Load -> Store of the same 16-bit dtype:
// contiguous (vector converters), in runs of 15 (vector + scalar tail) and
// strided (element-at-a-time path). The identity, except that NaNs may
// lose their payload (they must stay NaNs of the same sign).
void CheckRoundTrip(DType dt) {
  const bool f16 = dt == DType::kFloat16;
  auto is_nan = [&](uint16_t h) {
    return f16 ? (h & 0x7c00) == 0x7c00 && (h & 0x3ff) : (h & 0x7f80) == 0x7f80 && (h & 0x7f);
  };
  auto check = [&](const std::vector<uint16_t>& want, const std::vector<uint16_t>& got, const char* path) {
    int bad = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const uint16_t w = want[i], g = got[i];
      const bool ok = is_nan(w) ? is_nan(g) && (w >> 15) == (g >> 15) : w == g;
      if (!ok && bad++ < 4) ADD_FAILURE() << path << ": 0x" << std::hex << w << " came back as 0x" << g;
    }
    EXPECT_EQ(bad, 0) << DTypeName(dt) << " " << path;
  };
  std::vector<uint16_t> pat(65536);
  for (int i = 0; i < 65536; ++i) pat[i] = static_cast<uint16_t>(i);
  auto launch = [&](Kernel& k, const void* in, void* out) {
    k.CodeGen();
    void* ip[] = {const_cast<void*>(in)};
    void* op[] = {out};
    k.Launch(std::span<void* const>(ip, 1), std::span<void* const>(op, 1));
  };
  {  // contiguous
    Kernel k;
    k.Store(nullptr, k.Load(nullptr, {65536}, dt));
    std::vector<uint16_t> out(65536);
    launch(k, pat.data(), out.data());
    check(pat, out, "contiguous");
  }
  {  // [4370, 17] buffer, columns [1, 16) loaded: runs of 15; padded store back to [4370, 17]
    const int64_t rows = 4370;
    std::vector<uint16_t> in(rows * 17, 0), out(rows * 17, 0);
    std::vector<uint16_t> want(rows * 15);
    for (int64_t r = 0; r < rows; ++r)
      for (int c = 0; c < 15; ++c) in[r * 17 + 1 + c] = want[r * 15 + c] = pat[(r * 15 + c) % 65536];
    int64_t full[] = {rows, 17}, start[] = {0, 1}, size[] = {rows, 15}, before[] = {0, 1};
    Kernel k;
    auto* v = k.SliceLoad(nullptr, Dims(full, 2), dt, Dims(start, 2), Dims(size, 2));
    k.PadStore(nullptr, v, Dims(full, 2), Dims(before, 2), 0.0);
    launch(k, in.data(), out.data());
    std::vector<uint16_t> got(rows * 15);
    for (int64_t r = 0; r < rows; ++r)
      for (int c = 0; c < 15; ++c) got[r * 15 + c] = out[r * 17 + 1 + c];
    check(want, got, "runs of 15");
  }
  {  // strided: every other element of a [131072] buffer
    std::vector<uint16_t> in(131072, 0), out(65536);
    for (int i = 0; i < 65536; ++i) in[2 * i] = pat[i];
    int64_t full[] = {131072}, start[] = {0}, end[] = {131072}, step[] = {2};
    Kernel k;
    k.Store(nullptr, k.StridedSliceLoad(nullptr, Dims(full, 1), dt, Dims(start, 1), Dims(end, 1), Dims(step, 1)));
    launch(k, in.data(), out.data());
    check(pat, out, "strided");
  }
  {  // into f32 and back: Load f16 -> Cast f32 -> Store f32 is exact
    Kernel k;
    k.Store(nullptr, k.Cast(k.Load(nullptr, {65536}, dt), DType::kFloat32));
    std::vector<float> out(65536);
    launch(k, pat.data(), out.data());
    int bad = 0;
    for (int i = 0; i < 65536; ++i) {
      const float want = f16 ? F16ToF32(pat[i]) : BF16ToF32(pat[i]);
      if (!(std::isnan(want) ? std::isnan(out[i]) : F32Bits(want) == F32Bits(out[i])) && bad++ < 4)
        ADD_FAILURE() << "0x" << std::hex << pat[i] << " widened to " << out[i] << ", want " << want;
    }
    EXPECT_EQ(bad, 0);
  }
}

TEST(KernelsConvert, F16RoundTripAllBitPatterns) { CheckRoundTrip(DType::kFloat16); }
TEST(KernelsConvert, BF16RoundTripAllBitPatterns) { CheckRoundTrip(DType::kBFloat16); }

// f32 -> bf16 / f16 casts on exact ties between two representable values
// round to the even one; just above / below a tie round to the nearer one.
// Runs both the CAST handler (vector) and the store converter.
void CheckTies(DType dt) {
  const bool f16 = dt == DType::kFloat16;
  auto widen = [&](uint16_t h) { return f16 ? F16ToF32(h) : BF16ToF32(h); };
  std::vector<float> in;
  std::vector<uint16_t> want;
  for (uint32_t h = 0; h < 0x7fff; ++h) {  // positive finite values and their successors
    const uint16_t lo = static_cast<uint16_t>(h), hi = static_cast<uint16_t>(h + 1);
    const float a = widen(lo), b = widen(hi);
    if (!std::isfinite(a) || std::isnan(b)) continue;
    // Above the largest finite value the next step is 2^16 (f16) or 2^128
    // (bf16): the tie rounds to the even neighbour, infinity.
    const double next = std::isinf(b) ? (f16 ? 65536.0 : std::ldexp(1.0, 128)) : b;
    const float mid = static_cast<float>((static_cast<double>(a) + next) / 2);  // exact in f32
    const uint16_t even = (lo & 1) ? hi : lo;
    for (float sign : {1.0f, -1.0f}) {
      const uint16_t s = sign < 0 ? 0x8000 : 0;
      in.push_back(sign * mid);
      want.push_back(static_cast<uint16_t>(even | s));
      in.push_back(sign * std::nextafter(mid, 0.0f));
      want.push_back(static_cast<uint16_t>(lo | s));
      in.push_back(sign * std::nextafter(mid, std::numeric_limits<float>::infinity()));
      want.push_back(static_cast<uint16_t>(hi | s));
    }
  }
  const int64_t n = static_cast<int64_t>(in.size());
  {  // the CAST handler, then the vector store converter
    Kernel k;
    k.Store(nullptr, k.Cast(k.Load(nullptr, Dims(&n, 1), DType::kFloat32), dt));
    k.CodeGen();
    std::vector<uint16_t> out(n);
    void* ip[] = {in.data()};
    void* op[] = {out.data()};
    k.Launch(std::span<void* const>(ip, 1), std::span<void* const>(op, 1));
    int bad = 0;
    for (int64_t i = 0; i < n; ++i)
      if (out[i] != want[i] && bad++ < 6)
        ADD_FAILURE() << DTypeName(dt) << ": " << std::hexfloat << in[i] << " -> 0x" << std::hex << out[i]
                      << ", want 0x" << want[i];
    EXPECT_EQ(bad, 0) << bad << " of " << n << " wrong";
  }
  // The scalar converters (tails, strided stores) agree.
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t s = f16 ? F32ToF16(in[i]) : F32ToBF16(in[i]);
    if (s != want[i] && bad++ < 4) ADD_FAILURE() << "scalar " << std::hexfloat << in[i];
  }
  EXPECT_EQ(bad, 0);
}

TEST(KernelsConvert, F32ToBF16RoundsTiesToEven) { CheckTies(DType::kBFloat16); }
TEST(KernelsConvert, F32ToF16RoundsTiesToEven) { CheckTies(DType::kFloat16); }

}  // namespace
}  // namespace dvm

namespace dvm::test {
namespace {

int WorkspaceCount(const std::vector<uint8_t>& bytecode) {
  int n = 0;
  const vm::Executable exe(bytecode);
  for (const bc::TensorDesc& t : exe.program().tensors) n += t.kind == bc::TensorKind::kWorkspace;
  return n;
}

// A long-row softmax is one row group, and every workspace it has (partials,
// row maxima and sums) is touched only by the group, slab by slab: the VM
// keeps one slab of each per thread (the stored exp lives in the output). A stage outside the group
// that reads a workspace across rows keeps that one whole.
TEST(RowGroups, WorkspacesKeptOneSlabPerThread) {
  Kernel k;
  NDObject* x = k.Load(nullptr, {6, 40000}, DType::kFloat32);
  NDObject* m = k.Reduce(ReduceOp::kMax, x, {1}, true);
  NDObject* e = k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, x, m));
  k.Store(nullptr, k.Binary(BinaryOp::kDiv, e, k.Reduce(ReduceOp::kSum, e, {1}, true)));
  k.CodeGen();
  const int ws = WorkspaceCount(k.Bytecode());
  EXPECT_GE(ws, 5) << k.Das();
  // exp(x - max) lives in the output (divided there in place), the others
  // one slab per thread
  const vm::Executable ex(k.Bytecode());
  EXPECT_EQ(ex.output_aliases(), 1) << k.Das();
  EXPECT_EQ(ex.row_local_workspaces(), ws - 1) << k.Das();

  Kernel c;
  NDObject* y = c.Load(nullptr, {6, 40000}, DType::kFloat32);
  NDObject* z = c.Load(nullptr, {6, 6}, DType::kFloat32);
  NDObject* mx = c.Reduce(ReduceOp::kMax, y, {1}, true);
  c.Store(nullptr, c.Binary(BinaryOp::kSub, y, mx));
  c.Store(nullptr, c.Binary(BinaryOp::kAdd, z, c.Reshape(mx, {1, 6})));  // reads every row's max
  c.CodeGen();
  EXPECT_EQ(vm::Executable(c.Bytecode()).row_local_workspaces(), WorkspaceCount(c.Bytecode()) - 1) << c.Das();
}

// The pool is woken by work counted in bytecode instructions per lane, not
// in the handlers fusion leaves: x + bias + residual fuses to one handler,
// yet [16, 768] of it (measured at 2 threads: 2.0 us, one thread 2.4 us) is
// worth the second thread; [8, 768] is not (1.3 against 1.1 us).
TEST(LaunchPlan, FusedKernelsWeighedByTheirBytecode) {
  auto plan = [](int64_t rows, int threads, int* chains) {
    Kernel k(KernelType::kStatic);
    NDObject* x = k.Load(nullptr, {rows, 768}, DType::kFloat32);
    NDObject* bias = k.Load(nullptr, {768}, DType::kFloat32);
    NDObject* res = k.Load(nullptr, {rows, 768}, DType::kFloat32);
    k.Store(nullptr, k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kAdd, x, bias), res));
    k.CodeGen();
    const vm::Executable ex(k.Bytecode());
    *chains = ex.fused_chains();
    const auto p = ex.Plan(threads);
    EXPECT_EQ(p.size(), 1u) << k.Das();
    return p.empty() ? 0 : p[0].threads;
  };
  int chains = 0;
  EXPECT_EQ(plan(16, 2, &chains), 2);
  EXPECT_GE(chains, 1);  // fused: fewer handlers than instructions
  EXPECT_EQ(plan(16, 1, &chains), 1);
  EXPECT_EQ(plan(64, 2, &chains), 2);
  EXPECT_EQ(plan(8, 2, &chains), 1);  // 6K lanes: the caller alone
}

}  // namespace
}  // namespace dvm::test
