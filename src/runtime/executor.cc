// Graph executor: one dynamic dvm::Kernel per fused group (built once),
// library ops for the rest; per run, the binding from the input shapes,
// fact checks, concrete shapes, a liveness memory plan and the launches.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>

#include "dvm/graph.h"
#include "fusion/fuser.h"
#include "graph/graph_ir.h"
#include "ir/error.h"
#include "ir/ir.h"
#include "runtime/byte_range.h"
#include "runtime/libops.h"
#include "runtime/memplan.h"

namespace dvm {

using fusion::Group;
using graph::GNode;
using graph::GOp;
using sym::Expr;

namespace {

double NowUs() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

size_t Bytes(const Shape& s, DType t) { return static_cast<size_t>(ir::NumElements(s, "buffer")) * DTypeSize(t); }

// Copies the slice [start, start + out[axis]) of `in` along `axis`.
void SliceCopy(const uint8_t* in, const Shape& in_shape, int64_t axis, int64_t start, const Shape& out_shape,
               size_t elem, uint8_t* out) {
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= in_shape[d];
  for (size_t d = axis + 1; d < in_shape.size(); ++d) inner *= in_shape[d];
  const size_t row_in = static_cast<size_t>(in_shape[axis] * inner) * elem;
  const size_t row_out = static_cast<size_t>(out_shape[axis] * inner) * elem;
  const size_t off = static_cast<size_t>(start * inner) * elem;
  for (int64_t o = 0; o < outer; ++o) std::memcpy(out + o * row_out, in + o * row_in + off, row_out);
}

// Numpy broadcast copy of `in` to `out_shape` (right-aligned).
void ExpandCopy(const uint8_t* in, const Shape& in_shape, const Shape& out_shape, size_t elem, uint8_t* out) {
  const size_t r = out_shape.size(), off = r - in_shape.size();
  std::vector<int64_t> stride(r, 0);
  int64_t s = 1;
  for (size_t d = in_shape.size(); d-- > 0;) {
    stride[off + d] = in_shape[d] == 1 ? 0 : s;
    s *= in_shape[d];
  }
  const int64_t n = ir::NumElements(out_shape, "broadcast");
  std::vector<int64_t> idx(r, 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t src = 0;
    for (size_t d = 0; d < r; ++d) src += idx[d] * stride[d];
    std::memcpy(out + i * elem, in + src * elem, elem);
    for (size_t d = r; d-- > 0;) {
      if (++idx[d] < out_shape[d]) break;
      idx[d] = 0;
    }
  }
}

}  // namespace

struct CompiledGraph::Impl {
  graph::GraphIR ir;
  fusion::Partition part;
  std::vector<std::unique_ptr<Kernel>> kernels;      // per group (null for non-kernels)
  std::vector<std::unique_ptr<KernelStack>> stacks;  // per launch (null unless stacked)
  std::vector<int> launch_of;                        // per group
  std::vector<int> alias_root;                       // per node: storage owner
  int num_matmul_kernels = 0;

  // Per-run scratch, reused.
  std::vector<Shape> shapes;
  std::vector<void*> ptr;
  std::vector<int64_t> binding;
  void* arena = nullptr;
  size_t arena_bytes = 0;

  ~Impl() { std::free(arena); }

  void BuildKernel(int gi);
  void Bind(std::span<const TensorArg> inputs);
  void RunLibrary(const Group& grp);
  void RunLibraryOp(const Group& grp);
};

void CompiledGraph::Impl::BuildKernel(int gi) {
  const Group& grp = part.groups[gi];
  auto k = std::make_unique<Kernel>(KernelType::kDynamic);
  std::map<int32_t, NDObject*> obj;
  for (int32_t x : grp.inputs) {
    const GNode& n = ir.nodes[x];
    Shape dyn(n.shape.size(), -1);
    obj[x] = k->Load(nullptr, dyn, n.dtype);
  }
  for (int32_t m : grp.nodes) {
    const GNode& n = ir.nodes[m];
    auto in = [&](int i) { return obj.at(n.in[i]); };
    NDObject* r = nullptr;
    switch (n.op) {
      case GOp::kUnary:
        r = k->Unary(UnaryOp(n.sub), in(0));
        break;
      case GOp::kBinary:
        r = k->Binary(BinaryOp(n.sub), in(0), in(1));
        break;
      case GOp::kBinaryTS:
        r = k->Binary(BinaryOp(n.sub), in(0), n.scalar);
        break;
      case GOp::kBinaryST:
        r = k->Binary(BinaryOp(n.sub), n.scalar, in(0));
        break;
      case GOp::kSelect:
        r = k->Select(in(0), in(1), in(2));
        break;
      case GOp::kCast:
        r = k->Cast(in(0), n.dtype);
        break;
      case GOp::kBroadcast: {
        const GNode& x = ir.nodes[n.in[0]];
        const size_t off = n.shape.size() - x.shape.size();
        Shape target(n.shape.size());
        for (size_t i = 0; i < n.shape.size(); ++i) {
          const bool kept = i >= off && !graph::DimIsOne(ir.syms, x.shape[i - off]);
          target[i] = kept ? -1 : ir.syms.Simplify(n.shape[i]).value();
        }
        r = k->Broadcast(in(0), target);
        break;
      }
      case GOp::kReshape: {
        Shape target;
        for (const Expr& d : n.shape) {
          Expr s = ir.syms.Simplify(d);
          target.push_back(s.is_const() ? s.value() : -1);
        }
        r = k->Reshape(in(0), target);
        break;
      }
      case GOp::kTranspose:
        r = k->Transpose(in(0), n.axes);
        break;
      case GOp::kReduce:
        r = k->Reduce(ReduceOp(n.sub), in(0), n.axes, n.keepdims);
        break;
      case GOp::kMatMul:
        r = k->MatMul(in(0), in(1), n.sub & 1, n.sub & 2);
        break;
      default:
        Fail("graph executor: node ", ir.NodeStr(m), " cannot run in a kernel");
    }
    obj[m] = r;
  }
  for (int32_t o : grp.outputs) k->Store(nullptr, obj.at(o));
  k->CodeGen();
  kernels[gi] = std::move(k);
}

CompiledGraph::CompiledGraph(const Graph& g, const CompileOptions& options) : impl_(std::make_unique<Impl>()) {
  Impl& im = *impl_;
  im.ir = g.impl().ir;
  if (im.ir.outputs.empty()) Fail("compile: the graph has no outputs");
  im.ir.Finalize();
  im.part = fusion::Fuse(im.ir, {options.fuse, options.stack});
  const auto& groups = im.part.groups;
  im.kernels.resize(groups.size());
  for (size_t gi = 0; gi < groups.size(); ++gi)
    if (groups[gi].kind == Group::kKernel) {
      im.BuildKernel(static_cast<int>(gi));
      im.num_matmul_kernels += groups[gi].has_matmul;
    }
  im.launch_of.assign(groups.size(), -1);
  im.stacks.resize(im.part.launches.size());
  for (size_t l = 0; l < im.part.launches.size(); ++l) {
    for (int gi : im.part.launches[l]) im.launch_of[gi] = static_cast<int>(l);
    if (im.part.launches[l].size() > 1) im.stacks[l] = std::make_unique<KernelStack>();
  }
  // Storage owners: an alias shares its input's storage.
  im.alias_root.resize(im.ir.nodes.size());
  for (size_t i = 0; i < im.ir.nodes.size(); ++i) {
    im.alias_root[i] = static_cast<int>(i);
    const int gi = im.part.group_of[i];
    if (gi >= 0 && groups[gi].kind == Group::kAlias) im.alias_root[i] = im.alias_root[im.ir.nodes[i].in[0]];
  }
}

CompiledGraph::~CompiledGraph() = default;

void CompiledGraph::Impl::Bind(std::span<const TensorArg> inputs) {
  if (inputs.size() != ir.inputs.size())
    Fail("run: ", inputs.size(), " inputs given, the graph has ", ir.inputs.size());
  const int ns = ir.syms.num_symbols();
  std::vector<int64_t> val(ns, -1);
  std::vector<std::pair<int, int>> from(ns, {-1, -1});  // (input, axis) that bound the symbol
  std::vector<std::pair<std::string, int64_t>> named;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const GNode& n = ir.nodes[ir.inputs[i]];
    const Shape& s = inputs[i].shape;
    if (s.size() != n.shape.size())
      Fail("run: input '", n.name, "' has rank ", s.size(), " (shape ", ir::ShapeStr(s), "), the graph expects rank ",
           n.shape.size(), " ", ir.ShapeStr(n.shape));
    for (size_t d = 0; d < s.size(); ++d) {
      if (s[d] < 0) Fail("run: input '", n.name, "' axis ", d, ": negative dim ", s[d]);
      const Expr e = ir.syms.Simplify(n.shape[d]);
      if (e.is_const()) {
        if (e.value() != s[d])
          Fail("run: input '", n.name, "' axis ", d, " is ", s[d], ", the graph expects ", e.value(), " (shape ",
               ir.ShapeStr(n.shape), ")");
        continue;
      }
      if (!e.is_symbol()) continue;  // checked with the facts below
      const int id = e.symbol();
      if (val[id] >= 0 && val[id] != s[d])
        Fail("run: input '", n.name, "' axis ", d, " binds ", ir.syms.name(id), " = ", s[d], ", but input '",
             ir.nodes[ir.inputs[from[id].first]].name, "' axis ", from[id].second, " bound ", ir.syms.name(id), " = ",
             val[id]);
      if (val[id] < 0) {
        val[id] = s[d];
        from[id] = {static_cast<int>(i), static_cast<int>(d)};
        named.emplace_back(ir.syms.name(id), s[d]);
      }
    }
  }
  binding = ir.syms.Bind(named);
  ir.syms.Check(binding);
}

void CompiledGraph::Impl::RunLibrary(const Group& grp) {
  try {
    RunLibraryOp(grp);
  } catch (const Error& e) {  // name the node ("%7 = gather ...: ...")
    throw Error(ir.NodeStr(grp.nodes[0]) + ": " + e.what());
  }
}

void CompiledGraph::Impl::RunLibraryOp(const Group& grp) {
  const int m = grp.nodes[0];
  const GNode& n = ir.nodes[m];
  void* out = ptr[m];
  auto in_ptr = [&](int i) { return ptr[n.in[i]]; };
  auto in_shape = [&](int i) -> const Shape& { return shapes[n.in[i]]; };
  switch (n.op) {
    case GOp::kGather:
      lib::Gather(in_ptr(0), in_shape(0), n.dtype, static_cast<const int32_t*>(in_ptr(1)), in_shape(1), out);
      break;
    case GOp::kConcat: {
      std::vector<const void*> ins;
      std::vector<Shape> ss;
      for (size_t i = 0; i < n.in.size(); ++i)
        ins.push_back(in_ptr(static_cast<int>(i))), ss.push_back(in_shape(static_cast<int>(i)));
      lib::Concat(ins, ss, n.dtype, n.axes[0], out);
      break;
    }
    case GOp::kSlice:
      SliceCopy(static_cast<const uint8_t*>(in_ptr(0)), in_shape(0), n.axes[0], n.start.Eval(binding), shapes[m],
                DTypeSize(n.dtype), static_cast<uint8_t*>(out));
      break;
    case GOp::kIota:
      lib::Iota(shapes[m][0], n.dtype, n.scalar, n.scalar2, out);
      break;
    case GOp::kCausalMask:
      lib::CausalMask(shapes[m][0], shapes[m][1], n.dtype, out);
      break;
    case GOp::kBroadcast:
      ExpandCopy(static_cast<const uint8_t*>(in_ptr(0)), in_shape(0), shapes[m], DTypeSize(n.dtype),
                 static_cast<uint8_t*>(out));
      break;
    default:
      Fail("graph executor: node ", ir.NodeStr(m), " is not a library op");
  }
}

void CompiledGraph::Run(std::span<const TensorArg> inputs, std::span<const TensorArg> outputs,
                        const RunOptions& options, RunStats* stats) {
  Impl& im = *impl_;
  const double t_start = NowUs();
  const auto& ir = im.ir;
  const auto& part = im.part;
  if (outputs.size() != ir.outputs.size())
    Fail("run: ", outputs.size(), " outputs given, the graph has ", ir.outputs.size());
  im.Bind(inputs);
  const size_t nn = ir.nodes.size();
  im.shapes.resize(nn);
  for (size_t i = 0; i < nn; ++i) im.shapes[i] = ir.Eval(static_cast<int>(i), im.binding);

  // Storage: inputs and constants are the caller's; graph outputs go to the
  // caller's buffers; other group outputs are planned in the arena.
  im.ptr.assign(nn, nullptr);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const int id = ir.inputs[i];
    const size_t need = Bytes(im.shapes[id], ir.nodes[id].dtype);
    if (inputs[i].data == nullptr && need > 0) Fail("run: input '", ir.nodes[id].name, "' is null");
    if (inputs[i].bytes && inputs[i].bytes < need)
      Fail("run: input '", ir.nodes[id].name, "' buffer has ", inputs[i].bytes, " bytes, needs ", need);
    im.ptr[id] = inputs[i].data;
  }
  for (size_t i = 0; i < nn; ++i)
    if (ir.nodes[i].op == GOp::kConst) im.ptr[i] = const_cast<void*>(ir.nodes[i].data);
  // Gathers whose ids come straight from an input are checked before any
  // launch, so a bad id leaves the caller's outputs untouched.
  for (size_t i = 0; i < nn; ++i) {
    const GNode& n = ir.nodes[i];
    if (n.op != GOp::kGather || part.group_of[i] < 0 || ir.nodes[n.in[1]].op != GOp::kInput) continue;
    const auto* ids = static_cast<const int32_t*>(im.ptr[n.in[1]]);
    const int64_t count = ir::NumElements(im.shapes[n.in[1]], "gather"), rows = im.shapes[n.in[0]][0];
    for (int64_t j = 0; j < count; ++j)
      if (ids[j] < 0 || ids[j] >= rows)
        Fail(ir.NodeStr(static_cast<int>(i)), ": id ", ids[j], " at position ", j, " of input '", ir.nodes[n.in[1]].name,
             "' is outside [0, ", rows, ")");
  }
  std::vector<int> out_slot(nn, -1);
  for (size_t o = 0; o < outputs.size(); ++o) {
    const int id = ir.outputs[o];
    const size_t need = Bytes(im.shapes[id], ir.nodes[id].dtype);
    if (outputs[o].data == nullptr && need > 0) Fail("run: output ", o, " is null");
    if (outputs[o].bytes && outputs[o].bytes < need)
      Fail("run: output ", o, " buffer has ", outputs[o].bytes, " bytes, needs ", need, " for shape ",
           ir::ShapeStr(im.shapes[id]));
    // The first output slot of a computed, non-alias value is written in
    // place; other slots (and outputs that are leaves or aliases) are copied.
    const int gi = part.group_of[id];
    if (gi >= 0 && part.groups[gi].kind != Group::kAlias && out_slot[id] < 0) {
      out_slot[id] = static_cast<int>(o);
      im.ptr[id] = outputs[o].data;
    }
  }
  // Caller buffers that overlap: outputs never overlap each other; an input
  // that an output overlaps is copied first (a later launch may read it
  // after an earlier one wrote the output), so the results are those of
  // separate buffers. Checked before anything runs.
  std::vector<std::unique_ptr<uint8_t[]>> input_copies;
  {
    std::vector<runtime::ByteRange> out_range;
    for (size_t o = 0; o < outputs.size(); ++o) {
      const int id = ir.outputs[o];
      out_range.push_back(runtime::ByteRange::Of(outputs[o].data, Bytes(im.shapes[id], ir.nodes[id].dtype)));
      for (size_t q = 0; q < o; ++q)
        if (out_range[q].Overlaps(out_range[o])) Fail("run: outputs ", q, " and ", o, " overlap in memory");
    }
    for (size_t i = 0; i < inputs.size(); ++i) {
      const int id = ir.inputs[i];
      const size_t need = Bytes(im.shapes[id], ir.nodes[id].dtype);
      const runtime::ByteRange in_range = runtime::ByteRange::Of(inputs[i].data, need);
      if (std::none_of(out_range.begin(), out_range.end(), [&](const auto& r) { return r.Overlaps(in_range); }))
        continue;
      input_copies.emplace_back(new uint8_t[need]);
      std::memcpy(input_copies.back().get(), inputs[i].data, need);
      im.ptr[id] = input_copies.back().get();
    }
  }
  // Buffers by liveness over launches.
  std::vector<runtime::BufferReq> reqs;
  std::vector<int> req_node;
  std::vector<int> req_of(nn, -1);
  for (size_t gi = 0; gi < part.groups.size(); ++gi) {
    const Group& grp = part.groups[gi];
    if (grp.kind == Group::kAlias) continue;
    for (int32_t o : grp.outputs) {
      if (out_slot[o] >= 0) continue;
      req_of[o] = static_cast<int>(reqs.size());
      reqs.push_back({Bytes(im.shapes[o], ir.nodes[o].dtype), im.launch_of[gi], im.launch_of[gi]});
      req_node.push_back(o);
    }
  }
  for (size_t gi = 0; gi < part.groups.size(); ++gi)
    for (int32_t x : part.groups[gi].inputs) {
      const int r = req_of[im.alias_root[x]];
      if (r >= 0) reqs[r].last = std::max(reqs[r].last, im.launch_of[gi]);
    }
  const int nlaunch = static_cast<int>(part.launches.size());
  for (int32_t o : ir.outputs) {  // copied at the end: keep alive
    const int r = req_of[im.alias_root[o]];
    if (r >= 0) reqs[r].last = nlaunch;
  }
  const runtime::MemPlan plan = runtime::PlanMemory(reqs);
  if (plan.peak > im.arena_bytes) {
    std::free(im.arena);
    im.arena = std::aligned_alloc(runtime::kPlanAlign, plan.peak);
    if (im.arena == nullptr) Fail("run: cannot allocate ", plan.peak, " bytes of intermediate memory");
    im.arena_bytes = plan.peak;
  }
  for (size_t r = 0; r < reqs.size(); ++r) im.ptr[req_node[r]] = static_cast<uint8_t*>(im.arena) + plan.offset[r];
  for (size_t i = 0; i < nn; ++i)
    if (im.alias_root[i] != static_cast<int>(i)) im.ptr[i] = im.ptr[im.alias_root[i]];
  std::vector<std::vector<int>> dies_after;
  if (options.poison_freed) {
    dies_after.assign(nlaunch, {});
    for (size_t r = 0; r < reqs.size(); ++r)
      if (reqs[r].last < nlaunch) dies_after[reqs[r].last].push_back(static_cast<int>(r));
  }

  RunStats st;
  st.peak_bytes = plan.peak;
  std::vector<TensorArg> ins, outs;
  std::vector<uint64_t> codegens_before;
  auto add_args = [&](const Group& grp) {
    ins.clear();
    outs.clear();
    for (int32_t x : grp.inputs) ins.push_back({im.ptr[x], im.shapes[x], 0});
    for (int32_t o : grp.outputs) outs.push_back({im.ptr[o], {}, Bytes(im.shapes[o], ir.nodes[o].dtype)});
  };
  for (int l = 0; l < nlaunch; ++l) {
    const auto& launch = part.launches[l];
    const double t0 = options.collect_stats ? NowUs() : 0;
    bool matmul = false;
    codegens_before.clear();
    for (int gi : launch) codegens_before.push_back(im.kernels[gi] ? im.kernels[gi]->stats().codegens : 0);
    if (launch.size() > 1) {
      KernelStack& stack = *im.stacks[l];
      stack.Clear();
      for (int gi : launch) {
        add_args(part.groups[gi]);
        stack.Add(*im.kernels[gi], ins, outs);
        matmul |= part.groups[gi].has_matmul;
      }
      stack.Launch();
      st.kernels += static_cast<int>(launch.size());
    } else {
      const Group& grp = part.groups[launch[0]];
      matmul = grp.has_matmul;
      if (grp.kind == Group::kKernel) {
        add_args(grp);
        im.kernels[launch[0]]->Launch(ins, outs);
        ++st.kernels;
      } else if (grp.kind == Group::kLibrary) {
        im.RunLibrary(grp);
        ++st.library_ops;
      }
    }
    if (part.groups[launch[0]].kind != Group::kAlias) ++st.launches;
    // A launch generates at most one program per kernel: its latest.
    for (size_t i = 0; i < launch.size(); ++i) {
      const Kernel* k = im.kernels[launch[i]].get();
      if (!k || k->stats().codegens == codegens_before[i]) continue;
      ++st.codegens;
      st.codegen_us += k->stats().last_codegen_us;
      st.codegen_max_us = std::max(st.codegen_max_us, k->stats().last_codegen_us);
    }
    if (options.collect_stats) {
      const double dt = NowUs() - t0;
      (matmul ? st.matmul_us : st.nonmatmul_us) += dt;
      st.launch_us.push_back(dt);
    }
    if (options.poison_freed)
      for (int r : dies_after[l]) std::memset(im.ptr[req_node[r]], 0xff, reqs[r].bytes);
  }
  // Outputs that were not written in place.
  for (size_t o = 0; o < outputs.size(); ++o) {
    const int id = ir.outputs[o];
    if (out_slot[id] == static_cast<int>(o)) continue;
    const size_t need = Bytes(im.shapes[id], ir.nodes[id].dtype);
    if (need) std::memmove(outputs[o].data, im.ptr[id], need);
  }
  st.run_us = NowUs() - t_start;
  if (stats) *stats = st;
}

std::vector<Shape> CompiledGraph::OutputShapes(std::span<const Shape> input_shapes) const {
  Impl& im = *impl_;
  std::vector<TensorArg> args;
  for (const Shape& s : input_shapes) args.push_back({nullptr, s, 0});
  im.Bind(args);
  std::vector<Shape> r;
  for (int32_t o : im.ir.outputs) r.push_back(im.ir.Eval(o, im.binding));
  return r;
}

int CompiledGraph::num_kernels() const { return impl_->part.num_kernels(); }
int CompiledGraph::num_matmul_kernels() const { return impl_->num_matmul_kernels; }
int CompiledGraph::num_library_ops() const {
  int n = 0;
  for (const Group& g : impl_->part.groups) n += g.kind == Group::kLibrary;
  return n;
}
int CompiledGraph::num_launch_groups() const {
  int n = 0;
  for (const auto& l : impl_->part.launches) n += impl_->part.groups[l[0]].kind != Group::kAlias;
  return n;
}
std::string CompiledGraph::Dump() const { return impl_->part.Dump(impl_->ir); }
std::string CompiledGraph::LaunchName(int launch) const {
  const auto& part = impl_->part;
  if (launch < 0 || launch >= static_cast<int>(part.launches.size())) return "?";
  std::string r;
  for (int gi : part.launches[launch]) {
    const Group& grp = part.groups[gi];
    if (!r.empty()) r += " | ";
    r += grp.kind == Group::kKernel    ? (grp.has_matmul   ? "matmul"
                                          : grp.has_reduce ? "reduce"
                                                           : "elementwise")
         : grp.kind == Group::kLibrary ? graph::GOpName(impl_->ir.nodes[grp.nodes[0]].op)
                                       : "alias";
    r += "(" + std::to_string(grp.nodes.size()) + " ops) -> " +
         impl_->ir.ShapeStr(impl_->ir.nodes[grp.outputs[0]].shape);
  }
  return r;
}

}  // namespace dvm
