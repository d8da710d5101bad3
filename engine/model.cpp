#include "engine/model.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>

#include "engine/batch_scheduler.h"
#include "engine/common.h"
#include "engine/kernels.h"
#include "engine/llm.h"
#include "engine/safetensors.h"
#include "engine/vision.h"
#include "engine/weights.h"

namespace firstread::engine {

// InternVL2's default system message (conversation.py, Hermes-2 / internlm2-chat).
static const char* kInternVL2System =
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。";
// MedRegA / MedDr ship their own conversation.py with this message (V1-2 lineage).
static const char* kV12System = "Answer the questions.";

struct ChatTemplate {
  std::string system_prefix = "<|im_start|>system\n";
  std::string user_prefix = "<|im_start|>user\n";
  std::string assistant_prefix = "<|im_start|>assistant\n";
  std::string sep = "<|im_end|>";  // MPT style; also the stop token
  std::string sep_after;           // "\n" for internvl2_5
  std::string system_message;
};

class ModelImpl {
 public:
  std::string dir;
  ModelHParams hp;
  EngineOptions opts;
  std::unique_ptr<SafetensorsSet> st;
  std::unique_ptr<WeightStore> ws;
  std::unique_ptr<Tokenizer> tok;
  std::unique_ptr<VisionEncoder> vision;
  std::unique_ptr<LlmDecoder> llm;
  std::unique_ptr<ThreadPool> pool;
  ChatTemplate tmpl;
  int img_context_id = -1, stop_id = -1;
  // Held around every use of the pool (the scheduler's units of work,
  // encode_image): the decoder's and encoder's scratch buffers are shared.
  std::recursive_mutex mu;
  std::string cache_note;
  // Last: stopped (its thread joined) before the decoder and pool go.
  std::unique_ptr<BatchScheduler> scheduler;
};

Model::Model(std::unique_ptr<ModelImpl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

// Prefill (image embeddings written over the <IMG_CONTEXT> positions in
// order) then greedy decoding, batched with whatever else runs on this model.
static void run_decoder(ModelImpl& m, const std::vector<int>& ids, std::function<bool(std::vector<float>&)> vision,
                        const GenerateOptions& opts, GenerateResult& res) {
  DecodeRequest req;
  req.ids = ids;
  req.vision = std::move(vision);
  req.img_context_id = m.img_context_id;
  req.max_new_tokens = opts.max_new_tokens;
  req.stop_on_end_token = opts.stop_on_end_token;
  req.stop_id = m.stop_id;
  req.keep_first_logits = opts.keep_first_logits;
  m.scheduler->run(req);
  res.token_ids = std::move(req.tokens);
  res.stopped_on_end_token = req.stopped_on_end_token;
  res.first_logits = std::move(req.first_logits);
  std::vector<int> text_ids = res.token_ids;
  if (res.stopped_on_end_token) text_ids.pop_back();
  res.text = m.tok->decode(text_ids, true);
  Timings& tm = res.timings;
  tm.vision_ms = req.vision_ms;
  tm.prefill_ms = req.prefill_ms;
  tm.decode_ms = req.decode_ms;
  tm.prompt_tokens = int(ids.size());
  tm.generated_tokens = int(res.token_ids.size());
  tm.largest_batch = req.largest_batch;
  // The first token comes from prefill; the decode loop produced the rest.
  tm.tokens_per_second = tm.decode_ms > 0 ? (res.token_ids.size() - 1) * 1000.0 / tm.decode_ms : 0.0;
}

std::unique_ptr<Model> Model::load(const std::string& dir, const EngineOptions& opts) {
  auto m = std::make_unique<ModelImpl>();
  m->dir = dir;
  m->opts = opts;
  m->hp = load_model_config(dir);
  int threads = opts.threads > 0 ? opts.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  m->pool = std::make_unique<ThreadPool>(threads);
  set_blas_threads(1);  // the pool parallelises around OpenBLAS (kernels.h)
  m->tok = Tokenizer::load(dir);
  m->st = std::make_unique<SafetensorsSet>(dir);
  const WeightFormat fmt = parse_weight_format(opts.weights);
  m->ws = std::make_unique<WeightStore>(*m->st, fmt);
  std::string cache_path, cache_key;
  if ((fmt == WeightFormat::Q8 || fmt == WeightFormat::Q4) && opts.weight_cache != "off") {
    const std::string fname = std::string(".firstread-cache-") + weight_format_name(fmt) + ".bin";
    cache_path = join_path(opts.weight_cache == "auto" || opts.weight_cache.empty() ? dir : opts.weight_cache, fname);
    // Valid for these exact files: a changed or replaced checkpoint (size or
    // modification time) makes the cache stale.
    cache_key = std::string("format=") + weight_format_name(fmt) + ";blocks=32;";
    for (const std::string& f : m->st->file_paths()) {
      struct stat sb {};
      if (::stat(f.c_str(), &sb) != 0) throw EngineError(f + ": " + std::strerror(errno));
      cache_key += f.substr(f.find_last_of('/') + 1) + ":" + std::to_string(sb.st_size) + ":" +
                   std::to_string(int64_t(sb.st_mtim.tv_sec) * 1000000000 + sb.st_mtim.tv_nsec) + ";";
    }
    m->ws->open_cache(cache_path, cache_key);
  }
  m->llm = std::make_unique<LlmDecoder>(m->hp.llm, *m->ws);
  const WeightFormat vision_fmt = parse_vision_weight_format(opts.vision_weights, fmt);
  m->ws->set_format(vision_fmt);
  m->ws->set_quantize_allowed(vision_fmt == WeightFormat::Q8);
  m->vision = std::make_unique<VisionEncoder>(m->hp, *m->ws, m->hp.llm.hidden);
  if (!cache_path.empty() && m->ws->matrices_converted() > 0) m->ws->write_cache(cache_path, cache_key);
  m->cache_note = m->ws->cache_note();

  const std::string& tn = m->hp.chat.template_name;
  ChatTemplate& t = m->tmpl;
  if (tn == "Hermes-2" || tn.empty()) {
    t.system_message = m->hp.chat.ps_version == 1 ? kV12System : kInternVL2System;
  } else if (tn == "internlm2-chat") {
    t.system_message = kInternVL2System;
  } else if (tn == "internvl2_5") {
    t.system_message = kInternVL2System;
    t.sep_after = "\n";
  } else {
    throw EngineError(join_path(dir, "config.json") + ": unknown template '" + tn +
                      "' (Hermes-2, internlm2-chat, internvl2_5)");
  }
  if (opts.has_system_message) t.system_message = opts.system_message;
  m->img_context_id = m->tok->token_id("<IMG_CONTEXT>");
  if (m->img_context_id < 0) throw EngineError(dir + ": tokenizer has no <IMG_CONTEXT> token");
  m->stop_id = m->tok->token_id(t.sep);
  if (m->stop_id < 0) throw EngineError(dir + ": tokenizer has no " + t.sep + " token (template end)");
  if (opts.max_batch < 1) throw EngineError("max_batch must be at least 1");
  if (opts.prefill_chunk < 1) throw EngineError("prefill_chunk must be at least 1");
  m->scheduler = std::make_unique<BatchScheduler>(*m->llm, *m->pool, m->mu, opts.max_batch, opts.prefill_chunk);
  return std::unique_ptr<Model>(new Model(std::move(m)));
}

const ModelHParams& Model::hparams() const { return impl_->hp; }
const std::string& Model::weight_cache_note() const { return impl_->cache_note; }
const Tokenizer& Model::tokenizer() const { return *impl_->tok; }
int Model::threads() const { return impl_->pool->size(); }
size_t Model::weight_bytes() const { return impl_->st->total_bytes(); }
size_t Model::converted_weight_bytes() const { return impl_->ws->owned_bytes(); }
const std::string& Model::dir() const { return impl_->dir; }
int Model::max_batch() const { return impl_->scheduler->max_batch(); }
BatchStats Model::batch_stats() const { return impl_->scheduler->stats(); }
void Model::reset_batch_stats() { impl_->scheduler->reset_stats(); }

// The embedding values of a preprocessed image, once checked against the model.
static size_t image_embedding_values(const ModelImpl& m, const PreprocessedImage& img) {
  const int nt = m.hp.chat.num_image_token, H = m.hp.llm.hidden, S = img.tile_size;
  if (S != m.hp.chat.image_size) throw EngineError("preprocessed tile size does not match the model");
  if (img.pixels.size() != size_t(img.geometry.n_tiles) * 3 * S * S)
    throw EngineError("preprocessed image holds " + std::to_string(img.pixels.size()) + " values, expected " +
                      std::to_string(size_t(img.geometry.n_tiles) * 3 * S * S));
  return size_t(img.geometry.n_tiles) * nt * H;
}

std::vector<float> Model::encode_image(const PreprocessedImage& img) {
  std::lock_guard<std::recursive_mutex> lk(impl_->mu);
  std::vector<float> out(image_embedding_values(*impl_, img));
  impl_->vision->encode_tiles(*impl_->pool, img.pixels.data(), img.geometry.n_tiles, out.data());
  return out;
}

namespace {
// A request's images encoded unit by unit (DecodeRequest::vision): one ViT
// layer per unit, images in order, their embeddings one after another.
struct ImagesInUnits {
  ModelImpl* m;
  const std::vector<PreprocessedImage>* images;
  size_t next = 0;  // the image in progress
  bool running = false;
  VisionEncoder::Job job;
  std::vector<size_t> offsets;  // where each image's embeddings start in out

  bool operator()(std::vector<float>& out) {
    std::lock_guard<std::recursive_mutex> lk(m->mu);
    if (offsets.empty()) {
      size_t total = 0;
      for (const auto& img : *images) {
        offsets.push_back(total);
        total += image_embedding_values(*m, img);
      }
      out.assign(total, 0.f);
    }
    if (next >= images->size()) return true;
    const PreprocessedImage& img = (*images)[next];
    if (!running) {
      job = m->vision->start(img.pixels.data(), img.geometry.n_tiles, out.data() + offsets[next], /*layers_per_unit=*/1);
      running = true;
    }
    if (!m->vision->step(*m->pool, job)) return false;
    running = false;
    return ++next == images->size();
  }
};
}  // namespace

std::string Model::build_prompt(const std::string& question, const std::vector<int>& tokens_per_image) const {
  const ChatTemplate& t = impl_->tmpl;
  std::string q = question;
  size_t have = 0;
  for (size_t p = q.find("<image>"); p != std::string::npos; p = q.find("<image>", p + 7)) ++have;
  if (have > tokens_per_image.size())
    throw EngineError("prompt has " + std::to_string(have) + " <image> placeholders but " +
                      std::to_string(tokens_per_image.size()) + " images were given");
  // InternVL2 chat(): an image without a placeholder goes first, as "<image>\n".
  std::string prefix;
  for (size_t i = have; i < tokens_per_image.size(); ++i) prefix += "<image>\n";
  q = prefix + q;
  std::string expanded;
  size_t pos = 0, img = 0;
  for (size_t p = q.find("<image>"); p != std::string::npos; p = q.find("<image>", pos)) {
    expanded += q.substr(pos, p - pos);
    expanded += "<img>";
    for (int k = 0; k < tokens_per_image[img]; ++k) expanded += "<IMG_CONTEXT>";
    expanded += "</img>";
    ++img;
    pos = p + 7;
  }
  expanded += q.substr(pos);
  return t.system_prefix + t.system_message + t.sep + t.sep_after + t.user_prefix + expanded + t.sep + t.sep_after +
         t.assistant_prefix;
}

GenerateResult Model::generate(const RgbImage& image, const std::string& prompt, int max_new_tokens) {
  GenerateOptions o;
  o.max_new_tokens = max_new_tokens;
  return generate(std::vector<RgbImage>{image}, prompt, o);
}

GenerateResult Model::generate(const std::vector<RgbImage>& images, const std::string& prompt,
                               const GenerateOptions& opts) {
  ModelImpl& m = *impl_;
  if (opts.max_new_tokens < 1) throw EngineError("max_new_tokens must be at least 1");
  GenerateResult res;
  const int nt = m.hp.chat.num_image_token;

  double t0 = now_ms();
  std::vector<PreprocessedImage> pre;
  for (const auto& img : images) pre.push_back(preprocess_image(img, m.hp.chat));
  double t1 = now_ms();
  std::vector<int> tokens_per_image;
  int64_t image_tokens = 0;
  for (const auto& p : pre) {
    tokens_per_image.push_back(p.geometry.n_tiles * nt);
    image_tokens += tokens_per_image.back();
    res.images.push_back(p.geometry);
  }
  const std::string text = build_prompt(prompt, tokens_per_image);
  std::vector<int> ids = m.tok->encode(text, true);
  int64_t n_ctx_tokens = std::count(ids.begin(), ids.end(), m.img_context_id);
  if (n_ctx_tokens != image_tokens)
    throw EngineError("prompt has " + std::to_string(n_ctx_tokens) + " <IMG_CONTEXT> tokens but the images give " +
                      std::to_string(image_tokens));
  res.prompt_token_ids = ids;
  // The encoder runs on the scheduler's thread, a ViT layer at a time between
  // other requests' decode steps.
  if (pre.empty()) run_decoder(m, ids, nullptr, opts, res);
  else run_decoder(m, ids, ImagesInUnits{&m, &pre}, opts, res);
  res.timings.preprocess_ms = t1 - t0;
  return res;
}

GenerateResult Model::generate_from_ids(const std::vector<int>& ids, const GenerateOptions& opts) {
  if (ids.empty()) throw EngineError("empty prompt");
  if (opts.max_new_tokens < 1) throw EngineError("max_new_tokens must be at least 1");
  GenerateResult res;
  res.prompt_token_ids = ids;
  run_decoder(*impl_, ids, nullptr, opts, res);
  return res;
}

}  // namespace firstread::engine
