// Randomized differential test: random fused kernels (up to 12 ops mixing
// element-wise math, broadcasting, reductions, slicing loads, casts and data
// movement, over random dtypes and shapes with awkward sizes) are run by the
// VM and compared with the reference evaluator at PyTorch's default
// tolerances.
//
// The generator keeps programs well-conditioned so that those tolerances are
// meaningful: it tracks an interval bound for every value and whether the
// value is "exact" (computed bit-identically by any correct implementation:
// loads, data movement, IEEE-exact arithmetic, casts of exact values), and
//  * applies transcendental functions only inside benign domains (exp of
//    bounded inputs, log/sqrt/rsqrt/reciprocal of values >= 0.25, pow with
//    base in [0.5, 2] and exponent in [-2, 2]),
//  * adds or subtracts inexact values only when both are small (no
//    catastrophic cancellation beyond atol),
//  * compares, floors, rounds and casts to integers only exact values (a
//    one-ulp difference must not flip a predicate),
//  * sums only non-negative values over at most 4097 elements and multiplies
//    at most 8 values in [0.5, 2],
//  * rounds an inexact value to f16/bf16 only right before a store,
//  * multiplies matrices (MatMul, 2-D and batched, transposed operands) of
//    non-negative f32 values over at most 16 products (BLAS accumulates in
//    f32), so the operations after it run as the GEMM's fused epilogue,
//  * sums rows longer than a tile (17000, 40000, 70000: chunked stages) of
//    non-negative values; a sum too large for the magnitude bound may only
//    be stored, and its mean is taken.
// A second test launches groups of random kernels as one KernelStack and
// compares them, bit for bit, with the same kernels launched one by one.
//
// Environment:
//   DVM_RANDOM_KERNELS  number of kernels (default 2000)
//   DVM_SEED            base seed (default 20241125); kernel i uses a seed
//                       derived from it, printed on failure
//   DVM_KERNEL_SEED     run only the kernel with this seed and print it
//   DVM_RANDOM_VERBOSE  print each kernel's seed before running it (to find
//                       the kernel behind a crash or hang)
//   DVM_RANDOM_STACKS   number of stacked groups (default 150)
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <numeric>

#include "test_util.h"
#include "vm/cpu/jit.h"

namespace dvm::test {
namespace {

constexpr double kMaxMag = 1e4;

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

struct Val {
  NDObject* obj = nullptr;
  Shape shape;
  DType dt = DType::kFloat32;
  double lo = 0, hi = 0;  // bounds of the values (ints: may be the full range)
  bool exact = true;
  bool terminal = false;  // may only be stored
  double Mag() const { return std::max(std::fabs(lo), std::fabs(hi)); }
};

int64_t Numel(const Shape& s) { return ir::NumElements(s, "random kernel"); }

// Product of the dims, saturating (no overflow error).
int64_t SafeNumel(const Shape& s) {
  double n = 1;
  for (int64_t d : s) n *= static_cast<double>(d);
  return n > 1e15 ? int64_t{1} << 50 : static_cast<int64_t>(n);
}

bool Broadcastable(const Shape& a, const Shape& b, Shape* out) {
  size_t r = std::max(a.size(), b.size());
  Shape o(r);
  for (size_t i = 0; i < r; ++i) {
    int64_t x = i < r - a.size() ? 1 : a[i - (r - a.size())];
    int64_t y = i < r - b.size() ? 1 : b[i - (r - b.size())];
    if (x == y || y == 1)
      o[i] = x;
    else if (x == 1)
      o[i] = y;
    else
      return false;
  }
  *out = o;
  return true;
}

double DTypeMin(DType dt) { return dt == DType::kInt32 ? kI32Min : dt == DType::kInt8 ? -128 : 0; }
double DTypeMax(DType dt) { return dt == DType::kInt32 ? kI32Max : dt == DType::kInt8 ? 127 : 1; }

class RandomKernel {
 public:
  explicit RandomKernel(uint64_t seed) : rng_(seed) {}

  void Build();
  Kernel& kernel() { return *k_; }
  const std::vector<ref::Tensor>& inputs() const { return inputs_; }
  const std::map<std::string, int>& op_counts() const { return op_counts_; }

 private:
  double U() { return std::uniform_real_distribution<double>(0, 1)(rng_); }
  int64_t RandInt(int64_t a, int64_t b) { return std::uniform_int_distribution<int64_t>(a, b)(rng_); }
  bool Coin(double p) { return U() < p; }
  template <class T>
  T Pick(std::initializer_list<T> v) {
    return *(v.begin() + RandInt(0, static_cast<int64_t>(v.size()) - 1));
  }

  Shape RandomShape(int64_t budget);
  Shape BroadcastVariant(const Shape& s);
  Val AddInput(const Shape& shape, DType dt);
  Val* PickVal(const std::function<bool(const Val&)>& ok);
  Val* PickPartner(const Val& a, const std::function<bool(const Val&)>& ok, Shape* out);
  Val Fix(Val v);  // clamps int bounds to the dtype (wrapping)
  void Push(Val v, const char* name) {
    vals_.push_back(Fix(std::move(v)));
    ++op_counts_[name];
    ++ops_;
  }

  bool TryUnary();
  bool TryBinary();
  bool TryScalar();
  bool TrySelect();
  bool TryCast();
  bool TryReduce();
  bool TryBroadcast();
  bool TryReshape();
  bool TryTranspose();
  bool TryCopy();
  bool TryAny();
  bool TryMatMul();
  Val NonNegative(Val a);  // |a| (pushed) when a may be negative

  Rng rng_;
  std::unique_ptr<Kernel> k_;
  bool dynamic_ = false;
  int64_t budget_ = 4096;
  DType main_ = DType::kFloat32;
  std::vector<Val> vals_;
  std::vector<ref::Tensor> inputs_;
  std::map<std::string, int> op_counts_;
  int ops_ = 0;
};

Val RandomKernel::Fix(Val v) {
  if (!IsFloat(v.dt)) {
    if (v.lo < DTypeMin(v.dt) || v.hi > DTypeMax(v.dt)) {
      v.lo = DTypeMin(v.dt);
      v.hi = DTypeMax(v.dt);
    }
  }
  return v;
}

Shape RandomKernel::RandomShape(int64_t budget) {
  double u = U();
  int rank = u < 0.05 ? 0 : u < 0.25 ? 1 : u < 0.6 ? 2 : u < 0.85 ? 3 : u < 0.95 ? 4 : static_cast<int>(RandInt(5, 6));
  for (int tries = 0; tries < 100; ++tries) {
    Shape s(rank);
    for (int i = 0; i < rank; ++i) {
      double w = U();
      if (w < 0.02)
        s[i] = 0;
      else if (w < 0.47)
        s[i] = Pick<int64_t>({1, 2, 3, 4, 5, 7, 8});
      else if (w < 0.72)
        s[i] = Pick<int64_t>({16, 31, 33, 64, 127});
      else if (rank == 1 && w < 0.78)
        s[i] = Pick<int64_t>({9000, 70000});
      else if (rank == 2 && i == 1 && w < 0.80)
        s[i] = Pick<int64_t>({17000, 40000});
      else
        s[i] = Pick<int64_t>({1023, 1024, 1025, 4095, 4096, 4097});
    }
    double n = 1;  // zero dims count as 1: a slice of them still has a buffer
    for (int64_t d : s) n *= static_cast<double>(std::max<int64_t>(d, 1));
    // Zero-size tensors may have large nominal dims (nothing is allocated
    // for them; reductions over the empty axis stay within the budget).
    if (n <= static_cast<double>(budget) || (n <= 1e7 && Numel(s) == 0 && Coin(0.5))) return s;
  }
  return Shape(rank, 1);
}

Shape RandomKernel::BroadcastVariant(const Shape& s) {
  Shape b = s;
  for (auto& d : b)
    if (Coin(0.5)) d = 1;
  while (!b.empty() && Coin(0.3)) b.erase(b.begin());
  return b;
}

Val RandomKernel::AddInput(const Shape& target, DType dt) {
  Val v;
  v.dt = dt;
  v.shape = target;
  Gen gen;
  if (IsFloat(dt)) {
    if (Coin(0.65))
      v.lo = -2, v.hi = 2;
    else
      v.lo = 0.5, v.hi = 2;
    gen = Uniform(v.lo, v.hi);
  } else if (dt == DType::kInt32) {
    if (Coin(0.6))
      v.lo = -1000, v.hi = 1000;
    else
      v.lo = kI32Min, v.hi = kI32Max;
    gen = IntUniform(static_cast<int64_t>(v.lo), static_cast<int64_t>(v.hi));
  } else if (dt == DType::kInt8) {
    v.lo = -128, v.hi = 127;
    gen = IntUniform(-128, 127);
  } else {
    v.lo = 0, v.hi = 1;
    gen = IntUniform(0, 1);
  }
  const size_t r = target.size();
  auto dims = [&](const Shape& s) { return dynamic_ ? Shape(s.size(), -1) : s; };
  // Slices read a larger buffer; keep it moderate (else load plainly).
  const int64_t max_full = 3 * budget_ + 4096;
  double u = U();
  Shape full(r), start(r), end(r), step(r);
  if (u >= 0.6 && r > 0 && u < 0.85) {
    for (size_t a = 0; a < r; ++a) {
      step[a] = RandInt(1, 3);
      start[a] = RandInt(0, 2);
      end[a] = target[a] == 0 ? start[a] : start[a] + step[a] * (target[a] - 1) + 1;
      full[a] = end[a] + RandInt(0, 2);
    }
    if (SafeNumel(full) <= max_full) {
      inputs_.push_back(MakeTensor(dt, full, gen, rng_));
      Shape d = dims(full);
      v.obj = k_->StridedSliceLoad(nullptr, D(d), dt, D(start), D(end), D(step));
      ++op_counts_["strided_slice_load"];
      return v;
    }
  } else if (u >= 0.85 && r > 0) {
    for (size_t a = 0; a < r; ++a) {
      start[a] = RandInt(0, 2);
      full[a] = start[a] + target[a] + RandInt(0, 2);
    }
    if (SafeNumel(full) <= max_full) {
      inputs_.push_back(MakeTensor(dt, full, gen, rng_));
      Shape d = dims(full);
      v.obj = k_->SliceLoad(nullptr, D(d), dt, D(start), D(target));
      ++op_counts_["slice_load"];
      return v;
    }
  }
  inputs_.push_back(MakeTensor(dt, target, gen, rng_));
  Shape d = dims(target);
  v.obj = k_->Load(nullptr, D(d), dt);
  ++op_counts_["load"];
  return v;
}

// A non-terminal value satisfying `ok`, preferring recent ones.
Val* RandomKernel::PickVal(const std::function<bool(const Val&)>& ok) {
  std::vector<Val*> c;
  for (auto& v : vals_)
    if (!v.terminal && ok(v)) c.push_back(&v);
  if (c.empty()) return nullptr;
  if (Coin(0.6)) {
    size_t from = c.size() > 3 ? c.size() - 3 : 0;
    return c[static_cast<size_t>(RandInt(static_cast<int64_t>(from), static_cast<int64_t>(c.size()) - 1))];
  }
  return c[static_cast<size_t>(RandInt(0, static_cast<int64_t>(c.size()) - 1))];
}

Val* RandomKernel::PickPartner(const Val& a, const std::function<bool(const Val&)>& ok, Shape* out) {
  std::vector<std::pair<Val*, Shape>> c;
  for (auto& v : vals_) {
    Shape o;
    if (!v.terminal && v.dt == a.dt && ok(v) && Broadcastable(a.shape, v.shape, &o) && Numel(o) <= budget_)
      c.push_back({&v, o});
  }
  if (c.empty()) return nullptr;
  auto& p = c[static_cast<size_t>(RandInt(0, static_cast<int64_t>(c.size()) - 1))];
  *out = p.second;
  return p.first;
}

bool RandomKernel::TryUnary() {
  Val* x = PickVal([](const Val&) { return true; });
  if (!x) return false;
  Val a = *x;
  Val r = a;
  UnaryOp op;
  if (IsFloat(a.dt)) {
    std::vector<UnaryOp> ok = {UnaryOp::kTanh, UnaryOp::kSigmoid, UnaryOp::kErf,
                               UnaryOp::kAbs,  UnaryOp::kNeg,     UnaryOp::kRelu};
    if (a.Mag() <= 16) ok.insert(ok.end(), {UnaryOp::kSin, UnaryOp::kCos});
    if (a.lo >= -8 && a.hi <= 3) ok.push_back(UnaryOp::kExp);
    if (a.lo >= 0) ok.push_back(UnaryOp::kSqrt);
    if (a.lo >= 0.25) ok.insert(ok.end(), {UnaryOp::kLog, UnaryOp::kRsqrt, UnaryOp::kReciprocal});
    if (a.hi <= -0.25) ok.push_back(UnaryOp::kReciprocal);
    if (a.exact) ok.insert(ok.end(), {UnaryOp::kFloor, UnaryOp::kCeil, UnaryOp::kRound});
    op = ok[static_cast<size_t>(RandInt(0, static_cast<int64_t>(ok.size()) - 1))];
    if (Coin(0.08)) op = a.exact && Coin(0.5) ? UnaryOp::kLogicalNot : UnaryOp::kIsFinite;
    auto sig = [](double v) { return 1 / (1 + std::exp(-v)); };
    switch (op) {
      case UnaryOp::kTanh:
        r.lo = std::tanh(a.lo), r.hi = std::tanh(a.hi), r.exact = false;
        break;
      case UnaryOp::kSigmoid:
        r.lo = sig(a.lo), r.hi = sig(a.hi), r.exact = false;
        break;
      case UnaryOp::kErf:
        r.lo = std::erf(a.lo), r.hi = std::erf(a.hi), r.exact = false;
        break;
      case UnaryOp::kSin:
      case UnaryOp::kCos:
        r.lo = -1, r.hi = 1, r.exact = false;
        break;
      case UnaryOp::kExp:
        r.lo = std::exp(a.lo), r.hi = std::exp(a.hi), r.exact = false;
        break;
      case UnaryOp::kSqrt:
        r.lo = std::sqrt(a.lo), r.hi = std::sqrt(a.hi);
        break;  // IEEE-exact
      case UnaryOp::kLog:
        r.lo = std::log(a.lo), r.hi = std::log(a.hi), r.exact = false;
        break;
      case UnaryOp::kRsqrt:
        r.lo = 1 / std::sqrt(a.hi), r.hi = 1 / std::sqrt(a.lo), r.exact = false;
        break;
      case UnaryOp::kReciprocal:
        r.lo = 1 / a.hi, r.hi = 1 / a.lo, r.exact = false;
        break;
      case UnaryOp::kAbs:
        r.lo = a.lo >= 0 ? a.lo : a.hi <= 0 ? -a.hi : 0;
        r.hi = a.Mag();
        break;
      case UnaryOp::kNeg:
        r.lo = -a.hi, r.hi = -a.lo;
        break;
      case UnaryOp::kRelu:
        r.lo = std::max(a.lo, 0.0), r.hi = std::max(a.hi, 0.0);
        break;
      case UnaryOp::kFloor:
        r.lo = std::floor(a.lo), r.hi = std::floor(a.hi);
        break;
      case UnaryOp::kCeil:
        r.lo = std::ceil(a.lo), r.hi = std::ceil(a.hi);
        break;
      case UnaryOp::kRound:
        r.lo = std::floor(a.lo), r.hi = std::ceil(a.hi);
        break;
      case UnaryOp::kIsFinite:
      case UnaryOp::kLogicalNot:
        r.dt = DType::kBool, r.lo = 0, r.hi = 1, r.exact = true;
        break;
    }
  } else if (a.dt == DType::kBool) {
    op = Pick({UnaryOp::kLogicalNot, UnaryOp::kIsFinite});
  } else {
    op = Pick({UnaryOp::kAbs, UnaryOp::kNeg, UnaryOp::kRelu, UnaryOp::kFloor, UnaryOp::kCeil, UnaryOp::kRound});
    if (Coin(0.1)) op = Pick({UnaryOp::kIsFinite, UnaryOp::kLogicalNot});
    switch (op) {
      case UnaryOp::kAbs:
        r.lo = a.lo >= 0 ? a.lo : 0, r.hi = a.Mag();
        break;
      case UnaryOp::kNeg:
        r.lo = -a.hi, r.hi = -a.lo;
        break;
      case UnaryOp::kRelu:
        r.lo = std::max(a.lo, 0.0), r.hi = std::max(a.hi, 0.0);
        break;
      case UnaryOp::kIsFinite:
      case UnaryOp::kLogicalNot:
        r.dt = DType::kBool, r.lo = 0, r.hi = 1;
        break;
      default:
        break;
    }
  }
  r.obj = k_->Unary(op, a.obj);
  Push(r, UnaryOpName(op));
  return true;
}

bool RandomKernel::TryBinary() {
  Val* x = PickVal([](const Val&) { return true; });
  if (!x) return false;
  Val a = *x;
  Shape out;
  Val* y = PickPartner(
      a, [](const Val&) { return true; }, &out);
  if (!y) return false;
  Val b = *y;
  Val r = a;
  r.shape = out;
  r.exact = a.exact && b.exact;
  std::vector<BinaryOp> ok;
  const bool both_exact = a.exact && b.exact;
  if (IsFloat(a.dt)) {
    if (both_exact ? a.Mag() + b.Mag() <= kMaxMag : (a.Mag() <= 4 && b.Mag() <= 4))
      ok.insert(ok.end(), {BinaryOp::kAdd, BinaryOp::kSub});
    if (a.Mag() * b.Mag() <= (both_exact ? kMaxMag : 64)) ok.push_back(BinaryOp::kMul);
    if ((b.lo >= 0.25 || b.hi <= -0.25) && a.Mag() * 4 <= 64) ok.push_back(BinaryOp::kDiv);
    if (a.lo >= 0.5 && a.hi <= 2 && b.lo >= -2 && b.hi <= 2) ok.push_back(BinaryOp::kPow);
    ok.insert(ok.end(), {BinaryOp::kMaximum, BinaryOp::kMinimum});
    if (both_exact && Coin(0.25))
      ok = {BinaryOp::kEqual,   BinaryOp::kNotEqual,     BinaryOp::kLess,       BinaryOp::kLessEqual,
            BinaryOp::kGreater, BinaryOp::kGreaterEqual, BinaryOp::kLogicalAnd, BinaryOp::kLogicalOr};
  } else if (a.dt == DType::kBool) {
    ok = {BinaryOp::kMaximum, BinaryOp::kMinimum,    BinaryOp::kEqual,    BinaryOp::kNotEqual,
          BinaryOp::kLess,    BinaryOp::kLogicalAnd, BinaryOp::kLogicalOr};
  } else {
    ok = {BinaryOp::kAdd, BinaryOp::kSub, BinaryOp::kMul, BinaryOp::kDiv, BinaryOp::kMaximum, BinaryOp::kMinimum};
    if (Coin(0.25))
      ok = {BinaryOp::kEqual,      BinaryOp::kLessEqual, BinaryOp::kGreater,
            BinaryOp::kLogicalAnd, BinaryOp::kLogicalOr, BinaryOp::kNotEqual};
  }
  BinaryOp op = ok[static_cast<size_t>(RandInt(0, static_cast<int64_t>(ok.size()) - 1))];
  const double c[4] = {a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi};
  switch (op) {
    case BinaryOp::kAdd:
      r.lo = a.lo + b.lo, r.hi = a.hi + b.hi;
      break;
    case BinaryOp::kSub:
      r.lo = a.lo - b.hi, r.hi = a.hi - b.lo;
      break;
    case BinaryOp::kMul:
      r.lo = *std::min_element(c, c + 4), r.hi = *std::max_element(c, c + 4);
      break;
    case BinaryOp::kDiv:
      if (IsFloat(a.dt)) {
        r.lo = -a.Mag() * 4, r.hi = a.Mag() * 4;
        r.exact = both_exact;  // IEEE division is correctly rounded
      } else {
        r.lo = -a.Mag(), r.hi = a.Mag();
      }
      break;
    case BinaryOp::kPow: {
      double p[4] = {std::pow(a.lo, b.lo), std::pow(a.lo, b.hi), std::pow(a.hi, b.lo), std::pow(a.hi, b.hi)};
      r.lo = std::min(1.0, *std::min_element(p, p + 4));
      r.hi = std::max(1.0, *std::max_element(p, p + 4));
      r.exact = false;
      break;
    }
    case BinaryOp::kMaximum:
    case BinaryOp::kMinimum:
      r.lo = std::min(a.lo, b.lo), r.hi = std::max(a.hi, b.hi);
      break;
    default:
      r.dt = DType::kBool, r.lo = 0, r.hi = 1, r.exact = true;
      break;
  }
  if (IsFloat(r.dt) && (std::fabs(r.lo) > kMaxMag || std::fabs(r.hi) > kMaxMag)) return false;
  r.obj = k_->Binary(op, a.obj, b.obj);
  Push(r, BinaryOpName(op));
  return true;
}

bool RandomKernel::TryScalar() {
  Val* x = PickVal([](const Val&) { return true; });
  if (!x) return false;
  Val a = *x;
  Val r = a;
  bool ts = true;
  BinaryOp op;
  double s;
  if (IsFloat(a.dt)) {
    std::vector<int> ok = {0, 1, 2, 3, 4, 5};
    if (a.lo >= 0.25 || a.hi <= -0.25) ok.push_back(6);
    if (a.lo >= 0.5 && a.hi <= 2) ok.push_back(7);
    if (a.lo >= -2 && a.hi <= 2) ok.push_back(8);
    if (a.exact && Coin(0.3)) ok.push_back(9);
    switch (ok[static_cast<size_t>(RandInt(0, static_cast<int64_t>(ok.size()) - 1))]) {
      case 0:
        op = BinaryOp::kAdd, s = Pick({-1.5, -0.5, 0.25, 1.0, 2.0}), r.lo = a.lo + s, r.hi = a.hi + s;
        break;
      case 1:
        op = BinaryOp::kSub, s = Pick({-1.0, 0.5, 3.0}), r.lo = a.lo - s, r.hi = a.hi - s;
        break;
      case 2:
        op = BinaryOp::kMul, s = Pick({0.5, 2.0, -1.5, 3.0});
        r.lo = std::min(a.lo * s, a.hi * s), r.hi = std::max(a.lo * s, a.hi * s);
        break;
      case 3:
        op = BinaryOp::kDiv, s = Pick({2.0, -4.0, 3.0, 0.7});
        r.lo = std::min(a.lo / s, a.hi / s), r.hi = std::max(a.lo / s, a.hi / s);
        break;
      case 4:
        op = BinaryOp::kMaximum, s = Pick({0.0, 0.5, -1.0}), r.lo = std::max(a.lo, s), r.hi = std::max(a.hi, s);
        break;
      case 5:
        ts = false, op = BinaryOp::kSub, s = Pick({1.0, -2.0, 0.5});
        r.lo = s - a.hi, r.hi = s - a.lo;
        break;
      case 6:
        ts = false, op = BinaryOp::kDiv, s = Pick({1.0, -2.0, 0.5});
        r.lo = -std::fabs(s) * 4, r.hi = std::fabs(s) * 4;
        break;
      case 7:
        op = BinaryOp::kPow, s = Pick({2.0, 0.5, -1.0, 1.5, 3.0});
        r.lo = std::min(std::pow(a.lo, s), std::pow(a.hi, s)), r.hi = std::max(std::pow(a.lo, s), std::pow(a.hi, s));
        r.exact = false;
        break;
      case 8:
        ts = false, op = BinaryOp::kPow, s = Pick({1.5, 0.75, 2.0});
        r.lo = std::min(std::pow(s, a.lo), std::pow(s, a.hi)), r.hi = std::max(std::pow(s, a.lo), std::pow(s, a.hi));
        r.exact = false;
        break;
      default:
        op = Pick({BinaryOp::kLess, BinaryOp::kGreaterEqual, BinaryOp::kEqual, BinaryOp::kNotEqual});
        s = Pick({0.0, 0.5, 1.0, -1.0});
        r.dt = DType::kBool, r.lo = 0, r.hi = 1;
        break;
    }
  } else if (a.dt == DType::kBool) {
    op = Pick({BinaryOp::kLogicalAnd, BinaryOp::kLogicalOr, BinaryOp::kEqual});
    s = Pick({0.0, 1.0});
    ts = Coin(0.5);
  } else {
    switch (RandInt(0, 6)) {
      case 0:
        op = BinaryOp::kAdd, s = Pick({3.0, -7.0, 100.0}), r.lo = a.lo + s, r.hi = a.hi + s;
        break;
      case 1:
        op = BinaryOp::kMul, s = Pick({3.0, -2.0, 1000.0});
        r.lo = std::min(a.lo * s, a.hi * s), r.hi = std::max(a.lo * s, a.hi * s);
        break;
      case 2:
        op = BinaryOp::kDiv, s = Pick({3.0, -2.0, 0.0}), r.lo = -a.Mag(), r.hi = a.Mag();
        break;
      case 3:
        ts = false, op = BinaryOp::kDiv, s = Pick({100.0, -7.0}), r.lo = -100, r.hi = 100;
        break;
      case 4:
        op = BinaryOp::kPow, s = Pick({0.0, 1.0, 2.0, 3.0, -1.0}), r.lo = DTypeMin(a.dt), r.hi = DTypeMax(a.dt);
        break;
      case 5:
        ts = false, op = BinaryOp::kSub, s = Pick({0.0, 5.0}), r.lo = s - a.hi, r.hi = s - a.lo;
        break;
      default:
        op = Pick({BinaryOp::kLess, BinaryOp::kEqual, BinaryOp::kGreaterEqual, BinaryOp::kLogicalAnd});
        s = Pick({0.0, 1.0, -2.0});
        r.dt = DType::kBool, r.lo = 0, r.hi = 1;
        break;
    }
  }
  if (IsFloat(r.dt) && (std::fabs(r.lo) > kMaxMag || std::fabs(r.hi) > kMaxMag)) return false;
  r.obj = ts ? k_->Binary(op, a.obj, s) : k_->Binary(op, s, a.obj);
  Push(r, ts ? "binary_ts" : "binary_st");
  return true;
}

bool RandomKernel::TrySelect() {
  Val* c = PickVal([](const Val& v) { return v.dt == DType::kBool; });
  if (!c) {
    // Make a condition from an exact value.
    Val* x = PickVal([](const Val& v) { return v.exact && v.dt != DType::kBool; });
    if (!x) return false;
    Val r = *x;
    r.dt = DType::kBool, r.lo = 0, r.hi = 1;
    r.obj = k_->Binary(BinaryOp::kGreater, x->obj, 0.0);
    Push(r, "binary_ts");
    c = &vals_.back();
  }
  Val cond = *c;
  Val* x = PickVal([&](const Val& v) {
    Shape o;
    return Broadcastable(cond.shape, v.shape, &o) && Numel(o) <= budget_;
  });
  if (!x) return false;
  Val a = *x;
  Shape ca;
  Broadcastable(cond.shape, a.shape, &ca);
  Shape out;
  Val* y = PickPartner(
      a,
      [&](const Val& v) {
        Shape o;
        return Broadcastable(ca, v.shape, &o) && Numel(o) <= budget_;
      },
      &out);
  if (!y) return false;
  Val b = *y;
  Broadcastable(ca, b.shape, &out);
  Val r = a;
  r.shape = out;
  r.lo = std::min(a.lo, b.lo), r.hi = std::max(a.hi, b.hi);
  r.exact = a.exact && b.exact;
  r.obj = k_->Select(cond.obj, a.obj, b.obj);
  Push(r, "select");
  return true;
}

bool RandomKernel::TryCast() {
  Val* x = PickVal([](const Val&) { return true; });
  if (!x) return false;
  Val a = *x;
  DType to = kAllDTypes[RandInt(0, kNumDTypes - 1)];
  Val r = a;
  r.dt = to;
  if (IsFloat(a.dt)) {
    if (IsFloat(to)) {
      if ((to == DType::kFloat16 || to == DType::kBFloat16) && !a.exact) r.terminal = true;
    } else {
      if (!a.exact) return false;
      if (to == DType::kBool)
        r.lo = 0, r.hi = 1;
      else
        r.lo = std::trunc(a.lo), r.hi = std::trunc(a.hi);
    }
  } else if (IsFloat(to)) {
    if (a.Mag() > kMaxMag) return false;
  } else if (to == DType::kBool) {
    r.lo = 0, r.hi = 1;
  }
  r.obj = k_->Cast(a.obj, to);
  Push(r, "cast");
  return true;
}

bool RandomKernel::TryReduce() {
  Val* x = PickVal([](const Val& v) { return !v.shape.empty(); });
  if (!x) return false;
  Val a = *x;
  if (IsFloat(a.dt) && a.lo < 0 && a.Mag() <= 16 && Coin(0.6)) {
    // Make the value positive so that a sum is well-conditioned.
    Val p = a;
    UnaryOp op = Pick({UnaryOp::kSigmoid, UnaryOp::kAbs, UnaryOp::kRelu});
    p.obj = k_->Unary(op, a.obj);
    p.lo = 0;
    p.hi = op == UnaryOp::kSigmoid ? 1 : a.Mag();
    p.exact = a.exact && op != UnaryOp::kSigmoid;
    Push(p, UnaryOpName(op));
    a = p;
  }
  const int64_t rank = static_cast<int64_t>(a.shape.size());
  Shape axes;
  if (Coin(0.4)) {
    axes = {rank - 1};
  } else {
    for (int64_t i = 0; i < rank; ++i)
      if (Coin(0.5)) axes.push_back(i);
    if (axes.empty()) axes.push_back(RandInt(0, rank - 1));
  }
  int64_t n = 1;
  for (int64_t ax : axes) n *= a.shape[ax];
  const bool keep = Coin(0.5);
  Shape out;
  for (int64_t i = 0; i < rank; ++i) {
    bool red = std::find(axes.begin(), axes.end(), i) != axes.end();
    if (!red)
      out.push_back(a.shape[i]);
    else if (keep)
      out.push_back(1);
  }
  if (Numel(out) > budget_) return false;
  std::vector<ReduceOp> ok = {ReduceOp::kMax, ReduceOp::kMin};
  // Rows longer than a tile sum in chunked stages: partials (each rounded
  // to f32 once) are combined in f64, a few ulp for non-negative values.
  const bool long_sum = IsFloat(a.dt) && a.lo >= 0 && n > 4097 && n <= 70000 && a.hi <= 4;
  if (IsFloat(a.dt)) {
    if ((a.lo >= 0 && n <= 4097 && n * a.hi <= kMaxMag) || long_sum)
      ok.insert(ok.end(), {ReduceOp::kSum, ReduceOp::kSum});
    if (a.lo >= 0.5 && a.hi <= 2 && n <= 8) ok.push_back(ReduceOp::kProd);
  } else if (a.dt != DType::kBool) {
    ok.insert(ok.end(), {ReduceOp::kSum, ReduceOp::kProd});
  }
  ReduceOp op = ok[static_cast<size_t>(RandInt(0, static_cast<int64_t>(ok.size()) - 1))];
  Val r = a;
  r.shape = out;
  switch (op) {
    case ReduceOp::kSum:
      if (IsFloat(a.dt))
        r.lo = a.lo * n, r.hi = a.hi * n, r.exact = false;
      else
        r.lo = DTypeMin(a.dt), r.hi = DTypeMax(a.dt);
      if (IsFloat(a.dt) && r.hi > kMaxMag) r.terminal = true;  // stored or averaged only
      break;
    case ReduceOp::kProd:
      if (IsFloat(a.dt))
        r.lo = std::pow(a.lo, n), r.hi = std::pow(a.hi, n), r.exact = false;
      else
        r.lo = DTypeMin(a.dt), r.hi = DTypeMax(a.dt);
      break;
    default:
      if (n == 0) {  // identity: +-inf / INT extremes
        r.lo = IsFloat(a.dt) ? -kInf : DTypeMin(a.dt);
        r.hi = IsFloat(a.dt) ? kInf : DTypeMax(a.dt);
        if (IsFloat(a.dt)) r.terminal = true;
      }
      break;
  }
  r.obj = k_->Reduce(op, a.obj, D(axes), keep);
  const bool chunked = n > 16384 && a.shape.size() > 0;  // rows the VM reduces in chunks
  Push(r, (std::string("reduce_") + ReduceOpName(op) + (chunked ? "_long" : "")).c_str());
  if (op == ReduceOp::kSum && IsFloat(a.dt) && n > 0 && (Coin(0.5) || r.terminal)) {
    Val m = vals_.back();
    m.obj = k_->Binary(BinaryOp::kDiv, m.obj, static_cast<double>(n));
    m.lo = a.lo, m.hi = a.hi;
    m.terminal = false;
    Push(m, "mean_div");
  }
  return true;
}

bool RandomKernel::TryBroadcast() {
  Val* x = PickVal([](const Val&) { return true; });
  if (!x) return false;
  Val a = *x;
  Shape t = a.shape;
  for (auto& d : t)
    if (d == 1 && Coin(0.5)) d = Pick<int64_t>({2, 3, 7, 16});
  if (t.size() < 6 && Coin(0.4)) t.insert(t.begin(), Pick<int64_t>({2, 3, 5}));
  if (t == a.shape || Numel(t) > budget_) return false;
  Val r = a;
  r.shape = t;
  r.obj = k_->Broadcast(a.obj, D(t));
  Push(r, "broadcast");
  return true;
}

bool RandomKernel::TryReshape() {
  Val* x = PickVal([](const Val&) { return true; });
  if (!x) return false;
  Val a = *x;
  Shape t = a.shape;
  const int64_t n = Numel(a.shape);
  switch (RandInt(0, 4)) {
    case 0:
      t = {n};
      break;
    case 1:
      if (t.size() < 2) return false;
      {
        size_t i = static_cast<size_t>(RandInt(0, static_cast<int64_t>(t.size()) - 2));
        t[i] *= t[i + 1];
        t.erase(t.begin() + static_cast<std::ptrdiff_t>(i) + 1);
      }
      break;
    case 2: {
      if (t.empty() || t.size() >= 8) return false;
      size_t i = static_cast<size_t>(RandInt(0, static_cast<int64_t>(t.size()) - 1));
      int64_t f = Pick<int64_t>({2, 3, 5, 7, 1023});
      if (t[i] == 0 || t[i] % f != 0) return false;
      t[i] /= f;
      t.insert(t.begin() + static_cast<std::ptrdiff_t>(i), f);
      break;
    }
    case 3:
      if (t.size() >= 8) return false;
      t.insert(t.begin() + RandInt(0, static_cast<int64_t>(t.size())), 1);
      break;
    default: {
      auto it = std::find(t.begin(), t.end(), 1);
      if (it == t.end()) return false;
      t.erase(it);
      break;
    }
  }
  Shape arg = t;
  bool any_zero = std::find(t.begin(), t.end(), 0) != t.end();
  if (!t.empty() && !any_zero && Coin(0.3))
    arg[static_cast<size_t>(RandInt(0, static_cast<int64_t>(t.size()) - 1))] = -1;
  Val r = a;
  r.shape = t;
  r.obj = k_->Reshape(a.obj, D(arg));
  Push(r, "reshape");
  return true;
}

bool RandomKernel::TryTranspose() {
  Val* x = PickVal([](const Val& v) { return v.shape.size() >= 2; });
  if (!x) return false;
  Val a = *x;
  Shape perm(a.shape.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng_);
  Val r = a;
  for (size_t i = 0; i < perm.size(); ++i) r.shape[i] = a.shape[perm[i]];
  r.obj = k_->Transpose(a.obj, D(perm));
  Push(r, "transpose");
  return true;
}

bool RandomKernel::TryCopy() {
  Val* x = PickVal([](const Val&) { return true; });
  if (!x) return false;
  Val r = *x;
  r.obj = k_->Copy(r.obj);
  Push(r, "copy");
  return true;
}

Val RandomKernel::NonNegative(Val a) {
  if (a.lo >= 0) return a;
  Val p = a;
  p.obj = k_->Unary(UnaryOp::kAbs, a.obj);
  p.lo = 0;
  p.hi = a.Mag();
  Push(p, "abs");
  return p;
}

bool RandomKernel::TryMatMul() {
  // a: [..., M, K] ([..., K, M] with trans_a), f32, K <= 16.
  const bool ta = Coin(0.25), tb = Coin(0.3);
  Val* x = PickVal([&](const Val& v) {
    const size_t r = v.shape.size();
    if (v.dt != DType::kFloat32 || r < 2 || v.Mag() > 64) return false;
    const int64_t k = ta ? v.shape[r - 2] : v.shape[r - 1];
    return k >= 1 && k <= 16;
  });
  if (!x) return false;
  Val a = NonNegative(*x);
  const size_t r = a.shape.size();
  const int64_t M = ta ? a.shape[r - 1] : a.shape[r - 2], K = ta ? a.shape[r - 2] : a.shape[r - 1];
  const int64_t N = Pick<int64_t>({1, 3, 7, 16, 33, 64, 130});
  // b: [K, N] ([N, K] with trans_b), or with a's batch dims (some 1).
  Shape b_shape;
  if (r > 2 && Coin(0.5))
    for (size_t i = 0; i + 2 < r; ++i) b_shape.push_back(Coin(0.3) ? 1 : a.shape[i]);
  b_shape.push_back(tb ? N : K);
  b_shape.push_back(tb ? K : N);
  Shape out(a.shape.begin(), a.shape.end() - 2);
  out.push_back(M);
  out.push_back(N);
  if (Numel(out) > budget_ || SafeNumel(b_shape) > budget_) return false;
  Val b = NonNegative(AddInput(b_shape, DType::kFloat32));
  const double hi = static_cast<double>(K) * a.hi * b.hi;
  if (hi > kMaxMag) return false;
  Val m;
  m.dt = DType::kFloat32;
  m.shape = out;
  m.lo = 0;
  m.hi = hi;
  m.exact = false;
  m.obj = k_->MatMul(a.obj, b.obj, ta, tb);
  Push(m, "matmul");
  return true;
}

bool RandomKernel::TryAny() {
  Val* x = PickVal([](const Val& v) { return v.exact; });
  if (!x) return false;
  Val r = *x;
  r.dt = DType::kBool, r.lo = 0, r.hi = 1, r.shape = {};
  r.obj = k_->ElemAny(x->obj);
  Push(r, "elem_any");
  return true;
}

void RandomKernel::Build() {
  dynamic_ = Coin(0.5);
  k_ = std::make_unique<Kernel>(dynamic_ ? KernelType::kDynamic : KernelType::kStatic);
  double u = U();
  budget_ = u < 0.3 ? 4096 : u < 0.7 ? 40000 : 300000;
  u = U();
  main_ = u < 0.6 ? DType::kFloat32 : u < 0.8 ? DType::kFloat16 : DType::kBFloat16;
  const Shape base = RandomShape(budget_);
  vals_.push_back(AddInput(base, main_));
  int extra = static_cast<int>(RandInt(0, 2));
  for (int i = 0; i < extra; ++i) {
    double w = U();
    DType dt = w < 0.7 ? main_ : w < 0.8 ? DType::kInt32 : w < 0.9 ? DType::kInt8 : DType::kBool;
    w = U();
    Shape s = w < 0.5 ? base : w < 0.85 ? BroadcastVariant(base) : Shape{};
    if (SafeNumel(s) > budget_) s = base;  // a variant of a zero-size base may not be empty
    vals_.push_back(AddInput(s, dt));
  }
  const int n_ops = static_cast<int>(RandInt(1, 12));
  using Try = bool (RandomKernel::*)();
  struct Choice {
    Try f;
    int weight;
  };
  const Choice choices[] = {
      {&RandomKernel::TryUnary, 20},    {&RandomKernel::TryBinary, 20}, {&RandomKernel::TryScalar, 12},
      {&RandomKernel::TryReduce, 12},   {&RandomKernel::TryCast, 8},    {&RandomKernel::TrySelect, 5},
      {&RandomKernel::TryBroadcast, 4}, {&RandomKernel::TryReshape, 4}, {&RandomKernel::TryTranspose, 4},
      {&RandomKernel::TryCopy, 1},      {&RandomKernel::TryAny, 2},     {&RandomKernel::TryMatMul, 4},
  };
  int total = 0;
  for (const auto& c : choices) total += c.weight;
  while (ops_ < n_ops) {
    bool done = false;
    for (int attempt = 0; attempt < 30 && !done; ++attempt) {
      int w = static_cast<int>(RandInt(0, total - 1));
      for (const auto& c : choices) {
        if (w < c.weight) {
          done = (this->*c.f)();
          break;
        }
        w -= c.weight;
      }
    }
    if (!done) break;
  }
  // Outputs: the last value, sometimes another one, sometimes a padded store.
  k_->Store(nullptr, vals_.back().obj);
  ++op_counts_["store"];
  if (vals_.size() > 1 && Coin(0.4)) {
    const Val& v = vals_[static_cast<size_t>(RandInt(0, static_cast<int64_t>(vals_.size()) - 2))];
    k_->Store(nullptr, v.obj);
    ++op_counts_["store"];
  }
  if (Coin(0.15)) {
    const Val& v = vals_[static_cast<size_t>(RandInt(0, static_cast<int64_t>(vals_.size()) - 1))];
    Shape padded = v.shape, before(v.shape.size());
    for (size_t i = 0; i < padded.size(); ++i) {
      int64_t extra_dim = RandInt(0, 3);
      before[i] = RandInt(0, extra_dim);
      padded[i] += extra_dim;
    }
    if (Numel(padded) <= budget_ + 4096) {
      k_->PadStore(nullptr, v.obj, D(padded), D(before), Pick({0.0, -1.5, 2.0}));
      ++op_counts_["pad_store"];
    }
  }
}

TEST(RandomKernels, MatchReference) {
  const uint64_t base = EnvU64("DVM_SEED", 20241125);
  const uint64_t only = EnvU64("DVM_KERNEL_SEED", 0);
  const int count = only ? 1 : static_cast<int>(EnvU64("DVM_RANDOM_KERNELS", 2000));
  const bool verbose = EnvU64("DVM_RANDOM_VERBOSE", 0) != 0;
  int failures = 0, printed = 0;
  std::map<std::string, int> totals;
  int64_t elements = 0;
  double slowest_secs = 0;
  uint64_t slowest_seed = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t native0 = dvm::vm::NativeProgramsCompiled();
  for (int i = 0; i < count; ++i) {
    const uint64_t seed = only ? only : SplitMix64(SplitMix64(base) + static_cast<uint64_t>(i));
    std::string problem;
    if (verbose) {
      std::printf("[ random   ] kernel %d seed %llu\n", i, static_cast<unsigned long long>(seed));
      std::fflush(stdout);
    }
    const auto k0 = std::chrono::steady_clock::now();
    RandomKernel rk(seed);
    try {
      rk.Build();
      for (const auto& t : rk.inputs()) elements += static_cast<int64_t>(t.data.size());
      auto res = CheckKernel(rk.kernel(), rk.inputs());
      if (!res) problem = res.message();
      if (only) std::printf("%s\n%s\n", rk.kernel().Dump().c_str(), rk.kernel().Das().c_str());
    } catch (const std::exception& e) {
      problem = std::string("exception: ") + e.what() + "\n" + rk.kernel().Dump();
    }
    const double ksecs = std::chrono::duration<double>(std::chrono::steady_clock::now() - k0).count();
    if (ksecs > slowest_secs) slowest_secs = ksecs, slowest_seed = seed;
    for (const auto& [name, n] : rk.op_counts()) totals[name] += n;
    if (!problem.empty()) {
      ++failures;
      if (printed++ < 10)
        ADD_FAILURE() << "random kernel " << i << " failed; reproduce with DVM_KERNEL_SEED=" << seed
                      << " (base DVM_SEED=" << base << ")\n"
                      << problem;
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string hist;
  for (const auto& [name, n] : totals) hist += " " + name + "=" + std::to_string(n);
  std::printf(
      "[ random   ] %d kernels, %d failed, %.1f s (slowest %.3f s: seed %llu), %lld input elements, %lld programs "
      "compiled to native code; ops:%s\n",
      count, failures, secs, slowest_secs, static_cast<unsigned long long>(slowest_seed),
      static_cast<long long>(elements), static_cast<long long>(dvm::vm::NativeProgramsCompiled() - native0),
      hist.c_str());
  EXPECT_EQ(failures, 0) << failures << " of " << count << " random kernels failed";
}

// The same check on every SIMD target this machine runs, each forced in
// turn (kernels generated after the switch take that target's handlers):
// DVM_RANDOM_TARGET_KERNELS per target (default 200), other seeds.
TEST(RandomKernels, MatchReferenceOnEveryTarget) {
  const uint64_t base = EnvU64("DVM_SEED", 20241125) ^ 0x54475453;
  const int count = static_cast<int>(EnvU64("DVM_RANDOM_TARGET_KERNELS", 200));
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    int failures = 0;
    for (int i = 0; i < count; ++i) {
      const uint64_t seed = SplitMix64(SplitMix64(base) + static_cast<uint64_t>(i));
      std::string problem;
      RandomKernel rk(seed);
      try {
        rk.Build();
        auto res = CheckKernel(rk.kernel(), rk.inputs());
        if (!res) problem = res.message();
      } catch (const std::exception& e) {
        problem = std::string("exception: ") + e.what() + "\n" + rk.kernel().Dump();
      }
      if (!problem.empty() && failures++ < 3)
        ADD_FAILURE() << "target " << hwy::TargetName(target) << ": random kernel " << i
                      << " failed; reproduce with DVM_KERNEL_SEED=" << seed << " on that target\n"
                      << problem;
    }
    std::printf("[ random   ] %s: %d kernels, %d failed\n", hwy::TargetName(target), count, failures);
  }
  hwy::SetSupportedTargetsForTest(0);
}

// Groups of 2 to 6 random kernels (a kernel may appear twice) launched as
// one KernelStack equal the same launches one by one, bit for bit, with 1
// and 2 threads. Each group is checked twice: the second launch reuses the
// cached stacked program.
TEST(RandomKernels, StackedEqualsSeparate) {
  const uint64_t base = EnvU64("DVM_SEED", 20241125) ^ 0x5354414b;
  const int groups = static_cast<int>(EnvU64("DVM_RANDOM_STACKS", 150));
  int failures = 0, kernels = 0;
  for (int g = 0; g < groups; ++g) {
    const uint64_t seed = SplitMix64(SplitMix64(base) + static_cast<uint64_t>(g));
    Rng rng(seed);
    const int n = std::uniform_int_distribution<int>(2, 6)(rng);
    std::vector<std::unique_ptr<RandomKernel>> ks;
    std::vector<size_t> order;  // the launches: indices into ks
    std::string problem;
    try {
      for (int i = 0; i < n; ++i) {
        if (i > 0 && std::uniform_int_distribution<int>(0, 4)(rng) == 0) {
          order.push_back(order.back());  // the same kernel again
          continue;
        }
        ks.push_back(std::make_unique<RandomKernel>(SplitMix64(seed + static_cast<uint64_t>(i) + 1)));
        ks.back()->Build();
        order.push_back(ks.size() - 1);
      }
      kernels += static_cast<int>(order.size());
      for (int threads : {1, 2}) {
        SetNumThreads(threads);
        std::vector<LaunchBuffers> sep, stk;
        for (size_t i : order) {
          sep.emplace_back(ks[i]->kernel(), ks[i]->inputs());
          stk.emplace_back(ks[i]->kernel(), ks[i]->inputs());
        }
        for (size_t j = 0; j < order.size(); ++j) ks[order[j]]->kernel().Launch(sep[j].in_args, sep[j].out_args);
        KernelStack stack;
        for (int rep = 0; rep < 2 && problem.empty(); ++rep) {
          stack.Clear();
          for (size_t j = 0; j < order.size(); ++j) stack.Add(ks[order[j]]->kernel(), stk[j].in_args, stk[j].out_args);
          stack.Launch();
          for (size_t j = 0; j < order.size() && problem.empty(); ++j)
            for (size_t o = 0; o < sep[j].out.size(); ++o)
              if (sep[j].out[o] != stk[j].out[o]) {
                problem = "launch " + std::to_string(j) + " output " + std::to_string(o) + " differs (" +
                          std::to_string(threads) + " threads, rep " + std::to_string(rep) + ")\n" +
                          ks[order[j]]->kernel().Dump();
                break;
              }
        }
      }
    } catch (const std::exception& e) {
      problem = std::string("exception: ") + e.what();
    }
    SetNumThreads(2);
    if (!problem.empty() && failures++ < 5)
      ADD_FAILURE() << "stacked group " << g << " (seed " << seed << ", base DVM_SEED " << EnvU64("DVM_SEED", 20241125)
                    << "): " << problem;
  }
  std::printf("[ random   ] %d stacked groups, %d launches, %d failed\n", groups, kernels, failures);
  EXPECT_EQ(failures, 0);
}

}  // namespace
}  // namespace dvm::test
