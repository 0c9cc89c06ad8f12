#include "ir/ir.h"

#include <algorithm>
#include <sstream>

#include "ir/error.h"

namespace dvm {

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kFloat32:
      return "f32";
    case DType::kFloat16:
      return "f16";
    case DType::kBFloat16:
      return "bf16";
    case DType::kInt32:
      return "i32";
    case DType::kInt8:
      return "i8";
    case DType::kBool:
      return "bool";
  }
  return "?";
}

size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kFloat32:
    case DType::kInt32:
      return 4;
    case DType::kFloat16:
    case DType::kBFloat16:
      return 2;
    case DType::kInt8:
    case DType::kBool:
      return 1;
  }
  return 0;
}

const char* UnaryOpName(UnaryOp op) {
  static const char* kNames[] = {"sqrt",       "rsqrt", "abs",     "neg",   "exp",      "log",
                                 "reciprocal", "tanh",  "sigmoid", "erf",   "relu",     "sin",
                                 "cos",        "floor", "ceil",    "round", "isfinite", "logical_not"};
  auto i = static_cast<size_t>(op);
  return i < std::size(kNames) ? kNames[i] : "?";
}

const char* BinaryOpName(BinaryOp op) {
  static const char* kNames[] = {"add",        "sub",     "mul",           "div",         "pow",
                                 "maximum",    "minimum", "equal",         "not_equal",   "less",
                                 "less_equal", "greater", "greater_equal", "logical_and", "logical_or"};
  auto i = static_cast<size_t>(op);
  return i < std::size(kNames) ? kNames[i] : "?";
}

const char* ReduceOpName(ReduceOp op) {
  static const char* kNames[] = {"sum", "max", "min", "prod"};
  auto i = static_cast<size_t>(op);
  return i < std::size(kNames) ? kNames[i] : "?";
}

namespace ir {

const char* OpName(Op op) {
  switch (op) {
    case Op::kLoad:
      return "load";
    case Op::kStore:
      return "store";
    case Op::kUnary:
      return "unary";
    case Op::kBinary:
      return "binary";
    case Op::kBinaryTS:
      return "binary_ts";
    case Op::kBinaryST:
      return "binary_st";
    case Op::kScalar:
      return "scalar";
    case Op::kSelect:
      return "select";
    case Op::kCast:
      return "cast";
    case Op::kBroadcast:
      return "broadcast";
    case Op::kReshape:
      return "reshape";
    case Op::kTranspose:
      return "transpose";
    case Op::kCopy:
      return "copy";
    case Op::kReduce:
      return "reduce";
    case Op::kElemAny:
      return "elem_any";
    case Op::kMatMul:
      return "matmul";
  }
  return "?";
}

std::string ShapeStr(std::span<const int64_t> s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) r += ", ";
    r += s[i] < 0 ? std::string("?") : std::to_string(s[i]);
  }
  return r + "]";
}

int64_t NumElements(std::span<const int64_t> s, const char* what) {
  int64_t n = 1;
  for (int64_t d : s) {
    if (d < 0) Fail(what, ": negative dim in shape ", ShapeStr(s));
    if (d != 0 && n > (int64_t{1} << 50) / d) Fail(what, ": element count of shape ", ShapeStr(s), " overflows");
    n *= d;
  }
  return n;
}

Shape BroadcastShapes(const Shape& a, const Shape& b, const char* what, int node) {
  size_t r = std::max(a.size(), b.size());
  Shape out(r);
  for (size_t i = 0; i < r; ++i) {
    int64_t x = i < r - a.size() ? 1 : a[i - (r - a.size())];
    int64_t y = i < r - b.size() ? 1 : b[i - (r - b.size())];
    if (x == y || y == 1) {
      out[i] = x;
    } else if (x == 1) {
      out[i] = y;
    } else if (x < 0 || y < 0) {
      out[i] = x < 0 ? y : x;  // unknown dim assumed to match
    } else {
      Fail(what, " (node ", node, "): shapes ", ShapeStr(a), " and ", ShapeStr(b), " are not broadcastable (axis ", i,
           ": ", x, " vs ", y, ")");
    }
  }
  return out;
}

Shape InferNode(const Graph& g, int id, const std::vector<Shape>& sh, std::span<const Shape> ins) {
  const Node& n = g.nodes[id];
  auto in = [&](int k) -> const Shape& { return sh[n.in[k]]; };
  switch (n.op) {
    case Op::kLoad: {
      Shape t = n.a0;
      if (!ins.empty()) {
        const Shape& given = ins[n.io];
        if (given.size() != t.size())
          Fail("load (input ", n.io, "): rank mismatch, kernel expects ", ShapeStr(t), ", got ", ShapeStr(given));
        for (size_t i = 0; i < t.size(); ++i) {
          if (given[i] < 0) Fail("load (input ", n.io, "): negative dim in ", ShapeStr(given));
          if (t[i] >= 0 && t[i] != given[i])
            Fail("load (input ", n.io, "): shape ", ShapeStr(given), " does not match built shape ", ShapeStr(t),
                 " at axis ", i);
          t[i] = given[i];
        }
      }
      if (n.a1.empty()) return t;
      Shape out(t.size());
      for (size_t i = 0; i < t.size(); ++i) {
        int64_t s = n.a1[i], e = n.a2[i], st = n.a3[i];
        if (t[i] < 0) {
          out[i] = -1;
          continue;
        }
        if (st <= 0 || s < 0 || e < s || e > t[i])
          Fail("slice load (input ", n.io, "): bad slice ", s, ":", e, ":", st, " for axis ", i, " of size ", t[i]);
        out[i] = (e - s + st - 1) / st;
      }
      return out;
    }
    case Op::kStore: {
      if (n.sub == 0) return in(0);
      const Shape& v = in(0);
      if (v.size() != n.a0.size())
        Fail("pad store (output ", n.io, "): value ", ShapeStr(v), " and padded shape ", ShapeStr(n.a0),
             " differ in rank");
      for (size_t i = 0; i < v.size(); ++i) {
        int64_t before = n.a1.empty() ? 0 : n.a1[i];
        if (v[i] >= 0 && (before < 0 || before + v[i] > n.a0[i]))
          Fail("pad store (output ", n.io, "): value ", ShapeStr(v), " at offset ", ShapeStr(n.a1), " does not fit in ",
               ShapeStr(n.a0), " (axis ", i, ")");
      }
      return n.a0;
    }
    case Op::kUnary:
    case Op::kCast:
    case Op::kCopy:
    case Op::kBinaryTS:
    case Op::kBinaryST:
      return in(0);
    case Op::kBinary:
      return BroadcastShapes(in(0), in(1), BinaryOpName(BinaryOp(n.sub)), id);
    case Op::kSelect:
      return BroadcastShapes(BroadcastShapes(in(0), in(1), "select", id), in(2), "select", id);
    case Op::kScalar:
      return n.a0;
    case Op::kBroadcast: {
      const Shape& x = in(0);
      if (x.size() > n.a0.size())
        Fail("broadcast (node ", id, "): cannot broadcast ", ShapeStr(x), " to lower rank ", ShapeStr(n.a0));
      Shape out = n.a0;
      size_t off = n.a0.size() - x.size();
      for (size_t i = 0; i < out.size(); ++i) {
        int64_t xd = i < off ? 1 : x[i - off];
        if (out[i] < 0)
          out[i] = xd;
        else if (xd >= 0 && xd != 1 && xd != out[i])
          Fail("broadcast (node ", id, "): cannot broadcast ", ShapeStr(x), " to ", ShapeStr(n.a0), " (axis ", i, ")");
      }
      return out;
    }
    case Op::kReshape: {
      const Shape& x = in(0);
      bool known = std::all_of(x.begin(), x.end(), [](int64_t d) { return d >= 0; });
      Shape out = n.a0;
      int infer = -1;
      int64_t prod = 1;
      for (size_t i = 0; i < out.size(); ++i) {
        if (out[i] < 0)
          infer = static_cast<int>(i);
        else
          prod *= out[i];
      }
      if (!known) return out;
      int64_t total = NumElements(x, "reshape");
      if (infer >= 0) {
        if (prod == 0 || total % prod != 0)
          Fail("reshape (node ", id, "): cannot reshape ", ShapeStr(x), " to ", ShapeStr(n.a0));
        out[infer] = total / prod;
      } else if (prod != total) {
        Fail("reshape (node ", id, "): cannot reshape ", ShapeStr(x), " (", total, " elements) to ", ShapeStr(n.a0),
             " (", prod, " elements)");
      }
      return out;
    }
    case Op::kTranspose: {
      const Shape& x = in(0);
      Shape out(x.size());
      for (size_t i = 0; i < x.size(); ++i) out[i] = x[n.a0[i]];
      return out;
    }
    case Op::kReduce: {
      const Shape& x = in(0);
      Shape out;
      for (size_t i = 0; i < x.size(); ++i) {
        bool red = std::find(n.a0.begin(), n.a0.end(), int64_t(i)) != n.a0.end();
        if (!red)
          out.push_back(x[i]);
        else if (n.keepdims)
          out.push_back(1);
      }
      return out;
    }
    case Op::kElemAny:
      return {};
    case Op::kMatMul: {
      const Shape& a = in(0);
      const Shape& b = in(1);
      if (a.size() < 2 || b.size() < 2)
        Fail("matmul (node ", id, "): operands need rank >= 2, got ", ShapeStr(a), " and ", ShapeStr(b));
      const bool ta = n.sub & 1, tb = n.sub & 2;
      int64_t m = a[a.size() - (ta ? 1 : 2)], ka = a[a.size() - (ta ? 2 : 1)];
      int64_t kb = b[b.size() - (tb ? 1 : 2)], nn = b[b.size() - (tb ? 2 : 1)];
      if (ka >= 0 && kb >= 0 && ka != kb)
        Fail("matmul (node ", id, "): inner dims differ: ", ShapeStr(a), (ta ? "^T" : ""), " @ ", ShapeStr(b),
             (tb ? "^T" : ""), " (K = ", ka, " vs ", kb, ")");
      Shape ba(a.begin(), a.end() - 2), bb(b.begin(), b.end() - 2);
      Shape out = BroadcastShapes(ba, bb, "matmul batch dims", id);
      out.push_back(m);
      out.push_back(nn);
      return out;
    }
  }
  return {};
}

void InferShapes(const Graph& g, std::span<const Shape> input_shapes, std::vector<Shape>& shapes) {
  if (!input_shapes.empty() && input_shapes.size() != g.inputs.size())
    Fail("launch: kernel has ", g.inputs.size(), " inputs, got ", input_shapes.size(), " shapes");
  shapes.resize(g.nodes.size());
  for (size_t i = 0; i < g.nodes.size(); ++i) shapes[i] = InferNode(g, int(i), shapes, input_shapes);
}

std::string Dump(const Graph& g) {
  std::ostringstream os;
  os << "kernel " << (g.type == KernelType::kStatic ? "static" : "dynamic") << " {\n";
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const Node& n = g.nodes[i];
    os << "  %" << i << " = ";
    switch (n.op) {
      case Op::kLoad:
        os << (n.a1.empty() ? "load" : "slice_load") << " in" << n.io;
        break;
      case Op::kStore:
        os << (n.sub ? "pad_store" : "store") << " out" << n.io;
        break;
      case Op::kUnary:
        os << UnaryOpName(UnaryOp(n.sub));
        break;
      case Op::kBinary:
      case Op::kBinaryTS:
      case Op::kBinaryST:
        os << BinaryOpName(BinaryOp(n.sub));
        break;
      case Op::kReduce:
        os << "reduce_" << ReduceOpName(ReduceOp(n.sub));
        break;
      case Op::kCopy:
        os << (n.sub ? "stage_boundary" : "copy");
        break;
      default:
        os << OpName(n.op);
    }
    os << " " << DTypeName(n.dtype) << ShapeStr(n.shape);
    if (n.op == Op::kBinaryST) os << " " << n.scalar << ",";
    for (int k = 0; k < n.num_inputs(); ++k) os << (k ? ", %" : " %") << n.in[k];
    if (n.op == Op::kBinaryTS) os << ", " << n.scalar;
    if (n.op == Op::kScalar) os << " " << n.scalar;
    if (n.op == Op::kLoad && !n.a1.empty())
      os << " of " << ShapeStr(n.a0) << " start=" << ShapeStr(n.a1) << " end=" << ShapeStr(n.a2)
         << " step=" << ShapeStr(n.a3);
    if (n.op == Op::kStore && n.sub)
      os << " into " << ShapeStr(n.a0) << " at " << ShapeStr(n.a1) << " pad=" << n.scalar;
    if (n.op == Op::kReduce) os << " axes=" << ShapeStr(n.a0) << (n.keepdims ? " keepdims" : "");
    if (n.op == Op::kTranspose) os << " perm=" << ShapeStr(n.a0);
    if (n.op == Op::kMatMul) os << ((n.sub & 1) ? " trans_a" : "") << ((n.sub & 2) ? " trans_b" : "");
    os << "\n";
  }
  os << "}\n";
  return os.str();
}

}  // namespace ir
}  // namespace dvm
