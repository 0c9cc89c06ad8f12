// Example fused kernels built through the public API, shared by the demo,
// `dvm das` / `dvm dump` and the benchmarks. All are dynamic: dims of -1 are
// bound at every launch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dvm/dvm.h"

namespace dvmtool {

using dvm::BinaryOp;
using dvm::DType;
using dvm::NDObject;
using dvm::ReduceOp;
using dvm::UnaryOp;

constexpr double kGeluC = 0.7978845608028654;  // sqrt(2/pi)
constexpr double kGeluA = 0.044715;
constexpr double kLayerNormEps = 1e-5;

// LayerNorm over the last axis of x[rows, hidden] with gamma/beta[hidden].
// With `bias_residual`, the normalised value is h = x + bias + residual and h
// is stored too (the new residual stream):
//   inputs  x[?, H], bias[H], residual[?, H], gamma[H], beta[H]
//   outputs h[?, H], y[?, H]
// Without: inputs x[?, H], gamma[H], beta[H]; output y[?, H].
inline void BuildLayerNorm(dvm::Kernel& k, int64_t hidden, bool bias_residual) {
  const DType f = DType::kFloat32;
  NDObject* h = k.Load(nullptr, {-1, hidden}, f);
  if (bias_residual) {
    NDObject* bias = k.Load(nullptr, {hidden}, f);
    NDObject* res = k.Load(nullptr, {-1, hidden}, f);
    h = k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kAdd, h, bias), res);
  }
  NDObject* gamma = k.Load(nullptr, {hidden}, f);
  NDObject* beta = k.Load(nullptr, {hidden}, f);
  const double inv_n = 1.0 / double(hidden);
  NDObject* mean = k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, h, {1}, true), inv_n);
  NDObject* d = k.Binary(BinaryOp::kSub, h, mean);
  NDObject* var =
      k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, d, d), {1}, true),
               inv_n);
  NDObject* rstd = k.Unary(UnaryOp::kRsqrt, k.Binary(BinaryOp::kAdd, var, kLayerNormEps));
  NDObject* y = k.Binary(BinaryOp::kMul, d, rstd);
  y = k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, y, gamma), beta);
  if (bias_residual) k.Store(nullptr, h);
  k.Store(nullptr, y);
}

// GELU, tanh form, elementwise over x of the given rank (all dims dynamic):
//   0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
inline void BuildGelu(dvm::Kernel& k, int rank) {
  std::vector<int64_t> dims(rank, -1);
  NDObject* x = k.Load(nullptr, dvm::Dims(dims), DType::kFloat32);
  NDObject* x3 = k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kMul, x, x), x);
  NDObject* u = k.Binary(BinaryOp::kAdd, x, k.Binary(BinaryOp::kMul, x3, kGeluA));
  NDObject* t = k.Unary(UnaryOp::kTanh, k.Binary(BinaryOp::kMul, u, kGeluC));
  NDObject* y = k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kMul, x, 0.5),
                         k.Binary(BinaryOp::kAdd, t, 1.0));
  k.Store(nullptr, y);
}

// Softmax over the last axis of x[?, ?]: exp(x - max) / sum(exp(x - max)).
inline void BuildSoftmax(dvm::Kernel& k) {
  NDObject* x = k.Load(nullptr, {-1, -1}, DType::kFloat32);
  NDObject* m = k.Reduce(ReduceOp::kMax, x, {1}, true);
  NDObject* e = k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, x, m));
  NDObject* s = k.Reduce(ReduceOp::kSum, e, {1}, true);
  k.Store(nullptr, k.Binary(BinaryOp::kDiv, e, s));
}

// A chain of `ops` compute ops over x[?, ?], broadcast rows b[?] and g[?],
// and a full-size r[?, ?]: a realistic elementwise mix (broadcast adds,
// scalar ops, transcendental ops, min/max) with reductions in the middle
// (one for 10 ops, two from 50 ops). One op: x + b. Inputs x, b, r, g (only
// x, b for fewer than 3 ops); one output of x's shape.
inline void BuildChain(dvm::Kernel& k, int ops) {
  const DType f = DType::kFloat32;
  NDObject* v = k.Load(nullptr, {-1, -1}, f);
  NDObject* b = k.Load(nullptr, {-1}, f);
  NDObject* r = ops >= 3 ? k.Load(nullptr, {-1, -1}, f) : nullptr;
  NDObject* g = ops >= 3 ? k.Load(nullptr, {-1}, f) : nullptr;
  const int reductions = ops >= 50 ? 2 : ops >= 10 ? 1 : 0;
  int done = 0, next_red = 1, step = 0;
  while (done < ops) {
    if (next_red <= reductions && done >= next_red * ops / (reductions + 1) && ops - done >= 2) {
      // softmax-style max subtraction, then layernorm-style mean subtraction
      ReduceOp rop = next_red == 1 ? ReduceOp::kMax : ReduceOp::kSum;
      v = k.Binary(BinaryOp::kSub, v, k.Reduce(rop, v, {1}, true));
      done += 2;
      ++next_red;
      continue;
    }
    switch (r ? step++ % 10 : 0) {
      case 0: v = k.Binary(BinaryOp::kAdd, v, b); break;
      case 1: v = k.Binary(BinaryOp::kMul, v, 0.5); break;
      case 2: v = k.Unary(UnaryOp::kTanh, v); break;
      case 3: v = k.Binary(BinaryOp::kMul, v, r); break;
      case 4: v = k.Binary(BinaryOp::kSub, v, g); break;
      case 5: v = k.Unary(UnaryOp::kSigmoid, v); break;
      case 6: v = k.Binary(BinaryOp::kAdd, v, 1.0); break;
      case 7: v = k.Binary(BinaryOp::kMaximum, v, r); break;
      case 8: v = k.Unary(UnaryOp::kExp, v); break;
      case 9: v = k.Binary(BinaryOp::kMul, v, g); break;
    }
    ++done;
  }
  k.Store(nullptr, v);
}

}  // namespace dvmtool
