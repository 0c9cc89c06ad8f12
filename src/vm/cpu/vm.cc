#include "vm/cpu/vm.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>

#include "ir/dtype.h"
#include "ir/error.h"
#include "vm/cpu/gemm.h"
#include "vm/cpu/thread_pool.h"

namespace dvm::vm {
namespace {
// Registers of a tile context: the verifier allows 255 per program, and
// the VM adds its own after them (FuseMoments).
constexpr int kMaxRegs = 256;

// ---- strided access ----------------------------------------------------------

uint32_t LoadOne(DType t, const uint8_t* p) {
  switch (t) {
    case DType::kFloat32:
    case DType::kInt32: {
      uint32_t v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case DType::kFloat16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return F32Bits(F16ToF32(h));
    }
    case DType::kBFloat16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return uint32_t(h) << 16;
    }
    case DType::kInt8:
      return static_cast<uint32_t>(static_cast<int32_t>(static_cast<int8_t>(*p)));
    case DType::kBool:
      return *p != 0;
  }
  return 0;
}

void StoreOne(DType t, uint8_t* p, uint32_t v) {
  switch (t) {
    case DType::kFloat32:
    case DType::kInt32:
      std::memcpy(p, &v, 4);
      break;
    case DType::kFloat16: {
      uint16_t h = F32ToF16(BitsF32(v));
      std::memcpy(p, &h, 2);
      break;
    }
    case DType::kBFloat16: {
      uint16_t h = F32ToBF16(BitsF32(v));
      std::memcpy(p, &h, 2);
      break;
    }
    case DType::kInt8:
      *p = static_cast<uint8_t>(v & 0xff);
      break;
    case DType::kBool:
      *p = v != 0;
      break;
  }
}

// Calls run(element_offset, inner_stride, count, lane) for each run of
// consecutive domain elements along the innermost dim, covering the flat
// range [f, f + n) of the view's domain.
template <class F>
inline void ForEachRun(const ViewRt& v, int64_t f, int64_t n, F run) {
  if (n <= 0) return;
  if (v.rank == 0) {
    run(v.offset, 0, n, 0);
    return;
  }
  const int r = v.rank;
  if (r == 1) {
    run(v.offset + f * v.strides[0], v.strides[0], n, 0);
    return;
  }
  int64_t idx[bc::kMaxRank];
  int64_t rem = f;
  for (int i = r - 1; i >= 0; --i) {
    idx[i] = rem % v.dims[i];
    rem /= v.dims[i];
  }
  const int64_t inner = v.dims[r - 1], s_in = v.strides[r - 1];
  int64_t lane = 0;
  while (lane < n) {
    int64_t addr = v.offset;
    for (int i = 0; i < r; ++i) addr += idx[i] * v.strides[i];
    const int64_t cnt = std::min(inner - idx[r - 1], n - lane);
    run(addr, s_in, cnt, lane);
    lane += cnt;
    idx[r - 1] += cnt;
    for (int i = r - 1; i > 0 && idx[i] == v.dims[i]; --i) {
      idx[i] = 0;
      ++idx[i - 1];
    }
  }
}

// Offset of the tile's elements when they are one contiguous run, else -1.
// The view's trailing dims that are laid out contiguously (inner stride 1)
// form one run of `span` domain elements (ViewRt::cont_dim), so a tile of
// several rows of a row-major tensor is still one run.
inline int64_t ContiguousRun(const ViewRt& v, int64_t f, int64_t n) {
  if (v.rank == 0) return n == 1 ? v.offset : -1;
  if (v.cont_dim < 0) return -1;
  if (v.cont_dim == 0) return v.offset + f;  // the whole domain is one run
  // Called for every view of every tile: 32-bit division where it fits (a
  // 64-bit one costs up to ~45 cycles here), and none for the outermost dim
  // (f is inside the domain, so its index is what remains).
  const int64_t span = v.span;
  int64_t rem, idx;
  if ((static_cast<uint64_t>(f) | static_cast<uint64_t>(span)) <= 0xffffffffu) {
    rem = static_cast<uint32_t>(f) / static_cast<uint32_t>(span);
    idx = f - rem * span;
  } else {
    rem = f / span;
    idx = f % span;
  }
  if (span - idx < n) return -1;
  int64_t addr = v.offset + idx;
  for (int i = v.cont_dim - 1; i > 0; --i) {
    addr += (rem % v.dims[i]) * v.strides[i];
    rem /= v.dims[i];
  }
  return addr + rem * v.strides[0];
}

// Lanes [f, f + n) of a view, converted to 32-bit lanes at dst.
void Gather(const ViewRt& v, const uint8_t* base, int64_t f, int64_t n, uint32_t* dst) {
  ForEachRun(v, f, n, [&](int64_t off, int64_t s, int64_t cnt, int64_t lane) {
    if (s == 1) {
      v.load(dst + lane, base + off * v.esize, cnt);
    } else if (s == 0) {
      uint32_t x = LoadOne(v.dtype, base + off * v.esize);
      std::fill(dst + lane, dst + lane + cnt, x);
    } else {
      for (int64_t j = 0; j < cnt; ++j) dst[lane + j] = LoadOne(v.dtype, base + (off + j * s) * v.esize);
    }
  });
}

void LoadHandler(const VInst& vi, TileCtx& c) {
  const ViewRt& v = c.stage->views[vi.view];
  const uint8_t* base = static_cast<const uint8_t*>(c.ptrs[v.tensor]);
  const int64_t f = c.start[vi.level], n = c.n[vi.level];
  if (v.zero_copy && n > 0) {
    // Registers hold 32-bit lanes: an f32/i32 tensor run is used in place.
    // Kernels read whole vectors (up to 15 lanes past n): only when those
    // stay inside the tensor.
    const int64_t off = ContiguousRun(v, f, n);
    if (off >= 0 && off + (c.ragged ? n : (n + 15) & ~int64_t{15}) <= v.numel) {
      c.p[vi.dst] = base + off * 4;
      return;
    }
  }
  Gather(v, base, f, n, c.W<uint32_t>(vi.dst));
}

// A LOAD of a row-invariant view (FindInvariantLoads): lanes [f, f + n) of
// the view are lanes [f % K, f % K + n) of its first kbits lanes (the view's
// row of K, repeated), expanded by the first tile a thread runs in a launch
// into the thread's buffer; every tile then points the register into it.
// Bytes per expansion: 2 register slots + 16 lanes (kbits <= tile_cap + K,
// and kernels read whole vectors past the lanes).
constexpr size_t InvSlotBytes(size_t slot_bytes) { return 2 * slot_bytes + 64; }

// This thread's copy of the first `count` lanes of the row-invariant LOAD
// vi's view, gathered by the first tile that asks for it in a launch.
const uint32_t* InvariantCopy(const VInst& vi, TileCtx& c, int64_t count) {
  uint32_t* buf = reinterpret_cast<uint32_t*>(c.inv + size_t(vi.inv - 1) * InvSlotBytes(c.slot_bytes));
  const uint32_t bit = 1u << (vi.inv - 1);
  if (!(c.inv_filled & bit)) {
    const ViewRt& v = c.stage->views[vi.view];
    Gather(v, static_cast<const uint8_t*>(c.ptrs[v.tensor]), 0, count, buf);
    c.inv_filled |= bit;
  }
  return buf;
}

void InvariantLoadHandler(const VInst& vi, TileCtx& c) {
  c.p[vi.dst] = InvariantCopy(vi, c, vi.kbits) + c.start[vi.level] % vi.kbits2;
}

// A row-invariant LOAD whose readers walk the tile row by row and read
// the row's K lanes (FindInvariantLoads): the register points at the
// tensor's row (sub: f32 lanes in a run) or at a copy of it.
void PeriodicLoadHandler(const VInst& vi, TileCtx& c) {
  if (vi.sub) {
    const ViewRt& v = c.stage->views[vi.view];
    c.p[vi.dst] = static_cast<const uint8_t*>(c.ptrs[v.tensor]) + v.offset * 4;
  } else {
    c.p[vi.dst] = InvariantCopy(vi, c, vi.kbits);
  }
}

// Where a store's tile lands when it can be written in place by the
// instruction that computes it: one contiguous run of 32-bit lanes whose
// length is a multiple of 16 (kernels write whole vectors), else null.
inline void* ForwardTarget(const ViewRt& v, const TileCtx& c, int level) {
  const int64_t n = c.n[level];
  if (!v.zero_copy || n <= 0 || ((n & 15) != 0 && !c.ragged)) return nullptr;
  const int64_t off = ContiguousRun(v, c.start[level], n);
  return off < 0 ? nullptr : static_cast<uint8_t*>(c.ptrs[v.tensor]) + off * 4;
}

// Runs the instruction whose result a STORE writes, with that register bound
// to the store's destination, so the result is written there directly.
void ForwardedHandler(const VInst& vi, TileCtx& c) {
  const ViewRt& v = c.stage->views[vi.fwd_view];
  c.bind_reg = vi.dst;
  c.bind_ptr = ForwardTarget(v, c, vi.level);
  if (!c.bind_ptr) c.bind_reg = kNoBind;
  vi.fn2(vi, c);
  c.bind_reg = kNoBind;
}

void StoreHandler(const VInst& vi, TileCtx& c) {
  const ViewRt& v = c.stage->views[vi.view];
  uint8_t* base = static_cast<uint8_t*>(c.ptrs[v.tensor]);
  const uint32_t* src = c.R<uint32_t>(vi.a);
  if (vi.fwd_view != kNoForward && src == ForwardTarget(v, c, vi.level)) return;  // already there
  ForEachRun(v, c.start[vi.level], c.n[vi.level], [&](int64_t off, int64_t s, int64_t cnt, int64_t lane) {
    if (s == 1) {
      v.store(base + off * v.esize, src + lane, cnt);
    } else {
      for (int64_t j = 0; j < cnt; ++j) StoreOne(v.dtype, base + (off + j * s) * v.esize, src[lane + j]);
    }
  });
}

// A fused ELEM program (FuseChainPrograms): step pointers resolved in
// program order (a step reads what earlier steps wrote), results forwarded
// into their outputs where the tile allows (as ForwardedHandler does; the
// STOREs then find them there), then the strips run.
void ChainProgramHandler(const VInst& vi, TileCtx& c) {
  const auto& pg = *static_cast<const ChainProgram*>(vi.aux);
  const int ns = static_cast<int>(pg.steps.size()) - 1;  // the last is kChainEnd
  const float* P[3 * kMaxChainSteps];
  for (int k = 0; k < ns; ++k) {
    const ChainStep& st = pg.steps[k];
    P[3 * k] = st.msrc ? c.R<float>(pg.src[k]) : nullptr;
    P[3 * k + 1] = st.mopnd ? c.R<float>(pg.opnd[k]) : nullptr;
    P[3 * k + 2] = nullptr;
    if (!st.mout) continue;
    void* t = pg.fwd[k] != kNoForward ? ForwardTarget(c.stage->views[pg.fwd[k]], c, 0) : nullptr;
    if (t) {
      c.p[pg.out[k]] = t;
      P[3 * k + 2] = static_cast<float*>(t);
    } else {
      P[3 * k + 2] = c.W<float>(pg.out[k]);
    }
  }
  RunProgram(pg, ns, P, &c.n[0], 1);
}

void FillHandler(const VInst& vi, TileCtx& c) {
  uint32_t* dst = c.W<uint32_t>(vi.dst);
  std::fill(dst, dst + c.n[vi.level], vi.kbits);
}

// ---- per-thread scratch -------------------------------------------------------

struct Scratch {
  std::unique_ptr<uint8_t, decltype(&std::free)> buf{nullptr, &std::free};
  size_t size = 0;
  uint8_t* Get(size_t bytes) {
    if (bytes > size) {
      size_t n = (bytes + 63) / 64 * 64;
      buf.reset(static_cast<uint8_t*>(std::aligned_alloc(64, n)));
      if (!buf) Fail("vm: out of memory for ", n, " bytes of tile scratch");
      std::memset(buf.get(), 0, n);
      size = n;
    }
    return buf.get();
  }
};
thread_local Scratch tls_scratch;

inline void RunCode(const VInst* b, const VInst* e, TileCtx& c) {
  for (; b != e; ++b) b->fn(*b, c);
}

// ---- tile loops ---------------------------------------------------------------------

// One block of C = op(A) @ op(B) through the GEMM library (gemm.h; one
// thread: the pool runs blocks in parallel), then the fused epilogue over
// the block's rows.
void RunGemmTile(const StageRt& s, int64_t t, TileCtx& c) {
  const bc::Gemm& g = *s.gemm;
  const int64_t M = s.p[0], N = s.p[1], K = s.p[2];
  const int64_t nm = (M + g.tile_rows - 1) / g.tile_rows, nn = (N + g.tile_cols - 1) / g.tile_cols;
  const int64_t b = t / (nm * nn), mi = (t / nn) % nm, ni = t % nn;
  const int64_t m0 = mi * g.tile_rows, n0 = ni * g.tile_cols;
  const int64_t rows = std::min(g.tile_rows, M - m0), cols = std::min(g.tile_cols, N - n0);
  int64_t ao = g.a_off, bo = g.b_off, rem = b;
  for (int i = g.batch_rank - 1; i >= 0; --i) {
    const int64_t idx = rem % g.bdims[i];
    rem /= g.bdims[i];
    ao += idx * g.a_bs[i];
    bo += idx * g.b_bs[i];
  }
  const float* A = static_cast<const float*>(c.ptrs[g.a]) + ao + (g.trans_a ? m0 : m0 * g.lda);
  const float* B = static_cast<const float*>(c.ptrs[g.b]) + bo + (g.trans_b ? n0 * g.ldb : n0);
  float* C = static_cast<float*>(c.ptrs[g.c]) + (b * M + m0) * N + n0;
  if (K == 0) {
    for (int64_t r = 0; r < rows; ++r) std::fill(C + r * N, C + r * N + cols, 0.0f);
  } else {
    Sgemm(s.gemm_lib, g.trans_a, g.trans_b, rows, cols, K, A, g.lda, B, g.ldb, C, N);
  }
  if (s.sec[bc::kBody] == s.sec[bc::kBody + 1]) return;
  const VInst* code = s.code.data();
  auto body = [&](int64_t start, int64_t len) {
    for (int64_t o = 0; o < len; o += g.body_tile) {
      c.start[0] = c.start[1] = start + o;
      c.n[0] = c.n[1] = std::min(g.body_tile, len - o);
      RunCode(code + s.sec[bc::kBody], code + s.sec[bc::kBody + 1], c);
    }
  };
  const int64_t base = (b * M + m0) * N + n0;
  if (cols == N)
    body(base, rows * N);  // whole rows: one flat range
  else
    for (int64_t r = 0; r < rows; ++r) body(base + r * N, cols);
}

// An ELEM tile: n elements of the domain from `start`.
// Level 1 is unused by ELEM instructions; n[1] = 1 makes a row operand
// (FuseUniformLoads) one value for the whole tile.
inline void RunElemOnce(const StageRt& s, int64_t start, int64_t n, TileCtx& c) {
  c.start[0] = c.start[1] = start;
  c.n[0] = n;
  c.n[1] = 1;
  RunCode(s.code.data() + s.sec[bc::kBody], s.code.data() + s.sec[bc::kBody + 1], c);
}
// The pointers of a direct program (Executable::SetupDirect) for lanes
// from `start`, into P (3 per step), from its recipe d[0, nptrs).
inline void DirectPointers(const StageRt::DirectPtr* d, uint32_t nptrs, int ns, int64_t start, const TileCtx& c,
                           const float** P) {
  std::fill_n(P, 3 * ns, nullptr);
  for (uint32_t j = 0; j < nptrs; ++j, ++d)
    P[d->k] = d->kind == StageRt::DirectPtr::kView ? static_cast<const float*>(c.ptrs[d->tensor]) + d->offset + start
                                                   : reinterpret_cast<const float*>(c.regs + d->reg * c.slot_bytes);
}
// A tile of a stage with a direct program (Executable::SetupDirect).
void DirectTile(const StageRt& s, int64_t start, int64_t n, TileCtx& c) {
  const StageRt::DirectPtr* d = s.direct_ptrs.data();
  for (const StageRt::DirectProgram& dp : s.direct) {
    const ChainProgram* pg = dp.pg;
    const float* P[3 * kMaxChainSteps];
    const int ns = static_cast<int>(pg->steps.size()) - 1;  // the last is kChainEnd
    DirectPointers(d, dp.nptrs, ns, start, c, P);
    d += dp.nptrs;
    RunProgram(*pg, ns, P, &n, 1);
  }
}

// A tile whose length is not a multiple of 16 (a tensor's last) runs as
// its whole vectors, in place, then the rest: run as one, every load of it
// copied all n lanes to scratch (kernels read whole vectors, which would
// pass the tensor's end) and no result could be written in place. The
// values are the same (ELEM bodies are elementwise). Adam over 300 tensors
// of 64..16384 elements: stacked and separate launches 1.08x faster.
inline void RunElem(const StageRt& s, int64_t start, int64_t n, TileCtx& c) {
  if (!s.direct.empty()) {
    DirectTile(s, start, n, c);
    return;
  }
  const int64_t head = n & ~int64_t{15};
  if (s.ragged && head != n) {  // in place as one (StageRt::ragged)
    c.ragged = true;
    RunElemOnce(s, start, n, c);
    c.ragged = false;
    return;
  }
  if (head > 0 && head != n) {
    RunElemOnce(s, start, head, c);
    RunElemOnce(s, start + head, n - head, c);
    return;
  }
  RunElemOnce(s, start, n, c);
}

// A ROW tile (not chunked): r rows of K elements from row m0.
inline void RunRows(const StageRt& s, int64_t m0, int64_t r, TileCtx& c) {
  const int64_t K = s.p[0];
  c.start[1] = m0;
  c.n[1] = r;
  c.start[0] = m0 * K;
  c.n[0] = std::min(r * K, s.n_full - m0 * K);
  RunCode(s.code.data() + s.sec[bc::kBody], s.code.data() + s.sec[bc::kBody + 1], c);
}

void RunTile(const StageRt& s, int64_t t, TileCtx& c) {
  const VInst* code = s.code.data();
  switch (s.mode) {
    case bc::Mode::kElem: {
      const int64_t T = s.p[0];
      RunElem(s, t * T, std::min(T, s.n_full - t * T), c);
      break;
    }
    case bc::Mode::kRow: {
      const int64_t K = s.p[0], rows = s.p[1], chunk = s.p[2];
      if (chunk > 0) {  // tile t: chunk j of row m, one partial per tile
        const int64_t nch = (K + chunk - 1) / chunk, m = t / nch, j = t % nch;
        c.start[1] = t;
        c.n[1] = 1;
        c.start[0] = m * K + j * chunk;
        c.n[0] = std::min(chunk, K - j * chunk);
        RunCode(code + s.sec[bc::kBody], code + s.sec[bc::kBody + 1], c);
        break;
      }
      const int64_t m0 = t * rows;
      RunRows(s, m0, std::min(rows, s.n_red - m0), c);
      break;
    }
    case bc::Mode::kGemm:
      RunGemmTile(s, t, c);
      break;
    case bc::Mode::kCol: {
      const int64_t R = s.p[0], C = s.p[1], w = s.p[2], blk = s.p[3];
      const int64_t chunks = C / w + (C % w != 0);
      const int64_t o = t / chunks, c0 = (t % chunks) * w;
      const int64_t cw = std::min(w, C - c0);
      c.n[0] = c.n[1] = cw;
      c.start[1] = o * C + c0;
      c.start[0] = o * R * C + c0;
      auto sec = [&](int k) { RunCode(code + s.sec[k], code + s.sec[k + 1], c); };
      if (!s.col_fast.empty() && R > 0 && cw > 0) {
        // Every pair's rows are runs of cw lanes at a fixed stride: when the
        // first row is one, all are (SetupColFast).
        int64_t off[kMaxColPairs];
        bool fast = true;
        for (size_t i = 0; i < s.col_fast.size() && fast; ++i)
          fast = (off[i] = ContiguousRun(s.views[s.col_fast[i].view], c.start[0], cw)) >= 0;
        if (fast) {
          sec(bc::kTileInit);
          for (size_t i = 0; i < s.col_fast.size(); ++i) {
            const ColPair& cp = s.col_fast[i];
            const float* x = static_cast<const float*>(c.ptrs[s.views[cp.view].tensor]) + off[i];
            cp.fn(c.Acc(cp.acc), x, cp.rstride, R, cw);
          }
          sec(bc::kPost);
          break;
        }
      }
      sec(bc::kTileInit);
      for (int64_t rb = 0; rb < R; rb += blk) {
        sec(bc::kBlockInit);
        const int64_t re = std::min(R, rb + blk);
        for (int64_t r = rb; r < re; ++r) {
          c.start[0] = (o * R + r) * C + c0;
          sec(bc::kBody);
        }
        sec(bc::kBlockMerge);
      }
      sec(bc::kPost);
      break;
    }
  }
}

// The work items [0, n) of one parallel launch, cut into one contiguous
// range per participant. Participant p takes up to `grain` items at a time
// from range p first, then from the others' leftovers. Launch after launch the
// same items go to the same thread when nothing is stolen, so an L2-sized
// tensor stays in the cache of the core that touched it last (one shared
// counter handed tiles out in arrival order, so the data moved between the
// cores' L2 caches. Measured in one process, alternating 2 ms blocks, 2
// threads: [65536] f32->bf16 cast 8.1-8.4 -> 6.4 us; other L2-sized
// kernels 1.0-1.35x, never slower). Stealing keeps the old
// guarantee: a worker that joins late (its core was busy) never holds a
// launch up, the caller takes its range. Which thread runs an item never
// changes a result (reductions combine partials in item order).
class WorkQueue {
 public:
  void Init(int64_t n, int participants, int64_t grain) {
    parts_ = std::clamp(participants, 1, kMaxParts);
    grain_ = std::max<int64_t>(1, grain);
    for (int p = 0; p < parts_; ++p) {
      range_[p].next = n * p / parts_;  // before the pool publishes the job
      range_[p].end = n * (p + 1) / parts_;
    }
  }
  // Claims up to `grain` items [b, e) for participant `self`; false when
  // every range is exhausted.
  bool Claim(int self, int64_t& b, int64_t& e) {
    for (int k = 0; k < parts_; ++k) {
      Range& r = range_[(self + k) % parts_];
      std::atomic_ref<int64_t> next(r.next);
      const int64_t left = r.end - next.load(std::memory_order_relaxed);
      if (left <= 0) continue;
      // Claims shrink near a range's end (guided self-scheduling), so that
      // the threads finish within a small claim of each other. 300 stacked
      // Adam tensors, 2 threads (10 tiles a claim, up to 40 k elements):
      // the two threads' end times 8-18 k TSC cycles apart (median of 1000
      // launches, three runs) -> 2-3 k; the launch time moved within the
      // noise (1% either way in 4 alternating pairs).
      const int64_t g = std::clamp<int64_t>(left / (2 * parts_), 1, grain_);
      const int64_t t = next.fetch_add(g, std::memory_order_relaxed);
      if (t < r.end) {
        b = t;
        e = std::min(r.end, t + g);
        return true;
      }
    }
    return false;
  }

 private:
  static constexpr int kMaxParts = 64;  // more participants share ranges
  // Left uninitialised (Init sets the ranges in use): a launch does not
  // clear 4 KiB. `next` is shared through std::atomic_ref.
  struct alignas(64) Range {
    int64_t next;
    int64_t end;
  };
  Range range_[kMaxParts];
  int parts_ = 1;
  int64_t grain_ = 1;
};

// What every parallel launch shares: the tensors, the register file's
// layout, and the queue the threads take items from.
thread_local Scratch tls_inv;  // expanded row-invariant loads (InvariantLoadHandler)

struct JobBase {
  void* const* ptrs = nullptr;
  size_t scratch_bytes = 0, slot_bytes = 0, inv_bytes = 0;
  int num_regs = 0;
  WorkQueue work;

  // A tile context on this thread's scratch; p holds the register pointers.
  TileCtx Context(const void** p) const {
    TileCtx c;
    c.regs = tls_scratch.Get(scratch_bytes);
    if (inv_bytes) c.inv = tls_inv.Get(inv_bytes);
    c.slot_bytes = slot_bytes;
    for (int r = 0; r < num_regs; ++r) p[r] = c.regs + r * slot_bytes;
    c.p = p;
    c.ptrs = ptrs;
    return c;
  }
};

// One parallel launch: the tiles of a group of concurrent stages (one stage,
// or the stages of stacked programs), numbered one after the other.
struct StageJob : JobBase {
  const StageRt* const* stages;
  const int64_t* first;  // first tile number of each stage; first[n] = total
  int nstages;
};

// A stacked launch walks hundreds of stages whose recipes the tensors
// streamed through the caches have evicted since the last launch. Entering
// stage si, a thread prefetches the recipe of si + 1 (its programs and
// pointers; its StageRt was prefetched entering si - 1) and the StageRt of
// si + 2.
inline void PrefetchStages(const StageJob& job, int si) {
  if (si + 2 < job.nstages) PrefetchLines(job.stages[si + 2], 128);  // the fields a tile reads first
  if (si + 1 < job.nstages) {
    const StageRt& s = *job.stages[si + 1];
    PrefetchLines(s.direct.data(), s.direct.size() * sizeof(StageRt::DirectProgram));
    PrefetchLines(s.direct_ptrs.data(), s.direct_ptrs.size() * sizeof(StageRt::DirectPtr));
  }
}

// Stage si holding tile t, entered: its recipe and the next ones prefetched.
inline void EnterStage(const StageJob& job, int64_t t, int& si, int& entered) {
  while (t >= job.first[si + 1]) ++si;
  while (t < job.first[si]) --si;
  if (si != entered) {
    entered = si;
    if (job.nstages > 1) PrefetchStages(job, si);
  }
}

// Whether a stage's tiles run as segments of one call of its direct
// program (RunDirectRun): ELEM, one program.
inline bool DirectRunnable(const StageRt& s) { return s.mode == bc::Mode::kElem && s.direct.size() == 1; }

// Tiles [t, t1) of a claim, from stage si on, as long as their stages run
// the same direct program as si (a stacked launch of one kernel over many
// tensors shares it: ShareChainPrograms): one call of the program, a
// segment per stage (its tiles in the claim merged, unless its program
// keeps values in scratch, which holds one tile). Returns the first tile
// not run. The same lanes get the same ops as tile by tile (ELEM bodies
// are elementwise), so the same bits. 300 stacked Adam tensors of 64..16384
// elements: see RunChainF.
int64_t RunDirectRun(const StageJob& job, int64_t t, int64_t t1, int& si, int& entered, TileCtx& c) {
  constexpr int kMaxSegs = 16;
  constexpr int kMaxPtrs = kMaxSegs * 3 * kMaxChainSteps / 2;  // 16 segments of 16 steps, 8 of the longest
  const ChainProgram* pg = job.stages[si]->direct[0].pg;
  const int ns = static_cast<int>(pg->steps.size()) - 1;  // the last is kChainEnd
  const int max_segs = std::min(kMaxSegs, kMaxPtrs / (3 * ns));
  const float* P[kMaxPtrs];
  int64_t n[kMaxSegs];
  int nseg = 0;
  while (t < t1 && nseg < max_segs) {
    EnterStage(job, t, si, entered);
    const StageRt& s = *job.stages[si];
    if (!DirectRunnable(s) || s.direct[0].pg != pg) break;
    const int64_t f = job.first[si], T = s.p[0];
    const int64_t last = s.direct_scratch ? t + 1 : std::min(t1, job.first[si + 1]);
    const int64_t b = (t - f) * T, e = std::min(s.n_full, (last - f) * T);
    DirectPointers(s.direct_ptrs.data(), s.direct[0].nptrs, ns, b, c, P + 3 * ns * nseg);
    n[nseg++] = e - b;
    t = last;
  }
  RunProgram(*pg, ns, P, n, nseg);
  return t;
}

void RunStageJob(void* ctx, int self) {
  auto* job = static_cast<StageJob*>(ctx);
  const void* p[kMaxRegs];
  TileCtx c = job->Context(p);
  int si = 0, entered = -1;
  int64_t t0, t1;
  while (job->work.Claim(self, t0, t1)) {
    for (int64_t t = t0; t < t1;) {
      EnterStage(*job, t, si, entered);
      c.stage = job->stages[si];
      if (DirectRunnable(*c.stage)) {
        t = RunDirectRun(*job, t, t1, si, entered, c);
        continue;
      }
      RunTile(*c.stage, t - job->first[si], c);
      ++t;
    }
  }
}

// Slice r of R of a row-grouped stage: the tiles of its share of the domain
// (full for ELEM, reduced for ROW), cut as in the stage-by-stage order but
// never across slice boundaries (the verifier checked that R divides it).
void RunRowSlice(const StageRt& s, int64_t r, int64_t R, TileCtx& c) {
  if (s.mode == bc::Mode::kElem) {
    const int64_t F = s.n_full / R, T = s.p[0], end = (r + 1) * F;
    for (int64_t o = r * F; o < end; o += T) RunElem(s, o, std::min(T, end - o), c);
    return;
  }
  const int64_t F = s.n_red / R, end = (r + 1) * F;
  if (s.p[2] > 0) {  // chunked: one tile per partial
    for (int64_t t = r * F; t < end; ++t) RunTile(s, t, c);
    return;
  }
  const int64_t rows = s.p[1];
  for (int64_t m0 = r * F; m0 < end; m0 += rows) RunRows(s, m0, std::min(rows, end - m0), c);
}

// One parallel launch of a row group: each thread takes rows and runs every
// stage of the group on them, in order.
struct RowGroupJob : JobBase {
  const StageRt* stages;
  int nstages;
  int64_t rows;
  size_t ntensors;
};

thread_local Scratch tls_row_ws;               // row-local workspace slabs
thread_local std::vector<void*> tls_row_ptrs;  // tensor bases with those slabs bound

void RunRowGroupJob(void* ctx, int self) {
  auto* job = static_cast<RowGroupJob*>(ctx);
  const void* p[kMaxRegs];
  TileCtx c = job->Context(p);
  const StageRt& head = job->stages[0];
  uint8_t* slabs = nullptr;
  if (!head.row_local.empty()) {
    tls_row_ptrs.assign(job->ptrs, job->ptrs + job->ntensors);
    c.ptrs = tls_row_ptrs.data();
    slabs = tls_row_ws.Get(head.row_local_bytes);
  }
  int64_t r0, r1;
  while (job->work.Claim(self, r0, r1)) {
    for (int64_t r = r0; r < r1; ++r) {
      for (const RowLocalWs& rl : head.row_local)  // row r's slab at this thread's buffer
        tls_row_ptrs[rl.tensor] = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(slabs + rl.buf_off) -
                                                          static_cast<uintptr_t>(r * rl.slab_bytes));
      for (int k = 0; k < job->nstages; ++k) {
        c.stage = &job->stages[k];
        RunRowSlice(*c.stage, r, job->rows, c);
      }
    }
  }
}

}  // namespace

Executable::Executable(std::span<const uint8_t> bytecode) {
  bc::Parse(bytecode, prog_);
  num_regs_ = prog_.num_regs;
  stages_.resize(prog_.stages.size());
  for (size_t si = 0; si < prog_.stages.size(); ++si) {
    const bc::Stage& s = prog_.stages[si];
    StageRt& rt = stages_[si];
    rt.mode = s.mode;
    rt.concurrent = s.concurrent;
    rt.row_join = s.row_join;
    rt.group_rows = s.group_rows;
    rt.n_full = bc::FullElems(s);
    rt.n_red = bc::RedElems(s);
    std::copy(std::begin(s.p), std::end(s.p), rt.p);
    switch (s.mode) {
      case bc::Mode::kElem:
        rt.ntiles = (rt.n_full + s.p[0] - 1) / s.p[0];
        break;
      case bc::Mode::kRow:
        rt.ntiles = s.p[2] > 0 ? rt.n_red : (rt.n_red + s.p[1] - 1) / s.p[1];
        break;
      case bc::Mode::kCol:
        rt.ntiles = (rt.n_red / s.p[1]) * (s.p[1] / s.p[2] + (s.p[1] % s.p[2] != 0));
        break;
      case bc::Mode::kGemm: {
        const bc::Gemm& g = s.gemm;
        int64_t batch = 1;
        for (int i = 0; i < g.batch_rank; ++i) batch *= g.bdims[i];
        rt.gemm = &g;
        rt.gemm_lib = GemmLibFor(s.p[0], s.p[1], s.p[2], g.lda, g.ldb);
        rt.ntiles = s.p[0] == 0 || s.p[1] == 0 ? 0
                                               : batch * ((s.p[0] + g.tile_rows - 1) / g.tile_rows) *
                                                     ((s.p[1] + g.tile_cols - 1) / g.tile_cols);
        gemm_ = true;
        break;
      }
    }
    rt.views.resize(s.views.size());
    for (size_t vi = 0; vi < s.views.size(); ++vi) {
      const bc::View& v = s.views[vi];
      ViewRt& r = rt.views[vi];
      r.tensor = v.tensor;
      r.dtype = prog_.tensors[v.tensor].dtype;
      r.esize = static_cast<uint8_t>(DTypeSize(r.dtype));
      r.offset = v.offset;
      bool full = v.level == bc::Level::kFull;
      r.rank = full ? s.full_rank : s.red_rank;
      for (int i = 0; i < r.rank; ++i) {
        r.dims[i] = full ? s.full_dims[i] : s.red_dims[i];
        r.strides[i] = v.strides[i];
      }
      r.numel = prog_.tensors[v.tensor].numel;
      // The contiguous suffix: dims cont_dim.. address consecutive elements.
      r.cont_dim = -1;
      if (r.rank > 0 && (r.strides[r.rank - 1] == 1 || r.dims[r.rank - 1] == 1)) {
        int64_t span = 1;
        int d = r.rank;
        while (d > 0 && (r.dims[d - 1] == 1 || r.strides[d - 1] == span)) span *= r.dims[--d];
        r.cont_dim = d;
        r.span = std::max<int64_t>(span, 1);
      }
      r.zero_copy = r.dtype == DType::kFloat32 || r.dtype == DType::kInt32;
      r.load = LoadConverter(r.dtype);
      r.store = StoreConverter(r.dtype);
    }
    rt.code.resize(s.insts.size());
    rt.insts = static_cast<int64_t>(s.insts.size());
    int at = 0;
    for (int k = 0; k < bc::kNumSections; ++k) {
      rt.sec[k] = at;
      at += s.sections[k];
    }
    rt.sec[bc::kNumSections] = at;
    for (size_t i = 0; i < s.insts.size(); ++i) {
      const bc::Inst& in = s.insts[i];
      VInst& v = rt.code[i];
      const bc::OpInfo& info = bc::kOpInfo[in.op];
      v.dst = in.dst;
      v.a = in.a;
      v.b = in.b;
      v.c = in.c;
      v.level = (in.flags & bc::kLevelRed) ? 1 : 0;
      v.type = in.type;
      v.src = (in.flags & bc::kSrcMask) >> bc::kSrcShift;
      v.view = in.c;
      v.sub = in.b;
      bool konst =
          info.kind == bc::Kind::kFill || (info.kind == bc::Kind::kBin && (in.flags & bc::kFormMask) != bc::kFormRR);
      if (konst) v.kbits = prog_.consts[in.c].bits;
      if (info.kind == bc::Kind::kBin) v.form = in.flags & bc::kFormMask;
      switch (info.kind) {
        case bc::Kind::kLoad:
          v.fn = &LoadHandler;
          break;
        case bc::Kind::kStore:
          v.fn = &StoreHandler;
          break;
        case bc::Kind::kFill:
          v.fn = &FillHandler;
          break;
        default:
          v.fn = SelectHandler(in);
      }
      if (!v.fn)
        Fail("bytecode: stage ", si, " instruction ", i, " (", info.name, ".", DTypeName(DType(in.type)),
             ") has no handler");
    }
    ForwardStores(s, rt);
    FindInPlaceStores(s, rt);
    ElideRoundingCasts(s, rt);
    FuseRowBroadcasts(s, rt);
    FuseUniformLoads(s, rt);
    deviations_ += FuseSquareSums(s, rt);
    moments_ += FuseMoments(s, rt);
    programs_ += FuseChainPrograms(s, rt);
    std::vector<ChainSig> chain_sigs;
    chains_ += FuseBinaryChains(s, rt, chain_sigs);
    chain_sums_ += FuseChainSums(s, rt);
    SetupColFast(s, rt);
    FindInvariantLoads(s, rt, chain_sigs);
  }
  SetupOutputAliases();
  for (size_t si = 0; si < stages_.size(); ++si) {
    producers_forwarded_ += ForwardProducers(prog_.stages[si], stages_[si]);
    DropNops(stages_[si]);
    SetupRagged(stages_[si]);
    SetupDirect(stages_[si]);
  }
  ShareChainPrograms();
  SetupRowLocal();
  for (const StageRt& rt : stages_)
    if (!rt.chains.empty()) program_lanes_ += rt.n_full;
  if (program_lanes_ == 0) native_done_.store(true, std::memory_order_relaxed);
}

void Executable::CompileNativePrograms() const {
  const int64_t threshold = NativeThresholdLanes();
  if (threshold < 0) return;
  const int64_t run = program_lanes_run_.fetch_add(program_lanes_, std::memory_order_relaxed) + program_lanes_;
  if (run < threshold) return;
  std::lock_guard<std::mutex> lock(native_mu_);
  if (native_done_.load(std::memory_order_relaxed)) return;
  // The programs the stages run (ShareChainPrograms left one of each kind
  // referenced), each compiled once.
  std::vector<const ChainProgram*> seen;
  auto compile = [&](const ChainProgram* pg) {
    if (pg == nullptr || std::find(seen.begin(), seen.end(), pg) != seen.end()) return;
    seen.push_back(pg);
    const uint32_t* const regs[3] = {pg->src.data(), pg->opnd.data(), pg->out.data()};
    auto code = vm::CompileNative(pg->steps.data(), static_cast<int>(pg->steps.size()) - 1, regs);
    if (!code) return;
    pg->native_code = std::move(code);
    pg->native.store(pg->native_code->fn(), std::memory_order_release);
  };
  for (const StageRt& rt : stages_) {
    for (const VInst& v : rt.code)
      if (v.fn == &ChainProgramHandler) compile(static_cast<const ChainProgram*>(v.aux));
    for (const StageRt::DirectProgram& d : rt.direct) compile(d.pg);
  }
  native_done_.store(true, std::memory_order_release);
}

// A workspace written by earlier stages and read last by an ELEM stage that
// stores an output element for element from it (softmax's exp(x - max),
// divided into the output) can live in that output: the final stage then
// runs in place, and the output's lines are fetched (write-allocate) by the
// stage that computes the workspace, overlapped with its arithmetic, rather
// than stalling a final pass that does nothing else (long-row softmax
// [64, 32768]: the division pass was store-bound). Needs: same element
// size and count, the output touched by no other view, the workspace by no
// later stage. FindInPlaceStores checked the stage itself.
void Executable::SetupOutputAliases() {
  for (size_t j = 0; j < stages_.size(); ++j) {
    for (const auto& [w, o] : stages_[j].in_place) {
      const bc::TensorDesc &tw = prog_.tensors[w], &to = prog_.tensors[o];
      if (tw.kind != bc::TensorKind::kWorkspace || to.kind != bc::TensorKind::kOutput || tw.numel != to.numel ||
          DTypeSize(tw.dtype) != DTypeSize(to.dtype))
        continue;
      bool ok = true;
      int out_views = 0;
      for (size_t k = 0; k < stages_.size() && ok; ++k) {
        const bc::Stage& s = prog_.stages[k];
        if (s.mode == bc::Mode::kGemm)
          for (uint16_t t : {s.gemm.a, s.gemm.b, s.gemm.c}) ok = ok && t != w && t != o;
        for (const ViewRt& v : stages_[k].views) {
          if (v.tensor == o) ++out_views;
          if (v.tensor == w && k > j) ok = false;
        }
      }
      for (const auto& a : aliases_) ok = ok && a.second != o;  // one workspace per output
      if (ok && out_views == 1) aliases_.push_back({w, o});
    }
  }
}

// Row groups: a workspace that only the stages of one group address, each of
// its views slab by slab (bc::SlabLocal over the slice the VM gives row r:
// checked here, not taken from codegen), needs only the slab of the row a
// thread is on. Row by row, each thread then binds the tensor to a buffer of
// one slab of its own, shifted so that row r's addresses land in it: a long
// row's intermediate (softmax's exp) stays in cache instead of streaming a
// full-size workspace through memory.
void Executable::SetupRowLocal() {
  const size_t n = stages_.size();
  for (size_t i = 0; i < n; ++i) {
    if (stages_[i].group_rows <= 0 || stages_[i].row_join || i + 1 >= n || !stages_[i + 1].row_join) continue;
    size_t j = i + 1;
    while (j < n && stages_[j].row_join) ++j;
    const int64_t R = stages_[i].group_rows;
    StageRt& head = stages_[i];
    for (size_t t = 0; t < prog_.tensors.size(); ++t) {
      const bc::TensorDesc& td = prog_.tensors[t];
      if (td.kind != bc::TensorKind::kWorkspace || td.numel % R != 0) continue;
      if (std::any_of(aliases_.begin(), aliases_.end(), [&](const auto& a) { return a.first == t; })) continue;
      const int64_t slab = td.numel / R;
      bool used = false, ok = true;
      for (size_t k = 0; k < n && ok; ++k) {
        const bc::Stage& s = prog_.stages[k];
        const StageRt& rt = stages_[k];
        if (s.mode == bc::Mode::kGemm && (s.gemm.a == t || s.gemm.b == t || s.gemm.c == t)) ok = false;
        for (const ViewRt& v : rt.views) {
          if (v.tensor != t || !ok) continue;
          used = true;
          if (k < i || k >= j) {
            ok = false;
            break;
          }
          // Slice r of the stage is block r of both its domains (row-major):
          // ROW rows all full, a chunked stage's slices whole rows of chunks.
          if (s.mode == bc::Mode::kRow) {
            const int64_t K = s.p[0];
            if (s.p[2] > 0) {
              const int64_t nch = K > 0 ? (K + s.p[2] - 1) / s.p[2] : 1;
              ok = (rt.n_red / R) % nch == 0;
            } else {
              ok = rt.n_full == rt.n_red * K;
            }
          }
          ok = ok && bc::SlabLocal(v.dims, v.strides, v.rank, v.offset, R, slab);
        }
      }
      if (!used || !ok) continue;
      RowLocalWs rl;
      rl.tensor = static_cast<uint16_t>(t);
      rl.slab_bytes = slab * static_cast<int64_t>(DTypeSize(td.dtype));
      rl.buf_off = head.row_local_bytes;
      // Padded: in-place loads may read up to 16 lanes past a run.
      head.row_local_bytes += (static_cast<size_t>(rl.slab_bytes) + 64 + 63) / 64 * 64;
      head.row_local.push_back(rl);
    }
  }
}

namespace {
// Whether an instruction reads register r (as a tile or as half of a wide one).
bool ReadsReg(const bc::Inst& in, int r) {
  switch (bc::kOpInfo[in.op].kind) {
    case bc::Kind::kLoad:
    case bc::Kind::kFill:
      return false;
    case bc::Kind::kBin:
      return in.a == r || ((in.flags & bc::kFormMask) == bc::kFormRR && in.b == r);
    case bc::Kind::kSel:
      return in.a == r || in.b == r || in.c == r;
    case bc::Kind::kWide:
      if (bc::Opcode(in.op) == bc::Opcode::WACC) return in.a == r || in.dst == r || in.dst + 1 == r;
      if (bc::Opcode(in.op) == bc::Opcode::WNARROW) return in.a == r || in.a + 1 == r;
      return false;
    default:
      return in.a == r;
  }
}
// Whether an instruction overwrites register r entirely.
bool WritesReg(const bc::Inst& in, int r) {
  const bc::Kind kind = bc::kOpInfo[in.op].kind;
  if (kind == bc::Kind::kStore) return false;
  if (kind == bc::Kind::kWide && bc::Opcode(in.op) != bc::Opcode::WNARROW) return in.dst == r || in.dst + 1 == r;
  return in.dst == r;
}
// The last instruction in [b, before) that overwrites register r, or b - 1.
int LastWriter(const bc::Stage& s, int b, int before, int r) {
  int j = before - 1;
  while (j >= b && !WritesReg(s.insts[j], r)) --j;
  return j;
}
// Whether register r is read in [from, to) before being overwritten.
bool LiveIn(const bc::Stage& s, int from, int to, int r) {
  for (int k = from; k < to; ++k) {
    if (ReadsReg(s.insts[k], r)) return true;
    if (WritesReg(s.insts[k], r)) return false;
  }
  return false;
}

}  // namespace

bool InPlaceSafe(const bc::Program& p, int in, int out) {
  if (p.stages.size() != 1 || in < 0 || out < 0 || in >= static_cast<int>(p.tensors.size()) ||
      out >= static_cast<int>(p.tensors.size()) || p.tensors[in].dtype != p.tensors[out].dtype)
    return false;
  const bc::Stage& s = p.stages[0];
  if (s.mode != bc::Mode::kElem) return false;
  // Every view of either tensor addresses the same elements lane for lane.
  const bc::View* first = nullptr;
  for (const bc::View& v : s.views) {
    if (v.tensor != in && v.tensor != out) continue;
    if (v.level != bc::Level::kFull) return false;
    if (!first) first = &v;
    if (v.offset != first->offset || !std::equal(v.strides, v.strides + s.full_rank, first->strides)) return false;
  }
  auto view_of = [&](const bc::Inst& i, int t) { return i.c < s.views.size() && s.views[i.c].tensor == t; };
  const int n = static_cast<int>(s.insts.size());
  int last_read = -1, first_write = n;
  for (int j = 0; j < n; ++j) {
    const bc::Inst& i = s.insts[j];
    const bc::Kind kind = bc::kOpInfo[i.op].kind;
    if (kind == bc::Kind::kLoad && view_of(i, in)) {
      last_read = std::max(last_read, j);
      for (int k = j + 1; k < n; ++k) {
        if (ReadsReg(s.insts[k], i.dst)) last_read = std::max(last_read, k);
        if (WritesReg(s.insts[k], i.dst)) break;
      }
    }
    if (kind == bc::Kind::kStore && view_of(i, out)) {
      // The store, or the writer of its value (forwarded), or that one's
      // producer of operand a (forwarded too, unless a load: LOAD, STORE and
      // the wide, reduction and broadcast ops are never forwarded).
      auto forwardable = [&](int k) {
        const bc::Kind kk = bc::kOpInfo[s.insts[k].op].kind;
        return kk != bc::Kind::kLoad && kk != bc::Kind::kStore && kk != bc::Kind::kWide && kk != bc::Kind::kRed &&
               kk != bc::Kind::kBcast;
      };
      int w = j;
      const int d = LastWriter(s, 0, j, i.a);
      if (d >= 0 && forwardable(d)) {
        w = d;
        const int q = LastWriter(s, 0, d, s.insts[d].a);
        if (q >= 0 && forwardable(q)) w = q;
      }
      first_write = std::min(first_write, w);
    }
  }
  return last_read <= first_write;
}

namespace {

void NopHandler(const VInst&, TileCtx&) {}

// The handler that computes an instruction's result: fn, or fn2 behind a
// store-forwarding wrapper (ForwardStores).
Handler& Body(VInst& v) { return v.fwd_view != kNoForward ? v.fn2 : v.fn; }

// The next instruction in [from, e) that reads r before anything rewrites
// it, else e.
int NextReader(const bc::Stage& s, int from, int e, int r) {
  int k = from;
  while (k < e && !ReadsReg(s.insts[k], r) && !WritesReg(s.insts[k], r)) ++k;
  return k < e && ReadsReg(s.insts[k], r) ? k : e;
}
// Whether no instruction in [from, to) writes any of regs.
bool Kept(const bc::Stage& s, int from, int to, std::initializer_list<uint32_t> regs) {
  for (int m = from; m < to; ++m)
    for (uint32_t r : regs)
      if (WritesReg(s.insts[m], static_cast<int>(r))) return false;
  return true;
}

// The element offset of domain element f in view v: dims of stride 0 need
// no remainder and the outermost none at all (f is inside the domain), so a
// row operand of a [rows, cols] domain takes one division, where the
// generic walk (ForEachRun) took four (a long-row layernorm's normalize
// pass, [64, 32768] at one thread: two of these per 4096-lane tile were 4%
// of its time).
inline int64_t ElementOffset(const ViewRt& v, int64_t f) {
  int64_t off = v.offset;
  for (int i = v.rank - 1; i > 0; --i) {
    const int64_t d = v.dims[i];
    if (v.strides[i] != 0) off += (f % d) * v.strides[i];
    f /= d;
  }
  return v.rank > 0 ? off + f * v.strides[0] : off;
}

// A LOAD whose view holds one value over the whole tile (FuseUniformLoads):
// lane 0 of its register gets that value, for a reader that takes it as a
// row operand of one row.
void UniformLoadHandler(const VInst& vi, TileCtx& c) {
  if (c.n[vi.level] <= 0) return;
  const ViewRt& v = c.stage->views[vi.view];
  const uint8_t* base = static_cast<const uint8_t*>(c.ptrs[v.tensor]);
  c.W<uint32_t>(vi.dst)[0] = LoadOne(v.dtype, base + ElementOffset(v, c.start[vi.level]) * v.esize);
}

// CAST r := R[a] to f16/bf16 that only a STORE into a tensor of that dtype
// reads: the store rounds the same way (rounding is idempotent), so the cast
// just lets r name a's lanes.
void AliasHandler(const VInst& vi, TileCtx& c) { c.p[vi.dst] = c.p[vi.a]; }
}  // namespace

// A ragged stage (SetupRagged) whose LOADs all read f32 views that are one
// contiguous run over the whole domain (so in place for any tile), with
// fused programs whose results are forwarded into such views or kept in
// scratch, and whose STOREs find their values already forwarded: the
// programs' pointers for a tile are a view's base plus the tile start, a
// scratch register, or null, known here (StageRt::direct_ptrs). A tile then
// skips the LOAD, STORE and program handlers' checks (DirectTile): 300
// stacked Adam tensors of 77 elements at one thread 54 -> 46 us (64: 49 ->
// 41).
void Executable::SetupDirect(StageRt& rt) const {
  if (!rt.ragged) return;
  using DP = StageRt::DirectPtr;
  auto in_place = [&](uint16_t view) {
    const ViewRt& v = rt.views[view];
    return v.zero_copy && v.esize == 4 && v.cont_dim == 0 && v.rank > 0;
  };
  auto of_view = [&](uint16_t view) { return DP{DP::kView, 0, rt.views[view].tensor, 0, rt.views[view].offset}; };
  std::vector<DP> reg(static_cast<size_t>(prog_.num_regs));  // where each register's value is
  std::vector<StageRt::DirectProgram> programs;
  std::vector<DP> ptrs;  // only the pointers a program uses, each with its index
  for (int i = rt.sec[bc::kBody]; i < rt.sec[bc::kBody + 1]; ++i) {
    const VInst& vi = rt.code[i];
    if (vi.fn == &LoadHandler) {
      if (vi.level != 0 || !in_place(vi.view) || vi.dst >= reg.size()) return;
      reg[vi.dst] = of_view(vi.view);
    } else if (vi.fn == &ChainProgramHandler) {
      const ChainProgram* pg = static_cast<const ChainProgram*>(vi.aux);
      const size_t first = ptrs.size();
      auto use = [&](DP d, int k) {
        d.k = static_cast<uint8_t>(k);
        ptrs.push_back(d);
      };
      const int ns = static_cast<int>(pg->steps.size()) - 1;
      for (int k = 0; k < ns; ++k) {
        const ChainStep& st = pg->steps[k];
        const uint32_t rr[2] = {pg->src[k], pg->opnd[k]};
        const int64_t masks[2] = {st.msrc, st.mopnd};
        for (int q = 0; q < 2; ++q) {
          if (!masks[q]) continue;
          if (rr[q] >= reg.size() || reg[rr[q]].kind == DP::kNull) return;  // a value from before the body
          use(reg[rr[q]], 3 * k + q);
        }
        if (!st.mout) continue;
        if (pg->out[k] >= reg.size()) return;
        const bool fwd = pg->fwd[k] != kNoForward && in_place(pg->fwd[k]);
        reg[pg->out[k]] = fwd ? of_view(pg->fwd[k]) : DP{DP::kScratch, 0, 0, pg->out[k], 0};
        use(reg[pg->out[k]], 3 * k + 2);
      }
      programs.push_back({pg, static_cast<uint32_t>(ptrs.size() - first)});
    } else if (vi.fn == &StoreHandler) {
      // Already there: the value was forwarded into this view.
      const DP& r = vi.a < reg.size() ? reg[vi.a] : DP{};
      if (vi.level != 0 || vi.fwd_view == kNoForward || !in_place(vi.view) || r.kind != DP::kView ||
          r.tensor != rt.views[vi.view].tensor || r.offset != rt.views[vi.view].offset)
        return;
    } else {
      return;
    }
  }
  rt.direct_scratch = std::any_of(ptrs.begin(), ptrs.end(), [](const DP& d) { return d.kind == DP::kScratch; });
  rt.direct = std::move(programs);
  rt.direct_ptrs = std::move(ptrs);
}

// Stages whose fused programs are the same (a stacked launch of one kernel
// over many tensors: 300 Adam steps) share one copy: the steps a tile walks
// stay in L1 instead of 300 copies of ~1 KB cycling through the caches.
// Programs are the same when every step and register field is.
void Executable::ShareChainPrograms() {
  auto same_step = [](const ChainStep& a, const ChainStep& b) {
    return a.op == b.op && a.operand == b.operand && a.rev == b.rev && a.load == b.load && a.store == b.store &&
           std::memcmp(&a.k, &b.k, sizeof a.k) == 0 && a.src_slot == b.src_slot && a.opnd_slot == b.opnd_slot &&
           a.out_slot == b.out_slot && a.msrc == b.msrc && a.mopnd == b.mopnd && a.mout == b.mout && a.fn == b.fn;
  };
  auto same = [&](const ChainProgram& a, const ChainProgram& b) {
    if (a.run != b.run || a.steps.size() != b.steps.size() || a.src != b.src || a.opnd != b.opnd || a.out != b.out ||
        a.fwd != b.fwd)
      return false;
    for (size_t k = 0; k < a.steps.size(); ++k)
      if (!same_step(a.steps[k], b.steps[k])) return false;
    return true;
  };
  std::vector<const ChainProgram*> kept;
  for (StageRt& rt : stages_) {
    for (auto& pg : rt.chains) {
      const ChainProgram* canon = nullptr;
      for (size_t q = kept.size(); q-- > 0 && !canon && kept.size() - q <= 8;)  // the last few distinct ones
        if (same(*kept[q], *pg)) canon = kept[q];
      if (!canon) {
        kept.push_back(pg.get());
        continue;
      }
      for (VInst& v : rt.code)
        if (v.aux == pg.get()) v.aux = canon;
      for (StageRt::DirectProgram& d : rt.direct)
        if (d.pg == pg.get()) d.pg = canon;  // pg stays in rt.chains (the tests' counts), unused
    }
  }
}

// An ELEM stage whose code is only plain LOADs, STOREs and fused programs
// runs a tile whose length is not a multiple of 16 (a tensor's last) as one,
// in place, instead of its whole vectors and then the rest through copies
// (RunElem): a LOAD then points into the tensor with only n lanes valid, a
// STORE copies n lanes, and a program runs its last lanes masked or through
// copies (RunChainF), so nothing reads or writes past the tile. 300 stacked
// Adam tensors of 64..16384 elements: 5-10% faster (all lengths rounded to
// 16 measured as much faster as this).
void Executable::SetupRagged(StageRt& rt) {
  if (rt.mode != bc::Mode::kElem) return;
  bool program = false;
  for (int k = 0; k < bc::kNumSections; ++k)
    for (int i = rt.sec[k]; i < rt.sec[k + 1]; ++i) {
      const Handler h = rt.code[i].fn;
      if (k != bc::kBody || (h != &LoadHandler && h != &StoreHandler && h != &ChainProgramHandler)) return;
      program = program || h == &ChainProgramHandler;
    }
  rt.ragged = program;
}

// Instructions that fusion made no-ops leave the code (run once per tile):
// the decode passes above index code by bytecode instruction, so this runs
// last; sections keep their order.
void Executable::DropNops(StageRt& rt) {
  std::vector<VInst> kept;
  kept.reserve(rt.code.size());
  int sec[bc::kNumSections + 1];
  for (int k = 0; k < bc::kNumSections; ++k) {
    sec[k] = static_cast<int>(kept.size());
    for (int i = rt.sec[k]; i < rt.sec[k + 1]; ++i)
      if (rt.code[i].fn != &NopHandler) kept.push_back(rt.code[i]);
  }
  sec[bc::kNumSections] = static_cast<int>(kept.size());
  rt.code = std::move(kept);
  std::copy(std::begin(sec), std::end(sec), rt.sec);
}

void Executable::ElideRoundingCasts(const bc::Stage& s, StageRt& rt) {
  if (s.mode == bc::Mode::kCol) return;  // only `body` runs there; keep COL as is
  const int b = rt.sec[bc::kBody], e = rt.sec[bc::kBody + 1];
  for (int i = b; i < e; ++i) {
    const bc::Inst& st = s.insts[i];
    if (bc::Opcode(st.op) != bc::Opcode::STORE) continue;
    const DType dt = rt.views[st.c].dtype;
    if (dt != DType::kFloat16 && dt != DType::kBFloat16) continue;
    const int j = LastWriter(s, b, i, st.a);
    if (j < b) continue;
    const bc::Inst& cast = s.insts[j];
    const DType src = DType((cast.flags & bc::kSrcMask) >> bc::kSrcShift);
    if (bc::Opcode(cast.op) != bc::Opcode::CAST || DType(cast.type) != dt || !IsFloat(src) ||
        rt.code[j].fwd_view != kNoForward || (cast.flags & bc::kLevelRed) != (st.flags & bc::kLevelRed))
      continue;
    if (LiveIn(s, j + 1, i, st.a) || LiveIn(s, i + 1, e, st.a)) continue;
    bool src_kept = true;  // the lanes r names must still be there at the store
    for (int k = j + 1; k < i; ++k) src_kept = src_kept && !WritesReg(s.insts[k], cast.a);
    if (!src_kept) continue;
    rt.code[j].fn = &AliasHandler;
  }
}

// ROW stages: "BCAST rb, rr" whose only reader is the next float binary op
// "op d, a, rb" (ADD, SUB, MUL, DIV, MAX, MIN) runs as that op reading rr
// broadcast per row (RowBroadcastHandler): one pass instead of two and no
// full-size temporary. Needed: rr not rewritten in between, rb dead after
// the op, d != rr (the op reads rr row by row while writing d).
void Executable::FuseRowBroadcasts(const bc::Stage& s, StageRt& rt) {
  if (s.mode != bc::Mode::kRow) return;
  const int b = rt.sec[bc::kBody], e = rt.sec[bc::kBody + 1];
  for (int j = b; j < e; ++j) {
    const bc::Inst& bc_in = s.insts[j];
    if (bc::Opcode(bc_in.op) != bc::Opcode::BCAST || rt.code[j].fwd_view != kNoForward) continue;
    const int rb = bc_in.dst, rr = bc_in.a;
    int k = j + 1;
    bool rr_kept = true;
    while (k < e && !ReadsReg(s.insts[k], rb) && !WritesReg(s.insts[k], rb)) {
      rr_kept = rr_kept && !WritesReg(s.insts[k], rr);
      ++k;
    }
    if (k == e || !rr_kept || !ReadsReg(s.insts[k], rb)) continue;
    const bc::Inst& op = s.insts[k];
    if (bc::kOpInfo[op.op].kind != bc::Kind::kBin || (op.flags & bc::kFormMask) != bc::kFormRR ||
        (op.flags & bc::kLevelRed) || op.b != rb || op.a == rb || op.dst == rr ||
        (op.dst != rb && LiveIn(s, k + 1, e, rb)))
      continue;
    const Handler h = RowBroadcastHandler(op);
    if (!h) continue;
    VInst& v = rt.code[k];
    Body(v) = h;
    v.b = rr;
    v.form = kFormRow;
    rt.code[j].fn = &NopHandler;
    rt.code[j].fused = true;
  }
}

// ELEM and chunked ROW stages: "LOAD rb, v" where v has one value over every
// tile (stride 0 over a run of D elements that each tile lies in: a row's
// mean or max in a long-row stage, a per-row scale) and whose only reader is
// the next float binary op "op d, a, rb" (ADD, SUB, MUL, DIV, MAX, MIN; for
// ADD, MUL, MAX and MIN also "op d, rb, a") loads one lane, and the op reads
// it as a row operand of a one-row tile (c.n[1] = 1 there): no fill pass.
void Executable::FuseUniformLoads(const bc::Stage& s, StageRt& rt) {
  const bool elem = s.mode == bc::Mode::kElem, chunk = s.mode == bc::Mode::kRow && s.p[2] > 0;
  if (!elem && !chunk) return;
  const int b = rt.sec[bc::kBody], e = rt.sec[bc::kBody + 1];
  for (int j = b; j < e; ++j) {
    const bc::Inst& ld = s.insts[j];
    if (bc::Opcode(ld.op) != bc::Opcode::LOAD || (ld.flags & bc::kLevelRed)) continue;
    const ViewRt& v = rt.views[ld.c];
    int64_t D = 1;  // trailing stride-0 extent
    int i = v.rank - 1;
    for (; i >= 0 && v.strides[i] == 0; --i) D *= v.dims[i];
    if (D <= 1) continue;
    bool uniform;
    if (i < 0) {
      uniform = true;  // one value for the whole domain
    } else if (elem) {
      const int64_t slice = rt.group_rows > 0 ? rt.n_full / rt.group_rows : D;
      uniform = D % s.p[0] == 0 && slice % D == 0;  // tiles (and row-group slices) never cross a run
    } else {
      uniform = s.p[0] > 0 && D % s.p[0] == 0;  // each row (all its chunks) inside one run
    }
    if (!uniform) continue;
    const int rb = ld.dst;
    int k = j + 1;
    while (k < e && !ReadsReg(s.insts[k], rb) && !WritesReg(s.insts[k], rb)) ++k;
    if (k == e || !ReadsReg(s.insts[k], rb)) continue;
    const bc::Inst& op = s.insts[k];
    if (bc::kOpInfo[op.op].kind != bc::Kind::kBin || (op.flags & bc::kFormMask) != bc::kFormRR ||
        (op.flags & bc::kLevelRed) || op.a == op.b || rt.code[k].form == kFormRow ||
        (op.dst != rb && LiveIn(s, k + 1, e, rb)))
      continue;
    const bc::Opcode o = bc::Opcode(op.op);
    const bool commutes = o == bc::Opcode::ADD || o == bc::Opcode::MUL || o == bc::Opcode::MAX || o == bc::Opcode::MIN;
    if (op.b != rb && !commutes) continue;
    const Handler h = RowBroadcastHandler(op);
    if (!h) continue;
    VInst& vk = rt.code[k];
    Body(vk) = h;
    vk.a = op.b == rb ? op.a : op.b;
    vk.b = static_cast<uint32_t>(rb);
    vk.form = kFormRow;
    rt.code[j].fn = &UniformLoadHandler;
  }
}

namespace {
// ADD/SUB/MUL/DIV on f32 at full level: its chain op number, else -1.
int ChainOpOf(const bc::Inst& in) {
  if (bc::kOpInfo[in.op].kind != bc::Kind::kBin || (in.flags & bc::kLevelRed) || DType(in.type) != DType::kFloat32 ||
      DType((in.flags & bc::kSrcMask) >> bc::kSrcShift) != DType::kFloat32)
    return -1;
  switch (bc::Opcode(in.op)) {
    case bc::Opcode::ADD:
      return 0;
    case bc::Opcode::SUB:
      return 1;
    case bc::Opcode::MUL:
      return 2;
    case bc::Opcode::DIV:
      return 3;
    default:
      return -1;
  }
}
// EXP, GELU or SQRT on f32 at full level: its chain op number (a unary
// second op), else -1.
int ChainUnaryOf(const bc::Inst& in) {
  if (DType(in.type) != DType::kFloat32 || (in.flags & bc::kLevelRed)) return -1;
  switch (bc::Opcode(in.op)) {
    case bc::Opcode::EXP:
      return 4;
    case bc::Opcode::GELU:
      return 5;
    case bc::Opcode::SQRT:
      return 6;
    default:
      return -1;
  }
}
}  // namespace

// "op1 t, x, y" whose only reader is the next "op2 d, t, z" (or "op2 d, z,
// t"), both f32 ADD/SUB/MUL/DIV at full level, y and z registers, constants
// or row broadcasts, or the next "EXP d, t" (softmax's exp(x - max)),
// "GELU d, t" (a GEMM epilogue's GELU(C + bias)) or "SQRT d, t": op2
// runs both in one pass (ChainHandler) and op1 is
// dropped: a pass over the tile and a temporary less, with the bits of the
// two instructions (t is rounded, never contracted into an FMA). Needed: t
// dead after op2, x and y not rewritten in between, d not a row register.
int Executable::FuseBinaryChains(const bc::Stage& s, StageRt& rt, std::vector<ChainSig>& chains) {
  if (s.mode == bc::Mode::kCol) return 0;  // COL runs its sections in its own loops; keep it as is
  const bool one_row = s.mode == bc::Mode::kElem || (s.mode == bc::Mode::kRow && s.p[2] > 0);
  int fused = 0;
  const int b = rt.sec[bc::kBody], e = rt.sec[bc::kBody + 1];
  for (int j = b; j < e; ++j) {
    const bc::Inst& i1 = s.insts[j];
    VInst& v1 = rt.code[j];
    const int op1 = ChainOpOf(i1);
    if (op1 < 0 || v1.fused || v1.fwd_view != kNoForward) continue;
    // op1's operands: x = R[a]; y by form (const op reg only when it commutes).
    int y_kind;
    if (v1.form == bc::kFormRR)
      y_kind = 0;
    else if (v1.form == bc::kFormRK || (v1.form == bc::kFormKR && op1 != 1 && op1 != 3))
      y_kind = 1;
    else if (v1.form == kFormRow)
      y_kind = 2;
    else
      continue;
    const uint32_t x = v1.a, y = v1.b, t = i1.dst;
    int k = j + 1;
    while (k < e && !ReadsReg(s.insts[k], static_cast<int>(t)) && !WritesReg(s.insts[k], static_cast<int>(t))) ++k;
    if (k == e || !ReadsReg(s.insts[k], static_cast<int>(t))) continue;
    const bc::Inst& i2 = s.insts[k];
    VInst& v2 = rt.code[k];
    const int un2 = ChainUnaryOf(i2);
    const bool unary2 = un2 >= 0 && i2.a == t;
    const int op2 = unary2 ? un2 : ChainOpOf(i2);
    if (op2 < 0 || v2.fused) continue;
    // op2's other operand z, and whether it comes first.
    int z_kind;
    bool z_first = false;
    uint32_t z = 0, k2 = 0;
    if (unary2) {
      z_kind = 1;  // none
    } else if (v2.form == bc::kFormRR) {
      if (v2.a == t && v2.b == t) continue;
      z_kind = 0;
      z_first = v2.b == t;
      z = z_first ? v2.a : v2.b;
    } else if (v2.form == bc::kFormRK || v2.form == bc::kFormKR) {
      if (v2.a != t) continue;
      z_kind = 1;
      z_first = v2.form == bc::kFormKR;
      k2 = v2.kbits;
    } else if (v2.form == kFormRow) {
      if (v2.a != t) continue;
      z_kind = 2;
      z = v2.b;
    } else {
      continue;
    }
    if (z_first && op2 != 1 && op2 != 3) z_first = false;
    bool kept = true;  // x and y still hold op1's operands at op2
    for (int m = j + 1; m < k && kept; ++m)
      kept =
          !WritesReg(s.insts[m], static_cast<int>(x)) && (y_kind == 1 || !WritesReg(s.insts[m], static_cast<int>(y)));
    if (!kept) continue;
    if (i2.dst != t && LiveIn(s, k + 1, rt.sec[bc::kNumSections], static_cast<int>(t))) continue;
    // A row operand is read at the start of its row: the result may take its
    // register only where a tile is one row (ELEM, chunked ROW).
    if (!one_row && ((y_kind == 2 && i2.dst == y) || (z_kind == 2 && i2.dst == z))) continue;
    const Handler h = ChainHandler(op1, op2, y_kind, z_kind, z_first);
    if (!h) continue;
    const uint32_t k1 = v1.kbits;
    v2.a = x;
    v2.b = y;
    v2.c = z;
    v2.kbits = k1;
    v2.kbits2 = k2;
    Body(v2) = h;
    v1.fn = &NopHandler;
    v1.fused = v2.fused = true;
    chains.push_back({j, k, op1, op2, y_kind, z_kind, z_first});
    ++fused;
  }
  // A layernorm's tail: the chain (x - m) * r (m, r row operands) read only
  // by the chain t * g + b (registers) runs as one pass (NormAffineHandler).
  const Handler norm = ChainHandler(1, 2, 2, 2, false), affine = ChainHandler(2, 0, 0, 0, false);
  for (int k1 = b; k1 < e; ++k1) {
    VInst& c1 = rt.code[k1];
    if (c1.fwd_view != kNoForward || c1.fn != norm || !norm) continue;
    const int t = s.insts[k1].dst;
    int k2 = NextReader(s, k1 + 1, e, t);
    if (k2 == e) continue;
    if (rt.code[k2].fn == &NopHandler && rt.code[k2].fused) {
      // t * g, the first op of the chain t * g + b: that chain runs at the
      // reader of its result (and reads t there).
      const int k0 = k2;
      k2 = NextReader(s, k0 + 1, e, s.insts[k0].dst);
      if (k2 == e || LiveIn(s, k0 + 1, k2, t)) continue;
    }
    VInst& c2 = rt.code[k2];
    if (Body(c2) != affine || c2.a != static_cast<uint32_t>(t) || c2.b == static_cast<uint32_t>(t) ||
        c2.c == static_cast<uint32_t>(t))
      continue;
    const int d2 = s.insts[k2].dst;
    if (d2 != t && LiveIn(s, k2 + 1, rt.sec[bc::kNumSections], t)) continue;
    if (!one_row && (d2 == static_cast<int>(c1.b) || d2 == static_cast<int>(c1.c))) continue;
    if (!Kept(s, k1 + 1, k2, {c1.a, c1.b, c1.c})) continue;  // the first chain's operands hold at the second
    c2.kbits = c2.b;                                         // g
    c2.kbits2 = c2.c;                                        // b
    c2.a = c1.a;
    c2.b = c1.b;
    c2.c = c1.c;
    Body(c2) = NormAffineHandler(true);
    c1.fn = &NopHandler;
    ++fused;
  }
  // The same where the normalised value is a register (ROW tiles: x - mean
  // also feeds the variance): the chain (d * r) * g (r a row operand, g a
  // register) read only by "ADD o, t, b" (b a register).
  const Handler scale = ChainHandler(2, 2, 2, 0, false);
  for (int k1 = b; k1 < e; ++k1) {
    VInst& c1 = rt.code[k1];
    if (c1.fwd_view != kNoForward || c1.fn != scale || !scale) continue;
    const int t = s.insts[k1].dst;
    const int k2 = NextReader(s, k1 + 1, e, t);
    if (k2 == e) continue;
    const bc::Inst& add = s.insts[k2];
    VInst& c2 = rt.code[k2];
    if (bc::Opcode(add.op) != bc::Opcode::ADD || DType(add.type) != DType::kFloat32 || (add.flags & bc::kLevelRed) ||
        (add.flags & bc::kFormMask) != bc::kFormRR || c2.fused || c2.form != bc::kFormRR || add.a == add.b ||
        (add.a != t && add.b != t))
      continue;
    const int d2 = add.dst;
    if (d2 != t && LiveIn(s, k2 + 1, rt.sec[bc::kNumSections], t)) continue;
    if (!one_row && d2 == static_cast<int>(c1.b)) continue;
    const uint32_t other = add.a == t ? c2.b : c2.a;
    if (!Kept(s, k1 + 1, k2, {c1.a, c1.b, c1.c})) continue;
    c2.kbits = c1.c;  // g
    c2.kbits2 = other;
    c2.a = c1.a;
    c2.c = c1.b;  // r
    c2.b = c1.b;  // (m: unused)
    Body(c2) = NormAffineHandler(false);
    c1.fn = &NopHandler;
    c2.fused = true;
    chains.push_back({k1, k2, -1, -1, 0, 0, false});  // g's reader (k1) and b's (k2) run at k2
    ++fused;
  }
  return fused;
}

// ELEM stages: a STORE to a view of tensor O whose value is computed from
// exactly one LOAD of a workspace W through a view of the same geometry
// (offset, dims, strides), W having no other view here. Tile by tile the
// stage then reads W where it writes O. When W also lives in O (see
// SetupOutputAliases), a LOAD that reads W in place must not be read after
// O is written: its register's only reader is the instruction that writes
// O (the STORE, or the instruction forwarded into it), which reads each
// element before it writes it (handlers run in place).
void Executable::FindInPlaceStores(const bc::Stage& s, StageRt& rt) {
  if (s.mode != bc::Mode::kElem) return;
  const int n = rt.sec[bc::kNumSections];
  auto same = [](const ViewRt& a, const ViewRt& b) {
    return a.offset == b.offset && a.rank == b.rank && std::equal(a.dims, a.dims + a.rank, b.dims) &&
           std::equal(a.strides, a.strides + a.rank, b.strides);
  };
  for (int i = 0; i < n; ++i) {
    const bc::Inst& st = s.insts[i];
    if (bc::Opcode(st.op) != bc::Opcode::STORE) continue;
    const ViewRt& ov = rt.views[st.c];
    int writer = i;  // the instruction that writes O: one forwarded into it
    for (int k = 0; k < i; ++k)
      if (rt.code[k].fwd_view == st.c && bc::Opcode(s.insts[k].op) != bc::Opcode::STORE) writer = k;
    if (writer == i) continue;
    for (size_t wv = 0; wv < rt.views.size(); ++wv) {
      const ViewRt& v = rt.views[wv];
      if (v.tensor == ov.tensor || !same(v, ov)) continue;
      bool ok = true;
      int loads = 0;
      for (size_t u = 0; u < rt.views.size(); ++u)
        if (u != wv && rt.views[u].tensor == v.tensor) ok = false;
      for (int k = 0; k < n && ok; ++k) {
        const bc::Inst& in = s.insts[k];
        const bc::Kind kind = bc::kOpInfo[in.op].kind;
        if ((kind != bc::Kind::kLoad && kind != bc::Kind::kStore) || in.c != wv) continue;
        if (kind == bc::Kind::kStore || ++loads > 1) {
          ok = false;
          break;
        }
        for (int m = k + 1; m < n; ++m) {  // readers of the loaded register
          if (ReadsReg(s.insts[m], in.dst) && m != writer) ok = false;
          if (WritesReg(s.insts[m], in.dst)) break;
        }
      }
      if (ok && loads == 1) rt.in_place.push_back({v.tensor, ov.tensor});
    }
  }
}

// A stored result of a fused program that nothing after the program reads
// (its register is written again by a later step, or not live after the
// program) and that is not forwarded into an output lives in a strip slot
// (ChainStep::out_slot), as do the reads of it by later steps: a strip
// writes and reads it at the same lanes, which stay in L1. Adam's 300
// tensors at one thread: three such values.
void AssignChainSlots(const bc::Stage& s, int after, int end, ChainProgram& pg) {
  const int n = static_cast<int>(pg.steps.size());
  std::vector<int8_t> slot(n, -1);
  int8_t used = 0;
  for (int t = 0; t < n && used < kMaxChainSlots; ++t) {
    if (!pg.steps[t].store || pg.fwd[t] != kNoForward) continue;
    bool dies = !LiveIn(s, after, end, static_cast<int>(pg.out[t]));
    for (int u = t + 1; u < n && !dies; ++u) dies = pg.out[u] == pg.out[t];
    if (dies) slot[t] = pg.steps[t].out_slot = used++;
  }
  // The slot a read of register r by step t takes: that of the last
  // earlier step writing r (none: r's value from before the program).
  auto slot_of = [&](int t, uint32_t r) -> int8_t {
    for (int u = t - 1; u >= 0; --u)
      if (pg.out[u] == r) return slot[u];
    return -1;
  };
  for (int t = 0; t < n; ++t) {
    ChainStep& st = pg.steps[t];
    if (st.load) st.src_slot = slot_of(t, pg.src[t]);
    if (ReadsOperand(st.operand)) st.opnd_slot = slot_of(t, pg.opnd[t]);
    st.SetMasks();
  }
}

// A step that loads a value and adds, subtracts or multiplies it by a
// constant into a strip slot that one later step alone reads, as its
// operand, is folded into that reader (ChainOperand::kRegAdd/Sub/Mul): the
// reader loads the value and applies the constant itself. One step, a
// slot's stores and loads less per strip, with the same bits (the same two
// roundings, in the same order). Needed: the next step loads its own value
// (the accumulator is free); no step in between writes the loaded register
// or any tile memory (so the reader sees the same lanes); the slot has no
// other reader. Adam: m * b1 and v * b2 fold into their adds (14 steps and
// three slots to 12 and one).
void FoldOperandSteps(ChainProgram& pg) {
  for (size_t a = 0; a + 1 < pg.steps.size();) {
    const ChainStep& A = pg.steps[a];
    const bc::Opcode op = bc::Opcode(A.op);
    if (!A.load || A.src_slot >= 0 || A.operand != ChainOperand::kConst || A.rev || !A.store || A.out_slot < 0 ||
        (op != bc::Opcode::ADD && op != bc::Opcode::SUB && op != bc::Opcode::MUL) || !pg.steps[a + 1].load) {
      ++a;
      continue;
    }
    size_t reader = 0;
    int readers = 0;
    bool ok = true;
    for (size_t t = a + 1; t < pg.steps.size() && ok; ++t) {
      const ChainStep& st = pg.steps[t];
      if (st.load && st.src_slot == A.out_slot) ok = false;
      if (ReadsOperand(st.operand) && st.opnd_slot == A.out_slot) reader = t, ++readers;
    }
    for (size_t t = a + 1; t < reader && ok; ++t)
      ok = !(pg.steps[t].store && (pg.steps[t].out_slot < 0 || pg.out[t] == pg.src[a]));
    if (!ok || readers != 1 || pg.steps[reader].operand != ChainOperand::kReg) {
      ++a;
      continue;
    }
    ChainStep& B = pg.steps[reader];
    B.operand = op == bc::Opcode::ADD   ? ChainOperand::kRegAdd
                : op == bc::Opcode::SUB ? ChainOperand::kRegSub
                                        : ChainOperand::kRegMul;
    B.SetConstant(A.k);
    B.opnd_slot = -1;
    B.SetMasks();
    SetStepFns(B);
    pg.opnd[reader] = pg.src[a];
    pg.steps.erase(pg.steps.begin() + a);
    for (auto* v : {&pg.src, &pg.opnd, &pg.out}) v->erase(v->begin() + a);
    pg.fwd.erase(pg.fwd.begin() + a);  // the step now at a is the next one
  }
}

template <class Pred>
int Executable::CountChainSteps(Pred pred) const {
  int n = 0;
  for (const StageRt& rt : stages_)
    for (const auto& pg : rt.chains)
      for (const ChainStep& st : pg->steps) n += pred(st);
  return n;
}
int Executable::folded_operands() const {
  return CountChainSteps([](const ChainStep& st) { return st.operand >= ChainOperand::kRegAdd; });
}
int Executable::half_strip_programs() const {
  int n = 0;
  for (const StageRt& rt : stages_)
    for (const auto& pg : rt.chains) n += pg->run == ChainRunner(true);
  return n;
}
int Executable::program_slots() const {
  return CountChainSteps([](const ChainStep& st) { return st.out_slot >= 0; });
}

// ELEM stages: a run of three or more f32 elementwise instructions
// (arithmetic, min/max, the short float unary ops; register or constant
// operands), LOADs in between allowed, runs as one program
// (ChainProgramHandler), strip by strip: a value that only the next
// instruction reads flows into it in vector registers, every other result
// is written to its register, a strip slot (AssignChainSlots) or forwarded
// into its output. A chain of k two-operand ops was ceil(k / 2) passes
// over the tile (FuseBinaryChains), each loading and storing every lane.
// Same bits: each step rounds as its handler does. Not with in-place
// stores of a workspace (FindInPlaceStores assumes one instruction writes
// the output that the workspace may then live in).
int Executable::FuseChainPrograms(const bc::Stage& s, StageRt& rt) const {
  if (s.mode != bc::Mode::kElem) return 0;
  for (const auto& [w, o] : rt.in_place)
    if (prog_.tensors[w].kind == bc::TensorKind::kWorkspace) return 0;
  const int b = rt.sec[bc::kBody], e = rt.sec[bc::kBody + 1];
  auto eligible = [&](int i) {
    const bc::Inst& in = s.insts[i];
    const bc::Kind kind = bc::kOpInfo[in.op].kind;
    VInst& v = rt.code[i];
    if ((kind != bc::Kind::kUn && kind != bc::Kind::kBin) || v.fused || v.level != 0 || v.fn == &NopHandler)
      return false;
    const DType src = DType((in.flags & bc::kSrcMask) >> bc::kSrcShift);
    if (DType(in.type) != DType::kFloat32 || src != DType::kFloat32 || !bc::ProgramOp(bc::Opcode(in.op))) return false;
    if (kind == bc::Kind::kBin && v.form > bc::kFormKR) return false;  // a row operand
    return Body(v) == SelectHandler(in);                               // not specialised already
  };
  int made = 0;
  for (int j = b; j < e;) {
    if (!eligible(j)) {
      ++j;
      continue;
    }
    // The run: eligible instructions, and LOADs whose register no earlier
    // instruction of the run touches (the program runs in place of the
    // run's last instruction, after them).
    std::vector<int> idx;
    int k = j;
    for (; k < e && static_cast<int>(idx.size()) < kMaxChainSteps; ++k) {
      if (eligible(k)) {
        idx.push_back(k);
        continue;
      }
      const bc::Inst& ld = s.insts[k];
      if (bc::kOpInfo[ld.op].kind != bc::Kind::kLoad || rt.code[k].level != 0) break;
      bool touched = false;
      for (int i : idx) touched = touched || ReadsReg(s.insts[i], ld.dst) || WritesReg(s.insts[i], ld.dst);
      if (touched) break;
    }
    while (!idx.empty() && idx.back() != k - 1 && bc::kOpInfo[s.insts[k - 1].op].kind == bc::Kind::kLoad) --k;
    if (idx.size() < 3) {
      j = k;
      continue;
    }
    auto pg = std::make_unique<ChainProgram>();
    int acc = -1;  // the register whose value the accumulator holds
    for (size_t t = 0; t < idx.size(); ++t) {
      const int i = idx[t];
      const bc::Inst& in = s.insts[i];
      const uint8_t form = bc::kOpInfo[in.op].kind == bc::Kind::kBin ? (in.flags & bc::kFormMask) : 0xff;
      ChainStep st;
      st.op = in.op;
      uint32_t src = in.a, opnd = 0;
      st.load = static_cast<int>(in.a) != acc;
      if (form == bc::kFormRR) {
        if (in.a == in.b) {
          st.operand = ChainOperand::kAcc;
        } else if (static_cast<int>(in.b) == acc) {  // a op acc
          st.load = false;
          st.rev = true;
          st.operand = ChainOperand::kReg;
          opnd = in.a;
        } else {
          st.operand = ChainOperand::kReg;
          opnd = in.b;
        }
      } else if (form == bc::kFormRK || form == bc::kFormKR) {
        st.operand = ChainOperand::kConst;
        st.rev = form == bc::kFormKR;
        st.SetConstant(BitsF32(rt.code[i].kbits));
      }
      // The result flows into the next step alone when that step takes it
      // as its accumulator and nothing after reads it.
      bool flows = false;
      if (t + 1 < idx.size() && rt.code[i].fwd_view == kNoForward) {
        const int next = idx[t + 1];
        const bc::Inst& nx = s.insts[next];
        const bool rr = bc::kOpInfo[nx.op].kind == bc::Kind::kBin && (nx.flags & bc::kFormMask) == bc::kFormRR;
        const bool takes = nx.a == in.dst || (rr && nx.b == in.dst);
        flows = takes && (nx.dst == in.dst || !LiveIn(s, next + 1, rt.sec[bc::kNumSections], in.dst));
      }
      st.store = !flows;
      SetStepFns(st);
      pg->steps.push_back(st);
      pg->src.push_back(src);
      pg->opnd.push_back(opnd);
      pg->out.push_back(in.dst);
      pg->fwd.push_back(rt.code[i].fwd_view);
      acc = in.dst;
    }
    AssignChainSlots(s, idx.back() + 1, rt.sec[bc::kNumSections], *pg);
    FoldOperandSteps(*pg);
    ChainStep end;
    end.op = kChainEnd;
    SetStepFns(end);
    pg->steps.push_back(end);
    const bool half = static_cast<int>(pg->steps.size()) - 1 >= kHalfStripSteps;
    if (half) UseHalfStrips(pg->steps);
    pg->run = ChainRunner(half);
    for (int i : idx) {
      VInst& v = rt.code[i];
      const bool head = i == idx.back();
      v.fn = head ? &ChainProgramHandler : &NopHandler;
      v.fn2 = nullptr;
      v.fwd_view = kNoForward;
      v.fused = true;
      v.aux = head ? pg.get() : nullptr;
    }
    rt.chains.push_back(std::move(pg));
    ++made;
    j = k;
  }
  return made;
}

// ROW stages: a fused chain exp(op1(x, y)) into t immediately followed by
// "RSUM.f32.red s, t" (softmax's exp(x - max) and its row sum) runs as one
// pass that writes t and s (ChainExpSumHandler): t stays written (later
// instructions or its store read it), the RSUM becomes a no-op. The RSUM's
// store forwarding, if any, is dropped (its STORE then copies s).
int Executable::FuseChainSums(const bc::Stage& s, StageRt& rt) {
  if (s.mode != bc::Mode::kRow) return 0;
  // The 12 chains exp(op1(x, y)) (op1 0..3, y kind 0..2), looked up once.
  static const std::array<Handler, 12> chains = [] {
    std::array<Handler, 12> h;
    for (int i = 0; i < 12; ++i) h[i] = ChainHandler(i / 3, 4, i % 3, 1, false);
    return h;
  }();
  int fused = 0;
  const int b = rt.sec[bc::kBody], e = rt.sec[bc::kBody + 1];
  for (int j = b; j + 1 < e; ++j) {
    VInst& ch = rt.code[j];
    const Handler h = Body(ch);
    const int which = static_cast<int>(std::find(chains.begin(), chains.end(), h) - chains.begin());
    if (!h || which == 12 || ch.level != 0) continue;
    const bc::Inst& sum = s.insts[j + 1];
    VInst& vs = rt.code[j + 1];
    const int t = s.insts[j].dst;
    if (bc::Opcode(sum.op) != bc::Opcode::RSUM || DType(sum.type) != DType::kFloat32 || vs.fused ||
        vs.fn == &NopHandler || sum.a != t || sum.dst == t || Body(vs) != SelectHandler(sum))
      continue;
    const Handler fh = ChainExpSumHandler(which / 3, which % 3);
    if (!fh) continue;
    ch.c = sum.dst;
    Body(ch) = fh;
    if (vs.fwd_view != kNoForward) {  // the STORE of s copies it instead
      for (int k = j + 2; k < rt.sec[bc::kNumSections]; ++k)
        if (rt.code[k].fwd_view == vs.fwd_view && bc::Opcode(s.insts[k].op) == bc::Opcode::STORE &&
            s.insts[k].a == sum.dst)
          rt.code[k].fwd_view = kNoForward;
    }
    vs = VInst{};
    vs.fn = &NopHandler;
    vs.fused = true;
    ++fused;
  }
  return fused;
}

// ROW stages: "MUL rm, ra, ra" (f32, full level) whose only reader is the
// next "RSUM rs, rm" runs as one RSUM of squares of ra (RowSumSquaresHandler):
// a pass and a full-size temporary less (layernorm's variance). Needed: ra
// not rewritten in between, rm dead after the RSUM.
int Executable::FuseSquareSums(const bc::Stage& s, StageRt& rt) {
  if (s.mode != bc::Mode::kRow) return 0;
  int deviations = 0;
  const int b = rt.sec[bc::kBody], e = rt.sec[bc::kBody + 1];
  for (int j = b; j < e; ++j) {
    const bc::Inst& mul = s.insts[j];
    if (bc::Opcode(mul.op) != bc::Opcode::MUL || (mul.flags & bc::kFormMask) != bc::kFormRR || mul.a != mul.b ||
        (mul.flags & bc::kLevelRed) || DType(mul.type) != DType::kFloat32 || rt.code[j].fwd_view != kNoForward)
      continue;
    const int rm = mul.dst, ra = mul.a;
    int k = j + 1;
    bool ra_kept = true;
    while (k < e && !ReadsReg(s.insts[k], rm) && !WritesReg(s.insts[k], rm)) {
      ra_kept = ra_kept && !WritesReg(s.insts[k], ra);
      ++k;
    }
    if (k == e || !ra_kept) continue;
    const bc::Inst& red = s.insts[k];
    if (bc::Opcode(red.op) != bc::Opcode::RSUM || DType(red.type) != DType::kFloat32 || red.a != rm || red.dst == ra ||
        (red.dst != rm && LiveIn(s, k + 1, e, rm)))
      continue;
    VInst& v = rt.code[k];
    Body(v) = RowSumSquaresHandler();
    v.a = ra;
    rt.code[j].fn = &NopHandler;
    rt.code[j].fused = v.fused = true;
    // ra = SUB x, m (m a row operand) read only by the MUL: all three in one
    // pass (the sum of squared deviations of a layernorm).
    const int j0 = LastWriter(s, b, j, ra);
    if (j0 < b) continue;
    const bc::Inst& sub = s.insts[j0];
    VInst& vs = rt.code[j0];
    if (bc::Opcode(sub.op) != bc::Opcode::SUB || DType(sub.type) != DType::kFloat32 || vs.form != kFormRow ||
        vs.fused || vs.fwd_view != kNoForward || vs.fn == &NopHandler)
      continue;
    // x and m hold until the RSUM (the MUL is gone); nothing but the MUL
    // reads ra (and the RSUM, when the MUL squared in place).
    if (!Kept(s, j0 + 1, j, {vs.a, vs.b}) || !Kept(s, j + 1, k, {vs.a, vs.b}) || LiveIn(s, j0 + 1, j, ra) ||
        LiveIn(s, j + 1, k, ra) || LiveIn(s, k + 1, e, ra) || red.dst == static_cast<int>(vs.b))
      continue;
    Body(v) = RowSumSqDevHandler();
    v.a = vs.a;
    v.b = vs.b;
    vs.fn = &NopHandler;
    vs.fused = true;
    ++deviations;
  }
  return deviations;
}

// ROW stages: "RSUM.f32.red s, x", then "MUL.f32.red m, s, k" (the mean),
// then the deviations pass of x from m that FuseSquareSums made (a
// layernorm's mean and variance, over short rows or a long row's chunks):
// the RSUM runs both sums in one pass over x (RowMomentsHandler) and leaves
// the sum of squared deviations in a register of the VM's own, past the
// program's (one per such pair in the stage); the deviations pass copies it
// from there. The second pass over x goes: `bench stages` layernorm at 2
// threads [64, 32768] 266-275 -> 255-256 us, [8, 262144] 314-323 ->
// 290-299 us; `bench vm` layernorm [128, 768] 12.2-13.0 -> 8.6-10.7 us
// (alternating runs). Not the deviations pass's bits: within about a bit
// of them, or exactly those bits where the one-pass formula could lose
// more (kernels.cc RowMomentsObs); the same on any thread count. Needed: x
// kept from the RSUM to the pass, and m and s as the MUL and the RSUM left
// them (their last writers; either may be forwarded into an output).
int Executable::FuseMoments(const bc::Stage& s, StageRt& rt) {
  if (s.mode != bc::Mode::kRow) return 0;
  const Handler dev = RowSumSqDevHandler();
  int fused = 0;
  const int b = rt.sec[bc::kBody], e = rt.sec[bc::kBody + 1];
  for (int k = b; k < e; ++k) {
    VInst& vk = rt.code[k];
    if (Body(vk) != dev) continue;
    const uint32_t x = vk.a, m = vk.b;
    const int jm = LastWriter(s, b, k, static_cast<int>(m));
    if (jm < b) continue;
    const bc::Inst& mul = s.insts[jm];
    VInst& vm = rt.code[jm];  // (a mean that is an output too runs forwarded into it: its Body is the MUL)
    if (bc::Opcode(mul.op) != bc::Opcode::MUL || DType(mul.type) != DType::kFloat32 || !(mul.flags & bc::kLevelRed) ||
        (mul.flags & bc::kFormMask) == bc::kFormRR || vm.fused || Body(vm) != SelectHandler(mul))
      continue;
    const int js = LastWriter(s, b, jm, mul.a);
    if (js < b) continue;
    const bc::Inst& sum = s.insts[js];
    VInst& vs = rt.code[js];
    if (bc::Opcode(sum.op) != bc::Opcode::RSUM || DType(sum.type) != DType::kFloat32 || sum.a != x || vs.fused ||
        Body(vs) != SelectHandler(sum) || !Kept(s, js + 1, k, {x}))
      continue;
    const int h = prog_.num_regs + fused;  // the stage's next register of the VM's own
    if (h >= kMaxRegs) continue;
    num_regs_ = std::max(num_regs_, h + 1);
    Body(vs) = RowMomentsHandler();
    vs.c = static_cast<uint32_t>(h);
    vs.kbits = vm.kbits;
    vs.fused = true;
    Body(vk) = CopyHandler();  // the reduced level's rows
    vk.a = static_cast<uint32_t>(h);
    vk.level = 1;
    ++fused;
  }
  return fused;
}

// COL stages whose body is only "LOAD r, v; WACC w, r" pairs (a column sum,
// max, min or product of f32 tensors) run each pair as one pass over all rows
// of the tile, column strips outermost (ColAccumulator), without a handler
// call and an accumulator round trip through memory per row. Max, min and
// product combine as a LOAD and a WACC per row would, in the same order;
// sums take blocks of eight rows pairwise in f32 first (ColSum8), so their
// bits differ from the per-row path's, but which path a tile takes depends
// only on the program and the tile, never on the thread count. Needed:
//  * no block_init / block_merge code (blocks then do not matter);
//  * f32 zero-copy views whose reduced rows are at a fixed stride: the full
//    dims split into [outer | R | C] and the R dims merge for the view;
//  * distinct accumulators, loaded registers not among them, and no post
//    instruction reading a loaded register before writing it (the pass does
//    not leave them set).
void Executable::SetupColFast(const bc::Stage& s, StageRt& rt) {
  if (s.mode != bc::Mode::kCol || s.sections[bc::kBlockInit] || s.sections[bc::kBlockMerge]) return;
  const int64_t R = s.p[0], C = s.p[1];
  // Split the full dims: trailing ones multiply to C, the ones before to R.
  int i = s.full_rank;
  int64_t prod = 1;
  while (i > 0 && prod < C) prod *= s.full_dims[--i];
  if (prod != C) return;
  int j = i;
  prod = 1;
  while (j > 0 && prod < R) prod *= s.full_dims[--j];
  if (prod != R || R < 1) return;
  const int body = rt.sec[bc::kBody], body_end = rt.sec[bc::kBody + 1];
  const int n = body_end - body;
  if (n == 0 || n % 2 || n / 2 > kMaxColPairs) return;
  std::vector<ColPair> pairs;
  std::vector<int> loaded, accs;
  for (int k = body; k < body_end; k += 2) {
    const bc::Inst& ld = s.insts[k];
    const bc::Inst& acc = s.insts[k + 1];
    if (bc::Opcode(ld.op) != bc::Opcode::LOAD || bc::Opcode(acc.op) != bc::Opcode::WACC) return;
    if (DType(ld.type) != DType::kFloat32 || DType(acc.type) != DType::kFloat32 || acc.a != ld.dst ||
        (ld.flags & bc::kLevelRed))
      return;
    const ViewRt& v = rt.views[ld.c];
    if (v.dtype != DType::kFloat32) return;
    // Row stride: the R dims (j..i) must merge for this view.
    int64_t rstride = 0, expect = -1;
    for (int d = i - 1; d >= j; --d) {
      if (s.full_dims[d] == 1) continue;
      if (expect < 0)
        rstride = v.strides[d];
      else if (v.strides[d] != expect)
        return;
      expect = v.strides[d] * s.full_dims[d];
    }
    ColPair cp;
    cp.view = ld.c;
    cp.acc = acc.dst;
    cp.rstride = rstride;
    cp.fn = ColAccumulator(acc.b);
    pairs.push_back(cp);
    loaded.push_back(ld.dst);
    accs.push_back(acc.dst);
  }
  for (size_t a = 0; a < accs.size(); ++a) {
    for (size_t b = a + 1; b < accs.size(); ++b)
      if (std::abs(accs[a] - accs[b]) <= 1) return;  // overlapping pairs
    for (int l : loaded)
      if (l == accs[a] || l == accs[a] + 1) return;
  }
  // Post: a loaded register must be written before it is read.
  for (int l : loaded)
    if (LiveIn(s, rt.sec[bc::kPost], rt.sec[bc::kPost + 1], l)) return;
  rt.col_fast = std::move(pairs);
}

// A LOAD of a view that repeats one row (stride 0 on every dim but the
// last: gamma, beta, a bias) in an ELEM or ROW stage whose tiles hold more
// than a row: every tile's lanes are then a window of the same expansion
// (the view's row, repeated). InvariantLoadHandler expands it once per
// thread and launch instead of gathering it every tile, so codegen can give
// such stages multi-row tiles (before, they ran one row per tile to read
// the row in place, paying the per-tile cost for every row: layernorm
// [128, 768] 28.7 -> 21.7 us at one thread with two-row tiles).
//
// Where every reader of the loaded value is a fused chain that takes it as
// its y or z operand, or a layernorm's affine pass in a ROW stage that
// takes it as gamma or beta, the readers walk the tile row by row (tiles
// may start and end inside rows) and read the row itself (ChainHandler's
// kind 3, NormAffineHandler's periodic g / b), and PeriodicLoadHandler
// points the register at the tensor's row (or at one gathered copy of
// it): no expansion, and the K lanes stay in L1 where a
// tile-long window shared it with the streams. A standalone model of
// bias + residual [64, 768] at one thread: 5.5-6.9 us with a 1536-lane
// window, 5.1-5.2 us reading the row (5.1-5.4 us hand-written), and
// 7.0-8.4 us with a 3072-lane window.
void Executable::FindInvariantLoads(const bc::Stage& s, StageRt& rt, std::vector<ChainSig>& chains) {
  int64_t T = 0;
  if (s.mode == bc::Mode::kElem)
    T = s.p[0];
  else if (s.mode == bc::Mode::kRow && s.p[2] == 0)
    T = s.p[0] * s.p[1];
  if (T <= 0 || T > prog_.tile_cap) return;
  for (size_t i = 0; i < rt.code.size(); ++i) {
    VInst& v = rt.code[i];
    if (v.fn != &LoadHandler || v.level != 0) continue;
    const ViewRt& view = rt.views[v.view];
    if (!bc::RowInvariant(view.dims, view.strides, view.rank)) continue;
    const int64_t K = view.dims[view.rank - 1];
    const int64_t E = std::min(T, rt.n_full);
    if (K <= 0 || K > T || E <= K) continue;
    const bool in_place = view.dtype == DType::kFloat32 && view.strides[view.rank - 1] == 1;
    if ((in_place || inv_loads_ < 32) && PeriodicReaders(s, rt, static_cast<int>(i), chains, false)) {
      PeriodicReaders(s, rt, static_cast<int>(i), chains, true);
      v.fn = &PeriodicLoadHandler;
      v.kbits = v.kbits2 = static_cast<uint32_t>(K);
      v.sub = in_place;
      if (!in_place) v.inv = static_cast<uint8_t>(++inv_loads_);
      ++periodic_loads_;
      continue;
    }
    if (inv_loads_ >= 32) continue;
    v.fn = &InvariantLoadHandler;
    v.kbits = static_cast<uint32_t>(E + K);
    v.kbits2 = static_cast<uint32_t>(K);
    v.inv = static_cast<uint8_t>(++inv_loads_);
  }
}

// Whether every reader of the value LOAD `load` writes (until its register
// is rewritten) is a fusion of `chains`, still as FuseBinaryChains made it:
// a chain that takes the value only as its y or z register operand, or an
// affine pass (ROW stages) that takes it only as g or b. With `apply`,
// those readers take it as a row-periodic operand instead (K = the load's
// row).
bool Executable::PeriodicReaders(const bc::Stage& s, StageRt& rt, int load, std::vector<ChainSig>& chains, bool apply) {
  const int r = s.insts[load].dst;
  int sec = 0;
  while (rt.sec[sec + 1] <= load) ++sec;
  const int e = rt.sec[sec + 1];
  int end = load + 1;
  while (end < e && !WritesReg(s.insts[end], r)) ++end;
  if (end == e && LiveIn(s, e, rt.sec[bc::kNumSections], r)) return false;  // read in a later section
  const ViewRt& view = rt.views[rt.code[load].view];
  const uint32_t K = static_cast<uint32_t>(view.dims[view.rank - 1]);
  bool any = false;
  for (int m = load + 1; m <= end && m < e; ++m) {  // the rewriting instruction may read it first
    if (!ReadsReg(s.insts[m], r)) continue;
    // The latest fusion that moved instruction m's reads (a layernorm's
    // affine pass takes over chains fused before it).
    auto sig = std::find_if(chains.rbegin(), chains.rend(), [&](const ChainSig& c) { return c.j == m || c.k == m; });
    if (sig == chains.rend()) return false;
    VInst& w = rt.code[sig->k];
    const uint32_t u = static_cast<uint32_t>(r);
    int affine = -1;  // NormAffineHandler(sub, pg, pb) as sub * 4 + pg * 2 + pb
    for (int i = 0; i < 8 && affine < 0; ++i)
      if (Body(w) == NormAffineHandler(i & 4, i & 2, i & 1)) affine = i;
    if (affine >= 0) {
      // g = R[kbits], b = R[kbits2]; whole rows only in ROW stages.
      if (s.mode != bc::Mode::kRow || w.a == u || w.b == u || w.c == u || (w.kbits != u && w.kbits2 != u)) return false;
      if (apply) Body(w) = NormAffineHandler(affine & 4, (affine & 2) || w.kbits == u, (affine & 1) || w.kbits2 == u);
      any = true;
      continue;
    }
    if (sig->op1 < 0 || Body(w) != ChainHandler(sig->op1, sig->op2, sig->y_kind, sig->z_kind, sig->z_first))
      return false;
    // x op1 y with x the row: y op1 x where op1 commutes (add, mul: the
    // same bits), else no.
    const bool swap = w.a == u && w.b != u && sig->y_kind == 0 && (sig->op1 == 0 || sig->op1 == 2);
    if (w.a == u && !swap) return false;
    if (swap && apply) std::swap(w.a, w.b);
    const bool y = sig->y_kind == 0 && (swap || w.b == u);
    const bool z = sig->z_kind == 0 && sig->op2 < 4 && w.c == u;
    if (!y && !z) return false;
    const int yk = y ? 3 : sig->y_kind, zk = z ? 3 : sig->z_kind;
    const Handler h = ChainHandler(sig->op1, sig->op2, yk, zk, sig->z_first);
    if (!h) return false;
    if (apply) {
      Body(w) = h;
      if (y) w.kbits = K;
      if (z) w.kbits2 = K;
      sig->y_kind = yk, sig->z_kind = zk;
    }
    any = true;
  }
  return any;
}

// Store forwarding: a STORE of a register whose value was computed by an
// earlier instruction of the same section lets that instruction write into
// the destination (see ForwardedHandler), when the tile allows it at run
// time. Loads never alias outputs, so nothing reads the destination early.
void Executable::ForwardStores(const bc::Stage& s, StageRt& rt) {
  for (int sec = 0; sec < bc::kNumSections; ++sec) {
    for (int i = rt.sec[sec]; i < rt.sec[sec + 1]; ++i) {
      VInst& st = rt.code[i];
      if (bc::Opcode(s.insts[i].op) != bc::Opcode::STORE || !rt.views[st.view].zero_copy) continue;
      for (int j = i - 1; j >= rt.sec[sec]; --j) {
        const bc::Inst& w = s.insts[j];
        const bc::Kind kind = bc::kOpInfo[w.op].kind;
        if (kind == bc::Kind::kStore) continue;
        if (w.dst != s.insts[i].a) continue;
        // The writer must be an ordinary handler at the store's level that
        // has not been forwarded already (LOAD may alias its input instead).
        if (kind == bc::Kind::kLoad || kind == bc::Kind::kWide || rt.code[j].fwd_view != kNoForward ||
            rt.code[j].level != st.level)
          break;
        rt.code[j].fn2 = rt.code[j].fn;
        rt.code[j].fn = &ForwardedHandler;
        rt.code[j].fwd_view = st.view;
        st.fwd_view = st.view;
        break;
      }
    }
  }
}

// An instruction W forwarded into an output's STORE (ForwardStores) that
// reads register A element for element, where A's writer P comes earlier in
// the section and A is read by nothing after W: P is forwarded into the
// same destination too, so A lives in the output's tile and W then runs in
// place there. The output's lines are then fetched (write-allocate) by P,
// overlapped with its arithmetic, instead of by W, which has little to hide
// a store stall behind: a softmax [2048, 4096] (rows of one tile) computes
// exp(x - max) and its sum, then divides; the division pass was bound by
// its stores to memory. Both instructions bind the same target for a tile
// (or neither: ForwardTarget depends only on the view and the tile). Needs:
// W elementwise with 32-bit operands at the full level; P an ordinary
// instruction at the same level, not forwarded itself; no instruction
// between them storing into the output's tensor; the output addressed by
// no other view of the program and no workspace living in it.
int Executable::ForwardProducers(const bc::Stage& s, StageRt& rt) {
  if (s.mode != bc::Mode::kRow && s.mode != bc::Mode::kElem) return 0;
  int n = 0;
  for (int sec = 0; sec < bc::kNumSections; ++sec) {
    const int b = rt.sec[sec], e = rt.sec[sec + 1];
    for (int w = b; w < e; ++w) {
      VInst& vw = rt.code[w];
      const bc::Inst& iw = s.insts[w];
      const bc::Kind kw = bc::kOpInfo[iw.op].kind;
      if (vw.fn != &ForwardedHandler || vw.level != 0 || DTypeSize(DType(iw.type)) != 4) continue;
      if (kw != bc::Kind::kUn && kw != bc::Kind::kBin && kw != bc::Kind::kSel) continue;
      const int a = iw.a;
      if (a == static_cast<int>(iw.dst) || LiveIn(s, w + 1, e, a)) continue;
      const int p = LastWriter(s, b, w, a);
      if (p < b) continue;
      VInst& vp = rt.code[p];
      const bc::Kind kp = bc::kOpInfo[s.insts[p].op].kind;
      if (vp.fn == &NopHandler || vp.fn == &ChainProgramHandler || vp.fwd_view != kNoForward || vp.level != 0 ||
          kp == bc::Kind::kLoad || kp == bc::Kind::kStore || kp == bc::Kind::kWide || kp == bc::Kind::kRed ||
          kp == bc::Kind::kBcast || DTypeSize(DType(s.insts[p].type)) != 4)
        continue;
      const uint16_t tensor = rt.views[vw.fwd_view].tensor;
      if (prog_.tensors[tensor].kind != bc::TensorKind::kOutput) continue;
      bool ok = std::none_of(aliases_.begin(), aliases_.end(), [&](const auto& al) { return al.second == tensor; });
      int views = 0;
      for (const StageRt& st : stages_)
        for (const ViewRt& v : st.views) views += v.tensor == tensor;
      for (const bc::Stage& st : prog_.stages)
        if (st.mode == bc::Mode::kGemm && (st.gemm.a == tensor || st.gemm.b == tensor || st.gemm.c == tensor))
          ok = false;
      for (int k = p + 1; k < w && ok; ++k)
        if (bc::kOpInfo[s.insts[k].op].kind == bc::Kind::kStore || rt.code[k].fwd_view != kNoForward) ok = false;
      if (!ok || views != 1) continue;
      vp.fn2 = vp.fn;
      vp.fn = &ForwardedHandler;
      vp.fwd_view = vw.fwd_view;
      ++n;
    }
  }
  return n;
}

// The launch plan: row groups (run row by row when the rows keep every
// thread busy, else stage by stage: the same tiles, so the same bits) and
// groups of concurrent stages, each with the threads it wakes. Work counts
// lane-instructions of the bytecode (StageRt::insts), a GEMM by its
// multiply-adds; below ~64K of them (a few microseconds) a wake-up of the
// pool costs more than it saves, so a small group runs on the caller.
void Executable::Plan(int nthreads, std::vector<LaunchGroup>& plan) const {
  constexpr int64_t kMinParallelWork = 64 * 1024;  // lane-instructions
  plan.clear();
  auto work_of = [](const StageRt& s) {
    return s.mode == bc::Mode::kGemm ? s.n_full * std::max<int64_t>(s.p[2], 1) : (s.n_full + s.n_red) * s.insts;
  };
  for (size_t i = 0; i < stages_.size();) {
    if (stages_[i].group_rows > 0 && !stages_[i].row_join && i + 1 < stages_.size() && stages_[i + 1].row_join) {
      const int64_t R = stages_[i].group_rows;
      size_t j = i + 1;
      while (j < stages_.size() && stages_[j].row_join) ++j;
      if (nthreads == 1 || R >= 4 * nthreads || R % nthreads == 0) {
        int64_t work = 0;
        for (size_t k = i; k < j; ++k) work += work_of(stages_[k]);
        const int threads = work < kMinParallelWork ? 1 : static_cast<int>(std::min<int64_t>(nthreads, R));
        plan.push_back({i, j, threads, true});
        i = j;
        continue;
      }
    }
    int64_t work = 0, ntiles = 0;
    size_t j = i;
    do {
      if (stages_[j].ntiles > 0) {
        work += work_of(stages_[j]);
        ntiles += stages_[j].ntiles;
      }
      ++j;
    } while (j < stages_.size() && stages_[j].concurrent);
    if (ntiles > 0) {
      const bool small = work < kMinParallelWork || ntiles < 2;
      plan.push_back({i, j, small ? 1 : static_cast<int>(std::min<int64_t>(nthreads, ntiles)), false});
    }
    i = j;
  }
}

const Executable::Launches& Executable::MakeLaunches(int nthreads) const {
  std::lock_guard<std::mutex> lock(launches_mu_);
  for (const auto& made : launches_made_)
    if (made->nthreads == nthreads) {
      launches_.store(made.get(), std::memory_order_release);
      return *made;
    }
  auto l = std::make_unique<Launches>();
  l->nthreads = nthreads;
  Plan(nthreads, l->plan);
  for (const LaunchGroup& g : l->plan) {
    Launches::Group& group = l->groups.emplace_back();
    if (g.row_group) continue;
    group.first.assign(1, 0);
    int64_t elems = 0;
    for (size_t k = g.begin; k < g.end; ++k) {
      const StageRt& s = stages_[k];
      if (s.ntiles <= 0) continue;
      group.stages.push_back(&s);
      group.first.push_back(group.first.back() + s.ntiles);
      elems += s.n_full + s.n_red;
    }
    const int64_t ntiles = group.first.back();
    const int64_t per_tile = std::max<int64_t>(1, elems / ntiles);
    group.grain = std::min<int64_t>(ntiles / (g.threads * 8), 16384 / per_tile + 1);
  }
  const Launches* made = launches_made_.emplace_back(std::move(l)).get();
  launches_.store(made, std::memory_order_release);
  return *made;
}

void Executable::Run(void* const* ptrs) const {
  if (!native_done_.load(std::memory_order_relaxed)) CompileNativePrograms();
  const size_t scratch = size_t(num_regs_) * prog_.tile_cap * 4;
  ThreadPool& pool = ThreadPool::Get();
  const OneThreadBlas blas_threads(gemm_);
  // Reused per thread: no allocation on the launch path.
  thread_local std::vector<void*> aliased;
  if (!aliases_.empty()) {  // workspaces that live in an output (SetupOutputAliases)
    aliased.assign(ptrs, ptrs + prog_.tensors.size());
    for (const auto& [w, o] : aliases_) aliased[w] = aliased[o];
    ptrs = aliased.data();
  }
  const Launches& launches = LaunchesFor(pool.num_threads());
  auto bind = [&](JobBase& job) {
    job.ptrs = ptrs;
    job.scratch_bytes = scratch;
    job.slot_bytes = size_t(prog_.tile_cap) * 4;
    job.inv_bytes = size_t(inv_loads_) * InvSlotBytes(job.slot_bytes);
    job.num_regs = num_regs_;
  };
  for (size_t gi = 0; gi < launches.plan.size(); ++gi) {
    const LaunchGroup& g = launches.plan[gi];
    if (g.row_group) {
      RowGroupJob job;
      job.stages = stages_.data() + g.begin;
      job.nstages = static_cast<int>(g.end - g.begin);
      job.rows = stages_[g.begin].group_rows;
      job.ntensors = prog_.tensors.size();
      bind(job);
      // One row at a time: a long row is ~10 us of work per thread, so a
      // claim (one atomic add) costs nothing, while claims of rows / (4 x
      // threads) rows left the threads up to a claim apart at the end
      // (layernorm [64, 32768], 2 threads, 8 rows a claim: the one thread
      // ended 10-140 k TSC cycles, 4-54 us, before the other per launch;
      // one row a claim: 1-10 k).
      job.work.Init(job.rows, g.threads, 1);
      if (g.threads <= 1)
        RunRowGroupJob(&job, 0);
      else
        pool.Run(g.threads, &RunRowGroupJob, &job);
      continue;
    }
    // A group: this stage and the concurrent ones after it.
    const Launches::Group& group = launches.groups[gi];
    StageJob job;
    job.stages = group.stages.data();
    job.first = group.first.data();
    job.nstages = static_cast<int>(group.stages.size());
    bind(job);
    job.work.Init(group.first.back(), g.threads, group.grain);
    if (g.threads <= 1)
      RunStageJob(&job, 0);
    else
      pool.Run(g.threads, &RunStageJob, &job);
  }
}

}  // namespace dvm::vm
