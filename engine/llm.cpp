#include "engine/llm.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/common.h"
#include "engine/model_parallel.h"

namespace firstread::engine {

LlmDecoder::LlmDecoder(const LlmHParams& hp, WeightStore& ws) : hp_(hp) {
  const int d = hp.hidden, hd = hp.head_dim(), qd = hp.n_heads * hd, kvd = hp.n_kv_heads * hd, I = hp.intermediate;
  const bool ilm = hp.arch == LlmArch::InternLM2;
  const std::string m = "language_model.model.";
  tok_emb_ = ws.matrix(m + (ilm ? "tok_embeddings.weight" : "embed_tokens.weight"), hp.vocab, d);
  final_norm_ = ws.floats(m + "norm.weight", {d});
  const std::string head = ilm ? "language_model.output.weight" : "language_model.lm_head.weight";
  if (hp.tie_embeddings && !ws.has(head)) lm_head_ = tok_emb_;
  else lm_head_ = ws.matrix(head, hp.vocab, d);
  for (int i = 0; i < hp.n_layers; ++i) {
    const std::string l = m + "layers." + std::to_string(i) + ".";
    LlmLayer L;
    if (ilm) {
      L.attn_norm = ws.floats(l + "attention_norm.weight", {d});
      L.ffn_norm = ws.floats(l + "ffn_norm.weight", {d});
      L.wqkv = ws.matrix(l + "attention.wqkv.weight", qd + 2 * kvd, d);
      if (hp.qkv_bias) L.bqkv = ws.floats(l + "attention.wqkv.bias", {qd + 2 * kvd});
      L.wo = ws.matrix(l + "attention.wo.weight", d, qd);
      if (hp.o_bias) L.bo = ws.floats(l + "attention.wo.bias", {d});
      L.w_gate = ws.matrix(l + "feed_forward.w1.weight", I, d);
      L.w_up = ws.matrix(l + "feed_forward.w3.weight", I, d);
      L.w_down = ws.matrix(l + "feed_forward.w2.weight", d, I);
    } else {
      L.attn_norm = ws.floats(l + "input_layernorm.weight", {d});
      L.ffn_norm = ws.floats(l + "post_attention_layernorm.weight", {d});
      L.wq = ws.matrix(l + "self_attn.q_proj.weight", qd, d);
      L.wk = ws.matrix(l + "self_attn.k_proj.weight", kvd, d);
      L.wv = ws.matrix(l + "self_attn.v_proj.weight", kvd, d);
      if (hp.qkv_bias) {
        L.bq = ws.floats(l + "self_attn.q_proj.bias", {qd});
        L.bk = ws.floats(l + "self_attn.k_proj.bias", {kvd});
        L.bv = ws.floats(l + "self_attn.v_proj.bias", {kvd});
      }
      L.wo = ws.matrix(l + "self_attn.o_proj.weight", d, qd);
      if (hp.o_bias) L.bo = ws.floats(l + "self_attn.o_proj.bias", {d});
      L.w_gate = ws.matrix(l + "mlp.gate_proj.weight", I, d);
      L.w_up = ws.matrix(l + "mlp.up_proj.weight", I, d);
      L.w_down = ws.matrix(l + "mlp.down_proj.weight", d, I);
    }
    layers_.push_back(L);
  }
}

void LlmDecoder::embed(const int* ids, int n, float* out) const {
  for (int i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= hp_.vocab)
      throw EngineError("token id " + std::to_string(ids[i]) + " out of range for vocab_size " +
                        std::to_string(hp_.vocab));
    convert_rows_f32(tok_emb_, ids[i], ids[i] + 1, out + size_t(i) * hp_.hidden);
  }
}

void LlmDecoder::ensure_rope(int max_tokens) {
  if (max_tokens <= rope_tokens_) return;
  // RoPE table computed as HF does: inv_freq in float32, angle = pos * inv_freq.
  const int hd = hp_.head_dim(), half = hd / 2;
  rope_cos_.resize(size_t(max_tokens) * half);
  rope_sin_.resize(size_t(max_tokens) * half);
  for (int i = 0; i < half; ++i) {
    const float inv = 1.0f / std::pow(hp_.rope_theta, float(2 * i) / float(hd));
    for (int p = 0; p < max_tokens; ++p) {
      const float a = float(p) * inv;
      rope_cos_[size_t(p) * half + i] = std::cos(a);
      rope_sin_[size_t(p) * half + i] = std::sin(a);
    }
  }
  rope_tokens_ = max_tokens;
}

void LlmDecoder::init_cache(KvCache& cache, int max_tokens) {
  if (max_tokens > hp_.max_positions)
    throw EngineError("context of " + std::to_string(max_tokens) + " tokens exceeds max_position_embeddings " +
                      std::to_string(hp_.max_positions));
  const int kvd = hp_.n_kv_heads * hp_.head_dim();
  if (max_tokens > cache.capacity) {
    cache.k.assign(size_t(hp_.n_layers) * max_tokens * kvd, 0.f);
    cache.v.assign(size_t(hp_.n_layers) * max_tokens * kvd, 0.f);
    cache.capacity = max_tokens;
  }
  ensure_rope(max_tokens);
  cache.n_past = 0;
}

void LlmDecoder::apply_rope(float* v, int n_vec_heads, int pos) const {
  const int hd = hp_.head_dim(), half = hd / 2;
  const float* c = rope_cos_.data() + size_t(pos) * half;
  const float* s = rope_sin_.data() + size_t(pos) * half;
  for (int h = 0; h < n_vec_heads; ++h) {
    float* x = v + size_t(h) * hd;
    for (int i = 0; i < half; ++i) {
      const float a = x[i], b = x[i + half];
      x[i] = a * c[i] - b * s[i];
      x[i + half] = b * c[i] + a * s[i];
    }
  }
}

// A pass is one sequence's n positions or one position of each of several
// sequences; every cache must have room for its new positions.
void LlmDecoder::check_pass(const SeqRows* seqs, int n_seqs, int* rows) const {
  if (n_seqs <= 0) throw EngineError("forward with no sequences");
  int total = 0;
  for (int s = 0; s < n_seqs; ++s) {
    const SeqRows& r = seqs[s];
    if (r.n <= 0) throw EngineError("forward with no tokens");
    if (n_seqs > 1 && r.n != 1)
      throw std::logic_error("a pass over several sequences takes one new position of each");
    if (r.cache->n_past + r.n > r.cache->capacity)
      throw EngineError("KV cache full: " + std::to_string(r.cache->n_past + r.n) + " > " +
                        std::to_string(r.cache->capacity));
    total += r.n;
  }
  *rows = total;
}

// Decode: one query per sequence; (sequence, KV head) pairs split over the
// threads, each pair's query heads (the GQA group) together so the group
// reads its cached keys and values once, each head's scores in its own slice
// of scores_. Per head exactly what a sequence decoded alone computes.
void LlmDecoder::attention_decode(ThreadPool& pool, int layer, const SeqRows* seqs, int n_seqs) {
  const int hd = hp_.head_dim(), H = hp_.n_heads, KV = hp_.n_kv_heads, group = H / KV;
  const int qd = H * hd, kvd = KV * hd;
  const float scale = 1.0f / std::sqrt(float(hd));
  score_offsets_.resize(size_t(n_seqs) + 1);
  score_offsets_[0] = 0;
  for (int s = 0; s < n_seqs; ++s)
    score_offsets_[s + 1] = score_offsets_[s] + size_t(H) * size_t(seqs[s].cache->n_past + 1);
  scores_.resize(score_offsets_[n_seqs]);
  pool.parallel_for(n_seqs * KV, [&](int task) {
    const int s = task / KV, g = task % KV, h0 = g * group;
    const KvCache& c = *seqs[s].cache;
    const int total = c.n_past + 1;
    const float* kc = c.k.data() + size_t(layer) * c.capacity * kvd;
    const float* vc = c.v.data() + size_t(layer) * c.capacity * kvd;
    const float* q = q_.data() + size_t(s) * qd + size_t(h0) * hd;
    float* sc = scores_.data() + score_offsets_[s] + size_t(h0) * total;
    attention_decode_group(q, group, kc + g * hd, vc + g * hd, kvd, total, hd, scale, sc,
                           attn_.data() + size_t(s) * qd + size_t(h0) * hd);
  });
}

// Prefill: causal attention of n new queries (q_[n][qd]) over the cache
// [0, n_past + n); heads split statically over the threads, each with its own scores.
void LlmDecoder::attention_prefill(ThreadPool& pool, int layer, const KvCache& cache, int n) {
  const int hd = hp_.head_dim(), H = hp_.n_heads, KV = hp_.n_kv_heads, group = H / KV;
  const int qd = H * hd, kvd = KV * hd, n_past = cache.n_past;
  const float scale = 1.0f / std::sqrt(float(hd));
  const float* kc = cache.k.data() + size_t(layer) * cache.capacity * kvd;
  const float* vc = cache.v.data() + size_t(layer) * cache.capacity * kvd;
  const int parts = pool.size();
  const size_t per_part = size_t(causal_attention_scratch_floats(n, n_past, hd));
  scores_.resize(size_t(parts) * per_part);
  pool.parallel_for(parts, [&](int part) {
    float* sc = scores_.data() + size_t(part) * per_part;
    for (int h = part; h < H; h += parts) {
      const int g = h / group;
      causal_attention_head(q_.data() + h * hd, qd, kc + g * hd, vc + g * hd, kvd, n, n_past, hd, scale,
                            attn_.data() + h * hd, qd, sc);
    }
  }, /*spin_after=*/false);
}

void LlmDecoder::attention_block(ThreadPool& pool, int li, const float* h, const SeqRows* seqs, int n_seqs,
                                 float* out) {
  int rows = 0;
  check_pass(seqs, n_seqs, &rows);
  const LlmLayer& L = layers_.at(size_t(li));
  const int hd = hp_.head_dim(), H = hp_.n_heads, KV = hp_.n_kv_heads, group = H / KV;
  const int qd = H * hd, kvd = KV * hd;
  const bool decode_rows = n_seqs > 1;
  q_.resize(size_t(rows) * qd);
  k_.resize(size_t(rows) * kvd);
  v_.resize(size_t(rows) * kvd);
  attn_.resize(size_t(rows) * qd);
  if (!L.wqkv.empty()) {
    // InternLM2: rows grouped per KV head as [q x group, k, v]; unpack.
    qkv_.resize(size_t(rows) * (qd + 2 * kvd));
    if (decode_rows) linear_rows(pool, h, rows, L.wqkv, L.bqkv, qkv_.data(), scratch_);
    else linear(pool, h, rows, L.wqkv, L.bqkv, qkv_.data(), scratch_);
    for (int t = 0; t < rows; ++t) {
      const float* src = qkv_.data() + size_t(t) * (qd + 2 * kvd);
      for (int g = 0; g < KV; ++g) {
        const float* blk = src + size_t(g) * (group + 2) * hd;
        std::memcpy(q_.data() + size_t(t) * qd + size_t(g) * group * hd, blk, size_t(group) * hd * 4);
        std::memcpy(k_.data() + size_t(t) * kvd + g * hd, blk + group * hd, size_t(hd) * 4);
        std::memcpy(v_.data() + size_t(t) * kvd + g * hd, blk + (group + 1) * hd, size_t(hd) * 4);
      }
    }
  } else if (decode_rows) {
    linear_multi_rows(pool, h, rows, {{L.wq, L.bq, q_.data()}, {L.wk, L.bk, k_.data()}, {L.wv, L.bv, v_.data()}},
                      scratch_);
  } else {
    linear_multi(pool, h, rows, {{L.wq, L.bq, q_.data()}, {L.wk, L.bk, k_.data()}, {L.wv, L.bv, v_.data()}}, scratch_);
  }
  // RoPE at each row's own position; the new keys and values into its cache.
  parallel_rows(pool, rows, [&](int64_t a, int64_t b) {
    for (int64_t t = a; t < b; ++t) {
      KvCache& c = n_seqs == 1 ? *seqs[0].cache : *seqs[t].cache;
      const int pos = n_seqs == 1 ? c.n_past + int(t) : c.n_past;
      apply_rope(q_.data() + size_t(t) * qd, H, pos);
      apply_rope(k_.data() + size_t(t) * kvd, KV, pos);
      const size_t at = (size_t(li) * c.capacity + pos) * kvd;
      std::memcpy(c.k.data() + at, k_.data() + size_t(t) * kvd, size_t(kvd) * 4);
      std::memcpy(c.v.data() + at, v_.data() + size_t(t) * kvd, size_t(kvd) * 4);
    }
  });
  if (n_seqs == 1 && seqs[0].n > 1) attention_prefill(pool, li, *seqs[0].cache, seqs[0].n);
  else attention_decode(pool, li, seqs, n_seqs);
  if (decode_rows) linear_rows(pool, attn_.data(), rows, L.wo, L.bo, out, scratch_);
  else linear(pool, attn_.data(), rows, L.wo, L.bo, out, scratch_);
}

void LlmDecoder::ffn_block(ThreadPool& pool, int li, const float* h, int rows, bool decode_rows, float* out) {
  const LlmLayer& L = layers_.at(size_t(li));
  const int I = hp_.intermediate;
  gate_.resize(size_t(rows) * I);
  up_.resize(size_t(rows) * I);
  if (decode_rows)
    linear_multi_rows(pool, h, rows, {{L.w_gate, nullptr, gate_.data()}, {L.w_up, nullptr, up_.data()}}, scratch_);
  else
    linear_multi(pool, h, rows, {{L.w_gate, nullptr, gate_.data()}, {L.w_up, nullptr, up_.data()}}, scratch_);
  parallel_rows(pool, rows, [&](int64_t a, int64_t b) { silu_mul(gate_.data() + a * I, up_.data() + a * I, (b - a) * I); });
  if (decode_rows) linear_rows(pool, gate_.data(), rows, L.w_down, nullptr, out, scratch_);
  else linear(pool, gate_.data(), rows, L.w_down, nullptr, out, scratch_);
}

void LlmDecoder::decoder_layer(ThreadPool& pool, int li, float* x, const SeqRows* seqs, int n_seqs) {
  int rows = 0;
  check_pass(seqs, n_seqs, &rows);
  const LlmLayer& L = layers_.at(size_t(li));
  const int d = hp_.hidden;
  h_.resize(size_t(rows) * d);
  o_.resize(size_t(rows) * d);
  parallel_rows(pool, rows, [&](int64_t a, int64_t b) {
    rms_norm(x + a * d, L.attn_norm, h_.data() + a * d, b - a, d, hp_.rms_eps);
  });
  attention_block(pool, li, h_.data(), seqs, n_seqs, o_.data());
  parallel_rows(pool, rows, [&](int64_t a, int64_t b) {
    for (size_t i = size_t(a) * d; i < size_t(b) * d; ++i) x[i] += o_[i];
    rms_norm(x + a * d, L.ffn_norm, h_.data() + a * d, b - a, d, hp_.rms_eps);
  });
  ffn_block(pool, li, h_.data(), rows, n_seqs > 1, o_.data());
  parallel_rows(pool, rows, [&](int64_t a, int64_t b) {
    for (size_t i = size_t(a) * d; i < size_t(b) * d; ++i) x[i] += o_[i];
  });
}

void LlmDecoder::run_layers(ThreadPool& pool, const SeqRows* seqs, int n_seqs) {
  for (int li = 0; li < hp_.n_layers; ++li) decoder_layer(pool, li, x_.data(), seqs, n_seqs);
  for (int s = 0; s < n_seqs; ++s) seqs[s].cache->n_past += seqs[s].n;
}

void LlmDecoder::forward(ThreadPool& pool, KvCache& cache, const float* x_in, int n, float* logits) {
  const SeqRows seq{&cache, n};
  int rows = 0;
  check_pass(&seq, 1, &rows);
  const int d = hp_.hidden;
  x_.assign(x_in, x_in + size_t(n) * d);
  run_layers(pool, &seq, 1);
  // Only the last position's logits are needed for generation.
  rms_norm(x_.data() + size_t(n - 1) * d, final_norm_, h_.data(), 1, d, hp_.rms_eps);
  linear(pool, h_.data(), 1, lm_head_, nullptr, logits, scratch_);
}

void LlmDecoder::forward_decode(ThreadPool& pool, KvCache* const* caches, int n_seqs, const float* x_in,
                                float* logits) {
  if (n_seqs == 1) return forward(pool, *caches[0], x_in, 1, logits);
  seq_rows_.resize(size_t(n_seqs));
  for (int s = 0; s < n_seqs; ++s) seq_rows_[s] = SeqRows{caches[s], 1};
  int rows = 0;
  check_pass(seq_rows_.data(), n_seqs, &rows);
  const int d = hp_.hidden;
  x_.assign(x_in, x_in + size_t(n_seqs) * d);
  run_layers(pool, seq_rows_.data(), n_seqs);
  parallel_rows(pool, n_seqs, [&](int64_t a, int64_t b) {
    rms_norm(x_.data() + a * d, final_norm_, h_.data() + a * d, b - a, d, hp_.rms_eps);
  });
  linear_rows(pool, h_.data(), n_seqs, lm_head_, nullptr, logits, scratch_);
}

}  // namespace firstread::engine
