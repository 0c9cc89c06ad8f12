// Shared helpers for the DVM tests: random tensors per dtype, guarded
// buffers, tolerance checks (PyTorch's default rtol/atol per dtype) and a
// runner that launches a Kernel and compares every output with the
// reference evaluator (runtime/reference.h).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "dvm/dvm.h"
#include "ir/dtype.h"
#include "ir/ir.h"
#include "kernel_internal.h"
#include "runtime/reference.h"

namespace dvm::test {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int32_t kI32Min = std::numeric_limits<int32_t>::min();
constexpr int32_t kI32Max = std::numeric_limits<int32_t>::max();

inline constexpr DType kAllDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16,
                                       DType::kInt32,   DType::kInt8,    DType::kBool};
inline constexpr DType kFloatDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
inline constexpr DType kNumberDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt32,
                                          DType::kInt8};

inline std::string ShapeString(const Shape& s) { return ir::ShapeStr(s); }

inline uint64_t EnvU64(const char* name, uint64_t def) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  return std::strtoull(v, nullptr, 0);
}

// ---- value generators -----------------------------------------------------

using Rng = std::mt19937_64;
using Gen = std::function<double(Rng&)>;

// Continuous uniform in [lo, hi).
inline Gen Uniform(double lo, double hi) {
  return [=](Rng& r) { return std::uniform_real_distribution<double>(lo, hi)(r); };
}
// Integer uniform in [lo, hi].
inline Gen IntUniform(int64_t lo, int64_t hi) {
  return [=](Rng& r) { return static_cast<double>(std::uniform_int_distribution<int64_t>(lo, hi)(r)); };
}
// One of `values`.
inline Gen Choice(std::vector<double> values) {
  return [v = std::move(values)](Rng& r) { return v[std::uniform_int_distribution<size_t>(0, v.size() - 1)(r)]; };
}
// With probability p draws from `b`, otherwise from `a`.
inline Gen Mix(Gen a, double p, Gen b) {
  return [=](Rng& r) { return std::bernoulli_distribution(p)(r) ? b(r) : a(r); };
}
// Uniform magnitude in [lo, hi) with a random sign.
inline Gen SignedUniform(double lo, double hi) {
  return [=](Rng& r) {
    double v = std::uniform_real_distribution<double>(lo, hi)(r);
    return std::bernoulli_distribution(0.5)(r) ? -v : v;
  };
}

// A reasonable default for each dtype: floats in [-3, 3), i32 and i8 over
// their full range, bool 0/1.
inline Gen DefaultGen(DType dt) {
  switch (dt) {
    case DType::kFloat32:
    case DType::kFloat16:
    case DType::kBFloat16:
      return Uniform(-3, 3);
    case DType::kInt32:
      return IntUniform(kI32Min, kI32Max);
    case DType::kInt8:
      return IntUniform(-128, 127);
    case DType::kBool:
      return IntUniform(0, 1);
  }
  return Uniform(-1, 1);
}

// Small values of any dtype (floats: multiples of 0.5 in [-3, 3]; ints in
// [-3, 3]; bool 0/1): compares and min/max see many ties.
inline Gen SmallGen(DType dt) {
  if (IsFloat(dt)) return [](Rng& r) { return 0.5 * std::uniform_int_distribution<int>(-6, 6)(r); };
  if (dt == DType::kBool) return IntUniform(0, 1);
  return IntUniform(-3, 3);
}

// A tensor of `shape` with values from `gen`, rounded to what a buffer of
// dtype `dt` holds.
inline ref::Tensor MakeTensor(DType dt, const Shape& shape, const Gen& gen, Rng& rng) {
  ref::Tensor t;
  t.dtype = dt;
  t.shape = shape;
  t.data.resize(static_cast<size_t>(ir::NumElements(shape, "test tensor")));
  for (double& v : t.data) v = ref::RoundToStorage(dt, gen(rng));
  return t;
}

inline ref::Tensor Filled(DType dt, const Shape& shape, std::vector<double> values) {
  ref::Tensor t{dt, shape, std::move(values)};
  for (double& v : t.data) v = ref::RoundToStorage(dt, v);
  return t;
}

// ---- comparison -----------------------------------------------------------

struct Tolerance {
  double rtol = 0, atol = 0;
};
// PyTorch's torch.testing.assert_close defaults.
inline Tolerance DefaultTolerance(DType dt) {
  switch (dt) {
    case DType::kFloat32:
      return {1.3e-6, 1e-5};
    case DType::kFloat16:
      return {1e-3, 1e-5};
    case DType::kBFloat16:
      return {1.6e-2, 1e-5};
    default:
      return {0, 0};
  }
}

inline bool ValuesClose(double want, double got, Tolerance tol) {
  if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
  if (std::isinf(want) || std::isinf(got)) return want == got;
  return std::fabs(want - got) <= tol.atol + tol.rtol * std::fabs(want);
}

inline std::string IndexString(int64_t linear, const Shape& shape) {
  Shape idx(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    if (shape[d] > 0) {
      idx[d] = linear % shape[d];
      linear /= shape[d];
    }
  }
  return ir::ShapeStr(idx);
}

inline std::string FormatValue(double v) {
  std::ostringstream os;
  os.precision(9);
  os << v;
  return os.str();
}

// Element-wise comparison with the tolerance of `dtype` (exact for ints and
// bool); NaN equals NaN, infinities must match exactly. Reports the first
// mismatching index, both values and the number of mismatches.
inline ::testing::AssertionResult AllClose(const ref::Tensor& want, const ref::Tensor& got, DType dtype,
                                           Tolerance tol) {
  if (want.shape != got.shape)
    return ::testing::AssertionFailure() << "shape mismatch: expected " << ShapeString(want.shape) << ", got "
                                         << ShapeString(got.shape);
  if (want.data.size() != got.data.size())
    return ::testing::AssertionFailure() << "size mismatch: expected " << want.data.size() << " values, got "
                                         << got.data.size();
  int64_t bad = 0, first = -1;
  for (size_t i = 0; i < want.data.size(); ++i) {
    if (!ValuesClose(want.data[i], got.data[i], tol)) {
      if (first < 0) first = static_cast<int64_t>(i);
      ++bad;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  auto f = ::testing::AssertionFailure();
  f << bad << " of " << want.data.size() << " elements differ (dtype " << DTypeName(dtype) << ", shape "
    << ShapeString(want.shape) << ", rtol " << tol.rtol << ", atol " << tol.atol << "); first at index " << first << " "
    << IndexString(first, want.shape) << ": expected " << FormatValue(want.data[first]) << ", got "
    << FormatValue(got.data[first]);
  int shown = 0;
  for (size_t i = first + 1; i < want.data.size() && shown < 4; ++i) {
    if (!ValuesClose(want.data[i], got.data[i], tol)) {
      f << "; at " << i << ": expected " << FormatValue(want.data[i]) << ", got " << FormatValue(got.data[i]);
      ++shown;
    }
  }
  return f;
}
inline ::testing::AssertionResult AllClose(const ref::Tensor& want, const ref::Tensor& got, DType dtype) {
  return AllClose(want, got, dtype, DefaultTolerance(dtype));
}
inline void ExpectClose(const ref::Tensor& want, const ref::Tensor& got, DType dtype) {
  EXPECT_TRUE(AllClose(want, got, dtype));
}

// Bit-exact comparison of two results of the same kernel.
inline ::testing::AssertionResult BitsEqual(const ref::Tensor& a, const ref::Tensor& b) {
  if (a.shape != b.shape || a.dtype != b.dtype) return ::testing::AssertionFailure() << "shape/dtype differ";
  std::vector<uint8_t> x = ref::ToBytes(a), y = ref::ToBytes(b);
  for (size_t i = 0; i < x.size(); ++i) {
    if (x[i] != y[i]) {
      size_t e = i / DTypeSize(a.dtype);
      return ::testing::AssertionFailure()
             << "bits differ at element " << e << ": " << FormatValue(a.data[e]) << " vs " << FormatValue(b.data[e]);
    }
  }
  return ::testing::AssertionSuccess();
}

// ---- buffers --------------------------------------------------------------

// A byte buffer with guard zones before and after the payload, to catch
// out-of-bounds reads' neighbours being written and out-of-bounds writes.
class GuardedBuffer {
 public:
  static constexpr size_t kGuard = 64;
  static constexpr uint8_t kGuardByte = 0xA5;

  explicit GuardedBuffer(size_t bytes, uint8_t fill = 0xCD) : bytes_(bytes), storage_(bytes + 2 * kGuard, kGuardByte) {
    std::memset(data(), fill, bytes_);
  }
  explicit GuardedBuffer(const std::vector<uint8_t>& payload) : GuardedBuffer(payload.size()) {
    if (!payload.empty()) std::memcpy(data(), payload.data(), payload.size());
  }
  uint8_t* data() { return storage_.data() + kGuard; }
  const uint8_t* data() const { return storage_.data() + kGuard; }
  size_t bytes() const { return bytes_; }
  bool GuardsIntact() const {
    for (size_t i = 0; i < kGuard; ++i)
      if (storage_[i] != kGuardByte || storage_[kGuard + bytes_ + i] != kGuardByte) return false;
    return true;
  }
  std::vector<uint8_t> Payload() const { return {data(), data() + bytes_}; }

 private:
  size_t bytes_;
  std::vector<uint8_t> storage_;
};

inline size_t ByteSize(DType dt, const Shape& s) {
  return static_cast<size_t>(ir::NumElements(s, "test")) * DTypeSize(dt);
}

// ---- running kernels ------------------------------------------------------

struct RunOutput {
  std::vector<ref::Tensor> outputs;
  std::string problems;  // guard/input/bool-encoding violations, empty when fine
};

// Launches `k` with the given full input tensors (one per input slot) using
// Launch(span<TensorArg>, span<TensorArg>), with exact-capacity guarded
// buffers, and reads the outputs back.
inline RunOutput RunKernel(Kernel& k, const std::vector<ref::Tensor>& inputs, uint8_t out_fill = 0xCD) {
  const ir::Graph& g = GetGraph(k);
  std::vector<Shape> in_shapes;
  for (const auto& t : inputs) in_shapes.push_back(t.shape);
  std::vector<Shape> out_shapes = k.OutputShapes(in_shapes);
  RunOutput r;
  std::vector<GuardedBuffer> in_bufs, out_bufs;
  std::vector<std::vector<uint8_t>> in_bytes;
  std::vector<TensorArg> in_args, out_args;
  in_bufs.reserve(inputs.size());
  for (const auto& t : inputs) {
    in_bytes.push_back(ref::ToBytes(t));
    in_bufs.emplace_back(in_bytes.back());
    in_args.push_back({in_bufs.back().data(), t.shape, in_bufs.back().bytes()});
  }
  out_bufs.reserve(out_shapes.size());
  for (size_t i = 0; i < out_shapes.size(); ++i) {
    DType dt = g.nodes[g.outputs[i]].dtype;
    out_bufs.emplace_back(ByteSize(dt, out_shapes[i]), out_fill);
    out_args.push_back({out_bufs.back().data(), out_shapes[i], out_bufs.back().bytes()});
  }
  k.Launch(std::span<const TensorArg>(in_args), std::span<const TensorArg>(out_args));
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!in_bufs[i].GuardsIntact()) r.problems += "input " + std::to_string(i) + " guard overwritten; ";
    if (in_bufs[i].Payload() != in_bytes[i]) r.problems += "input " + std::to_string(i) + " modified; ";
  }
  for (size_t i = 0; i < out_shapes.size(); ++i) {
    DType dt = g.nodes[g.outputs[i]].dtype;
    if (!out_bufs[i].GuardsIntact()) r.problems += "output " + std::to_string(i) + " written out of bounds; ";
    if (dt == DType::kBool) {
      for (size_t j = 0; j < out_bufs[i].bytes(); ++j) {
        if (out_bufs[i].data()[j] > 1) {
          r.problems += "output " + std::to_string(i) + " bool byte " + std::to_string(j) + " is " +
                        std::to_string(out_bufs[i].data()[j]) + " (not 0/1); ";
          break;
        }
      }
    }
    r.outputs.push_back(ref::FromBytes(out_bufs[i].data(), dt, out_shapes[i]));
  }
  return r;
}

// An Adam step on dynamic [n] tensors: inputs p, g, m, v; outputs p', m',
// v' (beta 0.9 / 0.999 at step 10, eps 1e-8).
inline void BuildAdam(Kernel& k, double lr = 1e-3) {
  auto* p = k.Load(nullptr, {-1}, DType::kFloat32);
  auto* g = k.Load(nullptr, {-1}, DType::kFloat32);
  auto* m = k.Load(nullptr, {-1}, DType::kFloat32);
  auto* v = k.Load(nullptr, {-1}, DType::kFloat32);
  auto* m1 = k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, m, 0.9), k.Binary(BinaryOp::kMul, g, 0.1));
  auto* v1 = k.Binary(BinaryOp::kAdd, k.Binary(BinaryOp::kMul, v, 0.999),
                      k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kMul, g, g), 0.001));
  auto* den = k.Binary(BinaryOp::kAdd, k.Unary(UnaryOp::kSqrt, k.Binary(BinaryOp::kDiv, v1, 0.00995)), 1e-8);
  auto* upd = k.Binary(BinaryOp::kDiv, k.Binary(BinaryOp::kMul, k.Binary(BinaryOp::kDiv, m1, 0.65), lr), den);
  k.Store(nullptr, k.Binary(BinaryOp::kSub, p, upd));
  k.Store(nullptr, m1);
  k.Store(nullptr, v1);
}

// Buffers for one launch; outputs sized from the kernel's output shapes.
struct LaunchBuffers {
  std::vector<std::vector<uint8_t>> in, out;
  std::vector<TensorArg> in_args, out_args;
  LaunchBuffers(Kernel& k, const std::vector<ref::Tensor>& inputs) {
    std::vector<Shape> shapes;
    for (const auto& t : inputs) shapes.push_back(t.shape);
    auto out_shapes = k.OutputShapes(shapes);
    const ir::Graph& g = GetGraph(k);
    for (const auto& t : inputs) in.push_back(ref::ToBytes(t));
    for (size_t i = 0; i < inputs.size(); ++i) in_args.push_back({in[i].data(), inputs[i].shape, in[i].size()});
    for (size_t i = 0; i < out_shapes.size(); ++i) {
      out.emplace_back(ByteSize(g.nodes[g.outputs[i]].dtype, out_shapes[i]), 0xAB);
      out_args.push_back({out.back().data(), out_shapes[i], out.back().size()});
    }
  }
};

// Runs `k` and the reference on `inputs` and compares every output.
inline ::testing::AssertionResult CheckKernel(Kernel& k, const std::vector<ref::Tensor>& inputs,
                                              const Tolerance* tol = nullptr) {
  std::vector<ref::Tensor> want;
  try {
    want = ref::Evaluate(GetGraph(k), inputs);
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "reference failed: " << e.what() << "\n" << k.Dump();
  }
  RunOutput got;
  try {
    got = RunKernel(k, inputs);
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "launch failed: " << e.what() << "\n" << k.Dump();
  }
  if (!got.problems.empty()) return ::testing::AssertionFailure() << got.problems << "\n" << k.Dump();
  if (got.outputs.size() != want.size())
    return ::testing::AssertionFailure() << "kernel produced " << got.outputs.size() << " outputs, reference "
                                         << want.size();
  for (size_t i = 0; i < want.size(); ++i) {
    DType dt = want[i].dtype;
    auto res = tol ? AllClose(want[i], got.outputs[i], dt, *tol) : AllClose(want[i], got.outputs[i], dt);
    if (!res) {
      std::ostringstream in_desc;
      for (size_t j = 0; j < inputs.size(); ++j)
        in_desc << " in" << j << "=" << DTypeName(inputs[j].dtype) << ShapeString(inputs[j].shape);
      return ::testing::AssertionFailure()
             << "output " << i << ": " << res.message() << "\ninputs:" << in_desc.str() << "\n"
             << k.Dump();
    }
  }
  return ::testing::AssertionSuccess();
}

// Convenience for Dims arguments.
inline Dims D(const Shape& s) { return Dims(s.data(), s.size()); }

}  // namespace dvm::test
