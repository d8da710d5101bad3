// AVX2 GEMM for batched products (prefill, vision, projector) with Q8_0 /
// Q4_0 weights, straight from the engine's interleaved layout (qlayout.h):
// y[m][n] = sum_k x[m][k] * w[n][k], issue 13 on AVX2-only machines (Zen 3).
//
// The activations are quantised per row and 32-block to int8 by the decode
// path's own function (kernels_avx2.cpp quantize_act: scale amax / 127, x *
// 127 / amax rounded to nearest even), so every integer block sum is the one
// the scalar matvec computes; only the float summation order differs.
//
// Layout: a ymm holds the same 4-byte group (k = 4g .. 4g+3) of 8 consecutive
// blocks of one row, which is how the weights already lie in a half chunk
// (qlayout.h). The activations are packed in the same order (kActHalf bytes
// per row and 8 blocks, rows in tiles of kTile), so weight vector x activation vector gives,
// per 32-bit lane, a partial dot product of one block: no shuffles, and the
// block scales are applied once per 8 blocks (convert, scale product, FMA).
//   Q8_0: vpmaddubsw needs an unsigned operand whose pair sums cannot
//         saturate, so the weights' magnitude |q| is that operand and their
//         sign moves onto the activations (vpsignb); then vpmaddwd to int32.
//         (An int16 variant, both operands widened once and one vpmaddwd per
//         16 weights, no vpsignb, ran at the same speed here, session 6, so
//         Q8_0 keeps the int8 pack it shares with Q4_0.)
//   Q4_0: the nibbles n = w + 8 (0..15) are the unsigned operand as they are;
//         a pair sum is at most 2 * 15 * 127, so the 8 groups of a half chunk
//         add up in int16 (at most 30 480) before one vpmaddwd; each lane
//         starts at -8 * the block's activation sum, which takes the offset out.
// Per (weight row, activation row) and 256 weights that is 8 x 4 (Q8_0) or
// 8 x 2 + 2 (Q4_0) integer ops + 3 float ops, against 32 FMAs for F32.
//
// Blocking: per task (a run of output features), per chunk of activation
// tiles (their slice of one k-block within L2), per k-block (at most
// kMaxHalves half chunks), per group of R weight rows: the rows' half chunks
// are unpacked once into a small panel in L1 (Q8_0: |q| and q; Q4_0: low and
// high nibbles; F32 scales; a short last chunk zero-filled, so the
// micro-kernel has no tail), then every G activation rows of the chunk run
// against it with R x G accumulators in registers. k-blocks after the first
// add their sums to y.
//
// This file alone is compiled with -mavx2 -mfma -mf16c; kernels.cpp calls it
// only on the avx2 path (a runtime CPU check). No std:: templates here: an
// out-of-line instance compiled with AVX2 could be the copy the linker keeps
// for the whole program.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "engine/qlayout.h"
#include "engine/thread_buffer.h"

namespace firstread::engine::avx2 {
// kernels_avx2.cpp: x[32 n_blocks] to n_blocks activation blocks (engine::BlockQ8Act).
void quantize_act(const float* x, int64_t n_blocks, void* dst);
}  // namespace firstread::engine::avx2

namespace firstread::engine::avx2_gemm {

namespace {

struct QuantisedBlock {  // engine::BlockQ8Act
  float d;
  float s;
  int8_t q[32];
};

constexpr int kHalf = 8;              // blocks per half chunk: one per 32-bit lane of a ymm
constexpr int64_t kActHalf = 320;     // per activation row and half chunk:
constexpr int64_t kActStartAt = 256;  //   8 groups x 32 int8, 8 int32 start values (-8 * block sum),
constexpr int64_t kActScaleAt = 288;  //   8 float scales
// Activation rows are packed in tiles of kTile rows, half chunk by half chunk
// (tile t, half j, row i at (t * halves + j) * kTileHalf + i * kActHalf), so
// the micro-kernel calls of a panel read the packed input in order, one
// stream rather than G. kTile is a multiple of every G used (run_q).
constexpr int kTile = 6;
constexpr int64_t kTileHalf = kTile * kActHalf;
constexpr int64_t kQ8PanelHalf = 544;  // per weight row and half chunk: group g's |q| at 64 g, q at 64 g + 32,
constexpr int64_t kQ8ScaleAt = 512;    //   8 float scales
constexpr int64_t kQ4PanelHalf = 288;  // group g's nibbles (0..15) at 32 g, 8 float scales
constexpr int64_t kQ4ScaleAt = 256;
constexpr int64_t kMaxHalves = 12;        // k-block: the panel of R rows stays well inside L1
constexpr int64_t kActChunkBudget = 128 << 10;  // one k-block's slice of a chunk of activation tiles (L2)

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t n_halves(int64_t k) { return (k / 32 + kHalf - 1) / kHalf; }

inline float hsum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

// The int32 lanes [0, lanes) all ones, the rest zero.
inline __m256i lane_mask(int lanes) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// One 32-block of activations to int8 by the decode path's own quantize_act
// (same scale, same rounding); q[32] in order, returns the sum of q.
inline int32_t quantise_block(const float* xb, int8_t* q, float* d) {
  QuantisedBlock a;
  avx2::quantize_act(xb, 1, &a);
  std::memcpy(q, a.q, 32);
  *d = a.d;
  int32_t sum = 0;
  for (int i = 0; i < 32; ++i) sum += a.q[i];
  return sum;
}

// ------------------------------------------------------------------ panels

// Half chunk j of an engine-layout row of nb blocks: where it starts, its
// stride between groups (4t) and how many of its 8 lanes hold blocks.
struct HalfAt {
  const uint8_t* first;  // group 0 of lane 0
  const uint8_t* scales; // FP16 scale of lane 0
  int64_t group_stride;
  int lanes;
};
inline HalfAt half_at(const uint8_t* row, int64_t nb, int64_t j, int64_t block_bytes, int64_t scales_per_block) {
  const int64_t c = j / 2, half = j % 2;
  const int t = qlayout::chunk_blocks(nb, c * qlayout::kChunk);
  const uint8_t* chunk = row + c * qlayout::kChunk * block_bytes;
  return {chunk + kHalf * 4 * half, chunk + scales_per_block * t + 2 * kHalf * half, 4 * int64_t(t),
          int(min64(kHalf, t - kHalf * half))};
}
inline __m256i load_group(const uint8_t* p, int lanes, __m256i mask) {
  return lanes == kHalf ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                        : _mm256_maskload_epi32(reinterpret_cast<const int*>(p), mask);
}
inline __m256 load_scales(const uint8_t* p, int lanes) {
  alignas(16) uint16_t d[kHalf] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(d, p, size_t(2 * lanes));
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(d)));
}

// Half chunks [j0, j0 + kh) of one Q8_0 row into panel (kh * kQ8PanelHalf bytes).
void q8_panel_row(const uint8_t* row, int64_t nb, int64_t j0, int64_t kh, uint8_t* panel) {
  const __m256i bias = _mm256_set1_epi8(char(0x80));
  for (int64_t j = 0; j < kh; ++j) {
    const HalfAt h = half_at(row, nb, j0 + j, qlayout::kQ8Bytes, 32);
    const __m256i mask = lane_mask(h.lanes);
    uint8_t* out = panel + j * kQ8PanelHalf;
    for (int g = 0; g < 8; ++g) {
      const __m256i q = _mm256_and_si256(_mm256_xor_si256(load_group(h.first + g * h.group_stride, h.lanes, mask), bias), mask);
      _mm256_store_si256(reinterpret_cast<__m256i*>(out + 64 * g), _mm256_abs_epi8(q));
      _mm256_store_si256(reinterpret_cast<__m256i*>(out + 64 * g + 32), q);
    }
    _mm256_store_ps(reinterpret_cast<float*>(out + kQ8ScaleAt), load_scales(h.scales, h.lanes));
  }
}

// The same for a Q4_0 row: groups 0..3 are the low nibbles of the stored
// 4-byte groups, 4..7 their high nibbles.
void q4_panel_row(const uint8_t* row, int64_t nb, int64_t j0, int64_t kh, uint8_t* panel) {
  const __m256i lo4 = _mm256_set1_epi8(0x0F);
  for (int64_t j = 0; j < kh; ++j) {
    const HalfAt h = half_at(row, nb, j0 + j, qlayout::kQ4Bytes, 16);
    const __m256i mask = lane_mask(h.lanes);
    uint8_t* out = panel + j * kQ4PanelHalf;
    for (int g = 0; g < 4; ++g) {
      const __m256i v = load_group(h.first + g * h.group_stride, h.lanes, mask);
      _mm256_store_si256(reinterpret_cast<__m256i*>(out + 32 * g), _mm256_and_si256(v, lo4));
      _mm256_store_si256(reinterpret_cast<__m256i*>(out + 32 * (g + 4)), _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4));
    }
    _mm256_store_ps(reinterpret_cast<float*>(out + kQ4ScaleAt), load_scales(h.scales, h.lanes));
  }
}

// ------------------------------------------------------------------ micro-kernels

// An empty asm that takes the accumulators in registers after each group:
// with the group loop unrolled, GCC otherwise reassociates the integer sums of
// the 8 groups into a tree whose 8 x R x G partial vectors spill to the stack
// (the Q4_0 kernel then ran at about 0.6x in an L1-resident loop, load 6).
template <int R, int G>
inline void keep_in_registers(__m256i (&v)[R][G]) {
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < G; ++i) __asm__("" : "+x"(v[r][i]));
}

// R panel rows (panel_row bytes apart) x G consecutive activation rows of a
// tile (from act), kh half chunks: out[r][i] = the dot product over those k.
template <int R, int G>
inline void q8_tile(const uint8_t* panel, int64_t panel_row, const uint8_t* act, int64_t kh, float (&out)[R][G]) {
  constexpr int64_t act_row = kActHalf;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 facc[R][G];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < G; ++i) facc[r][i] = _mm256_setzero_ps();
  for (int64_t j = 0; j < kh; ++j) {
    const uint8_t* pw = panel + j * kQ8PanelHalf;
    const uint8_t* pa = act + j * kTileHalf;
    __m256i iacc[R][G];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < G; ++i) iacc[r][i] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int g = 0; g < 8; ++g) {
      __m256i a[G];
      for (int i = 0; i < G; ++i) a[i] = _mm256_load_si256(reinterpret_cast<const __m256i*>(pa + i * act_row + 32 * g));
      for (int r = 0; r < R; ++r) {
        const __m256i aq = _mm256_load_si256(reinterpret_cast<const __m256i*>(pw + r * panel_row + 64 * g));
        const __m256i q = _mm256_load_si256(reinterpret_cast<const __m256i*>(pw + r * panel_row + 64 * g + 32));
        for (int i = 0; i < G; ++i)
          iacc[r][i] = _mm256_add_epi32(iacc[r][i], _mm256_madd_epi16(_mm256_maddubs_epi16(aq, _mm256_sign_epi8(a[i], q)), ones));
      }
      keep_in_registers<R, G>(iacc);
    }
    for (int r = 0; r < R; ++r) {
      const __m256 dw = _mm256_load_ps(reinterpret_cast<const float*>(pw + r * panel_row + kQ8ScaleAt));
      for (int i = 0; i < G; ++i) {
        const __m256 da = _mm256_load_ps(reinterpret_cast<const float*>(pa + i * act_row + kActScaleAt));
        facc[r][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[r][i]), _mm256_mul_ps(dw, da), facc[r][i]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < G; ++i) out[r][i] = hsum(facc[r][i]);
}

template <int R, int G>
inline void q4_tile(const uint8_t* panel, int64_t panel_row, const uint8_t* act, int64_t kh, float (&out)[R][G]) {
  constexpr int64_t act_row = kActHalf;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 facc[R][G];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < G; ++i) facc[r][i] = _mm256_setzero_ps();
  for (int64_t j = 0; j < kh; ++j) {
    const uint8_t* pw = panel + j * kQ4PanelHalf;
    const uint8_t* pa = act + j * kTileHalf;
    __m256i s16[R][G];  // int16 pair sums of all 8 groups: |sum| <= 8 * 2 * 15 * 127 = 30480
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < G; ++i) s16[r][i] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int g = 0; g < 8; ++g) {
      __m256i a[G];
      for (int i = 0; i < G; ++i) a[i] = _mm256_load_si256(reinterpret_cast<const __m256i*>(pa + i * act_row + 32 * g));
      for (int r = 0; r < R; ++r) {
        const __m256i wv = _mm256_load_si256(reinterpret_cast<const __m256i*>(pw + r * panel_row + 32 * g));
        for (int i = 0; i < G; ++i) s16[r][i] = _mm256_add_epi16(s16[r][i], _mm256_maddubs_epi16(wv, a[i]));
      }
      keep_in_registers<R, G>(s16);
    }
    for (int r = 0; r < R; ++r) {
      const __m256 dw = _mm256_load_ps(reinterpret_cast<const float*>(pw + r * panel_row + kQ4ScaleAt));
      for (int i = 0; i < G; ++i) {
        const __m256i start = _mm256_load_si256(reinterpret_cast<const __m256i*>(pa + i * act_row + kActStartAt));
        const __m256i isum = _mm256_add_epi32(_mm256_madd_epi16(s16[r][i], ones), start);
        const __m256 da = _mm256_load_ps(reinterpret_cast<const float*>(pa + i * act_row + kActScaleAt));
        facc[r][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, da), facc[r][i]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < G; ++i) out[r][i] = hsum(facc[r][i]);
}

// ------------------------------------------------------------------ driver

// G activation rows from row i0 (sub-tile start: act points at it) against
// the panel's R rows; results for the nvalid real weight rows and the rows
// below m into y (added when `accumulate`: a later k-block).
template <bool Q4, int R, int G>
inline void run_tile(const uint8_t* panel, int64_t panel_row, const uint8_t* act, int64_t kh, float* y, int64_t ldy,
                     int64_t i0, int64_t m, int64_t n, int nvalid, bool accumulate) {
  float out[R][G];
  if (Q4) q4_tile<R, G>(panel, panel_row, act, kh, out);
  else q8_tile<R, G>(panel, panel_row, act, kh, out);
  for (int i = 0; i < G && i0 + i < m; ++i) {
    float* yr = y + (i0 + i) * ldy + n;
    for (int r = 0; r < nvalid; ++r) yr[r] = accumulate ? yr[r] + out[r][i] : out[r][i];
  }
}

template <bool Q4>
void run_q(const uint8_t* w, int64_t n_rows, int64_t k, const uint8_t* packed, int64_t m, float* y, int64_t ldy,
           int64_t n0, int64_t n1) {
  // R weight rows per panel x G activation rows per call: R x G accumulators,
  // G activation vectors and the weight vector(s) in the 16 ymm registers
  // without spills (4 x 3 left 8 of Q4_0's 12 accumulators on the stack).
  constexpr int R = 4, G = 2;
  static_assert(kTile % G == 0, "a tile holds whole sub-tiles");
  constexpr int64_t panel_half = Q4 ? kQ4PanelHalf : kQ8PanelHalf;
  const int64_t nb = k / 32, nh = n_halves(k), tile_bytes = nh * kTileHalf;
  const int64_t row_bytes = nb * (Q4 ? qlayout::kQ4Bytes : qlayout::kQ8Bytes);
  const int64_t n_kblocks = (nh + kMaxHalves - 1) / kMaxHalves, kh_max = (nh + n_kblocks - 1) / n_kblocks;
  // Tiles per chunk: a k-block's slice within the L2 budget, chunks of about equal size.
  const int64_t n_tiles = (m + kTile - 1) / kTile;
  const int64_t most = max64(1, kActChunkBudget / (kh_max * kTileHalf));
  const int64_t n_chunks = (n_tiles + most - 1) / most, chunk = (n_tiles + n_chunks - 1) / n_chunks;
  static thread_local ThreadBuffer store;
  const int64_t panel_row = kh_max * panel_half;
  uint8_t* panel = store.get(R * panel_row);
  for (int64_t t0 = 0; t0 < n_tiles; t0 += chunk) {
    const int64_t t1 = min64(n_tiles, t0 + chunk);
    for (int64_t j0 = 0; j0 < nh; j0 += kh_max) {
      const int64_t kh = min64(kh_max, nh - j0);
      for (int64_t n = n0; n < n1; n += R) {
        // Rows past the end repeat the last one (valid memory); their results are not stored.
        for (int r = 0; r < R; ++r) {
          const uint8_t* row = w + min64(n + r, n_rows - 1) * row_bytes;
          if (Q4) q4_panel_row(row, nb, j0, kh, panel + r * panel_row);
          else q8_panel_row(row, nb, j0, kh, panel + r * panel_row);
        }
        const int nvalid = int(min64(R, n1 - n));
        for (int64_t t = t0; t < t1; ++t) {
          const uint8_t* tile = packed + t * tile_bytes + j0 * kTileHalf;
          // Sub-tiles wholly past m are skipped; rows past m in the last one are zero and not stored.
          for (int i = 0; i < kTile && t * kTile + i < m; i += G)
            run_tile<Q4, R, G>(panel, panel_row, tile + i * kActHalf, kh, y, ldy, t * kTile + i, m, n, nvalid, j0 > 0);
        }
      }
    }
  }
}

}  // namespace

int64_t pack_bytes(int64_t m, int64_t k) { return (m + kTile - 1) / kTile * n_halves(k) * kTileHalf; }
int64_t pack_tiles(int64_t m) { return (m + kTile - 1) / kTile; }

// Activation tiles [t0, t1) of x[m][k] (k a multiple of 32; tile t = rows
// kTile t .. +kTile-1) into dst (32-byte aligned, pack_bytes(m, k) long): per
// half chunk and row the 8 blocks' int8 values by group, their start values
// and scales; lanes past the last block and rows past m zero. The same pack
// serves Q8_0 and Q4_0 weights.
void pack(const float* x, int64_t m, int64_t k, uint8_t* dst, int64_t t0, int64_t t1) {
  const int64_t nb = k / 32, nh = n_halves(k);
  for (int64_t t = t0; t < t1; ++t) {
    uint8_t* tile = dst + t * nh * kTileHalf;
    std::memset(tile, 0, size_t(nh * kTileHalf));
    for (int i = 0; i < kTile && t * kTile + i < m; ++i) {
      const float* xr = x + (t * kTile + i) * k;
      for (int64_t b = 0; b < nb; ++b) {
        alignas(32) int8_t q[32];
        float d;
        const int32_t sum = quantise_block(xr + b * 32, q, &d);
        uint8_t* h = tile + (b / kHalf) * kTileHalf + i * kActHalf;
        const int l = int(b % kHalf);
        for (int g = 0; g < 8; ++g) std::memcpy(h + 32 * g + 4 * l, q + 4 * g, 4);
        const int32_t start = -8 * sum;
        std::memcpy(h + kActStartAt + 4 * l, &start, 4);
        std::memcpy(h + kActScaleAt + 4 * l, &d, 4);
      }
    }
  }
}

// y[m][n] (leading dimension ldy) for output features [n0, n1) of w[n_rows][k]
// (kind 3 = Q8_0, 4 = Q4_0: DType's order), activations packed by pack().
void run(int kind, const void* w, int64_t n_rows, int64_t k, const uint8_t* packed, int64_t m, float* y, int64_t ldy,
         int64_t n0, int64_t n1) {
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  if (kind == 4) run_q<true>(wb, n_rows, k, packed, m, y, ldy, n0, n1);
  else run_q<false>(wb, n_rows, k, packed, m, y, ldy, n0, n1);
}

}  // namespace firstread::engine::avx2_gemm
