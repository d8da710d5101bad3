#include "pipeline/startup_load.h"

#include <spdlog/spdlog.h>

#include <vector>

namespace firstread::pipeline {

StartupLoad::StartupLoad(const config::Config& config, ModelRegistry& models, InferenceBackends& backends,
                         Specialists& specialists, retrieval::CaseLibrary& library)
    : config_(config), models_(models), backends_(backends), specialists_(specialists), library_(library) {
  for (const auto& r : config_.routes) {
    if (config_.models.at(r.model).backend == "local") local_models_.insert(r.model);
    else remote_models_.insert(r.model);
  }
  watched_ = local_models_;
}

StartupLoad::~StartupLoad() { wait(); }

void StartupLoad::wait() {
  if (thread_.joinable()) thread_.join();
}

void StartupLoad::start() {
  if (!thread_.joinable()) thread_ = std::thread([this] { load(); });
}

void StartupLoad::fail(const std::string& what, const std::string& error) {
  std::lock_guard<std::mutex> lock(mu_);
  errors_[what] = error;
  watched_.insert(what);
}

void StartupLoad::load() {
  for (const auto& name : local_models_) {
    try {
      models_.get(name);
    } catch (const std::exception& e) {
      spdlog::error("models: {}", e.what());
      fail(name, e.what());
    }
  }
  // GSCo (issue 15): a specialist or case index that fails is reported by
  // /readyz, and the jobs of its routes fail with the same reason.
  std::set<std::string> named, searched;
  for (const auto& r : config_.routes) {
    named.insert(r.specialists.begin(), r.specialists.end());
    if (!r.specialists.empty() && (r.gsco == config::GscoMode::rad || r.gsco == config::GscoMode::both))
      searched.insert(r.specialists.front());
  }
  for (const auto& name : named) {
    try {
      specialists_.identity(name);
    } catch (const std::exception& e) {
      spdlog::error("specialists: {}", e.what());
      fail("specialist " + name, e.what());
    }
  }
  for (const auto& name : searched) {
    try {
      const size_t n = library_.sync(name);
      spdlog::info("case library: {} cases of specialist {} indexed", n, name);
    } catch (const std::exception& e) {
      spdlog::error("case library: {}", e.what());
      fail("case library " + name, e.what());
    }
  }
}

std::string StartupLoad::status() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& name : watched_) {
      if (errors_.count(name)) return errors_[name];
      if (config_.models.count(name) && !models_.loaded(name)) return "model '" + name + "' is loading";
    }
  }
  // Remote models: the server answers GET /v1/models and lists the model.
  return backends_.readiness(std::vector<std::string>(remote_models_.begin(), remote_models_.end()));
}

}  // namespace firstread::pipeline
