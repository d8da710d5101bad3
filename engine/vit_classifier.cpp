#include "engine/vit_classifier.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>

#include "engine/common.h"
#include "engine/model_parallel.h"

namespace firstread::engine {

using nlohmann::json;

namespace {

template <typename T>
T key_or(const json& obj, const char* key, T dflt, const std::string& where) {
  if (!obj.contains(key) || obj[key].is_null()) return dflt;
  try {
    return obj[key].get<T>();
  } catch (const json::exception&) {
    throw EngineError(where + ": key '" + key + "' has the wrong type (" + obj[key].dump() + ")");
  }
}

int positive_key(const json& obj, const char* key, const std::string& where) {
  if (!obj.contains(key)) throw EngineError(where + ": key '" + std::string(key) + "' is missing");
  const int v = key_or<int>(obj, key, 0, where);
  if (v <= 0) throw EngineError(where + ": key '" + std::string(key) + "' must be positive, got " + std::to_string(v));
  return v;
}

json parse_json(const std::string& text, const std::string& path) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw EngineError(path + ": not valid JSON (" + e.what() + ")");
  }
}

}  // namespace

ViTClassifierHParams parse_vit_classifier_config(const std::string& text, const std::string& path) {
  const json c = parse_json(text, path);
  if (!c.is_object()) throw EngineError(path + ": not a JSON object");
  if (c.contains("architectures")) {
    const auto archs = key_or<std::vector<std::string>>(c, "architectures", {}, path);
    if (std::find(archs.begin(), archs.end(), "ViTForImageClassification") == archs.end())
      throw EngineError(path + ": key 'architectures' is " + c["architectures"].dump() +
                        "; a specialist must be a ViTForImageClassification");
  }
  ViTClassifierHParams hp;
  hp.hidden = positive_key(c, "hidden_size", path);
  hp.n_layers = key_or<int>(c, "num_hidden_layers", hp.n_layers, path);
  if (hp.n_layers < 0) throw EngineError(path + ": key 'num_hidden_layers' must not be negative");
  hp.n_heads = positive_key(c, "num_attention_heads", path);
  hp.intermediate = positive_key(c, "intermediate_size", path);
  hp.image_size = positive_key(c, "image_size", path);
  hp.patch_size = positive_key(c, "patch_size", path);
  hp.n_channels = key_or<int>(c, "num_channels", 3, path);
  hp.layer_norm_eps = key_or<float>(c, "layer_norm_eps", 1e-12f, path);
  hp.qkv_bias = key_or<bool>(c, "qkv_bias", true, path);
  if (hp.hidden % hp.n_heads != 0)
    throw EngineError(path + ": hidden_size " + std::to_string(hp.hidden) + " is not a multiple of num_attention_heads " +
                      std::to_string(hp.n_heads));
  if (hp.image_size % hp.patch_size != 0)
    throw EngineError(path + ": image_size " + std::to_string(hp.image_size) + " is not a multiple of patch_size " +
                      std::to_string(hp.patch_size));
  if (hp.n_channels != 3)
    throw EngineError(path + ": key 'num_channels' is " + std::to_string(hp.n_channels) + "; only 3 (RGB) is supported");
  const std::string act = key_or<std::string>(c, "hidden_act", "gelu", path);
  if (act != "gelu")
    throw EngineError(path + ": key 'hidden_act' is '" + act + "'; only \"gelu\" (exact, erf) is supported");
  const std::string problem = key_or<std::string>(c, "problem_type", "", path);
  if (problem == "multi_label_classification")
    hp.multi_label = true;
  else if (!problem.empty() && problem != "single_label_classification")
    throw EngineError(path + ": key 'problem_type' is '" + problem +
                      "' (single_label_classification or multi_label_classification)");
  if (!c.contains("id2label") || !c["id2label"].is_object() || c["id2label"].empty())
    throw EngineError(path + ": key 'id2label' is missing or empty (the specialist's label names)");
  const json& id2label = c["id2label"];
  hp.labels.resize(id2label.size());
  for (size_t i = 0; i < id2label.size(); ++i) {
    const std::string id = std::to_string(i);
    if (!id2label.contains(id) || !id2label[id].is_string() || id2label[id].get<std::string>().empty())
      throw EngineError(path + ": key 'id2label' has no label name for id " + id + " (ids must be 0.." +
                        std::to_string(id2label.size() - 1) + ")");
    hp.labels[i] = id2label[id].get<std::string>();
  }
  return hp;
}

ViTPreprocess parse_vit_preprocessor_config(const std::string& text, const std::string& path,
                                            const ViTClassifierHParams& hp) {
  ViTPreprocess p;
  p.width = p.height = hp.image_size;
  if (text.empty()) return p;
  const json c = parse_json(text, path);
  p.do_resize = key_or<bool>(c, "do_resize", true, path);
  if (c.contains("size")) {
    if (c["size"].is_number_integer()) {
      p.width = p.height = c["size"].get<int>();
    } else if (c["size"].is_object() && c["size"].contains("height") && c["size"].contains("width")) {
      p.height = key_or<int>(c["size"], "height", hp.image_size, path + " size");
      p.width = key_or<int>(c["size"], "width", hp.image_size, path + " size");
    } else {
      throw EngineError(path + ": key 'size' must be {\"height\": H, \"width\": W}, got " + c["size"].dump());
    }
  }
  if (p.width != hp.image_size || p.height != hp.image_size)
    throw EngineError(path + ": key 'size' is " + std::to_string(p.width) + "x" + std::to_string(p.height) +
                      " but config.json's image_size is " + std::to_string(hp.image_size) +
                      " (the position table is not interpolated)");
  const int resample = key_or<int>(c, "resample", 2, path);
  if (resample == 2)
    p.resample = PilFilter::Bilinear;
  else if (resample == 3)
    p.resample = PilFilter::Bicubic;
  else
    throw EngineError(path + ": key 'resample' is " + std::to_string(resample) + " (2 = bilinear or 3 = bicubic)");
  p.do_rescale = key_or<bool>(c, "do_rescale", true, path);
  p.rescale_factor = key_or<float>(c, "rescale_factor", 1.0f / 255.0f, path);
  p.do_normalize = key_or<bool>(c, "do_normalize", true, path);
  for (const char* key : {"image_mean", "image_std"}) {
    if (!c.contains(key)) continue;
    const auto v = key_or<std::vector<float>>(c, key, {}, path);
    if (v.size() != 3) throw EngineError(path + ": key '" + std::string(key) + "' must have 3 values");
    float* dst = std::string(key) == "image_mean" ? p.mean : p.std;
    for (int i = 0; i < 3; ++i) dst[i] = v[size_t(i)];
  }
  for (int i = 0; i < 3; ++i)
    if (!(p.std[i] > 0)) throw EngineError(path + ": key 'image_std' values must be positive");
  return p;
}

void ViTScratch::resize(const ViTClassifierHParams& hp, int threads) {
  const size_t N = size_t(hp.n_tokens()), D = size_t(hp.hidden);
  for (auto* b : {&x, &h, &q, &k, &v, &ctx}) b->assign(N * D, 0.f);
  mlp.assign(N * size_t(hp.intermediate), 0.f);
  scores.assign(size_t(std::max(1, threads)) * N * N, 0.f);
  im2col.assign(size_t(hp.grid()) * hp.grid() * hp.n_channels * hp.patch_size * hp.patch_size, 0.f);
}

void vit_embeddings(ThreadPool& pool, const ViTClassifierHParams& hp, const WeightView& patch_w, const float* patch_b,
                    const float* cls, const float* pos, const float* pixels, float* x, ViTScratch& s) {
  const int D = hp.hidden, P = hp.patch_size, S = hp.image_size, g = hp.grid(), C = hp.n_channels;
  const int np = g * g;
  // im2col rows in the conv weight's (c, ky, kx) order; patches row-major.
  for (int gy = 0; gy < g; ++gy)
    for (int gx = 0; gx < g; ++gx) {
      float* row = s.im2col.data() + size_t(gy * g + gx) * C * P * P;
      for (int c = 0; c < C; ++c)
        for (int ky = 0; ky < P; ++ky)
          std::memcpy(row + (c * P + ky) * P, pixels + (size_t(c) * S + gy * P + ky) * S + gx * P, size_t(P) * 4);
    }
  linear(pool, s.im2col.data(), np, patch_w, patch_b, x + D, s.linear);
  std::memcpy(x, cls, size_t(D) * 4);
  const size_t n = size_t(np + 1) * D;
  for (size_t i = 0; i < n; ++i) x[i] += pos[i];
}

void vit_self_attention(ThreadPool& pool, const ViTClassifierHParams& hp, const ViTLayerWeights& L, const float* h,
                        float* out, ViTScratch& s) {
  const int N = hp.n_tokens(), D = hp.hidden, H = hp.n_heads, hd = hp.head_dim();
  linear_multi(pool, h, N, {{L.query, L.query_b, s.q.data()}, {L.key, L.key_b, s.k.data()}, {L.value, L.value_b, s.v.data()}},
               s.linear);
  const float scale = 1.0f / std::sqrt(float(hd));
  const int parts = std::min(pool.size(), H);
  pool.parallel_for(parts, [&](int part) {
    float* sc = s.scores.data() + size_t(part) * N * N;
    for (int head = part; head < H; head += parts) {
      const float* q = s.q.data() + head * hd;
      const float* k = s.k.data() + head * hd;
      const float* v = s.v.data() + head * hd;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, N, hd, scale, q, D, k, D, 0.f, sc, N);
      for (int r = 0; r < N; ++r) softmax_inplace(sc + size_t(r) * N, N);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, hd, N, 1.f, sc, N, v, D, 0.f, s.ctx.data() + head * hd, D);
    }
  }, /*spin_after=*/false);
  linear(pool, s.ctx.data(), N, L.attn_out, L.attn_out_b, out, s.linear);
}

void vit_mlp(ThreadPool& pool, const ViTClassifierHParams& hp, const ViTLayerWeights& L, const float* h, float* out,
             ViTScratch& s) {
  const int N = hp.n_tokens(), I = hp.intermediate;
  linear(pool, h, N, L.fc1, L.fc1_b, s.mlp.data(), s.linear);
  parallel_rows(pool, N, [&](int64_t a, int64_t b) { gelu_erf(s.mlp.data() + a * I, (b - a) * I); }, 4);
  linear(pool, s.mlp.data(), N, L.fc2, L.fc2_b, out, s.linear);
}

void vit_layer(ThreadPool& pool, const ViTClassifierHParams& hp, const ViTLayerWeights& L, ViTScratch& s) {
  const int N = hp.n_tokens(), D = hp.hidden;
  layer_norm(s.x.data(), L.ln_before_w, L.ln_before_b, s.h.data(), N, D, hp.layer_norm_eps);
  vit_self_attention(pool, hp, L, s.h.data(), s.h.data(), s);  // h is consumed by q/k/v before out is written
  for (size_t i = 0; i < size_t(N) * D; ++i) s.x[i] += s.h[i];
  layer_norm(s.x.data(), L.ln_after_w, L.ln_after_b, s.h.data(), N, D, hp.layer_norm_eps);
  vit_mlp(pool, hp, L, s.h.data(), s.h.data(), s);
  for (size_t i = 0; i < size_t(N) * D; ++i) s.x[i] += s.h[i];
}

ViTClassifier::ViTClassifier(const std::string& dir, int threads) : dir_(dir), st_(dir) {
  const int n = threads > 0 ? threads : std::max(1, int(std::thread::hardware_concurrency()));
  pool_ = std::make_unique<ThreadPool>(n);
  set_blas_threads(1);  // the pool parallelises around OpenBLAS (kernels.h), as Model::load does
}

std::unique_ptr<ViTClassifier> ViTClassifier::load(const std::string& dir, int threads) {
  const std::string config_path = join_path(dir, "config.json");
  if (!file_exists(config_path)) throw EngineError(config_path + ": missing (not a ViTForImageClassification directory)");
  const ViTClassifierHParams hp = parse_vit_classifier_config(read_text_file(config_path), config_path);
  const std::string pre_path = join_path(dir, "preprocessor_config.json");
  const ViTPreprocess pre =
      parse_vit_preprocessor_config(file_exists(pre_path) ? read_text_file(pre_path) : "", pre_path, hp);
  if (model_weight_files(dir).empty()) throw EngineError(dir + ": no model.safetensors (or index) in the directory");
  std::unique_ptr<ViTClassifier> m(new ViTClassifier(dir, threads));
  m->hp_ = hp;
  m->pre_ = pre;
  m->bind_weights();
  m->scratch_.resize(hp, m->pool_->size());
  return m;
}

void ViTClassifier::bind_weights() {
  ws_ = std::make_unique<WeightStore>(st_, WeightFormat::AsStored);
  WeightStore& ws = *ws_;
  const int D = hp_.hidden, I = hp_.intermediate, P = hp_.patch_size, C = hp_.n_channels;
  const int64_t n_labels = int64_t(hp_.labels.size());
  const std::string e = "vit.embeddings.";
  cls_ = ws.floats(e + "cls_token", {1, 1, D});
  pos_ = ws.floats(e + "position_embeddings", {1, hp_.n_tokens(), D});
  patch_w_ = ws.matrix(e + "patch_embeddings.projection.weight", D, int64_t(C) * P * P, {D, C, P, P});
  patch_b_ = ws.floats(e + "patch_embeddings.projection.bias", {D});
  for (int i = 0; i < hp_.n_layers; ++i) {
    const std::string l = "vit.encoder.layer." + std::to_string(i) + ".";
    ViTLayerWeights L;
    L.ln_before_w = ws.floats(l + "layernorm_before.weight", {D});
    L.ln_before_b = ws.floats(l + "layernorm_before.bias", {D});
    const std::string a = l + "attention.attention.";
    L.query = ws.matrix(a + "query.weight", D, D);
    L.key = ws.matrix(a + "key.weight", D, D);
    L.value = ws.matrix(a + "value.weight", D, D);
    if (hp_.qkv_bias) {
      L.query_b = ws.floats(a + "query.bias", {D});
      L.key_b = ws.floats(a + "key.bias", {D});
      L.value_b = ws.floats(a + "value.bias", {D});
    }
    L.attn_out = ws.matrix(l + "attention.output.dense.weight", D, D);
    L.attn_out_b = ws.floats(l + "attention.output.dense.bias", {D});
    L.ln_after_w = ws.floats(l + "layernorm_after.weight", {D});
    L.ln_after_b = ws.floats(l + "layernorm_after.bias", {D});
    L.fc1 = ws.matrix(l + "intermediate.dense.weight", I, D);
    L.fc1_b = ws.floats(l + "intermediate.dense.bias", {I});
    L.fc2 = ws.matrix(l + "output.dense.weight", D, I);
    L.fc2_b = ws.floats(l + "output.dense.bias", {D});
    layers_.push_back(L);
  }
  // A layer the config does not count is a layout mismatch, not something to ignore.
  const std::string extra = "vit.encoder.layer." + std::to_string(hp_.n_layers) + ".layernorm_before.weight";
  if (ws.has(extra))
    throw EngineError(join_path(dir_, "model.safetensors") + ": tensor '" + extra +
                      "' exists but config.json's num_hidden_layers is " + std::to_string(hp_.n_layers));
  final_ln_w_ = ws.floats("vit.layernorm.weight", {D});
  final_ln_b_ = ws.floats("vit.layernorm.bias", {D});
  classifier_w_ = ws.matrix("classifier.weight", n_labels, D);
  classifier_b_ = ws.floats("classifier.bias", {n_labels});
}

std::vector<float> ViTClassifier::preprocess(const RgbImage& image) const {
  const RgbImage sized = pre_.do_resize ? resize_pil(image, pre_.width, pre_.height, pre_.resample) : image;
  if (sized.width != hp_.image_size || sized.height != hp_.image_size)
    throw EngineError(dir_ + ": image is " + std::to_string(sized.width) + "x" + std::to_string(sized.height) +
                      " but the model takes " + std::to_string(hp_.image_size) + " (do_resize is off)");
  const size_t plane = size_t(sized.width) * sized.height;
  std::vector<float> out(3 * plane);
  for (int c = 0; c < 3; ++c) {
    const float scale = pre_.do_rescale ? pre_.rescale_factor : 1.0f;
    const float mean = pre_.do_normalize ? pre_.mean[c] : 0.0f, sd = pre_.do_normalize ? pre_.std[c] : 1.0f;
    for (size_t i = 0; i < plane; ++i) out[size_t(c) * plane + i] = (float(sized.rgb[i * 3 + c]) * scale - mean) / sd;
  }
  return out;
}

ViTClassification ViTClassifier::classify(const RgbImage& image) {
  const std::vector<float> pixels = preprocess(image);
  return classify_pixels(pixels.data());
}

ViTClassification ViTClassifier::classify_pixels(const float* pixels) {
  std::lock_guard<std::mutex> lock(mu_);
  ThreadPool& pool = *pool_;
  ViTScratch& s = scratch_;
  const int D = hp_.hidden;
  vit_embeddings(pool, hp_, patch_w_, patch_b_, cls_, pos_, pixels, s.x.data(), s);
  for (const ViTLayerWeights& L : layers_) vit_layer(pool, hp_, L, s);
  ViTClassification r;
  r.feature.resize(size_t(D));
  // ViTForImageClassification classifies the CLS row of the final LayerNorm's output.
  layer_norm(s.x.data(), final_ln_w_, final_ln_b_, r.feature.data(), 1, D, hp_.layer_norm_eps);
  r.logits.resize(hp_.labels.size());
  linear(pool, r.feature.data(), 1, classifier_w_, classifier_b_, r.logits.data(), s.linear);
  r.probs = r.logits;
  if (hp_.multi_label) {
    for (float& p : r.probs) p = 1.0f / (1.0f + std::exp(-p));
  } else {
    softmax_inplace(r.probs.data(), int64_t(r.probs.size()));
  }
  double norm = 0;
  for (float f : r.feature) norm += double(f) * f;
  r.feature_norm = float(std::sqrt(norm));
  if (r.feature_norm > 0)
    for (float& f : r.feature) f /= r.feature_norm;
  return r;
}

}  // namespace firstread::engine
