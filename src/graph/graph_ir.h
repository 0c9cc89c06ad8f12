// Graph IR: the nodes a dvm::Graph records, with symbolic shapes. Shared by
// the fuser (src/fusion), the executor (src/runtime/executor.cc) and the
// eager runtime, which records its traces in the same IR.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dvm/graph.h"
#include "ir/sym.h"

namespace dvm::graph {

enum class GOp : uint8_t {
  kInput,     // io = input slot
  kConst,     // data
  kUnary,     // sub = UnaryOp
  kBinary,    // sub = BinaryOp
  kBinaryTS,  // in0 op scalar
  kBinaryST,  // scalar op in0
  kSelect,
  kCast,
  kBroadcast,  // shape = target
  kReshape,    // shape = target
  kTranspose,  // axes = perm
  kReduce,     // sub = ReduceOp, axes (normalised, sorted), keepdims
  kMatMul,     // sub bit 0 trans_a, bit 1 trans_b
  kGather,
  kConcat,  // axes[0] = axis
  kSlice,   // axes[0] = axis; start, shape[axis] = size (a piece of Split)
  kIota,    // scalar = start, scalar2 = step
  kCausalMask,
};
const char* GOpName(GOp op);

// What the fuser may do with an op.
enum class OpClass : uint8_t { kLeaf, kElementwise, kView, kReduce, kMatMul, kLibrary };
OpClass Classify(GOp op);

struct GNode {
  GOp op = GOp::kInput;
  uint8_t sub = 0;
  DType dtype = DType::kFloat32;
  bool keepdims = false;
  std::vector<int32_t> in;
  std::vector<sym::Expr> shape;
  Shape axes;
  sym::Expr start;  // kSlice
  double scalar = 0, scalar2 = 0;
  int32_t io = -1;
  const void* data = nullptr;
  Shape const_shape;  // kConst
  std::string name;   // inputs and constants
};

struct GraphIR {
  sym::SymbolTable syms;
  std::vector<GNode> nodes;
  std::vector<int32_t> inputs;              // node ids by input slot
  std::vector<int32_t> outputs;             // node ids by output slot
  std::vector<std::vector<int32_t>> users;  // filled by Finalize()

  int Add(GNode n);
  void Finalize();  // users
  std::string ShapeStr(const std::vector<sym::Expr>& s) const;
  std::string NodeStr(int id) const;
  std::string Dump() const;
  // Concrete dims of node `id` under `binding` (one value per symbol id).
  Shape Eval(int id, std::span<const int64_t> binding) const;
};

// Static-shape view helpers used by the fuser: dims provably equal / 1.
bool DimIsOne(const sym::SymbolTable& t, const sym::Expr& d);

}  // namespace dvm::graph

namespace dvm {
struct Graph::Impl {
  graph::GraphIR ir;
};
}  // namespace dvm
