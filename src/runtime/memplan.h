// Memory planning for graph execution: intermediate buffers share one arena,
// and two buffers whose lifetimes overlap never share bytes.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <vector>

namespace dvm::runtime {

// One buffer: its size and the launches (inclusive) during which it lives.
struct BufferReq {
  size_t bytes = 0;
  int first = 0;
  int last = 0;
};

struct MemPlan {
  std::vector<size_t> offset;  // per request, 64-byte aligned
  size_t peak = 0;             // arena bytes needed
};

constexpr size_t kPlanAlign = 64;

// Greedy best-fit by decreasing size: each buffer takes the lowest offset
// that does not overlap a placed buffer alive at the same time.
MemPlan PlanMemory(std::span<const BufferReq> reqs);

// Empty when no two buffers alive at the same time overlap; else a message
// naming the pair (used by tests and debug checks).
std::string CheckPlan(std::span<const BufferReq> reqs, const MemPlan& plan);

}  // namespace dvm::runtime
