// The DVM bytecode container (docs/bytecode.md has the byte-level layout).
//
//   header (32 B) | tensor table | constant pool | stage 0 | stage 1 | ...
//
// A program is a sequence of stages run in order (a barrier between them).
// Each stage is one loop nest over an iteration domain, in one of three
// modes, and carries its own views (how a tensor is addressed from the
// domain) and instruction stream:
//
//   ELEM  tiles of p0 consecutive elements of the domain (flat order).
//   ROW   rows of p0 = K elements (the reduced trailing extent); a tile is
//         p1 rows; reduced-level values have one lane per row. The last row
//         may be short (a chunked full reduction).
//   COL   domain = [O, R, C] flattened (R reduced, in the middle); a tile is
//         p2 columns of one o; the body runs for each r, in blocks of p3
//         rows (block_init / body / block_merge), then post.
//   GEMM  C[b] = op(A[b]) @ op(B[b]) (f32, BLAS) with p0 = M, p1 = N, p2 = K;
//         a tile is a block of tile_rows x tile_cols of one batch entry;
//         after the block is computed the body (the fused epilogue) runs on
//         its rows, whose flat ranges in the domain [batch, M, N] it covers.
//
// Sections of the instruction stream, executed per tile: tile_init,
// block_init, body, block_merge, post (ELEM and ROW use only body).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "bytecode/isa.h"
#include "dvm/dvm.h"

namespace dvm::bc {

constexpr uint32_t kMagic = 0x424d5644;  // "DVMB"
constexpr uint16_t kVersion = 2;
constexpr int kMaxRank = 8;
constexpr int kNumSections = 5;
enum Section { kTileInit, kBlockInit, kBody, kBlockMerge, kPost };
enum class Mode : uint8_t { kElem, kRow, kCol, kGemm };
constexpr int kMaxBatchRank = 4;
enum class TensorKind : uint8_t { kInput, kOutput, kWorkspace };
enum class Level : uint8_t { kFull, kRed };

struct TensorDesc {
  DType dtype = DType::kFloat32;
  TensorKind kind = TensorKind::kInput;
  uint16_t slot = 0;  // input/output slot, or workspace number
  int64_t numel = 0;  // elements the program may address
};

struct Const {
  DType dtype = DType::kFloat32;
  uint32_t bits = 0;  // f32 bits for floats, two's complement for ints
};

struct View {
  uint16_t tensor = 0;
  Level level = Level::kFull;
  int64_t offset = 0;
  int64_t strides[kMaxRank] = {};  // one per dim of its level's domain
};

// The matrix product of a GEMM stage. A is [batch..., M, K] row-major with
// leading dim lda ([K, M] when trans_a), B likewise; C is the contiguous
// f32 tensor [batch, M, N] at offset 0.
struct Gemm {
  uint16_t a = 0, b = 0, c = 0;  // tensors
  uint8_t trans_a = 0, trans_b = 0, batch_rank = 0;
  int64_t a_off = 0, b_off = 0, lda = 0, ldb = 0;
  int64_t tile_rows = 1, tile_cols = 1, body_tile = 16;
  int64_t bdims[kMaxBatchRank] = {}, a_bs[kMaxBatchRank] = {}, b_bs[kMaxBatchRank] = {};
};

struct Stage {
  Mode mode = Mode::kElem;
  bool concurrent = false;  // runs with the previous stage, no barrier between (stacking)
  // Row groups: the full (ELEM) or reduced (ROW) domain of this stage splits
  // into `group_rows` equal row slices, and slice r of each stage of the
  // group reads only what slice r of the earlier stages of the group wrote.
  // The VM may then run the group row by row (all its stages for row r,
  // while row r is in cache) instead of stage by stage; tiles are the same
  // computations either way, so the bits are the same. 0: no group.
  uint16_t group_rows = 0;
  bool row_join = false;  // continues the row group of the previous stage
  uint8_t full_rank = 0, red_rank = 0;
  int64_t full_dims[kMaxRank] = {};
  int64_t red_dims[kMaxRank] = {};
  int64_t p[4] = {};
  uint16_t sections[kNumSections] = {};
  Gemm gemm;  // kGemm only
  std::vector<View> views;
  std::vector<Inst> insts;
};

struct Program {
  uint16_t num_regs = 0;
  uint32_t tile_cap = 0;  // lanes per register
  std::vector<TensorDesc> tensors;
  std::vector<Const> consts;
  std::vector<Stage> stages;
};

// Serialises a program. The encoder asserts (throws) on out-of-range fields.
void Encode(const Program& p, std::vector<uint8_t>& out);

// Parses and verifies bytecode. On any violation throws dvm::Error
// "bytecode offset N: <rule>: <details>". The contract: a program that
// verifies cannot make the VM read or write outside its tensors, its
// registers or its constant pool, whatever buffers of the declared sizes
// are bound to it.
void Parse(std::span<const uint8_t> bytes, Program& out);

std::string Disassemble(const Program& p);

int64_t FullElems(const Stage& s);
int64_t RedElems(const Stage& s);

// Whether a view (dims, strides over its level's domain, offset) keeps slice
// r of R of that domain (its row-major blocks) inside elements
// [r * slab, (r + 1) * slab) of its tensor: the domain's leading dims of
// product R (a dim may be split) step by slab row-major, the rest stays
// within one slab. Codegen marks row groups by it; the VM checks it before
// it gives a workspace one slab per thread instead of one per row.
bool SlabLocal(const int64_t* dims, const int64_t* strides, size_t rank, int64_t offset, int64_t R, int64_t slab);

// Whether a view repeats one row over its domain (gamma, beta, a bias):
// stride 0 on every dim but the last, which it walks. Codegen sizes tiles by
// it; the VM expands such a load once per thread and launch.
bool RowInvariant(const int64_t* dims, const int64_t* strides, int rank);

}  // namespace dvm::bc
