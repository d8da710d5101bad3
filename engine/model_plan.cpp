#include "engine/model_plan.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "engine/common.h"
#include "engine/kernels.h"
#include "engine/weights.h"

namespace firstread::engine {

using nlohmann::json;

namespace {

enum Part { kVitEmbeddings, kVitLayers, kProjector, kDecoderLayers, kEmbeddings, kHead, kUnused, kParts };
const char* kPartNames[kParts] = {"vit_embeddings", "vit_layers", "projector", "decoder_layers",
                                  "embeddings", "head", "unused"};

// One tensor the engine binds, as config.json implies it.
struct Expected {
  std::string name;
  std::vector<int64_t> shape;
  Part part;
  bool matrix;   // bound by WeightStore::matrix (format applies) rather than floats()
  bool decoder;  // the decoder's format applies (else the vision format)
};

int64_t numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

int vision_layers_run(const ModelHParams& hp) {
  const int sl = hp.chat.select_layer;
  return sl < 0 ? hp.vision.n_layers + 1 + sl : sl;
}

// Mirrors VisionEncoder's and LlmDecoder's constructors.
std::vector<Expected> expected_tensors(const ModelHParams& hp, std::vector<Expected>* unused_layers) {
  std::vector<Expected> out;
  const VisionHParams& v = hp.vision;
  const int d = v.hidden, p = v.patch_size, g0 = v.grid(), I = v.intermediate, H = hp.llm.hidden;
  const std::string e = "vision_model.embeddings.";
  out.push_back({e + "patch_embedding.weight", {d, 3, p, p}, kVitEmbeddings, true, false});
  out.push_back({e + "patch_embedding.bias", {d}, kVitEmbeddings, false, false});
  out.push_back({e + "class_embedding", {1, 1, d}, kVitEmbeddings, false, false});
  out.push_back({e + "position_embedding", {1, int64_t(g0) * g0 + 1, d}, kVitEmbeddings, false, false});
  const bool ln = v.norm == VisionNorm::LayerNorm;
  const int run = vision_layers_run(hp);
  for (int i = 0; i < v.n_layers; ++i) {
    std::vector<Expected> layer;
    const std::string l = "vision_model.encoder.layers." + std::to_string(i) + ".";
    layer.push_back({l + "norm1.weight", {d}, kVitLayers, false, false});
    layer.push_back({l + "norm2.weight", {d}, kVitLayers, false, false});
    if (ln) {
      layer.push_back({l + "norm1.bias", {d}, kVitLayers, false, false});
      layer.push_back({l + "norm2.bias", {d}, kVitLayers, false, false});
    }
    layer.push_back({l + "attn.qkv.weight", {3 * d, d}, kVitLayers, true, false});
    if (v.qkv_bias) layer.push_back({l + "attn.qkv.bias", {3 * d}, kVitLayers, false, false});
    if (v.qk_norm) {
      layer.push_back({l + "attn.q_norm.weight", {d}, kVitLayers, false, false});
      layer.push_back({l + "attn.k_norm.weight", {d}, kVitLayers, false, false});
    }
    layer.push_back({l + "attn.proj.weight", {d, d}, kVitLayers, true, false});
    layer.push_back({l + "attn.proj.bias", {d}, kVitLayers, false, false});
    layer.push_back({l + "ls1", {d}, kVitLayers, false, false});
    layer.push_back({l + "ls2", {d}, kVitLayers, false, false});
    layer.push_back({l + "mlp.fc1.weight", {I, d}, kVitLayers, true, false});
    layer.push_back({l + "mlp.fc1.bias", {I}, kVitLayers, false, false});
    layer.push_back({l + "mlp.fc2.weight", {d, I}, kVitLayers, true, false});
    layer.push_back({l + "mlp.fc2.bias", {d}, kVitLayers, false, false});
    for (auto& t : layer) {
      if (i < run) out.push_back(t);
      else if (unused_layers) unused_layers->push_back({t.name, t.shape, kUnused, false, false});
    }
  }
  const int c4 = 4 * d;
  out.push_back({"mlp1.0.weight", {c4}, kProjector, false, false});
  out.push_back({"mlp1.0.bias", {c4}, kProjector, false, false});
  out.push_back({"mlp1.1.weight", {H, c4}, kProjector, true, false});
  out.push_back({"mlp1.1.bias", {H}, kProjector, false, false});
  out.push_back({"mlp1.3.weight", {H, H}, kProjector, true, false});
  out.push_back({"mlp1.3.bias", {H}, kProjector, false, false});

  const LlmHParams& lh = hp.llm;
  const int D = lh.hidden, hd = lh.head_dim(), qd = lh.n_heads * hd, kvd = lh.n_kv_heads * hd, FI = lh.intermediate;
  const bool ilm = lh.arch == LlmArch::InternLM2;
  const std::string m = "language_model.model.";
  out.push_back({m + (ilm ? "tok_embeddings.weight" : "embed_tokens.weight"), {lh.vocab, D}, kEmbeddings, true, true});
  out.push_back({m + "norm.weight", {D}, kDecoderLayers, false, true});
  // A tied model without lm_head in the file reuses the embedding: the caller
  // drops the head when the files lack it (see plan_model).
  out.push_back({ilm ? "language_model.output.weight" : "language_model.lm_head.weight", {lh.vocab, D}, kHead, true,
                 true});
  for (int i = 0; i < lh.n_layers; ++i) {
    const std::string l = m + "layers." + std::to_string(i) + ".";
    auto mat = [&](const std::string& n, int64_t r, int64_t c) { out.push_back({l + n, {r, c}, kDecoderLayers, true, true}); };
    auto vec = [&](const std::string& n, int64_t c) { out.push_back({l + n, {c}, kDecoderLayers, false, true}); };
    if (ilm) {
      vec("attention_norm.weight", D);
      vec("ffn_norm.weight", D);
      mat("attention.wqkv.weight", qd + 2 * kvd, D);
      if (lh.qkv_bias) vec("attention.wqkv.bias", qd + 2 * kvd);
      mat("attention.wo.weight", D, qd);
      if (lh.o_bias) vec("attention.wo.bias", D);
      mat("feed_forward.w1.weight", FI, D);
      mat("feed_forward.w3.weight", FI, D);
      mat("feed_forward.w2.weight", D, FI);
    } else {
      vec("input_layernorm.weight", D);
      vec("post_attention_layernorm.weight", D);
      mat("self_attn.q_proj.weight", qd, D);
      mat("self_attn.k_proj.weight", kvd, D);
      mat("self_attn.v_proj.weight", kvd, D);
      if (lh.qkv_bias) {
        vec("self_attn.q_proj.bias", qd);
        vec("self_attn.k_proj.bias", kvd);
        vec("self_attn.v_proj.bias", kvd);
      }
      mat("self_attn.o_proj.weight", D, qd);
      if (lh.o_bias) vec("self_attn.o_proj.bias", D);
      mat("mlp.gate_proj.weight", FI, D);
      mat("mlp.up_proj.weight", FI, D);
      mat("mlp.down_proj.weight", D, FI);
    }
  }
  return out;
}

// The dtype a matrix has once loaded in `fmt` (WeightStore::matrix's rule).
DType loaded_dtype(DType stored, WeightFormat fmt, int64_t cols) {
  switch (fmt) {
    case WeightFormat::AsStored: return stored;
    case WeightFormat::F32: return DType::F32;
    case WeightFormat::BF16: return DType::BF16;
    case WeightFormat::F16: return DType::F16;
    case WeightFormat::Q8: return cols % kQBlock == 0 ? DType::Q8_0 : stored;
    case WeightFormat::Q4: return cols % kQBlock == 0 ? DType::Q4_0 : stored;
  }
  return stored;
}

int64_t stored_nbytes(DType t, int64_t n) { return n * int64_t(dtype_size(t)); }

DType dtype_from_torch(const std::string& s) {
  if (s == "float32") return DType::F32;
  if (s == "float16") return DType::F16;
  return DType::BF16;  // bfloat16, and what InternVL-Chat checkpoints are published in
}

}  // namespace

std::string human_gb(int64_t bytes) {
  char buf[64];
  if (bytes >= 1000000000) std::snprintf(buf, sizeof buf, "%.1f GB", double(bytes) / 1e9);
  else if (bytes >= 1000000) std::snprintf(buf, sizeof buf, "%.0f MB", double(bytes) / 1e6);
  else std::snprintf(buf, sizeof buf, "%.0f kB", double(bytes) / 1e3);
  return buf;
}

ModelPlan plan_model(const ModelHParams& hp, const std::vector<TensorInfo>* tensors, DType assumed,
                     const PlanOptions& opts) {
  ModelPlan plan;
  plan.hp = hp;
  plan.options = opts;
  plan.assumed_dtype = assumed;
  if (tensors) plan.header_tensors = *tensors;
  const WeightFormat dec_fmt = parse_weight_format(opts.weights);
  // vision "auto": the decoder's format when that is f32/bf16/f16, else as
  // stored (Model::load's rule: int8/int4 apply to the decoder only).
  WeightFormat vis_fmt = parse_weight_format(opts.vision_weights);
  if (opts.vision_weights.empty() || opts.vision_weights == "auto")
    vis_fmt = dec_fmt == WeightFormat::F32 || dec_fmt == WeightFormat::BF16 || dec_fmt == WeightFormat::F16
                  ? dec_fmt
                  : WeightFormat::AsStored;
  plan.weights = weight_format_name(dec_fmt);
  plan.vision_weights = weight_format_name(vis_fmt);
  plan.from_headers = tensors != nullptr;
  const int threads = std::max(1, opts.threads);

  std::vector<Expected> unused;
  std::vector<Expected> expected = expected_tensors(hp, &unused);
  std::map<std::string, const TensorInfo*> by_name;
  if (tensors)
    for (const auto& t : *tensors) by_name[t.name] = &t;
  // A tied decoder whose file has no head reuses the embedding rows.
  const std::string head = hp.llm.arch == LlmArch::InternLM2 ? "language_model.output.weight"
                                                             : "language_model.lm_head.weight";
  if (hp.llm.tie_embeddings && (tensors ? !by_name.count(head) : true))
    expected.erase(std::remove_if(expected.begin(), expected.end(), [&](const Expected& e) { return e.name == head; }),
                   expected.end());

  std::vector<PlanPart> parts(kParts);
  for (int i = 0; i < kParts; ++i) parts[size_t(i)].name = kPartNames[i];
  std::set<std::string> stored_kinds;
  std::set<std::string> bound;
  // Resident bytes of the decoder part for every decoder format, for the side-by-side table.
  const WeightFormat all_formats[] = {WeightFormat::AsStored, WeightFormat::F32, WeightFormat::BF16,
                                      WeightFormat::F16,      WeightFormat::Q8,  WeightFormat::Q4};
  std::vector<int64_t> decoder_bytes_by_format(6, 0);
  int64_t decoder_resident = 0;
  int64_t decode_read = 0;

  for (const Expected& e : expected) {
    DType st = assumed;
    if (tensors) {
      auto it = by_name.find(e.name);
      if (it == by_name.end()) {
        plan.problems.push_back("tensor '" + e.name + "' is missing from the weight files");
        continue;
      }
      if (it->second->shape != e.shape) {
        plan.problems.push_back(it->second->file + ": tensor '" + e.name + "' has shape " +
                                shape_str(it->second->shape) + " but config.json implies " + shape_str(e.shape));
        continue;
      }
      st = it->second->dtype;
    }
    bound.insert(e.name);
    stored_kinds.insert(dtype_name(st));
    const int64_t n = numel(e.shape);
    PlanPart& part = parts[size_t(e.part)];
    part.params += n;
    part.tensors += 1;
    part.stored_bytes += stored_nbytes(st, n);
    auto resident_in = [&](WeightFormat f) -> int64_t {
      if (!e.matrix) return st == DType::F32 ? stored_nbytes(st, n) : n * 4;  // float32 copy of a vector
      const int64_t rows = e.shape[0], cols = n / rows;
      return int64_t(matrix_bytes(loaded_dtype(st, f, cols), rows, cols));
    };
    const int64_t r = resident_in(e.decoder ? dec_fmt : vis_fmt);
    part.resident_bytes += r;
    if (e.decoder) {
      decoder_resident += r;
      for (int k = 0; k < 6; ++k) decoder_bytes_by_format[size_t(k)] += resident_in(all_formats[k]);
      // Decode reads every layer matrix and the head once per token (the
      // embedding only one row).
      if (e.part != kEmbeddings) decode_read += r;
    }
  }
  if (hp.llm.tie_embeddings && (tensors ? !by_name.count(head) : true))
    decode_read += parts[kEmbeddings].resident_bytes;
  // What the files hold beyond what is bound: layers past select_layer and anything else.
  if (tensors) {
    for (const auto& t : *tensors)
      if (!bound.count(t.name)) {
        parts[kUnused].params += t.numel();
        parts[kUnused].stored_bytes += int64_t(t.nbytes);
        parts[kUnused].tensors += 1;
        stored_kinds.insert(dtype_name(t.dtype));
      }
  } else {
    for (const auto& e : unused) {
      parts[kUnused].params += numel(e.shape);
      parts[kUnused].stored_bytes += stored_nbytes(assumed, numel(e.shape));
      parts[kUnused].tensors += 1;
    }
  }
  for (const auto& k : stored_kinds) plan.stored_dtypes += (plan.stored_dtypes.empty() ? "" : ", ") + k;
  if (!tensors) plan.stored_dtypes += " (assumed from torch_dtype; no weight files)";
  for (int i = 0; i < kParts; ++i) {
    if (i != kUnused) {
      plan.params_bound += parts[size_t(i)].params;
      plan.weights_resident_bytes += parts[size_t(i)].resident_bytes;
    }
    plan.params_in_files += parts[size_t(i)].params;
  }
  plan.parts = parts;
  plan.decode_bytes_per_token = decode_read;

  // --- KV cache: float32 keys and values for every layer and position.
  const LlmHParams& lh = hp.llm;
  const int kvd = lh.n_kv_heads * lh.head_dim();
  const int n_tiles =
      hp.chat.dynamic_image_size ? hp.chat.max_dynamic_patch + (hp.chat.use_thumbnail && hp.chat.max_dynamic_patch > 1)
                                 : 1;
  plan.image_tokens = n_tiles * hp.chat.num_image_token;
  plan.context = opts.context > 0 ? opts.context : plan.image_tokens + opts.prompt_tokens + opts.max_new_tokens;
  if (plan.context > lh.max_positions)
    plan.problems.push_back("context of " + std::to_string(plan.context) + " tokens exceeds max_position_embeddings " +
                            std::to_string(lh.max_positions));
  plan.kv_bytes_per_token = int64_t(2) * lh.n_layers * kvd * 4;
  plan.kv_bytes = plan.kv_bytes_per_token * plan.context * std::max(1, opts.sequences);

  // --- Scratch (float32 buffers the encoder and decoder keep; VisionEncoder::encode_batch,
  // LlmDecoder::forward, linear's per-thread weight blocks of 16 MB).
  const VisionHParams& v = hp.vision;
  const int64_t d = v.hidden, grid = hp.chat.image_size / v.patch_size, np = grid * grid, N = np + 1, I = v.intermediate;
  const int64_t per_tile = N * (I + 6 * d) * 4;
  const int64_t batch = std::max<int64_t>(1, std::min<int64_t>(n_tiles, (int64_t(256) << 20) / per_tile));
  const int64_t R = batch * N, nt = hp.chat.num_image_token, H = lh.hidden, p = v.patch_size;
  const int64_t weight_block = int64_t(16) << 20;
  plan.vision_scratch_bytes =
      4 * (R * d * 3 + R * 3 * d + R * I + int64_t(threads) * N * N + batch * np * 3 * p * p + np * d +
           batch * nt * 4 * d + batch * nt * H + (np + 1) * d) +
      threads * weight_block + 2 * 4 * int64_t(n_tiles) * nt * H;  // embeddings of the image, and their copy
  const int64_t n = plan.context - opts.max_new_tokens > 0 ? plan.context - opts.max_new_tokens : plan.context;
  const int64_t qd = int64_t(lh.n_heads) * lh.head_dim(), FI = lh.intermediate;
  plan.prefill_scratch_bytes =
      4 * (n * H * 3 + n * qd * 2 + n * FI * 2 + int64_t(threads) * n * plan.context + lh.vocab +
           (lh.arch == LlmArch::InternLM2 ? n * (qd + 2 * kvd) : 0) + int64_t(plan.context) * lh.head_dim()) +
      threads * weight_block;
  // Code, libraries, tokenizer and OpenBLAS's per-thread buffers: measured
  // about 60 MB for the demo model at 2 threads; planned with a margin.
  plan.runtime_bytes = (int64_t(96) << 20) + threads * (int64_t(32) << 20);
  // Conversion at load streams one block of rows through a float32 buffer
  // (WeightStore::matrix) and drops the source pages behind it.
  const bool converts = dec_fmt != WeightFormat::AsStored || vis_fmt != WeightFormat::AsStored;
  plan.load_transient_bytes = converts ? 2 * kConvertBlockBytes : 0;
  plan.total_bytes = plan.weights_resident_bytes + plan.kv_bytes + plan.vision_scratch_bytes +
                     plan.prefill_scratch_bytes + plan.runtime_bytes;
  plan.load_peak_bytes = plan.weights_resident_bytes + plan.runtime_bytes + plan.load_transient_bytes;
  for (int k = 0; k < 6; ++k) {
    FormatTotal ft;
    ft.decoder_format = weight_format_name(all_formats[k]);
    ft.decoder_bytes = decoder_bytes_by_format[size_t(k)];
    ft.total_bytes = plan.total_bytes - decoder_resident + ft.decoder_bytes;
    plan.per_format.push_back(ft);
  }

  // --- Work: multiply-adds of the matrices (x2 = FLOP) plus attention.
  const int run = vision_layers_run(hp);
  const double vit_layer_mac = double(N) * (3 * d * d + d * d + 2 * d * I) + 2.0 * double(N) * N * d;
  plan.vision_gflop_per_tile =
      2.0 * (run * vit_layer_mac + double(np) * d * 3 * p * p + double(nt) * (4 * d * H + double(H) * H)) / 1e9;
  const double dec_layer_mac = double(qd) * H * 2 + 2.0 * kvd * H + 3.0 * FI * H;
  plan.prefill_gflop_per_token = 2.0 * lh.n_layers * dec_layer_mac / 1e9;
  return plan;
}

ModelPlan plan_model(const std::string& dir, const PlanOptions& opts) {
  const ModelHParams hp = load_model_config(dir);
  DType assumed = DType::BF16;
  {
    const json j = json::parse(read_text_file(join_path(dir, "config.json")), nullptr, false);
    if (j.is_object() && j.contains("torch_dtype") && j["torch_dtype"].is_string())
      assumed = dtype_from_torch(j["torch_dtype"].get<std::string>());
  }
  std::vector<std::string> files = opts.read_headers ? model_weight_files(dir) : std::vector<std::string>{};
  ModelPlan plan;
  if (files.empty()) {
    plan = plan_model(hp, nullptr, assumed, opts);
  } else {
    std::vector<TensorInfo> all;
    std::map<std::string, std::string> seen;
    for (const auto& f : files)
      for (auto& t : read_safetensors_header_file(f)) {
        if (seen.count(t.name)) throw EngineError(f + ": tensor '" + t.name + "' also appears in " + seen[t.name]);
        seen[t.name] = f;
        all.push_back(std::move(t));
      }
    plan = plan_model(hp, &all, assumed, opts);
  }
  plan.dir = dir;
  plan.files = files;
  return plan;
}

std::string format_plan_text(const ModelPlan& p) {
  std::ostringstream o;
  char buf[256];
  auto line = [&](const char* fmt, auto... args) {
    std::snprintf(buf, sizeof buf, fmt, args...);
    o << buf << "\n";
  };
  const auto& v = p.hp.vision;
  const auto& l = p.hp.llm;
  o << "model " << p.dir << "\n";
  line("  vision  InternViT %d layers (%d run) x %d, %d heads, FFN %d, %s%s, %d px", v.n_layers, vision_layers_run(p.hp), v.hidden, v.n_heads, v.intermediate, v.norm == VisionNorm::RMSNorm ? "RMSNorm" : "LayerNorm",
       v.qk_norm ? " + qk-norm" : "", p.hp.chat.image_size);
  line("  decoder %s %d layers x %d, %d/%d heads, FFN %d, vocab %d", l.arch_name.c_str(), l.n_layers, l.hidden,
       l.n_heads, l.n_kv_heads, l.intermediate, l.vocab);
  o << "  weights " << (p.from_headers ? std::to_string(p.files.size()) + " file(s), stored " : std::string("stored "))
    << p.stored_dtypes << "; planned: decoder " << p.weights << ", vision " << p.vision_weights << "\n\n";
  line("  %-16s %16s %12s %12s", "component", "parameters", "stored", "resident");
  for (const auto& part : p.parts) {
    if (part.tensors == 0) continue;
    line("  %-16s %16lld %12s %12s", part.name.c_str(), (long long)part.params, human_gb(part.stored_bytes).c_str(),
         part.name == "unused" ? "-" : human_gb(part.resident_bytes).c_str());
  }
  line("  %-16s %16lld %12s %12s", "total (bound)", (long long)p.params_bound, "",
       human_gb(p.weights_resident_bytes).c_str());
  o << "\n  decoder format   decoder weights   total resident\n";
  for (const auto& f : p.per_format)
    line("  %-16s %15s %16s", f.decoder_format.c_str(), human_gb(f.decoder_bytes).c_str(),
         human_gb(f.total_bytes).c_str());
  o << "\n";
  line("  KV cache         %s per token (F32), %s at %d tokens (%d image + prompt + new)",
       human_gb(p.kv_bytes_per_token).c_str(), human_gb(p.kv_bytes).c_str(), p.context, p.image_tokens);
  line("  vision scratch   %s (one image, %d threads)", human_gb(p.vision_scratch_bytes).c_str(), p.options.threads);
  line("  prefill scratch  %s", human_gb(p.prefill_scratch_bytes).c_str());
  line("  runtime          %s (code, tokenizer, BLAS buffers; estimate)", human_gb(p.runtime_bytes).c_str());
  line("  total resident   %s (load peak %s)", human_gb(p.total_bytes).c_str(), human_gb(p.load_peak_bytes).c_str());
  line("  work             vision %.0f GFLOP per tile, prefill %.1f GFLOP per token, decode reads %s per token",
       p.vision_gflop_per_tile, p.prefill_gflop_per_token, human_gb(p.decode_bytes_per_token).c_str());
  for (const auto& pr : p.problems) o << "  problem: " << pr << "\n";
  return o.str();
}

std::string format_plan_json(const ModelPlan& p) {
  json parts = json::object();
  for (const auto& part : p.parts)
    parts[part.name] = {{"params", part.params}, {"stored_bytes", part.stored_bytes},
                        {"resident_bytes", part.name == "unused" ? 0 : part.resident_bytes},
                        {"tensors", part.tensors}};
  json formats = json::array();
  for (const auto& f : p.per_format)
    formats.push_back({{"decoder", f.decoder_format}, {"decoder_bytes", f.decoder_bytes}, {"total_bytes", f.total_bytes}});
  json j = {{"dir", p.dir},
            {"weights", p.weights},
            {"vision_weights", p.vision_weights},
            {"from_headers", p.from_headers},
            {"files", p.files},
            {"stored_dtypes", p.stored_dtypes},
            {"threads", p.options.threads},
            {"parts", parts},
            {"params_bound", p.params_bound},
            {"params_in_files", p.params_in_files},
            {"weights_resident_bytes", p.weights_resident_bytes},
            {"per_format", formats},
            {"context", p.context},
            {"image_tokens", p.image_tokens},
            {"kv_bytes_per_token", p.kv_bytes_per_token},
            {"kv_bytes", p.kv_bytes},
            {"vision_scratch_bytes", p.vision_scratch_bytes},
            {"prefill_scratch_bytes", p.prefill_scratch_bytes},
            {"runtime_bytes", p.runtime_bytes},
            {"load_transient_bytes", p.load_transient_bytes},
            {"total_bytes", p.total_bytes},
            {"load_peak_bytes", p.load_peak_bytes},
            {"decode_bytes_per_token", p.decode_bytes_per_token},
            {"vision_gflop_per_tile", p.vision_gflop_per_tile},
            {"prefill_gflop_per_token", p.prefill_gflop_per_token},
            {"problems", p.problems}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

namespace {

bool read_int64_file(const std::string& path, int64_t& out) {
  std::ifstream f(path);
  std::string s;
  if (!(f >> s) || s == "max") return false;
  try {
    out = std::stoll(s);
  } catch (...) {
    return false;
  }
  return true;
}

}  // namespace

AvailableMemory available_memory() {
  AvailableMemory a;
  {
    std::ifstream f("/proc/meminfo");
    std::string key, unit;
    int64_t kb = 0;
    while (f >> key >> kb) {
      std::getline(f, unit);
      if (key == "MemAvailable:") {
        a.bytes = kb * 1024;
        a.source = "MemAvailable";
        break;
      }
    }
  }
  // The cgroup this process is in: v2 ("0::/path") or v1's memory controller.
  std::ifstream cg("/proc/self/cgroup");
  std::string row;
  while (std::getline(cg, row)) {
    const size_t c1 = row.find(':'), c2 = row.find(':', c1 + 1);
    if (c1 == std::string::npos || c2 == std::string::npos) continue;
    const std::string controllers = row.substr(c1 + 1, c2 - c1 - 1), path = row.substr(c2 + 1);
    std::string limit_file, usage_file;
    if (controllers.empty()) {
      limit_file = "/sys/fs/cgroup" + path + "/memory.max";
      usage_file = "/sys/fs/cgroup" + path + "/memory.current";
    } else if (("," + controllers + ",").find(",memory,") != std::string::npos) {
      limit_file = "/sys/fs/cgroup/memory" + path + "/memory.limit_in_bytes";
      usage_file = "/sys/fs/cgroup/memory" + path + "/memory.usage_in_bytes";
    } else {
      continue;
    }
    int64_t limit = 0, usage = 0;
    // v1 reports "no limit" as a huge number near 2^63.
    if (!read_int64_file(limit_file, limit) || limit <= 0 || limit > (int64_t(1) << 60)) continue;
    if (!read_int64_file(usage_file, usage)) usage = 0;
    const int64_t left = std::max<int64_t>(0, limit - usage);
    if (a.source.empty() || left < a.bytes) {
      a.bytes = left;
      a.source = "cgroup limit " + limit_file;
    }
  }
  return a;
}

std::string plan_refusal(const std::string& name, const ModelPlan& plan, int64_t available,
                         const std::string& source) {
  if (plan.total_bytes <= available) return "";
  auto describe = [](const std::string& dec, const std::string& vis) {
    return (dec == "auto" ? std::string("stored-format") : dec) + " decoder + " +
           (vis == "auto" ? std::string("stored-format") : vis) + " vision";
  };
  std::string msg = name + ": needs " + human_gb(plan.total_bytes) + " with " +
                    describe(plan.weights, plan.vision_weights) + "; " + human_gb(available) + " available (" + source +
                    ")";
  // Alternatives from largest to smallest: the first that fits is named.
  const std::vector<std::pair<std::string, std::string>> options = {
      {"bf16", plan.vision_weights}, {"int8", plan.vision_weights}, {"int4", plan.vision_weights},
      {"int8", "int8"},              {"int4", "int8"}};
  const ModelPlan* smallest = nullptr;
  ModelPlan best;
  for (const auto& [dec, vis] : options) {
    PlanOptions o = plan.options;
    o.weights = dec;
    o.vision_weights = vis;
    ModelPlan alt = plan_model(plan.hp, plan.from_headers ? &plan.header_tensors : nullptr, plan.assumed_dtype, o);
    if (alt.total_bytes >= plan.total_bytes) continue;
    if (alt.total_bytes <= available)
      return msg + "; " + describe(dec, vis) + " needs " + human_gb(alt.total_bytes) + " (models.<name>.weights: " + dec +
             (vis != plan.vision_weights ? ", vision_weights: " + vis : std::string()) + ")";
    best = alt;
    smallest = &best;
  }
  if (smallest)
    msg += "; even " + describe(smallest->weights, smallest->vision_weights) + " needs " +
           human_gb(smallest->total_bytes);
  return msg;
}

}  // namespace firstread::engine
