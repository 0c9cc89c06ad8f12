// Symbolic shapes (ir/sym.h): canonical expressions, the deduction engine,
// binding and checking, with the error messages users see.
#include "ir/sym.h"

#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "dvm/dvm.h"

namespace dvm::sym {

// Readable gtest failures.
void PrintTo(const Expr& e, std::ostream* os) { *os << ToString(e); }

namespace {

constexpr int64_t kMax64 = std::numeric_limits<int64_t>::max();
constexpr int64_t kMin64 = std::numeric_limits<int64_t>::min();

// Runs `f`, expecting a dvm::Error whose message contains every piece of
// `parts`; returns the message.
template <class F>
std::string ExpectError(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "expected dvm::Error, nothing was thrown";
  } catch (const Error& e) {
    const std::string m = e.what();
    for (const std::string& p : parts)
      EXPECT_NE(m.find(p), std::string::npos) << "message \"" << m << "\" lacks \"" << p << "\"";
    return m;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected dvm::Error, got another exception: " << e.what();
  }
  return "";
}

using Named = std::vector<std::pair<std::string, int64_t>>;

Expr S(int id) { return Expr::Symbol(id); }

// ---- expressions ---------------------------------------------------------------------

TEST(SymExpr, ConstantsAndSymbols) {
  EXPECT_TRUE(Expr().is_const());
  EXPECT_EQ(Expr().value(), 0);
  EXPECT_EQ(Expr(), Expr(0));
  EXPECT_EQ(Expr(-7).value(), -7);
  EXPECT_FALSE(Expr(1).is_symbol());
  Expr a = S(3);
  EXPECT_TRUE(a.is_symbol());
  EXPECT_FALSE(a.is_const());
  EXPECT_EQ(a.symbol(), 3);
  EXPECT_FALSE((2 * a).is_symbol());
  EXPECT_FALSE((a + 1).is_symbol());
  EXPECT_THROW(a.value(), Error);
  EXPECT_THROW(Expr(4).symbol(), Error);
  EXPECT_THROW(Expr::Symbol(-1), Error);
  EXPECT_NE(S(0), S(1));
  EXPECT_EQ(S(2), S(2));
}

TEST(SymExpr, AdditionIsCanonical) {
  Expr a = S(0), b = S(1), c = S(2);
  EXPECT_EQ(a + b, b + a);
  EXPECT_EQ((a + b) + c, a + (c + b));
  EXPECT_EQ(a + a, 2 * a);
  EXPECT_EQ(a + a, a * 2);
  EXPECT_EQ(a - a, Expr(0));
  EXPECT_TRUE((a - a).is_const());
  EXPECT_EQ(a + 0, a);
  EXPECT_EQ(0 + a, a);
  EXPECT_EQ((a + 3) - (a + 1), Expr(2));
  EXPECT_EQ(3 * a - 2 * a, a);
  EXPECT_TRUE((3 * a - 2 * a).is_symbol());
  EXPECT_NE(a + 1, a + 2);
  EXPECT_NE(a + b, a * b);
  EXPECT_EQ(Expr(2) + Expr(3), Expr(5));
  EXPECT_EQ(Expr(2) - Expr(3), Expr(-1));
}

TEST(SymExpr, MultiplicationIsCanonical) {
  Expr a = S(0), b = S(1), c = S(2);
  EXPECT_EQ(a * b, b * a);
  EXPECT_EQ((a * b) * c, c * (b * a));
  EXPECT_EQ(a * 0, Expr(0));
  EXPECT_EQ(0 * (a + b), Expr(0));
  EXPECT_EQ(a * 1, a);
  EXPECT_EQ((a + 1) * (a - 1), a * a - 1);
  EXPECT_EQ((a + b) * (a + b), a * a + 2 * a * b + b * b);
  EXPECT_EQ((a + b) * (a - b), a * a - b * b);
  EXPECT_NE(a * a, a);
  EXPECT_NE(a * a * b, a * b * b);
  EXPECT_EQ(Expr(6) * Expr(7), Expr(42));
  EXPECT_EQ(2 * (a + 3) - 2 * a, Expr(6));
}

TEST(SymExpr, FloorDivConstants) {
  EXPECT_EQ(FloorDiv(7, 2), Expr(3));
  EXPECT_EQ(FloorDiv(-7, 2), Expr(-4));
  EXPECT_EQ(FloorDiv(7, -2), Expr(-4));
  EXPECT_EQ(FloorDiv(-7, -2), Expr(3));
  EXPECT_EQ(FloorDiv(6, 3), Expr(2));
  EXPECT_EQ(FloorDiv(-6, 3), Expr(-2));
  EXPECT_EQ(FloorDiv(0, 5), Expr(0));
  EXPECT_EQ(FloorDiv(kMin64, 1), Expr(kMin64));
  ExpectError([] { FloorDiv(7, 0); }, {"division by zero"});
  ExpectError([] { FloorDiv(S(0) + 1, 0); }, {"division by zero", "s0 + 1"});
  ExpectError([] { FloorDiv(kMin64, -1); }, {"overflow"});
}

TEST(SymExpr, FloorDivSimplifies) {
  Expr a = S(0), b = S(1);
  EXPECT_EQ(FloorDiv(a, 1), a);
  EXPECT_EQ(FloorDiv(a, -1), -1 * a);
  EXPECT_EQ(FloorDiv(2 * a + 4, 2), a + 2);
  EXPECT_EQ(FloorDiv(6 * a * b - 9 * b, 3), 2 * a * b - 3 * b);
  EXPECT_EQ(FloorDiv(a * b, b), a);
  EXPECT_EQ(FloorDiv(a * b, a), b);
  EXPECT_EQ(FloorDiv(6 * a * b, 2 * b), 3 * a);
  EXPECT_EQ(FloorDiv(a * b + b, b), a + 1);
  EXPECT_EQ(FloorDiv(2 * a + 2, a + 1), Expr(2));
  EXPECT_EQ(FloorDiv(a, a), Expr(1));
  EXPECT_EQ(FloorDiv(Expr(0), a), Expr(0));
  // Constant parts come out of the floor: floor((2a + 3) / 2) = a + 1.
  EXPECT_EQ(FloorDiv(2 * a + 3, 2), a + 1);
  // The remainder keeps the floor; equal functions written two ways agree.
  EXPECT_EQ(FloorDiv(a - 1, 2) + 1, FloorDiv(a + 1, 2));
  EXPECT_EQ(FloorDiv(3 * a, 2), a + FloorDiv(a, 2));
  EXPECT_EQ(FloorDiv(2 * a, 4), FloorDiv(a, 2));
  EXPECT_EQ(FloorDiv(-1 * a, -2), FloorDiv(a, 2));
  EXPECT_EQ(FloorDiv(FloorDiv(a, 2), 3), FloorDiv(a, 6));
  EXPECT_EQ(FloorDiv(2 * a, 2 * b), FloorDiv(a, b));
  // Irreducible: atoms that stay atoms.
  Expr h = FloorDiv(a, 2);
  EXPECT_FALSE(h.is_const());
  EXPECT_FALSE(h.is_symbol());
  EXPECT_NE(h, a);
  EXPECT_NE(h, FloorDiv(a, 3));
  EXPECT_NE(FloorDiv(a, b), FloorDiv(b, a));
  EXPECT_EQ(2 * h - h, h);
  EXPECT_EQ(h.symbols(), std::vector<int>{0});
  EXPECT_EQ(FloorDiv(a + b, b).symbols(), (std::vector<int>{0, 1}));
  // The floor is really a floor.
  for (int64_t v = -9; v <= 9; ++v) {
    std::vector<int64_t> bind{v};
    EXPECT_EQ(h.Eval(bind), v >= 0 ? v / 2 : -((-v + 1) / 2)) << v;
    EXPECT_EQ(FloorDiv(3 * a + 1, 2).Eval(bind), (3 * v + 1 - ((3 * v + 1) % 2 + 2) % 2) / 2) << v;
  }
}

TEST(SymExpr, MaxCases) {
  Expr a = S(0), b = S(1), c = S(2);
  EXPECT_EQ(Max(a, a), a);
  EXPECT_EQ(Max(3, 5), Expr(5));
  EXPECT_EQ(Max(-3, -5), Expr(-3));
  EXPECT_EQ(Max(a, b), Max(b, a));
  EXPECT_NE(Max(a, b), a);
  EXPECT_NE(Max(a, b), Max(a, c));
  EXPECT_EQ(Max(a + 1, a), a + 1);
  EXPECT_EQ(Max(a, a + 1), a + 1);
  EXPECT_EQ(Max(a - 2, a + 3), a + 3);
  EXPECT_EQ(Max(Max(a, b), c), Max(a, Max(c, b)));
  EXPECT_EQ(Max(Max(a, b), a), Max(a, b));
  EXPECT_EQ(Max(Max(a, 2), 3), Max(a, 3));
  EXPECT_EQ(Max(Max(a, 3), Max(2, b)), Max(Max(a, b), 3));
  Expr m1 = Max(a, 1);
  EXPECT_FALSE(m1.is_const());
  EXPECT_FALSE(m1.is_symbol());
  EXPECT_NE(m1, a);
  std::vector<int64_t> bind{0, 7, 4};
  EXPECT_EQ(m1.Eval(bind), 1);
  EXPECT_EQ(Max(a, b).Eval(bind), 7);
  EXPECT_EQ(Max(Max(a, b), c).Eval(bind), 7);
  EXPECT_EQ((Max(a, b) + Max(b, a)), 2 * Max(a, b));
}

TEST(SymExpr, OverflowThrows) {
  Expr a = S(0);
  ExpectError([] { (void)(Expr(kMax64) + 1); }, {"overflow"});
  ExpectError([] { (void)(Expr(kMin64) - 1); }, {"overflow"});
  ExpectError([] { (void)(Expr(0) - Expr(kMin64)); }, {"overflow"});
  ExpectError([] { (void)(Expr(kMax64) * 2); }, {"overflow"});
  ExpectError([&] { (void)(kMax64 * a + kMax64 * a); }, {"overflow"});
  ExpectError([&] { (void)((kMax64 * a) * (a + 2)); }, {"overflow"});
  // Results at the edge of the range are fine.
  EXPECT_EQ(Expr(kMax64) + (-1) + 1, Expr(kMax64));
  EXPECT_EQ(Expr(kMin64) - kMin64, Expr(0));
  // Evaluation is checked too.
  std::vector<int64_t> big{int64_t{1} << 40, int64_t{1} << 40};
  ExpectError([&] { (a * S(1)).Eval(big); }, {"overflow"});
  ExpectError([&] { (a * a * a).Eval(big); }, {"overflow"});
  ExpectError([&] { (kMax64 * a + 1).Eval(std::vector<int64_t>{1}); }, {"overflow"});
  EXPECT_EQ((kMax64 * a).Eval(std::vector<int64_t>{1}), kMax64);
  ExpectError([&] { FloorDiv(a, S(1)).Eval(std::vector<int64_t>{5, 0}); }, {"division by zero"});
  ExpectError([&] { FloorDiv(a, -1 * S(1)).Eval(std::vector<int64_t>{kMin64, 1}); }, {"overflow"});
  ExpectError([&] { S(3).Eval(std::vector<int64_t>{1, 2}); }, {"s3"});
}

TEST(SymExpr, Eval) {
  Expr a = S(0), b = S(1);
  std::vector<int64_t> bind{5, 3};
  EXPECT_EQ(Expr(9).Eval(bind), 9);
  EXPECT_EQ(a.Eval(bind), 5);
  EXPECT_EQ((2 * a + 1).Eval(bind), 11);
  EXPECT_EQ((a * b - b).Eval(bind), 12);
  EXPECT_EQ(FloorDiv(a * b + 1, 4).Eval(bind), 4);
  EXPECT_EQ(FloorDiv(a, b).Eval(bind), 1);
  EXPECT_EQ(FloorDiv(a - 7, b).Eval(bind), -1);
  EXPECT_EQ(Max(a, 2 * b).Eval(bind), 6);
  EXPECT_EQ((a * a - 1).Eval(bind), 24);
}

TEST(SymExpr, HashAgreesWithEquality) {
  Expr a = S(0), b = S(1);
  EXPECT_EQ((a + b).Hash(), (b + a).Hash());
  EXPECT_EQ(((a + 1) * (a - 1)).Hash(), (a * a - 1).Hash());
  EXPECT_EQ(Max(a, b).Hash(), Max(b, a).Hash());
  EXPECT_EQ(Expr().Hash(), (a - a).Hash());
  EXPECT_NE((a + 1).Hash(), (a + 2).Hash());
  EXPECT_NE(a.Hash(), b.Hash());
  struct H {
    size_t operator()(const Expr& e) const { return e.Hash(); }
  };
  std::unordered_set<Expr, H> set{a + b, b + a, a * b, b * a, FloorDiv(a, 2), FloorDiv(2 * a, 4), Expr(3), Expr(1) + 2};
  EXPECT_EQ(set.size(), 4u);
}

TEST(SymExpr, ToString) {
  SymbolTable t;
  int seq = t.NewSymbol("seq"), heads = t.NewSymbol("heads");
  Expr s = S(seq), h = S(heads);
  EXPECT_EQ(ToString(2 * s + 1, &t), "2*seq + 1");
  EXPECT_EQ(ToString(h * s, &t), "seq*heads");
  EXPECT_EQ(ToString(FloorDiv(s, 2), &t), "floor(seq / 2)");
  EXPECT_EQ(ToString(FloorDiv(s + 1, 2), &t), "floor((seq + 1) / 2)");
  EXPECT_EQ(ToString(FloorDiv(s, h), &t), "floor(seq / heads)");
  EXPECT_EQ(ToString(FloorDiv(s + 1, 2 * h), &t), "floor((seq + 1) / (2*heads))");
  EXPECT_EQ(ToString(Max(h, s), &t), "max(seq, heads)");
  EXPECT_EQ(ToString(Max(Max(h, s), 1), &t), "max(seq, heads, 1)");
  EXPECT_EQ(ToString(s * s - 1, &t), "seq*seq - 1");
  EXPECT_EQ(ToString(3 - s, &t), "-seq + 3");
  EXPECT_EQ(ToString(-2 * s * h + s, &t), "-2*seq*heads + seq");
  EXPECT_EQ(ToString(Expr(), &t), "0");
  EXPECT_EQ(ToString(Expr(-12)), "-12");
  EXPECT_EQ(ToString(Expr(kMin64)), "-9223372036854775808");
  EXPECT_EQ(ToString(2 * s + 1), "2*s0 + 1");
  EXPECT_EQ(ToString(S(1) * S(0)), "s0*s1");
}

// Random expression trees checked against direct evaluation: every
// simplification must preserve the value wherever the original is defined,
// and building the same function in another order gives the same form.
struct Rand {
  using Fn = std::function<std::optional<int64_t>(const std::vector<int64_t>&)>;
  struct Node {
    Expr e;
    Fn f;
  };
  std::mt19937_64 rng{12345};
  int64_t Int(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }

  Node Make(int depth) {
    int k = depth == 0 ? static_cast<int>(Int(0, 1)) : static_cast<int>(Int(0, 6));
    switch (k) {
      case 0: {
        int64_t c = Int(-4, 4);
        return {c, [c](const auto&) { return std::optional<int64_t>(c); }};
      }
      case 1: {
        int id = static_cast<int>(Int(0, 2));
        return {S(id), [id](const auto& v) { return std::optional<int64_t>(v[id]); }};
      }
      default:
        break;
    }
    Node x = Make(depth - 1);
    Node y = Make(depth - 1);
    auto both = [](Fn fx, Fn fy, auto op) -> Fn {
      return [=](const std::vector<int64_t>& v) -> std::optional<int64_t> {
        auto p = fx(v), q = fy(v);
        if (!p || !q) return std::nullopt;
        return op(*p, *q);
      };
    };
    switch (k) {
      case 2:
        return {x.e + y.e, both(x.f, y.f, [](int64_t p, int64_t q) -> std::optional<int64_t> { return p + q; })};
      case 3:
        return {x.e - y.e, both(x.f, y.f, [](int64_t p, int64_t q) -> std::optional<int64_t> { return p - q; })};
      case 4:
        return {x.e * y.e, both(x.f, y.f, [](int64_t p, int64_t q) -> std::optional<int64_t> { return p * q; })};
      case 5: {
        if (Int(0, 1)) {
          int64_t c = Int(1, 4) * (Int(0, 3) ? 1 : -1);
          y = {c, [c](const auto&) { return std::optional<int64_t>(c); }};
        }
        return {FloorDiv(x.e, y.e), both(x.f, y.f, [](int64_t p, int64_t q) -> std::optional<int64_t> {
                  if (q == 0) return std::nullopt;
                  int64_t d = p / q;
                  return (p % q != 0 && ((p < 0) != (q < 0))) ? d - 1 : d;
                })};
      }
      default:
        return {Max(x.e, y.e),
                both(x.f, y.f, [](int64_t p, int64_t q) -> std::optional<int64_t> { return std::max(p, q); })};
    }
  }
};

TEST(SymExpr, RandomTreesKeepTheirValue) {
  Rand r;
  int checked = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    Rand::Node x, y;
    try {
      x = r.Make(static_cast<int>(r.Int(1, 4)));
      y = r.Make(static_cast<int>(r.Int(1, 3)));
    } catch (const Error&) {
      continue;  // a divisor simplified to the constant 0
    }
    ASSERT_EQ(x.e + y.e, y.e + x.e) << ToString(x.e) << " | " << ToString(y.e);
    ASSERT_EQ(x.e * y.e, y.e * x.e) << ToString(x.e) << " | " << ToString(y.e);
    ASSERT_EQ(Max(x.e, y.e), Max(y.e, x.e)) << ToString(x.e) << " | " << ToString(y.e);
    ASSERT_EQ((x.e + y.e) - y.e, x.e) << ToString(x.e) << " | " << ToString(y.e);
    ASSERT_EQ((x.e + y.e).Hash(), (y.e + x.e).Hash());
    for (int k = 0; k < 12; ++k) {
      std::vector<int64_t> v{r.Int(0, 6), r.Int(0, 6), r.Int(-3, 6)};
      auto want = x.f(v);
      if (!want) continue;
      ASSERT_EQ(x.e.Eval(v), *want) << ToString(x.e) << " at " << v[0] << ", " << v[1] << ", " << v[2];
      ++checked;
    }
  }
  EXPECT_GT(checked, 10000);
}

// ---- symbol table --------------------------------------------------------------------

TEST(SymTable, NewSymbolAndFind) {
  SymbolTable t;
  EXPECT_EQ(t.num_symbols(), 0);
  EXPECT_EQ(t.NewSymbol("batch"), 0);
  EXPECT_EQ(t.NewSymbol("seq"), 1);
  EXPECT_EQ(t.num_symbols(), 2);
  EXPECT_EQ(t.Find("seq"), 1);
  EXPECT_EQ(t.Find("batch"), 0);
  EXPECT_EQ(t.Find("nope"), -1);
  EXPECT_EQ(t.name(1), "seq");
  ExpectError([&] { t.NewSymbol("seq"); }, {"'seq'", "already exists"});
  ExpectError([&] { t.NewSymbol(""); }, {"name"});
  EXPECT_THROW(t.name(2), Error);
  EXPECT_THROW(t.Simplify(S(5)), Error);
  EXPECT_EQ(t.num_symbols(), 2);
}

TEST(SymTable, EqualMergesSymbols) {
  SymbolTable t;
  Expr a = S(t.NewSymbol("a")), b = S(t.NewSymbol("b")), c = S(t.NewSymbol("c"));
  EXPECT_FALSE(t.ProvablyEqual(a, b));
  // The lower id is the representative, whichever side it is on.
  EXPECT_EQ(t.Equal(b, a, "add (node 1)"), a);
  EXPECT_TRUE(t.ProvablyEqual(a, b));
  EXPECT_EQ(t.Simplify(b), a);
  EXPECT_EQ(t.Simplify(2 * b + a), 3 * a);
  EXPECT_EQ(t.Simplify(FloorDiv(b, a)), Expr(1));
  EXPECT_FALSE(t.ProvablyEqual(a, c));
  ASSERT_EQ(t.facts().size(), 1u);
  EXPECT_EQ(t.facts()[0].kind, SymbolTable::Fact::kEqual);
  EXPECT_EQ(t.facts()[0].a, b);
  EXPECT_EQ(t.facts()[0].why, "add (node 1)");
  // A fact that already holds is still recorded.
  EXPECT_EQ(t.Equal(a, b, "again"), a);
  EXPECT_EQ(t.facts().size(), 2u);
}

TEST(SymTable, TransitiveMerging) {
  SymbolTable t;
  std::vector<Expr> s;
  for (const char* n : {"a", "b", "c", "d", "e"}) s.push_back(S(t.NewSymbol(n)));
  t.Equal(s[0], s[1], "f1");
  t.Equal(s[1], s[2], "f2");
  EXPECT_TRUE(t.ProvablyEqual(s[0], s[2]));
  EXPECT_FALSE(t.ProvablyEqual(s[0], s[3]));
  // Two classes joined through non-representatives.
  t.Equal(s[4], s[3], "f3");
  t.Equal(s[4], s[2], "f4");
  for (int i = 0; i < 5; ++i) EXPECT_EQ(t.Simplify(s[i]), s[0]) << i;
  EXPECT_TRUE(t.ProvablyEqual(s[1] * s[3], s[4] * s[2]));
}

TEST(SymTable, BindingConstants) {
  SymbolTable t;
  Expr s = S(t.NewSymbol("s")), u = S(t.NewSymbol("u")), v = S(t.NewSymbol("v"));
  EXPECT_EQ(t.Equal(s, 768, "hidden"), Expr(768));
  EXPECT_EQ(t.Simplify(s), Expr(768));
  EXPECT_EQ(t.Simplify(2 * s + 1), Expr(1537));
  EXPECT_TRUE(t.ProvablyEqual(FloorDiv(s, 12), 64));
  // Members merged later see the constant too.
  t.Equal(u, s, "u");
  EXPECT_EQ(t.Simplify(u), Expr(768));
  // A constant on the left binds the symbol on the right.
  t.Equal(12, v, "heads");
  EXPECT_EQ(t.Simplify(s * v), Expr(768 * 12));
  // Linear facts are solved: 2*w + 4 == 10 gives w = 3.
  Expr w = S(t.NewSymbol("w"));
  EXPECT_EQ(t.Equal(2 * w + 4, 10, "lin"), Expr(3));
  EXPECT_EQ(t.Simplify(w), Expr(3));
}

TEST(SymTable, BindingExpressions) {
  SymbolTable t;
  Expr seq = S(t.NewSymbol("seq")), heads = S(t.NewSymbol("heads")), n = S(t.NewSymbol("n"));
  EXPECT_EQ(t.Equal(seq * heads, n, "reshape (node 2)"), seq * heads);
  EXPECT_EQ(t.Simplify(n), seq * heads);
  EXPECT_TRUE(t.ProvablyEqual(FloorDiv(n, heads), seq));
  t.Equal(heads, 8, "heads");
  EXPECT_EQ(t.Simplify(n), 8 * seq);
  // n is derived, so the caller needs only seq.
  Named named{{"seq", 5}};
  std::vector<int64_t> vals = t.Bind(named);
  EXPECT_EQ(vals, (std::vector<int64_t>{5, 8, 40}));
  t.Check(vals);
}

TEST(SymTable, NoCycles) {
  SymbolTable t;
  Expr a = S(t.NewSymbol("a")), b = S(t.NewSymbol("b")), c = S(t.NewSymbol("c"));
  t.Equal(a, b * c, "f1");  // a := b*c
  // b == a would need b := b*c (a cycle): only recorded.
  EXPECT_EQ(t.Equal(b, a, "f2"), b);
  EXPECT_EQ(t.Simplify(a), b * c);
  EXPECT_EQ(t.Simplify(b), b);
  EXPECT_EQ(t.facts().size(), 2u);
  // So Check decides at run time: c == 1 (or b == 0) satisfies it.
  t.Check(t.Bind(Named{{"b", 4}, {"c", 1}}));
  t.Check(t.Bind(Named{{"b", 0}, {"c", 9}}));
  ExpectError([&] { t.Check(t.Bind(Named{{"b", 4}, {"c", 2}})); }, {"'f2'", "b == a", "a = 8", "b = 4"});
}

TEST(SymTable, ContradictionsThrow) {
  SymbolTable t;
  Expr k = S(t.NewSymbol("k")), ctx = S(t.NewSymbol("ctx")), s = S(t.NewSymbol("s"));
  t.Equal(k, 5, "weights (node 1)");
  t.Equal(ctx, 7, "cache (node 2)");
  std::string m = ExpectError(
      [&] { t.Equal(k, ctx, "matmul inner dims (node 7)"); },
      {"matmul inner dims (node 7)", "k == ctx", "k == 5", "ctx == 7", "weights (node 1)", "cache (node 2)"});
  EXPECT_EQ(m.find("matmul inner dims (node 7): k == ctx contradicts"), 0u) << m;
  ExpectError([&] { t.Equal(k, 6, "reshape (node 3)"); }, {"reshape (node 3)", "k == 6", "k == 5"});
  ExpectError([&] { t.Equal(2, 3, "literal"); }, {"literal", "2 == 3"});
  // The sides differ by a constant: never equal.
  ExpectError([&] { t.Equal(s + 1, s, "shift (node 4)"); }, {"shift (node 4)", "s + 1 == s", "differ by 1"});
  // Nothing is recorded or changed by a failed Equal.
  EXPECT_EQ(t.facts().size(), 2u);
  EXPECT_EQ(t.Simplify(k), Expr(5));
  EXPECT_FALSE(t.Simplify(s).is_const());
}

TEST(SymTable, ContradictionsThroughMerges) {
  SymbolTable t;
  Expr a = S(t.NewSymbol("a")), b = S(t.NewSymbol("b"));
  t.Equal(a, b, "merge");
  ExpectError([&] { t.Equal(a + 1, b, "off by one"); }, {"off by one", "a + 1 == b", "merge"});
  t.Equal(b, 4, "four");
  ExpectError([&] { t.Equal(a, 3, "three"); }, {"three", "a == 3", "a == 4"});
  // Unsolvable and negative solutions.
  Expr c = S(t.NewSymbol("c"));
  ExpectError([&] { t.Equal(2 * c, 7, "odd"); }, {"odd", "2*c == 7", "no integer solution"});
  ExpectError([&] { t.Equal(c, -1, "neg"); }, {"neg", "c == -1", "c = -1", ">= 0"});
  ExpectError([&] { t.Equal(c + 3, 1, "neg2"); }, {"neg2", "c = -2"});
  EXPECT_EQ(t.facts().size(), 2u);
}

TEST(SymTable, UnsolvableFactsAreRecorded) {
  SymbolTable t;
  Expr a = S(t.NewSymbol("a")), b = S(t.NewSymbol("b")), c = S(t.NewSymbol("c")), d = S(t.NewSymbol("d"));
  EXPECT_EQ(t.Equal(a * b, c * d, "reshape (node 9)"), a * b);
  EXPECT_FALSE(t.ProvablyEqual(a * b, c * d));
  EXPECT_EQ(t.Simplify(a), a);
  ASSERT_EQ(t.facts().size(), 1u);
  t.Check(std::vector<int64_t>{2, 6, 3, 4});
  ExpectError(
      [&] {
        t.Check(std::vector<int64_t>{2, 6, 3, 5});
      },
      {"binding violates 'reshape (node 9)'", "a*b == c*d", "a = 2", "b = 6", "c = 3", "d = 5", "12", "15"});
}

TEST(SymTable, Broadcast) {
  SymbolTable t;
  Expr a = S(t.NewSymbol("a")), b = S(t.NewSymbol("b")), c = S(t.NewSymbol("c"));
  EXPECT_EQ(t.Broadcast(a, a, "same"), a);
  EXPECT_EQ(t.Broadcast(1, b, "one left"), b);
  EXPECT_EQ(t.Broadcast(a * b, 1, "one right"), a * b);
  EXPECT_EQ(t.Broadcast(1, 1, "ones"), Expr(1));
  EXPECT_EQ(t.Broadcast(4, 4, "fours"), Expr(4));
  EXPECT_EQ(t.Broadcast(a, 4, "const right"), Expr(4));
  EXPECT_EQ(t.Broadcast(4, a, "const left"), Expr(4));
  EXPECT_EQ(t.Broadcast(0, a, "zero"), Expr(0));
  EXPECT_EQ(t.Broadcast(a, b, "free"), Max(a, b));
  EXPECT_EQ(t.Broadcast(b, a, "free swapped"), Max(a, b));
  ASSERT_EQ(t.facts().size(), 10u);
  for (const auto& f : t.facts()) EXPECT_EQ(f.kind, SymbolTable::Fact::kBroadcast);
  ExpectError([&] { t.Broadcast(3, 4, "add (node 5)"); }, {"add (node 5)", "3", "4"});
  EXPECT_EQ(t.facts().size(), 10u);
  // Known values take part: c == 3 makes c vs 4 a hard error.
  t.Equal(c, 3, "c");
  ExpectError([&] { t.Broadcast(c, 4, "mul (node 6)"); }, {"mul (node 6)", "c = 3", "4"});
  EXPECT_EQ(t.Broadcast(c, 1, "c ok"), Expr(3));
  // Merged symbols broadcast as equal.
  t.Equal(a, b, "ab");
  EXPECT_EQ(t.Broadcast(b, a, "merged"), a);
}

TEST(SymTable, BindValues) {
  SymbolTable t;
  int a = t.NewSymbol("a"), b = t.NewSymbol("b"), c = t.NewSymbol("c"), d = t.NewSymbol("d");
  t.Equal(S(b), S(a), "ab");
  t.Equal(S(c), 16, "c");
  Named named{{"a", 3}, {"d", 0}};
  EXPECT_EQ(t.Bind(named), (std::vector<int64_t>{3, 3, 16, 0}));
  // Giving merged symbols the same value, or a constant its value, is fine.
  Named all{{"d", 2}, {"c", 16}, {"b", 3}, {"a", 3}};
  EXPECT_EQ(t.Bind(all), (std::vector<int64_t>{3, 3, 16, 2}));
  // b alone binds its class.
  EXPECT_EQ(t.Bind(Named{{"b", 7}, {"d", 1}})[a], 7);
  (void)d;
}

TEST(SymTable, BindErrors) {
  SymbolTable t;
  int a = t.NewSymbol("a"), b = t.NewSymbol("b"), seq = t.NewSymbol("seq"), hidden = t.NewSymbol("hidden");
  t.Equal(S(a), S(b), "matmul (node 3)");
  t.Equal(S(hidden), 768, "linear (node 4)");
  ExpectError([&] { t.Bind(Named{{"a", 3}, {"seq", 1}, {"foo", 2}}); }, {"unknown symbol 'foo'"});
  ExpectError([&] { t.Bind(Named{{"a", 3}}); }, {"symbol 'seq' is not bound"});
  ExpectError([&] { t.Bind(Named{{"seq", 3}}); }, {"symbol 'a' is not bound", "'b'"});
  ExpectError([&] { t.Bind(Named{{"a", 3}, {"seq", -1}}); }, {"'seq'", "-1", "negative"});
  std::string m = ExpectError(
      [&] {
        t.Bind(Named{{"a", 3}, {"b", 4}, {"seq", 1}});
      },
      {"symbol 'b' is the same as 'a'", "matmul (node 3)", "a = 3", "b = 4"});
  ExpectError(
      [&] {
        t.Bind(Named{{"a", 3}, {"seq", 1}, {"hidden", 512}});
      },
      {"'hidden'", "768", "512", "linear (node 4)"});
  ExpectError([&] { t.Bind(Named{{"a", 3}, {"seq", 1}, {"seq", 2}}); }, {"'seq'", "twice"});
  (void)seq;
  (void)m;
}

TEST(SymTable, BindErrorsNameTheChainOfFacts) {
  SymbolTable t;
  int x = t.NewSymbol("x"), y = t.NewSymbol("y"), z = t.NewSymbol("z"), w = t.NewSymbol("w");
  t.Equal(S(x), S(y), "first");
  t.Equal(S(w), S(z), "second");
  t.Equal(S(z), S(y), "third");
  ExpectError(
      [&] {
        t.Bind(Named{{"x", 1}, {"w", 2}});
      },
      {"'w' is the same as 'x'", "first", "second", "third", "x = 1", "w = 2"});
  // Only the facts that connect the two symbols are named.
  std::string m = ExpectError([&] { t.Bind(Named{{"x", 1}, {"y", 2}}); }, {"'y' is the same as 'x'", "first"});
  EXPECT_EQ(m.find("second"), std::string::npos) << m;
}

TEST(SymTable, BindDerivedValues) {
  SymbolTable t;
  int n = t.NewSymbol("n"), a = t.NewSymbol("a"), b = t.NewSymbol("b");
  t.Equal(S(n), S(a) - S(b), "slice (node 1)");
  EXPECT_EQ(t.Bind(Named{{"a", 9}, {"b", 4}}), (std::vector<int64_t>{5, 9, 4}));
  EXPECT_EQ(t.Bind(Named{{"a", 9}, {"b", 4}, {"n", 5}})[n], 5);
  ExpectError([&] { t.Bind(Named{{"a", 9}, {"b", 4}, {"n", 6}}); }, {"'n'", "a - b", "5", "n = 6", "slice (node 1)"});
  ExpectError([&] { t.Bind(Named{{"a", 4}, {"b", 9}}); }, {"'n'", "-5", "negative"});
}

TEST(SymTable, CheckViolations) {
  SymbolTable t;
  Expr k = S(t.NewSymbol("k")), ctx = S(t.NewSymbol("ctx")), a = S(t.NewSymbol("a")), b = S(t.NewSymbol("b"));
  t.Equal(k, ctx, "matmul inner dims (node 7)");
  t.Broadcast(a, b, "add (node 8)");
  // Fine bindings.
  t.Check(std::vector<int64_t>{5, 5, 3, 3});
  t.Check(std::vector<int64_t>{5, 5, 1, 3});
  t.Check(std::vector<int64_t>{5, 5, 3, 1});
  t.Check(t.Bind(Named{{"k", 2}, {"a", 1}, {"b", 9}}));
  std::string m = ExpectError([&] { t.Check(std::vector<int64_t>{5, 6, 3, 3}); }, {});
  EXPECT_EQ(m, "binding violates 'matmul inner dims (node 7)': k == ctx, but k = 5, ctx = 6");
  ExpectError(
      [&] {
        t.Check(std::vector<int64_t>{5, 5, 3, 4});
      },
      {"binding violates 'add (node 8)'", "broadcast(a, b)", "a = 3", "b = 4"});
  ExpectError([&] { t.Check(std::vector<int64_t>{5, 5, 3}); }, {"3 values", "4 symbols"});
  ExpectError([&] { t.Check(std::vector<int64_t>{5, 5, -3, 1}); }, {"'a'", "-3"});
}

TEST(SymTable, CheckEvaluationErrorsNameTheFact) {
  SymbolTable t;
  Expr a = S(t.NewSymbol("a")), b = S(t.NewSymbol("b")), c = S(t.NewSymbol("c"));
  t.Equal(FloorDiv(a, b), c, "pool (node 2)");
  t.Check(t.Bind(Named{{"a", 9}, {"b", 2}}));
  ExpectError([&] { t.Check(std::vector<int64_t>{9, 0, 0}); }, {"pool (node 2)", "division by zero", "b = 0"});
}

TEST(SymTable, FactsString) {
  SymbolTable t;
  Expr s = S(t.NewSymbol("seq")), h = S(t.NewSymbol("heads"));
  t.Equal(s * h, 64, "reshape (node 1)");
  t.Broadcast(s, 1, "add (node 2)");
  EXPECT_EQ(t.FactsString(), "reshape (node 1): seq*heads == 64\nadd (node 2): broadcast(seq, 1)\n");
}

// Random facts between symbols and constants: simplified expressions keep
// their value under every binding Bind produces, and Bind's bindings pass
// Check.
TEST(SymTable, RandomFactsKeepValues) {
  std::mt19937_64 rng(7);
  auto pick = [&](int n) { return static_cast<int>(rng() % n); };
  int bound_runs = 0;
  for (int iter = 0; iter < 300; ++iter) {
    SymbolTable t;
    const int n = 6;
    for (int i = 0; i < n; ++i) t.NewSymbol("x" + std::to_string(i));
    for (int f = 0; f < 4; ++f) {
      Expr lhs = S(pick(n));
      Expr rhs = pick(3) == 0 ? Expr(1 + pick(5)) : (pick(2) ? S(pick(n)) : S(pick(n)) * S(pick(n)) + pick(3));
      try {
        t.Equal(lhs, rhs, "f" + std::to_string(f));
      } catch (const Error&) {
      }
    }
    Named named;
    for (int i = 0; i < n; ++i) named.emplace_back("x" + std::to_string(i), 1 + pick(4));
    // Only the free representatives are given.
    Named free;
    for (const auto& [nm, v] : named) {
      int id = t.Find(nm);
      if (t.Simplify(S(id)) == S(id)) free.emplace_back(nm, v);
    }
    std::vector<int64_t> vals = t.Bind(free);
    ++bound_runs;
    // Every recorded Equal fact may still fail at run time (unsolved ones),
    // but the solved ones hold.
    for (int k = 0; k < 20; ++k) {
      Expr e = S(pick(n)) * S(pick(n)) + 3 * S(pick(n)) - FloorDiv(S(pick(n)) + 1, 2);
      ASSERT_EQ(t.Simplify(e).Eval(vals), e.Eval(vals)) << ToString(e, &t) << "\n" << t.FactsString();
    }
    for (int i = 0; i < n; ++i) ASSERT_EQ(t.Simplify(S(i)).Eval(vals), vals[i]);
  }
  EXPECT_EQ(bound_runs, 300);
}

}  // namespace
}  // namespace dvm::sym
