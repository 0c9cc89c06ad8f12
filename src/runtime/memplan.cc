#include "runtime/memplan.h"

#include <algorithm>
#include <numeric>

namespace dvm::runtime {

namespace {
size_t Align(size_t n) { return (n + kPlanAlign - 1) / kPlanAlign * kPlanAlign; }
bool LiveTogether(const BufferReq& a, const BufferReq& b) { return a.first <= b.last && b.first <= a.last; }
}  // namespace

MemPlan PlanMemory(std::span<const BufferReq> reqs) {
  MemPlan plan;
  plan.offset.assign(reqs.size(), 0);
  std::vector<size_t> order(reqs.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (reqs[a].bytes != reqs[b].bytes) return reqs[a].bytes > reqs[b].bytes;
    return reqs[a].first < reqs[b].first;
  });
  std::vector<size_t> placed;  // indices, kept sorted by offset
  std::vector<std::pair<size_t, size_t>> busy;
  for (size_t i : order) {
    const size_t need = Align(reqs[i].bytes);
    busy.clear();
    for (size_t j : placed)
      if (LiveTogether(reqs[i], reqs[j])) busy.emplace_back(plan.offset[j], plan.offset[j] + Align(reqs[j].bytes));
    std::sort(busy.begin(), busy.end());
    // Best fit: the smallest gap that holds the buffer, else past the end.
    size_t best = SIZE_MAX, best_gap = SIZE_MAX, cur = 0;
    for (const auto& [lo, hi] : busy) {
      if (lo >= cur + need && lo - cur < best_gap) best = cur, best_gap = lo - cur;
      cur = std::max(cur, hi);
    }
    plan.offset[i] = best != SIZE_MAX ? best : cur;
    plan.peak = std::max(plan.peak, plan.offset[i] + need);
    placed.push_back(i);
  }
  return plan;
}

std::string CheckPlan(std::span<const BufferReq> reqs, const MemPlan& plan) {
  for (size_t a = 0; a < reqs.size(); ++a) {
    if (plan.offset[a] % kPlanAlign) return "buffer " + std::to_string(a) + " misaligned";
    if (plan.offset[a] + reqs[a].bytes > plan.peak) return "buffer " + std::to_string(a) + " past the peak";
    for (size_t b = a + 1; b < reqs.size(); ++b) {
      if (!LiveTogether(reqs[a], reqs[b]) || reqs[a].bytes == 0 || reqs[b].bytes == 0) continue;
      const size_t a0 = plan.offset[a], a1 = a0 + reqs[a].bytes, b0 = plan.offset[b], b1 = b0 + reqs[b].bytes;
      if (a0 < b1 && b0 < a1)
        return "buffers " + std::to_string(a) + " and " + std::to_string(b) + " overlap while both live";
    }
  }
  return "";
}

}  // namespace dvm::runtime
