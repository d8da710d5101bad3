#include "engine/batch_scheduler.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "engine/common.h"

namespace firstread::engine {

BatchScheduler::BatchScheduler(LlmDecoder& llm, ThreadPool& pool, std::recursive_mutex& compute_mu, int max_batch,
                               int prefill_chunk)
    : llm_(llm),
      pool_(pool),
      compute_mu_(compute_mu),
      max_batch_(std::max(1, max_batch)),
      prefill_chunk_(std::max(1, prefill_chunk)),
      slots_(size_t(max_batch_)) {
  const LlmHParams& hp = llm_.hparams();
  step_x_.resize(size_t(max_batch_) * hp.hidden);
  step_logits_.resize(size_t(max_batch_) * hp.vocab);
  step_caches_.resize(size_t(max_batch_));
  step_slots_.resize(size_t(max_batch_));
  stats_.steps.assign(size_t(max_batch_) + 1, 0);
  stats_.step_ms.assign(size_t(max_batch_) + 1, 0.0);
  thread_ = std::thread([this] { loop(); });
}

BatchScheduler::~BatchScheduler() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  thread_.join();
}

void BatchScheduler::run(DecodeRequest& req) {
  if (req.ids.empty()) throw EngineError("empty prompt");
  if (req.max_new_tokens < 1) throw EngineError("max_new_tokens must be at least 1");
  req.tokens.clear();
  req.stopped_on_end_token = false;
  req.first_logits.clear();
  req.vision_ms = req.prefill_ms = req.decode_ms = 0;
  req.largest_batch = 0;
  Waiting w;
  w.req = &req;
  std::unique_lock<std::mutex> lk(mu_);
  if (stop_) throw EngineError("model unloaded");
  queue_.push_back(&w);
  work_cv_.notify_one();
  done_cv_.wait(lk, [&] { return w.done; });
  if (w.error) std::rethrow_exception(w.error);
}

BatchStats BatchScheduler::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stats_;
}

void BatchScheduler::reset_stats() {
  std::lock_guard<std::mutex> lk(mu_);
  stats_ = BatchStats{};
  stats_.steps.assign(size_t(max_batch_) + 1, 0);
  stats_.step_ms.assign(size_t(max_batch_) + 1, 0.0);
}

// Waiting requests take free slots (FIFO), at any step.
void BatchScheduler::admit() {
  for (Slot& s : slots_) {
    if (queue_.empty()) return;
    if (s.w) continue;
    s.w = queue_.front();
    queue_.pop_front();
    s.admitted = ++admissions_;
    s.stage = Stage::Vision;
    s.prefilled = 0;
    s.next = -1;
    s.finished = false;
    s.error = nullptr;
    s.t_vision = -1;
    s.vis.clear();
    ++active_;
  }
}

void BatchScheduler::loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(mu_);
      work_cv_.wait(lk, [&] { return stop_ || !queue_.empty() || active_ > 0; });
      if (stop_) {
        // Unloading: nothing new starts; everyone waiting or in flight is told.
        for (Waiting* w : queue_) {
          w->error = std::make_exception_ptr(EngineError("model unloaded"));
          w->done = true;
        }
        queue_.clear();
        for (Slot& s : slots_)
          if (s.w) {
            s.w->error = std::make_exception_ptr(EngineError("model unloaded"));
            s.w->done = true;
            s.w = nullptr;
          }
        active_ = 0;
        done_cv_.notify_all();
        return;
      }
      admit();
    }
    {
      std::lock_guard<std::recursive_mutex> compute(compute_mu_);
      decode_step();
      advance_one();
    }
    std::lock_guard<std::mutex> lk(mu_);
    bool any = false;
    for (Slot& s : slots_)
      if (s.w && s.finished) {
        finish(s);
        any = true;
      }
    if (any) done_cv_.notify_all();
  }
}

// Under mu_: hands the result (or the error) to the waiting caller and frees the slot.
void BatchScheduler::finish(Slot& s) {
  s.w->error = s.error;
  s.w->done = true;
  s.w = nullptr;
  s.emb.clear();
  s.vis.clear();
  --active_;
}

// The greedy choice after a forward pass, exactly as a lone generation makes
// it: the first index of the maximum (torch.argmax), stop on the end token or
// at max_new_tokens.
void BatchScheduler::accept(Slot& s, const float* logits) {
  DecodeRequest& r = *s.w->req;
  const int vocab = llm_.hparams().vocab;
  const int best = int(std::max_element(logits, logits + vocab) - logits);
  r.tokens.push_back(best);
  if (r.stop_on_end_token && best == r.stop_id) {
    r.stopped_on_end_token = true;
    s.finished = true;
  } else if (int(r.tokens.size()) >= r.max_new_tokens) {
    s.finished = true;
  }
  s.next = best;
  if (s.finished) r.decode_ms = now_ms() - s.t_decode;
}

// One new position for every decoding sequence, in one pass over the weights.
void BatchScheduler::decode_step() {
  int b = 0;
  for (Slot& s : slots_)
    if (s.w && !s.finished && s.stage == Stage::Decode) step_slots_[size_t(b++)] = &s;
  if (b == 0) return;
  const LlmHParams& hp = llm_.hparams();
  const double t0 = now_ms();
  try {
    for (int i = 0; i < b; ++i) {
      llm_.embed(&step_slots_[size_t(i)]->next, 1, step_x_.data() + size_t(i) * hp.hidden);
      step_caches_[size_t(i)] = &step_slots_[size_t(i)]->cache;
    }
    llm_.forward_decode(pool_, step_caches_.data(), b, step_x_.data(), step_logits_.data());
  } catch (...) {
    for (int i = 0; i < b; ++i) {
      step_slots_[size_t(i)]->error = std::current_exception();
      step_slots_[size_t(i)]->finished = true;
    }
    return;
  }
  for (int i = 0; i < b; ++i) {
    Slot& s = *step_slots_[size_t(i)];
    DecodeRequest& r = *s.w->req;
    r.largest_batch = std::max(r.largest_batch, b);
    accept(s, step_logits_.data() + size_t(i) * hp.vocab);
  }
  const double ms = now_ms() - t0;
  std::lock_guard<std::mutex> lk(mu_);
  stats_.steps[size_t(b)] += 1;
  stats_.step_ms[size_t(b)] += ms;
}

// Prompt embeddings (image rows over the context positions) and a cache for
// prompt + max_new_tokens positions.
void BatchScheduler::start_prefill(Slot& s) {
  DecodeRequest& r = *s.w->req;
  const int H = llm_.hparams().hidden, n = int(r.ids.size());
  const std::vector<float>& vis = s.vis;
  s.emb.resize(size_t(n) * H);
  llm_.embed(r.ids.data(), n, s.emb.data());
  size_t vi = 0;
  for (int i = 0; i < n; ++i)
    if (r.ids[size_t(i)] == r.img_context_id) {
      if ((vi + 1) * H > vis.size()) throw EngineError("more <IMG_CONTEXT> tokens than image embeddings");
      std::memcpy(s.emb.data() + size_t(i) * H, vis.data() + vi * H, size_t(H) * 4);
      ++vi;
    }
  if (vi * H != vis.size())
    throw EngineError("prompt has " + std::to_string(vi) + " <IMG_CONTEXT> tokens but the images give " +
                      std::to_string(vis.size() / H));
  s.vis.clear();
  llm_.init_cache(s.cache, n + r.max_new_tokens);
  s.logits.resize(size_t(llm_.hparams().vocab));
  s.stage = Stage::Prefill;
}

// One unit of the slot's image encode; its wall time from the first unit to
// the last (the others' decode steps between them included) is the request's vision_ms.
bool BatchScheduler::vision_unit(Slot& s) {
  DecodeRequest& r = *s.w->req;
  const double t0 = now_ms();
  if (s.t_vision < 0) s.t_vision = t0;
  const bool done = r.vision(s.vis);
  const double t1 = now_ms();
  if (done) r.vision_ms = t1 - s.t_vision;
  std::lock_guard<std::mutex> lk(mu_);
  stats_.vision_ms += t1 - t0;
  stats_.vision_units += 1;
  return done;
}

// The oldest sequence not yet decoding gets one unit of work: a unit of its
// image encode (the last with the prompt embeddings), or its next prefill chunk.
void BatchScheduler::advance_one() {
  Slot* oldest = nullptr;
  for (Slot& s : slots_)
    if (s.w && !s.finished && s.stage != Stage::Decode && (!oldest || s.admitted < oldest->admitted)) oldest = &s;
  if (!oldest) return;
  Slot& s = *oldest;
  DecodeRequest& r = *s.w->req;
  try {
    if (s.stage == Stage::Vision) {
      if (r.vision && !vision_unit(s)) return;
      start_prefill(s);
      if (r.vision) return;  // the last image-encode unit is a unit of its own
    }
    const int n = int(r.ids.size()), H = llm_.hparams().hidden;
    const int chunk = std::min(prefill_chunk_, n - s.prefilled);
    const double t0 = now_ms();
    if (s.prefilled == 0) s.t_prefill = t0;
    llm_.forward(pool_, s.cache, s.emb.data() + size_t(s.prefilled) * H, chunk, s.logits.data());
    s.prefilled += chunk;
    const double t1 = now_ms();
    {
      std::lock_guard<std::mutex> lk(mu_);
      stats_.prefill_chunks += 1;
      stats_.prefill_tokens += chunk;
      stats_.prefill_ms += t1 - t0;
    }
    if (s.prefilled < n) return;
    r.prefill_ms = t1 - s.t_prefill;
    if (r.keep_first_logits) r.first_logits = s.logits;
    s.t_decode = t1;
    s.stage = Stage::Decode;
    accept(s, s.logits.data());
  } catch (...) {
    s.error = std::current_exception();
    s.finished = true;
  }
}

}  // namespace firstread::engine
