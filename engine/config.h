// Hyper-parameters of an InternVL-Chat model directory, one struct per part
// (vision encoder, decoder, the chat wrapper), read from config.json with the
// authors' configuration-class defaults for missing keys.
#pragma once

#include <string>

namespace firstread::engine {

enum class VisionNorm { RMSNorm, LayerNorm };
enum class LlmArch { Llama, Qwen2, InternLM2 };
const char* llm_arch_name(LlmArch a);

struct VisionHParams {
  int hidden = 3200;
  int intermediate = 12800;
  int n_heads = 25;
  int n_layers = 48;
  int image_size = 224;  // the size its position table was trained for
  int patch_size = 14;
  int n_channels = 3;
  bool qkv_bias = false;
  bool qk_norm = true;
  VisionNorm norm = VisionNorm::RMSNorm;
  float norm_eps = 1e-6f;
  int head_dim() const { return hidden / n_heads; }
  int grid() const { return image_size / patch_size; }
};

struct LlmHParams {
  LlmArch arch = LlmArch::Llama;
  std::string arch_name;
  int hidden = 4096;
  int intermediate = 11008;
  int n_layers = 32;
  int n_heads = 32;
  int n_kv_heads = 32;
  int vocab = 32000;
  float rms_eps = 1e-6f;
  float rope_theta = 10000.f;
  int max_positions = 2048;
  bool qkv_bias = false;  // Qwen2: always; InternLM2: config `bias`
  bool o_bias = false;    // InternLM2 with `bias: true`
  bool tie_embeddings = false;
  int bos_id = -1, eos_id = -1;
  int head_dim() const { return hidden / n_heads; }
};

struct ChatHParams {
  std::string template_name;  // "Hermes-2", "internlm2-chat", ...
  int image_size = 448;       // force_image_size or the vision image_size
  float downsample_ratio = 0.5f;
  int ps_version = 1;         // pixel shuffle 1 (transposed tokens) or 2
  int select_layer = -1;
  bool dynamic_image_size = false;
  bool use_thumbnail = false;
  int min_dynamic_patch = 1;
  int max_dynamic_patch = 6;
  bool pad2square = false;
  // tokens per tile after pixel shuffle: (image_size/patch)^2 * ratio^2
  int num_image_token = 256;
};

struct ModelHParams {
  VisionHParams vision;
  LlmHParams llm;
  ChatHParams chat;
};

// Parses `config_json_text` (contents of `path`, used in errors).
ModelHParams parse_model_config(const std::string& config_json_text, const std::string& path);
ModelHParams load_model_config(const std::string& model_dir);

}  // namespace firstread::engine
