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

bool has_gemm(int /*kind*/) { return false; }

[[noreturn]] static void no_gemm(int kind) {
  throw std::logic_error("amx: no tile GEMM for weight kind " + std::to_string(kind));
}
int64_t gemm_pack_bytes(int kind, int64_t, int64_t) { no_gemm(kind); }
int64_t gemm_pack_tiles(int kind, int64_t) { no_gemm(kind); }
void gemm_pack(int kind, const float*, int64_t, int64_t, uint8_t*, int64_t, int64_t) { no_gemm(kind); }
int64_t gemm_unit_rows(int kind) { no_gemm(kind); }
void gemm_run(int kind, const void*, int64_t, int64_t, const uint8_t*, int64_t, float*, int64_t, int64_t, int64_t) {
  no_gemm(kind);
}

}  // namespace firstread::engine::amx
