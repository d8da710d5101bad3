// The memory plan of a model directory, computed before anything is loaded:
// parameters per component, bytes per weight format, KV cache, scratch and
// the resident total. `firstread model plan` prints it; the service checks
// it against the memory the machine (or its cgroup) has before loading, so a
// model that cannot fit is refused with a reason instead of being killed by
// the kernel half-way through an 80 GB load.
//
// The figures mirror what Model::load binds (engine/vision.cpp, llm.cpp,
// weights.cpp): matrices stay mapped (weights=auto) or become the requested
// format; vectors (norms, biases, tables) become float32 copies; vision
// layers past select_layer are never bound.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/safetensors.h"

namespace firstread::engine {

struct PlanOptions {
  std::string weights = "auto";         // decoder format: auto|f32|bf16|f16|int8|int4
  std::string vision_weights = "auto";  // vision encoder + mlp1: auto|f32|bf16|f16|int8
  int threads = 1;                      // scratch per thread (attention scores, weight blocks)
  int context = 0;                      // KV positions; 0 = image tokens + prompt_tokens + max_new_tokens
  int prompt_tokens = 512;              // text tokens of the prompt (system + question) for the default context
  int max_new_tokens = 400;
  int sequences = 1;                    // KV caches held at once (models.<name>.max_batch)
  bool read_headers = true;             // use the safetensors headers when the weight files exist
};

// One component's share. `params` counts the tensors the engine binds;
// `stored_bytes` their bytes in the files; `resident_bytes` what they occupy
// in memory once loaded in the planned formats.
struct PlanPart {
  std::string name;
  int64_t params = 0;
  int64_t stored_bytes = 0;
  int64_t resident_bytes = 0;
  int tensors = 0;
};

struct FormatTotal {
  std::string decoder_format;  // auto, f32, bf16, f16, int8, int4
  int64_t decoder_bytes = 0;   // decoder layers + embeddings + head, resident
  int64_t total_bytes = 0;     // the whole plan with this decoder format (vision as planned)
};

struct ModelPlan {
  std::string dir;
  ModelHParams hp;
  std::string weights, vision_weights;
  bool from_headers = false;             // tensor list and dtypes from the files' headers
  std::vector<std::string> files;        // weight files read (headers only)
  std::string stored_dtypes;             // e.g. "BF16" or "BF16, F32"; assumed from torch_dtype without files
  std::vector<PlanPart> parts;           // vit embeddings, vit layers, projector, decoder layers, embeddings, head, unused
  int64_t params_bound = 0;              // what the engine uses
  int64_t params_in_files = 0;           // everything the files hold (unused layers included)
  int64_t weights_resident_bytes = 0;
  std::vector<FormatTotal> per_format;   // decoder formats side by side
  int context = 0;                       // KV positions planned
  int image_tokens = 0;                  // per image at the planned tiling
  int64_t kv_bytes_per_token = 0;
  int64_t kv_bytes = 0;
  int64_t vision_scratch_bytes = 0;      // one image's tiles through the encoder (+ outputs)
  int64_t prefill_scratch_bytes = 0;     // activations of a context-long prefill
  int64_t runtime_bytes = 0;             // code, libraries, tokenizer, OpenBLAS buffers (estimate)
  int64_t load_transient_bytes = 0;      // extra while converting at load (one block in flight)
  int64_t total_bytes = 0;               // resident while serving
  int64_t load_peak_bytes = 0;           // resident while loading
  int64_t decode_bytes_per_token = 0;    // weight bytes read per generated token
  double vision_gflop_per_tile = 0;      // multiply-adds x 2
  double prefill_gflop_per_token = 0;
  std::vector<std::string> problems;     // tensors missing / wrong shape in the files
  // What the plan was made from, so alternatives can be re-planned.
  PlanOptions options;
  std::vector<TensorInfo> header_tensors;
  DType assumed_dtype = DType::BF16;
};

// Plans `dir` (config.json, and the safetensors headers when present).
// Throws EngineError for an unreadable config or header.
ModelPlan plan_model(const std::string& dir, const PlanOptions& opts = {});
// The same from parsed hyper-parameters and (optionally) header tensors:
// `tensors == nullptr` plans from config.json alone with `assumed_dtype`.
ModelPlan plan_model(const ModelHParams& hp, const std::vector<TensorInfo>* tensors, DType assumed_dtype,
                     const PlanOptions& opts);

std::string format_plan_text(const ModelPlan& plan);
std::string format_plan_json(const ModelPlan& plan);
// "47.1 GB" (decimal gigabytes: what hardware is sold in), "812 MB" below 1 GB.
std::string human_gb(int64_t bytes);

// Memory this process may still take: the smaller of /proc/meminfo's
// MemAvailable and the cgroup's limit minus its usage (v2 memory.max /
// memory.current, v1 memory.limit_in_bytes / memory.usage_in_bytes).
struct AvailableMemory {
  int64_t bytes = 0;
  std::string source;  // "MemAvailable", "cgroup /sys/fs/cgroup/.../memory.max", ...
};
AvailableMemory available_memory();

// Empty when `plan` fits into `available_bytes`, else the refusal: the model,
// what it needs in its planned formats, what is available, and the largest
// decoder / vision format combination that would fit (or that none does),
// e.g. "medrega: needs 47.1 GB with int8 decoder + bf16 vision; 31.0 GB
// available (MemAvailable); int4 decoder + bf16 vision needs 27.9 GB".
// The alternatives are re-planned from plan.hp and the tensors it read.
std::string plan_refusal(const std::string& model_name, const ModelPlan& plan, int64_t available_bytes,
                         const std::string& available_source);

}  // namespace firstread::engine
