// bench_engine [--model DIR] [--threads N] [--repeat N] [--decode-tokens N]
//              [--no-pytorch] [--no-vision] [--no-q8]
//
// On random weights of real sizes (InternViT-300M-shaped encoder at 448 px,
// Qwen2-0.5B-shaped decoder, BF16; made by tools/reference/bench_ref.py if
// DIR has no model) prints, for the engine and for PyTorch on the same
// weights: vision encoder ms (one tile), prefill ms (300 tokens), decode
// tokens/s and peak RSS; their ratios; and the engine as a fraction of this
// machine's sgemm GFLOP/s and read bandwidth, measured in the same run.
//
// PyTorch runs as a child process (bench_ref.py serve) and each phase
// alternates engine / PyTorch (1 and N threads) `repeat` times, keeping each
// side's best, so both see the same machine load on a shared host.
#include <cblas.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

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
using nlohmann::json;

static double peak_rss_mb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

// sgemm GFLOP/s with OpenBLAS's own threading at `threads` (2048^3).
static double measure_sgemm(int threads) {
  set_blas_threads(threads);
  const int n = 2048;
  std::vector<float> a(size_t(n) * n, 0.5f), b(size_t(n) * n, 0.25f), c(size_t(n) * n);
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    double t0 = now_ms();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.f, a.data(), n, b.data(), n, 0.f, c.data(), n);
    best = std::max(best, 2.0 * n * n * n / ((now_ms() - t0) / 1000) / 1e9);
  }
  set_blas_threads(1);  // the engine runs OpenBLAS single-threaded inside its pool
  return best;
}

// Read bandwidth (GB/s) over a 1 GiB buffer, split over the threads like the matvec.
static double measure_bandwidth(int threads) {
  const size_t n = (size_t(1) << 30) / 4;
  std::vector<float> buf(n, 1.0f);
  ThreadPool pool(threads);
  double best = 0;
  std::vector<double> sums(size_t(threads) * 8);
  for (int r = 0; r < 3; ++r) {
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
    best = std::max(best, n * 4.0 / ((now_ms() - t0) / 1000) / 1e9);
  }
  if (sums[0] < 0) std::printf("%f", sums[0]);
  return best;
}

// The PyTorch side: a child process speaking bench_ref.py's line protocol.
class TorchPeer {
 public:
  bool start(const std::string& python, const std::string& script, const std::string& dir) {
    int to_child[2], from_child[2];
    if (pipe(to_child) || pipe(from_child)) return false;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(to_child[0], 0);
      dup2(from_child[1], 1);
      close(to_child[1]);
      close(from_child[0]);
      execl(python.c_str(), python.c_str(), script.c_str(), "serve", dir.c_str(), (char*)nullptr);
      _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    in_ = fdopen(to_child[1], "w");
    out_ = fdopen(from_child[0], "r");
    json hello = read();
    if (!hello.value("ready", false)) return false;
    version_ = hello.value("torch", std::string("?"));
    return true;
  }
  json ask(const std::string& cmd) {
    std::fprintf(in_, "%s\n", cmd.c_str());
    std::fflush(in_);
    return read();
  }
  ~TorchPeer() {
    if (in_) std::fclose(in_);
    if (out_) std::fclose(out_);
    if (pid_ > 0) waitpid(pid_, nullptr, 0);
  }
  const std::string& version() const { return version_; }

 private:
  json read() {
    std::string line;
    for (int c; (c = std::fgetc(out_)) != EOF && c != '\n';) line += char(c);
    try {
      return json::parse(line);
    } catch (...) {
      return json{{"error", line}};
    }
  }
  pid_t pid_ = -1;
  FILE *in_ = nullptr, *out_ = nullptr;
  std::string version_;
};

int main(int argc, char** argv) {
  std::string dir = "/tmp/firstread_bench_model";
  int threads = int(std::max(1u, std::thread::hardware_concurrency()));
  int decode_tokens = 32, prefill_tokens = 300, repeat = 2;
  bool pytorch = true, vision = true, q8 = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--model" && i + 1 < argc) dir = argv[++i];
    else if (a == "--threads" && i + 1 < argc) threads = std::max(1, std::atoi(argv[++i]));
    else if (a == "--decode-tokens" && i + 1 < argc) decode_tokens = std::max(2, std::atoi(argv[++i]));
    else if (a == "--repeat" && i + 1 < argc) repeat = std::max(1, std::atoi(argv[++i]));
    else if (a == "--no-pytorch") pytorch = false;
    else if (a == "--no-vision") vision = false;
    else if (a == "--no-q8") q8 = false;
    else {
      std::fprintf(stderr,
                   "usage: bench_engine [--model DIR] [--threads N] [--repeat N] [--decode-tokens N] [--no-pytorch] "
                   "[--no-vision] [--no-q8]\n");
      return 2;
    }
  }
  const std::string python = FIRSTREAD_REF_PYTHON, script = std::string(FIRSTREAD_REF_SCRIPT_DIR) + "/bench_ref.py";
  try {
    if (!file_exists(dir + "/config.json")) {
      std::fprintf(stderr, "making random real-size model in %s ...\n", dir.c_str());
      if (std::system((python + " " + script + " make " + dir).c_str()) != 0) {
        std::fprintf(stderr, "bench_ref.py make failed\n");
        return 1;
      }
    }
    TorchPeer torch;
    if (pytorch && !torch.start(python, script, dir)) {
      std::fprintf(stderr, "could not start PyTorch (%s serve)\n", script.c_str());
      return 1;
    }
    // Machine figures before the model is loaded and again after it is freed,
    // so their buffers never add to the engine's peak RSS.
    double gflops = measure_sgemm(threads), gbps = measure_bandwidth(threads);
    EngineOptions opts;
    opts.threads = threads;
    auto model = Model::load(dir, opts);
    const ModelHParams hp = model->hparams();
    const size_t weight_bytes = model->weight_bytes();
    PreprocessedImage pre;
    pre.tile_size = hp.chat.image_size;
    pre.geometry.n_tiles = 1;
    pre.pixels.resize(size_t(3) * pre.tile_size * pre.tile_size);
    std::mt19937 g(1);
    std::normal_distribution<float> nd;
    for (auto& v : pre.pixels) v = nd(g);
    std::vector<int> ids(static_cast<size_t>(prefill_tokens));
    for (auto& id : ids) id = int(g() % 600);
    GenerateOptions go;
    go.max_new_tokens = decode_tokens + 1;
    go.stop_on_end_token = false;

    double vision_ms = 1e300, prefill_ms = 1e300, tps = 0;
    const std::vector<int> torch_threads = threads > 1 ? std::vector<int>{1, threads} : std::vector<int>{1};
    json tbest = json::object();
    auto keep_best = [&](const std::string& key, int t, double v, bool lower) {
      std::string k = key + "@" + std::to_string(t);
      if (!tbest.contains(k) || (lower ? v < tbest[k].get<double>() : v > tbest[k].get<double>())) tbest[k] = v;
    };
    double torch_rss = 0;
    for (int rep = 0; rep < repeat; ++rep) {
      if (vision) {
        double t0 = now_ms();
        model->encode_image(pre);
        vision_ms = std::min(vision_ms, now_ms() - t0);
        for (int t : torch_threads) {
          if (!pytorch) break;
          json r = torch.ask("vision " + std::to_string(t));
          keep_best("vision_ms", t, r.value("ms", 1e300), true);
        }
      }
      GenerateResult r = model->generate_from_ids(ids, go);
      prefill_ms = std::min(prefill_ms, r.timings.prefill_ms);
      tps = std::max(tps, r.timings.tokens_per_second);
      for (int t : torch_threads) {
        if (!pytorch) break;
        json p = torch.ask("prefill " + std::to_string(t) + " " + std::to_string(prefill_tokens));
        keep_best("prefill_ms", t, p.value("ms", 1e300), true);
        json d = torch.ask("decode " + std::to_string(t) + " 16");
        keep_best("decode_tokens_per_second", t, d.value("tokens_per_second", 0.0), false);
        torch_rss = std::max(torch_rss, d.value("peak_rss_mb", 0.0));
      }
    }
    const double rss = peak_rss_mb();
    model.reset();
    gflops = std::max(gflops, measure_sgemm(threads));
    gbps = std::max(gbps, measure_bandwidth(threads));

    // Work and bytes of each phase.
    const auto& v = hp.vision;
    const double N = (hp.chat.image_size / v.patch_size) * (hp.chat.image_size / v.patch_size) + 1, d = v.hidden;
    const double vit_flops = v.n_layers * (2 * N * (4 * d * d + 2 * d * v.intermediate) + 4 * N * N * d);
    const auto& l = hp.llm;
    const double hd = l.head_dim();
    const double layer_params = double(l.hidden) * (l.n_heads * hd) * 2 + double(l.hidden) * (l.n_kv_heads * hd) * 2 +
                                3.0 * l.hidden * l.intermediate;
    const double decode_params = l.n_layers * layer_params + double(l.vocab) * l.hidden;  // + lm head (tied)
    const double prefill_flops = 2.0 * prefill_tokens * l.n_layers * layer_params + 2.0 * l.hidden * l.vocab;
    const double decode_bytes = decode_params * 2;  // BF16
    const double kv_bytes = 2.0 * l.n_layers * (prefill_tokens + decode_tokens + 1) * l.n_kv_heads * hd * 4;

    std::printf("machine: %d threads, sgemm %.1f GFLOP/s, read bandwidth %.1f GB/s (best of 2 runs, before and after)\n", threads,
                gflops, gbps);
    std::printf("model: %s (weights %.2f GB as stored, BF16)\n", dir.c_str(), weight_bytes / 1e9);
    std::printf("engine (best of %d)\n", repeat);
    if (vision)
      std::printf("  vision encoder, one 448 tile      %10.1f ms   (%.0f GFLOP/s = %.0f%% of sgemm)\n", vision_ms,
                  vit_flops / vision_ms / 1e6, 100 * vit_flops / vision_ms / 1e6 / gflops);
    std::printf("  prefill %d tokens                %10.1f ms   (%.0f GFLOP/s = %.0f%% of sgemm)\n", prefill_tokens,
                prefill_ms, prefill_flops / prefill_ms / 1e6, 100 * prefill_flops / prefill_ms / 1e6 / gflops);
    std::printf("  decode                            %10.2f tok/s (bound %.2f tok/s for %.2f GB: %.0f%%)\n", tps,
                gbps * 1e9 / decode_bytes, decode_bytes / 1e9, 100 * tps / (gbps * 1e9 / decode_bytes));
    std::printf("  peak RSS                          %10.0f MB    (weights %.0f MB + KV %.0f MB: ratio %.2f)\n", rss,
                weight_bytes / 1e6, kv_bytes / 1e6, rss * 1e6 / (weight_bytes + kv_bytes));
    json out = {{"threads", threads},
                {"repeat", repeat},
                {"sgemm_gflops", gflops},
                {"bandwidth_gbps", gbps},
                {"engine",
                 {{"vision_ms", vision ? vision_ms : 0.0},
                  {"prefill_ms", prefill_ms},
                  {"decode_tokens_per_second", tps},
                  {"peak_rss_mb", rss}}}};
    if (pytorch) {
      auto best_of = [&](const std::string& key, bool lower, std::string* which) {
        double best = lower ? 1e300 : 0;
        for (int t : torch_threads) {
          std::string k = key + "@" + std::to_string(t);
          if (!tbest.contains(k)) continue;
          double vv = tbest[k].get<double>();
          if (lower ? vv < best : vv > best) {
            best = vv;
            *which = std::to_string(t);
          }
        }
        return best;
      };
      std::string tv, tp, td;
      const double pv = vision ? best_of("vision_ms", true, &tv) : 0, pp = best_of("prefill_ms", true, &tp),
                   pd = best_of("decode_tokens_per_second", false, &td);
      std::printf("PyTorch %s, float32 compute on the same weights (best of 1/%d threads, %d runs)\n",
                  torch.version().c_str(), threads, repeat);
      if (vision) std::printf("  vision encoder, one 448 tile      %10.1f ms   (%s threads)\n", pv, tv.c_str());
      std::printf("  prefill %d tokens                %10.1f ms   (%s threads)\n", prefill_tokens, pp, tp.c_str());
      std::printf("  decode                            %10.2f tok/s (%s threads)\n", pd, td.c_str());
      std::printf("  peak RSS                          %10.0f MB\n", torch_rss);
      std::printf("ratios, engine / PyTorch: vision time %.2fx, prefill time %.2fx, decode speed %.2fx, RSS %.2fx\n",
                  vision ? vision_ms / pv : 0.0, prefill_ms / pp, tps / pd, rss / torch_rss);
      out["pytorch"] = tbest;
      out["pytorch"]["peak_rss_mb"] = torch_rss;
      out["pytorch"]["version"] = torch.version();
    }
    if (q8) {
      // Decode with the decoder's matrices quantized to Q8_0 at load.
      EngineOptions qo = opts;
      qo.weights = "q8";
      auto qm = Model::load(dir, qo);
      double q8_tps = 0;
      for (int rep = 0; rep < repeat; ++rep)
        q8_tps = std::max(q8_tps, qm->generate_from_ids(ids, go).timings.tokens_per_second);
      const double q8_bytes = decode_params * 36.0 / 32.0;
      std::printf("engine, weights=q8 (Q8_0 decoder): decode %.2f tok/s (bound %.2f tok/s for %.2f GB: %.0f%%)\n",
                  q8_tps, gbps * 1e9 / q8_bytes, q8_bytes / 1e9, 100 * q8_tps / (gbps * 1e9 / q8_bytes));
      out["engine"]["decode_q8_tokens_per_second"] = q8_tps;
    }
    std::printf("%s\n", out.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_engine: %s\n", e.what());
    return 1;
  }
  return 0;
}
