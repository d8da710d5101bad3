// AVX2/FMA/F16C variants of the decode dot products and weight conversion.
// This file alone is compiled with -mavx2 -mfma -mf16c; it is only called
// after a runtime CPU check (kernels.cpp), so the library runs anywhere.
#include <immintrin.h>

#include <cmath>
#include <cstdint>

namespace firstread::engine::avx2 {

static inline __m256 load8_bf16(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline __m256 load8_f16(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
static inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

// Two rows at once: x is loaded once for both, and four independent
// accumulator chains hide the FMA latency.
template <int KIND>  // 0 f32, 1 bf16, 2 f16
static inline __m256 load8(const void* base, int64_t i) {
  if (KIND == 0) return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  if (KIND == 1) return load8_bf16(static_cast<const uint16_t*>(base) + i);
  return load8_f16(static_cast<const uint16_t*>(base) + i);
}
template <int KIND>
static inline float load1(const void* base, int64_t i) {
  if (KIND == 0) return static_cast<const float*>(base)[i];
  uint16_t v = static_cast<const uint16_t*>(base)[i];
  if (KIND == 1) {
    uint32_t u = uint32_t(v) << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
  }
  return _cvtsh_ss(v);
}

template <int KIND>
static void matvec_rows(const void* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  const size_t esz = KIND == 0 ? 4 : 2;
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) {
    const char* w0 = static_cast<const char*>(w) + size_t(r) * cols * esz;
    const char* w1 = w0 + cols * esz;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    int64_t i = 0;
    // The next row pair follows in memory: prefetch it as this pair streams,
    // so each core keeps enough misses in flight to approach DRAM bandwidth.
    const char* next = w1 + 3 * cols * esz;
    for (; i + 16 <= cols; i += 16) {
      _mm_prefetch(next + 2 * i * esz, _MM_HINT_T0);
      _mm_prefetch(next + 2 * i * esz + 64, _MM_HINT_T0);
      __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8);
      a0 = _mm256_fmadd_ps(load8<KIND>(w0, i), x0, a0);
      a1 = _mm256_fmadd_ps(load8<KIND>(w0, i + 8), x1, a1);
      b0 = _mm256_fmadd_ps(load8<KIND>(w1, i), x0, b0);
      b1 = _mm256_fmadd_ps(load8<KIND>(w1, i + 8), x1, b1);
    }
    float s0 = hsum(_mm256_add_ps(a0, a1)), s1 = hsum(_mm256_add_ps(b0, b1));
    for (; i < cols; ++i) {
      s0 += load1<KIND>(w0, i) * x[i];
      s1 += load1<KIND>(w1, i) * x[i];
    }
    y[r] = s0;
    y[r + 1] = s1;
  }
  for (; r < r1; ++r) {
    const char* w0 = static_cast<const char*>(w) + size_t(r) * cols * esz;
    __m256 a0 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= cols; i += 8) a0 = _mm256_fmadd_ps(load8<KIND>(w0, i), _mm256_loadu_ps(x + i), a0);
    float s0 = hsum(a0);
    for (; i < cols; ++i) s0 += load1<KIND>(w0, i) * x[i];
    y[r] = s0;
  }
}

void matvec_f32(const void* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  matvec_rows<0>(w, cols, x, y, r0, r1);
}
void matvec_bf16(const void* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  matvec_rows<1>(w, cols, x, y, r0, r1);
}
void matvec_f16(const void* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  matvec_rows<2>(w, cols, x, y, r0, r1);
}

void convert_bf16(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8_bf16(src + i));
  for (; i < n; ++i) dst[i] = load1<1>(src, i);
}
void convert_f16(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8_f16(src + i));
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
}

}  // namespace firstread::engine::avx2

namespace firstread::engine::avx2 {

// exp(x) for 8 floats: range reduction x = n ln2 + r, degree-5 polynomial
// (Cephes expf coefficients), relative error about 2e-7.
static inline __m256 exp8(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365478515625f);
  x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// softmax over n floats in place (max-subtracted, like torch).
void softmax(float* v, int64_t n) {
  __m256 mx = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) mx = _mm256_max_ps(mx, _mm256_loadu_ps(v + i));
  float m = -INFINITY;
  alignas(32) float t[8];
  _mm256_store_ps(t, mx);
  for (float f : t) m = f > m ? f : m;
  for (; i < n; ++i) m = v[i] > m ? v[i] : m;
  const __m256 vm = _mm256_set1_ps(m);
  __m256 sum = _mm256_setzero_ps();
  for (i = 0; i + 8 <= n; i += 8) {
    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(v + i), vm));
    _mm256_storeu_ps(v + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  float s = hsum(sum);
  for (; i < n; ++i) {
    __m256 e = exp8(_mm256_set1_ps(v[i] - m));
    v[i] = _mm256_cvtss_f32(e);
    s += v[i];
  }
  const __m256 inv = _mm256_set1_ps(1.0f / s);
  for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, _mm256_mul_ps(_mm256_loadu_ps(v + i), inv));
  for (; i < n; ++i) v[i] *= 1.0f / s;
}

// GELU with erf (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7) for 8 floats.
static inline __m256 gelu8(__m256 x) {
  const __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  const __m256 az = _mm256_andnot_ps(sign_mask, z);
  const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), az, _mm256_set1_ps(1.0f)));
  __m256 p = _mm256_set1_ps(1.061405429f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
  p = _mm256_mul_ps(p, t);
  const __m256 e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), az), az));
  __m256 erf_abs = _mm256_fnmadd_ps(p, e, _mm256_set1_ps(1.0f));
  const __m256 erf = _mm256_or_ps(erf_abs, _mm256_and_ps(sign_mask, z));
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(_mm256_set1_ps(1.0f), erf));
}

void gelu(float* v, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(v + i, gelu8(_mm256_loadu_ps(v + i)));
  for (; i < n; ++i) v[i] = _mm256_cvtss_f32(gelu8(_mm256_set1_ps(v[i])));
}

// SwiGLU: gate[i] = silu(gate[i]) * up[i].
void silu_mul(float* gate, const float* up, int64_t n) {
  int64_t i = 0;
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) {
    __m256 g = _mm256_loadu_ps(gate + i);
    __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    _mm256_storeu_ps(gate + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace firstread::engine::avx2

namespace firstread::engine::avx2 {

float dot(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
  float s = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy(float* y, float a, const float* x, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

}  // namespace firstread::engine::avx2

namespace firstread::engine::avx2 {

struct BlockQ8Raw {
  float d;
  int8_t q[32];
};

static inline __m256 q8_to_ps(const int8_t* q) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q))));
}

// Q8_0 rows: per block, 32 int8 x 32 floats accumulated then scaled once.
void matvec_q8(const void* w, int64_t cols, const float* x, float* y, int64_t r0, int64_t r1) {
  const int64_t nb = cols / 32;
  const BlockQ8Raw* base = static_cast<const BlockQ8Raw*>(w);
  for (int64_t r = r0; r < r1; ++r) {
    const BlockQ8Raw* row = base + r * nb;
    const char* next = reinterpret_cast<const char*>(row + nb);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      _mm_prefetch(next + b * 36, _MM_HINT_T0);
      const float* xb = x + b * 32;
      __m256 s0 = _mm256_mul_ps(q8_to_ps(row[b].q), _mm256_loadu_ps(xb));
      __m256 s1 = _mm256_mul_ps(q8_to_ps(row[b].q + 8), _mm256_loadu_ps(xb + 8));
      s0 = _mm256_fmadd_ps(q8_to_ps(row[b].q + 16), _mm256_loadu_ps(xb + 16), s0);
      s1 = _mm256_fmadd_ps(q8_to_ps(row[b].q + 24), _mm256_loadu_ps(xb + 24), s1);
      const __m256 d = _mm256_set1_ps(row[b].d);
      acc0 = _mm256_fmadd_ps(s0, d, acc0);
      acc1 = _mm256_fmadd_ps(s1, d, acc1);
    }
    y[r] = hsum(_mm256_add_ps(acc0, acc1));
  }
}

void convert_q8(const void* blocks, float* dst, int64_t n_blocks) {
  const BlockQ8Raw* b = static_cast<const BlockQ8Raw*>(blocks);
  for (int64_t i = 0; i < n_blocks; ++i) {
    const __m256 d = _mm256_set1_ps(b[i].d);
    for (int k = 0; k < 4; ++k) _mm256_storeu_ps(dst + i * 32 + k * 8, _mm256_mul_ps(q8_to_ps(b[i].q + k * 8), d));
  }
}

}  // namespace firstread::engine::avx2
