#include "pipeline/model_registry.h"

#include "engine/kernels.h"

#include <openssl/sha.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "engine/model_plan.h"

namespace fs = std::filesystem;

namespace firstread::pipeline {
namespace {

// 2.25.<decimal of the first 16 bytes>: a UUID-derived UID (PS3.5 B.2).
std::string uid_from_digest(const unsigned char* digest) {
  // Decimal conversion of a 128-bit number by repeated division.
  std::vector<unsigned> n(digest, digest + 16);
  std::string decimal;
  bool zero = false;
  while (!zero) {
    unsigned rem = 0;
    zero = true;
    for (auto& byte : n) {
      unsigned cur = rem * 256 + byte;
      byte = cur / 10;
      rem = cur % 10;
      if (byte) zero = false;
    }
    decimal.push_back(static_cast<char>('0' + rem));
  }
  std::reverse(decimal.begin(), decimal.end());
  while (decimal.size() > 1 && decimal[0] == '0') decimal.erase(0, 1);
  return "2.25." + decimal;
}

}  // namespace

std::pair<std::string, std::string> model_identity(const std::string& dir) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    // Dot files are ours (the quantised-weight cache), not the model's.
    if (e.is_regular_file() && e.path().filename().string()[0] != '.') files.push_back(e.path());
  if (ec) throw std::runtime_error("model directory " + dir + ": " + ec.message());
  std::sort(files.begin(), files.end());
  SHA256_CTX ctx;
  SHA256_Init(&ctx);
  std::vector<char> buf(1 << 20);
  for (const auto& f : files) {
    const std::string name = f.filename().string();
    const auto size = fs::file_size(f, ec);
    SHA256_Update(&ctx, name.data(), name.size());
    SHA256_Update(&ctx, &size, sizeof size);
    std::ifstream in(f, std::ios::binary);
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    SHA256_Update(&ctx, buf.data(), static_cast<size_t>(in.gcount()));
    if (size > buf.size() * 2) {
      in.clear();
      in.seekg(-static_cast<std::streamoff>(buf.size()), std::ios::end);
      in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
      SHA256_Update(&ctx, buf.data(), static_cast<size_t>(in.gcount()));
    }
  }
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256_Final(digest, &ctx);
  char hex[17];
  for (int i = 0; i < 8; ++i) snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  return {hex, uid_from_digest(digest)};
}

void check_memory_plan(const std::string& name, const config::ModelConfig& mc) {
  engine::PlanOptions po;
  po.weights = config::weights_name(mc.weights);
  po.vision_weights = config::weights_name(mc.vision_weights);
  po.threads = mc.threads > 0 ? mc.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  po.max_new_tokens = kPlannedNewTokens;
  po.sequences = mc.max_batch;  // one KV cache per sequence in a batch
  engine::ModelPlan plan;
  try {
    plan = engine::plan_model(mc.path, po);
  } catch (const std::exception& e) {
    throw std::runtime_error("model '" + name + "' (" + mc.path + "): " + e.what());
  }
  engine::AvailableMemory avail = engine::available_memory();
  if (mc.max_memory > 0 && int64_t(mc.max_memory) < avail.bytes) {
    avail.bytes = int64_t(mc.max_memory);
    avail.source = "models." + name + ".max_memory";
  }
  const std::string refusal = engine::plan_refusal(name, plan, avail.bytes, avail.source);
  if (!refusal.empty()) throw std::runtime_error(refusal);
  spdlog::info("models: '{}' plan: {} resident ({} weights, KV {} at {} tokens x {} sequences); {} available ({})",
               name, engine::human_gb(plan.total_bytes), engine::human_gb(plan.weights_resident_bytes),
               engine::human_gb(plan.kv_bytes), plan.context, po.sequences, engine::human_gb(avail.bytes),
               avail.source);
}

bool ModelRegistry::loaded(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.count(name) > 0;
}

LoadedModel ModelRegistry::get(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    auto cfg = configs_.find(name);
    if (cfg == configs_.end()) throw std::runtime_error("no model named '" + name + "' in models");
    const config::ModelConfig& mc = cfg->second;
    if (!fs::is_directory(mc.path))
      throw std::runtime_error("model '" + name + "': directory " + mc.path + " does not exist");
    check_memory_plan(name, mc);
    auto entry = std::make_unique<Entry>();
    engine::EngineOptions opts;
    opts.threads = mc.threads;
    opts.weights = config::weights_name(mc.weights);
    opts.weight_cache = mc.weight_cache;
    opts.max_batch = mc.max_batch;
    opts.prefill_chunk = mc.prefill_chunk;
    opts.vision_weights = config::weights_name(mc.vision_weights);
    try {
      entry->model = engine::Model::load(mc.path, opts);
    } catch (const std::exception& e) {
      throw std::runtime_error("model '" + name + "' (" + mc.path + "): " + e.what());
    }
    auto [version, uid] = model_identity(mc.path);
    entry->version = version;
    entry->device_uid = uid;
    spdlog::info("models: loaded '{}' from {} (version {}, {} threads, weights {}, vision weights {}, max_batch {}, "
                 "prefill_chunk {}, kernels {})",
                 name, mc.path, version, entry->model->threads(), mc.weights == config::DecoderWeights::as_stored ? "as stored" : config::weights_name(mc.weights),
                 config::weights_name(mc.vision_weights), mc.max_batch, mc.prefill_chunk,
                 engine::kernel_path_description());
    if (!entry->model->weight_cache_note().empty())
      spdlog::info("models: '{}' weight cache: {}", name, entry->model->weight_cache_note());
    it = entries_.emplace(name, std::move(entry)).first;
  }
  Entry& e = *it->second;
  return LoadedModel{e.model.get(), name, e.version, e.device_uid, configs_.at(name).box_scale};
}

}  // namespace firstread::pipeline
