// The tile configuration that ldtilecfg loads (palette 1), shared by the AMX
// units (gemm_amx_bf16.cpp, gemm_amx_int8.cpp). Each unit keeps one constant
// object of it: GCC's _tile_loadconfig names only the operand's first bytes
// as read, so stores into a local configuration could be dropped.
#pragma once

#include <cstdint>

namespace firstread::engine::amx {

struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];  // bytes per row of tmm0..15
  uint8_t rows[16];
};

}  // namespace firstread::engine::amx
