// Verifier tests: one negative test per rule of src/bytecode/verifier.cc.
//
// Each test starts from valid bytecode that a real kernel produced (built with
// the public API and generated with CodeGen()), mutates exactly the bytes that
// break one rule, and checks that dvm::Verify throws dvm::Error whose message
// is "bytecode offset <N>: <rule>: ..." with the offset of the rejected field.
// The positive tests check that the bytecode of varied kernels verifies and
// that random single-byte mutations either verify (and then run safely on
// buffers of the declared sizes) or are rejected with dvm::Error.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "bytecode/format.h"
#include "dvm/dvm.h"
#include "vm/cpu/vm.h"

namespace dvm {
namespace {

using Bytes = std::vector<uint8_t>;

// ---- field access ------------------------------------------------------------

template <typename T>
T Get(const Bytes& b, size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof(T));
  return v;
}
template <typename T>
void Put(Bytes& b, size_t off, T v) {
  std::memcpy(b.data() + off, &v, sizeof(T));
}
// Keeps the header's total size in step with the buffer.
void FixSize(Bytes& b) { Put<uint32_t>(b, 8, static_cast<uint32_t>(b.size())); }

// Offsets of every field group, found the same way the verifier walks the
// buffer (docs/bytecode.md has the layout).
struct StageLayout {
  size_t off = 0;  // stage header (52 bytes)
  uint8_t mode = 0, full_rank = 0, red_rank = 0;
  uint16_t num_views = 0, num_insts = 0;
  uint16_t sections[5] = {};
  size_t full_dims = 0, red_dims = 0;  // first dim of each list
  std::vector<size_t> views;           // view entries (16 bytes + 8 per stride)
  std::vector<size_t> strides;         // first stride of each view
  size_t insts = 0;                    // instruction 0
  size_t param(int i) const { return off + 20 + 8 * i; }
  size_t inst(int i) const { return insts + 8 * i; }
};

struct Layout {
  uint16_t num_tensors = 0, num_consts = 0, num_stages = 0, num_regs = 0;
  uint32_t tile_cap = 0;
  std::vector<StageLayout> stages;
  static size_t tensor(int i) { return 32 + 16 * i; }
  size_t konst(int i) const { return 32 + 16 * num_tensors + 8 * i; }
};

Layout Parse(const Bytes& b) {
  Layout l;
  l.num_tensors = Get<uint16_t>(b, 12);
  l.num_consts = Get<uint16_t>(b, 14);
  l.num_stages = Get<uint16_t>(b, 16);
  l.num_regs = Get<uint16_t>(b, 18);
  l.tile_cap = Get<uint32_t>(b, 20);
  size_t pos = 32 + 16 * size_t(l.num_tensors) + 8 * size_t(l.num_consts);
  for (int si = 0; si < l.num_stages; ++si) {
    StageLayout s;
    s.off = pos;
    s.mode = b[pos];
    s.full_rank = b[pos + 1];
    s.red_rank = b[pos + 2];
    s.num_views = Get<uint16_t>(b, pos + 4);
    s.num_insts = Get<uint16_t>(b, pos + 6);
    for (int k = 0; k < 5; ++k) s.sections[k] = Get<uint16_t>(b, pos + 8 + 2 * k);
    pos += 52;
    s.full_dims = pos;
    pos += 8 * s.full_rank;
    s.red_dims = pos;
    pos += 8 * s.red_rank;
    for (int vi = 0; vi < s.num_views; ++vi) {
      s.views.push_back(pos);
      s.strides.push_back(pos + 16);
      int rank = b[pos + 2] == 0 ? s.full_rank : s.red_rank;
      pos += 16 + 8 * rank;
    }
    s.insts = pos;
    pos += 8 * s.num_insts;
    l.stages.push_back(s);
  }
  EXPECT_EQ(pos, b.size()) << "test layout walker out of step with the bytecode";
  return l;
}

// Instruction at `off`, and its index by opcode within a stage.
bc::Inst InstAt(const Bytes& b, size_t off) {
  bc::Inst in;
  std::memcpy(&in, b.data() + off, 8);
  return in;
}
int FindInst(const Bytes& b, const StageLayout& s, bc::Opcode op, int nth = 0) {
  for (int i = 0; i < s.num_insts; ++i)
    if (InstAt(b, s.inst(i)).op == uint8_t(op) && nth-- == 0) return i;
  ADD_FAILURE() << "no instruction " << bc::kOpInfo[int(op)].name << " in the stage";
  return 0;
}

// ---- kernels -----------------------------------------------------------------

// ELEM: out = a * 2 + b, with b broadcast over the rows (3 tensors, 1 constant).
Bytes ElemBytecode() {
  Kernel k;
  auto* a = k.Load(nullptr, {4, 8}, DType::kFloat32);
  auto* b = k.Load(nullptr, {8}, DType::kFloat32);
  k.Store(nullptr, k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, a, 2.0), b));
  k.CodeGen();
  return k.Bytecode();
}

// ROW: softmax over the last axis.
Bytes RowBytecode() {
  Kernel k;
  auto* x = k.Load(nullptr, {4, 16}, DType::kFloat32);
  auto* m = k.Reduce(ReduceOp::kMax, x, {1}, true);
  auto* e = k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, x, m));
  auto* s = k.Reduce(ReduceOp::kSum, e, {1}, true);
  k.Store(nullptr, k.Binary(BinaryOp::kDiv, e, s));
  k.CodeGen();
  return k.Bytecode();
}

// COL: column sum (WFILL / LOAD / WACC / WNARROW / STORE).
Bytes ColBytecode() {
  Kernel k;
  auto* x = k.Load(nullptr, {64, 32}, DType::kFloat32);
  k.Store(nullptr, k.Reduce(ReduceOp::kSum, x, {0}, false));
  k.CodeGen();
  return k.Bytecode();
}

// SELECT: out = cond ? a : b.
Bytes SelectBytecode() {
  Kernel k;
  auto* c = k.Load(nullptr, {40}, DType::kBool);
  auto* a = k.Load(nullptr, {40}, DType::kFloat32);
  auto* b = k.Load(nullptr, {40}, DType::kFloat32);
  k.Store(nullptr, k.Select(c, a, b));
  k.CodeGen();
  return k.Bytecode();
}

// ---- the check ---------------------------------------------------------------

::testing::AssertionResult Rejects(const Bytes& b, size_t offset, const std::string& rule) {
  const std::string want = "bytecode offset " + std::to_string(offset) + ": " + rule + ":";
  try {
    Verify(b);
  } catch (const Error& e) {
    std::string msg = e.what();
    if (msg.find(want) != std::string::npos && msg.find(rule) != std::string::npos)
      return ::testing::AssertionSuccess() << msg;
    return ::testing::AssertionFailure() << "expected \"" << want << "\", got \"" << msg << "\"";
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-dvm::Error: " << e.what();
  }
  return ::testing::AssertionFailure() << "verified; expected \"" << want << "\"";
}

TEST(VerifierBase, KernelsOfTheNegativeTestsVerify) {
  for (const Bytes& b : {ElemBytecode(), RowBytecode(), ColBytecode(), SelectBytecode()}) {
    EXPECT_NO_THROW(Verify(b));
    Parse(b);
  }
  // The shapes the tests below rely on.
  Bytes e = ElemBytecode(), r = RowBytecode(), c = ColBytecode();
  Layout le = Parse(e), lr = Parse(r), lc = Parse(c);
  EXPECT_EQ(le.stages.size(), 1u);
  EXPECT_EQ(le.stages[0].mode, uint8_t(bc::Mode::kElem));
  EXPECT_EQ(le.num_consts, 1);
  EXPECT_EQ(le.stages[0].full_rank, 2);
  EXPECT_EQ(lr.stages[0].mode, uint8_t(bc::Mode::kRow));
  EXPECT_EQ(lc.stages[0].mode, uint8_t(bc::Mode::kCol));
}

// ---- header ------------------------------------------------------------------

TEST(VerifierHeader, Truncated) {
  Bytes b = ElemBytecode();
  b.resize(31);
  EXPECT_TRUE(Rejects(b, 0, "truncated"));
  EXPECT_TRUE(Rejects(Bytes{}, 0, "truncated"));
}

TEST(VerifierHeader, TruncatedInsideTensorTable) {
  Bytes b = ElemBytecode();
  b.resize(40);  // tensor 0: dtype, kind, slot, reserved; no room for its size
  FixSize(b);
  EXPECT_TRUE(Rejects(b, 40, "truncated"));
}

TEST(VerifierHeader, TruncatedInsideStageHeader) {
  Bytes b = ElemBytecode();
  Layout l = Parse(b);
  b.resize(l.stages[0].param(2));  // parameters p2, p3 missing
  FixSize(b);
  EXPECT_TRUE(Rejects(b, l.stages[0].param(2), "truncated"));
}

TEST(VerifierHeader, TruncatedInstructions) {
  Bytes b = ElemBytecode();
  Layout l = Parse(b);
  b.resize(b.size() - 8);  // last instruction missing
  FixSize(b);
  EXPECT_TRUE(Rejects(b, l.stages[0].insts, "truncated"));
}

TEST(VerifierHeader, BadMagic) {
  Bytes b = ElemBytecode();
  b[0] ^= 1;
  EXPECT_TRUE(Rejects(b, 0, "bad magic"));
}

TEST(VerifierHeader, UnsupportedVersion) {
  Bytes b = ElemBytecode();
  Put<uint16_t>(b, 4, 1);  // version 1 had no row groups
  EXPECT_TRUE(Rejects(b, 4, "unsupported version"));
  Put<uint16_t>(b, 4, 3);
  EXPECT_TRUE(Rejects(b, 4, "unsupported version"));
  Put<uint16_t>(b, 4, 0);
  EXPECT_TRUE(Rejects(b, 4, "unsupported version"));
}

TEST(VerifierHeader, BadHeaderSize) {
  Bytes b = ElemBytecode();
  Put<uint16_t>(b, 6, 40);
  EXPECT_TRUE(Rejects(b, 6, "bad header size"));
}

TEST(VerifierHeader, SizeMismatch) {
  Bytes b = ElemBytecode();
  Put<uint32_t>(b, 8, static_cast<uint32_t>(b.size() + 1));
  EXPECT_TRUE(Rejects(b, 8, "size mismatch"));
  Bytes c = ElemBytecode();
  c.push_back(0);  // one byte more than the header says
  EXPECT_TRUE(Rejects(c, 8, "size mismatch"));
}

TEST(VerifierHeader, RegisterCountOutOfRange) {
  Bytes b = ElemBytecode();
  Put<uint16_t>(b, 18, 0);
  EXPECT_TRUE(Rejects(b, 18, "register count out of range"));
  Put<uint16_t>(b, 18, 256);
  EXPECT_TRUE(Rejects(b, 18, "register count out of range"));
}

TEST(VerifierHeader, TileCapacityOutOfRange) {
  for (uint32_t cap : {0u, 8u, 24u, (1u << 26) + 16, 0xffffffffu}) {
    Bytes b = ElemBytecode();
    Put<uint32_t>(b, 20, cap);
    EXPECT_TRUE(Rejects(b, 20, "tile capacity out of range")) << cap;
  }
}

TEST(VerifierHeader, ScratchTooLarge) {
  Bytes b = ElemBytecode();
  Put<uint16_t>(b, 18, 17);
  Put<uint32_t>(b, 20, 1u << 24);  // 17 * 2^24 * 4 bytes > 1 GiB
  EXPECT_TRUE(Rejects(b, 18, "scratch too large"));
}

TEST(VerifierHeader, ReservedFieldNotZero) {
  for (size_t at = 24; at < 32; ++at) {
    Bytes b = ElemBytecode();
    b[at] = 1;
    EXPECT_TRUE(Rejects(b, 24, "reserved field not zero")) << at;
  }
}

// ---- tensor table and constant pool --------------------------------------------

TEST(VerifierTables, BadTensorDType) {
  Bytes b = ElemBytecode();
  b[Layout::tensor(1)] = kNumDTypes;
  EXPECT_TRUE(Rejects(b, Layout::tensor(1), "bad dtype"));
}

TEST(VerifierTables, BadConstantDType) {
  Bytes b = ElemBytecode();
  Layout l = Parse(b);
  b[l.konst(0)] = 0xff;
  EXPECT_TRUE(Rejects(b, l.konst(0), "bad dtype"));
}

TEST(VerifierTables, BadTensorKind) {
  Bytes b = ElemBytecode();
  b[Layout::tensor(2) + 1] = 3;
  EXPECT_TRUE(Rejects(b, Layout::tensor(2) + 1, "bad tensor kind"));
  b[Layout::tensor(2) + 1] = 0xff;
  EXPECT_TRUE(Rejects(b, Layout::tensor(2) + 1, "bad tensor kind"));
}

TEST(VerifierTables, TensorSizeOutOfRange) {
  for (int64_t n : {int64_t{-1}, (int64_t{1} << 48) + 1, INT64_MIN}) {
    Bytes b = ElemBytecode();
    Put<int64_t>(b, Layout::tensor(0) + 8, n);
    EXPECT_TRUE(Rejects(b, Layout::tensor(0) + 8, "tensor size out of range")) << n;
  }
}

// ---- stage header, dims and tiling ---------------------------------------------

TEST(VerifierStage, BadStageMode) {
  Bytes b = ElemBytecode();
  Layout l = Parse(b);
  b[l.stages[0].off] = 0xff;
  EXPECT_TRUE(Rejects(b, l.stages[0].off, "bad stage mode"));
}

TEST(VerifierStage, RankOutOfRange) {
  Bytes b = ElemBytecode();
  Layout l = Parse(b);
  b[l.stages[0].off + 1] = bc::kMaxRank + 1;
  EXPECT_TRUE(Rejects(b, l.stages[0].off + 1, "rank out of range"));
  Bytes c = RowBytecode();
  Layout lc = Parse(c);
  c[lc.stages[0].off + 2] = 200;
  EXPECT_TRUE(Rejects(c, lc.stages[0].off + 1, "rank out of range"));
}

TEST(VerifierStage, SectionLengthsDoNotAddUp) {
  Bytes b = ElemBytecode();
  Layout l = Parse(b);
  size_t body = l.stages[0].off + 8 + 2 * bc::kBody;
  Put<uint16_t>(b, body, Get<uint16_t>(b, body) - 1);
  EXPECT_TRUE(Rejects(b, l.stages[0].off + 8, "section lengths"));
}

TEST(VerifierStage, LoopSectionsOutsideColMode) {
  Bytes b = ElemBytecode();
  Layout l = Parse(b);
  size_t s = l.stages[0].off + 8;
  // Move the first body instruction into tile_init: the counts still add up.
  Put<uint16_t>(b, s + 2 * bc::kTileInit, 1);
  Put<uint16_t>(b, s + 2 * bc::kBody, Get<uint16_t>(b, s + 2 * bc::kBody) - 1);
  EXPECT_TRUE(Rejects(b, s, "section lengths"));
  Bytes r = RowBytecode();
  Layout lr = Parse(r);
  s = lr.stages[0].off + 8;
  Put<uint16_t>(r, s + 2 * bc::kPost, 1);
  Put<uint16_t>(r, s + 2 * bc::kBody, Get<uint16_t>(r, s + 2 * bc::kBody) - 1);
  EXPECT_TRUE(Rejects(r, s, "section lengths"));
}

TEST(VerifierStage, DimOutOfRange) {
  Bytes b = ElemBytecode();
  Layout l = Parse(b);
  Put<int64_t>(b, l.stages[0].full_dims + 8, -1);
  EXPECT_TRUE(Rejects(b, l.stages[0].full_dims + 8, "dim out of range"));
  // The product of the dims above 2^48.
  Bytes c = ElemBytecode();
  Put<int64_t>(c, l.stages[0].full_dims, int64_t{1} << 46);
  Put<int64_t>(c, l.stages[0].full_dims + 8, 8);
  EXPECT_TRUE(Rejects(c, l.stages[0].full_dims + 8, "dim out of range"));
  // A reduced dim.
  Bytes r = RowBytecode();
  Layout lr = Parse(r);
  Put<int64_t>(r, lr.stages[0].red_dims, INT64_MIN);
  EXPECT_TRUE(Rejects(r, lr.stages[0].red_dims, "dim out of range"));
}

TEST(VerifierStage, BadTileLength) {
  Bytes b = ElemBytecode();
  Layout l = Parse(b);
  Put<int64_t>(b, l.stages[0].param(0), 0);
  EXPECT_TRUE(Rejects(b, l.stages[0].param(0), "bad tile length"));
  Put<int64_t>(b, l.stages[0].param(0), l.tile_cap + 1);
  EXPECT_TRUE(Rejects(b, l.stages[0].param(0), "bad tile length"));
}

TEST(VerifierStage, BadRowTiling) {
  Bytes b = RowBytecode();
  Layout l = Parse(b);
  const size_t p0 = l.stages[0].param(0), p1 = l.stages[0].param(1);
  Put<int64_t>(b, p1, 0);  // no rows per tile
  EXPECT_TRUE(Rejects(b, p0, "bad row tiling"));
  b = RowBytecode();
  Put<int64_t>(b, p0, -1);  // negative K
  EXPECT_TRUE(Rejects(b, p0, "bad row tiling"));
  b = RowBytecode();
  Put<int64_t>(b, p1, l.tile_cap / 16 + 1);  // rows * K above the capacity
  EXPECT_TRUE(Rejects(b, p0, "bad row tiling"));
}

TEST(VerifierStage, BadRowGeometry) {
  Bytes b = RowBytecode();  // full [4,16], red [4], K = 16
  Layout l = Parse(b);
  Put<int64_t>(b, l.stages[0].param(0), 15);
  EXPECT_TRUE(Rejects(b, l.stages[0].param(0), "bad row geometry"));
  // 64 elements in 5 rows of 13: a short last row needs one row per tile.
  b = RowBytecode();
  Put<int64_t>(b, l.stages[0].red_dims, 5);
  Put<int64_t>(b, l.stages[0].param(0), 13);
  EXPECT_TRUE(Rejects(b, l.stages[0].param(0), "bad row geometry"));
}

TEST(VerifierStage, BadColumnTiling) {
  const int params[][2] = {{0, -1}, {1, 0}, {2, 0}, {3, 0}};  // R < 0, C, cols, block < 1
  for (auto [p, v] : params) {
    Bytes b = ColBytecode();
    Layout l = Parse(b);
    Put<int64_t>(b, l.stages[0].param(p), v);
    EXPECT_TRUE(Rejects(b, l.stages[0].param(0), "bad column tiling")) << p;
  }
  Bytes b = ColBytecode();
  Layout l = Parse(b);
  Put<int64_t>(b, l.stages[0].param(2), int64_t{l.tile_cap} + 1);  // cols above capacity
  EXPECT_TRUE(Rejects(b, l.stages[0].param(0), "bad column tiling"));
}

TEST(VerifierStage, BadColumnGeometry) {
  Bytes b = ColBytecode();  // full [64,32], red [32], R = 64, C = 32
  Layout l = Parse(b);
  Put<int64_t>(b, l.stages[0].param(0), 63);
  EXPECT_TRUE(Rejects(b, l.stages[0].param(0), "bad column geometry"));
  b = ColBytecode();
  Put<int64_t>(b, l.stages[0].param(1), 5);  // 32 reduced elements are not O * 5
  EXPECT_TRUE(Rejects(b, l.stages[0].param(0), "bad column geometry"));
}

// Softmax over rows of 40000 (> a tile): chunked stages, marked as one row
// group of 4 rows.
Bytes LongRowBytecode() {
  Kernel k;
  auto* x = k.Load(nullptr, {4, 40000}, DType::kFloat32);
  auto* m = k.Reduce(ReduceOp::kMax, x, {1}, true);
  auto* e = k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, x, m));
  k.Store(nullptr, k.Binary(BinaryOp::kDiv, e, k.Reduce(ReduceOp::kSum, e, {1}, true)));
  k.CodeGen();
  return k.Bytecode();
}

TEST(VerifierStage, BadStageFlags) {
  Bytes b = LongRowBytecode();
  Layout l = Parse(b);
  ASSERT_GE(l.num_stages, 2);
  b[l.stages[0].off + 3] = 1;  // the first stage cannot run with a previous one
  EXPECT_TRUE(Rejects(b, l.stages[0].off + 3, "bad stage flags"));
  b = LongRowBytecode();
  b[l.stages[1].off + 3] = 3;  // concurrent and joining a row group
  EXPECT_TRUE(Rejects(b, l.stages[1].off + 3, "bad stage flags"));
  b[l.stages[1].off + 3] = 4;
  EXPECT_TRUE(Rejects(b, l.stages[1].off + 3, "bad stage flags"));
}

TEST(VerifierStage, BadRowGroup) {
  Bytes b = LongRowBytecode();
  Layout l = Parse(b);
  ASSERT_GE(l.num_stages, 3);
  // Codegen grouped every stage by the 4 rows; the stages after the first join.
  EXPECT_EQ(Get<uint16_t>(b, l.stages[0].off + 18), 4);
  EXPECT_EQ(b[l.stages[0].off + 3], 0);
  for (int si = 1; si < l.num_stages; ++si) {
    EXPECT_EQ(Get<uint16_t>(b, l.stages[si].off + 18), 4) << "stage " << si;
    EXPECT_EQ(b[l.stages[si].off + 3], 2) << "stage " << si;
  }
  // Stage 0 has 4 x 10 partials: 3 rows do not divide them.
  for (int si = 0; si < l.num_stages; ++si) Put<uint16_t>(b, l.stages[si].off + 18, 3);
  EXPECT_TRUE(Rejects(b, l.stages[0].off + 18, "bad row group"));
  // A joining stage with other rows than the stage before.
  b = LongRowBytecode();
  Put<uint16_t>(b, l.stages[1].off + 18, 2);
  EXPECT_TRUE(Rejects(b, l.stages[1].off + 18, "bad row group"));
  // Joining without rows.
  b = LongRowBytecode();
  Put<uint16_t>(b, l.stages[1].off + 18, 0);
  EXPECT_TRUE(Rejects(b, l.stages[1].off + 18, "bad row group"));
  // Only ELEM and ROW stages split into rows.
  b = ColBytecode();
  Put<uint16_t>(b, Parse(b).stages[0].off + 18, 1);
  EXPECT_TRUE(Rejects(b, Parse(b).stages[0].off + 18, "bad row group"));
}

// ---- views ---------------------------------------------------------------------

TEST(VerifierView, TensorOutOfRange) {
  Bytes b = ElemBytecode();
  Layout l = Parse(b);
  Put<uint16_t>(b, l.stages[0].views[1], l.num_tensors);
  EXPECT_TRUE(Rejects(b, l.stages[0].views[1], "tensor out of range"));
}

TEST(VerifierView, BadViewLevel) {
  Bytes b = ElemBytecode();
  Layout l = Parse(b);
  for (uint8_t lvl : {2, 0xff}) {
    b[l.stages[0].views[0] + 2] = lvl;
    EXPECT_TRUE(Rejects(b, l.stages[0].views[0] + 2, "bad view level"));
  }
}

TEST(VerifierView, BadStride) {
  Bytes b = ElemBytecode();
  Layout l = Parse(b);
  Put<int64_t>(b, l.stages[0].strides[0] + 8, -1);
  EXPECT_TRUE(Rejects(b, l.stages[0].strides[0] + 8, "bad stride"));
  b = ElemBytecode();
  Put<int64_t>(b, l.stages[0].strides[2], (int64_t{1} << 48) + 1);
  EXPECT_TRUE(Rejects(b, l.stages[0].strides[2], "bad stride"));
}

TEST(VerifierView, ViewOutsideTensor) {
  Bytes b = ElemBytecode();  // view 0: t0 (32 elements), strides [8,1]
  Layout l = Parse(b);
  const size_t v0 = l.stages[0].views[0];
  Put<int64_t>(b, v0 + 8, 1);  // offset 1: reaches element 32
  EXPECT_TRUE(Rejects(b, v0 + 8, "view outside tensor"));
  b = ElemBytecode();
  Put<int64_t>(b, v0 + 8, -1);  // negative offset
  EXPECT_TRUE(Rejects(b, v0 + 8, "view outside tensor"));
  b = ElemBytecode();
  Put<int64_t>(b, l.stages[0].strides[0], 9);  // a larger row stride
  EXPECT_TRUE(Rejects(b, v0 + 8, "view outside tensor"));
  b = ElemBytecode();
  Put<int64_t>(b, Layout::tensor(2) + 8, 31);  // the output tensor shrinks
  EXPECT_TRUE(Rejects(b, l.stages[0].views[2] + 8, "view outside tensor"));
  // The reduced level of a COL stage.
  b = ColBytecode();
  l = Parse(b);
  Put<int64_t>(b, l.stages[0].views[1] + 8, 1);
  EXPECT_TRUE(Rejects(b, l.stages[0].views[1] + 8, "view outside tensor"));
}

// ---- instructions ----------------------------------------------------------------

struct InstRef {
  Bytes b;
  Layout l;
  size_t off;
};
InstRef Inst(Bytes b, bc::Opcode op, int nth = 0) {
  Layout l = Parse(b);
  size_t off = l.stages[0].inst(FindInst(b, l.stages[0], op, nth));
  return {std::move(b), std::move(l), off};
}

TEST(VerifierInst, UnknownOpcode) {
  for (int op : {bc::kNumOpcodes, 0xff}) {
    auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::ADD);
    b[off] = static_cast<uint8_t>(op);
    EXPECT_TRUE(Rejects(b, off, "unknown opcode")) << op;
  }
}

TEST(VerifierInst, BadResultDType) {
  auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::ADD);
  b[off + 1] = kNumDTypes;
  EXPECT_TRUE(Rejects(b, off + 1, "bad dtype"));
}

TEST(VerifierInst, BadOperandDType) {
  auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::ADD);
  b[off + 5] |= 7 << bc::kSrcShift;
  EXPECT_TRUE(Rejects(b, off + 5, "bad dtype"));
}

TEST(VerifierInst, BadFlags) {
  {
    auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::ADD);
    b[off + 5] |= 0x20;  // reserved bit 5
    EXPECT_TRUE(Rejects(b, off + 5, "bad flags"));
  }
  {
    auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::ADD);
    b[off + 5] |= 0x40;  // reserved bit 6
    EXPECT_TRUE(Rejects(b, off + 5, "bad flags"));
  }
  {
    auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::ADD);
    b[off + 5] |= 3;  // form 3
    EXPECT_TRUE(Rejects(b, off + 5, "bad flags"));
  }
  {
    auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::LOAD);
    b[off + 5] |= bc::kFormRK;  // a scalar form on a non-binary op
    EXPECT_TRUE(Rejects(b, off + 5, "bad flags"));
  }
}

TEST(VerifierInst, ReducedLevelInElemStage) {
  auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::ADD);
  b[off + 5] |= bc::kLevelRed;
  EXPECT_TRUE(Rejects(b, off + 5, "bad level"));
}

TEST(VerifierInst, BadResultLevelOfRowOps) {
  {
    auto [b, l, off] = Inst(RowBytecode(), bc::Opcode::RMAX);
    b[off + 5] &= ~bc::kLevelRed;  // a row reduction must produce a reduced value
    EXPECT_TRUE(Rejects(b, off + 5, "bad level"));
  }
  {
    auto [b, l, off] = Inst(RowBytecode(), bc::Opcode::BCAST);
    b[off + 5] |= bc::kLevelRed;  // BCAST produces a full value
    EXPECT_TRUE(Rejects(b, off + 5, "bad level"));
  }
}

TEST(VerifierInst, DTypeNotAllowed) {
  {
    auto [b, l, off] = Inst(RowBytecode(), bc::Opcode::EXP);
    b[off + 1] = uint8_t(DType::kInt32);  // EXP is float-only
    EXPECT_TRUE(Rejects(b, off + 1, "dtype not allowed"));
  }
  {
    auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::ADD);
    b[off + 1] = uint8_t(DType::kBool);  // ADD on bool
    b[off + 5] = static_cast<uint8_t>((b[off + 5] & ~bc::kSrcMask) | uint8_t(DType::kBool) << bc::kSrcShift);
    EXPECT_TRUE(Rejects(b, off + 1, "dtype not allowed"));
  }
  {
    auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::ADD);
    b[off] = uint8_t(bc::Opcode::LT);  // a comparison must produce bool
    EXPECT_TRUE(Rejects(b, off + 1, "dtype not allowed"));
  }
}

TEST(VerifierInst, DTypeMismatch) {
  {
    auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::ADD);
    b[off + 5] |= uint8_t(DType::kFloat16) << bc::kSrcShift;  // operand f16, result f32
    EXPECT_TRUE(Rejects(b, off + 5, "dtype mismatch"));
  }
  {
    auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::LOAD);
    b[off + 1] = uint8_t(DType::kInt32);  // LOAD of an f32 tensor as i32
    EXPECT_TRUE(Rejects(b, off + 1, "dtype mismatch"));
  }
  {
    auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::LOAD);
    b[off + 1] = uint8_t(DType::kFloat16);  // f16 from an f32 *input* (not a workspace)
    EXPECT_TRUE(Rejects(b, off + 1, "dtype mismatch"));
  }
  {
    auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::STORE);
    b[Layout::tensor(2)] = uint8_t(DType::kBFloat16);  // STORE of f32 into a bf16 output
    EXPECT_TRUE(Rejects(b, off + 1, "dtype mismatch"));
  }
}

TEST(VerifierInst, RegisterOutOfRange) {
  {
    auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::LOAD);
    b[off + 2] = static_cast<uint8_t>(l.num_regs);  // destination
    EXPECT_TRUE(Rejects(b, off + 2, "register out of range"));
  }
  {
    auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::ADD);
    b[off + 3] = 0xff;  // operand a
    EXPECT_TRUE(Rejects(b, off + 3, "register out of range"));
  }
  {
    auto [b, l, off] = Inst(SelectBytecode(), bc::Opcode::SELECT);
    Put<uint16_t>(b, off + 6, 256);  // SELECT's third register
    EXPECT_TRUE(Rejects(b, off + 6, "register out of range"));
  }
  {
    auto [b, l, off] = Inst(ColBytecode(), bc::Opcode::WFILL);
    b[off + 2] = static_cast<uint8_t>(l.num_regs - 1);  // a wide pair past the last register
    EXPECT_TRUE(Rejects(b, off + 2, "register out of range"));
  }
}

TEST(VerifierInst, RegisterReadBeforeWrite) {
  auto [b, l, off] = Inst(RowBytecode(), bc::Opcode::RMAX);  // 3 registers; r2 not yet written
  b[off + 3] = 2;
  EXPECT_TRUE(Rejects(b, off + 3, "register read before write"));
  auto [c, lc, offc] = Inst(ElemBytecode(), bc::Opcode::STORE);
  Put<uint16_t>(c, 18, lc.num_regs + 1);
  c[offc + 3] = static_cast<uint8_t>(lc.num_regs);  // a register nothing writes
  EXPECT_TRUE(Rejects(c, offc + 3, "register read before write"));
}

TEST(VerifierInst, WideRegisterMisuse) {
  // ColBytecode: WFILL w0; LOAD r2; WACC w0, r2; WNARROW r2, w0; STORE r2.
  {
    auto [b, l, off] = Inst(ColBytecode(), bc::Opcode::WACC);
    b[off + 3] = 0;  // reads the wide pair as a tile
    EXPECT_TRUE(Rejects(b, off + 3, "wide register misuse"));
  }
  {
    auto [b, l, off] = Inst(ColBytecode(), bc::Opcode::WNARROW);
    b[off + 3] = 1;  // r1 is the second half of w0, not a wide register
    EXPECT_TRUE(Rejects(b, off + 3, "wide register misuse"));
  }
  {
    auto [b, l, off] = Inst(ColBytecode(), bc::Opcode::WACC);
    b[off + 2] = 1;  // accumulates into a register no WFILL made wide
    EXPECT_TRUE(Rejects(b, off + 2, "wide register misuse"));
  }
  {
    auto [b, l, off] = Inst(ColBytecode(), bc::Opcode::STORE);
    b[off + 3] = 0;  // stores the wide pair
    EXPECT_TRUE(Rejects(b, off + 3, "wide register misuse"));
  }
}

TEST(VerifierInst, OperandDTypeMismatch) {
  auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::ADD);
  b[off + 1] = uint8_t(DType::kInt32);  // i32 ADD of f32 registers
  b[off + 5] = static_cast<uint8_t>((b[off + 5] & ~bc::kSrcMask) | uint8_t(DType::kInt32) << bc::kSrcShift);
  EXPECT_TRUE(Rejects(b, off + 3, "operand dtype mismatch"));
}

TEST(VerifierInst, OperandLevelMismatch) {
  auto [b, l, off] = Inst(RowBytecode(), bc::Opcode::SUB);  // SUB r2, r0, r2 (full)
  b[off + 5] |= bc::kLevelRed;
  EXPECT_TRUE(Rejects(b, off + 3, "operand level mismatch"));
}

TEST(VerifierInst, ViewOutOfRange) {
  auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::LOAD);
  Put<uint16_t>(b, off + 6, l.stages[0].num_views);
  EXPECT_TRUE(Rejects(b, off + 6, "view out of range"));
}

TEST(VerifierInst, ViewLevelMismatch) {
  {
    auto [b, l, off] = Inst(RowBytecode(), bc::Opcode::LOAD);
    b[off + 5] |= bc::kLevelRed;  // a reduced LOAD through a full view
    EXPECT_TRUE(Rejects(b, off + 6, "view level mismatch"));
  }
  {
    auto [b, l, off] = Inst(ColBytecode(), bc::Opcode::STORE);
    b[off + 5] &= ~bc::kLevelRed;  // a full STORE in `post` (outside the row loop)
    EXPECT_TRUE(Rejects(b, off + 5, "bad level"));
  }
}

TEST(VerifierInst, StoreToInput) {
  auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::STORE);
  Put<uint16_t>(b, off + 6, 0);  // view 0 reads input t0
  EXPECT_TRUE(Rejects(b, off + 6, "store to input"));
}

TEST(VerifierInst, ConstantOutOfRange) {
  auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::MUL);  // MUL r, r, K0
  ASSERT_EQ(b[off + 5] & bc::kFormMask, bc::kFormRK);
  Put<uint16_t>(b, off + 6, l.num_consts);
  EXPECT_TRUE(Rejects(b, off + 6, "constant out of range"));
  // FILL: turn the first LOAD into a FILL of a missing constant.
  auto [c, lc, offc] = Inst(ElemBytecode(), bc::Opcode::LOAD);
  c[offc] = uint8_t(bc::Opcode::FILL);
  Put<uint16_t>(c, offc + 6, 7);
  EXPECT_TRUE(Rejects(c, offc + 6, "constant out of range"));
}

TEST(VerifierInst, ConstantDTypeMismatch) {
  auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::MUL);
  b[l.konst(0)] = uint8_t(DType::kInt32);
  EXPECT_TRUE(Rejects(b, off + 6, "constant dtype mismatch"));
  auto [c, lc, offc] = Inst(ElemBytecode(), bc::Opcode::LOAD);
  c[offc] = uint8_t(bc::Opcode::FILL);
  Put<uint16_t>(c, offc + 6, 0);
  c[lc.konst(0)] = uint8_t(DType::kFloat16);  // FILL.f32 of an f16 constant
  EXPECT_TRUE(Rejects(c, offc + 6, "constant dtype mismatch"));
}

TEST(VerifierInst, BadMode) {
  {
    auto [b, l, off] = Inst(ElemBytecode(), bc::Opcode::ADD);
    b[off] = uint8_t(bc::Opcode::RSUM);  // a row reduction in an ELEM stage
    b[off + 5] &= ~bc::kFormMask;
    EXPECT_TRUE(Rejects(b, off, "bad mode"));
  }
  {
    auto [b, l, off] = Inst(ColBytecode(), bc::Opcode::LOAD);
    b[off] = uint8_t(bc::Opcode::BCAST);  // BCAST in a COL stage
    EXPECT_TRUE(Rejects(b, off, "bad mode"));
  }
  {
    auto [b, l, off] = Inst(RowBytecode(), bc::Opcode::EXP);
    b[off] = uint8_t(bc::Opcode::WFILL);  // a wide op in a ROW stage
    EXPECT_TRUE(Rejects(b, off, "bad mode"));
  }
}

TEST(VerifierInst, AliasedOperands) {
  auto [b, l, off] = Inst(RowBytecode(), bc::Opcode::RMAX);  // RMAX r1, r0
  b[off + 2] = b[off + 3];
  EXPECT_TRUE(Rejects(b, off + 2, "aliased operands"));
  auto [c, lc, offc] = Inst(RowBytecode(), bc::Opcode::BCAST);  // BCAST r2, r1
  c[offc + 2] = c[offc + 3];
  EXPECT_TRUE(Rejects(c, offc + 2, "aliased operands"));
}

TEST(VerifierInst, BadReduceOp) {
  auto [b, l, off] = Inst(ColBytecode(), bc::Opcode::WFILL);
  b[off + 4] = 4;
  EXPECT_TRUE(Rejects(b, off + 4, "bad reduce op"));
  auto [c, lc, offc] = Inst(ColBytecode(), bc::Opcode::WACC);
  c[offc + 4] = 0xff;
  EXPECT_TRUE(Rejects(c, offc + 4, "bad reduce op"));
}

TEST(VerifierInst, ErrorNamesTheLaterStage) {
  // x - sum(x, axis 0): a COL stage writes the column sums to a workspace,
  // an ELEM stage reads them back. Offsets are absolute: an error in stage 1
  // points past stage 0.
  Kernel k;
  auto* x = k.Load(nullptr, {64, 32}, DType::kFloat32);
  k.Store(nullptr, k.Binary(BinaryOp::kSub, x, k.Reduce(ReduceOp::kSum, x, {0}, true)));
  k.CodeGen();
  Bytes b = k.Bytecode();
  Layout l = Parse(b);
  ASSERT_EQ(l.num_stages, 2);
  const size_t off = l.stages[1].inst(FindInst(b, l.stages[1], bc::Opcode::STORE));
  Put<uint16_t>(b, off + 6, 0);  // stage 1's view 0 reads the input
  EXPECT_TRUE(Rejects(b, off + 6, "store to input"));
  // A workspace written by stage 0 may be read, but not by a wrong dtype.
  Bytes c = k.Bytecode();
  const size_t load = l.stages[1].inst(FindInst(c, l.stages[1], bc::Opcode::LOAD, 1));
  c[load + 1] = uint8_t(DType::kInt32);
  EXPECT_TRUE(Rejects(c, load + 1, "dtype mismatch"));
}

TEST(VerifierTail, TrailingBytes) {
  Bytes b = ElemBytecode();
  const size_t end = b.size();
  b.resize(end + 8, 0);
  FixSize(b);
  EXPECT_TRUE(Rejects(b, end, "trailing bytes"));
}

// ---- positive tests ------------------------------------------------------------

std::vector<Bytes> VariedBytecode() {
  std::vector<Bytes> out;
  auto add = [&](const std::function<void(Kernel&)>& build) {
    Kernel k;
    build(k);
    k.CodeGen();
    out.push_back(k.Bytecode());
  };
  using B = BinaryOp;
  add([](Kernel& k) {  // elementwise with broadcast and a constant
    auto* a = k.Load(nullptr, {4, 8}, DType::kFloat32);
    auto* b = k.Load(nullptr, {8}, DType::kFloat32);
    k.Store(nullptr, k.Binary(B::kAdd, k.Binary(B::kMul, a, 2.0), b));
  });
  add([](Kernel& k) {  // f16 in, casts, unary ops, bool output
    auto* a = k.Load(nullptr, {3, 37}, DType::kFloat16);
    auto* e = k.Unary(UnaryOp::kTanh, k.Cast(a, DType::kFloat32));
    k.Store(nullptr, k.Cast(e, DType::kBFloat16));
    k.Store(nullptr, k.Binary(B::kGreater, e, 0.25));
  });
  add([](Kernel& k) {  // integers, select, scalar-first form
    auto* a = k.Load(nullptr, {5, 7}, DType::kInt32);
    auto* b = k.Load(nullptr, {5, 7}, DType::kInt8);
    auto* c = k.Binary(B::kLess, a, k.Cast(b, DType::kInt32));
    k.Store(nullptr, k.Select(c, a, k.Binary(B::kSub, 3.0, a)));
  });
  add([](Kernel& k) {  // softmax (ROW)
    auto* x = k.Load(nullptr, {6, 33}, DType::kFloat32);
    auto* m = k.Reduce(ReduceOp::kMax, x, {1}, true);
    auto* e = k.Unary(UnaryOp::kExp, k.Binary(B::kSub, x, m));
    k.Store(nullptr, k.Binary(B::kDiv, e, k.Reduce(ReduceOp::kSum, e, {1}, true)));
  });
  add([](Kernel& k) {  // column reductions (COL), float and int
    auto* x = k.Load(nullptr, {3, 50, 20}, DType::kFloat32);
    k.Store(nullptr, k.Reduce(ReduceOp::kMax, x, {1}, false));
    auto* y = k.Load(nullptr, {50, 20}, DType::kInt32);
    k.Store(nullptr, k.Reduce(ReduceOp::kSum, y, {0}, true));
  });
  add([](Kernel& k) {  // full reduction through a workspace
    auto* x = k.Load(nullptr, {70000}, DType::kBFloat16);
    k.Store(nullptr, k.Reduce(ReduceOp::kSum, x, {0}, false));
  });
  add([](Kernel& k) {  // slices, transpose, padded store
    int64_t st[] = {1, 2}, sz[] = {3, 4};
    int64_t shape[] = {5, 9};
    auto* x = k.SliceLoad(nullptr, Dims(shape, 2), DType::kFloat32, Dims(st, 2), Dims(sz, 2));
    auto* t = k.Transpose(x, {1, 0});
    int64_t pad[] = {6, 5};
    k.PadStore(nullptr, k.Unary(UnaryOp::kSqrt, t), Dims(pad, 2), {}, -1.0);
  });
  add([](Kernel& k) {  // any-element
    auto* x = k.Load(nullptr, {1000}, DType::kFloat32);
    k.Store(nullptr, k.ElemAny(k.Binary(B::kGreater, x, 0.5)));
  });
  add([](Kernel& k) {  // zero-size column reduction (R = 0)
    auto* x = k.Load(nullptr, {0, 32}, DType::kFloat32);
    k.Store(nullptr, k.Reduce(ReduceOp::kSum, x, {0}, false));
  });
  return out;
}

TEST(VerifierPositive, VariedKernelsVerify) {
  std::vector<Bytes> all = VariedBytecode();
  EXPECT_GE(all.size(), 9u);
  for (size_t i = 0; i < all.size(); ++i) {
    SCOPED_TRACE("kernel " + std::to_string(i));
    EXPECT_NO_THROW(Verify(all[i]));
    EXPECT_NO_THROW(Disassemble(all[i]));
    Parse(all[i]);
  }
}

// Zero-filled buffers of the sizes the tensor table declares, with a guard
// zone after each one that must survive a run.
struct Buffers {
  std::vector<std::vector<uint8_t>> bufs;
  std::vector<void*> ptrs;
  static constexpr size_t kGuard = 64;
  explicit Buffers(const bc::Program& p) {
    for (const bc::TensorDesc& t : p.tensors) {
      bufs.emplace_back(static_cast<size_t>(t.numel) * DTypeSize(t.dtype) + kGuard, 0);
      std::fill(bufs.back().end() - kGuard, bufs.back().end(), 0xA5);
    }
    for (auto& b : bufs) ptrs.push_back(b.data());
  }
  bool GuardsIntact() const {
    for (const auto& b : bufs)
      for (size_t i = b.size() - kGuard; i < b.size(); ++i)
        if (b[i] != 0xA5) return false;
    return true;
  }
};

// Lanes the tile loops of `p` touch, counted without overflow. For COL
// stages this is what the VM iterates (tiles x (R + 2) x columns).
__int128 LoopWork(const bc::Program& p) {
  __int128 w = 0;
  for (const bc::Stage& s : p.stages) {
    const __int128 full = bc::FullElems(s), red = bc::RedElems(s);
    if (s.mode == bc::Mode::kCol) {
      const __int128 tiles = (red / s.p[1]) * ((__int128(s.p[1]) + s.p[2] - 1) / s.p[2]);
      w += tiles * (__int128(s.p[0]) + 2) * s.p[2];
    } else {
      w += full + red;
    }
  }
  return w;
}

TEST(VerifierPositive, RandomByteMutationsVerifyOrThrow) {
  std::vector<Bytes> seeds = VariedBytecode();
  std::mt19937_64 rng(20240611);
  int verified = 0, rejected = 0, ran = 0;
  for (int iter = 0; iter < 6000; ++iter) {
    Bytes b = seeds[iter % seeds.size()];
    const size_t at = std::uniform_int_distribution<size_t>(0, b.size() - 1)(rng);
    const int how = iter % 3;
    if (how == 0)
      b[at] = static_cast<uint8_t>(rng());
    else if (how == 1)
      b[at] ^= static_cast<uint8_t>(1u << (rng() % 8));
    else
      b[at] = static_cast<uint8_t>(b[at] + ((rng() & 1) ? 1 : -1));
    bc::Program p;
    try {
      bc::Parse(b, p);
    } catch (const Error&) {
      ++rejected;
      continue;
    }
    ++verified;
    EXPECT_NO_THROW(Disassemble(b));
    // A mutant that verifies must run inside buffers of the declared sizes.
    int64_t total = 0;
    for (const auto& t : p.tensors) total += t.numel;
    std::unique_ptr<vm::Executable> exe;
    try {
      exe = std::make_unique<vm::Executable>(b);
    } catch (const Error&) {
      continue;  // verified but not decodable is allowed (no handler)
    }
    if (total > (1 << 22) || LoopWork(p) > (1 << 22)) continue;
    Buffers bufs(p);
    exe->Run(bufs.ptrs.data());
    ++ran;
    EXPECT_TRUE(bufs.GuardsIntact()) << "mutant " << iter << " wrote past a tensor";
  }
  EXPECT_GT(rejected, 0);
  EXPECT_GT(verified, 0);
  std::printf("[ mutations ] %d rejected, %d verified, %d ran\n", rejected, verified, ran);
}

// ---- known holes: these verify today but must not; enable when fixed --------

// Bytecode built directly with bc::Encode.
bc::Program ColProgram(int64_t R, int64_t full_dim, int64_t out_offset) {
  bc::Program p;
  p.num_regs = 2;
  p.tile_cap = 16;
  p.tensors = {{DType::kFloat32, bc::TensorKind::kInput, 0, 16}, {DType::kFloat32, bc::TensorKind::kOutput, 0, 16}};
  bc::Stage s;
  s.mode = bc::Mode::kCol;
  s.full_rank = 1;
  s.full_dims[0] = full_dim;
  s.red_rank = 1;
  s.red_dims[0] = 16;
  s.p[0] = R;
  s.p[1] = 16;
  s.p[2] = 16;
  s.p[3] = 1;
  bc::View in_full{0, bc::Level::kFull, 0, {1}};
  bc::View out_full{1, bc::Level::kFull, out_offset, {1}};
  bc::View in_red{0, bc::Level::kRed, 0, {1}};
  s.views = {in_full, out_full, in_red};
  p.stages = {s};
  return p;
}

// A COL stage with R = 0 has an empty full domain, so its full-level views
// are not bounds-checked, yet tile_init and post still run once per tile
// with a full tile of `cols` lanes: a full-level STORE in tile_init writes
// through a view whose offset was never checked.
TEST(VerifierKnownHoles, ColStageWithNoRowsChecksFullViews) {
  bc::Program p = ColProgram(/*R=*/0, /*full_dim=*/0, /*out_offset=*/1 << 20);
  p.stages[0].insts = {bc::Inst{uint8_t(bc::Opcode::LOAD), 0, 0, 0, 0, bc::kLevelRed, 2},
                       bc::Inst{uint8_t(bc::Opcode::STORE), 0, 0, 0, 0, 0, 1}};
  p.stages[0].sections[bc::kTileInit] = 2;
  Bytes b;
  bc::Encode(p, b);
  EXPECT_THROW(Verify(b), Error);
}

// O * R * C in the column geometry check overflows int64: R = 2^60 + 1,
// C = 16 gives R * C = 2^64 + 16, which wraps to the 16 elements of the full
// domain; the body then runs for r = 1, 2, ... past the end of every full view.
TEST(VerifierKnownHoles, ColumnGeometryOverflow) {
  bc::Program p = ColProgram(/*R=*/(int64_t{1} << 60) + 1, /*full_dim=*/16, /*out_offset=*/0);
  p.stages[0].insts = {bc::Inst{uint8_t(bc::Opcode::LOAD), 0, 0, 0, 0, 0, 0},
                       bc::Inst{uint8_t(bc::Opcode::STORE), 0, 0, 0, 0, 0, 1}};
  p.stages[0].sections[bc::kBody] = 2;
  Bytes b;
  bc::Encode(p, b);
  EXPECT_THROW(Verify(b), Error);
}

}  // namespace
}  // namespace dvm
