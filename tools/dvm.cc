// The dvm command line: demo, bench, das, dump.
#include "dvm/dvm.h"

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "bench_util.h"
#include "kernels.h"

namespace dvmtool {

int BenchMatmulMain(Args& args);  // bench_matmul.cc
int BenchStagesMain(Args& args);  // bench_stages.cc
int BenchStackMain(Args& args);   // bench_stack.cc
int BenchGraphMain(Args& args);   // demo.cc
int BenchEagerMain(Args& args);   // bench_eager.cc

namespace {

const char kUsage[] = R"(usage: dvm <command> [options]

commands:
  demo [--layers N] [--hidden H] [--heads A] [--vocab V] [--requests R]
       [--min-len L] [--max-len L] [--seed S] [--threads T] [--quiet] [--profile] [--profile-top N]
      The main job: a GPT-2-shaped decoder (default 6 layers, hidden 768, 12
      heads) built from primitives with the graph API and fused once by
      symbol deduction; a stream of requests (default 100) with random
      lengths (default 1..256) runs fused and unfused, outputs checked equal;
      per request: length, launches, codegen, run times; then a summary.
  bench codegen [--json FILE] [--iters N]
      Codegen time of a new shape for 1-, 10- and 50-op dynamic kernels, and
      the launch time of a cached program.
  bench vm [--json FILE] [--threads N] [--reps R]
      Cached-program run time against hand-fused AOT C++ loops and unfused
      per-op loops, at L2- and DRAM-sized shapes. R reps for L2-sized cases
      (default 20), max(3, R/2) for DRAM-sized ones.
  bench matmul [--json FILE] [--threads N] [--reps R]
      f32 GEMM (DVM MatMul kernel vs cblas_sgemm on the same data) and a
      bias + GELU epilogue fused into the GEMM vs unfused vs GEMM alone.
  bench stages [--json FILE] [--threads N] [--reps R]
      Softmax and layernorm over long rows (32K and 256K elements) against
      hand-fused AOT C++ loops.
  bench graph [--json FILE] [--threads N] [demo options]
      The demo's request stream as a benchmark: fused vs unfused totals,
      time outside matmuls, codegen share and largest compile, peak memory.
  bench stack [--json FILE] [--threads N] [--reps R]
      An Adam step over 300 tensors: one launch per tensor vs one stacked
      launch (dvm::KernelStack) vs one hand-written loop.
  bench eager [--json FILE] [--threads N] [--reps R] [--filter NAME] [--n N]
              [--requests R] [--seed S]
      Runtime fusion of eager code (dvm/eager.h), fused vs unfused (every op
      at once), R fresh runs each (default 3, medians): a damped Newton
      solver over N (default 4M) f32 elements, 8 elementwise ops per step,
      convergence read on the host every 4 steps; a Llama-style decoder
      layer (hidden 512, 8 heads, MLP 1408) over R (default 100) sequence
      lengths from 1..256. Outputs checked equal; record time per op,
      codegen and compile time, structure-cache hit rate.
  das [--kernel K] [--rows R] [--cols C] [--out FILE]
      Generate the program of an example kernel for [R, C] and disassemble
      it; --out also writes the bytecode to FILE.
  das --file FILE
      Verify and disassemble a bytecode file.
  dump [--kernel K]
      Print the IR of an example kernel.

  K is one of: layernorm (bias + residual + layernorm, default),
  layernorm_plain (layernorm alone), bias_residual (x + bias + residual), gelu,
  softmax, chain10, chain50.
)";

// Builds example kernel `name`; returns its input shapes for [rows, cols].
std::vector<dvm::Shape> BuildExample(dvm::Kernel& k, const std::string& name, int64_t rows, int64_t cols) {
  if (name == "layernorm") {
    BuildLayerNorm(k, cols, true);
    return {{rows, cols}, {cols}, {rows, cols}, {cols}, {cols}};
  }
  if (name == "layernorm_plain") {
    BuildLayerNorm(k, cols, false);
    return {{rows, cols}, {cols}, {cols}};
  }
  if (name == "bias_residual") {
    NDObject* x = k.Load(nullptr, {-1, cols}, DType::kFloat32);
    NDObject* bias = k.Load(nullptr, {cols}, DType::kFloat32);
    NDObject* res = k.Load(nullptr, {-1, cols}, DType::kFloat32);
    k.Store(nullptr, k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kAdd, x, bias), res));
    return {{rows, cols}, {cols}, {rows, cols}};
  }
  if (name == "gelu") {
    BuildGelu(k, 2);
    return {{rows, cols}};
  }
  if (name == "softmax") {
    BuildSoftmax(k);
    return {{rows, cols}};
  }
  if (name == "chain10" || name == "chain50") {
    BuildChain(k, name == "chain10" ? 10 : 50);
    return {{rows, cols}, {cols}, {rows, cols}, {cols}};
  }
  throw UsageError("unknown kernel '" + name + "'");
}

int DasMain(Args& args, bool das) {
  std::string file = das ? args.Str("--file", "") : "";
  if (!file.empty()) {
    args.Finish();
    std::ifstream f(file, std::ios::binary);
    if (!f) throw UsageError("cannot read " + file);
    std::vector<uint8_t> bc((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::fputs(dvm::Disassemble(bc).c_str(), stdout);
    return 0;
  }
  std::string name = args.Str("--kernel", "layernorm");
  int64_t rows = args.Int("--rows", 4, 0, 1L << 30);
  int64_t cols = args.Int("--cols", 768, 1, 1L << 30);
  std::string out = das ? args.Str("--out", "") : "";
  args.Finish();
  dvm::Kernel k(dvm::KernelType::kDynamic);
  auto shapes = BuildExample(k, name, rows, cols);
  if (!das) {
    std::fputs(k.Dump().c_str(), stdout);
    return 0;
  }
  k.CodeGen();
  auto outs = k.OutputShapes(shapes);
  std::printf("; kernel %s, inputs", name.c_str());
  for (auto& s : shapes) std::printf(" %s", ShapeString(s).c_str());
  std::printf(", outputs");
  for (auto& s : outs) std::printf(" %s", ShapeString(s).c_str());
  std::printf(", %zu bytes of bytecode\n", k.Bytecode().size());
  std::fputs(k.Das().c_str(), stdout);
  if (!out.empty()) {
    std::ofstream f(out, std::ios::binary);
    f.write(reinterpret_cast<const char*>(k.Bytecode().data()), std::streamsize(k.Bytecode().size()));
    if (!f) throw UsageError("cannot write " + out);
  }
  return 0;
}

int Main(int argc, char** argv) {
  std::string cmd = argc > 1 ? argv[1] : "--help";
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (cmd == "bench") {
    static constexpr const char* kSuites = "'codegen', 'vm', 'matmul', 'stages', 'stack', 'graph' or 'eager'";
    const std::string suite = argc > 2 ? argv[2] : "";
    if (suite.empty()) throw UsageError(std::string("bench needs a suite: ") + kSuites);
    Args args(argc, argv, 3);
    if (suite == "codegen") return BenchCodegenMain(args);
    if (suite == "vm") return BenchVmMain(args);
    if (suite == "matmul") return BenchMatmulMain(args);
    if (suite == "stages") return BenchStagesMain(args);
    if (suite == "stack") return BenchStackMain(args);
    if (suite == "graph") return BenchGraphMain(args);
    if (suite == "eager") return BenchEagerMain(args);
    throw UsageError(std::string("bench wants ") + kSuites);
  }
  Args args(argc, argv, 2);
  if (cmd == "demo") return DemoMain(args);
  if (cmd == "das" || cmd == "dump") return DasMain(args, cmd == "das");
  throw UsageError("unknown command '" + cmd + "'");
}

}  // namespace
}  // namespace dvmtool

int main(int argc, char** argv) {
  try {
    return dvmtool::Main(argc, argv);
  } catch (const dvmtool::UsageError& e) {
    std::fprintf(stderr, "dvm: %s\n(dvm --help lists the commands)\n", e.what());
    return 2;
  } catch (const dvm::Error& e) {
    std::fprintf(stderr, "dvm: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dvm: %s\n", e.what());
    return 1;
  }
}
