// One error style for the whole library: Fail("op (node 3): what, values").
#pragma once

#include <sstream>
#include <utility>

#include "dvm/dvm.h"

namespace dvm {

template <typename... Args>
[[noreturn]] void Fail(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  throw Error(os.str());
}

}  // namespace dvm
