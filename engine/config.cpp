#include "engine/config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "engine/common.h"

namespace firstread::engine {

using nlohmann::json;

const char* llm_arch_name(LlmArch a) {
  switch (a) {
    case LlmArch::Llama: return "LlamaForCausalLM";
    case LlmArch::Qwen2: return "Qwen2ForCausalLM";
    case LlmArch::InternLM2: return "InternLM2ForCausalLM";
  }
  return "?";
}

namespace {

// Typed reads with a default; a key of the wrong type is an error naming it.
template <typename T>
T get_or(const json& obj, const char* key, T dflt, const std::string& where) {
  if (!obj.contains(key) || obj[key].is_null()) return dflt;
  try {
    return obj[key].get<T>();
  } catch (const json::exception&) {
    throw EngineError(where + ": key '" + key + "' has the wrong type (" + obj[key].dump() + ")");
  }
}

void require_positive(int v, const char* key, const std::string& where) {
  if (v <= 0) throw EngineError(where + ": key '" + key + "' must be positive, got " + std::to_string(v));
}

// vision_config, with InternVisionConfig's defaults.
VisionHParams parse_vision_hparams(const json& v, const std::string& vw) {
  VisionHParams vh;
  vh.hidden = get_or<int>(v, "hidden_size", 3200, vw);
  vh.intermediate = get_or<int>(v, "intermediate_size", 12800, vw);
  vh.n_heads = get_or<int>(v, "num_attention_heads", 25, vw);
  vh.n_layers = get_or<int>(v, "num_hidden_layers", 48, vw);
  vh.image_size = get_or<int>(v, "image_size", 224, vw);
  vh.patch_size = get_or<int>(v, "patch_size", 14, vw);
  vh.n_channels = get_or<int>(v, "num_channels", 3, vw);
  vh.qkv_bias = get_or<bool>(v, "qkv_bias", false, vw);
  vh.qk_norm = get_or<bool>(v, "qk_normalization", true, vw);
  vh.norm_eps = static_cast<float>(get_or<double>(v, "layer_norm_eps", 1e-6, vw));
  std::string norm = get_or<std::string>(v, "norm_type", "rms_norm", vw);
  if (norm == "rms_norm") vh.norm = VisionNorm::RMSNorm;
  else if (norm == "layer_norm") vh.norm = VisionNorm::LayerNorm;
  else throw EngineError(vw + ": unknown norm_type '" + norm + "' (rms_norm or layer_norm)");
  std::string act = get_or<std::string>(v, "hidden_act", "gelu", vw);
  if (act != "gelu") throw EngineError(vw + ": unsupported hidden_act '" + act + "' (gelu)");
  require_positive(vh.hidden, "hidden_size", vw);
  require_positive(vh.n_heads, "num_attention_heads", vw);
  require_positive(vh.n_layers, "num_hidden_layers", vw);
  require_positive(vh.patch_size, "patch_size", vw);
  require_positive(vh.image_size, "image_size", vw);
  if (vh.hidden % vh.n_heads) throw EngineError(vw + ": hidden_size not divisible by num_attention_heads");
  if (vh.n_channels != 3) throw EngineError(vw + ": num_channels must be 3");
  return vh;
}

// llm_config, with the defaults of LlamaConfig / Qwen2Config / InternLM2Config.
LlmHParams parse_llm_hparams(const json& l, const std::string& lw) {
  LlmHParams lh;
  std::string arch;
  if (l.contains("architectures") && l["architectures"].is_array() && !l["architectures"].empty() &&
      l["architectures"][0].is_string())
    arch = l["architectures"][0].get<std::string>();
  if (arch == "LlamaForCausalLM") lh.arch = LlmArch::Llama;
  else if (arch == "Qwen2ForCausalLM") lh.arch = LlmArch::Qwen2;
  else if (arch == "InternLM2ForCausalLM") lh.arch = LlmArch::InternLM2;
  else
    throw EngineError(lw + ": unknown architecture '" + arch +
                      "' (supported: LlamaForCausalLM, Qwen2ForCausalLM, InternLM2ForCausalLM)");
  lh.arch_name = arch;
  // Defaults of LlamaConfig / Qwen2Config / InternLM2Config.
  const bool qwen = lh.arch == LlmArch::Qwen2, ilm = lh.arch == LlmArch::InternLM2;
  lh.vocab = get_or<int>(l, "vocab_size", qwen ? 151936 : ilm ? 103168 : 32000, lw);
  lh.hidden = get_or<int>(l, "hidden_size", 4096, lw);
  lh.intermediate = get_or<int>(l, "intermediate_size", qwen ? 22016 : 11008, lw);
  lh.n_layers = get_or<int>(l, "num_hidden_layers", 32, lw);
  lh.n_heads = get_or<int>(l, "num_attention_heads", 32, lw);
  lh.n_kv_heads = get_or<int>(l, "num_key_value_heads", lh.n_heads, lw);
  lh.rms_eps = static_cast<float>(get_or<double>(l, "rms_norm_eps", 1e-6, lw));
  lh.rope_theta = static_cast<float>(get_or<double>(l, "rope_theta", 10000.0, lw));
  lh.max_positions = get_or<int>(l, "max_position_embeddings", qwen ? 32768 : 2048, lw);
  lh.tie_embeddings = get_or<bool>(l, "tie_word_embeddings", false, lw);
  lh.bos_id = get_or<int>(l, "bos_token_id", -1, lw);
  lh.eos_id = get_or<int>(l, "eos_token_id", -1, lw);
  if (qwen) lh.qkv_bias = true;
  else if (ilm) lh.qkv_bias = lh.o_bias = get_or<bool>(l, "bias", true, lw);
  else lh.qkv_bias = lh.o_bias = get_or<bool>(l, "attention_bias", false, lw);
  std::string llm_act = get_or<std::string>(l, "hidden_act", "silu", lw);
  if (llm_act != "silu") throw EngineError(lw + ": unsupported hidden_act '" + llm_act + "' (silu)");
  require_positive(lh.hidden, "hidden_size", lw);
  require_positive(lh.n_heads, "num_attention_heads", lw);
  require_positive(lh.n_kv_heads, "num_key_value_heads", lw);
  require_positive(lh.n_layers, "num_hidden_layers", lw);
  require_positive(lh.vocab, "vocab_size", lw);
  if (lh.hidden % lh.n_heads) throw EngineError(lw + ": hidden_size not divisible by num_attention_heads");
  if (lh.n_heads % lh.n_kv_heads) throw EngineError(lw + ": num_attention_heads not divisible by num_key_value_heads");
  if (l.contains("rope_scaling") && !l["rope_scaling"].is_null()) {
    // Dynamic NTK (InternLM2) only changes anything beyond max_position_embeddings,
    // which generation refuses to reach; other scalings would change results.
    std::string type = get_or<std::string>(l["rope_scaling"], "type", "", lw + " rope_scaling");
    if (type != "dynamic") throw EngineError(lw + ": unsupported rope_scaling type '" + type + "'");
  }
  return lh;
}

// The chat wrapper's own keys (InternVLChatConfig defaults) and the image
// token count they imply with the vision tower's patch grid.
ChatHParams parse_chat_hparams(const json& j, const std::string& path, const VisionHParams& vh) {
  ChatHParams ch;
  ch.template_name = get_or<std::string>(j, "template", "", path);
  int force = get_or<int>(j, "force_image_size", 0, path);
  ch.image_size = force > 0 ? force : vh.image_size;
  ch.downsample_ratio = static_cast<float>(get_or<double>(j, "downsample_ratio", 0.5, path));
  std::string ps = get_or<std::string>(j, "ps_version", "v1", path);
  if (ps == "v1") ch.ps_version = 1;
  else if (ps == "v2") ch.ps_version = 2;
  else throw EngineError(path + ": unknown ps_version '" + ps + "' (v1 or v2)");
  ch.select_layer = get_or<int>(j, "select_layer", -1, path);
  ch.dynamic_image_size = get_or<bool>(j, "dynamic_image_size", false, path);
  ch.use_thumbnail = get_or<bool>(j, "use_thumbnail", false, path);
  ch.min_dynamic_patch = get_or<int>(j, "min_dynamic_patch", 1, path);
  ch.max_dynamic_patch = get_or<int>(j, "max_dynamic_patch", 6, path);
  ch.pad2square = get_or<bool>(j, "pad2square", false, path);
  if (ch.downsample_ratio != 0.5f)
    throw EngineError(path + ": downsample_ratio " + std::to_string(ch.downsample_ratio) + " unsupported (0.5)");
  if (ch.image_size % vh.patch_size) throw EngineError(path + ": image size not a multiple of patch_size");
  int grid = ch.image_size / vh.patch_size;
  if (grid % 2) throw EngineError(path + ": patch grid " + std::to_string(grid) + " is odd; pixel shuffle needs even");
  ch.num_image_token = (grid / 2) * (grid / 2);
  int n_layers_run = ch.select_layer < 0 ? vh.n_layers + 1 + ch.select_layer : ch.select_layer;
  if (n_layers_run < 0 || n_layers_run > vh.n_layers)
    throw EngineError(path + ": select_layer " + std::to_string(ch.select_layer) + " out of range for " +
                      std::to_string(vh.n_layers) + " layers");
  if (ch.min_dynamic_patch < 1 || ch.max_dynamic_patch < ch.min_dynamic_patch)
    throw EngineError(path + ": min/max_dynamic_patch out of range");
  return ch;
}

}  // namespace

ModelHParams parse_model_config(const std::string& text, const std::string& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw EngineError(path + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw EngineError(path + ": not a JSON object");
  if (!j.contains("vision_config") || !j["vision_config"].is_object())
    throw EngineError(path + ": missing vision_config (not an InternVL-Chat config?)");
  if (!j.contains("llm_config") || !j["llm_config"].is_object())
    throw EngineError(path + ": missing llm_config (not an InternVL-Chat config?)");
  ModelHParams hp;
  hp.vision = parse_vision_hparams(j["vision_config"], path + " vision_config");
  hp.llm = parse_llm_hparams(j["llm_config"], path + " llm_config");
  hp.chat = parse_chat_hparams(j, path, hp.vision);
  return hp;
}

ModelHParams load_model_config(const std::string& model_dir) {
  std::string path = join_path(model_dir, "config.json");
  if (!file_exists(path)) throw EngineError(model_dir + ": config.json not found");
  return parse_model_config(read_text_file(path), path);
}

}  // namespace firstread::engine
