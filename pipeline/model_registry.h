// Models by name, loaded on first use and kept for the life of the process.
// Workers call a model's generate concurrently: the engine batches their
// decode steps (models.<name>.max_batch sequences, each with its own KV cache).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "config/config.h"
#include "engine/model.h"

namespace firstread::pipeline {

struct LoadedModel {
  engine::Model* model = nullptr;
  std::string name;
  std::string version;             // short digest of the weights
  std::string device_observer_uid; // 2.25.<digest>: changes when the weights change
  int box_scale = 1000;
};

class ModelRegistry {
 public:
  explicit ModelRegistry(const std::map<std::string, config::ModelConfig>& models) : configs_(models) {}
  // Throws std::runtime_error naming the model and the reason.
  LoadedModel get(const std::string& name);
  bool loaded(const std::string& name);

 private:
  struct Entry {
    std::unique_ptr<engine::Model> model;
    std::string version, device_uid;
  };
  std::map<std::string, config::ModelConfig> configs_;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<Entry>> entries_;
};

// Plans the model's memory (engine/model_plan.h) before it is loaded and
// throws the refusal ("medrega: needs 49.2 GB with int8 decoder + ...; 31.0 GB
// available (MemAvailable); int4 decoder + ... needs 27.9 GB") when it does
// not fit the smaller of MemAvailable, the cgroup limit and
// models.<name>.max_memory: refused with a reason rather than killed by the
// kernel half-way through the load. ModelRegistry::get calls it first.
void check_memory_plan(const std::string& name, const config::ModelConfig& model);
// Tokens a report may generate, as planned for the KV cache (MedDr's 512).
constexpr int kPlannedNewTokens = 512;

// Digest of a model directory: names, sizes and modification times of its
// files plus their first and last MiB (reading 80 GB of weights at start-up
// is not an option). Returns {hex digest, "2.25.<decimal>" UID}.
std::pair<std::string, std::string> model_identity(const std::string& dir);

}  // namespace firstread::pipeline
