#include "runtime/libops.h"

#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "ir/dtype.h"
#include "ir/error.h"
#include "ir/ir.h"

namespace dvm::lib {
namespace {

// "[2, -3]": every value as is (ir::ShapeStr prints negative dims as "?",
// which would hide the offending value).
std::string ShapeStr(std::span<const int64_t> s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// Element count of `s`; throws naming `what` on a negative dim or overflow.
int64_t NumElements(std::span<const int64_t> s, const char* what) {
  for (int64_t d : s)
    if (d < 0) Fail(what, ": negative dim ", d, " in shape ", ShapeStr(s));
  return ir::NumElements(s, what);
}

// Element size of `dt`; throws on a value outside the DType enum.
size_t ElemSize(const char* op, DType dt) {
  size_t s = DTypeSize(dt);
  if (s == 0) Fail(op, ": unknown dtype ", int(dt));
  return s;
}

// Byte count of `n` elements of size `elem`. Callers pass counts bounded by
// NumElements (at most 2^50), so this cannot overflow.
size_t Bytes(int64_t n, size_t elem) { return static_cast<size_t>(n) * elem; }

// Axis in [-rank, rank) normalised to [0, rank).
size_t NormAxis(const char* op, int64_t axis, size_t rank) {
  const int64_t r = static_cast<int64_t>(rank);
  if (axis < -r || axis >= r)
    Fail(op, ": axis ", axis, " is out of range for rank ", r, " (valid: [", -r, ", ", r, "))");
  return static_cast<size_t>(axis < 0 ? axis + r : axis);
}

// Multi-index of flat position `flat` in `shape` (row-major), as "[i, j]".
std::string IndexStr(int64_t flat, const Shape& shape) {
  Shape idx(shape.size());
  for (size_t k = shape.size(); k-- > 0;) {
    idx[k] = flat % shape[k];
    flat /= shape[k];
  }
  return ShapeStr(idx);
}

// Products of the dims before and after `axis` (both checked for overflow).
void OuterInner(const char* op, const Shape& shape, size_t axis, int64_t& outer, int64_t& inner) {
  outer = NumElements(std::span<const int64_t>(shape).subspan(0, axis), op);
  inner = NumElements(std::span<const int64_t>(shape).subspan(axis + 1), op);
}

}  // namespace

void Gather(const void* table, const Shape& table_shape, DType dt, const int32_t* ids, const Shape& ids_shape,
            void* out) {
  const size_t es = ElemSize("gather", dt);
  if (table_shape.empty()) Fail("gather: table must have rank >= 1, got shape []");
  NumElements(table_shape, "gather (table)");
  const int64_t n = NumElements(ids_shape, "gather (ids)");
  const int64_t vocab = table_shape[0];
  if (n > 0 && ids == nullptr) Fail("gather: ids is null but ids shape ", ShapeStr(ids_shape), " is not empty");
  // Every id is checked before anything is written.
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab)
      Fail("gather: id ", id, " at position ", IndexStr(i, ids_shape), " (flat ", i, ") is out of range [0, ", vocab,
           ") for table shape ", ShapeStr(table_shape));
  }
  Shape out_shape = ids_shape;
  out_shape.insert(out_shape.end(), table_shape.begin() + 1, table_shape.end());
  if (NumElements(out_shape, "gather (output)") == 0) return;
  // n > 0 and every dim is non-zero here, so the row size is bounded too.
  const int64_t row = NumElements(std::span<const int64_t>(table_shape).subspan(1), "gather");
  const size_t row_bytes = Bytes(row, es);
  if (table == nullptr) Fail("gather: table is null, shape ", ShapeStr(table_shape));
  if (out == nullptr) Fail("gather: output is null, shape ", ShapeStr(out_shape));

  const auto* src = static_cast<const unsigned char*>(table);
  auto* dst = static_cast<unsigned char*>(out);
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + Bytes(i, row_bytes), src + Bytes(ids[i], row_bytes), row_bytes);
}

void Concat(std::span<const void* const> ins, std::span<const Shape> shapes, DType dt, int64_t axis, void* out) {
  const size_t es = ElemSize("concat", dt);
  if (ins.size() != shapes.size()) Fail("concat: ", ins.size(), " input pointers but ", shapes.size(), " shapes");
  if (shapes.empty()) Fail("concat: needs at least one input");
  const Shape& s0 = shapes[0];
  const size_t rank = s0.size();
  const size_t ax = NormAxis("concat", axis, rank);

  Shape out_shape = s0;
  out_shape[ax] = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const Shape& s = shapes[i];
    if (s.size() != rank)
      Fail("concat: input ", i, " has rank ", s.size(), " (shape ", ShapeStr(s), ") but input 0 has rank ", rank,
           " (shape ", ShapeStr(s0), ")");
    NumElements(s, "concat (input)");
    for (size_t k = 0; k < rank; ++k)
      if (k != ax && s[k] != s0[k])
        Fail("concat: input ", i, " has shape ", ShapeStr(s), " but input 0 has shape ", ShapeStr(s0),
             "; dims must match except along axis ", axis, " (dim ", k, " differs)");
    // A zero dim elsewhere lets s[ax] be any non-negative value, so guard the
    // sum itself; NumElements below bounds the whole output.
    if (s[ax] > std::numeric_limits<int64_t>::max() - out_shape[ax])
      Fail("concat: output dim along axis ", axis, " overflows at input ", i, " (shape ", ShapeStr(s), ")");
    out_shape[ax] += s[ax];
  }

  if (NumElements(out_shape, "concat (output)") == 0) return;
  // Every dim of the output is non-zero here, so no partial product overflows.
  int64_t outer = 0, inner = 0;
  OuterInner("concat", out_shape, ax, outer, inner);
  const size_t out_chunk = Bytes(out_shape[ax] * inner, es);
  for (size_t i = 0; i < ins.size(); ++i)
    if (shapes[i][ax] != 0 && ins[i] == nullptr) Fail("concat: input ", i, " is null, shape ", ShapeStr(shapes[i]));
  if (out == nullptr) Fail("concat: output is null, shape ", ShapeStr(out_shape));

  auto* dst = static_cast<unsigned char*>(out);
  size_t offset = 0;
  for (size_t i = 0; i < ins.size(); ++i) {
    const size_t chunk = Bytes(shapes[i][ax] * inner, es);
    if (chunk == 0) continue;
    const auto* src = static_cast<const unsigned char*>(ins[i]);
    for (int64_t o = 0; o < outer; ++o) std::memcpy(dst + Bytes(o, out_chunk) + offset, src + Bytes(o, chunk), chunk);
    offset += chunk;
  }
}

void Split(const void* in, const Shape& shape, DType dt, int64_t axis, std::span<const int64_t> sizes,
           std::span<void* const> outs) {
  const size_t es = ElemSize("split", dt);
  const size_t rank = shape.size();
  const size_t ax = NormAxis("split", axis, rank);
  const int64_t total = NumElements(shape, "split (input)");
  if (sizes.size() != outs.size()) Fail("split: ", sizes.size(), " sizes but ", outs.size(), " output pointers");
  const int64_t dim = shape[ax];
  for (size_t i = 0; i < sizes.size(); ++i)
    if (sizes[i] < 0) Fail("split: size ", i, " is negative (", sizes[i], ") in sizes ", ShapeStr(sizes));
  int64_t sum = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    // Bounded by dim before adding, so no overflow.
    if (sizes[i] > dim - sum)
      Fail("split: sizes ", ShapeStr(sizes), " sum past dim ", dim, " of axis ", axis, " of shape ", ShapeStr(shape));
    sum += sizes[i];
  }
  if (sum != dim)
    Fail("split: sizes ", ShapeStr(sizes), " sum to ", sum, " but axis ", axis, " of shape ", ShapeStr(shape),
         " has dim ", dim);

  if (total == 0) return;
  // Every dim of the input is non-zero here, so no partial product overflows.
  int64_t outer = 0, inner = 0;
  OuterInner("split", shape, ax, outer, inner);
  const size_t in_chunk = Bytes(dim * inner, es);
  if (in == nullptr) Fail("split: input is null, shape ", ShapeStr(shape));
  for (size_t i = 0; i < outs.size(); ++i)
    if (sizes[i] != 0 && outs[i] == nullptr) Fail("split: output ", i, " is null (size ", sizes[i], ")");

  const auto* src = static_cast<const unsigned char*>(in);
  size_t offset = 0;
  for (size_t i = 0; i < outs.size(); ++i) {
    const size_t chunk = Bytes(sizes[i] * inner, es);
    if (chunk == 0) continue;
    auto* dst = static_cast<unsigned char*>(outs[i]);
    for (int64_t o = 0; o < outer; ++o) std::memcpy(dst + Bytes(o, chunk), src + Bytes(o, in_chunk) + offset, chunk);
    offset += chunk;
  }
}

void Iota(int64_t n, DType dt, double start, double step, void* out) {
  ElemSize("iota", dt);
  if (dt == DType::kBool) Fail("iota: dtype bool is not supported (f32, f16, bf16, i32, i8)");
  if (n < 0) Fail("iota: negative length ", n);
  const Shape shape{n};
  NumElements(shape, "iota");
  if (n == 0) return;
  if (out == nullptr) Fail("iota: output is null, length ", n);

  // Each value is start + i * step in double, converted as a DVM scalar is:
  // to f32 (then round-to-nearest-even to f16/bf16), or NaN -> 0, saturate,
  // truncate to i32 (then wrap to i8).
  auto val = [&](int64_t i) { return start + static_cast<double>(i) * step; };
  switch (dt) {
    case DType::kFloat32: {
      auto* o = static_cast<float*>(out);
      for (int64_t i = 0; i < n; ++i) o[i] = static_cast<float>(val(i));
      break;
    }
    case DType::kFloat16: {
      auto* o = static_cast<uint16_t*>(out);
      for (int64_t i = 0; i < n; ++i) o[i] = F32ToF16(static_cast<float>(val(i)));
      break;
    }
    case DType::kBFloat16: {
      auto* o = static_cast<uint16_t*>(out);
      for (int64_t i = 0; i < n; ++i) o[i] = F32ToBF16(static_cast<float>(val(i)));
      break;
    }
    case DType::kInt32: {
      auto* o = static_cast<int32_t*>(out);
      for (int64_t i = 0; i < n; ++i) o[i] = SatF32ToI32(val(i));
      break;
    }
    case DType::kInt8: {
      auto* o = static_cast<int8_t*>(out);
      for (int64_t i = 0; i < n; ++i) o[i] = static_cast<int8_t>(WrapI8(SatF32ToI32(val(i))));
      break;
    }
    case DType::kBool:
      break;  // rejected above
  }
}

void CausalMask(int64_t q, int64_t kv, DType dt, void* out) {
  ElemSize("causal_mask", dt);
  if (dt == DType::kInt32 || dt == DType::kInt8)
    Fail("causal_mask: dtype ", DTypeName(dt), " is not supported (f32, f16, bf16, bool)");
  if (q < 0 || kv < 0 || q > kv) Fail("causal_mask: needs 0 <= q <= kv, got q = ", q, ", kv = ", kv);
  const Shape shape{q, kv};
  const int64_t n = NumElements(shape, "causal_mask");
  if (n == 0) return;
  if (out == nullptr) Fail("causal_mask: output is null, shape ", ShapeStr(shape));

  // Row i allows columns [0, i + kv - q]: a prefix of `allowed` elements.
  auto fill = [&](auto* o, auto yes, auto no) {
    for (int64_t i = 0; i < q; ++i) {
      auto* r = o + i * kv;
      const int64_t allowed = i + (kv - q) + 1;
      for (int64_t j = 0; j < allowed; ++j) r[j] = yes;
      for (int64_t j = allowed; j < kv; ++j) r[j] = no;
    }
  };
  switch (dt) {
    case DType::kFloat32:
      fill(static_cast<float*>(out), 0.0f, -std::numeric_limits<float>::infinity());
      break;
    case DType::kFloat16:
      fill(static_cast<uint16_t*>(out), uint16_t{0}, uint16_t{0xfc00});
      break;
    case DType::kBFloat16:
      fill(static_cast<uint16_t*>(out), uint16_t{0}, uint16_t{0xff80});
      break;
    case DType::kBool:
      fill(static_cast<uint8_t*>(out), uint8_t{1}, uint8_t{0});
      break;
    case DType::kInt32:
    case DType::kInt8:
      break;  // rejected above
  }
}

}  // namespace dvm::lib
