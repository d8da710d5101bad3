// Batched decoding (issue 13) and the decoder's named blocks (issue 19):
//  - linear_rows: each of n rows bit-identical to the n = 1 product, every
//    weight format, every kernel path this CPU has;
//  - the decoder's attention / FFN / layer blocks against a plain double
//    reference written here from the published LLaMA / Qwen2 formulas;
//  - continuous batching: sequences of different lengths joining and leaving
//    at different steps get exactly the greedy ids they get alone, for every
//    weight format, on every reference fixture, and through Model from
//    concurrent callers (with an image request and a failing request among them).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/batch_scheduler.h"
#include "engine/common.h"
#include "engine/config.h"
#include "engine/kernels.h"
#include "engine/llm.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/test_fixtures.h"
#include "engine/vision.h"
#include "engine/weights.h"

using namespace firstread::engine;
using firstread::engine::testing_support::fixture_root;

namespace {

std::vector<KernelPath> machine_paths() {
  std::vector<KernelPath> p;
  for (KernelPath k : {KernelPath::Scalar, KernelPath::Avx2, KernelPath::Avx512, KernelPath::Amx})
    if (kernel_path_supported(k)) p.push_back(k);
  return p;
}

struct PathGuard {
  explicit PathGuard(KernelPath p) { force_kernel_path(p); }
  ~PathGuard() { reset_kernel_path(); }
};

std::vector<float> gaussian(size_t n, unsigned seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// A rows x cols matrix in `t` (bytes), from Gaussian floats.
std::vector<uint8_t> stored(DType t, const std::vector<float>& f, int rows, int cols) {
  std::vector<uint8_t> out(matrix_bytes(t, rows, cols));
  if (t == DType::F32) std::memcpy(out.data(), f.data(), out.size());
  else if (t == DType::BF16 || t == DType::F16)
    for (size_t i = 0; i < f.size(); ++i) {
      const uint16_t h = t == DType::BF16 ? f32_to_bf16(f[i]) : f32_to_f16(f[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  else if (t == DType::Q8_0) quantize_rows_q8(f.data(), rows, cols, reinterpret_cast<BlockQ8*>(out.data()));
  else quantize_rows_q4(f.data(), rows, cols, reinterpret_cast<BlockQ4*>(out.data()));
  return out;
}

}  // namespace

// Every row of a batched decode product is the bits of that row alone: the
// product a sequence gets does not depend on what else is in the step.
TEST(engine_batch, LinearRowsGiveEachRowTheBitsOfTheSingleProduct) {
  ThreadPool pool(2);
  for (KernelPath path : machine_paths()) {
    PathGuard guard(path);
    for (int cols : {160, 672, 1024}) {
      const int rows = 77;  // odd: the two-row kernels' tail
      const std::vector<float> wf = gaussian(size_t(rows) * cols, 11), bias = gaussian(rows, 12);
      const std::vector<float> x = gaussian(size_t(7) * cols, 13);
      for (DType t : {DType::F32, DType::BF16, DType::F16, DType::Q8_0, DType::Q4_0}) {
        const std::vector<uint8_t> w = stored(t, wf, rows, cols);
        const WeightView wv{w.data(), t, rows, cols};
        std::vector<float> deq(size_t(rows) * cols);
        convert_rows_f32(wv, 0, rows, deq.data());
        LinearScratch scratch;
        const std::string what = std::string(kernel_path_name(path)) + " " + dtype_name(t) + " k" + std::to_string(cols);
        std::vector<float> alone(size_t(7) * rows);
        for (int i = 0; i < 7; ++i)
          linear(pool, x.data() + size_t(i) * cols, 1, wv, bias.data(), alone.data() + size_t(i) * rows, scratch);
        for (int n = 1; n <= 7; ++n) {
          std::vector<float> y(size_t(n) * rows), y2(size_t(n) * rows), y3(size_t(n) * rows);
          linear_rows(pool, x.data(), n, wv, bias.data(), y.data(), scratch);
          linear_multi_rows(pool, x.data(), n, {{wv, bias.data(), y2.data()}, {wv, nullptr, y3.data()}}, scratch);
          for (size_t i = 0; i < y.size(); ++i) {
            ASSERT_EQ(y[i], alone[i]) << what << " n=" << n << " at " << i;
            ASSERT_EQ(y2[i], alone[i]) << what << " fused n=" << n << " at " << i;
          }
          for (int r = 0; r < n; ++r)
            for (int o = 0; o < rows; ++o) {
              // And each row is the product: against the dequantised weights in
              // double (int8 / int4: the input's per-block int8 rounding bounds it).
              double s = 0, bound = 1e-4;
              for (int i = 0; i < cols; ++i) {
                s += double(deq[size_t(o) * cols + i]) * x[size_t(r) * cols + i];
                bound += (t == DType::Q8_0 || t == DType::Q4_0 ? 4.5 / 254.0 : 1e-5) *
                         std::fabs(deq[size_t(o) * cols + i]);
              }
              ASSERT_NEAR(y3[size_t(r) * rows + o], s, bound) << what << " row " << r << " out " << o;
            }
        }
      }
    }
  }
}

// The decode-row kernels of every path against the scalar path on the shapes
// where their passes and tails change: widths that are not a multiple of the
// vector steps (F32 / BF16 / F16: 1, 15, 17, 37, 1030 columns; Q8_0 / Q4_0:
// 1 block, 8 (a chunk's first half only), 9, 21 = 16 + 5, 48 = 32 + 16),
// row counts that leave every pass shape's tail (1, 3, 13, 77), and 1..9
// inputs (passes of up to four inputs and their remainders). Each (row,
// input) is the scalar product up to float summation order, and the bits of
// that input alone on the same path.
TEST(engine_batch, DecodeRowsOfEveryPathMatchScalarOnOddShapes) {
  ThreadPool pool(2);
  struct Shape {
    DType t;
    std::vector<int> cols;
  };
  const std::vector<int> float_cols = {1, 15, 17, 37, 1030}, block_cols = {32, 256, 288, 672, 1536};
  const std::vector<Shape> shapes = {{DType::F32, float_cols}, {DType::BF16, float_cols}, {DType::F16, float_cols},
                                     {DType::Q8_0, block_cols}, {DType::Q4_0, block_cols}};
  for (const Shape& sh : shapes)
    for (int cols : sh.cols)
      for (int rows : {1, 3, 13, 77}) {
        const std::vector<float> wf = gaussian(size_t(rows) * cols, 21), x = gaussian(size_t(9) * cols, 22);
        const std::vector<uint8_t> w = stored(sh.t, wf, rows, cols);
        const WeightView wv{w.data(), sh.t, rows, cols};
        std::vector<float> deq(size_t(rows) * cols);
        convert_rows_f32(wv, 0, rows, deq.data());
        LinearScratch scratch;
        std::vector<float> want(size_t(9) * rows);
        {
          PathGuard guard(KernelPath::Scalar);
          linear_rows(pool, x.data(), 9, wv, nullptr, want.data(), scratch);
        }
        for (KernelPath path : machine_paths()) {
          if (path == KernelPath::Scalar) continue;
          PathGuard guard(path);
          const std::string what = std::string(kernel_path_name(path)) + " " + dtype_name(sh.t) + " " +
                                   std::to_string(rows) + " x " + std::to_string(cols);
          std::vector<float> alone(size_t(9) * rows);
          for (int g = 0; g < 9; ++g)
            linear_rows(pool, x.data() + size_t(g) * cols, 1, wv, nullptr, alone.data() + size_t(g) * rows, scratch);
          for (int g = 0; g < 9; ++g)
            for (int o = 0; o < rows; ++o) {
              double mag = 0;  // float summation order: a few ulps of the terms' magnitude per term
              for (int i = 0; i < cols; ++i) mag += std::fabs(double(deq[size_t(o) * cols + i]) * x[size_t(g) * cols + i]);
              ASSERT_NEAR(alone[size_t(g) * rows + o], want[size_t(g) * rows + o], 1e-5 * (1 + mag))
                  << what << " input " << g << " row " << o;
            }
          for (int n = 1; n <= 9; ++n) {
            std::vector<float> y(size_t(n) * rows);
            linear_rows(pool, x.data(), n, wv, nullptr, y.data(), scratch);
            for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], alone[i]) << what << " n=" << n << " at " << i;
          }
        }
      }
}

namespace {

// The decoder of a reference fixture in `fmt`, without the vision encoder.
struct Decoder {
  std::unique_ptr<SafetensorsSet> st;
  std::unique_ptr<WeightStore> ws;
  std::unique_ptr<LlmDecoder> llm;
  ModelHParams hp;
  explicit Decoder(const std::string& dir, const std::string& fmt = "auto") {
    hp = load_model_config(dir);
    st = std::make_unique<SafetensorsSet>(dir);
    ws = std::make_unique<WeightStore>(*st, parse_weight_format(fmt));
    llm = std::make_unique<LlmDecoder>(hp.llm, *ws);
  }
};

int argmax(const float* v, int n) { return int(std::max_element(v, v + n) - v); }

// FNV-1a of the logits' bytes: equal only when every logit is the same bits.
uint64_t bits_of(const float* v, int n) {
  uint64_t h = 1469598103934665603ull;
  const unsigned char* p = reinterpret_cast<const unsigned char*>(v);
  for (size_t i = 0; i < size_t(n) * sizeof(float); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

struct SeqRun {
  std::vector<int> ids;
  std::vector<uint64_t> logit_bits;  // per generated token, the logits it was chosen from
  bool operator==(const SeqRun& o) const { return ids == o.ids && logit_bits == o.logit_bits; }
};

struct Script {
  std::vector<int> prompt;
  int max_new = 0;
  int join_step = 0;  // decode step at which it arrives
};

std::vector<Script> scripts(int vocab) {
  // Different prompt lengths (one chunk, several chunks, a partial last
  // chunk) and lengths; two arrive at the same step, one long after the first.
  const int lengths[] = {5, 40, 23, 11}, news[] = {14, 9, 21, 6}, joins[] = {0, 3, 3, 11};
  std::mt19937 g(7);
  std::vector<Script> out;
  for (int i = 0; i < 4; ++i) {
    Script s;
    for (int k = 0; k < lengths[i]; ++k) s.prompt.push_back(int(g() % unsigned(vocab)));
    s.max_new = news[i];
    s.join_step = joins[i];
    out.push_back(s);
  }
  return out;
}

void prefill(LlmDecoder& llm, ThreadPool& pool, KvCache& c, const std::vector<int>& prompt, int chunk, float* logits) {
  const int H = llm.hparams().hidden, n = int(prompt.size());
  std::vector<float> emb(size_t(n) * H);
  llm.embed(prompt.data(), n, emb.data());
  for (int at = 0; at < n; at += chunk)
    llm.forward(pool, c, emb.data() + size_t(at) * H, std::min(chunk, n - at), logits);
}

// The sequence alone: prefill in chunks, then one position per step.
SeqRun alone(LlmDecoder& llm, ThreadPool& pool, const Script& s, int chunk) {
  const int V = llm.hparams().vocab, H = llm.hparams().hidden;
  KvCache c;
  llm.init_cache(c, int(s.prompt.size()) + s.max_new);
  std::vector<float> logits(static_cast<size_t>(V)), x(static_cast<size_t>(H));
  prefill(llm, pool, c, s.prompt, chunk, logits.data());
  SeqRun run;
  for (;;) {
    run.ids.push_back(argmax(logits.data(), V));
    run.logit_bits.push_back(bits_of(logits.data(), V));
    if (int(run.ids.size()) == s.max_new) return run;
    llm.embed(&run.ids.back(), 1, x.data());
    llm.forward(pool, c, x.data(), 1, logits.data());
  }
}

// All of them through batched decode steps: each joins at its step (prefill
// first), leaves when done; the others keep going.
std::vector<SeqRun> batched(LlmDecoder& llm, ThreadPool& pool, const std::vector<Script>& ss, int chunk, int* largest) {
  const int V = llm.hparams().vocab, H = llm.hparams().hidden, n = int(ss.size());
  std::vector<KvCache> caches(static_cast<size_t>(n));
  std::vector<SeqRun> runs(static_cast<size_t>(n));
  std::vector<int> state(size_t(n), 0);  // 0 waiting, 1 decoding, 2 done
  std::vector<float> logits(size_t(n) * V), x(size_t(n) * H), first(static_cast<size_t>(V));
  *largest = 0;
  for (int step = 0; std::count(state.begin(), state.end(), 2) < n; ++step) {
    for (int i = 0; i < n; ++i)
      if (state[size_t(i)] == 0 && ss[size_t(i)].join_step <= step) {
        llm.init_cache(caches[size_t(i)], int(ss[size_t(i)].prompt.size()) + ss[size_t(i)].max_new);
        prefill(llm, pool, caches[size_t(i)], ss[size_t(i)].prompt, chunk, first.data());
        runs[size_t(i)].ids.push_back(argmax(first.data(), V));
        runs[size_t(i)].logit_bits.push_back(bits_of(first.data(), V));
        state[size_t(i)] = int(runs[size_t(i)].ids.size()) == ss[size_t(i)].max_new ? 2 : 1;
      }
    std::vector<int> live;
    std::vector<KvCache*> cs;
    for (int i = 0; i < n; ++i)
      if (state[size_t(i)] == 1) {
        llm.embed(&runs[size_t(i)].ids.back(), 1, x.data() + live.size() * H);
        live.push_back(i);
        cs.push_back(&caches[size_t(i)]);
      }
    if (live.empty()) continue;
    *largest = std::max(*largest, int(live.size()));
    llm.forward_decode(pool, cs.data(), int(live.size()), x.data(), logits.data());
    for (size_t k = 0; k < live.size(); ++k) {
      const int i = live[k];
      runs[size_t(i)].ids.push_back(argmax(logits.data() + k * V, V));
      runs[size_t(i)].logit_bits.push_back(bits_of(logits.data() + k * V, V));
      if (int(runs[size_t(i)].ids.size()) == ss[size_t(i)].max_new) state[size_t(i)] = 2;
    }
  }
  return runs;
}

}  // namespace

TEST(engine_batch, JoiningAndLeavingSequencesGetTheLogitsAndIdsTheyGetAloneInEveryFormat) {
  ThreadPool pool(2);
  for (const char* fixture : {"v12", "1b", "2b", "bf16/v12"}) {
    const std::string dir = fixture_root() + "/" + fixture;
    for (const char* fmt : {"auto", "f32", "bf16", "f16", "int8", "int4"}) {
      Decoder d(dir, fmt);
      const std::vector<Script> ss = scripts(d.hp.llm.vocab);
      // Every kernel path on the first fixture, the best one on the others.
      std::vector<KernelPath> paths = machine_paths();
      if (std::string(fixture) != "v12") paths = {best_kernel_path()};
      for (KernelPath path : paths) {
        PathGuard guard(path);
        const std::string what = std::string(fixture) + " " + fmt + " " + kernel_path_name(path);
        int largest = 0;
        const auto together = batched(*d.llm, pool, ss, 16, &largest);
        EXPECT_EQ(largest, 3) << what;  // the script has three in one step at most
        for (size_t i = 0; i < ss.size(); ++i) {
          // The same ids, and every step's logits the same bits.
          const SeqRun solo = alone(*d.llm, pool, ss[i], 16);
          ASSERT_EQ(solo.ids.size(), size_t(ss[i].max_new)) << what;
          EXPECT_EQ(together[i].ids, solo.ids) << what << ": sequence " << i;
          EXPECT_EQ(together[i].logit_bits, solo.logit_bits) << what << ": sequence " << i << "'s logits";
        }
      }
    }
  }
}

namespace {

double silu(double v) { return v / (1.0 + std::exp(-v)); }

// y[rows_out] = W · x (+ b) in double, W dequantised.
std::vector<double> matvec(const WeightView& w, const float* bias, const std::vector<double>& x) {
  std::vector<float> row(size_t(w.cols));
  std::vector<double> y(size_t(w.rows));
  for (int64_t r = 0; r < w.rows; ++r) {
    convert_rows_f32(w, r, r + 1, row.data());
    double s = bias ? bias[r] : 0.0;
    for (int64_t i = 0; i < w.cols; ++i) s += double(row[size_t(i)]) * x[size_t(i)];
    y[size_t(r)] = s;
  }
  return y;
}

void expect_close(const float* got, const std::vector<double>& want, double rel, const std::string& what) {
  double mag = 1e-6;
  for (double v : want) mag = std::max(mag, std::fabs(v));
  for (size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], rel * mag) << what << " at " << i;
}

// Rotate-half RoPE at `pos` as HF's LLaMA / Qwen2 (inv_freq = theta^(-2i/d)).
void rope(std::vector<double>& v, int heads, int hd, int pos, double theta) {
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < hd / 2; ++i) {
      const double a = pos * std::pow(theta, -2.0 * i / hd);
      double& x0 = v[size_t(h * hd + i)];
      double& x1 = v[size_t(h * hd + i + hd / 2)];
      const double p = x0, q = x1;
      x0 = p * std::cos(a) - q * std::sin(a);
      x1 = q * std::cos(a) + p * std::sin(a);
    }
}

}  // namespace

// The FFN block alone: SwiGLU of the layer's weights, one row (decode) and
// five (prefill), each against the double formula.
TEST(engine_blocks, FfnBlockIsSwiGluOfTheLayersWeights) {
  ThreadPool pool(2);
  for (const char* fixture : {"v12", "1b", "2b"}) {
    Decoder d(fixture_root() + "/" + fixture);
    const int D = d.hp.llm.hidden, layer = d.hp.llm.n_layers - 1;
    const LlmLayer& L = d.llm->layer(layer);
    for (int rows : {1, 5}) {
      const std::vector<float> h = gaussian(size_t(rows) * D, 21);
      std::vector<float> out(size_t(rows) * D), out_rows(size_t(rows) * D);
      d.llm->ffn_block(pool, layer, h.data(), rows, false, out.data());
      d.llm->ffn_block(pool, layer, h.data(), rows, true, out_rows.data());
      for (int r = 0; r < rows; ++r) {
        const std::vector<double> x(h.begin() + size_t(r) * D, h.begin() + size_t(r + 1) * D);
        const std::vector<double> gate = matvec(L.w_gate, nullptr, x), up = matvec(L.w_up, nullptr, x);
        std::vector<double> a(gate.size());
        for (size_t i = 0; i < a.size(); ++i) a[i] = silu(gate[i]) * up[i];
        const std::vector<double> want = matvec(L.w_down, nullptr, a);
        const std::string what = std::string(fixture) + " rows " + std::to_string(rows) + " row " + std::to_string(r);
        expect_close(out.data() + size_t(r) * D, want, 1e-4, what);
        expect_close(out_rows.data() + size_t(r) * D, want, 1e-4, what + " (decode rows)");
      }
    }
  }
}

// The attention block alone (LLaMA and Qwen2 layouts: separate q/k/v, Qwen2
// with biases): a 5-position prefill and then one decoded position, against
// causal grouped-query attention with RoPE computed in double; then two
// sequences in one decode pass get the bits each gets alone.
TEST(engine_blocks, AttentionBlockIsCausalGroupedQueryAttentionWithRope) {
  ThreadPool pool(2);
  for (const char* fixture : {"v12", "1b"}) {
    Decoder d(fixture_root() + "/" + fixture);
    const LlmHParams& hp = d.hp.llm;
    const int D = hp.hidden, hd = hp.head_dim(), H = hp.n_heads, KV = hp.n_kv_heads, group = H / KV;
    const int layer = 0;
    const LlmLayer& L = d.llm->layer(layer);
    const int n = 6;  // positions 0..4 by prefill, 5 by decode
    const std::vector<float> h = gaussian(size_t(n) * D, 31);
    KvCache c;
    d.llm->init_cache(c, 8);
    std::vector<float> out(size_t(n) * D);
    SeqRows pre{&c, 5};
    d.llm->attention_block(pool, layer, h.data(), &pre, 1, out.data());
    c.n_past = 5;
    SeqRows dec{&c, 1};
    d.llm->attention_block(pool, layer, h.data() + size_t(5) * D, &dec, 1, out.data() + size_t(5) * D);
    c.n_past = 6;
    // Reference.
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (int t = 0; t < n; ++t) {
      const std::vector<double> x(h.begin() + size_t(t) * D, h.begin() + size_t(t + 1) * D);
      q[size_t(t)] = matvec(L.wq, L.bq, x);
      k[size_t(t)] = matvec(L.wk, L.bk, x);
      v[size_t(t)] = matvec(L.wv, L.bv, x);
      rope(q[size_t(t)], H, hd, t, hp.rope_theta);
      rope(k[size_t(t)], KV, hd, t, hp.rope_theta);
    }
    for (int t = 0; t < n; ++t) {
      std::vector<double> attn(size_t(H) * hd, 0.0);
      for (int head = 0; head < H; ++head) {
        const int g = head / group;
        std::vector<double> sc(size_t(t) + 1);
        double mx = -1e300, sum = 0;
        for (int u = 0; u <= t; ++u) {
          double s = 0;
          for (int i = 0; i < hd; ++i) s += q[size_t(t)][size_t(head * hd + i)] * k[size_t(u)][size_t(g * hd + i)];
          sc[size_t(u)] = s / std::sqrt(double(hd));
          mx = std::max(mx, sc[size_t(u)]);
        }
        for (auto& s : sc) sum += (s = std::exp(s - mx));
        for (int u = 0; u <= t; ++u)
          for (int i = 0; i < hd; ++i)
            attn[size_t(head * hd + i)] += sc[size_t(u)] / sum * v[size_t(u)][size_t(g * hd + i)];
      }
      const std::vector<double> want = matvec(L.wo, L.bo, attn);
      expect_close(out.data() + size_t(t) * D, want, 1e-4, std::string(fixture) + " position " + std::to_string(t));
    }
    // Two sequences in one decode pass: each the bits it gets alone.
    KvCache a, b, a1, b1;
    for (KvCache* x : {&a, &b, &a1, &b1}) d.llm->init_cache(*x, 8);
    const std::vector<float> ha = gaussian(size_t(3) * D, 41), hb = gaussian(size_t(2) * D, 42);
    std::vector<float> scratch(size_t(3) * D);
    SeqRows sa{&a, 3}, sb{&b, 2}, sa1{&a1, 3}, sb1{&b1, 2};
    d.llm->attention_block(pool, layer, ha.data(), &sa, 1, scratch.data());
    d.llm->attention_block(pool, layer, hb.data(), &sb, 1, scratch.data());
    d.llm->attention_block(pool, layer, ha.data(), &sa1, 1, scratch.data());
    d.llm->attention_block(pool, layer, hb.data(), &sb1, 1, scratch.data());
    a.n_past = a1.n_past = 3;
    b.n_past = b1.n_past = 2;
    const std::vector<float> step = gaussian(size_t(2) * D, 43);
    std::vector<float> together(size_t(2) * D), solo_a(static_cast<size_t>(D)), solo_b(static_cast<size_t>(D));
    const SeqRows both[] = {{&a, 1}, {&b, 1}};
    d.llm->attention_block(pool, layer, step.data(), both, 2, together.data());
    SeqRows oa{&a1, 1}, ob{&b1, 1};
    d.llm->attention_block(pool, layer, step.data(), &oa, 1, solo_a.data());
    d.llm->attention_block(pool, layer, step.data() + D, &ob, 1, solo_b.data());
    for (int i = 0; i < D; ++i) {
      ASSERT_EQ(together[size_t(i)], solo_a[size_t(i)]) << fixture << " sequence a at " << i;
      ASSERT_EQ(together[size_t(D + i)], solo_b[size_t(i)]) << fixture << " sequence b at " << i;
    }
  }
}

// The decoder layer: x + attention(rms_norm(x)), then + ffn(rms_norm(.)),
// from the two blocks above with the layer's norms.
TEST(engine_blocks, DecoderLayerIsTheResidualAttentionThenTheResidualFfn) {
  ThreadPool pool(2);
  for (const char* fixture : {"v12", "2b"}) {
    Decoder d(fixture_root() + "/" + fixture);
    const LlmHParams& hp = d.hp.llm;
    const int D = hp.hidden, rows = 4, layer = 1 % hp.n_layers;
    const LlmLayer& L = d.llm->layer(layer);
    const std::vector<float> x0 = gaussian(size_t(rows) * D, 51);
    KvCache c1, c2;
    d.llm->init_cache(c1, rows);
    d.llm->init_cache(c2, rows);
    std::vector<float> x = x0;
    SeqRows s1{&c1, rows};
    d.llm->decoder_layer(pool, layer, x.data(), &s1, 1);
    std::vector<float> h(size_t(rows) * D), o(size_t(rows) * D), want = x0;
    rms_norm(want.data(), L.attn_norm, h.data(), rows, D, hp.rms_eps);
    SeqRows s2{&c2, rows};
    d.llm->attention_block(pool, layer, h.data(), &s2, 1, o.data());
    for (size_t i = 0; i < want.size(); ++i) want[i] += o[i];
    rms_norm(want.data(), L.ffn_norm, h.data(), rows, D, hp.rms_eps);
    d.llm->ffn_block(pool, layer, h.data(), rows, false, o.data());
    for (size_t i = 0; i < want.size(); ++i) want[i] += o[i];
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(x[i], want[i]) << fixture << " at " << i;
    // The layer wrote this pass's keys and values to the cache, as the block did.
    EXPECT_EQ(c1.k, c2.k);
    EXPECT_EQ(c1.v, c2.v);
  }
}

namespace {

struct Request {
  std::vector<int> ids;
  int max_new = 0;
  GenerateResult res;
  std::string error;
};

void run_concurrently(Model& m, std::vector<Request>& reqs, const RgbImage* image, GenerateResult* image_res) {
  std::atomic<int> ready{0};
  const int n = int(reqs.size()) + (image ? 1 : 0);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < reqs.size(); ++i)
    threads.emplace_back([&, i] {
      GenerateOptions o;
      o.max_new_tokens = reqs[i].max_new;
      o.stop_on_end_token = false;
      ++ready;
      while (ready.load() < n) std::this_thread::yield();
      try {
        reqs[i].res = m.generate_from_ids(reqs[i].ids, o);
      } catch (const EngineError& e) {
        reqs[i].error = e.what();
      }
    });
  if (image)
    threads.emplace_back([&] {
      ++ready;
      while (ready.load() < n) std::this_thread::yield();
      *image_res = m.generate(*image, "Describe the image.", 24);
    });
  for (auto& t : threads) t.join();
}

}  // namespace

// Through Model: concurrent callers (the service's workers) share decode
// steps and each gets its lone ids; an image request's vision and chunked
// prefill run between the others' steps; a request with a bad token id fails
// alone with the reason while the others finish.
TEST(engine_batch, ConcurrentGenerateCallsShareStepsAndGetTheirLoneIds) {
  for (const char* fixture : {"v12", "1b"}) {
    for (const char* fmt : {"auto", "int8"}) {
      const std::string dir = fixture_root() + "/" + fixture, what = std::string(fixture) + " " + fmt;
      EngineOptions eo;
      eo.threads = 2;
      eo.weights = fmt;
      eo.weight_cache = "off";
      eo.max_batch = 4;
      eo.prefill_chunk = 16;
      auto m = Model::load(dir, eo);
      const int V = m->hparams().llm.vocab;
      std::mt19937 g(5);
      std::vector<Request> reqs(4);
      const int lengths[] = {9, 33, 4, 20}, news[] = {60, 25, 80, 40};
      for (int i = 0; i < 4; ++i) {
        for (int k = 0; k < lengths[i]; ++k) reqs[size_t(i)].ids.push_back(int(g() % unsigned(V)));
        reqs[size_t(i)].max_new = news[i];
      }
      RgbImage img;
      img.width = 96;
      img.height = 64;
      for (int p = 0; p < img.width * img.height; ++p)
        for (int ch = 0; ch < 3; ++ch) img.rgb.push_back(uint8_t((p * 7 + ch * 60) % 251));
      // Alone, one after another.
      std::vector<std::vector<int>> solo;
      for (auto& r : reqs) {
        GenerateOptions o;
        o.max_new_tokens = r.max_new;
        o.stop_on_end_token = false;
        solo.push_back(m->generate_from_ids(r.ids, o).token_ids);
      }
      const std::vector<int> image_solo = m->generate(img, "Describe the image.", 24).token_ids;
      // Together, with a fifth caller whose prompt holds an id outside the vocabulary.
      bool shared = false;
      for (int attempt = 0; attempt < 3 && !shared; ++attempt) {
        std::vector<Request> together = reqs;
        Request bad;
        bad.ids = {1, 2, V + 5, 3};
        bad.max_new = 10;
        together.push_back(bad);
        GenerateResult image_res;
        m->reset_batch_stats();
        run_concurrently(*m, together, &img, &image_res);
        for (size_t i = 0; i < reqs.size(); ++i) {
          EXPECT_EQ(together[i].error, "") << what;
          EXPECT_EQ(together[i].res.token_ids, solo[i]) << what << ": request " << i;
        }
        EXPECT_EQ(image_res.token_ids, image_solo) << what << ": the image request";
        EXPECT_NE(together.back().error.find("out of range"), std::string::npos) << what << ": " << together.back().error;
        const BatchStats st = m->batch_stats();
        int64_t multi = 0;
        for (size_t b = 2; b < st.steps.size(); ++b) multi += st.steps[b];
        shared = multi > 0;
      }
      EXPECT_TRUE(shared) << what << ": no decode step was shared in three tries";
    }
  }
}

// Chunked prefill: the chunk size changes where a prompt is cut, not its ids.
TEST(engine_batch, PrefillChunkSizeKeepsTheGreedyIds) {
  for (const char* fixture : {"v12", "1b", "2b"}) {
    const std::string dir = fixture_root() + "/" + fixture;
    std::vector<std::vector<int>> got;
    for (int chunk : {7, 64, 100000}) {
      EngineOptions eo;
      eo.threads = 2;
      eo.prefill_chunk = chunk;
      auto m = Model::load(dir, eo);
      std::mt19937 g(9);
      std::vector<int> ids;
      for (int k = 0; k < 150; ++k) ids.push_back(int(g() % unsigned(m->hparams().llm.vocab)));
      GenerateOptions o;
      o.max_new_tokens = 24;
      o.stop_on_end_token = false;
      got.push_back(m->generate_from_ids(ids, o).token_ids);
    }
    EXPECT_EQ(got[0], got[2]) << fixture << ": chunks of 7 vs one pass";
    EXPECT_EQ(got[1], got[2]) << fixture << ": chunks of 64 vs one pass";
  }
}

// A newcomer's image encode runs in units (a ViT layer each) between the
// others' decode steps: a decoding sequence gets exactly one step between two
// units instead of waiting for the whole encode, and the embeddings, hence
// the image request's logits and ids, are the bits of the encode in one go.
TEST(engine_batch, ImageEncodeRunsInUnitsBetweenTheOthersDecodeSteps) {
  const std::string dir = fixture_root() + "/v12";
  Decoder dec(dir);
  VisionEncoder enc(dec.hp, *dec.ws, dec.hp.llm.hidden);
  ThreadPool pool(2);
  const int S = dec.hp.chat.image_size, nt = dec.hp.chat.num_image_token, tiles = 2;
  const std::vector<float> pixels = gaussian(size_t(tiles) * 3 * S * S, 21);
  std::vector<float> whole(size_t(tiles) * nt * dec.hp.llm.hidden);
  enc.encode_tiles(pool, pixels.data(), tiles, whole.data());

  const int V = dec.hp.llm.vocab, ctx = V - 1;  // any id serves as the image-context id here
  std::mt19937 g(3);
  DecodeRequest image;
  for (int k = 0; k < 6; ++k) image.ids.push_back(int(g() % unsigned(V - 1)));
  image.ids.insert(image.ids.end(), size_t(tiles) * nt, ctx);
  for (int k = 0; k < 5; ++k) image.ids.push_back(int(g() % unsigned(V - 1)));
  image.img_context_id = ctx;
  image.max_new_tokens = 12;
  image.stop_on_end_token = false;
  image.keep_first_logits = true;

  // Alone, the embeddings in one call.
  std::recursive_mutex mu;
  BatchScheduler sched(*dec.llm, pool, mu, /*max_batch=*/4, /*prefill_chunk=*/16);
  DecodeRequest lone = image;
  lone.vision = [&](std::vector<float>& out) {
    out = whole;
    return true;
  };
  sched.run(lone);

  // With a text sequence decoding: the encode in units, recording how many
  // tokens the text sequence has at each unit (both run on the scheduler's
  // thread, so reading its tokens there is safe).
  DecodeRequest text;
  for (int k = 0; k < 10; ++k) text.ids.push_back(int(g() % unsigned(V)));
  // Long enough to outlast the encode's few units even when this thread is
  // scheduled late (with 80 it had finished before the image joined, once).
  text.max_new_tokens = 1000;
  text.stop_on_end_token = false;
  sched.reset_stats();
  std::thread decoding([&] { sched.run(text); });
  while (sched.stats().steps[1] == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  VisionEncoder::Job job;
  bool started = false;
  std::vector<size_t> text_tokens;
  std::vector<float> split;
  image.vision = [&](std::vector<float>& out) {
    if (!started) {
      out.assign(whole.size(), 0.f);
      job = enc.start(pixels.data(), tiles, out.data(), /*layers_per_unit=*/1);
      started = true;
    }
    text_tokens.push_back(text.tokens.size());
    const bool done = enc.step(pool, job);
    if (done) split = out;
    return done;
  };
  sched.run(image);
  decoding.join();

  ASSERT_EQ(int(text_tokens.size()), enc.units(job)) << "one call per unit";
  ASSERT_LT(text_tokens.back(), size_t(text.max_new_tokens)) << "the text sequence ended before the encode did";
  EXPECT_EQ(enc.units(job), 2 + int(dec.hp.vision.n_layers)) << "patch embedding, one unit per layer, projector";
  for (size_t i = 1; i < text_tokens.size(); ++i)
    EXPECT_EQ(text_tokens[i], text_tokens[i - 1] + 1) << "the decoding sequence stepped once between units " << i - 1
                                                      << " and " << i;
  ASSERT_EQ(split.size(), whole.size());
  EXPECT_EQ(std::memcmp(split.data(), whole.data(), whole.size() * sizeof(float)), 0)
      << "embeddings encoded in units differ from the encode in one go";
  EXPECT_EQ(image.tokens, lone.tokens);
  EXPECT_EQ(bits_of(image.first_logits.data(), V), bits_of(lone.first_logits.data(), V));
  EXPECT_EQ(int(text.tokens.size()), text.max_new_tokens);
  EXPECT_EQ(sched.stats().vision_units, int64_t(enc.units(job)));
}
