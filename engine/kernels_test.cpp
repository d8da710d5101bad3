#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>

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

// Every kernel path this machine has runs the same products; the scalar path
// is the reference the others are held to.
static std::vector<KernelPath> machine_paths() {
  std::vector<KernelPath> p;
  for (KernelPath k : {KernelPath::Scalar, KernelPath::Avx2, KernelPath::Avx512, KernelPath::Amx})
    if (kernel_path_supported(k)) p.push_back(k);
  return p;
}

TEST(engine_kernels, DispatchNamesThePathAndForcesEach) {
  EXPECT_EQ(parse_kernel_path("amx"), KernelPath::Amx);
  EXPECT_EQ(parse_kernel_path("avx512"), KernelPath::Avx512);
  EXPECT_EQ(parse_kernel_path("avx2"), KernelPath::Avx2);
  EXPECT_EQ(parse_kernel_path("scalar"), KernelPath::Scalar);
  EXPECT_THROW(parse_kernel_path("sse9"), std::invalid_argument);
  EXPECT_TRUE(kernel_path_supported(KernelPath::Scalar));
  std::printf("[kernels] this CPU: best path %s; in use: %s\n", kernel_path_name(best_kernel_path()),
              kernel_path_description().c_str());
  for (KernelPath k : machine_paths()) {
    force_kernel_path(k);
    EXPECT_EQ(kernel_path(), k);
    EXPECT_EQ(kernel_path_description().rfind(kernel_path_name(k), 0), 0u) << kernel_path_description();
    EXPECT_EQ(cpu_has_avx2_fma_f16c(), k != KernelPath::Scalar);
  }
  reset_kernel_path();
  for (KernelPath k : {KernelPath::Avx2, KernelPath::Avx512, KernelPath::Amx})
    if (!kernel_path_supported(k)) EXPECT_THROW(force_kernel_path(k), std::invalid_argument);
  reset_kernel_path();
}

// (batch rows, kernel path, weight width)
class engine_linear : public ::testing::TestWithParam<std::tuple<int, KernelPath, int>> {};

TEST_P(engine_linear, MatchesDoubleReferenceForAllDtypes) {
  const int n = std::get<0>(GetParam());
  const KernelPath path = std::get<1>(GetParam());
  const int rows = 77, cols = std::get<2>(GetParam());  // odd sizes exercise the tails
  if (!kernel_path_supported(path)) GTEST_SKIP() << kernel_path_name(path) << " not on this CPU";
  force_kernel_path(path);
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
        double s = bias[r], mag = 0;
        for (int i = 0; i < cols; ++i) {
          double wi = dt == DType::F32 ? w.f32[r * cols + i]
                      : dt == DType::BF16 ? bf16_to_f32(w.bf16[r * cols + i])
                                          : f16_to_f32(w.f16[r * cols + i]);
          s += wi * x.f32[t * cols + i];
          mag += std::fabs(wi * x.f32[t * cols + i]);
        }
        const double tol = 1e-4 * (1 + mag);
        ASSERT_NEAR(y[size_t(t) * rows + r], s, tol)
            << "dtype " << dtype_name(dt) << " path " << kernel_path_name(path) << " row " << t << " col " << r;
      }
  }
  reset_kernel_path();
}

INSTANTIATE_TEST_SUITE_P(engine, engine_linear,
                         ::testing::Combine(::testing::Values(1, 3, 9, 40, 70),
                                            ::testing::Values(KernelPath::Scalar, KernelPath::Avx2, KernelPath::Avx512, KernelPath::Amx),
                                            ::testing::Values(133, 160, 1030)),
                         [](const auto& info) {
                           return std::string("n") + std::to_string(std::get<0>(info.param)) + "_" +
                                  kernel_path_name(std::get<1>(info.param)) + "_k" +
                                  std::to_string(std::get<2>(info.param));
                         });

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
 for (KernelPath path : machine_paths()) {
  force_kernel_path(path);
  SCOPED_TRACE(kernel_path_name(path));
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
  reset_kernel_path();
}

// Quantised formats: what a user relies on is that a product with the
// quantised matrix is close to the product with the original one, that the
// AVX2 and scalar kernels agree, and that every entry point (decode matvec,
// fused multi-product, batched sgemm) gives the same answer.
static std::vector<uint8_t> quantise(DType t, const std::vector<float>& w, int rows, int cols) {
  std::vector<uint8_t> q(matrix_bytes(t, rows, cols));
  if (t == DType::Q8_0) quantize_rows_q8(w.data(), rows, cols, reinterpret_cast<BlockQ8*>(q.data()));
  else quantize_rows_q4(w.data(), rows, cols, reinterpret_cast<BlockQ4*>(q.data()));
  return q;
}

TEST(engine_kernels, BlockQuantisationRoundTrips) {
  const int rows = 9, cols = 128;
  Mat w = random_mat(rows, cols, 11);
  w.f32[5] = 0.f;  // an all-zero block must stay zero (scale 0, no NaN)
  for (int i = 32; i < 64; ++i) w.f32[i] = 0.f;
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    auto q = quantise(t, w.f32, rows, cols);
    EXPECT_EQ(q.size(), size_t(rows) * cols / 32 * (t == DType::Q8_0 ? 34 : 18));
    std::vector<float> deq(size_t(rows) * cols);
    for (bool scalar : {false, true}) {
      force_scalar_kernels(scalar);
      convert_rows_f32(WeightView{q.data(), t, rows, cols}, 0, rows, deq.data());
      for (int b = 0; b < rows * cols / 32; ++b) {
        float amax = 0.f;
        for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(w.f32[b * 32 + i]));
        // Half a quantisation step (amax/127 or amax/8), plus the FP16 scale's
        // rounding; Q4_0's levels are -8..7 around the largest magnitude, so
        // the opposite extreme (down to -amax) can be a whole step off.
        const float step = t == DType::Q8_0 ? amax / 127.f : 2.f * amax / 8.f;
        for (int i = 0; i < 32; ++i) {
          const float err = std::fabs(deq[b * 32 + i] - w.f32[b * 32 + i]);
          ASSERT_LE(err, 0.5f * step + amax * 2e-3f) << dtype_name(t) << " block " << b << " i " << i;
          ASSERT_FALSE(std::isnan(deq[b * 32 + i]));
        }
      }
      for (int i = 32; i < 64; ++i) EXPECT_EQ(deq[i], 0.f);
    }
    force_scalar_kernels(false);
  }
  // Q4_0 uses all 16 levels: the block's largest magnitude maps to -8 exactly.
  std::vector<float> ramp(32);
  for (int i = 0; i < 32; ++i) ramp[i] = float(i) - 8.f;  // -8 .. 23: largest magnitude +23 -> level -8
  auto q = quantise(DType::Q4_0, ramp, 1, 32);
  std::vector<float> deq(32);
  convert_rows_f32(WeightView{q.data(), DType::Q4_0, 1, 32}, 0, 1, deq.data());
  EXPECT_NEAR(deq[31], 23.f, 1e-2);
}

// The engine keeps llama.cpp's blocks (the GGUF peer and every kernel read the
// same weights) with 16 blocks of a row interleaved: block b of a row holds
// what llama.cpp's quantisation of those 32 weights alone gives, and its bytes
// sit where engine/qlayout.h says (the avx512 decode kernel loads them 64 at a
// time from there), also in a short last chunk.
TEST(engine_kernels, QuantisedRowsHoldLlamaCppBlocksInTheInterleavedLayout) {
  const int rows = 3, cols = 21 * 32;  // 21 blocks: a chunk of 16 and a short one of 5
  Mat w = random_mat(rows, cols, 21);
  auto q8 = quantise(DType::Q8_0, w.f32, rows, cols), q4 = quantise(DType::Q4_0, w.f32, rows, cols);
  const WeightView v8{q8.data(), DType::Q8_0, rows, cols}, v4{q4.data(), DType::Q4_0, rows, cols};
  for (int r = 0; r < rows; ++r)
    for (int b = 0; b < cols / 32; ++b) {
      const std::vector<float> one(w.f32.begin() + r * cols + b * 32, w.f32.begin() + r * cols + b * 32 + 32);
      // llama.cpp's reference quantisation of the block (quantize_row_q8_0_ref / q4_0_ref).
      BlockQ8 want8;
      BlockQ4 want4;
      float amax = 0.f, max = 0.f;
      for (float x : one)
        if (std::fabs(x) > amax) {
          amax = std::fabs(x);
          max = x;
        }
      const float d8 = amax / 127.f, d4 = max / -8.f;
      want8.d = f32_to_f16(d8);
      want4.d = f32_to_f16(d4);
      for (int i = 0; i < 32; ++i) want8.q[i] = int8_t(std::lround(one[size_t(i)] * (1.f / d8)));
      for (int j = 0; j < 16; ++j)
        want4.qs[j] = uint8_t(std::min(15, int(one[size_t(j)] * (1.f / d4) + 8.5f)) |
                              std::min(15, int(one[size_t(j) + 16] * (1.f / d4) + 8.5f)) << 4);
      const BlockQ8 got8 = q8_block(v8, r, b);
      const BlockQ4 got4 = q4_block(v4, r, b);
      ASSERT_EQ(got8.d, want8.d) << "row " << r << " block " << b;
      ASSERT_EQ(std::memcmp(got8.q, want8.q, 32), 0) << "row " << r << " block " << b;
      ASSERT_EQ(got4.d, want4.d) << "row " << r << " block " << b;
      ASSERT_EQ(std::memcmp(got4.qs, want4.qs, 16), 0) << "row " << r << " block " << b;
      // Where the bytes are: chunk c = b / 16 of t blocks, lane l = b % 16.
      const int c = b / 16, l = b % 16, t = c == 0 ? 16 : 5;
      const uint8_t* chunk8 = q8.data() + size_t(r) * (cols / 32) * 34 + size_t(c) * 16 * 34;
      const uint8_t* chunk4 = q4.data() + size_t(r) * (cols / 32) * 18 + size_t(c) * 16 * 18;
      for (int g = 0; g < 8; ++g)
        for (int i = 0; i < 4; ++i)
          ASSERT_EQ(int8_t(chunk8[g * 4 * t + 4 * l + i] ^ 0x80), want8.q[4 * g + i]) << b << " group " << g;
      for (int h = 0; h < 4; ++h) ASSERT_EQ(std::memcmp(chunk4 + h * 4 * t + 4 * l, want4.qs + 4 * h, 4), 0) << b;
      ASSERT_EQ(std::memcmp(chunk8 + 32 * t + 2 * l, &want8.d, 2), 0) << b;
      ASSERT_EQ(std::memcmp(chunk4 + 16 * t + 2 * l, &want4.d, 2), 0) << b;
    }
}

TEST(engine_kernels, ActivationQuantisationAvx2EqualsScalar) {
  if (!kernel_path_supported(KernelPath::Avx2)) GTEST_SKIP() << "no AVX2 on this CPU: only the scalar path exists";
  force_kernel_path(KernelPath::Avx2);
  Mat x = random_mat(1, 256, 5);
  x.f32[7] = 0.5f * 127.f / 127.f;  // exercise ties after scaling in some blocks
  std::vector<BlockQ8Act> a(8), b(8);
  quantize_act_q8(x.f32.data(), 256, a.data());
  force_scalar_kernels(true);
  quantize_act_q8(x.f32.data(), 256, b.data());
  force_scalar_kernels(false);
  reset_kernel_path();
  for (int k = 0; k < 8; ++k) {
    EXPECT_EQ(a[k].d, b[k].d) << k;
    EXPECT_EQ(a[k].s, b[k].s) << k;
    for (int i = 0; i < 32; ++i) ASSERT_EQ(a[k].q[i], b[k].q[i]) << "block " << k << " elem " << i;
  }
}

// The amx path's batched Q8_0 / Q4_0 product (gemm_amx_bf16.cpp) multiplies
// bf16(q * d) by bf16(x) on AMX-BF16 tiles: against the double product of the
// dequantised weights and the F32 input, each term is off by at most two BF16
// roundings (2^-9 each) of |w x|, so the bound is 2^-8 sum |w x| (+ F32
// accumulation). The int8 paths' input rounding (amax/254 per element of a
// block) is of the same order; neither equals the other.
static void expect_amx_quant_row_near_double(float got, const float* deq_row, const float* x_row, int cols,
                                             const std::string& what) {
  double s = 0, mag = 0;
  for (int i = 0; i < cols; ++i) {
    s += double(deq_row[i]) * x_row[i];
    mag += std::fabs(double(deq_row[i]) * x_row[i]);
  }
  ASSERT_NEAR(got, s, std::ldexp(mag, -8) + 1e-6 * (1 + mag)) << what;
}

// Quantised products on every path and entry point (decode matvec, fused
// multi-product, batched). Every path quantises the input the same way for
// the matvec; the avx512 and avx2 batched GEMMs do too (int8 per 32-block),
// so their rows equal the scalar matvec's up to float summation order, while
// the scalar path's batched product multiplies the dequantised blocks by the
// unquantised input (sgemm) and the amx path's runs on BF16 tiles (above).
TEST(engine_kernels, QuantisedProductsMatchReference) {
  for (int cols : {160, 672, 1024}) {
    const int rows = 37;  // odd rows: the two-row kernel's tail, and the GEMM's 2-row tail
    const int nbatch = 140;  // nine 16-row tiles, the last partial (70: five; amx: 140 on BF16 tiles)
    Mat w = random_mat(rows, cols, 3);
    Mat xs = random_mat(nbatch, cols, 4);
    ThreadPool pool(2);
    LinearScratch scratch;
    for (DType t : {DType::Q8_0, DType::Q4_0}) {
      auto q = quantise(t, w.f32, rows, cols);
      WeightView wv{q.data(), t, rows, cols};
      std::vector<float> deq(size_t(rows) * cols);
      convert_rows_f32(wv, 0, rows, deq.data());
      // The scalar matvec of every row: the reference for the integer paths.
      std::vector<float> y_scalar(size_t(nbatch) * rows);
      force_kernel_path(KernelPath::Scalar);
      for (int n = 0; n < nbatch; ++n)
        linear(pool, xs.f32.data() + size_t(n) * cols, 1, wv, nullptr, y_scalar.data() + size_t(n) * rows, scratch);
      for (int n = 0; n < nbatch; ++n)
        for (int r = 0; r < rows; ++r) {
          // Against the dequantised weights times the unquantised input: the
          // input's int8 rounding (amax/254 per element) bounds the difference.
          double s = 0, bound = 0;
          for (int i = 0; i < cols; ++i) {
            s += double(deq[size_t(r) * cols + i]) * xs.f32[size_t(n) * cols + i];
            bound += std::fabs(deq[size_t(r) * cols + i]) * 4.5 / 254.0;
          }
          ASSERT_NEAR(y_scalar[size_t(n) * rows + r], s, bound) << dtype_name(t) << " scalar row " << r;
        }
      for (KernelPath path : machine_paths()) {
        force_kernel_path(path);
        const std::string what = std::string(dtype_name(t)) + " " + kernel_path_name(path) + " k" + std::to_string(cols);
        std::vector<float> y1(rows), y2(rows), y3(rows);
        linear(pool, xs.f32.data(), 1, wv, nullptr, y1.data(), scratch);
        for (int r = 0; r < rows; ++r) ASSERT_NEAR(y1[r], y_scalar[r], 1e-4 * (1 + std::fabs(y_scalar[r]))) << what;
        // The fused decode product (q/k/v style) equals the single one.
        linear_multi(pool, xs.f32.data(), 1, {{wv, nullptr, y2.data()}, {wv, nullptr, y3.data()}}, scratch);
        for (int r = 0; r < rows; ++r) {
          ASSERT_FLOAT_EQ(y2[r], y1[r]) << what;
          ASSERT_FLOAT_EQ(y3[r], y1[r]) << what;
        }
        for (int nb : {5, 70, nbatch}) {
          std::vector<float> yb(size_t(nb) * rows);
          linear(pool, xs.f32.data(), nb, wv, nullptr, yb.data(), scratch);
          // The fused batched product (one packed input for q/k/v) equals the single one, biases added.
          std::vector<float> bias(rows, 0.5f), m1(size_t(nb) * rows), m2(size_t(nb) * rows);
          linear_multi(pool, xs.f32.data(), nb, {{wv, nullptr, m1.data()}, {wv, bias.data(), m2.data()}}, scratch);
          for (size_t i = 0; i < yb.size(); ++i) {
            ASSERT_FLOAT_EQ(m1[i], yb[i]) << what << " fused batch " << nb;
            ASSERT_FLOAT_EQ(m2[i], yb[i] + 0.5f) << what << " fused batch with bias " << nb;
          }
          for (int n = 0; n < nb; ++n)
            for (int r = 0; r < rows; ++r) {
              const float got = yb[size_t(n) * rows + r];
              if (path == KernelPath::Amx && amx_quant_on_bf16_tiles(nb)) {
                expect_amx_quant_row_near_double(got, deq.data() + size_t(r) * cols, xs.f32.data() + size_t(n) * cols,
                                                 cols, what + " batch " + std::to_string(nb) + " row " + std::to_string(n));
              } else if (path != KernelPath::Scalar) {
                const float want = y_scalar[size_t(n) * rows + r];
                ASSERT_NEAR(got, want, 1e-4 * (1 + std::fabs(want))) << what << " batch " << nb << " row " << n;
              } else {
                double s = 0;
                for (int i = 0; i < cols; ++i) s += double(deq[size_t(r) * cols + i]) * xs.f32[size_t(n) * cols + i];
                ASSERT_NEAR(got, s, 1e-4 * (1 + std::fabs(s))) << what << " batch " << nb << " row " << n;
              }
            }
        }
      }
      reset_kernel_path();
    }
  }
}

// The int8 GEMMs (avx2, avx512, amx below 128 rows) on a product that the avx2 one cuts into
// several chunks of activation rows and two k-blocks (4 864 columns = 152
// blocks = 9 full chunks + a short one of 8, i.e. 19 half chunks), with an
// odd number of weight rows (the 2-row panel's tail) and activation rows that
// are no multiple of its 3- or 4-row tile: every row equals the scalar
// matvec of that activation row (same int8 input, same integer block sums)
// up to float summation order. Also a width whose last chunk holds one block.
// The AMX tile GEMM's edges: 16 x 16 C tiles with tails in m and n (13, 45,
// 33 features; 250, 13, 4 rows), one block (no second C tile), an odd number
// of blocks (the alternating C tiles end on the first), and 19 activation
// tiles of 161 blocks (92 KB each) split into two 1.5 MB L2 chunks (10 + 9
// tiles), so each weight panel is unpacked once per chunk. From 128 rows the
// amx path runs on BF16 tiles (250 and 300 rows here): there every element
// is checked against the double product (expect_amx_quant_row_near_double).
TEST(engine_kernels, LargeQuantisedProductsMatchScalarMatvecAcrossBlocks) {
  ThreadPool pool(2);
  LinearScratch scratch;
  for (const auto& [m, rows, cols] : {std::tuple<int, int, int>{250, 45, 4864}, {13, 9, 17 * 32}, {4, 16, 32},
                                      {32, 33, 64}, {300, 20, 161 * 32}}) {
    Mat w = random_mat(rows, cols, 8);
    Mat x = random_mat(m, cols, 9);
    for (DType t : {DType::Q8_0, DType::Q4_0}) {
      auto q = quantise(t, w.f32, rows, cols);
      const WeightView wv{q.data(), t, rows, cols};
      std::vector<float> want(size_t(m) * rows), got(size_t(m) * rows, -1.f), deq(size_t(rows) * cols);
      convert_rows_f32(wv, 0, rows, deq.data());
      force_kernel_path(KernelPath::Scalar);
      for (int i = 0; i < m; ++i)
        linear(pool, x.f32.data() + size_t(i) * cols, 1, wv, nullptr, want.data() + size_t(i) * rows, scratch);
      for (KernelPath path : machine_paths()) {
        if (path == KernelPath::Scalar) continue;
        force_kernel_path(path);
        if (path == KernelPath::Amx) {  // the product runs on tiles, not the avx512 GEMM
          const std::string d = kernel_path_description();
          ASSERT_NE(d.substr(0, d.find("; otherwise")).find(dtype_name(t)), std::string::npos) << d;
        }
        std::fill(got.begin(), got.end(), -1.f);
        linear(pool, x.f32.data(), m, wv, nullptr, got.data(), scratch);
        for (size_t i = 0; i < got.size(); ++i) {
          const std::string what = std::string(dtype_name(t)) + " " + kernel_path_name(path) + " m " +
                                   std::to_string(m) + " k " + std::to_string(cols) + " row " +
                                   std::to_string(i / rows) + " col " + std::to_string(i % rows);
          if (path == KernelPath::Amx && amx_quant_on_bf16_tiles(m))
            expect_amx_quant_row_near_double(got[i], deq.data() + i % rows * cols, x.f32.data() + i / rows * cols,
                                             cols, what);
          else
            ASSERT_NEAR(got[i], want[i], 1e-4 * (1 + std::fabs(want[i]))) << what;
        }
      }
    }
  }
  reset_kernel_path();
}

// A batched BF16 / F16 product big enough that the avx512 GEMM splits it into
// several chunks of activation tiles and k-blocks (with partial tails of
// each) matches the scalar path's product element by element.
TEST(engine_kernels, LargeHalfProductsMatchScalarAcrossChunks) {
  if (!kernel_path_supported(KernelPath::Avx512)) GTEST_SKIP() << "avx512 not on this CPU";
  const int m = 1300, rows = 1003, cols = 600;
  Mat w = random_mat(rows, cols, 5);
  Mat x = random_mat(m, cols, 6);
  std::vector<float> wabs(w.f32.size()), xabs(x.f32.size());
  for (size_t i = 0; i < wabs.size(); ++i) wabs[i] = std::fabs(bf16_to_f32(w.bf16[i]));
  for (size_t i = 0; i < xabs.size(); ++i) xabs[i] = std::fabs(x.f32[i]);
  ThreadPool pool(2);
  LinearScratch scratch;
  std::vector<float> mag(size_t(m) * rows);
  force_kernel_path(KernelPath::Scalar);
  linear(pool, xabs.data(), m, WeightView{wabs.data(), DType::F32, rows, cols}, nullptr, mag.data(), scratch);
  for (DType dt : {DType::BF16, DType::F16}) {
    const void* data = dt == DType::BF16 ? static_cast<const void*>(w.bf16.data()) : w.f16.data();
    const WeightView wv{data, dt, rows, cols};
    std::vector<float> ref(size_t(m) * rows), y(size_t(m) * rows);
    force_kernel_path(KernelPath::Scalar);
    linear(pool, x.f32.data(), m, wv, nullptr, ref.data(), scratch);
    force_kernel_path(KernelPath::Avx512);
    linear(pool, x.f32.data(), m, wv, nullptr, y.data(), scratch);
    for (size_t i = 0; i < y.size(); ++i)
      ASSERT_NEAR(y[i], ref[i], 1e-5 * (1 + mag[i])) << dtype_name(dt) << " row " << i / rows << " col " << i % rows;
  }
  reset_kernel_path();
}

// One head of non-causal attention on every path against a double-precision
// softmax(q k^T * scale) v, with token counts and head widths that leave tails.
TEST(engine_kernels, AttentionHeadMatchesDoubleReferenceOnEveryPath) {
  for (const auto& [n, hd] : {std::pair<int, int>{37, 64}, {200, 40}, {1025, 64}}) {
    const int ld = 3 * hd + 5;  // q, k, v interleaved in rows, as the vision block stores them
    Mat qkv = random_mat(n, ld, 7 + n);
    const float* q = qkv.f32.data();
    const float* k = q + hd;
    const float* v = q + 2 * hd;
    const float scale = 1.0f / std::sqrt(float(hd));
    std::vector<double> ref(size_t(n) * hd);
    for (int i = 0; i < n; ++i) {
      std::vector<double> p(n);
      double mx = -1e300, sum = 0;
      for (int j = 0; j < n; ++j) {
        double s = 0;
        for (int c = 0; c < hd; ++c) s += double(q[i * ld + c]) * k[j * ld + c];
        p[j] = s * scale;
        mx = std::max(mx, p[j]);
      }
      for (int j = 0; j < n; ++j) sum += (p[j] = std::exp(p[j] - mx));
      for (int c = 0; c < hd; ++c) {
        double o = 0;
        for (int j = 0; j < n; ++j) o += p[j] / sum * v[j * ld + c];
        ref[size_t(i) * hd + c] = o;
      }
    }
    std::vector<float> scratch(size_t(attention_scratch_floats(n, hd)));
    for (KernelPath path : machine_paths()) {
      force_kernel_path(path);
      std::vector<float> out(size_t(n) * (hd + 3), -7.f);
      attention_head(q, k, v, ld, n, hd, scale, out.data(), hd + 3, scratch.data());
      for (int i = 0; i < n; ++i) {
        for (int c = 0; c < hd; ++c)
          ASSERT_NEAR(out[size_t(i) * (hd + 3) + c], ref[size_t(i) * hd + c], 2e-5)
              << kernel_path_name(path) << " n " << n << " hd " << hd << " query " << i << " col " << c;
        for (int c = hd; c < hd + 3; ++c) ASSERT_EQ(out[size_t(i) * (hd + 3) + c], -7.f) << "wrote past the head";
      }
    }
  }
  reset_kernel_path();
}

// Decode attention of a GQA group (llm.cpp's attention_decode: the query
// heads sharing one KV head, one query each): on every path each head gets
// the same bits as the dot_f32 / softmax_inplace / axpy_f32 loop of that head
// alone (so greedy ids cannot move), and lies within 2e-5 of a double
// reference, for key counts around the 8-key blocks, group sizes 1 (MHA), 2,
// 5 and 7 (Qwen2-0.5B) that cut the value pass into four-head parts
// differently, and head widths with and without the avx512 kernel
// (hd % 16; hd 128 runs two heads per value pass).
TEST(engine_kernels, DecodeAttentionEqualsThePerKeyLoopOnEveryPath) {
  for (const auto& [n, hd, heads] : {std::tuple<int, int, int>{1, 64, 1}, {7, 64, 7}, {8, 64, 2}, {9, 128, 5},
                                     {301, 64, 7}, {33, 40, 3}, {70, 128, 7}, {17, 256, 2}}) {
    const int ld = 2 * hd + 3;  // a KV cache row: this head's slice of wider rows
    Mat kv = random_mat(n, ld, 11 + n + hd);
    Mat qm = random_mat(heads, hd, 5 + n);
    const float* k = kv.f32.data() + 1;
    const float* v = kv.f32.data() + 1 + hd;
    const float scale = 1.0f / std::sqrt(float(hd));
    const size_t nn = static_cast<size_t>(n), nh = static_cast<size_t>(hd), ng = static_cast<size_t>(heads);
    for (KernelPath path : machine_paths()) {
      force_kernel_path(path);
      std::vector<float> sc(ng * nn), out(ng * nh + 2, -7.f);
      attention_decode_group(qm.f32.data(), heads, k, v, ld, n, hd, scale, sc.data(), out.data());
      for (int h = 0; h < heads; ++h) {
        const float* q = qm.f32.data() + size_t(h) * nh;
        std::vector<double> p(nn);
        double mx = -1e300, sum = 0;
        for (int t = 0; t < n; ++t) {
          double s = 0;
          for (int c = 0; c < hd; ++c) s += double(q[c]) * k[t * ld + c];
          mx = std::max(mx, p[size_t(t)] = s * scale);
        }
        for (int t = 0; t < n; ++t) sum += (p[size_t(t)] = std::exp(p[size_t(t)] - mx));
        std::vector<float> loop_sc(nn), loop_out(nh, 0.f);
        for (int t = 0; t < n; ++t) loop_sc[size_t(t)] = dot_f32(q, k + t * ld, hd) * scale;
        softmax_inplace(loop_sc.data(), n);
        for (int t = 0; t < n; ++t) axpy_f32(loop_out.data(), loop_sc[size_t(t)], v + t * ld, hd);
        const std::string where = std::string(kernel_path_name(path)) + " n " + std::to_string(n) + " hd " +
                                  std::to_string(hd) + " head " + std::to_string(h) + " of " + std::to_string(heads);
        for (int t = 0; t < n; ++t) ASSERT_EQ(sc[size_t(h) * nn + size_t(t)], loop_sc[size_t(t)]) << where << " key " << t;
        for (int c = 0; c < hd; ++c) {
          double ref = 0;
          for (int t = 0; t < n; ++t) ref += p[size_t(t)] / sum * v[t * ld + c];
          ASSERT_EQ(out[size_t(h) * nh + size_t(c)], loop_out[size_t(c)]) << where << " col " << c;
          ASSERT_NEAR(out[size_t(h) * nh + size_t(c)], ref, 2e-5) << where << " col " << c;
        }
      }
      for (size_t c = ng * nh; c < ng * nh + 2; ++c) ASSERT_EQ(out[c], -7.f) << "wrote past the group";
    }
  }
  reset_kernel_path();
}

// The decoder's prefill attention against a double reference: n new queries
// after n_past cached keys, causal, queries and keys with their own row
// strides (grouped-query heads read a narrower cache), tails in every
// dimension, and blocks of query tiles that see fewer keys than the last.
TEST(engine_kernels, CausalAttentionHeadMatchesDoubleReferenceOnEveryPath) {
  for (const auto& [n, n_past, hd] : {std::tuple<int, int, int>{1, 0, 64}, {1, 37, 64}, {37, 0, 64}, {70, 5, 40},
                                      {130, 33, 64}, {300, 0, 64}, {64, 200, 64}}) {
    const int keys = n_past + n, ldq = 3 * hd + 5, ldkv = 2 * hd + 3;
    Mat qm = random_mat(n, ldq, 11 + n + n_past), kv = random_mat(keys, ldkv, 13 + keys);
    const float* q = qm.f32.data();
    const float* k = kv.f32.data();
    const float* v = k + hd;
    const float scale = 1.0f / std::sqrt(float(hd));
    std::vector<double> ref(size_t(n) * hd);
    for (int i = 0; i < n; ++i) {
      const int valid = n_past + i + 1;
      std::vector<double> p(static_cast<size_t>(valid));
      double mx = -1e300, sum = 0;
      for (int j = 0; j < valid; ++j) {
        double s = 0;
        for (int c = 0; c < hd; ++c) s += double(q[i * ldq + c]) * k[j * ldkv + c];
        p[size_t(j)] = s * scale;
        mx = std::max(mx, p[size_t(j)]);
      }
      for (int j = 0; j < valid; ++j) sum += (p[size_t(j)] = std::exp(p[size_t(j)] - mx));
      for (int c = 0; c < hd; ++c) {
        double o = 0;
        for (int j = 0; j < valid; ++j) o += p[size_t(j)] / sum * v[j * ldkv + c];
        ref[size_t(i) * hd + c] = o;
      }
    }
    std::vector<float> scratch(size_t(causal_attention_scratch_floats(n, n_past, hd)));
    for (KernelPath path : machine_paths()) {
      force_kernel_path(path);
      std::vector<float> out(size_t(n) * (hd + 3), -7.f);
      causal_attention_head(q, ldq, k, v, ldkv, n, n_past, hd, scale, out.data(), hd + 3, scratch.data());
      for (int i = 0; i < n; ++i) {
        for (int c = 0; c < hd; ++c)
          ASSERT_NEAR(out[size_t(i) * (hd + 3) + c], ref[size_t(i) * hd + c], 2e-5)
              << kernel_path_name(path) << " n " << n << " n_past " << n_past << " hd " << hd << " query " << i
              << " col " << c;
        for (int c = hd; c < hd + 3; ++c) ASSERT_EQ(out[size_t(i) * (hd + 3) + c], -7.f) << "wrote past the head";
      }
    }
  }
  reset_kernel_path();
}

// After a tile-edge product y = x w^T (m rows, guard elements of -7 past it):
// nothing written past the output, and a fused product (q/k/v style, one
// packed input, a bias) equal to the single one.
static void expect_no_overrun_and_fused_equal(ThreadPool& pool, const float* x, int m, const WeightView& wv,
                                              const std::vector<float>& y, size_t guard, LinearScratch& scratch,
                                              const std::string& what) {
  const size_t n = size_t(m) * size_t(wv.rows);
  for (size_t g = 0; g < guard; ++g) ASSERT_EQ(y[n + g], -7.f) << what << " wrote past the output";
  std::vector<float> bias(size_t(wv.rows), 0.25f), f1(n), f2(n);
  linear_multi(pool, x, m, {{wv, nullptr, f1.data()}, {wv, bias.data(), f2.data()}}, scratch);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(f1[i], y[i]) << what << " fused";
    ASSERT_FLOAT_EQ(f2[i], y[i] + 0.25f) << what << " fused with bias";
  }
}

// The AMX-BF16 GEMM (amx path; F32 / F16 / BF16 weights) at its tile edges:
// activation rows, weight rows and k that are no multiple of its 16-row
// tiles, 2 x 2 C blocks and 32-wide k-blocks (1, 15, 17, 31, 33, 47 ...), a
// single k-block, several, and widths (k = 4 100, F32 / F16 panels of 16 rows
// at 258 KB) that cut a thread's features into several panel segments and
// the activation tiles into several chunks. Every element against a double
// product of the stored weights and the F32 activations, within 1e-5 x
// (1 + sum |w x|): the hi + lo split of the activations (and of F16 / F32
// weights) keeps about 16 bits; one BF16 rounding (2^-9) would miss it. The
// output's guard elements stay untouched, and a fused product (q/k/v style,
// one packed input, a bias) equals the single ones.
TEST(engine_kernels, AmxHalfAndF32ProductsMatchDoubleAtTileEdges) {
  if (!kernel_path_supported(KernelPath::Amx)) GTEST_SKIP() << "amx not on this CPU";
  ThreadPool pool(2);
  LinearScratch scratch;
  const std::tuple<int, int, int> shapes[] = {{4, 1, 1},     {15, 17, 31},  {16, 16, 32},  {17, 33, 33},
                                              {33, 47, 63},  {47, 15, 96},  {70, 64, 200}, {31, 100, 1030},
                                              {70, 150, 4100}};
  for (const auto& [m, rows, cols] : shapes) {
    Mat w = random_mat(rows, cols, 11 + rows);
    Mat x = random_mat(m, cols, 12 + m);
    force_kernel_path(KernelPath::Amx);
    for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
      const void* data = dt == DType::F32 ? static_cast<const void*>(w.f32.data())
                         : dt == DType::BF16 ? static_cast<const void*>(w.bf16.data())
                                             : static_cast<const void*>(w.f16.data());
      const WeightView wv{data, dt, rows, cols};
      const std::string what = std::string(dtype_name(dt)) + " m " + std::to_string(m) + " rows " +
                               std::to_string(rows) + " k " + std::to_string(cols);
      const size_t guard = 19;
      std::vector<float> y(size_t(m) * rows + guard, -7.f);
      linear(pool, x.f32.data(), m, wv, nullptr, y.data(), scratch);
      for (int t = 0; t < m; ++t)
        for (int r = 0; r < rows; ++r) {
          double s = 0, mag = 0;
          for (int i = 0; i < cols; ++i) {
            const size_t wi = size_t(r) * cols + i;
            const double wr = dt == DType::F32 ? w.f32[wi] : dt == DType::BF16 ? bf16_to_f32(w.bf16[wi])
                                                                               : f16_to_f32(w.f16[wi]);
            s += wr * x.f32[size_t(t) * cols + i];
            mag += std::fabs(wr * x.f32[size_t(t) * cols + i]);
          }
          ASSERT_NEAR(y[size_t(t) * rows + r], s, 1e-5 * (1 + mag)) << what << " row " << t << " col " << r;
        }
      expect_no_overrun_and_fused_equal(pool, x.f32.data(), m, wv, y, guard, scratch, what);
    }
  }
  reset_kernel_path();
}

// The amx path's Q8_0 / Q4_0 product on BF16 tiles (m >= 128 activation rows)
// at its edges: weight rows that are no multiple of 16 or of the 2 x 2 C
// block's 32 (1, 17, 33, 47, 800), activation rows likewise (128 .. 143 +
// tails), one 32-block, a short qlayout chunk (17 = 16 + 1 blocks; 21 = 16 +
// 5), and k = 161 blocks (161 KB of BF16 panel per 16 features) with 800
// rows, so that a thread's features span several 1 MB panel segments and the
// activation tiles several 1 MB chunks. Every element against the double
// product of the dequantised weights and the F32 input (2^-8 sum |w x|:
// two BF16 roundings), nothing written past the output, and a fused product
// (q/k/v style, one packed input, a bias) equal to the single ones.
TEST(engine_kernels, AmxQuantisedProductsOnBf16TilesMatchDoubleAtTileEdges) {
  if (!kernel_path_supported(KernelPath::Amx)) GTEST_SKIP() << "amx not on this CPU";
  ASSERT_TRUE(amx_quant_on_bf16_tiles(128));
  ASSERT_FALSE(amx_quant_on_bf16_tiles(127));
  ThreadPool pool(2);
  LinearScratch scratch;
  const std::tuple<int, int, int> shapes[] = {{128, 1, 32},       {129, 17, 17 * 32}, {143, 33, 64},
                                              {160, 47, 21 * 32}, {130, 800, 161 * 32}};
  for (const auto& [m, rows, cols] : shapes) {
    Mat w = random_mat(rows, cols, 13 + rows);
    Mat x = random_mat(m, cols, 14 + m);
    force_kernel_path(KernelPath::Amx);
    for (DType t : {DType::Q8_0, DType::Q4_0}) {
      auto q = quantise(t, w.f32, rows, cols);
      const WeightView wv{q.data(), t, rows, cols};
      std::vector<float> deq(size_t(rows) * cols);
      convert_rows_f32(wv, 0, rows, deq.data());
      const std::string what = std::string(dtype_name(t)) + " m " + std::to_string(m) + " rows " +
                               std::to_string(rows) + " k " + std::to_string(cols);
      const size_t guard = 19;
      std::vector<float> y(size_t(m) * rows + guard, -7.f);
      linear(pool, x.f32.data(), m, wv, nullptr, y.data(), scratch);
      for (int i = 0; i < m; ++i)
        for (int r = 0; r < rows; ++r)
          expect_amx_quant_row_near_double(y[size_t(i) * rows + r], deq.data() + size_t(r) * cols,
                                           x.f32.data() + size_t(i) * cols, cols,
                                           what + " row " + std::to_string(i) + " col " + std::to_string(r));
      expect_no_overrun_and_fused_equal(pool, x.f32.data(), m, wv, y, guard, scratch, what);
    }
  }
  reset_kernel_path();
}
