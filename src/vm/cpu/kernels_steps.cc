// Fused elementwise programs as threaded code: the runner, and the step
// functions of every op, operand kind and flags for strips of eight vectors
// and of one (kernels_steps-inl.h; kernels_steps4.cc has the other widths).
// Compiled for several ISAs with Highway and chosen at run time, as
// kernels.cc (kernels-inl.h says why the kernels are in several files).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <utility>

#include "vm/cpu/kernels.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "vm/cpu/kernels_steps.cc"
// foreach_target must come first: it re-includes this file per target.
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include "vm/cpu/kernels_steps-inl.h"
// clang-format on

HWY_BEFORE_NAMESPACE();
namespace dvm::vm::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// One segment of RunChainF: n lanes with the pointers P (slots set).
template <int kS>
void RunChainSegment(const ChainStep* steps, int nsteps, const float** P, int64_t n) {
  const DF d;
  const int64_t L = hn::Lanes(d);
  const VF z = hn::Zero(d);
  const StepFn first = Fn(steps[0].fn), first1 = Fn(steps[0].fn1), first0 = Fn(steps[0].fn0);
  // One masked pass over the lanes [at, min(end, at + 4 L)) (kPartialSteps).
  auto masked = [&](int64_t at, int64_t end) HWY_ATTR {
    auto m = [&](int64_t j) HWY_ATTR {
      return hn::VecFromMask(d, hn::FirstN(d, static_cast<size_t>(std::clamp<int64_t>(end - at - j * L, 0, L))));
    };
    first0(steps, P, at, z, z, z, z, m(0), m(1), m(2), m(3));
  };
  int64_t i = 0;
  if constexpr (kPartialSteps) {
    // Strips off a vector boundary move every vector across two cache
    // lines. Where the first stream the program writes (else reads) in
    // tile memory starts off one, a masked pass takes the lanes up to it
    // first, so that the strips of every stream with the same offset are
    // aligned (tensors from one allocator, or slices at the same column).
    // 300 stacked Adam tensors whose buffers all start 16 bytes past a line
    // (harness of bench stack's code, 2 threads): Launch 259-292 us against
    // 222-225 at 64.
    if (n >= 4 * kS * L) {
      const float* ref = nullptr;
      for (int k = 0; k < nsteps && !ref; ++k)
        if (steps[k].mout) ref = P[3 * k + 2];
      for (int k = 0; k < nsteps && !ref; ++k)
        if (steps[k].msrc) ref = P[3 * k];
      const auto off = static_cast<int64_t>(reinterpret_cast<uintptr_t>(ref) / sizeof(float) % L);
      if (off != 0) {
        i = L - off;
        masked(0, i);
      }
    }
  }
  for (; i + kS * L <= n; i += kS * L) first(steps, P, i, z, z, z, z, z, z, z, z);
  if constexpr (kPartialSteps) {
    // The rest in place, four masked vectors a pass: one pass through the
    // steps where each whole vector (and then the partial one) went through
    // them alone. Stacked Adam over 2000 tensors of 100..400 elements, 2
    // threads: Launch 205-207 -> 194-197 us; over bench stack's 300 tensors
    // no change outside the noise.
    for (; i < n; i += 4 * L) masked(i, n);
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
  // The pointers that are slots, listed once: the same in every segment.
  // Scanning the steps per segment held 5% of the samples of 300 stacked
  // Adam tensors of 64..512 elements, 2 threads; listed, that Launch went
  // from a median of ~31 to ~29 us (12 alternating pairs, lower in 8).
  int at[3 * kMaxChainSteps];
  float* slot_of[3 * kMaxChainSteps];
  int nslots = 0;
  for (int k = 0; k < nsteps; ++k) {
    const int8_t sl[3] = {steps[k].src_slot, steps[k].opnd_slot, steps[k].out_slot};
    for (int q = 0; q < 3; ++q)
      if (sl[q] >= 0) at[nslots] = 3 * k + q, slot_of[nslots++] = slots[sl[q]];
  }
  for (int j = 0; j < nseg; ++j, P += 3 * nsteps) {
    for (int q = 0; q < nslots; ++q) P[at[q]] = slot_of[q];
    RunChainSegment<kS>(steps, nsteps, P, n[j]);
  }
}

ChainRunFn ChainRunnerT(bool half) { return half ? &RunChainF<4> : &RunChainF<8>; }
// Widths kStrip and kOne (kernels_steps4.cc has the others).
const void* StepFnStripT(const ChainStep& st, StepWidth w) {
  return reinterpret_cast<const void*>(w == StepWidth::kStrip ? StepFor<0>(st) : StepFor<1>(st));
}

}  // namespace dvm::vm::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dvm::vm {

HWY_EXPORT(ChainRunnerT);
HWY_EXPORT(StepFnStripT);

ChainRunFn ChainRunner(bool half) { return HWY_DYNAMIC_DISPATCH(ChainRunnerT)(half); }
const void* ChainStepFn(const ChainStep& st, StepWidth w) {
  if (w == StepWidth::kStrip || w == StepWidth::kOne) return HWY_DYNAMIC_DISPATCH(StepFnStripT)(st, w);
  return ChainStepFnHalf(st, w);
}

}  // namespace dvm::vm
#endif
