// Kernel IR: the program a Kernel builder records, before any shape is bound.
//
// Semantics shared by the VM and the reference evaluator (docs/semantics.md):
//  * f16/bf16 values are computed in f32; rounding to the narrow type happens
//    at Cast and at Store. f32 ops round every result to f32.
//  * Binary operands must have the same dtype; a scalar takes the tensor's.
//  * i32/i8 arithmetic wraps; integer division truncates, x/0 == 0 and
//    INT_MIN/-1 == INT_MIN; i8 results wrap to 8 bits after every op.
//  * float->int casts: NaN -> 0, saturate to i32, truncate; then wrap to i8.
//  * Reductions keep the input dtype (f16/bf16 accumulate in f32); over an
//    empty axis they give the identity (0, 1, -inf/INT_MIN, +inf/INT_MAX).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dvm/dvm.h"

namespace dvm::ir {

enum class Op : uint8_t {
  kLoad,       // a0 = tensor shape; a1/a2/a3 = start/end/step (empty: plain)
  kStore,      // in0 = value; sub = 1 for PadStore: a0 = padded shape, a1 = pad_before
  kUnary,      // sub = UnaryOp
  kBinary,     // sub = BinaryOp, in0 op in1
  kBinaryTS,   // in0 op scalar
  kBinaryST,   // scalar op in0
  kScalar,     // broadcast scalar to a0 (a rank-0 shape is allowed)
  kSelect,     // in0 ? in1 : in2
  kCast,
  kBroadcast,  // a0 = target shape (-1 keeps the input dim)
  kReshape,    // a0 = target shape (one -1 inferred)
  kTranspose,  // a0 = perm
  kCopy,
  kReduce,     // sub = ReduceOp, a0 = axes (normalised, sorted), keepdims
  kElemAny,
  kMatMul,     // in0 @ in1; sub bit 0 = trans_a, bit 1 = trans_b
};
const char* OpName(Op op);

struct Node {
  Op op = Op::kCopy;
  uint8_t sub = 0;
  DType dtype = DType::kFloat32;
  bool keepdims = false;
  int32_t in[3] = {-1, -1, -1};
  int32_t io = -1;  // input slot for loads, output slot for stores
  double scalar = 0.0;
  void* addr = nullptr;
  Shape shape;  // as built; -1 where bound at launch
  Shape a0, a1, a2, a3;
  int num_inputs() const { return in[0] < 0 ? 0 : in[1] < 0 ? 1 : in[2] < 0 ? 2 : 3; }
};

struct Graph {
  KernelType type = KernelType::kStatic;
  std::vector<Node> nodes;
  std::vector<int32_t> inputs;   // load node ids by input slot
  std::vector<int32_t> outputs;  // store node ids by output slot
};

// Concrete shape of every node for the given input tensor shapes (one per
// input slot; for static graphs the built shapes are used when empty).
// Throws dvm::Error naming the op, its position and the shapes.
void InferShapes(const Graph& g, std::span<const Shape> input_shapes,
                 std::vector<Shape>& shapes);

// Shape of node `id` given the shapes of the nodes before it.
Shape InferNode(const Graph& g, int id, const std::vector<Shape>& shapes,
                std::span<const Shape> input_shapes);

// Numpy broadcast of two shapes; throws naming `what` on failure.
Shape BroadcastShapes(const Shape& a, const Shape& b, const char* what, int node);

std::string ShapeStr(std::span<const int64_t> s);
std::string Dump(const Graph& g);

// Element count with overflow check (throws on overflow or negative dims).
int64_t NumElements(std::span<const int64_t> s, const char* what);

}  // namespace dvm::ir
