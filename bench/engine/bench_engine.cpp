// bench_engine [--model DIR] [--threads N] [--repeat N] [--decode-tokens N]
//              [--formats auto,f16,int8,int4] [--no-pytorch] [--no-vision]
// bench_engine --batched 1,2,4 [--model DIR] [--threads N] [--repeat N] [--decode-tokens N]
//              [--prompt-tokens N] [--formats ...]
// bench_engine --bandwidth [--threads N] [--repeat N]
//
// --batched: continuous batching (issue 13). Per format, one Model with
// max_batch = the largest count; for each count N, N callers at once each
// generate --decode-tokens (default 64) after a --prompt-tokens (300) prompt.
// Prints the aggregate decode tok/s of the steps that carried all N
// sequences (N x steps / their time, from Model::batch_stats), per sequence,
// and the ratio to N = 1 within each round; counts alternate order per round
// and the load average is printed beside every figure.
//
// On random weights of real sizes (InternViT-300M-shaped encoder at 448 px,
// Qwen2-0.5B-shaped decoder, BF16; made by tools/reference/bench_ref.py if
// DIR has no model) prints, for each weight format of the engine and for
// PyTorch on the same weights: vision encoder ms (one tile), prefill ms and
// tokens/s (300 tokens), decode tokens/s and peak RSS; the ratios to
// PyTorch; the engine as a fraction of this machine's sgemm GFLOP/s and read
// bandwidth, measured in the same run. The llama.cpp peer on the same
// decoder runs in bench/llama_cpp/run.sh (alternated with this binary).
//
// Each format runs in its own process (this binary with --child FORMAT), so
// its peak RSS is its own. PyTorch runs as a child process too (bench_ref.py
// serve). The rounds alternate PyTorch and every format `repeat` times,
// keeping each side's best, so all see the same machine load on a shared host.
#include <cblas.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <cstdlib>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/batch_scheduler.h"
#include "engine/common.h"
#include "engine/config.h"
#include "engine/kernels.h"
#include "engine/model.h"

using namespace firstread::engine;
using nlohmann::json;

static double peak_rss_mb() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

static double load_average() {
  double l[1] = {0};
  return getloadavg(l, 1) == 1 ? l[0] : -1;
}

static double bytes_per_weight(const std::string& fmt) {
  if (fmt == "f32") return 4;
  if (fmt == "int8") return 34.0 / 32;
  if (fmt == "int4") return 18.0 / 32;
  return 2;  // auto (BF16 as stored), bf16, f16
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

// Read bandwidth (GB/s) over a 1 GiB buffer, split over the threads like the
// matvec (one contiguous part each), best of 3 passes, as the best of two
// read loops:
//
// - plain: the part summed as 64-bit integers, which the compiler vectorises
//   (AVX2 or baseline, chosen at run time), one sequential stream per thread.
//   The test before session 6 summed floats in 8 scalar chains, one 4-byte
//   load per add, which can cap it below what memory delivers; bench_engine
//   --bandwidth prints both, alternated, with the load.
// - streams (session 11): four sequential streams per thread (the part's
//   quarters), each with a software prefetch 1 KB ahead, as the decode
//   kernels read four weight rows at once with their prefetches. On the AMX
//   VM of sessions 7-11 the plain loop read 14-16 GB/s at 2 threads while the
//   Q4_0 decode rows alone read 18-21 GB/s (bench_gemm --m 1 --products rows,
//   89 MB of weights), so "% of bound" figures over 100 % meant a bound below
//   what memory delivers; four prefetched streams read 20-25 GB/s there. The
//   bound is the best of both, so it is never below what either loop reads.
__attribute__((target_clones("avx2", "default"))) static uint64_t read_words(const uint64_t* p, size_t n) {
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (size_t i = 0; i + 4 <= n; i += 4) {
    s0 += p[i];
    s1 += p[i + 1];
    s2 += p[i + 2];
    s3 += p[i + 3];
  }
  return s0 + s1 + s2 + s3;
}
// Four streams (the quarters of p[0, n)), 64 bytes of each per step with a
// prefetch 1 KB ahead; target_clones picks AVX-512 / AVX2 / baseline loads.
__attribute__((target_clones("avx512f", "avx2", "default"))) static uint64_t read_streams(const uint64_t* p,
                                                                                       size_t n) {
  constexpr size_t kLine = 8, kAhead = 1024 / 8;  // in words
  const size_t q = n / 4 / kLine * kLine;
  const uint64_t *a = p, *b = p + q, *c = p + 2 * q, *d = p + 3 * q;
  uint64_t s[4][kLine] = {};
  for (size_t i = 0; i + kLine <= q; i += kLine) {
    __builtin_prefetch(a + i + kAhead);
    __builtin_prefetch(b + i + kAhead);
    __builtin_prefetch(c + i + kAhead);
    __builtin_prefetch(d + i + kAhead);
    for (size_t j = 0; j < kLine; ++j) {
      s[0][j] += a[i + j];
      s[1][j] += b[i + j];
      s[2][j] += c[i + j];
      s[3][j] += d[i + j];
    }
  }
  uint64_t sum = 0;
  for (const auto& stream : s)
    for (uint64_t v : stream) sum += v;
  return sum;
}
// The test before session 6, kept for --bandwidth's comparison.
static float read_floats_scalar(const float* p, size_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
  for (size_t i = 0; i + 8 <= n; i += 8) {
    s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3];
    s4 += p[i + 4]; s5 += p[i + 5]; s6 += p[i + 6]; s7 += p[i + 7];
  }
  return s0 + s1 + s2 + s3 + s4 + s5 + s6 + s7;
}
enum class ReadLoop { kScalarFloats, kPlain, kStreams };
static double measure_read(int threads, ReadLoop loop) {
  const size_t bytes = size_t(1) << 30, words = bytes / 8;
  std::vector<uint64_t> buf(words, 0x3f8000003f800000ull);  // floats 1.0, touched before timing
  ThreadPool pool(threads);
  double best = 0;
  std::vector<uint64_t> sums(size_t(threads) * 8);  // a cache line apart
  for (int r = 0; r < 3; ++r) {
    double t0 = now_ms();
    pool.parallel_for(threads, [&](int t) {
      const size_t a = words * t / threads, b = words * (t + 1) / threads;
      uint64_t& sum = sums[size_t(t) * 8];
      if (loop == ReadLoop::kScalarFloats)
        sum = uint64_t(read_floats_scalar(reinterpret_cast<const float*>(buf.data() + a), 2 * (b - a)));
      else if (loop == ReadLoop::kPlain) sum = read_words(buf.data() + a, b - a);
      else sum = read_streams(buf.data() + a, b - a);
    });
    best = std::max(best, double(bytes) / ((now_ms() - t0) / 1000) / 1e9);
  }
  if (sums[0] == 42) std::printf(" ");
  return best;
}
// The bandwidth bound: the best of the plain and the four-stream loops.
static double measure_bandwidth(int threads) {
  return std::max(measure_read(threads, ReadLoop::kPlain), measure_read(threads, ReadLoop::kStreams));
}

// --bandwidth: the read loops above, alternated, with the load average; `dd`
// beside it (from the page cache, so a copy: a lower bound) is the script's to run.
static int run_bandwidth(int threads, int repeat) {
  std::printf("read bandwidth, 1 GiB, %d threads, best of 3 passes per figure\n", threads);
  for (int r = 0; r < repeat; ++r) {
    const double l0 = load_average();
    const double old_test = measure_read(threads, ReadLoop::kScalarFloats);
    const double plain = measure_read(threads, ReadLoop::kPlain), streams = measure_read(threads, ReadLoop::kStreams);
    std::printf("  round %d: four prefetched streams %.1f GB/s, vectorised 64-bit sums %.1f GB/s, scalar float sums "
                "(before session 6) %.1f GB/s, load %.1f\n", r + 1, streams, plain, old_test, l0);
  }
  return 0;
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

struct Phases {
  double vision_ms = 1e300, prefill_ms = 1e300, tps = 0, rss_mb = 0, load_ms = 0, reload_ms = 1e300;
  std::string cache_note;
};

// --vision-weights: EngineOptions::vision_weights for every format's process.
static std::string g_vision_weights = "auto";
// --prefill-chunk: EngineOptions::prefill_chunk (0: the engine's default).
static int g_prefill_chunk = 0;

// One format in this process: load, then vision / prefill / decode.
static int run_child(const std::string& dir, const std::string& fmt, int threads, int prefill_tokens,
                     int decode_tokens, bool vision) {
  EngineOptions opts;
  opts.threads = threads;
  opts.weights = fmt;
  opts.vision_weights = g_vision_weights;
  if (g_prefill_chunk > 0) opts.prefill_chunk = g_prefill_chunk;
  double t0 = now_ms();
  auto model = Model::load(dir, opts);
  Phases ph;
  ph.load_ms = now_ms() - t0;
  ph.cache_note = model->weight_cache_note();
  const ModelHParams hp = model->hparams();
  std::mt19937 g(1);
  std::normal_distribution<float> nd;
  std::vector<int> ids(static_cast<size_t>(prefill_tokens));
  for (auto& id : ids) id = int(g() % 600);
  {
    // Warm-up of the timed shape (prefill_tokens, then 2 decode steps): the
    // first pass faults the mapped weights in from the page cache and
    // touches the activation, KV and tile-panel buffers of a prompt this
    // long for the first time; a server pays that once, not per request.
    // llama-bench warms up with the same prompt size before it times one.
    GenerateOptions w;
    w.max_new_tokens = 2;
    w.stop_on_end_token = false;
    model->generate_from_ids(ids, w);
  }
  double vision_cpu_ms = 0;  // CPU time of all threads (see prefill_cpu_ms)
  if (vision) {
    PreprocessedImage pre;
    pre.tile_size = hp.chat.image_size;
    pre.geometry.n_tiles = 1;
    pre.pixels.resize(size_t(3) * pre.tile_size * pre.tile_size);
    for (auto& v : pre.pixels) v = nd(g);
    t0 = now_ms();
    timespec v0{}, v1{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &v0);
    model->encode_image(pre);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &v1);
    ph.vision_ms = now_ms() - t0;
    vision_cpu_ms = (v1.tv_sec - v0.tv_sec) * 1e3 + (v1.tv_nsec - v0.tv_nsec) * 1e-6;
  }
  GenerateOptions go;
  go.max_new_tokens = decode_tokens + 1;
  go.stop_on_end_token = false;
  GenerateResult r = model->generate_from_ids(ids, go);
  // The same prefill again, timed in CPU seconds of the whole process (all
  // threads): on a host shared with other builds wall time mostly measures
  // the queue for the cores; CPU time is what the product itself cost.
  GenerateOptions one;
  one.max_new_tokens = 1;
  one.stop_on_end_token = false;
  timespec c0{}, c1{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
  model->generate_from_ids(ids, one);
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
  const double prefill_cpu_ms = (c1.tv_sec - c0.tv_sec) * 1e3 + (c1.tv_nsec - c0.tv_nsec) * 1e-6;
  json out = {{"format", fmt},
              {"load_ms", ph.load_ms},
              {"vision_ms", vision ? ph.vision_ms : 0.0},
              {"prefill_ms", r.timings.prefill_ms},
              {"prefill_cpu_ms", prefill_cpu_ms},
              {"vision_cpu_ms", vision_cpu_ms},
              {"kernels", kernel_path_description()},
              {"decode_tokens_per_second", r.timings.tokens_per_second},
              {"peak_rss_mb", peak_rss_mb()},
              {"converted_bytes", model->converted_weight_bytes()},
              {"cache", ph.cache_note}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

static json run_format_process(const std::string& self, const std::string& dir, const std::string& fmt, int threads,
                               int decode_tokens, bool vision) {
  std::string cmd = "'" + self + "' --child " + fmt + " --model '" + dir + "' --threads " + std::to_string(threads) +
                    " --decode-tokens " + std::to_string(decode_tokens) + (vision ? "" : " --no-vision") +
                    " --vision-weights " + g_vision_weights + " --prefill-chunk " + std::to_string(g_prefill_chunk);
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw EngineError("could not start " + cmd);
  std::string line, last;
  for (int c; (c = std::fgetc(p)) != EOF;) {
    if (c == '\n') {
      if (!line.empty()) last = line;
      line.clear();
    } else {
      line += char(c);
    }
  }
  const int rc = pclose(p);
  if (rc != 0 || last.empty()) throw EngineError("format " + fmt + ": child failed (" + cmd + ")");
  return json::parse(last);
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// --batched: aggregate decode tok/s with 1, 2, 4 ... concurrent sequences on one Model.
static int run_batched(const std::string& dir, const std::vector<std::string>& formats, const std::vector<int>& counts,
                       int threads, int repeat, int prompt_tokens, int decode_tokens) {
  const int most = *std::max_element(counts.begin(), counts.end());
  std::printf("batched decode: %s, %d threads, prompt %d tokens, %d new tokens per sequence, %d rounds, kernels %s\n",
              dir.c_str(), threads, prompt_tokens, decode_tokens, repeat, kernel_path_description().c_str());
  // The read bandwidth in the same run, so one sequence's figure can be read
  // against its bound (weight bytes per token / bandwidth).
  const double gbps = measure_bandwidth(threads);
  std::printf("read bandwidth %.1f GB/s (1 GiB, %d threads, load %.1f)\n", gbps, threads, load_average());
  const ModelHParams mhp = load_model_config(dir);
  const auto& l = mhp.llm;
  const double hd = l.head_dim();
  const double weights_per_token = l.n_layers * (double(l.hidden) * (l.n_heads * hd) * 2 + double(l.hidden) * (l.n_kv_heads * hd) * 2 +
                                                 3.0 * l.hidden * l.intermediate) + double(l.vocab) * l.hidden;
  for (const std::string& fmt : formats) {
    EngineOptions opts;
    opts.threads = threads;
    opts.weights = fmt;
    opts.vision_weights = g_vision_weights;
    opts.max_batch = most;
    if (g_prefill_chunk > 0) opts.prefill_chunk = g_prefill_chunk;
    auto model = Model::load(dir, opts);
    const int vocab = model->hparams().llm.vocab;
    {
      GenerateOptions w;
      w.max_new_tokens = 2;
      w.stop_on_end_token = false;
      model->generate_from_ids(std::vector<int>(8, 1), w);  // fault the mapped weights in
    }
    std::map<int, std::vector<double>> rate, ratio, load, wall_rate;
    for (int round = 0; round < repeat; ++round) {
      std::vector<int> order = counts;
      if (round % 2) std::reverse(order.begin(), order.end());
      std::map<int, double> this_round;
      for (int n : order) {
        load[n].push_back(load_average());
        model->reset_batch_stats();
        std::vector<std::thread> callers;
        std::atomic<int> ready{0};
        const double t0 = now_ms();
        for (int i = 0; i < n; ++i)
          callers.emplace_back([&, i] {
            std::mt19937 g(unsigned(100 + i));
            std::vector<int> ids(static_cast<size_t>(prompt_tokens));
            for (auto& id : ids) id = int(g() % unsigned(std::min(vocab, 600)));
            GenerateOptions go;
            go.max_new_tokens = decode_tokens;
            go.stop_on_end_token = false;
            ++ready;
            while (ready.load() < n) std::this_thread::yield();
            model->generate_from_ids(ids, go);
          });
        for (auto& c : callers) c.join();
        const double wall = now_ms() - t0;
        const BatchStats st = model->batch_stats();
        const double steps = double(st.steps[size_t(n)]), ms = st.step_ms[size_t(n)];
        const double r = ms > 0 ? n * steps * 1000.0 / ms : 0;
        rate[n].push_back(r);
        wall_rate[n].push_back(n * decode_tokens * 1000.0 / wall);
        this_round[n] = r;
        std::printf("  %s round %d: %d sequences: %.0f steps of %d, %.1f ms/step, %.1f tok/s aggregate "
                    "(wall incl. prefill %.1f tok/s), load %.1f\n",
                    fmt.c_str(), round + 1, n, steps, n, steps > 0 ? ms / steps : 0, r, wall_rate[n].back(),
                    load[n].back());
        std::fflush(stdout);
      }
      for (int n : counts)
        if (this_round[counts[0]] > 0) ratio[n].push_back(this_round[n] / this_round[counts[0]]);
    }
    const double bound = gbps * 1e9 / (weights_per_token * bytes_per_weight(fmt));
    std::printf("\n%s: one sequence's bandwidth bound %.1f tok/s (%.0f MB per token at %.1f GB/s); 1 sequence at %.0f %% of it\n",
                fmt.c_str(), bound, weights_per_token * bytes_per_weight(fmt) / 1e6, gbps,
                rate.count(1) ? 100 * median(rate[1]) / bound : 0.0);
    std::printf("\n| weights | sequences | aggregate decode tok/s (median, min-max) | per sequence | "
                "ratio to %d (per round: median, min-max) | wall tok/s incl. prefill | load average |\n"
                "|---|---|---|---|---|---|---|\n", counts[0]);
    auto lo = [](const std::vector<double>& v) { return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end()); };
    auto hi = [](const std::vector<double>& v) { return v.empty() ? 0.0 : *std::max_element(v.begin(), v.end()); };
    for (int n : counts)
      std::printf("| %s | %d | %.1f (%.1f-%.1f) | %.1f | %.2f (%.2f-%.2f) | %.1f | %.1f-%.1f |\n", fmt.c_str(), n,
                  median(rate[n]), lo(rate[n]), hi(rate[n]), median(rate[n]) / n, median(ratio[n]), lo(ratio[n]),
                  hi(ratio[n]), median(wall_rate[n]), lo(load[n]), hi(load[n]));
    std::printf("\n");
  }
  return 0;
}

int main(int argc, char** argv) {
  std::string dir = "/tmp/firstread_bench_model", child, formats_arg = "auto,f16,int8,int4";
  int threads = int(std::max(1u, std::thread::hardware_concurrency()));
  int decode_tokens = 32, prefill_tokens = 300, repeat = 2;
  bool pytorch = true, vision = true, decode_tokens_set = false, bandwidth_only = false;
  std::vector<int> batched;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--model" && i + 1 < argc) dir = argv[++i];
    else if (a == "--threads" && i + 1 < argc) threads = std::max(1, std::atoi(argv[++i]));
    else if (a == "--decode-tokens" && i + 1 < argc) decode_tokens = std::max(2, std::atoi(argv[++i])), decode_tokens_set = true;
    else if (a == "--prompt-tokens" && i + 1 < argc) prefill_tokens = std::max(1, std::atoi(argv[++i]));
    else if (a == "--batched" && i + 1 < argc) {
      for (const char* p = argv[++i]; *p;) {
        batched.push_back(std::max(1, std::atoi(p)));
        while (*p && *p != ',') ++p;
        if (*p == ',') ++p;
      }
    }
    else if (a == "--repeat" && i + 1 < argc) repeat = std::max(1, std::atoi(argv[++i]));
    else if (a == "--formats" && i + 1 < argc) formats_arg = argv[++i];
    else if (a == "--child" && i + 1 < argc) child = argv[++i];
    else if (a == "--no-pytorch") pytorch = false;
    else if (a == "--no-vision") vision = false;
    else if (a == "--vision-weights" && i + 1 < argc) g_vision_weights = argv[++i];
    else if (a == "--prefill-chunk" && i + 1 < argc) g_prefill_chunk = std::max(0, std::atoi(argv[++i]));
    else if (a == "--bandwidth") bandwidth_only = true;
    else {
      std::fprintf(stderr,
                   "usage: bench_engine [--model DIR] [--threads N] [--repeat N] [--decode-tokens N] "
                   "[--formats auto,f16,int8,int4] [--vision-weights auto|f32|bf16|int8] [--prefill-chunk N] [--no-pytorch] [--no-vision]\n"
                   "       bench_engine --batched 1,2,4 [--model DIR] [--threads N] [--repeat N] [--decode-tokens N] "
                   "[--prompt-tokens N] [--formats ...]\n"
                   "       bench_engine --bandwidth [--threads N] [--repeat N]\n");
      return 2;
    }
  }
  if (bandwidth_only) return run_bandwidth(threads, repeat);
  try {
    if (!child.empty()) return run_child(dir, child, threads, prefill_tokens, decode_tokens, vision);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_engine --child %s: %s\n", child.c_str(), e.what());
    return 1;
  }
  std::vector<std::string> formats;
  for (size_t a = 0; a <= formats_arg.size();) {
    size_t b = formats_arg.find(',', a);
    if (b == std::string::npos) b = formats_arg.size();
    if (b > a) formats.push_back(formats_arg.substr(a, b - a));
    a = b + 1;
  }
  const std::string python = FIRSTREAD_REF_PYTHON, script = std::string(FIRSTREAD_REF_SCRIPT_DIR) + "/bench_ref.py";
  if (!batched.empty()) {
    try {
      if (!file_exists(dir + "/config.json") && std::system((python + " " + script + " make " + dir).c_str()) != 0) {
        std::fprintf(stderr, "bench_ref.py make failed\n");
        return 1;
      }
      return run_batched(dir, formats, batched, threads, repeat, prefill_tokens, decode_tokens_set ? decode_tokens : 64);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_engine --batched: %s\n", e.what());
      return 1;
    }
  }
  char self[4096];
  const ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
  if (sl <= 0) return 1;
  self[sl] = 0;
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
    double gflops = measure_sgemm(threads), gbps = measure_bandwidth(threads);
    const ModelHParams hp = load_model_config(dir);

    const std::vector<int> torch_threads = threads > 1 ? std::vector<int>{1, threads} : std::vector<int>{1};
    json tbest = json::object();
    auto keep_best = [&](const std::string& key, int t, double v, bool lower) {
      std::string k = key + "@" + std::to_string(t);
      if (!tbest.contains(k) || (lower ? v < tbest[k].get<double>() : v > tbest[k].get<double>())) tbest[k] = v;
    };
    double torch_rss = 0;
    std::map<std::string, Phases> best;
    for (int rep = 0; rep < repeat; ++rep) {
      for (int t : torch_threads) {
        if (!pytorch) break;
        if (vision) keep_best("vision_ms", t, torch.ask("vision " + std::to_string(t)).value("ms", 1e300), true);
        json p = torch.ask("prefill " + std::to_string(t) + " " + std::to_string(prefill_tokens));
        keep_best("prefill_ms", t, p.value("ms", 1e300), true);
        json d = torch.ask("decode " + std::to_string(t) + " 16");
        keep_best("decode_tokens_per_second", t, d.value("tokens_per_second", 0.0), false);
        torch_rss = std::max(torch_rss, d.value("peak_rss_mb", 0.0));
      }
      for (const std::string& fmt : formats) {
        json r = run_format_process(self, dir, fmt, threads, decode_tokens, vision);
        Phases& b = best[fmt];
        if (vision) b.vision_ms = std::min(b.vision_ms, r.value("vision_ms", 1e300));
        b.prefill_ms = std::min(b.prefill_ms, r.value("prefill_ms", 1e300));
        b.tps = std::max(b.tps, r.value("decode_tokens_per_second", 0.0));
        b.rss_mb = rep == 0 ? r.value("peak_rss_mb", 0.0) : std::min(b.rss_mb, r.value("peak_rss_mb", 0.0));
        // The first load quantises and writes the weight cache; later ones map it.
        if (rep == 0) b.load_ms = r.value("load_ms", 0.0);
        else b.reload_ms = std::min(b.reload_ms, r.value("load_ms", 0.0));
        b.cache_note = r.value("cache", "");
      }
    }
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

    std::printf("machine: %d threads, sgemm %.1f GFLOP/s, read bandwidth %.1f GB/s (best of before and after)\n",
                threads, gflops, gbps);
    // --vision-weights auto keeps the vision encoder as stored (BF16 for the bench model) under an int8/int4
    // decoder and follows the decoder's format otherwise (parse_vision_weight_format).
    std::printf("model: %s (decoder %.0f M weights read per token; vision weights %s)\n", dir.c_str(),
                decode_params / 1e6,
                g_vision_weights == "auto" ? "auto: as stored under int8/int4, as the decoder otherwise"
                                           : g_vision_weights.c_str());
    json out = {{"threads", threads}, {"repeat", repeat}, {"sgemm_gflops", gflops}, {"bandwidth_gbps", gbps}};
    std::string tv, tp, td;
    double pv = 0, pp = 0, pd = 0;
    if (pytorch) {
      auto best_of = [&](const std::string& key, bool lower, std::string* which) {
        double bv = lower ? 1e300 : 0;
        for (int t : torch_threads) {
          std::string k = key + "@" + std::to_string(t);
          if (!tbest.contains(k)) continue;
          double vv = tbest[k].get<double>();
          if (lower ? vv < bv : vv > bv) {
            bv = vv;
            *which = std::to_string(t);
          }
        }
        return bv;
      };
      pv = vision ? best_of("vision_ms", true, &tv) : 0;
      pp = best_of("prefill_ms", true, &tp);
      pd = best_of("decode_tokens_per_second", false, &td);
      out["pytorch"] = tbest;
      out["pytorch"]["peak_rss_mb"] = torch_rss;
      out["pytorch"]["version"] = torch.version();
    }
    std::printf("\n| weights | vision ms (one 448 tile) | prefill %d tok: ms, tok/s | decode tok/s | %% of bandwidth bound "
                "| peak RSS MB | load ms (first, again) |\n|---|---|---|---|---|---|---|\n",
                prefill_tokens);
    for (const std::string& fmt : formats) {
      const Phases& b = best[fmt];
      const double bytes = decode_params * bytes_per_weight(fmt);
      const double bound = gbps * 1e9 / bytes;
      char vis[64] = "-";
      if (vision)
        std::snprintf(vis, sizeof vis, "%.0f (%.0f%% of sgemm)", b.vision_ms, 100 * vit_flops / b.vision_ms / 1e6 / gflops);
      char reload[32] = "-";
      if (b.reload_ms < 1e299) std::snprintf(reload, sizeof reload, "%.0f", b.reload_ms);
      std::printf("| %s | %s | %.0f, %.0f (%.0f%% of sgemm) | %.2f | %.0f%% of %.1f | %.0f | %.0f, %s |\n",
                  fmt == "auto" ? "bf16 (as stored)" : fmt.c_str(), vis, b.prefill_ms,
                  prefill_tokens * 1000.0 / b.prefill_ms, 100 * prefill_flops / b.prefill_ms / 1e6 / gflops, b.tps,
                  100 * b.tps / bound, bound, b.rss_mb, b.load_ms, reload);
      out["engine"][fmt] = {{"vision_ms", vision ? b.vision_ms : 0.0}, {"prefill_ms", b.prefill_ms},
                            {"decode_tokens_per_second", b.tps}, {"peak_rss_mb", b.rss_mb},
                            {"load_ms", b.load_ms}, {"reload_ms", b.reload_ms < 1e299 ? b.reload_ms : 0.0},
                            {"cache", b.cache_note}};
    }
    if (pytorch) {
      std::printf("| PyTorch %s (f32 compute, best of 1/%d threads) | %.0f (%s thr) | %.0f, %.0f (%s thr) | %.2f (%s thr) | | "
                  "| %.0f | |\n",
                  torch.version().c_str(), threads, pv, tv.c_str(), pp, prefill_tokens * 1000.0 / pp, tp.c_str(), pd,
                  td.c_str(), torch_rss);
      const Phases& b = best[formats.front()];
      std::printf("\nratios, engine (%s) / PyTorch: vision time %.2fx, prefill time %.2fx, decode speed %.2fx\n",
                  formats.front().c_str(), vision ? b.vision_ms / pv : 0.0, b.prefill_ms / pp, b.tps / pd);
      for (const std::string& fmt : formats)
        std::printf("  %s decode %.1fx PyTorch\n", fmt.c_str(), best[fmt].tps / pd);
    }
    std::printf("llama.cpp on the same decoder, alternated with this binary: bench/llama_cpp/run.sh\n");
    std::printf("%s\n", out.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_engine: %s\n", e.what());
    return 1;
  }
  return 0;
}
