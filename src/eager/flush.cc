// Eager flush: the pending trace becomes a dvm::Graph whose input dims are
// symbols by equality class of their values, compiled once per trace
// structure (cached) and run by the graph executor with the trace inputs'
// buffers and fresh buffers for the values that escape.
//
// The structure key lists, in words: each input's dtype, rank and dims as
// class ids (1 stays a constant); each node's op, dtype, operands,
// attributes (dims of reshape/broadcast targets, slices, iota and masks as a
// class id when their value is one of the classes, else as a constant) and
// scalars; the escaping nodes. Two traces with equal keys build the same
// graph, so a cached CompiledGraph is valid for any of them.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "eager/eager_internal.h"
#include "ir/error.h"
#include "ir/ir.h"

namespace dvm::eager {

using graph::GOp;

namespace {

double NowUs() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

constexpr uint64_t kConstTag = 1ull << 62, kClassTag = 2ull << 62;

uint64_t HashWords(const std::vector<uint64_t>& w) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ w.size();
  for (uint64_t x : w) {
    h ^= x + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
  }
  return h ^ (h >> 33);
}

uint64_t DoubleBits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  return u;
}

// Attribute dims that carry sizes (encoded by class), as opposed to axes.
bool AttrIsDims(GOp op) {
  return op == GOp::kBroadcast || op == GOp::kReshape || op == GOp::kIota || op == GOp::kCausalMask;
}

std::string ClassName(int64_t k) { return "s" + std::to_string(k); }

Dim DecodeDim(uint64_t enc) {
  if (enc & kClassTag && !(enc & kConstTag)) return Dim(ClassName(static_cast<int64_t>(enc & ~kClassTag)));
  return Dim(static_cast<int64_t>(enc & ~kConstTag));
}

}  // namespace

int64_t Context::Impl::ClassOf(int64_t v, bool add) {
  for (size_t i = 0; i < classes.size(); ++i)
    if (classes[i] == v) return static_cast<int64_t>(i);
  if (!add) return -1;
  classes.push_back(v);
  return static_cast<int64_t>(classes.size()) - 1;
}

uint64_t Context::Impl::EncodeDim(int64_t v, bool add) {
  if (v > 1) {  // 0 and 1 stay constants
    const int64_t k = ClassOf(v, add);
    if (k >= 0) return kClassTag | static_cast<uint64_t>(k);
  }
  return kConstTag | static_cast<uint64_t>(v);
}

void Context::Impl::EncodeAttrDims(const TNode& n, uint64_t* enc) {
  bool symbolic = false;
  for (int i = 0; i < n.nattr; ++i) {
    enc[i] = EncodeDim(n.attr[i], false);
    // A kernel reshape infers at most one dim: the first dim of a class
    // stays symbolic (leading dims are the ones that vary: batch,
    // sequence), the others become constants (part of the key).
    if (n.op == GOp::kReshape && (enc[i] & kClassTag) && !(enc[i] & kConstTag)) {
      if (symbolic) enc[i] = kConstTag | static_cast<uint64_t>(n.attr[i]);
      symbolic = true;
    }
  }
}

void Context::Impl::BuildKey() {
  key.clear();
  classes.clear();
  key.push_back(inputs.size());
  for (const auto& t : inputs) {
    key.push_back(static_cast<uint64_t>(t->dtype) | uint64_t(t->rank) << 8);
    for (int d = 0; d < t->rank; ++d) key.push_back(EncodeDim(t->shape[d], true));
  }
  key.push_back(nodes.size());
  for (const TNode& n : nodes) {
    key.push_back(uint64_t(n.op) | uint64_t(n.sub) << 8 | uint64_t(n.dtype) << 16 | uint64_t(n.keepdims) << 24 |
                  uint64_t(n.nin) << 32 | uint64_t(n.nattr) << 40 | uint64_t(n.rank) << 48);
    if (n.op == GOp::kConcat) {
      for (int i = 0; i < n.nin; ++i) key.push_back(static_cast<uint64_t>(pool[n.attr[1] + i]));
      key.push_back(static_cast<uint64_t>(n.attr[0]));
      continue;
    }
    for (int i = 0; i < n.nin; ++i) key.push_back(static_cast<uint64_t>(n.in[i]));
    if (n.op == GOp::kSlice) {
      const int64_t ax = n.attr[0], start = n.attr[1], size = n.attr[2];
      const TNode* src = n.in[0] >= 0 ? &nodes[n.in[0]] : nullptr;
      const int64_t dim = src ? src->shape[ax] : inputs[-n.in[0] - 1]->shape[ax];
      key.push_back(static_cast<uint64_t>(ax));
      key.push_back(EncodeDim(start, false));
      key.push_back(EncodeDim(size, false));
      key.push_back(EncodeDim(dim - start - size, false));
    } else if (AttrIsDims(n.op)) {
      uint64_t enc[kMaxRank];
      EncodeAttrDims(n, enc);
      key.insert(key.end(), enc, enc + n.nattr);
    } else {
      for (int i = 0; i < n.nattr; ++i) key.push_back(static_cast<uint64_t>(n.attr[i]));
    }
    if (n.op == GOp::kBinaryTS || n.op == GOp::kBinaryST || n.op == GOp::kIota) {
      key.push_back(DoubleBits(n.scalar));
      key.push_back(DoubleBits(n.scalar2));
    }
  }
  key.push_back(outs.size());
  for (int32_t o : outs) key.push_back(static_cast<uint64_t>(o));
}

// Builds the graph of the current trace (key just built) and compiles it.
std::unique_ptr<Context::Impl::Entry> Context::Impl::Compile() {
  Graph g;
  std::vector<Value> in_val(inputs.size()), val(nodes.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorImpl& t = *inputs[i];
    DimList dims;
    for (int d = 0; d < t.rank; ++d) dims.push_back(DecodeDim(EncodeDim(t.shape[d], false)));
    in_val[i] = g.Input("x" + std::to_string(i), dims, t.dtype);
  }
  auto dim = [&](int64_t v) { return DecodeDim(EncodeDim(v, false)); };
  for (size_t i = 0; i < nodes.size(); ++i) {
    const TNode& n = nodes[i];
    auto in = [&](int k) {
      const int32_t r = n.op == GOp::kConcat ? pool[n.attr[1] + k] : n.in[k];
      return r >= 0 ? val[r] : in_val[-r - 1];
    };
    try {
      switch (n.op) {
        case GOp::kUnary:
          val[i] = g.Unary(UnaryOp(n.sub), in(0));
          break;
        case GOp::kBinary:
          val[i] = g.Binary(BinaryOp(n.sub), in(0), in(1));
          break;
        case GOp::kBinaryTS:
          val[i] = g.Binary(BinaryOp(n.sub), in(0), n.scalar);
          break;
        case GOp::kBinaryST:
          val[i] = g.Binary(BinaryOp(n.sub), n.scalar, in(0));
          break;
        case GOp::kSelect:
          val[i] = g.Select(in(0), in(1), in(2));
          break;
        case GOp::kCast:
          val[i] = g.Cast(in(0), n.dtype);
          break;
        case GOp::kBroadcast:
        case GOp::kReshape: {
          uint64_t enc[kMaxRank];
          EncodeAttrDims(n, enc);
          DimList dims;
          for (int k = 0; k < n.nattr; ++k) dims.push_back(DecodeDim(enc[k]));
          val[i] = n.op == GOp::kBroadcast ? g.Broadcast(in(0), dims) : g.Reshape(in(0), dims);
          break;
        }
        case GOp::kTranspose:
          val[i] = g.Transpose(in(0), Shape(n.attr, n.attr + n.nattr));
          break;
        case GOp::kReduce:
          val[i] = g.Reduce(ReduceOp(n.sub), in(0), Shape(n.attr, n.attr + n.nattr), n.keepdims);
          break;
        case GOp::kMatMul:
          val[i] = g.MatMul(in(0), in(1), n.sub & 1, n.sub & 2);
          break;
        case GOp::kSlice: {
          const int64_t ax = n.attr[0], start = n.attr[1], size = n.attr[2];
          const int32_t r = n.in[0];
          const int64_t full = r >= 0 ? nodes[r].shape[ax] : inputs[-r - 1]->shape[ax];
          DimList sizes;
          int piece = 0;
          if (start > 0) {
            sizes.push_back(dim(start));
            piece = 1;
          }
          sizes.push_back(dim(size));
          if (full - start - size > 0) sizes.push_back(dim(full - start - size));
          val[i] = g.Split(in(0), ax, sizes)[piece];
          break;
        }
        case GOp::kConcat: {
          std::vector<Value> xs;
          for (int k = 0; k < n.nin; ++k) xs.push_back(in(k));
          val[i] = g.Concat(xs, n.attr[0]);
          break;
        }
        case GOp::kGather:
          val[i] = g.Gather(in(0), in(1));
          break;
        case GOp::kIota:
          val[i] = g.Iota(dim(n.attr[0]), n.dtype, n.scalar, n.scalar2);
          break;
        case GOp::kCausalMask:
          val[i] = g.CausalMask(dim(n.attr[0]), dim(n.attr[1]), n.dtype);
          break;
        default:
          Fail("op ", graph::GOpName(n.op), " cannot be traced");
      }
    } catch (const Error& e) {
      throw Error("eager op #" + std::to_string(i) + " (" + OpName(n) + "): " + e.what());
    }
  }
  for (int32_t o : outs) g.Output(val[o]);
  auto e = std::make_unique<Entry>();
  e->trace_of_gnode.assign(g.num_nodes(), -1);
  for (size_t i = 0; i < nodes.size(); ++i) e->trace_of_gnode[val[i].id] = static_cast<int32_t>(i);
  try {
    CompileOptions co;
    co.stack = opt.stack;
    e->cg = std::make_unique<CompiledGraph>(g, co);
  } catch (const Error& ex) {
    throw Error("eager flush of " + std::to_string(nodes.size()) + " ops: " + ex.what());
  }
  return e;
}

void Context::Impl::Flush() {
  if (nodes.empty() || flushing) return;
  flushing = true;
  struct Reset {
    bool& f;
    ~Reset() { f = false; }
  } reset{flushing};
  const double t0 = NowUs();
  outs.clear();
  for (size_t i = 0; i < nodes.size(); ++i)
    if (nodes[i].owner) outs.push_back(static_cast<int32_t>(i));
  if (outs.empty()) {  // nothing escapes: nothing to run
    Drop("");
    return;
  }
  BuildKey();
  const uint64_t h = HashWords(key);
  Entry* entry = nullptr;
  auto it = cache.find(h);
  if (it != cache.end() && it->second->key == key) {
    entry = it->second.get();
    ++st.cache_hits;
  } else {
    ++st.cache_misses;
    const double tc = NowUs();
    std::unique_ptr<Entry> fresh;
    try {
      fresh = Compile();
    } catch (...) {
      Drop("");
      throw;
    }
    fresh->key = key;
    st.compile_us += NowUs() - tc;
    if (it != cache.end()) {
      it->second = std::move(fresh);  // a hash collision: replace
    } else {
      if (cache.size() >= std::max<size_t>(opt.cache_capacity, 1)) {
        auto victim = cache.begin();
        for (auto c = cache.begin(); c != cache.end(); ++c)
          if (c->second->last_use < victim->second->last_use) victim = c;
        cache.erase(victim);
      }
      it = cache.emplace(h, std::move(fresh)).first;
    }
    entry = it->second.get();
  }
  entry->last_use = ++use_clock;

  in_args.resize(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorImpl& t = *inputs[i];
    in_args[i].data = t.buf->p;
    in_args[i].shape.assign(t.shape, t.shape + t.rank);
    in_args[i].bytes = t.bytes();
  }
  std::vector<std::shared_ptr<Buffer>> bufs(outs.size());
  out_args.resize(outs.size());
  for (size_t o = 0; o < outs.size(); ++o) {
    const TNode& n = nodes[outs[o]];
    int64_t numel = 1;
    for (int d = 0; d < n.rank; ++d) numel *= n.shape[d];
    const size_t bytes = static_cast<size_t>(numel) * DTypeSize(n.dtype);
    std::shared_ptr<Buffer> b;
    try {
      b = AllocateBuffer(this, bytes);
    } catch (...) {
      Drop("");
      throw;
    }
    out_args[o] = {b->p, {}, bytes};
    bufs[o] = std::move(b);
  }
  RunStats rs;
  try {
    static const bool profile = std::getenv("DVM_EAGER_PROFILE") != nullptr;
    RunOptions ro;
    ro.collect_stats = profile;
    entry->cg->Run(in_args, out_args, ro, &rs);
    if (profile) {
      for (size_t l = 0; l < rs.launch_us.size(); ++l)
        std::fprintf(stderr, "  %8.1f us  %s\n", rs.launch_us[l], entry->cg->LaunchName(static_cast<int>(l)).c_str());
      std::fprintf(stderr, "flush: %zu ops, %.1f us\n", nodes.size(), rs.run_us);
    }
  } catch (const Error& e) {
    // Name the trace op of the first graph node the message mentions.
    std::string msg = e.what(), where;
    const size_t pct = msg.find('%');
    if (pct != std::string::npos) {
      const long id = std::strtol(msg.c_str() + pct + 1, nullptr, 10);
      if (id >= 0 && id < static_cast<long>(entry->trace_of_gnode.size()) && entry->trace_of_gnode[id] >= 0) {
        const int op = entry->trace_of_gnode[id];
        where = "eager op #" + std::to_string(op) + " (" + OpName(nodes[op]) + "): ";
      }
    }
    if (where.empty()) where = "eager flush of " + std::to_string(nodes.size()) + " ops: ";
    Drop("");
    throw Error(where + msg);
  }
  ++st.flushes;
  st.kernels += rs.kernels;
  st.launches += rs.launches;
  st.library_ops += rs.library_ops;
  st.codegens += rs.codegens;
  st.codegen_us += rs.codegen_us;
  st.run_us += rs.run_us;
  for (size_t o = 0; o < outs.size(); ++o) {
    TensorImpl* t = nodes[outs[o]].owner;
    t->buf = std::move(bufs[o]);
    t->node = -1;
    t->ctx = nullptr;
  }
  nodes.clear();
  inputs.clear();
  pool.clear();
  ++epoch;
  st.flush_us += NowUs() - t0;
}

}  // namespace dvm::eager
