// bench_amx_tiles [--repeat R]: what one step of the AMX-INT8 GEMM
// (engine/gemm_amx_int8.cpp) costs on this CPU, piece by piece, with
// L1-resident data: the tile instructions alone (TDPBSSD with K = 32 and 64,
// TILESTORED, TILELOADD) and the per-block loop with and without its parts
// (tile product, C store, AVX-512 scale epilogue); then the AMX-BF16
// GEMM's 2 x 2 tile step with its tiles in L1 and streaming from L2
// (bench_amx_tiles_bf16.cpp). Cycles at the clock a
// dependent-add loop measures, from the thread's CPU time, best of R; a
// loaded host inflates them less than wall time but still does (the figures
// in engine/README.md name the load). Not a CTest test.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "bench/engine/thread_cpu_time.h"
#include "engine/kernels.h"

namespace amx_tiles {
void setup();
void teardown();
void dpbssd_k32(int64_t n);
void dpbssd_k32_two_c(int64_t n);
void dpbssd_k64_two_c(int64_t n);
void tilestored_c(int64_t n);
void tileloadd_a(int64_t n);
void tileloadd_b(int64_t n);
void blocks_all(int64_t n, int64_t nb);
void blocks_tile_side(int64_t n, int64_t nb);
void blocks_store_epilogue(int64_t n, int64_t nb);
void blocks_no_store(int64_t n, int64_t nb);
void blocks_epilogue_only(int64_t n, int64_t nb);
int64_t bf16_steps(int64_t rounds, int64_t nkb, int64_t a_tiles, int64_t b_tiles);
}  // namespace amx_tiles

// Cycles per second of this thread: a chain of dependent adds (one a cycle).
static double clock_hz(int repeat) {
  double best = 1e30;
  constexpr long kAdds = 200000000;
  for (int r = 0; r < repeat; ++r) {
    uint64_t x = 0;
    const double t0 = thread_cpu_s();
    for (long i = 0; i < kAdds; ++i) asm volatile("add $1, %0" : "+r"(x));
    best = std::min(best, thread_cpu_s() - t0);
  }
  return kAdds / best;
}

template <typename F>
static double best_s(int repeat, const F& f) {
  double best = 1e30;
  for (int r = 0; r < repeat; ++r) {
    const double t0 = thread_cpu_s();
    f();
    best = std::min(best, thread_cpu_s() - t0);
  }
  return best;
}

int main(int argc, char** argv) {
  int repeat = 5;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) repeat = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: bench_amx_tiles [--repeat R]\n");
      return 2;
    }
  }
  using namespace firstread::engine;
  if (!kernel_path_supported(KernelPath::Amx)) {
    std::printf("no amx path on this CPU (AMX-TILE/INT8/BF16 + AVX512-BF16 and Linux's tile permission)\n");
    return 0;
  }
  const double hz = clock_hz(repeat);
  std::printf("clock (dependent adds): %.2f GHz; cycles per item, best of %d, thread CPU time\n", hz / 1e9, repeat);
  amx_tiles::setup();
  constexpr int64_t n = 2000000;
  auto per = [&](const char* what, double items, double s) {
    std::printf("| %s | %.1f |\n", what, s * hz / items);
  };
  std::printf("| instruction or loop (per item) | cycles |\n|---|---|\n");
  per("TDPBSSD 16x16, K = 32, one C tile (dependent)", n, best_s(repeat, [&] { amx_tiles::dpbssd_k32(n); }));
  per("TDPBSSD 16x16, K = 32, two C tiles", 2.0 * n, best_s(repeat, [&] { amx_tiles::dpbssd_k32_two_c(n); }));
  per("TDPBSSD 16x16, K = 64, two C tiles", 2.0 * n, best_s(repeat, [&] { amx_tiles::dpbssd_k64_two_c(n); }));
  per("TILESTORED 16 x 64 bytes", n, best_s(repeat, [&] { amx_tiles::tilestored_c(n); }));
  per("TILELOADD A 16 x 32 bytes", n, best_s(repeat, [&] { amx_tiles::tileloadd_a(n); }));
  per("TILELOADD B 8 x 64 bytes", n, best_s(repeat, [&] { amx_tiles::tileloadd_b(n); }));
  constexpr int64_t nb = 28, loops = 40000;  // k = 896
  const double blocks = double(nb) * loops;
  per("per block: all (zero + 2 loads + TDPBSSD, store, epilogue)", blocks,
      best_s(repeat, [&] { amx_tiles::blocks_all(loops, nb); }));
  per("per block: tile side only (no epilogue)", blocks, best_s(repeat, [&] { amx_tiles::blocks_tile_side(loops, nb); }));
  per("per block: store + epilogue (no tile product)", blocks,
      best_s(repeat, [&] { amx_tiles::blocks_store_epilogue(loops, nb); }));
  per("per block: product + epilogue (no store)", blocks, best_s(repeat, [&] { amx_tiles::blocks_no_store(loops, nb); }));
  per("per block: epilogue only (no tile instruction)", blocks,
      best_s(repeat, [&] { amx_tiles::blocks_epilogue_only(loops, nb); }));
  amx_tiles::teardown();
  // The AMX-BF16 GEMM's 2 x 2 tile step (gemm_amx_bf16.cpp run_panel; the
  // Q8_0 / Q4_0 products from 128 rows and the F32 / F16 / BF16 ones): tiles
  // in L1, then streaming from L2 at the bench decoder's gate/up shape
  // (k 896 = 28 k-blocks, 20 activation tiles, 40 feature tiles per panel).
  std::printf("\n| AMX-BF16 2 x 2 step (2 + 2 TILELOADD, 4 TDPBF16PS) | ns per step | GFLOP/s | cycles per TDPBF16PS |\n|---|---|---|---|\n");
  struct Case { const char* what; int64_t rounds, nkb, a_tiles, b_tiles; };
  for (const Case& c : {Case{"tiles in L1 (A, B 8 KB each)", 20000, 4, 2, 2},
                        Case{"A 560 KB, B 1.1 MB (L2), k 896", 20, 28, 20, 40}}) {
    int64_t steps = 0;
    const double s = best_s(repeat, [&] { steps = amx_tiles::bf16_steps(c.rounds, c.nkb, c.a_tiles, c.b_tiles); });
    std::printf("| %s | %.1f | %.0f | %.1f |\n", c.what, s / double(steps) * 1e9, 65536.0 * double(steps) / s * 1e-9,
                s * hz / double(steps) / 4);
  }
  return 0;
}
