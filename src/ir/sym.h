// Symbolic shapes: integer expressions over named shape symbols, and a
// deduction engine that records the facts ops imply about them.
//
// An Expr is kept in a canonical form (a sum of monomials with integer
// coefficients, each monomial a product of atoms; an atom is a symbol or an
// irreducible floor-division), so two expressions that simplify to the same
// polynomial compare equal with ==.
//
// SymbolTable deduces relations between symbols:
//   * Equal(a, b): a == b (matmul inner dims, reshape element counts). When
//     one side is a lone symbol it is merged with the other side (union-find
//     over symbols; a symbol may also be bound to a constant). Provably
//     unequal constants throw dvm::Error naming the fact.
//   * Broadcast(a, b): the numpy broadcast of two dims; records
//     "a == b or a == 1 or b == 1" and returns the result dim.
// Every fact is kept, so Check(binding) can reject a concrete binding that
// violates one, naming the symbol(s), the fact and the values.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace dvm::sym {

class SymbolTable;

// An integer expression. Cheap to copy (immutable, shared representation).
class Expr {
 public:
  Expr();                       // the constant 0
  Expr(int64_t c);              // NOLINT: constants convert implicitly
  static Expr Symbol(int id);   // symbol `id` of a SymbolTable

  bool is_const() const;
  int64_t value() const;        // requires is_const()
  bool is_symbol() const;       // exactly one symbol with coefficient 1
  int symbol() const;           // requires is_symbol()

  friend Expr operator+(const Expr& a, const Expr& b);
  friend Expr operator-(const Expr& a, const Expr& b);
  friend Expr operator*(const Expr& a, const Expr& b);
  // Floor division; b must not be provably zero. Simplifies when b is a
  // constant dividing every coefficient, or when b is a factor of a.
  friend Expr FloorDiv(const Expr& a, const Expr& b);
  // Larger of two dims (used for broadcasts between unrelated symbols).
  friend Expr Max(const Expr& a, const Expr& b);
  friend bool operator==(const Expr& a, const Expr& b);
  friend bool operator!=(const Expr& a, const Expr& b) { return !(a == b); }

  // Symbols that occur in the expression.
  std::vector<int> symbols() const;
  // Value for a binding (binding[id] = value of symbol id).
  int64_t Eval(std::span<const int64_t> binding) const;
  // Structural hash (equal expressions hash equal).
  uint64_t Hash() const;

  struct Rep;

 private:
  explicit Expr(std::shared_ptr<const Rep> r);
  std::shared_ptr<const Rep> rep_;
  friend class SymbolTable;
  friend struct ExprAccess;  // sym.cc's canonicalisation helpers
  friend std::string ToString(const Expr& e, const SymbolTable* t);
};

// Namespace-scope declarations of the friends above, so that calls with two
// plain integers (FloorDiv(7, 2)) find them too.
Expr FloorDiv(const Expr& a, const Expr& b);
Expr Max(const Expr& a, const Expr& b);

// "2*seq + 1", using the table's names (or s0, s1, ... without one).
std::string ToString(const Expr& e, const SymbolTable* t = nullptr);

class SymbolTable {
 public:
  // A new symbol (dims are >= 0; `name` is used in messages).
  int NewSymbol(const std::string& name);
  // The id of the symbol called `name`, or -1.
  int Find(const std::string& name) const;
  const std::string& name(int id) const;
  int num_symbols() const;

  // `e` with every symbol replaced by its representative (or its constant),
  // re-canonicalised.
  Expr Simplify(const Expr& e) const;
  bool ProvablyEqual(const Expr& a, const Expr& b) const;

  // Records a == b; merges symbols where possible. Throws dvm::Error
  // ("<why>: seq == 5 contradicts seq == 7") when provably false. Returns
  // the simplified common value.
  Expr Equal(const Expr& a, const Expr& b, const std::string& why);
  // Records the broadcast fact for dims a and b and returns the result dim:
  // equal -> a; one is 1 -> the other; constant c != 1 vs expression e ->
  // c (and records e == 1 or e == c); otherwise Max(a, b). Two different
  // constants, neither 1, throw dvm::Error naming `why`.
  Expr Broadcast(const Expr& a, const Expr& b, const std::string& why);

  // Values of every symbol, by id, from the user's named bindings: each
  // symbol's representative must be bound (or known constant). Throws
  // naming an unknown or unbound symbol.
  std::vector<int64_t> Bind(std::span<const std::pair<std::string, int64_t>> named) const;
  // Checks every recorded fact against a full binding (one value per symbol
  // id); throws dvm::Error naming the fact, the symbol(s) and the values,
  // e.g. "binding violates 'matmul inner dims (node 7)': seq == ctx, but
  // seq = 5, ctx = 6".
  void Check(std::span<const int64_t> binding) const;

  // The recorded facts, one per line (for Dump and tests).
  std::string FactsString() const;

  struct Fact {
    enum Kind { kEqual, kBroadcast } kind;
    Expr a, b;
    std::string why;
  };
  const std::vector<Fact>& facts() const { return facts_; }

 private:
  int FindRoot(int id) const;
  std::vector<std::string> names_;
  mutable std::vector<int> parent_;  // union-find over symbol ids
  std::vector<Expr> bound_;          // root -> value (constant or expression), empty = free
  std::vector<bool> has_bound_;
  std::vector<int> bound_fact_;      // root -> index of the fact that bound it, -1 = none
  // Proof forest for messages (never compressed): each merge adds the edge
  // proof_parent_[x] = y labelled with fact proof_fact_[x].
  std::vector<int> proof_parent_;
  std::vector<int> proof_fact_;
  std::vector<Fact> facts_;
};

}  // namespace dvm::sym
