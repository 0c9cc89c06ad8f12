// The fuser: partitions a graph's compute nodes into fused kernels, library
// ops and aliases, by named passes over a FusionState. Decisions are taken
// on symbolic shapes (graph/graph_ir.h): two ops share a loop nest only when
// their shapes are provably equal or provably broadcast (dims equal or 1),
// so a partition is valid for every binding the graph's facts allow.
//
// The same passes serve the static-graph executor and the eager runtime
// (which records its traces as GraphIR): one piece of code decides what may
// fuse.
//
// Passes (each can run alone; Verify checks the invariants between them):
//   elementwise       chains of elementwise/broadcast ops with equal or
//                     broadcast shapes
//   reduce            reductions with their elementwise prologue and
//                     epilogue (layernorm, softmax -> one kernel)
//   matmul_epilogue   elementwise consumers of a matmul (bias, activation,
//                     residual, cast) join its GEMM kernel
//   views             reshape/transpose of a kernel's input become part of
//                     the load (prologue views); lone reshapes are aliases
//   stack             independent kernels of one level launch as one stack
#pragma once

#include <string>
#include <vector>

#include "graph/graph_ir.h"

namespace dvm::fusion {

struct Group {
  enum Kind : uint8_t { kKernel, kLibrary, kAlias };
  Kind kind = kKernel;
  std::vector<int32_t> nodes;    // members, in topological order
  std::vector<int32_t> inputs;   // values read from outside (materialised)
  std::vector<int32_t> outputs;  // members read outside or graph outputs
  bool has_matmul = false;
  bool has_reduce = false;
  int level = 0;  // longest path from the graph inputs, in groups
};

struct Partition {
  std::vector<int32_t> group_of;           // per node; -1 for inputs/constants
  std::vector<Group> groups;               // in execution order
  std::vector<std::vector<int>> launches;  // execution order; >1 group = a stack
  int num_kernels() const;
  std::string Dump(const graph::GraphIR& g) const;
};

struct FuseOptions {
  bool fuse = true;
  bool stack = true;
};

// Nodes the graph outputs depend on (the others are dropped).
std::vector<bool> LiveNodes(const graph::GraphIR& g);

// Working state of the passes: a union-find of groups over the nodes.
class FusionState {
 public:
  explicit FusionState(const graph::GraphIR& g);
  const graph::GraphIR& graph() const { return g_; }
  int GroupOf(int node) const;  // -1 for leaves
  const std::vector<int32_t>& Members(int group) const { return members_[group]; }
  std::vector<int> Groups() const;  // live group ids
  // Merges if legal; returns whether it did.
  bool TryMerge(int a, int b);
  // Would a group of these members be a valid kernel? (shape domain,
  // one matmul with only views before it, no reduction with a matmul,
  // expressible views.) Empty string when valid, else the reason.
  std::string CheckGroup(const std::vector<int32_t>& members) const;
  bool IsKernelNode(int node) const;  // fusible into a bytecode kernel
  // Checks the state's invariants (every live compute node in exactly one
  // group, every group a valid kernel, no cycles between groups); throws
  // dvm::Error naming the pass it ran after.
  void Verify(const char* after) const;

 private:
  bool Reaches(int from, int to) const;
  const graph::GraphIR& g_;
  std::vector<int> root_;  // node -> group id (index into members_), -1 leaf
  std::vector<std::vector<int32_t>> members_;
  std::vector<bool> kernel_node_;
  std::vector<bool> is_output_;
};

// The passes.
void FuseElementwise(FusionState& s);
void FuseReduce(FusionState& s);
void FuseMatMulEpilogue(FusionState& s);
void FuseViews(FusionState& s);
// Turns the state into an ordered partition (kinds, inputs, outputs,
// levels) and, when `stack`, groups independent kernels of a level.
Partition Finish(const FusionState& s, bool stack);
// Checks a partition's invariants; throws dvm::Error naming the broken one.
void Verify(const graph::GraphIR& g, const Partition& p);

// All passes in order.
Partition Fuse(const graph::GraphIR& g, const FuseOptions& options);

}  // namespace dvm::fusion
