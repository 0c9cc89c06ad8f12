// Graph builder: records nodes and infers symbolic shapes, recording the
// facts every op implies in the graph's symbol table.
#include <algorithm>
#include <sstream>

#include "graph/graph_ir.h"
#include "ir/error.h"
#include "ir/ir.h"
#include "ir/op_rules.h"

namespace dvm {
namespace graph {

const char* GOpName(GOp op) {
  switch (op) {
    case GOp::kInput:
      return "input";
    case GOp::kConst:
      return "const";
    case GOp::kUnary:
      return "unary";
    case GOp::kBinary:
      return "binary";
    case GOp::kBinaryTS:
      return "binary_ts";
    case GOp::kBinaryST:
      return "binary_st";
    case GOp::kSelect:
      return "select";
    case GOp::kCast:
      return "cast";
    case GOp::kBroadcast:
      return "broadcast";
    case GOp::kReshape:
      return "reshape";
    case GOp::kTranspose:
      return "transpose";
    case GOp::kReduce:
      return "reduce";
    case GOp::kMatMul:
      return "matmul";
    case GOp::kGather:
      return "gather";
    case GOp::kConcat:
      return "concat";
    case GOp::kSlice:
      return "slice";
    case GOp::kIota:
      return "iota";
    case GOp::kCausalMask:
      return "causal_mask";
  }
  return "?";
}

OpClass Classify(GOp op) {
  switch (op) {
    case GOp::kInput:
    case GOp::kConst:
      return OpClass::kLeaf;
    case GOp::kUnary:
    case GOp::kBinary:
    case GOp::kBinaryTS:
    case GOp::kBinaryST:
    case GOp::kSelect:
    case GOp::kCast:
    case GOp::kBroadcast:
      return OpClass::kElementwise;
    case GOp::kReshape:
    case GOp::kTranspose:
      return OpClass::kView;
    case GOp::kReduce:
      return OpClass::kReduce;
    case GOp::kMatMul:
      return OpClass::kMatMul;
    default:
      return OpClass::kLibrary;
  }
}

bool DimIsOne(const sym::SymbolTable& t, const sym::Expr& d) {
  sym::Expr s = t.Simplify(d);
  return s.is_const() && s.value() == 1;
}

int GraphIR::Add(GNode n) {
  nodes.push_back(std::move(n));
  return static_cast<int>(nodes.size()) - 1;
}

void GraphIR::Finalize() {
  users.assign(nodes.size(), {});
  for (size_t i = 0; i < nodes.size(); ++i)
    for (int32_t x : nodes[i].in) {
      auto& u = users[x];
      if (u.empty() || u.back() != static_cast<int32_t>(i)) u.push_back(static_cast<int32_t>(i));
    }
}

std::string GraphIR::ShapeStr(const std::vector<sym::Expr>& s) const {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) r += ", ";
    r += sym::ToString(syms.Simplify(s[i]), &syms);
  }
  return r + "]";
}

std::string GraphIR::NodeStr(int id) const {
  const GNode& n = nodes[id];
  std::ostringstream os;
  os << "%" << id << " = ";
  switch (n.op) {
    case GOp::kUnary:
      os << UnaryOpName(UnaryOp(n.sub));
      break;
    case GOp::kBinary:
    case GOp::kBinaryTS:
    case GOp::kBinaryST:
      os << BinaryOpName(BinaryOp(n.sub));
      break;
    case GOp::kReduce:
      os << "reduce_" << ReduceOpName(ReduceOp(n.sub));
      break;
    default:
      os << GOpName(n.op);
  }
  if (!n.name.empty()) os << " '" << n.name << "'";
  for (size_t i = 0; i < n.in.size(); ++i) os << (i ? ", %" : " %") << n.in[i];
  if (n.op == GOp::kBinaryTS || n.op == GOp::kBinaryST) os << ", " << n.scalar;
  if (n.op == GOp::kTranspose || n.op == GOp::kReduce || n.op == GOp::kConcat || n.op == GOp::kSlice) {
    os << " axes=(";
    for (size_t i = 0; i < n.axes.size(); ++i) os << (i ? "," : "") << n.axes[i];
    os << ")";
  }
  if (n.op == GOp::kMatMul && n.sub) os << " trans=" << int(n.sub);
  os << " : " << DTypeName(n.dtype) << ShapeStr(n.shape);
  return os.str();
}

std::string GraphIR::Dump() const {
  std::string r;
  for (size_t i = 0; i < nodes.size(); ++i) r += NodeStr(static_cast<int>(i)) + "\n";
  r += "outputs:";
  for (int32_t o : outputs) r += " %" + std::to_string(o);
  return r + "\n";
}

Shape GraphIR::Eval(int id, std::span<const int64_t> binding) const {
  const auto& s = nodes[id].shape;
  Shape r(s.size());
  for (size_t i = 0; i < s.size(); ++i) r[i] = s[i].Eval(binding);
  return r;
}

}  // namespace graph

using graph::GNode;
using graph::GOp;
using sym::Expr;

namespace {

struct Builder {
  graph::GraphIR& g;

  const GNode& N(Value v, const char* op) const {
    if (v.id < 0 || v.id >= static_cast<int32_t>(g.nodes.size()))
      Fail(op, ": invalid value handle ", v.id, " (graph has ", g.nodes.size(), " nodes)");
    return g.nodes[v.id];
  }
  std::string Where(const char* op) const { return std::string(op) + " (node " + std::to_string(g.nodes.size()) + ")"; }

  Expr DimExpr(const Dim& d, const char* op) {
    if (!d.is_symbol()) {
      if (d.value() < 0) Fail(op, ": negative dim ", d.value());
      return Expr(d.value());
    }
    int id = g.syms.Find(d.symbol());
    if (id < 0) id = g.syms.NewSymbol(d.symbol());
    return Expr::Symbol(id);
  }

  // Numpy broadcast of two symbolic shapes, recording facts.
  std::vector<Expr> Broadcast(const std::vector<Expr>& a, const std::vector<Expr>& b, const std::string& why) {
    const size_t r = std::max(a.size(), b.size());
    std::vector<Expr> out(r);
    for (size_t i = 0; i < r; ++i) {
      const bool ha = i >= r - a.size(), hb = i >= r - b.size();
      const Expr da = ha ? a[i - (r - a.size())] : Expr(1);
      const Expr db = hb ? b[i - (r - b.size())] : Expr(1);
      out[i] = (ha && hb) ? g.syms.Broadcast(da, db, why + " axis " + std::to_string(i)) : (ha ? da : db);
    }
    return out;
  }

  Value Push(GNode n) {
    for (auto& d : n.shape) d = g.syms.Simplify(d);
    return Value{g.Add(std::move(n))};
  }
};

int64_t NormAxis(int64_t a, size_t rank, const char* op) {
  const int64_t r = static_cast<int64_t>(rank);
  const int64_t na = a < 0 ? a + r : a;
  if (na < 0 || na >= r) Fail(op, ": axis ", a, " out of range for rank ", r);
  return na;
}

}  // namespace

Graph::Graph() : impl_(std::make_unique<Impl>()) {}
Graph::~Graph() = default;
Graph::Graph(Graph&&) noexcept = default;
Graph& Graph::operator=(Graph&&) noexcept = default;

Value Graph::Input(const std::string& name, const DimList& shape, DType type) {
  Builder b{impl_->ir};
  if (static_cast<uint8_t>(type) >= kNumDTypes) Fail("input '", name, "': bad dtype ", int(type));
  if (shape.size() > 8) Fail("input '", name, "': rank ", shape.size(), " exceeds 8");
  GNode n;
  n.op = GOp::kInput;
  n.dtype = type;
  n.name = name;
  for (const Dim& d : shape) n.shape.push_back(b.DimExpr(d, "input"));
  n.io = static_cast<int32_t>(impl_->ir.inputs.size());
  Value v = b.Push(std::move(n));
  impl_->ir.inputs.push_back(v.id);
  return v;
}

Value Graph::Constant(const std::string& name, const Shape& shape, DType type, const void* data) {
  Builder b{impl_->ir};
  if (static_cast<uint8_t>(type) >= kNumDTypes) Fail("constant '", name, "': bad dtype ", int(type));
  const int64_t numel = ir::NumElements(shape, "constant");
  if (data == nullptr && numel > 0) Fail("constant '", name, "': null data");
  GNode n;
  n.op = GOp::kConst;
  n.dtype = type;
  n.name = name;
  n.data = data;
  n.const_shape = shape;
  for (int64_t d : shape) n.shape.push_back(Expr(d));
  return b.Push(std::move(n));
}

Value Graph::Unary(UnaryOp op, Value x) {
  Builder b{impl_->ir};
  const GNode& in = b.N(x, "unary");
  GNode n;
  n.op = GOp::kUnary;
  n.sub = static_cast<uint8_t>(op);
  n.dtype = ir::UnaryResult(op, in.dtype);
  n.in = {x.id};
  n.shape = in.shape;
  return b.Push(std::move(n));
}

Value Graph::Binary(BinaryOp op, Value a, Value c) {
  Builder b{impl_->ir};
  const GNode& na = b.N(a, BinaryOpName(op));
  const GNode& nc = b.N(c, BinaryOpName(op));
  GNode n;
  n.op = GOp::kBinary;
  n.sub = static_cast<uint8_t>(op);
  n.dtype = ir::BinaryResult(op, na.dtype, nc.dtype);
  n.in = {a.id, c.id};
  n.shape = b.Broadcast(na.shape, nc.shape, b.Where(BinaryOpName(op)));
  return b.Push(std::move(n));
}

Value Graph::Binary(BinaryOp op, Value a, double scalar) {
  Builder b{impl_->ir};
  const GNode& na = b.N(a, BinaryOpName(op));
  GNode n;
  n.op = GOp::kBinaryTS;
  n.sub = static_cast<uint8_t>(op);
  n.dtype = ir::BinaryResult(op, na.dtype, na.dtype);
  n.in = {a.id};
  n.scalar = scalar;
  n.shape = na.shape;
  return b.Push(std::move(n));
}

Value Graph::Binary(BinaryOp op, double scalar, Value a) {
  Value v = Binary(op, a, scalar);
  impl_->ir.nodes[v.id].op = GOp::kBinaryST;
  return v;
}

Value Graph::Select(Value cond, Value a, Value c) {
  Builder b{impl_->ir};
  const GNode& nk = b.N(cond, "select");
  const GNode& na = b.N(a, "select");
  const GNode& nc = b.N(c, "select");
  GNode n;
  n.op = GOp::kSelect;
  n.dtype = ir::SelectResult(nk.dtype, na.dtype, nc.dtype);
  n.in = {cond.id, a.id, c.id};
  const std::string why = b.Where("select");
  n.shape = b.Broadcast(b.Broadcast(nk.shape, na.shape, why), nc.shape, why);
  return b.Push(std::move(n));
}

Value Graph::Cast(Value x, DType type) {
  Builder b{impl_->ir};
  const GNode& in = b.N(x, "cast");
  ir::CheckCast(type);
  GNode n;
  n.op = GOp::kCast;
  n.dtype = type;
  n.in = {x.id};
  n.shape = in.shape;
  return b.Push(std::move(n));
}

Value Graph::Broadcast(Value x, const DimList& shape) {
  Builder b{impl_->ir};
  const GNode& in = b.N(x, "broadcast");
  if (shape.size() < in.shape.size())
    Fail("broadcast: target rank ", shape.size(), " below input rank ", in.shape.size(), " ",
         impl_->ir.ShapeStr(in.shape));
  GNode n;
  n.op = GOp::kBroadcast;
  n.dtype = in.dtype;
  n.in = {x.id};
  for (const Dim& d : shape) n.shape.push_back(b.DimExpr(d, "broadcast"));
  const std::string why = b.Where("broadcast");
  const size_t off = shape.size() - in.shape.size();
  for (size_t i = 0; i < in.shape.size(); ++i) {
    const Expr& s = in.shape[i];
    if (graph::DimIsOne(impl_->ir.syms, s)) continue;
    n.shape[off + i] = impl_->ir.syms.Equal(s, n.shape[off + i], why + " axis " + std::to_string(off + i));
  }
  return b.Push(std::move(n));
}

Value Graph::Reshape(Value x, const DimList& shape) {
  Builder b{impl_->ir};
  const GNode& in = b.N(x, "reshape");
  auto& syms = impl_->ir.syms;
  GNode n;
  n.op = GOp::kReshape;
  n.dtype = in.dtype;
  n.in = {x.id};
  Expr total = 1, known = 1;
  for (const Expr& d : in.shape) total = total * d;
  int infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (!shape[i].is_symbol() && shape[i].value() == -1) {
      if (infer >= 0) Fail("reshape: more than one -1 in the target shape");
      infer = static_cast<int>(i);
      n.shape.push_back(Expr(0));
      continue;
    }
    n.shape.push_back(b.DimExpr(shape[i], "reshape"));
    known = known * n.shape.back();
  }
  const std::string why = b.Where("reshape") + " element count";
  if (infer >= 0) {
    Expr k = syms.Simplify(known);
    if (k.is_const() && k.value() == 0) Fail("reshape: cannot infer -1 with a zero-size target dim");
    Expr inferred = syms.Simplify(FloorDiv(total, k));
    syms.Equal(inferred * k, total, why);
    n.shape[infer] = inferred;
  } else {
    syms.Equal(known, total, why);
  }
  return b.Push(std::move(n));
}

Value Graph::Transpose(Value x, const Shape& perm) {
  Builder b{impl_->ir};
  const GNode& in = b.N(x, "transpose");
  if (perm.size() != in.shape.size()) Fail("transpose: perm has ", perm.size(), " axes for rank ", in.shape.size());
  std::vector<bool> seen(perm.size(), false);
  GNode n;
  n.op = GOp::kTranspose;
  n.dtype = in.dtype;
  n.in = {x.id};
  for (int64_t p : perm) {
    int64_t a = NormAxis(p, perm.size(), "transpose");
    if (seen[a]) Fail("transpose: axis ", p, " repeated in perm");
    seen[a] = true;
    n.axes.push_back(a);
    n.shape.push_back(in.shape[a]);
  }
  return b.Push(std::move(n));
}

Value Graph::Reduce(ReduceOp op, Value x, const Shape& axes, bool keepdims) {
  Builder b{impl_->ir};
  const GNode& in = b.N(x, "reduce");
  GNode n;
  n.op = GOp::kReduce;
  n.sub = static_cast<uint8_t>(op);
  n.dtype = ir::ReduceResult(op, in.dtype);
  n.keepdims = keepdims;
  n.in = {x.id};
  for (int64_t a : axes) {
    int64_t na = NormAxis(a, in.shape.size(), "reduce");
    if (std::find(n.axes.begin(), n.axes.end(), na) != n.axes.end()) Fail("reduce: duplicate axis ", a);
    n.axes.push_back(na);
  }
  std::sort(n.axes.begin(), n.axes.end());
  for (size_t d = 0; d < in.shape.size(); ++d) {
    bool red = std::find(n.axes.begin(), n.axes.end(), int64_t(d)) != n.axes.end();
    if (!red)
      n.shape.push_back(in.shape[d]);
    else if (keepdims)
      n.shape.push_back(Expr(1));
  }
  return b.Push(std::move(n));
}

Value Graph::MatMul(Value a, Value c, bool trans_a, bool trans_b) {
  Builder b{impl_->ir};
  const GNode& na = b.N(a, "matmul");
  const GNode& nc = b.N(c, "matmul");
  if (na.shape.size() < 2 || nc.shape.size() < 2)
    Fail("matmul: operands need rank >= 2, got ", impl_->ir.ShapeStr(na.shape), " and ", impl_->ir.ShapeStr(nc.shape));
  GNode n;
  n.op = GOp::kMatMul;
  n.sub = static_cast<uint8_t>((trans_a ? 1 : 0) | (trans_b ? 2 : 0));
  n.dtype = ir::MatMulResult(na.dtype, nc.dtype);
  n.in = {a.id, c.id};
  const size_t ra = na.shape.size(), rb = nc.shape.size();
  Expr m = na.shape[ra - (trans_a ? 1 : 2)], ka = na.shape[ra - (trans_a ? 2 : 1)];
  Expr kb = nc.shape[rb - (trans_b ? 1 : 2)], nn = nc.shape[rb - (trans_b ? 2 : 1)];
  const std::string why = b.Where("matmul");
  impl_->ir.syms.Equal(ka, kb, why + " inner dims");
  std::vector<Expr> ba(na.shape.begin(), na.shape.end() - 2), bb(nc.shape.begin(), nc.shape.end() - 2);
  n.shape = b.Broadcast(ba, bb, why + " batch");
  n.shape.push_back(m);
  n.shape.push_back(nn);
  return b.Push(std::move(n));
}

Value Graph::Gather(Value table, Value ids) {
  Builder b{impl_->ir};
  const GNode& nt = b.N(table, "gather");
  const GNode& ni = b.N(ids, "gather");
  if (nt.shape.empty()) Fail("gather: table must have rank >= 1");
  if (ni.dtype != DType::kInt32) Fail("gather: ids must be int32, got ", DTypeName(ni.dtype));
  GNode n;
  n.op = GOp::kGather;
  n.dtype = nt.dtype;
  n.in = {table.id, ids.id};
  n.shape = ni.shape;
  n.shape.insert(n.shape.end(), nt.shape.begin() + 1, nt.shape.end());
  if (n.shape.size() > 8) Fail("gather: result rank ", n.shape.size(), " exceeds 8");
  return b.Push(std::move(n));
}

Value Graph::Concat(const std::vector<Value>& xs, int64_t axis) {
  Builder b{impl_->ir};
  if (xs.empty()) Fail("concat: no inputs");
  const GNode& first = b.N(xs[0], "concat");
  const int64_t ax = NormAxis(axis, first.shape.size(), "concat");
  GNode n;
  n.op = GOp::kConcat;
  n.dtype = first.dtype;
  n.axes = {ax};
  n.shape = first.shape;
  const std::string why = b.Where("concat");
  Expr sum = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const GNode& x = b.N(xs[i], "concat");
    if (x.dtype != first.dtype)
      Fail("concat: input ", i, " has dtype ", DTypeName(x.dtype), ", input 0 has ", DTypeName(first.dtype));
    if (x.shape.size() != first.shape.size())
      Fail("concat: input ", i, " has rank ", x.shape.size(), ", input 0 has rank ", first.shape.size());
    for (size_t d = 0; d < x.shape.size(); ++d)
      if (int64_t(d) != ax)
        n.shape[d] = impl_->ir.syms.Equal(n.shape[d], x.shape[d], why + " axis " + std::to_string(d));
    sum = sum + x.shape[ax];
    n.in.push_back(xs[i].id);
  }
  n.shape[ax] = sum;
  return b.Push(std::move(n));
}

std::vector<Value> Graph::Split(Value x, int64_t axis, const DimList& sizes) {
  Builder b{impl_->ir};
  const GNode& in = b.N(x, "split");
  const int64_t ax = NormAxis(axis, in.shape.size(), "split");
  if (sizes.empty()) Fail("split: no sizes");
  std::vector<Expr> sz;
  Expr sum = 0;
  for (const Dim& d : sizes) {
    sz.push_back(b.DimExpr(d, "split"));
    sum = sum + sz.back();
  }
  impl_->ir.syms.Equal(sum, in.shape[ax], b.Where("split") + " sizes sum to the dim");
  std::vector<Value> out;
  Expr start = 0;
  const std::vector<Expr> shape = impl_->ir.nodes[x.id].shape;
  const DType dt = in.dtype;
  for (const Expr& s : sz) {
    GNode n;
    n.op = GOp::kSlice;
    n.dtype = dt;
    n.in = {x.id};
    n.axes = {ax};
    n.start = impl_->ir.syms.Simplify(start);
    n.shape = shape;
    n.shape[ax] = s;
    out.push_back(b.Push(std::move(n)));
    start = start + s;
  }
  return out;
}

Value Graph::Iota(const Dim& n_dim, DType type, double start, double step) {
  Builder b{impl_->ir};
  if (type == DType::kBool || static_cast<uint8_t>(type) >= kNumDTypes)
    Fail("iota: dtype ", DTypeName(type), " not supported");
  GNode n;
  n.op = GOp::kIota;
  n.dtype = type;
  n.scalar = start;
  n.scalar2 = step;
  n.shape = {b.DimExpr(n_dim, "iota")};
  return b.Push(std::move(n));
}

Value Graph::CausalMask(const Dim& q, const Dim& kv, DType type) {
  Builder b{impl_->ir};
  if (type == DType::kInt32 || type == DType::kInt8 || static_cast<uint8_t>(type) >= kNumDTypes)
    Fail("causal_mask: dtype ", DTypeName(type), " not supported (floats or bool)");
  GNode n;
  n.op = GOp::kCausalMask;
  n.dtype = type;
  n.shape = {b.DimExpr(q, "causal_mask"), b.DimExpr(kv, "causal_mask")};
  return b.Push(std::move(n));
}

void Graph::Output(Value v) {
  Builder b{impl_->ir};
  b.N(v, "output");
  impl_->ir.outputs.push_back(v.id);
}

std::string Graph::ShapeString(Value v) const {
  Builder b{impl_->ir};
  return impl_->ir.ShapeStr(b.N(v, "shape").shape);
}
DType Graph::GetDType(Value v) const {
  Builder b{impl_->ir};
  return b.N(v, "dtype").dtype;
}
size_t Graph::num_nodes() const { return impl_->ir.nodes.size(); }
std::string Graph::Dump() const { return impl_->ir.Dump(); }
std::string Graph::Facts() const { return impl_->ir.syms.FactsString(); }

}  // namespace dvm
