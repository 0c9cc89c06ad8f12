// SIMD micro-kernels of the VM, compiled for several ISAs with Highway and
// chosen at run time (HWY_DYNAMIC_DISPATCH). Transcendentals come from
// Highway's vector math; erf, which it lacks, is a rational approximation
// (tests/kernels_test.cc bounds its error against std::erf). pow and integer
// division have no vector instruction and run as scalar loops.
#include "vm/cpu/kernels.h"

#include <algorithm>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "ir/dtype.h"

#ifndef DVM_KERNELS_NATIVE_BF16
#define DVM_KERNELS_NATIVE_BF16
namespace dvm::vm {
// f32 -> bf16 by AVX512-BF16's vcvtne2ps2bf16 where the CPU has it (Zen 4,
// Cooper Lake, Sapphire Rapids); Highway 1.0 has no target for it. The
// instruction rounds to nearest even and quiets NaNs as F32ToBF16 does, but
// flushes denormal inputs to zero: checked against F32ToBF16 on all 2^32
// inputs, only the denormals differ, so a pair of vectors with a denormal
// lane converts lane by lane. Converts whole pairs of 16 lanes and returns
// how many lanes it did.
extern const bool kNativeBF16;
int64_t StoreBF16Native(uint16_t* o, const float* s, int64_t n);
}  // namespace dvm::vm
#endif

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "vm/cpu/kernels.cc"
// foreach_target must come first: it re-includes this file per target.
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/cache_control.h>
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>
// clang-format on

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
HWY_NOINLINE VF ExpWide(DF d, VF x) {
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

// ---- handler templates ----------------------------------------------------

// Handlers read the lane count into a local before their loops: VInst's
// uint8_t fields may alias the stores, so the compiler would reload
// c.n[vi.level] on every vector otherwise.

template <class F>
HWY_INLINE void MapF(const VInst& vi, TileCtx& c, F f) {
  const DF d;
  const float* a = c.R<float>(vi.a);
  float* o = c.W<float>(vi.dst);
  const int64_t n = c.n[vi.level];
  for (int64_t i = 0; i < n; i += hn::Lanes(d)) hn::StoreU(f(d, hn::LoadU(d, a + i)), d, o + i);
}

template <bool kWrap8, class F>
HWY_INLINE void MapI(const VInst& vi, TileCtx& c, F f) {
  const DI d;
  const int32_t* a = c.R<int32_t>(vi.a);
  int32_t* o = c.W<int32_t>(vi.dst);
  const int64_t n = c.n[vi.level];
  for (int64_t i = 0; i < n; i += hn::Lanes(d)) {
    VI r = f(d, hn::LoadU(d, a + i));
    if (kWrap8) r = Wrap8(r);
    hn::StoreU(r, d, o + i);
  }
}

// Float unary -> float: the opcodes, their handlers and values of x.
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
#define DVM_UNF(OP, NAME, EXPR)                            \
  void NAME(const VInst& vi, TileCtx& c) {                 \
    MapF(vi, c, [](DF d, VF x) HWY_ATTR { return EXPR; }); \
  }
DVM_LIGHT_UNARY(DVM_UNF)
DVM_UNF(EXP, ExpF, ExpV(d, x))
DVM_UNF(LOG, LogF, LogV(d, x))
DVM_UNF(TANH, TanhF, TanhV(d, x))
DVM_UNF(SIGMOID, SigmoidF, hn::Div(hn::Set(d, 1.0f), hn::Add(hn::Set(d, 1.0f), ExpV(d, hn::Neg(x)))))
DVM_UNF(ERF, ErfF, ErfV(d, x))
DVM_UNF(SIN, SinF, SinCosV<true>(d, x))
DVM_UNF(COS, CosF, SinCosV<false>(d, x))
DVM_UNF(GELU, GeluTanhF, GeluTanhV(d, x))
DVM_UNF(CAST, CastToBF16, RoundBF16(d, x))
DVM_UNF(CAST, CastToF16, RoundF16(d, x))
#undef DVM_UNF

void CopyRegs(const VInst& vi, TileCtx& c) {
  const float* a = c.R<float>(vi.a);
  float* o = c.W<float>(vi.dst);
  if (o != a) std::memcpy(o, a, sizeof(float) * c.n[vi.level]);
}

// Integer unary (i32 lanes); kWrap8 wraps results to 8 bits.
#define DVM_UNI(NAME, EXPR)                                        \
  template <bool kWrap8>                                           \
  void NAME(const VInst& vi, TileCtx& c) {                         \
    MapI<kWrap8>(vi, c, [](DI d, VI x) HWY_ATTR { return EXPR; }); \
  }
DVM_UNI(AbsI, hn::IfThenElse(hn::Lt(x, hn::Zero(d)), hn::Sub(hn::Zero(d), x), x))
DVM_UNI(NegI, hn::Sub(hn::Zero(d), x))
DVM_UNI(ReluI, hn::Max(x, hn::Zero(d)))
#undef DVM_UNI

void IsFiniteF(const VInst& vi, TileCtx& c) {
  const DF d;
  const DI di;
  const float* a = c.R<float>(vi.a);
  int32_t* o = c.W<int32_t>(vi.dst);
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; i += hn::Lanes(d)) hn::StoreU(BoolF(d, hn::IsFinite(hn::LoadU(d, a + i))), di, o + i);
}
void OnesI(const VInst& vi, TileCtx& c) {
  const DI d;
  int32_t* o = c.W<int32_t>(vi.dst);
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; i += hn::Lanes(d)) hn::StoreU(hn::Set(d, 1), d, o + i);
}
void NotF(const VInst& vi, TileCtx& c) {
  const DF d;
  const DI di;
  const float* a = c.R<float>(vi.a);
  int32_t* o = c.W<int32_t>(vi.dst);
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; i += hn::Lanes(d))
    hn::StoreU(BoolF(d, hn::Eq(hn::LoadU(d, a + i), hn::Zero(d))), di, o + i);
}
void NotI(const VInst& vi, TileCtx& c) {
  const DI d;
  const int32_t* a = c.R<int32_t>(vi.a);
  int32_t* o = c.W<int32_t>(vi.dst);
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; i += hn::Lanes(d))
    hn::StoreU(Bool(d, hn::Eq(hn::LoadU(d, a + i), hn::Zero(d))), d, o + i);
}

// Binary ops. kForm: 0 = reg op reg, 1 = reg op const, 2 = const op reg.
template <int kForm, class D, class T, class V>
HWY_INLINE void Operands(const VInst& vi, const TileCtx& c, D d, const T* a, const T* b, int64_t i, V k, V& x, V& y) {
  if (kForm == 0) {
    x = hn::LoadU(d, a + i);
    y = hn::LoadU(d, b + i);
  } else if (kForm == 1) {
    x = hn::LoadU(d, a + i);
    y = k;
  } else {
    x = k;
    y = hn::LoadU(d, a + i);
  }
}

template <int kForm, class F>
HWY_INLINE void BinFF(const VInst& vi, TileCtx& c, F f) {
  const DF d;
  const float *a = c.R<float>(vi.a), *b = c.R<float>(vi.b);
  float* o = c.W<float>(vi.dst);
  const VF k = hn::Set(d, BitsF32(vi.kbits));
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; i += hn::Lanes(d)) {
    VF x, y;
    Operands<kForm>(vi, c, d, a, b, i, k, x, y);
    hn::StoreU(f(d, x, y), d, o + i);
  }
}
template <int kForm, class F>  // float operands, bool result
HWY_INLINE void BinFB(const VInst& vi, TileCtx& c, F f) {
  const DF d;
  const DI di;
  const float *a = c.R<float>(vi.a), *b = c.R<float>(vi.b);
  int32_t* o = c.W<int32_t>(vi.dst);
  const VF k = hn::Set(d, BitsF32(vi.kbits));
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; i += hn::Lanes(d)) {
    VF x, y;
    Operands<kForm>(vi, c, d, a, b, i, k, x, y);
    hn::StoreU(BoolF(d, f(d, x, y)), di, o + i);
  }
}
template <int kForm, bool kWrap8, class F>
HWY_INLINE void BinII(const VInst& vi, TileCtx& c, F f) {
  const DI d;
  const int32_t *a = c.R<int32_t>(vi.a), *b = c.R<int32_t>(vi.b);
  int32_t* o = c.W<int32_t>(vi.dst);
  const VI k = hn::Set(d, static_cast<int32_t>(vi.kbits));
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; i += hn::Lanes(d)) {
    VI x, y;
    Operands<kForm>(vi, c, d, a, b, i, k, x, y);
    VI r = f(d, x, y);
    if (kWrap8) r = Wrap8(r);
    hn::StoreU(r, d, o + i);
  }
}
template <int kForm, class F>  // int operands, bool result
HWY_INLINE void BinIB(const VInst& vi, TileCtx& c, F f) {
  const DI d;
  const int32_t *a = c.R<int32_t>(vi.a), *b = c.R<int32_t>(vi.b);
  int32_t* o = c.W<int32_t>(vi.dst);
  const VI k = hn::Set(d, static_cast<int32_t>(vi.kbits));
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; i += hn::Lanes(d)) {
    VI x, y;
    Operands<kForm>(vi, c, d, a, b, i, k, x, y);
    hn::StoreU(Bool(d, f(d, x, y)), d, o + i);
  }
}

#define DVM_BIN(NAME, KIND, EXPR)                                             \
  template <int kForm>                                                        \
  void NAME(const VInst& vi, TileCtx& c) {                                    \
    KIND<kForm>(vi, c, [](auto d, auto x, auto y) HWY_ATTR { return EXPR; }); \
  }
#define DVM_BINI(NAME, EXPR)                                                           \
  template <int kForm, bool kWrap8>                                                    \
  void NAME(const VInst& vi, TileCtx& c) {                                             \
    BinII<kForm, kWrap8>(vi, c, [](auto d, auto x, auto y) HWY_ATTR { return EXPR; }); \
  }
DVM_BIN(AddF, BinFF, hn::Add(x, y))
DVM_BIN(SubF, BinFF, hn::Sub(x, y))
DVM_BIN(MulF, BinFF, hn::Mul(x, y))
DVM_BIN(DivPlainF, BinFF, hn::Div(x, y))
DVM_BIN(MaxF, BinFF, MaxP(d, x, y))
DVM_BIN(MinF, BinFF, MinP(d, x, y))
DVM_BIN(EqF, BinFB, hn::Eq(x, y))
DVM_BIN(NeF, BinFB, hn::Not(hn::Eq(x, y)))
DVM_BIN(LtF, BinFB, hn::Lt(x, y))
DVM_BIN(LeF, BinFB, hn::Le(x, y))
DVM_BIN(GtF, BinFB, hn::Gt(x, y))
DVM_BIN(GeF, BinFB, hn::Ge(x, y))
// Float truth is x != 0 with NaN true: Not(Eq), since Ne is an ordered compare.
DVM_BIN(AndF, BinFB, hn::AndNot(hn::Eq(x, hn::Zero(d)), hn::Not(hn::Eq(y, hn::Zero(d)))))
DVM_BIN(OrF, BinFB, hn::Not(hn::And(hn::Eq(x, hn::Zero(d)), hn::Eq(y, hn::Zero(d)))))
DVM_BINI(AddI, hn::Add(x, y))
DVM_BINI(SubI, hn::Sub(x, y))
DVM_BINI(MulI, hn::Mul(x, y))
DVM_BINI(MaxI, hn::Max(x, y))
DVM_BINI(MinI, hn::Min(x, y))
DVM_BIN(EqI, BinIB, hn::Eq(x, y))
DVM_BIN(NeI, BinIB, hn::Not(hn::Eq(x, y)))
DVM_BIN(LtI, BinIB, hn::Lt(x, y))
DVM_BIN(LeI, BinIB, hn::Not(hn::Gt(x, y)))
DVM_BIN(GtI, BinIB, hn::Gt(x, y))
DVM_BIN(GeI, BinIB, hn::Not(hn::Lt(x, y)))
DVM_BIN(AndI, BinIB, hn::And(hn::Ne(x, hn::Zero(d)), hn::Ne(y, hn::Zero(d))))
DVM_BIN(OrI, BinIB, hn::Or(hn::Ne(x, hn::Zero(d)), hn::Ne(y, hn::Zero(d))))
#undef DVM_BIN
#undef DVM_BINI

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

// x / k for a constant k: by reciprocal (UniformDivisor), the bits of the
// divide. x / y and k / y take the divide.
template <int kForm>
void DivF(const VInst& vi, TileCtx& c) {
  if constexpr (kForm == 1) {
    const DF d;
    const float* a = c.R<float>(vi.a);
    float* o = c.W<float>(vi.dst);
    const UniformDivisor u(BitsF32(vi.kbits));
    const int64_t nl = c.n[vi.level];
    for (int64_t i = u.DivideRun(a, o, 0, nl); i < nl; i += hn::Lanes(d))
      hn::StoreU(hn::Div(hn::LoadU(d, a + i), u.y), d, o + i);
  } else {
    DivPlainF<kForm>(vi, c);
  }
}

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

// A float binary op whose second operand is a reduced register broadcast
// over each row (R[b][r] for lanes [r K, (r + 1) K), K = n[0] / n[1]): what
// BCAST then the op compute, in one pass (vm.cc FuseRowBroadcasts). A row's
// tail is loaded and stored by LoadPart / StorePart, so that the next row's
// lanes are not touched (dst may be a).
// `head(y, a, o, i, e)`, if given, may compute a row's first elements its
// own way and returns where f takes over.
struct NoHead {};
template <class F, class Head = NoHead>
HWY_INLINE void BinRowFF(const VInst& vi, TileCtx& c, F f, Head head = {}) {
  const DF d;
  const int64_t L = hn::Lanes(d);
  const float* a = c.R<float>(vi.a);
  const float* b = c.R<float>(vi.b);
  float* o = c.W<float>(vi.dst);
  const int64_t rows = c.n[1];
  const int64_t K = rows ? c.n[0] / rows : 0;
  for (int64_t r = 0; r < rows; ++r) {
    const VF y = hn::Set(d, b[r]);
    int64_t i = r * K;
    const int64_t e = i + K;
    if constexpr (!std::is_same_v<Head, NoHead>) i = head(b[r], a, o, i, e);
    for (; i + L <= e; i += L) hn::StoreU(f(d, hn::LoadU(d, a + i), y), d, o + i);
    if (i < e) {
      const size_t n = static_cast<size_t>(e - i);
      StorePart(d, f(d, LoadPart(d, a + i, n, hn::Zero(d)), y), o + i, n);
    }
  }
}
#define DVM_BINROW(NAME, EXPR)                                       \
  void NAME(const VInst& vi, TileCtx& c) {                           \
    BinRowFF(vi, c, [](DF d, VF x, VF y) HWY_ATTR { return EXPR; }); \
  }
// ---- fused chains of two binary ops (vm.cc FuseBinaryChains) ------------------

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

// See ChainHandler (kernels.h). Rows (a row-broadcast operand, kind 2, or a
// row-periodic one, kind 3) are walked like BinRowFF, their tails through
// buffers so that no lane of the next row is touched (dst may be a, b or c)
// and no lane past a periodic operand's row is read (it may be the
// tensor's own row).
template <int kOp1, int kOp2, int kY, int kZ, bool kZFirst>
void ChainF(const VInst& vi, TileCtx& c) {
  const DF d;
  const int64_t L = hn::Lanes(d);
  const float* a = c.R<float>(vi.a);
  const float* b = kY != 1 ? c.R<float>(vi.b) : nullptr;
  const float* z = kZ != 1 ? c.R<float>(vi.c) : nullptr;
  float* o = c.W<float>(vi.dst);
  const VF k1 = hn::Set(d, BitsF32(vi.kbits)), k2 = hn::Set(d, BitsF32(vi.kbits2));
  auto second = [&](VF t, VF w) HWY_ATTR {
    if constexpr (kOp2 == 4)
      return ExpV(d, t);  // a unary second op: z unused
    else if constexpr (kOp2 == 5)
      return GeluTanhV(d, t);  // GEMM epilogues: GELU(C + bias)
    else if constexpr (kOp2 == 6)
      return hn::Sqrt(t);
    else
      return kZFirst ? ChainOp<kOp2>(w, t) : ChainOp<kOp2>(t, w);
  };
  auto f = [&](VF x, VF y, VF w) HWY_ATTR {
    return second(Opaque(d, ChainOp<kOp1>(x, y)), w);  // t rounded, never contracted into an FMA
  };
  // A run of `len` lanes: y and z lanes from yb / zb (kinds 0 and 3) or
  // the vectors yr / zr; the tail through buffers.
  constexpr bool kLoadY = kY == 0 || kY == 3, kLoadZ = kZ == 0 || kZ == 3;
  auto run = [&](const float* ar, const float* yb, const float* zb, float* orow, int64_t len, VF yr, VF zr) HWY_ATTR {
    int64_t j = 0;
    for (; j + L <= len; j += L) {
      const VF y = kLoadY ? hn::LoadU(d, yb + j) : yr, w = kLoadZ ? hn::LoadU(d, zb + j) : zr;
      hn::StoreU(f(hn::LoadU(d, ar + j), y, w), d, orow + j);
    }
    if (j < len) {
      const size_t n = static_cast<size_t>(len - j);
      const VF y = kLoadY ? LoadPart(d, yb + j, n, hn::Zero(d)) : yr;
      const VF w = kLoadZ ? LoadPart(d, zb + j, n, hn::Zero(d)) : zr;
      StorePart(d, f(LoadPart(d, ar + j, n, hn::Zero(d)), y, w), orow + j, n);
    }
  };
  if constexpr (kY == 2 || kZ == 2) {
    // The tile's n[1] rows of n[0] / n[1] lanes, each with its row value.
    const int64_t rows = c.n[1];
    const int64_t K = rows ? c.n[0] / rows : 0;
    for (int64_t r = 0; r < rows; ++r)
      run(a + r * K, kY == 0 ? b + r * K : b, kZ == 0 ? z + r * K : z, o + r * K, K, kY == 2 ? hn::Set(d, b[r]) : k1,
          kZ == 2 ? hn::Set(d, z[r]) : k2);
  } else if constexpr (kY == 3 || kZ == 3) {
    // A row of K lanes (kbits / kbits2) repeated: lane i of the tile is
    // column (start + i) % K. Runs end at row ends, so a kind-3 operand
    // reads only its K lanes.
    const int64_t K = kY == 3 ? vi.kbits : vi.kbits2, n = c.n[vi.level];
    int64_t col = K > 0 ? c.start[vi.level] % K : 0;
    for (int64_t i = 0; i < n;) {
      const int64_t len = std::min(K - col, n - i);
      run(a + i, kY == 3 ? b + col : kY == 0 ? b + i : b, kZ == 3 ? z + col : kZ == 0 ? z + i : z, o + i, len, k1, k2);
      i += len;
      col = 0;
    }
  } else {
    const int64_t n = c.n[vi.level];
    int64_t i = 0;
    // A division by a constant (x / k1 first, or t / k2 second) goes by
    // reciprocal, four vectors at a time (UniformDivisor): the same bits.
    constexpr bool kDiv1 = kOp1 == 3 && kY == 1, kDiv2 = kOp2 == 3 && kZ == 1 && !kZFirst;
    if constexpr (kDiv1 || kDiv2) {
      const UniformDivisor u1(BitsF32(vi.kbits)), u2(BitsF32(vi.kbits2));
      for (; i + 4 * L <= n; i += 4 * L) {
        VF t0 = hn::LoadU(d, a + i), t1 = hn::LoadU(d, a + i + L);
        VF t2 = hn::LoadU(d, a + i + 2 * L), t3 = hn::LoadU(d, a + i + 3 * L);
        auto y = [&](int64_t j) HWY_ATTR { return kY == 0 ? hn::LoadU(d, b + j) : k1; };
        auto w = [&](int64_t j) HWY_ATTR { return kZ == 0 ? hn::LoadU(d, z + j) : k2; };
        if constexpr (kDiv1) {
          u1.Divide4(t0, t1, t2, t3);
        } else {
          t0 = ChainOp<kOp1>(t0, y(i)), t1 = ChainOp<kOp1>(t1, y(i + L));
          t2 = ChainOp<kOp1>(t2, y(i + 2 * L)), t3 = ChainOp<kOp1>(t3, y(i + 3 * L));
        }
        t0 = Opaque(d, t0), t1 = Opaque(d, t1), t2 = Opaque(d, t2), t3 = Opaque(d, t3);
        if constexpr (kDiv2) {
          u2.Divide4(t0, t1, t2, t3);
        } else {
          t0 = second(t0, w(i)), t1 = second(t1, w(i + L));
          t2 = second(t2, w(i + 2 * L)), t3 = second(t3, w(i + 3 * L));
        }
        hn::StoreU(t0, d, o + i), hn::StoreU(t1, d, o + i + L);
        hn::StoreU(t2, d, o + i + 2 * L), hn::StoreU(t3, d, o + i + 3 * L);
      }
    }
    for (; i < n; i += L) {
      const VF y = kY == 0 ? hn::LoadU(d, b + i) : k1, w = kZ == 0 ? hn::LoadU(d, z + i) : k2;
      hn::StoreU(f(hn::LoadU(d, a + i), y, w), d, o + i);
    }
  }
}

// ---- fused elementwise programs (vm.cc FuseChainPrograms) ---------------------

// A fused program runs over the tile in strips of eight vectors, then one
// vector at a time for the rest, as threaded code: each step is a function
// specialised for its op, operand kind and flags (StepT) that takes the
// value in eight vector registers (arguments) and ends in a tail call of
// the next step, so every step has an indirect jump of its own that the
// predictor learns. One loop dispatching steps through a switch
// mispredicted about once per step and strip: a chain of six
// multiply/adds over [65536] took 34 us against 11 for the three fused
// pairs it replaced (9 us threaded).
// A step reads its op, constant and masks from its ChainStep, its
// pointers from P (three per step), and passes s + 1, P + 3 to the next: a
// tile sets up only the pointers it changes (the per-tile table of whole
// steps it built before cost more stores than the tile's own work for
// short tensors).
using StepFn = void (*)(const ChainStep* s, const float* const* P, int64_t i, VF a0, VF a1, VF a2, VF a3, VF a4, VF a5,
                        VF a6, VF a7);
HWY_INLINE StepFn Fn(const void* f) { return reinterpret_cast<StepFn>(const_cast<void*>(f)); }

template <int kOpc>
HWY_INLINE VF LightUnary(DF d, VF x) {
#define DVM_LU(OP, NAME, EXPR) \
  if constexpr (kOpc == static_cast<int>(bc::Opcode::OP)) return EXPR;
  DVM_LIGHT_UNARY(DVM_LU)
#undef DVM_LU
  (void)d;
  return x;
}
template <int kOpc>
HWY_INLINE VF ChainBinary(DF d, VF a, VF b) {
  using bc::Opcode;
  if constexpr (kOpc == static_cast<int>(Opcode::ADD)) return hn::Add(a, b);
  if constexpr (kOpc == static_cast<int>(Opcode::SUB)) return hn::Sub(a, b);
  if constexpr (kOpc == static_cast<int>(Opcode::MUL)) return Opaque(d, hn::Mul(a, b));
  if constexpr (kOpc == static_cast<int>(Opcode::DIV)) return hn::Div(a, b);
  if constexpr (kOpc == static_cast<int>(Opcode::MAX)) return MaxP(d, a, b);
  return MinP(d, a, b);
}

void EndStep(const ChainStep*, const float* const*, int64_t, VF, VF, VF, VF, VF, VF, VF, VF) {}

// A program's last partial vector runs in place (kPartial steps) where
// masked loads and stores touch no lane outside the mask (kMaskedMoves).
constexpr bool kPartialSteps = kMaskedMoves;

// S = 8 or 4 (full strips), 1 (the strip's last vectors: a1..a7 unused)
// or 0 (a program's last lanes, fewer than a strip of four: four vectors
// a0..a3 whose lanes the masks a4..a7 select).
template <int S, int kOpc, int kOperand, bool kRev, bool kLoad, bool kStore>
void StepT(const ChainStep* s, const float* const* P, int64_t i, VF a0, VF a1, VF a2, VF a3, VF a4, VF a5, VF a6,
           VF a7) {
  const DF d;
  const int64_t L = hn::Lanes(d);
  // Loads and stores of vector j of the step's lanes (S = 0: those of its
  // mask).
  auto mask = [&](int j) HWY_ATTR { return hn::MaskFromVec(j == 0 ? a4 : j == 1 ? a5 : j == 2 ? a6 : a7); };
  auto load = [&](const float* p, int j) HWY_ATTR {
    if constexpr (S == 0)
      return hn::MaskedLoad(mask(j), d, p);
    else
      return hn::LoadU(d, p);
  };
  auto store = [&](VF x, float* p, int j) HWY_ATTR {
    if constexpr (S == 0)
      hn::BlendedStore(x, mask(j), d, p);
    else
      hn::StoreU(x, d, p);
  };
  const float* const src = P[0] + (i & s->msrc);  // locals: the stores below may alias *s and P
  const float* const opnd = P[1] + (i & s->mopnd);
  float* const out = const_cast<float*>(P[2]) + (i & s->mout);
  // a_j = f(a_j, j) for the eight vectors (named, not an array: an array of
  // vectors went through the stack).
  auto each = [&](auto f) HWY_ATTR {
    a0 = f(a0, 0);
    if constexpr (S != 1) a1 = f(a1, 1), a2 = f(a2, 2), a3 = f(a3, 3);
    if constexpr (S == 8) a4 = f(a4, 4), a5 = f(a5, 5), a6 = f(a6, 6), a7 = f(a7, 7);
  };
  if constexpr (kLoad) each([&](VF, int j) HWY_ATTR { return load(src + j * L, j); });
  constexpr auto operand = static_cast<ChainOperand>(kOperand);
  if constexpr (operand == ChainOperand::kNone) {
    each([&](VF x, int) HWY_ATTR { return LightUnary<kOpc>(d, x); });
  } else if constexpr (S != 1 && kOpc == static_cast<int>(bc::Opcode::DIV) && operand == ChainOperand::kConst &&
                       !kRev) {
    const UniformDivisor u(s->k, s->rk, s->k_ok);  // by reciprocal: the same bits
    u.Divide4(a0, a1, a2, a3);
    if constexpr (S == 8) u.Divide4(a4, a5, a6, a7);
  } else {
    const VF k = hn::Set(d, s->k);
    constexpr int kOp2 = static_cast<int>(operand == ChainOperand::kRegAdd   ? bc::Opcode::ADD
                                          : operand == ChainOperand::kRegSub ? bc::Opcode::SUB
                                                                             : bc::Opcode::MUL);
    each([&](VF x, int j) HWY_ATTR {
      VF y = x;
      if constexpr (operand == ChainOperand::kReg) y = load(opnd + j * L, j);
      if constexpr (operand == ChainOperand::kConst) y = k;
      if constexpr (operand >= ChainOperand::kRegAdd) y = ChainBinary<kOp2>(d, load(opnd + j * L, j), k);
      return kRev ? ChainBinary<kOpc>(d, y, x) : ChainBinary<kOpc>(d, x, y);
    });
  }
  if constexpr (kStore) {
    each([&](VF x, int j) HWY_ATTR {
      store(x, out + j * L, j);
      return x;
    });
  }
  return Fn(S >= 4 ? s[1].fn : S == 1 ? s[1].fn1 : s[1].fn0)(s + 1, P + 3, i, a0, a1, a2, a3, a4, a5, a6, a7);
}

// The ops of fused programs, in the index order of the step table.
constexpr bc::Opcode kChainOps[] = {bc::Opcode::ADD,        bc::Opcode::SUB, bc::Opcode::MUL,
                                    bc::Opcode::DIV,        bc::Opcode::MAX, bc::Opcode::MIN,
#define DVM_LU(OP, NAME, EXPR) bc::Opcode::OP,
                                    DVM_LIGHT_UNARY(DVM_LU)
#undef DVM_LU
};
constexpr int kNumChainOps = static_cast<int>(std::size(kChainOps));
constexpr int kNumBinaryChainOps = 6;

template <size_t I>
constexpr StepFn StepAt() {
  constexpr int kWidth = static_cast<int>(I / (kNumChainOps * kNumChainOperands * 8));
  constexpr int S = kWidth == 0 ? 8 : kWidth == 1 ? 1 : kWidth == 2 ? 0 : 4;
  constexpr int opi = static_cast<int>(I / (kNumChainOperands * 8) % kNumChainOps);
  constexpr int operand = static_cast<int>(I / 8 % kNumChainOperands);
  constexpr bool rev = I / 4 % 2, load = I / 2 % 2, store = I % 2;
  constexpr bool binary = opi < kNumBinaryChainOps;
  if constexpr (binary == (operand == static_cast<int>(ChainOperand::kNone)) || (!binary && rev) ||
                (S == 0 && !kPartialSteps))
    return nullptr;
  else
    return &StepT<S, static_cast<int>(kChainOps[opi]), operand, rev, load, store>;
}
template <size_t... I>
StepFn StepLookup(size_t i, std::index_sequence<I...>) {
  static constexpr StepFn kTable[] = {StepAt<I>()...};
  return kTable[i];
}
// The step function of st for strips of width w.
StepFn StepFor(const ChainStep& st, StepWidth w) {
  if (st.op == kChainEnd) return &EndStep;
  int opi = 0;
  while (opi < kNumChainOps && kChainOps[opi] != bc::Opcode(st.op)) ++opi;
  const int wi = static_cast<int>(w);
  const size_t i = static_cast<size_t>(
      ((((wi * kNumChainOps + opi) * kNumChainOperands + static_cast<int>(st.operand)) * 2 + st.rev) * 2 + st.load) *
          2 +
      st.store);
  return opi < kNumChainOps ? StepLookup(i, std::make_index_sequence<4 * kNumChainOps * kNumChainOperands * 8>())
                            : nullptr;
}

// One segment of RunChainF: n lanes with the pointers P (slots set).
template <int kS>
void RunChainSegment(const ChainStep* steps, int nsteps, const float** P, int64_t n) {
  const DF d;
  const int64_t L = hn::Lanes(d);
  const VF z = hn::Zero(d);
  const StepFn first = Fn(steps[0].fn), first1 = Fn(steps[0].fn1);
  int64_t i = 0;
  for (; i + kS * L <= n; i += kS * L) first(steps, P, i, z, z, z, z, z, z, z, z);
  if constexpr (kPartialSteps) {
    // The rest in place, four masked vectors a pass: one pass through the
    // steps where each whole vector (and then the partial one) went through
    // them alone. Stacked Adam over 2000 tensors of 100..400 elements, 2
    // threads: Launch 205-207 -> 194-197 us; over bench stack's 300 tensors
    // no change outside the noise.
    const StepFn first0 = Fn(steps[0].fn0);
    for (; i < n; i += 4 * L) {
      auto m = [&](int64_t j) HWY_ATTR {
        return hn::VecFromMask(d, hn::FirstN(d, static_cast<size_t>(std::clamp<int64_t>(n - i - j * L, 0, L))));
      };
      first0(steps, P, i, z, z, z, z, m(0), m(1), m(2), m(3));
    }
    return;
  }
  for (; i + L <= n; i += L) first1(steps, P, i, z, z, z, z, z, z, z, z);
  if (i == n) return;
  // The last partial vector: every tile-memory pointer of the steps is
  // redirected to a vector-sized copy of its lanes [i, n) (the rest zero),
  // the steps run on the copies (lane index 0), and the written ones go
  // back (n - i lanes).
  HWY_ALIGN float buf[3 * kMaxChainSteps][hn::MaxLanes(d)];
  const float* base[3 * kMaxChainSteps];
  bool written[3 * kMaxChainSteps];
  const float* Q[3 * kMaxChainSteps];
  int nb = 0;
  const size_t tail = static_cast<size_t>(n - i) * sizeof(float);
  for (int k = 0; k < 3 * nsteps; ++k) {
    const ChainStep& st = steps[k / 3];
    const int64_t mask = k % 3 == 0 ? st.msrc : k % 3 == 1 ? st.mopnd : st.mout;
    Q[k] = P[k];
    if (mask == 0) continue;  // a slot or unused
    int q = 0;
    while (q < nb && base[q] != P[k]) ++q;
    if (q == nb) {
      base[nb] = P[k], written[nb] = false;
      hn::Store(hn::Zero(d), d, buf[nb]);
      std::memcpy(buf[nb], P[k] + i, tail);
      ++nb;
    }
    written[q] = written[q] || k % 3 == 2;
    Q[k] = buf[q];
  }
  first1(steps, Q, 0, z, z, z, z, z, z, z, z);
  for (int q = 0; q < nb; ++q)
    if (written[q]) std::memcpy(const_cast<float*>(base[q]) + i, buf[q], tail);
}

// kS: vectors per strip (8, or 4 for long programs: kHalfStripSteps).
// Segments run one after the other in this call: the VM's way from one
// tile to the next (back through its job loop, the tile's dispatch and
// setup, into a new call here) cost more than its instructions say when
// the tiles stream from memory. 300 stacked Adam tensors at one thread:
// the strips ran 12-20% slower per lane than over one tensor of all their
// lanes, and splitting that tensor's tiles 4x finer cost it 10%; split
// into segments of one call (pointers and slots reset between them), it
// cost nothing measurable.
template <int kS>
void RunChainF(const ChainStep* steps, int nsteps, const float** P, const int64_t* n, int nseg) {
  const DF d;
  // Values that live only inside the program go through strip slots: a
  // strip writes and reads them at the same lanes, which stay in L1, where
  // tile memory would walk the tile (three 16 KB streams beside Adam's
  // seven, which cost 1.5x in a hand-written loop that did the same).
  HWY_ALIGN float slots[kMaxChainSlots][8 * hn::MaxLanes(d)];
  for (int j = 0; j < nseg; ++j, P += 3 * nsteps) {
    for (int k = 0; k < nsteps; ++k) {
      const ChainStep& st = steps[k];
      if (st.src_slot >= 0) P[3 * k] = slots[st.src_slot];
      if (st.opnd_slot >= 0) P[3 * k + 1] = slots[st.opnd_slot];
      if (st.out_slot >= 0) P[3 * k + 2] = slots[st.out_slot];
    }
    RunChainSegment<kS>(steps, nsteps, P, n[j]);
  }
}

// A layernorm's tail in one pass (vm.cc FuseBinaryChains): ((x - m) * r) *
// g + b (kSub) or (x * r) * g + b, with m, r row operands (R[b][row],
// R[c][row]) and g, b registers (numbers in kbits, kbits2). Every step is
// rounded to f32 as the separate instructions round it. kPG / kPB: g / b
// point at one row of K lanes that every row of the tile reads (vm.cc
// FindInvariantLoads).
template <bool kSub, bool kPG, bool kPB>
void NormAffineF(const VInst& vi, TileCtx& c) {
  const DF d;
  const int64_t L = hn::Lanes(d);
  const float* x = c.R<float>(vi.a);
  const float* m = kSub ? c.R<float>(vi.b) : nullptr;
  const float* r = c.R<float>(vi.c);
  const float* g = c.R<float>(vi.kbits);
  const float* b = c.R<float>(vi.kbits2);
  float* o = c.W<float>(vi.dst);
  const int64_t rows = c.n[1];
  const int64_t K = rows ? c.n[0] / rows : 0;
  auto f = [&](VF xv, VF mv, VF rv, VF gv, VF bv) HWY_ATTR {
    const VF t = Opaque(d, hn::Mul(kSub ? Opaque(d, hn::Sub(xv, mv)) : xv, rv));
    return hn::Add(Opaque(d, hn::Mul(t, gv)), bv);
  };
  for (int64_t row = 0; row < rows; ++row) {
    const VF mv = hn::Set(d, kSub ? m[row] : 0.0f), rv = hn::Set(d, r[row]);
    const float* const xr = x + row * K;
    const float* const gr = kPG ? g : g + row * K;
    const float* const br = kPB ? b : b + row * K;
    float* const orow = o + row * K;
    int64_t j = 0;
    for (; j + L <= K; j += L)
      hn::StoreU(f(hn::LoadU(d, xr + j), mv, rv, hn::LoadU(d, gr + j), hn::LoadU(d, br + j)), d, orow + j);
    if (j < K) {
      const size_t n = static_cast<size_t>(K - j);
      const VF z = hn::Zero(d);
      StorePart(d, f(LoadPart(d, xr + j, n, z), mv, rv, LoadPart(d, gr + j, n, z), LoadPart(d, br + j, n, z)), orow + j,
                n);
    }
  }
}

// The tables, operand kinds 0..3 each (a row value, kind 2, never with a
// row-periodic operand, kind 3: nullptr): binary second ops (op1, op2 < 4:
// 256), z_first only for op2 = sub or div (add and mul commute: 128), unary
// second ops (op2 4..6, no z: 48).
template <int op1, int op2, int y, int z, bool first>
constexpr Handler ChainOrNull() {
  if constexpr ((y == 2 && z == 3) || (y == 3 && z == 2))
    return nullptr;
  else
    return &ChainF<op1, op2, y, z, first>;
}
template <size_t I>
constexpr Handler ChainAt() {
  return ChainOrNull<I / 64, I / 16 % 4, I / 4 % 4, I % 4, false>();
}
template <size_t I>
constexpr Handler ChainFirstAt() {
  constexpr int op2 = I / 16 % 2 ? 3 : 1;
  return ChainOrNull<I / 32, op2, I / 4 % 4, I % 4, true>();
}
template <size_t I>
constexpr Handler ChainUnaryAt() {
  return &ChainF<I / 4 % 4, 4 + I / 16, I % 4, 1, false>;
}
template <size_t... I, size_t... J, size_t... E>
Handler ChainLookup(size_t i, int kind, std::index_sequence<I...>, std::index_sequence<J...>,
                    std::index_sequence<E...>) {
  static const Handler kPlain[] = {ChainAt<I>()...};
  static const Handler kFirst[] = {ChainFirstAt<J>()...};
  static const Handler kUnary[] = {ChainUnaryAt<E>()...};
  return kind == 1 ? kFirst[i % 128] : kind == 2 ? kUnary[i % 48] : kPlain[i % 256];
}

DVM_BINROW(AddRowF, hn::Add(x, y))
DVM_BINROW(SubRowF, hn::Sub(x, y))
DVM_BINROW(MulRowF, hn::Mul(x, y))

// x / y with y a row value (softmax's normalisation): by reciprocal where
// in range (UniformDivisor). On a 4096-element row in L1: 416 -> 237 ns.
void DivRowF(const VInst& vi, TileCtx& c) {
  auto markstein = [](float yr, const float* a, float* o, int64_t i, int64_t e) HWY_ATTR {
    const UniformDivisor u(yr);
    return u.ok ? u.DivideRun(a, o, i, e) : i;
  };
  BinRowFF(
      vi, c, [](DF, VF x, VF y) HWY_ATTR { return hn::Div(x, y); }, markstein);
}
DVM_BINROW(MaxRowF, MaxP(d, x, y))
DVM_BINROW(MinRowF, MinP(d, x, y))
#undef DVM_BINROW

// Scalar loops for ops without a vector instruction.
template <int kForm, typename T, class F>
HWY_INLINE void ScalarBin(const VInst& vi, TileCtx& c, F f) {
  const T* a = c.R<T>(vi.a);
  const T* b = c.R<T>(vi.b);
  T* o = c.W<T>(vi.dst);
  T k;
  std::memcpy(&k, &vi.kbits, 4);
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; ++i) o[i] = kForm == 0 ? f(a[i], b[i]) : kForm == 1 ? f(a[i], k) : f(k, a[i]);
}
template <int kForm>
void PowF(const VInst& vi, TileCtx& c) {
  ScalarBin<kForm, float>(vi, c, [](float x, float y) { return std::pow(x, y); });
}
int32_t IntDiv(int32_t x, int32_t y) {
  if (y == 0) return 0;
  if (y == -1) return static_cast<int32_t>(0u - static_cast<uint32_t>(x));
  return x / y;
}
int32_t IntPow(int32_t x, int32_t y) {
  if (y < 0) return x == 1 ? 1 : x == -1 ? ((y & 1) ? -1 : 1) : 0;
  uint32_t r = 1, b = static_cast<uint32_t>(x);
  for (uint32_t e = static_cast<uint32_t>(y); e; e >>= 1, b *= b)
    if (e & 1) r *= b;
  return static_cast<int32_t>(r);
}
template <int kForm, bool kWrap8>
void DivI(const VInst& vi, TileCtx& c) {
  ScalarBin<kForm, int32_t>(vi, c, [](int32_t x, int32_t y) {
    int32_t r = IntDiv(x, y);
    return kWrap8 ? WrapI8(r) : r;
  });
}
template <int kForm, bool kWrap8>
void PowI(const VInst& vi, TileCtx& c) {
  ScalarBin<kForm, int32_t>(vi, c, [](int32_t x, int32_t y) {
    int32_t r = IntPow(x, y);
    return kWrap8 ? WrapI8(r) : r;
  });
}

void Select(const VInst& vi, TileCtx& c) {
  const DI d;
  const int32_t *m = c.R<int32_t>(vi.a), *x = c.R<int32_t>(vi.b), *y = c.R<int32_t>(vi.c);
  int32_t* o = c.W<int32_t>(vi.dst);
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; i += hn::Lanes(d)) {
    auto mask = hn::Ne(hn::LoadU(d, m + i), hn::Zero(d));
    hn::StoreU(hn::IfThenElse(mask, hn::LoadU(d, x + i), hn::LoadU(d, y + i)), d, o + i);
  }
}

// Casts. Register classes: f32 lanes for f32/f16/bf16, i32 lanes otherwise.
void IntToFloat(const VInst& vi, TileCtx& c) {
  const DF d;
  const DI di;
  const int32_t* a = c.R<int32_t>(vi.a);
  float* o = c.W<float>(vi.dst);
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; i += hn::Lanes(d)) {
    VF v = hn::ConvertTo(d, hn::LoadU(di, a + i));
    if (vi.type == static_cast<uint8_t>(DType::kBFloat16)) v = RoundBF16(d, v);
    if (vi.type == static_cast<uint8_t>(DType::kFloat16)) v = RoundF16(d, v);
    hn::StoreU(v, d, o + i);
  }
}
void FloatToInt(const VInst& vi, TileCtx& c) {
  const float* a = c.R<float>(vi.a);
  int32_t* o = c.W<int32_t>(vi.dst);
  const bool i8 = vi.type == static_cast<uint8_t>(DType::kInt8);
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; ++i) {
    int32_t v = SatF32ToI32(a[i]);
    o[i] = i8 ? WrapI8(v) : v;
  }
}
void FloatToBool(const VInst& vi, TileCtx& c) {
  const DF d;
  const DI di;
  const float* a = c.R<float>(vi.a);
  int32_t* o = c.W<int32_t>(vi.dst);
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; i += hn::Lanes(d))
    hn::StoreU(BoolF(d, hn::Not(hn::Eq(hn::LoadU(d, a + i), hn::Zero(d)))), di, o + i);
}
void IntToBool(const VInst& vi, TileCtx& c) {
  const DI d;
  const int32_t* a = c.R<int32_t>(vi.a);
  int32_t* o = c.W<int32_t>(vi.dst);
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; i += hn::Lanes(d))
    hn::StoreU(Bool(d, hn::Ne(hn::LoadU(d, a + i), hn::Zero(d))), d, o + i);
}
void IntToI8(const VInst& vi, TileCtx& c) {
  MapI<true>(vi, c, [](DI, VI x) HWY_ATTR { return x; });
}

// Row reductions: R[dst][i] = reduce(R[a][i*K .. i*K+K)). Fixed combination
// order (per lane, then lanes in order; halves combined pairwise for long
// rows), so results do not depend on threads.
template <int kOp>  // 0 sum, 1 max, 2 min, 3 prod
HWY_INLINE VF AccV(DF d, VF a, VF b) {
  if (kOp == 0) return hn::Add(a, b);
  if (kOp == 1) return MaxP(d, a, b);
  if (kOp == 2) return MinP(d, a, b);
  return hn::Mul(a, b);
}
template <int kOp>
constexpr float AccInit() {
  return kOp == 0   ? 0.0f
         : kOp == 1 ? -std::numeric_limits<float>::infinity()
         : kOp == 2 ? std::numeric_limits<float>::infinity()
                    : 1.0f;
}

using DD = hn::Repartition<double, DF>;
using VD = hn::Vec<DD>;

// Sums and products accumulate in f64 (then round once), so long
// reductions stay within f32 tolerances of the exact result.
template <int kOp>
HWY_INLINE VD AccD(DD d, VD a, VD b) {
  if (kOp == 0) return hn::Add(a, b);
  if (kOp == 3) return hn::Mul(a, b);
  VD m = kOp == 1 ? hn::Max(a, b) : hn::Min(a, b);
  m = hn::IfThenElse(hn::IsNaN(b), b, m);
  return hn::IfThenElse(hn::IsNaN(a), a, m);
}
template <int kOp>
HWY_INLINE double AccSD(double a, double b) {
  if (kOp == 0) return a + b;
  if (kOp == 3) return a * b;
  if (std::isnan(a)) return a;
  if (std::isnan(b)) return b;
  return kOp == 1 ? (a > b ? a : b) : (a < b ? a : b);
}

// kSq: reduce x * x (each square rounded to f32, as a MUL then the reduction).
// kDev: of x - m (rounded to f32), before kSq squares it.
// gen (sums only): the row is computed into x while it is summed, in the
// order the sum reads it: gen.Vec(i) computes, stores and returns the full
// vector at x + i; gen.Rest(i) computes [i, K) before the sum reads it from
// x. The bits equal computing the row first and summing it after.
// An observer (a gen with kObserve) sees the row as the sum reads it
// instead: gen.Block<N>(p) the N full vectors at p, then gen.Rest(i) the
// lanes [i, K) the vector blocks left; the sum's bits are unchanged.
// Inlined into each row loop (HWY_INLINE): as a call per row it cost the
// scaled, masked softmax over [12, n, n] at one thread 10-18% (n = 16 5.6
// -> 4.7 us, 64 40.2 -> 33.0, 256 781 -> 700; minima of 5 alternating runs).
struct NoGen {};
template <class G>
constexpr bool kObserves = requires {
  std::remove_cvref_t<G>::kObserve;
};
template <int kOp, bool kSq = false, bool kDev = false, class Gen = NoGen>
HWY_INLINE float RowF(const float* x, int64_t K, float m = 0.0f, Gen&& gen = {}) {
  constexpr bool kObs = kObserves<Gen>;
  constexpr bool kGen = !std::is_same_v<std::remove_cvref_t<Gen>, NoGen> && !kObs;
  static_assert(!kObs || (kOp == 0 && !kSq && !kDev), "an observed row is only summed");
  static_assert(!kGen || (kOp == 0 && !kSq && !kDev), "a generated row is only summed");
  const DF d;
  const int64_t L = hn::Lanes(d);
  if (kOp == 1 || kOp == 2) {  // max/min are exact in f32
    // The vector loop takes the plain max/min (one instruction; x86 drops a
    // NaN operand) and notes NaN lanes in a mask on the side: a row with a
    // NaN is NaN, as MaxP would give, at 2-3 instructions per vector
    // instead of MaxP's 5 (a long-row softmax's max pass is bound by them).
    VF a0 = hn::Set(d, AccInit<kOp>()), a1 = a0;
    auto nan = hn::FirstN(d, 0);
    auto acc = [&](VF a, VF v) HWY_ATTR { return kOp == 1 ? hn::Max(a, v) : hn::Min(a, v); };
    int64_t i = 0;
    for (; i + 2 * L <= K; i += 2 * L) {
      const VF v0 = hn::LoadU(d, x + i), v1 = hn::LoadU(d, x + i + L);
      a0 = acc(a0, v0);
      a1 = acc(a1, v1);
      nan = hn::Or(nan, hn::Or(hn::IsNaN(v0), hn::IsNaN(v1)));
    }
    for (; i + L <= K; i += L) {
      const VF v0 = hn::LoadU(d, x + i);
      a0 = acc(a0, v0);
      nan = hn::Or(nan, hn::IsNaN(v0));
    }
    if (i < K) {  // the last lanes, the others the identity (not one by one)
      const VF v1 = LoadPart(d, x + i, static_cast<size_t>(K - i), hn::Set(d, AccInit<kOp>()));
      a1 = acc(a1, v1);
      nan = hn::Or(nan, hn::IsNaN(v1));
    }
    if (!hn::AllFalse(d, nan)) return std::numeric_limits<float>::quiet_NaN();
    // No NaN in the lanes: max/min are exact in any order, so the lanes fold
    // as a tree (log2 L steps) rather than one by one (L - 1 dependent steps,
    // the per-row cost of short rows).
    a0 = acc(a0, a1);
    return hn::GetLane(kOp == 1 ? hn::MaxOfLanes(d, a0) : hn::MinOfLanes(d, a0));
  }
  const DD dd;
  const hn::Rebind<float, DD> dh;  // as many floats as dd has doubles
  const int64_t LD = hn::Lanes(dd);
  const double init = kOp == 0 ? 0.0 : 1.0;
  VD a0 = hn::Set(dd, init), a1 = a0, a2 = a0, a3 = a0;
  const auto mv = hn::Set(dh, m);
  auto ld = [&](const float* p) HWY_ATTR {
    auto v = hn::LoadU(dh, p);
    if (kDev) v = hn::Sub(v, mv);
    if (kSq) v = hn::Mul(v, v);
    return hn::PromoteTo(dd, v);
  };
  int64_t i = 0;
#if HWY_TARGET != HWY_SCALAR
  if constexpr (kOp == 0) {
    // Sums: eight full f32 vectors added pairwise in f32 (three roundings
    // per element, each <= half an ulp of a partial of at most eight
    // inputs), then both halves widened into f64 accumulators: 0.25
    // conversions and f64 adds per element instead of 2 (row sums of
    // 768-4096 elements ~2x faster; eight vectors rather than four: a 4096
    // sum 155 -> 120 ns). Far inside f32 tolerances even with cancellation,
    // and still a fixed order, so the same bits on any thread count. Half of
    // the f32 adds run as a * 1 + b on the FMA units (the same rounding:
    // a * 1 is exact), which the adders alone would bound.
    const hn::Half<DF> dhf;
    const int64_t LF = hn::Lanes(d);
    const auto mf = hn::Set(d, m);
    const VF one = hn::Set(d, 1.0f);
    auto ldf = [&](const float* p) HWY_ATTR {
      if constexpr (kGen) return gen.Vec(p - x);
      auto v = hn::LoadU(d, p);
      if (kDev) v = hn::Sub(v, mf);
      // Opaque: the square is rounded before the pairwise adds, as a
      // separate MUL rounds it (no FMA contraction into the sum).
      if (kSq) v = Opaque(d, hn::Mul(v, v));
      return v;
    };
    auto quad = [&](const float* p) HWY_ATTR {
      return hn::Add(hn::MulAdd(ldf(p), one, ldf(p + LF)), hn::MulAdd(ldf(p + 2 * LF), one, ldf(p + 3 * LF)));
    };
    for (bool odd = false; i + 8 * LF <= K; i += 8 * LF, odd = !odd) {
      if constexpr (kObs) gen.template Block<8>(x + i);
      const VF s = hn::Add(quad(x + i), quad(x + i + 4 * LF));
      if (odd) {
        a2 = hn::Add(a2, hn::PromoteTo(dd, hn::LowerHalf(dhf, s)));
        a3 = hn::Add(a3, hn::PromoteTo(dd, hn::UpperHalf(dhf, s)));
      } else {
        a0 = hn::Add(a0, hn::PromoteTo(dd, hn::LowerHalf(dhf, s)));
        a1 = hn::Add(a1, hn::PromoteTo(dd, hn::UpperHalf(dhf, s)));
      }
    }
    if (i + 4 * LF <= K) {
      if constexpr (kObs) gen.template Block<4>(x + i);
      const VF s0 = quad(x + i);
      a0 = hn::Add(a0, hn::PromoteTo(dd, hn::LowerHalf(dhf, s0)));
      a1 = hn::Add(a1, hn::PromoteTo(dd, hn::UpperHalf(dhf, s0)));
      i += 4 * LF;
    }
  }
#endif
  if constexpr (kGen || kObs) gen.Rest(i);
  for (; i + 4 * LD <= K; i += 4 * LD) {
    a0 = AccD<kOp>(dd, a0, ld(x + i));
    a1 = AccD<kOp>(dd, a1, ld(x + i + LD));
    a2 = AccD<kOp>(dd, a2, ld(x + i + 2 * LD));
    a3 = AccD<kOp>(dd, a3, ld(x + i + 3 * LD));
  }
  // The last lanes (fewer than 4 LD): whole f64 vectors into a0..a2, the
  // rest into a3 with the identity in the lanes past K. One element at a
  // time they were up to 31 dependent f64 steps per row, the per-row cost
  // of short rows and of every row whose length is off the vector (with
  // LoadPart / StorePart for the tails, a scaled, masked softmax over
  // [12, n, n] at one thread: n = 8 7.1-9.0 -> 4.3-4.6 us, n = 16 7.1 ->
  // 5.6-6.8 us, n = 200 466-490 -> 377-381 us; n = 64, 128 unchanged).
  if (i + LD <= K) a0 = AccD<kOp>(dd, a0, ld(x + i)), i += LD;
  if (i + LD <= K) a1 = AccD<kOp>(dd, a1, ld(x + i)), i += LD;
  if (i + LD <= K) a2 = AccD<kOp>(dd, a2, ld(x + i)), i += LD;
  if (i < K) {
    const size_t n = static_cast<size_t>(K - i);
    auto v = LoadPart(dh, x + i, n, hn::Zero(dh));
    if (kDev) v = hn::Sub(v, mv);
    if (kSq) v = hn::Mul(v, v);
    a3 = AccD<kOp>(dd, a3, hn::IfThenElse(hn::FirstN(dd, n), hn::PromoteTo(dd, v), hn::Set(dd, init)));
  }
  a0 = AccD<kOp>(dd, AccD<kOp>(dd, a0, a1), AccD<kOp>(dd, a2, a3));
  double r;
  if constexpr (kOp == 0) {
    // The f64 lanes added as a tree (log2 of the lanes dependent steps, not
    // one per lane: the per-row cost of short rows); a fixed order still.
    r = hn::GetLane(hn::SumOfLanes(dd, a0));
  } else {
    HWY_ALIGN double lanes[hn::MaxLanes(dd)];
    hn::StoreU(a0, dd, lanes);
    r = lanes[0];
    for (size_t l = 1; l < hn::Lanes(dd); ++l) r = AccSD<kOp>(r, lanes[l]);
  }
  return static_cast<float>(r);
}

// Wide (f64) accumulators for COL reductions. W[r] spans registers r, r+1.
template <int kOp>
void WAccT(const VInst& vi, TileCtx& c) {
  const DD dd;
  const hn::Rebind<float, DD> dh;
  const float* a = c.R<float>(vi.a);
  double* w = c.Acc(vi.dst);
  const int64_t n = c.n[vi.level];
  const int64_t LD = hn::Lanes(dd);
  int64_t i = 0;
  for (; i + LD <= n; i += LD)
    hn::StoreU(AccD<kOp>(dd, hn::LoadU(dd, w + i), hn::PromoteTo(dd, hn::LoadU(dh, a + i))), dd, w + i);
  for (; i < n; ++i) w[i] = AccSD<kOp>(w[i], a[i]);
}
void WAcc(const VInst& vi, TileCtx& c) {
  switch (vi.sub) {
    case 0:
      WAccT<0>(vi, c);
      break;
    case 1:
      WAccT<1>(vi, c);
      break;
    case 2:
      WAccT<2>(vi, c);
      break;
    default:
      WAccT<3>(vi, c);
      break;
  }
}
void WFill(const VInst& vi, TileCtx& c) {
  double* w = c.Acc(vi.dst);
  const double inf = std::numeric_limits<double>::infinity();
  const double init = vi.sub == 0 ? 0.0 : vi.sub == 1 ? -inf : vi.sub == 2 ? inf : 1.0;
  std::fill(w, w + c.n[vi.level], init);
}
void WNarrow(const VInst& vi, TileCtx& c) {
  const double* w = c.Acc(vi.a);
  float* o = c.W<float>(vi.dst);
  const int64_t nl = c.n[vi.level];
  for (int64_t i = 0; i < nl; ++i) o[i] = static_cast<float>(w[i]);
}

// The same accumulation as WACC over `rows` rows of a tensor (row r at
// x + r * stride), column strips outermost: each column still takes its rows
// in order, so results equal a WACC per row, bit for bit, while a strip's
// accumulators stay in vector registers.
template <int kOp>
void ColAccRowsT(double* w, const float* x, int64_t stride, int64_t rows, int64_t cols) {
  const DD dd;
  const hn::Rebind<float, DD> dh;
  const int64_t LD = hn::Lanes(dd);
  int64_t c = 0;
  for (; c + 8 * LD <= cols; c += 8 * LD) {
    VD a0 = hn::LoadU(dd, w + c), a1 = hn::LoadU(dd, w + c + LD), a2 = hn::LoadU(dd, w + c + 2 * LD),
       a3 = hn::LoadU(dd, w + c + 3 * LD), a4 = hn::LoadU(dd, w + c + 4 * LD), a5 = hn::LoadU(dd, w + c + 5 * LD),
       a6 = hn::LoadU(dd, w + c + 6 * LD), a7 = hn::LoadU(dd, w + c + 7 * LD);
    const float* p = x + c;
    for (int64_t r = 0; r < rows; ++r, p += stride) {
      a0 = AccD<kOp>(dd, a0, hn::PromoteTo(dd, hn::LoadU(dh, p)));
      a1 = AccD<kOp>(dd, a1, hn::PromoteTo(dd, hn::LoadU(dh, p + LD)));
      a2 = AccD<kOp>(dd, a2, hn::PromoteTo(dd, hn::LoadU(dh, p + 2 * LD)));
      a3 = AccD<kOp>(dd, a3, hn::PromoteTo(dd, hn::LoadU(dh, p + 3 * LD)));
      a4 = AccD<kOp>(dd, a4, hn::PromoteTo(dd, hn::LoadU(dh, p + 4 * LD)));
      a5 = AccD<kOp>(dd, a5, hn::PromoteTo(dd, hn::LoadU(dh, p + 5 * LD)));
      a6 = AccD<kOp>(dd, a6, hn::PromoteTo(dd, hn::LoadU(dh, p + 6 * LD)));
      a7 = AccD<kOp>(dd, a7, hn::PromoteTo(dd, hn::LoadU(dh, p + 7 * LD)));
    }
    hn::StoreU(a0, dd, w + c), hn::StoreU(a1, dd, w + c + LD), hn::StoreU(a2, dd, w + c + 2 * LD);
    hn::StoreU(a3, dd, w + c + 3 * LD), hn::StoreU(a4, dd, w + c + 4 * LD);
    hn::StoreU(a5, dd, w + c + 5 * LD), hn::StoreU(a6, dd, w + c + 6 * LD);
    hn::StoreU(a7, dd, w + c + 7 * LD);
  }
  for (; c + LD <= cols; c += LD) {
    VD a = hn::LoadU(dd, w + c);
    const float* p = x + c;
    for (int64_t r = 0; r < rows; ++r, p += stride) a = AccD<kOp>(dd, a, hn::PromoteTo(dd, hn::LoadU(dh, p)));
    hn::StoreU(a, dd, w + c);
  }
  for (; c < cols; ++c) {
    double a = w[c];
    for (int64_t r = 0; r < rows; ++r) a = AccSD<kOp>(a, x[r * stride + c]);
    w[c] = a;
  }
}

// Column sums of eight rows: each column's eight values added pairwise in
// f32, ((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)), and the block sum
// widened once into the f64 accumulator, as RowF's sums do along a row
// (three roundings per element, each <= half an ulp of a partial of at most
// eight inputs): 7 f32 adds, one conversion and one f64 add per column and
// eight rows, against eight conversions and eight f64 adds one row at a
// time (col_sum [128, 1024] at 2 threads 5.0 -> 3.x us). Every target
// (the scalar tail too) adds in this order, so the bits do not depend on
// the ISA, the tile or the thread count.
void ColSum8(double* w, const float* x, int64_t stride, int64_t cols) {
  int64_t c = 0;
#if HWY_TARGET != HWY_SCALAR
  const DF d;
  const DD dd;
  const hn::Half<DF> dhf;
  const int64_t LF = hn::Lanes(d), LD = hn::Lanes(dd);
  auto sum8 = [&](const float* p) HWY_ATTR {
    auto r = [&](int k) HWY_ATTR { return hn::LoadU(d, p + k * stride); };
    return hn::Add(hn::Add(hn::Add(r(0), r(1)), hn::Add(r(2), r(3))),
                   hn::Add(hn::Add(r(4), r(5)), hn::Add(r(6), r(7))));
  };
  auto acc = [&](double* a, VF s) HWY_ATTR {
    hn::StoreU(hn::Add(hn::LoadU(dd, a), hn::PromoteTo(dd, hn::LowerHalf(dhf, s))), dd, a);
    hn::StoreU(hn::Add(hn::LoadU(dd, a + LD), hn::PromoteTo(dd, hn::UpperHalf(dhf, s))), dd, a + LD);
  };
  for (; c + 4 * LF <= cols; c += 4 * LF) {
    const VF s0 = sum8(x + c), s1 = sum8(x + c + LF), s2 = sum8(x + c + 2 * LF), s3 = sum8(x + c + 3 * LF);
    acc(w + c, s0), acc(w + c + LF, s1), acc(w + c + 2 * LF, s2), acc(w + c + 3 * LF, s3);
  }
  for (; c + LF <= cols; c += LF) acc(w + c, sum8(x + c));
#endif
  for (; c < cols; ++c) {
    auto r = [&](int k) { return x[k * stride + c]; };
    const float s = ((r(0) + r(1)) + (r(2) + r(3))) + ((r(4) + r(5)) + (r(6) + r(7)));
    w[c] += static_cast<double>(s);
  }
}

// Rows in blocks (their lanes stay in L1 across strips, and DRAM sees rows
// streamed in order); a block's strips keep the accumulators in registers.
// Sums of full blocks go through ColSum8; other ops (and a last block of
// fewer than eight rows) accumulate one row at a time in f64.
template <int kOp>
void ColAccT(double* w, const float* x, int64_t stride, int64_t rows, int64_t cols) {
  constexpr int64_t kRowBlock = 8;  // measured: 4..64 on [128|4096, 4096] sums
  for (int64_t r = 0; r < rows; r += kRowBlock) {
    if (kOp == 0 && rows - r >= kRowBlock)
      ColSum8(w, x + r * stride, stride, cols);
    else
      ColAccRowsT<kOp>(w, x + r * stride, stride, std::min(kRowBlock, rows - r), cols);
  }
}

template <int kOp>
void RowReduceF(const VInst& vi, TileCtx& c) {
  const int64_t rows = c.n[1];
  const int64_t K = rows ? c.n[0] / rows : 0;
  const float* x = c.R<float>(vi.a);
  float* o = c.W<float>(vi.dst);
  for (int64_t r = 0; r < rows; ++r) o[r] = RowF<kOp>(x + r * K, K);
}

// RSUM of MUL(d, d) fused at decode (vm.cc FuseSquareSums), with d = R[a],
// or (kDev) d = SUB(R[a], row value R[b][row]) (a layernorm's variance):
// the bits of the separate instructions.
template <bool kDev>
void RowSumSqF(const VInst& vi, TileCtx& c) {
  const int64_t rows = c.n[1];
  const int64_t K = rows ? c.n[0] / rows : 0;
  const float* x = c.R<float>(vi.a);
  const float* m = kDev ? c.R<float>(vi.b) : nullptr;
  float* o = c.W<float>(vi.dst);
  for (int64_t r = 0; r < rows; ++r) o[r] = RowF<0, true, kDev>(x + r * K, K, kDev ? m[r] : 0.0f);
}

// The sum of squared deviations of a row, in the pass that sums it (an
// observer of RowF): d = x - s from a shift s near the row's mean (the mean
// of its first vector), summed and squared into four f32 accumulators each
// (d * d + q on the FMA units), widened into f64 every 16 blocks (at most
// 32 terms per lane in f32), and then
//   M2 = sum (x - mean)^2 = Q - D^2 / K,  Q = sum d^2, D = sum d.
// The subtraction loses bits as D^2 / K nears Q (the shift far from the
// mean, relative to the spread): RowMomentsF takes M2 only when
// D^2 / K <= Q / 2 (at most one bit lost), else the two-pass sum. Per
// vector: a subtraction, an add and an FMA, against a second pass's
// subtraction, square and pairwise add over the row again (layernorm's
// moments over [64, 32768] at one thread: 456 -> 327 k TSC cycles in a
// standalone model, the hand-fused E[x^2] - m^2 loop's 329).
struct RowMomentsObs {
  static constexpr bool kObserve = true;
  static constexpr int kFlush = 16;  // blocks of eight vectors between widenings
  const float* x;
  int64_t K;
  float shift;
  VF ns, sd0, sd1, sd2, sd3, q0, q1, q2, q3;
  double D = 0, Q = 0;
  int blocks = 0;

  RowMomentsObs(const float* row, int64_t k, float s) : x(row), K(k), shift(s) {
    const DF d;
    ns = hn::Set(d, -s);
    sd0 = sd1 = sd2 = sd3 = q0 = q1 = q2 = q3 = hn::Zero(d);
  }
  HWY_INLINE void Take(VF& sd, VF& q, VF v, bool on_fma) {
    const DF d;
    // x + (-s) on the FMA units as x * 1 - s: the same rounding (x * 1 is exact).
    const VF dv = on_fma ? hn::MulAdd(v, hn::Set(d, 1.0f), ns) : hn::Add(v, ns);
    sd = hn::Add(sd, dv);
    q = hn::MulAdd(dv, dv, q);
  }
  HWY_INLINE void Flush() {
    const DF d;
    auto wide = [&](VF v) HWY_ATTR {
#if HWY_TARGET == HWY_SCALAR
      return static_cast<double>(hn::GetLane(v));
#else
      const DD dd;
      const hn::Half<DF> dhf;
      return hn::GetLane(hn::SumOfLanes(
          dd, hn::Add(hn::PromoteTo(dd, hn::LowerHalf(dhf, v)), hn::PromoteTo(dd, hn::UpperHalf(dhf, v)))));
#endif
    };
    D += wide(hn::Add(hn::Add(sd0, sd1), hn::Add(sd2, sd3)));
    Q += wide(hn::Add(hn::Add(q0, q1), hn::Add(q2, q3)));
    sd0 = sd1 = sd2 = sd3 = q0 = q1 = q2 = q3 = hn::Zero(d);
    blocks = 0;
  }
  template <int N>
  HWY_INLINE void Block(const float* p) {
    const DF d;
    const int64_t L = hn::Lanes(d);
    Take(sd0, q0, hn::LoadU(d, p), true);
    Take(sd1, q1, hn::LoadU(d, p + L), false);
    Take(sd2, q2, hn::LoadU(d, p + 2 * L), true);
    Take(sd3, q3, hn::LoadU(d, p + 3 * L), false);
    if constexpr (N == 8) {
      Take(sd0, q0, hn::LoadU(d, p + 4 * L), false);
      Take(sd1, q1, hn::LoadU(d, p + 5 * L), true);
      Take(sd2, q2, hn::LoadU(d, p + 6 * L), false);
      Take(sd3, q3, hn::LoadU(d, p + 7 * L), true);
    }
    if (++blocks == kFlush) Flush();
  }
  HWY_INLINE void Rest(int64_t i) {
    const DF d;
    const int64_t L = hn::Lanes(d);
    for (; i + L <= K; i += L) Take(sd0, q0, hn::LoadU(d, x + i), false);
    Flush();
    for (; i < K; ++i) {
      const float dv = x[i] - shift;
      D += dv;
      Q += double(dv) * dv;
    }
  }
};

// RSUM of R[a] into R[dst] per row (RowF's bits) and, in the same pass, the
// sum of squared deviations of each row from its mean into R[c] (vm.cc
// FuseMoments: the RSUM, "MUL m, sum, k" and the fused SUB, MUL, RSUM of
// (x - m)^2 after them; k in kbits). Where the one-pass formula could lose
// more than a bit, or the row is not finite, R[c] gets the two passes'
// bits: m = RN(sum * k), then RowSumSqDev's sum of (x - m)^2.
// Flattened: RowF and the observer inlined, its accumulators stay in
// vector registers (a call between them kept them in memory: 2x slower).
HWY_FLATTEN void RowMomentsF(const VInst& vi, TileCtx& c) {
  const DF d;
  const int64_t L = hn::Lanes(d);
  const int64_t rows = c.n[1];
  const int64_t K = rows ? c.n[0] / rows : 0;
  const float* x = c.R<float>(vi.a);
  const float k = BitsF32(vi.kbits);
  float* s = c.W<float>(vi.dst);
  float* m2 = c.W<float>(vi.c);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * K;
    float shift = 0;
    if (K >= L) {
      shift = hn::GetLane(hn::SumOfLanes(d, hn::LoadU(d, xr))) / static_cast<float>(L);
    } else {
      for (int64_t j = 0; j < K; ++j) shift += xr[j];
      shift /= static_cast<float>(K);
    }
    RowMomentsObs obs(xr, K, shift);
    const float sum = RowF<0, false, false, RowMomentsObs&>(xr, K, 0.0f, obs);
    const double c2 = obs.D * obs.D / static_cast<double>(K);
    double v = obs.Q - c2;
    if (!(c2 <= 0.5 * obs.Q) || !std::isfinite(obs.Q)) v = RowF<0, true, true>(xr, K, sum * k);
    s[r] = sum;
    m2[r] = static_cast<float>(v);
  }
}

// ChainF<kOp1, exp, kY, none> and the RSUM of its result (vm.cc
// FuseChainSums; softmax's exp(x - max) and its row sum) in one pass: each
// row is computed into the destination while RowF sums it, in RowF's order
// (the bits of the two instructions). The sum goes to R[c][row].
template <int kOp1, int kY>
void ChainExpSumF(const VInst& vi, TileCtx& c) {
  const DF d;
  const int64_t L = hn::Lanes(d);
  const float* a = c.R<float>(vi.a);
  const float* b = kY != 1 ? c.R<float>(vi.b) : nullptr;
  const VF k1 = hn::Set(d, BitsF32(vi.kbits));
  const int64_t rows = c.n[1];
  const int64_t K = rows ? c.n[0] / rows : 0;
  float* o = c.W<float>(vi.dst);
  float* sum = c.W<float>(vi.c);
  for (int64_t r = 0; r < rows; ++r) {
    const VF yr = kY == 2 ? hn::Set(d, b[r]) : k1;
    const float* ar = a + r * K;
    const float* br = kY == 0 ? b + r * K : nullptr;
    float* orow = o + r * K;
    auto f = [&](VF x, VF y) HWY_ATTR { return ExpV(d, Opaque(d, ChainOp<kOp1>(x, y))); };
    struct Gen {
      decltype(f)& fn;
      const float *ar, *br;
      float* orow;
      VF yr;
      int64_t K, L;
      HWY_INLINE VF Vec(int64_t i) const {
        const DF d;
        const VF v = fn(hn::LoadU(d, ar + i), kY == 0 ? hn::LoadU(d, br + i) : yr);
        hn::StoreU(v, d, orow + i);
        return v;
      }
      HWY_INLINE void Rest(int64_t i) const {
        const DF d;
        for (; i + L <= K; i += L) Vec(i);
        if (i < K) {
          const size_t n = static_cast<size_t>(K - i);
          const VF y = kY == 0 ? LoadPart(d, br + i, n, hn::Zero(d)) : yr;
          StorePart(d, fn(LoadPart(d, ar + i, n, hn::Zero(d)), y), orow + i, n);
        }
      }
    };
    sum[r] = RowF<0>(orow, K, 0.0f, Gen{f, ar, br, orow, yr, K, L});
  }
}

template <int kOp, bool kWrap8>
void RowReduceI(const VInst& vi, TileCtx& c) {
  const int64_t rows = c.n[1];
  const int64_t K = rows ? c.n[0] / rows : 0;
  const int32_t* x = c.R<int32_t>(vi.a);
  int32_t* o = c.W<int32_t>(vi.dst);
  const bool is_bool = vi.type == static_cast<uint8_t>(DType::kBool);
  const bool is_i8 = vi.type == static_cast<uint8_t>(DType::kInt8);
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* row = x + r * K;
    uint32_t acc;
    int32_t m;
    switch (kOp) {
      case 0:
        acc = 0;
        for (int64_t j = 0; j < K; ++j) acc += static_cast<uint32_t>(row[j]);
        m = static_cast<int32_t>(acc);
        break;
      case 3:
        acc = 1;
        for (int64_t j = 0; j < K; ++j) acc *= static_cast<uint32_t>(row[j]);
        m = static_cast<int32_t>(acc);
        break;
      case 1:
        m = is_bool ? 0 : is_i8 ? -128 : std::numeric_limits<int32_t>::min();
        for (int64_t j = 0; j < K; ++j) m = row[j] > m ? row[j] : m;
        break;
      default:
        m = is_bool ? 1 : is_i8 ? 127 : std::numeric_limits<int32_t>::max();
        for (int64_t j = 0; j < K; ++j) m = row[j] < m ? row[j] : m;
        break;
    }
    o[r] = kWrap8 ? WrapI8(m) : m;
  }
}

void Bcast(const VInst& vi, TileCtx& c) {
  const int64_t rows = c.n[1];
  const int64_t K = rows ? c.n[0] / rows : 0;
  const int32_t* a = c.R<int32_t>(vi.a);
  int32_t* o = c.W<int32_t>(vi.dst);
  const DI d;
  const int64_t L = hn::Lanes(d);
  for (int64_t r = 0; r < rows; ++r) {
    int32_t* row = o + r * K;
    if (K >= L) {
      const VI v = hn::Set(d, a[r]);
      int64_t j = 0;
      for (; j + L <= K; j += L) hn::StoreU(v, d, row + j);
      for (; j < K; ++j) row[j] = a[r];
    } else {
      for (int64_t j = 0; j < K; ++j) row[j] = a[r];
    }
  }
}

// ---- contiguous conversions (tensor <-> register lanes) -------------------

void LoadF32(void* dst, const void* src, int64_t n) { std::memcpy(dst, src, 4 * n); }
void LoadF16(void* dst, const void* src, int64_t n) {
  const DF d;
  const hn::Rebind<hwy::float16_t, DF> dh;
  auto* o = static_cast<float*>(dst);
  auto* s = static_cast<const hwy::float16_t*>(src);
  int64_t i = 0;
  if constexpr (kNativeF16)
    for (; i + static_cast<int64_t>(hn::Lanes(d)) <= n; i += hn::Lanes(d))
      hn::StoreU(hn::PromoteTo(d, hn::LoadU(dh, s + i)), d, o + i);
  for (; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, s + i, 2);
    o[i] = F16ToF32(h);
  }
}
void LoadBF16(void* dst, const void* src, int64_t n) {
  const DI di;
  const hn::Rebind<uint16_t, DI> du16;
  auto* o = static_cast<int32_t*>(dst);
  auto* s = static_cast<const uint16_t*>(src);
  int64_t i = 0;
  for (; i + static_cast<int64_t>(hn::Lanes(di)) <= n; i += hn::Lanes(di)) {
    VI v = hn::BitCast(di, hn::PromoteTo(hn::RebindToUnsigned<DI>(), hn::LoadU(du16, s + i)));
    hn::StoreU(hn::ShiftLeft<16>(v), di, o + i);
  }
  for (; i < n; ++i) o[i] = static_cast<int32_t>(uint32_t(s[i]) << 16);
}
void LoadI32(void* dst, const void* src, int64_t n) { std::memcpy(dst, src, 4 * n); }
void LoadI8(void* dst, const void* src, int64_t n) {
  auto* o = static_cast<int32_t*>(dst);
  auto* s = static_cast<const int8_t*>(src);
  for (int64_t i = 0; i < n; ++i) o[i] = s[i];
}
void LoadBool(void* dst, const void* src, int64_t n) {
  auto* o = static_cast<int32_t*>(dst);
  auto* s = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n; ++i) o[i] = s[i] != 0;
}
void StoreF16(void* dst, const void* src, int64_t n) {
  const DF d;
  const hn::Rebind<hwy::float16_t, DF> dh;
  auto* o = static_cast<hwy::float16_t*>(dst);
  auto* s = static_cast<const float*>(src);
  int64_t i = 0;
  if constexpr (kNativeF16)
    for (; i + static_cast<int64_t>(hn::Lanes(d)) <= n; i += hn::Lanes(d))
      hn::StoreU(hn::DemoteTo(dh, hn::LoadU(d, s + i)), dh, o + i);
  for (; i < n; ++i) {
    uint16_t h = F32ToF16(s[i]);
    std::memcpy(o + i, &h, 2);
  }
}
// RoundBF16 of two vectors at a time; the high halves of the rounded words
// are the bf16 bits, gathered in order by one two-table permute (ConcatOdd).
// The loaded vector is pinned in a register (Opaque): GCC otherwise folds
// the load into each of its four uses, and four 64-byte loads per vector
// bounded the loop (Zen 4: [65536] 6.7 -> 4.7 us, one thread).
void StoreBF16(void* dst, const void* src, int64_t n) {
  const DF d;
  const hn::RebindToUnsigned<DF> du;
  const hn::Repartition<uint16_t, DF> dh;  // twice the lanes of d
  auto* o = static_cast<uint16_t*>(dst);
  auto* s = static_cast<const float*>(src);
  const int64_t L = static_cast<int64_t>(hn::Lanes(d));
  const auto bias = hn::Set(du, 0x7fffu), one = hn::Set(du, 1u), quiet = hn::Set(du, 0x400000u);
  auto round = [&](VF v) HWY_ATTR {
    const auto u = hn::BitCast(du, v);
    const auto r = hn::Add(u, hn::Add(bias, hn::And(hn::ShiftRight<16>(u), one)));
    return hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(v)), hn::Or(u, quiet), r);
  };
  int64_t i = 0;
#if HWY_TARGET <= HWY_AVX3 && HWY_ARCH_X86
  // A [65536] cast to bf16 in L2, one thread: 4.19 -> 3.74 us.
  if (kNativeBF16) i = StoreBF16Native(o, s, n);
#endif
#if HWY_TARGET != HWY_SCALAR
  for (; i + 2 * L <= n; i += 2 * L) {
    const auto lo = round(Opaque(d, hn::LoadU(d, s + i))), hi = round(Opaque(d, hn::LoadU(d, s + i + L)));
    hn::StoreU(hn::ConcatOdd(dh, hn::BitCast(dh, hi), hn::BitCast(dh, lo)), dh, o + i);
  }
#else
  (void)L, (void)dh, (void)round;
#endif
  for (; i < n; ++i) o[i] = F32ToBF16(s[i]);
}
void StoreI8(void* dst, const void* src, int64_t n) {
  auto* o = static_cast<int8_t*>(dst);
  auto* s = static_cast<const int32_t*>(src);
  for (int64_t i = 0; i < n; ++i) o[i] = static_cast<int8_t>(static_cast<uint8_t>(s[i] & 0xff));
}
void StoreBool(void* dst, const void* src, int64_t n) {
  auto* o = static_cast<uint8_t*>(dst);
  auto* s = static_cast<const int32_t*>(src);
  for (int64_t i = 0; i < n; ++i) o[i] = s[i] != 0;
}

// ---- selection ----------------------------------------------------------------

template <template <int> class H>
Handler Form(uint8_t form) {
  return form == 0 ? &H<0>::Run : form == 1 ? &H<1>::Run : &H<2>::Run;
}

#define DVM_FORMS(NAME)                                                  \
  template <int kForm>                                                   \
  struct NAME##_ {                                                       \
    static void Run(const VInst& vi, TileCtx& c) { NAME<kForm>(vi, c); } \
  };
#define DVM_FORMS_I(NAME)                                                       \
  template <int kForm>                                                          \
  struct NAME##_32 {                                                            \
    static void Run(const VInst& vi, TileCtx& c) { NAME<kForm, false>(vi, c); } \
  };                                                                            \
  template <int kForm>                                                          \
  struct NAME##_8 {                                                             \
    static void Run(const VInst& vi, TileCtx& c) { NAME<kForm, true>(vi, c); }  \
  };
// clang-format off (the macro invocations have no ';': clang-format
// re-flows them differently on every run)
DVM_FORMS(AddF)
DVM_FORMS(SubF)
DVM_FORMS(MulF)
DVM_FORMS(DivF)
DVM_FORMS(PowF)
DVM_FORMS(MaxF)
DVM_FORMS(MinF)
DVM_FORMS(EqF)
DVM_FORMS(NeF)
DVM_FORMS(LtF)
DVM_FORMS(LeF)
DVM_FORMS(GtF)
DVM_FORMS(GeF)
DVM_FORMS(AndF)
DVM_FORMS(OrF)
DVM_FORMS(EqI)
DVM_FORMS(NeI)
DVM_FORMS(LtI)
DVM_FORMS(LeI)
DVM_FORMS(GtI)
DVM_FORMS(GeI)
DVM_FORMS(AndI)
DVM_FORMS(OrI)
DVM_FORMS_I(AddI)
DVM_FORMS_I(SubI)
DVM_FORMS_I(MulI)
DVM_FORMS_I(DivI)
DVM_FORMS_I(PowI)
DVM_FORMS_I(MaxI)
DVM_FORMS_I(MinI)
// clang-format on
#undef DVM_FORMS
#undef DVM_FORMS_I

Handler SelectHandlerT(const bc::Inst& in) {
  using bc::Opcode;
  const DType type = DType(in.type);
  const DType src = DType((in.flags & bc::kSrcMask) >> bc::kSrcShift);
  const bool fsrc = IsFloat(src);
  const bool i8 = type == DType::kInt8;
  const uint8_t form = in.flags & bc::kFormMask;
#define DVM_IBIN(NAME) return i8 ? Form<NAME##_8>(form) : Form<NAME##_32>(form)
  switch (Opcode(in.op)) {
    case Opcode::LOAD:
    case Opcode::STORE:
    case Opcode::FILL:
    case Opcode::kCount:
      return nullptr;
    case Opcode::COPY:
      return &CopyRegs;
    case Opcode::SQRT:
      return &SqrtF;
    case Opcode::RSQRT:
      return &RsqrtF;
    case Opcode::ABS:
      return fsrc ? &AbsF : i8 ? &AbsI<true> : &AbsI<false>;
    case Opcode::NEG:
      return fsrc ? &NegF : i8 ? &NegI<true> : &NegI<false>;
    case Opcode::EXP:
      return &ExpF;
    case Opcode::LOG:
      return &LogF;
    case Opcode::RECIP:
      return &RecipF;
    case Opcode::TANH:
      return &TanhF;
    case Opcode::SIGMOID:
      return &SigmoidF;
    case Opcode::ERF:
      return &ErfF;
    case Opcode::RELU:
      return fsrc ? &ReluF : i8 ? &ReluI<true> : &ReluI<false>;
    case Opcode::SIN:
      return &SinF;
    case Opcode::COS:
      return &CosF;
    case Opcode::FLOOR:
      return fsrc ? &FloorF : &CopyRegs;
    case Opcode::CEIL:
      return fsrc ? &CeilF : &CopyRegs;
    case Opcode::ROUND:
      return fsrc ? &RoundF : &CopyRegs;
    case Opcode::ISFINITE:
      return fsrc ? &IsFiniteF : &OnesI;
    case Opcode::NOT:
      return fsrc ? &NotF : &NotI;
    case Opcode::ADD:
      if (fsrc) return Form<AddF_>(form);
      DVM_IBIN(AddI);
    case Opcode::SUB:
      if (fsrc) return Form<SubF_>(form);
      DVM_IBIN(SubI);
    case Opcode::MUL:
      if (fsrc) return Form<MulF_>(form);
      DVM_IBIN(MulI);
    case Opcode::DIV:
      if (fsrc) return Form<DivF_>(form);
      DVM_IBIN(DivI);
    case Opcode::POW:
      if (fsrc) return Form<PowF_>(form);
      DVM_IBIN(PowI);
    case Opcode::MAX:
      if (fsrc) return Form<MaxF_>(form);
      DVM_IBIN(MaxI);
    case Opcode::MIN:
      if (fsrc) return Form<MinF_>(form);
      DVM_IBIN(MinI);
    case Opcode::EQ:
      return fsrc ? Form<EqF_>(form) : Form<EqI_>(form);
    case Opcode::NE:
      return fsrc ? Form<NeF_>(form) : Form<NeI_>(form);
    case Opcode::LT:
      return fsrc ? Form<LtF_>(form) : Form<LtI_>(form);
    case Opcode::LE:
      return fsrc ? Form<LeF_>(form) : Form<LeI_>(form);
    case Opcode::GT:
      return fsrc ? Form<GtF_>(form) : Form<GtI_>(form);
    case Opcode::GE:
      return fsrc ? Form<GeF_>(form) : Form<GeI_>(form);
    case Opcode::AND:
      return fsrc ? Form<AndF_>(form) : Form<AndI_>(form);
    case Opcode::OR:
      return fsrc ? Form<OrF_>(form) : Form<OrI_>(form);
    case Opcode::SELECT:
      return &Select;
    case Opcode::CAST:
      if (fsrc) {
        if (type == DType::kFloat32) return &CopyRegs;
        if (type == DType::kBFloat16) return &CastToBF16;
        if (type == DType::kFloat16) return &CastToF16;
        if (type == DType::kBool) return &FloatToBool;
        return &FloatToInt;
      }
      if (IsFloat(type)) return &IntToFloat;
      if (type == DType::kBool) return &IntToBool;
      if (type == DType::kInt8) return &IntToI8;
      return &CopyRegs;
    case Opcode::RSUM:
      return fsrc ? &RowReduceF<0> : i8 ? &RowReduceI<0, true> : &RowReduceI<0, false>;
    case Opcode::RMAX:
      return fsrc ? &RowReduceF<1> : &RowReduceI<1, false>;
    case Opcode::RMIN:
      return fsrc ? &RowReduceF<2> : &RowReduceI<2, false>;
    case Opcode::RPROD:
      return fsrc ? &RowReduceF<3> : i8 ? &RowReduceI<3, true> : &RowReduceI<3, false>;
    case Opcode::BCAST:
      return &Bcast;
    case Opcode::WFILL:
      return &WFill;
    case Opcode::WACC:
      return &WAcc;
    case Opcode::WNARROW:
      return &WNarrow;
    case Opcode::GELU:
      return &GeluTanhF;
  }
#undef DVM_IBIN
  return nullptr;
}

Handler RowSumSquaresHandlerT() { return &RowSumSqF<false>; }
Handler RowSumSqDevHandlerT() { return &RowSumSqF<true>; }
Handler RowMomentsHandlerT() { return &RowMomentsF; }
Handler CopyHandlerT() { return &CopyRegs; }
Handler NormAffineHandlerT(bool sub, bool periodic_g, bool periodic_b) {
  static const Handler kTable[] = {&NormAffineF<false, false, false>, &NormAffineF<false, false, true>,
                                   &NormAffineF<false, true, false>,  &NormAffineF<false, true, true>,
                                   &NormAffineF<true, false, false>,  &NormAffineF<true, false, true>,
                                   &NormAffineF<true, true, false>,   &NormAffineF<true, true, true>};
  return kTable[sub * 4 + periodic_g * 2 + periodic_b];
}
template <size_t... I>
Handler ChainExpSumLookup(size_t i, std::index_sequence<I...>) {
  static const Handler kTable[] = {&ChainExpSumF<I / 3, I % 3>...};
  return kTable[i];
}
Handler ChainExpSumHandlerT(int op1, int y_kind) {
  if (op1 < 0 || op1 > 3 || y_kind < 0 || y_kind > 2) return nullptr;
  return ChainExpSumLookup(static_cast<size_t>(op1 * 3 + y_kind), std::make_index_sequence<12>());
}

Handler ChainHandlerT(int op1, int op2, int y_kind, int z_kind, bool z_first) {
  if (op1 < 0 || op1 > 3 || op2 < 0 || op2 > 6 || y_kind < 0 || y_kind > 3 || z_kind < 0 || z_kind > 3) return nullptr;
  if (z_first && op2 != 1 && op2 != 3) z_first = false;  // add and mul commute
  const int kind = op2 >= 4 ? 2 : z_first ? 1 : 0;       // 2: a unary op of the first result
  if (kind == 2 && z_kind != 1) return nullptr;
  const size_t i = kind == 2   ? static_cast<size_t>(((op2 - 4) * 4 + op1) * 4 + y_kind)
                   : kind == 1 ? static_cast<size_t>(((op1 * 2 + (op2 == 3)) * 4 + y_kind) * 4 + z_kind)
                               : static_cast<size_t>(((op1 * 4 + op2) * 4 + y_kind) * 4 + z_kind);
  return ChainLookup(i, kind, std::make_index_sequence<256>(), std::make_index_sequence<128>(),
                     std::make_index_sequence<48>());
}

Handler RowBroadcastHandlerT(const bc::Inst& in) {
  using bc::Opcode;
  const DType src = DType((in.flags & bc::kSrcMask) >> bc::kSrcShift);
  if (!IsFloat(src) || !IsFloat(DType(in.type))) return nullptr;
  switch (Opcode(in.op)) {
    case Opcode::ADD:
      return &AddRowF;
    case Opcode::SUB:
      return &SubRowF;
    case Opcode::MUL:
      return &MulRowF;
    case Opcode::DIV:
      return &DivRowF;
    case Opcode::MAX:
      return &MaxRowF;
    case Opcode::MIN:
      return &MinRowF;
    default:
      return nullptr;
  }
}

ColAccFn ColAccumulatorT(int op) {
  switch (op) {
    case 0:
      return &ColAccT<0>;
    case 1:
      return &ColAccT<1>;
    case 2:
      return &ColAccT<2>;
    default:
      return &ColAccT<3>;
  }
}

ConvertFn LoadConverterT(DType t) {
  switch (t) {
    case DType::kFloat32:
      return &LoadF32;
    case DType::kFloat16:
      return &LoadF16;
    case DType::kBFloat16:
      return &LoadBF16;
    case DType::kInt32:
      return &LoadI32;
    case DType::kInt8:
      return &LoadI8;
    case DType::kBool:
      return &LoadBool;
  }
  return nullptr;
}
ConvertFn StoreConverterT(DType t) {
  switch (t) {
    case DType::kFloat32:
      return &LoadF32;
    case DType::kFloat16:
      return &StoreF16;
    case DType::kBFloat16:
      return &StoreBF16;
    case DType::kInt32:
      return &LoadI32;
    case DType::kInt8:
      return &StoreI8;
    case DType::kBool:
      return &StoreBool;
  }
  return nullptr;
}

float ErfScalarT(float x) {
  const hn::CappedTag<float, 1> d1;
  (void)d1;
  const DF d;
  HWY_ALIGN float buf[hn::MaxLanes(d)];
  hn::StoreU(ErfV(d, hn::Set(d, x)), d, buf);
  return buf[0];
}

const char* TargetNameT() { return hwy::TargetName(HWY_TARGET); }
ChainRunFn ChainRunnerT(bool half) { return half ? &RunChainF<4> : &RunChainF<8>; }
const void* ChainStepFnT(const ChainStep& st, StepWidth w) { return reinterpret_cast<const void*>(StepFor(st, w)); }

}  // namespace dvm::vm::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dvm::vm {

#if HWY_ARCH_X86
const bool kNativeBF16 = [] {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") != 0;
}();
__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16"))) int64_t StoreBF16Native(uint16_t* o,
                                                                                                 const float* s,
                                                                                                 int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 lo = _mm512_loadu_ps(s + i), hi = _mm512_loadu_ps(s + i + 16);
    constexpr int kDenormal = 0x20;  // vfpclassps category
    if (_kortestz_mask16_u8(_mm512_fpclass_ps_mask(lo, kDenormal), _mm512_fpclass_ps_mask(hi, kDenormal))) {
      _mm512_storeu_si512(static_cast<void*>(o + i), reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
    } else {
      for (int j = 0; j < 32; ++j) o[i + j] = F32ToBF16(s[i + j]);
    }
  }
  return i;
}
#else
const bool kNativeBF16 = false;
int64_t StoreBF16Native(uint16_t*, const float*, int64_t) { return 0; }
#endif

HWY_EXPORT(SelectHandlerT);
HWY_EXPORT(LoadConverterT);
HWY_EXPORT(ColAccumulatorT);
HWY_EXPORT(RowBroadcastHandlerT);
HWY_EXPORT(RowSumSquaresHandlerT);
HWY_EXPORT(RowSumSqDevHandlerT);
HWY_EXPORT(RowMomentsHandlerT);
HWY_EXPORT(CopyHandlerT);
HWY_EXPORT(NormAffineHandlerT);
HWY_EXPORT(ChainHandlerT);
HWY_EXPORT(ChainExpSumHandlerT);
HWY_EXPORT(StoreConverterT);
HWY_EXPORT(ErfScalarT);
HWY_EXPORT(TargetNameT);
HWY_EXPORT(ChainRunnerT);
HWY_EXPORT(ChainStepFnT);

Handler SelectHandler(const bc::Inst& in) { return HWY_DYNAMIC_DISPATCH(SelectHandlerT)(in); }
ConvertFn LoadConverter(DType t) { return HWY_DYNAMIC_DISPATCH(LoadConverterT)(t); }
ColAccFn ColAccumulator(int op) { return HWY_DYNAMIC_DISPATCH(ColAccumulatorT)(op); }
Handler RowBroadcastHandler(const bc::Inst& in) { return HWY_DYNAMIC_DISPATCH(RowBroadcastHandlerT)(in); }
Handler RowSumSquaresHandler() { return HWY_DYNAMIC_DISPATCH(RowSumSquaresHandlerT)(); }
Handler RowSumSqDevHandler() { return HWY_DYNAMIC_DISPATCH(RowSumSqDevHandlerT)(); }
Handler RowMomentsHandler() { return HWY_DYNAMIC_DISPATCH(RowMomentsHandlerT)(); }
Handler CopyHandler() { return HWY_DYNAMIC_DISPATCH(CopyHandlerT)(); }
Handler NormAffineHandler(bool sub, bool periodic_g, bool periodic_b) {
  return HWY_DYNAMIC_DISPATCH(NormAffineHandlerT)(sub, periodic_g, periodic_b);
}
Handler ChainHandler(int op1, int op2, int y_kind, int z_kind, bool z_first) {
  return HWY_DYNAMIC_DISPATCH(ChainHandlerT)(op1, op2, y_kind, z_kind, z_first);
}
Handler ChainExpSumHandler(int op1, int y_kind) { return HWY_DYNAMIC_DISPATCH(ChainExpSumHandlerT)(op1, y_kind); }
ConvertFn StoreConverter(DType t) { return HWY_DYNAMIC_DISPATCH(StoreConverterT)(t); }
float ErfApprox(float x) { return HWY_DYNAMIC_DISPATCH(ErfScalarT)(x); }
const char* TargetName() { return HWY_DYNAMIC_DISPATCH(TargetNameT)(); }
ChainRunFn ChainRunner(bool half) { return HWY_DYNAMIC_DISPATCH(ChainRunnerT)(half); }
const void* ChainStepFn(const ChainStep& st, StepWidth w) { return HWY_DYNAMIC_DISPATCH(ChainStepFnT)(st, w); }

}  // namespace dvm::vm
#endif
