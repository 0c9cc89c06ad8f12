// libFuzzer target for the bytecode verifier and the VM.
//
// Every input is treated as untrusted bytecode: dvm::Verify must either
// accept it or throw dvm::Error. An accepted program is disassembled,
// decoded by vm::Executable and run on zero-filled buffers of exactly the
// sizes its tensor table declares (inputs, outputs and workspaces), so that
// AddressSanitizer catches any access the verifier should have ruled out.
//
// Build and run (clang):
//   CXX=clang++ cmake -B build-fuzz -G Ninja -DDVM_FUZZ=ON -DDVM_BUILD_TESTS=OFF \
//       -DDVM_WERROR=OFF \
//       -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined"
//   cmake --build build-fuzz --target fuzz_verifier
//   mkdir -p corpus && DVM_FUZZ_SEEDS=corpus ./build-fuzz/fuzz_verifier corpus -max_total_time=30
//
// The CMAKE_CXX_FLAGS line instruments the dvm library itself for coverage
// (without it only this file is instrumented and the fuzzer is blind to the
// verifier's branches) and makes UBSan findings fatal.
//
// DVM_FUZZ_SEEDS=<dir>: before fuzzing, write the bytecode of a few kernels
// (every stage mode, every register class, constants, workspaces) into
// <dir>, as a seed corpus.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "bytecode/format.h"
#include "dvm/dvm.h"
#include "vm/cpu/vm.h"

namespace {

// Limits that keep one execution fast.
constexpr int64_t kMaxElements = int64_t{1} << 20;  // over all tensors
constexpr int64_t kMaxWork = int64_t{1} << 22;      // lanes the tile loops touch

// Lanes the tile loops of `p` touch, without overflow (COL stages run
// tiles x (R + 2) sections of up to p2 columns each).
__int128 LoopWork(const dvm::bc::Program& p) {
  __int128 w = 0;
  for (const dvm::bc::Stage& s : p.stages) {
    const __int128 full = dvm::bc::FullElems(s), red = dvm::bc::RedElems(s);
    if (s.mode == dvm::bc::Mode::kCol) {
      const __int128 tiles = (red / s.p[1]) * ((__int128(s.p[1]) + s.p[2] - 1) / s.p[2]);
      w += tiles * (__int128(s.p[0]) + 2) * s.p[2];
    } else {
      w += full + red;
    }
  }
  return w;
}

void WriteSeeds(const char* dir) {
  using namespace dvm;
  std::vector<std::function<void(Kernel&)>> kernels = {
      [](Kernel& k) {  // ELEM, broadcast, constant
        auto* a = k.Load(nullptr, {4, 8}, DType::kFloat32);
        auto* b = k.Load(nullptr, {8}, DType::kFloat32);
        k.Store(nullptr, k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, a, 2.0), b));
      },
      [](Kernel& k) {  // ROW softmax
        auto* x = k.Load(nullptr, {4, 16}, DType::kFloat32);
        auto* m = k.Reduce(ReduceOp::kMax, x, {1}, true);
        auto* e = k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, x, m));
        k.Store(nullptr, k.Binary(BinaryOp::kDiv, e, k.Reduce(ReduceOp::kSum, e, {1}, true)));
      },
      [](Kernel& k) {  // COL sums, float (wide) and int
        auto* x = k.Load(nullptr, {3, 20, 8}, DType::kFloat32);
        k.Store(nullptr, k.Reduce(ReduceOp::kSum, x, {1}, false));
        auto* y = k.Load(nullptr, {20, 8}, DType::kInt8);
        k.Store(nullptr, k.Reduce(ReduceOp::kMax, y, {0}, false));
      },
      [](Kernel& k) {  // COL with no rows (R = 0): an empty full domain
        auto* x = k.Load(nullptr, {0, 24}, DType::kFloat32);
        k.Store(nullptr, k.Reduce(ReduceOp::kSum, x, {0}, false));
      },
      [](Kernel& k) {  // two stages through a workspace
        auto* x = k.Load(nullptr, {9000}, DType::kBFloat16);
        k.Store(nullptr, k.Reduce(ReduceOp::kSum, x, {0}, false));
      },
      [](Kernel& k) {  // f16, compare, select, casts
        auto* x = k.Load(nullptr, {5, 7}, DType::kFloat16);
        auto* f = k.Cast(x, DType::kFloat32);
        auto* c = k.Binary(BinaryOp::kGreater, f, 0.0);
        k.Store(nullptr, k.Cast(k.Select(c, f, k.Binary(BinaryOp::kMul, 0.5, f)), DType::kInt32));
        k.Store(nullptr, c);
      },
      [](Kernel& k) {  // strided slice, transpose, padded store
        int64_t shape[] = {6, 9}, start[] = {1, 0}, end[] = {6, 9}, step[] = {2, 3}, pad[] = {4, 5};
        auto* x = k.StridedSliceLoad(nullptr, Dims(shape, 2), DType::kInt32, Dims(start, 2), Dims(end, 2),
                                     Dims(step, 2));
        k.PadStore(nullptr, k.Transpose(x, {1, 0}), Dims(pad, 2), {}, 7.0);
      },
  };
  for (size_t i = 0; i < kernels.size(); ++i) {
    Kernel k;
    try {
      kernels[i](k);
      k.CodeGen();
    } catch (const dvm::Error& e) {
      std::fprintf(stderr, "fuzz_verifier: seed %zu not written: %s\n", i, e.what());
      continue;
    }
    const std::vector<uint8_t>& b = k.Bytecode();
    std::string path = std::string(dir) + "/seed_" + std::to_string(i) + ".dvmb";
    if (FILE* f = std::fopen(path.c_str(), "wb")) {
      std::fwrite(b.data(), 1, b.size(), f);
      std::fclose(f);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  dvm::SetNumThreads(1);
  if (const char* dir = std::getenv("DVM_FUZZ_SEEDS")) WriteSeeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> bytes(data, size);
  try {
    dvm::Verify(bytes);
  } catch (const dvm::Error&) {
    return 0;
  }
  try {
    (void)dvm::Disassemble(bytes);
    dvm::vm::Executable exe(bytes);
    const dvm::bc::Program& p = exe.program();
    int64_t total = 0;
    for (const dvm::bc::TensorDesc& t : p.tensors) {
      total += t.numel;
      if (total > kMaxElements) return 0;
    }
    if (LoopWork(p) > kMaxWork) return 0;
    // Exactly the declared sizes, so ASan flags any byte outside them.
    std::vector<std::unique_ptr<uint8_t, decltype(&std::free)>> bufs;
    std::vector<void*> ptrs;
    for (const dvm::bc::TensorDesc& t : p.tensors) {
      const size_t n = static_cast<size_t>(t.numel) * dvm::DTypeSize(t.dtype);
      // malloc(0) is a zero-byte region to ASan: any access is reported.
      bufs.emplace_back(static_cast<uint8_t*>(n ? std::calloc(n, 1) : std::malloc(0)), &std::free);
      ptrs.push_back(bufs.back().get());
    }
    exe.Run(ptrs.data());
  } catch (const dvm::Error&) {
  }
  return 0;
}
