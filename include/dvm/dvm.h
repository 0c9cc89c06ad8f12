// DVM public API: a runtime kernel generator.
//
// A Kernel is a fused operator program built once with the builder methods
// below and launched many times. CodeGen() encodes it, for concrete shapes,
// into bytecode (docs/bytecode.md); the bytecode is verified and decoded into
// virtual instructions that a CPU virtual machine runs tile by tile.
//
//   dvm::Kernel k(dvm::KernelType::kDynamic);
//   auto* x = k.Load(nullptr, {-1, -1}, dvm::DType::kFloat32);
//   auto* y = k.Unary(dvm::UnaryOp::kExp, x);
//   k.Store(nullptr, y);
//   k.Launch({{x_ptr, {rows, cols}}}, {{y_ptr, {}}});
//
// Static kernels fix their shapes when built; dynamic kernels take dims of
// -1 that are bound at every launch. Codegen runs again only when the shape
// set changes; recent programs are kept in a bounded cache keyed by shape.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace dvm {

enum class DType : uint8_t { kFloat32, kFloat16, kBFloat16, kInt32, kInt8, kBool };
constexpr int kNumDTypes = 6;
const char* DTypeName(DType t);
size_t DTypeSize(DType t);

enum class UnaryOp : uint8_t {
  kSqrt,
  kRsqrt,
  kAbs,
  kNeg,
  kExp,
  kLog,
  kReciprocal,
  kTanh,
  kSigmoid,
  kErf,
  kRelu,
  kSin,
  kCos,
  kFloor,
  kCeil,
  kRound,
  kIsFinite,
  kLogicalNot,
};
constexpr int kNumUnaryOps = 18;
const char* UnaryOpName(UnaryOp op);

enum class BinaryOp : uint8_t {
  kAdd,
  kSub,
  kMul,
  kDiv,
  kPow,
  kMaximum,
  kMinimum,
  kEqual,
  kNotEqual,
  kLess,
  kLessEqual,
  kGreater,
  kGreaterEqual,
  kLogicalAnd,
  kLogicalOr,
};
constexpr int kNumBinaryOps = 15;
const char* BinaryOpName(BinaryOp op);

enum class ReduceOp : uint8_t { kSum, kMax, kMin, kProd };
constexpr int kNumReduceOps = 4;
const char* ReduceOpName(ReduceOp op);

enum class KernelType : uint8_t { kStatic, kDynamic };

// Every error DVM reports. The message names the op and the offending values
// (shape, dtype, axis, bytecode offset). Nothing owned by the caller is
// written when an error is thrown.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using Shape = std::vector<int64_t>;
using Dims = std::span<const int64_t>;

// Opaque handle to a value of a kernel under construction.
class NDObject;
namespace ir {
struct Graph;
}

// A buffer bound at launch. `shape` is required for inputs of dynamic
// kernels and ignored for outputs (their shapes are inferred). `bytes`, when
// non-zero, is the capacity of the buffer and is checked against what the
// program reads or writes.
struct TensorArg {
  void* data = nullptr;
  Shape shape;
  size_t bytes = 0;
};

struct KernelStats {
  // Launches run, stacked ones included (a KernelStack::Launch counts one
  // for each launch it recorded).
  uint64_t launches = 0;
  uint64_t codegens = 0;       // programs generated (cache misses)
  uint64_t cache_hits = 0;     // launches served by a cached program
  double last_codegen_us = 0;  // time of the most recent codegen
  // Inputs a launch read from a copy: an output overlapped them other than
  // in place (see Launch).
  uint64_t input_copies = 0;
};

class Kernel {
 public:
  explicit Kernel(KernelType type = KernelType::kStatic);
  ~Kernel();
  Kernel(Kernel&&) noexcept;
  Kernel& operator=(Kernel&&) noexcept;
  Kernel(const Kernel&) = delete;
  Kernel& operator=(const Kernel&) = delete;

  KernelType type() const;

  // ---- inputs and outputs -------------------------------------------------
  // `addr` may be null when the buffer is bound at launch. For dynamic
  // kernels a dim of -1 is bound at launch (the rank is fixed here).
  NDObject* Load(void* addr, Dims shape, DType type);
  // Slice [start, start+size) on every axis.
  NDObject* SliceLoad(void* addr, Dims shape, DType type, Dims start, Dims size);
  // Python-style slice start:end:step on every axis (step > 0).
  NDObject* StridedSliceLoad(void* addr, Dims shape, DType type, Dims start, Dims end, Dims step);
  // Writes `value` to an output buffer with the value's shape and dtype.
  NDObject* Store(void* addr, NDObject* value);
  // Writes `value` into a larger output of shape `padded_shape`, at offset
  // `pad_before` on each axis (empty = zeros); the rest is `pad_value`.
  NDObject* PadStore(void* addr, NDObject* value, Dims padded_shape, Dims pad_before = {}, double pad_value = 0.0);

  // ---- compute ------------------------------------------------------------
  NDObject* Unary(UnaryOp op, NDObject* x);
  NDObject* Binary(BinaryOp op, NDObject* a, NDObject* b);
  NDObject* Binary(BinaryOp op, NDObject* a, double scalar);
  NDObject* Binary(BinaryOp op, double scalar, NDObject* b);
  NDObject* Select(NDObject* cond, NDObject* a, NDObject* b);
  NDObject* Cast(NDObject* x, DType type);
  // numpy broadcasting to `shape`; in dynamic kernels -1 keeps the input dim.
  NDObject* Broadcast(NDObject* x, Dims shape);
  NDObject* Broadcast(double scalar, Dims shape, DType type);
  // One dim may be -1 (inferred from the element count).
  NDObject* Reshape(NDObject* x, Dims shape);
  NDObject* Transpose(NDObject* x, Dims perm);
  NDObject* Copy(NDObject* x);
  // The value of x, handed to the ops that use it through a workspace: x is
  // computed in full first, and its users run in a later stage of the same
  // launch. Codegen stages kernels itself where a row does not fit a tile;
  // this marks a boundary explicitly (e.g. to compute an expensive value
  // once rather than in every stage that reads it).
  NDObject* StageBoundary(NDObject* x);
  NDObject* Reduce(ReduceOp op, NDObject* x, Dims axes, bool keepdims);
  // True when any element is non-zero; a rank-0 bool.
  NDObject* ElemAny(NDObject* x);
  // Matrix product over the last two dims: a [..., M, K] (or [..., K, M]
  // with trans_a), b [..., K, N] (or [..., N, K] with trans_b); leading
  // batch dims broadcast. f32/f16/bf16 inputs, f32 accumulation, result in
  // the inputs' dtype. Elementwise ops on the result are fused into the
  // GEMM's tiles (the epilogue runs on each block of C while it is in cache).
  NDObject* MatMul(NDObject* a, NDObject* b, bool trans_a = false, bool trans_b = false);

  // initializer_list conveniences: k.Load(p, {4, 8}, DType::kFloat32).
  NDObject* Load(void* addr, std::initializer_list<int64_t> shape, DType type) {
    return Load(addr, Dims(shape.begin(), shape.size()), type);
  }
  NDObject* Broadcast(NDObject* x, std::initializer_list<int64_t> shape) {
    return Broadcast(x, Dims(shape.begin(), shape.size()));
  }
  NDObject* Reshape(NDObject* x, std::initializer_list<int64_t> shape) {
    return Reshape(x, Dims(shape.begin(), shape.size()));
  }
  NDObject* Transpose(NDObject* x, std::initializer_list<int64_t> perm) {
    return Transpose(x, Dims(perm.begin(), perm.size()));
  }
  NDObject* Reduce(ReduceOp op, NDObject* x, std::initializer_list<int64_t> axes, bool keepdims) {
    return Reduce(op, x, Dims(axes.begin(), axes.size()), keepdims);
  }

  // Shape and dtype of a value as known when built (-1 for unbound dims).
  Shape GetShape(NDObject* v) const;
  DType GetDType(NDObject* v) const;
  size_t num_inputs() const;
  size_t num_outputs() const;

  // ---- compile and run ----------------------------------------------------
  // Buffers a launch's arguments share: an output may be written over an
  // input (in place: an optimizer's p' over p, x.add_(y)), and the results
  // are those of separate buffers. The launch runs in place where its
  // program reads every element before writing there (one elementwise pass,
  // the output the input's very buffer and layout), and reads a copy of the
  // input otherwise. Outputs that overlap each other are an error.
  // Static kernels: generate the program now. Dynamic kernels: validate the
  // graph; programs are generated at launch for each new shape set.
  void CodeGen();
  // Static kernel, addresses given to Load/Store.
  void Launch();
  // Relocation: the buffers of inputs/outputs in the order they were
  // created (static kernels; shapes as built).
  void Launch(std::span<void* const> inputs, std::span<void* const> outputs);
  // Buffers with shapes (dynamic kernels) and optional capacities.
  void Launch(std::span<const TensorArg> inputs, std::span<const TensorArg> outputs);
  void Launch(std::initializer_list<TensorArg> inputs, std::initializer_list<TensorArg> outputs) {
    Launch(std::span<const TensorArg>(inputs.begin(), inputs.size()),
           std::span<const TensorArg>(outputs.begin(), outputs.size()));
  }
  // With a caller-owned workspace for the values stages pass on (at least
  // WorkspaceBytes for these input shapes); the other launches use scratch
  // memory of the calling thread.
  void Launch(std::span<const TensorArg> inputs, std::span<const TensorArg> outputs, const TensorArg& workspace);
  // Output shapes for the given input shapes (generates the program if
  // needed). For static kernels `input_shapes` may be empty.
  std::vector<Shape> OutputShapes(std::span<const Shape> input_shapes = {});
  // Workspace bytes a launch with these input shapes uses (0 for a single
  // stage that passes nothing on); generates the program if needed.
  size_t WorkspaceBytes(std::span<const Shape> input_shapes = {});

  // The IR as text.
  std::string Dump() const;
  // Disassembly of the most recently generated program.
  std::string Das() const;
  // Bytecode of the most recently generated program.
  const std::vector<uint8_t>& Bytecode() const;

  const KernelStats& stats() const;
  // Maximum number of programs a dynamic kernel keeps (default 16).
  void SetCacheCapacity(size_t n);

  struct Impl;

 private:
  friend const ir::Graph& GetGraph(const Kernel& k);
  friend class KernelStack;
  std::unique_ptr<Impl> impl_;
};

// Independent kernels launched as one: the recorded launches are encoded
// into a single stacked program whose stages run together (one wake-up of
// the thread pool, tiles of all kernels balanced across threads; a kernel's
// later stages wait only for the earlier stages of the stack). The stacked
// program is cached: the same kernels with the same shapes are not encoded
// again, so Clear() + Add() ... + Launch() per step is cheap.
class KernelStack {
 public:
  KernelStack();
  ~KernelStack();
  KernelStack(const KernelStack&) = delete;
  KernelStack& operator=(const KernelStack&) = delete;

  // Records one launch of `k` (its program is generated for these shapes if
  // needed; buffers are checked now). `k` must outlive the Launch. An output
  // over one of its own inputs is accepted where the launch runs in place
  // (see Kernel); a stack copies no inputs, so any other overlap of an
  // input by an output is an error here, and Launch rejects launches that
  // write what another launch of the stack reads or writes (they run at
  // once).
  void Add(Kernel& k, std::span<const TensorArg> inputs, std::span<const TensorArg> outputs);
  void Add(Kernel& k, std::initializer_list<TensorArg> inputs, std::initializer_list<TensorArg> outputs) {
    Add(k, std::span<const TensorArg>(inputs.begin(), inputs.size()),
        std::span<const TensorArg>(outputs.begin(), outputs.size()));
  }
  // Runs every recorded launch as one stacked program.
  void Launch();
  // Forgets the recorded launches (keeps the cache).
  void Clear();
  size_t size() const;
  // Disassembly of the stacked program of the last Launch.
  std::string Das() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Threads used by launches (default: DVM_NUM_THREADS or all cores).
void SetNumThreads(int n);
int GetNumThreads();

// Disassembles a bytecode buffer (verifying it first).
std::string Disassemble(std::span<const uint8_t> bytecode);
// Verifies a bytecode buffer; throws dvm::Error naming the offset and rule.
void Verify(std::span<const uint8_t> bytecode);

}  // namespace dvm
