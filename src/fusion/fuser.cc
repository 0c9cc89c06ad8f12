#include "fusion/fuser.h"

#include <algorithm>
#include <functional>
#include <sstream>

#include "ir/error.h"

namespace dvm::fusion {

using graph::GNode;
using graph::GOp;
using graph::GraphIR;
using graph::OpClass;
using sym::Expr;

namespace {

// Can a kernel's dynamic Broadcast express this node? Every target dim must
// either keep the input dim (bound at launch) or be a constant.
bool BroadcastExpressible(const GraphIR& g, const GNode& n) {
  const GNode& in = g.nodes[n.in[0]];
  const size_t off = n.shape.size() - in.shape.size();
  for (size_t i = 0; i < n.shape.size(); ++i) {
    const bool kept = i >= off && !graph::DimIsOne(g.syms, in.shape[i - off]);
    if (!kept && !g.syms.Simplify(n.shape[i]).is_const()) return false;
  }
  return true;
}

// A kernel Reshape infers at most one dim (-1); the others are constants.
bool ReshapeExpressible(const GraphIR& g, const GNode& n) {
  int symbolic = 0;
  for (const Expr& d : n.shape) symbolic += g.syms.Simplify(d).is_const() ? 0 : 1;
  return symbolic <= 1;
}

// s broadcasts into d: right-aligned, every dim provably equal or 1.
bool IsSubShape(const sym::SymbolTable& t, const std::vector<Expr>& s, const std::vector<Expr>& d) {
  if (s.size() > d.size()) return false;
  const size_t off = d.size() - s.size();
  for (size_t i = 0; i < s.size(); ++i)
    if (!graph::DimIsOne(t, s[i]) && !t.ProvablyEqual(s[i], d[off + i])) return false;
  return true;
}

}  // namespace

std::vector<bool> LiveNodes(const GraphIR& g) {
  std::vector<bool> live(g.nodes.size(), false);
  for (int32_t o : g.outputs) live[o] = true;
  for (size_t i = g.nodes.size(); i-- > 0;)
    if (live[i])
      for (int32_t x : g.nodes[i].in) live[x] = true;
  return live;
}

FusionState::FusionState(const GraphIR& g) : g_(g), root_(g.nodes.size(), -1), kernel_node_(g.nodes.size(), false) {
  const std::vector<bool> live = LiveNodes(g);
  is_output_.assign(g.nodes.size(), false);
  for (int32_t o : g.outputs) is_output_[o] = true;
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const GNode& n = g.nodes[i];
    OpClass c = graph::Classify(n.op);
    if (c == OpClass::kLeaf || !live[i]) continue;  // dead nodes are dropped
    bool k = c != OpClass::kLibrary;
    if (n.op == GOp::kBroadcast) k = BroadcastExpressible(g, n);
    if (n.op == GOp::kReshape) k = ReshapeExpressible(g, n);
    kernel_node_[i] = k;
    root_[i] = static_cast<int>(members_.size());
    members_.push_back({static_cast<int32_t>(i)});
  }
}

int FusionState::GroupOf(int node) const { return root_[node]; }
bool FusionState::IsKernelNode(int node) const { return kernel_node_[node]; }

std::vector<int> FusionState::Groups() const {
  std::vector<int> r;
  for (size_t i = 0; i < members_.size(); ++i)
    if (!members_[i].empty()) r.push_back(static_cast<int>(i));
  return r;
}

std::string FusionState::CheckGroup(const std::vector<int32_t>& members) const {
  auto in_group = [&](int v) { return std::binary_search(members.begin(), members.end(), v); };
  // A prologue view reads (through views only) a value from outside.
  std::function<bool(int)> prologue = [&](int v) {
    const GNode& n = g_.nodes[v];
    if (graph::Classify(n.op) != OpClass::kView) return false;
    return !in_group(n.in[0]) || prologue(n.in[0]);
  };
  int matmul = -1;
  bool reduce = false;
  for (int v : members) {
    if (!kernel_node_[v]) return "node %" + std::to_string(v) + " cannot run in a kernel";
    const OpClass c = graph::Classify(g_.nodes[v].op);
    if (c == OpClass::kMatMul) {
      if (matmul >= 0) return "two matmuls";
      matmul = v;
    }
    if (c == OpClass::kReduce) reduce = true;
    if (c == OpClass::kView && !prologue(v)) return "view of a value computed in the kernel";
  }
  if (matmul >= 0 && reduce) return "reduction with a matmul";
  // A reduction over every axis runs in chunk stages of its own; a value of
  // the kernel that is also stored would be computed twice (once for the
  // chunks, once for the store), so such a reduction keeps only prologue
  // values no one else reads.
  for (int v : members) {
    const GNode& n = g_.nodes[v];
    if (n.op != GOp::kReduce || n.axes.size() != g_.nodes[n.in[0]].shape.size()) continue;
    for (int u : members) {
      if (u == v || graph::Classify(g_.nodes[u].op) == OpClass::kReduce) continue;
      if (is_output_[u]) return "a full reduction with a stored value";
      for (int32_t w : g_.users[u])
        if (!in_group(w)) return "a full reduction with a stored value";
    }
  }
  if (matmul >= 0)
    for (int32_t x : g_.nodes[matmul].in)
      if (in_group(x) && !prologue(x)) return "matmul operand computed in the kernel";
  // The shape domain: every non-prologue node (and prologue views read by
  // elementwise ops) broadcasts into one loop nest.
  std::vector<const std::vector<Expr>*> shapes;
  for (int v : members) {
    if (prologue(v)) {
      bool feeds_loop = false;
      for (int32_t u : g_.users[v])
        if (in_group(u) && u != matmul && !prologue(u)) feeds_loop = true;
      if (!feeds_loop) continue;
    }
    shapes.push_back(&g_.nodes[v].shape);
    const GNode& n = g_.nodes[v];
    if (n.op == GOp::kReduce) shapes.push_back(&g_.nodes[n.in[0]].shape);
  }
  if (shapes.empty()) return "";
  const std::vector<Expr>* dom = shapes[0];
  for (const auto* s : shapes)
    if (!IsSubShape(g_.syms, *s, *dom)) {
      if (IsSubShape(g_.syms, *dom, *s))
        dom = s;
      else
        return "shapes " + g_.ShapeStr(*s) + " and " + g_.ShapeStr(*dom) + " share no loop nest";
    }
  for (const auto* s : shapes)
    if (!IsSubShape(g_.syms, *s, *dom))
      return "shapes " + g_.ShapeStr(*s) + " and " + g_.ShapeStr(*dom) + " share no loop nest";
  return "";
}

bool FusionState::Reaches(int from, int to) const {
  // Is there a path from group `from` to group `to` through another group?
  // (A direct edge is the one being merged.)
  std::vector<char> seen(members_.size(), 0);
  std::vector<int> stack;
  seen[from] = 1;
  for (int32_t m : members_[from])
    for (int32_t u : g_.users[m]) {
      const int gu = root_[u];
      if (gu < 0 || gu == to || seen[gu]) continue;
      seen[gu] = 1;
      stack.push_back(gu);
    }
  while (!stack.empty()) {
    const int x = stack.back();
    stack.pop_back();
    for (int32_t m : members_[x])
      for (int32_t u : g_.users[m]) {
        const int gu = root_[u];
        if (gu == to) return true;
        if (gu < 0 || seen[gu]) continue;
        seen[gu] = 1;
        stack.push_back(gu);
      }
  }
  return false;
}

bool FusionState::TryMerge(int a, int b) {
  if (a == b || a < 0 || b < 0) return false;
  std::vector<int32_t> merged;
  std::merge(members_[a].begin(), members_[a].end(), members_[b].begin(), members_[b].end(),
             std::back_inserter(merged));
  if (!CheckGroup(merged).empty()) return false;
  if (Reaches(a, b) || Reaches(b, a)) return false;  // would make a cycle
  for (int32_t m : members_[b]) root_[m] = a;
  members_[a] = std::move(merged);
  members_[b].clear();
  return true;
}

namespace {

bool GroupHas(const FusionState& s, int grp, OpClass c) {
  for (int32_t m : s.Members(grp))
    if (graph::Classify(s.graph().nodes[m].op) == c) return true;
  return false;
}

// Tries to merge producer/consumer groups along every edge the filter
// accepts, in topological order, until nothing changes.
template <typename Filter>
void MergeEdges(FusionState& s, Filter accept) {
  const GraphIR& g = s.graph();
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t n = 0; n < g.nodes.size(); ++n) {
      for (int32_t p : g.nodes[n].in) {
        const int gp = s.GroupOf(p), gn = s.GroupOf(static_cast<int>(n));
        if (gp < 0 || gn < 0 || gp == gn) continue;
        if (!s.IsKernelNode(p) || !s.IsKernelNode(static_cast<int>(n))) continue;
        if (accept(gp, gn, p, static_cast<int>(n)) && s.TryMerge(gp, gn)) changed = true;
      }
    }
  }
}

OpClass ClassOf(const FusionState& s, int node) { return graph::Classify(s.graph().nodes[node].op); }

}  // namespace

void FuseElementwise(FusionState& s) {
  MergeEdges(s, [&](int gp, int gn, int p, int n) {
    return ClassOf(s, p) == OpClass::kElementwise && ClassOf(s, n) == OpClass::kElementwise &&
           !GroupHas(s, gp, OpClass::kReduce) && !GroupHas(s, gn, OpClass::kReduce) &&
           !GroupHas(s, gp, OpClass::kMatMul) && !GroupHas(s, gn, OpClass::kMatMul);
  });
}

void FuseReduce(FusionState& s) {
  MergeEdges(s, [&](int gp, int gn, int p, int n) {
    const OpClass cp = ClassOf(s, p), cn = ClassOf(s, n);
    const bool ok_p = cp == OpClass::kElementwise || cp == OpClass::kReduce;
    const bool ok_n = cn == OpClass::kElementwise || cn == OpClass::kReduce;
    return ok_p && ok_n && (GroupHas(s, gp, OpClass::kReduce) || GroupHas(s, gn, OpClass::kReduce)) &&
           !GroupHas(s, gp, OpClass::kMatMul) && !GroupHas(s, gn, OpClass::kMatMul);
  });
}

void FuseMatMulEpilogue(FusionState& s) {
  MergeEdges(s, [&](int gp, int gn, int p, int n) {
    const OpClass cp = ClassOf(s, p);
    return (cp == OpClass::kMatMul || cp == OpClass::kElementwise) && ClassOf(s, n) == OpClass::kElementwise &&
           GroupHas(s, gp, OpClass::kMatMul) && !GroupHas(s, gn, OpClass::kMatMul) &&
           !GroupHas(s, gn, OpClass::kReduce);
  });
}

void FuseViews(FusionState& s) {
  const GraphIR& g = s.graph();
  std::vector<bool> is_output(g.nodes.size(), false);
  for (int32_t o : g.outputs) is_output[o] = true;
  for (int v = static_cast<int>(g.nodes.size()) - 1; v >= 0; --v) {
    if (ClassOf(s, v) != OpClass::kView || !s.IsKernelNode(v) || is_output[v]) continue;
    const int gv = s.GroupOf(v);
    if (s.Members(gv).size() != 1) continue;
    int target = -1;
    bool one = true;
    for (int32_t u : g.users[v]) {
      const int gu = s.GroupOf(u);
      if (gu < 0 || !s.IsKernelNode(u)) {
        one = false;
        break;
      }
      if (target >= 0 && gu != target) one = false;
      target = gu;
    }
    if (one && target >= 0) s.TryMerge(target, gv);
  }
}

int Partition::num_kernels() const {
  int k = 0;
  for (const Group& grp : groups) k += grp.kind == Group::kKernel;
  return k;
}

Partition Finish(const FusionState& s, bool stack) {
  const GraphIR& g = s.graph();
  std::vector<int> ids = s.Groups();
  std::vector<int> level(ids.size(), 0);
  std::vector<int> index_of_group;  // FusionState group id -> index in ids
  int max_id = 0;
  for (int id : ids) max_id = std::max(max_id, id);
  index_of_group.assign(max_id + 1, -1);
  for (size_t i = 0; i < ids.size(); ++i) index_of_group[ids[i]] = static_cast<int>(i);
  // Levels by longest path; members are topologically ordered node ids and
  // groups form a DAG, so iterating to a fixpoint in node order converges.
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t i = 0; i < ids.size(); ++i)
      for (int32_t m : s.Members(ids[i]))
        for (int32_t x : g.nodes[m].in) {
          int gx = s.GroupOf(x);
          if (gx < 0 || gx == ids[i]) continue;
          int need = level[index_of_group[gx]] + 1;
          if (need > level[i]) level[i] = need, changed = true;
        }
  }
  std::vector<int> order(ids.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    if (level[a] != level[b]) return level[a] < level[b];
    return s.Members(ids[a])[0] < s.Members(ids[b])[0];
  });
  Partition p;
  p.group_of.assign(g.nodes.size(), -1);
  std::vector<bool> is_output(g.nodes.size(), false);
  for (int32_t o : g.outputs) is_output[o] = true;
  for (int oi : order) {
    Group grp;
    grp.nodes = s.Members(ids[oi]);
    grp.level = level[oi];
    const int gi = static_cast<int>(p.groups.size());
    for (int32_t m : grp.nodes) p.group_of[m] = gi;
    for (int32_t m : grp.nodes) {
      const OpClass c = graph::Classify(g.nodes[m].op);
      grp.has_matmul |= c == OpClass::kMatMul;
      grp.has_reduce |= c == OpClass::kReduce;
    }
    if (grp.nodes.size() == 1) {
      const GNode& n = g.nodes[grp.nodes[0]];
      if (n.op == GOp::kReshape)
        grp.kind = Group::kAlias;
      else if (!s.IsKernelNode(grp.nodes[0]))
        grp.kind = Group::kLibrary;
    }
    p.groups.push_back(std::move(grp));
  }
  for (Group& grp : p.groups) {
    for (int32_t m : grp.nodes) {
      for (int32_t x : g.nodes[m].in)
        if (!std::binary_search(grp.nodes.begin(), grp.nodes.end(), x) &&
            std::find(grp.inputs.begin(), grp.inputs.end(), x) == grp.inputs.end())
          grp.inputs.push_back(x);
      bool out = is_output[m];
      for (int32_t u : g.users[m])
        if (!std::binary_search(grp.nodes.begin(), grp.nodes.end(), u)) out = true;
      if (out) grp.outputs.push_back(m);
    }
  }
  // Launches: kernels of one level form a stack; library ops and aliases run
  // alone.
  for (size_t i = 0; i < p.groups.size();) {
    size_t j = i;
    while (j < p.groups.size() && p.groups[j].level == p.groups[i].level) ++j;
    std::vector<int> kernels;
    for (size_t k = i; k < j; ++k) {
      if (p.groups[k].kind == Group::kKernel && stack)
        kernels.push_back(static_cast<int>(k));
      else
        p.launches.push_back({static_cast<int>(k)});
    }
    if (!kernels.empty()) {
      if (kernels.size() == 1)
        p.launches.push_back(kernels);
      else
        p.launches.push_back(std::move(kernels));
    }
    i = j;
  }
  return p;
}

void Verify(const GraphIR& g, const Partition& p) {
  std::vector<int> launch_of(p.groups.size(), -1);
  for (size_t l = 0; l < p.launches.size(); ++l)
    for (int gi : p.launches[l]) {
      if (gi < 0 || gi >= static_cast<int>(p.groups.size()) || launch_of[gi] >= 0)
        Fail("fusion verify: group ", gi, " launched twice or out of range");
      launch_of[gi] = static_cast<int>(l);
    }
  for (size_t gi = 0; gi < p.groups.size(); ++gi)
    if (launch_of[gi] < 0) Fail("fusion verify: group ", gi, " never launched");
  std::vector<int> seen(g.nodes.size(), 0);
  for (size_t gi = 0; gi < p.groups.size(); ++gi) {
    const Group& grp = p.groups[gi];
    if (grp.nodes.empty()) Fail("fusion verify: group ", gi, " is empty");
    if (!std::is_sorted(grp.nodes.begin(), grp.nodes.end())) Fail("fusion verify: group ", gi, " unsorted");
    for (int32_t m : grp.nodes) {
      ++seen[m];
      if (p.group_of[m] != static_cast<int>(gi)) Fail("fusion verify: node %", m, " group_of mismatch");
      for (int32_t x : g.nodes[m].in) {
        const int gx = p.group_of[x];
        if (gx < 0 || gx == static_cast<int>(gi)) continue;
        if (launch_of[gx] >= launch_of[gi])
          Fail("fusion verify: node %", m, " (launch ", launch_of[gi], ") reads %", x, " of launch ", launch_of[gx]);
      }
    }
  }
  const std::vector<bool> live = LiveNodes(g);
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    const bool leaf = graph::Classify(g.nodes[i].op) == OpClass::kLeaf || !live[i];
    if (leaf ? seen[i] != 0 : seen[i] != 1) Fail("fusion verify: node %", i, " is in ", seen[i], " groups");
  }
}

std::string Partition::Dump(const GraphIR& g) const {
  std::ostringstream os;
  for (size_t l = 0; l < launches.size(); ++l) {
    const bool stacked = launches[l].size() > 1;
    for (int gi : launches[l]) {
      const Group& grp = groups[gi];
      os << "launch " << l << (stacked ? " (stack)" : "") << ": "
         << (grp.kind == Group::kKernel    ? "kernel"
             : grp.kind == Group::kLibrary ? "library"
                                           : "alias");
      if (grp.has_matmul) os << " [matmul]";
      if (grp.has_reduce) os << " [reduce]";
      os << " nodes";
      for (int32_t m : grp.nodes) os << " %" << m;
      os << " -> outputs";
      for (int32_t o : grp.outputs) os << " %" << o << g.ShapeStr(g.nodes[o].shape);
      os << "\n";
    }
  }
  return os.str();
}

void FusionState::Verify(const char* after) const {
  const std::vector<bool> live = LiveNodes(g_);
  std::vector<int> count(g_.nodes.size(), 0);
  for (int grp : Groups()) {
    const auto& m = members_[grp];
    if (!std::is_sorted(m.begin(), m.end())) Fail("fusion (after ", after, "): group ", grp, " members unsorted");
    for (int32_t v : m) {
      ++count[v];
      if (root_[v] != grp) Fail("fusion (after ", after, "): node %", v, " maps to group ", root_[v], ", not ", grp);
    }
    if (m.size() > 1) {
      const std::string why = CheckGroup(m);
      if (!why.empty()) Fail("fusion (after ", after, "): group ", grp, " is not a valid kernel: ", why);
    }
    if (Reaches(grp, grp)) Fail("fusion (after ", after, "): group ", grp, " is on a cycle");
  }
  for (size_t i = 0; i < g_.nodes.size(); ++i) {
    const bool grouped = live[i] && graph::Classify(g_.nodes[i].op) != OpClass::kLeaf;
    if (count[i] != (grouped ? 1 : 0)) Fail("fusion (after ", after, "): node %", i, " is in ", count[i], " groups");
  }
}

Partition Fuse(const GraphIR& g, const FuseOptions& options) {
  FusionState s(g);
  if (options.fuse) {
    FuseElementwise(s);
    s.Verify("elementwise");
    FuseReduce(s);
    s.Verify("reduce");
    FuseElementwise(s);
    s.Verify("elementwise");
    FuseMatMulEpilogue(s);
    s.Verify("matmul_epilogue");
    FuseViews(s);
    s.Verify("views");
  }
  Partition p = Finish(s, options.stack && options.fuse);
  Verify(g, p);
  return p;
}

}  // namespace dvm::fusion
