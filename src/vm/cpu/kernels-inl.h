// Per-target SIMD helpers that the VM's kernel files share (kernels.cc,
// kernels_chain.cc, kernels_steps*.cc): element functions, division by one
// value through its reciprocal, masked loads and stores of a vector's first
// lanes. Each kernel file compiles them for every Highway target it is
// built for (foreach_target re-includes the file, and this header with it).
// The kernels are spread over several files so that a build compiles them in
// parallel: as one file, its sanitizer build took 17.5 min and 7.5 GB of
// memory on one core.

// Per-target include guard (Highway's convention for -inl.h headers).
// clang-format off
#if defined(DVM_VM_CPU_KERNELS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef DVM_VM_CPU_KERNELS_INL_H_
#undef DVM_VM_CPU_KERNELS_INL_H_
#else
#define DVM_VM_CPU_KERNELS_INL_H_
#endif
// clang-format on

#include <hwy/contrib/math/math-inl.h>
#include <hwy/highway.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "ir/dtype.h"
#include "vm/cpu/kernels.h"

#ifndef DVM_LIGHT_UNARY
// DVM_LIGHT_UNARY: the ones a few instructions long, which fused programs
// also run (bc::ProgramOp). The others stay single passes or pairs: in the
// first, switch-dispatched version of programs, exp or tanh among the
// cases spilled the whole strip to the stack; the threaded steps were not
// measured with them.
#define DVM_LIGHT_UNARY(X)                                               \
  X(SQRT, SqrtF, hn::Sqrt(x))                                            \
  X(RSQRT, RsqrtF, hn::Div(hn::Set(d, 1.0f), hn::Sqrt(x)))               \
  X(ABS, AbsF, hn::Abs(x))                                               \
  X(NEG, NegF, hn::Neg(x))                                               \
  X(RECIP, RecipF, hn::Div(hn::Set(d, 1.0f), x))                         \
  X(RELU, ReluF, hn::IfThenElse(hn::Lt(x, hn::Zero(d)), hn::Zero(d), x)) \
  X(FLOOR, FloorF, hn::Floor(x))                                         \
  X(CEIL, CeilF, hn::Ceil(x))                                            \
  X(ROUND, RoundF, hn::Round(x))
#endif

HWY_BEFORE_NAMESPACE();
namespace dvm::vm::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using DI = hn::ScalableTag<int32_t>;
using VF = hn::Vec<DF>;
using VI = hn::Vec<DI>;

// ---- element functions -----------------------------------------------------

// Makes a product opaque to the compiler, so that it cannot contract it with
// a following addition into an FMA (GCC does under -ffp-contract=fast).
HWY_INLINE VF Opaque(DF d, VF v) {
#if HWY_ARCH_X86 && HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128
  asm("" : "+v"(v.raw));
  return v;
#else
  HWY_ALIGN float buf[hn::MaxLanes(d)];
  hn::Store(v, d, buf);
  asm volatile("" : : "r"(buf) : "memory");
  return hn::Load(d, buf);
#endif
}

// Highway's vector math is specified on finite inputs in its documented
// ranges; these wrappers give IEEE results outside them (inf, NaN, 0).
// exp. Highway's Exp (range reduction in two multiplies by 2^(q/2), which
// its documented range needs) with IEEE results outside it, for the rare
// vectors with a lane outside [-87, 88] (and NaN).
inline HWY_NOINLINE VF ExpWide(DF d, VF x) {
  VF r = hn::Exp(d, x);
  r = hn::IfThenElse(hn::Gt(x, hn::Set(d, 88.72283935546875f)), hn::Set(d, HUGE_VALF), r);
  r = hn::IfThenElseZero(hn::Ge(x, hn::Set(d, -103.97208f)), r);
  return hn::IfThenElse(hn::IsNaN(x), x, r);
}
// Written here rather than taken from Highway: softmax and sigmoid are
// bound by it, and on [-87, 88] the result is a normal float, so 2^k can go
// straight into the exponent bits (Cephes' expf polynomial, FMA reduction):
// 0.62 vs 0.99 ns per element for Highway's Exp with the IEEE fixes, measured
// here (AVX2, one thread); max error 1.23 ulp on a grid over [-87.3, 88.7]
// (KernelsAccuracy pins <= 2). A causal-masked softmax [12, 128, 128]:
// 1.52 -> 0.93 ns per element (one thread) with lanes below -103.97 kept
// on this path.
// ExpInRange is the kernel, for x known to lie in [-87, 88] (TanhV's
// argument); ExpV checks the range and handles the rest.
inline VF ExpInRange(DF d, VF x) {
  // k = x / ln 2 rounded to nearest even by adding 1.5 * 2^23 (exact for
  // |x / ln 2| < 2^22, the same k as Round): its low bits are then k as an
  // integer, without a conversion and its out-of-range fix-ups.
  const VF magic = hn::Set(d, 12582912.0f);
  const VF kb = hn::Add(Opaque(d, hn::Mul(x, hn::Set(d, 1.44269504088896341f))), magic);
  const VF k = hn::Sub(kb, magic);
  VF r = hn::NegMulAdd(k, hn::Set(d, 0.693359375f), x);
  r = hn::NegMulAdd(k, hn::Set(d, -2.12194440e-4f), r);
  VF p = hn::Set(d, 1.9875691500e-4f);
  p = hn::MulAdd(p, r, hn::Set(d, 1.3981999507e-3f));
  p = hn::MulAdd(p, r, hn::Set(d, 8.3334519073e-3f));
  p = hn::MulAdd(p, r, hn::Set(d, 4.1665795894e-2f));
  p = hn::MulAdd(p, r, hn::Set(d, 1.6666665459e-1f));
  p = hn::MulAdd(p, r, hn::Set(d, 5.0000001201e-1f));
  p = hn::MulAdd(hn::Mul(p, r), r, hn::Add(r, hn::Set(d, 1.0f)));
  const DI di;
  const VI ki = hn::Sub(hn::BitCast(di, kb), hn::BitCast(di, magic));
  return hn::BitCast(d, hn::Add(hn::BitCast(di, p), hn::ShiftLeft<23>(ki)));
}
inline VF ExpV(DF d, VF x) {
  const auto ok = hn::And(hn::Ge(x, hn::Set(d, -87.0f)), hn::Le(x, hn::Set(d, 88.0f)));
  const VF y = ExpInRange(d, x);
  if (HWY_LIKELY(hn::AllTrue(d, ok))) return y;
  // Lanes below -103.97208 are 0 in ExpWide too: a masked softmax (causal
  // attention adds -1e9 or -inf) stays off the slow path.
  const auto zero = hn::Lt(x, hn::Set(d, -103.97208f));
  if (hn::AllTrue(d, hn::Or(ok, zero))) return hn::IfThenZeroElse(zero, y);
  return hn::IfThenElse(ok, y, ExpWide(d, x));
}
inline VF LogV(DF d, VF x) {
  VF r = hn::Log(d, x);
  r = hn::IfThenElse(hn::Eq(x, hn::Zero(d)), hn::Set(d, -HUGE_VALF), r);
  r = hn::IfThenElse(hn::Eq(x, hn::Set(d, HUGE_VALF)), x, r);
  const VF nan = hn::Set(d, std::numeric_limits<float>::quiet_NaN());
  r = hn::IfThenElse(hn::Lt(x, hn::Zero(d)), nan, r);
  return hn::IfThenElse(hn::IsNaN(x), x, r);
}
// tanh as a 13/6-degree rational function of x on [-9, 9] (the
// coefficients of Eigen's generic_fast_tanh_float), the result clamped to
// [-1, 1] (it reaches 1 + 2 ulp near 9) and x itself below |x| = 4e-4
// (where the quotient loses digits as x^2 underflows); tanh is 1 in f32 from
// 9.02 on. One division and ten FMAs, against Cephes' form on an exp
// (1 - 2 / (exp(2|x|) + 1), an odd polynomial below 0.625: about twice the
// instructions), which bound GELU. Measured against tanh in double on every
// third float in [2^-126, 12]: 92% exact, max 5 ulp (15 inputs, near 3.7),
// 2.7% at 2-5 ulp; Cephes' form was within 4. KernelsAccuracy pins <= 5.
inline VF TanhV(DF d, VF x) {
  const VF one = hn::Set(d, 1.0f);
  const VF xc = hn::Min(hn::Max(x, hn::Set(d, -9.0f)), hn::Set(d, 9.0f));
  const VF x2 = hn::Mul(xc, xc);
  VF p = hn::MulAdd(x2, hn::Set(d, -2.76076847742355e-16f), hn::Set(d, 2.00018790482477e-13f));
  p = hn::MulAdd(x2, p, hn::Set(d, -8.60467152213735e-11f));
  p = hn::MulAdd(x2, p, hn::Set(d, 5.12229709037114e-08f));
  p = hn::MulAdd(x2, p, hn::Set(d, 1.48572235717979e-05f));
  p = hn::MulAdd(x2, p, hn::Set(d, 6.37261928875436e-04f));
  p = hn::MulAdd(x2, p, hn::Set(d, 4.89352455891786e-03f));
  p = hn::Mul(xc, p);
  VF q = hn::MulAdd(x2, hn::Set(d, 1.19825839466702e-06f), hn::Set(d, 1.18534705686654e-04f));
  q = hn::MulAdd(x2, q, hn::Set(d, 2.26843463243900e-03f));
  q = hn::MulAdd(x2, q, hn::Set(d, 4.89352518554385e-03f));
  VF r = hn::Min(hn::Max(hn::Div(p, q), hn::Neg(one)), one);
  r = hn::IfThenElse(hn::Lt(hn::Abs(x), hn::Set(d, 4e-4f)), x, r);
  return hn::IfThenElse(hn::IsNaN(x), x, r);
}
// sin/cos: Highway's range reduction holds for |x| <= 39000; other lanes
// (rare) take the scalar library path.
template <bool kSin>
inline VF SinCosV(DF d, VF x) {
  VF r = kSin ? hn::Sin(d, x) : hn::Cos(d, x);
  const auto bad = hn::Not(hn::Le(hn::Abs(x), hn::Set(d, 39000.0f)));
  if (HWY_UNLIKELY(!hn::AllFalse(d, bad))) {
    HWY_ALIGN float in[hn::MaxLanes(d)], out[hn::MaxLanes(d)];
    hn::Store(x, d, in);
    hn::Store(r, d, out);
    for (size_t i = 0; i < hn::Lanes(d); ++i)
      if (!(std::fabs(in[i]) <= 39000.0f)) out[i] = kSin ? std::sin(in[i]) : std::cos(in[i]);
    r = hn::Load(d, out);
  }
  return r;
}

inline VF ErfV(DF d, VF x) {
  // Rational approximation on [-4, 4] (as in Eigen / XLA); |error| < 5e-7
  // (tests/kernels_test.cc measures it against std::erf).
  const VF x_in = x;
  x = hn::Min(hn::Max(x, hn::Set(d, -4.0f)), hn::Set(d, 4.0f));
  const VF x2 = hn::Mul(x, x);
  VF p = hn::Set(d, -2.72614225801306e-10f);
  p = hn::MulAdd(x2, p, hn::Set(d, 2.77068142495902e-08f));
  p = hn::MulAdd(x2, p, hn::Set(d, -2.10102402082508e-06f));
  p = hn::MulAdd(x2, p, hn::Set(d, -5.69250639462346e-05f));
  p = hn::MulAdd(x2, p, hn::Set(d, -7.34990630326855e-04f));
  p = hn::MulAdd(x2, p, hn::Set(d, -2.95459980854025e-03f));
  p = hn::MulAdd(x2, p, hn::Set(d, -1.60960333262415e-02f));
  p = hn::Mul(x, p);
  VF q = hn::Set(d, -1.45660718464996e-05f);
  q = hn::MulAdd(x2, q, hn::Set(d, -2.13374055278905e-04f));
  q = hn::MulAdd(x2, q, hn::Set(d, -1.68282697438203e-03f));
  q = hn::MulAdd(x2, q, hn::Set(d, -7.37332916720468e-03f));
  q = hn::MulAdd(x2, q, hn::Set(d, -1.42647390514189e-02f));
  const VF one = hn::Set(d, 1.0f);
  const VF r = hn::Min(hn::Max(hn::Div(p, q), hn::Neg(one)), one);  // |erf| <= 1
  return hn::IfThenElse(hn::IsNaN(x_in), x_in, r);
}

// GELU, tanh form: the MUL/ADD/TANH sequence codegen fuses into one GELU,
// with the same roundings in the same order (no contraction into FMA: each
// step is rounded, as the separate instructions round it).
inline VF GeluTanhV(DF d, VF x) {
  const VF x3 = hn::Mul(hn::Mul(x, x), x);
  const VF u = hn::Add(x, Opaque(d, hn::Mul(x3, hn::Set(d, bc::kGeluA))));
  const VF th = TanhV(d, hn::Mul(u, hn::Set(d, bc::kGeluC)));
  return hn::Mul(hn::Mul(x, hn::Set(d, 0.5f)), hn::Add(th, hn::Set(d, 1.0f)));
}

// NaN-propagating max/min, as torch.maximum.
inline VF MaxP(DF d, VF a, VF b) {
  VF m = hn::Max(a, b);
  m = hn::IfThenElse(hn::IsNaN(b), b, m);
  return hn::IfThenElse(hn::IsNaN(a), a, m);
}
inline VF MinP(DF d, VF a, VF b) {
  VF m = hn::Min(a, b);
  m = hn::IfThenElse(hn::IsNaN(b), b, m);
  return hn::IfThenElse(hn::IsNaN(a), a, m);
}

inline VI Bool(DI di, hn::Mask<DI> m) { return hn::IfThenElseZero(m, hn::Set(di, 1)); }
inline VI BoolF(DF df, hn::Mask<DF> m) {
  const DI di;
  return Bool(di, hn::RebindMask(di, m));
}
inline VI Wrap8(VI v) { return hn::ShiftRight<24>(hn::ShiftLeft<24>(v)); }

// Rounds f32 lanes to bf16 precision (nearest even), keeping them in f32.
inline VF RoundBF16(DF df, VF v) {
  const DI di;
  VI u = hn::BitCast(di, v);
  VI lsb = hn::And(hn::ShiftRight<16>(u), hn::Set(di, 1));
  VI r = hn::Add(u, hn::Add(hn::Set(di, 0x7fff), lsb));
  r = hn::And(r, hn::Set(di, static_cast<int32_t>(0xffff0000u)));
  VI nan = hn::Or(hn::And(u, hn::Set(di, static_cast<int32_t>(0xffff0000u))), hn::Set(di, 0x400000));
  return hn::BitCast(df, hn::IfThenElse(hn::RebindMask(di, hn::IsNaN(v)), nan, r));
}

// f16 conversions in hardware (F16C, AVX2 and up). Highway 1.0's
// emulation for older targets truncates the mantissa instead of rounding to
// nearest even (RandomKernels.MatchReferenceOnEveryTarget: f16 results one
// ulp low on SSE4, SSSE3 and scalar), so those convert lane by lane with
// ir/dtype.h's F32ToF16 / F16ToF32.
#if HWY_TARGET <= HWY_AVX2 && !defined(HWY_DISABLE_F16C)
constexpr bool kNativeF16 = true;
#else
constexpr bool kNativeF16 = false;
#endif

inline VF RoundF16(DF df, VF v) {
  if constexpr (kNativeF16) {
    const hn::Rebind<hwy::float16_t, DF> dh;
    return hn::PromoteTo(df, hn::DemoteTo(dh, v));
  } else {
    HWY_ALIGN float lanes[hn::MaxLanes(df)];
    hn::Store(v, df, lanes);
    for (size_t i = 0; i < hn::Lanes(df); ++i) lanes[i] = F16ToF32(F32ToF16(lanes[i]));
    return hn::Load(df, lanes);
  }
}

// Division by one value y for many x (a row value, a constant). A divide is
// one instruction, but on Zen 4 it holds the divider for ~6 cycles per
// vector (a [64, 32768] softmax's last pass: 220 of ~1000 us at one thread,
// where hand-fused code multiplies by the reciprocal). Where the operands
// are in range, the quotient comes from the reciprocal r = RN(1 / y) and one
// correction (Markstein): q0 = RN(x r), e = x - q0 y (exact, by FMA),
// q = RN(q0 + e r) is the correctly rounded x / y, the bits of the divide
// (KernelsFused.RowDivisionEqualsDivide and ConstantDivisionEqualsDivide
// check every f32 significand of x against a set of divisors). It holds
// when nothing underflows or overflows: |y| in [2^-20, 2^20] (`ok`, checked
// once per divisor) and |x| in [2^-100, 2^100) (InRange: checked per four
// vectors, one unsigned compare of the largest biased magnitude); zeros,
// NaN, infinities and other magnitudes take the divide. The correction
// needs fused multiply-adds: targets without them (SSE4 and older, where
// MulAdd rounds twice) always divide.
struct UniformDivisor {
  VF y, rv, ny;
  bool ok;
  HWY_INLINE explicit UniformDivisor(float yr) : UniformDivisor(yr, 1.0f / yr, ReciprocalDivisionExact(yr)) {}
  HWY_INLINE UniformDivisor(float yr, float recip, bool in_range) {
    const DF d;
    ok = in_range && HWY_NATIVE_FMA;
    y = hn::Set(d, yr), rv = hn::Set(d, recip), ny = hn::Set(d, -yr);
  }
  HWY_INLINE VF Quotient(VF x) const {
    const VF q0 = hn::Mul(x, rv);
    return hn::MulAdd(hn::MulAdd(ny, q0, x), rv, q0);
  }
  // Whether Quotient is exact for every lane of x0..x3.
  static HWY_INLINE bool InRange(VF x0, VF x1, VF x2, VF x3) {
    const hn::RebindToUnsigned<DF> du;
    const auto abs_mask = hn::Set(du, 0x7fffffffu), lo = hn::Set(du, 0x0d800000u), span = hn::Set(du, 0x64000000u);
    auto biased = [&](VF x) HWY_ATTR { return hn::Sub(hn::And(hn::BitCast(du, x), abs_mask), lo); };
    const auto t = hn::Max(hn::Max(biased(x0), biased(x1)), hn::Max(biased(x2), biased(x3)));
    return hn::AllTrue(du, hn::Lt(t, span));
  }
  // The quotients of x0..x3 into xj: by reciprocal where in range.
  HWY_INLINE void Divide4(VF& x0, VF& x1, VF& x2, VF& x3) const {
    if (HWY_LIKELY(ok && InRange(x0, x1, x2, x3))) {
      x0 = Quotient(x0), x1 = Quotient(x1), x2 = Quotient(x2), x3 = Quotient(x3);
    } else {
      x0 = hn::Div(x0, y), x1 = hn::Div(x1, y), x2 = hn::Div(x2, y), x3 = hn::Div(x3, y);
    }
  }
  // o[j] = a[j] / y for j in [i, e), four vectors at a time; returns where
  // it stopped (fewer than four vectors left).
  HWY_INLINE int64_t DivideRun(const float* a, float* o, int64_t i, int64_t e) const {
    const DF d;
    const int64_t L = hn::Lanes(d);
    for (; i + 4 * L <= e; i += 4 * L) {
      VF x0 = hn::LoadU(d, a + i), x1 = hn::LoadU(d, a + i + L);
      VF x2 = hn::LoadU(d, a + i + 2 * L), x3 = hn::LoadU(d, a + i + 3 * L);
      Divide4(x0, x1, x2, x3);
      hn::StoreU(x0, d, o + i), hn::StoreU(x1, d, o + i + L);
      hn::StoreU(x2, d, o + i + 2 * L), hn::StoreU(x3, d, o + i + 3 * L);
    }
    return i;
  }
};

// Masked loads and stores that touch no lane outside the mask: AVX2's
// maskload/maskstore, AVX-512's masked moves (older targets' masked loads
// may read the whole vector).
constexpr bool kMaskedMoves = HWY_TARGET <= HWY_AVX2;

// The first n lanes at p (0 < n < Lanes(d)), the others `fill`, reading
// nothing past p + n; and v's first n lanes stored to p, writing nothing
// past p + n (a row's tail: the next row may belong to another thread).
// Masked moves where kMaskedMoves, else a copy through a buffer. The copies
// called memmove for every row's tail: softmax over rows of 8 spent ~10% of
// its time there.
template <class D>
HWY_INLINE hn::Vec<D> LoadPart(D d, const hn::TFromD<D>* p, size_t n, hn::Vec<D> fill) {
  if constexpr (kMaskedMoves) {
    const auto m = hn::FirstN(d, n);
    return hn::IfThenElse(m, hn::MaskedLoad(m, d, p), fill);
  } else {
    HWY_ALIGN hn::TFromD<D> buf[hn::MaxLanes(d)];
    hn::Store(fill, d, buf);
    std::memcpy(buf, p, n * sizeof(*p));
    return hn::Load(d, buf);
  }
}
template <class D>
HWY_INLINE void StorePart(D d, hn::Vec<D> v, hn::TFromD<D>* p, size_t n) {
  if constexpr (kMaskedMoves) {
    hn::BlendedStore(v, hn::FirstN(d, n), d, p);
  } else {
    HWY_ALIGN hn::TFromD<D> buf[hn::MaxLanes(d)];
    hn::Store(v, d, buf);
    std::memcpy(p, buf, n * sizeof(*p));
  }
}

// The op of a fused pair (0 add, 1 sub, 2 mul, 3 div).
template <int kOp>
HWY_INLINE VF ChainOp(VF x, VF y) {
  if constexpr (kOp == 0)
    return hn::Add(x, y);
  else if constexpr (kOp == 1)
    return hn::Sub(x, y);
  else if constexpr (kOp == 2)
    return hn::Mul(x, y);
  else
    return hn::Div(x, y);
}

}  // namespace dvm::vm::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
