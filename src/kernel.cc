// Kernel: the builder (validates every op as it is recorded), the per-shape
// program cache and the launch path.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <list>
#include <memory>

#include "bytecode/format.h"
#include "codegen/codegen.h"
#include "ir/dtype.h"
#include "ir/error.h"
#include "ir/ir.h"
#include "ir/op_rules.h"
#include "kernel_internal.h"
#include "runtime/byte_range.h"
#include "vm/cpu/gemm.h"
#include "vm/cpu/vm.h"

namespace dvm {

namespace {

struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};

// Writes a pointer table entry only where it changes. The tables a launch
// reads are read by the pool's workers too: an unchanged entry stays in
// their caches, where rewriting it with the same value would invalidate the
// line and make each worker fetch it from the caller's core on the launch's
// critical path (a stack's 300 tensors: ~260 lines of pointers;
// Clear + 300 Add + Launch took 35-55 us longer than Launch alone, where
// the Adds themselves take ~16).
inline void SetPtr(void*& entry, void* value) {
  if (entry != value) entry = value;
}

// Where a program's workspace tensors lie in one block of scratch memory.
// The block is the launching thread's arena (or a caller's buffer), bound at
// each launch:
// programs own no memory, so generating one allocates nothing large and a
// new shape touches no fresh pages (measured in the GPT-2 demo: 5.8 us of
// each codegen went to aligned_alloc of workspaces, and freeing evicted
// programs returned the pages to the OS).
struct WorkspaceLayout {
  std::vector<std::pair<size_t, size_t>> slots;  // (tensor index, byte offset)
  size_t bytes = 0;

  // Lays out the kWorkspace tensors of `prog`.
  void Plan(const bc::Program& prog) {
    slots.clear();
    bytes = 0;
    for (size_t i = 0; i < prog.tensors.size(); ++i) {
      const bc::TensorDesc& t = prog.tensors[i];
      if (t.kind != bc::TensorKind::kWorkspace) continue;
      slots.emplace_back(i, bytes);
      bytes += (static_cast<size_t>(t.numel) * DTypeSize(t.dtype) + 63) / 64 * 64;
    }
  }
  // Points the workspace entries of ptrs into `external` (a caller's
  // buffer of at least `bytes`), or else into this thread's arena (valid
  // until the thread's next launch: Run is synchronous).
  void Bind(std::vector<void*>& ptrs, uint8_t* external = nullptr) const {
    if (slots.empty()) return;
    if (external) {
      for (const auto& [t, off] : slots) SetPtr(ptrs[t], external + off);
      return;
    }
    thread_local std::unique_ptr<void, AlignedFree> arena;
    thread_local size_t arena_bytes = 0;
    if (bytes > arena_bytes) {
      const size_t n = std::max(bytes, arena_bytes + arena_bytes / 2);
      arena.reset(std::aligned_alloc(64, (n + 63) / 64 * 64));
      arena_bytes = arena ? n : 0;
      if (!arena) Fail("launch: cannot allocate ", bytes, " bytes of workspace");
    }
    auto* base = static_cast<uint8_t*>(arena.get());
    for (const auto& [t, off] : slots) SetPtr(ptrs[t], base + off);
  }
};

// A tensor a launch binds to a caller's buffer: its index in the program's
// table, input or output `slot`, and the bytes it needs.
struct TensorBind {
  uint32_t tensor = 0;
  uint16_t slot = 0;
  bool input = false;
  DType dtype = DType::kFloat32;
  int64_t numel = 0;
  size_t need = 0;
  // An output's: the input slots (below 64) whose buffer may be this very
  // buffer, a launch in place (vm::InPlaceSafe).
  uint64_t in_place = 0;
};

// Checks the buffers (null, capacity) of `binds` and writes them into
// ptrs[tensor]; in(i) and out(i) give {pointer, capacity in bytes or 0}.
// Returns whether any entry of ptrs changed.
template <class In, class Out>
bool BindTensors(std::span<const TensorBind> binds, In in, Out out, void** ptrs) {
  bool changed = false;
  for (const TensorBind& b : binds) {
    const auto [ptr, cap] = b.input ? in(b.slot) : out(b.slot);
    const char* what = b.input ? "input" : "output";
    if (ptr == nullptr && b.need > 0) Fail("launch: ", what, " ", b.slot, " buffer is null");
    if (cap != 0 && cap < b.need)
      Fail("launch: ", what, " ", b.slot, " buffer has ", cap, " bytes, needs ", b.need, " (", b.numel, " x ",
           DTypeName(b.dtype), ")");
    if (ptrs[b.tensor] != ptr) {  // as SetPtr
      ptrs[b.tensor] = ptr;
      changed = true;
    }
  }
  return changed;
}

using runtime::ByteRange;

// What the buffers of one launch may share. Outputs never overlap each
// other (an error). An input may overlap an output only as that output's
// very buffer where the program reads it before writing there (in place,
// TensorBind::in_place); the slot of any other input that overlaps an
// output is added to `copy`: the launch must read a copy of it, or it
// would read what it has already written (x * 2 and x + 1 with the first
// written over x read x * 2 + 1 in all but the first lanes). ptrs[tensor]
// holds the bound buffers (BindTensors).
template <class Copy>
void CheckOverlaps(std::span<const TensorBind> binds, void* const* ptrs, Copy copy) {
  for (size_t a = 0; a < binds.size(); ++a) {
    const TensorBind& o = binds[a];
    if (o.input) continue;
    const ByteRange ro = ByteRange::Of(ptrs[o.tensor], o.need);
    for (size_t b = 0; b < binds.size(); ++b) {
      const TensorBind& x = binds[b];
      if (b == a || (!x.input && b < a)) continue;
      const ByteRange rx = ByteRange::Of(ptrs[x.tensor], x.need);
      if (!rx.Overlaps(ro)) continue;
      if (!x.input)
        Fail("launch: outputs ", std::min(o.slot, x.slot), " and ", std::max(o.slot, x.slot), " overlap in memory");
      if (rx.b == ro.b && rx.e == ro.e && x.slot < 64 && (o.in_place >> x.slot & 1)) continue;
      copy(x);
    }
  }
}

// Whether a flat shape key (per input its rank, then its dims) holds the
// shapes at(0..n-1). Inline compares: a memcmp call per input, on a heap
// block per shape, was half of a stacked Adam's 300 Adds.
template <class ShapeAt>
bool KeyMatches(std::span<const int64_t> key, size_t n, ShapeAt at) {
  size_t q = 0;
  for (size_t i = 0; i < n; ++i) {
    const Shape& sh = at(i);
    if (q + 1 + sh.size() > key.size() || key[q] != static_cast<int64_t>(sh.size())) return false;
    for (size_t d = 0; d < sh.size(); ++d)
      if (key[q + 1 + d] != sh[d]) return false;
    q += 1 + sh.size();
  }
  return q == key.size();
}

// One generated program: bytecode, decoded executable and its workspace layout.
struct Program {
  uint64_t serial = 0;     // unique per generated program (stack cache keys)
  // Input shapes, flat: per input its rank, then its dims (one allocation,
  // a line or two, for Find to compare).
  std::vector<int64_t> key;
  codegen::Result res;
  std::unique_ptr<vm::Executable> exe;
  WorkspaceLayout ws;
  std::vector<TensorBind> binds;  // the non-workspace tensors
  std::vector<void*> ptrs;        // tensor pointer table; bound per launch
};

}  // namespace

// 64-byte aligned, with what a stack's Add reads and writes of its kernel
// (generation, last, stats: 56 bytes) first, in one cache line, which Add
// prefetches a few positions ahead (KernelStack::Add). Before, the three
// were 56 bytes from wherever malloc put the Impl (16-byte aligned: across
// two lines three times in four) and the prefetch of the generation's line
// left the other one to a miss. 300 stacked Adam Adds right after a launch
// (harness of bench stack's code, alternating binaries, 8 pairs): 24.5-50.5
// -> 19.8-42.6 us, lower in every pair; hot 9.5 either way.
struct alignas(64) Kernel::Impl {
  // Counts changes of the graph: a stack's recorded binding of this kernel
  // holds while it is unchanged.
  uint64_t generation = 0;
  Program* last = nullptr;
  KernelStats stats;
  ir::Graph g;
  std::vector<Shape> shapes;                  // build-time shapes
  std::list<std::shared_ptr<Program>> cache;  // most recent first (stacks share them)
  size_t capacity = 16;
  bool codegen_called = false;
  static_assert(sizeof(uint64_t) + sizeof(Program*) + sizeof(KernelStats) <= 64, "Add's fields in one line");

  int Id(NDObject* v, const char* op) const {
    auto id = static_cast<int64_t>(reinterpret_cast<uintptr_t>(v)) - 1;
    if (v == nullptr || id < 0 || id >= static_cast<int64_t>(g.nodes.size())) Fail(op, ": invalid value handle");
    if (g.nodes[id].op == ir::Op::kStore) Fail(op, ": the result of a store cannot be used as an operand");
    return static_cast<int>(id);
  }
  static NDObject* Handle(int id) { return reinterpret_cast<NDObject*>(static_cast<uintptr_t>(id) + 1); }

  void CheckMutable(const char* op) const {
    if (codegen_called && g.type == KernelType::kStatic)
      Fail(op, ": kernel already generated; build a new kernel to change it");
  }

  // Appends a node after inferring its shape; nothing is kept on error.
  NDObject* Push(ir::Node n) {
    g.nodes.push_back(std::move(n));
    try {
      shapes.push_back(ir::InferNode(g, static_cast<int>(g.nodes.size()) - 1, shapes, {}));
    } catch (...) {
      g.nodes.pop_back();
      throw;
    }
    g.nodes.back().shape = shapes.back();
    // A dynamic kernel may grow after a launch: its cached programs are of
    // the old graph (a new Store's output would never be written).
    cache.clear();
    last = nullptr;
    ++generation;
    return Handle(static_cast<int>(g.nodes.size()) - 1);
  }

  void CheckShape(Dims shape, const char* op) const {
    if (shape.size() > 8) Fail(op, ": rank ", shape.size(), " exceeds 8");
    for (size_t i = 0; i < shape.size(); ++i) {
      int64_t d = shape[i];
      if (d < -1 || (d == -1 && g.type == KernelType::kStatic))
        Fail(op, ": bad dim ", d, " at axis ", i, " of ", ir::ShapeStr(shape),
             g.type == KernelType::kStatic ? " (static kernels need concrete dims)" : "");
    }
  }

  // The cached program whose input shapes are at(0..n-1), moved to the front.
  template <class ShapeAt>
  Program* Find(size_t n, ShapeAt at) {
    for (auto it = cache.begin(); it != cache.end(); ++it) {
      if (KeyMatches((*it)->key, n, at)) {
        if (it != cache.begin()) cache.splice(cache.begin(), cache, it);
        ++stats.cache_hits;
        last = cache.front().get();
        return last;
      }
    }
    return nullptr;
  }
  Program& GetProgram(std::span<const Shape> in_shapes);
  // The program for these input shapes (the built ones for static kernels
  // or when none are given), generated if needed.
  Program& ProgramFor(std::span<const Shape> input_shapes);
  // A launch with shaped arguments; the workspace is the caller's when given.
  void LaunchArgs(std::span<const TensorArg> inputs, std::span<const TensorArg> outputs, const TensorArg* workspace) {
    Program& p = Prepare(inputs, outputs.size());
    Bind(
        p, [&](size_t i) { return std::pair(inputs[i].data, inputs[i].bytes); },
        [&](size_t i) { return std::pair(outputs[i].data, outputs[i].bytes); });
    const InputCopies copies(p, stats);
    uint8_t* ws = nullptr;
    if (workspace) {
      if (p.ws.bytes > 0 && workspace->data == nullptr)
        Fail("launch: workspace buffer is null, needs ", p.ws.bytes, " bytes");
      if (workspace->bytes < p.ws.bytes)
        Fail("launch: workspace has ", workspace->bytes, " bytes, needs ", p.ws.bytes, " (WorkspaceBytes)");
      if (reinterpret_cast<uintptr_t>(workspace->data) % 4 != 0) Fail("launch: workspace buffer is not 4-byte aligned");
      ws = static_cast<uint8_t*>(workspace->data);
      // The stages write it while they read the inputs and write the outputs.
      const ByteRange rw = ByteRange::Of(ws, p.ws.bytes);
      for (const TensorBind& b : p.binds)
        if (rw.Overlaps(ByteRange::Of(p.ptrs[b.tensor], b.need)))
          Fail("launch: workspace overlaps ", b.input ? "input " : "output ", b.slot, " in memory");
    }
    p.ws.Bind(p.ptrs, ws);
    p.exe->Run(p.ptrs.data());
    ++stats.launches;
  }
  // Copies of the bound inputs that overlap an output other than in place
  // (CheckOverlaps), bound in their stead for one launch.
  struct InputCopies {
    std::vector<std::unique_ptr<uint8_t[]>> bufs;
    InputCopies(Program& p, KernelStats& stats) {
      std::vector<const TensorBind*> copy;  // allocates only when an input overlaps
      CheckOverlaps(p.binds, p.ptrs.data(), [&](const TensorBind& x) {
        if (std::find(copy.begin(), copy.end(), &x) == copy.end()) copy.push_back(&x);
      });
      stats.input_copies += copy.size();
      for (const TensorBind* b : copy) {  // after the checks: a failed launch copies nothing
        bufs.emplace_back(new uint8_t[b->need]);
        std::memcpy(bufs.back().get(), p.ptrs[b->tensor], b->need);
        p.ptrs[b->tensor] = bufs.back().get();
      }
    }
  };
  // The program for these launch arguments (generated on a new shape set).
  Program& Prepare(std::span<const TensorArg> inputs, size_t num_outputs);
  // The cache entry of the program Prepare returned last (front of the cache).
  const std::shared_ptr<Program>& Front() const { return cache.front(); }
  // Checks the buffers (null, capacity) and binds them into p.ptrs; in(i)
  // and out(i) give {pointer, capacity in bytes or 0}. Nothing runs.
  template <class In, class Out>
  void Bind(Program& p, In in, Out out) {
    BindTensors(p.binds, in, out, p.ptrs.data());
  }
};

Kernel::Kernel(KernelType type) : impl_(std::make_unique<Impl>()) { impl_->g.type = type; }
Kernel::~Kernel() = default;
Kernel::Kernel(Kernel&&) noexcept = default;
Kernel& Kernel::operator=(Kernel&&) noexcept = default;
KernelType Kernel::type() const { return impl_->g.type; }

const ir::Graph& GetGraph(const Kernel& k) { return k.impl_->g; }

// ---- builder -------------------------------------------------------------------

NDObject* Kernel::Load(void* addr, Dims shape, DType type) { return StridedSliceLoad(addr, shape, type, {}, {}, {}); }

NDObject* Kernel::SliceLoad(void* addr, Dims shape, DType type, Dims start, Dims size) {
  if (start.size() != shape.size() || size.size() != shape.size())
    Fail("slice load: start ", ir::ShapeStr(start), " and size ", ir::ShapeStr(size), " must have rank ", shape.size());
  Shape end(shape.size()), step(shape.size(), 1);
  for (size_t i = 0; i < shape.size(); ++i) {
    if (size[i] < 0) Fail("slice load: negative size ", size[i], " at axis ", i);
    end[i] = start[i] + size[i];
  }
  return StridedSliceLoad(addr, shape, type, start, end, step);
}

NDObject* Kernel::StridedSliceLoad(void* addr, Dims shape, DType type, Dims start, Dims end, Dims step) {
  Impl& k = *impl_;
  const char* op = start.empty() ? "load" : "slice load";
  k.CheckMutable(op);
  k.CheckShape(shape, op);
  if (static_cast<uint8_t>(type) >= kNumDTypes) Fail(op, ": bad dtype ", int(type));
  ir::Node n;
  n.op = ir::Op::kLoad;
  n.dtype = type;
  n.addr = addr;
  n.io = static_cast<int32_t>(k.g.inputs.size());
  n.a0.assign(shape.begin(), shape.end());
  if (!start.empty()) {
    if (end.size() != shape.size() || step.size() != shape.size() || start.size() != shape.size())
      Fail("slice load: start/end/step must have rank ", shape.size());
    n.a1.assign(start.begin(), start.end());
    n.a2.assign(end.begin(), end.end());
    n.a3.assign(step.begin(), step.end());
  }
  NDObject* h = k.Push(std::move(n));
  k.g.inputs.push_back(static_cast<int32_t>(k.g.nodes.size()) - 1);
  return h;
}

NDObject* Kernel::Store(void* addr, NDObject* value) {
  Impl& k = *impl_;
  k.CheckMutable("store");
  ir::Node n;
  n.op = ir::Op::kStore;
  n.in[0] = k.Id(value, "store");
  n.dtype = k.g.nodes[n.in[0]].dtype;
  n.addr = addr;
  n.io = static_cast<int32_t>(k.g.outputs.size());
  NDObject* h = k.Push(std::move(n));
  k.g.outputs.push_back(static_cast<int32_t>(k.g.nodes.size()) - 1);
  return h;
}

NDObject* Kernel::PadStore(void* addr, NDObject* value, Dims padded_shape, Dims pad_before, double pad_value) {
  Impl& k = *impl_;
  k.CheckMutable("pad store");
  k.CheckShape(padded_shape, "pad store");
  for (int64_t d : padded_shape)
    if (d < 0) Fail("pad store: padded shape ", ir::ShapeStr(padded_shape), " must be concrete");
  ir::Node n;
  n.op = ir::Op::kStore;
  n.sub = 1;
  n.in[0] = k.Id(value, "pad store");
  n.dtype = k.g.nodes[n.in[0]].dtype;
  n.addr = addr;
  n.scalar = pad_value;
  n.io = static_cast<int32_t>(k.g.outputs.size());
  n.a0.assign(padded_shape.begin(), padded_shape.end());
  if (!pad_before.empty()) {
    if (pad_before.size() != padded_shape.size())
      Fail("pad store: pad_before ", ir::ShapeStr(pad_before), " must have rank ", padded_shape.size());
    n.a1.assign(pad_before.begin(), pad_before.end());
  } else {
    n.a1.assign(padded_shape.size(), 0);
  }
  NDObject* h = k.Push(std::move(n));
  k.g.outputs.push_back(static_cast<int32_t>(k.g.nodes.size()) - 1);
  return h;
}

NDObject* Kernel::Unary(UnaryOp op, NDObject* x) {
  Impl& k = *impl_;
  const char* name = UnaryOpName(op);
  k.CheckMutable(name);
  if (static_cast<int>(op) >= kNumUnaryOps) Fail("unary: bad op ", int(op));
  ir::Node n;
  n.op = ir::Op::kUnary;
  n.sub = static_cast<uint8_t>(op);
  n.in[0] = k.Id(x, name);
  n.dtype = ir::UnaryResult(op, k.g.nodes[n.in[0]].dtype);
  return k.Push(std::move(n));
}

NDObject* Kernel::Binary(BinaryOp op, NDObject* a, NDObject* b) {
  Impl& k = *impl_;
  const char* name = BinaryOpName(op);
  k.CheckMutable(name);
  if (static_cast<int>(op) >= kNumBinaryOps) Fail("binary: bad op ", int(op));
  ir::Node n;
  n.op = ir::Op::kBinary;
  n.sub = static_cast<uint8_t>(op);
  n.in[0] = k.Id(a, name);
  n.in[1] = k.Id(b, name);
  n.dtype = ir::BinaryResult(op, k.g.nodes[n.in[0]].dtype, k.g.nodes[n.in[1]].dtype);
  return k.Push(std::move(n));
}

NDObject* Kernel::Binary(BinaryOp op, NDObject* a, double scalar) {
  Impl& k = *impl_;
  const char* name = BinaryOpName(op);
  k.CheckMutable(name);
  if (static_cast<int>(op) >= kNumBinaryOps) Fail("binary: bad op ", int(op));
  ir::Node n;
  n.op = ir::Op::kBinaryTS;
  n.sub = static_cast<uint8_t>(op);
  n.in[0] = k.Id(a, name);
  n.scalar = scalar;
  DType t = k.g.nodes[n.in[0]].dtype;
  n.dtype = ir::BinaryResult(op, t, t);
  return k.Push(std::move(n));
}

NDObject* Kernel::Binary(BinaryOp op, double scalar, NDObject* b) {
  NDObject* h = Binary(op, b, scalar);
  impl_->g.nodes.back().op = ir::Op::kBinaryST;
  return h;
}

NDObject* Kernel::Select(NDObject* cond, NDObject* a, NDObject* b) {
  Impl& k = *impl_;
  k.CheckMutable("select");
  ir::Node n;
  n.op = ir::Op::kSelect;
  n.in[0] = k.Id(cond, "select");
  n.in[1] = k.Id(a, "select");
  n.in[2] = k.Id(b, "select");
  n.dtype = ir::SelectResult(k.g.nodes[n.in[0]].dtype, k.g.nodes[n.in[1]].dtype, k.g.nodes[n.in[2]].dtype);
  return k.Push(std::move(n));
}

NDObject* Kernel::Cast(NDObject* x, DType type) {
  Impl& k = *impl_;
  k.CheckMutable("cast");
  if (static_cast<uint8_t>(type) >= kNumDTypes) Fail("cast: bad dtype ", int(type));
  ir::Node n;
  n.op = ir::Op::kCast;
  n.in[0] = k.Id(x, "cast");
  n.dtype = type;
  return k.Push(std::move(n));
}

NDObject* Kernel::Broadcast(NDObject* x, Dims shape) {
  Impl& k = *impl_;
  k.CheckMutable("broadcast");
  k.CheckShape(shape, "broadcast");
  ir::Node n;
  n.op = ir::Op::kBroadcast;
  n.in[0] = k.Id(x, "broadcast");
  n.dtype = k.g.nodes[n.in[0]].dtype;
  n.a0.assign(shape.begin(), shape.end());
  return k.Push(std::move(n));
}

NDObject* Kernel::Broadcast(double scalar, Dims shape, DType type) {
  Impl& k = *impl_;
  k.CheckMutable("broadcast");
  k.CheckShape(shape, "broadcast");
  for (int64_t d : shape)
    if (d < 0) Fail("broadcast: scalar broadcast needs a concrete shape, got ", ir::ShapeStr(shape));
  ir::Node n;
  n.op = ir::Op::kScalar;
  n.dtype = type;
  n.scalar = scalar;
  n.a0.assign(shape.begin(), shape.end());
  return k.Push(std::move(n));
}

NDObject* Kernel::Reshape(NDObject* x, Dims shape) {
  Impl& k = *impl_;
  k.CheckMutable("reshape");
  if (shape.size() > 8) Fail("reshape: rank ", shape.size(), " exceeds 8");
  int infer = 0;
  for (int64_t d : shape) {
    if (d < -1) Fail("reshape: bad dim ", d, " in ", ir::ShapeStr(shape));
    infer += d == -1;
  }
  if (infer > 1) Fail("reshape: more than one -1 in ", ir::ShapeStr(shape));
  ir::Node n;
  n.op = ir::Op::kReshape;
  n.in[0] = k.Id(x, "reshape");
  n.dtype = k.g.nodes[n.in[0]].dtype;
  n.a0.assign(shape.begin(), shape.end());
  return k.Push(std::move(n));
}

NDObject* Kernel::Transpose(NDObject* x, Dims perm) {
  Impl& k = *impl_;
  k.CheckMutable("transpose");
  ir::Node n;
  n.op = ir::Op::kTranspose;
  n.in[0] = k.Id(x, "transpose");
  n.dtype = k.g.nodes[n.in[0]].dtype;
  const size_t r = k.shapes[n.in[0]].size();
  if (perm.size() != r) Fail("transpose: perm ", ir::ShapeStr(perm), " must have rank ", r);
  std::vector<bool> seen(r, false);
  for (int64_t p : perm) {
    if (p < 0 || p >= static_cast<int64_t>(r) || seen[p])
      Fail("transpose: perm ", ir::ShapeStr(perm), " is not a permutation of 0..", r - 1);
    seen[p] = true;
  }
  n.a0.assign(perm.begin(), perm.end());
  return k.Push(std::move(n));
}

NDObject* Kernel::Copy(NDObject* x) {
  Impl& k = *impl_;
  k.CheckMutable("copy");
  ir::Node n;
  n.op = ir::Op::kCopy;
  n.in[0] = k.Id(x, "copy");
  n.dtype = k.g.nodes[n.in[0]].dtype;
  return k.Push(std::move(n));
}

NDObject* Kernel::StageBoundary(NDObject* x) {
  Impl& k = *impl_;
  k.CheckMutable("stage_boundary");
  ir::Node n;
  n.op = ir::Op::kCopy;
  n.sub = 1;  // materialised (codegen)
  n.in[0] = k.Id(x, "stage_boundary");
  n.dtype = k.g.nodes[n.in[0]].dtype;
  return k.Push(std::move(n));
}

NDObject* Kernel::Reduce(ReduceOp op, NDObject* x, Dims axes, bool keepdims) {
  Impl& k = *impl_;
  const char* name = "reduce";
  k.CheckMutable(name);
  if (static_cast<int>(op) >= kNumReduceOps) Fail("reduce: bad op ", int(op));
  ir::Node n;
  n.op = ir::Op::kReduce;
  n.sub = static_cast<uint8_t>(op);
  n.in[0] = k.Id(x, name);
  n.dtype = ir::ReduceResult(op, k.g.nodes[n.in[0]].dtype);
  n.keepdims = keepdims;
  const int64_t r = static_cast<int64_t>(k.shapes[n.in[0]].size());
  for (int64_t a : axes) {
    int64_t na = a < 0 ? a + r : a;
    if (na < 0 || na >= r) Fail("reduce_", ReduceOpName(op), ": axis ", a, " out of range for rank ", r);
    if (std::find(n.a0.begin(), n.a0.end(), na) != n.a0.end())
      Fail("reduce_", ReduceOpName(op), ": duplicate axis ", a);
    n.a0.push_back(na);
  }
  std::sort(n.a0.begin(), n.a0.end());
  return k.Push(std::move(n));
}

NDObject* Kernel::ElemAny(NDObject* x) {
  Impl& k = *impl_;
  k.CheckMutable("elem_any");
  ir::Node n;
  n.op = ir::Op::kElemAny;
  n.in[0] = k.Id(x, "elem_any");
  n.dtype = DType::kBool;
  return k.Push(std::move(n));
}

NDObject* Kernel::MatMul(NDObject* a, NDObject* b, bool trans_a, bool trans_b) {
  Impl& k = *impl_;
  k.CheckMutable("matmul");
  ir::Node n;
  n.op = ir::Op::kMatMul;
  n.in[0] = k.Id(a, "matmul");
  n.in[1] = k.Id(b, "matmul");
  n.sub = static_cast<uint8_t>((trans_a ? 1 : 0) | (trans_b ? 2 : 0));
  n.dtype = ir::MatMulResult(k.g.nodes[n.in[0]].dtype, k.g.nodes[n.in[1]].dtype);
  return k.Push(std::move(n));
}

Shape Kernel::GetShape(NDObject* v) const {
  auto id = static_cast<int64_t>(reinterpret_cast<uintptr_t>(v)) - 1;
  if (v == nullptr || id < 0 || id >= static_cast<int64_t>(impl_->g.nodes.size())) Fail("shape: invalid value handle");
  return impl_->shapes[id];
}
DType Kernel::GetDType(NDObject* v) const {
  auto id = static_cast<int64_t>(reinterpret_cast<uintptr_t>(v)) - 1;
  if (v == nullptr || id < 0 || id >= static_cast<int64_t>(impl_->g.nodes.size())) Fail("dtype: invalid value handle");
  return impl_->g.nodes[id].dtype;
}
size_t Kernel::num_inputs() const { return impl_->g.inputs.size(); }
size_t Kernel::num_outputs() const { return impl_->g.outputs.size(); }

// ---- programs ------------------------------------------------------------------

Program& Kernel::Impl::GetProgram(std::span<const Shape> in_shapes) {
  if (Program* hit = Find(in_shapes.size(), [&](size_t i) -> const Shape& { return in_shapes[i]; })) return *hit;
  auto t0 = std::chrono::steady_clock::now();
  static std::atomic<uint64_t> next_serial{1};
  auto p = std::make_shared<Program>();
  p->serial = next_serial.fetch_add(1);
  p->key.clear();
  for (const Shape& sh : in_shapes) {
    p->key.push_back(static_cast<int64_t>(sh.size()));
    p->key.insert(p->key.end(), sh.begin(), sh.end());
  }
  codegen::Generate(g, in_shapes, p->res);
  p->exe = std::make_unique<vm::Executable>(p->res.bytecode);
  const bc::Program& prog = p->exe->program();
  p->ptrs.assign(prog.tensors.size(), nullptr);
  p->ws.Plan(prog);
  for (size_t i = 0; i < prog.tensors.size(); ++i) {
    const bc::TensorDesc& t = prog.tensors[i];
    if (t.kind == bc::TensorKind::kWorkspace) continue;
    p->binds.push_back({static_cast<uint32_t>(i), static_cast<uint16_t>(t.slot), t.kind == bc::TensorKind::kInput,
                        t.dtype, t.numel, static_cast<size_t>(t.numel) * DTypeSize(t.dtype)});
  }
  for (TensorBind& o : p->binds)
    for (const TensorBind& x : p->binds)
      if (!o.input && x.input && x.slot < 64 &&
          vm::InPlaceSafe(prog, static_cast<int>(x.tensor), static_cast<int>(o.tensor)))
        o.in_place |= uint64_t{1} << x.slot;
  stats.last_codegen_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  ++stats.codegens;
  cache.push_front(std::move(p));
  while (cache.size() > std::max<size_t>(capacity, 1)) cache.pop_back();
  last = cache.front().get();
  return *last;
}

namespace {
std::vector<Shape> BuiltInputShapes(const ir::Graph& g) {
  std::vector<Shape> s;
  for (int32_t id : g.inputs) s.push_back(g.nodes[id].a0);
  return s;
}
}  // namespace

void Kernel::CodeGen() {
  Impl& k = *impl_;
  if (k.g.outputs.empty()) Fail("codegen: kernel has no outputs");
  k.codegen_called = true;
  // oneDNN's one-time JIT here, the kernel's compile step, rather than in
  // its first launch (vm::WarmGemm).
  if (std::any_of(k.g.nodes.begin(), k.g.nodes.end(), [](const ir::Node& n) { return n.op == ir::Op::kMatMul; }))
    vm::WarmGemm();
  if (k.g.type == KernelType::kStatic) k.GetProgram(BuiltInputShapes(k.g));
}

void Kernel::Launch() {
  Impl& k = *impl_;
  std::vector<void*> in, out;
  for (int32_t id : k.g.inputs) in.push_back(k.g.nodes[id].addr);
  for (int32_t id : k.g.outputs) out.push_back(k.g.nodes[id].addr);
  Launch(std::span<void* const>(in), std::span<void* const>(out));
}

void Kernel::Launch(std::span<void* const> inputs, std::span<void* const> outputs) {
  Impl& k = *impl_;
  if (k.g.type != KernelType::kStatic) Fail("launch: dynamic kernels need input shapes (use Launch with TensorArg)");
  if (k.g.outputs.empty()) Fail("launch: kernel has no outputs");
  if (inputs.size() != k.g.inputs.size())
    Fail("launch: kernel has ", k.g.inputs.size(), " inputs, got ", inputs.size());
  if (outputs.size() != k.g.outputs.size())
    Fail("launch: kernel has ", k.g.outputs.size(), " outputs, got ", outputs.size());
  k.codegen_called = true;
  Program& p = k.GetProgram(BuiltInputShapes(k.g));
  k.Bind(
      p, [&](size_t i) { return std::pair(inputs[i], size_t{0}); },
      [&](size_t i) { return std::pair(outputs[i], size_t{0}); });
  const Impl::InputCopies copies(p, k.stats);
  p.ws.Bind(p.ptrs);
  p.exe->Run(p.ptrs.data());
  ++k.stats.launches;
}

void Kernel::Launch(std::span<const TensorArg> inputs, std::span<const TensorArg> outputs) {
  impl_->LaunchArgs(inputs, outputs, nullptr);
}

Program& Kernel::Impl::Prepare(std::span<const TensorArg> inputs, size_t num_outputs) {
  if (g.outputs.empty()) Fail("launch: kernel has no outputs");
  if (inputs.size() != g.inputs.size()) Fail("launch: kernel has ", g.inputs.size(), " inputs, got ", inputs.size());
  if (num_outputs != g.outputs.size()) Fail("launch: kernel has ", g.outputs.size(), " outputs, got ", num_outputs);
  codegen_called = true;
  if (g.type == KernelType::kStatic) {
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Shape& built = g.nodes[g.inputs[i]].a0;
      if (!inputs[i].shape.empty() && inputs[i].shape != built)
        Fail("launch: input ", i, " has shape ", ir::ShapeStr(inputs[i].shape), ", static kernel built for ",
             ir::ShapeStr(built));
    }
    return GetProgram(BuiltInputShapes(g));
  }
  // Look up by the argument shapes without copying them.
  if (Program* p = Find(inputs.size(), [&](size_t i) -> const Shape& { return inputs[i].shape; })) return *p;
  std::vector<Shape> shapes;
  shapes.reserve(inputs.size());
  for (const TensorArg& a : inputs) shapes.push_back(a.shape);
  return GetProgram(shapes);
}

void Kernel::Launch(std::span<const TensorArg> inputs, std::span<const TensorArg> outputs, const TensorArg& workspace) {
  impl_->LaunchArgs(inputs, outputs, &workspace);
}

Program& Kernel::Impl::ProgramFor(std::span<const Shape> input_shapes) {
  if (g.outputs.empty()) Fail("codegen: kernel has no outputs");
  codegen_called = true;
  if (g.type == KernelType::kStatic || input_shapes.empty()) return GetProgram(BuiltInputShapes(g));
  return GetProgram(input_shapes);
}

std::vector<Shape> Kernel::OutputShapes(std::span<const Shape> input_shapes) {
  return impl_->ProgramFor(input_shapes).res.output_shapes;
}

size_t Kernel::WorkspaceBytes(std::span<const Shape> input_shapes) { return impl_->ProgramFor(input_shapes).ws.bytes; }

std::string Kernel::Dump() const { return ir::Dump(impl_->g); }

std::string Kernel::Das() const {
  if (!impl_->last) return "; no program generated yet\n";
  return bc::Disassemble(impl_->last->exe->program());
}

const std::vector<uint8_t>& Kernel::Bytecode() const {
  static const std::vector<uint8_t> kEmpty;
  return impl_->last ? impl_->last->res.bytecode : kEmpty;
}

const KernelStats& Kernel::stats() const { return impl_->stats; }
void Kernel::SetCacheCapacity(size_t n) { impl_->capacity = std::max<size_t>(n, 1); }

// ---- stacked launches -------------------------------------------------------------

struct KernelStack::Impl {
  // A recorded launch, and what the next step's Add at its position needs
  // to take it again without the kernel's program lookup: Add after a
  // launch that streamed megabytes finds the kernels' caches, programs and
  // tensor tables out of cache, ~13 lines per Add (300 stacked Adam Adds:
  // ~16 us hot, 35-55 us more after each launch). The fast path reads this
  // entry and its ranges of `keys` and `binds` (contiguous, in entry order)
  // and the kernel's generation.
  struct Entry {
    Kernel::Impl* kernel = nullptr;
    std::shared_ptr<Program> program;  // kept alive even if the kernel's cache evicts it
    uint64_t serial = 0;               // program->serial
    uint64_t generation = 0;           // kernel->generation when recorded
    uint32_t key_at = 0, key_len = 0;  // program->key in keys
    uint32_t bind_at = 0, bind_len = 0;
    uint32_t ntensors = 0;
    uint32_t noutputs = 0;  // the input count is in the key
    // Where this position's arguments were last step (the argument arrays,
    // the first inputs' dims), for the Add a few positions before to
    // prefetch (see Add).
    static constexpr int kHintDims = 4;
    const Kernel* hint_kernel = nullptr;
    const TensorArg* hint_in = nullptr;
    const TensorArg* hint_out = nullptr;
    uint32_t hint_nin = 0, hint_nout = 0;
    const int64_t* hint_dims[kHintDims] = {};
  };
  static constexpr size_t kHintAhead = 4;  // positions
  std::vector<int64_t> keys;
  std::vector<TensorBind> binds;
  // A stacked program: the entries' programs merged stage by stage.
  struct Stacked {
    std::vector<uint64_t> key;  // program serials
    std::vector<uint8_t> bytecode;
    std::unique_ptr<vm::Executable> exe;
    WorkspaceLayout ws;
  };
  // entries[0, count) are this step's; Clear keeps the rest, so that Add
  // reuses their storage (no allocation per Add once warm).
  std::vector<Entry> entries;
  size_t count = 0;
  // The entries' tensor tables, inputs and outputs bound, one after the
  // other: the stacked program's table (MergeProgram appends each program's
  // tensors in order), its workspaces bound at Launch. ptrs[0, nptrs) are
  // this step's; Add writes an entry only where it changes (SetPtr).
  std::vector<void*> ptrs;
  size_t nptrs = 0;
  // Whether the buffers were checked against each other (CheckAcross)
  // since a pointer or an entry last changed.
  bool checked = false;
  size_t checked_count = 0;
  std::vector<uint64_t> key;  // Build's lookup key, reused
  std::list<Stacked> cache;
  Stacked* last = nullptr;

  Stacked& Build();
  void CheckAcross();
  // The entry being added, bound at ptrs[nptrs...]: its inputs and outputs
  // may share buffers only in place (CheckOverlaps; a stack copies no
  // inputs). Off Add's path for an unchanged entry.
  [[gnu::noinline]] void CheckEntry(std::span<const TensorBind> binds) {
    checked = false;
    CheckOverlaps(binds, ptrs.data() + nptrs, [&](const TensorBind& x) {
      Fail("kernel stack: launch ", count, ": input ", x.slot,
           " overlaps an output, and the kernel reads it after writing there; a stack does not copy inputs: pass "
           "separate buffers, or launch this kernel on its own (Kernel::Launch reads a copy)");
    });
  }
};

namespace {
// Appends program `q` to `all`: tensors and constants are renumbered; stage
// s of `q` joins the group of every program's stage s (concurrent with them).
void MergeProgram(const bc::Program& q, bc::Program& all, std::vector<std::vector<bc::Stage>>& by_depth) {
  const uint16_t toff = static_cast<uint16_t>(all.tensors.size());
  const uint16_t coff = static_cast<uint16_t>(all.consts.size());
  if (all.tensors.size() + q.tensors.size() > 0xffff || all.consts.size() + q.consts.size() > 0xffff)
    Fail("kernel stack: too many tensors or constants for one program");
  all.tensors.insert(all.tensors.end(), q.tensors.begin(), q.tensors.end());
  all.consts.insert(all.consts.end(), q.consts.begin(), q.consts.end());
  all.num_regs = std::max(all.num_regs, q.num_regs);
  all.tile_cap = std::max(all.tile_cap, q.tile_cap);
  if (by_depth.size() < q.stages.size()) by_depth.resize(q.stages.size());
  for (size_t d = 0; d < q.stages.size(); ++d) {
    bc::Stage st = q.stages[d];
    st.group_rows = 0;  // stage s of every program runs as one group: no row-by-row order
    st.row_join = false;
    for (bc::View& v : st.views) v.tensor = static_cast<uint16_t>(v.tensor + toff);
    st.gemm.a = static_cast<uint16_t>(st.gemm.a + toff);
    st.gemm.b = static_cast<uint16_t>(st.gemm.b + toff);
    st.gemm.c = static_cast<uint16_t>(st.gemm.c + toff);
    for (bc::Inst& in : st.insts) {
      const bc::Kind kind = bc::kOpInfo[in.op].kind;
      if (kind == bc::Kind::kFill || (kind == bc::Kind::kBin && (in.flags & bc::kFormMask) != bc::kFormRR))
        in.c = static_cast<uint16_t>(in.c + coff);
    }
    by_depth[d].push_back(std::move(st));
  }
}
}  // namespace

KernelStack::Impl::Stacked& KernelStack::Impl::Build() {
  key.clear();
  for (size_t ei = 0; ei < count; ++ei) key.push_back(entries[ei].serial);
  for (auto it = cache.begin(); it != cache.end(); ++it)
    if (it->key == key) {
      cache.splice(cache.begin(), cache, it);
      return cache.front();
    }
  Stacked st;
  st.key = key;
  bc::Program all;
  std::vector<std::vector<bc::Stage>> by_depth;
  for (size_t ei = 0; ei < count; ++ei) MergeProgram(entries[ei].program->exe->program(), all, by_depth);
  for (auto& group : by_depth)
    for (size_t i = 0; i < group.size(); ++i) {
      group[i].concurrent = i > 0;
      all.stages.push_back(std::move(group[i]));
    }
  bc::Encode(all, st.bytecode);
  st.exe = std::make_unique<vm::Executable>(st.bytecode);
  // Workspaces of the stacked program are its own: a kernel added twice
  // runs twice at once.
  st.ws.Plan(all);
  cache.push_front(std::move(st));
  while (cache.size() > 4) cache.pop_back();
  return cache.front();
}

// The launches of a stack run at once: none may write what another reads
// or writes. Sorts the used ranges of every bound buffer and fails on an
// output that overlaps a buffer of another launch (an entry's own inputs
// and outputs were checked by its Add). Run when a pointer or an entry
// changed since the last check: an optimizer's steps over the same buffers
// check once.
void KernelStack::Impl::CheckAcross() {
  struct Range : ByteRange {
    uint32_t entry;
    uint16_t slot;
    bool output;
  };
  std::vector<Range> r;
  size_t base = 0;
  for (size_t ei = 0; ei < count; ++ei) {
    const Entry& e = entries[ei];
    for (size_t k = 0; k < e.bind_len; ++k) {
      const TensorBind& t = binds[e.bind_at + k];
      const ByteRange used = ByteRange::Of(ptrs[base + t.tensor], t.need);
      if (!used.empty()) r.push_back({used, static_cast<uint32_t>(ei), t.slot, !t.input});
    }
    base += e.ntensors;
  }
  std::sort(r.begin(), r.end(), [](const Range& x, const Range& y) { return x.b < y.b; });
  std::vector<const Range*> open;  // ranges that may still overlap the next ones
  for (const Range& x : r) {
    std::erase_if(open, [&](const Range* o) { return o->e <= x.b; });
    for (const Range* o : open)
      if (o->entry != x.entry && (o->output || x.output)) {
        const Range& w = o->output ? *o : x;
        const Range& other = o->output ? x : *o;
        Fail("kernel stack: launch ", w.entry, "'s output ", w.slot, " overlaps launch ", other.entry, "'s ",
             other.output ? "output " : "input ", other.slot,
             " in memory (the stacked launches run at once; launch dependent kernels one after the other)");
      }
    open.push_back(&x);
  }
  checked = true;
  checked_count = count;
}

KernelStack::KernelStack() : impl_(std::make_unique<Impl>()) {}
KernelStack::~KernelStack() = default;

void KernelStack::Add(Kernel& k, std::span<const TensorArg> inputs, std::span<const TensorArg> outputs) {
  Kernel::Impl& ki = *k.impl_;
  Impl& s = *impl_;
  auto shape_at = [&](size_t i) -> const Shape& { return inputs[i].shape; };
  // The launch recorded at this position last step, if it is the same
  // kernel, unchanged (a kernel only grows, so its argument counts change
  // too; the generation says it outright), with the same shapes: its
  // program again.
  bool same = false;
  if (s.count < s.entries.size()) {
    const Impl::Entry& e = s.entries[s.count];
    same = e.kernel == &ki && e.generation == ki.generation && e.noutputs == outputs.size() &&
           KeyMatches(std::span<const int64_t>(s.keys.data() + e.key_at, e.key_len), inputs.size(), shape_at);
  }
  if (same) {
    ++ki.stats.cache_hits;  // what Prepare's lookup would count
    ki.last = s.entries[s.count].program.get();
  } else {
    Program& p = ki.Prepare(inputs, outputs.size());
    // Record it here; the positions after this one are re-recorded as they
    // come (their ranges of keys and binds follow this one's).
    s.entries.resize(s.count + 1);
    Impl::Entry& e = s.entries[s.count];
    const size_t key_at = s.count ? s.entries[s.count - 1].key_at + s.entries[s.count - 1].key_len : 0;
    const size_t bind_at = s.count ? s.entries[s.count - 1].bind_at + s.entries[s.count - 1].bind_len : 0;
    s.keys.resize(key_at);
    s.keys.insert(s.keys.end(), p.key.begin(), p.key.end());
    s.binds.resize(bind_at);
    s.binds.insert(s.binds.end(), p.binds.begin(), p.binds.end());
    e.kernel = &ki;
    e.program = ki.Front();
    e.serial = p.serial;
    e.generation = ki.generation;
    e.key_at = static_cast<uint32_t>(key_at), e.key_len = static_cast<uint32_t>(p.key.size());
    e.bind_at = static_cast<uint32_t>(bind_at), e.bind_len = static_cast<uint32_t>(p.binds.size());
    e.ntensors = static_cast<uint32_t>(p.ptrs.size());
    e.noutputs = static_cast<uint32_t>(outputs.size());
  }
  Impl::Entry& e = s.entries[s.count];
  // A step of a stack usually passes the argument arrays of the step before
  // (an optimizer loop over the same parameters), and the launch between
  // the two steps has evicted them: the shapes' dims, each a heap block of
  // its own, were most of the time of 300 Adds. Prefetch where the
  // arguments of the Add a few positions on were last step, and note this
  // one's. Only a hint: a prefetch of any address is harmless.
  if (s.count + Impl::kHintAhead < s.entries.size()) {
    const Impl::Entry& h = s.entries[s.count + Impl::kHintAhead];
    vm::PrefetchLines(h.hint_in, h.hint_nin * sizeof(TensorArg));
    vm::PrefetchLines(h.hint_out, h.hint_nout * sizeof(TensorArg));
    for (const int64_t* d : h.hint_dims) __builtin_prefetch(d);
    __builtin_prefetch(h.hint_kernel);
    __builtin_prefetch(&h.kernel->generation);
  }
  e.hint_kernel = &k;
  e.hint_in = inputs.data(), e.hint_nin = static_cast<uint32_t>(inputs.size());
  e.hint_out = outputs.data(), e.hint_nout = static_cast<uint32_t>(outputs.size());
  for (size_t i = 0; i < Impl::Entry::kHintDims; ++i)
    e.hint_dims[i] = i < inputs.size() ? inputs[i].shape.data() : nullptr;
  if (s.ptrs.size() < s.nptrs + e.ntensors) s.ptrs.resize(s.nptrs + e.ntensors, nullptr);
  const std::span<const TensorBind> binds(s.binds.data() + e.bind_at, e.bind_len);
  bool changed = false;
  try {
    changed = BindTensors(
        binds, [&](size_t i) { return std::pair(inputs[i].data, inputs[i].bytes); },
        [&](size_t i) { return std::pair(outputs[i].data, outputs[i].bytes); }, s.ptrs.data() + s.nptrs);
  } catch (...) {
    s.checked = false;  // some pointers of this position may have changed
    throw;
  }
  if (changed || !same || !s.checked) s.CheckEntry(binds);
  s.nptrs += e.ntensors;
  ++s.count;
}

void KernelStack::Launch() {
  Impl& s = *impl_;
  if (s.count == 0) return;
  if (!s.checked || s.checked_count != s.count) s.CheckAcross();
  Impl::Stacked& st = s.Build();
  s.last = &st;
  s.ptrs.resize(s.nptrs);  // drops a longer earlier step's entries, writes none
  st.ws.Bind(s.ptrs);
  // Counted before the run, while the Adds have left the kernels in cache
  // (after it, each is a miss). Run throws nothing: the arguments and the
  // bytecode were checked.
  for (size_t i = 0; i < s.count; ++i) ++s.entries[i].kernel->stats.launches;
  st.exe->Run(s.ptrs.data());
}

void KernelStack::Clear() {
  impl_->count = 0;
  impl_->nptrs = 0;  // the entries stay, for Add to compare
}
size_t KernelStack::size() const { return impl_->count; }
std::string KernelStack::Das() const {
  if (!impl_->last) return "; no stacked program yet\n";
  return bc::Disassemble(impl_->last->exe->program());
}

std::string Disassemble(std::span<const uint8_t> bytecode) {
  bc::Program p;
  bc::Parse(bytecode, p);
  return bc::Disassemble(p);
}

void Verify(std::span<const uint8_t> bytecode) {
  bc::Program p;
  bc::Parse(bytecode, p);
}

}  // namespace dvm
