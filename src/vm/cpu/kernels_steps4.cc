// The step functions of fused elementwise programs (kernels_steps-inl.h)
// for strips of four vectors and for a program's last lanes (masked).
// Compiled for several ISAs with Highway and chosen at run time, as
// kernels.cc (kernels-inl.h says why the kernels are in several files).
#include "vm/cpu/kernels.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "vm/cpu/kernels_steps4.cc"
// foreach_target must come first: it re-includes this file per target.
// clang-format off
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include "vm/cpu/kernels_steps-inl.h"
// clang-format on

HWY_BEFORE_NAMESPACE();
namespace dvm::vm::HWY_NAMESPACE {

// Widths kPartial and kHalfStrip.
const void* StepFnHalfT(const ChainStep& st, StepWidth w) {
  return reinterpret_cast<const void*>(w == StepWidth::kPartial ? StepFor<2>(st) : StepFor<3>(st));
}

}  // namespace dvm::vm::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace dvm::vm {

HWY_EXPORT(StepFnHalfT);

const void* ChainStepFnHalf(const ChainStep& st, StepWidth w) { return HWY_DYNAMIC_DISPATCH(StepFnHalfT)(st, w); }

}  // namespace dvm::vm
#endif
