#include "engine/llm.h"

#include <cblas.h>

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

void LlmDecoder::reset(int max_tokens) {
  if (max_tokens > hp_.max_positions)
    throw EngineError("context of " + std::to_string(max_tokens) + " tokens exceeds max_position_embeddings " +
                      std::to_string(hp_.max_positions));
  const int hd = hp_.head_dim(), kvd = hp_.n_kv_heads * hd;
  if (max_tokens > max_tokens_) {
    k_cache_.assign(size_t(hp_.n_layers) * max_tokens * kvd, 0.f);
    v_cache_.assign(size_t(hp_.n_layers) * max_tokens * kvd, 0.f);
    // RoPE table computed as HF does: inv_freq in float32, angle = pos * inv_freq.
    const int half = hd / 2;
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
    max_tokens_ = max_tokens;
  }
  n_past_ = 0;
}

void LlmDecoder::apply_rope(float* v, int n_vec_heads, int pos) {
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

// Causal attention of n new queries (q_[n][qd]) over the cache [0, n_past + n).
void LlmDecoder::attention_batch(ThreadPool& pool, int layer, int n) {
  const int hd = hp_.head_dim(), H = hp_.n_heads, KV = hp_.n_kv_heads, group = H / KV;
  const int qd = H * hd, kvd = KV * hd, total = n_past_ + n;
  const float scale = 1.0f / std::sqrt(float(hd));
  const float* kc = k_cache_.data() + size_t(layer) * max_tokens_ * kvd;
  const float* vc = v_cache_.data() + size_t(layer) * max_tokens_ * kvd;
  if (n == 1) {
    // Decode: heads split over threads; scores per head live in a slice of scores_.
    scores_.resize(size_t(H) * total);
    pool.parallel_for(H, [&](int h) {
      const int g = h / group;
      const float* q = q_.data() + size_t(h) * hd;
      float* sc = scores_.data() + size_t(h) * total;
      for (int t = 0; t < total; ++t) sc[t] = dot_f32(q, kc + size_t(t) * kvd + g * hd, hd) * scale;
      softmax_inplace(sc, total);
      float* o = attn_.data() + size_t(h) * hd;
      std::fill(o, o + hd, 0.f);
      for (int t = 0; t < total; ++t) axpy_f32(o, sc[t], vc + size_t(t) * kvd + g * hd, hd);
    });
    return;
  }
  // Prefill: heads split statically over the threads, each with its own scores.
  const int parts = pool.size();
  scores_.resize(size_t(parts) * n * total);
  pool.parallel_for(parts, [&](int part) {
    float* sc = scores_.data() + size_t(part) * n * total;
    for (int h = part; h < H; h += parts) {
      const int g = h / group;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, total, hd, scale, q_.data() + h * hd, qd, kc + g * hd,
                  kvd, 0.f, sc, total);
      for (int r = 0; r < n; ++r) {
        float* row = sc + size_t(r) * total;
        const int valid = n_past_ + r + 1;  // causal: keys up to this query's position
        softmax_inplace(row, valid);
        std::fill(row + valid, row + total, 0.f);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hd, total, 1.f, sc, total, vc + g * hd, kvd, 0.f,
                  attn_.data() + h * hd, qd);
    }
  }, /*spin_after=*/false);
}

void LlmDecoder::forward(ThreadPool& pool, const float* x_in, int n, float* logits) {
  if (n <= 0) throw EngineError("forward with no tokens");
  if (n_past_ + n > max_tokens_)
    throw EngineError("KV cache full: " + std::to_string(n_past_ + n) + " > " + std::to_string(max_tokens_));
  const int d = hp_.hidden, hd = hp_.head_dim(), H = hp_.n_heads, KV = hp_.n_kv_heads;
  const int qd = H * hd, kvd = KV * hd, I = hp_.intermediate, group = H / KV;
  x_.assign(x_in, x_in + size_t(n) * d);
  h_.resize(size_t(n) * d);
  q_.resize(size_t(n) * qd);
  attn_.resize(size_t(n) * qd);
  gate_.resize(size_t(n) * I);
  up_.resize(size_t(n) * I);
  for (int li = 0; li < hp_.n_layers; ++li) {
    const LlmLayer& L = layers_[li];
    float* kc = k_cache_.data() + (size_t(li) * max_tokens_ + n_past_) * kvd;
    float* vc = v_cache_.data() + (size_t(li) * max_tokens_ + n_past_) * kvd;
    parallel_rows(pool, n, [&](int64_t a, int64_t b) {
      rms_norm(x_.data() + a * d, L.attn_norm, h_.data() + a * d, b - a, d, hp_.rms_eps);
    });
    if (!L.wqkv.empty()) {
      // InternLM2: rows grouped per KV head as [q x group, k, v]; unpack.
      qkv_.resize(size_t(n) * (qd + 2 * kvd));
      linear(pool, h_.data(), n, L.wqkv, L.bqkv, qkv_.data(), scratch_);
      for (int t = 0; t < n; ++t) {
        const float* src = qkv_.data() + size_t(t) * (qd + 2 * kvd);
        for (int g = 0; g < KV; ++g) {
          const float* blk = src + size_t(g) * (group + 2) * hd;
          std::memcpy(q_.data() + size_t(t) * qd + size_t(g) * group * hd, blk, size_t(group) * hd * 4);
          std::memcpy(kc + size_t(t) * kvd + g * hd, blk + group * hd, size_t(hd) * 4);
          std::memcpy(vc + size_t(t) * kvd + g * hd, blk + (group + 1) * hd, size_t(hd) * 4);
        }
      }
    } else {
      // k and v go straight into the cache.
      linear_multi(pool, h_.data(), n, {{L.wq, L.bq, q_.data()}, {L.wk, L.bk, kc}, {L.wv, L.bv, vc}}, scratch_);
    }
    parallel_rows(pool, n, [&](int64_t a, int64_t b) {
      for (int64_t t = a; t < b; ++t) {
        apply_rope(q_.data() + size_t(t) * qd, H, n_past_ + int(t));
        apply_rope(kc + size_t(t) * kvd, KV, n_past_ + int(t));
      }
    });
    attention_batch(pool, li, n);
    linear(pool, attn_.data(), n, L.wo, L.bo, h_.data(), scratch_);
    parallel_rows(pool, n, [&](int64_t a, int64_t b) {
      for (size_t i = size_t(a) * d; i < size_t(b) * d; ++i) x_[i] += h_[i];
      rms_norm(x_.data() + a * d, L.ffn_norm, h_.data() + a * d, b - a, d, hp_.rms_eps);
    });
    linear_multi(pool, h_.data(), n, {{L.w_gate, nullptr, gate_.data()}, {L.w_up, nullptr, up_.data()}}, scratch_);
    parallel_rows(pool, n, [&](int64_t a, int64_t b) { silu_mul(gate_.data() + a * I, up_.data() + a * I, (b - a) * I); });
    linear(pool, gate_.data(), n, L.w_down, nullptr, h_.data(), scratch_);
    parallel_rows(pool, n, [&](int64_t a, int64_t b) {
      for (size_t i = size_t(a) * d; i < size_t(b) * d; ++i) x_[i] += h_[i];
    });
  }
  n_past_ += n;
  // Only the last position's logits are needed for generation.
  rms_norm(x_.data() + size_t(n - 1) * d, final_norm_, h_.data(), 1, d, hp_.rms_eps);
  linear(pool, h_.data(), 1, lm_head_, nullptr, logits, scratch_);
}

}  // namespace firstread::engine
