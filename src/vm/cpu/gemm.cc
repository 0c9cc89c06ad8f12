#include "vm/cpu/gemm.h"

#include <cblas.h>

#include <atomic>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>

#include "ir/error.h"

#if DVM_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
// The OpenMP runtime oneDNN was built with (libgomp): the thread count of
// its calls is the calling thread's OpenMP setting. Declared here so that
// the library builds without the compiler's OpenMP headers.
extern "C" int omp_get_max_threads(void);
extern "C" void omp_set_num_threads(int);
#endif

namespace dvm::vm {
namespace {

struct Policy {
  bool onednn = false;  // oneDNN runs the large blocks (every block when forced)
  bool forced = false;  // by DVM_GEMM
};

Policy Decide() {
  Policy p;
  const char* env = std::getenv("DVM_GEMM");
  if (env && *env && std::strcmp(env, "auto") != 0) {
    if (std::strcmp(env, "openblas") == 0) {
      p.forced = true;
      return p;
    }
    if (std::strcmp(env, "onednn") == 0 && HaveOneDnn()) {
      p.onednn = p.forced = true;
      return p;
    }
    std::fprintf(stderr, "dvm: DVM_GEMM=%s is not one of openblas, %sauto; using auto\n", env,
                 HaveOneDnn() ? "onednn, " : "");
  }
#if defined(__x86_64__) || defined(__i386__)
  p.onednn = HaveOneDnn() && __builtin_cpu_supports("avx512f");
#endif
  return p;
}

const Policy& GetPolicy() {
  static const Policy p = Decide();
  return p;
}

void OpenBlas(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
              int64_t ldb, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(m),
              static_cast<int>(n), static_cast<int>(k), 1.0f, a, static_cast<int>(lda), b, static_cast<int>(ldb), 0.0f,
              c, static_cast<int>(ldc));
}

#if DVM_HAVE_ONEDNN
// oneDNN's sgemm with `threads` OpenMP threads; the calling thread's own
// OpenMP setting is put back after (it is the caller's: DVM's launches run
// on the caller's thread too).
void OneDnn(int threads, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
            int64_t ldb, float* c, int64_t ldc) {
  const int before = omp_get_max_threads();
  if (before != threads) omp_set_num_threads(threads);
  dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
  if (before != threads) omp_set_num_threads(before);
}
#endif

std::atomic<bool> gemm_warmed{false};

}  // namespace

bool HaveOneDnn() { return DVM_HAVE_ONEDNN != 0; }

void WarmGemm() {
#if DVM_HAVE_ONEDNN
  static std::once_flag once;
  if (GetPolicy().onednn)
    std::call_once(once, [] {
      float a[64] = {}, b[64] = {}, c[64];
      OneDnn(1, false, false, 8, 8, 8, a, 8, b, 8, c, 8);
      gemm_warmed.store(true);
    });
#endif
}
bool GemmWarmed() { return gemm_warmed.load(); }

OneThreadBlas::OneThreadBlas(bool on) : saved_(on ? openblas_get_num_threads() : 0) {
  if (saved_ > 1) openblas_set_num_threads(1);
}
OneThreadBlas::~OneThreadBlas() {
  if (saved_ > 1) openblas_set_num_threads(saved_);
}

GemmLib GemmLibFor(int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb) {
  // OpenBLAS's int: C's rows are N apart, so N is ldc too.
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  const int64_t vals[] = {M, N, K, lda, ldb};
  static const char* const kNames[] = {"M", "N", "K", "lda (A's row stride)", "ldb (B's row stride)"};
  for (int i = 0; i < 5; ++i)
    if (vals[i] > kIntMax) {
      if (HaveOneDnn()) return GemmLib::kOneDnn;
      Fail("matmul: GEMM ", M, "x", N, "x", K, ": ", kNames[i], " = ", vals[i],
           " exceeds 2^31 - 1, the largest OpenBLAS takes (32-bit int), and this build of DVM has no oneDNN "
           "(64-bit dims; CMake option DVM_ONEDNN)");
    }
  const Policy& p = GetPolicy();
  if (!p.onednn) return GemmLib::kOpenBlas;
  if (p.forced) return GemmLib::kOneDnn;
  // In double: each dim is below 2^48 (the verifier's bound).
  const double b = static_cast<double>(K) * static_cast<double>(N);
  const double macs = b * static_cast<double>(M);
  const bool big = macs >= static_cast<double>(kOneDnnMinMacs) || b >= static_cast<double>(kOneDnnMinB) ||
                   (macs >= static_cast<double>(kOneDnnMinWideMacs) && N >= kOneDnnMinWideN);
  return big ? GemmLib::kOneDnn : GemmLib::kOpenBlas;
}

std::string GemmPolicy() {
  const Policy& p = GetPolicy();
  if (!p.onednn) return p.forced ? "OpenBLAS (DVM_GEMM)" : "OpenBLAS";
  if (p.forced) return "oneDNN (DVM_GEMM)";
  auto pow2 = [](int64_t v) { return "2^" + std::to_string(std::countr_zero(static_cast<uint64_t>(v))); };
  return "oneDNN for GEMMs of >= " + pow2(kOneDnnMinMacs) + " multiply-adds, a B of >= " + pow2(kOneDnnMinB) +
         " elements, or >= " + pow2(kOneDnnMinWideMacs) +
         " multiply-adds with N >= " + std::to_string(kOneDnnMinWideN) + "; OpenBLAS for the rest";
}

void Sgemm(GemmLib lib, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
           const float* b, int64_t ldb, float* c, int64_t ldc) {
#if DVM_HAVE_ONEDNN
  if (lib == GemmLib::kOneDnn) return OneDnn(1, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc);
#else
  (void)lib;
#endif
  OpenBlas(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc);
}

bool SgemmWith(GemmLib lib, int threads, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
               int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  if (lib == GemmLib::kOneDnn) {
#if DVM_HAVE_ONEDNN
    OneDnn(threads, trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc);
    return true;
#else
    return false;
#endif
  }
  // Left at `threads`: OpenBLAS's 2-thread calls ran 1.8x slower when the
  // count went back to 1 after each (its workers woken again every call).
  if (openblas_get_num_threads() != threads) openblas_set_num_threads(threads);
  OpenBlas(trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc);
  return true;
}

}  // namespace dvm::vm
