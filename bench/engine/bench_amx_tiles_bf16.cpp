// The AMX-BF16 loop bench_amx_tiles.cpp times for gemm_amx_bf16.cpp's
// run_panel: the 2 x 2 tile step (two B and two A TILELOADD, four
// TDPBF16PS into C tmm0-3) over nkb k-blocks, with the A and B tiles either
// L1-resident or streaming from L2 as in the real product (this file alone
// is compiled with the AMX-BF16 flags; entered only after the engine's AMX
// check). No std:: templates here (see gemm_avx512.cpp).
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>

#include "engine/amx_tiles.h"

namespace amx_tiles {

namespace {
using firstread::engine::amx::TileConfig;
alignas(64) const TileConfig kBf16Config = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};
constexpr int64_t kTile = 1024;  // one 16 x 64-byte tile

// One C block: the tiles of k-blocks 0 .. nkb of an A pair (a, a + a_tile)
// and a B pair (b, b + b_tile), in run_panel's order.
void step_block(const uint8_t* a, int64_t a_tile, const uint8_t* b, int64_t b_tile, int64_t nkb) {
  for (int64_t kb = 0; kb < nkb; ++kb) {
    _tile_loadd(6, b + kb * kTile, 64);
    _tile_loadd(7, b + b_tile + kb * kTile, 64);
    _tile_loadd(4, a + kb * kTile, 64);
    _tile_loadd(5, a + a_tile + kb * kTile, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
}
}  // namespace

// a_tiles activation tiles and b_tiles feature tiles of nkb k-blocks each
// (small values: L1-resident; the real product's: A 560 KB, B 1.1 MB, in
// L2), every B pair against every A pair, `rounds` times. Returns the steps
// (one step = 4 TDPBF16PS = 65 536 flop).
int64_t bf16_steps(int64_t rounds, int64_t nkb, int64_t a_tiles, int64_t b_tiles) {
  const int64_t tile = nkb * kTile;
  auto* a = static_cast<uint8_t*>(std::aligned_alloc(64, size_t(a_tiles * tile)));
  auto* b = static_cast<uint8_t*>(std::aligned_alloc(64, size_t(b_tiles * tile)));
  // small BF16 values (exponent bits kept low), so no lane sees inf / NaN
  for (int64_t i = 0; i < a_tiles * tile; ++i) a[i] = uint8_t((i * 7) & 0x3f);
  for (int64_t i = 0; i < b_tiles * tile; ++i) b[i] = uint8_t((i * 5) & 0x3f);
  _tile_loadconfig(&kBf16Config);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  int64_t steps = 0;
  for (int64_t r = 0; r < rounds; ++r)
    for (int64_t f = 0; f + 1 < b_tiles; f += 2)
      for (int64_t t = 0; t + 1 < a_tiles; t += 2) {
        step_block(a + t * tile, tile, b + f * tile, tile, nkb);
        steps += nkb;
      }
  _tile_release();
  std::free(a);
  std::free(b);
  return steps;
}

}  // namespace amx_tiles
