// The decoder: LLaMA, Qwen2 and InternLM2 layouts over one compute path
// (RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU), with one KV
// cache per sequence so several sequences can share a pass over the weights.
//
// Named blocks, each callable (and tested) on its own:
//   attention_block  q/k/v products, RoPE, the new keys/values into each
//                    sequence's cache, causal attention over it, output product
//   ffn_block        SwiGLU: down(silu(gate(h)) * up(h))
//   decoder_layer    x += attention(norm(x)); x += ffn(norm(x))
// A pass is either one sequence's n consecutive positions (prefill, or decode
// of that sequence alone) or one new position of each of B sequences (a
// batched decode step: products through linear_rows, so every weight row is
// read once for all B and each sequence gets the bits it gets alone).
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

// One sequence's keys and values, [layer][pos][kv_dim] each (F32), and how
// many positions it holds. Sized once per request (LlmDecoder::init_cache);
// nothing is allocated per token.
struct KvCache {
  int capacity = 0;  // positions
  int n_past = 0;
  std::vector<float> k, v;
};

// The rows of a pass that belong to one sequence: n new positions starting
// at cache->n_past.
struct SeqRows {
  KvCache* cache = nullptr;
  int n = 0;
};

class LlmDecoder {
 public:
  LlmDecoder(const LlmHParams& hp, WeightStore& ws);
  const LlmHParams& hparams() const { return hp_; }
  const LlmLayer& layer(int i) const { return layers_.at(size_t(i)); }

  // Embedding rows for ids into out[n][hidden]; throws on an id out of range.
  void embed(const int* ids, int n, float* out) const;
  // Empties `cache` and sizes it for max_tokens positions (allocates only when
  // it grows); throws beyond max_position_embeddings.
  void init_cache(KvCache& cache, int max_tokens);

  // One sequence: n new positions (embeddings x[n][hidden]) appended to
  // `cache`; the logits of the last one into logits[vocab].
  void forward(ThreadPool& pool, KvCache& cache, const float* x, int n, float* logits);
  // A batched decode step: one new position of each of n_seqs sequences
  // (x[s][hidden] for caches[s]); logits[s][vocab] for each. Sequence s gets
  // exactly the logits forward(pool, *caches[s], x[s], 1, ...) gives.
  void forward_decode(ThreadPool& pool, KvCache* const* caches, int n_seqs, const float* x, float* logits);

  // The named blocks. rows = the sum of seqs[].n; either one sequence with
  // any n, or several with n = 1 each. Keys and values of the new positions
  // are written to each cache at n_past onwards; n_past is not advanced (the
  // caller does that after the last layer).
  // out[rows][hidden] = attention output (after the o projection) of the
  // normalised input h[rows][hidden].
  void attention_block(ThreadPool& pool, int layer, const float* h, const SeqRows* seqs, int n_seqs, float* out);
  // out[rows][hidden] = down(silu(gate(h)) * up(h)); decode_rows: products
  // by linear_rows (one sequence's row each) rather than linear.
  void ffn_block(ThreadPool& pool, int layer, const float* h, int rows, bool decode_rows, float* out);
  // x[rows][hidden] += attention(rms_norm(x)); x += ffn(rms_norm(x)).
  void decoder_layer(ThreadPool& pool, int layer, float* x, const SeqRows* seqs, int n_seqs);

  // The single-sequence API the engine had before per-sequence caches (tests,
  // tools): a cache of the decoder's own.
  void reset(int max_tokens) { init_cache(own_cache_, max_tokens); }
  int n_past() const { return own_cache_.n_past; }
  void forward(ThreadPool& pool, const float* x, int n, float* logits) { forward(pool, own_cache_, x, n, logits); }

 private:
  void ensure_rope(int max_tokens);
  void apply_rope(float* v, int n_vec_heads, int pos) const;
  void attention_decode(ThreadPool& pool, int layer, const SeqRows* seqs, int n_seqs);
  void attention_prefill(ThreadPool& pool, int layer, const KvCache& cache, int n);
  void check_pass(const SeqRows* seqs, int n_seqs, int* rows) const;
  void run_layers(ThreadPool& pool, const SeqRows* seqs, int n_seqs);
  LlmHParams hp_;
  WeightView tok_emb_, lm_head_;
  const float* final_norm_ = nullptr;
  std::vector<LlmLayer> layers_;
  int rope_tokens_ = 0;
  std::vector<float> rope_cos_, rope_sin_;  // [pos][head_dim/2]
  KvCache own_cache_;
  LinearScratch scratch_;
  // Scratch of one pass, grown to the largest pass seen (no allocation per token).
  std::vector<float> x_, h_, o_, q_, k_, v_, qkv_, attn_, gate_, up_, scores_;
  std::vector<size_t> score_offsets_;
  std::vector<SeqRows> seq_rows_;
};

}  // namespace firstread::engine
