// The seam between the study processor and whatever runs the model: the
// in-process CPU engine (backend: local) or a GPU server behind the
// OpenAI-compatible chat-completions API (backend: openai, issue 14). The
// processor hands either one 8-bit RGB frame (after the DICOM -> 8-bit path)
// and the route, and gets the text and the regions already mapped to that
// frame's pixels.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/config.h"
#include "engine/image.h"
#include "pipeline/model_registry.h"
#include "reports/model_output.h"

namespace firstread::pipeline {

// One region of a reply, mapped to source-frame pixels. in_grid is false for a
// box the model wrote outside its grid (or empty): it is dropped, the text kept.
struct MappedRegion {
  std::string label;
  int model_box[4] = {0, 0, 0, 0};     // as the model wrote it
  double pixel_box[4] = {0, 0, 0, 0};  // x1, y1, x2, y2 in source pixels, clamped to the frame
  bool in_grid = true;
  std::string grid;                    // the grid it was checked against, for the log ("0..999", "896x640 px")
};

struct FrameInference {
  std::string text;       // the model's text as it came (region markup included)
  std::string narrative;  // the text for people (region markup removed)
  std::vector<MappedRegion> regions;
  bool truncated = false;  // stopped at max_new_tokens (remote: finish_reason "length")
  int prompt_tokens = 0, completion_tokens = 0;
  std::string served_model;  // remote: the "model" of the reply; local: the model name
  std::string log_detail;    // timings or request facts for the job's log line
};

// Who produced a report: goes to api.reports and the SR's device observer.
struct BackendIdentity {
  std::string backend;        // "local" | "openai"
  std::string model_name;     // models.<name>
  std::string model_version;  // local: digest of the weights; remote: the configured served model name
  std::string device_observer_uid;
  std::string host;           // remote: the URL's host (the SR's device observer location)
};

// A job-level inference failure. kind is a short, stable word for /metrics
// (connect, tls, timeout, http_429, http_5xx, http_4xx, bad_reply, config);
// retry_after_seconds > 0 asks the queue to wait at least that long (HTTP 429
// or 503 with Retry-After).
class InferenceError : public std::runtime_error {
 public:
  InferenceError(std::string kind, const std::string& message, double retry_after_seconds = 0)
      : std::runtime_error(message), kind_(std::move(kind)), retry_after_seconds_(retry_after_seconds) {}
  const std::string& kind() const { return kind_; }
  double retry_after_seconds() const { return retry_after_seconds_; }

 private:
  std::string kind_;
  double retry_after_seconds_;
};

class InferenceBackend {
 public:
  virtual ~InferenceBackend() = default;
  // Thread-safe: workers call it concurrently (the local engine serialises,
  // a remote backend allows max_in_flight requests at once).
  virtual FrameInference infer(const engine::RgbImage& frame, const config::Route& route) = 0;
  virtual BackendIdentity identity() = 0;
  // "" when the model can serve now, else why not (for /readyz). May block
  // for a network round trip (remote: GET /v1/models).
  virtual std::string readiness() = 0;
};

// The backends by model name, made on first use. Local ones share the
// ModelRegistry (weights loaded once per process).
class InferenceBackends {
 public:
  // Publishes, per backend and model, into metrics::registry():
  // firstread_inference_requests_total{backend,model,outcome=ok|truncated|error},
  // firstread_inference_errors_total{backend,model,kind},
  // firstread_inference_request_seconds{backend,model} (histogram of successful requests),
  // firstread_inference_in_flight{backend,model}.
  InferenceBackends(const std::map<std::string, config::ModelConfig>& models, ModelRegistry& registry);
  // Throws std::runtime_error naming the model.
  InferenceBackend& get(const std::string& model_name);
  // get(model).infer(...), counted for /metrics (requests, errors by kind,
  // latency, per backend and model). Rethrows the backend's error.
  FrameInference infer(const std::string& model_name, const engine::RgbImage& frame, const config::Route& route);
  // "" when every model named can serve, else the first reason (for /readyz).
  std::string readiness(const std::vector<std::string>& model_names);

 private:
  std::map<std::string, config::ModelConfig> configs_;
  ModelRegistry& registry_;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<InferenceBackend>> backends_;
};

// The reply parsed with reports/model_output (the one model-output parser):
// regions mapped to source pixels and the narrative. grid describes the
// format's grid for the log.
void parse_reply(const std::string& text, const engine::PreprocessGeometry& geometry,
                 const reports::BoxFormat& format, const std::string& grid, FrameInference& out);

}  // namespace firstread::pipeline
