// What a serving node loads at start-up, in the background so that the first
// study does not wait for it: every local model a route names, the GSCo
// specialists, and the case index of each specialist that retrieval searches.
// status() is what /readyz reports until all of it is there.
#pragma once

#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "config/config.h"
#include "pipeline/gsco.h"
#include "pipeline/inference_backend.h"
#include "pipeline/model_registry.h"
#include "retrieval/case_index.h"

namespace firstread::pipeline {

class StartupLoad {
 public:
  StartupLoad(const config::Config& config, ModelRegistry& models, InferenceBackends& backends,
              Specialists& specialists, retrieval::CaseLibrary& library);
  ~StartupLoad();  // waits for the loading thread
  StartupLoad(const StartupLoad&) = delete;
  StartupLoad& operator=(const StartupLoad&) = delete;

  // Starts loading on its own thread (once).
  void start();
  // Waits for that thread (before the database pool it uses goes away).
  void wait();
  // "" when every routed model, specialist and searched case index is ready
  // (and each remote model's server lists it); else the first reason why not:
  // a load error, "model 'x' is loading", or the remote server's answer.
  std::string status();

 private:
  void load();
  void fail(const std::string& what, const std::string& error);

  const config::Config& config_;
  ModelRegistry& models_;
  InferenceBackends& backends_;
  Specialists& specialists_;
  retrieval::CaseLibrary& library_;
  std::set<std::string> local_models_, remote_models_;  // routed ones; local ones load here, remote ones are polled
  std::mutex mu_;
  std::map<std::string, std::string> errors_;  // what (model, specialist, case library) -> why it failed
  std::set<std::string> watched_;              // local models and failed GSCo parts status() reports on
  std::thread thread_;
};

}  // namespace firstread::pipeline
