// AVX2/FMA/F16C variants of the decode dot products and weight conversion.
// This file alone is compiled with -mavx2 -mfma -mf16c; it is only called
// after a runtime CPU check (kernels.cpp), so the library runs anywhere.
#include <immintrin.h>

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
    for (; i + 16 <= cols; i += 16) {
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
