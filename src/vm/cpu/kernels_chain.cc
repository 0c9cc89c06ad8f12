// Fused pairs of ops (vm.cc FuseBinaryChains): the handler of every pair of
// ops and operand kinds (kernels.h, ChainHandler).
// Compiled for several ISAs with Highway and chosen at run time, as
// kernels.cc (kernels-inl.h says why the kernels are in several files).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <utility>

#include "vm/cpu/kernels.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "vm/cpu/kernels_chain.cc"
// foreach_target must come first: it re-includes this file per target.
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include "vm/cpu/kernels-inl.h"
// clang-format on

HWY_BEFORE_NAMESPACE();
namespace dvm::vm::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

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

}  // namespace dvm::vm::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dvm::vm {

HWY_EXPORT(ChainHandlerT);

Handler ChainHandler(int op1, int op2, int y_kind, int z_kind, bool z_first) {
  return HWY_DYNAMIC_DISPATCH(ChainHandlerT)(op1, op2, y_kind, z_kind, z_first);
}

}  // namespace dvm::vm
#endif
