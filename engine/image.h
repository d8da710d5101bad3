// Image input and InternVL preprocessing: decoding (PNG, PPM/PGM, or raw RGB8
// handed in by the pipeline), PIL-exact bicubic resizing, optional
// pad-to-square, dynamic tiling, ImageNet normalisation. Every geometric step
// is recorded so model boxes can be mapped back to source pixels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/config.h"

namespace firstread::engine {

struct RgbImage {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // row-major, 3 bytes per pixel
};

// Largest accepted image side and pixel count (a decompression-bomb guard).
constexpr int kMaxImageSide = 32768;
constexpr int64_t kMaxImagePixels = 256ll << 20;

RgbImage load_image_file(const std::string& path);            // PNG, PPM (P3/P6), PGM (P2/P5)
RgbImage image_from_rgb8(const uint8_t* rgb, int width, int height);  // copies and validates
// Resize exactly as PIL's Image.resize(..., BICUBIC) on an RGB image
// (separable, antialiased support when shrinking, 8-bit fixed-point passes).
RgbImage resize_bicubic_pil(const RgbImage& in, int out_w, int out_h);
// The same for PIL's BILINEAR (resample=2, what ViTImageProcessor uses by default) or BICUBIC (3).
enum class PilFilter { Bilinear, Bicubic };
RgbImage resize_pil(const RgbImage& in, int out_w, int out_h, PilFilter filter);
// An 8-bit RGB PNG of the image, in memory (what a remote model server is sent).
std::string encode_png(const RgbImage& img);

// How one source image became the model's tiles. Boxes the model emits are
// relative to the "model view": the source image, or the padded square when
// pad_to_square is on. source pixel = model-view pixel - pad offset.
struct PreprocessGeometry {
  int source_width = 0, source_height = 0;
  bool padded_to_square = false;
  int pad_left = 0, pad_top = 0;  // where the source sits in the padded square
  int view_width = 0, view_height = 0;  // model view (padded square or source)
  int tile_size = 0;
  int grid_cols = 1, grid_rows = 1;  // dynamic tiling grid
  int resized_width = 0, resized_height = 0;  // size the view was resized to before cropping
  bool thumbnail = false;  // an extra whole-image tile at the end
  int n_tiles = 1;
};

struct PreprocessedImage {
  PreprocessGeometry geometry;
  int tile_size = 0;
  std::vector<float> pixels;  // n_tiles x 3 x S x S, normalised
};

PreprocessedImage preprocess_image(const RgbImage& img, const ChatHParams& chat);

// The (cols, rows) grid dynamic_preprocess picks for a W x H image.
void choose_tile_grid(int width, int height, int min_num, int max_num, int tile_size, int* cols, int* rows);

}  // namespace firstread::engine
