#include "codegen/codegen.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "bytecode/format.h"
#include "ir/dtype.h"
#include "ir/error.h"

namespace dvm::codegen {
namespace {

using bc::Level;
using bc::Mode;
using bc::Opcode;

// Shapes and strides in codegen: rank <= 8, held inline (no heap traffic in
// the hot path).
struct Dims8 {
  int64_t v[bc::kMaxRank] = {};
  uint8_t n = 0;
  Dims8() = default;
  Dims8(std::initializer_list<int64_t> l) {
    for (int64_t x : l) v[n++] = x;
  }
  explicit Dims8(size_t r, int64_t fill = 0) : n(static_cast<uint8_t>(r)) { std::fill(v, v + r, fill); }
  Dims8(const Shape& s) : n(static_cast<uint8_t>(s.size())) {  // NOLINT: implicit on purpose
    if (s.size() > bc::kMaxRank) Fail("codegen: rank ", s.size(), " exceeds ", bc::kMaxRank);
    std::copy(s.begin(), s.end(), v);
  }
  size_t size() const { return n; }
  int64_t& operator[](size_t i) { return v[i]; }
  int64_t operator[](size_t i) const { return v[i]; }
  int64_t* begin() { return v; }
  int64_t* end() { return v + n; }
  const int64_t* begin() const { return v; }
  const int64_t* end() const { return v + n; }
  void assign(size_t r, int64_t x) {
    n = static_cast<uint8_t>(r);
    std::fill(v, v + r, x);
  }
  bool operator==(const Dims8& o) const { return n == o.n && std::equal(v, v + n, o.v); }
  operator std::span<const int64_t>() const { return {v, n}; }
  Shape vec() const { return Shape(v, v + n); }
};

// ---- lowered IR ---------------------------------------------------------------

// kChunkB: a value per chunk (in[0], a kChunk or computed from one at the
// partials' level) over every element of its chunk; only inside that
// chunk's own stage (ChunkMoments).
enum class L : uint8_t { kLoad, kConst, kUn, kBin, kSel, kCast, kCopy, kReduce, kChunk, kChunkB, kMatMul };

struct LNode {
  L op = L::kCopy;
  uint8_t sub = 0;
  DType dtype = DType::kFloat32;
  int in[3] = {-1, -1, -1};
  Dims8 shape;
  // kLoad: tensor view over `shape`.
  int tensor = -1;
  int64_t offset = 0;
  Dims8 strides;
  // kBin scalar forms / kConst.
  uint8_t form = bc::kFormRR;
  double scalar = 0;
  // kReduce: reduced axes of the input (bit per axis), as keepdims.
  uint32_t rmask = 0;
  int num_in() const { return in[0] < 0 ? 0 : in[1] < 0 ? 1 : in[2] < 0 ? 2 : 3; }
  bool leaf() const { return op == L::kLoad || op == L::kConst; }
};

struct Root {
  int value;
  int tensor;
  int64_t offset;
  Dims8 strides;  // over the value's shape
};

Dims8 Contiguous(const Dims8& s) {
  Dims8 st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

int64_t Numel(const Dims8& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

// Strides that walk dims [0, rank) as one dense row-major run.
bool DenseStrides(const int64_t* dims, const int64_t* strides, size_t rank) {
  int64_t acc = 1;
  for (size_t i = rank; i-- > 0;) {
    if (dims[i] != 1 && strides[i] != acc) return false;
    acc *= dims[i];
  }
  return true;
}
bool IsContiguousView(const LNode& n) { return DenseStrides(n.shape.begin(), n.strides.begin(), n.shape.size()); }

uint32_t ConstBits(double v, DType t) {
  if (IsFloat(t)) return F32Bits(static_cast<float>(v));
  int32_t i = t == DType::kBool ? (v != 0) : SatF32ToI32(v);
  if (t == DType::kInt8) i = WrapI8(i);
  return static_cast<uint32_t>(i);
}

double ReduceIdentity(ReduceOp op, DType t) {
  switch (op) {
    case ReduceOp::kSum:
      return 0;
    case ReduceOp::kProd:
      return 1;
    case ReduceOp::kMax:
      return IsFloat(t) ? -HUGE_VAL : t == DType::kInt8 ? -128 : t == DType::kBool ? 0 : -2147483648.0;
    case ReduceOp::kMin:
      return IsFloat(t) ? HUGE_VAL : t == DType::kInt8 ? 127 : t == DType::kBool ? 1 : 2147483647.0;
  }
  return 0;
}

Opcode CombineOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return Opcode::ADD;
    case ReduceOp::kMax:
      return Opcode::MAX;
    case ReduceOp::kMin:
      return Opcode::MIN;
    case ReduceOp::kProd:
      return Opcode::MUL;
  }
  return Opcode::ADD;
}
Opcode RowOp(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return Opcode::RSUM;
    case ReduceOp::kMax:
      return Opcode::RMAX;
    case ReduceOp::kMin:
      return Opcode::RMIN;
    case ReduceOp::kProd:
      return Opcode::RPROD;
  }
  return Opcode::RSUM;
}

constexpr Opcode kUnaryOpcode[] = {Opcode::SQRT,  Opcode::RSQRT,    Opcode::ABS,  Opcode::NEG,     Opcode::EXP,
                                   Opcode::LOG,   Opcode::RECIP,    Opcode::TANH, Opcode::SIGMOID, Opcode::ERF,
                                   Opcode::RELU,  Opcode::SIN,      Opcode::COS,  Opcode::FLOOR,   Opcode::CEIL,
                                   Opcode::ROUND, Opcode::ISFINITE, Opcode::NOT};
constexpr Opcode kBinaryOpcode[] = {Opcode::ADD, Opcode::SUB, Opcode::MUL, Opcode::DIV, Opcode::POW,
                                    Opcode::MAX, Opcode::MIN, Opcode::EQ,  Opcode::NE,  Opcode::LT,
                                    Opcode::LE,  Opcode::GT,  Opcode::GE,  Opcode::AND, Opcode::OR};

// ---- the generator -------------------------------------------------------------

struct StagePlan {
  Mode mode = Mode::kElem;
  Dims8 dom;           // domain, rank r
  uint32_t rmask = 0;  // reduced axes of dom
  int chunk_node = -1;
  int gemm_node = -1;  // kGemm: the matmul; its C workspace is written by the stage
  std::vector<int> roots;
  std::vector<int> reads_ws;  // workspace tensors read
  std::vector<int> writes;    // tensors written
};

class Gen {
 public:
  // One generator per thread is reused, so its buffers keep their capacity
  // and a codegen makes few heap allocations.
  void Run(const ir::Graph& g, std::span<const Shape> ins, Result& out, const Tiling& t) {
    g_ = &g;
    ins_ = ins;
    out_ = &out;
    t_ = &t;
    map_.clear();
    ln_.clear();
    mat_.clear();
    mat_plan_.clear();
    roots_.clear();
    root_plan_.clear();
    pending_stores_.clear();
    tensors_.clear();
    consts_.clear();
    plans_.clear();
    stages_.clear();
    num_regs_ = 0;
    tile_cap_ = 16;
    cur_plan_ = 1 << 30;
    ir::InferShapes(*g_, ins_, shapes_);
    SetupTensors();
    Lower();
    for (size_t i = 0; i < roots_.size(); ++i)
      if (root_plan_[i] < 0) Process(static_cast<int>(i));
    Emit();
  }

 private:
  // -- tensors --
  void SetupTensors() {
    for (size_t s = 0; s < g_->inputs.size(); ++s) {
      const ir::Node& n = g_->nodes[g_->inputs[s]];
      Shape full = n.a0;
      if (!ins_.empty()) full = ins_[s];
      int64_t numel = ir::NumElements(full, "load");
      tensors_.push_back({n.dtype, bc::TensorKind::kInput, static_cast<uint16_t>(s), numel});
      out_->input_numel.push_back(numel);
    }
    out_->output_shapes.clear();
    for (size_t s = 0; s < g_->outputs.size(); ++s) {
      const ir::Node& n = g_->nodes[g_->outputs[s]];
      const Shape& sh = shapes_[g_->outputs[s]];
      tensors_.push_back({n.dtype, bc::TensorKind::kOutput, static_cast<uint16_t>(s), ir::NumElements(sh, "store")});
      out_->output_shapes.push_back(sh);
    }
  }
  int OutputTensor(int slot) const { return static_cast<int>(g_->inputs.size()) + slot; }

  int AddWorkspace(DType t, int64_t numel) {
    int slot = static_cast<int>(out_->workspace_bytes.size());
    out_->workspace_bytes.push_back(numel * static_cast<int64_t>(DTypeSize(t)));
    tensors_.push_back({t, bc::TensorKind::kWorkspace, static_cast<uint16_t>(slot), numel});
    return static_cast<int>(tensors_.size()) - 1;
  }

  int Add(LNode n) {
    ln_.push_back(std::move(n));
    mat_.push_back(-1);
    mat_plan_.push_back(-1);
    return static_cast<int>(ln_.size()) - 1;
  }

  int MakeLoad(int tensor, DType t, Dims8 shape, int64_t offset, Dims8 strides) {
    LNode n;
    n.op = L::kLoad;
    n.dtype = t;
    n.shape = std::move(shape);
    n.tensor = tensor;
    n.offset = offset;
    n.strides = std::move(strides);
    return Add(std::move(n));
  }

  // Stores `v` to a new workspace and returns a load of it (shape of v).
  // The stage that stores it is planned here, or (into >= 0) is plan
  // `into`, which computes v at full level over its own domain already (a
  // chunked reduction of v); stages after it read the workspace.
  int Materialize(int v, int into = -1) {
    if (mat_[v] >= 0) return mat_[v];
    const LNode& n = ln_[v];
    // f16/bf16 values live in f32 between stages: rounding happens only at
    // casts and stores to the caller's tensors.
    int ws = AddWorkspace(IsFloat(n.dtype) ? DType::kFloat32 : n.dtype, Numel(n.shape));
    Dims8 shape = n.shape;
    DType dt = n.dtype;
    AddRoot({v, ws, 0, Contiguous(shape)});
    const int ri = static_cast<int>(roots_.size()) - 1;
    if (into < 0) {
      Process(ri);
    } else {
      root_plan_[ri] = into;
      plans_[into].roots.push_back(ri);
      plans_[into].writes.push_back(ws);
    }
    int load = MakeLoad(ws, dt, shape, 0, Contiguous(shape));
    mat_[v] = load;
    // Stages after the writer read it; a GEMM stage's own epilogue too.
    mat_plan_[v] = root_plan_[ri] + (ln_[v].op == L::kMatMul ? 0 : 1);
    return load;
  }
  void AddRoot(Root r) {
    roots_.push_back(std::move(r));
    root_plan_.push_back(-1);
  }
  // A materialised value is read from its workspace by stages after the one
  // that writes it; that stage (and earlier ones) compute it.
  int Resolve(int v) const { return mat_[v] >= 0 && mat_plan_[v] <= cur_plan_ ? mat_[v] : v; }

  // A value with a new shape of the same element order.
  int Reshaped(int v, const Dims8& shape) {
    LNode& n = ln_[v];
    if (n.op == L::kConst) {
      LNode c = n;
      c.shape = shape;
      return Add(std::move(c));
    }
    if (n.op != L::kLoad || !IsContiguousView(n)) v = Materialize(v);
    const LNode& l = ln_[v];
    return MakeLoad(l.tensor, l.dtype, shape, l.offset, Contiguous(shape));
  }

  // -- lowering --
  void Lower() {
    const size_t n = g_->nodes.size();
    map_.assign(n, -1);
    // Uses: is every consumer of a node a plain store?
    std::vector<uint8_t> only_stores(n, 1), used(n, 0);
    for (const ir::Node& node : g_->nodes)
      for (int k = 0; k < node.num_inputs(); ++k) {
        used[node.in[k]] = std::min(used[node.in[k]] + 1, 2);
        if (!(node.op == ir::Op::kStore && node.sub == 0)) only_stores[node.in[k]] = 0;
      }
    for (size_t i = 0; i < n; ++i) {
      const ir::Node& node = g_->nodes[i];
      const Shape& shape = shapes_[i];
      auto in = [&](int k) { return map_[node.in[k]]; };
      LNode l;
      l.dtype = node.dtype;
      l.shape = shape;
      switch (node.op) {
        case ir::Op::kLoad: {
          const Shape& full = ins_.empty() ? node.a0 : ins_[node.io];
          Dims8 st = Contiguous(full);
          int64_t off = 0;
          Dims8 strides = st;
          if (!node.a1.empty())
            for (size_t d = 0; d < full.size(); ++d) {
              off += node.a1[d] * st[d];
              strides[d] = st[d] * node.a3[d];
            }
          map_[i] = MakeLoad(node.io, node.dtype, shape, off, strides);
          continue;
        }
        case ir::Op::kStore: {
          int v = in(0);
          int tensor = OutputTensor(node.io);
          Dims8 st = Contiguous(shape);
          if (node.sub == 0) {
            pending_stores_.push_back({v, tensor, 0, Contiguous(ln_[v].shape)});
          } else {
            if (Numel(shapes_[node.in[0]]) != Numel(shape)) {
              LNode fill;
              fill.op = L::kConst;
              fill.dtype = node.dtype;
              fill.shape = shape;
              fill.scalar = node.scalar;
              pending_stores_.push_back({Add(std::move(fill)), tensor, 0, st});
            }
            int64_t off = 0;
            for (size_t d = 0; d < node.a1.size(); ++d) off += node.a1[d] * st[d];
            pending_stores_.push_back({v, tensor, off, st});
          }
          continue;
        }
        case ir::Op::kUnary:
          l.op = L::kUn;
          l.sub = static_cast<uint8_t>(kUnaryOpcode[node.sub]);
          l.in[0] = in(0);
          break;
        case ir::Op::kBinary:
        case ir::Op::kBinaryTS:
        case ir::Op::kBinaryST:
          l.op = L::kBin;
          l.sub = static_cast<uint8_t>(kBinaryOpcode[node.sub]);
          l.in[0] = in(0);
          if (node.op == ir::Op::kBinary) l.in[1] = in(1);
          l.form = node.op == ir::Op::kBinary ? bc::kFormRR : node.op == ir::Op::kBinaryTS ? bc::kFormRK : bc::kFormKR;
          l.scalar = node.scalar;
          break;
        case ir::Op::kScalar:
          l.op = L::kConst;
          l.scalar = node.scalar;
          break;
        case ir::Op::kSelect:
          l.op = L::kSel;
          for (int k = 0; k < 3; ++k) l.in[k] = in(k);
          break;
        case ir::Op::kCast:
          l.op = L::kCast;
          l.in[0] = in(0);
          break;
        case ir::Op::kCopy:
          if (node.sub == 1) {  // an explicit stage boundary
            map_[i] = Materialize(in(0));
            continue;
          }
          l.op = L::kCopy;
          l.in[0] = in(0);
          break;
        case ir::Op::kBroadcast: {
          const LNode& x = ln_[in(0)];
          if (x.op == L::kLoad || x.op == L::kConst) {
            LNode b = x;
            b.shape = shape;
            if (x.op == L::kLoad) {
              b.strides.assign(shape.size(), 0);
              size_t off = shape.size() - x.shape.size();
              for (size_t d = 0; d < x.shape.size(); ++d)
                b.strides[off + d] = x.shape[d] == shape[off + d] ? x.strides[d] : 0;
            }
            map_[i] = Add(std::move(b));
            continue;
          }
          l.op = L::kCopy;
          l.in[0] = in(0);
          break;
        }
        case ir::Op::kReshape: {
          int v = in(0);
          if (only_stores[i] && used[i]) {
            // Stores of a reshaped value write the same bytes: store it as is.
            map_[i] = v;
            continue;
          }
          map_[i] = Reshaped(v, shape);
          continue;
        }
        case ir::Op::kTranspose: {
          int v = in(0);
          if (ln_[v].op == L::kConst) {
            LNode c = ln_[v];
            c.shape = shape;
            map_[i] = Add(std::move(c));
            continue;
          }
          if (ln_[v].op != L::kLoad) v = Materialize(v);
          LNode t = ln_[v];
          t.shape = shape;
          for (size_t d = 0; d < shape.size(); ++d) t.strides[d] = ln_[v].strides[node.a0[d]];
          map_[i] = Add(std::move(t));
          continue;
        }
        case ir::Op::kMatMul: {
          l.op = L::kMatMul;
          l.sub = node.sub;
          l.in[0] = GemmOperand(in(0));
          l.in[1] = GemmOperand(in(1));
          map_[i] = Add(std::move(l));
          Materialize(map_[i]);  // C: a GEMM stage writes it, epilogues read it
          continue;
        }
        case ir::Op::kReduce:
        case ir::Op::kElemAny: {
          int x = in(0);
          ReduceOp op = ReduceOp(node.sub);
          Shape axes = node.a0;
          if (node.op == ir::Op::kElemAny) {
            LNode ne;
            ne.op = L::kBin;
            ne.sub = static_cast<uint8_t>(Opcode::NE);
            ne.dtype = DType::kBool;
            ne.shape = ln_[x].shape;
            ne.in[0] = x;
            ne.form = bc::kFormRK;
            ne.scalar = 0;
            x = Add(std::move(ne));
            op = ReduceOp::kMax;
            axes.clear();
            for (size_t d = 0; d < ln_[x].shape.size(); ++d) axes.push_back(static_cast<int64_t>(d));
          }
          map_[i] = LowerReduce(x, op, axes, node.dtype, x == in(0) && used[node.in[0]] > 1);
          const Dims8& kept = ln_[map_[i]].shape;
          if (kept != shape && !(only_stores[i] && used[i])) map_[i] = Reshaped(map_[i], shape);
          continue;
        }
      }
      map_[i] = Add(std::move(l));
    }
    for (Root& r : pending_stores_) AddRoot(r);
  }

  // A matmul operand BLAS can read in place: an f32 load whose last dim is
  // contiguous and whose rows do not overlap; anything else is copied to an
  // f32 workspace first (casts and scalings of the inputs become that copy).
  int GemmOperand(int x) {
    const LNode& n = ln_[x];
    const size_t r = n.shape.size();
    bool ok = n.op == L::kLoad && tensors_[n.tensor].dtype == DType::kFloat32 && r >= 2 && r <= 2 + bc::kMaxBatchRank;
    if (ok) {
      const int64_t rows = n.shape[r - 2], cols = n.shape[r - 1];
      ok = (cols <= 1 || n.strides[r - 1] == 1) && (rows <= 1 || n.strides[r - 2] >= cols);
    }
    return ok ? x : Materialize(x);
  }

  // Whether computing v (its computed nodes up to loads) takes a
  // transcendental function: worth storing rather than computing twice.
  bool Expensive(int v) {
    std::vector<int> slice;
    Slice(v, slice);
    for (int n : slice) {
      const LNode& x = ln_[n];
      if (x.op == L::kUn &&
          (x.sub == uint8_t(Opcode::EXP) || x.sub == uint8_t(Opcode::LOG) || x.sub == uint8_t(Opcode::TANH) ||
           x.sub == uint8_t(Opcode::SIGMOID) || x.sub == uint8_t(Opcode::ERF) || x.sub == uint8_t(Opcode::SIN) ||
           x.sub == uint8_t(Opcode::COS)))
        return true;
      if (x.op == L::kBin && x.sub == uint8_t(Opcode::POW)) return true;
    }
    return false;
  }

  // Reduce x over `axes` keeping dims; returns the lowered node. `shared`:
  // x has other users.
  int LowerReduce(int x, ReduceOp op, const Dims8& axes, DType dt, bool shared = false) {
    Dims8 xs = ln_[x].shape;
    const int r = static_cast<int>(xs.size());
    std::vector<int> red;  // non-trivial reduced axes
    for (int64_t a : axes)
      if (xs[a] != 1) red.push_back(static_cast<int>(a));
    if (red.empty()) return x;
    // Split into blocks of axes that are adjacent once size-1 dims are ignored;
    // reduce the innermost block first.
    std::vector<std::vector<int>> blocks;
    for (int a : red) {
      bool adjacent = !blocks.empty();
      if (adjacent)
        for (int d = blocks.back().back() + 1; d < a; ++d)
          if (xs[d] != 1) adjacent = false;
      if (!adjacent) blocks.emplace_back();
      blocks.back().push_back(a);
    }
    int cur = x;
    for (size_t b = blocks.size(); b-- > 0;) {
      Dims8 in_shape = ln_[cur].shape;
      uint32_t mask = 0;
      Dims8 out_shape = in_shape;
      for (int a : blocks[b]) {
        mask |= 1u << a;
        out_shape[a] = 1;
      }
      // Reduced axes trailing (after size-1 dims): rows of K elements.
      bool all = true, trailing = true, seen_red = false;
      int64_t K = 1;
      for (int d = 0; d < r; ++d) {
        if (in_shape[d] == 1) continue;
        if (mask >> d & 1) {
          seen_red = true;
          K *= in_shape[d];
        } else {
          all = false;
          if (seen_red) trailing = false;
        }
      }
      if (trailing && ((all && K > t_->chunk) || K > t_->long_row)) {
        // Long rows (or a full reduction): partials over fixed-size chunks of
        // each row (independent of the thread count) in a workspace shaped
        // like the result with nch in the last dim, then one short row over
        // the partials. Users of the result read it from a workspace: the
        // rows are not held in a tile.
        // A long row's value that others use too (softmax's exp(x - max),
        // summed and then divided) is stored by the stage that sums it and
        // read back (from cache, row by row in a row group) rather than
        // computed again by every stage that needs it.
        const bool store_too = shared && cur == x && Expensive(cur);
        const int64_t nch = (K + t_->chunk - 1) / t_->chunk;
        Dims8 ps = out_shape;
        ps[r - 1] = nch;
        if (op == ReduceOp::kSum && cur == x) {
          if (const int v = ChunkMoments(cur, mask, K, ps, out_shape); v >= 0) {
            cur = v;
            continue;
          }
        }
        LNode c;
        c.op = L::kChunk;
        c.sub = static_cast<uint8_t>(op);
        c.dtype = dt;
        c.in[0] = cur;
        c.rmask = mask;
        c.shape = ps;
        int chunk = Add(std::move(c));
        int ws = Materialize(chunk);
        // (One pass that computes, stores and sums; not a stage that
        // stores and another that reads it back to sum it.)
        if (store_too) Materialize(cur, mat_plan_[chunk] - 1);
        int load = MakeLoad(ln_[ws].tensor, dt, ps, 0, Contiguous(ps));
        LNode fin;
        fin.op = L::kReduce;
        fin.sub = static_cast<uint8_t>(op);
        fin.dtype = dt;
        fin.in[0] = load;
        fin.rmask = 1u << (r - 1);
        fin.shape = out_shape;
        cur = Add(std::move(fin));
        continue;
      }
      LNode red_node;
      red_node.op = L::kReduce;
      red_node.sub = static_cast<uint8_t>(op);
      red_node.dtype = dt;
      red_node.in[0] = cur;
      red_node.rmask = mask;
      red_node.shape = out_shape;
      cur = Add(std::move(red_node));
    }
    return cur;
  }

  int Bin(Opcode op, int a, int b, const Dims8& shape, double k = 0) {
    LNode n;
    n.op = L::kBin;
    n.sub = static_cast<uint8_t>(op);
    n.dtype = DType::kFloat32;
    n.in[0] = a;
    n.in[1] = b;
    n.form = b < 0 ? bc::kFormRK : bc::kFormRR;
    n.scalar = k;
    n.shape = shape;
    return Add(std::move(n));
  }

  // The sum over long rows of (x - m)^2, m constant along them (a
  // layernorm's variance), in chunks: the stage that sums each chunk of x
  // (the mean's partials) also sums the squared deviations from the chunk's
  // own mean, M2_c = sum (x - S_c / n)^2, in the same pass; then per row
  //   sum (x - m)^2 = sum_c M2_c + n (S_c / n - m)^2
  // (Chan et al.'s pairwise update; exact for any m when every chunk has n
  // elements) over the partials. Without it a third pass over each row
  // sums (x - m)^2 once m is known (hand-fused code uses E[x^2] - m^2
  // instead, which cancels). Needs f32 and rows a multiple of the chunk;
  // returns the sum's node (shape out_shape), or -1 (not this pattern).
  int ChunkMoments(int sq, uint32_t mask, int64_t K, const Dims8& ps, const Dims8& out_shape) {
    const int64_t n = t_->chunk;
    const DType f = DType::kFloat32;
    auto bin = [&](int v, Opcode op) {
      const LNode& b = ln_[v];
      return b.op == L::kBin && Opcode(b.sub) == op && b.form == bc::kFormRR && b.dtype == f;
    };
    if (K % n != 0 || !bin(sq, Opcode::MUL) || ln_[sq].in[0] != ln_[sq].in[1] || !bin(ln_[sq].in[0], Opcode::SUB))
      return -1;
    const Dims8 dom = ln_[sq].shape;
    const int xv = ln_[ln_[sq].in[0]].in[0], m = ln_[ln_[sq].in[0]].in[1];
    const int rk = static_cast<int>(dom.size());
    if (ln_[xv].shape != dom || ln_[xv].dtype != f || ln_[m].dtype != f || static_cast<int>(ln_[m].shape.size()) > rk)
      return -1;
    for (int a = 0; a < rk; ++a)
      if ((mask >> a & 1) && DimAt(ln_[m].shape, rk, a) != 1) return -1;
    // The chunk sums of x: the mean's, or new ones.
    int c1 = -1;
    for (int i = 0; i < static_cast<int>(ln_.size()); ++i) {
      const LNode& c = ln_[i];
      if (c.op == L::kChunk && ReduceOp(c.sub) == ReduceOp::kSum && c.in[0] == xv && c.rmask == mask && c.dtype == f &&
          mat_[i] >= 0)
        c1 = i;
    }
    if (c1 < 0) {
      LNode c;
      c.op = L::kChunk;
      c.sub = static_cast<uint8_t>(ReduceOp::kSum);
      c.dtype = f;
      c.in[0] = xv;
      c.rmask = mask;
      c.shape = ps;
      c1 = Add(std::move(c));
      Materialize(c1);
    }
    const int k = mat_plan_[c1] - 1;
    if (plans_[k].chunk_node != c1) return -1;
    LNode b;  // the chunk's mean (one value per tile) over the chunk
    b.op = L::kChunkB;
    b.dtype = f;
    b.in[0] = Bin(Opcode::MUL, c1, -1, ps, 1.0 / double(n));
    b.shape = dom;
    const int dev = Bin(Opcode::SUB, xv, Add(std::move(b)), dom);
    LNode c;
    c.op = L::kChunk;
    c.sub = static_cast<uint8_t>(ReduceOp::kSum);
    c.dtype = f;
    c.in[0] = Bin(Opcode::MUL, dev, dev, dom);
    c.rmask = mask;
    c.shape = ps;
    const int c2 = Add(std::move(c));
    Materialize(c2, k);
    const int p1 = MakeLoad(ln_[mat_[c1]].tensor, f, ps, 0, Contiguous(ps));
    const int dm = Bin(Opcode::SUB, Bin(Opcode::MUL, p1, -1, ps, 1.0 / double(n)), m, ps);
    const int t = Bin(Opcode::MUL, Bin(Opcode::MUL, dm, dm, ps), -1, ps, double(n));
    LNode v;
    v.op = L::kReduce;
    v.sub = static_cast<uint8_t>(ReduceOp::kSum);
    v.dtype = f;
    v.in[0] = Bin(Opcode::ADD, mat_[c2], t, ps);
    v.rmask = 1u << (rk - 1);
    v.shape = out_shape;
    return Add(std::move(v));
  }

  // -- staging --
  // Aligns shape s (right) to rank r; dims of missing axes are 1.
  static int64_t DimAt(const Dims8& s, int r, int i) {
    int off = r - static_cast<int>(s.size());
    return i < off ? 1 : s[i - off];
  }
  static bool FitsIn(const Dims8& s, const Dims8& dom) {
    int r = static_cast<int>(dom.size());
    if (static_cast<int>(s.size()) > r) {
      for (size_t i = 0; i + r < s.size(); ++i)
        if (s[i] != 1) return false;
    }
    for (int i = 0; i < r; ++i) {
      int64_t d = DimAt(s, r, i);
      if (d != 1 && d != dom[i]) return false;
    }
    return true;
  }
  static bool SameShape(const Dims8& s, const Dims8& dom) {
    int r = static_cast<int>(std::max(s.size(), dom.size()));
    for (int i = 0; i < r; ++i)
      if (DimAt(s, r, i) != DimAt(dom, r, i)) return false;
    return true;
  }
  static Dims8 RedShape(const Dims8& dom, uint32_t mask) {
    Dims8 s = dom;
    for (size_t i = 0; i < s.size(); ++i)
      if (mask >> i & 1) s[i] = 1;
    return s;
  }

  enum Lvl : uint8_t { kAny, kFull, kRed };

  // Computed nodes reachable from v (through materialised values as leaves),
  // in increasing id order.
  void Slice(int v, std::vector<int>& out) {
    out.clear();
    std::vector<int>& stack = stack_;
    stack.assign(1, Resolve(v));
    seen_.assign(ln_.size(), 0);
    while (!stack.empty()) {
      int n = stack.back();
      stack.pop_back();
      if (seen_[n]) continue;
      seen_[n] = 1;
      if (ln_[n].leaf()) continue;
      out.push_back(n);
      if (ln_[n].op == L::kChunk) continue;
      for (int k = 0; k < ln_[n].num_in(); ++k) stack.push_back(Resolve(ln_[n].in[k]));
    }
    std::sort(out.begin(), out.end());
  }

  void Process(int ri) {
    std::vector<int> slice;
    for (;;) {
      const int v = Resolve(roots_[ri].value);
      StagePlan plan;
      if (ln_[v].op == L::kMatMul) {
        plan.mode = Mode::kGemm;
        plan.gemm_node = v;
        plan.dom = ln_[v].shape;
        slice.clear();
        Commit(ri, plan, slice);
        return;
      }
      if (ln_[v].op == L::kChunk) {
        plan.mode = Mode::kRow;
        plan.chunk_node = v;
        plan.dom = ln_[ln_[v].in[0]].shape;
        Slice(ln_[v].in[0], slice);
        if (!CheckSlice(slice, plan)) continue;
        Commit(ri, plan, slice);
        return;
      }
      Slice(v, slice);
      int gov = -1;
      for (int n : slice)
        if (ln_[n].op == L::kReduce) gov = n;
      if (gov < 0) {
        plan.mode = Mode::kElem;
        plan.dom = ln_[v].shape;
        if (!CheckSlice(slice, plan)) continue;
        Commit(ri, plan, slice);
        return;
      }
      plan.dom = ln_[Resolve(ln_[gov].in[0])].shape;
      plan.rmask = ln_[gov].rmask;
      bool restart = false;
      for (int n : slice)
        if (ln_[n].op == L::kReduce && n != gov &&
            (ln_[n].rmask != plan.rmask || !SameShape(ln_[Resolve(ln_[n].in[0])].shape, plan.dom))) {
          Materialize(n);
          restart = true;
          break;
        }
      if (restart) continue;
      // ROW when the reduced axes are the trailing non-trivial ones.
      bool trailing = true, seen_red = false;
      for (size_t i = 0; i < plan.dom.size(); ++i) {
        if (plan.dom[i] == 1) continue;
        if (plan.rmask >> i & 1)
          seen_red = true;
        else if (seen_red)
          trailing = false;
      }
      plan.mode = trailing ? Mode::kRow : Mode::kCol;
      if (!CheckSlice(slice, plan)) continue;
      const Lvl root_lvl = lvl_[v];
      const Dims8 want = root_lvl == kRed ? RedShape(plan.dom, plan.rmask) : plan.dom;
      if (root_lvl == kAny || !SameShape(ln_[v].shape, want)) {
        Materialize(gov);
        continue;
      }
      Commit(ri, plan, slice);
      return;
    }
  }

  // ELEM and chunked ROW nests compute every node per element of the
  // domain. A computed node over a much smaller shape that is broadcast into
  // the domain (the mean or 1/sqrt(var + eps) of a long-row layernorm, a
  // scale derived from a scalar input) would be recomputed for each element:
  // it is materialised instead, computed once in a small stage of its own.
  // Returns true when it materialised one (the caller re-slices).
  bool HoistSmall(const std::vector<int>& slice, const StagePlan& plan) {
    if (plan.mode != Mode::kElem && plan.chunk_node < 0) return false;
    const int64_t dom_n = Numel(plan.dom);
    if (dom_n < kHoistMinElems) return false;
    for (int u : slice) {
      const LNode& user = ln_[u];
      if (user.op == L::kChunk) continue;
      const int64_t user_n = Numel(user.shape);
      for (int k = 0; k < user.num_in(); ++k) {
        const int in = Resolve(user.in[k]);
        const LNode& x = ln_[in];
        if (x.leaf() || x.op == L::kChunk || x.op == L::kReduce) continue;
        const int64_t xn = Numel(x.shape);
        if (xn * kHoistRatio > dom_n || xn >= user_n) continue;
        Materialize(in);
        return true;
      }
    }
    return false;
  }
  // Domains this large, and nodes this many times smaller, are worth a stage.
  static constexpr int64_t kHoistMinElems = 32768, kHoistRatio = 64;

  // Assigns levels; materialises what cannot live in the plan's nest.
  // Returns false when it changed the graph (the caller re-slices).
  bool CheckSlice(const std::vector<int>& slice, const StagePlan& plan) {
    lvl_.resize(ln_.size());
    if (HoistSmall(slice, plan)) return false;
    const Dims8 red = RedShape(plan.dom, plan.rmask);
    auto leaf_lvl = [&](int n) -> Lvl {
      if (plan.mode == Mode::kElem || plan.mode == Mode::kGemm || plan.chunk_node >= 0) return kFull;
      return FitsIn(ln_[n].shape, red) ? kAny : kFull;
    };
    for (int n : slice) {
      const LNode& x = ln_[n];
      if (x.op == L::kChunk) continue;
      if (x.op == L::kReduce && plan.chunk_node >= 0) {  // a chunked nest holds no other reduction
        Materialize(n);
        return false;
      }
      if (!FitsIn(x.shape, x.op == L::kReduce ? red : plan.dom)) {
        for (int k = 0; k < x.num_in(); ++k)
          if (!ln_[Resolve(x.in[k])].leaf()) {
            Materialize(Resolve(x.in[k]));
            return false;
          }
        // A node over loads only that is larger than the reduction's domain:
        // the reductions leave this nest instead.
        for (int r : slice)
          if (ln_[r].op == L::kReduce) {
            Materialize(r);
            return false;
          }
        Fail("codegen: node shape ", ir::ShapeStr(x.shape), " does not fit domain ", ir::ShapeStr(plan.dom));
      }
      if (plan.mode == Mode::kElem || plan.mode == Mode::kGemm || plan.chunk_node >= 0) {
        lvl_[n] = kFull;
        continue;
      }
      if (x.op == L::kReduce) {
        int in = Resolve(x.in[0]);
        Lvl li = ln_[in].leaf() ? leaf_lvl(in) : lvl_[in];
        if (li == kRed) {  // reduce of a reduced value: its own stage
          Materialize(in);
          return false;
        }
        lvl_[n] = kRed;
        continue;
      }
      bool any_full = !FitsIn(x.shape, red), any_red = false;
      for (int k = 0; k < x.num_in(); ++k) {
        int in = Resolve(x.in[k]);
        Lvl li = ln_[in].leaf() ? leaf_lvl(in) : lvl_[in];
        any_full |= li == kFull;
        any_red |= li == kRed;
      }
      if (any_full && any_red && plan.mode == Mode::kCol) {
        // A full-tile value needs a reduced one: only ROW tiles hold both.
        for (int k = 0; k < x.num_in(); ++k) {
          int in = Resolve(x.in[k]);
          if (!ln_[in].leaf() && lvl_[in] == kRed) {
            Materialize(in);
            return false;
          }
        }
      }
      lvl_[n] = any_full ? kFull : any_red ? kRed : kAny;
    }
    return true;
  }

  void Commit(int ri, const StagePlan& p, const std::vector<int>& slice) {
    // Workspaces the slice reads (through materialised loads).
    std::vector<int> reads;
    for (int n : slice)
      for (int k = 0; k < ln_[n].num_in(); ++k) {
        const LNode& in = ln_[Resolve(ln_[n].in[k])];
        if (in.op == L::kLoad && tensors_[in.tensor].kind == bc::TensorKind::kWorkspace) reads.push_back(in.tensor);
      }
    {
      const LNode& rv = ln_[Resolve(roots_[ri].value)];
      if (rv.op == L::kLoad && tensors_[rv.tensor].kind == bc::TensorKind::kWorkspace) reads.push_back(rv.tensor);
    }
    const int wt = roots_[ri].tensor;
    if (!plans_.empty()) {
      StagePlan& last = plans_.back();
      // Same nest; or an elementwise root over the full domain of a ROW/COL
      // nest (its values are full-level there), in either order.
      const bool nest = last.chunk_node < 0 && p.chunk_node < 0 && p.gemm_node < 0 && last.dom == p.dom;
      const bool elem_into = nest && p.mode == Mode::kElem && last.mode != Mode::kElem;
      const bool upgrade = nest && last.mode == Mode::kElem && p.mode != Mode::kElem;
      bool same = nest && ((last.mode == p.mode && last.rmask == p.rmask) || elem_into || upgrade);
      // A GEMM stage's epilogue reads C: each block is computed before the
      // epilogue runs on it, so the epilogue may read C only at the element
      // it computes (the load's view C's own layout over the domain). A
      // transposed or broadcast read reaches into blocks not yet computed
      // (a random kernel's maximum(transpose(transpose(C)), C) read other
      // blocks' C: 8424 of 32768 elements wrong). Any other read of the
      // stage's writes splits too.
      const int gemm_c = last.mode == Mode::kGemm ? last.writes.front() : -1;
      for (int t : reads)
        if (t != gemm_c && std::find(last.writes.begin(), last.writes.end(), t) != last.writes.end()) same = false;
      if (gemm_c >= 0 && same) {
        auto aligned = [&](const LNode& l) {
          return l.op != L::kLoad || l.tensor != gemm_c ||
                 (l.offset == 0 && l.shape == last.dom && l.strides == Contiguous(l.shape));
        };
        for (int n : slice)
          for (int k = 0; k < ln_[n].num_in() && same; ++k) same = aligned(ln_[Resolve(ln_[n].in[k])]);
        if (same) same = aligned(ln_[Resolve(roots_[ri].value)]);
      }
      if (std::find(last.writes.begin(), last.writes.end(), wt) != last.writes.end()) same = false;
      if (same) {
        if (upgrade) {
          last.mode = p.mode;
          last.rmask = p.rmask;
        }
        last.roots.push_back(ri);
        last.writes.push_back(wt);
        root_plan_[ri] = static_cast<int>(plans_.size()) - 1;
        return;
      }
    }
    StagePlan np = p;
    np.roots = {ri};
    np.writes = {wt};
    np.reads_ws = reads;
    plans_.push_back(std::move(np));
    root_plan_[ri] = static_cast<int>(plans_.size()) - 1;
  }

  // -- emission --
  struct VInstr {
    bc::Inst in;
    int sec;
    int dst_v = -1, a_v = -1, b_v = -1, c_v = -1;  // virtual registers
    bool no_alias = false;
  };

  struct StageEmit {
    bc::Stage st;
    std::vector<VInstr> code;
    int nvregs = 0;
    // memo: (node, level) -> vreg
    std::vector<int> memo[2];
    std::vector<Lvl> lvl;
    Dims8 dom, red;
    uint32_t rmask = 0;
    bool col = false, row = false, chunk = false;
    std::vector<bc::View> views;  // in domain dims (before coalescing)
    std::vector<uint8_t> wide;    // vregs that are f64 accumulator pairs
  };

  uint16_t Const(double v, DType t) {
    uint32_t bits = ConstBits(v, t);
    for (size_t i = 0; i < consts_.size(); ++i)
      if (consts_[i].dtype == t && consts_[i].bits == bits) return static_cast<uint16_t>(i);
    consts_.push_back({t, bits});
    return static_cast<uint16_t>(consts_.size() - 1);
  }

  int NewV(StageEmit& e) { return e.nvregs++; }

  void Push(StageEmit& e, int sec, Opcode op, DType type, DType src, bool red, int dst, int a = -1, int b = -1,
            int c_reg = -1, uint16_t c = 0, uint8_t form = 0, bool no_alias = false, uint8_t b_raw = 0) {
    VInstr v;
    v.in = {static_cast<uint8_t>(op),
            static_cast<uint8_t>(type),
            0,
            0,
            b_raw,
            bc::MakeFlags(form, static_cast<uint8_t>(src), red),
            c};
    v.sec = sec;
    v.dst_v = dst;
    v.a_v = a;
    v.b_v = b;
    v.c_v = c_reg;
    v.no_alias = no_alias;
    e.code.push_back(v);
  }

  uint16_t ViewFor(StageEmit& e, int tensor, int64_t offset, const Dims8& shape, const Dims8& strides, bool red) {
    bc::View v;
    v.tensor = static_cast<uint16_t>(tensor);
    v.level = red ? Level::kRed : Level::kFull;
    v.offset = offset;
    const Dims8& dom = red ? e.red : e.dom;
    const int r = static_cast<int>(dom.size());
    const int off = r - static_cast<int>(shape.size());
    for (int i = 0; i < r; ++i) {
      int j = i - off;
      int64_t d = j < 0 ? 1 : shape[j];
      v.strides[i] = (j < 0 || (d == 1 && dom[i] != 1) || dom[i] == 1) ? 0 : strides[j];
    }
    for (size_t i = 0; i < e.views.size(); ++i) {
      const bc::View& w = e.views[i];
      if (w.tensor == v.tensor && w.level == v.level && w.offset == v.offset &&
          std::equal(w.strides, w.strides + r, v.strides))
        return static_cast<uint16_t>(i);
    }
    e.views.push_back(v);
    return static_cast<uint16_t>(e.views.size() - 1);
  }

  // Emits node n at the requested level; returns its virtual register.
  // GELU, tanh form, written as (x * 0.5) * (tanh((x + x * x * x * A) * C) + 1)
  // (operands of each + and * in either order, x * x * x as (x * x) * x):
  // returns x when node n computes exactly that sequence in one float dtype,
  // else -1. The GELU instruction rounds the same steps in the same order.
  int MatchGeluTanh(int n) const {
    const LNode& y = ln_[n];
    const DType dt = y.dtype;
    if (!IsFloat(dt)) return -1;
    auto bin = [&](int v, Opcode op) -> const LNode* {
      const LNode& b = ln_[v];
      return b.op == L::kBin && Opcode(b.sub) == op && b.dtype == dt ? &b : nullptr;
    };
    // v op K with K == k (either order): the other operand, or -1.
    auto with_const = [&](int v, Opcode op, float k) {
      const LNode* b = bin(v, op);
      if (!b || b->form == bc::kFormRR || static_cast<float>(b->scalar) != k) return -1;
      return Resolve(b->in[0]);
    };
    // a op b on two tensors: both operands (in order), or false.
    auto rr = [&](int v, Opcode op, int& a, int& b) {
      const LNode* p = bin(v, op);
      if (!p || p->form != bc::kFormRR) return false;
      a = Resolve(p->in[0]);
      b = Resolve(p->in[1]);
      return true;
    };
    int h, w;
    if (!rr(n, Opcode::MUL, h, w)) return -1;
    for (int swap = 0; swap < 2; ++swap, std::swap(h, w)) {
      const int x = with_const(h, Opcode::MUL, 0.5f);
      const int th = with_const(w, Opcode::ADD, 1.0f);
      if (x < 0 || th < 0) continue;
      const LNode& t = ln_[th];
      if (t.op != L::kUn || Opcode(t.sub) != Opcode::TANH || t.dtype != dt) continue;
      const int u = with_const(Resolve(t.in[0]), Opcode::MUL, bc::kGeluC);
      int p, q;
      if (u < 0 || !rr(u, Opcode::ADD, p, q)) continue;
      if (q == x) std::swap(p, q);
      if (p != x) continue;
      const int x3 = with_const(q, Opcode::MUL, bc::kGeluA);
      int x2, x1, xa, xb;
      if (x3 < 0 || !rr(x3, Opcode::MUL, x2, x1)) continue;
      if (x1 != x) std::swap(x2, x1);
      if (x1 != x || !rr(x2, Opcode::MUL, xa, xb) || xa != x || xb != x) continue;
      if (ln_[x].dtype != dt) continue;
      return x;
    }
    return -1;
  }

  int EmitNode(StageEmit& e, int n, bool red) {
    n = Resolve(n);
    int& memo = e.memo[red][n];
    if (memo >= 0) return memo;
    const LNode& x = ln_[n];
    const int sec = (e.col && red) ? bc::kPost : bc::kBody;
    int result = -1;
    if (x.op == L::kLoad) {
      result = NewV(e);
      uint16_t view = ViewFor(e, x.tensor, x.offset, x.shape, x.strides, red);
      Push(e, sec, Opcode::LOAD, x.dtype, x.dtype, red, result, -1, -1, -1, view);
    } else if (x.op == L::kConst) {
      result = NewV(e);
      Push(e, sec, Opcode::FILL, x.dtype, x.dtype, red, result, -1, -1, -1, Const(x.scalar, x.dtype));
    } else if (x.op == L::kChunkB) {  // the chunk's value over its tile
      const int p = EmitNode(e, x.in[0], true);
      result = NewV(e);
      Push(e, bc::kBody, Opcode::BCAST, x.dtype, x.dtype, false, result, p, -1, -1, 0, 0, true);
    } else if (x.op == L::kChunk || x.op == L::kReduce) {
      const ReduceOp op = ReduceOp(x.sub);
      int in = x.op == L::kReduce && op == ReduceOp::kSum ? SquaredDeviations(e, Resolve(x.in[0])) : -1;
      if (in < 0) in = EmitNode(e, x.in[0], false);
      if (e.col && IsFloat(x.dtype)) {
        // f64 accumulator pair; rounded to f32 once, after the loop.
        const int acc = NewV(e);
        e.wide.resize(e.nvregs, 0);
        e.wide[acc] = 1;
        const uint8_t sub = static_cast<uint8_t>(op);
        Push(e, bc::kTileInit, Opcode::WFILL, x.dtype, x.dtype, true, acc, -1, -1, -1, 0, 0, false, sub);
        Push(e, bc::kBody, Opcode::WACC, x.dtype, x.dtype, true, acc, in, -1, -1, 0, 0, false, sub);
        result = NewV(e);
        Push(e, bc::kPost, Opcode::WNARROW, x.dtype, x.dtype, true, result, acc);
      } else if (e.col) {  // integers wrap: exact in any order
        const uint16_t ident = Const(ReduceIdentity(op, x.dtype), x.dtype);
        const int acc = NewV(e);
        const Opcode comb = CombineOp(op);
        Push(e, bc::kTileInit, Opcode::FILL, x.dtype, x.dtype, true, acc, -1, -1, -1, ident);
        Push(e, bc::kBody, comb, x.dtype, x.dtype, true, acc, acc, in);
        result = acc;
      } else {
        result = NewV(e);
        Push(e, bc::kBody, RowOp(op), x.dtype, x.dtype, true, result, in, -1, -1, 0, 0, true);
      }
      if (!red) {  // a reduced value used at full level: repeat it over each row
        int b = NewV(e);
        Push(e, bc::kBody, Opcode::BCAST, x.dtype, x.dtype, false, b, result, -1, -1, 0, 0, true);
        e.memo[1][n] = result;
        result = b;
      }
    } else {
      const Lvl nl = e.lvl[n];
      if (!red && nl == kRed) {
        int r = EmitNode(e, n, true);
        int b = NewV(e);
        Push(e, bc::kBody, Opcode::BCAST, x.dtype, x.dtype, false, b, r, -1, -1, 0, 0, true);
        memo = b;
        return b;
      }
      if (const int gx = MatchGeluTanh(n); gx >= 0) {
        const int a = EmitNode(e, gx, red);
        result = NewV(e);
        Push(e, sec, Opcode::GELU, x.dtype, x.dtype, red, result, a);
        e.memo[red][n] = result;
        return result;
      }
      int ops[3] = {-1, -1, -1};
      // Row values first (a reduction and what follows it), then the full
      // operands: a full value computed before a reduction it does not feed
      // would hold a tile across it (and a layernorm's x - mean would be
      // computed before its variance, see SquaredDeviations).
      for (int pass = 0; pass < 2; ++pass)
        for (int k = 0; k < x.num_in(); ++k) {
          const int in = Resolve(x.in[k]);
          if ((!red && !ln_[in].leaf() && e.lvl[in] == kRed) == (pass == 0)) ops[k] = EmitNode(e, x.in[k], red);
        }
      result = NewV(e);
      const DType src = ln_[Resolve(x.in[0])].dtype;
      switch (x.op) {
        case L::kUn:
          Push(e, sec, Opcode(x.sub), x.dtype, src, red, result, ops[0]);
          break;
        case L::kCast:
          Push(e, sec, Opcode::CAST, x.dtype, src, red, result, ops[0]);
          break;
        case L::kCopy:
          Push(e, sec, Opcode::COPY, x.dtype, src, red, result, ops[0]);
          break;
        case L::kSel:
          Push(e, sec, Opcode::SELECT, x.dtype, x.dtype, red, result, ops[0], ops[1], ops[2]);
          break;
        case L::kBin: {
          uint16_t c = x.form == bc::kFormRR ? 0 : Const(x.scalar, src);
          Push(e, sec, Opcode(x.sub), x.dtype, src, red, result, ops[0], ops[1], -1, c, x.form);
          break;
        }
        default:
          break;
      }
    }
    e.memo[red][n] = result;
    return result;
  }

  // In a ROW nest, the squares summed of d = x - m, m a computed row value
  // (a layernorm's variance), get a SUB (and BCAST) of their own: the VM
  // then runs SUB, MUL and RSUM as one pass (RowSumSqDevHandler), and d's
  // other users (the normalisation) compute x - m again inside their own
  // fused pass (NormAffineHandler) instead of reading a tile of d that a
  // pass of its own wrote: layernorm [128, 768] 4 passes per row -> 3. The
  // same instructions, rounded the same: the same bits. -1: not this case.
  int SquaredDeviations(StageEmit& e, int v) {
    if (!e.row || e.chunk) return -1;
    auto bin = [&](int n, Opcode op) {
      const LNode& b = ln_[n];
      return b.op == L::kBin && Opcode(b.sub) == op && b.form == bc::kFormRR && b.dtype == DType::kFloat32;
    };
    if (!bin(v, Opcode::MUL) || Resolve(ln_[v].in[0]) != Resolve(ln_[v].in[1])) return -1;
    const int d = Resolve(ln_[v].in[0]);
    if (!bin(d, Opcode::SUB)) return -1;
    const int xv = Resolve(ln_[d].in[0]), m = Resolve(ln_[d].in[1]);
    if (ln_[m].leaf() || e.lvl[m] != kRed || ln_[m].dtype != DType::kFloat32 || ln_[xv].dtype != DType::kFloat32 ||
        (!ln_[xv].leaf() && e.lvl[xv] == kRed))
      return -1;
    const int xr = EmitNode(e, xv, false);
    const int mr = EmitNode(e, m, true);
    const int b = NewV(e);
    Push(e, bc::kBody, Opcode::BCAST, DType::kFloat32, DType::kFloat32, false, b, mr, -1, -1, 0, 0, true);
    const int dr = NewV(e);
    Push(e, bc::kBody, Opcode::SUB, DType::kFloat32, DType::kFloat32, false, dr, xr, b, -1, 0, bc::kFormRR);
    const int sq = NewV(e);
    Push(e, bc::kBody, Opcode::MUL, DType::kFloat32, DType::kFloat32, false, sq, dr, dr, -1, 0, bc::kFormRR);
    return sq;
  }

  void EmitStage(const StagePlan& p) {
    StageEmit e;
    e.dom = p.dom;
    e.rmask = p.chunk_node >= 0 ? 0 : p.rmask;
    e.red = RedShape(p.dom, e.rmask);
    e.col = p.mode == Mode::kCol;
    e.row = p.mode == Mode::kRow;
    e.chunk = p.chunk_node >= 0;
    if (e.chunk) {
      e.red = {Numel(ln_[p.chunk_node].shape)};  // partials, row-major [rows, nch]
    }
    e.memo[0].assign(ln_.size(), -1);
    e.memo[1].assign(ln_.size(), -1);
    // Levels for this plan.
    std::vector<int> slice;
    e.lvl.assign(ln_.size(), kAny);
    for (int ri : p.roots) {
      Slice(roots_[ri].value, slice);
      if (!CheckSlice(slice, p)) Fail("codegen: internal error: stage plan changed at emission");
      for (int n : slice) e.lvl[n] = lvl_[n];
    }
    for (int ri : p.roots) {
      const Root& r = roots_[ri];
      if (p.gemm_node >= 0 && ri == p.roots.front()) {  // the GEMM itself, writing C
        e.st.gemm.c = static_cast<uint16_t>(r.tensor);
        continue;
      }
      const int v = Resolve(r.value);
      bool red = !e.chunk && p.mode != Mode::kElem && (ln_[v].op == L::kReduce || e.lvl[v] == kRed);
      if (e.chunk) red = ln_[v].op == L::kChunk;  // else the chunked value itself (Materialize into it)
      int reg = EmitNode(e, v, red);
      const LNode& x = ln_[v];
      const int sec = (e.col && red) ? bc::kPost : bc::kBody;
      uint16_t view;
      if (e.chunk && red) {
        view = ViewFor(e, r.tensor, 0, e.red, {1}, true);
      } else {
        view = ViewFor(e, r.tensor, r.offset, x.shape, r.strides, red);
      }
      Push(e, sec, Opcode::STORE, x.dtype, x.dtype, red, -1, reg, -1, -1, view);
    }
    FinishStage(e, p);
  }

  void FinishStage(StageEmit& e, const StagePlan& p) {
    bc::Stage& s = e.st;
    s.mode = p.mode;
    // Coalesce the full domain: drop size-1 dims, merge neighbours.
    const int r = static_cast<int>(e.dom.size());
    std::vector<int> keep;
    for (int i = 0; i < r; ++i)
      if (e.dom[i] != 1) keep.push_back(i);
    // Merges neighbouring kept dims into groups [first, last] where every
    // view of `lvl` allows it (and `joinable` agrees); writes the extents.
    auto coalesce = [&](Level lvl, auto skip, auto joinable, int64_t* dims, uint8_t& rank) {
      std::vector<std::pair<int, int>> g;
      for (int i : keep) {
        if (skip(i)) continue;
        if (!g.empty()) {
          const int prev = g.back().second;
          bool ok = joinable(prev, i);
          for (const bc::View& v : e.views)
            if (v.level == lvl && v.strides[prev] != v.strides[i] * e.dom[i]) ok = false;
          if (ok) {
            g.back().second = i;
            continue;
          }
        }
        g.push_back({i, i});
      }
      if (g.size() > bc::kMaxRank) Fail("codegen: iteration domain ", ir::ShapeStr(e.dom), " has too many dims");
      rank = static_cast<uint8_t>(g.size());
      for (size_t gi = 0; gi < g.size(); ++gi) {
        int64_t d = 1;
        for (int i = g[gi].first; i <= g[gi].second; ++i) d *= e.dom[i];  // dims between are 1
        dims[gi] = d;
      }
      return g;
    };
    const auto groups = coalesce(
        Level::kFull, [](int) { return false; },
        [&](int prev, int i) { return ((e.rmask >> prev) & 1) == ((e.rmask >> i) & 1); }, s.full_dims, s.full_rank);
    // Reduced domain: the kept dims that are not reduced, joined only across
    // size-1 dims.
    std::vector<std::pair<int, int>> rgroups;
    if (!e.chunk) {
      rgroups = coalesce(
          Level::kRed, [&](int i) { return (e.rmask >> i & 1) != 0; },
          [&](int prev, int i) {
            for (int j = prev + 1; j < i; ++j)
              if (e.dom[j] != 1) return false;
            return true;
          },
          s.red_dims, s.red_rank);
    } else {
      s.red_rank = 1;
      s.red_dims[0] = e.red[0];
    }
    if (p.mode == Mode::kElem || p.mode == Mode::kGemm) s.red_rank = 0;
    for (bc::View v : e.views) {
      bc::View o = v;
      std::fill(std::begin(o.strides), std::end(o.strides), 0);
      if (v.level == Level::kFull) {
        for (size_t gi = 0; gi < groups.size(); ++gi) o.strides[gi] = v.strides[groups[gi].second];
      } else if (e.chunk) {
        o.strides[0] = v.strides[0];
      } else {
        for (size_t gi = 0; gi < rgroups.size(); ++gi) o.strides[gi] = v.strides[rgroups[gi].second];
      }
      s.views.push_back(o);
    }
    // Loop parameters.
    const int64_t n_full = bc::FullElems(s);
    int64_t cap = 16;
    switch (p.mode) {
      case Mode::kGemm:
        SetupGemm(s, p);
        cap = s.gemm.body_tile;
        break;
      case Mode::kElem:
        s.p[0] = std::min<int64_t>(ElemTile(s, ProgramBody(e, s) ? ProgramTile(n_full)
                                               : Streaming(e, s) ? StreamingTile(e, s)
                                                                 : t_->elem_tile),
                                   std::max<int64_t>(n_full, 1));
        cap = s.p[0];
        break;
      case Mode::kRow: {
        const uint32_t mask = e.chunk ? ln_[p.chunk_node].rmask : e.rmask;
        int64_t K = 1;
        for (int i = 0; i < r; ++i)
          if (mask >> i & 1) K *= e.dom[i];
        if (e.chunk) {  // one chunk of one row per tile
          s.p[0] = K;
          s.p[1] = 1;
          s.p[2] = t_->chunk;
          cap = t_->chunk;
          break;
        }
        // Views that repeat one row (gamma, beta, a bias) do not force one
        // row per tile: the VM expands them once per thread and launch
        // (vm.cc FindInvariantLoads).
        const int64_t rows = K == 0 ? t_->row_tile : std::max<int64_t>(1, t_->row_tile / K);
        s.p[0] = K;
        s.p[1] = rows;
        cap = std::max<int64_t>(rows * std::max<int64_t>(K, 1), rows);
        break;
      }
      case Mode::kCol: {
        int64_t R = 1, C = 1;
        bool after = false;
        for (int i = 0; i < r; ++i) {
          if (e.rmask >> i & 1) {
            R *= e.dom[i];
            after = true;
          } else if (after) {
            C *= e.dom[i];
          }
        }
        s.p[0] = R;
        s.p[1] = C;
        s.p[2] = std::min<int64_t>(t_->col_width, std::max<int64_t>(C, 1));
        s.p[3] = t_->col_block;
        cap = s.p[2];
        break;
      }
    }
    tile_cap_ = std::max(tile_cap_, (cap + 15) / 16 * 16);
    // Empty domains need no stage (a ROW with rows but K == 0 still runs).
    if (n_full == 0 && bc::RedElems(s) == 0) return;
    if ((p.mode == Mode::kElem || p.mode == Mode::kGemm) && n_full == 0) return;
    if (p.mode == Mode::kCol && s.p[1] == 0) return;
    AllocRegs(e);
    stages_.push_back(std::move(e.st));
    RowInfo ri;
    ri.mode = p.mode;
    ri.dom = e.dom;
    ri.red = e.red;
    ri.rmask = e.chunk ? ln_[p.chunk_node].rmask : e.rmask;
    ri.chunk = e.chunk;
    ri.views = std::move(e.views);
    row_info_.push_back(std::move(ri));
  }

  // -- row groups --
  // The domains and views of an emitted stage before coalescing.
  struct RowInfo {
    Mode mode = Mode::kElem;
    Dims8 dom, red;
    uint32_t rmask = 0;  // reduced dims of dom (a chunked stage: the chunked row)
    bool chunk = false;
    std::vector<bc::View> views;
  };

  // Whether the stage's domain starts with dims of product R, none of them
  // reduced: row r of R is then a slice of its (full and reduced) domain.
  static bool SplitsRows(const RowInfo& ri, int64_t R) {
    if (ri.mode != Mode::kElem && ri.mode != Mode::kRow) return false;
    int64_t P = 1;
    for (size_t i = 0; i < ri.dom.size() && P < R; ++i) {
      if (ri.dom[i] == 1) continue;
      if (ri.rmask >> i & 1) return false;
      P *= ri.dom[i];
    }
    return P == R;
  }

  // Marks runs of stages around each chunked long-row reduction as row
  // groups: their domains split into the same R rows and every tensor the
  // run writes (workspaces, outputs) is only touched slab by slab, so row r
  // of a stage needs nothing but row r of the stages before it.
  void MarkRowGroups() {
    const size_t n = stages_.size();
    for (size_t c = 0; c < n; ++c) {
      const RowInfo& ci = row_info_[c];
      if (!ci.chunk || stages_[c].group_rows) continue;
      int64_t R = 1;
      for (size_t i = 0; i < ci.dom.size(); ++i)
        if (!(ci.rmask >> i & 1)) R *= ci.dom[i];
      if (R < 2 || R > 0xffff) continue;
      size_t lo = c, hi = c + 1;
      while (lo > 0 && !stages_[lo - 1].group_rows && SplitsRows(row_info_[lo - 1], R)) --lo;
      while (hi < n && SplitsRows(row_info_[hi], R)) ++hi;
      while (hi - lo >= 2 && !RunIsRowLocal(lo, hi, R)) --hi;  // a later stage may read across rows
      if (hi - lo < 2) continue;
      for (size_t k = lo; k < hi; ++k) {
        stages_[k].group_rows = static_cast<uint16_t>(R);
        stages_[k].row_join = k > lo;
      }
    }
  }

  bool RunIsRowLocal(size_t lo, size_t hi, int64_t R) const {
    std::vector<uint8_t> written(tensors_.size(), 0);
    for (size_t k = lo; k < hi; ++k)
      for (const bc::Inst& in : stages_[k].insts)
        if (bc::Opcode(in.op) == bc::Opcode::STORE) written[stages_[k].views[in.c].tensor] = 1;
    for (size_t k = lo; k < hi; ++k) {
      const RowInfo& ri = row_info_[k];
      for (const bc::View& v : ri.views) {
        if (!written[v.tensor]) continue;  // read-only here: any element is final
        const int64_t numel = tensors_[v.tensor].numel;
        if (numel % R != 0) return false;
        const Dims8& d = v.level == Level::kFull ? ri.dom : ri.red;
        if (!bc::SlabLocal(d.begin(), v.strides, d.size(), v.offset, R, numel / R)) return false;
      }
    }
    return true;
  }

  // A streaming ELEM body's tile: 4x the tile, or 2x with a row-invariant
  // view (a bias) of rows shorter than that: the VM reads its rows from an
  // expansion as long as the tile, which shares L1 with the streams (bias +
  // residual [64, 768] at 2 threads: 4.8 us with five-row tiles, 4.35 with
  // two).
  // Rows of 16x the tile or more take 16x tiles, each inside one row: a
  // long-row layernorm's normalize pass [64, 32768] and [8, 262144] at 2
  // threads 276-285 -> 264-272 and 325-357 -> 320-327 us (`bench stages`,
  // three alternating runs each; softmax unchanged).
  int64_t StreamingTile(const StageEmit& e, const bc::Stage& s) const {
    const int64_t T = 4 * t_->elem_tile;
    if (s.full_rank >= 2 && s.full_dims[s.full_rank - 1] >= 4 * T) return 4 * T;
    if (s.full_rank < 2 || s.full_dims[s.full_rank - 1] >= T) return T;  // a long row's view is read in place
    for (const bc::View& v : s.views)
      if (v.level == Level::kFull && bc::RowInvariant(s.full_dims, v.strides, s.full_rank))
        return RowReadChain(e, s) ? ProgramTile(bc::FullElems(s)) : T / 2;
    return T;
  }

  // A body of two f32 ADD/SUB/MUL/DIV, the second reading the first's
  // result once and nothing else reading it, whose row-invariant views (a
  // bias) are read only as the first op's second operand (or its first
  // where the op commutes) or the second op's other one: the VM runs it as
  // one fused chain that reads such a row in place, row by row (vm.cc
  // FindInvariantLoads), so the tile uses no scratch and is as long as a
  // fused program's (ProgramTile). Bias + residual [64, 768] at one thread:
  // 6.2 us with 1536-lane tiles, 5.7 with 6144 (the window of the row that
  // shorter tiles kept in L1 is gone).
  bool RowReadChain(const StageEmit& e, const bc::Stage& s) const {
    std::vector<const VInstr*> ops;
    std::vector<int> rows, stored;  // virtual registers of row-invariant loads, of stored values
    for (const VInstr& v : e.code) {
      const bc::Opcode op = bc::Opcode(v.in.op);
      if (op == bc::Opcode::STORE) {
        stored.push_back(v.a_v);
        continue;
      }
      if (op == bc::Opcode::LOAD) {
        if (bc::RowInvariant(s.full_dims, s.views[v.in.c].strides, s.full_rank)) rows.push_back(v.dst_v);
        continue;
      }
      const DType src = DType((v.in.flags & bc::kSrcMask) >> bc::kSrcShift);
      if ((op != bc::Opcode::ADD && op != bc::Opcode::SUB && op != bc::Opcode::MUL && op != bc::Opcode::DIV) ||
          DType(v.in.type) != DType::kFloat32 || src != DType::kFloat32)
        return false;
      ops.push_back(&v);
    }
    if (ops.size() != 2 || rows.empty()) return false;
    const VInstr &o1 = *ops[0], &o2 = *ops[1];
    // Operand a is a register in every form (RK: a op k, KR: k op a).
    auto reg_b = [](const VInstr& v) { return (v.in.flags & bc::kFormMask) == bc::kFormRR ? v.b_v : -1; };
    const int t = o1.dst_v;
    if ((o2.a_v == t) == (reg_b(o2) == t)) return false;  // reads t once
    auto is_stored = [&](int r) { return std::find(stored.begin(), stored.end(), r) != stored.end(); };
    if (is_stored(t)) return false;
    const bool commutes = bc::Opcode(o1.in.op) == bc::Opcode::ADD || bc::Opcode(o1.in.op) == bc::Opcode::MUL;
    for (int r : rows)
      if (is_stored(r) || (o1.a_v == r && (!commutes || reg_b(o1) < 0 || reg_b(o1) == r))) return false;
    return true;
  }

  // A streaming ELEM body, whose tiles can be 4x longer: the per-tile cost
  // (~50 ns, more with more views: view addressing, dispatch) is then paid
  // 4x less often (add [32768] 3.4 -> 2.6 us at 2 threads). Either
  //  * at most two instructions whose results need tile scratch (the VM
  //    reads contiguous 32-bit loads in place, takes a row's value as one
  //    lane and computes a stored value into its destination), so 4x tiles
  //    stay in L1; or
  //  * a long row (K >= 4x the tile, so a 4x tile stays inside one row: a
  //    view that steps along the row, such as gamma, is read in place too)
  //    and only cheap f32 arithmetic (ADD, SUB, MUL, DIV, MAX, MIN), which
  //    the VM runs as fused passes without full-size intermediates: a long
  //    row's layernorm tail [64, 32768] 1.15x (1 thread) to 1.43x (2) faster
  //    with 4x tiles; bodies with transcendental ops stay at 1x (exp * tanh
  //    + x and similar: 3-6% slower with 4x tiles, their scratch leaves L1).
  bool Streaming(const StageEmit& e, const bc::Stage& s) const {
    const int rank = s.full_rank;
    const bool long_row = rank >= 2 && s.full_dims[rank - 1] >= 4 * t_->elem_tile;
    int scratch = 0;
    bool cheap = long_row;
    for (const VInstr& v : e.code) {
      const bc::Opcode op = bc::Opcode(v.in.op);
      if (op == bc::Opcode::STORE) continue;
      if (op == bc::Opcode::LOAD) {
        const bc::View& view = s.views[v.in.c];
        const DType dt = tensors_[view.tensor].dtype;
        // In place when the view walks the whole domain contiguously; one
        // value per row (a row's max or mean) is one lane per tile (the VM
        // reads it as a row operand).
        const bool word = dt == DType::kFloat32 || dt == DType::kInt32;
        if (word && (DenseStrides(s.full_dims, view.strides, rank) || (rank >= 1 && view.strides[rank - 1] == 0)))
          continue;
        // A row repeated for every row (a bias) is expanded once per thread
        // and launch (vm.cc FindInvariantLoads), outside tile scratch.
        if (bc::RowInvariant(s.full_dims, view.strides, rank)) continue;
        cheap = cheap && word && view.strides[rank - 1] == 1;
      } else {
        const bool arith = op == bc::Opcode::ADD || op == bc::Opcode::SUB || op == bc::Opcode::MUL ||
                           op == bc::Opcode::DIV || op == bc::Opcode::MAX || op == bc::Opcode::MIN;
        cheap = cheap && arith && DType(v.in.type) == DType::kFloat32;
      }
      ++scratch;
    }
    return scratch <= 2 || cheap;
  }

  // A fused-program body's tile: an eighth of the elements, within 4x..16x
  // the tile (4096..16384 lanes). The VM keeps a program's values in
  // vector registers and strip slots, and writes its results into their
  // outputs, so a longer tile costs no L1, while every tile boundary
  // stalls the program's streams: Adam [1M] at one thread (seven streams
  // out of L2) 1024 -> 756 us from 4x to 16x tiles, [4M] 5.8 -> 4.6 ms
  // (hand-written 3.6). Eight tiles keep both threads busy on mid-sized
  // tensors.
  int64_t ProgramTile(int64_t n) const {
    return std::clamp<int64_t>((n / 8 + 15) / 16 * 16, 4 * t_->elem_tile, 16 * t_->elem_tile);
  }

  // A body of in-place loads, stores and at least three ops that the VM
  // runs as one fused program (bc::ProgramOp, f32), which takes
  // ProgramTile's longer tiles: values flowing between its ops stay in
  // registers or strip slots, so the tile's length costs no L1 and the
  // per-tile cost is paid less often (4x tiles, session 12: Adam [830000]
  // at one thread 1022 -> 785-825 us, [65536] 47.6 -> 43.2 us).
  bool ProgramBody(const StageEmit& e, const bc::Stage& s) const {
    const int rank = s.full_rank;
    int ops = 0;
    for (const VInstr& v : e.code) {
      const bc::Opcode op = bc::Opcode(v.in.op);
      if (op == bc::Opcode::STORE) continue;
      if (op == bc::Opcode::LOAD) {
        const bc::View& view = s.views[v.in.c];
        if (tensors_[view.tensor].dtype != DType::kFloat32 || !DenseStrides(s.full_dims, view.strides, rank))
          return false;
        continue;
      }
      if (!bc::ProgramOp(op) || DType(v.in.type) != DType::kFloat32) return false;
      ++ops;
    }
    return ops >= 3;
  }

  // ELEM tile length. A domain that stays 2-D or more after coalescing has a
  // view that is not contiguous across rows (a broadcast row such as a bias,
  // a slice, a transpose): tiles are then cut on row boundaries where that
  // keeps them a multiple of 16 lanes, so a tile of one row reads such a view
  // in place and other views see whole rows.
  int64_t ElemTile(const bc::Stage& s, int64_t T) const {
    if (s.full_rank < 2) return T;
    const int64_t K = s.full_dims[s.full_rank - 1];
    if (K <= 0) return T;
    if (K <= T) {
      const int64_t l = std::lcm(K, int64_t{16});
      return l <= T ? T / l * l : T;
    }
    for (int64_t pieces = (K + T - 1) / T; pieces <= 4 * ((K + T - 1) / T); ++pieces)
      if (K % pieces == 0 && (K / pieces) % 16 == 0) return K / pieces;
    return T;
  }

  // The GEMM block: operands from the matmul's (load) inputs, tiling.
  void SetupGemm(bc::Stage& s, const StagePlan& p) {
    const LNode& mm = ln_[p.gemm_node];
    const LNode& A = ln_[mm.in[0]];
    const LNode& B = ln_[mm.in[1]];
    bc::Gemm& g = s.gemm;
    const bool ta = mm.sub & 1, tb = mm.sub & 2;
    const size_t r = mm.shape.size(), ra = A.shape.size(), rb = B.shape.size();
    const int64_t M = mm.shape[r - 2], N = mm.shape[r - 1], K = A.shape[ra - (ta ? 2 : 1)];
    s.p[0] = M;
    s.p[1] = N;
    s.p[2] = K;
    s.p[3] = 0;
    g.a = static_cast<uint16_t>(A.tensor);
    g.b = static_cast<uint16_t>(B.tensor);
    g.trans_a = ta;
    g.trans_b = tb;
    g.a_off = A.offset;
    g.b_off = B.offset;
    auto ld = [](const LNode& x) {
      const size_t n = x.shape.size();
      return x.shape[n - 2] <= 1 ? std::max<int64_t>(x.shape[n - 1], 1) : x.strides[n - 2];
    };
    g.lda = ld(A);
    g.ldb = ld(B);
    // Batch dims: size-1 dims dropped, and a dim merged into the one before
    // it when both operands step through the pair as one dim (C is
    // contiguous), so up to rank-8 operands fit the format's batch dims.
    const size_t br = r - 2;
    int64_t bd[8], as[8], bs[8];
    int nb = 0;
    for (size_t i = 0; i < br; ++i) {
      auto bstride = [&](const LNode& x, size_t rx) -> int64_t {
        const int64_t j = static_cast<int64_t>(i) - static_cast<int64_t>(br - (rx - 2));
        return j < 0 || x.shape[j] == 1 ? 0 : x.strides[j];
      };
      const int64_t d = mm.shape[i], sa = bstride(A, ra), sb = bstride(B, rb);
      if (d == 1) continue;
      if (nb > 0 && as[nb - 1] == sa * d && bs[nb - 1] == sb * d) {
        bd[nb - 1] *= d;
        as[nb - 1] = sa;
        bs[nb - 1] = sb;
        continue;
      }
      bd[nb] = d, as[nb] = sa, bs[nb] = sb;
      ++nb;
    }
    if (nb > bc::kMaxBatchRank)
      Fail("matmul: ", ir::ShapeStr(A.shape), " @ ", ir::ShapeStr(B.shape), " has ", nb,
           " batch dims that do not merge; at most ", bc::kMaxBatchRank, " are supported");
    g.batch_rank = static_cast<uint8_t>(nb);
    for (int i = 0; i < nb; ++i) g.bdims[i] = bd[i], g.a_bs[i] = as[i], g.b_bs[i] = bs[i];
    // Blocks: two per thread, over rows when M is large and A is the larger
    // operand, else over columns. Each block is its own BLAS call, which
    // packs the whole of the operand that is not split (A for a column
    // split, B for a row split) again: splitting the larger one packs less
    // (128x768x768 in four row blocks packed B four times, 1.5x BLAS's time).
    const int64_t threads = std::max(1, GetNumThreads());
    if (M >= 64 * threads && (M >= N || N < 64 * threads)) {
      g.tile_rows = std::max<int64_t>(32, (M + 2 * threads - 1) / (2 * threads) + 7) / 8 * 8;
      g.tile_cols = std::max<int64_t>(N, 1);
    } else {
      g.tile_rows = std::max<int64_t>(M, 1);
      g.tile_cols = std::max<int64_t>(64, ((N + 2 * threads - 1) / (2 * threads) + 63) / 64 * 64);
    }
    // Epilogue tiles on row boundaries where that keeps them a multiple of 16
    // lanes (as ELEM tiles): a bias row is then read in place, not copied.
    g.body_tile = ElemTile(s, t_->elem_tile);
  }

  static constexpr int kFreshLoadRegs = 12;
  void AllocRegs(StageEmit& e) {
    // Order by section, keeping emission order inside a section.
    std::stable_sort(e.code.begin(), e.code.end(), [](const VInstr& a, const VInstr& b) { return a.sec < b.sec; });
    std::vector<int> last(e.nvregs, -1);
    for (size_t i = 0; i < e.code.size(); ++i) {
      const VInstr& v = e.code[i];
      for (int r : {v.a_v, v.b_v, v.c_v, v.dst_v})
        if (r >= 0) last[r] = static_cast<int>(i);
    }
    // A BCAST's row value stays live until the BCAST's first reader: the VM
    // fuses the BCAST into that reader, which then reads the row value.
    std::vector<int> first_read(e.nvregs, -1);
    for (size_t i = 0; i < e.code.size(); ++i)
      for (int r : {e.code[i].a_v, e.code[i].b_v, e.code[i].c_v})
        if (r >= 0 && first_read[r] < 0) first_read[r] = static_cast<int>(i);
    for (const VInstr& v : e.code)
      if (bc::Opcode(v.in.op) == bc::Opcode::BCAST && v.a_v >= 0)
        last[v.a_v] = std::max(last[v.a_v], first_read[v.dst_v]);
    // Accumulators live across the whole tile loop.
    for (const VInstr& v : e.code)
      if (v.sec == bc::kTileInit || v.sec == bc::kBlockInit)
        last[v.dst_v] = std::max<int>(last[v.dst_v], static_cast<int>(e.code.size()));
    e.wide.resize(e.nvregs, 0);
    std::vector<int> phys(e.nvregs, -1);
    std::vector<int> free_list;
    int used = 0;
    auto alloc = [&]() {
      if (!free_list.empty()) {
        int p = free_list.back();
        free_list.pop_back();
        return p;
      }
      if (used >= 255) Fail("codegen: kernel needs more than 255 tile registers");
      return used++;
    };
    auto release = [&](int vr, int i) {
      if (vr >= 0 && last[vr] == i && phys[vr] >= 0) {
        free_list.push_back(phys[vr]);
        last[vr] = -2;  // released
      }
    };
    for (size_t i = 0; i < e.code.size(); ++i) {
      VInstr& v = e.code[i];
      const int ii = static_cast<int>(i);
      auto p = [&](int vr) { return vr >= 0 ? phys[vr] : 0; };
      v.in.a = static_cast<uint8_t>(p(v.a_v));
      if (v.b_v >= 0) v.in.b = static_cast<uint8_t>(p(v.b_v));
      if (v.c_v >= 0) v.in.c = static_cast<uint16_t>(p(v.c_v));
      if (!v.no_alias) {
        release(v.a_v, ii);
        if (v.b_v != v.a_v) release(v.b_v, ii);
        if (v.c_v != v.a_v && v.c_v != v.b_v) release(v.c_v, ii);
      }
      if (v.dst_v >= 0) {
        if (phys[v.dst_v] < 0 && e.wide[v.dst_v]) {  // a fresh pair, held to the end
          if (used + 2 > 255) Fail("codegen: kernel needs more than 255 tile registers");
          phys[v.dst_v] = used;
          used += 2;
        }
        // A LOAD takes a fresh register while there are few: loads mostly
        // alias the tensor (no scratch is touched), and not reusing the
        // registers just freed keeps the operands of the instruction before
        // intact, so the VM can fuse it with its reader (FuseBinaryChains).
        if (phys[v.dst_v] < 0 && bc::Opcode(v.in.op) == bc::Opcode::LOAD && used < kFreshLoadRegs)
          phys[v.dst_v] = used++;
        if (phys[v.dst_v] < 0) phys[v.dst_v] = alloc();
        v.in.dst = static_cast<uint8_t>(phys[v.dst_v]);
      }
      if (v.no_alias) release(v.a_v, ii);
      if (v.dst_v >= 0 && last[v.dst_v] == ii) release(v.dst_v, ii);
    }
    num_regs_ = std::max(num_regs_, used);
    bc::Stage& s = e.st;
    for (const VInstr& v : e.code) {
      s.insts.push_back(v.in);
      s.sections[v.sec]++;
    }
  }

  void Emit() {
    row_info_.clear();
    for (size_t k = 0; k < plans_.size(); ++k) {
      cur_plan_ = static_cast<int>(k);
      EmitStage(plans_[k]);
    }
    MarkRowGroups();
    bc::Program prog;
    prog.num_regs = static_cast<uint16_t>(std::max(num_regs_, 1));
    prog.tile_cap = static_cast<uint32_t>(tile_cap_);
    prog.tensors = tensors_;
    prog.consts = consts_;
    prog.stages = std::move(stages_);
    bc::Encode(prog, out_->bytecode);
  }

  const ir::Graph* g_ = nullptr;
  std::span<const Shape> ins_;
  Result* out_ = nullptr;
  const Tiling* t_ = nullptr;
  std::vector<Shape> shapes_;
  std::vector<int> map_;
  std::vector<LNode> ln_;
  std::vector<int> mat_;
  std::vector<Root> roots_, pending_stores_;
  std::vector<bc::TensorDesc> tensors_;
  std::vector<bc::Const> consts_;
  std::vector<StagePlan> plans_;
  std::vector<bc::Stage> stages_;
  std::vector<RowInfo> row_info_;  // per stage of stages_
  std::vector<Lvl> lvl_;
  std::vector<uint8_t> seen_;
  std::vector<int> stack_;
  std::vector<int> mat_plan_, root_plan_;
  int cur_plan_ = 1 << 30;
  int num_regs_ = 0;
  int64_t tile_cap_ = 16;
};

}  // namespace

void Generate(const ir::Graph& g, std::span<const Shape> input_shapes, Result& out, const Tiling& tiling) {
  out.bytecode.clear();
  out.output_shapes.clear();
  out.input_numel.clear();
  out.workspace_bytes.clear();
  thread_local Gen gen;
  gen.Run(g, input_shapes, out, tiling);
}

}  // namespace dvm::codegen
