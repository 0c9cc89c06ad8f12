// Library ops (runtime/libops.h) against nested-loop references, plus their
// errors: each names the op and the offending values, and a failed call
// writes nothing (outputs keep a sentinel).
#include "runtime/libops.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "ir/dtype.h"
#include "ir/ir.h"

namespace dvm::lib {
namespace {

constexpr DType kAll[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16,
                          DType::kInt32,   DType::kInt8,    DType::kBool};
constexpr unsigned char kSentinel = 0xA5;

using Bytes = std::vector<unsigned char>;

int64_t Count(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Bytes RandomBytes(size_t n, std::mt19937& rng) {
  Bytes b(n);
  for (auto& c : b) c = static_cast<unsigned char>(rng());
  return b;
}

// A buffer of `n` bytes (at least one, so .data() is never null) filled with
// the sentinel.
Bytes SentinelBuf(size_t n) { return Bytes(std::max<size_t>(n, 1), kSentinel); }

bool AllSentinel(const Bytes& b) {
  for (unsigned char c : b)
    if (c != kSentinel) return false;
  return true;
}

// Row-major multi-index of `flat` in `shape`.
Shape Unflatten(int64_t flat, const Shape& shape) {
  Shape idx(shape.size());
  for (size_t k = shape.size(); k-- > 0;) {
    idx[k] = flat % shape[k];
    flat /= shape[k];
  }
  return idx;
}

int64_t Flatten(const Shape& idx, const Shape& shape) {
  int64_t f = 0;
  for (size_t k = 0; k < shape.size(); ++k) f = f * shape[k] + idx[k];
  return f;
}

std::string Str(const Shape& s) { return ir::ShapeStr(s); }

// Runs `f`, expecting a dvm::Error whose message contains every string of
// `parts`.
template <class F>
void ExpectError(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "expected dvm::Error, nothing was thrown";
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const std::string& p : parts)
      EXPECT_NE(m.find(p), std::string::npos) << "message \"" << m << "\" lacks \"" << p << "\"";
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected dvm::Error, got another exception: " << e.what();
  }
}

// ---- Gather ---------------------------------------------------------------

Bytes RefGather(const Bytes& table, const Shape& table_shape, size_t es, const std::vector<int32_t>& ids,
                const Shape& ids_shape) {
  Shape row_shape(table_shape.begin() + 1, table_shape.end());
  const int64_t row = Count(row_shape);
  Bytes out(static_cast<size_t>(Count(ids_shape) * row) * es);
  for (int64_t i = 0; i < Count(ids_shape); ++i)
    for (int64_t r = 0; r < row; ++r) {
      Shape src_idx = Unflatten(r, row_shape);
      src_idx.insert(src_idx.begin(), ids[i]);
      const int64_t s = Flatten(src_idx, table_shape);
      for (size_t b = 0; b < es; ++b) out[(i * row + r) * es + b] = table[s * es + b];
    }
  return out;
}

TEST(LibOpsGather, MatchesReference) {
  std::mt19937 rng(1);
  struct Case {
    Shape table, ids;
  };
  const Case cases[] = {
      {{5}, {3}},    {{7, 4}, {6}}, {{10, 3}, {2, 3}},   {{4, 2, 3}, {5}},     {{6, 2, 3, 2}, {2, 2}}, {{3, 5}, {}},
      {{3, 5}, {0}}, {{3, 0}, {4}}, {{3, 5}, {2, 0, 3}}, {{50257, 1}, {1, 9}}, {{9, 8}, {1, 1, 1, 4}},
  };
  for (DType dt : kAll) {
    const size_t es = DTypeSize(dt);
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(DTypeName(dt)) + " table " + Str(c.table) + " ids " + Str(c.ids));
      const Bytes table = RandomBytes(Count(c.table) * es, rng);
      std::vector<int32_t> ids(Count(c.ids));
      for (auto& id : ids) id = static_cast<int32_t>(rng() % c.table[0]);
      if (!ids.empty()) ids.back() = static_cast<int32_t>(c.table[0] - 1);  // the last row
      const Bytes want = RefGather(table, c.table, es, ids, c.ids);
      Bytes got = SentinelBuf(want.size());
      Gather(table.data(), c.table, dt, ids.data(), c.ids, got.data());
      if (want.empty()) {
        EXPECT_TRUE(AllSentinel(got));
      } else {
        EXPECT_EQ(got, want);
      }
    }
  }
}

TEST(LibOpsGather, EmptyIdsMayBeNull) {
  const Bytes table(12, 1);
  Bytes out = SentinelBuf(0);
  Gather(table.data(), {3, 4}, DType::kInt8, nullptr, {0, 5}, out.data());
  Gather(nullptr, {3, 4}, DType::kInt8, nullptr, {0}, nullptr);
  EXPECT_TRUE(AllSentinel(out));
}

TEST(LibOpsGather, OutOfRangeIdThrowsBeforeWriting) {
  std::mt19937 rng(2);
  const Shape table_shape{4, 3};
  const Bytes table = RandomBytes(12 * 4, rng);
  struct Case {
    std::vector<int32_t> ids;
    Shape ids_shape;
    std::string value, position;
  };
  const Case cases[] = {
      {{0, 1, 2, 4}, {4}, "id 4", "[3]"},
      {{0, 1, 2, 3, -1, 2}, {2, 3}, "id -1", "[1, 1]"},
      {{3, std::numeric_limits<int32_t>::max()}, {1, 2}, "id 2147483647", "[0, 1]"},
      {{std::numeric_limits<int32_t>::min()}, {1}, "id -2147483648", "[0]"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.value);
    Bytes out = SentinelBuf(c.ids.size() * 3 * 4);
    ExpectError([&] { Gather(table.data(), table_shape, DType::kFloat32, c.ids.data(), c.ids_shape, out.data()); },
                {"gather", c.value, c.position, "[0, 4)"});
    EXPECT_TRUE(AllSentinel(out)) << "gather wrote output before throwing";
  }
  // An empty table rejects every id; ids are checked even when rows are empty.
  const int32_t zero = 0, seven = 7;
  ExpectError(
      [&] {
        Gather(table.data(), {0, 3}, DType::kFloat32, &zero, {1}, nullptr);
      },
      {"gather", "id 0", "[0, 0)"});
  ExpectError(
      [&] {
        Gather(table.data(), {5, 0}, DType::kFloat32, &seven, {1}, nullptr);
      },
      {"gather", "id 7", "[0, 5)"});
  Gather(table.data(), {5, 0}, DType::kFloat32, &zero, {1}, nullptr);  // valid, nothing to copy
}

TEST(LibOpsGather, BadArguments) {
  const Bytes table(64, 0);
  Bytes out = SentinelBuf(64);
  const int32_t ids[2] = {0, 1};
  ExpectError([&] { Gather(table.data(), {}, DType::kFloat32, ids, {2}, out.data()); }, {"gather", "rank"});
  ExpectError(
      [&] {
        Gather(table.data(), {4, 2}, DType::kFloat32, nullptr, {2}, out.data());
      },
      {"gather", "ids", "null", "[2]"});
  ExpectError(
      [&] {
        Gather(table.data(), {4, -2}, DType::kFloat32, ids, {2}, out.data());
      },
      {"gather", "negative", "[4, -2]"});
  ExpectError(
      [&] {
        Gather(table.data(), {int64_t{1} << 40, int64_t{1} << 20}, DType::kInt8, ids, {2}, out.data());
      },
      {"gather", "overflow"});
  ExpectError([&] { Gather(nullptr, {4, 2}, DType::kFloat32, ids, {2}, out.data()); }, {"gather", "table", "null"});
  ExpectError([&] { Gather(table.data(), {4, 2}, DType::kFloat32, ids, {2}, nullptr); }, {"gather", "output", "null"});
  ExpectError(
      [&] {
        Gather(table.data(), {4, 2}, static_cast<DType>(17), ids, {2}, out.data());
      },
      {"gather", "dtype", "17"});
  EXPECT_TRUE(AllSentinel(out));
}

// ---- Concat / Split -------------------------------------------------------

size_t Norm(int64_t axis, size_t rank) {
  return static_cast<size_t>(axis < 0 ? axis + static_cast<int64_t>(rank) : axis);
}

// Every output element located by its multi-index: which input along `axis`.
Bytes RefConcat(const std::vector<Bytes>& ins, const std::vector<Shape>& shapes, size_t es, int64_t axis) {
  const size_t ax = Norm(axis, shapes[0].size());
  Shape out_shape = shapes[0];
  out_shape[ax] = 0;
  for (const Shape& s : shapes) out_shape[ax] += s[ax];
  Bytes out(static_cast<size_t>(Count(out_shape)) * es);
  for (int64_t f = 0; f < Count(out_shape); ++f) {
    Shape idx = Unflatten(f, out_shape);
    size_t i = 0;
    while (idx[ax] >= shapes[i][ax]) idx[ax] -= shapes[i++][ax];
    const int64_t s = Flatten(idx, shapes[i]);
    for (size_t b = 0; b < es; ++b) out[f * es + b] = ins[i][s * es + b];
  }
  return out;
}

std::vector<Bytes> RefSplit(const Bytes& in, const Shape& shape, size_t es, int64_t axis,
                            const std::vector<int64_t>& sizes) {
  const size_t ax = Norm(axis, shape.size());
  std::vector<Bytes> outs;
  int64_t begin = 0;
  for (int64_t size : sizes) {
    Shape piece = shape;
    piece[ax] = size;
    Bytes out(static_cast<size_t>(Count(piece)) * es);
    for (int64_t f = 0; f < Count(piece); ++f) {
      Shape idx = Unflatten(f, piece);
      idx[ax] += begin;
      const int64_t s = Flatten(idx, shape);
      for (size_t b = 0; b < es; ++b) out[f * es + b] = in[s * es + b];
    }
    outs.push_back(std::move(out));
    begin += size;
  }
  return outs;
}

struct ConcatCase {
  std::vector<Shape> shapes;
  int64_t axis;
};

const ConcatCase kConcatCases[] = {
    {{{3}, {5}}, 0},
    {{{3}, {0}, {2}}, -1},
    {{{2, 3}, {4, 3}}, 0},
    {{{2, 3}, {2, 1}, {2, 4}}, 1},
    {{{2, 3}, {2, 1}, {2, 4}}, -1},
    {{{2, 3, 4}, {2, 5, 4}}, -2},
    {{{2, 3, 4}, {2, 3, 1}}, 2},
    {{{2, 3, 2, 2}, {2, 3, 1, 2}, {2, 3, 3, 2}}, 2},
    {{{1, 2, 3, 4}, {2, 2, 3, 4}}, -4},
    {{{2, 3, 4, 5}, {2, 3, 4, 1}}, 3},
    {{{4, 4}}, 1},
    {{{0, 3}, {0, 2}}, 1},
    {{{2, 0}, {3, 0}}, 0},
    {{{0}, {0}}, 0},
    {{{2, 2, 0}, {2, 2, 0}}, 1},
};

TEST(LibOpsConcat, MatchesReference) {
  std::mt19937 rng(3);
  for (DType dt : kAll) {
    const size_t es = DTypeSize(dt);
    for (const ConcatCase& c : kConcatCases) {
      std::string trace = std::string(DTypeName(dt)) + " axis " + std::to_string(c.axis);
      for (const Shape& s : c.shapes) trace += " " + Str(s);
      SCOPED_TRACE(trace);
      std::vector<Bytes> ins;
      std::vector<const void*> ptrs;
      for (const Shape& s : c.shapes) {
        ins.push_back(RandomBytes(Count(s) * es, rng));
        ptrs.push_back(ins.back().data());
      }
      const Bytes want = RefConcat(ins, c.shapes, es, c.axis);
      Bytes got = SentinelBuf(want.size());
      Concat(ptrs, c.shapes, dt, c.axis, got.data());
      if (want.empty()) {
        EXPECT_TRUE(AllSentinel(got));
      } else {
        EXPECT_EQ(got, want);
      }
    }
  }
}

TEST(LibOpsSplit, MatchesReferenceAndInvertsConcat) {
  std::mt19937 rng(4);
  for (DType dt : kAll) {
    const size_t es = DTypeSize(dt);
    for (const ConcatCase& c : kConcatCases) {
      const size_t ax = Norm(c.axis, c.shapes[0].size());
      Shape shape = c.shapes[0];
      std::vector<int64_t> sizes;
      shape[ax] = 0;
      for (const Shape& s : c.shapes) {
        shape[ax] += s[ax];
        sizes.push_back(s[ax]);
      }
      SCOPED_TRACE(std::string(DTypeName(dt)) + " " + Str(shape) + " axis " + std::to_string(c.axis) + " sizes " +
                   Str(sizes));
      const Bytes in = RandomBytes(Count(shape) * es, rng);
      const std::vector<Bytes> want = RefSplit(in, shape, es, c.axis, sizes);
      std::vector<Bytes> got;
      std::vector<void*> ptrs;
      for (const Bytes& w : want) got.push_back(SentinelBuf(w.size()));
      for (Bytes& g : got) ptrs.push_back(g.data());
      Split(in.data(), shape, dt, c.axis, sizes, ptrs);
      std::vector<const void*> cptrs;
      for (size_t i = 0; i < want.size(); ++i) {
        if (want[i].empty()) {
          EXPECT_TRUE(AllSentinel(got[i])) << "piece " << i;
        } else {
          EXPECT_EQ(got[i], want[i]) << "piece " << i;
        }
        cptrs.push_back(got[i].data());
      }
      // Concatenating the pieces gives the input back.
      Bytes back = SentinelBuf(in.size());
      Concat(cptrs, c.shapes, dt, c.axis, back.data());
      if (!in.empty()) {
        EXPECT_EQ(back, in);
      }
    }
  }
}

TEST(LibOpsConcat, Errors) {
  const Bytes a(256, 1), b(256, 2);
  const void* three[] = {a.data(), b.data(), a.data()};
  const void* two[] = {a.data(), b.data()};
  Bytes out = SentinelBuf(256);
  auto run = [&](std::vector<Shape> shapes, int64_t axis) {
    return [&out, &three, shapes, axis] {
      Concat(std::span<const void* const>(three, shapes.size()), shapes, DType::kFloat32, axis, out.data());
    };
  };
  ExpectError(run({{2, 3}, {2, 4}}, 2), {"concat", "axis 2", "rank 2"});
  ExpectError(run({{2, 3}, {2, 4}}, -3), {"concat", "axis -3", "rank 2"});
  ExpectError(run({{}, {}}, 0), {"concat", "axis 0", "rank 0"});
  ExpectError(run({{2, 3}, {2, 4}}, 0), {"concat", "input 1", "[2, 4]", "[2, 3]"});
  ExpectError(run({{2, 3, 4}, {5, 3, 5}}, -2), {"concat", "input 1", "[5, 3, 5]", "[2, 3, 4]"});
  ExpectError(run({{2, 3}, {2, 3, 1}}, 1), {"concat", "input 1", "rank 3", "rank 2"});
  ExpectError(run({{2, -3}, {2, 3}}, 1), {"concat", "negative", "[2, -3]"});
  ExpectError(run({{int64_t{1} << 30, 1}, {int64_t{1} << 30, int64_t{1} << 21}}, 1), {"concat", "overflow"});
  const int64_t big = int64_t{1} << 62;
  ExpectError(run({{0, big}, {0, big}, {0, big}}, 1), {"concat", "overflow", "input 1"});
  ExpectError([&] { Concat({}, {}, DType::kFloat32, 0, out.data()); }, {"concat", "at least one"});
  const Shape shapes[] = {{2}, {2}};
  ExpectError([&] { Concat(std::span<const void* const>(two, 1), shapes, DType::kFloat32, 0, out.data()); },
              {"concat", "1 input", "2 shapes"});
  const void* with_null[] = {a.data(), nullptr};
  ExpectError([&] { Concat(with_null, shapes, DType::kInt8, 0, out.data()); }, {"concat", "input 1", "null"});
  ExpectError([&] { Concat(two, shapes, DType::kInt8, 0, nullptr); }, {"concat", "output", "null"});
  EXPECT_TRUE(AllSentinel(out)) << "concat wrote output before throwing";
}

TEST(LibOpsSplit, Errors) {
  const Bytes in(256, 1);
  Bytes o0 = SentinelBuf(256), o1 = SentinelBuf(256);
  void* outs[] = {o0.data(), o1.data()};
  auto run = [&](Shape shape, int64_t axis, std::vector<int64_t> sizes) {
    return [&in, &outs, shape, axis, sizes] {
      Split(in.data(), shape, DType::kFloat32, axis, sizes, std::span<void* const>(outs, sizes.size()));
    };
  };
  ExpectError(run({2, 6}, 2, {3, 3}), {"split", "axis 2", "rank 2"});
  ExpectError(run({2, 6}, -3, {1, 1}), {"split", "axis -3", "rank 2"});
  ExpectError(run({}, 0, {}), {"split", "axis 0", "rank 0"});
  ExpectError(run({2, 6}, 1, {3, 2}), {"split", "[3, 2]", "sum to 5", "dim 6"});
  ExpectError(run({2, 6}, -1, {3, 4}), {"split", "[3, 4]", "6"});
  ExpectError(run({2, 6}, 0, {3, -1}), {"split", "negative", "-1"});
  ExpectError(run({2, 6}, 1, {std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::max()}),
              {"split", "9223372036854775807"});
  ExpectError(run({2, -6}, 1, {3, 3}), {"split", "negative", "[2, -6]"});
  ExpectError(
      [&] {
        Split(in.data(), {2, 6}, DType::kFloat32, 1, std::vector<int64_t>{6}, outs);
      },
      {"split", "1 sizes", "2 output"});
  void* with_null[] = {o0.data(), nullptr};
  ExpectError(
      [&] {
        Split(in.data(), {2, 6}, DType::kInt8, 1, std::vector<int64_t>{3, 3}, with_null);
      },
      {"split", "output 1", "null"});
  ExpectError(
      [&] {
        Split(nullptr, {2, 6}, DType::kInt8, 1, std::vector<int64_t>{3, 3}, outs);
      },
      {"split", "input", "null"});
  EXPECT_TRUE(AllSentinel(o0) && AllSentinel(o1)) << "split wrote output before throwing";
  // A null pointer is fine for an empty piece.
  const Bytes src = {1, 2, 3, 4};
  Bytes whole = SentinelBuf(4);
  void* pieces[] = {nullptr, whole.data()};
  Split(src.data(), {2, 2}, DType::kInt8, 1, std::vector<int64_t>{0, 2}, pieces);
  EXPECT_EQ(whole, src);
}

// ---- Iota -----------------------------------------------------------------

// Element i of `out` (in `dt`) as a double.
double Get(const Bytes& out, DType dt, int64_t i) {
  switch (dt) {
    case DType::kFloat32: {
      float f;
      std::memcpy(&f, &out[i * 4], 4);
      return f;
    }
    case DType::kFloat16:
    case DType::kBFloat16: {
      uint16_t h;
      std::memcpy(&h, &out[i * 2], 2);
      return dt == DType::kFloat16 ? F16ToF32(h) : BF16ToF32(h);
    }
    case DType::kInt32: {
      int32_t v;
      std::memcpy(&v, &out[i * 4], 4);
      return v;
    }
    case DType::kInt8:
      return static_cast<int8_t>(out[i]);
    case DType::kBool:
      return out[i];
  }
  return 0;
}

std::vector<double> RunIota(int64_t n, DType dt, double start, double step) {
  Bytes out = SentinelBuf(static_cast<size_t>(n) * DTypeSize(dt));
  Iota(n, dt, start, step, out.data());
  std::vector<double> v;
  for (int64_t i = 0; i < n; ++i) v.push_back(Get(out, dt, i));
  return v;
}

TEST(LibOpsIota, ExactValues) {
  using V = std::vector<double>;
  EXPECT_EQ(RunIota(5, DType::kFloat32, 0, 1), (V{0, 1, 2, 3, 4}));
  EXPECT_EQ(RunIota(4, DType::kFloat32, 1.5, -0.5), (V{1.5, 1, 0.5, 0}));
  EXPECT_EQ(RunIota(3, DType::kFloat32, 0.1, 0), (V{0.1f, 0.1f, 0.1f}));
  EXPECT_EQ(RunIota(4, DType::kInt32, -2, 3), (V{-2, 1, 4, 7}));
  EXPECT_EQ(RunIota(4, DType::kInt32, 0, 0.75), (V{0, 0, 1, 2}));     // truncates
  EXPECT_EQ(RunIota(3, DType::kInt32, -0.5, -0.75), (V{0, -1, -2}));  // toward zero
  EXPECT_EQ(RunIota(3, DType::kInt32, 2147483646, 1), (V{2147483646, 2147483647, 2147483647}));
  EXPECT_EQ(RunIota(4, DType::kInt8, 125, 1), (V{125, 126, 127, -128}));  // wraps like a cast
  EXPECT_EQ(RunIota(3, DType::kInt8, -1, -1), (V{-1, -2, -3}));
  // f16: integers above 2048 are even; ties round to even.
  EXPECT_EQ(RunIota(5, DType::kFloat16, 2047, 1), (V{2047, 2048, 2048, 2050, 2052}));
  EXPECT_EQ(RunIota(2, DType::kFloat16, 65504, 100000), (V{65504, INFINITY}));
  // bf16: 8 significant bits, so above 256 the step is 2.
  EXPECT_EQ(RunIota(5, DType::kBFloat16, 255, 1), (V{255, 256, 256, 258, 260}));
  EXPECT_EQ(RunIota(1, DType::kBFloat16, 1.00390625, 0), (V{1}));         // 1 + 2^-8 ties to 1
  EXPECT_EQ(RunIota(1, DType::kBFloat16, 1.01171875, 0), (V{1.015625}));  // 1 + 3*2^-8 -> up
  EXPECT_TRUE(RunIota(0, DType::kFloat32, 0, 1).empty());
}

TEST(LibOpsIota, MatchesReferenceAllDTypes) {
  const DType dts[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt32, DType::kInt8};
  const double starts[] = {0, -3.25, 1000.5, 1e6};
  const double steps[] = {1, 0.1, -2.5, 1.0 / 3};
  for (DType dt : dts)
    for (double start : starts)
      for (double step : steps) {
        SCOPED_TRACE(std::string(DTypeName(dt)) + " start " + std::to_string(start) + " step " + std::to_string(step));
        const int64_t n = 1000;
        const std::vector<double> got = RunIota(n, dt, start, step);
        for (int64_t i = 0; i < n; ++i) {
          const double v = start + static_cast<double>(i) * step;
          const float f = static_cast<float>(v);
          double want = 0;
          switch (dt) {
            case DType::kFloat32:
              want = f;
              break;
            case DType::kFloat16:
              want = F16ToF32(F32ToF16(f));
              break;
            case DType::kBFloat16:
              want = BF16ToF32(F32ToBF16(f));
              break;
            case DType::kInt32:
              want = SatF32ToI32(v);
              break;
            case DType::kInt8:
              want = WrapI8(SatF32ToI32(v));
              break;
            case DType::kBool:
              break;
          }
          ASSERT_EQ(got[i], want) << "element " << i;
        }
      }
}

TEST(LibOpsIota, Errors) {
  Bytes out = SentinelBuf(64);
  ExpectError([&] { Iota(4, DType::kBool, 0, 1, out.data()); }, {"iota", "bool"});
  ExpectError([&] { Iota(-3, DType::kFloat32, 0, 1, out.data()); }, {"iota", "-3"});
  ExpectError([&] { Iota(int64_t{1} << 60, DType::kFloat32, 0, 1, out.data()); }, {"iota", "overflow"});
  ExpectError([&] { Iota(4, DType::kFloat32, 0, 1, nullptr); }, {"iota", "null"});
  ExpectError([&] { Iota(4, static_cast<DType>(9), 0, 1, out.data()); }, {"iota", "dtype", "9"});
  EXPECT_TRUE(AllSentinel(out)) << "iota wrote output before throwing";
  Iota(0, DType::kFloat32, 0, 1, nullptr);  // empty: no pointer needed
}

// ---- CausalMask -----------------------------------------------------------

TEST(LibOpsCausalMask, MatchesReference) {
  const std::pair<int64_t, int64_t> qkv[] = {{0, 0}, {0, 5}, {1, 1}, {1, 7}, {4, 4}, {3, 8}, {8, 8}, {5, 13}, {17, 33}};
  const DType dts[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kBool};
  for (DType dt : dts)
    for (auto [q, kv] : qkv) {
      SCOPED_TRACE(std::string(DTypeName(dt)) + " q " + std::to_string(q) + " kv " + std::to_string(kv));
      Bytes out = SentinelBuf(static_cast<size_t>(q * kv) * DTypeSize(dt));
      CausalMask(q, kv, dt, out.data());
      if (q * kv == 0) {
        EXPECT_TRUE(AllSentinel(out));
        continue;
      }
      for (int64_t i = 0; i < q; ++i)
        for (int64_t j = 0; j < kv; ++j) {
          const bool allowed = j <= i + (kv - q);
          const double got = Get(out, dt, i * kv + j);
          if (dt == DType::kBool) {
            ASSERT_EQ(out[i * kv + j], allowed ? 1 : 0) << "(" << i << ", " << j << ")";
          } else if (allowed) {
            ASSERT_EQ(got, 0.0) << "(" << i << ", " << j << ")";
            ASSERT_FALSE(std::signbit(got)) << "(" << i << ", " << j << ") is -0";
          } else {
            ASSERT_EQ(got, -INFINITY) << "(" << i << ", " << j << ")";
          }
        }
    }
}

TEST(LibOpsCausalMask, LastRowSeesEverything) {
  // q == 1 (decoding one token): the whole row is allowed.
  Bytes out = SentinelBuf(6 * 4);
  CausalMask(1, 6, DType::kFloat32, out.data());
  EXPECT_EQ(out, Bytes(24, 0));
}

TEST(LibOpsCausalMask, Errors) {
  Bytes out = SentinelBuf(256);
  ExpectError([&] { CausalMask(4, 3, DType::kFloat32, out.data()); }, {"causal_mask", "q = 4", "kv = 3"});
  ExpectError([&] { CausalMask(-1, 3, DType::kFloat32, out.data()); }, {"causal_mask", "q = -1"});
  ExpectError([&] { CausalMask(-5, -2, DType::kBool, out.data()); }, {"causal_mask", "kv = -2"});
  ExpectError([&] { CausalMask(2, 4, DType::kInt32, out.data()); }, {"causal_mask", "i32"});
  ExpectError([&] { CausalMask(2, 4, DType::kInt8, out.data()); }, {"causal_mask", "i8"});
  ExpectError([&] { CausalMask(2, 4, DType::kFloat16, nullptr); }, {"causal_mask", "null"});
  ExpectError([&] { CausalMask(int64_t{1} << 30, int64_t{1} << 30, DType::kBool, out.data()); },
              {"causal_mask", "overflow"});
  EXPECT_TRUE(AllSentinel(out)) << "causal_mask wrote output before throwing";
}

}  // namespace
}  // namespace dvm::lib
