// Bytecode encoder (the layout is documented in docs/bytecode.md).
#include <algorithm>
#include <cstring>

#include "bytecode/format.h"
#include "ir/error.h"

namespace dvm::bc {

int64_t FullElems(const Stage& s) {
  int64_t n = 1;
  for (int i = 0; i < s.full_rank; ++i) n *= s.full_dims[i];
  return n;
}
int64_t RedElems(const Stage& s) {
  int64_t n = 1;
  for (int i = 0; i < s.red_rank; ++i) n *= s.red_dims[i];
  return n;
}

bool RowInvariant(const int64_t* dims, const int64_t* strides, int rank) {
  if (rank < 2 || strides[rank - 1] == 0) return false;
  for (int i = 0; i < rank - 1; ++i)
    if (dims[i] != 1 && strides[i] != 0) return false;
  return true;
}

bool SlabLocal(const int64_t* dims, const int64_t* strides, size_t rank, int64_t offset, int64_t R, int64_t slab) {
  int64_t od[kMaxRank + 1], os[kMaxRank + 1];
  int no = 0;
  int64_t P = 1, hi = offset;
  for (size_t i = 0; i < rank; ++i) {
    int64_t d = dims[i], st = strides[i];
    if (d == 0) return true;  // empty: touches nothing
    if (P < R && d > 1) {
      const int64_t q = R / P;  // the part of d that is outer
      if (R % P != 0 || (d < q ? q % d != 0 : d % q != 0)) return false;
      const int64_t outer = std::min(d, q);
      od[no] = outer, os[no] = st * (d / outer), ++no;
      P *= outer;
      d /= outer;
    }
    hi += (d - 1) * st;
  }
  if (P != R || offset < 0 || hi >= slab) return false;
  int64_t expect = slab;
  for (int k = no - 1; k >= 0; --k) {
    if (os[k] != expect) return false;
    expect *= od[k];
  }
  return true;
}

namespace {

struct Writer {
  std::vector<uint8_t>& out;
  template <typename T>
  void Put(T v) {
    size_t at = out.size();
    out.resize(at + sizeof(T));
    std::memcpy(out.data() + at, &v, sizeof(T));
  }
  void PutAt(size_t at, uint32_t v) { std::memcpy(out.data() + at, &v, 4); }
};

void Check(bool ok, const char* what) {
  if (!ok) Fail("bytecode encoder: ", what, " out of range");
}

}  // namespace

void Encode(const Program& p, std::vector<uint8_t>& out) {
  Check(p.tensors.size() <= 0xffff, "tensor count");
  Check(p.consts.size() <= 0xffff, "constant count");
  Check(p.stages.size() <= 0xffff, "stage count");
  Check(p.num_regs <= 255, "register count");
  out.clear();
  Writer w{out};
  w.Put<uint32_t>(kMagic);
  w.Put<uint16_t>(kVersion);
  w.Put<uint16_t>(32);
  w.Put<uint32_t>(0);  // total size, patched below
  w.Put<uint16_t>(static_cast<uint16_t>(p.tensors.size()));
  w.Put<uint16_t>(static_cast<uint16_t>(p.consts.size()));
  w.Put<uint16_t>(static_cast<uint16_t>(p.stages.size()));
  w.Put<uint16_t>(p.num_regs);
  w.Put<uint32_t>(p.tile_cap);
  w.Put<uint64_t>(0);
  for (const TensorDesc& t : p.tensors) {
    w.Put<uint8_t>(static_cast<uint8_t>(t.dtype));
    w.Put<uint8_t>(static_cast<uint8_t>(t.kind));
    w.Put<uint16_t>(t.slot);
    w.Put<uint32_t>(0);
    w.Put<int64_t>(t.numel);
  }
  for (const Const& c : p.consts) {
    w.Put<uint8_t>(static_cast<uint8_t>(c.dtype));
    w.Put<uint8_t>(0);
    w.Put<uint16_t>(0);
    w.Put<uint32_t>(c.bits);
  }
  for (const Stage& s : p.stages) {
    Check(s.views.size() <= 0xffff, "view count");
    Check(s.insts.size() <= 0xffff, "instruction count");
    w.Put<uint8_t>(static_cast<uint8_t>(s.mode));
    w.Put<uint8_t>(s.full_rank);
    w.Put<uint8_t>(s.red_rank);
    w.Put<uint8_t>(static_cast<uint8_t>((s.concurrent ? 1 : 0) | (s.row_join ? 2 : 0)));
    w.Put<uint16_t>(static_cast<uint16_t>(s.views.size()));
    w.Put<uint16_t>(static_cast<uint16_t>(s.insts.size()));
    for (uint16_t n : s.sections) w.Put<uint16_t>(n);
    w.Put<uint16_t>(s.group_rows);
    for (int64_t v : s.p) w.Put<int64_t>(v);
    for (int i = 0; i < s.full_rank; ++i) w.Put<int64_t>(s.full_dims[i]);
    for (int i = 0; i < s.red_rank; ++i) w.Put<int64_t>(s.red_dims[i]);
    if (s.mode == Mode::kGemm) {
      const Gemm& g = s.gemm;
      Check(g.batch_rank <= kMaxBatchRank, "batch rank");
      w.Put<uint16_t>(g.a);
      w.Put<uint16_t>(g.b);
      w.Put<uint16_t>(g.c);
      w.Put<uint8_t>(g.trans_a);
      w.Put<uint8_t>(g.trans_b);
      w.Put<uint8_t>(g.batch_rank);
      for (int i = 0; i < 7; ++i) w.Put<uint8_t>(0);
      for (int64_t v : {g.a_off, g.b_off, g.lda, g.ldb, g.tile_rows, g.tile_cols, g.body_tile}) w.Put<int64_t>(v);
      for (int i = 0; i < g.batch_rank; ++i) w.Put<int64_t>(g.bdims[i]);
      for (int i = 0; i < g.batch_rank; ++i) w.Put<int64_t>(g.a_bs[i]);
      for (int i = 0; i < g.batch_rank; ++i) w.Put<int64_t>(g.b_bs[i]);
    }
    for (const View& v : s.views) {
      w.Put<uint16_t>(v.tensor);
      w.Put<uint8_t>(static_cast<uint8_t>(v.level));
      w.Put<uint8_t>(0);
      w.Put<uint32_t>(0);
      w.Put<int64_t>(v.offset);
      int rank = v.level == Level::kFull ? s.full_rank : s.red_rank;
      for (int i = 0; i < rank; ++i) w.Put<int64_t>(v.strides[i]);
    }
    size_t at = out.size();
    out.resize(at + 8 * s.insts.size());
    if (!s.insts.empty()) std::memcpy(out.data() + at, s.insts.data(), 8 * s.insts.size());
  }
  w.PutAt(8, static_cast<uint32_t>(out.size()));
}

}  // namespace dvm::bc
