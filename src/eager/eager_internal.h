// Eager runtime internals: tensor impls, trace nodes and the per-context
// state (src/eager/eager.cc records, src/eager/flush.cc flushes).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "dvm/eager.h"
#include "dvm/graph.h"
#include "graph/graph_ir.h"

namespace dvm::eager {

constexpr int kMaxRank = 8;

// A buffer: owned (allocated by the eager layer) or the caller's.
struct Buffer {
  void* p = nullptr;
  size_t bytes = 0;
  size_t capacity = 0;  // owned: the allocation's size (its cache class)
  bool owned = false;
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();
};

struct TensorImpl {
  DType dtype = DType::kFloat32;
  uint8_t rank = 0;
  bool failed = false;  // its trace failed; reading it throws
  int64_t shape[kMaxRank] = {};
  std::shared_ptr<Buffer> buf;  // materialised
  // Pending: node `node` of `ctx`'s trace number `epoch`.
  Context::Impl* ctx = nullptr;
  int32_t node = -1;
  uint64_t epoch = 0;
  ~TensorImpl();
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < rank; ++i) n *= shape[i];
    return n;
  }
  size_t bytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype); }
};

// One recorded op. Operands: >= 0 a trace node, < 0 trace input -(ref + 1).
struct TNode {
  graph::GOp op = graph::GOp::kUnary;
  uint8_t sub = 0;
  DType dtype = DType::kFloat32;
  bool keepdims = false;
  uint8_t nin = 0;
  uint8_t rank = 0;
  uint8_t nattr = 0;
  int32_t in[3] = {0, 0, 0};
  // kTranspose: perm; kReduce: axes; kBroadcast/kReshape: target dims;
  // kSlice: axis, start, size; kConcat: axis, first operand in the pool;
  // kIota: n; kCausalMask: q, kv.
  int64_t attr[kMaxRank] = {};
  double scalar = 0, scalar2 = 0;
  int64_t shape[kMaxRank] = {};
  TensorImpl* owner = nullptr;  // alive handle, or null
};

struct Context::Impl {
  ContextOptions opt;
  EagerStats st;
  std::vector<TNode> nodes;
  std::vector<std::shared_ptr<TensorImpl>> inputs;  // materialised operands
  std::vector<int32_t> pool;                        // concat operands
  uint64_t epoch = 1;
  bool flushing = false;
  // Record time: ticks of a cheap counter, converted by stats().
  uint64_t record_ticks = 0, ticks0 = 0;
  std::chrono::steady_clock::time_point clock0;

  struct Entry {
    std::vector<uint64_t> key;
    std::unique_ptr<CompiledGraph> cg;
    std::vector<int32_t> trace_of_gnode;  // graph node id -> trace op (-1)
    uint64_t last_use = 0;
  };
  std::unordered_map<uint64_t, std::unique_ptr<Entry>> cache;
  uint64_t use_clock = 0;

  // Flush scratch, reused.
  std::vector<uint64_t> key;
  std::vector<int64_t> classes;  // dim value per symbol class
  std::vector<int32_t> outs;     // escaping trace nodes
  std::vector<TensorArg> in_args, out_args;

  Impl() {
    nodes.reserve(64);
    inputs.reserve(16);
  }
  ~Impl();
  void Flush();
  void Drop(const std::string& why);  // forgets the trace; tensors fail

  // Flush helpers (flush.cc).
  int64_t ClassOf(int64_t v, bool add);
  uint64_t EncodeDim(int64_t v, bool add);
  void EncodeAttrDims(const TNode& n, uint64_t* enc);
  void BuildKey();
  std::unique_ptr<Entry> Compile();
};

// A buffer for `bytes` (from the process-wide buffer cache when large),
// counted in `c`'s stats.
std::shared_ptr<Buffer> AllocateBuffer(Context::Impl* c, size_t bytes);

// "mul", "reduce_sum", ... for messages.
std::string OpName(const TNode& n);

}  // namespace dvm::eager
