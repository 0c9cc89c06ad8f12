// DVM graph API: a model graph whose dims are symbols, fused once by
// reasoning about the symbols, compiled per concrete shape at run time.
//
//   dvm::Graph g;
//   auto x = g.Input("x", {"seq", 768}, dvm::DType::kFloat32);
//   auto w = g.Constant("w", {768, 768}, dvm::DType::kFloat32, w_data);
//   auto y = g.Unary(dvm::UnaryOp::kTanh, g.MatMul(x, w));
//   g.Output(y);
//   dvm::CompiledGraph cg(g);             // symbol deduction + fusion, once
//   cg.Run({{x_ptr, {17, 768}}}, {{y_ptr, {}}});  // seq = 17: codegen, run
//
// Shapes are inferred as symbolic expressions (symbols, constants, +, *,
// floor-division). Ops imply facts (broadcast partners equal or 1, matmul
// inner dims equal, reshape keeps the element count); the deduction engine
// merges symbols proven equal, rejects provably inconsistent graphs when
// they are built and rejects a concrete binding that violates a fact at Run.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "dvm/dvm.h"

namespace dvm {

// A dim of a graph value: a constant or a named symbol. In Reshape, -1 is
// inferred from the element count (symbolically).
class Dim {
 public:
  Dim(int64_t value) : value_(value) {}                    // NOLINT
  Dim(int value) : value_(value) {}                        // NOLINT
  Dim(const char* symbol) : symbol_(symbol) {}             // NOLINT
  Dim(std::string symbol) : symbol_(std::move(symbol)) {}  // NOLINT
  bool is_symbol() const { return !symbol_.empty(); }
  int64_t value() const { return value_; }
  const std::string& symbol() const { return symbol_; }

 private:
  int64_t value_ = 0;
  std::string symbol_;
};
using DimList = std::vector<Dim>;

// A value of a graph (an index into its nodes).
struct Value {
  int32_t id = -1;
  bool valid() const { return id >= 0; }
};

class Graph {
 public:
  Graph();
  ~Graph();
  Graph(Graph&&) noexcept;
  Graph& operator=(Graph&&) noexcept;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  // ---- leaves -------------------------------------------------------------
  // An input bound at Run; its symbols are bound from the tensor's shape.
  Value Input(const std::string& name, const DimList& shape, DType type);
  // A constant (weights). `data` is not copied and must outlive the graph.
  Value Constant(const std::string& name, const Shape& shape, DType type, const void* data);

  // ---- fusible ops (the kernel builder's op set) ---------------------------
  Value Unary(UnaryOp op, Value x);
  Value Binary(BinaryOp op, Value a, Value b);  // numpy broadcasting
  Value Binary(BinaryOp op, Value a, double scalar);
  Value Binary(BinaryOp op, double scalar, Value b);
  Value Select(Value cond, Value a, Value b);
  Value Cast(Value x, DType type);
  Value Broadcast(Value x, const DimList& shape);
  Value Reshape(Value x, const DimList& shape);  // one dim may be -1
  Value Transpose(Value x, const Shape& perm);
  Value Reduce(ReduceOp op, Value x, const Shape& axes, bool keepdims);
  Value MatMul(Value a, Value b, bool trans_a = false, bool trans_b = false);

  // ---- library ops (not fused; run by plain C++ kernels) -------------------
  // Rows of `table` [V, ...] picked by int32 `ids`: ids.shape ++
  // table.shape[1:].
  Value Gather(Value table, Value ids);
  Value Concat(const std::vector<Value>& xs, int64_t axis);
  std::vector<Value> Split(Value x, int64_t axis, const DimList& sizes);
  // [n]: start, start+step, ... in `type`.
  Value Iota(const Dim& n, DType type, double start = 0, double step = 1);
  // [q, kv]: 0 where key j may be attended by query i (j <= i + kv - q),
  // -inf elsewhere (bool: true/false).
  Value CausalMask(const Dim& q, const Dim& kv, DType type);

  // Marks a value as a graph output (in call order).
  void Output(Value v);

  // ---- inspection ----------------------------------------------------------
  std::string ShapeString(Value v) const;  // e.g. "[seq, 768]"
  DType GetDType(Value v) const;
  size_t num_nodes() const;
  std::string Dump() const;   // nodes with symbolic shapes
  std::string Facts() const;  // facts recorded by symbol deduction

  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

struct CompileOptions {
  bool fuse = true;   // false: every primitive op is its own kernel
  bool stack = true;  // launch independent kernels of one level as one
};

struct RunOptions {
  bool collect_stats = false;  // time every kernel / library op
  // Fill every planned buffer with NaN bytes after its last use (tests: a
  // memory plan that aliases live buffers then corrupts results).
  bool poison_freed = false;
};

struct RunStats {
  int kernels = 0;   // fused kernels run
  int launches = 0;  // launches (a stack of kernels counts once)
  int library_ops = 0;
  int codegens = 0;       // programs generated for this binding
  double codegen_us = 0;  // their total codegen time
  double codegen_max_us = 0;
  double run_us = 0;              // wall time of Run
  double matmul_us = 0;           // time in kernels containing a matmul
  double nonmatmul_us = 0;        // time in other kernels and library ops
  size_t peak_bytes = 0;          // planned intermediate memory
  std::vector<double> launch_us;  // per launch, with collect_stats
};

// A graph fused once; Run binds concrete shapes (from the inputs), compiles
// every kernel for them (cached per shape), plans intermediate memory by
// liveness and runs kernels and library ops in order.
class CompiledGraph {
 public:
  explicit CompiledGraph(const Graph& g, const CompileOptions& options = {});
  ~CompiledGraph();
  CompiledGraph(const CompiledGraph&) = delete;
  CompiledGraph& operator=(const CompiledGraph&) = delete;

  // Inputs in Input() order with their shapes; outputs in Output() order
  // (shapes ignored; `bytes` checked when set). An output may be written
  // over an input (the input is then read from a copy); outputs must not
  // overlap each other.
  void Run(std::span<const TensorArg> inputs, std::span<const TensorArg> outputs, const RunOptions& options = {},
           RunStats* stats = nullptr);
  void Run(std::initializer_list<TensorArg> inputs, std::initializer_list<TensorArg> outputs) {
    Run(std::span<const TensorArg>(inputs.begin(), inputs.size()),
        std::span<const TensorArg>(outputs.begin(), outputs.size()));
  }
  // Output shapes for the given input shapes.
  std::vector<Shape> OutputShapes(std::span<const Shape> input_shapes) const;

  int num_kernels() const;         // fused kernels
  int num_matmul_kernels() const;  // ... of which contain a matmul
  int num_library_ops() const;
  int num_launch_groups() const;  // launches per run (after stacking)
  // The partition: one line per kernel / library op with its nodes.
  std::string Dump() const;
  // A short description of launch `i` (RunStats::launch_us order).
  std::string LaunchName(int i) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace dvm
