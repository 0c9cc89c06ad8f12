// Symbolic shapes: canonical integer expressions and the deduction engine
// (see sym.h).
//
// Canonical form. An Expr is a sum of terms sorted by their atom lists
// (higher degree first, then atoms in order; the constant term is last), no
// two terms with the same atoms, no zero coefficients. A term's atoms are a
// sorted multiset. Atoms are ordered by kind (symbol < floor < max), then by
// symbol id or, for floor/max, by their operand expressions; the order on
// expressions is lexicographic over terms, so the order is total and the
// canonical form of a polynomial is unique. Floor and max atoms are built
// only from canonical operands after their own simplification rules, so
// equal inputs give structurally equal atoms.
#include "ir/sym.h"

#include <algorithm>
#include <limits>
#include <sstream>
#include <utility>

#include "ir/error.h"

namespace dvm::sym {

struct Atom {
  enum Kind : uint8_t { kSym = 0, kFloorDiv = 1, kMax = 2 };
  Kind kind = kSym;
  int id = -1;  // kSym
  Expr a, b;    // kFloorDiv: floor(a / b); kMax: max(a, b)
  uint64_t hash = 0;
};

struct Term {
  int64_t coef = 0;
  std::vector<Atom> atoms;  // sorted; empty for the constant term
};

struct Expr::Rep {
  std::vector<Term> terms;  // canonical (see above); empty = 0
  uint64_t hash = 0;
};

struct ExprAccess {
  static const Expr::Rep& rep(const Expr& e) { return *e.rep_; }
  static Expr make(std::shared_ptr<const Expr::Rep> r) { return Expr(std::move(r)); }
};

namespace {

constexpr int64_t kMin = std::numeric_limits<int64_t>::min();
constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

const Expr::Rep& R(const Expr& e) { return ExprAccess::rep(e); }
const std::vector<Term>& T(const Expr& e) { return R(e).terms; }

// ---- checked integer arithmetic ----------------------------------------------

[[noreturn]] void Overflow(int64_t x, const char* op, int64_t y) {
  Fail("integer overflow in symbolic arithmetic: ", x, " ", op, " ", y);
}

int64_t CheckedAdd(int64_t x, int64_t y) {
  int64_t r;
  if (__builtin_add_overflow(x, y, &r)) Overflow(x, "+", y);
  return r;
}

int64_t CheckedSub(int64_t x, int64_t y) {
  int64_t r;
  if (__builtin_sub_overflow(x, y, &r)) Overflow(x, "-", y);
  return r;
}

int64_t CheckedMul(int64_t x, int64_t y) {
  int64_t r;
  if (__builtin_mul_overflow(x, y, &r)) Overflow(x, "*", y);
  return r;
}

// floor(n / d); d != 0 and not (kMin, -1).
int64_t FloorDivInt(int64_t n, int64_t d) {
  int64_t q = n / d;
  if (n % d != 0 && ((n < 0) != (d < 0))) --q;
  return q;
}

int64_t CheckedFloorDiv(int64_t n, int64_t d) {
  if (d == 0) Fail("division by zero: floor(", n, " / 0)");
  if (n == kMin && d == -1) Overflow(n, "/", d);
  return FloorDivInt(n, d);
}

// k / d when d divides k exactly and the quotient is representable.
bool DivExact(int64_t k, int64_t d, int64_t* q) {
  if (d == -1) return !__builtin_mul_overflow(k, int64_t{-1}, q);
  if (k % d != 0) return false;
  *q = k / d;
  return true;
}

uint64_t Magnitude(int64_t v) { return v < 0 ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v); }

uint64_t Gcd(uint64_t x, uint64_t y) {
  while (y != 0) {
    uint64_t t = x % y;
    x = y;
    y = t;
  }
  return x;
}

// ---- hashing ---------------------------------------------------------------------

uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

uint64_t Combine(uint64_t h, uint64_t v) { return Mix(h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2))); }

// ---- total order -------------------------------------------------------------------

template <class X>
int Cmp(X x, X y) {
  return x < y ? -1 : (y < x ? 1 : 0);
}

int CmpExpr(const Expr& x, const Expr& y);

int CmpAtom(const Atom& x, const Atom& y) {
  if (x.kind != y.kind) return x.kind < y.kind ? -1 : 1;
  if (x.kind == Atom::kSym) return Cmp(x.id, y.id);
  if (int c = CmpExpr(x.a, y.a)) return c;
  return CmpExpr(x.b, y.b);
}

bool AtomLess(const Atom& x, const Atom& y) { return CmpAtom(x, y) < 0; }

// Higher degree first, then the atoms in order: the constant term sorts last.
int CmpAtoms(const std::vector<Atom>& x, const std::vector<Atom>& y) {
  if (x.size() != y.size()) return x.size() > y.size() ? -1 : 1;
  for (size_t i = 0; i < x.size(); ++i)
    if (int c = CmpAtom(x[i], y[i])) return c;
  return 0;
}

int CmpExpr(const Expr& x, const Expr& y) {
  const Expr::Rep& rx = R(x);
  const Expr::Rep& ry = R(y);
  if (&rx == &ry) return 0;
  size_t n = std::min(rx.terms.size(), ry.terms.size());
  for (size_t i = 0; i < n; ++i) {
    if (int c = CmpAtoms(rx.terms[i].atoms, ry.terms[i].atoms)) return c;
    if (int c = Cmp(rx.terms[i].coef, ry.terms[i].coef)) return c;
  }
  return Cmp(rx.terms.size(), ry.terms.size());
}

// ---- construction ------------------------------------------------------------------

uint64_t AtomHash(const Atom& a) {
  uint64_t h = Combine(0x5a5a + a.kind, a.kind == Atom::kSym ? static_cast<uint64_t>(a.id) : a.a.Hash());
  return a.kind == Atom::kSym ? h : Combine(h, a.b.Hash());
}

// `terms` already canonical.
Expr Finish(std::vector<Term> terms) {
  auto rep = std::make_shared<Expr::Rep>();
  uint64_t h = 0x1234567;
  for (const Term& t : terms) {
    h = Combine(h, static_cast<uint64_t>(t.coef));
    h = Combine(h, t.atoms.size());
    for (const Atom& a : t.atoms) h = Combine(h, a.hash);
  }
  rep->terms = std::move(terms);
  rep->hash = h;
  return ExprAccess::make(std::move(rep));
}

// Sorts, combines like terms (exactly: only a final sum that does not fit
// throws) and drops zero coefficients. Each term's atoms must be sorted.
Expr Canon(std::vector<Term> terms) {
  std::sort(terms.begin(), terms.end(), [](const Term& x, const Term& y) { return CmpAtoms(x.atoms, y.atoms) < 0; });
  std::vector<Term> out;
  for (size_t i = 0; i < terms.size();) {
    size_t j = i;
    __int128 sum = 0;
    for (; j < terms.size() && CmpAtoms(terms[i].atoms, terms[j].atoms) == 0; ++j) sum += terms[j].coef;
    if (sum < kMin || sum > kMax) Overflow(terms[i].coef, "+", terms[i + 1].coef);
    if (sum != 0) out.push_back(Term{static_cast<int64_t>(sum), std::move(terms[i].atoms)});
    i = j;
  }
  return Finish(std::move(out));
}

Expr AtomExpr(Atom a) {
  a.hash = AtomHash(a);
  std::vector<Term> terms(1);
  terms[0].coef = 1;
  terms[0].atoms.push_back(std::move(a));
  return Finish(std::move(terms));
}

Expr FloorAtom(const Expr& num, const Expr& den) {
  Atom a;
  a.kind = Atom::kFloorDiv;
  a.a = num;
  a.b = den;
  return AtomExpr(std::move(a));
}

// A lone atom with coefficient 1, or null.
const Atom* LoneAtom(const Expr& e) {
  const auto& t = T(e);
  if (t.size() == 1 && t[0].coef == 1 && t[0].atoms.size() == 1) return &t[0].atoms[0];
  return nullptr;
}

// x + sign * y.
Expr AddScaled(const Expr& x, const Expr& y, int sign) {
  const auto& tx = T(x);
  const auto& ty = T(y);
  if (ty.empty()) return x;
  if (tx.empty() && sign > 0) return y;
  std::vector<Term> out;
  out.reserve(tx.size() + ty.size());
  size_t i = 0, j = 0;
  auto from_y = [&](const Term& t) { return Term{sign > 0 ? t.coef : CheckedSub(0, t.coef), t.atoms}; };
  while (i < tx.size() || j < ty.size()) {
    int c = i == tx.size() ? 1 : j == ty.size() ? -1 : CmpAtoms(tx[i].atoms, ty[j].atoms);
    if (c < 0) {
      out.push_back(tx[i++]);
    } else if (c > 0) {
      out.push_back(from_y(ty[j++]));
    } else {
      int64_t k = sign > 0 ? CheckedAdd(tx[i].coef, ty[j].coef) : CheckedSub(tx[i].coef, ty[j].coef);
      if (k != 0) out.push_back(Term{k, tx[i].atoms});
      ++i;
      ++j;
    }
  }
  return Finish(std::move(out));
}

// Divides every coefficient by g (> 0, divides them all).
Expr DivideCoefs(const Expr& e, int64_t g) {
  std::vector<Term> terms = T(e);
  for (Term& t : terms) t.coef /= g;
  return Finish(std::move(terms));
}

// gcd of the magnitudes of e's coefficients and of `with`.
uint64_t CoefGcd(const Expr& e, uint64_t with) {
  uint64_t g = with;
  for (const Term& t : T(e)) g = Gcd(g, Magnitude(t.coef));
  return g;
}

// floor(a / c) for a non-constant a and constant c != 0.
Expr FloorDivByConst(const Expr& a, int64_t c) {
  if (c == 1) return a;
  Expr num = a;
  if (c < 0) {
    // floor(a / c) == floor(-a / -c); keep the atom as is where negating overflows.
    if (c == kMin) return FloorAtom(a, c);
    std::vector<Term> neg = T(a);
    for (Term& t : neg) {
      if (t.coef == kMin) return FloorAtom(a, c);
      t.coef = -t.coef;
    }
    num = Finish(std::move(neg));
    c = -c;
    if (c == 1) return num;
  }
  // num = c*Q + Rm with every coefficient of Rm in [0, c): floor(num / c) = Q + floor(Rm / c).
  std::vector<Term> q, r;
  for (const Term& t : T(num)) {
    int64_t qq = FloorDivInt(t.coef, c);
    auto rr = static_cast<int64_t>(static_cast<__int128>(t.coef) - static_cast<__int128>(qq) * c);
    if (qq != 0) q.push_back(Term{qq, t.atoms});
    if (rr != 0) r.push_back(Term{rr, t.atoms});
  }
  Expr quot = Finish(std::move(q));
  Expr rem = Finish(std::move(r));
  if (rem.is_const()) return quot;  // constant remainder in [0, c): floor is 0
  if (uint64_t g = CoefGcd(rem, static_cast<uint64_t>(c)); g > 1) {
    rem = DivideCoefs(rem, static_cast<int64_t>(g));
    c /= static_cast<int64_t>(g);
  }
  // floor(floor(n / d) / c) == floor(n / (d*c)) for d, c > 0.
  if (const Atom* inner = LoneAtom(rem); inner && inner->kind == Atom::kFloorDiv && inner->b.is_const()) {
    int64_t d = inner->b.value(), dc;
    if (d > 0 && !__builtin_mul_overflow(d, c, &dc)) return quot + FloorDiv(inner->a, dc);
  }
  return quot + FloorAtom(rem, c);
}

// Multiset inclusion / difference of sorted atom lists.
bool Contains(const std::vector<Atom>& big, const std::vector<Atom>& small) {
  size_t i = 0;
  for (const Atom& s : small) {
    while (i < big.size() && CmpAtom(big[i], s) < 0) ++i;
    if (i == big.size() || CmpAtom(big[i], s) != 0) return false;
    ++i;
  }
  return true;
}

std::vector<Atom> Minus(const std::vector<Atom>& big, const std::vector<Atom>& small) {
  std::vector<Atom> out;
  size_t j = 0;
  for (const Atom& b : big) {
    if (j < small.size() && CmpAtom(b, small[j]) == 0) {
      ++j;
      continue;
    }
    out.push_back(b);
  }
  return out;
}

// floor(a / b) for a non-constant b (assumed nonzero where it is evaluated).
Expr FloorDivBySym(const Expr& a, const Expr& b) {
  const auto& ta = T(a);
  const auto& tb = T(b);
  if (ta.empty()) return 0;
  if (a == b) return 1;
  // a == q*b for a constant q.
  if (ta.size() == tb.size()) {
    int64_t q = 0;
    bool ok = true;
    for (size_t i = 0; ok && i < ta.size(); ++i) {
      int64_t qi = 0;
      ok = CmpAtoms(ta[i].atoms, tb[i].atoms) == 0 && DivExact(ta[i].coef, tb[i].coef, &qi) && (i == 0 || qi == q);
      q = qi;
    }
    if (ok) return q;
  }
  Expr num = a, den = b;
  if (tb.size() == 1) {
    // b = k*B, a monomial: terms of a divisible by b come out of the floor.
    const Term& mb = tb[0];
    std::vector<Term> q, r;
    for (const Term& t : ta) {
      int64_t qq;
      if (Contains(t.atoms, mb.atoms) && DivExact(t.coef, mb.coef, &qq))
        q.push_back(Term{qq, Minus(t.atoms, mb.atoms)});
      else
        r.push_back(t);
    }
    if (!q.empty()) {
      Expr quot = Canon(std::move(q));
      if (r.empty()) return quot;
      return quot + FloorDivBySym(Finish(std::move(r)), b);
    }
  }
  // floor(g*A / (g*B)) == floor(A / B) for g > 0.
  if (uint64_t g = CoefGcd(den, CoefGcd(num, 0)); g > 1 && g <= static_cast<uint64_t>(kMax)) {
    num = DivideCoefs(num, static_cast<int64_t>(g));
    den = DivideCoefs(den, static_cast<int64_t>(g));
  }
  return FloorAtom(num, den);
}

// Operands of nested maxes.
void FlattenMax(const Expr& e, std::vector<Expr>* out) {
  if (const Atom* m = LoneAtom(e); m && m->kind == Atom::kMax) {
    FlattenMax(m->a, out);
    FlattenMax(m->b, out);
  } else {
    out->push_back(e);
  }
}

// x - y when it is a constant (without throwing).
bool ConstDiff(const Expr& x, const Expr& y, int64_t* d) {
  const auto& tx = T(x);
  const auto& ty = T(y);
  size_t nx = tx.size() - (!tx.empty() && tx.back().atoms.empty());
  size_t ny = ty.size() - (!ty.empty() && ty.back().atoms.empty());
  if (nx != ny) return false;
  for (size_t i = 0; i < nx; ++i)
    if (tx[i].coef != ty[i].coef || CmpAtoms(tx[i].atoms, ty[i].atoms) != 0) return false;
  int64_t cx = nx < tx.size() ? tx.back().coef : 0;
  int64_t cy = ny < ty.size() ? ty.back().coef : 0;
  return !__builtin_sub_overflow(cx, cy, d);
}

void CollectSymbols(const Expr& e, std::vector<int>* out) {
  for (const Term& t : T(e))
    for (const Atom& a : t.atoms) {
      if (a.kind == Atom::kSym) {
        out->push_back(a.id);
      } else {
        CollectSymbols(a.a, out);
        CollectSymbols(a.b, out);
      }
    }
}

int64_t EvalRep(const Expr::Rep& r, std::span<const int64_t> binding);

int64_t EvalAtom(const Atom& a, std::span<const int64_t> binding) {
  switch (a.kind) {
    case Atom::kSym:
      if (a.id < 0 || static_cast<size_t>(a.id) >= binding.size())
        Fail("symbol s", a.id, " has no value (the binding has ", binding.size(), " values)");
      return binding[a.id];
    case Atom::kFloorDiv: {
      int64_t n = EvalRep(R(a.a), binding), d = EvalRep(R(a.b), binding);
      if (d == 0) Fail("division by zero evaluating floor(", ToString(a.a), " / ", ToString(a.b), ")");
      if (n == kMin && d == -1) Overflow(n, "/", d);
      return FloorDivInt(n, d);
    }
    case Atom::kMax:
      return std::max(EvalRep(R(a.a), binding), EvalRep(R(a.b), binding));
  }
  return 0;
}

int64_t EvalRep(const Expr::Rep& r, std::span<const int64_t> binding) {
  int64_t sum = 0;
  for (const Term& t : r.terms) {
    int64_t p = t.coef;
    for (const Atom& a : t.atoms) p = CheckedMul(p, EvalAtom(a, binding));
    sum = CheckedAdd(sum, p);
  }
  return sum;
}

// Rebuilds `e` with symbol id replaced by f(id), re-canonicalising.
template <class F>
Expr Substitute(const Expr& e, const F& f) {
  Expr sum = 0;
  for (const Term& t : T(e)) {
    Expr m = t.coef;
    for (const Atom& a : t.atoms) {
      switch (a.kind) {
        case Atom::kSym:
          m = m * f(a.id);
          break;
        case Atom::kFloorDiv:
          m = m * FloorDiv(Substitute(a.a, f), Substitute(a.b, f));
          break;
        case Atom::kMax:
          m = m * Max(Substitute(a.a, f), Substitute(a.b, f));
          break;
      }
    }
    sum = sum + m;
  }
  return sum;
}

// ---- printing ------------------------------------------------------------------------

std::string SymName(int id, const SymbolTable* t) {
  if (t && id >= 0 && id < t->num_symbols()) return t->name(id);
  return "s" + std::to_string(id);
}

void Print(const Expr& e, const SymbolTable* t, std::ostream& os);

void PrintAtom(const Atom& a, const SymbolTable* t, std::ostream& os) {
  switch (a.kind) {
    case Atom::kSym:
      os << SymName(a.id, t);
      return;
    case Atom::kFloorDiv: {
      bool paren_num = T(a.a).size() > 1;
      bool paren_den = !(a.b.is_const() && a.b.value() >= 0) && !LoneAtom(a.b);
      os << "floor(" << (paren_num ? "(" : "");
      Print(a.a, t, os);
      os << (paren_num ? ")" : "") << " / " << (paren_den ? "(" : "");
      Print(a.b, t, os);
      os << (paren_den ? ")" : "") << ")";
      return;
    }
    case Atom::kMax: {
      std::vector<Expr> ops;
      FlattenMax(AtomExpr(a), &ops);
      os << "max(";
      for (size_t i = 0; i < ops.size(); ++i) {
        if (i) os << ", ";
        Print(ops[i], t, os);
      }
      os << ")";
      return;
    }
  }
}

void Print(const Expr& e, const SymbolTable* t, std::ostream& os) {
  const auto& terms = T(e);
  if (terms.empty()) {
    os << "0";
    return;
  }
  for (size_t i = 0; i < terms.size(); ++i) {
    const Term& term = terms[i];
    bool neg = term.coef < 0;
    uint64_t mag = Magnitude(term.coef);
    if (i == 0)
      os << (neg ? "-" : "");
    else
      os << (neg ? " - " : " + ");
    if (term.atoms.empty()) {
      os << mag;
      continue;
    }
    if (mag != 1) os << mag << "*";
    for (size_t j = 0; j < term.atoms.size(); ++j) {
      if (j) os << "*";
      PrintAtom(term.atoms[j], t, os);
    }
  }
}

}  // namespace

// ---- Expr --------------------------------------------------------------------------------

Expr::Expr() {
  static const std::shared_ptr<const Rep> kZero = [] {
    auto r = std::make_shared<Rep>();
    r->hash = 0x1234567;  // Finish({})'s hash
    return r;
  }();
  rep_ = kZero;
}

Expr::Expr(int64_t c) {
  if (c == 0) {
    *this = Expr();
    return;
  }
  std::vector<Term> terms(1);
  terms[0].coef = c;
  *this = Finish(std::move(terms));
}

Expr::Expr(std::shared_ptr<const Rep> r) : rep_(std::move(r)) {}

Expr Expr::Symbol(int id) {
  if (id < 0) Fail("invalid symbol id ", id);
  Atom a;
  a.kind = Atom::kSym;
  a.id = id;
  return AtomExpr(std::move(a));
}

bool Expr::is_const() const {
  const auto& t = rep_->terms;
  return t.empty() || (t.size() == 1 && t[0].atoms.empty());
}

int64_t Expr::value() const {
  if (!is_const()) Fail("Expr::value() of the non-constant expression ", ToString(*this));
  return rep_->terms.empty() ? 0 : rep_->terms[0].coef;
}

bool Expr::is_symbol() const {
  const Atom* a = LoneAtom(*this);
  return a && a->kind == Atom::kSym;
}

int Expr::symbol() const {
  if (!is_symbol()) Fail("Expr::symbol() of ", ToString(*this), ", which is not a lone symbol");
  return rep_->terms[0].atoms[0].id;
}

Expr operator+(const Expr& a, const Expr& b) { return AddScaled(a, b, 1); }
Expr operator-(const Expr& a, const Expr& b) { return AddScaled(a, b, -1); }

Expr operator*(const Expr& a, const Expr& b) {
  const auto& ta = T(a);
  const auto& tb = T(b);
  if (ta.empty() || tb.empty()) return 0;
  if (a.is_const() && ta[0].coef == 1) return b;
  if (b.is_const() && tb[0].coef == 1) return a;
  std::vector<Term> terms;
  terms.reserve(ta.size() * tb.size());
  for (const Term& x : ta)
    for (const Term& y : tb) {
      Term t;
      t.coef = CheckedMul(x.coef, y.coef);
      t.atoms.reserve(x.atoms.size() + y.atoms.size());
      std::merge(x.atoms.begin(), x.atoms.end(), y.atoms.begin(), y.atoms.end(), std::back_inserter(t.atoms), AtomLess);
      terms.push_back(std::move(t));
    }
  return Canon(std::move(terms));
}

Expr FloorDiv(const Expr& a, const Expr& b) {
  if (b.is_const()) {
    int64_t c = b.value();
    if (c == 0) Fail("division by zero: floor(", ToString(a), " / 0)");
    if (a.is_const()) return CheckedFloorDiv(a.value(), c);
    return FloorDivByConst(a, c);
  }
  return FloorDivBySym(a, b);
}

Expr Max(const Expr& a, const Expr& b) {
  if (a == b) return a;
  if (a.is_const() && b.is_const()) return std::max(a.value(), b.value());
  std::vector<Expr> ops;
  FlattenMax(a, &ops);
  FlattenMax(b, &ops);
  // One constant operand (the largest), the rest sorted without duplicates.
  std::vector<Expr> keep;
  bool has_const = false;
  int64_t cmax = kMin;
  for (const Expr& e : ops) {
    if (e.is_const()) {
      has_const = true;
      cmax = std::max(cmax, e.value());
    } else {
      keep.push_back(e);
    }
  }
  if (has_const) keep.push_back(cmax);
  std::sort(keep.begin(), keep.end(), [](const Expr& x, const Expr& y) { return CmpExpr(x, y) < 0; });
  keep.erase(std::unique(keep.begin(), keep.end()), keep.end());
  // Drop y where some other x == y + d, d >= 0.
  std::vector<Expr> ops2;
  for (size_t i = 0; i < keep.size(); ++i) {
    bool dominated = false;
    for (size_t j = 0; j < keep.size() && !dominated; ++j) {
      int64_t d;
      dominated = j != i && ConstDiff(keep[j], keep[i], &d) && d > 0;
    }
    if (!dominated) ops2.push_back(keep[i]);
  }
  Expr acc = ops2.back();
  for (size_t i = ops2.size() - 1; i-- > 0;) {
    Atom m;
    m.kind = Atom::kMax;
    m.a = ops2[i];
    m.b = acc;
    acc = AtomExpr(std::move(m));
  }
  return acc;
}

bool operator==(const Expr& a, const Expr& b) {
  if (a.rep_ == b.rep_) return true;
  if (a.rep_->hash != b.rep_->hash) return false;
  return CmpExpr(a, b) == 0;
}

std::vector<int> Expr::symbols() const {
  std::vector<int> out;
  CollectSymbols(*this, &out);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

int64_t Expr::Eval(std::span<const int64_t> binding) const { return EvalRep(*rep_, binding); }

uint64_t Expr::Hash() const { return rep_->hash; }

std::string ToString(const Expr& e, const SymbolTable* t) {
  std::ostringstream os;
  Print(e, t, os);
  return os.str();
}

// ---- SymbolTable ---------------------------------------------------------------------------

namespace {

// Makes x the root of its proof tree, then hangs it under y.
void AddProofEdge(std::vector<int>& parent, std::vector<int>& fact, int x, int y, int f) {
  int prev = -1, prev_fact = -1;
  for (int cur = x; cur != -1;) {
    int next = parent[cur], next_fact = fact[cur];
    parent[cur] = prev;
    fact[cur] = prev_fact;
    prev = cur;
    prev_fact = next_fact;
    cur = next;
  }
  parent[x] = y;
  fact[x] = f;
}

// The facts on the proof-forest path between x and y (same class).
void ProofPath(const std::vector<int>& parent, const std::vector<int>& fact, int x, int y, std::vector<int>* out) {
  std::vector<int> up;  // x and its ancestors
  for (int c = x; c != -1; c = parent[c]) up.push_back(c);
  int lca = -1;
  for (int c = y; c != -1; c = parent[c]) {
    if (std::find(up.begin(), up.end(), c) != up.end()) {
      lca = c;
      break;
    }
    out->push_back(fact[c]);
  }
  for (int c = x; c != lca && c != -1; c = parent[c]) out->push_back(fact[c]);
}

}  // namespace

int SymbolTable::NewSymbol(const std::string& name) {
  if (name.empty()) Fail("a symbol needs a name");
  if (Find(name) >= 0) Fail("symbol '", name, "' already exists");
  int id = static_cast<int>(names_.size());
  names_.push_back(name);
  parent_.push_back(id);
  bound_.emplace_back();
  has_bound_.push_back(false);
  bound_fact_.push_back(-1);
  proof_parent_.push_back(-1);
  proof_fact_.push_back(-1);
  return id;
}

int SymbolTable::Find(const std::string& name) const {
  for (size_t i = 0; i < names_.size(); ++i)
    if (names_[i] == name) return static_cast<int>(i);
  return -1;
}

const std::string& SymbolTable::name(int id) const {
  if (id < 0 || id >= num_symbols()) Fail("symbol id ", id, " out of range (the table has ", num_symbols(), ")");
  return names_[id];
}

int SymbolTable::num_symbols() const { return static_cast<int>(names_.size()); }

int SymbolTable::FindRoot(int id) const {
  if (id < 0 || id >= num_symbols()) Fail("symbol id ", id, " out of range (the table has ", num_symbols(), ")");
  int r = id;
  while (parent_[r] != r) r = parent_[r];
  // Path compression. Equal keeps every class flat, so in practice this never
  // writes and const methods stay safe to call from several threads.
  while (parent_[id] != r) {
    int next = parent_[id];
    parent_[id] = r;
    id = next;
  }
  return r;
}

Expr SymbolTable::Simplify(const Expr& e) const {
  bool changes = false;
  for (int s : e.symbols()) {
    int r = FindRoot(s);
    changes |= r != s || has_bound_[r];
  }
  if (!changes) return e;
  return Substitute(e, [this](int id) {
    int r = FindRoot(id);
    return has_bound_[r] ? Simplify(bound_[r]) : Expr::Symbol(r);
  });
}

bool SymbolTable::ProvablyEqual(const Expr& a, const Expr& b) const { return Simplify(a) == Simplify(b); }

namespace {

std::string FactText(const SymbolTable::Fact& f, const SymbolTable* t) {
  if (f.kind == SymbolTable::Fact::kEqual) return ToString(f.a, t) + " == " + ToString(f.b, t);
  return "broadcast(" + ToString(f.a, t) + ", " + ToString(f.b, t) + ")";
}

// "fact 'why': a == b" / "facts 'w1': a == b; 'w2': b == c".
std::string DescribeFacts(std::vector<int> idx, const std::vector<SymbolTable::Fact>& facts, const SymbolTable* t) {
  std::sort(idx.begin(), idx.end());
  idx.erase(std::unique(idx.begin(), idx.end()), idx.end());
  idx.erase(std::remove(idx.begin(), idx.end(), -1), idx.end());
  std::string s = idx.size() == 1 ? "fact " : "facts ";
  for (size_t i = 0; i < idx.size(); ++i) {
    if (i) s += "; ";
    s += "'" + facts[idx[i]].why + "': " + FactText(facts[idx[i]], t);
  }
  return s;
}

// "a = 3, b = 4" for the symbols of the expressions.
std::string SymbolValues(std::initializer_list<const Expr*> es, std::span<const int64_t> binding,
                         const SymbolTable* t) {
  std::vector<int> ids;
  for (const Expr* e : es) {
    std::vector<int> s = e->symbols();
    ids.insert(ids.end(), s.begin(), s.end());
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::string s;
  for (int id : ids) {
    if (!s.empty()) s += ", ";
    s += SymName(id, t) + " = " + (static_cast<size_t>(id) < binding.size() ? std::to_string(binding[id]) : "?");
  }
  return s;
}

}  // namespace

Expr SymbolTable::Equal(const Expr& a, const Expr& b, const std::string& why) {
  const Expr sa = Simplify(a), sb = Simplify(b);
  const int fact = static_cast<int>(facts_.size());
  const std::string text = ToString(a, this) + " == " + ToString(b, this);

  // Earlier facts that fixed the symbols of a and b (for messages).
  auto known = [&] {
    std::vector<int> idx, work = a.symbols(), seen;
    for (int s : b.symbols()) work.push_back(s);
    while (!work.empty()) {
      int s = work.back();
      work.pop_back();
      if (std::find(seen.begin(), seen.end(), s) != seen.end()) continue;
      seen.push_back(s);
      int r = FindRoot(s);
      ProofPath(proof_parent_, proof_fact_, s, r, &idx);
      if (has_bound_[r]) {
        idx.push_back(bound_fact_[r]);
        for (int x : bound_[r].symbols()) work.push_back(x);
      }
    }
    idx.erase(std::remove(idx.begin(), idx.end(), -1), idx.end());
    return idx.empty() ? std::string() : " (" + DescribeFacts(idx, facts_, this) + ")";
  };

  int merge_x = -1, merge_y = -1;  // union of two roots
  int bind_root = -1;              // bind_root := bind_value
  Expr bind_value, result = sa;
  if (sa == sb) {
    // Nothing to learn.
  } else if (sa.is_const() && sb.is_const()) {
    std::string lhs, rhs;
    if (!a.is_const()) lhs = ToString(a, this) + " == " + std::to_string(sa.value());
    if (!b.is_const()) rhs = ToString(b, this) + " == " + std::to_string(sb.value());
    if (lhs.empty() && rhs.empty()) Fail(why, ": ", text, " is false");
    Fail(why, ": ", text, " contradicts ", lhs, (!lhs.empty() && !rhs.empty()) ? ", " : "", rhs, known());
  } else if (Expr d = sa - sb; d.is_const()) {
    Fail(why, ": ", text, " is impossible: the sides always differ by ", d.value(), known());
  } else if (sa.is_symbol() && sb.is_symbol()) {
    merge_x = sa.symbol();
    merge_y = sb.symbol();
    result = Expr::Symbol(std::min(merge_x, merge_y));
  } else {
    std::vector<int> in_a = sa.symbols(), in_b = sb.symbols();
    if (sa.is_symbol() && !std::binary_search(in_b.begin(), in_b.end(), sa.symbol())) {
      bind_root = sa.symbol();
      bind_value = sb;
    } else if (sb.is_symbol() && !std::binary_search(in_a.begin(), in_a.end(), sb.symbol())) {
      bind_root = sb.symbol();
      bind_value = sa;
    } else if (const auto& td = T(d); (td.size() == 1 || (td.size() == 2 && td[1].atoms.empty())) &&
                                      td[0].atoms.size() == 1 && td[0].atoms[0].kind == Atom::kSym) {
      // c*s + k == 0: s = -k / c.
      int64_t c = td[0].coef, k = td.size() == 2 ? td[1].coef : 0, q;
      if (!DivExact(k, c, &q))
        Fail(why, ": ", text, " has no integer solution (", ToString(d, this), " == 0)", known());
      if (q == kMin) Overflow(0, "-", q);
      bind_root = td[0].atoms[0].id;
      bind_value = -q;
    }
    if (bind_root >= 0) {
      if (bind_value.is_const() && bind_value.value() < 0)
        Fail(why, ": ", text, " would make ", SymName(bind_root, this), " = ", bind_value.value(),
             ", but dims are >= 0", known());
      result = bind_value;
    }
  }

  facts_.push_back(Fact{Fact::kEqual, a, b, why});
  if (merge_x >= 0) {
    int lo = std::min(merge_x, merge_y), hi = std::max(merge_x, merge_y);
    // The edge joins the fact's own symbols where they are the ones merged.
    int ex = a.is_symbol() && FindRoot(a.symbol()) == merge_x ? a.symbol() : merge_x;
    int ey = b.is_symbol() && FindRoot(b.symbol()) == merge_y ? b.symbol() : merge_y;
    for (int& p : parent_)
      if (p == hi) p = lo;
    AddProofEdge(proof_parent_, proof_fact_, ex, ey, fact);
  } else if (bind_root >= 0) {
    bound_[bind_root] = bind_value;
    has_bound_[bind_root] = true;
    bound_fact_[bind_root] = fact;
  }
  return result;
}

Expr SymbolTable::Broadcast(const Expr& a, const Expr& b, const std::string& why) {
  const Expr sa = Simplify(a), sb = Simplify(b);
  Expr result;
  if (sa == sb) {
    result = sa;
  } else if (sa.is_const() && sa.value() == 1) {
    result = sb;
  } else if (sb.is_const() && sb.value() == 1) {
    result = sa;
  } else if (sa.is_const() && sb.is_const()) {
    std::string va = a.is_const() ? "" : " = " + std::to_string(sa.value());
    std::string vb = b.is_const() ? "" : " = " + std::to_string(sb.value());
    Fail(why, ": cannot broadcast ", ToString(a, this), va, " with ", ToString(b, this), vb,
         " (dims must be equal or 1)");
  } else if (sa.is_const()) {
    result = sa;
  } else if (sb.is_const()) {
    result = sb;
  } else {
    result = Max(sa, sb);
  }
  facts_.push_back(Fact{Fact::kBroadcast, a, b, why});
  return result;
}

std::vector<int64_t> SymbolTable::Bind(std::span<const std::pair<std::string, int64_t>> named) const {
  const int n = num_symbols();
  std::vector<int64_t> given(n, 0);
  std::vector<char> has_given(n, 0);
  for (const auto& [nm, v] : named) {
    int id = Find(nm);
    if (id < 0) Fail("unknown symbol '", nm, "'");
    if (v < 0) Fail("symbol '", nm, "' = ", v, " is negative (dims are >= 0)");
    if (has_given[id] && given[id] != v) Fail("symbol '", nm, "' is given twice: ", given[id], " and ", v);
    given[id] = v;
    has_given[id] = 1;
  }
  // One value per class; class_sym = the first symbol of the class given one.
  std::vector<int> class_sym(n, -1);
  std::vector<int64_t> vals(n, 0);
  for (int i = 0; i < n; ++i) {
    if (!has_given[i]) continue;
    int r = FindRoot(i);
    if (class_sym[r] < 0) {
      class_sym[r] = i;
      vals[r] = given[i];
    } else if (vals[r] != given[i]) {
      std::vector<int> idx;
      ProofPath(proof_parent_, proof_fact_, class_sym[r], i, &idx);
      Fail("symbol '", names_[i], "' is the same as '", names_[class_sym[r]], "' (", DescribeFacts(idx, facts_, this),
           ") but ", names_[class_sym[r]], " = ", vals[r], ", ", names_[i], " = ", given[i]);
    }
  }
  for (int r = 0; r < n; ++r) {
    if (FindRoot(r) != r || has_bound_[r] || class_sym[r] >= 0) continue;
    std::string others;
    for (int i = 0; i < n; ++i)
      if (i != r && FindRoot(i) == r) others += (others.empty() ? "" : ", ") + ("'" + names_[i] + "'");
    Fail("symbol '", names_[r], "' is not bound", others.empty() ? "" : " (nor its equals " + others + ")");
  }
  // Bound roots: their simplified values use only free roots, all known now.
  for (int r = 0; r < n; ++r) {
    if (FindRoot(r) != r || !has_bound_[r]) continue;
    const Expr e = Simplify(bound_[r]);
    const int64_t v = e.Eval(vals);
    auto explain = [&](int sym) {
      std::vector<int> idx{bound_fact_[r]};
      ProofPath(proof_parent_, proof_fact_, sym, r, &idx);
      return DescribeFacts(idx, facts_, this);
    };
    if (class_sym[r] >= 0 && v != vals[r]) {
      int s = class_sym[r];
      if (e.is_const())
        Fail("symbol '", names_[s], "' is known to be ", v, " (", explain(s), ") but ", names_[s], " = ", vals[r]);
      Fail("symbol '", names_[s], "' is ", ToString(e, this), " = ", v, " (", explain(s), ") but ", names_[s], " = ",
           vals[r], " (", SymbolValues({&e}, vals, this), ")");
    }
    if (v < 0)
      Fail("symbol '", names_[r], "' = ", ToString(e, this), " = ", v, " is negative (", explain(r), "; ",
           SymbolValues({&e}, vals, this), ")");
    vals[r] = v;
  }
  std::vector<int64_t> out(n);
  for (int i = 0; i < n; ++i) out[i] = vals[FindRoot(i)];
  return out;
}

void SymbolTable::Check(std::span<const int64_t> binding) const {
  if (binding.size() < static_cast<size_t>(num_symbols()))
    Fail("binding has ", binding.size(), " values for ", num_symbols(), " symbols");
  for (int i = 0; i < num_symbols(); ++i)
    if (binding[i] < 0) Fail("binding gives symbol '", names_[i], "' = ", binding[i], " (dims are >= 0)");
  for (const Fact& f : facts_) {
    int64_t va, vb;
    try {
      va = f.a.Eval(binding);
      vb = f.b.Eval(binding);
    } catch (const Error& e) {
      Fail("binding violates '", f.why, "': ", FactText(f, this), ": ", e.what(), " (",
           SymbolValues({&f.a, &f.b}, binding, this), ")");
    }
    bool ok = f.kind == Fact::kEqual ? va == vb : (va == vb || va == 1 || vb == 1);
    if (ok) continue;
    std::string values = SymbolValues({&f.a, &f.b}, binding, this);
    // The sides' values where a side is a compound expression.
    bool compound = !(f.a.is_symbol() || f.a.is_const()) || !(f.b.is_symbol() || f.b.is_const());
    std::string sides = compound ? " (" + std::to_string(va) + " vs " + std::to_string(vb) + ")" : "";
    Fail("binding violates '", f.why, "': ", FactText(f, this),
         f.kind == Fact::kBroadcast ? " (equal or one of them 1)" : "", ", but ", values.empty() ? "it is" : values,
         sides);
  }
}

std::string SymbolTable::FactsString() const {
  std::string s;
  for (const Fact& f : facts_) s += f.why + ": " + FactText(f, this) + "\n";
  return s;
}

}  // namespace dvm::sym
