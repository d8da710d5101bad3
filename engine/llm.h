// The decoder: LLaMA, Qwen2 and InternLM2 layouts over one compute path
// (RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU), with a KV cache.
#pragma once

#include <vector>

#include "engine/config.h"
#include "engine/kernels.h"
#include "engine/weights.h"

namespace firstread::engine {

struct LlmLayer {
  const float *attn_norm = nullptr, *ffn_norm = nullptr;
  WeightView wq, wk, wv, wqkv;  // wqkv: InternLM2's fused, grouped per KV head
  const float *bq = nullptr, *bk = nullptr, *bv = nullptr, *bqkv = nullptr, *bo = nullptr;
  WeightView wo, w_gate, w_up, w_down;
};

class LlmDecoder {
 public:
  LlmDecoder(const LlmHParams& hp, WeightStore& ws);
  const LlmHParams& hparams() const { return hp_; }

  // Embedding rows for ids into out[n][hidden]; throws on an id out of range.
  void embed(const int* ids, int n, float* out) const;
  // Clears the cache and sizes it for `max_tokens` positions.
  void reset(int max_tokens);
  int n_past() const { return n_past_; }
  // Runs n new positions (embeddings x[n][hidden]) and writes the logits of
  // the last one into logits[vocab].
  void forward(ThreadPool& pool, const float* x, int n, float* logits);

 private:
  void attention_batch(ThreadPool& pool, int layer, int n);
  void apply_rope(float* v, int n_vec_heads, int pos);
  LlmHParams hp_;
  WeightView tok_emb_, lm_head_;
  const float* final_norm_ = nullptr;
  std::vector<LlmLayer> layers_;
  int max_tokens_ = 0, n_past_ = 0;
  std::vector<float> k_cache_, v_cache_;  // [layer][pos][kv_dim]
  std::vector<float> rope_cos_, rope_sin_;  // [pos][head_dim/2]
  LinearScratch scratch_;
  std::vector<float> x_, h_, q_, k_, v_, qkv_, attn_, gate_, up_, scores_;
};

}  // namespace firstread::engine
