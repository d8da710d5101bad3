#include "engine/kernels.h"

#include "engine/qlayout.h"

#include <cblas.h>
#include <cpuid.h>

#include <algorithm>
#include <chrono>
#include <array>
#include <stdexcept>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

namespace firstread::engine {

namespace avx2 {
// nx inputs x[g * ldx] -> y[g * ldy + r] for rows [r0, r1); Q8_0 / Q4_0: xq[g * cols / 32].
// Decode products (batched decode), rows [r0, r1) against nx inputs into
// y[g * ldy + r]: Q8_0 / Q4_0 against inputs packed once per step, F32 /
// BF16 / F16 against x[g * ldx].
int64_t matvec_q_pack_bytes(int64_t n, int64_t cols);
void matvec_q_pack(const void* xq, int64_t n, int64_t cols, uint8_t* dst);
void matvec_f32_rows(const void* w, int64_t cols, const float* x, int64_t ldx, int nx, float* y, int64_t ldy, int64_t r0,
                     int64_t r1);
void matvec_bf16_rows(const void* w, int64_t cols, const float* x, int64_t ldx, int nx, float* y, int64_t ldy, int64_t r0,
                      int64_t r1);
void matvec_f16_rows(const void* w, int64_t cols, const float* x, int64_t ldx, int nx, float* y, int64_t ldy, int64_t r0,
                     int64_t r1);
void matvec_q8(const void* w, int64_t cols, const uint8_t* packed, int nx, float* y, int64_t ldy, int64_t r0, int64_t r1);
void matvec_q4(const void* w, int64_t cols, const uint8_t* packed, int nx, float* y, int64_t ldy, int64_t r0, int64_t r1);
void convert_bf16(const uint16_t* src, float* dst, int64_t n);
void convert_f16(const uint16_t* src, float* dst, int64_t n);
void convert_q8_rows(const void* w, int64_t cols, int64_t n_rows, float* dst);  // engine layout (qlayout.h)
void convert_q4_rows(const void* w, int64_t cols, int64_t n_rows, float* dst);
void quantize_act(const float* x, int64_t n_blocks, void* dst);
void softmax(float* v, int64_t n);
void gelu(float* v, int64_t n);
void silu_mul(float* gate, const float* up, int64_t n);
float dot(const float* a, const float* b, int64_t n);
void axpy(float* y, float a, const float* x, int64_t n);
}  // namespace avx2

namespace avx2_gemm {
// Batched Q8_0 / Q4_0 products on the avx2 path (gemm_avx2.cpp): activations
// packed once per product (tiles of rows [t0, t1) per call), output features [n0, n1) per call.
int64_t pack_bytes(int64_t m, int64_t k);
int64_t pack_tiles(int64_t m);
void pack(const float* x, int64_t m, int64_t k, uint8_t* dst, int64_t t0, int64_t t1);
void run(int kind, const void* w, int64_t n_rows, int64_t k, const uint8_t* packed, int64_t m, float* y, int64_t ldy,
         int64_t n0, int64_t n1);
}  // namespace avx2_gemm

namespace avx512 {
// Decode products of Q8_0 / Q4_0 rows against nx inputs (batched decode).
int64_t matvec_pack_bytes(int64_t n, int64_t cols);
void matvec_pack(const void* xq, int64_t n, int64_t cols, uint8_t* dst);
void matvec_q8(const void* w, int64_t cols, const uint8_t* packed, int nx, float* y, int64_t ldy, int64_t r0, int64_t r1);
void matvec_q4(const void* w, int64_t cols, const uint8_t* packed, int nx, float* y, int64_t ldy, int64_t r0, int64_t r1);
// The same for F32 / F16 / BF16 rows (kind = DType), inputs packed by matvec_f_pack.
int64_t matvec_f_pack_floats(int64_t cols);
void matvec_f_pack(int kind, const float* x, int64_t n, int64_t cols, float* dst);
void matvec_f(int kind, const void* w, int64_t cols, const float* packed, int nx, float* y, int64_t ldy, int64_t r0,
              int64_t r1);
int64_t gemm_pack_bytes(int kind, int64_t m, int64_t k);
void gemm_pack(int kind, const float* x, int64_t m, int64_t k, uint8_t* dst, int64_t t0, int64_t t1);
void gemm_run(int kind, const void* w, int64_t n_rows, int64_t k, const uint8_t* packed, int64_t m, float* y,
              int64_t ldy, int64_t n0, int64_t n1);
int64_t attention_scratch_floats(int64_t n, int64_t hd);
void attention_head(const float* q, const float* k, const float* v, int64_t ld, int64_t n, int64_t hd, float scale,
                    float* out, int64_t ldo, float* scratch);
// Decode attention of the query heads sharing one KV head (hd % 16 == 0, hd <= 256): kernels.h attention_decode_group.
void attention_decode_scores(const float* q, int heads, const float* k, int64_t ld, int64_t n, int64_t hd, float scale,
                             float* scores);
void attention_decode_mix(const float* p, int heads, const float* v, int64_t ld, int64_t n, int64_t hd, float* out);
}  // namespace avx512

namespace amx {
// AMX tile GEMMs on the amx path (gemm_amx*.cpp), entered only after
// detect_amx(): CPUID and the kernel's permission for the tile data.
bool request_tile_permission();
// Whether this weight kind (DType order) has an AMX GEMM; kinds without one
// run the avx512 GEMM on the amx path.
bool has_gemm(int kind);
int64_t gemm_pack_bytes(int kind, int64_t m, int64_t k);
int64_t gemm_pack_tiles(int kind, int64_t m);
void gemm_pack(int kind, const float* x, int64_t m, int64_t k, uint8_t* dst, int64_t t0, int64_t t1);
// Output features per task: a multiple of this.
int64_t gemm_unit_rows(int kind);
void gemm_run(int kind, const void* w, int64_t n_rows, int64_t k, const uint8_t* packed, int64_t m, float* y,
              int64_t ldy, int64_t n0, int64_t n1);
// Vision attention (QK^T and PV) on AMX-BF16 tiles (gemm_amx_bf16.cpp), and
// the decoder's causal prefill attention on the same tiles.
int64_t attention_scratch_floats(int64_t n, int64_t hd);
void attention_head(const float* q, const float* k, const float* v, int64_t ld, int64_t n, int64_t hd, float scale,
                    float* out, int64_t ldo, float* scratch);
int64_t causal_attention_scratch_floats(int64_t n, int64_t n_past, int64_t hd);
void causal_attention_head(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv, int64_t n,
                           int64_t n_past, int64_t hd, float scale, float* out, int64_t ldo, float* scratch);
}  // namespace amx

// ---------------------------------------------------------------- threads

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
  }
  cv_start_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_tasks() {
  for (;;) {
    int t = next_task_.fetch_add(1);
    if (t >= n_tasks_) break;
    job_call_(job_ctx_, t);
  }
}

static inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    // After a decode job spin ~50 us (the next job comes microseconds later);
    // after a batched job sleep at once so OpenBLAS's threads get the cores.
    bool got = false;
    const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
    for (int spin = 0; spin_after_.load(std::memory_order_relaxed); ++spin) {
      if (generation_.load(std::memory_order_acquire) != seen || stop_.load(std::memory_order_relaxed)) {
        got = true;
        break;
      }
      cpu_relax();
      if ((spin & 63) == 63 && std::chrono::steady_clock::now() > spin_until) break;
    }
    if (!got) {
      std::unique_lock<std::mutex> lk(mu_);
      sleepers_.fetch_add(1);
      cv_start_.wait(lk, [&] { return stop_.load() || generation_.load() != seen; });
      sleepers_.fetch_sub(1);
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    run_tasks();
    active_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::run_job(int n_tasks, void* ctx, void (*call)(void*, int), bool spin_after) {
  if (n_tasks <= 0) return;
  if (workers_.empty() || n_tasks == 1) {
    for (int i = 0; i < n_tasks; ++i) call(ctx, i);
    return;
  }
  job_ctx_ = ctx;
  job_call_ = call;
  spin_after_.store(spin_after, std::memory_order_relaxed);
  n_tasks_ = n_tasks;
  next_task_.store(0, std::memory_order_relaxed);
  active_.store(int(workers_.size()), std::memory_order_relaxed);
  {
    // The mutex orders the publication against a worker about to sleep.
    std::lock_guard<std::mutex> lk(mu_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  if (sleepers_.load() > 0) cv_start_.notify_all();
  run_tasks();
  // Workers finish within microseconds unless the host has descheduled one;
  // then yield instead of burning the time slice it needs.
  for (int spin = 0; active_.load(std::memory_order_acquire) != 0; ++spin) {
    if (spin < 4096) cpu_relax();
    else std::this_thread::yield();
  }
  job_ctx_ = nullptr;
}

void set_blas_threads(int n) { openblas_set_num_threads(std::max(1, n)); }
int blas_threads() { return openblas_get_num_threads(); }

// ---------------------------------------------------------------- dispatch

static bool detect_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
static bool detect_avx512() {
  __builtin_cpu_init();
  return detect_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

// AMX: CPUID leaf 7 (EDX bits 22 AMX-BF16, 24 AMX-TILE, 25 AMX-INT8; subleaf 1
// EAX bit 5 AVX512-BF16), then Linux's permission to use the tile data
// (arch_prctl ARCH_REQ_XCOMP_PERM, asked once for the whole process): a kernel
// or hypervisor that does not grant it leaves the CPU flags set but faults on
// the first tile instruction.
static bool detect_amx() {
  if (!detect_avx512() || !__builtin_cpu_supports("avx512bf16")) return false;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const unsigned need = (1u << 22) | (1u << 24) | (1u << 25);
  if ((d & need) != need) return false;
  return amx::request_tile_permission();
}

bool kernel_path_supported(KernelPath p) {
  static const bool avx2 = detect_avx2(), avx512 = detect_avx512();
  switch (p) {
    case KernelPath::Scalar: return true;
    case KernelPath::Avx2: return avx2;
    case KernelPath::Avx512: return avx512;
    case KernelPath::Amx: {
      static const bool amx = detect_amx();
      return amx;
    }
  }
  return false;
}

KernelPath best_kernel_path() {
  if (kernel_path_supported(KernelPath::Amx)) return KernelPath::Amx;
  if (kernel_path_supported(KernelPath::Avx512)) return KernelPath::Avx512;
  if (kernel_path_supported(KernelPath::Avx2)) return KernelPath::Avx2;
  return KernelPath::Scalar;
}

const char* kernel_path_name(KernelPath p) {
  switch (p) {
    case KernelPath::Scalar: return "scalar";
    case KernelPath::Avx2: return "avx2";
    case KernelPath::Avx512: return "avx512";
    case KernelPath::Amx: return "amx";
  }
  return "?";
}

KernelPath parse_kernel_path(const std::string& s) {
  if (s == "scalar") return KernelPath::Scalar;
  if (s == "avx2") return KernelPath::Avx2;
  if (s == "avx512") return KernelPath::Avx512;
  if (s == "amx") return KernelPath::Amx;
  throw std::invalid_argument("unknown kernel path '" + s + "' (scalar, avx2, avx512, amx)");
}

namespace {
// The run-time choice: FIRSTREAD_KERNELS if set (capped at what the CPU has),
// else the best path.
struct DefaultPath {
  KernelPath path = KernelPath::Scalar;
  std::string note;
};
const DefaultPath& default_path() {
  static const DefaultPath d = [] {
    DefaultPath r;
    r.path = best_kernel_path();
    r.note = "best this CPU supports";
    if (const char* env = std::getenv("FIRSTREAD_KERNELS"); env && *env) {
      try {
        const KernelPath want = parse_kernel_path(env);
        if (kernel_path_supported(want)) {
          r.path = want;
          r.note = std::string("FIRSTREAD_KERNELS=") + env;
        } else {
          r.note = std::string("FIRSTREAD_KERNELS=") + env + " not supported by this CPU";
        }
      } catch (const std::invalid_argument& e) {
        r.note = std::string("FIRSTREAD_KERNELS ignored: ") + e.what();
      }
    }
    return r;
  }();
  return d;
}
std::atomic<int> g_path{-1};  // -1: the run-time choice
}  // namespace

KernelPath kernel_path() {
  const int p = g_path.load(std::memory_order_relaxed);
  return p < 0 ? default_path().path : KernelPath(p);
}

void force_kernel_path(KernelPath p) {
  if (!kernel_path_supported(p))
    throw std::invalid_argument(std::string("kernel path ") + kernel_path_name(p) + " is not supported by this CPU");
  g_path.store(int(p));
}
void reset_kernel_path() { g_path.store(-1); }

// The weight formats whose batched products run on AMX tiles, e.g. "BF16/F16".
static std::string amx_gemm_kinds() {
  std::string s;
  for (DType t : {DType::F32, DType::BF16, DType::F16, DType::Q8_0, DType::Q4_0})
    if (amx::has_gemm(int(t))) s += (s.empty() ? "" : "/") + std::string(dtype_name(t));
  return s.empty() ? "products: none yet" : s + " products";
}

std::string kernel_path_description() {
  const KernelPath p = kernel_path();
  std::string s = kernel_path_name(p);
  if (p == KernelPath::Amx)
    s += std::string(" (AMX tile GEMMs for batched ") + amx_gemm_kinds() +
         "; otherwise as avx512: AVX-512 F/BW/VL+VNNI GEMMs and decode rows, AVX2/FMA/F16C vector math)";
  else if (p == KernelPath::Avx512)
    s += " (AVX-512 F/BW/VL+VNNI GEMMs and decode rows from F32/BF16/F16/Q8_0/Q4_0; AVX2/FMA/F16C vector math)";
  else if (p == KernelPath::Avx2)
    s += " (AVX2/FMA/F16C decode and vector math; batched Q8_0/Q4_0 by the int8 GEMM, BF16/F16 via F32 blocks + OpenBLAS)";
  else
    s += " (portable C++; batched products via F32 blocks + OpenBLAS)";
  const int forced = g_path.load();
  s += "; ";
  s += forced >= 0 ? "forced by the caller" : default_path().note;
  return s;
}

bool cpu_has_avx2_fma_f16c() { return kernel_path() != KernelPath::Scalar; }
void force_scalar_kernels(bool on) {
  if (on) force_kernel_path(KernelPath::Scalar);
  else reset_kernel_path();
}

float bf16_to_f32(uint16_t v) {
  uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400));
      u = sign | uint32_t(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | mant << 13;
  } else {
    u = sign | (exp + 112) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffff) > 0x7f800000) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fff + ((u >> 16) & 1);
  return uint16_t(u >> 16);
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000;
  int32_t exp = int32_t((u >> 23) & 0xff) - 127 + 15;
  uint32_t mant = u & 0x7fffff;
  if (((u >> 23) & 0xff) == 0xff) return uint16_t(sign | 0x7c00 | (mant ? 0x200 : 0));
  if (exp >= 31) return uint16_t(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return uint16_t(sign);
    mant |= 0x800000;
    uint32_t shift = uint32_t(14 - exp);
    uint32_t half = mant >> shift, rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return uint16_t(sign | half);
  }
  uint32_t half = sign | uint32_t(exp) << 10 | mant >> 13, rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) ++half;  // may carry into exp: correct
  return uint16_t(half);
}

void quantize_rows_q8(const float* src, int64_t rows, int64_t cols, void* dst) {
  const int64_t nb = cols / kQBlock;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      const float* x = src + r * cols + b * kQBlock;
      float amax = 0.f;
      for (int i = 0; i < kQBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
      BlockQ8 blk;
      const float d = amax / 127.f;
      blk.d = f32_to_f16(d);
      const float inv = d > 0 ? 1.f / d : 0.f;
      for (int i = 0; i < kQBlock; ++i) blk.q[i] = int8_t(std::lround(x[i] * inv));
      qlayout::q8_write(static_cast<uint8_t*>(dst) + r * nb * qlayout::kQ8Bytes, nb, b, blk.d, blk.q);
    }
}

void quantize_rows_q4(const float* src, int64_t rows, int64_t cols, void* dst) {
  const int64_t nb = cols / kQBlock;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < nb; ++b) {
      const float* x = src + r * cols + b * kQBlock;
      // The signed value of largest magnitude maps to -8, so the full range
      // -8..7 is used on the side that needs it (llama.cpp's quantize_row_q4_0).
      float amax = 0.f, max = 0.f;
      for (int i = 0; i < kQBlock; ++i)
        if (std::fabs(x[i]) > amax) {
          amax = std::fabs(x[i]);
          max = x[i];
        }
      const float d = max / -8.f;
      const float inv = d != 0.f ? 1.f / d : 0.f;
      BlockQ4 blk;
      blk.d = f32_to_f16(d);
      for (int j = 0; j < kQBlock / 2; ++j) {
        const int lo = std::min(15, int(x[j] * inv + 8.5f));
        const int hi = std::min(15, int(x[j + kQBlock / 2] * inv + 8.5f));
        blk.qs[j] = uint8_t(lo | (hi << 4));
      }
      qlayout::q4_write(static_cast<uint8_t*>(dst) + r * nb * qlayout::kQ4Bytes, nb, b, blk.d, blk.qs);
    }
}

BlockQ8 q8_block(const WeightView& w, int64_t r, int64_t b) {
  const int64_t nb = w.cols / kQBlock;
  BlockQ8 blk;
  qlayout::q8_read(static_cast<const uint8_t*>(w.data) + r * nb * qlayout::kQ8Bytes, nb, b, &blk.d, blk.q);
  return blk;
}

BlockQ4 q4_block(const WeightView& w, int64_t r, int64_t b) {
  const int64_t nb = w.cols / kQBlock;
  BlockQ4 blk;
  qlayout::q4_read(static_cast<const uint8_t*>(w.data) + r * nb * qlayout::kQ4Bytes, nb, b, &blk.d, blk.qs);
  return blk;
}

void quantize_act_q8(const float* x, int64_t cols, BlockQ8Act* dst) {
  if (cpu_has_avx2_fma_f16c()) return avx2::quantize_act(x, cols / kQBlock, dst);
  for (int64_t b = 0; b < cols / kQBlock; ++b) {
    const float* xb = x + b * kQBlock;
    float amax = 0.f;
    for (int i = 0; i < kQBlock; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float d = amax / 127.f, inv = d > 0 ? 127.f / amax : 0.f;
    dst[b].d = d;
    int sum = 0;
    for (int i = 0; i < kQBlock; ++i) {
      dst[b].q[i] = int8_t(std::nearbyint(xb[i] * inv));
      sum += dst[b].q[i];
    }
    dst[b].s = d * float(sum);
  }
}

size_t matrix_bytes(DType t, int64_t rows, int64_t cols) {
  const size_t n = size_t(rows) * size_t(cols);
  switch (t) {
    case DType::Q8_0: return n / kQBlock * sizeof(BlockQ8);
    case DType::Q4_0: return n / kQBlock * sizeof(BlockQ4);
    case DType::F32: return n * 4;
    default: return n * 2;
  }
}

// The scalar kernels compute exactly what the AVX2 ones do (integer block
// dots for the quantised formats), so the two are compared in the tests.
// Inputs are taken one at a time: nx > 1 changes nothing per (row, input).
static void scalar_matvec(const WeightView& w, const float* x, const BlockQ8Act* xq, float* y, int64_t r0,
                          int64_t r1) {
  const int64_t cols = w.cols, nb = cols / kQBlock;
  for (int64_t r = r0; r < r1; ++r) {
    float s = 0.f;
    if (w.dtype == DType::Q8_0) {
      for (int64_t b = 0; b < nb; ++b) {
        const BlockQ8 blk = q8_block(w, r, b);
        int32_t is = 0;
        for (int i = 0; i < kQBlock; ++i) is += int32_t(blk.q[i]) * xq[b].q[i];
        s += float(is) * (f16_to_f32(blk.d) * xq[b].d);
      }
    } else if (w.dtype == DType::Q4_0) {
      for (int64_t b = 0; b < nb; ++b) {
        const BlockQ4 blk = q4_block(w, r, b);
        int32_t is = 0;
        for (int j = 0; j < kQBlock / 2; ++j) {
          is += (int32_t(blk.qs[j] & 15) - 8) * xq[b].q[j];
          is += (int32_t(blk.qs[j] >> 4) - 8) * xq[b].q[j + kQBlock / 2];
        }
        s += float(is) * (f16_to_f32(blk.d) * xq[b].d);
      }
    } else if (w.dtype == DType::F32) {
      const float* row = static_cast<const float*>(w.data) + r * cols;
      for (int64_t i = 0; i < cols; ++i) s += row[i] * x[i];
    } else {
      const uint16_t* row = static_cast<const uint16_t*>(w.data) + r * cols;
      if (w.dtype == DType::BF16)
        for (int64_t i = 0; i < cols; ++i) s += bf16_to_f32(row[i]) * x[i];
      else
        for (int64_t i = 0; i < cols; ++i) s += f16_to_f32(row[i]) * x[i];
    }
    y[r] = s;
  }
}

static bool is_block_quantised(DType t) { return t == DType::Q8_0 || t == DType::Q4_0; }

// Rows [r0, r1) of w against nx inputs x[g * w.cols] (xq[g * w.cols / 32] when
// block-quantised) into y[g * ldy + r]: each weight row is read once for all
// inputs, and each (row, input) result is bit-identical to nx = 1.
// The inputs repacked once per step (null where unused): packed_q for Q8_0 /
// Q4_0 (avx2, avx512), packed_f for F32 / F16 / BF16 (avx512, matvec_f_pack
// for w's dtype).
static void matvec_range(const WeightView& w, const float* x, const BlockQ8Act* xq, const uint8_t* packed_q,
                         const float* packed_f, int nx, float* y, int64_t ldy, int64_t r0, int64_t r1) {
  const int64_t cols = w.cols, nb = cols / kQBlock;
  switch (kernel_path()) {
    case KernelPath::Amx:  // decode rows are bandwidth bound: the avx512 kernels
    case KernelPath::Avx512:
      if (w.dtype == DType::Q8_0) return avx512::matvec_q8(w.data, cols, packed_q, nx, y, ldy, r0, r1);
      if (w.dtype == DType::Q4_0) return avx512::matvec_q4(w.data, cols, packed_q, nx, y, ldy, r0, r1);
      return avx512::matvec_f(int(w.dtype), w.data, cols, packed_f, nx, y, ldy, r0, r1);
    case KernelPath::Avx2:
      if (w.dtype == DType::Q8_0) return avx2::matvec_q8(w.data, cols, packed_q, nx, y, ldy, r0, r1);
      if (w.dtype == DType::Q4_0) return avx2::matvec_q4(w.data, cols, packed_q, nx, y, ldy, r0, r1);
      if (w.dtype == DType::BF16) return avx2::matvec_bf16_rows(w.data, cols, x, cols, nx, y, ldy, r0, r1);
      if (w.dtype == DType::F16) return avx2::matvec_f16_rows(w.data, cols, x, cols, nx, y, ldy, r0, r1);
      return avx2::matvec_f32_rows(w.data, cols, x, cols, nx, y, ldy, r0, r1);
    case KernelPath::Scalar:
      for (int g = 0; g < nx; ++g)
        scalar_matvec(w, x ? x + g * cols : nullptr, xq ? xq + g * nb : nullptr, y + g * ldy, r0, r1);
      return;
  }
}

void convert_rows_f32(const WeightView& w, int64_t r0, int64_t r1, float* dst) {
  const int64_t n = (r1 - r0) * w.cols;
  if (w.dtype == DType::Q8_0 || w.dtype == DType::Q4_0) {
    // Each block read back as llama.cpp's (q8_block / q4_block), then dequantised.
    const int64_t nb = w.cols / kQBlock;
    const bool q4 = w.dtype == DType::Q4_0;
    if (cpu_has_avx2_fma_f16c()) {
      const uint8_t* first = static_cast<const uint8_t*>(w.data) + matrix_bytes(w.dtype, r0, w.cols);
      if (q4) avx2::convert_q4_rows(first, w.cols, r1 - r0, dst);
      else avx2::convert_q8_rows(first, w.cols, r1 - r0, dst);
      return;
    }
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t b = 0; b < nb; ++b) {
        float* out = dst + (r - r0) * w.cols + b * kQBlock;
        if (q4) {
          const BlockQ4 blk = q4_block(w, r, b);
          const float d = f16_to_f32(blk.d);
          for (int j = 0; j < kQBlock / 2; ++j) {
            out[j] = d * float(int(blk.qs[j] & 15) - 8);
            out[j + kQBlock / 2] = d * float(int(blk.qs[j] >> 4) - 8);
          }
        } else {
          const BlockQ8 blk = q8_block(w, r, b);
          const float d = f16_to_f32(blk.d);
          for (int i = 0; i < kQBlock; ++i) out[i] = d * float(blk.q[i]);
        }
      }
    return;
  }
  if (w.dtype == DType::F32) {
    std::memcpy(dst, static_cast<const float*>(w.data) + r0 * w.cols, size_t(n) * 4);
    return;
  }
  const uint16_t* src = static_cast<const uint16_t*>(w.data) + r0 * w.cols;
  if (cpu_has_avx2_fma_f16c()) {
    if (w.dtype == DType::BF16) avx2::convert_bf16(src, dst, n);
    else avx2::convert_f16(src, dst, n);
    return;
  }
  if (w.dtype == DType::BF16)
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
  else
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}

// ---------------------------------------------------------------- linear

// Rows per decode task. Long contiguous runs per thread keep the hardware
// prefetchers streaming (interleaving 16-row pieces between threads capped two
// threads at one thread's bandwidth); several tasks per thread still balance
// a thread that the host delays.
static int64_t decode_chunk_rows(int64_t rows, int threads) {
  constexpr int64_t tasks_per_thread = 4;
  const int64_t c = (rows + threads * tasks_per_thread - 1) / (threads * tasks_per_thread);
  return std::max<int64_t>(16, (c + 15) / 16 * 16);
}

// The input of a product with block-quantised weights, quantised once for
// all threads (scratch reused: no allocation after the first token).
static const BlockQ8Act* quantised_input(LinearScratch& scratch, const float* x, int64_t n, int64_t cols) {
  const int64_t nb = cols / kQBlock;
  scratch.xq.resize(size_t(n * nb));
  for (int64_t t = 0; t < n; ++t) quantize_act_q8(x + t * cols, cols, scratch.xq.data() + t * nb);
  return scratch.xq.data();
}

// Batched products on the avx512 path: the activations are packed once
// (tiles of 16 rows; BF16 pairs, F32, or int8 blocks), then the pool splits the
// output features into contiguous runs (a few per thread, dynamically taken).
static bool avx512_kernels() {
  const KernelPath p = kernel_path();
  return p == KernelPath::Avx512 || p == KernelPath::Amx;
}
// Batched products on AMX tiles (amx path, weight kinds gemm_amx*.cpp serves).
static bool use_amx_gemm(const WeightView& w) {
  return kernel_path() == KernelPath::Amx && amx::has_gemm(int(w.dtype));
}
static bool use_avx512_gemm(const WeightView& w) {
  // BF16 / F16 any width; Q8_0 / Q4_0 widths are multiples of 32 by construction.
  return avx512_kernels() && w.dtype != DType::F32 && !use_amx_gemm(w);
}

// Packs x[n][cols] for weights of `dtype` into scratch (64-byte aligned).
static const uint8_t* pack_for_gemm(ThreadPool& pool, const float* x, int64_t n, int64_t cols, DType dtype,
                                    LinearScratch& scratch) {
  const int kind = int(dtype);
  const int64_t bytes = avx512::gemm_pack_bytes(kind, n, cols);
  scratch.packed.resize(size_t(bytes) + 64);
  uint8_t* packed = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(scratch.packed.data()) + 63) & ~uintptr_t(63));
  const int64_t tiles = (n + 15) / 16;
  const int pack_parts = int(std::min<int64_t>(pool.size(), tiles));
  pool.parallel_for(pack_parts, [&](int p) {
    avx512::gemm_pack(kind, x, n, cols, packed, tiles * p / pack_parts, tiles * (p + 1) / pack_parts);
  }, /*spin_after=*/false);
  return packed;
}

// Output features per task: multiples of the micro-kernel's rows (12 for
// BF16 / F16, 6 otherwise), about four runs per thread so a thread the host
// delays is covered by the other.
static int64_t gemm_run_rows(int64_t rows, int threads, DType dtype) {
  const int64_t unit = kernel_path() == KernelPath::Amx && amx::has_gemm(int(dtype)) ? amx::gemm_unit_rows(int(dtype))
                       : dtype == DType::BF16 || dtype == DType::F16                 ? 12
                                                                                     : 6;
  const int64_t run = (rows + threads * 4 - 1) / (threads * 4);
  return std::max<int64_t>(unit, (run + unit - 1) / unit * unit);
}

// The output features of every job cut into runs (gemm_run_rows), all of them
// one pool job: run_rows(w, y, n0, n1) computes rows [n0, n1) of one job.
template <typename RunRows>
static void gemm_jobs(ThreadPool& pool, const LinearJob* jobs, size_t nj, const RunRows& run_rows) {
  constexpr size_t kMaxJobs = 8;
  if (nj > kMaxJobs) throw std::logic_error("batched linear_multi: too many jobs");
  std::array<int, kMaxJobs + 1> first_task{};
  std::array<int64_t, kMaxJobs> run{};
  for (size_t j = 0; j < nj; ++j) {
    run[j] = gemm_run_rows(jobs[j].w.rows, pool.size(), jobs[j].w.dtype);
    first_task[j + 1] = first_task[j] + int((jobs[j].w.rows + run[j] - 1) / run[j]);
  }
  pool.parallel_for(first_task[nj], [&](int task) {
    size_t j = 0;
    while (task >= first_task[j + 1]) ++j;
    const int64_t n0 = int64_t(task - first_task[j]) * run[j], n1 = std::min(jobs[j].w.rows, n0 + run[j]);
    run_rows(jobs[j].w, jobs[j].y, n0, n1);
  }, /*spin_after=*/false);
}

// Several products of one input (q/k/v, gate/up): the input is packed once and
// all their output runs go to the pool as one job.
static void gemm_avx512(ThreadPool& pool, const float* x, int64_t n, const LinearJob* jobs, size_t nj,
                        LinearScratch& scratch) {
  const uint8_t* packed = pack_for_gemm(pool, x, n, jobs[0].w.cols, jobs[0].w.dtype, scratch);
  gemm_jobs(pool, jobs, nj, [&](const WeightView& w, float* y, int64_t n0, int64_t n1) {
    avx512::gemm_run(int(w.dtype), w.data, w.rows, w.cols, packed, n, y, w.rows, n0, n1);
  });
}

// Several products of one input on AMX tiles (same format and width).
static void gemm_amx(ThreadPool& pool, const float* x, int64_t n, const LinearJob* jobs, size_t nj,
                     LinearScratch& scratch) {
  const int kind = int(jobs[0].w.dtype);
  const int64_t cols = jobs[0].w.cols;
  scratch.packed.resize(size_t(amx::gemm_pack_bytes(kind, n, cols)) + 64);
  uint8_t* packed = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(scratch.packed.data()) + 63) & ~uintptr_t(63));
  const int64_t tiles = amx::gemm_pack_tiles(kind, n);
  const int pack_parts = int(std::min<int64_t>(pool.size(), tiles));
  pool.parallel_for(pack_parts, [&](int p) {
    amx::gemm_pack(kind, x, n, cols, packed, tiles * p / pack_parts, tiles * (p + 1) / pack_parts);
  }, /*spin_after=*/false);
  gemm_jobs(pool, jobs, nj, [&](const WeightView& w, float* y, int64_t n0, int64_t n1) {
    amx::gemm_run(int(w.dtype), w.data, w.rows, w.cols, packed, n, y, w.rows, n0, n1);
  });
}

// Batched Q8_0 / Q4_0 products on the avx2 path: gemm_avx2.cpp's int8 GEMM
// straight from the interleaved blocks (no F32 copy of the weights, no OpenBLAS).
static bool use_avx2_gemm(const WeightView& w) {
  return kernel_path() == KernelPath::Avx2 && is_block_quantised(w.dtype) && w.cols % kQBlock == 0;
}

// Several products of one input (q/k/v, gate/up; all use_avx2_gemm, one
// width): the input is quantised and packed once (the pack does not depend on
// Q8_0 vs Q4_0), then every job's output runs go to the pool as one job.
static void gemm_avx2(ThreadPool& pool, const float* x, int64_t n, const LinearJob* jobs, size_t nj,
                      LinearScratch& scratch) {
  const int64_t cols = jobs[0].w.cols;
  scratch.packed.resize(size_t(avx2_gemm::pack_bytes(n, cols)) + 64);
  uint8_t* packed = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(scratch.packed.data()) + 63) & ~uintptr_t(63));
  const int64_t tiles = avx2_gemm::pack_tiles(n);
  const int pack_parts = int(std::min<int64_t>(pool.size(), tiles));
  pool.parallel_for(pack_parts, [&](int p) {
    avx2_gemm::pack(x, n, cols, packed, tiles * p / pack_parts, tiles * (p + 1) / pack_parts);
  }, /*spin_after=*/false);
  gemm_jobs(pool, jobs, nj, [&](const WeightView& w, float* y, int64_t n0, int64_t n1) {
    avx2_gemm::run(int(w.dtype), w.data, w.rows, w.cols, packed, n, y, w.rows, n0, n1);
  });
}

// Decode products: the output rows of every job split into a few long runs
// per thread (one pool job for all of them), each run read once for all n
// inputs. Fixed-size bookkeeping on the stack: no allocation per token.
static void matvec_jobs(ThreadPool& pool, const float* x, int64_t n, const LinearJob* jobs, size_t nj,
                        LinearScratch& scratch) {
  constexpr size_t kMaxJobs = 8;
  if (nj > kMaxJobs) throw std::logic_error("linear_multi: too many jobs");
  int64_t total_rows = 0;
  for (size_t j = 0; j < nj; ++j) total_rows += jobs[j].w.rows;
  const int64_t chunk = decode_chunk_rows(total_rows, pool.size());
  std::array<int, kMaxJobs + 1> first_task{};
  bool any_quantised = false, any_bf16 = false, any_f = false;  // any_f: F32 / F16
  for (size_t j = 0; j < nj; ++j) {
    first_task[j + 1] = first_task[j] + int((jobs[j].w.rows + chunk - 1) / chunk);
    const DType t = jobs[j].w.dtype;
    any_quantised = any_quantised || is_block_quantised(t);
    any_bf16 = any_bf16 || t == DType::BF16;
    any_f = any_f || t == DType::F32 || t == DType::F16;
    if (jobs[j].w.cols != jobs[0].w.cols) throw std::logic_error("linear_multi: inputs of different widths");
  }
  const int64_t cols = jobs[0].w.cols;
  const BlockQ8Act* xq = any_quantised ? quantised_input(scratch, x, n, cols) : nullptr;
  // Each input packed once for all jobs and threads: int8 groups of blocks
  // with their start values and scales (avx2, avx512); floats in the
  // kernel's order (avx512).
  const uint8_t* packed_q = nullptr;
  const float* packed_f = nullptr;
  const float* packed_bf16 = nullptr;
  const KernelPath path = kernel_path();
  if (path != KernelPath::Scalar) {
    const bool wide = path == KernelPath::Avx512 || path == KernelPath::Amx;
    if (any_quantised) {
      const int64_t bytes = wide ? avx512::matvec_pack_bytes(n, cols) : avx2::matvec_q_pack_bytes(n, cols);
      scratch.packed.resize(size_t(bytes) + 64);
      uint8_t* p = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(scratch.packed.data()) + 63) & ~uintptr_t(63));
      if (wide) avx512::matvec_pack(xq, n, cols, p);
      else avx2::matvec_q_pack(xq, n, cols, p);
      packed_q = p;
    }
    if (wide && (any_bf16 || any_f)) {
      // BF16's element order differs from F32 / F16's: one region each.
      const size_t region = size_t(n * avx512::matvec_f_pack_floats(cols));
      scratch.xf.resize(2 * region + 16);
      float* p = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(scratch.xf.data()) + 63) & ~uintptr_t(63));
      if (any_f) avx512::matvec_f_pack(int(DType::F32), x, n, cols, p);
      if (any_bf16) avx512::matvec_f_pack(int(DType::BF16), x, n, cols, p + region);
      packed_f = p;
      packed_bf16 = p + region;
    }
  }
  pool.parallel_for(first_task[nj], [&](int task) {
    size_t j = 0;
    while (task >= first_task[j + 1]) ++j;
    const LinearJob& job = jobs[j];
    const int64_t rows = job.w.rows;
    const int64_t r0 = int64_t(task - first_task[j]) * chunk, r1 = std::min(rows, r0 + chunk);
    matvec_range(job.w, x, xq, packed_q, job.w.dtype == DType::BF16 ? packed_bf16 : packed_f, int(n), job.y, rows, r0,
                 r1);
    if (job.bias)
      for (int64_t t = 0; t < n; ++t)
        for (int64_t r = r0; r < r1; ++r) job.y[t * rows + r] += job.bias[r];
  });
}

void linear_rows(ThreadPool& pool, const float* x, int64_t n, const WeightView& w, const float* bias, float* y,
                 LinearScratch& scratch) {
  if (n <= 0) return;
  const LinearJob job{w, bias, y};
  matvec_jobs(pool, x, n, &job, 1, scratch);
}

void linear_multi_rows(ThreadPool& pool, const float* x, int64_t n, std::initializer_list<LinearJob> jobs,
                       LinearScratch& scratch) {
  if (n <= 0) return;
  matvec_jobs(pool, x, n, jobs.begin(), jobs.size(), scratch);
}

void linear(ThreadPool& pool, const float* x, int64_t n, const WeightView& w, const float* bias, float* y,
            LinearScratch& scratch) {
  const int64_t rows = w.rows, cols = w.cols;
  if (n < 4) {
    // Decode: bandwidth bound; output rows split over threads, weights read once for the n rows.
    return linear_rows(pool, x, n, w, bias, y, scratch);
  } else if (use_amx_gemm(w)) {
    const LinearJob job{w, nullptr, y};
    gemm_amx(pool, x, n, &job, 1, scratch);
  } else if (use_avx512_gemm(w)) {
    const LinearJob job{w, nullptr, y};
    gemm_avx512(pool, x, n, &job, 1, scratch);
  } else if (use_avx2_gemm(w)) {
    const LinearJob job{w, nullptr, y};
    gemm_avx2(pool, x, n, &job, 1, scratch);
  } else {
    // Batched: OpenBLAS runs single-threaded and the pool splits the output
    // features, so exactly pool.size() threads compute and none spin idle
    // (OpenBLAS's own threads would busy-wait between our calls).
    const int parts = int(std::min<int64_t>(pool.size(), std::max<int64_t>(1, rows / 16)));
    int64_t block = 0;
    if (w.dtype != DType::F32) {
      // 16-bit / block-quantised weights: each thread converts up to 16 MB of its rows to float32,
      // then one sgemm over them (the conversion is a few percent of the product).
      block = std::max<int64_t>(16, (int64_t(16) << 20) / (cols * 4));
      block = std::min(block, (rows + parts - 1) / parts);
      scratch.wbuf.resize(size_t(parts) * size_t(block) * size_t(cols));
    }
    pool.parallel_for(parts, [&](int p) {
      const int64_t a = rows * p / parts, b = rows * (p + 1) / parts;
      if (w.dtype == DType::F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(b - a), int(cols), 1.f, x, int(cols),
                    static_cast<const float*>(w.data) + a * cols, int(cols), 0.f, y + a, int(rows));
        return;
      }
      float* buf = scratch.wbuf.data() + size_t(p) * size_t(block) * size_t(cols);
      for (int64_t r0 = a; r0 < b; r0 += block) {
        const int64_t r1 = std::min(b, r0 + block);
        convert_rows_f32(w, r0, r1, buf);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(r1 - r0), int(cols), 1.f, x, int(cols), buf,
                    int(cols), 0.f, y + r0, int(rows));
      }
    }, /*spin_after=*/false);
  }
  if (bias)
    for (int64_t t = 0; t < n; ++t) {
      float* yt = y + t * rows;
      for (int64_t r = 0; r < rows; ++r) yt[r] += bias[r];
    }
}

void linear_multi(ThreadPool& pool, const float* x, int64_t n, std::initializer_list<LinearJob> job_list,
                  LinearScratch& scratch) {
  if (n >= 4) {
    // One packed input for all: same width, and the avx512 GEMM (same format)
    // or the avx2 int8 GEMM (Q8_0 and Q4_0 share its pack).
    bool shared_amx = true, shared512 = true, shared2 = true;
    for (const auto& j : job_list) {
      const bool same_width = j.w.cols == job_list.begin()->w.cols;
      const bool same_format = j.w.dtype == job_list.begin()->w.dtype;
      shared_amx = shared_amx && use_amx_gemm(j.w) && same_format && same_width;
      shared512 = shared512 && use_avx512_gemm(j.w) && same_format && same_width;
      shared2 = shared2 && use_avx2_gemm(j.w) && same_width;
    }
    if (!shared_amx && !shared512 && !shared2) {
      for (const auto& j : job_list) linear(pool, x, n, j.w, j.bias, j.y, scratch);
      return;
    }
    if (shared_amx) gemm_amx(pool, x, n, job_list.begin(), job_list.size(), scratch);
    else if (shared512) gemm_avx512(pool, x, n, job_list.begin(), job_list.size(), scratch);
    else gemm_avx2(pool, x, n, job_list.begin(), job_list.size(), scratch);
    for (const auto& j : job_list)
      if (j.bias)
        for (int64_t t = 0; t < n; ++t) {
          float* yt = j.y + t * j.w.rows;
          for (int64_t r = 0; r < j.w.rows; ++r) yt[r] += j.bias[r];
        }
    return;
  }
  matvec_jobs(pool, x, n, job_list.begin(), job_list.size(), scratch);
}

// ---------------------------------------------------------------- element-wise

void rms_norm(const float* x, const float* weight, float* y, int64_t n, int64_t d, float eps) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * d;
    float* yt = y + t * d;
    double ss = 0.0;
    for (int64_t i = 0; i < d; ++i) ss += double(xt[i]) * xt[i];
    const float inv = 1.0f / std::sqrt(float(ss / d) + eps);
    for (int64_t i = 0; i < d; ++i) yt[i] = weight[i] * (xt[i] * inv);
  }
}

void layer_norm(const float* x, const float* weight, const float* bias, float* y, int64_t n, int64_t d, float eps) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xt = x + t * d;
    float* yt = y + t * d;
    double mean = 0.0;
    for (int64_t i = 0; i < d; ++i) mean += xt[i];
    mean /= d;
    double var = 0.0;
    for (int64_t i = 0; i < d; ++i) {
      double c = xt[i] - mean;
      var += c * c;
    }
    var /= d;
    const float inv = 1.0f / std::sqrt(float(var) + eps), m = float(mean);
    for (int64_t i = 0; i < d; ++i) yt[i] = (xt[i] - m) * inv * weight[i] + (bias ? bias[i] : 0.f);
  }
}

void gelu_erf(float* x, int64_t n) {
  if (cpu_has_avx2_fma_f16c()) return avx2::gelu(x, n);
  for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
}

float dot_f32(const float* a, const float* b, int64_t n) {
  if (cpu_has_avx2_fma_f16c()) return avx2::dot(a, b, n);
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy_f32(float* y, float a, const float* x, int64_t n) {
  if (cpu_has_avx2_fma_f16c()) return avx2::axpy(y, a, x, n);
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void silu_mul(float* gate, const float* up, int64_t n) {
  if (cpu_has_avx2_fma_f16c()) return avx2::silu_mul(gate, up, n);
  for (int64_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

int64_t attention_scratch_floats(int64_t n, int64_t hd) {
  // (amx: only where the CPU has it; that unit is built with the AMX flags)
  const int64_t amx_floats = kernel_path_supported(KernelPath::Amx) ? amx::attention_scratch_floats(n, hd) : 0;
  return std::max({n * n, avx512::attention_scratch_floats(n, hd), amx_floats});
}

// n queries over `keys` keys with OpenBLAS sgemm + softmax_inplace (the
// paths without attention kernels of their own); causal_from < 0: every
// query sees every key (vision), else query i sees keys 0 .. causal_from + i
// (the decoder's prefill, causal_from = n_past). scratch: n * keys floats.
static void sgemm_attention(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv, int64_t n,
                            int64_t keys, int64_t causal_from, int64_t hd, float scale, float* out, int64_t ldo,
                            float* scratch) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(keys), int(hd), scale, q, int(ldq), k, int(ldkv),
              0.f, scratch, int(keys));
  for (int64_t r = 0; r < n; ++r) {
    float* row = scratch + r * keys;
    const int64_t valid = causal_from < 0 ? keys : causal_from + r + 1;
    softmax_inplace(row, valid);
    std::fill(row + valid, row + keys, 0.f);
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(n), int(hd), int(keys), 1.f, scratch, int(keys), v,
              int(ldkv), 0.f, out, int(ldo));
}

void attention_head(const float* q, const float* k, const float* v, int64_t ld, int64_t n, int64_t hd, float scale,
                    float* out, int64_t ldo, float* scratch) {
  if (kernel_path() == KernelPath::Amx) return amx::attention_head(q, k, v, ld, n, hd, scale, out, ldo, scratch);
  if (avx512_kernels()) return avx512::attention_head(q, k, v, ld, n, hd, scale, out, ldo, scratch);
  sgemm_attention(q, ld, k, v, ld, n, n, -1, hd, scale, out, ldo, scratch);
}

void attention_decode_group(const float* q, int heads, const float* k, const float* v, int64_t ld, int64_t n,
                            int64_t hd, float scale, float* scores, float* out) {
  if (avx512_kernels() && hd % 16 == 0 && hd <= 256) {
    avx512::attention_decode_scores(q, heads, k, ld, n, hd, scale, scores);
    for (int h = 0; h < heads; ++h) softmax_inplace(scores + h * n, n);
    return avx512::attention_decode_mix(scores, heads, v, ld, n, hd, out);
  }
  for (int h = 0; h < heads; ++h) {
    const float* qh = q + h * hd;
    float* sh = scores + h * n;
    float* oh = out + h * hd;
    for (int64_t t = 0; t < n; ++t) sh[t] = dot_f32(qh, k + t * ld, hd) * scale;
    softmax_inplace(sh, n);
    std::fill(oh, oh + hd, 0.f);
    for (int64_t t = 0; t < n; ++t) axpy_f32(oh, sh[t], v + t * ld, hd);
  }
}

int64_t causal_attention_scratch_floats(int64_t n, int64_t n_past, int64_t hd) {
  const int64_t amx_floats =
      kernel_path_supported(KernelPath::Amx) ? amx::causal_attention_scratch_floats(n, n_past, hd) : 0;
  return std::max(n * (n_past + n), amx_floats);
}

void causal_attention_head(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv, int64_t n,
                           int64_t n_past, int64_t hd, float scale, float* out, int64_t ldo, float* scratch) {
  if (kernel_path() == KernelPath::Amx)
    return amx::causal_attention_head(q, ldq, k, v, ldkv, n, n_past, hd, scale, out, ldo, scratch);
  sgemm_attention(q, ldq, k, v, ldkv, n, n_past + n, n_past, hd, scale, out, ldo, scratch);
}

void softmax_inplace(float* x, int64_t n) {
  if (cpu_has_avx2_fma_f16c()) return avx2::softmax(x, n);
  float m = x[0];
  for (int64_t i = 1; i < n; ++i) m = std::max(m, x[i]);
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    s += x[i];
  }
  const float inv = 1.f / s;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

}  // namespace firstread::engine
