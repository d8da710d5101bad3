// Batched Q8_0 / Q4_0 products (prefill, vision) on AMX-INT8 tiles:
// y[m][n] = sum_k x[m][k] * w[n][k], the amx path's GEMM for weight kinds 3
// and 4 (gemm_amx.cpp dispatches here).
//
// One TDPBSSD per 32-block: C (16 activation rows x 16 output features, int32)
// = A (16 activation rows x 32 int8) . B (the block's 32 weights of 16
// features, 8 rows of 16 x 4 bytes). Every (row, block) and (feature, block)
// has its own scale, so the 16 x 16 integer block sums are stored
// (TILESTORED) and an AVX-512 epilogue adds them into 16 float accumulators,
// one vector per activation row: acc[i] += float(C[i]) * (dw[0..16) * dx[i]),
// three vector ops per row and block (convert, scale product, FMA). Two C tiles
// alternate so that the next block's tile product runs while the epilogue
// of this one does; the epilogue, not the tile product, sets the rate
// (engine/README.md, "AMX-INT8").
//
// Signed x signed (TDPBSSD): the weights are made signed while they are
// unpacked into the panel (Q8_0: stored q + 128, XOR 0x80; Q4_0: nibble - 8),
// so no offset term is left. Activations: quantize_act_q8 per row and block,
// exactly as the decode path, so every integer block sum equals the scalar
// path's.
//
// Weights stay in the engine's interleaved layout (qlayout.h): per call, 16
// weight rows at a time are unpacked into a tile panel (per block: the 8 B-tile
// rows, 16 x 4 bytes each, then the 16 rows' F32 scales) by 16 x 16 dword
// transposes of the stored 64-byte groups (the layout already holds one
// 4-byte group of 16 blocks per vector), and the panel serves every
// activation tile of the chunk from L1 / L2.
//
// This file alone is compiled with -mamx-tile -mamx-int8 (and the AVX-512
// flags); it is entered only on the amx path, after CPUID and Linux's tile
// permission were checked (kernels.cpp detect_amx).
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "engine/amx_tiles.h"
#include "engine/qlayout.h"
#include "engine/thread_buffer.h"

namespace firstread::engine {
struct BlockQ8Act;  // kernels.h: {float d; float s; int8_t q[32];}
void quantize_act_q8(const float* x, int64_t cols, BlockQ8Act* dst);
}  // namespace firstread::engine

namespace firstread::engine::amx::int8 {

namespace {

struct BlockQ8ActRaw {  // engine::BlockQ8Act
  float d;
  float s;
  int8_t q[32];
};

constexpr int kQ8 = 3;  // = DType's order (safetensors.h); kQ4 = 4

// Packed activations: per tile of 16 rows and block, the A tile (16 rows x 32
// int8, 32 bytes apart) then the 16 rows' scales (F32).
// Weight panel: per block, the B tile (8 rows: group g = weights 4g..4g+3, 16
// features x 4 bytes) then the 16 features' scales (F32).
constexpr int64_t kBlockBytes = 512 + 64;
constexpr int64_t kScaleAt = 512;

// No std:: templates in this unit (see gemm_avx512.cpp: an out-of-line copy
// compiled with these flags could be the one the linker keeps).
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Activation tiles per chunk: the chunk's packed activations (every block)
// within this budget stay in L2 (2 MB here) while each weight panel passes
// over them. 1.5 MB keeps a ViT tile's 1 025 rows at k = 1 024 (1.18 MB) in
// one chunk: one unpacking of each panel instead of two.
constexpr int64_t kChunkBudget = 3 << 19;

// ldtilecfg's operand (palette 1): tmm0 / tmm1 the C tiles (16 x 64 bytes),
// tmm2 / tmm3 the A tiles (16 x 32), tmm4 / tmm5 the B tiles (8 x 64)
// (amx_tiles.h: why a constant object).
alignas(64) const TileConfig kTileConfig = {
    1, 0, {}, {64, 64, 32, 32, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, {16, 16, 16, 16, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}};

// r[j] lane l -> r[l] lane j (16 x 16 dwords; 64 shuffles).
inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  __m512i u[16];  // u[4i + c], 128-bit lane q: rows 4i..4i+3 of column 4q + c
  for (int i = 0; i < 4; ++i) {
    u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), v2 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
    const __m512i w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44), w2 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_i32x4(v1, w1, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(v1, w1, 0xDD);
    r[8 + c] = _mm512_shuffle_i32x4(v2, w2, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(v2, w2, 0xDD);
  }
}

// Stores lane l of the transposed vectors (= block c0 + l) at panel block
// c0 + l, byte offset `at`, for the t blocks the chunk holds.
inline void store_blocks(const __m512i (&r)[16], int t, uint8_t* panel, int64_t c0, int64_t at) {
  for (int l = 0; l < t; ++l) _mm512_store_si512(panel + (c0 + l) * kBlockBytes + at, r[l]);
}

// The panel of 16 weight rows (rows[j], nb blocks each) for all blocks.
template <bool Q4>
void unpack_panel(const uint8_t* const* rows, int64_t nb, uint8_t* panel) {
  constexpr int64_t bsz = Q4 ? qlayout::kQ4Bytes : qlayout::kQ8Bytes;
  const __m512i lo4 = _mm512_set1_epi8(0x0F), eight = _mm512_set1_epi8(8), sign = _mm512_set1_epi8(int8_t(0x80));
  for (int64_t c0 = 0; c0 < nb; c0 += qlayout::kChunk) {
    const int t = qlayout::chunk_blocks(nb, c0);
    const __mmask16 m = t == qlayout::kChunk ? __mmask16(0xFFFF) : __mmask16((1u << t) - 1);
    __m512i r[16], h[16];
    for (int g = 0; g < (Q4 ? 4 : 8); ++g) {  // stored 4-byte groups (Q4_0: low nibbles g, high g + 4)
      for (int j = 0; j < 16; ++j) r[j] = _mm512_maskz_loadu_epi32(m, rows[j] + c0 * bsz + g * 4 * t);
      if (!Q4) {
        for (int j = 0; j < 16; ++j) r[j] = _mm512_xor_si512(r[j], sign);
      } else {
        for (int j = 0; j < 16; ++j) {
          h[j] = _mm512_sub_epi8(_mm512_and_si512(_mm512_srli_epi16(r[j], 4), lo4), eight);
          r[j] = _mm512_sub_epi8(_mm512_and_si512(r[j], lo4), eight);
        }
        transpose16(h);
        store_blocks(h, t, panel, c0, (g + 4) * 64);
      }
      transpose16(r);
      store_blocks(r, t, panel, c0, g * 64);
    }
    for (int j = 0; j < 16; ++j) {
      const __m256i d = _mm256_maskz_loadu_epi16(m, rows[j] + c0 * bsz + (Q4 ? 16 : 32) * t);
      r[j] = _mm512_castps_si512(_mm512_cvtph_ps(d));
    }
    transpose16(r);
    store_blocks(r, t, panel, c0, kScaleAt);
  }
}

// A tile load whose asm names the 512 bytes it reads: GCC's _tile_loadd
// names none, so the panel's stores just before could be moved past it.
#define AMX_TILE_LOAD_512(T, src, stride)                                                             \
  asm volatile("tileloadd (%1,%2,1), %%tmm" #T ::"m"(*reinterpret_cast<const uint8_t(*)[512]>(src)), \
               "r"(src), "r"(int64_t(stride)))

// One block's tile product into C tile `C` (A tile `A`, B tile `B`): both
// operands are 512 bytes, A 32 bytes a row, B 64.
#define AMX_Q_PRODUCT(C, A, B, act_block, panel_block) \
  do {                                                  \
    _tile_zero(C);                                      \
    AMX_TILE_LOAD_512(A, (act_block), 32);              \
    AMX_TILE_LOAD_512(B, (panel_block), 64);            \
    _tile_dpbssd(C, A, B);                              \
  } while (0)

// acc[i] += float(sums[i]) * (dw * dx[i]) for the 16 rows of a stored C tile.
inline void add_block(const int32_t (*sums)[16], const uint8_t* act_block, const uint8_t* panel_block, __m512 (&acc)[16]) {
  const __m512 dw = _mm512_load_ps(reinterpret_cast<const float*>(panel_block + kScaleAt));
  const float* dx = reinterpret_cast<const float*>(act_block + kScaleAt);
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i)
    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(sums[i])), _mm512_mul_ps(dw, _mm512_set1_ps(dx[i])),
                             acc[i]);
}

// One activation tile (xt: its packed blocks) against the panel, all nb
// blocks; the rows < mvalid, features < nvalid written to y.
void tile_row(const uint8_t* xt, const uint8_t* panel, int64_t nb, float* y, int64_t ldy, int64_t mvalid, int nvalid) {
  alignas(64) int32_t sums[2][16][16];
  // In registers only if every index is a constant, so every loop over acc
  // is unrolled (a store loop to mvalid kept it on the stack: a load and a
  // store per row and block, though with no measurable cost here).
  __m512 acc[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  AMX_Q_PRODUCT(0, 2, 4, xt, panel);
  for (int64_t b = 0; b < nb; b += 2) {
    const uint8_t *x0 = xt + b * kBlockBytes, *p0 = panel + b * kBlockBytes;
    const bool has1 = b + 1 < nb;
    _tile_stored(0, sums[0], 64);
    if (has1) AMX_Q_PRODUCT(1, 3, 5, x0 + kBlockBytes, p0 + kBlockBytes);
    add_block(sums[0], x0, p0, acc);
    if (!has1) break;
    _tile_stored(1, sums[1], 64);
    if (b + 2 < nb) AMX_Q_PRODUCT(0, 2, 4, x0 + 2 * kBlockBytes, p0 + 2 * kBlockBytes);
    add_block(sums[1], x0 + kBlockBytes, p0 + kBlockBytes, acc);
  }
  const __mmask16 cols = nvalid == 16 ? __mmask16(0xFFFF) : __mmask16((1u << nvalid) - 1);
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i)
    if (i < mvalid) _mm512_mask_storeu_ps(y + i * ldy, cols, acc[i]);
}

template <bool Q4>
void run_q(const uint8_t* w, int64_t n_rows, int64_t k, const uint8_t* packed, int64_t m, float* y, int64_t ldy,
           int64_t n0, int64_t n1) {
  const int64_t nb = k / 32, row_bytes = nb * (Q4 ? qlayout::kQ4Bytes : qlayout::kQ8Bytes);
  const int64_t tile_bytes = nb * kBlockBytes, n_tiles = (m + 15) / 16;
  static thread_local ThreadBuffer store;  // the calling thread's weight panel
  uint8_t* panel = store.get(tile_bytes);
  // Chunks of activation tiles within the L2 budget, spread evenly.
  const int64_t most = max64(1, kChunkBudget / tile_bytes);
  const int64_t n_chunks = (n_tiles + most - 1) / most;
  const int64_t chunk = (n_tiles + n_chunks - 1) / n_chunks;
  _tile_loadconfig(&kTileConfig);
  for (int64_t c0 = 0; c0 < n_tiles; c0 += chunk) {
    const int64_t c1 = min64(n_tiles, c0 + chunk);
    for (int64_t n = n0; n < n1; n += 16) {
      // Rows past the end repeat the last one (valid memory); their results are not stored.
      const uint8_t* rows[16];
      for (int j = 0; j < 16; ++j) rows[j] = w + min64(n + j, n_rows - 1) * row_bytes;
      unpack_panel<Q4>(rows, nb, panel);
      const int nvalid = int(min64(16, n1 - n));
      for (int64_t t = c0; t < c1; ++t)
        tile_row(packed + t * tile_bytes, panel, nb, y + t * 16 * ldy + n, ldy, min64(16, m - t * 16), nvalid);
    }
  }
  _tile_release();
}

}  // namespace

int64_t gemm_pack_bytes(int64_t m, int64_t k) { return (m + 15) / 16 * (k / 32) * kBlockBytes; }
int64_t gemm_pack_tiles(int64_t m) { return (m + 15) / 16; }
int64_t gemm_unit_rows() { return 16; }

// Activation rows of tiles [t0, t1) (16 rows each; rows past m are zero),
// quantised per 32-block by the decode path's quantize_act_q8.
void gemm_pack(const float* x, int64_t m, int64_t k, uint8_t* dst, int64_t t0, int64_t t1) {
  const int64_t nb = k / 32, tile_bytes = nb * kBlockBytes;
  BlockQ8ActRaw q[qlayout::kChunk];
  for (int64_t t = t0; t < t1; ++t) {
    uint8_t* tile = dst + t * tile_bytes;
    std::memset(tile, 0, size_t(tile_bytes));
    for (int64_t i = 0; i < 16 && t * 16 + i < m; ++i) {
      const float* xr = x + (t * 16 + i) * k;
      for (int64_t b0 = 0; b0 < nb; b0 += qlayout::kChunk) {
        const int64_t blocks = min64(qlayout::kChunk, nb - b0);
        quantize_act_q8(xr + b0 * 32, blocks * 32, reinterpret_cast<BlockQ8Act*>(q));
        for (int64_t l = 0; l < blocks; ++l) {
          uint8_t* blk = tile + (b0 + l) * kBlockBytes;
          std::memcpy(blk + i * 32, q[l].q, 32);
          std::memcpy(blk + kScaleAt + i * 4, &q[l].d, 4);
        }
      }
    }
  }
}

// y[m][n] (leading dimension ldy) for output features [n0, n1) of w[n_rows][k].
void gemm_run(int kind, const void* w, int64_t n_rows, int64_t k, const uint8_t* packed, int64_t m, float* y,
              int64_t ldy, int64_t n0, int64_t n1) {
  if (kind == kQ8) run_q<false>(static_cast<const uint8_t*>(w), n_rows, k, packed, m, y, ldy, n0, n1);
  else run_q<true>(static_cast<const uint8_t*>(w), n_rows, k, packed, m, y, ldy, n0, n1);
}

}  // namespace firstread::engine::amx::int8
