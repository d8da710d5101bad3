// AVX-512 GEMMs for batched products (prefill, vision) straight from the
// stored weight format: y[m][n] = sum_k x[m][k] * w[n][k].
//
// Layout choice: the weights stay as stored (row-major, BF16 / F16, or Q8_0 /
// Q4_0 blocks in the engine's interleaved layout, qlayout.h) and are
// *broadcast* a few bytes at a time; the activations, which are small and converted per call
// anyway, are packed once per product into tiles of 16 rows so that one vector
// holds the same k of 16 activation rows. The micro-kernel is then an outer
// product (NR weight rows x MT tiles of 16 activation rows) with no horizontal
// reduction and no weight copy at load.
//
//   BF16 / F16: activations in F32, each weight converted exactly (16 at a
//         time into an L1 panel) and broadcast from it, vfmadd231ps (vdpbf16ps
//         measured slower here, see the F16 / BF16 section)
//   Q8_0 / Q4_0: activations quantised per row and 32-block to int8 (the same
//         rounding as the decode path), weights unsigned (Q8_0: stored as
//         w + 128; Q4_0: the nibble n = w + 8), vpdpbusd, the offset taken out by
//         starting each block's integer sum at -offset * sum(a), then one
//         convert + scale FMA per block.
//
// This file alone is compiled with the AVX-512 flags; kernels.cpp calls it only
// after a runtime CPU check.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>

#include "engine/qlayout.h"
#include "engine/simd512_exp.h"

namespace firstread::engine {
float f16_to_f32(uint16_t v);
}

namespace firstread::engine::avx512 {

namespace {

struct BlockQ8Raw {
  uint16_t d;
  int8_t q[32];
};
struct BlockQ4Raw {
  uint16_t d;
  uint8_t qs[16];
};

enum Kind { kF32 = 0, kF16 = 1, kBF16 = 2, kQ8 = 3, kQ4 = 4 };  // = DType's order (safetensors.h)

// Packed-activation tile sizes (bytes) for one tile of 16 rows.
inline int64_t f32_tile_bytes(int64_t k) { return k * 16 * 4; }
// Per 32-block: 8 groups x 16 rows x 4 int8, 16 int32 initial sums, 16 float scales.
constexpr int64_t kQTileBlock = 512 + 64 + 64;
inline int64_t q_tile_bytes(int64_t k) { return (k / 32) * kQTileBlock; }

// No std:: templates (containers, std::min/max) in this unit: an out-of-line
// instance compiled with AVX-512 could be the copy the linker keeps for the
// whole program, which would then fault on a CPU without AVX-512.
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// FP16 -> float by table (exact).
const float* f16_table() {
  static const float* table = [] {
    float* t = new float[65536];
    for (uint32_t i = 0; i < 65536; ++i) t[i] = f16_to_f32(uint16_t(i));
    return t;
  }();
  return table;
}

inline int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Writes the NR x MT accumulator tiles (tile t: activation rows m0 + 16t ..
// +15, column n0 + r in acc[r][t]) to y through a small buffer, one output
// row's nvalid values at a time: a 16-lane scatter per column cost about a
// third of the BF16 GEMM at k = 896.
template <int NR, int MT>
inline void store_tiles(float* y, int64_t ldy, int64_t m0, int64_t m_total, int64_t n0, int nvalid,
                        const __m512 (&acc)[NR][MT]) {
  alignas(64) float buf[NR][16];
  for (int t = 0; t < MT; ++t) {
    const int64_t row0 = m0 + 16 * t, valid = min64(16, m_total - row0);
    if (valid <= 0) return;
    for (int r = 0; r < NR; ++r) _mm512_store_ps(buf[r], acc[r][t]);
    for (int64_t l = 0; l < valid; ++l) {
      float* out = y + (row0 + l) * ldy + n0;
      for (int r = 0; r < nvalid; ++r) out[r] = buf[r][l];
    }
  }
}

// ------------------------------------------------------------------ F16 / BF16

// Each weight converted exactly to float and broadcast against F32
// activations: vfmadd231ps. The weights of NR rows are converted a block of
// kWeightBlock at a time into a small F32 panel on the stack (BF16: zero
// extension and a shift, F16: vcvtph2ps; 16 weights per instruction), so the
// inner loop broadcasts each weight straight from L1 (a load, not a shuffle:
// a broadcast from a general register takes the port the FMAs need) and does
// nothing but FMAs. vdpbf16ps would round the activations to BF16 and runs at
// a quarter of the FMA rate on the Emerald Rapids VM measured (engine/README.md).
//
// Blocking (session 5), GotoBLAS's loop order: the weights are the operand
// that comes from memory, so each is read once per product (per chunk of
// activation tiles, and a chunk now usually holds every tile), not once per
// 64 activation rows as before:
//   for each chunk of tiles (its accumulators fit the L2 budget below)
//     for each k-block of kc (the chunk's activation slice fits L2)
//       for each group of NR = 12 output rows: convert their kc weights into
//         the L1 panel once, then run the chunk's tiles MT = 2 at a time
//         against it (2 activation loads + 12 broadcasts per 24 FMAs)
// The accumulators of every (row group, tile) of the chunk live in a
// per-thread store between k-blocks (in the kernel's own layout, one vector
// per row and tile). Per element the FMAs are still those of a plain
// sequential sum over k from zero (a float stored and reloaded is exact), so
// the results are bit for bit those of the former kernels.
constexpr int64_t kWeightBlock = 256;  // the largest kc
constexpr int kF16Rows = 12;           // NR: output rows per panel
constexpr int kF16Tiles = 2;           // MT: activation tiles per pass
constexpr int64_t kF16SliceBudget = 512 << 10;  // one k-block of a chunk's activations
constexpr int64_t kF16AccBudget = 640 << 10;    // a chunk's accumulators

// Converts NR rows' weights [k0, k0 + kb) (BF16, F16 or F32) to F32 in panel[r][0 .. kb).
template <int KIND, int NR>
inline void convert_panel(const void* const* rows, int64_t k0, int64_t kb, float (*panel)[kWeightBlock]) {
  for (int r = 0; r < NR; ++r)
    for (int64_t j = 0; j < kb; j += 16) {
      const int64_t len = min64(16, kb - j);
      const __mmask16 mask = len == 16 ? __mmask16(0xffff) : __mmask16((1u << len) - 1);
      if (KIND == kF32) {
        _mm512_store_ps(panel[r] + j, _mm512_maskz_loadu_ps(mask, static_cast<const float*>(rows[r]) + k0 + j));
        continue;
      }
      const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(rows[r]) + k0 + j);
      _mm512_store_ps(panel[r] + j, KIND == kBF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                                                  : _mm512_cvtph_ps(h));
    }
}

// MT tiles (xk: their k-block start, tile_floats apart) against the panel's NR
// rows for kb k: c[t][r] (= 0 when first) += sum_i x[t][i] * panel[r][i], in k order.
template <int NR, int MT>
inline void f16_pass(const float (*panel)[kWeightBlock], const float* xk, int64_t tile_floats, int64_t kb, bool first,
                     __m512 (*c)[kF16Rows]) {
  __m512 acc[NR][MT];
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < MT; ++t) acc[r][t] = first ? _mm512_setzero_ps() : c[t][r];
  for (int64_t i = 0; i < kb; ++i) {
    __m512 xv[MT];
    for (int t = 0; t < MT; ++t) xv[t] = _mm512_load_ps(xk + t * tile_floats + i * 16);
    for (int r = 0; r < NR; ++r) {
      const __m512 wb = _mm512_set1_ps(panel[r][i]);
      for (int t = 0; t < MT; ++t) acc[r][t] = _mm512_fmadd_ps(xv[t], wb, acc[r][t]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < MT; ++t) c[t][r] = acc[r][t];
}

// The calling thread's accumulator store (grows to the largest chunk seen, then stays).
struct AccStore {
  __m512* p = nullptr;
  int64_t cap = 0;
  ~AccStore() { ::operator delete[](p, std::align_val_t(64)); }
  __m512* get(int64_t vectors) {
    if (vectors > cap) {
      ::operator delete[](p, std::align_val_t(64));
      p = static_cast<__m512*>(::operator new[](size_t(vectors) * 64, std::align_val_t(64)));
      cap = vectors;
    }
    return p;
  }
};

// ------------------------------------------------------------------ Q8_0 / Q4_0

// Four unsigned weight bytes of group g (k = 4g .. 4g+3) of block b of a row
// of nb blocks (qlayout.h), broadcast.
template <bool Q4>
inline __m512i weight_group(const uint8_t* row, int64_t nb, int64_t b, int g) {
  const int t = qlayout::chunk_blocks(nb, b), l = int(b % qlayout::kChunk);
  const uint8_t* chunk = row + b / qlayout::kChunk * qlayout::kChunk * (Q4 ? qlayout::kQ4Bytes : qlayout::kQ8Bytes);
  if (!Q4) return _mm512_set1_epi32(load_i32(chunk + g * 4 * t + 4 * l));
  // Q4_0: groups 4..7 are the high nibbles of groups 0..3's bytes.
  const __m512i v = _mm512_set1_epi32(load_i32(chunk + (g & 3) * 4 * t + 4 * l));
  const __m512i lo4 = _mm512_set1_epi8(0x0F);
  return g < 4 ? _mm512_and_si512(v, lo4) : _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
}
// The FP16 scale bits of block b.
template <bool Q4>
inline uint16_t block_scale(const uint8_t* row, int64_t nb, int64_t b) {
  const int t = qlayout::chunk_blocks(nb, b), l = int(b % qlayout::kChunk);
  const uint8_t* chunk = row + b / qlayout::kChunk * qlayout::kChunk * (Q4 ? qlayout::kQ4Bytes : qlayout::kQ8Bytes);
  uint16_t d;
  std::memcpy(&d, chunk + (Q4 ? 16 : 32) * t + 2 * l, 2);
  return d;
}

template <bool Q4, int NR, int MT>
void kernel_q(const uint8_t* const* rows, const uint8_t* xp, int64_t tile_bytes, int64_t nb, float* y, int64_t ldy,
              int64_t m0, int64_t m_total, int64_t n0, int nvalid) {
  const float* T = f16_table();
  __m512 facc[NR][MT];
  for (int r = 0; r < NR; ++r)
    for (int t = 0; t < MT; ++t) facc[r][t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* xb = xp + b * kQTileBlock;
    __m512i iacc[NR][MT];
    for (int t = 0; t < MT; ++t) {
      const __m512i init = _mm512_load_si512(reinterpret_cast<const void*>(xb + t * tile_bytes + 512));
      for (int r = 0; r < NR; ++r) iacc[r][t] = init;
    }
    for (int g = 0; g < 8; ++g) {
      __m512i xv[MT];
      for (int t = 0; t < MT; ++t) xv[t] = _mm512_load_si512(reinterpret_cast<const void*>(xb + t * tile_bytes + g * 64));
      for (int r = 0; r < NR; ++r) {
        const __m512i wb = weight_group<Q4>(rows[r], nb, b, g);
        for (int t = 0; t < MT; ++t) iacc[r][t] = _mm512_dpbusd_epi32(iacc[r][t], wb, xv[t]);
      }
    }
    for (int r = 0; r < NR; ++r) {
      const __m512 dw = _mm512_set1_ps(T[block_scale<Q4>(rows[r], nb, b)]);
      for (int t = 0; t < MT; ++t) {
        const __m512 dx = _mm512_load_ps(reinterpret_cast<const float*>(xb + t * tile_bytes + 576));
        facc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[r][t]), _mm512_mul_ps(dw, dx), facc[r][t]);
      }
    }
  }
  store_tiles<NR, MT>(y, ldy, m0, m_total, n0, nvalid, facc);
}

// ------------------------------------------------------------------ drivers


int64_t tile_bytes_for(int kind, int64_t k) {
  if (kind == kF16 || kind == kBF16 || kind == kF32) return f32_tile_bytes(k);
  return q_tile_bytes(k);
}

// Rows of activations per L2-resident chunk (a multiple of 16).
int64_t tiles_per_chunk(int64_t tile_bytes) {
  constexpr int64_t budget = 384 << 10;
  return max64(1, budget / max64(1, tile_bytes));
}

template <typename Elem, int NR, int MT, typename Call>
void drive(const uint8_t* w, int64_t row_bytes, int64_t n_rows, const uint8_t* packed, int64_t tile_bytes,
           int64_t n_tiles, int64_t n0, int64_t n1, const Call& call) {
  const int64_t chunk = max64(MT, tiles_per_chunk(tile_bytes) / MT * MT);
  for (int64_t c0 = 0; c0 < n_tiles; c0 += chunk) {
    const int64_t c1 = min64(n_tiles, c0 + chunk);
    for (int64_t n = n0; n < n1; n += NR) {
      // Rows past the end repeat the last one (valid memory); their results are not stored.
      const Elem* rows[NR];
      const int nvalid = int(min64(NR, n1 - n));
      for (int r = 0; r < NR; ++r)
        rows[r] = reinterpret_cast<const Elem*>(w + min64(n + r, n_rows - 1) * row_bytes);
      int64_t t = c0;
      for (; t + MT <= c1; t += MT) call.template run<NR, MT>(rows, packed + t * tile_bytes, t * 16, n, nvalid);
      // The last tiles of the chunk in one call too (each weight broadcast once for them); every
      // result is the same operations whatever the number of tiles in a call.
      if (MT > 4 && c1 - t >= 4) {
        call.template run<NR, (MT > 4 ? 4 : 1)>(rows, packed + t * tile_bytes, t * 16, n, nvalid);
        t += 4;
      }
      if (MT > 3 && c1 - t == 3) call.template run<NR, (MT > 3 ? 3 : 1)>(rows, packed + t * tile_bytes, t * 16, n, nvalid);
      else if (MT > 2 && c1 - t == 2) call.template run<NR, (MT > 2 ? 2 : 1)>(rows, packed + t * tile_bytes, t * 16, n, nvalid);
      else if (c1 - t == 1) call.template run<NR, 1>(rows, packed + t * tile_bytes, t * 16, n, nvalid);
    }
  }
}

// BF16 / F16: output columns [n0, n1) against every activation tile, in the
// loop order described in the F16 / BF16 section.
// KIND: the weights' format (kBF16, kF16, or kF32 for attention); row_bytes
// apart. tile_out: y is written in the packed-activation layout (vector of
// 16 rows of tile t, column j at y + (t * ldy + j) * 16; ldy = columns)
// instead of row-major.
template <int KIND>
void drive_f16(const uint8_t* w, int64_t row_bytes, int64_t n_rows, int64_t k, const uint8_t* packed,
               int64_t tile_bytes, int64_t n_tiles, int64_t m, float* y, int64_t ldy, int64_t n0, int64_t n1,
               bool tile_out = false) {
  constexpr int NR = kF16Rows;
  static thread_local AccStore store;
  const int64_t groups = (n1 - n0 + NR - 1) / NR;
  // Tiles per chunk: the accumulators within budget, spread evenly.
  const int64_t most = max64(kF16Tiles, kF16AccBudget / (groups * NR * 64));
  const int64_t n_chunks = (n_tiles + most - 1) / most;
  const int64_t chunk = (n_tiles + n_chunks - 1) / n_chunks;
  __m512(*acc)[NR] = reinterpret_cast<__m512(*)[NR]>(store.get(groups * chunk * NR));
  // kc: the chunk's activations of one k-block within budget (a multiple of 16).
  const int64_t kc = min64(kWeightBlock, max64(32, kF16SliceBudget / (chunk * 64) / 16 * 16));
  const int64_t tile_floats = tile_bytes / 4;
  constexpr int64_t esz = KIND == kF32 ? 4 : 2;
  alignas(64) float panel[NR][kWeightBlock];
  for (int64_t c0 = 0; c0 < n_tiles; c0 += chunk) {
    const int64_t nt = min64(chunk, n_tiles - c0);
    for (int64_t k0 = 0; k0 < k; k0 += kc) {
      const int64_t kb = min64(kc, k - k0);
      const float* xk = reinterpret_cast<const float*>(packed + c0 * tile_bytes) + k0 * 16;
      for (int64_t g = 0; g < groups; ++g) {
        // Rows past the end repeat the last one (valid memory); their results are not stored.
        const void* rows[NR];
        for (int r = 0; r < NR; ++r) rows[r] = w + min64(n0 + g * NR + r, n_rows - 1) * row_bytes;
        convert_panel<KIND, NR>(rows, k0, kb, panel);
        // The next panel's weights (the next rows, or the first rows' next
        // k-block) are fetched a few lines after each pass, so they are in
        // cache when it is converted: spread out, the prefetches neither
        // stall on the fill buffers nor arrive too early.
        const bool last = g + 1 == groups;
        const uint8_t* next = last ? (k0 + kc < k ? w + n0 * row_bytes + (k0 + kc) * esz : nullptr)
                                   : w + (n0 + (g + 1) * NR) * row_bytes + k0 * esz;
        const int64_t row_lines = (min64(kc, k - (last ? k0 + kc : k0)) * esz + 63) / 64;
        const int64_t passes = (nt + kF16Tiles - 1) / kF16Tiles;
        const int64_t per_pass = (NR * row_lines + passes - 1) / passes;
        int64_t line = 0;
        auto prefetch_some = [&] {
          if (next == nullptr) return;
          for (int64_t e = min64(NR * row_lines, line + per_pass); line < e; ++line) {
            const int64_t r = line / row_lines;
            if (n0 + (last ? 0 : (g + 1) * NR) + r >= n_rows) continue;
            _mm_prefetch(reinterpret_cast<const char*>(next + r * row_bytes + (line % row_lines) * 64), _MM_HINT_T0);
          }
        };
        __m512(*c)[NR] = acc + g * chunk;
        int64_t t = 0;
        for (; t + kF16Tiles <= nt; t += kF16Tiles) {
          f16_pass<NR, kF16Tiles>(panel, xk + t * tile_floats, tile_floats, kb, k0 == 0, c + t);
          prefetch_some();
        }
        if (t < nt) {
          f16_pass<NR, 1>(panel, xk + t * tile_floats, tile_floats, kb, k0 == 0, c + t);
          prefetch_some();
        }
      }
    }
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t n = n0 + g * NR;
      const int nvalid = int(min64(NR, n1 - n));
      for (int64_t t = 0; t < nt; ++t) {
        if (tile_out) {
          for (int r = 0; r < nvalid; ++r) _mm512_store_ps(y + ((c0 + t) * ldy + n + r) * 16, acc[g * chunk + t][r]);
          continue;
        }
        __m512 out[NR][1];
        for (int r = 0; r < NR; ++r) out[r][0] = acc[g * chunk + t][r];
        store_tiles<NR, 1>(y, ldy, (c0 + t) * 16, m, n, nvalid, out);
      }
    }
  }
}

}  // namespace

// One tile of float activations: tile[j * 16 + i] = scale * x[i * ld + j] for
// i < rows (0 for the rest), j < k; one gather per k.
static inline void gather_tile(const float* x, int64_t ld, int64_t rows, int64_t k, float scale, float* tile) {
  const __m512i index = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(int32_t(ld)));
  const __mmask16 valid = __mmask16((1u << rows) - 1);
  const __m512 vs = _mm512_set1_ps(scale);
  for (int64_t j = 0; j < k; ++j)
    _mm512_store_ps(tile + j * 16, _mm512_mul_ps(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, index, x + j, 4), vs));
}

int64_t gemm_pack_bytes(int kind, int64_t m, int64_t k) { return (m + 15) / 16 * tile_bytes_for(kind, k); }

// Packs activation rows of tiles [t0, t1) (16 rows each; rows past m are zero).
void gemm_pack(int kind, const float* x, int64_t m, int64_t k, uint8_t* dst, int64_t t0, int64_t t1) {
  const int64_t tb = tile_bytes_for(kind, k);
  if (kind == kF16 || kind == kBF16 || kind == kF32) {
    for (int64_t t = t0; t < t1; ++t) gather_tile(x + t * 16 * k, k, min64(16, m - t * 16), k, 1.f,
                                                 reinterpret_cast<float*>(dst + t * tb));
    return;
  }
  for (int64_t t = t0; t < t1; ++t) {
    uint8_t* tile = dst + t * tb;
    std::memset(tile, 0, size_t(tb));
    for (int i = 0; i < 16; ++i) {
      const int64_t row = t * 16 + i;
      if (row >= m) break;
      const float* xr = x + row * k;
      {  // Q8_0 / Q4_0 (the float kinds are gathered above)
        const int32_t offset = kind == kQ8 ? 128 : 8;
        for (int64_t b = 0; b < k / 32; ++b) {
          const float* xb = xr + b * 32;
          const __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
          const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
          // The decode path's rounding (kernels.cpp quantize_act_q8: x * 127 / amax,
          // to nearest even, as the default MXCSR mode rounds).
          const float d = amax / 127.f, inv = amax > 0 ? 127.f / amax : 0.f;
          const __m512 vinv = _mm512_set1_ps(inv);
          const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, vinv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, vinv));
          const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
          alignas(16) int32_t groups[8];  // 4 int8 per group g (k = 4g .. 4g+3)
          _mm_store_si128(reinterpret_cast<__m128i*>(groups), _mm512_cvtsepi32_epi8(q0));
          _mm_store_si128(reinterpret_cast<__m128i*>(groups + 4), _mm512_cvtsepi32_epi8(q1));
          uint8_t* blk = tile + b * kQTileBlock;
          for (int g = 0; g < 8; ++g) std::memcpy(blk + g * 64 + i * 4, &groups[g], 4);
          const int32_t init = -offset * sum;
          std::memcpy(blk + 512 + i * 4, &init, 4);
          std::memcpy(blk + 576 + i * 4, &d, 4);
        }
      }
    }
  }
}

namespace {

// The micro-kernel calls of one format; MT = tiles in this call.
template <bool Q4>
struct CallQ {
  int64_t tb, nb, m, ldy;
  float* y;
  template <int NR, int T>
  void run(const uint8_t* const* rows, const uint8_t* xp, int64_t m0, int64_t n, int nvalid) const {
    kernel_q<Q4, NR, T>(rows, xp, tb, nb, y, ldy, m0, m, n, nvalid);
  }
};

}  // namespace

// y[m][n] (leading dimension ldy) for output columns [n0, n1) of w[n_rows][k].
void gemm_run(int kind, const void* w_v, int64_t n_rows, int64_t k, const uint8_t* packed, int64_t m, float* y,
              int64_t ldy, int64_t n0, int64_t n1) {
  const uint8_t* w = static_cast<const uint8_t*>(w_v);
  const int64_t tb = tile_bytes_for(kind, k), n_tiles = (m + 15) / 16;
  if (kind == kF16)
    drive_f16<kF16>(w, k * 2, n_rows, k, packed, tb, n_tiles, m, y, ldy, n0, n1);
  else if (kind == kBF16)
    drive_f16<kBF16>(w, k * 2, n_rows, k, packed, tb, n_tiles, m, y, ldy, n0, n1);
  else if (kind == kQ8)
    drive<uint8_t, 2, 6>(w, k / 32 * int64_t(sizeof(BlockQ8Raw)), n_rows, packed, tb, n_tiles, n0, n1,
                         CallQ<false>{tb, k / 32, m, ldy, y});
  else if (kind == kQ4)
    drive<uint8_t, 2, 6>(w, k / 32 * int64_t(sizeof(BlockQ4Raw)), n_rows, packed, tb, n_tiles, n0, n1,
                         CallQ<true>{tb, k / 32, m, ldy, y});
}


// ------------------------------------------------------------------ attention (vision)
//
// Non-causal attention of one head, n queries against the same n keys, with
// the GEMM above instead of OpenBLAS (which runs AVX2 code here:
// OPENBLAS_CORETYPE=Haswell). The scores are produced straight in the
// packed-activation layout (a vector = one key's score for 16 queries), so
// the softmax runs 16 queries per instruction with no horizontal reduction
// and its output is already the packed input of the PV product:
//   1. q * scale packed into tiles; S = q K^T with K's rows as the "weights"
//      (F32 panel), written tile-wise;
//   2. per tile: max over keys, exp (AVX-512 version of kernels_avx2.cpp's
//      exp8), sum, times 1 / sum;
//   3. out = S V with V transposed (hd rows of n) as the weights.

using simd512::exp16;

int64_t attention_scratch_floats(int64_t n, int64_t hd) {
  const int64_t padded = (n + 15) / 16 * 16;
  return padded * hd + padded * n + hd * n + 16;
}

void attention_head(const float* q, const float* k, const float* v, int64_t ld, int64_t n, int64_t hd, float scale,
                    float* out, int64_t ldo, float* scratch) {
  const int64_t n_tiles = (n + 15) / 16;
  float* base = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t(63));
  float* qp = base;                         // n_tiles x hd x 16
  float* sp = qp + n_tiles * 16 * hd;       // n_tiles x n x 16: scores, then probabilities
  float* vt = sp + n_tiles * 16 * n;        // hd x n
  for (int64_t t = 0; t < n_tiles; ++t) gather_tile(q + t * 16 * ld, ld, min64(16, n - t * 16), hd, scale, qp + t * hd * 16);
  // V transposed, 16 keys per gather.
  const __m512i index = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(int32_t(ld)));
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 valid = __mmask16((1u << min64(16, n - j)) - 1);
    for (int64_t c = 0; c < hd; ++c)
      _mm512_mask_storeu_ps(vt + c * n + j, valid,
                            _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, index, v + j * ld + c, 4));
  }
  drive_f16<kF32>(reinterpret_cast<const uint8_t*>(k), ld * 4, n, hd, reinterpret_cast<const uint8_t*>(qp), hd * 64,
                  n_tiles, n, sp, n, 0, n, /*tile_out=*/true);
  for (int64_t t = 0; t < n_tiles; ++t) {
    float* st = sp + t * n * 16;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; ++j) mx = _mm512_max_ps(mx, _mm512_load_ps(st + j * 16));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const __m512 e = exp16(_mm512_sub_ps(_mm512_load_ps(st + j * 16), mx));
      _mm512_store_ps(st + j * 16, e);
      sum = _mm512_add_ps(sum, e);
    }
    const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.f), sum);
    for (int64_t j = 0; j < n; ++j) _mm512_store_ps(st + j * 16, _mm512_mul_ps(_mm512_load_ps(st + j * 16), inv));
  }
  drive_f16<kF32>(reinterpret_cast<const uint8_t*>(vt), n * 4, hd, n, reinterpret_cast<const uint8_t*>(sp), n * 64,
                  n_tiles, n, out, ldo, 0, hd);
}

// ------------------------------------------------------------------ decode rows (batched decode)
//
// Decode products against a few input rows (one per sequence of a batched
// decode step; issue 13). Decode reads every weight once per step, so with B
// sequences the same bytes serve B dot products and what limits B > 1 is the
// work per weight and input. Both kernels below therefore do everything that
// depends on the weights alone (loading, unpacking to unsigned bytes or to
// float, the block scales) once per weight for all inputs, and everything
// that depends on the input alone (quantising, the offset's start value, the
// element order) once per step in a pack; what is left per (weight, input)
// is the multiply-add itself. Four weight rows per pass share each input
// load. Every (row, input) result is the same operations whatever the number
// of inputs and rows in the pass, so a sequence gets the bits alone that it
// gets in a batch.
//
// Q8_0 / Q4_0: the weights' interleaved layout (qlayout.h) puts the same
// 4-byte group of 16 blocks in one zmm, so per chunk of 16 blocks (512
// weights) and input it takes 8 vpdpbusd (lane l sums block l exactly in
// int32, starting at -offset * the block's activation sum so the unsigned
// weights' offset leaves), one convert, one multiply of the 16 weight scales
// by the 16 activation scales and one FMA: 11 vector ops, against 32 for the
// two-blocks-per-zmm kernel before. What depends on the row alone (the loads,
// Q4_0's nibble unpacking, the scales' conversion) is done once for all the
// pass's inputs. A short last chunk (nb % 16 blocks) is loaded with a lane
// mask; its missing lanes are zero in weights, activations and scales.

namespace {
// Per chunk of 16 blocks and input: 8 groups x 64 activation bytes, 16 start
// values for Q8_0 (-128 * block sum), 16 for Q4_0 (-8 * block sum), 16 scales.
constexpr int64_t kChunkActBytes = 8 * 64 + 64 + 64 + 64;
constexpr int64_t kStart8At = 512, kStart4At = 576, kActScaleAt = 640;

struct BlockQ8ActRaw {  // engine::BlockQ8Act
  float d;
  float s;
  int8_t q[32];
};

inline int64_t q_chunks(int64_t nb) { return (nb + qlayout::kChunk - 1) / qlayout::kChunk; }

}  // namespace

int64_t matvec_pack_bytes(int64_t n, int64_t cols) { return n * q_chunks(cols / 32) * kChunkActBytes; }

// Repacks n quantised input rows (BlockQ8Act, cols / 32 blocks each) into the
// weights' chunk order for the kernels below; dst 64-byte aligned,
// matvec_pack_bytes(n, cols) long.
void matvec_pack(const void* xq_v, int64_t n, int64_t cols, uint8_t* dst) {
  const BlockQ8ActRaw* xq = static_cast<const BlockQ8ActRaw*>(xq_v);
  const int64_t nb = cols / 32, chunks = q_chunks(nb);
  std::memset(dst, 0, size_t(matvec_pack_bytes(n, cols)));
  for (int64_t g = 0; g < n; ++g)
    for (int64_t c = 0; c < chunks; ++c) {
      uint8_t* p = dst + (g * chunks + c) * kChunkActBytes;
      const int t = qlayout::chunk_blocks(nb, c * qlayout::kChunk);
      for (int l = 0; l < t; ++l) {
        const BlockQ8ActRaw& a = xq[g * nb + c * qlayout::kChunk + l];
        int32_t sum = 0;
        for (int i = 0; i < 32; ++i) sum += a.q[i];
        for (int grp = 0; grp < 8; ++grp) std::memcpy(p + grp * 64 + 4 * l, a.q + 4 * grp, 4);
        const int32_t start8 = -128 * sum, start4 = -8 * sum;
        std::memcpy(p + kStart8At + 4 * l, &start8, 4);
        std::memcpy(p + kStart4At + 4 * l, &start4, 4);
        std::memcpy(p + kActScaleAt + 4 * l, &a.d, 4);
      }
    }
}

namespace {

// The lane sums of N accumulators (N <= 8) into out[0..N): one transposing
// tree for all of them (about 3.5 ops per sum instead of ~8 for a reduction
// each, which at 896 columns was a quarter of a row's work). Every sum takes
// the same additions whatever N and its position (lanes i + i+8, then i + i+4,
// then (0+2) + (1+3)), so a row's result does not depend on its neighbours.
template <int N>
inline void lane_sums(const __m512* v, float* out) {
  constexpr int N2 = (N + 1) / 2, N4 = (N2 + 1) / 2;
  const __m512 zero = _mm512_setzero_ps();
  __m512 s1[N2], s2[N4];
  for (int p = 0; p < N2; ++p) {  // lanes 0-7: v[2p] folded to 8, 8-15: v[2p+1]
    const __m512 a = v[2 * p], b = 2 * p + 1 < N ? v[2 * p + 1] : zero;
    s1[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  for (int p = 0; p < N4; ++p) {  // 128-bit lane q: v[4p + q] folded to 4
    const __m512 a = s1[2 * p], b = 2 * p + 1 < N2 ? s1[2 * p + 1] : zero;
    s2[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
  }
  for (int p = 0; p < N4; ++p) {
    const __m512 x = _mm512_add_ps(s2[p], _mm512_permute_ps(s2[p], 0x4E));
    alignas(64) float t[16];
    _mm512_store_ps(t, _mm512_add_ps(x, _mm512_permute_ps(x, 0xB1)));
    for (int q = 0; q < 4 && 4 * p + q < N; ++q) out[4 * p + q] = t[4 * q];
  }
}

// R consecutive rows from r against G inputs (packed by matvec_pack,
// in_bytes apart), per chunk: each row's group loads (and Q4_0 unpacking)
// once for the G inputs, then per (row, input) the 11 ops above.
template <bool Q4, int R, int G>
inline void q_rows(const uint8_t* base, int64_t row_bytes, int64_t nb, const uint8_t* xp, int64_t in_bytes, float* y,
                   int64_t ldy, int64_t r, int64_t stride, int64_t ahead) {
  constexpr int64_t bsz = Q4 ? qlayout::kQ4Bytes : qlayout::kQ8Bytes;
  constexpr int64_t start_at = Q4 ? kStart4At : kStart8At;
  constexpr int groups = Q4 ? 4 : 8;  // stored 4-byte groups per block
  const uint8_t* w[R];
  for (int i = 0; i < R; ++i) w[i] = base + (r + i * stride) * row_bytes;
  __m512 acc[R][G];
  for (int i = 0; i < R; ++i)
    for (int g = 0; g < G; ++g) acc[i][g] = _mm512_setzero_ps();
  const __m512i lo4 = _mm512_set1_epi8(0x0F);
  for (int64_t c = 0, ci = 0; c < nb; c += qlayout::kChunk, ++ci) {
    const int t = qlayout::chunk_blocks(nb, c);
    const __mmask16 m = t == qlayout::kChunk ? __mmask16(0xFFFF) : __mmask16((1u << t) - 1);
    const uint8_t* xc = xp + ci * kChunkActBytes;
    __m512i iacc[R][G];
    for (int g = 0; g < G; ++g) {
      const __m512i init = _mm512_load_si512(xc + g * in_bytes + start_at);
      for (int i = 0; i < R; ++i) iacc[i][g] = init;
    }
    for (int h = 0; h < groups; ++h)
      for (int i = 0; i < R; ++i) {
        const uint8_t* p = w[i] + c * bsz + h * 4 * t;
        // The next rows follow in memory: keep their lines coming as these stream.
        _mm_prefetch(reinterpret_cast<const char*>(p + ahead), _MM_HINT_T0);
        const __m512i v = t == qlayout::kChunk ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32(m, p);
        if (!Q4) {
          for (int g = 0; g < G; ++g)
            iacc[i][g] = _mm512_dpbusd_epi32(iacc[i][g], v, _mm512_load_si512(xc + g * in_bytes + h * 64));
        } else {
          const __m512i lo = _mm512_and_si512(v, lo4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
          for (int g = 0; g < G; ++g) {
            iacc[i][g] = _mm512_dpbusd_epi32(iacc[i][g], lo, _mm512_load_si512(xc + g * in_bytes + h * 64));
            iacc[i][g] = _mm512_dpbusd_epi32(iacc[i][g], hi, _mm512_load_si512(xc + g * in_bytes + (h + 4) * 64));
          }
        }
      }
    for (int i = 0; i < R; ++i) {
      const uint8_t* sc = w[i] + c * bsz + (Q4 ? 16 : 32) * t;
      _mm_prefetch(reinterpret_cast<const char*>(sc + ahead), _MM_HINT_T0);
      const __m512 dw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, sc));
      for (int g = 0; g < G; ++g) {
        const __m512 da = _mm512_load_ps(reinterpret_cast<const float*>(xc + g * in_bytes + kActScaleAt));
        acc[i][g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[i][g]), _mm512_mul_ps(dw, da), acc[i][g]);
      }
    }
  }
  __m512 flat[R * G];
  float sums[R * G];
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < R; ++i) flat[g * R + i] = acc[i][g];
  lane_sums<R * G>(flat, sums);
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < R; ++i) y[g * ldy + r + i * stride] = sums[g * R + i];
}

// Rows [r0, r1) against nx inputs: with one or two inputs four rows per pass
// (four independent vpdpbusd chains), with more two rows and up to four
// inputs (the accumulators of 2 x 4 pairs fill the registers); a later pass
// over the same rows finds them in L1 / L2.
template <bool Q4, int R>
inline void q_inputs(const uint8_t* base, int64_t row_bytes, int64_t nb, const uint8_t* xp, int64_t in_bytes, int nx,
                     float* y, int64_t ldy, int64_t r, int64_t stride, int64_t ahead) {
  int g = 0;
  for (; g + 4 <= nx; g += 4)
    q_rows<Q4, R, 4>(base, row_bytes, nb, xp + g * in_bytes, in_bytes, y + g * ldy, ldy, r, stride, ahead);
  if (nx - g == 3) q_rows<Q4, R, 3>(base, row_bytes, nb, xp + g * in_bytes, in_bytes, y + g * ldy, ldy, r, stride, ahead);
  else if (nx - g == 2) q_rows<Q4, R, 2>(base, row_bytes, nb, xp + g * in_bytes, in_bytes, y + g * ldy, ldy, r, stride, ahead);
  else if (nx - g == 1) q_rows<Q4, R, 1>(base, row_bytes, nb, xp + g * in_bytes, in_bytes, y + g * ldy, ldy, r, stride, ahead);
}

// Decode rows are read as four streams (two with more than two inputs) a
// quarter (half) of the rows apart rather than as one: memory delivers
// ~25 GB/s to four prefetched streams per thread on the AMX VM against 15-16
// to one (bench_engine --bandwidth), and the rows read 1.3x faster so
// (bench_gemm --m 1 --products rows, session 11). Each stream prefetches
// kStreamAhead rows ahead. Which rows share a pass does not change any row's
// arithmetic, so the bits stay those of the contiguous passes.
constexpr int64_t kStreamAhead = 2;

template <bool Q4>
void matvec_q(const void* w_v, int64_t cols, const uint8_t* xp, int nx, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const uint8_t* w = static_cast<const uint8_t*>(w_v);
  const int64_t nb = cols / 32, row_bytes = nb * (Q4 ? qlayout::kQ4Bytes : qlayout::kQ8Bytes);
  const int64_t in_bytes = q_chunks(nb) * kChunkActBytes;
  const int64_t ahead = kStreamAhead * row_bytes;
  int64_t r = r0;
  if (nx <= 2) {  // four streams of one row per pass, four rows per pass
    const int64_t q = (r1 - r0) / 4;
    for (int64_t i = 0; i < q; ++i) q_inputs<Q4, 4>(w, row_bytes, nb, xp, in_bytes, nx, y, ldy, r0 + i, q, ahead);
    r = r0 + 4 * q;
  } else {  // two rows per pass (the accumulators of 2 x 4 pairs fill the registers): two streams
    const int64_t q = (r1 - r0) / 2;
    for (int64_t i = 0; i < q; ++i) q_inputs<Q4, 2>(w, row_bytes, nb, xp, in_bytes, nx, y, ldy, r0 + i, q, ahead);
    r = r0 + 2 * q;
  }
  // What the streams leave (fewer rows than streams), contiguous.
  if (nx <= 2)
    for (; r + 4 <= r1; r += 4) q_inputs<Q4, 4>(w, row_bytes, nb, xp, in_bytes, nx, y, ldy, r, 1, 4 * row_bytes);
  else
    for (; r + 2 <= r1; r += 2) q_inputs<Q4, 2>(w, row_bytes, nb, xp, in_bytes, nx, y, ldy, r, 1, 2 * row_bytes);
  for (; r < r1; ++r) q_inputs<Q4, 1>(w, row_bytes, nb, xp, in_bytes, nx, y, ldy, r, 1, row_bytes);
}

}  // namespace

namespace {

// Where one call of the kernels below reads and writes: rows [r, r + R) of
// the weights against inputs [g, g + G) of the packed input.
struct RowsArgs {
  const uint8_t* base;  // the weights
  int64_t row_bytes, cols, in_bytes, ldy, r;
  const uint8_t* xp;  // the packed inputs, in_bytes apart
  float* y;
  const float* T;  // FP16 table
  int64_t stride, ahead;  // the pass's rows are r + i * stride; prefetch distance in bytes
};

// Rows [a.r, r1) against nx inputs: four rows at a time (one for the last
// few), inputs four at a time (the second pass finds the rows in L1 / L2).
// K::run<R, G>(args, g) is the kernel of one format.
template <typename K, int R>
inline void over_inputs(int nx, const RowsArgs& a) {
  int g = 0;
  for (; g + 4 <= nx; g += 4) K::template run<R, 4>(a, g);
  if (nx - g == 3) K::template run<R, 3>(a, g);
  else if (nx - g == 2) K::template run<R, 2>(a, g);
  else if (nx - g == 1) K::template run<R, 1>(a, g);
}
template <typename K>
void over_rows(RowsArgs a, int nx, int64_t r1) {
  const int64_t q = (r1 - a.r) / 4, r0 = a.r;  // four streams (see kStreamAhead)
  RowsArgs s = a;
  s.stride = q;
  s.ahead = kStreamAhead * a.row_bytes;
  for (int64_t i = 0; i < q; ++i) {
    s.r = r0 + i;
    over_inputs<K, 4>(nx, s);
  }
  a.r = r0 + 4 * q;
  a.stride = 1;
  for (a.ahead = 4 * a.row_bytes; a.r + 4 <= r1; a.r += 4) over_inputs<K, 4>(nx, a);
  for (a.ahead = a.row_bytes; a.r < r1; ++a.r) over_inputs<K, 1>(nx, a);
}

// ------------------------------------------------------------------ decode rows, F32 / BF16 / F16
//
// Each weight converted to float once for all inputs (BF16: 32 weights per
// load, the even ones by a shift and the odd ones by a mask, against inputs
// packed once per step in that even / odd order; F16: vcvtph2ps; F32 as is),
// then one FMA per 16 weights and input, in F32 like the scalar path.

// 32 weights from element i of a row as two float vectors, in the order the
// packed input uses; `mask` selects the elements that exist (the row's tail).
template <int KIND>
inline void load_w32(const uint8_t* row, int64_t i, __mmask32 mask, bool full, __m512& wa, __m512& wb) {
  if (KIND == kBF16) {
    const void* p = row + i * 2;
    const __m512i v = full ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(mask, p);
    wa = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    wb = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int32_t(0xFFFF0000u))));
  } else if (KIND == kF16) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(row) + i;
    if (full) {
      wa = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      wb = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16)));
    } else {
      const __m512i v = _mm512_maskz_loadu_epi16(mask, p);
      wa = _mm512_cvtph_ps(_mm512_castsi512_si256(v));
      wb = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1));
    }
  } else {
    const float* p = reinterpret_cast<const float*>(row) + i;
    if (full) {
      wa = _mm512_loadu_ps(p);
      wb = _mm512_loadu_ps(p + 16);
    } else {
      wa = _mm512_maskz_loadu_ps(__mmask16(mask & 0xFFFF), p);
      wb = _mm512_maskz_loadu_ps(__mmask16(mask >> 16), p + 16);
    }
  }
}

template <int KIND, int R, int G>
inline void f_rows(const uint8_t* base, int64_t row_bytes, int64_t cols, const float* xp, int64_t in_floats, float* y,
                   int64_t ldy, int64_t r, int64_t stride, int64_t ahead) {
  const uint8_t* w[R];
  for (int i = 0; i < R; ++i) w[i] = base + (r + i * stride) * row_bytes;
  __m512 acc[R][G];
  for (int i = 0; i < R; ++i)
    for (int g = 0; g < G; ++g) acc[i][g] = _mm512_setzero_ps();
  constexpr int64_t esz = KIND == kF32 ? 4 : 2;
  const int64_t full = cols / 32;
  auto step = [&](int64_t c, bool whole, __mmask32 mask) {
    __m512 wa[R], wb[R];
    for (int i = 0; i < R; ++i) {
      for (int64_t l = 0; l < 32 * esz; l += 64)
        _mm_prefetch(reinterpret_cast<const char*>(w[i] + ahead + c * 32 * esz + l), _MM_HINT_T0);
      load_w32<KIND>(w[i], c * 32, mask, whole, wa[i], wb[i]);
    }
    for (int g = 0; g < G; ++g) {
      const float* xg = xp + g * in_floats + c * 32;
      const __m512 xa = _mm512_load_ps(xg), xb = _mm512_load_ps(xg + 16);
      for (int i = 0; i < R; ++i) {
        acc[i][g] = _mm512_fmadd_ps(wa[i], xa, acc[i][g]);
        acc[i][g] = _mm512_fmadd_ps(wb[i], xb, acc[i][g]);
      }
    }
  };
  for (int64_t c = 0; c < full; ++c) step(c, true, __mmask32(0xFFFFFFFFu));
  if (cols % 32) step(full, false, __mmask32((1u << (cols % 32)) - 1));
  for (int g = 0; g < G; ++g)
    for (int i = 0; i < R; ++i) y[g * ldy + r + i * stride] = _mm512_reduce_add_ps(acc[i][g]);
}

template <int KIND>
struct FKernel {
  template <int R, int G>
  static void run(const RowsArgs& a, int g) {
    const float* xp = reinterpret_cast<const float*>(a.xp + g * a.in_bytes);
    f_rows<KIND, R, G>(a.base, a.row_bytes, a.cols, xp, a.in_bytes / 4, a.y + g * a.ldy, a.ldy, a.r, a.stride, a.ahead);
  }
};

template <int KIND>
void matvec_f(const void* w, int64_t cols, const float* xp, int nx, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const RowsArgs a{static_cast<const uint8_t*>(w), cols * (KIND == kF32 ? 4 : 2), cols, (cols + 31) / 32 * 32 * 4, ldy,
                   r0, reinterpret_cast<const uint8_t*>(xp), y, nullptr, 1, 0};
  over_rows<FKernel<KIND>>(a, nx, r1);
}

}  // namespace

// ------------------------------------------------------------------ decode attention
//
// The query heads [0, heads) that share one cached key / value head (GQA:
// Qwen2-0.5B has 7 per KV head), one query each, against n cached keys /
// values (rows ld floats apart), hd a multiple of 16 (at most 256). Queries,
// scores and outputs are heads x hd / n / hd, contiguous per head.
//
// Why grouped: one head at a time streamed a KV head's keys and values from
// L2 / L3 once per query head (7 times); here a block of 8 keys is loaded
// into L1 once and serves every head of the group, and a value row serves up
// to four heads from registers, so the cache is read once (keys) or twice
// (values, 7 heads) per group instead of 7 times.
//
// Every result keeps the bits of the dot_f32 / axpy_f32 loop of one head
// (the other paths): a key's 16 lanes are avx2::dot's two 8-wide chains side
// by side, lane_sums adds them in hsum's order (i + i+8, i + i+4, (0+2) +
// (1+3)) whatever the sum's position among the 8, and each output is the same
// FMA per value in key order. Only the order in which heads are visited
// changed, and no head's arithmetic depends on another's.
void attention_decode_scores(const float* q, int heads, const float* k, int64_t ld, int64_t n, int64_t hd, float scale,
                             float* scores) {
  const int nq = int(hd / 16);
  for (int64_t t = 0; t < n; t += 8) {
    const int m = int(n - t < 8 ? n - t : 8);
    for (int h = 0; h < heads; ++h) {  // the 8 keys' rows stay in L1 across the heads
      const float* qh = q + h * hd;
      __m512 qv[16];
      for (int c = 0; c < nq; ++c) qv[c] = _mm512_loadu_ps(qh + 16 * c);
      __m512 acc[8];
      for (int j = 0; j < 8; ++j) {
        acc[j] = _mm512_setzero_ps();
        if (j < m)
          for (int c = 0; c < nq; ++c) acc[j] = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(k + (t + j) * ld + 16 * c), acc[j]);
      }
      float s[8];
      lane_sums<8>(acc, s);
      float* sh = scores + h * n;
      for (int j = 0; j < m; ++j) sh[t + j] = s[j] * scale;
    }
  }
}

namespace {
// H (<= 4) heads' outputs over all n values, in registers: each value row
// loaded once for the H heads. NQ = hd / 16 vectors per row.
template <int H, int NQ>
void mix_heads(const float* p, int64_t n, const float* v, int64_t ld, float* out, int64_t hd) {
  __m512 o[H][NQ];
  for (int h = 0; h < H; ++h)
    for (int c = 0; c < NQ; ++c) o[h][c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < n; ++t) {
    const float* vt = v + t * ld;
    __m512 vv[NQ];
    for (int c = 0; c < NQ; ++c) vv[c] = _mm512_loadu_ps(vt + 16 * c);
    for (int h = 0; h < H; ++h) {
      const __m512 a = _mm512_set1_ps(p[h * n + t]);
      for (int c = 0; c < NQ; ++c) o[h][c] = _mm512_fmadd_ps(a, vv[c], o[h][c]);
    }
  }
  for (int h = 0; h < H; ++h)
    for (int c = 0; c < NQ; ++c) _mm512_storeu_ps(out + h * hd + 16 * c, o[h][c]);
}
// One head of any width (hd / 16 <= 16 vectors) against all n values.
void mix_one(const float* p, int64_t n, const float* v, int64_t ld, float* out, int64_t hd) {
  const int nq = int(hd / 16);
  __m512 o[16];
  for (int c = 0; c < nq; ++c) o[c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < n; ++t) {
    const __m512 a = _mm512_set1_ps(p[t]);
    const float* vt = v + t * ld;
    for (int c = 0; c < nq; ++c) o[c] = _mm512_fmadd_ps(a, _mm512_loadu_ps(vt + 16 * c), o[c]);
  }
  for (int c = 0; c < nq; ++c) _mm512_storeu_ps(out + 16 * c, o[c]);
}
template <int NQ>
void mix_group(const float* p, int heads, int64_t n, const float* v, int64_t ld, float* out, int64_t hd) {
  // As many heads at a time (at most 4) as leave their accumulators, one
  // value row and the broadcast in the 32 registers: hd 64 four, hd 128 two.
  constexpr int kFit = (30 - NQ) / NQ, kMost = kFit > 4 ? 4 : kFit < 1 ? 1 : kFit;
  int h = 0;
  for (; h + kMost <= heads; h += kMost) mix_heads<kMost, NQ>(p + h * n, n, v, ld, out + h * hd, hd);
  const int left = heads - h;  // < kMost
  if (left == 3) mix_heads<3, NQ>(p + h * n, n, v, ld, out + h * hd, hd);
  else if (left == 2) mix_heads<2, NQ>(p + h * n, n, v, ld, out + h * hd, hd);
  else if (left == 1) mix_heads<1, NQ>(p + h * n, n, v, ld, out + h * hd, hd);
}
}  // namespace

void attention_decode_mix(const float* p, int heads, const float* v, int64_t ld, int64_t n, int64_t hd, float* out) {
  switch (hd / 16) {
    case 4: return mix_group<4>(p, heads, n, v, ld, out, hd);     // hd 64 (Qwen2, InternLM2-1.8B)
    case 8: return mix_group<8>(p, heads, n, v, ld, out, hd);     // hd 128 (Yi-34B, InternLM2-20B)
    default:
      for (int h = 0; h < heads; ++h) mix_one(p + h * n, n, v, ld, out + h * hd, hd);
  }
}

void matvec_q8(const void* w, int64_t cols, const uint8_t* packed, int nx, float* y, int64_t ldy, int64_t r0,
               int64_t r1) {
  matvec_q<false>(w, cols, packed, nx, y, ldy, r0, r1);
}
void matvec_q4(const void* w, int64_t cols, const uint8_t* packed, int nx, float* y, int64_t ldy, int64_t r0,
               int64_t r1) {
  matvec_q<true>(w, cols, packed, nx, y, ldy, r0, r1);
}

// Floats per packed input row of the F32 / BF16 / F16 kernels (cols rounded up to 32).
int64_t matvec_f_pack_floats(int64_t cols) { return (cols + 31) / 32 * 32; }

// n inputs x[n][cols] for weights of `kind` (F32 / F16 / BF16) into dst
// (64-byte aligned, n * matvec_f_pack_floats(cols) floats): zero-padded to a
// multiple of 32; for BF16 each 32 in the order even elements, odd elements.
void matvec_f_pack(int kind, const float* x, int64_t n, int64_t cols, float* dst) {
  const int64_t stride = matvec_f_pack_floats(cols);
  for (int64_t g = 0; g < n; ++g) {
    const float* xg = x + g * cols;
    float* out = dst + g * stride;
    std::memset(out, 0, size_t(stride) * 4);
    if (kind != kBF16) {
      std::memcpy(out, xg, size_t(cols) * 4);
      continue;
    }
    for (int64_t i = 0; i < cols; ++i) out[i / 32 * 32 + (i % 2) * 16 + (i % 32) / 2] = xg[i];
  }
}

void matvec_f(int kind, const void* w, int64_t cols, const float* packed, int nx, float* y, int64_t ldy, int64_t r0,
              int64_t r1) {
  if (kind == kBF16) matvec_f<kBF16>(w, cols, packed, nx, y, ldy, r0, r1);
  else if (kind == kF16) matvec_f<kF16>(w, cols, packed, nx, y, ldy, r0, r1);
  else matvec_f<kF32>(w, cols, packed, nx, y, ldy, r0, r1);
}

}  // namespace firstread::engine::avx512
