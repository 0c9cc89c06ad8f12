// Virtual instructions and the SIMD micro-kernels that implement them.
//
// A virtual instruction is a handler plus pre-decoded operands. Handlers work
// on whole tiles held in per-thread scratch registers (32-bit lanes, padded to
// a multiple of 16 lanes so kernels run whole vectors without tails).
#pragma once

#include <cstdint>

#include "bytecode/isa.h"
#include "dvm/dvm.h"

namespace dvm::vm {

struct StageRt;
struct VInst;

struct TileCtx {
  uint8_t* regs = nullptr;   // this thread's scratch
  int64_t n[2] = {0, 0};     // lanes of a full / reduced tile
  int64_t start[2] = {0, 0}; // flat start of the tile in the full / reduced domain
  const StageRt* stage = nullptr;
  void* const* ptrs = nullptr;  // tensor base pointers by tensor index

  float* F(uint32_t off) const { return reinterpret_cast<float*>(regs) + off; }
  int32_t* I(uint32_t off) const { return reinterpret_cast<int32_t*>(regs) + off; }
};

using Handler = void (*)(const VInst&, TileCtx&);

struct VInst {
  Handler fn = nullptr;
  uint32_t dst = 0, a = 0, b = 0, c = 0;  // register lane offsets (reg * cap)
  uint32_t kbits = 0;                     // constant operand (scalar forms, FILL)
  uint16_t view = 0;                      // LOAD/STORE view index
  uint8_t level = 0;                      // 0 full, 1 reduced
  uint8_t type = 0, src = 0;              // result dtype, operand dtype
  uint8_t sub = 0;                        // raw b byte (reduce op of wide ops)
};

// The SIMD handler for an instruction (runtime ISA dispatch), or nullptr when
// the (opcode, dtype) pair has none. LOAD and STORE are handled by the VM.
Handler SelectHandler(const bc::Inst& in);

// Contiguous conversions between a tensor dtype and register lanes.
using ConvertFn = void (*)(void* dst, const void* src, int64_t n);
ConvertFn LoadConverter(DType t);
ConvertFn StoreConverter(DType t);

// erf approximation used by the ERF handler (scalar twin, for tests).
float ErfApprox(float x);

// Name of the SIMD target chosen at run time (e.g. "AVX2").
const char* TargetName();

}  // namespace dvm::vm
