// The DVM instruction set: one table from which the opcode enum, the names,
// the verifier's operand rules, the decoder's handler lookup and the
// disassembler all come. Adding an opcode is one line here plus its handler.
//
// Every instruction is 8 bytes, little-endian:
//
//   byte  0      1      2      3      4      5        6..7
//       +------+------+------+------+------+--------+--------+
//       |  op  | type | dst  |  a   |  b   | flags  |   c    |
//       +------+------+------+------+------+--------+--------+
//
//   type   dtype of the result (DType); it selects the f32 or i32 handler.
//   flags  bits 0-1: form of a binary op (0 = R[a] op R[b], 1 = R[a] op K[c],
//          2 = K[c] op R[a]); bits 2-4: dtype of operand a (the source
//          dtype of CAST, the compared dtype of EQ..GE); bit 7: level
//          (0 = full tile, 1 = reduced tile).
//   c      view index (LOAD/STORE), constant index (FILL, scalar forms),
//          third register (SELECT).
//
// Registers are tile buffers of 32-bit lanes in per-thread scratch: f32 for
// f32/f16/bf16 values, i32 for i32/i8/bool values. A full-level operand has
// the tile's full length; a reduced-level operand one lane per reduced row.
#pragma once

#include <cstdint>

namespace dvm::bc {

// Operand kinds, checked by the verifier.
//   kLoad   dst := view[c]           kStore  view[c] := R[a]
//   kFill   dst := K[c]              kUn     dst := f(R[a])
//   kBin    dst := R[a] op R[b] (or a scalar form)
//   kSel    dst := R[a] ? R[b] : R[c]
//   kCast   dst := cast(R[a]) from the operand dtype to dtype `type`
//   kRed    dst (reduced) := reduce each row of R[a] (full)
//   kBcast  dst (full) := R[a] (reduced) repeated over each row
//   kWide   f64 accumulators of COL reductions: a wide register W[r] takes
//           the lanes of registers r and r+1; b holds the ReduceOp
enum class Kind : uint8_t { kLoad, kStore, kFill, kUn, kBin, kSel, kCast, kRed, kBcast, kWide };

// Type classes an instruction's `type` may have.
//   F: floats only.  N: numbers (floats, i32, i8).  A: any dtype.
//   B: result is bool (operands of any dtype, given by the flags).
// clang-format off
#define DVM_OPCODES(X)                                                          \
  /* name       kind         types  meaning */                                  \
  X(LOAD,       kLoad,       A,     "R[dst] := view[c] converted to registers") \
  X(STORE,      kStore,      A,     "view[c] := R[a] converted to the tensor dtype") \
  X(FILL,       kFill,       A,     "R[dst] := K[c] in every lane")             \
  X(COPY,       kUn,         A,     "R[dst] := R[a]")                           \
  X(SQRT,       kUn,         F,     "R[dst] := sqrt(R[a])")                     \
  X(RSQRT,      kUn,         F,     "R[dst] := 1 / sqrt(R[a])")                 \
  X(ABS,        kUn,         N,     "R[dst] := |R[a]|")                         \
  X(NEG,        kUn,         N,     "R[dst] := -R[a]")                          \
  X(EXP,        kUn,         F,     "R[dst] := exp(R[a])")                      \
  X(LOG,        kUn,         F,     "R[dst] := log(R[a])")                      \
  X(RECIP,      kUn,         F,     "R[dst] := 1 / R[a]")                       \
  X(TANH,       kUn,         F,     "R[dst] := tanh(R[a])")                     \
  X(SIGMOID,    kUn,         F,     "R[dst] := 1 / (1 + exp(-R[a]))")           \
  X(ERF,        kUn,         F,     "R[dst] := erf(R[a])")                      \
  X(RELU,       kUn,         N,     "R[dst] := R[a] < 0 ? 0 : R[a]")            \
  X(SIN,        kUn,         F,     "R[dst] := sin(R[a])")                      \
  X(COS,        kUn,         F,     "R[dst] := cos(R[a])")                      \
  X(FLOOR,      kUn,         N,     "R[dst] := floor(R[a])")                    \
  X(CEIL,       kUn,         N,     "R[dst] := ceil(R[a])")                     \
  X(ROUND,      kUn,         N,     "R[dst] := round half to even(R[a])")       \
  X(ISFINITE,   kUn,         B,     "R[dst] := R[a] is finite")                 \
  X(NOT,        kUn,         B,     "R[dst] := R[a] == 0")                      \
  X(ADD,        kBin,        N,     "R[dst] := R[a] + R[b]")                    \
  X(SUB,        kBin,        N,     "R[dst] := R[a] - R[b]")                    \
  X(MUL,        kBin,        N,     "R[dst] := R[a] * R[b]")                    \
  X(DIV,        kBin,        N,     "R[dst] := R[a] / R[b] (ints: trunc, x/0 = 0)") \
  X(POW,        kBin,        N,     "R[dst] := R[a] ** R[b]")                   \
  X(MAX,        kBin,        A,     "R[dst] := max(R[a], R[b]) (NaN wins)")     \
  X(MIN,        kBin,        A,     "R[dst] := min(R[a], R[b]) (NaN wins)")     \
  X(EQ,         kBin,        B,     "R[dst] := R[a] == R[b]")                   \
  X(NE,         kBin,        B,     "R[dst] := R[a] != R[b]")                   \
  X(LT,         kBin,        B,     "R[dst] := R[a] < R[b]")                    \
  X(LE,         kBin,        B,     "R[dst] := R[a] <= R[b]")                   \
  X(GT,         kBin,        B,     "R[dst] := R[a] > R[b]")                    \
  X(GE,         kBin,        B,     "R[dst] := R[a] >= R[b]")                   \
  X(AND,        kBin,        B,     "R[dst] := R[a] != 0 && R[b] != 0")         \
  X(OR,         kBin,        B,     "R[dst] := R[a] != 0 || R[b] != 0")         \
  X(SELECT,     kSel,        A,     "R[dst] := R[a] != 0 ? R[b] : R[c]")        \
  X(CAST,       kCast,       A,     "R[dst] := R[a] cast to dtype type")        \
  X(RSUM,       kRed,        N,     "R[dst][i] := sum of row i of R[a]")        \
  X(RMAX,       kRed,        A,     "R[dst][i] := max of row i of R[a]")        \
  X(RMIN,       kRed,        A,     "R[dst][i] := min of row i of R[a]")        \
  X(RPROD,      kRed,        N,     "R[dst][i] := product of row i of R[a]")    \
  X(BCAST,      kBcast,      A,     "R[dst][i*K+j] := R[a][i]")                \
  X(WFILL,      kWide,       F,     "W[dst] := identity of reduce op b, in f64") \
  X(WACC,       kWide,       F,     "W[dst] := W[dst] op_b R[a], in f64")       \
  X(WNARROW,    kWide,       F,     "R[dst] := W[a] rounded to f32")            \
  X(GELU,       kUn,         F,     "R[dst] := (x * 0.5) * (tanh((x + x * x * x * A) * C) + 1), x = R[a]: GELU, tanh form, each step rounded to f32 as written (A = 0.044715f, C = 0.7978846f)")
// clang-format on

// The constants of GELU (tanh form) as f32: codegen fuses the op sequence
// only when its scalars round to these.
constexpr float kGeluA = 0.044715f;
constexpr float kGeluC = static_cast<float>(0.7978845608028654);  // sqrt(2 / pi)

enum class Opcode : uint8_t {
#define DVM_X(name, kind, types, doc) name,
  DVM_OPCODES(DVM_X)
#undef DVM_X
      kCount
};
constexpr int kNumOpcodes = static_cast<int>(Opcode::kCount);

enum class TypeClass : uint8_t { F, N, A, B };

struct OpInfo {
  const char* name;
  Kind kind;
  TypeClass types;
  const char* doc;
};

inline constexpr OpInfo kOpInfo[] = {
#define DVM_X(name, kind, types, doc) {#name, Kind::kind, TypeClass::types, doc},
    DVM_OPCODES(DVM_X)
#undef DVM_X
};

// Instruction flags.
constexpr uint8_t kFormMask = 0x3;
constexpr uint8_t kFormRR = 0, kFormRK = 1, kFormKR = 2;
constexpr uint8_t kLevelRed = 0x80;
constexpr int kSrcShift = 2;
constexpr uint8_t kSrcMask = 0x7 << kSrcShift;
inline uint8_t MakeFlags(uint8_t form, uint8_t src_dtype, bool red) {
  return static_cast<uint8_t>(form | (src_dtype << kSrcShift) | (red ? kLevelRed : 0));
}

struct Inst {
  uint8_t op, type, dst, a, b, flags;
  uint16_t c;
};
static_assert(sizeof(Inst) == 8);

// The f32 elementwise ops a CPU VM fused program runs (vm.cc
// FuseChainPrograms; kernels_steps.cc has a step function for each: the short
// ones; EXP, TANH and the like stay single passes). Codegen sizes tiles by
// it (a body of only these keeps just its stored values in tile scratch).
constexpr bool ProgramOp(Opcode op) {
  switch (op) {
    case Opcode::ADD:
    case Opcode::SUB:
    case Opcode::MUL:
    case Opcode::DIV:
    case Opcode::MAX:
    case Opcode::MIN:
    case Opcode::SQRT:
    case Opcode::RSQRT:
    case Opcode::ABS:
    case Opcode::NEG:
    case Opcode::RECIP:
    case Opcode::RELU:
    case Opcode::FLOOR:
    case Opcode::CEIL:
    case Opcode::ROUND:
      return true;
    default:
      return false;
  }
}

}  // namespace dvm::bc
