#include "models/gpt2.h"

#include <cmath>

#include "ir/error.h"

namespace dvm::models {

Value LayerNorm(Graph& g, Value x, Value gamma, Value beta, int64_t n, double eps) {
  const double inv_n = 1.0 / static_cast<double>(n);
  Value mean = g.Binary(BinaryOp::kMul, g.Reduce(ReduceOp::kSum, x, {-1}, true), inv_n);
  Value d = g.Binary(BinaryOp::kSub, x, mean);
  Value var = g.Binary(BinaryOp::kMul, g.Reduce(ReduceOp::kSum, g.Binary(BinaryOp::kMul, d, d), {-1}, true), inv_n);
  Value r = g.Unary(UnaryOp::kRsqrt, g.Binary(BinaryOp::kAdd, var, eps));
  return g.Binary(BinaryOp::kAdd, g.Binary(BinaryOp::kMul, g.Binary(BinaryOp::kMul, d, r), gamma), beta);
}

Value Softmax(Graph& g, Value x) {
  Value m = g.Reduce(ReduceOp::kMax, x, {-1}, true);
  Value e = g.Unary(UnaryOp::kExp, g.Binary(BinaryOp::kSub, x, m));
  return g.Binary(BinaryOp::kDiv, e, g.Reduce(ReduceOp::kSum, e, {-1}, true));
}

Value GeluTanh(Graph& g, Value x) {
  // 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))
  Value x3 = g.Binary(BinaryOp::kMul, g.Binary(BinaryOp::kMul, x, x), x);
  Value inner = g.Binary(BinaryOp::kAdd, x, g.Binary(BinaryOp::kMul, x3, 0.044715));
  Value t = g.Unary(UnaryOp::kTanh, g.Binary(BinaryOp::kMul, inner, 0.7978845608028654));
  return g.Binary(BinaryOp::kMul, g.Binary(BinaryOp::kMul, x, 0.5), g.Binary(BinaryOp::kAdd, t, 1.0));
}

Value Gpt2::Param(const std::string& name, const Shape& shape, float scale, float offset) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  if (used_ + n > weights_.size()) Fail("gpt2: weight storage exhausted at '", name, "'");
  float* p = weights_.data() + used_;
  for (size_t i = 0; i < n; ++i) {
    rng_ ^= rng_ << 13, rng_ ^= rng_ >> 7, rng_ ^= rng_ << 17;              // xorshift64
    const float u = static_cast<float>(rng_ >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    p[i] = offset + scale * (2.0f * u - 1.0f);
  }
  used_ += n;
  return graph_.Constant(name, shape, DType::kFloat32, p);
}

Gpt2::Gpt2(const Gpt2Config& cfg) : cfg_(cfg), rng_(cfg.seed * 0x9E3779B97F4A7C15ull + 1) {
  const int64_t H = cfg.hidden, L = cfg.layers, F = 4 * H;
  if (cfg.heads <= 0 || H % cfg.heads) Fail("gpt2: hidden ", H, " is not a multiple of heads ", cfg.heads);
  const int64_t hd = H / cfg.heads;
  const size_t per_layer = static_cast<size_t>(4 * H + 4 * H * H + 4 * H + 2 * H * F + F + H + 2 * H);
  weights_.resize(static_cast<size_t>(cfg.vocab + cfg.max_positions) * H + L * per_layer + 2 * H);
  Graph& g = graph_;
  const float w_scale = 0.02f * std::sqrt(3.0f);  // uniform with std 0.02
  Value ids = g.Input("ids", {"seq"}, DType::kInt32);
  Value wte = Param("wte", {cfg.vocab, H}, w_scale);
  Value wpe = Param("wpe", {cfg.max_positions, H}, w_scale);
  Value pos = g.Iota("seq", DType::kInt32);
  Value x = g.Binary(BinaryOp::kAdd, g.Gather(wte, ids), g.Gather(wpe, pos));
  Value mask = g.CausalMask("seq", "seq", DType::kFloat32);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  auto heads = [&](Value t) {  // [seq, H] -> [heads, seq, hd]
    return g.Transpose(g.Reshape(t, {-1, cfg.heads, hd}), {1, 0, 2});
  };
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "h" + std::to_string(l) + ".";
    Value ln1 = LayerNorm(g, x, Param(p + "ln_1.g", {H}, 0.1f, 1.0f), Param(p + "ln_1.b", {H}, 0.1f), H);
    Value q = g.Binary(BinaryOp::kAdd, g.MatMul(ln1, Param(p + "attn.wq", {H, H}, w_scale)),
                       Param(p + "attn.bq", {H}, 0.02f));
    Value k = g.Binary(BinaryOp::kAdd, g.MatMul(ln1, Param(p + "attn.wk", {H, H}, w_scale)),
                       Param(p + "attn.bk", {H}, 0.02f));
    Value v = g.Binary(BinaryOp::kAdd, g.MatMul(ln1, Param(p + "attn.wv", {H, H}, w_scale)),
                       Param(p + "attn.bv", {H}, 0.02f));
    Value s = g.MatMul(heads(q), heads(k), false, true);  // [heads, seq, seq]
    s = g.Binary(BinaryOp::kAdd, g.Binary(BinaryOp::kMul, s, scale), mask);
    Value o = g.MatMul(Softmax(g, s), heads(v));  // [heads, seq, hd]
    o = g.Reshape(g.Transpose(o, {1, 0, 2}), {-1, H});
    Value proj =
        g.Binary(BinaryOp::kAdd, g.MatMul(o, Param(p + "attn.wo", {H, H}, w_scale)), Param(p + "attn.bo", {H}, 0.02f));
    x = g.Binary(BinaryOp::kAdd, x, proj);
    Value ln2 = LayerNorm(g, x, Param(p + "ln_2.g", {H}, 0.1f, 1.0f), Param(p + "ln_2.b", {H}, 0.1f), H);
    Value h = GeluTanh(g, g.Binary(BinaryOp::kAdd, g.MatMul(ln2, Param(p + "mlp.w1", {H, F}, w_scale)),
                                   Param(p + "mlp.b1", {F}, 0.02f)));
    Value m =
        g.Binary(BinaryOp::kAdd, g.MatMul(h, Param(p + "mlp.w2", {F, H}, w_scale)), Param(p + "mlp.b2", {H}, 0.02f));
    x = g.Binary(BinaryOp::kAdd, x, m);
  }
  x = LayerNorm(g, x, Param("ln_f.g", {H}, 0.1f, 1.0f), Param("ln_f.b", {H}, 0.1f), H);
  g.Output(x);
}

}  // namespace dvm::models
