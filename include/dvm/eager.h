// DVM eager API: tensors whose ops are recorded lazily into the calling
// thread's trace and fused as they run.
//
//   using namespace dvm::eager;
//   Tensor x = Tensor::Random({1024, 1024}, -1, 1, /*seed=*/1);
//   Tensor y = tanh(x * 2.0f + 1.0f) - x;   // recorded, nothing runs
//   float s = sum(y).item();               // flush: one fused kernel
//
// Ops append a node to the active Context's pending trace (each thread has
// its own default context; ContextScope activates another). A trace is
// flushed when a value is read on the host (data(), item(), values(), a
// tensor used as a bool), when an op that cannot be traced arrives
// (nonzero: its output shape depends on data), when the trace reaches
// ContextOptions::max_trace ops, or on Sync(). A flush turns the trace into
// a dvm::Graph whose input dims are symbols chosen by equality class of
// their concrete values (dims equal to 1 stay the constant 1), so one fused
// plan serves every binding with the same equality pattern. Compiled traces
// are cached by their structure (ops, dtypes, attributes, input ranks, the
// dim equality pattern, which values escape): a loop body seen again reuses
// its fused kernels and only a new concrete shape costs a codegen.
//
// Values computed in a trace are written to memory only when they escape it
// (some Tensor handle to them is still alive at the flush); the others live
// in the fused kernels' registers or in the executor's planned scratch.
//
// DVM_EAGER_PROFILE=1 prints every flush's launches and their times.
//
// A pending tensor belongs to the thread of its context: use it (read it,
// pass it to ops, destroy it) on that thread, or Sync() first. Materialised
// tensors are immutable and may be shared between threads.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dvm/dvm.h"

namespace dvm::eager {

struct ContextOptions {
  bool fuse = true;             // false: every op runs at once (unfused)
  int max_trace = 512;          // pending ops that force a flush
  size_t cache_capacity = 256;  // compiled traces kept (least recently used)
  bool stack = true;            // launch independent kernels as one stack
};

struct EagerStats {
  uint64_t ops = 0;           // ops recorded
  uint64_t flushes = 0;       // traces run (flushes with work to do)
  uint64_t kernels = 0;       // fused kernels run
  uint64_t launches = 0;      // launches (a kernel stack counts once)
  uint64_t library_ops = 0;   // gather, concat, slice, ... run by plain C++
  uint64_t cache_hits = 0;    // flushes served by a cached compiled trace
  uint64_t cache_misses = 0;  // flushes that compiled a new trace
  uint64_t codegens = 0;      // programs generated for new shapes
  double codegen_us = 0;      // their total codegen time
  double compile_us = 0;      // trace -> graph -> fused kernels, on misses
  double run_us = 0;          // time in CompiledGraph::Run
  double flush_us = 0;        // total flush time (hash, compile, run)
  double record_ns = 0;       // total time spent recording ops
  uint64_t allocations = 0;   // buffers the eager layer allocated for values
  uint64_t reused = 0;        // ... of which came from the buffer cache
  uint64_t allocated_bytes = 0;
};

class Context {
 public:
  explicit Context(const ContextOptions& options = {});
  ~Context();  // runs the pending trace (errors are dropped)
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  // Runs the pending trace now.
  void Sync();
  size_t pending_ops() const;
  const EagerStats& stats() const;
  void ResetStats();
  const ContextOptions& options() const;
  // Changes options (the pending trace is run first).
  void SetOptions(const ContextOptions& options);
  size_t cache_size() const;
  void ClearCache();

  // The calling thread's active context (its default one unless a
  // ContextScope is active).
  static Context& Current();

  struct Impl;
  Impl& impl() { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// Makes `ctx` the calling thread's active context for the scope's lifetime.
class ContextScope {
 public:
  explicit ContextScope(Context& ctx);
  ~ContextScope();
  ContextScope(const ContextScope&) = delete;
  ContextScope& operator=(const ContextScope&) = delete;

 private:
  Context* prev_;
};

// Syncs the calling thread's active context.
void Sync();

struct TensorImpl;

// A value handle: cheap to copy; copies share the value. Either
// materialised (a buffer) or pending (a node of its context's trace).
class Tensor {
 public:
  Tensor() = default;  // a null handle

  // ---- factories (materialised at once) ------------------------------------
  // Copies `data` (shape's element count elements of `type`).
  static Tensor FromData(const void* data, const Shape& shape, DType type);
  static Tensor FromVector(const std::vector<float>& v, const Shape& shape);
  // Wraps a caller's buffer without copying; it must outlive every use.
  static Tensor FromBuffer(void* data, const Shape& shape, DType type);
  static Tensor Full(const Shape& shape, double value, DType type = DType::kFloat32);
  static Tensor Zeros(const Shape& shape, DType type = DType::kFloat32) { return Full(shape, 0, type); }
  static Tensor Ones(const Shape& shape, DType type = DType::kFloat32) { return Full(shape, 1, type); }
  // Uniform in [lo, hi) from a fixed generator (deterministic per seed).
  static Tensor Random(const Shape& shape, double lo, double hi, uint64_t seed, DType type = DType::kFloat32);

  // ---- inspection (no flush) -----------------------------------------------
  bool defined() const { return impl_ != nullptr; }
  DType dtype() const;
  int rank() const;
  int64_t dim(int axis) const;  // negative axes count from the end
  Shape shape() const;
  int64_t numel() const;
  bool pending() const;  // still a node of a trace

  // ---- reads (flush the trace if pending) ----------------------------------
  const void* data() const;
  template <class T>
  const T* data_as() const {
    return static_cast<const T*>(data());
  }
  // Elements converted to double.
  std::vector<double> values() const;
  // The single element (numel() == 1) as double.
  double item() const;
  // A host comparison: the single element is non-zero.
  explicit operator bool() const { return item() != 0; }

  std::string ToString() const;  // "f32[2, 3]" (+ " pending")

  const std::shared_ptr<TensorImpl>& impl() const { return impl_; }
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

 private:
  std::shared_ptr<TensorImpl> impl_;
};

// ---- elementwise ------------------------------------------------------------
Tensor unary(UnaryOp op, const Tensor& x);
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);
Tensor binary(BinaryOp op, const Tensor& a, double scalar);
Tensor binary(BinaryOp op, double scalar, const Tensor& b);

Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor rsqrt(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor neg(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor erf(const Tensor& x);
Tensor sin(const Tensor& x);
Tensor cos(const Tensor& x);
Tensor reciprocal(const Tensor& x);
Tensor floor(const Tensor& x);
Tensor ceil(const Tensor& x);
Tensor round(const Tensor& x);
Tensor isfinite(const Tensor& x);
Tensor logical_not(const Tensor& x);
Tensor pow(const Tensor& a, const Tensor& b);
Tensor pow(const Tensor& a, double b);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor maximum(const Tensor& a, double b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, double b);
Tensor logical_and(const Tensor& a, const Tensor& b);
Tensor logical_or(const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);
Tensor cast(const Tensor& x, DType type);

#define DVM_EAGER_BINARY_OPERATOR(sym)                   \
  Tensor operator sym(const Tensor& a, const Tensor& b); \
  Tensor operator sym(const Tensor& a, double b);        \
  Tensor operator sym(double a, const Tensor& b);
DVM_EAGER_BINARY_OPERATOR(+)
DVM_EAGER_BINARY_OPERATOR(-)
DVM_EAGER_BINARY_OPERATOR(*)
DVM_EAGER_BINARY_OPERATOR(/)
DVM_EAGER_BINARY_OPERATOR(==)
DVM_EAGER_BINARY_OPERATOR(!=)
DVM_EAGER_BINARY_OPERATOR(<)
DVM_EAGER_BINARY_OPERATOR(<=)
DVM_EAGER_BINARY_OPERATOR(>)
DVM_EAGER_BINARY_OPERATOR(>=)
#undef DVM_EAGER_BINARY_OPERATOR
Tensor operator-(const Tensor& x);

// ---- shapes -----------------------------------------------------------------
Tensor broadcast_to(const Tensor& x, const Shape& shape);
Tensor reshape(const Tensor& x, const Shape& shape);  // one dim may be -1
Tensor transpose(const Tensor& x, const Shape& perm);
Tensor permute(const Tensor& x, const Shape& perm);  // = transpose
// Swaps two axes.
Tensor swapaxes(const Tensor& x, int64_t a, int64_t b);

// ---- reductions (empty axes: all) -------------------------------------------
Tensor reduce(ReduceOp op, const Tensor& x, const Shape& axes = {}, bool keepdims = false);
Tensor sum(const Tensor& x, const Shape& axes = {}, bool keepdims = false);
Tensor max(const Tensor& x, const Shape& axes = {}, bool keepdims = false);
Tensor min(const Tensor& x, const Shape& axes = {}, bool keepdims = false);
Tensor prod(const Tensor& x, const Shape& axes = {}, bool keepdims = false);
Tensor mean(const Tensor& x, const Shape& axes = {}, bool keepdims = false);

// ---- matmul -----------------------------------------------------------------
Tensor matmul(const Tensor& a, const Tensor& b, bool trans_a = false, bool trans_b = false);

// ---- library ops (traced; run by plain C++ kernels)
// -------------------------- x[..., start:start+size, ...] along `axis`.
Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t size);
Tensor concat(const std::vector<Tensor>& xs, int64_t axis);
// Rows of `table` picked by int32 `ids`.
Tensor gather(const Tensor& table, const Tensor& ids);
// [n]: start, start + step, ...
Tensor arange(int64_t n, DType type = DType::kFloat32, double start = 0, double step = 1);
// [q, kv]: 0 where key j may be attended by query i (j <= i + kv - q),
// -inf elsewhere.
Tensor causal_mask(int64_t q, int64_t kv, DType type = DType::kFloat32);

// ---- not traceable (flush) --------------------------------------------------
// Indices of the non-zero elements, int32 [count, rank]: the shape depends
// on the data, so the pending trace runs first.
Tensor nonzero(const Tensor& x);

}  // namespace dvm::eager
