// The CPU virtual machine: verifies bytecode, decodes it once into virtual
// instructions and runs the stages' tile loops on the thread pool.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

#include "bytecode/format.h"
#include "vm/cpu/gemm.h"
#include "vm/cpu/jit.h"
#include "vm/cpu/kernels.h"

namespace dvm::vm {

struct ViewRt {
  uint16_t tensor = 0;
  DType dtype = DType::kFloat32;
  uint8_t esize = 4;
  int rank = 0;
  int64_t offset = 0;
  int64_t numel = 0;       // elements of the tensor
  bool zero_copy = false;  // storage is 32-bit lanes: contiguous runs load in place
  int cont_dim = -1;       // dims cont_dim.. are one contiguous run of `span` elements (-1: none)
  int64_t span = 1;
  int64_t dims[bc::kMaxRank] = {};
  int64_t strides[bc::kMaxRank] = {};
  ConvertFn load = nullptr, store = nullptr;
};

// Prefetches every cache line of [p, p + bytes) (a hint: any address will do).
inline void PrefetchLines(const void* p, size_t bytes) {
  const uintptr_t b = reinterpret_cast<uintptr_t>(p), e = b + bytes;
  for (uintptr_t a = b & ~uintptr_t{63}; a < e; a += 64) __builtin_prefetch(reinterpret_cast<const void*>(a));
}

// Whether input tensor `in` of verified program `p` may be given the very
// buffer of output tensor `out` (a launch in place: an optimizer's p' over
// p, x.add_(y)), with the result of separate buffers. Holds when lane i of
// both is the same element, read by the tile that writes it, before it
// writes it: one ELEM stage, every view of either tensor with the same
// offset and strides, the same dtype, and in the body every read of a
// value loaded from `in` (zero-copy loads read where they are used) at or
// before the first instruction that may write into `out` (its STORE, the
// instruction whose result the store forwards and that one's producer:
// Executable::ForwardStores, ForwardProducers). The VM keeps each lane's
// reads and writes in instruction order (fused programs run their steps in
// order per strip; a folded operand is not read past a store). Otherwise a
// launch copies the input first (kernel.cc).
bool InPlaceSafe(const bc::Program& p, int in, int out);

constexpr int kMaxColPairs = 8;

// A COL body pair "LOAD r, view; WACC w, r" run as one strip-mined pass over
// all rows of a tile (see Executable::SetupColFast).
struct ColPair {
  uint16_t view = 0;
  uint8_t acc = 0;      // the wide register
  int64_t rstride = 0;  // elements between consecutive rows of the view
  ColAccFn fn = nullptr;
};

// A workspace that only one row group touches, slab by slab: each thread
// keeps one slab of it (the row it is on) instead of the whole tensor
// (Executable::SetupRowLocal).
struct RowLocalWs {
  uint16_t tensor = 0;
  int64_t slab_bytes = 0;  // one row's share
  size_t buf_off = 0;      // where this thread's slab starts in its buffer
};

// A run of ELEM instructions fused into one program (Executable::
// FuseChainPrograms): the steps, and per step the registers its source,
// operand and result live in, and the view its result is forwarded into
// (kNoForward: none).
struct ChainProgram {
  ChainRunFn run = nullptr;      // RunChainF of the target the steps were chosen for
  std::vector<ChainStep> steps;  // the last a kChainEnd step
  std::vector<uint32_t> src, opnd, out;
  std::vector<uint16_t> fwd;
  // The program's native code (jit.h), set once its executable has compiled
  // it (Executable::CompileNativePrograms; launches running meanwhile keep `run`).
  mutable std::atomic<ChainRunFn> native{nullptr};
  mutable std::unique_ptr<NativeCode> native_code;
};

// Runs a program's steps over segments (ChainRunFn's arguments), natively
// where it has been compiled. Clang's -fsanitize=function would read a type
// signature in front of the callee, which generated code does not carry.
#if defined(__clang__)
__attribute__((no_sanitize("function")))
#endif
inline void
RunProgram(const ChainProgram& pg, int ns, const float** P, const int64_t* n, int nseg) {
  const ChainRunFn native = pg.native.load(std::memory_order_acquire);
  (native ? native : pg.run)(pg.steps.data(), ns, P, n, nseg);
}

// What a tile of a direct stage reads comes first (two cache lines: a
// stacked launch walks hundreds of stages, each cold; RunStageJob
// prefetches them).
struct StageRt {
  bc::Mode mode = bc::Mode::kElem;
  bool concurrent = false;
  // ELEM: the body is only in-place-capable LOADs, STOREs and fused
  // programs, which take a tile of any length at once (SetupRagged).
  bool ragged = false;
  bool row_join = false;  // continues the row group of the stage before
  int64_t n_full = 0, n_red = 0, ntiles = 0;
  int64_t p[4] = {};
  // An ELEM body of in-place LOADs, fused programs and STOREs of what they
  // forwarded (SetupDirect): a tile sets the programs' pointers from this
  // recipe and runs them, without the handlers (DirectTile).
  struct DirectPtr {
    enum Kind : uint8_t { kNull, kView, kScratch } kind = kNull;
    uint8_t k = 0;        // which of the program's pointers (3 per step: source, operand, result)
    uint16_t tensor = 0;  // kView
    uint32_t reg = 0;     // kScratch
    int64_t offset = 0;   // kView: the view's offset (elements)
  };
  struct DirectProgram {
    const ChainProgram* pg = nullptr;
    uint32_t nptrs = 0;  // its entries of direct_ptrs (the pointers it uses; the others are null)
  };
  std::vector<DirectProgram> direct;   // in body order
  std::vector<DirectPtr> direct_ptrs;  // of each program in turn
  bool direct_scratch = false;         // a pointer into scratch (a tile's room): no run of tiles as one
  int64_t group_rows = 0;
  std::vector<RowLocalWs> row_local;  // the first stage of a row group: its row-local workspaces
  size_t row_local_bytes = 0;         // per thread, padded
  std::vector<VInst> code;
  // The stage's bytecode instruction count: the parallelism decision weighs
  // lanes by it, not by code.size(), which fusion shrinks (a bias + residual
  // add fused to one handler still loads, adds and stores per lane).
  int64_t insts = 0;
  int sec[bc::kNumSections + 1] = {};  // section begin offsets into code
  std::vector<ViewRt> views;
  const bc::Gemm* gemm = nullptr;  // kGemm: the product (in the Program)
  GemmLib gemm_lib = GemmLib::kOpenBlas;  // kGemm: GemmLibFor(M, N, K, lda, ldb), once
  std::vector<ColPair> col_fast;   // kCol: the body as strip-mined pairs (empty: generic)
  // ELEM: (workspace, output) pairs this stage reads and stores element for
  // element (Executable::FindInPlaceStores; candidates for an alias).
  std::vector<std::pair<uint16_t, uint16_t>> in_place;
  std::vector<std::unique_ptr<ChainProgram>> chains;  // VInst::aux of ChainProgramHandler points here
};

class Executable {
 public:
  // Verifies and decodes; throws dvm::Error on malformed bytecode.
  explicit Executable(std::span<const uint8_t> bytecode);

  // ptrs[i] is the base of tensor i of the program (inputs, outputs and
  // workspaces, as the tensor table orders them).
  void Run(void* const* ptrs) const;

  // One parallel launch of Run: stages [begin, end), a row group or a group
  // of concurrent stages, on `threads` threads.
  struct LaunchGroup {
    size_t begin, end;
    int threads;
    bool row_group;
  };
  // Run's launches with `nthreads` threads in the pool, into `plan`.
  void Plan(int nthreads, std::vector<LaunchGroup>& plan) const;
  std::vector<LaunchGroup> Plan(int nthreads) const {
    std::vector<LaunchGroup> plan;
    Plan(nthreads, plan);
    return plan;
  }

  const bc::Program& program() const { return prog_; }
  // Pairs of instructions FuseBinaryChains runs as one (tests).
  int fused_chains() const { return chains_; }
  // SUB-of-a-row-value, MUL, RSUM triples FuseSquareSums runs as one (tests).
  int fused_deviations() const { return deviations_; }
  // Chain-then-RSUM pairs FuseChainSums runs as one (tests).
  int fused_chain_sums() const { return chain_sums_; }
  // Runs of ELEM instructions FuseChainPrograms runs as one program (tests).
  int fused_programs() const { return programs_; }
  // Values of fused programs kept in strip slots (AssignChainSlots; tests).
  int program_slots() const;
  // Steps of a loaded value and a constant folded into their reader
  // (FoldOperandSteps; tests).
  int folded_operands() const;
  // Fused programs long enough to run in strips of four vectors
  // (kHalfStripSteps; tests).
  int half_strip_programs() const;
  // Stages whose tiles run their fused program directly (SetupDirect; tests).
  int direct_stages() const {
    int n = 0;
    for (const StageRt& s : stages_) n += !s.direct.empty();
    return n;
  }
  // Workspaces that live in an output instead (SetupOutputAliases; tests).
  int output_aliases() const { return static_cast<int>(aliases_.size()); }
  // Producers forwarded into an output with the instruction that reads them
  // (ForwardProducers; tests).
  int forwarded_producers() const { return producers_forwarded_; }
  // Row-invariant LOADs expanded once per thread and launch (tests).
  int invariant_loads() const { return inv_loads_; }
  // Row-invariant LOADs whose readers read the row itself, row by row
  // (FindInvariantLoads; tests).
  int periodic_loads() const { return periodic_loads_; }
  // Sums run with the deviations pass after them in one pass (FuseMoments; tests).
  int fused_moments() const { return moments_; }
  // Registers per tile context: the program's, and the VM's own after them.
  int num_regs() const { return num_regs_; }
  // Workspaces that row groups keep one slab per thread of (tests).
  int row_local_workspaces() const {
    int n = 0;
    for (const StageRt& s : stages_) n += static_cast<int>(s.row_local.size());
    return n;
  }

 private:
  void SetupRowLocal();
  void SetupOutputAliases();
  static void FindInPlaceStores(const bc::Stage& s, StageRt& rt);
  static void DropNops(StageRt& rt);
  static void ForwardStores(const bc::Stage& s, StageRt& rt);
  int ForwardProducers(const bc::Stage& s, StageRt& rt);
  static void SetupColFast(const bc::Stage& s, StageRt& rt);
  // A pair FuseBinaryChains fused: op1 at j (now a nop), op2 at k, which
  // runs ChainHandler(op1, op2, y_kind, z_kind, z_first).
  struct ChainSig {
    int j, k, op1, op2, y_kind, z_kind;
    bool z_first;
  };
  void FindInvariantLoads(const bc::Stage& s, StageRt& rt, std::vector<ChainSig>& chains);
  static bool PeriodicReaders(const bc::Stage& s, StageRt& rt, int load, std::vector<ChainSig>& chains, bool apply);
  static void ElideRoundingCasts(const bc::Stage& s, StageRt& rt);
  static void FuseRowBroadcasts(const bc::Stage& s, StageRt& rt);
  static void FuseUniformLoads(const bc::Stage& s, StageRt& rt);
  int FuseSquareSums(const bc::Stage& s, StageRt& rt);           // returns the deviation sums fused
  int FuseMoments(const bc::Stage& s, StageRt& rt);              // returns the sum + deviations pairs fused
  // Returns the pairs fused, and records them in `chains`.
  static int FuseBinaryChains(const bc::Stage& s, StageRt& rt, std::vector<ChainSig>& chains);
  static int FuseChainSums(const bc::Stage& s, StageRt& rt);     // returns the chain + RSUM pairs fused
  int FuseChainPrograms(const bc::Stage& s, StageRt& rt) const;  // returns the programs made
  static void SetupRagged(StageRt& rt);
  void SetupDirect(StageRt& rt) const;
  void ShareChainPrograms();
  // Compiles the programs the stages run (jit.h) once they have run
  // NativeThresholdLanes() lanes in all (Run calls it; program_lanes_ a launch).
  void CompileNativePrograms() const;
  template <class Pred>
  int CountChainSteps(Pred pred) const;  // steps of the stages' programs for which pred holds

  bc::Program prog_;
  std::vector<StageRt> stages_;
  bool gemm_ = false;
  int chains_ = 0;
  int deviations_ = 0;
  int chain_sums_ = 0;
  int programs_ = 0;
  int producers_forwarded_ = 0;
  int moments_ = 0;
  int num_regs_ = 0;   // the program's registers and the VM's own (FuseMoments)
  int inv_loads_ = 0;  // row-invariant LOADs expanded once per job (FindInvariantLoads)
  int periodic_loads_ = 0;
  int64_t program_lanes_ = 0;                          // lanes a launch runs fused programs over
  mutable std::atomic<int64_t> program_lanes_run_{0};  // summed over launches, until compiled
  mutable std::atomic<bool> native_done_{false};       // compiled (or never to be)
  mutable std::mutex native_mu_;
  std::vector<std::pair<uint16_t, uint16_t>> aliases_;  // (workspace, output): the workspace's base is the output's

  // Run's plan for one thread count, with each group of concurrent stages
  // listed (its stages that have tiles, their first tile numbers, the
  // claim size): made by the first Run with that count and kept until the
  // executable goes (one per thread count used). Made per launch, it walked
  // every StageRt on the caller before the pool woke, each of them cold in
  // a stacked launch (300 Adam tensors: 300 stages).
  struct Launches {
    int nthreads = 0;
    std::vector<LaunchGroup> plan;
    struct Group {
      std::vector<const StageRt*> stages;
      std::vector<int64_t> first;  // first tile number of each stage; first.back() = tiles in all
      int64_t grain = 1;           // tiles a claim
    };
    std::vector<Group> groups;  // one per plan entry (empty for row groups)
  };
  // The launch path reads `launches_` (the last used) without a lock; a
  // new thread count takes the mutex (MakeLaunches).
  const Launches& LaunchesFor(int nthreads) const {
    const Launches* last = launches_.load(std::memory_order_acquire);
    return last && last->nthreads == nthreads ? *last : MakeLaunches(nthreads);
  }
  const Launches& MakeLaunches(int nthreads) const;
  mutable std::mutex launches_mu_;
  mutable std::vector<std::unique_ptr<const Launches>> launches_made_;  // under launches_mu_
  mutable std::atomic<const Launches*> launches_{nullptr};
};

}  // namespace dvm::vm
