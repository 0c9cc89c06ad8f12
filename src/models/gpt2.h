// A GPT-2-shaped decoder built from primitives with the graph API: token and
// position embeddings, layers of (layernorm, Q/K/V projections, causal
// attention with softmax, output projection, residual, layernorm, MLP with
// GELU, residual) and a final layernorm. Layernorm, softmax and GELU are
// written as primitives (mean, sub, mul, rsqrt, exp, tanh, ...): the fuser
// has to recover the fused kernels. Weights are random (seeded).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "dvm/graph.h"

namespace dvm::models {

struct Gpt2Config {
  int layers = 6;
  int hidden = 768;
  int heads = 12;
  int vocab = 50257;
  int max_positions = 1024;
  uint64_t seed = 1;
};

// Builders for the primitive patterns (also used by tests).
// Layernorm over the last axis of size n.
Value LayerNorm(Graph& g, Value x, Value gamma, Value beta, int64_t n, double eps = 1e-5);
Value Softmax(Graph& g, Value x);  // over the last axis
Value GeluTanh(Graph& g, Value x);

class Gpt2 {
 public:
  explicit Gpt2(const Gpt2Config& cfg);
  const Graph& graph() const { return graph_; }
  const Gpt2Config& config() const { return cfg_; }
  // Inputs: "ids" int32 [seq]. Output: hidden states f32 [seq, hidden].
  size_t weight_bytes() const { return weights_.size() * sizeof(float); }

 private:
  Value Param(const std::string& name, const Shape& shape, float scale, float offset = 0);
  Gpt2Config cfg_;
  Graph graph_;
  std::vector<float> weights_;  // every parameter, one allocation
  size_t used_ = 0;
  uint64_t rng_;
};

}  // namespace dvm::models
