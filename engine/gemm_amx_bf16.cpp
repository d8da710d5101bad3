// AMX-BF16 GEMMs for batched products with F32, F16 and BF16 weights
// (prefill, vision, projector), and with Q8_0 / Q4_0 weights from 128
// activation rows (gemm_amx.cpp chooses; fewer rows run on AMX-INT8):
// y[m][n] = sum_k x[m][k] * w[n][k] with TDPBF16PS, a 16 x 16 x 32 BF16 tile
// product accumulated in F32.
//
// Q8_0 / Q4_0: each thread dequantises its features once per product into a
// BF16 panel of the same layout as a BF16 weight's (bf16(q * d), see
// pack_quant_tile), and the activations are packed as hi tiles only: one
// TDPBF16PS per 32-block and C tile, no per-block scale epilogue. Both
// roundings (2^-9 each) are of the order of the int8 path's activation
// quantisation (amax / 254 of the block); engine/README.md "AMX-INT8 GEMM".
//
// Accuracy: one BF16 rounding of the activations (2^-9) would miss the
// engine's tolerance, so each F32 activation is split into hi = bf16(a) and
// lo = bf16(a - hi) (16 significant bits together), and so is each F32 or F16
// weight (an F16 weight is exactly hi + lo). Products per k-block:
//   BF16 weights:      w * a_hi + w * a_lo                      (2 TDPBF16PS)
//   F16 / F32 weights: w_hi * a_hi + w_hi * a_lo + w_lo * a_hi  (3; w_lo * a_lo ~ 2^-18 left out)
//
// Layout: the activations are the A operand (tile rows = activation rows, 32 k
// each, packed once per product: hi and lo tiles of 16 rows per k-block, rows
// past m and k past the width zero). The weights are the B operand, whose
// rows are k pairs (VNNI layout: row p holds (w[n][2p], w[n][2p+1]) for 16
// features n): each thread converts the weights of its features into such a
// panel once per product (a 16 x 16 dword transpose per 16 features and
// k-block, plus the hi / lo split for F16 / F32), then runs every activation
// tile against it. So C = y's own layout [activation rows x features], stored
// by TILESTORED straight into y, and the weights in memory stay as stored
// (the decode rows read the same bytes). The alternative, weight rows as the A
// operand straight from memory, needs no panel for BF16 but transposes every
// output tile and still needs a converted panel for F16 / F32 and k tails.
//
// Tiles: C 2 x 2 (tmm0-3: activation tiles i, feature tiles j), A tmm4-5,
// B tmm6-7; every tile 16 rows of 64 bytes; configured once per call, released
// at the end of the call.
//
// This file alone is compiled with the AMX and AVX512-BF16 flags;
// gemm_amx.cpp calls it only on the amx path (CPUID + the kernel's permission).
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "engine/amx_tiles.h"
#include "engine/qlayout.h"
#include "engine/simd512_exp.h"
#include "engine/thread_buffer.h"

namespace firstread::engine::amx::bf16 {

namespace {

enum Kind { kF32 = 0, kF16 = 1, kBF16 = 2, kQ8 = 3, kQ4 = 4 };  // = DType's order (safetensors.h)

constexpr int64_t kTileBytes = 1024;  // 16 rows x 64 bytes
constexpr int64_t kPanelBudget = 1 << 20;  // a thread's weight panel (one segment of its features)
constexpr int64_t kActBudget = 1 << 20;    // activation tiles per chunk (with the panel block, in L2)

// No std:: templates in this unit (see gemm_avx512.cpp): an out-of-line
// instance compiled with these flags could be the one the linker keeps.
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

inline int64_t k_blocks(int64_t k) { return (k + 31) / 32; }
// Bytes of one activation tile (16 rows): hi and lo per k-block.
inline int64_t act_tile_bytes(int64_t k) { return k_blocks(k) * 2 * kTileBytes; }
// The same with hi only (the Q8_0 / Q4_0 products: see run_quant).
inline int64_t act_hi_tile_bytes(int64_t k) { return k_blocks(k) * kTileBytes; }
// Weight parts per k-block in the panel: hi only (BF16, Q8_0 / Q4_0) or hi and lo.
constexpr int weight_parts(int kind) { return kind == kF32 || kind == kF16 ? 2 : 1; }

// tmm0..7 all 16 rows x 64 bytes (amx_tiles.h: why a constant object).
alignas(64) const TileConfig kTileConfig = {
    1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0}, {16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0}};

void configure_tiles() { _tile_loadconfig(&kTileConfig); }

// 16 floats -> their BF16 (round to nearest even) and that BF16 as float.
inline __m256i to_bf16(__m512 v, __m512& as_float) {
  const __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
  as_float = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  return h;
}
// hi = bf16(v), lo = bf16(v - hi), 16 values each.
inline void split_bf16(__m512 v, __m256i& hi, __m256i& lo) {
  __m512 hf, lf;
  hi = to_bf16(v, hf);
  lo = to_bf16(_mm512_sub_ps(v, hf), lf);
}

// Transposes 16 x 16 dwords in place: r[i] element j <-> r[j] element i.
inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {  // u[4g + c], 128-bit lane L: rows 4g..4g+3 of column 4L + c
    u[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g + 0], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g + 0], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i w0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), w1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
    const __m512i w2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44),
                  w3 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
    r[0 + c] = _mm512_shuffle_i32x4(w0, w2, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(w0, w2, 0xDD);
    r[8 + c] = _mm512_shuffle_i32x4(w1, w3, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(w1, w3, 0xDD);
  }
}

// 32 weights [k0, k0 + 32) of one row (the part past k zero) as BF16 in k
// order: hi, and for F16 / F32 lo.
template <int KIND>
inline void weight_row_bf16(const uint8_t* row, int64_t k0, int64_t k, __m512i& hi, __m512i& lo) {
  const int64_t len = min64(32, k - k0);
  const __mmask32 m32 = len == 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << len) - 1);
  if (KIND == kBF16) {
    hi = _mm512_maskz_loadu_epi16(m32, row + k0 * 2);
    return;
  }
  __m512 v0, v1;
  if (KIND == kF16) {
    const __m512i h = _mm512_maskz_loadu_epi16(m32, row + k0 * 2);
    v0 = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
    v1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
  } else {
    const float* p = reinterpret_cast<const float*>(row) + k0;
    v0 = _mm512_maskz_loadu_ps(__mmask16(m32 & 0xFFFF), p);
    v1 = _mm512_maskz_loadu_ps(__mmask16(m32 >> 16), p + 16);
  }
  __m256i h0, l0, h1, l1;
  split_bf16(v0, h0, l0);
  split_bf16(v1, h1, l1);
  hi = _mm512_inserti64x4(_mm512_castsi256_si512(h0), h1, 1);
  lo = _mm512_inserti64x4(_mm512_castsi256_si512(l0), l1, 1);
}

// The panel of features [f0, f0 + nf) (nf <= 16; the rest zero): per k-block
// kb, weight_parts B tiles (hi, lo) at panel + (kb * parts + part) * 1 KB.
template <int KIND>
void pack_weight_tile(const uint8_t* w, int64_t row_bytes, int64_t f0, int64_t nf, int64_t k, uint8_t* panel) {
  constexpr int parts = KIND == kBF16 ? 1 : 2;
  for (int64_t kb = 0; kb < k_blocks(k); ++kb) {
    __m512i hi[16], lo[16];
    for (int n = 0; n < 16; ++n) {
      if (n < nf) {
        weight_row_bf16<KIND>(w + (f0 + n) * row_bytes, kb * 32, k, hi[n], lo[n]);
      } else {
        hi[n] = _mm512_setzero_si512();
        lo[n] = _mm512_setzero_si512();
      }
    }
    transpose16(hi);
    uint8_t* dst = panel + kb * parts * kTileBytes;
    for (int p = 0; p < 16; ++p) _mm512_store_si512(dst + p * 64, hi[p]);
    if (parts == 2) {
      transpose16(lo);
      for (int p = 0; p < 16; ++p) _mm512_store_si512(dst + kTileBytes + p * 64, lo[p]);
    }
  }
}

// ---- Q8_0 / Q4_0 weights: dequantised once per product into a BF16 panel.
//
// Each weight becomes bf16(q * d) (q the signed quant, exact in BF16; d the
// block's FP16 scale as F32), rounded to nearest even like a BF16 weight, so
// the tile product needs no per-block scale and no epilogue (the AMX-INT8
// unit's per-block TILESTORED + scale epilogue cost more than its TDPBSSD).

// Stored 4-byte group of 16 weight rows (rows[j]) for the t blocks of the
// chunk at block c0, signed bytes, transposed: r[l] = block c0 + l, lane j =
// feature j, 4 consecutive weights of the group per lane. Q4_0 byte group h
// gives groups h (low nibbles) and h + 4 (high, in hi4).
template <bool Q4>
inline void load_groups(const uint8_t* const* rows, int64_t at, __mmask16 m, __m512i (&r)[16], __m512i (&hi4)[16]) {
  for (int j = 0; j < 16; ++j) r[j] = _mm512_maskz_loadu_epi32(m, rows[j] + at);
  if (!Q4) {
    const __m512i sign = _mm512_set1_epi8(int8_t(0x80));  // stored q + 128
    for (int j = 0; j < 16; ++j) r[j] = _mm512_xor_si512(r[j], sign);
  } else {
    const __m512i lo4 = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(8);
    for (int j = 0; j < 16; ++j) {
      hi4[j] = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(r[j], 4), lo4), eight);
      r[j] = _mm512_sub_epi8(_mm512_and_si512(r[j], lo4), eight);
    }
    transpose16(hi4);
  }
  transpose16(r);
}

// One group of one block: 16 features x 4 signed weights (dword lanes) times
// the features' scales `d` -> B rows 2g and 2g + 1 (pairs of consecutive k
// per feature, BF16, round to nearest even) at `dst` (B row 2g).
inline void store_group_bf16(__m512i q, __m512 d, uint8_t* dst) {
  // Pair (a, b) of BF16 vectors as cvtne2ps gives them ([a 0..15 | b 0..15])
  // -> per lane n the dword (a[n], b[n]).
  const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512 w0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(q, 24), 24)), d);
  const __m512 w1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(q, 16), 24)), d);
  const __m512 w2 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(q, 8), 24)), d);
  const __m512 w3 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(q, 24)), d);
  _mm512_store_si512(dst, _mm512_permutexvar_epi16(pairs, (__m512i)_mm512_cvtne2ps_pbh(w1, w0)));
  _mm512_store_si512(dst + 64, _mm512_permutexvar_epi16(pairs, (__m512i)_mm512_cvtne2ps_pbh(w3, w2)));
}

// The BF16 panel of features [f0, f0 + nf) (nf <= 16; rows past nf repeat the
// last one: valid memory, their outputs never stored) of a Q8_0 / Q4_0
// matrix in the interleaved layout (qlayout.h): per 32-block kb one B tile
// at panel + kb * 1 KB. Per chunk of 16 blocks: the 16 rows' scales and each
// stored 4-byte group are transposed to lane = feature, then converted.
template <bool Q4>
void pack_quant_tile(const uint8_t* w, int64_t row_bytes, int64_t nb, int64_t f0, int64_t nf, uint8_t* panel) {
  constexpr int64_t bsz = Q4 ? qlayout::kQ4Bytes : qlayout::kQ8Bytes;
  const uint8_t* rows[16];
  for (int j = 0; j < 16; ++j) rows[j] = w + (f0 + min64(j, nf - 1)) * row_bytes;
  for (int64_t c0 = 0; c0 < nb; c0 += qlayout::kChunk) {
    const int t = qlayout::chunk_blocks(nb, c0);
    const __mmask16 m = t == qlayout::kChunk ? __mmask16(0xFFFF) : __mmask16((1u << t) - 1);
    const int64_t chunk_at = c0 * bsz;
    __m512i r[16], hi4[16];
    for (int j = 0; j < 16; ++j)
      r[j] = _mm512_castps_si512(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, rows[j] + chunk_at + (Q4 ? 16 : 32) * t)));
    transpose16(r);
    alignas(64) float scales[16][16];  // [block of the chunk][feature]
    for (int l = 0; l < t; ++l) _mm512_store_si512(scales[l], r[l]);
    for (int g = 0; g < (Q4 ? 4 : 8); ++g) {
      load_groups<Q4>(rows, chunk_at + g * 4 * t, m, r, hi4);
      for (int l = 0; l < t; ++l) {
        uint8_t* tile = panel + (c0 + l) * kTileBytes;
        const __m512 d = _mm512_load_ps(scales[l]);
        store_group_bf16(r[l], d, tile + 2 * g * 64);
        if (Q4) store_group_bf16(hi4[l], d, tile + 2 * (g + 4) * 64);
      }
    }
  }
}

// C[i][j] += A[i] * B[j] for the loaded tiles (i < I, j < J).
template <int I, int J>
inline void products() {
  _tile_dpbf16ps(0, 4, 6);
  if (J > 1) _tile_dpbf16ps(1, 4, 7);
  if (I > 1) _tile_dpbf16ps(2, 5, 6);
  if (I > 1 && J > 1) _tile_dpbf16ps(3, 5, 7);
}

// I activation tiles (a, a_tile bytes apart) x J feature tiles (b, b_tile
// apart) over all nkb k-blocks into C tmm0-3, PRODUCTS tile products per
// k-block: 1 = w * a_hi (Q8_0 / Q4_0: hi-only activation tiles, 1 KB per
// k-block); 2 = w * a_hi + w * a_lo (BF16 weights, no w_lo in the panel);
// 3 = + w_lo * a_hi; 4 = + w_lo * a_lo (attention). (Slicing k so that a feature
// pair's panel slice stays in L1, its C tiles spilled between slices, measured
// 5-15 % slower: the tile loads from L2 keep up.)
template <int I, int J, int PRODUCTS>
inline void tile_block(const uint8_t* a, int64_t a_tile, const uint8_t* b, int64_t b_tile, int64_t nkb) {
  _tile_zero(0);
  if (J > 1) _tile_zero(1);
  if (I > 1) _tile_zero(2);
  if (I > 1 && J > 1) _tile_zero(3);
  constexpr bool wlo = PRODUCTS > 2;
  constexpr int64_t b_step = (wlo ? 2 : 1) * kTileBytes, a_step = (PRODUCTS == 1 ? 1 : 2) * kTileBytes;
  for (int64_t kb = 0; kb < nkb; ++kb) {
    const uint8_t* ak = a + kb * a_step;
    const uint8_t* bk = b + kb * b_step;
    _tile_loadd(6, bk, 64);
    if (J > 1) _tile_loadd(7, bk + b_tile, 64);
    _tile_loadd(4, ak, 64);
    if (I > 1) _tile_loadd(5, ak + a_tile, 64);
    products<I, J>();  // w_hi * a_hi
    if (PRODUCTS == 1) continue;
    if (wlo) {
      _tile_loadd(6, bk + kTileBytes, 64);
      if (J > 1) _tile_loadd(7, bk + b_tile + kTileBytes, 64);
      products<I, J>();  // w_lo * a_hi
      _tile_loadd(6, bk, 64);
      if (J > 1) _tile_loadd(7, bk + b_tile, 64);
    }
    _tile_loadd(4, ak + kTileBytes, 64);
    if (I > 1) _tile_loadd(5, ak + a_tile + kTileBytes, 64);
    products<I, J>();  // w_hi * a_lo
    if (PRODUCTS > 3) {
      _tile_loadd(6, bk + kTileBytes, 64);
      if (J > 1) _tile_loadd(7, bk + b_tile + kTileBytes, 64);
      products<I, J>();  // w_lo * a_lo
    }
  }
}

// TILESTORED of C tile c (GCC's intrinsic pastes the tile number into the
// register name: a literal per case).
inline void tile_store(int c, void* dst, int64_t stride) {
  switch (c) {
    case 0: _tile_stored(0, dst, stride); break;
    case 1: _tile_stored(1, dst, stride); break;
    case 2: _tile_stored(2, dst, stride); break;
    default: _tile_stored(3, dst, stride); break;
  }
}

// Stores C tile c (rows m0.., features f0..) into y: straight when whole,
// else through a buffer, only the valid part.
inline void store_c(int c, float* y, int64_t ldy, int64_t m0, int64_t m, int64_t f0, int64_t f1) {
  const int64_t rows = min64(16, m - m0), cols = min64(16, f1 - f0);
  if (rows <= 0 || cols <= 0) return;
  if (rows == 16 && cols == 16) {
    tile_store(c, y + m0 * ldy + f0, ldy * 4);
    return;
  }
  alignas(64) float buf[16 * 16];
  tile_store(c, buf, 64);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(y + (m0 + r) * ldy + f0, buf + r * 16, size_t(cols) * 4);
}

// One C block (activation rows m0.., features f0.. < f1) into y.
template <int I, int J, int PRODUCTS>
inline void block_and_store(const uint8_t* a, int64_t a_tile, const uint8_t* b, int64_t b_tile, int64_t nkb, float* y,
                            int64_t ldy, int64_t m0, int64_t m, int64_t f0, int64_t f1) {
  tile_block<I, J, PRODUCTS>(a, a_tile, b, b_tile, nkb);
  store_c(0, y, ldy, m0, m, f0, f1);
  if (J > 1) store_c(1, y, ldy, m0, m, f0 + 16, f1);
  if (I > 1) store_c(2, y, ldy, m0 + 16, m, f0, f1);
  if (I > 1 && J > 1) store_c(3, y, ldy, m0 + 16, m, f0 + 16, f1);
}

// n split into near-equal parts of at most `most`, each a multiple of `unit`.
inline int64_t even_part(int64_t n, int64_t most, int64_t unit) {
  const int64_t parts = (n + most - 1) / most;
  return (n + parts - 1) / parts + unit - 1 - ((n + parts - 1) / parts + unit - 1) % unit;
}

// Feature tiles [0, f_tiles) of a converted panel (features f_first .. <
// f_end, b_tile bytes per feature tile) against n_tiles packed activation
// tiles (rows 0 .. m of y): per chunk of activation tiles (within
// kActBudget), per pair of feature tiles (its panel in L2), every pair of
// activation tiles. The tiles are configured by the caller.
template <int P>
void run_panel(const uint8_t* panel, int64_t b_tile, int64_t nkb, int64_t f_tiles, int64_t f_first, int64_t f_end,
               const uint8_t* packed, int64_t a_tile, int64_t n_tiles, int64_t m, float* y, int64_t ldy) {
  const int64_t chunk = even_part(n_tiles, max64(2, kActBudget / a_tile), 2);
  for (int64_t c0 = 0; c0 < n_tiles; c0 += chunk) {
    const int64_t c1 = min64(n_tiles, c0 + chunk);
    for (int64_t f = 0; f < f_tiles; f += 2) {
      const uint8_t* b = panel + f * b_tile;
      const int64_t fa = f_first + f * 16;
      const bool two_f = f + 1 < f_tiles;
      for (int64_t t = c0; t < c1; t += 2) {
        const uint8_t* a = packed + t * a_tile;
        const bool two_t = t + 1 < c1;
        if (two_t && two_f) block_and_store<2, 2, P>(a, a_tile, b, b_tile, nkb, y, ldy, t * 16, m, fa, f_end);
        else if (two_t) block_and_store<2, 1, P>(a, a_tile, b, b_tile, nkb, y, ldy, t * 16, m, fa, f_end);
        else if (two_f) block_and_store<1, 2, P>(a, a_tile, b, b_tile, nkb, y, ldy, t * 16, m, fa, f_end);
        else block_and_store<1, 1, P>(a, a_tile, b, b_tile, nkb, y, ldy, t * 16, m, fa, f_end);
      }
    }
  }
}

// Features [n0, n1) of w (rows row_bytes apart, k each) against every packed
// activation tile: per segment of features (its panel within kPanelBudget)
// the panel converted once, then run_panel.
template <int KIND, int PRODUCTS = KIND == kQ8 || KIND == kQ4 ? 1 : KIND == kBF16 ? 2 : 3>
void run_kind(const uint8_t* w, int64_t row_bytes, int64_t k, const uint8_t* packed, int64_t m, float* y, int64_t ldy,
              int64_t n0, int64_t n1) {
  static_assert(weight_parts(KIND) == 2 || PRODUCTS <= 2, "a BF16 / Q8_0 / Q4_0 panel has no w_lo");
  const int64_t nkb = k_blocks(k);
  const int64_t b_tile = nkb * weight_parts(KIND) * kTileBytes;  // one feature tile's panel
  const int64_t seg = even_part(n1 - n0, max64(32, kPanelBudget / b_tile * 16), 32);
  static thread_local ThreadBuffer panel_store;
  uint8_t* panel = panel_store.get((seg + 15) / 16 * b_tile);
  configure_tiles();
  for (int64_t s0 = n0; s0 < n1; s0 += seg) {
    const int64_t s1 = min64(n1, s0 + seg), f_tiles = (s1 - s0 + 15) / 16;
    for (int64_t f = 0; f < f_tiles; ++f) {
      const int64_t f0 = s0 + f * 16, nf = min64(16, s1 - f0);
      if constexpr (KIND == kQ8 || KIND == kQ4) pack_quant_tile<KIND == kQ4>(w, row_bytes, nkb, f0, nf, panel + f * b_tile);
      else pack_weight_tile<KIND>(w, row_bytes, f0, nf, k, panel + f * b_tile);
    }
    const int64_t a_tile = PRODUCTS == 1 ? act_hi_tile_bytes(k) : act_tile_bytes(k);
    run_panel<PRODUCTS>(panel, b_tile, nkb, f_tiles, s0, s1, packed, a_tile, (m + 15) / 16, m, y, ldy);
  }
  _tile_release();
}

// PV's panel straight from V (n keys x hd, rows ld floats apart): feature
// tile f = head columns 16f.., k = the keys; B row p of k-block kb pairs keys
// 32kb + 2p and + 1 per column (hi, then lo), zero past n and hd. The same
// layout as pack_weight_tile<kF32> of V^T, without transposing V first.
void pack_v_panel(const float* v, int64_t ld, int64_t n, int64_t hd, uint8_t* panel) {
  const int64_t nkb = k_blocks(n), b_tile = nkb * 2 * kTileBytes;
  for (int64_t f = 0; f * 16 < hd; ++f) {
    const int64_t cols = min64(16, hd - f * 16);
    const __mmask16 cmask = cols == 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
    for (int64_t kb = 0; kb < nkb; ++kb)
      for (int p = 0; p < 16; ++p) {
        const int64_t j = kb * 32 + 2 * p;
        const __m512 x0 = j < n ? _mm512_maskz_loadu_ps(cmask, v + j * ld + f * 16) : _mm512_setzero_ps();
        const __m512 x1 = j + 1 < n ? _mm512_maskz_loadu_ps(cmask, v + (j + 1) * ld + f * 16) : _mm512_setzero_ps();
        __m256i h0, l0, h1, l1;
        split_bf16(x0, h0, l0);
        split_bf16(x1, h1, l1);
        uint8_t* dst = panel + f * b_tile + kb * 2 * kTileBytes + p * 64;
        _mm512_store_si512(dst, _mm512_or_si512(_mm512_cvtepu16_epi32(h0), _mm512_slli_epi32(_mm512_cvtepu16_epi32(h1), 16)));
        _mm512_store_si512(dst + kTileBytes,
                           _mm512_or_si512(_mm512_cvtepu16_epi32(l0), _mm512_slli_epi32(_mm512_cvtepu16_epi32(l1), 16)));
      }
  }
}

}  // namespace

int64_t pack_tiles(int64_t m) { return (m + 15) / 16; }
int64_t pack_bytes(int64_t m, int64_t k) { return pack_tiles(m) * act_tile_bytes(k); }

// Activation tiles [t0, t1) of scale * x[m][k] (rows ld floats apart): per
// k-block a hi tile then (LO) a lo tile, row i = activation row 16t + i, its
// 32 k in order (zero past m and k).
template <bool LO = true>
static void pack_rows(const float* x, int64_t ld, int64_t m, int64_t k, float scale, uint8_t* dst, int64_t t0,
                      int64_t t1) {
  const int64_t nkb = k_blocks(k), parts = LO ? 2 : 1;
  const __m512 vs = _mm512_set1_ps(scale);
  for (int64_t t = t0; t < t1; ++t) {
    uint8_t* tile = dst + t * nkb * parts * kTileBytes;
    for (int i = 0; i < 16; ++i) {
      const int64_t row = t * 16 + i;
      for (int64_t kb = 0; kb < nkb; ++kb) {
        uint8_t* hi = tile + kb * parts * kTileBytes + i * 64;
        if (row >= m) {
          std::memset(hi, 0, 64);
          if (LO) std::memset(hi + kTileBytes, 0, 64);
          continue;
        }
        const int64_t len = min64(32, k - kb * 32);
        const __mmask32 m32 = len == 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << len) - 1);
        const float* p = x + row * ld + kb * 32;
        __m256i h0, l0, h1, l1;
        split_bf16(_mm512_mul_ps(_mm512_maskz_loadu_ps(__mmask16(m32 & 0xFFFF), p), vs), h0, l0);
        split_bf16(_mm512_mul_ps(_mm512_maskz_loadu_ps(__mmask16(m32 >> 16), p + 16), vs), h1, l1);
        _mm256_store_si256(reinterpret_cast<__m256i*>(hi), h0);
        _mm256_store_si256(reinterpret_cast<__m256i*>(hi + 32), h1);
        if (!LO) continue;
        _mm256_store_si256(reinterpret_cast<__m256i*>(hi + kTileBytes), l0);
        _mm256_store_si256(reinterpret_cast<__m256i*>(hi + kTileBytes + 32), l1);
      }
    }
  }
}

void pack(const float* x, int64_t m, int64_t k, uint8_t* dst, int64_t t0, int64_t t1) {
  pack_rows(x, k, m, k, 1.f, dst, t0, t1);
}

// The Q8_0 / Q4_0 products' activations: hi tiles only (run_quant).
int64_t pack_hi_bytes(int64_t m, int64_t k) { return pack_tiles(m) * act_hi_tile_bytes(k); }
void pack_hi(const float* x, int64_t m, int64_t k, uint8_t* dst, int64_t t0, int64_t t1) {
  pack_rows<false>(x, k, m, k, 1.f, dst, t0, t1);
}

// Output features per task: two feature tiles (the C block's width).
int64_t unit_rows() { return 32; }

void run(int kind, const void* w, int64_t k, const uint8_t* packed, int64_t m, float* y, int64_t ldy, int64_t n0,
         int64_t n1) {
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  if (kind == kBF16) run_kind<kBF16>(wb, k * 2, k, packed, m, y, ldy, n0, n1);
  else if (kind == kF16) run_kind<kF16>(wb, k * 2, k, packed, m, y, ldy, n0, n1);
  else if (kind == kQ8) run_kind<kQ8>(wb, k / 32 * qlayout::kQ8Bytes, k, packed, m, y, ldy, n0, n1);
  else if (kind == kQ4) run_kind<kQ4>(wb, k / 32 * qlayout::kQ4Bytes, k, packed, m, y, ldy, n0, n1);
  else run_kind<kF32>(wb, k * 4, k, packed, m, y, ldy, n0, n1);
}

}  // namespace firstread::engine::amx::bf16

namespace firstread::engine::amx {

// ------------------------------------------------------------------ attention (vision)
//
// Non-causal attention of one head on the tiles, per block of kQueryTiles
// query tiles so that the block's scores and probabilities stay in L2 with
// both panels: S = (scale q) K^T with K's rows as F32 "weights" (panel built
// once per head), then per query row the softmax's numerators e = exp(s -
// max) written straight into P's packed tiles (hi / lo), out = P V (V's panel
// built straight from V once per head), each output row times 1 / sum e.
// Both products take the fourth tile product (w_lo * a_lo): with 3 the unit
// test's worst output error was 1.3e-5 of its 2e-5; the 4th on PV alone
// 1.05e-5, on QK^T alone 1.3e-5, on both 8.3e-6.

namespace {
constexpr int64_t kQueryTiles = 4;
inline int64_t floats_64(int64_t bytes) { return (bytes + 63) / 64 * 16; }

// Query row s[0 .. n) of S: e = exp(s - max) into its row of P's packed tile
// (`row` = the tile + 64 * its row; hi then lo for k-blocks 0 .. nkb, zero
// past n: a causal row's later keys are zeros of the blocks PV reads);
// returns 1 / sum e.
float softmax_pack_row(const float* s, int64_t n, int64_t nkb, uint8_t* row) {
  using simd512::exp16;
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 valid = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
    mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(mx, valid, s + j));
  }
  const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t kb = 0; kb < nkb; ++kb)
    for (int h = 0; h < 2; ++h) {
      const int64_t j = kb * 32 + h * 16, left = n - j;
      const __mmask16 valid = left >= 16 ? __mmask16(0xFFFF) : left > 0 ? __mmask16((1u << left) - 1) : __mmask16(0);
      const __m512 e = _mm512_maskz_mov_ps(valid, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(valid, s + j), vmax)));
      sum = _mm512_add_ps(sum, e);
      __m256i hi, lo;
      bf16::split_bf16(e, hi, lo);
      uint8_t* dst = row + kb * 2 * bf16::kTileBytes + h * 32;
      _mm256_store_si256(reinterpret_cast<__m256i*>(dst), hi);
      _mm256_store_si256(reinterpret_cast<__m256i*>(dst + bf16::kTileBytes), lo);
    }
  return 1.f / _mm512_reduce_add_ps(sum);
}

// The scratch regions of an attention of n queries over `keys` keys (floats,
// each a multiple of 16).
struct AttentionLayout {
  int64_t q_packed, k_panel, v_panel, scores, p_packed, inv_sum;
  AttentionLayout(int64_t n, int64_t keys, int64_t hd)
      : q_packed(floats_64(bf16::pack_bytes(n, hd))),
        k_panel(floats_64((keys + 15) / 16 * bf16::k_blocks(hd) * 2 * bf16::kTileBytes)),
        v_panel(floats_64((hd + 15) / 16 * bf16::k_blocks(keys) * 2 * bf16::kTileBytes)),
        scores(floats_64(kQueryTiles * 16 * keys * 4)),
        p_packed(floats_64(kQueryTiles * bf16::act_tile_bytes(keys))),
        inv_sum(floats_64(kQueryTiles * 16 * 4)) {}
  int64_t total() const { return 16 + q_packed + k_panel + v_panel + scores + p_packed + inv_sum; }
};

// n queries (rows ldq floats apart) over `keys` keys (k, v rows ldkv apart).
// causal_from < 0: every query sees every key (vision); otherwise query i
// sees keys 0 .. causal_from + i (the decoder's prefill: causal_from =
// n_past), and a block of query tiles multiplies only the keys its last row
// sees (QK^T's features and PV's k-blocks end there).
void attention_tiles(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv, int64_t n,
                     int64_t keys, int64_t causal_from, int64_t hd, float scale, float* out, int64_t ldo,
                     float* scratch) {
  using bf16::min64;
  const AttentionLayout L(n, keys, hd);
  float* base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t(63));
  uint8_t* qp = reinterpret_cast<uint8_t*>(base);
  uint8_t* k_panel = reinterpret_cast<uint8_t*>(base + L.q_packed);
  uint8_t* v_panel = reinterpret_cast<uint8_t*>(base + L.q_packed + L.k_panel);
  float* s = base + L.q_packed + L.k_panel + L.v_panel;
  uint8_t* pp = reinterpret_cast<uint8_t*>(s + L.scores);
  float* inv_sum = s + L.scores + L.p_packed;
  const int64_t q_tiles = bf16::pack_tiles(n), key_tiles = bf16::pack_tiles(keys), nkb_q = bf16::k_blocks(hd);
  const int64_t q_tile = bf16::act_tile_bytes(hd), p_tile = bf16::act_tile_bytes(keys);
  const int64_t k_tile = nkb_q * 2 * bf16::kTileBytes, v_tile = bf16::k_blocks(keys) * 2 * bf16::kTileBytes;
  bf16::pack_rows(q, ldq, n, hd, scale, qp, 0, q_tiles);
  for (int64_t f = 0; f < key_tiles; ++f)
    bf16::pack_weight_tile<bf16::kF32>(reinterpret_cast<const uint8_t*>(k), ldkv * 4, f * 16, min64(16, keys - f * 16),
                                       hd, k_panel + f * k_tile);
  bf16::pack_v_panel(v, ldkv, keys, hd, v_panel);
  bf16::configure_tiles();
  for (int64_t t0 = 0; t0 < q_tiles; t0 += kQueryTiles) {
    const int64_t tb = min64(kQueryTiles, q_tiles - t0), rows = min64(tb * 16, n - t0 * 16);
    const int64_t seen = causal_from < 0 ? keys : min64(keys, causal_from + t0 * 16 + rows);
    const int64_t nkb_p = bf16::k_blocks(seen);
    bf16::run_panel<4>(k_panel, k_tile, nkb_q, bf16::pack_tiles(seen), 0, seen, qp + t0 * q_tile, q_tile, tb, rows, s,
                       keys);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t valid = causal_from < 0 ? keys : causal_from + t0 * 16 + i + 1;
      inv_sum[i] = softmax_pack_row(s + i * keys, valid, nkb_p, pp + i / 16 * p_tile + i % 16 * 64);
    }
    for (int64_t i = rows; i < tb * 16; ++i)  // the last tile's rows past n
      for (int64_t kb = 0; kb < nkb_p; ++kb) {
        uint8_t* dst = pp + i / 16 * p_tile + kb * 2 * bf16::kTileBytes + i % 16 * 64;
        std::memset(dst, 0, 64);
        std::memset(dst + bf16::kTileBytes, 0, 64);
      }
    float* o = out + t0 * 16 * ldo;
    bf16::run_panel<4>(v_panel, v_tile, nkb_p, (hd + 15) / 16, 0, hd, pp, p_tile, tb, rows, o, ldo);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t c = 0; c < hd; ++c) o[i * ldo + c] *= inv_sum[i];
  }
  _tile_release();
}

}  // namespace

int64_t attention_scratch_floats(int64_t n, int64_t hd) { return AttentionLayout(n, n, hd).total(); }

void attention_head(const float* q, const float* k, const float* v, int64_t ld, int64_t n, int64_t hd, float scale,
                    float* out, int64_t ldo, float* scratch) {
  attention_tiles(q, ld, k, v, ld, n, n, -1, hd, scale, out, ldo, scratch);
}

int64_t causal_attention_scratch_floats(int64_t n, int64_t n_past, int64_t hd) {
  return AttentionLayout(n, n_past + n, hd).total();
}

void causal_attention_head(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv, int64_t n,
                           int64_t n_past, int64_t hd, float scale, float* out, int64_t ldo, float* scratch) {
  attention_tiles(q, ldq, k, v, ldkv, n, n_past + n, n_past, hd, scale, out, ldo, scratch);
}

}  // namespace firstread::engine::amx
