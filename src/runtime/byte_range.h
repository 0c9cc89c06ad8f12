// The bytes a launch uses of a caller's buffer, and whether two such ranges
// share any (the overlap checks of Kernel, KernelStack and CompiledGraph).
#pragma once

#include <cstddef>
#include <cstdint>

namespace dvm::runtime {

struct ByteRange {
  uintptr_t b = 0, e = 0;  // [b, e)
  static ByteRange Of(const void* p, size_t bytes) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    return {a, a + bytes};
  }
  bool empty() const { return b >= e; }
  // An empty range shares no byte with anything.
  bool Overlaps(const ByteRange& o) const { return !empty() && !o.empty() && b < o.e && o.b < e; }
};

}  // namespace dvm::runtime
