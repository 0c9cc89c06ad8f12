// Virtual instructions and the SIMD micro-kernels that implement them.
//
// A virtual instruction is a handler plus pre-decoded operands. Handlers work
// on whole tiles held in per-thread scratch registers (32-bit lanes, padded to
// a multiple of 16 lanes so kernels run whole vectors without tails).
#pragma once

#include <cstdint>
#include <vector>

#include "bytecode/isa.h"
#include "dvm/dvm.h"

namespace dvm::vm {

struct StageRt;
struct VInst;

constexpr uint32_t kNoBind = 0xffffffffu;
constexpr uint16_t kNoForward = 0xffff;

// Registers: each has a slot in this thread's scratch. A register is read
// through p[r], which a LOAD may point straight at the tensor (zero copy);
// every write goes to the slot (W resets p[r]), so tensors are never written
// through a register. Handlers fetch their operands before calling W.
struct TileCtx {
  uint8_t* regs = nullptr;    // this thread's scratch
  size_t slot_bytes = 0;      // bytes per register slot
  const void** p = nullptr;   // current data of each register
  int64_t n[2] = {0, 0};      // lanes of a full / reduced tile
  int64_t start[2] = {0, 0};  // flat start of the tile in the full / reduced domain
  const StageRt* stage = nullptr;
  void* const* ptrs = nullptr;  // tensor base pointers by tensor index
  uint32_t bind_reg = kNoBind;  // a register whose write goes to bind_ptr
  void* bind_ptr = nullptr;
  uint8_t* inv = nullptr;   // this thread's expanded row-invariant loads
  uint32_t inv_filled = 0;  // which of them this job has expanded
  // A tile whose length is not a multiple of 16 runs in place (StageRt::
  // ragged): its consumers never read or write past n lanes.
  bool ragged = false;

  template <typename T>
  const T* R(uint32_t r) const {
    return static_cast<const T*>(p[r]);
  }
  template <typename T>
  T* W(uint32_t r) const {
    void* q = r == bind_reg ? bind_ptr : regs + r * slot_bytes;
    p[r] = q;
    return static_cast<T*>(q);
  }
  // A wide (f64) accumulator: always in scratch, registers r and r+1.
  double* Acc(uint32_t r) const { return reinterpret_cast<double*>(regs + r * slot_bytes); }
};

using Handler = void (*)(const VInst&, TileCtx&);

struct VInst {
  Handler fn = nullptr;
  uint32_t dst = 0, a = 0, b = 0, c = 0;  // register numbers
  uint32_t kbits = 0;                     // constant operand (scalar forms, FILL)
  uint16_t view = 0;                      // LOAD/STORE view index
  uint8_t level = 0;                      // 0 full, 1 reduced
  uint8_t type = 0, src = 0;              // result dtype, operand dtype
  uint8_t sub = 0;                        // raw b byte (reduce op of wide ops)
  uint16_t fwd_view = kNoForward;         // store forwarding (see vm.cc)
  Handler fn2 = nullptr;                  // the handler a forwarding wrapper runs
  uint32_t kbits2 = 0;                    // second constant (fused chains)
  uint8_t form = 0;                       // binary ops: bc form, or kFormRow
  bool fused = false;                     // part of a decode-time fusion
  uint8_t inv = 0;                        // row-invariant LOAD: its slot + 1 (vm.cc FindInvariantLoads)
  const void* aux = nullptr;              // a fused program's steps (vm.cc FuseChainPrograms)
};
// VInst::form of a binary op whose b operand is a reduced register broadcast
// over each row (vm.cc FuseRowBroadcasts).
constexpr uint8_t kFormRow = 3;

// The SIMD handler for an instruction (runtime ISA dispatch), or nullptr when
// the (opcode, dtype) pair has none. LOAD and STORE are handled by the VM.
Handler SelectHandler(const bc::Inst& in);

// Contiguous conversions between a tensor dtype and register lanes.
using ConvertFn = void (*)(void* dst, const void* src, int64_t n);
ConvertFn LoadConverter(DType t);
ConvertFn StoreConverter(DType t);

// WACC of reduce op `op` (0 sum, 1 max, 2 min, 3 prod) over `rows` f32 rows
// of `cols` lanes, row r at x + r * stride, into the f64 accumulators w:
// bit-identical to one WACC per row in row order.
using ColAccFn = void (*)(double* w, const float* x, int64_t stride, int64_t rows, int64_t cols);
ColAccFn ColAccumulator(int op);

// The handler of a float binary op (ADD, SUB, MUL, DIV, MAX, MIN) whose
// operand b is a reduced register broadcast over each row of a ROW tile
// (BCAST fused into its reader), or nullptr.
Handler RowBroadcastHandler(const bc::Inst& in);
// Two f32 binary ops run as one pass (vm.cc FuseBinaryChains):
//   R[dst] = op2(op1(R[a], y), z), or op2(z, op1(R[a], y)) when z_first,
// op 0 add, 1 sub, 2 mul, 3 div (op2 may also be a unary op of the first
// result, no z: 4 exp, 5 GELU (tanh form), 6 sqrt); y / z kinds: 0 register
// (b / c), 1 constant (kbits / kbits2), 2 reduced register broadcast per
// row (b / c; ROW stages, or one value per tile), 3 a row of K lanes
// repeated along the domain (b / c point at the row's K lanes, K in kbits /
// kbits2; lane i of the tile reads column (start + i) % K: a bias read in
// place, vm.cc FindInvariantLoads; never with kind 2). The intermediate is
// rounded to f32 as the two instructions round it. nullptr for a
// combination that is not provided.
Handler ChainHandler(int op1, int op2, int y_kind, int z_kind, bool z_first);
// The chain exp(op1(R[a], y)) (ChainHandler(op1, 4, y_kind, 1)) and the
// RSUM of its result in one pass: R[dst] as the chain writes it, and R[c]
// per row as RSUM writes it, bit for bit.
Handler ChainExpSumHandler(int op1, int y_kind);
// ((R[a] - m) * r) * g + b (sub; else (R[a] * r) * g + b) in one pass: rows
// m = R[b], r = R[c], registers g = R[kbits], b = R[kbits2]. periodic_g /
// periodic_b: g / b point at one row of K lanes that every row of the tile
// reads (ROW stages, whole rows; vm.cc FindInvariantLoads).
Handler NormAffineHandler(bool sub, bool periodic_g = false, bool periodic_b = false);

// The handler of a float RSUM of x * x (a MUL of a register by itself fused
// into the RSUM reading it): the bits of the MUL then the RSUM.
Handler RowSumSquaresHandler();
// The same of (R[a] - m)^2, m a row operand (R[b][row]): SUB, MUL, RSUM.
Handler RowSumSqDevHandler();
// The RSUM of R[a] into R[dst] (its bits) and, in the same pass, each row's
// sum of squared deviations from its mean m = RN(sum * k) (k the f32 in
// kbits) into R[c]: within a bit of the two passes' result, or their bits
// (vm.cc FuseMoments).
Handler RowMomentsHandler();
// R[dst] = R[a], the n[level] lanes of the instruction's level (the
// handler of a CAST to the same dtype).
Handler CopyHandler();

// Whether x / y by the reciprocal of y and one FMA correction (Markstein)
// gives the divide's bits for every x in [2^-100, 2^100): |y| in
// [2^-20, 2^20] (kernels.cc UniformDivisor).
inline bool ReciprocalDivisionExact(float y) {
  const float ay = y < 0 ? -y : y;
  return ay >= 0x1p-20f && ay <= 0x1p20f;
}

// One instruction of a fused elementwise program (vm.cc FuseChainPrograms):
// a run of f32 ELEM instructions executed strip by strip, a few vectors at
// a time, with the value flowing from one instruction into the next held
// in vector registers (the accumulator) instead of a tile in memory. Step
// k: if `load`, acc = src[k]; then acc = op(acc, y) (op(y, acc) when `rev`;
// op(acc) for a unary op), y per `operand`; if `store`, out[k] = acc. Every
// step rounds to f32 as its instruction's handler does: the same bits.
// kRegAdd/kRegSub/kRegMul: y = opnd[k] + / - / * k, the step of a loaded
// value and a constant folded into its one reader (vm.cc FoldOperandSteps).
enum class ChainOperand : uint8_t { kNone, kConst, kReg, kAcc, kRegAdd, kRegSub, kRegMul };
constexpr int kNumChainOperands = 7;
constexpr bool ReadsOperand(ChainOperand o) { return o == ChainOperand::kReg || o >= ChainOperand::kRegAdd; }
struct ChainStep {
  uint8_t op = 0;  // bc::Opcode
  ChainOperand operand = ChainOperand::kNone;
  bool rev = false, load = false, store = false;
  float k = 0;                // kConst, kRegAdd/Sub/Mul (set by SetConstant)
  float rk = 0;               // 1 / k in f32 (a division by k goes by reciprocal)
  bool k_ok = false;          // k in the range where that gives the divide's bits
  const void* fn = nullptr;   // ChainStepFn(*this, kStrip)
  const void* fn1 = nullptr;  // ChainStepFn(*this, kOne)
  const void* fn0 = nullptr;  // ChainStepFn(*this, kPartial)
  // Strip slots (0..kMaxChainSlots-1; -1: none) for values that live only
  // inside the program: the result goes to slot out_slot, the source and
  // the operand come from src_slot / opnd_slot, instead of tile memory.
  int8_t src_slot = -1, opnd_slot = -1, out_slot = -1;
  // Masks of the lane index for the source, operand and result pointers:
  // all ones for tile memory, zero for a slot (the same lanes every strip)
  // or an unused pointer (SetMasks, after the slots are set).
  int64_t msrc = 0, mopnd = 0, mout = 0;
  void SetMasks() {
    msrc = load && src_slot < 0 ? ~int64_t{0} : 0;
    mopnd = ReadsOperand(operand) && opnd_slot < 0 ? ~int64_t{0} : 0;
    mout = store && out_slot < 0 ? ~int64_t{0} : 0;
  }
  void SetConstant(float c) {
    k = c;
    rk = 1.0f / c;
    k_ok = ReciprocalDivisionExact(c);
  }
};
// The threaded-code function of a step (op, operand kind and flags set),
// for strips of eight vectors, of one, of the lanes of four vectors that
// masks (passed in the last four vector arguments) select (a program's last
// lanes; null where masked loads could read past them: before AVX2), or of
// four vectors; for op kChainEnd, the function that ends a program.
// SetStepFns sets the first
// three (UseHalfStrips then replaces the strip function).
enum class StepWidth : uint8_t { kStrip, kOne, kPartial, kHalfStrip };
constexpr uint8_t kChainEnd = 0xff;
const void* ChainStepFn(const ChainStep& st, StepWidth w);
inline void SetStepFns(ChainStep& st) {
  st.fn = ChainStepFn(st, StepWidth::kStrip);
  st.fn1 = ChainStepFn(st, StepWidth::kOne);
  st.fn0 = ChainStepFn(st, StepWidth::kPartial);
}
constexpr int kMaxChainSteps = 32;
constexpr int kMaxChainSlots = 8;
// Runs `nsteps` (<= kMaxChainSteps) steps over n lanes; steps[nsteps] is a
// kChainEnd step. P[3k], P[3k + 1], P[3k + 2] are step k's source, operand
// and result pointers in tile memory (set where the step's mask is not
// zero; RunChainF sets its slots' pointers). Lanes past n are neither read
// nor written: the lanes after the last strip go by masked moves (AVX2 and
// later) or through copies. With nseg > 1,
// the program runs over nseg segments in turn, segment j with the pointers
// P[3 * nsteps * j ...] and n[j] lanes (a stacked launch's tiles of one
// program, run without returning to the VM between them).
using ChainRunFn = void (*)(const ChainStep* steps, int nsteps, const float** P, const int64_t* n, int nseg);
// The runner for strips of eight vectors, or of four (`half`: every step's
// fn then the kHalfStrip function).
ChainRunFn ChainRunner(bool half = false);
// Programs of at least this many steps (kChainEnd not counted) run in
// strips of four vectors. A strip of eight through Adam's twelve steps is
// ~380 uops, more than the core's reorder window (320 on Zen 4), so one
// strip's divider-bound tail does not overlap the next strip's loads; with
// four, two strips are in flight (300 stacked Adam tensors, one thread,
// out of L2: 707-801 -> 657-732 us; a threaded-code model of it 13-20%).
// Short programs keep eight: six steps over [65536] in L2 take 2-9% longer
// in strips of four (more step overhead per element, nothing to overlap).
constexpr int kHalfStripSteps = 10;
inline void UseHalfStrips(std::vector<ChainStep>& steps) {
  for (ChainStep& st : steps) st.fn = ChainStepFn(st, StepWidth::kHalfStrip);
}

// erf approximation used by the ERF handler (scalar twin, for tests).
float ErfApprox(float x);

// Name of the SIMD target chosen at run time (e.g. "AVX2").
const char* TargetName();

}  // namespace dvm::vm
