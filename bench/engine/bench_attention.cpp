// bench_attention [--n 300] [--past 0] [--hd 64] [--heads 14] [--repeat 20] [--paths avx512,amx]
// The decoder's prefill attention (causal_attention_head) for one layer's
// heads on one thread: n new queries after `past` cached keys. Best of
// --repeat in ms of the thread's CPU time (a loaded or stolen host inflates
// it less than wall time), and GFLOP/s of the causal work (2 products of
// 2 * hd multiply-adds per visible query-key pair). The paths alternate within
// each repetition. avx512 (and avx2, scalar) is the OpenBLAS sgemm + softmax
// loop the engine used before the amx kernel; amx is the AMX-BF16 tile kernel.
// Not a CTest test.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "bench/engine/thread_cpu_time.h"
#include "engine/kernels.h"

using namespace firstread::engine;

int main(int argc, char** argv) {
  int64_t n = 300, past = 0, hd = 64, heads = 14;
  int repeat = 20;
  std::string paths_arg = "avx512,amx";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_attention: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--n") n = std::atoll(next());
    else if (a == "--past") past = std::atoll(next());
    else if (a == "--hd") hd = std::atoll(next());
    else if (a == "--heads") heads = std::atoll(next());
    else if (a == "--repeat") repeat = std::atoi(next());
    else if (a == "--paths") paths_arg = next();
    else {
      std::fprintf(stderr, "usage: bench_attention [--n N] [--past P] [--hd D] [--heads H] [--repeat R] [--paths avx512,amx]\n");
      return 2;
    }
  }
  if (n < 1 || past < 0 || hd < 1 || heads < 1 || repeat < 1) {
    std::fprintf(stderr, "bench_attention: --n, --hd, --heads and --repeat must be >= 1, --past >= 0\n");
    return 2;
  }
  std::vector<KernelPath> paths;
  for (size_t a = 0; a < paths_arg.size();) {
    const size_t b = std::min(paths_arg.find(',', a), paths_arg.size());
    const KernelPath p = parse_kernel_path(paths_arg.substr(a, b - a));
    if (kernel_path_supported(p)) paths.push_back(p);
    else std::fprintf(stderr, "bench_attention: this CPU lacks the %s path; left out\n", kernel_path_name(p));
    a = b + 1;
  }
  if (paths.empty()) return 2;

  const int64_t keys = past + n, ld = heads * hd;
  std::mt19937 rng(7);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> q(size_t(n * ld)), k(size_t(keys * ld)), v(size_t(keys * ld)), out(size_t(n * ld));
  for (auto* buf : {&q, &k, &v})
    for (float& x : *buf) x = dist(rng);
  std::vector<float> scratch(size_t(causal_attention_scratch_floats(n, past, hd)));
  const float scale = 1.f / std::sqrt(float(hd));

  std::vector<double> best(paths.size(), 1e30);
  for (int r = 0; r < repeat; ++r)
    for (size_t p = 0; p < paths.size(); ++p) {
      force_kernel_path(paths[p]);
      const double t0 = thread_cpu_s();
      for (int64_t h = 0; h < heads; ++h)
        causal_attention_head(q.data() + h * hd, ld, k.data() + h * hd, v.data() + h * hd, ld, n, past, hd, scale,
                              out.data() + h * hd, ld, scratch.data());
      best[p] = std::min(best[p], thread_cpu_s() - t0);
    }
  reset_kernel_path();

  // visible pairs: query i sees past + i + 1 keys
  const double pairs = double(n) * double(past) + double(n) * double(n + 1) / 2;
  const double flop = 2.0 * 2.0 * double(hd) * pairs * double(heads);
  std::printf("causal attention, %lld queries after %lld cached keys, head dim %lld, %lld heads, one thread, best of %d (CPU ms)\n",
              (long long)n, (long long)past, (long long)hd, (long long)heads, repeat);
  std::printf("| path | ms | GFLOP/s | vs %s |\n|---|---|---|---|\n", kernel_path_name(paths[0]));
  for (size_t p = 0; p < paths.size(); ++p)
    std::printf("| %s | %.3f | %.1f | %.2fx |\n", kernel_path_name(paths[p]), best[p] * 1e3, flop / best[p] * 1e-9,
                best[0] / best[p]);
  return 0;
}
