// Codegen: (kernel IR, concrete input shapes) -> verified bytecode.
//
// Passes, in order:
//   infer      concrete shape of every node (ir::InferShapes)
//   lower      views folded into loads (slice, broadcast, transpose,
//              reshape of contiguous data), reductions normalised to
//              contiguous axis blocks, full reductions split into chunks
//   stage      each output's backward slice becomes a loop nest (ELEM, ROW or
//              COL); values that cannot live in one nest are materialised in
//              a workspace and re-loaded by a later stage
//   coalesce   adjacent domain dims merged where every view allows it
//   select     instructions per stage, with reduced/full tile levels
//   regalloc   linear scan over tile registers, reusing dead ones
//   encode     bytecode (bytecode/format.h)
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "dvm/dvm.h"
#include "ir/ir.h"

namespace dvm::codegen {

struct Result {
  std::vector<uint8_t> bytecode;
  std::vector<Shape> output_shapes;
  std::vector<int64_t> input_numel;   // elements of each input tensor
  std::vector<int64_t> workspace_bytes;  // one entry per workspace tensor
};

// Tiling parameters (lanes); exposed for tests.
struct Tiling {
  int64_t elem_tile = 1024;   // ELEM tile
  int64_t row_tile = 2048;    // ROW: rows * K target
  int64_t chunk = 4096;       // full reductions and long rows: elements per partial
  int64_t long_row = 16384;   // rows longer than this are reduced in chunks
  int64_t col_width = 512;    // COL: columns per tile
  int64_t col_block = 64;     // COL: rows per partial accumulator block
};

void Generate(const ir::Graph& g, std::span<const Shape> input_shapes, Result& out,
              const Tiling& tiling = Tiling());

}  // namespace dvm::codegen
