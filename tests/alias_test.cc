// Buffers a launch's arguments share. An output over an input (in place, as
// an optimizer or x.add_(y) runs) gives what separate buffers give: in
// place where the program reads every lane before it writes there, from a
// copy of the input otherwise. Outputs that overlap each other, and stacked
// launches that write what another reads, are clear errors before anything
// runs.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "bytecode/format.h"
#include "test_util.h"
#include "vm/cpu/vm.h"

namespace dvm::test {
namespace {

using Build = std::function<void(Kernel&)>;

// The tensor indices of input slot `in` and output slot `out` of `k`'s last
// program, and whether the VM lets them share a buffer.
bool InPlaceOk(Kernel& k, int in, int out) {
  bc::Program p;
  bc::Parse(k.Bytecode(), p);
  int ti = -1, to = -1;
  for (size_t t = 0; t < p.tensors.size(); ++t) {
    if (p.tensors[t].kind == bc::TensorKind::kInput && p.tensors[t].slot == in) ti = static_cast<int>(t);
    if (p.tensors[t].kind == bc::TensorKind::kOutput && p.tensors[t].slot == out) to = static_cast<int>(t);
  }
  return vm::InPlaceSafe(p, ti, to);
}

void Adam(Kernel& k) { BuildAdam(k); }

// out0 = x * 2, out1 = x + 1: written over x, out0 is stored before x is
// read for out1; out1 after x's last read.
void TwoOfX(Kernel& k) {
  auto* x = k.Load(nullptr, {-1}, DType::kFloat32);
  k.Store(nullptr, k.Binary(BinaryOp::kMul, x, 2.0));
  k.Store(nullptr, k.Binary(BinaryOp::kAdd, x, 1.0));
}

TEST(Aliasing, InPlaceWhereEveryLaneIsReadFirst) {
  Kernel adam(KernelType::kDynamic), two(KernelType::kDynamic);
  Adam(adam);
  TwoOfX(two);
  for (int64_t n : {5, 4099}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    (void)adam.OutputShapes(std::vector<Shape>(4, Shape{n}));
    EXPECT_TRUE(InPlaceOk(adam, 0, 0)) << adam.Das();  // p' over p
    EXPECT_TRUE(InPlaceOk(adam, 2, 1)) << adam.Das();  // m' over m
    EXPECT_TRUE(InPlaceOk(adam, 3, 2)) << adam.Das();  // v' over v
    EXPECT_TRUE(InPlaceOk(adam, 1, 0));                // p' over g: g's last read comes first
    EXPECT_FALSE(InPlaceOk(adam, 0, 1));               // m' over p: p is read last
    EXPECT_FALSE(InPlaceOk(adam, 0, 2));               // v' over p
    (void)two.OutputShapes(std::vector<Shape>{Shape{n}});
    EXPECT_FALSE(InPlaceOk(two, 0, 0)) << two.Das();
    EXPECT_TRUE(InPlaceOk(two, 0, 1)) << two.Das();
  }
}

// Runs `build` with separate buffers, then with output `out` in input
// `in`'s buffer shifted by `shift` elements (0: the very buffer), and
// expects the same output bits.
void ExpectAliasedEqualsSeparate(const Build& build, const std::vector<ref::Tensor>& inputs, int in, int out,
                                 int64_t shift = 0) {
  Kernel k(KernelType::kDynamic);
  build(k);
  std::vector<Shape> shapes;
  for (const auto& t : inputs) shapes.push_back(t.shape);
  const std::vector<Shape> out_shapes = k.OutputShapes(shapes);
  LaunchBuffers sep(k, inputs);
  k.Launch(sep.in_args, sep.out_args);
  // The aliased launch: input `in` gets room for the shift.
  LaunchBuffers al(k, inputs);
  const size_t esize = 4, in_bytes = al.in[in].size(), out_bytes = al.out[out].size();
  std::vector<uint8_t> shared(std::max(in_bytes, out_bytes + shift * esize) + 64, 0xEE);
  std::memcpy(shared.data(), al.in[in].data(), in_bytes);
  al.in_args[in].data = shared.data();
  al.out_args[out].data = shared.data() + shift * esize;
  const uint64_t copies = k.stats().input_copies;
  k.Launch(al.in_args, al.out_args);
  // In place exactly where the program allows it, else one copy.
  EXPECT_EQ(k.stats().input_copies - copies, shift == 0 && InPlaceOk(k, in, out) ? 0u : 1u);
  for (size_t o = 0; o < out_shapes.size(); ++o) {
    const uint8_t* got = o == static_cast<size_t>(out) ? shared.data() + shift * esize : al.out[o].data();
    EXPECT_EQ(0, std::memcmp(got, sep.out[o].data(), sep.out[o].size())) << "output " << o << "\n" << k.Das();
  }
}

TEST(Aliasing, OutputsOverInputsEqualSeparateBuffers) {
  Rng rng(41);
  auto T = [&](Shape s) { return MakeTensor(DType::kFloat32, s, Uniform(-1, 1), rng); };
  for (int threads : {1, 2}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    SetNumThreads(threads);
    for (int64_t n : {1, 5, 100, 4099, 70001}) {
      SCOPED_TRACE("n=" + std::to_string(n));
      // Elementwise: read first (in place) or written first (a copy).
      ExpectAliasedEqualsSeparate(TwoOfX, {T({n})}, 0, 0);
      ExpectAliasedEqualsSeparate(TwoOfX, {T({n})}, 0, 1);
      // Adam in place, and p' over g (a copy of g).
      std::vector<ref::Tensor> adam_in = {T({n}), T({n}), T({n}),
                                          MakeTensor(DType::kFloat32, {n}, Uniform(0, 1e-4), rng)};
      for (auto [i, o] : {std::pair{0, 0}, {2, 1}, {3, 2}, {1, 0}, {0, 2}})
        ExpectAliasedEqualsSeparate(Adam, adam_in, i, o);
      // An output one element past its input, and one element before.
      if (n > 1) {
        ExpectAliasedEqualsSeparate(TwoOfX, {T({n})}, 0, 1, 1);
        const Build sum = [](Kernel& k) {
          auto* x = k.Load(nullptr, {-1}, DType::kFloat32);
          auto* y = k.Load(nullptr, {-1}, DType::kFloat32);
          k.Store(nullptr, k.Binary(BinaryOp::kAdd, x, y));
        };
        ExpectAliasedEqualsSeparate(sum, {T({n}), T({n})}, 1, 0, 1);
      }
    }
    // A softmax over rows in place (ROW stages; long rows: several stages).
    const Build softmax = [](Kernel& k) {
      auto* x = k.Load(nullptr, {-1, -1}, DType::kFloat32);
      auto* e = k.Unary(UnaryOp::kExp, k.Binary(BinaryOp::kSub, x, k.Reduce(ReduceOp::kMax, x, {1}, true)));
      k.Store(nullptr, k.Binary(BinaryOp::kDiv, e, k.Reduce(ReduceOp::kSum, e, {1}, true)));
    };
    ExpectAliasedEqualsSeparate(softmax, {T({33, 1000})}, 0, 0);
    ExpectAliasedEqualsSeparate(softmax, {T({3, 40000})}, 0, 0);
    // A product written over its left operand (square: the same bytes).
    const Build mm = [](Kernel& k) {
      auto* a = k.Load(nullptr, {-1, -1}, DType::kFloat32);
      auto* b = k.Load(nullptr, {-1, -1}, DType::kFloat32);
      k.Store(nullptr, k.Unary(UnaryOp::kRelu, k.MatMul(a, b)));
    };
    ExpectAliasedEqualsSeparate(mm, {T({64, 64}), T({64, 64})}, 0, 0);
    // A row broadcast over the first row of its output.
    const Build bias = [](Kernel& k) {
      auto* x = k.Load(nullptr, {-1, -1}, DType::kFloat32);
      auto* b = k.Load(nullptr, {1, -1}, DType::kFloat32);
      k.Store(nullptr, k.Binary(BinaryOp::kAdd, x, b));
    };
    ExpectAliasedEqualsSeparate(bias, {T({40, 300}), T({1, 300})}, 1, 0);
  }
  SetNumThreads(2);
}

// A static kernel launched with raw pointers: x * 3 over x is stored before
// x is read for x + 0.5, so that reads a copy.
TEST(Aliasing, StaticKernelOverItsInput) {
  const int64_t n = 5000;
  std::vector<float> x(n), half(n);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(i % 97) - 40.0f;
  const std::vector<float> x0 = x;
  Kernel k(KernelType::kStatic);
  auto* a = k.Load(nullptr, {n}, DType::kFloat32);
  k.Store(nullptr, k.Binary(BinaryOp::kMul, a, 3.0));
  k.Store(nullptr, k.Binary(BinaryOp::kAdd, a, 0.5));
  void* ins[] = {x.data()};
  void* outs[] = {x.data(), half.data()};
  k.Launch(std::span<void* const>(ins), std::span<void* const>(outs));
  EXPECT_EQ(k.stats().input_copies, 1u);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(x[i], x0[i] * 3.0f) << i;
    ASSERT_EQ(half[i], x0[i] + 0.5f) << i;
  }
}

TEST(Aliasing, OverlappingOutputsAreAnError) {
  Kernel k(KernelType::kDynamic);
  TwoOfX(k);
  std::vector<float> x(100, 1.0f), o(150, -7.0f);
  const std::vector<TensorArg> in = {{x.data(), {100}, 400}};
  const std::vector<TensorArg> out = {{o.data(), {}, 400}, {o.data() + 50, {}, 400}};
  try {
    k.Launch(in, out);
    ADD_FAILURE() << "overlapping outputs launched";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outputs 0 and 1 overlap"), std::string::npos) << e.what();
  }
  for (float v : o) ASSERT_EQ(v, -7.0f);  // nothing written
  for (float v : x) ASSERT_EQ(v, 1.0f);
}

TEST(Aliasing, StackedLaunchesThatShareWhatOneWritesAreAnError) {
  Kernel adam(KernelType::kDynamic), two(KernelType::kDynamic);
  Adam(adam);
  TwoOfX(two);
  const int64_t n = 300;
  std::vector<float> buf(8 * n, 0.5f), out(4 * n, -7.0f);
  auto arg = [&](float* p) { return TensorArg{p, {n}, n * 4}; };
  KernelStack stack;
  // In place where the program allows it: accepted (Adam over p, m, v).
  const std::vector<TensorArg> ain = {arg(&buf[0]), arg(&buf[n]), arg(&buf[2 * n]), arg(&buf[3 * n])};
  const std::vector<TensorArg> aout = {arg(&buf[0]), arg(&buf[2 * n]), arg(&buf[3 * n])};
  stack.Add(adam, ain, aout);
  // Written over an input it reads later: rejected at Add, the stack as it was.
  const std::vector<TensorArg> tin = {arg(&buf[4 * n])};
  try {
    stack.Add(two, tin, std::vector<TensorArg>{arg(&buf[4 * n]), arg(&buf[5 * n])});
    ADD_FAILURE() << "an output over an input read after it was stacked";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("launch 1: input 0 overlaps an output"), std::string::npos) << e.what();
  }
  EXPECT_EQ(stack.size(), 1u);
  // One launch's output over another's input: rejected at Launch.
  stack.Add(two, tin, std::vector<TensorArg>{arg(&out[0]), arg(&buf[n])});  // g of the Adam launch
  try {
    stack.Launch();
    ADD_FAILURE() << "a stack whose launches share a written buffer ran";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("launch 1's output 1 overlaps launch 0's input 1"), std::string::npos)
        << e.what();
  }
  for (int64_t i = 0; i < 8 * n; ++i) ASSERT_EQ(buf[i], 0.5f) << i;  // nothing ran
  for (float v : out) ASSERT_EQ(v, -7.0f);
  // The same launches over separate buffers run.
  stack.Clear();
  stack.Add(adam, ain, aout);
  stack.Add(two, tin, std::vector<TensorArg>{arg(&out[0]), arg(&out[n])});
  stack.Launch();
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[n], 1.5f);
  EXPECT_NE(buf[0], 0.5f);  // p' over p
}

}  // namespace
}  // namespace dvm::test
