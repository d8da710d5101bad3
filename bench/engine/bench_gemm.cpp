// bench_gemm [--m 300] [--k 896] [--n 4864] [--threads 2] [--repeat 20] [--paths avx2,avx512,amx]
//            [--products gemm,rows,sgemm]
// One batched product (the prefill / vision shape) per weight format and
// kernel path, best of --repeat, in GFLOP/s (2*m*k*n / time). The paths
// alternate within each repetition so both see the same load of the host.
// --products: gemm = linear (the GEMM for m >= 4, the decode matvec below),
// rows = linear_rows (the batched-decode product: m sequences' rows against
// weights read once), sgemm = the peer inside this run: the weights converted
// to F32 in 16 MB blocks per thread + single-threaded OpenBLAS sgemm per
// thread on its slice of the output features (what linear() did for every
// batched non-F32 product on the avx2 path before session 6, and still does
// for BF16 / F16 there), alternated too. With both avx512 and amx among the
// paths, each format's amx GEMM is also given against the avx512 one (amx =
// the AMX tile GEMM where gemm_amx*.cpp has one for the format, else the
// avx512 GEMM again). Paths the CPU lacks are left out. Not a CTest test.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <cblas.h>

#include "bench/engine/thread_cpu_time.h"
#include "engine/kernels.h"

using namespace firstread::engine;

// The F32-blocks + sgemm product (see --products sgemm): thread p converts
// its slice of the output features in blocks of up to 16 MB and multiplies
// each block with one single-threaded sgemm.
static void f32_blocks_sgemm(ThreadPool& pool, const float* x, int64_t m, const WeightView& w, float* y,
                             std::vector<float>& wbuf) {
  const int64_t rows = w.rows, cols = w.cols;
  const int parts = int(std::min<int64_t>(pool.size(), std::max<int64_t>(1, rows / 16)));
  int64_t block = std::max<int64_t>(16, (int64_t(16) << 20) / (cols * 4));
  block = std::min(block, (rows + parts - 1) / parts);
  wbuf.resize(size_t(parts) * size_t(block) * size_t(cols));
  pool.parallel_for(parts, [&](int p) {
    const int64_t a = rows * p / parts, b = rows * (p + 1) / parts;
    float* buf = wbuf.data() + size_t(p) * size_t(block) * size_t(cols);
    for (int64_t r0 = a; r0 < b; r0 += block) {
      const int64_t r1 = std::min(b, r0 + block);
      const float* wf = static_cast<const float*>(w.data) + r0 * cols;
      if (w.dtype != DType::F32) {
        convert_rows_f32(w, r0, r1, buf);
        wf = buf;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(m), int(r1 - r0), int(cols), 1.f, x, int(cols), wf,
                  int(cols), 0.f, y + r0, int(rows));
    }
  }, /*spin_after=*/false);
}

static double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char** argv) {
  int64_t m = 300, k = 896, n = 4864;
  int threads = 2, repeat = 20;
  std::string paths_arg = "avx2,avx512,amx", formats_arg = "f32,bf16,f16,q8_0,q4_0", products_arg = "gemm";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? argv[++i] : (char*)"0"; };
    if (a == "--m") m = std::atoll(next());
    else if (a == "--k") k = std::atoll(next());
    else if (a == "--n") n = std::atoll(next());
    else if (a == "--threads") threads = std::atoi(next());
    else if (a == "--repeat") repeat = std::atoi(next());
    else if (a == "--paths") paths_arg = next();
    else if (a == "--formats") formats_arg = next();
    else if (a == "--products") products_arg = next();
    else {
      std::fprintf(stderr, "usage: bench_gemm [--m M] [--k K] [--n N] [--threads T] [--repeat R] [--paths avx2,avx512,amx] [--formats f32,bf16,f16,q8_0,q4_0] [--products gemm,rows,sgemm]\n");
      return 2;
    }
  }
  std::vector<KernelPath> paths;
  for (size_t a = 0; a <= paths_arg.size();) {
    size_t b = paths_arg.find(',', a);
    if (b == std::string::npos) b = paths_arg.size();
    if (b > a) {
      KernelPath p = parse_kernel_path(paths_arg.substr(a, b - a));
      if (kernel_path_supported(p)) paths.push_back(p);
    }
    a = b + 1;
  }
  set_blas_threads(1);
  std::mt19937 g(1);
  std::normal_distribution<float> nd;
  std::vector<float> wf(size_t(n * k)), x(size_t(m * k)), y(size_t(m * n));
  for (auto& v : wf) v = nd(g) * 0.05f;
  for (auto& v : x) v = nd(g);
  std::vector<uint16_t> wb(wf.size()), wh(wf.size());
  for (size_t i = 0; i < wf.size(); ++i) {
    wb[i] = f32_to_bf16(wf[i]);
    wh[i] = f32_to_f16(wf[i]);
  }
  std::vector<uint8_t> q8(matrix_bytes(DType::Q8_0, n, k)), q4(matrix_bytes(DType::Q4_0, n, k));
  if (k % 32 == 0) {
    quantize_rows_q8(wf.data(), n, k, reinterpret_cast<BlockQ8*>(q8.data()));
    quantize_rows_q4(wf.data(), n, k, reinterpret_cast<BlockQ4*>(q4.data()));
  }
  std::vector<std::pair<std::string, WeightView>> fmts = {{"f32", {wf.data(), DType::F32, n, k}},
                                                          {"bf16", {wb.data(), DType::BF16, n, k}},
                                                          {"f16", {wh.data(), DType::F16, n, k}}};
  if (k % 32 == 0) {
    fmts.push_back({"q8_0", {q8.data(), DType::Q8_0, n, k}});
    fmts.push_back({"q4_0", {q4.data(), DType::Q4_0, n, k}});
  }
  fmts.erase(std::remove_if(fmts.begin(), fmts.end(),
                            [&](const auto& f) { return ("," + formats_arg + ",").find("," + f.first + ",") == std::string::npos; }),
             fmts.end());
  ThreadPool pool(threads);
  LinearScratch scratch;
  std::map<std::string, double> best, best_cpu;
  std::vector<std::string> products;
  std::vector<float> wbuf;
  for (const char* pr : {"gemm", "rows", "sgemm"})
    if (("," + products_arg + ",").find(std::string(",") + pr + ",") != std::string::npos) products.push_back(pr);
  for (int r = 0; r < repeat; ++r)
    for (auto& [name, w] : fmts)
      for (KernelPath p : paths)
        for (const std::string& pr : products) {
          force_kernel_path(p);
          const double t0 = now_s(), c0 = thread_cpu_s();
          if (pr == "rows") linear_rows(pool, x.data(), m, w, nullptr, y.data(), scratch);
          else if (pr == "sgemm") f32_blocks_sgemm(pool, x.data(), m, w, y.data(), wbuf);
          else linear(pool, x.data(), m, w, nullptr, y.data(), scratch);
          const double dt = now_s() - t0, dc = thread_cpu_s() - c0;
          const std::string key = name + " " + kernel_path_name(p) + " " + pr;
          if (!best.count(key) || dt < best[key]) best[key] = dt;
          if (!best_cpu.count(key) || dc < best_cpu[key]) best_cpu[key] = dc;
        }
  std::printf("m %lld k %lld n %lld, %d threads, best of %d (paths and products alternate)\n", (long long)m,
              (long long)k, (long long)n, threads, repeat);
  std::printf("| weights | path | product | ms | GFLOP/s | GFLOP/s of CPU time (1 thread only) |\n"
              "|---|---|---|---|---|---|\n");
  for (auto& [name, w] : fmts)
    for (KernelPath p : paths)
      for (const std::string& pr : products) {
        const std::string key = name + " " + kernel_path_name(p) + " " + pr;
        const double dt = best[key], dc = best_cpu[key];
        std::printf("| %s | %s | %s | %.3f | %.1f | %s |\n", name.c_str(), kernel_path_name(p), pr.c_str(), dt * 1e3,
                    2.0 * m * k * n / dt / 1e9,
                    threads == 1 ? std::to_string(int(2.0 * m * k * n / dc / 1e9)).c_str() : "-");
      }
  // The GEMM against its in-run peer (best times of the same alternated repetitions).
  for (auto& [name, w] : fmts)
    for (KernelPath p : paths) {
      const std::string key = name + " " + kernel_path_name(p) + " ";
      if (best.count(key + "gemm") && best.count(key + "sgemm"))
        std::printf("%s %s: linear %.3f ms, F32 blocks + sgemm %.3f ms: %.2fx the speed\n", name.c_str(),
                    kernel_path_name(p), best[key + "gemm"] * 1e3, best[key + "sgemm"] * 1e3,
                    best[key + "sgemm"] / best[key + "gemm"]);
    }
  // The amx path's GEMM against the avx512 one (same alternated repetitions).
  for (auto& [name, w] : fmts) {
    const std::string a = name + " amx gemm", b = name + " avx512 gemm";
    if (best.count(a) && best.count(b))
      std::printf("%s amx vs avx512 GEMM: %.3f vs %.3f ms: %.2fx the speed\n", name.c_str(), best[a] * 1e3,
                  best[b] * 1e3, best[b] / best[a]);
  }
  return 0;
}
