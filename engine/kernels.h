// Compute kernels: the thread pool, weight views, matrix products (OpenBLAS
// sgemm for batches, a BF16/F16/F32/Q8_0/Q4_0 matvec for decode) and the element-wise
// operations of the transformer blocks.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "engine/safetensors.h"

namespace firstread::engine {

// Block-quantised weights: 32 consecutive weights of a row share one FP16
// scale d (llama.cpp's Q8_0 / Q4_0 blocks; these structs are its layout).
//   Q8_0: w = d * q (int8, |q| <= 127)                       34 bytes / 32 weights
//   Q4_0: w = d * (n - 8), n in 0..15; byte j holds weight j in its low nibble
//         and weight j + 16 in its high nibble                18 bytes / 32 weights
// In memory (WeightView data of dtype Q8_0 / Q4_0) and in the weight cache the
// engine keeps the same blocks and bytes per row, interleaved 16 blocks at a
// time for its kernels: engine/qlayout.h. quantize_rows_* write that layout;
// q8_block / q4_block read one block back in llama.cpp's terms.
constexpr int kQBlock = 32;
struct BlockQ8 {
  uint16_t d;  // FP16
  int8_t q[kQBlock];
};
static_assert(sizeof(BlockQ8) == 34, "BlockQ8 must be packed as 2 + 32 bytes");
struct BlockQ4 {
  uint16_t d;  // FP16
  uint8_t qs[kQBlock / 2];
};
static_assert(sizeof(BlockQ4) == 18, "BlockQ4 must be packed as 2 + 16 bytes");
// The input vector of a quantised product, quantised once per product to
// int8 blocks (float scale) so the inner loop is an integer dot product
// (as llama.cpp does): 32 weights cost a handful of instructions instead of
// 32 int-to-float conversions.
struct BlockQ8Act {
  float d;
  float s;  // d * sum(q): Q4_0 products take the -8 offset out of the inner loop
  int8_t q[kQBlock];
};

// A weight matrix as stored: row-major [rows = out features][cols = in features].
struct WeightView {
  const void* data = nullptr;
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  bool empty() const { return data == nullptr; }
};

// Fixed pool of worker threads; the calling thread takes part in every job so
// n_threads == 1 runs inline. Workers sleep between jobs so OpenBLAS (set to
// the same thread count) gets the cores while it runs.
class ThreadPool {
 public:
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  int size() const { return n_threads_; }
  // Runs fn(task) for task in [0, n_tasks), dynamically balanced. The
  // callable is passed by pointer (no std::function, no allocation per call).
  // spin_after: workers poll briefly for the next job (decode, where jobs
  // come microseconds apart) instead of sleeping at once (batched phases,
  // where OpenBLAS's threads need the cores next).
  template <typename F>
  void parallel_for(int n_tasks, F&& fn, bool spin_after = true) {
    using Fn = std::remove_reference_t<F>;
    run_job(n_tasks, const_cast<void*>(static_cast<const void*>(&fn)),
            [](void* ctx, int t) { (*static_cast<Fn*>(ctx))(t); }, spin_after);
  }

 private:
  void run_job(int n_tasks, void* ctx, void (*call)(void*, int), bool spin_after);
  void worker_loop();
  void run_tasks();
  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_start_;
  // Workers spin briefly on `generation_` before sleeping: decode issues a
  // few hundred small jobs per token, and a futex wake-up per job would cost
  // more than the work.
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> spin_after_{true};
  void* job_ctx_ = nullptr;
  void (*job_call_)(void*, int) = nullptr;
  int n_tasks_ = 0;
  std::atomic<int> next_task_{0};
  std::atomic<int> active_{0};
};

// OpenBLAS's thread count. The engine keeps it at 1 and splits every batched
// product over its own pool (see linear), so no second set of threads competes.
void set_blas_threads(int n);
int blas_threads();
// Kernel paths, chosen once at run time: the best this CPU has, or the one
// named by FIRSTREAD_KERNELS=scalar|avx2|avx512|amx (a path the CPU lacks falls
// back to the best it has, with a note in kernel_path_description()).
//   scalar  portable C++ (every product, norms, softmax, ...)
//   avx2    AVX2/FMA/F16C: decode matvec (F32/BF16/F16/Q8_0/Q4_0), vector
//           math; batched Q8_0/Q4_0 products by gemm_avx2.cpp (int8
//           activations, vpmaddubsw), BF16/F16 weight blocks to F32 + OpenBLAS
//   avx512  AVX-512 F/BW/VL + VNNI (all required): batched BF16/F16/
//           Q8_0/Q4_0 products and every decode product (linear_rows) by
//           gemm_avx512.cpp straight from the stored format (F32/BF16/F16:
//           exact conversion + FMA; Q8_0/Q4_0: int8 activations + vpdpbusd);
//           vector math as avx2
//   amx     avx512 + AMX-TILE/BF16/INT8 and AVX512-BF16, with Linux's
//           permission for the tile data: batched products of the weight
//           kinds gemm_amx*.cpp serves on AMX tiles, everything else as avx512
enum class KernelPath { Scalar = 0, Avx2 = 1, Avx512 = 2, Amx = 3 };
KernelPath kernel_path();          // in use now
KernelPath best_kernel_path();     // the best this CPU supports
bool kernel_path_supported(KernelPath p);
// Tests: run every path the machine has. Throws std::invalid_argument for a
// path this CPU lacks.
void force_kernel_path(KernelPath p);
void reset_kernel_path();          // back to the run-time choice
const char* kernel_path_name(KernelPath p);  // scalar, avx2, avx512, amx
KernelPath parse_kernel_path(const std::string& s);  // throws std::invalid_argument
// One line for the log / readiness: path, the CPU features it uses, and why
// it was chosen (e.g. "avx512 (AVX-512 F/BW/VL+VNNI GEMMs, ...); best this CPU supports").
std::string kernel_path_description();
// amx path: whether a batched Q8_0 / Q4_0 product of m activation rows runs on
// AMX-BF16 tiles (weights dequantised to BF16 once per product, activations
// rounded to BF16) rather than AMX-INT8 (int8 activations per 32-block, as
// the decode path): engine/README.md, "AMX-INT8 GEMM".
bool amx_quant_on_bf16_tiles(int64_t m);
// True when the AVX2/FMA/F16C kernels are in use (the avx2 and avx512 paths).
bool cpu_has_avx2_fma_f16c();
// Forces the portable kernels (on) or restores the run-time choice (off).
void force_scalar_kernels(bool on);

float bf16_to_f32(uint16_t v);
float f16_to_f32(uint16_t v);
uint16_t f32_to_bf16(float f);  // round to nearest even, like torch
uint16_t f32_to_f16(float f);

// Quantizes rows x cols floats (cols a multiple of 32) to Q8_0 / Q4_0 blocks
// (llama.cpp's reference rounding) in the engine's layout (qlayout.h),
// matrix_bytes(Q8_0 / Q4_0, rows, cols) bytes at dst.
void quantize_rows_q8(const float* src, int64_t rows, int64_t cols, void* dst);
void quantize_rows_q4(const float* src, int64_t rows, int64_t cols, void* dst);
// Block b of row r of a Q8_0 / Q4_0 matrix in the engine's layout, as llama.cpp's block.
BlockQ8 q8_block(const WeightView& w, int64_t r, int64_t b);
BlockQ4 q4_block(const WeightView& w, int64_t r, int64_t b);
// x[cols] (a multiple of 32) to activation blocks.
void quantize_act_q8(const float* x, int64_t cols, BlockQ8Act* dst);
// Bytes of a rows x cols matrix stored as `t` (blocks for Q8_0 / Q4_0).
size_t matrix_bytes(DType t, int64_t rows, int64_t cols);

// Converts rows [r0, r1) of `w` to float32 into dst[(r - r0) * cols].
void convert_rows_f32(const WeightView& w, int64_t r0, int64_t r1, float* dst);

// Scratch buffers reused across calls so the hot path does not allocate.
struct LinearScratch {
  std::vector<float> wbuf;       // converted weight block for batched BF16/F16/Q8_0/Q4_0 (avx2 path)
  std::vector<BlockQ8Act> xq;    // the quantised input of a decode product
  std::vector<uint8_t> packed;   // packed activations of a batched product, or decode inputs (avx2 / avx512 / amx; 64-byte aligned inside)
  std::vector<float> xf;         // decode inputs of F32 / F16 / BF16 rows in the avx512 kernel's order (aligned inside)
};

// y[n][rows] = x[n][cols] · Wᵀ (+ bias). Uses the matvec (linear_rows) for
// n < 4 and a GEMM otherwise (avx512: gemm_avx512 from the stored format;
// avx2 with Q8_0/Q4_0: gemm_avx2 from the stored blocks; else single-threaded
// OpenBLAS per thread on a slice of the output features, BF16/F16 (and, on
// the scalar path, Q8_0/Q4_0) weights converted blockwise on the fly).
void linear(ThreadPool& pool, const float* x, int64_t n, const WeightView& w, const float* bias, float* y,
            LinearScratch& scratch);

// Several products of the same input (q/k/v, gate/up) in one parallel job, so
// decode pays one synchronisation instead of one per matrix.
struct LinearJob {
  WeightView w;
  const float* bias = nullptr;
  float* y = nullptr;
};
void linear_multi(ThreadPool& pool, const float* x, int64_t n, std::initializer_list<LinearJob> jobs,
                  LinearScratch& scratch);

// Decode products of n independent rows (one new token of each of n
// sequences in a batched decode step; any n): every weight row is read from
// memory once for all n inputs, and each row's result is bit-identical to the
// n = 1 product (a sequence decoded in a batch gets exactly the ids it gets
// alone). linear / linear_multi use them for n < 4.
void linear_rows(ThreadPool& pool, const float* x, int64_t n, const WeightView& w, const float* bias, float* y,
                 LinearScratch& scratch);
void linear_multi_rows(ThreadPool& pool, const float* x, int64_t n, std::initializer_list<LinearJob> jobs,
                       LinearScratch& scratch);

// Non-causal attention of one head (the vision encoder's): for each of n
// queries, out[i][0..hd) = sum_j softmax_j(scale * q_i . k_j) v_j over the
// same n keys; q, k, v rows ld floats apart, out rows ldo apart. scratch:
// attention_scratch_floats(n, hd) floats. avx512: the engine's GEMM with the
// scores kept in its tile layout (softmax 16 queries per instruction); other
// paths: OpenBLAS sgemm + softmax_inplace. Single-threaded (callers split heads).
int64_t attention_scratch_floats(int64_t n, int64_t hd);
void attention_head(const float* q, const float* k, const float* v, int64_t ld, int64_t n, int64_t hd, float scale,
                    float* out, int64_t ldo, float* scratch);

// Causal attention of one head for the decoder's prefill: n new queries (rows
// ldq floats apart) at positions n_past .. n_past + n - 1 over the n_past + n
// keys and values of the cache (rows ldkv apart; grouped-query heads share
// them); query i sees keys 0 .. n_past + i. out rows ldo apart. scratch:
// causal_attention_scratch_floats(n, n_past, hd) floats. amx: QK^T and PV on
// AMX-BF16 tiles (four tile products each, as the vision attention), each
// block of 64 queries only over the keys its last query sees; other paths:
// OpenBLAS sgemm + softmax_inplace. Single-threaded (callers split heads).
int64_t causal_attention_scratch_floats(int64_t n, int64_t n_past, int64_t hd);
void causal_attention_head(const float* q, int64_t ldq, const float* k, const float* v, int64_t ldkv, int64_t n,
                           int64_t n_past, int64_t hd, float scale, float* out, int64_t ldo, float* scratch);

// Row-wise ops over x[n][d] (in place unless an output is given).
void rms_norm(const float* x, const float* weight, float* y, int64_t n, int64_t d, float eps);
void layer_norm(const float* x, const float* weight, const float* bias, float* y, int64_t n, int64_t d,
                float eps);
void gelu_erf(float* x, int64_t n);
void softmax_inplace(float* x, int64_t n);
void silu_mul(float* gate, const float* up, int64_t n);  // gate = silu(gate) * up
// Decode attention of the query heads [0, heads) that share one cached key /
// value head (grouped-query attention), one query each, over n cached keys /
// values (rows ld floats apart): per head h, scores[h * n + t] = scale *
// q_h.k[t], softmax, out[h * hd ..] = sum_t scores[h * n + t] v[t]; q and out
// heads x hd, contiguous. avx512 (hd % 16 == 0): the group reads the cache
// once (keys) or twice (values) instead of once per head, with the same bits
// per head as the dot_f32 / softmax_inplace / axpy_f32 loop (the other paths).
void attention_decode_group(const float* q, int heads, const float* k, const float* v, int64_t ld, int64_t n,
                            int64_t hd, float scale, float* scores, float* out);
float dot_f32(const float* a, const float* b, int64_t n);
void axpy_f32(float* y, float a, const float* x, int64_t n);  // y += a * x

}  // namespace firstread::engine
