// Bytecode parser and verifier.
//
// Contract: a program that verifies cannot make the VM read or write outside
// its tensors (of the declared element counts), its registers or its
// constant pool, nor divide by zero or loop forever. Every check names the
// byte offset of the field it rejects and the rule, e.g.
//   "bytecode offset 120: view outside tensor: view 2 of stage 0 reaches
//    element 4096 of tensor 1 (4096 elements)".
// The checks mirror the decoder one to one; tests/verifier_test.cc has one
// negative test per rule.
#include <cstring>

#include "bytecode/format.h"
#include "ir/error.h"

namespace dvm::bc {
namespace {

constexpr int64_t kMaxElems = int64_t{1} << 48;
constexpr uint64_t kMaxScratchBytes = uint64_t{1} << 30;

struct Reader {
  std::span<const uint8_t> b;
  size_t pos = 0;
  template <typename T>
  T Get(const char* field) {
    if (b.size() - pos < sizeof(T) || pos > b.size())
      Fail("bytecode offset ", pos, ": truncated: ", field, " needs ", sizeof(T), " bytes, ",
           b.size() - std::min(pos, b.size()), " left");
    T v;
    std::memcpy(&v, b.data() + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
};

[[noreturn]] void Bad(size_t off, const char* rule, const std::string& detail) {
  Fail("bytecode offset ", off, ": ", rule, ": ", detail);
}

template <typename... A>
std::string Str(A&&... a) {
  std::ostringstream os;
  (os << ... << a);
  return os.str();
}

bool ValidDType(uint8_t d) { return d < kNumDTypes; }
bool FloatType(DType t) { return t == DType::kFloat32 || t == DType::kFloat16 || t == DType::kBFloat16; }

bool TypeAllowed(TypeClass c, DType t) {
  switch (c) {
    case TypeClass::F:
      return FloatType(t);
    case TypeClass::N:
      return t != DType::kBool;
    case TypeClass::A:
      return true;
    case TypeClass::B:
      return t == DType::kBool;
  }
  return false;
}

// A tensor holds values of `type`: the same dtype, or f16/bf16 values kept
// unrounded in an f32 workspace.
bool StorageMatches(const TensorDesc& t, DType type) {
  if (t.dtype == type) return true;
  return t.kind == TensorKind::kWorkspace && t.dtype == DType::kFloat32 && FloatType(type);
}

// Register state tracked by the dataflow check.
struct RegState {
  bool defined = false;
  DType dtype = DType::kFloat32;
  Level level = Level::kFull;
  bool wide = false;  // first register of an f64 accumulator pair
};

void VerifyStage(const Program& p, const Stage& s, size_t stage_no, size_t inst_off) {
  // Register dataflow in execution order of the sections.
  std::vector<RegState> regs(p.num_regs);
  size_t idx = 0;
  bool col = s.mode == Mode::kCol;
  for (int sec = 0; sec < kNumSections; ++sec) {
    for (int k = 0; k < s.sections[sec]; ++k, ++idx) {
      const Inst& in = s.insts[idx];
      size_t off = inst_off + 8 * idx;
      auto where = [&] { return Str("stage ", stage_no, " instruction ", idx); };
      if (in.op >= kNumOpcodes) Bad(off, "unknown opcode", Str(where(), " has opcode ", int(in.op)));
      const OpInfo& info = kOpInfo[in.op];
      if (!ValidDType(in.type)) Bad(off + 1, "bad dtype", Str(where(), " (", info.name, ") type ", int(in.type)));
      DType type = DType(in.type);
      uint8_t src_raw = (in.flags & kSrcMask) >> kSrcShift;
      if (!ValidDType(src_raw))
        Bad(off + 5, "bad dtype", Str(where(), " (", info.name, ") operand dtype ", int(src_raw)));
      DType src = DType(src_raw);
      Level lvl = (in.flags & kLevelRed) ? Level::kRed : Level::kFull;
      uint8_t form = in.flags & kFormMask;
      if ((in.flags & 0x60) != 0 || form == 3)
        Bad(off + 5, "bad flags", Str(where(), " (", info.name, ") flags ", int(in.flags)));
      if (form != kFormRR && info.kind != Kind::kBin)
        Bad(off + 5, "bad flags", Str(where(), " (", info.name, ") scalar form on a non-binary op"));
      if (lvl == Level::kRed && (s.mode == Mode::kElem || s.mode == Mode::kGemm))
        Bad(off + 5, "bad level",
            Str(where(), " (", info.name, ") reduced level in an ", s.mode == Mode::kElem ? "ELEM" : "GEMM", " stage"));
      // The type class applies to the result for B ops, to the operands otherwise.
      DType checked = info.types == TypeClass::B ? src : type;
      if (info.types == TypeClass::B ? type != DType::kBool : !TypeAllowed(info.types, checked))
        Bad(off + 1, "dtype not allowed", Str(where(), " (", info.name, ") on ", DTypeName(checked)));
      if (info.kind != Kind::kLoad && info.kind != Kind::kFill && info.kind != Kind::kStore &&
          info.types != TypeClass::B && info.kind != Kind::kCast && src != type)
        Bad(off + 5, "dtype mismatch",
            Str(where(), " (", info.name, ") operand ", DTypeName(src), " result ", DTypeName(type)));
      auto reg = [&](uint8_t r, size_t at) -> RegState& {
        if (r >= p.num_regs)
          Bad(at, "register out of range", Str(where(), " (", info.name, ") uses r", int(r), " of ", p.num_regs));
        return regs[r];
      };
      auto use = [&](uint8_t r, size_t at, DType want, Level want_lvl) {
        RegState& st = reg(r, at);
        if (!st.defined) Bad(at, "register read before write", Str(where(), " (", info.name, ") reads r", int(r)));
        if (st.wide)
          Bad(at, "wide register misuse", Str(where(), " (", info.name, ") reads wide r", int(r), " as a tile"));
        if (st.dtype != want)
          Bad(at, "operand dtype mismatch",
              Str(where(), " (", info.name, ") reads r", int(r), " holding ", DTypeName(st.dtype), ", expects ",
                  DTypeName(want)));
        if (!col && st.level != want_lvl)
          Bad(at, "operand level mismatch",
              Str(where(), " (", info.name, ") reads r", int(r), " at the wrong tile level"));
      };
      auto def = [&](uint8_t r, DType t, Level l) {
        RegState& st = reg(r, off + 2);
        st = {true, t, l, false};
        if (r > 0 && regs[r - 1].wide) regs[r - 1].defined = false;  // clobbers a wide pair
      };
      auto wide = [&](uint8_t r, size_t at) -> RegState& {
        if (r + 1 >= p.num_regs)
          Bad(at, "register out of range",
              Str(where(), " (", info.name, ") wide r", int(r), " needs r", r + 1, " of ", p.num_regs));
        return regs[r];
      };
      auto view = [&](Level want) -> const View& {
        if (in.c >= s.views.size())
          Bad(off + 6, "view out of range",
              Str(where(), " (", info.name, ") uses view ", in.c, " of ", s.views.size()));
        const View& v = s.views[in.c];
        if (v.level != want) Bad(off + 6, "view level mismatch", Str(where(), " (", info.name, ") view ", in.c));
        return v;
      };
      // COL stages run tile_init/post even when R = 0 (an empty full
      // domain whose views were not bounds-checked): full-level memory
      // access belongs in the per-row sections only.
      if (col && lvl == Level::kFull && (info.kind == Kind::kLoad || info.kind == Kind::kStore) &&
          (sec == kTileInit || sec == kPost))
        Bad(off + 5, "bad level", Str(where(), " (", info.name, ") full-level access outside the row loop"));
      switch (info.kind) {
        case Kind::kLoad: {
          const View& v = view(lvl);
          if (!StorageMatches(p.tensors[v.tensor], type))
            Bad(off + 1, "dtype mismatch",
                Str(where(), " (LOAD) of ", DTypeName(p.tensors[v.tensor].dtype), " tensor as ", DTypeName(type)));
          def(in.dst, type, lvl);
          break;
        }
        case Kind::kStore: {
          const View& v = view(lvl);
          const TensorDesc& t = p.tensors[v.tensor];
          if (t.kind == TensorKind::kInput)
            Bad(off + 6, "store to input", Str(where(), " (STORE) writes input tensor ", v.tensor));
          if (!StorageMatches(t, type))
            Bad(off + 1, "dtype mismatch",
                Str(where(), " (STORE) of ", DTypeName(type), " into ", DTypeName(t.dtype), " tensor"));
          use(in.a, off + 3, type, lvl);
          break;
        }
        case Kind::kFill:
          if (in.c >= p.consts.size())
            Bad(off + 6, "constant out of range", Str(where(), " (FILL) uses K", in.c, " of ", p.consts.size()));
          if (p.consts[in.c].dtype != type) Bad(off + 6, "constant dtype mismatch", Str(where(), " (FILL) K", in.c));
          def(in.dst, type, lvl);
          break;
        case Kind::kUn:
        case Kind::kCast:
          use(in.a, off + 3, src, lvl);
          def(in.dst, type, lvl);
          break;
        case Kind::kBin: {
          auto operand_const = [&] {
            if (in.c >= p.consts.size())
              Bad(off + 6, "constant out of range",
                  Str(where(), " (", info.name, ") uses K", in.c, " of ", p.consts.size()));
            if (p.consts[in.c].dtype != src)
              Bad(off + 6, "constant dtype mismatch", Str(where(), " (", info.name, ") K", in.c));
          };
          use(in.a, off + 3, src, lvl);
          if (form == kFormRR)
            use(in.b, off + 4, src, lvl);
          else
            operand_const();
          def(in.dst, type, lvl);
          break;
        }
        case Kind::kSel:
          if (in.c >= 256) Bad(off + 6, "register out of range", Str(where(), " (SELECT) uses r", in.c));
          use(in.a, off + 3, DType::kBool, lvl);
          use(in.b, off + 4, type, lvl);
          use(static_cast<uint8_t>(in.c), off + 6, type, lvl);
          def(in.dst, type, lvl);
          break;
        case Kind::kWide: {
          if (s.mode != Mode::kCol) Bad(off, "bad mode", Str(where(), " (", info.name, ") outside a COL stage"));
          if (in.b > 3) Bad(off + 4, "bad reduce op", Str(where(), " (", info.name, ") op ", int(in.b)));
          if (Opcode(in.op) == Opcode::WNARROW) {
            RegState& w = wide(in.a, off + 3);
            if (!w.defined || !w.wide || w.dtype != type)
              Bad(off + 3, "wide register misuse", Str(where(), " (WNARROW) reads r", int(in.a)));
            def(in.dst, type, lvl);
          } else {
            RegState& w = wide(in.dst, off + 2);
            if (Opcode(in.op) == Opcode::WACC) {
              if (!w.defined || !w.wide || w.dtype != type)
                Bad(off + 2, "wide register misuse", Str(where(), " (WACC) accumulates into r", int(in.dst)));
              use(in.a, off + 3, type, lvl);
            }
            w = {true, type, lvl, true};
            regs[in.dst + 1].defined = false;
          }
          break;
        }
        case Kind::kRed:
        case Kind::kBcast: {
          if (s.mode != Mode::kRow) Bad(off, "bad mode", Str(where(), " (", info.name, ") outside a ROW stage"));
          bool red = info.kind == Kind::kRed;
          if (lvl != (red ? Level::kRed : Level::kFull))
            Bad(off + 5, "bad level", Str(where(), " (", info.name, ") result level"));
          use(in.a, off + 3, type, red ? Level::kFull : Level::kRed);
          if (in.dst == in.a)
            Bad(off + 2, "aliased operands", Str(where(), " (", info.name, ") may not write its operand"));
          def(in.dst, type, lvl);
          break;
        }
      }
    }
  }
}

// The GEMM block: operand tensors and bounds of every element the BLAS call
// can touch, for any batch entry.
void ParseGemm(Reader& r, const Program& p, Stage& s, size_t si, int64_t n_full) {
  Gemm& g = s.gemm;
  const size_t off = r.pos;
  g.a = r.Get<uint16_t>("gemm A");
  g.b = r.Get<uint16_t>("gemm B");
  g.c = r.Get<uint16_t>("gemm C");
  g.trans_a = r.Get<uint8_t>("gemm trans_a");
  g.trans_b = r.Get<uint8_t>("gemm trans_b");
  g.batch_rank = r.Get<uint8_t>("gemm batch rank");
  for (int i = 0; i < 7; ++i)
    if (r.Get<uint8_t>("reserved") != 0) Bad(r.pos - 1, "reserved field not zero", Str("stage ", si, " gemm"));
  int64_t* fields[] = {&g.a_off, &g.b_off, &g.lda, &g.ldb, &g.tile_rows, &g.tile_cols, &g.body_tile};
  for (int64_t* f : fields) *f = r.Get<int64_t>("gemm field");
  const size_t noff = p.tensors.size();
  if (g.a >= noff || g.b >= noff || g.c >= noff)
    Bad(off, "tensor out of range", Str("stage ", si, " gemm operands ", g.a, ", ", g.b, ", ", g.c, " of ", noff));
  if (g.trans_a > 1 || g.trans_b > 1 || g.batch_rank > kMaxBatchRank)
    Bad(off + 6, "bad gemm flags",
        Str("stage ", si, " trans ", int(g.trans_a), int(g.trans_b), " batch rank ", int(g.batch_rank)));
  for (uint16_t t : {g.a, g.b, g.c})
    if (p.tensors[t].dtype != DType::kFloat32)
      Bad(off, "dtype mismatch", Str("stage ", si, " gemm operand tensor ", t, " is not f32"));
  if (p.tensors[g.c].kind == TensorKind::kInput)
    Bad(off + 4, "store to input", Str("stage ", si, " gemm writes input tensor ", g.c));
  int64_t batch = 1;
  auto dims = [&](int64_t* d, const char* what) {
    for (int i = 0; i < g.batch_rank; ++i) {
      d[i] = r.Get<int64_t>(what);
      if (d[i] < 0 || d[i] > kMaxElems)
        Bad(r.pos - 8, "dim out of range", Str("stage ", si, " gemm ", what, " ", d[i]));
    }
  };
  dims(g.bdims, "batch dim");
  dims(g.a_bs, "A batch stride");
  dims(g.b_bs, "B batch stride");
  for (int i = 0; i < g.batch_rank; ++i) {
    if (g.bdims[i] > 0 && batch > kMaxElems / g.bdims[i])
      Bad(off, "dim out of range", Str("stage ", si, " gemm batch"));
    batch *= g.bdims[i];
  }
  const int64_t M = s.p[0], N = s.p[1], K = s.p[2];
  const int64_t cap = p.tile_cap;
  if (M < 0 || N < 0 || K < 0 || M > kMaxElems || N > kMaxElems || K > kMaxElems)
    Bad(off - 32, "bad gemm geometry", Str("stage ", si, " M=", M, " N=", N, " K=", K));
  if ((M > 0 && N > kMaxElems / M) || (M * N > 0 && batch > kMaxElems / (M * N)) || batch * M * N != n_full)
    Bad(off - 32, "bad gemm geometry", Str("stage ", si, " batch*M*N differs from the domain (", n_full, ")"));
  if (g.tile_rows < 1 || g.tile_cols < 1 || g.body_tile < 1 || g.body_tile > cap)
    Bad(off + 16, "bad gemm tiling", Str("stage ", si, " tile ", g.tile_rows, "x", g.tile_cols, " body ", g.body_tile));
  auto check = [&](uint16_t t, int64_t o, int64_t ld, const int64_t* bs, int64_t rows, int64_t cols, const char* name) {
    if (batch == 0 || rows == 0 || cols == 0) return;
    if (o < 0 || ld < cols || ld > kMaxElems)
      Bad(off + 16, "bad gemm operand", Str("stage ", si, " ", name, " offset ", o, " ld ", ld, " cols ", cols));
    __int128 hi = o + __int128(rows - 1) * ld + (cols - 1);
    for (int i = 0; i < g.batch_rank; ++i) hi += __int128(g.bdims[i] > 0 ? g.bdims[i] - 1 : 0) * bs[i];
    if (hi >= p.tensors[t].numel)
      Bad(off + 16, "view outside tensor",
          Str("stage ", si, " gemm ", name, " reaches element ", static_cast<int64_t>(hi), " of tensor ", t, " (",
              p.tensors[t].numel, " elements)"));
  };
  check(g.a, g.a_off, g.lda, g.a_bs, g.trans_a ? K : M, g.trans_a ? M : K, "A");
  check(g.b, g.b_off, g.ldb, g.b_bs, g.trans_b ? N : K, g.trans_b ? K : N, "B");
  if (n_full > p.tensors[g.c].numel)
    Bad(off + 4, "view outside tensor", Str("stage ", si, " gemm C needs ", n_full, " elements of tensor ", g.c));
}

}  // namespace

void Parse(std::span<const uint8_t> bytes, Program& p) {
  Reader r{bytes};
  if (bytes.size() < 32) Bad(0, "truncated", Str("header needs 32 bytes, got ", bytes.size()));
  if (r.Get<uint32_t>("magic") != kMagic) Bad(0, "bad magic", "not DVM bytecode");
  uint16_t version = r.Get<uint16_t>("version");
  if (version != kVersion) Bad(4, "unsupported version", Str("version ", version, ", expected ", kVersion));
  if (r.Get<uint16_t>("header size") != 32) Bad(6, "bad header size", "expected 32");
  uint32_t total = r.Get<uint32_t>("total size");
  if (total != bytes.size()) Bad(8, "size mismatch", Str("header says ", total, " bytes, buffer has ", bytes.size()));
  uint16_t nt = r.Get<uint16_t>("tensor count");
  uint16_t nc = r.Get<uint16_t>("constant count");
  uint16_t ns = r.Get<uint16_t>("stage count");
  p.num_regs = r.Get<uint16_t>("register count");
  p.tile_cap = r.Get<uint32_t>("tile capacity");
  if (p.num_regs < 1 || p.num_regs > 255) Bad(18, "register count out of range", Str(p.num_regs, " (1..255)"));
  if (p.tile_cap < 16 || p.tile_cap > (1u << 26) || p.tile_cap % 16 != 0)
    Bad(20, "tile capacity out of range", Str(p.tile_cap, " (16..2^26, a multiple of 16)"));
  if (uint64_t(p.num_regs) * p.tile_cap * 4 > kMaxScratchBytes)
    Bad(18, "scratch too large", Str(p.num_regs, " registers of ", p.tile_cap, " lanes"));
  if (r.Get<uint64_t>("reserved") != 0) Bad(24, "reserved field not zero", "header");

  p.tensors.resize(nt);
  for (int i = 0; i < nt; ++i) {
    size_t off = r.pos;
    TensorDesc& t = p.tensors[i];
    uint8_t dt = r.Get<uint8_t>("tensor dtype");
    uint8_t kind = r.Get<uint8_t>("tensor kind");
    t.slot = r.Get<uint16_t>("tensor slot");
    r.Get<uint32_t>("reserved");
    t.numel = r.Get<int64_t>("tensor size");
    if (!ValidDType(dt)) Bad(off, "bad dtype", Str("tensor ", i, " dtype ", int(dt)));
    if (kind > 2) Bad(off + 1, "bad tensor kind", Str("tensor ", i, " kind ", int(kind)));
    if (t.numel < 0 || t.numel > kMaxElems)
      Bad(off + 8, "tensor size out of range", Str("tensor ", i, " has ", t.numel, " elements"));
    t.dtype = DType(dt);
    t.kind = TensorKind(kind);
  }
  p.consts.resize(nc);
  for (int i = 0; i < nc; ++i) {
    size_t off = r.pos;
    uint8_t dt = r.Get<uint8_t>("constant dtype");
    r.Get<uint8_t>("reserved");
    r.Get<uint16_t>("reserved");
    p.consts[i].bits = r.Get<uint32_t>("constant value");
    if (!ValidDType(dt)) Bad(off, "bad dtype", Str("constant ", i, " dtype ", int(dt)));
    p.consts[i].dtype = DType(dt);
  }
  p.stages.resize(ns);
  for (int si = 0; si < ns; ++si) {
    Stage& s = p.stages[si];
    size_t soff = r.pos;
    uint8_t mode = r.Get<uint8_t>("stage mode");
    s.full_rank = r.Get<uint8_t>("full rank");
    s.red_rank = r.Get<uint8_t>("reduced rank");
    const uint8_t sflags = r.Get<uint8_t>("stage flags");
    if (sflags > 2 || (sflags && si == 0)) Bad(soff + 3, "bad stage flags", Str("stage ", si, " flags ", int(sflags)));
    s.concurrent = sflags & 1;
    s.row_join = sflags & 2;
    uint16_t nv = r.Get<uint16_t>("view count");
    uint16_t ni = r.Get<uint16_t>("instruction count");
    int sum = 0;
    for (auto& sec : s.sections) sum += sec = r.Get<uint16_t>("section length");
    s.group_rows = r.Get<uint16_t>("group rows");
    for (auto& v : s.p) v = r.Get<int64_t>("stage parameter");
    if (mode > 3) Bad(soff, "bad stage mode", Str("stage ", si, " mode ", int(mode)));
    s.mode = Mode(mode);
    if (s.full_rank > kMaxRank || s.red_rank > kMaxRank) Bad(soff + 1, "rank out of range", Str("stage ", si));
    if (sum != ni)
      Bad(soff + 8, "section lengths", Str("stage ", si, " sections add to ", sum, ", instruction count ", ni));
    if (s.mode != Mode::kCol && sum != s.sections[kBody])
      Bad(soff + 8, "section lengths", Str("stage ", si, " uses loop sections outside COL mode"));
    auto dims = [&](int64_t* d, int rank, const char* what) {
      int64_t n = 1;
      for (int i = 0; i < rank; ++i) {
        size_t off = r.pos;
        d[i] = r.Get<int64_t>(what);
        if (d[i] < 0 || (d[i] > 0 && n > kMaxElems / d[i]))
          Bad(off, "dim out of range", Str("stage ", si, " ", what, " ", i, " = ", d[i]));
        n *= d[i];
      }
      return n;
    };
    int64_t n_full = dims(s.full_dims, s.full_rank, "full dim");
    int64_t n_red = dims(s.red_dims, s.red_rank, "reduced dim");
    const int64_t cap = p.tile_cap;
    size_t poff = soff + 20;
    switch (s.mode) {
      case Mode::kElem:
        if (s.p[0] < 1 || s.p[0] > cap)
          Bad(poff, "bad tile length", Str("stage ", si, " tile ", s.p[0], " (capacity ", cap, ")"));
        break;
      case Mode::kRow: {
        // p0 = K (row length), p1 = rows per tile; or p2 = chunk > 0: each
        // tile is one chunk of one row and the reduced domain holds
        // rows * ceil(K / chunk) partials.
        int64_t K = s.p[0], rows = s.p[1], chunk = s.p[2];
        if (K < 0 || rows < 1 || rows > cap || (chunk == 0 && K > 0 && rows > cap / K) || chunk < 0 || chunk > cap ||
            (chunk > 0 && rows != 1) || s.p[3] != 0)
          Bad(poff, "bad row tiling",
              Str("stage ", si, " K=", K, " rows=", rows, " chunk=", chunk, " (capacity ", cap, ")"));
        bool ok;
        if (chunk > 0) {
          const int64_t M = K > 0 ? n_full / K : 0;
          ok = K > 0 ? n_full % K == 0 && __int128(n_red) == __int128(M) * (K / chunk + (K % chunk != 0))
                     : n_full == 0 && n_red == 0;
        } else {
          ok = K == 0 ? n_full == 0 : __int128(n_full) == __int128(n_red) * K;
        }
        if (!ok)
          Bad(poff, "bad row geometry",
              Str("stage ", si, " ", n_full, " elements in ", n_red, " rows of ", K, chunk ? " (chunked)" : ""));
        break;
      }
      case Mode::kCol: {
        int64_t R = s.p[0], C = s.p[1], w = s.p[2], blk = s.p[3];
        if (R < 0 || C < 1 || w < 1 || w > cap || blk < 1)
          Bad(poff, "bad column tiling", Str("stage ", si, " R=", R, " C=", C, " cols=", w, " block=", blk));
        int64_t O = n_red / C;
        if (n_red % C != 0 || __int128(O) * R * C != n_full)
          Bad(poff, "bad column geometry", Str("stage ", si, " ", n_full, " elements vs O*R*C with C=", C, " R=", R));
        break;
      }
      case Mode::kGemm:
        ParseGemm(r, p, s, si, n_full);
        break;
    }
    // Row groups: ELEM or ROW stages whose slice domain (full for ELEM,
    // reduced for ROW) splits into group_rows equal slices; a joining stage
    // has the rows of the stage before it.
    if (s.group_rows || s.row_join) {
      const int64_t R = s.group_rows, slices = s.mode == Mode::kElem ? n_full : n_red;
      const bool ok = R > 0 && (s.mode == Mode::kElem || s.mode == Mode::kRow) && slices % R == 0 &&
                      (!s.row_join || p.stages[si - 1].group_rows == R);
      if (!ok)
        Bad(soff + 18, "bad row group",
            Str("stage ", si, " group rows ", R, s.row_join ? " (joining)" : "", " over ", slices, " slices"));
    }
    s.views.resize(nv);
    for (int vi = 0; vi < nv; ++vi) {
      size_t voff = r.pos;
      View& v = s.views[vi];
      v.tensor = r.Get<uint16_t>("view tensor");
      uint8_t lvl = r.Get<uint8_t>("view level");
      r.Get<uint8_t>("reserved");
      r.Get<uint32_t>("reserved");
      v.offset = r.Get<int64_t>("view offset");
      if (v.tensor >= nt)
        Bad(voff, "tensor out of range", Str("stage ", si, " view ", vi, " names tensor ", v.tensor, " of ", nt));
      if (lvl > 1) Bad(voff + 2, "bad view level", Str("stage ", si, " view ", vi));
      v.level = Level(lvl);
      int rank = v.level == Level::kFull ? s.full_rank : s.red_rank;
      const int64_t* d = v.level == Level::kFull ? s.full_dims : s.red_dims;
      int64_t n = v.level == Level::kFull ? n_full : n_red;
      __int128 hi = v.offset;
      for (int i = 0; i < rank; ++i) {
        v.strides[i] = r.Get<int64_t>("view stride");
        if (v.strides[i] < 0 || v.strides[i] > kMaxElems)
          Bad(r.pos - 8, "bad stride", Str("stage ", si, " view ", vi, " stride ", v.strides[i]));
        hi += __int128(d[i] > 0 ? d[i] - 1 : 0) * v.strides[i];
      }
      const TensorDesc& t = p.tensors[v.tensor];
      if (n > 0 && (v.offset < 0 || hi >= t.numel))
        Bad(voff + 8, "view outside tensor",
            Str("stage ", si, " view ", vi, " reaches element ", static_cast<int64_t>(hi), " of tensor ", v.tensor,
                " (", t.numel, " elements)"));
    }
    size_t inst_off = r.pos;
    if (bytes.size() - r.pos < size_t(ni) * 8)
      Bad(r.pos, "truncated", Str("stage ", si, " needs ", ni * 8, " instruction bytes"));
    s.insts.resize(ni);
    if (ni) std::memcpy(s.insts.data(), bytes.data() + r.pos, size_t(ni) * 8);
    r.pos += size_t(ni) * 8;
    VerifyStage(p, s, si, inst_off);
  }
  if (r.pos != bytes.size()) Bad(r.pos, "trailing bytes", Str(bytes.size() - r.pos, " bytes after the last stage"));
}

}  // namespace dvm::bc
