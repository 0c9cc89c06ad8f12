#include "runtime/reference.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "ir/dtype.h"
#include "ir/error.h"

namespace dvm::ref {
namespace {

using ir::Graph;
using ir::Node;
using ir::Op;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

int32_t AsI32(double v) { return static_cast<int32_t>(v); }
int32_t Wrap32(uint32_t u) { return static_cast<int32_t>(u); }

// The result of an op, rounded to how a register of dtype `dt` holds it:
// floats -> f32, i32 -> itself (already wrapped), i8 -> 8-bit wrap, bool -> 0/1.
double Normalize(DType dt, double v) {
  switch (dt) {
    case DType::kFloat32:
    case DType::kFloat16:
    case DType::kBFloat16: return static_cast<double>(static_cast<float>(v));
    case DType::kInt32: return static_cast<double>(Wrap32(static_cast<uint32_t>(static_cast<int64_t>(v))));
    case DType::kInt8:
      return static_cast<double>(WrapI8(Wrap32(static_cast<uint32_t>(static_cast<int64_t>(v)))));
    case DType::kBool: return v != 0 ? 1.0 : 0.0;
  }
  return v;
}

// A double scalar (kScalar, tensor-scalar forms, pad values) in dtype `dt`.
double ScalarTo(DType dt, double s) {
  switch (dt) {
    case DType::kFloat32:
    case DType::kFloat16:
    case DType::kBFloat16: return static_cast<double>(static_cast<float>(s));
    case DType::kInt32: return SatF32ToI32(s);
    case DType::kInt8: return WrapI8(SatF32ToI32(s));
    case DType::kBool: return s != 0 ? 1.0 : 0.0;
  }
  return s;
}

double RoundF16(double v) { return F16ToF32(F32ToF16(static_cast<float>(v))); }
double RoundBF16(double v) { return BF16ToF32(F32ToBF16(static_cast<float>(v))); }

// ---- element-wise kernels -------------------------------------------------

double UnaryFloat(UnaryOp op, double x) {
  switch (op) {
    case UnaryOp::kSqrt: return std::sqrt(x);
    case UnaryOp::kRsqrt: return 1.0 / std::sqrt(x);
    case UnaryOp::kAbs: return std::fabs(x);
    case UnaryOp::kNeg: return -x;
    case UnaryOp::kExp: return std::exp(x);
    case UnaryOp::kLog: return std::log(x);
    case UnaryOp::kReciprocal: return 1.0 / x;
    case UnaryOp::kTanh: return std::tanh(x);
    case UnaryOp::kSigmoid: return 1.0 / (1.0 + std::exp(-x));
    case UnaryOp::kErf: return std::erf(x);
    case UnaryOp::kRelu: return x < 0 ? 0.0 : x;
    case UnaryOp::kSin: return std::sin(x);
    case UnaryOp::kCos: return std::cos(x);
    case UnaryOp::kFloor: return std::floor(x);
    case UnaryOp::kCeil: return std::ceil(x);
    case UnaryOp::kRound: return std::nearbyint(x);
    case UnaryOp::kIsFinite: return std::isfinite(x) ? 1.0 : 0.0;
    case UnaryOp::kLogicalNot: return x == 0 ? 1.0 : 0.0;
  }
  Fail("reference: unknown unary op ", int(op));
}

double UnaryInt(UnaryOp op, int32_t x) {
  switch (op) {
    case UnaryOp::kAbs: return x < 0 ? Wrap32(0u - static_cast<uint32_t>(x)) : x;
    case UnaryOp::kNeg: return Wrap32(0u - static_cast<uint32_t>(x));
    case UnaryOp::kRelu: return x < 0 ? 0 : x;
    case UnaryOp::kFloor:
    case UnaryOp::kCeil:
    case UnaryOp::kRound: return x;
    case UnaryOp::kIsFinite: return 1.0;
    case UnaryOp::kLogicalNot: return x == 0 ? 1.0 : 0.0;
    default: Fail("reference: unary op ", UnaryOpName(op), " is not defined on integers");
  }
}

double MaxNaN(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return kNaN;
  return a < b ? b : a;
}
double MinNaN(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return kNaN;
  return b < a ? b : a;
}

// Compares and logical ops, shared by every dtype (NaN compares false except !=).
bool IsPredicate(BinaryOp op, double a, double b, double* r) {
  switch (op) {
    case BinaryOp::kEqual: *r = a == b; return true;
    case BinaryOp::kNotEqual: *r = a != b; return true;
    case BinaryOp::kLess: *r = a < b; return true;
    case BinaryOp::kLessEqual: *r = a <= b; return true;
    case BinaryOp::kGreater: *r = a > b; return true;
    case BinaryOp::kGreaterEqual: *r = a >= b; return true;
    case BinaryOp::kLogicalAnd: *r = (a != 0) && (b != 0); return true;
    case BinaryOp::kLogicalOr: *r = (a != 0) || (b != 0); return true;
    default: return false;
  }
}

double BinaryFloat(BinaryOp op, double a, double b) {
  double r;
  if (IsPredicate(op, a, b, &r)) return r;
  switch (op) {
    case BinaryOp::kAdd: return a + b;
    case BinaryOp::kSub: return a - b;
    case BinaryOp::kMul: return a * b;
    case BinaryOp::kDiv: return a / b;
    case BinaryOp::kPow: return std::pow(a, b);
    case BinaryOp::kMaximum: return MaxNaN(a, b);
    case BinaryOp::kMinimum: return MinNaN(a, b);
    default: Fail("reference: unknown binary op ", int(op));
  }
}

int32_t IntPow(int32_t base, int32_t e) {
  if (e < 0) {
    if (base == 1) return 1;
    if (base == -1) return (e & 1) ? -1 : 1;
    return 0;
  }
  uint32_t r = 1, b = static_cast<uint32_t>(base);
  uint32_t k = static_cast<uint32_t>(e);
  while (k) {  // exponentiation by squaring == repeated wrapping multiplication
    if (k & 1) r *= b;
    b *= b;
    k >>= 1;
  }
  return Wrap32(r);
}

double BinaryInt(BinaryOp op, int32_t a, int32_t b) {
  double r;
  if (IsPredicate(op, a, b, &r)) return r;
  uint32_t ua = static_cast<uint32_t>(a), ub = static_cast<uint32_t>(b);
  switch (op) {
    case BinaryOp::kAdd: return Wrap32(ua + ub);
    case BinaryOp::kSub: return Wrap32(ua - ub);
    case BinaryOp::kMul: return Wrap32(ua * ub);
    case BinaryOp::kDiv:
      if (b == 0) return 0;
      if (a == std::numeric_limits<int32_t>::min() && b == -1) return a;
      return a / b;
    case BinaryOp::kPow: return IntPow(a, b);
    case BinaryOp::kMaximum: return std::max(a, b);
    case BinaryOp::kMinimum: return std::min(a, b);
    default: Fail("reference: unknown binary op ", int(op));
  }
}

double Binary(DType operand, BinaryOp op, double a, double b) {
  return IsFloat(operand) ? BinaryFloat(op, a, b) : BinaryInt(op, AsI32(a), AsI32(b));
}

double CastValue(DType from, DType to, double x) {
  if (IsFloat(from)) {
    switch (to) {
      case DType::kFloat32: return static_cast<float>(x);
      case DType::kFloat16: return RoundF16(x);
      case DType::kBFloat16: return RoundBF16(x);
      case DType::kInt32: return SatF32ToI32(x);
      case DType::kInt8: return WrapI8(SatF32ToI32(x));
      case DType::kBool: return x != 0 ? 1.0 : 0.0;  // NaN -> true
    }
  } else {
    int32_t v = AsI32(x);
    switch (to) {
      case DType::kFloat32: return static_cast<float>(v);
      case DType::kFloat16: return RoundF16(static_cast<float>(v));
      case DType::kBFloat16: return RoundBF16(static_cast<float>(v));
      case DType::kInt32: return v;
      case DType::kInt8: return WrapI8(v);
      case DType::kBool: return v != 0 ? 1.0 : 0.0;
    }
  }
  return x;
}

// ---- index iteration ------------------------------------------------------

using Strides = std::vector<int64_t>;

Strides ContiguousStrides(const Shape& s) {
  Strides st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

// Strides of a contiguous tensor of shape `in` read as shape `out` under
// numpy broadcasting (right-aligned; stride 0 on broadcast axes).
Strides BroadcastStrides(const Shape& in, const Shape& out) {
  Strides cs = ContiguousStrides(in);
  Strides st(out.size(), 0);
  size_t off = out.size() - in.size();
  for (size_t i = 0; i < in.size(); ++i) st[off + i] = in[i] == 1 ? 0 : cs[i];
  return st;
}

int64_t Count(const Shape& s) { return ir::NumElements(s, "reference"); }

// Calls f(linear_index, offsets) for every multi-index of `shape` in
// row-major order; offsets[k] = base[k] + sum_i idx[i] * strides[k][i].
template <size_t K, class F>
void ForEach(const Shape& shape, const std::array<const Strides*, K>& strides,
             std::array<int64_t, K> off, F&& f) {
  const int64_t n = Count(shape);
  if (n == 0) return;
  const size_t r = shape.size();
  std::vector<int64_t> idx(r, 0);
  for (int64_t i = 0; i < n; ++i) {
    f(i, off);
    for (size_t d = r; d-- > 0;) {
      ++idx[d];
      for (size_t k = 0; k < K; ++k) off[k] += (*strides[k])[d];
      if (idx[d] < shape[d]) break;
      for (size_t k = 0; k < K; ++k) off[k] -= (*strides[k])[d] * shape[d];
      idx[d] = 0;
    }
  }
}

using Values = std::vector<double>;

Values Gather(const Values& src, const Shape& out, const Strides& st, int64_t base = 0) {
  Values r(static_cast<size_t>(Count(out)));
  ForEach<1>(out, {&st}, {base}, [&](int64_t i, const std::array<int64_t, 1>& o) { r[i] = src[o[0]]; });
  return r;
}

Values Reduce(const Node& n, DType dt, const Values& x, const Shape& xs, const Shape& os) {
  const ReduceOp op = static_cast<ReduceOp>(n.sub);
  const int64_t out_n = Count(os);
  // Strides into the output for every input axis (0 on reduced axes).
  Shape kept;  // output shape with reduced axes kept as 1
  for (size_t i = 0; i < xs.size(); ++i) {
    bool red = std::find(n.a0.begin(), n.a0.end(), int64_t(i)) != n.a0.end();
    kept.push_back(red ? 1 : xs[i]);
  }
  Strides ost = BroadcastStrides(kept, xs);
  Strides xst = ContiguousStrides(xs);
  const bool fl = IsFloat(dt);
  double identity = 0;
  switch (op) {
    case ReduceOp::kSum: identity = 0; break;
    case ReduceOp::kProd: identity = 1; break;
    case ReduceOp::kMax:
      identity = fl ? -kInf
                 : dt == DType::kInt32 ? std::numeric_limits<int32_t>::min()
                 : dt == DType::kInt8  ? -128
                                       : 0;
      break;
    case ReduceOp::kMin:
      identity = fl ? kInf
                 : dt == DType::kInt32 ? std::numeric_limits<int32_t>::max()
                 : dt == DType::kInt8  ? 127
                                       : 1;
      break;
  }
  Values acc(static_cast<size_t>(out_n), identity);
  std::vector<uint32_t> iacc(static_cast<size_t>(out_n), op == ReduceOp::kProd ? 1u : 0u);
  ForEach<2>(xs, {&xst, &ost}, {0, 0}, [&](int64_t, const std::array<int64_t, 2>& o) {
    double v = x[o[0]];
    double& a = acc[o[1]];
    switch (op) {
      case ReduceOp::kSum:
        if (fl) a += v;
        else iacc[o[1]] += static_cast<uint32_t>(AsI32(v));
        break;
      case ReduceOp::kProd:
        if (fl) a *= v;
        else iacc[o[1]] *= static_cast<uint32_t>(AsI32(v));
        break;
      case ReduceOp::kMax: a = MaxNaN(a, v); break;
      case ReduceOp::kMin: a = MinNaN(a, v); break;
    }
  });
  if (!fl && (op == ReduceOp::kSum || op == ReduceOp::kProd))
    for (size_t i = 0; i < acc.size(); ++i) acc[i] = Wrap32(iacc[i]);
  for (double& a : acc) a = Normalize(dt, a);
  return acc;
}

// C[..., m, n] = sum_k A[..., m, k] * B[..., k, n] in double, batch dims
// broadcast; the sum is rounded once to f32.
Values MatMul(const Node& n, DType dt, const Values& a, const Shape& as, const Values& b, const Shape& bs,
              const Shape& os) {
  const bool ta = n.sub & 1, tb = n.sub & 2;
  const size_t r = os.size();
  const int64_t M = os[r - 2], N = os[r - 1];
  const int64_t K = as[as.size() - (ta ? 2 : 1)];
  Shape batch(os.begin(), os.end() - 2);
  // Element strides of each operand's batch dims, right-aligned to `batch`.
  auto batch_strides = [&](const Shape& s) {
    Strides cs = ContiguousStrides(s);
    Strides st(batch.size(), 0);
    const size_t off = batch.size() - (s.size() - 2);
    for (size_t i = 0; i + 2 < s.size(); ++i)
      if (s[i] != 1) st[off + i] = cs[i];
    return st;
  };
  const Strides sa = batch_strides(as), sb = batch_strides(bs);
  const int64_t nb = Count(batch);
  Values out(static_cast<size_t>(nb * M * N));
  for (int64_t bi = 0; bi < nb; ++bi) {
    int64_t rem = bi, oa = 0, ob = 0;
    for (size_t d = batch.size(); d-- > 0;) {
      const int64_t idx = rem % batch[d];
      rem /= batch[d];
      oa += idx * sa[d];
      ob += idx * sb[d];
    }
    for (int64_t m = 0; m < M; ++m)
      for (int64_t j = 0; j < N; ++j) {
        double acc = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double x = a[oa + (ta ? k * M + m : m * K + k)];
          const double y = b[ob + (tb ? j * K + k : k * N + j)];
          acc += x * y;
        }
        out[(bi * M + m) * N + j] = Normalize(dt, acc);
      }
  }
  return out;
}

}  // namespace

double RoundToStorage(DType dt, double v) {
  switch (dt) {
    case DType::kFloat32: return static_cast<float>(v);
    case DType::kFloat16: return RoundF16(v);
    case DType::kBFloat16: return RoundBF16(v);
    case DType::kInt32: return SatF32ToI32(v);
    case DType::kInt8: return WrapI8(SatF32ToI32(v));
    case DType::kBool: return v != 0 ? 1.0 : 0.0;
  }
  return v;
}

std::vector<Tensor> Evaluate(const Graph& g, std::span<const Tensor> inputs) {
  if (inputs.size() != g.inputs.size())
    Fail("reference: kernel has ", g.inputs.size(), " inputs, got ", inputs.size());
  std::vector<Shape> in_shapes;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Node& ld = g.nodes[g.inputs[i]];
    const Tensor& t = inputs[i];
    if (t.dtype != ld.dtype)
      Fail("reference: input ", i, " has dtype ", DTypeName(t.dtype), ", the load expects ",
           DTypeName(ld.dtype));
    if (static_cast<int64_t>(t.data.size()) != Count(t.shape))
      Fail("reference: input ", i, " of shape ", ir::ShapeStr(t.shape), " holds ", t.data.size(),
           " values");
    in_shapes.push_back(t.shape);
  }
  std::vector<Shape> shapes;
  ir::InferShapes(g, in_shapes, shapes);

  std::vector<Values> vals(g.nodes.size());
  std::vector<Tensor> outs(g.outputs.size());
  for (size_t id = 0; id < g.nodes.size(); ++id) {
    const Node& n = g.nodes[id];
    const Shape& os = shapes[id];
    const DType dt = n.dtype;
    auto in = [&](int k) -> const Values& { return vals[n.in[k]]; };
    auto ins = [&](int k) -> const Shape& { return shapes[n.in[k]]; };
    auto idt = [&](int k) { return g.nodes[n.in[k]].dtype; };
    Values& r = vals[id];
    switch (n.op) {
      case Op::kLoad: {
        const Tensor& t = inputs[n.io];
        Values src(t.data.size());
        for (size_t i = 0; i < src.size(); ++i) src[i] = RoundToStorage(dt, t.data[i]);
        if (n.a1.empty()) {
          r = std::move(src);
          break;
        }
        Strides cs = ContiguousStrides(t.shape);
        Strides st(cs.size());
        int64_t base = 0;
        for (size_t i = 0; i < cs.size(); ++i) {
          st[i] = cs[i] * n.a3[i];
          base += cs[i] * n.a1[i];
        }
        r = Gather(src, os, st, base);
        break;
      }
      case Op::kStore: {
        Tensor& out = outs[n.io];
        out.dtype = dt;
        out.shape = os;
        if (n.sub == 0) {
          out.data = in(0);
        } else {
          out.data.assign(static_cast<size_t>(Count(os)), ScalarTo(dt, n.scalar));
          Strides cs = ContiguousStrides(os);
          int64_t base = 0;
          for (size_t i = 0; i < cs.size() && !n.a1.empty(); ++i) base += cs[i] * n.a1[i];
          const Values& v = in(0);
          ForEach<1>(ins(0), {&cs}, {base},
                     [&](int64_t i, const std::array<int64_t, 1>& o) { out.data[o[0]] = v[i]; });
        }
        for (double& v : out.data) v = RoundToStorage(dt, v);
        r = out.data;
        break;
      }
      case Op::kUnary: {
        const Values& x = in(0);
        const UnaryOp op = static_cast<UnaryOp>(n.sub);
        const DType xt = idt(0);
        r.resize(x.size());
        for (size_t i = 0; i < x.size(); ++i)
          r[i] = Normalize(dt, IsFloat(xt) ? UnaryFloat(op, x[i]) : UnaryInt(op, AsI32(x[i])));
        break;
      }
      case Op::kBinary: {
        const BinaryOp op = static_cast<BinaryOp>(n.sub);
        const DType xt = idt(0);
        Strides sa = BroadcastStrides(ins(0), os), sb = BroadcastStrides(ins(1), os);
        const Values &a = in(0), &b = in(1);
        r.resize(static_cast<size_t>(Count(os)));
        ForEach<2>(os, {&sa, &sb}, {0, 0}, [&](int64_t i, const std::array<int64_t, 2>& o) {
          r[i] = Normalize(dt, Binary(xt, op, a[o[0]], b[o[1]]));
        });
        break;
      }
      case Op::kBinaryTS:
      case Op::kBinaryST: {
        const BinaryOp op = static_cast<BinaryOp>(n.sub);
        const DType xt = idt(0);
        const double s = ScalarTo(xt, n.scalar);
        const Values& x = in(0);
        r.resize(x.size());
        for (size_t i = 0; i < x.size(); ++i)
          r[i] = Normalize(dt, n.op == Op::kBinaryTS ? Binary(xt, op, x[i], s)
                                                     : Binary(xt, op, s, x[i]));
        break;
      }
      case Op::kScalar:
        r.assign(static_cast<size_t>(Count(os)), ScalarTo(dt, n.scalar));
        break;
      case Op::kSelect: {
        Strides sc = BroadcastStrides(ins(0), os), sa = BroadcastStrides(ins(1), os),
                sb = BroadcastStrides(ins(2), os);
        const Values &c = in(0), &a = in(1), &b = in(2);
        r.resize(static_cast<size_t>(Count(os)));
        ForEach<3>(os, {&sc, &sa, &sb}, {0, 0, 0}, [&](int64_t i, const std::array<int64_t, 3>& o) {
          r[i] = c[o[0]] != 0 ? a[o[1]] : b[o[2]];
        });
        break;
      }
      case Op::kCast: {
        const Values& x = in(0);
        const DType xt = idt(0);
        r.resize(x.size());
        for (size_t i = 0; i < x.size(); ++i) r[i] = CastValue(xt, dt, x[i]);
        break;
      }
      case Op::kBroadcast: {
        Strides st = BroadcastStrides(ins(0), os);
        r = Gather(in(0), os, st);
        break;
      }
      case Op::kReshape:
      case Op::kCopy: r = in(0); break;
      case Op::kTranspose: {
        Strides cs = ContiguousStrides(ins(0));
        Strides st(os.size());
        for (size_t i = 0; i < os.size(); ++i) st[i] = cs[n.a0[i]];
        r = Gather(in(0), os, st);
        break;
      }
      case Op::kReduce: r = Reduce(n, dt, in(0), ins(0), os); break;
      case Op::kMatMul: r = MatMul(n, dt, in(0), ins(0), in(1), ins(1), os); break;
      case Op::kElemAny: {
        const Values& x = in(0);
        bool any = std::any_of(x.begin(), x.end(), [](double v) { return v != 0; });
        r.assign(1, any ? 1.0 : 0.0);
        break;
      }
    }
  }
  return outs;
}

std::vector<uint8_t> ToBytes(const Tensor& t) {
  const size_t es = DTypeSize(t.dtype);
  std::vector<uint8_t> b(t.data.size() * es);
  for (size_t i = 0; i < t.data.size(); ++i) {
    const double v = t.data[i];
    uint8_t* p = b.data() + i * es;
    switch (t.dtype) {
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
        int32_t x = SatF32ToI32(v);
        std::memcpy(p, &x, 4);
        break;
      }
      case DType::kInt8: *p = static_cast<uint8_t>(WrapI8(SatF32ToI32(v))); break;
      case DType::kBool: *p = v != 0 ? 1 : 0; break;
    }
  }
  return b;
}

Tensor FromBytes(const void* p, DType dt, const Shape& shape) {
  Tensor t;
  t.dtype = dt;
  t.shape = shape;
  const size_t n = static_cast<size_t>(Count(shape));
  const size_t es = DTypeSize(dt);
  const auto* b = static_cast<const uint8_t*>(p);
  t.data.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* q = b + i * es;
    switch (dt) {
      case DType::kFloat32: {
        float f;
        std::memcpy(&f, q, 4);
        t.data[i] = f;
        break;
      }
      case DType::kFloat16: {
        uint16_t h;
        std::memcpy(&h, q, 2);
        t.data[i] = F16ToF32(h);
        break;
      }
      case DType::kBFloat16: {
        uint16_t h;
        std::memcpy(&h, q, 2);
        t.data[i] = BF16ToF32(h);
        break;
      }
      case DType::kInt32: {
        int32_t x;
        std::memcpy(&x, q, 4);
        t.data[i] = x;
        break;
      }
      case DType::kInt8: t.data[i] = static_cast<int8_t>(*q); break;
      case DType::kBool: t.data[i] = *q != 0 ? 1.0 : 0.0; break;
    }
  }
  return t;
}

}  // namespace dvm::ref
