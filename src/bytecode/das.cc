// Disassembler: one line per header field group, view and instruction.
#include <sstream>

#include "bytecode/format.h"
#include "ir/dtype.h"

namespace dvm::bc {
namespace {

const char* kModeNames[] = {"elem", "row", "col", "gemm"};
const char* kKindNames[] = {"in", "out", "ws"};
const char* kSectionNames[] = {"tile_init", "block_init", "body", "block_merge", "post"};

void Dims(std::ostream& os, const int64_t* d, int rank) {
  os << "[";
  for (int i = 0; i < rank; ++i) os << (i ? "," : "") << d[i];
  os << "]";
}

void ConstValue(std::ostream& os, const Const& c) {
  if (IsFloat(c.dtype))
    os << BitsF32(c.bits);
  else
    os << static_cast<int32_t>(c.bits);
}

struct RegName {
  int x;
};
std::ostream& operator<<(std::ostream& os, RegName r) { return os << 'r' << r.x; }

}  // namespace

std::string Disassemble(const Program& p) {
  std::ostringstream os;
  os << "; dvm bytecode v" << kVersion << ": " << p.num_regs << " registers x " << p.tile_cap << " lanes, "
     << p.tensors.size() << " tensors, " << p.consts.size() << " constants, " << p.stages.size() << " stages\n";
  for (size_t i = 0; i < p.tensors.size(); ++i) {
    const TensorDesc& t = p.tensors[i];
    os << "tensor t" << i << " " << kKindNames[int(t.kind)] << t.slot << " " << DTypeName(t.dtype) << " x " << t.numel
       << "\n";
  }
  for (size_t i = 0; i < p.consts.size(); ++i) {
    os << "const K" << i << " " << DTypeName(p.consts[i].dtype) << " ";
    ConstValue(os, p.consts[i]);
    os << "\n";
  }
  for (size_t si = 0; si < p.stages.size(); ++si) {
    const Stage& s = p.stages[si];
    os << "stage " << si << " " << kModeNames[int(s.mode)] << (s.concurrent ? " concurrent" : "");
    if (s.group_rows) os << (s.row_join ? " rows+" : " rows=") << s.group_rows;
    os << " full=";
    Dims(os, s.full_dims, s.full_rank);
    os << " red=";
    Dims(os, s.red_dims, s.red_rank);
    os << " p=[" << s.p[0] << "," << s.p[1] << "," << s.p[2] << "," << s.p[3] << "]\n";
    if (s.mode == Mode::kGemm) {
      const Gemm& g = s.gemm;
      os << "  gemm t" << g.c << " := t" << g.a << (g.trans_a ? "^T" : "") << " +" << g.a_off << " ld " << g.lda
         << " @ t" << g.b << (g.trans_b ? "^T" : "") << " +" << g.b_off << " ld " << g.ldb << " batch=";
      Dims(os, g.bdims, g.batch_rank);
      os << " tile " << g.tile_rows << "x" << g.tile_cols << " body " << g.body_tile << "\n";
    }
    for (size_t vi = 0; vi < s.views.size(); ++vi) {
      const View& v = s.views[vi];
      bool full = v.level == Level::kFull;
      os << "  view v" << vi << " t" << v.tensor << (full ? " full" : " red") << " +" << v.offset << " strides=";
      Dims(os, v.strides, full ? s.full_rank : s.red_rank);
      os << "\n";
    }
    size_t idx = 0;
    for (int sec = 0; sec < kNumSections; ++sec) {
      if (s.sections[sec] == 0) continue;
      os << "  " << kSectionNames[sec] << ":\n";
      for (int k = 0; k < s.sections[sec]; ++k, ++idx) {
        const Inst& in = s.insts[idx];
        const OpInfo& info = kOpInfo[in.op];
        os << "    " << idx << ": " << info.name << "." << DTypeName(DType(in.type))
           << ((in.flags & kLevelRed) ? ".red" : "") << " ";
        auto r = [](int x) { return RegName{x}; };
        uint8_t form = in.flags & kFormMask;
        switch (info.kind) {
          case Kind::kLoad:
            os << r(in.dst) << ", v" << in.c;
            break;
          case Kind::kStore:
            os << "v" << in.c << ", " << r(in.a);
            break;
          case Kind::kFill:
            os << r(in.dst) << ", K" << in.c;
            break;
          case Kind::kUn:
          case Kind::kRed:
          case Kind::kBcast:
            os << r(in.dst) << ", " << r(in.a);
            break;
          case Kind::kWide: {
            static const char* kRed[] = {"sum", "max", "min", "prod"};
            const char* op = in.b < 4 ? kRed[in.b] : "?";
            if (Opcode(in.op) == Opcode::WNARROW)
              os << r(in.dst) << ", w" << int(in.a);
            else if (Opcode(in.op) == Opcode::WFILL)
              os << "w" << int(in.dst) << ", " << op;
            else
              os << "w" << int(in.dst) << ", " << r(in.a) << ", " << op;
            break;
          }
          case Kind::kCast:
            os << r(in.dst) << ", " << r(in.a) << " (from " << DTypeName(DType((in.flags & kSrcMask) >> kSrcShift))
               << ")";
            break;
          case Kind::kBin:
            os << r(in.dst) << ", ";
            if (form == kFormRR)
              os << r(in.a) << ", " << r(in.b);
            else if (form == kFormRK)
              os << r(in.a) << ", K" << in.c;
            else
              os << "K" << in.c << ", " << r(in.a);
            break;
          case Kind::kSel:
            os << r(in.dst) << ", " << r(in.a) << ", " << r(in.b) << ", " << r(in.c);
            break;
        }
        os << "\n";
      }
    }
  }
  return os.str();
}

}  // namespace dvm::bc
