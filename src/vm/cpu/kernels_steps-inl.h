// The threaded-code steps of fused elementwise programs (kernels.h,
// ChainStep), shared by kernels_steps.cc (strips of eight vectors and of
// one, and the runner) and kernels_steps4.cc (strips of four and masked
// ones): each instantiates the step tables of its widths per Highway target.

#ifndef DVM_VM_CPU_KERNELS_STEPS_DECL_
#define DVM_VM_CPU_KERNELS_STEPS_DECL_
#include "vm/cpu/kernels.h"
namespace dvm::vm {
// ChainStepFn for widths kPartial and kHalfStrip (kernels_steps4.cc).
const void* ChainStepFnHalf(const ChainStep& st, StepWidth w);
}  // namespace dvm::vm
#endif

// Per-target include guard (Highway's convention for -inl.h headers).
// clang-format off
#if defined(DVM_VM_CPU_KERNELS_STEPS_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef DVM_VM_CPU_KERNELS_STEPS_INL_H_
#undef DVM_VM_CPU_KERNELS_STEPS_INL_H_
#else
#define DVM_VM_CPU_KERNELS_STEPS_INL_H_
#endif
// clang-format on

#include <hwy/highway.h>

#include <cstdint>
#include <iterator>
#include <utility>

#include "vm/cpu/kernels-inl.h"

HWY_BEFORE_NAMESPACE();
namespace dvm::vm::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// ---- fused elementwise programs (vm.cc FuseChainPrograms) ---------------------

// A fused program runs over the tile in strips of eight (or four) vectors,
// then the rest in masked passes (one vector at a time before AVX2), as
// threaded code: each step is a function
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

inline void EndStep(const ChainStep*, const float* const*, int64_t, VF, VF, VF, VF, VF, VF, VF, VF) {}

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

// The step table of one width (a StepWidth): an entry for each op, operand
// kind and flags, null where the combination does not occur.
template <int kWidth, size_t I>
constexpr StepFn StepAt() {
  constexpr int S = kWidth == 0 ? 8 : kWidth == 1 ? 1 : kWidth == 2 ? 0 : 4;
  constexpr int opi = static_cast<int>(I / (kNumChainOperands * 8));
  constexpr int operand = static_cast<int>(I / 8 % kNumChainOperands);
  constexpr bool rev = I / 4 % 2, load = I / 2 % 2, store = I % 2;
  constexpr bool binary = opi < kNumBinaryChainOps;
  if constexpr (binary == (operand == static_cast<int>(ChainOperand::kNone)) || (!binary && rev) ||
                (S == 0 && !kPartialSteps))
    return nullptr;
  else
    return &StepT<S, static_cast<int>(kChainOps[opi]), operand, rev, load, store>;
}
template <int kWidth, size_t... I>
StepFn StepLookup(size_t i, std::index_sequence<I...>) {
  static constexpr StepFn kTable[] = {StepAt<kWidth, I>()...};
  return kTable[i];
}
// The step function of st for strips of width kWidth. Each kernel file
// instantiates the tables of two widths (kernels_steps.cc, kernels_steps4.cc):
// in one file, its sanitizer build took 16 min.
template <int kWidth>
StepFn StepFor(const ChainStep& st) {
  if (st.op == kChainEnd) return &EndStep;
  int opi = 0;
  while (opi < kNumChainOps && kChainOps[opi] != bc::Opcode(st.op)) ++opi;
  const size_t i = static_cast<size_t>(
      (((opi * kNumChainOperands + static_cast<int>(st.operand)) * 2 + st.rev) * 2 + st.load) * 2 + st.store);
  return opi < kNumChainOps ? StepLookup<kWidth>(i, std::make_index_sequence<kNumChainOps * kNumChainOperands * 8>())
                            : nullptr;
}

}  // namespace dvm::vm::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
