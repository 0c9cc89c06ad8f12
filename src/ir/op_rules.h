// Dtype rules of the op set, shared by the kernel builder, the graph builder
// and the eager API: each returns the result dtype or throws dvm::Error
// naming the op and the dtypes.
#pragma once

#include "dvm/dvm.h"
#include "ir/dtype.h"
#include "ir/error.h"

namespace dvm::ir {

inline bool IsUnaryFloatOnly(UnaryOp op) {
  switch (op) {
    case UnaryOp::kSqrt:
    case UnaryOp::kRsqrt:
    case UnaryOp::kExp:
    case UnaryOp::kLog:
    case UnaryOp::kReciprocal:
    case UnaryOp::kTanh:
    case UnaryOp::kSigmoid:
    case UnaryOp::kErf:
    case UnaryOp::kSin:
    case UnaryOp::kCos:
      return true;
    default:
      return false;
  }
}
inline bool IsPredicate(BinaryOp op) { return op >= BinaryOp::kEqual; }
inline bool IsArith(BinaryOp op) { return op <= BinaryOp::kPow; }

inline DType UnaryResult(UnaryOp op, DType t) {
  const char* name = UnaryOpName(op);
  if (static_cast<int>(op) >= kNumUnaryOps) Fail("unary: bad op ", int(op));
  bool pred = op == UnaryOp::kIsFinite || op == UnaryOp::kLogicalNot;
  if (IsUnaryFloatOnly(op) && !IsFloat(t)) Fail(name, ": dtype ", DTypeName(t), " not supported (floats only)");
  if (!pred && t == DType::kBool) Fail(name, ": dtype bool not supported");
  return pred ? DType::kBool : t;
}

// tb == ta for the tensor-scalar forms.
inline DType BinaryResult(BinaryOp op, DType ta, DType tb) {
  const char* name = BinaryOpName(op);
  if (static_cast<int>(op) >= kNumBinaryOps) Fail("binary: bad op ", int(op));
  if (ta != tb) Fail(name, ": dtype mismatch ", DTypeName(ta), " vs ", DTypeName(tb), " (cast one operand)");
  if (ta == DType::kBool && IsArith(op)) Fail(name, ": dtype bool not supported (use logical ops)");
  return IsPredicate(op) ? DType::kBool : ta;
}

inline DType SelectResult(DType tc, DType ta, DType tb) {
  if (tc != DType::kBool) Fail("select: condition must be bool, got ", DTypeName(tc));
  if (ta != tb) Fail("select: dtype mismatch ", DTypeName(ta), " vs ", DTypeName(tb));
  return ta;
}

inline void CheckCast(DType type) {
  if (static_cast<uint8_t>(type) >= kNumDTypes) Fail("cast: bad dtype ", int(type));
}

inline DType ReduceResult(ReduceOp op, DType t) {
  if (static_cast<int>(op) >= kNumReduceOps) Fail("reduce: bad op ", int(op));
  if (t == DType::kBool && (op == ReduceOp::kSum || op == ReduceOp::kProd))
    Fail("reduce_", ReduceOpName(op), ": dtype bool not supported (cast first)");
  return t;
}

inline DType MatMulResult(DType ta, DType tb) {
  if (ta != tb) Fail("matmul: dtype mismatch ", DTypeName(ta), " vs ", DTypeName(tb));
  if (!IsFloat(ta)) Fail("matmul: dtype ", DTypeName(ta), " not supported (f32, f16, bf16)");
  return ta;
}

}  // namespace dvm::ir
