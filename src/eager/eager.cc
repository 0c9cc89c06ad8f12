// Eager API: tensors, contexts and op recording. Each op checks its operands
// (dtype rules shared with the kernel and graph builders, concrete shape
// inference) and appends one node to the active context's trace; nothing
// runs until a flush (flush.cc).
#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <unordered_map>

#include "eager/eager_internal.h"
#include "ir/dtype.h"
#include "ir/error.h"
#include "ir/ir.h"
#include "ir/op_rules.h"

namespace dvm::eager {

using graph::GOp;

namespace {

thread_local Context* tl_active = nullptr;

Context::Impl& Cur() { return Context::Current().impl(); }

void SetShape(TensorImpl& t, const Shape& s, const char* op) {
  if (s.size() > kMaxRank) Fail(op, ": rank ", s.size(), " exceeds ", kMaxRank);
  t.rank = static_cast<uint8_t>(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] < 0) Fail(op, ": negative dim in shape ", ir::ShapeStr(s));
    t.shape[i] = s[i];
  }
}

std::shared_ptr<TensorImpl> Materialised(const Shape& shape, DType type, const char* op) {
  if (static_cast<uint8_t>(type) >= kNumDTypes) Fail(op, ": bad dtype ", int(type));
  auto t = std::make_shared<TensorImpl>();
  t->dtype = type;
  SetShape(*t, shape, op);
  t->buf = AllocateBuffer(&Cur(), t->bytes());
  return t;
}

void Store(void* p, size_t i, DType t, double v) {
  switch (t) {
    case DType::kFloat32:
      static_cast<float*>(p)[i] = static_cast<float>(v);
      break;
    case DType::kFloat16:
      static_cast<uint16_t*>(p)[i] = F32ToF16(static_cast<float>(v));
      break;
    case DType::kBFloat16:
      static_cast<uint16_t*>(p)[i] = F32ToBF16(static_cast<float>(v));
      break;
    case DType::kInt32:
      static_cast<int32_t*>(p)[i] = SatF32ToI32(v);
      break;
    case DType::kInt8:
      static_cast<int8_t*>(p)[i] = static_cast<int8_t>(WrapI8(SatF32ToI32(v)));
      break;
    case DType::kBool:
      static_cast<uint8_t*>(p)[i] = v != 0;
      break;
  }
}

double Load(const void* p, size_t i, DType t) {
  switch (t) {
    case DType::kFloat32:
      return static_cast<const float*>(p)[i];
    case DType::kFloat16:
      return F16ToF32(static_cast<const uint16_t*>(p)[i]);
    case DType::kBFloat16:
      return BF16ToF32(static_cast<const uint16_t*>(p)[i]);
    case DType::kInt32:
      return static_cast<const int32_t*>(p)[i];
    case DType::kInt8:
      return static_cast<const int8_t*>(p)[i];
    case DType::kBool:
      return static_cast<const uint8_t*>(p)[i] != 0;
  }
  return 0;
}

// Record time is counted in ticks of a cheap counter (the TSC on x86:
// ~10 ns to read, where steady_clock costs ~50 ns on these machines) and
// converted to ns with the rate measured over the context's lifetime.
uint64_t Ticks() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_ia32_rdtsc();
#else
  return static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
#endif
}

// Records one op: operand references, the node, the result handle; flushes
// when the context runs unfused or the trace is full.
class Recorder {
 public:
  // The node is built in place at the end of the trace (no copy); a
  // rejected op removes it again.
  explicit Recorder(GOp op, uint8_t sub = 0)
      : c_(Cur()), t0_(Ticks()), pos_(c_.nodes.size()), n_(c_.nodes.emplace_back()) {
    n_.op = op;
    n_.sub = sub;
  }
  ~Recorder() {
    if (!done_) c_.nodes.pop_back();
  }
  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;
  Context::Impl& ctx() { return c_; }
  TNode& node() { return n_; }
  size_t pos() const { return pos_; }

  // The operand's reference; its shape and dtype are read from the impl.
  const TensorImpl& Operand(const Tensor& t) {
    TensorImpl* x = t.impl().get();
    if (!x) Fail(Where(), "operand ", int(n_.nin), " is a null tensor");
    int32_t ref;
    if (x->node >= 0 && x->ctx == &c_ && x->epoch == c_.epoch) {
      ref = x->node;
    } else {
      if (x->node >= 0 && x->ctx)  // pending elsewhere: run that trace
        x->ctx->Flush();
      if (x->failed || !x->buf) Fail(Where(), "operand ", int(n_.nin), " was computed by a trace that failed");
      int32_t slot = -1;
      for (size_t i = 0; i < c_.inputs.size(); ++i)
        if (c_.inputs[i].get() == x) {
          slot = static_cast<int32_t>(i);
          break;
        }
      if (slot < 0) {
        slot = static_cast<int32_t>(c_.inputs.size());
        c_.inputs.push_back(t.impl());
      }
      ref = -(slot + 1);
    }
    if (n_.nin < 3)
      n_.in[n_.nin] = ref;
    else
      c_.pool.push_back(ref);
    ++n_.nin;
    return *x;
  }

  // Message prefix naming the op and its position in the trace.
  std::string Where() const { return "eager op #" + std::to_string(pos_) + " (" + OpName(n_) + "): "; }
  template <class F>
  auto Checked(F&& f) -> decltype(f()) {
    try {
      return f();
    } catch (const Error& e) {
      throw Error(Where() + e.what());
    }
  }

  void SetShape(std::span<const int64_t> s) {
    if (s.size() > kMaxRank) Fail(Where(), "rank ", s.size(), " exceeds ", kMaxRank);
    n_.rank = static_cast<uint8_t>(s.size());
    std::copy(s.begin(), s.end(), n_.shape);
  }
  void SetAttr(std::span<const int64_t> a) {
    n_.nattr = static_cast<uint8_t>(a.size());
    std::copy(a.begin(), a.end(), n_.attr);
  }

  Tensor Finish() {
    auto t = std::make_shared<TensorImpl>();
    t->dtype = n_.dtype;
    t->rank = n_.rank;
    std::copy(n_.shape, n_.shape + n_.rank, t->shape);
    t->ctx = &c_;
    t->node = static_cast<int32_t>(pos_);
    t->epoch = c_.epoch;
    n_.owner = t.get();
    done_ = true;
    ++c_.st.ops;
    c_.record_ticks += Ticks() - t0_;
    if (!c_.opt.fuse || c_.nodes.size() >= static_cast<size_t>(std::max(c_.opt.max_trace, 1))) c_.Flush();
    return Tensor(std::move(t));
  }

 private:
  Context::Impl& c_;
  uint64_t t0_;
  size_t pos_;
  TNode& n_;
  bool done_ = false;
};

std::span<const int64_t> Dims(const TensorImpl& t) { return {t.shape, t.rank}; }

// A small shape on the stack (recording allocates no shape vectors).
struct SmallShape {
  int64_t d[kMaxRank];
  size_t n = 0;
  SmallShape(std::span<const int64_t> s) : n(s.size()) {  // NOLINT
    std::copy(s.begin(), s.end(), d);
  }
  operator std::span<const int64_t>() const { return {d, n}; }  // NOLINT
};

// Numpy broadcast of `b` into `out` (rank = max).
void BroadcastInto(Recorder& r, SmallShape& out, std::span<const int64_t> b) {
  const size_t rank = std::max(out.n, b.size());
  if (rank > kMaxRank) Fail(r.Where(), "rank ", rank, " exceeds ", kMaxRank);
  int64_t res[kMaxRank];
  for (size_t i = 0; i < rank; ++i) {
    const int64_t da = i + out.n >= rank ? out.d[i + out.n - rank] : 1;
    const int64_t db = i + b.size() >= rank ? b[i + b.size() - rank] : 1;
    if (da != db && da != 1 && db != 1)
      Fail(r.Where(), "shapes ", ir::ShapeStr(out), " and ", ir::ShapeStr(b), " do not broadcast (axis ", i, ": ", da,
           " vs ", db, ")");
    res[i] = da == 1 ? db : da;
  }
  std::copy(res, res + rank, out.d);
  out.n = rank;
}

int64_t NormAxis(Recorder& r, int64_t a, int rank) {
  const int64_t na = a < 0 ? a + rank : a;
  if (na < 0 || na >= rank) Fail(r.Where(), "axis ", a, " out of range for rank ", rank);
  return na;
}

}  // namespace

// ---- names
// --------------------------------------------------------------------

std::string OpName(const TNode& n) {
  switch (n.op) {
    case GOp::kUnary:
      return UnaryOpName(UnaryOp(n.sub));
    case GOp::kBinary:
    case GOp::kBinaryTS:
    case GOp::kBinaryST:
      return BinaryOpName(BinaryOp(n.sub));
    case GOp::kReduce:
      return std::string("reduce_") + ReduceOpName(ReduceOp(n.sub));
    default:
      return graph::GOpName(n.op);
  }
}

// ---- buffers, impls, contexts ----------------------------------------------

namespace {

// A process-wide cache of large buffers by size class. An eager program
// frees and allocates buffers of the same sizes at every step; memory that
// goes back to the OS costs a page fault per page when it is touched again
// (~20 ms for 16 MiB here). Both modes, fused and unfused, use it.
class BufferCache {
 public:
  static constexpr size_t kMinBytes = 64 << 10;     // smaller: plain malloc
  static constexpr size_t kMaxCached = 1ull << 30;  // bytes kept at most

  static BufferCache& Get() {
    static BufferCache* c = new BufferCache;  // never destroyed: buffers may
    return *c;                                // be freed during exit
  }
  // Capacity for `bytes`: multiples of 64 bytes below kMinBytes, else one
  // of four classes per power of two (at most 25% slack).
  static size_t Capacity(size_t bytes) {
    if (bytes < kMinBytes) return std::max<size_t>((bytes + 63) / 64 * 64, 64);
    const size_t step = std::bit_floor(bytes) / 4;
    return (bytes + step - 1) / step * step;
  }
  void* Take(size_t cap) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(cap);
    if (it == free_.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    cached_ -= cap;
    return p;
  }
  void Give(void* p, size_t cap) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + cap <= kMaxCached) {
        free_[cap].push_back(p);
        cached_ += cap;
        return;
      }
    }
    std::free(p);
  }

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0;
};

}  // namespace

std::shared_ptr<Buffer> AllocateBuffer(Context::Impl* c, size_t bytes) {
  auto b = std::make_shared<Buffer>();
  const size_t cap = BufferCache::Capacity(bytes);
  if (cap >= BufferCache::kMinBytes) b->p = BufferCache::Get().Take(cap);
  if (!b->p) {
    b->p = std::aligned_alloc(64, cap);
    if (!b->p) Fail("eager: cannot allocate ", bytes, " bytes");
  } else if (c) {
    ++c->st.reused;
  }
  b->bytes = bytes;
  b->capacity = cap;
  b->owned = true;
  if (c) {
    ++c->st.allocations;
    c->st.allocated_bytes += bytes;
  }
  return b;
}

Buffer::~Buffer() {
  if (!owned) return;
  if (capacity >= BufferCache::kMinBytes)
    BufferCache::Get().Give(p, capacity);
  else
    std::free(p);
}

TensorImpl::~TensorImpl() {
  if (node >= 0 && ctx && ctx->epoch == epoch && static_cast<size_t>(node) < ctx->nodes.size())
    ctx->nodes[node].owner = nullptr;
}

Context::Impl::~Impl() {
  for (TNode& n : nodes)
    if (n.owner) {
      n.owner->ctx = nullptr;
      n.owner->node = -1;
      n.owner->failed = true;
    }
}

void Context::Impl::Drop(const std::string&) {
  for (TNode& n : nodes)
    if (n.owner) {
      n.owner->ctx = nullptr;
      n.owner->node = -1;
      n.owner->failed = true;
    }
  nodes.clear();
  inputs.clear();
  pool.clear();
  ++epoch;
}

Context::Context(const ContextOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->opt = options;
  impl_->clock0 = std::chrono::steady_clock::now();
  impl_->ticks0 = Ticks();
}
Context::~Context() {
  try {
    impl_->Flush();
  } catch (const std::exception&) {
    // Destructors do not throw; the pending tensors are marked failed.
  }
  if (tl_active == this) tl_active = nullptr;
}
void Context::Sync() { impl_->Flush(); }
size_t Context::pending_ops() const { return impl_->nodes.size(); }
const EagerStats& Context::stats() const {
  Impl& c = *impl_;
  const double ns = static_cast<double>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - c.clock0).count());
  const uint64_t ticks = Ticks() - c.ticks0;
  if (ticks > 0 && ns > 0) c.st.record_ns = static_cast<double>(c.record_ticks) * ns / static_cast<double>(ticks);
  return c.st;
}
void Context::ResetStats() {
  impl_->st = {};
  impl_->record_ticks = 0;
}
const ContextOptions& Context::options() const { return impl_->opt; }
void Context::SetOptions(const ContextOptions& options) {
  impl_->Flush();
  impl_->opt = options;
}
size_t Context::cache_size() const { return impl_->cache.size(); }
void Context::ClearCache() { impl_->cache.clear(); }

Context& Context::Current() {
  if (tl_active) return *tl_active;
  thread_local Context default_ctx;
  return default_ctx;
}

ContextScope::ContextScope(Context& ctx) : prev_(tl_active) { tl_active = &ctx; }
ContextScope::~ContextScope() { tl_active = prev_; }

void Sync() { Context::Current().Sync(); }

// ---- Tensor
// --------------------------------------------------------------------

Tensor Tensor::FromData(const void* data, const Shape& shape, DType type) {
  auto t = Materialised(shape, type, "from_data");
  if (t->bytes() && !data) Fail("from_data: null data");
  if (t->bytes()) std::memcpy(t->buf->p, data, t->bytes());
  return Tensor(std::move(t));
}

Tensor Tensor::FromVector(const std::vector<float>& v, const Shape& shape) {
  if (static_cast<int64_t>(v.size()) != ir::NumElements(shape, "from_vector"))
    Fail("from_vector: ", v.size(), " values for shape ", ir::ShapeStr(shape));
  return FromData(v.data(), shape, DType::kFloat32);
}

Tensor Tensor::FromBuffer(void* data, const Shape& shape, DType type) {
  if (static_cast<uint8_t>(type) >= kNumDTypes) Fail("from_buffer: bad dtype ", int(type));
  auto t = std::make_shared<TensorImpl>();
  t->dtype = type;
  SetShape(*t, shape, "from_buffer");
  if (t->bytes() && !data) Fail("from_buffer: null data");
  t->buf = std::make_shared<Buffer>();
  t->buf->p = data;
  t->buf->bytes = t->bytes();
  return Tensor(std::move(t));
}

Tensor Tensor::Full(const Shape& shape, double value, DType type) {
  auto t = Materialised(shape, type, "full");
  const size_t n = static_cast<size_t>(t->numel());
  if (type == DType::kFloat32) {
    std::fill_n(static_cast<float*>(t->buf->p), n, static_cast<float>(value));
  } else {
    for (size_t i = 0; i < n; ++i) Store(t->buf->p, i, type, value);
  }
  return Tensor(std::move(t));
}

Tensor Tensor::Random(const Shape& shape, double lo, double hi, uint64_t seed, DType type) {
  auto t = Materialised(shape, type, "random");
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  const size_t n = static_cast<size_t>(t->numel());
  for (size_t i = 0; i < n; ++i) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    const double u = static_cast<double>(s >> 11) * 0x1p-53;
    Store(t->buf->p, i, type, lo + (hi - lo) * u);
  }
  return Tensor(std::move(t));
}

namespace {
const TensorImpl& Get(const std::shared_ptr<TensorImpl>& p, const char* what) {
  if (!p) Fail("tensor ", what, ": null tensor");
  return *p;
}
}  // namespace

DType Tensor::dtype() const { return Get(impl_, "dtype").dtype; }
int Tensor::rank() const { return Get(impl_, "rank").rank; }
int64_t Tensor::dim(int axis) const {
  const TensorImpl& t = Get(impl_, "dim");
  const int a = axis < 0 ? axis + t.rank : axis;
  if (a < 0 || a >= t.rank) Fail("tensor dim: axis ", axis, " out of range for rank ", int(t.rank));
  return t.shape[a];
}
Shape Tensor::shape() const {
  const TensorImpl& t = Get(impl_, "shape");
  return Shape(t.shape, t.shape + t.rank);
}
int64_t Tensor::numel() const { return Get(impl_, "numel").numel(); }
bool Tensor::pending() const { return Get(impl_, "pending").node >= 0; }

const void* Tensor::data() const {
  const TensorImpl& t = Get(impl_, "data");
  if (t.node >= 0 && t.ctx) t.ctx->Flush();
  if (t.failed || !t.buf) Fail("tensor data: this tensor's trace failed (see the error it threw)");
  return t.buf->p;
}

std::vector<double> Tensor::values() const {
  const void* p = data();
  const TensorImpl& t = *impl_;
  std::vector<double> r(static_cast<size_t>(t.numel()));
  for (size_t i = 0; i < r.size(); ++i) r[i] = Load(p, i, t.dtype);
  return r;
}

double Tensor::item() const {
  const TensorImpl& t = Get(impl_, "item");
  if (t.numel() != 1) Fail("item: tensor has ", t.numel(), " elements ", ir::ShapeStr(Dims(t)), ", item() needs one");
  return Load(data(), 0, t.dtype);
}

std::string Tensor::ToString() const {
  if (!impl_) return "null";
  return std::string(DTypeName(impl_->dtype)) + ir::ShapeStr(Dims(*impl_)) + (impl_->node >= 0 ? " pending" : "");
}

// ---- ops
// ---------------------------------------------------------------------

Tensor unary(UnaryOp op, const Tensor& x) {
  Recorder r(GOp::kUnary, static_cast<uint8_t>(op));
  const TensorImpl& a = r.Operand(x);
  r.node().dtype = r.Checked([&] { return ir::UnaryResult(op, a.dtype); });
  r.SetShape(Dims(a));
  return r.Finish();
}

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  Recorder r(GOp::kBinary, static_cast<uint8_t>(op));
  const TensorImpl& x = r.Operand(a);
  const TensorImpl& y = r.Operand(b);
  r.node().dtype = r.Checked([&] { return ir::BinaryResult(op, x.dtype, y.dtype); });
  if (x.rank == y.rank && std::equal(x.shape, x.shape + x.rank, y.shape)) {  // the common case
    r.SetShape(Dims(x));
  } else {
    SmallShape s(Dims(x));
    BroadcastInto(r, s, Dims(y));
    r.SetShape(s);
  }
  return r.Finish();
}

Tensor binary(BinaryOp op, const Tensor& a, double scalar) {
  Recorder r(GOp::kBinaryTS, static_cast<uint8_t>(op));
  const TensorImpl& x = r.Operand(a);
  r.node().dtype = r.Checked([&] { return ir::BinaryResult(op, x.dtype, x.dtype); });
  r.node().scalar = scalar;
  r.SetShape(Dims(x));
  return r.Finish();
}

Tensor binary(BinaryOp op, double scalar, const Tensor& b) {
  Recorder r(GOp::kBinaryST, static_cast<uint8_t>(op));
  const TensorImpl& x = r.Operand(b);
  r.node().dtype = r.Checked([&] { return ir::BinaryResult(op, x.dtype, x.dtype); });
  r.node().scalar = scalar;
  r.SetShape(Dims(x));
  return r.Finish();
}

#define DVM_EAGER_UNARY(name, op) \
  Tensor name(const Tensor& x) { return unary(UnaryOp::op, x); }
DVM_EAGER_UNARY(exp, kExp)
DVM_EAGER_UNARY(log, kLog)
DVM_EAGER_UNARY(tanh, kTanh)
DVM_EAGER_UNARY(sigmoid, kSigmoid)
DVM_EAGER_UNARY(sqrt, kSqrt)
DVM_EAGER_UNARY(rsqrt, kRsqrt)
DVM_EAGER_UNARY(abs, kAbs)
DVM_EAGER_UNARY(neg, kNeg)
DVM_EAGER_UNARY(relu, kRelu)
DVM_EAGER_UNARY(erf, kErf)
DVM_EAGER_UNARY(sin, kSin)
DVM_EAGER_UNARY(cos, kCos)
DVM_EAGER_UNARY(reciprocal, kReciprocal)
DVM_EAGER_UNARY(floor, kFloor)
DVM_EAGER_UNARY(ceil, kCeil)
DVM_EAGER_UNARY(round, kRound)
DVM_EAGER_UNARY(isfinite, kIsFinite)
DVM_EAGER_UNARY(logical_not, kLogicalNot)
#undef DVM_EAGER_UNARY

Tensor operator-(const Tensor& x) { return neg(x); }

Tensor pow(const Tensor& a, const Tensor& b) { return binary(BinaryOp::kPow, a, b); }
Tensor pow(const Tensor& a, double b) { return binary(BinaryOp::kPow, a, b); }
Tensor maximum(const Tensor& a, const Tensor& b) { return binary(BinaryOp::kMaximum, a, b); }
Tensor maximum(const Tensor& a, double b) { return binary(BinaryOp::kMaximum, a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return binary(BinaryOp::kMinimum, a, b); }
Tensor minimum(const Tensor& a, double b) { return binary(BinaryOp::kMinimum, a, b); }
Tensor logical_and(const Tensor& a, const Tensor& b) { return binary(BinaryOp::kLogicalAnd, a, b); }
Tensor logical_or(const Tensor& a, const Tensor& b) { return binary(BinaryOp::kLogicalOr, a, b); }

#define DVM_EAGER_BINARY_OPERATOR(sym, op)                                                     \
  Tensor operator sym(const Tensor& a, const Tensor& b) { return binary(BinaryOp::op, a, b); } \
  Tensor operator sym(const Tensor& a, double b) { return binary(BinaryOp::op, a, b); }        \
  Tensor operator sym(double a, const Tensor& b) { return binary(BinaryOp::op, a, b); }
DVM_EAGER_BINARY_OPERATOR(+, kAdd)
DVM_EAGER_BINARY_OPERATOR(-, kSub)
DVM_EAGER_BINARY_OPERATOR(*, kMul)
DVM_EAGER_BINARY_OPERATOR(/, kDiv)
DVM_EAGER_BINARY_OPERATOR(==, kEqual)
DVM_EAGER_BINARY_OPERATOR(!=, kNotEqual)
DVM_EAGER_BINARY_OPERATOR(<, kLess)
DVM_EAGER_BINARY_OPERATOR(<=, kLessEqual)
DVM_EAGER_BINARY_OPERATOR(>, kGreater)
DVM_EAGER_BINARY_OPERATOR(>=, kGreaterEqual)
#undef DVM_EAGER_BINARY_OPERATOR

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  Recorder r(GOp::kSelect);
  const TensorImpl& k = r.Operand(cond);
  const TensorImpl& x = r.Operand(a);
  const TensorImpl& y = r.Operand(b);
  r.node().dtype = r.Checked([&] { return ir::SelectResult(k.dtype, x.dtype, y.dtype); });
  SmallShape s(Dims(k));
  BroadcastInto(r, s, Dims(x));
  BroadcastInto(r, s, Dims(y));
  r.SetShape(s);
  return r.Finish();
}

Tensor cast(const Tensor& x, DType type) {
  Recorder r(GOp::kCast);
  const TensorImpl& a = r.Operand(x);
  r.Checked([&] { ir::CheckCast(type); });
  r.node().dtype = type;
  r.SetShape(Dims(a));
  return r.Finish();
}

Tensor broadcast_to(const Tensor& x, const Shape& shape) {
  Recorder r(GOp::kBroadcast);
  const TensorImpl& a = r.Operand(x);
  r.node().dtype = a.dtype;
  if (shape.size() < a.rank)
    Fail(r.Where(), "target ", ir::ShapeStr(shape), " has a lower rank than ", ir::ShapeStr(Dims(a)));
  const size_t off = shape.size() - a.rank;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) Fail(r.Where(), "negative dim in target ", ir::ShapeStr(shape));
    if (i >= off && a.shape[i - off] != 1 && a.shape[i - off] != shape[i])
      Fail(r.Where(), ir::ShapeStr(Dims(a)), " does not broadcast to ", ir::ShapeStr(shape));
  }
  r.SetShape(shape);
  r.SetAttr(shape);
  return r.Finish();
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  Recorder r(GOp::kReshape);
  const TensorImpl& a = r.Operand(x);
  r.node().dtype = a.dtype;
  Shape s = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1 && infer < 0) {
      infer = static_cast<int>(i);
      continue;
    }
    if (s[i] < 0) Fail(r.Where(), "bad target ", ir::ShapeStr(shape));
    known *= s[i];
  }
  const int64_t total = a.numel();
  if (infer >= 0) {
    if (known == 0 || total % known)
      Fail(r.Where(), "cannot reshape ", ir::ShapeStr(Dims(a)), " to ", ir::ShapeStr(shape));
    s[infer] = total / known;
  } else if (known != total) {
    Fail(r.Where(), "cannot reshape ", ir::ShapeStr(Dims(a)), " (", total, " elements) to ", ir::ShapeStr(shape), " (",
         known, ")");
  }
  r.SetShape(s);
  r.SetAttr(s);
  return r.Finish();
}

Tensor transpose(const Tensor& x, const Shape& perm) {
  Recorder r(GOp::kTranspose);
  const TensorImpl& a = r.Operand(x);
  r.node().dtype = a.dtype;
  if (perm.size() != a.rank) Fail(r.Where(), "perm ", ir::ShapeStr(perm), " for rank ", int(a.rank));
  int64_t p[kMaxRank], s[kMaxRank];
  bool seen[kMaxRank] = {};
  for (size_t i = 0; i < perm.size(); ++i) {
    p[i] = NormAxis(r, perm[i], a.rank);
    if (seen[p[i]]) Fail(r.Where(), "perm ", ir::ShapeStr(perm), " repeats an axis");
    seen[p[i]] = true;
    s[i] = a.shape[p[i]];
  }
  r.SetShape({s, perm.size()});
  r.SetAttr({p, perm.size()});
  return r.Finish();
}

Tensor permute(const Tensor& x, const Shape& perm) { return transpose(x, perm); }

Tensor swapaxes(const Tensor& x, int64_t a, int64_t b) {
  const int rank = x.rank();
  Shape perm(rank);
  for (int i = 0; i < rank; ++i) perm[i] = i;
  const int64_t na = a < 0 ? a + rank : a, nb = b < 0 ? b + rank : b;
  if (na < 0 || na >= rank || nb < 0 || nb >= rank)
    Fail("swapaxes: axes ", a, ", ", b, " out of range for rank ", rank);
  std::swap(perm[na], perm[nb]);
  return transpose(x, perm);
}

Tensor reduce(ReduceOp op, const Tensor& x, const Shape& axes, bool keepdims) {
  if (x.rank() == 0)  // nothing to reduce
    return x;
  Recorder r(GOp::kReduce, static_cast<uint8_t>(op));
  const TensorImpl& a = r.Operand(x);
  r.node().dtype = r.Checked([&] { return ir::ReduceResult(op, a.dtype); });
  r.node().keepdims = keepdims;
  bool red[kMaxRank] = {};
  int64_t ax[kMaxRank];
  size_t nax = 0;
  if (axes.empty()) {
    for (int i = 0; i < a.rank; ++i) red[i] = true;
  } else {
    for (int64_t v : axes) {
      const int64_t na = NormAxis(r, v, a.rank);
      if (red[na]) Fail(r.Where(), "duplicate axis ", v);
      red[na] = true;
    }
  }
  int64_t s[kMaxRank];
  size_t rank = 0;
  for (int i = 0; i < a.rank; ++i) {
    if (red[i]) ax[nax++] = i;
    if (!red[i])
      s[rank++] = a.shape[i];
    else if (keepdims)
      s[rank++] = 1;
  }
  r.SetShape({s, rank});
  r.SetAttr({ax, nax});
  return r.Finish();
}

Tensor sum(const Tensor& x, const Shape& axes, bool keepdims) { return reduce(ReduceOp::kSum, x, axes, keepdims); }
Tensor max(const Tensor& x, const Shape& axes, bool keepdims) { return reduce(ReduceOp::kMax, x, axes, keepdims); }
Tensor min(const Tensor& x, const Shape& axes, bool keepdims) { return reduce(ReduceOp::kMin, x, axes, keepdims); }
Tensor prod(const Tensor& x, const Shape& axes, bool keepdims) { return reduce(ReduceOp::kProd, x, axes, keepdims); }
Tensor mean(const Tensor& x, const Shape& axes, bool keepdims) {
  int64_t n = 1;
  if (axes.empty()) {
    n = x.numel();
  } else {
    for (int64_t a : axes) n *= x.dim(static_cast<int>(a));
  }
  return sum(x, axes, keepdims) * (1.0 / static_cast<double>(n));
}

Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a, bool trans_b) {
  Recorder r(GOp::kMatMul, static_cast<uint8_t>((trans_a ? 1 : 0) | (trans_b ? 2 : 0)));
  const TensorImpl& x = r.Operand(a);
  const TensorImpl& y = r.Operand(b);
  r.node().dtype = r.Checked([&] { return ir::MatMulResult(x.dtype, y.dtype); });
  if (x.rank < 2 || y.rank < 2)
    Fail(r.Where(), "operands need rank >= 2, got ", ir::ShapeStr(Dims(x)), " and ", ir::ShapeStr(Dims(y)));
  const int64_t m = x.shape[x.rank - (trans_a ? 1 : 2)];
  const int64_t ka = x.shape[x.rank - (trans_a ? 2 : 1)];
  const int64_t kb = y.shape[y.rank - (trans_b ? 1 : 2)];
  const int64_t n = y.shape[y.rank - (trans_b ? 2 : 1)];
  if (ka != kb)
    Fail(r.Where(), "inner dims differ: ", ir::ShapeStr(Dims(x)), trans_a ? "^T" : "", " x ", ir::ShapeStr(Dims(y)),
         trans_b ? "^T" : "", " (", ka, " vs ", kb, ")");
  SmallShape s({x.shape, static_cast<size_t>(x.rank - 2)});
  BroadcastInto(r, s, {y.shape, static_cast<size_t>(y.rank - 2)});
  if (s.n + 2 > kMaxRank) Fail(r.Where(), "result rank exceeds ", kMaxRank);
  s.d[s.n++] = m;
  s.d[s.n++] = n;
  r.SetShape(s);
  return r.Finish();
}

Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t size) {
  Recorder r(GOp::kSlice);
  const TensorImpl& a = r.Operand(x);
  r.node().dtype = a.dtype;
  const int64_t ax = NormAxis(r, axis, a.rank);
  if (start < 0 || size < 0 || start + size > a.shape[ax])
    Fail(r.Where(), "slice [", start, ", ", start + size, ") of axis ", axis, " out of range for ",
         ir::ShapeStr(Dims(a)));
  int64_t s[kMaxRank];
  std::copy(a.shape, a.shape + a.rank, s);
  s[ax] = size;
  r.SetShape({s, a.rank});
  const int64_t at[3] = {ax, start, size};
  r.SetAttr(at);
  return r.Finish();
}

Tensor concat(const std::vector<Tensor>& xs, int64_t axis) {
  Recorder r(GOp::kConcat);
  if (xs.empty()) Fail(r.Where(), "no inputs");
  if (xs.size() > 255) Fail(r.Where(), xs.size(), " inputs (at most 255)");
  const size_t pool0 = r.ctx().pool.size();
  r.node().nin = 3;  // operands go to the pool
  int64_t s[kMaxRank] = {};
  int rank = 0;
  int64_t ax = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const TensorImpl& t = r.Operand(xs[i]);
    if (i == 0) {
      rank = t.rank;
      ax = NormAxis(r, axis, rank);
      std::copy(t.shape, t.shape + rank, s);
      s[ax] = 0;
      r.node().dtype = t.dtype;
    }
    if (t.dtype != r.node().dtype || t.rank != rank)
      Fail(r.Where(), "input ", i, " is ", DTypeName(t.dtype), ir::ShapeStr(Dims(t)), ", input 0 is ",
           DTypeName(r.node().dtype), " of rank ", rank);
    for (int d = 0; d < rank; ++d)
      if (d != ax && t.shape[d] != s[d])
        Fail(r.Where(), "input ", i, " ", ir::ShapeStr(Dims(t)), " differs from input 0 on axis ", d);
    s[ax] += t.shape[ax];
  }
  r.node().nin = static_cast<uint8_t>(xs.size());
  r.SetShape({s, static_cast<size_t>(rank)});
  const int64_t at[2] = {ax, static_cast<int64_t>(pool0)};
  r.SetAttr(at);
  return r.Finish();
}

Tensor gather(const Tensor& table, const Tensor& ids) {
  Recorder r(GOp::kGather);
  const TensorImpl& t = r.Operand(table);
  const TensorImpl& i = r.Operand(ids);
  if (t.rank < 1) Fail(r.Where(), "table must have rank >= 1");
  if (i.dtype != DType::kInt32) Fail(r.Where(), "ids must be int32, got ", DTypeName(i.dtype));
  r.node().dtype = t.dtype;
  std::vector<int64_t> s(i.shape, i.shape + i.rank);
  s.insert(s.end(), t.shape + 1, t.shape + t.rank);
  r.SetShape(s);
  return r.Finish();
}

Tensor arange(int64_t n, DType type, double start, double step) {
  Recorder r(GOp::kIota);
  if (n < 0) Fail(r.Where(), "negative length ", n);
  if (type == DType::kBool || static_cast<uint8_t>(type) >= kNumDTypes)
    Fail(r.Where(), "dtype ", DTypeName(type), " not supported");
  r.node().dtype = type;
  r.node().scalar = start;
  r.node().scalar2 = step;
  const int64_t s[1] = {n};
  r.SetShape(s);
  r.SetAttr(s);
  return r.Finish();
}

Tensor causal_mask(int64_t q, int64_t kv, DType type) {
  Recorder r(GOp::kCausalMask);
  if (q < 0 || kv < q) Fail(r.Where(), "needs 0 <= q <= kv, got q = ", q, ", kv = ", kv);
  if (!IsFloat(type) && type != DType::kBool) Fail(r.Where(), "dtype ", DTypeName(type), " not supported");
  r.node().dtype = type;
  const int64_t s[2] = {q, kv};
  r.SetShape(s);
  r.SetAttr(s);
  return r.Finish();
}

Tensor nonzero(const Tensor& x) {
  Context::Current().Sync();  // not traceable: its shape depends on the data
  const void* p = x.data();
  const TensorImpl& t = *x.impl();
  const size_t n = static_cast<size_t>(t.numel());
  std::vector<int32_t> idx;
  for (size_t i = 0; i < n; ++i) {
    if (Load(p, i, t.dtype) == 0) continue;
    size_t rem = i;
    const size_t at = idx.size();
    idx.resize(at + t.rank);
    for (int d = t.rank; d-- > 0;) {
      idx[at + d] = static_cast<int32_t>(rem % t.shape[d]);
      rem /= t.shape[d];
    }
  }
  const int64_t count =
      t.rank ? static_cast<int64_t>(idx.size()) / t.rank : static_cast<int64_t>(n && Load(p, 0, t.dtype));
  return Tensor::FromData(idx.data(), {count, t.rank}, DType::kInt32);
}

}  // namespace dvm::eager
