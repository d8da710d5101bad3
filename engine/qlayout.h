// The engine's in-memory (and weight-cache) layout of Q8_0 / Q4_0 rows
// (issue 13). Same blocks and the same bytes per row as llama.cpp's (34 / 18
// bytes per 32 weights), rearranged so that one 64-byte vector holds the same
// four bytes of 16 blocks: a batched-decode kernel then does one vpdpbusd per
// 4-byte group for 16 blocks at once (8 per 512 weights and input) instead of
// one per block pair plus the shuffles to build it.
//
// A row of nb blocks is cut into chunks of 16 blocks (the last one holds the
// t = nb % 16 blocks that are left, when nb is not a multiple of 16: a short
// chunk, nothing padded). Chunk c starts at byte c * 16 * block_bytes, holds
// t blocks (16 or the tail's count), lane l = block 16c + l:
//   Q8_0: bytes [g * 4t + 4l, +4) = weights 4g .. 4g+3 of lane l, g = 0..7,
//         stored unsigned (q + 128, so vpdpbusd needs no per-load fix-up);
//         then t FP16 scales at 32t + 2l.
//   Q4_0: bytes [h * 4t + 4l, +4) = llama.cpp's qs[4h .. 4h+3] of lane l,
//         h = 0..3 (low nibbles: weights 4h.., high: 16 + 4h..); then t FP16
//         scales at 16t + 2l.
// So for both formats "group g" (g = 0..7) is weights 4g .. 4g+3 of a block,
// and Q4_0's groups 4..7 are the high nibbles of the bytes of groups 0..3.
//
// The helpers are `static inline` on purpose: gemm_avx512.cpp includes this
// header with AVX-512 code generation, and an ordinary inline function could
// be the out-of-line copy the linker keeps for the whole program.
#pragma once

#include <cstdint>
#include <cstring>

namespace firstread::engine::qlayout {

constexpr int kChunk = 16;  // blocks per chunk
constexpr int64_t kQ8Bytes = 34, kQ4Bytes = 18;

// Blocks in the chunk that holds block b of a row of nb blocks.
static inline int chunk_blocks(int64_t nb, int64_t b) {
  const int64_t left = nb - b / kChunk * kChunk;
  return int(left < kChunk ? left : kChunk);
}

// Block b of a Q8_0 row in llama.cpp's terms: scale bits and 32 signed weights.
static inline void q8_read(const void* row, int64_t nb, int64_t b, uint16_t* d, int8_t* q) {
  const uint8_t* c = static_cast<const uint8_t*>(row) + b / kChunk * kChunk * kQ8Bytes;
  const int t = chunk_blocks(nb, b), l = int(b % kChunk);
  for (int g = 0; g < 8; ++g) {  // four bytes at a time, the +128 taken off all four
    uint32_t v;
    std::memcpy(&v, c + g * 4 * t + 4 * l, 4);
    v ^= 0x80808080u;
    std::memcpy(q + 4 * g, &v, 4);
  }
  std::memcpy(d, c + 32 * t + 2 * l, 2);
}
static inline void q8_write(void* row, int64_t nb, int64_t b, uint16_t d, const int8_t* q) {
  uint8_t* c = static_cast<uint8_t*>(row) + b / kChunk * kChunk * kQ8Bytes;
  const int t = chunk_blocks(nb, b), l = int(b % kChunk);
  for (int g = 0; g < 8; ++g) {
    uint32_t v;
    std::memcpy(&v, q + 4 * g, 4);
    v ^= 0x80808080u;
    std::memcpy(c + g * 4 * t + 4 * l, &v, 4);
  }
  std::memcpy(c + 32 * t + 2 * l, &d, 2);
}
// Block b of a Q4_0 row: scale bits and llama.cpp's 16 nibble bytes.
static inline void q4_read(const void* row, int64_t nb, int64_t b, uint16_t* d, uint8_t* qs) {
  const uint8_t* c = static_cast<const uint8_t*>(row) + b / kChunk * kChunk * kQ4Bytes;
  const int t = chunk_blocks(nb, b), l = int(b % kChunk);
  for (int h = 0; h < 4; ++h) std::memcpy(qs + 4 * h, c + h * 4 * t + 4 * l, 4);
  std::memcpy(d, c + 16 * t + 2 * l, 2);
}
static inline void q4_write(void* row, int64_t nb, int64_t b, uint16_t d, const uint8_t* qs) {
  uint8_t* c = static_cast<uint8_t*>(row) + b / kChunk * kChunk * kQ4Bytes;
  const int t = chunk_blocks(nb, b), l = int(b % kChunk);
  for (int h = 0; h < 4; ++h) std::memcpy(c + h * 4 * t + 4 * l, qs + 4 * h, 4);
  std::memcpy(c + 16 * t + 2 * l, &d, 2);
}

}  // namespace firstread::engine::qlayout
