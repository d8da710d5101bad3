// Public API of the engine: load an InternVL-Chat model directory once, then
// run images + a prompt through it.
//
//   auto model = firstread::engine::Model::load("/models/medrega", {.threads = 2});
//   auto img = firstread::engine::load_image_file("chest.png");   // or image_from_rgb8(...)
//   auto res = model->generate(img, "Please describe the image.", 256);
//   res.text, res.token_ids, res.timings, res.images[0] (geometry for box mapping)
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/config.h"
#include "engine/image.h"
#include "engine/tokenizer.h"

namespace firstread::engine {

struct EngineOptions {
  int threads = 0;                // 0: all hardware threads
  // auto (as stored, mapped) | f32 | bf16 | f16 | int8 | int4, chosen at
  // load. int8 / int4: the decoder's matrices (embedding and output head
  // included) as blocks of 32 weights with an FP16 scale (llama.cpp's Q8_0 /
  // Q4_0 blocks, kept interleaved 16 at a time: engine/qlayout.h), 1.06 / 0.56
  // bytes per weight; norms, biases and the vision encoder keep their stored
  // precision.
  std::string weights = "auto";
  // The vision encoder's and mlp1 projector's matrices: auto | f32 | bf16 |
  // int8 (Q8_0 blocks; with the avx512 kernels multiplied as int8 against
  // activations quantised per row and block). auto: the decoder's format when
  // that is f32 / bf16 / f16, else as stored. A matrix whose width is not a
  // multiple of 32 (the patch embedding) stays as stored under int8.
  std::string vision_weights = "auto";
  // Where converted weights are cached so a restart does not quantise again:
  // "auto" = beside the model (<dir>/.firstread-cache-<format>.bin; skipped
  // with a note when the directory is read-only), "off", or a directory.
  // Only int8 / int4 are cached (other conversions are cheap).
  std::string weight_cache = "auto";
  std::string system_message;     // empty: the template's default
  bool has_system_message = false;
  // Continuous batching (engine/batch_scheduler.h): concurrent generate calls
  // on one Model share each decode step, up to max_batch sequences (1: one
  // request at a time). Prompts are prefilled in chunks of prefill_chunk
  // tokens between the others' decode steps.
  int max_batch = 4;
  int prefill_chunk = 512;
};

struct Timings {
  double preprocess_ms = 0, vision_ms = 0, prefill_ms = 0, decode_ms = 0;
  double tokens_per_second = 0;  // generated tokens after the first / decode time
  int prompt_tokens = 0, generated_tokens = 0;
  int largest_batch = 0;  // the most sequences (this one included) that shared one of its decode steps
};

struct GenerateResult {
  std::string text;                    // decoded answer, end token excluded
  std::vector<int> token_ids;          // generated ids (end token included when hit)
  std::vector<int> prompt_token_ids;   // the full prompt, image context tokens included
  bool stopped_on_end_token = false;
  Timings timings;
  std::vector<PreprocessGeometry> images;  // one per input image, in order
  std::vector<float> first_logits;     // logits of the first generated position (if requested)
};

struct GenerateOptions {
  int max_new_tokens = 256;
  bool keep_first_logits = false;
  bool stop_on_end_token = true;
};

struct BatchStats;
class ModelImpl;

// A loaded model. generate / generate_from_ids are thread-safe: concurrent
// calls are batched (EngineOptions::max_batch sequences share each decode
// step, each with its own KV cache) and each gets the ids it would get alone.
class Model {
 public:
  // Loads config.json, the safetensors weights (mmap) and the tokenizer.
  // Throws EngineError naming the file / tensor / key on any problem.
  static std::unique_ptr<Model> load(const std::string& dir, const EngineOptions& opts = {});
  ~Model();

  GenerateResult generate(const std::vector<RgbImage>& images, const std::string& prompt, const GenerateOptions& opts);
  GenerateResult generate(const RgbImage& image, const std::string& prompt, int max_new_tokens);

  // Text-only generation from prompt ids (no image; ids as given, no template).
  GenerateResult generate_from_ids(const std::vector<int>& prompt_ids, const GenerateOptions& opts);

  // Lower-level steps, used by tests and the benchmark.
  // Vision embeddings for one preprocessed image: [n_tiles * num_image_token][llm hidden].
  std::vector<float> encode_image(const PreprocessedImage& img);
  // The prompt text (template applied, <image> expanded to n_image_tokens contexts).
  std::string build_prompt(const std::string& question, const std::vector<int>& tokens_per_image) const;

  const ModelHParams& hparams() const;
  const Tokenizer& tokenizer() const;
  int threads() const;
  size_t weight_bytes() const;            // bytes of mapped tensors
  size_t converted_weight_bytes() const;  // bytes held after load-time conversion (weights != auto)
  const std::string& dir() const;
  // What happened with the weight cache at load (mapped, written, ignored and
  // why, or empty when no cache applies).
  const std::string& weight_cache_note() const;
  int max_batch() const;
  // Decode steps by batch size so far (engine/batch_scheduler.h), and a reset.
  BatchStats batch_stats() const;
  void reset_batch_stats();

 private:
  explicit Model(std::unique_ptr<ModelImpl> impl);
  std::unique_ptr<ModelImpl> impl_;
};

}  // namespace firstread::engine
