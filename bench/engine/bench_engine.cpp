// bench_engine [--model DIR] [--threads N] [--no-pytorch] [--decode-tokens N]
//
// On random weights of real sizes (InternViT-300M-shaped encoder at 448 px,
// Qwen2-0.5B-shaped decoder, BF16; made by tools/reference/bench_ref.py if
// DIR has no model), prints vision ms, prefill ms (300 tokens), decode tok/s
// and peak RSS for the engine and for PyTorch on the same weights, their
// ratios, and the engine as a fraction of this machine's measured sgemm
// GFLOP/s and memory bandwidth.
#include <cblas.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/common.h"
#include "engine/kernels.h"
#include "engine/model.h"

using namespace firstread::engine;

static double peak_rss_mb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

static std::string run_capture(const std::string& cmd, int* rc) {
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    *rc = -1;
    return "";
  }
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  *rc = pclose(p);
  return out;
}

// sgemm GFLOP/s at the engine's thread count (best of 3, 2048^3).
static double measure_sgemm(int threads) {
  set_blas_threads(threads);
  const int n = 2048;
  std::vector<float> a(size_t(n) * n, 0.5f), b(size_t(n) * n, 0.25f), c(size_t(n) * n);
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    double t0 = now_ms();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    double s = (now_ms() - t0) / 1000;
    best = std::max(best, 2.0 * n * n * n / s / 1e9);
  }
  return best;
}

// Read bandwidth (GB/s) over a 1 GiB buffer, split over the threads like the matvec.
static double measure_bandwidth(int threads) {
  const size_t n = (size_t(1) << 30) / 4;
  std::vector<float> buf(n);
  for (size_t i = 0; i < n; i += 1024) buf[i] = 1.f;  // touch pages
  std::fill(buf.begin(), buf.end(), 1.0f);
  ThreadPool pool(threads);
  double best = 0;
  std::vector<double> sums(size_t(threads) * 8);
  for (int r = 0; r < 4; ++r) {
    double t0 = now_ms();
    pool.parallel_for(threads, [&](int t) {
      size_t a = n * t / threads, b = n * (t + 1) / threads;
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
      for (size_t i = a; i + 8 <= b; i += 8) {
        s0 += buf[i]; s1 += buf[i + 1]; s2 += buf[i + 2]; s3 += buf[i + 3];
        s4 += buf[i + 4]; s5 += buf[i + 5]; s6 += buf[i + 6]; s7 += buf[i + 7];
      }
      sums[size_t(t) * 8] = s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
    });
    double s = (now_ms() - t0) / 1000;
    best = std::max(best, n * 4.0 / s / 1e9);
  }
  if (sums[0] < 0) std::printf("%f", sums[0]);
  return best;
}

int main(int argc, char** argv) {
  std::string dir = "/tmp/firstread_bench_model";
  int threads = int(std::max(1u, std::thread::hardware_concurrency()));
  int decode_tokens = 32, prefill_tokens = 300, repeat = 2;
  bool pytorch = true, vision = true, q8 = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--model" && i + 1 < argc) dir = argv[++i];
    else if (a == "--threads" && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (a == "--decode-tokens" && i + 1 < argc) decode_tokens = std::atoi(argv[++i]);
    else if (a == "--no-pytorch") pytorch = false;
    else if (a == "--no-vision") vision = false;
    else if (a == "--no-q8") q8 = false;
    else if (a == "--repeat" && i + 1 < argc) repeat = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: bench_engine [--model DIR] [--threads N] [--decode-tokens N] [--no-pytorch] [--no-vision] [--no-q8] [--repeat N]\n");
      return 2;
    }
  }
  const std::string py = std::string(FIRSTREAD_REF_PYTHON) + " " + FIRSTREAD_REF_SCRIPT_DIR + "/bench_ref.py";
  if (!file_exists(dir + "/config.json")) {
    std::fprintf(stderr, "making random real-size model in %s ...\n", dir.c_str());
    int rc;
    std::string out = run_capture(py + " make " + dir + " 2>&1", &rc);
    if (rc != 0) {
      std::fprintf(stderr, "bench_ref.py make failed:\n%s\n", out.c_str());
      return 1;
    }
  }

  const double gflops = measure_sgemm(threads);
  const double gbps = measure_bandwidth(threads);

  EngineOptions opts;
  opts.threads = threads;
  auto model = Model::load(dir, opts);
  const auto& hp = model->hparams();
  // Vision: one 448 tile of noise (content does not change the cost).
  PreprocessedImage pre;
  pre.tile_size = hp.chat.image_size;
  pre.geometry.n_tiles = 1;
  pre.pixels.resize(size_t(3) * pre.tile_size * pre.tile_size);
  std::mt19937 g(1);
  std::normal_distribution<float> nd;
  for (auto& v : pre.pixels) v = nd(g);
  // Best of `repeat` runs per phase: the machine may be shared, and the best
  // run is the one least disturbed.
  double vision_ms = 1e300;
  for (int rep = 0; rep < repeat && vision; ++rep) {
    double t0 = now_ms();
    model->encode_image(pre);
    vision_ms = std::min(vision_ms, now_ms() - t0);
  }
  if (!vision) vision_ms = 0;
  // Prefill 300 tokens + decode.
  std::vector<int> ids(static_cast<size_t>(prefill_tokens));
  for (auto& id : ids) id = int(g() % 600);
  GenerateOptions go;
  go.max_new_tokens = decode_tokens + 1;
  go.stop_on_end_token = false;
  GenerateResult r;
  for (int rep = 0; rep < repeat; ++rep) {
    GenerateResult x = model->generate_from_ids(ids, go);
    if (rep == 0) r = x;
    r.timings.prefill_ms = std::min(r.timings.prefill_ms, x.timings.prefill_ms);
    r.timings.tokens_per_second = std::max(r.timings.tokens_per_second, x.timings.tokens_per_second);
  }
  const double rss = peak_rss_mb();

  // FLOPs and bytes the workloads need.
  const auto& v = hp.vision;
  const double N = (hp.chat.image_size / v.patch_size) * (hp.chat.image_size / v.patch_size) + 1, d = v.hidden;
  const double vit_flops = v.n_layers * (2 * N * (4 * d * d + 2 * d * v.intermediate) + 4 * N * N * d);
  const auto& l = hp.llm;
  const double hd = l.head_dim();
  const double layer_params = l.hidden * (l.n_heads * hd) * 2 + l.hidden * (l.n_kv_heads * hd) * 2 +
                              3.0 * l.hidden * l.intermediate;
  const double decode_params = l.n_layers * layer_params + double(l.vocab) * l.hidden;  // + lm head (tied)
  const double prefill_flops = 2.0 * prefill_tokens * l.n_layers * layer_params + 2.0 * l.hidden * l.vocab;
  const double decode_bytes = decode_params * 2;  // BF16
  const double kv_bytes = 2.0 * l.n_layers * (prefill_tokens + decode_tokens + 1) * l.n_kv_heads * hd * 4;

  std::printf("machine: %d threads, sgemm %.1f GFLOP/s, read bandwidth %.1f GB/s\n", threads, gflops, gbps);
  std::printf("model: %s (weights %.2f GB as stored)\n", dir.c_str(), model->weight_bytes() / 1e9);
  std::printf("%-36s %12s\n", "engine", "");
  std::printf("  vision encoder, one 448 tile       %10.1f ms  (%.0f GFLOP/s = %.0f%% of sgemm)\n", vision_ms,
              vit_flops / vision_ms / 1e6, 100 * vit_flops / vision_ms / 1e6 / gflops);
  std::printf("  prefill %d tokens                 %10.1f ms  (%.0f GFLOP/s = %.0f%% of sgemm)\n", prefill_tokens,
              r.timings.prefill_ms, prefill_flops / r.timings.prefill_ms / 1e6,
              100 * prefill_flops / r.timings.prefill_ms / 1e6 / gflops);
  std::printf("  decode                             %10.2f tok/s (bound %.2f tok/s at %.1f GB/s for %.2f GB: %.0f%%)\n",
              r.timings.tokens_per_second, gbps * 1e9 / decode_bytes, gbps, decode_bytes / 1e9,
              100 * r.timings.tokens_per_second / (gbps * 1e9 / decode_bytes));
  std::printf("  peak RSS                           %10.0f MB  (weights %.0f MB + KV %.0f MB: ratio %.2f)\n", rss,
              model->weight_bytes() / 1e6, kv_bytes / 1e6, rss * 1e6 / (model->weight_bytes() + kv_bytes));
  // Decode again with the decoder's matrices quantized to Q8_0 at load.
  double q8_tps = 0, q8_bytes = 0;
  if (q8) {
    model.reset();
    EngineOptions qo = opts;
    qo.weights = "q8";
    auto qm = Model::load(dir, qo);
    q8_bytes = double(qm->converted_weight_bytes());
    for (int rep = 0; rep < repeat; ++rep)
      q8_tps = std::max(q8_tps, qm->generate_from_ids(ids, go).timings.tokens_per_second);
    const double q8_decode_bytes = decode_params * 36.0 / 32.0;
    std::printf("  decode, weights=q8 (Q8_0 decoder)  %10.2f tok/s (bound %.2f tok/s for %.2f GB: %.0f%%)\n", q8_tps,
                gbps * 1e9 / q8_decode_bytes, q8_decode_bytes / 1e9,
                100 * q8_tps / (gbps * 1e9 / q8_decode_bytes));
  }
  nlohmann::json out = {{"threads", threads},
                        {"sgemm_gflops", gflops},
                        {"bandwidth_gbps", gbps},
                        {"engine",
                         {{"vision_ms", vision_ms},
                          {"prefill_ms", r.timings.prefill_ms},
                          {"decode_tokens_per_second", r.timings.tokens_per_second},
                          {"peak_rss_mb", rss},
                          {"decode_q8_tokens_per_second", q8_tps}}}};
  if (pytorch) {
    int rc;
    std::string cmd = py + " run " + dir + " --threads 1," + std::to_string(threads) +
                      " --decode-tokens 16 --prefill-tokens " + std::to_string(prefill_tokens) +
                      " --repeat " + std::to_string(repeat);
    std::fprintf(stderr, "running PyTorch: %s\n", cmd.c_str());
    std::string o = run_capture(cmd, &rc);
    nlohmann::json pj;
    try {
      pj = nlohmann::json::parse(o.substr(o.rfind('{', o.rfind("\"threads\"")) == std::string::npos ? 0 : o.find('{')));
    } catch (...) {
      std::fprintf(stderr, "PyTorch run failed (rc %d):\n%s\n", rc, o.c_str());
      return 1;
    }
    double best_v = 1e300, best_p = 1e300, best_d = 0;
    std::string tv, tp, td;
    for (auto it = pj["threads"].begin(); it != pj["threads"].end(); ++it) {
      if (it.value()["vision_ms"].get<double>() < best_v) best_v = it.value()["vision_ms"], tv = it.key();
      if (it.value()["prefill_ms"].get<double>() < best_p) best_p = it.value()["prefill_ms"], tp = it.key();
      if (it.value()["decode_tokens_per_second"].get<double>() > best_d)
        best_d = it.value()["decode_tokens_per_second"], td = it.key();
    }
    std::printf("PyTorch %s (float32 compute, best of 1/%d threads and %d runs)\n", pj["torch"].get<std::string>().c_str(),
                threads, repeat);
    std::printf("  vision %.1f ms (%s thr), prefill %.1f ms (%s thr), decode %.2f tok/s (%s thr), peak RSS %.0f MB\n",
                best_v, tv.c_str(), best_p, tp.c_str(), best_d, td.c_str(), pj["peak_rss_mb"].get<double>());
    std::printf("ratios (engine vs PyTorch): vision time %.2fx, prefill time %.2fx, decode speed %.2fx\n",
                vision_ms / best_v, r.timings.prefill_ms / best_p, r.timings.tokens_per_second / best_d);
    out["pytorch"] = pj;
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
