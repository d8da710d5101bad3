// The ViT block alone (issue 19): vit_block against a plain double-precision
// reading of InternViT's block, written from its definition (pre-norm
// attention with layer scale, pre-norm MLP with layer scale), for RMSNorm and
// LayerNorm, with and without qk-norm, one and two threads, and on the batched
// (sgemm) and the few-row (matvec) product paths.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "engine/config.h"
#include "engine/kernels.h"
#include "engine/vision.h"

using namespace firstread::engine;

namespace {

struct RandomLayer {
  int d, inter;
  std::vector<float> n1w, n1b, n2w, n2b, qkv, qkv_b, qn, kn, proj, proj_b, ls1, ls2, fc1, fc1_b, fc2, fc2_b;
  RandomLayer(int d_, int i_, std::mt19937& rng) : d(d_), inter(i_) {
    std::normal_distribution<float> g(0.f, 1.f);
    auto fill = [&](std::vector<float>& v, size_t n, float scale, float offset = 0.f) {
      v.resize(n);
      for (auto& x : v) x = offset + scale * g(rng);
    };
    fill(n1w, d, 0.2f, 1.f), fill(n1b, d, 0.1f), fill(n2w, d, 0.2f, 1.f), fill(n2b, d, 0.1f);
    fill(qkv, size_t(3) * d * d, 0.3f), fill(qkv_b, 3 * d, 0.1f), fill(qn, d, 0.2f, 1.f), fill(kn, d, 0.2f, 1.f);
    fill(proj, size_t(d) * d, 0.3f), fill(proj_b, d, 0.1f), fill(ls1, d, 0.3f, 0.5f), fill(ls2, d, 0.3f, 0.5f);
    fill(fc1, size_t(inter) * d, 0.3f), fill(fc1_b, inter, 0.1f), fill(fc2, size_t(d) * inter, 0.2f), fill(fc2_b, d, 0.1f);
  }
  static WeightView view(const std::vector<float>& w, int rows, int cols) {
    WeightView v;
    v.data = w.data();
    v.dtype = DType::F32;
    v.rows = rows;
    v.cols = cols;
    return v;
  }
  VisionLayer layer(const VisionHParams& hp) const {
    VisionLayer L;
    L.norm1_w = n1w.data(), L.norm2_w = n2w.data();
    if (hp.norm == VisionNorm::LayerNorm) L.norm1_b = n1b.data(), L.norm2_b = n2b.data();
    L.qkv = view(qkv, 3 * d, d);
    if (hp.qkv_bias) L.qkv_b = qkv_b.data();
    if (hp.qk_norm) L.q_norm_w = qn.data(), L.k_norm_w = kn.data();
    L.proj = view(proj, d, d), L.proj_b = proj_b.data();
    L.ls1 = ls1.data(), L.ls2 = ls2.data();
    L.fc1 = view(fc1, inter, d), L.fc1_b = fc1_b.data();
    L.fc2 = view(fc2, d, inter), L.fc2_b = fc2_b.data();
    return L;
  }
};

using Rows = std::vector<std::vector<double>>;

std::vector<double> norm_row(const std::vector<double>& x, const std::vector<float>& w, const std::vector<float>* b,
                             bool layer_norm, double eps) {
  const size_t d = x.size();
  double mean = 0, sq = 0;
  for (double v : x) mean += v;
  mean /= d;
  std::vector<double> y(d);
  if (layer_norm) {
    for (double v : x) sq += (v - mean) * (v - mean);
    const double inv = 1 / std::sqrt(sq / d + eps);
    for (size_t i = 0; i < d; ++i) y[i] = (x[i] - mean) * inv * w[i] + (*b)[i];
  } else {
    for (double v : x) sq += v * v;
    const double inv = 1 / std::sqrt(sq / d + eps);
    for (size_t i = 0; i < d; ++i) y[i] = x[i] * inv * w[i];
  }
  return y;
}

std::vector<double> matvec(const std::vector<float>& w, const std::vector<float>* bias, const std::vector<double>& x,
                           int rows) {
  const size_t cols = x.size();
  std::vector<double> y(rows);
  for (int r = 0; r < rows; ++r) {
    double s = bias ? (*bias)[r] : 0.0;
    for (size_t c = 0; c < cols; ++c) s += double(w[r * cols + c]) * x[c];
    y[r] = s;
  }
  return y;
}

// x: tiles * tokens rows of d, updated in place.
void reference_block(const VisionHParams& hp, const RandomLayer& W, Rows& x, int tiles, int tokens) {
  const int d = hp.hidden, H = hp.n_heads, hd = hp.head_dim();
  const bool ln = hp.norm == VisionNorm::LayerNorm;
  const int R = tiles * tokens;
  Rows q(R), k(R), v(R), attn(R, std::vector<double>(d, 0.0));
  for (int r = 0; r < R; ++r) {
    const auto h = norm_row(x[r], W.n1w, &W.n1b, ln, hp.norm_eps);
    const auto qkv = matvec(W.qkv, hp.qkv_bias ? &W.qkv_b : nullptr, h, 3 * d);
    q[r].assign(qkv.begin(), qkv.begin() + d);
    k[r].assign(qkv.begin() + d, qkv.begin() + 2 * d);
    v[r].assign(qkv.begin() + 2 * d, qkv.end());
    if (hp.qk_norm) {
      q[r] = norm_row(q[r], W.qn, nullptr, false, hp.norm_eps);
      k[r] = norm_row(k[r], W.kn, nullptr, false, hp.norm_eps);
    }
  }
  for (int t = 0; t < tiles; ++t)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < tokens; ++i) {
        const int ri = t * tokens + i;
        std::vector<double> p(tokens);
        double mx = -1e300, sum = 0;
        for (int j = 0; j < tokens; ++j) {
          double s = 0;
          for (int c = 0; c < hd; ++c) s += q[ri][h * hd + c] * k[t * tokens + j][h * hd + c];
          p[j] = s / std::sqrt(double(hd));
          mx = std::max(mx, p[j]);
        }
        for (auto& e : p) sum += (e = std::exp(e - mx));
        for (int j = 0; j < tokens; ++j)
          for (int c = 0; c < hd; ++c) attn[ri][h * hd + c] += p[j] / sum * v[t * tokens + j][h * hd + c];
      }
  for (int r = 0; r < R; ++r) {
    const auto o = matvec(W.proj, &W.proj_b, attn[r], d);
    for (int i = 0; i < d; ++i) x[r][i] += W.ls1[i] * o[i];
    auto m = matvec(W.fc1, &W.fc1_b, norm_row(x[r], W.n2w, &W.n2b, ln, hp.norm_eps), W.inter);
    for (auto& e : m) e = 0.5 * e * (1 + std::erf(e / std::sqrt(2.0)));
    const auto o2 = matvec(W.fc2, &W.fc2_b, m, d);
    for (int i = 0; i < d; ++i) x[r][i] += W.ls2[i] * o2[i];
  }
}

}  // namespace

TEST(engine_vit_block, MatchesTheBlockDefinition) {
  std::mt19937 rng(7);
  for (VisionNorm norm : {VisionNorm::RMSNorm, VisionNorm::LayerNorm})
    for (bool qk_norm : {true, false})
      for (int threads : {1, 2})
        for (auto [tiles, tokens] : {std::pair{2, 5}, std::pair{1, 3}}) {
          VisionHParams hp;
          hp.hidden = 16, hp.n_heads = 2, hp.intermediate = 40, hp.norm = norm, hp.qk_norm = qk_norm;
          hp.qkv_bias = norm == VisionNorm::LayerNorm;
          hp.norm_eps = 1e-6f;
          RandomLayer W(hp.hidden, hp.intermediate, rng);
          const VisionLayer L = W.layer(hp);
          const int R = tiles * tokens, d = hp.hidden;
          std::normal_distribution<float> g(0.f, 1.f);
          std::vector<float> x(size_t(R) * d);
          for (auto& e : x) e = g(rng);
          Rows want(R, std::vector<double>(d));
          for (int r = 0; r < R; ++r)
            for (int i = 0; i < d; ++i) want[r][i] = x[size_t(r) * d + i];
          reference_block(hp, W, want, tiles, tokens);
          ThreadPool pool(threads);
          VitBlockScratch scratch;
          scratch.reserve(R, d, hp.intermediate, tokens, hp.head_dim(), pool.size());
          vit_block(pool, hp, L, x.data(), tiles, tokens, scratch);
          double worst = 0;
          for (int r = 0; r < R; ++r)
            for (int i = 0; i < d; ++i)
              worst = std::max(worst, std::abs(x[size_t(r) * d + i] - want[r][i]) / (1 + std::abs(want[r][i])));
          EXPECT_LT(worst, 1e-4) << (norm == VisionNorm::LayerNorm ? "LayerNorm" : "RMSNorm")
                                 << " qk_norm " << qk_norm << ", " << threads << " threads, " << tiles << " x "
                                 << tokens << " rows";
        }
}
