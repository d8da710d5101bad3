#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "engine/kernels.h"

using namespace firstread::engine;

namespace {

struct Mat {
  std::vector<float> f32;
  std::vector<uint16_t> bf16, f16;
};

Mat random_mat(int rows, int cols, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  Mat m;
  for (int i = 0; i < rows * cols; ++i) {
    float v = n(g);
    m.bf16.push_back(f32_to_bf16(v));
    m.f16.push_back(f32_to_f16(v));
    m.f32.push_back(v);
  }
  return m;
}

}  // namespace

TEST(engine_kernels, HalfConversions) {
  for (float v : {0.f, 1.f, -2.5f, 65504.f, 1e-5f, 3.14159f, -0.0f, 6.1e-5f, 1e-7f}) {
    EXPECT_NEAR(f16_to_f32(f32_to_f16(v)), v, std::fabs(v) * 1e-3 + 1e-7) << v;
    EXPECT_NEAR(bf16_to_f32(f32_to_bf16(v)), v, std::fabs(v) * 8e-3) << v;
  }
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(1e6f))));
  // Round to nearest even, like torch: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 in bf16.
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3f80);
  for (uint32_t h = 0; h < 0x7c00; h += 7) EXPECT_EQ(f32_to_f16(f16_to_f32(uint16_t(h))), h);
}

class engine_linear : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(engine_linear, MatchesDoubleReferenceForAllDtypes) {
  const int n = std::get<0>(GetParam());
  force_scalar_kernels(std::get<1>(GetParam()));
  const int rows = 77, cols = 133;  // odd sizes exercise the tails
  Mat w = random_mat(rows, cols, 1);
  Mat x = random_mat(n, cols, 2);
  std::vector<float> bias(rows);
  for (int r = 0; r < rows; ++r) bias[r] = 0.01f * r;
  ThreadPool pool(2);
  LinearScratch scratch;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    const void* data = dt == DType::F32 ? static_cast<const void*>(w.f32.data())
                       : dt == DType::BF16 ? static_cast<const void*>(w.bf16.data())
                                           : static_cast<const void*>(w.f16.data());
    WeightView wv{data, dt, rows, cols};
    std::vector<float> y(size_t(n) * rows);
    linear(pool, x.f32.data(), n, wv, bias.data(), y.data(), scratch);
    for (int t = 0; t < n; ++t)
      for (int r = 0; r < rows; ++r) {
        double s = bias[r];
        for (int i = 0; i < cols; ++i) {
          double wi = dt == DType::F32 ? w.f32[r * cols + i]
                      : dt == DType::BF16 ? bf16_to_f32(w.bf16[r * cols + i])
                                          : f16_to_f32(w.f16[r * cols + i]);
          s += wi * x.f32[t * cols + i];
        }
        EXPECT_NEAR(y[size_t(t) * rows + r], s, 1e-3 * (1 + std::fabs(s))) << "dtype " << dtype_name(dt);
      }
  }
  force_scalar_kernels(false);
}

INSTANTIATE_TEST_SUITE_P(engine, engine_linear,
                         ::testing::Combine(::testing::Values(1, 3, 9), ::testing::Values(false, true)));

TEST(engine_kernels, ThreadPoolRunsEveryTaskOnce) {
  ThreadPool pool(3);
  for (int rep = 0; rep < 50; ++rep) {
    std::vector<std::atomic<int>> hits(101);
    pool.parallel_for(101, [&](int t) { hits[t]++; });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1);
  }
}

TEST(engine_kernels, Norms) {
  std::vector<float> x = {1, 2, 3, 4}, w = {1, 1, 1, 1}, b = {0, 0, 0, 0}, y(4);
  rms_norm(x.data(), w.data(), y.data(), 1, 4, 0.f);
  EXPECT_NEAR(y[3], 4 / std::sqrt(7.5), 1e-6);
  layer_norm(x.data(), w.data(), b.data(), y.data(), 1, 4, 0.f);
  EXPECT_NEAR(y[0], -1.5 / std::sqrt(1.25), 1e-6);
  std::vector<float> s = {1000, 1000, 0};
  softmax_inplace(s.data(), 3);
  EXPECT_NEAR(s[0], 0.5, 1e-6);
}

TEST(engine_kernels, VectorMathMatchesLibm) {
  std::vector<float> x;
  for (float v = -12.f; v <= 12.f; v += 0.01f) x.push_back(v);
  std::vector<float> g = x, up(x.size(), 1.5f), sm(x.begin(), x.begin() + 1001);
  gelu_erf(g.data(), int64_t(g.size()));
  std::vector<float> s = x;
  silu_mul(s.data(), up.data(), int64_t(s.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    double ge = 0.5 * x[i] * (1 + std::erf(x[i] / std::sqrt(2.0)));
    EXPECT_NEAR(g[i], ge, 2e-6 * (1 + std::fabs(ge))) << x[i];
    double si = x[i] / (1 + std::exp(-double(x[i]))) * 1.5;
    EXPECT_NEAR(s[i], si, 2e-6 * (1 + std::fabs(si))) << x[i];
  }
  softmax_inplace(sm.data(), int64_t(sm.size()));
  double mx = -1e9, sum = 0;
  for (size_t i = 0; i < sm.size(); ++i) mx = std::max(mx, double(x[i]));
  for (size_t i = 0; i < sm.size(); ++i) sum += std::exp(double(x[i]) - mx);
  for (size_t i = 0; i < sm.size(); ++i) EXPECT_NEAR(sm[i], std::exp(double(x[i]) - mx) / sum, 1e-7 + 1e-6 * sm[i]);
}

TEST(engine_kernels, Q8MatvecMatchesDequantised) {
  const int rows = 37, cols = 96;
  Mat w = random_mat(rows, cols, 3);
  Mat x = random_mat(1, cols, 4);
  std::vector<BlockQ8> q(rows * cols / kQ8Block);
  quantize_rows_q8(w.f32.data(), rows, cols, q.data());
  WeightView wv{q.data(), DType::Q8_0, rows, cols};
  std::vector<float> deq(size_t(rows) * cols);
  convert_rows_f32(wv, 0, rows, deq.data());
  for (int i = 0; i < rows * cols; ++i) EXPECT_NEAR(deq[i], w.f32[i], 0.03) << i;  // |w| < ~4.5, step amax/127
  ThreadPool pool(2);
  LinearScratch scratch;
  for (bool scalar : {false, true}) {
    force_scalar_kernels(scalar);
    std::vector<float> y(rows);
    linear(pool, x.f32.data(), 1, wv, nullptr, y.data(), scratch);
    for (int r = 0; r < rows; ++r) {
      double s = 0;
      for (int i = 0; i < cols; ++i) s += double(deq[size_t(r) * cols + i]) * x.f32[i];
      EXPECT_NEAR(y[r], s, 1e-4 * (1 + std::fabs(s))) << (scalar ? "scalar" : "avx2");
    }
  }
  force_scalar_kernels(false);
}
