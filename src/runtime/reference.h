// Reference evaluator: a plain scalar interpreter of the kernel IR, computed
// in float64 with the rounding points DVM defines (ir/ir.h). It is the test
// oracle for the VM; it favours clarity over speed.
//
// Value model: every node value is held as doubles.
//  * f32/f16/bf16 values are f32 numbers; every op rounds its result to f32.
//    Rounding to f16/bf16 happens only at Cast to that dtype and at Store.
//  * i32/i8 values are integers; arithmetic wraps (i8 after every op).
//  * bool values are 0 or 1.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "dvm/dvm.h"
#include "ir/ir.h"

namespace dvm::ref {

// A dense row-major tensor with values held as doubles.
struct Tensor {
  DType dtype = DType::kFloat32;
  Shape shape;
  std::vector<double> data;
};

// Evaluates `g`. `inputs` holds one full tensor per input slot, in
// g.inputs order (the tensor before any slicing the load applies). Returns
// one tensor per output slot in g.outputs order; PadStore outputs have the
// padded shape. Values of each output are rounded to its dtype.
// Throws dvm::Error on shape errors (via ir::InferShapes) or when an input
// tensor does not match its load (dtype, element count).
std::vector<Tensor> Evaluate(const ir::Graph& g, std::span<const Tensor> inputs);

// The value `v` as stored in a buffer of dtype `dt` and read back
// (f16/bf16 round to nearest even; ints saturate then wrap; bool is v != 0).
double RoundToStorage(DType dt, double v);

// Encodes t.data in t.dtype (f16/bf16 round to nearest even).
std::vector<uint8_t> ToBytes(const Tensor& t);
// Decodes a raw buffer of `shape` elements of dtype `dt`.
Tensor FromBytes(const void* p, DType dt, const Shape& shape);

}  // namespace dvm::ref
