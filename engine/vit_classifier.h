// Specialist image classifiers (GSCo's "specialists", issue 15): a Hugging Face
// `ViTForImageClassification` directory (config.json, model.safetensors,
// preprocessor_config.json) run on the CPU. Out: the label probabilities
// (sigmoid for multi_label_classification, else softmax) and the pooled
// feature (the CLS row after vit.layernorm, L2-normalised) that the case
// library retrieves by.
//
// llama.cpp style: one hyper-parameter struct, weights mapped once at load,
// scratch sized at load (no allocation per image), and the named blocks
// (embeddings, self-attention, MLP, ViT layer) callable on their own.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/image.h"
#include "engine/kernels.h"
#include "engine/safetensors.h"
#include "engine/weights.h"

namespace firstread::engine {

// config.json of a ViTForImageClassification (transformers' ViTConfig keys and defaults).
struct ViTClassifierHParams {
  int hidden = 768;
  int n_layers = 12;
  int n_heads = 12;
  int intermediate = 3072;
  int image_size = 224;
  int patch_size = 16;
  int n_channels = 3;
  float layer_norm_eps = 1e-12f;
  bool qkv_bias = true;
  bool multi_label = false;         // problem_type multi_label_classification: sigmoid
  std::vector<std::string> labels;  // id2label in id order
  int head_dim() const { return hidden / n_heads; }
  int grid() const { return image_size / patch_size; }
  int n_tokens() const { return grid() * grid() + 1; }  // patches + CLS
};

// preprocessor_config.json (ViTImageProcessor): resize, rescale, normalise.
struct ViTPreprocess {
  bool do_resize = true;
  int width = 224, height = 224;
  PilFilter resample = PilFilter::Bilinear;  // PIL resample 2; 3 = bicubic
  bool do_rescale = true;
  float rescale_factor = 1.0f / 255.0f;
  bool do_normalize = true;
  float mean[3] = {0.5f, 0.5f, 0.5f};
  float std[3] = {0.5f, 0.5f, 0.5f};
};

// Parse the two files (text as read from `path`, named in errors). The
// preprocessor defaults to the image_size square when its file is absent.
ViTClassifierHParams parse_vit_classifier_config(const std::string& text, const std::string& path);
ViTPreprocess parse_vit_preprocessor_config(const std::string& text, const std::string& path,
                                            const ViTClassifierHParams& hp);

struct ViTLayerWeights {
  const float *ln_before_w = nullptr, *ln_before_b = nullptr, *ln_after_w = nullptr, *ln_after_b = nullptr;
  WeightView query, key, value, attn_out, fc1, fc2;
  const float *query_b = nullptr, *key_b = nullptr, *value_b = nullptr, *attn_out_b = nullptr;
  const float *fc1_b = nullptr, *fc2_b = nullptr;
};

// Activations of one image, sized once for the model (n_tokens rows).
struct ViTScratch {
  std::vector<float> x, h, q, k, v, ctx, mlp, scores, im2col;
  LinearScratch linear;
  void resize(const ViTClassifierHParams& hp, int threads);
};

// --- the named blocks (x and out are [n_tokens][hidden] unless said)
// Patch embedding (conv as a product over im2col rows), CLS first, + position table.
void vit_embeddings(ThreadPool& pool, const ViTClassifierHParams& hp, const WeightView& patch_w, const float* patch_b,
                    const float* cls, const float* pos, const float* pixels, float* x, ViTScratch& s);
// Multi-head self-attention of the normalised rows h, through attention.output.dense, into out.
void vit_self_attention(ThreadPool& pool, const ViTClassifierHParams& hp, const ViTLayerWeights& L, const float* h,
                        float* out, ViTScratch& s);
// intermediate.dense -> GELU (erf) -> output.dense of the normalised rows h into out.
void vit_mlp(ThreadPool& pool, const ViTClassifierHParams& hp, const ViTLayerWeights& L, const float* h, float* out,
             ViTScratch& s);
// One ViTLayer in place on s.x: x += attn(LN_before(x)); x += mlp(LN_after(x)).
void vit_layer(ThreadPool& pool, const ViTClassifierHParams& hp, const ViTLayerWeights& L, ViTScratch& s);

struct ViTClassification {
  std::vector<float> logits;
  std::vector<float> probs;    // sigmoid (multi-label) or softmax of the logits
  std::vector<float> feature;  // CLS after vit.layernorm, L2-normalised
  float feature_norm = 0;      // its norm before normalising
};

class ViTClassifier {
 public:
  // Loads `dir`; throws EngineError naming the file and key of anything that
  // does not match the layout. threads 0 = the machine's cores.
  static std::unique_ptr<ViTClassifier> load(const std::string& dir, int threads = 0);

  const ViTClassifierHParams& hparams() const { return hp_; }
  const ViTPreprocess& preprocess_config() const { return pre_; }
  const std::string& dir() const { return dir_; }
  // 3 x height x width floats, as ViTImageProcessor makes them (grey frames arrive replicated as RGB).
  std::vector<float> preprocess(const RgbImage& image) const;
  // Thread-safe (one image at a time per classifier).
  ViTClassification classify(const RgbImage& image);
  ViTClassification classify_pixels(const float* pixels);

 private:
  ViTClassifier(const std::string& dir, int threads);
  void bind_weights();
  std::string dir_;
  ViTClassifierHParams hp_;
  ViTPreprocess pre_;
  SafetensorsSet st_;
  std::unique_ptr<WeightStore> ws_;
  std::unique_ptr<ThreadPool> pool_;
  WeightView patch_w_, classifier_w_;
  const float *patch_b_ = nullptr, *cls_ = nullptr, *pos_ = nullptr, *final_ln_w_ = nullptr, *final_ln_b_ = nullptr,
              *classifier_b_ = nullptr;
  std::vector<ViTLayerWeights> layers_;
  ViTScratch scratch_;
  std::mutex mu_;
};

}  // namespace firstread::engine
