// backend: openai (issue 14): one frame per POST /v1/chat/completions to a
// server that speaks the OpenAI-compatible API (LMDeploy, vLLM, SGLang,
// llama.cpp's llama-server), on Boost.Beast with OpenSSL for https.
//
// What is sent: {"model", "messages": [optional system message, one user
// message whose content is [{"type":"text","text": route prompt},
// {"type":"image_url","image_url":{"url":"data:image/png;base64,..."}}]],
// "temperature": 0, "seed", "max_tokens": route.max_new_tokens, "stream":
// false} merged with models.<name>.extra. The PNG is the frame after the
// DICOM -> 8-bit path, resized so its longer side is at most max_image_side
// (qwen25-pixels: each side snapped to a multiple of 28, so Qwen2.5-VL's
// smart_resize keeps it and its pixel boxes are pixels of the sent image).
// Nothing else of the DICOM file leaves the process.
//
// What is read: choices[0].message.content (the text), finish_reason
// ("length" = truncated), usage.prompt_tokens / completion_tokens, model.
// Every fault is an InferenceError (see inference_backend.h for the kinds).
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>

#include "pipeline/inference_backend.h"

namespace firstread::pipeline {

// http(s)://host[:port][/prefix] split up. The API paths are prefix +
// "/v1/...", where a prefix already ending in /v1 is not doubled.
struct ServerUrl {
  bool https = false;
  std::string host, port, prefix;
  std::string str() const;  // for messages (never carries a token)
};
ServerUrl parse_server_url(const std::string& url);

// The size a W x H frame is sent at for this model (see above).
void sent_size(int width, int height, const config::RemoteModelConfig& cfg, int* out_w, int* out_h);

// Retry-After (RFC 9110 10.2.3): delay-seconds or an HTTP-date; 0 if absent or unreadable.
double parse_retry_after(const std::string& value);

class OpenAiBackend : public InferenceBackend {
 public:
  OpenAiBackend(std::string name, config::RemoteModelConfig cfg);
  FrameInference infer(const engine::RgbImage& frame, const config::Route& route) override;
  BackendIdentity identity() override;
  std::string readiness() override;  // GET /v1/models with the token; the served model must be listed

 private:
  struct Reply {
    unsigned status = 0;
    std::string body, retry_after;
  };
  // One HTTP exchange under the model's timeout; throws InferenceError for
  // connect / TLS / timeout / network faults.
  Reply exchange(const std::string& method, const std::string& path, const std::string& body,
                 std::chrono::steady_clock::duration timeout);
  // The stages of infer(), in order.
  std::string request_body(const engine::RgbImage& frame, const config::Route& route, int w, int h) const;
  void check_status(const Reply& reply) const;
  std::string read_choice(const std::string& reply_body, FrameInference& out) const;
  void map_regions(const std::string& text, const engine::RgbImage& frame, int w, int h, FrameInference& out) const;
  std::string bearer_token() const;  // "" when no api_key_env
  std::string where() const;         // "remote model 'x' (https://host:port)" for messages

  std::string name_;
  config::RemoteModelConfig cfg_;
  ServerUrl url_;
  std::string device_uid_;
  // At most max_in_flight requests open at once.
  std::mutex gate_mu_;
  std::condition_variable gate_cv_;
  int open_ = 0;
  // /readyz is polled: one GET /v1/models per few seconds at most.
  std::mutex ready_mu_;
  std::chrono::steady_clock::time_point ready_checked_{};
  std::string ready_result_ = "not checked yet";
};

}  // namespace firstread::pipeline
