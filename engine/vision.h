// InternViT encoder + pixel shuffle + mlp1 projector: one preprocessed tile
// (3 x S x S, normalised) in, num_image_token LLM-width embeddings out.
#pragma once

#include <vector>

#include "engine/config.h"
#include "engine/kernels.h"
#include "engine/weights.h"

namespace firstread::engine {

struct VisionLayer {
  const float *norm1_w = nullptr, *norm1_b = nullptr, *norm2_w = nullptr, *norm2_b = nullptr;
  WeightView qkv;
  const float* qkv_b = nullptr;
  const float *q_norm_w = nullptr, *k_norm_w = nullptr;
  WeightView proj;
  const float* proj_b = nullptr;
  const float *ls1 = nullptr, *ls2 = nullptr;
  WeightView fc1, fc2;
  const float *fc1_b = nullptr, *fc2_b = nullptr;
};

// Work buffers of one ViT block over rows = tiles x tokens (sized once per
// batch by reserve; the block itself allocates nothing).
struct VitBlockScratch {
  std::vector<float> h, qkv, attn, mlp, scores;
  LinearScratch linear;
  void reserve(int64_t rows, int d, int intermediate, int tokens, int head_dim, int threads);
};

// One InternViT block, in place on x[tiles * tokens][hidden]: pre-norm
// (RMSNorm or LayerNorm) attention with fused qkv, optional joint qk RMSNorm
// and layer scale ls1, then pre-norm MLP (fc1, exact GELU, fc2) with layer
// scale ls2. Attention stays within each tile's `tokens` rows.
void vit_block(ThreadPool& pool, const VisionHParams& hp, const VisionLayer& layer, float* x, int tiles, int tokens,
               VitBlockScratch& scratch);

class VisionEncoder {
 public:
  VisionEncoder(const ModelHParams& hp, WeightStore& ws, int llm_hidden);
  // n_tiles tiles (tiles x 3 x S x S, S = chat.image_size) -> [n_tiles * num_image_token][llm_hidden].
  void encode_tiles(ThreadPool& pool, const float* pixels, int n_tiles, float* out);

  // The same encode cut into units, so that a batch scheduler can run other
  // sequences' decode steps between them (issue 13): per batch of tiles the
  // patch embedding, then `layers_per_unit` ViT layers at a time, then pixel
  // shuffle + mlp1. The residual stream between units lives in the job; the
  // encoder's scratch is used only within a unit, so other work (another
  // job, encode_tiles) may run on the encoder between two units, as long as
  // units do not run concurrently. The result is the bits of encode_tiles.
  struct Job {
    const float* pixels = nullptr;
    int n_tiles = 0;
    float* out = nullptr;
    int layers_per_unit = 1;
    int batch = 1;  // tiles per batch (as encode_tiles batches them)
    int t0 = 0;     // first tile of the batch in progress
    int stage = 0;  // 0: patch embedding next; 1 + l: layer l next; 1 + layers: projector next
    std::vector<float> x;  // the batch's residual stream
  };
  Job start(const float* pixels, int n_tiles, float* out, int layers_per_unit) const;
  // Runs the job's next unit; true once job.out holds every tile's embeddings.
  bool step(ThreadPool& pool, Job& job);
  int units(const Job& job) const;  // units from start to end

 private:
  void interpolate_pos_embed(int grid);  // bicubic, as F.interpolate(align_corners=False)
  void embed_patches(ThreadPool& pool, const float* pixels, int T, float* x);
  void project(ThreadPool& pool, const float* x, int T, float* out);
  VisionHParams hp_;
  ChatHParams chat_;
  int llm_hidden_;
  int n_layers_run_;
  WeightView patch_w_;
  const float *patch_b_ = nullptr, *cls_ = nullptr, *pos_ = nullptr;
  std::vector<float> pos_grid_;  // position table for the actual grid (row 0 = CLS)
  std::vector<VisionLayer> layers_;
  const float *mlp_ln_w_ = nullptr, *mlp_ln_b_ = nullptr, *mlp1_b_ = nullptr, *mlp3_b_ = nullptr;
  WeightView mlp1_, mlp3_;
  LinearScratch scratch_;
  VitBlockScratch block_;
  std::vector<float> tmp_, shuffled_, proj_tmp_;
};

// Pixel shuffle (scale 0.5) of x[grid][grid][c] into out[(grid/2)^2][4c];
// v1 emits tokens column-major (transposed), v2 row-major.
void pixel_shuffle(const float* x, int grid, int c, int ps_version, float* out);
// The same for output rows [row_begin, row_end) of grid/2, so that threads
// can share one tile (a 6B-width tile moves 13 MB).
void pixel_shuffle_rows(const float* x, int grid, int c, int ps_version, float* out, int row_begin, int row_end);

}  // namespace firstread::engine
