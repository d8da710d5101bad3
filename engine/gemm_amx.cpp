// AMX on the amx kernel path: Linux's permission for the tile data, and the
// tile GEMMs per weight kind.
//
// The amx path is the avx512 path plus AMX tiles (TDPBF16PS, TDPBUSD) for
// batched products (prefill, vision). A weight kind without an AMX GEMM here
// runs the avx512 GEMM (kernels.cpp asks has_gemm). Decode rows stay on the
// avx512 kernels: one input row per weight row is bandwidth bound, and tiles
// of 16 rows would idle.
//
// This file holds no tile instruction itself; it is compiled without ISA flags.
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace firstread::engine::amx {

namespace {
constexpr long kArchGetXcompPerm = 0x1022;  // asm/prctl.h
constexpr long kArchReqXcompPerm = 0x1023;
constexpr long kXfeatureXtiledata = 18;
}  // namespace

// Linux 5.16+ keeps the 8 KB tile data out of a thread's state until the
// process asks for it; until then the first tile instruction raises SIGILL.
// The grant covers every thread of the process, present and future.
bool request_tile_permission() {
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
  unsigned long mask = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &mask) != 0) return false;
  return (mask >> kXfeatureXtiledata) & 1;
}

namespace bf16 {  // gemm_amx_bf16.cpp: F32 / F16 / BF16 (and Q8_0 / Q4_0 from 128 rows) on AMX-BF16
int64_t pack_tiles(int64_t m);
int64_t pack_bytes(int64_t m, int64_t k);
void pack(const float* x, int64_t m, int64_t k, uint8_t* dst, int64_t t0, int64_t t1);
int64_t unit_rows();
void run(int kind, const void* w, int64_t k, const uint8_t* packed, int64_t m, float* y, int64_t ldy, int64_t n0,
         int64_t n1);
int64_t pack_hi_bytes(int64_t m, int64_t k);
void pack_hi(const float* x, int64_t m, int64_t k, uint8_t* dst, int64_t t0, int64_t t1);
}  // namespace bf16

namespace int8 {  // gemm_amx_int8.cpp: Q8_0 / Q4_0 weights on AMX-INT8 (below 128 rows)
int64_t gemm_pack_bytes(int64_t m, int64_t k);
int64_t gemm_pack_tiles(int64_t m);
void gemm_pack(const float* x, int64_t m, int64_t k, uint8_t* dst, int64_t t0, int64_t t1);
int64_t gemm_unit_rows();
void gemm_run(int kind, const void* w, int64_t n_rows, int64_t k, const uint8_t* packed, int64_t m, float* y,
              int64_t ldy, int64_t n0, int64_t n1);
}  // namespace int8

namespace {
enum Kind { kF32 = 0, kF16 = 1, kBF16 = 2, kQ8 = 3, kQ4 = 4 };  // = DType's order (safetensors.h)
}  // namespace

namespace {
// Activation rows from which a Q8_0 / Q4_0 product runs on BF16 tiles: the
// panel's dequantisation (once per product) then costs less than the int8
// unit's per-block epilogue saves (bench_gemm at k = 896, n = 4 864: even
// near 96-128 rows, ahead from 192; engine/README.md "AMX-INT8 GEMM").
constexpr int64_t kQuantBf16MinRows = 128;
bool q_on_bf16(int64_t m) { return m >= kQuantBf16MinRows; }
}  // namespace

// Each entry point is a switch per weight kind: one case per GEMM file.
bool has_gemm(int kind) {
  switch (kind) {
    case kF32:
    case kF16:
    case kBF16: return true;
    case kQ8:
    case kQ4: return true;
    default: return false;
  }
}

[[noreturn]] static void no_gemm(int kind) {
  throw std::logic_error("amx: no tile GEMM for weight kind " + std::to_string(kind));
}

int64_t gemm_pack_bytes(int kind, int64_t m, int64_t k) {
  switch (kind) {
    case kF32:
    case kF16:
    case kBF16: return bf16::pack_bytes(m, k);
    case kQ8:
    case kQ4: return q_on_bf16(m) ? bf16::pack_hi_bytes(m, k) : int8::gemm_pack_bytes(m, k);
    default: no_gemm(kind);
  }
}
int64_t gemm_pack_tiles(int kind, int64_t m) {
  switch (kind) {
    case kF32:
    case kF16:
    case kBF16: return bf16::pack_tiles(m);
    case kQ8:
    case kQ4: return int8::gemm_pack_tiles(m);
    default: no_gemm(kind);
  }
}
void gemm_pack(int kind, const float* x, int64_t m, int64_t k, uint8_t* dst, int64_t t0, int64_t t1) {
  switch (kind) {
    case kF32:
    case kF16:
    case kBF16: return bf16::pack(x, m, k, dst, t0, t1);
    case kQ8:
    case kQ4: return q_on_bf16(m) ? bf16::pack_hi(x, m, k, dst, t0, t1) : int8::gemm_pack(x, m, k, dst, t0, t1);
    default: no_gemm(kind);
  }
}
int64_t gemm_unit_rows(int kind) {
  switch (kind) {
    case kF32:
    case kF16:
    case kBF16: return bf16::unit_rows();
    case kQ8:
    case kQ4: return bf16::unit_rows();
    default: no_gemm(kind);
  }
}
void gemm_run(int kind, const void* w, int64_t n_rows, int64_t k, const uint8_t* packed, int64_t m, float* y,
              int64_t ldy, int64_t n0, int64_t n1) {
  switch (kind) {
    case kF32:
    case kF16:
    case kBF16: return bf16::run(kind, w, k, packed, m, y, ldy, n0, n1);
    case kQ8:
    case kQ4:
      return q_on_bf16(m) ? bf16::run(kind, w, k, packed, m, y, ldy, n0, n1)
                          : int8::gemm_run(kind, w, n_rows, k, packed, m, y, ldy, n0, n1);
    default: no_gemm(kind);
  }
}

}  // namespace firstread::engine::amx

namespace firstread::engine {
bool amx_quant_on_bf16_tiles(int64_t m) { return amx::q_on_bf16(m); }
}  // namespace firstread::engine
