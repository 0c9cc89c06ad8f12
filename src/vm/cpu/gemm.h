#pragma once
// f32 GEMM for the VM's GEMM stages: which library runs a block (docs/blas.md).
//
// Each block of a GEMM stage is one single-threaded library call on a thread
// of DVM's pool. Two libraries, chosen by measurement on the machine kinds
// this project runs on:
//  * oneDNN's sgemm (JIT-generated AVX-512 kernels) on CPUs with AVX-512 for
//    GEMMs of at least kOneDnnMinMacs multiply-adds, or whose B holds at
//    least kOneDnnMinB elements (few rows against a weight matrix: OpenBLAS
//    runs 2..16 rows of 768x768 at a third to a half of oneDNN's speed), or
//    of at least kOneDnnMinWideMacs with N >= kOneDnnMinWideN (attention's
//    12 heads of Q K^T at 128..200 tokens, 2 threads: 1.2-1.35x OpenBLAS,
//    while P V, N = 64, is 1.1-1.2x faster on OpenBLAS): 1.2-3x OpenBLAS's
//    single-thread throughput at the decoder's block shapes on Zen 4;
//  * OpenBLAS everywhere else: small GEMMs (oneDNN's per-call cost, ~0.2-0.5
//    us, loses 10-20% on attention's 64x64x64 head blocks and up to 6x on
//    4x4x64) and CPUs without AVX-512 (on Zen 3, oneDNN's AVX2 path ran
//    32x768x3072 at a third of OpenBLAS's speed).
// The choice goes by the whole GEMM (M, N, K of one batch matrix), not by
// the block, so every block of a GEMM, however many threads cut it, runs
// through one library: its results do not depend on the thread count
// (`MatMul.SameBitsForAnyThreadCount`).
// DVM_GEMM=openblas or DVM_GEMM=onednn in the environment forces one library
// for every block (read once, at the first GEMM or WarmGemm).
#include <cstdint>
#include <string>

namespace dvm::vm {

enum class GemmLib { kOpenBlas, kOneDnn };

inline constexpr int64_t kOneDnnMinMacs = int64_t{1} << 22;
inline constexpr int64_t kOneDnnMinB = int64_t{1} << 19;
inline constexpr int64_t kOneDnnMinWideMacs = int64_t{1} << 20, kOneDnnMinWideN = 128;

// C[m, n] (row stride ldc) = op(A) op(B) on the calling thread alone, with
// `lib` (GemmLibFor the whole GEMM). Row-major; op(A) is A^T when trans_a.
void Sgemm(GemmLib lib, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float* c, int64_t ldc);

// The same product through one library with its own threads (`threads`
// of them; OpenBLAS's process-wide count is left there): the baselines of
// `dvm bench matmul`. False when DVM was built without that library.
bool SgemmWith(GemmLib lib, int threads, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
               int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc);

// For the length of a launch with GEMM stages (`on`): OpenBLAS's own thread
// count 1, since the pool runs the blocks in parallel; restored after.
class OneThreadBlas {
 public:
  explicit OneThreadBlas(bool on);
  ~OneThreadBlas();
  OneThreadBlas(const OneThreadBlas&) = delete;
  OneThreadBlas& operator=(const OneThreadBlas&) = delete;

 private:
  int saved_ = 0;
};

// The library that runs the blocks of an M x N x K GEMM whose A and B rows
// are lda and ldb elements apart, under the policy. OpenBLAS takes its dims
// and strides as 32-bit int: a GEMM with any of them above 2^31 - 1 goes to
// oneDNN (64-bit dims) whatever the policy or DVM_GEMM say, and where DVM
// was built without oneDNN it is a dvm::Error naming the value (OpenBLAS
// would report an illegal parameter on stderr and leave C as it was).
GemmLib GemmLibFor(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb);
// Whether this build has oneDNN.
bool HaveOneDnn();
// oneDNN JIT-compiles its sgemm kernels at its first call in a process, of
// whatever size (28-38 ms on Zen 4; every later call, any shape or
// transpose, finds them), and that landed on a model's first large GEMM.
// WarmGemm makes that first call (8x8x8) now, once per process, where the
// policy uses oneDNN: Kernel::CodeGen calls it for a kernel with a matmul
// (CompiledGraph's kernels go through it), so the cost goes to compiling
// rather than to the first launch or request. (A thread
// doing it in the background raced oneDNN's exit-time destructors when the
// process ended within those milliseconds: crashes at exit.)
void WarmGemm();
// Whether WarmGemm has made that call in this process (tests).
bool GemmWarmed();
// One line for reports: the libraries and the policy in force.
std::string GemmPolicy();

}  // namespace dvm::vm
