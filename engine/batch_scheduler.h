// Continuous batching for one model (issue 13): the requests of several
// callers (the service's workers) share every decode step — one pass over the
// decoder's weights per step for all sequences in flight, each with its own KV
// cache and position — and a sequence joins or leaves at any step. A
// newcomer's vision and prefill run between the others' decode steps, the
// image encode in units of a few ViT layers and the prefill in chunks of
// `prefill_chunk` tokens, so a decoding sequence waits at most one unit per step.
//
// One thread of the scheduler's own runs all compute on the model's pool; a
// caller's run() blocks until its request is done. Greedy ids do not depend
// on what else is in flight: a decode step's products give each sequence the
// bits it gets alone (linear_rows), and a sequence's prefill chunks are cut at
// the same positions whether it runs alone or not.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/kernels.h"
#include "engine/llm.h"

namespace firstread::engine {

// One generation: the prompt in, the greedy ids out.
struct DecodeRequest {
  std::vector<int> ids;  // the whole prompt (template applied, image contexts expanded)
  // Image embeddings [contexts][hidden], computed on the scheduler's thread
  // before prefill in units (e.g. a few ViT layers each) between the other
  // sequences' decode steps: each call runs one unit and returns true once
  // `out` holds the embeddings (the same vector is passed every time). Each
  // position holding img_context_id takes the next row. Empty: a text-only prompt.
  std::function<bool(std::vector<float>& out)> vision;
  int img_context_id = -1;
  int max_new_tokens = 256;
  bool stop_on_end_token = true;
  int stop_id = -1;
  bool keep_first_logits = false;

  std::vector<int> tokens;  // generated ids (the end token included when hit)
  bool stopped_on_end_token = false;
  std::vector<float> first_logits;
  double vision_ms = 0, prefill_ms = 0, decode_ms = 0;  // wall time, as the caller waited (others' steps included)
  int largest_batch = 0;  // the most sequences one of its decode steps shared
};

// Decode steps by batch size (index = sequences in the step), for the
// benchmark and the log.
struct BatchStats {
  std::vector<int64_t> steps;
  std::vector<double> step_ms;
  int64_t prefill_chunks = 0, prefill_tokens = 0, vision_units = 0;
  double prefill_ms = 0, vision_ms = 0;
};

class BatchScheduler {
 public:
  // compute_mu is held around every unit of work on the pool (other users of
  // the model's pool, e.g. Model::encode_image, take it too).
  BatchScheduler(LlmDecoder& llm, ThreadPool& pool, std::recursive_mutex& compute_mu, int max_batch,
                 int prefill_chunk);
  ~BatchScheduler();  // requests still waiting fail with "model unloaded"
  BatchScheduler(const BatchScheduler&) = delete;
  BatchScheduler& operator=(const BatchScheduler&) = delete;

  // Runs req to completion with whatever else is in flight; blocks; rethrows
  // the request's own error (an EngineError naming what was wrong). Thread-safe.
  void run(DecodeRequest& req);

  int max_batch() const { return max_batch_; }
  int prefill_chunk() const { return prefill_chunk_; }
  BatchStats stats() const;
  void reset_stats();

 private:
  struct Waiting {
    DecodeRequest* req = nullptr;
    bool done = false;
    std::exception_ptr error;
  };
  enum class Stage { Vision, Prefill, Decode };
  // A sequence in flight; slots (and their KV caches) are reused.
  struct Slot {
    Waiting* w = nullptr;
    uint64_t admitted = 0;  // admission order: the oldest gets the next prefill chunk
    Stage stage = Stage::Vision;
    KvCache cache;
    std::vector<float> vis;     // image embeddings, filled unit by unit
    std::vector<float> emb;     // prompt embeddings [n][hidden]
    std::vector<float> logits;  // the last prefill chunk's
    int prefilled = 0;
    int next = -1;  // token fed at the next decode step
    double t_vision = -1, t_prefill = 0, t_decode = 0;
    bool finished = false;
    std::exception_ptr error;
  };
  void loop();
  void admit();
  void decode_step();
  void advance_one();  // one image-encode unit or one prefill chunk of the oldest newcomer
  bool vision_unit(Slot& s);  // true once the slot's images are encoded
  void start_prefill(Slot& s);
  void accept(Slot& s, const float* logits);
  void finish(Slot& s);

  LlmDecoder& llm_;
  ThreadPool& pool_;
  std::recursive_mutex& compute_mu_;
  const int max_batch_, prefill_chunk_;
  std::vector<Slot> slots_;
  uint64_t admissions_ = 0;
  // Decode-step buffers for max_batch sequences, made once.
  std::vector<float> step_x_, step_logits_;
  std::vector<KvCache*> step_caches_;
  std::vector<Slot*> step_slots_;

  mutable std::mutex mu_;  // queue_, stop_, stats_, Waiting::done
  std::condition_variable work_cv_, done_cv_;
  std::deque<Waiting*> queue_;
  int active_ = 0;  // slots in use (scheduler thread only writes it, under mu_)
  bool stop_ = false;
  BatchStats stats_;
  std::thread thread_;
};

}  // namespace firstread::engine
