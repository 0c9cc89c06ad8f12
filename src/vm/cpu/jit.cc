// Native code for hot fused elementwise programs (jit.h): Xbyak, x86-64
// AVX-512. The code does per lane what the threaded steps do
// (kernels_steps-inl.h, StepT), in the same order, and walks each segment as
// RunChainSegment does: a masked pass up to the first written stream's
// vector boundary, strips of four vectors, a masked pass over the rest.
#include "vm/cpu/jit.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <utility>
#include <vector>

#if DVM_HAVE_XBYAK
#include <xbyak/xbyak.h>
#include <xbyak/xbyak_util.h>
#endif

namespace dvm::vm {
namespace {

constexpr int64_t kDefaultThreshold = int64_t{1} << 20;

int64_t ThresholdFromEnv() {
  const char* e = std::getenv("DVM_JIT_LANES");
  if (e == nullptr || *e == '\0') return kDefaultThreshold;
  char* end = nullptr;
  const long long v = std::strtoll(e, &end, 10);
  return *end == '\0' ? static_cast<int64_t>(v) : kDefaultThreshold;
}

std::atomic<int64_t> g_threshold{ThresholdFromEnv()};
std::atomic<int64_t> g_compiled{0};

}  // namespace

int64_t NativeThresholdLanes() { return g_threshold.load(std::memory_order_relaxed); }
void SetNativeThresholdLanes(int64_t lanes) { g_threshold.store(lanes, std::memory_order_relaxed); }
int64_t NativeProgramsCompiled() { return g_compiled.load(std::memory_order_relaxed); }

#if DVM_HAVE_XBYAK
namespace {

using bc::Opcode;
using Xbyak::Address;
using Xbyak::Opmask;
using Xbyak::Reg64;
using Xbyak::Zmm;

constexpr int kVecs = 4;                         // vectors a strip
constexpr int kLanes = 16;                       // f32 lanes a vector
constexpr int kStripBytes = kVecs * kLanes * 4;  // 256
constexpr int kRegSlots = 4;                     // strip slots held in zmm8..zmm23
// A segment this long (lanes) or longer first runs up to a vector boundary of
// its first written stream (as RunChainSegment).
constexpr int kAlignFrom = 4 * kVecs * kLanes;

// Rounding immediates of VRNDSCALEPS as Highway's Floor, Ceil and Round use
// them (the direction, exceptions suppressed).
constexpr uint8_t kRoundFloor = 0x09, kRoundCeil = 0x0a, kRoundNearest = 0x08;

class ProgramGen : public Xbyak::CodeGenerator {
 public:
  ProgramGen(const ChainStep* steps, int ns, const uint32_t* const* regs, size_t bytes)
      : CodeGenerator(bytes, Xbyak::DontSetProtectRWE), st_(steps), ns_(ns), regs_(regs) {}

  // False where the program has something this generator does not emit.
  bool Supported() const {
    for (int k = 0; k < ns_; ++k) {
      const ChainStep& s = st_[k];
      for (int8_t sl : {s.src_slot, s.opnd_slot, s.out_slot})
        if (sl >= kRegSlots) return false;
      if (s.operand == ChainOperand::kNone && !UnaryOp(Opcode(s.op))) return false;
      if (s.operand != ChainOperand::kNone && !BinaryOp(Opcode(s.op))) return false;
    }
    return true;
  }

  void Generate() {
    AssignPointers();
    AssignHoists();
    const Reg64 P = r15, N = r14, segs = r13, i = r12, end = r11, t = r10;
    Xbyak::Label seg, done, strips, tail, next, masked;
    for (const Reg64& r : kSaved) push(r);
    mov(P, rdx);
    mov(N, rcx);
    movsxd(segs, r8d);
    L(seg);
    test(segs, segs);
    jle(done, T_NEAR);
    for (const auto& [idx, reg] : assigned_) mov(reg, ptr[P + 8 * idx]);
    mov(end, ptr[N]);
    shl(end, 2);
    xor_(i, i);
    if (ref_ >= 0) {
      cmp(end, kAlignFrom * 4);
      jb(strips, T_NEAR);
      mov(t, ptr[P + 8 * ref_]);
      shr(t, 2);
      and_(t, kLanes - 1);
      jz(strips, T_NEAR);
      neg(t);
      add(t, kLanes);  // lanes up to the boundary
      call(masked);
      lea(i, ptr[t * 4]);
    }
    L(strips);
    lea(t, ptr[i + kStripBytes]);
    cmp(t, end);
    ja(tail, T_NEAR);
    Body(false);
    add(i, kStripBytes);
    jmp(strips, T_NEAR);
    L(tail);
    cmp(i, end);
    jae(next, T_NEAR);
    mov(t, end);
    sub(t, i);
    shr(t, 2);  // lanes left, fewer than a strip
    call(masked);
    L(next);
    add(P, 3 * 8 * ns_);
    add(N, 8);
    dec(segs);
    jmp(seg, T_NEAR);
    L(done);
    vzeroupper();
    for (int k = static_cast<int>(std::size(kSaved)); k-- > 0;) pop(kSaved[k]);
    ret();

    // The lanes [i, i + t) (t in 1..64) in one pass, vector j under mask k(1 + j).
    L(masked);
    mov(r9, -1);
    bzhi(r9, r9, t);
    kmovq(k1, r9);
    kshiftrq(k2, k1, 16);
    kshiftrq(k3, k1, 32);
    kshiftrq(k4, k1, 48);
    Body(true);
    ret();

    align(64);
    L(consts_);
    for (uint32_t c : const_bits_) dd(c);
  }

 private:
  static constexpr Reg64 kSaved[] = {Reg64(Xbyak::Operand::RBX), Reg64(Xbyak::Operand::RBP),
                                     Reg64(Xbyak::Operand::R12), Reg64(Xbyak::Operand::R13),
                                     Reg64(Xbyak::Operand::R14), Reg64(Xbyak::Operand::R15)};

  static bool BinaryOp(Opcode op) {
    return op == Opcode::ADD || op == Opcode::SUB || op == Opcode::MUL || op == Opcode::DIV || op == Opcode::MAX ||
           op == Opcode::MIN;
  }
  static bool UnaryOp(Opcode op) { return bc::ProgramOp(op) && !BinaryOp(op); }

  // Tile-memory pointers (a step's source, operand or result with its lane
  // mask set) held in registers for a whole segment, in step order; the
  // others are read from P where they are used. The reference pointer for the
  // alignment pass: the first result in tile memory, else the first source.
  void AssignPointers() {
    static const Reg64 pool[] = {rax, rbx, rcx, rdx, rsi, rdi, rbp, r8};
    size_t next = 0;
    for (int k = 0; k < ns_; ++k) {
      const ChainStep& s = st_[k];
      const int64_t masks[3] = {s.msrc, s.mopnd, s.mout};
      for (int q = 0; q < 3; ++q) {
        const int idx = 3 * k + q;
        reg_of_[idx] = -1;
        if (masks[q] == 0 || next == std::size(pool)) continue;
        reg_of_[idx] = static_cast<int>(next);
        assigned_.emplace_back(idx, pool[next++]);
      }
    }
    for (int k = 0; k < ns_ && ref_ < 0; ++k)
      if (st_[k].mout) ref_ = 3 * k + 2;
    for (int k = 0; k < ns_ && ref_ < 0; ++k)
      if (st_[k].msrc) ref_ = 3 * k;
  }
  // Loads issued at the strip's start into the strip-slot registers the
  // program leaves free (four vectors each): tile registers the program
  // reads (as a source or an operand) that no earlier step has stored to,
  // the ones first read latest first, each loaded once for all its readers.
  // Earlier is safe: a tile register an earlier step wrote is not taken, and
  // an input that is also an output's buffer is read before any write to it
  // (InPlaceSafe). A stream the program reads late then starts its misses
  // with the strip's first ones.
  void AssignHoists() {
    std::fill(std::begin(hoist_), std::end(hoist_), -1);
    if (regs_ == nullptr) return;
    int used = 0;
    for (int k = 0; k < ns_; ++k)
      for (int8_t sl : {st_[k].src_slot, st_[k].opnd_slot, st_[k].out_slot}) used = std::max(used, sl + 1);
    auto reads_tile = [&](int k, int q) {
      const ChainStep& s = st_[k];
      return q == 0 ? s.load && s.msrc != 0 : ReadsOperand(s.operand) && s.mopnd != 0;
    };
    auto stored_before = [&](int k, uint32_t r) {
      for (int j = 0; j < k; ++j)
        if (st_[j].store && st_[j].mout && regs_[2][j] == r) return true;
      return false;
    };
    // First reads of each register, none at step 0 (already the strip's start).
    std::vector<std::pair<int, uint32_t>> first;  // (step, register)
    for (int k = 0; k < ns_; ++k)
      for (int q = 0; q < 2; ++q) {
        if (!reads_tile(k, q)) continue;
        const uint32_t r = regs_[q][k];
        bool seen = false;
        for (const auto& f : first) seen = seen || f.second == r;
        if (!seen) first.emplace_back(k, r);
      }
    int group = used;
    for (size_t f = first.size(); f-- > 0 && group < kRegSlots;) {
      const auto [k0, r] = first[f];
      if (k0 == 0 || stored_before(k0, r)) continue;
      bool any = false;
      for (int k = k0; k < ns_ && !stored_before(k, r); ++k)
        for (int q = 0; q < 2; ++q)
          if (reads_tile(k, q) && regs_[q][k] == r) {
            if (!any) hoisted_.push_back(3 * k + q);  // loaded through the first reader's pointer
            hoist_[3 * k + q] = group;
            any = true;
          }
      group += any;
    }
  }
  // The register holding pointer idx (r9, loaded here, where none does).
  Reg64 PtrReg(int idx) {
    if (reg_of_[idx] >= 0) return assigned_[static_cast<size_t>(reg_of_[idx])].second;
    mov(r9, ptr[r15 + 8 * idx]);
    return r9;
  }

  static Zmm X(int j) { return Zmm(j); }                        // the value
  static Zmm Y(int j) { return Zmm(4 + j); }                    // the operand
  static Zmm Slot(int s, int j) { return Zmm(8 + 4 * s + j); }  // strip slot s
  static Zmm T(int j) { return Zmm(24 + j); }                   // scratch

  // Byte offset of constant bits c in the table after the code.
  int Const(uint32_t c) {
    for (size_t q = 0; q < const_bits_.size(); ++q)
      if (const_bits_[q] == c) return static_cast<int>(4 * q);
    const_bits_.push_back(c);
    return static_cast<int>(4 * (const_bits_.size() - 1));
  }
  int ConstF(float f) {
    uint32_t c;
    std::memcpy(&c, &f, 4);
    return Const(c);
  }
  Address Bcast(int off) { return ptr_b[rip + consts_ + off]; }  // {1to16}
  Address Scalar(int off) { return ptr[rip + consts_ + off]; }

  void Load(const Zmm& z, const Reg64& base, int j, bool masked) {
    if (masked)
      vmovups(z | Opmask(1 + j) | T_z, ptr[base + r12 + 64 * j]);
    else
      vmovups(z, ptr[base + r12 + 64 * j]);
  }
  void Store(const Reg64& base, int j, const Zmm& z, bool masked) {
    if (masked)
      vmovups(ptr[base + r12 + 64 * j] | Opmask(1 + j), z);
    else
      vmovups(ptr[base + r12 + 64 * j], z);
  }

  // d = a op b (b a register or a broadcast constant), as ChainBinary.
  void Binary(Opcode op, const Zmm& d, const Zmm& a, const Xbyak::Operand& b, int j) {
    switch (op) {
      case Opcode::ADD:
        vaddps(d, a, b);
        return;
      case Opcode::SUB:
        vsubps(d, a, b);
        return;
      case Opcode::MUL:
        vmulps(d, a, b);
        return;
      case Opcode::DIV:
        vdivps(d, a, b);
        return;
      default: {
        // MaxP / MinP: the x86 max/min, then a NaN in b, then a NaN in a
        // (b is a register here).
        const Zmm& bz = static_cast<const Zmm&>(b);
        vcmpps(k5, bz, bz, 3);  // unordered: b is NaN
        vcmpps(k6, a, a, 3);
        if (op == Opcode::MAX)
          vmaxps(T(j), a, bz);
        else
          vminps(T(j), a, bz);
        vmovaps(T(j) | k5, bz);
        vmovaps(T(j) | k6, a);
        vmovaps(d, T(j));
        return;
      }
    }
  }

  // x = op(x), as LightUnary.
  void Unary(Opcode op, const Zmm& x, int j) {
    switch (op) {
      case Opcode::SQRT:
        vsqrtps(x, x);
        return;
      case Opcode::RSQRT:  // 1 / sqrt(x): two roundings, as LightUnary
        vsqrtps(x, x);
        [[fallthrough]];
      case Opcode::RECIP:
        vbroadcastss(T(j), Scalar(ConstF(1.0f)));
        vdivps(x, T(j), x);
        return;
      case Opcode::ABS:
        vpandd(x, x, Bcast(Const(0x7fffffffu)));
        return;
      case Opcode::NEG:
        vpxord(x, x, Bcast(Const(0x80000000u)));
        return;
      case Opcode::RELU:
        vpxord(T(j), T(j), T(j));
        vcmpps(k5, x, T(j), 0x11);  // less than, ordered
        vmovaps(x | k5, T(j));
        return;
      case Opcode::FLOOR:
        vrndscaleps(x, x, kRoundFloor);
        return;
      case Opcode::CEIL:
        vrndscaleps(x, x, kRoundCeil);
        return;
      default:
        vrndscaleps(x, x, kRoundNearest);
        return;
    }
  }

  // x / k for the four vectors as UniformDivisor::Divide4 does it: by the
  // reciprocal with one FMA correction where every lane is in the range
  // where that gives the division's bits (k itself is: s.k_ok), else a
  // true division. (In a masked pass the lanes outside the masks only make
  // the check fail more often: either way the lanes kept get the bits.)
  void DivideByConstant(const ChainStep& s) {
    const int abs_mask = Const(0x7fffffffu), lo = Const(0x0d800000u), span = Const(0x64000000u);
    const int k = ConstF(s.k), rk = ConstF(s.rk), nk = ConstF(-s.k);
    Xbyak::Label slow, join;
    for (int j = 0; j < kVecs; ++j) {
      vpandd(T(j), X(j), Bcast(abs_mask));
      vpsubd(T(j), T(j), Bcast(lo));
    }
    vpmaxud(T(0), T(0), T(1));
    vpmaxud(T(2), T(2), T(3));
    vpmaxud(T(0), T(0), T(2));
    vpcmpud(k5, T(0), Bcast(span), 1);  // unsigned less than
    kortestw(k5, k5);                   // CF: all 16 lanes
    jnc(slow, T_NEAR);
    for (int j = 0; j < kVecs; ++j) {
      vmulps(T(j), X(j), Bcast(rk));       // q0 = x * (1 / k)
      vfmadd231ps(X(j), T(j), Bcast(nk));  // e = x - q0 * k (exact)
      vfmadd132ps(X(j), T(j), Bcast(rk));  // q = e * (1 / k) + q0
    }
    jmp(join, T_NEAR);
    L(slow);
    for (int j = 0; j < kVecs; ++j) vdivps(X(j), X(j), Bcast(k));
    L(join);
  }

  // One strip (masked: the lanes the masks k1..k4 select).
  void Body(bool masked) {
    for (int idx : hoisted_) {
      const Reg64 b = PtrReg(idx);
      for (int j = 0; j < kVecs; ++j) Load(Slot(hoist_[idx], j), b, j, masked);
    }
    for (int k = 0; k < ns_; ++k) Step(k, masked);
  }

  void Step(int k, bool masked) {
    const ChainStep& s = st_[k];
    const Opcode op = Opcode(s.op);
    if (s.load) {
      if (hoist_[3 * k] >= 0) {
        for (int j = 0; j < kVecs; ++j) vmovaps(X(j), Slot(hoist_[3 * k], j));
      } else if (s.msrc) {
        const Reg64 b = PtrReg(3 * k);
        for (int j = 0; j < kVecs; ++j) Load(X(j), b, j, masked);
      } else {
        for (int j = 0; j < kVecs; ++j) vmovaps(X(j), Slot(s.src_slot, j));
      }
    }
    const ChainOperand o = s.operand;
    if (o == ChainOperand::kNone) {
      for (int j = 0; j < kVecs; ++j) Unary(op, X(j), j);
    } else if (o == ChainOperand::kConst && !s.rev && op == Opcode::DIV && s.k_ok) {
      DivideByConstant(s);
    } else if (o == ChainOperand::kConst && !s.rev && op != Opcode::MAX && op != Opcode::MIN) {
      for (int j = 0; j < kVecs; ++j) Binary(op, X(j), X(j), Bcast(ConstF(s.k)), j);
    } else {
      Zmm y[kVecs] = {Y(0), Y(1), Y(2), Y(3)};
      if (o == ChainOperand::kConst) {
        vbroadcastss(Y(0), Scalar(ConstF(s.k)));
        for (Zmm& z : y) z = Y(0);
      } else if (o == ChainOperand::kAcc) {
        for (int j = 0; j < kVecs; ++j) y[j] = X(j);
      } else if (hoist_[3 * k + 1] >= 0) {  // loaded at the strip's start
        for (int j = 0; j < kVecs; ++j) y[j] = Slot(hoist_[3 * k + 1], j);
      } else if (s.mopnd) {  // from tile memory
        const Reg64 b = PtrReg(3 * k + 1);
        for (int j = 0; j < kVecs; ++j) Load(Y(j), b, j, masked);
      } else {  // from a slot
        for (int j = 0; j < kVecs; ++j) y[j] = Slot(s.opnd_slot, j);
      }
      if (o == ChainOperand::kRegAdd || o == ChainOperand::kRegSub || o == ChainOperand::kRegMul) {
        const Opcode op2 = o == ChainOperand::kRegAdd   ? Opcode::ADD
                           : o == ChainOperand::kRegSub ? Opcode::SUB
                                                        : Opcode::MUL;
        const int c = ConstF(s.k);
        for (int j = 0; j < kVecs; ++j) {
          Binary(op2, Y(j), y[j], Bcast(c), j);
          y[j] = Y(j);
        }
      }
      for (int j = 0; j < kVecs; ++j) {
        if (s.rev)
          Binary(op, X(j), y[j], X(j), j);
        else
          Binary(op, X(j), X(j), y[j], j);
      }
    }
    if (s.store) {
      if (s.mout) {
        const Reg64 b = PtrReg(3 * k + 2);
        for (int j = 0; j < kVecs; ++j) Store(b, j, X(j), masked);
      } else {
        for (int j = 0; j < kVecs; ++j) vmovaps(Slot(s.out_slot, j), X(j));
      }
    }
  }

  const ChainStep* st_;
  int ns_;
  const uint32_t* const* regs_;
  int reg_of_[3 * kMaxChainSteps] = {};
  int hoist_[3 * kMaxChainSteps] = {};  // register group of a load issued at the strip's start, or -1
  std::vector<int> hoisted_;
  std::vector<std::pair<int, Reg64>> assigned_;
  int ref_ = -1;
  std::vector<uint32_t> const_bits_;
  Xbyak::Label consts_;
};

class XbyakCode : public NativeCode {
 public:
  explicit XbyakCode(std::unique_ptr<ProgramGen> gen) : gen_(std::move(gen)) {}
  ChainRunFn fn() const override { return gen_->getCode<ChainRunFn>(); }

 private:
  std::unique_ptr<ProgramGen> gen_;
};

bool CpuOk() {
  static const bool ok = [] {
    const Xbyak::util::Cpu cpu;
    using C = Xbyak::util::Cpu;
    return cpu.has(C::tAVX512F) && cpu.has(C::tAVX512BW) && cpu.has(C::tBMI2);
  }();
  return ok;
}

}  // namespace

bool NativeSupported() { return CpuOk(); }

std::unique_ptr<NativeCode> CompileNative(const ChainStep* steps, int nsteps, const uint32_t* const regs[3]) {
  if (!CpuOk() || nsteps <= 0 || nsteps > kMaxChainSteps) return nullptr;
  // Code bytes: two bodies (strips, masked pass) of at most ~12 instructions
  // of at most 11 bytes per step and vector, the loops and the constants.
  const size_t bytes = (4096 + static_cast<size_t>(nsteps) * 2 * kVecs * 12 * 11 + 4095) / 4096 * 4096;
  try {
    auto gen = std::make_unique<ProgramGen>(steps, nsteps, regs, bytes);
    if (!gen->Supported()) return nullptr;
    gen->Generate();
    if (!gen->setProtectModeRE(false)) return nullptr;
    g_compiled.fetch_add(1, std::memory_order_relaxed);
    return std::make_unique<XbyakCode>(std::move(gen));
  } catch (const Xbyak::Error&) {
    return nullptr;  // out of code space or executable memory refused: the threaded code runs
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}

#else  // no Xbyak in this build: the threaded code runs everywhere

bool NativeSupported() { return false; }
std::unique_ptr<NativeCode> CompileNative(const ChainStep*, int, const uint32_t* const*) { return nullptr; }

#endif

}  // namespace dvm::vm
