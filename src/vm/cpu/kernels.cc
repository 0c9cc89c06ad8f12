// SIMD micro-kernels of the VM, compiled for several ISAs with Highway and
// chosen at run time (HWY_DYNAMIC_DISPATCH). Fused pairs of ops are in
// kernels_chain.cc, fused programs' steps in kernels_steps.cc, what they
// share in kernels-inl.h. Transcendentals come from
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
#include "vm/cpu/kernels-inl.h"
// clang-format on

HWY_BEFORE_NAMESPACE();
namespace dvm::vm::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

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
HWY_EXPORT(ChainExpSumHandlerT);
HWY_EXPORT(StoreConverterT);
HWY_EXPORT(ErfScalarT);
HWY_EXPORT(TargetNameT);

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
Handler ChainExpSumHandler(int op1, int y_kind) { return HWY_DYNAMIC_DISPATCH(ChainExpSumHandlerT)(op1, y_kind); }
ConvertFn StoreConverter(DType t) { return HWY_DYNAMIC_DISPATCH(StoreConverterT)(t); }
float ErfApprox(float x) { return HWY_DYNAMIC_DISPATCH(ErfScalarT)(x); }
const char* TargetName() { return HWY_DYNAMIC_DISPATCH(TargetNameT)(); }

}  // namespace dvm::vm
#endif
