#include "pipeline/inference_backend.h"

#include <fmt/format.h>

#include <chrono>
#include <iterator>

#include "metrics/registry.h"
#include "pipeline/openai_backend.h"
#include "pipeline/study_processor.h"

namespace firstread::pipeline {
namespace {

// backend: local, the in-process engine. Workers call generate concurrently;
// the engine batches their decode steps (models.<name>.max_batch).
class LocalBackend : public InferenceBackend {
 public:
  LocalBackend(std::string name, ModelRegistry& registry) : name_(std::move(name)), registry_(registry) {}

  FrameInference infer(const engine::RgbImage& frame, const config::Route& route) override {
    LoadedModel model = registry_.get(name_);
    const engine::GenerateResult result = model.model->generate(frame, route.prompt, route.max_new_tokens);
    FrameInference out;
    parse_reply(result.text, result.images.at(0), reports::BoxFormat{model.box_scale},
                "0.." + std::to_string(model.box_scale), out);
    out.prompt_tokens = static_cast<int>(result.prompt_token_ids.size());
    out.completion_tokens = static_cast<int>(result.token_ids.size());
    out.truncated = !result.stopped_on_end_token && out.completion_tokens >= route.max_new_tokens;
    out.served_model = model.name;
    out.log_detail = fmt::format("{} tokens, vision {:.0f} ms, prefill {:.0f} ms, {:.1f} tok/s, decode batch up to {}",
                                 result.token_ids.size(), result.timings.vision_ms, result.timings.prefill_ms,
                                 result.timings.tokens_per_second, result.timings.largest_batch);
    return out;
  }

  BackendIdentity identity() override {
    LoadedModel model = registry_.get(name_);
    return BackendIdentity{"local", model.name, model.version, model.device_observer_uid, ""};
  }

  std::string readiness() override {
    return registry_.loaded(name_) ? "" : "model '" + name_ + "' is loading";
  }

 private:
  std::string name_;
  ModelRegistry& registry_;
};

}  // namespace

void parse_reply(const std::string& text, const engine::PreprocessGeometry& geometry,
                 const reports::BoxFormat& format, const std::string& grid, FrameInference& out) {
  const reports::ModelOutput parsed = reports::parse_model_output(text, geometry, format);
  out.text = text;
  out.narrative = parsed.narrative;
  out.regions.clear();
  for (const auto& box : parsed.regions) {
    MappedRegion r;
    r.label = box.label;
    for (int k = 0; k < 4; ++k) {
      r.model_box[k] = box.model_box[k];
      r.pixel_box[k] = box.pixel_box[k];
    }
    r.in_grid = box.within_grid;
    r.grid = grid;
    out.regions.push_back(r);
  }
}

InferenceBackend& InferenceBackends::get(const std::string& model_name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = backends_.find(model_name);
  if (it != backends_.end()) return *it->second;
  auto cfg = configs_.find(model_name);
  if (cfg == configs_.end()) throw std::runtime_error("no model named '" + model_name + "' in models");
  std::unique_ptr<InferenceBackend> backend;
  if (cfg->second.backend == "openai")
    backend = std::make_unique<OpenAiBackend>(model_name, cfg->second.remote);
  else
    backend = std::make_unique<LocalBackend>(model_name, registry_);
  return *backends_.emplace(model_name, std::move(backend)).first->second;
}

namespace {
const std::vector<double> kLatencyBuckets = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600};
constexpr const char* kRequests = "firstread_inference_requests_total";
constexpr const char* kRequestsHelp =
    "frames sent to a model by this process, by backend, model and outcome (truncated: stopped at max_new_tokens)";
constexpr const char* kErrors = "firstread_inference_errors_total";
constexpr const char* kErrorsHelp =
    "failed inference requests by kind (connect, tls, timeout, http_429, http_5xx, http_4xx, bad_reply, network, "
    "config, engine)";
constexpr const char* kSeconds = "firstread_inference_request_seconds";
constexpr const char* kSecondsHelp = "time of one successful inference request (one frame)";
constexpr const char* kInFlight = "firstread_inference_in_flight";
constexpr const char* kInFlightHelp = "inference requests open now";
}  // namespace

InferenceBackends::InferenceBackends(const std::map<std::string, config::ModelConfig>& models,
                                     ModelRegistry& registry)
    : configs_(models), registry_(registry) {
  // Every configured model has its series from the first scrape.
  auto& r = metrics::registry();
  for (const auto& [name, cfg] : configs_) {
    const metrics::Labels l = {{"backend", cfg.backend}, {"model", name}};
    for (const char* outcome : {"ok", "truncated", "error"}) {
      metrics::Labels lo = l;
      lo.emplace_back("outcome", outcome);
      r.counter(kRequests, kRequestsHelp, lo);
    }
    r.histogram(kSeconds, kSecondsHelp, l, kLatencyBuckets);
    r.gauge(kInFlight, kInFlightHelp, l);
  }
}

FrameInference InferenceBackends::infer(const std::string& model_name, const engine::RgbImage& frame,
                                        const config::Route& route) {
  InferenceBackend& backend = get(model_name);
  const std::string kind = configs_.at(model_name).backend;
  auto& r = metrics::registry();
  const metrics::Labels l = {{"backend", kind}, {"model", model_name}};
  auto with = [&](const char* key, const std::string& value) {
    metrics::Labels out = l;
    out.emplace_back(key, value);
    return out;
  };
  metrics::Gauge& in_flight = r.gauge(kInFlight, kInFlightHelp, l);
  in_flight.add(1);
  const auto t0 = std::chrono::steady_clock::now();
  auto failed = [&](const std::string& error_kind) {
    in_flight.add(-1);
    r.counter(kRequests, kRequestsHelp, with("outcome", "error")).inc();
    r.counter(kErrors, kErrorsHelp, with("kind", error_kind)).inc();
  };
  try {
    FrameInference out = backend.infer(frame, route);
    in_flight.add(-1);
    r.counter(kRequests, kRequestsHelp, with("outcome", out.truncated ? "truncated" : "ok")).inc();
    r.histogram(kSeconds, kSecondsHelp, l, kLatencyBuckets)
        .observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return out;
  } catch (const InferenceError& e) {
    failed(e.kind());
    throw;
  } catch (...) {
    failed(kind == "local" ? "engine" : "other");
    throw;
  }
}

std::string InferenceBackends::readiness(const std::vector<std::string>& model_names) {
  for (const auto& name : model_names) {
    try {
      const std::string why = get(name).readiness();
      if (!why.empty()) return why;
    } catch (const std::exception& e) {
      return e.what();
    }
  }
  return "";
}

}  // namespace firstread::pipeline
