// AVX2/FMA/F16C variants of the decode dot products and weight conversion.
// This file alone is compiled with -mavx2 -mfma -mf16c; it is only called
// after a runtime CPU check (kernels.cpp), so the library runs anywhere.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "engine/qlayout.h"

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

template <int KIND>  // 0 f32, 1 bf16, 2 f16
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

// The lane sums of N accumulators (N <= 8) into out[0..N): one transposing
// tree for all of them (two hadd levels and one cross-lane add: about 1.2 ops
// per sum at N = 8, against 5 for a reduction each). Every sum takes the same
// additions whatever N and its position, ((l0 + l1) + (l2 + l3)) + ((l4 + l5)
// + (l6 + l7)), so a (row, input) result does not depend on its neighbours.
template <int N>
static inline void lane_sums(const __m256* v, float* out) {
  constexpr int N2 = (N + 1) / 2, N4 = (N2 + 1) / 2;
  const __m256 zero = _mm256_setzero_ps();
  __m256 s1[N2], s2[N4];
  for (int p = 0; p < N2; ++p) s1[p] = _mm256_hadd_ps(v[2 * p], 2 * p + 1 < N ? v[2 * p + 1] : zero);
  for (int p = 0; p < N4; ++p) s2[p] = _mm256_hadd_ps(s1[2 * p], 2 * p + 1 < N2 ? s1[2 * p + 1] : zero);
  // s2[p] = sums of v[4p .. 4p+3] over lanes 0-3 (low half) and 4-7 (high half).
  if constexpr (N4 == 2) {
    const __m256 r = _mm256_add_ps(_mm256_permute2f128_ps(s2[0], s2[1], 0x20), _mm256_permute2f128_ps(s2[0], s2[1], 0x31));
    if constexpr (N == 8) {
      _mm256_storeu_ps(out, r);
    } else {
      alignas(32) float t[8];
      _mm256_store_ps(t, r);
      for (int k = 0; k < N; ++k) out[k] = t[k];
    }
  } else {
    const __m128 r = _mm_add_ps(_mm256_castps256_ps128(s2[0]), _mm256_extractf128_ps(s2[0], 1));
    alignas(16) float t[4];
    _mm_store_ps(t, r);
    for (int k = 0; k < N; ++k) out[k] = t[k];
  }
}

// The lane sums of a pass's R x G accumulators (row i, input g) into
// y[g * ldy + r + i], in one tree.
template <int R, int G>
static inline void store_sums(const __m256 (&acc)[R][G], float* y, int64_t ldy, int64_t r) {
  __m256 flat[R * G];
  float sums[R * G];
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < R; ++i) flat[g * R + i] = acc[i][g];
  lane_sums<R * G>(flat, sums);
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < R; ++i) y[g * ldy + r + i] = sums[g * R + i];
}

// Bytes the software prefetch of the decode rows runs ahead of each row
// stream, divided by the rows of a pass: the pass's streams together keep
// about this much in flight.
constexpr int64_t kPrefetchWindow = 8192;

// ------------------------------------------------------------------ decode rows, F32 / BF16 / F16
//
template <int KIND>  // 0 f32, 1 bf16, 2 f16
static inline __m256 load8(const void* base, int64_t i) {
  if (KIND == 0) return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  if (KIND == 1) return load8_bf16(static_cast<const uint16_t*>(base) + i);
  return load8_f16(static_cast<const uint16_t*>(base) + i);
}
// Rows of W against nx input vectors x[g * ldx] (one per decoded sequence),
// y[g * ldy + r]. Each weight row is read from memory once for all inputs
// (the second pair of inputs finds it in L1), and every (row, input) result
// is computed by exactly the operations nx = 1 uses, so a sequence decoded in
// a batch gets the bits it gets alone. Two rows at once: x is loaded once for
// both, and two accumulator chains per (row, input) hide the FMA latency.
template <int KIND, int G>  // G inputs per pass (1 or 2: 8 accumulators fit the 16 ymm registers)
static inline void matvec_pair(const char* w0, const char* w1, int64_t cols, const float* x, int64_t ldx, float* y,
                               int64_t ldy, int64_t r, bool prefetch) {
  const size_t esz = KIND == 0 ? 4 : 2;
  __m256 a0[G], a1[G], b0[G], b1[G];
  for (int g = 0; g < G; ++g) a0[g] = a1[g] = b0[g] = b1[g] = _mm256_setzero_ps();
  int64_t i = 0;
  // The next row pair follows in memory: prefetch it as this pair streams,
  // so each core keeps enough misses in flight to approach DRAM bandwidth.
  const char* next = w1 + 3 * cols * esz;
  for (; i + 16 <= cols; i += 16) {
    if (prefetch) {
      _mm_prefetch(next + 2 * i * esz, _MM_HINT_T0);
      _mm_prefetch(next + 2 * i * esz + 64, _MM_HINT_T0);
    }
    const __m256 w00 = load8<KIND>(w0, i), w01 = load8<KIND>(w0, i + 8);
    const __m256 w10 = load8<KIND>(w1, i), w11 = load8<KIND>(w1, i + 8);
    for (int g = 0; g < G; ++g) {
      const float* xg = x + g * ldx;
      const __m256 x0 = _mm256_loadu_ps(xg + i), x1 = _mm256_loadu_ps(xg + i + 8);
      a0[g] = _mm256_fmadd_ps(w00, x0, a0[g]);
      a1[g] = _mm256_fmadd_ps(w01, x1, a1[g]);
      b0[g] = _mm256_fmadd_ps(w10, x0, b0[g]);
      b1[g] = _mm256_fmadd_ps(w11, x1, b1[g]);
    }
  }
  for (int g = 0; g < G; ++g) {
    const float* xg = x + g * ldx;
    float s0 = hsum(_mm256_add_ps(a0[g], a1[g])), s1 = hsum(_mm256_add_ps(b0[g], b1[g]));
    for (int64_t k = i; k < cols; ++k) {
      s0 = std::fma(load1<KIND>(w0, k), xg[k], s0);
      s1 = std::fma(load1<KIND>(w1, k), xg[k], s1);
    }
    y[g * ldy + r] = s0;
    y[g * ldy + r + 1] = s1;
  }
}

template <int KIND>
static inline float matvec_one(const char* w0, int64_t cols, const float* x) {
  __m256 a0 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= cols; i += 8) a0 = _mm256_fmadd_ps(load8<KIND>(w0, i), _mm256_loadu_ps(x + i), a0);
  float s0 = hsum(a0);
  for (; i < cols; ++i) s0 = std::fma(load1<KIND>(w0, i), x[i], s0);
  return s0;
}

template <int KIND>
static void matvec_rows(const void* w, int64_t cols, const float* x, int64_t ldx, int nx, float* y, int64_t ldy,
                        int64_t r0, int64_t r1) {
  const size_t esz = KIND == 0 ? 4 : 2;
  int64_t r = r0;
  for (; r + 2 <= r1; r += 2) {
    const char* w0 = static_cast<const char*>(w) + size_t(r) * cols * esz;
    const char* w1 = w0 + cols * esz;
    int g = 0;
    for (; g + 2 <= nx; g += 2) matvec_pair<KIND, 2>(w0, w1, cols, x + g * ldx, ldx, y + g * ldy, ldy, r, g == 0);
    if (g < nx) matvec_pair<KIND, 1>(w0, w1, cols, x + g * ldx, ldx, y + g * ldy, ldy, r, g == 0);
  }
  for (; r < r1; ++r) {
    const char* w0 = static_cast<const char*>(w) + size_t(r) * cols * esz;
    for (int g = 0; g < nx; ++g) y[g * ldy + r] = matvec_one<KIND>(w0, cols, x + g * ldx);
  }
}

void matvec_f32_rows(const void* w, int64_t cols, const float* x, int64_t ldx, int nx, float* y, int64_t ldy, int64_t r0,
                int64_t r1) {
  matvec_rows<0>(w, cols, x, ldx, nx, y, ldy, r0, r1);
}
void matvec_bf16_rows(const void* w, int64_t cols, const float* x, int64_t ldx, int nx, float* y, int64_t ldy, int64_t r0,
                 int64_t r1) {
  matvec_rows<1>(w, cols, x, ldx, nx, y, ldy, r0, r1);
}
void matvec_f16_rows(const void* w, int64_t cols, const float* x, int64_t ldx, int nx, float* y, int64_t ldy, int64_t r0,
                int64_t r1) {
  matvec_rows<2>(w, cols, x, ldx, nx, y, ldy, r0, r1);
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

namespace firstread::engine {
float f16_to_f32(uint16_t v);
}

namespace firstread::engine::avx2 {

struct BlockQ8Raw {
  uint16_t d;
  int8_t q[32];
};
struct BlockQ4Raw {
  uint16_t d;
  uint8_t qs[16];
};
struct BlockQ8ActRaw {
  float d;
  float s;
  int8_t q[32];
};
static_assert(sizeof(BlockQ8Raw) == 34 && sizeof(BlockQ4Raw) == 18 && sizeof(BlockQ8ActRaw) == 40, "block layouts");

static inline __m256 q8_to_ps(const int8_t* q) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q))));
}
static inline __m256i load_q8(const int8_t* q) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)); }
// 32 Q4_0 nibbles as bytes 0..15, weights 0..15 in the low lane, 16..31 in
// the high. A broadcast load and a blend rather than an insert: no shuffle-port
// work, which is what limits this loop.
static inline __m256i load_nibbles(const uint8_t* qs) {
  const __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  return _mm256_and_si256(_mm256_blend_epi32(t, _mm256_srli_epi16(t, 4), 0xF0), _mm256_set1_epi8(0x0F));
}
// FP16 -> float by table (256 KB, stays in L2): the block scales then reach the
// vector unit as broadcast loads instead of convert + shuffle per block.
static const float* f16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = f16_to_f32(uint16_t(i));
    return t;
  }();
  return table.data();
}
// As int8 in -8..7.
static inline __m256i load_q4(const uint8_t* qs) { return _mm256_sub_epi8(load_nibbles(qs), _mm256_set1_epi8(8)); }
// Blocks of a Q8_0 / Q4_0 row back in llama.cpp's layout (the row dequantise).
template <bool Q4>
struct QBlocks {
  using Block = std::conditional_t<Q4, BlockQ4Raw, BlockQ8Raw>;
  static constexpr int64_t kBytes = sizeof(Block);
  // The t blocks of the chunk starting at block c of an engine-layout row
  // (qlayout.h) back in llama.cpp's layout: a full chunk by 8 x 8 (Q8_0) or
  // 4 x 8 (Q4_0) dword transposes of its group vectors, a short one block by block.
  static void gather(const uint8_t* row, int64_t nb, int64_t c, int t, Block* out) {
    if (t == qlayout::kChunk) {
      const uint8_t* ch = row + c * kBytes;
      for (int half = 0; half < 2; ++half) {
        if constexpr (Q4) transpose_q4(ch + 32 * half, out + 8 * half);
        else transpose_q8(ch + 32 * half, out + 8 * half);
      }
      for (int l = 0; l < qlayout::kChunk; ++l) std::memcpy(&out[l].d, ch + (Q4 ? 16 : 32) * 16 + 2 * l, 2);
      return;
    }
    for (int l = 0; l < t; ++l) {
      if constexpr (Q4) qlayout::q4_read(row, nb, c + l, &out[l].d, out[l].qs);
      else qlayout::q8_read(row, nb, c + l, &out[l].d, out[l].q);
    }
  }
  // Groups 0..7 of 8 blocks (vector g at p + 64 g: dword l = block l's group g) to the blocks' 32 weights.
  static void transpose_q8(const uint8_t* p, Block* out) {
    __m256i r[8], t[8], u[8];
    for (int g = 0; g < 8; ++g) r[g] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * g));
    for (int k = 0; k < 4; ++k) {
      t[2 * k] = _mm256_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
      t[2 * k + 1] = _mm256_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 2; ++k) {  // u[4k + j]: blocks j and j + 4, groups 4k .. 4k+3
      u[4 * k + 0] = _mm256_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
      u[4 * k + 1] = _mm256_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
      u[4 * k + 2] = _mm256_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
      u[4 * k + 3] = _mm256_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
    }
    const __m256i sign = _mm256_set1_epi8(char(0x80));
    for (int j = 0; j < 4; ++j) {
      const __m256i lo = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20), hi = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[j].q), _mm256_xor_si256(lo, sign));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[j + 4].q), _mm256_xor_si256(hi, sign));
    }
  }
  // Groups 0..3 of 8 blocks (vector h at p + 64 h) to the blocks' 16 nibble bytes.
  static void transpose_q4(const uint8_t* p, Block* out) {
    __m256i r[4];
    for (int h = 0; h < 4; ++h) r[h] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64 * h));
    const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    const __m256i u[4] = {_mm256_unpacklo_epi64(t0, t2), _mm256_unpackhi_epi64(t0, t2), _mm256_unpacklo_epi64(t1, t3),
                          _mm256_unpackhi_epi64(t1, t3)};  // u[j]: block j (low 128 bits), block j + 4 (high)
    for (int j = 0; j < 4; ++j) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out[j].qs), _mm256_castsi256_si128(u[j]));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out[j + 4].qs), _mm256_extracti128_si256(u[j], 1));
    }
  }
};

// ------------------------------------------------------------------ decode rows, Q8_0 / Q4_0
//
// Rows over the engine's interleaved layout (qlayout.h) against nx quantised
// inputs: a ymm holds the same 4-byte group of 8 blocks, so lane l sums block
// l exactly in int32. What depends on the row alone (the group loads, Q8_0's
// sign split, Q4_0's nibble split, the 8 scales' conversion) is done once for
// all the pass's inputs; what depends on the input alone (its group order,
// Q4_0's start value -8 x the block's activation sum, the scales) once per
// step in a pack (matvec_q_pack). Per 8 blocks and input what is left is:
//  - Q8_0, per group: vpsignb + vpmaddubsw + vpmaddwd + add (the weights'
//    magnitude is the unsigned operand, their sign moved onto the
//    activations, so the int16 pair sums, <= 2 x 128 x 127, cannot saturate);
//  - Q4_0: per group two vpmaddubsw (low and high nibbles, unsigned as they
//    are) added in int16 over all 4 groups (8 pair sums of <= 2 x 15 x 127
//    stay below 32 767), one vpmaddwd and one add onto the start value;
//  - then one convert, one scale product and one FMA.
// Rows x inputs per pass: 4 x 1, 2 x 2, 1 x up to 4 (the int32 sums of the
// pass fill the registers); the lane sums of a pass in one transposing tree.
// Every (row, input) result takes the same operations whatever nx (batched
// decode gives a sequence the bits it gets alone).
namespace {
constexpr int64_t kChunkAct = 8 * 64 + 64 + 64;  // 8 groups x 16 blocks x 4 bytes; -8 x block sums; scales
constexpr int64_t kStart4At = 512, kScaleAt = 576;
inline int64_t n_chunks(int64_t nb) { return (nb + qlayout::kChunk - 1) / qlayout::kChunk; }
}  // namespace

int64_t matvec_q_pack_bytes(int64_t n, int64_t cols) { return n * n_chunks(cols / 32) * kChunkAct; }

// n quantised inputs (BlockQ8Act, cols / 32 blocks each) into the weights'
// group order, matvec_q_pack_bytes(n, cols) bytes at dst: per half chunk
// an 8 x 8 dword transpose of the blocks' weights, their sums from the
// transposed groups, the scales; missing blocks of a short chunk are zero.
void matvec_q_pack(const void* xq_v, int64_t n, int64_t cols, uint8_t* dst) {
  const BlockQ8ActRaw* xq = static_cast<const BlockQ8ActRaw*>(xq_v);
  const int64_t nb = cols / 32, chunks = n_chunks(nb);
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  for (int64_t g = 0; g < n; ++g)
    for (int64_t c = 0; c < chunks; ++c) {
      uint8_t* p = dst + (g * chunks + c) * kChunkAct;
      const int t = qlayout::chunk_blocks(nb, c * qlayout::kChunk);
      const BlockQ8ActRaw* blocks = xq + g * nb + c * qlayout::kChunk;
      for (int half = 0; half < 2; ++half) {
        const int lanes = std::max(0, std::min(8, t - 8 * half));
        __m256i r[8], u[8];
        for (int l = 0; l < 8; ++l)
          r[l] = l < lanes ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blocks[8 * half + l].q))
                           : _mm256_setzero_si256();
        for (int k = 0; k < 4; ++k) {  // u[2k], u[2k+1]: rows 2k, 2k+1 interleaved by dword
          u[2 * k] = _mm256_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
          u[2 * k + 1] = _mm256_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
        }
        for (int k = 0; k < 2; ++k) {  // r[4k + j]: rows 4k .. 4k+3 of groups j and j + 4
          r[4 * k + 0] = _mm256_unpacklo_epi64(u[4 * k], u[4 * k + 2]);
          r[4 * k + 1] = _mm256_unpackhi_epi64(u[4 * k], u[4 * k + 2]);
          r[4 * k + 2] = _mm256_unpacklo_epi64(u[4 * k + 1], u[4 * k + 3]);
          r[4 * k + 3] = _mm256_unpackhi_epi64(u[4 * k + 1], u[4 * k + 3]);
        }
        __m256i sum16 = _mm256_setzero_si256();
        for (int j = 0; j < 4; ++j) {
          const __m256i lo = _mm256_permute2x128_si256(r[j], r[4 + j], 0x20), hi = _mm256_permute2x128_si256(r[j], r[4 + j], 0x31);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j * 64 + 32 * half), lo);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + (j + 4) * 64 + 32 * half), hi);
          sum16 = _mm256_add_epi16(sum16, _mm256_add_epi16(_mm256_maddubs_epi16(ones8, lo), _mm256_maddubs_epi16(ones8, hi)));
        }
        const __m256i sum = _mm256_madd_epi16(sum16, ones16);  // lane l: block l's 32 activations
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + kStart4At + 32 * half),
                            _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(sum, 3)));
        alignas(32) float d[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int l = 0; l < lanes; ++l) d[l] = blocks[8 * half + l].d;
        _mm256_storeu_ps(reinterpret_cast<float*>(p + kScaleAt + 32 * half), _mm256_load_ps(d));
      }
    }
}

namespace {

// One half chunk (8 blocks; `lanes` of them present, all 8 when FULL) of R
// rows against G inputs: the integer block sums, then the scaled FMA into acc.
template <bool Q4, int R, int G, bool FULL>
inline void q_half(const uint8_t* const* w, int64_t c_bytes, int t, int half, int lanes, const uint8_t* xc,
                   int64_t in_bytes, __m256 (&acc)[R][G]) {
  const __m256i ones = _mm256_set1_epi16(1), lo4 = _mm256_set1_epi8(0x0F), bias = _mm256_set1_epi8(char(0x80));
  const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  auto load = [&](const uint8_t* p) {
    return FULL ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                : _mm256_maskload_epi32(reinterpret_cast<const int*>(p), m);
  };
  auto act = [&](int g, int h) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xc + g * in_bytes + h * 64 + 32 * half)); };
  __m256i iacc[R][G];
  if constexpr (!Q4) {
    for (int i = 0; i < R; ++i)
      for (int g = 0; g < G; ++g) iacc[i][g] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int h = 0; h < 8; ++h)
      for (int i = 0; i < R; ++i) {
        const __m256i q = _mm256_xor_si256(load(w[i] + c_bytes + h * 4 * t + 32 * half), bias), aq = _mm256_abs_epi8(q);
        for (int g = 0; g < G; ++g)
          iacc[i][g] = _mm256_add_epi32(iacc[i][g], _mm256_madd_epi16(_mm256_maddubs_epi16(aq, _mm256_sign_epi8(act(g, h), q)), ones));
      }
  } else {
    __m256i s16[R][G];
    for (int i = 0; i < R; ++i)
      for (int g = 0; g < G; ++g) s16[i][g] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int h = 0; h < 4; ++h)
      for (int i = 0; i < R; ++i) {
        const __m256i v = load(w[i] + c_bytes + h * 4 * t + 32 * half);
        const __m256i lo = _mm256_and_si256(v, lo4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
        for (int g = 0; g < G; ++g)
          s16[i][g] = _mm256_add_epi16(s16[i][g], _mm256_add_epi16(_mm256_maddubs_epi16(lo, act(g, h)),
                                                                    _mm256_maddubs_epi16(hi, act(g, h + 4))));
      }
    for (int g = 0; g < G; ++g) {
      const __m256i start = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xc + g * in_bytes + kStart4At + 32 * half));
      for (int i = 0; i < R; ++i) iacc[i][g] = _mm256_add_epi32(start, _mm256_madd_epi16(s16[i][g], ones));
    }
  }
  for (int i = 0; i < R; ++i) {
    const uint8_t* sc = w[i] + c_bytes + (Q4 ? 16 : 32) * t + 16 * half;
    __m128i d16;
    if (FULL) {
      d16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(sc));
    } else {
      alignas(16) uint16_t d[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int l = 0; l < lanes; ++l) std::memcpy(d + l, sc + 2 * l, 2);
      d16 = _mm_load_si128(reinterpret_cast<const __m128i*>(d));
    }
    const __m256 dw = _mm256_cvtph_ps(d16);
    for (int g = 0; g < G; ++g) {
      const __m256 da = _mm256_loadu_ps(reinterpret_cast<const float*>(xc + g * in_bytes + kScaleAt + 32 * half));
      acc[i][g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[i][g]), _mm256_mul_ps(dw, da), acc[i][g]);
    }
  }
}

template <bool Q4, int R, int G>
inline void q_rows(const uint8_t* base, int64_t row_bytes, int64_t nb, const uint8_t* xp, int64_t in_bytes, float* y,
                   int64_t ldy, int64_t r) {
  constexpr int64_t bsz = Q4 ? qlayout::kQ4Bytes : qlayout::kQ8Bytes;
  const int64_t ahead = kPrefetchWindow / R;
  const uint8_t* w[R];
  for (int i = 0; i < R; ++i) w[i] = base + (r + i) * row_bytes;
  __m256 acc[R][G];
  for (int i = 0; i < R; ++i)
    for (int g = 0; g < G; ++g) acc[i][g] = _mm256_setzero_ps();
  for (int64_t c = 0, ci = 0; c < nb; c += qlayout::kChunk, ++ci) {
    const int t = qlayout::chunk_blocks(nb, c);
    const uint8_t* xc = xp + ci * kChunkAct;
    // Each line of the bytes `ahead` of this chunk in every row of the pass
    // (rows are contiguous, so past a row's end this is the rows that follow).
    for (int i = 0; i < R; ++i)
      for (int64_t off = 0; off < t * bsz; off += 64)
        _mm_prefetch(reinterpret_cast<const char*>(w[i] + c * bsz + ahead + off), _MM_HINT_T0);
    for (int half = 0; half < 2; ++half) {
      const int lanes = t - 8 * half < 8 ? t - 8 * half : 8;
      if (lanes <= 0) break;
      if (lanes == 8) q_half<Q4, R, G, true>(w, c * bsz, t, half, 8, xc, in_bytes, acc);
      else q_half<Q4, R, G, false>(w, c * bsz, t, half, lanes, xc, in_bytes, acc);
    }
  }
  store_sums<R, G>(acc, y, ldy, r);
}

// Rows [r, r + R) against inputs [0, nx): 4 rows one input at a time, 2
// rows two at a time, 1 row up to four at a time (a later pass over the same
// rows finds them in L1).
template <bool Q4, int R>
inline void q_inputs(const uint8_t* base, int64_t row_bytes, int64_t nb, const uint8_t* xp, int64_t in_bytes, int nx,
                     float* y, int64_t ldy, int64_t r) {
  auto rows = [&](auto inputs, int g) {
    q_rows<Q4, R, decltype(inputs)::value>(base, row_bytes, nb, xp + g * in_bytes, in_bytes, y + g * ldy, ldy, r);
  };
  using I1 = std::integral_constant<int, 1>;
  int g = 0;
  if constexpr (R == 1) {
    for (; g + 4 <= nx; g += 4) rows(std::integral_constant<int, 4>{}, g);
    if (nx - g == 3) rows(std::integral_constant<int, 3>{}, g);
    else if (nx - g == 2) rows(std::integral_constant<int, 2>{}, g);
    else if (nx - g == 1) rows(I1{}, g);
  } else if constexpr (R == 2) {
    for (; g + 2 <= nx; g += 2) rows(std::integral_constant<int, 2>{}, g);
    if (g < nx) rows(I1{}, g);
  } else {
    for (; g < nx; ++g) rows(I1{}, g);
  }
}

template <bool Q4>
void matvec_q(const void* w, int64_t cols, const uint8_t* xp, int nx, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const int64_t nb = cols / 32, row_bytes = nb * (Q4 ? qlayout::kQ4Bytes : qlayout::kQ8Bytes);
  const int64_t in_bytes = n_chunks(nb) * kChunkAct;
  const uint8_t* base = static_cast<const uint8_t*>(w);
  int64_t r = r0;
  if (nx == 1)
    for (; r + 4 <= r1; r += 4) q_inputs<Q4, 4>(base, row_bytes, nb, xp, in_bytes, nx, y, ldy, r);
  if (nx == 2)
    for (; r + 2 <= r1; r += 2) q_inputs<Q4, 2>(base, row_bytes, nb, xp, in_bytes, nx, y, ldy, r);
  for (; r < r1; ++r) q_inputs<Q4, 1>(base, row_bytes, nb, xp, in_bytes, nx, y, ldy, r);
}

}  // namespace

// Rows [r0, r1) of an engine-layout Q8_0 / Q4_0 matrix against nx inputs
// packed by matvec_q_pack, into y[g * ldy + r].
void matvec_q8(const void* w, int64_t cols, const uint8_t* packed, int nx, float* y, int64_t ldy, int64_t r0,
               int64_t r1) {
  matvec_q<false>(w, cols, packed, nx, y, ldy, r0, r1);
}
void matvec_q4(const void* w, int64_t cols, const uint8_t* packed, int nx, float* y, int64_t ldy, int64_t r0,
               int64_t r1) {
  matvec_q<true>(w, cols, packed, nx, y, ldy, r0, r1);
}

// Rows [0, n_rows) of an engine-layout Q8_0 / Q4_0 matrix (qlayout.h) to floats, chunk by chunk.
template <bool Q4>
static void convert_q_rows(const void* w, int64_t cols, int64_t n_rows, float* dst);
void convert_q8_rows(const void* w, int64_t cols, int64_t n_rows, float* dst) { convert_q_rows<false>(w, cols, n_rows, dst); }
void convert_q4_rows(const void* w, int64_t cols, int64_t n_rows, float* dst) { convert_q_rows<true>(w, cols, n_rows, dst); }

void convert_q8(const void* blocks, float* dst, int64_t n_blocks) {
  const BlockQ8Raw* b = static_cast<const BlockQ8Raw*>(blocks);
  for (int64_t i = 0; i < n_blocks; ++i) {
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[i].d));
    for (int k = 0; k < 4; ++k) _mm256_storeu_ps(dst + i * 32 + k * 8, _mm256_mul_ps(q8_to_ps(b[i].q + k * 8), d));
  }
}

void convert_q4(const void* blocks, float* dst, int64_t n_blocks) {
  const BlockQ4Raw* b = static_cast<const BlockQ4Raw*>(blocks);
  alignas(32) int8_t q[32];
  for (int64_t i = 0; i < n_blocks; ++i) {
    _mm256_store_si256(reinterpret_cast<__m256i*>(q), load_q4(b[i].qs));
    const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[i].d));
    for (int k = 0; k < 4; ++k) _mm256_storeu_ps(dst + i * 32 + k * 8, _mm256_mul_ps(q8_to_ps(q + k * 8), d));
  }
}

template <bool Q4>
static void convert_q_rows(const void* w, int64_t cols, int64_t n_rows, float* dst) {
  using Q = QBlocks<Q4>;
  const int64_t nb = cols / 32;
  typename Q::Block blk[qlayout::kChunk];
  for (int64_t r = 0; r < n_rows; ++r) {
    const uint8_t* row = static_cast<const uint8_t*>(w) + r * nb * Q::kBytes;
    for (int64_t c = 0; c < nb; c += qlayout::kChunk) {
      const int t = qlayout::chunk_blocks(nb, c);
      Q::gather(row, nb, c, t, blk);
      if constexpr (Q4) convert_q4(blk, dst + r * cols + c * 32, t);
      else convert_q8(blk, dst + r * cols + c * 32, t);
    }
  }
}

// x -> int8 blocks with scale amax/127, rounded to nearest even like the
// scalar path (std::nearbyint).
void quantize_act(const float* x, int64_t n_blocks, void* dst_v) {
  BlockQ8ActRaw* dst = static_cast<BlockQ8ActRaw*>(dst_v);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < n_blocks; ++b) {
    const float* xb = x + b * 32;
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
      v[k] = _mm256_loadu_ps(xb + k * 8);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[k]));
    }
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    const float am = _mm_cvtss_f32(m);
    dst[b].d = am / 127.f;
    const __m256 inv = _mm256_set1_ps(am > 0 ? 127.f / am : 0.f);
    __m256i i32[4];
    for (int k = 0; k < 4; ++k)
      i32[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    // Pack 4 x 8 int32 -> 32 int8 in order (packs work per 128-bit lane; the
    // permute restores the element order).
    __m256i p16a = _mm256_packs_epi32(i32[0], i32[1]);
    __m256i p16b = _mm256_packs_epi32(i32[2], i32[3]);
    __m256i p8 = _mm256_packs_epi16(p16a, p16b);
    p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst[b].q), p8);
    // sum of the 32 int8 values (exact in int32)
    const __m256i s16 = _mm256_maddubs_epi16(_mm256_set1_epi8(1), p8);
    __m256i s32 = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    dst[b].s = dst[b].d * float(_mm_cvtsi128_si32(t));
  }
}

}  // namespace firstread::engine::avx2
