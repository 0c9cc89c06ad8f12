// Golden tests of the disassembler: Kernel::Das() of a few representative
// kernels, compared as exact text. The text is also a regression test of the
// codegen (stage modes, tiling parameters, register allocation); when a
// codegen change alters it on purpose, update the golden here after reading
// the new disassembly.
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "dvm/dvm.h"

namespace dvm {
namespace {

std::string AddBroadcastDas() {
  Kernel k;
  auto* a = k.Load(nullptr, {4, 8}, DType::kFloat32);
  auto* b = k.Load(nullptr, {8}, DType::kFloat32);
  k.Store(nullptr, k.Binary(BinaryOp::kAdd, a, b));
  k.CodeGen();
  return k.Das();
}

std::string SoftmaxDas() {
  Kernel k;
  auto* x = k.Load(nullptr, {4, 16}, DType::kFloat32);
  auto* m = k.Reduce(ReduceOp::kMax, x, {1}, true);
  auto* e = k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, x, m));
  auto* s = k.Reduce(ReduceOp::kSum, e, {1}, true);
  k.Store(nullptr, k.Binary(BinaryOp::kDiv, e, s));
  k.CodeGen();
  return k.Das();
}

std::string LayerNormDas() {
  Kernel k;
  auto* x = k.Load(nullptr, {4, 16}, DType::kFloat32);
  auto* gamma = k.Load(nullptr, {16}, DType::kFloat32);
  auto* beta = k.Load(nullptr, {16}, DType::kFloat32);
  auto* mean = k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, x, {1}, true), 1.0 / 16);
  auto* d = k.Binary(BinaryOp::kSub, x, mean);
  auto* var = k.Binary(BinaryOp::kMul, k.Reduce(ReduceOp::kSum, k.Binary(BinaryOp::kMul, d, d), {1}, true), 1.0 / 16);
  auto* rstd = k.Unary(UnaryOp::kRsqrt, k.Binary(BinaryOp::kAdd, var, 1e-5));
  auto* y = k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kMul, d, rstd), gamma);
  k.Store(nullptr, k.Binary(BinaryOp::kAdd, y, beta));
  k.CodeGen();
  return k.Das();
}

std::string ColumnSumDas() {
  Kernel k;
  auto* x = k.Load(nullptr, {64, 32}, DType::kFloat32);
  k.Store(nullptr, k.Reduce(ReduceOp::kSum, x, {0}, false));
  k.CodeGen();
  return k.Das();
}

std::string ColumnCenterDas() {
  // x - sum(x, axis 0): a COL stage into a workspace, then an ELEM stage.
  Kernel k;
  auto* x = k.Load(nullptr, {64, 32}, DType::kFloat32);
  k.Store(nullptr, k.Binary(BinaryOp::kSub, x, k.Reduce(ReduceOp::kSum, x, {0}, true)));
  k.CodeGen();
  return k.Das();
}

std::string FullSumDas() {
  Kernel k;
  auto* x = k.Load(nullptr, {100000}, DType::kFloat32);
  k.Store(nullptr, k.Reduce(ReduceOp::kSum, x, {0}, false));
  k.CodeGen();
  return k.Das();
}

std::string MixedDTypesDas() {
  // f16 in, compare against a scalar, select, cast to bf16, int8 column max.
  Kernel k;
  auto* x = k.Load(nullptr, {8, 40}, DType::kFloat16);
  auto* f = k.Cast(x, DType::kFloat32);
  auto* pos = k.Binary(BinaryOp::kGreater, f, 0.0);
  auto* y = k.Select(pos, f, k.Binary(BinaryOp::kMul, 0.1, f));
  k.Store(nullptr, k.Cast(y, DType::kBFloat16));
  auto* q = k.Load(nullptr, {8, 40}, DType::kInt8);
  k.Store(nullptr, k.Reduce(ReduceOp::kMax, q, {0}, false));
  k.CodeGen();
  return k.Das();
}

// Line-by-line comparison with a readable failure.
::testing::AssertionResult SameText(const std::string& want, const std::string& got) {
  if (want == got) return ::testing::AssertionSuccess();
  std::istringstream a(want), b(got);
  std::string la, lb;
  int line = 1;
  while (true) {
    bool ea = !std::getline(a, la), eb = !std::getline(b, lb);
    if (ea && eb) break;
    if (ea || eb || la != lb)
      return ::testing::AssertionFailure()
             << "first difference at line " << line << ":\n  want: " << (ea ? "<end>" : la)
             << "\n  got:  " << (eb ? "<end>" : lb) << "\nfull disassembly:\n"
             << got;
    ++line;
  }
  return ::testing::AssertionFailure() << "texts differ in line endings\n" << got;
}

// Elementwise add with a broadcast operand: one ELEM stage; the broadcast
// input is read through a view with stride 0.
TEST(DasGolden, AddBroadcast) {
  const char* kWant = R"(; dvm bytecode v2: 2 registers x 32 lanes, 3 tensors, 0 constants, 1 stages
tensor t0 in0 f32 x 32
tensor t1 in1 f32 x 8
tensor t2 out0 f32 x 32
stage 0 elem full=[4,8] red=[] p=[32,0,0,0]
  view v0 t0 full +0 strides=[8,1]
  view v1 t1 full +0 strides=[0,1]
  view v2 t2 full +0 strides=[8,1]
  body:
    0: LOAD.f32 r0, v0
    1: LOAD.f32 r1, v1
    2: ADD.f32 r1, r0, r1
    3: STORE.f32 v2, r1
)";
  EXPECT_TRUE(SameText(kWant, AddBroadcastDas()));
}

// Softmax over the last axis: a single ROW stage, max and sum as row
// reductions with BCAST back to full rows.
TEST(DasGolden, Softmax) {
  const char* kWant = R"(; dvm bytecode v2: 4 registers x 2048 lanes, 2 tensors, 0 constants, 1 stages
tensor t0 in0 f32 x 64
tensor t1 out0 f32 x 64
stage 0 row full=[4,16] red=[4] p=[16,128,0,0]
  view v0 t0 full +0 strides=[16,1]
  view v1 t1 full +0 strides=[16,1]
  body:
    0: LOAD.f32 r0, v0
    1: RMAX.f32.red r1, r0
    2: BCAST.f32 r2, r1
    3: SUB.f32 r2, r0, r2
    4: EXP.f32 r2, r2
    5: RSUM.f32.red r0, r2
    6: BCAST.f32 r3, r0
    7: DIV.f32 r3, r2, r3
    8: STORE.f32 v1, r3
)";
  EXPECT_TRUE(SameText(kWant, SoftmaxDas()));
}

// LayerNorm with gamma and beta: one ROW stage; gamma/beta read with row
// stride 0; the scalar math on means runs at the reduced level; x - mean is
// computed for the variance and again for the normalisation (each fuses into
// its pass in the VM), after the variance.
TEST(DasGolden, LayerNorm) {
  const char* kWant = R"(; dvm bytecode v2: 7 registers x 2048 lanes, 4 tensors, 2 constants, 1 stages
tensor t0 in0 f32 x 64
tensor t1 in1 f32 x 16
tensor t2 in2 f32 x 16
tensor t3 out0 f32 x 64
const K0 f32 0.0625
const K1 f32 1e-05
stage 0 row full=[4,16] red=[4] p=[16,128,0,0]
  view v0 t0 full +0 strides=[16,1]
  view v1 t1 full +0 strides=[0,1]
  view v2 t2 full +0 strides=[0,1]
  view v3 t3 full +0 strides=[16,1]
  body:
    0: LOAD.f32 r0, v0
    1: RSUM.f32.red r1, r0
    2: MUL.f32.red r1, r1, K0
    3: BCAST.f32 r2, r1
    4: SUB.f32 r2, r0, r2
    5: MUL.f32 r2, r2, r2
    6: RSUM.f32.red r3, r2
    7: MUL.f32.red r3, r3, K0
    8: ADD.f32.red r3, r3, K1
    9: RSQRT.f32.red r3, r3
    10: BCAST.f32 r2, r3
    11: BCAST.f32 r4, r1
    12: SUB.f32 r4, r0, r4
    13: MUL.f32 r2, r4, r2
    14: LOAD.f32 r5, v1
    15: MUL.f32 r5, r2, r5
    16: LOAD.f32 r6, v2
    17: ADD.f32 r6, r5, r6
    18: STORE.f32 v3, r6
)";
  EXPECT_TRUE(SameText(kWant, LayerNormDas()));
}

// Column sum: a COL stage with an f64 accumulator pair (WFILL / WACC /
// WNARROW).
TEST(DasGolden, ColumnSum) {
  const char* kWant = R"(; dvm bytecode v2: 3 registers x 32 lanes, 2 tensors, 0 constants, 1 stages
tensor t0 in0 f32 x 2048
tensor t1 out0 f32 x 32
stage 0 col full=[64,32] red=[32] p=[64,32,32,64]
  view v0 t0 full +0 strides=[32,1]
  view v1 t1 red +0 strides=[1]
  tile_init:
    0: WFILL.f32.red w0, sum
  body:
    1: LOAD.f32 r2, v0
    2: WACC.f32.red w0, r2, sum
  post:
    3: WNARROW.f32.red r2, w0
    4: STORE.f32.red v1, r2
)";
  EXPECT_TRUE(SameText(kWant, ColumnSumDas()));
}

// Full reduction of a large tensor: chunk sums into a workspace (stage 0,
// one 4096-element row per tile, short last row), then a sum of the
// chunks (stage 1).
TEST(DasGolden, FullSum) {
  const char* kWant = R"(; dvm bytecode v2: 2 registers x 4096 lanes, 3 tensors, 0 constants, 2 stages
tensor t0 in0 f32 x 100000
tensor t1 out0 f32 x 1
tensor t2 ws0 f32 x 25
stage 0 row full=[100000] red=[25] p=[100000,1,4096,0]
  view v0 t0 full +0 strides=[1]
  view v1 t2 red +0 strides=[1]
  body:
    0: LOAD.f32 r0, v0
    1: RSUM.f32.red r1, r0
    2: STORE.f32.red v1, r1
stage 1 row full=[25] red=[] p=[25,81,0,0]
  view v0 t2 full +0 strides=[1]
  view v1 t1 red +0 strides=[]
  body:
    0: LOAD.f32 r0, v0
    1: RSUM.f32.red r1, r0
    2: STORE.f32.red v1, r1
)";
  EXPECT_TRUE(SameText(kWant, FullSumDas()));
}

// Mixed dtypes: f16 input cast to f32, a scalar compare, SELECT, a cast to
// bf16, and an i8 column max (integer COL reductions accumulate in a plain
// register filled with the identity).
TEST(DasGolden, Mixed) {
  const char* kWant = R"(; dvm bytecode v2: 5 registers x 48 lanes, 4 tensors, 3 constants, 1 stages
tensor t0 in0 f16 x 320
tensor t1 in1 i8 x 320
tensor t2 out0 bf16 x 320
tensor t3 out1 i8 x 40
const K0 f32 0
const K1 f32 0.1
const K2 i8 -128
stage 0 col full=[8,40] red=[40] p=[8,40,40,64]
  view v0 t0 full +0 strides=[40,1]
  view v1 t2 full +0 strides=[40,1]
  view v2 t1 full +0 strides=[40,1]
  view v3 t3 red +0 strides=[1]
  tile_init:
    0: FILL.i8.red r0, K2
  body:
    1: LOAD.f16 r1, v0
    2: CAST.f32 r1, r1 (from f16)
    3: GT.bool r2, r1, K0
    4: MUL.f32 r3, K1, r1
    5: SELECT.f32 r3, r2, r1, r3
    6: CAST.bf16 r3, r3 (from f32)
    7: STORE.bf16 v1, r3
    8: LOAD.i8 r4, v2
    9: MAX.i8.red r0, r0, r4
  post:
    10: STORE.i8.red v3, r0
)";
  EXPECT_TRUE(SameText(kWant, MixedDTypesDas()));
}

// A reduced value used at full level across the reduced axis: the column
// sums go through workspace t2 and come back with row stride 0.
TEST(DasGolden, ColumnCenterTwoStages) {
  const char* kWant = R"(; dvm bytecode v2: 3 registers x 2048 lanes, 3 tensors, 0 constants, 2 stages
tensor t0 in0 f32 x 2048
tensor t1 out0 f32 x 2048
tensor t2 ws0 f32 x 32
stage 0 col full=[64,32] red=[32] p=[64,32,32,64]
  view v0 t0 full +0 strides=[32,1]
  view v1 t2 red +0 strides=[1]
  tile_init:
    0: WFILL.f32.red w0, sum
  body:
    1: LOAD.f32 r2, v0
    2: WACC.f32.red w0, r2, sum
  post:
    3: WNARROW.f32.red r2, w0
    4: STORE.f32.red v1, r2
stage 1 elem full=[64,32] red=[] p=[2048,0,0,0]
  view v0 t0 full +0 strides=[32,1]
  view v1 t2 full +0 strides=[0,1]
  view v2 t1 full +0 strides=[32,1]
  body:
    0: LOAD.f32 r0, v0
    1: LOAD.f32 r1, v1
    2: SUB.f32 r1, r0, r1
    3: STORE.f32 v2, r1
)";
  EXPECT_TRUE(SameText(kWant, ColumnCenterDas()));
}

// The softmax kernel is one ROW stage with the expected instruction mix.
TEST(DasGolden, SoftmaxIsOneRowStage) {
  const std::string das = SoftmaxDas();
  EXPECT_NE(das.find("1 stages"), std::string::npos);
  EXPECT_NE(das.find("stage 0 row "), std::string::npos);
  EXPECT_EQ(das.find("stage 1"), std::string::npos);
  for (const char* op : {"RMAX.f32.red", "BCAST.f32", "SUB.f32", "EXP.f32", "RSUM.f32.red", "DIV.f32"})
    EXPECT_NE(das.find(op), std::string::npos) << op;
}

// The ELEM tile of each stage of `das`, in order ("p=[T," of "stage N elem").
std::vector<int64_t> ElemTiles(const std::string& das) {
  std::vector<int64_t> t;
  std::istringstream in(das);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("stage ", 0) == 0 && line.find(" elem ") != std::string::npos)
      t.push_back(std::stoll(line.substr(line.find("p=[") + 3)));
  return t;
}

// Long rows: an elementwise tail of cheap f32 arithmetic that reads row
// vectors (layernorm's ((x - mean) * rstd) * gamma + beta) runs long tiles
// inside one row (16x, 16384 lanes, for rows of 16384 or more); a tail
// with transcendental ops keeps 1x.
TEST(DasGolden, LongRowCheapTailUsesLongTiles) {
  const int64_t C = 32768;
  Kernel ln;
  auto* x = ln.Load(nullptr, {2, C}, DType::kFloat32);
  auto* g = ln.Load(nullptr, {C}, DType::kFloat32);
  auto* b = ln.Load(nullptr, {C}, DType::kFloat32);
  auto* d = ln.Binary(BinaryOp::kSub, x, ln.Binary(BinaryOp::kMul, ln.Reduce(ReduceOp::kSum, x, {1}, true), 1.0 / C));
  auto* var = ln.Binary(BinaryOp::kMul, ln.Reduce(ReduceOp::kSum, ln.Binary(BinaryOp::kMul, d, d), {1}, true), 1.0 / C);
  auto* r = ln.Unary(UnaryOp::kRsqrt, ln.Binary(BinaryOp::kAdd, var, 1e-5));
  ln.Store(nullptr, ln.Binary(BinaryOp::kAdd, ln.Binary(BinaryOp::kMul, ln.Binary(BinaryOp::kMul, d, r), g), b));
  ln.CodeGen();
  const std::vector<int64_t> t = ElemTiles(ln.Das());
  ASSERT_FALSE(t.empty());
  EXPECT_EQ(t.back(), 16384) << ln.Das();

  Kernel tr;
  auto* y = tr.Load(nullptr, {2, C}, DType::kFloat32);
  auto* gy = tr.Load(nullptr, {C}, DType::kFloat32);
  auto* e = tr.Unary(UnaryOp::kExp, tr.Binary(BinaryOp::kMul, y, gy));
  tr.Store(nullptr, tr.Binary(BinaryOp::kAdd, tr.Binary(BinaryOp::kMul, e, tr.Unary(UnaryOp::kTanh, y)), y));
  tr.CodeGen();
  const std::vector<int64_t> u = ElemTiles(tr.Das());
  ASSERT_EQ(u.size(), 1u) << tr.Das();
  EXPECT_EQ(u[0], 1024) << tr.Das();
}

// dvm::Disassemble of the bytecode gives the same text as Kernel::Das().
TEST(DasGolden, DisassembleMatchesKernelDas) {
  Kernel k;
  auto* x = k.Load(nullptr, {4, 16}, DType::kFloat32);
  k.Store(nullptr, k.Reduce(ReduceOp::kMax, k.Unary(UnaryOp::kTanh, x), {1}, false));
  k.CodeGen();
  EXPECT_EQ(Disassemble(k.Bytecode()), k.Das());
}

// Before any program is generated, Das() says so.
TEST(DasGolden, NoProgramYet) {
  Kernel k;
  k.Store(nullptr, k.Load(nullptr, {4}, DType::kFloat32));
  EXPECT_EQ(k.Das(), "; no program generated yet\n");
}

}  // namespace
}  // namespace dvm
