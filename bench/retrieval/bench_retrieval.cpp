// bench_retrieval [--cases N] [--dim D] [--queries Q] [--threads T] [--k K]
//
// The case library's query path (retrieval::CaseIndex: HNSW past flat_max)
// against the exact scan it replaces (faiss::IndexFlatIP over the same
// vectors), alternated query by query in one run. Vectors are unit-norm,
// clustered like specialist features (one centre per label plus noise), so
// HNSW's recall is measured on data with neighbours worth finding. Prints
// median / p95 ms per top-k query for both, their ratio, and recall@k of the
// index against the exact answer.
#include <faiss/IndexFlat.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "retrieval/case_index.h"

namespace {

using Clock = std::chrono::steady_clock;

double ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

void normalise(float* v, int d) {
  double n = 0;
  for (int i = 0; i < d; ++i) n += double(v[i]) * v[i];
  const float inv = float(1.0 / std::sqrt(n));
  for (int i = 0; i < d; ++i) v[i] *= inv;
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size())))];
}

}  // namespace

int main(int argc, char** argv) {
  int n = 100000, d = 768, queries = 500, threads = 2, k = 10;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (a == "--cases") n = v;
    else if (a == "--dim") d = v;
    else if (a == "--queries") queries = v;
    else if (a == "--threads") threads = v;
    else if (a == "--k") k = v;
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  omp_set_num_threads(threads);
  std::mt19937 rng(7);
  std::normal_distribution<float> g;
  const int centres = 50;
  std::vector<float> centre(size_t(centres) * d);
  for (float& x : centre) x = g(rng);
  for (int c = 0; c < centres; ++c) normalise(centre.data() + size_t(c) * d, d);
  auto sample = [&](float* out) {
    const int c = int(rng() % centres);
    for (int j = 0; j < d; ++j) out[j] = centre[size_t(c) * d + j] + 0.06f * g(rng);
    normalise(out, d);
  };
  std::vector<float> data(size_t(n) * d), q(size_t(queries) * d);
  for (int i = 0; i < n; ++i) sample(data.data() + size_t(i) * d);
  for (int i = 0; i < queries; ++i) sample(q.data() + size_t(i) * d);

  firstread::retrieval::IndexOptions options;  // the configuration's defaults
  firstread::retrieval::CaseIndex index(options);
  const auto t0 = Clock::now();
  // In pages as CaseLibrary::sync reads them from firstread.cases at start-up.
  for (int i0 = 0; i0 < n; i0 += 5000) {
    const int m = std::min(5000, n - i0);
    std::vector<int64_t> ids(static_cast<size_t>(m));
    for (int i = 0; i < m; ++i) ids[size_t(i)] = i0 + i + 1;
    index.add_many(ids, std::vector<std::vector<std::string>>(size_t(m), {"label"}), data.data() + size_t(i0) * d, d);
  }
  const auto t1 = Clock::now();
  faiss::IndexFlatIP exact(d);
  exact.add(n, data.data());

  std::vector<double> t_index, t_exact;
  long hits = 0;
  std::vector<float> scores(static_cast<size_t>(k));
  std::vector<faiss::Index::idx_t> rows(static_cast<size_t>(k));
  for (int i = 0; i < queries; ++i) {
    const float* v = q.data() + size_t(i) * d;
    auto a = Clock::now();
    const auto got = index.search(v, d, k);
    auto b = Clock::now();
    exact.search(1, v, k, scores.data(), rows.data());
    auto c = Clock::now();
    t_index.push_back(ms(a, b));
    t_exact.push_back(ms(b, c));
    for (const auto& nb : got)
      hits += std::count(rows.begin(), rows.end(), faiss::Index::idx_t(nb.case_id - 1));
  }
  const double mi = percentile(t_index, 0.5), me = percentile(t_exact, 0.5);
  std::printf("cases %d, dim %d, k %d, %d queries, %d threads (OpenMP)\n", n, d, k, queries, threads);
  std::printf("index built in %.1f s (%s, flat_max %d, M %d, efConstruction %d, efSearch %d)\n", ms(t0, t1) / 1000,
              index.is_hnsw() ? "HNSW" : "flat", options.flat_max, options.hnsw_m, options.hnsw_ef_construction,
              options.hnsw_ef_search);
  std::printf("firstread case index: median %.3f ms, p95 %.3f ms per top-%d query\n", mi, percentile(t_index, 0.95), k);
  std::printf("FAISS IndexFlatIP (exact scan): median %.3f ms, p95 %.3f ms\n", me, percentile(t_exact, 0.95));
  std::printf("ratio exact / firstread: %.1fx; recall@%d vs exact: %.4f\n", me / mi, k,
              double(hits) / (double(queries) * k));
  std::printf("goal: top-%d <= 5 ms with %d cases: %s\n", k, n, percentile(t_index, 0.95) <= 5.0 ? "met (p95)" : "NOT met");
  return 0;
}
