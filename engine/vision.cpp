#include "engine/vision.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/common.h"
#include "engine/model_parallel.h"

namespace firstread::engine {

VisionEncoder::VisionEncoder(const ModelHParams& hp, WeightStore& ws, int llm_hidden)
    : hp_(hp.vision), chat_(hp.chat), llm_hidden_(llm_hidden) {
  const int d = hp_.hidden, p = hp_.patch_size, g0 = hp_.grid();
  n_layers_run_ = chat_.select_layer < 0 ? hp_.n_layers + 1 + chat_.select_layer : chat_.select_layer;
  const std::string e = "vision_model.embeddings.";
  patch_w_ = ws.matrix(e + "patch_embedding.weight", d, 3 * p * p, {d, 3, p, p});
  patch_b_ = ws.floats(e + "patch_embedding.bias", {d});
  cls_ = ws.floats(e + "class_embedding", {1, 1, d});
  pos_ = ws.floats(e + "position_embedding", {1, g0 * g0 + 1, d});
  const bool ln = hp_.norm == VisionNorm::LayerNorm;
  // Layers past the selected one are never run, so they are not bound either.
  for (int i = 0; i < n_layers_run_; ++i) {
    const std::string l = "vision_model.encoder.layers." + std::to_string(i) + ".";
    VisionLayer L;
    L.norm1_w = ws.floats(l + "norm1.weight", {d});
    L.norm2_w = ws.floats(l + "norm2.weight", {d});
    if (ln) {
      L.norm1_b = ws.floats(l + "norm1.bias", {d});
      L.norm2_b = ws.floats(l + "norm2.bias", {d});
    }
    L.qkv = ws.matrix(l + "attn.qkv.weight", 3 * d, d);
    if (hp_.qkv_bias) L.qkv_b = ws.floats(l + "attn.qkv.bias", {3 * d});
    if (hp_.qk_norm) {
      L.q_norm_w = ws.floats(l + "attn.q_norm.weight", {d});
      L.k_norm_w = ws.floats(l + "attn.k_norm.weight", {d});
    }
    L.proj = ws.matrix(l + "attn.proj.weight", d, d);
    L.proj_b = ws.floats(l + "attn.proj.bias", {d});
    L.ls1 = ws.floats(l + "ls1", {d});
    L.ls2 = ws.floats(l + "ls2", {d});
    L.fc1 = ws.matrix(l + "mlp.fc1.weight", hp_.intermediate, d);
    L.fc1_b = ws.floats(l + "mlp.fc1.bias", {hp_.intermediate});
    L.fc2 = ws.matrix(l + "mlp.fc2.weight", d, hp_.intermediate);
    L.fc2_b = ws.floats(l + "mlp.fc2.bias", {d});
    layers_.push_back(L);
  }
  const int c4 = 4 * d;
  mlp_ln_w_ = ws.floats("mlp1.0.weight", {c4});
  mlp_ln_b_ = ws.floats("mlp1.0.bias", {c4});
  mlp1_ = ws.matrix("mlp1.1.weight", llm_hidden, c4);
  mlp1_b_ = ws.floats("mlp1.1.bias", {llm_hidden});
  mlp3_ = ws.matrix("mlp1.3.weight", llm_hidden, llm_hidden);
  mlp3_b_ = ws.floats("mlp1.3.bias", {llm_hidden});
  interpolate_pos_embed(chat_.image_size / p);
}

// torch's upsample_bicubic2d (A = -0.75, align_corners=False, indices clamped).
static void cubic_coeffs(float t, float c[4]) {
  const float A = -0.75f;
  auto near = [&](float x) { return ((A + 2) * x - (A + 3)) * x * x + 1; };
  auto far = [&](float x) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; };
  c[0] = far(t + 1);
  c[1] = near(t);
  c[2] = near(1 - t);
  c[3] = far(2 - t);
}

void VisionEncoder::interpolate_pos_embed(int grid) {
  const int d = hp_.hidden, g0 = hp_.grid();
  pos_grid_.assign(size_t(grid * grid + 1) * d, 0.f);
  std::memcpy(pos_grid_.data(), pos_, size_t(d) * 4);
  const float* src = pos_ + d;  // [g0][g0][d]
  if (grid == g0) {
    std::memcpy(pos_grid_.data() + d, src, size_t(g0 * g0) * d * 4);
    return;
  }
  const float scale = float(g0) / float(grid);
  for (int oy = 0; oy < grid; ++oy) {
    float ry = scale * (oy + 0.5f) - 0.5f;
    int iy = int(std::floor(ry));
    float cy[4];
    cubic_coeffs(ry - iy, cy);
    for (int ox = 0; ox < grid; ++ox) {
      float rx = scale * (ox + 0.5f) - 0.5f;
      int ix = int(std::floor(rx));
      float cx[4];
      cubic_coeffs(rx - ix, cx);
      float* dst = pos_grid_.data() + size_t(1 + oy * grid + ox) * d;
      for (int a = 0; a < 4; ++a) {
        int yy = std::clamp(iy - 1 + a, 0, g0 - 1);
        for (int b = 0; b < 4; ++b) {
          int xx = std::clamp(ix - 1 + b, 0, g0 - 1);
          const float w = cy[a] * cx[b];
          const float* s = src + size_t(yy * g0 + xx) * d;
          for (int k = 0; k < d; ++k) dst[k] += w * s[k];
        }
      }
    }
  }
}

void pixel_shuffle(const float* x, int grid, int c, int ps_version, float* out) {
  pixel_shuffle_rows(x, grid, c, ps_version, out, 0, grid / 2);
}

void pixel_shuffle_rows(const float* x, int grid, int c, int ps_version, float* out, int row_begin, int row_end) {
  const int g2 = grid / 2;
  for (int i = row_begin; i < row_end; ++i)  // output row
    for (int j = 0; j < g2; ++j) {  // output column
      const int token = ps_version == 2 ? i * g2 + j : j * g2 + i;
      float* o = out + size_t(token) * 4 * c;
      const int src[4][2] = {{2 * i, 2 * j}, {2 * i, 2 * j + 1}, {2 * i + 1, 2 * j}, {2 * i + 1, 2 * j + 1}};
      for (int q = 0; q < 4; ++q)
        std::memcpy(o + q * c, x + size_t(src[q][0] * grid + src[q][1]) * c, size_t(c) * 4);
    }
}

void VisionEncoder::encode_tiles(ThreadPool& pool, const float* pixels, int n_tiles, float* out) {
  Job job = start(pixels, n_tiles, out, int(layers_.size()));
  while (!step(pool, job)) {
  }
}

VisionEncoder::Job VisionEncoder::start(const float* pixels, int n_tiles, float* out, int layers_per_unit) const {
  const int d = hp_.hidden, grid = chat_.image_size / hp_.patch_size, N = grid * grid + 1, I = hp_.intermediate;
  Job job;
  job.pixels = pixels;
  job.n_tiles = n_tiles;
  job.out = out;
  job.layers_per_unit = std::max(1, layers_per_unit);
  // Tiles share every matrix product (one product over all their tokens),
  // bounded so the MLP activations stay around 256 MB.
  const int64_t per_tile = int64_t(N) * (I + 6 * d) * 4;
  job.batch = int(std::max<int64_t>(1, std::min<int64_t>(n_tiles, (int64_t(256) << 20) / per_tile)));
  return job;
}

int VisionEncoder::units(const Job& job) const {
  const int layers = int(layers_.size()), per = job.layers_per_unit;
  const int batches = (job.n_tiles + job.batch - 1) / job.batch;
  return batches * (2 + (layers + per - 1) / per);
}

bool VisionEncoder::step(ThreadPool& pool, Job& job) {
  if (job.t0 >= job.n_tiles) return true;
  const int d = hp_.hidden, S = chat_.image_size, grid = S / hp_.patch_size, N = grid * grid + 1;
  const int T = std::min(job.batch, job.n_tiles - job.t0), layers = int(layers_.size());
  const int64_t R = int64_t(T) * N;  // rows over the batch's tiles
  block_.reserve(R, d, hp_.intermediate, N, hp_.head_dim(), pool.size());
  if (job.stage == 0) {
    job.x.resize(size_t(R) * d);
    embed_patches(pool, job.pixels + size_t(job.t0) * 3 * S * S, T, job.x.data());
    job.stage = 1;
    return false;
  }
  if (job.stage <= layers) {
    const int l0 = job.stage - 1, l1 = std::min(layers, l0 + job.layers_per_unit);
    for (int l = l0; l < l1; ++l) vit_block(pool, hp_, layers_[size_t(l)], job.x.data(), T, N, block_);
    job.stage = 1 + l1;
    return false;
  }
  project(pool, job.x.data(), T, job.out + size_t(job.t0) * chat_.num_image_token * llm_hidden_);
  job.t0 += T;
  job.stage = 0;
  if (job.t0 < job.n_tiles) return false;
  job.x = {};
  return true;
}

void VitBlockScratch::reserve(int64_t rows, int d, int intermediate, int tokens, int head_dim, int threads) {
  h.resize(size_t(rows) * d);
  qkv.resize(size_t(rows) * 3 * d);
  attn.resize(size_t(rows) * d);
  mlp.resize(size_t(rows) * intermediate);
  scores.resize(size_t(threads) * size_t(attention_scratch_floats(tokens, head_dim)));
}

void vit_block(ThreadPool& pool, const VisionHParams& hp, const VisionLayer& L, float* x, int T, int N,
               VitBlockScratch& s) {
  const int d = hp.hidden, H = hp.n_heads, hd = hp.head_dim(), I = hp.intermediate;
  const int64_t R = int64_t(T) * N;
  const bool ln = hp.norm == VisionNorm::LayerNorm;
  const float scale = 1.0f / std::sqrt(float(hd));
  // --- attention ---
  parallel_rows(pool, R, [&](int64_t a, int64_t b) {
    if (ln) layer_norm(x + a * d, L.norm1_w, L.norm1_b, s.h.data() + a * d, b - a, d, hp.norm_eps);
    else rms_norm(x + a * d, L.norm1_w, s.h.data() + a * d, b - a, d, hp.norm_eps);
  });
  linear(pool, s.h.data(), R, L.qkv, L.qkv_b, s.qkv.data(), s.linear);
  if (hp.qk_norm) {
    // RMSNorm over all heads jointly (the whole d-wide q and k vectors).
    parallel_rows(pool, R, [&](int64_t a, int64_t b) {
      for (int64_t r = a; r < b; ++r) {
        float* q = s.qkv.data() + size_t(r) * 3 * d;
        rms_norm(q, L.q_norm_w, q, 1, d, hp.norm_eps);
        rms_norm(q + d, L.k_norm_w, q + d, 1, d, hp.norm_eps);
      }
    });
  }
  // Heads (of every tile) split statically over the threads, each with its
  // own N x N score buffer.
  const int parts = pool.size();
  pool.parallel_for(parts, [&](int part) {
    float* sc = s.scores.data() + size_t(part) * size_t(attention_scratch_floats(N, hd));
    for (int job = part; job < T * H; job += parts) {
      const int t = job / H, hh = job % H;
      const float* base = s.qkv.data() + size_t(t) * N * 3 * d;
      const float* q = base + hh * hd;
      const float* k = base + d + hh * hd;
      const float* v = base + 2 * d + hh * hd;
      attention_head(q, k, v, 3 * d, N, hd, scale, s.attn.data() + size_t(t) * N * d + hh * hd, d, sc);
    }
  }, /*spin_after=*/false);
  linear(pool, s.attn.data(), R, L.proj, L.proj_b, s.h.data(), s.linear);
  // Residual with layer scale, then the MLP's norm, on the same rows.
  parallel_rows(pool, R, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r)
      for (int i = 0; i < d; ++i) x[size_t(r) * d + i] += L.ls1[i] * s.h[size_t(r) * d + i];
    if (ln) layer_norm(x + a * d, L.norm2_w, L.norm2_b, s.h.data() + a * d, b - a, d, hp.norm_eps);
    else rms_norm(x + a * d, L.norm2_w, s.h.data() + a * d, b - a, d, hp.norm_eps);
  });
  linear(pool, s.h.data(), R, L.fc1, L.fc1_b, s.mlp.data(), s.linear);
  pool.parallel_for(pool.size(), [&](int part) {
    size_t total = size_t(R) * I, a = total * part / pool.size(), b = total * (part + 1) / pool.size();
    gelu_erf(s.mlp.data() + a, int64_t(b - a));
  }, /*spin_after=*/false);
  linear(pool, s.mlp.data(), R, L.fc2, L.fc2_b, s.h.data(), s.linear);
  parallel_rows(pool, R, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r)
      for (int i = 0; i < d; ++i) x[size_t(r) * d + i] += L.ls2[i] * s.h[size_t(r) * d + i];
  });
}

// Patch embedding as a matrix product over im2col rows (c, ky, kx order =
// conv weight order), CLS first, plus the position table: x[T * N][d].
void VisionEncoder::embed_patches(ThreadPool& pool, const float* pixels, int T, float* x) {
  const int d = hp_.hidden, p = hp_.patch_size, S = chat_.image_size, grid = S / p;
  const int np = grid * grid, N = np + 1;
  tmp_.resize(size_t(T) * np * 3 * p * p);
  for (int t = 0; t < T; ++t)
    for (int gy = 0; gy < grid; ++gy)
      for (int gx = 0; gx < grid; ++gx) {
        float* row = tmp_.data() + (size_t(t) * np + gy * grid + gx) * 3 * p * p;
        const float* px = pixels + size_t(t) * 3 * S * S;
        for (int c = 0; c < 3; ++c)
          for (int ky = 0; ky < p; ++ky)
            std::memcpy(row + (c * p + ky) * p, px + (size_t(c) * S + gy * p + ky) * S + gx * p, size_t(p) * 4);
      }
  linear(pool, tmp_.data(), int64_t(T) * np, patch_w_, patch_b_, block_.h.data(), scratch_);
  for (int t = 0; t < T; ++t) {
    float* xt = x + size_t(t) * N * d;
    std::memcpy(xt, cls_, size_t(d) * 4);
    std::memcpy(xt + d, block_.h.data() + size_t(t) * np * d, size_t(np) * d * 4);
    parallel_rows(pool, N, [&](int64_t a, int64_t b) {
      for (size_t i = size_t(a) * d; i < size_t(b) * d; ++i) xt[i] += pos_grid_[i];
    });
  }
}

// Pixel shuffle (CLS dropped), mlp1's LayerNorm, fc, GELU, fc: out[T * num_image_token][llm_hidden].
void VisionEncoder::project(ThreadPool& pool, const float* x, int T, float* out) {
  const int d = hp_.hidden, grid = chat_.image_size / hp_.patch_size, N = grid * grid + 1;
  const int c4 = 4 * d, nt = chat_.num_image_token;
  shuffled_.resize(size_t(T) * nt * c4);
  const int g2 = grid / 2;
  parallel_rows(pool, int64_t(T) * g2, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b;) {  // r = tile * g2 + output row
      const int t = int(r / g2), row = int(r % g2), row_end = int(std::min<int64_t>(g2, row + (b - r)));
      const float* xt = x + size_t(t) * N * d + d;  // drop CLS
      pixel_shuffle_rows(xt, grid, d, chat_.ps_version, shuffled_.data() + size_t(t) * nt * c4, row, row_end);
      r += row_end - row;
    }
  }, /*min_rows=*/2);
  parallel_rows(pool, int64_t(T) * nt, [&](int64_t a, int64_t b) {
    layer_norm(shuffled_.data() + a * c4, mlp_ln_w_, mlp_ln_b_, shuffled_.data() + a * c4, b - a, c4, 1e-5f);
  });
  proj_tmp_.resize(size_t(T) * nt * llm_hidden_);
  linear(pool, shuffled_.data(), int64_t(T) * nt, mlp1_, mlp1_b_, proj_tmp_.data(), scratch_);
  parallel_rows(pool, int64_t(T) * nt, [&](int64_t a, int64_t b) {
    gelu_erf(proj_tmp_.data() + a * llm_hidden_, (b - a) * llm_hidden_);
  });
  linear(pool, proj_tmp_.data(), int64_t(T) * nt, mlp3_, mlp3_b_, out, scratch_);
}

}  // namespace firstread::engine
