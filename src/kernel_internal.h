// Internal access to a Kernel's IR, for the reference evaluator and tests.
#pragma once

#include "dvm/dvm.h"
#include "ir/ir.h"

namespace dvm {

const ir::Graph& GetGraph(const Kernel& k);

}  // namespace dvm
