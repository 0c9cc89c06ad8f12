// Native code for hot fused elementwise programs (a second tier under the
// threaded code of kernels_steps*.cc; docs/design.md, "Native programs").
//
// A fused program (ChainStep list, FuseChainPrograms) first runs as threaded
// code: ready as soon as the bytecode is decoded, nothing to compile. An
// executable whose programs have run over JitThresholdLanes() lanes in all
// has them compiled once to x86-64 AVX-512 code (Xbyak), which then runs in
// place of the runner with the same arguments and the same bits: the same
// operations per lane in the same order, nothing contracted into an FMA, a
// division by a constant by its reciprocal only where that gives the
// division's bits (as the threaded steps). Values that live inside the
// program (strip slots) stay in vector registers.
#ifndef DVM_VM_CPU_JIT_H_
#define DVM_VM_CPU_JIT_H_

#include <cstdint>
#include <memory>

#include "vm/cpu/kernels.h"

namespace dvm::vm {

// Owns a compiled program's code (executable memory, freed with it).
class NativeCode {
 public:
  virtual ~NativeCode() = default;
  virtual ChainRunFn fn() const = 0;
};

// The native code of steps[0..nsteps) (steps[nsteps] the kChainEnd step), or
// null where this build (no Xbyak), the CPU (AVX-512F/BW and BMI2 needed) or
// the program (more strip slots than there are registers for) is not
// supported, or where the code could not be made executable.
// regs[q][k] (q: source, operand, result; may be null) are step k's tile
// registers (ChainProgram::src, opnd, out): a load no earlier step's stored
// result feeds is issued at the strip's start where registers allow.
std::unique_ptr<NativeCode> CompileNative(const ChainStep* steps, int nsteps, const uint32_t* const regs[3] = nullptr);

// Lanes an executable's fused programs run, summed over its launches, before
// it compiles them (default 2^20; the environment variable DVM_JIT_LANES sets
// it at start-up; negative: never).
int64_t NativeThresholdLanes();
void SetNativeThresholdLanes(int64_t lanes);
// Programs compiled in this process so far (tests).
int64_t NativeProgramsCompiled();
// Whether CompileNative can compile anything here (build and CPU).
bool NativeSupported();

}  // namespace dvm::vm

#endif  // DVM_VM_CPU_JIT_H_
