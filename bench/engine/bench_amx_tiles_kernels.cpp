// The loops bench_amx_tiles.cpp times (this file alone is compiled with the
// AMX-INT8 and AVX-512 flags; entered only after the engine's AMX check).
// Each loop is what gemm_amx_int8.cpp does per 32-block and 16 x 16 C tile,
// or one piece of it, on L1-resident data, so that the pieces' costs and
// whether they overlap can be read apart. No std:: templates here (see
// gemm_avx512.cpp).
#include <immintrin.h>

#include <cstdint>

#include "engine/amx_tiles.h"

namespace amx_tiles {

namespace {
using firstread::engine::amx::TileConfig;
// tmm0-1: C (16 x 64 bytes), tmm2-3: A (16 x 32), tmm4-5: B (8 x 64), tmm6-7: full 16 x 64 (K = 64).
alignas(64) const TileConfig kConfig = {1, 0, {}, {64, 64, 32, 32, 64, 64, 64, 64}, {16, 16, 16, 16, 8, 8, 16, 16}};
constexpr int64_t kBlock = 576;  // the GEMM's packed block: 512 bytes of tile data + 16 F32 scales
alignas(64) uint8_t g_act[64 * kBlock], g_panel[64 * kBlock];
alignas(64) int32_t g_sums[2][16][16];
float g_sink[256];

inline void product(const uint8_t* a, const uint8_t* b, bool even) {
  if (even) {
    _tile_zero(0);
    _tile_loadd(2, a, 32);
    _tile_loadd(4, b, 64);
    _tile_dpbssd(0, 2, 4);
  } else {
    _tile_zero(1);
    _tile_loadd(3, a, 32);
    _tile_loadd(5, b, 64);
    _tile_dpbssd(1, 3, 5);
  }
}
// The epilogue of one block: acc[i] += float(sums[i]) * (dw * dx[i]).
inline void epilogue(const int32_t (*sums)[16], const uint8_t* a, const uint8_t* b, __m512 (&acc)[16]) {
  const __m512 dw = _mm512_load_ps(reinterpret_cast<const float*>(b + 512));
  const float* dx = reinterpret_cast<const float*>(a + 512);
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i)
    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_load_si512(sums[i])), _mm512_mul_ps(dw, _mm512_set1_ps(dx[i])),
                             acc[i]);
}
}  // namespace

void setup() {
  for (int64_t b = 0; b < 64; ++b)
    for (int i = 0; i < 512; ++i) {
      g_act[b * kBlock + i] = uint8_t(i * 7 + b);
      g_panel[b * kBlock + i] = uint8_t(i * 13 + b);
    }
  for (int64_t b = 0; b < 64; ++b)
    for (int i = 0; i < 16; ++i) {
      reinterpret_cast<float*>(g_act + b * kBlock + 512)[i] = 1e-3f;
      reinterpret_cast<float*>(g_panel + b * kBlock + 512)[i] = 1e-3f;
    }
  _tile_loadconfig(&kConfig);
}
void teardown() { _tile_release(); }

// Single instructions, n times (independent where the hardware allows).
void dpbssd_k32(int64_t n) {
  for (int64_t i = 0; i < n; ++i) _tile_dpbssd(0, 2, 4);
}
void dpbssd_k32_two_c(int64_t n) {  // per iteration 2
  for (int64_t i = 0; i < n; ++i) {
    _tile_dpbssd(0, 2, 4);
    _tile_dpbssd(1, 3, 5);
  }
}
void dpbssd_k64_two_c(int64_t n) {  // per iteration 2
  for (int64_t i = 0; i < n; ++i) {
    _tile_dpbssd(0, 6, 7);
    _tile_dpbssd(1, 6, 7);
  }
}
void tilestored_c(int64_t n) {
  for (int64_t i = 0; i < n; ++i) _tile_stored(0, g_sums[i & 1], 64);
}
void tileloadd_a(int64_t n) {
  for (int64_t i = 0; i < n; ++i) _tile_loadd(2, g_act + (i & 63) * kBlock, 32);
}
void tileloadd_b(int64_t n) {
  for (int64_t i = 0; i < n; ++i) _tile_loadd(4, g_panel + (i & 63) * kBlock, 64);
}

// The GEMM's inner loop over nb (even) blocks, n times, in four variants:
// mode 0 all of it; 1 no epilogue (the tile side); 2 no tile product (store +
// epilogue of whatever the C tiles hold); 3 no store (epilogue of stale sums).
template <int MODE>
void blocks(int64_t n, int64_t nb) {
  for (int64_t r = 0; r < n; ++r) {
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
    if (MODE != 2) product(g_act, g_panel, true);
    for (int64_t b = 0; b < nb; b += 2) {
      const uint8_t *a = g_act + b * kBlock, *p = g_panel + b * kBlock;
      if (MODE != 3) _tile_stored(0, g_sums[0], 64);
      if (MODE != 2) product(a + kBlock, p + kBlock, false);
      if (MODE != 1) epilogue(g_sums[0], a, p, acc);
      if (MODE != 3) _tile_stored(1, g_sums[1], 64);
      if (MODE != 2 && b + 2 < nb) product(a + 2 * kBlock, p + 2 * kBlock, true);
      if (MODE != 1) epilogue(g_sums[1], a + kBlock, p + kBlock, acc);
    }
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) _mm512_storeu_ps(g_sink + 16 * (i & 15), acc[i]);
  }
}
void blocks_all(int64_t n, int64_t nb) { blocks<0>(n, nb); }
void blocks_tile_side(int64_t n, int64_t nb) { blocks<1>(n, nb); }
void blocks_store_epilogue(int64_t n, int64_t nb) { blocks<2>(n, nb); }
void blocks_no_store(int64_t n, int64_t nb) { blocks<3>(n, nb); }
// The epilogue alone (no tile instruction at all), nb blocks n times.
void blocks_epilogue_only(int64_t n, int64_t nb) {
  for (int64_t r = 0; r < n; ++r) {
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) epilogue(g_sums[b & 1], g_act + b * kBlock, g_panel + b * kBlock, acc);
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) _mm512_storeu_ps(g_sink + 16 * (i & 15), acc[i]);
  }
}

}  // namespace amx_tiles
